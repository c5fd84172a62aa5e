/* boomerang: the sidecar's link to the primary (proxy/link.h).
 *
 *   link_start: apply_open ─▶ h2client_new ─▶ follow_start ─▶ loopq + 100 ms tick
 *
 *   app thread                        link thread (its loop)
 *   link_execute: pack ──loopq_post──▶ op_execute_fn: h2client_unary(Execute)
 *                                        └ exec_reply_cb: unpack, stamp applied
 *   cb(status, resp, applied) ◀──loopq_post(reply_q)──┘
 *   link_wait ──────────────loopq_post──▶ op_wait_fn: waiter_add(follow_waiters)
 *   cb(reached, applied) ◀──loopq_post(reply_q)──┘ (APPLIED / TIMEOUT / CLOSED)
 *
 * Every request is one struct link_op: allocated by the caller's thread,
 * handed to the link thread through the link's loopq, then handed back to the
 * caller's loopq, where its callback runs and it is freed. It belongs to
 * exactly one thread at a time, so it needs no lock.
 *
 * Published state:
 * - applied / applying are C11 atomics. follow calls on_committing(txid)
 *   right before each COMMIT (applying = txid) and on_applied(txid) right
 *   after it (applied = txid), before it notifies its waiters. Whenever the
 *   link thread runs anything else no COMMIT is in progress (apply is
 *   synchronous on this thread), so there applying is brought back to
 *   applied, which also undoes the bound of a COMMIT that failed.
 *   A snapshot is committed without on_applied, but always moves the follow
 *   out of FOLLOW_SNAPSHOT, so on_state publishes its txid.
 * - struct link_info is a copy under a mutex, rebuilt after every event the
 *   link sees and every 100 ms (lag_ms grows with time alone).
 *
 * Shutdown (link_free): `closing` makes every op still queued complete at
 * once (CANCELLED, reached = 0); follow_free ends the waiters (WAITER_CLOSED)
 * and h2client_free the calls in flight (CANCELLED); each of those callbacks
 * posts to its caller's loopq as usual. */
#include "proxy/link.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/grpc.h"
#include "common/h2client.h"
#include "common/log.h"
#include "common/loopq.h"
#include "replica/apply.h"
#include "replica/follow.h"
#include "replica/waiter.h"

#define LINK_PATH_EXECUTE "/boomerang.v1.Primary/Execute"
#define LINK_PATH_STATUS  "/boomerang.v1.Primary/Status"
#define LINK_TICK_S       0.1
#define LINK_MAX_MESSAGE  ((size_t)64 << 20)

struct link {
    struct ev_loop *loop;
    char *database; /* for StatusRequest; "" = the primary's */
    struct apply *apply;
    struct h2client *client;
    struct follow *follow;
    struct loopq *q; /* runs ops on the link thread */
    ev_timer tick;
    int closing;

    _Atomic uint64_t applied, applying;

    /* Link thread only; copied into info. */
    int caught_up_once;
    uint64_t conn_gen;

    pthread_mutex_t mu; /* guards info */
    struct link_info info;
};

enum link_op_kind { LINK_OP_EXECUTE, LINK_OP_STATUS, LINK_OP_WAIT };

struct link_op {
    enum link_op_kind kind;
    struct link *l;
    struct loopq *reply_q;
    void *arg;
    union {
        link_execute_cb execute;
        link_status_cb status;
        link_wait_cb wait;
    } cb;
    double timeout_s;
    uint8_t *msg; /* packed request (EXECUTE, STATUS) */
    size_t len;
    uint64_t txid; /* WAIT */

    /* The outcome, filled on the link thread. */
    int status; /* enum grpc_status */
    char *message;
    Boomerang__V1__ExecuteResponse *resp;
    uint64_t head_txid, epoch;
    char database_id[33];
    int reached;
    uint64_t applied, conn_gen;
};

/* ---- published state ---------------------------------------------------------- */

uint64_t link_applied(const struct link *l)
{
    return atomic_load(&l->applied);
}

uint64_t link_applying(const struct link *l)
{
    return atomic_load(&l->applying);
}

