/* boomerang: the replication stream (see stream.h for the flow).
 *
 * One struct sub per Subscribe call, in one list. Work happens in three places:
 *   - stream_publish(): LIVE subscribers get new commits at once (ordering);
 *   - the work timer (a zero-delay ev_timer): subscribers marked runnable
 *     (new, snapshot ready, drained, or out of their per-turn budget) are
 *     pumped, and closed ones are freed, after the stack that closed them has
 *     unwound;
 *   - the tick timer (every STREAM_TICK s): heartbeats, and a publish for
 *     commits that no Execute reply announced.
 *
 * Event sizes: a TxnChunk or SnapshotChunk carries at most
 * max(1, STREAM_CHUNK_BYTES / page_size) pages, in ascending pgno. A record's
 * pages come from its replog reader; a snapshot's from one statement,
 * `SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno`, stepped across loop
 * turns inside the read transaction the writer pinned (sqlite_dbpage only
 * pushes down `pgno = ?`, so a fresh `pgno > ? LIMIT n` query per chunk would
 * rescan the table from page 1 every time). */
#include "primary/stream.h"

#include <assert.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/h2server.h"
#include "common/log.h"
#include "common/pagesum.h"
#include "primary/replog.h"

#define STREAM_TICK         0.025             /* seconds between heartbeat checks */
#define STREAM_PUMP_BUDGET  (4 * 1024 * 1024) /* page bytes per subscriber per loop turn */
#define STREAM_MAX_PAGES    (STREAM_CHUNK_BYTES / 512)
#define STREAM_PAGEBUF      (STREAM_CHUNK_BYTES + 65536) /* one chunk, or one 64 KiB page */
#define STREAM_SNAP_BUSY_MS 1000
#define STREAM_SNAP_SQL     "SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno"

enum sub_state {
    SUB_HELLO,         /* Hello sent, position being decided */
    SUB_SNAPSHOT_WAIT, /* the writer is pinning a read transaction for us */
    SUB_SNAPSHOT,      /* sending the snapshot's pages */
    SUB_CATCHUP,       /* sending from the log, behind its head */
    SUB_LIVE,          /* at the head; stream_publish pushes new commits */
    SUB_CLOSING,       /* call ended; freed once no snapshot job is in the writer */
};

struct sub {
    struct stream *s;
    struct sub *prev, *next; /* s->subs */
    enum sub_state state;
    struct h2call *call; /* NULL once ended */
    char peer[128];
    int runnable;           /* the work timer pumps it (or frees it, when closing) */
    int64_t last_send_mono; /* µs, for heartbeats */
    uint64_t applied_txid;  /* as subscribed */
    uint64_t sent_txid;     /* last transaction or snapshot completely sent */
    int64_t sent_time_us;   /* its commit time; 0 while not known */

    /* From the log. */
    struct replog_reader *reader;
    struct replog_txn txn; /* the record being sent, while in_txn */
    uint32_t txn_page;     /* its next page to send */
    int in_txn;

    /* A snapshot. snap_db belongs to the writer thread while job_inflight. */
    const char *reason;
    sqlite3 *snap_db;
    sqlite3_stmt *snap_stmt;
    struct capture_status snap_at;
    int job_inflight;
    int snap_row;   /* snap_stmt stands on a row not sent yet */
    int snap_first; /* the first chunk is still to be sent */
};

struct stream {
    struct ev_loop *loop;
    struct stream_config cfg;
    struct replog *log;
    struct sub *subs;
    int draining;
    ev_timer tick;
    ev_timer work;
    struct stream_stats stats;
    /* The event being built: pages copied into pagebuf. */
    uint8_t *pagebuf;
    size_t pagebuf_used;
    Boomerang__V1__Page pages[STREAM_MAX_PAGES];
    Boomerang__V1__Page *page_ptrs[STREAM_MAX_PAGES];
    size_t npages;
    uint8_t *enc; /* packed event */
    size_t enc_cap;
};

static void sub_pump(struct sub *sub);
static void sub_close(struct sub *sub, enum grpc_status status, const char *message);
static void snap_start(struct sub *sub, const char *reason);

/* ---- state --------------------------------------------------------------- */

