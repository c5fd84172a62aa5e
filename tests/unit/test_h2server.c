/* Tests for common/h2server.c: a real server on 127.0.0.1:0, running in a
 * libev loop on its own thread, driven by a raw nghttp2 client session written
 * here (h2c, and TLS with an OpenSSL client when the openssl CLI can make a
 * throwaway certificate).
 *
 * Threads: everything that touches the server runs on the loop thread, either
 * in its callbacks or through run_on_loop(); the test thread only drives the
 * client and reads the shared `seen` record under its mutex. */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/auth.h"
#include "common/h2server.h"
#include "common/http.h"
#include "common/log.h"
#include "common/tls.h"
#include "tests/unit/harness.h"

#define TOKEN          "s3cret-token"
#define TIMEOUT_MS     5000
#define BIG_STREAM_MSG (300 * 1024)
#define FLOOD_MSG      (64 * 1024)
#define FLOOD_COUNT    512 /* 32 MiB: more than socket buffers hold */

/* ---- the loop thread ------------------------------------------------------- */

static struct ev_loop *loop;
static ev_async job_w;
static pthread_t loop_thread;
static pthread_mutex_t job_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t job_cv = PTHREAD_COND_INITIALIZER;
static void (*job_fn)(void *);
static void *job_arg;
static int job_done, loop_stop;

static void job_cb(struct ev_loop *l, ev_async *w, int revents)
{
    void (*fn)(void *);
    void *arg;

    (void)w;
    (void)revents;
    pthread_mutex_lock(&job_mu);
    fn = job_fn;
    arg = job_arg;
    pthread_mutex_unlock(&job_mu);
    if (fn)
        fn(arg);
    pthread_mutex_lock(&job_mu);
    job_fn = NULL;
    job_done = 1;
    if (loop_stop)
        ev_break(l, EVBREAK_ALL);
    pthread_cond_broadcast(&job_cv);
    pthread_mutex_unlock(&job_mu);
}

/* Run fn(arg) on the loop thread and wait for it. */
static void run_on_loop(void (*fn)(void *), void *arg)
{
    pthread_mutex_lock(&job_mu);
    job_fn = fn;
    job_arg = arg;
    job_done = 0;
    pthread_mutex_unlock(&job_mu);
    ev_async_send(loop, &job_w);
    pthread_mutex_lock(&job_mu);
    while (!job_done)
        pthread_cond_wait(&job_cv, &job_mu);
    pthread_mutex_unlock(&job_mu);
}

static void *loop_main(void *arg)
{
    (void)arg;
    ev_run(loop, 0);
    return NULL;
}

/* ---- what the server side saw ----------------------------------------------- */

static pthread_mutex_t seen_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    int calls;            /* on_call invocations */
    int cancels;          /* on_cancel invocations */
    uint64_t closed[512]; /* conn ids passed to on_close */
    int nclosed;
    struct h2call *held; /* a call the test ends later (loop thread only) */
    uint64_t held_conn;
    char held_peer[128];
    int held_alive_at_cancel;
    size_t pending_after_big; /* h2call_pending right after a big send */
    struct h2call *flood;     /* ended, but alive until its stream closes */
} seen;

static int seen_calls(void)
{
    pthread_mutex_lock(&seen_mu);
    int n = seen.calls;
    pthread_mutex_unlock(&seen_mu);
    return n;
}

static int seen_closed(uint64_t id)
{
    int found = 0;

    pthread_mutex_lock(&seen_mu);
    for (int i = 0; i < seen.nclosed; i++)
        found |= seen.closed[i] == id;
    pthread_mutex_unlock(&seen_mu);
    return found;
}

/* Wait (polling, bounded) until pred() holds. */
static int wait_until(int (*pred)(void *), void *arg)
{
    for (int i = 0; i < TIMEOUT_MS; i++) {
        if (pred(arg))
            return 1;
        usleep(1000);
    }
    return pred(arg);
}

/* ---- server handlers (loop thread) ------------------------------------------- */

struct streamer {
    ev_timer timer;
    struct h2call *call;
};

static void streamer_cb(struct ev_loop *l, ev_timer *w, int revents)
{
    struct streamer *st = container_of(w, struct streamer, timer);
    uint8_t *big = malloc(BIG_STREAM_MSG);

    (void)l;
    (void)revents;
    memset(big, 'b', BIG_STREAM_MSG);
    if (h2call_send(st->call, big, BIG_STREAM_MSG) == 0) {
        pthread_mutex_lock(&seen_mu);
        seen.pending_after_big = h2call_pending(st->call);
        pthread_mutex_unlock(&seen_mu);
        (void)h2call_send(st->call, (const uint8_t *)"last", 4);
    }
    h2call_finish(st->call, GRPC_OK, NULL);
    free(big);
    free(st);
}

static void held_cancel_cb(void *arg, struct h2call *call)
{
    (void)arg;
    pthread_mutex_lock(&seen_mu);
    seen.cancels++;
    seen.held_alive_at_cancel = h2call_alive(call);
    pthread_mutex_unlock(&seen_mu);
}

static void on_call(void *arg, struct h2call *call)
{
    const char *path = h2call_path(call);
    size_t len;
    const uint8_t *msg = h2call_message(call, &len);

    (void)arg;
    pthread_mutex_lock(&seen_mu);
    seen.calls++;
    pthread_mutex_unlock(&seen_mu);
    if (strcmp(path, "/t.Echo/Unary") == 0) {
        h2call_reply(call, msg, len);
    } else if (strcmp(path, "/t.Echo/Fail") == 0) {
        h2call_fail(call, GRPC_NOT_FOUND, "no such thing: 100%\n");
    } else if (strcmp(path, "/t.Echo/Header") == 0) {
        const char *v = h2call_header(call, "x-test");
        h2call_reply(call, (const uint8_t *)(v ? v : "(none)"), strlen(v ? v : "(none)"));
    } else if (strcmp(path, "/t.Echo/Stream") == 0) {
        struct streamer *st = calloc(1, sizeof(*st));
        if (h2call_send(call, msg, len) != 0)
            abort();
        st->call = call;
        ev_timer_init(&st->timer, streamer_cb, 0.02, 0);
        ev_timer_start(loop, &st->timer);
    } else if (strcmp(path, "/t.Echo/Flood") == 0) {
        uint8_t *chunk = calloc(1, FLOOD_MSG);
        for (int i = 0; i < FLOOD_COUNT; i++) {
            chunk[0] = (uint8_t)i;
            if (h2call_send(call, chunk, FLOOD_MSG) != 0)
                abort();
        }
        free(chunk);
        pthread_mutex_lock(&seen_mu);
        seen.flood = call;
        pthread_mutex_unlock(&seen_mu);
        h2call_finish(call, GRPC_OK, NULL);
    } else if (strncmp(path, "/t.Echo/Hold", 12) == 0) {
        if (strcmp(path, "/t.Echo/HoldStream") == 0 && h2call_send(call, msg, len) != 0)
            abort();
        pthread_mutex_lock(&seen_mu);
        seen.held = call;
        seen.held_conn = h2call_conn_id(call);
        snprintf(seen.held_peer, sizeof(seen.held_peer), "%s", h2call_peer(call));
        pthread_mutex_unlock(&seen_mu);
        h2call_on_cancel(call, held_cancel_cb, NULL);
    } else {
        h2call_fail(call, GRPC_UNIMPLEMENTED, "unknown method");
    }
}

static void on_close(void *arg, uint64_t conn_id)
{
    (void)arg;
    pthread_mutex_lock(&seen_mu);
    if (seen.nclosed < (int)ARRAY_LEN(seen.closed))
        seen.closed[seen.nclosed++] = conn_id;
    pthread_mutex_unlock(&seen_mu);
}

struct srv_job {
    struct h2server_config cfg;
    struct h2server *srv;
    int rv;
    unsigned count;
};

static void start_job(void *arg)
{
    struct srv_job *j = arg;
    j->rv = h2server_start(loop, &j->cfg, &j->srv);
}

