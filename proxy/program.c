/* boomerang: a sidecar request's steps (see job.h).
 *
 * An execute, batch or sequence becomes a program: one step per statement,
 * with its batch condition and its kind from local_classify(). This file
 * builds programs, decides where they run (program_route), runs them on the
 * replica, and writes their Hrana results; proxy/remote.c runs them on the
 * primary. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/buf.h"
#include "common/util.h"
#include "proxy/job.h"
#include "proxy/streams.h"

static const struct hrana_stmt no_rows_stmt = {.want_rows = 0};

/* Whether sql is `PRAGMA [main.]foreign_keys = ...` (or `(...)`). The primary
 * runs every client's writes on one connection, so a per-connection setting
 * cannot follow one client: such statements are answered here, unchanged
 * (client.migrate() wraps migrations in foreign_keys=off/on). */
static int is_fk_pragma(const char *sql)
{
    const char *p = sql;

    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (strncasecmp(p, "PRAGMA", 6) != 0)
        return 0;
    p += 6;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (strncasecmp(p, "main.", 5) == 0)
        p += 5;
    if (strncasecmp(p, "foreign_keys", 12) != 0)
        return 0;
    p += 12;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    return *p == '=' || *p == '(';
}

/* ---- programs: building and routing ------------------------------------------------ */

static const char *stmt_sql(const struct job *job, const struct hrana_stmt *s)
{
    return s->sql ? s->sql : stream_sql(job->st, s->sql_id);
}

void program_free(struct prog *p)
{
    free(p->steps);
    free(p->ran);
    free(p->failed);
    free(p->chain);
    free(p->split);
    buf_free(&p->sr);
    buf_free(&p->se);
    memset(p, 0, sizeof(*p));
}

static void prog_alloc(struct prog *p, enum hrana_req_type type, size_t n)
{
    memset(p, 0, sizeof(*p));
    p->type = type;
    p->n = n;
    p->steps = xcalloc(n ? n : 1, sizeof(*p->steps));
    p->ran = xcalloc(n ? n : 1, 1);
    p->failed = xcalloc(n ? n : 1, 1);
}

static void classify(struct job *job, struct pstep *s)
{
    struct hrana_error e;

    if (is_fk_pragma(s->sql)) {
        s->noop = 1;
        s->kind = LOCAL_WRITE;
        return;
    }
    s->kind = local_classify(job->w->local, s->sql, &s->many, &e);
}

/* Build the program for request r (execute, batch or sequence). */
void program_build(struct job *job, const struct hrana_req *r)
{
    struct prog *p = &job->prog;

    if (r->type == HRANA_REQ_EXECUTE) {
        prog_alloc(p, r->type, 1);
        p->steps[0].stmt = &r->stmt;
        p->steps[0].sql = stmt_sql(job, &r->stmt);
    } else if (r->type == HRANA_REQ_BATCH) {
        prog_alloc(p, r->type, r->n_steps);
        for (size_t k = 0; k < r->n_steps; k++) {
            p->steps[k].stmt = &r->steps[k].stmt;
            p->steps[k].sql = stmt_sql(job, &r->steps[k].stmt);
            p->steps[k].cond = r->steps[k].cond;
        }
    } else {
        char **v;
        size_t n = local_split_sql(r->sql ? r->sql : stream_sql(job->st, r->sql_id), &v);
        prog_alloc(p, r->type, n);
        p->split = v;
        p->chain = xcalloc(n ? n : 1, sizeof(*p->chain));
        for (size_t k = 0; k < n; k++) {
            p->steps[k].stmt = &no_rows_stmt;
            p->steps[k].sql = v[k];
            if (k > 0) {
                p->chain[k].type = HRANA_COND_OK;
                p->chain[k].step = (uint32_t)(k - 1);
                p->steps[k].cond = &p->chain[k];
            }
        }
    }
    for (size_t k = 0; k < p->n; k++)
        classify(job, &p->steps[k]);
}

/* Run the program's conditions as if every step succeeded: does it leave a
 * transaction open, and was that one begun READONLY? */
