/* Tests for proxy/link: the sidecar's link thread against a real primary.
 *
 * Three threads, as in the sidecar: the primary (primary/service.c with its
 * writer thread, on its own loop), the link thread (link_start's loop), and
 * this thread as an app thread with its own loop and loopq, which receives
 * every callback. Checks: an INSERT's reply comes with its transaction
 * already applied (same connection, frames first); waits time out and are
 * reached; Status; link_info; link_free completes what is pending. */
#include <arpa/inet.h>
#include <ev.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/grpc.h"
#include "common/h2server.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/loopq.h"
#include "common/metrics.h"
#include "primary/service.h"
#include "proxy/link.h"
#include "tests/unit/harness.h"

static char tmpdir[] = "/tmp/test_link.XXXXXX";

/* ---- this thread's loop ------------------------------------------------------- */

static struct ev_loop *app_loop;
static struct loopq *app_q;
static int timed_out;

static void guard_cb(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)w;
    (void)revents;
    timed_out = 1;
}

static void poll_cb(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)w;
    (void)revents;
}

/* Run the app loop until cond() or `seconds` pass; a 10 ms timer rechecks
 * conditions on state other threads change (link_info). */
static int run_until(int (*cond)(void), double seconds)
{
    ev_timer guard, poll;

    timed_out = 0;
    ev_timer_init(&guard, guard_cb, seconds, 0);
    ev_timer_init(&poll, poll_cb, 0.01, 0.01);
    ev_timer_start(app_loop, &guard);
    ev_timer_start(app_loop, &poll);
    while (!cond() && !timed_out)
        ev_run(app_loop, EVRUN_ONCE);
    ev_timer_stop(app_loop, &guard);
    ev_timer_stop(app_loop, &poll);
    return cond();
}

/* ---- a thread running a loop until told to stop --------------------------------- */

struct runner {
    struct ev_loop *loop;
    struct loopq *ctl; /* posts into that loop */
    pthread_t th;
};

static void *runner_main(void *arg)
{
    struct runner *r = arg;

    ev_run(r->loop, 0);
    return NULL;
}

static void break_fn(void *arg)
{
    ev_break(arg, EVBREAK_ALL);
}

/* ---- the primary ---------------------------------------------------------------- */

static struct {
    struct runner run;
    struct service *svc;
    int port;
} prim;

static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int port = -1;

    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &alen) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int primary_start(void)
{
    struct service_config sc = {0};
    static char listen[64], db[300]; /* the service keeps pointers */

    prim.port = free_port();
    if (prim.port <= 0)
        return -1;
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", prim.port);
    snprintf(db, sizeof(db), "%s/primary.db", tmpdir);
    sc.database = "main";
    sc.listen = listen;
    sc.max_message = 16 << 20;
    sc.writer.db_path = db;
    sc.writer.group_commit = 1;
    sc.writer.max_batch = 64;
    sc.writer.tx_timeout_ms = 5000;
    sc.writer.statement_timeout_ms = 10000;
    sc.writer.max_result_bytes = 16 << 20;
    prim.run.loop = ev_loop_new(EVFLAG_AUTO);
    if (!prim.run.loop || service_start(prim.run.loop, &sc, &prim.svc) != 0)
        return -1;
    prim.run.ctl = loopq_new(prim.run.loop);
    return pthread_create(&prim.run.th, NULL, runner_main, &prim.run) == 0 ? 0 : -1;
}

static void drain_fn(void *arg)
{
    service_drain(arg); /* breaks the loop once drained */
}

static void primary_stop(void)
{
    loopq_post(prim.run.ctl, drain_fn, prim.svc);
    pthread_join(prim.run.th, NULL);
    loopq_free(prim.run.ctl);
    service_free(prim.svc);
    ev_loop_destroy(prim.run.loop);
}

/* ---- the link ------------------------------------------------------------------- */

static struct {
    struct runner run;
    struct link *l;
} lk;

