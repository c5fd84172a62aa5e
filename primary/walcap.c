/* boomerang: reader of a database's -wal file, split into committed
 * transactions (see walcap.h).
 *
 * The WAL format (https://sqlite.org/fileformat2.html#walformat; SQLite's
 * wal.c). Every integer field is a big-endian u32.
 *
 *   WAL header, 32 bytes:
 *     0  magic       0x377f0682 (checksum words little-endian) or 0x377f0683
 *                    (big-endian)
 *     4  version     3007000
 *     8  page size   a power of two, 512..65536
 *    12  checkpoint sequence
 *    16  salt-1      incremented at every WAL restart
 *    20  salt-2      random at every WAL restart
 *    24  checksum-1  } checksum of header bytes 0..23, seeded with 0, 0
 *    28  checksum-2  }
 *   then frames, each a 24-byte header followed by one page:
 *     0  pgno        the page this frame holds (never 0)
 *     4  db size     database size in pages after the commit in a commit
 *                    frame, 0 in every other frame
 *     8  salt-1      } copies of the header's; a frame with other salts is
 *    12  salt-2      } left over from an earlier WAL generation
 *    16  checksum-1  } checksum of frame header bytes 0..7 and the page,
 *    20  checksum-2  } seeded with the previous frame's (frame 1: the header's)
 *
 * The checksum walks the data as 32-bit words (byte order per the magic),
 * two at a time: s1 += x0 + s2; s2 += x1 + s1. A frame is valid when its salts
 * match the header, its pgno is non-zero and the chain holds; the frames up to
 * the last valid commit frame are the committed content (SQLite's recovery).
 *
 * Facts the reader relies on (research/wal.md 2.1):
 *  - Spilled frames of an open transaction are rewritten in place, and the
 *    chain after the first rewritten one is recomputed at commit, so nothing
 *    before a commit frame is final.
 *  - Spilled frames of a rolled back transaction stay in the file past
 *    mxFrame with a valid chain (but without a commit frame); only the hook's
 *    nFrame tells where the committed WAL ends.
 *  - A transaction may write a page more than once (the last frame wins), and
 *    may write pages past the database size it commits (they are dropped).
 *  - With padding (see walcap_set_sector_padding), the commit frame is
 *    repeated, commit mark and all, until the next sector boundary.
 */
#include "primary/walcap.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"

#define WAL_HDR_SIZE       32
#define WAL_FRAME_HDR_SIZE 24
#define WAL_MAGIC          0x377f0682u
#define WAL_VERSION        3007000u
#define WALCAP_BUF_DEFAULT (16u << 20)

static_assert(WAL_HDR_SIZE == 8 * sizeof(uint32_t), "WAL header is eight u32 fields");
static_assert(WAL_FRAME_HDR_SIZE == 6 * sizeof(uint32_t), "frame header is six u32 fields");

/* One frame of the transaction being assembled. */
struct walcap_ent {
    uint32_t pgno;
    uint32_t frame;
};

struct walcap {
    char *path; /* the -wal file */
    int fd;     /* -1 until it exists */
    uint32_t sector;
    size_t buf_limit;

    /* The current WAL header (valid when have_hdr). */
    int have_hdr;
    int big_endian; /* checksum word order */
    uint32_t page_size, salt1, salt2;

    /* Position: the last frame consumed (a commit frame or padding after
     * one), the checksum chain after it, and the last commit frame. */
    uint32_t last, last_commit;
    uint32_t ck[2];
    int64_t pad_end;      /* padding frames start before this file offset */
    uint8_t *commit_page; /* the last commit frame's page, to recognise padding */

    /* Read buffer: frames [buf_first, buf_first + buf_n), room for buf_cap. */
    uint8_t *buf;
    uint32_t buf_first, buf_n, buf_cap, buf_max;

    /* The transaction being assembled: its frames in order, whether all of
     * them are still in the buffer, and the delivered page list. */
    struct walcap_ent *ent;
    uint32_t nent, ent_cap, txn_first;
    int resident;
    uint32_t *pgno, *pframe;
    const struct walcap_txn *delivering;
    uint8_t *page; /* one frame, for re-reads */
};

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

