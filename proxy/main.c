/* boomerang-proxy: the sidecar. Serves Hrana over HTTP to the app from a
 * local replica, forwards writes to the primary, answers once they are
 * applied locally (DESIGN.md; README.md "Sidecar").
 *
 *   flags/env ─▶ struct ctx ─▶ link_start(--primary, --replica)      main thread = link thread
 *                              streams, keys, metrics                 (ev_default_loop: the
 *                              server_start ─▶ N app threads          replication stream, forwarded
 *                                 (loop + worker + HTTP each,         calls, 1 s stream expiry)
 *                                  one address via SO_REUSEPORT)
 *   SIGTERM/SIGINT ─▶ server_shutdown (stop accepting, finish requests)
 *                  ─▶ every connection drained ─▶ main loop ends
 *                  ─▶ link_free (calls in flight complete, cancelled)
 *                  ─▶ server_stop (threads end, joined) ─▶ streams, metrics freed; exit 0
 *   grace period over, or a second signal ─▶ _exit(0) at once
 *
 * main.c only parses flags, builds the context and runs the loop. */
#include <arpa/inet.h>
#include <ev.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/auth.h"
#include "common/log.h"
#include "common/loopq.h"
#include "common/metrics.h"
#include "common/opt.h"
#include "common/tls.h"
#include "proxy/link.h"
#include "proxy/pipeline.h"
#include "proxy/server.h"
#include "proxy/streams.h"
#include "proxy/token.h"

#define PROXY_FORWARD_TIMEOUT_S 30.0

struct ctx {
    struct ev_loop *loop; /* the main (link) thread's */
    struct loopq *main_q;
    struct auth *app_auth;
    struct auth *primary_auth;
    SSL_CTX *tls;
    struct proxy_conf pconf;
    struct proxy_shared sh;
    struct metrics *metrics;
    struct server *server;
    ev_signal sigterm, sigint;
    ev_timer expire; /* idle Hrana streams, every second */
    ev_timer grace;  /* bound on waiting for requests at shutdown */
    int stopping;
};

static struct {
    const char *primary, *replica, *listen, *socket, *tls_ca, *auth_token_file;
    const char *app_token_file, *cluster_secret_file, *database, *fallback, *log_level;
    int64_t max_wait_ms, threads, stream_idle_ms, stmt_timeout_ms, max_body_kb;
    int64_t max_response_mb, max_rows, max_streams, max_conns;
} conf = {
    .listen = "127.0.0.1:8080",
    .fallback = "primary",
    .log_level = "info",
    .max_wait_ms = 5000,
    .threads = 0,
    .stream_idle_ms = 10000,
    .stmt_timeout_ms = 5000,
    .max_body_kb = 1024,
    .max_response_mb = 16,
    .max_rows = 100000,
    .max_streams = 1024,
    .max_conns = 1024,
};