void link_info(struct link *l, struct link_info *out)
{
    pthread_mutex_lock(&l->mu);
    *out = l->info;
    pthread_mutex_unlock(&l->mu);
}

/* Link thread, outside any COMMIT: applied and applying are the replica's
 * committed position. */
static void publish_position(struct link *l, uint64_t txid)
{
    atomic_store(&l->applied, txid);
    atomic_store(&l->applying, txid);
}

/* Rebuild the info copy from the follow, the client and what we count. */
static void refresh_info(struct link *l)
{
    struct follow_status st;
    struct link_info in;

    if (l->closing || !l->follow)
        return;
    memset(&in, 0, sizeof(in));
    follow_status(l->follow, &st);
    in.state = follow_state_name(st.state);
    in.connection = h2client_state_name(h2client_state(l->client));
    memcpy(in.database_id, st.database_id, sizeof(in.database_id));
    in.database_id[sizeof(in.database_id) - 1] = '\0';
    in.epoch = st.epoch;
    /* Inside on_applied the follow's own position is one behind: use ours. */
    in.applied_txid = link_applied(l);
    in.primary_txid = MAX(st.primary_head_txid, in.applied_txid);
    in.lag_txids = in.primary_txid - in.applied_txid;
    in.lag_ms = st.lag_ms;
    in.caught_up_once = l->caught_up_once;
    in.conn_gen = l->conn_gen;
    pthread_mutex_lock(&l->mu);
    l->info = in;
    pthread_mutex_unlock(&l->mu);
}

/* ---- follow and client events --------------------------------------------------- */

static void on_committing_cb(void *arg, uint64_t txid)
{
    struct link *l = arg;

    /* Before the COMMIT makes txid visible: a reader that sees it then
     * finds applying >= txid. (A snapshot of another history may take it
     * lower; readers compare histories themselves.) */
    atomic_store(&l->applying, txid);
}

static void on_applied_cb(void *arg, uint64_t txid, int64_t commit_time_us)
{
    struct link *l = arg;

    (void)commit_time_us;
    publish_position(l, txid);
    refresh_info(l);
}

static void on_follow_state_cb(void *arg, enum follow_state state)
{
    struct link *l = arg;

    if (state == FOLLOW_LIVE)
        l->caught_up_once = 1;
    /* follow_start reports CONNECTING before it returns our handle. */
    if (l->closing || !l->follow)
        return;
    /* Also after a snapshot commit, which has no on_applied. */
    publish_position(l, follow_applied(l->follow));
    refresh_info(l);
}

static void on_client_state_cb(void *arg, enum h2client_state state)
{
    struct link *l = arg;

    if (l->closing)
        return;
    if (state == H2CLIENT_CONNECTED)
        l->conn_gen++;
    refresh_info(l);
}

static void link_tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct link *l = container_of(w, struct link, tick);

    (void)loop;
    (void)revents;
    publish_position(l, follow_applied(l->follow));
    refresh_info(l);
}

/* ---- ops: back to the caller ---------------------------------------------------- */

/* On the caller's thread: run the callback and free the op. */
static void op_done_fn(void *arg)
{
    struct link_op *op = arg;
    const char *msg = op->message ? op->message : "";

    switch (op->kind) {
    case LINK_OP_EXECUTE:
        op->cb.execute(op->arg, op->status, msg, op->resp, op->applied, op->conn_gen);
        break;
    case LINK_OP_STATUS:
        op->cb.status(op->arg, op->status, msg, op->head_txid, op->database_id, op->epoch);
        break;
    case LINK_OP_WAIT:
        op->cb.wait(op->arg, op->reached, op->applied);
        break;
    }
    free(op->message);
    free(op);
}

/* On the link thread: record a call's outcome and post the op back. */
static void op_finish(struct link_op *op, int status, const char *message)
{
    free(op->msg);
    op->msg = NULL;
    op->status = status;
    op->message = xstrdup(message ? message : grpc_status_name((enum grpc_status)status));
    op->applied = link_applied(op->l);
    op->conn_gen = op->l->conn_gen;
    loopq_post(op->reply_q, op_done_fn, op);
}

