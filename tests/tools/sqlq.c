/* sqlq: query a SQLite database read-only and print the results as JSON
 * lines, for the integration tests (Node 20 has no node:sqlite, and the
 * sqlite3 shell is not installed; this uses the project's own SQLite).
 *
 *   sqlq DB SQL...        every row of every statement, one JSON array per line:
 *                         integers as numbers, reals with 17 digits, text as
 *                         strings, blobs as {"blob":"<hex>"}, NULL as null
 *   sqlq --checksum DB [DELTA]
 *                         one JSON object: {"page_size":N,"db_pages":N,
 *                         "checksum":"<u64 decimal>"}: the database checksum
 *                         of common/pagesum.h, read in one transaction. DELTA
 *                         is subtracted from page 1's schema cookie first: a
 *                         replica that took a snapshot of another history
 *                         keeps its cookie at the primary's plus a delta
 *                         (replica/apply.c, "Schema cookies"; the delta is the
 *                         last field of its position file's "cur" line)
 *
 * The database is opened with SQLITE_OPEN_READONLY, so the tool never
 * writes it; a WAL database is read through its -wal and -shm as any reader
 * would. Exit status: 0, 1 on a SQLite error (printed on stderr), 2 on usage. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/pagesum.h"
#include "sqlite3.h"

static void put_json_string(const unsigned char *s, int n)
{
    putchar('"');
    for (int i = 0; i < n; i++) {
        unsigned c = s[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar((int)c);
    }
    putchar('"');
}

static void put_value(sqlite3_stmt *st, int i)
{
    const unsigned char *p;

    switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER:
        printf("%lld", (long long)sqlite3_column_int64(st, i));
        break;
    case SQLITE_FLOAT:
        printf("%.17g", sqlite3_column_double(st, i));
        break;
    case SQLITE_TEXT:
        p = sqlite3_column_text(st, i);
        put_json_string(p, sqlite3_column_bytes(st, i));
        break;
    case SQLITE_BLOB:
        p = sqlite3_column_blob(st, i);
        printf("{\"blob\":\"");
        for (int k = 0; k < sqlite3_column_bytes(st, i); k++)
            printf("%02x", p[k]);
        printf("\"}");
        break;
    default:
        printf("null");
    }
}

/* Run every statement of sql, printing each row. */
static int query(sqlite3 *db, const char *sql)
{
    const char *tail = sql;

    while (tail && *tail) {
        sqlite3_stmt *st = NULL;
        int rc = sqlite3_prepare_v2(db, tail, -1, &st, &tail);
        if (rc != SQLITE_OK)
            return rc;
        if (!st)
            continue; /* whitespace or a comment */
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            putchar('[');
            for (int i = 0; i < sqlite3_column_count(st); i++) {
                if (i)
                    putchar(',');
                put_value(st, i);
            }
            puts("]");
        }
        sqlite3_finalize(st);
        if (rc != SQLITE_DONE)
            return rc;
    }
    return SQLITE_OK;
}

static int pragma_u32(sqlite3 *db, const char *sql, uint32_t *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        *out = (uint32_t)sqlite3_column_int64(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* The pagesum checksum, every page read from sqlite_dbpage inside one read
 * transaction so that it describes one committed state. */
static int checksum(sqlite3 *db, uint32_t delta)
{
    sqlite3_stmt *st = NULL;
    struct pagesum ps;
    uint32_t page_size = 0, npages = 0;
    int rc = sqlite3_exec(db, "BEGIN; SELECT count(*) FROM sqlite_schema", NULL, NULL, NULL);

    if (rc == SQLITE_OK)
        rc = pragma_u32(db, "PRAGMA page_size", &page_size);
    if (rc == SQLITE_OK)
        rc = pragma_u32(db, "PRAGMA page_count", &npages);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db, "SELECT pgno, data FROM sqlite_dbpage", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    pagesum_init(&ps, page_size);
    pagesum_resize(&ps, npages);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        uint32_t pgno = (uint32_t)sqlite3_column_int64(st, 0);
        const uint8_t *data = sqlite3_column_blob(st, 1);
        if (!data || pgno < 1 || pgno > npages || sqlite3_column_bytes(st, 1) != (int)page_size)
            continue;
        if (pgno == 1 && delta) {
            uint8_t *copy = xmalloc(page_size);
            memcpy(copy, data, page_size);
            put_be32(copy + 40, get_be32(copy + 40) - delta);
            pagesum_set(&ps, 1, copy);
            free(copy);
        } else {
            pagesum_set(&ps, pgno, data);
        }
    }
    sqlite3_finalize(st);
    if (rc == SQLITE_DONE) {
        printf("{\"page_size\":%" PRIu32 ",\"db_pages\":%" PRIu32 ",\"checksum\":\"%" PRIu64
               "\"}\n",
               page_size, npages, pagesum_value(&ps));
        rc = SQLITE_OK;
    }
    pagesum_free(&ps);
    (void)sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    return rc;
}

int main(int argc, char **argv)
{
    int sum = argc > 1 && strcmp(argv[1], "--checksum") == 0;
    int first = sum ? 2 : 1;
    sqlite3 *db = NULL;
    int rc;

    uint32_t delta = 0;

    if (argc < first + 1 || (sum && argc > 4) || (!sum && argc < 3)) {
        fprintf(stderr, "usage: sqlq DB SQL...\n       sqlq --checksum DB [DELTA]\n");
        return 2;
    }
    if (sum && argc == 4)
        delta = (uint32_t)strtoul(argv[3], NULL, 10);
    rc = sqlite3_open_v2(argv[first], &db, SQLITE_OPEN_READONLY, NULL);
    if (rc == SQLITE_OK)
        (void)sqlite3_busy_timeout(db, 5000);
    if (rc == SQLITE_OK && sum)
        rc = checksum(db, delta);
    for (int i = first + 1; !sum && rc == SQLITE_OK && i < argc; i++)
        rc = query(db, argv[i]);
    if (rc != SQLITE_OK)
        fprintf(stderr, "sqlq: %s: %s\n", argv[first], db ? sqlite3_errmsg(db) : "out of memory");
    sqlite3_close(db);
    if (fflush(stdout) != 0)
        return 1;
    return rc == SQLITE_OK ? 0 : 1;
}
