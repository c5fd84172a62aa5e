/* Unit tests for replica/waiter: ordering, timeouts, cancel, re-entrancy. */
#include <ev.h>
#include <stdint.h>
#include <stdlib.h>

#include "replica/waiter.h"
#include "tests/unit/harness.h"

static struct ev_loop *loop;

/* Every callback appends what it saw here. */
struct record {
    enum waiter_status status;
    uint64_t txid, applied;
    int tag;
};

static struct record seen[20000];
static size_t nseen;

static void reset(void)
{
    nseen = 0;
}

struct tagged {
    int tag;
};

static void record_cb(void *arg, enum waiter_status status, uint64_t txid, uint64_t applied)
{
    const struct tagged *t = arg;

    if (nseen < ARRAY_LEN(seen))
        seen[nseen++] = (struct record){status, txid, applied, t ? t->tag : -1};
}

/* Run the loop once without blocking (fires due timers). */
static void spin(void)
{
    ev_run(loop, EVRUN_NOWAIT);
}

static void stop_cb(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(l, EVBREAK_ONE);
}

/* Run the loop for about `seconds`. */
static void run_for(double seconds)
{
    ev_timer stop;

    ev_timer_init(&stop, stop_cb, seconds, 0);
    ev_timer_start(loop, &stop);
    ev_run(loop, 0);
    ev_timer_stop(loop, &stop);
}

TEST(test_notify_fires_in_txid_order)
{
    struct waiter_set *s = waiter_set_new(loop, 0);
    static struct tagged tags[6] = {{0}, {1}, {2}, {3}, {4}, {5}};
    uint64_t txids[6] = {5, 3, 9, 3, 1, 7};

    reset();
    for (int i = 0; i < 6; i++)
        (void)waiter_add(s, txids[i], 0, record_cb, &tags[i]);
    CHECK(waiter_count(s) == 6);
    CHECK(waiter_min_txid(s) == 1);
    CHECK(waiter_notify(s, 4) == 3);
    REQUIRE(nseen == 3);
    CHECK(seen[0].txid == 1 && seen[0].tag == 4);
    CHECK(seen[1].txid == 3 && seen[1].tag == 1); /* equal txids: arrival order */
    CHECK(seen[2].txid == 3 && seen[2].tag == 3);
    for (size_t i = 0; i < nseen; i++)
        CHECK(seen[i].status == WAITER_APPLIED && seen[i].applied == 4);
    CHECK(waiter_applied(s) == 4);
    CHECK(waiter_min_txid(s) == 5);
    CHECK(waiter_notify(s, 4) == 0);
    CHECK(waiter_notify(s, 100) == 3);
    REQUIRE(nseen == 6);
    CHECK(seen[3].txid == 5 && seen[4].txid == 7 && seen[5].txid == 9);
    CHECK(waiter_count(s) == 0 && waiter_min_txid(s) == 0);
    waiter_set_free(s);
}

TEST(test_already_applied_fires_from_loop)
{
    struct waiter_set *s = waiter_set_new(loop, 10);

    reset();
    (void)waiter_add(s, 10, 0, record_cb, NULL);
    (void)waiter_add(s, 3, ev_now(loop) + 5, record_cb, NULL);
    CHECK(nseen == 0); /* never from inside waiter_add */
    spin();
    REQUIRE(nseen == 2);
    CHECK(seen[0].status == WAITER_APPLIED && seen[1].status == WAITER_APPLIED);
    CHECK(waiter_count(s) == 0);
    waiter_set_free(s);
}

TEST(test_timeouts)
{
    struct waiter_set *s = waiter_set_new(loop, 0);
    static struct tagged a = {1}, b = {2}, c = {3}, d = {4};
    ev_tstamp t0;

    ev_now_update(loop);
    t0 = ev_now(loop);
    reset();
    (void)waiter_add(s, 5, t0 + 0.02, record_cb, &a);
    (void)waiter_add(s, 6, t0 + 10, record_cb, &b);
    (void)waiter_add(s, 7, 0, record_cb, &c);      /* no deadline */
    (void)waiter_add(s, 8, t0 - 1, record_cb, &d); /* already past */
    CHECK(nseen == 0);
    run_for(0.1);
    REQUIRE(nseen == 2);
    CHECK(seen[0].tag == 4 && seen[0].status == WAITER_TIMEOUT && seen[0].applied == 0);
    CHECK(seen[1].tag == 1 && seen[1].status == WAITER_TIMEOUT);
    CHECK(ev_now(loop) - t0 >= 0.02);
    CHECK(waiter_count(s) == 2);
    CHECK(waiter_notify(s, 7) == 2);
    REQUIRE(nseen == 4);
    CHECK(seen[2].tag == 2 && seen[2].status == WAITER_APPLIED);
    CHECK(seen[3].tag == 3 && seen[3].status == WAITER_APPLIED);
    run_for(0.03); /* no stale timer fires for the applied waiters */
    CHECK(nseen == 4);
    waiter_set_free(s);
}

