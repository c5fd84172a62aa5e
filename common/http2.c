/* boomerang: prior-knowledge h2c inside the HTTP server (common/http.h), on
 * an nghttp2 server session per connection.
 *
 * http.c owns the socket and feeds bytes in (http2_input) and takes frames
 * out (http2_output, only while less than its high-water mark waits); this
 * file turns each stream into a struct http_request for on_request and each
 * http_respond into a response. nghttp2 checks the protocol and the message
 * rules (RFC 9113 section 8: pseudo-headers, lowercase names, field values,
 * connection-specific fields, content-length against DATA); the server's own
 * limits are checked here.
 *
 * A stream (struct http2_stream, nghttp2's stream user data):
 *
 *   HEADERS begins -> HEAD --header block done, accepted--> BODY
 *   BODY --END_STREAM--> HELD (on_request; the application holds the request)
 *   HEAD/BODY --refused (400/408/413/414/431/501)--> ANSWERED
 *   HELD --http_respond--> ANSWERED (response body queued in st->out)
 *   any --stream closed (answer sent, or RST_STREAM)--> freed; a HELD
 *          request is cancelled (orphaned: on_cancel, answer dropped)
 *
 * A response sent before the request ended (a refusal) is followed by
 * RST_STREAM(NO_ERROR), RFC 9113 section 8.1, so the client stops sending.
 *
 * Requests held by the application are on the session's held list, also
 * once orphaned by a reset, until answered: the count of orphans is bounded
 * (reading stops), and the connection's end detaches them all. */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/http_internal.h"
#include "common/log.h"

enum h2s_state {
    H2S_HEAD,     /* header block arriving */
    H2S_BODY,     /* head accepted; body (or END_STREAM) arriving */
    H2S_HELD,     /* the request is with the application */
    H2S_ANSWERED, /* a response is queued or sent */
};

struct http2_stream {
    struct http2 *h;
    int32_t id;
    enum h2s_state state;
    struct http2_stream *prev, *next; /* h->streams */
    struct http_request *req;         /* HEAD, BODY: being built; HELD: with the app */
    int fail_status;                  /* HEAD: refuse once the header block is done */
    char fail_msg[96];
    size_t head_bytes; /* header list size so far (RFC 9113 6.5.2 accounting) */
    char method[24];
    char *authority;
    int has_host;
    int remote_closed; /* END_STREAM received */
    ev_tstamp since;   /* HEAD: began; BODY: last DATA; ANSWERED: last output */
    struct buf out;    /* response body not yet taken by nghttp2 */
};

struct http2 {
    struct conn *c;
    const struct http_server_config *cfg;
    nghttp2_session *s;
    struct http2_stream *streams;
    unsigned nstreams;
    unsigned max_streams;
    struct http_request *held; /* dispatched and not answered (alive or orphaned) */
    unsigned orphans;          /* of those, cancelled */
    ev_tstamp idle_since;      /* when the last stream closed */
    int goaway;                /* GOAWAY submitted (shutdown or timeout) */
    int closed;                /* http2_close ran: the session is not used again */
    time_t date_sec;
    char date[40];
};

static ev_tstamp h2_now(const struct http2 *h)
{
    return ev_now(http_conn_loop(h->c));
}

/* ---- held requests ------------------------------------------------------------ */

static void held_link(struct http2 *h, struct http_request *r)
{
    r->h2 = h;
    r->prev = NULL;
    r->next = h->held;
    if (h->held)
        h->held->prev = r;
    h->held = r;
}

static void held_unlink(struct http2 *h, struct http_request *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        h->held = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
    r->h2 = NULL;
    if (r->state == HTTP_REQ_ORPHANED) {
        assert(h->orphans > 0);
        if (h->orphans-- == h->max_streams && !h->closed)
            http_conn_wake(h->c); /* reading may resume */
    }
}

/* The client is gone for r: cancel it. It stays on the held list (if the
 * session lives) until answered. */
