/* boomerang: apply replicated transactions and snapshots (see apply.h).
 *
 * The applier connection is a ":memory:" database with the replica attached as
 * "replica", as sqlite3_rsync does it (why: see "Never parse" below). Its
 * settings, and why (research/wal.md §1.4, §1.6):
 *  - SQLITE_DBCONFIG_DEFENSIVE off: sqlite_dbpage refuses writes otherwise.
 *  - writable_schema on (both the dbconfig and the PRAGMA): a half-written
 *    schema must never fail a statement of ours.
 *  - sqlite3_autovacuum_pages() returning 0: with auto_vacuum=FULL in the
 *    copied page 1, our COMMIT would otherwise vacuum free pages the primary
 *    kept, and the replica would drift from it.
 *  - journal_mode=WAL: readers keep their snapshot while we write.
 *  - synchronous=NORMAL: kill -9 keeps the page cache, so an unsynced WAL
 *    commit survives it; a power loss is caught at open by the checksum
 *    check against the position file (apply.h). FULL would cost an fsync per
 *    transaction (about 0.6 ms, wal.md §1.6) for nothing the stream cannot
 *    resend.
 *  - wal_autocheckpoint=0 and our own wal_hook: PASSIVE checkpoints every
 *    checkpoint_pages frames, which never wait for and never block readers.
 *  - the connection's VFS is our thin layer over the default one, which turns
 *    SQLite's many small writes to the WAL and the database into a few large
 *    ones (see "the write-combining VFS" below).
 *
 * Never parse. sqlite_dbpage replaces page images under the b-tree layer, and
 * the b-tree's parsed copy of a cached page (cell count, offsets) then goes
 * stale. A statement that checks the replica's schema cookie inside a
 * transaction that changed it reloads the schema from a half-written database
 * through those stale parses, and fails with "database disk image is
 * malformed" (found in testing: a snapshot of a small database over a larger
 * one with another cookie). So the page INSERT names its schema as a value,
 * which checks no cookie (the main database is the empty ":memory:"); nothing
 * else runs inside a transaction; the one read, the full scan at open, goes
 * through sqlite_dbpage after sqlite3_db_release_memory() dropped every cached
 * page; and the schema cookie of the committed page 1 is tracked in memory.
 *
 * A transaction writes each page through "INSERT INTO sqlite_dbpage" and, if
 * the database shrank, "INSERT ... VALUES(db_pages + 1, NULL)" as the last
 * write (any later page write would cancel the truncate, wal.md §1.4 #2).
 * The incremental checksum is updated page by page; the old hash of each page
 * it replaces is kept in an undo list so that a rollback restores it, and the
 * pages a truncate drops are only XORed out of the value compared, then
 * removed once COMMIT has succeeded. A snapshot is the same in one transaction
 * over every page, with its own checksum table that replaces ours at COMMIT.
 *
 * Schema cookies. A reader caches the schema and reloads it only when the
 * schema cookie (page 1, offset 40) changes. Within one history the primary's
 * cookie grows with each schema change, so an equal cookie means an equal
 * schema. A snapshot of another database or epoch may bring a cookie the
 * replica already had, with another schema, and a reader that cached it would
 * use its old tables' root pages over the new pages. So the replica's cookie
 * is the primary's plus a delta. The delta is 0 whenever it can be; a snapshot
 * of another history whose cookie is not above the replica's gets the delta
 * that puts it one above, so the replica's cookie only grows and no reader can
 * have cached the new value. Transactions of that history keep the delta. The
 * checksum is over the primary's bytes, and the position file records the
 * delta, so that recovery undoes it before hashing page 1. This is the only
 * way a replica page can differ from the primary's, beyond the header bytes
 * the checksum masks, and only after such a snapshot.
 *
 * The position file <replica>-boomerang/position holds two slots of 512
 * bytes, at offsets 0 and 512, written in turn (slot = seq % 2) with one
 * pwrite each, in place. Each slot is text, for operators, padded with
 * newlines:
 *
 *   boomerang-position 1 <seq>
 *   cur <id|-> <epoch> <txid> <checksum:16 hex> <page_size> <db_pages> <commit_time_us> <delta>
 *   next <same fields>
 *   sum <XXH3-64 of every byte of the slot before this line, 16 hex>
 *
 * "cur" is the committed position and "next" the one the transaction being
 * committed leads to ("-" is the empty database id, delta the schema cookie
 * delta). Every line is in the canonical form written here; anything else
 * makes the slot invalid. A write that a power loss tears only damages the
 * slot being written: the other still holds the position before it. Why not
 * write a temporary file and rename it: on ext4 replacing a file by rename
 * costs about 340 us (auto_da_alloc writes the new file's blocks out), one
 * pwrite about 3 us, and a slot with its own checksum needs no atomic
 * replacement. */
#include "replica/apply.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/log.h"
#include "common/pagesum.h"

#define APPLY_CHECKPOINT_PAGES 4000
#define APPLY_BUSY_TIMEOUT_MS                                                                      \
    100                              /* only another writer (never expected) waits: the loop       \
                                       thread must not stall (the sidecar's waits run on it) */
#define APPLY_MAX_PAGES  4294967294u /* SQLite's largest page number */
#define APPLY_SCHEMA     "replica"   /* the replica's name on the applier */
#define APPLY_COOKIE_OFF 40          /* the schema cookie, on page 1 */
#define POS_SLOT         512         /* bytes in each of the two slots */
#define POS_SUM_LEN      21          /* "sum " + 16 hex digits + "\n" */

enum apply_state { APPLY_IDLE, APPLY_TXN, APPLY_SNAPSHOT };

/* A position as the position file records it. */
struct pos_rec {
    struct apply_position p;
    uint32_t delta; /* the replica's schema cookie minus the primary's */
};

/* A page's hash before the open transaction replaced it. */
struct apply_undo {
    uint32_t pgno;
    uint64_t hash;
};

struct apply_vfs;

struct apply {
    sqlite3 *db;
    struct apply_vfs *vfs; /* the write-combining VFS of db */
    sqlite3_stmt *ins, *begin, *commit;
    char *path, *state_dir, *pos_path;
    int lock_fd, pos_fd;
    uint64_t pos_seq; /* of the last slot written */
    uint32_t checkpoint_pages;
    enum apply_state state;
    struct pos_rec pos; /* committed */
    struct pagesum sum; /* the primary's checksum of our content; page_size 0 while empty */
    uint32_t cookie;    /* the schema cookie on our committed page 1 */
    uint8_t *page1;     /* page_size bytes of scratch for page 1 */
    struct apply_stats stats;

    /* The open transaction or snapshot. */
    struct pos_rec next;     /* the position its commit records */
    uint32_t next_cookie;    /* the schema cookie it leaves */
    uint32_t next_pgno;      /* txn: the smallest pgno allowed; snapshot: the one expected */
    uint32_t old_npages;     /* txn: sum.npages at begin */
    uint32_t written;        /* pages written */
    struct apply_undo *undo; /* txn: replaced hashes */
    size_t nundo, undo_cap;
    struct pagesum snap; /* snapshot: checksum of its pages */
    int other_history;   /* snapshot: of another database id or epoch than ours */

    int wal_frames;       /* frames in the WAL at the last commit (wal_hook) */
    int wal_checkpointed; /* wal_frames at the last checkpoint */

    apply_step_cb hook;
    void *hook_arg;
};

static char *path_join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 1;
    char *p = xmalloc(n);

    snprintf(p, n, "%s%s", a, b);
    return p;
}

static void apply_step(struct apply *a, enum apply_step step)
{
    if (a->hook)
        a->hook(a->hook_arg, step);
}

