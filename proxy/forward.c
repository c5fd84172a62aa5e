/* boomerang: Hrana statements to Primary.Execute and back (proxy/forward.h).
 *
 *   struct hrana_stmt ─▶ forward_stmt() ─▶ Boomerang__V1__Statement (malloc'd tree)
 *   Boomerang__V1__StatementResult ─▶ forward_result() ─▶ Hrana StmtResult JSON
 *                                                       | struct hrana_error
 *                                                       | FORWARD_SKIPPED
 *
 * The Statement tree is built by hand (protobuf-c's __INIT macros, every
 * field malloc'd here) rather than through an unpacked message, so
 * forward_stmt_free() frees exactly what forward_stmt() allocated: the
 * statement, its sql, each Value (with its text, text_bytes or blob copy), each NamedArg
 * (with its name) and the two pointer arrays.
 *
 * A result from the primary is trusted for its content but still checked for
 * shape: a row whose number of values differs from the number of columns is
 * answered as a PROXY_ERROR rather than written as malformed JSON. */
#include "proxy/forward.h"

#include <stdlib.h>
#include <string.h>

#include "common/sqlcode.h"
#include "common/util.h"

/* ---- Hrana -> protobuf ------------------------------------------------------- */

static ProtobufCBinaryData bytes_copy(const void *data, size_t len)
{
    ProtobufCBinaryData b = {len, xmalloc(len ? len : 1)};

    if (len)
        memcpy(b.data, data, len);
    return b;
}

static Boomerang__V1__Value *value_new(const struct hrana_value *v)
{
    Boomerang__V1__Value init = BOOMERANG__V1__VALUE__INIT;
    Boomerang__V1__Value *p = xmalloc(sizeof(*p));

    *p = init;
    switch (v->type) {
    case HRANA_VALUE_NULL:
        p->kind_case = BOOMERANG__V1__VALUE__KIND_NULL;
        p->null = 1;
        break;
    case HRANA_VALUE_INTEGER:
        p->kind_case = BOOMERANG__V1__VALUE__KIND_INTEGER;
        p->integer = v->integer;
        break;
    case HRANA_VALUE_FLOAT:
        p->kind_case = BOOMERANG__V1__VALUE__KIND_REAL;
        p->real = v->real;
        break;
    case HRANA_VALUE_TEXT:
        /* proto3 strings are NUL-terminated in protobuf-c: text holding a
         * NUL goes as text_bytes, which carries its length. */
        if (v->len && memchr(v->bytes, '\0', v->len)) {
            p->kind_case = BOOMERANG__V1__VALUE__KIND_TEXT_BYTES;
            p->text_bytes = bytes_copy(v->bytes, v->len);
            break;
        }
        p->kind_case = BOOMERANG__V1__VALUE__KIND_TEXT;
        p->text = xmalloc(v->len + 1);
        if (v->len)
            memcpy(p->text, v->bytes, v->len);
        p->text[v->len] = '\0';
        break;
    case HRANA_VALUE_BLOB:
        p->kind_case = BOOMERANG__V1__VALUE__KIND_BLOB;
        p->blob = bytes_copy(v->bytes, v->len);
        break;
    }
    return p;
}

static void value_free(Boomerang__V1__Value *p)
{
    if (!p)
        return;
    if (p->kind_case == BOOMERANG__V1__VALUE__KIND_TEXT)
        free(p->text);
    else if (p->kind_case == BOOMERANG__V1__VALUE__KIND_BLOB)
        free(p->blob.data);
    else if (p->kind_case == BOOMERANG__V1__VALUE__KIND_TEXT_BYTES)
        free(p->text_bytes.data);
    free(p);
}

Boomerang__V1__Statement *forward_stmt(const char *sql, const struct hrana_stmt *st)
{
    Boomerang__V1__Statement init = BOOMERANG__V1__STATEMENT__INIT;
    Boomerang__V1__Statement *s = xmalloc(sizeof(*s));

    *s = init;
    s->sql = xstrdup(sql ? sql : "");
    s->skip_rows = !st->want_rows;
    if (st->n_args) {
        s->args = xcalloc(st->n_args, sizeof(*s->args));
        for (size_t i = 0; i < st->n_args; i++)
            s->args[i] = value_new(&st->args[i]);
        s->n_args = st->n_args;
    }
    if (st->n_named_args) {
        s->named_args = xcalloc(st->n_named_args, sizeof(*s->named_args));
        for (size_t i = 0; i < st->n_named_args; i++) {
            Boomerang__V1__NamedArg ainit = BOOMERANG__V1__NAMED_ARG__INIT;
            Boomerang__V1__NamedArg *a = xmalloc(sizeof(*a));

            *a = ainit;
            a->name = xstrdup(st->named_args[i].name);
            a->value = value_new(&st->named_args[i].value);
            s->named_args[i] = a;
        }
        s->n_named_args = st->n_named_args;
    }
    return s;
}

void forward_stmt_free(Boomerang__V1__Statement *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n_args; i++)
        value_free(s->args[i]);
    free(s->args);
    for (size_t i = 0; i < s->n_named_args; i++) {
        free(s->named_args[i]->name);
        value_free(s->named_args[i]->value);
        free(s->named_args[i]);
    }
    free(s->named_args);
    free(s->sql);
    free(s);
}

