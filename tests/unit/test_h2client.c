/* boomerang: tests for common/h2client.c against a small nghttp2 gRPC server
 * that runs on the same loop (h2c or TLS on 127.0.0.1, ephemeral port). The
 * server's behaviour is chosen by the request path ("/t/Echo", "/t/Fail", ...)
 * and by a few connection-level modes (garbage, silent, trickle). */
#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/grpc.h"
#include "common/h2client.h"
#include "common/log.h"
#include "common/tls.h"
#include "common/util.h"
#include "harness.h"

static struct ev_loop *loop;

/* ---- the test server ----------------------------------------------------------*/

enum srv_mode {
    SRV_H2,      /* serve gRPC */
    SRV_GARBAGE, /* answer every connection with an HTTP/1.1 error */
    SRV_SILENT,  /* accept and say nothing */
};

struct tstream {
    struct tstream *next;
    int32_t id;
    char path[64];
    char auth[128];
    char timeout[32];
    struct buf req;
    struct buf body;    /* framed response bytes not yet sent */
    uint32_t remaining; /* stream: messages still to generate */
    uint32_t msg_size;
    uint32_t next_index;
    int stall; /* send what is generated, then never end */
    int grpc_status;
    const char *grpc_message;
    int no_trailers; /* end with the DATA (no grpc-status) */
};

struct tconn {
    struct tsrv *s;
    int fd;
    SSL *ssl;
    nghttp2_session *ses;
    ev_io rio, wio;
    ev_timer trickle;
    struct buf out;
    struct tstream *streams;
    int close_now;   /* close after this read */
    int garbage_now; /* write garbage after the frames queued so far */
    int ping_flood;  /* write thousands of PINGs after the frames queued so far */
    int closed;
};

#define MAX_CONNS 32

struct tsrv {
    int lfd;
    int port;
    ev_io accept_io;
    enum srv_mode mode;
    int trickle;  /* write one byte per loop pass */
    int paused;   /* do not read from connections */
    int abortive; /* close connections with RST, without TLS close_notify */
    SSL_CTX *tls;
    struct tconn *conns[MAX_CONNS];
    int nconns;
    int accepts;
    int rst_cancel; /* RST_STREAM CANCEL received */
    int refused;    /* /t/Refuse calls seen */
    nghttp2_session_callbacks *cbs;
};

static void tconn_flush(struct tconn *tc);

static void frame_msg(struct buf *b, const void *msg, uint32_t len, uint8_t flag)
{
    uint8_t p[GRPC_PREFIX_LEN];

    grpc_put_prefix(p, len);
    p[0] = flag;
    buf_append(b, p, sizeof(p));
    buf_append(b, msg, len);
}

static nghttp2_nv mknv(const char *n, const char *v)
{
    nghttp2_nv nv = {(uint8_t *)n, (uint8_t *)v, strlen(n), strlen(v), NGHTTP2_NV_FLAG_NONE};
    return nv;
}

static void gen_messages(struct tstream *st, size_t want)
{
    uint8_t *m = xcalloc(1, st->msg_size + 4);

    while (st->remaining > 0 && buf_avail(&st->body) < want) {
        put_be32(m, st->next_index++);
        frame_msg(&st->body, m, st->msg_size, 0);
        st->remaining--;
    }
    free(m);
}

static ssize_t srv_read_cb(nghttp2_session *ses, int32_t id, uint8_t *out, size_t len,
                           uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    struct tstream *st = src->ptr;
    size_t n;
    char code[8];

    (void)ud;
    gen_messages(st, len);
    n = MIN(len, buf_avail(&st->body));
    if (n > 0) {
        memcpy(out, buf_head(&st->body), n);
        buf_consume(&st->body, n);
    }
    if (buf_avail(&st->body) > 0 || st->remaining > 0)
        return (ssize_t)n;
    if (st->stall)
        return n ? (ssize_t)n : NGHTTP2_ERR_DEFERRED;
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (!st->no_trailers) {
        nghttp2_nv tr[2];
        size_t k = 0;
        snprintf(code, sizeof(code), "%d", st->grpc_status);
        tr[k++] = mknv("grpc-status", code);
        if (st->grpc_message)
            tr[k++] = mknv("grpc-message", st->grpc_message);
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        if (nghttp2_submit_trailer(ses, id, tr, k) != 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return (ssize_t)n;
}

/* Headers, then body (st->body and generated messages), then trailers. */
static void respond(struct tconn *tc, struct tstream *st)
{
    nghttp2_nv h[] = {mknv(":status", "200"), mknv("content-type", "application/grpc")};
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = srv_read_cb};

    if (nghttp2_submit_response(tc->ses, st->id, h, 2, &prd) != 0)
        abort();
}

static void respond_trailers_only(struct tconn *tc, struct tstream *st, const char *status,
                                  const char *code, const char *message)
{
    nghttp2_nv h[4];
    size_t k = 0;

    h[k++] = mknv(":status", status);
    h[k++] = mknv("content-type", "application/grpc");
    if (code)
        h[k++] = mknv("grpc-status", code);
    if (message)
        h[k++] = mknv("grpc-message", message);
    if (nghttp2_submit_response(tc->ses, st->id, h, k, NULL) != 0)
        abort();
}

static void reply_bytes(struct tconn *tc, struct tstream *st, const void *p, size_t n)
{
    frame_msg(&st->body, p, (uint32_t)n, 0);
    respond(tc, st);
}

static uint32_t req_u32(const struct tstream *st, size_t i)
{
    if (buf_avail(&st->req) < GRPC_PREFIX_LEN + 4 * (i + 1))
        return 0;
    return get_be32(buf_head(&st->req) + GRPC_PREFIX_LEN + 4 * i);
}

static void handle_request(struct tconn *tc, struct tstream *st)
{
    const uint8_t *msg = buf_head(&st->req) + GRPC_PREFIX_LEN;
    size_t len = buf_avail(&st->req) >= GRPC_PREFIX_LEN ? buf_avail(&st->req) - GRPC_PREFIX_LEN : 0;
    const char *p = st->path;

    if (strcmp(p, "/t/Echo") == 0) {
        reply_bytes(tc, st, msg, len);
    } else if (strcmp(p, "/t/Fail") == 0) {
        respond_trailers_only(tc, st, "200", "5", "no%20such row %E2%9C%93");
    } else if (strcmp(p, "/t/Http") == 0) {
        char code[16];
        snprintf(code, sizeof(code), "%u", req_u32(st, 0));
        respond_trailers_only(tc, st, code, NULL, NULL);
    } else if (strcmp(p, "/t/BadStatus") == 0) {
        respond_trailers_only(tc, st, "200", "forty-two", NULL);
    } else if (strcmp(p, "/t/Reset") == 0) {
        if (nghttp2_submit_rst_stream(tc->ses, 0, st->id, req_u32(st, 0)) != 0)
            abort();
    } else if (strcmp(p, "/t/PingFlood") == 0) {
        tc->ping_flood = 1;
    } else if (strcmp(p, "/t/Auth") == 0) {
        reply_bytes(tc, st, st->auth, strlen(st->auth));
    } else if (strcmp(p, "/t/Timeout") == 0) {
        reply_bytes(tc, st, st->timeout, strlen(st->timeout));
    } else if (strcmp(p, "/t/Stream") == 0 || strcmp(p, "/t/StreamStall") == 0) {
        st->remaining = req_u32(st, 0);
        st->msg_size = MAX(req_u32(st, 1), 4);
        st->stall = strcmp(p, "/t/StreamStall") == 0;
        respond(tc, st);
    } else if (strcmp(p, "/t/Big") == 0) {
        uint8_t *big = xcalloc(1, req_u32(st, 0) + 1);
        reply_bytes(tc, st, big, req_u32(st, 0));
        free(big);
    } else if (strcmp(p, "/t/Two") == 0) {
        frame_msg(&st->body, "a", 1, 0);
        reply_bytes(tc, st, "b", 1);
    } else if (strcmp(p, "/t/Compressed") == 0) {
        frame_msg(&st->body, "zz", 2, 1);
        respond(tc, st);
    } else if (strcmp(p, "/t/Partial") == 0) {
        buf_append(&st->body,
                   "\0\0\0\0\x09"
                   "abc",
                   8);
        respond(tc, st);
    } else if (strcmp(p, "/t/NoStatus") == 0) {
        st->no_trailers = 1;
        reply_bytes(tc, st, "x", 1);
    } else if (strcmp(p, "/t/Empty") == 0) {
        respond(tc, st); /* OK trailers, but no message */
    } else if (strcmp(p, "/t/Refuse") == 0) {
        if (tc->s->refused++ == 0) {
            if (nghttp2_submit_rst_stream(tc->ses, 0, st->id, NGHTTP2_REFUSED_STREAM) != 0)
                abort();
        } else {
            reply_bytes(tc, st, msg, len);
        }
    } else if (strcmp(p, "/t/Goaway") == 0) {
        if (nghttp2_submit_goaway(tc->ses, 0, st->id, NGHTTP2_NO_ERROR, NULL, 0) != 0)
            abort();
        reply_bytes(tc, st, msg, len);
    } else if (strcmp(p, "/t/Close") == 0) {
        tc->close_now = 1;
    } else if (strcmp(p, "/t/Garbage") == 0) {
        tc->garbage_now = 1;
    } else if (strcmp(p, "/t/Slow") == 0) {
        /* never answer */
    } else {
        respond_trailers_only(tc, st, "200", "12", "unknown method");
    }
}

static int srv_begin_headers_cb(nghttp2_session *ses, const nghttp2_frame *f, void *ud)
{
    struct tconn *tc = ud;
    struct tstream *st = xcalloc(1, sizeof(*st));

    st->id = f->hd.stream_id;
    st->next = tc->streams;
    tc->streams = st;
    return nghttp2_session_set_stream_user_data(ses, st->id, st);
}

static void copy_value(char *dst, size_t cap, const uint8_t *v, size_t n)
{
    n = MIN(n, cap - 1);
    memcpy(dst, v, n);
    dst[n] = '\0';
}

static int srv_header_cb(nghttp2_session *ses, const nghttp2_frame *f, const uint8_t *name,
                         size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    struct tstream *st = nghttp2_session_get_stream_user_data(ses, f->hd.stream_id);

    (void)flags;
    (void)ud;
    if (!st)
        return 0;
    if (nlen == 5 && memcmp(name, ":path", 5) == 0)
        copy_value(st->path, sizeof(st->path), value, vlen);
    else if (nlen == 13 && memcmp(name, "authorization", 13) == 0)
        copy_value(st->auth, sizeof(st->auth), value, vlen);
    else if (nlen == 12 && memcmp(name, "grpc-timeout", 12) == 0)
        copy_value(st->timeout, sizeof(st->timeout), value, vlen);
    return 0;
}

static int srv_data_cb(nghttp2_session *ses, uint8_t flags, int32_t id, const uint8_t *data,
                       size_t len, void *ud)
{
    struct tstream *st = nghttp2_session_get_stream_user_data(ses, id);

    (void)flags;
    (void)ud;
    if (st)
        buf_append(&st->req, data, len);
    return 0;
}

static int srv_frame_cb(nghttp2_session *ses, const nghttp2_frame *f, void *ud)
{
    struct tstream *st;

    if ((f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) ||
        !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    st = nghttp2_session_get_stream_user_data(ses, f->hd.stream_id);
    if (st)
        handle_request(ud, st);
    return 0;
}

static int srv_close_cb(nghttp2_session *ses, int32_t id, uint32_t code, void *ud)
{
    struct tconn *tc = ud;
    struct tstream **pp;

    (void)ses;
    if (code == NGHTTP2_CANCEL)
        tc->s->rst_cancel++;
    for (pp = &tc->streams; *pp; pp = &(*pp)->next) {
        if ((*pp)->id == id) {
            struct tstream *st = *pp;
            *pp = st->next;
            buf_free(&st->req);
            buf_free(&st->body);
            free(st);
            break;
        }
    }
    return 0;
}

static void tconn_close(struct tconn *tc)
{
    if (tc->closed)
        return;
    tc->closed = 1;
    ev_io_stop(loop, &tc->rio);
    ev_io_stop(loop, &tc->wio);
    ev_timer_stop(loop, &tc->trickle);
    while (tc->streams) {
        struct tstream *st = tc->streams;
        tc->streams = st->next;
        buf_free(&st->req);
        buf_free(&st->body);
        free(st);
    }
    nghttp2_session_del(tc->ses);
    tc->ses = NULL;
    if (tc->ssl && !tc->s->abortive)
        (void)SSL_shutdown(tc->ssl); /* close_notify, best effort */
    if (tc->s->abortive) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0}; /* close with RST */
        if (setsockopt(tc->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) < 0)
            abort();
    }
    SSL_free(tc->ssl);
    tc->ssl = NULL;
    close(tc->fd);
    buf_free(&tc->out);
}

