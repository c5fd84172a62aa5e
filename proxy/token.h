/* boomerang: session tokens (Boomerang-Token) and Hrana batons.
 *
 * A token names a replication position: (database id, epoch, txid). Every
 * sidecar response carries one; a request that presents one is not answered
 * from an older position (DESIGN.md "Tokens and consistency"). Text form:
 *
 *   b1.<database_id: 32 hex>.<epoch: decimal>.<txid: decimal>[.<mac>]
 *
 * where mac is the unpadded base64url of the first 16 bytes of
 * HMAC-SHA256(cluster secret, "b1.<database_id>.<epoch>.<txid>"). Without a
 * key, tokens carry no mac and a mac on input is ignored; with a key, a
 * missing or wrong mac is TOKEN_ERR_MAC. Tokens of one database are ordered
 * by (epoch, txid). Only this canonical text parses: database_id in
 * lowercase hex, decimals without sign or leading zeros, the mac exactly 22
 * base64url characters.
 *
 * A baton names a Hrana stream and the sequence number of the next request
 * on it (research/hrana.md §1.9): the unpadded base64url of
 * stream id (u64 BE) | seq (u64 BE) | HMAC-SHA256(per-process key, those 16
 * bytes) truncated to 16 bytes. Unforgeable, and an old one is detectable.
 *
 * Threading: keys are immutable after creation; any thread. */
#ifndef BOOMERANG_TOKEN_H
#define BOOMERANG_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#include "common/util.h"

#define TOKEN_MAX_LEN 112 /* with the NUL (the longest token is 100 + 1) */
#define BATON_LEN     43  /* base64url of 32 bytes, unpadded, without the NUL */

struct token {
    char database_id[33];
    uint64_t epoch;
    uint64_t txid;
};

struct token_key;

enum token_err {
    TOKEN_ERR_MALFORMED = -1, /* not a token (or not a baton) */
    TOKEN_ERR_MAC = -2,       /* the mac does not verify */
    TOKEN_ERR_IO = -3,        /* token_key_load: the file */
};

/* The cluster secret: the whole content of path (at least 16 bytes after
 * trimming white space, else TOKEN_ERR_MALFORMED). Returns 0 and *out, or an
 * error (logged). */
int MUST_CHECK token_key_load(const char *path, struct token_key **out);

/* A random key (for batons: one per process). Never fails (aborts). */
struct token_key *token_key_random(void);

void token_key_free(struct token_key *k);

/* Write t's text form into out (TOKEN_MAX_LEN bytes), signed when k.
 * t->database_id should be 32 lowercase hex digits: anything else is
 * written as given and will not parse back. */
void token_format(const struct token_key *k, const struct token *t, char *out);

/* Parse s. Returns 0 and *t, TOKEN_ERR_MALFORMED or TOKEN_ERR_MAC. */
int token_parse(const struct token_key *k, const char *s, struct token *t);

/* Compare positions of one database: <0, 0, >0 by (epoch, txid). */
int token_cmp(const struct token *a, const struct token *b);

/* Write the baton for (stream_id, seq) into out (BATON_LEN + 1 bytes). */
void baton_format(const struct token_key *k, uint64_t stream_id, uint64_t seq, char *out);

/* Parse a baton. Returns 0, TOKEN_ERR_MALFORMED or TOKEN_ERR_MAC. */
int baton_parse(const struct token_key *k, const char *s, uint64_t *stream_id, uint64_t *seq);

#endif
