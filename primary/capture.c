/* boomerang: capture of committed transactions into the replication log
 * (see capture.h for the flow and the durability rules).
 *
 * Recovery at open. The database checksum is rebuilt from the raw database
 * file, then the WAL's committed transactions are replayed over it in order
 * (walcap_scan). Two facts about our own checkpoints make this replay line up
 * with the log: we checkpoint only after the log is fsynced, and we are the
 * only checkpointer, so
 *  (a) every commit at or before the WAL's backfilled point is already in the
 *      log, which means the last logged commit is at or after that point, and
 *      the replay is exact there (pages the checkpoint already copied are
 *      rewritten with the same bytes);
 *  (b) if the WAL was restarted since the last logged commit, a checkpoint
 *      copied everything up to it into the database file, and no commit came
 *      after it before the restart, so the raw file is exactly that state.
 * The last logged state (the log's last record, or the epoch's base in meta
 * when the log is empty) is found in the replay: at its commit frame when its
 * WAL salts match the WAL's, otherwise before the replay. If the checksums
 * agree there, every later WAL commit is appended with the next txids (the
 * commits that reached the WAL but not the log). If they do not, the database
 * was changed or replaced outside boomerang: the history is broken, so the
 * epoch is bumped (same database id), the old log is moved to log.old, and the
 * new epoch starts at the old head with the current content as its base.
 * A state directory without meta is a new history: a new database id, epoch 1,
 * base txid 0, and the current content as the base. */
#include "primary/capture.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/pagesum.h"
#include "primary/meta.h"
#include "primary/replog.h"
#include "primary/walcap.h"

#define CAPTURE_CHECKPOINT_FRAMES 1000
#define CAPTURE_READ_CHUNK        (4u << 20) /* raw database read size at open */
#define CAPTURE_EXIT_STATUS       99

struct capture {
    sqlite3 *db;
    char *db_path, *state_dir, *meta_path, *log_dir, *old_log_dir;
    uint64_t retain;
    uint32_t checkpoint_frames;
    struct meta meta;
    struct replog *log;
    struct walcap *wal;
    struct pagesum sum;

    /* Writer thread only. */
    uint64_t head;  /* last logged txid */
    uint64_t taken; /* txid for capture_take_txid(), 0 if none */
    int64_t head_time_us;
    uint32_t wal_frames; /* mxFrame at the last hook */
    uint32_t frames_since_checkpoint;
    int skip_append; /* capture_test_skip_append() */

    pthread_mutex_t mu; /* guards pub */
    struct capture_status pub;
};

/* Where the last logged state is, and what recovery decided about it. */
enum recovery_state { RECOVERY_SEEK, RECOVERY_APPEND, RECOVERY_DIVERGED };

struct recovery {
    struct capture *cap;
    struct replog_txn pos; /* txid, checksum and WAL place of the last logged state */
    uint64_t raw_sum;      /* checksum of the raw database file */
    enum recovery_state state;
    uint64_t found; /* the replayed checksum where pos should be */
    uint32_t appended;
    int seen; /* a WAL commit was delivered */
};

static char *path_join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 1;
    char *p = xmalloc(n);

    snprintf(p, n, "%s%s", a, b);
    return p;
}

static _Noreturn void capture_fatal(const char *what, int rc)
{
    log_error("capture: %s failed (%d) after SQLite committed: exiting with %d so that the "
              "restart recovers the commit from the WAL",
              what, rc, CAPTURE_EXIT_STATUS);
    /* _exit: other threads keep running, and atexit handlers could touch
     * what they use. Nothing is buffered: log lines are single write()s. */
    _exit(CAPTURE_EXIT_STATUS);
}

/* --- the published state ---------------------------------------------------------- */

