/* boomerang: a closed-loop HTTP/1.1 client for the sidecar's benchmarks
 * (tests/bench/proxy.sh).
 *
 *   bench_proxy --url http://127.0.0.1:PORT --mode write [--count N] [--max-wait-ms N]
 *   bench_proxy --url http://127.0.0.1:PORT --mode read [--seconds S] [--conns N] [--rows N]
 *
 * write: one keep-alive connection, N single-row INSERTs into w(v), one at a
 *        time (POST /v2/pipeline: execute + close). Each is timed from just
 *        before the request is sent to the last byte of the answer. With
 *        --max-wait-ms the request carries Boomerang-Max-Wait-Ms: N; answers
 *        carrying Boomerang-Applied: 0 are counted ("unapplied").
 * read:  C connections, a thread each, for S seconds: SELECT v FROM kv WHERE
 *        id = ? with a random id in 1..ROWS, one request at a time per
 *        connection.
 *
 * Plain blocking sockets with TCP_NODELAY, no HTTP library: the point is to
 * add as little client time as possible to what is measured. Prints one JSON
 * line: {"mode","n","seconds","per_s","p50_us","p90_us","p99_us","max_us",
 * "mean_us","unapplied","errors"}; percentiles are nearest-rank over every
 * sample (exact, no histogram). Exit 0; 1 if any answer was not a 200 or held
 * a per-request error (counted in "errors"); 2 on a usage or connection
 * failure. Every socket operation is bounded by a 30 s timeout. */
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "common/opt.h"
#include "common/util.h"

#define CONN_BUF      65536 /* largest answer accepted (a point read's is ~300 bytes) */
#define IO_TIMEOUT_S  30
#define MAX_CONNS     256
#define WARMUP_WRITES 10  /* untimed, first: connection set-up, caches, the primary's stream */
#define WARMUP_READS  200 /* untimed, per connection (as the pg peer's pgryw does) */

static struct {
    const char *url, *mode;
    int64_t count, max_wait_ms, seconds, conns, rows;
} conf = {
    .mode = "write", .count = 300, .max_wait_ms = -1, .seconds = 5, .conns = 1, .rows = 10000};

static const struct opt opts[] = {
    {"url", "BENCH_CLIENT_URL", OPT_STRING, &conf.url, "URL", "the sidecar, http://HOST:PORT"},
    {"mode", "BENCH_CLIENT_MODE", OPT_STRING, &conf.mode, "MODE", "write or read (default write)"},
    {"count", "BENCH_CLIENT_COUNT", OPT_INT, &conf.count, "N", "write: INSERTs (default 300)"},
    {"max-wait-ms", "BENCH_CLIENT_MAX_WAIT_MS", OPT_INT, &conf.max_wait_ms, "MS",
     "write: send Boomerang-Max-Wait-Ms: MS (default: no header)"},
    {"seconds", "BENCH_CLIENT_SECONDS", OPT_INT, &conf.seconds, "S", "read: duration (default 5)"},
    {"conns", "BENCH_CLIENT_CONNS", OPT_INT, &conf.conns, "N",
     "read: connections, one thread each (default 1)"},
    {"rows", "BENCH_CLIENT_ROWS", OPT_INT, &conf.rows, "N", "read: ids 1..N (default 10000)"},
};

/* Latency samples, µs. */
struct samples {
    int64_t *v;
    size_t n, cap;
};

struct conn {
    int fd;
    size_t len;             /* bytes in buf */
    char buf[CONN_BUF + 1]; /* +1: a NUL after the headers while parsing them */
};

/* One answer, as far as the benchmark cares. */
struct answer {
    int status;
    int unapplied; /* Boomerang-Applied: 0 */
    int failed;    /* a per-request error in the body */
};

/* What each read thread does and finds. */
struct worker {
    pthread_t thread;
    struct sockaddr_in addr;
    unsigned seed;
    int64_t deadline_us;
    struct samples lat;
    uint64_t errors;
    int conn_failed;
};

static void samples_add(struct samples *s, int64_t v)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = xrealloc(s->v, s->cap * sizeof(*s->v));
    }
    s->v[s->n++] = v;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest rank: the smallest sample with at least q of them at or below it. */