static const char *const sub_state_names[] = {"hello",   "snapshot-wait", "snapshot",
                                              "catchup", "live",          "closing"};

static void sub_set_state(struct sub *sub, enum sub_state next)
{
    static const unsigned allowed[] = {
        [SUB_HELLO] = 1u << SUB_SNAPSHOT_WAIT | 1u << SUB_CATCHUP | 1u << SUB_CLOSING,
        [SUB_SNAPSHOT_WAIT] = 1u << SUB_SNAPSHOT | 1u << SUB_CLOSING,
        [SUB_SNAPSHOT] = 1u << SUB_CATCHUP | 1u << SUB_CLOSING,
        [SUB_CATCHUP] = 1u << SUB_LIVE | 1u << SUB_SNAPSHOT_WAIT | 1u << SUB_CLOSING,
        [SUB_LIVE] = 1u << SUB_CATCHUP | 1u << SUB_SNAPSHOT_WAIT | 1u << SUB_CLOSING,
        [SUB_CLOSING] = 0,
    };

    assert(allowed[sub->state] & (1u << next));
    log_debug("%s: subscriber %s -> %s (sent txid %" PRIu64 ")", sub->peer,
              sub_state_names[sub->state], sub_state_names[next], sub->sent_txid);
    sub->state = next;
}

/* Pump (or free) it from the work timer, once the current stack unwound. */
static void sub_schedule(struct sub *sub)
{
    struct stream *s = sub->s;

    sub->runnable = 1;
    if (!ev_is_active(&s->work)) {
        ev_timer_set(&s->work, 0.0, 0.0);
        ev_timer_start(s->loop, &s->work);
    }
}

/* ---- sending ------------------------------------------------------------- */

static uint32_t pages_per_chunk(uint32_t page_size)
{
    uint32_t n = STREAM_CHUNK_BYTES / page_size;
    return n ? n : 1;
}

static void batch_reset(struct stream *s)
{
    s->npages = 0;
    s->pagebuf_used = 0;
}

/* Copy a page into the event being built: a record's page pointer is only
 * valid until the reader's next call. */
static void batch_add(struct stream *s, uint32_t pgno, const uint8_t *data, uint32_t page_size)
{
    Boomerang__V1__Page *p = &s->pages[s->npages];

    assert(s->npages < STREAM_MAX_PAGES && s->pagebuf_used + page_size <= STREAM_PAGEBUF);
    memcpy(s->pagebuf + s->pagebuf_used, data, page_size);
    *p = (Boomerang__V1__Page)BOOMERANG__V1__PAGE__INIT;
    p->pgno = pgno;
    p->data.data = s->pagebuf + s->pagebuf_used;
    p->data.len = page_size;
    s->page_ptrs[s->npages++] = p;
    s->pagebuf_used += page_size;
}

static int sub_send(struct sub *sub, const Boomerang__V1__ReplicationEvent *ev)
{
    struct stream *s = sub->s;
    size_t len = boomerang__v1__replication_event__get_packed_size(ev);

    if (len > s->enc_cap) {
        s->enc = xrealloc(s->enc, len);
        s->enc_cap = len;
    }
    boomerang__v1__replication_event__pack(ev, s->enc);
    if (h2call_send(sub->call, s->enc, len) != 0) {
        log_debug("%s: send to subscriber failed: the stream is gone", sub->peer);
        sub_close(sub, GRPC_UNAVAILABLE, "the stream is gone");
        return -1;
    }
    s->stats.bytes_sent += len + GRPC_PREFIX_LEN;
    sub->last_send_mono = mono_us();
    return 0;
}

static int send_hello(struct sub *sub, const struct capture_status *st)
{
    Boomerang__V1__Hello hello = BOOMERANG__V1__HELLO__INIT;
    Boomerang__V1__ReplicationEvent ev = BOOMERANG__V1__REPLICATION_EVENT__INIT;

    hello.database_id = (char *)st->database_id;
    hello.epoch = st->epoch;
    hello.head_txid = st->head_txid;
    hello.page_size = st->page_size;
    hello.now_us = now_us();
    ev.event_case = BOOMERANG__V1__REPLICATION_EVENT__EVENT_HELLO;
    ev.hello = &hello;
    return sub_send(sub, &ev);
}