static ssize_t tconn_write(struct tconn *tc, const uint8_t *p, size_t n)
{
    if (tc->ssl) {
        int rv = SSL_write(tc->ssl, p, (int)n);
        if (rv > 0)
            return rv;
        int e = SSL_get_error(tc->ssl, rv);
        ERR_clear_error();
        return e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ ? 0 : -1;
    }
    ssize_t w = send(tc->fd, p, n, MSG_NOSIGNAL);
    if (w < 0)
        return errno == EAGAIN ? 0 : -1;
    return w;
}

static void tconn_write_out(struct tconn *tc)
{
    while (buf_avail(&tc->out) > 0) {
        size_t n = tc->s->trickle ? 1 : buf_avail(&tc->out);
        ssize_t w = tconn_write(tc, buf_head(&tc->out), n);
        if (w < 0) {
            tconn_close(tc);
            return;
        }
        if (w == 0)
            break;
        buf_consume(&tc->out, (size_t)w);
        if (tc->s->trickle)
            break;
    }
    if (buf_avail(&tc->out) > 0 && !tc->s->trickle)
        ev_io_start(loop, &tc->wio);
    else
        ev_io_stop(loop, &tc->wio);
    if (tc->s->trickle && buf_avail(&tc->out) > 0)
        ev_timer_start(loop, &tc->trickle);
}

static void tconn_flush(struct tconn *tc)
{
    const uint8_t *data;
    ssize_t n;

    if (tc->closed)
        return;
    while (tc->ses && (n = nghttp2_session_mem_send(tc->ses, &data)) > 0)
        buf_append(&tc->out, data, (size_t)n);
    for (; tc->ping_flood; tc->ping_flood = 0) {
        static const uint8_t ping[17] = {0, 0, 8, NGHTTP2_PING};
        for (int i = 0; i < 3000; i++)
            buf_append(&tc->out, ping, sizeof(ping));
    }
    if (tc->garbage_now) {
        buf_append(&tc->out, "\xff\xff\xff\x00\x00\x00\x00\x00\x01garbage", 16);
        tc->garbage_now = 0;
    }
    tconn_write_out(tc);
    if (!tc->closed && tc->ses && buf_avail(&tc->out) == 0 && !nghttp2_session_want_read(tc->ses) &&
        !nghttp2_session_want_write(tc->ses))
        tconn_close(tc);
}

static void tconn_trickle_cb(struct ev_loop *l, ev_timer *w, int revents)
{
    struct tconn *tc = container_of(w, struct tconn, trickle);

    (void)l;
    (void)revents;
    ev_timer_stop(loop, w);
    tconn_flush(tc);
}

static ssize_t tconn_read(struct tconn *tc, uint8_t *p, size_t n)
{
    if (tc->ssl) {
        int rv = SSL_read(tc->ssl, p, (int)n);
        if (rv > 0)
            return rv;
        int e = SSL_get_error(tc->ssl, rv);
        ERR_clear_error();
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return -2;
        return 0;
    }
    ssize_t r = read(tc->fd, p, n);
    if (r < 0)
        return errno == EAGAIN ? -2 : 0;
    return r;
}

static void tconn_read_cb(struct ev_loop *l, ev_io *w, int revents)
{
    struct tconn *tc = container_of(w, struct tconn, rio);
    uint8_t buf[16384];

    (void)l;
    (void)revents;
    if (tc->s->paused) {
        ev_io_stop(loop, &tc->rio);
        return;
    }
    for (;;) {
        ssize_t n = tconn_read(tc, buf, sizeof(buf));
        if (n == -2)
            break;
        if (n == 0 || (tc->ses && nghttp2_session_mem_recv(tc->ses, buf, (size_t)n) < 0)) {
            tconn_close(tc);
            return;
        }
        if (tc->close_now) {
            tconn_close(tc);
            return;
        }
    }
    tconn_flush(tc);
}

static void tconn_write_cb(struct ev_loop *l, ev_io *w, int revents)
{
    (void)l;
    (void)revents;
    tconn_flush(container_of(w, struct tconn, wio));
}

