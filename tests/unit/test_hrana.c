/* Tests for proxy/hrana.c: decoding the pipelines @libsql/client 0.18 sends
 * (research/hrana.md §2), every value and condition type, every rejection
 * with its message, condition evaluation, and the exact JSON the writers
 * produce (checked again by parsing it with jansson).
 *
 * JSON literals are written with ' for " (q() swaps them) to stay readable. */
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/hrana.h"
#include "tests/unit/harness.h"

/* ---- helpers --------------------------------------------------------------------- */

static char qbuf[1 << 20];

/* s with every ' turned into " (a static buffer). */
static const char *q(const char *s)
{
    size_t n = strlen(s);

    if (n >= sizeof(qbuf))
        abort();
    for (size_t i = 0; i <= n; i++)
        qbuf[i] = s[i] == '\'' ? '"' : s[i];
    return qbuf;
}

static struct hrana_pipeline *decode_n(const char *json, size_t len, int version)
{
    struct hrana_pipeline *p = NULL;
    char err[512];

    if (hrana_pipeline_decode((const uint8_t *)json, len, version, &p, err, sizeof(err)) != 0) {
        fprintf(stderr, "  decode failed: %s\n", err);
        return NULL;
    }
    return p;
}

/* Decode q(json); NULL (and the reason printed) on failure. */
static struct hrana_pipeline *decode(const char *json, int version)
{
    const char *s = q(json);

    return decode_n(s, strlen(s), version);
}

/* 1 if q(json) fails with exactly msg. */
static int fails_with(const char *json, int version, const char *msg)
{
    struct hrana_pipeline *p = (struct hrana_pipeline *)&p; /* must be set to NULL */
    const char *s = q(json);
    char err[512];
    int rc = hrana_pipeline_decode((const uint8_t *)s, strlen(s), version, &p, err, sizeof(err));

    if (rc == -1 && p == NULL && strcmp(err, msg) == 0)
        return 1;
    fprintf(stderr, "  decoding %s\n    rc=%d err=\"%s\"\n    want \"%s\"\n", s, rc, rc ? err : "",
            msg);
    if (rc == 0)
        hrana_pipeline_free(p);
    return 0;
}

/* The one request of a pipeline {"requests":[REQ]}. */
#define ONE(req)   "{'requests':[" req "]}"
#define EXEC(stmt) ONE("{'type':'execute','stmt':" stmt "}")
#define ARG(val)   EXEC("{'sql':'SELECT ?','args':[" val "]}")
#define STEP0(cond)                                                                                \
    ONE("{'type':'batch','batch':{'steps':[{'condition':" cond ",'stmt':{'sql':'x'}}]}}")
#define STEP3(cond)                                                                                \
    "{'requests':[{'type':'close'},{'type':'batch','batch':{'steps':["                             \
    "{'stmt':{'sql':'a'}},{'stmt':{'sql':'b'}},{'stmt':{'sql':'c'}},"                              \
    "{'condition':" cond ",'stmt':{'sql':'d'}}]}}]}"

/* The single argument of ARG(val), or NULL. */
static struct hrana_pipeline *arg_value(const char *val, const struct hrana_value **v)
{
    char json[4096];
    struct hrana_pipeline *p;

    snprintf(json, sizeof(json), ARG("%s"), val);
    p = decode(json, 2);
    *v = p && p->n_reqs == 1 && p->reqs[0].stmt.n_args == 1 ? &p->reqs[0].stmt.args[0] : NULL;
    return p;
}

static int arg_fails(const char *val, const char *msg)
{
    char json[4096];

    snprintf(json, sizeof(json), ARG("%s"), val);
    return fails_with(json, 2, msg);
}

static int buf_is(const struct buf *b, const char *want)
{
    size_t n = strlen(want);

    if (buf_avail(b) == n && memcmp(buf_head(b), want, n) == 0)
        return 1;
    fprintf(stderr, "  got  %.*s\n  want %s\n", (int)buf_avail(b), (const char *)buf_head(b), want);
    return 0;
}

/* Whether the buffer is one valid JSON document. */
static int buf_parses(const struct buf *b)
{
    json_error_t je;
    json_t *j = json_loadb((const char *)buf_head(b), buf_avail(b), JSON_ALLOW_NUL, &je);

    json_decref(j);
    return j != NULL;
}

/* ---- decoding: the client's pipelines ------------------------------------------- */

TEST(execute_and_close)
{
    struct hrana_pipeline *p = decode(
        "{'baton':null,'requests':[{'type':'execute','stmt':{'sql':'SELECT * FROM t WHERE id = ?',"
        "'args':[{'type':'integer','value':'7'}],'named_args':[],'want_rows':true}},"
        "{'type':'close'}]}",
        2);
    REQUIRE(p != NULL);
    CHECK(p->baton == NULL);
    REQUIRE(p->n_reqs == 2);
    CHECK(p->reqs[0].type == HRANA_REQ_EXECUTE);
    CHECK(strcmp(p->reqs[0].stmt.sql, "SELECT * FROM t WHERE id = ?") == 0);
    CHECK(!p->reqs[0].stmt.has_sql_id);
    CHECK(p->reqs[0].stmt.n_args == 1);
    CHECK(p->reqs[0].stmt.args[0].type == HRANA_VALUE_INTEGER);
    CHECK(p->reqs[0].stmt.args[0].integer == 7);
    CHECK(p->reqs[0].stmt.n_named_args == 0);
    CHECK(p->reqs[0].stmt.want_rows == 1);
    CHECK(p->reqs[1].type == HRANA_REQ_CLOSE);
    hrana_pipeline_free(p);
}

TEST(batch_with_store_sql)
{
    /* client.batch([...], "deferred"): store_sql, batch, close. */
    struct hrana_pipeline *p =
        decode("{'requests':[{'type':'store_sql','sql_id':0,'sql':'INSERT INTO t VALUES (?)'},"
               "{'type':'batch','batch':{'steps':["
               "{'stmt':{'sql':'BEGIN DEFERRED','args':[],'named_args':[],'want_rows':false}},"
               "{'condition':{'type':'ok','step':0},'stmt':{'sql_id':0,'args':[{'type':'float',"
               "'value':1}],'named_args':[],'want_rows':true}},"
               "{'condition':{'type':'ok','step':1},'stmt':{'sql':'COMMIT','want_rows':false}},"
               "{'condition':{'type':'not','cond':{'type':'ok','step':2}},'stmt':{'sql':'ROLLBACK',"
               "'want_rows':false}}]}},{'type':'close'}]}",
               2);
    REQUIRE(p != NULL);
    REQUIRE(p->n_reqs == 3);
    CHECK(p->reqs[0].type == HRANA_REQ_STORE_SQL);
    CHECK(p->reqs[0].has_sql_id && p->reqs[0].sql_id == 0);
    CHECK(strcmp(p->reqs[0].sql, "INSERT INTO t VALUES (?)") == 0);
    const struct hrana_req *b = &p->reqs[1];
    CHECK(b->type == HRANA_REQ_BATCH);
    REQUIRE(b->n_steps == 4);
    CHECK(b->steps[0].cond == NULL);
    CHECK(strcmp(b->steps[0].stmt.sql, "BEGIN DEFERRED") == 0);
    CHECK(b->steps[0].stmt.want_rows == 0);
    REQUIRE(b->steps[1].cond != NULL);
    CHECK(b->steps[1].cond->type == HRANA_COND_OK && b->steps[1].cond->step == 0);
    CHECK(b->steps[1].stmt.sql == NULL && b->steps[1].stmt.has_sql_id);
    CHECK(b->steps[1].stmt.sql_id == 0);
    CHECK(b->steps[1].stmt.args[0].type == HRANA_VALUE_FLOAT);
    CHECK(b->steps[1].stmt.args[0].real == 1.0);
    CHECK(b->steps[2].cond->type == HRANA_COND_OK && b->steps[2].cond->step == 1);
    REQUIRE(b->steps[3].cond != NULL);
    CHECK(b->steps[3].cond->type == HRANA_COND_NOT);
    REQUIRE(b->steps[3].cond->n_conds == 1);
    CHECK(b->steps[3].cond->conds[0].type == HRANA_COND_OK);
    CHECK(b->steps[3].cond->conds[0].step == 2);
    CHECK(p->reqs[2].type == HRANA_REQ_CLOSE);
    hrana_pipeline_free(p);
}

