/* bankcheck: a reader process that holds the bank-transfer invariant on a
 * replica, for the integration tests (replication_isolation, _retention).
 *
 *   bankcheck [--reopen N] [--hold-ms N] DB MAX_MS SUM:COUNT [SUM:COUNT...]
 *
 * It opens DB read-only, as any application reader would, and loops until
 * SIGTERM/SIGINT or MAX_MS milliseconds: BEGIN; read; COMMIT. Each read
 * transaction is one check of these invariants:
 *  - the sum and count of accounts.balance by a scan of the table b-tree
 *    (NOT INDEXED) equal the same by a scan of the index accounts_balance:
 *    a reader that saw half of an applied transaction, or pages of two
 *    states, would find them disagree (or hit a corrupt page);
 *  - (sum, count) is one of the SUM:COUNT states given, in history order:
 *    the writers move money between accounts and never change the total,
 *    so any other value is a torn or invented state; and the state index
 *    never goes back (an older history after a newer one);
 *  - bank_meta.seq, which every writer transaction increments, never goes
 *    down: a replica never shows a state older than one it showed.
 * SQLITE_BUSY is retried and counted, never a violation; any other error is
 * counted as an error. --reopen N closes and reopens the connection every N
 * checks (default 256, 0 never), so that fresh connections are checked too
 * and not only one with a cached schema. --hold-ms N keeps each read
 * transaction open N ms and then reads everything again: the second read
 * must equal the first (repeatable read while the replica commits, and
 * checkpoints, under a reader that pins an old snapshot).
 *
 * The schema it reads (other columns may follow):
 *   accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)
 *   INDEX accounts_balance ON accounts(balance)
 *   bank_meta (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL), one row id 1
 *
 * Every 100 ms it prints a progress line on stderr, so that a caller can wait
 * for enough checks:
 *   bankcheck: progress {"checks":N,"violations":N,"errors":N,"seen":[N per state]}
 * At the end it prints one JSON line on stdout:
 *   {"checks":N,"violations":N,"busy":N,"errors":N,"transitions":N,
 *    "reopens":N,"seen":[N per state],"seq_first":N,"seq_last":N,
 *    "elapsed_ms":N,"problems":["...", ...],"t0_us":N,"timeline":[N...]}
 * (the first few problems only). timeline[i] counts the checks completed in
 * the i-th millisecond after t0_us (wall clock, unix microseconds), so that a
 * caller can count the checks made while something happened, say between two
 * of the replica's log lines. Exit status: 0 once it has looped (the caller
 * judges the numbers), 1 if the database cannot be opened at the start, 2 on
 * usage. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sqlite3.h"

#define BANKCHECK_MAX_STATES   16
#define BANKCHECK_MAX_PROBLEMS 8
#define BANKCHECK_BUSY_MS      100 /* short: a busy reader retries from BEGIN */
#define BANKCHECK_PROGRESS_MS  100

static const char *const sql_table = "SELECT count(*), sum(balance) FROM accounts NOT INDEXED";
static const char *const sql_index = "SELECT count(*), sum(balance) FROM accounts "
                                     "INDEXED BY accounts_balance WHERE balance IS NOT NULL";
static const char *const sql_seq = "SELECT seq FROM bank_meta WHERE id = 1";

struct bank_state {
    int64_t sum, count;
};