static void free_job(void *arg)
{
    h2server_free(((struct srv_job *)arg)->srv);
}

static void shutdown_job(void *arg)
{
    h2server_shutdown(((struct srv_job *)arg)->srv);
}

static void count_job(void *arg)
{
    struct srv_job *j = arg;
    j->count = h2server_conn_count(j->srv);
}

/* End the held call with a reply (it may be orphaned: then it is just freed). */
static void reply_held_job(void *arg)
{
    int *alive = arg;

    *alive = h2call_alive(seen.held);
    h2call_reply(seen.held, (const uint8_t *)"late", 4);
    pthread_mutex_lock(&seen_mu);
    seen.held = NULL;
    pthread_mutex_unlock(&seen_mu);
}

/* On a held streaming call whose stream is gone: sending fails, finishing frees. */
static void finish_held_job(void *arg)
{
    int *send_rv = arg;

    *send_rv = h2call_send(seen.held, (const uint8_t *)"more", 4);
    h2call_finish(seen.held, GRPC_OK, NULL);
    pthread_mutex_lock(&seen_mu);
    seen.held = NULL;
    pthread_mutex_unlock(&seen_mu);
}

static struct auth *test_auth;

static struct srv_job *server_start(SSL_CTX *tls, double idle)
{
    struct srv_job *j = calloc(1, sizeof(*j));

    j->cfg.listen = "127.0.0.1:0";
    j->cfg.tls = tls;
    j->cfg.max_message = 4 * 1024 * 1024;
    j->cfg.auth = test_auth;
    j->cfg.idle_timeout = idle;
    j->cfg.on_call = on_call;
    j->cfg.on_close = on_close;
    run_on_loop(start_job, j);
    if (j->rv != 0) {
        fprintf(stderr, "server start failed: %d\n", j->rv);
        exit(2);
    }
    return j;
}

static void server_free(struct srv_job *j)
{
    run_on_loop(free_job, j);
    free(j);
}

static unsigned server_conns(struct srv_job *j)
{
    run_on_loop(count_job, j);
    return j->count;
}

/* ---- the client ------------------------------------------------------------------ */

struct cstream {
    int32_t id;
    int http_status;
    int grpc_status; /* -1 until seen */
    char grpc_message[512];
    char content_type[512];
    struct buf data;
    int closed;
    uint32_t error_code;
    struct buf req; /* request body still to send */
    int req_end;    /* END_STREAM after the body */
};

struct client {
    int fd;
    SSL *ssl;
    nghttp2_session *sess;
    struct buf out;
    int eof;
    struct cstream st[8];
    int nst;
};

static int c_on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                       size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                       void *user_data)
{
    struct cstream *st = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
    char v[512];

    (void)namelen;
    (void)flags;
    (void)user_data;
    if (!st)
        return 0;
    snprintf(v, sizeof(v), "%.*s", (int)valuelen, value);
    if (strcmp((const char *)name, ":status") == 0) {
        st->http_status = atoi(v);
    } else if (strcmp((const char *)name, "grpc-status") == 0) {
        st->grpc_status = atoi(v);
    } else if (strcmp((const char *)name, "grpc-message") == 0) {
        char *d = grpc_percent_decode(v);
        snprintf(st->grpc_message, sizeof(st->grpc_message), "%.500s", d);
        free(d);
    } else if (strcmp((const char *)name, "content-type") == 0) {
        snprintf(st->content_type, sizeof(st->content_type), "%s", v);
    }
    return 0;
}

static int c_on_data(nghttp2_session *s, uint8_t flags, int32_t stream_id, const uint8_t *data,
                     size_t len, void *user_data)
{
    struct cstream *st = nghttp2_session_get_stream_user_data(s, stream_id);

    (void)flags;
    (void)user_data;
    if (st)
        buf_append(&st->data, data, len);
    return 0;
}

static int c_on_close(nghttp2_session *s, int32_t stream_id, uint32_t error_code, void *user_data)
{
    struct cstream *st = nghttp2_session_get_stream_user_data(s, stream_id);

    (void)user_data;
    if (st) {
        st->closed = 1;
        st->error_code = error_code;
    }
    return 0;
}

static ssize_t c_read_body(nghttp2_session *s, int32_t stream_id, uint8_t *buf, size_t length,
                           uint32_t *data_flags, nghttp2_data_source *source, void *user_data)
{
    struct cstream *st = source->ptr;
    size_t n = MIN(length, buf_avail(&st->req));

    (void)s;
    (void)stream_id;
    (void)user_data;
    if (n > 0)
        memcpy(buf, buf_head(&st->req), n);
    buf_consume(&st->req, n);
    if (buf_avail(&st->req) == 0) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (!st->req_end)
            *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    }
    return (ssize_t)n;
}

static int tcp_connect(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        perror("connect");
        exit(2);
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static void set_nonblock(int fd)
{
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
        perror("fcntl");
        exit(2);
    }
}

/* Connect; with tls_ctx, do the TLS handshake first. Returns NULL if the
 * handshake failed. */
static struct client *client_new(int port, SSL_CTX *tls_ctx)
{
    struct client *cl = calloc(1, sizeof(*cl));
    nghttp2_session_callbacks *cbs;

    cl->fd = tcp_connect(port);
    if (tls_ctx) {
        if (tls_client_ssl(tls_ctx, "localhost", &cl->ssl) != 0 ||
            SSL_set_fd(cl->ssl, cl->fd) != 1 || SSL_connect(cl->ssl) != 1) {
            ERR_clear_error();
            SSL_free(cl->ssl);
            close(cl->fd);
            free(cl);
            return NULL;
        }
    }
    set_nonblock(cl->fd);
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_on_header_callback(cbs, c_on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, c_on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, c_on_close);
    nghttp2_session_client_new(&cl->sess, cbs, cl);
    nghttp2_session_callbacks_del(cbs);
    /* Big windows, so flow control does not hide the server's own limits. */
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 16 << 20}};
    nghttp2_submit_settings(cl->sess, NGHTTP2_FLAG_NONE, iv, 1);
    nghttp2_session_set_local_window_size(cl->sess, NGHTTP2_FLAG_NONE, 0, 64 << 20);
    return cl;
}

static void client_free(struct client *cl)
{
    if (!cl)
        return;
    for (int i = 0; i < cl->nst; i++) {
        buf_free(&cl->st[i].data);
        buf_free(&cl->st[i].req);
    }
    nghttp2_session_del(cl->sess);
    if (cl->ssl)
        SSL_free(cl->ssl);
    if (cl->fd >= 0)
        close(cl->fd);
    buf_free(&cl->out);
    free(cl);
}

static void nv(nghttp2_nv *n, const char *name, const char *value)
{
    n->name = (uint8_t *)name;
    n->namelen = strlen(name);
    n->value = (uint8_t *)value;
    n->valuelen = strlen(value);
    n->flags = NGHTTP2_NV_FLAG_NONE;
}

struct req {
    const char *path;
    const char *method;       /* default POST */
    const char *content_type; /* default application/grpc */
    const char *auth;         /* default "Bearer " TOKEN; "" for none */
    const char *extra_name, *extra_value;
    const void *body;
    size_t body_len;
    int no_end; /* leave the request open after the body */
};

static struct cstream *client_call(struct client *cl, const struct req *r)
{
    struct cstream *st = &cl->st[cl->nst++];
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = c_read_body};
    nghttp2_nv h[8];
    size_t n = 0;

    st->grpc_status = -1;
    st->req_end = !r->no_end;
    buf_append(&st->req, r->body, r->body_len);
    nv(&h[n++], ":method", r->method ? r->method : "POST");
    nv(&h[n++], ":scheme", cl->ssl ? "https" : "http");
    nv(&h[n++], ":authority", "localhost");
    nv(&h[n++], ":path", r->path);
    nv(&h[n++], "content-type", r->content_type ? r->content_type : "application/grpc");
    nv(&h[n++], "te", "trailers");
    if (!r->auth || r->auth[0])
        nv(&h[n++], "authorization", r->auth ? r->auth : "Bearer " TOKEN);
    if (r->extra_name)
        nv(&h[n++], r->extra_name, r->extra_value);
    st->id =
        nghttp2_submit_request(cl->sess, NULL, h, n, r->body_len || r->no_end ? &prd : NULL, st);
    if (st->id < 0) {
        fprintf(stderr, "submit request failed\n");
        exit(2);
    }
    return st;
}