TEST(test_cancel)
{
    struct waiter_set *s = waiter_set_new(loop, 0);
    struct waiter *w[8];
    ev_tstamp soon = ev_now(loop) + 0.01;

    reset();
    for (uint64_t i = 0; i < 8; i++)
        w[i] = waiter_add(s, 10 - i, soon, record_cb, NULL);
    waiter_cancel(s, w[7]); /* the heap's top */
    waiter_cancel(s, w[2]); /* the middle */
    waiter_cancel(s, w[0]); /* a leaf */
    CHECK(waiter_count(s) == 5);
    CHECK(waiter_min_txid(s) == 4);
    CHECK(waiter_notify(s, 6) == 3); /* 4, 5, 6 */
    REQUIRE(nseen == 3);
    CHECK(seen[0].txid == 4 && seen[1].txid == 5 && seen[2].txid == 6);
    run_for(0.05);
    REQUIRE(nseen == 5); /* 7 and 9 time out; the cancelled ones never run */
    CHECK(seen[3].status == WAITER_TIMEOUT && seen[4].status == WAITER_TIMEOUT);
    CHECK(seen[3].txid + seen[4].txid == 16 && (seen[3].txid == 7 || seen[3].txid == 9));
    /* A waiter that is already applied can be cancelled before its 0 timer. */
    w[0] = waiter_add(s, 1, 0, record_cb, NULL);
    waiter_cancel(s, w[0]);
    spin();
    CHECK(nseen == 5);
    waiter_set_free(s);
}

/* ---- re-entrancy ------------------------------------------------------------*/

struct reentry {
    struct waiter_set *s;
    struct waiter *victim; /* cancelled by the first callback */
    int adds;              /* waiters the first callback adds */
    int nested_notify;
};

static struct reentry re;

static void reentrant_cb(void *arg, enum waiter_status status, uint64_t txid, uint64_t applied)
{
    record_cb(arg, status, txid, applied);
    if (re.victim) {
        waiter_cancel(re.s, re.victim);
        re.victim = NULL;
    }
    if (re.adds > 0) {
        re.adds--;
        (void)waiter_add(re.s, applied - 1, 0, record_cb, NULL); /* due now */
        (void)waiter_add(re.s, applied + 5, 0, record_cb, NULL); /* later */
    }
    if (re.nested_notify) {
        re.nested_notify = 0;
        (void)waiter_notify(re.s, applied + 1);
    }
}

TEST(test_reentrant_add_and_cancel)
{
    struct waiter_set *s = waiter_set_new(loop, 0);

    reset();
    re = (struct reentry){.s = s, .adds = 1};
    (void)waiter_add(s, 1, 0, reentrant_cb, NULL);
    re.victim = waiter_add(s, 2, 0, record_cb, NULL); /* due in the same notify */
    (void)waiter_add(s, 3, 0, record_cb, NULL);
    CHECK(waiter_notify(s, 3) == 3); /* 1, the added 2, 3; the victim never */
    REQUIRE(nseen == 3);
    CHECK(seen[0].txid == 1 && seen[1].txid == 2 && seen[2].txid == 3);
    CHECK(waiter_count(s) == 1 && waiter_min_txid(s) == 8);
    spin(); /* the added waiter's 0 timer must not fire it a second time */
    CHECK(nseen == 3);

    /* A callback that notifies again. */
    reset();
    re = (struct reentry){.s = s, .nested_notify = 1};
    (void)waiter_add(s, 4, 0, reentrant_cb, NULL);
    (void)waiter_add(s, 5, 0, record_cb, NULL);
    CHECK(waiter_notify(s, 4) == 1);
    REQUIRE(nseen == 2);
    CHECK(seen[0].txid == 4 && seen[1].txid == 5 && seen[1].applied == 5);
    CHECK(waiter_applied(s) == 5);
    waiter_set_free(s);
}

static void adding_close_cb(void *arg, enum waiter_status status, uint64_t txid, uint64_t applied)
{
    record_cb(arg, status, txid, applied);
    if (re.adds > 0) {
        re.adds--;
        (void)waiter_add(re.s, 1, 0, record_cb, NULL);
    }
}