TEST(transaction_follow_up)
{
    /* A later tx.execute on the stream: baton, store_sql, batch without condition. */
    struct hrana_pipeline *p = decode(
        "{'baton':'AAECAwQFBgc','requests':[{'type':'store_sql','sql_id':3,'sql':'SELECT 1'},"
        "{'type':'batch','batch':{'steps':[{'stmt':{'sql_id':3,'args':[],'named_args':[],"
        "'want_rows':true}}]}}]}",
        2);
    REQUIRE(p != NULL);
    CHECK(strcmp(p->baton, "AAECAwQFBgc") == 0);
    CHECK(p->n_reqs == 2);
    CHECK(p->reqs[1].n_steps == 1 && p->reqs[1].steps[0].cond == NULL);
    hrana_pipeline_free(p);
}

TEST(sequence_describe_close_sql)
{
    struct hrana_pipeline *p =
        decode("{'requests':[{'type':'sequence','sql':'CREATE TABLE a(x); CREATE TABLE b(y);'},"
               "{'type':'sequence','sql_id':4},{'type':'describe','sql':'SELECT 1'},"
               "{'type':'describe','sql_id':-2},{'type':'close_sql','sql_id':2147483647},"
               "{'type':'store_sql','sql_id':-2147483648,'sql':''}]}",
               2);
    REQUIRE(p != NULL);
    REQUIRE(p->n_reqs == 6);
    CHECK(p->reqs[0].type == HRANA_REQ_SEQUENCE && !p->reqs[0].has_sql_id);
    CHECK(strcmp(p->reqs[0].sql, "CREATE TABLE a(x); CREATE TABLE b(y);") == 0);
    CHECK(p->reqs[1].type == HRANA_REQ_SEQUENCE && p->reqs[1].has_sql_id);
    CHECK(p->reqs[1].sql == NULL && p->reqs[1].sql_id == 4);
    CHECK(p->reqs[2].type == HRANA_REQ_DESCRIBE && strcmp(p->reqs[2].sql, "SELECT 1") == 0);
    CHECK(p->reqs[3].type == HRANA_REQ_DESCRIBE && p->reqs[3].sql_id == -2);
    CHECK(p->reqs[4].type == HRANA_REQ_CLOSE_SQL && p->reqs[4].has_sql_id);
    CHECK(p->reqs[4].sql_id == INT32_MAX);
    CHECK(p->reqs[5].type == HRANA_REQ_STORE_SQL && p->reqs[5].sql_id == INT32_MIN);
    CHECK(strcmp(p->reqs[5].sql, "") == 0);
    hrana_pipeline_free(p);
}

TEST(hrana3_features)
{
    struct hrana_pipeline *p =
        decode("{'requests':[{'type':'get_autocommit'},{'type':'batch','batch':{'steps':["
               "{'stmt':{'sql':'a'}},{'condition':{'type':'and','conds':[{'type':'ok','step':0},"
               "{'type':'not','cond':{'type':'is_autocommit'}}]},'stmt':{'sql':'b'}}]}}]}",
               3);
    REQUIRE(p != NULL);
    CHECK(p->reqs[0].type == HRANA_REQ_GET_AUTOCOMMIT);
    const struct hrana_cond *c = p->reqs[1].steps[1].cond;
    REQUIRE(c != NULL && c->type == HRANA_COND_AND && c->n_conds == 2);
    CHECK(c->conds[1].type == HRANA_COND_NOT);
    CHECK(c->conds[1].conds[0].type == HRANA_COND_IS_AUTOCOMMIT);
    hrana_pipeline_free(p);
    CHECK(fails_with(ONE("{'type':'get_autocommit'}"), 2,
                     "requests[0]: get_autocommit needs Hrana 3 (/v3/pipeline)"));
    CHECK(fails_with(STEP3("{'type':'is_autocommit'}"), 2,
                     "requests[1].batch.steps[3].condition: is_autocommit needs Hrana 3 "
                     "(/v3/pipeline)"));
}

TEST(empty_things)
{
    struct hrana_pipeline *p = decode("{'requests':[]}", 2);
    REQUIRE(p != NULL);
    CHECK(p->n_reqs == 0 && p->baton == NULL);
    hrana_pipeline_free(p);
    p = decode(ONE("{'type':'batch','batch':{'steps':[]}}"), 2);
    REQUIRE(p != NULL);
    CHECK(p->reqs[0].n_steps == 0);
    hrana_pipeline_free(p);
    /* Empty args, and arrays given as null, are no args. */
    p = decode(EXEC("{'sql':'x','args':null,'named_args':null,'want_rows':null}"), 2);
    REQUIRE(p != NULL);
    CHECK(p->reqs[0].stmt.n_args == 0 && p->reqs[0].stmt.n_named_args == 0);
    CHECK(p->reqs[0].stmt.want_rows == 1);
    hrana_pipeline_free(p);
}

TEST(want_rows)
{
    struct hrana_pipeline *p =
        decode("{'requests':[{'type':'execute','stmt':{'sql':'a'}},{'type':'execute','stmt':"
               "{'sql':'a','want_rows':false}},{'type':'execute','stmt':{'sql':'a','want_rows':"
               "true}}]}",
               2);
    REQUIRE(p != NULL);
    CHECK(p->reqs[0].stmt.want_rows == 1);
    CHECK(p->reqs[1].stmt.want_rows == 0);
    CHECK(p->reqs[2].stmt.want_rows == 1);
    hrana_pipeline_free(p);
}

TEST(unknown_fields_and_replication_index)
{
    struct hrana_pipeline *p = decode(
        "{'replication_index':'12','x':[1,{}],'requests':[{'type':'execute','replication_index':5,"
        "'stmt':{'sql':'a','replication_index':'9','extra':{'deep':[1,2]},'args':[{'type':'null',"
        "'value':'ignored','replication_index':1}]}},{'type':'close','stuff':true}],"
        "'base_url':null}",
        2);
    REQUIRE(p != NULL);
    CHECK(p->n_reqs == 2);
    CHECK(p->reqs[0].stmt.args[0].type == HRANA_VALUE_NULL);
    hrana_pipeline_free(p);
}

TEST(named_args)
{
    struct hrana_pipeline *p = decode(
        EXEC("{'sql':'SELECT :id, @b, $c','named_args':[{'name':'id','value':{'type':'integer',"
             "'value':'1'}},{'name':'@b','value':{'type':'text','value':'two'}},{'name':'$c',"
             "'value':{'type':'null'}}]}"),
        2);
    REQUIRE(p != NULL);
    const struct hrana_stmt *st = &p->reqs[0].stmt;
    REQUIRE(st->n_named_args == 3);
    CHECK(strcmp(st->named_args[0].name, "id") == 0);
    CHECK(st->named_args[0].value.type == HRANA_VALUE_INTEGER);
    CHECK(st->named_args[0].value.integer == 1);
    CHECK(strcmp(st->named_args[1].name, "@b") == 0);
    CHECK(st->named_args[1].value.type == HRANA_VALUE_TEXT);
    CHECK(st->named_args[1].value.len == 3 && memcmp(st->named_args[1].value.bytes, "two", 3) == 0);
    CHECK(strcmp(st->named_args[2].name, "$c") == 0);
    CHECK(st->named_args[2].value.type == HRANA_VALUE_NULL);
    hrana_pipeline_free(p);
}

/* ---- decoding: values ------------------------------------------------------------ */

static int int_value_is(const char *val, int64_t want)
{
    const struct hrana_value *v;
    struct hrana_pipeline *p = arg_value(val, &v);
    int ok = v != NULL && v->type == HRANA_VALUE_INTEGER && v->integer == want;

    if (!ok)
        fprintf(stderr, "  integer %s: want %" PRId64 "\n", val, want);
    hrana_pipeline_free(p);
    return ok;
}