static int link_up(const char *url, const char *replica)
{
    char path[300];
    struct link_config cfg = {.primary_url = url, .replica_path = path};

    snprintf(path, sizeof(path), "%s/%s", tmpdir, replica);
    lk.run.loop = ev_loop_new(EVFLAG_AUTO);
    if (!lk.run.loop)
        return -1;
    if (link_start(lk.run.loop, &cfg, &lk.l) != 0) {
        ev_loop_destroy(lk.run.loop);
        return -1;
    }
    lk.run.ctl = loopq_new(lk.run.loop);
    return pthread_create(&lk.run.th, NULL, runner_main, &lk.run) == 0 ? 0 : -1;
}

/* Stop the link thread, then free the link here (its loop is idle). */
static void link_down(void)
{
    loopq_post(lk.run.ctl, break_fn, lk.run.loop);
    pthread_join(lk.run.th, NULL);
    loopq_free(lk.run.ctl);
    link_free(lk.l);
    lk.l = NULL;
    ev_loop_destroy(lk.run.loop);
}

/* ---- callbacks ------------------------------------------------------------------ */

static struct exec_res {
    int done;
    int status;
    char message[256];
    uint64_t txid, applied, conn_gen;
    int has_error;
    char error_code[64];
} ex;

static void exec_cb(void *arg, int status, const char *message,
                    Boomerang__V1__ExecuteResponse *resp, uint64_t applied, uint64_t conn_gen)
{
    struct exec_res *r = arg;

    r->done++;
    r->status = status;
    snprintf(r->message, sizeof(r->message), "%s", message);
    r->applied = applied;
    r->conn_gen = conn_gen;
    r->txid = resp ? resp->txid : 0;
    r->has_error = resp && resp->n_results && resp->results[0]->error;
    if (r->has_error)
        snprintf(r->error_code, sizeof(r->error_code), "%s", resp->results[0]->error->code);
    if (resp)
        boomerang__v1__execute_response__free_unpacked(resp, NULL);
}

static int exec_done(void)
{
    return ex.done > 0;
}

/* Send one statement (none for sql NULL) through link_execute. */
static void execute_post(const char *sql)
{
    Boomerang__V1__ExecuteRequest req = BOOMERANG__V1__EXECUTE_REQUEST__INIT;
    Boomerang__V1__Statement st = BOOMERANG__V1__STATEMENT__INIT;
    Boomerang__V1__Statement *stp = &st;

    st.sql = (char *)sql;
    req.n_statements = sql ? 1 : 0;
    req.statements = &stp;
    memset(&ex, 0, sizeof(ex));
    link_execute(lk.l, &req, 5.0, app_q, exec_cb, &ex);
    /* req was packed: it may go now. */
}

/* ...and wait for its callback. */
static int execute(const char *sql)
{
    execute_post(sql);
    return run_until(exec_done, 10.0) && ex.done == 1 ? 0 : -1;
}

static struct wait_res {
    int done;
    int reached;
    uint64_t applied;
} wt;

static void wait_cb(void *arg, int reached, uint64_t applied)
{
    struct wait_res *w = arg;

    w->done++;
    w->reached = reached;
    w->applied = applied;
}

static int wait_done(void)
{
    return wt.done > 0;
}

static struct status_res {
    int done;
    int status;
    uint64_t head, epoch;
    char database_id[33];
} stt;

static void status_cb(void *arg, int status, const char *message, uint64_t head_txid,
                      const char *database_id, uint64_t epoch)
{
    struct status_res *s = arg;

    (void)message;
    s->done++;
    s->status = status;
    s->head = head_txid;
    s->epoch = epoch;
    snprintf(s->database_id, sizeof(s->database_id), "%s", database_id ? database_id : "");
}

static int status_done(void)
{
    return stt.done > 0;
}

static int caught_up(void)
{
    struct link_info in;

    link_info(lk.l, &in);
    return in.caught_up_once && strcmp(in.state, "LIVE") == 0;
}

/* ---- tests ---------------------------------------------------------------------- */

static char url[64];

