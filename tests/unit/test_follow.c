/* Unit tests for replica/follow: the replication link against a scripted
 * primary.
 *
 * The fake primary is a real h2server on 127.0.0.1:0 in the same loop as the
 * follow's h2client. It records each Subscribe and lets the test send
 * ReplicationEvents on the latest one. The pages it sends are real: a source
 * database is written with SQLite in WAL mode and checkpointed, and its file
 * is read back as page images, so transactions and snapshots are diffs of
 * real databases and the checksums are real pagesum values. The replica
 * (replica/apply) is then read back with SQLite. */
#include <ev.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/h2client.h"
#include "common/h2server.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/pagesum.h"
#include "proto/boomerang.pb-c.h"
#include "replica/apply.h"
#include "replica/follow.h"
#include "replica/waiter.h"
#include "sqlite3.h"
#include "tests/unit/harness.h"

#define ID1  "11111111111111111111111111111111"
#define ID2  "22222222222222222222222222222222"
#define PAGE 4096

static struct ev_loop *loop;
static char tmpdir[] = "/tmp/test_follow.XXXXXX";
static char src_path[256], replica_path[256];

/* ---- the loop ---------------------------------------------------------------*/

static int timed_out;

static void guard_cb(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)w;
    (void)revents;
    timed_out = 1;
}

/* Run the loop until cond(arg) holds or `seconds` pass. Returns cond's value. */
static int run_until(int (*cond)(const void *), const void *arg, double seconds)
{
    ev_timer guard;

    timed_out = 0;
    ev_timer_init(&guard, guard_cb, seconds, 0);
    ev_timer_start(loop, &guard);
    while (!cond(arg) && !timed_out)
        ev_run(loop, EVRUN_ONCE);
    ev_timer_stop(loop, &guard);
    return cond(arg);
}

static int never(const void *arg)
{
    (void)arg;
    return 0;
}

/* Let the loop run for a while (for "nothing happens" checks). */
static void run_for(double seconds)
{
    (void)run_until(never, NULL, seconds);
}

/* ---- the fake primary -------------------------------------------------------*/

static struct {
    struct h2server *srv;
    int port;
    struct h2call *call; /* the newest Subscribe, while open */
    int calls;           /* Subscribes received */
    int cancels;         /* calls the peer cancelled */
    Boomerang__V1__SubscribeRequest *req;
} fake;

static void fake_cancel_cb(void *arg, struct h2call *call)
{
    (void)arg;
    fake.cancels++;
    if (fake.call == call)
        fake.call = NULL;
    h2call_finish(call, GRPC_CANCELLED, NULL);
}

static void fake_call_cb(void *arg, struct h2call *call)
{
    const uint8_t *msg;
    size_t len;

    (void)arg;
    if (strcmp(h2call_path(call), "/boomerang.v1.Replication/Subscribe") != 0) {
        h2call_fail(call, GRPC_UNIMPLEMENTED, "not here");
        return;
    }
    /* An older call still open is ended by its cancel callback, when the
     * follow's RST_STREAM arrives (or by h2server_free). */
    msg = h2call_message(call, &len);
    if (fake.req)
        boomerang__v1__subscribe_request__free_unpacked(fake.req, NULL);
    fake.req = boomerang__v1__subscribe_request__unpack(NULL, len, msg);
    fake.call = call;
    fake.calls++;
    h2call_on_cancel(call, fake_cancel_cb, NULL);
}

static int fake_start(int port)
{
    struct h2server_config cfg = {0};
    char listen[64];

    snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
    cfg.listen = listen;
    cfg.on_call = fake_call_cb;
    if (h2server_start(loop, &cfg, &fake.srv) != 0)
        return -1;
    fake.port = h2server_port(fake.srv);
    return 0;
}

static void fake_stop(void)
{
    if (fake.call)
        h2call_finish(fake.call, GRPC_UNAVAILABLE, "going away");
    fake.call = NULL;
    h2server_free(fake.srv);
    fake.srv = NULL;
}

