/* boomerang: the sidecar's Hrana pipeline handler (see pipeline.h).
 *
 * One struct job per HTTP request. The job walks the pipeline's requests in
 * order; execute, batch and sequence become a "program" of steps (statement,
 * condition, kind from local_classify), which is routed as a whole:
 *
 *   stream has a primary transaction ─────────────────────────▶ PRIMARY
 *   stream has a local read transaction ──────────────────────▶ its connection
 *   consistency primary, a step writes or does not prepare here,
 *   or the program leaves a non-READONLY transaction open ─────▶ PRIMARY
 *   otherwise ─▶ position check (token, floor, strong, staleness,
 *                first catch-up; wait or fall back) ───────────▶ LOCAL
 *
 * Programs are built, routed and run locally in proxy/program.c, and run on
 * the primary in proxy/remote.c (one Execute for the usual shapes, else one
 * per step); their shared structures are in proxy/job.h.
 *
 * Asynchronous steps (a forwarded call, a wait for the replica, a Status
 * round trip) post their completion to the worker's loopq; the job then
 * resumes where it stopped (pipeline_job_next). A write's answer waits until the
 * replica has applied its txid (or the budget runs out: Boomerang-Applied: 0),
 * then raises the sidecar's floor. */
#include "proxy/pipeline.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/grpc.h"
#include "common/http.h"
#include "common/log.h"
#include "common/loopq.h"
#include "common/metrics.h"
#include "proxy/forward.h"
#include "proxy/hrana.h"
#include "proxy/link.h"
#include "proxy/local.h"
#include "proxy/streams.h"
#include "proxy/token.h"
#include "proxy/job.h"

/* ---- metrics ------------------------------------------------------------------ */

static const double wait_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                      0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                      1,      2.5,     5,      10,    30};

void pipeline_metrics_register(struct proxy_shared *sh, struct metrics *m)
{
    static const char reads_help[] = "Pipelines that only read, by where they ran.";
    static const char fb_help[] = "Reads that could not wait for the replica, by fallback.";
    struct proxy_metrics *pm = &sh->metrics;

    pm->reads_local = metrics_counter_new(m, "boomerang_proxy_reads_total", reads_help,
                                          (const char *const[]){"route", "local", NULL});
    pm->reads_primary = metrics_counter_new(m, "boomerang_proxy_reads_total", reads_help,
                                            (const char *const[]){"route", "primary", NULL});
    pm->writes =
        metrics_counter_new(m, "boomerang_proxy_writes_total",
                            "Pipelines forwarded to the primary because they write.", NULL);
    pm->writes_unapplied = metrics_counter_new(
        m, "boomerang_proxy_writes_unapplied_total",
        "Writes answered before the replica applied them (Boomerang-Applied: 0).", NULL);
    pm->fallback_primary = metrics_counter_new(m, "boomerang_proxy_fallbacks_total", fb_help,
                                               (const char *const[]){"kind", "primary", NULL});
    pm->fallback_error = metrics_counter_new(m, "boomerang_proxy_fallbacks_total", fb_help,
                                             (const char *const[]){"kind", "error", NULL});
    pm->fallback_stale = metrics_counter_new(m, "boomerang_proxy_fallbacks_total", fb_help,
                                             (const char *const[]){"kind", "stale", NULL});
    pm->wait_seconds = metrics_histogram_new(
        m, "boomerang_proxy_wait_seconds",
        "Time requests waited for the replica to apply a position (writes and reads).", NULL,
        wait_buckets, ARRAY_LEN(wait_buckets));
}

/* ---- workers ------------------------------------------------------------------ */

int pipeline_open_local(const struct proxy_conf *c, struct local **out)
{
    struct local_config lc = {
        .path = c->replica_path,
        .stmt_timeout_ms = c->stmt_timeout_ms,
        .max_rows = c->max_rows,
        .max_bytes = c->max_response_bytes,
    };
    return local_open(&lc, out);
}