static const struct opt opts[] = {
    {"primary", "BOOMERANG_PRIMARY_URL", OPT_STRING, &conf.primary, "URL",
     "the primary: http://HOST:PORT (h2c) or https://HOST:PORT (TLS, ALPN h2)"},
    {"replica", "BOOMERANG_REPLICA", OPT_STRING, &conf.replica, "PATH",
     "the local replica database file (created if missing)"},
    {"listen", "BOOMERANG_LISTEN", OPT_STRING, &conf.listen, "HOST:PORT",
     "serve the app here (default 127.0.0.1:8080; port 0: any free port); a host that is "
     "not loopback requires --app-token-file"},
    {"socket", "BOOMERANG_SOCKET", OPT_STRING, &conf.socket, "PATH",
     "also serve the app on this unix socket"},
    {"tls-ca", "BOOMERANG_TLS_CA", OPT_STRING, &conf.tls_ca, "FILE",
     "verify an https:// primary against this CA (PEM; default: the system CAs)"},
    {"auth-token-file", "BOOMERANG_AUTH_TOKEN_FILE", OPT_STRING, &conf.auth_token_file, "FILE",
     "send 'authorization: Bearer T' to the primary with the first token in FILE"},
    {"app-token-file", "BOOMERANG_APP_TOKEN_FILE", OPT_STRING, &conf.app_token_file, "FILE",
     "require 'Authorization: Bearer T' from the app (every request but GET /health), T one "
     "of FILE's lines"},
    {"cluster-secret-file", "BOOMERANG_CLUSTER_SECRET_FILE", OPT_STRING, &conf.cluster_secret_file,
     "FILE",
     "sign and verify Boomerang-Token with this secret (>= 16 bytes; the same on every "
     "sidecar)"},
    {"database", "BOOMERANG_DATABASE", OPT_STRING, &conf.database, "NAME",
     "database name on the primary (default: the one it serves)"},
    {"max-wait-ms", "BOOMERANG_MAX_WAIT_MS", OPT_INT, &conf.max_wait_ms, "N",
     "wait budget for a write's apply and for session reads (default 5000)"},
    {"fallback", "BOOMERANG_FALLBACK", OPT_STRING, &conf.fallback, "MODE",
     "past the wait budget: primary (forward the read), error (503) or stale (default primary)"},
    {"threads", "BOOMERANG_THREADS", OPT_INT, &conf.threads, "N",
     "app-facing threads (default 0: one per CPU)"},
    {"stream-idle-ms", "BOOMERANG_STREAM_IDLE_MS", OPT_INT, &conf.stream_idle_ms, "N",
     "a Hrana stream (baton) idle this long expires, its transaction rolled back "
     "(default 10000)"},
    {"stmt-timeout-ms", "BOOMERANG_STMT_TIMEOUT_MS", OPT_INT, &conf.stmt_timeout_ms, "N",
     "run-time bound of a local statement, else error TIMEOUT (default 5000; 0: none)"},
    {"max-body-kb", "BOOMERANG_MAX_BODY_KB", OPT_INT, &conf.max_body_kb, "N",
     "largest request body, KiB; larger gets 413 (default 1024)"},
    {"max-response-mb", "BOOMERANG_MAX_RESPONSE_MB", OPT_INT, &conf.max_response_mb, "N",
     "largest result, MiB; larger gets error RESPONSE_TOO_LARGE (default 16)"},
    {"max-rows", "BOOMERANG_MAX_ROWS", OPT_INT, &conf.max_rows, "N",
     "most rows of one statement; more gets error RESPONSE_TOO_LARGE (default 100000)"},
    {"max-streams", "BOOMERANG_MAX_STREAMS", OPT_INT, &conf.max_streams, "N",
     "open Hrana streams at most; more gets 503 TOO_MANY_STREAMS (default 1024)"},
    {"max-conns", "BOOMERANG_MAX_CONNS", OPT_INT, &conf.max_conns, "N",
     "app connections per thread; more get 503 (default 1024)"},
    {"log-level", "BOOMERANG_LOG_LEVEL", OPT_STRING, &conf.log_level, "LEVEL",
     "error, warn, info, debug or trace (default info)"},
};

/* ---- configuration ------------------------------------------------------------- */

/* 127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z) or "localhost". */
static int host_is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;

    if (strcasecmp(host, "localhost") == 0)
        return 1;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) != 1)
        return 0;
    if (IN6_IS_ADDR_LOOPBACK(&a6))
        return 1;
    return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
}

static int in_range(const char *flag, int64_t v, int64_t lo, int64_t hi)
{
    if (v >= lo && v <= hi)
        return 1;
    fprintf(stderr, "boomerang-proxy: --%s must be %lld..%lld\n", flag, (long long)lo,
            (long long)hi);
    return 0;
}

static int check_numbers(void)
{
    return in_range("max-wait-ms", conf.max_wait_ms, 0, 3600000) &&
           in_range("threads", conf.threads, 0, 1024) &&
           in_range("stream-idle-ms", conf.stream_idle_ms, 1, 86400000) &&
           in_range("stmt-timeout-ms", conf.stmt_timeout_ms, 0, 86400000) &&
           in_range("max-body-kb", conf.max_body_kb, 1, 1024 * 1024) &&
           in_range("max-response-mb", conf.max_response_mb, 1, 4096) &&
           in_range("max-rows", conf.max_rows, 1, INT64_C(1) << 40) &&
           in_range("max-streams", conf.max_streams, 1, 1000000) &&
           in_range("max-conns", conf.max_conns, 1, 1000000);
}

static int parse_fallback(const char *s, enum proxy_fallback *out)
{
    if (strcmp(s, "primary") == 0)
        *out = PROXY_FALLBACK_PRIMARY;
    else if (strcmp(s, "error") == 0)
        *out = PROXY_FALLBACK_ERROR;
    else if (strcmp(s, "stale") == 0)
        *out = PROXY_FALLBACK_STALE;
    else
        return -1;
    return 0;
}

/* Everything that only needs the flags; 0, or -1 after a message on stderr
 * (exit 2). */
