/* boomerang: a gRPC client on one multiplexed HTTP/2 connection.
 *
 *   h2client_unary/stream ──▶ waiting ──(CONNECTED)──▶ active ──(trailers, RST,
 *                                │                        │     deadline, cancel,
 *                                └──(deadline, no conn)───┴──▶ done ──(loop)──▶ callback
 *
 * Connection: DISCONNECTED -> CONNECTING (TCP, then TLS, then HTTP/2 until the
 * server's SETTINGS) -> CONNECTED -> DISCONNECTED, and a reconnect timer. A
 * connection has one close path, conn_close(), reached only from the I/O
 * layer, never from inside nghttp2.
 *
 * Callbacks: nghttp2's callbacks only record what arrived (messages go into
 * the call's inbox, final statuses move the call to `done`). User callbacks
 * run from deliver(), at the end of each event-loop callback, after nghttp2
 * has returned; calls that end inside an API function are delivered by a
 * zero-delay timer. `busy` counts nested entries so that a user callback that
 * frees the client only marks it, and the outermost entry frees it.
 *
 * Memory: the output buffer holds at most OUT_CHUNK plus one frame, because
 * frames are pulled from nghttp2 only while it is below that and the socket
 * accepts them. Inbound, a stream's inbox holds at most what one read
 * decoded: it is handed to on_message before the next read. */
#include "common/h2client.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/tls.h"

#define DEFAULT_MAX_MESSAGE (16u << 20)
#define DEFAULT_CONNECT_S   5.0
#define DEFAULT_BACKOFF_S   0.05
#define DEFAULT_BACKOFF_MAX 2.0
#define READ_CHUNK          65536      /* a stack buffer: fewer read() calls while catching up */
#define READ_BUDGET         (1u << 20) /* bytes per read callback, then yield to the loop */
#define OUT_CHUNK           65536      /* pull frames from nghttp2 up to this much */
#define STABLE_CONN_US      1000000    /* a connection up this long resets the backoff */
#define MAX_STATE_EVENTS    8
#define REASON_LEN          160

/* ---- intrusive list ---------------------------------------------------------*/

struct link {
    struct link *prev, *next;
};

static void list_init(struct link *l)
{
    l->prev = l->next = l;
}

static int list_empty(const struct link *l)
{
    return l->next == l;
}

static void list_push(struct link *head, struct link *l)
{
    l->prev = head->prev;
    l->next = head;
    head->prev->next = l;
    head->prev = l;
}

/* Unlink l (a no-op when l is not on a list). */
static void list_del(struct link *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    list_init(l);
}

/* Move every entry of from to the end of to. */
static void list_splice(struct link *to, struct link *from)
{
    if (list_empty(from))
        return;
    from->next->prev = to->prev;
    to->prev->next = from->next;
    from->prev->next = to;
    to->prev = from->prev;
    list_init(from);
}

/* ---- types ------------------------------------------------------------------*/

enum call_kind { CALL_UNARY, CALL_STREAM };

enum call_state {
    CALL_WAITING, /* on c->waiting: sent once a connection is ready */
    CALL_ACTIVE,  /* on c->active: has a stream on the connection */
    CALL_DONE,    /* on c->done: outcome known, callback not run yet */
};

struct call {
    struct link link;  /* on the list of its state */
    struct link ready; /* on c->ready while the inbox holds messages to hand out */
    struct h2client *c;
    uint64_t id;
    enum call_kind kind;
    enum call_state state;
    int32_t stream_id; /* while ACTIVE */
    char *path;
    struct buf req;    /* 5-byte prefix + request message */
    size_t req_off;    /* bytes of req given to nghttp2 on this attempt */
    ev_timer deadline; /* active when the call has a deadline */
    double timeout;    /* seconds, <= 0: no deadline */
    int retried;       /* already sent again after REFUSED_STREAM */
    int got_headers;   /* a response HEADERS frame arrived */
    int http_status;
    int has_grpc_status;
    int grpc_status;
    char *grpc_message; /* decoded grpc-message from the server */
    struct grpc_decoder dec;
    /* Complete messages not handed out yet, oldest first: `first` (when
     * has_first), then `inbox`. A message that completes while both are empty
     * (nearly always: they are emptied after every read) becomes `first` by
     * swapping buffers with the decoder, not by a copy: a transaction of a
     * few hundred pages is then copied once, from the read buffer into the
     * decoder, on its way to on_message. Later ones are copied into inbox. */
    struct buf first;
    int has_first;
    struct buf inbox;        /* the rest, each as be32 length + bytes */
    enum grpc_status status; /* outcome, once DONE */
    char *message;           /* outcome's message, once DONE (may be NULL) */
    h2client_reply_cb on_reply;
    h2client_message_cb on_message;
    h2client_end_cb on_end;
    void *arg;
};

enum conn_phase { PHASE_NONE, PHASE_TCP, PHASE_TLS, PHASE_H2 };

struct h2client {
    struct ev_loop *loop;
    char *url;
    char *host;
    char *authority; /* "host:port" as given, for :authority */
    const char *scheme;
    int port;
    char *auth_header; /* "Bearer T" or NULL */
    SSL_CTX *tls_ctx;
    size_t max_message;
    double connect_timeout, backoff_initial, backoff_max;
    h2client_state_cb on_state;
    void *arg;
    nghttp2_session_callbacks *cbs;

    enum h2client_state state;
    /* the connection, while state != DISCONNECTED */
    enum conn_phase phase;
    int fd;
    SSL *ssl;
    nghttp2_session *session;
    ev_io rio, wio;
    ev_timer connect_timer;
    struct buf out;     /* bytes from nghttp2 not yet accepted by the socket */
    int rd_wants_write; /* TLS: the last read or handshake step waits for writability */
    int wr_wants_read;  /* TLS: the last write waits for readability */
    int got_settings;   /* the server's SETTINGS arrived */
    int goaway;         /* draining: no new streams on this connection */
    int64_t connected_at;
    unsigned attempt;
    int quiet_failures;      /* connect failures after the first are logged at debug */
    char reason[REASON_LEN]; /* why the connection is closing */
    char last_error[REASON_LEN];

    ev_timer retry_timer;
    double backoff; /* the last reconnect delay before jitter, 0 after a stable connection */
    uint64_t rng;
    ev_timer defer_timer; /* zero delay: runs deliver() on the next loop pass */

    struct link waiting, active, done, ready;
    unsigned ncalls;
    uint64_t next_id;
    enum h2client_state events[MAX_STATE_EVENTS];
    unsigned nevents;
    int busy;           /* nesting depth of loop callbacks and API calls */
    int free_requested; /* h2client_free() ran inside a callback */
    int freeing;
};

