/* boomerang: the durable replication log.
 *
 * One record per committed transaction, with consecutive txids, in segment
 * files <dir>/<first txid as 16 hex digits>.log. The record format is
 * documented in replog.c. Appends are plain write()s; replog_sync() makes
 * them durable (capture calls it before every checkpoint, so the WAL always
 * still holds whatever the log could lose in a crash). Old segments are
 * deleted by retention, never the active one.
 *
 * Threading: open, append, sync, prune and close run on one thread (the
 * writer). replog_head(), replog_first(), replog_bytes() and the reader API may
 * be used from any thread while the writer appends; a reader sees a record
 * only once its append has returned. The log must outlive its readers. */
#ifndef BOOMERANG_REPLOG_H
#define BOOMERANG_REPLOG_H

#include <stdint.h>

#include "common/util.h"

enum replog_err {
    REPLOG_ERR_IO = -1,      /* a system call failed (logged) */
    REPLOG_ERR_CORRUPT = -2, /* a record failed validation (logged) */
    REPLOG_ERR_PRUNED = -3,  /* the txid is older than the log holds (retention) */
    REPLOG_ERR_RANGE = -4,   /* the txid is 0 or beyond head + 1 */
};

/* replog_reader_next(): the reader has caught up with the head. */
#define REPLOG_AGAIN 1

struct replog_config {
    const char *dir;        /* segment directory; created if missing */
    uint64_t base_txid;     /* head of an empty log: the next append is base_txid + 1 */
    uint64_t retain_bytes;  /* prune down to this size; 0 = 256 MiB */
    uint64_t segment_bytes; /* start a new segment past this size; 0 = min(64 MiB, retain/4) */
};

/* A record's header: one committed transaction. */
struct replog_txn {
    uint64_t txid;
    int64_t time_us;       /* primary wall clock at commit, unix µs */
    uint32_t db_pages;     /* database size in pages after the commit */
    uint32_t page_size;    /* 512..65536 */
    uint32_t npages;       /* pages in the record, <= db_pages */
    uint64_t checksum;     /* database checksum after the commit (common/pagesum.h) */
    uint32_t salt1, salt2; /* WAL generation of the commit on the primary */
    uint32_t commit_frame; /* its commit frame in that WAL */
};

struct replog;
struct replog_reader;

/* Supplies page i (0 <= i < npages) of a record being appended; *data must
 * stay valid until the next call. Return 0, or a negative code to abort the
 * append (which then returns that code). */
typedef int (*replog_page_cb)(void *arg, uint32_t i, const uint8_t **data);

/* Open (creating the directory if needed) and check the log: the newest
 * segment is read in full and a torn tail (a crash mid-append) is cut off at
 * the last whole record; a segment left with no record is deleted. Older
 * segments, synced when the log moved past them, get their first record
 * checked. Returns 0 and *out, REPLOG_ERR_IO or REPLOG_ERR_CORRUPT (an older
 * segment is damaged). */
int MUST_CHECK replog_open(const struct replog_config *cfg, struct replog **out);

/* Close files and free. Does not sync: call replog_sync() first to keep what
 * was appended. NULL is a no-op. */
void replog_close(struct replog *log);

/* Append one record. txn->txid must be replog_head() + 1 (asserted), npages
 * and page_size as the record says, pgno[] strictly ascending and each
 * <= db_pages. page(arg, i, ...) supplies the pages in order, so a big
 * transaction streams through a bounded buffer. The record is visible to
 * readers when this returns 0. Returns 0, REPLOG_ERR_IO (the partial record
 * is cut off again) or page()'s negative code. */
int MUST_CHECK replog_append(struct replog *log, const struct replog_txn *txn, const uint32_t *pgno,
                             replog_page_cb page, void *arg);

/* replog_append() with the pages in an array of pointers. */
int MUST_CHECK replog_append_pages(struct replog *log, const struct replog_txn *txn,
                                   const uint32_t *pgno, const uint8_t *const *pages);

/* fdatasync the active segment and, if a segment was created since, the
 * directory. A no-op when nothing was appended since the last sync. Returns 0
 * or REPLOG_ERR_IO. After a failed sync the caller must not assume any
 * unsynced record is durable, even if a later sync succeeds. */
int MUST_CHECK replog_sync(struct replog *log);

/* Delete the oldest whole segments while the log is larger than the
 * retention, never the active one. Readers inside a deleted segment finish
 * it; later opens at its txids get REPLOG_ERR_PRUNED. Returns 0 or
 * REPLOG_ERR_IO. */
int MUST_CHECK replog_prune(struct replog *log);

/* The last txid in the log (base_txid while it is empty). Thread-safe. */
uint64_t replog_head(struct replog *log);
/* The oldest txid in the log, or 0 when it is empty. Thread-safe. */
uint64_t replog_first(struct replog *log);
/* Bytes the segments hold. Thread-safe. */
uint64_t replog_bytes(struct replog *log);
/* The header of the last record: returns 1 and *out, or 0 if the log is
 * empty. Writer thread. */
int replog_last(struct replog *log, struct replog_txn *out);

/* Replace directory `to` (and any segments in it) with `dir`, e.g. to move a
 * log that no longer matches the database aside; a missing `dir` just
 * removes `to`. The rename is made durable. Returns 0 or REPLOG_ERR_IO. */
int MUST_CHECK replog_retire(const char *dir, const char *to);

/* Open a reader whose first replog_reader_next() returns record txid, which
 * may be head + 1 (wait for the next append). Returns 0 and *out,
 * REPLOG_ERR_PRUNED (txid is no longer in the log: the reader needs a
 * snapshot), REPLOG_ERR_RANGE, REPLOG_ERR_IO or REPLOG_ERR_CORRUPT. */
int MUST_CHECK replog_reader_open(struct replog *log, uint64_t txid, struct replog_reader **out);

/* Read and check the next record (header, page numbers and trailer checksum)
 * into *out. Returns 0, REPLOG_AGAIN (nothing past the head yet: call again
 * after an append), REPLOG_ERR_PRUNED (the next segment was deleted),
 * REPLOG_ERR_CORRUPT or REPLOG_ERR_IO. */
int MUST_CHECK replog_reader_next(struct replog_reader *r, struct replog_txn *out);

/* Page i (0 <= i < npages) of the record the last replog_reader_next()
 * returned: *pgno and *data (page_size bytes, valid until the next call on
 * this reader). Records up to 16 MiB are served from memory, bigger ones
 * are read page by page. Returns 0, REPLOG_ERR_IO or REPLOG_ERR_CORRUPT. */
int MUST_CHECK replog_reader_page(struct replog_reader *r, uint32_t i, uint32_t *pgno,
                                  const uint8_t **data);

/* The txid the next replog_reader_next() returns. */
uint64_t replog_reader_txid(const struct replog_reader *r);

void replog_reader_close(struct replog_reader *r);

#endif