static int apply_exec(struct apply *a, const char *sql)
{
    char *err = NULL;

    if (sqlite3_exec(a->db, sql, NULL, NULL, &err) == SQLITE_OK)
        return 0;
    log_error("apply: %s failed: %s", sql, err ? err : sqlite3_errmsg(a->db));
    sqlite3_free(err);
    return APPLY_ERR_SQLITE;
}

/* Step a prepared statement that returns no rows. */
static int apply_run(struct apply *a, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);

    sqlite3_reset(st);
    if (rc == SQLITE_DONE)
        return 0;
    log_error("apply: %s failed: %s", what, sqlite3_errmsg(a->db));
    return APPLY_ERR_SQLITE;
}

/* The first column of the first row of sql, as text or as an integer. */
static int apply_query(struct apply *a, const char *sql, char *text, size_t cap, int64_t *num)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(a->db, sql, -1, &st, NULL);

    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (text)
            snprintf(text, cap, "%s", (const char *)sqlite3_column_text(st, 0));
        if (num)
            *num = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    if (rc == SQLITE_ROW)
        return 0;
    log_error("apply: %s failed: %s", sql, sqlite3_errmsg(a->db));
    return APPLY_ERR_SQLITE;
}

/* --- the write-combining VFS --------------------------------------------------------- *
 *
 * SQLite appends a WAL frame with two pwrite()s, its 24-byte header and its
 * page, and a checkpoint copies each page into the database with one more;
 * on ext4 such small writes cost far more than their bytes (a page cache
 * lookup and a block reservation per call, per page touched): applying a
 * catch-up spent most of its CPU in them. So the applier's connection runs
 * on a thin VFS over the default one that gathers writes to the replica's
 * WAL and database files which follow each other in a buffer, and writes it
 * out in large pieces when
 *  - WAL: the page of a commit frame (a frame header whose "database size"
 *    field is not 0) has been added, so every commit reaches the file inside
 *    the xWrite that completes it, and an error reaches SQLite there, as it
 *    would without the buffer;
 *  - a write does not follow the buffered bytes, or the buffer is full;
 *  - any other call is made on the file (read, sync, size, truncate, lock,
 *    file control, close): SQLite never sees a file that lacks a write it made;
 *  - database: at SQLITE_FCNTL_CKPT_DONE, which a checkpoint sends after its
 *    last page and before it records in the WAL index (nBackfill) that readers
 *    may take those pages from the database;
 *  - every file: at xShmBarrier, which comes before SQLite publishes a new WAL
 *    index header, and at xShmUnmap (a safety net: the commit frame was
 *    written out already).
 * The writes reach each file in the order SQLite made them, and each one
 * before anything that tells another connection or process to read it, so
 * readers and crash recovery see what they would see without the buffer at
 * some earlier instant. SQLite ignores the result of the last three calls,
 * so a write that fails there (the database growing into a full disk during
 * a checkpoint; an I/O error) stops the process, as a kill -9 at that
 * instant would, which the replica recovers from (apply.h), rather than let
 * SQLite record pages that are not in the file. The database file is only
 * written by checkpoints, so between them its buffer is empty. */

#define VFS_BUF       (256 * 1024)
#define VFS_WRITE_MAX (64 * 1024)
#define VFS_READ      (64 * 1024)
#define VFS_WRITEBACK (1024 * 1024)
#define VFS_FRAME_HDR 24 /* a WAL frame header: pgno, commit size, salts, checksums */

struct vfs_file {
    sqlite3_file base;  /* methods: vfs_io */
    sqlite3_file *real; /* the default VFS's file, allocated right after this struct */
    struct apply_vfs *vfs;
    struct vfs_file *next; /* on vfs->files while buffered */
    const char *name;      /* buffered files: for the log (SQLite keeps it while open) */
    int wal;               /* the replica's WAL */
    int wb_fd;             /* WAL: our own descriptor, to start writeback early */
    size_t wb_pending;     /* WAL: bytes written since writeback was last started */
    uint8_t *buf;          /* NULL for files passed through */
    size_t len;            /* bytes in buf */
    sqlite3_int64 off;     /* file offset of buf[0] */
    int commit_next;       /* WAL: the last write was a commit frame's header */
    uint8_t *rbuf;         /* WAL: read ahead (VFS_READ bytes) */
    size_t rlen;           /* bytes valid in rbuf, 0 if none */
    sqlite3_int64 roff;    /* file offset of rbuf[0] */
};

struct apply_vfs {
    sqlite3_vfs base; /* a copy of the default VFS with our xOpen */
    sqlite3_vfs *real;
    struct vfs_file *files;
    char name[48];
};

/* The default VFS's file sits after ours, aligned. */
#define VFS_FILE_SIZE ((sizeof(struct vfs_file) + 15) & ~(size_t)15)
#define REAL(f)       (((struct vfs_file *)(f))->real)

/* With synchronous=NORMAL, WAL pages stay dirty until a checkpoint's fsync
 * writes them all at once, while the apply loop waits. Starting their
 * writeback every VFS_WRITEBACK bytes (sync_file_range, which does not wait
 * for it, and neither makes nor promises anything durable) leaves that fsync
 * little to do. Our own descriptor is safe to close: SQLite takes no POSIX
 * locks on the WAL file, only on the database and the -shm file. */
static void vfs_writeback(struct vfs_file *f, size_t n)
{
    f->wb_pending += n;
    if (f->wb_fd < 0 || f->wb_pending < VFS_WRITEBACK)
        return;
    f->wb_pending = 0;
    (void)sync_file_range(f->wb_fd, 0, 0, SYNC_FILE_RANGE_WRITE); /* a hint */
}

/* Write the buffer out, in pieces the unix VFS takes whole (it writes at
 * most 128 KiB - 1 bytes per pwrite). */
static int vfs_flush(struct vfs_file *f)
{
    int rc = SQLITE_OK;

    for (size_t done = 0; done < f->len && rc == SQLITE_OK; done += VFS_WRITE_MAX) {
        size_t n = MIN(f->len - done, (size_t)VFS_WRITE_MAX);

        rc =
            f->real->pMethods->xWrite(f->real, f->buf + done, (int)n, f->off + (sqlite3_int64)done);
    }
    if (rc == SQLITE_OK)
        vfs_writeback(f, f->len);
    f->len = 0;
    return rc;
}

/* Flush where SQLite cannot be told of an error (see above). */
static void vfs_flush_or_die(struct vfs_file *f)
{
    int rc = vfs_flush(f);

    if (rc == SQLITE_OK)
        return;
    log_error("apply: write %s failed: %s; stopping so that SQLite records nothing that "
              "is not in the file: the replica recovers when it starts again",
              f->name ? f->name : "replica file", sqlite3_errstr(rc));
    abort();
}

/* At a shared-memory call: flush every file, forget what was read ahead. */
static void vfs_shm_event(struct apply_vfs *v)
{
    for (struct vfs_file *f = v->files; f; f = f->next) {
        vfs_flush_or_die(f);
        f->rlen = 0;
    }
}

static int vfs_close(sqlite3_file *file)
{
    struct vfs_file *f = (struct vfs_file *)file;
    int rc = vfs_flush(f), rc2;

    for (struct vfs_file **p = &f->vfs->files; *p; p = &(*p)->next) {
        if (*p == f) {
            *p = f->next;
            break;
        }
    }
    if (f->wb_fd >= 0)
        close(f->wb_fd);
    rc2 = f->real->pMethods->xClose(f->real);
    sqlite3_free(f->buf);
    sqlite3_free(f->rbuf);
    f->buf = f->rbuf = NULL;
    return rc != SQLITE_OK ? rc : rc2;
}

/* WAL reads: a checkpoint reads the frames it copies one by one, mostly in
 * file order, so a read past the cached bytes reads VFS_READ ahead. What is
 * cached was read after our last write to the file and after the last
 * shared-memory call, which every read or write transaction and checkpoint
 * begins and ends with: while a connection holds the lock that lets it read
 * a frame, only we may write the WAL, and no writer may restart it. */