void pipeline_worker_release(struct pipeline_worker *w)
{
    struct hrana_error e;

    if (!w->held)
        return;
    w->held = 0;
    ev_prepare_stop(w->loop, &w->release);
    if (local_autocommit(w->local)) /* an error already ended it */
        return;
    if (local_exec_sql(w->local, "COMMIT", &e) != 0)
        log_warn("end a shared read transaction failed: %s", e.message);
}

static void release_cb(struct ev_loop *loop, ev_prepare *watcher, int revents)
{
    (void)loop;
    (void)revents;
    pipeline_worker_release(container_of(watcher, struct pipeline_worker, release));
}

uint64_t pipeline_worker_snapshot(struct pipeline_worker *w)
{
    uint64_t applied = link_applied(w->sh->link);
    struct hrana_error e;

    if (w->held && w->held_applied == applied && !local_autocommit(w->local))
        return w->held_pos;
    pipeline_worker_release(w);
    /* BEGIN is deferred: the schema read takes the snapshot */
    if (local_exec_sql(w->local, "BEGIN", &e) != 0)
        return 0;
    if (local_exec_sql(w->local, "PRAGMA schema_version", &e) != 0) {
        (void)local_exec_sql(w->local, "ROLLBACK", &e);
        return 0;
    }
    w->held = 1;
    w->held_applied = applied;
    w->held_pos = link_applying(w->sh->link);
    ev_prepare_start(w->loop, &w->release);
    return w->held_pos;
}

int pipeline_worker_new(struct proxy_shared *sh, struct ev_loop *loop, struct loopq *q,
                        struct pipeline_worker **out)
{
    struct pipeline_worker *w = xcalloc(1, sizeof(*w));

    w->sh = sh;
    w->loop = loop;
    w->q = q;
    ev_prepare_init(&w->release, release_cb);
    if (pipeline_open_local(sh->conf, &w->local) != 0) {
        free(w);
        return -1;
    }
    *out = w;
    return 0;
}

size_t pipeline_worker_pending(const struct pipeline_worker *w)
{
    return w->jobs;
}

void pipeline_worker_free(struct pipeline_worker *w)
{
    if (!w)
        return;
    pipeline_worker_release(w);
    local_close(w->local);
    free(w);
}

/* ---- small helpers -------------------------------------------------------------- */

static void raise_floor(struct proxy_shared *sh, uint64_t txid)
{
    uint64_t cur = atomic_load(&sh->floor);

    while (cur < txid && !atomic_compare_exchange_weak(&sh->floor, &cur, txid))
        ;
}

/* An HTTP-level error: content-type exactly application/json (hrana.md §1.10). */
static void respond_error(struct http_request *req, int status, const char *code, const char *fmt,
                          ...) __attribute__((format(printf, 4, 5)));

static void respond_error(struct http_request *req, int status, const char *code, const char *fmt,
                          ...)
{
    char message[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    http_respond_error_code(req, status, code, message, NULL, 0);
}

/* ---- headers -------------------------------------------------------------------- */

static int parse_ms(const char *s, int64_t *out)
{
    char *end;
    long long v;

    if (!s || !*s || *s == '-')
        return -1;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || *end || v < 0)
        return -1;
    *out = v;
    return 0;
}

static int parse_fallback(const char *s, enum proxy_fallback *out)
{
    if (strcasecmp(s, "primary") == 0)
        *out = PROXY_FALLBACK_PRIMARY;
    else if (strcasecmp(s, "error") == 0)
        *out = PROXY_FALLBACK_ERROR;
    else if (strcasecmp(s, "stale") == 0)
        *out = PROXY_FALLBACK_STALE;
    else
        return -1;
    return 0;
}

