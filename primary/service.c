/* boomerang: the primary's gRPC service (see service.h for the flow). */
#include "primary/service.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/h2server.h"
#include "common/log.h"
#include "primary/exec.h"
#include "primary/admin.h"
#include "primary/stream.h"

#define PATH_EXECUTE   "/boomerang.v1.Primary/Execute"
#define PATH_STATUS    "/boomerang.v1.Primary/Status"
#define PATH_SUBSCRIBE "/boomerang.v1.Replication/Subscribe"
#define DRAIN_DEADLINE 10.0

enum service_state { SERVICE_RUNNING, SERVICE_DRAINING, SERVICE_CLOSING };

struct service {
    struct service_config cfg;
    struct ev_loop *loop;
    enum service_state state;
    struct writer *writer;
    struct stream *stream; /* Replication/Subscribe */
    struct admin *admin;   /* HTTP /health, /metrics, /v1/status */
    struct h2server *server;
    ev_timer drain_timer; /* polls for the end of the drain */
    int64_t drain_deadline_us;
};

static const char *const state_names[] = {"running", "draining", "closing"};

static void service_set_state(struct service *s, enum service_state next)
{
    assert((s->state == SERVICE_RUNNING && next == SERVICE_DRAINING) ||
           (s->state == SERVICE_DRAINING && next == SERVICE_CLOSING));
    log_debug("service: %s -> %s", state_names[s->state], state_names[next]);
    s->state = next;
}

static int database_matches(const struct service *s, const char *name)
{
    return !name || !*name || strcmp(name, s->cfg.database) == 0;
}

/* ---- Execute ----------------------------------------------------------------*/

/* Check what the writer relies on; returns NULL or the problem. */
static const char *validate(const Boomerang__V1__ExecuteRequest *req)
{
    switch (req->mode) {
    case BOOMERANG__V1__MODE__MODE_AUTOCOMMIT:
        return req->n_statements >= 1 ? NULL : "MODE_AUTOCOMMIT needs at least one statement";
    case BOOMERANG__V1__MODE__MODE_ATOMIC:
        return req->n_statements >= 1 ? NULL : "MODE_ATOMIC needs at least one statement";
    case BOOMERANG__V1__MODE__MODE_BEGIN:
        return req->transaction_id == 0 ? NULL : "MODE_BEGIN must not name a transaction_id";
    case BOOMERANG__V1__MODE__MODE_CONTINUE:
    case BOOMERANG__V1__MODE__MODE_COMMIT:
        return req->transaction_id != 0 ? NULL : "this mode needs the transaction_id from BEGIN";
    case BOOMERANG__V1__MODE__MODE_ROLLBACK:
        if (req->transaction_id == 0)
            return "MODE_ROLLBACK needs the transaction_id from BEGIN";
        return req->n_statements == 0 ? NULL : "MODE_ROLLBACK takes no statements";
    default:
        return "unknown mode";
    }
}

static void on_execute(struct service *s, struct h2call *call)
{
    size_t len;
    const uint8_t *msg = h2call_message(call, &len);
    Boomerang__V1__ExecuteRequest *req = boomerang__v1__execute_request__unpack(NULL, len, msg);
    struct writer_job *job;
    const char *problem;
    char text[256];

    if (!req) {
        h2call_fail(call, GRPC_INVALID_ARGUMENT, "malformed ExecuteRequest");
        return;
    }
    if (!database_matches(s, req->database)) {
        snprintf(text, sizeof(text), "database '%.100s' not found; this primary serves '%.100s'",
                 req->database, s->cfg.database);
        h2call_fail(call, GRPC_NOT_FOUND, text);
        protobuf_c_message_free_unpacked(&req->base, NULL);
        return;
    }
    if ((problem = validate(req)) != NULL) {
        h2call_fail(call, GRPC_INVALID_ARGUMENT, problem);
        protobuf_c_message_free_unpacked(&req->base, NULL);
        return;
    }
    job = xcalloc(1, sizeof(*job));
    job->kind = WRITER_JOB_EXECUTE;
    job->conn_id = h2call_conn_id(call);
    job->req = req;
    job->owner = call;
    writer_submit(s->writer, job);
}

/* ---- Status -----------------------------------------------------------------*/

static void on_status(struct service *s, struct h2call *call)
{
    size_t len;
    const uint8_t *msg = h2call_message(call, &len);
    Boomerang__V1__StatusRequest *req = boomerang__v1__status_request__unpack(NULL, len, msg);
    Boomerang__V1__StatusResponse resp = BOOMERANG__V1__STATUS_RESPONSE__INIT;
    struct capture_status st;
    uint8_t *out;

    if (!req) {
        h2call_fail(call, GRPC_INVALID_ARGUMENT, "malformed StatusRequest");
        return;
    }
    if (!database_matches(s, req->database)) {
        h2call_fail(call, GRPC_NOT_FOUND, "database not found");
        protobuf_c_message_free_unpacked(&req->base, NULL);
        return;
    }
    protobuf_c_message_free_unpacked(&req->base, NULL);
    writer_status(s->writer, &st);
    resp.database = (char *)s->cfg.database;
    resp.database_id = st.database_id;
    resp.epoch = st.epoch;
    resp.head_txid = st.head_txid;
    resp.page_size = st.page_size;
    resp.db_pages = st.db_pages;
    resp.checksum = st.checksum;
    resp.head_time_us = st.head_time_us;
    resp.now_us = now_us();
    len = protobuf_c_message_get_packed_size(&resp.base);
    out = xmalloc(len);
    protobuf_c_message_pack(&resp.base, out);
    h2call_reply(call, out, len);
    free(out);
}

