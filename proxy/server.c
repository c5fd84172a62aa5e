/* boomerang: the sidecar's app-facing threads and their HTTP endpoints
 * (see proxy/server.h; the endpoints' contract is README.md "Sidecar").
 *
 * Everything a thread runs is set up on the main thread before the thread
 * starts (loop, queue, worker, bound server): a bind error then fails the
 * start cleanly, and the port the first server got is known before the next
 * binds it. pthread_create orders those writes before the thread's reads; a
 * libev loop may be built on one thread and run on another.
 *
 * Stopping: server_shutdown posts http_server_shutdown to each thread, which
 * then polls its connection count (every 10 ms, only while shutting down)
 * and reports to the main thread once it reaches 0. server_stop posts the
 * final step behind whatever the link has queued already, so a reply to a
 * request in flight is delivered (or dropped) before the server goes. */
#include "proxy/server.h"

#include <errno.h>
#include <ev.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/auth.h"
#include "common/buf.h"
#include "common/http.h"
#include "common/log.h"
#include "common/loopq.h"
#include "common/metrics.h"
#include "proxy/link.h"
#include "proxy/pipeline.h"

#define SERVER_DRAIN_POLL_S 0.01

struct app_thread {
    struct server *srv;
    unsigned idx;
    pthread_t tid;
    int started;
    struct ev_loop *loop;
    struct loopq *q;
    struct pipeline_worker *worker;
    struct http_server *http;
    ev_async keep;  /* an active watcher: the loop lives until server_stop */
    ev_timer drain; /* after shutdown: wait for the connections to finish */
};

struct server {
    struct server_config cfg;
    struct app_thread *th;
    unsigned n;
    int port;
    unsigned drained; /* threads done draining (main thread only) */
    int shutting_down;
};

/* ---- responses ----------------------------------------------------------------- */

static void __attribute__((format(printf, 2, 3))) bprintf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n <= 0)
        return;
    buf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void respond_json(struct http_request *req, int status, struct buf *b)
{
    http_respond(req, status, "application/json", buf_head(b), buf_avail(b), NULL, 0);
}

static const char *or_empty(const char *s)
{
    return s ? s : "";
}

/* ---- endpoints ----------------------------------------------------------------- */

static void get_version(struct app_thread *t, struct http_request *req)
{
    static const char text[] = "boomerang-proxy: Hrana over HTTP (JSON)\n";

    (void)t;
    http_respond(req, 200, "text/plain; charset=utf-8", text, sizeof(text) - 1, NULL, 0);
}

static void get_health(struct app_thread *t, struct http_request *req)
{
    (void)t;
    http_respond(req, 200, "text/plain; charset=utf-8", "ok\n", 3, NULL, 0);
}

/* The fields /ready and /v1/status share. */
static void lag_fields(struct buf *b, const struct link_info *li)
{
    bprintf(b, "\"applied_txid\":%llu,\"primary_txid\":%llu,\"lag_txids\":%llu,\"lag_ms\":%lld",
            (unsigned long long)li->applied_txid, (unsigned long long)li->primary_txid,
            (unsigned long long)li->lag_txids, (long long)li->lag_ms);
}

/* 200 once the replica caught up with the primary at least once since the
 * start (it then serves reads even while briefly behind: the consistency
 * headers and the floor bound what a read sees), else 503. */
static void get_ready(struct app_thread *t, struct http_request *req)
{
    struct link_info li;
    struct buf b = {0};
    char reason[160];
    const char *state;

    link_info(t->srv->cfg.sh->link, &li);
    state = or_empty(li.state);
    if (!li.caught_up_once)
        snprintf(reason, sizeof(reason),
                 "the replica has not caught up with the primary since start "
                 "(state %s, primary connection %s)",
                 state, or_empty(li.connection));
    else if (strcmp(state, "LIVE") != 0)
        snprintf(reason, sizeof(reason), "caught up since start; now %s", state);
    else
        snprintf(reason, sizeof(reason), "caught up with the primary");
    bprintf(&b, "{\"ready\":%s,\"state\":", li.caught_up_once ? "true" : "false");
    http_json_string(&b, state, strlen(state));
    buf_append(&b, ",\"reason\":", 10);
    http_json_string(&b, reason, strlen(reason));
    buf_append(&b, ",", 1);
    lag_fields(&b, &li);
    buf_append(&b, "}", 1);
    respond_json(req, li.caught_up_once ? 200 : 503, &b);
    buf_free(&b);
}

