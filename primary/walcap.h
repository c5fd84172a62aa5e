/* boomerang: reader of a database's -wal file, split into committed
 * transactions.
 *
 * The primary's wal_hook calls walcap_poll() with SQLite's mxFrame after each
 * commit; walcap reads the new frames, checks salts and the checksum chain,
 * splits them at commit frames and hands each committed transaction to a
 * callback: the database size after the commit and its distinct pages, sorted
 * by pgno (the latest frame of a page wins; pages past the new end of the
 * database are dropped). At start-up, walcap_scan() walks the whole WAL the way
 * SQLite's own recovery does. The WAL format is documented in walcap.c.
 *
 * A walcap belongs to one thread (the writer's). */
#ifndef BOOMERANG_WALCAP_H
#define BOOMERANG_WALCAP_H

#include <stdint.h>

#include "common/util.h"

enum walcap_err {
    WALCAP_ERR_IO = -1,      /* a read of the -wal file failed (logged) */
    WALCAP_ERR_CORRUPT = -2, /* a frame SQLite calls committed fails validation (logged) */
};

struct walcap;

/* One committed transaction, valid only during the callback. */
struct walcap_txn {
    uint32_t page_size;
    uint32_t db_pages;     /* database size in pages after the commit */
    uint32_t npages;       /* number of distinct pages, each <= db_pages */
    const uint32_t *pgno;  /* npages page numbers, strictly ascending */
    uint32_t salt1, salt2; /* the WAL generation the commit lives in */
    uint32_t commit_frame; /* 1-based index of its commit frame in that WAL */
};

/* Called once per committed transaction, in commit order. Return 0 to go on;
 * a negative value stops the walk and is returned by walcap_poll/scan. */
typedef int (*walcap_txn_cb)(void *arg, struct walcap *w, const struct walcap_txn *txn);

/* Prepare to read db_path + "-wal" (opened lazily: the file may not exist
 * yet). Never fails; free with walcap_close(). */
struct walcap *walcap_open(const char *db_path);
void walcap_close(struct walcap *w);

/* Expect SQLite's sector padding: with synchronous=FULL on a device without
 * SQLITE_IOCAP_POWERSAFE_OVERWRITE, SQLite repeats a transaction's commit
 * frame until the next sector_size boundary. Those repeats are checked like
 * any frame and then skipped. 0 (the default) means no padding. Set it before
 * the first scan or poll. */
void walcap_set_sector_padding(struct walcap *w, uint32_t sector_size);

/* Largest read buffer (default 16 MiB). A transaction whose frames fit is
 * served from memory; a bigger one is re-read page by page by walcap_page().
 * For tests; set before the first scan or poll. */
void walcap_set_buffer_limit(struct walcap *w, size_t bytes);

/* After a commit: read the frames after the last one seen up to nframe (the
 * hook's nFrame, i.e. mxFrame) and deliver each transaction they complete.
 * A changed WAL header (a WAL restart after a checkpoint) starts over at
 * frame 1. Frames past nframe are never read: spilled frames of a rolled back
 * transaction can carry valid checksums. An nframe at or below the last frame
 * seen is a late hook for a commit already read (by walcap_scan) and does
 * nothing. Returns 0, WALCAP_ERR_IO (no WAL file), WALCAP_ERR_CORRUPT (no
 * valid header, a bad frame at or before nframe, no commit frame at nframe,
 * or the file ends before it), or the callback's negative value. After an
 * error the walcap must be closed. */
int MUST_CHECK walcap_poll(struct walcap *w, uint32_t nframe, walcap_txn_cb cb, void *arg);

/* Walk the WAL from the last frame seen (from its header on the first call,
 * or after a WAL restart) the way SQLite's recovery does: stop at the first
 * frame that is missing or fails the salt/checksum checks, deliver every
 * transaction that ends in a commit frame before that, and ignore the frames
 * of an unfinished one. A missing or invalid WAL means no transactions. Used at
 * start-up, and before a checkpoint to catch a commit whose hook was delayed.
 * Returns 0, WALCAP_ERR_IO or the callback's negative value. */
int MUST_CHECK walcap_scan(struct walcap *w, walcap_txn_cb cb, void *arg);

/* Page i (0 <= i < txn->npages) of the transaction being delivered: *data
 * points at page_size bytes, valid until the next walcap_page() call or the
 * callback's return. Big transactions are re-read from the -wal file here.
 * Returns 0, WALCAP_ERR_IO or WALCAP_ERR_CORRUPT (the frame changed). */
int MUST_CHECK walcap_page(struct walcap *w, const struct walcap_txn *txn, uint32_t i,
                           const uint8_t **data);

/* The WAL generation read last, and the commit frame of the last transaction
 * delivered in it (0 before any). *salt1 and *salt2 are 0 when no valid WAL
 * header has been read. */
void walcap_position(const struct walcap *w, uint32_t *salt1, uint32_t *salt2, uint32_t *frame);

/* Page size of the WAL (0 when no valid header has been read). */
uint32_t walcap_page_size(const struct walcap *w);

#endif
