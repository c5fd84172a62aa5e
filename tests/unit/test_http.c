/* Tests for common/http.c: the request decoder fed whole, in every split and
 * one byte at a time; and real servers on 127.0.0.1:0 (and a unix socket),
 * running in a libev loop on their own thread, driven by raw sockets written
 * here.
 *
 * Threads: everything that touches a server runs on the loop thread, in its
 * callbacks or through run_on_loop(); the test thread only drives sockets and
 * reads the shared `seen` record under its mutex. */
#include <assert.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/http.h"
#include "common/log.h"
#include "tests/unit/harness.h"

#define TIMEOUT_MS      5000
#define BUF_LIT(b, lit) buf_append((b), (lit), sizeof(lit) - 1)
#define MAX_BODY        (64 * 1024)
#define MAX_HEAD        4096

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

/* ---- what the server side saw ------------------------------------------------- */

static pthread_mutex_t seen_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    int requests;
    int cancels;
    int alive_at_cancel;
    struct http_request *held; /* loop thread only */
    uint64_t conn_ids[64];     /* per request, in order */
    int nids;
} seen;

static int seen_get(const int *field)
{
    pthread_mutex_lock(&seen_mu);
    int v = *field;
    pthread_mutex_unlock(&seen_mu);
    return v;
}

static int held_ready(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&seen_mu);
    int v = seen.held != NULL;
    pthread_mutex_unlock(&seen_mu);
    return v;
}

static int wait_until(int (*pred)(void *), void *arg)
{
    for (int i = 0; i < TIMEOUT_MS; i++) {
        if (pred(arg))
            return 1;
        usleep(1000);
    }
    return pred(arg);
}

/* ---- handlers (loop thread) ---------------------------------------------------- */

struct later {
    ev_timer timer;
    struct http_request *req;
};

static void later_cb(struct ev_loop *l, ev_timer *w, int revents)
{
    struct later *lt = container_of(w, struct later, timer);

    (void)l;
    (void)revents;
    http_respond(lt->req, 200, "text/plain", "late", 4, NULL, 0);
    free(lt);
}

static void held_cancel_cb(void *arg, struct http_request *req)
{
    (void)arg;
    pthread_mutex_lock(&seen_mu);
    seen.cancels++;
    seen.alive_at_cancel = http_request_alive(req);
    pthread_mutex_unlock(&seen_mu);
}

/* "<METHOD> <path> <query> <body>" */
static void answer_echo(struct http_request *req)
{
    struct buf b = {0};
    size_t len;
    const uint8_t *body = http_request_body(req, &len);
    char conn[32];

    buf_append(&b, http_request_method(req), strlen(http_request_method(req)));
    buf_append(&b, " ", 1);
    buf_append(&b, http_request_path(req), strlen(http_request_path(req)));
    buf_append(&b, " ", 1);
    buf_append(&b, http_request_query(req), strlen(http_request_query(req)));
    buf_append(&b, " ", 1);
    buf_append(&b, body, len);
    snprintf(conn, sizeof(conn), "%llu", (unsigned long long)http_request_conn_id(req));
    http_respond(req, 200, "text/plain", b.data, b.len,
                 (const struct http_header[]){{"X-Conn", conn}, {"X-Peer", http_request_peer(req)}},
                 2);
    buf_free(&b);
}

static void on_request(void *arg, struct http_request *req)
{
    const char *path = http_request_path(req);

    (void)arg;
    pthread_mutex_lock(&seen_mu);
    seen.requests++;
    if (seen.nids < (int)ARRAY_LEN(seen.conn_ids))
        seen.conn_ids[seen.nids++] = http_request_conn_id(req);
    pthread_mutex_unlock(&seen_mu);
    if (strcmp(path, "/echo") == 0) {
        answer_echo(req);
    } else if (strcmp(path, "/hdr") == 0) {
        const char *v = http_request_header(req, http_request_query(req));
        http_respond(req, 200, "text/plain", v ? v : "(none)", strlen(v ? v : "(none)"), NULL, 0);
    } else if (strcmp(path, "/later") == 0) {
        struct later *lt = calloc(1, sizeof(*lt));
        lt->req = req;
        ev_timer_init(&lt->timer, later_cb, 0.05, 0);
        ev_timer_start(loop, &lt->timer);
    } else if (strcmp(path, "/hold") == 0) {
        http_request_on_cancel(req, held_cancel_cb, NULL);
        pthread_mutex_lock(&seen_mu);
        seen.held = req;
        pthread_mutex_unlock(&seen_mu);
    } else if (strcmp(path, "/error") == 0) {
        http_respond_error(req, 404, "no such \"thing\"\n\x01\xff");
    } else if (strcmp(path, "/status") == 0) {
        http_respond(req, atoi(http_request_query(req)), "text/plain", "body", 4, NULL, 0);
    } else if (strcmp(path, "/badheaders") == 0) {
        http_respond(req, 200, "text/plain", "ok", 2,
                     (const struct http_header[]){{"Bad Name", "v"},
                                                  {"X-Split", "a\r\nInjected: 1"},
                                                  {"Content-Length", "99"},
                                                  {"", "empty"},
                                                  {NULL, "null"},
                                                  {"X-Good", "yes"}},
                     6);
    } else if (strcmp(path, "/badctype") == 0) {
        http_respond(req, 200, "text/plain\r\nInjected: 1", "ok", 2, NULL, 0);
    } else if (strcmp(path, "/big") == 0) {
        size_t n = (size_t)atol(http_request_query(req));
        char *big = malloc(n);
        memset(big, 'b', n);
        http_respond(req, 200, "application/octet-stream", big, n, NULL, 0);
        free(big);
    } else {
        http_respond_error(req, 404, "not found");
    }
}

/* ---- servers ------------------------------------------------------------------------ */

struct srv_job {
    struct http_server_config cfg;
    struct http_server *srv;
    int rv;
    unsigned count;
    int adopt_fd, adopt_rv;
    const char *adopt_pre;
    const char *adopt_peer;
};

static void start_job(void *arg)
{
    struct srv_job *j = arg;
    j->rv = http_server_start(loop, &j->cfg, &j->srv);
}

static void free_job(void *arg)
{
    http_server_free(((struct srv_job *)arg)->srv);
}

static void free_null_job(void *arg)
{
    (void)arg;
    http_server_free(NULL);
}

static void shutdown_job(void *arg)
{
    http_server_shutdown(((struct srv_job *)arg)->srv);
}

static void count_job(void *arg)
{
    struct srv_job *j = arg;
    j->count = http_server_conn_count(j->srv);
}

static void adopt_job(void *arg)
{
    struct srv_job *j = arg;
    const char *p = j->adopt_pre;
    j->adopt_rv = http_server_adopt(j->srv, j->adopt_fd, (const uint8_t *)p, p ? strlen(p) : 0,
                                    j->adopt_peer);
}

static void respond_held_job(void *arg)
{
    int *alive = arg;

    *alive = http_request_alive(seen.held);
    http_respond(seen.held, 200, "text/plain", "held", 4, NULL, 0);
    pthread_mutex_lock(&seen_mu);
    seen.held = NULL;
    pthread_mutex_unlock(&seen_mu);
}

static struct srv_job *server_start_cfg(const struct http_server_config *cfg)
{
    struct srv_job *j = calloc(1, sizeof(*j));

    j->cfg = *cfg;
    j->cfg.on_request = on_request;
    run_on_loop(start_job, j);
    if (j->rv != 0) {
        fprintf(stderr, "server start failed: %d\n", j->rv);
        exit(2);
    }
    return j;
}

