/* Unit tests: primary/exec.c and primary/authz.c on an in-memory database. */
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "primary/authz.h"
#include "primary/exec.h"

static sqlite3 *db;
static struct authz *az;
static const struct exec_limits limits = {.max_result_bytes = 1 << 20};

static Boomerang__V1__StatementResult *run(const char *sql, int *rc)
{
    Boomerang__V1__Statement st = BOOMERANG__V1__STATEMENT__INIT;
    Boomerang__V1__StatementResult *r;

    st.sql = (char *)sql;
    *rc = exec_statement(db, az, &st, &limits, &r, NULL);
    return r;
}

static int run_ok(const char *sql)
{
    int rc;
    Boomerang__V1__StatementResult *r = run(sql, &rc);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return rc == SQLITE_OK;
}

/* The error code name for sql, or NULL if it succeeded. Caller frees. */
static char *error_of(const char *sql, char **message)
{
    int rc;
    Boomerang__V1__StatementResult *r = run(sql, &rc);
    char *code = r->error ? strdup(r->error->code) : NULL;

    if (message)
        *message = r->error ? strdup(r->error->message) : NULL;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return code;
}

static void setup(void)
{
    if (sqlite3_open(":memory:", &db) != SQLITE_OK || authz_install(db, &az) != 0)
        abort();
    sqlite3_extended_result_codes(db, 1);
}

static void teardown(void)
{
    authz_free(db, az);
    sqlite3_close(db);
}