TEST(link_execute_wait_status)
{
    struct link_info in;
    uint64_t t1, t2, t3;
    int64_t t0;

    REQUIRE(link_up(url, "replica.db") == 0);
    link_info(lk.l, &in);
    CHECK(in.state != NULL && in.connection != NULL);
    REQUIRE(run_until(caught_up, 10.0));

    /* The reply comes with its transaction applied: frames first. */
    REQUIRE(execute("CREATE TABLE t(x)") == 0);
    CHECK(ex.status == GRPC_OK);
    CHECK(!ex.has_error);
    t1 = ex.txid;
    CHECK(t1 > 0);
    CHECK(ex.applied >= t1);
    CHECK(ex.conn_gen == 1);
    REQUIRE(execute("INSERT INTO t VALUES (1)") == 0);
    t2 = ex.txid;
    CHECK(ex.status == GRPC_OK && t2 == t1 + 1);
    CHECK(ex.applied >= t2);
    CHECK(link_applied(lk.l) >= t2);
    CHECK(link_applying(lk.l) >= link_applied(lk.l));

    /* A statement error is a result, not a call failure. */
    REQUIRE(execute("INSERT INTO nope VALUES (1)") == 0);
    CHECK(ex.status == GRPC_OK && ex.has_error);
    CHECK(strncmp(ex.error_code, "SQLITE_ERROR", 12) == 0);

    /* A call the primary refuses: its status and message. */
    REQUIRE(execute(NULL) == 0);
    CHECK(ex.status == GRPC_INVALID_ARGUMENT);
    CHECK(strstr(ex.message, "at least one statement") != NULL);

    /* Already applied: posted, reached. */
    memset(&wt, 0, sizeof(wt));
    link_wait(lk.l, t2, 1.0, app_q, wait_cb, &wt);
    CHECK(wt.done == 0); /* never inline */
    REQUIRE(run_until(wait_done, 5.0));
    CHECK(wt.reached == 1 && wt.applied >= t2);

    /* The next txid times out after 100 ms. */
    memset(&wt, 0, sizeof(wt));
    t0 = mono_us();
    link_wait(lk.l, t2 + 1, 0.1, app_q, wait_cb, &wt);
    REQUIRE(run_until(wait_done, 5.0));
    CHECK(wt.done == 1 && wt.reached == 0);
    CHECK(mono_us() - t0 >= 90000);
    CHECK(wt.applied == t2);

    /* ...and is reached by the next write. */
    memset(&wt, 0, sizeof(wt));
    link_wait(lk.l, t2 + 1, 5.0, app_q, wait_cb, &wt);
    REQUIRE(execute("INSERT INTO t VALUES (2)") == 0);
    t3 = ex.txid;
    CHECK(t3 == t2 + 1);
    REQUIRE(run_until(wait_done, 5.0));
    CHECK(wt.done == 1 && wt.reached == 1 && wt.applied >= t3);

    /* Status: the primary's head. */
    memset(&stt, 0, sizeof(stt));
    link_status(lk.l, 5.0, app_q, status_cb, &stt);
    REQUIRE(run_until(status_done, 5.0));
    CHECK(stt.status == GRPC_OK && stt.head == t3);
    CHECK(strlen(stt.database_id) == 32);

    /* The info copy, after the tick has refreshed it. */
    run_until(caught_up, 1.0);
    link_info(lk.l, &in);
    CHECK(in.applied_txid == t3);
    CHECK(in.primary_txid == t3);
    CHECK(in.lag_txids == 0);
    CHECK(in.lag_ms >= 0);
    CHECK(in.caught_up_once == 1);
    CHECK(in.conn_gen == 1);
    CHECK(strcmp(in.state, "LIVE") == 0);
    CHECK(strcmp(in.connection, "CONNECTED") == 0);
    CHECK(strcmp(in.database_id, stt.database_id) == 0);
    CHECK(in.epoch == stt.epoch && in.epoch > 0);

    /* link_free: a pending wait ends with reached = 0; a call posted just
     * before gets exactly one callback (its reply or CANCELLED). */
    memset(&wt, 0, sizeof(wt));
    link_wait(lk.l, t3 + 100, 30.0, app_q, wait_cb, &wt);
    execute_post("SELECT 1");
    link_down();
    loopq_drain(app_q);
    CHECK(wt.done == 1 && wt.reached == 0);
    CHECK(ex.done == 1);
    CHECK(ex.status == GRPC_OK || ex.status == GRPC_CANCELLED);
}

