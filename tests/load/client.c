/* boomerang-bench: the load generator (client.h).
 *
 *   sched timer (1/rate) ──> op ──> idle pool conn of proxy (round-robin)
 *                                └─> proxy queue (FIFO; > 10 s old = overload)
 *   write answer ──> RYW read on a random proxy, with the write's token
 *               └──> probe (sampled): probe conn of every other proxy polls
 *                    SELECT id ... IN (...) with consistency local every 1 ms
 *   tick timer (1 s) ──> timeline row, progress line, lost probes, drain check
 *   metrics timer ──> GET /metrics on each aux conn ──> server lag
 *
 * Every request is one HTTP/1.1 exchange on a keep-alive connection; a
 * connection carries one request at a time (no pipelining), so the pool size
 * is the concurrency per proxy. Latency counts from an operation's scheduled
 * time, not from when a connection became free (no coordinated omission). */
#include "tests/load/client.h"

#include <assert.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <http_parser.h>
#include <jansson.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/log.h"

#define OVERLOAD_US     (10 * 1000 * 1000) /* queued longer than this: dropped */
#define PROBE_PERIOD_US 1000
#define PROBE_BATCH     64   /* ids per probe query */
#define PROBE_MAX       4096 /* probes in flight; more are skipped */
#define FILL_BATCH      1000
#define RECONNECT_S     0.05
#define RYW_LOG_MAX     5
#define WRITTEN_RING    (1 << 16)
#define TOKEN_MAX       512

enum op_kind { OP_WRITE, OP_READ, OP_RYW, OP_PROBE, OP_AUX };
enum conn_role { ROLE_POOL, ROLE_PROBE, ROLE_AUX };
enum conn_state { CONN_DOWN, CONN_CONNECTING, CONN_READY, CONN_BUSY };
enum setup_step {
    STEP_HEALTH,
    STEP_CREATE,
    STEP_COUNT,
    STEP_FILL,
    STEP_SYNC,
    STEP_RUN,
    STEP_METRICS,
};

struct resp {
    int status; /* 0: no answer (err says why) */
    const char *err;
    const char *body;
    size_t len;
    const char *token;
};

struct probe;

struct op {
    enum op_kind kind;
    int proxy;
    int writer; /* RYW: the proxy that took the write */
    int64_t sched_us, sent_us, ack_us;
    int64_t id;
    int sample;           /* write: probe its visibility */
    struct probe *probe;  /* write: its probe once sent */
    struct probe **batch; /* probe query: the probes it asks about */
    int nbatch;
    struct buf req;
    struct op *next;
};

struct probe {
    int64_t id;
    int writer;
    int64_t sent_us, ack_us; /* ack_us 0 until the write's answer */
    int64_t seen_us[BENCH_MAX_PROXIES];
    int pending; /* readers that have not seen it */
    int asking;  /* probe queries in flight that name it */
    int dead;    /* write failed, or given up: free when nothing names it */
    int writing; /* the write op still points here (until its answer) */
    struct probe *prev, *next;
};

struct run;

struct conn {
    struct run *r;
    int proxy;
    enum conn_role role;
    enum conn_state state;
    int fd;
    ev_io io;
    ev_timer timer; /* request timeout, or reconnect backoff */
    ev_timer pace;  /* probe conns: the 1 ms poll period */
    int64_t last_sent_us;
    http_parser parser;
    struct buf out, body;
    char token[TOKEN_MAX];
    char field[32];
    size_t field_len;
    int in_token, complete;
    int last_errno;
    struct op *op;
};

struct pqueue {
    struct op *head, *tail;
    size_t len;
};

struct run {
    struct bench *b;
    const struct bench_config *cfg;
    struct ev_loop *loop;
    struct sockaddr_storage addr[BENCH_MAX_PROXIES];
    socklen_t addrlen[BENCH_MAX_PROXIES];
    struct conn *pool[BENCH_MAX_PROXIES];
    struct conn probe_conn[BENCH_MAX_PROXIES];
    struct conn aux[BENCH_MAX_PROXIES];
    struct pqueue queue[BENCH_MAX_PROXIES];
    struct probe *probes; /* doubly linked, oldest first */
    struct probe *probes_tail;
    int nprobes;
    ev_timer sched, tick, metrics, drain;
    ev_signal sigint;
    enum setup_step step;
    int step_i;
    int setup_failed;
    char setup_token[TOKEN_MAX];
    int64_t t0_us, next_us, end_us, drain_deadline_us;
    uint64_t k;
    int draining;
    uint64_t rng;
    uint32_t id_prefix;
    uint32_t id_counter;
    int64_t written[WRITTEN_RING];
    uint64_t nwritten;
    struct loadhist tick_wack, tick_read, tick_vis;
    double tick_lag_max;
    uint64_t tick_ops, tick_errors;
    char *row_value;
};

static http_parser_settings parser_settings;

