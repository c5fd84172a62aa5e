/* Unit tests: primary/capture.c on real WAL databases: txids and checksums,
 * checkpoints and WAL restarts, crashes at each point between SQLite's commit
 * and the log (forked children that _exit), recovery, epochs. The log is
 * always checked against the database: replaying it into an empty replica
 * with sqlite_dbpage must give the primary's pages, and every record's
 * checksum must equal the replica's full checksum after it. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/log.h"
#include "common/pagesum.h"
#include "harness.h"
#include "sqlhelp.h"
#include "primary/capture.h"
#include "primary/meta.h"
#include "primary/replog.h"

#define SERIES(n)                                                                                  \
    "WITH RECURSIVE c(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM c WHERE n < " #n ") "

static char tmpdir[] = "/tmp/test_capture.XXXXXX";
static char dbpath[128], statedir[160], logdir[192], metapath[192];

static void wipe(void)
{
    SH("rm -rf '%s' '%s'-*", dbpath, dbpath);
}

/* The primary's connection, set up the way capture.h asks. */
static sqlite3 *open_primary_flags(const char *name, int flags, const char *sync)
{
    char sql[128];
    sqlite3 *db = NULL;

    if (sqlite3_open_v2(name, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | flags, NULL) !=
        SQLITE_OK)
        abort();
    snprintf(sql, sizeof(sql), "PRAGMA journal_mode=WAL; PRAGMA synchronous=%s", sync);
    exec(db, sql);
    exec(db, "PRAGMA wal_autocheckpoint=0");
    return db;
}

static sqlite3 *open_primary(void)
{
    return open_primary_flags(dbpath, 0, "FULL");
}

static struct capture *start(sqlite3 *db, uint32_t ckpt_frames, uint64_t retain)
{
    struct capture_config cfg = {dbpath, NULL, retain, ckpt_frames};
    struct capture *cap = NULL;

    return capture_open(&cfg, db, &cap) == 0 ? cap : NULL;
}

/* Full checksum of the database as the connection sees it. */
static uint64_t db_checksum(sqlite3 *db)
{
    sqlite3_stmt *st;
    uint64_t sum = 0;

    sqlite3_prepare_v2(db, "SELECT pgno, data FROM sqlite_dbpage", -1, &st, NULL);
    while (sqlite3_step(st) == SQLITE_ROW) {
        uint32_t pgno = (uint32_t)sqlite3_column_int(st, 0);
        uint32_t ps = (uint32_t)sqlite3_column_bytes(st, 1);
        if (pgno != pagesum_lock_page(ps))
            sum ^= pagesum_page(pgno, sqlite3_column_blob(st, 1), ps);
    }
    sqlite3_finalize(st);
    return sum;
}

/* Apply one record to the replica (sqlite_dbpage, truncate last). */
static int apply_record(sqlite3 *r, sqlite3_stmt *ins, struct replog_reader *rd,
                        const struct replog_txn *t)
{
    int64_t pages = query(r, "PRAGMA page_count");
    const uint8_t *data;
    uint32_t pgno;

    if (exec(r, "BEGIN IMMEDIATE") != SQLITE_OK)
        return -1;
    for (uint32_t i = 0; i < t->npages; i++) {
        if (replog_reader_page(rd, i, &pgno, &data) != 0)
            return -1;
        sqlite3_bind_int64(ins, 1, pgno);
        sqlite3_bind_blob(ins, 2, data, (int)t->page_size, SQLITE_STATIC);
        if (sqlite3_step(ins) != SQLITE_DONE)
            return -1;
        sqlite3_reset(ins);
    }
    if ((int64_t)t->db_pages < pages) {
        sqlite3_bind_int64(ins, 1, (sqlite3_int64)t->db_pages + 1);
        sqlite3_bind_null(ins, 2);
        if (sqlite3_step(ins) != SQLITE_DONE)
            return -1;
        sqlite3_reset(ins);
    }
    return exec(r, "COMMIT") == SQLITE_OK ? 0 : -1;
}

