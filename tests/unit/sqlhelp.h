/* boomerang: small SQLite helpers shared by the unit tests that drive real
 * databases (capture, walcap, apply). Header-only, like harness.h. */
#ifndef BOOMERANG_SQLHELP_H
#define BOOMERANG_SQLHELP_H

#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Run sql; print the error (if any) and return the SQLite code. */
static inline int exec(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);

    if (rc != SQLITE_OK)
        fprintf(stderr, "  exec [%.60s]: %s\n", sql, err ? err : "?");
    sqlite3_free(err);
    return rc;
}

/* The first column of the first row as an integer, or -1. */
static inline int64_t query(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st;
    int64_t v = -1;

    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return -1;
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* Run a shell command built like printf; abort if it fails. */
#define SH(...)                                                                                    \
    do {                                                                                           \
        char cmd_[1024];                                                                           \
        snprintf(cmd_, sizeof(cmd_), __VA_ARGS__);                                                 \
        if (system(cmd_) != 0)                                                                     \
            abort();                                                                               \
    } while (0)

#endif