static int vfs_read(sqlite3_file *file, void *p, int n, sqlite3_int64 off)
{
    struct vfs_file *f = (struct vfs_file *)file;
    int rc = vfs_flush(f);

    if (rc != SQLITE_OK)
        return rc;
    if (!f->rbuf || n > VFS_READ)
        return f->real->pMethods->xRead(f->real, p, n, off);
    if (f->rlen == 0 || off < f->roff || off + n > f->roff + (sqlite3_int64)f->rlen) {
        f->rlen = 0;
        rc = f->real->pMethods->xRead(f->real, f->rbuf, VFS_READ, off);
        if (rc != SQLITE_OK) /* e.g. a short read near the end: read just this */
            return f->real->pMethods->xRead(f->real, p, n, off);
        f->roff = off;
        f->rlen = VFS_READ;
    }
    memcpy(p, f->rbuf + (off - f->roff), (size_t)n);
    return SQLITE_OK;
}

/* Gather n bytes at off (see above). */
static int vfs_write(sqlite3_file *file, const void *p, int n, sqlite3_int64 off)
{
    struct vfs_file *f = (struct vfs_file *)file;
    int commit = f->commit_next, rc = SQLITE_OK;

    assert(n > 0);
    f->commit_next = 0;
    f->rlen = 0;
    if (f->len > 0 && (off != f->off + (sqlite3_int64)f->len || f->len + (size_t)n > VFS_BUF))
        rc = vfs_flush(f);
    if (rc != SQLITE_OK)
        return rc;
    if (!f->buf || n > VFS_BUF)
        return f->real->pMethods->xWrite(f->real, p, n, off);
    if (f->len == 0)
        f->off = off;
    memcpy(f->buf + f->len, p, (size_t)n);
    f->len += (size_t)n;
    if (f->wal && n == VFS_FRAME_HDR)
        f->commit_next = get_be32((const uint8_t *)p + 4) != 0;
    return commit ? vfs_flush(f) : SQLITE_OK;
}

static int vfs_truncate(sqlite3_file *file, sqlite3_int64 size)
{
    int rc = vfs_flush((struct vfs_file *)file);

    ((struct vfs_file *)file)->rlen = 0;
    return rc != SQLITE_OK ? rc : REAL(file)->pMethods->xTruncate(REAL(file), size);
}

static int vfs_sync(sqlite3_file *file, int flags)
{
    int rc = vfs_flush((struct vfs_file *)file);

    return rc != SQLITE_OK ? rc : REAL(file)->pMethods->xSync(REAL(file), flags);
}

static int vfs_file_size(sqlite3_file *file, sqlite3_int64 *size)
{
    int rc = vfs_flush((struct vfs_file *)file);

    return rc != SQLITE_OK ? rc : REAL(file)->pMethods->xFileSize(REAL(file), size);
}

static int vfs_lock(sqlite3_file *file, int lock)
{
    int rc = vfs_flush((struct vfs_file *)file);

    return rc != SQLITE_OK ? rc : REAL(file)->pMethods->xLock(REAL(file), lock);
}

static int vfs_unlock(sqlite3_file *file, int lock)
{
    int rc = vfs_flush((struct vfs_file *)file);

    return rc != SQLITE_OK ? rc : REAL(file)->pMethods->xUnlock(REAL(file), lock);
}

static int vfs_check_reserved(sqlite3_file *file, int *out)
{
    return REAL(file)->pMethods->xCheckReservedLock(REAL(file), out);
}

static int vfs_file_control(sqlite3_file *file, int op, void *arg)
{
    int rc = SQLITE_OK;

    if (op == SQLITE_FCNTL_CKPT_DONE)
        vfs_flush_or_die((struct vfs_file *)file);
    else
        rc = vfs_flush((struct vfs_file *)file);

    return rc != SQLITE_OK ? rc : REAL(file)->pMethods->xFileControl(REAL(file), op, arg);
}

static int vfs_sector_size(sqlite3_file *file)
{
    return REAL(file)->pMethods->xSectorSize(REAL(file));
}

static int vfs_device(sqlite3_file *file)
{
    return REAL(file)->pMethods->xDeviceCharacteristics(REAL(file));
}

static int vfs_shm_map(sqlite3_file *file, int page, int size, int extend, void volatile **out)
{
    vfs_shm_event(((struct vfs_file *)file)->vfs);
    return REAL(file)->pMethods->xShmMap(REAL(file), page, size, extend, out);
}

static int vfs_shm_lock(sqlite3_file *file, int offset, int n, int flags)
{
    vfs_shm_event(((struct vfs_file *)file)->vfs);
    return REAL(file)->pMethods->xShmLock(REAL(file), offset, n, flags);
}

static void vfs_shm_barrier(sqlite3_file *file)
{
    vfs_shm_event(((struct vfs_file *)file)->vfs);
    REAL(file)->pMethods->xShmBarrier(REAL(file));
}

static int vfs_shm_unmap(sqlite3_file *file, int delete_flag)
{
    vfs_shm_event(((struct vfs_file *)file)->vfs);
    return REAL(file)->pMethods->xShmUnmap(REAL(file), delete_flag);
}

static int vfs_fetch(sqlite3_file *file, sqlite3_int64 off, int n, void **out)
{
    int rc = vfs_flush((struct vfs_file *)file);

    return rc != SQLITE_OK ? rc : REAL(file)->pMethods->xFetch(REAL(file), off, n, out);
}

static int vfs_unfetch(sqlite3_file *file, sqlite3_int64 off, void *p)
{
    return REAL(file)->pMethods->xUnfetch(REAL(file), off, p);
}

static const sqlite3_io_methods vfs_io = {
    .iVersion = 3,
    .xClose = vfs_close,
    .xRead = vfs_read,
    .xWrite = vfs_write,
    .xTruncate = vfs_truncate,
    .xSync = vfs_sync,
    .xFileSize = vfs_file_size,
    .xLock = vfs_lock,
    .xUnlock = vfs_unlock,
    .xCheckReservedLock = vfs_check_reserved,
    .xFileControl = vfs_file_control,
    .xSectorSize = vfs_sector_size,
    .xDeviceCharacteristics = vfs_device,
    .xShmMap = vfs_shm_map,
    .xShmLock = vfs_shm_lock,
    .xShmBarrier = vfs_shm_barrier,
    .xShmUnmap = vfs_shm_unmap,
    .xFetch = vfs_fetch,
    .xUnfetch = vfs_unfetch,
};

/* Give a WAL or database file its buffers and put it on v's list. */
static int vfs_buffer(struct apply_vfs *v, struct vfs_file *f, const char *name, int flags)
{
    f->name = name;
    f->wal = (flags & SQLITE_OPEN_WAL) != 0;
    f->wb_fd = f->wal ? open(name, O_RDONLY | O_CLOEXEC) : -1; /* -1: no early writeback */
    f->buf = sqlite3_malloc(VFS_BUF);
    if (f->wal)
        f->rbuf = sqlite3_malloc(VFS_READ);
    if (!f->buf || (f->wal && !f->rbuf))
        return SQLITE_NOMEM;
    f->next = v->files;
    v->files = f;
    return SQLITE_OK;
}

