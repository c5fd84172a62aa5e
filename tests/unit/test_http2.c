/* Tests for common/http2.c: prior-knowledge h2c inside the HTTP server.
 *
 * The server runs on this thread's loop; each test connects an nghttp2
 * client session to it over a socketpair (adopted by the server) or over
 * loopback TCP, and pumps both sides by hand: the client's bytes go out and
 * the server's come back in pieces of `chunk` bytes (1 byte in the first
 * test), with one non-blocking loop iteration between pieces. */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/http.h"
#include "common/log.h"
#include "tests/unit/harness.h"

#define MAX_RESP 64
#define MAX_HELD 64

static struct ev_loop *loop;
static struct http_server *srv;

/* ---- the application ---------------------------------------------------------- */

static struct {
    int requests, cancels, alive_at_cancel, alive_at_request;
    struct http_request *held[MAX_HELD];
    int nheld;
    uint64_t conn_ids[MAX_HELD];
    int version;
} seen;

static void seen_reset(void)
{
    memset(&seen, 0, sizeof(seen));
}

static void cancel_cb(void *arg, struct http_request *req)
{
    (void)arg;
    seen.cancels++;
    seen.alive_at_cancel = http_request_alive(req);
}

/* The cancel of one request answers every other held one (all are being
 * cancelled as the connection ends). */
static void cancel_answer_all_cb(void *arg, struct http_request *req)
{
    (void)arg;
    seen.cancels++;
    for (int i = 0; i < seen.nheld; i++) {
        if (seen.held[i] && seen.held[i] != req) {
            http_respond(seen.held[i], 200, NULL, "x", 1, NULL, 0);
            seen.held[i] = NULL;
        }
    }
    for (int i = 0; i < seen.nheld; i++) {
        if (seen.held[i] == req)
            seen.held[i] = NULL;
    }
    http_respond(req, 200, NULL, "x", 1, NULL, 0);
}

static void answer_echo(struct http_request *req)
{
    struct buf b = {0};
    size_t len;
    const uint8_t *body = http_request_body(req, &len);
    const char *host = http_request_header(req, "HOST");
    char line[512];
    int n = snprintf(line, sizeof(line), "v=%d m=%s p=%s q=%s host=%s peer=%s ka=%d minor=%d n=%u|",
                     http_request_version(req), http_request_method(req), http_request_path(req),
                     http_request_query(req), host ? host : "-", http_request_peer(req),
                     http_request_keep_alive(req), http_request_minor(req),
                     http_request_header_count(req));

    buf_append(&b, line, (size_t)n);
    buf_append(&b, body, len);
    http_respond(req, 200, "text/plain", b.data, b.len,
                 (const struct http_header[]){{"X-Mixed-Case", "A"},
                                              {"Keep-Alive", "timeout=5"},
                                              {"TE", "trailers"},
                                              {"Upgrade", "h2c"},
                                              {"Proxy-Connection", "x"},
                                              {"Connection", "close"},
                                              {"Content-Length", "99"},
                                              {"Bad Name", "v"},
                                              {"X-Split", "a\r\nInjected: 1"},
                                              {NULL, "x"},
                                              {"X-Good", "yes"}},
                 11);
    buf_free(&b);
}

static void on_request(void *arg, struct http_request *req)
{
    const char *path = http_request_path(req);

    (void)arg;
    seen.requests++;
    seen.version = http_request_version(req);
    seen.alive_at_request = http_request_alive(req);
    if (strcmp(path, "/echo") == 0) {
        answer_echo(req);
    } else if (strcmp(path, "/hold") == 0 || strcmp(path, "/holdall") == 0) {
        http_request_on_cancel(req, strcmp(path, "/hold") == 0 ? cancel_cb : cancel_answer_all_cb,
                               NULL);
        seen.conn_ids[seen.nheld] = http_request_conn_id(req);
        seen.held[seen.nheld++] = req;
    } else if (strcmp(path, "/status") == 0) {
        http_respond(req, atoi(http_request_query(req)), "text/plain", "body", 4, NULL, 0);
    } else if (strcmp(path, "/hdr") == 0) {
        const char *v = http_request_header(req, http_request_query(req));
        http_respond(req, 200, NULL, v ? v : "(none)", strlen(v ? v : "(none)"), NULL, 0);
    } else if (strcmp(path, "/big") == 0) {
        size_t n = (size_t)atol(http_request_query(req));
        char *big = malloc(n);
        memset(big, 'b', n);
        http_respond(req, 200, "application/octet-stream", big, n, NULL, 0);
        free(big);
    } else if (strcmp(path, "/badctype") == 0) {
        http_respond(req, 200, "text/plain\r\nx: 1", "ok", 2, NULL, 0);
    } else if (strcmp(path, "/shutdown") == 0) {
        http_server_shutdown(srv);
        http_respond(req, 200, NULL, "bye", 3, NULL, 0);
    } else {
        http_respond_error(req, 404, "not found");
    }
}

static void server_start(struct http_server_config cfg)
{
    cfg.on_request = on_request;
    cfg.h2c = 1;
    seen_reset();
    if (http_server_start(loop, &cfg, &srv) != 0) {
        fprintf(stderr, "server start failed\n");
        exit(2);
    }
}

