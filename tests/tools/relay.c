/* relay: a TCP relay that injects faults, for the integration tests.
 *
 *   client --> [listen] relay [connect] --> target
 *                 |  up:   client -> queue(delay, jitter, rate) -> target
 *                 |  down: target -> queue(delay, jitter, rate) -> client
 *   signals / --control socket: partition | reset | heal | delay N | status
 *
 * Each accepted connection becomes a link of two sides (client, target) and
 * two directions. A direction is a FIFO of timestamped chunks: a chunk read at
 * time t is due at t + delay + jitter, clamped so that it is never due before
 * the chunk ahead of it, so bytes keep their order. An ev_timer wakes the
 * direction when its head falls due; a token bucket caps its rate; more than
 * RELAY_QUEUE_MAX queued bytes stop reading the source (backpressure).
 *
 * Faults (the relay's state, not a link's):
 *   partition  links are blackholed: both fds stay open, everything read is
 *              dropped and nothing is delivered; new clients are blackholed too
 *   reset      every link is closed with RST, and new clients are RST at once
 *   heal       back to normal; blackholed links are closed with RST so that
 *              their clients notice and reconnect
 * SIGUSR1 = partition, SIGUSR2 = heal, SIGHUP = reset, SIGTERM/SIGINT = exit 0.
 * Needs no privileges: it is all userspace TCP. */
#include <assert.h>
#include <errno.h>
#include <ev.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/log.h"
#include "common/opt.h"
#include "common/util.h"

#define RELAY_QUEUE_MAX (4u << 20) /* bytes queued per direction before reading stops */
#define RELAY_READ_MAX  65536      /* one read(), one chunk */
#define RELAY_LINE_MAX  256        /* longest control command */

enum relay_state { RELAY_OK, RELAY_PARTITION, RELAY_RESET };
static const char *const relay_state_names[] = {"ok", "partition", "reset"};

enum link_state { LINK_CONNECTING, LINK_OPEN, LINK_BLACKHOLE, LINK_CLOSED };
static const char *const link_state_names[] = {"connecting", "open", "blackhole", "closed"};

struct chunk {
    struct chunk *next;
    int64_t due_us; /* mono_us() before which it must not be delivered */
    size_t len, off;
    uint8_t data[];
};

/* One direction of a link: bytes read from `from`, queued, written to `to`. */
struct dir {
    struct link *link;
    struct side *from, *to;
    struct chunk *head, *tail;
    size_t queued;   /* bytes not yet written */
    int eof;         /* `from` reached EOF */
    int shut;        /* `to` has been shut down for writing */
    double tokens;   /* token bucket, bytes (only with --rate-kbps) */
    int64_t fill_us; /* when tokens were last refilled */
    uint64_t *total; /* the relay's bytes_up or bytes_down */
    ev_timer timer;
};

struct side {
    struct link *link;
    int fd;
    ev_io rio, wio;
};

struct link {
    struct link *prev, *next; /* ctx->links, or ctx->dead once closed */
    struct ctx *ctx;
    unsigned id;
    enum link_state state;
    struct side client, target;
    struct dir up, down; /* up: client -> target */
};

struct ctl {
    struct ctl *next;
    struct ctx *ctx;
    int fd, dead;
    ev_io rio;
    size_t len;
    char line[RELAY_LINE_MAX];
};

struct ctx {
    struct ev_loop *loop;
    enum relay_state state;
    int64_t delay_ms; /* changed at runtime by "delay N" */
    struct sockaddr_storage target;
    socklen_t target_len;
    int lfd, cfd; /* listener, control listener (-1 without --control) */
    ev_io lio, cio;
    struct link *links, *dead;
    struct ctl *ctls;
    unsigned nlinks, next_id;
    uint64_t bytes_up, bytes_down;
    ev_idle reaper; /* frees closed links and control clients after the stack unwinds */
    ev_signal sigs[5];
};

static struct {
    const char *listen, *target, *control, *log_level;
    int64_t delay_ms, jitter_ms, rate_kbps;
} conf = {.log_level = "info"};