static void tsrv_accept_cb(struct ev_loop *l, ev_io *w, int revents)
{
    struct tsrv *s = container_of(w, struct tsrv, accept_io);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 100},
                                   {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 30}};
    struct tconn *tc;
    int one = 1;
    int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

    (void)l;
    (void)revents;
    if (fd < 0)
        return;
    if (s->nconns == MAX_CONNS) {
        close(fd);
        return;
    }
    s->accepts++;
    tc = xcalloc(1, sizeof(*tc));
    s->conns[s->nconns++] = tc;
    tc->s = s;
    tc->fd = fd;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
        abort();
    ev_io_init(&tc->rio, tconn_read_cb, fd, EV_READ);
    ev_io_init(&tc->wio, tconn_write_cb, fd, EV_WRITE);
    ev_timer_init(&tc->trickle, tconn_trickle_cb, 0.001, 0.);
    ev_io_start(loop, &tc->rio);
    if (s->tls) {
        tc->ssl = SSL_new(s->tls);
        if (!tc->ssl || SSL_set_fd(tc->ssl, fd) != 1)
            abort();
        SSL_set_mode(tc->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        SSL_set_accept_state(tc->ssl);
    }
    if (s->mode == SRV_GARBAGE)
        buf_append(&tc->out, "HTTP/1.1 400 Bad Request\r\n\r\n", 28);
    if (s->mode == SRV_H2) {
        if (nghttp2_session_server_new(&tc->ses, s->cbs, tc) != 0 ||
            nghttp2_submit_settings(tc->ses, 0, iv, ARRAY_LEN(iv)) != 0 ||
            nghttp2_session_set_local_window_size(tc->ses, 0, 0, 1 << 30) != 0)
            abort();
    }
    tconn_flush(tc);
}