static struct srv_job *server_start(void)
{
    return server_start_cfg(&(struct http_server_config){
        .listen = "127.0.0.1:0", .max_body = MAX_BODY, .max_header_bytes = MAX_HEAD});
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

static int no_conns(void *arg)
{
    return server_conns(arg) == 0;
}

static int one_conn(void *arg)
{
    return server_conns(arg) == 1;
}

/* ---- the client -------------------------------------------------------------------- */

struct client {
    int fd;
    struct buf in;
    int eof;
};

struct resp {
    int status;
    char head[4096]; /* the header block, NUL-terminated */
    struct buf body;
};

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

static struct client *client_fd(int fd)
{
    struct client *cl = calloc(1, sizeof(*cl));
    cl->fd = fd;
    return cl;
}

static struct client *client_new(int port)
{
    return client_fd(tcp_connect(port));
}

static void client_free(struct client *cl)
{
    if (!cl)
        return;
    if (cl->fd >= 0)
        close(cl->fd);
    buf_free(&cl->in);
    free(cl);
}

static int send_str(struct client *cl, const char *s)
{
    size_t len = strlen(s);
    return send(cl->fd, s, len, MSG_NOSIGNAL) == (ssize_t)len;
}

/* Read more input (up to ms). 1 got bytes, 0 timeout, -1 EOF or error. */
static int client_fill(struct client *cl, int ms)
{
    struct pollfd p = {.fd = cl->fd, .events = POLLIN};
    char rb[65536];
    ssize_t n;

    if (poll(&p, 1, ms) <= 0)
        return 0;
    n = read(cl->fd, rb, sizeof(rb));
    if (n <= 0) {
        cl->eof = 1;
        return -1;
    }
    buf_append(&cl->in, rb, (size_t)n);
    return 1;
}

static const char *resp_header(const struct resp *r, const char *name, char *out, size_t len)
{
    size_t nl = strlen(name);

    for (const char *p = strstr(r->head, "\r\n"); p && p[2]; p = strstr(p + 2, "\r\n")) {
        const char *line = p + 2;
        if (strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1, *e = strstr(v, "\r\n");
            while (*v == ' ')
                v++;
            snprintf(out, len, "%.*s", (int)(e ? e - v : (long)strlen(v)), v);
            return out;
        }
    }
    return NULL;
}

/* Read one response (head_only: the request was HEAD). 1 ok, 0 not complete. */
static int read_response(struct client *cl, struct resp *r, int head_only)
{
    int64_t deadline = mono_us() + TIMEOUT_MS * 1000LL;
    const char *end = NULL;
    size_t head_len, need = 0;
    char v[64];

    memset(r, 0, sizeof(*r));
    while (!(end = memmem(cl->in.data ? (const char *)buf_head(&cl->in) : "", buf_avail(&cl->in),
                          "\r\n\r\n", 4))) {
        if (mono_us() > deadline || client_fill(cl, 10) < 0)
            return 0;
    }
    head_len = (size_t)(end - (const char *)buf_head(&cl->in)) + 4;
    if (head_len >= sizeof(r->head))
        return 0;
    memcpy(r->head, buf_head(&cl->in), head_len);
    r->head[head_len - 2] = '\0'; /* keep the last line's CRLF for resp_header */
    buf_consume(&cl->in, head_len);
    if (sscanf(r->head, "HTTP/1.1 %d ", &r->status) != 1)
        return 0;
    if (!head_only && r->status >= 200 && r->status != 204 && r->status != 304 &&
        resp_header(r, "Content-Length", v, sizeof(v)))
        need = (size_t)atol(v);
    while (buf_avail(&cl->in) < need) {
        if (mono_us() > deadline || client_fill(cl, 10) < 0)
            return 0;
    }
    buf_append(&r->body, buf_head(&cl->in), need);
    buf_append(&r->body, "", 1);
    r->body.len--;
    buf_consume(&cl->in, need);
    return 1;
}

/* The server closes: EOF (or a reset) within the timeout, unread input skipped. */
static int wait_closed(struct client *cl)
{
    int64_t deadline = mono_us() + TIMEOUT_MS * 1000LL;

    while (!cl->eof && mono_us() < deadline)
        (void)client_fill(cl, 10);
    return cl->eof;
}

static int body_is(const struct resp *r, const char *want)
{
    int ok = r->body.len == strlen(want) && memcmp(r->body.data, want, r->body.len) == 0;

    if (!ok)
        fprintf(stderr, "  body: '%.*s', wanted '%s'\n", (int)r->body.len,
                r->body.data ? (const char *)r->body.data : "", want);
    return ok;
}

static int header_is(const struct resp *r, const char *name, const char *want)
{
    char v[512];
    const char *got = resp_header(r, name, v, sizeof(v));

    if (!want)
        return got == NULL;
    return got && strcmp(got, want) == 0;
}

/* One request on a fresh connection; 1 if the answer arrived. */
static int one_shot(int port, const char *req, struct resp *r)
{
    struct client *cl = client_new(port);
    int ok = send_str(cl, req) && read_response(cl, r, 0);

    client_free(cl);
    return ok;
}

/* An automatic error: status, exact content-type and body, closed. */
static int is_error(int port, const char *req, int status, const char *message)
{
    struct client *cl = client_new(port);
    struct resp r;
    char want[512];
    int ok;

    snprintf(want, sizeof(want), "{\"message\":\"%s\"}", message);
    ok = send_str(cl, req) && read_response(cl, &r, 0);
    ok = ok && r.status == status && header_is(&r, "Content-Type", "application/json") &&
         header_is(&r, "Connection", "close") && body_is(&r, want) && wait_closed(cl);
    if (!ok)
        fprintf(stderr, "  request %.40s... got status %d\n", req, r.status);
    buf_free(&r.body);
    client_free(cl);
    return ok;
}

static struct srv_job *srv; /* the shared server */

/* ---- decoder ------------------------------------------------------------------------ */

/* Feed all of in to a fresh decoder in chunks of `chunk` bytes (0: at once);
 * describe each request and the final error into out. */
static void decode_all(const char *in, size_t len, size_t chunk, struct buf *out)
{
    struct http_decoder *d = http_decoder_new(1024, 512);
    size_t off = 0;

    while (off < len) {
        size_t n = chunk ? MIN(chunk, len - off) : len - off, used;
        int rv = http_decoder_feed(d, (const uint8_t *)in + off, n, &used);
        char line[1024];

        off += used;
        if (rv == HTTP_DECODE_HEAD) {
            const struct http_request *r = http_decoder_request(d);
            snprintf(line, sizeof(line), "head %s %s cont=%d\n", http_request_method(r),
                     http_request_target(r), http_decoder_expects_continue(d));
            buf_append(out, line, strlen(line));
        } else if (rv == HTTP_DECODE_REQUEST) {
            const struct http_request *r = http_decoder_request(d);
            size_t blen;
            const uint8_t *body = http_request_body(r, &blen);
            snprintf(line, sizeof(line), "req %s path=%s query=%s ka=%d 1.%d fields=%u body=%.*s\n",
                     http_request_method(r), http_request_path(r), http_request_query(r),
                     http_request_keep_alive(r), http_request_minor(r),
                     http_request_header_count(r), (int)blen, body);
            buf_append(out, line, strlen(line));
            http_decoder_next(d);
        } else if (rv == HTTP_DECODE_ERROR) {
            int status;
            const char *msg = http_decoder_error(d, &status);
            snprintf(line, sizeof(line), "error %d %s\n", status, msg);
            buf_append(out, line, strlen(line));
            CHECK(http_decoder_feed(d, (const uint8_t *)"x", 1, &used) == HTTP_DECODE_ERROR &&
                  used == 0);
            break;
        } else {
            CHECK(used == n);
        }
    }
    buf_append(out, "", 1);
    http_decoder_free(d);
}

static const char *const decoder_cases[] = {
    "GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Trail:  v  \t\r\n\r\n"
    "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello"
    "PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    "3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n"
    "GET http://h/abs HTTP/1.0\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n  folded\r\n\r\n",
    "BREW / HTTP/1.1\r\n\r\n",
    "GET / HTTP/1.1\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nBad Name: v\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nX : v\r\n\r\n",
    "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    "GET /\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1025\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n401\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n",
    "CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nX-Long: "
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    "\r\n\r\n",
    "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
    "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "GET http://h HTTP/1.1\r\nHost: h\r\n\r\n",
    "GET http://h:99999/x HTTP/1.1\r\nHost: h\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n",
    /* Upgrade is ignored (answered in HTTP/1.1): parsing goes on. */
    "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    "GET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
};

TEST(decoder_results_do_not_depend_on_chunking)
{
    static const char *const want[] = {
        "head GET /a?b=c cont=0\nreq GET path=/a query=b=c ka=1 1.1 fields=2 body=\n"
        "head POST /p cont=1\nreq POST path=/p query= ka=1 1.1 fields=3 body=hello\n"
        "head PUT /c cont=0\nreq PUT path=/c query= ka=1 1.1 fields=2 body=abcde\n"
        "head GET http://h/abs cont=0\nreq GET path=/abs query= ka=0 1.0 fields=0 body=\n",
        "head OPTIONS * cont=0\nreq OPTIONS path=* query= ka=0 1.1 fields=2 body=\n",
        "head GET / cont=0\nreq GET path=/ query= ka=1 1.1 fields=2 body=\n",
        "error 400 malformed request: invalid HTTP method\n",
        "error 400 missing Host header\n",
        "error 400 repeated Host header\n",
        "error 400 invalid header field name\n",
        "error 400 invalid header field name\n",
        "error 505 HTTP version 2.0 is not supported\n",
        "error 505 HTTP version 0.9 is not supported\n",
        "error 501 transfer coding \"gzip\" is not supported\n",
        "error 400 invalid Transfer-Encoding\n",
        "error 400 Transfer-Encoding in an HTTP/1.0 request\n",
        "error 400 malformed request: unexpected content-length header\n",
        "error 400 malformed request: unexpected content-length header\n",
        "error 413 request body of 1025 bytes exceeds the limit of 1024 bytes\n",
        "head POST / cont=0\nerror 413 request body exceeds the limit of 1024 bytes\n",
        "error 417 unsupported expectation\n",
        "error 400 CONNECT is not supported\n",
        "error 431 request headers exceed 512 bytes\n",
        "head GET / cont=0\nreq GET path=/ query= ka=1 1.1 fields=1 body=\n",
        "error 400 malformed request: invalid character in header\n",
        "error 400 malformed request: invalid HTTP method\n",
        "head GET http://h cont=0\nreq GET path=/ query= ka=1 1.1 fields=1 body=\n",
        "error 400 invalid request target\n",
        "error 400 malformed request: invalid character in header\n",
        "error 400 invalid Transfer-Encoding\n",
        "head GET / cont=0\nreq GET path=/ query= ka=1 1.1 fields=3 body=\n"
        "head GET /2 cont=0\nreq GET path=/2 query= ka=1 1.1 fields=1 body=\n",
    };

    static_assert(ARRAY_LEN(want) == ARRAY_LEN(decoder_cases), "one expectation per case");
    for (size_t i = 0; i < ARRAY_LEN(decoder_cases); i++) {
        const char *in = decoder_cases[i];
        size_t len = strlen(in);
        struct buf whole = {0};

        if (i == 21) /* the NUL case: strlen stops early */
            len = 35;
        decode_all(in, len, 0, &whole);
        if (strcmp((const char *)whole.data, want[i]) != 0)
            fprintf(stderr, "  case %zu:\n%s  wanted:\n%s", i, (const char *)whole.data, want[i]);
        CHECK(strcmp((const char *)whole.data, want[i]) == 0);
        /* One byte at a time, and every other chunk size up to 64. */
        for (size_t chunk = 1; chunk <= 64; chunk++) {
            struct buf part = {0};
            decode_all(in, len, chunk, &part);
            if (strcmp((const char *)part.data, want[i]) != 0) {
                fprintf(stderr, "  case %zu chunk %zu:\n%s", i, chunk, (const char *)part.data);
                CHECK(0);
                chunk = 64;
            }
            buf_free(&part);
        }
        buf_free(&whole);
    }
}

TEST(decoder_field_limit_and_lookup)
{
    struct http_decoder *d = http_decoder_new(0, 65536);
    struct buf in = {0};
    size_t used;
    int status;
    const char *name, *value;

    BUF_LIT(&in, "GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\n\r\n");
    CHECK(http_decoder_feed(d, in.data, in.len, &used) == HTTP_DECODE_HEAD);
    CHECK(http_decoder_feed(d, in.data + used, in.len - used, &used) == HTTP_DECODE_REQUEST);
    /* Until http_decoder_next, it stays at the request and consumes nothing. */
    CHECK(http_decoder_feed(d, in.data, in.len, &used) == HTTP_DECODE_REQUEST && used == 0);
    const struct http_request *r = http_decoder_request(d);
    CHECK(strcmp(http_request_header(r, "X-a"), "1") == 0); /* first wins, any case */
    CHECK(http_request_header(r, "missing") == NULL);
    http_request_header_at(r, 2, &name, &value);
    CHECK(strcmp(name, "x-a") == 0 && strcmp(value, "2") == 0);
    http_decoder_next(d);
    http_decoder_free(d);
    /* 128 fields pass, 129 do not. */
    for (int extra = 127; extra <= 128; extra++) {
        d = http_decoder_new(0, 65536);
        buf_reset(&in);
        buf_append(&in, "GET / HTTP/1.1\r\nHost: h\r\n", 25);
        for (int i = 0; i < extra; i++)
            buf_append(&in, "A: b\r\n", 6);
        buf_append(&in, "\r\n", 2);
        (void)http_decoder_feed(d, in.data, in.len, &used);
        (void)http_decoder_error(d, &status);
        CHECK(status == (extra == 128 ? 431 : 0));
        http_decoder_free(d);
    }
    CHECK(http_decoder_error(d = http_decoder_new(0, 0), NULL)[0] == '\0');
    CHECK(http_decoder_request(d) == NULL && !http_decoder_started(d));
    http_decoder_free(d);
    http_decoder_free(NULL);
    buf_free(&in);
}

/* Feed text to a decoder with the given limits; the final error status. */
static int decode_status(const char *text, size_t len, size_t max_body, size_t max_head, char *msg,
                         size_t msg_len)
{
    struct http_decoder *d = http_decoder_new(max_body, max_head);
    size_t off = 0, used;
    int status = 0, rv;

    while (off < len) {
        rv = http_decoder_feed(d, (const uint8_t *)text + off, len - off, &used);
        off += used;
        if (rv == HTTP_DECODE_ERROR)
            break;
        if (rv == HTTP_DECODE_REQUEST)
            http_decoder_next(d);
    }
    snprintf(msg, msg_len, "%s", http_decoder_error(d, &status));
    http_decoder_free(d);
    return status;
}

TEST(decoder_large_limits_and_framing)
{
    struct buf t = {0};
    char msg[160];

    /* A 70 KB target under a 200 KB head limit: 414. */
    BUF_LIT(&t, "GET /");
    for (int i = 0; i < 70000; i++)
        BUF_LIT(&t, "a");
    BUF_LIT(&t, " HTTP/1.1\r\nHost: h\r\n\r\n");
    CHECK(decode_status((const char *)t.data, t.len, 0, 200000, msg, sizeof(msg)) == 414);
    CHECK(strcmp(msg, "request target exceeds 65535 bytes") == 0);
    /* Above http_parser's own 80 KiB header limit: 431 too. */
    buf_reset(&t);
    BUF_LIT(&t, "GET / HTTP/1.1\r\nHost: h\r\nX: ");
    for (int i = 0; i < 90000; i++)
        BUF_LIT(&t, "v");
    BUF_LIT(&t, "\r\n\r\n");
    CHECK(decode_status((const char *)t.data, t.len, 0, 200000, msg, sizeof(msg)) == 431);
    CHECK(strcmp(msg, "request headers exceed 200000 bytes") == 0);
    /* Tiny chunks with huge extensions: the framing is bounded too. */
    buf_reset(&t);
    BUF_LIT(&t, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int c = 0; c < 16; c++) {
        BUF_LIT(&t, "1;");
        for (int i = 0; i < 5000; i++)
            BUF_LIT(&t, "e");
        BUF_LIT(&t, "\r\nx\r\n");
    }
    CHECK(decode_status((const char *)t.data, t.len, 16, 0, msg, sizeof(msg)) == 413);
    CHECK(strcmp(msg, "request body framing exceeds the limit") == 0);
    buf_free(&t);
}

TEST(json_strings)
{
    struct buf b = {0};
    const char in[] = "q\" b\\ \n\t\x01 é € 𝄞 \xff \xc3 \xe0\x80\x80 \xed\xa0\x80 \xf4\x90\x80\x80"
                      " \xe2\x82\x41 \xe2\x82";
    const char want[] = "\"q\\\" b\\\\ \\u000a\\u0009\\u0001 é € 𝄞 \\ufffd \\ufffd "
                        "\\ufffd\\ufffd\\ufffd \\ufffd\\ufffd\\ufffd \\ufffd\\ufffd\\ufffd\\ufffd"
                        " \\ufffd\\ufffdA \\ufffd\\ufffd\"";

    http_json_string(&b, in, sizeof(in) - 1);
    buf_append(&b, "", 1);
    if (strcmp((const char *)b.data, want) != 0)
        fprintf(stderr, "  got %s\n", (const char *)b.data);
    CHECK(strcmp((const char *)b.data, want) == 0);
    buf_free(&b);
}

/* ---- server tests ------------------------------------------------------------------ */

TEST(keep_alive_several_requests)
{
    struct client *cl = client_new(http_server_port(srv->srv));
    char first_conn[64] = "", v[64];

    for (int i = 0; i < 5; i++) {
        struct resp r;
        char req[128], want[64];
        snprintf(req, sizeof(req),
                 "POST /echo?i=%d HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n%02d", i, i);
        snprintf(want, sizeof(want), "POST /echo i=%d %02d", i, i);
        REQUIRE(send_str(cl, req) && read_response(cl, &r, 0));
        CHECK(r.status == 200 && body_is(&r, want));
        CHECK(header_is(&r, "Content-Type", "text/plain"));
        CHECK(header_is(&r, "Connection", NULL)); /* HTTP/1.1: keep-alive is the default */
        CHECK(resp_header(&r, "Date", v, sizeof(v)) && strstr(v, " GMT"));
        CHECK(resp_header(&r, "X-Peer", v, sizeof(v)) && strncmp(v, "127.0.0.1:", 10) == 0);
        resp_header(&r, "X-Conn", v, sizeof(v));
        if (i == 0)
            snprintf(first_conn, sizeof(first_conn), "%s", v);
        CHECK(strcmp(v, first_conn) == 0); /* all on one connection */
        buf_free(&r.body);
    }
    CHECK(server_conns(srv) == 1);
    client_free(cl);
    CHECK(wait_until(no_conns, srv));
}

TEST(pipelined_requests_answered_in_order)
{
    struct client *cl = client_new(http_server_port(srv->srv));
    struct resp r;

    /* The middle one is answered later, from a timer; the last must wait. */
    REQUIRE(send_str(cl, "GET /echo?1 HTTP/1.1\r\nHost: t\r\n\r\n"
                         "GET /later HTTP/1.1\r\nHost: t\r\n\r\n"
                         "POST /echo?3 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
                         "GET /echo?4 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                         "GET /echo?5 HTTP/1.1\r\nHost: t\r\n\r\n"));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "GET /echo 1 "));
    buf_free(&r.body);
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "late"));
    buf_free(&r.body);
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "POST /echo 3 abc"));
    buf_free(&r.body);
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "GET /echo 4 ") && header_is(&r, "Connection", "close"));
    buf_free(&r.body);
    /* The one after "Connection: close" is dropped, and the server closes. */
    CHECK(wait_closed(cl) && buf_avail(&cl->in) == 0);
    client_free(cl);
}