static void server_stop(void)
{
    http_server_free(srv);
    srv = NULL;
    for (int i = 0; i < seen.nheld; i++) { /* cancelled by the free: answer to free them */
        if (seen.held[i])
            http_respond(seen.held[i], 200, NULL, NULL, 0, NULL, 0);
    }
    ev_run(loop, EVRUN_NOWAIT);
}

/* ---- the client ------------------------------------------------------------------ */

#define NV(n, v)                                                                                   \
    {                                                                                              \
        (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE             \
    }

struct resp {
    int32_t id;
    int status, closed, done;
    uint32_t rst;
    struct buf hdrs; /* "name: value\n" */
    struct buf body;
    struct buf up; /* request body still to send */
    int defer;     /* hold the request body back */
    int trailer;   /* end the body with a trailer field */
};

struct client {
    int fd;
    nghttp2_session *s;
    size_t chunk;
    int no_read, eof, goaways;
    uint32_t goaway_err;
    int32_t goaway_last;
    struct buf out;
    struct resp r[MAX_RESP];
    int nr;
    int order[MAX_RESP], nclosed; /* indexes, in the order the streams closed */
};

static struct resp *cl_resp(struct client *cl, int32_t id)
{
    for (int i = 0; i < cl->nr; i++) {
        if (cl->r[i].id == id)
            return &cl->r[i];
    }
    return NULL;
}

static int cl_on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *ud)
{
    struct resp *r = cl_resp(ud, f->hd.stream_id);

    (void)s;
    (void)flags;
    if (!r)
        return 0;
    if (namelen == 7 && memcmp(name, ":status", 7) == 0)
        r->status = atoi((const char *)value);
    buf_append(&r->hdrs, name, namelen);
    buf_append(&r->hdrs, ": ", 2);
    buf_append(&r->hdrs, value, valuelen);
    buf_append(&r->hdrs, "\n", 2);
    r->hdrs.len--; /* keep it NUL-terminated */
    return 0;
}

static int cl_on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                      size_t len, void *ud)
{
    struct resp *r = cl_resp(ud, id);

    (void)s;
    (void)flags;
    if (r)
        buf_append(&r->body, data, len);
    return 0;
}

static int cl_on_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct client *cl = ud;
    struct resp *r = cl_resp(cl, f->hd.stream_id);

    (void)s;
    if (f->hd.type == NGHTTP2_GOAWAY) {
        cl->goaways++;
        cl->goaway_err = f->goaway.error_code;
        cl->goaway_last = f->goaway.last_stream_id;
    }
    if (r && (f->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
        (f->hd.type == NGHTTP2_DATA || f->hd.type == NGHTTP2_HEADERS))
        r->done = 1;
    return 0;
}

static int cl_on_close(nghttp2_session *s, int32_t id, uint32_t err, void *ud)
{
    struct client *cl = ud;
    struct resp *r = cl_resp(cl, id);

    (void)s;
    if (r) {
        r->closed = 1;
        r->rst = err;
        cl->order[cl->nclosed++] = (int)(r - cl->r);
    }
    return 0;
}

static struct client *cl_new_fd(int fd, size_t chunk, const nghttp2_settings_entry *iv, size_t niv,
                                int manual_window)
{
    struct client *cl = calloc(1, sizeof(*cl));
    nghttp2_session_callbacks *cbs;
    nghttp2_option *opt;

    cl->fd = fd;
    cl->chunk = chunk;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_on_header_callback(cbs, cl_on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, cl_on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, cl_on_frame);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, cl_on_close);
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, manual_window);
    if (nghttp2_session_client_new2(&cl->s, cbs, cl, opt) != 0)
        abort();
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    if (nghttp2_submit_settings(cl->s, NGHTTP2_FLAG_NONE, iv, niv) != 0)
        abort();
    return cl;
}

/* A client on a socketpair adopted by srv. */
static struct client *cl_new(size_t chunk)
{
    int sv[2];

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
        abort();
    if (http_server_adopt(srv, sv[0], NULL, 0, "test-peer") != 0)
        abort();
    return cl_new_fd(sv[1], chunk, NULL, 0, 0);
}

static void cl_free(struct client *cl)
{
    if (cl->fd >= 0)
        close(cl->fd);
    nghttp2_session_del(cl->s);
    for (int i = 0; i < cl->nr; i++) {
        buf_free(&cl->r[i].hdrs);
        buf_free(&cl->r[i].body);
        buf_free(&cl->r[i].up);
    }
    buf_free(&cl->out);
    free(cl);
}

static ssize_t cl_body_read(nghttp2_session *s, int32_t id, uint8_t *out, size_t len,
                            uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    struct resp *r = src->ptr;
    size_t n = MIN(len, buf_avail(&r->up));

    (void)ud;
    if (r->defer)
        return NGHTTP2_ERR_DEFERRED;
    if (n > 0)
        memcpy(out, buf_head(&r->up), n);
    buf_consume(&r->up, n);
    if (buf_avail(&r->up) == 0)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (buf_avail(&r->up) == 0 && r->trailer) {
        nghttp2_nv tr[] = {NV("x-trailer", "1")};
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        if (nghttp2_submit_trailer(s, id, tr, 1) != 0)
            abort();
    }
    return (ssize_t)n;
}

/* Submit a request with the pseudo-headers and extra fields in nva (the
 * caller's), and body (copied; NULL: none). Returns the response slot. */
