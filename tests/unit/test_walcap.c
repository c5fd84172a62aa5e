/* Unit tests: primary/walcap.c against real SQLite WAL files, plus synthetic
 * WAL files for the byte orders and padding. Every captured transaction is
 * applied to a replica with sqlite_dbpage; the replica must end up equal to
 * the primary (page 1's rewritten header bytes masked). */
#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/pagesum.h"
#include "harness.h"
#include "sqlhelp.h"
#include "primary/walcap.h"

/* Rows 1..n of a table c(n), for INSERT ... SELECT. */
#define SERIES(n)                                                                                  \
    "WITH RECURSIVE c(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM c WHERE n < " #n ") "

static char tmpdir[] = "/tmp/test_walcap.XXXXXX";

static void path(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", tmpdir, name);
}

/* First column of the first row as text, in a static buffer. */
static const char *query_text(sqlite3 *db, const char *sql)
{
    static char out[256];
    sqlite3_stmt *st;

    out[0] = '\0';
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return "(prepare failed)";
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        snprintf(out, sizeof(out), "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return out;
}

static sqlite3 *open_db(const char *name, int flags)
{
    char p[512];
    sqlite3 *db = NULL;

    path(p, sizeof(p), name);
    if (sqlite3_open_v2(p, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | flags, NULL) !=
        SQLITE_OK)
        abort();
    sqlite3_busy_timeout(db, 5000);
    return db;
}

static void remove_db(const char *name)
{
    char p[512], q[600];

    path(p, sizeof(p), name);
    unlink(p);
    snprintf(q, sizeof(q), "%s-wal", p);
    unlink(q);
    snprintf(q, sizeof(q), "%s-shm", p);
    unlink(q);
}

static int copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    char buf[65536];
    size_t n;

    if (!a || !b)
        abort();
    while ((n = fread(buf, 1, sizeof(buf), a)) > 0)
        fwrite(buf, 1, n, b);
    fclose(a);
    fclose(b);
    return 0;
}

/* Pages of db, page 1 masked, compared with those of other. Returns the
 * number of differing pages (page count mismatch counts as one). */
static int compare_dbs(sqlite3 *a, sqlite3 *b)
{
    sqlite3_stmt *x, *y;
    int diff = 0, ra, rb;

    if (query(a, "PRAGMA page_count") != query(b, "PRAGMA page_count"))
        diff++;
    sqlite3_prepare_v2(a, "SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno", -1, &x, NULL);
    sqlite3_prepare_v2(b, "SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno", -1, &y, NULL);
    while ((ra = sqlite3_step(x)) == SQLITE_ROW && (rb = sqlite3_step(y)) == SQLITE_ROW) {
        int n = sqlite3_column_bytes(x, 1);
        uint32_t pg = (uint32_t)sqlite3_column_int(x, 0);
        if (n != sqlite3_column_bytes(y, 1) ||
            pagesum_page(pg, sqlite3_column_blob(x, 1), (uint32_t)n) !=
                pagesum_page(pg, sqlite3_column_blob(y, 1), (uint32_t)n))
            diff++;
    }
    sqlite3_finalize(x);
    sqlite3_finalize(y);
    return diff;
}

/* --- the capture side: hook -> walcap -> apply to a replica ------------------- */

struct cap {
    struct walcap *w;
    uint32_t commits[4096]; /* commit frames, in order */
    int ncommits;
    int padded_hooks; /* hook calls whose nFrame is past the last commit frame */
    sqlite3 *replica;
    sqlite3_stmt *ins;
    uint32_t replica_pages;
    int hooks, txns, this_hook, bad_hooks, errors;
    uint32_t last_frame, max_npages;
};

