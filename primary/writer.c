/* boomerang: the single writer thread and group commit (see writer.h). */
#include "primary/writer.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/metrics.h"
#include "common/sqlcode.h"
#include "primary/authz.h"
#include "primary/exec.h"

#define SAVEPOINT_NAME AUTHZ_SAVEPOINT_PREFIX "job"

enum writer_ctl {
    CTL_BEGIN,
    CTL_COMMIT,
    CTL_ROLLBACK,
    CTL_SAVEPOINT,
    CTL_ROLLBACK_TO,
    CTL_RELEASE,
    CTL_COUNT,
};

static const char *const ctl_sql[CTL_COUNT] = {
    "BEGIN IMMEDIATE",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT " SAVEPOINT_NAME,
    "ROLLBACK TO " SAVEPOINT_NAME,
    "RELEASE " SAVEPOINT_NAME,
};

/* The open interactive transaction. */
struct writer_tx {
    uint64_t id; /* 0: none */
    uint64_t conn_id;
    int64_t deadline_us; /* mono_us() after which it is rolled back */
};

struct writer {
    struct writer_config cfg;
    int lock_fd; /* flock()ed database file: one primary per database */
    sqlite3 *db;
    struct authz *az;
    sqlite3 *rdb; /* read-only connection, for reads while a transaction is open */
    struct authz *raz;
    struct capture *cap;
    sqlite3_stmt *ctl[CTL_COUNT];
    struct exec_limits limits;
    int64_t stmt_deadline_us; /* progress handler interrupts past this */
    struct writer_tx tx;

    /* Metrics (NULL until writer_metrics); updated on the writer thread. */
    struct metrics_counter *m_commits, *m_requests;
    struct metrics_histogram *m_batch, *m_commit_secs;

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct writer_job *queue_head, *queue_tail; /* under mu */
    int stopping;                               /* under mu */
    unsigned pending;                           /* loop thread only */

    pthread_mutex_t done_mu;
    struct writer_job *done_head, *done_tail; /* under done_mu */
    struct ev_loop *loop;
    ev_async done_async;
    writer_done_cb done_cb;
    void *done_arg;
};

/* ---- control statements ---------------------------------------------------*/

static int ctl(struct writer *w, enum writer_ctl c)
{
    sqlite3_stmt *st = w->ctl[c];
    int rc;

    authz_set_internal(w->az, 1);
    rc = sqlite3_step(st);
    authz_set_internal(w->az, 0);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        log_warn("%s failed: %s", ctl_sql[c], sqlite3_errmsg(w->db));
        return rc;
    }
    return SQLITE_OK;
}

static int progress_cb(void *arg)
{
    struct writer *w = arg;
    return w->stmt_deadline_us && mono_us() > w->stmt_deadline_us;
}

/* ---- opening --------------------------------------------------------------*/

static int exec_pragma(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);

    if (rc != SQLITE_OK) {
        log_error("%s failed: %s", sql, err ? err : sqlite3_errstr(rc));
        sqlite3_free(err);
    }
    return rc;
}

/* One primary per database: a second writer would commit frames that capture
 * never sees. flock() locks are independent of the POSIX locks SQLite uses,
 * and this descriptor stays open until SQLite has closed the file (closing
 * any descriptor of a file drops the process's POSIX locks on it). */
