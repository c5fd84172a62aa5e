/* boomerang-bench-primary: write load on Primary.Execute, closed or open loop.
 *
 *   flags ─▶ K h2clients (connections) ─▶ wait until all CONNECTED
 *         ─▶ [--setup: CREATE TABLE bench]
 *         ─▶ closed loop: N workers, each: Execute ─▶ reply ─▶ record ─▶ Execute ...
 *            open loop (--rate R): call i is due at start + i/R; a timer issues
 *            every due call, however many are still outstanding
 *         ─▶ stop at --duration or --count ─▶ report tx/s and latency percentiles
 *
 * Closed loop: each worker keeps exactly one call outstanding, so N is the
 * concurrency; latency runs from just before the call is handed to the client
 * to its callback. Workers are spread over the connections round-robin.
 *
 * Open loop: a closed loop stops issuing while the server stalls, so the
 * stall shows up in one sample instead of in every call that should have
 * been made meanwhile ("coordinated omission"). With --rate, calls are
 * scheduled at fixed intervals and latency runs from the call's scheduled
 * time, so time a call spent waiting to be issued counts too. The loop uses
 * libev's select backend there: epoll's timeout has millisecond resolution
 * and would issue each call up to 1 ms late (select takes microseconds; the
 * few sockets here are far below FD_SETSIZE). late_max_us reports the
 * largest delay between a call's schedule and its issue, to show that the
 * generator itself kept up.
 *
 * Latency goes, in microseconds, into a log-linear histogram
 * (tests/bench/hist.h: a reported percentile is within 1/16 of the truth). */
#include <ev.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/grpc.h"
#include "common/h2client.h"
#include "common/log.h"
#include "common/opt.h"
#include "common/tls.h"
#include "common/util.h"
#include "proto/boomerang.pb-c.h"
#include "tests/bench/hist.h"

#define EXECUTE_PATH "/boomerang.v1.Primary/Execute"
#define SETUP_SQL    "CREATE TABLE IF NOT EXISTS bench(id INTEGER PRIMARY KEY, v BLOB)"
#define DEFAULT_SQL  "INSERT INTO bench(v) VALUES(randomblob(?))"

/* ---- flags ---------------------------------------------------------------------------*/

static struct {
    const char *url, *sql, *database, *tls_ca, *auth_token_file, *log_level;
    int64_t clients, conns, duration, count, row_bytes, timeout, rate;
    int setup, json;
} conf = {
    .url = "http://127.0.0.1:5001",
    .sql = DEFAULT_SQL,
    .database = "",
    .log_level = "warn",
    .clients = 1,
    .conns = 1,
    .row_bytes = 100,
    .timeout = 10,
};

static const struct opt opts[] = {
    {"url", "BOOMERANG_BENCH_URL", OPT_STRING, &conf.url, "URL",
     "primary, http://host:port or https://host:port (default http://127.0.0.1:5001)"},
    {"clients", "BOOMERANG_BENCH_CLIENTS", OPT_INT, &conf.clients, "N",
     "concurrent calls, each issuing the next when it returns (default 1; not with --rate)"},
    {"rate", "BOOMERANG_BENCH_RATE", OPT_INT, &conf.rate, "R",
     "open loop: issue R calls per second at fixed intervals, whatever is outstanding, and "
     "measure latency from each call's scheduled time"},
    {"conns", "BOOMERANG_BENCH_CONNS", OPT_INT, &conf.conns, "K",
     "HTTP/2 connections the clients are spread over (default 1)"},
    {"duration", "BOOMERANG_BENCH_DURATION", OPT_INT, &conf.duration, "S",
     "run for S seconds (default 10 unless --count is given)"},
    {"count", "BOOMERANG_BENCH_COUNT", OPT_INT, &conf.count, "N", "run N calls in total"},
    {"setup", "BOOMERANG_BENCH_SETUP", OPT_FLAG, &conf.setup, NULL,
     "first create table bench(id INTEGER PRIMARY KEY, v BLOB); alone, only that"},
    {"row-bytes", "BOOMERANG_BENCH_ROW_BYTES", OPT_INT, &conf.row_bytes, "N",
     "bound to the statement's '?' (default 100)"},
    {"sql", "BOOMERANG_BENCH_SQL", OPT_STRING, &conf.sql, "SQL",
     "statement to run (default \"" DEFAULT_SQL "\")"},
    {"database", "BOOMERANG_BENCH_DATABASE", OPT_STRING, &conf.database, "NAME",
     "database name (default: the primary's only one)"},
    {"timeout", "BOOMERANG_BENCH_TIMEOUT", OPT_INT, &conf.timeout, "S",
     "deadline of each call in seconds (default 10)"},
    {"tls-ca", "BOOMERANG_BENCH_TLS_CA", OPT_STRING, &conf.tls_ca, "FILE",
     "CA to verify an https primary (default: the system's)"},
    {"auth-token-file", "BOOMERANG_BENCH_AUTH_TOKEN_FILE", OPT_STRING, &conf.auth_token_file,
     "FILE", "send the token on the file's first line as a bearer token"},
    {"json", "BOOMERANG_BENCH_JSON", OPT_FLAG, &conf.json, NULL,
     "print the result as one JSON line"},
    {"log-level", "BOOMERANG_BENCH_LOG_LEVEL", OPT_STRING, &conf.log_level, "LEVEL",
     "error, warn, info, debug or trace (default warn)"},
};