static int send_heartbeat(struct sub *sub, const struct capture_status *st)
{
    Boomerang__V1__Heartbeat hb = BOOMERANG__V1__HEARTBEAT__INIT;
    Boomerang__V1__ReplicationEvent ev = BOOMERANG__V1__REPLICATION_EVENT__INIT;

    hb.head_txid = st->head_txid;
    hb.now_us = now_us();
    hb.head_time_us = st->head_time_us;
    ev.event_case = BOOMERANG__V1__REPLICATION_EVENT__EVENT_HEARTBEAT;
    ev.heartbeat = &hb;
    return sub_send(sub, &ev);
}

/* ---- closing -------------------------------------------------------------- */

/* End the read transaction and close the snapshot connection (not while the
 * writer thread may be using it). */
static void snap_end(struct sub *sub)
{
    assert(!sub->job_inflight);
    if (!sub->snap_db)
        return;
    sqlite3_finalize(sub->snap_stmt); /* returns the last step's error, reported there */
    sub->snap_stmt = NULL;
    sub->snap_row = 0;
    if (!sqlite3_get_autocommit(sub->snap_db) &&
        sqlite3_exec(sub->snap_db, "ROLLBACK", NULL, NULL, NULL) != SQLITE_OK)
        log_warn("%s: end snapshot transaction failed: %s", sub->peer,
                 sqlite3_errmsg(sub->snap_db));
    if (sqlite3_close(sub->snap_db) != SQLITE_OK)
        log_warn("%s: close snapshot connection failed: %s", sub->peer,
                 sqlite3_errmsg(sub->snap_db));
    sub->snap_db = NULL;
}

/* The one close path: end the call (if still ours), release the reader and,
 * unless the writer still holds it, the snapshot connection. The object is
 * freed later, from the work timer or when its snapshot job comes back. */
static void sub_close(struct sub *sub, enum grpc_status status, const char *message)
{
    if (sub->state == SUB_CLOSING)
        return;
    if (sub->call)
        h2call_finish(sub->call, status, message);
    sub->call = NULL;
    replog_reader_close(sub->reader);
    sub->reader = NULL;
    if (!sub->job_inflight)
        snap_end(sub);
    sub_set_state(sub, SUB_CLOSING);
    sub->s->stats.subscribers--;
    sub_schedule(sub);
}

static void sub_free(struct sub *sub)
{
    struct stream *s = sub->s;

    assert(sub->state == SUB_CLOSING && !sub->job_inflight && !sub->call && !sub->reader &&
           !sub->snap_db);
    if (sub->prev)
        sub->prev->next = sub->next;
    else
        s->subs = sub->next;
    if (sub->next)
        sub->next->prev = sub->prev;
    free(sub);
}

/* ---- from the log ----------------------------------------------------------- */

/* Send the next chunk of the current record. Returns 0, or -1 if the
 * subscriber was closed. */
static int send_txn_chunk(struct sub *sub, size_t *budget)
{
    struct stream *s = sub->s;
    const struct replog_txn *t = &sub->txn;
    Boomerang__V1__TxnChunk chunk = BOOMERANG__V1__TXN_CHUNK__INIT;
    Boomerang__V1__ReplicationEvent ev = BOOMERANG__V1__REPLICATION_EVENT__INIT;
    uint32_t end = sub->txn_page + MIN(t->npages - sub->txn_page, pages_per_chunk(t->page_size));

    batch_reset(s);
    for (uint32_t i = sub->txn_page; i < end; i++) {
        const uint8_t *data;
        uint32_t pgno;
        if (replog_reader_page(sub->reader, i, &pgno, &data) != 0) {
            sub_close(sub, GRPC_INTERNAL, "reading the replication log failed");
            return -1;
        }
        batch_add(s, pgno, data, t->page_size);
    }
    chunk.txid = t->txid;
    chunk.db_pages = t->db_pages;
    chunk.page_size = t->page_size;
    chunk.n_pages = s->npages;
    chunk.pages = s->page_ptrs;
    chunk.last = end == t->npages;
    if (chunk.last) {
        chunk.checksum = t->checksum;
        chunk.commit_time_us = t->time_us;
    }
    ev.event_case = BOOMERANG__V1__REPLICATION_EVENT__EVENT_TXN;
    ev.txn = &chunk;
    if (sub_send(sub, &ev) != 0)
        return -1;
    *budget -= MIN(*budget, s->pagebuf_used + 64); /* empty records cost something too */
    sub->txn_page = end;
    if (chunk.last) {
        sub->in_txn = 0;
        sub->sent_txid = t->txid;
        sub->sent_time_us = t->time_us;
        s->stats.txns_sent++;
    }
    return 0;
}

