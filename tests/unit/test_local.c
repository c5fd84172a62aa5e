/* Unit tests: proxy/local.c on a real WAL database.
 *
 * A normal read-write connection (`rw`, standing in for the replica's
 * applier) creates and changes the database; the module under test opens it
 * read-only. Results are checked as the exact JSON where the StmtResult
 * format pins it (proxy/hrana.h), and decoded with jansson where escaping
 * could legitimately differ (unicode, NUL). */
#include <inttypes.h>
#include <jansson.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/util.h"
#include "harness.h"
#include "proxy/local.h"
#include "sqlhelp.h"

#define FOREVER "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
#define SERIES(n)                                                                                  \
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < " #n ") "
#define TAIL                                                                                       \
    "\"affected_row_count\":0,\"last_insert_rowid\":null,\"rows_read\":0,\"rows_written\":0,"      \
    "\"query_duration_ms\":0}"

static char tmpdir[] = "/tmp/test_local.XXXXXX";
static char dbpath[128];
static sqlite3 *rw;

static struct local *open_local(size_t max_rows, size_t max_bytes, int64_t timeout_ms,
                                unsigned cache)
{
    struct local_config cfg = {dbpath, timeout_ms, max_rows, max_bytes, cache};
    struct local *l = NULL;

    if (local_open(&cfg, &l) != 0)
        return NULL;
    return l;
}

static struct hrana_stmt stmt_of(const char *sql)
{
    struct hrana_stmt st = {0};

    st.sql = sql;
    st.want_rows = 1;
    return st;
}

/* Execute st; on success return the JSON (static buffer copy), else NULL. */
static char json[4 << 20];
static const char *run(struct local *l, const struct hrana_stmt *st, struct hrana_error *err)
{
    struct buf out = {0};
    int rc;

    memset(err, 0, sizeof(*err));
    rc = local_execute(l, st->sql, st, &out, err);
    if (rc != 0) {
        size_t left = out.len;

        buf_free(&out);
        if (left != 0)
            fprintf(stderr, "  output left behind after an error\n");
        return left ? "" : NULL;
    }
    if (out.len >= sizeof(json))
        abort();
    memcpy(json, out.data, out.len);
    json[out.len] = '\0';
    buf_free(&out);
    return json;
}

static const char *run_sql(struct local *l, const char *sql, struct hrana_error *err)
{
    struct hrana_stmt st = stmt_of(sql);

    return run(l, &st, err);
}

/* Run sql, expect an error with code, and (if not NULL) msg in its message. */
static int fails_with(struct local *l, const char *sql, const char *code, const char *msg)
{
    struct hrana_error err;
    const char *j = run_sql(l, sql, &err);

    if (j || strcmp(err.code, code) != 0 || (msg && !strstr(err.message, msg))) {
        fprintf(stderr, "  [%s]: got %s %s: %s\n", sql, j ? "result" : "error", err.code,
                err.message);
        return 0;
    }
    return 1;
}

/* The first value of the first row, as a count. */
static int64_t count_of(struct local *l, const char *sql)
{
    struct hrana_error err;
    const char *j = run_sql(l, sql, &err);
    const char *v;

    if (!j)
        return -1;
    v = strstr(j, "\"value\":\"");
    return v ? strtoll(v + 9, NULL, 10) : -1;
}

static int setup(void)
{
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(dbpath, sizeof(dbpath), "%s/replica.db", tmpdir);
    if (sqlite3_open(dbpath, &rw) != SQLITE_OK)
        return -1;
    return exec(rw, "PRAGMA journal_mode=WAL;"
                    "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, v);"
                    "INSERT INTO t(name, v) VALUES ('a', 1), ('b', 2.5), ('c', NULL);"
                    "CREATE TABLE t2(a INTEGER, b TEXT);"
                    "INSERT INTO t2 VALUES (1, 'x');");
}

/* ---- open ---------------------------------------------------------------------- */

TEST(test_open_errors)
{
    char path[160];
    struct local_config cfg = {path, 0, 0, 0, 0};
    struct local *l = NULL;

    snprintf(path, sizeof(path), "%s/missing.db", tmpdir);
    CHECK(local_open(&cfg, &l) == -SQLITE_CANTOPEN);
    CHECK(l == NULL);
    snprintf(path, sizeof(path), "%s/garbage.db", tmpdir);
    SH("head -c 8192 /dev/urandom > '%s'", path);
    CHECK(local_open(&cfg, &l) < 0);
    CHECK(l == NULL);
    local_close(NULL);
}