static void capture_publish(struct capture *cap)
{
    pthread_mutex_lock(&cap->mu);
    memcpy(cap->pub.database_id, cap->meta.database_id, sizeof(cap->pub.database_id));
    cap->pub.epoch = cap->meta.epoch;
    cap->pub.head_txid = cap->head;
    cap->pub.first_txid = replog_first(cap->log);
    cap->pub.page_size = cap->sum.page_size;
    cap->pub.db_pages = cap->sum.npages;
    cap->pub.checksum = pagesum_value(&cap->sum);
    cap->pub.head_time_us = cap->head_time_us;
    cap->pub.log_bytes = replog_bytes(cap->log);
    pthread_mutex_unlock(&cap->mu);
}

void capture_status(struct capture *cap, struct capture_status *out)
{
    pthread_mutex_lock(&cap->mu);
    *out = cap->pub;
    pthread_mutex_unlock(&cap->mu);
}

uint64_t capture_take_txid(struct capture *cap)
{
    uint64_t txid = cap->taken;

    cap->taken = 0;
    return txid;
}

struct replog *capture_log(struct capture *cap)
{
    return cap->log;
}

void capture_test_skip_append(struct capture *cap, int on)
{
    cap->skip_append = on;
}

/* --- per commit ---------------------------------------------------------------- */

/* Fold a committed transaction into the database checksum. */
static int capture_apply(struct capture *cap, struct walcap *w, const struct walcap_txn *t)
{
    const uint8_t *data;
    int rc;

    if (t->page_size != cap->sum.page_size) {
        log_error("capture: apply commit failed: WAL page size %u, database %u", t->page_size,
                  cap->sum.page_size);
        return CAPTURE_ERR_STATE;
    }
    pagesum_resize(&cap->sum, t->db_pages);
    for (uint32_t i = 0; i < t->npages; i++) {
        rc = walcap_page(w, t, i, &data);
        if (rc < 0)
            return rc;
        pagesum_set(&cap->sum, t->pgno[i], data);
    }
    return 0;
}

struct page_src {
    struct walcap *w;
    const struct walcap_txn *t;
};

static int capture_page_cb(void *arg, uint32_t i, const uint8_t **data)
{
    struct page_src *src = arg;

    return walcap_page(src->w, src->t, i, data);
}

/* Append an applied commit to the log as the next txid and publish it. */
static int capture_log_commit(struct capture *cap, struct walcap *w, const struct walcap_txn *t)
{
    struct page_src src = {w, t};
    struct replog_txn rt;
    int rc;

    memset(&rt, 0, sizeof(rt));
    rt.txid = cap->head + 1;
    rt.time_us = now_us();
    rt.db_pages = t->db_pages;
    rt.page_size = t->page_size;
    rt.npages = t->npages;
    rt.checksum = pagesum_value(&cap->sum);
    rt.salt1 = t->salt1;
    rt.salt2 = t->salt2;
    rt.commit_frame = t->commit_frame;
    rc = replog_append(cap->log, &rt, t->pgno, capture_page_cb, &src);
    if (rc < 0)
        return rc;
    cap->head = rt.txid;
    cap->head_time_us = rt.time_us;
    cap->taken = rt.txid;
    capture_publish(cap);
    return 0;
}

/* walcap callback for live commits (the hook, and catch-up before a
 * checkpoint). */
static int capture_commit_cb(void *arg, struct walcap *w, const struct walcap_txn *t)
{
    struct capture *cap = arg;
    int rc = capture_apply(cap, w, t);

    if (rc < 0 || cap->skip_append)
        return rc;
    return capture_log_commit(cap, w, t);
}

static void capture_count_frames(struct capture *cap, uint32_t nframe)
{
    /* A smaller mxFrame means the WAL restarted: all its frames are new. */
    cap->frames_since_checkpoint += nframe >= cap->wal_frames ? nframe - cap->wal_frames : nframe;
    cap->wal_frames = nframe;
}

