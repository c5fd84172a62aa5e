/* boomerang: apply replicated transactions and snapshots to a replica file.
 *
 * The replica is an ordinary WAL-mode SQLite database that any process may
 * open read-only. apply owns the only write connection to it and writes pages
 * through the sqlite_dbpage virtual table, one SQLite write transaction per
 * replicated transaction (research/wal.md §1.6), so readers on other
 * connections see each transaction entirely or not at all.
 *
 *   apply_txn_begin ─▶ BEGIN IMMEDIATE
 *   apply_txn_page  ─▶ INSERT INTO sqlite_dbpage(pgno, data) ... (pages ascending)
 *   apply_txn_commit ─▶ verify checksum ─▶ truncate to db_pages (last write)
 *                      ─▶ record the position ─▶ COMMIT
 *
 * The checksum (common/pagesum.h) is maintained incrementally from the pages
 * applied, never by rereading the database. A mismatch rolls the transaction
 * back, is logged and counted here, and returns APPLY_ERR_CHECKSUM: the caller
 * asks for a snapshot.
 *
 * Position: (database id, epoch, txid, checksum, size) lives in
 * <replica>-boomerang/position, outside the user's schema. Each write records
 * two positions, the committed one and the one being committed, after the
 * checksum check and before COMMIT; the file keeps the last two writes, each
 * with its own checksum (format in apply.c). apply_open() computes the
 * checksum of the database as it is (one read at start) and takes the record
 * that matches it: the new one if the COMMIT happened, the old one if not.
 * Checksum equality is content equality, so the position is exact after
 * kill -9 at any instant, and the incremental checksum starts from the truth,
 * not from the file.
 *
 * Durability: the applier runs synchronous=NORMAL and never fsyncs the
 * position file. kill -9 keeps the page cache, which holds both the WAL commit
 * and the position write, so nothing is lost. A power loss may drop either of
 * them; then the database matches neither record (or an older one), and
 * apply_open() reports an unknown position (database id "") so the stream
 * sends a snapshot, rather than claiming a txid the content does not have.
 *
 * Errors: every error is logged here, once, with its details. An error from
 * a call made in the right state rolls the open transaction or snapshot back:
 * nothing is applied and the position is unchanged. APPLY_ERR_STATE (a call
 * out of sequence) changes nothing. One exception: the applier gathers its
 * writes to the replica's files and writes them out in large pieces (apply.c,
 * "the write-combining VFS"); where SQLite has no way to hear of a failed write
 * (the last pages of a checkpoint, e.g. into a full disk), the process logs
 * it and aborts, as a kill -9 at that instant, which it recovers from.
 *
 * Threading: one thread (the loop) uses an apply at a time. Only one process
 * may apply to a replica at a time (a lock file in the state directory). */
#ifndef BOOMERANG_APPLY_H
#define BOOMERANG_APPLY_H

#include <stddef.h>
#include <stdint.h>

#include "common/util.h"

struct apply;

enum apply_err {
    APPLY_ERR_SQLITE = -1,    /* SQLite failed; the transaction was rolled back */
    APPLY_ERR_IO = -2,        /* the position file or state directory failed */
    APPLY_ERR_CHECKSUM = -3,  /* the result did not match the primary's checksum */
    APPLY_ERR_ORDER = -4,     /* txid is not position + 1, pages out of order, or a
                                 snapshot that ended before its last page */
    APPLY_ERR_PAGE = -5,      /* bad page size, pgno 0 or > db_pages, or the lock-byte page */
    APPLY_ERR_STATE = -6,     /* call out of sequence (e.g. a page with no open transaction),
                                 a transaction on a replica with no position, a bad
                                 database id, or the replica is in use by another apply */
    APPLY_ERR_PAGE_SIZE = -7, /* a snapshot's page size differs from the replica's; the
                                 operator must delete the replica (see apply_snapshot_begin) */
};

struct apply_config {
    const char *path;          /* the replica database; created if missing */
    uint32_t checkpoint_pages; /* passive checkpoint past this many WAL pages; 0 = 4000
                                  (16 MiB of 4 KiB pages: bounds the WAL; larger
                                  checkpoints cost fewer fsyncs per page) */
};

struct apply_position {
    char database_id[33]; /* "" for a new replica, or when the position is unknown */
    uint64_t epoch;
    uint64_t txid;      /* last applied */
    uint64_t checksum;  /* database checksum at txid */
    uint32_t page_size; /* 0 for an empty replica */
    uint32_t db_pages;
    int64_t commit_time_us; /* primary clock at txid's commit */
};

/* Open or create the replica and recover its exact position. A missing or
 * empty file stays empty (page size 0) until the first snapshot sets its page
 * size and WAL mode. A database that the position file does not describe
 * (missing or damaged file, power loss, writes from outside) gets database id
 * "" and txid 0, with its real page size, size and checksum, so the stream
 * sends a snapshot. Creates <path>-boomerang/ if needed. Returns 0 and *out
 * (free with apply_close), APPLY_ERR_SQLITE (the file cannot be opened as a
 * WAL database), APPLY_ERR_IO (the state directory, its lock or the position
 * file) or APPLY_ERR_STATE (another apply holds the replica). */