TEST(test_code_names)
{
    CHECK(strcmp(local_primary_code_name(SQLITE_CONSTRAINT_UNIQUE), "SQLITE_CONSTRAINT") == 0);
    CHECK(strcmp(local_primary_code_name(SQLITE_ERROR), "SQLITE_ERROR") == 0);
    CHECK(strcmp(local_primary_code_name(SQLITE_READONLY_DBMOVED), "SQLITE_READONLY") == 0);
    CHECK(strcmp(local_primary_code_name(SQLITE_AUTH), "SQLITE_AUTH") == 0);
    CHECK(strcmp(local_primary_code_name(SQLITE_BUSY_SNAPSHOT), "SQLITE_BUSY") == 0);
    CHECK(strcmp(local_primary_code_name(SQLITE_IOERR_SHORT_READ), "SQLITE_IOERR") == 0);
    CHECK(strcmp(local_primary_code_name(255), "SQLITE_UNKNOWN") == 0);
}

/* ---- classify ------------------------------------------------------------------ */

struct kcase {
    const char *sql;
    enum local_kind kind;
    int many;
};

static const struct kcase kcases[] = {
    {"SELECT * FROM t", LOCAL_READ, 0},
    {"  select 1 ;  -- trailing\n ; /* c */ ;", LOCAL_READ, 0},
    {"SELECT 1; /* unterminated", LOCAL_READ, 0},
    {"SELECT 1; SELECT 2", LOCAL_READ, 1},
    {"WITH x AS (SELECT 1) SELECT * FROM x", LOCAL_READ, 0},
    {"EXPLAIN INSERT INTO t(name) VALUES ('z')", LOCAL_READ, 0},
    {"EXPLAIN QUERY PLAN SELECT * FROM t WHERE id = 1", LOCAL_READ, 0},
    {"PRAGMA user_version", LOCAL_READ, 0},
    {"pragma JOURNAL_MODE", LOCAL_READ, 0},
    {"PRAGMA table_info(t)", LOCAL_READ, 0},
    {"PRAGMA main.index_list('t')", LOCAL_READ, 0},
    {"SELECT * FROM pragma_table_info('t')", LOCAL_READ, 0},
    {"INSERT INTO t(name) VALUES ('x') RETURNING id", LOCAL_WRITE, 0},
    {"UPDATE t SET name = 'y' WHERE id = 1", LOCAL_WRITE, 0},
    {"DELETE FROM t", LOCAL_WRITE, 0},
    {"WITH x AS (SELECT 1) INSERT INTO t(name) SELECT * FROM x", LOCAL_WRITE, 0},
    {"CREATE TABLE z(a)", LOCAL_WRITE, 0},
    {"CREATE INDEX t_name ON t(name)", LOCAL_WRITE, 0},
    {"DROP TABLE t2", LOCAL_WRITE, 0},
    {"CREATE TEMP TABLE tt(a)", LOCAL_WRITE, 0},
    {"PRAGMA user_version=5", LOCAL_WRITE, 0},
    {"PRAGMA user_version = 5; SELECT 1", LOCAL_WRITE, 0},
    {"PRAGMA foreign_keys=off", LOCAL_WRITE, 0},
    {"PRAGMA journal_mode=delete", LOCAL_WRITE, 0},
    {"PRAGMA cache_size(100)", LOCAL_WRITE, 0},
    {"PRAGMA optimize", LOCAL_WRITE, 0},
    {"PRAGMA wal_checkpoint(TRUNCATE)", LOCAL_WRITE, 0},
    {"VACUUM", LOCAL_WRITE, 0},
    {"BEGIN", LOCAL_BEGIN, 0},
    {"begin immediate", LOCAL_BEGIN, 0},
    {"BEGIN EXCLUSIVE TRANSACTION", LOCAL_BEGIN, 0},
    {"BEGIN DEFERRED TRANSACTION", LOCAL_BEGIN, 0},
    {"BEGIN TRANSACTION READONLYX", LOCAL_BEGIN, 0},
    {"BEGIN IMMEDIATE TRANSACTION READONLY", LOCAL_BEGIN, 0},
    {"BEGIN; SELECT 1", LOCAL_BEGIN, 1},
    {"BEGIN TRANSACTION READONLY", LOCAL_BEGIN_READONLY, 0},
    {"  begin/*x*/transaction\n\treadonly ;", LOCAL_BEGIN_READONLY, 0},
    {"-- read mode\nBegin Deferred Transaction ReadOnly", LOCAL_BEGIN_READONLY, 0},
    {"COMMIT", LOCAL_COMMIT, 0},
    {"commit transaction", LOCAL_COMMIT, 0},
    {"END TRANSACTION", LOCAL_COMMIT, 0},
    {"ROLLBACK", LOCAL_ROLLBACK, 0},
    {"rollback transaction;", LOCAL_ROLLBACK, 0},
    {"ROLLBACK TO sp1", LOCAL_SAVEPOINT, 0},
    {"rollback transaction to savepoint sp1", LOCAL_SAVEPOINT, 0},
    {"SAVEPOINT sp1", LOCAL_SAVEPOINT, 0},
    {"RELEASE sp1", LOCAL_SAVEPOINT, 0},
    {"release savepoint sp1", LOCAL_SAVEPOINT, 0},
    {"", LOCAL_EMPTY, 0},
    {"  -- only a comment\n", LOCAL_EMPTY, 0},
    {" ; ;", LOCAL_EMPTY, 0},
};