static int capture_wal_hook(void *arg, sqlite3 *db, const char *zdb, int nframe)
{
    struct capture *cap = arg;
    int rc;

    (void)db;
    if (strcmp(zdb, "main") != 0 || nframe <= 0)
        return SQLITE_OK;
    rc = walcap_poll(cap->wal, (uint32_t)nframe, capture_commit_cb, cap);
    if (rc < 0)
        capture_fatal("logging a commit", rc);
    capture_count_frames(cap, (uint32_t)nframe);
    return SQLITE_OK;
}

/* --- checkpoints ---------------------------------------------------------------- */

static int capture_checkpoint(struct capture *cap, int mode)
{
    uint64_t before = cap->head;
    int nlog = 0, nckpt = 0, rc;

    /* A commit whose wal_hook has not run yet (SQLite delays it when the
     * commit happens inside sqlite3_reset) must reach the log before the
     * checkpoint can copy it out of the WAL. */
    rc = walcap_scan(cap->wal, capture_commit_cb, cap);
    if (rc < 0)
        capture_fatal("logging a commit before a checkpoint", rc);
    if (cap->head != before)
        log_warn("capture: %" PRIu64 " commits reached the log before their wal_hook call",
                 cap->head - before);
    /* A failed fsync cannot be retried: the kernel may have dropped the dirty
     * pages and a second fsync would report success. Restart and recover the
     * records from the WAL instead, which still holds them. */
    rc = replog_sync(cap->log);
    if (rc < 0)
        capture_fatal("syncing the log", rc);
    rc = sqlite3_wal_checkpoint_v2(cap->db, "main", mode, &nlog, &nckpt);
    if (rc != SQLITE_OK) {
        log_error("capture: checkpoint failed: %s", sqlite3_errmsg(cap->db));
        return CAPTURE_ERR_SQLITE;
    }
    log_debug("capture: checkpoint copied %d of %d WAL frames", nckpt, nlog);
    cap->frames_since_checkpoint = 0;
    rc = replog_prune(cap->log);
    capture_publish(cap);
    return rc < 0 ? CAPTURE_ERR_IO : 0;
}

int capture_maybe_checkpoint(struct capture *cap)
{
    if (cap->frames_since_checkpoint < cap->checkpoint_frames)
        return 0;
    return capture_checkpoint(cap, SQLITE_CHECKPOINT_PASSIVE);
}

int capture_final_checkpoint(struct capture *cap)
{
    return capture_checkpoint(cap, SQLITE_CHECKPOINT_TRUNCATE);
}

/* --- the database at open ---------------------------------------------------------- */

static int query_int(sqlite3 *db, const char *sql, int64_t *out, char *text, size_t text_len)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *s = sqlite3_column_text(st, 0);
        *out = sqlite3_column_int64(st, 0);
        if (text)
            snprintf(text, text_len, "%s", s ? (const char *)s : "");
        rc = SQLITE_OK;
    }
    if (rc != SQLITE_OK)
        log_error("capture: query \"%s\" failed: %s", sql, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc == SQLITE_OK ? 0 : CAPTURE_ERR_SQLITE;
}

/* The connection must be what capture.h asks for. Returns the page size. */
static int capture_check_db(sqlite3 *db, uint32_t *page_size)
{
    char mode[32];
    int64_t v;

    if (query_int(db, "PRAGMA main.journal_mode", &v, mode, sizeof(mode)) < 0)
        return CAPTURE_ERR_SQLITE;
    if (strcmp(mode, "wal") != 0) {
        log_error("capture: open failed: journal_mode is %s, not wal", mode);
        return CAPTURE_ERR_STATE;
    }
    if (query_int(db, "PRAGMA main.synchronous", &v, NULL, 0) < 0)
        return CAPTURE_ERR_SQLITE;
    if (v < 2) {
        log_error("capture: open failed: synchronous is %" PRId64 ", not FULL", v);
        return CAPTURE_ERR_STATE;
    }
    if (query_int(db, "PRAGMA main.page_size", &v, NULL, 0) < 0)
        return CAPTURE_ERR_SQLITE;
    *page_size = (uint32_t)v;
    return 0;
}