/* The WAL checksum over n bytes (a multiple of 8), continuing ck. */
static void wal_cksum(int big_endian, const uint8_t *p, size_t n, uint32_t ck[2])
{
    uint32_t s1 = ck[0], s2 = ck[1];
    size_t i;

    assert(n % 8 == 0);
    if (big_endian) {
        for (i = 0; i < n; i += 8) {
            s1 += get_be32(p + i) + s2;
            s2 += get_be32(p + i + 4) + s1;
        }
    } else {
        for (i = 0; i < n; i += 8) {
            s1 += get_le32(p + i) + s2;
            s2 += get_le32(p + i + 4) + s1;
        }
    }
    ck[0] = s1;
    ck[1] = s2;
}

static size_t frame_size(const struct walcap *w)
{
    return WAL_FRAME_HDR_SIZE + (size_t)w->page_size;
}

static int64_t frame_offset(const struct walcap *w, uint32_t frame)
{
    return WAL_HDR_SIZE + (int64_t)(frame - 1) * (int64_t)frame_size(w);
}

struct walcap *walcap_open(const char *db_path)
{
    struct walcap *w = xcalloc(1, sizeof(*w));
    size_t n = strlen(db_path);

    w->path = xmalloc(n + 5);
    memcpy(w->path, db_path, n);
    memcpy(w->path + n, "-wal", 5);
    w->fd = -1;
    w->buf_limit = WALCAP_BUF_DEFAULT;
    return w;
}

void walcap_close(struct walcap *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    free(w->path);
    free(w->commit_page);
    free(w->buf);
    free(w->ent);
    free(w->pgno);
    free(w->pframe);
    free(w->page);
    free(w);
}

void walcap_set_sector_padding(struct walcap *w, uint32_t sector_size)
{
    w->sector = sector_size;
}

void walcap_set_buffer_limit(struct walcap *w, size_t bytes)
{
    w->buf_limit = bytes;
}

void walcap_position(const struct walcap *w, uint32_t *salt1, uint32_t *salt2, uint32_t *frame)
{
    *salt1 = w->have_hdr ? w->salt1 : 0;
    *salt2 = w->have_hdr ? w->salt2 : 0;
    *frame = w->last_commit;
}

uint32_t walcap_page_size(const struct walcap *w)
{
    return w->have_hdr ? w->page_size : 0;
}

/* Open the -wal file if that has not happened yet. Returns 0, -ENOENT when it
 * does not exist, or WALCAP_ERR_IO. A descriptor of our own is safe here:
 * SQLite keeps its POSIX locks on the database and -shm files, never on the
 * -wal file, so closing ours cannot drop them. The file is only ever
 * truncated in place, never replaced, while the writer's connection is open. */
static int walcap_ensure_fd(struct walcap *w)
{
    if (w->fd >= 0)
        return 0;
    w->fd = open(w->path, O_RDONLY | O_CLOEXEC);
    if (w->fd >= 0)
        return 0;
    if (errno == ENOENT)
        return -ENOENT;
    log_error("walcap: open %s failed: %s", w->path, strerror(errno));
    return WALCAP_ERR_IO;
}

/* Parse and check a WAL header. Returns 1 if valid, 0 if not. */
static int header_parse(const uint8_t *h, uint32_t *page_size, int *big_endian, uint32_t ck[2])
{
    uint32_t magic = get_be32(h), ps = get_be32(h + 8);

    if ((magic & ~1u) != WAL_MAGIC || get_be32(h + 4) != WAL_VERSION)
        return 0;
    if (ps < 512 || ps > 65536 || (ps & (ps - 1)) != 0)
        return 0;
    ck[0] = ck[1] = 0;
    wal_cksum(magic & 1, h, 24, ck);
    if (ck[0] != get_be32(h + 24) || ck[1] != get_be32(h + 28))
        return 0;
    *page_size = ps;
    *big_endian = magic & 1;
    return 1;
}

/* Adopt header h as a new WAL generation: start over at frame 1. */
static void walcap_adopt_header(struct walcap *w, const uint8_t *h, uint32_t page_size,
                                int big_endian, const uint32_t ck[2])
{
    if (w->have_hdr && page_size != w->page_size) {
        free(w->buf);
        w->buf = NULL;
        w->buf_cap = 0;
        free(w->page);
        w->page = NULL;
        free(w->commit_page);
        w->commit_page = NULL;
    }
    w->have_hdr = 1;
    w->page_size = page_size;
    w->big_endian = big_endian;
    w->salt1 = get_be32(h + 16);
    w->salt2 = get_be32(h + 20);
    w->ck[0] = ck[0]; /* frame 1 chains from the header's checksum */
    w->ck[1] = ck[1];
    w->last = w->last_commit = 0;
    w->pad_end = 0;
    w->buf_max = (uint32_t)MAX(1, MIN(w->buf_limit / frame_size(w), UINT32_MAX / 2));
}