/* Start the next record. Returns 0, REPLOG_AGAIN (caught up), or -1 when the
 * subscriber was closed or moved to a snapshot. */
static int next_txn(struct sub *sub)
{
    int rc = replog_reader_next(sub->reader, &sub->txn);

    if (rc == 0) {
        sub->in_txn = 1;
        sub->txn_page = 0;
        return 0;
    }
    if (rc == REPLOG_AGAIN)
        return rc;
    if (rc == REPLOG_ERR_PRUNED)
        snap_start(sub, "behind retention");
    else
        snap_start(sub, "log unreadable"); /* the reason is logged by replog */
    return -1;
}

/* Send records until caught up, out of budget, or held back by flow control
 * (then on_drain brings us back). */
static void log_pump(struct sub *sub, size_t *budget)
{
    for (;;) {
        if (h2call_pending(sub->call) >= STREAM_PENDING_HIGH || *budget == 0) {
            if (*budget == 0)
                sub_schedule(sub);
            if (sub->state == SUB_LIVE)
                sub_set_state(sub, SUB_CATCHUP);
            return;
        }
        if (!sub->in_txn) {
            int rc = next_txn(sub);
            if (rc == REPLOG_AGAIN && sub->state == SUB_CATCHUP)
                sub_set_state(sub, SUB_LIVE);
            if (rc != 0)
                return;
        }
        if (send_txn_chunk(sub, budget) != 0)
            return;
    }
}

/* ---- snapshots ---------------------------------------------------------------- */