static void send_raw(const uint8_t *p, size_t len)
{
    if (fake.call)
        (void)h2call_send(fake.call, p, len);
}

static void send_event(const Boomerang__V1__ReplicationEvent *ev)
{
    size_t len = boomerang__v1__replication_event__get_packed_size(ev);
    uint8_t *buf = xmalloc(len + 1);

    (void)boomerang__v1__replication_event__pack(ev, buf);
    send_raw(buf, len);
    free(buf);
}

static void send_hello(const char *id, uint64_t epoch, uint64_t head)
{
    Boomerang__V1__ReplicationEvent ev = BOOMERANG__V1__REPLICATION_EVENT__INIT;
    Boomerang__V1__Hello h = BOOMERANG__V1__HELLO__INIT;

    h.database_id = (char *)id;
    h.epoch = epoch;
    h.head_txid = head;
    h.page_size = PAGE;
    h.now_us = now_us();
    ev.event_case = BOOMERANG__V1__REPLICATION_EVENT__EVENT_HELLO;
    ev.hello = &h;
    send_event(&ev);
}

static void send_heartbeat(uint64_t head)
{
    Boomerang__V1__ReplicationEvent ev = BOOMERANG__V1__REPLICATION_EVENT__INIT;
    Boomerang__V1__Heartbeat hb = BOOMERANG__V1__HEARTBEAT__INIT;

    hb.head_txid = head;
    hb.now_us = now_us();
    hb.head_time_us = now_us();
    ev.event_case = BOOMERANG__V1__REPLICATION_EVENT__EVENT_HEARTBEAT;
    ev.heartbeat = &hb;
    send_event(&ev);
}

/* ---- page images of the source database -----------------------------------*/

struct image {
    uint8_t *data;
    uint32_t npages;
};

static sqlite3 *src;

static void src_exec(const char *sql)
{
    char *err = NULL;

    if (sqlite3_exec(src, sql, NULL, NULL, &err) != SQLITE_OK) {
        fprintf(stderr, "source sql failed: %s: %s\n", sql, err);
        abort();
    }
}

/* Apply sql to the source, checkpoint it into the file, read the file. */
static struct image src_commit(const char *sql)
{
    struct image img = {0};
    char *data;
    size_t len;

    src_exec(sql);
    src_exec("PRAGMA wal_checkpoint(TRUNCATE)");
    if (util_read_file(src_path, 64u << 20, &data, &len) != 0 || len % PAGE)
        abort();
    img.data = (uint8_t *)data;
    img.npages = (uint32_t)(len / PAGE);
    return img;
}

static uint64_t image_sum(const struct image *img)
{
    struct pagesum ps;
    uint64_t v;

    pagesum_init(&ps, PAGE);
    pagesum_resize(&ps, img->npages);
    for (uint32_t p = 1; p <= img->npages; p++)
        pagesum_set(&ps, p, img->data + (size_t)(p - 1) * PAGE);
    v = pagesum_value(&ps);
    pagesum_free(&ps);
    return v;
}

/* Pages of `to` that differ from `from` (all of them when from is NULL). */
static uint32_t changed_pages(const struct image *from, const struct image *to, uint32_t *out)
{
    uint32_t n = 0;

    for (uint32_t p = 1; p <= to->npages; p++) {
        const uint8_t *page = to->data + (size_t)(p - 1) * PAGE;
        if (!from || p > from->npages ||
            memcmp(page, from->data + (size_t)(p - 1) * PAGE, PAGE) != 0)
            out[n++] = p;
    }
    return n;
}

/* Send a transaction (from -> to) or a snapshot (from NULL) as `chunks`
 * events; stop after `upto` events (for interrupted streams). */
struct send_opts {
    uint64_t txid;
    int chunks;
    int upto;         /* 0: all */
    uint64_t bad_sum; /* XORed into the checksum */
    const char *id;   /* snapshot only */
    uint64_t epoch;   /* snapshot only */
};

