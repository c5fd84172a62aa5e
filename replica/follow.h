/* boomerang: the replica's side of the replication link.
 *
 * follow subscribes to the primary's Replication.Subscribe stream on an
 * HTTP/2 client it is given (the sidecar shares that connection with its
 * writes, so follow never makes its own), decodes each ReplicationEvent and
 * drives replica/apply. It reconnects on its own, resuming from the applied
 * position, and tells waiters (replica/waiter.h) about every applied
 * transaction and snapshot.
 *
 * States (see follow.c for the diagram):
 *   DISCONNECTED  no stream; waiting out a backoff (100 ms doubling to 5 s, ±20 %)
 *   CONNECTING    Subscribe sent, no Hello yet
 *   SNAPSHOT      the primary is another database or epoch (or we asked for a
 *                 snapshot): waiting for, or applying, a snapshot
 *   CATCHING_UP   applied < the primary's head
 *   LIVE          applied >= the primary's head ("caught up") as of the
 *                 latest Hello, Heartbeat or transaction
 *
 * Checksum mismatch (APPLY_ERR_CHECKSUM): the transaction is not applied; it
 * is logged and counted, and the next Subscribe presents the replica as a new
 * one (database_id "", epoch 0, txid 0), which forces the primary to send a
 * snapshot. Sending the position as it is would not do: when the mismatch
 * comes from the transaction rather than from the replica's earlier content,
 * the replica's checksum at its position still matches the primary's, and
 * the primary would send the same transaction again, forever.
 *
 * Lag (follow_status):
 *   lag_txids  primary head - applied, or 0.
 *   lag_ms     how stale the replica's content may be: 0 while LIVE and
 *              events keep arriving (the last one less than 1 s ago);
 *              otherwise the primary's clock now (estimated from its last
 *              Hello/Heartbeat now_us plus the local time elapsed since, so
 *              clock skew between hosts does not count) minus the last
 *              primary-clock instant at which the replica is known to have
 *              been current: the commit time of the applied txid, or the
 *              now_us of a Hello/Heartbeat that showed head <= applied,
 *              whichever is later. It is an upper bound (a transaction that
 *              committed right after that instant counts from that instant),
 *              so it is safe for "serve if at most N ms stale". -1 if unknown
 *              (an empty replica that has never heard from the primary).
 *   since_caught_up_ms  0 while LIVE; local time since the link was last
 *              LIVE; -1 if it has not been LIVE since follow_start.
 *
 * Threading: everything runs on the loop thread that owns the client. */
#ifndef BOOMERANG_FOLLOW_H
#define BOOMERANG_FOLLOW_H

#include <ev.h>
#include <stdint.h>

#include "common/util.h"

struct follow;
struct h2client;
struct apply;
struct waiter_set;
struct metrics;
struct buf;

enum follow_state {
    FOLLOW_DISCONNECTED,
    FOLLOW_CONNECTING,
    FOLLOW_SNAPSHOT,
    FOLLOW_CATCHING_UP,
    FOLLOW_LIVE,
};

enum follow_err {
    FOLLOW_ERR_CONFIG = -1, /* client or apply missing, or a negative duration */
};

/* The link changed state (called from the loop, after the change; it must
 * not call follow_free). */
typedef void (*follow_state_cb)(void *arg, enum follow_state state);

/* Transaction txid (not a snapshot) was committed to the replica and is
 * visible to readers; commit_time_us is the primary's clock at its commit.
 * Called right after the COMMIT, before the waiters are notified, so that
 * now_us() - commit_time_us is the apply lag (meaningful where the two
 * clocks agree). It must not call follow_free. */
typedef void (*follow_applied_cb)(void *arg, uint64_t txid, int64_t commit_time_us);

/* Transaction or snapshot txid is about to be committed to the replica: called
 * right before the COMMIT (which may still fail), so that a reader can bound
 * from above what it may see (the sidecar's link_applying()). It must not
 * call follow_free. */
typedef void (*follow_committing_cb)(void *arg, uint64_t txid);