static void get_status(struct app_thread *t, struct http_request *req)
{
    const struct proxy_shared *sh = t->srv->cfg.sh;
    const char *db = or_empty(sh->conf->database);
    struct link_info li;
    struct buf b = {0};

    link_info(sh->link, &li);
    buf_append(&b, "{\"database\":", 12);
    http_json_string(&b, db, strlen(db));
    buf_append(&b, ",\"database_id\":", 15);
    http_json_string(&b, li.database_id, strlen(li.database_id));
    bprintf(&b, ",\"epoch\":%llu,", (unsigned long long)li.epoch);
    lag_fields(&b, &li);
    buf_append(&b, ",\"primary_connection\":", 22);
    http_json_string(&b, or_empty(li.connection), strlen(or_empty(li.connection)));
    buf_append(&b, ",\"state\":", 9);
    http_json_string(&b, or_empty(li.state), strlen(or_empty(li.state)));
    bprintf(&b, ",\"floor_txid\":%llu,\"ready\":%s}",
            (unsigned long long)atomic_load(&t->srv->cfg.sh->floor),
            li.caught_up_once ? "true" : "false");
    respond_json(req, 200, &b);
    buf_free(&b);
}

/* GET /metrics is rendered on the main (link) thread: the replica link's
 * collectors read its state there, without locks. The app thread answers. */
struct metrics_job {
    struct app_thread *t;
    struct http_request *req;
    struct buf body;
};

static void metrics_answer_fn(void *arg)
{
    struct metrics_job *j = arg;

    http_respond(j->req, 200, METRICS_CONTENT_TYPE, buf_head(&j->body), buf_avail(&j->body), NULL,
                 0);
    buf_free(&j->body);
    free(j);
}

static void metrics_render_fn(void *arg)
{
    struct metrics_job *j = arg;

    metrics_render(j->t->srv->cfg.metrics, &j->body);
    loopq_post(j->t->q, metrics_answer_fn, j);
}

static void get_metrics(struct app_thread *t, struct http_request *req)
{
    struct metrics_job *j = xcalloc(1, sizeof(*j));

    j->t = t;
    j->req = req;
    loopq_post(t->srv->cfg.main_q, metrics_render_fn, j);
}

static void post_v2(struct app_thread *t, struct http_request *req)
{
    pipeline_handle(t->worker, req, 2);
}

static void post_v3(struct app_thread *t, struct http_request *req)
{
    pipeline_handle(t->worker, req, 3);
}

struct route {
    const char *path;
    const char *method; /* "GET" also answers HEAD */
    void (*fn)(struct app_thread *t, struct http_request *req);
};

static const struct route routes[] = {
    {"/v2/pipeline", "POST", post_v2}, {"/v3/pipeline", "POST", post_v3},
    {"/v2", "GET", get_version},       {"/v3", "GET", get_version},
    {"/health", "GET", get_health},    {"/ready", "GET", get_ready},
    {"/v1/status", "GET", get_status}, {"/metrics", "GET", get_metrics},
};

static int method_is(const char *method, const char *want)
{
    return strcmp(method, want) == 0 || (strcmp(want, "GET") == 0 && strcmp(method, "HEAD") == 0);
}

/* Every request but GET /health needs a bearer token when tokens are set. */
static int authorized(const struct app_thread *t, struct http_request *req, const char *method,
                      const char *path)
{
    const struct auth *a = t->srv->cfg.app_auth;

    if (!a || (strcmp(path, "/health") == 0 && method_is(method, "GET")))
        return 1;
    return auth_check_bearer(a, http_request_header(req, "authorization"));
}