static int lock_db(struct writer *w)
{
    w->lock_fd = open(w->cfg.db_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (w->lock_fd < 0) {
        log_error("open %s failed: %s", w->cfg.db_path, strerror(errno));
        return -1;
    }
    if (flock(w->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK)
            log_error("lock %s failed: another boomerang-primary is serving this database",
                      w->cfg.db_path);
        else
            log_error("lock %s failed: %s", w->cfg.db_path, strerror(errno));
        close(w->lock_fd);
        w->lock_fd = -1;
        return -1;
    }
    return 0;
}

static void unlock_db(struct writer *w)
{
    if (w->lock_fd >= 0)
        close(w->lock_fd);
    w->lock_fd = -1;
}

/* Pragmas first: wal_autocheckpoint would replace capture's wal_hook. */
static int open_db(struct writer *w)
{
    static const char *const pragmas[] = {
        "PRAGMA journal_mode=WAL",  "PRAGMA synchronous=FULL",  "PRAGMA wal_autocheckpoint=0",
        "PRAGMA temp_store=MEMORY", "PRAGMA cache_size=-65536",
    };
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    int rc = sqlite3_open_v2(w->cfg.db_path, &w->db, flags, NULL);

    if (rc != SQLITE_OK) {
        log_error("open %s failed: %s", w->cfg.db_path,
                  w->db ? sqlite3_errmsg(w->db) : sqlite3_errstr(rc));
        return -1;
    }
    sqlite3_extended_result_codes(w->db, 1);
    for (size_t i = 0; i < ARRAY_LEN(pragmas); i++) {
        if (exec_pragma(w->db, pragmas[i]) != SQLITE_OK)
            return -1;
    }
    return 0;
}

/* The read connection opens after the writer made the file a WAL database. */
static int open_reader(struct writer *w)
{
    int flags = SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX;
    int rc = sqlite3_open_v2(w->cfg.db_path, &w->rdb, flags, NULL);

    if (rc != SQLITE_OK) {
        log_error("open %s read-only failed: %s", w->cfg.db_path,
                  w->rdb ? sqlite3_errmsg(w->rdb) : sqlite3_errstr(rc));
        return -1;
    }
    sqlite3_extended_result_codes(w->rdb, 1);
    sqlite3_progress_handler(w->rdb, 1000, progress_cb, w);
    if (authz_install(w->rdb, &w->raz) != 0) {
        log_error("install authorizer failed: %s", sqlite3_errmsg(w->rdb));
        return -1;
    }
    return 0;
}

static int prepare_ctl(struct writer *w)
{
    for (int i = 0; i < CTL_COUNT; i++) {
        if (sqlite3_prepare_v3(w->db, ctl_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &w->ctl[i],
                               NULL) != SQLITE_OK) {
            log_error("prepare %s failed: %s", ctl_sql[i], sqlite3_errmsg(w->db));
            return -1;
        }
    }
    return 0;
}

static void close_reader(struct writer *w)
{
    if (w->raz)
        authz_free(w->rdb, w->raz);
    w->raz = NULL;
    if (w->rdb && sqlite3_close(w->rdb) != SQLITE_OK)
        log_error("close read connection failed: %s", sqlite3_errmsg(w->rdb));
    w->rdb = NULL;
}

static void close_db(struct writer *w)
{
    close_reader(w);
    for (int i = 0; i < CTL_COUNT; i++)
        sqlite3_finalize(w->ctl[i]);
    if (w->cap)
        capture_close(w->cap);
    if (w->az)
        authz_free(w->db, w->az);
    if (w->db && sqlite3_close(w->db) != SQLITE_OK)
        log_error("close database failed: %s", sqlite3_errmsg(w->db));
    w->db = NULL;
}

/* ---- results ----------------------------------------------------------------*/

static void job_clear_results(struct writer_job *job)
{
    for (size_t i = 0; i < job->n_results; i++)
        protobuf_c_message_free_unpacked(&job->results[i]->base, NULL);
    free(job->results);
    job->results = NULL;
    job->n_results = 0;
    job->failed = 0;
    job->wrote = 0;
}

static void job_add_result(struct writer_job *job, Boomerang__V1__StatementResult *r)
{
    job->results = xrealloc(job->results, (job->n_results + 1) * sizeof(*job->results));
    job->results[job->n_results++] = r;
}

static void job_fail(struct writer_job *job, enum grpc_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void job_fail(struct writer_job *job, enum grpc_status status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    job_clear_results(job);
    job->status = status;
    free(job->status_msg);
    job->status_msg = xstrdup(msg);
}

/* Run one statement under the statement deadline; rewrite the message of a
 * timeout so the client learns why. read: on the read-only connection. */
static int run_statement(struct writer *w, struct writer_job *job, Boomerang__V1__Statement *st,
                         int read)
{
    Boomerang__V1__StatementResult *r;
    int rc, ro = 1;

    w->stmt_deadline_us = mono_us() + w->cfg.statement_timeout_ms * 1000;
    rc = exec_statement(read ? w->rdb : w->db, read ? w->raz : w->az, st, &w->limits, &r, &ro);
    if (rc == SQLITE_OK && !ro)
        job->wrote = 1;
    if (rc == SQLITE_INTERRUPT && mono_us() > w->stmt_deadline_us) {
        char msg[96];
        snprintf(msg, sizeof(msg), "statement timed out after %" PRId64 " ms",
                 w->cfg.statement_timeout_ms);
        free(r->error->message);
        r->error->message = xstrdup(msg);
    }
    w->stmt_deadline_us = 0;
    job_add_result(job, r);
    return rc;
}

/* Run the job's statements, stopping at the first error; the ones after it
 * get a SKIPPED result. Returns 0 if every statement succeeded. */
static int run_statements_on(struct writer *w, struct writer_job *job, int read)
{
    Boomerang__V1__ExecuteRequest *req = job->req;
    size_t i;

    for (i = 0; i < req->n_statements; i++) {
        if (run_statement(w, job, req->statements[i], read) != SQLITE_OK)
            break;
    }
    if (i == req->n_statements)
        return 0;
    for (i++; i < req->n_statements; i++)
        job_add_result(job,
                       exec_error_result("SKIPPED", 0, "not run: an earlier statement failed"));
    job->failed = 1;
    return -1;
}

static int run_statements(struct writer *w, struct writer_job *job)
{
    return run_statements_on(w, job, 0);
}

/* Deferred foreign keys only surface at COMMIT, where they would fail every
 * client of the batch; check them per job instead (research/wal.md §4.2). */
static int deferred_fk_violated(struct writer *w, struct writer_job *job)
{
    int cur = 0, hi = 0;
    Boomerang__V1__StatementResult **last;

    if (sqlite3_db_status(w->db, SQLITE_DBSTATUS_DEFERRED_FKS, &cur, &hi, 0) != SQLITE_OK ||
        cur == 0)
        return 0;
    last = &job->results[job->n_results - 1];
    protobuf_c_message_free_unpacked(&(*last)->base, NULL);
    *last = exec_error_result("SQLITE_CONSTRAINT_FOREIGNKEY", SQLITE_CONSTRAINT_FOREIGNKEY,
                              "FOREIGN KEY constraint failed");
    job->failed = 1;
    return 1;
}

static void job_pack(struct writer *w, struct writer_job *job)
{
    Boomerang__V1__ExecuteResponse resp = BOOMERANG__V1__EXECUTE_RESPONSE__INIT;
    struct capture_status st;

    if (job->status != GRPC_OK || job->kind != WRITER_JOB_EXECUTE)
        return;
    capture_status(w->cap, &st);
    resp.results = job->results;
    resp.n_results = job->n_results;
    resp.txid = job->txid;
    resp.head_txid = st.head_txid;
    resp.transaction_id = w->tx.id && w->tx.conn_id == job->conn_id ? w->tx.id : 0;
    resp.in_transaction = resp.transaction_id != 0;
    job->reply_len = protobuf_c_message_get_packed_size(&resp.base);
    job->reply = xmalloc(job->reply_len);
    protobuf_c_message_pack(&resp.base, job->reply);
    job_clear_results(job);
}

/* ---- handing jobs back ----------------------------------------------------*/

static void job_done(struct writer *w, struct writer_job *job)
{
    if (w->m_requests && job->kind == WRITER_JOB_EXECUTE)
        metrics_counter_inc(w->m_requests);
    job_pack(w, job);
    job->next = NULL;
    pthread_mutex_lock(&w->done_mu);
    if (w->done_tail)
        w->done_tail->next = job;
    else
        w->done_head = job;
    w->done_tail = job;
    pthread_mutex_unlock(&w->done_mu);
    ev_async_send(w->loop, &w->done_async);
}

static void deliver_done(struct writer *w)
{
    struct writer_job *job, *next;

    pthread_mutex_lock(&w->done_mu);
    job = w->done_head;
    w->done_head = w->done_tail = NULL;
    pthread_mutex_unlock(&w->done_mu);
    for (; job; job = next) {
        next = job->next;
        job->next = NULL;
        assert(w->pending > 0);
        w->pending--;
        w->done_cb(w->done_arg, job);
    }
}

static void writer_done_async_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop;
    (void)revents;
    deliver_done(container_of(a, struct writer, done_async));
}

/* ---- group commit -----------------------------------------------------------*/

/* A job caused a rollback of the whole SQLite transaction: it keeps its
 * error, and every other job of the batch must run again. */
static void batch_reset_others(struct writer_job **jobs, size_t n, struct writer_job *culprit)
{
    culprit->final = 1;
    for (size_t i = 0; i < n; i++) {
        if (!jobs[i]->final)
            job_clear_results(jobs[i]);
    }
}

/* A commit happened: count it, with the requests it carried and how long the
 * COMMIT (the WAL fsync, and capture) took. */
static void count_commit(struct writer *w, uint64_t txid, size_t requests, int64_t started_us)
{
    if (!txid || !w->m_commits)
        return;
    metrics_counter_inc(w->m_commits);
    metrics_histogram_observe(w->m_batch, (double)requests);
    if (started_us)
        metrics_histogram_observe(w->m_commit_secs, (double)(mono_us() - started_us) / 1e6);
}

static int batch_wrote(struct writer_job **jobs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!jobs[i]->final && !jobs[i]->failed && jobs[i]->wrote)
            return 1;
    }
    return 0;
}