static ssize_t client_io_read(struct client *cl, uint8_t *p, size_t n)
{
    if (!cl->ssl) {
        ssize_t r = read(cl->fd, p, n);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            return -2;
        return r;
    }
    int r = SSL_read(cl->ssl, p, (int)n);
    if (r > 0)
        return r;
    int e = SSL_get_error(cl->ssl, r);
    ERR_clear_error();
    return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE
               ? -2
               : (e == SSL_ERROR_ZERO_RETURN ? 0 : -1);
}

static ssize_t client_io_write(struct client *cl, const uint8_t *p, size_t n)
{
    if (!cl->ssl) {
        ssize_t r = send(cl->fd, p, n, MSG_NOSIGNAL);
        return r < 0 && (errno == EAGAIN || errno == EINTR) ? 0 : r;
    }
    int r = SSL_write(cl->ssl, p, (int)n);
    if (r > 0)
        return r;
    int e = SSL_get_error(cl->ssl, r);
    ERR_clear_error();
    return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? 0 : -1;
}

/* One round of client I/O; stops reading while `paused`. */
static void client_step(struct client *cl, int paused)
{
    uint8_t rb[16384];
    const uint8_t *data;
    ssize_t n;
    struct pollfd p = {.fd = cl->fd, .events = POLLIN};

    while (!cl->eof) {
        while (buf_avail(&cl->out) < 65536 && (n = nghttp2_session_mem_send(cl->sess, &data)) > 0)
            buf_append(&cl->out, data, (size_t)n);
        if (buf_avail(&cl->out) == 0)
            break;
        n = client_io_write(cl, buf_head(&cl->out), buf_avail(&cl->out));
        if (n < 0)
            cl->eof = 1;
        if (n <= 0)
            break;
        buf_consume(&cl->out, (size_t)n);
    }
    if (paused || cl->eof)
        return;
    if (buf_avail(&cl->out) > 0)
        p.events |= POLLOUT;
    if (!(cl->ssl && SSL_has_pending(cl->ssl)))
        (void)poll(&p, 1, 5);
    for (int i = 0; i < 64; i++) {
        n = client_io_read(cl, rb, sizeof(rb));
        if (n == -2)
            break;
        if (n <= 0) {
            cl->eof = 1;
            break;
        }
        if (nghttp2_session_mem_recv(cl->sess, rb, (size_t)n) < 0) {
            cl->eof = 1;
            break;
        }
    }
}

/* Drive the client until the stream closes (or the connection does). */
static int client_wait(struct client *cl, struct cstream *st)
{
    for (int i = 0; i < TIMEOUT_MS / 5; i++) {
        client_step(cl, 0);
        if (st->closed || cl->eof)
            return st->closed;
    }
    return 0;
}

/* Build a framed gRPC body. */
static void frame(struct buf *b, uint8_t flag, const void *msg, size_t len, uint32_t claim)
{
    uint8_t p[GRPC_PREFIX_LEN];

    grpc_put_prefix(p, claim ? claim : (uint32_t)len);
    p[0] = flag;
    buf_append(b, p, sizeof(p));
    buf_append(b, msg, len);
}

/* A one-shot call on a fresh connection: returns the finished stream copied
 * into *out (data buffer owned by the caller). */
static int do_call(int port, SSL_CTX *tls, const struct req *r, struct cstream *out)
{
    struct client *cl = client_new(port, tls);
    struct cstream *st;
    int ok;

    if (!cl)
        return 0;
    st = client_call(cl, r);
    ok = client_wait(cl, st);
    *out = *st;
    memset(&st->data, 0, sizeof(st->data));
    client_free(cl);
    return ok;
}

static int unary_ok(int port, SSL_CTX *tls, const char *msg)
{
    struct buf body = {0};
    struct cstream st;
    int ok;

    frame(&body, 0, msg, strlen(msg), 0);
    ok = do_call(port, tls,
                 &(struct req){.path = "/t.Echo/Unary", .body = body.data, .body_len = body.len},
                 &st);
    ok = ok && st.http_status == 200 && st.grpc_status == 0 && st.data.len == 5 + strlen(msg) &&
         memcmp(st.data.data + 5, msg, strlen(msg)) == 0;
    buf_free(&body);
    buf_free(&st.data);
    return ok;
}

/* ---- tests -------------------------------------------------------------------------- */

static struct srv_job *srv; /* the shared h2c server with auth */

TEST(unary_echo)
{
    struct buf body = {0};
    struct cstream st;

    frame(&body, 0, "hello", 5, 0);
    REQUIRE(do_call(h2server_port(srv->srv), NULL,
                    &(struct req){.path = "/t.Echo/Unary", .body = body.data, .body_len = body.len},
                    &st));
    CHECK(st.http_status == 200);
    CHECK(strcmp(st.content_type, "application/grpc") == 0);
    CHECK(st.grpc_status == 0);
    CHECK(st.grpc_message[0] == '\0');
    CHECK(st.data.len == 10 && memcmp(st.data.data, "\0\0\0\0\5hello", 10) == 0);
    CHECK(st.error_code == NGHTTP2_NO_ERROR);
    buf_free(&st.data);
    buf_free(&body);
}

TEST(unary_echo_large_and_empty)
{
    size_t big = 3 * 1024 * 1024;
    uint8_t *msg = malloc(big);
    struct buf body = {0};
    struct cstream st;

    for (size_t i = 0; i < big; i++)
        msg[i] = (uint8_t)(i * 7);
    frame(&body, 0, msg, big, 0);
    REQUIRE(do_call(h2server_port(srv->srv), NULL,
                    &(struct req){.path = "/t.Echo/Unary", .body = body.data, .body_len = body.len},
                    &st));
    CHECK(st.grpc_status == 0);
    CHECK(st.data.len == big + 5 && memcmp(st.data.data, body.data, big + 5) == 0);
    buf_free(&st.data);
    buf_reset(&body);
    /* A zero-length message is a message. */
    frame(&body, 0, "", 0, 0);
    REQUIRE(do_call(h2server_port(srv->srv), NULL,
                    &(struct req){.path = "/t.Echo/Unary", .body = body.data, .body_len = body.len},
                    &st));
    CHECK(st.grpc_status == 0 && st.data.len == 5);
    buf_free(&st.data);
    buf_free(&body);
    free(msg);
}

TEST(many_calls_one_connection)
{
    struct client *cl = client_new(h2server_port(srv->srv), NULL);
    struct buf body[8] = {{0}};
    struct cstream *st[8];
    char msg[32];

    for (int i = 0; i < 8; i++) {
        snprintf(msg, sizeof(msg), "msg-%d", i);
        frame(&body[i], 0, msg, strlen(msg), 0);
        st[i] = client_call(
            cl,
            &(struct req){.path = "/t.Echo/Unary", .body = body[i].data, .body_len = body[i].len});
    }
    for (int i = 0; i < 8; i++) {
        REQUIRE(client_wait(cl, st[i]));
        snprintf(msg, sizeof(msg), "msg-%d", i);
        CHECK(st[i]->grpc_status == 0 && st[i]->data.len == 5 + strlen(msg) &&
              memcmp(st[i]->data.data + 5, msg, strlen(msg)) == 0);
    }
    for (int i = 0; i < 8; i++)
        buf_free(&body[i]);
    client_free(cl);
}

