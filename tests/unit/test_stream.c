/* Tests for primary/stream.c: a real writer on a temporary database, the
 * stream module, an h2server routing Subscribe to it, and h2client
 * subscribers, all on one libev loop in this thread. The end-to-end behaviour
 * (reasons, resume, heartbeats, ordering, memory) is covered by
 * tests/integration/stream.test.js; this file covers what is awkward to reach
 * from outside: refusals, a snapshot that cannot open the database, a drain
 * while the snapshot job is still in the writer, a cancel in the middle of a
 * snapshot (its connection and read transaction are released), a replica that
 * stops reading a snapshot, an unreadable log, and the stats and
 * per-subscriber iterator. */
#include <arpa/inet.h>
#include <ev.h>
#include <fcntl.h>
#include <nghttp2/nghttp2.h>
#include <netinet/in.h>
#include <sqlite3.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/h2client.h"
#include "common/h2server.h"
#include "common/log.h"
#include "primary/stream.h"
#include "primary/writer.h"
#include "proto/boomerang.pb-c.h"
#include "tests/unit/harness.h"

#define PATH_SUBSCRIBE "/boomerang.v1.Replication/Subscribe"
#define TIMEOUT_S      20.0

static char tmpdir[] = "/tmp/test_stream.XXXXXX";
static struct ev_loop *loop;

/* ---- fixture: writer + stream + server + client ------------------------------ */

struct fixture {
    char db[256];
    struct writer *w;
    struct stream *st;
    struct h2server *srv;
    struct h2client *cl;
    unsigned jobs_done;
    int drain_on_subscribe; /* stream_drain right after stream_subscribe */
    int64_t stall_ms;       /* stream_config.snapshot_stall_ms for the next start */
};

static struct fixture fx;

static void on_call(void *arg, struct h2call *call)
{
    (void)arg;
    if (strcmp(h2call_path(call), PATH_SUBSCRIBE) != 0) {
        h2call_fail(call, GRPC_UNIMPLEMENTED, "unknown method");
        return;
    }
    stream_subscribe(fx.st, call);
    if (fx.drain_on_subscribe)
        stream_drain(fx.st);
}

static void on_job_done(void *arg, struct writer_job *job)
{
    (void)arg;
    if (job->kind == WRITER_JOB_SNAPSHOT) {
        stream_job_done(fx.st, job);
        return;
    }
    stream_publish(fx.st);
    fx.jobs_done++;
    writer_job_free(job);
}

/* Run the loop until pred() holds or the timeout passes. */
static int run_until(int (*pred)(void *), void *arg)
{
    int64_t end = mono_us() + (int64_t)(TIMEOUT_S * 1e6);

    while (!pred(arg) && mono_us() < end)
        ev_run(loop, EVRUN_ONCE);
    return pred(arg);
}

static int client_connected(void *arg)
{
    (void)arg;
    return h2client_state(fx.cl) == H2CLIENT_CONNECTED;
}

/* Start everything on a fresh database; snap_path overrides the file that
 * snapshots open (to make that fail). */
static int fixture_start(const char *name, const char *snap_path)
{
    struct writer_config wc = {.group_commit = 1,
                               .max_batch = 64,
                               .tx_timeout_ms = 5000,
                               .statement_timeout_ms = 10000,
                               .max_result_bytes = 16 << 20};
    struct h2server_config hc = {.listen = "127.0.0.1:0", .on_call = on_call};
    char url[64];

    int64_t stall_ms = fx.stall_ms;

    memset(&fx, 0, sizeof(fx));
    snprintf(fx.db, sizeof(fx.db), "%s/%s.db", tmpdir, name);
    wc.db_path = fx.db;
    if (writer_start(loop, &wc, on_job_done, NULL, &fx.w) != 0)
        return -1;
    fx.st = stream_new(loop, &(struct stream_config){.database = "test",
                                                     .db_path = snap_path ? snap_path : fx.db,
                                                     .writer = fx.w,
                                                     .snapshot_stall_ms = stall_ms});
    if (h2server_start(loop, &hc, &fx.srv) != 0)
        return -1;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", h2server_port(fx.srv));
    if (h2client_new(loop, &(struct h2client_config){.url = url, .max_message = 64 << 20},
                     &fx.cl) != 0)
        return -1;
    return run_until(client_connected, NULL) ? 0 : -1;
}