TEST(values_round_trip)
{
    Boomerang__V1__Statement st = BOOMERANG__V1__STATEMENT__INIT;
    Boomerang__V1__Value v[5], *vp[5];
    Boomerang__V1__StatementResult *r;
    static uint8_t blob[3] = {0, 1, 255};

    REQUIRE(run_ok("CREATE TABLE t(i INTEGER, r REAL, s TEXT, b BLOB, n)"));
    for (int i = 0; i < 5; i++) {
        boomerang__v1__value__init(&v[i]);
        vp[i] = &v[i];
    }
    v[0].kind_case = BOOMERANG__V1__VALUE__KIND_INTEGER, v[0].integer = INT64_MIN;
    v[1].kind_case = BOOMERANG__V1__VALUE__KIND_REAL, v[1].real = 2.5;
    v[2].kind_case = BOOMERANG__V1__VALUE__KIND_TEXT, v[2].text = "h\xc3\xa9llo";
    v[3].kind_case = BOOMERANG__V1__VALUE__KIND_BLOB, v[3].blob.data = blob, v[3].blob.len = 3;
    v[4].kind_case = BOOMERANG__V1__VALUE__KIND_NULL, v[4].null = 1;
    st.sql = "INSERT INTO t VALUES (?, ?, ?, ?, ?)";
    st.args = vp;
    st.n_args = 5;
    CHECK(exec_statement(db, az, &st, &limits, &r, NULL) == SQLITE_OK);
    CHECK(r->affected_row_count == 1 && r->has_last_insert_rowid && r->last_insert_rowid == 1);
    protobuf_c_message_free_unpacked(&r->base, NULL);

    int rc;
    r = run("SELECT i, r, s, b, n FROM t", &rc);
    REQUIRE(rc == SQLITE_OK && r->n_rows == 1 && r->n_columns == 5);
    CHECK(strcmp(r->columns[0]->name, "i") == 0 && strcmp(r->columns[0]->decltype, "INTEGER") == 0);
    CHECK(strcmp(r->columns[4]->decltype, "") == 0);
    Boomerang__V1__Value **row = r->rows[0]->values;
    CHECK(row[0]->integer == INT64_MIN);
    CHECK(row[1]->real == 2.5);
    CHECK(strcmp(row[2]->text, "h\xc3\xa9llo") == 0);
    CHECK(row[3]->blob.len == 3 && memcmp(row[3]->blob.data, blob, 3) == 0);
    CHECK(row[4]->kind_case == BOOMERANG__V1__VALUE__KIND_NULL);
    CHECK(r->affected_row_count == 0 && !r->has_last_insert_rowid);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

/* protobuf-c carries a proto3 string as a C string: TEXT holding a NUL goes
 * both ways as text_bytes, and stays TEXT of its full length. */
TEST(text_with_nul_round_trips)
{
    Boomerang__V1__Statement st = BOOMERANG__V1__STATEMENT__INIT;
    Boomerang__V1__NamedArg named, *namedp = &named;
    Boomerang__V1__Value v[3], *vp[2] = {&v[0], &v[1]};
    Boomerang__V1__StatementResult *r, *back;
    static uint8_t nul_text[] = {'a', 0, 'b'};
    uint8_t wire[256];
    int rc;

    for (int i = 0; i < 3; i++)
        boomerang__v1__value__init(&v[i]);
    v[0].kind_case = BOOMERANG__V1__VALUE__KIND_TEXT_BYTES;
    v[0].text_bytes.data = nul_text, v[0].text_bytes.len = 3;
    v[1].kind_case = BOOMERANG__V1__VALUE__KIND_TEXT_BYTES; /* empty: data NULL */
    v[2].kind_case = BOOMERANG__V1__VALUE__KIND_TEXT_BYTES;
    v[2].text_bytes.data = nul_text, v[2].text_bytes.len = 2; /* "a\0": NUL last */
    boomerang__v1__named_arg__init(&named);
    named.name = "n", named.value = &v[2];
    st.sql = "SELECT ?1, typeof(?1), length(CAST(?1 AS BLOB)), ?1 = 'a' || char(0) || 'b', ?2, "
             "typeof(?2), :n, 'a' || char(0) || 'b', 'plain'";
    st.args = vp, st.n_args = 2;
    st.named_args = &namedp, st.n_named_args = 1;
    REQUIRE(exec_statement(db, az, &st, &limits, &r, NULL) == SQLITE_OK);
    REQUIRE(r->n_rows == 1 && r->rows[0]->n_values == 9);

    /* Through the wire, as the sidecar sees it. */
    REQUIRE(boomerang__v1__statement_result__get_packed_size(r) <= sizeof(wire));
    size_t n = boomerang__v1__statement_result__pack(r, wire);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    back = boomerang__v1__statement_result__unpack(NULL, n, wire);
    REQUIRE(back != NULL);
    Boomerang__V1__Value **row = back->rows[0]->values;
    REQUIRE(row[0]->kind_case == BOOMERANG__V1__VALUE__KIND_TEXT_BYTES);
    CHECK(row[0]->text_bytes.len == 3 && memcmp(row[0]->text_bytes.data, nul_text, 3) == 0);
    CHECK(strcmp(row[1]->text, "text") == 0);
    CHECK(row[2]->integer == 3);
    CHECK(row[3]->integer == 1);
    CHECK(row[4]->kind_case == BOOMERANG__V1__VALUE__KIND_TEXT && strcmp(row[4]->text, "") == 0);
    CHECK(strcmp(row[5]->text, "text") == 0);
    REQUIRE(row[6]->kind_case == BOOMERANG__V1__VALUE__KIND_TEXT_BYTES);
    CHECK(row[6]->text_bytes.len == 2 && memcmp(row[6]->text_bytes.data, "a", 2) == 0);
    REQUIRE(row[7]->kind_case == BOOMERANG__V1__VALUE__KIND_TEXT_BYTES);
    CHECK(row[7]->text_bytes.len == 3 && memcmp(row[7]->text_bytes.data, nul_text, 3) == 0);
    CHECK(row[8]->kind_case == BOOMERANG__V1__VALUE__KIND_TEXT); /* no NUL: a string */
    CHECK(strcmp(row[8]->text, "plain") == 0);
    protobuf_c_message_free_unpacked(&back->base, NULL);

    /* Stored and read back from a table: still the whole text. */
    REQUIRE(run_ok("CREATE TABLE tn(s TEXT)"));
    st.sql = "INSERT INTO tn VALUES (?)";
    st.n_args = 1, st.n_named_args = 0;
    REQUIRE(exec_statement(db, az, &st, &limits, &r, NULL) == SQLITE_OK);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    r = run("SELECT s, length(CAST(s AS BLOB)) FROM tn", &rc);
    REQUIRE(rc == SQLITE_OK && r->n_rows == 1);
    row = r->rows[0]->values;
    REQUIRE(row[0]->kind_case == BOOMERANG__V1__VALUE__KIND_TEXT_BYTES);
    CHECK(row[0]->text_bytes.len == 3 && memcmp(row[0]->text_bytes.data, nul_text, 3) == 0);
    CHECK(row[1]->integer == 3);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

TEST(named_args_with_and_without_prefix)
{
    Boomerang__V1__Statement st = BOOMERANG__V1__STATEMENT__INIT;
    Boomerang__V1__NamedArg a[3], *ap[3];
    Boomerang__V1__Value v[3];
    Boomerang__V1__StatementResult *r;
    const char *names[3] = {"a", "@b", "c"};

    for (int i = 0; i < 3; i++) {
        boomerang__v1__named_arg__init(&a[i]);
        boomerang__v1__value__init(&v[i]);
        v[i].kind_case = BOOMERANG__V1__VALUE__KIND_INTEGER;
        v[i].integer = i + 1;
        a[i].name = (char *)names[i];
        a[i].value = &v[i];
        ap[i] = &a[i];
    }
    st.sql = "SELECT :a + @b * 10 + $c * 100";
    st.named_args = ap;
    st.n_named_args = 3;
    REQUIRE(exec_statement(db, az, &st, &limits, &r, NULL) == SQLITE_OK);
    CHECK(r->n_rows == 1 && r->rows[0]->values[0]->integer == 321);
    protobuf_c_message_free_unpacked(&r->base, NULL);

    a[0].name = "zz";
    st.n_named_args = 1;
    CHECK(exec_statement(db, az, &st, &limits, &r, NULL) == SQLITE_RANGE);
    CHECK(r->error && strstr(r->error->message, "zz") != NULL);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

TEST(errors_carry_code_names)
{
    char *code, *msg;

    REQUIRE(run_ok("CREATE TABLE u(x UNIQUE CHECK (x > 0))"));
    REQUIRE(run_ok("INSERT INTO u VALUES (1)"));
    code = error_of("INSERT INTO u VALUES (1)", NULL);
    CHECK(code && strcmp(code, "SQLITE_CONSTRAINT_UNIQUE") == 0);
    free(code);
    code = error_of("INSERT INTO u VALUES (-1)", NULL);
    CHECK(code && strcmp(code, "SQLITE_CONSTRAINT_CHECK") == 0);
    free(code);
    code = error_of("SELEC 1", &msg);
    CHECK(code && strcmp(code, "SQLITE_ERROR") == 0 && strstr(msg, "syntax error"));
    free(code);
    free(msg);
    code = error_of("SELECT 1; SELECT 2", &msg);
    CHECK(code && strcmp(code, "SQLITE_MISUSE") == 0 && strstr(msg, "exactly one"));
    free(code);
    free(msg);
    code = error_of("SELECT ?", NULL); /* unbound parameters are NULL, as in SQLite */
    CHECK(code == NULL);
    CHECK(run_ok("  -- only a comment\n"));
}

TEST(too_many_args_and_too_big_results)
{
    Boomerang__V1__Statement st = BOOMERANG__V1__STATEMENT__INIT;
    Boomerang__V1__Value v = BOOMERANG__V1__VALUE__INIT, *vp[2] = {&v, &v};
    Boomerang__V1__StatementResult *r;

    st.sql = "SELECT ?";
    st.args = vp;
    st.n_args = 2;
    CHECK(exec_statement(db, az, &st, &limits, &r, NULL) == SQLITE_RANGE);
    protobuf_c_message_free_unpacked(&r->base, NULL);

    int rc;
    r = run("WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100) "
            "SELECT randomblob(100000) FROM c",
            &rc);
    CHECK(rc == SQLITE_TOOBIG && r->error && r->n_rows == 0);
    CHECK(r->error && strstr(r->error->message, "limit"));
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

TEST(rowid_does_not_leak_between_statements)
{
    int rc;
    Boomerang__V1__StatementResult *r;

    REQUIRE(run_ok("CREATE TABLE k(x)"));
    REQUIRE(run_ok("INSERT INTO k VALUES (1)"));
    r = run("UPDATE k SET x = 2", &rc);
    CHECK(rc == SQLITE_OK && r->affected_row_count == 1 && !r->has_last_insert_rowid);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    r = run("CREATE TABLE k2(y)", &rc);
    CHECK(rc == SQLITE_OK && r->affected_row_count == 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void expect_refused(const char *sql, const char *needle)
{
    char *msg = NULL;
    char *code = error_of(sql, &msg);

    if (!code || strcmp(code, "SQLITE_AUTH") != 0 || !msg || !strstr(msg, needle)) {
        fprintf(stderr, "  %s: got %s: %s\n", sql, code ? code : "ok", msg ? msg : "");
        harness_cur_failed = 1;
    }
    free(code);
    free(msg);
}

TEST(authorizer_refuses_what_breaks_replication)
{
    expect_refused("ATTACH 'x.db' AS x", "ATTACH");
    expect_refused("DETACH main", "DETACH");
    expect_refused("SELECT load_extension('x')", "load_extension");
    expect_refused("PRAGMA journal_mode=DELETE", "journal_mode");
    expect_refused("PRAGMA wal_checkpoint", "wal_checkpoint");
    expect_refused("PRAGMA wal_checkpoint(TRUNCATE)", "wal_checkpoint");
    expect_refused("PRAGMA wal_autocheckpoint=10", "wal_autocheckpoint");
    expect_refused("PRAGMA page_size=8192", "page_size");
    expect_refused("PRAGMA writable_schema=ON", "writable_schema");
    expect_refused("PRAGMA synchronous=OFF", "synchronous");
    expect_refused("PRAGMA query_only=1", "query_only");
    expect_refused("BEGIN", "BEGIN");
    expect_refused("COMMIT", "COMMIT");
    expect_refused("SAVEPOINT boomerang_job", "reserved");
    /* reading these settings, and user savepoints, stay allowed */
    CHECK(run_ok("PRAGMA journal_mode"));
    CHECK(run_ok("PRAGMA page_size"));
    CHECK(run_ok("PRAGMA user_version=7"));
    CHECK(run_ok("SAVEPOINT mine"));
    CHECK(run_ok("RELEASE mine"));
}

TEST(vacuum_allowed_vacuum_into_refused)
{
    authz_set_vacuum(az, 1);
    CHECK(run_ok("VACUUM"));
    expect_refused("VACUUM INTO '/tmp/boomerang-test-vacuum-into.db'", "VACUUM INTO");
    authz_set_vacuum(az, 0);
    expect_refused("VACUUM INTO '/tmp/boomerang-test-vacuum-into.db'", "VACUUM INTO");
    expect_refused("vacuum main into '/tmp/boomerang-test-vacuum-into.db'", "VACUUM INTO");
    expect_refused("/* x */ VACUUM \"main\" INTO 'x.db'", "VACUUM INTO");
}

TEST(first_keyword)
{
    CHECK(exec_first_keyword_is("  vacuum", "VACUUM"));
    CHECK(exec_first_keyword_is("/* c */ -- x\n VACUUM main", "VACUUM"));
    CHECK(!exec_first_keyword_is("VACUUMS", "VACUUM"));
    CHECK(!exec_first_keyword_is("SELECT 'VACUUM'", "VACUUM"));
    CHECK(!exec_first_keyword_is("/* unterminated", "VACUUM"));
}

int main(void)
{
    setup();
    RUN(values_round_trip);
    RUN(text_with_nul_round_trips);
    RUN(named_args_with_and_without_prefix);
    RUN(errors_carry_code_names);
    RUN(too_many_args_and_too_big_results);
    RUN(rowid_does_not_leak_between_statements);
    RUN(authorizer_refuses_what_breaks_replication);
    RUN(vacuum_allowed_vacuum_into_refused);
    RUN(first_keyword);
    teardown();
    return HARNESS_END();
}