/* One pass: BEGIN, each job in its savepoint, COMMIT. Returns 1 if the pass
 * must be repeated (a whole-transaction rollback), 0 when done. */
static int batch_pass(struct writer *w, struct writer_job **jobs, size_t n)
{
    int rc;

    if ((rc = ctl(w, CTL_BEGIN)) != SQLITE_OK) {
        for (size_t i = 0; i < n; i++)
            if (!jobs[i]->final)
                job_fail(jobs[i], GRPC_UNAVAILABLE, "BEGIN failed: %s", sqlite3_errstr(rc));
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        struct writer_job *job = jobs[i];
        if (job->final)
            continue;
        if (ctl(w, CTL_SAVEPOINT) != SQLITE_OK)
            goto fail_batch;
        int bad = run_statements(w, job);
        if (sqlite3_get_autocommit(w->db)) {
            log_debug("batch: a job's error rolled back the transaction; re-running the others");
            batch_reset_others(jobs, n, job);
            return 1;
        }
        if (!bad)
            bad = deferred_fk_violated(w, job);
        if (bad && ctl(w, CTL_ROLLBACK_TO) != SQLITE_OK)
            goto fail_batch;
        if (ctl(w, CTL_RELEASE) != SQLITE_OK)
            goto fail_batch;
    }
    /* A savepoint rolled back leaves its pages dirty, and COMMIT would log
     * them as a transaction that changes nothing: skip it. */
    if (!batch_wrote(jobs, n))
        return ctl(w, CTL_ROLLBACK), 0;
    int64_t commit_started = mono_us();
    if ((rc = ctl(w, CTL_COMMIT)) != SQLITE_OK) {
        if (!sqlite3_get_autocommit(w->db))
            (void)ctl(w, CTL_ROLLBACK);
        for (size_t i = 0; i < n; i++)
            if (!jobs[i]->final)
                job_fail(jobs[i], GRPC_ABORTED, "commit failed: %s", sqlite3_errstr(rc));
        return 0;
    }
    uint64_t txid = capture_take_txid(w->cap);
    size_t grouped = 0;
    for (size_t i = 0; i < n; i++) {
        if (!jobs[i]->final && !jobs[i]->failed && jobs[i]->wrote) {
            jobs[i]->txid = txid;
            grouped++;
        }
    }
    count_commit(w, txid, grouped, commit_started);
    return 0;

fail_batch:
    if (!sqlite3_get_autocommit(w->db))
        (void)ctl(w, CTL_ROLLBACK);
    for (size_t i = 0; i < n; i++)
        if (!jobs[i]->final)
            job_fail(jobs[i], GRPC_INTERNAL, "savepoint failed: %s", sqlite3_errmsg(w->db));
    return 0;
}

