/* boomerang-primary: owns the database and runs every write.
 *
 *   flags/env ─▶ struct ctx ─▶ service_start (writer thread + gRPC server)
 *                               ev_run ... SIGTERM/SIGINT ─▶ service_drain
 *
 * main.c only parses flags, builds the context and runs the loop. */
#include <ev.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/auth.h"
#include "common/log.h"
#include "common/opt.h"
#include "common/tls.h"
#include "primary/service.h"

struct ctx {
    struct ev_loop *loop;
    struct service *service;
    struct auth *auth;
    SSL_CTX *tls;
    ev_signal sigterm, sigint;
    char database[128];
};

static struct {
    const char *db, *listen, *tls_cert, *tls_key, *tls_client_ca, *auth_token_file;
    const char *log_level, *state_dir, *database, *init_sql, *metrics_listen;
    int64_t log_retain_mb, tx_timeout_ms, statement_timeout_ms, max_message_mb, max_batch;
    int no_group_commit;
} conf = {
    .listen = "127.0.0.1:5001",
    .log_level = "info",
    .log_retain_mb = 256,
    .tx_timeout_ms = 5000,
    .statement_timeout_ms = 10000,
    .max_message_mb = 16,
    .max_batch = 512,
};

static const struct opt opts[] = {
    {"db", "BOOMERANG_DB", OPT_STRING, &conf.db, "PATH", "database file (created if missing)"},
    {"listen", "BOOMERANG_LISTEN", OPT_STRING, &conf.listen, "HOST:PORT",
     "gRPC listen address (default 127.0.0.1:5001; port 0 picks one)"},
    {"metrics-listen", "BOOMERANG_METRICS_LISTEN", OPT_STRING, &conf.metrics_listen, "HOST:PORT",
     "also serve GET /health, /metrics, /v1/status here (they are always on --listen too)"},
    {"tls-cert", "BOOMERANG_TLS_CERT", OPT_STRING, &conf.tls_cert, "FILE",
     "TLS certificate chain (PEM); enables TLS with ALPN h2"},
    {"tls-key", "BOOMERANG_TLS_KEY", OPT_STRING, &conf.tls_key, "FILE", "TLS private key (PEM)"},
    {"tls-client-ca", "BOOMERANG_TLS_CLIENT_CA", OPT_STRING, &conf.tls_client_ca, "FILE",
     "require client certificates signed by this CA"},
    {"auth-token-file", "BOOMERANG_AUTH_TOKEN_FILE", OPT_STRING, &conf.auth_token_file, "FILE",
     "require 'authorization: Bearer T' with a token from FILE (one per line)"},
    {"log-retain-mb", "BOOMERANG_LOG_RETAIN_MB", OPT_INT, &conf.log_retain_mb, "N",
     "replication log retention in MiB (default 256)"},
    {"state-dir", "BOOMERANG_STATE_DIR", OPT_STRING, &conf.state_dir, "DIR",
     "replication log and metadata (default DB-boomerang)"},
    {"database", "BOOMERANG_DATABASE", OPT_STRING, &conf.database, "NAME",
     "database name clients use (default: the file name without extension)"},
    {"init-sql", "BOOMERANG_INIT_SQL", OPT_STRING, &conf.init_sql, "FILE",
     "run this SQL file once, as the first commit, if the database has no schema"},
    {"no-group-commit", "BOOMERANG_NO_GROUP_COMMIT", OPT_FLAG, &conf.no_group_commit, NULL,
     "one SQLite commit per request (for comparison)"},
    {"max-batch", "BOOMERANG_MAX_BATCH", OPT_INT, &conf.max_batch, "N",
     "requests per group commit (default 512)"},
    {"tx-timeout-ms", "BOOMERANG_TX_TIMEOUT_MS", OPT_INT, &conf.tx_timeout_ms, "N",
     "roll back an interactive transaction idle this long (default 5000)"},
    {"statement-timeout-ms", "BOOMERANG_STATEMENT_TIMEOUT_MS", OPT_INT, &conf.statement_timeout_ms,
     "N", "interrupt a statement running this long (default 10000)"},
    {"max-message-mb", "BOOMERANG_MAX_MESSAGE_MB", OPT_INT, &conf.max_message_mb, "N",
     "largest request or result message in MiB (default 16)"},
    {"log-level", "BOOMERANG_LOG_LEVEL", OPT_STRING, &conf.log_level, "LEVEL",
     "error, warn, info, debug or trace (default info)"},
};

static void primary_signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    struct ctx *ctx = ev_userdata(loop);

    (void)revents;
    log_info("signal %d: shutting down", w->signum);
    service_drain(ctx->service);
}

