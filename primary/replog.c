/* boomerang: the durable replication log (see replog.h).
 *
 * Segment files <dir>/<first txid, 16 lowercase hex digits>.log hold records
 * back to back; a record never spans two segments. A record, all integers
 * big-endian:
 *
 *    0  u32 magic          "BMR1" (0x424d5231)
 *    4  u16 version        1
 *    6  u16 header size    64
 *    8  u64 txid
 *   16  i64 time_us        primary wall clock at commit
 *   24  u32 db_pages       database size in pages after the commit (>= 1)
 *   28  u32 page_size      a power of two, 512..65536
 *   32  u32 npages         <= db_pages
 *   36  u32 salt1          } the commit's place in the primary's WAL, so a
 *   40  u32 salt2          } restart can tell which WAL commits the log has
 *   44  u32 commit_frame   }
 *   48  u64 checksum       database checksum after the commit (pagesum)
 *   56  u64 header check   XXH3_64 of bytes 0..55
 *   64  npages entries     u32 pgno (strictly ascending, 1..db_pages, never
 *                          the lock-byte page) + page_size bytes of page
 *  end  u64 trailer        XXH3_64 of the header and all entries
 *
 * The header check lets a reader trust the lengths before reading the body;
 * the trailer catches a torn tail (a crash in the middle of an append) and
 * any other damage. Only the newest segment can have a torn tail: the log
 * fdatasyncs a segment before it starts the next one.
 */
#include "primary/replog.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/pagesum.h"

#define REC_MAGIC        0x424d5231u
#define REC_VERSION      1
#define REC_HDR_SIZE     64
#define REC_HDR_CHECKED  56
#define REC_TRAILER_SIZE 8
#define REC_PGNO_SIZE    4

#define REPLOG_FLUSH_BYTES    (1u << 20)  /* append write size, non-resident read chunk */
#define REPLOG_RESIDENT_BYTES (16u << 20) /* readers keep records up to this in memory */
#define REPLOG_RETAIN_DEFAULT (256ull << 20)
#define REPLOG_SEGMENT_MAX    (64ull << 20)
#define REPLOG_SEGMENT_MIN    4096u
#define SEG_NAME_LEN          20 /* 16 hex digits + ".log" */

static_assert(REC_HDR_CHECKED + 8 == REC_HDR_SIZE, "the header check ends the header");
static_assert(REC_HDR_CHECKED == 4 + 2 + 2 + 8 + 8 + 4 * 6 + 8, "header field sizes");

struct replog_seg {
    uint64_t first; /* txid of its first record */
    uint64_t bytes;
};

struct replog {
    char *dir;
    uint64_t base, retain, seg_bytes;

    /* Shared with reader threads: the segment list, head and size. */
    pthread_mutex_t mu;
    struct replog_seg *segs;
    size_t nsegs, segs_cap;
    uint64_t head, total;

    /* Writer thread only. */
    struct replog_txn last;
    int have_last;
    int fd; /* the active (newest) segment, O_APPEND */
    int dirty, dir_dirty;
    int broken; /* a partial record could not be cut off: refuse appends */
    struct buf wbuf;
    XXH3_state_t *xs;
};

/* A record read back from a segment. */
struct rec {
    uint8_t hdr[REC_HDR_SIZE]; /* raw, as read */
    struct replog_txn txn;
    int64_t off, len;
    uint32_t *pgno;
    uint32_t pgno_cap;
    uint8_t *body; /* all entries and the trailer when resident, else one chunk */
    size_t body_cap;
    int resident;
};

struct replog_reader {
    struct replog *log;
    uint64_t next;      /* txid the next replog_reader_next() returns */
    uint64_t seg_first; /* segment open on fd */
    int fd;
    int64_t off; /* where record `next` starts in that segment */
    struct rec rec;
    int have_rec;
    uint8_t *page; /* one entry, for non-resident records */
    size_t page_cap;
    XXH3_state_t *xs;
};

static size_t entry_size(uint32_t page_size)
{
    return REC_PGNO_SIZE + (size_t)page_size;
}

static int64_t rec_len(const struct replog_txn *t)
{
    return REC_HDR_SIZE + (int64_t)t->npages * (int64_t)entry_size(t->page_size) + REC_TRAILER_SIZE;
}

static char *seg_path(const char *dir, uint64_t first)
{
    size_t n = strlen(dir) + 1 + SEG_NAME_LEN + 1;
    char *p = xmalloc(n);

    snprintf(p, n, "%s/%016" PRIx64 ".log", dir, first);
    return p;
}