static void run_batch(struct writer *w, struct writer_job **jobs, size_t n)
{
    while (batch_pass(w, jobs, n))
        ;
    for (size_t i = 0; i < n; i++)
        job_done(w, jobs[i]);
}

/* MODE_AUTOCOMMIT with several statements, or a VACUUM (which cannot run
 * inside a transaction): each statement commits on its own, in SQLite's
 * autocommit mode, and an error does not stop the next one. */
static void run_autocommit(struct writer *w, struct writer_job *job)
{
    Boomerang__V1__ExecuteRequest *req = job->req;

    for (size_t i = 0; i < req->n_statements; i++) {
        int vacuum = exec_first_keyword_is(req->statements[i]->sql, "VACUUM");
        authz_set_vacuum(w->az, vacuum);
        if (run_statement(w, job, req->statements[i], 0) != SQLITE_OK)
            job->failed = 1;
        authz_set_vacuum(w->az, 0);
        uint64_t txid = capture_take_txid(w->cap);
        if (txid)
            job->txid = txid;
        count_commit(w, txid, 1, 0);
    }
    job_done(w, job);
}

/* A read-only request while a transaction holds the write connection: run it
 * on the read-only connection, in one read transaction for a consistent view. */
static void run_read(struct writer *w, struct writer_job *job)
{
    int atomic = job->req->mode == BOOMERANG__V1__MODE__MODE_ATOMIC;

    authz_set_internal(w->raz, 1);
    int rc = sqlite3_exec(w->rdb, "BEGIN", NULL, NULL, NULL);
    authz_set_internal(w->raz, 0);
    if (rc != SQLITE_OK) {
        job_fail(job, GRPC_UNAVAILABLE, "BEGIN on the read connection failed: %s",
                 sqlite3_errmsg(w->rdb));
    } else if (atomic) {
        (void)run_statements_on(w, job, 1);
    } else {
        for (size_t i = 0; i < job->req->n_statements; i++)
            (void)run_statement(w, job, job->req->statements[i], 1);
    }
    authz_set_internal(w->raz, 1);
    (void)sqlite3_exec(w->rdb, "COMMIT", NULL, NULL, NULL);
    authz_set_internal(w->raz, 0);
    job_done(w, job);
}