static void fill_pages(const struct image *to, const uint32_t *pg, uint32_t a, uint32_t b,
                       Boomerang__V1__Page *pages, Boomerang__V1__Page **ptrs)
{
    for (uint32_t i = a; i < b; i++) {
        Boomerang__V1__Page init = BOOMERANG__V1__PAGE__INIT;
        pages[i - a] = init;
        pages[i - a].pgno = pg[i];
        pages[i - a].data.data = to->data + (size_t)(pg[i] - 1) * PAGE;
        pages[i - a].data.len = PAGE;
        ptrs[i - a] = &pages[i - a];
    }
}

static void send_change(const struct image *from, const struct image *to, const struct send_opts *o)
{
    uint32_t *pg = xcalloc(to->npages + 1, sizeof(*pg));
    uint32_t n = changed_pages(from, to, pg);
    Boomerang__V1__Page *pages = xcalloc(n + 1, sizeof(*pages));
    Boomerang__V1__Page **ptrs = xcalloc(n + 1, sizeof(*ptrs));
    uint64_t sum = image_sum(to) ^ o->bad_sum;

    for (int c = 0; c < o->chunks && (!o->upto || c < o->upto); c++) {
        Boomerang__V1__ReplicationEvent ev = BOOMERANG__V1__REPLICATION_EVENT__INIT;
        Boomerang__V1__TxnChunk t = BOOMERANG__V1__TXN_CHUNK__INIT;
        Boomerang__V1__SnapshotChunk s = BOOMERANG__V1__SNAPSHOT_CHUNK__INIT;
        uint32_t a = n * (uint32_t)c / (uint32_t)o->chunks;
        uint32_t b = n * (uint32_t)(c + 1) / (uint32_t)o->chunks;
        int last = c == o->chunks - 1;

        fill_pages(to, pg, a, b, pages, ptrs);
        if (from) {
            t.txid = o->txid;
            t.db_pages = to->npages;
            t.page_size = PAGE;
            t.n_pages = b - a;
            t.pages = ptrs;
            t.last = last;
            t.checksum = last ? sum : 0;
            t.commit_time_us = last ? now_us() : 0;
            ev.event_case = BOOMERANG__V1__REPLICATION_EVENT__EVENT_TXN;
            ev.txn = &t;
        } else {
            s.txid = o->txid;
            s.db_pages = to->npages;
            s.page_size = PAGE;
            s.n_pages = b - a;
            s.pages = ptrs;
            s.first = c == 0;
            s.last = last;
            s.checksum = last ? sum : 0;
            s.database_id = (char *)(c == 0 ? o->id : "");
            s.epoch = c == 0 ? o->epoch : 0;
            s.reason = (char *)(c == 0 ? "test" : "");
            s.commit_time_us = last ? now_us() : 0;
            ev.event_case = BOOMERANG__V1__REPLICATION_EVENT__EVENT_SNAPSHOT;
            ev.snapshot = &s;
        }
        send_event(&ev);
    }
    free(ptrs);
    free(pages);
    free(pg);
}

/* ---- the replica ------------------------------------------------------------*/

static struct h2client *client;
static struct apply *apply;
static struct follow *F;

static int start_follow(double stall)
{
    struct follow_config fc = {0};

    fc.database = "main";
    fc.client = client;
    fc.apply = apply;
    fc.backoff_initial = 0.01;
    fc.backoff_max = 0.04;
    fc.stall_timeout = stall;
    return follow_start(loop, &fc, &F);
}