static int vfs_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *file, int flags,
                    int *out_flags)
{
    struct apply_vfs *v = (struct apply_vfs *)vfs;
    struct vfs_file *f = (struct vfs_file *)file;
    int rc;

    memset(f, 0, sizeof(*f));
    f->wb_fd = -1;
    f->real = (sqlite3_file *)((char *)f + VFS_FILE_SIZE);
    f->vfs = v;
    rc = v->real->xOpen(v->real, name, f->real, flags, out_flags);
    if (rc != SQLITE_OK) {
        /* The default VFS's file may need its close; ours has nothing open. */
        if (f->real->pMethods)
            f->real->pMethods->xClose(f->real);
        return rc;
    }
    if (f->real->pMethods->iVersion < 3)
        rc = SQLITE_CANTOPEN; /* WAL needs the shared-memory methods */
    else if (flags & (SQLITE_OPEN_WAL | SQLITE_OPEN_MAIN_DB))
        rc = vfs_buffer(v, f, name, flags);
    if (rc != SQLITE_OK) {
        sqlite3_free(f->buf);
        sqlite3_free(f->rbuf);
        if (f->wb_fd >= 0)
            close(f->wb_fd);
        f->real->pMethods->xClose(f->real);
        return rc;
    }
    f->base.pMethods = &vfs_io;
    return SQLITE_OK;
}

/* Register this apply's VFS (one per apply, so that its list of files is
 * only ever used by the apply's thread). Returns NULL if SQLite refuses. */
static struct apply_vfs *vfs_new(void)
{
    struct apply_vfs *v = xcalloc(1, sizeof(*v));

    v->real = sqlite3_vfs_find(NULL);
    if (!v->real) {
        free(v);
        return NULL;
    }
    /* The default (unix) VFS's other methods do not use their vfs argument. */
    v->base = *v->real;
    v->base.pNext = NULL;
    snprintf(v->name, sizeof(v->name), "boomerang-apply-%p", (void *)v);
    v->base.zName = v->name;
    v->base.szOsFile = (int)VFS_FILE_SIZE + v->real->szOsFile;
    v->base.xOpen = vfs_open;
    if (sqlite3_vfs_register(&v->base, 0) != SQLITE_OK) {
        free(v);
        return NULL;
    }
    return v;
}

static void vfs_free(struct apply_vfs *v)
{
    if (!v)
        return;
    assert(!v->files);
    sqlite3_vfs_unregister(&v->base);
    free(v);
}

/* --- the connection ------------------------------------------------------------------ */

/* Never let our COMMIT auto-vacuum: the primary decides which pages exist. */
static unsigned int apply_autovacuum_cb(void *arg, const char *schema, unsigned int npages,
                                        unsigned int nfree, unsigned int page_size)
{
    (void)arg, (void)schema, (void)npages, (void)nfree, (void)page_size;
    return 0;
}

static int apply_wal_cb(void *arg, sqlite3 *db, const char *schema, int frames)
{
    struct apply *a = arg;

    (void)db, (void)schema; /* only the replica has a WAL */
    a->wal_frames = frames;
    return SQLITE_OK;
}

static int apply_configure(struct apply *a)
{
    if (sqlite3_extended_result_codes(a->db, 1) != SQLITE_OK ||
        sqlite3_db_config(a->db, SQLITE_DBCONFIG_DEFENSIVE, 0, (int *)NULL) != SQLITE_OK ||
        sqlite3_db_config(a->db, SQLITE_DBCONFIG_WRITABLE_SCHEMA, 1, (int *)NULL) != SQLITE_OK ||
        sqlite3_busy_timeout(a->db, APPLY_BUSY_TIMEOUT_MS) != SQLITE_OK ||
        sqlite3_autovacuum_pages(a->db, apply_autovacuum_cb, NULL, NULL) != SQLITE_OK) {
        log_error("apply: configure %s failed: %s", a->path, sqlite3_errmsg(a->db));
        return APPLY_ERR_SQLITE;
    }
    if (apply_exec(a, "PRAGMA writable_schema=ON; PRAGMA wal_autocheckpoint=0") < 0)
        return APPLY_ERR_SQLITE;
    /* After wal_autocheckpoint, which shares the hook slot. */
    sqlite3_wal_hook(a->db, apply_wal_cb, a);
    return 0;
}

static int apply_attach(struct apply *a)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(a->db, "ATTACH DATABASE ?1 AS " APPLY_SCHEMA, -1, &st, NULL);

    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(st, 1, a->path, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc == SQLITE_DONE)
        return apply_exec(a, "PRAGMA " APPLY_SCHEMA ".synchronous=NORMAL");
    log_error("apply: open %s failed: %s", a->path, sqlite3_errmsg(a->db));
    return APPLY_ERR_SQLITE;
}

static int apply_prepare(struct apply *a)
{
    if (sqlite3_prepare_v2(a->db,
                           "INSERT INTO sqlite_dbpage(pgno, data, schema) "
                           "VALUES (?1, ?2, '" APPLY_SCHEMA "')",
                           -1, &a->ins, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(a->db, "BEGIN IMMEDIATE", -1, &a->begin, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(a->db, "COMMIT", -1, &a->commit, NULL) != SQLITE_OK) {
        log_error("apply: prepare on %s failed: %s", a->path, sqlite3_errmsg(a->db));
        return APPLY_ERR_SQLITE;
    }
    return 0;
}

/* Switch to WAL. On an empty file this writes page 1, which fixes the page
 * size, so there it waits for the first snapshot. */
static int apply_set_wal(struct apply *a)
{
    char mode[16];

    if (apply_query(a, "PRAGMA " APPLY_SCHEMA ".journal_mode=WAL", mode, sizeof(mode), NULL) < 0)
        return APPLY_ERR_SQLITE;
    if (sqlite3_stricmp(mode, "wal") == 0)
        return 0;
    log_error("apply: switch %s to WAL failed: it stays in %s mode", a->path, mode);
    return APPLY_ERR_SQLITE;
}

/* One row of the full read: pages come 1, 2, ... and page 1 sets the size.
 * The checksum takes page 1 as it is; apply_recover() corrects it for the
 * position's schema cookie delta. */
static int apply_load_page(struct apply *a, int64_t pgno, const uint8_t *data, int len)
{
    if (pgno == 1 && data && len >= 512 && len <= 65536 && (len & (len - 1)) == 0) {
        pagesum_init(&a->sum, (uint32_t)len);
        a->page1 = xrealloc(a->page1, (size_t)len);
        memcpy(a->page1, data, (size_t)len);
        a->cookie = get_be32(data + APPLY_COOKIE_OFF);
    }
    if (pgno != (int64_t)a->sum.npages + 1 || !data || a->sum.page_size == 0 ||
        (uint32_t)len != a->sum.page_size)
        return -1;
    pagesum_resize(&a->sum, (uint32_t)pgno);
    pagesum_set(&a->sum, (uint32_t)pgno, data);
    return 0;
}

/* Rebuild the checksum table from every page of the database (see "Never
 * parse"). a->page1 keeps a copy of page 1. */
static int apply_load_sum(struct apply *a)
{
    sqlite3_stmt *st;
    int rc;

    pagesum_free(&a->sum);
    memset(&a->sum, 0, sizeof(a->sum));
    a->cookie = 0;
    sqlite3_db_release_memory(a->db);
    rc = sqlite3_prepare_v2(a->db, "SELECT pgno, data FROM sqlite_dbpage('" APPLY_SCHEMA "')", -1,
                            &st, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (apply_load_page(a, sqlite3_column_int64(st, 0), sqlite3_column_blob(st, 1),
                            sqlite3_column_bytes(st, 1)) < 0)
            break;
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    sqlite3_db_release_memory(a->db);
    if (rc == SQLITE_DONE)
        return 0;
    log_error("apply: read %s failed: %s", a->path,
              rc == SQLITE_ROW ? "unexpected page" : sqlite3_errmsg(a->db));
    return APPLY_ERR_SQLITE;
}

static int apply_db_open(struct apply *a)
{
    int64_t npages = 0;
    int rc;

    a->vfs = vfs_new();
    if (!a->vfs) {
        log_error("apply: open failed: cannot register a VFS");
        return APPLY_ERR_SQLITE;
    }
    /* The attached replica uses the connection's VFS. */
    rc = sqlite3_open_v2(":memory:", &a->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                         a->vfs->name);
    if (rc != SQLITE_OK) {
        log_error("apply: open failed: %s", a->db ? sqlite3_errmsg(a->db) : sqlite3_errstr(rc));
        return APPLY_ERR_SQLITE;
    }
    rc = apply_configure(a);
    if (rc == 0)
        rc = apply_attach(a);
    if (rc == 0)
        rc = apply_query(a, "PRAGMA " APPLY_SCHEMA ".page_count", NULL, 0, &npages);
    if (rc == 0 && npages > 0)
        rc = apply_set_wal(a);
    if (rc == 0)
        rc = apply_load_sum(a);
    if (rc == 0)
        rc = apply_prepare(a);
    return rc;
}

/* --- the position file --------------------------------------------------------------- */

static int pos_format_rec(char *out, size_t cap, const char *tag, const struct pos_rec *r)
{
    const struct apply_position *p = &r->p;

    return snprintf(out, cap,
                    "%s %s %" PRIu64 " %" PRIu64 " %016" PRIx64 " %" PRIu32 " %" PRIu32 " %" PRId64
                    " %" PRIu32 "\n",
                    tag, p->database_id[0] ? p->database_id : "-", p->epoch, p->txid, p->checksum,
                    p->page_size, p->db_pages, p->commit_time_us, r->delta);
}

/* One slot: its text, then newlines up to POS_SLOT bytes. */
static void pos_format(char *out, uint64_t seq, const struct pos_rec *cur,
                       const struct pos_rec *next)
{
    size_t n = (size_t)snprintf(out, POS_SLOT, "boomerang-position 1 %" PRIu64 "\n", seq);

    n += (size_t)pos_format_rec(out + n, POS_SLOT - n, "cur", cur);
    n += (size_t)pos_format_rec(out + n, POS_SLOT - n, "next", next);
    n += (size_t)snprintf(out + n, POS_SLOT - n, "sum %016" PRIx64 "\n",
                          (uint64_t)XXH3_64bits(out, n));
    memset(out + n, '\n', POS_SLOT - n);
}

/* Whether s is a database id we can store: 1..32 printable, no spaces. */
static int pos_valid_id(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 32)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] > '~')
            return 0;
    return 1;
}