static int check_conf(struct proxy_conf *pc)
{
    char host[256];
    int port;

    if (!conf.primary || !conf.replica) {
        fprintf(stderr, "boomerang-proxy: --primary and --replica are required; see --help\n");
        return -1;
    }
    if (strncmp(conf.primary, "http://", 7) != 0 && strncmp(conf.primary, "https://", 8) != 0) {
        fprintf(stderr, "boomerang-proxy: --primary '%s' must start with http:// or https://\n",
                conf.primary);
        return -1;
    }
    if (util_split_hostport(conf.listen, host, sizeof(host), &port) != 0) {
        fprintf(stderr, "boomerang-proxy: --listen '%s' is not HOST:PORT\n", conf.listen);
        return -1;
    }
    if (!host_is_loopback(host) && !conf.app_token_file) {
        fprintf(stderr,
                "boomerang-proxy: refusing to serve on %s, which is not a loopback address, "
                "without --app-token-file: anyone who reaches it could read and write the "
                "database\n",
                conf.listen);
        return -1;
    }
    if (parse_fallback(conf.fallback, &pc->fallback) != 0) {
        fprintf(stderr, "boomerang-proxy: --fallback must be primary, error or stale, not '%s'\n",
                conf.fallback);
        return -1;
    }
    if (!check_numbers())
        return -1;
    pc->replica_path = conf.replica;
    pc->database = conf.database;
    pc->max_wait_ms = conf.max_wait_ms;
    pc->stmt_timeout_ms = conf.stmt_timeout_ms > 0 ? conf.stmt_timeout_ms : -1;
    pc->max_rows = (size_t)conf.max_rows;
    pc->max_response_bytes = (size_t)conf.max_response_mb << 20;
    pc->forward_timeout_s = PROXY_FORWARD_TIMEOUT_S;
    return 0;
}

/* ---- running and stopping ------------------------------------------------------ */

static void proxy_expire_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct ctx *ctx = container_of(w, struct ctx, expire);

    (void)loop, (void)revents;
    pipeline_expire_streams(&ctx->sh, ctx->main_q);
}

/* Every app thread has finished its connections. */
static void proxy_drained(void *arg)
{
    struct ctx *ctx = arg;

    ev_break(ctx->loop, EVBREAK_ALL);
}

/* Stop without waiting: requests still in flight may hold link calls whose
 * completions would run against freed state, so skip the teardown. The
 * replica is crash-safe (DESIGN.md invariant 4); the primary rolls back
 * transactions of a vanished connection; a stale unix socket file is
 * replaced by the next start. */
static void proxy_stop_now(const char *why)
{
    log_warn("stop: %s; exiting without waiting for requests in flight", why);
    _exit(0);
}

static void proxy_grace_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)w, (void)revents;
    proxy_stop_now("requests still running past the grace period");
}

/* First signal: stop accepting and let requests in flight finish. Each is
 * bounded by the wait budget plus the forward deadline, and so is the grace
 * period. Second signal: stop now. */
static void proxy_signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    struct ctx *ctx = ev_userdata(loop);
    double grace = (double)conf.max_wait_ms / 1000 + PROXY_FORWARD_TIMEOUT_S + 2;

    (void)revents;
    if (ctx->stopping)
        proxy_stop_now("second signal");
    ctx->stopping = 1;
    log_info("signal %d: stopping", w->signum);
    ev_timer_stop(loop, &ctx->expire);
    ev_timer_init(&ctx->grace, proxy_grace_cb, grace, 0);
    ev_timer_start(loop, &ctx->grace);
    server_shutdown(ctx->server);
}

static double streams_gauge(void *arg)
{
    return (double)streams_count(arg);
}

static void build_metrics(struct ctx *ctx)
{
    ctx->metrics = metrics_new();
    pipeline_metrics_register(&ctx->sh, ctx->metrics);
    metrics_gauge_fn_new(ctx->metrics, "boomerang_proxy_streams",
                         "Open Hrana streams (batons) across all threads.", NULL, streams_gauge,
                         ctx->sh.streams);
    link_metrics(ctx->sh.link, ctx->metrics);
}

static int start_link(struct ctx *ctx)
{
    struct link_config lc = {0};

    if (strncmp(conf.primary, "https://", 8) == 0 &&
        tls_client_ctx(conf.tls_ca, NULL, NULL, &ctx->tls) != 0)
        return -1;
    lc.primary_url = conf.primary;
    lc.tls = ctx->tls;
    lc.auth_token = ctx->primary_auth ? auth_token(ctx->primary_auth) : NULL;
    lc.database = conf.database;
    lc.replica_path = conf.replica;
    return link_start(ctx->loop, &lc, &ctx->sh.link);
}