TEST(headers_reach_the_app)
{
    struct buf body = {0};
    struct cstream st;

    frame(&body, 0, "x", 1, 0);
    REQUIRE(do_call(h2server_port(srv->srv), NULL,
                    &(struct req){.path = "/t.Echo/Header",
                                  .extra_name = "x-test",
                                  .extra_value = "value-1",
                                  .body = body.data,
                                  .body_len = body.len},
                    &st));
    CHECK(st.data.len == 12 && memcmp(st.data.data + 5, "value-1", 7) == 0);
    buf_free(&st.data);
    buf_free(&body);
}

static void expect_status(const struct req *r, int want, const char *want_msg)
{
    int calls = seen_calls();
    struct cstream st;

    REQUIRE(do_call(h2server_port(srv->srv), NULL, r, &st));
    CHECK(st.http_status == 200);
    CHECK(st.grpc_status == want);
    if (want_msg && !strstr(st.grpc_message, want_msg))
        fprintf(stderr, "  grpc-message was \"%s\"\n", st.grpc_message);
    CHECK(!want_msg || strstr(st.grpc_message, want_msg));
    CHECK(st.data.len == 0); /* trailers-only */
    if (strcmp(r->path, "/t.Echo/Unary") == 0)
        CHECK(seen_calls() == calls); /* refused by the server: the app never saw it */
    buf_free(&st.data);
}

TEST(missing_or_wrong_token)
{
    struct buf body = {0};

    frame(&body, 0, "hi", 2, 0);
    expect_status(
        &(struct req){.path = "/t.Echo/Unary", .auth = "", .body = body.data, .body_len = body.len},
        GRPC_UNAUTHENTICATED, "missing or invalid bearer token");
    expect_status(&(struct req){.path = "/t.Echo/Unary",
                                .auth = "Bearer wrong",
                                .body = body.data,
                                .body_len = body.len},
                  GRPC_UNAUTHENTICATED, "missing or invalid bearer token");
    expect_status(&(struct req){.path = "/t.Echo/Unary",
                                .auth = "Bearer " TOKEN "x",
                                .body = body.data,
                                .body_len = body.len},
                  GRPC_UNAUTHENTICATED, NULL);
    /* Refused at the headers, before the body: the request can stay open. */
    expect_status(&(struct req){.path = "/t.Echo/Unary", .auth = "", .no_end = 1},
                  GRPC_UNAUTHENTICATED, NULL);
    buf_free(&body);
}

TEST(oversized_message)
{
    struct buf body = {0};
    size_t len = 5 * 1024 * 1024; /* really sent, past the 4 MiB limit */
    uint8_t *msg = calloc(1, len);

    /* A claim alone is refused at the prefix. */
    frame(&body, 0, "abc", 3, 20000000);
    expect_status(&(struct req){.path = "/t.Echo/Unary", .body = body.data, .body_len = body.len},
                  GRPC_RESOURCE_EXHAUSTED,
                  "request message of 20000000 bytes exceeds the limit of 4194304 bytes");
    buf_reset(&body);
    frame(&body, 0, msg, len, 0);
    expect_status(&(struct req){.path = "/t.Echo/Unary", .body = body.data, .body_len = body.len},
                  GRPC_RESOURCE_EXHAUSTED, "exceeds the limit of 4194304 bytes");
    buf_free(&body);
    free(msg);
}

TEST(bad_framing)
{
    struct buf body = {0};

    frame(&body, 1, "zz", 2, 0);
    expect_status(&(struct req){.path = "/t.Echo/Unary", .body = body.data, .body_len = body.len},
                  GRPC_UNIMPLEMENTED, "compressed messages are not supported");
    buf_reset(&body);
    frame(&body, 7, "zz", 2, 0);
    expect_status(&(struct req){.path = "/t.Echo/Unary", .body = body.data, .body_len = body.len},
                  GRPC_INTERNAL, "framing");
    /* No message at all. */
    expect_status(&(struct req){.path = "/t.Echo/Unary"}, GRPC_INTERNAL,
                  "expected exactly one request message");
    /* Two messages. */
    buf_reset(&body);
    frame(&body, 0, "a", 1, 0);
    frame(&body, 0, "b", 1, 0);
    expect_status(&(struct req){.path = "/t.Echo/Unary", .body = body.data, .body_len = body.len},
                  GRPC_INTERNAL, "expected exactly one request message");
    /* A message cut short by END_STREAM. */
    buf_reset(&body);
    frame(&body, 0, "abc", 3, 10);
    expect_status(&(struct req){.path = "/t.Echo/Unary", .body = body.data, .body_len = body.len},
                  GRPC_INTERNAL, "expected exactly one request message");
    buf_free(&body);
}

TEST(app_failure_is_percent_encoded)
{
    struct buf body = {0};

    frame(&body, 0, "x", 1, 0);
    expect_status(&(struct req){.path = "/t.Echo/Fail", .body = body.data, .body_len = body.len},
                  GRPC_NOT_FOUND, "no such thing: 100%\n");
    expect_status(&(struct req){.path = "/t.Echo/Nope", .body = body.data, .body_len = body.len},
                  GRPC_UNIMPLEMENTED, "unknown method");
    buf_free(&body);
}

TEST(wrong_content_type_and_method)
{
    struct buf body = {0};
    struct cstream st;
    int calls = seen_calls();

    frame(&body, 0, "x", 1, 0);
    REQUIRE(do_call(h2server_port(srv->srv), NULL,
                    &(struct req){.path = "/t.Echo/Unary",
                                  .content_type = "application/json",
                                  .body = body.data,
                                  .body_len = body.len},
                    &st));
    CHECK(st.http_status == 415 && st.grpc_status == -1);
    buf_free(&st.data);
    REQUIRE(do_call(h2server_port(srv->srv), NULL,
                    &(struct req){.path = "/t.Echo/Unary",
                                  .content_type = "application/grpcx",
                                  .body = body.data,
                                  .body_len = body.len},
                    &st));
    CHECK(st.http_status == 415);
    buf_free(&st.data);
    REQUIRE(do_call(h2server_port(srv->srv), NULL,
                    &(struct req){.path = "/t.Echo/Unary", .method = "GET"}, &st));
    CHECK(st.http_status == 405);
    buf_free(&st.data);
    /* The +proto form is gRPC too. */
    REQUIRE(do_call(h2server_port(srv->srv), NULL,
                    &(struct req){.path = "/t.Echo/Unary",
                                  .content_type = "application/grpc+proto",
                                  .body = body.data,
                                  .body_len = body.len},
                    &st));
    CHECK(st.http_status == 200 && st.grpc_status == 0);
    buf_free(&st.data);
    CHECK(seen_calls() == calls + 1);
    buf_free(&body);
}

/* Read until the server closes the connection. */
static int wait_server_closes(int fd)
{
    char b[256];
    struct pollfd p = {.fd = fd, .events = POLLIN};

    for (int i = 0; i < TIMEOUT_MS / 10; i++) {
        if (poll(&p, 1, 10) > 0) {
            ssize_t n = read(fd, b, sizeof(b));
            if (n == 0 || (n < 0 && errno == ECONNRESET))
                return 1;
        }
    }
    return 0;
}

TEST(garbage_instead_of_preface)
{
    const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff garbage garbage garbage";
    int fd = tcp_connect(h2server_port(srv->srv));

    REQUIRE(write(fd, junk, sizeof(junk)) == (ssize_t)sizeof(junk));
    CHECK(wait_server_closes(fd));
    close(fd);
    /* A preface followed by a malformed frame. */
    fd = tcp_connect(h2server_port(srv->srv));
    REQUIRE(write(fd, NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN) == NGHTTP2_CLIENT_MAGIC_LEN);
    REQUIRE(write(fd, "\x00\x00\x03\x09\x00\x00\x00\x00\x07xyz", 12) == 12);
    CHECK(wait_server_closes(fd));
    close(fd);
    /* The server is still serving. */
    CHECK(unary_ok(h2server_port(srv->srv), NULL, "still here"));
}