static int float_value_is(const char *val, double want)
{
    const struct hrana_value *v;
    struct hrana_pipeline *p = arg_value(val, &v);
    int ok = v != NULL && v->type == HRANA_VALUE_FLOAT && v->real == want;

    if (!ok)
        fprintf(stderr, "  float %s: want %.17g\n", val, want);
    hrana_pipeline_free(p);
    return ok;
}

/* The BLOB or TEXT bytes of the value match want[0..n). */
static int bytes_value_is(const char *val, enum hrana_value_type type, const void *want, size_t n)
{
    const struct hrana_value *v;
    struct hrana_pipeline *p = arg_value(val, &v);
    int ok = v != NULL && v->type == type && v->len == n && memcmp(v->bytes, want, n) == 0;

    if (!ok)
        fprintf(stderr, "  bytes %s: mismatch\n", val);
    hrana_pipeline_free(p);
    return ok;
}

TEST(value_integer)
{
    CHECK(int_value_is("{'type':'integer','value':'0'}", 0));
    CHECK(int_value_is("{'type':'integer','value':'-0'}", 0));
    CHECK(int_value_is("{'type':'integer','value':'-5'}", -5));
    CHECK(int_value_is("{'type':'integer','value':'007'}", 7));
    CHECK(int_value_is("{'type':'integer','value':'9223372036854775807'}", INT64_MAX));
    CHECK(int_value_is("{'type':'integer','value':'-9223372036854775808'}", INT64_MIN));
    /* Robustness: a JSON number is accepted too. */
    CHECK(int_value_is("{'type':'integer','value':42}", 42));
    CHECK(int_value_is("{'type':'integer','value':-9223372036854775808}", INT64_MIN));
    CHECK(int_value_is("{'type':'integer','value':3.0}", 3));
}

TEST(value_integer_rejected)
{
    const char *bad[] = {"''",    "'-'", "'+1'", "' 1'", "'1 '", "'1.0'", "'1e3'", "'0x10'",
                         "'12a'", "1.5", "true", "{}",   "[]",   "1e19",  "-1e19"};
    const char *range[] = {"'9223372036854775808'", "'-9223372036854775809'",
                           "'99999999999999999999999'", "'18446744073709551616'"};

    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        char val[64];
        snprintf(val, sizeof(val), "{'type':'integer','value':%s}", bad[i]);
        CHECK(arg_fails(val, "requests[0].stmt.args[0].value: expected a decimal int64 string"));
    }
    for (size_t i = 0; i < ARRAY_LEN(range); i++) {
        char val[64];
        snprintf(val, sizeof(val), "{'type':'integer','value':%s}", range[i]);
        CHECK(arg_fails(val, "requests[0].stmt.args[0].value: integer out of the int64 range"));
    }
    CHECK(arg_fails("{'type':'integer'}", "requests[0].stmt.args[0].value: missing"));
    CHECK(arg_fails("{'type':'integer','value':null}", "requests[0].stmt.args[0].value: missing"));
}

TEST(value_float)
{
    CHECK(float_value_is("{'type':'float','value':1.5}", 1.5));
    CHECK(float_value_is("{'type':'float','value':0}", 0.0));
    CHECK(float_value_is("{'type':'float','value':-3}", -3.0));
    CHECK(float_value_is("{'type':'float','value':1e300}", 1e300));
    CHECK(float_value_is("{'type':'float','value':1734567890123}", 1734567890123.0));
    CHECK(float_value_is("{'type':'float','value':0.1}", 0.1));
    /* JSON.stringify writes 1e20 without an exponent: beyond int64 for jansson. */
    CHECK(float_value_is("{'type':'float','value':100000000000000000000}", 1e20));
    CHECK(
        float_value_is("{'type':'float','value':-18446744073709551616}", -18446744073709551616.0));
    CHECK(arg_fails("{'type':'float','value':'1.5'}",
                    "requests[0].stmt.args[0].value: expected a number"));
    CHECK(arg_fails("{'type':'float'}", "requests[0].stmt.args[0].value: expected a number"));
    CHECK(arg_fails("{'type':'float','value':true}",
                    "requests[0].stmt.args[0].value: expected a number"));
}

TEST(value_float_with_huge_integer_elsewhere)
{
    /* In the retry every number is a double: the int64 string path and
     * whole doubles still work, and an integer too big for int64 still fails. */
    struct hrana_pipeline *p =
        decode(ARG("{'type':'float','value':99999999999999999999},{'type':'integer','value':'-12'},"
                   "{'type':'integer','value':4096}"),
               2);
    REQUIRE(p != NULL);
    REQUIRE(p->reqs[0].stmt.n_args == 3);
    CHECK(p->reqs[0].stmt.args[0].real == 1e20);
    CHECK(p->reqs[0].stmt.args[1].integer == -12);
    CHECK(p->reqs[0].stmt.args[2].integer == 4096);
    hrana_pipeline_free(p);
    CHECK(arg_fails("{'type':'integer','value':99999999999999999999}",
                    "requests[0].stmt.args[0].value: expected a decimal int64 string"));
    p = decode("{'requests':[{'type':'close_sql','sql_id':7}],'replication_index':"
               "99999999999999999999}",
               2);
    REQUIRE(p != NULL);
    CHECK(p->reqs[0].sql_id == 7);
    hrana_pipeline_free(p);
}

TEST(value_text)
{
    CHECK(bytes_value_is("{'type':'text','value':'hello'}", HRANA_VALUE_TEXT, "hello", 5));
    CHECK(bytes_value_is("{'type':'text','value':''}", HRANA_VALUE_TEXT, "", 0));
    CHECK(bytes_value_is("{'type':'text','value':'a\\u0000b'}", HRANA_VALUE_TEXT, "a\0b", 3));
    CHECK(bytes_value_is("{'type':'text','value':'\\u00e9\\ud83d\\ude00\\n\\''}", HRANA_VALUE_TEXT,
                         "\xc3\xa9\xf0\x9f\x98\x80\n\"", 8));
    /* NUL-terminated as well. */
    const struct hrana_value *v;
    struct hrana_pipeline *p = arg_value("{'type':'text','value':'abc'}", &v);
    REQUIRE(v != NULL);
    CHECK(v->bytes[3] == '\0');
    hrana_pipeline_free(p);
    CHECK(arg_fails("{'type':'text'}", "requests[0].stmt.args[0].value: missing"));
    CHECK(arg_fails("{'type':'text','value':5}",
                    "requests[0].stmt.args[0].value: expected a string"));
}

TEST(value_blob)
{
    const unsigned char b123[] = {1, 2, 3}, all[] = {0xfb, 0xff};

    CHECK(bytes_value_is("{'type':'blob','base64':'AQID'}", HRANA_VALUE_BLOB, b123, 3));
    CHECK(bytes_value_is("{'type':'blob','base64':'AQI='}", HRANA_VALUE_BLOB, b123, 2));
    CHECK(bytes_value_is("{'type':'blob','base64':'AQI'}", HRANA_VALUE_BLOB, b123, 2));
    CHECK(bytes_value_is("{'type':'blob','base64':'AQ=='}", HRANA_VALUE_BLOB, b123, 1));
    CHECK(bytes_value_is("{'type':'blob','base64':'AQ'}", HRANA_VALUE_BLOB, b123, 1));
    CHECK(bytes_value_is("{'type':'blob','base64':''}", HRANA_VALUE_BLOB, "", 0));
    CHECK(bytes_value_is("{'type':'blob','base64':'+/8='}", HRANA_VALUE_BLOB, all, 2));
    CHECK(bytes_value_is("{'type':'blob','base64':'-_8'}", HRANA_VALUE_BLOB, all, 2));
    CHECK(
        bytes_value_is("{'type':'blob','base64':'AAECAwQF'}", HRANA_VALUE_BLOB, "\0\1\2\3\4\5", 6));
    const char *bad[] = {"A",     "AQ*D",     "AQ=",     "AQ=D",  "A===",      "====",
                         "AQID=", "AQ==AQ==", "AQ\\nID", "AQ ID", "\\u00e9AAA"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        char val[64];
        snprintf(val, sizeof(val), "{'type':'blob','base64':'%s'}", bad[i]);
        CHECK(arg_fails(val, "requests[0].stmt.args[0].base64: invalid base64"));
    }
    CHECK(arg_fails("{'type':'blob'}", "requests[0].stmt.args[0].base64: missing"));
    CHECK(arg_fails("{'type':'blob','value':'AQID'}", "requests[0].stmt.args[0].base64: missing"));
    CHECK(arg_fails("{'type':'blob','base64':[]}",
                    "requests[0].stmt.args[0].base64: expected a string"));
}

