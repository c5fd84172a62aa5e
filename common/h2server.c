/* boomerang: a gRPC server on HTTP/2 (nghttp2 on libev), h2c or TLS.
 *
 *   accept4 -> CONN_ACCEPTED -+- h2c ------------------------------+-> CONN_H2 -> CONN_CLOSING
 *                             +- TLS -> CONN_TLS_HANDSHAKE -(h2)---+        (freed later, from
 *                             +- h2c, cfg.http1 set: first bytes --+         the prepare watcher)
 *                                  "PRI * HTTP/2.0..." -> CONN_H2
 *                                  "GET /... HTTP/1.1" -> http_server_adopt, CONN_CLOSING
 *   socket/SSL -> nghttp2_session_mem_recv -> on_*_cb -> struct h2call (one per stream):
 *       HEADERS     -> method, content-type, bearer token checked
 *       DATA        -> grpc_decoder -> exactly one message
 *       END_STREAM  -> cfg.on_call (the app now owns the call)
 *   h2call_reply/send/finish -> call->out -> data provider -> nghttp2_session_mem_send
 *       -> conn->out -> socket/SSL
 *
 * Backpressure: frames are pulled from nghttp2 only while conn->out holds less
 * than H2_OUT_HIGH bytes, and the socket is read only then too, so a client
 * that does not read its responses stops being read from. A streaming
 * producer watches h2call_pending() and gets h2call_on_drain()'s callback
 * (fired after conn_send, outside nghttp2) when its queue has gone down;
 * h2call_flush() serializes what is queued at once (up to H2_FLUSH_HIGH), to
 * put one call's output on the wire ahead of what is submitted next.
 *
 * Lifetimes: a connection is only ever freed from the server's prepare watcher
 * (or h2server_free), never inside one of its own callbacks; conn_close()
 * merely marks it. A call belongs to its stream until on_call; from then on it
 * belongs to the application until it is ended. If the stream dies first the
 * call is orphaned (detached from the connection) and freed when it is ended.
 *
 * HTTP/1.1 on the same port: with cfg.http1, an h2c connection first reads
 * until its bytes either are the HTTP/2 client preface or diverge from it
 * (conn_sniff). An HTTP/1.x request line goes, fd and bytes read so far, to
 * that HTTP/1.1 server; anything else goes to nghttp2, which refuses it. */
#include "common/h2server.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/auth.h"
#include "common/buf.h"
#include "common/http.h"
#include "common/log.h"
#include "common/tls.h"

#define H2_OUT_HIGH          (1024 * 1024)      /* stop reading above this much unsent output */
#define H2_FLUSH_HIGH        (16 * 1024 * 1024) /* h2call_flush serializes up to this much */
#define H2_READ_CHUNK        (64 * 1024)
#define H2_READS_PER_EVENT   8 /* then yield to other connections */
#define H2_WRITES_PER_EVENT  16
#define H2_ACCEPTS_PER_EVENT 64
#define H2_MAX_STREAMS       1024
#define H2_STREAM_WINDOW     (1024 * 1024)
#define H2_CONN_WINDOW       (16 * 1024 * 1024)
#define H2_MAX_HEADER_BYTES  (16 * 1024)       /* per request, names and values */
#define H2_DEFAULT_MAX_MSG   (4 * 1024 * 1024) /* gRPC's default receive limit */
#define H2_ACCEPT_PAUSE      0.1               /* seconds to stop accepting when out of fds */
#define H2_TLS_LOG_PER_SEC   10
/* Seconds for a TLS handshake, and for the first bytes when sniffing for
 * HTTP/1.1, or idle_timeout if shorter. */
#define H2_HANDSHAKE_TIMEOUT 10.0

enum conn_state {
    CONN_ACCEPTED,      /* just accepted; the protocol is not chosen yet (with cfg.http1:
                           reading the first bytes) */
    CONN_TLS_HANDSHAKE, /* TLS handshake in progress */
    CONN_H2,            /* speaking HTTP/2 */
    CONN_CLOSING,       /* watchers stopped; freed from the prepare watcher */
};

enum h2call_state {
    H2CALL_RECEIVING,  /* reading the request; owned by the stream */
    H2CALL_DISPATCHED, /* handed to on_call; owned by the application */
    H2CALL_STREAMING,  /* response headers sent, messages flowing */
    H2CALL_ENDED,      /* response complete on our side; freed with its stream */
    H2CALL_ORPHANED,   /* stream gone before the app ended it; freed when it does */
};

struct conn;

struct h2call {
    enum h2call_state state;
    struct conn *conn;          /* NULL once orphaned */
    struct h2call *prev, *next; /* conn->calls */
    int32_t stream_id;
    uint64_t conn_id;
    char peer[112];  /* "conn#N IP:PORT stream S" */
    struct buf hdrs; /* request headers as "name\0value\0" pairs */
    struct grpc_decoder dec;
    struct buf msg;          /* the request message */
    unsigned nmsg;           /* messages received */
    struct buf out;          /* response bytes not yet taken by nghttp2 */
    int headers_sent;        /* response HEADERS (with a data provider) submitted */
    int deferred;            /* our data provider returned NGHTTP2_ERR_DEFERRED */
    int finished;            /* trailers follow once out drains */
    int req_done;            /* the request side has ended (END_STREAM received) */
    enum grpc_status status; /* for the trailers */
    char *message;           /* percent-encoded grpc-message, or NULL */
    h2call_cancel_cb on_cancel;
    void *cancel_arg;
    h2call_drain_cb on_drain;
    void *drain_arg;
    size_t drain_low; /* on_drain fires when out falls below this... */
    int drain_armed;  /* ...after a send left it at or above */
    int drain_due;    /* it fell: fire once the connection's send loop is done */
};

struct conn {
    struct h2server *srv;
    enum conn_state state;
    struct conn *prev, *next; /* srv->conns */
    struct conn *pend_next;   /* srv->pending, while pending */
    int pending;
    uint64_t id;
    int fd;
    char name[80];                           /* "conn#N IP:PORT" */
    char peer[64];                           /* "IP:PORT" */
    uint8_t sniff[NGHTTP2_CLIENT_MAGIC_LEN]; /* first bytes, while sniffing */
    size_t nsniff;
    SSL *ssl;
    int tls_up; /* handshake completed */
    nghttp2_session *sess;
    ev_io io;
    int io_events;        /* what io is started for (libev adds private bits) */
    int hs_want;          /* TLS handshake: EV_READ or EV_WRITE */
    int rd_want, wr_want; /* readiness a read / a write waits for (TLS may swap) */
    ev_timer idle;
    ev_tstamp last_active; /* last dispatch or end of a call, for the idle timeout */
    struct buf out;        /* bytes for the socket */
    struct h2call *calls;
    int in_session; /* inside nghttp2_session_mem_recv/mem_send: no reentry */
    int drains_due; /* some call's drain_due is set */
    int firing;     /* conn_fire_drains is running */
};