static uint8_t readbuf[RELAY_READ_MAX];

static void link_close(struct link *l, int rst);
static void dir_pump(struct dir *d);

/* ---------------------------------------------------------------- links */

static void link_set_state(struct link *l, enum link_state to)
{
    assert(l->state != LINK_CLOSED);
    assert(to != LINK_CONNECTING && (to != LINK_OPEN || l->state == LINK_CONNECTING));
    log_debug("link %u: %s -> %s", l->id, link_state_names[l->state], link_state_names[to]);
    l->state = to;
}

/* Drop everything queued in d and stop its timer and its writes. */
static void dir_drop(struct dir *d)
{
    struct chunk *c, *next;

    for (c = d->head; c; c = next) {
        next = c->next;
        free(c);
    }
    d->head = d->tail = NULL;
    d->queued = 0;
    ev_timer_stop(d->link->ctx->loop, &d->timer);
    if (d->to->fd >= 0)
        ev_io_stop(d->link->ctx->loop, &d->to->wio);
}

/* Close an fd; with rst, SO_LINGER 0 makes close() send RST instead of FIN. */
static void close_fd(int fd, int rst)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};

    if (fd < 0)
        return;
    if (rst && setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) != 0)
        log_warn("setsockopt SO_LINGER failed: %s", strerror(errno));
    close(fd);
}

static void side_close(struct side *s, int rst)
{
    struct ev_loop *loop = s->link->ctx->loop;

    ev_io_stop(loop, &s->rio);
    ev_io_stop(loop, &s->wio);
    close_fd(s->fd, rst);
    s->fd = -1;
}

/* The one close path of a link. Frees nothing: the reaper does, once the
 * callback that called this has returned. */
static void link_close(struct link *l, int rst)
{
    struct ctx *ctx = l->ctx;

    if (l->state == LINK_CLOSED)
        return;
    dir_drop(&l->up);
    dir_drop(&l->down);
    side_close(&l->client, rst);
    side_close(&l->target, rst);
    link_set_state(l, LINK_CLOSED);
    if (l->prev)
        l->prev->next = l->next;
    else
        ctx->links = l->next;
    if (l->next)
        l->next->prev = l->prev;
    l->prev = NULL;
    l->next = ctx->dead;
    ctx->dead = l;
    ctx->nlinks--;
    ev_idle_start(ctx->loop, &ctx->reaper);
    log_debug("link %u: closed%s", l->id, rst ? " with RST" : "");
}

/* Partition: keep both fds open, drop what is queued, read and discard. */
static void link_blackhole(struct link *l)
{
    struct ev_loop *loop = l->ctx->loop;

    if (l->state == LINK_CLOSED || l->state == LINK_BLACKHOLE)
        return;
    dir_drop(&l->up);
    dir_drop(&l->down);
    if (l->state == LINK_CONNECTING)
        side_close(&l->target, 0); /* abandon the handshake: no route */
    link_set_state(l, LINK_BLACKHOLE);
    if (l->client.fd >= 0 && !l->up.eof)
        ev_io_start(loop, &l->client.rio);
    if (l->target.fd >= 0 && !l->down.eof)
        ev_io_start(loop, &l->target.rio);
}

/* ---------------------------------------------------------------- data path */

/* Arm d's timer to fire in us microseconds. */
static void dir_arm(struct dir *d, int64_t us)
{
    struct ev_loop *loop = d->link->ctx->loop;

    ev_timer_stop(loop, &d->timer);
    ev_timer_set(&d->timer, (double)us / 1e6, 0.);
    ev_timer_start(loop, &d->timer);
}