static void app_request_cb(void *arg, struct http_request *req)
{
    struct app_thread *t = arg;
    const char *method = http_request_method(req), *path = http_request_path(req);

    if (!authorized(t, req, method, path)) {
        static const struct http_header www = {"WWW-Authenticate", "Bearer"};
        http_respond_error_code(req, 401, "UNAUTHORIZED",
                                "missing or invalid Authorization: Bearer token", &www, 1);
        return;
    }
    for (size_t i = 0; i < ARRAY_LEN(routes); i++) {
        if (strcmp(path, routes[i].path) != 0)
            continue;
        if (method_is(method, routes[i].method)) {
            routes[i].fn(t, req);
        } else {
            struct http_header allow = {"Allow", routes[i].method[0] == 'G' ? "GET, HEAD" : "POST"};
            http_respond_error_code(req, 405, "METHOD_NOT_ALLOWED", "method not allowed", &allow,
                                    1);
        }
        return;
    }
    http_respond_error(req, 404,
                       "not found: the sidecar serves POST /v2/pipeline, POST /v3/pipeline, "
                       "GET /health, /ready, /v1/status and /metrics");
}

/* ---- threads ------------------------------------------------------------------- */

static void app_keep_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop, (void)w, (void)revents;
}

/* Main thread: one more thread has no connection left. */
static void server_drained_fn(void *arg)
{
    struct server *s = arg;

    if (++s->drained == s->n)
        s->cfg.on_drained(s->cfg.arg);
}

static void app_drain_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct app_thread *t = container_of(w, struct app_thread, drain);

    (void)revents;
    if (http_server_conn_count(t->http) > 0 || pipeline_worker_pending(t->worker) > 0)
        return;
    ev_timer_stop(loop, w);
    loopq_post(t->srv->cfg.main_q, server_drained_fn, t->srv);
}

static void app_shutdown_fn(void *arg)
{
    struct app_thread *t = arg;

    http_server_shutdown(t->http);
    ev_timer_start(t->loop, &t->drain);
}

/* The last thing a thread runs: requests still open are cancelled (and
 * answered by the worker into the void), then its loop ends. */
static void app_stop_fn(void *arg)
{
    struct app_thread *t = arg;

    http_server_free(t->http);
    t->http = NULL;
    ev_timer_stop(t->loop, &t->drain);
    ev_async_stop(t->loop, &t->keep);
    ev_break(t->loop, EVBREAK_ALL);
}

/* After its loop: what the thread owns, on the thread (or on the main thread
 * for a thread that never ran). */
static void app_teardown(struct app_thread *t)
{
    if (t->q)
        loopq_drain(t->q);
    http_server_free(t->http);
    t->http = NULL;
    pipeline_worker_free(t->worker);
    t->worker = NULL;
    loopq_free(t->q);
    t->q = NULL;
    if (t->loop)
        ev_loop_destroy(t->loop);
    t->loop = NULL;
}

static void *app_thread_main(void *arg)
{
    struct app_thread *t = arg;

    ev_run(t->loop, 0);
    app_teardown(t);
    return NULL;
}

/* ---- start and stop ------------------------------------------------------------ */

/* With SO_REUSEPORT a second process of this user could bind the same port
 * and silently take half the connections; refuse a port someone listens on. */
static int probe_port_free(const char *listen_str)
{
    struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res;
    char host[256], portstr[16];
    int port, fd, one = 1, rv = 0;

    if (util_split_hostport(listen_str, host, sizeof(host), &port) != 0 || port == 0)
        return 0; /* http_server_start reports a malformed address */
    snprintf(portstr, sizeof(portstr), "%d", port);
    if (getaddrinfo(host, portstr, &hints, &res) != 0)
        return 0;
    fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, res->ai_protocol);
    if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 && errno == EADDRINUSE) {
        log_error("listen on %s failed: %s", listen_str, strerror(errno));
        rv = -1;
    }
    if (fd >= 0)
        close(fd);
    freeaddrinfo(res);
    return rv;
}

/* The address the threads after the first bind: the first one's host with
 * the port it actually got. */
