/* boomerang: run one client statement and build its protobuf result.
 *
 * The writer connection is shared by every client in a group commit, so
 * connection-wide state must not leak between them: last_insert_rowid is
 * reset before each statement, and affected rows are only reported for a
 * statement that changed rows itself. */
#include "primary/exec.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/sqlcode.h"
#include "primary/authz.h"

static Boomerang__V1__StatementResult *result_new(void)
{
    Boomerang__V1__StatementResult *r = xmalloc(sizeof(*r));
    boomerang__v1__statement_result__init(r);
    return r;
}

Boomerang__V1__StatementResult *exec_empty_result(void)
{
    return result_new();
}

Boomerang__V1__StatementResult *exec_error_result(const char *code, int extended_code,
                                                  const char *message)
{
    Boomerang__V1__StatementResult *r = result_new();
    Boomerang__V1__Error *e = xmalloc(sizeof(*e));

    boomerang__v1__error__init(e);
    e->code = xstrdup(code);
    e->message = xstrdup(message);
    e->extended_code = extended_code;
    r->error = e;
    return r;
}

static const char *skip_space_and_comments(const char *p)
{
    for (;;) {
        while (isspace((unsigned char)*p))
            p++;
        if (p[0] == '-' && p[1] == '-') {
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

int exec_first_keyword_is(const char *sql, const char *kw)
{
    const char *p = skip_space_and_comments(sql);
    size_t n = strlen(kw);
    return strncasecmp(p, kw, n) == 0 && !isalnum((unsigned char)p[n]) && p[n] != '_';
}

static int bind_value(sqlite3_stmt *stmt, int idx, const Boomerang__V1__Value *v)
{
    if (!v)
        return sqlite3_bind_null(stmt, idx);
    switch (v->kind_case) {
    case BOOMERANG__V1__VALUE__KIND_INTEGER:
        return sqlite3_bind_int64(stmt, idx, v->integer);
    case BOOMERANG__V1__VALUE__KIND_REAL:
        return sqlite3_bind_double(stmt, idx, v->real);
    case BOOMERANG__V1__VALUE__KIND_TEXT:
        return sqlite3_bind_text(stmt, idx, v->text, -1, SQLITE_STATIC);
    case BOOMERANG__V1__VALUE__KIND_TEXT_BYTES:
        /* TEXT holding a NUL: bound by length, so it stays whole. */
        return sqlite3_bind_text64(stmt, idx,
                                   v->text_bytes.data ? (const char *)v->text_bytes.data : "",
                                   v->text_bytes.len, SQLITE_STATIC, SQLITE_UTF8);
    case BOOMERANG__V1__VALUE__KIND_BLOB:
        return sqlite3_bind_blob64(stmt, idx, v->blob.data ? (const void *)v->blob.data : "",
                                   v->blob.len, SQLITE_STATIC);
    default:
        return sqlite3_bind_null(stmt, idx);
    }
}

/* A named argument may come with its prefix or without; without, try the
 * three prefixes SQLite accepts, as Hrana servers do. */
static int named_index(sqlite3_stmt *stmt, const char *name)
{
    static const char prefixes[] = ":@$";
    char buf[256];
    int idx;

    if (strchr(prefixes, name[0]))
        return sqlite3_bind_parameter_index(stmt, name);
    for (int i = 0; i < 3; i++) {
        if (snprintf(buf, sizeof(buf), "%c%s", prefixes[i], name) >= (int)sizeof(buf))
            return 0;
        idx = sqlite3_bind_parameter_index(stmt, buf);
        if (idx > 0)
            return idx;
    }
    return 0;
}

static int bind_args(sqlite3_stmt *stmt, const Boomerang__V1__Statement *st, char *err, size_t n)
{
    int nparams = sqlite3_bind_parameter_count(stmt);
    int rc;

    if ((int)st->n_args > nparams) {
        snprintf(err, n, "statement has %d parameters but %zu arguments were given", nparams,
                 st->n_args);
        return SQLITE_RANGE;
    }
    for (size_t i = 0; i < st->n_args; i++) {
        rc = bind_value(stmt, (int)i + 1, st->args[i]);
        if (rc != SQLITE_OK)
            return rc;
    }
    for (size_t i = 0; i < st->n_named_args; i++) {
        const Boomerang__V1__NamedArg *a = st->named_args[i];
        int idx = named_index(stmt, a->name);
        if (idx <= 0) {
            snprintf(err, n, "statement has no parameter named %s", a->name);
            return SQLITE_RANGE;
        }
        rc = bind_value(stmt, idx, a->value);
        if (rc != SQLITE_OK)
            return rc;
    }
    return SQLITE_OK;
}

static void add_columns(sqlite3_stmt *stmt, Boomerang__V1__StatementResult *r)
{
    int n = sqlite3_column_count(stmt);

    r->n_columns = (size_t)n;
    r->columns = xcalloc((size_t)n, sizeof(*r->columns));
    for (int i = 0; i < n; i++) {
        Boomerang__V1__Column *c = xmalloc(sizeof(*c));
        const char *name = sqlite3_column_name(stmt, i);
        const char *decl = sqlite3_column_decltype(stmt, i);
        boomerang__v1__column__init(c);
        c->name = xstrdup(name ? name : "");
        c->decltype = xstrdup(decl ? decl : "");
        r->columns[i] = c;
    }
}

/* A TEXT column as `text`, or as `text_bytes` when it holds a NUL: protobuf-c
 * carries a proto3 string as a NUL-terminated char *, which would cut it.
 * Returns the text's length in bytes. */
static size_t column_text(sqlite3_stmt *stmt, int i, Boomerang__V1__Value *v)
{
    const unsigned char *s = sqlite3_column_text(stmt, i);
    size_t n = (size_t)sqlite3_column_bytes(stmt, i);

    if (s && memchr(s, '\0', n)) {
        v->kind_case = BOOMERANG__V1__VALUE__KIND_TEXT_BYTES;
        v->text_bytes.len = n;
        v->text_bytes.data = xmalloc(n);
        memcpy(v->text_bytes.data, s, n);
        return n;
    }
    v->kind_case = BOOMERANG__V1__VALUE__KIND_TEXT;
    v->text = xmalloc(n + 1);
    if (n)
        memcpy(v->text, s, n);
    v->text[n] = '\0';
    return n;
}

static Boomerang__V1__Value *column_value(sqlite3_stmt *stmt, int i, size_t *bytes)
{
    Boomerang__V1__Value *v = xmalloc(sizeof(*v));
    int n;

    boomerang__v1__value__init(v);
    switch (sqlite3_column_type(stmt, i)) {
    case SQLITE_INTEGER:
        v->kind_case = BOOMERANG__V1__VALUE__KIND_INTEGER;
        v->integer = sqlite3_column_int64(stmt, i);
        *bytes += 10;
        break;
    case SQLITE_FLOAT:
        v->kind_case = BOOMERANG__V1__VALUE__KIND_REAL;
        v->real = sqlite3_column_double(stmt, i);
        *bytes += 9;
        break;
    case SQLITE_TEXT:
        *bytes += column_text(stmt, i, v) + 6;
        break;
    case SQLITE_BLOB:
        v->kind_case = BOOMERANG__V1__VALUE__KIND_BLOB;
        n = sqlite3_column_bytes(stmt, i);
        v->blob.len = (size_t)n;
        v->blob.data = xmalloc((size_t)n);
        if (n > 0)
            memcpy(v->blob.data, sqlite3_column_blob(stmt, i), (size_t)n);
        *bytes += (size_t)n + 6;
        break;
    default:
        v->kind_case = BOOMERANG__V1__VALUE__KIND_NULL;
        v->null = 1;
        *bytes += 2;
        break;
    }
    return v;
}

static void add_row(sqlite3_stmt *stmt, Boomerang__V1__StatementResult *r, size_t *cap,
                    size_t *bytes)
{
    int n = sqlite3_column_count(stmt);
    Boomerang__V1__Row *row = xmalloc(sizeof(*row));

    boomerang__v1__row__init(row);
    row->n_values = (size_t)n;
    row->values = xcalloc((size_t)n, sizeof(*row->values));
    for (int i = 0; i < n; i++)
        row->values[i] = column_value(stmt, i, bytes);
    if (r->n_rows == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        r->rows = xrealloc(r->rows, *cap * sizeof(*r->rows));
    }
    r->rows[r->n_rows++] = row;
}

/* Fill the error of r from the connection (or from the authorizer's reason). */
static void set_error(sqlite3 *db, struct authz *az, int rc, const char *msg,
                      Boomerang__V1__StatementResult *r)
{
    /* SQLite reports some refusals as SQLITE_ERROR ("not authorized to use
     * function"); any refusal recorded during this statement is its cause. */
    const char *refusal = authz_take_refusal(az);
    int ext = msg ? rc : sqlite3_extended_errcode(db);
    Boomerang__V1__StatementResult *e;

    if (refusal) {
        msg = refusal;
        ext = SQLITE_AUTH;
    } else if (!msg) {
        msg = sqlite3_errmsg(db);
    }
    e = exec_error_result(sqlcode_name(ext), ext, msg);
    r->error = e->error;
    e->error = NULL;
    protobuf_c_message_free_unpacked(&e->base, NULL);
}

static int step_rows(sqlite3 *db, sqlite3_stmt *stmt, const Boomerang__V1__Statement *st,
                     const struct exec_limits *lim, Boomerang__V1__StatementResult *r)
{
    size_t cap = 0, bytes = 0;
    int rc;

    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        if (st->skip_rows)
            continue;
        add_row(stmt, r, &cap, &bytes);
        if (bytes > lim->max_result_bytes) {
            char msg[128];
            snprintf(msg, sizeof(msg), "result exceeds the limit of %zu bytes",
                     lim->max_result_bytes);
            set_error(db, NULL, SQLITE_TOOBIG, msg, r);
            return SQLITE_TOOBIG;
        }
    }
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static void clear_rows(Boomerang__V1__StatementResult *r)
{
    for (size_t i = 0; i < r->n_rows; i++)
        protobuf_c_message_free_unpacked(&r->rows[i]->base, NULL);
    free(r->rows);
    r->rows = NULL;
    r->n_rows = 0;
}

static int has_trailing_sql(const char *tail)
{
    return tail && *skip_space_and_comments(tail) != '\0';
}

/* "VACUUM [schema] INTO ...". SQLite reports VACUUM INTO to the authorizer
 * only as the ATTACH it does while running, and in a transaction it fails
 * earlier with "cannot VACUUM from within a transaction"; refusing it by its
 * syntax gives the same clear error in every mode. */
static int is_vacuum_into(const char *sql)
{
    const char *p;

    if (!exec_first_keyword_is(sql, "VACUUM"))
        return 0;
    p = skip_space_and_comments(sql) + strlen("VACUUM");
    if (exec_first_keyword_is(p, "INTO"))
        return 1;
    p = skip_space_and_comments(p);
    while (*p && (isalnum((unsigned char)*p) || *p == '_' || *p == '"' || *p == '[' || *p == ']' ||
                  *p == '`'))
        p++;
    return exec_first_keyword_is(p, "INTO");
}

int exec_request_readonly(sqlite3 *db, const Boomerang__V1__ExecuteRequest *req)
{
    for (size_t i = 0; i < req->n_statements; i++) {
        sqlite3_stmt *stmt = NULL;
        int ro;
        if (sqlite3_prepare_v2(db, req->statements[i]->sql, -1, &stmt, NULL) != SQLITE_OK)
            return 0; /* let the writer report the error */
        ro = !stmt || sqlite3_stmt_readonly(stmt);
        sqlite3_finalize(stmt);
        if (!ro)
            return 0;
    }
    return 1;
}

int exec_statement(sqlite3 *db, struct authz *az, const Boomerang__V1__Statement *st,
                   const struct exec_limits *lim, Boomerang__V1__StatementResult **out,
                   int *readonly)
{
    Boomerang__V1__StatementResult *r = result_new();
    sqlite3_stmt *stmt = NULL;
    const char *tail = NULL;
    sqlite3_int64 before = sqlite3_total_changes64(db);
    char err[256];
    int rc;

    *out = r;
    if (readonly)
        *readonly = 1;
    (void)authz_take_refusal(az); /* forget a stale one */
    if (is_vacuum_into(st->sql)) {
        set_error(db, NULL, SQLITE_AUTH,
                  "VACUUM INTO is not allowed: it writes a file beside the replicated database", r);
        return SQLITE_AUTH;
    }
    rc = sqlite3_prepare_v2(db, st->sql, -1, &stmt, &tail);
    if (rc != SQLITE_OK) {
        set_error(db, az, rc, NULL, r);
        return rc;
    }
    if (has_trailing_sql(tail)) {
        sqlite3_finalize(stmt);
        set_error(db, NULL, SQLITE_MISUSE,
                  "a Statement holds exactly one SQL statement; send the others separately", r);
        return SQLITE_MISUSE;
    }
    if (!stmt) /* only white space or comments */
        return SQLITE_OK;
    if (readonly)
        *readonly = sqlite3_stmt_readonly(stmt);
    err[0] = '\0';
    rc = bind_args(stmt, st, err, sizeof(err));
    if (rc != SQLITE_OK) {
        set_error(db, az, rc, err[0] ? err : NULL, r);
        sqlite3_finalize(stmt);
        return rc;
    }
    add_columns(stmt, r);
    sqlite3_set_last_insert_rowid(db, 0);
    rc = step_rows(db, stmt, st, lim, r);
    if (rc != SQLITE_OK) {
        clear_rows(r);
        if (!r->error)
            set_error(db, az, rc, NULL, r);
    } else if (rc == SQLITE_OK && sqlite3_total_changes64(db) != before) {
        r->affected_row_count = (uint64_t)sqlite3_changes64(db);
        r->last_insert_rowid = sqlite3_last_insert_rowid(db);
        r->has_last_insert_rowid = r->last_insert_rowid != 0;
    }
    sqlite3_finalize(stmt);
    return rc;
}