static struct resp *cl_submit(struct client *cl, const nghttp2_nv *nva, size_t nv, const void *body,
                              size_t len, int defer)
{
    struct resp *r = &cl->r[cl->nr++];
    nghttp2_data_provider prd = {.source.ptr = r, .read_callback = cl_body_read};

    r->defer = defer;
    if (body || defer)
        buf_append(&r->up, body ? body : "", len);
    r->id = nghttp2_submit_request(cl->s, NULL, nva, nv, body || defer ? &prd : NULL, NULL);
    if (r->id < 0)
        abort();
    return r;
}

static struct resp *cl_get(struct client *cl, const char *method, const char *path)
{
    nghttp2_nv nva[] = {NV(":method", method), NV(":scheme", "http"), NV(":path", path),
                        NV(":authority", "example.test:8080"), NV("user-agent", "t")};
    return cl_submit(cl, nva, ARRAY_LEN(nva), NULL, 0, 0);
}

static struct resp *cl_post(struct client *cl, const char *path, const void *body, size_t len,
                            int with_length)
{
    char clen[24];
    snprintf(clen, sizeof(clen), "%zu", len);
    nghttp2_nv nva[] = {NV(":method", "POST"), NV(":scheme", "http"), NV(":path", path),
                        NV(":authority", "h"), NV("content-length", clen)};
    return cl_submit(cl, nva, ARRAY_LEN(nva) - (with_length ? 0 : 1), body, len, 0);
}

/* One step: the client's frames out (a piece), one loop iteration, a piece
 * of the server's bytes in. Returns whether anything moved. */
static int pump_once(struct client *cl)
{
    uint8_t b[65536];
    int moved = 0;
    const uint8_t *d;
    ssize_t n;

    while ((n = nghttp2_session_mem_send(cl->s, &d)) > 0)
        buf_append(&cl->out, d, (size_t)n);
    if (buf_avail(&cl->out) > 0 && cl->fd >= 0) {
        n = send(cl->fd, buf_head(&cl->out), MIN(cl->chunk, buf_avail(&cl->out)), MSG_NOSIGNAL);
        if (n > 0) {
            buf_consume(&cl->out, (size_t)n);
            moved = 1;
        }
    }
    ev_run(loop, EVRUN_NOWAIT);
    if (!cl->no_read && !cl->eof && cl->fd >= 0) {
        n = recv(cl->fd, b, MIN(cl->chunk, sizeof(b)), 0);
        if (n > 0) {
            if (nghttp2_session_mem_recv(cl->s, b, (size_t)n) != n)
                cl->eof = 1; /* the client session failed: treat as gone */
            moved = 1;
        } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
            cl->eof = 1;
            shutdown(cl->fd, SHUT_WR); /* as a client does: ends the server's linger */
        }
    }
    return moved;
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Pump until pred holds (1) or 5 s pass (0). */
static int pump_until(struct client *cl, int (*pred)(struct client *, void *), void *arg)
{
    double end = mono() + 5.0;

    while (!pred(cl, arg)) {
        if (mono() > end)
            return 0;
        if (!pump_once(cl))
            usleep(100);
    }
    return 1;
}

static void pump_for(struct client *cl, double secs)
{
    double end = mono() + secs;

    while (mono() < end) {
        if (!pump_once(cl))
            usleep(100);
    }
}

static int resp_closed(struct client *cl, void *arg)
{
    (void)cl;
    return ((struct resp *)arg)->closed;
}

static int all_closed(struct client *cl, void *arg)
{
    (void)arg;
    for (int i = 0; i < cl->nr; i++) {
        if (!cl->r[i].closed)
            return 0;
    }
    return 1;
}

static int got_eof(struct client *cl, void *arg)
{
    (void)arg;
    return cl->eof;
}

static int held_n(struct client *cl, void *arg)
{
    (void)cl;
    return seen.nheld >= *(int *)arg;
}

static int cancels_n(struct client *cl, void *arg)
{
    (void)cl;
    return seen.cancels >= *(int *)arg;
}

static int no_conns(struct client *cl, void *arg)
{
    (void)cl;
    (void)arg;
    return http_server_conn_count(srv) == 0;
}

static const char *hdr(const struct resp *r)
{
    return r->hdrs.data ? (const char *)r->hdrs.data : "";
}

static const char *body(const struct resp *r)
{
    static char empty[] = "";
    return r->body.data ? (buf_append((struct buf *)&r->body, "", 1),
                           ((struct buf *)&r->body)->len--, (const char *)r->body.data)
                        : empty;
}

/* ---- tests ------------------------------------------------------------------------ */

TEST(get_one_byte_at_a_time)
{
    server_start((struct http_server_config){0});
    struct client *cl = cl_new(1);
    struct resp *r = cl_get(cl, "GET", "/echo?x=1&y");

    REQUIRE(pump_until(cl, resp_closed, r));
    CHECK(r->status == 200 && r->rst == 0 && r->done);
    CHECK(seen.version == 20 && seen.alive_at_request);
    CHECK(strstr(body(r), "v=20 m=GET p=/echo q=x=1&y host=example.test:8080 peer=test-peer "
                          "ka=1 minor=0 n=2|") != NULL);
    CHECK(strstr(hdr(r), "content-type: text/plain\n") != NULL);
    char clen[48];
    snprintf(clen, sizeof(clen), "content-length: %zu\n", buf_avail(&r->body));
    CHECK(strstr(hdr(r), clen) != NULL);
    CHECK(strstr(hdr(r), "date: ") != NULL);
    CHECK(strstr(hdr(r), "x-mixed-case: A\n") != NULL);
    CHECK(strstr(hdr(r), "x-good: yes\n") != NULL);
    /* connection-specific, reserved and invalid ones are dropped */
    CHECK(strstr(hdr(r), "keep-alive") == NULL && strstr(hdr(r), "\nte:") == NULL);
    CHECK(strstr(hdr(r), "upgrade") == NULL && strstr(hdr(r), "connection") == NULL);
    CHECK(strstr(hdr(r), "99") == NULL && strstr(hdr(r), "injected") == NULL);
    CHECK(strstr(hdr(r), "bad") == NULL);
    cl_free(cl);
    server_stop();
}