/* Parse one record line (len bytes with its newline) in canonical form. */
static int pos_parse_rec(const char *line, size_t len, const char *tag, struct pos_rec *r)
{
    char text[POS_SLOT + 1], tagbuf[8], id[40], again[POS_SLOT];
    struct apply_position *p = &r->p;

    /* sscanf needs a string; the slot is not one. */
    memcpy(text, line, len);
    text[len] = '\0';
    memset(r, 0, sizeof(*r));
    if (sscanf(text,
               "%7s %39s %" SCNu64 " %" SCNu64 " %" SCNx64 " %" SCNu32 " %" SCNu32 " %" SCNd64
               " %" SCNu32,
               tagbuf, id, &p->epoch, &p->txid, &p->checksum, &p->page_size, &p->db_pages,
               &p->commit_time_us, &r->delta) != 9)
        return -1;
    if (strcmp(tagbuf, tag) != 0 || (strcmp(id, "-") != 0 && !pos_valid_id(id)))
        return -1;
    if (strcmp(id, "-") != 0)
        memcpy(p->database_id, id, strlen(id) + 1);
    /* Anything sscanf tolerated but we never write is damage. */
    if ((size_t)pos_format_rec(again, sizeof(again), tag, r) != len || memcmp(again, text, len))
        return -1;
    return 0;
}

/* Parse a slot (POS_SLOT bytes): four lines, a valid sum, newlines after. */
static int pos_parse_slot(const char *slot, uint64_t *seq, struct pos_rec *rec)
{
    const char *line[5], *end = slot + POS_SLOT;
    char want[64], head[64];

    line[0] = slot;
    for (int i = 1; i < 5; i++) {
        const char *nl = memchr(line[i - 1], '\n', (size_t)(end - line[i - 1]));
        if (!nl)
            return -1;
        line[i] = nl + 1;
    }
    for (const char *p = line[4]; p < end; p++)
        if (*p != '\n')
            return -1;
    snprintf(want, sizeof(want), "sum %016" PRIx64 "\n",
             (uint64_t)XXH3_64bits(slot, (size_t)(line[3] - slot)));
    if ((size_t)(line[4] - line[3]) != POS_SUM_LEN || memcmp(line[3], want, POS_SUM_LEN) != 0)
        return -1;
    if ((size_t)(line[1] - slot) >= sizeof(head))
        return -1;
    memcpy(head, slot, (size_t)(line[1] - slot));
    head[line[1] - slot] = '\0';
    if (sscanf(head, "boomerang-position 1 %" SCNu64, seq) != 1)
        return -1;
    snprintf(want, sizeof(want), "boomerang-position 1 %" PRIu64 "\n", *seq);
    if (strcmp(want, head) != 0)
        return -1;
    if (pos_parse_rec(line[1], (size_t)(line[2] - line[1]), "cur", &rec[1]) != 0 ||
        pos_parse_rec(line[2], (size_t)(line[3] - line[2]), "next", &rec[0]) != 0)
        return -1;
    return 0;
}

/* Read both slots into rec[]: the newest slot first, and in each slot "next"
 * before "cur". Returns how many records, 0 if no slot is valid. */
static int pos_load(struct apply *a, struct pos_rec rec[4])
{
    char buf[2 * POS_SLOT];
    struct pos_rec slot_rec[2][2];
    uint64_t seq[2] = {0, 0};
    int ok[2], n = 0, newest;
    ssize_t got = pread(a->pos_fd, buf, sizeof(buf), 0);

    if (got < 0) {
        log_warn("apply: read %s failed: %s", a->pos_path, strerror(errno));
        return 0;
    }
    for (int i = 0; i < 2; i++)
        ok[i] = got >= (i + 1) * POS_SLOT &&
                pos_parse_slot(buf + i * POS_SLOT, &seq[i], slot_rec[i]) == 0;
    newest = ok[1] && (!ok[0] || seq[1] > seq[0]);
    for (int k = 0; k < 2; k++) {
        int i = k == 0 ? newest : !newest;

        if (!ok[i])
            continue;
        rec[n++] = slot_rec[i][0];
        rec[n++] = slot_rec[i][1];
    }
    a->pos_seq = ok[newest] ? seq[newest] : 0;
    return n;
}

/* pwrite all of buf. Returns 0 or -errno. */
static int pwrite_all(int fd, const char *buf, size_t len, off_t off)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, buf, len, off);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        buf += n, len -= (size_t)n, off += n;
    }
    return 0;
}

/* Write (a->pos, next) into the older slot. No fsync: see apply.h. */
static int pos_save(struct apply *a, const struct pos_rec *next)
{
    char slot[POS_SLOT];
    uint64_t seq = a->pos_seq + 1;
    int rc;

    pos_format(slot, seq, &a->pos, next);
    rc = pwrite_all(a->pos_fd, slot, POS_SLOT, (off_t)(seq % 2) * POS_SLOT);
    if (rc < 0) {
        log_error("apply: write %s failed: %s", a->pos_path, strerror(-rc));
        return APPLY_ERR_IO;
    }
    a->pos_seq = seq;
    return 0;
}

/* Whether the database is exactly at r: the checksum of what we read, with
 * page 1's schema cookie moved back by r's delta. Sets *h1 to that page-1
 * hash. */