/* Queue n bytes just read for d, due after the delay and a random jitter. */
static void dir_enqueue(struct dir *d, const uint8_t *p, size_t n)
{
    struct chunk *c = xmalloc(sizeof(*c) + n);
    int64_t jitter = 0;

    if (conf.jitter_ms > 0)
        jitter = (int64_t)(random() % (conf.jitter_ms * 1000 + 1));
    c->due_us = mono_us() + d->link->ctx->delay_ms * 1000 + jitter;
    if (d->tail && c->due_us < d->tail->due_us)
        c->due_us = d->tail->due_us; /* jitter must not reorder bytes */
    c->next = NULL;
    c->len = n;
    c->off = 0;
    memcpy(c->data, p, n);
    if (d->tail)
        d->tail->next = c;
    else
        d->head = c;
    d->tail = c;
    d->queued += n;
}

/* How many bytes the token bucket lets d write now; 0 arms the timer for when
 * it will let the head through (or a bucketful of it). No cap: SIZE_MAX. */
static size_t dir_allowance(struct dir *d, int64_t now, size_t want)
{
    double rate = (double)conf.rate_kbps * 125.0; /* bytes per second */
    double burst = MAX(rate / 20.0, 1500.0);      /* 50 ms worth, at least a packet */

    if (conf.rate_kbps == 0)
        return SIZE_MAX;
    d->tokens = MIN(burst, d->tokens + rate * (double)(now - d->fill_us) / 1e6);
    d->fill_us = now;
    if (d->tokens >= 1.0)
        return (size_t)d->tokens;
    dir_arm(d, (int64_t)((MIN((double)want, burst) - d->tokens) / rate * 1e6) + 1);
    return 0;
}

/* After d has written everything and its source is at EOF, pass the EOF on;
 * when both directions are done, close the link. */
static void dir_finish(struct dir *d)
{
    struct link *l = d->link;
    struct dir *other = d == &l->up ? &l->down : &l->up;

    if (d->head || !d->eof || d->shut)
        return;
    d->shut = 1;
    if (shutdown(d->to->fd, SHUT_WR) != 0 && errno != ENOTCONN) {
        log_debug("link %u: shutdown failed: %s", l->id, strerror(errno));
        link_close(l, 1);
        return;
    }
    if (other->shut)
        link_close(l, 0);
}

/* Write every chunk that is due, as far as the socket and the bucket allow. */
static void dir_pump(struct dir *d)
{
    struct link *l = d->link;
    int64_t now = mono_us();

    while (d->head && l->state == LINK_OPEN) {
        struct chunk *c = d->head;
        size_t want = c->len - c->off;
        ssize_t n;

        if (c->due_us > now) {
            dir_arm(d, c->due_us - now);
            return;
        }
        want = MIN(want, dir_allowance(d, now, want));
        if (want == 0)
            return;
        n = send(d->to->fd, c->data + c->off, want, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ev_io_start(l->ctx->loop, &d->to->wio);
            return;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            log_debug("link %u: send failed: %s", l->id, strerror(errno));
            link_close(l, 1);
            return;
        }
        c->off += (size_t)n;
        d->queued -= (size_t)n;
        d->tokens -= (double)n;
        *d->total += (uint64_t)n;
        if (c->off == c->len) {
            d->head = c->next;
            if (!d->head)
                d->tail = NULL;
            free(c);
        }
        if (d->queued <= RELAY_QUEUE_MAX && !d->eof)
            ev_io_start(l->ctx->loop, &d->from->rio); /* backpressure released */
    }
    if (l->state == LINK_OPEN)
        dir_finish(d);
}

static void relay_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    dir_pump(container_of(w, struct dir, timer));
}

static void relay_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct side *s = container_of(w, struct side, rio);
    struct link *l = s->link;
    struct dir *d = s == &l->client ? &l->up : &l->down; /* the direction s feeds */
    ssize_t n = recv(s->fd, readbuf, sizeof(readbuf), 0);

    (void)revents;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        if (n < 0)
            log_debug("link %u: recv failed: %s", l->id, strerror(errno));
        if (n < 0 && l->state == LINK_OPEN) {
            link_close(l, 1); /* pass the reset on */
            return;
        }
        d->eof = 1; /* a blackholed link just stops listening */
        ev_io_stop(loop, w);
        if (l->state == LINK_OPEN)
            dir_pump(d);
        return;
    }
    if (l->state != LINK_OPEN)
        return; /* blackholed: dropped */
    dir_enqueue(d, readbuf, (size_t)n);
    if (d->queued > RELAY_QUEUE_MAX)
        ev_io_stop(loop, w);
    dir_pump(d);
}