static int64_t replica_int(const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    int64_t v = -1;

    if (sqlite3_open_v2(replica_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        return -2;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW)
            v = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return v;
}

static int calls_reach(const void *arg)
{
    return fake.calls >= *(const int *)arg;
}

static int state_is(const void *arg)
{
    return F && follow_state(F) == *(const enum follow_state *)arg;
}

static int applied_is(const void *arg)
{
    return F && follow_applied(F) == *(const uint64_t *)arg;
}

static int wait_calls(int n)
{
    return run_until(calls_reach, &n, 5);
}

static int wait_state(enum follow_state s)
{
    return run_until(state_is, &s, 5);
}

static int wait_applied(uint64_t txid)
{
    return run_until(applied_is, &txid, 5);
}

static struct status_view {
    struct follow_status st;
} sv;

static const struct follow_status *status(void)
{
    follow_status(F, &sv.st);
    return &sv.st;
}

/* ---- waiters ----------------------------------------------------------------*/

static struct {
    int fired;
    enum waiter_status status;
    uint64_t applied;
} w1, w3, wclosed;

static void wait_cb(void *arg, enum waiter_status status, uint64_t txid, uint64_t applied)
{
    __typeof__(w1) *w = arg;

    (void)txid;
    w->fired++;
    w->status = status;
    w->applied = applied;
}

/* ---- the scenario -----------------------------------------------------------*/

static struct image img0, img1, img2, img3, img4, imgb, imgc;

TEST(test_new_replica_gets_a_snapshot)
{
    REQUIRE(start_follow(5) == 0);
    CHECK(follow_state(F) == FOLLOW_CONNECTING);
    REQUIRE(wait_calls(1));
    REQUIRE(fake.req);
    CHECK(strcmp(fake.req->database, "main") == 0);
    CHECK(strcmp(fake.req->database_id, "") == 0 && fake.req->applied_txid == 0);
    CHECK(status()->lag_ms == -1 && status()->since_caught_up_ms == -1);

    img1 = src_commit("CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT);"
                      "INSERT INTO t VALUES (1, 'one')");
    send_hello(ID1, 1, 1);
    REQUIRE(wait_state(FOLLOW_SNAPSHOT));
    (void)waiter_add(follow_waiters(F), 1, 0, wait_cb, &w1);
    (void)waiter_add(follow_waiters(F), 3, ev_now(loop) + 10, wait_cb, &w3);
    send_change(NULL, &img1, &(struct send_opts){.txid = 1, .chunks = 2, .id = ID1, .epoch = 1});
    REQUIRE(wait_applied(1));
    CHECK(follow_state(F) == FOLLOW_LIVE);
    CHECK(w1.fired == 1 && w1.status == WAITER_APPLIED && w3.fired == 0);
    CHECK(strcmp(status()->database_id, ID1) == 0 && status()->epoch == 1);
    CHECK(replica_int("SELECT count(*) FROM t") == 1);
}

TEST(test_transactions_apply_in_order)
{
    img2 = src_commit("INSERT INTO t VALUES (2, 'two'), (3, 'three')");
    img3 = src_commit("INSERT INTO t VALUES (4, hex(randomblob(20000)))"); /* overflow pages */
    send_change(&img1, &img2, &(struct send_opts){.txid = 2, .chunks = 1});
    send_change(&img2, &img3, &(struct send_opts){.txid = 3, .chunks = 3});
    REQUIRE(wait_applied(3));
    CHECK(w3.fired == 1 && w3.status == WAITER_APPLIED && w3.applied == 3);
    CHECK(replica_int("SELECT count(*) FROM t") == 4);
    CHECK(replica_int("SELECT length(v) FROM t WHERE k = 4") == 40000);
    CHECK(status()->txns == 2 && status()->snapshots == 1);
    CHECK(status()->lag_txids == 0 && status()->lag_ms == 0);
    CHECK(status()->since_caught_up_ms == 0);
    CHECK(status()->primary_head_txid == 3);

    send_heartbeat(5); /* the primary is ahead */
    REQUIRE(wait_state(FOLLOW_CATCHING_UP));
    CHECK(status()->lag_txids == 2 && status()->primary_head_txid == 5);
    CHECK(status()->lag_ms >= 0 && status()->since_caught_up_ms >= 0);
    send_heartbeat(3);
    REQUIRE(wait_state(FOLLOW_LIVE));
    CHECK(status()->lag_txids == 0);
}

TEST(test_status_json_and_metrics)
{
    struct buf b = {0};
    struct metrics *m = metrics_new();

    follow_status_json(F, &b);
    buf_append(&b, "", 1);
    CHECK(strlen((const char *)buf_head(&b)) == buf_avail(&b) - 1);
    CHECK(strncmp((const char *)buf_head(&b), "{\"state\":\"LIVE\",\"database_id\":\"" ID1 "\",",
                  50) == 0);
    CHECK(strstr((const char *)buf_head(&b), ",\"applied_txid\":3,"));
    CHECK(strstr((const char *)buf_head(&b), ",\"lag_ms\":0,"));
    CHECK(strstr((const char *)buf_head(&b), ",\"protocol_errors\":0}"));
    buf_reset(&b);
    follow_metrics(F, m);
    metrics_render(m, &b);
    buf_append(&b, "", 1);
    CHECK(strstr((const char *)buf_head(&b), "\nboomerang_replica_applied_txid 3\n"));
    CHECK(strstr((const char *)buf_head(&b), "\nboomerang_replica_txns_applied_total 2\n"));
    CHECK(strstr((const char *)buf_head(&b), "\nboomerang_replica_lag_seconds 0\n"));
    CHECK(strstr((const char *)buf_head(&b), "\nboomerang_replica_state{state=\"LIVE\"} 1\n"));
    CHECK(strstr((const char *)buf_head(&b), "\nboomerang_replica_state{state=\"SNAPSHOT\"} 0\n"));
    CHECK(strstr((const char *)buf_head(&b), "\nboomerang_replica_pages_applied_total "));
    metrics_free(m);
    buf_free(&b);
}

TEST(test_malformed_event_resubscribes)
{
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0x01, 0x02};

    send_raw(junk, sizeof(junk));
    REQUIRE(wait_calls(2));
    CHECK(status()->protocol_errors == 1 && status()->reconnects == 1);
    REQUIRE(fake.req);
    CHECK(strcmp(fake.req->database_id, ID1) == 0 && fake.req->epoch == 1);
    CHECK(fake.req->applied_txid == 3 && fake.req->applied_checksum == image_sum(&img3));
    send_hello(ID1, 1, 3);
    REQUIRE(wait_state(FOLLOW_LIVE));
    CHECK(status()->snapshots == 1); /* resumed, no snapshot */
}