TEST(async_answer_from_a_timer)
{
    struct resp r;
    int64_t t0 = mono_us();

    REQUIRE(one_shot(http_server_port(srv->srv), "GET /later HTTP/1.1\r\nHost: t\r\n\r\n", &r));
    CHECK(r.status == 200 && body_is(&r, "late"));
    CHECK(mono_us() - t0 >= 45000);
    buf_free(&r.body);
}

TEST(client_disconnects_before_the_answer)
{
    struct client *cl = client_new(http_server_port(srv->srv));
    int cancels = seen_get(&seen.cancels), alive = -1;

    REQUIRE(send_str(cl, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n"));
    REQUIRE(wait_until(held_ready, NULL));
    client_free(cl);
    for (int i = 0; i < TIMEOUT_MS && seen_get(&seen.cancels) == cancels; i++)
        usleep(1000);
    CHECK(seen_get(&seen.cancels) == cancels + 1);
    CHECK(seen_get(&seen.alive_at_cancel) == 0);
    /* The late answer frees the orphaned request (ASan would see a leak). */
    run_on_loop(respond_held_job, &alive);
    CHECK(alive == 0);
    CHECK(wait_until(no_conns, srv));
}

TEST(held_request_answered_while_alive)
{
    struct client *cl = client_new(http_server_port(srv->srv));
    struct resp r;
    int alive = -1;

    REQUIRE(send_str(cl, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n"));
    REQUIRE(wait_until(held_ready, NULL));
    run_on_loop(respond_held_job, &alive);
    CHECK(alive == 1);
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "held"));
    buf_free(&r.body);
    client_free(cl);
}

TEST(chunked_request_body)
{
    struct client *cl = client_new(http_server_port(srv->srv));
    struct resp r;

    REQUIRE(send_str(cl, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "5;name=value\r\nhello\r\n"));
    usleep(20000);
    REQUIRE(send_str(cl, "1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: yes\r\n\r\n"));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "POST /echo  hello 0123456789"));
    buf_free(&r.body);
    /* The connection stays usable after a chunked request. */
    REQUIRE(send_str(cl, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n"));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "GET /echo  "));
    buf_free(&r.body);
    client_free(cl);
}

TEST(expect_100_continue)
{
    struct client *cl = client_new(http_server_port(srv->srv));
    struct resp r;

    REQUIRE(send_str(cl, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                         "Expect: 100-continue\r\n\r\n"));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 100 && r.body.len == 0);
    buf_free(&r.body);
    REQUIRE(send_str(cl, "12345"));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "POST /echo  12345"));
    buf_free(&r.body);
    /* Body sent along with the head: no 100. */
    REQUIRE(send_str(cl, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
                         "Expect: 100-Continue\r\n\r\nok"));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "POST /echo  ok"));
    buf_free(&r.body);
    client_free(cl);
    /* Too large: 413 instead of 100, before any body is sent. */
    CHECK(is_error(http_server_port(srv->srv),
                   "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n"
                   "Expect: 100-continue\r\n\r\n",
                   413, "request body of 100000 bytes exceeds the limit of 65536 bytes"));
    CHECK(is_error(http_server_port(srv->srv),
                   "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: teapot\r\n\r\n", 417,
                   "unsupported expectation"));
}

