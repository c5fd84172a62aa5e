/* boomerang: running a sidecar program on the primary (see job.h).
 *
 * One Primary.Execute for the whole program when its shape allows
 * (@libsql/client's batches: BEGIN; s1..sn chained on ok; COMMIT; ROLLBACK
 * → MODE_ATOMIC; an interactive transaction's first batch → MODE_BEGIN; its
 * later batches → MODE_CONTINUE); otherwise step by step, one call per step,
 * with the conditions evaluated here and transaction control mapped to the
 * request's mode (the primary refuses BEGIN/COMMIT as SQL). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/grpc.h"
#include "common/log.h"
#include "common/util.h"
#include "proxy/forward.h"
#include "proxy/job.h"
#include "proxy/streams.h"

/* ---- primary execution ---------------------------------------------------------------- */

static Boomerang__V1__ExecuteRequest *exreq_new(struct job *job, Boomerang__V1__Mode mode)
{
    Boomerang__V1__ExecuteRequest *r = xmalloc(sizeof(*r));

    boomerang__v1__execute_request__init(r);
    r->database = (char *)(job->sh->conf->database ? job->sh->conf->database : "");
    r->mode = mode;
    if (mode != BOOMERANG__V1__MODE__MODE_BEGIN && mode != BOOMERANG__V1__MODE__MODE_AUTOCOMMIT &&
        mode != BOOMERANG__V1__MODE__MODE_ATOMIC)
        r->transaction_id = job->st->ptx;
    return r;
}

static void exreq_add(struct job *job, Boomerang__V1__ExecuteRequest *r, const struct pstep *s)
{
    /* A statement that did not prepare here counts as a write only if it
     * commits something (note_response sees its txid). */
    if (s->kind == LOCAL_WRITE)
        job->did_write = 1;
    r->statements = xrealloc(r->statements, (r->n_statements + 1) * sizeof(*r->statements));
    r->statements[r->n_statements++] = forward_stmt(s->sql, s->stmt);
}

static void exreq_free(Boomerang__V1__ExecuteRequest *r)
{
    for (size_t i = 0; i < r->n_statements; i++)
        forward_stmt_free(r->statements[i]);
    free(r->statements);
    free(r);
}

static void on_execute(void *arg, int status, const char *message,
                       Boomerang__V1__ExecuteResponse *resp, uint64_t applied, uint64_t conn_gen);

static void send_call(struct job *job, Boomerang__V1__ExecuteRequest *r, enum call call)
{
    job->prog.call = call;
    link_execute(job->sh->link, r, job->sh->conf->forward_timeout_s, job->w->q, on_execute, job);
    exreq_free(r);
}

/* Map the statement results of a call to steps first.. (in order, skipping
 * the steps in skip[] that have no statement). Returns whether all succeeded. */
static int map_results(struct job *job, const Boomerang__V1__ExecuteResponse *resp, size_t first,
                       size_t count)
{
    struct prog *p = &job->prog;
    int all_ok = 1;

    for (size_t j = 0; j < count; j++) {
        size_t k = first + j;
        struct hrana_error e;
        size_t mark = p->sr.len;
        if (!resp || j >= resp->n_results) {
            program_step_skip(p, k);
            all_ok = 0;
            continue;
        }
        job_comma(&p->sr, k);
        enum forward_outcome o = forward_result(resp->results[j], p->steps[k].stmt->want_rows,
                                                job->sh->conf->max_response_bytes, &p->sr, &e);
        if (o == FORWARD_OK) {
            job_comma(&p->se, k);
            job_put(&p->se, "null");
            p->ran[k] = 1;
            continue;
        }
        p->sr.len = mark;
        all_ok = 0;
        if (o == FORWARD_SKIPPED)
            program_step_skip(p, k);
        else
            program_step_err(p, k, &e);
    }
    return all_ok;
}

/* @libsql/client's batch: BEGIN; s1 ok(0); ... sn ok(n-1); COMMIT ok(n);
 * [ROLLBACK not(ok(n+1))], with no transaction control inside. */
