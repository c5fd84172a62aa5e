/* Unit tests: replica/apply.c on real SQLite files.
 *
 * The "primary" is a real source database under primary/capture: each of its
 * commits is read back from the replication log (primary/replog) and applied
 * through the apply API, and snapshots are read from it with sqlite_dbpage.
 * The replica is always judged from separate connections: its checksum
 * against the primary's at the same txid, PRAGMA integrity_check, and a hash
 * of every table's rows. Crash tests fork a child that applies and is killed
 * with SIGKILL, at each step of a commit and at random moments. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/log.h"
#include "common/pagesum.h"
#include "harness.h"
#include "sqlhelp.h"
#include "primary/capture.h"
#include "primary/replog.h"
#include "replica/apply.h"

#define SERIES(n)                                                                                  \
    "WITH RECURSIVE c(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM c WHERE n < " #n ") "

#define MAX_TXIDS 4096

static char tmpdir[] = "/tmp/test_apply.XXXXXX";
static char apath[128], bpath[128], cpath[128], rpath[128], pos_path[192];
static uint8_t pagebuf[65536];
static unsigned seed;

static void wipe(const char *path)
{
    SH("rm -rf '%s' '%s'-*", path, path);
}

static int64_t file_size(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 ? st.st_size : -1;
}

/* --- the source ("primary") ---------------------------------------------------------- */

struct src {
    const char *path;
    sqlite3 *db;
    struct capture *cap;
    uint64_t sums[MAX_TXIDS]; /* the database checksum after each txid */
};

static struct src A, B, C;

/* A new source database with seed content, under capture. */
static int src_open(struct src *s, const char *path, int page_size, const char *seed_sql)
{
    struct capture_config cfg = {path, NULL, 0, 50};
    struct capture_status st;
    char sql[200];

    wipe(path);
    memset(s, 0, sizeof(*s));
    s->path = path;
    if (sqlite3_open(path, &s->db) != SQLITE_OK)
        return -1;
    snprintf(sql, sizeof(sql),
             "PRAGMA page_size=%d; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
             "PRAGMA wal_autocheckpoint=0",
             page_size);
    if (exec(s->db, sql) != SQLITE_OK || exec(s->db, seed_sql) != SQLITE_OK ||
        capture_open(&cfg, s->db, &s->cap) != 0)
        return -1;
    capture_status(s->cap, &st);
    s->sums[st.head_txid] = st.checksum;
    return 0;
}

static void src_close(struct src *s)
{
    capture_close(s->cap);
    sqlite3_close(s->db);
    s->cap = NULL;
    s->db = NULL;
}

static struct capture_status src_status(struct src *s)
{
    struct capture_status st;

    capture_status(s->cap, &st);
    return st;
}

/* Run sql (one transaction) on the source. Returns its txid, or 0 if it wrote
 * nothing. */
static uint64_t src_exec(struct src *s, const char *sql)
{
    struct capture_status st;
    uint64_t txid;

    exec(s->db, sql);
    txid = capture_take_txid(s->cap);
    capture_status(s->cap, &st);
    if (txid && txid < MAX_TXIDS)
        s->sums[txid] = st.checksum;
    (void)capture_maybe_checkpoint(s->cap); /* WAL restarts on the source too */
    return txid;
}

/* --- shipping to the replica ---------------------------------------------------------- */

enum fault { OK_AS_IS, FLIP_PAGE, FLIP_SUM };

/* Apply the record rd just read (header t) through the apply API. */
static int ship_record(struct replog_reader *rd, const struct replog_txn *t, struct apply *a,
                       enum fault fault)
{
    int rc = apply_txn_begin(a, t->txid, t->db_pages, t->page_size);

    for (uint32_t i = 0; rc == 0 && i < t->npages; i++) {
        const uint8_t *data;
        uint32_t pgno;

        if (replog_reader_page(rd, i, &pgno, &data) != 0) {
            apply_abort(a);
            return -100;
        }
        if (fault == FLIP_PAGE && i == t->npages / 2) {
            memcpy(pagebuf, data, t->page_size);
            pagebuf[t->page_size - 7] ^= 0x20;
            data = pagebuf;
        }
        rc = apply_txn_page(a, pgno, data, t->page_size);
    }
    if (rc == 0)
        rc = apply_txn_commit(a, t->checksum ^ (fault == FLIP_SUM), t->time_us);
    return rc;
}

/* Apply the source's logged transaction txid. Returns apply's code, or -100
 * if the log could not be read. */
static int ship_txn(struct src *s, struct apply *a, uint64_t txid, enum fault fault)
{
    struct replog_reader *rd;
    struct replog_txn t;
    int rc = -100;

    if (replog_reader_open(capture_log(s->cap), txid, &rd) != 0)
        return -100;
    if (replog_reader_next(rd, &t) == 0)
        rc = ship_record(rd, &t, a, fault);
    replog_reader_close(rd);
    return rc;
}

/* Apply every logged transaction after the replica's position. */
static int ship_all(struct src *s, struct apply *a)
{
    struct apply_position p;
    uint64_t head = src_status(s).head_txid;
    struct replog_reader *rd;
    struct replog_txn t;
    int rc = 0;

    apply_position(a, &p);
    if (p.txid >= head)
        return 0;
    if (replog_reader_open(capture_log(s->cap), p.txid + 1, &rd) != 0)
        return -100;
    while (rc == 0 && replog_reader_txid(rd) <= head)
        rc = replog_reader_next(rd, &t) == 0 ? ship_record(rd, &t, a, OK_AS_IS) : -100;
    replog_reader_close(rd);
    return rc;
}

/* Snapshot the source as it is now (its head) into the replica: every page
 * but the lock-byte page, ascending. stop_after > 0 leaves the rest out. */
static int ship_snapshot(struct src *s, struct apply *a, enum fault fault, uint32_t stop_after)
{
    struct capture_status st = src_status(s);
    sqlite3_stmt *rd;
    int rc =
        apply_snapshot_begin(a, st.database_id, st.epoch, st.head_txid, st.db_pages, st.page_size);

    if (rc != 0)
        return rc;
    if (sqlite3_prepare_v2(s->db, "SELECT pgno, data FROM sqlite_dbpage", -1, &rd, NULL) != 0)
        return -100;
    while (rc == 0 && sqlite3_step(rd) == SQLITE_ROW) {
        uint32_t pgno = (uint32_t)sqlite3_column_int64(rd, 0);
        const uint8_t *data = sqlite3_column_blob(rd, 1);

        if (pgno == pagesum_lock_page(st.page_size))
            continue;
        if (stop_after && pgno > stop_after)
            break;
        if (fault == FLIP_PAGE && pgno == st.db_pages / 2 + 1) {
            memcpy(pagebuf, data, st.page_size);
            pagebuf[st.page_size - 7] ^= 0x20;
            data = pagebuf;
        }
        rc = apply_snapshot_page(a, pgno, data, st.page_size);
    }
    sqlite3_finalize(rd);
    if (rc == 0)
        rc = apply_snapshot_commit(a, st.checksum ^ (fault == FLIP_SUM), st.head_time_us);
    return rc;
}

/* --- judging the replica from other connections ---------------------------------------- */

static sqlite3 *open_reader(const char *path)
{
    sqlite3 *db = NULL;

    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return NULL;
    }
    return db;
}

/* The database checksum of a file, with page 1's schema cookie moved back by
 * delta (a replica's cookie is its primary's plus a delta, see apply.h). */
static uint64_t file_checksum_delta(const char *path, uint32_t delta)
{
    sqlite3 *db = open_reader(path);
    static uint8_t page1[65536];
    sqlite3_stmt *st;
    uint64_t sum = 0;

    if (!db || sqlite3_prepare_v2(db, "SELECT pgno, data FROM sqlite_dbpage", -1, &st, NULL)) {
        sqlite3_close(db);
        return 1;
    }
    while (sqlite3_step(st) == SQLITE_ROW) {
        uint32_t pgno = (uint32_t)sqlite3_column_int(st, 0);
        uint32_t ps = (uint32_t)sqlite3_column_bytes(st, 1);
        const uint8_t *data = sqlite3_column_blob(st, 1);

        if (pgno == 1) {
            memcpy(page1, data, ps);
            put_be32(page1 + 40, get_be32(page1 + 40) - delta);
            data = page1;
        }
        if (pgno != pagesum_lock_page(ps))
            sum ^= pagesum_page(pgno, data, ps);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return sum;
}

static uint64_t file_checksum(const char *path)
{
    return file_checksum_delta(path, 0);
}

static int64_t schema_version(const char *path)
{
    sqlite3 *db = open_reader(path);
    int64_t v = db ? query(db, "PRAGMA schema_version") : -1;

    sqlite3_close(db);
    return v;
}

static int integrity_ok(const char *path)
{
    sqlite3 *db = open_reader(path);
    sqlite3_stmt *st;
    int ok = 0;

    if (db && sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL) == SQLITE_OK) {
        ok = sqlite3_step(st) == SQLITE_ROW &&
             strcmp((const char *)sqlite3_column_text(st, 0), "ok") == 0;
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return ok;
}

static void hash_rows(XXH3_state_t *h, sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st;

    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        XXH3_64bits_update(h, "error", 5);
        return;
    }
    while (sqlite3_step(st) == SQLITE_ROW) {
        for (int i = 0; i < sqlite3_column_count(st); i++) {
            int type = sqlite3_column_type(st, i);
            const void *p =
                type == SQLITE_BLOB ? sqlite3_column_blob(st, i) : sqlite3_column_text(st, i);
            XXH3_64bits_update(h, &type, sizeof(type));
            if (p)
                XXH3_64bits_update(h, p, (size_t)sqlite3_column_bytes(st, i));
        }
    }
    sqlite3_finalize(st);
}