static int parse_consistency(const char *s, enum cons *out)
{
    static const char *const names[] = {"local", "session", "strong", "primary"};

    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        if (strcasecmp(s, names[i]) == 0) {
            *out = (enum cons)i;
            return 0;
        }
    }
    return -1;
}

static int check_token(struct job *job, const char *s)
{
    int rc = token_parse(job->sh->token_key, s, &job->token);

    if (rc != 0) {
        respond_error(job->req, 400, "TOKEN_INVALID", "Boomerang-Token is %s",
                      rc == TOKEN_ERR_MAC ? "not signed by this cluster's secret" : "malformed");
        return -1;
    }
    if (job->info.database_id[0] && strcmp(job->token.database_id, job->info.database_id) != 0) {
        respond_error(job->req, 400, "TOKEN_OTHER_DATABASE",
                      "Boomerang-Token names database %s; this sidecar replicates %s",
                      job->token.database_id, job->info.database_id);
        return -1;
    }
    job->has_token = 1;
    return 0;
}

/* Read the consistency headers. Returns 0, or -1 after answering 400. */
static int read_headers(struct job *job)
{
    struct http_request *r = job->req;
    const char *v;

    job->cons = CONS_SESSION;
    job->max_staleness_ms = -1;
    job->max_wait_ms = job->sh->conf->max_wait_ms;
    job->fallback = job->sh->conf->fallback;
    if ((v = http_request_header(r, "boomerang-consistency")) && parse_consistency(v, &job->cons)) {
        respond_error(r, 400, "BAD_HEADER",
                      "Boomerang-Consistency must be local, session, strong or primary");
        return -1;
    }
    if ((v = http_request_header(r, "boomerang-max-staleness-ms")) &&
        parse_ms(v, &job->max_staleness_ms)) {
        respond_error(r, 400, "BAD_HEADER", "Boomerang-Max-Staleness-Ms must be an integer >= 0");
        return -1;
    }
    if ((v = http_request_header(r, "boomerang-max-wait-ms")) && parse_ms(v, &job->max_wait_ms)) {
        respond_error(r, 400, "BAD_HEADER", "Boomerang-Max-Wait-Ms must be an integer >= 0");
        return -1;
    }
    if ((v = http_request_header(r, "boomerang-fallback")) && parse_fallback(v, &job->fallback)) {
        respond_error(r, 400, "BAD_HEADER", "Boomerang-Fallback must be primary, error or stale");
        return -1;
    }
    if ((v = http_request_header(r, "boomerang-token")) && *v && check_token(job, v) != 0)
        return -1;
    return 0;
}

/* ---- the position check before local reads ---------------------------------------- */

static void on_pos_wait(void *arg, int reached, uint64_t applied);
static void on_strong(void *arg, int status, const char *message, uint64_t head_txid,
                      const char *database_id, uint64_t epoch);

static double budget_left(const struct job *job)
{
    double left = (double)job->max_wait_ms / 1000.0 - (ev_now(job->w->loop) - job->t0);
    return left > 0 ? left : 0;
}

/* Answer 503 REPLICA_BEHIND (fallback error). */
static void respond_behind(struct job *job)
{
    struct link_info li;
    struct buf body = {0};
    char num[64], retry[24];
    int64_t lag_ms;

    link_info(job->sh->link, &li);
    lag_ms = li.lag_ms;
    job_put(&body, "{\"message\":\"the replica is behind the position this read needs, and waiting "
                   "longer than the budget\",\"code\":\"REPLICA_BEHIND\",\"lag_ms\":");
    snprintf(num, sizeof(num), "%" PRId64 ",\"lag_txids\":%" PRIu64 "}", lag_ms, li.lag_txids);
    job_put(&body, num);
    snprintf(retry, sizeof(retry), "%" PRId64, lag_ms > 1000 ? (lag_ms + 999) / 1000 : 1);
    struct http_header h[] = {{"Retry-After", retry}};
    http_respond(job->req, 503, "application/json", buf_head(&body), buf_avail(&body), h, 1);
    buf_free(&body);
}

