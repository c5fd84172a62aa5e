/* boomerang: run Hrana statements on the local replica (read-only).
 *
 * One `struct local` = one SQLite connection opened SQLITE_OPEN_READONLY on
 * the replica file, plus:
 *
 *   sql text ─▶ XXH3 ─▶ bucket chain ─▶ struct entry {stmt, kind, many}
 *                                       (LRU list, most recent first; the
 *                                        least recent is finalized when the
 *                                        cache holds too many statements or
 *                                        too many bytes of SQL text)
 *
 * A cached statement outlives schema changes: the replica's applier runs the
 * primary's DDL, and the next sqlite3_step() of a statement prepared with
 * prepare_v3 re-prepares it (SQLITE_SCHEMA is handled inside SQLite). That is
 * why column names are read after the first step, never before.
 *
 * Kinds. Transaction control is recognised from the text (its first words),
 * because sqlite3_stmt_readonly() calls BEGIN IMMEDIATE a write and ROLLBACK a
 * read. Any PRAGMA that prepares here passed the authorizer's read-only list,
 * so it reads (PRAGMA journal_mode is "not readonly" to SQLite even without a
 * value); one the authorizer refused is routed to the primary as a write.
 * The rest is sqlite3_stmt_isexplain() / sqlite3_stmt_readonly().
 *
 * The run-time bound: a progress handler, called every LOCAL_PROGRESS_OPS VM
 * instructions, compares the monotonic clock with the statement's deadline;
 * returning 1 makes the step fail with SQLITE_INTERRUPT, reported as TIMEOUT. */
#include "proxy/local.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <xxhash.h>

#include "common/log.h"
#include "common/sqlcode.h"

#define LOCAL_DEFAULT_TIMEOUT_MS 5000
#define LOCAL_DEFAULT_MAX_ROWS   100000
#define LOCAL_DEFAULT_MAX_BYTES  ((size_t)16 << 20)
#define LOCAL_DEFAULT_CACHE      64
#define LOCAL_CACHE_TEXT_BYTES   ((size_t)1 << 20) /* SQL text the cache may hold */
/* Readers in WAL mode are not blocked by the applier's write lock; a short
 * wait only covers opening a snapshot while a checkpoint or recovery runs. */
#define LOCAL_BUSY_TIMEOUT_MS 100
#define LOCAL_PROGRESS_OPS    1000

struct entry {
    struct entry *hnext;       /* bucket chain */
    struct entry *prev, *next; /* LRU list */
    uint64_t hash;
    size_t len;
    sqlite3_stmt *stmt; /* NULL: the text holds no statement */
    enum local_kind kind;
    int many;  /* something follows the first statement */
    char *sql; /* the text, stored right after the entry (one allocation) */
};

struct local {
    sqlite3 *db;
    int64_t timeout_us; /* <= 0: no bound */
    size_t max_rows;
    size_t max_bytes;
    unsigned cache_cap;
    struct entry **buckets;
    size_t bucket_mask;
    struct entry lru; /* sentinel: lru.next is the most recent */
    unsigned n_entries;
    size_t cache_bytes;
    int64_t deadline_us; /* 0: none */
    int timed_out;
    int pragma_refused; /* the authorizer refused a PRAGMA since run_begin() */
    int has_refusal;
    char refusal[256];
};

/* ---- authorizer ---------------------------------------------------------------- */