/* A .dump-style fingerprint: the schema and every row of every table. */
static uint64_t content_hash(const char *path)
{
    XXH3_state_t *h = XXH3_createState();
    sqlite3 *db = open_reader(path);
    sqlite3_stmt *st;
    uint64_t v;

    XXH3_64bits_reset(h);
    hash_rows(h, db, "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY name");
    if (sqlite3_prepare_v2(db, "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name",
                           -1, &st, NULL) == SQLITE_OK) {
        while (sqlite3_step(st) == SQLITE_ROW) {
            char *sql = sqlite3_mprintf("SELECT * FROM \"%w\"", sqlite3_column_text(st, 0));
            hash_rows(h, db, sql);
            sqlite3_free(sql);
        }
        sqlite3_finalize(st);
    }
    v = XXH3_64bits_digest(h);
    XXH3_freeState(h);
    sqlite3_close(db);
    return v;
}

static struct apply *rep_open(uint32_t checkpoint_pages)
{
    struct apply_config cfg = {rpath, checkpoint_pages};
    struct apply *a = NULL;

    return apply_open(&cfg, &a) == 0 ? a : NULL;
}

static struct apply_position rep_position(struct apply *a)
{
    struct apply_position p;

    apply_position(a, &p);
    return p;
}

static int same_position(const struct apply_position *x, const struct apply_position *y)
{
    return strcmp(x->database_id, y->database_id) == 0 && x->epoch == y->epoch &&
           x->txid == y->txid && x->checksum == y->checksum && x->page_size == y->page_size &&
           x->db_pages == y->db_pages && x->commit_time_us == y->commit_time_us;
}

/* The replica is exactly the source at its head: position and pages, with
 * its schema cookie the source's plus delta. */
static int rep_matches_delta(struct apply *a, struct src *s, uint32_t delta)
{
    struct apply_position p = rep_position(a);
    struct capture_status st = src_status(s);

    return strcmp(p.database_id, st.database_id) == 0 && p.epoch == st.epoch &&
           p.txid == st.head_txid && p.checksum == st.checksum && p.db_pages == st.db_pages &&
           p.page_size == st.page_size && file_checksum_delta(rpath, delta) == st.checksum &&
           schema_version(rpath) ==
               (int64_t)(uint32_t)(query(s->db, "PRAGMA schema_version") + delta);
}

static int rep_matches(struct apply *a, struct src *s)
{
    return rep_matches_delta(a, s, 0);
}

/* A replica following A from a snapshot of A's seed. */
static struct apply *follow_a(const char *seed_sql, uint32_t checkpoint_pages)
{
    struct apply *a;

    if (src_open(&A, apath, 4096, seed_sql) != 0)
        return NULL;
    wipe(rpath);
    a = rep_open(checkpoint_pages);
    if (a && ship_snapshot(&A, a, OK_AS_IS, 0) != 0) {
        apply_close(a);
        return NULL;
    }
    return a;
}

#define SEED_T                                                                                     \
    "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB); " SERIES(                             \
        200) "INSERT INTO t(v) SELECT hex(randomblob(40)) FROM c"

/* --- a new replica ------------------------------------------------------------------- */

TEST(a_new_replica_is_empty_until_its_first_snapshot)
{
    struct apply_position p, q;
    struct apply *a;
    sqlite3 *r;

    wipe(rpath);
    a = rep_open(0);
    REQUIRE(a);
    p = rep_position(a);
    CHECK(p.database_id[0] == '\0' && p.txid == 0 && p.epoch == 0);
    CHECK(p.page_size == 0 && p.db_pages == 0 && p.checksum == 0);
    CHECK(file_size(rpath) == 0);
    r = open_reader(rpath); /* a reader may already be there */
    REQUIRE(r);
    CHECK(query(r, "SELECT count(*) FROM sqlite_schema") == 0);
    CHECK(apply_txn_begin(a, 1, 2, 4096) == APPLY_ERR_STATE);

    /* The first snapshot sets the page size, 8192 here, and WAL mode. */
    REQUIRE(src_open(&B, bpath, 8192, SEED_T) == 0);
    CHECK(ship_snapshot(&B, a, OK_AS_IS, 0) == 0);
    CHECK(rep_matches(a, &B));
    /* (PRAGMA page_size reports the connection's setting until it reads.) */
    CHECK(query(r, "SELECT count(*) FROM t") == 200 && query(r, "PRAGMA page_size") == 8192);
    CHECK(content_hash(rpath) == content_hash(bpath));
    sqlite3_close(r);

    /* It stays there across a restart, and follows. */
    p = rep_position(a);
    apply_close(a);
    a = rep_open(0);
    REQUIRE(a);
    q = rep_position(a);
    CHECK(same_position(&p, &q));
    CHECK(ship_txn(&B, a, src_exec(&B, "INSERT INTO t(v) VALUES ('x')"), OK_AS_IS) == 0);
    CHECK(rep_matches(a, &B));

    /* A database of another page size cannot replace it. */
    REQUIRE(src_open(&A, apath, 4096, SEED_T) == 0);
    p = rep_position(a);
    CHECK(ship_snapshot(&A, a, OK_AS_IS, 0) == APPLY_ERR_PAGE_SIZE);
    q = rep_position(a);
    CHECK(same_position(&p, &q) && rep_matches(a, &B));
    apply_close(a);
    CHECK(integrity_ok(rpath));
    src_close(&A);
    src_close(&B);
}

/* --- convergence ---------------------------------------------------------------------- */

/* Keep every free page at auto-vacuum time, as an app may ask the primary to
 * (wal.md §1.4 #4): the replica must not vacuum them away on its own. */
static unsigned int keep_free_pages(void *arg, const char *schema, unsigned int npages,
                                    unsigned int nfree, unsigned int page_size)
{
    (void)arg, (void)schema, (void)npages, (void)nfree, (void)page_size;
    return 0;
}

/* "@keep"/"@nokeep" switch keep_free_pages on the source; "!" marks a
 * statement that fails. */
static const char *const workload[] = {
    "CREATE INDEX t_v ON t(v)",
    SERIES(500) "INSERT INTO t(v) SELECT hex(randomblob(20)) FROM c",
    "INSERT INTO t(v, b) VALUES ('big', randomblob(300000))",
    "UPDATE t SET v = hex(randomblob(30)) WHERE id % 3 = 0",
    "CREATE TABLE u(k TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID",
    SERIES(300) "INSERT INTO u SELECT 'k' || n, n FROM c",
    "BEGIN; INSERT INTO t(v) VALUES ('rolled back'); ROLLBACK",
    "!INSERT INTO t(id) VALUES (1)", /* fails (UNIQUE): nothing to ship */
    "DELETE FROM t WHERE id > 100",
    "VACUUM",
    "DROP TABLE u",
    "CREATE TABLE big(x BLOB)",
    "INSERT INTO big VALUES (randomblob(500000)), (randomblob(10000))",
    "DROP INDEX t_v",
    "PRAGMA auto_vacuum=FULL",
    "VACUUM",
    "@keep",
    "DELETE FROM big WHERE length(x) > 100000",
    "@nokeep",
    SERIES(200) "INSERT INTO t(v, b) SELECT n, randomblob(3000) FROM c",
    "DELETE FROM t WHERE id % 2 = 0",
    "DELETE FROM big",
    "PRAGMA auto_vacuum=INCREMENTAL",
    "VACUUM",
    "DELETE FROM t WHERE id % 3 = 0",
    "PRAGMA incremental_vacuum(20)",
    "PRAGMA incremental_vacuum",
    "DROP TABLE big",
    ("BEGIN; CREATE TABLE w(a, b, c); CREATE INDEX w_ab ON w(a, b); "
     "INSERT INTO w VALUES (1, 2, 3); COMMIT"),
};

