/* boomerang-replica: follows a primary into a local WAL-mode SQLite file.
 *
 *   flags/env ─▶ struct ctx ─▶ apply_open(--replica) ─▶ h2client(--primary) ─▶ follow_start
 *                              [--listen: HTTP/1.1 GET /health, /v1/status, /metrics]
 *                               ev_run ... SIGTERM/SIGINT ─▶ http, follow, h2client freed
 *                               apply_close
 *
 * main.c only parses flags, builds the context and runs the loop; the link
 * itself is replica/follow.c. */
#include <ev.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/auth.h"
#include "common/buf.h"
#include "common/h2client.h"
#include "common/http.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/opt.h"
#include "common/tls.h"
#include "replica/apply.h"
#include "replica/follow.h"

struct ctx {
    struct ev_loop *loop;
    struct apply *apply;
    struct h2client *client;
    struct follow *follow;
    struct auth *auth;
    SSL_CTX *tls;
    struct http_server *http;
    struct metrics *metrics;
    struct metrics_histogram *apply_lag; /* in metrics; NULL without --listen */
    ev_signal sigterm, sigint;
};

/* Apply lag, seconds: fine steps around the 1 ms target, coarse beyond. */
static const double apply_lag_buckets[] = {
    0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
    0.0075,  0.01,   0.025,  0.05,   0.1,    0.25,    0.5,   1,      2.5,   5,     10,
};

static struct {
    const char *primary, *replica, *database, *tls_ca, *auth_token_file, *listen, *log_level;
    int64_t checkpoint_pages, max_message_mb;
} conf = {
    .log_level = "info",
    .max_message_mb = 64,
};

static const struct opt opts[] = {
    {"primary", "BOOMERANG_PRIMARY_URL", OPT_STRING, &conf.primary, "URL",
     "the primary: http://HOST:PORT (h2c) or https://HOST:PORT (TLS, ALPN h2)"},
    {"replica", "BOOMERANG_REPLICA", OPT_STRING, &conf.replica, "PATH",
     "the replica database file (created if missing)"},
    {"database", "BOOMERANG_DATABASE", OPT_STRING, &conf.database, "NAME",
     "database name on the primary (default: the one it serves)"},
    {"tls-ca", "BOOMERANG_TLS_CA", OPT_STRING, &conf.tls_ca, "FILE",
     "verify the primary against this CA (PEM; default: the system CAs)"},
    {"auth-token-file", "BOOMERANG_AUTH_TOKEN_FILE", OPT_STRING, &conf.auth_token_file, "FILE",
     "send 'authorization: Bearer T' with the first token in FILE"},
    {"listen", "BOOMERANG_LISTEN", OPT_STRING, &conf.listen, "HOST:PORT",
     "serve GET /health, /v1/status (JSON) and /metrics over HTTP/1.1 here"},
    {"checkpoint-pages", "BOOMERANG_CHECKPOINT_PAGES", OPT_INT, &conf.checkpoint_pages, "N",
     "passive checkpoint of the replica past N WAL pages (default 4000)"},
    {"max-message-mb", "BOOMERANG_MAX_MESSAGE_MB", OPT_INT, &conf.max_message_mb, "N",
     "largest replication event accepted, MiB (default 64)"},
    {"log-level", "BOOMERANG_LOG_LEVEL", OPT_STRING, &conf.log_level, "LEVEL",
     "error, warn, info, debug or trace (default info)"},
};

/* Stop: the stream is cancelled, a half-received transaction rolled back;
 * the loop then has nothing left and the apply is closed after it. */
static void replica_signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    struct ctx *ctx = ev_userdata(loop);

    (void)revents;
    log_info("signal %d: stopping", w->signum);
    http_server_free(ctx->http);
    ctx->http = NULL;
    follow_free(ctx->follow);
    ctx->follow = NULL;
    h2client_free(ctx->client);
    ctx->client = NULL;
    ev_break(loop, EVBREAK_ALL);
}

static int check_conf(void)
{
    char host[256];
    int port;

    if (!conf.primary || !conf.replica) {
        fprintf(stderr, "boomerang-replica: --primary and --replica are required; see --help\n");
        return -1;
    }
    if (strncmp(conf.primary, "http://", 7) != 0 && strncmp(conf.primary, "https://", 8) != 0) {
        fprintf(stderr, "boomerang-replica: --primary '%s' must start with http:// or https://\n",
                conf.primary);
        return -1;
    }
    if (conf.listen && util_split_hostport(conf.listen, host, sizeof(host), &port) != 0) {
        fprintf(stderr, "boomerang-replica: --listen '%s' is not HOST:PORT\n", conf.listen);
        return -1;
    }
    if (conf.max_message_mb < 1 || conf.max_message_mb > 1024 ||
        conf.checkpoint_pages > UINT32_MAX) {
        fprintf(stderr, "boomerang-replica: --max-message-mb must be 1..1024, "
                        "--checkpoint-pages at most 4294967295\n");
        return -1;
    }
    return 0;
}