static void conn_close(struct h2client *c);
static void conn_progress(struct h2client *c);
static void conn_start(struct h2client *c);

const char *h2client_state_name(enum h2client_state s)
{
    switch (s) {
    case H2CLIENT_DISCONNECTED:
        return "DISCONNECTED";
    case H2CLIENT_CONNECTING:
        return "CONNECTING";
    case H2CLIENT_CONNECTED:
        return "CONNECTED";
    }
    return "?";
}

enum h2client_state h2client_state(const struct h2client *c)
{
    return c->state;
}

unsigned h2client_pending(const struct h2client *c)
{
    return c->ncalls;
}

/* ---- state and backoff ------------------------------------------------------*/

static void set_state(struct h2client *c, enum h2client_state s)
{
    assert((c->state == H2CLIENT_DISCONNECTED && s == H2CLIENT_CONNECTING) ||
           (c->state == H2CLIENT_CONNECTING && s != H2CLIENT_CONNECTING) ||
           (c->state == H2CLIENT_CONNECTED && s == H2CLIENT_DISCONNECTED));
    log_debug("h2client %s: state %s -> %s", c->url, h2client_state_name(c->state),
              h2client_state_name(s));
    c->state = s;
    if (!c->on_state)
        return;
    /* At most three changes happen between two deliveries; keep the newest. */
    if (c->nevents == MAX_STATE_EVENTS)
        c->nevents--;
    c->events[c->nevents++] = s;
    ev_timer_start(c->loop, &c->defer_timer);
}

/* Uniform in [0.8, 1.2): spreads the reconnects of many clients apart. */
static double jitter(struct h2client *c)
{
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    return 0.8 + 0.4 * (double)(c->rng >> 11) / (double)(1ull << 53);
}

/* Delay before the next connection attempt. A connection that stayed up is
 * retried at once; failures in a row back off exponentially (with jitter) up
 * to the cap. */
static double next_delay(struct h2client *c, int stable)
{
    if (stable) {
        c->backoff = 0;
        return 0;
    }
    c->backoff = c->backoff == 0 ? c->backoff_initial : MIN(c->backoff * 2, c->backoff_max);
    return MIN(c->backoff * jitter(c), c->backoff_max);
}

/* ---- calls ------------------------------------------------------------------*/

static void call_deadline_cb(struct ev_loop *loop, ev_timer *w, int revents);

static struct call *call_new(struct h2client *c, enum call_kind kind, const char *path,
                             const uint8_t *msg, size_t len, double timeout_s)
{
    struct call *call = xcalloc(1, sizeof(*call));
    uint8_t prefix[GRPC_PREFIX_LEN];

    list_init(&call->link);
    list_init(&call->ready);
    call->c = c;
    call->id = c->next_id++;
    call->kind = kind;
    call->state = CALL_WAITING;
    call->path = xstrdup(path);
    call->timeout = timeout_s;
    grpc_put_prefix(prefix, (uint32_t)MIN(len, (size_t)UINT32_MAX));
    buf_append(&call->req, prefix, sizeof(prefix));
    buf_append(&call->req, msg, len);
    grpc_decoder_init(&call->dec, c->max_message);
    ev_timer_init(&call->deadline, call_deadline_cb, timeout_s > 0 ? timeout_s : 0., 0.);
    c->ncalls++;
    return call;
}

static void call_free(struct call *call)
{
    struct h2client *c = call->c;

    ev_timer_stop(c->loop, &call->deadline);
    list_del(&call->link);
    list_del(&call->ready);
    free(call->path);
    buf_free(&call->req);
    buf_free(&call->first);
    buf_free(&call->inbox);
    grpc_decoder_free(&call->dec);
    free(call->grpc_message);
    free(call->message);
    c->ncalls--;
    free(call);
}

static struct call *call_find(struct link *head, uint64_t id)
{
    for (struct link *l = head->next; l != head; l = l->next) {
        struct call *call = container_of(l, struct call, link);
        if (call->id == id)
            return call;
    }
    return NULL;
}

/* ---- the inbox (see struct call) -------------------------------------------*/

static int inbox_has(const struct call *call)
{
    return call->has_first || buf_avail(&call->inbox) > 0;
}

/* Take the oldest message. Its bytes stay valid until the next message is
 * queued: `first` is emptied only by the swap in call_take_message, and the
 * inbox only moves its offsets. */
static void inbox_take(struct call *call, const uint8_t **p, uint32_t *n)
{
    assert(inbox_has(call));
    if (call->has_first) {
        call->has_first = 0;
        *p = buf_head(&call->first);
        *n = (uint32_t)buf_avail(&call->first);
        buf_reset(&call->first); /* offsets only: the bytes stay */
        return;
    }
    *p = buf_head(&call->inbox) + 4;
    *n = get_be32(buf_head(&call->inbox));
    buf_consume(&call->inbox, 4 + (size_t)*n);
}

static void inbox_drop(struct call *call)
{
    call->has_first = 0;
    buf_reset(&call->first);
    buf_reset(&call->inbox);
}

/* Record the outcome and queue the callback. A local end (deadline, cancel,
 * free, bad response) drops messages not handed out yet. */
static void call_finish(struct call *call, enum grpc_status status, const char *message, int local)
{
    struct h2client *c = call->c;

    assert(call->state != CALL_DONE);
    ev_timer_stop(c->loop, &call->deadline);
    list_del(&call->link);
    if (local) {
        list_del(&call->ready);
        inbox_drop(call);
    }
    call->state = CALL_DONE;
    call->stream_id = 0;
    call->status = status;
    call->message = message ? xstrdup(message) : NULL;
    list_push(&c->done, &call->link);
    ev_timer_start(c->loop, &c->defer_timer);
}

/* Forget the call's stream, so that nghttp2 callbacks for it are ignored from
 * now on; with send_rst, also tell the server to stop (RST_STREAM CANCEL).
 * Allowed inside nghttp2 callbacks. */
static void call_detach(struct call *call, int send_rst)
{
    struct h2client *c = call->c;
    int rv;

    if (call->state != CALL_ACTIVE || !c->session)
        return;
    if (nghttp2_session_set_stream_user_data(c->session, call->stream_id, NULL) != 0)
        return; /* nghttp2 already forgot the stream: nothing to reset */
    if (!send_rst)
        return;
    rv = nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, call->stream_id, NGHTTP2_CANCEL);
    if (rv != 0)
        log_debug("h2client %s: reset stream %d failed: %s", c->url, call->stream_id,
                  nghttp2_strerror(rv));
}