/* Waiting would take too long: apply the fallback. Returns RUN_DONE to go
 * on (primary or stale) or RUN_ABORTED (answered 503). */
static enum run fall_back(struct job *job)
{
    struct proxy_metrics *m = &job->sh->metrics;

    job->pos_checked = 1;
    if (job->did_write || job->fallback == PROXY_FALLBACK_PRIMARY) {
        /* after a write of this pipeline, only the primary can show it */
        job->force_primary = 1;
        metrics_counter_inc(m->fallback_primary);
        return RUN_DONE;
    }
    if (job->fallback == PROXY_FALLBACK_STALE) {
        job->stale = 1;
        metrics_counter_inc(m->fallback_stale);
        return RUN_DONE;
    }
    metrics_counter_inc(m->fallback_error);
    return RUN_ABORTED;
}

/* The txid local reads of this job must see, or UINT64_MAX if the replica
 * cannot serve it (a token of a newer history). */
static uint64_t pos_target(struct job *job)
{
    uint64_t t = job->write_txid;

    if (job->pos_checked)
        return t;
    if (job->cons == CONS_SESSION || job->cons == CONS_STRONG) {
        t = job_max(t, atomic_load(&job->sh->floor));
        if (job->has_token && job->token.epoch == job->info.epoch)
            t = job_max(t, job->token.txid);
        else if (job->has_token && job->token.epoch > job->info.epoch)
            return UINT64_MAX;
    }
    if (job->cons == CONS_STRONG)
        t = job_max(t, job->strong_head);
    if (!job->info.caught_up_once)
        t = job_max(t, job_max(job->info.primary_txid, 1));
    return t;
}

/* Before local reads: make sure the replica shows what this job must see.
 * Returns RUN_DONE (go on: locally, or job->force_primary), RUN_PENDING, or
 * RUN_ABORTED (answered). */
static enum run pos_check(struct job *job)
{
    if (job->pos_waiting)
        return RUN_PENDING;
    if (!job->pos_checked && job->max_staleness_ms >= 0) {
        struct link_info li;
        link_info(job->sh->link, &li);
        if (li.lag_ms < 0 || li.lag_ms > job->max_staleness_ms) {
            enum run r = fall_back(job);
            if (r == RUN_ABORTED)
                respond_behind(job);
            return r;
        }
    }
    if (!job->pos_checked && job->cons == CONS_STRONG && !job->strong_done) {
        job->pos_waiting = 1;
        link_status(job->sh->link, budget_left(job) > 0 ? budget_left(job) : 0.001, job->w->q,
                    on_strong, job);
        return RUN_PENDING;
    }
    uint64_t target = pos_target(job);
    if (target != UINT64_MAX && link_applied(job->sh->link) >= target) {
        job->pos_checked = 1;
        return RUN_DONE;
    }
    if (target == UINT64_MAX || budget_left(job) <= 0) {
        enum run r = fall_back(job);
        if (r == RUN_ABORTED)
            respond_behind(job);
        return r;
    }
    job->pos_waiting = 1;
    job->wait_time = ev_now(job->w->loop);
    link_wait(job->sh->link, target, budget_left(job), job->w->q, on_pos_wait, job);
    return RUN_PENDING;
}

static void on_pos_wait(void *arg, int reached, uint64_t applied)
{
    struct job *job = arg;

    (void)applied;
    job->pos_waiting = 0;
    metrics_histogram_observe(job->sh->metrics.wait_seconds, ev_now(job->w->loop) - job->wait_time);
    if (reached) {
        job->pos_checked = 1;
    } else if (fall_back(job) == RUN_ABORTED) {
        respond_behind(job);
        job->req = NULL; /* answered */
    }
    pipeline_job_next(job);
}

