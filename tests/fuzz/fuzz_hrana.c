/* libFuzzer target for the Hrana pipeline decoder and the JSON writers
 * (proxy/hrana.c).
 *
 * The input is a request body. It is decoded as Hrana 2 and as Hrana 3; a
 * body that decodes must decode the same way under both unless it uses a
 * Hrana 3 feature. Every statement's values are then written back through
 * the writers (as a StmtResult row, and as args of a new pipeline), and the
 * new pipeline must decode to the same values: the writers and the decoder
 * agree. Conditions are evaluated against step outcomes taken from the input. */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "proxy/hrana.h"

#define PUT(b, lit) buf_append((b), (lit), sizeof(lit) - 1)

static void write_value(struct buf *b, const struct hrana_value *v)
{
    switch (v->type) {
    case HRANA_VALUE_NULL:
        hrana_json_null(b);
        break;
    case HRANA_VALUE_INTEGER:
        hrana_json_integer(b, v->integer);
        break;
    case HRANA_VALUE_FLOAT:
        hrana_json_float(b, v->real);
        break;
    case HRANA_VALUE_TEXT:
        hrana_json_text(b, v->bytes, v->len);
        break;
    case HRANA_VALUE_BLOB:
        hrana_json_blob(b, v->bytes, v->len);
        break;
    }
}

static void row_value(struct hrana_stmt_out *so, const struct hrana_value *v)
{
    switch (v->type) {
    case HRANA_VALUE_NULL:
        hrana_stmt_out_null(so);
        break;
    case HRANA_VALUE_INTEGER:
        hrana_stmt_out_integer(so, v->integer);
        break;
    case HRANA_VALUE_FLOAT:
        hrana_stmt_out_float(so, v->real);
        break;
    case HRANA_VALUE_TEXT:
        hrana_stmt_out_text(so, v->bytes, v->len);
        break;
    case HRANA_VALUE_BLOB:
        hrana_stmt_out_blob(so, v->bytes, v->len);
        break;
    }
}

static int same_value(const struct hrana_value *a, const struct hrana_value *b)
{
    if (a->type != b->type)
        return 0;
    switch (a->type) {
    case HRANA_VALUE_NULL:
        return 1;
    case HRANA_VALUE_INTEGER:
        return a->integer == b->integer;
    case HRANA_VALUE_FLOAT:
        return a->real == b->real;
    case HRANA_VALUE_TEXT:
    case HRANA_VALUE_BLOB:
        return a->len == b->len && memcmp(a->bytes, b->bytes, a->len) == 0;
    }
    return 0;
}

/* Write st's values as a StmtResult row (taken back half the time) and as
 * the args of a one-statement pipeline; decode that and compare. */
static void round_trip(const struct hrana_stmt *st, int abort_it)
{
    struct buf res = {0}, body = {0};
    struct hrana_stmt_out so;
    struct hrana_pipeline *p;
    size_t n = st->n_args + st->n_named_args;
    char err[256];

    PUT(&res, "[");
    hrana_stmt_out_begin(&so, &res);
    hrana_stmt_out_col(&so, st->sql, NULL);
    hrana_stmt_out_row(&so);
    PUT(&body, "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"x\",\"args\":[");
    for (size_t i = 0; i < n; i++) {
        const struct hrana_value *v =
            i < st->n_args ? &st->args[i] : &st->named_args[i - st->n_args].value;
        row_value(&so, v);
        if (i > 0)
            PUT(&body, ",");
        write_value(&body, v);
    }
    PUT(&body, "]}}]}");
    if (abort_it) {
        hrana_stmt_out_abort(&so);
        assert(buf_avail(&res) == 1);
    } else {
        hrana_stmt_out_end(&so, n, 1, (int64_t)n);
        assert(hrana_stmt_out_bytes(&so) == buf_avail(&res) - 1);
    }
    if (hrana_pipeline_decode(buf_head(&body), buf_avail(&body), 2, &p, err, sizeof(err)) != 0) {
        fprintf(stderr, "re-encoded pipeline does not decode: %s\n%.*s\n", err,
                (int)buf_avail(&body), (const char *)buf_head(&body));
        abort();
    }
    assert(p->n_reqs == 1 && p->reqs[0].stmt.n_args == n);
    for (size_t i = 0; i < n; i++) {
        const struct hrana_value *v =
            i < st->n_args ? &st->args[i] : &st->named_args[i - st->n_args].value;
        assert(same_value(v, &p->reqs[0].stmt.args[i]));
    }
    hrana_pipeline_free(p);
    buf_free(&res);
    buf_free(&body);
}

/* Evaluate a batch's conditions with outcomes taken from seed bits. */
static void eval_conds(const struct hrana_req *r, unsigned seed)
{
    uint8_t *ran = calloc(r->n_steps + 1, 1), *failed = calloc(r->n_steps + 1, 1);

    assert(ran != NULL && failed != NULL);
    for (size_t i = 0; i < r->n_steps; i++) {
        ran[i] = (uint8_t)hrana_cond_eval(r->steps[i].cond, ran, failed, (int)(seed & 1));
        failed[i] = ran[i] && ((seed >> (i % 31)) & 1);
    }
    free(ran);
    free(failed);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct hrana_pipeline *p2 = NULL, *p3 = NULL;
    char err[256];
    int rc2 = hrana_pipeline_decode(data, size, 2, &p2, err, sizeof(err));
    int rc3 = hrana_pipeline_decode(data, size, 3, &p3, err, sizeof(err));
    unsigned seed = size > 0 ? data[0] * 2654435761u : 0;

    /* Version 3 accepts a superset of version 2. */
    assert(rc2 != 0 || rc3 == 0);
    assert((rc2 == 0) == (p2 != NULL) && (rc3 == 0) == (p3 != NULL));
    if (p2 != NULL) {
        assert(p3->n_reqs == p2->n_reqs);
        for (size_t i = 0; i < p2->n_reqs; i++) {
            const struct hrana_req *r = &p2->reqs[i];
            assert(strcmp(hrana_req_type_name(r->type), "unknown") != 0);
            if (r->type == HRANA_REQ_EXECUTE)
                round_trip(&r->stmt, (int)(seed & 2));
            for (size_t s = 0; s < r->n_steps; s++)
                round_trip(&r->steps[s].stmt, (int)(seed & 4));
            if (r->type == HRANA_REQ_BATCH)
                eval_conds(r, seed);
        }
    }
    if (p3 != NULL) {
        for (size_t i = 0; i < p3->n_reqs; i++) {
            if (p3->reqs[i].type == HRANA_REQ_BATCH)
                eval_conds(&p3->reqs[i], seed);
        }
    }
    hrana_pipeline_free(p2);
    hrana_pipeline_free(p3);
    return 0;
}
