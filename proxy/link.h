/* boomerang: the sidecar's link to the primary.
 *
 * One thread (the link thread, which runs its own libev loop) owns the
 * replica and the one multiplexed HTTP/2 connection to the primary: the
 * Replication.Subscribe stream (replica/follow.c applying into the replica
 * file) and every forwarded Primary.Execute and Primary.Status call share it,
 * so the frames of a write arrive before its answer (DESIGN.md).
 *
 * The app-facing threads call in from anywhere; each call's completion is
 * posted to the caller's loopq (common/loopq.h), so it runs on the caller's
 * thread:
 *
 *   app thread ── link_execute(req) ──▶ link thread: h2client_unary(Execute)
 *        ▲                                     │ reply (its txn already applied: same connection)
 *        └──────── cb(status, resp, applied) ◀─┘  posted to the caller's loopq
 *
 * Positions are published for every thread, lock-free:
 *   link_applied()   the newest txid committed to the replica and visible to
 *                    new read transactions (published after the COMMIT);
 *   link_applying()  an upper bound of what a read transaction may see
 *                    (published before the COMMIT): a read that starts after
 *                    applied = A and, once its snapshot is taken, reads
 *                    applying = B, saw some state in [A, B].
 * Waiting for a txid (link_wait) uses replica/waiter.h on the link thread:
 * callbacks keyed by txid, with a timer, never polling.
 *
 * Threading: link_start and link_free on the thread that runs the link's
 * loop (before ev_run and after it returns); everything else from any thread. */
#ifndef BOOMERANG_LINK_H
#define BOOMERANG_LINK_H

#include <ev.h>
#include <openssl/ssl.h>
#include <stdint.h>

#include "common/util.h"
#include "proto/boomerang.pb-c.h"

struct link;
struct loopq;
struct metrics;

struct link_config {
    const char *primary_url;  /* http://HOST:PORT or https://HOST:PORT */
    SSL_CTX *tls;             /* for https (borrowed), or NULL */
    const char *auth_token;   /* bearer token to the primary, or NULL */
    const char *database;     /* database name on the primary, or NULL */
    const char *replica_path; /* the replica file (apply_open) */
    uint32_t checkpoint_pages;
    size_t max_message; /* largest gRPC message accepted; 0 = 64 MiB */
};

/* The link's state, a consistent copy (see link_info). */
struct link_info {
    const char *state;      /* follow_state_name(): "LIVE", "CATCHING_UP", ... */
    const char *connection; /* h2client_state_name(): "CONNECTED", ... */
    char database_id[33];   /* the replica's ("" before its first snapshot) */
    uint64_t epoch;
    uint64_t applied_txid;
    uint64_t primary_txid; /* last known head */
    uint64_t lag_txids;
    int64_t lag_ms;     /* follow_status's lag_ms: -1 unknown */
    int caught_up_once; /* 1 once LIVE at least once since start */
    uint64_t conn_gen;  /* bumped when the HTTP/2 connection is replaced */
};

/* Open the replica (apply_open), connect to the primary and start following,
 * on loop (the link thread's loop). Returns 0 and *out, or -1 (logged). */
int MUST_CHECK link_start(struct ev_loop *loop, const struct link_config *cfg, struct link **out);

/* Stop following, cancel calls in flight (their callbacks run, with
 * GRPC_CANCELLED, posted as usual), close the replica, free. NULL: no-op. */
void link_free(struct link *l);

/* Register the replica link's metrics (follow_metrics) in m; l outlives m. */
void link_metrics(struct link *l, struct metrics *m);

uint64_t link_applied(const struct link *l);
uint64_t link_applying(const struct link *l);

/* A consistent copy of the link's state (a mutex-protected copy refreshed by
 * the link thread on every event). */
void link_info(struct link *l, struct link_info *out);

/* Primary.Execute finished. status is a gRPC status (GRPC_OK = 0) with
 * message; resp is the unpacked response on GRPC_OK (else NULL), owned by the
 * callback (free with boomerang__v1__execute_response__free_unpacked(resp,
 * NULL)). applied is link_applied() when the reply arrived. conn_gen is the
 * connection generation the call ran on. */
typedef void (*link_execute_cb)(void *arg, int status, const char *message,
                                Boomerang__V1__ExecuteResponse *resp, uint64_t applied,
                                uint64_t conn_gen);

/* Send req (packed here, on the caller's thread; req stays the caller's) with
 * a deadline of timeout_s; cb(arg, ...) runs on reply_q's loop exactly once. */
void link_execute(struct link *l, const Boomerang__V1__ExecuteRequest *req, double timeout_s,
                  struct loopq *reply_q, link_execute_cb cb, void *arg);

/* Primary.Status finished: head_txid (and the database id and epoch) on
 * GRPC_OK. */
typedef void (*link_status_cb)(void *arg, int status, const char *message, uint64_t head_txid,
                               const char *database_id, uint64_t epoch);

void link_status(struct link *l, double timeout_s, struct loopq *reply_q, link_status_cb cb,
                 void *arg);

/* txid applied (1) or the timeout passed first (0, also when the link is
 * being freed); applied is link_applied() at that moment. */
typedef void (*link_wait_cb)(void *arg, int reached, uint64_t applied);

/* Wait until txid is applied, or timeout_s passes. If it already is, cb is
 * still posted (not called inline). */
void link_wait(struct link *l, uint64_t txid, double timeout_s, struct loopq *reply_q,
               link_wait_cb cb, void *arg);

#endif