/* The response broke the protocol: reset the stream and end the call. */
static void call_reject(struct call *call, enum grpc_status status, const char *why)
{
    log_debug("h2client %s: stream %d: bad response: %s", call->c->url, call->stream_id, why);
    call_detach(call, 1);
    call_finish(call, status, why, 1);
}

/* gRPC's mapping of RST_STREAM codes (doc/PROTOCOL-HTTP2.md, "Errors"). */
static enum grpc_status rst_status(uint32_t code)
{
    switch (code) {
    case NGHTTP2_REFUSED_STREAM:
        return GRPC_UNAVAILABLE;
    case NGHTTP2_CANCEL:
        return GRPC_CANCELLED;
    case NGHTTP2_ENHANCE_YOUR_CALM:
        return GRPC_RESOURCE_EXHAUSTED;
    case NGHTTP2_INADEQUATE_SECURITY:
        return GRPC_PERMISSION_DENIED;
    default:
        return GRPC_INTERNAL;
    }
}

/* gRPC's mapping of HTTP statuses, for responses without grpc-status
 * (doc/http-grpc-status-mapping.md). */
static enum grpc_status http_status(int code)
{
    switch (code) {
    case 400:
        return GRPC_INTERNAL;
    case 401:
        return GRPC_UNAUTHENTICATED;
    case 403:
        return GRPC_PERMISSION_DENIED;
    case 404:
        return GRPC_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
        return GRPC_UNAVAILABLE;
    default:
        return GRPC_UNKNOWN;
    }
}

/* The server closed the stream (error_code from its RST_STREAM, or 0). */
static void call_end_by_server(struct call *call, uint32_t error_code)
{
    char why[REASON_LEN];

    if (error_code != NGHTTP2_NO_ERROR) {
        snprintf(why, sizeof(why), "stream reset by server: %s",
                 nghttp2_http2_strerror(error_code));
        call_finish(call, rst_status(error_code), why, 0);
    } else if (!grpc_decoder_idle(&call->dec)) {
        call_finish(call, GRPC_INTERNAL, "response ended inside a message", 0);
    } else if (!call->has_grpc_status && call->http_status != 200) {
        snprintf(why, sizeof(why), "HTTP status %d without grpc-status", call->http_status);
        call_finish(call, http_status(call->http_status), why, 0);
    } else if (!call->has_grpc_status) {
        call_finish(call, GRPC_INTERNAL, "response without grpc-status", 0);
    } else if (call->grpc_status == GRPC_OK && call->kind == CALL_UNARY && !inbox_has(call)) {
        call_finish(call, GRPC_INTERNAL, "unary response without a message", 0);
    } else {
        call_finish(call, (enum grpc_status)call->grpc_status, call->grpc_message, 0);
    }
}

/* A whole message is in the decoder: queue it (see struct call). */
static void call_take_message(struct call *call)
{
    struct buf *m = &call->dec.msg;
    uint8_t len[4];

    if (!call->has_first && buf_avail(&call->inbox) == 0) {
        struct buf spare = call->first; /* emptied when it was handed out */

        call->first = *m;
        *m = spare;
        call->has_first = 1;
    } else {
        put_be32(len, (uint32_t)buf_avail(m));
        buf_append(&call->inbox, len, sizeof(len));
        buf_append(&call->inbox, buf_head(m), buf_avail(m));
    }
    grpc_decoder_next(&call->dec);
    if (call->kind == CALL_STREAM && list_empty(&call->ready))
        list_push(&call->c->ready, &call->ready);
}

static void call_feed(struct call *call, const uint8_t *data, size_t len)
{
    char why[REASON_LEN];

    while (len > 0) {
        size_t used = 0;
        int rv = grpc_decoder_feed(&call->dec, data, len, &used);

        data += used;
        len -= used;
        if (rv == GRPC_ERR_TOO_LARGE) {
            snprintf(why, sizeof(why), "response message larger than %zu bytes",
                     call->c->max_message);
            call_reject(call, GRPC_RESOURCE_EXHAUSTED, why);
            return;
        }
        if (rv < 0) {
            call_reject(call, GRPC_INTERNAL,
                        rv == GRPC_ERR_COMPRESSED ? "compressed response message"
                                                  : "malformed gRPC message framing");
            return;
        }
        if (rv == 0)
            return;
        if (call->kind == CALL_UNARY && inbox_has(call)) {
            call_reject(call, GRPC_INTERNAL, "unary response with more than one message");
            return;
        }
        call_take_message(call);
    }
}

static nghttp2_nv make_nv(const char *name, const char *value, uint8_t flags)
{
    nghttp2_nv nv = {(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value), flags};
    return nv;
}

static ssize_t on_request_read_cb(nghttp2_session *s, int32_t stream_id, uint8_t *buf,
                                  size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                                  void *user_data)
{
    struct call *call = nghttp2_session_get_stream_user_data(s, stream_id);
    size_t n;

    (void)source;
    (void)user_data;
    if (!call) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF; /* detached: the stream is being reset */
        return 0;
    }
    n = MIN(length, buf_avail(&call->req) - call->req_off);
    memcpy(buf, buf_head(&call->req) + call->req_off, n);
    call->req_off += n;
    if (call->req_off == buf_avail(&call->req))
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

/* "grpc-timeout" from the time left: at most 8 digits, rounded up. */
static void format_timeout(char *out, size_t len, double left_s)
{
    long long ms = (long long)(left_s * 1000.0) + 1;

    if (ms <= 99999999)
        snprintf(out, len, "%lldm", ms);
    else
        snprintf(out, len, "%lldS", MIN(ms / 1000 + 1, 99999999LL));
}

/* Open the call's stream. Returns 0 or a negative nghttp2 error. */
static int call_submit(struct h2client *c, struct call *call)
{
    nghttp2_data_provider prd = {.read_callback = on_request_read_cb};
    nghttp2_nv nv[9];
    char tmo[24];
    size_t n = 0;
    int32_t id;

    nv[n++] = make_nv(":method", "POST", 0);
    nv[n++] = make_nv(":scheme", c->scheme, 0);
    nv[n++] = make_nv(":path", call->path, 0);
    nv[n++] = make_nv(":authority", c->authority, 0);
    nv[n++] = make_nv("te", "trailers", 0);
    nv[n++] = make_nv("content-type", "application/grpc", 0);
    nv[n++] = make_nv("user-agent", "boomerang-h2client/1", 0);
    if (ev_is_active(&call->deadline)) {
        format_timeout(tmo, sizeof(tmo), ev_timer_remaining(c->loop, &call->deadline));
        nv[n++] = make_nv("grpc-timeout", tmo, 0);
    }
    if (c->auth_header) /* never indexed: keeps the token out of HPACK tables */
        nv[n++] = make_nv("authorization", c->auth_header, NGHTTP2_NV_FLAG_NO_INDEX);
    call->req_off = 0;
    id = nghttp2_submit_request(c->session, NULL, nv, n, &prd, call);
    if (id < 0)
        return id;
    list_del(&call->link);
    list_push(&c->active, &call->link);
    call->state = CALL_ACTIVE;
    call->stream_id = id;
    return 0;
}