static void conn_kick(struct conn *c);
static void conn_send(struct conn *c, struct op *op);
static void setup_next(struct run *r);
static void run_start_load(struct run *r);
static void op_finish(struct run *r, struct op *op, const struct resp *rs);
static void probe_kick_all(struct run *r, int except);
static void client_pace_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void probe_start(struct run *r, struct op *w);
static void setup_fail(struct run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ------------------------------------------------------------------ helpers */

static uint64_t rng_next(struct run *r)
{
    /* xorshift64*: plenty for picking ids and proxies. */
    r->rng ^= r->rng >> 12;
    r->rng ^= r->rng << 25;
    r->rng ^= r->rng >> 27;
    return r->rng * 0x2545F4914F6CDD1Dull;
}

static double rng_unit(struct run *r)
{
    return (double)(rng_next(r) >> 11) / 9007199254740992.0;
}

static struct op *op_new(enum op_kind kind, int proxy)
{
    struct op *op = xcalloc(1, sizeof(*op));
    op->kind = kind;
    op->proxy = proxy;
    op->writer = -1;
    return op;
}

static void op_free(struct op *op)
{
    if (!op)
        return;
    buf_free(&op->req);
    free(op->batch);
    free(op);
}

/* Append a POST /v2/pipeline request with body to op->req. */
static void req_post(struct run *r, struct op *op, const char *body, const char *token, int local)
{
    char head[2048];
    int n = snprintf(head, sizeof(head),
                     "POST /v2/pipeline HTTP/1.1\r\nHost: %s:%d\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n%s%s%s%s%s%s%s\r\n",
                     r->cfg->proxy_hosts[op->proxy], r->cfg->proxy_ports[op->proxy], strlen(body),
                     token && *token ? "Boomerang-Token: " : "", token && *token ? token : "",
                     token && *token ? "\r\n" : "", local ? "Boomerang-Consistency: local\r\n" : "",
                     r->cfg->bearer[0] ? "Authorization: Bearer " : "", r->cfg->bearer,
                     r->cfg->bearer[0] ? "\r\n" : "");
    assert(n > 0 && (size_t)n < sizeof(head));
    buf_append(&op->req, head, (size_t)n);
    buf_append(&op->req, body, strlen(body));
}

static void req_get(struct run *r, struct op *op, const char *path)
{
    char head[1024];
    int n = snprintf(head, sizeof(head), "GET %s HTTP/1.1\r\nHost: %s:%d\r\n%s%s%s\r\n", path,
                     r->cfg->proxy_hosts[op->proxy], r->cfg->proxy_ports[op->proxy],
                     r->cfg->bearer[0] ? "Authorization: Bearer " : "", r->cfg->bearer,
                     r->cfg->bearer[0] ? "\r\n" : "");
    assert(n > 0 && (size_t)n < sizeof(head));
    buf_append(&op->req, head, (size_t)n);
}

/* A one-statement pipeline (execute + close) with sql and pre-encoded Hrana
 * args (a JSON array body without brackets, or ""). */
static void req_execute(struct run *r, struct op *op, const char *sql, const char *args,
                        const char *token, int local)
{
    struct buf body = {0};
    static const char tail[] = "]}},{\"type\":\"close\"}]}";

    static const char head[] = "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"";

    buf_append(&body, head, sizeof(head) - 1);
    buf_append(&body, sql, strlen(sql));
    buf_append(&body, "\",\"args\":[", strlen("\",\"args\":["));
    buf_append(&body, args, strlen(args));
    buf_append(&body, tail, sizeof(tail)); /* with the NUL */
    req_post(r, op, (const char *)buf_head(&body), token, local);
    buf_free(&body);
}

/* Parse a pipeline answer: *result is results[0].response.result when that
 * request succeeded (root owns it; the caller json_decref()s root), else *code
 * names the failure. */
static int hrana_result(const struct resp *rs, json_t **root, json_t **result, char *code,
                        size_t code_len)
{
    json_t *res, *err;

    *result = NULL;
    *root = json_loadb(rs->body, rs->len, 0, NULL);
    res = json_array_get(json_object_get(*root, "results"), 0);
    if (!*root || !res) {
        snprintf(code, code_len, "bad_response");
        return -1;
    }
    if (strcmp(json_string_value(json_object_get(res, "type")) ?: "", "ok") != 0) {
        err = json_object_get(json_object_get(res, "error"), "code");
        snprintf(code, code_len, "hrana_%s", json_string_value(err) ?: "error");
        return -1;
    }
    *result = json_object_get(json_object_get(res, "response"), "result");
    if (!*result) {
        snprintf(code, code_len, "bad_response");
        return -1;
    }
    return 0;
}

/* Count the error an answer carries (HTTP status, Hrana code, or no answer)
 * and return 1; return 0 with *root and *result set for a good answer. */
static int resp_failed(struct run *r, int proxy, const struct resp *rs, json_t **root,
                       json_t **result)
{
    char kind[64];

    *root = NULL;
    *result = NULL;
    if (rs->status == 0) {
        bench_error(r->b, proxy, rs->err);
    } else if (rs->status != 200) {
        snprintf(kind, sizeof(kind), "http_%d", rs->status);
        bench_error(r->b, proxy, kind);
    } else if (hrana_result(rs, root, result, kind, sizeof(kind)) < 0) {
        bench_error(r->b, proxy, kind);
    } else {
        return 0;
    }
    json_decref(*root);
    *root = NULL;
    r->tick_errors++;
    return 1;
}

static int64_t json_int(json_t *v)
{
    /* Hrana integers are decimal strings. */
    const char *s = json_string_value(json_object_get(v, "value"));
    return s ? strtoll(s, NULL, 10) : 0;
}

/* ------------------------------------------------------------ connections */

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (c->in_token >= 0) { /* a new field starts */
        c->field_len = 0;
        c->in_token = -1;
    }
    if (c->field_len + len < sizeof(c->field)) {
        memcpy(c->field + c->field_len, at, len);
        c->field_len += len;
    } else {
        c->field_len = sizeof(c->field); /* too long to be ours */
    }
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    size_t have;

    if (c->in_token < 0) {
        c->in_token = c->field_len == 15 && strncasecmp(c->field, "boomerang-token", 15) == 0;
        if (c->in_token)
            c->token[0] = '\0';
    }
    if (c->in_token) {
        have = strlen(c->token);
        if (have + len < sizeof(c->token)) {
            memcpy(c->token + have, at, len);
            c->token[have + len] = '\0';
        }
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    buf_append(&c->body, at, len);
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct conn *c = p->data;
    c->complete = 1;
    return 0;
}

static void conn_close_fd(struct conn *c)
{
    ev_io_stop(c->r->loop, &c->io);
    ev_timer_stop(c->r->loop, &c->timer);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->state = CONN_DOWN;
    buf_reset(&c->out);
    buf_reset(&c->body);
}

/* Fail the request in flight (if any) with err, and reconnect after a pause. */
static void conn_fail(struct conn *c, const char *err)
{
    struct op *op = c->op;
    struct resp rs = {.status = 0, .err = err};

    log_debug("proxy %d: request failed: %s", c->proxy, err);
    if (c->role == ROLE_AUX && c->r->step < STEP_RUN && !op)
        setup_fail(c->r, "proxy %s: %s failed: %s", c->r->cfg->proxy_urls[c->proxy],
                   strcmp(err, "connect") == 0 ? "connect" : "request",
                   c->last_errno ? strerror(c->last_errno) : err);
    conn_close_fd(c);
    c->op = NULL;
    ev_timer_set(&c->timer, RECONNECT_S, 0);
    ev_timer_start(c->r->loop, &c->timer);
    if (op)
        op_finish(c->r, op, &rs);
}

static void conn_answered(struct conn *c)
{
    struct op *op = c->op;
    struct resp rs = {.status = c->parser.status_code, .token = c->token};
    struct buf body = c->body;
    char token[TOKEN_MAX];

    /* Take the answer out of the connection first: op_finish may send the
     * next request on it, and a "Connection: close" answer closes it now. */
    memset(&c->body, 0, sizeof(c->body));
    memcpy(token, c->token, sizeof(token));
    rs.token = token;
    buf_append(&body, "", 1); /* NUL-terminate for the text parsers */
    rs.body = (const char *)buf_head(&body);
    rs.len = buf_avail(&body) - 1;
    ev_timer_stop(c->r->loop, &c->timer);
    c->op = NULL;
    c->state = CONN_READY;
    if (!http_should_keep_alive(&c->parser)) {
        conn_close_fd(c);
        ev_timer_set(&c->timer, 0, 0);
        ev_timer_start(c->r->loop, &c->timer);
    }
    op_finish(c->r, op, &rs);
    buf_free(&body);
    conn_kick(c);
}

static void conn_on_readable(struct conn *c)
{
    char chunk[65536];
    ssize_t n = read(c->fd, chunk, sizeof(chunk));
    size_t used;

    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0 || c->state != CONN_BUSY) {
        /* An idle keep-alive connection closed by the server is not an error. */
        if (c->state == CONN_BUSY)
            conn_fail(c, n == 0 ? "closed" : "io");
        else
            conn_fail(c, "closed");
        return;
    }
    used = http_parser_execute(&c->parser, &parser_settings, chunk, (size_t)n);
    if (c->parser.http_errno != HPE_OK || used != (size_t)n) {
        conn_fail(c, "bad_http");
        return;
    }
    if (c->complete)
        conn_answered(c);
}