TEST(headers_case_insensitive_and_host)
{
    server_start((struct http_server_config){0});
    struct client *cl = cl_new(7);
    struct resp *a = cl_get(cl, "GET", "/hdr?User-Agent");
    struct resp *b = cl_get(cl, "GET", "/hdr?host");
    nghttp2_nv nva[] = {NV(":method", "GET"), NV(":scheme", "http"), NV(":path", "/hdr?host"),
                        NV(":authority", "auth"), NV("host", "explicit")};
    struct resp *c = cl_submit(cl, nva, ARRAY_LEN(nva), NULL, 0, 0);
    struct resp *d = cl_get(cl, "GET", "/hdr?:authority");

    REQUIRE(pump_until(cl, all_closed, NULL));
    CHECK(strcmp(body(a), "t") == 0);
    CHECK(strcmp(body(b), "example.test:8080") == 0);
    CHECK(strcmp(body(c), "explicit") == 0);
    CHECK(strcmp(body(d), "(none)") == 0);
    cl_free(cl);
    server_stop();
}

TEST(post_bodies_in_pieces)
{
    server_start((struct http_server_config){.max_body = 600 * 1024});
    struct client *cl = cl_new(997);
    size_t n = 512 * 1024;
    char *big = malloc(n);
    for (size_t i = 0; i < n; i++)
        big[i] = (char)('a' + i % 26);
    struct resp *a = cl_post(cl, "/echo", big, n, 1);
    struct resp *b = cl_post(cl, "/echo", "small", 5, 0);
    struct resp *c = cl_post(cl, "/echo", "", 0, 1);

    REQUIRE(pump_until(cl, all_closed, NULL));
    const char *sep = memchr(a->body.data, '|', buf_avail(&a->body));
    REQUIRE(sep != NULL);
    CHECK(a->status == 200 && buf_avail(&a->body) - (size_t)(sep + 1 - (char *)a->body.data) == n);
    CHECK(memcmp(sep + 1, big, n) == 0);
    CHECK(strstr(body(b), "m=POST") && strstr(body(b), "|small"));
    CHECK(c->status == 200 && body(c)[strlen(body(c)) - 1] == '|');
    free(big);
    cl_free(cl);
    server_stop();
}

TEST(request_trailers_ignored)
{
    server_start((struct http_server_config){0});
    struct client *cl = cl_new(5);
    struct resp *r = &cl->r[cl->nr++];
    nghttp2_nv nva[] = {NV(":method", "POST"), NV(":scheme", "http"), NV(":path", "/echo"),
                        NV(":authority", "h")};
    nghttp2_data_provider prd = {.source.ptr = r, .read_callback = cl_body_read};

    r->trailer = 1;
    buf_append(&r->up, "data", 4);
    r->id = nghttp2_submit_request(cl->s, NULL, nva, ARRAY_LEN(nva), &prd, NULL);
    REQUIRE(r->id > 0);
    REQUIRE(pump_until(cl, resp_closed, r));
    CHECK(r->status == 200 && strstr(body(r), "n=1|data") != NULL); /* only host */
    cl_free(cl);
    server_stop();
}

static int respond_held_reverse(void)
{
    for (int i = seen.nheld - 1; i >= 0; i--) {
        char b[32];
        int n = snprintf(b, sizeof(b), "answer %s", http_request_query(seen.held[i]));
        http_respond(seen.held[i], 200, "text/plain", b, (size_t)n, NULL, 0);
        seen.held[i] = NULL;
    }
    return 0;
}

TEST(multiplexed_out_of_order)
{
    server_start((struct http_server_config){0});
    struct client *cl = cl_new(13);
    int want = 10;

    for (int i = 0; i < want; i++) {
        char path[32];
        snprintf(path, sizeof(path), "/hold?%d", i);
        nghttp2_nv nva[] = {NV(":method", "GET"), NV(":scheme", "http"), NV(":path", path),
                            NV(":authority", "h")};
        cl_submit(cl, nva, ARRAY_LEN(nva), NULL, 0, 0);
    }
    REQUIRE(pump_until(cl, held_n, &want));
    for (int i = 1; i < want; i++)
        CHECK(seen.conn_ids[i] == seen.conn_ids[0]);
    /* answer the last first */
    respond_held_reverse();
    REQUIRE(pump_until(cl, all_closed, NULL));
    for (int i = 0; i < want; i++) {
        char b[32];
        snprintf(b, sizeof(b), "answer %d", i);
        CHECK(cl->r[i].status == 200 && strcmp(body(&cl->r[i]), b) == 0);
    }
    CHECK(cl->order[0] == want - 1 && cl->order[want - 1] == 0);
    cl_free(cl);
    server_stop();
}