static void submit_waiting(struct h2client *c)
{
    while (!list_empty(&c->waiting)) {
        struct call *call = container_of(c->waiting.next, struct call, link);
        int rv = call_submit(c, call);

        if (rv == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE) {
            /* Stream ids ran out: drain this connection, go on with a new one.
             * Our GOAWAY makes nghttp2 end the session once streams finish. */
            c->goaway = 1;
            rv = nghttp2_submit_goaway(c->session, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
            if (rv != 0)
                log_warn("h2client %s: send GOAWAY failed: %s", c->url, nghttp2_strerror(rv));
            return;
        }
        if (rv < 0)
            call_finish(call, GRPC_INTERNAL, nghttp2_strerror(rv), 1);
    }
}

/* End every call on list (waiting or active) with UNAVAILABLE. */
static void fail_calls(struct h2client *c, struct link *list, const char *prefix)
{
    char why[REASON_LEN + 32];

    snprintf(why, sizeof(why), "%s%s", prefix, c->reason);
    while (!list_empty(list)) {
        struct call *call = container_of(list->next, struct call, link);
        call_detach(call, 0);
        call_finish(call, GRPC_UNAVAILABLE, why, 0);
    }
}

/* ---- delivery and loop entry ------------------------------------------------*/

static void deliver_states(struct h2client *c)
{
    enum h2client_state ev[MAX_STATE_EVENTS];
    unsigned n = c->nevents;

    memcpy(ev, c->events, n * sizeof(ev[0]));
    c->nevents = 0;
    for (unsigned i = 0; i < n && !c->free_requested; i++)
        c->on_state(c->arg, ev[i]);
}

static void deliver_messages(struct h2client *c)
{
    while (!list_empty(&c->ready) && !c->free_requested) {
        struct call *call = container_of(c->ready.next, struct call, ready);
        const uint8_t *p;
        uint32_t n;

        if (!inbox_has(call)) {
            list_del(&call->ready);
            continue;
        }
        /* Taking a message only moves offsets: p stays valid until a message
         * is queued, which needs nghttp2, which does not run during the
         * callback. */
        inbox_take(call, &p, &n);
        call->on_message(call->arg, p, n);
    }
}

static void call_complete(struct call *call)
{
    const uint8_t *p;

    if (call->kind == CALL_STREAM) {
        call->on_end(call->arg, call->status, call->message);
    } else if (call->status == GRPC_OK) {
        uint32_t n;

        inbox_take(call, &p, &n); /* call_end_by_server saw one */
        call->on_reply(call->arg, GRPC_OK, call->message, p, n);
    } else {
        call->on_reply(call->arg, call->status, call->message, NULL, 0);
    }
    call_free(call);
}

/* Run the final callbacks of the calls done so far; calls that end during
 * these callbacks wait for the next loop pass, so that a caller that retries
 * at once on failure cannot keep the loop from running. */
static void deliver_finals(struct h2client *c)
{
    struct link batch;

    list_init(&batch);
    list_splice(&batch, &c->done);
    while (!list_empty(&batch)) {
        struct call *call = container_of(batch.next, struct call, link);

        if (c->free_requested) {
            list_splice(&batch, &c->done);
            list_splice(&c->done, &batch);
            return;
        }
        list_del(&call->link);
        call_complete(call);
    }
}

static void deliver(struct h2client *c)
{
    deliver_states(c);
    deliver_messages(c);
    deliver_finals(c);
    if (list_empty(&c->done) && c->nevents == 0)
        ev_timer_stop(c->loop, &c->defer_timer);
}

static void client_destroy(struct h2client *c);

static void loop_enter(struct h2client *c)
{
    c->busy++;
}

static void loop_leave(struct h2client *c)
{
    if (c->busy == 1 && !c->free_requested) {
        conn_progress(c);
        deliver(c);
        if (!c->free_requested)
            conn_progress(c); /* send what the callbacks started */
    }
    if (--c->busy == 0 && c->free_requested)
        client_destroy(c);
}

/* After an API call: send now, unless a loop callback will on its way out. */
static void api_leave(struct h2client *c)
{
    if (--c->busy == 0 && !c->freeing)
        conn_progress(c);
}

static void call_deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct call *call = container_of(w, struct call, deadline);
    struct h2client *c = call->c;

    (void)loop;
    (void)revents;
    loop_enter(c);
    call_detach(call, 1);
    call_finish(call, GRPC_DEADLINE_EXCEEDED, "deadline exceeded", 1);
    loop_leave(c);
}

static void client_defer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct h2client *c = container_of(w, struct h2client, defer_timer);

    (void)loop;
    (void)revents;
    loop_enter(c);
    loop_leave(c);
}

/* ---- transport: plain TCP or TLS ---------------------------------------------*/