static void conn_flush(struct conn *c)
{
    while (buf_avail(&c->out) > 0) {
        ssize_t n = write(c->fd, buf_head(&c->out), buf_avail(&c->out));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n < 0) {
            conn_fail(c, "io");
            return;
        }
        buf_consume(&c->out, (size_t)n);
    }
    ev_io_stop(c->r->loop, &c->io);
    ev_io_set(&c->io, c->fd, buf_avail(&c->out) ? EV_READ | EV_WRITE : EV_READ);
    ev_io_start(c->r->loop, &c->io);
}

static void conn_on_connected(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof(err);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err) {
        c->last_errno = err;
        log_debug("proxy %d: connect failed: %s", c->proxy, strerror(err));
        conn_fail(c, "connect");
        return;
    }
    ev_timer_stop(c->r->loop, &c->timer);
    c->state = CONN_READY;
    c->last_errno = 0;
    ev_io_stop(c->r->loop, &c->io);
    ev_io_set(&c->io, c->fd, EV_READ);
    ev_io_start(c->r->loop, &c->io);
    conn_kick(c);
}

static void client_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn *c = container_of(w, struct conn, io);
    (void)loop;

    if (c->state == CONN_CONNECTING) {
        conn_on_connected(c);
        return;
    }
    if (revents & EV_READ)
        conn_on_readable(c);
    if (c->fd >= 0 && (revents & EV_WRITE) && c->state == CONN_BUSY)
        conn_flush(c);
}

static int conn_connect(struct conn *c)
{
    struct run *r = c->r;
    int one = 1;

    c->fd = socket(r->addr[c->proxy].ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -errno;
    if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
        log_debug("setsockopt TCP_NODELAY failed: %s", strerror(errno));
    if (connect(c->fd, (struct sockaddr *)&r->addr[c->proxy], r->addrlen[c->proxy]) < 0 &&
        errno != EINPROGRESS) {
        int e = errno;
        close(c->fd);
        c->fd = -1;
        return -e;
    }
    c->state = CONN_CONNECTING;
    ev_io_set(&c->io, c->fd, EV_WRITE);
    ev_io_start(r->loop, &c->io);
    ev_timer_set(&c->timer, r->cfg->timeout_ms / 1000.0, 0);
    ev_timer_start(r->loop, &c->timer);
    return 0;
}

/* Request timeout, connect timeout or reconnect backoff. */
static void client_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct conn *c = container_of(w, struct conn, timer);
    int rc;
    (void)loop;
    (void)revents;

    if (c->state == CONN_BUSY || c->state == CONN_CONNECTING) {
        c->last_errno = c->state == CONN_CONNECTING ? ETIMEDOUT : 0;
        conn_fail(c, c->state == CONN_BUSY ? "timeout" : "connect");
        return;
    }
    if (c->state != CONN_DOWN)
        return;
    rc = conn_connect(c);
    if (rc < 0) {
        c->last_errno = -rc;
        if (c->role == ROLE_AUX && c->r->step < STEP_RUN) {
            setup_fail(c->r, "proxy %s: connect failed: %s", c->r->cfg->proxy_urls[c->proxy],
                       strerror(-rc));
            return;
        }
        log_warn("proxy %s: connect failed: %s", c->r->cfg->proxy_urls[c->proxy], strerror(-rc));
        ev_timer_set(&c->timer, RECONNECT_S * 10, 0);
        ev_timer_start(c->r->loop, &c->timer);
    }
}

static void conn_send(struct conn *c, struct op *op)
{
    assert(c->state == CONN_READY && !c->op);
    c->op = op;
    c->state = CONN_BUSY;
    c->complete = 0;
    c->in_token = 0;
    c->field_len = 0;
    c->token[0] = '\0';
    http_parser_init(&c->parser, HTTP_RESPONSE);
    c->parser.data = c;
    op->sent_us = mono_us();
    c->last_sent_us = op->sent_us;
    buf_reset(&c->out);
    buf_append(&c->out, buf_head(&op->req), buf_avail(&op->req));
    ev_timer_set(&c->timer, c->r->cfg->timeout_ms / 1000.0, 0);
    ev_timer_start(c->r->loop, &c->timer);
    /* Probing starts when the write leaves: another proxy may apply it before
     * the writer's answer is back (then its lag is recorded as 0). */
    if (op->kind == OP_WRITE && op->sample)
        probe_start(c->r, op);
    conn_flush(c);
}

static void conn_init(struct run *r, struct conn *c, int proxy, enum conn_role role)
{
    memset(c, 0, sizeof(*c));
    c->r = r;
    c->proxy = proxy;
    c->role = role;
    c->fd = -1;
    c->state = CONN_DOWN;
    ev_init(&c->io, client_io_cb);
    ev_init(&c->timer, client_timer_cb);
    ev_init(&c->pace, client_pace_cb);
    /* First connect from the loop, at once. */
    ev_timer_set(&c->timer, 0, 0);
    ev_timer_start(r->loop, &c->timer);
}

static void conn_free(struct run *r, struct conn *c)
{
    conn_close_fd(c);
    ev_timer_stop(r->loop, &c->pace);
    op_free(c->op);
    c->op = NULL;
    buf_free(&c->out);
    buf_free(&c->body);
}

/* ------------------------------------------------------------ the queues */