static void request_orphan(struct http_request *r)
{
    assert(r->state == HTTP_REQ_DISPATCHED);
    if (r->h2s)
        r->h2s->req = NULL;
    r->h2s = NULL;
    r->state = HTTP_REQ_ORPHANED;
    if (r->h2)
        r->h2->orphans++;
    if (r->on_cancel)
        r->on_cancel(r->cancel_arg, r); /* may answer, and so free, r */
}

/* ---- responses ---------------------------------------------------------------- */

static const char *h2_date(struct http2 *h)
{
    time_t now = (time_t)h2_now(h);
    struct tm tm;

    if (now != h->date_sec || !h->date[0]) {
        h->date_sec = now;
        gmtime_r(&now, &tm);
        strftime(h->date, sizeof(h->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    }
    return h->date;
}

static nghttp2_nv nv_make(const char *name, const char *value)
{
    return (nghttp2_nv){.name = (uint8_t *)(uintptr_t)name,
                        .value = (uint8_t *)(uintptr_t)value,
                        .namelen = strlen(name),
                        .valuelen = strlen(value),
                        .flags = NGHTTP2_NV_FLAG_NONE};
}

/* Connection-specific fields (RFC 9113 section 8.2.2) that HTTP/1 allows. */
static int header_connection_specific(const char *name)
{
    static const char *const names[] = {"keep-alive", "proxy-connection", "upgrade", "te"};

    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        if (strcasecmp(name, names[i]) == 0)
            return 1;
    }
    return 0;
}

/* Lowercased copies of the valid extra headers, as "name\0value\0" pairs in
 * names; returns how many. */
static size_t extra_collect(struct http2 *h, int32_t id, const struct http_header *extra,
                            size_t nextra, struct buf *names)
{
    size_t n = 0;

    for (size_t i = 0; i < nextra; i++) {
        const struct http_header *e = &extra[i];
        if (!e->name || !e->value || !http_header_name_ok(e->name) ||
            !http_header_value_ok(e->value) || http_header_reserved(e->name)) {
            log_error("%s stream %" PRId32 ": add response header %s failed: invalid or reserved",
                      http_conn_name(h->c), id, e->name ? e->name : "(null)");
            continue;
        }
        if (header_connection_specific(e->name))
            continue; /* meaningless in HTTP/2, and malformed there */
        for (const char *p = e->name; *p; p++) {
            char ch = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
            buf_append(names, &ch, 1);
        }
        buf_append(names, "", 1);
        buf_append(names, e->value, strlen(e->value) + 1);
        n++;
    }
    return n;
}

static ssize_t on_data_source_read_cb(nghttp2_session *session, int32_t stream_id, uint8_t *out,
                                      size_t length, uint32_t *data_flags,
                                      nghttp2_data_source *source, void *user_data)
{
    struct http2_stream *st = source->ptr;
    size_t n = MIN(length, buf_avail(&st->out));

    (void)session;
    (void)stream_id;
    (void)user_data;
    memcpy(out, buf_head(&st->out), n);
    buf_consume(&st->out, n);
    st->since = h2_now(st->h);
    if (buf_avail(&st->out) == 0) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        buf_free(&st->out);
    }
    return (ssize_t)n;
}

struct answer {
    int status;
    const char *content_type;
    const void *body;
    size_t len;
    const struct http_header *extra;
    size_t nextra;
    int head_only;
};