static int64_t samples_quantile(const struct samples *s, double q)
{
    size_t rank;

    if (s->n == 0)
        return 0;
    rank = (size_t)ceil(q * (double)s->n);
    return s->v[rank > 0 ? rank - 1 : 0];
}

static int parse_url(const char *url, struct sockaddr_in *addr)
{
    char host[64];
    int port;

    if (strncmp(url, "http://", 7) != 0 ||
        util_split_hostport(url + 7, host, sizeof(host), &port) != 0) {
        fprintf(stderr, "bench_proxy: --url must be http://IPV4:PORT, not '%s'\n", url);
        return -1;
    }
    memset(addr, 0, sizeof(*addr));
    addr->sin_family = AF_INET;
    addr->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr->sin_addr) != 1) {
        fprintf(stderr, "bench_proxy: '%s' is not an IPv4 address\n", host);
        return -1;
    }
    return 0;
}

static int conn_open(struct conn *c, const struct sockaddr_in *addr)
{
    struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
    int one = 1;

    c->len = 0;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        perror("bench_proxy: socket");
        return -1;
    }
    if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0 ||
        setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
        setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0 ||
        connect(c->fd, (const struct sockaddr *)addr, sizeof(*addr)) != 0) {
        perror("bench_proxy: connect");
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    return 0;
}

/* Read more bytes into c->buf. 0 ok; -1 on EOF, timeout, error or overflow. */
static int conn_fill(struct conn *c)
{
    ssize_t n;

    if (c->len >= CONN_BUF) {
        fprintf(stderr, "bench_proxy: answer larger than %d bytes\n", CONN_BUF);
        return -1;
    }
    do {
        n = recv(c->fd, c->buf + c->len, CONN_BUF - c->len, 0);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) {
        fprintf(stderr, "bench_proxy: recv: %s\n", n == 0 ? "connection closed" : strerror(errno));
        return -1;
    }
    c->len += (size_t)n;
    return 0;
}

/* The value of header NAME (lowercase, with the colon) in the NUL-terminated
 * header block HDR, or NULL. */
static const char *header_value(const char *hdr, const char *name)
{
    const char *p = hdr;

    while ((p = strcasestr(p, name)) != NULL) {
        if (p > hdr && p[-1] == '\n') {
            p += strlen(name);
            while (*p == ' ' || *p == '\t')
                p++;
            return p;
        }
        p++;
    }
    return NULL;
}

/* Parse the head in c->buf[0..hlen) into *a; sets *body_len. */
static int parse_head(struct conn *c, size_t hlen, struct answer *a, size_t *body_len)
{
    const char *v;
    char saved = c->buf[hlen];

    c->buf[hlen] = '\0';
    if (sscanf(c->buf, "HTTP/1.%*d %d", &a->status) != 1) {
        fprintf(stderr, "bench_proxy: bad status line\n");
        c->buf[hlen] = saved;
        return -1;
    }
    v = header_value(c->buf, "content-length:");
    *body_len = v ? strtoul(v, NULL, 10) : 0;
    v = header_value(c->buf, "boomerang-applied:");
    a->unapplied = v && *v == '0';
    c->buf[hlen] = saved;
    if (!header_value(c->buf, "content-length:") && a->status != 204) {
        fprintf(stderr, "bench_proxy: answer without Content-Length\n");
        return -1;
    }
    return 0;
}

/* Read one whole answer (head and body) and consume it from c->buf. */
static int conn_read_answer(struct conn *c, struct answer *a)
{
    char *end;
    size_t hlen, body_len, total;

    memset(a, 0, sizeof(*a));
    for (;;) {
        c->buf[c->len] = '\0';
        end = strstr(c->buf, "\r\n\r\n");
        if (end)
            break;
        if (conn_fill(c) != 0)
            return -1;
    }
    hlen = (size_t)(end - c->buf) + 4;
    if (parse_head(c, hlen, a, &body_len) != 0)
        return -1;
    total = hlen + body_len;
    if (total > CONN_BUF) {
        fprintf(stderr, "bench_proxy: answer larger than %d bytes\n", CONN_BUF);
        return -1;
    }
    while (c->len < total)
        if (conn_fill(c) != 0)
            return -1;
    c->buf[total] = '\0'; /* jansson's default and compact separators */
    a->failed = strstr(c->buf + hlen, "\"type\":\"error\"") != NULL ||
                strstr(c->buf + hlen, "\"type\": \"error\"") != NULL;
    memmove(c->buf, c->buf + total, c->len - total);
    c->len -= total;
    return 0;
}