struct bankcheck {
    const char *path;
    sqlite3 *db;
    sqlite3_stmt *begin, *table, *index, *seq, *commit, *rollback;
    struct bank_state allowed[BANKCHECK_MAX_STATES];
    uint64_t seen[BANKCHECK_MAX_STATES];
    size_t n_allowed;
    uint64_t checks, violations, busy, errors, transitions, reopens;
    int64_t hold_ms;
    int last_state; /* index in allowed[] of the previous check, or -1 */
    int have_seq;
    int64_t seq_first, seq_last;
    int64_t t0_us;       /* wall clock at the start */
    uint32_t *timeline;  /* checks per millisecond since t0_us */
    size_t timeline_len; /* entries in use (the rest of the allocation is 0) */
    size_t timeline_cap;
    char errmsg[200]; /* of the last failed step */
    char problems[BANKCHECK_MAX_PROBLEMS][256];
    size_t n_problems;
};

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static int64_t clock_us(clockid_t id)
{
    struct timespec ts;

    if (clock_gettime(id, &ts) != 0)
        abort(); /* cannot fail with a valid clock id */
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t mono_ms(void)
{
    return clock_us(CLOCK_MONOTONIC) / 1000;
}

/* Count one check in the millisecond it completed in. */
static void timeline_add(struct bankcheck *bc)
{
    int64_t ms = (clock_us(CLOCK_REALTIME) - bc->t0_us) / 1000;
    size_t i = ms < 0 ? 0 : (size_t)ms; /* the wall clock may step back: count it at t0 */

    if (i >= bc->timeline_cap) {
        size_t cap = bc->timeline_cap ? bc->timeline_cap : 4096;
        while (cap <= i)
            cap *= 2;
        uint32_t *t = realloc(bc->timeline, cap * sizeof(*t));
        if (!t)
            abort(); /* a test tool: out of memory is fatal */
        memset(t + bc->timeline_cap, 0, (cap - bc->timeline_cap) * sizeof(*t));
        bc->timeline = t;
        bc->timeline_cap = cap;
    }
    bc->timeline[i]++;
    if (i + 1 > bc->timeline_len)
        bc->timeline_len = i + 1;
}

static void problem(struct bankcheck *bc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void problem(struct bankcheck *bc, const char *fmt, ...)
{
    va_list ap;

    if (bc->n_problems >= BANKCHECK_MAX_PROBLEMS)
        return;
    va_start(ap, fmt);
    vsnprintf(bc->problems[bc->n_problems++], sizeof(bc->problems[0]), fmt, ap);
    va_end(ap);
}

static void close_db(struct bankcheck *bc)
{
    sqlite3_stmt **sts[] = {&bc->begin, &bc->table,  &bc->index,
                            &bc->seq,   &bc->commit, &bc->rollback};

    for (size_t i = 0; i < sizeof(sts) / sizeof(sts[0]); i++) {
        sqlite3_finalize(*sts[i]);
        *sts[i] = NULL;
    }
    if (sqlite3_close(bc->db) != SQLITE_OK)
        problem(bc, "close: %s", sqlite3_errmsg(bc->db));
    bc->db = NULL;
}

/* Open the database read-only and prepare every statement. Returns a SQLite
 * result code; on failure the connection is closed again. */
static int open_db(struct bankcheck *bc)
{
    struct {
        sqlite3_stmt **st;
        const char *sql;
    } sts[] = {{&bc->begin, "BEGIN"}, {&bc->table, sql_table}, {&bc->index, sql_index},
               {&bc->seq, sql_seq},   {&bc->commit, "COMMIT"}, {&bc->rollback, "ROLLBACK"}};
    int rc = sqlite3_open_v2(bc->path, &bc->db, SQLITE_OPEN_READONLY, NULL);

    if (rc == SQLITE_OK)
        rc = sqlite3_busy_timeout(bc->db, BANKCHECK_BUSY_MS);
    for (size_t i = 0; rc == SQLITE_OK && i < sizeof(sts) / sizeof(sts[0]); i++)
        rc = sqlite3_prepare_v3(bc->db, sts[i].sql, -1, SQLITE_PREPARE_PERSISTENT, sts[i].st, NULL);
    if (rc != SQLITE_OK) {
        problem(bc, "open %s: %s", bc->path, bc->db ? sqlite3_errmsg(bc->db) : "out of memory");
        close_db(bc);
    }
    return rc;
}

/* Keep the error message of a failed step before the reset clears it. */
static int step_failed(struct bankcheck *bc, sqlite3_stmt *st, int rc)
{
    snprintf(bc->errmsg, sizeof(bc->errmsg), "%s", sqlite3_errmsg(bc->db));
    sqlite3_reset(st);
    return rc;
}

/* Step a statement that returns no row (BEGIN, COMMIT, ROLLBACK). */
static int step_done(struct bankcheck *bc, sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);

    if (rc != SQLITE_DONE)
        return step_failed(bc, st, rc);
    sqlite3_reset(st);
    return SQLITE_OK;
}

/* Step a statement that returns one row of int64 columns into out[]. */
static int step_row(struct bankcheck *bc, sqlite3_stmt *st, int64_t *out, int ncol)
{
    int rc = sqlite3_step(st);

    if (rc == SQLITE_DONE) {
        snprintf(bc->errmsg, sizeof(bc->errmsg), "no row");
        sqlite3_reset(st);
        return SQLITE_EMPTY; /* bank_meta lost its row */
    }
    if (rc != SQLITE_ROW)
        return step_failed(bc, st, rc);
    for (int i = 0; i < ncol; i++)
        out[i] = sqlite3_column_int64(st, i);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        snprintf(bc->errmsg, sizeof(bc->errmsg), "more than one row");
        rc = SQLITE_ERROR;
    } else if (rc != SQLITE_DONE) {
        return step_failed(bc, st, rc);
    } else {
        rc = SQLITE_OK;
    }
    sqlite3_reset(st);
    return rc;
}

static int find_state(const struct bankcheck *bc, int64_t count, int64_t sum)
{
    for (size_t i = 0; i < bc->n_allowed; i++) {
        if (bc->allowed[i].sum == sum && bc->allowed[i].count == count)
            return (int)i;
    }
    return -1;
}