/* Read-only PRAGMAs whose argument names a table, an index or a limit. */
static const char *const pragma_query[] = {
    "table_info",       "table_xinfo",       "index_list",      "index_info",  "index_xinfo",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check", "table_list"};

/* PRAGMAs allowed without a value only (with a value they set something). */
/* clang-format off */
static const char *const pragma_read[] = {
    "user_version", "schema_version", "application_id", "page_count", "page_size", "max_page_count",
    "freelist_count", "encoding", "foreign_keys", "defer_foreign_keys", "recursive_triggers",
    "data_version", "journal_mode", "auto_vacuum", "cache_size", "cache_spill", "busy_timeout",
    "query_only", "synchronous", "temp_store", "legacy_alter_table", "automatic_index",
    "cell_size_check", "checkpoint_fullfsync", "fullfsync", "ignore_check_constraints",
    "locking_mode", "mmap_size", "reverse_unordered_selects", "secure_delete", "soft_heap_limit",
    "hard_heap_limit", "threads", "trusted_schema", "wal_autocheckpoint", "journal_size_limit",
    "analysis_limit", "database_list", "collation_list", "function_list", "pragma_list",
    "module_list", "compile_options"};
/* clang-format on */

/* The primary refuses setting these (primary/authz.c): same words here. */
static const char *const pragma_replication[] = {
    "journal_mode",       "wal_autocheckpoint", "page_size",      "writable_schema",
    "synchronous",        "locking_mode",       "schema_version", "query_only",
    "journal_size_limit", "mmap_size",          "cache_spill",
};

static const char *const pragma_wal[] = {"wal_checkpoint", "temp_store_directory",
                                         "data_store_directory"};

static int in_list(const char *name, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (strcasecmp(name, list[i]) == 0)
            return 1;
    }
    return 0;
}

