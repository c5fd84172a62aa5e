/* boomerang: the primary's HTTP/1.1 endpoints (see admin.h). */
#include "primary/admin.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/http.h"
#include "common/log.h"
#include "common/metrics.h"
#include "primary/stream.h"
#include "primary/writer.h"

struct admin {
    struct admin_config cfg;
    struct metrics *metrics;
    struct http_server *http;
    int draining;
};

/* ---- metrics ------------------------------------------------------------------*/

static double status_value(struct admin *a, int which)
{
    struct capture_status st;

    if (!a->cfg.writer)
        return 0.0 / 0.0; /* NaN: no longer known */
    writer_status(a->cfg.writer, &st);
    switch (which) {
    case 0:
        return (double)st.head_txid;
    case 1:
        return (double)st.first_txid;
    case 2:
        return (double)st.log_bytes;
    case 3:
        return (double)st.db_pages;
    default:
        return (double)st.epoch;
    }
}

static double head_txid_cb(void *arg)
{
    return status_value(arg, 0);
}
static double first_txid_cb(void *arg)
{
    return status_value(arg, 1);
}
static double log_bytes_cb(void *arg)
{
    return status_value(arg, 2);
}
static double db_pages_cb(void *arg)
{
    return status_value(arg, 3);
}
static double epoch_cb(void *arg)
{
    return status_value(arg, 4);
}
static double retain_cb(void *arg)
{
    return (double)((struct admin *)arg)->cfg.retain_bytes;
}

static void stream_totals_cb(void *arg, struct metrics_sink *sink)
{
    struct admin *a = arg;
    struct stream_stats st;

    stream_stats(a->cfg.stream, &st);
    metrics_sample(sink, (const char *const[]){"kind", "snapshots", NULL},
                   (double)st.snapshots_sent);
    metrics_sample(sink, (const char *const[]){"kind", "transactions", NULL}, (double)st.txns_sent);
    metrics_sample(sink, (const char *const[]){"kind", "bytes", NULL}, (double)st.bytes_sent);
}

static double subscribers_cb(void *arg)
{
    struct stream_stats st;

    stream_stats(((struct admin *)arg)->cfg.stream, &st);
    return st.subscribers;
}

struct lag_walk {
    struct metrics_sink *sink;
    int ms; /* 1: lag in seconds, 0: lag in txids */
};

static void sub_lag_cb(void *arg, const struct stream_sub_info *info)
{
    struct lag_walk *walk = arg;
    const char *const labels[] = {"peer", info->peer, "state", info->state, NULL};

    if (walk->ms)
        metrics_sample(walk->sink, labels, info->lag_ms < 0 ? 0.0 / 0.0 : info->lag_ms / 1000.0);
    else
        metrics_sample(walk->sink, labels, (double)info->lag_txids);
}

static void lag_txids_cb(void *arg, struct metrics_sink *sink)
{
    struct lag_walk walk = {sink, 0};
    stream_each(((struct admin *)arg)->cfg.stream, sub_lag_cb, &walk);
}

static void lag_seconds_cb(void *arg, struct metrics_sink *sink)
{
    struct lag_walk walk = {sink, 1};
    stream_each(((struct admin *)arg)->cfg.stream, sub_lag_cb, &walk);
}

static void register_metrics(struct admin *a)
{
    struct metrics *m = a->metrics;

    writer_metrics(a->cfg.writer, m);
    metrics_gauge_fn_new(m, "boomerang_primary_head_txid", "Last committed and logged txid.", NULL,
                         head_txid_cb, a);
    metrics_gauge_fn_new(m, "boomerang_primary_epoch", "History epoch of the database.", NULL,
                         epoch_cb, a);
    metrics_gauge_fn_new(m, "boomerang_primary_db_pages", "Database size in pages.", NULL,
                         db_pages_cb, a);
    metrics_gauge_fn_new(m, "boomerang_primary_log_bytes", "Bytes the replication log holds.", NULL,
                         log_bytes_cb, a);
    metrics_gauge_fn_new(m, "boomerang_primary_log_first_txid",
                         "Oldest txid still in the replication log (0: empty).", NULL,
                         first_txid_cb, a);
    metrics_gauge_fn_new(m, "boomerang_primary_log_retain_bytes",
                         "Replication log retention (--log-retain-mb).", NULL, retain_cb, a);
    metrics_gauge_fn_new(m, "boomerang_primary_subscribers", "Replication streams open now.", NULL,
                         subscribers_cb, a);
    metrics_collect_new(m, "boomerang_primary_stream_sent_total",
                        "Sent on replication streams: complete snapshots, transactions, bytes.",
                        METRICS_COUNTER, stream_totals_cb, a);
    metrics_collect_new(m, "boomerang_primary_subscriber_lag_txids",
                        "Per subscriber: head txid minus the last txid sent to it.", METRICS_GAUGE,
                        lag_txids_cb, a);
    metrics_collect_new(m, "boomerang_primary_subscriber_lag_seconds",
                        "Per subscriber: commit time of the head minus that of the last txid "
                        "sent to it.",
                        METRICS_GAUGE, lag_seconds_cb, a);
}