static void conn_fail(struct h2client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void conn_fail(struct h2client *c, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(c->reason, sizeof(c->reason), fmt, ap);
    va_end(ap);
    conn_close(c);
}

/* Classify a failed SSL_* call. Returns -EAGAIN (*wants_write tells which
 * readiness unblocks it), 0 for the peer's close_notify, or another negative
 * code with c->reason set. */
static int tls_result(struct h2client *c, int rv, int *wants_write, const char *what)
{
    char err[128];
    long vr;

    switch (SSL_get_error(c->ssl, rv)) {
    case SSL_ERROR_WANT_READ:
        *wants_write = 0;
        return -EAGAIN;
    case SSL_ERROR_WANT_WRITE:
        *wants_write = 1;
        return -EAGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        snprintf(c->reason, sizeof(c->reason), "%s failed: %s", what,
                 errno ? strerror(errno) : "unexpected EOF");
        return -EPIPE;
    default:
        vr = SSL_get_verify_result(c->ssl);
        if (vr != X509_V_OK)
            snprintf(c->reason, sizeof(c->reason), "%s failed: certificate verify failed: %s", what,
                     X509_verify_cert_error_string(vr));
        else
            snprintf(c->reason, sizeof(c->reason), "%s failed: %s", what,
                     tls_error_string(err, sizeof(err)));
        ERR_clear_error();
        return -EPROTO;
    }
}

/* Read some bytes: > 0, 0 at EOF, -EAGAIN, or another negative code with
 * c->reason set. */
static ssize_t conn_recv(struct h2client *c, uint8_t *p, size_t len)
{
    ssize_t n;
    int rv;

    if (!c->ssl) {
        do {
            n = read(c->fd, p, len);
        } while (n < 0 && errno == EINTR);
        if (n >= 0)
            return n;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return -EAGAIN;
        snprintf(c->reason, sizeof(c->reason), "read failed: %s", strerror(errno));
        return -errno;
    }
    ERR_clear_error();
    rv = SSL_read(c->ssl, p, (int)MIN(len, (size_t)INT_MAX));
    if (rv > 0) {
        c->rd_wants_write = 0;
        return rv;
    }
    return tls_result(c, rv, &c->rd_wants_write, "TLS read");
}

/* Write some bytes: > 0, -EAGAIN, or another negative code with c->reason
 * set. A TLS write blocked by the socket must be retried with the same bytes
 * at the head (the buffer may move: SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER). */
static ssize_t conn_send(struct h2client *c, const uint8_t *p, size_t len)
{
    ssize_t n;
    int rv, wants_write = 1;

    if (!c->ssl) {
        do {
            n = send(c->fd, p, len, MSG_NOSIGNAL);
        } while (n < 0 && errno == EINTR);
        if (n >= 0)
            return n;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return -EAGAIN;
        snprintf(c->reason, sizeof(c->reason), "write failed: %s", strerror(errno));
        return -errno;
    }
    ERR_clear_error();
    rv = SSL_write(c->ssl, p, (int)MIN(len, (size_t)INT_MAX));
    if (rv > 0) {
        c->wr_wants_read = 0;
        return rv;
    }
    n = tls_result(c, rv, &wants_write, "TLS write");
    c->wr_wants_read = n == -EAGAIN && !wants_write;
    if (n == 0) {
        snprintf(c->reason, sizeof(c->reason), "server closed TLS");
        return -EPIPE;
    }
    return n;
}

static void io_want(struct h2client *c, ev_io *w, int on)
{
    if (on && !ev_is_active(w))
        ev_io_start(c->loop, w);
    else if (!on && ev_is_active(w))
        ev_io_stop(c->loop, w);
}

static void conn_update_io(struct h2client *c)
{
    int r = 0, w = 0;

    switch (c->phase) {
    case PHASE_NONE:
        break;
    case PHASE_TCP:
        w = 1;
        break;
    case PHASE_TLS:
        w = c->rd_wants_write;
        r = !w;
        break;
    case PHASE_H2:
        r = (!c->rd_wants_write || c->wr_wants_read) && nghttp2_session_want_read(c->session);
        w = c->rd_wants_write || (buf_avail(&c->out) > 0 && !c->wr_wants_read);
        break;
    }
    io_want(c, &c->rio, r);
    io_want(c, &c->wio, w);
}

/* Move frames from nghttp2 to the socket until either runs dry. Returns 0, or
 * -1 with c->reason set. */
static int conn_flush(struct h2client *c)
{
    for (;;) {
        while (buf_avail(&c->out) < OUT_CHUNK) {
            const uint8_t *data;
            ssize_t n = nghttp2_session_mem_send(c->session, &data);

            if (n < 0) {
                snprintf(c->reason, sizeof(c->reason), "HTTP/2 send failed: %s",
                         nghttp2_strerror((int)n));
                return -1;
            }
            if (n == 0)
                break;
            buf_append(&c->out, data, (size_t)n);
        }
        if (buf_avail(&c->out) == 0)
            return 0;
        ssize_t w = conn_send(c, buf_head(&c->out), buf_avail(&c->out));
        if (w == -EAGAIN)
            return 0;
        if (w < 0)
            return -1;
        buf_consume(&c->out, (size_t)w);
    }
}

/* ---- nghttp2 callbacks: record only, never close or call the user -----------*/

static int name_is(const uint8_t *name, size_t len, const char *lit)
{
    return len == strlen(lit) && memcmp(name, lit, len) == 0;
}

static int parse_grpc_status(const char *v)
{
    char *end;
    long n;

    errno = 0;
    n = strtol(v, &end, 10);
    if (errno || end == v || *end || n < 0 || n > GRPC_UNAUTHENTICATED)
        return GRPC_UNKNOWN;
    return (int)n;
}

static int on_header_cb(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *user_data)
{
    struct call *call;

    (void)valuelen; /* nghttp2 NUL-terminates values and refuses embedded NULs */
    (void)flags;
    (void)user_data;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    call = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
    if (!call)
        return 0;
    call->got_headers = 1;
    if (name_is(name, namelen, ":status")) {
        call->http_status = atoi((const char *)value);
    } else if (name_is(name, namelen, "grpc-status")) {
        call->has_grpc_status = 1;
        call->grpc_status = parse_grpc_status((const char *)value);
    } else if (name_is(name, namelen, "grpc-message")) {
        free(call->grpc_message);
        call->grpc_message = grpc_percent_decode((const char *)value);
    }
    return 0;
}

static int on_frame_recv_cb(nghttp2_session *s, const nghttp2_frame *frame, void *user_data)
{
    struct h2client *c = user_data;

    (void)s;
    if (frame->hd.type == NGHTTP2_SETTINGS && !(frame->hd.flags & NGHTTP2_FLAG_ACK)) {
        c->got_settings = 1;
    } else if (frame->hd.type == NGHTTP2_GOAWAY) {
        c->goaway = 1;
        log_debug("h2client %s: server sent GOAWAY (%s, last stream %d)", c->url,
                  nghttp2_http2_strerror(frame->goaway.error_code), frame->goaway.last_stream_id);
    }
    return 0;
}

static int on_data_chunk_recv_cb(nghttp2_session *s, uint8_t flags, int32_t stream_id,
                                 const uint8_t *data, size_t len, void *user_data)
{
    struct call *call = nghttp2_session_get_stream_user_data(s, stream_id);

    (void)flags;
    (void)user_data;
    if (call)
        call_feed(call, data, len);
    return 0;
}

static int on_stream_close_cb(nghttp2_session *s, int32_t stream_id, uint32_t error_code,
                              void *user_data)
{
    struct h2client *c = user_data;
    struct call *call = nghttp2_session_get_stream_user_data(s, stream_id);

    if (!call)
        return 0;
    if (error_code == NGHTTP2_REFUSED_STREAM && !call->got_headers && !call->retried) {
        /* The server did not process it (RFC 9113 §8.7): send it again. */
        log_debug("h2client %s: stream %d refused, retrying", c->url, stream_id);
        call->retried = 1;
        call->state = CALL_WAITING;
        call->stream_id = 0;
        list_del(&call->link);
        list_push(&c->waiting, &call->link);
        return 0;
    }
    call_end_by_server(call, error_code);
    return 0;
}

static int on_error_cb(nghttp2_session *s, int code, const char *msg, size_t len, void *user_data)
{
    struct h2client *c = user_data;

    (void)s;
    log_debug("h2client %s: HTTP/2: %.*s (%s)", c->url, (int)len, msg, nghttp2_strerror(code));
    return 0;
}

/* ---- connection lifecycle -----------------------------------------------------*/

/* Free the transport and session; watchers stopped, fd closed. */
static void conn_release(struct h2client *c)
{
    ev_io_stop(c->loop, &c->rio);
    ev_io_stop(c->loop, &c->wio);
    ev_timer_stop(c->loop, &c->connect_timer);
    nghttp2_session_del(c->session);
    c->session = NULL;
    SSL_free(c->ssl);
    c->ssl = NULL;
    if (c->fd >= 0 && close(c->fd) < 0)
        log_debug("h2client %s: close failed: %s", c->url, strerror(errno));
    c->fd = -1;
    buf_free(&c->out);
    c->phase = PHASE_NONE;
    c->rd_wants_write = c->wr_wants_read = 0;
    c->got_settings = c->goaway = 0;
}

static void conn_log_close(struct h2client *c, int was_connected)
{
    if (was_connected && c->goaway)
        log_info("h2client %s: connection closed: %s", c->url, c->reason);
    else if (was_connected)
        log_warn("h2client %s: connection lost: %s", c->url, c->reason);
    else if (c->quiet_failures++ == 0)
        log_warn("h2client %s: connect failed: %s (retrying quietly)", c->url, c->reason);
    else
        log_debug("h2client %s: connect failed: %s", c->url, c->reason);
}

/* The one close path. Calls in flight fail; waiting calls keep waiting only
 * when the reconnect is immediate (after a connection that stayed up). */
static void conn_close(struct h2client *c)
{
    int was_connected = c->state == H2CLIENT_CONNECTED;
    int stable = was_connected && mono_us() - c->connected_at >= STABLE_CONN_US;
    double delay;

    assert(c->state != H2CLIENT_DISCONNECTED);
    conn_log_close(c, was_connected);
    snprintf(c->last_error, sizeof(c->last_error), "%s", c->reason);
    fail_calls(c, &c->active, "connection lost: ");
    conn_release(c);
    set_state(c, H2CLIENT_DISCONNECTED);
    delay = next_delay(c, stable);
    if (delay == 0) {
        conn_start(c);
        return;
    }
    fail_calls(c, &c->waiting, "not connected: ");
    log_debug("h2client %s: reconnecting in %.3f s", c->url, delay);
    ev_timer_set(&c->retry_timer, delay, 0.);
    ev_timer_start(c->loop, &c->retry_timer);
}

static void conn_ready(struct h2client *c)
{
    ev_timer_stop(c->loop, &c->connect_timer);
    c->connected_at = mono_us();
    c->quiet_failures = 0;
    log_info("h2client %s: connected", c->url);
    set_state(c, H2CLIENT_CONNECTED);
}

static void conn_h2_start(struct h2client *c)
{
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2CLIENT_STREAM_WINDOW},
    };
    int rv;

    rv = nghttp2_session_client_new(&c->session, c->cbs, c);
    if (rv != 0) {
        conn_fail(c, "create HTTP/2 session failed: %s", nghttp2_strerror(rv));
        return;
    }
    c->phase = PHASE_H2;
    rv = nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, ARRAY_LEN(iv));
    if (rv == 0)
        rv = nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0,
                                                   H2CLIENT_CONN_WINDOW);
    if (rv != 0)
        conn_fail(c, "send HTTP/2 SETTINGS failed: %s", nghttp2_strerror(rv));
}