/* ---- the run ---------------------------------------------------------------------------*/

/* Open loop: calls in flight above this wait (from their scheduled time, so
 * the wait is measured) until one returns; it only bounds memory. */
#define RATE_MAX_INFLIGHT 65536

/* Closed loop: one per client, reused. Open loop: one per call in flight. */
struct worker {
    struct bench *b;
    struct h2client *client;
    int64_t t0; /* issue time (closed loop) or scheduled time (open loop) */
};

struct bench {
    struct ev_loop *loop;
    struct h2client **conns;
    struct worker *workers;
    uint8_t *req; /* the packed ExecuteRequest every call sends */
    size_t req_len;
    int stopping;
    int active; /* workers with a call outstanding */
    uint64_t issued, ok, errors;
    int64_t start_us, end_us;
    int64_t late_max_us; /* open loop: the latest a call was issued after its schedule */
    struct hist hist;
    ev_timer stop_timer;
    ev_timer tick; /* open loop: the next due call */
    char first_error[256];
};

/* 0 if the reply is an ExecuteResponse whose statements all succeeded. */
static int check_reply(struct bench *b, const uint8_t *reply, size_t len)
{
    Boomerang__V1__ExecuteResponse *resp =
        boomerang__v1__execute_response__unpack(NULL, len, reply);
    int rv = 0;

    if (!resp) {
        snprintf(b->first_error, sizeof(b->first_error), "unpack ExecuteResponse failed");
        return -1;
    }
    for (size_t i = 0; i < resp->n_results && rv == 0; i++) {
        const Boomerang__V1__Error *e = resp->results[i]->error;
        if (e) {
            if (!b->first_error[0])
                snprintf(b->first_error, sizeof(b->first_error), "%s: %s", e->code, e->message);
            rv = -1;
        }
    }
    boomerang__v1__execute_response__free_unpacked(resp, NULL);
    return rv;
}

static void worker_issue(struct worker *w);
static void rate_schedule(struct bench *b);

static int count_reached(const struct bench *b)
{
    return conf.count > 0 && b->issued >= (uint64_t)conf.count;
}

static void worker_done_cb(void *arg, enum grpc_status status, const char *message,
                           const uint8_t *reply, size_t len)
{
    struct worker *w = arg;
    struct bench *b = w->b;
    int64_t now = mono_us();

    hist_add(&b->hist, (uint64_t)(now - w->t0));
    b->end_us = now;
    if (status != GRPC_OK) {
        if (!b->first_error[0])
            snprintf(b->first_error, sizeof(b->first_error), "%s: %s", grpc_status_name(status),
                     message ? message : "");
        b->errors++;
    } else if (check_reply(b, reply, len) < 0) {
        b->errors++;
    } else {
        b->ok++;
    }
    if (conf.rate > 0) {
        free(w);
        b->active--;
        rate_schedule(b);
        return;
    }
    if (!b->stopping && !count_reached(b)) {
        worker_issue(w);
        return;
    }
    if (--b->active == 0)
        ev_break(b->loop, EVBREAK_ONE);
}

static void worker_issue(struct worker *w)
{
    struct bench *b = w->b;

    b->issued++;
    w->t0 = mono_us();
    h2client_unary(w->client, EXECUTE_PATH, b->req, b->req_len, (double)conf.timeout,
                   worker_done_cb, w);
}