/* SQLite pads commits to a sector boundary when the device does not promise
 * powersafe overwrite (wal.c, walFrames). Returns that sector size, or 0. */
static uint32_t capture_padding(sqlite3 *db)
{
    sqlite3_file *f = NULL, *j = NULL;
    int sector;

    if (sqlite3_file_control(db, "main", SQLITE_FCNTL_FILE_POINTER, &f) != SQLITE_OK || !f ||
        !f->pMethods)
        return 0;
    if (f->pMethods->xDeviceCharacteristics(f) & SQLITE_IOCAP_POWERSAFE_OVERWRITE)
        return 0;
    if (sqlite3_file_control(db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &j) == SQLITE_OK && j &&
        j->pMethods)
        f = j;
    sector = f->pMethods->xSectorSize(f);
    return sector < 32 ? 512 : sector > 65536 ? 65536 : (uint32_t)sector;
}

/* Database size in pages per the file header (fileformat2.html: offset 28 is
 * valid when non-zero and the change counter at 24 equals the
 * version-valid-for number at 92), else per the file size. */
static uint32_t db_header_pages(const uint8_t *h, int64_t file_size, uint32_t page_size)
{
    uint32_t n = get_be32(h + 28);

    if (n != 0 && get_be32(h + 24) == get_be32(h + 92))
        return n;
    return (uint32_t)(file_size / page_size);
}

/* Page size per the database header: a big-endian u16 at 16, 1 = 65536. */
static uint32_t db_header_page_size(const uint8_t *h)
{
    uint32_t v = (uint32_t)h[16] << 8 | h[17];

    return v == 1 ? 65536 : v;
}

/* Read whole pages 1..have of the file into the checksum. */
static int capture_hash_pages(struct capture *cap, sqlite3_file *f, uint32_t have)
{
    uint32_t ps = cap->sum.page_size, chunk = MAX(1, CAPTURE_READ_CHUNK / ps);
    uint8_t *buf = xmalloc((size_t)chunk * ps);
    int rc = SQLITE_OK;

    for (uint32_t p = 1; rc == SQLITE_OK && p <= have; p += chunk) {
        uint32_t n = MIN(chunk, have - p + 1);
        rc = f->pMethods->xRead(f, buf, (int)(n * ps), (sqlite3_int64)(p - 1) * ps);
        for (uint32_t i = 0; rc == SQLITE_OK && i < n; i++)
            pagesum_set(&cap->sum, p + i, buf + (size_t)i * ps);
    }
    free(buf);
    if (rc != SQLITE_OK) {
        log_error("capture: read %s failed: SQLite I/O error %d", cap->db_path, rc);
        return CAPTURE_ERR_IO;
    }
    return 0;
}

/* Checksum the raw database file (without the WAL). It is read through the
 * connection's own file handle: opening and closing a second descriptor on
 * the database would drop the process's POSIX locks on it
 * (https://sqlite.org/howtocorrupt.html, 2.2). */
static int capture_load_db(struct capture *cap)
{
    uint32_t ps = cap->sum.page_size, npages;
    sqlite3_file *f = NULL;
    sqlite3_int64 size = 0;
    uint8_t h[100];

    if (sqlite3_file_control(cap->db, "main", SQLITE_FCNTL_FILE_POINTER, &f) != SQLITE_OK || !f ||
        !f->pMethods || f->pMethods->xFileSize(f, &size) != SQLITE_OK) {
        log_error("capture: read %s failed: no file handle", cap->db_path);
        return CAPTURE_ERR_IO;
    }
    if (size < (sqlite3_int64)sizeof(h))
        return 0; /* empty: everything is in the WAL */
    if (f->pMethods->xRead(f, h, sizeof(h), 0) != SQLITE_OK) {
        log_error("capture: read %s header failed", cap->db_path);
        return CAPTURE_ERR_IO;
    }
    if (db_header_page_size(h) != ps) {
        log_error("capture: open failed: %s has page size %u, SQLite says %u", cap->db_path,
                  db_header_page_size(h), ps);
        return CAPTURE_ERR_STATE;
    }
    npages = db_header_pages(h, size, ps);
    pagesum_resize(&cap->sum, npages);
    return capture_hash_pages(cap, f, (uint32_t)MIN((sqlite3_int64)npages, size / ps));
}