static void fixture_stop(void)
{
    h2client_free(fx.cl);
    stream_drain(fx.st);
    writer_stop(fx.w);
    h2server_free(fx.srv);
    stream_free(fx.st);
    /* Let the server's closed connections go. */
    for (int i = 0; i < 10; i++)
        ev_run(loop, EVRUN_NOWAIT);
}

static int jobs_at_least(void *arg)
{
    return fx.jobs_done >= *(unsigned *)arg;
}

/* Run one SQL statement through the writer (as Execute would). */
static int write_sql(const char *sql)
{
    Boomerang__V1__Statement stmt = BOOMERANG__V1__STATEMENT__INIT;
    Boomerang__V1__Statement *stmts[1] = {&stmt};
    Boomerang__V1__ExecuteRequest req = BOOMERANG__V1__EXECUTE_REQUEST__INIT;
    struct writer_job *job = xcalloc(1, sizeof(*job));
    uint8_t buf[4096];
    unsigned want = fx.jobs_done + 1;
    size_t len;

    stmt.sql = (char *)sql;
    req.statements = stmts;
    req.n_statements = 1;
    len = boomerang__v1__execute_request__pack(&req, buf);
    job->kind = WRITER_JOB_EXECUTE;
    job->req = boomerang__v1__execute_request__unpack(NULL, len, buf); /* owned by the job */
    writer_submit(fx.w, job);
    return run_until(jobs_at_least, &want) ? 0 : -1;
}

/* A TRUNCATE checkpoint from a connection of our own: SQLITE_BUSY while
 * some reader (a snapshot) still holds a read transaction on the WAL, else
 * SQLITE_OK. Only call it while nothing writes. */
static int truncate_checkpoint(void)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(fx.db, &db, SQLITE_OPEN_READWRITE, NULL);
    int n_log = -1, n_ckpt = -1;

    /* A fresh connection learns that the file is in WAL mode on its first
     * read; until then a checkpoint is a no-op returning SQLITE_OK. */
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "SELECT count(*) FROM sqlite_schema", NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_TRUNCATE, &n_log, &n_ckpt);
    if (rc == SQLITE_OK && n_log != 0)
        rc = SQLITE_ERROR; /* not in WAL mode, or not truncated */
    sqlite3_close(db);
    return rc;
}

/* ---- a subscriber ------------------------------------------------------------- */

struct csub {
    uint64_t id;
    int hellos, snap_chunks, snapshots, txns, heartbeats, bad;
    char reason[64];
    uint64_t applied; /* last txid completed */
    int cancel_on_snapshot;
    int busy_mid_snapshot; /* the checkpoint result seen before cancelling */
    int ended;
    enum grpc_status status;
    char message[256];
};

static void csub_message(void *arg, const uint8_t *msg, size_t len)
{
    struct csub *cs = arg;
    Boomerang__V1__ReplicationEvent *ev = boomerang__v1__replication_event__unpack(NULL, len, msg);

    if (!ev) {
        cs->bad++;
        return;
    }
    switch (ev->event_case) {
    case BOOMERANG__V1__REPLICATION_EVENT__EVENT_HELLO:
        cs->hellos++;
        break;
    case BOOMERANG__V1__REPLICATION_EVENT__EVENT_SNAPSHOT:
        cs->snap_chunks++;
        if (ev->snapshot->first)
            snprintf(cs->reason, sizeof(cs->reason), "%s", ev->snapshot->reason);
        if (ev->snapshot->last) {
            cs->snapshots++;
            cs->applied = ev->snapshot->txid;
        }
        if (cs->cancel_on_snapshot) {
            cs->busy_mid_snapshot = truncate_checkpoint();
            if (h2client_cancel(fx.cl, cs->id) != 0)
                cs->bad++;
        }
        cs->cancel_on_snapshot = 0;
        break;
    case BOOMERANG__V1__REPLICATION_EVENT__EVENT_TXN:
        if (ev->txn->last) {
            cs->txns++;
            cs->applied = ev->txn->txid;
        }
        break;
    case BOOMERANG__V1__REPLICATION_EVENT__EVENT_HEARTBEAT:
        cs->heartbeats++;
        break;
    default:
        cs->bad++;
    }
    protobuf_c_message_free_unpacked(&ev->base, NULL);
}