/* Read the header and notice a WAL restart. Sets *valid to whether a valid
 * header is in force. Returns 0, -ENOENT (no file) or WALCAP_ERR_IO. */
static int walcap_check_header(struct walcap *w, int *valid)
{
    uint8_t h[WAL_HDR_SIZE];
    uint32_t ps, ck[2];
    int be, rc;

    *valid = 0;
    rc = walcap_ensure_fd(w);
    if (rc < 0)
        return rc;
    rc = util_pread_all(w->fd, h, sizeof(h), 0);
    if (rc == -EIO)
        return 0; /* shorter than a header: an empty WAL */
    if (rc < 0) {
        log_error("walcap: read %s header failed: %s", w->path, strerror(-rc));
        return WALCAP_ERR_IO;
    }
    if (w->have_hdr && get_be32(h + 16) == w->salt1 && get_be32(h + 20) == w->salt2) {
        *valid = 1;
        return 0;
    }
    if (!header_parse(h, &ps, &be, ck))
        return 0;
    walcap_adopt_header(w, h, ps, be, ck);
    *valid = 1;
    return 0;
}

/* Check a frame's salts, pgno and checksum against the chain ck; on success
 * advance ck past it. Returns 1 if valid. */
static int frame_valid(const struct walcap *w, const uint8_t *fr, uint32_t ck[2])
{
    uint32_t s[2] = {ck[0], ck[1]};

    if (get_be32(fr) == 0 || get_be32(fr + 8) != w->salt1 || get_be32(fr + 12) != w->salt2)
        return 0;
    wal_cksum(w->big_endian, fr, 8, s);
    wal_cksum(w->big_endian, fr + WAL_FRAME_HDR_SIZE, w->page_size, s);
    if (s[0] != get_be32(fr + 16) || s[1] != get_be32(fr + 20))
        return 0;
    ck[0] = s[0];
    ck[1] = s[1];
    return 1;
}

/* Make room for n frames in the buffer, preserving its content. */
static void walcap_grow_buf(struct walcap *w, uint32_t n)
{
    uint32_t cap = w->buf_cap ? w->buf_cap : 4;

    if (n <= w->buf_cap)
        return;
    while (cap < n)
        cap *= 2;
    cap = MIN(cap, w->buf_max);
    assert(cap >= n);
    w->buf = xrealloc(w->buf, (size_t)cap * frame_size(w));
    w->buf_cap = cap;
}

/* Read frames from `next` on (at most up to limit) into the buffer. The
 * pending transaction's frames stay in front of them while they fit, so a
 * transaction that fits the buffer is delivered from memory; one that does
 * not is marked non-resident and re-read page by page. */
static int walcap_fill(struct walcap *w, uint32_t next, uint32_t limit)
{
    size_t fsz = frame_size(w);
    uint32_t keep = 0, n;
    int rc;

    if (w->nent > 0 && w->resident) {
        assert(w->txn_first >= w->buf_first && w->buf_first + w->buf_n == next);
        keep = next - w->txn_first;
        if (keep >= w->buf_max) {
            w->resident = 0; /* too big: walcap_page re-reads it */
            keep = 0;
        } else if (w->txn_first != w->buf_first) {
            memmove(w->buf, w->buf + (size_t)(w->txn_first - w->buf_first) * fsz, keep * fsz);
        }
    }
    w->buf_first = next - keep;
    w->buf_n = keep;
    n = MIN(limit - next + 1, w->buf_max - keep);
    walcap_grow_buf(w, keep + n);
    rc = util_pread_all(w->fd, w->buf + keep * fsz, (size_t)n * fsz, frame_offset(w, next));
    if (rc == -EIO) {
        log_error("walcap: read %s frames %u..%u failed: file ends early", w->path, next,
                  next + n - 1);
        return WALCAP_ERR_CORRUPT;
    }
    if (rc < 0) {
        log_error("walcap: read %s failed: %s", w->path, strerror(-rc));
        return WALCAP_ERR_IO;
    }
    w->buf_n += n;
    return 0;
}