TEST(test_classify)
{
    struct local *l = open_local(0, 0, 0, 0);

    REQUIRE(l);
    for (int pass = 0; pass < 2; pass++) { /* the second pass hits the cache */
        for (size_t i = 0; i < ARRAY_LEN(kcases); i++) {
            int many = -1;
            struct hrana_error err = {0};
            enum local_kind k = local_classify(l, kcases[i].sql, &many, &err);

            if (k != kcases[i].kind || many != kcases[i].many) {
                fprintf(stderr, "  [%s]: kind %d many %d, want %d %d (%s)\n", kcases[i].sql, k,
                        many, kcases[i].kind, kcases[i].many, err.message);
                CHECK(0);
            }
        }
    }
    local_close(l);
}

TEST(test_classify_unprepared)
{
    struct local *l = open_local(0, 0, 0, 0);
    struct hrana_error err = {0};
    int many = -1;

    REQUIRE(l);
    CHECK(local_classify(l, "SELECT * FROM nope", &many, &err) == LOCAL_UNPREPARED);
    CHECK(many == 0);
    CHECK(strcmp(err.code, "SQLITE_ERROR") == 0);
    CHECK(strstr(err.message, "no such table: nope") != NULL);
    CHECK(local_classify(l, "SELEC 1", NULL, NULL) == LOCAL_UNPREPARED);
    CHECK(local_classify(l, "INSERT INTO nope VALUES (1)", NULL, &err) == LOCAL_UNPREPARED);
    CHECK(local_classify(l, "ATTACH 'x.db' AS x", NULL, &err) == LOCAL_UNPREPARED);
    CHECK(strcmp(err.code, "SQLITE_AUTH") == 0);
    CHECK(strstr(err.message, "ATTACH is not allowed") != NULL);
    CHECK(local_classify(l, "SELECT load_extension('x')", NULL, &err) == LOCAL_UNPREPARED);
    CHECK(strcmp(err.code, "SQLITE_AUTH") == 0);
    /* once the table exists (the applier ran the DDL), it prepares */
    REQUIRE(exec(rw, "CREATE TABLE nope(a)") == SQLITE_OK);
    CHECK(local_classify(l, "SELECT * FROM nope", &many, &err) == LOCAL_READ);
    REQUIRE(exec(rw, "DROP TABLE nope") == SQLITE_OK);
    local_close(l);
}

/* ---- execute ------------------------------------------------------------------- */

TEST(test_execute_rows)
{
    struct local *l = open_local(0, 0, 0, 0);
    struct hrana_error err;
    struct hrana_stmt st = stmt_of("SELECT id, name, v FROM t ORDER BY id");
    const char *j;

    REQUIRE(l);
    j = run(l, &st, &err);
    REQUIRE(j);
    CHECK(strcmp(j, "{\"cols\":[{\"name\":\"id\",\"decltype\":\"INTEGER\"},"
                    "{\"name\":\"name\",\"decltype\":\"TEXT\"},{\"name\":\"v\",\"decltype\":null}],"
                    "\"rows\":[[{\"type\":\"integer\",\"value\":\"1\"},"
                    "{\"type\":\"text\",\"value\":\"a\"},{\"type\":\"integer\",\"value\":\"1\"}],"
                    "[{\"type\":\"integer\",\"value\":\"2\"},{\"type\":\"text\",\"value\":\"b\"},"
                    "{\"type\":\"float\",\"value\":2.5}],"
                    "[{\"type\":\"integer\",\"value\":\"3\"},{\"type\":\"text\",\"value\":\"c\"},"
                    "{\"type\":\"null\"}]]," TAIL) == 0);
    /* want_rows = 0: the columns, no rows */
    st.want_rows = 0;
    j = run(l, &st, &err);
    REQUIRE(j);
    CHECK(strstr(j, "\"rows\":[]") != NULL);
    CHECK(strstr(j, "{\"name\":\"id\",\"decltype\":\"INTEGER\"}") != NULL);
    /* a statement with no rows at all */
    j = run_sql(l, "SELECT 1 AS one WHERE 0", &err);
    REQUIRE(j);
    CHECK(strcmp(j, "{\"cols\":[{\"name\":\"one\",\"decltype\":null}],\"rows\":[]," TAIL) == 0);
    local_close(l);
}

static json_t *parse(const char *j)
{
    json_error_t e;
    json_t *v = json_loads(j, JSON_ALLOW_NUL, &e);

    if (!v)
        fprintf(stderr, "  bad JSON: %s\n", e.text);
    return v;
}