/* Listen on 127.0.0.1:port (0: any). Returns 0, or -1 if the port is taken. */
static int tsrv_start(struct tsrv *s, int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    int one = 1;

    memset(s, 0, sizeof(*s));
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->lfd < 0 || setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
        abort();
    if (bind(s->lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(s->lfd, 64) < 0) {
        close(s->lfd);
        return -1;
    }
    if (getsockname(s->lfd, (struct sockaddr *)&a, &alen) < 0)
        abort();
    s->port = ntohs(a.sin_port);
    if (nghttp2_session_callbacks_new(&s->cbs) != 0)
        abort();
    nghttp2_session_callbacks_set_on_begin_headers_callback(s->cbs, srv_begin_headers_cb);
    nghttp2_session_callbacks_set_on_header_callback(s->cbs, srv_header_cb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(s->cbs, srv_data_cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(s->cbs, srv_frame_cb);
    nghttp2_session_callbacks_set_on_stream_close_callback(s->cbs, srv_close_cb);
    ev_io_init(&s->accept_io, tsrv_accept_cb, s->lfd, EV_READ);
    ev_io_start(loop, &s->accept_io);
    return 0;
}

static int tsrv_open_conns(const struct tsrv *s)
{
    int n = 0;
    for (int i = 0; i < s->nconns; i++)
        n += !s->conns[i]->closed;
    return n;
}

/* Close every connection at once, like a crashed server. */
static void tsrv_drop_conns(struct tsrv *s)
{
    for (int i = 0; i < s->nconns; i++)
        tconn_close(s->conns[i]);
}

static void tsrv_resume(struct tsrv *s)
{
    s->paused = 0;
    for (int i = 0; i < s->nconns; i++)
        if (!s->conns[i]->closed)
            ev_io_start(loop, &s->conns[i]->rio);
}

static void tsrv_stop(struct tsrv *s)
{
    ev_io_stop(loop, &s->accept_io);
    close(s->lfd);
    for (int i = 0; i < s->nconns; i++) {
        tconn_close(s->conns[i]);
        free(s->conns[i]);
    }
    nghttp2_session_callbacks_del(s->cbs);
    s->nconns = 0;
}

/* ---- client-side helpers ---------------------------------------------------------*/

struct result {
    int calls;
    enum grpc_status status;
    char message[256];
    char reply[256];
    size_t reply_len;
};

static void reply_cb(void *arg, enum grpc_status status, const char *message, const uint8_t *reply,
                     size_t len)
{
    struct result *r = arg;

    r->calls++;
    r->status = status;
    snprintf(r->message, sizeof(r->message), "%s", message ? message : "");
    r->reply_len = len;
    if (reply)
        memcpy(r->reply, reply, MIN(len, sizeof(r->reply)));
    if (!reply && len != 0)
        r->calls += 100; /* contract: no reply bytes with an error */
}

struct states {
    int seen[3];
    enum h2client_state last;
};

static void state_cb(void *arg, enum h2client_state s)
{
    struct states *st = arg;
    st->seen[s]++;
    st->last = s;
}

static void tick_cb(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)w;
    (void)revents;
}

/* Run the loop until cond holds or timeout_s passes. Returns cond. */
#define RUN_UNTIL(cond, timeout_s)                                                                 \
    ({                                                                                             \
        ev_timer tick_;                                                                            \
        int64_t end_ = mono_us() + (int64_t)((timeout_s)*1e6);                                     \
        ev_timer_init(&tick_, tick_cb, 0.01, 0.01);                                                \
        ev_timer_start(loop, &tick_);                                                              \
        while (!(cond) && mono_us() < end_)                                                        \
            ev_run(loop, EVRUN_ONCE);                                                              \
        ev_timer_stop(loop, &tick_);                                                               \
        (cond);                                                                                    \
    })

static char url_buf[64];

static const char *url_for(const struct tsrv *s, const char *scheme)
{
    snprintf(url_buf, sizeof(url_buf), "%s://127.0.0.1:%d", scheme, s->port);
    return url_buf;
}

static struct h2client *client_for(const struct tsrv *s, struct states *st)
{
    struct h2client_config cfg = {.url = url_for(s, "http"),
                                  .on_state = state_cb,
                                  .arg = st,
                                  .backoff_initial = 0.01,
                                  .backoff_max = 0.05,
                                  .connect_timeout = 2};
    struct h2client *c = NULL;

    if (h2client_new(loop, &cfg, &c) != 0)
        return NULL;
    return c;
}

static struct h2client *client_connected(const struct tsrv *s, struct states *st)
{
    struct h2client *c = client_for(s, st);

    if (c && !RUN_UNTIL(h2client_state(c) == H2CLIENT_CONNECTED, 5)) {
        h2client_free(c);
        return NULL;
    }
    return c;
}

/* One unary call to completion. */
static void call_sync(struct h2client *c, const char *path, const void *msg, size_t len,
                      double timeout, struct result *r)
{
    memset(r, 0, sizeof(*r));
    h2client_unary(c, path, msg, len, timeout, reply_cb, r);
    RUN_UNTIL(r->calls > 0, 10);
}

static void req_u32s(uint8_t out[8], uint32_t a, uint32_t b)
{
    put_be32(out, a);
    put_be32(out + 4, b);
}

/* ---- tests ---------------------------------------------------------------------------*/

TEST(test_unary_ok)
{
    struct tsrv s;
    struct states st = {0};
    struct result r1 = {0}, r2;
    struct h2client *c;

    REQUIRE(tsrv_start(&s, 0) == 0);
    c = client_for(&s, &st);
    REQUIRE(c);
    CHECK(h2client_state(c) == H2CLIENT_CONNECTING);
    /* a call made while connecting waits for the connection */
    CHECK(h2client_unary(c, "/t/Echo", (const uint8_t *)"hello", 5, 5, reply_cb, &r1) != 0);
    CHECK(h2client_pending(c) == 1);
    CHECK(RUN_UNTIL(r1.calls == 1, 5));
    CHECK(r1.status == GRPC_OK);
    CHECK(r1.reply_len == 5 && memcmp(r1.reply, "hello", 5) == 0);
    CHECK(st.seen[H2CLIENT_CONNECTING] == 1 && st.seen[H2CLIENT_CONNECTED] == 1);
    /* empty request and empty reply */
    call_sync(c, "/t/Echo", NULL, 0, 5, &r2);
    CHECK(r2.calls == 1 && r2.status == GRPC_OK && r2.reply_len == 0);
    CHECK(h2client_pending(c) == 0);
    h2client_free(c);
    CHECK(r1.calls == 1);
    tsrv_stop(&s);
}

TEST(test_many_concurrent)
{
    enum { N = 300 };
    static struct result r[N];
    struct tsrv s;
    struct states st = {0};
    struct h2client *c;
    int done = 0, ok = 0;

    REQUIRE(tsrv_start(&s, 0) == 0);
    c = client_connected(&s, &st);
    REQUIRE(c);
    memset(r, 0, sizeof(r));
    for (int i = 0; i < N; i++) {
        char m[16];
        int n = snprintf(m, sizeof(m), "m%d", i);
        h2client_unary(c, "/t/Echo", (const uint8_t *)m, (size_t)n, 10, reply_cb, &r[i]);
    }
    RUN_UNTIL(h2client_pending(c) == 0, 10);
    for (int i = 0; i < N; i++) {
        char m[16];
        int n = snprintf(m, sizeof(m), "m%d", i);
        done += r[i].calls;
        ok += r[i].status == GRPC_OK && r[i].reply_len == (size_t)n && !memcmp(r[i].reply, m, n);
    }
    CHECK(done == N);
    CHECK(ok == N);
    CHECK(s.accepts == 1); /* all on one connection */
    h2client_free(c);
    tsrv_stop(&s);
}

TEST(test_server_error_status)
{
    struct tsrv s;
    struct states st = {0};
    struct result r;
    struct h2client *c;

    REQUIRE(tsrv_start(&s, 0) == 0);
    c = client_connected(&s, &st);
    REQUIRE(c);
    call_sync(c, "/t/Fail", "x", 1, 5, &r);
    CHECK(r.calls == 1 && r.status == GRPC_NOT_FOUND);
    CHECK(strcmp(r.message, "no such row \xE2\x9C\x93") == 0); /* percent-decoded */
    CHECK(r.reply_len == 0);
    call_sync(c, "/t/Nope", "x", 1, 5, &r);
    CHECK(r.status == GRPC_UNIMPLEMENTED && strcmp(r.message, "unknown method") == 0);
    {
        static const struct {
            uint32_t code;
            enum grpc_status want;
        } http[] = {{503, GRPC_UNAVAILABLE},     {404, GRPC_UNIMPLEMENTED},
                    {401, GRPC_UNAUTHENTICATED}, {403, GRPC_PERMISSION_DENIED},
                    {400, GRPC_INTERNAL},        {429, GRPC_UNAVAILABLE},
                    {502, GRPC_UNAVAILABLE},     {504, GRPC_UNAVAILABLE},
                    {302, GRPC_UNKNOWN}},
          rst[] = {{NGHTTP2_INTERNAL_ERROR, GRPC_INTERNAL},
                   {NGHTTP2_CANCEL, GRPC_CANCELLED},
                   {NGHTTP2_ENHANCE_YOUR_CALM, GRPC_RESOURCE_EXHAUSTED},
                   {NGHTTP2_INADEQUATE_SECURITY, GRPC_PERMISSION_DENIED}};
        uint8_t req[8];
        for (size_t i = 0; i < ARRAY_LEN(http); i++) {
            req_u32s(req, http[i].code, 0);
            call_sync(c, "/t/Http", req, 8, 5, &r);
            CHECK(r.status == http[i].want && strstr(r.message, "HTTP status"));
        }
        for (size_t i = 0; i < ARRAY_LEN(rst); i++) {
            req_u32s(req, rst[i].code, 0);
            call_sync(c, "/t/Reset", req, 8, 5, &r);
            CHECK(r.status == rst[i].want && strstr(r.message, "stream reset by server"));
        }
        /* a refused stream is retried once, then reported */
        req_u32s(req, NGHTTP2_REFUSED_STREAM, 0);
        call_sync(c, "/t/Reset", req, 8, 5, &r);
        CHECK(r.status == GRPC_UNAVAILABLE && strstr(r.message, "stream reset by server"));
    }
    call_sync(c, "/t/BadStatus", "x", 1, 5, &r);
    CHECK(r.status == GRPC_UNKNOWN);
    CHECK(s.accepts == 1);
    h2client_free(c);
    tsrv_stop(&s);
}

TEST(test_bad_responses)
{
    struct tsrv s;
    struct states st = {0};
    struct result r;
    struct h2client *c;
    uint8_t req[8];

    REQUIRE(tsrv_start(&s, 0) == 0);
    c = client_connected(&s, &st);
    REQUIRE(c);
    call_sync(c, "/t/Two", "", 0, 5, &r);
    CHECK(r.status == GRPC_INTERNAL && strstr(r.message, "more than one"));
    call_sync(c, "/t/Compressed", "", 0, 5, &r);
    CHECK(r.status == GRPC_INTERNAL && strstr(r.message, "compressed"));
    call_sync(c, "/t/Partial", "", 0, 5, &r);
    CHECK(r.status == GRPC_INTERNAL && strstr(r.message, "inside a message"));
    call_sync(c, "/t/NoStatus", "", 0, 5, &r);
    CHECK(r.status == GRPC_INTERNAL && strstr(r.message, "without grpc-status"));
    call_sync(c, "/t/Empty", "", 0, 5, &r);
    CHECK(r.status == GRPC_INTERNAL && strstr(r.message, "without a message"));
    /* larger than max_message (16 MiB default): refused, stream reset */
    req_u32s(req, (16u << 20) + 1, 0);
    call_sync(c, "/t/Big", req, 8, 10, &r);
    CHECK(r.status == GRPC_RESOURCE_EXHAUSTED);
    /* the connection survives all of that */
    call_sync(c, "/t/Echo", "ok", 2, 5, &r);
    CHECK(r.status == GRPC_OK);
    CHECK(s.accepts == 1);
    h2client_free(c);
    tsrv_stop(&s);
}

TEST(test_max_message)
{
    struct tsrv s;
    struct h2client_config cfg = {.max_message = 1000};
    struct h2client *c;
    struct result r;
    uint8_t req[8];

    REQUIRE(tsrv_start(&s, 0) == 0);
    cfg.url = url_for(&s, "http");
    REQUIRE(h2client_new(loop, &cfg, &c) == 0);
    req_u32s(req, 1000, 0);
    call_sync(c, "/t/Big", req, 8, 5, &r);
    CHECK(r.status == GRPC_OK && r.reply_len == 1000);
    req_u32s(req, 1001, 0);
    call_sync(c, "/t/Big", req, 8, 5, &r);
    CHECK(r.status == GRPC_RESOURCE_EXHAUSTED && strstr(r.message, "1000"));
    call_sync(c, "/t/Echo", (const uint8_t *)"still up", 8, 5, &r);
    CHECK(r.status == GRPC_OK);
    h2client_free(c);
    tsrv_stop(&s);
}

/* Responses written one byte per loop pass: every decoder sees 1-byte chunks. */
TEST(test_trickle)
{
    struct tsrv s;
    struct states st = {0};
    struct result r;
    struct h2client *c;

    REQUIRE(tsrv_start(&s, 0) == 0);
    s.trickle = 1;
    c = client_connected(&s, &st);
    REQUIRE(c);
    call_sync(c, "/t/Echo", "byte by byte", 12, 10, &r);
    CHECK(r.status == GRPC_OK && r.reply_len == 12 && memcmp(r.reply, "byte by byte", 12) == 0);
    call_sync(c, "/t/Fail", "", 0, 10, &r);
    CHECK(r.status == GRPC_NOT_FOUND);
    h2client_free(c);
    tsrv_stop(&s);
}

static int free_port(void)
{
    struct tsrv s;
    int port;

    if (tsrv_start(&s, 0) != 0)
        return -1;
    port = s.port;
    tsrv_stop(&s);
    return port;
}

TEST(test_refused_then_reconnect)
{
    struct tsrv s;
    struct states st = {0};
    struct result r1, r2, r3;
    struct h2client *c;
    int port = free_port();

    REQUIRE(port > 0);
    s.port = port;
    c = client_for(&s, &st);
    REQUIRE(c);
    /* waits for the first attempt, which is refused */
    call_sync(c, "/t/Echo", "a", 1, 5, &r1);
    CHECK(r1.calls == 1 && r1.status == GRPC_UNAVAILABLE);
    CHECK(strstr(r1.message, "refused") != NULL);
    CHECK(RUN_UNTIL(st.seen[H2CLIENT_DISCONNECTED] >= 2, 5)); /* it keeps retrying */
    /* while disconnected: fails fast */
    if (h2client_state(c) == H2CLIENT_DISCONNECTED) {
        call_sync(c, "/t/Echo", "b", 1, 5, &r2);
        CHECK(r2.status == GRPC_UNAVAILABLE && strstr(r2.message, "not connected"));
    }
    REQUIRE(tsrv_start(&s, port) == 0);
    CHECK(RUN_UNTIL(h2client_state(c) == H2CLIENT_CONNECTED, 5));
    call_sync(c, "/t/Echo", "c", 1, 5, &r3);
    CHECK(r3.status == GRPC_OK && r3.reply_len == 1 && r3.reply[0] == 'c');
    CHECK(st.last == H2CLIENT_CONNECTED);
    h2client_free(c);
    tsrv_stop(&s);
}

TEST(test_deadline)
{
    struct tsrv s;
    struct states st = {0};
    struct result r;
    struct h2client *c;
    int64_t t0;
    long ms;

    REQUIRE(tsrv_start(&s, 0) == 0);
    c = client_connected(&s, &st);
    REQUIRE(c);
    t0 = mono_us();
    call_sync(c, "/t/Slow", "", 0, 0.1, &r);
    CHECK(r.calls == 1 && r.status == GRPC_DEADLINE_EXCEEDED);
    CHECK(mono_us() - t0 >= 90000);
    CHECK(RUN_UNTIL(s.rst_cancel == 1, 5)); /* RST_STREAM reached the server */
    /* the deadline travels as grpc-timeout */
    call_sync(c, "/t/Timeout", "", 0, 2.0, &r);
    CHECK(r.status == GRPC_OK && r.reply_len > 1 && r.reply[r.reply_len - 1] == 'm');
    r.reply[r.reply_len] = '\0';
    ms = atol(r.reply);
    CHECK(ms > 1800 && ms <= 2001);
    call_sync(c, "/t/Timeout", "", 0, 1e6, &r); /* too many ms for 8 digits: seconds */
    CHECK(r.status == GRPC_OK && r.reply_len == 8 && memcmp(r.reply, "1000001S", 8) == 0);
    call_sync(c, "/t/Timeout", "", 0, 0, &r);
    CHECK(r.status == GRPC_OK && r.reply_len == 0); /* no deadline, no header */
    /* the connection is still fine */
    call_sync(c, "/t/Echo", "z", 1, 5, &r);
    CHECK(r.status == GRPC_OK);
    h2client_free(c);
    tsrv_stop(&s);
}

TEST(test_deadline_while_connecting)
{
    struct tsrv s;
    struct h2client_config cfg = {.connect_timeout = 5};
    struct h2client *c;
    struct result r;

    REQUIRE(tsrv_start(&s, 0) == 0);
    s.mode = SRV_SILENT; /* TCP accepted, no SETTINGS ever */
    cfg.url = url_for(&s, "http");
    REQUIRE(h2client_new(loop, &cfg, &c) == 0);
    call_sync(c, "/t/Echo", "", 0, 0.1, &r);
    CHECK(r.status == GRPC_DEADLINE_EXCEEDED);
    CHECK(h2client_state(c) == H2CLIENT_CONNECTING);
    memset(&r, 0, sizeof(r));
    h2client_unary(c, "/t/Echo", NULL, 0, 0, reply_cb, &r);
    h2client_free(c);
    CHECK(r.calls == 1 && r.status == GRPC_CANCELLED);
    tsrv_stop(&s);
}

TEST(test_connect_timeout)
{
    struct tsrv s;
    struct states st = {0};
    struct h2client_config cfg = {.connect_timeout = 0.2, .on_state = state_cb, .arg = &st};
    struct h2client *c;
    struct result r;

    REQUIRE(tsrv_start(&s, 0) == 0);
    s.mode = SRV_SILENT;
    cfg.url = url_for(&s, "http");
    REQUIRE(h2client_new(loop, &cfg, &c) == 0);
    call_sync(c, "/t/Echo", "", 0, 5, &r);
    CHECK(r.status == GRPC_UNAVAILABLE && strstr(r.message, "timed out"));
    CHECK(st.seen[H2CLIENT_CONNECTED] == 0);
    h2client_free(c);
    tsrv_stop(&s);
}

struct stream_rec {
    uint32_t count;
    uint32_t bad;
    size_t bytes;
    int ends;
    int msgs_after_end;
    enum grpc_status status;
    char message[128];
    struct h2client *free_me; /* free the client from on_message at this count */
    uint32_t free_at;
};

static void stream_msg_cb(void *arg, const uint8_t *msg, size_t len)
{
    struct stream_rec *sr = arg;

    if (sr->ends)
        sr->msgs_after_end++;
    if (len < 4 || get_be32(msg) != sr->count)
        sr->bad++;
    sr->count++;
    sr->bytes += len;
    if (sr->free_me && sr->count == sr->free_at)
        h2client_free(sr->free_me);
}

static void stream_end_cb(void *arg, enum grpc_status status, const char *message)
{
    struct stream_rec *sr = arg;

    sr->ends++;
    sr->status = status;
    snprintf(sr->message, sizeof(sr->message), "%s", message ? message : "");
}

TEST(test_stream_many)
{
    struct tsrv s;
    struct states st = {0};
    struct stream_rec sr = {0};
    struct h2client *c;
    uint8_t req[8];
    const uint32_t n = 40000, size = 1000; /* 40 MB: more than both windows */

    REQUIRE(tsrv_start(&s, 0) == 0);
    c = client_connected(&s, &st);
    REQUIRE(c);
    req_u32s(req, n, size);
    CHECK(h2client_stream(c, "/t/Stream", req, 8, 60, stream_msg_cb, stream_end_cb, &sr) != 0);
    CHECK(RUN_UNTIL(sr.ends == 1, 60));
    CHECK(sr.count == n);
    CHECK(sr.bad == 0);
    CHECK(sr.bytes == (size_t)n * size);
    CHECK(sr.status == GRPC_OK);
    CHECK(sr.msgs_after_end == 0);
    /* a stream with no messages */
    memset(&sr, 0, sizeof(sr));
    req_u32s(req, 0, 4);
    h2client_stream(c, "/t/Stream", req, 8, 5, stream_msg_cb, stream_end_cb, &sr);
    CHECK(RUN_UNTIL(sr.ends == 1, 5));
    CHECK(sr.count == 0 && sr.status == GRPC_OK);
    h2client_free(c);
    tsrv_stop(&s);
}

TEST(test_stream_deadline_and_cancel)
{
    struct tsrv s;
    struct states st = {0};
    struct stream_rec a = {0}, b = {0};
    struct h2client *c;
    uint8_t req[8];
    uint64_t id;

    REQUIRE(tsrv_start(&s, 0) == 0);
    c = client_connected(&s, &st);
    REQUIRE(c);
    req_u32s(req, 3, 16);
    h2client_stream(c, "/t/StreamStall", req, 8, 0.2, stream_msg_cb, stream_end_cb, &a);
    CHECK(RUN_UNTIL(a.ends == 1, 5));
    CHECK(a.count == 3 && a.status == GRPC_DEADLINE_EXCEEDED);
    id = h2client_stream(c, "/t/StreamStall", req, 8, 0, stream_msg_cb, stream_end_cb, &b);
    CHECK(RUN_UNTIL(b.count == 3, 5));
    CHECK(h2client_cancel(c, id) == 0);
    CHECK(h2client_cancel(c, id) == H2CLIENT_ERR_NO_CALL);
    CHECK(b.ends == 0); /* never from inside the API call */
    CHECK(RUN_UNTIL(b.ends == 1, 5));
    CHECK(b.status == GRPC_CANCELLED && b.msgs_after_end == 0);
    CHECK(RUN_UNTIL(s.rst_cancel == 2, 5));
    CHECK(h2client_cancel(c, 999999) == H2CLIENT_ERR_NO_CALL);
    h2client_free(c);
    tsrv_stop(&s);
}

TEST(test_server_closes_mid_call)
{
    struct tsrv s;
    struct states st = {0};
    struct result r, slow;
    struct h2client *c;

    REQUIRE(tsrv_start(&s, 0) == 0);
    c = client_connected(&s, &st);
    REQUIRE(c);
    memset(&slow, 0, sizeof(slow));
    h2client_unary(c, "/t/Slow", (const uint8_t *)"", 0, 10, reply_cb, &slow);
    call_sync(c, "/t/Close", "", 0, 5, &r);
    CHECK(r.calls == 1 && r.status == GRPC_UNAVAILABLE && strstr(r.message, "connection lost"));
    CHECK(RUN_UNTIL(slow.calls == 1, 5));
    CHECK(slow.status == GRPC_UNAVAILABLE);
    CHECK(st.seen[H2CLIENT_DISCONNECTED] >= 1);
    /* it reconnects on its own */
    CHECK(RUN_UNTIL(h2client_state(c) == H2CLIENT_CONNECTED, 5));
    call_sync(c, "/t/Echo", "again", 5, 5, &r);
    CHECK(r.status == GRPC_OK && r.reply_len == 5);
    CHECK(s.accepts == 2);
    /* a stream cut by a dying server */
    {
        struct stream_rec sr = {0};
        uint8_t req[8];
        req_u32s(req, 2, 8);
        h2client_stream(c, "/t/StreamStall", req, 8, 10, stream_msg_cb, stream_end_cb, &sr);
        CHECK(RUN_UNTIL(sr.count == 2, 5));
        s.abortive = 1; /* TCP RST: the read fails with ECONNRESET */
        tsrv_drop_conns(&s);
        s.abortive = 0;
        CHECK(RUN_UNTIL(sr.ends == 1, 5));
        CHECK(sr.status == GRPC_UNAVAILABLE && strstr(sr.message, "connection lost"));
    }
    h2client_free(c);
    tsrv_stop(&s);
}

TEST(test_garbage)
{
    struct tsrv s;
    struct states st = {0};
    struct result r;
    struct h2client *c;

    /* a server that is not HTTP/2 at all */
    REQUIRE(tsrv_start(&s, 0) == 0);
    s.mode = SRV_GARBAGE;
    c = client_for(&s, &st);
    REQUIRE(c);
    call_sync(c, "/t/Echo", "", 0, 5, &r);
    CHECK(r.status == GRPC_UNAVAILABLE);
    CHECK(st.seen[H2CLIENT_CONNECTED] == 0);
    CHECK(RUN_UNTIL(s.accepts >= 2, 5)); /* it retries */
    s.mode = SRV_H2;
    CHECK(RUN_UNTIL(h2client_state(c) == H2CLIENT_CONNECTED, 5));
    /* garbage in the middle of a working connection */
    call_sync(c, "/t/Garbage", "", 0, 5, &r);
    CHECK(r.status == GRPC_UNAVAILABLE);
    CHECK(RUN_UNTIL(h2client_state(c) == H2CLIENT_CONNECTED, 5));
    call_sync(c, "/t/PingFlood", "", 0, 5, &r);
    CHECK(r.status == GRPC_UNAVAILABLE && strstr(r.message, "HTTP/2 error"));
    CHECK(RUN_UNTIL(h2client_state(c) == H2CLIENT_CONNECTED, 5));
    call_sync(c, "/t/Echo", "ok", 2, 5, &r);
    CHECK(r.status == GRPC_OK);
    h2client_free(c);
    tsrv_stop(&s);
}

TEST(test_refused_stream_is_retried)
{
    struct tsrv s;
    struct states st = {0};
    struct result r;
    struct h2client *c;

    REQUIRE(tsrv_start(&s, 0) == 0);
    c = client_connected(&s, &st);
    REQUIRE(c);
    call_sync(c, "/t/Refuse", "once", 4, 5, &r);
    CHECK(r.status == GRPC_OK && r.reply_len == 4);
    CHECK(s.refused == 2);
    h2client_free(c);
    tsrv_stop(&s);
}

TEST(test_goaway)
{
    struct tsrv s;
    struct states st = {0};
    struct result r;
    struct h2client *c;

    REQUIRE(tsrv_start(&s, 0) == 0);
    c = client_connected(&s, &st);
    REQUIRE(c);
    call_sync(c, "/t/Goaway", "bye", 3, 5, &r);
    CHECK(r.status == GRPC_OK && r.reply_len == 3); /* the stream below last-stream-id finishes */
    CHECK(RUN_UNTIL(s.accepts == 2 && h2client_state(c) == H2CLIENT_CONNECTED, 5));
    call_sync(c, "/t/Echo", "hi", 2, 5, &r);
    CHECK(r.status == GRPC_OK);
    h2client_free(c);
    tsrv_stop(&s);
}

TEST(test_auth_header)
{
    struct tsrv s;
    struct h2client_config cfg = {.auth_token = "s3cret"};
    struct h2client *c;
    struct result r;

    REQUIRE(tsrv_start(&s, 0) == 0);
    cfg.url = url_for(&s, "http");
    REQUIRE(h2client_new(loop, &cfg, &c) == 0);
    call_sync(c, "/t/Auth", "", 0, 5, &r);
    CHECK(r.status == GRPC_OK && r.reply_len == 13 && memcmp(r.reply, "Bearer s3cret", 13) == 0);
    h2client_free(c);
    /* without a token: no header */
    cfg.auth_token = NULL;
    REQUIRE(h2client_new(loop, &cfg, &c) == 0);
    call_sync(c, "/t/Auth", "", 0, 5, &r);
    CHECK(r.status == GRPC_OK && r.reply_len == 0);
    h2client_free(c);
    tsrv_stop(&s);
}

TEST(test_free_cancels_pending)
{
    struct tsrv s;
    struct states st = {0};
    struct result r[3];
    struct h2client *c;

    REQUIRE(tsrv_start(&s, 0) == 0);
    c = client_connected(&s, &st);
    REQUIRE(c);
    memset(r, 0, sizeof(r));
    h2client_unary(c, "/t/Slow", (const uint8_t *)"", 0, 10, reply_cb, &r[0]);
    h2client_unary(c, "/t/Slow", (const uint8_t *)"", 0, 0, reply_cb, &r[1]);
    RUN_UNTIL(0, 0.05); /* let them go out */
    h2client_unary(c, "/t/Slow", (const uint8_t *)"", 0, 0, reply_cb,
                   &r[2]); /* still waiting to go */
    CHECK(h2client_pending(c) == 3);
    h2client_free(c);
    for (int i = 0; i < 3; i++)
        CHECK(r[i].calls == 1 && r[i].status == GRPC_CANCELLED);
    CHECK(RUN_UNTIL(tsrv_open_conns(&s) == 0, 5)); /* the socket was closed */
    h2client_free(NULL);
    tsrv_stop(&s);
}

struct free_in_cb {
    struct h2client *c;
    struct result first, second, third;
};

static void free_in_reply_cb(void *arg, enum grpc_status status, const char *message,
                             const uint8_t *reply, size_t len)
{
    struct free_in_cb *f = arg;

    reply_cb(&f->first, status, message, reply, len);
    h2client_free(f->c);
    /* calls started after the free are cancelled, not lost */
    h2client_unary(f->c, "/t/Echo", (const uint8_t *)"", 0, 1, reply_cb, &f->third);
}

TEST(test_free_inside_callback)
{
    struct tsrv s;
    struct states st = {0};
    struct free_in_cb f;
    struct stream_rec sr = {0};
    uint8_t req[8];

    REQUIRE(tsrv_start(&s, 0) == 0);
    memset(&f, 0, sizeof(f));
    f.c = client_connected(&s, &st);
    REQUIRE(f.c);
    h2client_unary(f.c, "/t/Slow", (const uint8_t *)"", 0, 0, reply_cb, &f.second);
    h2client_unary(f.c, "/t/Echo", (const uint8_t *)"x", 1, 5, free_in_reply_cb, &f);
    CHECK(RUN_UNTIL(f.first.calls == 1, 5));
    CHECK(f.first.status == GRPC_OK);
    CHECK(f.second.calls == 1 && f.second.status == GRPC_CANCELLED);
    CHECK(f.third.calls == 1 && f.third.status == GRPC_CANCELLED);
    /* and from on_message, in the middle of a big read */
    sr.free_me = client_connected(&s, &st);
    REQUIRE(sr.free_me);
    sr.free_at = 10;
    req_u32s(req, 5000, 100);
    h2client_stream(sr.free_me, "/t/Stream", req, 8, 10, stream_msg_cb, stream_end_cb, &sr);
    CHECK(RUN_UNTIL(sr.ends == 1, 5));
    CHECK(sr.count == 10 && sr.status == GRPC_CANCELLED);
    tsrv_stop(&s);
}

/* The server stops reading: the client's writes block, its output waits for
 * writability, and everything goes through once the server reads again. */
static void blocked_writes(struct tsrv *s, struct h2client *c)
{
    size_t big = 8u << 20;
    uint8_t *m = xcalloc(1, big);
    struct result r = {0}, small = {0};

    m[0] = 1;
    m[big - 1] = 2;
    s->paused = 1;
    h2client_unary(c, "/t/Echo", m, big, 30, reply_cb, &r);
    h2client_unary(c, "/t/Echo", (const uint8_t *)"after", 5, 30, reply_cb, &small);
    RUN_UNTIL(0, 0.2);
    CHECK(r.calls == 0 && small.calls == 0);
    tsrv_resume(s);
    CHECK(RUN_UNTIL(r.calls == 1 && small.calls == 1, 30));
    CHECK(r.status == GRPC_OK && r.reply_len == big && r.reply[0] == 1);
    CHECK(small.status == GRPC_OK && small.reply_len == 5);
    free(m);
}

TEST(test_blocked_writes)
{
    struct tsrv s;
    struct states st = {0};
    struct h2client *c;

    REQUIRE(tsrv_start(&s, 0) == 0);
    c = client_connected(&s, &st);
    REQUIRE(c);
    blocked_writes(&s, c);
    h2client_free(c);
    tsrv_stop(&s);
}

/* After a connection that stayed up, the next attempt is immediate (the
 * configured 5 s backoff would fail this test). */
TEST(test_stable_connection_reconnects_at_once)
{
    struct tsrv s;
    struct states st = {0};
    struct h2client_config cfg = {.backoff_initial = 5, .on_state = state_cb, .arg = &st};
    struct h2client *c;
    struct result r;

    REQUIRE(tsrv_start(&s, 0) == 0);
    cfg.url = url_for(&s, "http");
    REQUIRE(h2client_new(loop, &cfg, &c) == 0);
    REQUIRE(RUN_UNTIL(h2client_state(c) == H2CLIENT_CONNECTED, 5));
    RUN_UNTIL(0, 1.1);
    tsrv_drop_conns(&s);
    CHECK(RUN_UNTIL(st.seen[H2CLIENT_DISCONNECTED] == 1, 5));
    CHECK(RUN_UNTIL(h2client_state(c) == H2CLIENT_CONNECTED, 1));
    call_sync(c, "/t/Echo", (const uint8_t *)"x", 1, 5, &r);
    CHECK(r.status == GRPC_OK);
    h2client_free(c);
    tsrv_stop(&s);
}

struct free_in_batch {
    struct h2client *c;
    struct result a, b, late;
};

static void free_first_cb(void *arg, enum grpc_status status, const char *message,
                          const uint8_t *reply, size_t len)
{
    struct free_in_batch *f = arg;

    reply_cb(&f->a, status, message, reply, len);
    h2client_free(f->c);
    h2client_unary(f->c, "/t/Echo", NULL, 0, 1, reply_cb, &f->late);
}

/* Two calls end together; the first callback frees the client. */
TEST(test_free_in_batch)
{
    struct free_in_batch f;
    struct h2client_config cfg = {.url = "http://127.0.0.1:1", .backoff_initial = 5};

    memset(&f, 0, sizeof(f));
    REQUIRE(h2client_new(loop, &cfg, &f.c) == 0);
    REQUIRE(RUN_UNTIL(h2client_state(f.c) == H2CLIENT_DISCONNECTED, 5));
    h2client_unary(f.c, "/t/Echo", NULL, 0, 1, free_first_cb, &f);
    h2client_unary(f.c, "/t/Echo", NULL, 0, 1, reply_cb, &f.b);
    CHECK(RUN_UNTIL(f.a.calls == 1, 5));
    CHECK(f.a.status == GRPC_UNAVAILABLE);
    CHECK(f.b.calls == 1 && f.b.status == GRPC_UNAVAILABLE); /* its outcome was known */
    CHECK(f.late.calls == 1 && f.late.status == GRPC_CANCELLED);
}

struct retry_storm {
    struct h2client *c;
    int calls;
};

static void retry_cb(void *arg, enum grpc_status status, const char *message, const uint8_t *reply,
                     size_t len)
{
    struct retry_storm *rs = arg;

    (void)status;
    (void)message;
    (void)reply;
    (void)len;
    if (++rs->calls < 1000)
        h2client_unary(rs->c, "/t/Echo", (const uint8_t *)"", 0, 1, retry_cb, rs);
}

/* A caller that retries at once from its callback must not stall the loop. */
TEST(test_retry_from_callback_yields)
{
    struct retry_storm rs = {0};
    struct h2client_config cfg = {.url = "http://127.0.0.1:1", .backoff_initial = 5};
    int ticks = 0;
    ev_timer t;

    REQUIRE(h2client_new(loop, &cfg, &rs.c) == 0);
    h2client_unary(rs.c, "/t/Echo", (const uint8_t *)"", 0, 1, retry_cb, &rs);
    ev_timer_init(&t, tick_cb, 0., 0.);
    while (rs.calls < 1000 && ticks < 5000) {
        ev_timer_start(loop, &t);
        ev_run(loop, EVRUN_ONCE);
        ticks++;
    }
    CHECK(rs.calls == 1000);
    CHECK(ticks > 100); /* one batch per loop pass */
    h2client_free(rs.c);
}

TEST(test_bad_urls)
{
    const char *bad[] = {"ftp://h:1",
                         "http://",
                         "http://h:99999",
                         "http://h:0",
                         "http://h/x",
                         "http://h:x",
                         "http://[::1",
                         "http://a[b]",
                         "http://[::1]x:1",
                         "http://[]",
                         "https://127.0.0.1:1",
                         "http://::1:80",
                         NULL};
    struct h2client *c = NULL;

    for (int i = 0; bad[i]; i++) {
        struct h2client_config cfg = {.url = bad[i]};
        CHECK(h2client_new(loop, &cfg, &c) == H2CLIENT_ERR_URL);
    }
    {
        struct h2client_config cfg = {.url = NULL};
        CHECK(h2client_new(loop, &cfg, &c) == H2CLIENT_ERR_URL);
    }
    /* host without port, [v6] forms, trailing slash: accepted */
    const char *good[] = {"http://localhost/", "http://[::1]:1", "http://[::1]", NULL};
    for (int i = 0; good[i]; i++) {
        struct h2client_config cfg = {.url = good[i], .backoff_initial = 5};
        c = NULL;
        CHECK(h2client_new(loop, &cfg, &c) == 0);
        h2client_free(c);
    }
    CHECK(strcmp(h2client_state_name(H2CLIENT_CONNECTED), "CONNECTED") == 0);
    CHECK(strcmp(h2client_state_name(H2CLIENT_DISCONNECTED), "DISCONNECTED") == 0);
    CHECK(strcmp(h2client_state_name(H2CLIENT_CONNECTING), "CONNECTING") == 0);
}

TEST(test_resolve_failure)
{
    struct states st = {0};
    struct h2client_config cfg = {.on_state = state_cb, .arg = &st, .backoff_initial = 5};
    struct h2client *c;
    struct result r;
    char url[128];

    /* A DNS label longer than 63 bytes fails inside the resolver library,
     * before any query leaves the machine. */
    snprintf(url, sizeof(url), "http://%070d.test:1", 0);
    cfg.url = url;
    REQUIRE(h2client_new(loop, &cfg, &c) == 0);
    CHECK(h2client_state(c) == H2CLIENT_DISCONNECTED); /* failed inside h2client_new */
    call_sync(c, "/t/Echo", "", 0, 1, &r);
    CHECK(r.status == GRPC_UNAVAILABLE && strstr(r.message, "resolve"));
    CHECK(RUN_UNTIL(st.seen[H2CLIENT_DISCONNECTED] == 1, 1));
    h2client_free(c);
}

/* ---- TLS ---------------------------------------------------------------------------*/

static char tls_dir[64];

/* A self-signed certificate for 127.0.0.1 and localhost, written as
 * DIR/NAME.crt and DIR/NAME.key. */
static int make_cert(const char *name)
{
    char path[128];
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_NAME *n;
    X509V3_CTX v3;
    X509_EXTENSION *ext;
    FILE *f;
    int ok;

    if (!key || !x)
        return -1;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, key);
    n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)name, -1, -1, 0);
    X509_set_issuer_name(x, n);
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "IP:127.0.0.1,DNS:localhost");
    ok = ext && X509_add_ext(x, ext, -1) == 1 && X509_sign(x, key, EVP_sha256()) > 0;
    X509_EXTENSION_free(ext);
    snprintf(path, sizeof(path), "%s/%s.crt", tls_dir, name);
    if (ok && (f = fopen(path, "w"))) {
        ok = PEM_write_X509(f, x) == 1;
        ok = fclose(f) == 0 && ok;
    }
    snprintf(path, sizeof(path), "%s/%s.key", tls_dir, name);
    if (ok && (f = fopen(path, "w"))) {
        ok = PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) == 1;
        ok = fclose(f) == 0 && ok;
    }
    X509_free(x);
    EVP_PKEY_free(key);
    return ok ? 0 : -1;
}