/* ---- interactive transactions ----------------------------------------------*/

static void tx_end(struct writer *w, const char *why)
{
    if (!sqlite3_get_autocommit(w->db))
        (void)ctl(w, CTL_ROLLBACK);
    if (why)
        log_info("transaction %016" PRIx64 " rolled back: %s", w->tx.id, why);
    memset(&w->tx, 0, sizeof(w->tx));
}

/* After statements ran inside the transaction: did an error end it? */
static void tx_check_alive(struct writer *w)
{
    if (w->tx.id && sqlite3_get_autocommit(w->db)) {
        log_debug("transaction %016" PRIx64 " ended by a statement error", w->tx.id);
        memset(&w->tx, 0, sizeof(w->tx));
    }
}

static void tx_touch(struct writer *w)
{
    if (w->tx.id)
        w->tx.deadline_us = mono_us() + w->cfg.tx_timeout_ms * 1000;
}

static void run_begin(struct writer *w, struct writer_job *job)
{
    int rc = ctl(w, CTL_BEGIN);

    if (rc != SQLITE_OK) {
        job_fail(job, GRPC_UNAVAILABLE, "BEGIN failed: %s", sqlite3_errstr(rc));
        job_done(w, job);
        return;
    }
    do {
        if (RAND_bytes((unsigned char *)&w->tx.id, sizeof(w->tx.id)) != 1)
            w->tx.id = (uint64_t)mono_us() ^ ((uint64_t)rand() << 32);
    } while (w->tx.id == 0);
    w->tx.conn_id = job->conn_id;
    tx_touch(w);
    (void)run_statements(w, job);
    tx_check_alive(w);
    job_done(w, job);
}

static void run_commit(struct writer *w, struct writer_job *job)
{
    int rc;

    if (run_statements(w, job) != 0) {
        tx_check_alive(w);
        tx_touch(w);
        job_add_result(job, exec_error_result("SKIPPED", 0, "not committed: a statement failed"));
        job_done(w, job);
        return;
    }
    if (!sqlite3_get_autocommit(w->db) && (rc = ctl(w, CTL_COMMIT)) != SQLITE_OK) {
        /* e.g. a deferred foreign key: the transaction stays open, as in SQLite */
        int ext = sqlite3_extended_errcode(w->db);
        job_add_result(job, exec_error_result(sqlcode_name(ext), ext, sqlite3_errmsg(w->db)));
        tx_check_alive(w);
        tx_touch(w);
        job_done(w, job);
        return;
    }
    job_add_result(job, exec_empty_result()); /* the COMMIT's own result */
    job->txid = capture_take_txid(w->cap);
    count_commit(w, job->txid, 1, 0);
    memset(&w->tx, 0, sizeof(w->tx));
    job_done(w, job);
}

static int job_in_tx(const struct writer *w, const struct writer_job *job)
{
    return w->tx.id && job->req->transaction_id == w->tx.id && job->conn_id == w->tx.conn_id;
}

static void run_tx_job(struct writer *w, struct writer_job *job)
{
    Boomerang__V1__Mode mode = job->req->mode;

    if (!job_in_tx(w, job)) {
        job_fail(job, GRPC_FAILED_PRECONDITION,
                 "transaction %016" PRIx64 " is not open: it ended, expired after %" PRId64
                 " ms idle, or belongs to another connection",
                 job->req->transaction_id, w->cfg.tx_timeout_ms);
        job_done(w, job);
        return;
    }
    if (mode == BOOMERANG__V1__MODE__MODE_ROLLBACK) {
        tx_end(w, NULL);
        job_done(w, job);
    } else if (mode == BOOMERANG__V1__MODE__MODE_COMMIT) {
        run_commit(w, job);
    } else {
        (void)run_statements(w, job);
        tx_check_alive(w);
        tx_touch(w);
        job_done(w, job);
    }
}