static void csub_end(void *arg, enum grpc_status status, const char *message)
{
    struct csub *cs = arg;

    cs->ended = 1;
    cs->status = status;
    snprintf(cs->message, sizeof(cs->message), "%s", message ? message : "");
}

static void csub_start_raw(struct csub *cs, const uint8_t *msg, size_t len)
{
    memset(cs, 0, sizeof(*cs));
    cs->id = h2client_stream(fx.cl, PATH_SUBSCRIBE, msg, len, 0, csub_message, csub_end, cs);
}

static void csub_start(struct csub *cs, const Boomerang__V1__SubscribeRequest *req)
{
    uint8_t buf[512];
    size_t len = boomerang__v1__subscribe_request__pack(req, buf);

    csub_start_raw(cs, buf, len);
}

static int csub_ended(void *arg)
{
    return ((struct csub *)arg)->ended;
}

static int csub_live(void *arg)
{
    struct csub *cs = arg;
    return cs->heartbeats > 0 || cs->ended;
}

struct until_txid {
    struct csub *cs;
    uint64_t txid;
};

static int csub_at(void *arg)
{
    struct until_txid *u = arg;
    return u->cs->applied >= u->txid || u->cs->ended;
}

static int writer_idle(void *arg)
{
    (void)arg;
    return writer_pending(fx.w) == 0;
}

static int no_subscribers(void *arg)
{
    struct stream_stats ss;

    (void)arg;
    stream_stats(fx.st, &ss);
    return ss.subscribers == 0;
}

/* ---- tests --------------------------------------------------------------------- */

TEST(refusals)
{
    Boomerang__V1__SubscribeRequest req = BOOMERANG__V1__SUBSCRIBE_REQUEST__INIT;
    static const uint8_t garbage[] = {0x0a, 0xff, 0x01};
    struct csub a, b;

    REQUIRE(fixture_start("refusals", NULL) == 0);
    csub_start_raw(&a, garbage, sizeof(garbage));
    req.database = "other";
    csub_start(&b, &req);
    CHECK(run_until(csub_ended, &a) && run_until(csub_ended, &b));
    CHECK(a.status == GRPC_INVALID_ARGUMENT && strstr(a.message, "malformed SubscribeRequest"));
    CHECK(b.status == GRPC_NOT_FOUND && strstr(b.message, "'other' not found"));
    CHECK(a.hellos == 0 && b.hellos == 0);
    fixture_stop();
}

TEST(new_replica_then_live_with_stats_and_each)
{
    Boomerang__V1__SubscribeRequest req = BOOMERANG__V1__SUBSCRIBE_REQUEST__INIT;
    struct stream_stats ss;
    struct capture_status st;
    struct csub a;

    REQUIRE(fixture_start("live", NULL) == 0);
    REQUIRE(write_sql("CREATE TABLE t (a)") == 0);
    req.database = "test";
    csub_start(&a, &req);
    REQUIRE(run_until(csub_live, &a) && !a.ended);
    CHECK(a.hellos == 1 && a.snapshots == 1 && strcmp(a.reason, "new replica") == 0);
    REQUIRE(write_sql("INSERT INTO t VALUES (1)") == 0);
    REQUIRE(write_sql("INSERT INTO t VALUES (2)") == 0);
    writer_status(fx.w, &st);
    REQUIRE(run_until(csub_at, &(struct until_txid){&a, st.head_txid}));
    CHECK(a.txns == 2 && a.bad == 0);

    stream_stats(fx.st, &ss);
    CHECK(ss.subscribers == 1 && ss.snapshots_sent == 1 && ss.txns_sent == 2);
    CHECK(ss.bytes_sent > 2 * 4096);
    fixture_stop();
}