TEST(server_streaming)
{
    struct buf body = {0};
    struct cstream st;
    struct grpc_decoder d;
    size_t off = 0, used;
    int n = 0;

    frame(&body, 0, "first", 5, 0);
    REQUIRE(do_call(
        h2server_port(srv->srv), NULL,
        &(struct req){.path = "/t.Echo/Stream", .body = body.data, .body_len = body.len}, &st));
    CHECK(st.http_status == 200 && st.grpc_status == 0);
    grpc_decoder_init(&d, 1 << 20);
    while (off < st.data.len) {
        int rv = grpc_decoder_feed(&d, st.data.data + off, st.data.len - off, &used);
        off += used;
        if (rv != 1)
            break;
        if (n == 0)
            CHECK(d.msg.len == 5 && memcmp(d.msg.data, "first", 5) == 0);
        if (n == 1)
            CHECK(d.msg.len == BIG_STREAM_MSG && d.msg.data[BIG_STREAM_MSG - 1] == 'b');
        if (n == 2)
            CHECK(d.msg.len == 4 && memcmp(d.msg.data, "last", 4) == 0);
        n++;
        grpc_decoder_next(&d);
    }
    CHECK(n == 3 && off == st.data.len);
    pthread_mutex_lock(&seen_mu);
    CHECK(seen.pending_after_big >= BIG_STREAM_MSG); /* queued, not yet written */
    pthread_mutex_unlock(&seen_mu);
    grpc_decoder_free(&d);
    buf_free(&st.data);
    buf_free(&body);
}

static int held_ready(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&seen_mu);
    int r = seen.held != NULL;
    pthread_mutex_unlock(&seen_mu);
    return r;
}

static int cancelled_and_closed(void *arg)
{
    int want = *(int *)arg;
    pthread_mutex_lock(&seen_mu);
    int r = seen.cancels >= want;
    uint64_t id = seen.held_conn;
    pthread_mutex_unlock(&seen_mu);
    return r && seen_closed(id);
}

TEST(client_vanishes_before_reply)
{
    struct client *cl = client_new(h2server_port(srv->srv), NULL);
    struct buf body = {0};
    char want_prefix[64];
    int cancels, alive = -1;

    pthread_mutex_lock(&seen_mu);
    cancels = seen.cancels + 1;
    pthread_mutex_unlock(&seen_mu);
    frame(&body, 0, "wait", 4, 0);
    client_call(cl, &(struct req){.path = "/t.Echo/Hold", .body = body.data, .body_len = body.len});
    for (int i = 0; i < TIMEOUT_MS / 5 && !held_ready(NULL); i++)
        client_step(cl, 0);
    REQUIRE(held_ready(NULL));
    snprintf(want_prefix, sizeof(want_prefix),
             "conn#%llu 127.0.0.1:", (unsigned long long)seen.held_conn);
    CHECK(strncmp(seen.held_peer, want_prefix, strlen(want_prefix)) == 0);
    CHECK(strstr(seen.held_peer, " stream 1") != NULL);
    client_free(cl); /* vanish */
    CHECK(wait_until(cancelled_and_closed, &cancels));
    CHECK(seen.held_alive_at_cancel == 0);
    /* The call is still valid; replying now only frees it (ASan checks). */
    run_on_loop(reply_held_job, &alive);
    CHECK(alive == 0);
    buf_free(&body);
}

TEST(client_resets_stream)
{
    struct client *cl = client_new(h2server_port(srv->srv), NULL);
    struct buf body = {0};
    struct cstream *st;
    int cancels, alive = -1;

    pthread_mutex_lock(&seen_mu);
    cancels = seen.cancels + 1;
    pthread_mutex_unlock(&seen_mu);
    frame(&body, 0, "wait", 4, 0);
    st = client_call(
        cl, &(struct req){.path = "/t.Echo/Hold", .body = body.data, .body_len = body.len});
    for (int i = 0; i < TIMEOUT_MS / 5 && !held_ready(NULL); i++)
        client_step(cl, 0);
    REQUIRE(held_ready(NULL));
    nghttp2_submit_rst_stream(cl->sess, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
    for (int i = 0; i < TIMEOUT_MS / 5; i++) {
        client_step(cl, 0);
        pthread_mutex_lock(&seen_mu);
        int done = seen.cancels >= cancels;
        pthread_mutex_unlock(&seen_mu);
        if (done)
            break;
    }
    pthread_mutex_lock(&seen_mu);
    CHECK(seen.cancels == cancels);
    pthread_mutex_unlock(&seen_mu);
    run_on_loop(reply_held_job, &alive);
    CHECK(alive == 0);
    /* The connection itself is fine. */
    buf_reset(&body);
    frame(&body, 0, "again", 5, 0);
    st = client_call(
        cl, &(struct req){.path = "/t.Echo/Unary", .body = body.data, .body_len = body.len});
    CHECK(client_wait(cl, st) && st->grpc_status == 0);
    client_free(cl);
    buf_free(&body);
}

static void flood_pending_job(void *arg)
{
    *(size_t *)arg = h2call_pending(seen.flood);
}

static int flood_ready(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&seen_mu);
    int r = seen.flood != NULL;
    pthread_mutex_unlock(&seen_mu);
    return r;
}

/* A client that stops reading: the server stops taking the call's data (it
 * stays queued in the call) and stops reading; all arrives once it reads. */
TEST(slow_reader_backpressure)
{
    struct client *cl = client_new(h2server_port(srv->srv), NULL);
    struct buf body = {0};
    struct cstream *st;
    size_t pending = 0, total = (size_t)FLOOD_COUNT * (FLOOD_MSG + 5);

    frame(&body, 0, "go", 2, 0);
    st = client_call(
        cl, &(struct req){.path = "/t.Echo/Flood", .body = body.data, .body_len = body.len});
    client_step(cl, 1); /* send the request, read nothing */
    REQUIRE(wait_until(flood_ready, NULL));
    /* Wait until the server has filled the socket and stopped taking data. */
    for (int i = 0, same = 0; i < TIMEOUT_MS && same < 20; i++) {
        size_t before = pending;
        usleep(1000);
        run_on_loop(flood_pending_job, &pending);
        same = pending == before && pending < total ? same + 1 : 0;
    }
    CHECK(pending > 0 && pending < total);
    CHECK(client_wait(cl, st));
    CHECK(st->grpc_status == 0 && st->data.len == total);
    CHECK(st->data.len == total && st->data.data[(size_t)(FLOOD_COUNT - 1) * (FLOOD_MSG + 5) + 5] ==
                                       (uint8_t)(FLOOD_COUNT - 1));
    pthread_mutex_lock(&seen_mu);
    seen.flood = NULL;
    pthread_mutex_unlock(&seen_mu);
    client_free(cl);
    buf_free(&body);
}

TEST(streaming_call_then_reply)
{
    struct client *cl = client_new(h2server_port(srv->srv), NULL);
    struct buf body = {0};
    struct cstream *st;
    int alive = -1;

    frame(&body, 0, "first", 5, 0);
    st = client_call(
        cl, &(struct req){.path = "/t.Echo/HoldStream", .body = body.data, .body_len = body.len});
    for (int i = 0; i < TIMEOUT_MS / 5 && (!held_ready(NULL) || st->data.len < 10); i++)
        client_step(cl, 0);
    REQUIRE(held_ready(NULL));
    CHECK(st->http_status == 200 && st->data.len == 10 && !st->closed);
    run_on_loop(reply_held_job, &alive);
    CHECK(alive == 1);
    CHECK(client_wait(cl, st) && st->grpc_status == 0);
    CHECK(st->data.len == 19 && memcmp(st->data.data + 10, "\0\0\0\0\4late", 9) == 0);
    client_free(cl);
    buf_free(&body);
}