/* Send REQ, read the answer; *us = the round trip. */
static int conn_round_trip(struct conn *c, const char *req, size_t len, struct answer *a,
                           int64_t *us)
{
    int64_t t0 = mono_us();

    if (util_write_all(c->fd, req, len) != 0) {
        fprintf(stderr, "bench_proxy: send failed\n");
        return -1;
    }
    if (conn_read_answer(c, a) != 0)
        return -1;
    *us = mono_us() - t0;
    return 0;
}

/* A POST /v2/pipeline of one execute of SQL with one argument (ARG, a Hrana
 * value object) and a close; EXTRA is more header lines. Returns its length. */
static size_t build_request(char *out, size_t cap, const char *sql, const char *arg,
                            const char *extra)
{
    char body[512];
    int blen, n;

    blen = snprintf(body, sizeof(body),
                    "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"%s\",\"args\":[%s]}},"
                    "{\"type\":\"close\"}]}",
                    sql, arg);
    n = snprintf(out, cap,
                 "POST /v2/pipeline HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Content-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s",
                 blen, extra, body);
    if (blen < 0 || n < 0 || (size_t)n >= cap || (size_t)blen >= sizeof(body)) {
        fprintf(stderr, "bench_proxy: request too long\n");
        exit(2);
    }
    return (size_t)n;
}

/* Count A into the totals; 0 if it was a good answer. */
static int tally(const struct answer *a, uint64_t *errors, uint64_t *unapplied)
{
    if (unapplied && a->unapplied)
        (*unapplied)++;
    if (a->status == 200 && !a->failed)
        return 0;
    if (*errors < 5)
        fprintf(stderr, "bench_proxy: answer %d%s\n", a->status,
                a->failed ? " with a per-request error" : "");
    (*errors)++;
    return -1;
}

static void print_result(const char *mode, struct samples *s, double secs, uint64_t unapplied,
                         uint64_t errors)
{
    int64_t sum = 0;

    qsort(s->v, s->n, sizeof(*s->v), cmp_i64);
    for (size_t i = 0; i < s->n; i++)
        sum += s->v[i];
    printf("{\"mode\":\"%s\",\"n\":%zu,\"seconds\":%.3f,\"per_s\":%.0f,\"p50_us\":%lld,"
           "\"p90_us\":%lld,\"p99_us\":%lld,\"max_us\":%lld,\"mean_us\":%.0f,"
           "\"unapplied\":%llu,\"errors\":%llu}\n",
           mode, s->n, secs, secs > 0 ? (double)s->n / secs : 0.,
           (long long)samples_quantile(s, 0.50), (long long)samples_quantile(s, 0.90),
           (long long)samples_quantile(s, 0.99), (long long)(s->n ? s->v[s->n - 1] : 0),
           s->n ? (double)sum / (double)s->n : 0., (unsigned long long)unapplied,
           (unsigned long long)errors);
}

/* ---- write ---------------------------------------------------------------------- */

static int run_write(const struct sockaddr_in *addr)
{
    static struct conn c;
    struct samples lat = {0};
    struct answer a;
    char req[1024], extra[64] = "", arg[96];
    uint64_t errors = 0, unapplied = 0;
    int64_t t0, us;
    size_t len;

    if (conf.max_wait_ms >= 0)
        snprintf(extra, sizeof(extra), "Boomerang-Max-Wait-Ms: %lld\r\n",
                 (long long)conf.max_wait_ms);
    if (conn_open(&c, addr) != 0)
        return 2;
    t0 = mono_us();
    for (int64_t i = -WARMUP_WRITES; i < conf.count; i++) {
        if (i == 0)
            t0 = mono_us();
        snprintf(arg, sizeof(arg), "{\"type\":\"text\",\"value\":\"bench-%lld-%lld\"}",
                 (long long)t0, (long long)i);
        len = build_request(req, sizeof(req), "INSERT INTO w(v) VALUES (?)", arg, extra);
        if (conn_round_trip(&c, req, len, &a, &us) != 0) {
            close(c.fd);
            return 2;
        }
        if (tally(&a, &errors, i >= 0 ? &unapplied : NULL) == 0 && i >= 0)
            samples_add(&lat, us);
    }
    print_result("write", &lat, (double)(mono_us() - t0) / 1e6, unapplied, errors);
    close(c.fd);
    free(lat.v);
    return errors ? 1 : 0;
}