TEST(test_execute_values)
{
    static uint8_t big[1 << 20];
    struct local *l = open_local(0, 0, 0, 0);
    struct hrana_value args[9] = {
        {.type = HRANA_VALUE_INTEGER, .integer = INT64_MIN},
        {.type = HRANA_VALUE_INTEGER, .integer = INT64_MAX},
        {.type = HRANA_VALUE_FLOAT, .real = -1.5},
        {.type = HRANA_VALUE_TEXT,
         .bytes = "h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80",
         .len = 15},
        {.type = HRANA_VALUE_TEXT, .bytes = "a\0b\"\\", .len = 5},
        {.type = HRANA_VALUE_BLOB, .bytes = NULL, .len = 0},
        {.type = HRANA_VALUE_BLOB, .bytes = (const char *)big, .len = sizeof(big)},
        {.type = HRANA_VALUE_NULL},
        {.type = HRANA_VALUE_TEXT, .bytes = "", .len = 0},
    };
    struct hrana_stmt st = stmt_of("SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, typeof(?6), typeof(?9)");
    struct hrana_error err;
    const char *j;
    json_t *root, *row;

    REQUIRE(l);
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)i;
    st.args = args;
    st.n_args = ARRAY_LEN(args);
    j = run(l, &st, &err);
    REQUIRE(j);
    CHECK(strstr(j, "[[{\"type\":\"integer\",\"value\":\"-9223372036854775808\"},"
                    "{\"type\":\"integer\",\"value\":\"9223372036854775807\"},"
                    "{\"type\":\"float\",\"value\":-1.5},") != NULL);
    CHECK(
        strstr(j, "{\"type\":\"blob\",\"base64\":\"\"},{\"type\":\"blob\",\"base64\":\"AAECAwQF") !=
        NULL);
    CHECK(
        strstr(j,
               "{\"type\":\"null\"},{\"type\":\"text\",\"value\":\"\"},"
               "{\"type\":\"text\",\"value\":\"blob\"},{\"type\":\"text\",\"value\":\"text\"}]]") !=
        NULL);
    root = parse(j);
    REQUIRE(root);
    row = json_array_get(json_array_get(json_object_get(root, "rows"), 0), 3);
    CHECK(json_string_length(json_object_get(row, "value")) == 15);
    CHECK(memcmp(json_string_value(json_object_get(row, "value")), args[3].bytes, 15) == 0);
    row = json_array_get(json_array_get(json_object_get(root, "rows"), 0), 4);
    CHECK(json_string_length(json_object_get(row, "value")) == 5);
    CHECK(memcmp(json_string_value(json_object_get(row, "value")), "a\0b\"\\", 5) == 0);
    row = json_array_get(json_array_get(json_object_get(root, "rows"), 0), 6);
    CHECK(strlen(json_string_value(json_object_get(row, "base64"))) == (sizeof(big) + 2) / 3 * 4);
    json_decref(root);
    local_close(l);
}

TEST(test_execute_args)
{
    struct local *l = open_local(0, 0, 0, 0);
    struct hrana_value one = {.type = HRANA_VALUE_INTEGER, .integer = 1};
    struct hrana_value two[2] = {{.type = HRANA_VALUE_INTEGER, .integer = 7},
                                 {.type = HRANA_VALUE_TEXT, .bytes = "x", .len = 1}};
    struct hrana_named_arg named[4] = {
        {"a", {.type = HRANA_VALUE_INTEGER, .integer = 10}},
        {"@b", {.type = HRANA_VALUE_INTEGER, .integer = 20}},
        {"c", {.type = HRANA_VALUE_INTEGER, .integer = 30}},
        {":d", {.type = HRANA_VALUE_INTEGER, .integer = 40}},
    };
    char longsql[400], longname[300];
    struct hrana_named_arg longarg = {longname, {.type = HRANA_VALUE_INTEGER, .integer = 5}};
    struct hrana_stmt st = stmt_of("SELECT :a, @b, $c, :d, :e");
    struct hrana_error err;
    const char *j;

    REQUIRE(l);
    st.named_args = named;
    st.n_named_args = 4;
    /* :e has no value: an error (sqld's rule), naming it */
    CHECK(!run(l, &st, &err) && strcmp(err.code, "ARGS_INVALID") == 0 &&
          strstr(err.message, ":e") != NULL);
    st = stmt_of("SELECT :a, @b, $c, :d");
    st.named_args = named;
    st.n_named_args = 4;
    j = run(l, &st, &err);
    REQUIRE(j);
    CHECK(strstr(j,
                 "\"rows\":[[{\"type\":\"integer\",\"value\":\"10\"},"
                 "{\"type\":\"integer\",\"value\":\"20\"},{\"type\":\"integer\",\"value\":\"30\"},"
                 "{\"type\":\"integer\",\"value\":\"40\"}]]") != NULL);
    /* a bare name that matches no parameter */
    named[0].name = "zz";
    CHECK(!run(l, &st, &err) && strcmp(err.code, "ARGS_INVALID") == 0);
    named[0].name = ":zz";
    CHECK(!run(l, &st, &err) && strcmp(err.code, "ARGS_INVALID") == 0);
    named[0].name = "";
    CHECK(!run(l, &st, &err) && strcmp(err.code, "ARGS_INVALID") == 0);
    /* mixed positional and named */
    named[0].name = "a";
    st.args = &one;
    st.n_args = 1;
    CHECK(!run(l, &st, &err) && strcmp(err.code, "ARGS_BOTH_POSITIONAL_AND_NAMED") == 0);
    /* too many positional values, too few */
    st = stmt_of("SELECT ?");
    st.args = two;
    st.n_args = 2;
    CHECK(!run(l, &st, &err) && strcmp(err.code, "ARGS_INVALID") == 0);
    st = stmt_of("SELECT ?1, ?2, ?3");
    st.args = two;
    st.n_args = 2;
    CHECK(!run(l, &st, &err) && strcmp(err.code, "ARGS_INVALID") == 0 &&
          strstr(err.message, "?3") != NULL);
    CHECK(local_check_args(l, "SELECT ?1, ?2, ?3", &st, &err) == -1 &&
          strcmp(err.code, "ARGS_INVALID") == 0);
    st = stmt_of("SELECT ?1, ?2");
    st.args = two;
    st.n_args = 2;
    j = run(l, &st, &err);
    REQUIRE(j);
    CHECK(
        strstr(j,
               "[[{\"type\":\"integer\",\"value\":\"7\"},{\"type\":\"text\",\"value\":\"x\"}]]") !=
        NULL);
    CHECK(local_check_args(l, "SELECT ?1, ?2", &st, &err) == 0);
    /* the bindings were cleared: the same statement without args fails */
    st.n_args = 0;
    CHECK(!run(l, &st, &err) && strcmp(err.code, "ARGS_INVALID") == 0);
    /* a statement that does not prepare here passes the check (the primary decides) */
    CHECK(local_check_args(l, "SELECT * FROM no_such_table WHERE a = ?", &st, &err) == 0);
    /* a long bare name */
    memset(longname, 'n', 250);
    longname[250] = '\0';
    snprintf(longsql, sizeof(longsql), "SELECT $%s", longname);
    st = stmt_of(longsql);
    st.named_args = &longarg;
    st.n_named_args = 1;
    j = run(l, &st, &err);
    REQUIRE(j);
    CHECK(strstr(j, "[[{\"type\":\"integer\",\"value\":\"5\"}]]") != NULL);
    local_close(l);
}