/* Replay the whole log (it must start at txid 1) into an empty replica:
 * txids without gaps up to head, each record's checksum equal to the
 * replica's after it, and the end equal to the primary. Returns the number of
 * records, or -1. */
static int verify_log(struct replog *log, sqlite3 *primary)
{
    char rpath[200];
    struct replog_reader *rd;
    struct replog_txn t;
    sqlite3_stmt *ins;
    sqlite3 *r;
    int n = 0, bad = 0;

    snprintf(rpath, sizeof(rpath), "%s/replica.db", tmpdir);
    SH("rm -f '%s' '%s'-wal", rpath, rpath);
    if (sqlite3_open(rpath, &r) != SQLITE_OK || replog_reader_open(log, 1, &rd) != 0)
        return -1;
    exec(r, "PRAGMA journal_mode=WAL; PRAGMA writable_schema=ON");
    sqlite3_prepare_v2(r, "INSERT INTO sqlite_dbpage(pgno, data) VALUES (?, ?)", -1, &ins, NULL);
    while (replog_reader_next(rd, &t) == 0) {
        if (t.txid != (uint64_t)n + 1 || apply_record(r, ins, rd, &t) != 0 ||
            db_checksum(r) != t.checksum || query(r, "PRAGMA page_count") != t.db_pages)
            bad++;
        n++;
    }
    if ((uint64_t)n != replog_head(log) || db_checksum(r) != db_checksum(primary))
        bad++;
    sqlite3_finalize(ins);
    replog_reader_close(rd);
    sqlite3_close(r);
    return bad ? -1 : n;
}

static int64_t file_size(const char *p)
{
    struct stat st;

    return stat(p, &st) == 0 ? st.st_size : -1;
}

/* The status must agree with the database itself. */
static int status_matches(struct capture *cap, sqlite3 *db)
{
    struct capture_status st;

    capture_status(cap, &st);
    return st.checksum == db_checksum(db) && st.db_pages == query(db, "PRAGMA page_count") &&
           st.page_size == query(db, "PRAGMA page_size") && strlen(st.database_id) == 32 &&
           st.head_txid == replog_head(capture_log(cap));
}