static void tls_path(char *out, size_t len, const char *name, const char *ext)
{
    snprintf(out, len, "%s/%s.%s", tls_dir, name, ext);
}

static SSL_CTX *server_tls(const char *name)
{
    char crt[128], key[128];
    SSL_CTX *ctx = NULL;

    tls_path(crt, sizeof(crt), name, "crt");
    tls_path(key, sizeof(key), name, "key");
    return tls_server_ctx(crt, key, NULL, &ctx) == 0 ? ctx : NULL;
}

static SSL_CTX *client_tls(const char *ca_name)
{
    char crt[128];
    SSL_CTX *ctx = NULL;

    tls_path(crt, sizeof(crt), ca_name, "crt");
    return tls_client_ctx(crt, NULL, NULL, &ctx) == 0 ? ctx : NULL;
}

static struct h2client *tls_client(const struct tsrv *s, SSL_CTX *ctx, struct states *st)
{
    struct h2client_config cfg = {.url = url_for(s, "https"),
                                  .tls = ctx,
                                  .on_state = state_cb,
                                  .arg = st,
                                  .backoff_initial = 0.01,
                                  .backoff_max = 0.05};
    struct h2client *c = NULL;

    return h2client_new(loop, &cfg, &c) == 0 ? c : NULL;
}