static void rec_encode_header(uint8_t *h, const struct replog_txn *t)
{
    put_be32(h, REC_MAGIC);
    h[4] = 0;
    h[5] = REC_VERSION;
    h[6] = 0;
    h[7] = REC_HDR_SIZE;
    put_be64(h + 8, t->txid);
    put_be64(h + 16, (uint64_t)t->time_us);
    put_be32(h + 24, t->db_pages);
    put_be32(h + 28, t->page_size);
    put_be32(h + 32, t->npages);
    put_be32(h + 36, t->salt1);
    put_be32(h + 40, t->salt2);
    put_be32(h + 44, t->commit_frame);
    put_be64(h + 48, t->checksum);
    put_be64(h + REC_HDR_CHECKED, XXH3_64bits(h, REC_HDR_CHECKED));
}

/* Decode and check a header. Returns 0, or REPLOG_ERR_CORRUPT with *why. */
static int rec_decode_header(const uint8_t *h, struct replog_txn *t, const char **why)
{
    uint32_t ps = get_be32(h + 28);

    if (get_be32(h) != REC_MAGIC || h[4] != 0 || h[5] != REC_VERSION || h[6] != 0 ||
        h[7] != REC_HDR_SIZE) {
        *why = "bad magic or version";
        return REPLOG_ERR_CORRUPT;
    }
    if (get_be64(h + REC_HDR_CHECKED) != XXH3_64bits(h, REC_HDR_CHECKED)) {
        *why = "bad header checksum";
        return REPLOG_ERR_CORRUPT;
    }
    t->txid = get_be64(h + 8);
    t->time_us = (int64_t)get_be64(h + 16);
    t->db_pages = get_be32(h + 24);
    t->page_size = ps;
    t->npages = get_be32(h + 32);
    t->salt1 = get_be32(h + 36);
    t->salt2 = get_be32(h + 40);
    t->commit_frame = get_be32(h + 44);
    t->checksum = get_be64(h + 48);
    if (ps < 512 || ps > 65536 || (ps & (ps - 1)) != 0 || t->db_pages == 0 ||
        t->npages > t->db_pages || t->txid == 0) {
        *why = "bad header field";
        return REPLOG_ERR_CORRUPT;
    }
    return 0;
}

/* Check the n entries at p (entries first..first+n-1 of the record) and
 * note their page numbers. Returns 0, or REPLOG_ERR_CORRUPT with *why. */
static int rec_check_entries(struct rec *rec, const uint8_t *p, uint32_t first, uint32_t n,
                             const char **why)
{
    size_t esz = entry_size(rec->txn.page_size);
    uint32_t lock = pagesum_lock_page(rec->txn.page_size);
    uint32_t prev = first ? rec->pgno[first - 1] : 0;

    for (uint32_t k = 0; k < n; k++) {
        uint32_t pgno = get_be32(p + k * esz);
        if (pgno <= prev || pgno > rec->txn.db_pages || pgno == lock) {
            *why = "bad page number";
            return REPLOG_ERR_CORRUPT;
        }
        rec->pgno[first + k] = pgno;
        prev = pgno;
    }
    return 0;
}

/* pread that maps a short read to REPLOG_ERR_CORRUPT and errors to _IO. */
static int rec_pread(int fd, void *p, size_t n, int64_t off, const char **why)
{
    int rc = util_pread_all(fd, p, n, off);

    if (rc == -EIO) {
        *why = "record runs past the end of the segment";
        return REPLOG_ERR_CORRUPT;
    }
    if (rc < 0) {
        *why = strerror(-rc);
        return REPLOG_ERR_IO;
    }
    return 0;
}

static void rec_reserve(uint8_t **p, size_t *cap, size_t n)
{
    if (n > *cap) {
        *p = xrealloc(*p, n);
        *cap = n;
    }
}

static int rec_check_trailer(XXH3_state_t *xs, const uint8_t *trailer, const char **why)
{
    if (get_be64(trailer) != XXH3_64bits_digest(xs)) {
        *why = "bad trailer checksum";
        return REPLOG_ERR_CORRUPT;
    }
    return 0;
}

/* The body and trailer of a small record, in one read, kept in memory. */
static int rec_read_resident(int fd, struct rec *rec, XXH3_state_t *xs, const char **why)
{
    size_t body = (size_t)rec->len - REC_HDR_SIZE, entries = body - REC_TRAILER_SIZE;
    int rc;

    rec_reserve(&rec->body, &rec->body_cap, body);
    rc = rec_pread(fd, rec->body, body, rec->off + REC_HDR_SIZE, why);
    if (rc < 0)
        return rc;
    rc = rec_check_entries(rec, rec->body, 0, rec->txn.npages, why);
    if (rc < 0)
        return rc;
    XXH3_64bits_update(xs, rec->body, entries);
    rec->resident = 1;
    return rec_check_trailer(xs, rec->body + entries, why);
}