static const char *random_txn(int i)
{
    switch (i % 10) {
    case 0:
        return "INSERT INTO t(v, b) VALUES (hex(randomblob(8)), randomblob(6000))";
    case 6:
        return "UPDATE t SET v = hex(randomblob(12)) WHERE id IN "
               "(SELECT id FROM t ORDER BY random() LIMIT 5)";
    case 7:
        return "DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT 8)";
    case 8:
        return "BEGIN; INSERT INTO w VALUES (random(), 1, 2); UPDATE w SET c = c + 1; COMMIT";
    case 9:
        return i % 50 == 49 ? "VACUUM" : "PRAGMA incremental_vacuum(3)";
    default:
        return "INSERT INTO t(v) VALUES (hex(randomblob(16)))";
    }
}

/* Run sql on A and ship it; count what went wrong. */
static int step_and_ship(struct apply *a, const char *sql)
{
    uint64_t txid;

    if (strcmp(sql, "@keep") == 0 || strcmp(sql, "@nokeep") == 0) {
        sqlite3_autovacuum_pages(A.db, sql[1] == 'k' ? keep_free_pages : NULL, NULL, NULL);
        return 0;
    }
    if (sql[0] == '!') {
        txid = sqlite3_exec(A.db, sql + 1, NULL, NULL, NULL) == SQLITE_OK;
        return (int)txid + (capture_take_txid(A.cap) != 0);
    }
    txid = src_exec(&A, sql);
    if (txid == 0)
        return 0;
    if (ship_txn(&A, a, txid, OK_AS_IS) != 0 || !rep_matches(a, &A)) {
        fprintf(stderr, "  diverged at txid %llu [%.50s]\n", (unsigned long long)txid, sql);
        return 1;
    }
    return 0;
}

TEST(converges_through_a_workload)
{
    struct apply_stats stats;
    struct apply *a = follow_a(SEED_T, 64);
    int bad = 0, freed = 0;

    REQUIRE(a);
    for (size_t i = 0; i < ARRAY_LEN(workload); i++) {
        bad += step_and_ship(a, workload[i]);
        if (strcmp(workload[i], "@nokeep") == 0)
            freed = query(A.db, "PRAGMA freelist_count") > 50;
    }
    CHECK(freed); /* the kept free pages reached the replica, and stayed */
    for (int i = 0; i < 200; i++)
        bad += step_and_ship(a, random_txn(i));
    CHECK(bad == 0);
    CHECK(content_hash(rpath) == content_hash(apath));
    CHECK(integrity_ok(rpath));
    apply_stats(a, &stats);
    CHECK(stats.txns == src_status(&A).head_txid && stats.snapshots == 1);
    CHECK(stats.checksum_mismatches == 0 && stats.checkpoints > 0 && stats.pages > stats.txns);
    apply_close(a);
    /* After the last connection closes, the file holds exactly the pages. */
    CHECK(file_size(rpath) == (int64_t)src_status(&A).db_pages * 4096);
    CHECK(file_checksum(rpath) == src_status(&A).checksum);
    src_close(&A);
}

/* --- readers --------------------------------------------------------------------------- */

/* From inside an apply, a new read transaction must see the committed state. */
struct peek {
    sqlite3 *r;
    const char *sql;
    int64_t want;
    int checks, bad;
};

static void peek_hook(void *arg, enum apply_step step)
{
    struct peek *p = arg;

    if (step == APPLY_STEP_BEGUN || step == APPLY_STEP_COMMITTED)
        return;
    p->checks++;
    if (query(p->r, p->sql) != p->want)
        p->bad++;
}

#define BANK_SEED                                                                                  \
    "CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER, pad BLOB); " SERIES(                   \
        100) "INSERT INTO acct SELECT n, 100, randomblob(500) FROM c"
#define BANK_STATE "SELECT count(*) * 1000000 + sum(bal) FROM acct"

TEST(readers_see_whole_transactions)
{
    struct apply *a = follow_a(BANK_SEED, 0);
    struct peek pk = {NULL, BANK_STATE, 0, 0, 0};
    char sql[256];
    sqlite3 *held;

    REQUIRE(a);
    pk.r = open_reader(rpath);
    held = open_reader(rpath);
    REQUIRE(pk.r && held);
    CHECK(exec(held, "BEGIN") == SQLITE_OK);
    CHECK(query(held, BANK_STATE) == 100 * 1000000 + 10000);
    apply_test_hook(a, peek_hook, &pk);
    for (int i = 0; i < 40; i++) {
        if (i % 10 == 9)
            snprintf(sql, sizeof(sql), "INSERT INTO acct(bal, pad) VALUES (50, randomblob(900))");
        else if (i == 35)
            snprintf(sql, sizeof(sql), "DELETE FROM acct WHERE id > 60");
        else if (i == 36)
            snprintf(sql, sizeof(sql), "VACUUM");
        else
            snprintf(sql, sizeof(sql),
                     "BEGIN; UPDATE acct SET bal = bal - 7 WHERE id = %d; "
                     "UPDATE acct SET bal = bal + 7 WHERE id = %d; COMMIT",
                     1 + i % 50, 51 + i % 40);
        pk.want = query(pk.r, BANK_STATE);
        src_exec(&A, sql);
        CHECK(ship_all(&A, a) == 0);
        CHECK(query(pk.r, BANK_STATE) == query(A.db, BANK_STATE));
    }
    CHECK(pk.checks >= 80 && pk.bad == 0);
    /* The held reader still sees where it began, until it ends. */
    CHECK(query(held, BANK_STATE) == 100 * 1000000 + 10000);
    CHECK(exec(held, "COMMIT") == SQLITE_OK);
    CHECK(query(held, BANK_STATE) == query(A.db, BANK_STATE));
    CHECK(rep_matches(a, &A));
    sqlite3_close(held);
    sqlite3_close(pk.r);
    apply_close(a);
    src_close(&A);
}

TEST(a_snapshot_replaces_a_populated_replica_under_readers)
{
    struct apply *a = follow_a(
        "CREATE TABLE a_only(x); " SERIES(3000) "INSERT INTO a_only SELECT randomblob(200) FROM c",
        0);
    struct peek pk = {NULL, "SELECT count(*) FROM a_only", 3001, 0, 0};
    struct apply_stats stats;
    sqlite3 *held;

    REQUIRE(a);
    CHECK(ship_txn(&A, a, src_exec(&A, "INSERT INTO a_only VALUES (1)"), OK_AS_IS) == 0);
    REQUIRE(src_open(&B, bpath, 4096, "CREATE TABLE b_only(y); INSERT INTO b_only VALUES (7)") ==
            0);
    pk.r = open_reader(rpath);
    held = open_reader(rpath);
    REQUIRE(pk.r && held);
    CHECK(exec(held, "BEGIN") == SQLITE_OK && query(held, "SELECT count(*) FROM a_only") == 3001);

    /* B is much smaller: the snapshot truncates. */
    apply_test_hook(a, peek_hook, &pk);
    CHECK(ship_snapshot(&B, a, OK_AS_IS, 0) == 0);
    CHECK(pk.checks >= 3 && pk.bad == 0);
    apply_test_hook(a, NULL, NULL);
    CHECK(rep_matches_delta(a, &B, 1)); /* A and B both have schema cookie 1 */
    CHECK(query(held, "SELECT count(*) FROM a_only") == 3001);
    CHECK(exec(held, "COMMIT") == SQLITE_OK);
    CHECK(query(held, "SELECT count(*) FROM b_only") == 1);
    CHECK(query(held, "SELECT count(*) FROM a_only") == -1); /* no such table */
    CHECK(query(held, "PRAGMA page_count") == src_status(&B).db_pages);

    /* It follows B from there, and a snapshot of A grows it back. */
    CHECK(ship_txn(&B, a, src_exec(&B, "INSERT INTO b_only VALUES (8)"), OK_AS_IS) == 0);
    CHECK(rep_matches_delta(a, &B, 1) && content_hash(rpath) == content_hash(bpath));
    CHECK(ship_snapshot(&A, a, OK_AS_IS, 0) == 0);
    CHECK(rep_matches_delta(a, &A, 2) && content_hash(rpath) == content_hash(apath));
    CHECK(ship_snapshot(&A, a, OK_AS_IS, 0) == 0); /* the same history keeps its delta */
    CHECK(rep_matches_delta(a, &A, 2) && integrity_ok(rpath));
    apply_stats(a, &stats);
    CHECK(stats.snapshots == 4 && stats.txns == 2);
    sqlite3_close(held);
    sqlite3_close(pk.r);
    apply_close(a);
    src_close(&A);
    src_close(&B);
}

/* Readers cache the schema by its cookie. An idle reader that knew A's
 * tables must see B's after a snapshot of B, though both databases have
 * schema cookie 1: the replica stores B's with a delta (apply.h). */
