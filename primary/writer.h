/* boomerang: the single writer. One thread owns the primary's only write
 * connection and runs every Execute request, grouping concurrent requests
 * into one SQLite commit (group commit).
 *
 *   loop thread                 writer thread
 *   writer_submit(job) ──queue──▶ take a batch ─▶ BEGIN IMMEDIATE
 *                                 per job: SAVEPOINT, statements, RELEASE
 *                                          (or ROLLBACK TO on its error)
 *                                 COMMIT ─▶ capture (wal_hook ─▶ log) ─▶ txid
 *   done_cb(job) ◀──ev_async───── packed ExecuteResponse per job
 *
 * A client's error rolls back only its savepoint. An error that rolls back
 * the whole SQLite transaction (INSERT OR ROLLBACK, RAISE(ROLLBACK), a
 * statement timeout, SQLITE_FULL; research/wal.md §4.2) is detected with
 * sqlite3_get_autocommit(): the job that caused it keeps its error and the
 * other jobs of the batch run again. Nothing is answered before COMMIT
 * returns, and COMMIT returns only once the WAL is fsynced (synchronous=FULL).
 *
 * An interactive transaction (MODE_BEGIN) holds the write connection until it
 * commits, rolls back, its connection closes, or it idles past tx_timeout.
 * Writes from other clients wait in the queue meanwhile; read-only requests
 * run on a second, read-only connection and see the last commit. */
#ifndef BOOMERANG_WRITER_H
#define BOOMERANG_WRITER_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "common/grpc.h"
#include "common/util.h"
#include "primary/capture.h"
#include "proto/boomerang.pb-c.h"

struct writer;

enum writer_job_kind {
    WRITER_JOB_EXECUTE,     /* run req */
    WRITER_JOB_CONN_CLOSED, /* roll back conn_id's interactive transaction, if any */
    WRITER_JOB_SNAPSHOT,    /* start a read transaction on snap_db between two commits */
};

struct writer_job {
    enum writer_job_kind kind;
    uint64_t conn_id;                   /* connection the request came on */
    Boomerang__V1__ExecuteRequest *req; /* owned by the job; freed by writer_job_free */
    void *owner;                        /* the submitter's context (its call) */
    struct sqlite3 *snap_db;            /* WRITER_JOB_SNAPSHOT: the connection to pin */
    struct capture_status snap_at;      /* WRITER_JOB_SNAPSHOT: the state it sees */

    /* Set by the writer before done_cb runs. */
    enum grpc_status status; /* GRPC_OK: reply holds the packed ExecuteResponse */
    char *status_msg;        /* when status != GRPC_OK */
    uint8_t *reply;
    size_t reply_len;

    /* Private to the writer. */
    struct writer_job *next;
    Boomerang__V1__StatementResult **results;
    size_t n_results;
    uint64_t txid;
    int final;  /* outcome settled: a whole-transaction rollback it caused */
    int failed; /* a statement failed (ATOMIC: the job's effects are rolled back) */
    int wrote;  /* a statement that can write succeeded */
    int ro;     /* every statement is read-only: -1 not known yet, 0, 1 */
};

/* Runs on the loop thread for each finished job; the callee owns the job. */
typedef void (*writer_done_cb)(void *arg, struct writer_job *job);

struct writer_config {
    const char *db_path;
    int group_commit;             /* 0: one commit per request, for comparison */
    uint32_t max_batch;           /* requests per group commit, default 512 */
    int64_t tx_timeout_ms;        /* interactive transaction idle timeout, default 5000 */
    int64_t statement_timeout_ms; /* per statement, default 10000 */
    size_t max_result_bytes;      /* per statement, default 16 MiB */
    const char *init_sql;         /* SQL file run once, when the database has no schema */
    struct capture_config capture;
};

/* Open the database (creating it, WAL mode, synchronous=FULL), run capture's
 * recovery, and start the writer thread. done_cb runs on loop. Returns 0 and
 * *out, or a negative code with the reason logged. */
int MUST_CHECK writer_start(struct ev_loop *loop, const struct writer_config *cfg,
                            writer_done_cb done_cb, void *arg, struct writer **out);

/* Queue a job; the writer owns it until done_cb hands it back. */
void writer_submit(struct writer *w, struct writer_job *job);

/* Jobs submitted and not yet handed back. */
unsigned writer_pending(const struct writer *w);

/* Thread-safe copy of the replication state (head txid, database id...). */
void writer_status(struct writer *w, struct capture_status *out);

struct metrics;
/* Register the writer's series in m (commits, requests, batch sizes, commit
 * latency); the writer thread updates them. Call once, before traffic. */
void writer_metrics(struct writer *w, struct metrics *m);

/* The replication log, for readers (replog_reader_open from any thread). It
 * lives as long as the writer. */
struct replog *writer_log(struct writer *w);

/* A job that pins a consistent snapshot: the writer thread, between two
 * commits, runs BEGIN and a first read on job->snap_db (a connection of the
 * caller's, to the same database, used by no other thread meanwhile) and
 * records in job->snap_at the state that read transaction sees. On done_cb,
 * job->status is GRPC_OK or the failure (status_msg). The caller then reads
 * pages from snap_db (SELECT pgno, data FROM sqlite_dbpage) and ends the read
 * transaction itself. The caller owns snap_db. */
struct writer_job *writer_snapshot_job(struct sqlite3 *snap_db, void *owner);

/* Run what is queued, roll back an open interactive transaction, checkpoint,
 * close the database and join the thread. done_cb still runs for every job
 * (from this call). Frees w. */
void writer_stop(struct writer *w);

/* Free a job and everything it owns. */
void writer_job_free(struct writer_job *job);

#endif