/* --- recovery ---------------------------------------------------------------- */

static void recovery_decide(struct recovery *r, int match, uint64_t found)
{
    r->state = match ? RECOVERY_APPEND : RECOVERY_DIVERGED;
    r->found = found;
}

/* walcap callback at open: replay, find the last logged state, append the
 * commits after it. */
static int recovery_cb(void *arg, struct walcap *w, const struct walcap_txn *t)
{
    struct recovery *r = arg;
    struct capture *cap = r->cap;
    int same_wal = r->pos.commit_frame > 0 && t->salt1 == r->pos.salt1 && t->salt2 == r->pos.salt2;
    int rc;

    if (r->state == RECOVERY_SEEK && !r->seen && !same_wal) /* fact (b) */
        recovery_decide(r, r->raw_sum == r->pos.checksum, r->raw_sum);
    r->seen = 1;
    rc = capture_apply(cap, w, t);
    if (rc < 0)
        return rc;
    if (r->state == RECOVERY_APPEND) {
        r->appended++;
        return capture_log_commit(cap, w, t);
    }
    if (r->state == RECOVERY_SEEK && t->commit_frame >= r->pos.commit_frame) /* fact (a) */
        recovery_decide(r,
                        t->commit_frame == r->pos.commit_frame &&
                            pagesum_value(&cap->sum) == r->pos.checksum,
                        pagesum_value(&cap->sum));
    return 0;
}

/* walcap callback for a new history: the current content is the base. */
static int apply_cb(void *arg, struct walcap *w, const struct walcap_txn *t)
{
    return capture_apply(arg, w, t);
}

static int capture_open_log(struct capture *cap)
{
    struct replog_config cfg;

    memset(&cfg, 0, sizeof(cfg));
    cfg.dir = cap->log_dir;
    cfg.base_txid = cap->meta.base_txid;
    cfg.retain_bytes = cap->retain;
    return replog_open(&cfg, &cap->log) < 0 ? CAPTURE_ERR_IO : 0;
}

/* Move the log aside (to log.old, replacing an older one) and start an empty
 * one at the epoch's base. */
static int capture_reset_log(struct capture *cap)
{
    replog_close(cap->log);
    cap->log = NULL;
    if (replog_retire(cap->log_dir, cap->old_log_dir) < 0)
        return CAPTURE_ERR_IO;
    return capture_open_log(cap);
}

/* The current content and WAL place become the epoch's base. */
static void capture_set_base(struct capture *cap, struct meta *m)
{
    m->base_checksum = pagesum_value(&cap->sum);
    walcap_position(cap->wal, &m->base_salt1, &m->base_salt2, &m->base_frame);
}

/* The database left the logged history: start the next epoch at the head.
 * meta goes first: if we die before the log is moved, the next open finds a
 * log that starts at or before the base and moves it then. */
static int capture_new_epoch(struct capture *cap, const struct recovery *r)
{
    struct meta m = cap->meta;

    m.epoch++;
    m.base_txid = replog_head(cap->log);
    capture_set_base(cap, &m);
    log_warn("capture: database does not match the log at txid %" PRIu64 " (checksum %016" PRIx64
             ", log %016" PRIx64 "): it was changed outside boomerang; starting epoch %" PRIu64
             " at txid %" PRIu64,
             r->pos.txid, r->found, r->pos.checksum, m.epoch, m.base_txid);
    if (meta_save(cap->meta_path, &m) < 0)
        return CAPTURE_ERR_IO;
    cap->meta = m;
    cap->head = m.base_txid;
    return capture_reset_log(cap);
}

