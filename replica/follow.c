/* boomerang: the replica's side of the replication link.
 *
 *   follow_start ─▶ DISCONNECTED ──retry timer──▶ CONNECTING ── Subscribe{position}
 *                     ▲                                │ Hello
 *                     │                 other history  │  same history
 *                     │               ┌────────────────┴──────────────┐
 *                     │               ▼                               ▼
 *                     │           SNAPSHOT ──last chunk──▶ CATCHING_UP ◀──▶ LIVE
 *                     │     (apply_snapshot_*)             (TxnChunk: apply_txn_*;
 *                     │               ▲                     head from Heartbeat)
 *                     │               └──── first SnapshotChunk (the primary's choice)
 *                     │
 *                     └── from any state: stream ended, call failed, malformed or
 *                         out-of-sequence event, apply error, checksum mismatch (the
 *                         next Subscribe asks for a snapshot), no event for
 *                         stall_timeout ─▶ apply_abort, backoff 100 ms doubling to
 *                         5 s, ±20 %
 *
 *   every applied transaction or snapshot ─▶ waiter_notify(applied)
 *
 * The stream is one h2client server-streaming call. Its callbacks carry a
 * small struct follow_call rather than the follow itself, so that a call the
 * follow has let go of (cancelled on a drop, or by follow_free) can still end
 * later from the loop without touching a follow that moved on or is gone. */
#include "replica/follow.h"

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/h2client.h"
#include "common/http.h"
#include "common/log.h"
#include "common/metrics.h"
#include "proto/boomerang.pb-c.h"
#include "replica/apply.h"
#include "replica/waiter.h"

#define FOLLOW_PATH "/boomerang.v1.Replication/Subscribe"

/* A protocol violation by the primary (our own code, beside apply_err). */
#define FOLLOW_PROTO (-100)

/* Events this recent keep a LIVE link's lag at 0 (heartbeats come every ~100 ms). */
#define FOLLOW_FRESH_US 1000000
/* A stream that stayed up this long, or applied anything, resets the backoff. */
#define FOLLOW_STABLE_US 1000000

struct follow;

/* One Subscribe call. f is NULL once the follow has let go of it. */
struct follow_call {
    struct follow *f;
    uint64_t id;
};

struct follow {
    struct ev_loop *loop;
    struct h2client *client;
    struct apply *apply;
    char *database;
    double backoff_initial, backoff_max, stall_timeout;
    follow_state_cb on_state;
    follow_applied_cb on_applied;
    follow_committing_cb on_committing;
    void *arg;

    enum follow_state state;
    struct follow_call *call; /* the current stream, or NULL */
    ev_timer retry;           /* DISCONNECTED: the next Subscribe */
    ev_timer stall;           /* a stream is open: no event for stall_timeout */
    double backoff;           /* the last delay before jitter; 0 after a stable stream */
    unsigned fails;           /* streams in a row that ended before their Hello */
    uint64_t rng;
    struct waiter_set *waiters;
    struct apply_position pos; /* as of the last commit */
    char why[160];             /* the reason for FOLLOW_PROTO */

    /* The current stream. */
    int have_hello;
    int expect_snapshot; /* the Hello showed another history (or we asked for one) */
    int force_snapshot;  /* subscribe as a new replica (after a checksum mismatch) */
    int in_txn, in_snapshot;
    uint64_t cur_txid; /* of the open transaction or snapshot */
    int64_t stream_start_mono;
    uint64_t stream_applied; /* transactions and snapshots applied on this stream */

    /* What we know of the primary; times are its clock unless named _mono. */
    char primary_id[33];
    uint64_t primary_epoch;
    uint64_t head;
    int64_t head_at_us; /* when head was reported */
    int have_clock;
    int64_t primary_now_us, primary_now_mono; /* last Hello/Heartbeat now_us, and when it came */
    int64_t current_as_of_us;                 /* the replica was last known current then */
    int64_t last_event_mono;
    int64_t last_live_mono; /* 0: not LIVE since start */

    uint64_t subscribes, txns, snapshots, mismatches, apply_errors, protocol_errors, events;
    /* fast_txn's pages, reused from event to event */
    Boomerang__V1__Page *fast_pages;
    Boomerang__V1__Page **fast_ptrs;
    size_t fast_cap;
    struct follow_metric *metrics; /* follow_metrics() registrations */
};

static void follow_subscribe(struct follow *f);

/* ---- state ------------------------------------------------------------------*/

const char *follow_state_name(enum follow_state s)
{
    static const char *const names[] = {"DISCONNECTED", "CONNECTING", "SNAPSHOT", "CATCHING_UP",
                                        "LIVE"};
    return (unsigned)s < ARRAY_LEN(names) ? names[s] : "?";
}