static void on_strong(void *arg, int status, const char *message, uint64_t head_txid,
                      const char *database_id, uint64_t epoch)
{
    struct job *job = arg;

    (void)message;
    (void)database_id;
    (void)epoch;
    job->pos_waiting = 0;
    job->strong_done = 1;
    if (status == GRPC_OK) {
        job->strong_head = head_txid;
    } else if (fall_back(job) == RUN_ABORTED) { /* the primary is unreachable */
        respond_behind(job);
        job->req = NULL;
    }
    pipeline_job_next(job);
}

/* ---- running one program ------------------------------------------------------------- */

static enum run prog_continue(struct job *job)
{
    struct prog *p = &job->prog;

    if (p->done)
        return RUN_DONE;
    if (p->route == ROUTE_UNSET || p->route == ROUTE_LOCAL || p->route == ROUTE_LOCAL_TX) {
        if (p->route == ROUTE_UNSET)
            p->route = program_route(job);
        if (p->route != ROUTE_PRIMARY && !job->st->ltx) {
            enum run r = pos_check(job);
            if (r != RUN_DONE)
                return r;
            if (job->force_primary)
                p->route = ROUTE_PRIMARY;
        }
        if (p->route != ROUTE_PRIMARY) {
            program_run_local(job);
            return RUN_DONE;
        }
    }
    return remote_run(job);
}

/* ---- the other requests -------------------------------------------------------------- */

static void emit_ok(struct job *job, const char *type)
{
    job_put(&job->results, "{\"type\":\"ok\",\"response\":{\"type\":\"");
    job_put(&job->results, type);
    job_put(&job->results, "\"}}");
}

static void emit_err(struct job *job, const struct hrana_error *e)
{
    job_put(&job->results, "{\"type\":\"error\",\"error\":");
    hrana_json_error(&job->results, e);
    job_put(&job->results, "}");
}

static void run_describe(struct job *job, const struct hrana_req *r)
{
    struct hrana_error e;
    struct buf res = {0};
    const char *sql = r->sql ? r->sql : stream_sql(job->st, r->sql_id);

    if (local_describe(job->st->ltx ? job->st->ltx : job->w->local, sql, &res, &e) != 0) {
        emit_err(job, &e);
    } else {
        job_put(&job->results, "{\"type\":\"ok\",\"response\":{\"type\":\"describe\",\"result\":");
        buf_append(&job->results, buf_head(&res), buf_avail(&res));
        job_put(&job->results, "}}");
    }
    buf_free(&res);
}

/* Requests that need no program. */
static void run_simple(struct job *job, const struct hrana_req *r)
{
    struct hrana_error e;

    switch (r->type) {
    case HRANA_REQ_STORE_SQL:
        if (stream_store_sql(job->st, r->sql_id, r->sql, &e) != 0)
            emit_err(job, &e);
        else
            emit_ok(job, "store_sql");
        break;
    case HRANA_REQ_CLOSE_SQL:
        stream_close_sql(job->st, r->sql_id);
        emit_ok(job, "close_sql");
        break;
    case HRANA_REQ_CLOSE:
        job->st_closed = 1;
        emit_ok(job, "close");
        break;
    case HRANA_REQ_GET_AUTOCOMMIT:
        job_put(&job->results, "{\"type\":\"ok\",\"response\":{\"type\":\"get_autocommit\","
                               "\"is_autocommit\":");
        job_put(&job->results, job->st->ptx || job->st->ltx ? "false}}" : "true}}");
        break;
    case HRANA_REQ_DESCRIBE:
        run_describe(job, r);
        break;
    default:
        break;
    }
}

/* ---- the job ----------------------------------------------------------------------- */

static void job_free(struct job *job)
{
    job->w->jobs--;
    program_free(&job->prog);
    buf_free(&job->results);
    hrana_pipeline_free(job->pl);
    free(job);
}

/* Finish the stream: a closed one ends its transactions and is freed, an open
 * one gets its next baton (written to baton, "" if none). Returns -1 if the
 * table is full (then the stream was ended). */