static int apply_cb(void *arg, struct walcap *w, const struct walcap_txn *t)
{
    struct cap *c = arg;
    const uint8_t *data;

    c->txns++;
    c->this_hook++;
    if (c->ncommits < (int)ARRAY_LEN(c->commits))
        c->commits[c->ncommits++] = t->commit_frame;
    c->last_frame = t->commit_frame;
    if (t->npages > c->max_npages)
        c->max_npages = t->npages;
    if (exec(c->replica, "BEGIN IMMEDIATE") != SQLITE_OK)
        return -100;
    for (uint32_t i = 0; i < t->npages; i++) {
        if (i > 0 && t->pgno[i] <= t->pgno[i - 1])
            return -101;
        if (t->pgno[i] > t->db_pages || walcap_page(w, t, i, &data) != 0)
            return -102;
        sqlite3_bind_int64(c->ins, 1, t->pgno[i]);
        sqlite3_bind_blob(c->ins, 2, data, (int)t->page_size, SQLITE_STATIC);
        if (sqlite3_step(c->ins) != SQLITE_DONE)
            return -103;
        sqlite3_reset(c->ins);
    }
    if (t->db_pages < c->replica_pages) { /* truncate last (research/wal.md 1.4 #2) */
        sqlite3_bind_int64(c->ins, 1, (sqlite3_int64)t->db_pages + 1);
        sqlite3_bind_null(c->ins, 2);
        if (sqlite3_step(c->ins) != SQLITE_DONE)
            return -104;
        sqlite3_reset(c->ins);
    }
    if (exec(c->replica, "COMMIT") != SQLITE_OK)
        return -105;
    c->replica_pages = t->db_pages;
    return 0;
}

static int hook(void *arg, sqlite3 *db, const char *zdb, int nframe)
{
    struct cap *c = arg;
    int rc;

    (void)db;
    (void)zdb;
    c->hooks++;
    c->this_hook = 0;
    rc = walcap_poll(c->w, (uint32_t)nframe, apply_cb, c);
    if (rc != 0)
        c->errors++;
    if (c->this_hook != 1) /* one commit per hook call: each captured exactly once */
        c->bad_hooks++;
    if (c->this_hook && (uint32_t)nframe > c->last_frame)
        c->padded_hooks++;
    return SQLITE_OK;
}

static void cap_init(struct cap *c, sqlite3 *p, const char *pname, const char *rname)
{
    char pp[512];

    memset(c, 0, sizeof(*c));
    remove_db(rname);
    c->replica = open_db(rname, 0);
    exec(c->replica, "PRAGMA journal_mode=WAL; PRAGMA writable_schema=ON");
    sqlite3_prepare_v2(c->replica, "INSERT INTO sqlite_dbpage(pgno, data) VALUES (?, ?)", -1,
                       &c->ins, NULL);
    path(pp, sizeof(pp), pname);
    c->w = walcap_open(pp);
    sqlite3_wal_hook(p, hook, c);
}

static void cap_free(struct cap *c)
{
    sqlite3_finalize(c->ins);
    sqlite3_close(c->replica);
    walcap_close(c->w);
}

/* A workload with spills, a rolled back spilled transaction, checkpoints that
 * restart the WAL, schema changes and VACUUMs that shrink the database. */
static void workload(sqlite3 *p, int rounds)
{
    char sql[512];

    exec(p, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); CREATE TABLE u(x)");
    for (int k = 1; k <= rounds; k++) {
        snprintf(sql, sizeof(sql),
                 "WITH RECURSIVE c(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM c WHERE n < %d) "
                 "INSERT INTO t(v) SELECT randomblob(%d) FROM c",
                 1 + k % 13, 100 + k * 7 % 300);
        exec(p, sql);
        exec(p, "UPDATE u SET x = x + 1; INSERT INTO u VALUES (1)");
        if (k % 9 == 0) { /* big: spills to the WAL before the commit */
            exec(p, "PRAGMA cache_size=10; BEGIN");
            exec(p, SERIES(1500) "INSERT INTO t(v) SELECT randomblob(600) FROM c");
            exec(p, "UPDATE t SET v = randomblob(300) WHERE id % 3 = 0");
            exec(p, k % 2 ? "COMMIT" : "ROLLBACK");
            exec(p, "PRAGMA cache_size=-2000");
        }
        if (k % 10 == 0)
            exec(p, "PRAGMA wal_checkpoint(TRUNCATE)");
        if (k % 7 == 0)
            exec(p, "PRAGMA wal_checkpoint(PASSIVE)");
        if (k % 15 == 0) {
            exec(p, "DELETE FROM t WHERE id % 4 != 0; CREATE INDEX IF NOT EXISTS tv ON t(v)");
            exec(p, "VACUUM");
        }
    }
}