static void walcap_add_ent(struct walcap *w, uint32_t pgno, uint32_t frame)
{
    if (w->nent == w->ent_cap) {
        w->ent_cap = w->ent_cap ? w->ent_cap * 2 : 64;
        w->ent = xrealloc(w->ent, w->ent_cap * sizeof(w->ent[0]));
        w->pgno = xrealloc(w->pgno, w->ent_cap * sizeof(w->pgno[0]));
        w->pframe = xrealloc(w->pframe, w->ent_cap * sizeof(w->pframe[0]));
    }
    if (w->nent == 0) {
        w->txn_first = frame;
        w->resident = 1;
    }
    w->ent[w->nent].pgno = pgno;
    w->ent[w->nent].frame = frame;
    w->nent++;
}

static int ent_cmp(const void *a, const void *b)
{
    const struct walcap_ent *x = a, *y = b;

    if (x->pgno != y->pgno)
        return x->pgno < y->pgno ? -1 : 1;
    return x->frame < y->frame ? -1 : x->frame > y->frame;
}

/* Hand the assembled transaction, committed at frame `commit`, to cb. */
static int walcap_deliver(struct walcap *w, uint32_t commit, uint32_t db_pages, walcap_txn_cb cb,
                          void *arg)
{
    struct walcap_txn t;
    uint32_t i, n = 0;
    int rc;

    qsort(w->ent, w->nent, sizeof(w->ent[0]), ent_cmp);
    for (i = 0; i < w->nent; i++) {
        if (i + 1 < w->nent && w->ent[i + 1].pgno == w->ent[i].pgno)
            continue; /* a later frame of the same page wins */
        if (w->ent[i].pgno > db_pages)
            continue; /* past the end the commit leaves */
        w->pgno[n] = w->ent[i].pgno;
        w->pframe[n] = w->ent[i].frame;
        n++;
    }
    t.page_size = w->page_size;
    t.db_pages = db_pages;
    t.npages = n;
    t.pgno = w->pgno;
    t.salt1 = w->salt1;
    t.salt2 = w->salt2;
    t.commit_frame = commit;
    w->delivering = &t;
    rc = cb(arg, w, &t);
    w->delivering = NULL;
    return rc;
}

/* Whether frame `frame` (not part of an open transaction) is sector padding:
 * an exact repeat of the last commit frame before the sector boundary. */
static int walcap_is_padding(const struct walcap *w, uint32_t frame, const uint8_t *fr)
{
    const uint8_t *c = w->commit_page;

    return w->nent == 0 && c && frame_offset(w, frame) < w->pad_end &&
           get_be32(fr) == get_be32(c) && get_be32(fr + 4) == get_be32(c + 4) &&
           memcmp(fr + WAL_FRAME_HDR_SIZE, c + WAL_FRAME_HDR_SIZE, w->page_size) == 0;
}

/* Frame `frame` (valid, chain ck after it) ends a transaction or padding:
 * move the position past it and note where padding may follow. */
static void walcap_consume(struct walcap *w, uint32_t frame, const uint8_t *fr,
                           const uint32_t ck[2], int is_commit)
{
    int64_t end = frame_offset(w, frame) + (int64_t)frame_size(w);

    w->last = frame;
    w->ck[0] = ck[0];
    w->ck[1] = ck[1];
    if (!is_commit)
        return;
    w->last_commit = frame;
    if (w->sector == 0)
        return;
    w->pad_end = end % w->sector ? (end / w->sector + 1) * w->sector : 0;
    if (w->pad_end) {
        if (!w->commit_page)
            w->commit_page = xmalloc(frame_size(w));
        memcpy(w->commit_page, fr, frame_size(w));
    }
}

/* One valid frame: padding, part of a transaction, or its commit. */
static int walcap_frame(struct walcap *w, uint32_t frame, const uint8_t *fr, const uint32_t ck[2],
                        walcap_txn_cb cb, void *arg)
{
    uint32_t db_pages = get_be32(fr + 4);
    int rc;

    if (walcap_is_padding(w, frame, fr)) {
        walcap_consume(w, frame, fr, ck, 0);
        return 0;
    }
    walcap_add_ent(w, get_be32(fr), frame);
    if (db_pages == 0)
        return 0;
    rc = walcap_deliver(w, frame, db_pages, cb, arg);
    if (rc < 0)
        return rc;
    walcap_consume(w, frame, fr, ck, 1);
    w->nent = 0;
    return 0;
}

/* Walk frames last+1..limit. strict (poll): every frame must be valid and the
 * last must end a transaction. Otherwise (scan): stop at the first invalid
 * frame and drop an unfinished transaction. */