static struct stream_sub_info seen_info;
static int seen_count;

static void each_cb(void *arg, const struct stream_sub_info *info)
{
    (void)arg;
    seen_info = *info;
    seen_info.peer = NULL;
    seen_info.state = strcmp(info->state, "live") == 0 ? "live" : "other";
    seen_count++;
}

TEST(each_reports_position_and_lag)
{
    Boomerang__V1__SubscribeRequest req = BOOMERANG__V1__SUBSCRIBE_REQUEST__INIT;
    struct capture_status st;
    struct csub a;

    REQUIRE(fixture_start("each", NULL) == 0);
    REQUIRE(write_sql("CREATE TABLE t (a)") == 0);
    writer_status(fx.w, &st);
    req.database_id = st.database_id;
    req.epoch = st.epoch;
    req.applied_txid = st.head_txid;
    req.applied_checksum = st.checksum;
    csub_start(&a, &req);
    REQUIRE(run_until(csub_live, &a) && !a.ended);
    CHECK(a.snapshots == 0 && a.txns == 0);
    seen_count = 0;
    stream_each(fx.st, each_cb, NULL);
    CHECK(seen_count == 1 && strcmp(seen_info.state, "live") == 0);
    CHECK(seen_info.applied_txid == st.head_txid && seen_info.sent_txid == st.head_txid);
    CHECK(seen_info.lag_txids == 0 && seen_info.lag_ms == 0);
    h2client_cancel(fx.cl, a.id);
    CHECK(run_until(no_subscribers, NULL));
    seen_count = 0;
    stream_each(fx.st, each_cb, NULL);
    CHECK(seen_count == 0);
    fixture_stop();
}

TEST(snapshot_that_cannot_open_the_database_fails_the_call)
{
    Boomerang__V1__SubscribeRequest req = BOOMERANG__V1__SUBSCRIBE_REQUEST__INIT;
    struct csub a;
    char bad[300];

    snprintf(bad, sizeof(bad), "%s/no/such/dir.db", tmpdir);
    REQUIRE(fixture_start("badpath", bad) == 0);
    csub_start(&a, &req);
    REQUIRE(run_until(csub_ended, &a));
    CHECK(a.hellos == 1 && a.status == GRPC_INTERNAL);
    CHECK(strstr(a.message, "taking a snapshot failed") != NULL);
    CHECK(run_until(no_subscribers, NULL));
    fixture_stop();
}

TEST(drain_while_the_snapshot_job_is_in_the_writer)
{
    Boomerang__V1__SubscribeRequest req = BOOMERANG__V1__SUBSCRIBE_REQUEST__INIT;
    struct csub a, b;

    REQUIRE(fixture_start("drain", NULL) == 0);
    REQUIRE(write_sql("CREATE TABLE t (a)") == 0);
    fx.drain_on_subscribe = 1; /* the job is submitted, then the stream drains */
    csub_start(&a, &req);
    REQUIRE(run_until(csub_ended, &a));
    CHECK(a.status == GRPC_UNAVAILABLE && strstr(a.message, "shutting down"));
    CHECK(a.hellos == 1 && a.snap_chunks == 0);
    /* Later subscribers are refused; the job comes back and is cleaned up. */
    csub_start(&b, &req);
    REQUIRE(run_until(csub_ended, &b));
    CHECK(b.status == GRPC_UNAVAILABLE && b.hellos == 0);
    CHECK(run_until(writer_idle, NULL));
    CHECK(truncate_checkpoint() == SQLITE_OK); /* its read transaction is gone */
    fixture_stop();
}