static void run_capture(size_t buffer_limit)
{
    struct cap c;
    sqlite3 *p, *r2;
    int64_t before;

    remove_db("p.db");
    p = open_db("p.db", 0);
    exec(p, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0");
    exec(p, "PRAGMA page_size"); /* fix the page size before the replica copies it */
    cap_init(&c, p, "p.db", "r.db");
    if (buffer_limit)
        walcap_set_buffer_limit(c.w, buffer_limit);
    workload(p, 45);
    CHECK(c.errors == 0);
    CHECK(c.bad_hooks == 0);
    CHECK(c.txns == c.hooks);
    CHECK(c.txns > 60);
    CHECK(c.max_npages > 100); /* the spilled transactions were big */
    CHECK(compare_dbs(p, c.replica) == 0);
    CHECK(query(c.replica, "SELECT count(*) FROM t") == query(p, "SELECT count(*) FROM t"));
    before = query(p, "PRAGMA page_count");
    exec(p, "DELETE FROM t; VACUUM");
    CHECK(query(p, "PRAGMA page_count") < before);
    CHECK(compare_dbs(p, c.replica) == 0);
    /* On a fresh connection: the applier's schema cache (writable_schema)
     * can be stale right after a VACUUM and report unused pages. */
    r2 = open_db("r.db", 0);
    CHECK(strcmp(query_text(r2, "PRAGMA integrity_check"), "ok") == 0);
    sqlite3_close(r2);
    cap_free(&c);
    sqlite3_close(p);
}

TEST(captures_every_commit_once)
{
    run_capture(0);
}

TEST(captures_big_transactions_page_by_page)
{
    /* Three frames of buffer: every transaction above it is re-read. */
    run_capture(3 * (24 + 4096));
}

/* --- scanning, corruption and error paths on copies of a real WAL --------------- */

/* Build p.db with `n` small commits and a rolled back spilled transaction
 * after them, without checkpoints; capture it through the hook into c. */
static sqlite3 *make_wal(struct cap *c, int n)
{
    sqlite3 *p;

    remove_db("p.db");
    p = open_db("p.db", 0);
    exec(p, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0");
    cap_init(c, p, "p.db", "r.db");
    exec(p, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)");
    for (int k = 1; k < n; k++)
        exec(p, k % 5 ? "INSERT INTO t(v) VALUES (randomblob(3000))"
                      : SERIES(30) "INSERT INTO t(v) SELECT randomblob(900) FROM c");
    exec(p, "PRAGMA cache_size=10; BEGIN");
    exec(p, SERIES(800) "INSERT INTO t(v) SELECT randomblob(800) FROM c");
    exec(p, "ROLLBACK");
    return p;
}

/* Copy p.db-wal to <name>-wal and return a walcap on <name>. */
static struct walcap *wal_copy(const char *name)
{
    char from[512], to[600], db[512];

    path(from, sizeof(from), "p.db-wal");
    path(db, sizeof(db), name);
    snprintf(to, sizeof(to), "%s-wal", db);
    copy_file(from, to);
    return walcap_open(db);
}

static int count_cb(void *arg, struct walcap *w, const struct walcap_txn *t)
{
    int *n = arg;
    const uint8_t *data;

    for (uint32_t i = 0; i < t->npages; i++)
        if (walcap_page(w, t, i, &data) != 0)
            return -1;
    (*n)++;
    return 0;
}

static void flip_byte(const char *name, int64_t off)
{
    char p[512];
    uint8_t b;
    int fd;

    path(p, sizeof(p), name);
    fd = open(p, O_RDWR);
    if (fd < 0 || pread(fd, &b, 1, off) != 1)
        abort();
    b ^= 0x40;
    if (pwrite(fd, &b, 1, off) != 1)
        abort();
    close(fd);
}

static int64_t frame_off(uint32_t frame, uint32_t ps)
{
    return 32 + (int64_t)(frame - 1) * (24 + ps);
}

TEST(scan_stops_at_mxframe_and_at_corruption)
{
    struct cap c;
    sqlite3 *p = make_wal(&c, 20);
    struct walcap *w;
    uint32_t s1, s2, frame;
    int n = 0;

    REQUIRE(c.errors == 0 && c.ncommits == 20);
    /* The rolled back spill left checksum-valid frames without a commit. */
    w = wal_copy("s.db");
    CHECK(walcap_scan(w, count_cb, &n) == 0);
    CHECK(n == 20);
    walcap_position(w, &s1, &s2, &frame);
    CHECK(frame == c.commits[19]);
    CHECK(s1 != 0 || s2 != 0);
    CHECK(walcap_page_size(w) == 4096);
    /* Scanning again finds nothing new. */
    n = 0;
    CHECK(walcap_scan(w, count_cb, &n) == 0 && n == 0);
    walcap_close(w);

    /* A flipped byte in the 6th commit frame: the scan delivers 5. */
    w = wal_copy("s.db");
    flip_byte("s.db-wal", frame_off(c.commits[5], 4096) + 24 + 100);
    n = 0;
    CHECK(walcap_scan(w, count_cb, &n) == 0);
    CHECK(n == 5);
    walcap_close(w);
    /* ... and a poll over it is an error. */
    w = wal_copy("s.db");
    flip_byte("s.db-wal", frame_off(c.commits[5], 4096) + 24 + 100);
    n = 0;
    CHECK(walcap_poll(w, c.commits[19], count_cb, &n) == WALCAP_ERR_CORRUPT);
    CHECK(n == 5);
    walcap_close(w);
    /* A bad salt is caught the same way. */
    w = wal_copy("s.db");
    flip_byte("s.db-wal", frame_off(c.commits[2], 4096) + 9);
    n = 0;
    CHECK(walcap_poll(w, c.commits[19], count_cb, &n) == WALCAP_ERR_CORRUPT && n == 2);
    walcap_close(w);
    cap_free(&c);
    sqlite3_close(p);
}

TEST(poll_rejects_inconsistent_nframe)
{
    struct cap c;
    sqlite3 *p = make_wal(&c, 12);
    struct walcap *w;
    int n = 0, k;

    REQUIRE(c.errors == 0 && c.ncommits == 12);
    w = wal_copy("s.db");
    CHECK(walcap_poll(w, c.commits[3], count_cb, &n) == 0 && n == 4);
    CHECK(walcap_poll(w, c.commits[3], count_cb, &n) == 0 && n == 4); /* nothing new */
    /* A late hook for a commit already read does nothing. */
    CHECK(walcap_poll(w, c.commits[1], count_cb, &n) == 0 && n == 4);
    CHECK(walcap_poll(w, c.commits[5], count_cb, &n) == 0 && n == 6);
    walcap_close(w);
    /* nFrame in the middle of a transaction. */
    for (k = 0; k + 1 < c.ncommits && c.commits[k + 1] - c.commits[k] < 2; k++)
        ;
    REQUIRE(k + 1 < c.ncommits);
    w = wal_copy("s.db");
    n = 0;
    CHECK(walcap_poll(w, c.commits[k] + 1, count_cb, &n) == WALCAP_ERR_CORRUPT);
    CHECK(n == k + 1);
    walcap_close(w);
    /* nFrame past the end of the file. */
    w = wal_copy("s.db");
    CHECK(walcap_poll(w, c.commits[11] + 100000, count_cb, &n) == WALCAP_ERR_CORRUPT);
    walcap_close(w);
    cap_free(&c);
    sqlite3_close(p);
}

static int fail_cb(void *arg, struct walcap *w, const struct walcap_txn *t)
{
    (void)arg;
    (void)w;
    (void)t;
    return -77;
}

/* Damages the file under a non-resident transaction before its pages are
 * read back: mode 0 rewrites the pgno of all its frames, mode 1 truncates. */
static int damage_cb(void *arg, struct walcap *w, const struct walcap_txn *t)
{
    int *mode = arg;
    const uint8_t *data;
    char p[512];
    int rc, fd;

    path(p, sizeof(p), "s.db-wal");
    fd = open(p, O_RDWR);
    if (fd < 0)
        abort();
    if (*mode == 0) {
        static const uint8_t junk[4] = {0x7f, 0, 0, 1};
        for (uint32_t f = 1; f <= t->commit_frame; f++)
            if (pwrite(fd, junk, 4, frame_off(f, t->page_size)) != 4)
                abort();
    } else if (ftruncate(fd, 32) != 0) {
        abort();
    }
    close(fd);
    rc = walcap_page(w, t, 0, &data);
    return rc == WALCAP_ERR_CORRUPT ? -88 : -89;
}

TEST(errors_reach_the_caller)
{
    struct cap c;
    sqlite3 *p = make_wal(&c, 6);
    struct walcap *w;
    char db[512];
    int n = 0, mode;

    REQUIRE(c.errors == 0);
    /* No WAL file: nothing to scan, but a poll after a commit is an error. */
    path(db, sizeof(db), "none.db");
    w = walcap_open(db);
    CHECK(walcap_scan(w, count_cb, &n) == 0 && n == 0);
    CHECK(walcap_poll(w, 1, count_cb, &n) == WALCAP_ERR_IO);
    walcap_close(w);
    /* An invalid header: an empty WAL to a scan, an error to a poll. */
    w = wal_copy("s.db");
    flip_byte("s.db-wal", 26); /* header checksum */
    CHECK(walcap_scan(w, count_cb, &n) == 0 && n == 0);
    CHECK(walcap_poll(w, c.commits[0], count_cb, &n) == WALCAP_ERR_CORRUPT);
    walcap_close(w);
    /* The callback's error stops the walk. */
    w = wal_copy("s.db");
    CHECK(walcap_poll(w, c.commits[5], fail_cb, NULL) == -77);
    walcap_close(w);
    w = wal_copy("s.db");
    CHECK(walcap_scan(w, fail_cb, NULL) == -77);
    walcap_close(w);
    /* A frame that changes under a big transaction's second read. */
    for (mode = 0; mode < 2; mode++) {
        w = wal_copy("s.db");
        walcap_set_buffer_limit(w, 1);
        CHECK(walcap_poll(w, c.commits[0], damage_cb, &mode) == -88);
        walcap_close(w);
    }
    cap_free(&c);
    sqlite3_close(p);
}

/* --- synthetic WAL files: byte orders, duplicates, padding ------------------------ */

struct sframe {
    uint32_t pgno, commit; /* commit: db size in a commit frame, else 0 */
    uint8_t fill;          /* page content */
};

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* The WAL checksum, written out independently of walcap.c. */
static void synth_cksum(int be, const uint8_t *p, size_t n, uint32_t *s1, uint32_t *s2)
{
    for (size_t i = 0; i < n; i += 8) {
        uint32_t x0, x1;
        if (be) {
            x0 = (uint32_t)p[i] << 24 | (uint32_t)p[i + 1] << 16 | (uint32_t)p[i + 2] << 8 |
                 p[i + 3];
            x1 = (uint32_t)p[i + 4] << 24 | (uint32_t)p[i + 5] << 16 | (uint32_t)p[i + 6] << 8 |
                 p[i + 7];
        } else {
            memcpy(&x0, p + i, 4); /* this test runs on little-endian hosts */
            memcpy(&x1, p + i + 4, 4);
        }
        *s1 += x0 + *s2;
        *s2 += x1 + *s1;
    }
}

static void synth_frame(FILE *out, int be, uint32_t ps, const struct sframe *f,
                        const uint8_t *salts, uint8_t *fr, uint32_t *s1, uint32_t *s2, long *off)
{
    put32(fr, f->pgno);
    put32(fr + 4, f->commit);
    memcpy(fr + 8, salts, 8);
    memset(fr + 24, f->fill, ps);
    synth_cksum(be, fr, 8, s1, s2);
    synth_cksum(be, fr + 24, ps, s1, s2);
    put32(fr + 16, *s1);
    put32(fr + 20, *s2);
    fwrite(fr, 1, 24 + ps, out);
    *off += 24 + (long)ps;
}

/* Write <name>-wal holding frames f[0..n), page size ps. With sector != 0,
 * pad each commit like SQLite does without powersafe overwrite. */
static void synth_wal(const char *name, int be, uint32_t ps, const struct sframe *f, int n,
                      uint32_t sector)
{
    uint8_t hdr[32], *fr = calloc(1, 24 + ps);
    uint32_t s1 = 0, s2 = 0;
    char p[512];
    FILE *out;
    long off = 32;

    path(p, sizeof(p), name);
    strcat(p, "-wal");
    out = fopen(p, "wb");
    put32(hdr, 0x377f0682u | (be ? 1 : 0));
    put32(hdr + 4, 3007000);
    put32(hdr + 8, ps);
    put32(hdr + 12, 0);
    put32(hdr + 16, 0x11223344);
    put32(hdr + 20, 0x55667788);
    synth_cksum(be, hdr, 24, &s1, &s2);
    put32(hdr + 24, s1);
    put32(hdr + 28, s2);
    fwrite(hdr, 1, 32, out);
    for (int i = 0; i < n; i++) {
        long sync;
        synth_frame(out, be, ps, &f[i], hdr + 16, fr, &s1, &s2, &off);
        /* SQLite repeats the commit frame while the write offset is short of
         * the next boundary (walFrames). */
        sync = sector ? (off + sector - 1) / sector * sector : off;
        while (f[i].commit && off < sync)
            synth_frame(out, be, ps, &f[i], hdr + 16, fr, &s1, &s2, &off);
    }
    fclose(out);
    free(fr);
}

struct seen {
    int n;
    uint32_t db_pages[8], npages[8], pgno[8][8];
    uint8_t first_byte[8][8];
};

static int record_cb(void *arg, struct walcap *w, const struct walcap_txn *t)
{
    struct seen *s = arg;
    const uint8_t *data;

    if (s->n >= 8 || t->npages > 8)
        return -1;
    s->db_pages[s->n] = t->db_pages;
    s->npages[s->n] = t->npages;
    for (uint32_t i = 0; i < t->npages; i++) {
        if (walcap_page(w, t, i, &data) != 0)
            return -1;
        s->pgno[s->n][i] = t->pgno[i];
        s->first_byte[s->n][i] = data[0];
    }
    s->n++;
    return 0;
}

static const struct sframe synth[] = {
    {1, 0, 0x10}, {3, 0, 0x30}, {1, 0, 0x11}, {2, 3, 0x20}, /* txn 1: page 1 twice */
    {5, 0, 0x50}, {3, 0, 0x31}, {4, 0, 0x40}, {2, 3, 0x21}, /* txn 2: 4, 5 past the end */
    {1, 4, 0x12},                                           /* txn 3 */
    {2, 0, 0x22},                                           /* unfinished */
};

static void check_synth(const struct seen *s)
{
    CHECK(s->n == 3);
    CHECK(s->db_pages[0] == 3 && s->npages[0] == 3);
    CHECK(s->pgno[0][0] == 1 && s->first_byte[0][0] == 0x11); /* the later frame won */
    CHECK(s->pgno[0][1] == 2 && s->first_byte[0][1] == 0x20);
    CHECK(s->pgno[0][2] == 3 && s->first_byte[0][2] == 0x30);
    CHECK(s->npages[1] == 2 && s->pgno[1][0] == 2 && s->pgno[1][1] == 3);
    CHECK(s->first_byte[1][1] == 0x31);
    CHECK(s->db_pages[2] == 4 && s->npages[2] == 1 && s->first_byte[2][0] == 0x12);
}

TEST(both_checksum_byte_orders)
{
    for (int be = 0; be < 2; be++) {
        struct seen s;
        char db[512];
        struct walcap *w;

        memset(&s, 0, sizeof(s));
        synth_wal("syn.db", be, 512, synth, ARRAY_LEN(synth), 0);
        path(db, sizeof(db), "syn.db");
        w = walcap_open(db);
        CHECK(walcap_scan(w, record_cb, &s) == 0);
        check_synth(&s);
        walcap_close(w);
        /* A poll up to the last commit sees the same. */
        memset(&s, 0, sizeof(s));
        w = walcap_open(db);
        CHECK(walcap_poll(w, 9, record_cb, &s) == 0);
        check_synth(&s);
        walcap_close(w);
    }
}

TEST(sector_padding_is_skipped)
{
    struct seen s;
    char db[512];
    struct walcap *w;
    uint32_t s1, s2, frame;

    synth_wal("pad.db", 0, 512, synth, ARRAY_LEN(synth), 4096);
    path(db, sizeof(db), "pad.db");
    memset(&s, 0, sizeof(s));
    w = walcap_open(db);
    walcap_set_sector_padding(w, 4096);
    CHECK(walcap_scan(w, record_cb, &s) == 0);
    check_synth(&s);
    walcap_position(w, &s1, &s2, &frame);
    CHECK(s1 == 0x11223344 && s2 == 0x55667788);
    CHECK(frame > 9); /* the commits moved past their padding */
    walcap_close(w);
    /* Without padding expected, the repeats look like commits of their own. */
    memset(&s, 0, sizeof(s));
    w = walcap_open(db);
    CHECK(walcap_scan(w, record_cb, &s) == -1 || s.n > 3);
    walcap_close(w);
}

TEST(real_padding_with_psow_off)
{
    char uri[600], p[512];
    sqlite3_file *f = NULL;
    struct cap c;
    sqlite3 *db;

    remove_db("psow.db");
    path(p, sizeof(p), "psow.db");
    snprintf(uri, sizeof(uri), "file:%s?psow=0", p);
    REQUIRE(sqlite3_open_v2(uri, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
                            NULL) == SQLITE_OK);
    exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0");
    REQUIRE(sqlite3_file_control(db, "main", SQLITE_FCNTL_FILE_POINTER, &f) == SQLITE_OK && f);
    CHECK((f->pMethods->xDeviceCharacteristics(f) & SQLITE_IOCAP_POWERSAFE_OVERWRITE) == 0);
    cap_init(&c, db, "psow.db", "r.db");
    walcap_set_sector_padding(c.w, (uint32_t)f->pMethods->xSectorSize(f));
    workload(db, 20);
    CHECK(c.errors == 0 && c.bad_hooks == 0);
    CHECK(c.padded_hooks > 5); /* SQLite did pad */
    CHECK(compare_dbs(db, c.replica) == 0);
    cap_free(&c);
    sqlite3_close(db);
}

int main(void)
{
    if (!mkdtemp(tmpdir))
        return 1;
    RUN(captures_every_commit_once);
    RUN(captures_big_transactions_page_by_page);
    RUN(scan_stops_at_mxframe_and_at_corruption);
    RUN(poll_rejects_inconsistent_nframe);
    RUN(errors_reach_the_caller);
    RUN(both_checksum_byte_orders);
    RUN(sector_padding_is_skipped);
    RUN(real_padding_with_psow_off);
    {
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "cleanup of %s failed\n", tmpdir);
    }
    return HARNESS_END();
}