TEST(a_snapshot_of_another_database_never_reuses_a_schema_cookie)
{
    struct apply *a = follow_a("CREATE TABLE a_only(x); INSERT INTO a_only VALUES (1)", 0);
    struct apply_position p, q;
    sqlite3 *idle;

    REQUIRE(a);
    REQUIRE(src_open(&B, bpath, 4096,
                     "CREATE TABLE b_only(y, z); INSERT INTO b_only VALUES (2, 3)") == 0);
    CHECK(query(A.db, "PRAGMA schema_version") == 1 && query(B.db, "PRAGMA schema_version") == 1);
    idle = open_reader(rpath);
    REQUIRE(idle);
    CHECK(query(idle, "SELECT x FROM a_only") == 1);
    CHECK(ship_snapshot(&B, a, OK_AS_IS, 0) == 0 && rep_matches_delta(a, &B, 1));
    CHECK(query(idle, "SELECT z FROM b_only") == 3 && query(idle, "SELECT x FROM a_only") == -1);

    /* B's transactions keep the delta, schema changes included, and so does a
     * restart. */
    src_exec(&B, "BEGIN; CREATE TABLE b3(w); INSERT INTO b3 VALUES (4); COMMIT");
    CHECK(ship_all(&B, a) == 0 && rep_matches_delta(a, &B, 1));
    CHECK(query(idle, "SELECT w FROM b3") == 4);
    p = rep_position(a);
    apply_close(a);
    a = rep_open(0);
    REQUIRE(a);
    q = rep_position(a);
    CHECK(same_position(&p, &q) && rep_matches_delta(a, &B, 1));

    /* Back to A, whose cookie 1 is below the replica's 3: one above that. */
    CHECK(ship_snapshot(&A, a, OK_AS_IS, 0) == 0 && rep_matches_delta(a, &A, 3));
    CHECK(query(idle, "SELECT x FROM a_only") == 1 && query(idle, "SELECT w FROM b3") == -1);
    /* A database whose cookie is above the replica's needs no delta. */
    REQUIRE(src_open(&C, cpath, 4096,
                     "CREATE TABLE c1(a); CREATE TABLE c2(a); CREATE TABLE c3(a); "
                     "CREATE TABLE c4(a); CREATE TABLE c5(a); CREATE TABLE c6(a); "
                     "INSERT INTO c6 VALUES (5)") == 0);
    CHECK(ship_snapshot(&C, a, OK_AS_IS, 0) == 0 && rep_matches(a, &C));
    CHECK(query(idle, "SELECT a FROM c6") == 5 && query(idle, "SELECT x FROM a_only") == -1);
    CHECK(integrity_ok(rpath) && content_hash(rpath) == content_hash(cpath));
    sqlite3_close(idle);
    apply_close(a);
    src_close(&A);
    src_close(&B);
    src_close(&C);
}

/* A reader holding an old snapshot: passive checkpoints neither wait for it
 * nor fail the apply, and catch up once it is gone. */
static void ship_blobs(struct apply *a, int n)
{
    for (int i = 0; i < n; i++)
        CHECK(ship_txn(&A, a, src_exec(&A, "INSERT INTO t(b) VALUES (randomblob(9000))"),
                       OK_AS_IS) == 0);
}

TEST(checkpoints_never_wait_for_readers)
{
    char wal[160];
    struct apply_stats s1, s2;
    struct apply *a = follow_a(SEED_T, 16);
    int64_t size0, size1;
    sqlite3 *held;

    REQUIRE(a);
    snprintf(wal, sizeof(wal), "%s-wal", rpath);
    held = open_reader(rpath);
    REQUIRE(held);
    CHECK(exec(held, "BEGIN") == SQLITE_OK && query(held, "SELECT count(*) FROM t") == 200);
    size0 = file_size(wal);
    ship_blobs(a, 60);
    apply_stats(a, &s1);
    /* Checkpoints ran (every 16 frames, not every commit) but the WAL grew. */
    CHECK(s1.checkpoints >= 5 && s1.checkpoints < 40);
    CHECK(file_size(wal) > size0 + 60 * 4096 && query(held, "SELECT count(*) FROM t") == 200);
    CHECK(exec(held, "COMMIT") == SQLITE_OK);
    /* Without the reader the WAL restarts instead of growing on. */
    ship_blobs(a, 60);
    size1 = file_size(wal);
    ship_blobs(a, 60);
    apply_stats(a, &s2);
    CHECK(s2.checkpoints > s1.checkpoints + 10 && file_size(wal) == size1);
    CHECK(rep_matches(a, &A) && integrity_ok(rpath));
    sqlite3_close(held);
    apply_close(a);
    src_close(&A);
}

/* --- checksum mismatches -------------------------------------------------------------- */

/* Apply txid with a fault: nothing may change. */
static int refused_untouched(struct apply *a, uint64_t txid, enum fault fault, int snapshot)
{
    struct apply_position before = rep_position(a), after;
    uint64_t sum = file_checksum(rpath);
    int rc = snapshot ? ship_snapshot(&A, a, fault, 0) : ship_txn(&A, a, txid, fault);

    after = rep_position(a);
    return rc == APPLY_ERR_CHECKSUM && same_position(&before, &after) &&
           file_checksum(rpath) == sum && integrity_ok(rpath);
}

TEST(a_checksum_mismatch_applies_nothing)
{
    struct apply *a = follow_a(SEED_T, 0);
    struct apply_stats stats;
    uint64_t txid;

    REQUIRE(a);
    /* A page that grows the database, one that rewrites, one that shrinks. */
    txid = src_exec(&A, "INSERT INTO t(b) VALUES (randomblob(50000))");
    CHECK(refused_untouched(a, txid, FLIP_PAGE, 0));
    CHECK(refused_untouched(a, txid, FLIP_SUM, 0));
    CHECK(ship_txn(&A, a, txid, OK_AS_IS) == 0 && rep_matches(a, &A));
    txid = src_exec(&A, "UPDATE t SET v = 'changed' WHERE id < 50");
    CHECK(refused_untouched(a, txid, FLIP_PAGE, 0));
    CHECK(ship_txn(&A, a, txid, OK_AS_IS) == 0 && rep_matches(a, &A));
    txid = src_exec(&A, "BEGIN; DELETE FROM t WHERE b IS NOT NULL; COMMIT; VACUUM");
    CHECK(ship_txn(&A, a, txid - 1, OK_AS_IS) == 0);
    CHECK(refused_untouched(a, txid, FLIP_PAGE, 0));
    CHECK(refused_untouched(a, txid, FLIP_SUM, 0));
    CHECK(ship_txn(&A, a, txid, OK_AS_IS) == 0 && rep_matches(a, &A));
    /* Snapshots are checked too. */
    src_exec(&A, "INSERT INTO t(v) VALUES ('after')");
    CHECK(refused_untouched(a, 0, FLIP_PAGE, 1));
    CHECK(refused_untouched(a, 0, FLIP_SUM, 1));
    CHECK(ship_snapshot(&A, a, OK_AS_IS, 0) == 0 && rep_matches(a, &A));
    apply_stats(a, &stats);
    CHECK(stats.checksum_mismatches == 7);
    CHECK(content_hash(rpath) == content_hash(apath));
    apply_close(a);
    src_close(&A);
}

/* --- order, page and state errors ------------------------------------------------------ */

static const uint8_t *zero_page(void)
{
    memset(pagebuf, 0, sizeof(pagebuf));
    return pagebuf;
}

/* The replica is where A's head is, and the next transaction still applies. */
static int unharmed(struct apply *a)
{
    uint64_t txid;

    if (!rep_matches(a, &A))
        return 0;
    txid = src_exec(&A, "INSERT INTO t(v) VALUES ('next')");
    return ship_txn(&A, a, txid, OK_AS_IS) == 0 && rep_matches(a, &A);
}

TEST(order_errors)
{
    struct apply *a = follow_a(SEED_T, 0);
    uint64_t pos;
    const uint8_t *z = zero_page();

    REQUIRE(a);
    CHECK(ship_txn(&A, a, src_exec(&A, "INSERT INTO t(v) VALUES (1)"), OK_AS_IS) == 0);
    pos = rep_position(a).txid;
    CHECK(apply_txn_begin(a, pos + 2, 10, 4096) == APPLY_ERR_ORDER);
    CHECK(apply_txn_begin(a, pos, 10, 4096) == APPLY_ERR_ORDER);
    CHECK(ship_txn(&A, a, pos, OK_AS_IS) == APPLY_ERR_ORDER); /* a replay */
    /* Pages out of order roll the transaction back. */
    CHECK(apply_txn_begin(a, pos + 1, 10, 4096) == 0);
    CHECK(apply_txn_page(a, 5, z, 4096) == 0);
    CHECK(apply_txn_page(a, 3, z, 4096) == APPLY_ERR_ORDER);
    CHECK(apply_txn_commit(a, 0, 0) == APPLY_ERR_STATE);
    CHECK(apply_txn_begin(a, pos + 1, 10, 4096) == 0);
    CHECK(apply_txn_page(a, 5, z, 4096) == 0);
    CHECK(apply_txn_page(a, 5, z, 4096) == APPLY_ERR_ORDER);
    /* A snapshot with a gap, or one that ends early. */
    CHECK(apply_snapshot_begin(a, "abc", 1, 9, 10, 4096) == 0);
    CHECK(apply_snapshot_page(a, 1, z, 4096) == 0);
    CHECK(apply_snapshot_page(a, 3, z, 4096) == APPLY_ERR_ORDER);
    CHECK(apply_snapshot_page(a, 4, z, 4096) == APPLY_ERR_STATE);
    CHECK(ship_snapshot(&A, a, OK_AS_IS, 2) == APPLY_ERR_ORDER);
    CHECK(unharmed(a));
    CHECK(integrity_ok(rpath));
    apply_close(a);
    src_close(&A);
}