static int leaves_tx_open(const struct prog *p, int *readonly)
{
    uint8_t *ran = xcalloc(p->n ? p->n : 1, 1), *failed = xcalloc(p->n ? p->n : 1, 1);
    int in_tx = 0;

    *readonly = 0;
    for (size_t k = 0; k < p->n; k++) {
        if (!hrana_cond_eval(p->steps[k].cond, ran, failed, !in_tx))
            continue;
        ran[k] = 1;
        if (program_is_begin(p->steps[k].kind)) {
            in_tx = 1;
            *readonly = p->steps[k].kind == LOCAL_BEGIN_READONLY;
        } else if (p->steps[k].kind == LOCAL_COMMIT || p->steps[k].kind == LOCAL_ROLLBACK) {
            in_tx = 0;
        }
    }
    free(ran);
    free(failed);
    return in_tx;
}

enum route program_route(struct job *job)
{
    struct prog *p = &job->prog;
    int ro;

    if (job->st->ptx)
        return ROUTE_PRIMARY;
    if (job->st->ltx)
        return ROUTE_LOCAL;
    if (job->cons == CONS_PRIMARY || job->force_primary)
        return ROUTE_PRIMARY;
    for (size_t k = 0; k < p->n; k++) {
        if (p->steps[k].noop)
            continue;
        if (p->steps[k].kind == LOCAL_WRITE || p->steps[k].kind == LOCAL_UNPREPARED)
            return ROUTE_PRIMARY;
    }
    if (leaves_tx_open(p, &ro))
        return ro ? ROUTE_LOCAL_TX : ROUTE_PRIMARY;
    return ROUTE_LOCAL;
}

/* ---- recording step outcomes ------------------------------------------------------- */

void program_step_ok(struct prog *p, size_t k)
{
    job_comma(&p->sr, k);
    job_comma(&p->se, k);
    hrana_json_empty_result(&p->sr);
    job_put(&p->se, "null");
    p->ran[k] = 1;
}

void program_step_err(struct prog *p, size_t k, const struct hrana_error *e)
{
    job_comma(&p->sr, k);
    job_comma(&p->se, k);
    job_put(&p->sr, "null");
    hrana_json_error(&p->se, e);
    p->ran[k] = 1;
    p->failed[k] = 1;
    if (!p->has_err) {
        p->first_err = *e;
        p->has_err = 1;
    }
}

void program_step_skip(struct prog *p, size_t k)
{
    job_comma(&p->sr, k);
    job_comma(&p->se, k);
    job_put(&p->sr, "null");
    job_put(&p->se, "null");
}

void program_step_err_code(struct prog *p, size_t k, const char *code, const char *msg)
{
    struct hrana_error e;

    hrana_error_set(&e, code, "%s", msg);
    program_step_err(p, k, &e);
}

/* A step that cannot run anywhere (no statement, several): its error. */
int program_step_refused(struct prog *p, size_t k)
{
    if (p->steps[k].kind == LOCAL_EMPTY) {
        program_step_err_code(p, k, "SQL_NO_STATEMENT", "the SQL text holds no statement");
        return 1;
    }
    if (p->steps[k].many) {
        program_step_err_code(
            p, k, "SQL_MANY_STATEMENTS",
            "the SQL text holds more than one statement: use a batch or a sequence");
        return 1;
    }
    if (p->steps[k].noop) {
        program_step_ok(p, k);
        return 1;
    }
    return 0;
}

/* ---- local execution --------------------------------------------------------------- */

static void local_step(struct prog *p, size_t k, struct local *conn, int in_ltx)
{
    const struct pstep *s = &p->steps[k];
    struct hrana_error e;
    size_t mark_sr = p->sr.len;

    if (program_step_refused(p, k))
        return;
    switch (s->kind) {
    case LOCAL_BEGIN:
    case LOCAL_BEGIN_READONLY:
    case LOCAL_COMMIT:
    case LOCAL_ROLLBACK: {
        /* a read-only connection cannot BEGIN IMMEDIATE: every BEGIN is deferred here */
        const char *sql = program_is_begin(s->kind) ? "BEGIN" : s->sql;
        if (local_exec_sql(conn, sql, &e) != 0)
            program_step_err(p, k, &e);
        else
            program_step_ok(p, k);
        return;
    }
    case LOCAL_WRITE:
    case LOCAL_UNPREPARED:
        if (in_ltx) {
            program_step_err_code(
                p, k, "SQLITE_READONLY",
                "cannot write in a read-only transaction (BEGIN TRANSACTION READONLY)");
            return;
        }
        break;
    default:
        break;
    }
    job_comma(&p->sr, k);
    if (local_execute(conn, s->sql, s->stmt, &p->sr, &e) != 0) {
        p->sr.len = mark_sr;
        program_step_err(p, k, &e);
        return;
    }
    job_comma(&p->se, k);
    job_put(&p->se, "null");
    p->ran[k] = 1;
}