static int finish_stream(struct job *job, char *baton)
{
    struct stream *st = job->st;

    baton[0] = '\0';
    if (!st)
        return 0;
    if (!job->st_closed && !job->st_registered) {
        if (streams_register(job->sh->streams, st) != STREAMS_OK) {
            job->st_closed = 1;
            finish_stream(job, baton);
            return -1;
        }
        job->st_registered = 1;
    }
    if (job->st_closed) {
        if (job->st_registered)
            streams_remove(job->sh->streams, st);
        remote_end_tx(job->sh, st, job->w->q);
        streams_free_stream(st);
    } else {
        streams_release(job->sh->streams, job->sh->baton_key, st, baton);
    }
    job->st = NULL;
    return 0;
}

static void count_job(struct job *job)
{
    struct proxy_metrics *m = &job->sh->metrics;

    if (job->did_write)
        metrics_counter_inc(m->writes);
    else if (job->did_primary)
        metrics_counter_inc(m->reads_primary);
    else if (job->did_local)
        metrics_counter_inc(m->reads_local);
}

static void respond_ok(struct job *job)
{
    char baton[BATON_LEN + 1], tok[TOKEN_MAX_LEN];
    struct http_header h[3];
    size_t nh = 0;
    struct buf body = {0};
    struct link_info li;

    if (finish_stream(job, baton) != 0) {
        respond_error(job->req, 503, "TOO_MANY_STREAMS",
                      "too many open Hrana streams: close streams or raise --max-streams");
        return;
    }
    job_put(&body, "{\"baton\":");
    if (baton[0]) {
        job_put(&body, "\"");
        job_put(&body, baton);
        job_put(&body, "\"");
    } else {
        job_put(&body, "null");
    }
    job_put(&body, ",\"base_url\":null,\"results\":[");
    buf_append(&body, buf_head(&job->results), buf_avail(&job->results));
    job_put(&body, "]}");
    link_info(job->sh->link, &li);
    if (li.database_id[0]) {
        struct token t = {.epoch = li.epoch};
        memcpy(t.database_id, li.database_id, sizeof(t.database_id));
        t.txid = job_max(job->reflect, job->write_txid);
        if (!job->did_local && !job->did_primary)
            t.txid = job_max(t.txid, li.applied_txid); /* nothing read: where we stand */
        token_format(job->sh->token_key, &t, tok);
        h[nh++] = (struct http_header){"Boomerang-Token", tok};
    }
    if (job->stale)
        h[nh++] = (struct http_header){"Boomerang-Stale", "1"};
    if (job->unapplied)
        h[nh++] = (struct http_header){"Boomerang-Applied", "0"};
    http_respond(job->req, 200, "application/json", buf_head(&body), buf_avail(&body), h, nh);
    buf_free(&body);
}

static void on_ack_wait(void *arg, int reached, uint64_t applied)
{
    struct job *job = arg;

    (void)applied;
    metrics_histogram_observe(job->sh->metrics.wait_seconds, ev_now(job->w->loop) - job->wait_time);
    if (!reached) {
        job->unapplied = 1;
        metrics_counter_inc(job->sh->metrics.writes_unapplied);
    }
    raise_floor(job->sh, job->write_txid);
    count_job(job);
    respond_ok(job);
    job_free(job);
}

/* All requests ran: wait for this job's writes to come back, then answer. */
static void job_finish(struct job *job)
{
    if (job->write_txid && link_applied(job->sh->link) < job->write_txid) {
        job->wait_time = ev_now(job->w->loop);
        link_wait(job->sh->link, job->write_txid, budget_left(job), job->w->q, on_ack_wait, job);
        return;
    }
    if (job->write_txid)
        raise_floor(job->sh, job->write_txid);
    count_job(job);
    respond_ok(job);
    job_free(job);
}