TEST(page_errors)
{
    struct apply *a = follow_a(SEED_T, 0);
    const uint8_t *z = zero_page();
    uint64_t next;

    REQUIRE(a);
    next = rep_position(a).txid + 1;
    CHECK(apply_txn_begin(a, next, 10, 8192) == APPLY_ERR_PAGE);
    CHECK(apply_txn_begin(a, next, 0, 4096) == APPLY_ERR_PAGE);
    CHECK(apply_txn_begin(a, next, UINT32_MAX, 4096) == APPLY_ERR_PAGE);
    struct {
        uint32_t pgno;
        size_t len;
    } bad[] = {{0, 4096}, {11, 4096}, {3, 4095}, {3, 8192}, {3, 0}};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        CHECK(apply_txn_begin(a, next, 10, 4096) == 0);
        CHECK(apply_txn_page(a, 2, z, 4096) == 0);
        CHECK(apply_txn_page(a, bad[i].pgno, z, bad[i].len) == APPLY_ERR_PAGE);
        CHECK(apply_txn_page(a, 9, z, 4096) == APPLY_ERR_STATE); /* rolled back */
        CHECK(apply_snapshot_begin(a, "abc", 1, 9, 10, 4096) == 0);
        CHECK(apply_snapshot_page(a, bad[i].pgno, z, bad[i].len) == APPLY_ERR_PAGE);
        CHECK(apply_snapshot_commit(a, 0, 0) == APPLY_ERR_STATE);
    }
    /* A transaction that grows the database must write its new last page. */
    CHECK(apply_txn_begin(a, next, rep_position(a).db_pages + 3, 4096) == 0);
    CHECK(apply_txn_page(a, rep_position(a).db_pages + 2, z, 4096) == 0);
    CHECK(apply_txn_commit(a, 0, 0) == APPLY_ERR_PAGE);
    CHECK(apply_txn_commit(a, 0, 0) == APPLY_ERR_STATE);
    /* Snapshot headers. */
    CHECK(apply_snapshot_begin(a, "abc", 1, 9, 0, 4096) == APPLY_ERR_PAGE);
    CHECK(apply_snapshot_begin(a, "abc", 1, 9, 10, 1000) == APPLY_ERR_PAGE);
    CHECK(apply_snapshot_begin(a, "abc", 1, 9, 10, 256) == APPLY_ERR_PAGE);
    CHECK(apply_snapshot_begin(a, "abc", 1, 9, 10, 131072) == APPLY_ERR_PAGE);
    CHECK(apply_snapshot_begin(a, "abc", 1, 9, UINT32_MAX, 4096) == APPLY_ERR_PAGE);
    CHECK(apply_snapshot_begin(a, "abc", 1, 9, 10, 8192) == APPLY_ERR_PAGE_SIZE);
    CHECK(apply_snapshot_begin(a, "", 1, 9, 10, 4096) == APPLY_ERR_STATE);
    CHECK(apply_snapshot_begin(a, NULL, 1, 9, 10, 4096) == APPLY_ERR_STATE);
    CHECK(apply_snapshot_begin(a, "a b", 1, 9, 10, 4096) == APPLY_ERR_STATE);
    CHECK(apply_snapshot_begin(a, "0123456789abcdef0123456789abcdef0", 1, 9, 10, 4096) ==
          APPLY_ERR_STATE);
    CHECK(unharmed(a));
    apply_close(a);
    src_close(&A);
}

/* The lock-byte page needs a 1 GiB database at 64 KiB pages: 16385. It is
 * refused before anything reaches SQLite, so the database can stay small. */
TEST(the_lock_byte_page_is_refused)
{
    uint32_t lock = pagesum_lock_page(65536);
    const uint8_t *z = zero_page();
    struct apply_position before, after;
    struct apply *a;

    REQUIRE(lock == 16385);
    REQUIRE(src_open(&C, cpath, 65536, SEED_T) == 0);
    wipe(rpath);
    a = rep_open(0);
    REQUIRE(a && ship_snapshot(&C, a, OK_AS_IS, 0) == 0);
    before = rep_position(a);
    CHECK(apply_txn_begin(a, before.txid + 1, lock + 3, 65536) == 0);
    CHECK(apply_txn_page(a, lock - 1, z, 65536) == 0);
    CHECK(apply_txn_page(a, lock, z, 65536) == APPLY_ERR_PAGE);
    CHECK(apply_snapshot_begin(a, "abc", 1, 9, lock + 3, 65536) == 0);
    CHECK(apply_snapshot_page(a, lock, z, 65536) == APPLY_ERR_PAGE);
    after = rep_position(a);
    CHECK(same_position(&before, &after) && rep_matches(a, &C));
    CHECK(ship_txn(&C, a, src_exec(&C, "INSERT INTO t(v) VALUES (2)"), OK_AS_IS) == 0);
    CHECK(rep_matches(a, &C));
    apply_close(a);
    src_close(&C);
}

TEST(calls_out_of_sequence_change_nothing)
{
    struct apply *a = follow_a(SEED_T, 0);
    const uint8_t *z = zero_page();
    struct replog_reader *rd;
    struct replog_txn t;
    const uint8_t *data;
    uint32_t pgno;

    REQUIRE(a);
    CHECK(apply_txn_page(a, 1, z, 4096) == APPLY_ERR_STATE);
    CHECK(apply_txn_commit(a, 0, 0) == APPLY_ERR_STATE);
    CHECK(apply_snapshot_page(a, 1, z, 4096) == APPLY_ERR_STATE);
    CHECK(apply_snapshot_commit(a, 0, 0) == APPLY_ERR_STATE);
    apply_abort(a); /* nothing open: a no-op */

    /* Wrong calls inside a transaction leave it open and intact. */
    uint64_t txid = src_exec(&A, "UPDATE t SET v = 'u' WHERE id % 2 = 0");
    REQUIRE(replog_reader_open(capture_log(A.cap), txid, &rd) == 0);
    REQUIRE(replog_reader_next(rd, &t) == 0);
    CHECK(apply_txn_begin(a, t.txid, t.db_pages, t.page_size) == 0);
    CHECK(apply_txn_begin(a, t.txid, t.db_pages, t.page_size) == APPLY_ERR_STATE);
    CHECK(apply_snapshot_begin(a, "abc", 1, 1, 1, 4096) == APPLY_ERR_STATE);
    CHECK(apply_snapshot_page(a, 1, z, 4096) == APPLY_ERR_STATE);
    CHECK(apply_snapshot_commit(a, 0, 0) == APPLY_ERR_STATE);
    for (uint32_t i = 0; i < t.npages; i++)
        CHECK(replog_reader_page(rd, i, &pgno, &data) == 0 &&
              apply_txn_page(a, pgno, data, t.page_size) == 0);
    CHECK(apply_txn_commit(a, t.checksum, t.time_us) == 0);
    replog_reader_close(rd);
    CHECK(rep_matches(a, &A));

    /* Inside a snapshot too; and an abort in the middle of either. */
    CHECK(apply_snapshot_begin(a, "abc", 1, 1, 3, 4096) == 0);
    CHECK(apply_txn_begin(a, t.txid + 1, 3, 4096) == APPLY_ERR_STATE);
    CHECK(apply_txn_page(a, 1, z, 4096) == APPLY_ERR_STATE);
    CHECK(apply_txn_commit(a, 0, 0) == APPLY_ERR_STATE);
    CHECK(apply_snapshot_page(a, 1, z, 4096) == 0);
    apply_abort(a);
    txid = src_exec(&A, "INSERT INTO t(b) VALUES (randomblob(20000))");
    CHECK(apply_txn_begin(a, txid, src_status(&A).db_pages, 4096) == 0);
    CHECK(apply_txn_page(a, 2, z, 4096) == 0);
    apply_abort(a);
    CHECK(ship_txn(&A, a, txid, OK_AS_IS) == 0);
    CHECK(unharmed(a));

    /* Closing with a transaction open rolls it back. */
    CHECK(apply_txn_begin(a, rep_position(a).txid + 1, 3, 4096) == 0);
    CHECK(apply_txn_page(a, 1, z, 4096) == 0);
    apply_close(a);
    CHECK(integrity_ok(rpath) && file_checksum(rpath) == src_status(&A).checksum);
    a = rep_open(0);
    REQUIRE(a);
    CHECK(rep_matches(a, &A));
    apply_close(a);
    apply_close(NULL);
    src_close(&A);
}