/* ---- error codes ------------------------------------------------------------- */

/* The primary name whose text is code[0..len), or NULL. The primary result
 * codes are all below 256, so scanning them is enough (error path only). */
static const char *primary_name(const char *code, size_t len)
{
    for (int i = 0; i < 256; i++) {
        const char *name = sqlcode_name(i);

        if (strlen(name) == len && memcmp(name, code, len) == 0 &&
            strcmp(name, "SQLITE_UNKNOWN") != 0)
            return name;
    }
    return NULL;
}

const char *forward_code(const char *code, int extended_code)
{
    const char *second;
    const char *name;

    if (!code || !*code)
        return extended_code ? sqlcode_name(extended_code & 0xff) : "SQLITE_UNKNOWN";
    if (strncmp(code, "SQLITE_", 7) != 0)
        return code; /* our own codes (TIMEOUT, ...) pass through */
    if (extended_code)
        return sqlcode_name(extended_code & 0xff);
    second = strchr(code + 7, '_');
    if (!second)
        return code; /* already a primary name: "SQLITE_AUTH" */
    name = primary_name(code, (size_t)(second - code));
    return name ? name : code;
}

/* ---- protobuf -> Hrana JSON -------------------------------------------------- */

static void write_value(struct hrana_stmt_out *so, const Boomerang__V1__Value *v)
{
    switch (v ? v->kind_case : BOOMERANG__V1__VALUE__KIND__NOT_SET) {
    case BOOMERANG__V1__VALUE__KIND_INTEGER:
        hrana_stmt_out_integer(so, v->integer);
        break;
    case BOOMERANG__V1__VALUE__KIND_REAL:
        hrana_stmt_out_float(so, v->real);
        break;
    case BOOMERANG__V1__VALUE__KIND_TEXT:
        hrana_stmt_out_text(so, v->text, strlen(v->text));
        break;
    case BOOMERANG__V1__VALUE__KIND_TEXT_BYTES: /* TEXT holding a NUL */
        hrana_stmt_out_text(so, v->text_bytes.data ? (const char *)v->text_bytes.data : "",
                            v->text_bytes.len);
        break;
    case BOOMERANG__V1__VALUE__KIND_BLOB:
        hrana_stmt_out_blob(so, v->blob.data, v->blob.len);
        break;
    default: /* NULL, or the oneof unset: SQL NULL too (proto comment) */
        hrana_stmt_out_null(so);
        break;
    }
}

static int too_large(const struct hrana_stmt_out *so, size_t max_bytes)
{
    return max_bytes && hrana_stmt_out_bytes(so) > max_bytes;
}

/* Write the rows; 0, or -1 with err filled (the caller aborts the output). */
static int write_rows(const Boomerang__V1__StatementResult *r, size_t max_bytes,
                      struct hrana_stmt_out *so, struct hrana_error *err)
{
    for (size_t i = 0; i < r->n_rows; i++) {
        const Boomerang__V1__Row *row = r->rows[i];

        if (row->n_values != r->n_columns) {
            hrana_error_set(err, "PROXY_ERROR",
                            "malformed result from the primary: row %zu has %zu values for %zu "
                            "columns",
                            i, row->n_values, r->n_columns);
            return -1;
        }
        hrana_stmt_out_row(so);
        for (size_t j = 0; j < row->n_values; j++)
            write_value(so, row->values[j]);
        if (too_large(so, max_bytes)) {
            hrana_error_set(err, "RESPONSE_TOO_LARGE", "response is too large: more than %zu bytes",
                            max_bytes);
            return -1;
        }
    }
    return 0;
}

static enum forward_outcome result_error(const Boomerang__V1__Error *e, struct hrana_error *err)
{
    const char *code = e->code ? e->code : "";

    if (strcmp(code, "SKIPPED") == 0)
        return FORWARD_SKIPPED;
    hrana_error_set(err, forward_code(code, e->extended_code), "%s", e->message ? e->message : "");
    return FORWARD_ERROR;
}

enum forward_outcome forward_result(const Boomerang__V1__StatementResult *r, int want_rows,
                                    size_t max_bytes, struct buf *out, struct hrana_error *err)
{
    struct hrana_stmt_out so;
    size_t start = out->len;

    if (r->error)
        return result_error(r->error, err);
    hrana_stmt_out_begin(&so, out);
    for (size_t i = 0; i < r->n_columns; i++) {
        const char *decltype = r->columns[i]->decltype;

        /* The proto has "" for an expression column; Hrana has null. */
        hrana_stmt_out_col(&so, r->columns[i]->name, decltype &&*decltype ? decltype : NULL);
    }
    if (want_rows && write_rows(r, max_bytes, &so, err) != 0)
        goto fail;
    hrana_stmt_out_end(&so, r->affected_row_count, r->has_last_insert_rowid, r->last_insert_rowid);
    if (too_large(&so, max_bytes)) {
        hrana_error_set(err, "RESPONSE_TOO_LARGE", "response is too large: more than %zu bytes",
                        max_bytes);
        out->len = start; /* the result is complete: abort() is for half-written ones */
        return FORWARD_ERROR;
    }
    return FORWARD_OK;

fail:
    hrana_stmt_out_abort(&so);
    return FORWARD_ERROR;
}
