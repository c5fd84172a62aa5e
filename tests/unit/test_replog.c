/* Unit tests: primary/replog.c, the replication log: append and read back,
 * segments, retention, reopen, torn tails cut at every byte, damage, write
 * failures, and a reader thread racing the writer. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "harness.h"
#include "primary/replog.h"

#define PS 512

static char tmpdir[] = "/tmp/test_replog.XXXXXX";
static char logdir[64];

/* Page content is a function of (txid, pgno), so any page can be checked. */
static void make_page(uint8_t *p, uint32_t ps, uint64_t txid, uint32_t pgno)
{
    for (uint32_t i = 0; i < ps; i++)
        p[i] = (uint8_t)(txid * 31 + pgno * 7 + i);
}

/* Pages of record txid: 1 + txid % 5 pages, spread over the database. */
static uint32_t txn_pages(uint64_t txid, uint32_t *pgno)
{
    uint32_t n = 1 + (uint32_t)(txid % 5);

    for (uint32_t i = 0; i < n; i++)
        pgno[i] = 1 + i * 3 + (uint32_t)(txid % 3);
    return n;
}

static void make_txn(struct replog_txn *t, uint64_t txid, uint32_t ps, uint32_t npages)
{
    memset(t, 0, sizeof(*t));
    t->txid = txid;
    t->time_us = 1700000000000000 + (int64_t)txid;
    t->page_size = ps;
    t->npages = npages;
    t->db_pages = 20 + npages * 3;
    t->checksum = txid * 0x9e3779b97f4a7c15ull;
    t->salt1 = (uint32_t)txid;
    t->salt2 = 7;
    t->commit_frame = (uint32_t)txid * 2;
}

struct gen {
    uint64_t txid;
    uint8_t page[65536];
    uint32_t ps;
};

static int gen_page_cb(void *arg, uint32_t i, const uint8_t **data)
{
    struct gen *g = arg;
    uint32_t pgno[64];

    txn_pages(g->txid, pgno);
    make_page(g->page, g->ps, g->txid, pgno[i]);
    *data = g->page;
    return 0;
}

static int append(struct replog *log, uint64_t txid)
{
    static struct gen g;
    struct replog_txn t;
    uint32_t pgno[64];

    make_txn(&t, txid, PS, txn_pages(txid, pgno));
    g.txid = txid;
    g.ps = PS;
    return replog_append(log, &t, pgno, gen_page_cb, &g);
}

static struct replog *open_log(uint64_t base, uint64_t retain, uint64_t seg)
{
    struct replog_config cfg = {logdir, base, retain, seg};
    struct replog *log = NULL;
    int rc = replog_open(&cfg, &log);

    return rc == 0 ? log : NULL;
}

/* Read txids from..to with a reader and check every byte. Returns the number
 * of records that matched. */
static int read_back(struct replog *log, uint64_t from, uint64_t to)
{
    struct replog_reader *r;
    struct replog_txn t, want;
    uint8_t page[PS];
    int ok = 0;

    if (replog_reader_open(log, from, &r) != 0)
        return -1;
    for (uint64_t txid = from; txid <= to; txid++) {
        uint32_t pgno[64], got_pgno;
        const uint8_t *data;
        int good = 1;

        if (replog_reader_next(r, &t) != 0)
            break;
        make_txn(&want, txid, PS, txn_pages(txid, pgno));
        good = memcmp(&t, &want, sizeof(t)) == 0;
        for (uint32_t i = 0; good && i < t.npages; i++) {
            make_page(page, PS, txid, pgno[i]);
            good = replog_reader_page(r, i, &got_pgno, &data) == 0 && got_pgno == pgno[i] &&
                   memcmp(data, page, PS) == 0;
        }
        ok += good;
    }
    CHECK(replog_reader_next(r, &t) == REPLOG_AGAIN || replog_reader_txid(r) <= to);
    replog_reader_close(r);
    return ok;
}