struct h2server {
    struct ev_loop *loop;
    struct h2server_config cfg;
    int fd;
    int port;
    ev_io accept_w;
    ev_timer accept_pause;
    struct conn *conns;
    unsigned nconns;
    uint64_t next_id;
    struct conn *pending; /* connections to flush or free before the loop blocks */
    ev_prepare prepare;
    nghttp2_session_callbacks *cbs;
    int shutting_down;
    int64_t tls_log_sec; /* rate limit for handshake failure lines */
    unsigned tls_log_count;
    uint8_t rbuf[H2_READ_CHUNK];
};

static void conn_close(struct conn *c, const char *why);
static void conn_schedule_flush(struct conn *c);

/* ---- calls ------------------------------------------------------------------ */

static const char *call_state_name(enum h2call_state s)
{
    static const char *const names[] = {"receiving", "dispatched", "streaming", "ended",
                                        "orphaned"};
    return names[s];
}

static void call_set_state(struct h2call *c, enum h2call_state s)
{
    static const unsigned allowed[] = {
        [H2CALL_RECEIVING] = 1u << H2CALL_DISPATCHED | 1u << H2CALL_ENDED,
        [H2CALL_DISPATCHED] = 1u << H2CALL_STREAMING | 1u << H2CALL_ENDED | 1u << H2CALL_ORPHANED,
        [H2CALL_STREAMING] = 1u << H2CALL_ENDED | 1u << H2CALL_ORPHANED,
        [H2CALL_ENDED] = 0,
        [H2CALL_ORPHANED] = 0,
    };

    assert(allowed[c->state] & (1u << s));
    /* trace, not debug: several lines per request would drown debug logs. */
    log_trace("%s: call %s -> %s", c->peer, call_state_name(c->state), call_state_name(s));
    c->state = s;
}

static struct h2call *call_new(struct conn *conn, int32_t stream_id)
{
    struct h2call *c = xcalloc(1, sizeof(*c));

    c->state = H2CALL_RECEIVING;
    c->conn = conn;
    c->stream_id = stream_id;
    c->conn_id = conn->id;
    snprintf(c->peer, sizeof(c->peer), "%s stream %d", conn->name, (int)stream_id);
    grpc_decoder_init(&c->dec, conn->srv->cfg.max_message);
    c->next = conn->calls;
    if (conn->calls)
        conn->calls->prev = c;
    conn->calls = c;
    return c;
}

static void call_free(struct h2call *c)
{
    assert(c->conn == NULL);
    if (c->hdrs.data) /* holds the authorization header */
        OPENSSL_cleanse(c->hdrs.data, c->hdrs.cap);
    grpc_decoder_free(&c->dec);
    buf_free(&c->hdrs);
    buf_free(&c->msg);
    buf_free(&c->out);
    free(c->message);
    free(c);
}

static void call_unlink(struct h2call *c)
{
    struct conn *conn = c->conn;

    if (c->prev)
        c->prev->next = c->next;
    else
        conn->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    c->conn = NULL;
}

/* The stream is gone (closed, reset, or its connection is being freed). */
static void call_detach(struct h2call *c)
{
    struct conn *conn = c->conn;

    if (c->state != H2CALL_RECEIVING)
        conn->last_active = ev_now(conn->srv->loop);
    call_unlink(c);
    if (c->state == H2CALL_RECEIVING || c->state == H2CALL_ENDED) {
        call_free(c);
        return;
    }
    call_set_state(c, H2CALL_ORPHANED);
    log_debug("%s: stream gone before the call ended", c->peer);
    if (c->on_cancel)
        c->on_cancel(c->cancel_arg, c); /* may end, and so free, the call */
}

static void nv_set(nghttp2_nv *nv, const char *name, const char *value)
{
    nv->name = (uint8_t *)name;
    nv->namelen = strlen(name);
    nv->value = (uint8_t *)value;
    nv->valuelen = strlen(value);
    nv->flags = NGHTTP2_NV_FLAG_NONE; /* nghttp2 copies both on submit */
}

/* Fill grpc-status (and grpc-message) into nv; returns how many were set. */
static size_t call_status_nv(struct h2call *c, nghttp2_nv *nv, char *code, size_t code_len)
{
    size_t n = 0;

    snprintf(code, code_len, "%d", (int)c->status);
    nv_set(&nv[n++], "grpc-status", code);
    if (c->message && c->message[0])
        nv_set(&nv[n++], "grpc-message", c->message);
    return n;
}

static int call_submit_trailers(struct h2call *c)
{
    nghttp2_nv nv[2];
    char code[16];
    size_t n = call_status_nv(c, nv, code, sizeof(code));

    return nghttp2_submit_trailer(c->conn->sess, c->stream_id, nv, n);
}