static void queue_push(struct pqueue *q, struct op *op)
{
    op->next = NULL;
    if (q->tail)
        q->tail->next = op;
    else
        q->head = op;
    q->tail = op;
    q->len++;
}

static struct op *queue_pop(struct pqueue *q)
{
    struct op *op = q->head;
    if (!op)
        return NULL;
    q->head = op->next;
    if (!q->head)
        q->tail = NULL;
    q->len--;
    return op;
}

/* The next queued operation of a proxy still worth sending: those queued
 * for more than OVERLOAD_US are dropped and counted. */
static struct op *queue_next(struct run *r, int proxy)
{
    struct op *op;
    int64_t now = mono_us();

    while ((op = queue_pop(&r->queue[proxy])) != NULL) {
        if (now - op->sched_us <= OVERLOAD_US)
            return op;
        r->b->overload++;
        op_free(op);
    }
    return NULL;
}

/* Hand op to an idle pool connection of its proxy, or queue it. */
static void dispatch(struct run *r, struct op *op)
{
    struct conn *pool = r->pool[op->proxy];

    if (!r->queue[op->proxy].head) {
        for (int i = 0; i < r->cfg->clients; i++) {
            if (pool[i].state == CONN_READY) {
                conn_send(&pool[i], op);
                return;
            }
        }
    }
    queue_push(&r->queue[op->proxy], op);
}

/* ------------------------------------------------------------ visibility */

static void probe_unlink(struct run *r, struct probe *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        r->probes = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        r->probes_tail = p->prev;
    r->nprobes--;
    free(p);
}

static void probe_record(struct run *r, struct probe *p, int reader)
{
    struct bench *b = r->b;
    size_t pair = (size_t)p->writer * (size_t)r->cfg->nproxies + (size_t)reader;
    int64_t lag = p->seen_us[reader] - p->ack_us;

    if (lag < 0) {
        lag = 0; /* this reader applied it before the writer's answer came back */
        b->vis_before_ack[pair]++;
        b->probes_before_ack++;
    }
    loadhist_record(&b->visibility, (uint64_t)lag);
    loadhist_record(&b->vis_pair[pair], (uint64_t)lag);
    loadhist_record(&r->tick_vis, (uint64_t)lag);
}

/* Free p once nothing needs it: every reader saw it (or it was given up), its
 * write was answered, and no probe query in flight names it. */
static void probe_maybe_free(struct run *r, struct probe *p)
{
    if ((p->pending == 0 || p->dead) && p->asking == 0 && !p->writing)
        probe_unlink(r, p);
}

static void probe_start(struct run *r, struct op *w)
{
    struct probe *p;

    if (r->nprobes >= PROBE_MAX || r->cfg->nproxies < 2) {
        r->b->probes_skipped += r->cfg->nproxies > 1;
        return;
    }
    p = xcalloc(1, sizeof(*p));
    p->id = w->id;
    p->writer = w->proxy;
    p->sent_us = w->sent_us;
    p->pending = r->cfg->nproxies - 1;
    p->writing = 1;
    p->prev = r->probes_tail;
    if (r->probes_tail)
        r->probes_tail->next = p;
    else
        r->probes = p;
    r->probes_tail = p;
    r->nprobes++;
    r->b->probes++;
    w->probe = p;
    probe_kick_all(r, w->proxy);
}

/* The write a probe follows was answered (ack_us > 0) or failed (0). */
static void probe_acked(struct run *r, struct probe *p, int64_t ack_us)
{
    p->writing = 0;
    if (!ack_us || p->dead) {
        p->dead = 1;
        probe_maybe_free(r, p);
        return;
    }
    p->ack_us = ack_us;
    for (int i = 0; i < r->cfg->nproxies; i++) {
        if (i != p->writer && p->seen_us[i])
            probe_record(r, p, i);
    }
    probe_maybe_free(r, p);
}

/* Build one probe query for reader: the ids of up to PROBE_BATCH live probes
 * it has not seen yet. NULL when there is nothing to ask. */
static struct op *probe_query(struct run *r, int reader)
{
    struct op *op = NULL;
    struct buf sql = {0};
    char num[32];

    for (struct probe *p = r->probes; p; p = p->next) {
        if (p->dead || p->writer == reader || p->seen_us[reader])
            continue;
        if (!op) {
            op = op_new(OP_PROBE, reader);
            op->batch = xcalloc(PROBE_BATCH, sizeof(*op->batch));
            buf_append(&sql, "SELECT id FROM bench_kv WHERE id IN (",
                       strlen("SELECT id FROM bench_kv WHERE id IN ("));
        }
        int n = snprintf(num, sizeof(num), "%s%lld", op->nbatch ? "," : "", (long long)p->id);
        buf_append(&sql, num, (size_t)n);
        op->batch[op->nbatch++] = p;
        p->asking++;
        if (op->nbatch == PROBE_BATCH)
            break;
    }
    if (!op)
        return NULL;
    buf_append(&sql, ")", 2);
    req_execute(r, op, (const char *)buf_head(&sql), "", NULL, 1);
    buf_free(&sql);
    op->sched_us = mono_us();
    return op;
}

static void probe_answer(struct run *r, struct op *op, const struct resp *rs)
{
    json_t *root, *result, *rows, *row;
    int64_t now = mono_us();
    size_t i;

    if (!resp_failed(r, op->proxy, rs, &root, &result)) {
        rows = json_object_get(result, "rows");
        json_array_foreach(rows, i, row)
        {
            int64_t id = json_int(json_array_get(row, 0));
            for (int j = 0; j < op->nbatch; j++) {
                struct probe *p = op->batch[j];
                if (p->id != id || p->seen_us[op->proxy])
                    continue;
                p->seen_us[op->proxy] = now;
                p->pending--;
                if (p->ack_us)
                    probe_record(r, p, op->proxy);
            }
        }
        json_decref(root);
    }
    for (int j = 0; j < op->nbatch; j++) {
        op->batch[j]->asking--;
        probe_maybe_free(r, op->batch[j]);
    }
}

/* Give up on probes older than the visibility timeout (each unseen reader is
 * a lost probe), or on all of them at the end of the drain (all = 1). */