TEST(streaming_call_reset_by_client)
{
    struct client *cl = client_new(h2server_port(srv->srv), NULL);
    struct buf body = {0};
    struct cstream *st;
    int cancels, send_rv = 0;

    pthread_mutex_lock(&seen_mu);
    cancels = seen.cancels + 1;
    pthread_mutex_unlock(&seen_mu);
    frame(&body, 0, "first", 5, 0);
    st = client_call(
        cl, &(struct req){.path = "/t.Echo/HoldStream", .body = body.data, .body_len = body.len});
    for (int i = 0; i < TIMEOUT_MS / 5 && (!held_ready(NULL) || st->data.len < 10); i++)
        client_step(cl, 0);
    REQUIRE(held_ready(NULL));
    nghttp2_submit_rst_stream(cl->sess, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
    for (int i = 0; i < TIMEOUT_MS / 5; i++) {
        client_step(cl, 0);
        pthread_mutex_lock(&seen_mu);
        int done = seen.cancels >= cancels;
        pthread_mutex_unlock(&seen_mu);
        if (done)
            break;
    }
    run_on_loop(finish_held_job, &send_rv);
    CHECK(send_rv == -1);
    pthread_mutex_lock(&seen_mu);
    CHECK(seen.cancels == cancels);
    pthread_mutex_unlock(&seen_mu);
    client_free(cl);
    buf_free(&body);
}

TEST(oversized_headers_reset_the_stream)
{
    char *big = malloc(20000);
    struct buf body = {0};
    struct cstream st;
    int calls = seen_calls();

    memset(big, 'h', 19999);
    big[19999] = '\0';
    frame(&body, 0, "x", 1, 0);
    REQUIRE(do_call(h2server_port(srv->srv), NULL,
                    &(struct req){.path = "/t.Echo/Unary",
                                  .extra_name = "x-big",
                                  .extra_value = big,
                                  .body = body.data,
                                  .body_len = body.len},
                    &st));
    CHECK(st.error_code != NGHTTP2_NO_ERROR && st.grpc_status == -1);
    CHECK(seen_calls() == calls);
    buf_free(&st.data);
    buf_free(&body);
    free(big);
    CHECK(unary_ok(h2server_port(srv->srv), NULL, "after big headers"));
}

TEST(client_goaway_closes)
{
    struct client *cl = client_new(h2server_port(srv->srv), NULL);

    nghttp2_submit_goaway(cl->sess, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
    for (int i = 0; i < TIMEOUT_MS / 5 && !cl->eof; i++)
        client_step(cl, 0);
    CHECK(cl->eof);
    client_free(cl);
}

static int no_conns(void *arg)
{
    return server_conns(arg) == 0;
}

/* Out of file descriptors: accept fails, the server pauses accepting instead
 * of spinning, and serves the waiting client once fds are back. */
TEST(accept_survives_fd_exhaustion)
{
    struct rlimit old, tight;
    struct client *cl;
    struct buf body = {0};
    struct cstream *st;
    FILE *log = tmpfile();
    int saved_stderr = dup(STDERR_FILENO), next_fd, failures = 0, waiting, answered;
    int64_t t0, tight_ms;
    char line[512];

    /* valgrind emulates RLIMIT_NOFILE with fds of its own: skip there. */
    const char *preload = getenv("LD_PRELOAD");
    if (preload && strstr(preload, "vgpreload")) {
        fclose(log);
        close(saved_stderr);
        return;
    }
    /* Connections of earlier tests closing now would free fds below the limit. */
    REQUIRE(wait_until(no_conns, srv));
    /* Capture the log to count the accept failures: a spinning loop logs thousands. */
    REQUIRE(log && saved_stderr >= 0 && dup2(fileno(log), STDERR_FILENO) >= 0);
    next_fd = dup(0);
    if (next_fd >= 0)
        close(next_fd);
    REQUIRE(next_fd >= 0 && getrlimit(RLIMIT_NOFILE, &old) == 0);
    tight = old;
    tight.rlim_cur = (rlim_t)next_fd + 1; /* room for the client's socket only */
    t0 = mono_us();
    REQUIRE(setrlimit(RLIMIT_NOFILE, &tight) == 0);
    cl = client_new(h2server_port(srv->srv), NULL);
    frame(&body, 0, "patience", 8, 0);
    st = client_call(
        cl, &(struct req){.path = "/t.Echo/Unary", .body = body.data, .body_len = body.len});
    for (int i = 0; i < 20; i++) /* ~100 ms: the server cannot accept it */
        client_step(cl, 0);
    waiting = !st->closed && !cl->eof;
    REQUIRE(setrlimit(RLIMIT_NOFILE, &old) == 0);
    tight_ms = (mono_us() - t0) / 1000;
    answered = client_wait(cl, st) && st->grpc_status == 0;
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    rewind(log);
    while (fgets(line, sizeof(line), log))
        failures += strstr(line, "accept failed: Too many open files") != NULL;
    fclose(log);
    CHECK(waiting);
    CHECK(answered);
    /* One failure per 100 ms pause, give or take. */
    if (failures < 1 || failures > tight_ms / 100 + 3)
        fprintf(stderr, "  %d accept failures in %lld ms\n", failures, (long long)tight_ms);
    CHECK(failures >= 1 && failures <= tight_ms / 100 + 3);
    client_free(cl);
    buf_free(&body);
}

TEST(many_connections)
{
    enum { N = 100 };
    struct client *cl[N];
    struct cstream *st[N];
    struct buf body = {0};
    int ok = 0;

    frame(&body, 0, "m", 1, 0);
    for (int i = 0; i < N; i++) {
        cl[i] = client_new(h2server_port(srv->srv), NULL);
        st[i] = client_call(
            cl[i], &(struct req){.path = "/t.Echo/Unary", .body = body.data, .body_len = body.len});
    }
    for (int i = 0; i < N; i++)
        ok += client_wait(cl[i], st[i]) && st[i]->grpc_status == 0;
    CHECK(ok == N);
    CHECK(server_conns(srv) >= N);
    for (int i = 0; i < N; i++)
        client_free(cl[i]);
    CHECK(wait_until(no_conns, srv));
    buf_free(&body);
}

TEST(idle_timeout_closes_slowloris)
{
    struct srv_job *j = server_start(NULL, 0.2);
    int fd = tcp_connect(h2server_port(j->srv));

    /* The preface and half a frame header, then nothing. */
    REQUIRE(write(fd, NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN) == NGHTTP2_CLIENT_MAGIC_LEN);
    REQUIRE(write(fd, "\x00\x00", 2) == 2);
    CHECK(wait_server_closes(fd));
    close(fd);
    /* A busy connection is not idle: a held call outlives the timeout. */
    struct client *cl = client_new(h2server_port(j->srv), NULL);
    struct buf body = {0};
    int alive = -1;
    frame(&body, 0, "wait", 4, 0);
    struct cstream *st = client_call(
        cl, &(struct req){.path = "/t.Echo/Hold", .body = body.data, .body_len = body.len});
    for (int i = 0; i < TIMEOUT_MS / 5 && !held_ready(NULL); i++)
        client_step(cl, 0);
    REQUIRE(held_ready(NULL));
    for (int i = 0; i < 100; i++) /* ~0.5 s, over twice the timeout */
        client_step(cl, 0);
    CHECK(!cl->eof);
    run_on_loop(reply_held_job, &alive);
    CHECK(alive == 1);
    CHECK(client_wait(cl, st) && st->grpc_status == 0);
    CHECK(st->data.len == 9 && memcmp(st->data.data + 5, "late", 4) == 0);
    /* Then idle: closed. */
    for (int i = 0; i < TIMEOUT_MS / 5 && !cl->eof; i++)
        client_step(cl, 0);
    CHECK(cl->eof);
    client_free(cl);
    buf_free(&body);
    CHECK(wait_until(no_conns, j));
    server_free(j);
}

TEST(shutdown_waits_for_open_calls)
{
    struct srv_job *j = server_start(NULL, 0);
    int port = h2server_port(j->srv), alive = -1;
    struct client *idle = client_new(port, NULL);
    struct client *cl = client_new(port, NULL);
    struct buf body = {0};
    struct cstream *st;

    frame(&body, 0, "wait", 4, 0);
    st = client_call(
        cl, &(struct req){.path = "/t.Echo/Hold", .body = body.data, .body_len = body.len});
    for (int i = 0; i < TIMEOUT_MS / 5 && !held_ready(NULL); i++) {
        client_step(cl, 0);
        client_step(idle, 0);
    }
    REQUIRE(held_ready(NULL));
    run_on_loop(shutdown_job, j);
    /* The idle connection goes at once; the busy one stays. */
    for (int i = 0; i < TIMEOUT_MS / 5 && !idle->eof; i++) {
        client_step(idle, 0);
        client_step(cl, 0);
    }
    CHECK(idle->eof);
    CHECK(!cl->eof && server_conns(j) == 1);
    CHECK(nghttp2_session_get_remote_settings(cl->sess, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS) ==
          1024);
    /* Listener closed: new connections are refused. */
    {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        CHECK(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0);
        close(fd);
    }
    run_on_loop(reply_held_job, &alive);
    CHECK(alive == 1);
    CHECK(client_wait(cl, st) && st->grpc_status == 0);
    for (int i = 0; i < TIMEOUT_MS / 5 && !cl->eof; i++)
        client_step(cl, 0);
    CHECK(cl->eof);
    CHECK(wait_until(no_conns, j));
    client_free(idle);
    client_free(cl);
    buf_free(&body);
    server_free(j);
}

TEST(free_with_open_call_cancels_it)
{
    struct srv_job *j = server_start(NULL, 0);
    struct client *cl = client_new(h2server_port(j->srv), NULL);
    struct buf body = {0};
    int cancels, alive = -1;

    pthread_mutex_lock(&seen_mu);
    cancels = seen.cancels + 1;
    pthread_mutex_unlock(&seen_mu);
    frame(&body, 0, "wait", 4, 0);
    client_call(cl, &(struct req){.path = "/t.Echo/Hold", .body = body.data, .body_len = body.len});
    for (int i = 0; i < TIMEOUT_MS / 5 && !held_ready(NULL); i++)
        client_step(cl, 0);
    REQUIRE(held_ready(NULL));
    server_free(j);
    CHECK(seen.cancels == cancels && seen_closed(seen.held_conn));
    run_on_loop(reply_held_job, &alive);
    CHECK(alive == 0);
    client_free(cl);
    buf_free(&body);
}

/* ---- TLS ------------------------------------------------------------------------------ */

static char tls_dir[64];

static int make_cert(const char *name)
{
    char cmd[512];

    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout %s/%s.key -out %s/%s.pem -days 1 -subj /CN=localhost "
             "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 >/dev/null 2>&1",
             tls_dir, name, tls_dir, name);
    return system(cmd) == 0;
}

static const char *tls_path(const char *name, const char *ext)
{
    static char p[4][128];
    static int i;
    i = (i + 1) % 4;
    snprintf(p[i], sizeof(p[i]), "%s/%s.%s", tls_dir, name, ext);
    return p[i];
}

/* A client that offers the given ALPN list (wire format), or none. */
static int tls_handshake_with_alpn(int port, const unsigned char *alpn, unsigned alpn_len)
{
    SSL_CTX *ctx = NULL;
    SSL *ssl;
    int fd, ok;

    if (tls_client_ctx(tls_path("server", "pem"), NULL, NULL, &ctx) != 0)
        return -1;
    SSL_CTX_set_alpn_protos(ctx, alpn, alpn_len);
    fd = tcp_connect(port);
    if (tls_client_ssl(ctx, "localhost", &ssl) != 0)
        return -1;
    SSL_set_fd(ssl, fd);
    ok = SSL_connect(ssl) == 1;
    if (ok) /* the server must still drop a connection without h2 */
        ok = !wait_server_closes(fd);
    ERR_clear_error();
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);
    return ok;
}