static void same_address(const struct server *s, char *out, size_t len)
{
    char host[256];
    int port;

    if (util_split_hostport(s->cfg.listen, host, sizeof(host), &port) != 0)
        host[0] = '\0'; /* cannot happen: the first server parsed it */
    snprintf(out, len, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, s->port);
}

static int start_http(struct server *s, struct app_thread *t)
{
    struct http_server_config hc = {0};
    char addr[300];
    enum log_level saved = log_level;
    int rv;

    if (t->idx > 0)
        same_address(s, addr, sizeof(addr));
    hc.listen = t->idx == 0 ? s->cfg.listen : addr;
    hc.unix_path = t->idx == 0 ? s->cfg.unix_path : NULL;
    hc.reuse_port = s->n > 1;
    hc.max_body = s->cfg.max_body;
    hc.max_conns = s->cfg.max_conns;
    hc.on_request = app_request_cb;
    hc.arg = t;
    hc.h2c = 1;
    /* One "listening on" line for the address (the tests read it), not N. */
    if (t->idx > 0 && log_level > LOGL_WARN)
        log_level = LOGL_WARN;
    rv = http_server_start(t->loop, &hc, &t->http);
    log_level = saved;
    if (rv != 0)
        return -1;
    if (t->idx == 0)
        s->port = http_server_port(t->http);
    return 0;
}

static int setup_thread(struct server *s, unsigned idx)
{
    struct app_thread *t = &s->th[idx];

    t->srv = s;
    t->idx = idx;
    t->loop = ev_loop_new(EVFLAG_AUTO);
    if (!t->loop) {
        log_error("start app thread %u failed: ev_loop_new", idx);
        return -1;
    }
    t->q = loopq_new(t->loop);
    ev_async_init(&t->keep, app_keep_cb);
    ev_async_start(t->loop, &t->keep);
    ev_timer_init(&t->drain, app_drain_cb, 0, SERVER_DRAIN_POLL_S);
    if (pipeline_worker_new(s->cfg.sh, t->loop, t->q, &t->worker) != 0)
        return -1;
    return start_http(s, t);
}

int server_start(const struct server_config *cfg, struct server **out)
{
    struct server *s = xcalloc(1, sizeof(*s));
    int rv;

    s->cfg = *cfg;
    s->n = cfg->threads > 0 ? cfg->threads : 1;
    s->th = xcalloc(s->n, sizeof(*s->th));
    if (s->n > 1 && probe_port_free(cfg->listen) != 0)
        goto fail;
    for (unsigned i = 0; i < s->n; i++)
        if (setup_thread(s, i) != 0)
            goto fail;
    for (unsigned i = 0; i < s->n; i++) {
        rv = pthread_create(&s->th[i].tid, NULL, app_thread_main, &s->th[i]);
        if (rv != 0) {
            log_error("start app thread %u failed: %s", i, strerror(rv));
            goto fail;
        }
        s->th[i].started = 1;
    }
    *out = s;
    return 0;

fail:
    server_stop(s);
    return -1;
}

int server_port(const struct server *s)
{
    return s->port;
}

void server_shutdown(struct server *s)
{
    if (s->shutting_down)
        return;
    s->shutting_down = 1;
    for (unsigned i = 0; i < s->n; i++)
        loopq_post(s->th[i].q, app_shutdown_fn, &s->th[i]);
}

void server_stop(struct server *s)
{
    if (!s)
        return;
    for (unsigned i = 0; i < s->n; i++)
        if (s->th[i].started)
            loopq_post(s->th[i].q, app_stop_fn, &s->th[i]);
    for (unsigned i = 0; i < s->n; i++) {
        if (s->th[i].started) {
            int rv = pthread_join(s->th[i].tid, NULL);
            if (rv != 0)
                log_error("join app thread %u failed: %s", i, strerror(rv));
        } else {
            app_teardown(&s->th[i]);
        }
    }
    /* A thread may have reported "drained" just before it stopped: run that
     * now, while s is alive (no thread posts any more). */
    if (s->cfg.main_q)
        loopq_drain(s->cfg.main_q);
    free(s->th);
    free(s);
}