TEST(test_execute_errors)
{
    struct local *l = open_local(0, 0, 0, 0);

    REQUIRE(l);
    CHECK(fails_with(l, "", "SQL_NO_STATEMENT", NULL));
    CHECK(fails_with(l, "-- nothing", "SQL_NO_STATEMENT", NULL));
    CHECK(fails_with(l, "SELECT 1; SELECT 2", "SQL_MANY_STATEMENTS", NULL));
    CHECK(fails_with(l, "SELECT * FROM nope", "SQLITE_ERROR", "no such table: nope"));
    CHECK(fails_with(l, "INSERT INTO t(name) VALUES ('x') RETURNING id", "SQLITE_READONLY", NULL));
    CHECK(fails_with(l, "CREATE TEMP TABLE tt(a)", "SQLITE_READONLY", NULL));
    /* an error after some rows were written: nothing is left in the output */
    CHECK(fails_with(l,
                     SERIES(10) "SELECT CASE WHEN x < 5 THEN x "
                                "ELSE abs(-9223372036854775807 - 1) END FROM c",
                     "SQLITE_ERROR", "integer overflow"));
    CHECK(local_autocommit(l));
    local_close(l);
}

TEST(test_refusals)
{
    struct local *l = open_local(0, 0, 0, 0);
    char sql[256], copy[160];

    REQUIRE(l);
    snprintf(sql, sizeof(sql), "ATTACH '%s/other.db' AS other", tmpdir);
    CHECK(fails_with(l, sql, "SQLITE_AUTH",
                     "ATTACH is not allowed: boomerang replicates one database file"));
    CHECK(fails_with(l, "DETACH other", "SQLITE_AUTH",
                     "DETACH is not allowed: boomerang replicates one database file"));
    CHECK(fails_with(l, "SELECT load_extension('/tmp/x.so')", "SQLITE_AUTH",
                     "load_extension() is not allowed"));
    CHECK(fails_with(l, "PRAGMA journal_mode=delete", "SQLITE_AUTH",
                     "PRAGMA journal_mode=delete is not allowed: replication depends"));
    CHECK(fails_with(l, "PRAGMA user_version=5", "SQLITE_AUTH", "PRAGMA user_version=5"));
    CHECK(fails_with(l, "PRAGMA wal_checkpoint", "SQLITE_AUTH",
                     "the primary manages the WAL and checkpoints"));
    CHECK(fails_with(l, "PRAGMA optimize", "SQLITE_AUTH", "PRAGMA optimize is not allowed"));
    CHECK(fails_with(l, "PRAGMA query_only=0", "SQLITE_AUTH", NULL));
    /* refused while running: a PRAGMA table-valued function prepares its
     * PRAGMA at the first step */
    CHECK(local_classify(l, "SELECT * FROM pragma_optimize", NULL, NULL) == LOCAL_READ);
    CHECK(fails_with(l, "SELECT * FROM pragma_optimize", "SQLITE_AUTH",
                     "PRAGMA optimize is not allowed"));
    CHECK(count_of(l, "SELECT count(*) FROM pragma_integrity_check") == 1);
    snprintf(copy, sizeof(copy), "%s/copy.db", tmpdir);
    snprintf(sql, sizeof(sql), "VACUUM INTO '%s'", copy);
    CHECK(fails_with(l, sql, "SQLITE_AUTH", NULL));
    /* the read-only PRAGMAs work */
    CHECK(count_of(l, "PRAGMA user_version") == 0);
    CHECK(count_of(l, "SELECT count(*) FROM pragma_table_info('t')") == 3);
    {
        struct hrana_error err;
        const char *j = run_sql(l, "PRAGMA journal_mode", &err);
        CHECK(j && strstr(j, "{\"type\":\"text\",\"value\":\"wal\"}"));
        j = run_sql(l, "PRAGMA integrity_check", &err);
        CHECK(j && strstr(j, "{\"type\":\"text\",\"value\":\"ok\"}"));
        j = run_sql(l, "PRAGMA query_only", &err);
        CHECK(j && strstr(j, "{\"type\":\"integer\",\"value\":\"1\"}"));
    }
    CHECK(access(copy, F_OK) != 0);
    local_close(l);
}