/* Submit a's response on st (now ANSWERED). */
static void stream_answer(struct http2_stream *st, const struct answer *a)
{
    struct http2 *h = st->h;
    int bodyless = a->status == 204 || a->status == 304;
    char status[8], clen[24];
    struct buf names = {0};
    size_t nv = 0, nextra = extra_collect(h, st->id, a->extra, a->nextra, &names);
    nghttp2_nv *nva = xmalloc((4 + nextra) * sizeof(*nva));
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = on_data_source_read_cb};
    const char *p = (const char *)names.data;
    int rv;

    snprintf(status, sizeof(status), "%d", a->status);
    nva[nv++] = nv_make(":status", status);
    nva[nv++] = nv_make("date", h2_date(h));
    if (a->content_type && http_header_value_ok(a->content_type))
        nva[nv++] = nv_make("content-type", a->content_type);
    else if (a->content_type)
        log_error("%s stream %" PRId32 ": set content-type failed: CR or LF in it",
                  http_conn_name(h->c), st->id);
    if (!bodyless) {
        snprintf(clen, sizeof(clen), "%zu", a->len);
        nva[nv++] = nv_make("content-length", clen);
    }
    for (size_t i = 0; i < nextra; i++) {
        nva[nv++] = nv_make(p, p + strlen(p) + 1);
        p += strlen(p) + 1;
        p += strlen(p) + 1;
    }
    if (!bodyless && !a->head_only && a->len > 0)
        buf_append(&st->out, a->body, a->len);
    rv = nghttp2_submit_response(h->s, st->id, nva, nv, buf_avail(&st->out) ? &prd : NULL);
    if (rv != 0) /* only for a stream nghttp2 no longer knows: nothing to do */
        log_debug("%s stream %" PRId32 ": respond failed: %s", http_conn_name(h->c), st->id,
                  nghttp2_strerror(rv));
    st->state = H2S_ANSWERED;
    st->since = h2_now(h);
    free(nva);
    buf_free(&names);
}

/* Refuse the request on st with {"message": ...}. */
static void stream_refuse(struct http2_stream *st, int status, const char *message)
{
    struct buf body = {0};

    log_debug("%s stream %" PRId32 ": request refused: %d %s", http_conn_name(st->h->c), st->id,
              status, message);
    http_req_free(st->req);
    st->req = NULL;
    http_error_body(&body, message);
    stream_answer(st, &(struct answer){.status = status,
                                       .content_type = "application/json",
                                       .body = body.data,
                                       .len = body.len});
    buf_free(&body);
}

void http2_respond(struct http_request *r, int status, const char *content_type, const void *body,
                   size_t len, const struct http_header *extra, size_t nextra)
{
    static const char oops[] = "{\"message\":\"internal error\"}";
    struct http2 *h = r->h2;
    struct http2_stream *st = r->h2s;
    struct answer a = {status, content_type, body, len, extra, nextra, r->method == HTTP_HEAD};

    if (r->state == HTTP_REQ_DISPATCHED && h && h->closed) {
        /* Answered from another request's on_cancel while http2_close
         * cancels them all: r needs no cancel of its own any more. */
        r->h2s->req = NULL;
        r->h2s = NULL;
        r->state = HTTP_REQ_ORPHANED;
        h->orphans++;
    }
    if (r->state == HTTP_REQ_ORPHANED) {
        if (r->h2)
            held_unlink(r->h2, r);
        http_req_free(r);
        return;
    }
    assert(r->state == HTTP_REQ_DISPATCHED && h && st && st->req == r);
    if (status < 200 || status > 599) {
        log_error("%s stream %" PRId32 ": respond failed: status %d is not a final status",
                  http_conn_name(h->c), st->id, status);
        a = (struct answer){.status = 500,
                            .content_type = "application/json",
                            .body = oops,
                            .len = sizeof(oops) - 1,
                            .head_only = a.head_only};
    }
    stream_answer(st, &a);
    st->req = NULL;
    held_unlink(h, r);
    http_req_free(r);
    http_conn_wake(h->c);
}

int http2_request_alive(const struct http_request *r)
{
    return r->state == HTTP_REQ_DISPATCHED && r->h2 && !r->h2->closed && r->h2s;
}

/* ---- streams ------------------------------------------------------------------ */

static struct http2_stream *stream_new(struct http2 *h, int32_t id)
{
    struct http2_stream *st = xcalloc(1, sizeof(*st));

