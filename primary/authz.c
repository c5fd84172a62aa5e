/* boomerang: the primary's SQLite authorizer.
 *
 * How SQLite reports the operations we refuse (sqlite.org/c3ref/c_alter_table.html).
 * A plain VACUUM shows up only as its inner steps: ATTACH of '' and a BEGIN.
 *   ATTACH  SQLITE_ATTACH(filename)       VACUUM INTO attaches its target the
 *   DETACH  SQLITE_DETACH(schema)         same way; plain VACUUM attaches ''.
 *   SQLITE_FUNCTION(NULL, name)           load_extension
 *   SQLITE_PRAGMA(name, arg or NULL)      arg is NULL when the PRAGMA only reads
 *   SQLITE_TRANSACTION(op)                BEGIN / COMMIT / ROLLBACK
 *   SQLITE_SAVEPOINT(op, name)            SAVEPOINT / RELEASE / ROLLBACK TO */
#include "primary/authz.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct authz {
    int internal;
    int vacuum;
    int has_refusal;
    char refusal[256];
};

/* PRAGMAs refused when they set a value; reading them stays allowed. */
static const char *const pragma_set_refused[] = {
    "journal_mode",       "wal_autocheckpoint", "page_size",      "writable_schema",
    "synchronous",        "locking_mode",       "schema_version", "query_only",
    "journal_size_limit", "mmap_size",          "cache_spill",
};

/* PRAGMAs refused even without a value. */
static const char *const pragma_refused[] = {"wal_checkpoint", "temp_store_directory",
                                             "data_store_directory"};

static int in_list(const char *name, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (strcasecmp(name, list[i]) == 0)
            return 1;
    }
    return 0;
}

static int refuse(struct authz *az, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int refuse(struct authz *az, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(az->refusal, sizeof(az->refusal), fmt, ap);
    va_end(ap);
    az->has_refusal = 1;
    return SQLITE_DENY;
}

static int check_pragma(struct authz *az, const char *name, const char *arg)
{
    if (in_list(name, pragma_refused, ARRAY_LEN(pragma_refused)))
        return refuse(az, "PRAGMA %s is not allowed: the primary manages the WAL and checkpoints",
                      name);
    if (arg && in_list(name, pragma_set_refused, ARRAY_LEN(pragma_set_refused)))
        return refuse(az, "PRAGMA %s=%s is not allowed: replication depends on this setting", name,
                      arg);
    return SQLITE_OK;
}

static int authorize_cb(void *arg, int action, const char *a1, const char *a2, const char *db,
                        const char *trigger)
{
    struct authz *az = arg;
    (void)db;
    (void)trigger;

    if (az->internal)
        return SQLITE_OK;
    switch (action) {
    case SQLITE_ATTACH:
        if (az->vacuum && a1 && a1[0] == '\0')
            return SQLITE_OK;
        if (az->vacuum)
            return refuse(az, "VACUUM INTO is not allowed: it writes a file beside the "
                              "replicated database");
        return refuse(az, "ATTACH is not allowed: boomerang replicates one database file");
    case SQLITE_DETACH:
        if (az->vacuum)
            return SQLITE_OK;
        return refuse(az, "DETACH is not allowed: boomerang replicates one database file");
    case SQLITE_FUNCTION:
        if (a2 && strcasecmp(a2, "load_extension") == 0)
            return refuse(az, "load_extension() is not allowed on the primary");
        return SQLITE_OK;
    case SQLITE_PRAGMA:
        return a1 ? check_pragma(az, a1, a2) : SQLITE_OK;
    case SQLITE_TRANSACTION:
        if (az->vacuum) /* VACUUM runs its own BEGIN inside */
            return SQLITE_OK;
        return refuse(az,
                      "%s is not allowed here: the request's mode controls the transaction "
                      "(use MODE_BEGIN, MODE_COMMIT, MODE_ROLLBACK)",
                      a1 ? a1 : "transaction control");
    case SQLITE_SAVEPOINT:
        if (a2 && strncasecmp(a2, AUTHZ_SAVEPOINT_PREFIX, strlen(AUTHZ_SAVEPOINT_PREFIX)) == 0)
            return refuse(az, "savepoint name %s is reserved by boomerang", a2);
        return SQLITE_OK;
    default:
        return SQLITE_OK;
    }
}

int authz_install(sqlite3 *db, struct authz **out)
{
    struct authz *az = xcalloc(1, sizeof(*az));
    int rc = sqlite3_set_authorizer(db, authorize_cb, az);

    if (rc != SQLITE_OK) {
        free(az);
        return rc;
    }
    *out = az;
    return 0;
}

void authz_set_internal(struct authz *az, int internal)
{
    az->internal = internal;
}

void authz_set_vacuum(struct authz *az, int vacuum)
{
    az->vacuum = vacuum;
}

const char *authz_take_refusal(struct authz *az)
{
    if (!az || !az->has_refusal)
        return NULL;
    az->has_refusal = 0;
    return az->refusal;
}

void authz_free(sqlite3 *db, struct authz *az)
{
    if (db)
        sqlite3_set_authorizer(db, NULL, NULL);
    free(az);
}