/* ---- limits -------------------------------------------------------------------- */

TEST(test_timeout)
{
    struct local *l = open_local(0, 0, 50, 0);
    struct hrana_error err;
    int64_t t0 = mono_us();

    REQUIRE(l);
    CHECK(fails_with(l, FOREVER "SELECT count(*) FROM c", "TIMEOUT",
                     "statement ran longer than 50 ms"));
    CHECK(mono_us() - t0 < 1000000);
    /* rows are being written when the bound hits */
    CHECK(fails_with(l, FOREVER "SELECT x FROM c WHERE x % 1000000 = 0", "TIMEOUT", NULL));
    CHECK(local_exec_sql(l, FOREVER "SELECT count(*) FROM c", &err) == -1);
    CHECK(strcmp(err.code, "TIMEOUT") == 0);
    /* the next statement gets its own budget */
    CHECK(count_of(l, SERIES(1000) "SELECT count(*) FROM c") == 1000);
    local_close(l);
    /* no bound at all */
    l = open_local(0, 0, -1, 0);
    REQUIRE(l);
    CHECK(count_of(l, SERIES(200000) "SELECT count(*) FROM c") == 200000);
    local_close(l);
}

TEST(test_limits)
{
    struct local *l = open_local(10, 4096, 0, 0);
    struct hrana_error err;
    struct hrana_stmt st = stmt_of(SERIES(11) "SELECT x FROM c");
    struct buf out = {0};

    REQUIRE(l);
    CHECK(fails_with(l, SERIES(11) "SELECT x FROM c", "RESPONSE_TOO_LARGE", "10 rows"));
    CHECK(count_of(l, SERIES(10) "SELECT x FROM c") == 1);
    CHECK(fails_with(l, "SELECT zeroblob(4000)", "RESPONSE_TOO_LARGE", "4096 bytes"));
    CHECK(count_of(l, "SELECT length(zeroblob(4000))") == 4000);
    /* without rows there is nothing to limit */
    st.want_rows = 0;
    CHECK(run(l, &st, &err) != NULL);
    /* an abort keeps what the buffer held before */
    buf_append(&out, "[", 1);
    st.want_rows = 1;
    CHECK(local_execute(l, st.sql, &st, &out, &err) == -1);
    CHECK(out.len == 1 && out.data[0] == '[');
    CHECK(local_execute(l, "SELECT 2", &st, &out, &err) == 0);
    CHECK(out.len > 1 && out.data[0] == '[' && out.data[1] == '{');
    buf_free(&out);
    local_close(l);
}

/* ---- transactions, snapshots, schema changes ------------------------------------ */