struct follow_config {
    const char *database;         /* sent in SubscribeRequest; NULL or "" = the primary's database
                                     (copied) */
    struct h2client *client;      /* borrowed; must outlive the follow */
    struct apply *apply;          /* borrowed; follow is its only user until follow_free */
    double backoff_initial;       /* first resubscribe delay, seconds; 0 = 0.1 */
    double backoff_max;           /* resubscribe delay cap, seconds; 0 = 5 */
    double stall_timeout;         /* no event for this long drops the stream, seconds; 0 = 5
                                     (the primary sends a heartbeat about every 100 ms) */
    follow_state_cb on_state;     /* optional */
    follow_applied_cb on_applied; /* optional */
    follow_committing_cb on_committing; /* optional */
    void *arg;                          /* passed to on_state, on_applied and on_committing */
};

struct follow_status {
    enum follow_state state;
    char database_id[33]; /* the replica's ("" before its first snapshot) */
    uint64_t epoch;
    uint64_t applied_txid;
    uint64_t checksum;            /* the database checksum at applied_txid (common/pagesum.h) */
    int64_t applied_time_us;      /* the primary's clock at the applied txid's commit; 0 unknown */
    uint64_t primary_head_txid;   /* last known; 0 before the first Hello */
    char primary_database_id[33]; /* from the last Hello ("" before the first) */
    uint64_t primary_epoch;
    uint64_t lag_txids;
    int64_t lag_ms;             /* see above; -1 unknown */
    int64_t since_caught_up_ms; /* see above; -1 never */
    uint64_t reconnects;        /* Subscribe calls after the first */
    uint64_t txns, snapshots;   /* applied since follow_start */
    uint64_t checksum_mismatches;
    uint64_t apply_errors;    /* other apply failures (each dropped the stream) */
    uint64_t protocol_errors; /* malformed or out-of-sequence events */
    uint64_t events;          /* ReplicationEvents received */
};

/* Start following: read the replica's position from apply and send the
 * first Subscribe now (it waits for the client's connection if that is
 * still being made). Returns 0 and *out, or FOLLOW_ERR_CONFIG. The caller
 * frees *out with follow_free(). */
int MUST_CHECK follow_start(struct ev_loop *loop, const struct follow_config *cfg,
                            struct follow **out);

/* For tests and fuzzing: handle one serialized ReplicationEvent as if it had
 * arrived on the open subscription (ignored when none is open). */
void follow_feed(struct follow *f, const uint8_t *msg, size_t len);

/* Stop: cancel the stream, roll back a transaction or snapshot that was
 * being received (apply_abort), end every waiter with WAITER_CLOSED, stop the
 * timers and free. The client and the apply stay the caller's (close the
 * apply after this). Must not be called from inside a waiter callback of
 * this follow's set. NULL is a no-op. */
void follow_free(struct follow *f);

enum follow_state follow_state(const struct follow *f);
/* "DISCONNECTED", "CONNECTING", "SNAPSHOT", "CATCHING_UP", "LIVE". */
const char *follow_state_name(enum follow_state s);

/* A consistent copy of the link's numbers (see above for lag). */
void follow_status(const struct follow *f, struct follow_status *out);

/* Append follow_status() as one JSON object to out, for GET /v1/status:
 * {"state":"LIVE","database_id":"...","primary_database_id":"...",
 *  "primary_epoch":1,"epoch":1,"applied_txid":42,
 *  "checksum":"<u64 as a decimal
 * string>","applied_time_us":...,"primary_head_txid":42,"lag_txids":0,"lag_ms":0,
 *  "since_caught_up_ms":0,"reconnects":0,"txns":41,"snapshots":1,
 *  "checksum_mismatches":0,"apply_errors":0,"protocol_errors":0}
 * (lag_ms and since_caught_up_ms are -1 when unknown). */
void follow_status_json(const struct follow *f, struct buf *out);

/* Register the link's metrics in m (Prometheus names boomerang_replica_*:
 * applied and primary head txid, lag in txids and seconds, seconds since
 * caught up, state, and counters of events, transactions, snapshots, pages,
 * checkpoints, reconnects, checksum mismatches, apply and protocol errors).
 * They are computed when m is rendered, on the loop thread; f must outlive m
 * (free m first). */
void follow_metrics(struct follow *f, struct metrics *m);

/* The last applied txid (same as follow_status().applied_txid). */
uint64_t follow_applied(const struct follow *f);

/* The waiters notified after every applied transaction and snapshot, with
 * the applied txid (replica/waiter.h). Owned by the follow: freed, with
 * WAITER_CLOSED for the waiters left, by follow_free(). Note that a snapshot
 * of another database or epoch may take the applied txid down; a caller that
 * mixes histories must compare database id and epoch itself. */
struct waiter_set *follow_waiters(struct follow *f);

#endif