/* Data provider: hands out c->out; trailers follow when it drains after finish. */
static ssize_t call_read_cb(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                            size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                            void *user_data)
{
    struct h2call *c = source->ptr;
    size_t n = MIN(length, buf_avail(&c->out));

    (void)session;
    (void)stream_id;
    (void)user_data;
    if (n > 0)
        memcpy(buf, buf_head(&c->out), n);
    buf_consume(&c->out, n);
    if (c->drain_armed && buf_avail(&c->out) < c->drain_low) {
        c->drain_armed = 0;
        c->drain_due = 1;
        c->conn->drains_due = 1;
    }
    if (buf_avail(&c->out) > 0)
        return (ssize_t)n;
    if (c->finished) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
        if (call_submit_trailers(c) != 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        return (ssize_t)n;
    }
    if (n == 0) {
        c->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

/* Response HEADERS with a data provider reading c->out. */
static int call_submit_headers(struct h2call *c)
{
    nghttp2_data_provider prd = {.source.ptr = c, .read_callback = call_read_cb};
    nghttp2_nv nv[2];
    int rv;

    nv_set(&nv[0], ":status", "200");
    nv_set(&nv[1], "content-type", "application/grpc");
    rv = nghttp2_submit_response(c->conn->sess, c->stream_id, nv, ARRAY_LEN(nv), &prd);
    if (rv != 0) {
        log_error("%s: submit response failed: %s", c->peer, nghttp2_strerror(rv));
        return rv;
    }
    c->headers_sent = 1;
    return 0;
}

/* A single HEADERS frame with END_STREAM carrying the status. */
static void call_submit_trailers_only(struct h2call *c)
{
    nghttp2_nv nv[4];
    char code[16];
    size_t n = 2;
    int rv;

    nv_set(&nv[0], ":status", "200");
    nv_set(&nv[1], "content-type", "application/grpc");
    n += call_status_nv(c, nv + n, code, sizeof(code));
    rv = nghttp2_submit_response(c->conn->sess, c->stream_id, nv, n, NULL);
    if (rv != 0)
        log_error("%s: submit response failed: %s", c->peer, nghttp2_strerror(rv));
}

static void call_resume(struct h2call *c)
{
    int rv;

    if (!c->deferred)
        return;
    c->deferred = 0;
    rv = nghttp2_session_resume_data(c->conn->sess, c->stream_id);
    if (rv != 0)
        log_error("%s: resume data failed: %s", c->peer, nghttp2_strerror(rv));
}

/* Record the final status and get it on the wire: after the queued data if
 * any was sent, else as a trailers-only response. */
static void call_complete(struct h2call *c, enum grpc_status status, const char *message)
{
    c->finished = 1;
    c->status = status;
    c->message = message && message[0] ? grpc_percent_encode(message) : NULL;
    if (c->headers_sent)
        call_resume(c); /* the provider sends the rest, then the trailers */
    else if (buf_avail(&c->out) == 0 || call_submit_headers(c) != 0)
        call_submit_trailers_only(c);
    call_set_state(c, H2CALL_ENDED);
    conn_schedule_flush(c->conn);
}

/* The server itself answers a request it will not dispatch. */
static void call_reject(struct h2call *c, enum grpc_status status, const char *message)
{
    log_debug("%s: request refused: %s: %s", c->peer, grpc_status_name(status), message);
    call_complete(c, status, message);
}

/* Refuse with a bare HTTP status (not gRPC: wrong method or content-type). */
static void call_reject_http(struct h2call *c, const char *status)
{
    nghttp2_nv nv;
    int rv;

    log_debug("%s: request refused with HTTP %s", c->peer, status);
    nv_set(&nv, ":status", status);
    rv = nghttp2_submit_response(c->conn->sess, c->stream_id, &nv, 1, NULL);
    if (rv != 0)
        log_error("%s: submit response failed: %s", c->peer, nghttp2_strerror(rv));
    call_set_state(c, H2CALL_ENDED);
}

static const char *call_find_header(const struct h2call *c, const char *name)
{
    const char *p = (const char *)c->hdrs.data, *end = p + c->hdrs.len;

    while (p && p < end) {
        const char *value = p + strlen(p) + 1;
        if (strcmp(p, name) == 0)
            return value;
        p = value + strlen(value) + 1;
    }
    return NULL;
}

/* "application/grpc", optionally followed by "+subtype" or ";params". */
static int is_grpc_content_type(const char *ct)
{
    static const char base[] = "application/grpc";
    size_t n = sizeof(base) - 1;

    return ct && strncmp(ct, base, n) == 0 && (ct[n] == '\0' || ct[n] == '+' || ct[n] == ';');
}

/* All request headers are in: decide whether this call may proceed. */
static void call_check_request(struct h2call *c)
{
    const struct h2server *srv = c->conn->srv;
    const char *method = call_find_header(c, ":method");

    if (!method || strcmp(method, "POST") != 0)
        call_reject_http(c, "405");
    else if (!is_grpc_content_type(call_find_header(c, "content-type")))
        call_reject_http(c, "415");
    else if (srv->cfg.auth &&
             !auth_check_bearer(srv->cfg.auth, call_find_header(c, "authorization")))
        call_reject(c, GRPC_UNAUTHENTICATED, "missing or invalid bearer token");
}

static void call_reject_decode(struct h2call *c, int err)
{
    char why[128];

    switch (err) {
    case GRPC_ERR_TOO_LARGE:
        snprintf(why, sizeof(why), "request message of %u bytes exceeds the limit of %zu bytes",
                 c->dec.msg_len, c->dec.max_len);
        call_reject(c, GRPC_RESOURCE_EXHAUSTED, why);
        break;
    case GRPC_ERR_COMPRESSED:
        call_reject(c, GRPC_UNIMPLEMENTED, "compressed messages are not supported");
        break;
    default:
        call_reject(c, GRPC_INTERNAL, "invalid gRPC message framing");
        break;
    }
}

static void call_take_data(struct h2call *c, const uint8_t *data, size_t len)
{
    while (len > 0) {
        size_t used;
        int rv = grpc_decoder_feed(&c->dec, data, len, &used);

        data += used;
        len -= used;
        if (rv < 0) {
            call_reject_decode(c, rv);
            return;
        }
        if (rv == 0)
            return;
        if (++c->nmsg > 1) {
            call_reject(c, GRPC_INTERNAL, "expected exactly one request message");
            return;
        }
        /* Keep the message; the decoder starts a fresh buffer. */
        c->msg = c->dec.msg;
        memset(&c->dec.msg, 0, sizeof(c->dec.msg));
        grpc_decoder_next(&c->dec);
    }
}

/* END_STREAM from the client: dispatch a well-formed unary request. */
static void call_request_end(struct h2call *c)
{
    struct conn *conn = c->conn;

    c->req_done = 1;
    if (c->state != H2CALL_RECEIVING)
        return;
    if (c->nmsg != 1 || !grpc_decoder_idle(&c->dec)) {
        call_reject(c, GRPC_INTERNAL, "expected exactly one request message");
        return;
    }
    call_set_state(c, H2CALL_DISPATCHED);
    conn->last_active = ev_now(conn->srv->loop);
    conn->srv->cfg.on_call(conn->srv->cfg.arg, c);
}

/* ---- nghttp2 callbacks --------------------------------------------------------- */

static struct h2call *stream_call(nghttp2_session *session, int32_t stream_id)
{
    return nghttp2_session_get_stream_user_data(session, stream_id);
}

static int on_begin_headers_cb(nghttp2_session *session, const nghttp2_frame *frame,
                               void *user_data)
{
    struct conn *conn = user_data;
    struct h2call *c;

    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    c = call_new(conn, frame->hd.stream_id);
    if (nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, c) != 0) {
        call_unlink(c);
        call_free(c);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int on_header_cb(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *user_data)
{
    struct h2call *c = stream_call(session, frame->hd.stream_id);
    static const uint8_t nul = 0;

    (void)flags;
    (void)user_data;
    /* Only the request's own header block; client trailers are ignored. */
    if (!c || c->state != H2CALL_RECEIVING || frame->hd.type != NGHTTP2_HEADERS ||
        frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (c->hdrs.len + namelen + valuelen + 2 > H2_MAX_HEADER_BYTES) {
        log_debug("%s: request headers exceed %d bytes", c->peer, H2_MAX_HEADER_BYTES);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets the stream */
    }
    buf_append(&c->hdrs, name, namelen);
    buf_append(&c->hdrs, &nul, 1);
    buf_append(&c->hdrs, value, valuelen);
    buf_append(&c->hdrs, &nul, 1);
    return 0;
}

static int on_data_chunk_recv_cb(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                                 const uint8_t *data, size_t len, void *user_data)
{
    struct h2call *c = stream_call(session, stream_id);

    (void)flags;
    (void)user_data;
    if (c && c->state == H2CALL_RECEIVING)
        call_take_data(c, data, len);
    return 0;
}

static int on_frame_recv_cb(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct h2call *c;

    (void)user_data;
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA)
        return 0;
    c = stream_call(session, frame->hd.stream_id);
    if (!c)
        return 0;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST &&
        c->state == H2CALL_RECEIVING)
        call_check_request(c);
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
        call_request_end(c);
    return 0;
}

/* A response ended before its request did (we refused it early): tell the
 * client to stop sending, as RFC 9113 section 8.1 allows. */
static int on_frame_send_cb(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct h2call *c;

    (void)user_data;
    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    c = stream_call(session, frame->hd.stream_id);
    if (c && !c->req_done) {
        int rv = nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                           NGHTTP2_NO_ERROR);
        if (rv != 0)
            log_debug("%s: submit RST_STREAM failed: %s", c->peer, nghttp2_strerror(rv));
    }
    return 0;
}

static int on_stream_close_cb(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                              void *user_data)
{
    struct h2call *c = stream_call(session, stream_id);

    (void)user_data;
    if (!c)
        return 0;
    if (error_code != NGHTTP2_NO_ERROR)
        log_debug("%s: stream reset: %s", c->peer, nghttp2_http2_strerror(error_code));
    call_detach(c);
    return 0;
}

static int on_error_cb(nghttp2_session *session, int lib_error_code, const char *msg, size_t len,
                       void *user_data)
{
    struct conn *conn = user_data;

    (void)session;
    log_debug("%s: http2 error %d: %.*s", conn->name, lib_error_code, (int)len, msg);
    return 0;
}

static int callbacks_new(nghttp2_session_callbacks **out)
{
    nghttp2_session_callbacks *cbs;
    int rv = nghttp2_session_callbacks_new(&cbs);

    if (rv != 0)
        return rv;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers_cb);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header_cb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk_recv_cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv_cb);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send_cb);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close_cb);
    nghttp2_session_callbacks_set_error_callback2(cbs, on_error_cb);
    *out = cbs;
    return 0;
}