TEST(test_read_transaction_snapshot)
{
    struct local *l = open_local(0, 0, 0, 0);
    struct hrana_error err;
    int64_t before;

    REQUIRE(l);
    before = count_of(l, "SELECT count(*) FROM t");
    REQUIRE(before > 0);
    CHECK(local_autocommit(l));
    REQUIRE(local_exec_sql(l, "BEGIN TRANSACTION READONLY", &err) == 0);
    CHECK(!local_autocommit(l));
    CHECK(count_of(l, "SELECT count(*) FROM t") == before);
    REQUIRE(exec(rw, "INSERT INTO t(name) VALUES ('snap')") == SQLITE_OK);
    CHECK(count_of(l, "SELECT count(*) FROM t") == before);
    CHECK(local_classify(l, "SELECT count(*) FROM t WHERE name = 'snap'", NULL, NULL) ==
          LOCAL_READ);
    CHECK(count_of(l, "SELECT count(*) FROM t WHERE name = 'snap'") == 0);
    CHECK(local_exec_sql(l, "COMMIT", &err) == 0);
    CHECK(local_autocommit(l));
    CHECK(count_of(l, "SELECT count(*) FROM t") == before + 1);
    /* autocommit reads see each write at once */
    REQUIRE(exec(rw, "DELETE FROM t WHERE name = 'snap'") == SQLITE_OK);
    CHECK(count_of(l, "SELECT count(*) FROM t") == before);
    /* errors */
    CHECK(local_exec_sql(l, "COMMIT", &err) == -1);
    CHECK(strcmp(err.code, "SQLITE_ERROR") == 0);
    CHECK(local_exec_sql(l, "", &err) == -1 && strcmp(err.code, "SQL_NO_STATEMENT") == 0);
    CHECK(local_exec_sql(l, "BEGIN; COMMIT", &err) == -1 &&
          strcmp(err.code, "SQL_MANY_STATEMENTS") == 0);
    CHECK(local_exec_sql(l, "SELECT * FROM nope", &err) == -1 &&
          strcmp(err.code, "SQLITE_ERROR") == 0);
    CHECK(local_exec_sql(l, "SELECT 1", &err) == 0);
    /* savepoints work on the read connection too */
    CHECK(local_exec_sql(l, "SAVEPOINT s1", &err) == 0);
    CHECK(count_of(l, "SELECT count(*) FROM t") == before);
    CHECK(local_exec_sql(l, "ROLLBACK TO s1", &err) == 0);
    CHECK(local_exec_sql(l, "RELEASE s1", &err) == 0);
    CHECK(local_autocommit(l));
    /* closing with a transaction open ends it: the writer can then truncate the WAL */
    REQUIRE(local_exec_sql(l, "BEGIN TRANSACTION READONLY", &err) == 0);
    CHECK(count_of(l, "SELECT count(*) FROM t") == before);
    REQUIRE(exec(rw, "INSERT INTO t(name) VALUES ('w')") == SQLITE_OK);
    CHECK(query(rw, "PRAGMA wal_checkpoint(TRUNCATE)") == 1); /* busy: the snapshot pins it */
    local_close(l);
    CHECK(query(rw, "PRAGMA wal_checkpoint(TRUNCATE)") == 0);
    REQUIRE(exec(rw, "DELETE FROM t WHERE name = 'w'") == SQLITE_OK);
}

TEST(test_schema_change)
{
    struct local *l = open_local(0, 0, 0, 0);
    struct hrana_error err;
    const char *j;

    REQUIRE(l);
    j = run_sql(l, "SELECT * FROM t2", &err);
    REQUIRE(j);
    CHECK(strstr(j, "\"cols\":[{\"name\":\"a\",\"decltype\":\"INTEGER\"},"
                    "{\"name\":\"b\",\"decltype\":\"TEXT\"}],") != NULL);
    REQUIRE(exec(rw, "ALTER TABLE t2 ADD COLUMN c REAL DEFAULT 0.5") == SQLITE_OK);
    j = run_sql(l, "SELECT * FROM t2", &err); /* the cached statement, re-prepared */
    REQUIRE(j);
    CHECK(strstr(j, "{\"name\":\"c\",\"decltype\":\"REAL\"}],") != NULL);
    CHECK(strstr(j, "{\"type\":\"float\",\"value\":0.5}]]") != NULL);
    REQUIRE(exec(rw, "DROP TABLE t2") == SQLITE_OK);
    CHECK(fails_with(l, "SELECT * FROM t2", "SQLITE_ERROR", "no such table: t2"));
    REQUIRE(exec(rw, "CREATE TABLE t2(a INTEGER, b TEXT); INSERT INTO t2 VALUES (1, 'x')") ==
            SQLITE_OK);
    j = run_sql(l, "SELECT * FROM t2", &err);
    REQUIRE(j);
    CHECK(strstr(j, "{\"type\":\"text\",\"value\":\"x\"}]]") != NULL);
    local_close(l);
}

TEST(test_cache_eviction)
{
    struct local *l = open_local(0, 0, 0, 2);
    size_t n = (1 << 20) + 100;
    char *huge = xmalloc(n + 1);

    REQUIRE(l);
    for (int round = 0; round < 3; round++) {
        CHECK(count_of(l, "SELECT 1") == 1);
        CHECK(count_of(l, "SELECT 2") == 2);
        CHECK(count_of(l, "SELECT 3") == 3);
        CHECK(local_classify(l, "SELECT 4", NULL, NULL) == LOCAL_READ);
    }
    /* a text larger than the cache's byte budget is still cached alone */
    memcpy(huge, "SELECT 5 --", 11);
    memset(huge + 11, 'x', n - 11);
    huge[n] = '\0';
    CHECK(local_classify(l, huge, NULL, NULL) == LOCAL_READ);
    CHECK(count_of(l, huge) == 5);
    CHECK(count_of(l, "SELECT 1") == 1);
    CHECK(count_of(l, huge) == 5);
    free(huge);
    local_close(l);
}