    st->h = h;
    st->id = id;
    st->state = H2S_HEAD;
    st->req = http_req_new();
    st->since = h2_now(h);
    st->next = h->streams;
    if (h->streams)
        h->streams->prev = st;
    h->streams = st;
    h->nstreams++;
    return st;
}

static void stream_free(struct http2_stream *st)
{
    struct http2 *h = st->h;

    if (st->prev)
        st->prev->next = st->next;
    else
        h->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    if (--h->nstreams == 0)
        h->idle_since = h2_now(h);
    http_req_free(st->req);
    free(st->authority);
    buf_free(&st->out);
    free(st);
}

static struct http2_stream *stream_get(struct http2 *h, int32_t id)
{
    return nghttp2_session_get_stream_user_data(h->s, id);
}

static void stream_fail(struct http2_stream *st, int status, const char *message)
{
    if (st->fail_status)
        return;
    st->fail_status = status;
    snprintf(st->fail_msg, sizeof(st->fail_msg), "%s", message);
}

static void stream_dispatch(struct http2_stream *st)
{
    struct http2 *h = st->h;
    struct http_request *r = st->req;

    buf_append(&r->body, "", 1); /* the promised NUL, not counted */
    r->body.len--;
    r->state = HTTP_REQ_DISPATCHED;
    r->version = 20;
    r->minor = 0;
    r->keep_alive = 1;
    r->conn_id = http_conn_id(h->c);
    snprintf(r->peer, sizeof(r->peer), "%s", http_conn_peer(h->c));
    r->h2s = st;
    held_link(h, r);
    st->state = H2S_HELD;
    h->cfg->on_request(h->cfg->arg, r); /* may answer at once */
}

/* The header block is in: apply the checks that need all of it. */
static void stream_head_done(struct http2_stream *st)
{
    struct http2 *h = st->h;
    struct http_request *r = st->req;
    const char *cl;
    char msg[96];
    int m;

    if (st->fail_status) {
        stream_refuse(st, st->fail_status, st->fail_msg);
        return;
    }
    m = http_req_method_parse(st->method);
    if (m < 0) {
        snprintf(msg, sizeof(msg), "method \"%.40s\" is not supported", st->method);
        stream_refuse(st, 501, msg);
        return;
    }
    r->method = (enum http_method)m;
    if (r->method == HTTP_CONNECT || http_req_split_target(r) != 0) {
        stream_refuse(st, 400,
                      r->method == HTTP_CONNECT ? "CONNECT is not supported"
                                                : "invalid request target");
        return;
    }
    if (st->authority && !st->has_host)
        http_req_add_field(r, "host", 4, st->authority, strlen(st->authority));
    cl = http_request_header(r, "content-length"); /* nghttp2 checked it is a number */
    if (cl && strtoull(cl, NULL, 10) > h->cfg->max_body) {
        snprintf(msg, sizeof(msg), "request body of %s bytes exceeds the limit of %zu bytes", cl,
                 h->cfg->max_body);
        stream_refuse(st, 413, msg);
        return;
    }
    st->state = H2S_BODY;
    st->since = h2_now(h);
}

/* ---- nghttp2 callbacks -------------------------------------------------------- */

static int on_begin_headers_cb(nghttp2_session *session, const nghttp2_frame *frame,
                               void *user_data)
{
    struct http2 *h = user_data;
    int rv;

    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    rv = nghttp2_session_set_stream_user_data(session, frame->hd.stream_id,
                                              stream_new(h, frame->hd.stream_id));
    assert(rv == 0); /* nghttp2 just opened the stream */
    (void)rv;
    return 0;
}

