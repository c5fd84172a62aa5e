/* boomerang: the database's identity, kept in <state_dir>/meta.
 *
 * The id is random and made once per database history; the epoch is bumped
 * whenever the history is not continuous (the database no longer matches the
 * log), and replicas of another id or epoch rebuild from a snapshot. The base
 * fields describe where the epoch's history starts: the txid before its first
 * record and the database state at that point (its checksum and its place in
 * the WAL), so that a restart with an empty log still knows which WAL commits
 * the epoch already holds. The file format is documented in meta.c. */
#ifndef BOOMERANG_META_H
#define BOOMERANG_META_H

#include <stdint.h>

#include "common/util.h"

enum meta_err {
    META_ERR_IO = -1,      /* a system call failed (logged) */
    META_ERR_FORMAT = -2,  /* the file is not a valid meta file (logged) */
    META_ERR_MISSING = -3, /* there is no meta file (not logged) */
};

struct meta {
    char database_id[33];            /* 32 lowercase hex digits */
    uint64_t epoch;                  /* >= 1 */
    uint64_t base_txid;              /* txids of this epoch start at base_txid + 1 */
    uint64_t base_checksum;          /* database checksum at base_txid */
    uint32_t base_salt1, base_salt2; /* WAL generation of the base state, and */
    uint32_t base_frame;             /* its last commit frame (0: before any frame) */
};

/* A new identity: a random database id, epoch 1, base 0 (the base checksum
 * and position are the caller's to fill in). Returns 0, or META_ERR_IO if no
 * random bytes could be had. */
int MUST_CHECK meta_create(struct meta *out);

/* Read path. Returns 0, META_ERR_MISSING, META_ERR_FORMAT or META_ERR_IO. */
int MUST_CHECK meta_load(const char *path, struct meta *out);

/* Replace path atomically and durably (write path.tmp, fsync, rename, fsync
 * the directory). Returns 0 or META_ERR_IO. */
int MUST_CHECK meta_save(const char *path, const struct meta *m);

#endif
