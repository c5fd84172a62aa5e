/* boomerang: session tokens and Hrana batons (formats in proxy/token.h).
 *
 * Both are MACed with HMAC-SHA256 truncated to 16 bytes (128 bits: far past
 * what an online forger can try). The key is set up once into an EVP_MAC_CTX
 * that already holds the HMAC inner and outer pads; each MAC duplicates it,
 * which skips the key schedule and the provider lookup that EVP_Q_mac() does
 * on every call (a token is signed on every pipeline response).
 *
 * Parsing is strict: only the canonical text this file writes is accepted
 * (lowercase hex, decimals without sign or leading zeros, base64url without
 * padding and with zero spare bits), so one position has one text and the
 * MAC, computed over the text, covers exactly what was parsed. */
#include "proxy/token.h"

#include <assert.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

#define TOKEN_MAC_LEN     16 /* truncated HMAC-SHA256 */
#define TOKEN_MAC_B64_LEN 22 /* unpadded base64url of 16 bytes */
#define BATON_RAW_LEN     32 /* stream id, seq, mac */
#define TOKEN_SECRET_MIN  16
#define TOKEN_SECRET_MAX  (64 * 1024)

_Static_assert(BATON_LEN == (BATON_RAW_LEN * 4 + 2) / 3, "baton text length");
_Static_assert(TOKEN_MAX_LEN >= 3 + 32 + 1 + 20 + 1 + 20 + 1 + TOKEN_MAC_B64_LEN + 1,
               "longest token fits");

struct token_key {
    EVP_MAC *mac;
    EVP_MAC_CTX *base; /* keyed; only ever duplicated, so any thread may use it */
};

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* ---- keys ---------------------------------------------------------------------- */

static struct token_key *key_new(const uint8_t *secret, size_t len)
{
    struct token_key *k = xcalloc(1, sizeof(*k));
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };

    k->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    k->base = k->mac ? EVP_MAC_CTX_new(k->mac) : NULL;
    if (!k->base || !EVP_MAC_init(k->base, secret, len, params)) {
        /* Only without a working default provider: nothing could be signed. */
        log_error("set up HMAC-SHA256 failed: OpenSSL error");
        abort();
    }
    return k;
}

int token_key_load(const char *path, struct token_key **out)
{
    char *data;
    size_t len, start = 0;
    int rv = util_read_file(path, TOKEN_SECRET_MAX, &data, &len);

    if (rv != 0) {
        log_error("read cluster secret %s failed: %s", path, strerror(-rv));
        return TOKEN_ERR_IO;
    }
    while (start < len && strchr(" \t\r\n", data[start]))
        start++;
    while (len > start && strchr(" \t\r\n", data[len - 1]))
        len--;
    if (len - start < TOKEN_SECRET_MIN) {
        log_error("load cluster secret %s failed: shorter than %d bytes", path, TOKEN_SECRET_MIN);
        OPENSSL_cleanse(data, len);
        free(data);
        return TOKEN_ERR_MALFORMED;
    }
    *out = key_new((const uint8_t *)data + start, len - start);
    OPENSSL_cleanse(data, len);
    free(data);
    return 0;
}

struct token_key *token_key_random(void)
{
    uint8_t secret[32];
    struct token_key *k;

    if (RAND_bytes(secret, sizeof(secret)) != 1) {
        log_error("make baton key failed: no randomness from OpenSSL");
        abort();
    }
    k = key_new(secret, sizeof(secret));
    OPENSSL_cleanse(secret, sizeof(secret));
    return k;
}

void token_key_free(struct token_key *k)
{
    if (!k)
        return;
    EVP_MAC_CTX_free(k->base); /* cleanses the key material */
    EVP_MAC_free(k->mac);
    free(k);
}

/* out[0..16) = HMAC-SHA256(k, data) truncated. */
static void key_mac(const struct token_key *k, const void *data, size_t len, uint8_t *out)
{
    uint8_t full[EVP_MAX_MD_SIZE];
    size_t outl = 0;
    EVP_MAC_CTX *c = EVP_MAC_CTX_dup(k->base);

    if (!c || !EVP_MAC_update(c, data, len) || !EVP_MAC_final(c, full, &outl, sizeof(full)) ||
        outl < TOKEN_MAC_LEN) {
        log_error("compute HMAC-SHA256 failed: OpenSSL error");
        abort();
    }
    EVP_MAC_CTX_free(c);
    memcpy(out, full, TOKEN_MAC_LEN);
}

/* ---- base64url, unpadded ------------------------------------------------------- */

/* Write the encoding of in[0..n) and a NUL; returns the characters written. */
static size_t b64url_encode(const uint8_t *in, size_t n, char *out)
{
    size_t o = 0, i;

    for (i = 0; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64url[v >> 18];
        out[o++] = b64url[(v >> 12) & 63];
        out[o++] = b64url[(v >> 6) & 63];
        out[o++] = b64url[v & 63];
    }
    if (n - i == 1) {
        out[o++] = b64url[in[i] >> 2];
        out[o++] = b64url[(in[i] & 3) << 4];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 8 | in[i + 1];
        out[o++] = b64url[v >> 10];
        out[o++] = b64url[(v >> 4) & 63];
        out[o++] = b64url[(v << 2) & 63];
    }
    out[o] = '\0';
    return o;
}

