/* Unit tests for proxy/forward: Hrana statements to protobuf, StatementResults
 * to exact Hrana JSON, code names, skipped statements, the byte bound. */
#include <stdlib.h>
#include <string.h>

#include "proxy/forward.h"
#include "tests/unit/harness.h"

/* ---- helpers ------------------------------------------------------------------- */

static int buf_is(const struct buf *b, const char *want)
{
    size_t n = strlen(want);
    int ok = buf_avail(b) == n && memcmp(buf_head(b), want, n) == 0;

    if (!ok)
        fprintf(stderr, "  got:  %.*s\n  want: %s\n", (int)buf_avail(b), (const char *)buf_head(b),
                want);
    return ok;
}

/* A StatementResult built by hand, in static storage (freed by nothing). */
struct fixture {
    Boomerang__V1__StatementResult r;
    Boomerang__V1__Column cols[3];
    Boomerang__V1__Column *colp[3];
    Boomerang__V1__Row rows[2];
    Boomerang__V1__Row *rowp[2];
    Boomerang__V1__Value vals[2][3];
    Boomerang__V1__Value *valp[2][3];
};

static void fixture_init(struct fixture *f)
{
    Boomerang__V1__StatementResult rinit = BOOMERANG__V1__STATEMENT_RESULT__INIT;
    Boomerang__V1__Column cinit = BOOMERANG__V1__COLUMN__INIT;
    Boomerang__V1__Row row_init = BOOMERANG__V1__ROW__INIT;
    Boomerang__V1__Value vinit = BOOMERANG__V1__VALUE__INIT;
    static char blob[] = {'h', 'i', '!'};

    memset(f, 0, sizeof(*f));
    f->r = rinit;
    for (int i = 0; i < 3; i++) {
        f->cols[i] = cinit;
        f->colp[i] = &f->cols[i];
    }
    f->cols[0].name = "id";
    f->cols[0].decltype = "INTEGER";
    f->cols[1].name = "v";
    f->cols[1].decltype = "TEXT";
    f->cols[2].name = "x+1"; /* an expression: decltype "" */
    for (int r = 0; r < 2; r++) {
        f->rows[r] = row_init;
        for (int c = 0; c < 3; c++) {
            f->vals[r][c] = vinit;
            f->valp[r][c] = &f->vals[r][c];
        }
        f->rows[r].n_values = 3;
        f->rows[r].values = f->valp[r];
        f->rowp[r] = &f->rows[r];
    }
    f->vals[0][0].kind_case = BOOMERANG__V1__VALUE__KIND_INTEGER;
    f->vals[0][0].integer = -5;
    f->vals[0][1].kind_case = BOOMERANG__V1__VALUE__KIND_TEXT;
    f->vals[0][1].text = "a\"b";
    f->vals[0][2].kind_case = BOOMERANG__V1__VALUE__KIND_REAL;
    f->vals[0][2].real = 1.5;
    f->vals[1][0].kind_case = BOOMERANG__V1__VALUE__KIND_NULL;
    f->vals[1][0].null = 1;
    f->vals[1][1].kind_case = BOOMERANG__V1__VALUE__KIND_BLOB;
    f->vals[1][1].blob.data = (uint8_t *)blob;
    f->vals[1][1].blob.len = sizeof(blob);
    /* vals[1][2] left unset: NULL too */
    f->r.n_columns = 3;
    f->r.columns = f->colp;
    f->r.n_rows = 2;
    f->r.rows = f->rowp;
    f->r.affected_row_count = 0;
}

#define COLS_JSON                                                                                  \
    "{\"cols\":[{\"name\":\"id\",\"decltype\":\"INTEGER\"},{\"name\":\"v\",\"decltype\":"          \
    "\"TEXT\"},{\"name\":\"x+1\",\"decltype\":null}],"
#define ROWS_JSON                                                                                  \
    "\"rows\":[[{\"type\":\"integer\",\"value\":\"-5\"},{\"type\":\"text\",\"value\":"             \
    "\"a\\\"b\"},{\"type\":\"float\",\"value\":1.5}],[{\"type\":\"null\"},{\"type\":\"blob\","     \
    "\"base64\":\"aGkh\"},{\"type\":\"null\"}]],"