TEST(value_blob_every_byte)
{
    /* All 256 byte values, through our writer and back through the decoder. */
    unsigned char data[256];
    struct buf b = {0}, json = {0};

    for (int i = 0; i < 256; i++)
        data[i] = (unsigned char)i;
    for (size_t n = 250; n <= 256; n++) {
        buf_reset(&b);
        hrana_json_blob(&b, data, n);
        buf_reset(&json);
        const char *head =
            "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"x\",\"args\":[";
        buf_append(&json, head, strlen(head));
        buf_append(&json, buf_head(&b), buf_avail(&b));
        buf_append(&json, "]}}]}", 5);
        struct hrana_pipeline *p = decode_n((const char *)buf_head(&json), buf_avail(&json), 2);
        REQUIRE(p != NULL);
        const struct hrana_value *v = &p->reqs[0].stmt.args[0];
        CHECK(v->type == HRANA_VALUE_BLOB && v->len == n && memcmp(v->bytes, data, n) == 0);
        hrana_pipeline_free(p);
    }
    buf_free(&b);
    buf_free(&json);
}

TEST(value_rejected)
{
    CHECK(arg_fails("5", "requests[0].stmt.args[0]: expected a value object"));
    CHECK(arg_fails("{}", "requests[0].stmt.args[0].type: expected a string"));
    CHECK(arg_fails("{'type':1}", "requests[0].stmt.args[0].type: expected a string"));
    CHECK(arg_fails("{'type':'bigint','value':'1'}",
                    "requests[0].stmt.args[0]: unknown value type \"bigint\""));
    CHECK(arg_fails("{'type':'null\\u0000x'}",
                    "requests[0].stmt.args[0]: unknown value type \"null\""));
    CHECK(arg_fails("{'type':'null'},{'type':'integer','value':'x'}",
                    "requests[0].stmt.args[1].value: expected a decimal int64 string"));
}

/* ---- decoding: rejections -------------------------------------------------------- */

static int starts_with_invalid_json(const char *body)
{
    struct hrana_pipeline *p = NULL;
    char err[512];
    int rc = hrana_pipeline_decode((const uint8_t *)body, strlen(body), 2, &p, err, sizeof(err));

    if (rc == -1 && p == NULL && strncmp(err, "invalid JSON: ", 14) == 0)
        return 1;
    fprintf(stderr, "  %s: rc=%d err=%s\n", body, rc, rc ? err : "");
    hrana_pipeline_free(p);
    return 0;
}

TEST(pipeline_rejected)
{
    CHECK(starts_with_invalid_json(""));
    CHECK(starts_with_invalid_json("{"));
    CHECK(starts_with_invalid_json("{\"requests\":[]} x"));
    CHECK(starts_with_invalid_json("{\"requests\":[]}{}"));
    CHECK(starts_with_invalid_json("{\"requests\":[],}"));
    CHECK(starts_with_invalid_json("{\"requests\":[\"\xff\"]}"));
    CHECK(starts_with_invalid_json("{\"a\\u0000\":1,\"requests\":[]}"));
    CHECK(starts_with_invalid_json("{\"x\":1e999,\"requests\":[]}"));
    CHECK(fails_with("[]", 2, "the body is not a JSON object"));
    CHECK(starts_with_invalid_json("\"requests\""));
    CHECK(starts_with_invalid_json("null"));
    CHECK(fails_with("{'baton':5,'requests':[]}", 2, "baton: expected a string"));
    CHECK(fails_with("{'baton':'a\\u0000b','requests':[]}", 2, "baton: contains a NUL character"));
    CHECK(fails_with("{}", 2, "requests: missing"));
    CHECK(fails_with("{'requests':null}", 2, "requests: missing"));
    CHECK(fails_with("{'requests':{}}", 2, "requests: expected an array"));
    CHECK(fails_with("{'requests':[5]}", 2, "requests[0]: expected an object"));
    CHECK(fails_with("{'requests':[{}]}", 2, "requests[0].type: expected a string"));
    CHECK(fails_with("{'requests':[{'type':'close'},{'type':'foo'}]}", 2,
                     "requests[1]: unknown request type \"foo\""));
    CHECK(fails_with("{'requests':[{'type':'Execute'}]}", 2,
                     "requests[0]: unknown request type \"Execute\""));
}

TEST(too_many)
{
    static char big[400000];
    size_t n = 0;

    n += (size_t)sprintf(big + n, "{\"requests\":[");
    for (int i = 0; i <= HRANA_MAX_REQUESTS; i++)
        n += (size_t)sprintf(big + n, "%s{\"type\":\"close\"}", i ? "," : "");
    sprintf(big + n, "]}");
    CHECK(fails_with(big, 2, "requests: too many elements (1025, at most 1024)"));

    n = (size_t)sprintf(big, "{\"requests\":[{\"type\":\"batch\",\"batch\":{\"steps\":[");
    for (int i = 0; i <= HRANA_MAX_STEPS; i++)
        n += (size_t)sprintf(big + n, "%s{\"stmt\":{\"sql\":\"\"}}", i ? "," : "");
    sprintf(big + n, "]}}]}");
    CHECK(fails_with(big, 2, "requests[0].batch.steps: too many elements (4097, at most 4096)"));

    n = (size_t)sprintf(big,
                        "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"\",\"args\":[");
    for (int i = 0; i <= HRANA_MAX_ARGS; i++)
        n += (size_t)sprintf(big + n, "%s{}", i ? "," : "");
    sprintf(big + n, "]}}]}");
    CHECK(fails_with(big, 2, "requests[0].stmt.args: too many elements (32767, at most 32766)"));
    n = (size_t)sprintf(big, "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"\","
                             "\"named_args\":[");
    for (int i = 0; i <= HRANA_MAX_ARGS; i++)
        n += (size_t)sprintf(big + n, "%s{}", i ? "," : "");
    sprintf(big + n, "]}}]}");
    CHECK(fails_with(big, 2,
                     "requests[0].stmt.named_args: too many elements (32767, at most 32766)"));
}