/* The target's connect() completed (or failed). */
static void link_connected(struct link *l)
{
    struct ev_loop *loop = l->ctx->loop;
    int err = 0;
    socklen_t len = sizeof(err);

    if (getsockopt(l->target.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    if (err != 0) {
        log_warn("link %u: connect to %s failed: %s", l->id, conf.target, strerror(err));
        link_close(l, 1); /* the client sees the refusal as a reset */
        return;
    }
    ev_io_stop(loop, &l->target.wio);
    link_set_state(l, LINK_OPEN);
    ev_io_start(loop, &l->client.rio);
    ev_io_start(loop, &l->target.rio);
}

static void relay_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct side *s = container_of(w, struct side, wio);
    struct link *l = s->link;

    (void)revents;
    if (l->state == LINK_CONNECTING) {
        link_connected(l);
        return;
    }
    ev_io_stop(loop, w);
    dir_pump(s == &l->client ? &l->down : &l->up);
}

static void side_init(struct link *l, struct side *s, int fd)
{
    s->link = l;
    s->fd = fd;
    ev_io_init(&s->rio, relay_read_cb, fd, EV_READ);
    ev_io_init(&s->wio, relay_write_cb, fd, EV_WRITE);
}

static void dir_init(struct link *l, struct dir *d, struct side *from, struct side *to,
                     uint64_t *total)
{
    d->link = l;
    d->from = from;
    d->to = to;
    d->total = total;
    d->fill_us = mono_us();
    ev_timer_init(&d->timer, relay_timer_cb, 0., 0.);
}

/* Start connecting to the target; -1 if even that fails at once. */
static int MUST_CHECK link_connect(struct link *l)
{
    struct ctx *ctx = l->ctx;
    int one = 1, fd = socket(ctx->target.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        log_warn("link %u: socket failed: %s", l->id, strerror(errno));
        return -1;
    }
    side_init(l, &l->target, fd);
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
        log_warn("link %u: setsockopt TCP_NODELAY failed: %s", l->id, strerror(errno));
    if (connect(fd, (struct sockaddr *)&ctx->target, ctx->target_len) != 0 &&
        errno != EINPROGRESS) {
        log_warn("link %u: connect to %s failed: %s", l->id, conf.target, strerror(errno));
        return -1;
    }
    ev_io_start(ctx->loop, &l->target.wio); /* writable = connected (or failed) */
    return 0;
}

/* A new client: relay it, blackhole it, or reset it, by the relay's state. */
static void link_accept(struct ctx *ctx, int fd)
{
    struct link *l;
    int one = 1;

    if (ctx->state == RELAY_RESET) {
        close_fd(fd, 1);
        return;
    }
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
        log_warn("setsockopt TCP_NODELAY failed: %s", strerror(errno));
    l = xcalloc(1, sizeof(*l));
    l->ctx = ctx;
    l->id = ++ctx->next_id;
    side_init(l, &l->client, fd);
    side_init(l, &l->target, -1);
    dir_init(l, &l->up, &l->client, &l->target, &ctx->bytes_up);
    dir_init(l, &l->down, &l->target, &l->client, &ctx->bytes_down);
    l->next = ctx->links;
    if (l->next)
        l->next->prev = l;
    ctx->links = l;
    ctx->nlinks++;
    l->state = LINK_CONNECTING;
    log_debug("link %u: accepted", l->id);
    if (ctx->state == RELAY_PARTITION)
        link_blackhole(l); /* never reaches the target */
    else if (link_connect(l) != 0)
        link_close(l, 1);
}

static void relay_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct ctx *ctx = container_of(w, struct ctx, lio);

    (void)loop;
    (void)revents;
    for (int i = 0; i < 64; i++) {
        int fd = accept4(ctx->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                log_warn("accept failed: %s", strerror(errno));
            return;
        }
        link_accept(ctx, fd);
    }
}