TEST(oversized_body_413)
{
    int port = http_server_port(srv->srv);
    struct client *cl;
    struct resp r;
    char *body = malloc(MAX_BODY + 2);
    char head[256];

    CHECK(is_error(port, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 65537\r\n\r\n", 413,
                   "request body of 65537 bytes exceeds the limit of 65536 bytes"));
    /* Chunked: found while reading. */
    cl = client_new(port);
    memset(body, 'x', MAX_BODY + 1);
    snprintf(head, sizeof(head),
             "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n",
             MAX_BODY + 1);
    body[MAX_BODY + 1] = '\0';
    REQUIRE(send_str(cl, head));
    (void)send_str(cl, body); /* the server may already have closed its side */
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 413 && header_is(&r, "Content-Type", "application/json"));
    CHECK(body_is(&r, "{\"message\":\"request body exceeds the limit of 65536 bytes\"}"));
    CHECK(wait_closed(cl));
    buf_free(&r.body);
    client_free(cl);
    /* Exactly at the limit is fine. */
    cl = client_new(port);
    snprintf(head, sizeof(head), "POST /big?1 HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n",
             MAX_BODY);
    body[MAX_BODY] = '\0';
    REQUIRE(send_str(cl, head) && send_str(cl, body));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "b"));
    buf_free(&r.body);
    client_free(cl);
    free(body);
}

/* The client sends a large body the server refuses, and only then reads: it
 * must get the 413, not a connection reset (lingering close). */