/* --- SQLite and I/O failures ----------------------------------------------------------- */

/* A transaction of n new rows of `bytes` each. */
static uint64_t src_rows(int n, int bytes)
{
    char sql[200];

    snprintf(sql, sizeof(sql),
             "WITH RECURSIVE c(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM c WHERE n < %d) "
             "INSERT INTO t(b) SELECT randomblob(%d) FROM c",
             n, bytes);
    return src_exec(&A, sql);
}

/* Let no file of this process grow past max bytes (-1: no limit). */
static void set_fsize(int64_t max)
{
    struct rlimit lim;

    signal(SIGXFSZ, SIG_IGN);
    getrlimit(RLIMIT_FSIZE, &lim);
    lim.rlim_cur = max < 0 ? lim.rlim_max : (rlim_t)max;
    setrlimit(RLIMIT_FSIZE, &lim);
}

/* Let files grow only `room` bytes past the replica's WAL. */
static void limit_files(int64_t room)
{
    char wal[160];

    snprintf(wal, sizeof(wal), "%s-wal", rpath);
    set_fsize(room < 0 ? -1 : file_size(wal) + room);
}

static void count_pages(void *arg, enum apply_step step)
{
    *(int *)arg += step == APPLY_STEP_PAGE;
}

TEST(sqlite_failures_roll_back)
{
    struct apply *a = follow_a(SEED_T, 100000);
    struct apply_position before, after;
    uint64_t small, big;
    int pages = 0;
    sqlite3 *w;

    REQUIRE(a);
    signal(SIGXFSZ, SIG_IGN);
    /* Another writer holds the lock past the busy timeout. */
    REQUIRE(sqlite3_open(rpath, &w) == SQLITE_OK);
    CHECK(exec(w, "BEGIN IMMEDIATE") == SQLITE_OK);
    small = src_rows(2, 100);
    CHECK(ship_txn(&A, a, small, OK_AS_IS) == APPLY_ERR_SQLITE);
    CHECK(exec(w, "ROLLBACK") == SQLITE_OK);
    sqlite3_close(w);
    /* The WAL cannot grow: COMMIT fails (a small transaction) or a page
     * write fails when the page cache spills (a big one). */
    before = rep_position(a);
    big = src_rows(1500, 3000);
    limit_files(4096);
    CHECK(ship_txn(&A, a, small, OK_AS_IS) == APPLY_ERR_SQLITE);
    limit_files(-1);
    after = rep_position(a);
    CHECK(same_position(&before, &after) && integrity_ok(rpath));
    CHECK(ship_txn(&A, a, small, OK_AS_IS) == 0);
    limit_files(4096);
    apply_test_hook(a, count_pages, &pages);
    CHECK(ship_txn(&A, a, big, OK_AS_IS) == APPLY_ERR_SQLITE);
    apply_test_hook(a, NULL, NULL);
    limit_files(-1);
    CHECK(pages > 0 && pages < 1000); /* it failed among the pages */
    CHECK(rep_position(a).txid == small && integrity_ok(rpath));
    CHECK(ship_txn(&A, a, big, OK_AS_IS) == 0 && rep_matches(a, &A));

    /* Snapshots too: A's pages spill, B's small one fails at COMMIT. */
    REQUIRE(src_open(&B, bpath, 4096, "CREATE TABLE b_only(y); INSERT INTO b_only VALUES (1)") ==
            0);
    before = rep_position(a);
    limit_files(4096);
    CHECK(ship_snapshot(&A, a, OK_AS_IS, 0) == APPLY_ERR_SQLITE);
    CHECK(ship_snapshot(&B, a, OK_AS_IS, 0) == APPLY_ERR_SQLITE);
    limit_files(-1);
    after = rep_position(a);
    CHECK(same_position(&before, &after) && rep_matches(a, &A) && integrity_ok(rpath));
    CHECK(ship_snapshot(&B, a, OK_AS_IS, 0) == 0 && rep_matches_delta(a, &B, 1));
    apply_close(a);
    src_close(&A);
    src_close(&B);
}

TEST(position_write_failures_roll_back)
{
    struct apply *a = follow_a(SEED_T, 100000);
    struct apply_position before, after;
    uint64_t txid;
    int rc[2];

    REQUIRE(a);
    before = rep_position(a);
    txid = src_rows(3, 500);
    /* No file may grow past 512 bytes: the position slot at offset 512
     * cannot be written (nor the WAL grow at COMMIT), so of two tries, the
     * one that writes that slot fails in the position file. */
    REQUIRE(file_size(pos_path) == 1024);
    set_fsize(512);
    rc[0] = ship_txn(&A, a, txid, OK_AS_IS);
    rc[1] = ship_txn(&A, a, txid, OK_AS_IS);
    set_fsize(-1);
    CHECK(rc[0] == APPLY_ERR_IO || rc[1] == APPLY_ERR_IO);
    CHECK(rc[0] < 0 && rc[1] < 0);
    after = rep_position(a);
    CHECK(same_position(&before, &after) && file_checksum(rpath) == before.checksum);
    CHECK(integrity_ok(rpath));
    /* The file still names the state exactly, and the transaction applies. */
    apply_close(a);
    a = rep_open(0);
    REQUIRE(a);
    after = rep_position(a);
    CHECK(same_position(&before, &after));
    CHECK(ship_txn(&A, a, txid, OK_AS_IS) == 0 && rep_matches(a, &A));
    apply_close(a);
    /* A position file that cannot be opened fails the open. */
    SH("mv '%s' '%s'.x && mkdir '%s'", pos_path, pos_path, pos_path);
    CHECK(rep_open(0) == NULL);
    SH("rmdir '%s' && mv '%s'.x '%s'", pos_path, pos_path, pos_path);
    a = rep_open(0);
    REQUIRE(a);
    CHECK(rep_matches(a, &A));
    apply_close(a);
    src_close(&A);
}

TEST(open_failures)
{
    char path[192], lock[256];
    struct apply_config cfg = {path, 0};
    struct apply *a = NULL, *b = NULL;
    sqlite3 *r;

    snprintf(path, sizeof(path), "%s/no/such/dir/r.db", tmpdir);
    CHECK(apply_open(&cfg, &a) == APPLY_ERR_IO);
    snprintf(path, sizeof(path), "%s/dir.db", tmpdir);
    SH("mkdir -p '%s'", path);
    CHECK(apply_open(&cfg, &a) == APPLY_ERR_SQLITE); /* a directory */
    snprintf(path, sizeof(path), "%s/junk.db", tmpdir);
    SH("head -c 8192 /dev/urandom > '%s'", path);
    CHECK(apply_open(&cfg, &a) == APPLY_ERR_SQLITE); /* not a database */

    /* A database in rollback mode that a reader holds cannot become WAL. */
    snprintf(path, sizeof(path), "%s/rollback.db", tmpdir);
    REQUIRE(sqlite3_open(path, &r) == SQLITE_OK);
    CHECK(exec(r, "CREATE TABLE x(y); BEGIN; SELECT * FROM x") == SQLITE_OK);
    CHECK(apply_open(&cfg, &a) == APPLY_ERR_SQLITE);
    CHECK(exec(r, "COMMIT") == SQLITE_OK);
    sqlite3_close(r);
    CHECK(apply_open(&cfg, &a) == 0); /* now it can */
    apply_close(a);

    snprintf(path, sizeof(path), "%s/locked.db", tmpdir);
    snprintf(lock, sizeof(lock), "%s-boomerang/lock", path);
    SH("mkdir -p '%s'", lock);
    CHECK(apply_open(&cfg, &a) == APPLY_ERR_IO); /* the lock file is a directory */
    SH("rmdir '%s'", lock);
    CHECK(apply_open(&cfg, &a) == 0);
    CHECK(apply_open(&cfg, &b) == APPLY_ERR_STATE); /* held by a */
    apply_close(a);
    CHECK(apply_open(&cfg, &b) == 0);
    apply_close(b);
}

/* --- recovering the position ------------------------------------------------------------ */

/* Reopen and return the position. */
static struct apply_position reopened(void)
{
    struct apply_position p;
    struct apply *a = rep_open(0);

    memset(&p, 0xff, sizeof(p));
    if (a) {
        apply_position(a, &p);
        apply_close(a);
    }
    return p;
}

/* The position is unknown: no id, but the real page size, size and checksum. */
static int unknown(const struct apply_position *p, uint64_t sum, uint32_t pages)
{
    return p->database_id[0] == '\0' && p->txid == 0 && p->epoch == 0 && p->checksum == sum &&
           p->page_size == 4096 && p->db_pages == pages;
}

