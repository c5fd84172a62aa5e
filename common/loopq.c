/* boomerang: run a function on another thread's event loop (common/loopq.h).
 *
 * A mutex-protected singly linked FIFO of (fn, arg) plus an ev_async that
 * wakes the owning loop. The drain takes the whole list under the lock and
 * runs it without the lock, so a function may post again (to this queue or
 * any other) without deadlocking; what it posts runs after everything taken,
 * which keeps the order of posting. */
#include "common/loopq.h"

#include <pthread.h>
#include <stdlib.h>

#include "common/log.h"

struct loopq_item {
    struct loopq_item *next;
    loopq_fn fn;
    void *arg;
};

struct loopq {
    struct ev_loop *loop;
    ev_async async;
    pthread_mutex_t mu;
    struct loopq_item *head, *tail;
};

static void lock(struct loopq *q)
{
    int rc = pthread_mutex_lock(&q->mu);

    if (rc != 0) {
        log_error("loopq lock failed: error %d", rc);
        abort();
    }
}

static void unlock(struct loopq *q)
{
    int rc = pthread_mutex_unlock(&q->mu);

    if (rc != 0) {
        log_error("loopq unlock failed: error %d", rc);
        abort();
    }
}

static void loopq_async_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)revents;
    loopq_drain(container_of(w, struct loopq, async));
}

struct loopq *loopq_new(struct ev_loop *loop)
{
    struct loopq *q = xcalloc(1, sizeof(*q));
    int rc = pthread_mutex_init(&q->mu, NULL);

    if (rc != 0) {
        log_error("loopq mutex init failed: error %d", rc);
        abort();
    }
    q->loop = loop;
    ev_async_init(&q->async, loopq_async_cb);
    ev_async_start(loop, &q->async);
    /* The queue alone must not keep ev_run going: the loop ends when its
     * real work (connections, timers) is gone. */
    ev_unref(loop);
    return q;
}

void loopq_post(struct loopq *q, loopq_fn fn, void *arg)
{
    struct loopq_item *it = xmalloc(sizeof(*it));

    it->next = NULL;
    it->fn = fn;
    it->arg = arg;
    lock(q);
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    unlock(q);
    /* Cheap when a wake-up is already pending: libev coalesces them. */
    ev_async_send(q->loop, &q->async);
}

/* Detach everything queued now; NULL if empty. */
static struct loopq_item *take_all(struct loopq *q)
{
    struct loopq_item *list;

    lock(q);
    list = q->head;
    q->head = q->tail = NULL;
    unlock(q);
    return list;
}

/* Run what is queued now; returns how many ran. */
static size_t run_queued(struct loopq *q)
{
    struct loopq_item *it = take_all(q);
    size_t n = 0;

    while (it) {
        struct loopq_item *next = it->next;

        it->fn(it->arg);
        free(it);
        it = next;
        n++;
    }
    return n;
}

void loopq_drain(struct loopq *q)
{
    (void)run_queued(q);
}

void loopq_free(struct loopq *q)
{
    if (!q)
        return;
    /* Functions run here may post again; run until nothing is left. */
    while (run_queued(q) > 0)
        ;
    ev_ref(q->loop); /* undo the ev_unref before stopping, as libev requires */
    ev_async_stop(q->loop, &q->async);
    pthread_mutex_destroy(&q->mu);
    free(q);
}