static void bench_stop_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct bench *b = container_of(t, struct bench, stop_timer);

    (void)loop;
    (void)revents;
    b->stopping = 1; /* the calls in flight still finish and count */
    if (conf.rate > 0)
        rate_schedule(b);
}

/* ---- open loop ------------------------------------------------------------------------*/

/* When call i is due, on the mono_us() clock. Computed from the start, not
 * from the previous call, so timer lateness never accumulates into drift. */
static int64_t rate_due(const struct bench *b, uint64_t i)
{
    return b->start_us + (int64_t)((double)i * 1e6 / (double)conf.rate);
}

/* Issue every call that is due, then arm the timer for the next one; once
 * stopping (or at --count), break the loop when the last call returns. */
static void rate_schedule(struct bench *b)
{
    int64_t now = mono_us();

    while (!b->stopping && !count_reached(b) && b->active < RATE_MAX_INFLIGHT &&
           rate_due(b, b->issued) <= now) {
        struct worker *w = xcalloc(1, sizeof(*w));

        w->b = b;
        w->client = b->conns[b->issued % (uint64_t)conf.conns];
        w->t0 = rate_due(b, b->issued);
        b->late_max_us = MAX(b->late_max_us, now - w->t0);
        b->issued++;
        b->active++;
        h2client_unary(w->client, EXECUTE_PATH, b->req, b->req_len, (double)conf.timeout,
                       worker_done_cb, w);
    }
    ev_timer_stop(b->loop, &b->tick);
    if (b->stopping || count_reached(b)) {
        if (b->active == 0)
            ev_break(b->loop, EVBREAK_ONE);
        return;
    }
    if (b->active >= RATE_MAX_INFLIGHT)
        return;             /* the next reply calls us again */
    ev_now_update(b->loop); /* the timer counts from the loop's cached time */
    ev_timer_set(&b->tick, (double)MAX(rate_due(b, b->issued) - mono_us(), 0) / 1e6, 0.);
    ev_timer_start(b->loop, &b->tick);
}

static void rate_tick_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    rate_schedule(container_of(t, struct bench, tick));
}

/* Pack one ExecuteRequest with sql and, if it has a '?', row_bytes bound. */
static uint8_t *pack_request(const char *sql, int64_t arg, size_t *len)
{
    Boomerang__V1__Value val = BOOMERANG__V1__VALUE__INIT;
    Boomerang__V1__Value *args[1] = {&val};
    Boomerang__V1__Statement stmt = BOOMERANG__V1__STATEMENT__INIT;
    Boomerang__V1__Statement *stmts[1] = {&stmt};
    Boomerang__V1__ExecuteRequest req = BOOMERANG__V1__EXECUTE_REQUEST__INIT;
    uint8_t *out;

    val.kind_case = BOOMERANG__V1__VALUE__KIND_INTEGER;
    val.integer = arg;
    stmt.sql = (char *)sql;
    if (strchr(sql, '?')) {
        stmt.n_args = 1;
        stmt.args = args;
    }
    req.database = (char *)conf.database;
    req.n_statements = 1;
    req.statements = stmts;
    req.mode = BOOMERANG__V1__MODE__MODE_AUTOCOMMIT;
    *len = boomerang__v1__execute_request__get_packed_size(&req);
    out = xmalloc(*len ? *len : 1);
    boomerang__v1__execute_request__pack(&req, out);
    return out;
}

static void connect_check_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct bench *b = t->data;
    int up = 0;

    (void)revents;
    for (int i = 0; i < conf.conns; i++)
        up += h2client_state(b->conns[i]) == H2CLIENT_CONNECTED;
    if (up == conf.conns)
        ev_break(loop, EVBREAK_ONE);
}

static void break_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)t;
    (void)revents;
    ev_break(loop, EVBREAK_ONE);
}

/* Run the loop until every connection is up, or 10 s. Returns 0 or -1. */
static int wait_connected(struct bench *b)
{
    ev_timer check, limit;

    ev_timer_init(&check, connect_check_cb, 0., 0.01);
    check.data = b;
    ev_timer_init(&limit, break_cb, 10., 0.);
    ev_timer_again(b->loop, &check);
    ev_timer_start(b->loop, &limit);
    ev_run(b->loop, 0);
    ev_timer_stop(b->loop, &check);
    ev_timer_stop(b->loop, &limit);
    for (int i = 0; i < conf.conns; i++) {
        if (h2client_state(b->conns[i]) != H2CLIENT_CONNECTED) {
            fprintf(stderr, "boomerang-bench-primary: connect to %s failed (see log)\n", conf.url);
            return -1;
        }
    }
    return 0;
}