static void probe_sweep(struct run *r, int all)
{
    int64_t limit = mono_us() - (int64_t)(r->cfg->vis_timeout_s * 1e6);
    struct probe *p = r->probes, *next;

    for (; p; p = next) {
        next = p->next;
        if (p->dead || (!all && p->sent_us > limit))
            continue;
        for (int i = 0; i < r->cfg->nproxies; i++) {
            if (i == p->writer || p->seen_us[i])
                continue;
            r->b->vis_lost[(size_t)p->writer * (size_t)r->cfg->nproxies + (size_t)i]++;
            r->b->probes_lost++;
            log_error("visibility probe lost: id %lld written on %s, not seen on %s after %.1f s",
                      (long long)p->id, r->cfg->proxy_urls[p->writer], r->cfg->proxy_urls[i],
                      (double)(mono_us() - p->sent_us) / 1e6);
        }
        p->dead = 1;
        probe_maybe_free(r, p);
    }
}

static void client_pace_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct conn *c = container_of(w, struct conn, pace);
    (void)loop;
    (void)revents;
    conn_kick(c);
}

static void probe_kick_all(struct run *r, int except)
{
    for (int i = 0; i < r->cfg->nproxies; i++) {
        if (i != except)
            conn_kick(&r->probe_conn[i]);
    }
}

/* A probe connection is free: ask again, at most once per PROBE_PERIOD_US. */
static void probe_conn_kick(struct conn *c)
{
    struct run *r = c->r;
    int64_t wait = c->last_sent_us + PROBE_PERIOD_US - mono_us();
    struct op *op;

    if (ev_is_active(&c->pace))
        return;
    if (wait > 0) {
        ev_timer_set(&c->pace, (double)wait / 1e6, 0);
        ev_timer_start(r->loop, &c->pace);
        return;
    }
    op = probe_query(r, c->proxy);
    if (op)
        conn_send(c, op);
}

/* A connection became ready: give it work according to its role. */
static void conn_kick(struct conn *c)
{
    struct op *op;

    if (c->state != CONN_READY)
        return;
    switch (c->role) {
    case ROLE_POOL:
        op = queue_next(c->r, c->proxy);
        if (op)
            conn_send(c, op);
        break;
    case ROLE_PROBE:
        probe_conn_kick(c);
        break;
    case ROLE_AUX:
        if (c->r->step < STEP_RUN && !c->r->setup_failed)
            setup_next(c->r);
        break;
    }
}

/* ------------------------------------------------------------ operations */

static void tick_record(struct run *r, struct loadhist *tick, struct loadhist *total,
                        struct loadhist *per, int64_t lat)
{
    if (lat < 0)
        lat = 0;
    loadhist_record(tick, (uint64_t)lat);
    loadhist_record(total, (uint64_t)lat);
    loadhist_record(per, (uint64_t)lat);
    r->tick_ops++;
}

static void write_answer(struct run *r, struct op *op, const struct resp *rs)
{
    json_t *root, *result;
    int64_t now = mono_us();
    struct bench_proxy *bp = &r->b->proxy[op->proxy];
    struct op *ryw;
    char args[64];

    if (resp_failed(r, op->proxy, rs, &root, &result)) {
        if (op->probe)
            probe_acked(r, op->probe, 0);
        return;
    }
    json_decref(root);
    r->b->writes_ok++;
    bp->writes++;
    tick_record(r, &r->tick_wack, &r->b->write_ack, &bp->write_ack, now - op->sched_us);
    r->written[r->nwritten++ % WRITTEN_RING] = op->id;
    if (op->probe)
        probe_acked(r, op->probe, now);
    if (!r->cfg->ryw_check)
        return;
    ryw = op_new(OP_RYW, (int)(rng_next(r) % (uint64_t)r->cfg->nproxies));
    ryw->writer = op->proxy;
    ryw->id = op->id;
    ryw->sched_us = now;
    ryw->ack_us = now;
    snprintf(args, sizeof(args), "{\"type\":\"integer\",\"value\":\"%lld\"}", (long long)op->id);
    req_execute(r, ryw, "SELECT v FROM bench_kv WHERE id = ?", args, rs->token, 0);
    dispatch(r, ryw);
}

static void read_answer(struct run *r, struct op *op, const struct resp *rs)
{
    json_t *root, *result;
    int64_t now = mono_us();
    struct bench *b = r->b;
    struct bench_proxy *bp = &b->proxy[op->proxy];
    size_t nrows;

    if (resp_failed(r, op->proxy, rs, &root, &result))
        return;
    nrows = json_array_size(json_object_get(result, "rows"));
    json_decref(root);
    if (op->kind == OP_READ) {
        b->reads_ok++;
        bp->reads++;
        tick_record(r, &r->tick_read, &b->read, &bp->read, now - op->sched_us);
        return;
    }
    b->ryw_reads++;
    bp->ryw_reads++;
    loadhist_record(&b->ryw_read, (uint64_t)MAX(now - op->sched_us, 0));
    loadhist_record(&bp->ryw_read, (uint64_t)MAX(now - op->sched_us, 0));
    if (nrows > 0)
        return;
    b->ryw_violations++;
    if (b->ryw_violations <= RYW_LOG_MAX)
        log_error("read-your-writes violation: id %lld written on %s, read with its token on "
                  "%s %.1f ms after the ack: no row (token %s)",
                  (long long)op->id, r->cfg->proxy_urls[op->writer], r->cfg->proxy_urls[op->proxy],
                  (double)(now - op->ack_us) / 1000.0,
                  rs->token && *rs->token ? "in answer" : "absent");
}

static void metrics_answer(struct run *r, struct op *op, const struct resp *rs)
{
    struct bench_proxy *bp = &r->b->proxy[op->proxy];
    const char *line = rs->body;

    if (rs->status != 200) {
        bench_error(r->b, op->proxy, rs->status ? "metrics_http" : "metrics_io");
        return;
    }
    for (; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
        static const char lag_s[] = "boomerang_replica_lag_seconds";
        static const char lag_t[] = "boomerang_replica_lag_txids";
        const char *v;
        double x;
        if (strncmp(line, lag_s, sizeof(lag_s) - 1) == 0 && (line[sizeof(lag_s) - 1] == ' ')) {
            v = line + sizeof(lag_s);
            x = strtod(v, NULL);
            if (!isfinite(x) || x < 0)
                continue;
            bp->lag_ms_last = x * 1000.0;
            loadhist_record(&bp->server_lag, (uint64_t)(x * 1e6));
            loadhist_record(&r->b->server_lag, (uint64_t)(x * 1e6));
            r->tick_lag_max = MAX(r->tick_lag_max, x * 1000.0);
        } else if (strncmp(line, lag_t, sizeof(lag_t) - 1) == 0 && line[sizeof(lag_t) - 1] == ' ') {
            bp->lag_txids_last = (int64_t)strtod(line + sizeof(lag_t), NULL);
        }
    }
}

