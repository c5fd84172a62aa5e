/* boomerang: SQLite result code names ("SQLITE_CONSTRAINT_UNIQUE"), the form
 * Hrana and our gRPC API report errors in. sqlite3_errstr() gives English text
 * only, so the names come from this table, generated from sqlite3.h's
 * #defines by the command in sqlcode.c's header comment. */
#ifndef BOOMERANG_SQLCODE_H
#define BOOMERANG_SQLCODE_H

/* Name of an extended (or primary) result code; for an unknown extended code,
 * the name of its primary code; "SQLITE_UNKNOWN" if neither is known. */
const char *sqlcode_name(int code);

#endif
