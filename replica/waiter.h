/* boomerang: wait until a txid is applied (Redis WAIT, keyed by txid).
 *
 * A waiter asks "call me once the replica has applied txid N, or at my
 * deadline, whichever comes first". The replica link calls waiter_notify()
 * after every applied transaction or snapshot; the sidecar adds a waiter for
 * each write it acknowledges and each read that carries a session token.
 *
 *   waiter_add(txid, deadline) ─▶ min-heap by (txid, arrival)
 *                                  │  ├─ waiter_notify(applied): pop every txid <= applied
 *                                  │  │                            ─▶ cb(APPLIED), in txid order
 *                                  │  └─ its own ev_timer          ─▶ cb(TIMEOUT)
 *                                  └─ waiter_cancel                ─▶ removed, no callback
 *
 * The heap makes a notify O(k log n) for k waiters fired out of n, and a
 * cancel or timeout O(log n). Waiters with the same txid fire in the order
 * they were added.
 *
 * Callbacks run from the loop: from waiter_notify(), from the waiter's timer,
 * or from waiter_set_free(); never from inside waiter_add() or
 * waiter_cancel(). A callback may add and cancel waiters (its own handle is
 * already dead when it runs), and may call waiter_notify() again.
 *
 * Threading: a set and its waiters belong to the loop thread. */
#ifndef BOOMERANG_WAITER_H
#define BOOMERANG_WAITER_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "common/util.h"

struct waiter_set;
struct waiter;

enum waiter_status {
    WAITER_APPLIED = 0, /* the set's applied txid reached the waiter's txid */
    WAITER_TIMEOUT = 1, /* the deadline passed first */
    WAITER_CLOSED = 2,  /* the set was freed before either happened */
};

/* A waiter ended. applied is the set's applied txid at that moment (>= the
 * waiter's txid for WAITER_APPLIED). The handle is already freed: do not pass
 * it to waiter_cancel(). */
typedef void (*waiter_cb)(void *arg, enum waiter_status status, uint64_t txid, uint64_t applied);

/* Create an empty set; applied starts at `applied` (the replica's position).
 * The caller frees it with waiter_set_free(). Never fails (aborts on OOM). */
struct waiter_set *waiter_set_new(struct ev_loop *loop, uint64_t applied);

/* End every remaining waiter with WAITER_CLOSED (in txid order; waiters the
 * callbacks add meanwhile are closed too), stop their timers and free the
 * set. Must not be called from inside one of the set's callbacks. NULL is a
 * no-op. */
void waiter_set_free(struct waiter_set *s);

/* Wait until txid is applied. deadline is an absolute time on the loop's
 * clock (ev_now(loop) + seconds); 0 means no deadline. cb(arg, ...) runs
 * exactly once, unless the waiter is cancelled first:
 * - WAITER_APPLIED from waiter_notify() once applied >= txid; if txid is
 *   already applied, from the loop at its next iteration (callers that want
 *   a synchronous fast path check waiter_applied() first);
 * - WAITER_TIMEOUT from the waiter's timer at the deadline (a deadline
 *   already past fires at the next iteration, as a timeout unless the txid is
 *   applied by then);
 * - WAITER_CLOSED from waiter_set_free().
 * Returns the handle, valid until cb starts or waiter_cancel() returns. */
struct waiter *waiter_add(struct waiter_set *s, uint64_t txid, ev_tstamp deadline, waiter_cb cb,
                          void *arg);

/* Remove a waiter whose callback has not run; its callback never runs. */
void waiter_cancel(struct waiter_set *s, struct waiter *w);

/* Record that everything up to `applied` is applied and fire, in txid order,
 * every waiter with txid <= applied. applied normally only grows; after a
 * snapshot of another history it may go down, and then only waiters with
 * txid <= the new value fire. Waiters that callbacks add with txid <= applied
 * fire in the same call. Returns the number of waiters fired. */
size_t waiter_notify(struct waiter_set *s, uint64_t applied);

/* The applied txid as of the last waiter_notify() (or waiter_set_new()). */
uint64_t waiter_applied(const struct waiter_set *s);

/* Waiters not yet ended. */
size_t waiter_count(const struct waiter_set *s);

/* The smallest txid still waited for, or 0 if there is no waiter. */
uint64_t waiter_min_txid(const struct waiter_set *s);

#endif