static int pos_matches(struct apply *a, const struct pos_rec *r, uint64_t *h1)
{
    uint32_t ps = a->sum.page_size;
    uint8_t *copy;

    /* Every record we write has pages; an empty database has none. */
    if (ps == 0 || r->p.db_pages != a->sum.npages || r->p.page_size != ps)
        return 0;
    copy = xmalloc(ps);
    memcpy(copy, a->page1, ps);
    put_be32(copy + APPLY_COOKIE_OFF, get_be32(copy + APPLY_COOKIE_OFF) - r->delta);
    *h1 = pagesum_page(1, copy, ps);
    free(copy);
    return (a->sum.sum ^ a->sum.hash[0] ^ *h1) == r->p.checksum;
}

/* No position describes the database: no database id (the stream sends a
 * snapshot), and its real size and checksum. */
static void apply_set_unknown(struct apply *a)
{
    memset(&a->pos, 0, sizeof(a->pos));
    a->pos.p.page_size = a->sum.page_size;
    a->pos.p.db_pages = a->sum.npages;
    a->pos.p.checksum = pagesum_value(&a->sum);
}

/* The position of the database as found: see apply.h. */
static void apply_recover(struct apply *a)
{
    struct pos_rec rec[4];
    uint64_t h1 = 0;
    int n = pos_load(a, rec);

    /* Newest first: if several match, the content is that of each. */
    for (int i = 0; i < n; i++) {
        if (!pos_matches(a, &rec[i], &h1))
            continue;
        if (a->sum.npages > 0) {
            a->sum.sum ^= a->sum.hash[0] ^ h1;
            a->sum.hash[0] = h1;
        }
        a->pos = rec[i];
        return;
    }
    apply_set_unknown(a);
    if (n > 0)
        log_warn("apply: %s does not match %s (power loss, or a write outside boomerang): it "
                 "will be rebuilt from a snapshot",
                 a->pos_path, a->path);
    else if (a->sum.npages > 0)
        log_warn("apply: %s has no valid position: it will be rebuilt from a snapshot", a->path);
}

/* --- open and close ------------------------------------------------------------------ */

/* The state directory, its lock (one apply per replica) and the position
 * file, kept open for pwrite. */