static void setup_answer(struct run *r, struct op *op, const struct resp *rs);

static void op_finish(struct run *r, struct op *op, const struct resp *rs)
{
    switch (op->kind) {
    case OP_WRITE:
        write_answer(r, op, rs);
        break;
    case OP_READ:
    case OP_RYW:
        read_answer(r, op, rs);
        break;
    case OP_PROBE:
        probe_answer(r, op, rs);
        break;
    case OP_AUX:
        if (r->step == STEP_METRICS)
            metrics_answer(r, op, rs);
        else
            setup_answer(r, op, rs);
        break;
    }
    op_free(op);
}

/* One scheduled operation: a write (INSERT of a fresh row) or a read of an
 * existing id, on proxy k mod nproxies. */
static struct op *op_make(struct run *r, uint64_t k, int64_t sched_us)
{
    int proxy = (int)(k % (uint64_t)r->cfg->nproxies);
    int write = rng_unit(r) < r->cfg->write_ratio;
    struct op *op = op_new(write ? OP_WRITE : OP_READ, proxy);
    char args[1024 + 256];
    int64_t id;

    op->sched_us = sched_us;
    if (write) {
        id = ((int64_t)r->id_prefix << 32) | (int64_t)(++r->id_counter);
        op->id = id;
        op->sample = rng_unit(r) < r->cfg->vis_sample;
        buf_reset(&op->req);
        struct buf a = {0};
        int n =
            snprintf(args, sizeof(args),
                     "{\"type\":\"integer\",\"value\":\"%lld\"},{\"type\":\"text\",\"value\":\"",
                     (long long)id);
        buf_append(&a, args, (size_t)n);
        buf_append(&a, r->row_value, strlen(r->row_value));
        n = snprintf(args, sizeof(args),
                     "\"},{\"type\":\"text\",\"value\":\"p%d\"},{\"type\":\"integer\",\"value\":"
                     "\"%lld\"}",
                     proxy, (long long)now_us());
        buf_append(&a, args, (size_t)n + 1);
        req_execute(r, op, "INSERT INTO bench_kv(id, v, origin, t_us) VALUES (?, ?, ?, ?)",
                    (const char *)buf_head(&a), NULL, 0);
        buf_free(&a);
        return op;
    }
    if (r->b->keys_ready)
        id = 1 + (int64_t)(rng_next(r) % (uint64_t)r->cfg->keys);
    else if (r->nwritten)
        id = r->written[rng_next(r) % MIN(r->nwritten, (uint64_t)WRITTEN_RING)];
    else
        id = 1;
    op->id = id;
    snprintf(args, sizeof(args), "{\"type\":\"integer\",\"value\":\"%lld\"}", (long long)id);
    req_execute(r, op, "SELECT v FROM bench_kv WHERE id = ?", args, NULL, 0);
    return op;
}

static int load_done(const struct run *r)
{
    if (r->cfg->count && r->k >= r->cfg->count)
        return 1;
    return r->end_us && r->next_us >= r->end_us;
}

static void run_drain(struct run *r)
{
    r->draining = 1;
    ev_timer_stop(r->loop, &r->sched);
    r->drain_deadline_us =
        mono_us() + (int64_t)(MAX(r->cfg->vis_timeout_s, r->cfg->timeout_ms / 1000.0) * 1e6) +
        1000000;
}

static void client_sched_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct run *r = container_of(w, struct run, sched);
    int64_t now = mono_us();
    double period_us = 1e6 / r->cfg->rate;
    (void)revents;

    while (!load_done(r) && r->next_us <= now) {
        dispatch(r, op_make(r, r->k, r->next_us));
        r->k++;
        r->b->scheduled++;
        r->next_us = r->t0_us + (int64_t)((double)r->k * period_us);
    }
    if (load_done(r)) {
        run_drain(r);
        return;
    }
    ev_timer_set(w, (double)(r->next_us - now) / 1e6, 0);
    ev_timer_start(loop, w);
}

/* ------------------------------------------------------------ set-up */