static void set_state(struct follow *f, enum follow_state s, const char *why)
{
    static const unsigned allowed[] = {
        [FOLLOW_DISCONNECTED] = 1u << FOLLOW_CONNECTING,
        [FOLLOW_CONNECTING] = 1u << FOLLOW_DISCONNECTED | 1u << FOLLOW_SNAPSHOT |
                              1u << FOLLOW_CATCHING_UP | 1u << FOLLOW_LIVE,
        [FOLLOW_SNAPSHOT] =
            1u << FOLLOW_DISCONNECTED | 1u << FOLLOW_CATCHING_UP | 1u << FOLLOW_LIVE,
        [FOLLOW_CATCHING_UP] =
            1u << FOLLOW_DISCONNECTED | 1u << FOLLOW_SNAPSHOT | 1u << FOLLOW_LIVE,
        [FOLLOW_LIVE] =
            1u << FOLLOW_DISCONNECTED | 1u << FOLLOW_SNAPSHOT | 1u << FOLLOW_CATCHING_UP,
    };
    enum follow_state old = f->state;

    if (s == old)
        return;
    assert(allowed[old] & (1u << s));
    /* Connects, disconnects and snapshots are rare and matter to an operator;
     * CATCHING_UP <-> LIVE flips with every burst of writes, and a primary
     * that stays down is reported once, not at every retry. */
    if (s == FOLLOW_SNAPSHOT || (s <= FOLLOW_CONNECTING && f->fails <= 1))
        log_info("replication link: %s -> %s (%s)", follow_state_name(old), follow_state_name(s),
                 why);
    else
        log_debug("replication link: %s -> %s (%s)", follow_state_name(old), follow_state_name(s),
                  why);
    if (old == FOLLOW_LIVE || s == FOLLOW_LIVE)
        f->last_live_mono = mono_us();
    f->state = s;
    if (f->on_state)
        f->on_state(f->arg, s);
}

/* After the primary's head or the applied position moved: LIVE or CATCHING_UP. */
static void update_caught_up(struct follow *f)
{
    if (!f->have_hello || f->expect_snapshot || f->in_snapshot)
        return;
    if (f->pos.txid >= f->head) {
        /* Nothing committed between head's report and now that we lack. */
        f->current_as_of_us = MAX(f->current_as_of_us, f->head_at_us);
        set_state(f, FOLLOW_LIVE, "applied reached the primary's head");
    } else {
        set_state(f, FOLLOW_CATCHING_UP, "the primary is ahead");
    }
}

/* ---- reconnecting -----------------------------------------------------------*/

/* Uniform in [0.8, 1.2): spreads the reconnects of many replicas apart. */
static double jitter(struct follow *f)
{
    f->rng ^= f->rng << 13;
    f->rng ^= f->rng >> 7;
    f->rng ^= f->rng << 17;
    return 0.8 + 0.4 * (double)(f->rng >> 11) / (double)(1ull << 53);
}

static double next_delay(struct follow *f)
{
    int stable = f->stream_applied > 0 ||
                 (f->have_hello && mono_us() - f->stream_start_mono >= FOLLOW_STABLE_US);

    if (stable || f->backoff == 0)
        f->backoff = f->backoff_initial;
    else
        f->backoff = MIN(f->backoff * 2, f->backoff_max);
    return f->backoff * jitter(f);
}

/* Let go of the current call: it ends later from the loop, unnoticed. */
static void release_call(struct follow *f)
{
    struct follow_call *c = f->call;

    if (!c)
        return;
    f->call = NULL;
    c->f = NULL;
    (void)h2client_cancel(f->client, c->id); /* NO_CALL: it already ended; fine */
}

/* The one way down: drop the stream, undo a half-received transaction or
 * snapshot (readers never saw it), and schedule the next Subscribe. */
static void follow_drop(struct follow *f, const char *why)
{
    char text[256];
    double delay;

    release_call(f);
    if (f->in_txn || f->in_snapshot)
        apply_abort(f->apply);
    delay = next_delay(f);
    f->fails = f->have_hello ? 0 : f->fails + 1;
    f->in_txn = f->in_snapshot = 0;
    f->have_hello = f->expect_snapshot = 0;
    ev_timer_stop(f->loop, &f->stall);
    snprintf(text, sizeof(text), "%s; resubscribing in %.0f ms%s", why, delay * 1000,
             f->fails == 1 ? ", quietly until it works" : "");
    set_state(f, FOLLOW_DISCONNECTED, text);
    ev_timer_set(&f->retry, delay, 0);
    ev_timer_start(f->loop, &f->retry);
}

static void follow_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct follow *f = container_of(w, struct follow, retry);

    (void)loop;
    (void)revents;
    follow_subscribe(f);
}

static void follow_stall_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct follow *f = container_of(w, struct follow, stall);
    double idle = (double)(mono_us() - f->last_event_mono) / 1e6;
    char why[96];

    (void)revents;
    /* Measured against the clock, not the timer: a long apply blocks the loop
     * while events are being processed, and that is not a stall. */
    if (idle < f->stall_timeout) {
        ev_timer_set(w, f->stall_timeout - idle, 0);
        ev_timer_start(loop, w);
        return;
    }
    log_warn("replication stream stalled: no event for %.1f s", idle);
    snprintf(why, sizeof(why), "stalled for %.1f s", idle);
    follow_drop(f, why);
}