/* ---- server callbacks -------------------------------------------------------*/

static void on_call_cb(void *arg, struct h2call *call)
{
    struct service *s = arg;
    const char *path = h2call_path(call);

    if (s->state != SERVICE_RUNNING) {
        h2call_fail(call, GRPC_UNAVAILABLE, "the primary is shutting down");
    } else if (strcmp(path, PATH_EXECUTE) == 0) {
        on_execute(s, call);
    } else if (strcmp(path, PATH_STATUS) == 0) {
        on_status(s, call);
    } else if (strcmp(path, PATH_SUBSCRIBE) == 0) {
        stream_subscribe(s->stream, call);
    } else {
        h2call_fail(call, GRPC_UNIMPLEMENTED, "unknown method");
    }
}

/* A closed connection rolls back its interactive transaction. */
static void on_close_cb(void *arg, uint64_t conn_id)
{
    struct service *s = arg;
    struct writer_job *job;

    if (!s->writer)
        return;
    job = xcalloc(1, sizeof(*job));
    job->kind = WRITER_JOB_CONN_CLOSED;
    job->conn_id = conn_id;
    writer_submit(s->writer, job);
}

static void on_job_done_cb(void *arg, struct writer_job *job)
{
    struct service *s = arg;
    struct h2call *call = job->owner;

    if (job->kind == WRITER_JOB_SNAPSHOT) {
        stream_job_done(s->stream, job);
        return;
    }
    /* Replication first: a client that shares its connection with a
     * subscriber gets the transaction's frames before this answer. */
    if (job->kind == WRITER_JOB_EXECUTE)
        stream_publish(s->stream);
    if (call) {
        if (job->status == GRPC_OK)
            h2call_reply(call, job->reply, job->reply_len);
        else
            h2call_fail(call, job->status, job->status_msg);
    }
    writer_job_free(job);
}

/* ---- drain ------------------------------------------------------------------*/

static void service_drain_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct service *s = container_of(t, struct service, drain_timer);
    int late = now_us() > s->drain_deadline_us;

    (void)revents;
    if (s->state == SERVICE_DRAINING && (writer_pending(s->writer) == 0 || late)) {
        service_set_state(s, SERVICE_CLOSING);
        admin_forget_writer(s->admin);
        writer_stop(s->writer); /* answers whatever is still queued */
        s->writer = NULL;
        h2server_shutdown(s->server);
        admin_shutdown(s->admin);
        log_info("database checkpointed and closed");
    }
    if (s->state == SERVICE_CLOSING && (h2server_conn_count(s->server) == 0 || late)) {
        ev_timer_stop(loop, t);
        ev_break(loop, EVBREAK_ALL);
    }
}

void service_drain(struct service *s)
{
    if (s->state != SERVICE_RUNNING)
        return;
    log_info("draining: finishing %u queued requests", writer_pending(s->writer));
    service_set_state(s, SERVICE_DRAINING);
    admin_set_draining(s->admin);
    stream_drain(s->stream); /* replicas reconnect; their snapshot jobs still come back */
    s->drain_deadline_us = now_us() + (int64_t)(DRAIN_DEADLINE * 1e6);
    ev_timer_init(&s->drain_timer, service_drain_timer_cb, 0.0, 0.02);
    ev_timer_start(s->loop, &s->drain_timer);
}

int service_start(struct ev_loop *loop, const struct service_config *cfg, struct service **out)
{
    struct service *s = xcalloc(1, sizeof(*s));
    struct h2server_config hc = {
        .listen = cfg->listen,
        .tls = cfg->tls,
        .max_message = cfg->max_message,
        .auth = cfg->auth,
        .idle_timeout = 300.0,
        .on_call = on_call_cb,
        .on_close = on_close_cb,
        .arg = s,
    };

    s->cfg = *cfg;
    s->loop = loop;
    if (writer_start(loop, &s->cfg.writer, on_job_done_cb, s, &s->writer) != 0)
        goto fail_writer;
    s->stream = stream_new(loop, &(struct stream_config){.database = s->cfg.database,
                                                         .db_path = s->cfg.writer.db_path,
                                                         .writer = s->writer});
    if (admin_start(loop,
                    &(struct admin_config){.database = s->cfg.database,
                                           .listen = cfg->metrics_listen,
                                           .writer = s->writer,
                                           .stream = s->stream,
                                           .retain_bytes = cfg->writer.capture.retain_bytes},
                    &s->admin) != 0)
        goto fail_admin;
    hc.http1 = admin_http(s->admin);
    if (h2server_start(loop, &hc, &s->server) != 0)
        goto fail_server;
    *out = s;
    return 0;

fail_server:
    admin_free(s->admin);
fail_admin:
    writer_stop(s->writer);
    stream_free(s->stream);
fail_writer:
    free(s);
    return -1;
}

void service_free(struct service *s)
{
    if (!s)
        return;
    stream_drain(s->stream); /* before the writer and its log go */
    if (s->writer)
        writer_stop(s->writer);
    s->writer = NULL;
    if (s->admin)
        admin_forget_writer(s->admin);
    h2server_free(s->server);
    admin_free(s->admin);
    stream_free(s->stream);
    free(s);
}