static int capture_recover(struct capture *cap)
{
    struct recovery r;
    int rc;

    memset(&r, 0, sizeof(r));
    r.cap = cap;
    r.raw_sum = pagesum_value(&cap->sum);
    if (!replog_last(cap->log, &r.pos)) {
        r.pos.txid = cap->meta.base_txid;
        r.pos.checksum = cap->meta.base_checksum;
        r.pos.salt1 = cap->meta.base_salt1;
        r.pos.salt2 = cap->meta.base_salt2;
        r.pos.commit_frame = cap->meta.base_frame;
        r.pos.page_size = cap->sum.page_size;
    }
    cap->head = r.pos.txid;
    if (r.pos.page_size != cap->sum.page_size)
        r.state = RECOVERY_DIVERGED;
    rc = walcap_scan(cap->wal, recovery_cb, &r);
    if (rc < 0)
        return rc == WALCAP_ERR_IO || rc == REPLOG_ERR_IO ? CAPTURE_ERR_IO : CAPTURE_ERR_STATE;
    if (r.state == RECOVERY_SEEK) /* no WAL commit, or none at the logged frame */
        recovery_decide(&r, !r.seen && r.raw_sum == r.pos.checksum, pagesum_value(&cap->sum));
    if (r.state == RECOVERY_DIVERGED)
        return capture_new_epoch(cap, &r);
    if (r.appended)
        log_info("capture: recovered %u commits from the WAL into the log (txids %" PRIu64
                 "..%" PRIu64 ")",
                 r.appended, cap->head - r.appended + 1, cap->head);
    return 0;
}

/* No meta: a new history whose base is the current content. A log without
 * meta belongs to nobody we know and is moved aside. */
static int capture_start_fresh(struct capture *cap)
{
    int rc = walcap_scan(cap->wal, apply_cb, cap);

    if (rc < 0)
        return rc == WALCAP_ERR_IO ? CAPTURE_ERR_IO : CAPTURE_ERR_STATE;
    if (meta_create(&cap->meta) < 0)
        return CAPTURE_ERR_IO;
    capture_set_base(cap, &cap->meta);
    if (replog_retire(cap->log_dir, cap->old_log_dir) < 0 ||
        meta_save(cap->meta_path, &cap->meta) < 0)
        return CAPTURE_ERR_IO;
    log_info("capture: new database id %s", cap->meta.database_id);
    cap->head = 0;
    return capture_open_log(cap);
}

static int capture_start(struct capture *cap)
{
    int rc = meta_load(cap->meta_path, &cap->meta);

    if (rc == META_ERR_MISSING)
        return capture_start_fresh(cap);
    if (rc < 0)
        return rc == META_ERR_IO ? CAPTURE_ERR_IO : CAPTURE_ERR_STATE;
    rc = capture_open_log(cap);
    if (rc < 0)
        return rc;
    if (replog_first(cap->log) != 0 && replog_first(cap->log) <= cap->meta.base_txid) {
        log_warn("capture: log starts at txid %" PRIu64 ", at or before epoch %" PRIu64
                 "'s base %" PRIu64 ": moving it aside",
                 replog_first(cap->log), cap->meta.epoch, cap->meta.base_txid);
        rc = capture_reset_log(cap);
        if (rc < 0)
            return rc;
    }
    return capture_recover(cap);
}

/* --- open and close ---------------------------------------------------------------- */