static int shape_atomic(const struct prog *p, size_t *n_stmts)
{
    size_t n = p->n, k;

    if (n < 2 || !program_is_begin(p->steps[0].kind) || p->steps[0].cond)
        return 0;
    for (k = 1; k < n && p->steps[k].kind != LOCAL_COMMIT; k++) {
        const struct pstep *s = &p->steps[k];
        if (program_is_begin(s->kind) || s->kind == LOCAL_ROLLBACK || s->kind == LOCAL_EMPTY ||
            s->many || s->noop || !s->cond || s->cond->type != HRANA_COND_OK ||
            s->cond->step != k - 1)
            return 0;
    }
    if (k == n || !p->steps[k].cond || p->steps[k].cond->type != HRANA_COND_OK ||
        p->steps[k].cond->step != k - 1)
        return 0;
    *n_stmts = k - 1;
    if (k + 1 == n)
        return 1;
    const struct hrana_cond *c = p->steps[k + 1].cond;
    return k + 2 == n && p->steps[k + 1].kind == LOCAL_ROLLBACK && c && c->type == HRANA_COND_NOT &&
           c->n_conds == 1 && c->conds[0].type == HRANA_COND_OK && c->conds[0].step == k;
}

/* Steps from..n-1 are plain statements, each (after the first) on ok(prev). */
static int shape_chain(const struct prog *p, size_t from)
{
    for (size_t k = from; k < p->n; k++) {
        const struct pstep *s = &p->steps[k];
        if (s->kind == LOCAL_EMPTY || s->kind == LOCAL_SAVEPOINT || program_is_begin(s->kind) ||
            s->kind == LOCAL_COMMIT || s->kind == LOCAL_ROLLBACK || s->many || s->noop)
            return 0;
        if (k == from ? s->cond != NULL
                      : (!s->cond || s->cond->type != HRANA_COND_OK || s->cond->step != k - 1))
            return 0;
    }
    return p->n > from;
}

/* Whether the arguments of every plain statement of the program fit its
 * parameters (checked on the replica; a program with a misfit runs step by
 * step, so the misfit fails its own step). */
static int args_fit(struct job *job)
{
    struct prog *p = &job->prog;
    struct hrana_error e;

    for (size_t k = 0; k < p->n; k++) {
        const struct pstep *s = &p->steps[k];
        if (!s->noop && s->kind != LOCAL_UNPREPARED && !program_is_begin(s->kind) &&
            s->kind != LOCAL_COMMIT && s->kind != LOCAL_ROLLBACK &&
            local_check_args(job->w->local, s->sql, s->stmt, &e) != 0)
            return 0;
    }
    return 1;
}

/* Try one call for the whole program. Returns 1 if a call went out. */
static int prim_fast(struct job *job)
{
    struct prog *p = &job->prog;
    Boomerang__V1__ExecuteRequest *r;
    size_t n;

    if (!args_fit(job))
        return 0;

    if (!job->st->ptx && shape_atomic(p, &n) && n > 0) {
        r = exreq_new(job, BOOMERANG__V1__MODE__MODE_ATOMIC);
        for (size_t k = 1; k <= n; k++)
            exreq_add(job, r, &p->steps[k]);
        send_call(job, r, CALL_ATOMIC);
        return 1;
    }
    if (!job->st->ptx && p->n >= 2 && p->steps[0].kind == LOCAL_BEGIN && !p->steps[0].cond &&
        p->steps[1].cond && p->steps[1].cond->type == HRANA_COND_OK &&
        p->steps[1].cond->step == 0 && shape_chain(p, 1)) {
        /* shape_chain wants no condition on its first step: checked above */
        r = exreq_new(job, BOOMERANG__V1__MODE__MODE_BEGIN);
        for (size_t k = 1; k < p->n; k++)
            exreq_add(job, r, &p->steps[k]);
        send_call(job, r, CALL_BEGIN);
        return 1;
    }
    if (job->st->ptx && p->n >= 2 && shape_chain(p, 0)) {
        r = exreq_new(job, BOOMERANG__V1__MODE__MODE_CONTINUE);
        for (size_t k = 0; k < p->n; k++)
            exreq_add(job, r, &p->steps[k]);
        send_call(job, r, CALL_CONTINUE);
        return 1;
    }
    return 0;
}