static void wait_finish(struct link_op *op, int reached)
{
    op->reached = reached;
    op->applied = link_applied(op->l);
    op->conn_gen = op->l->conn_gen;
    loopq_post(op->reply_q, op_done_fn, op);
}

/* ---- ops: on the link thread ---------------------------------------------------- */

static void execute_reply_cb(void *arg, enum grpc_status status, const char *grpc_message,
                             const uint8_t *reply, size_t reply_len)
{
    struct link_op *op = arg;

    if (status == GRPC_OK) {
        op->resp = boomerang__v1__execute_response__unpack(NULL, reply_len, reply);
        if (!op->resp) {
            log_warn("Execute reply failed: malformed ExecuteResponse (%zu bytes)", reply_len);
            op_finish(op, GRPC_INTERNAL, "malformed ExecuteResponse from the primary");
            return;
        }
    }
    op_finish(op, status, grpc_message);
}

static void status_reply_cb(void *arg, enum grpc_status status, const char *grpc_message,
                            const uint8_t *reply, size_t reply_len)
{
    struct link_op *op = arg;
    Boomerang__V1__StatusResponse *r;

    if (status != GRPC_OK) {
        op_finish(op, status, grpc_message);
        return;
    }
    r = boomerang__v1__status_response__unpack(NULL, reply_len, reply);
    if (!r) {
        log_warn("Status reply failed: malformed StatusResponse (%zu bytes)", reply_len);
        op_finish(op, GRPC_INTERNAL, "malformed StatusResponse from the primary");
        return;
    }
    op->head_txid = r->head_txid;
    op->epoch = r->epoch;
    snprintf(op->database_id, sizeof(op->database_id), "%s", r->database_id);
    boomerang__v1__status_response__free_unpacked(r, NULL);
    op_finish(op, GRPC_OK, NULL);
}

static void wait_cb(void *arg, enum waiter_status status, uint64_t txid, uint64_t applied)
{
    (void)txid;
    (void)applied;
    /* APPLIED also after a snapshot of another history took applied down:
     * the waiter set only fires APPLIED when its applied reached txid. */
    wait_finish(arg, status == WAITER_APPLIED);
}

static void op_start_fn(void *arg)
{
    struct link_op *op = arg;
    struct link *l = op->l;
    struct waiter_set *ws;

    if (l->closing) {
        if (op->kind == LINK_OP_WAIT)
            wait_finish(op, 0);
        else
            op_finish(op, GRPC_CANCELLED, "the link to the primary is closing");
        return;
    }
    switch (op->kind) {
    case LINK_OP_EXECUTE:
    case LINK_OP_STATUS:
        /* h2client copies the message. */
        (void)h2client_unary(l->client,
                             op->kind == LINK_OP_EXECUTE ? LINK_PATH_EXECUTE : LINK_PATH_STATUS,
                             op->msg, op->len, op->timeout_s,
                             op->kind == LINK_OP_EXECUTE ? execute_reply_cb : status_reply_cb, op);
        free(op->msg);
        op->msg = NULL;
        break;
    case LINK_OP_WAIT:
        ws = follow_waiters(l->follow);
        if (link_applied(l) >= op->txid) {
            wait_finish(op, 1);
            break;
        }
        (void)waiter_add(ws, op->txid, ev_now(l->loop) + MAX(op->timeout_s, 0.0), wait_cb, op);
        break;
    }
}

static struct link_op *op_new(struct link *l, enum link_op_kind kind, double timeout_s,
                              struct loopq *reply_q, void *arg)
{
    struct link_op *op = xcalloc(1, sizeof(*op));

    op->kind = kind;
    op->l = l;
    op->timeout_s = timeout_s;
    op->reply_q = reply_q;
    op->arg = arg;
    return op;
}

/* ---- the API: calls ------------------------------------------------------------- */

void link_execute(struct link *l, const Boomerang__V1__ExecuteRequest *req, double timeout_s,
                  struct loopq *reply_q, link_execute_cb cb, void *arg)
{
    struct link_op *op = op_new(l, LINK_OP_EXECUTE, timeout_s, reply_q, arg);