/* ---- connection transport -------------------------------------------------------- */

static void conn_log_errno(struct conn *c, const char *action, int err)
{
    log_debug("%s: %s failed: %s", c->name, action, strerror(err));
}

/* SSL_read/SSL_write/SSL_do_handshake result: 0 to retry when *want is ready,
 * -1 for an error or a clean close (logged at debug). */
static int conn_ssl_retry(struct conn *c, int r, const char *action, int *want)
{
    char why[256];
    int e = SSL_get_error(c->ssl, r);

    switch (e) {
    case SSL_ERROR_WANT_READ:
        *want = EV_READ;
        return 0;
    case SSL_ERROR_WANT_WRITE:
        *want = EV_WRITE;
        return 0;
    case SSL_ERROR_ZERO_RETURN:
        log_debug("%s: peer closed the TLS session", c->name);
        return -1;
    case SSL_ERROR_SYSCALL:
        if (errno != 0) {
            conn_log_errno(c, action, errno);
            return -1;
        }
        /* An unexpected EOF: the queue may say more. */
        __attribute__((fallthrough));
    default:
        log_debug("%s: %s failed: %s", c->name, action, tls_error_string(why, sizeof(why)));
        return -1;
    }
}

/* Read up to n bytes: > 0 bytes read, 0 would block, -1 closed or failed. */
static ssize_t conn_recv_raw(struct conn *c, uint8_t *p, size_t n)
{
    int r;

    if (!c->ssl) {
        for (;;) {
            ssize_t got = recv(c->fd, p, n, 0);
            if (got > 0)
                return got;
            if (got == 0) {
                log_debug("%s: peer closed the connection", c->name);
                return -1;
            }
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            conn_log_errno(c, "read", errno);
            return -1;
        }
    }
    ERR_clear_error();
    errno = 0;
    r = SSL_read(c->ssl, p, (int)MIN(n, (size_t)INT32_MAX));
    if (r > 0) {
        c->rd_want = EV_READ;
        return r;
    }
    return conn_ssl_retry(c, r, "tls read", &c->rd_want);
}

/* Write up to n bytes: > 0 bytes written, 0 would block, -1 failed. */
static ssize_t conn_send_raw(struct conn *c, const uint8_t *p, size_t n)
{
    int r;

    if (!c->ssl) {
        for (;;) {
            ssize_t put = send(c->fd, p, n, MSG_NOSIGNAL);
            if (put >= 0)
                return put;
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            conn_log_errno(c, "write", errno);
            return -1;
        }
    }
    ERR_clear_error();
    errno = 0;
    r = SSL_write(c->ssl, p, (int)MIN(n, (size_t)INT32_MAX));
    if (r > 0) {
        c->wr_want = EV_WRITE;
        return r;
    }
    return conn_ssl_retry(c, r, "tls write", &c->wr_want);
}

/* ---- connection life ------------------------------------------------------------- */

static const char *conn_state_name(enum conn_state s)
{
    static const char *const names[] = {"accepted", "tls-handshake", "h2", "closing"};
    return names[s];
}

static void conn_set_state(struct conn *c, enum conn_state s)
{
    static const unsigned allowed[] = {
        [CONN_ACCEPTED] = 1u << CONN_TLS_HANDSHAKE | 1u << CONN_H2 | 1u << CONN_CLOSING,
        [CONN_TLS_HANDSHAKE] = 1u << CONN_H2 | 1u << CONN_CLOSING,
        [CONN_H2] = 1u << CONN_CLOSING,
        [CONN_CLOSING] = 0,
    };

    assert(allowed[c->state] & (1u << s));
    log_debug("%s: %s -> %s", c->name, conn_state_name(c->state), conn_state_name(s));
    c->state = s;
}

/* Queue c for the prepare watcher (flush, or free if closing). */
static void conn_schedule(struct conn *c)
{
    struct h2server *srv = c->srv;

    if (c->pending)
        return;
    c->pending = 1;
    c->pend_next = srv->pending;
    srv->pending = c;
    ev_prepare_start(srv->loop, &srv->prepare);
}

static void conn_schedule_flush(struct conn *c)
{
    if (c->state == CONN_H2)
        conn_schedule(c);
}

static void conn_update_io(struct conn *c)
{
    int ev = 0;

    if (c->state == CONN_TLS_HANDSHAKE) {
        ev = c->hs_want;
    } else if (c->state == CONN_ACCEPTED) {
        ev = EV_READ; /* sniffing the first bytes */
    } else if (c->state == CONN_H2) {
        if (buf_avail(&c->out) < H2_OUT_HIGH)
            ev |= c->rd_want;
        if (buf_avail(&c->out) > 0)
            ev |= c->wr_want;
    }
    if (ev == c->io_events)
        return;
    ev_io_stop(c->srv->loop, &c->io);
    ev_io_set(&c->io, c->fd, ev);
    if (ev)
        ev_io_start(c->srv->loop, &c->io);
    c->io_events = ev;
}