static int b64url_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '-' ? 62 : c == '_' ? 63 : -1;
}

/* Decode exactly n bytes from the (4n+2)/3 characters at s. Spare low bits
 * of the last character must be zero, so each value has one encoding.
 * Returns 0, or -1. */
static int b64url_decode(const char *s, uint8_t *out, size_t n)
{
    size_t chars = (n * 4 + 2) / 3, bits = 0, o = 0;
    uint32_t acc = 0;

    for (size_t i = 0; i < chars; i++) {
        int v = b64url_value(s[i]);
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return o == n && acc == 0 ? 0 : -1;
}

/* ---- tokens -------------------------------------------------------------------- */

void token_format(const struct token_key *k, const struct token *t, char *out)
{
    uint8_t mac[TOKEN_MAC_LEN];
    size_t id_len = strnlen(t->database_id, sizeof(t->database_id) - 1);
    int n = 3;

    memcpy(out, "b1.", 3);
    memcpy(out + n, t->database_id, id_len);
    n += (int)id_len;
    out[n++] = '.';
    n += (int)util_fmt_u64(out + n, t->epoch);
    out[n++] = '.';
    n += (int)util_fmt_u64(out + n, t->txid);
    out[n] = '\0';

    /* database_id is at most 32 characters, so the static_assert above holds. */
    assert(n > 0 && n < TOKEN_MAX_LEN - 1 - TOKEN_MAC_B64_LEN);
    if (!k)
        return;
    key_mac(k, out, (size_t)n, mac);
    out[n] = '.';
    b64url_encode(mac, sizeof(mac), out + n + 1);
}

/* A canonical decimal u64 at *s ("0", or no leading zero; at most
 * UINT64_MAX), ending at '.' or NUL; advances *s past it. 0 or -1. */
static int parse_u64(const char **s, uint64_t *out)
{
    const char *p = *s;
    uint64_t v = 0;

    if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9'))
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (*p != '.' && *p != '\0')
        return -1;
    *out = v;
    *s = p;
    return 0;
}

/* "b1.<id>.<epoch>.<txid>" into t; *end points past it ('.' or NUL). */
static int parse_fields(const char *s, struct token *t, const char **end)
{
    if (strncmp(s, "b1.", 3) != 0)
        return -1;
    s += 3;
    for (int i = 0; i < 32; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return -1;
        t->database_id[i] = s[i];
    }
    t->database_id[32] = '\0';
    s += 32;
    if (*s++ != '.' || parse_u64(&s, &t->epoch) != 0 || *s++ != '.' || parse_u64(&s, &t->txid) != 0)
        return -1;
    *end = s;
    return 0;
}

int token_parse(const struct token_key *k, const char *s, struct token *t)
{
    struct token tmp;
    const char *end;
    uint8_t got[TOKEN_MAC_LEN], want[TOKEN_MAC_LEN];
    int has_mac;

    if (!s || parse_fields(s, &tmp, &end) != 0)
        return TOKEN_ERR_MALFORMED;
    has_mac = *end == '.';
    if (has_mac &&
        (strlen(end + 1) != TOKEN_MAC_B64_LEN || b64url_decode(end + 1, got, sizeof(got)) != 0))
        return TOKEN_ERR_MALFORMED;
    if (k) {
        if (!has_mac)
            return TOKEN_ERR_MAC;
        key_mac(k, s, (size_t)(end - s), want);
        if (CRYPTO_memcmp(got, want, sizeof(want)) != 0)
            return TOKEN_ERR_MAC;
    }
    *t = tmp;
    return 0;
}

int token_cmp(const struct token *a, const struct token *b)
{
    if (a->epoch != b->epoch)
        return a->epoch < b->epoch ? -1 : 1;
    if (a->txid != b->txid)
        return a->txid < b->txid ? -1 : 1;
    return 0;
}

/* ---- batons -------------------------------------------------------------------- */

void baton_format(const struct token_key *k, uint64_t stream_id, uint64_t seq, char *out)
{
    uint8_t raw[BATON_RAW_LEN];

    put_be64(raw, stream_id);
    put_be64(raw + 8, seq);
    key_mac(k, raw, 16, raw + 16);
    b64url_encode(raw, sizeof(raw), out);
}

int baton_parse(const struct token_key *k, const char *s, uint64_t *stream_id, uint64_t *seq)
{
    uint8_t raw[BATON_RAW_LEN], want[TOKEN_MAC_LEN];

    if (!s || strnlen(s, BATON_LEN + 1) != BATON_LEN || b64url_decode(s, raw, sizeof(raw)) != 0)
        return TOKEN_ERR_MALFORMED;
    key_mac(k, raw, 16, want);
    if (CRYPTO_memcmp(raw + 16, want, sizeof(want)) != 0)
        return TOKEN_ERR_MAC;
    *stream_id = get_be64(raw);
    *seq = get_be64(raw + 8);
    return 0;
}