/* GET /health, /v1/status, /metrics. */
static void replica_http_cb(void *arg, struct http_request *req)
{
    struct ctx *ctx = arg;
    const char *path = http_request_path(req);
    const char *method = http_request_method(req);
    struct buf body = {0};

    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        http_respond_error(req, 405, "only GET and HEAD are served here");
    } else if (strcmp(path, "/health") == 0) {
        http_respond(req, 200, "text/plain; charset=utf-8", "ok\n", 3, NULL, 0);
    } else if (strcmp(path, "/v1/status") == 0) {
        follow_status_json(ctx->follow, &body);
        http_respond(req, 200, "application/json", buf_head(&body), buf_avail(&body), NULL, 0);
    } else if (strcmp(path, "/metrics") == 0) {
        metrics_render(ctx->metrics, &body);
        http_respond(req, 200, METRICS_CONTENT_TYPE, buf_head(&body), buf_avail(&body), NULL, 0);
    } else {
        http_respond_error(req, 404, "not found: try /health, /v1/status or /metrics");
    }
    buf_free(&body);
}

/* Each applied transaction: primary commit to replica commit, by the two
 * hosts' wall clocks (so it includes any skew between them). */
static void replica_applied_cb(void *arg, uint64_t txid, int64_t commit_time_us)
{
    struct ctx *ctx = arg;

    (void)txid;
    if (ctx->apply_lag && commit_time_us > 0)
        metrics_histogram_observe(ctx->apply_lag, (double)(now_us() - commit_time_us) / 1e6);
}

static int start_http(struct ctx *ctx)
{
    struct http_server_config hc = {0};

    if (!conf.listen)
        return 0;
    ctx->metrics = metrics_new();
    follow_metrics(ctx->follow, ctx->metrics);
    ctx->apply_lag = metrics_histogram_new(
        ctx->metrics, "boomerang_replica_apply_lag_seconds",
        "Primary commit to replica commit of each transaction, by the hosts' wall clocks.", NULL,
        apply_lag_buckets, ARRAY_LEN(apply_lag_buckets));
    hc.listen = conf.listen;
    hc.on_request = replica_http_cb;
    hc.arg = ctx;
    return http_server_start(ctx->loop, &hc, &ctx->http) == 0 ? 0 : -1;
}

static int open_link(struct ctx *ctx)
{
    struct h2client_config hc = {0};
    struct follow_config fc = {0};

    if (strncmp(conf.primary, "https://", 8) == 0 &&
        tls_client_ctx(conf.tls_ca, NULL, NULL, &ctx->tls) != 0)
        return -1;
    hc.url = conf.primary;
    hc.tls = ctx->tls;
    hc.auth_token = ctx->auth ? auth_token(ctx->auth) : NULL;
    hc.max_message = (size_t)conf.max_message_mb << 20;
    if (h2client_new(ctx->loop, &hc, &ctx->client) != 0)
        return -1;
    fc.database = conf.database;
    fc.client = ctx->client;
    fc.apply = ctx->apply;
    fc.on_applied = replica_applied_cb;
    fc.arg = ctx;
    if (follow_start(ctx->loop, &fc, &ctx->follow) != 0) {
        log_error("start replication link failed: bad configuration");
        return -1;
    }
    return 0;
}

static int build_ctx(struct ctx *ctx)
{
    struct apply_config ac = {0};
    enum log_level lvl;

    if (log_parse_level(conf.log_level, &lvl) != 0) {
        fprintf(stderr, "boomerang-replica: unknown log level '%s'\n", conf.log_level);
        return -1;
    }
    log_level = lvl;
    if (conf.auth_token_file && auth_load(conf.auth_token_file, &ctx->auth) != 0)
        return -1;
    ac.path = conf.replica;
    ac.checkpoint_pages = (uint32_t)conf.checkpoint_pages;
    if (apply_open(&ac, &ctx->apply) != 0)
        return -1;
    ctx->loop = ev_default_loop(EVFLAG_AUTO);
    ev_set_userdata(ctx->loop, ctx);
    if (open_link(ctx) != 0)
        return -1;
    return start_http(ctx);
}

static void free_ctx(struct ctx *ctx)
{
    http_server_free(ctx->http);
    metrics_free(ctx->metrics); /* before the follow its collectors read */
    ctx->apply_lag = NULL;
    follow_free(ctx->follow);
    h2client_free(ctx->client);
    if (ctx->apply)
        apply_close(ctx->apply);
    if (ctx->tls)
        SSL_CTX_free(ctx->tls);
    if (ctx->auth)
        auth_free(ctx->auth);
    if (ctx->loop)
        ev_loop_destroy(ctx->loop);
}

int main(int argc, char **argv)
{
    struct ctx ctx = {0};
    int rc = opt_parse("boomerang-replica",
                       "Follows a boomerang primary into a local WAL-mode SQLite file "
                       "that any process can open read-only.",
                       opts, (int)ARRAY_LEN(opts), argc, argv);

    if (rc != 0)
        return rc > 0 ? 0 : 2;
    log_set_program("replica");
    if (check_conf() != 0)
        return 2;
    signal(SIGPIPE, SIG_IGN); /* TLS writes go through write() */
    if (build_ctx(&ctx) != 0)
        goto fail;
    ev_signal_init(&ctx.sigterm, replica_signal_cb, SIGTERM);
    ev_signal_init(&ctx.sigint, replica_signal_cb, SIGINT);
    ev_signal_start(ctx.loop, &ctx.sigterm);
    ev_signal_start(ctx.loop, &ctx.sigint);
    log_info("following %s into %s", conf.primary, conf.replica);
    ev_run(ctx.loop, 0);
    log_info("stopped");
    free_ctx(&ctx);
    return 0;

fail:
    free_ctx(&ctx);
    return 1;
}