/* The only way a connection ends: stop its watchers now, free it later. */
static void conn_close(struct conn *c, const char *why)
{
    if (c->state == CONN_CLOSING)
        return;
    log_debug("%s: closing: %s", c->name, why);
    conn_set_state(c, CONN_CLOSING);
    ev_io_stop(c->srv->loop, &c->io);
    ev_timer_stop(c->srv->loop, &c->idle);
    c->io_events = 0;
    conn_schedule(c);
}

static void conn_free(struct conn *c)
{
    struct h2server *srv = c->srv;
    uint64_t id = c->id;

    assert(c->state == CONN_CLOSING && !c->pending);
    /* Cancel the calls first: on_close promises they are all settled. */
    while (c->calls)
        call_detach(c->calls);
    if (c->ssl) {
        if (c->tls_up) {
            ERR_clear_error();
            (void)SSL_shutdown(c->ssl); /* best effort close_notify */
        }
        SSL_free(c->ssl);
    }
    nghttp2_session_del(c->sess);
    if (c->fd >= 0 && close(c->fd) != 0) /* -1: handed to the HTTP/1.1 server */
        conn_log_errno(c, "close", errno);
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->nconns--;
    log_debug("%s: closed", c->name);
    buf_free(&c->out);
    free(c);
    if (srv->cfg.on_close)
        srv->cfg.on_close(srv->cfg.arg, id);
}

/* Serialize frames from nghttp2 into conn->out until it holds `limit` bytes
 * or nghttp2 has nothing more to send. Returns 0, or -1 if the session failed. */
static int conn_pull(struct conn *c, size_t limit)
{
    while (buf_avail(&c->out) < limit) {
        const uint8_t *data;
        ssize_t n;

        c->in_session = 1;
        n = nghttp2_session_mem_send(c->sess, &data);
        c->in_session = 0;
        if (n < 0) {
            log_debug("%s: http2 send failed: %s", c->name, nghttp2_strerror((int)n));
            return -1;
        }
        if (n == 0)
            break;
        buf_append(&c->out, data, (size_t)n);
    }
    return 0;
}

/* Pull frames from nghttp2 and write them until the socket blocks, nothing is
 * left, or H2_OUT_HIGH bytes wait. Returns 0, or -1 if the connection is dead. */
static int conn_send(struct conn *c)
{
    for (int round = 0;; round++) {
        ssize_t w;

        if (conn_pull(c, H2_OUT_HIGH) < 0)
            return -1;
        if (buf_avail(&c->out) == 0)
            return 0;
        /* A fast reader of a long stream must not starve the other
         * connections: the write watcher brings us back (out is not empty). */
        if (round == H2_WRITES_PER_EVENT)
            return 0;
        w = conn_send_raw(c, buf_head(&c->out), buf_avail(&c->out));
        if (w < 0)
            return -1;
        if (w == 0)
            return 0;
        buf_consume(&c->out, (size_t)w);
    }
}

/* Read and process input while there is room for the output it may cause.
 * Returns 0, 1 if it stopped at the per-event cap with maybe more to read, or
 * -1 if the connection is dead. */
static int conn_recv(struct conn *c)
{
    struct h2server *srv = c->srv;

    for (int i = 0; i < H2_READS_PER_EVENT; i++) {
        ssize_t n, rv;

        if (buf_avail(&c->out) >= H2_OUT_HIGH || !nghttp2_session_want_read(c->sess))
            return 0;
        n = conn_recv_raw(c, srv->rbuf, sizeof(srv->rbuf));
        if (n <= 0)
            return (int)n;
        c->in_session = 1;
        rv = nghttp2_session_mem_recv(c->sess, srv->rbuf, (size_t)n);
        c->in_session = 0;
        if (rv < 0) {
            log_debug("%s: http2 receive failed: %s", c->name, nghttp2_strerror((int)rv));
            (void)conn_send(c); /* best effort: the GOAWAY nghttp2 queued */
            return -1;
        }
        if (conn_send(c) < 0 || c->state != CONN_H2)
            return -1;
    }
    return 1;
}

/* Close once nghttp2 is done (GOAWAY exchanged, no streams) and all is written. */
static void conn_check_done(struct conn *c)
{
    if (c->state == CONN_H2 && !nghttp2_session_want_read(c->sess) &&
        !nghttp2_session_want_write(c->sess) && buf_avail(&c->out) == 0)
        conn_close(c, "session finished");
}

/* Tell the calls whose queued output fell below their low-water mark. Each
 * callback may send, end calls or flush, so the scan restarts after each one
 * (the list may have changed); a nested call returns and leaves the work to
 * this loop. */
static void conn_fire_drains(struct conn *c)
{
    if (c->firing)
        return;
    c->firing = 1;
    while (c->drains_due && c->state == CONN_H2) {
        c->drains_due = 0;
        for (struct h2call *call = c->calls; call; call = call->next) {
            if (!call->drain_due)
                continue;
            call->drain_due = 0;
            if (call->state != H2CALL_STREAMING || !call->on_drain)
                continue;
            c->drains_due = 1; /* look at the rest again, from the head */
            call->on_drain(call->drain_arg, call);
            break;
        }
    }
    c->firing = 0;
}

static void conn_run(struct conn *c)
{
    int more = 0;

    if (conn_send(c) < 0 || (more = conn_recv(c)) < 0) {
        conn_close(c, "connection failed or closed by peer");
        return;
    }
    conn_check_done(c);
    conn_update_io(c);
    /* Maybe more is waiting: come back after the other connections had a
     * turn. (After conn_update_io, which would drop a fed event.) */
    if (more && c->state == CONN_H2)
        ev_feed_event(c->srv->loop, &c->io, EV_READ);
    conn_fire_drains(c);
}

/* Flush from the prepare watcher: output submitted outside an I/O callback. */
static void conn_service(struct conn *c)
{
    if (conn_send(c) < 0) {
        conn_close(c, "write failed");
        return;
    }
    conn_check_done(c);
    conn_update_io(c);
    /* TLS may hold decrypted bytes that no socket event will announce. */
    if (c->state == CONN_H2 && c->ssl && SSL_has_pending(c->ssl) &&
        buf_avail(&c->out) < H2_OUT_HIGH)
        ev_feed_event(c->srv->loop, &c->io, EV_READ);
    conn_fire_drains(c);
}

static void conn_goaway(struct conn *c)
{
    int rv = nghttp2_submit_goaway(c->sess, NGHTTP2_FLAG_NONE,
                                   nghttp2_session_get_last_proc_stream_id(c->sess),
                                   NGHTTP2_NO_ERROR, NULL, 0);
    if (rv != 0)
        log_debug("%s: submit GOAWAY failed: %s", c->name, nghttp2_strerror(rv));
    conn_schedule_flush(c);
}