#define TAIL_JSON                                                                                  \
    "\"affected_row_count\":0,\"last_insert_rowid\":null,\"rows_read\":0,\"rows_written\":0,"      \
    "\"query_duration_ms\":0}"

/* ---- forward_result ------------------------------------------------------------ */

TEST(result_rows_exact_json)
{
    struct fixture f;
    struct buf out = {0};
    struct hrana_error err;

    memset(&err, 0, sizeof(err));

    fixture_init(&f);
    CHECK(forward_result(&f.r, 1, 0, &out, &err) == FORWARD_OK);
    CHECK(buf_is(&out, COLS_JSON ROWS_JSON TAIL_JSON));
    buf_free(&out);
}

TEST(result_without_rows)
{
    struct fixture f;
    struct buf out = {0};
    struct hrana_error err;

    memset(&err, 0, sizeof(err));

    fixture_init(&f);
    CHECK(forward_result(&f.r, 0, 0, &out, &err) == FORWARD_OK);
    CHECK(buf_is(&out, COLS_JSON "\"rows\":[]," TAIL_JSON));
    buf_free(&out);
}

TEST(result_write_with_rowid)
{
    Boomerang__V1__StatementResult r = BOOMERANG__V1__STATEMENT_RESULT__INIT;
    struct buf out = {0};
    struct hrana_error err;

    memset(&err, 0, sizeof(err));

    r.affected_row_count = 3;
    r.has_last_insert_rowid = 1;
    r.last_insert_rowid = 42;
    buf_append(&out, "X", 1); /* appended after what is there */
    CHECK(forward_result(&r, 1, 0, &out, &err) == FORWARD_OK);
    CHECK(buf_is(&out, "X{\"cols\":[],\"rows\":[],\"affected_row_count\":3,\"last_insert_rowid\":"
                       "\"42\",\"rows_read\":0,\"rows_written\":0,\"query_duration_ms\":0}"));
    buf_free(&out);
}

TEST(result_error_code_mapped)
{
    Boomerang__V1__StatementResult r = BOOMERANG__V1__STATEMENT_RESULT__INIT;
    Boomerang__V1__Error e = BOOMERANG__V1__ERROR__INIT;
    struct buf out = {0};
    struct hrana_error err;

    memset(&err, 0, sizeof(err));

    e.code = "SQLITE_CONSTRAINT_UNIQUE";
    e.extended_code = 2067;
    e.message = "UNIQUE constraint failed: t.id";
    r.error = &e;
    CHECK(forward_result(&r, 1, 0, &out, &err) == FORWARD_ERROR);
    CHECK(strcmp(err.code, "SQLITE_CONSTRAINT") == 0);
    CHECK(strcmp(err.message, "UNIQUE constraint failed: t.id") == 0);
    CHECK(buf_avail(&out) == 0);

    e.code = "SQLITE_AUTH";
    e.extended_code = 23;
    e.message = "ATTACH is not allowed";
    CHECK(forward_result(&r, 1, 0, &out, &err) == FORWARD_ERROR);
    CHECK(strcmp(err.code, "SQLITE_AUTH") == 0);
    CHECK(strcmp(err.message, "ATTACH is not allowed") == 0);
    buf_free(&out);
}

TEST(result_skipped)
{
    Boomerang__V1__StatementResult r = BOOMERANG__V1__STATEMENT_RESULT__INIT;
    Boomerang__V1__Error e = BOOMERANG__V1__ERROR__INIT;
    struct buf out = {0};
    struct hrana_error err;

    memset(&err, 0, sizeof(err));

    e.code = "SKIPPED";
    e.message = "not run: an earlier statement failed";
    r.error = &e;
    CHECK(forward_result(&r, 1, 0, &out, &err) == FORWARD_SKIPPED);
    CHECK(buf_avail(&out) == 0);
    buf_free(&out);
}

TEST(result_malformed_row)
{
    struct fixture f;
    struct buf out = {0};
    struct hrana_error err;

    memset(&err, 0, sizeof(err));

    fixture_init(&f);
    f.rows[1].n_values = 2;
    buf_append(&out, "[", 1);
    CHECK(forward_result(&f.r, 1, 0, &out, &err) == FORWARD_ERROR);
    CHECK(strcmp(err.code, "PROXY_ERROR") == 0);
    CHECK(buf_is(&out, "["));
    /* Without rows the row shape does not matter. */
    CHECK(forward_result(&f.r, 0, 0, &out, &err) == FORWARD_OK);
    buf_free(&out);
}

