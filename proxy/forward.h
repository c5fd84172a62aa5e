/* boomerang: Hrana statements to Primary.Execute and back.
 *
 * The sidecar forwards writes to the primary as boomerang.v1 ExecuteRequests
 * (proto/boomerang.proto) and turns each StatementResult back into the Hrana
 * JSON the app expects. Values map one to one (a Hrana float stays a REAL,
 * as sqld binds it); named arguments go as sent, and the primary infers
 * their prefix the same way the local executor does.
 *
 * Error codes: the primary reports extended SQLite code names
 * ("SQLITE_CONSTRAINT_UNIQUE"); Hrana clients get the primary code name
 * ("SQLITE_CONSTRAINT"), as sqld sends (research/hrana.md §1.10). Refusals
 * stay "SQLITE_AUTH" with the primary's message. A result with code
 * "SKIPPED" (not run because an earlier statement failed) is reported as
 * skipped, not as an error.
 *
 * Threading: no shared state; any thread. */
#ifndef BOOMERANG_FORWARD_H
#define BOOMERANG_FORWARD_H

#include <stddef.h>

#include "common/buf.h"
#include "proto/boomerang.pb-c.h"
#include "proxy/hrana.h"

/* A new Statement for st whose SQL text is sql (st->sql or the stored text);
 * skip_rows = !want_rows. Values are copied. Free with forward_stmt_free. */
Boomerang__V1__Statement *forward_stmt(const char *sql, const struct hrana_stmt *st);
void forward_stmt_free(Boomerang__V1__Statement *s);

/* Outcome of forward_result. */
enum forward_outcome {
    FORWARD_OK = 0,      /* StmtResult JSON appended to out */
    FORWARD_ERROR = -1,  /* *err filled */
    FORWARD_SKIPPED = 1, /* the primary did not run it */
};

/* Append the Hrana StmtResult JSON for r (rows only if want_rows), or fill
 * *err. max_bytes bounds the JSON appended (0: no bound): past it the
 * outcome is FORWARD_ERROR with code RESPONSE_TOO_LARGE and nothing stays
 * appended. */
enum forward_outcome forward_result(const Boomerang__V1__StatementResult *r, int want_rows,
                                    size_t max_bytes, struct buf *out, struct hrana_error *err);

/* The Hrana code for a primary-reported code name and extended code:
 * "SQLITE_CONSTRAINT_UNIQUE" / 2067 -> "SQLITE_CONSTRAINT". */
const char *forward_code(const char *code, int extended_code);

#endif