TEST(stmt_rejected)
{
    CHECK(fails_with(ONE("{'type':'execute'}"), 2, "requests[0].stmt: missing"));
    CHECK(fails_with(EXEC("'SELECT 1'"), 2, "requests[0].stmt: expected an object"));
    CHECK(fails_with(EXEC("{'sql':'a','sql_id':1}"), 2,
                     "requests[0].stmt: sql and sql_id are both given"));
    CHECK(fails_with(EXEC("{'args':[]}"), 2, "requests[0].stmt: neither sql nor sql_id is given"));
    CHECK(fails_with(EXEC("{'sql':null,'sql_id':null}"), 2,
                     "requests[0].stmt: neither sql nor sql_id is given"));
    CHECK(fails_with(EXEC("{'sql':5}"), 2, "requests[0].stmt.sql: expected a string"));
    CHECK(fails_with(EXEC("{'sql':'SELECT 1\\u0000; DROP TABLE t'}"), 2,
                     "requests[0].stmt.sql: contains a NUL character"));
    CHECK(fails_with(EXEC("{'sql_id':'1'}"), 2,
                     "requests[0].stmt.sql_id: expected a 32-bit integer"));
    CHECK(fails_with(EXEC("{'sql_id':2147483648}"), 2,
                     "requests[0].stmt.sql_id: expected a 32-bit integer"));
    CHECK(fails_with(EXEC("{'sql_id':-2147483649}"), 2,
                     "requests[0].stmt.sql_id: expected a 32-bit integer"));
    CHECK(fails_with(EXEC("{'sql_id':1.5}"), 2,
                     "requests[0].stmt.sql_id: expected a 32-bit integer"));
    CHECK(fails_with(EXEC("{'sql':'a','args':{}}"), 2, "requests[0].stmt.args: expected an array"));
    CHECK(fails_with(EXEC("{'sql':'a','named_args':'x'}"), 2,
                     "requests[0].stmt.named_args: expected an array"));
    CHECK(fails_with(EXEC("{'sql':'a','named_args':[5]}"), 2,
                     "requests[0].stmt.named_args[0]: expected an object"));
    CHECK(fails_with(EXEC("{'sql':'a','named_args':[{'value':{'type':'null'}}]}"), 2,
                     "requests[0].stmt.named_args[0].name: missing"));
    CHECK(fails_with(EXEC("{'sql':'a','named_args':[{'name':1,'value':{'type':'null'}}]}"), 2,
                     "requests[0].stmt.named_args[0].name: expected a string"));
    CHECK(fails_with(EXEC("{'sql':'a','named_args':[{'name':'a\\u0000','value':{}}]}"), 2,
                     "requests[0].stmt.named_args[0].name: contains a NUL character"));
    CHECK(fails_with(EXEC("{'sql':'a','named_args':[{'name':'a','value':{'type':'null'}},"
                          "{'name':'b'}]}"),
                     2, "requests[0].stmt.named_args[1].value: missing"));
    CHECK(fails_with(EXEC("{'sql':'a','named_args':[{'name':'b','value':{'type':'integer',"
                          "'value':'1x'}}]}"),
                     2,
                     "requests[0].stmt.named_args[0].value.value: expected a decimal int64 "
                     "string"));
    CHECK(fails_with(EXEC("{'sql':'a','named_args':[{'name':'b','value':{'type':'date'}}]}"), 2,
                     "requests[0].stmt.named_args[0].value: unknown value type \"date\""));
    CHECK(fails_with(EXEC("{'sql':'a','want_rows':'yes'}"), 2,
                     "requests[0].stmt.want_rows: expected a boolean"));
    CHECK(fails_with(EXEC("{'sql':'a','want_rows':1}"), 2,
                     "requests[0].stmt.want_rows: expected a boolean"));
}

TEST(requests_rejected)
{
    CHECK(fails_with(ONE("{'type':'sequence','sql':'a','sql_id':1}"), 2,
                     "requests[0]: sql and sql_id are both given"));
    CHECK(
        fails_with(ONE("{'type':'sequence'}"), 2, "requests[0]: neither sql nor sql_id is given"));
    CHECK(
        fails_with(ONE("{'type':'describe'}"), 2, "requests[0]: neither sql nor sql_id is given"));
    CHECK(fails_with(ONE("{'type':'describe','sql':'a','sql_id':0}"), 2,
                     "requests[0]: sql and sql_id are both given"));
    CHECK(fails_with(ONE("{'type':'sequence','sql':['a']}"), 2,
                     "requests[0].sql: expected a string"));
    CHECK(fails_with(ONE("{'type':'store_sql','sql':'a'}"), 2, "requests[0].sql_id: missing"));
    CHECK(fails_with(ONE("{'type':'store_sql','sql_id':1}"), 2, "requests[0].sql: missing"));
    CHECK(fails_with(ONE("{'type':'store_sql','sql_id':1,'sql':'a\\u0000'}"), 2,
                     "requests[0].sql: contains a NUL character"));
    CHECK(fails_with(ONE("{'type':'store_sql','sql_id':true,'sql':'a'}"), 2,
                     "requests[0].sql_id: expected a 32-bit integer"));
    CHECK(fails_with(ONE("{'type':'close_sql'}"), 2, "requests[0].sql_id: missing"));
    CHECK(fails_with(ONE("{'type':'close_sql','sql_id':'0'}"), 2,
                     "requests[0].sql_id: expected a 32-bit integer"));
    CHECK(fails_with(ONE("{'type':'batch'}"), 2, "requests[0].batch: missing"));
    CHECK(
        fails_with(ONE("{'type':'batch','batch':[]}"), 2, "requests[0].batch: expected an object"));
    CHECK(fails_with(ONE("{'type':'batch','batch':{}}"), 2, "requests[0].batch.steps: missing"));
    CHECK(fails_with(ONE("{'type':'batch','batch':{'steps':{}}}"), 2,
                     "requests[0].batch.steps: expected an array"));
    CHECK(fails_with(ONE("{'type':'batch','batch':{'steps':[1]}}"), 2,
                     "requests[0].batch.steps[0]: expected an object"));
    CHECK(fails_with(ONE("{'type':'batch','batch':{'steps':[{'stmt':{'sql':'a'}},{}]}}"), 2,
                     "requests[0].batch.steps[1].stmt: missing"));
    CHECK(fails_with(ONE("{'type':'batch','batch':{'steps':[{'stmt':{'sql':'a','args':[{}]}}]}}"),
                     2, "requests[0].batch.steps[0].stmt.args[0].type: expected a string"));
}

/* ---- conditions ------------------------------------------------------------------ */

TEST(conditions_rejected)
{
    const char *at = "requests[1].batch.steps[3].condition";
    char want[256];

#define COND_FAILS(cond, suffix)                                                                   \
    do {                                                                                           \
        snprintf(want, sizeof(want), "%s%s", at, suffix);                                          \
        CHECK(fails_with(STEP3(cond), 2, want));                                                   \
    } while (0)
    COND_FAILS("{'type':'ok','step':3}", ": step 3 is not before this step");
    COND_FAILS("{'type':'error','step':4}", ": step 4 is not before this step");
    COND_FAILS("{'type':'ok','step':4294967295}", ": step 4294967295 is not before this step");
    COND_FAILS("{'type':'ok','step':4294967296}", ".step: expected a step index");
    COND_FAILS("{'type':'ok','step':-1}", ".step: expected a step index");
    COND_FAILS("{'type':'ok','step':'0'}", ".step: expected a step index");
    COND_FAILS("{'type':'ok','step':0.5}", ".step: expected a step index");
    COND_FAILS("{'type':'ok'}", ".step: missing");
    COND_FAILS("5", ": expected a condition object");
    COND_FAILS("{}", ".type: expected a string");
    COND_FAILS("{'type':'xor','conds':[]}", ": unknown condition type \"xor\"");
    COND_FAILS("{'type':'not'}", ".cond: missing");
    COND_FAILS("{'type':'not','cond':{'type':'ok','step':3}}",
               ".cond: step 3 is not before this step");
    COND_FAILS("{'type':'and'}", ".conds: missing");
    COND_FAILS("{'type':'or','conds':{}}", ".conds: expected an array");
    COND_FAILS("{'type':'and','conds':[{'type':'ok','step':0},{'type':'not','cond':"
               "{'type':'error','step':5}}]}",
               ".conds[1].cond: step 5 is not before this step");
    COND_FAILS("{'type':'or','conds':[{'type':'ok','step':0},7]}",
               ".conds[1]: expected a condition object");
#undef COND_FAILS
    CHECK(fails_with(STEP0("{'type':'ok','step':0}"), 2,
                     "requests[0].batch.steps[0].condition: step 0 is not before this step"));
    /* An empty `and` refers to no step: fine even on step 0. */
    struct hrana_pipeline *p = decode(STEP0("{'type':'and','conds':[]}"), 2);
    CHECK(p != NULL);
    hrana_pipeline_free(p);
}

/* A condition nested `depth` levels deep: not(not(...(ok 0))). */
static void nested(char *out, size_t cap, int depth)
{
    size_t n = 0;

    for (int i = 1; i < depth; i++)
        n += (size_t)snprintf(out + n, cap - n, "{'type':'not','cond':");
    n += (size_t)snprintf(out + n, cap - n, "{'type':'ok','step':0}");
    for (int i = 1; i < depth; i++)
        n += (size_t)snprintf(out + n, cap - n, "}");
}