/* An answered job (fallback error): end the stream and free. */
static void job_abort(struct job *job)
{
    char baton[BATON_LEN + 1];

    if (job->st) {
        job->st_closed = 1;
        (void)finish_stream(job, baton);
    }
    job_free(job);
}

void pipeline_job_next(struct job *job)
{
    const struct hrana_pipeline *pl = job->pl;

    if (!job->req) {
        job_abort(job);
        return;
    }
    while (job->i < pl->n_reqs) {
        const struct hrana_req *r = &pl->reqs[job->i];
        if (!job->in_prog) {
            if (r->type != HRANA_REQ_EXECUTE && r->type != HRANA_REQ_BATCH &&
                r->type != HRANA_REQ_SEQUENCE) {
                job_comma(&job->results, job->nresults++);
                run_simple(job, r);
                job->i++;
                continue;
            }
            program_build(job, r);
            job->in_prog = 1;
        }
        enum run rr = prog_continue(job);
        if (rr == RUN_PENDING)
            return;
        if (rr == RUN_ABORTED || !job->req) {
            job_abort(job);
            return;
        }
        job_comma(&job->results, job->nresults++);
        program_emit(job);
        program_free(&job->prog);
        job->in_prog = 0;
        job->i++;
    }
    job_finish(job);
}

/* ---- entry ------------------------------------------------------------------------- */

/* The sql_ids known at some point of the pre-check: the stream's, plus and
 * minus the store_sql/close_sql requests before it. */
struct idset {
    const struct stream *st;
    int32_t *added, *removed;
    size_t na, nr;
};

static int idset_has(const struct idset *s, int32_t id)
{
    for (size_t q = 0; q < s->na; q++)
        if (s->added[q] == id)
            return 1;
    for (size_t q = 0; q < s->nr; q++)
        if (s->removed[q] == id)
            return 0;
    return stream_sql(s->st, id) != NULL;
}

static void idset_close(struct idset *s, int32_t id)
{
    for (size_t q = 0; q < s->na; q++)
        if (s->added[q] == id)
            s->added[q] = s->added[--s->na];
    s->removed[s->nr++] = id;
}

/* Whether request i refers to a sql_id that is not there. */
static int refs_missing(const struct idset *ids, const struct hrana_req *r, size_t i, char *msg,
                        size_t len)
{
    if (r->type == HRANA_REQ_EXECUTE && r->stmt.has_sql_id && !idset_has(ids, r->stmt.sql_id)) {
        snprintf(msg, len, "requests[%zu]: unknown sql_id %d", i, r->stmt.sql_id);
        return 1;
    }
    if ((r->type == HRANA_REQ_SEQUENCE || r->type == HRANA_REQ_DESCRIBE) && r->has_sql_id &&
        !idset_has(ids, r->sql_id)) {
        snprintf(msg, len, "requests[%zu]: unknown sql_id %d", i, r->sql_id);
        return 1;
    }
    for (size_t k = 0; r->type == HRANA_REQ_BATCH && k < r->n_steps; k++) {
        if (r->steps[k].stmt.has_sql_id && !idset_has(ids, r->steps[k].stmt.sql_id)) {
            snprintf(msg, len, "requests[%zu].batch.steps[%zu]: unknown sql_id %d", i, k,
                     r->steps[k].stmt.sql_id);
            return 1;
        }
    }
    return 0;
}

/* Check every sql_id reference against the stream's texts and the
 * store_sql/close_sql requests before it, so that a pipeline that would fail
 * on one (a protocol error: 400) fails before it runs anything. */