/* ---- events -----------------------------------------------------------------*/

static int proto_error(struct follow *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int proto_error(struct follow *f, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(f->why, sizeof(f->why), fmt, ap);
    va_end(ap);
    return FOLLOW_PROTO;
}

static void note_primary_clock(struct follow *f, int64_t now, uint64_t head)
{
    f->have_clock = 1;
    f->primary_now_us = now;
    f->primary_now_mono = mono_us();
    f->head = head;
    f->head_at_us = now;
}

static int same_history(const struct follow *f, const Boomerang__V1__Hello *h)
{
    return !f->force_snapshot && f->pos.database_id[0] && h->database_id &&
           strcmp(f->pos.database_id, h->database_id) == 0 && f->pos.epoch == h->epoch;
}

static int on_hello(struct follow *f, const Boomerang__V1__Hello *h)
{
    if (f->have_hello)
        return proto_error(f, "a second Hello");
    f->have_hello = 1;
    f->fails = 0;
    note_primary_clock(f, h->now_us, h->head_txid);
    snprintf(f->primary_id, sizeof(f->primary_id), "%s", h->database_id ? h->database_id : "");
    f->primary_epoch = h->epoch;
    if (!same_history(f, h) || h->head_txid < f->pos.txid) {
        log_info("primary is database %s epoch %" PRIu64 " at txid %" PRIu64
                 "; replica is '%s' epoch %" PRIu64 " at txid %" PRIu64 "%s: expecting a snapshot",
                 h->database_id, h->epoch, h->head_txid, f->pos.database_id, f->pos.epoch,
                 f->pos.txid, f->force_snapshot ? " (snapshot requested)" : "");
        f->expect_snapshot = 1;
        set_state(f, FOLLOW_SNAPSHOT, f->force_snapshot ? "snapshot requested" : "another history");
        return 0;
    }
    log_info("subscribed to database %s epoch %" PRIu64 ": primary head %" PRIu64
             ", resuming after txid %" PRIu64,
             h->database_id, h->epoch, h->head_txid, f->pos.txid);
    update_caught_up(f);
    return 0;
}

static int on_heartbeat(struct follow *f, const Boomerang__V1__Heartbeat *hb)
{
    if (!f->have_hello)
        return proto_error(f, "a Heartbeat before Hello");
    note_primary_clock(f, hb->now_us, hb->head_txid);
    update_caught_up(f);
    return 0;
}

/* A transaction or snapshot was committed by apply. */
static void after_commit(struct follow *f)
{
    apply_position(f->apply, &f->pos);
    f->stream_applied++;
    f->current_as_of_us = MAX(f->current_as_of_us, f->pos.commit_time_us);
    if (f->pos.txid > f->head) {
        f->head = f->pos.txid;
        f->head_at_us = f->pos.commit_time_us;
    }
    update_caught_up(f);
    (void)waiter_notify(f->waiters, f->pos.txid);
}

static int on_txn(struct follow *f, const Boomerang__V1__TxnChunk *t)
{
    int rc;

    if (!f->have_hello || f->expect_snapshot || f->in_snapshot)
        return proto_error(f, "a transaction chunk (txid %" PRIu64 ") %s", t->txid,
                           f->have_hello ? "where a snapshot was due" : "before Hello");
    if (!f->in_txn) {
        f->cur_txid = t->txid;
        rc = apply_txn_begin(f->apply, t->txid, t->db_pages, t->page_size);
        if (rc != 0)
            return rc;
        f->in_txn = 1;
    } else if (t->txid != f->cur_txid) {
        return proto_error(f, "a chunk of txid %" PRIu64 " inside txid %" PRIu64, t->txid,
                           f->cur_txid);
    }
    for (size_t i = 0; i < t->n_pages; i++) {
        rc = apply_txn_page(f->apply, t->pages[i]->pgno, t->pages[i]->data.data,
                            t->pages[i]->data.len);
        if (rc != 0)
            return rc;
    }
    if (!t->last)
        return 0;
    if (f->on_committing)
        f->on_committing(f->arg, t->txid);
    rc = apply_txn_commit(f->apply, t->checksum, t->commit_time_us);
    if (rc != 0)
        return rc;
    f->in_txn = 0;
    f->txns++;
    if (f->on_applied)
        f->on_applied(f->arg, t->txid, t->commit_time_us);
    after_commit(f);
    return 0;
}

static int snapshot_first(struct follow *f, const Boomerang__V1__SnapshotChunk *s)
{
    int rc;

    if (f->in_snapshot)
        return proto_error(f, "a second first snapshot chunk");
    log_info("snapshot begins (%s): database %s epoch %" PRIu64 " txid %" PRIu64
             ", %u pages of %u bytes",
             s->reason && *s->reason ? s->reason : "no reason given", s->database_id, s->epoch,
             s->txid, s->db_pages, s->page_size);
    set_state(f, FOLLOW_SNAPSHOT, "snapshot begins");
    f->cur_txid = s->txid;
    rc = apply_snapshot_begin(f->apply, s->database_id, s->epoch, s->txid, s->db_pages,
                              s->page_size);
    if (rc != 0)
        return rc;
    f->in_snapshot = 1;
    return 0;
}

static int on_snapshot(struct follow *f, const Boomerang__V1__SnapshotChunk *s)
{
    int rc;

    if (!f->have_hello || f->in_txn)
        return proto_error(f, "a snapshot chunk %s",
                           f->have_hello ? "inside a transaction" : "before Hello");
    if (s->first) {
        rc = snapshot_first(f, s);
        if (rc != 0)
            return rc;
    } else if (!f->in_snapshot || (s->txid && s->txid != f->cur_txid)) {
        return proto_error(f, "a snapshot chunk (txid %" PRIu64 ") outside its snapshot", s->txid);
    }
    for (size_t i = 0; i < s->n_pages; i++) {
        rc = apply_snapshot_page(f->apply, s->pages[i]->pgno, s->pages[i]->data.data,
                                 s->pages[i]->data.len);
        if (rc != 0)
            return rc;
    }
    if (!s->last)
        return 0;
    if (f->on_committing)
        f->on_committing(f->arg, f->cur_txid);
    rc = apply_snapshot_commit(f->apply, s->checksum, s->commit_time_us);
    if (rc != 0)
        return rc;
    f->in_snapshot = f->expect_snapshot = f->force_snapshot = 0;
    f->snapshots++;
    f->current_as_of_us = 0; /* a new history: what we knew of the old one is void */
    log_info("snapshot applied: txid %" PRIu64, f->cur_txid);
    after_commit(f);
    return 0;
}

static const char *apply_err_name(int rc)
{
    switch (rc) {
    case APPLY_ERR_SQLITE:
        return "SQLite error";
    case APPLY_ERR_IO:
        return "position file I/O error";
    case APPLY_ERR_CHECKSUM:
        return "checksum mismatch";
    case APPLY_ERR_ORDER:
        return "out of order";
    case APPLY_ERR_PAGE:
        return "bad page";
    case APPLY_ERR_STATE:
        return "out of sequence";
    case APPLY_ERR_PAGE_SIZE:
        return "page size differs from the primary's (delete the replica to rebuild it)";
    }
    return "unknown error";
}

/* An event could not be used: count it, log it once, drop the stream. */
static void event_failed(struct follow *f, int rc)
{
    char why[200];

    if (rc == FOLLOW_PROTO) {
        f->protocol_errors++;
        log_warn("replication event rejected: %s", f->why);
        snprintf(why, sizeof(why), "protocol error: %s", f->why);
    } else if (rc == APPLY_ERR_CHECKSUM) {
        f->mismatches++;
        f->force_snapshot = 1;
        log_error("apply txid %" PRIu64 " failed: checksum mismatch (%" PRIu64
                  " so far); asking the primary for a snapshot",
                  f->cur_txid, f->mismatches);
        snprintf(why, sizeof(why), "checksum mismatch at txid %" PRIu64, f->cur_txid);
    } else {
        f->apply_errors++;
        log_error("apply %s %" PRIu64 " failed: %s", f->in_snapshot ? "snapshot at txid" : "txid",
                  f->cur_txid, apply_err_name(rc));
        snprintf(why, sizeof(why), "apply error: %s", apply_err_name(rc));
    }
    follow_drop(f, why);
}

static int dispatch(struct follow *f, const Boomerang__V1__ReplicationEvent *ev)
{
    switch (ev->event_case) {
    case BOOMERANG__V1__REPLICATION_EVENT__EVENT_HELLO:
        return on_hello(f, ev->hello);
    case BOOMERANG__V1__REPLICATION_EVENT__EVENT_TXN:
        return on_txn(f, ev->txn);
    case BOOMERANG__V1__REPLICATION_EVENT__EVENT_SNAPSHOT:
        return on_snapshot(f, ev->snapshot);
    case BOOMERANG__V1__REPLICATION_EVENT__EVENT_HEARTBEAT:
        return on_heartbeat(f, ev->heartbeat);
    default:
        /* An event type from a newer primary: ignoring it keeps us compatible. */
        log_debug("replication event of unknown type %d ignored", (int)ev->event_case);
        return 0;
    }
}

/* ---- transaction events without copies -------------------------------------*/

/* protobuf-c copies every bytes field out of the message, so each page of a
 * transaction would be copied once more on its way to SQLite. The common
 * event, a ReplicationEvent that holds only a TxnChunk, is read here in
 * place instead: the pages point into the message, which stays valid while
 * the event is handled. This reader takes only what it fully understands:
 * the one field ReplicationEvent.txn, the fields of TxnChunk and Page that
 * the proto defines with their own wire types, and varints of at most 64
 * bits. Anything else (unknown fields, another wire type, a repeated
 * top-level field, which protobuf would merge, any truncation) goes to
 * protobuf-c, which decides. Where both accept a message, they give the same
 * values: a repeated scalar keeps its last value, uint32 takes the low 32
 * bits, bool is "not zero", sint64 is zigzag. */

enum { PB_VARINT = 0, PB_I64 = 1, PB_LEN = 2 };

struct pb {
    const uint8_t *p, *end;
};

/* A varint of at most 10 bytes whose value fits in 64 bits. */
static int pb_varint(struct pb *r, uint64_t *v)
{
    uint64_t x = 0;

    for (int shift = 0; shift < 70 && r->p < r->end; shift += 7) {
        uint8_t b = *r->p++;

        if (shift == 63 && b > 1)
            return -1;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

/* A field's key; *len and *body for PB_LEN (a length of at most 5 bytes,
 * as protobuf-c reads them). */
static int pb_field(struct pb *r, unsigned *num, unsigned *type, struct pb *body)
{
    uint64_t key, len;
    const uint8_t *start;

    if (pb_varint(r, &key) != 0 || key >> 32 || (key >> 3) == 0)
        return -1;
    *num = (unsigned)(key >> 3);
    *type = (unsigned)(key & 7);
    if (*type != PB_LEN)
        return 0;
    start = r->p;
    if (pb_varint(r, &len) != 0 || r->p - start > 5 || len > (uint64_t)(r->end - r->p))
        return -1;
    body->p = r->p;
    body->end = r->p + len;
    r->p += len;
    return 0;
}

static int fast_page(struct pb r, Boomerang__V1__Page *pg)
{
    unsigned num, type;
    struct pb body;
    uint64_t v;

    *pg = (Boomerang__V1__Page)BOOMERANG__V1__PAGE__INIT;
    while (r.p < r.end) {
        if (pb_field(&r, &num, &type, &body) != 0)
            return -1;
        if (num == 1 && type == PB_VARINT && pb_varint(&r, &v) == 0) {
            pg->pgno = (uint32_t)v;
        } else if (num == 2 && type == PB_LEN) {
            pg->data.data = (uint8_t *)body.p; /* read only: apply copies it */
            pg->data.len = (size_t)(body.end - body.p);
        } else {
            return -1;
        }
    }
    return 0;
}

/* One more page slot in f's scratch arrays. */
static Boomerang__V1__Page *fast_next_page(struct follow *f, size_t n)
{
    if (n == f->fast_cap) {
        f->fast_cap = f->fast_cap ? f->fast_cap * 2 : 64;
        f->fast_pages = xrealloc(f->fast_pages, f->fast_cap * sizeof(f->fast_pages[0]));
        f->fast_ptrs = xrealloc(f->fast_ptrs, f->fast_cap * sizeof(f->fast_ptrs[0]));
    }
    return &f->fast_pages[n];
}

/* A scalar field of TxnChunk, already keyed. */
static int fast_txn_scalar(struct pb *r, unsigned num, unsigned type, Boomerang__V1__TxnChunk *t)
{
    uint64_t v = 0;

    if (num == 6 && type == PB_I64 && r->end - r->p >= 8) {
        for (int i = 7; i >= 0; i--)
            v = v << 8 | r->p[i];
        r->p += 8;
        t->checksum = v;
        return 0;
    }
    if (type != PB_VARINT || num < 1 || num > 7 || num == 4 || num == 6 || pb_varint(r, &v) != 0)
        return -1;
    if (num == 1)
        t->txid = v;
    else if (num == 2)
        t->db_pages = (uint32_t)v;
    else if (num == 3)
        t->page_size = (uint32_t)v;
    else if (num == 5)
        t->last = v != 0;
    else
        t->commit_time_us = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
    return 0;
}

/* Read msg as a ReplicationEvent holding only a TxnChunk into *t, whose pages
 * live in f's scratch arrays until the next call. Returns 0, or -1 to let
 * protobuf-c decode it. */
static int fast_txn(struct follow *f, const uint8_t *msg, size_t len, Boomerang__V1__TxnChunk *t)
{
    struct pb r = {msg, msg + len}, body;
    unsigned num, type;
    size_t n = 0;

    if (pb_field(&r, &num, &type, &body) != 0 || num != 2 || type != PB_LEN || r.p != r.end)
        return -1;
    *t = (Boomerang__V1__TxnChunk)BOOMERANG__V1__TXN_CHUNK__INIT;
    r = body;
    while (r.p < r.end) {
        if (pb_field(&r, &num, &type, &body) != 0)
            return -1;
        if (num == 4 && type == PB_LEN) {
            if (fast_page(body, fast_next_page(f, n)) != 0)
                return -1;
            n++;
        } else if (fast_txn_scalar(&r, num, type, t) != 0) {
            return -1;
        }
    }
    for (size_t i = 0; i < n; i++)
        f->fast_ptrs[i] = &f->fast_pages[i];
    t->n_pages = n;
    t->pages = n ? f->fast_ptrs : NULL;
    return 0;
}

static void handle_event(struct follow *f, const uint8_t *msg, size_t len)
{
    Boomerang__V1__ReplicationEvent *ev;
    Boomerang__V1__TxnChunk txn;
    int rc;

    f->events++;
    if (fast_txn(f, msg, len, &txn) == 0) {
        rc = on_txn(f, &txn);
    } else if (!(ev = boomerang__v1__replication_event__unpack(NULL, len, msg))) {
        rc = proto_error(f, "a malformed ReplicationEvent (%zu bytes)", len);
    } else {
        rc = dispatch(f, ev);
        boomerang__v1__replication_event__free_unpacked(ev, NULL);
    }
    f->last_event_mono = mono_us();
    if (rc != 0)
        event_failed(f, rc);
}

static void on_event_cb(void *arg, const uint8_t *msg, size_t len)
{
    struct follow_call *c = arg;

    if (c->f)
        handle_event(c->f, msg, len);
}

void follow_feed(struct follow *f, const uint8_t *msg, size_t len)
{
    if (f->call) /* only while a subscription is open, as on the wire */
        handle_event(f, msg, len);
}

static void on_end_cb(void *arg, enum grpc_status status, const char *message)
{
    struct follow_call *c = arg;
    struct follow *f = c->f;
    char why[200];

    free(c);
    if (!f)
        return;
    f->call = NULL;
    snprintf(why, sizeof(why), "stream ended: %s%s%s", grpc_status_name(status),
             message ? ": " : "", message ? message : "");
    /* UNAVAILABLE is the primary being down or restarting: the state line says
     * enough. Anything else (auth, unknown database) needs an operator. */
    if (status != GRPC_OK && status != GRPC_UNAVAILABLE && status != GRPC_CANCELLED)
        log_warn("replication stream failed: %s%s%s", grpc_status_name(status), message ? ": " : "",
                 message ? message : "");
    follow_drop(f, why);
}

/* ---- subscribing ------------------------------------------------------------*/

static void follow_subscribe(struct follow *f)
{
    Boomerang__V1__SubscribeRequest req = BOOMERANG__V1__SUBSCRIBE_REQUEST__INIT;
    struct follow_call *c;
    uint8_t *buf;
    size_t len;
    char why[160];

    apply_position(f->apply, &f->pos);
    req.database = f->database;
    if (!f->force_snapshot) {
        req.database_id = f->pos.database_id;
        req.epoch = f->pos.epoch;
        req.applied_txid = f->pos.txid;
        req.applied_checksum = f->pos.checksum;
    } /* else: present ourselves as a new replica, which always gets a snapshot */
    len = boomerang__v1__subscribe_request__get_packed_size(&req);
    buf = xmalloc(len ? len : 1);
    (void)boomerang__v1__subscribe_request__pack(&req, buf);
    f->subscribes++;
    c = xcalloc(1, sizeof(*c));
    c->f = f;
    f->call = c;
    f->stream_start_mono = f->last_event_mono = mono_us();
    f->stream_applied = 0;
    snprintf(why, sizeof(why), "after txid %" PRIu64 "%s", f->pos.txid,
             f->force_snapshot ? ", asking for a snapshot" : "");
    set_state(f, FOLLOW_CONNECTING, why);
    c->id = h2client_stream(f->client, FOLLOW_PATH, buf, len, 0, on_event_cb, on_end_cb, c);
    free(buf);
    ev_timer_set(&f->stall, f->stall_timeout, 0);
    ev_timer_start(f->loop, &f->stall);
}

/* ---- the API ----------------------------------------------------------------*/

int follow_start(struct ev_loop *loop, const struct follow_config *cfg, struct follow **out)
{
    struct follow *f;

    if (!cfg->client || !cfg->apply || cfg->backoff_initial < 0 || cfg->backoff_max < 0 ||
        cfg->stall_timeout < 0)
        return FOLLOW_ERR_CONFIG;
    f = xcalloc(1, sizeof(*f));
    f->loop = loop;
    f->client = cfg->client;
    f->apply = cfg->apply;
    f->database = xstrdup(cfg->database ? cfg->database : "");
    f->backoff_initial = cfg->backoff_initial > 0 ? cfg->backoff_initial : 0.1;
    f->backoff_max = MAX(cfg->backoff_max > 0 ? cfg->backoff_max : 5.0, f->backoff_initial);
    f->stall_timeout = cfg->stall_timeout > 0 ? cfg->stall_timeout : 5.0;
    f->on_state = cfg->on_state;
    f->on_applied = cfg->on_applied;
    f->on_committing = cfg->on_committing;
    f->arg = cfg->arg;
    f->state = FOLLOW_DISCONNECTED;
    f->rng = (uint64_t)mono_us() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)f;
    f->rng |= 1; /* xorshift must not start at 0 */
    ev_init(&f->retry, follow_retry_cb);
    ev_init(&f->stall, follow_stall_cb);
    apply_position(f->apply, &f->pos);
    f->current_as_of_us = f->pos.commit_time_us;
    f->waiters = waiter_set_new(loop, f->pos.txid);
    follow_subscribe(f);
    *out = f;
    return 0;
}

void follow_free(struct follow *f)
{
    if (!f)
        return;
    release_call(f);
    if (f->in_txn || f->in_snapshot)
        apply_abort(f->apply);
    ev_timer_stop(f->loop, &f->retry);
    ev_timer_stop(f->loop, &f->stall);
    waiter_set_free(f->waiters);
    free(f->metrics);
    free(f->fast_pages);
    free(f->fast_ptrs);
    log_info("replication link stopped at txid %" PRIu64, f->pos.txid);
    free(f->database);
    free(f);
}

enum follow_state follow_state(const struct follow *f)
{
    return f->state;
}

uint64_t follow_applied(const struct follow *f)
{
    return f->pos.txid;
}

struct waiter_set *follow_waiters(struct follow *f)
{
    return f->waiters;
}

static int64_t lag_ms(const struct follow *f, int64_t mono)
{
    int64_t primary_now;

    if (f->state == FOLLOW_LIVE && mono - f->last_event_mono < FOLLOW_FRESH_US)
        return 0;
    if (f->current_as_of_us == 0)
        return -1;
    /* The primary's clock, carried forward by ours: no cross-host skew. */
    primary_now = f->have_clock ? f->primary_now_us + (mono - f->primary_now_mono) : now_us();
    return MAX(primary_now - f->current_as_of_us, 0) / 1000;
}

void follow_status(const struct follow *f, struct follow_status *out)
{
    int64_t mono = mono_us();

    memset(out, 0, sizeof(*out));
    out->state = f->state;
    memcpy(out->database_id, f->pos.database_id, sizeof(out->database_id));
    out->database_id[sizeof(out->database_id) - 1] = '\0';
    out->epoch = f->pos.epoch;
    out->applied_txid = f->pos.txid;
    out->checksum = f->pos.checksum;
    out->applied_time_us = f->pos.commit_time_us;
    out->primary_head_txid = f->head;
    memcpy(out->primary_database_id, f->primary_id, sizeof(out->primary_database_id));
    out->primary_epoch = f->primary_epoch;
    out->lag_txids = f->head > f->pos.txid ? f->head - f->pos.txid : 0;
    out->lag_ms = lag_ms(f, mono);
    if (f->state == FOLLOW_LIVE)
        out->since_caught_up_ms = 0;
    else
        out->since_caught_up_ms = f->last_live_mono ? (mono - f->last_live_mono) / 1000 : -1;
    out->reconnects = f->subscribes > 0 ? f->subscribes - 1 : 0;
    out->txns = f->txns;
    out->snapshots = f->snapshots;
    out->checksum_mismatches = f->mismatches;
    out->apply_errors = f->apply_errors;
    out->protocol_errors = f->protocol_errors;
    out->events = f->events;
}

/* ---- status and metrics -----------------------------------------------------*/

static void json_puts(struct buf *out, const char *s)
{
    buf_append(out, s, strlen(s));
}

void follow_status_json(const struct follow *f, struct buf *out)
{
    struct follow_status st;
    char num[512];
    int n;

    follow_status(f, &st);
    json_puts(out, "{\"state\":\"");
    json_puts(out, follow_state_name(st.state));
    /* The ids come from the primary: escape them like any untrusted string. */
    json_puts(out, "\",\"database_id\":");
    http_json_string(out, st.database_id, strlen(st.database_id));
    json_puts(out, ",\"primary_database_id\":");
    http_json_string(out, st.primary_database_id, strlen(st.primary_database_id));
    n = snprintf(num, sizeof(num),
                 ",\"primary_epoch\":%" PRIu64 ",\"epoch\":%" PRIu64 ",\"applied_txid\":%" PRIu64
                 ",\"checksum\":\"%" PRIu64 "\",\"applied_time_us\":%" PRId64
                 ",\"primary_head_txid\":%" PRIu64 ",\"lag_txids\":%" PRIu64 ",\"lag_ms\":%" PRId64
                 ",\"since_caught_up_ms\":%" PRId64 ",\"reconnects\":%" PRIu64 ",\"txns\":%" PRIu64
                 ",\"snapshots\":%" PRIu64 ",\"checksum_mismatches\":%" PRIu64
                 ",\"apply_errors\":%" PRIu64 ",\"protocol_errors\":%" PRIu64 "}",
                 st.primary_epoch, st.epoch, st.applied_txid, st.checksum, st.applied_time_us,
                 st.primary_head_txid, st.lag_txids, st.lag_ms, st.since_caught_up_ms,
                 st.reconnects, st.txns, st.snapshots, st.checksum_mismatches, st.apply_errors,
                 st.protocol_errors);
    assert(n > 0 && (size_t)n < sizeof(num));
    buf_append(out, num, (size_t)n);
}

/* One registered metric: a field of struct follow_status (or of apply_stats). */
struct follow_metric {
    struct follow *f;
    size_t def; /* index in metric_defs */
};

enum metric_src { FROM_STATUS_U64, FROM_STATUS_MS, FROM_APPLY };

static const struct {
    const char *name, *help;
    enum metrics_type type;
    enum metric_src src;
    size_t off;
} metric_defs[] = {
    {"boomerang_replica_applied_txid", "Last transaction applied to the replica.", METRICS_GAUGE,
     FROM_STATUS_U64, offsetof(struct follow_status, applied_txid)},
    {"boomerang_replica_primary_head_txid", "The primary's last known head transaction.",
     METRICS_GAUGE, FROM_STATUS_U64, offsetof(struct follow_status, primary_head_txid)},
    {"boomerang_replica_lag_txids", "Transactions the replica is behind the primary's head.",
     METRICS_GAUGE, FROM_STATUS_U64, offsetof(struct follow_status, lag_txids)},
    {"boomerang_replica_lag_seconds",
     "Upper bound of how stale the replica is (0 while live; NaN unknown).", METRICS_GAUGE,
     FROM_STATUS_MS, offsetof(struct follow_status, lag_ms)},
    {"boomerang_replica_since_caught_up_seconds",
     "Time since the replica was last caught up (0 while live; NaN never).", METRICS_GAUGE,
     FROM_STATUS_MS, offsetof(struct follow_status, since_caught_up_ms)},
    {"boomerang_replica_events_total", "Replication events received.", METRICS_COUNTER,
     FROM_STATUS_U64, offsetof(struct follow_status, events)},
    {"boomerang_replica_txns_applied_total", "Transactions applied.", METRICS_COUNTER,
     FROM_STATUS_U64, offsetof(struct follow_status, txns)},
    {"boomerang_replica_snapshots_applied_total", "Snapshots applied.", METRICS_COUNTER,
     FROM_STATUS_U64, offsetof(struct follow_status, snapshots)},
    {"boomerang_replica_reconnects_total", "Subscribe calls after the first.", METRICS_COUNTER,
     FROM_STATUS_U64, offsetof(struct follow_status, reconnects)},
    {"boomerang_replica_checksum_mismatches_total",
     "Transactions whose result did not match the primary's checksum.", METRICS_COUNTER,
     FROM_STATUS_U64, offsetof(struct follow_status, checksum_mismatches)},
    {"boomerang_replica_apply_errors_total", "Apply failures other than checksum mismatches.",
     METRICS_COUNTER, FROM_STATUS_U64, offsetof(struct follow_status, apply_errors)},
    {"boomerang_replica_protocol_errors_total", "Malformed or out-of-sequence events.",
     METRICS_COUNTER, FROM_STATUS_U64, offsetof(struct follow_status, protocol_errors)},
    {"boomerang_replica_pages_applied_total", "Pages written by transactions and snapshots.",
     METRICS_COUNTER, FROM_APPLY, offsetof(struct apply_stats, pages)},
    {"boomerang_replica_checkpoints_total", "Passive checkpoints of the replica's WAL.",
     METRICS_COUNTER, FROM_APPLY, offsetof(struct apply_stats, checkpoints)},
};

static void metric_collect_cb(void *arg, struct metrics_sink *sink)
{
    const struct follow_metric *fm = arg;
    struct follow_status st;
    struct apply_stats as;
    int64_t ms;
    uint64_t u = 0;

    follow_status(fm->f, &st);
    apply_stats(fm->f->apply, &as);
    switch (metric_defs[fm->def].src) {
    case FROM_STATUS_MS:
        memcpy(&ms, (const char *)&st + metric_defs[fm->def].off, sizeof(ms));
        metrics_sample(sink, NULL, ms < 0 ? NAN : (double)ms / 1000.0);
        return;
    case FROM_STATUS_U64:
        memcpy(&u, (const char *)&st + metric_defs[fm->def].off, sizeof(u));
        break;
    case FROM_APPLY:
        memcpy(&u, (const char *)&as + metric_defs[fm->def].off, sizeof(u));
        break;
    }
    metrics_sample(sink, NULL, (double)u);
}

static void state_collect_cb(void *arg, struct metrics_sink *sink)
{
    const struct follow *f = arg;

    for (int s = FOLLOW_DISCONNECTED; s <= FOLLOW_LIVE; s++) {
        const char *labels[] = {"state", follow_state_name((enum follow_state)s), NULL};
        metrics_sample(sink, labels, f->state == (enum follow_state)s);
    }
}

void follow_metrics(struct follow *f, struct metrics *m)
{
    assert(!f->metrics);
    f->metrics = xcalloc(ARRAY_LEN(metric_defs), sizeof(*f->metrics));
    for (size_t i = 0; i < ARRAY_LEN(metric_defs); i++) {
        f->metrics[i] = (struct follow_metric){f, i};
        metrics_collect_new(m, metric_defs[i].name, metric_defs[i].help, metric_defs[i].type,
                            metric_collect_cb, &f->metrics[i]);
    }
    metrics_collect_new(m, "boomerang_replica_state", "1 for the replication link's state.",
                        METRICS_GAUGE, state_collect_cb, f);
}