static void write_bytes(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "w");

    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0)
        abort();
}

static uint64_t slot_seq(const char *slot)
{
    uint64_t seq = 0;

    return sscanf(slot, "boomerang-position 1 %" SCNu64, &seq) == 1 ? seq : 0;
}

/* A slot: header, cur_tag + cur, "next " + next, its sum, newlines. */
static void forge_slot(char slot[512], const char *header, const char *cur_tag, const char *cur,
                       const char *next)
{
    size_t n = (size_t)snprintf(slot, 512, "%s%s%snext %s", header, cur_tag, cur, next);

    n += (size_t)snprintf(slot + n, 512 - n, "sum %016llx\n",
                          (unsigned long long)XXH3_64bits(slot, n));
    memset(slot + n, '\n', 512 - n);
}

/* Change one digit of the database id in a slot's "cur" line. */
static void damage_slot(char *slot)
{
    char *d = strstr(slot, "\ncur ") + 20;

    *d = *d == '1' ? '2' : '1';
}

TEST(the_position_is_trusted_only_when_it_matches)
{
    struct apply *a = follow_a(SEED_T, 0);
    struct apply_position p, known;
    char *text, forged[512];
    uint32_t pages;
    uint64_t sum;
    size_t len;
    int newest;

    REQUIRE(a);
    CHECK(ship_txn(&A, a, src_exec(&A, "DELETE FROM t WHERE id > 10"), OK_AS_IS) == 0);
    known = rep_position(a);
    apply_close(a);
    sum = known.checksum;
    pages = known.db_pages;
    p = reopened();
    CHECK(same_position(&p, &known));
    REQUIRE(util_read_file(pos_path, 4096, &text, &len) == 0 && len == 1024);
    newest = slot_seq(text + 512) > slot_seq(text);

    /* Damage to the older slot does not matter. To the newer one (a torn
     * write), it leaves the older slot, which names states before this one. */
    damage_slot(text + 512 * !newest);
    write_bytes(pos_path, text, len);
    p = reopened();
    CHECK(same_position(&p, &known));
    damage_slot(text + 512 * newest);
    write_bytes(pos_path, text, len);
    p = reopened();
    CHECK(unknown(&p, sum, pages));
    /* Cut short, empty, missing. */
    write_bytes(pos_path, text, 300);
    p = reopened();
    CHECK(unknown(&p, sum, pages));
    write_bytes(pos_path, "", 0);
    p = reopened();
    CHECK(unknown(&p, sum, pages));
    SH("rm '%s'", pos_path);
    p = reopened();
    CHECK(unknown(&p, sum, pages));

    /* Slots that are whole, with a valid sum, but not in the form we write. A
     * canonical one is taken (txid 7 here: only the checksum is checked). */
    char ok[160], cur[160];
    snprintf(ok, sizeof(ok), "%s %llu 7 %016llx 4096 %u 0 0\n", known.database_id,
             (unsigned long long)known.epoch, (unsigned long long)sum, pages);
    forge_slot(forged, "boomerang-position 1 5\n", "cur ", ok, ok);
    write_bytes(pos_path, forged, sizeof(forged));
    p = reopened();
    CHECK(p.txid == 7 && strcmp(p.database_id, known.database_id) == 0);
    static const char *const headers[] = {"boomerang-position 1 +5\n", "boomerang-position 2 5\n"};
    for (size_t i = 0; i < ARRAY_LEN(headers); i++) {
        forge_slot(forged, headers[i], "cur ", ok, ok);
        write_bytes(pos_path, forged, sizeof(forged));
        p = reopened();
        CHECK(unknown(&p, sum, pages));
    }
    static const struct {
        const char *tag, *id_end, *txid, *tail;
    } curs[] = {
        {"cux", "", "7", " 0"},   /* the tag */
        {"cur", "", "+7", " 0"},  /* "+" */
        {"cur", "", "7", ""},     /* a field missing */
        {"cur", "", "7", " 0 0"}, /* a field too many */
        {"cur", "0", "7", " 0"},  /* a 33-character id */
    };
    for (size_t i = 0; i < ARRAY_LEN(curs); i++) {
        snprintf(cur, sizeof(cur), "%s %s%s %llu %s %016llx 4096 %u 0%s\n", curs[i].tag,
                 known.database_id, curs[i].id_end, (unsigned long long)known.epoch, curs[i].txid,
                 (unsigned long long)sum, pages, curs[i].tail);
        forge_slot(forged, "boomerang-position 1 5\n", "", cur, ok);
        write_bytes(pos_path, forged, sizeof(forged));
        p = reopened();
        CHECK(unknown(&p, sum, pages));
    }
    forged[7] = '\n'; /* a slot of the right form but a bad sum */
    write_bytes(pos_path, forged, sizeof(forged));
    p = reopened();
    CHECK(unknown(&p, sum, pages));
    memcpy(forged, text + 512 * newest, 512); /* a valid slot, then ... */
    forged[511] = 'x';                        /* ... something after it */
    write_bytes(pos_path, forged, sizeof(forged));
    p = reopened();
    CHECK(unknown(&p, sum, pages));
    memset(forged, '\n', sizeof(forged)); /* lines missing */
    write_bytes(pos_path, forged, sizeof(forged));
    p = reopened();
    CHECK(unknown(&p, sum, pages));

    /* A snapshot gives it a position again (and, since nothing says the
     * content was A's, a schema cookie above the one it had); then a write
     * from outside boomerang makes the database match neither record. */
    a = rep_open(0);
    REQUIRE(a);
    CHECK(apply_txn_begin(a, 1, 1, 4096) == APPLY_ERR_STATE);
    CHECK(ship_snapshot(&A, a, OK_AS_IS, 0) == 0 && rep_matches_delta(a, &A, 1));
    apply_close(a);
    sqlite3 *w;
    REQUIRE(sqlite3_open(rpath, &w) == SQLITE_OK);
    CHECK(exec(w, "INSERT INTO t(v) VALUES ('stray')") == SQLITE_OK);
    sqlite3_close(w);
    p = reopened();
    REQUIRE((w = open_reader(rpath)) != NULL);
    pages = (uint32_t)query(w, "PRAGMA page_count");
    sqlite3_close(w);
    CHECK(unknown(&p, file_checksum(rpath), pages));

    /* The database is gone, its state directory is not: a new replica. */
    SH("rm -f '%s' '%s'-wal '%s'-shm", rpath, rpath, rpath);
    p = reopened();
    CHECK(p.database_id[0] == '\0' && p.page_size == 0 && p.db_pages == 0 && p.checksum == 0);
    free(text);
    src_close(&A);
}

/* --- crashes ---------------------------------------------------------------------------- */

/* Die at the count-th occurrence of step. */
struct killer {
    enum apply_step step;
    int count;
};

/* The last step a child passed, shared with the parent (-1: none yet). */
static volatile int *last_step;

static void kill_hook(void *arg, enum apply_step step)
{
    struct killer *k = arg;

    *last_step = (int)step;
    if (k && step == k->step && --k->count == 0)
        raise(SIGKILL);
}

/* A crashing child's apply stays reachable, so leak checkers do not blame
 * the simulated crash. */
static struct apply *volatile child_apply;

/* In a child: open the replica and apply everything from s (or snapshot s),
 * dying as k says. Returns how the child ended: 0 done, 9 killed, else an
 * error. When delay_us >= 0 the parent kills the child after that long. */
static int child_run(struct src *s, int snapshot, struct killer *k, int64_t delay_us)
{
    pid_t pid = fork();
    int status = 0;

    if (pid == 0) {
        struct apply *a = child_apply = rep_open(0);
        if (!a)
            _exit(3);
        apply_test_hook(a, kill_hook, k);
        if ((snapshot ? ship_snapshot(s, a, OK_AS_IS, 0) : ship_all(s, a)) != 0)
            _exit(4);
        apply_close(a);
        _exit(0);
    }
    *last_step = -1;
    if (delay_us >= 0) {
        usleep((useconds_t)delay_us);
        kill(pid, SIGKILL);
    }
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status))
        return WTERMSIG(status) == SIGKILL ? 9 : 100 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

/* After a crash: integrity ok, and the position is exact, naming a state the
 * source had (its checksum after that txid). */
static int recovered_exactly(struct src *s, struct apply_position *out)
{
    struct capture_status st = src_status(s);
    struct apply_position p;

    if (!integrity_ok(rpath))
        return 0;
    p = reopened();
    *out = p;
    return strcmp(p.database_id, st.database_id) == 0 && p.txid <= st.head_txid &&
           p.checksum == s->sums[p.txid] && file_checksum(rpath) == p.checksum;
}