static void conn_handshake(struct h2client *c)
{
    int rv;

    ERR_clear_error();
    rv = SSL_do_handshake(c->ssl);
    if (rv == 1) {
        c->rd_wants_write = 0;
        if (!tls_alpn_is_h2(c->ssl)) {
            conn_fail(c, "server did not select h2 by ALPN");
            return;
        }
        conn_h2_start(c);
        return;
    }
    rv = tls_result(c, rv, &c->rd_wants_write, "TLS handshake");
    if (rv == -EAGAIN)
        return;
    if (rv == 0)
        snprintf(c->reason, sizeof(c->reason), "server closed TLS during the handshake");
    conn_close(c);
}

static void conn_tls_start(struct h2client *c)
{
    static const unsigned char alpn[] = {2, 'h', '2'};
    char err[128];

    if (tls_client_ssl(c->tls_ctx, c->host, &c->ssl) < 0) {
        conn_fail(c, "create TLS connection failed");
        return;
    }
    SSL_set_connect_state(c->ssl);
    SSL_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* The context from tls_client_ctx() offers h2 already; a caller's own
     * context may not. */
    if (SSL_set_fd(c->ssl, c->fd) != 1 || SSL_set_alpn_protos(c->ssl, alpn, sizeof(alpn)) != 0) {
        conn_fail(c, "set up TLS failed: %s", tls_error_string(err, sizeof(err)));
        return;
    }
    c->phase = PHASE_TLS;
    conn_handshake(c);
}

/* The socket became writable during the TCP connect. */
static void conn_tcp_done(struct h2client *c)
{
    int err = 0;
    socklen_t len = sizeof(err);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err) {
        conn_fail(c, "connect to %s failed: %s", c->authority, strerror(err));
        return;
    }
    if (c->tls_ctx)
        conn_tls_start(c);
    else
        conn_h2_start(c);
}

static int conn_connect(struct h2client *c, const struct addrinfo *ai)
{
    int one = 1;

    c->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (c->fd < 0) {
        snprintf(c->reason, sizeof(c->reason), "socket failed: %s", strerror(errno));
        return -1;
    }
    /* Small request and response frames must not wait for Nagle. */
    if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
        snprintf(c->reason, sizeof(c->reason), "set TCP_NODELAY failed: %s", strerror(errno));
        return -1;
    }
    ev_io_set(&c->rio, c->fd, EV_READ);
    ev_io_set(&c->wio, c->fd, EV_WRITE);
    c->phase = PHASE_TCP;
    /* Even a connect that completes at once is finished by the writable
     * event, so that there is one path. */
    if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
        snprintf(c->reason, sizeof(c->reason), "connect to %s failed: %s", c->authority,
                 strerror(errno));
        return -1;
    }
    return 0;
}