TEST(cancel_in_the_middle_of_a_snapshot_releases_it)
{
    Boomerang__V1__SubscribeRequest req = BOOMERANG__V1__SUBSCRIBE_REQUEST__INIT;
    struct csub a, b;

    REQUIRE(fixture_start("cancel", NULL) == 0);
    REQUIRE(write_sql("CREATE TABLE t (a)") == 0);
    /* ~24 MiB: far more than one loop turn sends, so the cancel lands mid-snapshot. */
    for (int i = 0; i < 24; i++)
        REQUIRE(write_sql("INSERT INTO t VALUES (randomblob(1048576))") == 0);
    /* A commit after the writer's last checkpoint, so that the snapshot reads
     * through the WAL: a reader pins the WAL only while it has unbackfilled
     * frames (else it reads the database file alone). */
    REQUIRE(write_sql("INSERT INTO t VALUES (1)") == 0);
    csub_start(&a, &req);
    a.cancel_on_snapshot = 1;
    REQUIRE(run_until(csub_ended, &a));
    CHECK(a.status == GRPC_CANCELLED && a.snap_chunks >= 1 && a.snapshots == 0);
    CHECK(run_until(no_subscribers, NULL));
    if (a.busy_mid_snapshot != SQLITE_BUSY)
        fprintf(stderr, "mid-snapshot checkpoint: %d\n", a.busy_mid_snapshot);
    CHECK(a.busy_mid_snapshot == SQLITE_BUSY); /* the snapshot held the WAL... */
    CHECK(truncate_checkpoint() == SQLITE_OK); /* ...and lets go once cancelled */
    /* The database is not held: the next snapshot is whole. */
    csub_start(&b, &req);
    REQUIRE(run_until(csub_live, &b));
    CHECK(b.snapshots == 1 && b.bad == 0);
    fixture_stop();
}

static ssize_t stalled_body(nghttp2_session *sess, int32_t stream_id, uint8_t *buf, size_t len,
                            uint32_t *flags, nghttp2_data_source *src, void *arg)
{
    (void)sess, (void)stream_id, (void)src, (void)arg;
    if (len < 5)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    memset(buf, 0, 5); /* gRPC prefix of an empty SubscribeRequest: a new replica */
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    return 5;
}

static void nv(nghttp2_nv *n, const char *name, const char *value)
{
    *n = (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value),
                      NGHTTP2_NV_FLAG_NONE};
}

/* Connect, send a Subscribe with a 64 KiB window, and never read again.
 * Returns the socket (the caller closes it) or -1. */
static int stalled_subscriber(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 65535}};
    nghttp2_data_provider prd = {.read_callback = stalled_body};
    nghttp2_session_callbacks *cbs = NULL;
    nghttp2_session *sess = NULL;
    nghttp2_nv h[6];
    const uint8_t *data;
    ssize_t n;
    int fd = socket(AF_INET, SOCK_STREAM, 0), ok = fd >= 0;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    nv(&h[0], ":method", "POST");
    nv(&h[1], ":scheme", "http");
    nv(&h[2], ":path", PATH_SUBSCRIBE);
    nv(&h[3], ":authority", "test");
    nv(&h[4], "content-type", "application/grpc");
    nv(&h[5], "te", "trailers");
    ok = ok && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    ok = ok && nghttp2_session_callbacks_new(&cbs) == 0;
    ok = ok && nghttp2_session_client_new(&sess, cbs, NULL) == 0;
    ok = ok && nghttp2_submit_settings(sess, NGHTTP2_FLAG_NONE, iv, 1) == 0;
    ok = ok && nghttp2_submit_request(sess, NULL, h, 6, &prd, NULL) > 0;
    while (ok && (n = nghttp2_session_mem_send(sess, &data)) > 0)
        ok = write(fd, data, (size_t)n) == n;
    nghttp2_session_del(sess);
    nghttp2_session_callbacks_del(cbs);
    if (!ok && fd >= 0)
        close(fd);
    return ok ? fd : -1;
}