static void setup_cb(void *arg, enum grpc_status status, const char *message, const uint8_t *reply,
                     size_t len)
{
    struct bench *b = arg;

    b->active = 0;
    if (status != GRPC_OK)
        snprintf(b->first_error, sizeof(b->first_error), "%s: %s", grpc_status_name(status),
                 message ? message : "");
    else if (check_reply(b, reply, len) == 0)
        b->ok = 1;
    ev_break(b->loop, EVBREAK_ONE);
}

/* Create the bench table. Returns 0 or -1 (reported). */
static int bench_setup(struct bench *b)
{
    size_t len;
    uint8_t *req = pack_request(SETUP_SQL, 0, &len);

    b->active = 1;
    h2client_unary(b->conns[0], EXECUTE_PATH, req, len, (double)conf.timeout, setup_cb, b);
    while (b->active)
        ev_run(b->loop, EVRUN_ONCE);
    free(req);
    if (!b->ok) {
        fprintf(stderr, "boomerang-bench-primary: setup failed: %s\n", b->first_error);
        return -1;
    }
    b->ok = 0;
    return 0;
}

static void bench_run(struct bench *b)
{
    b->req = pack_request(conf.sql, conf.row_bytes, &b->req_len);
    b->workers = xcalloc((size_t)conf.clients, sizeof(*b->workers));
    ev_timer_init(&b->stop_timer, bench_stop_cb, (double)conf.duration, 0.);
    ev_init(&b->tick, rate_tick_cb);
    b->start_us = b->end_us = mono_us();
    if (conf.duration > 0)
        ev_timer_start(b->loop, &b->stop_timer);
    if (conf.rate > 0) {
        rate_schedule(b);
        ev_run(b->loop, 0);
        ev_timer_stop(b->loop, &b->tick);
        ev_timer_stop(b->loop, &b->stop_timer);
        return;
    }
    for (int64_t i = 0; i < conf.clients; i++) {
        struct worker *w = &b->workers[i];
        w->b = b;
        w->client = b->conns[i % conf.conns];
        if (conf.count > 0 && b->issued >= (uint64_t)conf.count)
            break;
        b->active++;
        worker_issue(w);
    }
    if (b->active > 0)
        ev_run(b->loop, 0);
    ev_timer_stop(b->loop, &b->stop_timer);
}

static void bench_report(const struct bench *b)
{
    double secs = (double)(b->end_us - b->start_us) / 1e6;
    double tps = secs > 0 ? (double)b->ok / secs : 0;
    const struct hist *h = &b->hist;

    if (conf.json) {
        printf("{\"clients\":%lld,\"conns\":%lld,\"rate\":%lld,\"row_bytes\":%lld,"
               "\"seconds\":%.3f,\"ok\":%llu,\"errors\":%llu,\"tps\":%.1f,\"p50_us\":%llu,"
               "\"p90_us\":%llu,\"p99_us\":%llu,\"max_us\":%llu,\"late_max_us\":%lld}\n",
               (long long)conf.clients, (long long)conf.conns, (long long)conf.rate,
               (long long)conf.row_bytes, secs, (unsigned long long)b->ok,
               (unsigned long long)b->errors, tps, (unsigned long long)hist_quantile(h, 0.50),
               (unsigned long long)hist_quantile(h, 0.90),
               (unsigned long long)hist_quantile(h, 0.99), (unsigned long long)h->max,
               (long long)b->late_max_us);
    } else {
        if (conf.rate > 0)
            printf("boomerang-bench-primary: open loop at %lld calls/s on %lld connection(s), "
                   "%.2f s (latency from each call's scheduled time; issued at most %lld us "
                   "late)\n",
                   (long long)conf.rate, (long long)conf.conns, secs, (long long)b->late_max_us);
        else
            printf("boomerang-bench-primary: %lld clients on %lld connection(s), %.2f s\n",
                   (long long)conf.clients, (long long)conf.conns, secs);
        printf("  transactions: %llu ok, %llu errors, %.1f tx/s\n", (unsigned long long)b->ok,
               (unsigned long long)b->errors, tps);
        printf("  latency (us): p50 %llu  p90 %llu  p99 %llu  max %llu\n",
               (unsigned long long)hist_quantile(h, 0.50),
               (unsigned long long)hist_quantile(h, 0.90),
               (unsigned long long)hist_quantile(h, 0.99), (unsigned long long)h->max);
    }
    if (b->errors)
        fprintf(stderr, "boomerang-bench-primary: %llu calls failed; first: %s\n",
                (unsigned long long)b->errors, b->first_error);
}