/* ---- read ----------------------------------------------------------------------- */

static void *read_worker(void *arg)
{
    struct conn *c = xmalloc(sizeof(*c)); /* 64 KiB: not on the thread's stack */
    struct worker *w = arg;
    struct answer a;
    char req[1024], val[64];
    int64_t us;
    size_t len;

    if (conn_open(c, &w->addr) != 0) {
        w->conn_failed = 1;
        free(c);
        return NULL;
    }
    for (int i = 0; i < WARMUP_READS || mono_us() < w->deadline_us; i++) {
        if (i == WARMUP_READS)
            w->deadline_us = mono_us() + conf.seconds * 1000000;
        snprintf(val, sizeof(val), "{\"type\":\"integer\",\"value\":\"%lld\"}",
                 (long long)(rand_r(&w->seed) % conf.rows) + 1);
        len = build_request(req, sizeof(req), "SELECT v FROM kv WHERE id = ?", val, "");
        if (conn_round_trip(c, req, len, &a, &us) != 0) {
            w->conn_failed = 1;
            break;
        }
        if (tally(&a, &w->errors, NULL) == 0 && i >= WARMUP_READS)
            samples_add(&w->lat, us);
    }
    close(c->fd);
    free(c);
    return NULL;
}

static int run_read(const struct sockaddr_in *addr)
{
    static struct worker w[MAX_CONNS];
    struct samples all = {0};
    uint64_t errors = 0;
    int64_t t0 = mono_us(), n = conf.conns;
    int failed = 0;

    for (int64_t i = 0; i < n; i++) {
        w[i].addr = *addr;
        w[i].seed = (unsigned)(t0 ^ (i * 2654435761u));
        w[i].deadline_us = INT64_MAX; /* set once its warm-up is over */
        if (pthread_create(&w[i].thread, NULL, read_worker, &w[i]) != 0) {
            fprintf(stderr, "bench_proxy: pthread_create failed\n");
            exit(2);
        }
    }
    for (int64_t i = 0; i < n; i++) {
        if (pthread_join(w[i].thread, NULL) != 0)
            exit(2);
        for (size_t k = 0; k < w[i].lat.n; k++)
            samples_add(&all, w[i].lat.v[k]);
        errors += w[i].errors;
        failed |= w[i].conn_failed;
        free(w[i].lat.v);
    }
    /* the rate over the timed window (after each warm-up), as pgryw counts it */
    print_result("read", &all, (double)conf.seconds, 0, errors);
    free(all.v);
    return failed ? 2 : errors ? 1 : 0;
}

int main(int argc, char **argv)
{
    struct sockaddr_in addr;
    int rc = opt_parse("bench_proxy",
                       "Closed-loop HTTP/1.1 client of the sidecar: INSERT latency (write) or "
                       "point reads (read), one JSON line.",
                       opts, (int)ARRAY_LEN(opts), argc, argv);

    if (rc != 0)
        return rc > 0 ? 0 : 2;
    if (!conf.url || parse_url(conf.url, &addr) != 0)
        return 2;
    if (conf.conns < 1 || conf.conns > MAX_CONNS || conf.rows < 1 || conf.count < 1) {
        fprintf(stderr, "bench_proxy: --conns 1..%d, --rows and --count >= 1\n", MAX_CONNS);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (strcmp(conf.mode, "write") == 0)
        return run_write(&addr);
    if (strcmp(conf.mode, "read") == 0)
        return run_read(&addr);
    fprintf(stderr, "bench_proxy: --mode write or read, not '%s'\n", conf.mode);
    return 2;
}