TEST(refused_body_still_lets_the_client_read_the_answer)
{
    size_t n = 2 * 1024 * 1024;
    char *body = malloc(n + 1);
    struct client *cl = client_new(http_server_port(srv->srv));
    struct resp r;
    char head[256];
    size_t off = 0;

    memset(body, 'y', n);
    body[n] = '\0';
    snprintf(head, sizeof(head), "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n",
             n);
    REQUIRE(send_str(cl, head));
    while (off < n) {
        ssize_t w = send(cl->fd, body + off, n - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    CHECK(off == n);
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 413);
    CHECK(wait_closed(cl));
    buf_free(&r.body);
    client_free(cl);
    free(body);
}

TEST(pipelined_big_answers_under_backpressure)
{
    struct client *cl = client_new(http_server_port(srv->srv));
    struct resp r;
    int ok = 0;

    /* Each answer is over the output high-water mark: the server parses the
     * next request only as the client reads, while more requests arrive. */
    for (int i = 0; i < 4; i++)
        REQUIRE(send_str(cl, "GET /big?1500000 HTTP/1.1\r\nHost: t\r\n\r\n"));
    REQUIRE(read_response(cl, &r, 0));
    ok += r.status == 200 && r.body.len == 1500000;
    buf_free(&r.body);
    REQUIRE(send_str(cl, "GET /big?1500000 HTTP/1.1\r\nHost: t\r\n\r\n"
                         "GET /echo?last HTTP/1.1\r\nHost: t\r\n\r\n"));
    for (int i = 0; i < 4; i++) {
        REQUIRE(read_response(cl, &r, 0));
        ok += r.status == 200 && r.body.len == 1500000 && r.body.data[1499999] == 'b';
        buf_free(&r.body);
    }
    CHECK(ok == 5);
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "GET /echo last "));
    buf_free(&r.body);
    client_free(cl);
}

TEST(request_arriving_while_one_is_held)
{
    struct client *cl = client_new(http_server_port(srv->srv));
    struct resp r;
    int alive = -1;

    REQUIRE(send_str(cl, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n"));
    REQUIRE(wait_until(held_ready, NULL));
    REQUIRE(send_str(cl, "GET /echo?after HTTP/1.1\r\nHost: t\r\n\r\n"));
    usleep(50000); /* it is read (and buffered) while the first is out */
    run_on_loop(respond_held_job, &alive);
    CHECK(alive == 1);
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "held"));
    buf_free(&r.body);
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "GET /echo after "));
    buf_free(&r.body);
    client_free(cl);
}

TEST(half_close_with_a_large_answer_pending)
{
    struct client *cl = client_new(http_server_port(srv->srv));
    struct resp r;

    REQUIRE(send_str(cl, "GET /big?16000000 HTTP/1.1\r\nHost: t\r\n\r\n"));
    REQUIRE(shutdown(cl->fd, SHUT_WR) == 0);
    usleep(100000); /* the server sees EOF while most of the answer is queued */
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && r.body.len == 16000000);
    CHECK(wait_closed(cl));
    buf_free(&r.body);
    client_free(cl);
    CHECK(wait_until(no_conns, srv));
    /* The same with a closing answer: EOF arrives while it drains. */
    cl = client_new(http_server_port(srv->srv));
    REQUIRE(send_str(cl, "GET /big?16000000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"));
    usleep(20000);
    REQUIRE(shutdown(cl->fd, SHUT_WR) == 0);
    usleep(100000);
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && r.body.len == 16000000 && header_is(&r, "Connection", "close"));
    CHECK(wait_closed(cl));
    buf_free(&r.body);
    client_free(cl);
    CHECK(wait_until(no_conns, srv));
}

TEST(half_close_while_the_answer_is_still_queued)
{
    struct client *cl = calloc(1, sizeof(*cl));
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)http_server_port(srv->srv))};
    int rcv = 4096;
    struct resp r;

    /* A small receive window and an answer larger than the socket buffers:
     * the server reads the client's EOF (once its output is under the
     * high-water mark) while part of the answer is still queued. */
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cl->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(cl->fd >= 0);
    setsockopt(cl->fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    REQUIRE(connect(cl->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    REQUIRE(send_str(cl, "GET /big?6000000 HTTP/1.1\r\nHost: t\r\n\r\n"));
    REQUIRE(shutdown(cl->fd, SHUT_WR) == 0);
    usleep(100000);
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && r.body.len == 6000000);
    CHECK(wait_closed(cl));
    buf_free(&r.body);
    client_free(cl);
    CHECK(wait_until(no_conns, srv));
}

static void reset_close(struct client *cl)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};

    setsockopt(cl->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    client_free(cl); /* sends RST */
}

TEST(client_resets_while_reading_and_writing)
{
    struct client *cl = client_new(http_server_port(srv->srv));

    /* Mid-request: the server's read fails. */
    REQUIRE(send_str(cl, "GET /echo HTTP/1.1\r\n"));
    usleep(20000);
    reset_close(cl);
    CHECK(wait_until(no_conns, srv));
    /* Mid-answer: the server's write fails. */
    cl = client_new(http_server_port(srv->srv));
    REQUIRE(send_str(cl, "GET /big?16000000 HTTP/1.1\r\nHost: t\r\n\r\n"));
    usleep(50000);
    reset_close(cl);
    CHECK(wait_until(no_conns, srv));
    /* The server still serves. */
    struct resp r;
    CHECK(one_shot(http_server_port(srv->srv), "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n", &r) &&
          r.status == 200);
    buf_free(&r.body);
}