/* One step of a program run step by step: answered here, or one call. */
static int prim_step(struct job *job, size_t k)
{
    struct prog *p = &job->prog;
    const struct pstep *s = &p->steps[k];
    uint64_t ptx = job->st->ptx;
    Boomerang__V1__ExecuteRequest *r;

    if (program_step_refused(p, k))
        return 0;
    if (program_is_begin(s->kind)) {
        if (ptx) {
            program_step_err_code(p, k, "SQLITE_ERROR",
                                  "cannot start a transaction within a transaction");
            return 0;
        }
        r = exreq_new(job, BOOMERANG__V1__MODE__MODE_BEGIN);
    } else if (s->kind == LOCAL_COMMIT || s->kind == LOCAL_ROLLBACK) {
        if (!ptx) {
            program_step_err_code(p, k, "SQLITE_ERROR",
                                  s->kind == LOCAL_COMMIT
                                      ? "cannot commit - no transaction is active"
                                      : "cannot rollback - no transaction is active");
            return 0;
        }
        r = exreq_new(job, s->kind == LOCAL_COMMIT ? BOOMERANG__V1__MODE__MODE_COMMIT
                                                   : BOOMERANG__V1__MODE__MODE_ROLLBACK);
    } else if (s->kind == LOCAL_SAVEPOINT && !ptx) {
        program_step_err_code(p, k, "SQLITE_ERROR",
                              "SAVEPOINT outside a transaction is not supported here: BEGIN first");
        return 0;
    } else {
        struct hrana_error e;
        if (s->kind != LOCAL_UNPREPARED &&
            local_check_args(job->w->local, s->sql, s->stmt, &e) != 0) {
            program_step_err(p, k, &e);
            return 0;
        }
        r = exreq_new(job, ptx ? BOOMERANG__V1__MODE__MODE_CONTINUE
                               : BOOMERANG__V1__MODE__MODE_AUTOCOMMIT);
        exreq_add(job, r, s);
    }
    send_call(job, r, CALL_STEP);
    return 1;
}

/* Run steps from p->k until one needs a call. */
static enum run prim_stepwise(struct job *job)
{
    struct prog *p = &job->prog;

    while (p->k < p->n) {
        size_t k = p->k++;
        if (!hrana_cond_eval(p->steps[k].cond, p->ran, p->failed, job->st->ptx == 0)) {
            program_step_skip(p, k);
            continue;
        }
        if (prim_step(job, k))
            return RUN_PENDING;
    }
    p->done = 1;
    return RUN_DONE;
}

/* The whole call failed: what the app sees, as a per-step error. */
static void call_error(struct job *job, int status, const char *message, struct hrana_error *e)
{
    if (status == GRPC_FAILED_PRECONDITION && job->st->ptx) {
        hrana_error_set(e, "TRANSACTION_TIMEOUT",
                        "the transaction on the primary has ended (idle timeout or lost "
                        "connection): %s",
                        message ? message : "");
        job->st->ptx = 0;
    } else {
        hrana_error_set(e, "PROXY_ERROR", "primary: %s (%s)", message ? message : "",
                        grpc_status_name(status));
    }
}

static void note_response(struct job *job, const Boomerang__V1__ExecuteResponse *resp,
                          uint64_t conn_gen, int tx_mode)
{
    if (resp->txid) {
        job->write_txid = job_max(job->write_txid, resp->txid);
        job->did_write = 1;
    }
    job->did_primary = 1;
    job->reflect = job_max(job->reflect, resp->head_txid);
    if (tx_mode) {
        if (resp->in_transaction && resp->transaction_id) {
            if (job->st->ptx != resp->transaction_id)
                job->st->ptx_gen = conn_gen;
            job->st->ptx = resp->transaction_id;
        } else {
            job->st->ptx = 0;
        }
    }
}