/* ---- the thread -------------------------------------------------------------*/

static int job_is_tx(const struct writer_job *job)
{
    if (job->kind != WRITER_JOB_EXECUTE)
        return 0;
    Boomerang__V1__Mode m = job->req->mode;
    return m == BOOMERANG__V1__MODE__MODE_CONTINUE || m == BOOMERANG__V1__MODE__MODE_COMMIT ||
           m == BOOMERANG__V1__MODE__MODE_ROLLBACK;
}

/* Whether the job can share a group commit with others. */
static int job_groupable(const struct writer_job *job)
{
    Boomerang__V1__ExecuteRequest *req = job->req;

    if (job->kind != WRITER_JOB_EXECUTE)
        return 0;
    if (req->mode == BOOMERANG__V1__MODE__MODE_AUTOCOMMIT)
        return req->n_statements == 1 && !exec_first_keyword_is(req->statements[0]->sql, "VACUUM");
    return req->mode == BOOMERANG__V1__MODE__MODE_ATOMIC;
}

/* Pin a read snapshot between two commits: no commit can slip in between
 * the BEGIN and the status, because this thread makes every commit. */
static void run_snapshot(struct writer *w, struct writer_job *job)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_exec(job->snap_db, "BEGIN", NULL, NULL, NULL);

    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(job->snap_db, "SELECT data FROM sqlite_dbpage WHERE pgno = 1", -1,
                                &st, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW)
        rc = SQLITE_OK;
    sqlite3_finalize(st);
    if (rc != SQLITE_OK) {
        job_fail(job, GRPC_INTERNAL, "snapshot: read transaction failed: %s",
                 sqlite3_errmsg(job->snap_db));
        (void)sqlite3_exec(job->snap_db, "ROLLBACK", NULL, NULL, NULL);
    } else {
        capture_status(w->cap, &job->snap_at);
    }
    job_done(w, job);
}

static void run_one(struct writer *w, struct writer_job *job)
{
    if (job->kind == WRITER_JOB_SNAPSHOT) {
        run_snapshot(w, job);
    } else if (job->kind == WRITER_JOB_CONN_CLOSED) {
        if (w->tx.id && w->tx.conn_id == job->conn_id)
            tx_end(w, "its connection closed");
        job_done(w, job);
    } else if (job->req->mode == BOOMERANG__V1__MODE__MODE_BEGIN) {
        run_begin(w, job);
    } else if (job_is_tx(job)) {
        run_tx_job(w, job);
    } else {
        run_autocommit(w, job);
    }
}

/* Whether the job only reads; prepared once on the read connection. */
static int job_readonly(struct writer *w, struct writer_job *job)
{
    Boomerang__V1__Mode m;

    if (job->kind != WRITER_JOB_EXECUTE)
        return 0;
    m = job->req->mode;
    if (m != BOOMERANG__V1__MODE__MODE_AUTOCOMMIT && m != BOOMERANG__V1__MODE__MODE_ATOMIC)
        return 0;
    if (job->ro < 0)
        job->ro = exec_request_readonly(w->rdb, job->req);
    return job->ro;
}

/* Unlink and return the first queued job that may run while transaction
 * w->tx is open: its own requests, closes, requests naming another
 * transaction (they fail at once) and read-only requests (they run on the
 * read connection). Called with mu held. */
static struct writer_job *take_for_tx(struct writer *w)
{
    struct writer_job **pp = &w->queue_head, *prev = NULL;

    for (; *pp; prev = *pp, pp = &(*pp)->next) {
        struct writer_job *job = *pp;
        int ok = job->kind == WRITER_JOB_CONN_CLOSED || job->kind == WRITER_JOB_SNAPSHOT ||
                 (job_is_tx(job) && job->req->transaction_id != 0) || job_readonly(w, job);
        if (!ok)
            continue;
        *pp = job->next;
        if (w->queue_tail == job)
            w->queue_tail = prev;
        job->next = NULL;
        return job;
    }
    return NULL;
}

/* Take the longest groupable prefix of the queue (at most max), or the head
 * alone if it is not groupable. Called with mu held. */