TEST(txids_and_checksums)
{
    struct capture_status st;
    struct capture *cap;
    sqlite3 *db;

    wipe();
    db = open_primary();
    cap = start(db, 0, 0);
    REQUIRE(cap);
    capture_status(cap, &st);
    CHECK(st.epoch == 1 && st.head_txid == 0 && st.first_txid == 0);
    CHECK(capture_take_txid(cap) == 0);
    exec(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
    CHECK(capture_take_txid(cap) == 1);
    CHECK(capture_take_txid(cap) == 0);
    for (uint64_t i = 2; i <= 30; i++) {
        exec(db, i % 7 ? "INSERT INTO t(v) VALUES (hex(randomblob(50)))"
                       : SERIES(300) "INSERT INTO t(v) SELECT hex(randomblob(400)) FROM c");
        CHECK(capture_take_txid(cap) == i);
    }
    exec(db, "SELECT count(*) FROM t");
    CHECK(capture_take_txid(cap) == 0);
    exec(db, "BEGIN; UPDATE t SET v = 'x' WHERE id < 10; DELETE FROM t WHERE id > 200; COMMIT");
    CHECK(capture_take_txid(cap) == 31);
    capture_status(cap, &st);
    CHECK(st.head_txid == 31 && st.first_txid == 1 && st.log_bytes > 0);
    CHECK(st.head_time_us > 0);
    CHECK(status_matches(cap, db));
    CHECK(verify_log(capture_log(cap), db) == 31);
    capture_close(cap);
    sqlite3_close(db);
}

TEST(checkpoints_restart_the_wal_and_prune)
{
    struct capture_status st;
    struct capture *cap;
    char wal[200];
    sqlite3 *db;
    int64_t max_wal = 0;

    wipe();
    snprintf(wal, sizeof(wal), "%s-wal", dbpath);
    db = open_primary();
    cap = start(db, 20, 0);
    REQUIRE(cap);
    exec(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)");
    for (int i = 0; i < 200; i++) {
        exec(db, i % 50 == 49 ? "DELETE FROM t WHERE id % 2 = 0"
                              : "INSERT INTO t(v) VALUES (randomblob(1500))");
        CHECK(capture_maybe_checkpoint(cap) == 0);
        if (file_size(wal) > max_wal)
            max_wal = file_size(wal);
    }
    /* The WAL kept restarting at frame 1 instead of growing. */
    CHECK(max_wal < 100 * 4120);
    exec(db, "VACUUM");
    CHECK(capture_take_txid(cap) == 202);
    CHECK(status_matches(cap, db));
    CHECK(verify_log(capture_log(cap), db) == 202);
    capture_close(cap);
    sqlite3_close(db);

    /* With a small retention the checkpoints prune old segments. */
    wipe();
    db = open_primary();
    cap = start(db, 10, 64 << 10);
    REQUIRE(cap);
    exec(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)");
    for (int i = 0; i < 150; i++) {
        exec(db, "INSERT INTO t(v) VALUES (randomblob(2000))");
        CHECK(capture_maybe_checkpoint(cap) == 0);
    }
    capture_status(cap, &st);
    CHECK(st.first_txid > 1 && st.head_txid == 151);
    CHECK(st.log_bytes <= (64 << 10) + (16 << 10) + 10000);
    CHECK(status_matches(cap, db));
    capture_close(cap);
    sqlite3_close(db);
}

TEST(clean_restart_keeps_the_history)
{
    struct capture_status a, b;
    struct capture *cap;
    char wal[200];
    sqlite3 *db;

    wipe();
    snprintf(wal, sizeof(wal), "%s-wal", dbpath);
    db = open_primary();
    cap = start(db, 0, 0);
    REQUIRE(cap);
    exec(db, "CREATE TABLE t(x); INSERT INTO t VALUES (1)");
    exec(db, "INSERT INTO t VALUES (2)");
    CHECK(capture_final_checkpoint(cap) == 0);
    CHECK(file_size(wal) == 0);
    capture_status(cap, &a);
    capture_close(cap);
    sqlite3_close(db);
    db = open_primary();
    cap = start(db, 0, 0);
    REQUIRE(cap);
    capture_status(cap, &b);
    CHECK(strcmp(a.database_id, b.database_id) == 0 && a.epoch == b.epoch);
    CHECK(b.head_txid == 3 && b.checksum == a.checksum); /* exec commits each statement */
    exec(db, "INSERT INTO t VALUES (3)");
    CHECK(capture_take_txid(cap) == 4);
    CHECK(verify_log(capture_log(cap), db) == 4);
    capture_close(cap);
    sqlite3_close(db);
}

/* --- crashes ------------------------------------------------------------------- */

/* A crashing child's connection and capture stay reachable from here, so
 * leak checkers do not blame the simulated crash. */
static sqlite3 *volatile child_db;
static struct capture *volatile child_cap;

enum crash_mode {
    CRASH_AFTER_LOG,  /* the process dies after the last append */
    CRASH_BEFORE_LOG, /* ... after SQLite's commit, before the append */
};

/* In a child: open, run `before` commits, then `n` more and die as mode says.
 * Returns the child's exit status. */
static int child_crash(int n, enum crash_mode mode, uint32_t ckpt_frames)
{
    pid_t pid = fork();
    int status = 0;

    if (pid == 0) {
        sqlite3 *db = child_db = open_primary();
        struct capture *cap = child_cap = start(db, ckpt_frames, 0);
        if (!cap)
            _exit(3);
        for (int i = 0; i < n; i++) {
            int last = i == n - 1;
            if (mode == CRASH_BEFORE_LOG && last)
                capture_test_skip_append(cap, 1);
            exec(db, "INSERT INTO t(v) VALUES (randomblob(700))");
            if (!last && capture_maybe_checkpoint(cap) != 0)
                _exit(4);
        }
        _exit(0); /* dies right after the last commit */
    }
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* A database with `n` logged commits, closed. */
static void make_base(int n)
{
    struct capture *cap;
    sqlite3 *db;

    wipe();
    db = open_primary();
    cap = start(db, 0, 0);
    if (!cap)
        abort();
    exec(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)");
    for (int i = 1; i < n; i++)
        exec(db, "INSERT INTO t(v) VALUES (randomblob(300))");
    capture_close(cap);
    sqlite3_close(db);
}

/* Reopen after a crash and check the log is the whole committed history. */
static void check_recovered(uint64_t want_head, uint64_t want_epoch)
{
    struct capture_status st;
    struct capture *cap;
    sqlite3 *db = open_primary();

    cap = start(db, 0, 0);
    REQUIRE(cap);
    capture_status(cap, &st);
    CHECK(st.head_txid == want_head && st.epoch == want_epoch);
    CHECK(query(db, "SELECT count(*) FROM t") == (int64_t)want_head - 1);
    CHECK(status_matches(cap, db));
    CHECK(capture_take_txid(cap) == 0);
    if (want_epoch == 1)
        CHECK(verify_log(capture_log(cap), db) == (int)want_head);
    exec(db, "INSERT INTO t(v) VALUES (1)");
    CHECK(capture_take_txid(cap) == want_head + 1);
    capture_close(cap);
    sqlite3_close(db);
}

TEST(crash_after_the_append)
{
    make_base(5);
    CHECK(child_crash(10, CRASH_AFTER_LOG, 0) == 0);
    check_recovered(15, 1);
}

TEST(crash_before_the_append_is_recovered)
{
    make_base(5);
    CHECK(child_crash(10, CRASH_BEFORE_LOG, 0) == 0);
    check_recovered(15, 1);
    /* With checkpoints (and WAL restarts) in the child's run. */
    make_base(5);
    CHECK(child_crash(40, CRASH_BEFORE_LOG, 6) == 0);
    check_recovered(45, 1);
}

TEST(torn_log_tail_is_recovered_from_the_wal)
{
    char seg[300];

    make_base(3);
    CHECK(child_crash(6, CRASH_AFTER_LOG, 0) == 0);
    /* As if the last appends never reached the disk. */
    snprintf(seg, sizeof(seg), "%s/0000000000000001.log", logdir);
    REQUIRE(truncate(seg, file_size(seg) - 1500) == 0);
    check_recovered(9, 1);
}

TEST(crash_after_a_truncate_checkpoint)
{
    struct capture *cap;
    sqlite3 *db;

    /* The log ends in an older WAL generation than the WAL's: the raw
     * database file is the last logged state. */
    make_base(4);
    db = open_primary();
    cap = start(db, 0, 0);
    REQUIRE(cap);
    exec(db, "INSERT INTO t(v) VALUES (randomblob(300))");
    CHECK(capture_final_checkpoint(cap) == 0);
    capture_close(cap);
    sqlite3_close(db);
    CHECK(child_crash(1, CRASH_BEFORE_LOG, 0) == 0);
    check_recovered(6, 1);
    CHECK(child_crash(3, CRASH_BEFORE_LOG, 0) == 0);
    check_recovered(10, 1);
}

TEST(log_write_failure_exits_99)
{
    pid_t pid;
    int status = 0;

    make_base(3);
    pid = fork();
    if (pid == 0) {
        sqlite3 *db = child_db = open_primary();
        struct capture *cap = child_cap = start(db, 0, 0);
        struct rlimit lim;
        if (!cap)
            _exit(3);
        signal(SIGXFSZ, SIG_IGN);
        getrlimit(RLIMIT_FSIZE, &lim);
        lim.rlim_cur = (rlim_t)replog_bytes(capture_log(cap)) + 100;
        setrlimit(RLIMIT_FSIZE, &lim); /* the log segment can no longer grow */
        exec(db, "INSERT INTO t(v) VALUES (randomblob(700))");
        _exit(0);
    }
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 99);
    check_recovered(4, 1);
}

/* --- histories and epochs ------------------------------------------------------------ */

TEST(replaced_database_bumps_the_epoch)
{
    struct capture_status a, b;
    struct capture *cap;
    char other[200], old[300];
    sqlite3 *db;

    make_base(6);
    db = open_primary();
    cap = start(db, 0, 0);
    REQUIRE(cap);
    capture_status(cap, &a);
    capture_close(cap);
    sqlite3_close(db);
    /* Another database in its place (written outside boomerang). */
    snprintf(other, sizeof(other), "%s/other.db", tmpdir);
    SH("rm -f '%s' '%s'-wal", other, other);
    db = open_primary_flags(other, 0, "FULL");
    exec(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); INSERT INTO t VALUES (1, 'x')");
    sqlite3_close(db);
    SH("mv '%s' '%s'", other, dbpath);
    db = open_primary();
    cap = start(db, 0, 0);
    REQUIRE(cap);
    capture_status(cap, &b);
    CHECK(strcmp(a.database_id, b.database_id) == 0);
    CHECK(b.epoch == a.epoch + 1);
    CHECK(b.head_txid == a.head_txid && b.first_txid == 0);
    CHECK(status_matches(cap, db));
    snprintf(old, sizeof(old), "%s/log.old/0000000000000001.log", statedir);
    CHECK(file_size(old) > 0);
    exec(db, "INSERT INTO t(v) VALUES ('y')");
    CHECK(capture_take_txid(cap) == a.head_txid + 1);
    capture_close(cap);
    sqlite3_close(db);
    /* The new epoch is a continuous history from then on. */
    db = open_primary();
    cap = start(db, 0, 0);
    REQUIRE(cap);
    capture_status(cap, &b);
    CHECK(b.epoch == a.epoch + 1 && b.head_txid == a.head_txid + 1 &&
          b.first_txid == a.head_txid + 1);
    CHECK(status_matches(cap, db));
    capture_close(cap);
    sqlite3_close(db);
    /* Replaced again, and a crash right after the new epoch began, before
     * any of its commits was logged: the empty log's base (in meta) is
     * found again, and the commit after it recovered. */
    SH("rm -f '%s' '%s'-wal", other, other);
    db = open_primary_flags(other, 0, "FULL");
    exec(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); INSERT INTO t VALUES (1, 'z')");
    sqlite3_close(db);
    SH("mv '%s' '%s'", other, dbpath);
    CHECK(child_crash(1, CRASH_BEFORE_LOG, 0) == 0);
    db = open_primary();
    cap = start(db, 0, 0);
    REQUIRE(cap);
    capture_status(cap, &b);
    CHECK(b.epoch == a.epoch + 2 && b.head_txid == a.head_txid + 2);
    CHECK(status_matches(cap, db));
    capture_close(cap);
    sqlite3_close(db);
}

TEST(existing_wal_becomes_the_base_of_a_new_history)
{
    struct capture_status st;
    struct capture *cap;
    sqlite3 *db;

    wipe();
    db = open_primary();
    exec(db, "CREATE TABLE t(x); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)");
    REQUIRE(query(db, "SELECT count(*) FROM t") == 2);
    cap = start(db, 0, 0); /* the WAL holds those commits */
    REQUIRE(cap);
    capture_status(cap, &st);
    CHECK(st.epoch == 1 && st.head_txid == 0 && st.first_txid == 0);
    CHECK(status_matches(cap, db));
    exec(db, "INSERT INTO t VALUES (3)");
    CHECK(capture_take_txid(cap) == 1);
    capture_close(cap);
    sqlite3_close(db);
    /* A restart finds that base again. */
    CHECK(child_crash(0, CRASH_AFTER_LOG, 0) == 0);
    db = open_primary();
    cap = start(db, 0, 0);
    REQUIRE(cap);
    capture_status(cap, &st);
    CHECK(st.epoch == 1 && st.head_txid == 1 && status_matches(cap, db));
    capture_close(cap);
    sqlite3_close(db);
}

TEST(a_log_older_than_the_epoch_is_moved_aside)
{
    struct capture_status st;
    struct capture *cap;
    struct meta m;
    sqlite3 *db;

    make_base(5);
    /* As if the process died between writing the new epoch's meta and
     * moving the old log: meta's base is the log's head. */
    db = open_primary();
    cap = start(db, 0, 0);
    REQUIRE(cap);
    capture_status(cap, &st);
    capture_close(cap);
    sqlite3_close(db);
    REQUIRE(meta_load(metapath, &m) == 0);
    m.epoch = 2;
    m.base_txid = st.head_txid;
    m.base_checksum = st.checksum;
    m.base_salt1 = m.base_salt2 = m.base_frame = 0; /* the WAL is empty after close */
    REQUIRE(meta_save(metapath, &m) == 0);
    db = open_primary();
    cap = start(db, 0, 0);
    REQUIRE(cap);
    capture_status(cap, &st);
    CHECK(st.epoch == 2 && st.head_txid == 5 && st.first_txid == 0);
    capture_close(cap);
    sqlite3_close(db);
}

TEST(refuses_what_it_cannot_capture)
{
    struct capture_config cfg = {dbpath, NULL, 0, 0};
    struct capture *cap = NULL;
    sqlite3 *db;
    FILE *f;

    wipe();
    REQUIRE(sqlite3_open(dbpath, &db) == SQLITE_OK);
    exec(db, "CREATE TABLE t(x)");
    CHECK(capture_open(&cfg, db, &cap) == CAPTURE_ERR_STATE); /* rollback journal */
    sqlite3_close(db);
    db = open_primary_flags(dbpath, 0, "NORMAL");
    CHECK(capture_open(&cfg, db, &cap) == CAPTURE_ERR_STATE);
    sqlite3_close(db);
    /* A damaged meta file. */
    make_base(2);
    f = fopen(metapath, "w");
    REQUIRE(f);
    fputs("database_id=zz\nepoch=1\n", f);
    fclose(f);
    db = open_primary();
    CHECK(capture_open(&cfg, db, &cap) == CAPTURE_ERR_STATE);
    sqlite3_close(db);
    /* A state directory that cannot be made. */
    cfg.state_dir = "/nonexistent/state";
    db = open_primary();
    CHECK(capture_open(&cfg, db, &cap) == CAPTURE_ERR_IO);
    sqlite3_close(db);
}

TEST(a_delayed_hook_is_logged_before_the_checkpoint)
{
    struct capture *cap;
    sqlite3_stmt *st;
    sqlite3 *db;

    wipe();
    db = open_primary();
    cap = start(db, 0, 0);
    REQUIRE(cap);
    exec(db, "CREATE TABLE t(x)");
    CHECK(capture_take_txid(cap) == 1);
    /* The commit happens inside sqlite3_reset(): SQLite runs no hook yet. */
    REQUIRE(sqlite3_prepare_v2(db, "INSERT INTO t VALUES (1), (2) RETURNING x", -1, &st, NULL) ==
            SQLITE_OK);
    CHECK(sqlite3_step(st) == SQLITE_ROW);
    sqlite3_reset(st);
    sqlite3_finalize(st);
    CHECK(query(db, "SELECT count(*) FROM t") == 2);
    CHECK(capture_final_checkpoint(cap) == 0);
    CHECK(replog_head(capture_log(cap)) == 2);
    CHECK(capture_take_txid(cap) == 2);
    /* The late hook arrives now, after the WAL was emptied: nothing to do. */
    CHECK(query(db, "SELECT count(*) FROM t") == 2);
    CHECK(capture_take_txid(cap) == 0);
    CHECK(status_matches(cap, db));
    CHECK(verify_log(capture_log(cap), db) == 2);
    capture_close(cap);
    sqlite3_close(db);
}

TEST(a_blocked_checkpoint_is_an_error)
{
    struct capture *cap;
    sqlite3 *db, *reader;

    wipe();
    db = open_primary();
    cap = start(db, 0, 0);
    REQUIRE(cap);
    exec(db, "CREATE TABLE t(x); INSERT INTO t VALUES (1)");
    REQUIRE(sqlite3_open(dbpath, &reader) == SQLITE_OK);
    exec(reader, "BEGIN");
    CHECK(query(reader, "SELECT count(*) FROM t") == 1); /* holds a read mark */
    exec(db, "INSERT INTO t VALUES (2)");
    CHECK(capture_final_checkpoint(cap) == CAPTURE_ERR_SQLITE);
    exec(reader, "COMMIT");
    sqlite3_close(reader);
    CHECK(capture_final_checkpoint(cap) == 0);
    CHECK(verify_log(capture_log(cap), db) == 3);
    capture_close(cap);
    sqlite3_close(db);
}

TEST(sector_padding_with_psow_off)
{
    char uri[300];
    struct capture *cap;
    sqlite3 *db;

    wipe();
    snprintf(uri, sizeof(uri), "file:%s?psow=0", dbpath);
    db = open_primary_flags(uri, SQLITE_OPEN_URI, "FULL");
    cap = start(db, 8, 0);
    REQUIRE(cap);
    exec(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)");
    for (uint64_t i = 2; i <= 60; i++) {
        exec(db, "INSERT INTO t(v) VALUES (randomblob(500))");
        CHECK(capture_take_txid(cap) == i);
        CHECK(capture_maybe_checkpoint(cap) == 0);
    }
    CHECK(status_matches(cap, db));
    CHECK(verify_log(capture_log(cap), db) == 60);
    capture_close(cap);
    sqlite3_close(db);
}

int main(void)
{
    if (!mkdtemp(tmpdir))
        return 1;
    snprintf(dbpath, sizeof(dbpath), "%s/p.db", tmpdir);
    snprintf(statedir, sizeof(statedir), "%s-boomerang", dbpath);
    snprintf(logdir, sizeof(logdir), "%s/log", statedir);
    snprintf(metapath, sizeof(metapath), "%s/meta", statedir);
    log_level = getenv("TEST_LOG") ? LOGL_DEBUG : LOGL_ERROR;
    RUN(txids_and_checksums);
    RUN(checkpoints_restart_the_wal_and_prune);
    RUN(clean_restart_keeps_the_history);
    RUN(crash_after_the_append);
    RUN(crash_before_the_append_is_recovered);
    RUN(torn_log_tail_is_recovered_from_the_wal);
    RUN(crash_after_a_truncate_checkpoint);
    RUN(log_write_failure_exits_99);
    RUN(replaced_database_bumps_the_epoch);
    RUN(existing_wal_becomes_the_base_of_a_new_history);
    RUN(a_log_older_than_the_epoch_is_moved_aside);
    RUN(refuses_what_it_cannot_capture);
    RUN(a_delayed_hook_is_logged_before_the_checkpoint);
    RUN(a_blocked_checkpoint_is_an_error);
    RUN(sector_padding_with_psow_off);
    SH("rm -rf '%s'", tmpdir);
    return HARNESS_END();
}