/* A restart resumes from the replica's position; Status and waits work on a
 * second link; a link_free with a queued wait and status completes both. */
TEST(link_restart_and_free_queued)
{
    struct link_info in;

    REQUIRE(link_up(url, "replica.db") == 0);
    REQUIRE(run_until(caught_up, 10.0));
    link_info(lk.l, &in);
    CHECK(in.applied_txid >= 3);
    CHECK(in.conn_gen == 1);

    /* Queued ops on a link whose loop has stopped: link_free completes them. */
    loopq_post(lk.run.ctl, break_fn, lk.run.loop);
    pthread_join(lk.run.th, NULL);
    {
        /* Rendered here while the link's loop is stopped (collectors read
         * the follow). */
        struct metrics *m = metrics_new();
        struct buf text = {0};
        char want[96];

        link_metrics(lk.l, m);
        metrics_render(m, &text);
        buf_append(&text, "", 1);
        snprintf(want, sizeof(want), "boomerang_replica_applied_txid %llu\n",
                 (unsigned long long)in.applied_txid);
        CHECK(strstr((const char *)buf_head(&text), want) != NULL);
        buf_free(&text);
        metrics_free(m);
    }
    memset(&wt, 0, sizeof(wt));
    memset(&stt, 0, sizeof(stt));
    link_wait(lk.l, in.applied_txid + 1, 30.0, app_q, wait_cb, &wt);
    link_status(lk.l, 5.0, app_q, status_cb, &stt);
    loopq_free(lk.run.ctl);
    link_free(lk.l);
    lk.l = NULL;
    ev_loop_destroy(lk.run.loop);
    loopq_drain(app_q);
    CHECK(wt.done == 1 && wt.reached == 0);
    CHECK(stt.done == 1 && stt.status == GRPC_CANCELLED);
}

/* Unreachable primary: calls fail (UNAVAILABLE or a deadline), never hang. */
TEST(link_primary_down)
{
    char down[64];
    struct link_info in;
    int port = free_port();

    REQUIRE(port > 0);
    snprintf(down, sizeof(down), "http://127.0.0.1:%d", port);
    REQUIRE(link_up(down, "other.db") == 0);
    link_info(lk.l, &in);
    CHECK(in.caught_up_once == 0);
    REQUIRE(execute("SELECT 1") == 0);
    CHECK(ex.status == GRPC_UNAVAILABLE || ex.status == GRPC_DEADLINE_EXCEEDED);
    CHECK(ex.message[0] != '\0');
    memset(&wt, 0, sizeof(wt));
    link_wait(lk.l, 1, 0.05, app_q, wait_cb, &wt);
    REQUIRE(run_until(wait_done, 5.0));
    CHECK(wt.reached == 0 && wt.applied == 0);
    link_info(lk.l, &in);
    CHECK(in.caught_up_once == 0 && in.conn_gen == 0);
    CHECK(strcmp(in.state, "LIVE") != 0);
    link_down();
}

/* ---- a fake primary: garbage replies, no stream ------------------------------------ */

static struct {
    struct runner run;
    struct h2server *srv;
    int port;
} fake;

static void fake_call_cb(void *arg, struct h2call *call)
{
    static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff}; /* wire type 7: invalid */

    (void)arg;
    if (strstr(h2call_path(call), "Subscribe"))
        h2call_fail(call, GRPC_UNAVAILABLE, "no stream here");
    else
        h2call_reply(call, garbage, sizeof(garbage));
}