/* The bound is inclusive: exactly the full size passes, one byte less fails
 * (at the tail) and leaves nothing behind; so does a bound hit in the rows. */
TEST(result_max_bytes)
{
    struct fixture f;
    struct buf out = {0};
    struct hrana_error err;

    memset(&err, 0, sizeof(err));
    const size_t full = strlen(COLS_JSON ROWS_JSON TAIL_JSON);

    fixture_init(&f);
    buf_append(&out, "pre", 3);
    CHECK(forward_result(&f.r, 1, full, &out, &err) == FORWARD_OK);
    CHECK(buf_avail(&out) == 3 + full);
    buf_reset(&out);

    buf_append(&out, "pre", 3);
    CHECK(forward_result(&f.r, 1, full - 1, &out, &err) == FORWARD_ERROR);
    CHECK(strcmp(err.code, "RESPONSE_TOO_LARGE") == 0);
    CHECK(buf_is(&out, "pre"));

    memset(&err, 0, sizeof(err));
    CHECK(forward_result(&f.r, 1, 10, &out, &err) == FORWARD_ERROR); /* first row */
    CHECK(strcmp(err.code, "RESPONSE_TOO_LARGE") == 0);
    CHECK(buf_is(&out, "pre"));
    buf_free(&out);
}

/* TEXT holding a NUL comes from the primary as text_bytes (protobuf-c cuts a
 * string at its NUL) and goes out as the whole Hrana text, escaped; an empty
 * text_bytes (no data) is the empty text. Checked after a trip through the
 * wire, as the sidecar receives it. */
TEST(result_text_with_nul)
{
    Boomerang__V1__StatementResult r = BOOMERANG__V1__STATEMENT_RESULT__INIT, *u;
    Boomerang__V1__Column cols[3], *colp[3];
    Boomerang__V1__Row row = BOOMERANG__V1__ROW__INIT, *rowp = &row;
    Boomerang__V1__Value v[3], *vp[3];
    static uint8_t nul_text[] = {'a', 0, 'b'};
    static const char *names[3] = {"s", "t", "e"};
    struct buf out = {0};
    struct hrana_error err;
    uint8_t packed[128];
    size_t n;

    memset(&err, 0, sizeof(err));
    for (int i = 0; i < 3; i++) {
        boomerang__v1__column__init(&cols[i]);
        cols[i].name = (char *)names[i];
        colp[i] = &cols[i];
        boomerang__v1__value__init(&v[i]);
        v[i].kind_case = BOOMERANG__V1__VALUE__KIND_TEXT_BYTES;
        vp[i] = &v[i];
    }
    v[0].text_bytes.data = nul_text, v[0].text_bytes.len = 3;
    v[1].text_bytes.data = nul_text + 1, v[1].text_bytes.len = 1; /* just a NUL */
    row.n_values = 3, row.values = vp;
    r.n_columns = 3, r.columns = colp;
    r.n_rows = 1, r.rows = &rowp;
    REQUIRE(boomerang__v1__statement_result__get_packed_size(&r) <= sizeof(packed));
    n = boomerang__v1__statement_result__pack(&r, packed);
    u = boomerang__v1__statement_result__unpack(NULL, n, packed);
    REQUIRE(u && u->n_rows == 1 && u->rows[0]->n_values == 3);
    CHECK(forward_result(u, 1, 0, &out, &err) == FORWARD_OK);
    CHECK(buf_is(&out, "{\"cols\":[{\"name\":\"s\",\"decltype\":null},{\"name\":\"t\",\"decltype\":"
                       "null},{\"name\":\"e\",\"decltype\":null}],\"rows\":[[{\"type\":\"text\","
                       "\"value\":\"a\\u0000b\"},{\"type\":\"text\",\"value\":\"\\u0000\"},{"
                       "\"type\":\"text\",\"value\":\"\"}]]," TAIL_JSON));
    boomerang__v1__statement_result__free_unpacked(u, NULL);
    buf_free(&out);
}