static size_t take_batch(struct writer *w, struct writer_job **jobs, size_t max)
{
    size_t n = 0;

    if (!job_groupable(w->queue_head)) {
        jobs[n++] = w->queue_head;
        w->queue_head = w->queue_head->next;
    } else {
        while (n < max && w->queue_head && job_groupable(w->queue_head)) {
            jobs[n++] = w->queue_head;
            w->queue_head = w->queue_head->next;
        }
    }
    if (!w->queue_head)
        w->queue_tail = NULL;
    for (size_t i = 0; i < n; i++)
        jobs[i]->next = NULL;
    return n;
}

static void timespec_at(struct timespec *ts, int64_t mono_deadline_us)
{
    int64_t us = mono_deadline_us;
    ts->tv_sec = us / 1000000;
    ts->tv_nsec = (long)(us % 1000000) * 1000;
}

/* With a transaction open, serve it or wait for its deadline. Called and
 * returns with mu held. */
static void serve_tx(struct writer *w)
{
    struct writer_job *job = take_for_tx(w);
    struct timespec ts;

    if (job) {
        pthread_mutex_unlock(&w->mu);
        if (job_readonly(w, job))
            run_read(w, job);
        else
            run_one(w, job);
        pthread_mutex_lock(&w->mu);
        return;
    }
    if (w->stopping || mono_us() >= w->tx.deadline_us) {
        pthread_mutex_unlock(&w->mu);
        tx_end(w, w->stopping ? "the primary is shutting down" : "idle timeout");
        pthread_mutex_lock(&w->mu);
        return;
    }
    timespec_at(&ts, w->tx.deadline_us);
    (void)pthread_cond_timedwait(&w->cond, &w->mu, &ts);
}

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    size_t max = w->cfg.group_commit ? w->cfg.max_batch : 1;
    struct writer_job **jobs = xcalloc(max, sizeof(*jobs));

    pthread_mutex_lock(&w->mu);
    for (;;) {
        if (w->tx.id) {
            serve_tx(w);
            continue;
        }
        if (!w->queue_head) {
            if (w->stopping)
                break;
            pthread_cond_wait(&w->cond, &w->mu);
            continue;
        }
        size_t n = take_batch(w, jobs, max);
        pthread_mutex_unlock(&w->mu);
        if (n == 1 && !job_groupable(jobs[0]))
            run_one(w, jobs[0]);
        else
            run_batch(w, jobs, n);
        if (!w->tx.id)
            (void)capture_maybe_checkpoint(w->cap);
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    free(jobs);
    return NULL;
}

/* --init-sql: seed a new database. It runs through the authorizer like any
 * client SQL and commits as one transaction, so it is captured and logged. */
static int run_init_sql(struct writer *w)
{
    sqlite3_stmt *st;
    char *sql = NULL, *err = NULL;
    int empty, rc;

    if (sqlite3_prepare_v2(w->db, "SELECT count(*) = 0 FROM sqlite_schema", -1, &st, NULL) !=
        SQLITE_OK)
        return -1;
    empty = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (!empty)
        return 0;
    if ((rc = util_read_file(w->cfg.init_sql, 64u << 20, &sql, NULL)) != 0) {
        log_error("read %s failed: %s", w->cfg.init_sql, strerror(-rc));
        return -1;
    }
    if (ctl(w, CTL_BEGIN) != SQLITE_OK || sqlite3_exec(w->db, sql, NULL, NULL, &err) != SQLITE_OK) {
        log_error("run %s failed: %s", w->cfg.init_sql, err ? err : sqlite3_errmsg(w->db));
        sqlite3_free(err);
        free(sql);
        if (!sqlite3_get_autocommit(w->db))
            (void)ctl(w, CTL_ROLLBACK);
        return -1;
    }
    free(sql);
    if (ctl(w, CTL_COMMIT) != SQLITE_OK)
        return -1;
    log_info("initialised the database from %s (txid %" PRIu64 ")", w->cfg.init_sql,
             capture_take_txid(w->cap));
    return 0;
}

/* ---- public -----------------------------------------------------------------*/

static void apply_defaults(struct writer_config *c)
{
    if (!c->max_batch)
        c->max_batch = 512;
    if (!c->tx_timeout_ms)
        c->tx_timeout_ms = 5000;
    if (!c->statement_timeout_ms)
        c->statement_timeout_ms = 10000;
    if (!c->max_result_bytes)
        c->max_result_bytes = 16u << 20;
}