/* Enter HTTP/2: our SETTINGS go out at once (RFC 9113 lets the server speak
 * first). pre[0..n) are bytes already read while sniffing; nghttp2 gets
 * them before anything else. */
static void conn_start_protocol(struct conn *c, const uint8_t *pre, size_t n)
{
    conn_set_state(c, CONN_H2);
    if (c->srv->shutting_down)
        conn_goaway(c);
    if (n > 0) {
        c->in_session = 1; /* on_call may run in here: h2call_flush must not re-enter */
        ssize_t rv = nghttp2_session_mem_recv(c->sess, pre, n);
        c->in_session = 0;
        if (rv < 0) {
            log_debug("%s: http2 receive failed: %s", c->name, nghttp2_strerror((int)rv));
            (void)conn_send(c); /* best effort: the GOAWAY nghttp2 queued */
            conn_close(c, "bad connection preface");
            return;
        }
    }
    conn_run(c);
}

/* "GET /" and the like: a method token, then a space (RFC 9112 request-line),
 * as far as the bytes go. */
static int looks_like_http1(const uint8_t *p, size_t n)
{
    if (n == 0 || p[0] < 'A' || p[0] > 'Z')
        return 0;
    for (size_t i = 1; i < n && p[i] != ' '; i++) {
        if (!((p[i] >= 'A' && p[i] <= 'Z') || p[i] == '-'))
            return 0;
    }
    return 1;
}

/* Give the connection to the HTTP/1.1 server: it now owns the fd. */
static void conn_handover(struct conn *c)
{
    int fd = c->fd;

    c->fd = -1;
    conn_close(c, "HTTP/1.x request: handed to the HTTP/1.1 server");
    if (http_server_adopt(c->srv->cfg.http1, fd, c->sniff, c->nsniff, c->peer) != 0)
        log_debug("%s: the HTTP/1.1 server refused the connection", c->name);
}

/* h2c with cfg.http1: read until the bytes are the whole HTTP/2 client
 * preface, or stop matching it. Reading (not MSG_PEEK) keeps a level-
 * triggered watcher from spinning while a preface arrives in pieces. */
static void conn_sniff(struct conn *c)
{
    ssize_t n = conn_recv_raw(c, c->sniff + c->nsniff, sizeof(c->sniff) - c->nsniff);

    if (n < 0) {
        conn_close(c, "closed before sending a request");
        return;
    }
    c->nsniff += (size_t)n;
    if (n == 0 || (memcmp(c->sniff, NGHTTP2_CLIENT_MAGIC, c->nsniff) == 0 &&
                   c->nsniff < NGHTTP2_CLIENT_MAGIC_LEN))
        return; /* wait for more */
    if (memcmp(c->sniff, NGHTTP2_CLIENT_MAGIC, c->nsniff) != 0 &&
        looks_like_http1(c->sniff, c->nsniff))
        conn_handover(c);
    else
        conn_start_protocol(c, c->sniff, c->nsniff);
}

static void conn_log_tls_failure(struct conn *c, const char *why)
{
    struct h2server *srv = c->srv;
    int64_t sec = mono_us() / 1000000;

    if (sec != srv->tls_log_sec) {
        srv->tls_log_sec = sec;
        srv->tls_log_count = 0;
    }
    if (++srv->tls_log_count <= H2_TLS_LOG_PER_SEC)
        log_info("%s: tls handshake failed: %s", c->name, why);
    else
        log_debug("%s: tls handshake failed: %s", c->name, why);
}

static void conn_handshake(struct conn *c)
{
    char why[256];
    int r, e;

    ERR_clear_error();
    errno = 0;
    r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        if (!tls_alpn_is_h2(c->ssl)) {
            conn_log_tls_failure(c, "client did not negotiate ALPN h2");
            conn_close(c, "no ALPN h2");
            return;
        }
        c->tls_up = 1;
        log_debug("%s: tls established (%s)", c->name, SSL_get_version(c->ssl));
        conn_start_protocol(c, NULL, 0);
        return;
    }
    e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        c->hs_want = e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE;
        conn_update_io(c);
        return;
    }
    if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
        snprintf(why, sizeof(why), "%s", errno ? strerror(errno) : "peer closed the connection");
    else
        tls_error_string(why, sizeof(why));
    conn_log_tls_failure(c, why);
    conn_close(c, "tls handshake failed");
}

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn *c = container_of(w, struct conn, io);

    (void)loop;
    (void)revents;
    if (c->state == CONN_TLS_HANDSHAKE)
        conn_handshake(c);
    else if (c->state == CONN_ACCEPTED)
        conn_sniff(c);
    else if (c->state == CONN_H2)
        conn_run(c);
}

static int conn_busy(const struct conn *c)
{
    for (const struct h2call *call = c->calls; call; call = call->next) {
        if (call->state != H2CALL_RECEIVING)
            return 1;
    }
    return 0;
}

/* Idle means: no call the app is working on and none being answered, for
 * idle_timeout seconds since the last one. Bytes that never complete a request
 * (slowloris) do not count as activity. */
static void conn_idle_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct conn *c = container_of(w, struct conn, idle);
    double timeout = c->srv->cfg.idle_timeout;
    ev_tstamp left;

    (void)revents;
    if (c->state == CONN_TLS_HANDSHAKE) {
        conn_log_tls_failure(c, "handshake timed out");
        conn_close(c, "tls handshake timeout");
        return;
    }
    if (c->state == CONN_ACCEPTED) {
        conn_close(c, "no request bytes in time");
        return;
    }
    if (timeout <= 0)
        return; /* only the handshake deadline was armed */
    if (conn_busy(c))
        c->last_active = ev_now(loop);
    left = c->last_active + timeout - ev_now(loop);
    if (left > 0) {
        ev_timer_set(w, left, 0);
        ev_timer_start(loop, w);
        return;
    }
    if (c->state == CONN_H2) {
        /* Say goodbye properly; if the write fails we close regardless. */
        (void)nghttp2_session_terminate_session(c->sess, NGHTTP2_NO_ERROR);
        (void)conn_send(c);
    }
    conn_close(c, "idle timeout");
}

static int conn_init_h2(struct conn *c)
{
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, H2_MAX_STREAMS},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, H2_MAX_HEADER_BYTES},
    };
    int rv = nghttp2_session_server_new(&c->sess, c->srv->cbs, c);

    if (rv != 0)
        goto fail;
    rv = nghttp2_submit_settings(c->sess, NGHTTP2_FLAG_NONE, iv, ARRAY_LEN(iv));
    if (rv != 0)
        goto fail_sess;
    /* The connection window starts at 64 KiB whatever SETTINGS say; grow it
     * so one large request does not stall on WINDOW_UPDATE round trips. */
    rv = nghttp2_session_set_local_window_size(c->sess, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW);
    if (rv != 0)
        goto fail_sess;
    return 0;