static int apply_open_state(struct apply *a)
{
    char *lock_path;

    if (mkdir(a->state_dir, 0755) != 0 && errno != EEXIST) {
        log_error("apply: create %s failed: %s", a->state_dir, strerror(errno));
        return APPLY_ERR_IO;
    }
    lock_path = path_join(a->state_dir, "/lock");
    a->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    free(lock_path);
    if (a->lock_fd < 0) {
        log_error("apply: open lock in %s failed: %s", a->state_dir, strerror(errno));
        return APPLY_ERR_IO;
    }
    if (flock(a->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        int busy = errno == EWOULDBLOCK;

        log_error("apply: lock %s failed: %s", a->state_dir,
                  busy ? "another process is applying to this replica" : strerror(errno));
        return busy ? APPLY_ERR_STATE : APPLY_ERR_IO;
    }
    a->pos_fd = open(a->pos_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (a->pos_fd < 0) {
        log_error("apply: open %s failed: %s", a->pos_path, strerror(errno));
        return APPLY_ERR_IO;
    }
    return 0;
}

int apply_open(const struct apply_config *cfg, struct apply **out)
{
    struct apply *a = xcalloc(1, sizeof(*a));
    int rc;

    a->lock_fd = a->pos_fd = -1;
    a->path = xstrdup(cfg->path);
    a->state_dir = path_join(cfg->path, "-boomerang");
    a->pos_path = path_join(a->state_dir, "/position");
    a->checkpoint_pages = cfg->checkpoint_pages ? cfg->checkpoint_pages : APPLY_CHECKPOINT_PAGES;
    rc = apply_open_state(a);
    if (rc == 0)
        rc = apply_db_open(a);
    if (rc < 0) {
        apply_close(a);
        return rc;
    }
    apply_recover(a);
    log_info("apply: %s at database %s epoch %" PRIu64 " txid %" PRIu64 " (%" PRIu32 " pages)",
             a->path, a->pos.p.database_id[0] ? a->pos.p.database_id : "(none)", a->pos.p.epoch,
             a->pos.p.txid, a->pos.p.db_pages);
    *out = a;
    return 0;
}

static void apply_rollback(struct apply *a);

void apply_close(struct apply *a)
{
    if (!a)
        return;
    apply_rollback(a);
    sqlite3_finalize(a->ins);
    sqlite3_finalize(a->begin);
    sqlite3_finalize(a->commit);
    if (sqlite3_close(a->db) == SQLITE_OK)
        vfs_free(a->vfs);
    else /* the connection stays open, and keeps its VFS */
        log_error("apply: close %s failed: %s", a->path, sqlite3_errmsg(a->db));
    if (a->pos_fd >= 0)
        close(a->pos_fd);
    if (a->lock_fd >= 0)
        close(a->lock_fd);
    pagesum_free(&a->sum);
    pagesum_free(&a->snap);
    free(a->page1);
    free(a->undo);
    free(a->path);
    free(a->state_dir);
    free(a->pos_path);
    free(a);
}

void apply_position(const struct apply *a, struct apply_position *out)
{
    *out = a->pos.p;
}

void apply_stats(const struct apply *a, struct apply_stats *out)
{
    *out = a->stats;
}

void apply_test_hook(struct apply *a, apply_step_cb cb, void *arg)
{
    a->hook = cb;
    a->hook_arg = arg;
}

/* --- shared steps -------------------------------------------------------------------- */

/* Undo whatever the open transaction or snapshot did. */
static void apply_rollback(struct apply *a)
{
    if (a->state == APPLY_IDLE)
        return;
    /* Some errors (IOERR, FULL) already rolled SQLite back. */
    if (!sqlite3_get_autocommit(a->db))
        (void)apply_exec(a, "ROLLBACK");
    if (a->state == APPLY_TXN) {
        for (size_t i = a->nundo; i-- > 0;) {
            uint32_t pgno = a->undo[i].pgno;

            a->sum.sum ^= a->sum.hash[pgno - 1] ^ a->undo[i].hash;
            a->sum.hash[pgno - 1] = a->undo[i].hash;
        }
        if (a->sum.npages > a->old_npages)
            pagesum_resize(&a->sum, a->old_npages);
        a->nundo = 0;
    } else {
        pagesum_free(&a->snap);
    }
    a->state = APPLY_IDLE;
}

void apply_abort(struct apply *a)
{
    if (a->state != APPLY_IDLE)
        log_debug("apply: abort %s txid %" PRIu64,
                  a->state == APPLY_TXN ? "transaction" : "snapshot", a->next.p.txid);
    apply_rollback(a);
}

/* Fail the open transaction or snapshot with rc. */
static int apply_fail(struct apply *a, int rc)
{
    apply_rollback(a);
    return rc;
}

static int apply_state_err(struct apply *a, const char *call)
{
    static const char *const names[] = {"nothing", "a transaction", "a snapshot"};

    log_error("apply: %s failed: called with %s open", call, names[a->state]);
    return APPLY_ERR_STATE;
}

static int apply_begin(struct apply *a)
{
    int rc = apply_run(a, a->begin, "BEGIN IMMEDIATE");

    if (rc == 0)
        apply_step(a, APPLY_STEP_BEGUN);
    return rc;
}

/* Write a page, or with data NULL truncate the database before pgno. */
static int apply_write(struct apply *a, uint32_t pgno, const uint8_t *data)
{
    int rc = sqlite3_bind_int64(a->ins, 1, pgno);

    if (rc == SQLITE_OK)
        rc = data ? sqlite3_bind_blob(a->ins, 2, data, (int)a->next.p.page_size, SQLITE_STATIC)
                  : sqlite3_bind_null(a->ins, 2);
    if (rc != SQLITE_OK) {
        log_error("apply: bind page %" PRIu32 " failed: %s", pgno, sqlite3_errmsg(a->db));
        return APPLY_ERR_SQLITE;
    }
    rc = sqlite3_step(a->ins);
    sqlite3_reset(a->ins);
    if (rc == SQLITE_DONE)
        return 0;
    log_error("apply: %s page %" PRIu32 " of txid %" PRIu64 " failed: %s",
              data ? "write" : "truncate before", pgno, a->next.p.txid, sqlite3_errmsg(a->db));
    return APPLY_ERR_SQLITE;
}

/* Write one of the primary's pages; page 1 with our schema cookie. */
static int apply_write_page(struct apply *a, uint32_t pgno, const uint8_t *data)
{
    uint32_t ps = a->next.p.page_size;

    if (pgno != 1)
        return apply_write(a, pgno, data);
    a->next_cookie = get_be32(data + APPLY_COOKIE_OFF) + a->next.delta;
    if (a->next.delta == 0)
        return apply_write(a, 1, data);
    memcpy(a->page1, data, ps);
    put_be32(a->page1 + APPLY_COOKIE_OFF, a->next_cookie);
    return apply_write(a, 1, a->page1);
}

/* The page checks common to transactions and snapshots. */
static int apply_check_page(struct apply *a, uint32_t pgno, size_t len)
{
    const char *why = NULL;

    if (len != a->next.p.page_size)
        why = "wrong length";
    else if (pgno == 0 || pgno > a->next.p.db_pages)
        why = "page number out of range";
    else if (pgno == pagesum_lock_page(a->next.p.page_size))
        why = "the lock-byte page";
    if (!why)
        return 0;
    log_error("apply: page %" PRIu32 " (%zu bytes) of txid %" PRIu64 " failed: %s", pgno, len,
              a->next.p.txid, why);
    return APPLY_ERR_PAGE;
}

static int apply_mismatch(struct apply *a, uint64_t want, uint64_t got)
{
    a->stats.checksum_mismatches++;
    log_warn("apply: %s txid %" PRIu64 " failed: checksum %016" PRIx64
             " where the primary has %016" PRIx64 ": rolled back",
             a->state == APPLY_TXN ? "transaction" : "snapshot", a->next.p.txid, got, want);
    return apply_fail(a, APPLY_ERR_CHECKSUM);
}

/* Truncate (the last write) if the database has more than next's pages,
 * record the position, then COMMIT. */
static int apply_finish(struct apply *a, uint32_t cur_pages)
{
    int rc;

    if (a->next.p.db_pages < cur_pages) {
        rc = apply_write(a, a->next.p.db_pages + 1, NULL);
        if (rc < 0)
            return rc;
        apply_step(a, APPLY_STEP_TRUNCATED);
    }
    rc = pos_save(a, &a->next);
    if (rc < 0)
        return rc;
    apply_step(a, APPLY_STEP_SAVED);
    rc = apply_run(a, a->commit, "COMMIT");
    if (rc < 0)
        return rc;
    apply_step(a, APPLY_STEP_COMMITTED);
    return 0;
}

/* Every checkpoint_pages frames appended since the last checkpoint. A PASSIVE
 * checkpoint copies what no reader still needs and returns at once; when it
 * copied everything, the next commit restarts the WAL from its start. A reader
 * that pins an old snapshot holds the copy back, and then we retry only after
 * another checkpoint_pages frames rather than after every commit. SQLITE_BUSY
 * (another process is checkpointing) just means later. */
static void apply_maybe_checkpoint(struct apply *a)
{
    int frames = 0, done = 0, rc;

    if (a->wal_frames < a->wal_checkpointed)
        a->wal_checkpointed = 0; /* the WAL restarted */
    if ((uint32_t)(a->wal_frames - a->wal_checkpointed) < a->checkpoint_pages)
        return;
    a->wal_checkpointed = a->wal_frames;
    rc = sqlite3_wal_checkpoint_v2(a->db, APPLY_SCHEMA, SQLITE_CHECKPOINT_PASSIVE, &frames, &done);
    if (rc != SQLITE_OK) {
        log_debug("apply: checkpoint %s failed: %s", a->path, sqlite3_errmsg(a->db));
        return;
    }
    log_trace("apply: checkpoint copied %d of %d frames", done, frames);
    a->stats.checkpoints++;
}

/* --- transactions -------------------------------------------------------------------- */

static int apply_txn_check(struct apply *a, uint64_t txid, uint32_t db_pages, uint32_t page_size)
{
    if (a->state != APPLY_IDLE)
        return apply_state_err(a, "begin transaction");
    if (a->pos.p.database_id[0] == '\0') {
        log_error("apply: begin txid %" PRIu64 " failed: the replica has no position yet, "
                  "it needs a snapshot",
                  txid);
        return APPLY_ERR_STATE;
    }
    if (txid != a->pos.p.txid + 1) {
        log_error("apply: begin txid %" PRIu64 " failed: the replica is at txid %" PRIu64, txid,
                  a->pos.p.txid);
        return APPLY_ERR_ORDER;
    }
    if (page_size != a->pos.p.page_size || db_pages == 0 || db_pages > APPLY_MAX_PAGES) {
        log_error("apply: begin txid %" PRIu64 " failed: %" PRIu32 " pages of %" PRIu32
                  " bytes on a replica of %" PRIu32 "-byte pages",
                  txid, db_pages, page_size, a->pos.p.page_size);
        return APPLY_ERR_PAGE;
    }
    return 0;
}

int apply_txn_begin(struct apply *a, uint64_t txid, uint32_t db_pages, uint32_t page_size)
{
    int rc = apply_txn_check(a, txid, db_pages, page_size);

    if (rc == 0)
        rc = apply_begin(a);
    if (rc < 0)
        return rc;
    a->next = a->pos;
    a->next.p.txid = txid;
    a->next.p.db_pages = db_pages;
    a->next_cookie = a->cookie;
    a->old_npages = a->sum.npages;
    a->next_pgno = 1;
    a->written = 0;
    a->nundo = 0;
    if (db_pages > a->sum.npages)
        pagesum_resize(&a->sum, db_pages);
    a->state = APPLY_TXN;
    return 0;
}

static void apply_push_undo(struct apply *a, uint32_t pgno)
{
    if (a->nundo == a->undo_cap) {
        a->undo_cap = a->undo_cap ? a->undo_cap * 2 : 256;
        a->undo = xrealloc(a->undo, a->undo_cap * sizeof(a->undo[0]));
    }
    a->undo[a->nundo].pgno = pgno;
    a->undo[a->nundo].hash = a->sum.hash[pgno - 1];
    a->nundo++;
}

int apply_txn_page(struct apply *a, uint32_t pgno, const uint8_t *data, size_t len)
{
    int rc;

    if (a->state != APPLY_TXN)
        return apply_state_err(a, "transaction page");
    rc = apply_check_page(a, pgno, len);
    if (rc < 0)
        return apply_fail(a, rc);
    if (pgno < a->next_pgno) {
        log_error("apply: page %" PRIu32 " of txid %" PRIu64 " failed: after page %" PRIu32, pgno,
                  a->next.p.txid, a->next_pgno - 1);
        return apply_fail(a, APPLY_ERR_ORDER);
    }
    rc = apply_write_page(a, pgno, data);
    if (rc < 0)
        return apply_fail(a, rc);
    /* Pages past the old end leave again by the resize of a rollback. */
    if (pgno <= a->old_npages)
        apply_push_undo(a, pgno);
    pagesum_set(&a->sum, pgno, data);
    a->next_pgno = pgno + 1;
    a->written++;
    apply_step(a, APPLY_STEP_PAGE);
    return 0;
}

/* The checksum of ps cut to npages, without cutting it. */
static uint64_t sum_truncated(const struct pagesum *ps, uint32_t npages)
{
    uint64_t sum = ps->sum;

    for (uint32_t p = npages; p < ps->npages; p++)
        sum ^= ps->hash[p];
    return sum;
}

int apply_txn_commit(struct apply *a, uint64_t checksum, int64_t commit_time_us)
{
    uint64_t got;
    int rc;

    if (a->state != APPLY_TXN)
        return apply_state_err(a, "commit transaction");
    /* Growing, the database takes the size of its last page written. */
    if (a->next.p.db_pages > a->old_npages && a->next_pgno - 1 != a->next.p.db_pages) {
        log_error("apply: commit txid %" PRIu64 " failed: it grows the database to %" PRIu32
                  " pages but did not write the last one",
                  a->next.p.txid, a->next.p.db_pages);
        return apply_fail(a, APPLY_ERR_PAGE);
    }
    got = sum_truncated(&a->sum, a->next.p.db_pages);
    if (got != checksum)
        return apply_mismatch(a, checksum, got);
    a->next.p.checksum = checksum;
    a->next.p.commit_time_us = commit_time_us;
    rc = apply_finish(a, a->sum.npages);
    if (rc < 0)
        return apply_fail(a, rc);
    pagesum_resize(&a->sum, a->next.p.db_pages);
    a->pos = a->next;
    a->cookie = a->next_cookie;
    a->state = APPLY_IDLE;
    a->stats.txns++;
    a->stats.pages += a->written;
    apply_maybe_checkpoint(a);
    return 0;
}

/* --- snapshots ----------------------------------------------------------------------- */

/* The first snapshot of an empty file sets its page size, then WAL mode (which
 * writes page 1 and so fixes the size). */
static int apply_init_empty(struct apply *a, uint32_t page_size)
{
    char sql[64];
    int rc;

    snprintf(sql, sizeof(sql), "PRAGMA " APPLY_SCHEMA ".page_size=%" PRIu32, page_size);
    rc = apply_exec(a, sql);
    if (rc == 0)
        rc = apply_set_wal(a);
    if (rc == 0)
        rc = apply_load_sum(a);
    if (rc == 0 && a->sum.page_size != page_size) {
        log_error("apply: set page size of %s failed: it is %" PRIu32, a->path, a->sum.page_size);
        rc = APPLY_ERR_SQLITE;
    }
    if (rc < 0)
        return rc;
    apply_set_unknown(a);
    return 0;
}

static int apply_snapshot_check(struct apply *a, const char *database_id, uint32_t db_pages,
                                uint32_t page_size)
{
    if (a->state != APPLY_IDLE)
        return apply_state_err(a, "begin snapshot");
    if (!database_id || !pos_valid_id(database_id)) {
        log_error("apply: begin snapshot failed: invalid database id");
        return APPLY_ERR_STATE;
    }
    if (page_size < 512 || page_size > 65536 || (page_size & (page_size - 1)) != 0 ||
        db_pages == 0 || db_pages > APPLY_MAX_PAGES) {
        log_error("apply: begin snapshot failed: %" PRIu32 " pages of %" PRIu32 " bytes", db_pages,
                  page_size);
        return APPLY_ERR_PAGE;
    }
    if (a->pos.p.page_size != 0 && a->pos.p.page_size != page_size) {
        log_error("apply: begin snapshot failed: %s has %" PRIu32 "-byte pages and the "
                  "primary's database %" PRIu32 "-byte pages; a WAL database cannot change "
                  "its page size: stop the replica, delete %s, %s-wal, %s-shm and %s, and "
                  "start it again",
                  a->path, a->pos.p.page_size, page_size, a->path, a->path, a->path, a->state_dir);
        return APPLY_ERR_PAGE_SIZE;
    }
    return 0;
}

int apply_snapshot_begin(struct apply *a, const char *database_id, uint64_t epoch, uint64_t txid,
                         uint32_t db_pages, uint32_t page_size)
{
    int rc = apply_snapshot_check(a, database_id, db_pages, page_size);

    if (rc == 0 && a->pos.p.page_size == 0)
        rc = apply_init_empty(a, page_size);
    if (rc == 0)
        rc = apply_begin(a);
    if (rc < 0)
        return rc;
    a->other_history = strcmp(database_id, a->pos.p.database_id) != 0 || epoch != a->pos.p.epoch;
    memset(&a->next, 0, sizeof(a->next));
    memcpy(a->next.p.database_id, database_id, strlen(database_id) + 1);
    a->next.p.epoch = epoch;
    a->next.p.txid = txid;
    a->next.p.page_size = page_size;
    a->next.p.db_pages = db_pages;
    a->next_pgno = 1;
    a->written = 0;
    pagesum_init(&a->snap, page_size);
    pagesum_resize(&a->snap, db_pages);
    a->state = APPLY_SNAPSHOT;
    log_info("apply: snapshot of database %s epoch %" PRIu64 " at txid %" PRIu64 " (%" PRIu32
             " pages) begins",
             database_id, epoch, txid, db_pages);
    return 0;
}

/* The schema cookie delta of a snapshot whose page 1 is data: see "Schema
 * cookies". Unsigned order: 2^32 schema changes are out of reach. */
static uint32_t apply_snapshot_delta(const struct apply *a, const uint8_t *data)
{
    uint32_t theirs = get_be32(data + APPLY_COOKIE_OFF);
    uint32_t delta = a->other_history ? 0 : a->pos.delta;
    uint32_t ours = theirs + delta;

    if (ours < a->cookie || (ours == a->cookie && a->other_history))
        delta = a->cookie + 1 - theirs;
    return delta;
}

int apply_snapshot_page(struct apply *a, uint32_t pgno, const uint8_t *data, size_t len)
{
    int rc;

    if (a->state != APPLY_SNAPSHOT)
        return apply_state_err(a, "snapshot page");
    rc = apply_check_page(a, pgno, len);
    if (rc < 0)
        return apply_fail(a, rc);
    if (pgno != a->next_pgno) {
        log_error("apply: snapshot page %" PRIu32 " failed: page %" PRIu32 " comes first", pgno,
                  a->next_pgno);
        return apply_fail(a, APPLY_ERR_ORDER);
    }
    if (pgno == 1)
        a->next.delta = apply_snapshot_delta(a, data);
    rc = apply_write_page(a, pgno, data);
    if (rc < 0)
        return apply_fail(a, rc);
    pagesum_set(&a->snap, pgno, data);
    a->next_pgno = pgno + 1;
    if (a->next_pgno == pagesum_lock_page(a->next.p.page_size))
        a->next_pgno++;
    a->written++;
    apply_step(a, APPLY_STEP_PAGE);
    return 0;
}

int apply_snapshot_commit(struct apply *a, uint64_t checksum, int64_t commit_time_us)
{
    int rc;

    if (a->state != APPLY_SNAPSHOT)
        return apply_state_err(a, "commit snapshot");
    if (a->next_pgno <= a->next.p.db_pages) {
        log_error("apply: commit snapshot failed: it ended before page %" PRIu32 " of %" PRIu32,
                  a->next_pgno, a->next.p.db_pages);
        return apply_fail(a, APPLY_ERR_ORDER);
    }
    if (pagesum_value(&a->snap) != checksum)
        return apply_mismatch(a, checksum, pagesum_value(&a->snap));
    a->next.p.checksum = checksum;
    a->next.p.commit_time_us = commit_time_us;
    rc = apply_finish(a, a->sum.npages);
    if (rc < 0)
        return apply_fail(a, rc);
    pagesum_free(&a->sum);
    a->sum = a->snap;
    memset(&a->snap, 0, sizeof(a->snap));
    a->pos = a->next;
    a->cookie = a->next_cookie;
    a->state = APPLY_IDLE;
    a->stats.snapshots++;
    a->stats.pages += a->written;
    log_info("apply: snapshot of database %s at txid %" PRIu64
             " applied (schema cookie delta %" PRIu32 ")",
             a->pos.p.database_id, a->pos.p.txid, a->pos.delta);
    apply_maybe_checkpoint(a);
    return 0;
}