TEST(test_tls)
{
    struct tsrv s;
    struct states st = {0};
    struct stream_rec sr = {0};
    struct result r;
    struct h2client *c;
    SSL_CTX *sctx = server_tls("good"), *cctx = client_tls("good");
    uint8_t req[8];

    REQUIRE(sctx && cctx);
    REQUIRE(tsrv_start(&s, 0) == 0);
    s.tls = sctx;
    c = tls_client(&s, cctx, &st);
    REQUIRE(c);
    call_sync(c, "/t/Echo", (const uint8_t *)"over tls", 8, 5, &r);
    CHECK(r.status == GRPC_OK && r.reply_len == 8 && memcmp(r.reply, "over tls", 8) == 0);
    /* enough data to fill socket buffers: WANT_READ/WANT_WRITE on both sides */
    req_u32s(req, 20000, 1000);
    h2client_stream(c, "/t/Stream", req, 8, 60, stream_msg_cb, stream_end_cb, &sr);
    CHECK(RUN_UNTIL(sr.ends == 1, 60));
    CHECK(sr.count == 20000 && sr.bad == 0 && sr.status == GRPC_OK);
    /* a big request: the client's writes block too */
    {
        size_t big = 4u << 20;
        uint8_t *m = xcalloc(1, big);
        m[big - 1] = 7;
        memset(&r, 0, sizeof(r));
        h2client_unary(c, "/t/Echo", m, big, 30, reply_cb, &r);
        CHECK(RUN_UNTIL(r.calls == 1, 30));
        CHECK(r.status == GRPC_OK && r.reply_len == big);
        free(m);
    }
    blocked_writes(&s, c);
    /* TLS records cut into single bytes */
    s.trickle = 1;
    call_sync(c, "/t/Echo", (const uint8_t *)"slowly", 6, 10, &r);
    CHECK(r.status == GRPC_OK && r.reply_len == 6);
    s.trickle = 0;
    /* the server dies: UNAVAILABLE, then a new handshake */
    memset(&r, 0, sizeof(r));
    h2client_unary(c, "/t/Slow", NULL, 0, 10, reply_cb, &r);
    RUN_UNTIL(0, 0.05);
    tsrv_drop_conns(&s);
    CHECK(RUN_UNTIL(r.calls == 1, 5) && r.status == GRPC_UNAVAILABLE);
    CHECK(RUN_UNTIL(h2client_state(c) == H2CLIENT_CONNECTED, 5));
    call_sync(c, "/t/Echo", (const uint8_t *)"back", 4, 5, &r);
    CHECK(r.status == GRPC_OK);
    /* and once more, with a TCP RST instead of close_notify */
    memset(&r, 0, sizeof(r));
    h2client_unary(c, "/t/Slow", NULL, 0, 10, reply_cb, &r);
    RUN_UNTIL(0, 0.05);
    s.abortive = 1;
    tsrv_drop_conns(&s);
    s.abortive = 0;
    CHECK(RUN_UNTIL(r.calls == 1, 5) && r.status == GRPC_UNAVAILABLE);
    CHECK(strstr(r.message, "TLS read failed"));
    h2client_free(c);
    tsrv_stop(&s);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

TEST(test_tls_failures)
{
    struct tsrv s;
    struct states st = {0};
    struct result r;
    struct h2client *c;
    SSL_CTX *sctx = server_tls("good"), *wrong = client_tls("other");
    SSL_CTX *cctx = client_tls("good"), *no_alpn = SSL_CTX_new(TLS_server_method());
    char crt[128], key[128];

    REQUIRE(sctx && wrong && cctx && no_alpn);
    REQUIRE(tsrv_start(&s, 0) == 0);
    /* a certificate from someone else */
    s.tls = sctx;
    c = tls_client(&s, wrong, &st);
    REQUIRE(c);
    call_sync(c, "/t/Echo", NULL, 0, 5, &r);
    CHECK(r.status == GRPC_UNAVAILABLE && strstr(r.message, "certificate verify failed"));
    h2client_free(c);
    /* a server that does not speak h2 */
    tls_path(crt, sizeof(crt), "good", "crt");
    tls_path(key, sizeof(key), "good", "key");
    REQUIRE(SSL_CTX_use_certificate_chain_file(no_alpn, crt) == 1);
    REQUIRE(SSL_CTX_use_PrivateKey_file(no_alpn, key, SSL_FILETYPE_PEM) == 1);
    s.tls = no_alpn;
    c = tls_client(&s, cctx, &st);
    REQUIRE(c);
    call_sync(c, "/t/Echo", NULL, 0, 5, &r);
    CHECK(r.status == GRPC_UNAVAILABLE && strstr(r.message, "ALPN"));
    h2client_free(c);
    /* plain HTTP/2 on a TLS client */
    s.tls = NULL;
    c = tls_client(&s, cctx, &st);
    REQUIRE(c);
    call_sync(c, "/t/Echo", NULL, 0, 5, &r);
    CHECK(r.status == GRPC_UNAVAILABLE && strstr(r.message, "TLS handshake failed"));
    h2client_free(c);
    tsrv_stop(&s);
    SSL_CTX_free(sctx);
    SSL_CTX_free(wrong);
    SSL_CTX_free(cctx);
    SSL_CTX_free(no_alpn);
}

static void tls_cleanup(void)
{
    const char *names[] = {"good.crt", "good.key", "other.crt", "other.key"};
    char path[128];

    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        snprintf(path, sizeof(path), "%s/%s", tls_dir, names[i]);
        unlink(path);
    }
    rmdir(tls_dir);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_level = getenv("H2CLIENT_TEST_DEBUG") ? LOGL_DEBUG : LOGL_ERROR;
    loop = ev_default_loop(0);
    RUN(test_unary_ok);
    RUN(test_many_concurrent);
    RUN(test_server_error_status);
    RUN(test_bad_responses);
    RUN(test_max_message);
    RUN(test_trickle);
    RUN(test_refused_then_reconnect);
    RUN(test_deadline);
    RUN(test_deadline_while_connecting);
    RUN(test_connect_timeout);
    RUN(test_stream_many);
    RUN(test_stream_deadline_and_cancel);
    RUN(test_server_closes_mid_call);
    RUN(test_garbage);
    RUN(test_refused_stream_is_retried);
    RUN(test_goaway);
    RUN(test_auth_header);
    RUN(test_free_cancels_pending);
    RUN(test_free_inside_callback);
    RUN(test_blocked_writes);
    RUN(test_stable_connection_reconnects_at_once);
    RUN(test_free_in_batch);
    RUN(test_retry_from_callback_yields);
    RUN(test_bad_urls);
    RUN(test_resolve_failure);
    snprintf(tls_dir, sizeof(tls_dir), "/tmp/test_h2client.XXXXXX");
    if (mkdtemp(tls_dir) && make_cert("good") == 0 && make_cert("other") == 0) {
        RUN(test_tls);
        RUN(test_tls_failures);
    } else {
        fprintf(stderr, "FAIL: could not make test certificates\n");
        harness_failed++;
    }
    tls_cleanup();
    ev_loop_destroy(loop);
    return HARNESS_END();
}