static void snap_start(struct sub *sub, const char *reason)
{
    struct stream *s = sub->s;
    int rc;

    log_info("%s: sending a snapshot: %s", sub->peer, reason);
    replog_reader_close(sub->reader);
    sub->reader = NULL;
    sub->in_txn = 0;
    sub->reason = reason;
    sub->sent_txid = 0;
    sub->sent_time_us = 0;
    rc = sqlite3_open_v2(s->cfg.db_path, &sub->snap_db, SQLITE_OPEN_READONLY, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_busy_timeout(sub->snap_db, STREAM_SNAP_BUSY_MS);
    if (rc != SQLITE_OK) {
        log_error("%s: open %s for a snapshot failed: %s", sub->peer, s->cfg.db_path,
                  sub->snap_db ? sqlite3_errmsg(sub->snap_db) : sqlite3_errstr(rc));
        sub_close(sub, GRPC_INTERNAL, "taking a snapshot failed");
        return;
    }
    sub_set_state(sub, SUB_SNAPSHOT_WAIT);
    sub->job_inflight = 1;
    writer_submit(s->cfg.writer, writer_snapshot_job(sub->snap_db, sub));
}

/* The writer pinned the read transaction: prepare the page scan and the
 * reader that continues after it. */
static void snap_begin(struct sub *sub, const struct capture_status *at)
{
    struct stream *s = sub->s;
    int rc;

    sub->snap_at = *at;
    rc = sqlite3_prepare_v2(sub->snap_db, STREAM_SNAP_SQL, -1, &sub->snap_stmt, NULL);
    if (rc != SQLITE_OK) {
        log_error("%s: prepare snapshot scan failed: %s", sub->peer, sqlite3_errmsg(sub->snap_db));
        sub_close(sub, GRPC_INTERNAL, "taking a snapshot failed");
        return;
    }
    /* Opened now, at the head, the reader holds its segment open should
     * retention delete it while the snapshot is on its way. */
    rc = replog_reader_open(s->log, at->head_txid + 1, &sub->reader);
    if (rc != 0) {
        log_error("%s: open the log after the snapshot at txid %" PRIu64 " failed: %d", sub->peer,
                  at->head_txid, rc);
        sub_close(sub, GRPC_INTERNAL, "reading the replication log failed");
        return;
    }
    sub->snap_first = 1;
    sub->snap_row = 0;
    sub->last_send_mono = mono_us(); /* the stall clock starts now */
    sub_set_state(sub, SUB_SNAPSHOT);
    sub_schedule(sub);
}

/* Step to a page to send (skipping the lock-byte page, which SQLite never
 * writes and replicas must not). Returns 1 (a row), 0 (no more), -1 (error,
 * logged). */
static int snap_step(struct sub *sub)
{
    uint32_t lock = pagesum_lock_page(sub->snap_at.page_size);

    while (!sub->snap_row) {
        int rc = sqlite3_step(sub->snap_stmt);
        if (rc == SQLITE_DONE)
            return 0;
        if (rc != SQLITE_ROW) {
            log_error("%s: read snapshot page failed: %s", sub->peer, sqlite3_errmsg(sub->snap_db));
            return -1;
        }
        sqlite3_int64 pgno = sqlite3_column_int64(sub->snap_stmt, 0);
        if (pgno < 1 || pgno > sub->snap_at.db_pages ||
            sqlite3_column_bytes(sub->snap_stmt, 1) != (int)sub->snap_at.page_size) {
            log_error("%s: read snapshot page failed: page %lld does not fit %" PRIu32
                      " pages of %" PRIu32 " bytes",
                      sub->peer, (long long)pgno, sub->snap_at.db_pages, sub->snap_at.page_size);
            return -1;
        }
        sub->snap_row = pgno != lock;
    }
    return 1;
}

/* Fill the batch with up to one chunk of pages. Returns 1 if more follow, 0
 * if this is the last chunk, -1 on error (logged). */
static int snap_fill(struct sub *sub)
{
    struct stream *s = sub->s;
    uint32_t max = pages_per_chunk(sub->snap_at.page_size);
    int rc;

    batch_reset(sub->s);
    while ((rc = snap_step(sub)) == 1 && s->npages < max) {
        batch_add(s, (uint32_t)sqlite3_column_int64(sub->snap_stmt, 0),
                  sqlite3_column_blob(sub->snap_stmt, 1), sub->snap_at.page_size);
        sub->snap_row = 0;
    }
    return rc; /* 1: the row that did not fit starts the next chunk */
}

/* The snapshot is out: end its transaction and go on from the log. */
static void snap_finish(struct sub *sub)
{
    snap_end(sub);
    sub->s->stats.snapshots_sent++;
    sub->sent_txid = sub->snap_at.head_txid;
    sub->sent_time_us = sub->snap_at.head_time_us;
    log_debug("%s: snapshot at txid %" PRIu64 " sent (%" PRIu32 " pages)", sub->peer,
              sub->snap_at.head_txid, sub->snap_at.db_pages);
    sub_set_state(sub, SUB_CATCHUP);
}

static int send_snap_chunk(struct sub *sub, size_t *budget)
{
    struct stream *s = sub->s;
    const struct capture_status *at = &sub->snap_at;
    Boomerang__V1__SnapshotChunk chunk = BOOMERANG__V1__SNAPSHOT_CHUNK__INIT;
    Boomerang__V1__ReplicationEvent ev = BOOMERANG__V1__REPLICATION_EVENT__INIT;
    int more = snap_fill(sub);

    if (more < 0) {
        sub_close(sub, GRPC_INTERNAL, "reading the snapshot failed");
        return -1;
    }
    chunk.txid = at->head_txid;
    chunk.db_pages = at->db_pages;
    chunk.page_size = at->page_size;
    chunk.n_pages = s->npages;
    chunk.pages = s->page_ptrs;
    if ((chunk.first = sub->snap_first)) {
        chunk.database_id = (char *)at->database_id;
        chunk.epoch = at->epoch;
        chunk.reason = (char *)sub->reason;
    }
    if ((chunk.last = !more)) {
        chunk.checksum = at->checksum;
        chunk.commit_time_us = at->head_time_us;
    }
    ev.event_case = BOOMERANG__V1__REPLICATION_EVENT__EVENT_SNAPSHOT;
    ev.snapshot = &chunk;
    if (sub_send(sub, &ev) != 0)
        return -1;
    sub->snap_first = 0;
    *budget -= MIN(*budget, s->pagebuf_used + 64);
    if (!more)
        snap_finish(sub);
    return 0;
}

static void snap_pump(struct sub *sub, size_t *budget)
{
    while (sub->state == SUB_SNAPSHOT) {
        if (h2call_pending(sub->call) >= STREAM_PENDING_HIGH)
            return; /* on_drain brings us back */
        if (*budget == 0) {
            sub_schedule(sub);
            return;
        }
        if (send_snap_chunk(sub, budget) != 0)
            return;
    }
}

void stream_job_done(struct stream *s, struct writer_job *job)
{
    struct sub *sub = job->owner;

    (void)s;
    assert(job->kind == WRITER_JOB_SNAPSHOT && sub->job_inflight && job->snap_db == sub->snap_db);
    sub->job_inflight = 0;
    if (sub->state == SUB_CLOSING) {
        snap_end(sub);
        sub_free(sub); /* the loop may not turn again (shutdown) */
    } else if (job->status != GRPC_OK) {
        log_error("%s: snapshot failed: %s", sub->peer, job->status_msg ? job->status_msg : "");
        sub_close(sub, GRPC_INTERNAL, "taking a snapshot failed");
    } else {
        snap_begin(sub, &job->snap_at);
    }
    writer_job_free(job);
}

/* ---- pumping and timers ----------------------------------------------------- */

static void sub_pump(struct sub *sub)
{
    size_t budget = STREAM_PUMP_BUDGET;

    if (sub->state == SUB_SNAPSHOT)
        snap_pump(sub, &budget);
    if (sub->state == SUB_CATCHUP || sub->state == SUB_LIVE)
        log_pump(sub, &budget);
}

static void stream_work_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct stream *s = container_of(w, struct stream, work);
    struct sub *sub, *next;

    (void)loop;
    (void)revents;
    /* Only this loop frees, and only the sub it stands on. */
    for (sub = s->subs; sub; sub = next) {
        next = sub->next;
        if (!sub->runnable)
            continue;
        sub->runnable = 0;
        if (sub->state == SUB_CLOSING) {
            if (!sub->job_inflight)
                sub_free(sub);
        } else {
            sub_pump(sub);
        }
    }
}