/* Read the token (first line of the file). Returns it (caller frees) or NULL. */
static char *read_token(const char *path)
{
    char *data = NULL;
    size_t len = 0;

    if (util_read_file(path, 4096, &data, &len) < 0) {
        fprintf(stderr, "boomerang-bench-primary: read %s failed\n", path);
        return NULL;
    }
    data[strcspn(data, "\r\n")] = '\0';
    return data;
}

static int check_flags(void)
{
    enum log_level lvl;

    if (log_parse_level(conf.log_level, &lvl) < 0) {
        fprintf(stderr, "boomerang-bench-primary: unknown --log-level '%s'\n", conf.log_level);
        return -1;
    }
    log_level = lvl;
    if (conf.clients < 1 || conf.conns < 1 || conf.conns > 1024 || conf.timeout < 1) {
        fprintf(stderr, "boomerang-bench-primary: --clients, --conns and --timeout must be >= 1 "
                        "(--conns <= 1024)\n");
        return -1;
    }
    if (conf.rate < 0 || conf.rate > 10000000 || (conf.rate > 0 && conf.conns > 64)) {
        fprintf(stderr, "boomerang-bench-primary: --rate must be 1..10000000, with --conns <= 64 "
                        "(the select backend)\n");
        return -1;
    }
    if (conf.duration == 0 && conf.count == 0 && !conf.setup)
        conf.duration = 10;
    return 0;
}

/* Make the K clients. Returns 0 or -1. */
static int bench_connect(struct bench *b, SSL_CTX *tls, const char *token)
{
    struct h2client_config cfg = {.url = conf.url, .tls = tls, .auth_token = token};

    b->conns = xcalloc((size_t)conf.conns, sizeof(*b->conns));
    for (int64_t i = 0; i < conf.conns; i++)
        if (h2client_new(b->loop, &cfg, &b->conns[i]) != 0)
            return -1;
    return wait_connected(b);
}

static void bench_free(struct bench *b)
{
    for (int64_t i = 0; b->conns && i < conf.conns; i++)
        h2client_free(b->conns[i]);
    free(b->conns);
    free(b->workers);
    free(b->req);
}

int main(int argc, char **argv)
{
    struct bench b = {0};
    SSL_CTX *tls = NULL;
    char *token = NULL;
    int rc = 2;

    log_set_program("boomerang-bench-primary");
    int prc = opt_parse("boomerang-bench-primary",
                        "Write load on a primary's Execute RPC, closed or open loop.", opts,
                        (int)ARRAY_LEN(opts), argc, argv);
    if (prc != 0)
        return prc > 0 ? 0 : 2;
    if (check_flags() < 0)
        return 2;
    signal(SIGPIPE, SIG_IGN);
    if (strncmp(conf.url, "https://", 8) == 0 && tls_client_ctx(conf.tls_ca, NULL, NULL, &tls) < 0)
        return 2;
    if (conf.auth_token_file && !(token = read_token(conf.auth_token_file)))
        goto out;
    /* Open loop: select times out in microseconds, epoll in milliseconds. */
    b.loop = ev_default_loop(conf.rate > 0 ? EVBACKEND_SELECT : 0);
    if (!b.loop) {
        fprintf(stderr, "boomerang-bench-primary: no event loop backend\n");
        goto out;
    }
    if (bench_connect(&b, tls, token) < 0)
        goto out;
    if (conf.setup && bench_setup(&b) < 0)
        goto out;
    rc = 0;
    if (conf.duration > 0 || conf.count > 0) {
        bench_run(&b);
        bench_report(&b);
        rc = b.errors || b.ok == 0 ? 1 : 0;
    }
out:
    bench_free(&b);
    SSL_CTX_free(tls);
    free(token);
    return rc;
}