/* ---- describe, split ----------------------------------------------------------- */

TEST(test_describe)
{
    struct local *l = open_local(0, 0, 0, 0);
    struct hrana_error err;
    struct buf out = {0};

    REQUIRE(l);
    REQUIRE(local_describe(l, "SELECT id, name FROM t WHERE id = :id AND name = ?", &out, &err) ==
            0);
    buf_append(&out, "", 1);
    CHECK(strcmp((char *)out.data, "{\"params\":[{\"name\":\":id\"},{\"name\":null}],"
                                   "\"cols\":[{\"name\":\"id\",\"decltype\":\"INTEGER\"},"
                                   "{\"name\":\"name\",\"decltype\":\"TEXT\"}],"
                                   "\"is_explain\":false,\"is_readonly\":true}") == 0);
    buf_reset(&out);
    REQUIRE(local_describe(l, "EXPLAIN SELECT 1", &out, &err) == 0);
    buf_append(&out, "", 1);
    CHECK(strstr((char *)out.data, "\"is_explain\":true,\"is_readonly\":true}") != NULL);
    buf_reset(&out);
    REQUIRE(local_describe(l, "DELETE FROM t", &out, &err) == 0);
    buf_append(&out, "", 1);
    CHECK(strcmp((char *)out.data,
                 "{\"params\":[],\"cols\":[],\"is_explain\":false,\"is_readonly\":false}") == 0);
    buf_reset(&out);
    CHECK(local_describe(l, " -- x", &out, &err) == -1 &&
          strcmp(err.code, "SQL_NO_STATEMENT") == 0);
    CHECK(local_describe(l, "SELECT 1; SELECT 2", &out, &err) == -1 &&
          strcmp(err.code, "SQL_MANY_STATEMENTS") == 0);
    CHECK(local_describe(l, "SELECT * FROM nope", &out, &err) == -1 &&
          strcmp(err.code, "SQLITE_ERROR") == 0);
    CHECK(out.len == 0);
    buf_free(&out);
    local_close(l);
}

static int split_is(const char *sql, size_t n, ...)
{
    char **parts = NULL;
    size_t got = local_split_sql(sql, &parts);
    int ok = got == n && parts[got] == NULL;
    va_list ap;

    va_start(ap, n);
    for (size_t i = 0; ok && i < n; i++) {
        const char *want = va_arg(ap, const char *);
        if (strcmp(parts[i], want) != 0) {
            fprintf(stderr, "  part %zu: [%s], want [%s]\n", i, parts[i], want);
            ok = 0;
        }
    }
    va_end(ap);
    if (!ok)
        fprintf(stderr, "  split [%s]: %zu parts\n", sql, got);
    free(parts);
    return ok;
}

TEST(test_split)
{
    CHECK(split_is("CREATE TABLE n1(a); INSERT INTO n1 VALUES (1); SELECT 1", 3,
                   "CREATE TABLE n1(a);", "INSERT INTO n1 VALUES (1);", "SELECT 1"));
    CHECK(split_is("SELECT 1; -- c\n SELECT 2 ;; \n", 2, "SELECT 1;", "SELECT 2 ;"));
    CHECK(split_is("  INSERT INTO t(name) VALUES ('q')\n", 1, "INSERT INTO t(name) VALUES ('q')"));
    CHECK(split_is("SELECT 1; /* trailing */", 1, "SELECT 1;"));
    CHECK(split_is("", 0));
    CHECK(split_is(" ; -- nothing", 0));
    /* statements that do not prepare anywhere are still split */
    CHECK(split_is("SELEC 1; SELECT 2", 2, "SELEC 1;", "SELECT 2"));
    /* semicolons inside strings, comments and trigger bodies do not end a statement */
    CHECK(split_is("INSERT INTO t VALUES ('a;b'); /* x; y */ SELECT 1", 2,
                   "INSERT INTO t VALUES ('a;b');", "SELECT 1"));
    CHECK(split_is("CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET v = 1; "
                   "DELETE FROM t WHERE 0; END; SELECT 2",
                   2,
                   "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET v = 1; "
                   "DELETE FROM t WHERE 0; END;",
                   "SELECT 2"));
}

int main(void)
{
    if (setup() != 0) {
        fprintf(stderr, "setup failed\n");
        return 1;
    }
    RUN(test_open_errors);
    RUN(test_code_names);
    RUN(test_classify);
    RUN(test_classify_unprepared);
    RUN(test_execute_rows);
    RUN(test_execute_values);
    RUN(test_execute_args);
    RUN(test_execute_errors);
    RUN(test_refusals);
    RUN(test_timeout);
    RUN(test_limits);
    RUN(test_read_transaction_snapshot);
    RUN(test_schema_change);
    RUN(test_cache_eviction);
    RUN(test_describe);
    RUN(test_split);
    sqlite3_close(rw);
    SH("rm -rf '%s'", tmpdir);
    return HARNESS_END();
}