/* A pseudo-header of the request (nghttp2 allows only these, once each). */
static void stream_pseudo(struct http2_stream *st, const uint8_t *name, size_t namelen,
                          const uint8_t *value, size_t valuelen)
{
    if (namelen == 7 && memcmp(name, ":method", 7) == 0) {
        snprintf(st->method, sizeof(st->method), "%.*s", (int)MIN(valuelen, (size_t)23), value);
        if (valuelen >= sizeof(st->method))
            st->method[0] = '?'; /* no method is that long: unknown */
    } else if (namelen == 5 && memcmp(name, ":path", 5) == 0) {
        /* HPACK caps a field at 64 KiB, and http_req_split_target refuses
         * longer targets anyway: no 414 here. */
        st->req->target = http_req_add_str(st->req, value, valuelen);
    } else if (namelen == 10 && memcmp(name, ":authority", 10) == 0) {
        free(st->authority);
        st->authority = xmalloc(valuelen + 1);
        memcpy(st->authority, value, valuelen);
        st->authority[valuelen] = '\0';
    }
}

static int on_header_cb(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *user_data)
{
    struct http2_stream *st = stream_get(user_data, frame->hd.stream_id);
    size_t max_head = ((struct http2 *)user_data)->cfg->max_header_bytes;
    char msg[96];

    (void)session;
    (void)flags;
    if (!st || st->state != H2S_HEAD || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* trailer fields are ignored, as for HTTP/1 */
    st->head_bytes += namelen + valuelen + 32;
    if (st->head_bytes > max_head) {
        snprintf(msg, sizeof(msg), "request headers exceed %zu bytes", max_head);
        stream_fail(st, 431, msg);
    } else if (st->req->nfields >= HTTP_MAX_FIELDS) {
        snprintf(msg, sizeof(msg), "request has more than %d header fields", HTTP_MAX_FIELDS);
        stream_fail(st, 431, msg);
    }
    if (st->fail_status)
        return 0; /* keep decoding (HPACK state), store nothing */
    if (namelen > 0 && name[0] == ':') {
        stream_pseudo(st, name, namelen, value, valuelen);
        return 0;
    }
    /* nghttp2 checked the name (lowercase token) and value (no controls). */
    if (namelen == 4 && memcmp(name, "host", 4) == 0)
        st->has_host = 1;
    http_req_add_field(st->req, name, namelen, value, valuelen);
    return 0;
}

static int on_frame_recv_cb(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct http2_stream *st;

    (void)session;
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA)
        return 0;
    st = stream_get(user_data, frame->hd.stream_id);
    if (!st)
        return 0;
    if (frame->hd.type == NGHTTP2_HEADERS && st->state == H2S_HEAD)
        stream_head_done(st);
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
        st->remote_closed = 1;
        if (st->state == H2S_BODY)
            stream_dispatch(st);
    }
    return 0;
}

static int on_data_chunk_recv_cb(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                                 const uint8_t *data, size_t len, void *user_data)
{
    struct http2 *h = user_data;
    struct http2_stream *st = stream_get(h, stream_id);
    char msg[96];

    (void)session;
    (void)flags;
    if (!st || st->state != H2S_BODY)
        return 0; /* refused already: discarded */
    if (len > h->cfg->max_body - buf_avail(&st->req->body)) {
        snprintf(msg, sizeof(msg), "request body exceeds the limit of %zu bytes", h->cfg->max_body);
        stream_refuse(st, 413, msg);
        return 0;
    }
    buf_append(&st->req->body, data, len);
    st->since = h2_now(h);
    return 0;
}

static int on_frame_send_cb(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct http2_stream *st;
    int rv;

    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    st = stream_get(user_data, frame->hd.stream_id);
    if (!st || st->remote_closed)
        return 0;
    /* Answered before the request ended: ask the client to stop sending. */
    rv = nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
    if (rv != 0)
        log_debug("%s stream %" PRId32 ": reset failed: %s", http_conn_name(st->h->c), st->id,
                  nghttp2_strerror(rv));
    return 0;
}