static int walcap_walk(struct walcap *w, uint32_t limit, int strict, walcap_txn_cb cb, void *arg)
{
    uint32_t ck[2] = {w->ck[0], w->ck[1]};
    uint32_t next = w->last + 1;
    size_t fsz = frame_size(w);
    int rc;

    w->nent = 0;
    while (next <= limit) {
        rc = walcap_fill(w, next, limit);
        if (rc < 0)
            return rc;
        for (; next < w->buf_first + w->buf_n; next++) {
            const uint8_t *fr = w->buf + (size_t)(next - w->buf_first) * fsz;
            if (!frame_valid(w, fr, ck)) {
                if (!strict)
                    return 0;
                log_error("walcap: frame %u of %s failed: bad salt or checksum", next, w->path);
                return WALCAP_ERR_CORRUPT;
            }
            rc = walcap_frame(w, next, fr, ck, cb, arg);
            if (rc < 0)
                return rc;
        }
    }
    if (strict && w->nent > 0) {
        log_error("walcap: frame %u of %s failed: not a commit frame", limit, w->path);
        return WALCAP_ERR_CORRUPT;
    }
    return 0;
}

int walcap_poll(struct walcap *w, uint32_t nframe, walcap_txn_cb cb, void *arg)
{
    int valid, rc;

    rc = walcap_check_header(w, &valid);
    if (rc < 0 && rc != -ENOENT)
        return rc;
    /* SQLite runs a hook late when the commit happened in sqlite3_reset(),
     * with the mxFrame of that commit. If a scan has read it meanwhile (and a
     * checkpoint may even have emptied the WAL), there is nothing new. A new
     * WAL generation starts at last = 0, so it never looks stale. */
    if (nframe <= w->last)
        return 0;
    if (rc == -ENOENT) {
        log_error("walcap: open %s failed: no such file after a commit", w->path);
        return WALCAP_ERR_IO;
    }
    if (!valid) {
        log_error("walcap: read %s failed: invalid WAL header after a commit", w->path);
        return WALCAP_ERR_CORRUPT;
    }
    return walcap_walk(w, nframe, 1, cb, arg);
}

int walcap_scan(struct walcap *w, walcap_txn_cb cb, void *arg)
{
    struct stat st;
    int64_t frames;
    int valid, rc;

    rc = walcap_check_header(w, &valid);
    if (rc == -ENOENT)
        return 0;
    if (rc < 0)
        return rc;
    if (!valid)
        return 0;
    if (fstat(w->fd, &st) != 0) {
        log_error("walcap: stat %s failed: %s", w->path, strerror(errno));
        return WALCAP_ERR_IO;
    }
    frames = st.st_size < WAL_HDR_SIZE ? 0 : (st.st_size - WAL_HDR_SIZE) / (int64_t)frame_size(w);
    return walcap_walk(w, (uint32_t)MIN(frames, (int64_t)UINT32_MAX - 1), 0, cb, arg);
}

int walcap_page(struct walcap *w, const struct walcap_txn *txn, uint32_t i, const uint8_t **data)
{
    size_t fsz = frame_size(w);
    uint32_t frame;
    int rc;

    assert(txn == w->delivering && i < txn->npages);
    frame = w->pframe[i];
    if (w->resident) {
        assert(frame >= w->buf_first && frame < w->buf_first + w->buf_n);
        *data = w->buf + (size_t)(frame - w->buf_first) * fsz + WAL_FRAME_HDR_SIZE;
        return 0;
    }
    if (!w->page)
        w->page = xmalloc(fsz);
    rc = util_pread_all(w->fd, w->page, fsz, frame_offset(w, frame));
    if (rc < 0) {
        log_error("walcap: read %s frame %u failed: %s", w->path, frame,
                  rc == -EIO ? "file ends early" : strerror(-rc));
        return rc == -EIO ? WALCAP_ERR_CORRUPT : WALCAP_ERR_IO;
    }
    if (get_be32(w->page) != txn->pgno[i] || get_be32(w->page + 8) != w->salt1 ||
        get_be32(w->page + 12) != w->salt2) {
        log_error("walcap: re-read %s frame %u failed: frame changed", w->path, frame);
        return WALCAP_ERR_CORRUPT;
    }
    *data = w->page + WAL_FRAME_HDR_SIZE;
    return 0;
}
