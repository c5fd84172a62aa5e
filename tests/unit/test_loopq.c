/* Unit tests for common/loopq: cross-thread posts arrive all, in per-thread
 * order, on the loop's thread; re-posting from a function; free runs what is
 * left; the queue does not keep the loop alive. */
#include <ev.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "common/loopq.h"
#include "tests/unit/harness.h"

#define NTHREADS   4
#define PER_THREAD 10000

struct item {
    int thread;
    int seq;
};

static struct {
    pthread_t loop_thread;
    int next_seq[NTHREADS]; /* the seq expected next from each thread */
    int out_of_order;
    int wrong_thread;
    int received;
} st;

static struct ev_loop *loop;
static struct loopq *q;

static void item_fn(void *arg)
{
    struct item *it = arg;

    if (!pthread_equal(pthread_self(), st.loop_thread))
        st.wrong_thread++;
    if (it->seq != st.next_seq[it->thread])
        st.out_of_order++;
    st.next_seq[it->thread] = it->seq + 1;
    st.received++;
    free(it);
    if (st.received == NTHREADS * PER_THREAD)
        ev_break(loop, EVBREAK_ALL);
}

static void *poster(void *arg)
{
    int t = (int)(intptr_t)arg;

    for (int i = 0; i < PER_THREAD; i++) {
        struct item *it = malloc(sizeof(*it));

        if (!it)
            abort();
        it->thread = t;
        it->seq = i;
        loopq_post(q, item_fn, it);
    }
    return NULL;
}

/* Keeps the loop running while the posters work (the queue alone does not). */
static void guard_cb(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(l, EVBREAK_ALL);
}

TEST(threads_all_in_order)
{
    pthread_t th[NTHREADS];
    ev_timer guard;

    loop = ev_loop_new(EVFLAG_AUTO);
    REQUIRE(loop);
    q = loopq_new(loop);
    memset(&st, 0, sizeof(st));
    st.loop_thread = pthread_self();
    ev_timer_init(&guard, guard_cb, 30.0, 0.);
    ev_timer_start(loop, &guard);
    for (int t = 0; t < NTHREADS; t++)
        REQUIRE(pthread_create(&th[t], NULL, poster, (void *)(intptr_t)t) == 0);
    ev_run(loop, 0);
    for (int t = 0; t < NTHREADS; t++)
        REQUIRE(pthread_join(th[t], NULL) == 0);
    CHECK(st.received == NTHREADS * PER_THREAD);
    CHECK(st.out_of_order == 0);
    CHECK(st.wrong_thread == 0);
    for (int t = 0; t < NTHREADS; t++)
        CHECK(st.next_seq[t] == PER_THREAD);
    ev_timer_stop(loop, &guard);
    loopq_free(q);
    q = NULL;
    ev_loop_destroy(loop);
}

/* ---- re-entrancy and free ------------------------------------------------------ */

static int trace[16];
static int ntrace;

static void note_fn(void *arg)
{
    if (ntrace < (int)ARRAY_LEN(trace))
        trace[ntrace++] = (int)(intptr_t)arg;
}

/* Posts 3 to the queue from inside a function. */
static void repost_fn(void *arg)
{
    note_fn(arg);
    loopq_post(q, note_fn, (void *)(intptr_t)3);
}

TEST(post_from_inside_fn)
{
    loop = ev_loop_new(EVFLAG_AUTO);
    REQUIRE(loop);
    q = loopq_new(loop);
    ntrace = 0;
    loopq_post(q, repost_fn, (void *)(intptr_t)1);
    loopq_post(q, note_fn, (void *)(intptr_t)2);
    /* The queue does not keep the loop alive: ev_run returns at once... */
    ev_run(loop, EVRUN_NOWAIT);
    /* ...but handles what the async delivered, and the re-post comes after. */
    for (int i = 0; i < 3 && ntrace < 3; i++)
        ev_run(loop, EVRUN_NOWAIT);
    CHECK(ntrace == 3);
    CHECK(trace[0] == 1 && trace[1] == 2 && trace[2] == 3);
    loopq_free(q);
    q = NULL;
    ev_loop_destroy(loop);
}

TEST(drain_runs_inline)
{
    loop = ev_loop_new(EVFLAG_AUTO);
    REQUIRE(loop);
    q = loopq_new(loop);
    ntrace = 0;
    loopq_post(q, note_fn, (void *)(intptr_t)7);
    loopq_drain(q);
    CHECK(ntrace == 1 && trace[0] == 7);
    loopq_drain(q); /* empty: nothing */
    CHECK(ntrace == 1);
    loopq_free(q);
    q = NULL;
    ev_loop_destroy(loop);
}

TEST(free_runs_remaining)
{
    loop = ev_loop_new(EVFLAG_AUTO);
    REQUIRE(loop);
    q = loopq_new(loop);
    ntrace = 0;
    loopq_post(q, note_fn, (void *)(intptr_t)1);
    loopq_post(q, repost_fn, (void *)(intptr_t)2); /* posts 3 during free */
    loopq_post(q, note_fn, (void *)(intptr_t)4);
    loopq_free(q);
    q = NULL;
    CHECK(ntrace == 4);
    CHECK(trace[0] == 1 && trace[1] == 2 && trace[2] == 4 && trace[3] == 3);
    /* The loop has no active watcher left: ev_run returns. */
    ev_run(loop, 0);
    loopq_free(NULL);
    ev_loop_destroy(loop);
}

/* An empty loop with only a queue returns from ev_run at once. */
TEST(does_not_keep_loop_alive)
{
    loop = ev_loop_new(EVFLAG_AUTO);
    REQUIRE(loop);
    q = loopq_new(loop);
    CHECK(ev_run(loop, 0) == 0);
    loopq_free(q);
    q = NULL;
    ev_loop_destroy(loop);
}

int main(void)
{
    RUN(threads_all_in_order);
    RUN(post_from_inside_fn);
    RUN(drain_runs_inline);
    RUN(free_runs_remaining);
    RUN(does_not_keep_loop_alive);
    return HARNESS_END();
}