static void conn_start(struct h2client *c)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL, *ai;
    char port[8];
    unsigned n = 0;
    int rv;

    set_state(c, H2CLIENT_CONNECTING);
    ev_timer_set(&c->connect_timer, c->connect_timeout, 0.);
    ev_timer_start(c->loop, &c->connect_timer);
    snprintf(port, sizeof(port), "%d", c->port);
    rv = getaddrinfo(c->host, port, &hints, &res);
    if (rv != 0) {
        conn_fail(c, "resolve %s failed: %s", c->host, gai_strerror(rv));
        return;
    }
    /* Several addresses: each attempt takes the next one. */
    for (ai = res; ai; ai = ai->ai_next)
        n++;
    ai = res;
    for (unsigned i = c->attempt++ % n; i > 0; i--)
        ai = ai->ai_next;
    rv = conn_connect(c, ai);
    freeaddrinfo(res);
    if (rv < 0) {
        conn_close(c);
        return;
    }
    conn_update_io(c);
}

/* The connection's housekeeping after any event: open waiting streams, write,
 * notice a finished session, and set the watchers. */
static void conn_progress(struct h2client *c)
{
    if (c->phase == PHASE_H2) {
        if (c->state == H2CLIENT_CONNECTED && !c->goaway)
            submit_waiting(c);
        if (conn_flush(c) < 0) {
            conn_close(c);
            return;
        }
        if (!nghttp2_session_want_read(c->session) && !nghttp2_session_want_write(c->session) &&
            buf_avail(&c->out) == 0) {
            snprintf(c->reason, sizeof(c->reason), "%s",
                     c->goaway ? "server sent GOAWAY" : "HTTP/2 session ended");
            conn_close(c);
            return;
        }
    }
    conn_update_io(c);
}

static void conn_read(struct h2client *c)
{
    uint8_t buf[READ_CHUNK];
    size_t total = 0;

    /* after a fatal protocol error nghttp2 wants no more input */
    while (c->phase == PHASE_H2 && !c->free_requested && nghttp2_session_want_read(c->session)) {
        ssize_t n = conn_recv(c, buf, sizeof(buf));
        ssize_t rv;

        if (n == -EAGAIN)
            return;
        if (n == 0) {
            conn_fail(c, "server closed the connection");
            return;
        }
        if (n < 0) {
            conn_close(c);
            return;
        }
        rv = nghttp2_session_mem_recv(c->session, buf, (size_t)n);
        if (rv < 0) {
            conn_fail(c, "HTTP/2 error: %s", nghttp2_strerror((int)rv));
            return;
        }
        if (c->state == H2CLIENT_CONNECTING && c->got_settings)
            conn_ready(c);
        /* Hand messages out before reading more: this is what bounds the
         * inbox, and what lets a slow consumer hold back the window. */
        deliver_states(c);
        deliver_messages(c);
        total += (size_t)n;
        if (total >= READ_BUDGET) {
            /* TLS may hold decrypted bytes the fd does not signal: come back. */
            ev_feed_event(c->loop, &c->rio, EV_READ);
            return;
        }
    }
}

static void conn_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct h2client *c = container_of(w, struct h2client, rio);

    (void)loop;
    (void)revents;
    loop_enter(c);
    if (c->phase == PHASE_TLS)
        conn_handshake(c);
    else if (c->phase == PHASE_H2)
        conn_read(c);
    loop_leave(c);
}

static void conn_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct h2client *c = container_of(w, struct h2client, wio);

    (void)loop;
    (void)revents;
    loop_enter(c);
    if (c->phase == PHASE_TCP)
        conn_tcp_done(c);
    else if (c->phase == PHASE_TLS)
        conn_handshake(c);
    else if (c->phase == PHASE_H2 && c->rd_wants_write)
        conn_read(c);
    /* the flush happens in loop_leave() */
    loop_leave(c);
}

static void conn_connect_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct h2client *c = container_of(w, struct h2client, connect_timer);

    (void)loop;
    (void)revents;
    loop_enter(c);
    conn_fail(c, "connect timed out after %.1f s", c->connect_timeout);
    loop_leave(c);
}

static void client_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct h2client *c = container_of(w, struct h2client, retry_timer);

    (void)loop;
    (void)revents;
    loop_enter(c);
    conn_start(c);
    loop_leave(c);
}

/* ---- public API ------------------------------------------------------------------*/

/* The host in authority ("host", "host:port", "[v6]" or "[v6]:port") into
 * host, and its port, if any, into *port. Returns 0 or -1. */
static int url_host(const char *authority, char *host, size_t cap, int *port)
{
    size_t n = strlen(authority);

    if (util_split_hostport(authority, host, cap, port) == 0) {
        /* an IPv6 literal needs its brackets, or the port would be ambiguous */
        return strchr(host, ':') && authority[0] != '[' ? -1 : 0;
    }
    if (n >= cap || strchr(authority, '[') != strrchr(authority, '['))
        return -1;
    if (authority[0] == '[' && authority[n - 1] == ']' && n > 2) {
        memcpy(host, authority + 1, n - 2);
        host[n - 2] = '\0';
        return 0;
    }
    if (strchr(authority, ':') || strchr(authority, '['))
        return -1;
    memcpy(host, authority, n + 1);
    return 0;
}

/* Split "http[s]://host[:port][/]". Returns 0 or -1. */
static int url_parse(struct h2client *c, const char *url)
{
    char host[256];
    const char *rest;
    size_t n;
    int port;

    if (strncmp(url, "http://", 7) == 0) {
        c->scheme = "http";
        rest = url + 7;
        port = 80;
    } else if (strncmp(url, "https://", 8) == 0) {
        c->scheme = "https";
        rest = url + 8;
        port = 443;
    } else {
        return -1;
    }
    n = strlen(rest);
    if (n > 0 && rest[n - 1] == '/')
        n--;
    if (n == 0 || memchr(rest, '/', n))
        return -1;
    c->authority = xmalloc(n + 1);
    memcpy(c->authority, rest, n);
    c->authority[n] = '\0';
    if (url_host(c->authority, host, sizeof(host), &port) < 0 || port == 0)
        return -1;
    c->host = xstrdup(host);
    c->port = port;
    return 0;
}

static void client_release(struct h2client *c)
{
    ev_timer_stop(c->loop, &c->retry_timer);
    ev_timer_stop(c->loop, &c->defer_timer);
    conn_release(c);
    if (c->cbs)
        nghttp2_session_callbacks_del(c->cbs);
    free(c->url);
    free(c->host);
    free(c->authority);
    free(c->auth_header);
    free(c);
}