TEST(test_out_of_sequence_events)
{
    img4 = src_commit("DELETE FROM t WHERE k = 4");
    /* A gap: txid 5 after 3. apply refuses it, the link drops. */
    send_change(&img3, &img4, &(struct send_opts){.txid = 5, .chunks = 1});
    REQUIRE(wait_calls(3));
    CHECK(status()->apply_errors == 1);
    CHECK(fake.req && fake.req->applied_txid == 3);
    /* A heartbeat before Hello. */
    send_heartbeat(3);
    REQUIRE(wait_calls(4));
    CHECK(status()->protocol_errors == 2);
    /* A transaction where a snapshot is due (the Hello names another database). */
    send_hello(ID2, 1, 9);
    REQUIRE(wait_state(FOLLOW_SNAPSHOT));
    send_change(&img3, &img4, &(struct send_opts){.txid = 4, .chunks = 1});
    REQUIRE(wait_calls(5));
    CHECK(status()->protocol_errors == 3);
    /* A second Hello. */
    send_hello(ID1, 1, 3);
    send_hello(ID1, 1, 3);
    REQUIRE(wait_calls(6));
    CHECK(status()->protocol_errors == 4);
    CHECK(replica_int("SELECT count(*) FROM t") == 4); /* nothing half-applied */
    CHECK(follow_applied(F) == 3);
}

