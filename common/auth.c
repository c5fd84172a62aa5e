/* boomerang: bearer tokens, checked in constant time.
 *
 * Each token is stored as the full expected header value "Bearer <token>",
 * zero-padded to a common width. A check copies the presented header into a
 * zeroed buffer of that width and compares it with every entry using
 * CRYPTO_memcmp over the whole width, folding the results with bitwise ops.
 * So the work done does not depend on which token matched, on how long the
 * matching prefix was, or on any token's own length. */
#include "common/auth.h"

#include <ctype.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

#define AUTH_FILE_MAX   (1024 * 1024)
#define AUTH_SCHEME     "Bearer "
#define AUTH_SCHEME_LEN (sizeof(AUTH_SCHEME) - 1)

struct auth {
    size_t count;  /* number of tokens */
    size_t width;  /* compared bytes per entry: AUTH_SCHEME_LEN + longest token */
    uint8_t *vals; /* count entries of width + 1 bytes, zero-padded (so NUL-terminated) */
    size_t *lens;  /* length of each entry's value ("Bearer " + token) */
};

#define AUTH_WIDTH_MAX (AUTH_SCHEME_LEN + AUTH_TOKEN_MAX)

/* Trim surrounding whitespace in place; returns the start, sets *len. */
static char *trim(char *s, size_t *len)
{
    size_t n = strlen(s);

    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    while (n > 0 && isspace((unsigned char)*s)) {
        s++;
        n--;
    }
    s[n] = '\0';
    *len = n;
    return s;
}

/* Split text into lines and keep the token ones: fills toks (may be NULL to
 * only count). Returns the count, or AUTH_ERR_TOO_LONG. */
static long collect(char *text, char **toks, size_t *max_len)
{
    long count = 0;
    char *save = NULL;

    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        size_t len;
        char *t = trim(line, &len);
        if (len == 0 || t[0] == '#')
            continue;
        if (len > AUTH_TOKEN_MAX)
            return AUTH_ERR_TOO_LONG;
        toks[count++] = t;
        *max_len = MAX(*max_len, len);
    }
    return count;
}

static struct auth *auth_build(char **toks, size_t count, size_t max_len)
{
    struct auth *a = xcalloc(1, sizeof(*a));

    a->count = count;
    a->width = AUTH_SCHEME_LEN + max_len;
    a->vals = xcalloc(count, a->width + 1);
    a->lens = xcalloc(count, sizeof(*a->lens));
    for (size_t i = 0; i < count; i++) {
        uint8_t *v = a->vals + i * (a->width + 1);
        size_t tl = strlen(toks[i]);
        memcpy(v, AUTH_SCHEME, AUTH_SCHEME_LEN);
        memcpy(v + AUTH_SCHEME_LEN, toks[i], tl);
        a->lens[i] = AUTH_SCHEME_LEN + tl;
    }
    return a;
}

int auth_load(const char *path, struct auth **out)
{
    char *text, **toks;
    size_t len, max_len = 0;
    long count;
    int rv;

    rv = util_read_file(path, AUTH_FILE_MAX, &text, &len);
    if (rv < 0) {
        log_error("read token file %s failed: %s", path, strerror(-rv));
        return AUTH_ERR_READ;
    }
    /* A line holds at least one byte plus its newline, so this is enough. */
    toks = xcalloc(len / 2 + 1, sizeof(*toks));
    count = collect(text, toks, &max_len);
    if (count == AUTH_ERR_TOO_LONG) {
        log_error("load token file %s failed: a token is longer than %d bytes", path,
                  AUTH_TOKEN_MAX);
        rv = AUTH_ERR_TOO_LONG;
    } else if (count == 0) {
        log_error("load token file %s failed: no token in it", path);
        rv = AUTH_ERR_EMPTY;
    } else {
        *out = auth_build(toks, (size_t)count, max_len);
        rv = 0;
    }
    OPENSSL_cleanse(text, len);
    free(toks);
    free(text);
    return rv;
}

int auth_check_bearer(const struct auth *a, const char *authorization)
{
    /* On the stack, so concurrent checks from several threads are safe. */
    uint8_t presented[AUTH_WIDTH_MAX];
    size_t hlen;
    unsigned ok = 0;

    if (!a || !authorization)
        return 0;
    hlen = strlen(authorization);
    memset(presented, 0, a->width);
    memcpy(presented, authorization, MIN(hlen, a->width));
    /* No early exit: every entry is compared over the full width, and a
     * header longer than the width simply fails the length test. */
    for (size_t i = 0; i < a->count; i++) {
        unsigned same = CRYPTO_memcmp(presented, a->vals + i * (a->width + 1), a->width) == 0;
        unsigned len_eq = a->lens[i] == hlen;
        ok |= same & len_eq;
    }
    OPENSSL_cleanse(presented, a->width);
    return (int)ok;
}

const char *auth_token(const struct auth *a)
{
    return (const char *)a->vals + AUTH_SCHEME_LEN;
}

void auth_free(struct auth *a)
{
    if (!a)
        return;
    OPENSSL_cleanse(a->vals, a->count * (a->width + 1));
    free(a->vals);
    free(a->lens);
    free(a);
}