/* ---- forward_code -------------------------------------------------------------- */

TEST(code_names)
{
    CHECK(strcmp(forward_code("SQLITE_CONSTRAINT_UNIQUE", 2067), "SQLITE_CONSTRAINT") == 0);
    CHECK(strcmp(forward_code("SQLITE_CONSTRAINT_UNIQUE", 0), "SQLITE_CONSTRAINT") == 0);
    CHECK(strcmp(forward_code("SQLITE_IOERR_SHORT_READ", 0), "SQLITE_IOERR") == 0);
    CHECK(strcmp(forward_code("SQLITE_CONSTRAINT_FOREIGNKEY", 787), "SQLITE_CONSTRAINT") == 0);
    CHECK(strcmp(forward_code("SQLITE_AUTH", 0), "SQLITE_AUTH") == 0);
    CHECK(strcmp(forward_code("SQLITE_AUTH", 23), "SQLITE_AUTH") == 0);
    CHECK(strcmp(forward_code("SQLITE_BUSY", 5), "SQLITE_BUSY") == 0);
    CHECK(strcmp(forward_code("TIMEOUT", 0), "TIMEOUT") == 0);
    CHECK(strcmp(forward_code("TRANSACTION_TIMEOUT", 0), "TRANSACTION_TIMEOUT") == 0);
    CHECK(strcmp(forward_code("SQLITE_NOSUCH_THING", 0), "SQLITE_NOSUCH_THING") == 0);
    CHECK(strcmp(forward_code("", 0), "SQLITE_UNKNOWN") == 0);
    CHECK(strcmp(forward_code(NULL, 19), "SQLITE_CONSTRAINT") == 0);
}

/* ---- forward_stmt -------------------------------------------------------------- */

TEST(stmt_values_roundtrip)
{
    struct hrana_value args[5] = {
        {.type = HRANA_VALUE_NULL},
        {.type = HRANA_VALUE_INTEGER, .integer = INT64_MIN},
        {.type = HRANA_VALUE_FLOAT, .real = 2.5},
        {.type = HRANA_VALUE_TEXT, .bytes = "héllo", .len = 6},
        {.type = HRANA_VALUE_BLOB, .bytes = "\0\1\2", .len = 3},
    };
    struct hrana_named_arg named[2] = {
        {.name = ":a", .value = {.type = HRANA_VALUE_INTEGER, .integer = 7}},
        {.name = "b", .value = {.type = HRANA_VALUE_BLOB, .bytes = "", .len = 0}},
    };
    struct hrana_stmt st = {.sql = "SELECT ?",
                            .args = args,
                            .n_args = 5,
                            .named_args = named,
                            .n_named_args = 2,
                            .want_rows = 0};
    Boomerang__V1__Statement *s = forward_stmt("INSERT INTO t VALUES (?)", &st);
    uint8_t packed[256];
    size_t n;
    Boomerang__V1__Statement *u;

    REQUIRE(s);
    CHECK(strcmp(s->sql, "INSERT INTO t VALUES (?)") == 0);
    CHECK(s->skip_rows == 1);
    REQUIRE(boomerang__v1__statement__get_packed_size(s) <= sizeof(packed));
    n = boomerang__v1__statement__pack(s, packed);
    forward_stmt_free(s);
    u = boomerang__v1__statement__unpack(NULL, n, packed);
    REQUIRE(u);
    REQUIRE(u->n_args == 5 && u->n_named_args == 2);
    CHECK(u->args[0]->kind_case == BOOMERANG__V1__VALUE__KIND_NULL);
    CHECK(u->args[1]->kind_case == BOOMERANG__V1__VALUE__KIND_INTEGER);
    CHECK(u->args[1]->integer == INT64_MIN);
    CHECK(u->args[2]->kind_case == BOOMERANG__V1__VALUE__KIND_REAL && u->args[2]->real == 2.5);
    CHECK(u->args[3]->kind_case == BOOMERANG__V1__VALUE__KIND_TEXT);
    CHECK(strcmp(u->args[3]->text, "héllo") == 0);
    CHECK(u->args[4]->kind_case == BOOMERANG__V1__VALUE__KIND_BLOB);
    CHECK(u->args[4]->blob.len == 3 && memcmp(u->args[4]->blob.data, "\0\1\2", 3) == 0);
    CHECK(strcmp(u->named_args[0]->name, ":a") == 0);
    CHECK(u->named_args[0]->value->integer == 7);
    CHECK(strcmp(u->named_args[1]->name, "b") == 0);
    CHECK(u->named_args[1]->value->kind_case == BOOMERANG__V1__VALUE__KIND_BLOB);
    CHECK(u->named_args[1]->value->blob.len == 0);
    boomerang__v1__statement__free_unpacked(u, NULL);
}