TEST(test_checksum_mismatch_forces_a_snapshot)
{
    send_hello(ID1, 1, 4);
    REQUIRE(wait_state(FOLLOW_CATCHING_UP));
    send_change(&img3, &img4, &(struct send_opts){.txid = 4, .chunks = 2, .bad_sum = 1});
    REQUIRE(wait_calls(7));
    CHECK(status()->checksum_mismatches == 1);
    CHECK(follow_applied(F) == 3);
    CHECK(replica_int("SELECT count(*) FROM t") == 4); /* the bad transaction left no trace */
    REQUIRE(fake.req);
    CHECK(strcmp(fake.req->database_id, "") == 0 && fake.req->applied_txid == 0);
    send_hello(ID1, 1, 4); /* same history, but we asked for a snapshot */
    REQUIRE(wait_state(FOLLOW_SNAPSHOT));
    send_change(NULL, &img4, &(struct send_opts){.txid = 4, .chunks = 3, .id = ID1, .epoch = 1});
    REQUIRE(wait_applied(4));
    CHECK(replica_int("SELECT count(*) FROM t") == 3);
    CHECK(status()->snapshots == 2 && follow_state(F) == FOLLOW_LIVE);
    /* The next Subscribe presents the real position again. */
    h2call_finish(fake.call, GRPC_UNAVAILABLE, "restarting");
    fake.call = NULL;
    REQUIRE(wait_calls(8));
    CHECK(fake.req && strcmp(fake.req->database_id, ID1) == 0 && fake.req->applied_txid == 4);
    CHECK(fake.req->applied_checksum == image_sum(&img4));
}

TEST(test_interrupted_snapshot_changes_nothing)
{
    /* The primary was replaced by another database. */
    src_exec("DROP TABLE t");
    imgb = src_commit("CREATE TABLE u(x); INSERT INTO u VALUES (1), (2), (3), (4), (5);"
                      "CREATE INDEX ux ON u(x)");
    send_hello(ID2, 1, 7);
    REQUIRE(wait_state(FOLLOW_SNAPSHOT));
    send_change(NULL, &imgb,
                &(struct send_opts){.txid = 7, .chunks = 3, .upto = 2, .id = ID2, .epoch = 1});
    run_for(0.05);
    h2call_finish(fake.call, GRPC_UNAVAILABLE, "crashed mid-snapshot");
    fake.call = NULL;
    REQUIRE(wait_calls(9));
    CHECK(fake.req && strcmp(fake.req->database_id, ID1) == 0 && fake.req->applied_txid == 4);
    CHECK(replica_int("SELECT count(*) FROM t") == 3);
    send_hello(ID2, 1, 7);
    send_change(NULL, &imgb, &(struct send_opts){.txid = 7, .chunks = 3, .id = ID2, .epoch = 1});
    REQUIRE(wait_applied(7));
    CHECK(strcmp(status()->database_id, ID2) == 0);
    CHECK(replica_int("SELECT count(*) FROM u") == 5);
    CHECK(replica_int("SELECT count(*) FROM sqlite_schema WHERE name = 't'") == 0);
    CHECK(waiter_applied(follow_waiters(F)) == 7);
}

static int reconnects_reach(const void *arg)
{
    return F && status()->reconnects >= *(const uint64_t *)arg;
}

TEST(test_primary_down_backs_off_and_resumes)
{
    uint64_t before = status()->reconnects, want;
    int port = fake.port, calls = fake.calls;

    fake_stop();
    REQUIRE(wait_state(FOLLOW_DISCONNECTED));
    want = before + 4;
    REQUIRE(run_until(reconnects_reach, &want, 5)); /* keeps retrying */
    CHECK(fake.calls == calls);
    REQUIRE(fake_start(port) == 0);
    REQUIRE(wait_calls(calls + 1));
    CHECK(fake.req && strcmp(fake.req->database_id, ID2) == 0 && fake.req->applied_txid == 7);
    send_hello(ID2, 1, 7);
    REQUIRE(wait_state(FOLLOW_LIVE));
    CHECK(status()->snapshots == 3);
}