static struct capture *capture_new(const struct capture_config *cfg, sqlite3 *db,
                                   uint32_t page_size)
{
    struct capture *cap = xcalloc(1, sizeof(*cap));
    const char *file = sqlite3_db_filename(db, "main");

    cap->db = db;
    /* SQLite's own name for the file: absolute, and without URI parameters. */
    cap->db_path = xstrdup(file && *file ? file : cfg->db_path);
    cap->state_dir =
        cfg->state_dir ? xstrdup(cfg->state_dir) : path_join(cap->db_path, "-boomerang");
    cap->meta_path = path_join(cap->state_dir, "/meta");
    cap->log_dir = path_join(cap->state_dir, "/log");
    cap->old_log_dir = path_join(cap->state_dir, "/log.old");
    cap->retain = cfg->retain_bytes ? cfg->retain_bytes : 256ull << 20;
    cap->checkpoint_frames =
        cfg->checkpoint_frames ? cfg->checkpoint_frames : CAPTURE_CHECKPOINT_FRAMES;
    cap->wal = walcap_open(cap->db_path);
    walcap_set_sector_padding(cap->wal, capture_padding(db));
    pagesum_init(&cap->sum, page_size);
    pthread_mutex_init(&cap->mu, NULL);
    return cap;
}

static void capture_free(struct capture *cap)
{
    replog_close(cap->log);
    walcap_close(cap->wal);
    pagesum_free(&cap->sum);
    pthread_mutex_destroy(&cap->mu);
    free(cap->db_path);
    free(cap->state_dir);
    free(cap->meta_path);
    free(cap->log_dir);
    free(cap->old_log_dir);
    free(cap);
}

static int capture_make_state_dir(const struct capture *cap)
{
    int rc;

    if (mkdir(cap->state_dir, 0755) != 0) {
        if (errno == EEXIST)
            return 0;
        log_error("capture: create %s failed: %s", cap->state_dir, strerror(errno));
        return CAPTURE_ERR_IO;
    }
    rc = util_fsync_dir(cap->state_dir);
    if (rc < 0) {
        log_error("capture: fsync parent of %s failed: %s", cap->state_dir, strerror(-rc));
        return CAPTURE_ERR_IO;
    }
    return 0;
}

int capture_open(const struct capture_config *cfg, sqlite3 *db, struct capture **out)
{
    struct capture *cap;
    uint32_t page_size, salt1, salt2;
    int rc = capture_check_db(db, &page_size);

    if (rc < 0)
        return rc;
    cap = capture_new(cfg, db, page_size);
    rc = capture_make_state_dir(cap);
    if (rc == 0)
        rc = capture_load_db(cap);
    if (rc == 0)
        rc = capture_start(cap);
    if (rc < 0) {
        capture_free(cap);
        return rc;
    }
    cap->taken = 0; /* recovered commits belong to no caller */
    walcap_position(cap->wal, &salt1, &salt2, &cap->wal_frames);
    cap->frames_since_checkpoint = cap->wal_frames;
    capture_publish(cap);
    /* Last: the hook slot is shared with auto-checkpoint, and any later
     * sqlite3_wal_autocheckpoint() or PRAGMA wal_autocheckpoint replaces it. */
    sqlite3_wal_hook(db, capture_wal_hook, cap);
    log_info("capture: database %s epoch %" PRIu64 " at txid %" PRIu64 " (%u pages)",
             cap->meta.database_id, cap->meta.epoch, cap->head, cap->sum.npages);
    *out = cap;
    return 0;
}

void capture_close(struct capture *cap)
{
    if (!cap)
        return;
    sqlite3_wal_hook(cap->db, NULL, NULL);
    /* Closing the connection next checkpoints the whole WAL: log any commit
     * whose hook has not run yet, as before every checkpoint. */
    if (walcap_scan(cap->wal, capture_commit_cb, cap) < 0)
        capture_fatal("logging a commit at close", CAPTURE_ERR_IO);
    if (replog_sync(cap->log) < 0)
        log_error("capture: close failed: the log could not be synced");
    capture_free(cap);
}