/* Judge one consistent read: table[] and index[] are {count, sum}. */
static void judge(struct bankcheck *bc, const int64_t *table, const int64_t *index, int64_t seq)
{
    int state = find_state(bc, table[0], table[1]);

    bc->checks++;
    if (table[0] != index[0] || table[1] != index[1]) {
        bc->violations++;
        problem(bc,
                "check %" PRIu64 ": table count %" PRId64 " sum %" PRId64
                " but index count %" PRId64 " sum %" PRId64,
                bc->checks, table[0], table[1], index[0], index[1]);
    }
    if (state < 0) {
        bc->violations++;
        problem(bc, "check %" PRIu64 ": count %" PRId64 " sum %" PRId64 " is no committed state",
                bc->checks, table[0], table[1]);
    } else {
        bc->seen[state]++;
        if (bc->last_state >= 0 && state != bc->last_state)
            bc->transitions++;
        if (state < bc->last_state) {
            bc->violations++;
            problem(bc, "check %" PRIu64 ": state %d after state %d", bc->checks, state,
                    bc->last_state);
        }
        bc->last_state = state;
    }
    if (bc->have_seq && seq < bc->seq_last) {
        bc->violations++;
        problem(bc, "check %" PRIu64 ": seq %" PRId64 " after %" PRId64, bc->checks, seq,
                bc->seq_last);
    }
    if (!bc->have_seq)
        bc->seq_first = seq;
    bc->have_seq = 1;
    bc->seq_last = seq;
}

/* The reads of one check: {table count, table sum, index count, index sum, seq}. */
static int read_all(struct bankcheck *bc, int64_t *v)
{
    int rc = step_row(bc, bc->table, v, 2);

    if (rc == SQLITE_OK)
        rc = step_row(bc, bc->index, v + 2, 2);
    if (rc == SQLITE_OK)
        rc = step_row(bc, bc->seq, v + 4, 1);
    return rc;
}

/* --hold-ms: wait inside the read transaction, then read again. */
static int hold_and_reread(struct bankcheck *bc, const int64_t *v)
{
    struct timespec ts = {.tv_sec = bc->hold_ms / 1000, .tv_nsec = bc->hold_ms % 1000 * 1000000};
    int64_t again[5];
    int rc;

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !stop_requested)
        ;
    rc = read_all(bc, again);
    if (rc == SQLITE_OK && memcmp(v, again, sizeof(again)) != 0) {
        bc->violations++;
        problem(bc,
                "check %" PRIu64 ": changed inside one read transaction: count %" PRId64
                " sum %" PRId64 " seq %" PRId64 ", then count %" PRId64 " sum %" PRId64
                " seq %" PRId64,
                bc->checks + 1, v[0], v[1], v[4], again[0], again[1], again[4]);
    }
    return rc;
}

/* One read transaction. Returns SQLITE_OK, or the code that ended it. */
static int check_once(struct bankcheck *bc)
{
    int64_t v[5] = {0, 0, 0, 0, 0};
    int rc = step_done(bc, bc->begin);

    if (rc == SQLITE_OK)
        rc = read_all(bc, v);
    if (rc == SQLITE_OK && bc->hold_ms > 0)
        rc = hold_and_reread(bc, v);
    if (rc == SQLITE_OK)
        rc = step_done(bc, bc->commit);
    if (rc != SQLITE_OK) {
        if (!sqlite3_get_autocommit(bc->db))
            (void)step_done(bc, bc->rollback);
        return rc;
    }
    judge(bc, v, v + 2, v[4]);
    timeline_add(bc);
    return SQLITE_OK;
}

static void count_failure(struct bankcheck *bc, int rc)
{
    if ((rc & 0xff) == SQLITE_BUSY) {
        bc->busy++;
        return;
    }
    bc->errors++;
    problem(bc, "check %" PRIu64 ": %s (%d): %s", bc->checks + 1, sqlite3_errstr(rc), rc,
            bc->errmsg);
}

static void print_seen(const struct bankcheck *bc, FILE *out)
{
    fputs("\"seen\":[", out);
    for (size_t i = 0; i < bc->n_allowed; i++)
        fprintf(out, "%s%" PRIu64, i ? "," : "", bc->seen[i]);
    fputc(']', out);
}

static void print_progress(const struct bankcheck *bc)
{
    fprintf(stderr,
            "bankcheck: progress {\"checks\":%" PRIu64 ",\"violations\":%" PRIu64
            ",\"errors\":%" PRIu64 ",",
            bc->checks, bc->violations, bc->errors);
    print_seen(bc, stderr);
    fputs("}\n", stderr);
}