static int fake_listen(void)
{
    char listen[64];
    struct h2server_config hc = {.listen = listen, .on_call = fake_call_cb};

    snprintf(listen, sizeof(listen), "127.0.0.1:%d", fake.port);
    if (h2server_start(fake.run.loop, &hc, &fake.srv) != 0)
        return -1;
    fake.port = h2server_port(fake.srv);
    return pthread_create(&fake.run.th, NULL, runner_main, &fake.run) == 0 ? 0 : -1;
}

static void fake_halt(void)
{
    loopq_post(fake.run.ctl, break_fn, fake.run.loop);
    pthread_join(fake.run.th, NULL);
    h2server_free(fake.srv);
    fake.srv = NULL;
}

static uint64_t want_gen;

static int conn_gen_reached(void)
{
    struct link_info in;

    link_info(lk.l, &in);
    return in.conn_gen >= want_gen && strcmp(in.connection, "CONNECTED") == 0;
}

/* Malformed replies end as INTERNAL; a new connection bumps conn_gen. */
TEST(link_fake_primary)
{
    char furl[64];
    struct link_info in;

    memset(&fake, 0, sizeof(fake));
    fake.run.loop = ev_loop_new(EVFLAG_AUTO);
    REQUIRE(fake.run.loop);
    fake.run.ctl = loopq_new(fake.run.loop);
    REQUIRE(fake_listen() == 0);
    snprintf(furl, sizeof(furl), "http://127.0.0.1:%d", fake.port);
    REQUIRE(link_up(furl, "fake.db") == 0);
    want_gen = 1;
    REQUIRE(run_until(conn_gen_reached, 10.0));

    REQUIRE(execute("SELECT 1") == 0);
    CHECK(ex.status == GRPC_INTERNAL);
    CHECK(strstr(ex.message, "malformed") != NULL);
    CHECK(ex.conn_gen == 1);
    memset(&stt, 0, sizeof(stt));
    link_status(lk.l, 5.0, app_q, status_cb, &stt);
    REQUIRE(run_until(status_done, 5.0));
    CHECK(stt.status == GRPC_INTERNAL && stt.head == 0);

    /* The server goes away and comes back on the same port. */
    fake_halt();
    REQUIRE(fake_listen() == 0);
    want_gen = 2;
    CHECK(run_until(conn_gen_reached, 10.0));
    link_info(lk.l, &in);
    CHECK(in.conn_gen == 2);
    CHECK(in.caught_up_once == 0);
    REQUIRE(execute("SELECT 1") == 0);
    CHECK(ex.status == GRPC_INTERNAL && ex.conn_gen == 2);

    link_down();
    fake_halt();
    loopq_free(fake.run.ctl);
    ev_loop_destroy(fake.run.loop);
}

TEST(link_start_errors)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct link *l = NULL;
    char path[300];
    struct link_config bad_url = {.primary_url = "ftp://x", .replica_path = path};
    struct link_config bad_path = {.primary_url = url, .replica_path = "/nonexistent/dir/r.db"};

    REQUIRE(loop);
    snprintf(path, sizeof(path), "%s/bad.db", tmpdir);
    CHECK(link_start(loop, &bad_url, &l) == -1);
    CHECK(link_start(loop, &bad_path, &l) == -1);
    link_free(NULL);
    ev_loop_destroy(loop);
}

int main(void)
{
    log_level = LOGL_WARN;
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    app_loop = ev_loop_new(EVFLAG_AUTO);
    app_q = loopq_new(app_loop);
    if (primary_start() != 0) {
        fprintf(stderr, "cannot start the primary\n");
        return 1;
    }
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", prim.port);
    RUN(link_execute_wait_status);
    RUN(link_restart_and_free_queued);
    RUN(link_primary_down);
    RUN(link_fake_primary);
    RUN(link_start_errors);
    primary_stop();
    loopq_free(app_q);
    ev_loop_destroy(app_loop);
    {
        char cmd[300];

        snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "cleanup of %s failed\n", tmpdir);
    }
    return HARNESS_END();
}