/* shared: conn holds the worker's shared read transaction, which the
 * program must see as autocommit (is_autocommit conditions). */
static void run_local(struct job *job, struct local *conn, int in_ltx, int shared)
{
    struct prog *p = &job->prog;

    for (size_t k = 0; k < p->n; k++) {
        int autocommit = shared || local_autocommit(conn);
        if (!hrana_cond_eval(p->steps[k].cond, p->ran, p->failed, autocommit)) {
            program_step_skip(p, k);
            continue;
        }
        local_step(p, k, conn, in_ltx);
    }
    p->done = 1;
}

/* Whether a step begins, ends or nests a transaction. */
static int has_tx_control(const struct prog *p)
{
    for (size_t k = 0; k < p->n; k++) {
        enum local_kind kind = p->steps[k].kind;
        if (program_is_begin(kind) || kind == LOCAL_COMMIT || kind == LOCAL_ROLLBACK ||
            kind == LOCAL_SAVEPOINT)
            return 1;
    }
    return 0;
}

/* The program runs on the replica, after the position check. */
void program_run_local(struct job *job)
{
    struct prog *p = &job->prog;
    struct stream *st = job->st;
    struct hrana_error e;

    job->did_local = 1;
    if (p->route == ROUTE_LOCAL_TX && !st->ltx) {
        if (pipeline_open_local(job->sh->conf, &st->ltx) != 0) {
            hrana_error_set(&e, "SQLITE_CANTOPEN", "cannot open the replica for a transaction");
            for (size_t k = 0; k < p->n; k++)
                k == 0 ? program_step_err(p, k, &e) : program_step_skip(p, k);
            p->done = 1;
            return;
        }
    }
    if (st->ltx) {
        run_local(job, st->ltx, 1, 0);
        if (local_autocommit(st->ltx)) { /* COMMIT or ROLLBACK ended it */
            local_close(st->ltx);
            st->ltx = NULL;
            job->reflect = job_max(job->reflect, st->ltx_pos);
        } else {
            if (!st->ltx_pos)
                st->ltx_pos = link_applying(job->sh->link);
            job->reflect = job_max(job->reflect, st->ltx_pos);
        }
        return;
    }
    uint64_t pos = has_tx_control(p) ? 0 : pipeline_worker_snapshot(job->w);
    if (pos) {
        run_local(job, job->w->local, 0, 1);
        job->reflect = job_max(job->reflect, pos);
        return;
    }
    pipeline_worker_release(job->w);
    run_local(job, job->w->local, 0, 0);
    if (!local_autocommit(job->w->local)) {
        /* conditions left a transaction open that routing did not foresee */
        (void)local_exec_sql(job->w->local, "ROLLBACK", &e);
    }
    job->reflect = job_max(job->reflect, link_applying(job->sh->link));
}

/* Append the finished program's result to the pipeline's results. */
void program_emit(struct job *job)
{
    struct prog *p = &job->prog;
    struct buf *out = &job->results;

    if (p->type == HRANA_REQ_EXECUTE) {
        if (p->failed[0]) {
            job_put(out, "{\"type\":\"error\",\"error\":");
            buf_append(out, buf_head(&p->se), buf_avail(&p->se));
            job_put(out, "}");
        } else if (!p->ran[0]) {
            job_put(
                out,
                "{\"type\":\"error\",\"error\":{\"message\":\"not run\",\"code\":\"SKIPPED\"}}");
        } else {
            job_put(out, "{\"type\":\"ok\",\"response\":{\"type\":\"execute\",\"result\":");
            buf_append(out, buf_head(&p->sr), buf_avail(&p->sr));
            job_put(out, "}}");
        }
    } else if (p->type == HRANA_REQ_BATCH) {
        job_put(out,
                "{\"type\":\"ok\",\"response\":{\"type\":\"batch\",\"result\":{\"step_results\":[");
        buf_append(out, buf_head(&p->sr), buf_avail(&p->sr));
        job_put(out, "],\"step_errors\":[");
        buf_append(out, buf_head(&p->se), buf_avail(&p->se));
        job_put(out, "]}}}");
    } else if (p->has_err) {
        job_put(out, "{\"type\":\"error\",\"error\":");
        hrana_json_error(out, &p->first_err);
        job_put(out, "}");
    } else {
        job_put(out, "{\"type\":\"ok\",\"response\":{\"type\":\"sequence\"}}");
    }
}