TEST(test_stall_drops_the_stream)
{
    int calls;

    follow_free(F); /* its stream is cancelled */
    F = NULL;
    run_for(0.05);
    CHECK(fake.call == NULL && fake.cancels >= 1);
    calls = fake.calls;
    REQUIRE(start_follow(0.2) == 0);
    REQUIRE(wait_calls(calls + 1));
    send_hello(ID2, 1, 7);
    REQUIRE(wait_state(FOLLOW_LIVE));
    send_heartbeat(7);
    run_for(0.1); /* a heartbeat keeps it alive */
    CHECK(fake.calls == calls + 1);
    REQUIRE(wait_calls(calls + 2)); /* then silence */
    CHECK(status()->protocol_errors == 0 && status()->reconnects == 1);
}

TEST(test_restart_resumes_from_the_position)
{
    struct apply_config ac = {.path = replica_path};
    int calls;

    (void)waiter_add(follow_waiters(F), 100, 0, wait_cb, &wclosed);
    follow_free(F);
    F = NULL;
    CHECK(wclosed.fired == 1 && wclosed.status == WAITER_CLOSED);
    apply_close(apply);
    REQUIRE(apply_open(&ac, &apply) == 0);
    calls = fake.calls;
    REQUIRE(start_follow(5) == 0);
    REQUIRE(wait_calls(calls + 1));
    REQUIRE(fake.req);
    CHECK(strcmp(fake.req->database_id, ID2) == 0 && fake.req->epoch == 1);
    CHECK(fake.req->applied_txid == 7 && fake.req->applied_checksum == image_sum(&imgb));
    CHECK(follow_applied(F) == 7);
}

static void send_snapshot_marker(int first, int last, uint64_t txid)
{
    Boomerang__V1__ReplicationEvent ev = BOOMERANG__V1__REPLICATION_EVENT__INIT;
    Boomerang__V1__SnapshotChunk s = BOOMERANG__V1__SNAPSHOT_CHUNK__INIT;

    s.txid = txid;
    s.db_pages = imgc.npages;
    s.page_size = PAGE;
    s.first = first;
    s.last = last;
    s.database_id = ID2;
    s.epoch = 1;
    ev.event_case = BOOMERANG__V1__REPLICATION_EVENT__EVENT_SNAPSHOT;
    ev.snapshot = &s;
    send_event(&ev);
}

static int protocol_errors_reach(const void *arg)
{
    return F && status()->protocol_errors >= *(const uint64_t *)arg;
}

/* Start a stream at txid 7 (the follow is CONNECTING) and send one bad
 * sequence; expect one more protocol error and a new Subscribe. */
static int bad_sequence(int kind)
{
    uint64_t want = status()->protocol_errors + 1;
    int calls = fake.calls;

    send_hello(ID2, 1, 8);
    switch (kind) {
    case 0: /* a chunk of another txid inside a transaction */
        send_change(&imgb, &imgc, &(struct send_opts){.txid = 8, .chunks = 2, .upto = 1});
        send_change(&imgb, &imgc, &(struct send_opts){.txid = 9, .chunks = 1});
        break;
    case 1: /* a snapshot inside a transaction */
        send_change(&imgb, &imgc, &(struct send_opts){.txid = 8, .chunks = 2, .upto = 1});
        send_snapshot_marker(1, 0, 8);
        break;
    case 2: /* a snapshot chunk with no first */
        send_snapshot_marker(0, 1, 8);
        break;
    case 3: /* two first chunks */
        send_snapshot_marker(1, 0, 8);
        send_snapshot_marker(1, 0, 8);
        break;
    default: /* a continuation chunk of another snapshot */
        send_snapshot_marker(1, 0, 8);
        send_snapshot_marker(0, 0, 9);
        break;
    }
    return run_until(protocol_errors_reach, &want, 5) && wait_calls(calls + 1);
}

