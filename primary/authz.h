/* boomerang: the primary's SQLite authorizer (DESIGN.md, invariant 6).
 *
 * Clients cannot break replication: the authorizer refuses ATTACH, DETACH,
 * VACUUM INTO, load_extension(), transaction control (the request's mode owns
 * the transaction), savepoints named like ours, and the PRAGMAs that change
 * journal mode, checkpointing, page size, writable_schema, synchronous and
 * the other settings capture depends on. Each refusal records a message that
 * names the operation; SQLite itself only says "not authorized". */
#ifndef BOOMERANG_AUTHZ_H
#define BOOMERANG_AUTHZ_H

#include <sqlite3.h>

#include "common/util.h"

/* Savepoint names starting with this prefix belong to the writer. */
#define AUTHZ_SAVEPOINT_PREFIX "boomerang_"

struct authz;

/* Install the authorizer on db. Returns 0 and *out, or a SQLite error code. */
int MUST_CHECK authz_install(sqlite3 *db, struct authz **out);

/* While internal is set, everything is allowed: the writer's own BEGIN,
 * COMMIT and SAVEPOINT statements. */
void authz_set_internal(struct authz *az, int internal);

/* While vacuum is set, the ATTACH/DETACH of the empty-named temporary database
 * that a plain VACUUM does internally are allowed (VACUUM INTO names a file and
 * stays refused). */
void authz_set_vacuum(struct authz *az, int vacuum);

/* The reason for the last refusal since the previous call, or NULL. The
 * string stays valid until the next refusal. az may be NULL. */
const char *authz_take_refusal(struct authz *az);

void authz_free(sqlite3 *db, struct authz *az);

#endif