/* A snapshot pins the WAL: a replica that stopped reading one must not keep
 * it forever. (Log streaming pins nothing but its reader's file.) */
static void check_stalled(struct stream *s, int64_t now)
{
    int64_t limit = s->cfg.snapshot_stall_ms * 1000;

    for (struct sub *sub = s->subs; sub; sub = sub->next) {
        if (sub->state != SUB_SNAPSHOT || now - sub->last_send_mono < limit)
            continue;
        log_warn("%s: snapshot stalled: no progress for %" PRId64 " ms; cutting the replica off",
                 sub->peer, (now - sub->last_send_mono) / 1000);
        sub_close(sub, GRPC_UNAVAILABLE, "snapshot stalled: the replica stopped reading");
    }
}

static void stream_tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct stream *s = container_of(w, struct stream, tick);
    int64_t now = mono_us(), due = now - STREAM_HEARTBEAT_MS * 1000;
    struct capture_status st;
    int have_status = 0;

    (void)revents;
    if (s->stats.subscribers == 0) {
        ev_timer_stop(loop, w);
        return;
    }
    stream_publish(s);
    check_stalled(s, now);
    for (struct sub *sub = s->subs; sub; sub = sub->next) {
        if ((sub->state != SUB_LIVE && sub->state != SUB_SNAPSHOT_WAIT) ||
            sub->last_send_mono > due)
            continue;
        if (!have_status)
            writer_status(s->cfg.writer, &st);
        have_status = 1;
        if (send_heartbeat(sub, &st) == 0 && sub->call)
            h2call_flush(sub->call);
    }
}