static int refuse(struct local *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int refuse(struct local *l, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(l->refusal, sizeof(l->refusal), fmt, ap);
    va_end(ap);
    l->has_refusal = 1;
    return SQLITE_DENY;
}

static int check_pragma(struct local *l, const char *name, const char *arg)
{
    if (in_list(name, pragma_query, ARRAY_LEN(pragma_query)) ||
        (!arg && in_list(name, pragma_read, ARRAY_LEN(pragma_read))))
        return SQLITE_OK;
    l->pragma_refused = 1;
    if (in_list(name, pragma_wal, ARRAY_LEN(pragma_wal)))
        return refuse(l, "PRAGMA %s is not allowed: the primary manages the WAL and checkpoints",
                      name);
    if (arg && in_list(name, pragma_replication, ARRAY_LEN(pragma_replication)))
        return refuse(l, "PRAGMA %s=%s is not allowed: replication depends on this setting", name,
                      arg);
    if (arg)
        return refuse(l, "PRAGMA %s=%s is not allowed on the read-only replica", name, arg);
    return refuse(l, "PRAGMA %s is not allowed on the read-only replica", name);
}

static int authorize_cb(void *arg, int action, const char *a1, const char *a2, const char *db,
                        const char *trigger)
{
    struct local *l = arg;
    (void)db;
    (void)trigger;

    switch (action) {
    case SQLITE_ATTACH:
        return refuse(l, "ATTACH is not allowed: boomerang replicates one database file");
    case SQLITE_DETACH:
        return refuse(l, "DETACH is not allowed: boomerang replicates one database file");
    case SQLITE_FUNCTION:
        if (a2 && strcasecmp(a2, "load_extension") == 0)
            return refuse(l, "load_extension() is not allowed on the replica");
        return SQLITE_OK;
    case SQLITE_PRAGMA:
        return a1 ? check_pragma(l, a1, a2) : SQLITE_DENY;
    default:
        return SQLITE_OK;
    }
}

static int progress_cb(void *arg)
{
    struct local *l = arg;

    if (l->deadline_us == 0 || mono_us() < l->deadline_us)
        return 0;
    l->timed_out = 1;
    return 1;
}

/* Start the clock and forget the previous refusal, before a prepare or run. */
static void run_begin(struct local *l)
{
    l->deadline_us = l->timeout_us > 0 ? mono_us() + l->timeout_us : 0;
    l->timed_out = 0;
    l->pragma_refused = 0;
    l->has_refusal = 0;
}

/* Fill err for a failed SQLite call that returned rc. */
static void set_sqlite_error(struct local *l, int rc, struct hrana_error *err)
{
    if (!err)
        return;
    if ((rc & 0xff) == SQLITE_INTERRUPT && l->timed_out) {
        hrana_error_set(err, "TIMEOUT", "statement ran longer than %lld ms",
                        (long long)(l->timeout_us / 1000));
        return;
    }
    /* A refusal always fails the call; SQLite reports some (functions) as
     * SQLITE_ERROR "not authorized to use function", but it is an AUTH. */
    if (l->has_refusal) {
        hrana_error_set(err, "SQLITE_AUTH", "%s", l->refusal);
        return;
    }
    hrana_error_set(err, local_primary_code_name(rc), "%s", sqlite3_errmsg(l->db));
}

const char *local_primary_code_name(int rc)
{
    /* common/sqlcode.c holds the table of every code sqlite3.h defines; the
     * low byte of an extended code is its primary code. */
    return sqlcode_name(rc & 0xff);
}

/* ---- statement text ------------------------------------------------------------ */

static int is_sql_space(char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

/* Skip white space and comments (and semicolons if semis), as SQLite's
 * tokenizer does; an unterminated block comment runs to the end. */
static const char *skip_space(const char *p, int semis)
{
    for (;;) {
        if (is_sql_space(*p) || (semis && *p == ';')) {
            p++;
        } else if (p[0] == '-' && p[1] == '-') {
            p += 2;
            while (*p && *p != '\n')
                p++;
        } else if (p[0] == '/' && p[1] == '*') {
            const char *end = strstr(p + 2, "*/");
            p = end ? end + 2 : p + strlen(p);
        } else {
            return p;
        }
    }
}

/* The next bare word after white space and comments: *w, *n (0 if none).
 * Returns the position after it. */
static const char *next_word(const char *p, const char **w, size_t *n)
{
    p = skip_space(p, 0);
    *w = p;
    while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
           *p == '_')
        p++;
    *n = (size_t)(p - *w);
    return p;
}

static int word_is(const char *w, size_t n, const char *kw)
{
    return n == strlen(kw) && strncasecmp(w, kw, n) == 0;
}

/* BEGIN [DEFERRED|IMMEDIATE|EXCLUSIVE] [TRANSACTION [name]]: @libsql/client
 * opens its "read" transactions with BEGIN TRANSACTION READONLY, which
 * SQLite parses as a deferred transaction named READONLY. */
static enum local_kind begin_kind(const char *p)
{
    const char *w;
    size_t n;

    p = next_word(p, &w, &n);
    if (word_is(w, n, "DEFERRED"))
        p = next_word(p, &w, &n);
    if (!word_is(w, n, "TRANSACTION"))
        return LOCAL_BEGIN;
    next_word(p, &w, &n);
    return word_is(w, n, "READONLY") ? LOCAL_BEGIN_READONLY : LOCAL_BEGIN;
}

/* ROLLBACK [TRANSACTION [name]] vs ROLLBACK [TRANSACTION] TO [SAVEPOINT] name. */
static enum local_kind rollback_kind(const char *p)
{
    const char *w;
    size_t n;

    p = next_word(p, &w, &n);
    if (word_is(w, n, "TRANSACTION"))
        next_word(p, &w, &n);
    return word_is(w, n, "TO") ? LOCAL_SAVEPOINT : LOCAL_ROLLBACK;
}

/* The kind of a statement that prepared here (s is not NULL). */
static enum local_kind stmt_kind(const char *sql, sqlite3_stmt *s)
{
    const char *w;
    size_t n;
    const char *p = next_word(skip_space(sql, 1), &w, &n);

    if (word_is(w, n, "BEGIN"))
        return begin_kind(p);
    if (word_is(w, n, "COMMIT") || word_is(w, n, "END"))
        return LOCAL_COMMIT;
    if (word_is(w, n, "ROLLBACK"))
        return rollback_kind(p);
    if (word_is(w, n, "SAVEPOINT") || word_is(w, n, "RELEASE"))
        return LOCAL_SAVEPOINT;
    if (word_is(w, n, "PRAGMA") || sqlite3_stmt_isexplain(s))
        return LOCAL_READ;
    return sqlite3_stmt_readonly(s) ? LOCAL_READ : LOCAL_WRITE;
}

/* ---- statement cache ----------------------------------------------------------- */

static void lru_unlink(struct entry *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
}

static void lru_push_front(struct local *l, struct entry *e)
{
    e->prev = &l->lru;
    e->next = l->lru.next;
    l->lru.next->prev = e;
    l->lru.next = e;
}

static void cache_drop(struct local *l, struct entry *e)
{
    struct entry **pp = &l->buckets[e->hash & l->bucket_mask];

    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(e);
    l->n_entries--;
    l->cache_bytes -= e->len;
    sqlite3_finalize(e->stmt); /* its return repeats the last step's error, already reported */
    free(e);
}

static void cache_insert(struct local *l, struct entry *e)
{
    struct entry **head = &l->buckets[e->hash & l->bucket_mask];

    e->hnext = *head;
    *head = e;
    lru_push_front(l, e);
    l->n_entries++;
    l->cache_bytes += e->len;
    while (l->n_entries > 1 &&
           (l->n_entries > l->cache_cap || l->cache_bytes > LOCAL_CACHE_TEXT_BYTES))
        cache_drop(l, l->lru.prev);
}

static struct entry *cache_find(struct local *l, const char *sql, size_t len, uint64_t hash)
{
    for (struct entry *e = l->buckets[hash & l->bucket_mask]; e; e = e->hnext) {
        if (e->hash == hash && e->len == len && memcmp(e->sql, sql, len) == 0) {
            lru_unlink(e);
            lru_push_front(l, e);
            return e;
        }
    }
    return NULL;
}

/* Find sql's first statement in the cache or prepare it. Returns 0 and *out
 * (valid until the next cache insert), or -1 + *err (l->pragma_refused tells
 * whether the authorizer refused a PRAGMA). */
static int stmt_get(struct local *l, const char *sql, struct entry **out, struct hrana_error *err)
{
    size_t len = strlen(sql);
    uint64_t hash = XXH3_64bits(sql, len);
    struct entry *e = cache_find(l, sql, len, hash);
    const char *tail = NULL;
    int rc;

    if (e) {
        *out = e;
        return 0;
    }
    e = xmalloc(sizeof(*e) + len + 1);
    e->sql = (char *)(e + 1);
    memcpy(e->sql, sql, len + 1);
    e->hash = hash;
    e->len = len;
    run_begin(l);
    rc = sqlite3_prepare_v3(l->db, e->sql, (int)(len + 1), SQLITE_PREPARE_PERSISTENT, &e->stmt,
                            &tail);
    if (rc != SQLITE_OK) {
        set_sqlite_error(l, rc, err);
        free(e);
        return -1;
    }
    e->kind = e->stmt ? stmt_kind(e->sql, e->stmt) : LOCAL_EMPTY;
    e->many = e->stmt && *skip_space(tail, 1) != '\0';
    cache_insert(l, e);
    *out = e;
    return 0;
}

/* stmt_get() for requests that take exactly one statement. */
static int stmt_get_one(struct local *l, const char *sql, struct entry **out,
                        struct hrana_error *err)
{
    if (stmt_get(l, sql, out, err) != 0)
        return -1;
    if (!(*out)->stmt) {
        hrana_error_set(err, "SQL_NO_STATEMENT", "SQL string does not contain any statement");
        return -1;
    }
    if ((*out)->many) {
        hrana_error_set(err, "SQL_MANY_STATEMENTS", "SQL string contains more than one statement");
        return -1;
    }
    return 0;
}

/* ---- open / close -------------------------------------------------------------- */

static int configure(struct local *l)
{
    sqlite3 *db = l->db;
    int rc;

    if ((rc = sqlite3_busy_timeout(db, LOCAL_BUSY_TIMEOUT_MS)) != SQLITE_OK ||
        (rc = sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0, NULL)) != SQLITE_OK ||
        (rc = sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL)) != SQLITE_OK ||
        (rc = sqlite3_exec(db, "PRAGMA query_only=1", NULL, NULL, NULL)) != SQLITE_OK ||
        (rc = sqlite3_set_authorizer(db, authorize_cb, l)) != SQLITE_OK)
        return rc;
    sqlite3_progress_handler(db, LOCAL_PROGRESS_OPS, progress_cb, l);
    /* Read the schema now, so that a file that is not a database fails here. */
    return sqlite3_exec(db, "SELECT 1 FROM sqlite_schema LIMIT 1", NULL, NULL, NULL);
}