TEST(refused_client_that_keeps_sending_is_cut_off)
{
    struct client *cl = client_new(http_server_port(srv->srv));
    struct timeval tv = {.tv_sec = 5};
    char chunk[65536];
    size_t sent = 0;

    memset(chunk, 'z', sizeof(chunk));
    setsockopt(cl->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    REQUIRE(send_str(cl, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n"));
    while (sent < 128u * 1024 * 1024) {
        ssize_t w = send(cl->fd, chunk, sizeof(chunk), MSG_NOSIGNAL);
        if (w <= 0)
            break;
        sent += (size_t)w;
    }
    CHECK(sent < 128u * 1024 * 1024); /* the server closed on us */
    client_free(cl);
    CHECK(wait_until(no_conns, srv));
}

TEST(lingering_ends_after_its_timeout)
{
    struct client *cl = client_new(http_server_port(srv->srv));
    struct resp r;
    int64_t t0 = mono_us();

    /* The client reads the error and the FIN, but never closes. */
    REQUIRE(send_str(cl, "BAD\r\n\r\n") && read_response(cl, &r, 0) && r.status == 400);
    CHECK(wait_closed(cl));
    CHECK(server_conns(srv) == 1);
    CHECK(wait_until(no_conns, srv));
    CHECK(mono_us() - t0 >= 1500000);
    buf_free(&r.body);
    client_free(cl);
}

TEST(ipv6_listener)
{
    struct srv_job j = {.cfg = {.listen = "[::1]:0", .on_request = on_request}};
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    struct client *cl;
    struct resp r;
    char peer[64];
    int fd;

    run_on_loop(start_job, &j);
    if (j.rv != 0) {
        fprintf(stderr, "  no IPv6 loopback: skipped\n");
        return;
    }
    sa.sin6_port = htons((uint16_t)http_server_port(j.srv));
    fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    cl = client_fd(fd);
    REQUIRE(send_str(cl, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n") && read_response(cl, &r, 0));
    CHECK(r.status == 200 && resp_header(&r, "X-Peer", peer, sizeof(peer)) &&
          strncmp(peer, "[::1]:", 6) == 0);
    buf_free(&r.body);
    client_free(cl);
    run_on_loop(free_job, &j);
}

TEST(refusal_flood_pauses_accepting)
{
    enum { N = 80 };
    struct srv_job *j =
        server_start_cfg(&(struct http_server_config){.listen = "127.0.0.1:0", .max_conns = 1});
    int port = http_server_port(j->srv), refused = 0, dropped = 0;
    struct client *keep = client_new(port), *cl[N];
    struct resp r;

    REQUIRE(send_str(keep, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n") && read_response(keep, &r, 0));
    buf_free(&r.body);
    for (int i = 0; i < N; i++)
        cl[i] = client_new(port);
    /* 64 refusals linger (their clients do not close); the rest are dropped
     * without an answer while accepting pauses, until lingering ends. */
    for (int i = 0; i < N; i++) {
        if (read_response(cl[i], &r, 0) && r.status == 503)
            refused++;
        else if (cl[i]->eof && buf_avail(&cl[i]->in) == 0)
            dropped++;
        buf_free(&r.body);
    }
    CHECK(refused >= 64 && refused + dropped == N && dropped > 0);
    for (int i = 0; i < N; i++)
        client_free(cl[i]);
    REQUIRE(send_str(keep, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n") && read_response(keep, &r, 0));
    CHECK(r.status == 200);
    buf_free(&r.body);
    client_free(keep);
    CHECK(wait_until(no_conns, j));
    server_free(j);
}

/* The h2c callback: answer "taken:<bytes>" on the fd, then close it. */
static void on_h2c(void *arg, int fd, const uint8_t *pre, size_t n, const char *peer)
{
    char msg[64];
    int len = snprintf(msg, sizeof(msg), "taken:%zu:%.3s:%s", n, (const char *)pre + 24, peer);

    (void)arg;
    if (write(fd, msg, (size_t)len) != len)
        perror("write");
    close(fd);
}

TEST(h2c_preface_is_handed_over)
{
    struct srv_job *j =
        server_start_cfg(&(struct http_server_config){.listen = "127.0.0.1:0", .on_h2c = on_h2c});
    int port = http_server_port(j->srv);
    struct client *cl = client_new(port);
    struct resp r;

    REQUIRE(send_str(cl, "PRI"));
    usleep(20000);
    REQUIRE(send_str(cl, " * HTTP/2.0\r\n\r\nSM\r\n\r\nabc"));
    CHECK(wait_closed(cl));
    buf_append(&cl->in, "", 1);
    if (strncmp((const char *)cl->in.data, "taken:27:abc:127.0.0.1:", 23) != 0)
        fprintf(stderr, "  got: %s\n", (const char *)cl->in.data);
    CHECK(strncmp((const char *)cl->in.data, "taken:27:abc:127.0.0.1:", 23) == 0);
    client_free(cl);
    /* A method that starts like the preface is HTTP/1.1 after all. */
    cl = client_new(port);
    REQUIRE(send_str(cl, "P"));
    usleep(20000);
    REQUIRE(send_str(cl, "OST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx"));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "POST /echo  x"));
    buf_free(&r.body);
    client_free(cl);
    CHECK(wait_until(no_conns, j));
    server_free(j);
}

TEST(malformed_requests_400_and_friends)
{
    int port = http_server_port(srv->srv);

    CHECK(is_error(port, "GARBAGE\r\n\r\n", 400, "malformed request: invalid HTTP method"));
    CHECK(is_error(port, "GET / HTTP/1.1\r\n\r\n", 400, "missing Host header"));
    CHECK(is_error(port, "GET / HTTP/1.1\r\nHost: a\r\nBad Name: v\r\n\r\n", 400,
                   "invalid header field name"));
    CHECK(is_error(port, "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400,
                   "malformed request: LF character expected"));
    CHECK(is_error(port, "GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505,
                   "HTTP version 3.0 is not supported"));
    CHECK(is_error(port, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501,
                   "transfer coding \\\"gzip\\\" is not supported"));
    CHECK(
        is_error(port, "CONNECT a:1 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "CONNECT is not supported"));
    CHECK(is_error(port, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400,
                   "malformed request: invalid HTTP method"));
    /* A good request after a bad one on another connection is unaffected. */
    struct resp r;
    CHECK(one_shot(port, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n", &r) && r.status == 200);
    buf_free(&r.body);
}

TEST(header_flood_431)
{
    int port = http_server_port(srv->srv);
    struct buf req = {0};
    struct client *cl;
    struct resp r;

    buf_append(&req, "GET /echo HTTP/1.1\r\nHost: t\r\n", 29);
    while (req.len < MAX_HEAD + 100)
        buf_append(&req, "X-Flood: 0123456789abcdef0123456789abcdef0123456789abcdef\r\n", 59);
    buf_append(&req, "\r\n", 3);
    CHECK(is_error(port, (const char *)req.data, 431, "request headers exceed 4096 bytes"));
    /* Never-ending headers: answered once the limit is reached. */
    cl = client_new(port);
    req.data[req.len - 3] = '\0';
    REQUIRE(send_str(cl, (const char *)req.data));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 431);
    CHECK(wait_closed(cl));
    buf_free(&r.body);
    client_free(cl);
    buf_free(&req);
}

TEST(head_and_bodyless_statuses)
{
    struct client *cl = client_new(http_server_port(srv->srv));
    struct resp r;

    REQUIRE(send_str(cl, "HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\n"));
    REQUIRE(read_response(cl, &r, 1));
    CHECK(r.status == 200 && header_is(&r, "Content-Length", "12") && r.body.len == 0);
    buf_free(&r.body);
    REQUIRE(send_str(cl, "GET /status?204 HTTP/1.1\r\nHost: t\r\n\r\n"));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 204 && header_is(&r, "Content-Length", NULL));
    buf_free(&r.body);
    /* The 204 carried no body: the next answer parses cleanly. */
    REQUIRE(send_str(cl, "GET /status?299 HTTP/1.1\r\nHost: t\r\n\r\n"));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 299 && body_is(&r, "body") && strstr(r.head, " 299 Unknown\r\n"));
    buf_free(&r.body);
    /* Not a final status: the server answers 500 instead. */
    REQUIRE(send_str(cl, "GET /status?101 HTTP/1.1\r\nHost: t\r\n\r\n"));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 500 && body_is(&r, "{\"message\":\"internal error\"}"));
    buf_free(&r.body);
    REQUIRE(send_str(cl, "GET /error HTTP/1.1\r\nHost: t\r\n\r\n"));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 404 && header_is(&r, "Content-Type", "application/json"));
    CHECK(body_is(&r, "{\"message\":\"no such \\\"thing\\\"\\u000a\\u0001\\ufffd\"}"));
    CHECK(header_is(&r, "Connection", NULL)); /* app errors keep the connection */
    buf_free(&r.body);
    /* Invalid and reserved extra headers are dropped, good ones kept. */
    REQUIRE(send_str(cl, "GET /badheaders HTTP/1.1\r\nHost: t\r\n\r\n"));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "ok") && header_is(&r, "X-Good", "yes"));
    CHECK(header_is(&r, "Injected", NULL) && header_is(&r, "X-Split", NULL));
    CHECK(header_is(&r, "Content-Length", "2"));
    buf_free(&r.body);
    REQUIRE(send_str(cl, "GET /badctype HTTP/1.1\r\nHost: t\r\n\r\n"));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && header_is(&r, "Content-Type", NULL) &&
          header_is(&r, "Injected", NULL));
    buf_free(&r.body);
    client_free(cl);
}

TEST(http10_and_connection_close)
{
    int port = http_server_port(srv->srv);
    struct client *cl = client_new(port);
    struct resp r;

    REQUIRE(send_str(cl, "GET /echo HTTP/1.0\r\n\r\n"));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && header_is(&r, "Connection", "close") && wait_closed(cl));
    buf_free(&r.body);
    client_free(cl);
    cl = client_new(port);
    REQUIRE(send_str(cl, "GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && header_is(&r, "Connection", "keep-alive"));
    buf_free(&r.body);
    REQUIRE(send_str(cl, "GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && header_is(&r, "Connection", "close") && wait_closed(cl));
    buf_free(&r.body);
    client_free(cl);
    /* A client that half-closes after its request still gets the answer. */
    cl = client_new(port);
    REQUIRE(send_str(cl, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n"));
    REQUIRE(shutdown(cl->fd, SHUT_WR) == 0);
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && wait_closed(cl));
    buf_free(&r.body);
    client_free(cl);
}

TEST(request_fed_one_byte_at_a_time)
{
    const char req[] = "POST /echo?q=1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "4\r\nbyte\r\n0\r\n\r\n";
    struct client *cl = client_new(http_server_port(srv->srv));
    struct resp r;

    for (size_t i = 0; i + 1 < sizeof(req); i++) {
        REQUIRE(send(cl->fd, req + i, 1, MSG_NOSIGNAL) == 1);
        if (i % 8 == 0)
            usleep(500); /* let some bytes arrive alone */
    }
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "POST /echo q=1 byte"));
    buf_free(&r.body);
    client_free(cl);
}

TEST(slow_reader_gets_backpressure_then_write_timeout)
{
    struct srv_job *j = server_start_cfg(&(struct http_server_config){
        .listen = "127.0.0.1:0", .write_timeout = 0.3, .idle_timeout = -1});
    struct client *cl = client_new(http_server_port(j->srv));
    int rcv = 4096;
    int64_t t0;

    setsockopt(cl->fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    /* Requests for 4 MiB answers, never read: the server must not buffer
     * them all (it stops reading), and closes once writing stalls. */
    for (int i = 0; i < 8; i++)
        REQUIRE(send_str(cl, "GET /big?4194304 HTTP/1.1\r\nHost: t\r\n\r\n"));
    t0 = mono_us();
    REQUIRE(wait_until(one_conn, j)); /* accepted... */
    CHECK(wait_until(no_conns, j));   /* ...and closed by the write timeout */
    CHECK(mono_us() - t0 >= 250000 && mono_us() - t0 < 3000000);
    client_free(cl);
    server_free(j);
}

TEST(slowloris_read_timeout_and_idle_timeout)
{
    struct srv_job *j = server_start_cfg(&(struct http_server_config){
        .listen = "127.0.0.1:0", .read_timeout = 0.3, .idle_timeout = 0.3});
    int port = http_server_port(j->srv);
    struct client *cl = client_new(port);
    struct resp r;
    int64_t t0 = mono_us();
    const char *trickle = "X-Slow: abcdefghijklmnopqrstuvwxyz\r\n";

    /* Keeps sending, one byte per 50 ms, and never finishes its head. */
    REQUIRE(send_str(cl, "GET /echo HTTP/1.1\r\nHost: t\r\n"));
    for (int i = 0; trickle[i] && !cl->eof; i++) {
        (void)send(cl->fd, trickle + i, 1, MSG_NOSIGNAL);
        if (client_fill(cl, 50) != 0)
            break;
    }
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 408 && header_is(&r, "Content-Type", "application/json"));
    CHECK(body_is(&r, "{\"message\":\"request not received within 0.3 s\"}"));
    CHECK(mono_us() - t0 < 1000000);
    CHECK(wait_closed(cl));
    buf_free(&r.body);
    client_free(cl);
    /* Idle: a connection that never sends is closed quietly. */
    cl = client_new(port);
    t0 = mono_us();
    CHECK(wait_closed(cl) && buf_avail(&cl->in) == 0);
    CHECK(mono_us() - t0 >= 250000 && mono_us() - t0 < 2000000);
    client_free(cl);
    /* Kept alive after an answer, then idle: closed too. */
    cl = client_new(port);
    REQUIRE(send_str(cl, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n") && read_response(cl, &r, 0));
    CHECK(r.status == 200 && wait_closed(cl));
    buf_free(&r.body);
    client_free(cl);
    /* Activity moves the idle deadline: five requests 0.15 s apart. */
    cl = client_new(port);
    for (int i = 0; i < 5; i++) {
        usleep(150000);
        REQUIRE(send_str(cl, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n") && read_response(cl, &r, 0));
        CHECK(r.status == 200);
        buf_free(&r.body);
    }
    client_free(cl);
    /* A held request is not subject to any timeout. */
    cl = client_new(port);
    int alive = -1;
    REQUIRE(send_str(cl, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n"));
    REQUIRE(wait_until(held_ready, NULL));
    usleep(600000);
    run_on_loop(respond_held_job, &alive);
    CHECK(alive == 1);
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "held"));
    buf_free(&r.body);
    client_free(cl);
    CHECK(wait_until(no_conns, j));
    server_free(j);
}

TEST(max_connections_503)
{
    struct srv_job *j =
        server_start_cfg(&(struct http_server_config){.listen = "127.0.0.1:0", .max_conns = 2});
    int port = http_server_port(j->srv);
    struct client *a = client_new(port), *b = client_new(port), *c;
    struct resp r;

    REQUIRE(send_str(a, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n") && read_response(a, &r, 0));
    buf_free(&r.body);
    REQUIRE(send_str(b, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n") && read_response(b, &r, 0));
    buf_free(&r.body);
    CHECK(is_error(port, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n", 503, "too many connections"));
    /* Answered without a request at all, too. */
    c = client_new(port);
    REQUIRE(read_response(c, &r, 0));
    CHECK(r.status == 503 && wait_closed(c));
    buf_free(&r.body);
    client_free(c);
    client_free(a);
    for (int i = 0; i < TIMEOUT_MS && server_conns(j) > 1; i++)
        usleep(1000);
    c = client_new(port);
    REQUIRE(send_str(c, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n") && read_response(c, &r, 0));
    CHECK(r.status == 200);
    buf_free(&r.body);
    client_free(c);
    client_free(b);
    CHECK(wait_until(no_conns, j));
    server_free(j);
}

static int unix_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    snprintf(sa.sun_path, sizeof(sa.sun_path), "%.100s", path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        perror("connect unix");
        exit(2);
    }
    return fd;
}

TEST(unix_socket)
{
    char dir[] = "/tmp/test_http_XXXXXX", path[64], file[64];
    struct srv_job *j, *k;
    struct client *cl;
    struct resp r;
    struct stat st;
    int fd, stale;

    REQUIRE(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/http.sock", dir);
    /* A stale socket file (its process died) is replaced. */
    stale = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%.100s", path);
    REQUIRE(stale >= 0 && bind(stale, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    close(stale);
    j = server_start_cfg(&(struct http_server_config){.unix_path = path});
    CHECK(http_server_port(j->srv) == 0);
    cl = client_fd(unix_connect(path));
    REQUIRE(send_str(cl, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nu"));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "POST /echo  u") && header_is(&r, "X-Peer", "unix"));
    buf_free(&r.body);
    client_free(cl);
    /* In use by a live server. */
    k = calloc(1, sizeof(*k));
    k->cfg = (struct http_server_config){.unix_path = path, .on_request = on_request};
    run_on_loop(start_job, k);
    CHECK(k->rv == -EADDRINUSE);
    /* A regular file is not ours to replace. */
    snprintf(file, sizeof(file), "%s/file", dir);
    fd = open(file, O_CREAT | O_WRONLY, 0600);
    close(fd);
    k->cfg.unix_path = file;
    run_on_loop(start_job, k);
    CHECK(k->rv == -EEXIST);
    k->cfg.unix_path = "/tmp/a-unix-socket-path-that-is-far-too-long-for-sun-path-"
                       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    run_on_loop(start_job, k);
    CHECK(k->rv == -EINVAL);
    free(k);
    /* Shutdown removes the socket file. */
    run_on_loop(shutdown_job, j);
    CHECK(stat(path, &st) != 0 && errno == ENOENT);
    CHECK(wait_until(no_conns, j));
    server_free(j);
    unlink(file);
    rmdir(dir);
}

TEST(adopt_with_pre_read_bytes)
{
    struct srv_job *j = server_start_cfg(&(struct http_server_config){.max_body = 1024});
    int sv[2];
    struct client *cl;
    struct resp r;

    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    j->adopt_fd = sv[0];
    j->adopt_peer = "10.1.2.3:4567";
    j->adopt_pre = "POST /echo?adopted HTTP/1.1\r\nHo";
    run_on_loop(adopt_job, j);
    CHECK(j->adopt_rv == 0);
    cl = client_fd(sv[1]);
    REQUIRE(send_str(cl, "st: t\r\nContent-Length: 2\r\n\r\nhi"));
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "POST /echo adopted hi"));
    CHECK(header_is(&r, "X-Peer", "10.1.2.3:4567"));
    buf_free(&r.body);
    /* A whole request already read, nothing more on the socket. */
    client_free(cl);
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    j->adopt_fd = sv[0];
    j->adopt_peer = NULL; /* asked from the socket */
    j->adopt_pre = "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n";
    run_on_loop(adopt_job, j);
    cl = client_fd(sv[1]);
    REQUIRE(read_response(cl, &r, 0));
    CHECK(r.status == 200 && body_is(&r, "GET /echo  ") && header_is(&r, "X-Peer", "unix"));
    buf_free(&r.body);
    client_free(cl);
    /* Not a socket: no peer address, and reading fails: closed. */
    int pfd[2];
    REQUIRE(pipe(pfd) == 0);
    j->adopt_fd = pfd[0];
    j->adopt_pre = NULL;
    run_on_loop(adopt_job, j);
    CHECK(j->adopt_rv == 0);
    close(pfd[1]);
    CHECK(wait_until(no_conns, j));
    /* A bad fd is refused. */
    j->adopt_fd = -1;
    run_on_loop(adopt_job, j);
    CHECK(j->adopt_rv == -EBADF);
    /* After shutdown: refused, and the fd is closed. */
    run_on_loop(shutdown_job, j);
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    j->adopt_fd = sv[0];
    j->adopt_pre = NULL;
    run_on_loop(adopt_job, j);
    CHECK(j->adopt_rv == -ESHUTDOWN);
    cl = client_fd(sv[1]);
    CHECK(wait_closed(cl));
    client_free(cl);
    CHECK(wait_until(no_conns, j));
    server_free(j);
}

TEST(shutdown_lets_requests_in_flight_finish)
{
    struct srv_job *j = server_start();
    int port = http_server_port(j->srv), alive = -1;
    struct client *idle = client_new(port), *busy = client_new(port);
    struct resp r;

    REQUIRE(send_str(idle, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n") && read_response(idle, &r, 0));
    buf_free(&r.body);
    REQUIRE(send_str(busy, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n"));
    REQUIRE(wait_until(held_ready, NULL));
    run_on_loop(shutdown_job, j);
    run_on_loop(shutdown_job, j); /* idempotent */
    CHECK(wait_closed(idle));
    CHECK(server_conns(j) == 1);
    run_on_loop(respond_held_job, &alive);
    CHECK(alive == 1);
    REQUIRE(read_response(busy, &r, 0));
    CHECK(r.status == 200 && header_is(&r, "Connection", "close") && wait_closed(busy));
    buf_free(&r.body);
    CHECK(wait_until(no_conns, j));
    client_free(idle);
    client_free(busy);
    server_free(j);
}

TEST(free_with_a_request_out_cancels_it)
{
    struct srv_job *j = server_start();
    struct client *cl = client_new(http_server_port(j->srv));
    int cancels = seen_get(&seen.cancels), alive = -1;

    REQUIRE(send_str(cl, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n"));
    REQUIRE(wait_until(held_ready, NULL));
    server_free(j);
    CHECK(seen_get(&seen.cancels) == cancels + 1);
    CHECK(wait_closed(cl));
    run_on_loop(respond_held_job, &alive); /* frees the orphan */
    CHECK(alive == 0);
    client_free(cl);
    run_on_loop(free_null_job, NULL);
}

TEST(accept_survives_fd_exhaustion)
{
    struct rlimit old, tight;
    struct client *cl;
    struct resp r;
    int next_fd, waiting;

    /* valgrind emulates RLIMIT_NOFILE with fds of its own: skip there. */
    const char *preload = getenv("LD_PRELOAD");
    if (preload && strstr(preload, "vgpreload"))
        return;
    REQUIRE(wait_until(no_conns, srv));
    next_fd = dup(0);
    if (next_fd >= 0)
        close(next_fd);
    REQUIRE(next_fd >= 0 && getrlimit(RLIMIT_NOFILE, &old) == 0);
    tight = old;
    tight.rlim_cur = (rlim_t)next_fd + 1; /* room for the client's socket only */
    int saved = log_level;
    log_level = LOGL_ERROR; /* the expected accept warnings */
    REQUIRE(setrlimit(RLIMIT_NOFILE, &tight) == 0);
    cl = client_new(http_server_port(srv->srv));
    REQUIRE(send_str(cl, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n"));
    waiting = client_fill(cl, 150) == 0; /* the server cannot accept it yet */
    REQUIRE(setrlimit(RLIMIT_NOFILE, &old) == 0);
    CHECK(waiting);
    CHECK(read_response(cl, &r, 0) && r.status == 200);
    log_level = (enum log_level)saved;
    buf_free(&r.body);
    client_free(cl);
}

TEST(bad_config)
{
    struct srv_job j = {0};

    j.cfg.listen = "127.0.0.1:0";
    run_on_loop(start_job, &j);
    CHECK(j.rv == -EINVAL); /* no on_request */
    j.cfg.on_request = on_request;
    j.cfg.listen = "nonsense";
    run_on_loop(start_job, &j);
    CHECK(j.rv == -EINVAL);
    j.cfg.listen = "192.0.2.1:0";
    run_on_loop(start_job, &j);
    CHECK(j.rv == -EADDRNOTAVAIL);
    j.cfg.listen = "no-such-host.invalid:80"; /* RFC 6761: never resolves */
    run_on_loop(start_job, &j);
    CHECK(j.rv == -EADDRNOTAVAIL);
    j.cfg.listen = NULL;
    j.cfg.unix_path = "/etc/passwd/http.sock"; /* lstat: ENOTDIR */
    run_on_loop(start_job, &j);
    CHECK(j.rv == -ENOTDIR);
    j.cfg.unix_path = "/nonexistent-dir-for-test/http.sock"; /* bind: ENOENT */
    run_on_loop(start_job, &j);
    CHECK(j.rv == -ENOENT);
}

TEST(reuse_port_shares_an_address)
{
    struct srv_job *a =
        server_start_cfg(&(struct http_server_config){.listen = "127.0.0.1:0", .reuse_port = 1});
    char addr[64];
    struct srv_job *b;
    struct resp r;

    snprintf(addr, sizeof(addr), "127.0.0.1:%d", http_server_port(a->srv));
    b = server_start_cfg(&(struct http_server_config){.listen = addr, .reuse_port = 1});
    CHECK(http_server_port(b->srv) == http_server_port(a->srv));
    CHECK(one_shot(http_server_port(a->srv), "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n", &r) &&
          r.status == 200);
    buf_free(&r.body);
    server_free(b);
    server_free(a);
}

static void stop_job(void *arg)
{
    (void)arg;
    loop_stop = 1;
}

int main(void)
{
    const char *lvl = getenv("TEST_LOG_LEVEL");

    log_level = LOGL_WARN;
    if (lvl && log_parse_level(lvl, &log_level) != 0)
        return 2;
    RUN(decoder_results_do_not_depend_on_chunking);
    RUN(decoder_field_limit_and_lookup);
    RUN(decoder_large_limits_and_framing);
    RUN(json_strings);

    loop = ev_loop_new(EVFLAG_AUTO);
    ev_async_init(&job_w, job_cb);
    ev_async_start(loop, &job_w);
    pthread_create(&loop_thread, NULL, loop_main, NULL);
    srv = server_start();

    RUN(keep_alive_several_requests);
    RUN(pipelined_requests_answered_in_order);
    RUN(async_answer_from_a_timer);
    RUN(client_disconnects_before_the_answer);
    RUN(held_request_answered_while_alive);
    RUN(chunked_request_body);
    RUN(expect_100_continue);
    RUN(oversized_body_413);
    RUN(refused_body_still_lets_the_client_read_the_answer);
    RUN(pipelined_big_answers_under_backpressure);
    RUN(request_arriving_while_one_is_held);
    RUN(half_close_with_a_large_answer_pending);
    RUN(half_close_while_the_answer_is_still_queued);
    RUN(client_resets_while_reading_and_writing);
    RUN(refused_client_that_keeps_sending_is_cut_off);
    RUN(lingering_ends_after_its_timeout);
    RUN(ipv6_listener);
    RUN(refusal_flood_pauses_accepting);
    RUN(h2c_preface_is_handed_over);
    RUN(malformed_requests_400_and_friends);
    RUN(header_flood_431);
    RUN(head_and_bodyless_statuses);
    RUN(http10_and_connection_close);
    RUN(request_fed_one_byte_at_a_time);
    RUN(slow_reader_gets_backpressure_then_write_timeout);
    RUN(slowloris_read_timeout_and_idle_timeout);
    RUN(max_connections_503);
    RUN(unix_socket);
    RUN(adopt_with_pre_read_bytes);
    RUN(shutdown_lets_requests_in_flight_finish);
    RUN(free_with_a_request_out_cancels_it);
    RUN(accept_survives_fd_exhaustion);
    RUN(bad_config);
    RUN(reuse_port_shares_an_address);

    server_free(srv);
    run_on_loop(stop_job, NULL);
    pthread_join(loop_thread, NULL);
    ev_loop_destroy(loop);
    return HARNESS_END();
}