TEST(condition_depth)
{
    char cond[4096], json[8192];

    nested(cond, sizeof(cond), HRANA_MAX_DEPTH);
    snprintf(json, sizeof(json), STEP3("%s"), cond);
    struct hrana_pipeline *p = decode(json, 2);
    REQUIRE(p != NULL);
    hrana_pipeline_free(p);

    nested(cond, sizeof(cond), HRANA_MAX_DEPTH + 1);
    snprintf(json, sizeof(json), STEP3("%s"), cond);
    char want[2048] = "requests[1].batch.steps[3].condition";
    for (int i = 0; i < HRANA_MAX_DEPTH; i++)
        strcat(want, ".cond");
    strcat(want, ": conditions nested more than 32 deep");
    CHECK(fails_with(json, 2, want));
}

TEST(condition_eval)
{
    struct hrana_pipeline *p =
        decode(STEP3("{'type':'or','conds':[{'type':'and','conds':[{'type':'ok','step':0},"
                     "{'type':'error','step':1}]},{'type':'and','conds':[{'type':'not','cond':"
                     "{'type':'ok','step':2}},{'type':'is_autocommit'}]}]}"),
               3);
    REQUIRE(p != NULL);
    const struct hrana_cond *c = p->reqs[1].steps[3].cond;
    /* step 0 ok, step 1 failed, step 2 ok */
    const uint8_t ran1[] = {1, 1, 1}, failed1[] = {0, 1, 0};
    CHECK(hrana_cond_eval(c, ran1, failed1, 0) == 1);
    /* step 0 ok, step 1 ok, step 2 ok: first arm false; second needs !ok(2) */
    const uint8_t failed2[] = {0, 0, 0};
    CHECK(hrana_cond_eval(c, ran1, failed2, 1) == 0);
    /* step 2 skipped: not(ok(2)) true; autocommit decides */
    const uint8_t ran3[] = {1, 1, 0};
    CHECK(hrana_cond_eval(c, ran3, failed2, 1) == 1);
    CHECK(hrana_cond_eval(c, ran3, failed2, 0) == 0);
    /* step 1 skipped: error(1) is false for a skipped step */
    const uint8_t ran4[] = {1, 0, 1};
    CHECK(hrana_cond_eval(c, ran4, failed2, 0) == 0);
    hrana_pipeline_free(p);

    struct hrana_cond ok0 = {.type = HRANA_COND_OK, .step = 0};
    struct hrana_cond err0 = {.type = HRANA_COND_ERROR, .step = 0};
    struct hrana_cond empty_and = {.type = HRANA_COND_AND};
    struct hrana_cond empty_or = {.type = HRANA_COND_OR};
    struct hrana_cond not_ok = {.type = HRANA_COND_NOT, .conds = &ok0, .n_conds = 1};
    const uint8_t yes[] = {1}, no[] = {0};
    CHECK(hrana_cond_eval(NULL, yes, no, 0) == 1);
    CHECK(hrana_cond_eval(&ok0, yes, no, 0) == 1);
    CHECK(hrana_cond_eval(&ok0, yes, yes, 0) == 0);
    CHECK(hrana_cond_eval(&ok0, no, no, 0) == 0);
    CHECK(hrana_cond_eval(&err0, yes, yes, 0) == 1);
    CHECK(hrana_cond_eval(&err0, yes, no, 0) == 0);
    CHECK(hrana_cond_eval(&err0, no, no, 0) == 0);
    CHECK(hrana_cond_eval(&not_ok, no, no, 0) == 1);
    CHECK(hrana_cond_eval(&not_ok, yes, no, 0) == 0);
    CHECK(hrana_cond_eval(&empty_and, no, no, 0) == 1);
    CHECK(hrana_cond_eval(&empty_or, no, no, 0) == 0);
}

/* ---- error buffers --------------------------------------------------------------- */

TEST(error_buffer_sizes)
{
    const char *body = "{\"requests\":[{\"type\":\"foo\"}]}";
    struct hrana_pipeline *p = NULL;
    char err[16];

    CHECK(hrana_pipeline_decode((const uint8_t *)body, strlen(body), 2, &p, NULL, 0) == -1);
    CHECK(p == NULL);
    memset(err, 'x', sizeof(err));
    CHECK(hrana_pipeline_decode((const uint8_t *)body, strlen(body), 2, &p, err, sizeof(err)) ==
          -1);
    CHECK(memchr(err, '\0', sizeof(err)) != NULL);
    CHECK(strncmp(err, "requests[0]: ", 13) == 0);
    memset(err, 'x', sizeof(err));
    CHECK(hrana_pipeline_decode((const uint8_t *)body, strlen(body), 2, &p, err, 5) == -1);
    CHECK(strcmp(err, "requ") == 0);
    CHECK(hrana_pipeline_decode(NULL, 0, 2, &p, err, sizeof(err)) == -1);
    CHECK(p == NULL);
    hrana_pipeline_free(NULL);
}

/* ---- robustness ------------------------------------------------------------------ */

static const char *const client_bodies[] = {
    "{'requests':[{'type':'execute','stmt':{'sql':'SELECT ?, :a','args':[{'type':'integer',"
    "'value':'-9223372036854775808'},{'type':'float','value':2.5},{'type':'text','value':"
    "'\\u0000\\u00e9'},{'type':'blob','base64':'AQID'},{'type':'null'}],'named_args':[{'name':"
    "'a','value':{'type':'blob','base64':'AQ'}}],'want_rows':true}},{'type':'close'}]}",
    "{'baton':'b1','requests':[{'type':'store_sql','sql_id':0,'sql':'SELECT 1'},{'type':'batch',"
    "'batch':{'steps':[{'stmt':{'sql':'BEGIN IMMEDIATE','want_rows':false}},{'condition':{'type':"
    "'ok','step':0},'stmt':{'sql_id':0}},{'condition':{'type':'not','cond':{'type':'ok','step':1}},"
    "'stmt':{'sql':'ROLLBACK'}}]}},{'type':'sequence','sql':'a;b'},{'type':'close_sql','sql_id':0}"
    ",{'type':'describe','sql_id':0}]}",
};

TEST(truncated_prefixes_fail)
{
    for (size_t k = 0; k < ARRAY_LEN(client_bodies); k++) {
        char *body = strdup(q(client_bodies[k]));
        size_t len = strlen(body);
        struct hrana_pipeline *p = decode_n(body, len, 2);
        CHECK(p != NULL);
        hrana_pipeline_free(p);
        for (size_t n = 0; n < len; n++) {
            char err[512];
            char *copy = malloc(n ? n : 1); /* exact size: ASan sees any overread */
            memcpy(copy, body, n);
            p = (struct hrana_pipeline *)&p;
            int rc = hrana_pipeline_decode((const uint8_t *)copy, n, 2, &p, err, sizeof(err));
            CHECK(rc == -1 && p == NULL && err[0] != '\0');
            if (rc == 0)
                hrana_pipeline_free(p);
            free(copy);
        }
        free(body);
    }
}

TEST(mutations_do_not_crash)
{
    /* Every byte replaced by each of a few interesting bytes: decode either
     * fails with a message or succeeds (and then frees cleanly). */
    const char subst[] = {'"', '{', '}', '[', ']', ',', ':', '0', '-', 'x', '\\', ' ', '\0'};

    for (size_t k = 0; k < ARRAY_LEN(client_bodies); k++) {
        char *body = strdup(q(client_bodies[k]));
        size_t len = strlen(body);
        for (size_t i = 0; i < len; i++) {
            for (size_t s = 0; s < sizeof(subst); s++) {
                char saved = body[i];
                char err[512];
                struct hrana_pipeline *p = NULL;
                body[i] = subst[s];
                int rc = hrana_pipeline_decode((const uint8_t *)body, len, 2, &p, err, sizeof(err));
                CHECK(rc == 0 ? p != NULL : p == NULL && err[0] != '\0');
                hrana_pipeline_free(p);
                body[i] = saved;
            }
        }
        free(body);
    }
}