static int count_segments(void)
{
    DIR *d = opendir(logdir);
    struct dirent *de;
    int n = 0;

    if (!d)
        return -1;
    while ((de = readdir(d)) != NULL)
        n += strstr(de->d_name, ".log") != NULL;
    closedir(d);
    return n;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* First txid of the k-th oldest segment (0 if there is none). */
static uint64_t nth_segment(int k)
{
    uint64_t firsts[256];
    DIR *d = opendir(logdir);
    struct dirent *de;
    int n = 0;

    if (!d)
        return 0;
    while ((de = readdir(d)) != NULL && n < 256)
        if (strstr(de->d_name, ".log"))
            firsts[n++] = strtoull(de->d_name, NULL, 16);
    closedir(d);
    qsort(firsts, (size_t)n, sizeof(firsts[0]), cmp_u64);
    return k < n ? firsts[k] : 0;
}

static void seg_file(char *out, size_t n, uint64_t first)
{
    snprintf(out, n, "%s/%016llx.log", logdir, (unsigned long long)first);
}

static off_t file_size(const char *p)
{
    struct stat st;

    return stat(p, &st) == 0 ? st.st_size : -1;
}

static void fresh_dir(void)
{
    char cmd[256];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", logdir);
    if (system(cmd) != 0)
        abort();
}

TEST(append_and_read_back)
{
    struct replog *log;
    struct replog_txn last;

    fresh_dir();
    log = open_log(0, 0, 0);
    REQUIRE(log);
    CHECK(replog_head(log) == 0 && replog_first(log) == 0 && replog_bytes(log) == 0);
    CHECK(replog_last(log, &last) == 0);
    for (uint64_t t = 1; t <= 50; t++)
        CHECK(append(log, t) == 0);
    CHECK(replog_head(log) == 50 && replog_first(log) == 1);
    CHECK(replog_last(log, &last) == 1 && last.txid == 50);
    CHECK(read_back(log, 1, 50) == 50);
    CHECK(read_back(log, 17, 50) == 34); /* from the middle of a segment */
    CHECK(replog_sync(log) == 0);
    CHECK(replog_sync(log) == 0); /* nothing new: a no-op */
    replog_close(log);
    /* Reopen: same head, same records. */
    log = open_log(0, 0, 0);
    REQUIRE(log);
    CHECK(replog_head(log) == 50 && replog_first(log) == 1);
    CHECK(replog_last(log, &last) == 1 && last.txid == 50 &&
          last.checksum == 50 * 0x9e3779b97f4a7c15ull);
    CHECK(append(log, 51) == 0);
    CHECK(read_back(log, 1, 51) == 51);
    replog_close(log);
}

TEST(append_pages_array)
{
    struct replog *log;
    struct replog_reader *r;
    struct replog_txn t;
    uint8_t a[PS], b[PS];
    const uint8_t *pages[2] = {a, b}, *data;
    uint32_t pgno[2] = {2, 9}, got;

    fresh_dir();
    log = open_log(0, 0, 0);
    REQUIRE(log);
    memset(a, 0xaa, PS);
    memset(b, 0xbb, PS);
    make_txn(&t, 1, PS, 2);
    CHECK(replog_append_pages(log, &t, pgno, pages) == 0);
    make_txn(&t, 2, PS, 0); /* a commit with no page left (all past the end) */
    CHECK(replog_append_pages(log, &t, pgno, pages) == 0);
    REQUIRE(replog_reader_open(log, 1, &r) == 0);
    CHECK(replog_reader_next(r, &t) == 0 && t.txid == 1 && t.npages == 2);
    CHECK(replog_reader_page(r, 1, &got, &data) == 0 && got == 9 && data[0] == 0xbb);
    CHECK(replog_reader_page(r, 0, &got, &data) == 0 && got == 2 && data[PS - 1] == 0xaa);
    CHECK(replog_reader_next(r, &t) == 0 && t.txid == 2 && t.npages == 0);
    CHECK(replog_reader_next(r, &t) == REPLOG_AGAIN);
    replog_reader_close(r);
    replog_close(log);
}

TEST(segments_roll_and_prune)
{
    struct replog *log;
    struct replog_reader *r;
    struct replog_txn t;
    char p[256];

    fresh_dir();
    log = open_log(0, 40000, 8000);
    REQUIRE(log);
    for (uint64_t txid = 1; txid <= 100; txid++)
        REQUIRE(append(log, txid) == 0);
    CHECK(count_segments() > 10);
    seg_file(p, sizeof(p), 1);
    CHECK(file_size(p) >= 8000 && file_size(p) < 8000 + 4000);
    CHECK(read_back(log, 1, 100) == 100); /* across segments */
    /* A reader inside the oldest segment keeps working after it is pruned. */
    REQUIRE(replog_reader_open(log, 2, &r) == 0);
    CHECK(replog_sync(log) == 0);
    CHECK(replog_prune(log) == 0);
    CHECK(replog_bytes(log) <= 40000);
    CHECK(replog_first(log) > 1);
    CHECK(file_size(p) == -1);
    CHECK(replog_reader_next(r, &t) == 0 && t.txid == 2);
    while (replog_reader_next(r, &t) == 0 && t.txid < 100)
        ;
    CHECK(t.txid == 100 || replog_reader_txid(r) < replog_first(log));
    replog_reader_close(r);
    /* Opening at a pruned txid, at 0 or past head + 1 is refused. */
    CHECK(replog_reader_open(log, 1, &r) == REPLOG_ERR_PRUNED);
    CHECK(replog_reader_open(log, replog_first(log) - 1, &r) == REPLOG_ERR_PRUNED);
    CHECK(replog_reader_open(log, 0, &r) == REPLOG_ERR_RANGE);
    CHECK(replog_reader_open(log, 102, &r) == REPLOG_ERR_RANGE);
    CHECK(read_back(log, replog_first(log), 100) == (int)(101 - replog_first(log)));
    /* Waiting at head + 1 across a segment roll. */
    REQUIRE(replog_reader_open(log, 101, &r) == 0);
    CHECK(replog_reader_next(r, &t) == REPLOG_AGAIN);
    for (uint64_t txid = 101; txid <= 110; txid++) {
        CHECK(append(log, txid) == 0);
        CHECK(replog_reader_next(r, &t) == 0 && t.txid == txid);
    }
    replog_reader_close(r);
    replog_close(log);
    /* Reopen keeps what is left. */
    log = open_log(0, 40000, 8000);
    REQUIRE(log);
    CHECK(replog_head(log) == 110 && replog_first(log) > 1);
    replog_close(log);
}

TEST(a_slow_reader_finds_its_next_segment_pruned)
{
    struct replog *log;
    struct replog_reader *r;
    struct replog_txn t;
    uint64_t first_seg_end;
    int rc = 0;

    fresh_dir();
    log = open_log(0, 20000, 6000);
    REQUIRE(log);
    for (uint64_t txid = 1; txid <= 20; txid++)
        REQUIRE(append(log, txid) == 0);
    REQUIRE(replog_reader_open(log, 1, &r) == 0);
    for (uint64_t txid = 21; txid <= 200; txid++)
        REQUIRE(append(log, txid) == 0);
    CHECK(replog_prune(log) == 0);
    first_seg_end = replog_first(log);
    while ((rc = replog_reader_next(r, &t)) == 0)
        ;
    CHECK(rc == REPLOG_ERR_PRUNED);
    CHECK(replog_reader_txid(r) < first_seg_end);
    replog_reader_close(r);
    replog_close(log);
}

TEST(empty_log_starts_at_base)
{
    struct replog *log;
    struct replog_reader *r;
    struct replog_txn t;
    char p[256];

    fresh_dir();
    log = open_log(41, 0, 0);
    REQUIRE(log);
    CHECK(replog_head(log) == 41 && replog_first(log) == 0);
    CHECK(replog_reader_open(log, 41, &r) == REPLOG_ERR_PRUNED);
    CHECK(replog_reader_open(log, 43, &r) == REPLOG_ERR_RANGE);
    REQUIRE(replog_reader_open(log, 42, &r) == 0);
    CHECK(replog_reader_next(r, &t) == REPLOG_AGAIN);
    CHECK(append(log, 42) == 0);
    CHECK(replog_reader_next(r, &t) == 0 && t.txid == 42);
    replog_reader_close(r);
    seg_file(p, sizeof(p), 42);
    CHECK(file_size(p) > 0);
    replog_close(log);
}

/* Cut the newest segment at every length: reopening must keep exactly the
 * records that are whole, and appends must go on from there. */
TEST(torn_tail_cut_at_every_byte)
{
    struct replog *log;
    char p[256];
    off_t ends[8];
    uint8_t *whole_file;
    size_t size;
    int n = 0;
    FILE *f;

    fresh_dir();
    log = open_log(0, 0, 0);
    REQUIRE(log);
    for (uint64_t txid = 1; txid <= 4; txid++) {
        REQUIRE(append(log, txid) == 0);
        ends[n++] = (off_t)replog_bytes(log);
    }
    replog_close(log);
    seg_file(p, sizeof(p), 1);
    size = (size_t)ends[3];
    whole_file = malloc(size);
    f = fopen(p, "rb");
    REQUIRE(f && fread(whole_file, 1, size, f) == size);
    fclose(f);
    for (size_t cut = 0; cut <= size; cut++) {
        uint64_t whole = 0;
        for (int i = 0; i < n; i++)
            whole += (size_t)ends[i] <= cut;
        f = fopen(p, "wb");
        REQUIRE(f && fwrite(whole_file, 1, cut, f) == cut);
        fclose(f);
        log = open_log(0, 0, 0);
        REQUIRE(log);
        CHECK(replog_head(log) == whole);
        CHECK(file_size(p) == (whole ? ends[whole - 1] : -1)); /* cut, or deleted if empty */
        CHECK(append(log, whole + 1) == 0);
        CHECK(read_back(log, 1, whole + 1) == (int)whole + 1);
        replog_close(log);
    }
    free(whole_file);
}

TEST(garbage_after_the_last_record)
{
    struct replog *log;
    char p[256];
    off_t good;
    int fd;

    fresh_dir();
    log = open_log(0, 0, 0);
    REQUIRE(log);
    for (uint64_t txid = 1; txid <= 3; txid++)
        REQUIRE(append(log, txid) == 0);
    good = (off_t)replog_bytes(log);
    replog_close(log);
    seg_file(p, sizeof(p), 1);
    fd = open(p, O_WRONLY | O_APPEND);
    REQUIRE(fd >= 0);
    CHECK(write(fd, "BMR1 this is not a record, just junk that follows", 50) == 50);
    close(fd);
    log = open_log(0, 0, 0);
    REQUIRE(log);
    CHECK(replog_head(log) == 3 && file_size(p) == good);
    replog_close(log);
}

/* A damaged byte in the middle of the newest segment: the records after it
 * are cut; in an older segment a damaged first record refuses the open, and
 * damage later on is caught by the reader. */
TEST(damage_is_detected)
{
    struct replog *log;
    struct replog_reader *r;
    struct replog_txn t;
    char p[256];
    int fd;

    fresh_dir();
    log = open_log(0, 0, 3000);
    REQUIRE(log);
    for (uint64_t txid = 1; txid <= 30; txid++)
        REQUIRE(append(log, txid) == 0);
    replog_close(log);
    REQUIRE(count_segments() > 3);
    /* A byte of page data in record 2 of segment 1. */
    seg_file(p, sizeof(p), 1);
    fd = open(p, O_WRONLY);
    REQUIRE(fd >= 0);
    CHECK(pwrite(fd, "X", 1, 64 + 2 * (4 + PS) + 8 + 64 + 100) == 1);
    close(fd);
    log = open_log(0, 0, 3000);
    REQUIRE(log); /* older segments only get their first record checked */
    REQUIRE(replog_reader_open(log, 1, &r) == 0);
    CHECK(replog_reader_next(r, &t) == 0);
    CHECK(replog_reader_next(r, &t) == REPLOG_ERR_CORRUPT);
    replog_reader_close(r);
    replog_close(log);
    /* The first header of an older segment. */
    fd = open(p, O_WRONLY);
    REQUIRE(fd >= 0);
    CHECK(pwrite(fd, "X", 1, 10) == 1);
    close(fd);
    CHECK(open_log(0, 0, 3000) == NULL);
    /* A segment whose first record is not the txid its name says. */
    {
        char q[256], cmd[1024];
        seg_file(q, sizeof(q), nth_segment(1));
        snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", q, p);
        REQUIRE(system(cmd) == 0);
    }
    CHECK(open_log(0, 0, 3000) == NULL);
}

static int failing_page_cb(void *arg, uint32_t i, const uint8_t **data)
{
    static uint8_t page[PS];

    (void)arg;
    if (i == 2)
        return -55;
    *data = page;
    return 0;
}

TEST(failed_appends_leave_no_trace)
{
    struct replog *log;
    struct replog_txn t;
    struct rlimit old, lim;
    uint32_t pgno[4] = {1, 2, 3, 4};
    char p[256];
    off_t before;

    fresh_dir();
    log = open_log(0, 0, 0);
    REQUIRE(log);
    REQUIRE(append(log, 1) == 0);
    seg_file(p, sizeof(p), 1);
    before = file_size(p);
    /* The page source fails part way. */
    make_txn(&t, 2, PS, 4);
    CHECK(replog_append(log, &t, pgno, failing_page_cb, NULL) == -55);
    CHECK(file_size(p) == before && replog_head(log) == 1);
    /* The file system refuses the write (RLIMIT_FSIZE, EFBIG). */
    signal(SIGXFSZ, SIG_IGN);
    REQUIRE(getrlimit(RLIMIT_FSIZE, &old) == 0);
    lim = old;
    lim.rlim_cur = (rlim_t)before + 100;
    REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    CHECK(append(log, 2) == REPLOG_ERR_IO);
    REQUIRE(setrlimit(RLIMIT_FSIZE, &old) == 0);
    CHECK(file_size(p) == before && replog_head(log) == 1);
    CHECK(append(log, 2) == 0);
    CHECK(read_back(log, 1, 2) == 2);
    replog_close(log);
    /* A directory that cannot be created. */
    {
        struct replog_config cfg = {"/nonexistent/dir/log", 0, 0, 0};
        CHECK(replog_open(&cfg, &log) == REPLOG_ERR_IO);
    }
}

static int big_page_cb(void *arg, uint32_t i, const uint8_t **data)
{
    struct gen *g = arg;

    make_page(g->page, g->ps, g->txid, 1 + i);
    *data = g->page;
    return 0;
}

TEST(big_records_stream)
{
    struct replog *log;
    struct replog_reader *r;
    struct replog_txn t;
    static struct gen g;
    uint32_t pgno[300], got;
    const uint8_t *data;
    static uint8_t want[65536];

    fresh_dir();
    log = open_log(0, 0, 0);
    REQUIRE(log);
    /* 300 pages of 64 KiB: above the 16 MiB a reader keeps in memory. */
    memset(&t, 0, sizeof(t));
    t.txid = 1;
    t.page_size = 65536;
    t.npages = 300;
    t.db_pages = 400;
    for (uint32_t i = 0; i < 300; i++)
        pgno[i] = 1 + i;
    g.txid = 1;
    g.ps = 65536;
    REQUIRE(replog_append(log, &t, pgno, big_page_cb, &g) == 0);
    REQUIRE(replog_reader_open(log, 1, &r) == 0);
    CHECK(replog_reader_next(r, &t) == 0 && t.npages == 300 && t.page_size == 65536);
    for (uint32_t i = 0; i < 300; i += 37) {
        make_page(want, 65536, 1, pgno[i]);
        CHECK(replog_reader_page(r, i, &got, &data) == 0 && got == pgno[i] &&
              memcmp(data, want, 65536) == 0);
    }
    /* Pages are re-read from the file: a changed one is caught. */
    {
        char p[256];
        int fd;
        seg_file(p, sizeof(p), 1);
        fd = open(p, O_WRONLY);
        REQUIRE(fd >= 0);
        CHECK(pwrite(fd, "\xff", 1, 64 + 5 * (4 + 65536)) == 1);
        close(fd);
    }
    CHECK(replog_reader_page(r, 5, &got, &data) == REPLOG_ERR_CORRUPT);
    replog_reader_close(r);
    replog_close(log);
}

/* --- a reader thread racing the writer -------------------------------------------- */

struct race {
    struct replog *log;
    uint64_t upto;
    int matched, errors;
};

static void *reader_thread(void *arg)
{
    struct race *rc = arg;
    struct replog_reader *r;
    struct replog_txn t;
    uint8_t page[PS];

    if (replog_reader_open(rc->log, 1, &r) != 0) {
        rc->errors++;
        return NULL;
    }
    while (replog_reader_txid(r) <= rc->upto) {
        uint32_t pgno[64], got;
        const uint8_t *data;
        int n = replog_reader_next(r, &t);
        if (n == REPLOG_AGAIN) {
            sched_yield();
            continue;
        }
        if (n != 0) {
            rc->errors++;
            break;
        }
        txn_pages(t.txid, pgno);
        for (uint32_t i = 0; i < t.npages; i++) {
            make_page(page, PS, t.txid, pgno[i]);
            if (replog_reader_page(r, i, &got, &data) != 0 || got != pgno[i] ||
                memcmp(data, page, PS) != 0)
                rc->errors++;
        }
        rc->matched++;
    }
    replog_reader_close(r);
    return NULL;
}

TEST(reader_thread_sees_only_whole_records)
{
    struct race rc = {0};
    pthread_t th;

    fresh_dir();
    rc.log = open_log(0, 1 << 20, 5000);
    REQUIRE(rc.log);
    rc.upto = 2000;
    REQUIRE(pthread_create(&th, NULL, reader_thread, &rc) == 0);
    for (uint64_t txid = 1; txid <= rc.upto; txid++) {
        CHECK(append(rc.log, txid) == 0);
        if (txid % 500 == 0)
            CHECK(replog_sync(rc.log) == 0);
    }
    pthread_join(th, NULL);
    CHECK(rc.errors == 0);
    CHECK(rc.matched == 2000);
    replog_close(rc.log);
}

TEST(retire_moves_the_log_aside)
{
    struct replog *log;
    char old[256], cmd[1024];

    fresh_dir();
    log = open_log(0, 0, 0);
    REQUIRE(log);
    REQUIRE(append(log, 1) == 0);
    replog_close(log);
    snprintf(old, sizeof(old), "%s/log.old", tmpdir);
    snprintf(cmd, sizeof(cmd), "mkdir -p '%s' && touch '%s/stale'", old, old);
    REQUIRE(system(cmd) == 0);
    CHECK(replog_retire(logdir, old) == 0);
    CHECK(count_segments() == -1); /* gone */
    snprintf(cmd, sizeof(cmd), "test -f '%s/0000000000000001.log' && ! test -e '%s/stale'", old,
             old);
    CHECK(system(cmd) == 0);
    /* Nothing to move: just clears the target. */
    CHECK(replog_retire(logdir, old) == 0);
    CHECK(file_size(old) == -1);
    /* Errors: a target that is not a directory of files. */
    snprintf(cmd, sizeof(cmd), "mkdir -p '%s/sub'", old);
    REQUIRE(system(cmd) == 0);
    CHECK(replog_retire(logdir, old) == REPLOG_ERR_IO);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", old);
    REQUIRE(system(cmd) == 0);
}

int main(void)
{
    char cmd[256];

    if (!mkdtemp(tmpdir))
        return 1;
    snprintf(logdir, sizeof(logdir), "%s/log", tmpdir);
    log_level = LOGL_ERROR; /* every cut tail is reported */
    RUN(append_and_read_back);
    RUN(append_pages_array);
    RUN(segments_roll_and_prune);
    RUN(a_slow_reader_finds_its_next_segment_pruned);
    RUN(empty_log_starts_at_base);
    RUN(torn_tail_cut_at_every_byte);
    RUN(garbage_after_the_last_record);
    RUN(damage_is_detected);
    RUN(failed_appends_leave_no_trace);
    RUN(big_records_stream);
    RUN(reader_thread_sees_only_whole_records);
    RUN(retire_moves_the_log_aside);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", tmpdir);
    return HARNESS_END();
}
