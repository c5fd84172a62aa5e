/* boomerang: run a function on another thread's event loop.
 *
 * A loopq belongs to one libev loop (one thread). Any thread may post
 * (fn, arg) to it; fn(arg) then runs on the loop's thread, in posting order,
 * woken by an ev_async. The sidecar's threads talk to each other only this
 * way: an app thread posts a write to the replication thread, which posts the
 * answer back.
 *
 * Threading: loopq_post from any thread; loopq_new and loopq_free on the
 * owning loop's thread. */
#ifndef BOOMERANG_LOOPQ_H
#define BOOMERANG_LOOPQ_H

#include <ev.h>

#include "common/util.h"

struct loopq;

typedef void (*loopq_fn)(void *arg);

/* A queue whose functions run on loop. Its ev_async does not keep the loop
 * alive by itself (ev_unref), so a loop with nothing else to do ends. Never
 * fails (aborts on OOM). */
struct loopq *loopq_new(struct ev_loop *loop);

/* Queue fn(arg) to run on q's loop. Never fails (aborts on OOM): a post
 * after loopq_free is a programming error. */
void loopq_post(struct loopq *q, loopq_fn fn, void *arg);

/* Run what is queued now, on the loop's thread (also done by the ev_async). */
void loopq_drain(struct loopq *q);

/* Stop and free q; functions still queued run first. NULL is a no-op. */
void loopq_free(struct loopq *q);

#endif