static void run(struct bankcheck *bc, int64_t max_ms, uint64_t reopen)
{
    int64_t now = mono_ms(), deadline = now + max_ms, next_progress = now + BANKCHECK_PROGRESS_MS;
    uint64_t since_open = 0;

    while (!stop_requested && (now = mono_ms()) < deadline) {
        if (now >= next_progress) {
            print_progress(bc);
            next_progress = now + BANKCHECK_PROGRESS_MS;
        }
        if (reopen && since_open >= reopen) {
            close_db(bc);
            bc->reopens++;
            since_open = 0;
        }
        if (!bc->db && open_db(bc) != SQLITE_OK) {
            bc->errors++;
            continue;
        }
        int rc = check_once(bc);
        if (rc != SQLITE_OK)
            count_failure(bc, rc);
        else
            since_open++;
    }
}

static void print_json_string(const char *s)
{
    putchar('"');
    for (const char *p = s; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if ((unsigned char)*p < 0x20)
            printf("\\u%04x", (unsigned char)*p);
        else
            putchar(*p);
    }
    putchar('"');
}

static void print_summary(const struct bankcheck *bc, int64_t elapsed_ms)
{
    printf("{\"checks\":%" PRIu64 ",\"violations\":%" PRIu64 ",\"busy\":%" PRIu64
           ",\"errors\":%" PRIu64 ",\"transitions\":%" PRIu64 ",\"reopens\":%" PRIu64 ",",
           bc->checks, bc->violations, bc->busy, bc->errors, bc->transitions, bc->reopens);
    print_seen(bc, stdout);
    printf(",\"seq_first\":%" PRId64 ",\"seq_last\":%" PRId64 ",\"elapsed_ms\":%" PRId64
           ",\"problems\":[",
           bc->seq_first, bc->seq_last, elapsed_ms);
    for (size_t i = 0; i < bc->n_problems; i++) {
        if (i)
            putchar(',');
        print_json_string(bc->problems[i]);
    }
    printf("],\"t0_us\":%" PRId64 ",\"timeline\":[", bc->t0_us);
    for (size_t i = 0; i < bc->timeline_len; i++)
        printf("%s%" PRIu32, i ? "," : "", bc->timeline[i]);
    printf("]}\n");
}

static int parse_i64(const char *s, char stop, int64_t *out, const char **end)
{
    char *e;

    errno = 0;
    long long v = strtoll(s, &e, 10);
    if (errno || e == s || *e != stop)
        return -1;
    *out = v;
    if (end)
        *end = e;
    return 0;
}

static int parse_args(struct bankcheck *bc, int argc, char **argv, int64_t *max_ms,
                      uint64_t *reopen)
{
    int i = 1;
    int64_t v;

    *reopen = 256;
    for (; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
        if (parse_i64(argv[i + 1], '\0', &v, NULL) != 0 || v < 0)
            return -1;
        if (strcmp(argv[i], "--reopen") == 0)
            *reopen = (uint64_t)v;
        else if (strcmp(argv[i], "--hold-ms") == 0)
            bc->hold_ms = v;
        else
            return -1;
    }
    if (argc - i < 3 || argc - i - 2 > BANKCHECK_MAX_STATES)
        return -1;
    bc->path = argv[i];
    if (parse_i64(argv[i + 1], '\0', max_ms, NULL) != 0 || *max_ms <= 0)
        return -1;
    for (int k = i + 2; k < argc; k++) {
        const char *e;
        struct bank_state *s = &bc->allowed[bc->n_allowed++];
        if (parse_i64(argv[k], ':', &s->sum, &e) != 0 || parse_i64(e + 1, '\0', &s->count, NULL))
            return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static struct bankcheck bc = {.last_state = -1};
    struct sigaction sa = {.sa_handler = on_signal};
    int64_t max_ms, start = mono_ms();
    uint64_t reopen;

    if (parse_args(&bc, argc, argv, &max_ms, &reopen) != 0) {
        fprintf(stderr,
                "usage: bankcheck [--reopen N] [--hold-ms N] DB MAX_MS SUM:COUNT [SUM:COUNT...]\n");
        return 2;
    }
    if (sigemptyset(&sa.sa_mask) != 0 || sigaction(SIGTERM, &sa, NULL) != 0 ||
        sigaction(SIGINT, &sa, NULL) != 0) {
        perror("bankcheck: sigaction");
        return 1;
    }
    if (open_db(&bc) != SQLITE_OK) {
        fprintf(stderr, "bankcheck: %s\n", bc.problems[0]);
        return 1;
    }
    /* The caller waits for this line before it starts what is to be watched. */
    fprintf(stderr, "bankcheck: reading %s\n", bc.path);
    bc.t0_us = clock_us(CLOCK_REALTIME);
    run(&bc, max_ms, reopen);
    if (bc.db)
        close_db(&bc);
    print_summary(&bc, mono_ms() - start);
    free(bc.timeline);
    return fflush(stdout) == 0 ? 0 : 1;
}
