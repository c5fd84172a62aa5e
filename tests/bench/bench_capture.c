/* boomerang: the cost of capture (wal_hook + WAL read + checksum + log append)
 * per transaction, next to the SQLite commit alone.
 *
 *   bench_capture DIR [N]
 *
 * Runs N single-row INSERT transactions (default 5000) on a fresh WAL
 * database in DIR with synchronous=FULL, twice: once plain, once with capture
 * installed, alternating in rounds so both see the same disk conditions.
 * Prints the median µs per commit of each and their difference. Run it once on
 * the working disk (commit cost dominated by fsync) and once on /dev/shm (the
 * difference is then capture's CPU cost). */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "primary/capture.h"

#define ROUNDS 5

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static sqlite3 *open_db(const char *path)
{
    sqlite3 *db;
    char cmd[512];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s-wal' '%s-shm' '%s-boomerang'", path, path, path,
             path);
    if (system(cmd) != 0 || sqlite3_open(path, &db) != SQLITE_OK ||
        sqlite3_exec(db,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                     "PRAGMA wal_autocheckpoint=0; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)",
                     NULL, NULL, NULL) != SQLITE_OK) {
        fprintf(stderr, "bench_capture: open %s failed\n", path);
        exit(1);
    }
    return db;
}

/* µs per commit for n inserts. */
static double run(const char *path, int with_capture, int n)
{
    sqlite3 *db = open_db(path);
    struct capture *cap = NULL;
    struct capture_config cfg = {.db_path = path, .checkpoint_frames = 100000};
    sqlite3_stmt *ins;
    int64_t t0;

    if (with_capture && capture_open(&cfg, db, &cap) != 0)
        exit(1);
    if (sqlite3_prepare_v2(db, "INSERT INTO t(v) VALUES (randomblob(100))", -1, &ins, NULL))
        exit(1);
    t0 = mono_us();
    for (int i = 0; i < n; i++) {
        if (sqlite3_step(ins) != SQLITE_DONE)
            exit(1);
        sqlite3_reset(ins);
        if (cap && capture_take_txid(cap) != (uint64_t)i + 1) {
            fprintf(stderr, "bench_capture: commit %d was not captured as txid %d\n", i, i + 1);
            exit(1);
        }
    }
    double us = (double)(mono_us() - t0) / n;
    sqlite3_finalize(ins);
    if (cap) {
        (void)capture_final_checkpoint(cap);
        capture_close(cap);
    }
    sqlite3_close(db);
    return us;
}

int main(int argc, char **argv)
{
    double plain[ROUNDS], captured[ROUNDS];
    char path[512];
    int n = argc > 2 ? atoi(argv[2]) : 5000;

    if (argc < 2) {
        fprintf(stderr, "usage: bench_capture DIR [N]\n");
        return 2;
    }
    log_level = LOGL_WARN;
    snprintf(path, sizeof(path), "%s/bench-capture.db", argv[1]);
    for (int r = 0; r < ROUNDS; r++) {
        plain[r] = run(path, 0, n);
        captured[r] = run(path, 1, n);
    }
    qsort(plain, ROUNDS, sizeof(double), cmp_double);
    qsort(captured, ROUNDS, sizeof(double), cmp_double);
    printf("| %s | %d | %.1f | %.1f | %.1f |\n", argv[1], n, plain[ROUNDS / 2],
           captured[ROUNDS / 2], captured[ROUNDS / 2] - plain[ROUNDS / 2]);
    return 0;
}