/* ---------------------------------------------------------------- faults */

static void relay_set_state(struct ctx *ctx, enum relay_state to)
{
    struct link *l, *next;

    log_info("state %s -> %s", relay_state_names[ctx->state], relay_state_names[to]);
    ctx->state = to;
    for (l = ctx->links; l; l = next) {
        next = l->next; /* link_close unlinks l */
        if (to == RELAY_PARTITION)
            link_blackhole(l);
        else if (to == RELAY_RESET || l->state == LINK_BLACKHOLE)
            link_close(l, 1);
    }
}

/* Run one control command into out (a line ending in "\n"). */
static void ctl_command(struct ctx *ctx, const char *cmd, char *out, size_t outlen)
{
    char *end;
    long long v;

    snprintf(out, outlen, "ok\n");
    if (strcmp(cmd, "partition") == 0)
        relay_set_state(ctx, RELAY_PARTITION);
    else if (strcmp(cmd, "reset") == 0)
        relay_set_state(ctx, RELAY_RESET);
    else if (strcmp(cmd, "heal") == 0)
        relay_set_state(ctx, RELAY_OK);
    else if (strncmp(cmd, "delay ", 6) == 0) {
        errno = 0;
        v = strtoll(cmd + 6, &end, 10);
        if (errno || *end || end == cmd + 6 || v < 0 || v > 3600000)
            snprintf(out, outlen, "error: delay wants milliseconds, 0..3600000\n");
        else
            ctx->delay_ms = v;
    } else if (strcmp(cmd, "status") == 0)
        snprintf(out, outlen,
                 "{\"connections\":%u,\"state\":\"%s\",\"delay_ms\":%" PRId64
                 ",\"bytes_up\":%" PRIu64 ",\"bytes_down\":%" PRIu64 "}\n",
                 ctx->nlinks, relay_state_names[ctx->state], ctx->delay_ms, ctx->bytes_up,
                 ctx->bytes_down);
    else
        snprintf(out, outlen, "error: unknown command (partition|reset|heal|delay N|status)\n");
}

static void ctl_close(struct ctl *c)
{
    ev_io_stop(c->ctx->loop, &c->rio);
    close(c->fd);
    c->fd = -1;
    c->dead = 1; /* freed by the reaper */
    ev_idle_start(c->ctx->loop, &c->ctx->reaper);
}

/* Run every complete line in c's buffer; -1 if the client must go. */
static int MUST_CHECK ctl_lines(struct ctl *c)
{
    char out[256], *nl;

    while ((nl = memchr(c->line, '\n', c->len)) != NULL) {
        size_t n = (size_t)(nl - c->line);
        *nl = '\0';
        if (n > 0 && c->line[n - 1] == '\r')
            c->line[n - 1] = '\0';
        ctl_command(c->ctx, c->line, out, sizeof(out));
        if (send(c->fd, out, strlen(out), MSG_NOSIGNAL) != (ssize_t)strlen(out))
            return -1; /* a client that does not read its answers is dropped */
        memmove(c->line, nl + 1, c->len - n - 1);
        c->len -= n + 1;
    }
    if (c->len == sizeof(c->line)) {
        static const char msg[] = "error: line too long\n";
        (void)!send(c->fd, msg, sizeof(msg) - 1, MSG_NOSIGNAL);
        return -1;
    }
    return 0;
}

static void relay_ctl_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct ctl *c = container_of(w, struct ctl, rio);
    ssize_t n = recv(c->fd, c->line + c->len, sizeof(c->line) - c->len, 0);

    (void)loop;
    (void)revents;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        ctl_close(c);
        return;
    }
    c->len += (size_t)n;
    if (ctl_lines(c) != 0)
        ctl_close(c);
}