/* ---- writers --------------------------------------------------------------------- */

TEST(write_values)
{
    struct buf b = {0};

#define WRITES(call, want)                                                                         \
    do {                                                                                           \
        buf_reset(&b);                                                                             \
        call;                                                                                      \
        CHECK(buf_is(&b, want));                                                                   \
        CHECK(buf_parses(&b));                                                                     \
    } while (0)
    WRITES(hrana_json_null(&b), "{\"type\":\"null\"}");
    WRITES(hrana_json_integer(&b, 0), "{\"type\":\"integer\",\"value\":\"0\"}");
    WRITES(hrana_json_integer(&b, -5), "{\"type\":\"integer\",\"value\":\"-5\"}");
    WRITES(hrana_json_integer(&b, INT64_MAX),
           "{\"type\":\"integer\",\"value\":\"9223372036854775807\"}");
    WRITES(hrana_json_integer(&b, INT64_MIN),
           "{\"type\":\"integer\",\"value\":\"-9223372036854775808\"}");
    WRITES(hrana_json_float(&b, 1.5), "{\"type\":\"float\",\"value\":1.5}");
    WRITES(hrana_json_float(&b, 1.0), "{\"type\":\"float\",\"value\":1}");
    WRITES(hrana_json_float(&b, 0.1), "{\"type\":\"float\",\"value\":0.1}");
    WRITES(hrana_json_float(&b, 0.1 + 0.2), "{\"type\":\"float\",\"value\":0.30000000000000004}");
    WRITES(hrana_json_float(&b, -0.0), "{\"type\":\"float\",\"value\":-0}");
    WRITES(hrana_json_float(&b, 1e300), "{\"type\":\"float\",\"value\":1e+300}");
    WRITES(hrana_json_float(&b, 1e20), "{\"type\":\"float\",\"value\":1e+20}");
    WRITES(hrana_json_float(&b, 5e-324), "{\"type\":\"float\",\"value\":4.94065645841247e-324}");
    WRITES(hrana_json_float(&b, 1.7976931348623157e308),
           "{\"type\":\"float\",\"value\":1.7976931348623157e+308}");
    WRITES(hrana_json_float(&b, 1.0 / 3), "{\"type\":\"float\",\"value\":0.3333333333333333}");
    WRITES(hrana_json_float(&b, INFINITY), "{\"type\":\"null\"}");
    WRITES(hrana_json_float(&b, -INFINITY), "{\"type\":\"null\"}");
    WRITES(hrana_json_float(&b, NAN), "{\"type\":\"null\"}");
    WRITES(hrana_json_text(&b, "hi", 2), "{\"type\":\"text\",\"value\":\"hi\"}");
    WRITES(hrana_json_text(&b, "", 0), "{\"type\":\"text\",\"value\":\"\"}");
    WRITES(hrana_json_text(&b, "a\0b", 3), "{\"type\":\"text\",\"value\":\"a\\u0000b\"}");
    WRITES(hrana_json_blob(&b, "", 0), "{\"type\":\"blob\",\"base64\":\"\"}");
    WRITES(hrana_json_blob(&b, "\1", 1), "{\"type\":\"blob\",\"base64\":\"AQ==\"}");
    WRITES(hrana_json_blob(&b, "\1\2", 2), "{\"type\":\"blob\",\"base64\":\"AQI=\"}");
    WRITES(hrana_json_blob(&b, "\1\2\3", 3), "{\"type\":\"blob\",\"base64\":\"AQID\"}");
    WRITES(hrana_json_blob(&b, "\xfb\xff\xfe\x00", 4),
           "{\"type\":\"blob\",\"base64\":\"+//+AA==\"}");
#undef WRITES
    buf_free(&b);
}

TEST(write_floats_round_trip)
{
    struct buf b = {0};
    uint64_t x = 0x9E3779B97F4A7C15u;

    for (int i = 0; i < 20000; i++) {
        double v;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(&v, &x, sizeof(v));
        if (i % 3 == 0)
            v = (double)(int64_t)x / 1000.0;
        if (!isfinite(v))
            continue;
        buf_reset(&b);
        hrana_json_float(&b, v);
        json_error_t je;
        json_t *j = json_loadb((const char *)buf_head(&b), buf_avail(&b), 0, &je);
        REQUIRE(j != NULL);
        json_t *jv = json_object_get(j, "value");
        CHECK(json_is_number(jv) && json_number_value(jv) == v);
        json_decref(j);
    }
    buf_free(&b);
}