/* A big record, checked in bounded chunks; its pages are re-read on demand. */
static int rec_read_chunked(int fd, struct rec *rec, XXH3_state_t *xs, const char **why)
{
    size_t esz = entry_size(rec->txn.page_size);
    uint32_t per = (uint32_t)MAX(1, REPLOG_FLUSH_BYTES / esz), n;
    int64_t pos = rec->off + REC_HDR_SIZE;
    uint8_t trailer[REC_TRAILER_SIZE];
    int rc;

    rec_reserve(&rec->body, &rec->body_cap, per * esz);
    for (uint32_t i = 0; i < rec->txn.npages; i += n) {
        n = MIN(per, rec->txn.npages - i);
        rc = rec_pread(fd, rec->body, n * esz, pos, why);
        if (rc < 0)
            return rc;
        rc = rec_check_entries(rec, rec->body, i, n, why);
        if (rc < 0)
            return rc;
        XXH3_64bits_update(xs, rec->body, n * esz);
        pos += (int64_t)(n * esz);
    }
    rc = rec_pread(fd, trailer, sizeof(trailer), pos, why);
    if (rc < 0)
        return rc;
    rec->resident = 0;
    return rec_check_trailer(xs, trailer, why);
}

/* Read only the header of the record at off in a file of `size` bytes and
 * check it has txid `expect`. Returns 0, REPLOG_ERR_CORRUPT or _IO with *why. */
static int rec_read_header(int fd, int64_t off, int64_t size, uint64_t expect, struct rec *rec,
                           const char **why)
{
    uint8_t *h = rec->hdr;
    int rc;

    if (size - off < REC_HDR_SIZE) {
        *why = "truncated header";
        return REPLOG_ERR_CORRUPT;
    }
    rc = rec_pread(fd, h, REC_HDR_SIZE, off, why);
    if (rc < 0)
        return rc;
    rc = rec_decode_header(h, &rec->txn, why);
    if (rc < 0)
        return rc;
    if (rec->txn.txid != expect) {
        *why = "unexpected txid";
        return REPLOG_ERR_CORRUPT;
    }
    rec->off = off;
    rec->len = rec_len(&rec->txn);
    if (rec->len > size - off) {
        *why = "record runs past the end of the segment";
        return REPLOG_ERR_CORRUPT;
    }
    return 0;
}

/* Read and check the whole record at off (see rec_read_header). */
static int rec_read(int fd, int64_t off, int64_t size, uint64_t expect, struct rec *rec,
                    XXH3_state_t *xs, const char **why)
{
    int rc = rec_read_header(fd, off, size, expect, rec, why);

    if (rc < 0)
        return rc;
    if (rec->txn.npages > rec->pgno_cap) {
        rec->pgno = xrealloc(rec->pgno, (size_t)rec->txn.npages * sizeof(rec->pgno[0]));
        rec->pgno_cap = rec->txn.npages;
    }
    XXH3_64bits_reset(xs);
    XXH3_64bits_update(xs, rec->hdr, REC_HDR_SIZE);
    if (rec->len - REC_HDR_SIZE <= (int64_t)REPLOG_RESIDENT_BYTES)
        return rec_read_resident(fd, rec, xs, why);
    return rec_read_chunked(fd, rec, xs, why);
}

static void rec_free(struct rec *rec)
{
    free(rec->pgno);
    free(rec->body);
    memset(rec, 0, sizeof(*rec));
}

static XXH3_state_t *xs_new(void)
{
    XXH3_state_t *xs = XXH3_createState();

    if (!xs) {
        log_error("replog: allocate hash state failed: out of memory");
        abort();
    }
    return xs;
}

/* --- opening ----------------------------------------------------------------- */