static int start_server(struct ctx *ctx)
{
    struct server_config sc = {0};
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

    sc.listen = conf.listen;
    sc.unix_path = conf.socket;
    sc.threads = conf.threads > 0 ? (unsigned)conf.threads : ncpu > 0 ? (unsigned)ncpu : 1;
    sc.max_body = (size_t)conf.max_body_kb << 10;
    sc.max_conns = (unsigned)conf.max_conns;
    sc.app_auth = ctx->app_auth;
    sc.sh = &ctx->sh;
    sc.metrics = ctx->metrics;
    sc.main_q = ctx->main_q;
    sc.on_drained = proxy_drained;
    sc.arg = ctx;
    if (server_start(&sc, &ctx->server) != 0)
        return -1;
    log_info("serving the replica %s with %u app threads; primary %s", conf.replica, sc.threads,
             conf.primary);
    return 0;
}

static int build_ctx(struct ctx *ctx)
{
    if (conf.app_token_file && auth_load(conf.app_token_file, &ctx->app_auth) != 0)
        return -1;
    if (conf.auth_token_file && auth_load(conf.auth_token_file, &ctx->primary_auth) != 0)
        return -1;
    if (conf.cluster_secret_file &&
        token_key_load(conf.cluster_secret_file, &ctx->sh.token_key) != 0)
        return -1;
    ctx->sh.baton_key = token_key_random();
    ctx->sh.conf = &ctx->pconf;
    ctx->sh.streams = streams_new((size_t)conf.max_streams, (double)conf.stream_idle_ms / 1000);
    atomic_init(&ctx->sh.floor, 0);
    ctx->loop = ev_default_loop(EVFLAG_AUTO);
    if (!ctx->loop) {
        log_error("start failed: no libev loop");
        return -1;
    }
    ev_set_userdata(ctx->loop, ctx);
    ctx->main_q = loopq_new(ctx->loop);
    if (start_link(ctx) != 0)
        return -1;
    build_metrics(ctx);
    return start_server(ctx);
}

/* In dependency order. The link goes before the app threads stop (not
 * after): link_free completes, cancelled, whatever is still in flight, and
 * posts those completions to the threads' queues, which must still be
 * served. Normally nothing is left by then: every connection has drained. */
static void free_ctx(struct ctx *ctx)
{
    if (ctx->loop) {
        ev_timer_stop(ctx->loop, &ctx->expire);
        ev_timer_stop(ctx->loop, &ctx->grace);
        ev_signal_stop(ctx->loop, &ctx->sigterm);
        ev_signal_stop(ctx->loop, &ctx->sigint);
    }
    link_free(ctx->sh.link);
    ctx->sh.link = NULL;
    server_stop(ctx->server);
    ctx->server = NULL;
    loopq_free(ctx->main_q); /* runs the replies link_free posted */
    metrics_free(ctx->metrics);
    streams_free(ctx->sh.streams);
    token_key_free(ctx->sh.baton_key);
    token_key_free(ctx->sh.token_key);
    if (ctx->tls)
        SSL_CTX_free(ctx->tls);
    if (ctx->primary_auth)
        auth_free(ctx->primary_auth);
    if (ctx->app_auth)
        auth_free(ctx->app_auth);
    if (ctx->loop)
        ev_loop_destroy(ctx->loop);
}

int main(int argc, char **argv)
{
    static struct ctx ctx; /* zeroed; watchers inside must not move */
    enum log_level lvl;
    int rc = opt_parse("boomerang-proxy",
                       "The boomerang sidecar: serves Hrana over HTTP (libSQL's protocol) from a "
                       "local replica, forwards writes to the primary and answers them once "
                       "they are applied here.",
                       opts, (int)ARRAY_LEN(opts), argc, argv);

    if (rc != 0)
        return rc > 0 ? 0 : 2;
    log_set_program("proxy");
    if (log_parse_level(conf.log_level, &lvl) != 0) {
        fprintf(stderr, "boomerang-proxy: unknown log level '%s'\n", conf.log_level);
        return 2;
    }
    log_level = lvl;
    if (check_conf(&ctx.pconf) != 0)
        return 2;
    signal(SIGPIPE, SIG_IGN);
    if (build_ctx(&ctx) != 0)
        goto fail;
    ev_signal_init(&ctx.sigterm, proxy_signal_cb, SIGTERM);
    ev_signal_init(&ctx.sigint, proxy_signal_cb, SIGINT);
    ev_signal_start(ctx.loop, &ctx.sigterm);
    ev_signal_start(ctx.loop, &ctx.sigint);
    ev_timer_init(&ctx.expire, proxy_expire_cb, 1.0, 1.0);
    ev_timer_start(ctx.loop, &ctx.expire);
    ev_run(ctx.loop, 0);
    free_ctx(&ctx);
    log_info("stopped");
    return 0;

fail:
    free_ctx(&ctx);
    return 1;
}