static void client_callbacks(struct h2client *c)
{
    if (nghttp2_session_callbacks_new(&c->cbs) != 0) {
        log_error("h2client: create nghttp2 callbacks failed: out of memory");
        abort(); /* like xmalloc */
    }
    nghttp2_session_callbacks_set_on_header_callback(c->cbs, on_header_cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(c->cbs, on_frame_recv_cb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(c->cbs, on_data_chunk_recv_cb);
    nghttp2_session_callbacks_set_on_stream_close_callback(c->cbs, on_stream_close_cb);
    nghttp2_session_callbacks_set_error_callback2(c->cbs, on_error_cb);
}

static void client_config(struct h2client *c, const struct h2client_config *cfg)
{
    if (cfg->auth_token) {
        size_t n = strlen(cfg->auth_token);
        c->auth_header = xmalloc(n + 8);
        memcpy(c->auth_header, "Bearer ", 7);
        memcpy(c->auth_header + 7, cfg->auth_token, n + 1);
    }
    c->max_message = cfg->max_message ? cfg->max_message : DEFAULT_MAX_MESSAGE;
    c->connect_timeout = cfg->connect_timeout > 0 ? cfg->connect_timeout : DEFAULT_CONNECT_S;
    c->backoff_initial = cfg->backoff_initial > 0 ? cfg->backoff_initial : DEFAULT_BACKOFF_S;
    c->backoff_max = cfg->backoff_max > 0 ? cfg->backoff_max : DEFAULT_BACKOFF_MAX;
    c->backoff_max = MAX(c->backoff_max, c->backoff_initial);
    c->on_state = cfg->on_state;
    c->arg = cfg->arg;
}

int h2client_new(struct ev_loop *loop, const struct h2client_config *cfg, struct h2client **out)
{
    struct h2client *c = xcalloc(1, sizeof(*c));

    c->loop = loop;
    c->fd = -1;
    c->url = xstrdup(cfg->url ? cfg->url : "");
    ev_init(&c->rio, conn_read_cb);
    ev_init(&c->wio, conn_write_cb);
    ev_init(&c->connect_timer, conn_connect_timeout_cb);
    ev_init(&c->retry_timer, client_retry_cb);
    ev_timer_init(&c->defer_timer, client_defer_cb, 0., 0.);
    if (url_parse(c, c->url) < 0 || (strcmp(c->scheme, "https") == 0 && !cfg->tls)) {
        log_error("h2client: parse URL '%s' failed: expected http://host:port, or "
                  "https://host:port with a TLS context",
                  c->url);
        client_release(c);
        return H2CLIENT_ERR_URL;
    }
    c->tls_ctx = strcmp(c->scheme, "https") == 0 ? cfg->tls : NULL;
    client_config(c, cfg);
    client_callbacks(c);
    list_init(&c->waiting);
    list_init(&c->active);
    list_init(&c->done);
    list_init(&c->ready);
    c->next_id = 1;
    c->rng = (uint64_t)mono_us() ^ (uint64_t)(uintptr_t)c ^ 0x9e3779b97f4a7c15ull;
    snprintf(c->last_error, sizeof(c->last_error), "no connection yet");
    conn_start(c);
    *out = c;
    return 0;
}

static uint64_t call_start(struct h2client *c, struct call *call, size_t len)
{
    uint64_t id = call->id;

    c->busy++;
    list_push(&c->waiting, &call->link);
    if (c->freeing || c->free_requested) {
        call_finish(call, GRPC_CANCELLED, "client closed", 1);
    } else if ((uint64_t)len > UINT32_MAX) {
        call_finish(call, GRPC_RESOURCE_EXHAUSTED, "request message larger than 4 GiB", 1);
    } else if (c->state == H2CLIENT_DISCONNECTED) {
        char why[REASON_LEN + 16];
        snprintf(why, sizeof(why), "not connected: %s", c->last_error);
        call_finish(call, GRPC_UNAVAILABLE, why, 0);
    } else if (call->timeout > 0) {
        ev_timer_start(c->loop, &call->deadline);
    }
    api_leave(c);
    return id;
}

uint64_t h2client_unary(struct h2client *c, const char *path, const uint8_t *msg, size_t len,
                        double timeout_s, h2client_reply_cb cb, void *arg)
{
    struct call *call = call_new(c, CALL_UNARY, path, msg, len, timeout_s);

    assert(cb);
    call->on_reply = cb;
    call->arg = arg;
    return call_start(c, call, len);
}

uint64_t h2client_stream(struct h2client *c, const char *path, const uint8_t *msg, size_t len,
                         double timeout_s, h2client_message_cb on_message, h2client_end_cb on_end,
                         void *arg)
{
    struct call *call = call_new(c, CALL_STREAM, path, msg, len, timeout_s);

    assert(on_message && on_end);
    call->on_message = on_message;
    call->on_end = on_end;
    call->arg = arg;
    return call_start(c, call, len);
}

int h2client_cancel(struct h2client *c, uint64_t id)
{
    struct call *call = call_find(&c->active, id);

    if (!call)
        call = call_find(&c->waiting, id);
    if (!call)
        return H2CLIENT_ERR_NO_CALL;
    c->busy++;
    call_detach(call, 1);
    call_finish(call, GRPC_CANCELLED, "cancelled", 1);
    api_leave(c);
    return 0;
}

static void client_destroy(struct h2client *c)
{
    c->freeing = 1;
    c->busy++; /* API calls from the callbacks below must not touch the connection */
    while (!list_empty(&c->active)) {
        struct call *call = container_of(c->active.next, struct call, link);
        call_detach(call, 0);
        call_finish(call, GRPC_CANCELLED, "client closed", 1);
    }
    while (!list_empty(&c->waiting)) {
        struct call *call = container_of(c->waiting.next, struct call, link);
        call_finish(call, GRPC_CANCELLED, "client closed", 1);
    }
    conn_release(c);
    while (!list_empty(&c->done)) {
        struct call *call = container_of(c->done.next, struct call, link);
        if (call->kind == CALL_STREAM) { /* no on_message after the free */
            list_del(&call->ready);
            inbox_drop(call);
        }
        list_del(&call->link);
        call_complete(call);
    }
    assert(c->ncalls == 0);
    client_release(c);
}

void h2client_free(struct h2client *c)
{
    if (!c || c->freeing)
        return;
    if (c->busy) {
        c->free_requested = 1;
        return;
    }
    client_destroy(c);
}