static void stream_cancel_cb(void *arg, struct h2call *call)
{
    struct sub *sub = arg;

    assert(sub->call == call);
    (void)call;
    log_debug("%s: subscriber went away", sub->peer);
    sub_close(sub, GRPC_CANCELLED, NULL);
}

static void stream_drain_cb(void *arg, struct h2call *call)
{
    struct sub *sub = arg;

    (void)call;
    sub_schedule(sub);
}

/* ---- subscribing ---------------------------------------------------------------- */

/* The replica's own database at `applied` is ours: open a reader after it,
 * checking its checksum against the record for `applied` when the log still
 * holds it. Returns 0 (stream from sub->reader), 1 and *reason (send a
 * snapshot), or a negative replog code. */
static int sub_open_reader(struct sub *sub, uint64_t applied, uint64_t checksum,
                           const char **reason)
{
    struct replog *log = sub->s->log;
    struct replog_txn t;
    int rc = REPLOG_ERR_PRUNED;

    if (applied > 0 && (rc = replog_reader_open(log, applied, &sub->reader)) == 0) {
        rc = replog_reader_next(sub->reader, &t);
        if (rc == 0) {
            sub->sent_time_us = t.time_us;
            *reason = "checksum mismatch";
            return t.checksum == checksum ? 0 : 1;
        }
        replog_reader_close(sub->reader);
        sub->reader = NULL;
        if (rc == REPLOG_AGAIN)
            rc = REPLOG_ERR_RANGE; /* applied <= head was checked: cannot happen */
    }
    if (rc != REPLOG_ERR_PRUNED)
        return rc;
    rc = replog_reader_open(log, applied + 1, &sub->reader);
    *reason = "behind retention";
    return rc == REPLOG_ERR_PRUNED ? 1 : rc;
}

/* Decide where the replica starts. Same returns as sub_open_reader(). */
static int sub_position(struct sub *sub, const Boomerang__V1__SubscribeRequest *req,
                        const struct capture_status *st, const char **reason)
{
    if (!req->database_id || !req->database_id[0])
        *reason = "new replica";
    else if (strcmp(req->database_id, st->database_id) != 0)
        *reason = "database id mismatch";
    else if (req->epoch != st->epoch)
        *reason = "epoch mismatch";
    else if (req->applied_txid > st->head_txid)
        *reason = "ahead of the primary";
    else if (req->applied_txid == st->head_txid && req->applied_checksum != st->checksum)
        *reason = "checksum mismatch";
    else
        return sub_open_reader(sub, req->applied_txid, req->applied_checksum, reason);
    return 1;
}

static void sub_start(struct sub *sub, const Boomerang__V1__SubscribeRequest *req,
                      const struct capture_status *st)
{
    const char *reason = NULL;
    int rc = sub_position(sub, req, st, &reason);

    if (rc < 0) {
        log_error("%s: open the log at txid %" PRIu64 " failed: %d", sub->peer,
                  req->applied_txid + 1, rc);
        reason = "log unreadable";
    }
    if (rc != 0) {
        snap_start(sub, reason);
        return;
    }
    sub->sent_txid = req->applied_txid;
    sub_set_state(sub, SUB_CATCHUP);
    sub_schedule(sub);
}

static struct sub *sub_new(struct stream *s, struct h2call *call, uint64_t applied)
{
    struct sub *sub = xcalloc(1, sizeof(*sub));

    sub->s = s;
    sub->state = SUB_HELLO;
    sub->call = call;
    sub->applied_txid = applied;
    snprintf(sub->peer, sizeof(sub->peer), "%s", h2call_peer(call));
    sub->next = s->subs;
    if (s->subs)
        s->subs->prev = sub;
    s->subs = sub;
    s->stats.subscribers++;
    h2call_on_cancel(call, stream_cancel_cb, sub);
    h2call_on_drain(call, STREAM_PENDING_LOW, stream_drain_cb, sub);
    if (!ev_is_active(&s->tick))
        ev_timer_start(s->loop, &s->tick);
    return sub;
}

static int database_matches(const struct stream *s, const char *name)
{
    return !name || !*name || strcmp(name, s->cfg.database) == 0;
}