/* A batch of source transactions that grow, rewrite and shrink. */
static void src_batch(struct src *s, int i)
{
    src_exec(s, "INSERT INTO t(b) VALUES (randomblob(400000))");
    for (int j = 0; j < 12; j++)
        src_exec(s, random_txn(i * 12 + j));
    src_exec(s, "UPDATE t SET v = hex(randomblob(30))");
    src_exec(s, i % 2 ? "DELETE FROM t WHERE length(b) > 100000" : "DELETE FROM t WHERE id % 2");
    src_exec(s, "VACUUM");
}

static const struct killer step_kills[] = {
    {APPLY_STEP_BEGUN, 1},     {APPLY_STEP_BEGUN, 4},     {APPLY_STEP_PAGE, 1},
    {APPLY_STEP_PAGE, 9},      {APPLY_STEP_PAGE, 150},    {APPLY_STEP_TRUNCATED, 1},
    {APPLY_STEP_TRUNCATED, 2}, {APPLY_STEP_SAVED, 1},     {APPLY_STEP_SAVED, 6},
    {APPLY_STEP_COMMITTED, 1}, {APPLY_STEP_COMMITTED, 7},
};

TEST(kill_9_during_apply_leaves_an_exact_position)
{
    struct apply *a = follow_a(SEED_T "; CREATE TABLE w(a, b, c)", 0);
    struct apply_position p;
    int64_t t0, span;
    int kills = 0, batch = 0, rc, where[APPLY_STEP_COMMITTED + 2] = {0};

    REQUIRE(a);
    apply_close(a);
    /* One undisturbed run sets the time scale of the random kills. */
    src_batch(&A, batch++);
    t0 = mono_us();
    CHECK(child_run(&A, 0, NULL, -1) == 0);
    span = mono_us() - t0;
    CHECK(recovered_exactly(&A, &p) && p.txid == src_status(&A).head_txid);
    for (int i = 0; kills < 30 && i < 200; i++) {
        struct killer k;
        int by_step = i < (int)ARRAY_LEN(step_kills);

        if (p.txid == src_status(&A).head_txid)
            src_batch(&A, batch++);
        if (by_step)
            k = step_kills[i];
        rc = child_run(&A, 0, by_step ? &k : NULL, by_step ? -1 : rand_r(&seed) % (span + 1));
        CHECK(rc == 0 || rc == 9);
        kills += rc == 9;
        if (rc == 9 && !by_step)
            where[*last_step + 1]++;
        if (!recovered_exactly(&A, &p)) {
            fprintf(stderr, "  run %d (%s): not exact at txid %llu\n", i,
                    by_step ? "step" : "random", (unsigned long long)p.txid);
            harness_cur_failed = 1;
            break;
        }
    }
    CHECK(kills >= 20);
    fprintf(stderr,
            "  %d kills; the random ones after: open %d, BEGIN %d, a page %d, the truncate %d, "
            "the position %d, COMMIT %d\n",
            kills, where[0], where[1], where[2], where[3], where[4], where[5]);
    /* It resumes from there without a snapshot and ends equal to the source. */
    a = rep_open(0);
    REQUIRE(a);
    CHECK(ship_all(&A, a) == 0 && rep_matches(a, &A));
    CHECK(content_hash(rpath) == content_hash(apath));
    apply_close(a);
    src_close(&A);
}

static const struct killer snapshot_kills[] = {
    {APPLY_STEP_BEGUN, 1},     {APPLY_STEP_PAGE, 1},      {APPLY_STEP_PAGE, 40},
    {APPLY_STEP_PAGE, 90},     {APPLY_STEP_TRUNCATED, 1}, {APPLY_STEP_SAVED, 1},
    {APPLY_STEP_COMMITTED, 1},
};

/* The replica's file is the source's head, apart from the schema cookie. */
static int file_matches(struct src *s)
{
    uint32_t delta = (uint32_t)(schema_version(rpath) - query(s->db, "PRAGMA schema_version"));

    return file_checksum_delta(rpath, delta) == src_status(s).checksum;
}

/* The replica is exactly at A's head ('a') or at B's ('b'). */
static int at_a_or_b(void)
{
    struct capture_status sa = src_status(&A), sb = src_status(&B);
    struct apply_position p;

    if (!integrity_ok(rpath))
        return 0;
    p = reopened();
    if (strcmp(p.database_id, sa.database_id) == 0)
        return p.txid == sa.head_txid && p.checksum == sa.checksum && file_matches(&A) ? 'a' : 0;
    if (strcmp(p.database_id, sb.database_id) == 0)
        return p.txid == sb.head_txid && p.checksum == sb.checksum && file_matches(&B) ? 'b' : 0;
    return 0;
}

/* Kill a child snapshotting B over a replica at A's head, at each step and
 * at random; B's seed decides whether the snapshot shifts the schema cookie
 * (B's cookie equals A's) or not. */
static void snapshot_crashes(const char *b_seed, int shifted)
{
    struct apply *a = follow_a(
        "CREATE TABLE a_only(x); " SERIES(2000) "INSERT INTO a_only SELECT randomblob(400) FROM c",
        0);
    int kills = 0, rc, at, seen_b = 0, n = (int)ARRAY_LEN(snapshot_kills);
    int64_t t0, span;

    REQUIRE(a);
    apply_close(a);
    REQUIRE(src_open(&B, bpath, 4096, b_seed) == 0);
    CHECK((query(A.db, "PRAGMA schema_version") == query(B.db, "PRAGMA schema_version")) ==
          shifted);
    t0 = mono_us();
    CHECK(child_run(&B, 1, NULL, -1) == 0 && at_a_or_b() == 'b');
    span = mono_us() - t0;
    for (int i = 0; i < n + 8; i++) {
        struct killer k;
        int want = 'a';

        /* Back to A, in the parent, then B again in a child that dies. */
        a = rep_open(0);
        REQUIRE(a);
        CHECK(ship_snapshot(&A, a, OK_AS_IS, 0) == 0);
        apply_close(a);
        if (i < n)
            k = snapshot_kills[i];
        rc = child_run(&B, 1, i < n ? &k : NULL, i < n ? -1 : rand_r(&seed) % (span + 1));
        CHECK(rc == 0 || rc == 9);
        kills += rc == 9;
        at = at_a_or_b();
        CHECK(at != 0);
        seen_b += at == 'b';
        if (i < n && k.step == APPLY_STEP_COMMITTED)
            want = 'b';
        if (i < n && at != want) {
            fprintf(stderr, "  step %d count %d: at %c, want %c\n", k.step, k.count, at, want);
            harness_cur_failed = 1;
        }
    }
    CHECK(kills >= n && seen_b >= 1);
    src_close(&A);
    src_close(&B);
}

TEST(kill_9_during_a_snapshot_leaves_the_old_or_the_new)
{
    snapshot_crashes(
        "CREATE TABLE b_only(y); " SERIES(400) "INSERT INTO b_only SELECT randomblob(1000) FROM c",
        1);
    snapshot_crashes("CREATE TABLE b_only(y); CREATE TABLE b2(z); " SERIES(
                         400) "INSERT INTO b_only SELECT randomblob(1000) FROM c",
                     0);
}

int main(void)
{
    if (!mkdtemp(tmpdir))
        return 1;
    snprintf(apath, sizeof(apath), "%s/a.db", tmpdir);
    snprintf(bpath, sizeof(bpath), "%s/b.db", tmpdir);
    snprintf(cpath, sizeof(cpath), "%s/c.db", tmpdir);
    snprintf(rpath, sizeof(rpath), "%s/r.db", tmpdir);
    snprintf(pos_path, sizeof(pos_path), "%s-boomerang/position", rpath);
    log_level = getenv("TEST_LOG") ? LOGL_DEBUG : LOGL_ERROR;
    last_step = mmap(NULL, sizeof(int), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (last_step == MAP_FAILED)
        return 1;
    seed = getenv("TEST_SEED") ? (unsigned)atoi(getenv("TEST_SEED")) : (unsigned)time(NULL);
    fprintf(stderr, "test_apply: seed %u\n", seed);
    RUN(a_new_replica_is_empty_until_its_first_snapshot);
    RUN(converges_through_a_workload);
    RUN(readers_see_whole_transactions);
    RUN(a_snapshot_replaces_a_populated_replica_under_readers);
    RUN(a_snapshot_of_another_database_never_reuses_a_schema_cookie);
    RUN(checkpoints_never_wait_for_readers);
    RUN(a_checksum_mismatch_applies_nothing);
    RUN(order_errors);
    RUN(page_errors);
    RUN(the_lock_byte_page_is_refused);
    RUN(calls_out_of_sequence_change_nothing);
    RUN(sqlite_failures_roll_back);
    RUN(position_write_failures_roll_back);
    RUN(open_failures);
    RUN(the_position_is_trusted_only_when_it_matches);
    RUN(kill_9_during_apply_leaves_an_exact_position);
    RUN(kill_9_during_a_snapshot_leaves_the_old_or_the_new);
    SH("rm -rf '%s'", tmpdir);
    return HARNESS_END();
}