/* ---- HTTP ---------------------------------------------------------------------*/

static void respond_status(struct admin *a, struct http_request *req)
{
    struct capture_status st;
    struct stream_stats ss;
    struct buf out = {0};
    char line[512];

    if (!a->cfg.writer) {
        http_respond_error(req, 503, "the primary is shutting down");
        return;
    }
    writer_status(a->cfg.writer, &st);
    stream_stats(a->cfg.stream, &ss);
    buf_append(&out, "{\"database\":", 12);
    http_json_string(&out, a->cfg.database, strlen(a->cfg.database));
    snprintf(line, sizeof(line),
             ",\"database_id\":\"%s\",\"epoch\":%" PRIu64 ",\"head_txid\":%" PRIu64
             ",\"first_txid\":%" PRIu64 ",\"log_bytes\":%" PRIu64 ",\"page_size\":%u"
             ",\"db_pages\":%u,\"subscribers\":%u,\"draining\":%s}\n",
             st.database_id, st.epoch, st.head_txid, st.first_txid, st.log_bytes, st.page_size,
             st.db_pages, ss.subscribers, a->draining ? "true" : "false");
    buf_append(&out, line, strlen(line));
    http_respond(req, 200, "application/json", buf_head(&out), buf_avail(&out), NULL, 0);
    buf_free(&out);
}

static void admin_request_cb(void *arg, struct http_request *req)
{
    struct admin *a = arg;
    const char *method = http_request_method(req), *path = http_request_path(req);
    struct buf out = {0};

    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        http_respond_error(req, 405, "only GET is served here");
    } else if (strcmp(path, "/health") == 0) {
        if (a->draining)
            http_respond_error(req, 503, "the primary is shutting down");
        else
            http_respond(req, 200, "text/plain", "ok\n", 3, NULL, 0);
    } else if (strcmp(path, "/metrics") == 0) {
        metrics_render(a->metrics, &out);
        http_respond(req, 200, METRICS_CONTENT_TYPE, buf_head(&out), buf_avail(&out), NULL, 0);
        buf_free(&out);
    } else if (strcmp(path, "/v1/status") == 0) {
        respond_status(a, req);
    } else {
        http_respond_error(req, 404, "not found: try /health, /metrics or /v1/status");
    }
}

int admin_start(struct ev_loop *loop, const struct admin_config *cfg, struct admin **out)
{
    struct admin *a = xcalloc(1, sizeof(*a));
    struct http_server_config hc = {
        .listen = cfg->listen,
        .max_body = 4096,
        .on_request = admin_request_cb,
        .arg = a,
    };

    a->cfg = *cfg;
    a->metrics = metrics_new();
    register_metrics(a);
    if (http_server_start(loop, &hc, &a->http) != 0) {
        metrics_free(a->metrics);
        free(a);
        return -1;
    }
    *out = a;
    return 0;
}

struct http_server *admin_http(struct admin *a)
{
    return a->http;
}

void admin_set_draining(struct admin *a)
{
    a->draining = 1;
}

void admin_forget_writer(struct admin *a)
{
    a->cfg.writer = NULL;
}

void admin_shutdown(struct admin *a)
{
    http_server_shutdown(a->http);
}

void admin_free(struct admin *a)
{
    if (!a)
        return;
    http_server_free(a->http);
    metrics_free(a->metrics);
    free(a);
}
