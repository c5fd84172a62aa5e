/* boomerang: run Hrana statements on the local replica (read-only).
 *
 * A `struct local` is one read-only SQLite connection to the replica file,
 * with a cache of prepared statements, an authorizer and a run-time bound.
 * Each sidecar thread owns one for autocommit reads; a Hrana stream that
 * holds a read transaction open (BEGIN TRANSACTION READONLY ... across HTTP
 * requests) owns another one until the transaction ends. A connection is used
 * by one thread at a time, but may move between threads (SQLITE_THREADSAFE=2).
 *
 * Routing uses local_classify(): it prepares the statement on the replica
 * and reports whether it reads (sqlite3_stmt_readonly), writes, controls a
 * transaction, or could not be prepared here (the replica may lack a table
 * the primary has: such statements go to the primary, which gives the
 * authoritative answer or error).
 *
 * Safety: the connection is opened SQLITE_OPEN_READONLY with query_only on;
 * an authorizer refuses ATTACH, DETACH, load_extension() and every PRAGMA
 * that is not a known read-only one, with SQLITE_AUTH and a message naming
 * the operation (the same words as the primary's refusals). A progress
 * handler interrupts a statement that runs past stmt_timeout_ms: it fails
 * with code "TIMEOUT". A result past max_rows rows or max_bytes bytes of JSON
 * fails with "RESPONSE_TOO_LARGE".
 *
 * Errors carry SQLite *primary* code names ("SQLITE_ERROR",
 * "SQLITE_CONSTRAINT"), as sqld sends them (research/hrana.md §1.10), and the
 * Hrana codes ARGS_INVALID, ARGS_BOTH_POSITIONAL_AND_NAMED,
 * SQL_NO_STATEMENT, SQL_MANY_STATEMENTS.
 *
 * Arguments: positional args bind to ?1.. ; named args are matched to the
 * statement's parameters by full name first (":id"), then with each of the
 * prefixes ':', '@', '$' added to a bare name ("id"); mixing positional and
 * named is ARGS_BOTH_POSITIONAL_AND_NAMED; more values than parameters, or a
 * named arg that matches no parameter, is ARGS_INVALID. Parameters left
 * without a value are ARGS_INVALID (as in sqld). */
#ifndef BOOMERANG_LOCAL_H
#define BOOMERANG_LOCAL_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/util.h"
#include "proxy/hrana.h"

struct local;

struct local_config {
    const char *path;        /* the replica database file */
    int64_t stmt_timeout_ms; /* 0 = 5000; < 0 = no bound */
    size_t max_rows;         /* per statement; 0 = 100000 */
    size_t max_bytes;        /* JSON bytes per statement result; 0 = 16 MiB */
    unsigned cache_size;     /* prepared statements kept; 0 = 64 */
};

enum local_kind {
    LOCAL_READ,           /* sqlite3_stmt_readonly, EXPLAIN or a read-only PRAGMA; not
                             transaction control */
    LOCAL_WRITE,          /* may change the database (or a PRAGMA with a value) */
    LOCAL_UNPREPARED,     /* did not prepare on the replica (*err says why) */
    LOCAL_BEGIN,          /* BEGIN [DEFERRED|IMMEDIATE|EXCLUSIVE] [TRANSACTION] */
    LOCAL_BEGIN_READONLY, /* BEGIN TRANSACTION READONLY (@libsql/client's "read" mode) */
    LOCAL_COMMIT,         /* COMMIT, END */
    LOCAL_ROLLBACK,       /* ROLLBACK (not ROLLBACK TO) */
    LOCAL_SAVEPOINT,      /* SAVEPOINT, RELEASE, ROLLBACK TO */
    LOCAL_EMPTY,          /* no statement at all (only white space or comments) */
};

/* Open a read-only connection on cfg->path (which must exist and be a WAL
 * database the applier created). Returns 0 and *out, or a negative SQLite
 * code (logged). */
int MUST_CHECK local_open(const struct local_config *cfg, struct local **out);

/* Roll back whatever is open, finalize the cache, close. NULL is a no-op. */
void local_close(struct local *l);

/* Classify one SQL text. More than one statement (a non-empty tail) is
 * classified by the first and sets *many = 1 (many may be NULL). For
 * LOCAL_UNPREPARED, err (if not NULL) holds the replica's error. A PRAGMA the
 * authorizer refuses (one with a value, or not known to be read-only) is
 * LOCAL_WRITE, with *many = 0 since it did not prepare. The
 * prepared statement stays in the cache for the local_execute() that
 * usually follows. "BEGIN TRANSACTION READONLY" is recognised by its text. */
enum local_kind local_classify(struct local *l, const char *sql, int *many,
                               struct hrana_error *err);

/* Run st (its SQL is `sql`: st->sql, or the text stored under st->sql_id) and
 * append its StmtResult JSON to out (rows only if st->want_rows). On error
 * nothing is appended, *err is filled and -1 returned; else 0. Runs in the
 * connection's current transaction, or in autocommit. */
int local_execute(struct local *l, const char *sql, const struct hrana_stmt *st, struct buf *out,
                  struct hrana_error *err);

/* Check that st's arguments fit sql's parameters (the rules above) without
 * running it: for statements forwarded to the primary. Returns 0, or -1 with
 * *err (ARGS_INVALID, ARGS_BOTH_POSITIONAL_AND_NAMED). A statement that does
 * not prepare here passes (the primary decides). */
int local_check_args(struct local *l, const char *sql, const struct hrana_stmt *st,
                     struct hrana_error *err);

/* Run a transaction-control or any other statement with no arguments and no
 * rows ("BEGIN TRANSACTION READONLY", "COMMIT", "ROLLBACK"). 0 or -1 + *err. */
int local_exec_sql(struct local *l, const char *sql, struct hrana_error *err);

/* Describe sql and append the DescribeResult JSON to out:
 * {"params":[{"name":":a"|null}],"cols":[{"name":..,"decltype":..}],
 *  "is_explain":false,"is_readonly":true}. 0 or -1 + *err. */
int local_describe(struct local *l, const char *sql, struct buf *out, struct hrana_error *err);

/* Split a multi-statement text into its statements (for Hrana `sequence`),
 * at the semicolons that end one (sqlite3_complete: strings, comments and
 * trigger bodies are respected); white space, comments and empty statements
 * between them are dropped, and the last statement needs no semicolon. Needs
 * no connection: statements the replica could not prepare are split too.
 * *out is an array of the statements (NULL-terminated), one malloc block the
 * caller frees with free(). Returns how many. */
size_t local_split_sql(const char *sql, char ***out);

/* Whether the connection is in autocommit mode (no transaction open). */
int local_autocommit(const struct local *l);

/* Name of an SQLite result code's primary code: SQLITE_CONSTRAINT for
 * SQLITE_CONSTRAINT_UNIQUE, ... ("SQLITE_UNKNOWN" for unknown codes). */
const char *local_primary_code_name(int rc);

#endif
