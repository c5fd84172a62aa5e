/* boomerang: the Hrana-over-HTTP JSON protocol: pipeline decoding (jansson)
 * and result writing. The wire format is in research/hrana.md §1.4-§1.8.
 *
 * Decoding loads the body with jansson, walks the tree once and copies every
 * string and array the caller will see into a per-pipeline arena, then frees
 * the tree: a struct hrana_pipeline is one arena plus the structs in it.
 *
 * Errors carry the position of the offending field as a path built while
 * walking ("requests[1].batch.steps[3].condition: ..."), because a client
 * author reading a 400 answer has nothing else to go on. */
#include "proxy/hrana.h"

#include <assert.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/http.h"

/* ---- arena ----------------------------------------------------------------------- */

#define ARENA_CHUNK 16384
#define ARENA_ALIGN 16

struct arena_chunk {
    struct arena_chunk *next;
    size_t used;
    size_t cap;
    _Alignas(ARENA_ALIGN) unsigned char data[];
};

struct hrana_arena {
    struct arena_chunk *head;
};

/* Zeroed memory for n bytes that lives until arena_free. */
static void *arena_alloc(struct hrana_arena *a, size_t n)
{
    struct arena_chunk *c = a->head;
    void *p;

    n = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (c == NULL || c->cap - c->used < n) {
        size_t cap = n > ARENA_CHUNK ? n : ARENA_CHUNK;
        c = xmalloc(sizeof(*c) + cap);
        c->used = 0;
        c->cap = cap;
        c->next = a->head;
        a->head = c;
    }
    p = c->data + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

/* An array of n elements of size sz; counts are bounded by the body size, so
 * the product cannot overflow, but say so. */
static void *arena_array(struct hrana_arena *a, size_t n, size_t sz)
{
    assert(sz == 0 || n <= SIZE_MAX / sz);
    return arena_alloc(a, n * sz);
}

static void arena_free(struct hrana_arena *a)
{
    struct arena_chunk *c = a->head;

    while (c != NULL) {
        struct arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    free(a);
}

/* ---- decoding context ------------------------------------------------------------ */

struct dec {
    struct hrana_arena *arena;
    int version;
    char *err;
    size_t errlen;
    char path[256]; /* where the walk is, for messages */
    size_t plen;
};

/* Append to the path; returns the length to restore with path_pop. */
static size_t path_push(struct dec *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static size_t path_push(struct dec *d, const char *fmt, ...)
{
    size_t old = d->plen;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(d->path + d->plen, sizeof(d->path) - d->plen, fmt, ap);
    va_end(ap);
    if (n > 0)
        d->plen = MIN(d->plen + (size_t)n, sizeof(d->path) - 1);
    return old;
}

static void path_pop(struct dec *d, size_t old)
{
    d->plen = old;
    d->path[old] = '\0';
}

/* Fill the error as "<path>[.<key>]: <message>"; returns -1. */
static int fail(struct dec *d, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct dec *d, const char *key, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (d->errlen == 0)
        return -1;
    n = snprintf(d->err, d->errlen, "%s%s%s%s", d->path, key && d->plen ? "." : "", key ? key : "",
                 d->plen || key ? ": " : "");
    if (n < 0 || (size_t)n >= d->errlen)
        return -1;
    va_start(ap, fmt);
    vsnprintf(d->err + n, d->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

/* obj[key], with JSON null treated as absent (serde's Option does the same). */
static json_t *field(const json_t *obj, const char *key)
{
    json_t *j = json_object_get(obj, key);

    return json_is_null(j) ? NULL : j;
}

/* Whether j is the JSON string `name` exactly (NUL-safe). */
static int str_is(const json_t *j, const char *name)
{
    size_t n = strlen(name);

    return json_string_length(j) == n && memcmp(json_string_value(j), name, n) == 0;
}

/* A JSON number that is a whole int64: an integer, or a real with no
 * fraction (jansson yields reals for every number in the retry described in
 * hrana_pipeline_decode). 0 or -1. */
static int whole_number(const json_t *j, int64_t *out)
{
    double v;

    if (json_is_integer(j)) {
        *out = json_integer_value(j);
        return 0;
    }
    if (!json_is_real(j))
        return -1;
    v = json_real_value(j);
    /* -2^63 and 2^63 are exact doubles; NaN fails both comparisons. */
    if (!(v >= -9223372036854775808.0 && v < 9223372036854775808.0))
        return -1;
    if ((double)(int64_t)v != v)
        return -1;
    *out = (int64_t)v;
    return 0;
}

/* Copy the JSON string j into the arena, NUL-terminated. nul_ok = 0 refuses
 * embedded NULs (SQL, names and batons are used as C strings). */
static int dec_string(struct dec *d, const json_t *j, const char *key, int nul_ok, const char **out,
                      size_t *len)
{
    const char *s;
    size_t n;
    char *copy;

    if (j == NULL)
        return fail(d, key, "missing");
    if (!json_is_string(j))
        return fail(d, key, "expected a string");
    s = json_string_value(j);
    n = json_string_length(j);
    if (!nul_ok && memchr(s, '\0', n) != NULL)
        return fail(d, key, "contains a NUL character");
    copy = arena_alloc(d->arena, n + 1);
    memcpy(copy, s, n);
    *out = copy;
    if (len != NULL)
        *len = n;
    return 0;
}

static int dec_int32(struct dec *d, const json_t *j, const char *key, int32_t *out)
{
    int64_t v;

    if (j == NULL)
        return fail(d, key, "missing");
    if (whole_number(j, &v) < 0 || v < INT32_MIN || v > INT32_MAX)
        return fail(d, key, "expected a 32-bit integer");
    *out = (int32_t)v;
    return 0;
}

/* ---- values ---------------------------------------------------------------------- */

/* Parse an optional '-' and decimal digits, the whole string, into an int64. */
static int parse_int64(const char *s, size_t len, int64_t *out)
{
    const uint64_t max_pos = INT64_MAX;
    size_t i = 0;
    int neg = 0;
    uint64_t u = 0, limit;

    if (len > 0 && s[0] == '-') {
        neg = 1;
        i = 1;
    }
    if (i == len)
        return -1;
    limit = neg ? max_pos + 1 : max_pos;
    for (; i < len; i++) {
        unsigned digit = (unsigned char)s[i] - '0';
        if (digit > 9)
            return -1;
        if (u > (limit - digit) / 10)
            return -2;
        u = u * 10 + digit;
    }
    if (neg)
        *out = u == max_pos + 1 ? INT64_MIN : -(int64_t)u;
    else
        *out = (int64_t)u;
    return 0;
}

static int dec_int64(struct dec *d, const json_t *j, int64_t *out)
{
    int rc;

    if (j == NULL)
        return fail(d, "value", "missing");
    if (!json_is_string(j)) {
        /* Not what the spec says, but harmless to accept. */
        if (whole_number(j, out) == 0)
            return 0;
        return fail(d, "value", "expected a decimal int64 string");
    }
    rc = parse_int64(json_string_value(j), json_string_length(j), out);
    if (rc == -2)
        return fail(d, "value", "integer out of the int64 range");
    if (rc < 0)
        return fail(d, "value", "expected a decimal int64 string");
    return 0;
}

/* Value of a base64 character (standard or URL-safe alphabet), or -1. */
static int b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

/* Decode base64, padded or not, into the arena. -1 on a bad character or
 * length. Non-zero trailing bits are tolerated, as most decoders do. */
static int b64_decode(struct hrana_arena *a, const char *s, size_t len, const char **out,
                      size_t *out_len)
{
    size_t pad = 0, n, o = 0;
    uint32_t acc = 0;
    unsigned char *dst;

    while (pad < 2 && len > pad && s[len - pad - 1] == '=')
        pad++;
    n = len - pad;
    if (n % 4 == 1 || (pad > 0 && len % 4 != 0))
        return -1;
    dst = arena_alloc(a, n / 4 * 3 + 3);
    for (size_t i = 0; i < n; i++) {
        int v = b64_val((unsigned char)s[i]);
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        if (i % 4 == 3) {
            dst[o++] = (unsigned char)(acc >> 16);
            dst[o++] = (unsigned char)(acc >> 8);
            dst[o++] = (unsigned char)acc;
            acc = 0;
        }
    }
    if (n % 4 == 2) {
        dst[o++] = (unsigned char)(acc >> 4);
    } else if (n % 4 == 3) {
        dst[o++] = (unsigned char)(acc >> 10);
        dst[o++] = (unsigned char)(acc >> 2);
    }
    *out = (const char *)dst;
    *out_len = o;
    return 0;
}

static int dec_blob(struct dec *d, const json_t *j, struct hrana_value *v)
{
    const json_t *jb = field(j, "base64");

    if (jb == NULL)
        return fail(d, "base64", "missing");
    if (!json_is_string(jb))
        return fail(d, "base64", "expected a string");
    if (b64_decode(d->arena, json_string_value(jb), json_string_length(jb), &v->bytes, &v->len) < 0)
        return fail(d, "base64", "invalid base64");
    return 0;
}

static int dec_value(struct dec *d, const json_t *j, struct hrana_value *v)
{
    const json_t *jt, *jv;

    if (!json_is_object(j))
        return fail(d, NULL, "expected a value object");
    jt = json_object_get(j, "type");
    if (!json_is_string(jt))
        return fail(d, "type", "expected a string");
    jv = field(j, "value");
    if (str_is(jt, "null")) {
        v->type = HRANA_VALUE_NULL;
        return 0;
    } else if (str_is(jt, "integer")) {
        v->type = HRANA_VALUE_INTEGER;
        return dec_int64(d, jv, &v->integer);
    } else if (str_is(jt, "float")) {
        v->type = HRANA_VALUE_FLOAT;
        if (!json_is_number(jv))
            return fail(d, "value", "expected a number");
        v->real = json_number_value(jv);
        return 0;
    } else if (str_is(jt, "text")) {
        v->type = HRANA_VALUE_TEXT;
        return dec_string(d, jv, "value", 1, &v->bytes, &v->len);
    } else if (str_is(jt, "blob")) {
        v->type = HRANA_VALUE_BLOB;
        return dec_blob(d, j, v);
    }
    return fail(d, NULL, "unknown value type \"%s\"", json_string_value(jt));
}

/* ---- statements ------------------------------------------------------------------ */

/* Exactly one of obj.sql and obj.sql_id. */
static int dec_sql_or_id(struct dec *d, const json_t *obj, const char **sql, int *has_id,
                         int32_t *id)
{
    const json_t *js = field(obj, "sql"), *ji = field(obj, "sql_id");

    if (js != NULL && ji != NULL)
        return fail(d, NULL, "sql and sql_id are both given");
    if (js == NULL && ji == NULL)
        return fail(d, NULL, "neither sql nor sql_id is given");
    if (js != NULL)
        return dec_string(d, js, "sql", 0, sql, NULL);
    *has_id = 1;
    return dec_int32(d, ji, "sql_id", id);
}

/* obj[key] as an array of at most max elements (absent: NULL, n 0). */
static int dec_array(struct dec *d, const json_t *obj, const char *key, size_t max,
                     const json_t **out, size_t *n)
{
    const json_t *ja = field(obj, key);

    *out = NULL;
    *n = 0;
    if (ja == NULL)
        return 0;
    if (!json_is_array(ja))
        return fail(d, key, "expected an array");
    if (json_array_size(ja) > max)
        return fail(d, key, "too many elements (%zu, at most %zu)", json_array_size(ja), max);
    *out = ja;
    *n = json_array_size(ja);
    return 0;
}

static int dec_args(struct dec *d, const json_t *obj, struct hrana_stmt *st)
{
    const json_t *ja;

    if (dec_array(d, obj, "args", HRANA_MAX_ARGS, &ja, &st->n_args) < 0)
        return -1;
    st->args = arena_array(d->arena, st->n_args, sizeof(*st->args));
    for (size_t i = 0; i < st->n_args; i++) {
        size_t old = path_push(d, ".args[%zu]", i);
        if (dec_value(d, json_array_get(ja, i), &st->args[i]) < 0)
            return -1;
        path_pop(d, old);
    }
    return 0;
}

static int dec_named_args(struct dec *d, const json_t *obj, struct hrana_stmt *st)
{
    const json_t *ja;

    if (dec_array(d, obj, "named_args", HRANA_MAX_ARGS, &ja, &st->n_named_args) < 0)
        return -1;
    st->named_args = arena_array(d->arena, st->n_named_args, sizeof(*st->named_args));
    for (size_t i = 0; i < st->n_named_args; i++) {
        const json_t *jn = json_array_get(ja, i);
        struct hrana_named_arg *na = &st->named_args[i];
        size_t old = path_push(d, ".named_args[%zu]", i);

        if (!json_is_object(jn))
            return fail(d, NULL, "expected an object");
        if (dec_string(d, field(jn, "name"), "name", 0, &na->name, NULL) < 0)
            return -1;
        path_push(d, ".value");
        if (field(jn, "value") == NULL)
            return fail(d, NULL, "missing");
        if (dec_value(d, field(jn, "value"), &na->value) < 0)
            return -1;
        path_pop(d, old);
    }
    return 0;
}

/* Decode the Stmt at j; the caller has pushed its path. */
static int dec_stmt(struct dec *d, const json_t *j, struct hrana_stmt *st)
{
    const json_t *jw;

    if (j == NULL)
        return fail(d, NULL, "missing");
    if (!json_is_object(j))
        return fail(d, NULL, "expected an object");
    if (dec_sql_or_id(d, j, &st->sql, &st->has_sql_id, &st->sql_id) < 0)
        return -1;
    if (dec_args(d, j, st) < 0 || dec_named_args(d, j, st) < 0)
        return -1;
    jw = field(j, "want_rows");
    if (jw != NULL && !json_is_boolean(jw))
        return fail(d, "want_rows", "expected a boolean");
    st->want_rows = jw == NULL || json_is_true(jw);
    return 0;
}

/* ---- batch conditions ------------------------------------------------------------ */

static int dec_cond(struct dec *d, const json_t *j, size_t step, int depth, struct hrana_cond *c);

/* conds of and/or, or cond of not. */
static int dec_subconds(struct dec *d, const json_t *j, size_t step, int depth,
                        struct hrana_cond *c)
{
    const json_t *ja;

    if (c->type == HRANA_COND_NOT) {
        size_t old = path_push(d, ".cond");
        c->n_conds = 1;
        c->conds = arena_alloc(d->arena, sizeof(*c->conds));
        if (field(j, "cond") == NULL)
            return fail(d, NULL, "missing");
        if (dec_cond(d, field(j, "cond"), step, depth + 1, c->conds) < 0)
            return -1;
        path_pop(d, old);
        return 0;
    }
    if (field(j, "conds") == NULL)
        return fail(d, "conds", "missing");
    if (dec_array(d, j, "conds", SIZE_MAX, &ja, &c->n_conds) < 0)
        return -1;
    c->conds = arena_array(d->arena, c->n_conds, sizeof(*c->conds));
    for (size_t i = 0; i < c->n_conds; i++) {
        size_t old = path_push(d, ".conds[%zu]", i);
        if (dec_cond(d, json_array_get(ja, i), step, depth + 1, &c->conds[i]) < 0)
            return -1;
        path_pop(d, old);
    }
    return 0;
}

static int dec_cond_step(struct dec *d, const json_t *j, size_t step, struct hrana_cond *c)
{
    const json_t *js = field(j, "step");
    int64_t s;

    if (js == NULL)
        return fail(d, "step", "missing");
    if (whole_number(js, &s) < 0 || s < 0 || s > UINT32_MAX)
        return fail(d, "step", "expected a step index");
    if ((uint64_t)s >= step)
        return fail(d, NULL, "step %" PRId64 " is not before this step", s);
    c->step = (uint32_t)s;
    return 0;
}

/* Decode the condition at j for the step with index `step`; the caller has
 * pushed its path. depth counts nesting from 1. */
static int dec_cond(struct dec *d, const json_t *j, size_t step, int depth, struct hrana_cond *c)
{
    const json_t *jt;

    if (depth > HRANA_MAX_DEPTH)
        return fail(d, NULL, "conditions nested more than %d deep", HRANA_MAX_DEPTH);
    if (!json_is_object(j))
        return fail(d, NULL, "expected a condition object");
    jt = json_object_get(j, "type");
    if (!json_is_string(jt))
        return fail(d, "type", "expected a string");
    if (str_is(jt, "ok") || str_is(jt, "error")) {
        c->type = str_is(jt, "ok") ? HRANA_COND_OK : HRANA_COND_ERROR;
        return dec_cond_step(d, j, step, c);
    }
    if (str_is(jt, "not") || str_is(jt, "and") || str_is(jt, "or")) {
        c->type = str_is(jt, "not")   ? HRANA_COND_NOT
                  : str_is(jt, "and") ? HRANA_COND_AND
                                      : HRANA_COND_OR;
        return dec_subconds(d, j, step, depth, c);
    }
    if (str_is(jt, "is_autocommit")) {
        if (d->version < 3)
            return fail(d, NULL, "is_autocommit needs Hrana 3 (/v3/pipeline)");
        c->type = HRANA_COND_IS_AUTOCOMMIT;
        return 0;
    }
    return fail(d, NULL, "unknown condition type \"%s\"", json_string_value(jt));
}

int hrana_cond_eval(const struct hrana_cond *cond, const uint8_t *ran, const uint8_t *failed,
                    int autocommit)
{
    if (cond == NULL)
        return 1;
    switch (cond->type) {
    case HRANA_COND_OK:
        return ran[cond->step] && !failed[cond->step];
    case HRANA_COND_ERROR:
        return ran[cond->step] && failed[cond->step];
    case HRANA_COND_NOT:
        return !hrana_cond_eval(&cond->conds[0], ran, failed, autocommit);
    case HRANA_COND_AND:
        for (size_t i = 0; i < cond->n_conds; i++) {
            if (!hrana_cond_eval(&cond->conds[i], ran, failed, autocommit))
                return 0;
        }
        return 1;
    case HRANA_COND_OR:
        for (size_t i = 0; i < cond->n_conds; i++) {
            if (hrana_cond_eval(&cond->conds[i], ran, failed, autocommit))
                return 1;
        }
        return 0;
    case HRANA_COND_IS_AUTOCOMMIT:
        return autocommit != 0;
    }
    assert(0 && "bad condition type");
    return 0;
}

/* ---- requests -------------------------------------------------------------------- */

static const char *const req_names[] = {
    [HRANA_REQ_EXECUTE] = "execute",     [HRANA_REQ_BATCH] = "batch",
    [HRANA_REQ_SEQUENCE] = "sequence",   [HRANA_REQ_DESCRIBE] = "describe",
    [HRANA_REQ_STORE_SQL] = "store_sql", [HRANA_REQ_CLOSE_SQL] = "close_sql",
    [HRANA_REQ_CLOSE] = "close",         [HRANA_REQ_GET_AUTOCOMMIT] = "get_autocommit",
};

const char *hrana_req_type_name(enum hrana_req_type t)
{
    if ((size_t)t >= ARRAY_LEN(req_names))
        return "unknown";
    return req_names[t];
}

static int dec_step(struct dec *d, const json_t *j, size_t idx, struct hrana_step *s)
{
    const json_t *jc;
    size_t old;

    if (!json_is_object(j))
        return fail(d, NULL, "expected an object");
    jc = field(j, "condition");
    if (jc != NULL) {
        old = path_push(d, ".condition");
        s->cond = arena_alloc(d->arena, sizeof(*s->cond));
        if (dec_cond(d, jc, idx, 1, s->cond) < 0)
            return -1;
        path_pop(d, old);
    }
    old = path_push(d, ".stmt");
    if (dec_stmt(d, field(j, "stmt"), &s->stmt) < 0)
        return -1;
    path_pop(d, old);
    return 0;
}

static int dec_batch(struct dec *d, const json_t *j, struct hrana_req *r)
{
    const json_t *jb = field(j, "batch"), *ja;
    size_t old = path_push(d, ".batch");

    if (jb == NULL)
        return fail(d, NULL, "missing");
    if (!json_is_object(jb))
        return fail(d, NULL, "expected an object");
    if (field(jb, "steps") == NULL)
        return fail(d, "steps", "missing");
    if (dec_array(d, jb, "steps", HRANA_MAX_STEPS, &ja, &r->n_steps) < 0)
        return -1;
    r->steps = arena_array(d->arena, r->n_steps, sizeof(*r->steps));
    for (size_t i = 0; i < r->n_steps; i++) {
        size_t o = path_push(d, ".steps[%zu]", i);
        if (dec_step(d, json_array_get(ja, i), i, &r->steps[i]) < 0)
            return -1;
        path_pop(d, o);
    }
    path_pop(d, old);
    return 0;
}

/* The fields of a request whose type is known. */
static int dec_req_body(struct dec *d, const json_t *j, struct hrana_req *r)
{
    size_t old;

    switch (r->type) {
    case HRANA_REQ_EXECUTE:
        old = path_push(d, ".stmt");
        if (dec_stmt(d, field(j, "stmt"), &r->stmt) < 0)
            return -1;
        path_pop(d, old);
        return 0;
    case HRANA_REQ_BATCH:
        return dec_batch(d, j, r);
    case HRANA_REQ_SEQUENCE:
    case HRANA_REQ_DESCRIBE:
        return dec_sql_or_id(d, j, &r->sql, &r->has_sql_id, &r->sql_id);
    case HRANA_REQ_STORE_SQL:
        r->has_sql_id = 1;
        if (dec_int32(d, field(j, "sql_id"), "sql_id", &r->sql_id) < 0)
            return -1;
        return dec_string(d, field(j, "sql"), "sql", 0, &r->sql, NULL);
    case HRANA_REQ_CLOSE_SQL:
        r->has_sql_id = 1;
        return dec_int32(d, field(j, "sql_id"), "sql_id", &r->sql_id);
    case HRANA_REQ_CLOSE:
        return 0;
    case HRANA_REQ_GET_AUTOCOMMIT:
        if (d->version < 3)
            return fail(d, NULL, "get_autocommit needs Hrana 3 (/v3/pipeline)");
        return 0;
    }
    assert(0 && "bad request type");
    return -1;
}

static int dec_req(struct dec *d, const json_t *j, struct hrana_req *r)
{
    const json_t *jt;
    size_t t;

    if (!json_is_object(j))
        return fail(d, NULL, "expected an object");
    jt = json_object_get(j, "type");
    if (!json_is_string(jt))
        return fail(d, "type", "expected a string");
    for (t = 0; t < ARRAY_LEN(req_names); t++) {
        if (str_is(jt, req_names[t]))
            break;
    }
    if (t == ARRAY_LEN(req_names))
        return fail(d, NULL, "unknown request type \"%s\"", json_string_value(jt));
    r->type = (enum hrana_req_type)t;
    return dec_req_body(d, j, r);
}

static int dec_pipeline(struct dec *d, const json_t *root, struct hrana_pipeline *p)
{
    const json_t *jb, *ja;

    if (!json_is_object(root))
        return fail(d, NULL, "the body is not a JSON object");
    jb = field(root, "baton");
    if (jb != NULL && dec_string(d, jb, "baton", 0, &p->baton, NULL) < 0)
        return -1;
    if (field(root, "requests") == NULL)
        return fail(d, "requests", "missing");
    if (dec_array(d, root, "requests", HRANA_MAX_REQUESTS, &ja, &p->n_reqs) < 0)
        return -1;
    p->reqs = arena_array(d->arena, p->n_reqs, sizeof(*p->reqs));
    for (size_t i = 0; i < p->n_reqs; i++) {
        size_t old = path_push(d, "requests[%zu]", i);
        if (dec_req(d, json_array_get(ja, i), &p->reqs[i]) < 0)
            return -1;
        path_pop(d, old);
    }
    return 0;
}

int hrana_pipeline_decode(const uint8_t *body, size_t len, int version, struct hrana_pipeline **out,
                          char *err, size_t errlen)
{
    struct dec d = {.version = version, .err = err, .errlen = errlen};
    struct hrana_pipeline *p;
    json_error_t je;
    json_t *root;

    *out = NULL;
    if (errlen > 0)
        err[0] = '\0';
    if (body == NULL)
        body = (const uint8_t *)"";
    root = json_loadb((const char *)body, len, JSON_ALLOW_NUL, &je);
    /* A JSON integer beyond int64 (JSON.stringify writes floats below 1e21
     * without an exponent) fails jansson's integer parse; parse every
     * number as a double then. */
    if (root == NULL && json_error_code(&je) == json_error_numeric_overflow)
        root = json_loadb((const char *)body, len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &je);
    if (root == NULL) {
        fail(&d, NULL, "invalid JSON: %s (line %d, column %d)", je.text, je.line, je.column);
        return -1;
    }
    d.arena = xcalloc(1, sizeof(*d.arena));
    p = arena_alloc(d.arena, sizeof(*p));
    p->arena = d.arena;
    if (dec_pipeline(&d, root, p) < 0) {
        json_decref(root);
        arena_free(d.arena);
        return -1;
    }
    json_decref(root);
    *out = p;
    return 0;
}

void hrana_pipeline_free(struct hrana_pipeline *p)
{
    if (p != NULL)
        arena_free(p->arena); /* p itself lives in the arena */
}

/* ---- errors ---------------------------------------------------------------------- */

void hrana_error_set(struct hrana_error *e, const char *code, const char *fmt, ...)
{
    va_list ap;

    snprintf(e->code, sizeof(e->code), "%s", code);
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
}

#define PUT(out, lit) buf_append((out), (lit), sizeof(lit) - 1)

void hrana_json_error(struct buf *out, const struct hrana_error *e)
{
    PUT(out, "{\"message\":");
    hrana_json_string(out, e->message, strlen(e->message));
    if (e->code[0] != '\0') {
        PUT(out, ",\"code\":");
        hrana_json_string(out, e->code, strlen(e->code));
    }
    PUT(out, "}");
}

/* ---- values out ------------------------------------------------------------------ */

void hrana_json_string(struct buf *out, const char *s, size_t len)
{
    size_t i;

    /* Most text is printable ASCII with nothing to escape: one copy. */
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x80 || c == '"' || c == '\\')
            break;
    }
    if (i < len) {
        http_json_string(out, s, len);
        return;
    }
    buf_reserve(out, len + 2);
    out->data[out->len++] = '"';
    memcpy(out->data + out->len, s, len);
    out->len += len;
    out->data[out->len++] = '"';
}

static void put_int64(struct buf *out, int64_t v)
{
    char num[UTIL_U64_DIGITS + 1];

    buf_append(out, num, util_fmt_i64(num, v));
}

/* The shortest %g form of a finite v that reads back as v: a JSON number. */
static void put_double(struct buf *out, double v)
{
    char num[40];
    int n = 0;

    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(num, sizeof(num), "%.*g", prec, v);
        if (strtod(num, NULL) == v)
            break;
    }
    buf_append(out, num, (size_t)n);
}

void hrana_json_null(struct buf *out)
{
    PUT(out, "{\"type\":\"null\"}");
}

void hrana_json_integer(struct buf *out, int64_t v)
{
    PUT(out, "{\"type\":\"integer\",\"value\":\"");
    put_int64(out, v);
    PUT(out, "\"}");
}

void hrana_json_float(struct buf *out, double v)
{
    if (!isfinite(v)) {
        hrana_json_null(out); /* JSON has no Inf/NaN, and the client rejects null here */
        return;
    }
    PUT(out, "{\"type\":\"float\",\"value\":");
    put_double(out, v);
    PUT(out, "}");
}

void hrana_json_text(struct buf *out, const char *s, size_t len)
{
    PUT(out, "{\"type\":\"text\",\"value\":");
    hrana_json_string(out, s, len);
    PUT(out, "}");
}

void hrana_json_blob(struct buf *out, const void *data, size_t len)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = data;
    char *dst;
    size_t i;

    PUT(out, "{\"type\":\"blob\",\"base64\":\"");
    buf_reserve(out, (len + 2) / 3 * 4);
    dst = (char *)out->data + out->len;
    for (i = 0; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *dst++ = alphabet[v >> 18];
        *dst++ = alphabet[(v >> 12) & 63];
        *dst++ = alphabet[(v >> 6) & 63];
        *dst++ = alphabet[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < len ? (uint32_t)p[i + 1] << 8 : 0);
        *dst++ = alphabet[v >> 18];
        *dst++ = alphabet[(v >> 12) & 63];
        *dst++ = i + 1 < len ? alphabet[(v >> 6) & 63] : '=';
        *dst++ = '=';
    }
    out->len = (size_t)((uint8_t *)dst - out->data);
    PUT(out, "\"}");
}

/* ---- StmtResult ------------------------------------------------------------------ */

enum stmt_out_state {
    STMT_OUT_COLS, /* in "cols" */
    STMT_OUT_ROWS, /* in "rows", no row open (no row yet) */
    STMT_OUT_ROW,  /* in a row */
    STMT_OUT_DONE, /* ended or aborted */
};

void hrana_stmt_out_begin(struct hrana_stmt_out *so, struct buf *out)
{
    /* Relative to the read offset: buf_reserve may move the data down. */
    so->out = out;
    so->start = buf_avail(out);
    so->ncols = so->nrows = so->nvals = 0;
    so->state = STMT_OUT_COLS;
    PUT(out, "{\"cols\":[");
}

void hrana_stmt_out_col(struct hrana_stmt_out *so, const char *name, const char *decltype)
{
    assert(so->state == STMT_OUT_COLS);
    if (so->ncols++ > 0)
        PUT(so->out, ",");
    PUT(so->out, "{\"name\":");
    if (name != NULL)
        hrana_json_string(so->out, name, strlen(name));
    else
        PUT(so->out, "null");
    PUT(so->out, ",\"decltype\":");
    if (decltype != NULL)
        hrana_json_string(so->out, decltype, strlen(decltype));
    else
        PUT(so->out, "null");
    PUT(so->out, "}");
}

void hrana_stmt_out_row(struct hrana_stmt_out *so)
{
    assert(so->state != STMT_OUT_DONE);
    if (so->state == STMT_OUT_COLS)
        PUT(so->out, "],\"rows\":[");
    else if (so->state == STMT_OUT_ROW)
        PUT(so->out, "],");
    PUT(so->out, "[");
    so->state = STMT_OUT_ROW;
    so->nrows++;
    so->nvals = 0;
}

/* Before each value of the open row. */
static void stmt_out_value(struct hrana_stmt_out *so)
{
    assert(so->state == STMT_OUT_ROW);
    if (so->nvals++ > 0)
        PUT(so->out, ",");
}

void hrana_stmt_out_null(struct hrana_stmt_out *so)
{
    stmt_out_value(so);
    hrana_json_null(so->out);
}

void hrana_stmt_out_integer(struct hrana_stmt_out *so, int64_t v)
{
    stmt_out_value(so);
    hrana_json_integer(so->out, v);
}

void hrana_stmt_out_float(struct hrana_stmt_out *so, double v)
{
    stmt_out_value(so);
    hrana_json_float(so->out, v);
}

void hrana_stmt_out_text(struct hrana_stmt_out *so, const char *s, size_t len)
{
    stmt_out_value(so);
    hrana_json_text(so->out, s, len);
}

void hrana_stmt_out_blob(struct hrana_stmt_out *so, const void *data, size_t len)
{
    stmt_out_value(so);
    hrana_json_blob(so->out, data, len);
}

void hrana_stmt_out_end(struct hrana_stmt_out *so, uint64_t affected_row_count, int has_rowid,
                        int64_t last_insert_rowid)
{
    char num[UTIL_U64_DIGITS];
    size_t n;

    assert(so->state != STMT_OUT_DONE);
    if (so->state == STMT_OUT_COLS)
        PUT(so->out, "],\"rows\":[");
    else if (so->state == STMT_OUT_ROW)
        PUT(so->out, "]");
    n = util_fmt_u64(num, affected_row_count);
    PUT(so->out, "],\"affected_row_count\":");
    buf_append(so->out, num, n);
    PUT(so->out, ",\"last_insert_rowid\":");
    if (has_rowid) {
        PUT(so->out, "\"");
        put_int64(so->out, last_insert_rowid);
        PUT(so->out, "\"");
    } else {
        PUT(so->out, "null");
    }
    PUT(so->out, ",\"rows_read\":0,\"rows_written\":0,\"query_duration_ms\":0}");
    so->state = STMT_OUT_DONE;
}

void hrana_stmt_out_abort(struct hrana_stmt_out *so)
{
    assert(so->start <= buf_avail(so->out));
    buf_truncate(so->out, so->start);
    so->state = STMT_OUT_DONE;
}

size_t hrana_stmt_out_bytes(const struct hrana_stmt_out *so)
{
    return buf_avail(so->out) - so->start;
}

void hrana_json_empty_result(struct buf *out)
{
    PUT(out, "{\"cols\":[],\"rows\":[],\"affected_row_count\":0,\"last_insert_rowid\":null,"
             "\"rows_read\":0,\"rows_written\":0,\"query_duration_ms\":0}");
}