static void relay_ctl_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct ctx *ctx = container_of(w, struct ctx, cio);
    int fd = accept4(ctx->cfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    struct ctl *c;

    (void)revents;
    if (fd < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            log_warn("accept on the control socket failed: %s", strerror(errno));
        return;
    }
    c = xcalloc(1, sizeof(*c));
    c->ctx = ctx;
    c->fd = fd;
    c->next = ctx->ctls;
    ctx->ctls = c;
    ev_io_init(&c->rio, relay_ctl_read_cb, fd, EV_READ);
    ev_io_start(loop, &c->rio);
}

/* Free closed links and control clients, once no callback can hold them. */
static void relay_reap_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
    struct ctx *ctx = container_of(w, struct ctx, reaper);
    struct ctl **pc = &ctx->ctls;

    (void)revents;
    while (ctx->dead) {
        struct link *l = ctx->dead;
        ctx->dead = l->next;
        free(l);
    }
    while (*pc) {
        struct ctl *c = *pc;
        if (c->dead) {
            *pc = c->next;
            free(c);
        } else {
            pc = &c->next;
        }
    }
    ev_idle_stop(loop, w);
}

static void relay_shutdown(struct ctx *ctx)
{
    while (ctx->links)
        link_close(ctx->links, 0);
    for (struct ctl *c = ctx->ctls; c; c = c->next)
        if (!c->dead)
            ctl_close(c);
    ev_io_stop(ctx->loop, &ctx->lio);
    close(ctx->lfd);
    if (ctx->cfd >= 0) {
        ev_io_stop(ctx->loop, &ctx->cio);
        close(ctx->cfd);
        unlink(conf.control);
    }
    for (size_t i = 0; i < ARRAY_LEN(ctx->sigs); i++)
        ev_signal_stop(ctx->loop, &ctx->sigs[i]);
    relay_reap_cb(ctx->loop, &ctx->reaper, 0);
}

static void relay_signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    struct ctx *ctx = ev_userdata(loop);

    (void)revents;
    if (w->signum == SIGUSR1)
        relay_set_state(ctx, RELAY_PARTITION);
    else if (w->signum == SIGUSR2)
        relay_set_state(ctx, RELAY_OK);
    else if (w->signum == SIGHUP)
        relay_set_state(ctx, RELAY_RESET);
    else
        ev_break(loop, EVBREAK_ALL);
}

/* ---------------------------------------------------------------- setup */

/* Resolve "host:port" into ss. Returns 0, or -1 after logging. */
static int MUST_CHECK resolve(const char *hostport, struct sockaddr_storage *ss, socklen_t *len)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai;
    char host[256], port[16];
    int p, rc;

    if (util_split_hostport(hostport, host, sizeof(host), &p) != 0) {
        log_error("parse address '%s' failed: want HOST:PORT", hostport);
        return -1;
    }
    snprintf(port, sizeof(port), "%d", p);
    rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        log_error("resolve '%s' failed: %s", hostport, gai_strerror(rc));
        return -1;
    }
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

/* Bind and listen on --listen, and log the bound address. Returns the fd or -1. */
static int listen_tcp(const char *hostport)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char host[NI_MAXHOST], port[NI_MAXSERV];
    int one = 1, fd;

    if (resolve(hostport, &ss, &len) != 0)
        return -1;
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 128) != 0 ||
        getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
        log_error("listen on %s failed: %s", hostport, strerror(errno));
        close_fd(fd, 0);
        return -1;
    }
    if (getnameinfo((struct sockaddr *)&ss, len, host, sizeof(host), port, sizeof(port),
                    NI_NUMERICHOST | NI_NUMERICSERV) == 0)
        log_info("relay listening on %s%s%s:%s", strchr(host, ':') ? "[" : "", host,
                 strchr(host, ':') ? "]" : "", port);
    return fd;
}

/* Listen on the control socket at path (a stale one is replaced). Returns the fd or -1. */
static int listen_unix(const char *path)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    int fd;

    if (strlen(path) >= sizeof(sun.sun_path)) {
        log_error("listen on %s failed: path too long", path);
        return -1;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);
    if (unlink(path) != 0 && errno != ENOENT)
        log_warn("unlink %s failed: %s", path, strerror(errno));
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0 || listen(fd, 16) != 0) {
        log_error("listen on %s failed: %s", path, strerror(errno));
        close_fd(fd, 0);
        return -1;
    }
    return fd;
}