static int one_subscriber(void *arg)
{
    struct stream_stats ss;

    (void)arg;
    stream_stats(fx.st, &ss);
    return ss.subscribers == 1;
}

TEST(a_replica_that_stops_reading_a_snapshot_is_cut_off)
{
    struct stream_stats ss;
    int fd;

    fx.stall_ms = 300;
    REQUIRE(fixture_start("stall", NULL) == 0);
    REQUIRE(write_sql("CREATE TABLE t (a)") == 0);
    /* More than the subscriber may have queued (4 MiB) plus its window. */
    for (int i = 0; i < 8; i++)
        REQUIRE(write_sql("INSERT INTO t VALUES (randomblob(1048576))") == 0);
    REQUIRE(write_sql("INSERT INTO t VALUES (1)") == 0); /* a snapshot through the WAL */
    fd = stalled_subscriber(h2server_port(fx.srv));
    REQUIRE(fd >= 0);
    CHECK(run_until(one_subscriber, NULL));
    CHECK(run_until(no_subscribers, NULL)); /* within TIMEOUT_S; the limit is 300 ms */
    stream_stats(fx.st, &ss);
    CHECK(ss.snapshots_sent == 0);
    CHECK(truncate_checkpoint() == SQLITE_OK); /* the WAL is free again */
    close(fd);
    fixture_stop();
}

/* Flip a byte inside the newest record of the log. */
static int corrupt_log_tail(void)
{
    char path[512];
    int fd, rc = -1;
    off_t size;
    uint8_t byte;

    snprintf(path, sizeof(path), "%s-boomerang/log/%016x.log", fx.db, 1);
    fd = open(path, O_RDWR);
    if (fd < 0)
        return -1;
    size = lseek(fd, 0, SEEK_END);
    if (size > 200 && pread(fd, &byte, 1, size - 100) == 1) {
        byte ^= 0x5a;
        rc = pwrite(fd, &byte, 1, size - 100) == 1 ? 0 : -1;
    }
    close(fd);
    return rc;
}

TEST(unreadable_log_record_is_replaced_by_a_snapshot)
{
    Boomerang__V1__SubscribeRequest req = BOOMERANG__V1__SUBSCRIBE_REQUEST__INIT;
    struct capture_status st;
    struct csub a;

    REQUIRE(fixture_start("corrupt", NULL) == 0);
    REQUIRE(write_sql("CREATE TABLE t (a)") == 0);
    REQUIRE(write_sql("INSERT INTO t VALUES (randomblob(3000))") == 0);
    REQUIRE(write_sql("INSERT INTO t VALUES (randomblob(3000))") == 0);
    writer_status(fx.w, &st);
    REQUIRE(corrupt_log_tail() == 0);
    req.database_id = st.database_id;
    req.epoch = st.epoch;
    req.applied_txid = 0; /* stream the whole log: the last record is bad */
    csub_start(&a, &req);
    REQUIRE(run_until(csub_live, &a) && !a.ended);
    CHECK(a.txns == (int)st.head_txid - 1);
    CHECK(a.snapshots == 1 && strcmp(a.reason, "log unreadable") == 0);
    CHECK(a.applied == st.head_txid);
    fixture_stop();
}

int main(void)
{
    if (!mkdtemp(tmpdir))
        return 1;
    log_level = getenv("TEST_LOG") ? LOGL_DEBUG : LOGL_ERROR;
    log_set_program("test_stream");
    loop = ev_default_loop(0);
    RUN(refusals);
    RUN(new_replica_then_live_with_stats_and_each);
    RUN(each_reports_position_and_lag);
    RUN(snapshot_that_cannot_open_the_database_fails_the_call);
    RUN(drain_while_the_snapshot_job_is_in_the_writer);
    RUN(cancel_in_the_middle_of_a_snapshot_releases_it);
    RUN(a_replica_that_stops_reading_a_snapshot_is_cut_off);
    RUN(unreadable_log_record_is_replaced_by_a_snapshot);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", tmpdir);
    return HARNESS_END();
}