/* Parse a segment file name. Returns 1 and *first if it is one. */
static int seg_name_parse(const char *name, uint64_t *first)
{
    uint64_t v = 0;

    if (strlen(name) != SEG_NAME_LEN || strcmp(name + 16, ".log") != 0)
        return 0;
    for (int i = 0; i < 16; i++) {
        char c = name[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return 0;
        v = v << 4 | (uint64_t)d;
    }
    *first = v;
    return v != 0;
}

static void seg_push(struct replog *log, uint64_t first, uint64_t bytes)
{
    if (log->nsegs == log->segs_cap) {
        log->segs_cap = log->segs_cap ? log->segs_cap * 2 : 16;
        log->segs = xrealloc(log->segs, log->segs_cap * sizeof(log->segs[0]));
    }
    log->segs[log->nsegs].first = first;
    log->segs[log->nsegs].bytes = bytes;
    log->nsegs++;
    log->total += bytes;
}

static int seg_cmp(const void *a, const void *b)
{
    const struct replog_seg *x = a, *y = b;

    return x->first < y->first ? -1 : x->first > y->first;
}

/* Find the segment files in the directory, oldest first. */
static int replog_list(struct replog *log)
{
    DIR *d = opendir(log->dir);
    struct dirent *de;
    struct stat st;
    uint64_t first;

    if (!d) {
        log_error("replog: open directory %s failed: %s", log->dir, strerror(errno));
        return REPLOG_ERR_IO;
    }
    while ((de = readdir(d)) != NULL) {
        if (!seg_name_parse(de->d_name, &first))
            continue;
        if (fstatat(dirfd(d), de->d_name, &st, 0) != 0) {
            log_error("replog: stat %s/%s failed: %s", log->dir, de->d_name, strerror(errno));
            closedir(d);
            return REPLOG_ERR_IO;
        }
        seg_push(log, first, (uint64_t)st.st_size);
    }
    closedir(d);
    if (log->nsegs > 1)
        qsort(log->segs, log->nsegs, sizeof(log->segs[0]), seg_cmp);
    return 0;
}

/* Check that an older segment starts with a valid record of its txid. */
static int replog_check_old(struct replog *log, const struct replog_seg *seg)
{
    char *path = seg_path(log->dir, seg->first);
    int fd = open(path, O_RDONLY | O_CLOEXEC), rc;
    const char *why = "";
    struct rec rec;

    memset(&rec, 0, sizeof(rec));
    if (fd < 0) {
        log_error("replog: open %s failed: %s", path, strerror(errno));
        free(path);
        return REPLOG_ERR_IO;
    }
    rc = rec_read_header(fd, 0, (int64_t)seg->bytes, seg->first, &rec, &why);
    if (rc < 0)
        log_error("replog: check segment %s failed: %s", path, why);
    close(fd);
    free(path);
    return rc;
}

/* Read the newest segment (fd) in full: the offset after its last whole
 * record, and that record's header in log->last. */
static int replog_scan_tail(struct replog *log, int fd, const struct replog_seg *seg,
                            int64_t *valid)
{
    XXH3_state_t *xs = xs_new();
    uint64_t expect = seg->first;
    const char *why = "";
    struct rec rec;
    int64_t off = 0;
    int rc = 0;

    memset(&rec, 0, sizeof(rec));
    while (off < (int64_t)seg->bytes) {
        rc = rec_read(fd, off, (int64_t)seg->bytes, expect, &rec, xs, &why);
        if (rc < 0)
            break;
        log->last = rec.txn;
        log->have_last = 1;
        off += rec.len;
        expect++;
    }
    if (rc == REPLOG_ERR_CORRUPT) {
        log_warn("replog: segment %016" PRIx64 ".log has a torn tail at offset %" PRId64
                 " (%s): cutting %" PRId64 " bytes",
                 seg->first, off, why, (int64_t)seg->bytes - off);
        rc = 0;
    } else if (rc < 0) {
        log_error("replog: read segment %016" PRIx64 ".log failed: %s", seg->first, why);
    }
    rec_free(&rec);
    XXH3_freeState(xs);
    *valid = off;
    return rc;
}

/* Cut the newest segment after its last whole record; delete it if it holds
 * none, and look at the one before. Leaves the active segment open. */
static int replog_recover_tail(struct replog *log)
{
    while (log->nsegs > 0) {
        struct replog_seg *seg = &log->segs[log->nsegs - 1];
        char *path = seg_path(log->dir, seg->first);
        int64_t valid;
        int rc;

        log->fd = open(path, O_RDWR | O_APPEND | O_CLOEXEC);
        if (log->fd < 0) {
            log_error("replog: open %s failed: %s", path, strerror(errno));
            free(path);
            return REPLOG_ERR_IO;
        }
        rc = replog_scan_tail(log, log->fd, seg, &valid);
        if (rc == 0 && valid < (int64_t)seg->bytes &&
            (ftruncate(log->fd, valid) != 0 || fsync(log->fd) != 0)) {
            log_error("replog: truncate %s failed: %s", path, strerror(errno));
            rc = REPLOG_ERR_IO;
        }
        if (rc == 0 && valid == 0 && unlink(path) != 0) {
            log_error("replog: delete %s failed: %s", path, strerror(errno));
            rc = REPLOG_ERR_IO;
        }
        free(path);
        if (rc < 0)
            return rc;
        log->total -= seg->bytes - (uint64_t)valid;
        seg->bytes = (uint64_t)valid;
        if (valid > 0)
            return 0;
        close(log->fd);
        log->fd = -1;
        log->nsegs--;
        log->dir_dirty = 1;
    }
    return 0;
}

static int replog_fsync_dir(const struct replog *log)
{
    int fd = open(log->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;

    if (fd < 0 || fsync(fd) != 0) {
        log_error("replog: fsync directory %s failed: %s", log->dir, strerror(errno));
        rc = REPLOG_ERR_IO;
    }
    if (fd >= 0)
        close(fd);
    return rc;
}

static int mkdir_durable(const char *dir)
{
    int rc;

    if (mkdir(dir, 0755) == 0) {
        rc = util_fsync_dir(dir);
        if (rc == 0)
            return 0;
        log_error("replog: fsync parent of %s failed: %s", dir, strerror(-rc));
        return REPLOG_ERR_IO;
    }
    if (errno == EEXIST)
        return 0;
    log_error("replog: create directory %s failed: %s", dir, strerror(errno));
    return REPLOG_ERR_IO;
}

static int replog_load(struct replog *log)
{
    int rc = mkdir_durable(log->dir);

    if (rc == 0)
        rc = replog_list(log);
    for (size_t i = 0; rc == 0 && i + 1 < log->nsegs; i++)
        rc = replog_check_old(log, &log->segs[i]);
    if (rc == 0)
        rc = replog_recover_tail(log);
    if (rc == 0 && log->dir_dirty)
        rc = replog_fsync_dir(log);
    return rc;
}

int replog_open(const struct replog_config *cfg, struct replog **out)
{
    struct replog *log = xcalloc(1, sizeof(*log));
    int rc;

    log->dir = xstrdup(cfg->dir);
    log->base = cfg->base_txid;
    log->retain = cfg->retain_bytes ? cfg->retain_bytes : REPLOG_RETAIN_DEFAULT;
    log->seg_bytes = cfg->segment_bytes
                         ? cfg->segment_bytes
                         : MAX(REPLOG_SEGMENT_MIN, MIN(REPLOG_SEGMENT_MAX, log->retain / 4));
    log->fd = -1;
    pthread_mutex_init(&log->mu, NULL);
    log->xs = xs_new();
    rc = replog_load(log);
    if (rc < 0) {
        replog_close(log);
        return rc;
    }
    log->dir_dirty = 0;
    log->head = log->have_last ? log->last.txid : log->base;
    *out = log;
    return 0;
}

void replog_close(struct replog *log)
{
    if (!log)
        return;
    if (log->fd >= 0)
        close(log->fd);
    pthread_mutex_destroy(&log->mu);
    XXH3_freeState(log->xs);
    buf_free(&log->wbuf);
    free(log->segs);
    free(log->dir);
    free(log);
}

/* --- appending ----------------------------------------------------------------- */

/* Start segment <first>.log. The current one is made durable first, so that
 * only the newest segment can ever have a torn tail. */
static int replog_roll(struct replog *log, uint64_t first)
{
    char *path;
    int fd;

    if (log->fd >= 0) {
        if (fdatasync(log->fd) != 0) {
            log_error("replog: fdatasync segment in %s failed: %s", log->dir, strerror(errno));
            return REPLOG_ERR_IO;
        }
        close(log->fd);
        log->fd = -1;
    }
    path = seg_path(log->dir, first);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        log_error("replog: create %s failed: %s", path, strerror(errno));
        free(path);
        return REPLOG_ERR_IO;
    }
    free(path);
    log->fd = fd;
    pthread_mutex_lock(&log->mu);
    seg_push(log, first, 0);
    pthread_mutex_unlock(&log->mu);
    log->dir_dirty = 1;
    return 0;
}

/* Write out the staged bytes. */
static int replog_write(struct replog *log)
{
    int rc = util_write_all(log->fd, buf_head(&log->wbuf), buf_avail(&log->wbuf));

    buf_reset(&log->wbuf);
    if (rc < 0) {
        log_error("replog: write segment in %s failed: %s", log->dir, strerror(-rc));
        return REPLOG_ERR_IO;
    }
    return 0;
}

/* Hash and write the staged part of a record that is not its end. */
static int replog_flush(struct replog *log)
{
    XXH3_64bits_update(log->xs, buf_head(&log->wbuf), buf_avail(&log->wbuf));
    return replog_write(log);
}

/* Stage (and, past the flush size, write) the header and entries. */
static int replog_stage(struct replog *log, const struct replog_txn *txn, const uint32_t *pgno,
                        replog_page_cb page, void *arg)
{
    uint8_t hdr[REC_HDR_SIZE], num[REC_PGNO_SIZE];
    uint32_t lock = pagesum_lock_page(txn->page_size);
    const uint8_t *data;
    int rc;

    rec_encode_header(hdr, txn);
    buf_append(&log->wbuf, hdr, sizeof(hdr));
    for (uint32_t i = 0; i < txn->npages; i++) {
        assert(pgno[i] >= 1 && pgno[i] <= txn->db_pages && pgno[i] != lock);
        assert(i == 0 || pgno[i] > pgno[i - 1]);
        rc = page(arg, i, &data);
        if (rc < 0)
            return rc;
        put_be32(num, pgno[i]);
        buf_append(&log->wbuf, num, sizeof(num));
        buf_append(&log->wbuf, data, txn->page_size);
        if (buf_avail(&log->wbuf) >= REPLOG_FLUSH_BYTES) {
            rc = replog_flush(log);
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

/* The record is whole on disk: let readers see it. */
static void replog_publish(struct replog *log, const struct replog_txn *txn)
{
    uint64_t len = (uint64_t)rec_len(txn);

    pthread_mutex_lock(&log->mu);
    log->segs[log->nsegs - 1].bytes += len;
    log->total += len;
    log->head = txn->txid;
    pthread_mutex_unlock(&log->mu);
    log->last = *txn;
    log->have_last = 1;
    log->dirty = 1;
}

int replog_append(struct replog *log, const struct replog_txn *txn, const uint32_t *pgno,
                  replog_page_cb page, void *arg)
{
    uint8_t trailer[REC_TRAILER_SIZE];
    int rc;

    assert(txn->txid == log->head + 1);
    assert(txn->npages <= txn->db_pages && txn->db_pages >= 1);
    assert(txn->page_size >= 512 && txn->page_size <= 65536);
    if (log->broken)
        return REPLOG_ERR_IO;
    if (log->fd < 0 || log->segs[log->nsegs - 1].bytes >= log->seg_bytes) {
        rc = replog_roll(log, txn->txid);
        if (rc < 0)
            return rc;
    }
    buf_reset(&log->wbuf);
    XXH3_64bits_reset(log->xs);
    rc = replog_stage(log, txn, pgno, page, arg);
    if (rc == 0) {
        XXH3_64bits_update(log->xs, buf_head(&log->wbuf), buf_avail(&log->wbuf));
        put_be64(trailer, XXH3_64bits_digest(log->xs));
        buf_append(&log->wbuf, trailer, sizeof(trailer));
        rc = replog_write(log);
    }
    if (rc < 0) {
        /* Cut the partial record so the segment stays a run of whole ones. */
        if (ftruncate(log->fd, (off_t)log->segs[log->nsegs - 1].bytes) != 0) {
            log_error("replog: truncate segment in %s failed: %s", log->dir, strerror(errno));
            log->broken = 1;
        }
        buf_reset(&log->wbuf);
        return rc;
    }
    replog_publish(log, txn);
    return 0;
}

static int pages_array_cb(void *arg, uint32_t i, const uint8_t **data)
{
    const uint8_t *const *pages = arg;

    *data = pages[i];
    return 0;
}

int replog_append_pages(struct replog *log, const struct replog_txn *txn, const uint32_t *pgno,
                        const uint8_t *const *pages)
{
    return replog_append(log, txn, pgno, pages_array_cb, (void *)pages);
}

int replog_sync(struct replog *log)
{
    if (log->dirty && log->fd >= 0 && fdatasync(log->fd) != 0) {
        log_error("replog: fdatasync segment in %s failed: %s", log->dir, strerror(errno));
        return REPLOG_ERR_IO;
    }
    log->dirty = 0;
    if (log->dir_dirty && replog_fsync_dir(log) < 0)
        return REPLOG_ERR_IO;
    log->dir_dirty = 0;
    return 0;
}

int replog_prune(struct replog *log)
{
    for (;;) {
        struct replog_seg seg;
        char *path;

        pthread_mutex_lock(&log->mu);
        if (log->nsegs <= 1 || log->total <= log->retain) {
            pthread_mutex_unlock(&log->mu);
            return 0;
        }
        seg = log->segs[0];
        memmove(log->segs, log->segs + 1, (log->nsegs - 1) * sizeof(log->segs[0]));
        log->nsegs--;
        log->total -= seg.bytes;
        pthread_mutex_unlock(&log->mu);
        path = seg_path(log->dir, seg.first);
        if (unlink(path) != 0 && errno != ENOENT) {
            log_error("replog: delete %s failed: %s", path, strerror(errno));
            free(path);
            return REPLOG_ERR_IO;
        }
        log_debug("replog: pruned %s (%" PRIu64 " bytes)", path, seg.bytes);
        free(path);
    }
}

uint64_t replog_head(struct replog *log)
{
    uint64_t v;

    pthread_mutex_lock(&log->mu);
    v = log->head;
    pthread_mutex_unlock(&log->mu);
    return v;
}

uint64_t replog_first(struct replog *log)
{
    uint64_t v;

    pthread_mutex_lock(&log->mu);
    v = log->nsegs ? log->segs[0].first : 0;
    pthread_mutex_unlock(&log->mu);
    return v;
}

uint64_t replog_bytes(struct replog *log)
{
    uint64_t v;

    pthread_mutex_lock(&log->mu);
    v = log->total;
    pthread_mutex_unlock(&log->mu);
    return v;
}

int replog_last(struct replog *log, struct replog_txn *out)
{
    if (!log->have_last)
        return 0;
    *out = log->last;
    return 1;
}

/* Delete a directory of segment files. A missing one is fine. */
static int remove_log_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int rc = 0;

    if (!d && errno == ENOENT)
        return 0;
    if (!d) {
        log_error("replog: open directory %s failed: %s", dir, strerror(errno));
        return REPLOG_ERR_IO;
    }
    while (rc == 0 && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (unlinkat(dirfd(d), de->d_name, 0) != 0) {
            log_error("replog: delete %s/%s failed: %s", dir, de->d_name, strerror(errno));
            rc = REPLOG_ERR_IO;
        }
    }
    closedir(d);
    if (rc == 0 && rmdir(dir) != 0) {
        log_error("replog: delete directory %s failed: %s", dir, strerror(errno));
        rc = REPLOG_ERR_IO;
    }
    return rc;
}

int replog_retire(const char *dir, const char *to)
{
    int rc = remove_log_dir(to);

    if (rc < 0)
        return rc;
    if (rename(dir, to) != 0 && errno != ENOENT) {
        log_error("replog: rename %s to %s failed: %s", dir, to, strerror(errno));
        return REPLOG_ERR_IO;
    }
    rc = util_fsync_dir(to);
    if (rc < 0) {
        log_error("replog: fsync parent of %s failed: %s", to, strerror(-rc));
        return REPLOG_ERR_IO;
    }
    return 0;
}

/* --- reading ----------------------------------------------------------------- */

/* Index of the newest segment whose first txid is <= txid; the caller holds
 * mu and knows one exists. */
static size_t seg_floor(const struct replog *log, uint64_t txid)
{
    size_t lo = 0, hi = log->nsegs;

    assert(log->nsegs > 0 && log->segs[0].first <= txid);
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (log->segs[mid].first <= txid)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* Whether a segment starts at txid; the caller holds mu. */
static int seg_starts_at(const struct replog *log, uint64_t txid)
{
    return log->nsegs > 0 && log->segs[0].first <= txid &&
           log->segs[seg_floor(log, txid)].first == txid;
}

/* Switch the reader to segment <first>.log, positioned at its start. */
static int reader_open_seg(struct replog_reader *r, uint64_t first)
{
    char *path = seg_path(r->log->dir, first);
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        int e = errno;
        if (e != ENOENT)
            log_error("replog: open %s failed: %s", path, strerror(e));
        free(path);
        return e == ENOENT ? REPLOG_ERR_PRUNED : REPLOG_ERR_IO;
    }
    free(path);
    if (r->fd >= 0)
        close(r->fd);
    r->fd = fd;
    r->seg_first = first;
    r->next = first;
    r->off = 0;
    return 0;
}

static int reader_size(struct replog_reader *r, int64_t *size)
{
    struct stat st;

    if (fstat(r->fd, &st) != 0) {
        log_error("replog: stat segment in %s failed: %s", r->log->dir, strerror(errno));
        return REPLOG_ERR_IO;
    }
    *size = st.st_size;
    return 0;
}

static int reader_fail(struct replog_reader *r, int rc, const char *why)
{
    log_error("replog: read txid %" PRIu64 " in %s/%016" PRIx64 ".log at offset %" PRId64
              " failed: %s",
              r->next, r->log->dir, r->seg_first, r->off, why);
    return rc;
}

/* Walk the headers from the segment start up to record txid. */
static int reader_skip(struct replog_reader *r, uint64_t txid)
{
    const char *why = "";
    int64_t size;
    int rc = reader_size(r, &size);

    while (rc == 0 && r->next < txid) {
        rc = rec_read_header(r->fd, r->off, size, r->next, &r->rec, &why);
        if (rc < 0)
            return reader_fail(r, rc, why);
        r->off += r->rec.len;
        r->next++;
    }
    return rc;
}

int replog_reader_open(struct replog *log, uint64_t txid, struct replog_reader **out)
{
    struct replog_reader *r;
    uint64_t first = 0;
    int rc = 0;

    pthread_mutex_lock(&log->mu);
    if (txid == 0 || txid > log->head + 1)
        rc = REPLOG_ERR_RANGE;
    else if (log->nsegs == 0 ? txid <= log->head : txid < log->segs[0].first)
        rc = REPLOG_ERR_PRUNED;
    else if (log->nsegs > 0)
        first = log->segs[seg_floor(log, txid)].first;
    pthread_mutex_unlock(&log->mu);
    if (rc < 0)
        return rc;
    r = xcalloc(1, sizeof(*r));
    r->log = log;
    r->fd = -1;
    r->next = txid;
    r->xs = xs_new();
    if (first) {
        rc = reader_open_seg(r, first);
        if (rc == 0)
            rc = reader_skip(r, txid);
    }
    if (rc < 0) {
        replog_reader_close(r);
        return rc;
    }
    *out = r;
    return 0;
}

int replog_reader_next(struct replog_reader *r, struct replog_txn *out)
{
    struct replog *log = r->log;
    uint64_t head, first;
    const char *why = "";
    int starts, rc;
    int64_t size;

    r->have_rec = 0;
    pthread_mutex_lock(&log->mu);
    head = log->head;
    first = log->nsegs ? log->segs[0].first : 0;
    starts = seg_starts_at(log, r->next);
    pthread_mutex_unlock(&log->mu);
    if (r->next > head)
        return REPLOG_AGAIN;
    if (starts && (r->fd < 0 || r->seg_first != r->next)) {
        rc = reader_open_seg(r, r->next);
        if (rc < 0)
            return rc;
    }
    if (r->fd < 0)
        return REPLOG_ERR_PRUNED; /* the log was emptied under an idle reader */
    rc = reader_size(r, &size);
    if (rc < 0)
        return rc;
    if (r->off >= size && (first == 0 || r->next < first))
        return REPLOG_ERR_PRUNED; /* the segment holding `next` is gone */
    rc = rec_read(r->fd, r->off, size, r->next, &r->rec, r->xs, &why);
    if (rc < 0)
        return reader_fail(r, rc, why);
    r->off += r->rec.len;
    r->next++;
    r->have_rec = 1;
    *out = r->rec.txn;
    return 0;
}

int replog_reader_page(struct replog_reader *r, uint32_t i, uint32_t *pgno, const uint8_t **data)
{
    size_t esz = entry_size(r->rec.txn.page_size);
    const char *why = "";
    int rc;

    assert(r->have_rec && i < r->rec.txn.npages);
    *pgno = r->rec.pgno[i];
    if (r->rec.resident) {
        *data = r->rec.body + i * esz + REC_PGNO_SIZE;
        return 0;
    }
    rec_reserve(&r->page, &r->page_cap, esz);
    rc = rec_pread(r->fd, r->page, esz, r->rec.off + REC_HDR_SIZE + (int64_t)(i * esz), &why);
    if (rc == 0 && get_be32(r->page) != *pgno) {
        why = "page number changed";
        rc = REPLOG_ERR_CORRUPT;
    }
    if (rc < 0) {
        log_error("replog: read page %u of txid %" PRIu64 " in %s failed: %s", i, r->rec.txn.txid,
                  r->log->dir, why);
        return rc;
    }
    *data = r->page + REC_PGNO_SIZE;
    return 0;
}

uint64_t replog_reader_txid(const struct replog_reader *r)
{
    return r->next;
}

void replog_reader_close(struct replog_reader *r)
{
    if (!r)
        return;
    if (r->fd >= 0)
        close(r->fd);
    rec_free(&r->rec);
    free(r->page);
    XXH3_freeState(r->xs);
    free(r);
}