static void cache_init(struct local *l, unsigned cap)
{
    size_t nb = 16;

    l->cache_cap = cap ? cap : LOCAL_DEFAULT_CACHE;
    while (nb < 2 * (size_t)l->cache_cap)
        nb *= 2;
    l->buckets = xcalloc(nb, sizeof(*l->buckets));
    l->bucket_mask = nb - 1;
    l->lru.next = l->lru.prev = &l->lru;
}

int local_open(const struct local_config *cfg, struct local **out)
{
    struct local *l = xcalloc(1, sizeof(*l));
    int rc;

    rc = sqlite3_open_v2(cfg->path, &l->db,
                         SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE, NULL);
    if (rc == SQLITE_OK)
        rc = configure(l);
    if (rc != SQLITE_OK) {
        log_error("open replica %s read-only failed: %s", cfg->path,
                  l->db ? sqlite3_errmsg(l->db) : sqlite3_errstr(rc));
        goto fail_db;
    }
    l->timeout_us = (cfg->stmt_timeout_ms ? cfg->stmt_timeout_ms : LOCAL_DEFAULT_TIMEOUT_MS) * 1000;
    l->max_rows = cfg->max_rows ? cfg->max_rows : LOCAL_DEFAULT_MAX_ROWS;
    l->max_bytes = cfg->max_bytes ? cfg->max_bytes : LOCAL_DEFAULT_MAX_BYTES;
    cache_init(l, cfg->cache_size);
    *out = l;
    return 0;

fail_db:
    sqlite3_close(l->db); /* NULL is a no-op; nothing was prepared yet */
    free(l);
    return -rc;
}