/* "./data/app.db" -> "app" */
static void default_database_name(const char *path, char *out, size_t n)
{
    char *copy = xstrdup(path);
    char *base = basename(copy);
    char *dot = strrchr(base, '.');

    if (dot && dot != base)
        *dot = '\0';
    snprintf(out, n, "%s", base);
    free(copy);
}

static int check_conf(void)
{
    if (!conf.db) {
        fprintf(stderr, "boomerang-primary: --db is required; see --help\n");
        return -1;
    }
    if (!!conf.tls_cert != !!conf.tls_key) {
        fprintf(stderr, "boomerang-primary: --tls-cert and --tls-key go together\n");
        return -1;
    }
    if (conf.tls_client_ca && !conf.tls_cert) {
        fprintf(stderr, "boomerang-primary: --tls-client-ca needs --tls-cert and --tls-key\n");
        return -1;
    }
    char host[256];
    int port;
    if (util_split_hostport(conf.listen, host, sizeof(host), &port) != 0) {
        fprintf(stderr, "boomerang-primary: --listen '%s' is not HOST:PORT\n", conf.listen);
        return -1;
    }
    if (conf.max_message_mb < 1 || conf.max_message_mb > 1024 || conf.max_batch < 1) {
        fprintf(stderr, "boomerang-primary: --max-message-mb must be 1..1024, --max-batch >= 1\n");
        return -1;
    }
    return 0;
}

static int build_ctx(struct ctx *ctx, struct service_config *sc)
{
    enum log_level lvl;

    if (log_parse_level(conf.log_level, &lvl) != 0) {
        fprintf(stderr, "boomerang-primary: unknown log level '%s'\n", conf.log_level);
        return -1;
    }
    log_level = lvl;
    if (conf.auth_token_file && auth_load(conf.auth_token_file, &ctx->auth) != 0)
        return -1;
    if (conf.tls_cert &&
        tls_server_ctx(conf.tls_cert, conf.tls_key, conf.tls_client_ca, &ctx->tls) != 0)
        return -1;
    if (conf.database)
        snprintf(ctx->database, sizeof(ctx->database), "%s", conf.database);
    else
        default_database_name(conf.db, ctx->database, sizeof(ctx->database));
    sc->database = ctx->database;
    sc->listen = conf.listen;
    sc->tls = ctx->tls;
    sc->auth = ctx->auth;
    sc->max_message = (size_t)conf.max_message_mb << 20;
    sc->metrics_listen = conf.metrics_listen;
    sc->writer.db_path = conf.db;
    sc->writer.group_commit = !conf.no_group_commit;
    sc->writer.max_batch = (uint32_t)conf.max_batch;
    sc->writer.tx_timeout_ms = conf.tx_timeout_ms;
    sc->writer.statement_timeout_ms = conf.statement_timeout_ms;
    sc->writer.max_result_bytes = sc->max_message;
    sc->writer.init_sql = conf.init_sql;
    sc->writer.capture.state_dir = conf.state_dir;
    sc->writer.capture.retain_bytes = (uint64_t)conf.log_retain_mb << 20;
    return 0;
}

static void free_ctx(struct ctx *ctx)
{
    service_free(ctx->service);
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
    struct service_config sc = {0};
    int rc = opt_parse("boomerang-primary",
                       "Owns a SQLite database, runs every write with group "
                       "commit, and logs each commit for replication.",
                       opts, (int)ARRAY_LEN(opts), argc, argv);

    if (rc != 0)
        return rc > 0 ? 0 : 2;
    log_set_program("primary");
    if (check_conf() != 0)
        return 2;
    signal(SIGPIPE, SIG_IGN);
    if (build_ctx(&ctx, &sc) != 0)
        goto fail;
    ctx.loop = ev_default_loop(EVFLAG_AUTO);
    ev_set_userdata(ctx.loop, &ctx);
    if (service_start(ctx.loop, &sc, &ctx.service) != 0)
        goto fail;
    ev_signal_init(&ctx.sigterm, primary_signal_cb, SIGTERM);
    ev_signal_init(&ctx.sigint, primary_signal_cb, SIGINT);
    ev_signal_start(ctx.loop, &ctx.sigterm);
    ev_signal_start(ctx.loop, &ctx.sigint);
    log_info("serving database '%s' from %s", ctx.database, conf.db);
    ev_run(ctx.loop, 0);
    log_info("stopped");
    free_ctx(&ctx);
    return 0;

fail:
    free_ctx(&ctx);
    return 1;
}