fail_sess:
    nghttp2_session_del(c->sess);
    c->sess = NULL;
fail:
    log_error("%s: http2 session setup failed: %s", c->name, nghttp2_strerror(rv));
    return -1;
}

static void format_addr(const struct sockaddr_storage *ss, char *out, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;

    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
        port = ntohs(a->sin_port);
        snprintf(out, len, "%s:%d", ip, port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        port = ntohs(a->sin6_port);
        snprintf(out, len, "[%s]:%d", ip, port);
    } else {
        snprintf(out, len, "unknown");
    }
}

static int conn_init_tls(struct conn *c)
{
    char why[256];

    c->ssl = SSL_new(c->srv->cfg.tls);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
        log_error("%s: tls setup failed: %s", c->name, tls_error_string(why, sizeof(why)));
        return -1;
    }
    SSL_set_accept_state(c->ssl);
    return 0;
}

/* Link a set-up connection into the server and start its watchers. */
static void conn_activate(struct conn *c)
{
    struct h2server *srv = c->srv;
    double first;

    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    log_debug("%s: accepted", c->name);
    ev_io_init(&c->io, conn_io_cb, c->fd, 0);
    c->last_active = ev_now(srv->loop);
    first = srv->cfg.idle_timeout;
    if ((srv->cfg.tls || srv->cfg.http1) && (first <= 0 || first > H2_HANDSHAKE_TIMEOUT))
        first = H2_HANDSHAKE_TIMEOUT; /* a silent client must not hold a conn forever */
    ev_timer_init(&c->idle, conn_idle_cb, first, 0);
    if (first > 0)
        ev_timer_start(srv->loop, &c->idle);
    if (srv->cfg.tls) {
        conn_set_state(c, CONN_TLS_HANDSHAKE);
        conn_update_io(c);
    } else if (srv->cfg.http1) {
        conn_update_io(c); /* sniff: HTTP/2 preface or HTTP/1.x? */
    } else {
        conn_start_protocol(c, NULL, 0);
    }
}

static void conn_new(struct h2server *srv, int fd, const struct sockaddr_storage *peer)
{
    struct conn *c = xcalloc(1, sizeof(*c));
    char addr[INET6_ADDRSTRLEN + 16];
    int one = 1;

    c->srv = srv;
    c->fd = fd;
    c->id = ++srv->next_id;
    c->rd_want = c->hs_want = EV_READ;
    c->wr_want = EV_WRITE;
    format_addr(peer, addr, sizeof(addr));
    snprintf(c->peer, sizeof(c->peer), "%s", addr);
    snprintf(c->name, sizeof(c->name), "conn#%llu %s", (unsigned long long)c->id, addr);
    if (peer->ss_family != AF_UNIX &&
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
        conn_log_errno(c, "set TCP_NODELAY", errno);
    if (conn_init_h2(c) < 0)
        goto fail_conn;
    if (srv->cfg.tls && conn_init_tls(c) < 0)
        goto fail_sess;
    conn_activate(c);
    return;

fail_sess:
    SSL_free(c->ssl);
    nghttp2_session_del(c->sess);
fail_conn:
    free(c);
    if (close(fd) != 0)
        log_debug("close failed: %s", strerror(errno));
}

/* ---- server ------------------------------------------------------------------------ */

static void server_prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct h2server *srv = container_of(w, struct h2server, prepare);
    struct conn *c;

    (void)revents;
    while ((c = srv->pending) != NULL) {
        srv->pending = c->pend_next;
        c->pending = 0;
        if (c->state == CONN_CLOSING)
            conn_free(c);
        else if (c->state == CONN_H2)
            conn_service(c);
    }
    ev_prepare_stop(loop, w);
}

static void server_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct h2server *srv = container_of(w, struct h2server, accept_w);

    (void)revents;
    for (int i = 0; i < H2_ACCEPTS_PER_EVENT; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(srv->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd >= 0) {
            conn_new(srv, fd, &ss);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        log_warn("accept failed: %s", strerror(errno));
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            /* Level-triggered: retrying now would spin. Pause instead. */
            ev_io_stop(loop, &srv->accept_w);
            /* Set it anew: an expired timer keeps an already-elapsed offset. */
            ev_timer_set(&srv->accept_pause, H2_ACCEPT_PAUSE, 0);
            ev_timer_start(loop, &srv->accept_pause);
        }
        return;
    }
}

static void server_accept_pause_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct h2server *srv = container_of(w, struct h2server, accept_pause);

    (void)revents;
    if (srv->fd >= 0)
        ev_io_start(loop, &srv->accept_w);
}

static int listen_on(const struct addrinfo *ai)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    int one = 1, err;

    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
        err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

/* Bind the first address host resolves to. Returns the fd or -errno (logged). */
static int server_bind(const char *listen_str, char *bound, size_t bound_len, int *port)
{
    struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res, *ai;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char host[256], portstr[16];
    int fd = -EADDRNOTAVAIL, rv;

    if (util_split_hostport(listen_str, host, sizeof(host), port) != 0) {
        log_error("listen on %s failed: expected HOST:PORT", listen_str);
        return -EINVAL;
    }
    snprintf(portstr, sizeof(portstr), "%d", *port);
    rv = getaddrinfo(host, portstr, &hints, &res);
    if (rv != 0) {
        log_error("listen on %s failed: %s", listen_str, gai_strerror(rv));
        return -EADDRNOTAVAIL;
    }
    for (ai = res; ai && fd < 0; ai = ai->ai_next)
        fd = listen_on(ai);
    freeaddrinfo(res);
    if (fd < 0) {
        log_error("listen on %s failed: %s", listen_str, strerror(-fd));
        return fd;
    }
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
        rv = -errno;
        log_error("listen on %s failed: getsockname: %s", listen_str, strerror(errno));
        close(fd);
        return rv;
    }
    format_addr(&ss, bound, bound_len);
    *port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                           : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

/* A peer that vanishes must not kill the process: OpenSSL writes with
 * write(2), which raises SIGPIPE. Leave any handler the program installed. */
static void ignore_sigpipe(void)
{
    struct sigaction sa;

    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
        sa.sa_handler = SIG_IGN;
        (void)sigaction(SIGPIPE, &sa, NULL);
    }
}