static void setup_fail(struct run *r, const char *fmt, ...)
{
    va_list ap;

    if (r->setup_failed)
        return;
    r->setup_failed = 1;
    fprintf(stderr, "boomerang-bench: setup failed: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    ev_break(r->loop, EVBREAK_ALL);
}

/* The proxy a set-up step talks to. */
static int setup_target(const struct run *r)
{
    return r->step == STEP_HEALTH || r->step == STEP_SYNC ? r->step_i : 0;
}

static struct op *setup_op(struct run *r)
{
    struct op *op = op_new(OP_AUX, setup_target(r));
    char args[256];
    int64_t lo, hi;

    switch (r->step) {
    case STEP_HEALTH:
        req_get(r, op, "/health");
        break;
    case STEP_CREATE:
        req_execute(r, op,
                    "CREATE TABLE IF NOT EXISTS bench_kv(id INTEGER PRIMARY KEY, v TEXT, "
                    "origin TEXT, t_us INTEGER)",
                    "", NULL, 0);
        break;
    case STEP_COUNT:
        snprintf(args, sizeof(args), "{\"type\":\"integer\",\"value\":\"%lld\"}",
                 (long long)r->cfg->keys);
        req_execute(r, op,
                    "SELECT count(*), (SELECT count(*) FROM bench_kv WHERE id BETWEEN 1 AND ?) "
                    "FROM bench_kv",
                    args, r->setup_token, 0);
        break;
    case STEP_FILL:
        lo = (int64_t)r->step_i * FILL_BATCH + 1;
        hi = MIN(lo + FILL_BATCH - 1, r->cfg->keys);
        snprintf(
            args, sizeof(args),
            "{\"type\":\"integer\",\"value\":\"%lld\"},{\"type\":\"integer\",\"value\":\"%lld\"},"
            "{\"type\":\"integer\",\"value\":\"%d\"}",
            (long long)lo, (long long)hi, r->cfg->row_bytes);
        req_execute(r, op,
                    "WITH RECURSIVE s(x) AS (SELECT ?1 UNION ALL SELECT x + 1 FROM s WHERE x < ?2) "
                    "INSERT INTO bench_kv(id, v, origin, t_us) "
                    "SELECT x, substr(hex(randomblob(?3)), 1, ?3), 'setup', 0 FROM s",
                    args, NULL, 0);
        break;
    default: /* STEP_SYNC: this proxy has the schema and the pre-filled rows */
        req_execute(r, op, "SELECT count(*) FROM bench_kv", "", r->setup_token, 0);
        break;
    }
    return op;
}

static void setup_next(struct run *r)
{
    struct conn *c;

    if (r->step >= STEP_RUN || r->setup_failed)
        return;
    c = &r->aux[setup_target(r)];
    if (c->state != CONN_READY || c->op)
        return;
    conn_send(c, setup_op(r));
}

/* A set-up answer must be a 200 whose first result is ok. */
static int setup_check(struct run *r, struct op *op, const struct resp *rs, json_t **root,
                       json_t **result)
{
    char code[64];
    const char *url = r->cfg->proxy_urls[op->proxy];

    *root = NULL;
    if (rs->status == 0) {
        setup_fail(r, "proxy %s: no answer: %s", url, rs->err);
        return -1;
    }
    if (rs->status != 200) {
        setup_fail(r, "proxy %s: HTTP %d: %.300s", url, rs->status, rs->body);
        return -1;
    }
    if (r->step == STEP_HEALTH)
        return 0;
    if (hrana_result(rs, root, result, code, sizeof(code)) < 0) {
        setup_fail(r, "proxy %s: %s: %.300s", url, code, rs->body);
        json_decref(*root);
        *root = NULL;
        return -1;
    }
    if (rs->token && *rs->token)
        snprintf(r->setup_token, sizeof(r->setup_token), "%s", rs->token);
    return 0;
}

static void setup_answer(struct run *r, struct op *op, const struct resp *rs)
{
    json_t *root, *result, *row;

    if (r->setup_failed || setup_check(r, op, rs, &root, &result) < 0)
        return;
    switch (r->step) {
    case STEP_HEALTH:
        if (++r->step_i < r->cfg->nproxies)
            break;
        r->step_i = 0;
        r->step = r->cfg->setup ? STEP_CREATE : STEP_RUN;
        break;
    case STEP_CREATE:
        r->step = r->cfg->keys > 0 ? STEP_COUNT : STEP_SYNC;
        break;
    case STEP_COUNT:
        row = json_array_get(json_object_get(result, "rows"), 0);
        if (json_int(json_array_get(row, 0)) == 0) {
            r->step = STEP_FILL;
            break;
        }
        r->b->keys_ready = json_int(json_array_get(row, 1)) == r->cfg->keys;
        r->step = STEP_SYNC;
        break;
    case STEP_FILL:
        r->b->keys_filled = MIN((uint64_t)(r->step_i + 1) * FILL_BATCH, (uint64_t)r->cfg->keys);
        if ((int64_t)++r->step_i * FILL_BATCH < r->cfg->keys)
            break;
        r->b->keys_ready = 1;
        r->step_i = 0;
        r->step = STEP_SYNC;
        break;
    default:
        if (++r->step_i < r->cfg->nproxies)
            break;
        r->step = STEP_RUN;
        break;
    }
    json_decref(root);
    if (r->step == STEP_RUN)
        run_start_load(r);
    else
        setup_next(r);
}

/* ------------------------------------------------------------ the run */

static void run_finish(struct run *r)
{
    r->b->duration_s = (double)(mono_us() - r->t0_us) / 1e6;
    ev_break(r->loop, EVBREAK_ALL);
}

static int run_idle(const struct run *r)
{
    if (r->nprobes > 0)
        return 0;
    for (int p = 0; p < r->cfg->nproxies; p++) {
        if (r->queue[p].head || r->probe_conn[p].op)
            return 0;
        for (int i = 0; i < r->cfg->clients; i++) {
            if (r->pool[p][i].op)
                return 0;
        }
    }
    return 1;
}

static void tick_flush(struct run *r)
{
    struct bench *b = r->b;
    struct bench_tick *t;

    if (b->nticks == b->cap_ticks) {
        b->cap_ticks = b->cap_ticks ? b->cap_ticks * 2 : 64;
        b->ticks = xrealloc(b->ticks, (size_t)b->cap_ticks * sizeof(*b->ticks));
    }
    t = &b->ticks[b->nticks++];
    t->t_s = (double)(mono_us() - r->t0_us) / 1e6;
    t->write_ack_p50 = loadhist_quantile(&r->tick_wack, 0.5);
    t->write_ack_p99 = loadhist_quantile(&r->tick_wack, 0.99);
    t->read_p50 = loadhist_quantile(&r->tick_read, 0.5);
    t->read_p99 = loadhist_quantile(&r->tick_read, 0.99);
    t->visibility_p99 = loadhist_quantile(&r->tick_vis, 0.99);
    t->server_lag_ms_max = r->tick_lag_max;
    t->ops = r->tick_ops;
    t->errors = r->tick_errors;
    loadhist_reset(&r->tick_wack);
    loadhist_reset(&r->tick_read);
    loadhist_reset(&r->tick_vis);
    r->tick_lag_max = 0;
    r->tick_ops = r->tick_errors = 0;
}

/* For the progress line: "-" when nothing was recorded in that second. */
static void fmt_us(char *out, size_t len, uint64_t us)
{
    if (us == 0)
        snprintf(out, len, "-");
    else if (us < 1000)
        snprintf(out, len, "%lluus", (unsigned long long)us);
    else if (us < 1000000)
        snprintf(out, len, "%.1fms", (double)us / 1e3);
    else
        snprintf(out, len, "%.2fs", (double)us / 1e6);
}

static void progress_line(struct run *r)
{
    const struct bench *b = r->b;
    const struct bench_tick *t = &b->ticks[b->nticks - 1];
    char w50[16], w99[16], rd[16], vis[16];
    size_t queued = 0;

    for (int p = 0; p < r->cfg->nproxies; p++)
        queued += r->queue[p].len;
    fmt_us(w50, sizeof(w50), t->write_ack_p50);
    fmt_us(w99, sizeof(w99), t->write_ack_p99);
    fmt_us(rd, sizeof(rd), t->read_p99);
    fmt_us(vis, sizeof(vis), t->visibility_p99);
    fprintf(stderr,
            "\r%5.0fs%s ops %llu/s | write p50 %s p99 %s | read p99 %s | vis p99 %s | lag %.0fms "
            "| queued %zu | err %llu | ryw viol %llu   ",
            t->t_s, r->draining ? " drain" : "", (unsigned long long)t->ops, w50, w99, rd, vis,
            t->server_lag_ms_max, queued, (unsigned long long)b->errors,
            (unsigned long long)b->ryw_violations);
    fflush(stderr);
}

static void client_tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct run *r = container_of(w, struct run, tick);
    (void)loop;
    (void)revents;

    tick_flush(r);
    if (r->cfg->progress)
        progress_line(r);
    probe_sweep(r, 0);
}