static const struct opt opts[] = {
    {"listen", "RELAY_LISTEN", OPT_STRING, &conf.listen, "HOST:PORT",
     "accept clients here (port 0 picks one)"},
    {"target", "RELAY_TARGET", OPT_STRING, &conf.target, "HOST:PORT", "connect each client here"},
    {"delay-ms", "RELAY_DELAY_MS", OPT_INT, &conf.delay_ms, "N", "one-way delay (default 0)"},
    {"jitter-ms", "RELAY_JITTER_MS", OPT_INT, &conf.jitter_ms, "N",
     "extra delay, uniform in [0, N] (default 0)"},
    {"rate-kbps", "RELAY_RATE_KBPS", OPT_INT, &conf.rate_kbps, "N",
     "cap per connection and direction, kbit/s (default 0: none)"},
    {"control", "RELAY_CONTROL", OPT_STRING, &conf.control, "PATH",
     "unix socket for partition|reset|heal|delay N|status"},
    {"log-level", "RELAY_LOG_LEVEL", OPT_STRING, &conf.log_level, "LEVEL",
     "error, warn, info, debug or trace (default info)"},
};

static int MUST_CHECK relay_setup(struct ctx *ctx)
{
    static const int signums[] = {SIGUSR1, SIGUSR2, SIGHUP, SIGTERM, SIGINT};

    static_assert(ARRAY_LEN(signums) == ARRAY_LEN(ctx->sigs), "one watcher per signal");
    ctx->delay_ms = conf.delay_ms;
    ctx->cfd = -1;
    if (resolve(conf.target, &ctx->target, &ctx->target_len) != 0)
        return -1;
    /* The control socket first: once "listening" is logged, all of it works. */
    if (conf.control && (ctx->cfd = listen_unix(conf.control)) < 0)
        return -1;
    ctx->lfd = listen_tcp(conf.listen);
    if (ctx->lfd < 0) {
        close_fd(ctx->cfd, 0);
        return -1;
    }
    ev_io_init(&ctx->lio, relay_accept_cb, ctx->lfd, EV_READ);
    ev_io_start(ctx->loop, &ctx->lio);
    if (ctx->cfd >= 0) {
        ev_io_init(&ctx->cio, relay_ctl_accept_cb, ctx->cfd, EV_READ);
        ev_io_start(ctx->loop, &ctx->cio);
    }
    ev_idle_init(&ctx->reaper, relay_reap_cb);
    for (size_t i = 0; i < ARRAY_LEN(signums); i++) {
        ev_signal_init(&ctx->sigs[i], relay_signal_cb, signums[i]);
        ev_signal_start(ctx->loop, &ctx->sigs[i]);
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct ctx ctx = {0};
    enum log_level lvl;
    int rc = opt_parse("relay",
                       "A TCP relay that adds delay, jitter and a rate cap, and injects "
                       "partitions and resets on signals or control commands.",
                       opts, (int)ARRAY_LEN(opts), argc, argv);

    if (rc != 0)
        return rc > 0 ? 0 : 2;
    log_set_program("relay");
    if (!conf.listen || !conf.target || log_parse_level(conf.log_level, &lvl) != 0) {
        fprintf(stderr, "relay: --listen, --target and a valid --log-level are required\n");
        return 2;
    }
    log_level = lvl;
    signal(SIGPIPE, SIG_IGN);
    srandom((unsigned)(mono_us() ^ getpid()));
    ctx.loop = ev_default_loop(EVFLAG_AUTO);
    ev_set_userdata(ctx.loop, &ctx);
    if (relay_setup(&ctx) != 0)
        return 1;
    ev_run(ctx.loop, 0);
    relay_shutdown(&ctx);
    log_info("stopped: bytes_up %" PRIu64 " bytes_down %" PRIu64, ctx.bytes_up, ctx.bytes_down);
    ev_loop_destroy(ctx.loop);
    return 0;
}