int h2server_start(struct ev_loop *loop, const struct h2server_config *cfg, struct h2server **out)
{
    struct h2server *srv;
    char bound[INET6_ADDRSTRLEN + 16];
    int fd, port, rv;

    if (!cfg->on_call || !cfg->listen) {
        log_error("start gRPC server failed: listen address and on_call are required");
        return -EINVAL;
    }
    fd = server_bind(cfg->listen, bound, sizeof(bound), &port);
    if (fd < 0)
        return fd;
    srv = xcalloc(1, sizeof(*srv));
    rv = callbacks_new(&srv->cbs);
    if (rv != 0) {
        log_error("start gRPC server failed: %s", nghttp2_strerror(rv));
        free(srv);
        close(fd);
        return -ENOMEM;
    }
    ignore_sigpipe();
    srv->loop = loop;
    srv->cfg = *cfg;
    if (srv->cfg.max_message == 0)
        srv->cfg.max_message = H2_DEFAULT_MAX_MSG;
    srv->fd = fd;
    srv->port = port;
    ev_prepare_init(&srv->prepare, server_prepare_cb);
    ev_timer_init(&srv->accept_pause, server_accept_pause_cb, H2_ACCEPT_PAUSE, 0);
    ev_io_init(&srv->accept_w, server_accept_cb, fd, EV_READ);
    ev_io_start(loop, &srv->accept_w);
    log_info("listening on %s (%s)", bound, cfg->tls ? "tls" : "h2c");
    *out = srv;
    return 0;
}

int h2server_port(const struct h2server *s)
{
    return s->port;
}

unsigned h2server_conn_count(const struct h2server *s)
{
    return s->nconns;
}

static void server_stop_listening(struct h2server *s)
{
    if (s->fd < 0)
        return;
    ev_io_stop(s->loop, &s->accept_w);
    ev_timer_stop(s->loop, &s->accept_pause);
    if (close(s->fd) != 0)
        log_warn("close listener failed: %s", strerror(errno));
    s->fd = -1;
}

void h2server_shutdown(struct h2server *s)
{
    if (s->shutting_down)
        return;
    s->shutting_down = 1;
    server_stop_listening(s);
    log_info("shutting down: %u connection(s) open", s->nconns);
    for (struct conn *c = s->conns; c; c = c->next) {
        if (c->state == CONN_TLS_HANDSHAKE || c->state == CONN_ACCEPTED)
            conn_close(c, "shutdown");
        else if (c->state == CONN_H2)
            conn_goaway(c);
    }
}

void h2server_free(struct h2server *s)
{
    if (!s)
        return;
    server_stop_listening(s);
    for (struct conn *c = s->conns; c; c = c->next)
        conn_close(c, "server stopped");
    /* Every connection is closing, so nothing can be scheduled again. */
    while (s->pending) {
        s->pending->pending = 0;
        s->pending = s->pending->pend_next;
    }
    while (s->conns)
        conn_free(s->conns);
    ev_prepare_stop(s->loop, &s->prepare);
    nghttp2_session_callbacks_del(s->cbs);
    free(s);
}

/* ---- call API ------------------------------------------------------------------------ */

const char *h2call_path(const struct h2call *c)
{
    const char *p = call_find_header(c, ":path");
    return p ? p : "";
}

const uint8_t *h2call_message(const struct h2call *c, size_t *len)
{
    *len = buf_avail(&c->msg);
    return c->msg.data ? buf_head(&c->msg) : (const uint8_t *)"";
}

const char *h2call_header(const struct h2call *c, const char *name)
{
    return call_find_header(c, name);
}

uint64_t h2call_conn_id(const struct h2call *c)
{
    return c->conn_id;
}

const char *h2call_peer(const struct h2call *c)
{
    return c->peer;
}

int h2call_alive(const struct h2call *c)
{
    return (c->state == H2CALL_DISPATCHED || c->state == H2CALL_STREAMING) && c->conn &&
           c->conn->state == CONN_H2;
}

void h2call_on_cancel(struct h2call *c, h2call_cancel_cb cb, void *arg)
{
    c->on_cancel = cb;
    c->cancel_arg = arg;
}

void h2call_on_drain(struct h2call *c, size_t low, h2call_drain_cb cb, void *arg)
{
    c->on_drain = cb;
    c->drain_arg = arg;
    c->drain_low = low;
    c->drain_armed = cb && buf_avail(&c->out) >= low;
    c->drain_due = 0;
}

/* Shared start of the ending functions: 1 when there is nothing to send (the
 * call was orphaned and is now freed, or its connection is closing). */
static int call_end_early(struct h2call *c)
{
    if (c->state == H2CALL_ORPHANED) {
        call_free(c);
        return 1;
    }
    assert(c->state == H2CALL_DISPATCHED || c->state == H2CALL_STREAMING);
    if (c->conn->state != CONN_H2) {
        call_set_state(c, H2CALL_ENDED); /* freed with the connection */
        return 1;
    }
    return 0;
}

static void call_queue_message(struct h2call *c, const uint8_t *msg, size_t len)
{
    uint8_t prefix[GRPC_PREFIX_LEN];

    grpc_put_prefix(prefix, (uint32_t)len);
    buf_append(&c->out, prefix, sizeof(prefix));
    buf_append(&c->out, msg, len);
}

void h2call_reply(struct h2call *c, const uint8_t *msg, size_t len)
{
    if (call_end_early(c))
        return;
    if (len > UINT32_MAX) {
        log_error("%s: reply failed: message of %zu bytes is too large", c->peer, len);
        call_complete(c, GRPC_INTERNAL, "response message too large");
        return;
    }
    call_queue_message(c, msg, len);
    call_complete(c, GRPC_OK, NULL);
}

void h2call_fail(struct h2call *c, enum grpc_status status, const char *message)
{
    if (call_end_early(c))
        return;
    call_complete(c, status, message);
}

int h2call_send(struct h2call *c, const uint8_t *msg, size_t len)
{
    if (!h2call_alive(c) || len > UINT32_MAX)
        return -1;
    call_queue_message(c, msg, len);
    if (c->on_drain && buf_avail(&c->out) >= c->drain_low)
        c->drain_armed = 1;
    if (!c->headers_sent) {
        if (call_submit_headers(c) != 0)
            return -1;
        call_set_state(c, H2CALL_STREAMING);
    } else {
        call_resume(c);
    }
    conn_schedule_flush(c->conn);
    return 0;
}

size_t h2call_pending(const struct h2call *c)
{
    return buf_avail(&c->out);
}

void h2call_flush(struct h2call *c)
{
    struct conn *conn = c->conn;

    if (!conn || conn->state != CONN_H2 || conn->in_session)
        return; /* the prepare watcher flushes it, as usual */
    /* Past H2_OUT_HIGH too: what is queued must be serialized now, ahead of
     * what the caller submits next, even while the socket is congested; but
     * a peer that opens huge windows and stops reading still gets a bound. */
    if (conn_pull(conn, H2_FLUSH_HIGH) < 0) {
        conn_close(conn, "http2 send failed");
        return;
    }
    conn_service(conn);
}

void h2call_finish(struct h2call *c, enum grpc_status status, const char *message)
{
    h2call_fail(c, status, message);
}