void local_close(struct local *l)
{
    int rc;

    if (!l)
        return;
    while (l->lru.next != &l->lru)
        cache_drop(l, l->lru.next);
    if (!sqlite3_get_autocommit(l->db)) {
        l->deadline_us = 0;
        rc = sqlite3_exec(l->db, "ROLLBACK", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            log_warn("rollback on close failed: %s", sqlite3_errmsg(l->db));
    }
    rc = sqlite3_close(l->db);
    if (rc != SQLITE_OK)
        log_error("close replica connection failed: %s", sqlite3_errstr(rc));
    free(l->buckets);
    free(l);
}

/* ---- classify ------------------------------------------------------------------ */

enum local_kind local_classify(struct local *l, const char *sql, int *many, struct hrana_error *err)
{
    struct entry *e;

    if (many)
        *many = 0;
    if (stmt_get(l, sql, &e, err) != 0)
        return l->pragma_refused ? LOCAL_WRITE : LOCAL_UNPREPARED;
    if (many)
        *many = e->many;
    return e->kind;
}

/* ---- arguments ----------------------------------------------------------------- */

static int bind_value(sqlite3_stmt *s, int i, const struct hrana_value *v)
{
    /* SQLITE_STATIC: the values outlive the run, and bindings are cleared
     * before local_execute() returns. A zero-length blob needs a non-NULL
     * pointer, or SQLite binds NULL. */
    const char *bytes = v->bytes ? v->bytes : "";

    switch (v->type) {
    case HRANA_VALUE_INTEGER:
        return sqlite3_bind_int64(s, i, v->integer);
    case HRANA_VALUE_FLOAT:
        return sqlite3_bind_double(s, i, v->real);
    case HRANA_VALUE_TEXT:
        return sqlite3_bind_text64(s, i, bytes, v->len, SQLITE_STATIC, SQLITE_UTF8);
    case HRANA_VALUE_BLOB:
        return sqlite3_bind_blob64(s, i, bytes, v->len, SQLITE_STATIC);
    case HRANA_VALUE_NULL:
    default:
        return sqlite3_bind_null(s, i);
    }
}

/* The parameter index of a named argument: its name as sent, then (for a
 * bare name) with each prefix SQLite accepts; 0 if none matches. */
static int named_index(sqlite3_stmt *s, const char *name)
{
    static const char prefixes[] = ":@$";
    size_t n = strlen(name);
    char small[128];
    char *b;
    int idx = sqlite3_bind_parameter_index(s, name);

    if (idx || n == 0 || strchr(":@$?", name[0]))
        return idx;
    b = n + 2 <= sizeof(small) ? small : xmalloc(n + 2);
    memcpy(b + 1, name, n + 1);
    for (size_t i = 0; i < sizeof(prefixes) - 1 && idx == 0; i++) {
        b[0] = prefixes[i];
        idx = sqlite3_bind_parameter_index(s, b);
    }
    if (b != small)
        free(b);
    return idx;
}

/* Bind st's arguments to s. Every parameter needs a value (sqld's rule):
 * a missing one is ARGS_INVALID rather than a silent NULL. */
static int bind_args(struct local *l, sqlite3_stmt *s, const struct hrana_stmt *st,
                     struct hrana_error *err)
{
    size_t nparams = (size_t)sqlite3_bind_parameter_count(s);
    uint8_t small[64], *bound = nparams <= sizeof(small) ? small : xmalloc(nparams);
    int rc = SQLITE_OK, ret = -1;

    memset(bound, 0, nparams <= sizeof(small) ? sizeof(small) : nparams);
    if (st->n_args && st->n_named_args) {
        hrana_error_set(err, "ARGS_BOTH_POSITIONAL_AND_NAMED",
                        "positional and named arguments cannot be mixed");
        goto out;
    }
    if (st->n_args > nparams) {
        hrana_error_set(err, "ARGS_INVALID", "%zu arguments given, the statement has %zu",
                        st->n_args, nparams);
        goto out;
    }
    for (size_t i = 0; i < st->n_args && rc == SQLITE_OK; i++) {
        rc = bind_value(s, (int)i + 1, &st->args[i]);
        bound[i] = 1;
    }
    for (size_t i = 0; i < st->n_named_args && rc == SQLITE_OK; i++) {
        const struct hrana_named_arg *a = &st->named_args[i];
        int idx = named_index(s, a->name);

        if (idx == 0) {
            hrana_error_set(err, "ARGS_INVALID", "the statement has no parameter named %s",
                            a->name);
            goto out;
        }
        rc = bind_value(s, idx, &a->value);
        bound[idx - 1] = 1;
    }
    if (rc != SQLITE_OK) {
        set_sqlite_error(l, rc, err);
        goto out;
    }
    for (size_t i = 0; i < nparams; i++) {
        if (!bound[i]) {
            const char *name = sqlite3_bind_parameter_name(s, (int)i + 1);
            char pos[24];
            snprintf(pos, sizeof(pos), "?%zu", i + 1);
            hrana_error_set(err, "ARGS_INVALID", "no value for parameter %s (%zu given)",
                            name ? name : pos, st->n_args + st->n_named_args);
            goto out;
        }
    }
    ret = 0;
out:
    if (bound != small)
        free(bound);
    return ret;
}

int local_check_args(struct local *l, const char *sql, const struct hrana_stmt *st,
                     struct hrana_error *err)
{
    struct entry *e;
    int rc;

    if (stmt_get_one(l, sql, &e, err) != 0)
        return 0; /* not prepared here: the primary checks */
    rc = bind_args(l, e->stmt, st, err);
    sqlite3_clear_bindings(e->stmt);
    return rc;
}

/* ---- running ------------------------------------------------------------------- */

static void write_cols(struct hrana_stmt_out *so, sqlite3_stmt *s)
{
    int n = sqlite3_column_count(s);

    for (int i = 0; i < n; i++)
        hrana_stmt_out_col(so, sqlite3_column_name(s, i), sqlite3_column_decltype(s, i));
}

/* Append the current row. Returns 0, or -1 + *err past a limit. */
static int write_row(struct local *l, struct hrana_stmt_out *so, sqlite3_stmt *s,
                     struct hrana_error *err)
{
    int n = sqlite3_column_count(s);

    if (so->nrows >= l->max_rows) {
        hrana_error_set(err, "RESPONSE_TOO_LARGE", "the result has more than %zu rows",
                        l->max_rows);
        return -1;
    }
    hrana_stmt_out_row(so);
    for (int i = 0; i < n; i++) {
        switch (sqlite3_column_type(s, i)) {
        case SQLITE_INTEGER:
            hrana_stmt_out_integer(so, sqlite3_column_int64(s, i));
            break;
        case SQLITE_FLOAT:
            hrana_stmt_out_float(so, sqlite3_column_double(s, i));
            break;
        case SQLITE_TEXT: {
            const unsigned char *t = sqlite3_column_text(s, i);
            hrana_stmt_out_text(so, t ? (const char *)t : "", (size_t)sqlite3_column_bytes(s, i));
            break;
        }
        case SQLITE_BLOB: {
            const void *b = sqlite3_column_blob(s, i);
            hrana_stmt_out_blob(so, b ? b : "", (size_t)sqlite3_column_bytes(s, i));
            break;
        }
        default:
            hrana_stmt_out_null(so);
        }
    }
    if (hrana_stmt_out_bytes(so) > l->max_bytes) {
        hrana_error_set(err, "RESPONSE_TOO_LARGE", "the result is larger than %zu bytes",
                        l->max_bytes);
        return -1;
    }
    return 0;
}

/* Step s to the end, writing its StmtResult. 0, or -1 + *err (nothing written). */
static int run_stmt(struct local *l, sqlite3_stmt *s, int want_rows, struct buf *out,
                    struct hrana_error *err)
{
    struct hrana_stmt_out so;
    int64_t changes = 0;
    int rc;

    run_begin(l);
    hrana_stmt_out_begin(&so, out);
    rc = sqlite3_step(s);
    /* After the first step: a re-prepare may have changed the columns. */
    if (rc == SQLITE_ROW || rc == SQLITE_DONE)
        write_cols(&so, s);
    for (; rc == SQLITE_ROW; rc = sqlite3_step(s)) {
        if (want_rows && write_row(l, &so, s, err) != 0)
            goto fail_out;
    }
    if (rc != SQLITE_DONE) {
        set_sqlite_error(l, rc, err);
        goto fail_out;
    }
    l->deadline_us = 0;
    /* sqlite3_changes64() keeps the count of the last write, so a read
     * reports 0 of its own. */
    if (!sqlite3_stmt_readonly(s))
        changes = sqlite3_changes64(l->db);
    hrana_stmt_out_end(&so, (uint64_t)changes, changes > 0,
                       changes > 0 ? sqlite3_last_insert_rowid(l->db) : 0);
    return 0;

fail_out:
    l->deadline_us = 0;
    hrana_stmt_out_abort(&so);
    return -1;
}

int local_execute(struct local *l, const char *sql, const struct hrana_stmt *st, struct buf *out,
                  struct hrana_error *err)
{
    struct entry *e;
    int rc;

    if (stmt_get_one(l, sql, &e, err) != 0)
        return -1;
    rc = bind_args(l, e->stmt, st, err);
    if (rc == 0 && sqlite3_get_autocommit(l->db)) {
        /* A connection opened while the replica was still empty has not seen
         * page 1 since it became a WAL database, and `PRAGMA journal_mode`
         * reports what it last saw: let it look (a read of the schema). */
        const char *w;
        size_t n;
        (void)next_word(sql, &w, &n);
        if (word_is(w, n, "PRAGMA"))
            (void)sqlite3_exec(l->db, "SELECT 1 FROM sqlite_schema LIMIT 0", NULL, NULL, NULL);
    }
    if (rc == 0)
        rc = run_stmt(l, e->stmt, st->want_rows, out, err);
    /* Both only fail by repeating an error already reported; resetting
     * ends an autocommit read transaction, so the snapshot is not held. */
    sqlite3_reset(e->stmt);
    sqlite3_clear_bindings(e->stmt);
    return rc;
}

int local_exec_sql(struct local *l, const char *sql, struct hrana_error *err)
{
    struct entry *e;
    int rc;

    if (stmt_get_one(l, sql, &e, err) != 0)
        return -1;
    run_begin(l);
    do
        rc = sqlite3_step(e->stmt);
    while (rc == SQLITE_ROW);
    l->deadline_us = 0;
    if (rc != SQLITE_DONE)
        set_sqlite_error(l, rc, err);
    sqlite3_reset(e->stmt); /* repeats the step's error, reported above */
    return rc == SQLITE_DONE ? 0 : -1;
}

/* ---- describe, split, state ---------------------------------------------------- */

static void put(struct buf *out, const char *s)
{
    buf_append(out, s, strlen(s));
}

static void put_str_or_null(struct buf *out, const char *s)
{
    if (s)
        hrana_json_string(out, s, strlen(s));
    else
        put(out, "null");
}

static void describe_write(struct buf *out, sqlite3_stmt *s)
{
    int np = sqlite3_bind_parameter_count(s);
    int nc = sqlite3_column_count(s);

    put(out, "{\"params\":[");
    for (int i = 1; i <= np; i++) {
        put(out, i > 1 ? ",{\"name\":" : "{\"name\":");
        put_str_or_null(out, sqlite3_bind_parameter_name(s, i));
        put(out, "}");
    }
    put(out, "],\"cols\":[");
    for (int i = 0; i < nc; i++) {
        put(out, i > 0 ? ",{\"name\":" : "{\"name\":");
        put_str_or_null(out, sqlite3_column_name(s, i));
        put(out, ",\"decltype\":");
        put_str_or_null(out, sqlite3_column_decltype(s, i));
        put(out, "}");
    }
    put(out, sqlite3_stmt_isexplain(s) ? "],\"is_explain\":true" : "],\"is_explain\":false");
    put(out, sqlite3_stmt_readonly(s) ? ",\"is_readonly\":true}" : ",\"is_readonly\":false}");
}

int local_describe(struct local *l, const char *sql, struct buf *out, struct hrana_error *err)
{
    sqlite3_stmt *s = NULL;
    const char *tail = NULL;
    int rc;

    /* Prepared afresh, not cached: a cached statement's columns are only
     * brought up to date by a step, which describe never does. */
    run_begin(l);
    rc = sqlite3_prepare_v3(l->db, sql, -1, 0, &s, &tail);
    if (rc != SQLITE_OK) {
        set_sqlite_error(l, rc, err);
        return -1;
    }
    if (!s) {
        hrana_error_set(err, "SQL_NO_STATEMENT", "SQL string does not contain any statement");
        return -1;
    }
    if (*skip_space(tail, 1) != '\0') {
        hrana_error_set(err, "SQL_MANY_STATEMENTS", "SQL string contains more than one statement");
        sqlite3_finalize(s);
        return -1;
    }
    describe_write(out, s);
    sqlite3_finalize(s);
    return 0;
}

struct span {
    const char *p;
    size_t n;
};

/* One malloc block: the pointer array, then the NUL-terminated strings. */
static char **spans_pack(const struct span *sp, size_t n)
{
    size_t total = (n + 1) * sizeof(char *);
    char **arr;
    char *dst;

    for (size_t i = 0; i < n; i++)
        total += sp[i].n + 1;
    arr = xmalloc(total);
    dst = (char *)(arr + n + 1);
    for (size_t i = 0; i < n; i++) {
        arr[i] = dst;
        memcpy(dst, sp[i].p, sp[i].n);
        dst[sp[i].n] = '\0';
        dst += sp[i].n + 1;
    }
    arr[n] = NULL;
    return arr;
}

size_t local_split_sql(const char *sql, char ***out)
{
    struct span *sp = NULL;
    size_t count = 0;
    char *scratch = xmalloc(strlen(sql) + 1);
    const char *p = skip_space(sql, 1);

    while (*p) {
        const char *end = p + strlen(p);
        /* the first ';' that completes a statement (sqlite3_complete knows
         * strings, comments and trigger bodies) */
        for (const char *q = strchr(p, ';'); q; q = strchr(q + 1, ';')) {
            size_t n = (size_t)(q - p) + 1;
            memcpy(scratch, p, n);
            scratch[n] = '\0';
            if (sqlite3_complete(scratch)) {
                end = q + 1;
                break;
            }
        }
        const char *e = end;
        while (e > p && is_sql_space(e[-1]))
            e--;
        sp = xrealloc(sp, (count + 1) * sizeof(*sp));
        sp[count++] = (struct span){p, (size_t)(e - p)};
        p = skip_space(end, 1);
    }
    *out = spans_pack(sp, count);
    free(sp);
    free(scratch);
    return count;
}

int local_autocommit(const struct local *l)
{
    return sqlite3_get_autocommit(l->db);
}
