/* boomerang: bearer tokens for the gRPC link (`--auth-token-file`).
 *
 * The token file holds one token per line. Blank lines and lines starting
 * with '#' are ignored; surrounding whitespace is trimmed. Several tokens let
 * an operator rotate them without downtime. Tokens are secrets: nothing here
 * logs one, and callers must not either. */
#ifndef BOOMERANG_AUTH_H
#define BOOMERANG_AUTH_H

#include "common/util.h"

struct auth;

enum auth_err {
    AUTH_ERR_READ = -1,    /* the file could not be read (reason logged) */
    AUTH_ERR_EMPTY = -2,   /* the file holds no token */
    AUTH_ERR_TOO_LONG = -3 /* a token is longer than AUTH_TOKEN_MAX */
};

/* Longest token accepted, bytes. */
#define AUTH_TOKEN_MAX 4096

/* Load the tokens from path (at most 1 MiB). Returns 0 and *out (free it with
 * auth_free), or a negative auth_err; the reason is logged without the token. */
int MUST_CHECK auth_load(const char *path, struct auth **out);

/* Return 1 if authorization (an HTTP Authorization header value, may be NULL)
 * is exactly "Bearer <token>" for one of the loaded tokens, else 0. The time
 * taken depends only on the header's length and the number and maximum length
 * of the tokens, never on which token matched or how much of it. */
int auth_check_bearer(const struct auth *a, const char *authorization);

/* The first loaded token, for a client that sends "authorization: Bearer <it>".
 * Owned by a; valid until auth_free. */
const char *auth_token(const struct auth *a);

/* Free a (NULL is fine). Token memory is wiped first. */
void auth_free(struct auth *a);

#endif