static int on_stream_close_cb(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                              void *user_data)
{
    struct http2_stream *st = stream_get(user_data, stream_id);
    struct http_request *r;

    (void)session;
    if (!st)
        return 0;
    r = st->state == H2S_HELD ? st->req : NULL;
    if (r) {
        log_debug("%s stream %" PRId32 ": cancelled by the client (%s)", http_conn_name(st->h->c),
                  stream_id, nghttp2_http2_strerror(error_code));
        st->req = NULL;
        request_orphan(r);
    }
    stream_free(st);
    return 0;
}

/* ---- the session -------------------------------------------------------------- */

static nghttp2_session_callbacks *session_callbacks(void)
{
    nghttp2_session_callbacks *cbs;

    if (nghttp2_session_callbacks_new(&cbs) != 0)
        return NULL;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers_cb);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header_cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv_cb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk_recv_cb);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send_cb);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close_cb);
    return cbs;
}

struct http2 *http2_new(struct conn *c)
{
    struct http2 *h = xcalloc(1, sizeof(*h));
    nghttp2_session_callbacks *cbs = session_callbacks();
    nghttp2_settings_entry iv[2];
    int rv = cbs ? nghttp2_session_server_new(&h->s, cbs, h) : NGHTTP2_ERR_NOMEM;

    nghttp2_session_callbacks_del(cbs);
    if (rv != 0)
        goto fail_session;
    h->c = c;
    h->cfg = http_conn_cfg(c);
    h->max_streams = h->cfg->max_streams ? h->cfg->max_streams : HTTP2_DEFAULT_MAX_STREAMS;
    h->idle_since = h2_now(h);
    iv[0] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, h->max_streams};
    iv[1] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
                                     (uint32_t)MIN(h->cfg->max_header_bytes, (size_t)UINT32_MAX)};
    rv = nghttp2_submit_settings(h->s, NGHTTP2_FLAG_NONE, iv, ARRAY_LEN(iv));
    if (rv != 0)
        goto fail_settings;
    log_debug("%s: HTTP/2 session started", http_conn_name(c));
    return h;

fail_settings:
    nghttp2_session_del(h->s);
fail_session:
    log_error("%s: start HTTP/2 session failed: %s", http_conn_name(c), nghttp2_strerror(rv));
    free(h);
    return NULL;
}

void http2_free(struct http2 *h)
{
    if (!h)
        return;
    assert(h->closed && !h->held);
    /* nghttp2_session_del calls no callbacks: free our stream data here. */
    while (h->streams)
        stream_free(h->streams);
    nghttp2_session_del(h->s);
    free(h);
}

int http2_input(struct http2 *h, const uint8_t *data, size_t len)
{
    ssize_t rv;

    if (h->closed)
        return 0;
    rv = nghttp2_session_mem_recv(h->s, data, len);
    if (rv < 0) {
        log_debug("%s: HTTP/2 input failed: %s", http_conn_name(h->c), nghttp2_strerror((int)rv));
        return -1;
    }
    return 0;
}

int http2_output(struct http2 *h, struct buf *out, size_t high)
{
    while (!h->closed && buf_avail(out) < high) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(h->s, &data);

        if (n < 0) {
            log_debug("%s: HTTP/2 output failed: %s", http_conn_name(h->c),
                      nghttp2_strerror((int)n));
            return -1;
        }
        if (n == 0)
            break;
        buf_append(out, data, (size_t)n);
    }
    return 0;
}

int http2_want_read(const struct http2 *h)
{
    return !h->closed && nghttp2_session_want_read(h->s) && h->orphans < h->max_streams;
}

int http2_want_write(const struct http2 *h)
{
    return !h->closed && nghttp2_session_want_write(h->s);
}

int http2_done(const struct http2 *h)
{
    return h->closed || (!nghttp2_session_want_read(h->s) && !nghttp2_session_want_write(h->s));
}

static ev_tstamp earliest(ev_tstamp a, ev_tstamp b)
{
    return a == 0 ? b : (b == 0 ? a : MIN(a, b));
}

