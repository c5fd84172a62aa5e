/* boomerang: capture of committed transactions into the replication log.
 *
 * capture owns everything between "SQLite committed" and "the transaction is
 * in the replication log with its txid": the wal_hook, the WAL frame reader
 * (walcap), the database checksum (pagesum), the log (replog) and the
 * database identity (database id and epoch, kept in <db>-boomerang/meta).
 *
 *   COMMIT ─▶ wal_hook ─▶ walcap reads frames mxFrame_old+1..mxFrame, checks
 *   salts and checksum chain, splits at commit frames ─▶ per commit: pages
 *   sorted, pagesum updated, replog_append(txid = head+1) ─▶ head published
 *
 * Durability: SQLite runs with synchronous=FULL, so a commit's frames are on
 * disk before the hook runs. The log is appended (write(), no fsync) in the
 * hook; it is fsynced before every checkpoint, so only logged frames ever
 * leave the WAL. After a crash, capture_open() re-reads the WAL and appends
 * the commits that never reached the log ("recovery"), so the log always
 * equals the committed history.
 *
 * A failure after SQLite has committed cannot be reported to the client as a
 * failure (the write happened), so capture logs it and exits the process with
 * status 99; the restart recovers from the WAL (LiteFS does the same).
 *
 * Threading: every function runs on the writer thread that owns the sqlite3
 * connection, except capture_status(), which any thread may call. */
#ifndef BOOMERANG_CAPTURE_H
#define BOOMERANG_CAPTURE_H

#include <sqlite3.h>
#include <stdint.h>

#include "common/util.h"

struct capture;
struct replog;

/* Error codes of capture_open() and the checkpoint functions. */
enum capture_err {
    CAPTURE_ERR_SQLITE = -1, /* a SQLite call failed */
    CAPTURE_ERR_IO = -2,     /* reading the database or WAL, or the log or meta files */
    CAPTURE_ERR_STATE = -3,  /* the connection is not in WAL mode with synchronous=FULL,
                                the state files are damaged, or SQLite's page size does
                                not match the files */
};

struct capture_config {
    const char *db_path;        /* the database file; its WAL is db_path + "-wal" */
    const char *state_dir;      /* meta and log/ live here; default db_path + "-boomerang" */
    uint64_t retain_bytes;      /* log retention (--log-retain-mb), 0 = default 256 MiB */
    uint32_t checkpoint_frames; /* checkpoint when the WAL holds this many frames; 0 = 1000 */
};

/* A snapshot of the published state. */
struct capture_status {
    char database_id[33]; /* 32 hex digits */
    uint64_t epoch;
    uint64_t head_txid;  /* last logged commit (0: none since the epoch began) */
    uint64_t first_txid; /* oldest txid still in the log (0: log empty) */
    uint32_t page_size;
    uint32_t db_pages;
    uint64_t checksum;    /* database checksum at head_txid */
    int64_t head_time_us; /* primary clock at the head commit */
    uint64_t log_bytes;   /* bytes the log holds on disk */
};

/* Open (or create) the state for the database that `db` has open in WAL mode
 * with synchronous=FULL and wal_autocheckpoint=0, recover unlogged commits from
 * the WAL, and install the wal_hook on db (so call it after the last PRAGMA).
 * If the database no longer matches the log (changed or replaced outside
 * boomerang), the epoch is bumped and the old log moved to log.old (a
 * warning is logged); a state directory without meta starts a new database
 * id. Reads the whole database file once (to build its checksum). Returns 0
 * and *out, or CAPTURE_ERR_SQLITE, CAPTURE_ERR_IO or CAPTURE_ERR_STATE; the
 * reason is logged. */
int MUST_CHECK capture_open(const struct capture_config *cfg, sqlite3 *db, struct capture **out);

/* The txid of the commit the connection made since the last call, or 0 if it
 * wrote nothing. Call after each COMMIT that was stepped to SQLITE_DONE. */
uint64_t capture_take_txid(struct capture *cap);

/* Between batches: if the WAL has grown past the threshold, fsync the log and
 * run a PASSIVE checkpoint, then delete log segments beyond the retention.
 * Returns 0 or a negative code (logged): CAPTURE_ERR_SQLITE if the checkpoint
 * failed (try again later), CAPTURE_ERR_IO if pruning failed. A commit whose
 * hook SQLite has not run yet is logged first; failing to log it, or to fsync
 * the log, exits with 99 like a failure in the hook. */
int capture_maybe_checkpoint(struct capture *cap);

/* On shutdown: fsync the log, then checkpoint with TRUNCATE (which waits on
 * the busy handler and fails with CAPTURE_ERR_SQLITE while readers hold old
 * snapshots). Same return codes as capture_maybe_checkpoint(). */
int capture_final_checkpoint(struct capture *cap);

/* Thread-safe copy of the published state. */
void capture_status(struct capture *cap, struct capture_status *out);

/* Remove the hook, fsync the log and free. The sqlite3 connection stays open. */
void capture_close(struct capture *cap);

/* The replication log, for the replication stream: open readers on it from
 * any thread (primary/replog.h) while the writer appends. Owned by cap; valid
 * until capture_close(). The log only ever gains records on the writer
 * thread, inside the wal_hook, before capture_take_txid() returns their txid,
 * so a commit's txid is readable from the log as soon as the writer has it. */
struct replog *capture_log(struct capture *cap);

/* Test hook: while on, the wal_hook still reads each commit but skips the log
 * append and leaves the head where it was, as if the process had died right
 * after SQLite's commit. Only for crash tests, which must then end the process
 * without a checkpoint or capture_close(); the next capture_open() must
 * recover those commits from the WAL. */
void capture_test_skip_append(struct capture *cap, int on);

#endif