static void map_atomic(struct job *job, const Boomerang__V1__ExecuteResponse *resp,
                       const struct hrana_error *e)
{
    struct prog *p = &job->prog;
    size_t n = 0;

    (void)shape_atomic(p, &n);
    if (e) {
        program_step_err(p, 0, e);
        for (size_t k = 1; k < p->n; k++)
            program_step_skip(p, k);
        return;
    }
    program_step_ok(p, 0);
    int ok = map_results(job, resp, 1, n);
    /* COMMIT ran if every statement succeeded; else the ROLLBACK did */
    if (ok)
        program_step_ok(p, n + 1);
    else
        program_step_skip(p, n + 1);
    if (n + 2 < p->n) {
        if (ok)
            program_step_skip(p, n + 2);
        else
            program_step_ok(p, n + 2);
    }
}

static void map_step(struct job *job, const Boomerang__V1__ExecuteResponse *resp,
                     const struct hrana_error *e)
{
    struct prog *p = &job->prog;
    size_t k = p->k - 1;
    enum local_kind kind = p->steps[k].kind;

    if (e) {
        program_step_err(p, k, e);
    } else if (program_is_begin(kind) || kind == LOCAL_ROLLBACK) {
        program_step_ok(p, k);
    } else if (kind == LOCAL_COMMIT) {
        /* MODE_COMMIT with no statements: its one result is the COMMIT's */
        (void)map_results(job, resp, k, 1);
    } else {
        (void)map_results(job, resp, k, 1);
    }
}

static void on_execute(void *arg, int status, const char *message,
                       Boomerang__V1__ExecuteResponse *resp, uint64_t applied, uint64_t conn_gen)
{
    struct job *job = arg;
    struct prog *p = &job->prog;
    struct hrana_error e, *err = NULL;
    enum call call = p->call;
    int tx_mode =
        call == CALL_BEGIN || call == CALL_CONTINUE ||
        (call == CALL_STEP && (job->st->ptx || program_is_begin(p->steps[p->k - 1].kind)));

    (void)applied;
    p->call = CALL_NONE;
    if (status != GRPC_OK || !resp) {
        call_error(job, status, message, &e);
        err = &e;
    } else {
        note_response(job, resp, conn_gen, tx_mode);
    }
    if (call == CALL_ATOMIC) {
        map_atomic(job, resp, err);
        p->done = 1;
    } else if (call == CALL_BEGIN || call == CALL_CONTINUE) {
        size_t first = call == CALL_BEGIN ? 1 : 0;
        if (call == CALL_BEGIN)
            err ? program_step_err(p, 0, err) : program_step_ok(p, 0);
        if (err) {
            for (size_t k = first; k < p->n; k++)
                (call == CALL_CONTINUE && k == 0) ? program_step_err(p, k, err)
                                                  : program_step_skip(p, k);
        } else {
            (void)map_results(job, resp, first, p->n - first);
        }
        p->done = 1;
    } else {
        map_step(job, resp, err);
    }
    if (resp)
        boomerang__v1__execute_response__free_unpacked(resp, NULL);
    pipeline_job_next(job);
}

enum run remote_run(struct job *job)
{
    struct prog *p = &job->prog;

    if (!p->fast_checked) {
        p->fast_checked = 1;
        if (prim_fast(job))
            return RUN_PENDING;
    }
    if (p->done)
        return RUN_DONE;
    return prim_stepwise(job);
}

static void on_rollback(void *arg, int status, const char *message,
                        Boomerang__V1__ExecuteResponse *resp, uint64_t applied, uint64_t conn_gen)
{
    (void)arg;
    (void)applied;
    (void)conn_gen;
    if (status != GRPC_OK)
        log_debug("roll back an abandoned transaction failed: %s", message ? message : "");
    if (resp)
        boomerang__v1__execute_response__free_unpacked(resp, NULL);
}

/* Roll back what a stream holds open (its ltx is closed by stream_free). */
void remote_end_tx(struct proxy_shared *sh, struct stream *st, struct loopq *q)
{
    if (st->ptx) {
        Boomerang__V1__ExecuteRequest r = BOOMERANG__V1__EXECUTE_REQUEST__INIT;
        r.database = (char *)(sh->conf->database ? sh->conf->database : "");
        r.mode = BOOMERANG__V1__MODE__MODE_ROLLBACK;
        r.transaction_id = st->ptx;
        link_execute(sh->link, &r, sh->conf->forward_timeout_s, q, on_rollback, NULL);
        st->ptx = 0;
    }
}