    op->cb.execute = cb;
    op->len = boomerang__v1__execute_request__get_packed_size(req);
    op->msg = xmalloc(op->len ? op->len : 1);
    (void)boomerang__v1__execute_request__pack(req, op->msg);
    loopq_post(l->q, op_start_fn, op);
}

void link_status(struct link *l, double timeout_s, struct loopq *reply_q, link_status_cb cb,
                 void *arg)
{
    struct link_op *op = op_new(l, LINK_OP_STATUS, timeout_s, reply_q, arg);
    Boomerang__V1__StatusRequest req = BOOMERANG__V1__STATUS_REQUEST__INIT;

    op->cb.status = cb;
    req.database = l->database; /* never changes after link_start */
    op->len = boomerang__v1__status_request__get_packed_size(&req);
    op->msg = xmalloc(op->len ? op->len : 1);
    (void)boomerang__v1__status_request__pack(&req, op->msg);
    loopq_post(l->q, op_start_fn, op);
}

void link_wait(struct link *l, uint64_t txid, double timeout_s, struct loopq *reply_q,
               link_wait_cb cb, void *arg)
{
    struct link_op *op = op_new(l, LINK_OP_WAIT, timeout_s, reply_q, arg);

    op->cb.wait = cb;
    op->txid = txid;
    loopq_post(l->q, op_start_fn, op);
}

/* ---- the API: life cycle -------------------------------------------------------- */

static int start_follow(struct link *l, const struct link_config *cfg)
{
    struct h2client_config hc = {0};
    struct follow_config fc = {0};

    hc.url = cfg->primary_url;
    hc.tls = cfg->tls;
    hc.auth_token = cfg->auth_token;
    hc.max_message = cfg->max_message ? cfg->max_message : LINK_MAX_MESSAGE;
    hc.on_state = on_client_state_cb;
    hc.arg = l;
    if (h2client_new(l->loop, &hc, &l->client) != 0)
        return -1; /* logged */
    fc.database = cfg->database;
    fc.client = l->client;
    fc.apply = l->apply;
    fc.on_state = on_follow_state_cb;
    fc.on_applied = on_applied_cb;
    fc.on_committing = on_committing_cb;
    fc.arg = l;
    if (follow_start(l->loop, &fc, &l->follow) != 0) {
        log_error("start replication link failed: bad configuration");
        return -1;
    }
    return 0;
}

int link_start(struct ev_loop *loop, const struct link_config *cfg, struct link **out)
{
    struct apply_config ac = {0};
    struct link *l = xcalloc(1, sizeof(*l));

    l->loop = loop;
    l->database = xstrdup(cfg->database ? cfg->database : "");
    ev_timer_init(&l->tick, link_tick_cb, LINK_TICK_S, LINK_TICK_S);
    if (pthread_mutex_init(&l->mu, NULL) != 0) {
        log_error("start replication link failed: mutex init");
        free(l->database);
        free(l);
        return -1;
    }
    ac.path = cfg->replica_path;
    ac.checkpoint_pages = cfg->checkpoint_pages;
    if (apply_open(&ac, &l->apply) != 0)
        goto fail; /* logged by apply */
    if (start_follow(l, cfg) != 0)
        goto fail;
    publish_position(l, follow_applied(l->follow));
    l->q = loopq_new(loop);
    ev_timer_start(loop, &l->tick);
    refresh_info(l);
    *out = l;
    return 0;

fail:
    link_free(l);
    return -1;
}

void link_free(struct link *l)
{
    if (!l)
        return;
    l->closing = 1;
    ev_timer_stop(l->loop, &l->tick);
    loopq_free(l->q);       /* queued ops complete, cancelled */
    follow_free(l->follow); /* waiters: WAITER_CLOSED -> reached = 0 */
    l->follow = NULL;
    h2client_free(l->client); /* calls in flight: CANCELLED */
    l->client = NULL;
    apply_close(l->apply);
    pthread_mutex_destroy(&l->mu);
    free(l->database);
    free(l);
}

void link_metrics(struct link *l, struct metrics *m)
{
    follow_metrics(l->follow, m);
}
