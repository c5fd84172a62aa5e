/* boomerang: the primary's side of replication, boomerang.v1.Replication/Subscribe.
 *
 *   Subscribe(req) ─▶ Hello ─▶ position served by the log? ──yes──▶ CATCHUP
 *                                  │ no (new replica, other id or epoch,  │ reader at
 *                                  ▼  ahead, pruned, checksum mismatch)   │ AGAIN
 *                             SNAPSHOT_WAIT: writer pins a read txn       ▼
 *                                  ▼                                     LIVE ◀─ stream_publish()
 *                             SNAPSHOT: pages from sqlite_dbpage ──▶ CATCHUP (from txid + 1)
 *
 * Each subscriber has its own replication log reader, so one that is behind
 * is served from the log on disk; one that falls behind retention gets a
 * snapshot. A subscriber never has more than about STREAM_PENDING_HIGH bytes
 * queued on its call (h2call_pending); past that it waits for the call to
 * drain (h2call_on_drain) and reads nothing meanwhile, so a replica that stops
 * reading costs bounded memory. No turn of the loop sends more than a few MiB
 * per subscriber. A snapshot holds a read transaction, which keeps the
 * primary's WAL from being reset, so a replica that stops reading in the
 * middle of one is cut off (UNAVAILABLE) after snapshot_stall_ms without
 * progress; it reconnects and starts over.
 *
 * Ordering: stream_publish() pushes every logged commit to every LIVE
 * subscriber and flushes their connections' HTTP/2 output (h2call_flush). The
 * service calls it before it replies to an Execute, so on a connection shared
 * by a Subscribe and an Execute, the transaction's frames are serialized ahead
 * of the Execute response. This holds while the subscriber keeps up: its
 * HTTP/2 window is open and the connection has less than 16 MiB unsent (see
 * h2call_flush). A subscriber held back by flow control gets the frames when
 * it reads on.
 *
 * Shutdown: stream_drain() ends every subscription with UNAVAILABLE "the
 * primary is shutting down", so replicas reconnect with backoff (to this
 * primary once it is back, or to its replacement); OK would wrongly suggest
 * the stream was complete.
 *
 * Threading: everything runs on the loop thread. */
#ifndef BOOMERANG_STREAM_H
#define BOOMERANG_STREAM_H

#include <ev.h>
#include <stdint.h>

#include "common/util.h"
#include "primary/writer.h"

struct stream;
struct h2call;

#define STREAM_CHUNK_BYTES       (1024 * 1024)     /* page bytes per TxnChunk / SnapshotChunk */
#define STREAM_PENDING_HIGH      (4 * 1024 * 1024) /* stop sending to a subscriber above this */
#define STREAM_PENDING_LOW       (1024 * 1024)     /* ...and resume once it drained below this */
#define STREAM_HEARTBEAT_MS      100               /* heartbeat after this long without a send */
#define STREAM_SNAPSHOT_STALL_MS 30000             /* default snapshot_stall_ms */

struct stream_config {
    const char *database; /* the name clients use; "" and NULL in requests also match */
    const char *db_path;  /* the primary's database file, opened read-only for snapshots */
    struct writer *writer;
    int64_t snapshot_stall_ms; /* cut off a snapshot that made no progress this long;
                                  0 = STREAM_SNAPSHOT_STALL_MS */
};

/* Totals since start, for metrics. */
struct stream_stats {
    unsigned subscribers;    /* subscriptions open now */
    uint64_t snapshots_sent; /* snapshots completely sent */
    uint64_t txns_sent;      /* transactions completely sent (from the log) */
    uint64_t bytes_sent;     /* event bytes handed to the calls, gRPC framing included */
};

/* One subscriber, as stream_each() reports it. Pointers are valid during the
 * callback only. */
struct stream_sub_info {
    const char *peer;      /* "conn#3 127.0.0.1:40512 stream 1" */
    const char *state;     /* "hello", "snapshot-wait", "snapshot", "catchup", "live" */
    uint64_t applied_txid; /* the position the replica subscribed with */
    uint64_t sent_txid;    /* last transaction (or snapshot) completely sent */
    uint64_t lag_txids;    /* primary head - sent_txid */
    int64_t lag_ms;        /* commit time of the head - that of sent_txid; 0 when caught
                              up; -1 while not known (no transaction sent yet) */
};

typedef void (*stream_each_cb)(void *arg, const struct stream_sub_info *info);

/* Create the module (no subscribers yet). cfg's strings and writer are
 * borrowed and must outlive it. */
struct stream *stream_new(struct ev_loop *loop, const struct stream_config *cfg);

/* Serve a Subscribe call; the stream owns and ends the call. Answers
 * INVALID_ARGUMENT for a malformed SubscribeRequest, NOT_FOUND for another
 * database and UNAVAILABLE once draining; otherwise sends Hello and streams
 * until the peer goes away, the primary drains, or a failure (INTERNAL: the
 * log or the database could not be read; the reason is logged). May be called
 * from inside the h2server's on_call. */
void stream_subscribe(struct stream *s, struct h2call *call);

/* Push what the log holds beyond each LIVE subscriber's position and flush
 * their connections. Call it before answering an Execute (see the ordering
 * note above). Cheap when nobody is behind. Not from inside h2server
 * callbacks (the flush would then wait for the end of the loop iteration). */
void stream_publish(struct stream *s);

/* The writer handed back a WRITER_JOB_SNAPSHOT job that this module
 * submitted; the stream takes ownership of the job (and frees it). */
void stream_job_done(struct stream *s, struct writer_job *job);

/* End every subscription with UNAVAILABLE, close their log readers and
 * snapshot transactions, and refuse new ones. Call it before the writer stops
 * (a snapshot job still in the writer is cleaned up when it comes back).
 * Idempotent. */
void stream_drain(struct stream *s);

/* Copy of the totals. */
void stream_stats(const struct stream *s, struct stream_stats *out);

/* Call cb for each open subscription. cb must not call into the stream. */
void stream_each(struct stream *s, stream_each_cb cb, void *arg);

/* Free the module (NULL is fine). Call after stream_drain() and after the
 * writer has stopped, so no snapshot job can still come back. */
void stream_free(struct stream *s);

#endif