int writer_start(struct ev_loop *loop, const struct writer_config *cfg, writer_done_cb done_cb,
                 void *arg, struct writer **out)
{
    struct writer *w = xcalloc(1, sizeof(*w));

    w->cfg = *cfg;
    apply_defaults(&w->cfg);
    w->limits.max_result_bytes = w->cfg.max_result_bytes;
    w->loop = loop;
    w->done_cb = done_cb;
    w->done_arg = arg;
    w->lock_fd = -1;
    if (lock_db(w) != 0)
        goto fail_lock;
    if (open_db(w) != 0 || prepare_ctl(w) != 0)
        goto fail_db;
    if (authz_install(w->db, &w->az) != 0) {
        log_error("install authorizer failed: %s", sqlite3_errmsg(w->db));
        goto fail_db;
    }
    sqlite3_progress_handler(w->db, 1000, progress_cb, w);
    w->cfg.capture.db_path = w->cfg.db_path;
    if (capture_open(&w->cfg.capture, w->db, &w->cap) != 0)
        goto fail_db;
    if (w->cfg.init_sql && run_init_sql(w) != 0)
        goto fail_db;
    if (open_reader(w) != 0)
        goto fail_db;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* deadlines come from mono_us() */
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&w->done_mu, NULL);
    ev_async_init(&w->done_async, writer_done_async_cb);
    ev_async_start(loop, &w->done_async);
    if (pthread_create(&w->thread, NULL, writer_main, w) != 0) {
        log_error("start writer thread failed: %s", strerror(errno));
        goto fail_thread;
    }
    *out = w;
    return 0;

fail_thread:
    ev_async_stop(loop, &w->done_async);
    pthread_mutex_destroy(&w->done_mu);
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->mu);
fail_db:
    close_db(w);
    unlock_db(w);
fail_lock:
    free(w);
    return -1;
}

void writer_submit(struct writer *w, struct writer_job *job)
{
    job->next = NULL;
    job->status = GRPC_OK;
    job->ro = -1;
    w->pending++;
    pthread_mutex_lock(&w->mu);
    if (w->queue_tail)
        w->queue_tail->next = job;
    else
        w->queue_head = job;
    w->queue_tail = job;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->mu);
}

unsigned writer_pending(const struct writer *w)
{
    return w->pending;
}

void writer_status(struct writer *w, struct capture_status *out)
{
    capture_status(w->cap, out);
}

void writer_stop(struct writer *w)
{
    pthread_mutex_lock(&w->mu);
    w->stopping = 1;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    deliver_done(w);
    ev_async_stop(w->loop, &w->done_async);
    close_reader(w); /* a TRUNCATE checkpoint waits for no reader */
    if (capture_final_checkpoint(w->cap) != 0)
        log_warn("final checkpoint failed; the WAL stays and is recovered on start");
    close_db(w);
    unlock_db(w);
    pthread_mutex_destroy(&w->done_mu);
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

void writer_metrics(struct writer *w, struct metrics *m)
{
    static const double batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};

    w->m_requests = metrics_counter_new(m, "boomerang_primary_requests_total",
                                        "Execute requests the writer finished.", NULL);
    w->m_commits = metrics_counter_new(m, "boomerang_primary_commits_total",
                                       "SQLite commits, each one txid.", NULL);
    w->m_batch = metrics_histogram_new(m, "boomerang_primary_commit_requests",
                                       "Requests that share one commit (group commit batch size).",
                                       NULL, batch_bounds, ARRAY_LEN(batch_bounds));
    w->m_commit_secs =
        metrics_histogram_new(m, "boomerang_primary_commit_seconds",
                              "Time of a group COMMIT: WAL write, fsync and capture into the log.",
                              NULL, metrics_latency_buckets, METRICS_LATENCY_NBUCKETS);
}

struct replog *writer_log(struct writer *w)
{
    return capture_log(w->cap);
}

struct writer_job *writer_snapshot_job(struct sqlite3 *snap_db, void *owner)
{
    struct writer_job *job = xcalloc(1, sizeof(*job));

    job->kind = WRITER_JOB_SNAPSHOT;
    job->snap_db = snap_db;
    job->owner = owner;
    return job;
}

void writer_job_free(struct writer_job *job)
{
    if (!job)
        return;
    job_clear_results(job);
    if (job->req)
        protobuf_c_message_free_unpacked(&job->req->base, NULL);
    free(job->status_msg);
    free(job->reply);
    free(job);
}