/* When st times out (0: never): its head or body stalls, or the client's
 * flow-control window holds its answer back. */
static ev_tstamp stream_deadline(const struct http2_stream *st)
{
    const struct http_server_config *cfg = st->h->cfg;

    if ((st->state == H2S_HEAD || st->state == H2S_BODY) && cfg->read_timeout > 0)
        return st->since + cfg->read_timeout;
    if (st->state == H2S_ANSWERED && buf_avail(&st->out) > 0 && cfg->write_timeout > 0)
        return st->since + cfg->write_timeout;
    return 0;
}

ev_tstamp http2_deadline(const struct http2 *h)
{
    ev_tstamp d = 0;

    if (h->closed || h->goaway)
        return 0; /* the write timeout bounds the rest */
    if (h->nstreams == 0 && h->cfg->idle_timeout > 0)
        d = h->idle_since + h->cfg->idle_timeout;
    for (const struct http2_stream *st = h->streams; st; st = st->next)
        d = earliest(d, stream_deadline(st));
    return d;
}

static void session_goaway(struct http2 *h, uint32_t error_code, const char *why)
{
    int rv;

    log_debug("%s: closing the HTTP/2 session: %s", http_conn_name(h->c), why);
    h->goaway = 1;
    rv = nghttp2_session_terminate_session(h->s, error_code);
    if (rv != 0)
        log_debug("%s: GOAWAY failed: %s", http_conn_name(h->c), nghttp2_strerror(rv));
}

void http2_expire(struct http2 *h)
{
    ev_tstamp now = h2_now(h);
    char msg[96];

    if (h->closed || h->goaway)
        return;
    if (h->nstreams == 0 && h->cfg->idle_timeout > 0 &&
        now >= h->idle_since + h->cfg->idle_timeout) {
        session_goaway(h, NGHTTP2_NO_ERROR, "idle timeout");
        return;
    }
    for (struct http2_stream *st = h->streams; st; st = st->next) {
        ev_tstamp d = stream_deadline(st);
        if (d == 0 || now < d)
            continue;
        if (st->state == H2S_HEAD) {
            /* A header block blocks the whole connection (CONTINUATION). */
            session_goaway(h, NGHTTP2_PROTOCOL_ERROR, "header block not received in time");
            return;
        }
        if (st->state == H2S_BODY) {
            snprintf(msg, sizeof(msg), "request not received within %g s", h->cfg->read_timeout);
            stream_refuse(st, 408, msg);
        } else {
            st->since = now; /* once: the reset closes it */
            buf_free(&st->out);
            log_debug("%s stream %" PRId32 ": write timeout: the client does not take the answer",
                      http_conn_name(h->c), st->id);
            (void)nghttp2_submit_rst_stream(h->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
        }
    }
}

void http2_shutdown(struct http2 *h)
{
    int rv;

    if (h->closed || h->goaway)
        return;
    h->goaway = 1;
    rv = nghttp2_submit_goaway(h->s, NGHTTP2_FLAG_NONE,
                               nghttp2_session_get_last_proc_stream_id(h->s), NGHTTP2_NO_ERROR,
                               NULL, 0);
    if (rv != 0)
        log_debug("%s: GOAWAY failed: %s", http_conn_name(h->c), nghttp2_strerror(rv));
}

static struct http_request *held_first_alive(const struct http2 *h)
{
    for (struct http_request *r = h->held; r; r = r->next) {
        if (r->state == HTTP_REQ_DISPATCHED)
            return r;
    }
    return NULL;
}

void http2_close(struct http2 *h)
{
    struct http_request *r;

    if (h->closed)
        return;
    h->closed = 1;
    /* Rescan after each: a cancel callback may answer any held request. */
    while ((r = held_first_alive(h)) != NULL)
        request_orphan(r);
    while (h->held)
        held_unlink(h, h->held); /* orphans answered later are just freed */
}
