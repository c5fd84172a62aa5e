/* boomerang: wait until a txid is applied.
 *
 * The waiters sit in a binary min-heap ordered by (txid, seq), where seq
 * counts additions, so equal txids keep their arrival order. Each waiter
 * records its heap index, which makes removing it from the middle (cancel,
 * timeout) O(log n). Every way a waiter ends goes through waiter_fire(),
 * which takes it out of the heap and stops its timer before the callback
 * runs, so a callback can do anything to the set except free it. */
#include "replica/waiter.h"

#include <assert.h>
#include <stdlib.h>

struct waiter {
    struct waiter_set *set;
    uint64_t txid;
    uint64_t seq;
    size_t idx; /* position in set->heap */
    ev_tstamp deadline;
    int immediate; /* the timer was armed at 0 because txid was already applied */
    ev_timer timer;
    waiter_cb cb;
    void *arg;
};

struct waiter_set {
    struct ev_loop *loop;
    struct waiter **heap;
    size_t n, cap;
    uint64_t applied;
    uint64_t seq;
    unsigned depth; /* callbacks running (waiter_set_free is refused inside one) */
};

/* ---- the heap ---------------------------------------------------------------*/

static int heap_less(const struct waiter *a, const struct waiter *b)
{
    return a->txid < b->txid || (a->txid == b->txid && a->seq < b->seq);
}

static void heap_put(struct waiter_set *s, size_t i, struct waiter *w)
{
    s->heap[i] = w;
    w->idx = i;
}

static void heap_up(struct waiter_set *s, size_t i)
{
    struct waiter *w = s->heap[i];

    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_less(w, s->heap[parent]))
            break;
        heap_put(s, i, s->heap[parent]);
        i = parent;
    }
    heap_put(s, i, w);
}

static void heap_down(struct waiter_set *s, size_t i)
{
    struct waiter *w = s->heap[i];

    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= s->n)
            break;
        if (child + 1 < s->n && heap_less(s->heap[child + 1], s->heap[child]))
            child++;
        if (!heap_less(s->heap[child], w))
            break;
        heap_put(s, i, s->heap[child]);
        i = child;
    }
    heap_put(s, i, w);
}

static void heap_push(struct waiter_set *s, struct waiter *w)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 16;
        s->heap = xrealloc(s->heap, s->cap * sizeof(*s->heap));
    }
    heap_put(s, s->n++, w);
    heap_up(s, w->idx);
}

static void heap_remove(struct waiter_set *s, struct waiter *w)
{
    size_t i = w->idx;
    struct waiter *last;

    assert(i < s->n && s->heap[i] == w);
    last = s->heap[--s->n];
    if (last == w)
        return;
    heap_put(s, i, last);
    /* The moved element may belong above or below its new place. */
    if (i > 0 && heap_less(last, s->heap[(i - 1) / 2]))
        heap_up(s, i);
    else
        heap_down(s, i);
}

/* ---- waiters ----------------------------------------------------------------*/

/* The one way a waiter ends: out of the heap, timer stopped, freed, then the
 * callback (which may re-enter the set). */
static void waiter_fire(struct waiter *w, enum waiter_status status)
{
    struct waiter_set *s = w->set;
    waiter_cb cb = w->cb;
    void *arg = w->arg;
    uint64_t txid = w->txid;

    heap_remove(s, w);
    ev_timer_stop(s->loop, &w->timer);
    free(w);
    s->depth++;
    cb(arg, status, txid, s->applied);
    s->depth--;
}

static void waiter_arm(struct waiter *w)
{
    struct waiter_set *s = w->set;
    ev_tstamp after = w->deadline - ev_now(s->loop);

    ev_timer_set(&w->timer, after > 0 ? after : 0, 0);
    ev_timer_start(s->loop, &w->timer);
}

static void waiter_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct waiter *w = container_of(t, struct waiter, timer);

    (void)loop;
    (void)revents;
    if (w->txid <= w->set->applied) {
        waiter_fire(w, WAITER_APPLIED);
        return;
    }
    if (!w->immediate) {
        waiter_fire(w, WAITER_TIMEOUT);
        return;
    }
    /* Armed at 0 for an applied txid, but a snapshot of another history took
     * applied below it since: wait again, for the real deadline. */
    w->immediate = 0;
    if (w->deadline > 0)
        waiter_arm(w);
}

struct waiter *waiter_add(struct waiter_set *s, uint64_t txid, ev_tstamp deadline, waiter_cb cb,
                          void *arg)
{
    struct waiter *w = xcalloc(1, sizeof(*w));

    assert(cb);
    w->set = s;
    w->txid = txid;
    w->seq = s->seq++;
    w->deadline = deadline;
    w->cb = cb;
    w->arg = arg;
    ev_init(&w->timer, waiter_timer_cb);
    heap_push(s, w);
    if (txid <= s->applied) {
        /* Never call back from inside waiter_add: fire from the loop. */
        w->immediate = 1;
        ev_timer_set(&w->timer, 0, 0);
        ev_timer_start(s->loop, &w->timer);
    } else if (deadline > 0) {
        waiter_arm(w);
    }
    return w;
}

void waiter_cancel(struct waiter_set *s, struct waiter *w)
{
    assert(w && w->set == s);
    heap_remove(s, w);
    ev_timer_stop(s->loop, &w->timer);
    free(w);
}

size_t waiter_notify(struct waiter_set *s, uint64_t applied)
{
    size_t fired = 0;

    s->applied = applied;
    /* Re-read the top each time: callbacks may add, cancel or notify. */
    while (s->n > 0 && s->heap[0]->txid <= s->applied) {
        waiter_fire(s->heap[0], WAITER_APPLIED);
        fired++;
    }
    return fired;
}

/* ---- the set ----------------------------------------------------------------*/

struct waiter_set *waiter_set_new(struct ev_loop *loop, uint64_t applied)
{
    struct waiter_set *s = xcalloc(1, sizeof(*s));

    s->loop = loop;
    s->applied = applied;
    return s;
}

void waiter_set_free(struct waiter_set *s)
{
    if (!s)
        return;
    assert(s->depth == 0);
    while (s->n > 0)
        waiter_fire(s->heap[0], WAITER_CLOSED);
    free(s->heap);
    free(s);
}

uint64_t waiter_applied(const struct waiter_set *s)
{
    return s->applied;
}

size_t waiter_count(const struct waiter_set *s)
{
    return s->n;
}

uint64_t waiter_min_txid(const struct waiter_set *s)
{
    return s->n ? s->heap[0]->txid : 0;
}