static int check_sql_ids(const struct job *job, char *msg, size_t len)
{
    const struct hrana_pipeline *pl = job->pl;
    struct idset ids = {.st = job->st};
    int rc = 0;

    ids.added = xcalloc(pl->n_reqs + 1, sizeof(int32_t));
    ids.removed = xcalloc(pl->n_reqs + 1, sizeof(int32_t));
    for (size_t i = 0; i < pl->n_reqs && rc == 0; i++) {
        const struct hrana_req *r = &pl->reqs[i];
        if (r->type == HRANA_REQ_STORE_SQL) {
            if (idset_has(&ids, r->sql_id)) {
                snprintf(msg, len, "requests[%zu]: sql_id %d is already stored", i, r->sql_id);
                rc = -1;
            }
            ids.added[ids.na++] = r->sql_id;
        } else if (r->type == HRANA_REQ_CLOSE_SQL) {
            idset_close(&ids, r->sql_id);
        } else if (refs_missing(&ids, r, i, msg, len)) {
            rc = -1;
        }
    }
    free(ids.added);
    free(ids.removed);
    return rc;
}

static int take_stream(struct job *job)
{
    static const char *const why[] = {
        [-STREAMS_INVALID] = "the baton is not valid for this sidecar",
        [-STREAMS_REUSED] = "the baton was already used: requests on a stream must be sequential",
        [-STREAMS_EXPIRED] = "the stream has expired or was closed",
        [-STREAMS_BUSY] = "another request is running on this stream",
    };
    static const char *const codes[] = {
        [-STREAMS_INVALID] = "BATON_INVALID",
        [-STREAMS_REUSED] = "BATON_REUSED",
        [-STREAMS_EXPIRED] = "STREAM_EXPIRED",
        [-STREAMS_BUSY] = "STREAM_BUSY",
    };

    if (!job->pl->baton) {
        job->st = streams_new_stream();
        return 0;
    }
    int rc = streams_take(job->sh->streams, job->sh->baton_key, job->pl->baton, &job->st);
    if (rc == STREAMS_OK) {
        job->st_registered = 1;
        return 0;
    }
    if (rc < STREAMS_BUSY || rc > STREAMS_INVALID)
        rc = STREAMS_INVALID;
    respond_error(job->req, 400, codes[-rc], "%s", why[-rc]);
    return -1;
}

void pipeline_handle(struct pipeline_worker *w, struct http_request *req, int version)
{
    struct job *job = xcalloc(1, sizeof(*job));
    size_t len;
    const uint8_t *body = http_request_body(req, &len);
    char err[512];

    w->jobs++;
    job->w = w;
    job->sh = w->sh;
    job->req = req;
    job->version = version;
    job->t0 = ev_now(w->loop);
    link_info(w->sh->link, &job->info);
    /* Classification prepares on w->local: it must see the replica's schema
     * as of now, not a snapshot shared since the replica moved on. */
    if (w->held && w->held_applied != link_applied(w->sh->link))
        pipeline_worker_release(w);
    if (read_headers(job) != 0)
        goto done;
    if (hrana_pipeline_decode(body, len, version, &job->pl, err, sizeof(err)) != 0) {
        respond_error(req, 400, "PROTOCOL_ERROR", "%s", err);
        goto done;
    }
    if (take_stream(job) != 0)
        goto done;
    if (check_sql_ids(job, err, sizeof(err)) != 0) {
        respond_error(req, 400, "PROTOCOL_ERROR", "%s", err);
        job->req = NULL;
        job_abort(job);
        return;
    }
    pipeline_job_next(job);
    return;

done:
    job_free(job);
}

/* ---- stream expiry ------------------------------------------------------------------ */

void pipeline_expire_streams(struct proxy_shared *sh, struct loopq *q)
{
    struct stream *gone[64];
    size_t n;

    do {
        n = streams_expire(sh->streams, (double)mono_us() / 1e6, gone, ARRAY_LEN(gone));
        for (size_t i = 0; i < n; i++) {
            log_debug("stream %016" PRIx64 " expired", gone[i]->id);
            remote_end_tx(sh, gone[i], q);
            streams_free_stream(gone[i]);
        }
    } while (n == ARRAY_LEN(gone));
}