TEST(test_free_closes_the_rest)
{
    struct waiter_set *s = waiter_set_new(loop, 0);

    reset();
    re = (struct reentry){.s = s, .adds = 1};
    (void)waiter_add(s, 9, ev_now(loop) + 100, record_cb, NULL);
    (void)waiter_add(s, 4, 0, adding_close_cb, NULL);
    waiter_set_free(s);
    REQUIRE(nseen == 3);
    CHECK(seen[0].txid == 4 && seen[0].status == WAITER_CLOSED);
    CHECK(seen[1].txid == 1 && seen[1].status == WAITER_CLOSED); /* added while closing */
    CHECK(seen[2].txid == 9 && seen[2].status == WAITER_CLOSED);
    spin(); /* every timer was stopped */
    CHECK(nseen == 3);
    waiter_set_free(NULL);
}

TEST(test_applied_goes_down)
{
    struct waiter_set *s = waiter_set_new(loop, 50);
    static struct tagged t = {7};

    reset();
    (void)waiter_add(s, 40, ev_now(loop) + 0.02, record_cb, &t); /* applied: 0 timer */
    CHECK(waiter_notify(s, 10) == 0); /* a snapshot of another history, at 10 */
    spin();
    CHECK(nseen == 0); /* no longer applied: waits for its deadline */
    run_for(0.05);
    REQUIRE(nseen == 1);
    CHECK(seen[0].status == WAITER_TIMEOUT && seen[0].tag == 7 && seen[0].applied == 10);

    reset();
    CHECK(waiter_notify(s, 50) == 0);
    (void)waiter_add(s, 45, 0, record_cb, NULL);
    CHECK(waiter_notify(s, 10) == 0);
    spin();
    CHECK(nseen == 0 && waiter_count(s) == 1);
    CHECK(waiter_notify(s, 45) == 1);
    CHECK(nseen == 1 && seen[0].status == WAITER_APPLIED);
    waiter_set_free(s);
}

/* ---- many -------------------------------------------------------------------*/

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

TEST(test_many_waiters)
{
    enum { N = 10000 };
    struct waiter_set *s = waiter_set_new(loop, 0);
    static struct waiter *w[N];
    static uint64_t txid[N];
    size_t cancelled = 0, fired = 0;

    reset();
    for (size_t i = 0; i < N; i++) {
        txid[i] = 1 + rnd() % 5000;
        w[i] = waiter_add(s, txid[i], 0, record_cb, NULL);
    }
    for (size_t i = 0; i < N; i += 7) {
        waiter_cancel(s, w[i]);
        cancelled++;
    }
    CHECK(waiter_count(s) == N - cancelled);
    for (uint64_t applied = 0; applied <= 5000; applied += 1 + rnd() % 97)
        fired += waiter_notify(s, applied);
    fired += waiter_notify(s, 5000);
    CHECK(fired == N - cancelled);
    REQUIRE(nseen == N - cancelled);
    for (size_t i = 1; i < nseen; i++)
        CHECK(seen[i - 1].txid <= seen[i].txid);
    for (size_t i = 0; i < nseen; i++)
        CHECK(seen[i].txid <= seen[i].applied);
    CHECK(waiter_count(s) == 0);
    waiter_set_free(s);
}

TEST(test_many_timeouts)
{
    enum { N = 2000 };
    struct waiter_set *s = waiter_set_new(loop, 0);
    ev_tstamp t0;
    size_t timeouts = 0, applied = 0;

    ev_now_update(loop);
    t0 = ev_now(loop);
    reset();
    for (size_t i = 0; i < N; i++)
        (void)waiter_add(s, 1 + i, t0 + 0.001 * (double)(rnd() % 30), record_cb, NULL);
    (void)waiter_notify(s, N / 2);
    run_for(0.08);
    REQUIRE(nseen == N);
    for (size_t i = 0; i < nseen; i++) {
        if (seen[i].status == WAITER_TIMEOUT) {
            timeouts++;
            CHECK(seen[i].txid > N / 2);
        } else {
            applied++;
        }
    }
    CHECK(applied == N / 2 && timeouts == N / 2);
    waiter_set_free(s);
}

int main(void)
{
    loop = ev_loop_new(EVFLAG_AUTO);
    RUN(test_notify_fires_in_txid_order);
    RUN(test_already_applied_fires_from_loop);
    RUN(test_timeouts);
    RUN(test_cancel);
    RUN(test_reentrant_add_and_cancel);
    RUN(test_free_closes_the_rest);
    RUN(test_applied_goes_down);
    RUN(test_many_waiters);
    RUN(test_many_timeouts);
    ev_loop_destroy(loop);
    return HARNESS_END();
}