TEST(test_chunk_sequence_errors)
{
    imgc = src_commit("INSERT INTO u VALUES (6)");
    for (int kind = 0; kind < 5; kind++) {
        CHECK(bad_sequence(kind));
        CHECK(follow_applied(F) == 7);
    }
    CHECK(replica_int("SELECT count(*) FROM u") == 5);
    /* An event of a type this build does not know is skipped. */
    send_hello(ID2, 1, 8);
    send_raw((const uint8_t *)"", 0);
    send_change(&imgb, &imgc, &(struct send_opts){.txid = 8, .chunks = 2});
    REQUIRE(wait_applied(8));
    CHECK(status()->protocol_errors == 5 && status()->events >= 4);
    CHECK(replica_int("SELECT count(*) FROM u") == 6);
}

TEST(test_bad_config)
{
    struct follow_config fc = {0};
    struct follow *f = NULL;

    CHECK(follow_start(loop, &fc, &f) == FOLLOW_ERR_CONFIG);
    fc.client = client;
    fc.apply = apply;
    fc.stall_timeout = -1;
    CHECK(follow_start(loop, &fc, &f) == FOLLOW_ERR_CONFIG);
    CHECK(f == NULL);
    CHECK(strcmp(follow_state_name(FOLLOW_CATCHING_UP), "CATCHING_UP") == 0);
}

/* ---- setup ------------------------------------------------------------------*/

static int setup(void)
{
    struct h2client_config hc = {0};
    struct apply_config ac = {0};
    char url[64];

    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(src_path, sizeof(src_path), "%s/src.db", tmpdir);
    snprintf(replica_path, sizeof(replica_path), "%s/replica.db", tmpdir);
    if (sqlite3_open(src_path, &src) != SQLITE_OK)
        return -1;
    img0 = src_commit("PRAGMA page_size = 4096; PRAGMA journal_mode = WAL");
    if (fake_start(0) != 0)
        return -1;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", fake.port);
    hc.url = url;
    hc.backoff_initial = 0.01;
    hc.backoff_max = 0.02;
    if (h2client_new(loop, &hc, &client) != 0)
        return -1;
    ac.path = replica_path;
    return apply_open(&ac, &apply);
}

static void teardown(void)
{
    char cmd[300];

    follow_free(F);
    h2client_free(client);
    if (apply)
        apply_close(apply);
    fake_stop();
    if (fake.req)
        boomerang__v1__subscribe_request__free_unpacked(fake.req, NULL);
    sqlite3_close(src);
    free(img0.data);
    free(img1.data);
    free(img2.data);
    free(img3.data);
    free(img4.data);
    free(imgb.data);
    free(imgc.data);
    if (getenv("TEST_KEEP"))
        return;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", tmpdir);
}

int main(void)
{
    loop = ev_loop_new(EVFLAG_AUTO);
    log_level = getenv("TEST_LOG") ? LOGL_DEBUG : LOGL_ERROR;
    if (setup() != 0) {
        fprintf(stderr, "setup failed\n");
        return 1;
    }
    RUN(test_new_replica_gets_a_snapshot);
    RUN(test_transactions_apply_in_order);
    RUN(test_status_json_and_metrics);
    RUN(test_malformed_event_resubscribes);
    RUN(test_out_of_sequence_events);
    RUN(test_checksum_mismatch_forces_a_snapshot);
    RUN(test_interrupted_snapshot_changes_nothing);
    RUN(test_primary_down_backs_off_and_resumes);
    RUN(test_stall_drops_the_stream);
    RUN(test_restart_resumes_from_the_position);
    RUN(test_chunk_sequence_errors);
    RUN(test_bad_config);
    teardown();
    ev_loop_destroy(loop);
    return HARNESS_END();
}