TEST(tls_round_trip_and_alpn)
{
    SSL_CTX *sctx = NULL, *cctx = NULL;
    struct srv_job *j;

    REQUIRE(tls_server_ctx(tls_path("server", "pem"), tls_path("server", "key"), NULL, &sctx) == 0);
    REQUIRE(tls_client_ctx(tls_path("server", "pem"), NULL, NULL, &cctx) == 0);
    j = server_start(sctx, 0);
    CHECK(unary_ok(h2server_port(j->srv), cctx, "over tls"));
    /* Large enough to need many TLS records both ways. */
    {
        size_t big = 1024 * 1024;
        char *m = malloc(big + 1);
        memset(m, 'q', big);
        m[big] = '\0';
        CHECK(unary_ok(h2server_port(j->srv), cctx, m));
        free(m);
    }
    CHECK(tls_handshake_with_alpn(h2server_port(j->srv), (const unsigned char *)"\x08http/1.1",
                                  9) == 0);
    CHECK(tls_handshake_with_alpn(h2server_port(j->srv), (const unsigned char *)"", 0) == 0);
    /* Plain h2c bytes to a TLS port: refused, server fine. */
    {
        int fd = tcp_connect(h2server_port(j->srv));
        CHECK(write(fd, NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN) ==
              NGHTTP2_CLIENT_MAGIC_LEN);
        CHECK(wait_server_closes(fd));
        close(fd);
    }
    CHECK(unary_ok(h2server_port(j->srv), cctx, "still fine"));
    server_free(j);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

TEST(tls_client_certificates)
{
    SSL_CTX *sctx = NULL, *with = NULL, *without = NULL;
    struct srv_job *j;

    REQUIRE(tls_server_ctx(tls_path("server", "pem"), tls_path("server", "key"),
                           tls_path("client", "pem"), &sctx) == 0);
    REQUIRE(tls_client_ctx(tls_path("server", "pem"), tls_path("client", "pem"),
                           tls_path("client", "key"), &with) == 0);
    REQUIRE(tls_client_ctx(tls_path("server", "pem"), NULL, NULL, &without) == 0);
    j = server_start(sctx, 0);
    CHECK(unary_ok(h2server_port(j->srv), with, "mutual"));
    CHECK(!unary_ok(h2server_port(j->srv), without, "anonymous"));
    CHECK(unary_ok(h2server_port(j->srv), with, "mutual again"));
    server_free(j);
    SSL_CTX_free(with);
    SSL_CTX_free(without);
    SSL_CTX_free(sctx);
}

/* A TLS client that never says hello is dropped at the handshake deadline. */
TEST(tls_silent_client_times_out)
{
    SSL_CTX *sctx = NULL, *cctx = NULL;
    struct srv_job *j;
    int fd;

    REQUIRE(tls_server_ctx(tls_path("server", "pem"), tls_path("server", "key"), NULL, &sctx) == 0);
    REQUIRE(tls_client_ctx(tls_path("server", "pem"), NULL, NULL, &cctx) == 0);
    j = server_start(sctx, 0.2);
    fd = tcp_connect(h2server_port(j->srv));
    CHECK(wait_server_closes(fd));
    close(fd);
    /* A completed handshake then idles out like any connection. */
    struct client *cl = client_new(h2server_port(j->srv), cctx);
    REQUIRE(cl != NULL);
    for (int i = 0; i < TIMEOUT_MS / 5 && !cl->eof; i++)
        client_step(cl, 0);
    CHECK(cl->eof);
    client_free(cl);
    CHECK(wait_until(no_conns, j));
    server_free(j);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

TEST(tls_bad_files)
{
    SSL_CTX *ctx = NULL;

    CHECK(tls_server_ctx("/nonexistent.pem", tls_path("server", "key"), NULL, &ctx) ==
          TLS_ERR_CERT);
    CHECK(tls_server_ctx(tls_path("server", "pem"), tls_path("client", "key"), NULL, &ctx) ==
          TLS_ERR_KEY);
    CHECK(tls_server_ctx(tls_path("server", "pem"), tls_path("server", "key"), "/nonexistent.pem",
                         &ctx) == TLS_ERR_CA);
    CHECK(tls_client_ctx("/nonexistent.pem", NULL, NULL, &ctx) == TLS_ERR_CA);
    CHECK(tls_client_ctx(NULL, tls_path("client", "pem"), NULL, &ctx) == TLS_ERR_KEY);
    CHECK(tls_client_ctx(NULL, NULL, NULL, &ctx) == 0); /* system CA paths */
    SSL_CTX_free(ctx);
}

TEST(bad_listen_address)
{
    struct srv_job j = {.cfg = {.listen = "no-port", .on_call = on_call}};

    run_on_loop(start_job, &j);
    CHECK(j.rv == -EINVAL);
    j.cfg.listen = "127.0.0.1:99999";
    run_on_loop(start_job, &j);
    CHECK(j.rv == -EINVAL);
    j.cfg.listen = "192.0.2.1:0"; /* not an address of this host */
    run_on_loop(start_job, &j);
    CHECK(j.rv == -EADDRNOTAVAIL);
    j.cfg.listen = "127.0.0.1:0";
    j.cfg.on_call = NULL;
    run_on_loop(start_job, &j);
    CHECK(j.rv == -EINVAL);
}

/* ---- HTTP/1.1 on the same port --------------------------------------------------- */

static void h1_on_request(void *arg, struct http_request *req)
{
    char body[256];

    (void)arg;
    snprintf(body, sizeof(body), "h1 %s %s", http_request_method(req), http_request_path(req));
    http_respond(req, 200, "text/plain", body, strlen(body), NULL, 0);
}

struct h1_job {
    struct http_server *http;
    int rv;
};

static void h1_start_job(void *arg)
{
    struct h1_job *j = arg;
    struct http_server_config cfg = {.on_request = h1_on_request};

    j->rv = http_server_start(loop, &cfg, &j->http);
}

static void h1_free_job(void *arg)
{
    http_server_free(((struct h1_job *)arg)->http);
}

/* Read from fd until want shows up in what was read (or the timeout). */
static int read_until(int fd, const char *want)
{
    char got[4096];
    size_t len = 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};

    for (int i = 0; i < TIMEOUT_MS / 10 && len < sizeof(got) - 1; i++) {
        if (poll(&p, 1, 10) > 0) {
            ssize_t n = read(fd, got + len, sizeof(got) - 1 - len);
            if (n <= 0)
                break;
            len += (size_t)n;
            got[len] = '\0';
            if (strstr(got, want))
                return 1;
        }
    }
    return 0;
}

static int send_all(int fd, const void *p, size_t n)
{
    return send(fd, p, n, MSG_NOSIGNAL) == (ssize_t)n;
}

static int send_str(int fd, const char *s)
{
    return send_all(fd, s, strlen(s));
}

TEST(http1_requests_are_handed_over)
{
    static const char settings[] = "\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    struct h1_job h = {0};
    struct srv_job *j = calloc(1, sizeof(*j));
    uint8_t frame_hd[9];
    int port, fd;

    run_on_loop(h1_start_job, &h);
    REQUIRE(h.rv == 0);
    j->cfg = (struct h2server_config){.listen = "127.0.0.1:0",
                                      .auth = test_auth,
                                      .idle_timeout = 0.3,
                                      .on_call = on_call,
                                      .on_close = on_close,
                                      .http1 = h.http};
    run_on_loop(start_job, j);
    REQUIRE(j->rv == 0);
    port = h2server_port(j->srv);
    /* HTTP/1.1 on the gRPC port, kept alive for a second request. */
    fd = tcp_connect(port);
    REQUIRE(send_str(fd, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"));
    CHECK(read_until(fd, "\r\n\r\nh1 GET /health"));
    REQUIRE(send_str(fd, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"));
    CHECK(read_until(fd, "h1 POST /metrics"));
    close(fd);
    /* The request line in pieces: one byte tells. */
    fd = tcp_connect(port);
    REQUIRE(send_str(fd, "G"));
    usleep(20000);
    REQUIRE(send_str(fd, "ET /slow HTTP/1.1\r\nHost: x\r\n\r\n"));
    CHECK(read_until(fd, "h1 GET /slow"));
    close(fd);
    /* HTTP/2 still works, also with its preface in pieces. */
    CHECK(unary_ok(port, NULL, "h2 here"));
    fd = tcp_connect(port);
    REQUIRE(send_all(fd, NGHTTP2_CLIENT_MAGIC, 5));
    usleep(20000);
    REQUIRE(send_all(fd, NGHTTP2_CLIENT_MAGIC + 5, NGHTTP2_CLIENT_MAGIC_LEN - 5));
    REQUIRE(send_all(fd, settings, 9));
    CHECK(read(fd, frame_hd, 9) == 9 && frame_hd[3] == 0x04); /* the server's SETTINGS */
    close(fd);
    /* Neither HTTP/2 nor an HTTP/1.x request line: closed. */
    fd = tcp_connect(port);
    REQUIRE(send_str(fd, "\x16\x03\x01\x02\x00"));
    CHECK(wait_server_closes(fd));
    close(fd);
    /* Nothing at all: closed after min(idle_timeout, 10 s). */
    fd = tcp_connect(port);
    CHECK(wait_server_closes(fd));
    close(fd);
    /* A connection that is still sniffing is closed by shutdown. */
    fd = tcp_connect(port);
    REQUIRE(send_str(fd, "PRI"));
    usleep(20000);
    run_on_loop(shutdown_job, j);
    CHECK(wait_server_closes(fd));
    close(fd);
    CHECK(wait_until(no_conns, j));
    server_free(j);
    run_on_loop(h1_free_job, &h);
}

static void stop_job(void *arg)
{
    (void)arg;
    loop_stop = 1;
}

int main(void)
{
    const char *lvl = getenv("TEST_LOG_LEVEL");
    char tokfile[] = "/tmp/test_h2server_tokens_XXXXXX";
    int fd, have_openssl;

    log_level = LOGL_WARN;
    if (lvl && log_parse_level(lvl, &log_level) != 0)
        return 2;
    fd = mkstemp(tokfile);
    if (fd < 0 || write(fd, "other\n" TOKEN "\n", 6 + sizeof(TOKEN)) < 0 ||
        auth_load(tokfile, &test_auth) != 0)
        return 2;
    close(fd);
    unlink(tokfile);

    loop = ev_loop_new(EVFLAG_AUTO);
    ev_async_init(&job_w, job_cb);
    ev_async_start(loop, &job_w);
    pthread_create(&loop_thread, NULL, loop_main, NULL);
    srv = server_start(NULL, 0);

    RUN(unary_echo);
    RUN(unary_echo_large_and_empty);
    RUN(many_calls_one_connection);
    RUN(headers_reach_the_app);
    RUN(missing_or_wrong_token);
    RUN(oversized_message);
    RUN(bad_framing);
    RUN(app_failure_is_percent_encoded);
    RUN(wrong_content_type_and_method);
    RUN(garbage_instead_of_preface);
    RUN(server_streaming);
    RUN(client_vanishes_before_reply);
    RUN(client_resets_stream);
    RUN(slow_reader_backpressure);
    RUN(streaming_call_then_reply);
    RUN(streaming_call_reset_by_client);
    RUN(oversized_headers_reset_the_stream);
    RUN(client_goaway_closes);
    RUN(accept_survives_fd_exhaustion);
    RUN(many_connections);
    RUN(idle_timeout_closes_slowloris);
    RUN(shutdown_waits_for_open_calls);
    RUN(free_with_open_call_cancels_it);
    RUN(bad_listen_address);
    RUN(http1_requests_are_handed_over);

    snprintf(tls_dir, sizeof(tls_dir), "/tmp/test_h2server_tls_XXXXXX");
    have_openssl = mkdtemp(tls_dir) && make_cert("server") && make_cert("client");
    if (have_openssl) {
        RUN(tls_round_trip_and_alpn);
        RUN(tls_client_certificates);
        RUN(tls_silent_client_times_out);
        RUN(tls_bad_files);
    } else {
        fprintf(stderr, "openssl CLI unavailable: TLS tests skipped\n");
    }
    if (tls_dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", tls_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cleanup of %s failed\n", tls_dir);
    }

    server_free(srv);
    run_on_loop(stop_job, NULL);
    pthread_join(loop_thread, NULL);
    ev_loop_destroy(loop);
    auth_free(test_auth);
    return HARNESS_END();
}
