/* boomerang: run one client statement on the writer connection and build its
 * protobuf result (rows, columns, affected rows, rowid, or the error). */
#ifndef BOOMERANG_EXEC_H
#define BOOMERANG_EXEC_H

#include <sqlite3.h>
#include <stddef.h>

#include "common/util.h"
#include "proto/boomerang.pb-c.h"

struct authz;

struct exec_limits {
    size_t max_result_bytes; /* rows beyond this fail the statement with SQLITE_TOOBIG */
};

/* Run st on db. *out is always set to a new result the caller owns (free it
 * with protobuf_c_message_free_unpacked(&(*out)->base, NULL)). *readonly (if
 * not NULL) is set to whether the statement cannot write the database.
 * Returns SQLITE_OK, or the statement's error code (then (*out)->error is set,
 * and its message names the refused operation when the authorizer refused
 * it). */
int exec_statement(sqlite3 *db, struct authz *az, const Boomerang__V1__Statement *st,
                   const struct exec_limits *lim, Boomerang__V1__StatementResult **out,
                   int *readonly);

/* Whether every statement of the request prepares as read-only on db (which
 * should be a read-only connection: ATTACH counts as read-only to SQLite). */
int exec_request_readonly(sqlite3 *db, const Boomerang__V1__ExecuteRequest *req);

/* A result that carries only an error. code is a name such as "SKIPPED". */
Boomerang__V1__StatementResult *exec_error_result(const char *code, int extended_code,
                                                  const char *message);

/* An empty successful result (no columns, no rows). */
Boomerang__V1__StatementResult *exec_empty_result(void);

/* Whether sql's first keyword is kw (case-insensitive), skipping white space
 * and comments. Used to spot statements that must run outside a transaction. */
int exec_first_keyword_is(const char *sql, const char *kw);

#endif