int MUST_CHECK apply_open(const struct apply_config *cfg, struct apply **out);
/* Roll back anything open and close the connection. NULL is a no-op. */
void apply_close(struct apply *a);

/* The committed position: what a Subscribe request sends. */
void apply_position(const struct apply *a, struct apply_position *out);

/* Start replicated transaction txid, which must be position.txid + 1, of a
 * database of db_pages pages of page_size bytes after it. Returns 0,
 * APPLY_ERR_STATE (another transaction or snapshot is open, or the position
 * is unknown: a snapshot must come first), APPLY_ERR_ORDER, APPLY_ERR_PAGE
 * (page_size is not the replica's, db_pages is 0 or beyond SQLite's limit) or
 * APPLY_ERR_SQLITE. */
int MUST_CHECK apply_txn_begin(struct apply *a, uint64_t txid, uint32_t db_pages,
                               uint32_t page_size);
/* A page of the open transaction: pgno ascending, 1 <= pgno <= db_pages, never
 * the lock-byte page, len == page_size. data is copied. Returns 0,
 * APPLY_ERR_STATE, APPLY_ERR_PAGE, APPLY_ERR_ORDER or APPLY_ERR_SQLITE. */
int MUST_CHECK apply_txn_page(struct apply *a, uint32_t pgno, const uint8_t *data, size_t len);
/* Verify against the primary's checksum, truncate, record the position and
 * commit. Returns 0, APPLY_ERR_STATE, APPLY_ERR_PAGE (the database grows but
 * its new last page was not written), APPLY_ERR_CHECKSUM, APPLY_ERR_IO or
 * APPLY_ERR_SQLITE; on every error nothing is applied. */
int MUST_CHECK apply_txn_commit(struct apply *a, uint64_t checksum, int64_t commit_time_us);
/* Roll back the open transaction or snapshot, if any. */
void apply_abort(struct apply *a);

/* A snapshot replaces the whole database atomically: it is one write
 * transaction, so readers see the old content until the commit, then the new.
 * Every page 1..db_pages except the lock-byte page comes, ascending, and the
 * position becomes (database_id, epoch, txid) at the commit. database_id is 1
 * to 32 printable characters without spaces. An empty replica takes the
 * snapshot's page size.
 *
 * Readers cache the schema until the schema cookie (page 1, bytes 40..43)
 * changes. So that none keeps a cached schema of the old content, a snapshot
 * of another database id or epoch whose cookie is not above the replica's is
 * stored with a larger cookie, which that history's transactions then keep;
 * the checksums stay the primary's (apply.c, "Schema cookies"). To compare a
 * replica file with its primary, mask those bytes or use apply_position().
 *
 * A replica that already has another page size (it followed another
 * database) cannot be converted in place (WAL fixes the page size), and
 * renaming a new file over it under readers of other processes corrupts their
 * view, so begin returns APPLY_ERR_PAGE_SIZE and logs that the replica must be
 * deleted. Otherwise the same return codes as the txn functions; commit
 * returns APPLY_ERR_ORDER if pages are missing. */
int MUST_CHECK apply_snapshot_begin(struct apply *a, const char *database_id, uint64_t epoch,
                                    uint64_t txid, uint32_t db_pages, uint32_t page_size);
int MUST_CHECK apply_snapshot_page(struct apply *a, uint32_t pgno, const uint8_t *data, size_t len);
int MUST_CHECK apply_snapshot_commit(struct apply *a, uint64_t checksum, int64_t commit_time_us);

/* Counters since open. pages counts the pages of committed transactions and
 * snapshots; checkpoints counts passive checkpoints that ran. */
struct apply_stats {
    uint64_t txns, pages, snapshots, checksum_mismatches;
    uint64_t checkpoints;
};
void apply_stats(const struct apply *a, struct apply_stats *out);

/* Test hook: the steps of a commit (and of a begin), for crash tests that kill
 * the process at each one. The hook runs after the step. */
enum apply_step {
    APPLY_STEP_BEGUN,     /* BEGIN IMMEDIATE done (transaction or snapshot) */
    APPLY_STEP_PAGE,      /* a page was written */
    APPLY_STEP_TRUNCATED, /* the truncate was written */
    APPLY_STEP_SAVED,     /* the position file names the new state; COMMIT is next */
    APPLY_STEP_COMMITTED, /* COMMIT returned */
};
typedef void (*apply_step_cb)(void *arg, enum apply_step step);
/* Install (or with NULL remove) the hook. */
void apply_test_hook(struct apply *a, apply_step_cb cb, void *arg);

#endif