TEST(write_strings)
{
    struct buf b = {0};

#define STR(in, want)                                                                              \
    do {                                                                                           \
        buf_reset(&b);                                                                             \
        hrana_json_string(&b, in, sizeof(in) - 1);                                                 \
        CHECK(buf_is(&b, want));                                                                   \
    } while (0)
    STR("", "\"\"");
    STR("plain ascii ~", "\"plain ascii ~\"");
    STR("q\"b\\", "\"q\\\"b\\\\\"");
    STR("\n\t\x01\x1f\x7f", "\"\\u000a\\u0009\\u0001\\u001f\x7f\"");
    STR("\0", "\"\\u0000\"");
    STR("caf\xc3\xa9 \xf0\x9f\x98\x80", "\"caf\xc3\xa9 \xf0\x9f\x98\x80\"");
    STR("a\xff"
        "b",
        "\"a\\ufffdb\"");
    STR("\xc3", "\"\\ufffd\"");                                  /* truncated sequence */
    STR("\xc0\x80", "\"\\ufffd\\ufffd\"");                       /* overlong NUL */
    STR("\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"");            /* surrogate */
    STR("\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\""); /* > U+10FFFF */
#undef STR
    /* Whatever the bytes, the output is one JSON string that jansson reads. */
    for (int i = 0; i < 256; i++) {
        char in[3] = {(char)i, 'x', (char)(255 - i)};
        buf_reset(&b);
        hrana_json_string(&b, in, sizeof(in));
        json_error_t je;
        json_t *j = json_loadb((const char *)buf_head(&b), buf_avail(&b),
                               JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        CHECK(json_is_string(j));
        json_decref(j);
    }
    buf_free(&b);
}

TEST(write_error)
{
    struct buf b = {0};
    struct hrana_error e;

    hrana_error_set(&e, "SQLITE_CONSTRAINT", "UNIQUE constraint failed: %s.%s", "t", "id");
    hrana_json_error(&b, &e);
    CHECK(buf_is(
        &b, "{\"message\":\"UNIQUE constraint failed: t.id\",\"code\":\"SQLITE_CONSTRAINT\"}"));
    buf_reset(&b);
    hrana_error_set(&e, "", "no \"code\"");
    hrana_json_error(&b, &e);
    CHECK(buf_is(&b, "{\"message\":\"no \\\"code\\\"\"}"));
    /* Too long: truncated, NUL-terminated, still valid JSON. */
    char longmsg[1000];
    memset(longmsg, 'm', sizeof(longmsg) - 1);
    longmsg[sizeof(longmsg) - 1] = '\0';
    hrana_error_set(&e, "A_VERY_LONG_CODE_NAME_THAT_DOES_NOT_FIT_IN_48_BYTES_AT_ALL", "%s",
                    longmsg);
    CHECK(strlen(e.message) == sizeof(e.message) - 1);
    CHECK(strlen(e.code) == sizeof(e.code) - 1);
    buf_reset(&b);
    hrana_json_error(&b, &e);
    CHECK(buf_parses(&b));
    /* A message cut inside a UTF-8 sequence still makes valid JSON. */
    char utf[600];
    for (size_t i = 0; i + 1 < sizeof(utf); i += 2)
        memcpy(utf + i, "\xc3\xa9", 2);
    utf[sizeof(utf) - 1] = '\0';
    hrana_error_set(&e, "X", "a%s", utf);
    buf_reset(&b);
    hrana_json_error(&b, &e);
    CHECK(buf_parses(&b));
    buf_free(&b);
}

TEST(req_type_names)
{
    CHECK(strcmp(hrana_req_type_name(HRANA_REQ_EXECUTE), "execute") == 0);
    CHECK(strcmp(hrana_req_type_name(HRANA_REQ_BATCH), "batch") == 0);
    CHECK(strcmp(hrana_req_type_name(HRANA_REQ_SEQUENCE), "sequence") == 0);
    CHECK(strcmp(hrana_req_type_name(HRANA_REQ_DESCRIBE), "describe") == 0);
    CHECK(strcmp(hrana_req_type_name(HRANA_REQ_STORE_SQL), "store_sql") == 0);
    CHECK(strcmp(hrana_req_type_name(HRANA_REQ_CLOSE_SQL), "close_sql") == 0);
    CHECK(strcmp(hrana_req_type_name(HRANA_REQ_CLOSE), "close") == 0);
    CHECK(strcmp(hrana_req_type_name(HRANA_REQ_GET_AUTOCOMMIT), "get_autocommit") == 0);
    CHECK(strcmp(hrana_req_type_name((enum hrana_req_type)99), "unknown") == 0);
}

/* ---- StmtResult ------------------------------------------------------------------ */

#define RESULT_TAIL "\"rows_read\":0,\"rows_written\":0,\"query_duration_ms\":0}"

TEST(stmt_out_rows)
{
    struct buf b = {0};
    struct hrana_stmt_out so;

    buf_append(&b, "[", 1);
    hrana_stmt_out_begin(&so, &b);
    hrana_stmt_out_col(&so, "id", "INTEGER");
    hrana_stmt_out_col(&so, "v", NULL);
    hrana_stmt_out_col(&so, NULL, "TEXT");
    hrana_stmt_out_row(&so);
    hrana_stmt_out_integer(&so, 1);
    hrana_stmt_out_float(&so, 2.5);
    hrana_stmt_out_text(&so, "x\"", 2);
    hrana_stmt_out_row(&so);
    hrana_stmt_out_null(&so);
    hrana_stmt_out_blob(&so, "\1\2\3", 3);
    hrana_stmt_out_float(&so, NAN);
    CHECK(so.ncols == 3 && so.nrows == 2 && so.nvals == 3);
    hrana_stmt_out_end(&so, 3, 1, -7);
    CHECK(hrana_stmt_out_bytes(&so) == buf_avail(&b) - 1);
    CHECK(buf_is(&b, "[{\"cols\":[{\"name\":\"id\",\"decltype\":\"INTEGER\"},{\"name\":\"v\","
                     "\"decltype\":null},{\"name\":null,\"decltype\":\"TEXT\"}],\"rows\":["
                     "[{\"type\":\"integer\",\"value\":\"1\"},{\"type\":\"float\",\"value\":2.5},"
                     "{\"type\":\"text\",\"value\":\"x\\\"\"}],[{\"type\":\"null\"},{\"type\":"
                     "\"blob\",\"base64\":\"AQID\"},{\"type\":\"null\"}]],\"affected_row_count\":3,"
                     "\"last_insert_rowid\":\"-7\"," RESULT_TAIL));
    buf_append(&b, "]", 1);
    CHECK(buf_parses(&b));
    buf_free(&b);
}

TEST(stmt_out_shapes)
{
    struct buf b = {0}, e = {0};
    struct hrana_stmt_out so;

    /* No columns, no rows: the same as the empty result. */
    hrana_stmt_out_begin(&so, &b);
    hrana_stmt_out_end(&so, 0, 0, 0);
    hrana_json_empty_result(&e);
    CHECK(buf_avail(&b) == buf_avail(&e) && memcmp(buf_head(&b), buf_head(&e), buf_avail(&b)) == 0);
    CHECK(buf_is(&e, "{\"cols\":[],\"rows\":[],\"affected_row_count\":0,\"last_insert_rowid\":"
                     "null," RESULT_TAIL));
    /* Columns, no rows. */
    buf_reset(&b);
    hrana_stmt_out_begin(&so, &b);
    hrana_stmt_out_col(&so, "a", "");
    hrana_stmt_out_end(&so, UINT64_MAX, 1, INT64_MIN);
    CHECK(buf_is(&b, "{\"cols\":[{\"name\":\"a\",\"decltype\":\"\"}],\"rows\":[],"
                     "\"affected_row_count\":18446744073709551615,\"last_insert_rowid\":"
                     "\"-9223372036854775808\"," RESULT_TAIL));
    /* Rows with no values (a zero-column SELECT cannot happen, but the shape holds). */
    buf_reset(&b);
    hrana_stmt_out_begin(&so, &b);
    hrana_stmt_out_row(&so);
    hrana_stmt_out_row(&so);
    hrana_stmt_out_end(&so, 0, 0, 0);
    CHECK(buf_is(&b, "{\"cols\":[],\"rows\":[[],[]],\"affected_row_count\":0,"
                     "\"last_insert_rowid\":null," RESULT_TAIL));
    CHECK(buf_parses(&b));
    buf_free(&b);
    buf_free(&e);
}

TEST(stmt_out_abort)
{
    struct buf b = {0};
    struct hrana_stmt_out so;

    buf_append(&b, "{\"results\":[", 12);
    hrana_stmt_out_begin(&so, &b);
    hrana_stmt_out_col(&so, "a", NULL);
    hrana_stmt_out_row(&so);
    hrana_stmt_out_text(&so, "abc", 3);
    CHECK(hrana_stmt_out_bytes(&so) == buf_avail(&b) - 12);
    hrana_stmt_out_abort(&so);
    CHECK(buf_is(&b, "{\"results\":["));
    CHECK(hrana_stmt_out_bytes(&so) == 0);

    /* With a read offset that a growing append moves back to 0. */
    buf_free(&b);
    buf_append(&b, "0123456789", 10);
    buf_consume(&b, 8);
    hrana_stmt_out_begin(&so, &b);
    hrana_stmt_out_col(&so, "a", NULL);
    char big[5000];
    memset(big, 'z', sizeof(big));
    for (int i = 0; i < 50; i++) {
        hrana_stmt_out_row(&so);
        hrana_stmt_out_text(&so, big, sizeof(big));
    }
    CHECK(b.off == 0); /* the data did move */
    CHECK(hrana_stmt_out_bytes(&so) > 50 * sizeof(big));
    hrana_stmt_out_abort(&so);
    CHECK(buf_is(&b, "89"));
    /* Abort right after begin, and of an ended result. */
    hrana_stmt_out_begin(&so, &b);
    hrana_stmt_out_abort(&so);
    CHECK(buf_is(&b, "89"));
    hrana_stmt_out_begin(&so, &b);
    hrana_stmt_out_end(&so, 1, 0, 0);
    hrana_stmt_out_abort(&so);
    CHECK(buf_is(&b, "89"));
    buf_free(&b);
}

int main(void)
{
    RUN(execute_and_close);
    RUN(batch_with_store_sql);
    RUN(transaction_follow_up);
    RUN(sequence_describe_close_sql);
    RUN(hrana3_features);
    RUN(empty_things);
    RUN(want_rows);
    RUN(unknown_fields_and_replication_index);
    RUN(named_args);
    RUN(value_integer);
    RUN(value_integer_rejected);
    RUN(value_float);
    RUN(value_float_with_huge_integer_elsewhere);
    RUN(value_text);
    RUN(value_blob);
    RUN(value_blob_every_byte);
    RUN(value_rejected);
    RUN(pipeline_rejected);
    RUN(too_many);
    RUN(stmt_rejected);
    RUN(requests_rejected);
    RUN(conditions_rejected);
    RUN(condition_depth);
    RUN(condition_eval);
    RUN(error_buffer_sizes);
    RUN(truncated_prefixes_fail);
    RUN(mutations_do_not_crash);
    RUN(write_values);
    RUN(write_floats_round_trip);
    RUN(write_strings);
    RUN(write_error);
    RUN(req_type_names);
    RUN(stmt_out_rows);
    RUN(stmt_out_shapes);
    RUN(stmt_out_abort);
    return HARNESS_END();
}