TEST(body_limit_413)
{
    server_start((struct http_server_config){.max_body = 1024});
    struct client *cl = cl_new(64);
    char big[4096];
    memset(big, 'x', sizeof(big));
    struct resp *a = cl_post(cl, "/echo", big, sizeof(big), 1); /* refused from the length */
    struct resp *b = cl_post(cl, "/echo", big, sizeof(big), 0); /* refused while reading */
    struct resp *c = cl_post(cl, "/echo", big, 1024, 0);        /* exactly the limit */

    REQUIRE(pump_until(cl, all_closed, NULL));
    CHECK(a->status == 413 && strstr(hdr(a), "content-type: application/json\n"));
    CHECK(strstr(body(a), "\"message\":\"request body of 4096 bytes exceeds") != NULL);
    CHECK(a->rst == NGHTTP2_NO_ERROR);
    CHECK(b->status == 413 && strstr(body(b), "request body exceeds the limit of 1024 bytes"));
    CHECK(c->status == 200);
    CHECK(seen.requests == 1);
    /* the connection goes on */
    struct resp *d = cl_get(cl, "GET", "/echo");
    REQUIRE(pump_until(cl, resp_closed, d));
    CHECK(d->status == 200);
    cl_free(cl);
    server_stop();
}

TEST(header_limits_431)
{
    char big[1500];
    nghttp2_nv many[140];
    size_t n = 0;

    memset(big, 'v', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    nghttp2_nv a_nv[] = {NV(":method", "GET"), NV(":scheme", "http"), NV(":path", "/echo"),
                         NV(":authority", "h"), NV("x-big", big)};
    many[n++] = (nghttp2_nv)NV(":method", "GET");
    many[n++] = (nghttp2_nv)NV(":scheme", "http");
    many[n++] = (nghttp2_nv)NV(":path", "/echo");
    many[n++] = (nghttp2_nv)NV(":authority", "h");
    while (n < ARRAY_LEN(many))
        many[n++] = (nghttp2_nv)NV("x", "");

    server_start((struct http_server_config){.max_header_bytes = 1024});
    struct client *cl = cl_new(100);
    struct resp *a = cl_submit(cl, a_nv, ARRAY_LEN(a_nv), NULL, 0, 0);
    REQUIRE(pump_until(cl, all_closed, NULL));
    CHECK(a->status == 431 && strstr(body(a), "request headers exceed 1024 bytes"));
    cl_free(cl);
    server_stop();

    server_start((struct http_server_config){.max_header_bytes = 64 * 1024});
    cl = cl_new(100);
    struct resp *b = cl_submit(cl, many, n, NULL, 0, 0);
    REQUIRE(pump_until(cl, all_closed, NULL));
    CHECK(b->status == 431 && strstr(body(b), "more than 128 header fields"));
    struct resp *c = cl_get(cl, "GET", "/echo"); /* the connection goes on */
    REQUIRE(pump_until(cl, resp_closed, c));
    CHECK(c->status == 200 && seen.requests == 1);
    cl_free(cl);
    server_stop();
}

TEST(method_and_target_errors)
{
    server_start((struct http_server_config){.max_header_bytes = 200 * 1024});
    struct client *cl = cl_new(512);
    struct resp *a = cl_get(cl, "BREW", "/echo");
    nghttp2_nv cn[] = {NV(":method", "CONNECT"), NV(":authority", "h:1")};
    struct resp *b = cl_submit(cl, cn, ARRAY_LEN(cn), NULL, 0, 0);
    struct resp *c = cl_get(cl, "GET", "no-slash");
    struct resp *e = cl_get(cl, "OPTIONS", "*");
    struct resp *f = cl_get(cl, "GET", "/status?99");
    struct resp *g = cl_get(cl, "HEAD", "/echo");
    struct resp *h = cl_get(cl, "GET", "/status?204");
    struct resp *i = cl_get(cl, "GET", "/status?304");
    struct resp *j = cl_get(cl, "GET", "/badctype");
    struct resp *k = cl_get(cl, "averyveryveryverylongmethodname", "/echo");

    REQUIRE(pump_until(cl, all_closed, NULL));
    CHECK(a->status == 501 && strstr(body(a), "method \\\"BREW\\\" is not supported"));
    CHECK(b->status == 400 && strstr(body(b), "CONNECT is not supported"));
    CHECK(c->status == 0 && c->rst == NGHTTP2_PROTOCOL_ERROR); /* nghttp2 checks :path */
    CHECK(e->status == 404); /* OPTIONS * reaches the application, path "*" */
    CHECK(f->status == 500 && strstr(body(f), "internal error"));
    CHECK(g->status == 200 && buf_avail(&g->body) == 0 && strstr(hdr(g), "content-length: "));
    CHECK(h->status == 204 && buf_avail(&h->body) == 0 && !strstr(hdr(h), "content-length"));
    CHECK(i->status == 304 && buf_avail(&i->body) == 0 && !strstr(hdr(i), "content-length"));
    CHECK(j->status == 200 && !strstr(hdr(j), "content-type") && strcmp(body(j), "ok") == 0);
    CHECK(k->status == 501);
    cl_free(cl);
    server_stop();
}

TEST(cancel_on_rst_stream)
{
    server_start((struct http_server_config){0});
    struct client *cl = cl_new(9);
    struct resp *a = cl_get(cl, "GET", "/hold");
    int one = 1;

    REQUIRE(pump_until(cl, held_n, &one));
    CHECK(http_request_alive(seen.held[0]));
    REQUIRE(nghttp2_submit_rst_stream(cl->s, NGHTTP2_FLAG_NONE, a->id, NGHTTP2_CANCEL) == 0);
    REQUIRE(pump_until(cl, cancels_n, &one));
    CHECK(seen.alive_at_cancel == 0 && !http_request_alive(seen.held[0]));
    http_respond(seen.held[0], 200, NULL, "late", 4, NULL, 0); /* just freed */
    seen.held[0] = NULL;
    struct resp *b = cl_get(cl, "GET", "/echo");
    REQUIRE(pump_until(cl, resp_closed, b));
    CHECK(b->status == 200);
    cl_free(cl);
    server_stop();
}

TEST(connection_loss_cancels_all)
{
    server_start((struct http_server_config){0});
    struct client *cl = cl_new(50);
    int three = 3;

    for (int i = 0; i < 3; i++)
        cl_get(cl, "GET", "/hold");
    REQUIRE(pump_until(cl, held_n, &three));
    close(cl->fd);
    cl->fd = -1;
    REQUIRE(pump_until(cl, cancels_n, &three));
    CHECK(seen.alive_at_cancel == 0);
    for (int i = 0; i < 3; i++) {
        CHECK(!http_request_alive(seen.held[i]));
        http_respond_error(seen.held[i], 500, "gone");
        seen.held[i] = NULL;
    }
    CHECK(pump_until(cl, no_conns, NULL));
    cl_free(cl);
    server_stop();
}

TEST(cancel_callback_answers_others)
{
    server_start((struct http_server_config){0});
    struct client *cl = cl_new(50);
    int three = 3;

    for (int i = 0; i < 3; i++)
        cl_get(cl, "GET", "/holdall");
    REQUIRE(pump_until(cl, held_n, &three));
    close(cl->fd);
    cl->fd = -1;
    REQUIRE(pump_until(cl, no_conns, NULL));
    CHECK(seen.cancels == 1); /* the others were answered from inside it */
    for (int i = 0; i < 3; i++)
        CHECK(seen.held[i] == NULL);
    cl_free(cl);
    server_stop();
}

TEST(goaway_on_shutdown)
{
    server_start((struct http_server_config){0});
    struct client *cl = cl_new(11);
    int one = 1;
    struct resp *a = cl_get(cl, "GET", "/hold?0");

    REQUIRE(pump_until(cl, held_n, &one));
    http_server_shutdown(srv);
    pump_for(cl, 0.05);
    CHECK(cl->goaways == 1 && cl->goaway_err == NGHTTP2_NO_ERROR && cl->goaway_last == a->id);
    CHECK(http_request_alive(seen.held[0]));
    respond_held_reverse();
    REQUIRE(pump_until(cl, resp_closed, a));
    CHECK(a->status == 200 && strcmp(body(a), "answer 0") == 0);
    CHECK(pump_until(cl, got_eof, NULL));
    CHECK(pump_until(cl, no_conns, NULL));
    cl_free(cl);
    server_stop();
}

TEST(shutdown_from_callback)
{
    server_start((struct http_server_config){0});
    struct client *cl = cl_new(11);
    struct resp *a = cl_get(cl, "GET", "/shutdown");

    REQUIRE(pump_until(cl, resp_closed, a));
    CHECK(a->status == 200 && strcmp(body(a), "bye") == 0);
    CHECK(pump_until(cl, got_eof, NULL));
    CHECK(cl->goaways == 1);
    CHECK(pump_until(cl, no_conns, NULL));
    cl_free(cl);
    server_stop();
}

TEST(shutdown_before_preface_done)
{
    server_start((struct http_server_config){0});
    struct client *cl = cl_new(4);
    int moved = 0;

    while (!moved) /* a few preface bytes, then shut down */
        moved = pump_once(cl);
    http_server_shutdown(srv);
    cl_get(cl, "GET", "/echo");
    CHECK(pump_until(cl, got_eof, NULL));
    CHECK(cl->goaways == 1 && cl->goaway_last == 0 && seen.requests == 0);
    CHECK(pump_until(cl, no_conns, NULL));
    cl_free(cl);
    server_stop();
}

TEST(idle_timeout_goaway)
{
    server_start((struct http_server_config){.idle_timeout = 0.2});
    struct client *cl = cl_new(64);
    struct resp *a = cl_get(cl, "GET", "/echo");
    double t0 = mono();

    REQUIRE(pump_until(cl, resp_closed, a));
    CHECK(pump_until(cl, got_eof, NULL));
    CHECK(mono() - t0 >= 0.15);
    CHECK(cl->goaways == 1 && cl->goaway_err == NGHTTP2_NO_ERROR);
    CHECK(pump_until(cl, no_conns, NULL));
    cl_free(cl);
    server_stop();
}

TEST(read_timeout_408)
{
    server_start((struct http_server_config){.read_timeout = 0.2});
    struct client *cl = cl_new(64);
    nghttp2_nv nva[] = {NV(":method", "POST"), NV(":scheme", "http"), NV(":path", "/echo"),
                        NV(":authority", "h")};
    struct resp *a = cl_submit(cl, nva, ARRAY_LEN(nva), NULL, 0, 1); /* body never comes */

    REQUIRE(pump_until(cl, resp_closed, a));
    CHECK(a->status == 408 && strstr(body(a), "request not received within 0.2 s"));
    CHECK(a->rst == NGHTTP2_NO_ERROR && seen.requests == 0);
    cl_free(cl);
    server_stop();
}

TEST(header_block_timeout)
{
    server_start((struct http_server_config){.read_timeout = 0.2});
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    REQUIRE(http_server_adopt(srv, sv[0], NULL, 0, "raw") == 0);
    /* preface, empty SETTINGS, HEADERS without END_HEADERS (an indexed
     * ":method: GET"), and no CONTINUATION ever */
    static const uint8_t raw[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                                 "\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                                 "\x00\x00\x01\x01\x00\x00\x00\x00\x01\x82";
    REQUIRE(write(sv[1], raw, sizeof(raw) - 1) == (ssize_t)sizeof(raw) - 1);
    double t0 = mono(), end = t0 + 5;
    char b[4096];
    while (mono() < end && http_server_conn_count(srv) > 0) {
        ev_run(loop, EVRUN_NOWAIT);
        ssize_t got = read(sv[1], b, sizeof(b));
        if (got == 0) /* our FIN after the server's GOAWAY and FIN ends its linger */
            shutdown(sv[1], SHUT_WR);
        usleep(100);
    }
    CHECK(http_server_conn_count(srv) == 0);
    CHECK(mono() - t0 >= 0.15 && mono() - t0 < 2.0);
    close(sv[1]);
    server_stop();
}

TEST(write_timeout_client_not_reading)
{
    server_start((struct http_server_config){.write_timeout = 0.3});
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, (1u << 31) - 1}};
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    REQUIRE(http_server_adopt(srv, sv[0], NULL, 0, "slow") == 0);
    struct client *cl = cl_new_fd(sv[1], 65536, iv, 1, 0);
    REQUIRE(nghttp2_session_set_local_window_size(cl->s, NGHTTP2_FLAG_NONE, 0, (1 << 30)) == 0);
    struct resp *a = cl_get(cl, "GET", "/big?8388608");

    cl->no_read = 1; /* from the start: the answer must pile up */
    CHECK(pump_until(cl, no_conns, NULL));
    CHECK(a->status == 0 || buf_avail(&a->body) < 8388608);
    cl_free(cl);
    server_stop();
}