static void client_drain_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct run *r = container_of(w, struct run, drain);
    (void)loop;
    (void)revents;

    if (!r->draining)
        return;
    if (run_idle(r)) {
        run_finish(r);
        return;
    }
    if (mono_us() >= r->drain_deadline_us) {
        probe_sweep(r, 1);
        run_finish(r);
    }
}

static void client_metrics_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct run *r = container_of(w, struct run, metrics);
    (void)loop;
    (void)revents;

    for (int p = 0; p < r->cfg->nproxies; p++) {
        struct conn *c = &r->aux[p];
        struct op *op;
        if (c->state != CONN_READY || c->op)
            continue;
        op = op_new(OP_AUX, p);
        req_get(r, op, "/metrics");
        conn_send(c, op);
    }
}

static void client_sigint_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    struct run *r = container_of(w, struct run, sigint);
    (void)loop;
    (void)revents;

    r->b->interrupted = 1;
    if (r->step < STEP_RUN) {
        setup_fail(r, "interrupted");
        return;
    }
    if (r->draining) {
        run_finish(r); /* a second ^C: stop now */
        return;
    }
    run_drain(r);
}

static void run_start_load(struct run *r)
{
    const struct bench_config *cfg = r->cfg;

    r->step = STEP_METRICS;
    r->t0_us = mono_us();
    r->next_us = r->t0_us;
    r->end_us = cfg->duration_s > 0 ? r->t0_us + (int64_t)(cfg->duration_s * 1e6) : 0;
    r->b->started_at_us = now_us();
    ev_timer_set(&r->sched, 0, 0);
    ev_timer_start(r->loop, &r->sched);
    ev_timer_set(&r->tick, 1, 1);
    ev_timer_start(r->loop, &r->tick);
    ev_timer_set(&r->drain, 0.01, 0.01);
    ev_timer_start(r->loop, &r->drain);
    if (cfg->metrics_interval_s > 0) {
        ev_timer_set(&r->metrics, 0, cfg->metrics_interval_s);
        ev_timer_start(r->loop, &r->metrics);
    }
    for (int p = 0; p < cfg->nproxies; p++)
        conn_kick(&r->probe_conn[p]);
}

static int run_resolve(struct run *r)
{
    for (int p = 0; p < r->cfg->nproxies; p++) {
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
        char port[16];
        int rc;

        snprintf(port, sizeof(port), "%d", r->cfg->proxy_ports[p]);
        rc = getaddrinfo(r->cfg->proxy_hosts[p], port, &hints, &ai);
        if (rc != 0 || !ai) {
            fprintf(stderr, "boomerang-bench: setup failed: proxy %s: cannot resolve: %s\n",
                    r->cfg->proxy_urls[p], gai_strerror(rc));
            return -1;
        }
        memcpy(&r->addr[p], ai->ai_addr, ai->ai_addrlen);
        r->addrlen[p] = ai->ai_addrlen;
        freeaddrinfo(ai);
    }
    return 0;
}

static void run_init(struct run *r, struct bench *b)
{
    const struct bench_config *cfg = &b->cfg;

    r->b = b;
    r->cfg = cfg;
    r->loop = ev_default_loop(0);
    r->rng = cfg->seed ? cfg->seed : (uint64_t)now_us() ^ ((uint64_t)getpid() << 32);
    r->rng |= 1;
    /* Ids are prefix << 32 | counter: never 1..keys, unique across runs. */
    r->id_prefix = 1 + (uint32_t)(rng_next(r) % ((1u << 30) - 1));
    r->row_value = xmalloc((size_t)cfg->row_bytes + 1);
    for (int i = 0; i < cfg->row_bytes; i++)
        r->row_value[i] = "abcdefghijklmnopqrstuvwxyz0123456789"[rng_next(r) % 36];
    r->row_value[cfg->row_bytes] = '\0';
    loadhist_reset(&r->tick_wack);
    loadhist_reset(&r->tick_read);
    loadhist_reset(&r->tick_vis);
    parser_settings.on_header_field = on_header_field;
    parser_settings.on_header_value = on_header_value;
    parser_settings.on_body = on_body;
    parser_settings.on_message_complete = on_message_complete;
    for (int p = 0; p < cfg->nproxies; p++) {
        r->pool[p] = xcalloc((size_t)cfg->clients, sizeof(struct conn));
        for (int i = 0; i < cfg->clients; i++)
            conn_init(r, &r->pool[p][i], p, ROLE_POOL);
        conn_init(r, &r->probe_conn[p], p, ROLE_PROBE);
        conn_init(r, &r->aux[p], p, ROLE_AUX);
    }
    ev_init(&r->sched, client_sched_cb);
    ev_init(&r->tick, client_tick_cb);
    ev_init(&r->drain, client_drain_cb);
    ev_init(&r->metrics, client_metrics_cb);
    ev_signal_init(&r->sigint, client_sigint_cb, SIGINT);
    ev_signal_start(r->loop, &r->sigint);
    r->step = STEP_HEALTH;
}

static void run_free(struct run *r)
{
    struct op *op;

    ev_timer_stop(r->loop, &r->sched);
    ev_timer_stop(r->loop, &r->tick);
    ev_timer_stop(r->loop, &r->drain);
    ev_timer_stop(r->loop, &r->metrics);
    ev_signal_stop(r->loop, &r->sigint);
    for (int p = 0; p < r->cfg->nproxies; p++) {
        for (int i = 0; i < r->cfg->clients; i++)
            conn_free(r, &r->pool[p][i]);
        free(r->pool[p]);
        conn_free(r, &r->probe_conn[p]);
        conn_free(r, &r->aux[p]);
        while ((op = queue_pop(&r->queue[p])) != NULL)
            op_free(op);
    }
    while (r->probes)
        probe_unlink(r, r->probes);
    free(r->row_value);
}

int client_run(struct bench *b)
{
    struct run *r = xcalloc(1, sizeof(*r));
    int rc = 0;

    run_init(r, b);
    if (run_resolve(r) < 0) {
        rc = BENCH_EXIT_SETUP;
        goto out;
    }
    ev_run(r->loop, 0);
    if (r->setup_failed) {
        rc = BENCH_EXIT_SETUP;
        goto out;
    }
    /* What the last partial second saw. */
    if (r->tick_ops || r->tick_errors || r->tick_vis.count)
        tick_flush(r);
    if (r->cfg->progress)
        fputc('\n', stderr);
out:
    run_free(r);
    free(r);
    return rc;
}