/* Hrana text holding a NUL (JSON "\u0000") goes to the primary as
 * text_bytes with its full length; text without one stays a string. */
TEST(stmt_text_with_nul)
{
    static const char body[] =
        "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"SELECT ?, ?, ?, :n\","
        "\"args\":[{\"type\":\"text\",\"value\":\"a\\u0000b\"},{\"type\":\"text\","
        "\"value\":\"\\u0000\"},{\"type\":\"text\",\"value\":\"ab\"}],\"named_args\":[{"
        "\"name\":\"n\",\"value\":{\"type\":\"text\",\"value\":\"x\\u0000\"}}]}}]}";
    struct hrana_pipeline *p;
    Boomerang__V1__Statement *s, *u;
    uint8_t packed[128];
    char errbuf[256];
    size_t n;

    REQUIRE(hrana_pipeline_decode((const uint8_t *)body, strlen(body), 2, &p, errbuf,
                                  sizeof(errbuf)) == 0);
    REQUIRE(p->n_reqs == 1 && p->reqs[0].type == HRANA_REQ_EXECUTE);
    s = forward_stmt(p->reqs[0].stmt.sql, &p->reqs[0].stmt);
    hrana_pipeline_free(p);
    REQUIRE(s && boomerang__v1__statement__get_packed_size(s) <= sizeof(packed));
    n = boomerang__v1__statement__pack(s, packed);
    forward_stmt_free(s);
    u = boomerang__v1__statement__unpack(NULL, n, packed);
    REQUIRE(u && u->n_args == 3 && u->n_named_args == 1);
    REQUIRE(u->args[0]->kind_case == BOOMERANG__V1__VALUE__KIND_TEXT_BYTES);
    CHECK(u->args[0]->text_bytes.len == 3 && memcmp(u->args[0]->text_bytes.data, "a\0b", 3) == 0);
    REQUIRE(u->args[1]->kind_case == BOOMERANG__V1__VALUE__KIND_TEXT_BYTES);
    CHECK(u->args[1]->text_bytes.len == 1 && u->args[1]->text_bytes.data[0] == 0);
    CHECK(u->args[2]->kind_case == BOOMERANG__V1__VALUE__KIND_TEXT);
    CHECK(strcmp(u->args[2]->text, "ab") == 0);
    REQUIRE(u->named_args[0]->value->kind_case == BOOMERANG__V1__VALUE__KIND_TEXT_BYTES);
    CHECK(u->named_args[0]->value->text_bytes.len == 2);
    CHECK(memcmp(u->named_args[0]->value->text_bytes.data, "x\0", 2) == 0);
    boomerang__v1__statement__free_unpacked(u, NULL);
}

TEST(stmt_no_args)
{
    struct hrana_stmt st = {.sql = "SELECT 1", .want_rows = 1};
    Boomerang__V1__Statement *s = forward_stmt(st.sql, &st);

    REQUIRE(s);
    CHECK(strcmp(s->sql, "SELECT 1") == 0);
    CHECK(s->skip_rows == 0);
    CHECK(s->n_args == 0 && s->args == NULL);
    CHECK(s->n_named_args == 0 && s->named_args == NULL);
    forward_stmt_free(s);
    forward_stmt_free(NULL);
}

int main(void)
{
    RUN(result_rows_exact_json);
    RUN(result_without_rows);
    RUN(result_write_with_rowid);
    RUN(result_error_code_mapped);
    RUN(result_skipped);
    RUN(result_malformed_row);
    RUN(result_max_bytes);
    RUN(result_text_with_nul);
    RUN(code_names);
    RUN(stmt_values_roundtrip);
    RUN(stmt_text_with_nul);
    RUN(stmt_no_args);
    return HARNESS_END();
}