TEST(stream_stalled_by_flow_control)
{
    server_start((struct http_server_config){.write_timeout = 0.2});
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 100}};
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    REQUIRE(http_server_adopt(srv, sv[0], NULL, 0, "stall") == 0);
    struct client *cl = cl_new_fd(sv[1], 4096, iv, 1, 1); /* never opens the window */
    struct resp *a = cl_get(cl, "GET", "/big?1000");

    REQUIRE(pump_until(cl, resp_closed, a));
    CHECK(a->status == 200 && a->rst == NGHTTP2_CANCEL && buf_avail(&a->body) == 100);
    struct resp *b = cl_get(cl, "GET", "/echo"); /* the connection lives on */
    REQUIRE(pump_until(cl, resp_closed, b));
    CHECK(b->status == 200 || b->rst == NGHTTP2_CANCEL);
    cl_free(cl);
    server_stop();
}

TEST(max_streams_setting)
{
    server_start((struct http_server_config){.max_streams = 2});
    struct client *cl = cl_new(32);
    int two = 2, three = 3;

    /* sent before the server's SETTINGS arrive: the third is refused */
    for (int i = 0; i < 3; i++)
        cl_get(cl, "GET", "/hold");
    REQUIRE(pump_until(cl, held_n, &two));
    REQUIRE(pump_until(cl, resp_closed, &cl->r[2]));
    CHECK(cl->r[2].rst == NGHTTP2_REFUSED_STREAM && seen.nheld == 2);
    CHECK(nghttp2_session_get_remote_settings(cl->s, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS) == 2);
    /* the client now waits for a free stream itself */
    cl_get(cl, "GET", "/hold");
    pump_for(cl, 0.05);
    CHECK(seen.nheld == 2);
    http_respond(seen.held[0], 200, NULL, NULL, 0, NULL, 0);
    seen.held[0] = NULL;
    REQUIRE(pump_until(cl, held_n, &three));
    for (int i = 1; i < 3; i++) {
        http_respond(seen.held[i], 200, NULL, NULL, 0, NULL, 0);
        seen.held[i] = NULL;
    }
    CHECK(pump_until(cl, all_closed, NULL));
    cl_free(cl);
    server_stop();
}