void stream_subscribe(struct stream *s, struct h2call *call)
{
    size_t len;
    const uint8_t *msg = h2call_message(call, &len);
    Boomerang__V1__SubscribeRequest *req = boomerang__v1__subscribe_request__unpack(NULL, len, msg);
    struct capture_status st;
    struct sub *sub;
    char text[256];

    if (!req) {
        h2call_fail(call, GRPC_INVALID_ARGUMENT, "malformed SubscribeRequest");
        return;
    }
    if (s->draining) {
        h2call_fail(call, GRPC_UNAVAILABLE, "the primary is shutting down");
    } else if (!database_matches(s, req->database)) {
        snprintf(text, sizeof(text), "database '%.100s' not found; this primary serves '%.100s'",
                 req->database, s->cfg.database);
        h2call_fail(call, GRPC_NOT_FOUND, text);
    } else {
        sub = sub_new(s, call, req->applied_txid);
        writer_status(s->cfg.writer, &st);
        log_debug("%s: subscribe at txid %" PRIu64 " (database id '%.40s' epoch %" PRIu64 ")",
                  sub->peer, req->applied_txid, req->database_id, req->epoch);
        if (send_hello(sub, &st) == 0)
            sub_start(sub, req, &st);
    }
    protobuf_c_message_free_unpacked(&req->base, NULL);
}

/* ---- the rest of the API ------------------------------------------------------------ */

struct stream *stream_new(struct ev_loop *loop, const struct stream_config *cfg)
{
    struct stream *s = xcalloc(1, sizeof(*s));

    s->loop = loop;
    s->cfg = *cfg;
    if (s->cfg.snapshot_stall_ms <= 0)
        s->cfg.snapshot_stall_ms = STREAM_SNAPSHOT_STALL_MS;
    s->log = writer_log(cfg->writer);
    s->pagebuf = xmalloc(STREAM_PAGEBUF);
    ev_timer_init(&s->tick, stream_tick_cb, STREAM_TICK, STREAM_TICK);
    ev_timer_init(&s->work, stream_work_cb, 0.0, 0.0);
    return s;
}

void stream_publish(struct stream *s)
{
    uint64_t head;

    if (s->draining || !s->subs)
        return;
    head = replog_head(s->log);
    for (struct sub *sub = s->subs; sub; sub = sub->next) {
        if (sub->state != SUB_LIVE || replog_reader_txid(sub->reader) > head)
            continue;
        sub_pump(sub);
        if (sub->call)
            h2call_flush(sub->call);
    }
}

void stream_drain(struct stream *s)
{
    if (s->draining)
        return;
    s->draining = 1;
    ev_timer_stop(s->loop, &s->tick);
    if (s->stats.subscribers)
        log_info("closing %u replication stream(s)", s->stats.subscribers);
    for (struct sub *sub = s->subs; sub; sub = sub->next)
        sub_close(sub, GRPC_UNAVAILABLE, "the primary is shutting down");
}

void stream_stats(const struct stream *s, struct stream_stats *out)
{
    *out = s->stats;
}

void stream_each(struct stream *s, stream_each_cb cb, void *arg)
{
    struct capture_status st;

    if (s->draining || !s->subs)
        return;
    writer_status(s->cfg.writer, &st);
    for (const struct sub *sub = s->subs; sub; sub = sub->next) {
        struct stream_sub_info info = {
            .peer = sub->peer,
            .state = sub_state_names[sub->state],
            .applied_txid = sub->applied_txid,
            .sent_txid = sub->sent_txid,
            .lag_txids = st.head_txid > sub->sent_txid ? st.head_txid - sub->sent_txid : 0,
        };
        if (sub->state == SUB_CLOSING)
            continue;
        if (info.lag_txids == 0)
            info.lag_ms = 0;
        else if (sub->sent_time_us == 0)
            info.lag_ms = -1;
        else
            info.lag_ms = MAX(0, st.head_time_us - sub->sent_time_us) / 1000;
        cb(arg, &info);
    }
}

void stream_free(struct stream *s)
{
    if (!s)
        return;
    stream_drain(s);
    ev_timer_stop(s->loop, &s->work);
    while (s->subs)
        sub_free(s->subs); /* asserts that no snapshot job is still out */
    free(s->pagebuf);
    free(s->enc);
    free(s);
}