TEST(reset_flood_stops_reading)
{
    server_start((struct http_server_config){.max_streams = 2});
    struct client *cl = cl_new(64);
    int n;

    for (n = 1; n <= 2; n++) {
        struct resp *r = cl_get(cl, "GET", "/hold");
        REQUIRE(pump_until(cl, held_n, &n));
        REQUIRE(nghttp2_submit_rst_stream(cl->s, NGHTTP2_FLAG_NONE, r->id, NGHTTP2_CANCEL) == 0);
        REQUIRE(pump_until(cl, cancels_n, &n));
    }
    /* two cancelled requests held: the third is not read yet */
    struct resp *c = cl_get(cl, "GET", "/echo");
    pump_for(cl, 0.1);
    CHECK(seen.requests == 2 && !c->closed);
    http_respond(seen.held[0], 200, NULL, NULL, 0, NULL, 0);
    http_respond(seen.held[1], 200, NULL, NULL, 0, NULL, 0);
    seen.held[0] = seen.held[1] = NULL;
    REQUIRE(pump_until(cl, resp_closed, c));
    CHECK(c->status == 200);
    cl_free(cl);
    server_stop();
}

TEST(protocol_error_goaway)
{
    server_start((struct http_server_config){0});
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    REQUIRE(http_server_adopt(srv, sv[0], NULL, 0, "raw") == 0);
    /* preface, SETTINGS, then DATA on stream 0: a connection error */
    static const uint8_t raw[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                                 "\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                                 "\x00\x00\x01\x00\x00\x00\x00\x00\x00X";
    REQUIRE(write(sv[1], raw, sizeof(raw) - 1) == (ssize_t)sizeof(raw) - 1);
    struct client *cl = cl_new_fd(sv[1], 4096, NULL, 0, 0);
    CHECK(pump_until(cl, got_eof, NULL));
    CHECK(cl->goaways == 1 && cl->goaway_err == NGHTTP2_PROTOCOL_ERROR);
    CHECK(pump_until(cl, no_conns, NULL));
    cl_free(cl);
    server_stop();
}

TEST(http1_still_served)
{
    server_start((struct http_server_config){0});
    int sv[2];
    char buf[2048] = {0};
    size_t got = 0;
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    REQUIRE(http_server_adopt(srv, sv[0], NULL, 0, "h1") == 0);
    static const char req[] = "GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    REQUIRE(write(sv[1], req, sizeof(req) - 1) == (ssize_t)sizeof(req) - 1);
    double end = mono() + 5;
    while (mono() < end && !strstr(buf, "|")) {
        ev_run(loop, EVRUN_NOWAIT);
        ssize_t n = read(sv[1], buf + got, sizeof(buf) - 1 - got);
        if (n > 0)
            got += (size_t)n;
        else
            usleep(100);
    }
    CHECK(strncmp(buf, "HTTP/1.1 200 OK\r\n", 17) == 0);
    CHECK(strstr(buf, "v=11 m=GET") != NULL && seen.version == 11);
    close(sv[1]);
    server_stop();
}

TEST(max_conns_counts_h2)
{
    server_start((struct http_server_config){.listen = "127.0.0.1:0", .max_conns = 1});
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)http_server_port(srv)),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0), fd2 = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    REQUIRE(fcntl(fd, F_SETFL, O_NONBLOCK) == 0);
    struct client *cl = cl_new_fd(fd, 4096, NULL, 0, 0);
    struct resp *a = cl_get(cl, "GET", "/echo");
    REQUIRE(pump_until(cl, resp_closed, a));
    CHECK(a->status == 200 && strstr(body(a), "peer=127.0.0.1:"));
    /* the h2 connection holds the only slot: the next one is refused */
    REQUIRE(connect(fd2, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    REQUIRE(fcntl(fd2, F_SETFL, O_NONBLOCK) == 0);
    char buf[512] = {0};
    size_t got = 0;
    double end = mono() + 5;
    while (mono() < end && !strstr(buf, "}")) {
        ev_run(loop, EVRUN_NOWAIT);
        ssize_t n = read(fd2, buf + got, sizeof(buf) - 1 - got);
        if (n > 0)
            got += (size_t)n;
        else
            usleep(100);
    }
    CHECK(strncmp(buf, "HTTP/1.1 503", 12) == 0);
    close(fd2);
    cl_free(cl);
    server_stop();
}

TEST(server_free_cancels_held)
{
    server_start((struct http_server_config){0});
    struct client *cl = cl_new(64);
    int two = 2;

    cl_get(cl, "GET", "/hold");
    cl_get(cl, "GET", "/hold");
    REQUIRE(pump_until(cl, held_n, &two));
    http_server_free(srv);
    srv = NULL;
    CHECK(seen.cancels == 2 && !http_request_alive(seen.held[0]));
    for (int i = 0; i < 2; i++) {
        http_respond(seen.held[i], 200, NULL, NULL, 0, NULL, 0);
        seen.held[i] = NULL;
    }
    cl_free(cl);
}

int main(void)
{
    log_level = LOGL_ERROR;
    if (getenv("TEST_HTTP2_TRACE"))
        log_level = LOGL_TRACE;
    loop = ev_loop_new(EVFLAG_AUTO);
    RUN(get_one_byte_at_a_time);
    RUN(headers_case_insensitive_and_host);
    RUN(post_bodies_in_pieces);
    RUN(request_trailers_ignored);
    RUN(multiplexed_out_of_order);
    RUN(body_limit_413);
    RUN(header_limits_431);
    RUN(method_and_target_errors);
    RUN(cancel_on_rst_stream);
    RUN(connection_loss_cancels_all);
    RUN(cancel_callback_answers_others);
    RUN(goaway_on_shutdown);
    RUN(shutdown_from_callback);
    RUN(shutdown_before_preface_done);
    RUN(idle_timeout_goaway);
    RUN(read_timeout_408);
    RUN(header_block_timeout);
    RUN(write_timeout_client_not_reading);
    RUN(stream_stalled_by_flow_control);
    RUN(max_streams_setting);
    RUN(reset_flood_stops_reading);
    RUN(protocol_error_goaway);
    RUN(http1_still_served);
    RUN(max_conns_counts_h2);
    RUN(server_free_cancels_held);
    ev_loop_destroy(loop);
    return HARNESS_END();
}
