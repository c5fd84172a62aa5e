/* Unit tests for proxy/token.c: session tokens and batons. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "harness.h"
#include "proxy/token.h"

#define ID "0123456789abcdef0123456789abcdef"

static char tmpdir[64];

/* A file under tmpdir holding text; returns its path (static buffer). */
static const char *write_tmp(const char *name, const char *text)
{
    static char path[128];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0)
        abort();
    return path;
}

static struct token_key *load_key(const char *name, const char *text)
{
    struct token_key *k = NULL;

    if (token_key_load(write_tmp(name, text), &k) != 0)
        return NULL;
    return k;
}

static struct token mk(const char *id, uint64_t epoch, uint64_t txid)
{
    struct token t = {.epoch = epoch, .txid = txid};

    snprintf(t.database_id, sizeof(t.database_id), "%s", id);
    return t;
}

static int same(const struct token *a, const struct token *b)
{
    return strcmp(a->database_id, b->database_id) == 0 && a->epoch == b->epoch &&
           a->txid == b->txid;
}

TEST(unsigned_round_trip)
{
    const uint64_t vals[] = {0, 1, 9, 10, 1234567890, UINT64_MAX - 1, UINT64_MAX};
    char s[TOKEN_MAX_LEN];

    for (size_t i = 0; i < ARRAY_LEN(vals); i++) {
        for (size_t j = 0; j < ARRAY_LEN(vals); j++) {
            struct token t = mk(ID, vals[i], vals[j]), u;
            token_format(NULL, &t, s);
            CHECK(strncmp(s, "b1." ID ".", 36) == 0);
            CHECK(token_parse(NULL, s, &u) == 0);
            CHECK(same(&t, &u));
        }
    }
    struct token t = mk(ID, 3, 42), u;
    token_format(NULL, &t, s);
    CHECK(strcmp(s, "b1." ID ".3.42") == 0);
    CHECK(token_parse(NULL, "b1." ID ".0.0", &u) == 0 && u.epoch == 0 && u.txid == 0);
}

TEST(signed_round_trip)
{
    struct token_key *k = load_key("k1", "a cluster secret of some length\n");
    struct token_key *k2 = load_key("k2", "another cluster secret, different");
    struct token t = mk(ID, UINT64_MAX, UINT64_MAX), u;
    char s[TOKEN_MAX_LEN], plain[TOKEN_MAX_LEN];

    REQUIRE(k && k2);
    token_format(k, &t, s);
    CHECK(strlen(s) == 100); /* the longest token */
    CHECK(token_parse(k, s, &u) == 0 && same(&t, &u));
    CHECK(token_parse(k2, s, &u) == TOKEN_ERR_MAC);
    /* Without a key the mac is ignored (but must be well-formed). */
    CHECK(token_parse(NULL, s, &u) == 0 && same(&t, &u));
    /* With a key, an unsigned token is refused. */
    token_format(NULL, &t, plain);
    CHECK(token_parse(k, plain, &u) == TOKEN_ERR_MAC);
    /* Signing is deterministic: the same position gives the same text. */
    char again[TOKEN_MAX_LEN];
    token_format(k, &t, again);
    CHECK(strcmp(s, again) == 0);
    token_key_free(k);
    token_key_free(k2);
}

TEST(key_file)
{
    struct token_key *k = NULL, *trimmed, *plain;
    struct token t = mk(ID, 1, 2), u;
    char s[TOKEN_MAX_LEN];

    CHECK(token_key_load("/nonexistent/boomerang/secret", &k) == TOKEN_ERR_IO);
    CHECK(token_key_load(write_tmp("short", "  fifteen bytes \n"), &k) == TOKEN_ERR_MALFORMED);
    CHECK(token_key_load(write_tmp("empty", ""), &k) == TOKEN_ERR_MALFORMED);
    CHECK(token_key_load(write_tmp("blank", " \n\t\r\n"), &k) == TOKEN_ERR_MALFORMED);
    CHECK(k == NULL);
    /* White space around the secret does not count: both files give one key. */
    trimmed = load_key("t1", "\n\t  sixteen bytes!!!  \r\n");
    plain = load_key("t2", "sixteen bytes!!");
    CHECK(plain == NULL); /* 15 bytes */
    plain = load_key("t3", "sixteen bytes!!!");
    REQUIRE(trimmed && plain);
    token_format(trimmed, &t, s);
    CHECK(token_parse(plain, s, &u) == 0);
    token_key_free(trimmed);
    token_key_free(plain);
    token_key_free(NULL);
}

TEST(malformed)
{
    static const char *const bad[] = {
        "",
        "b1",
        "b1.",
        "b2." ID ".1.2",
        "B1." ID ".1.2",
        "b1." ID,
        "b1." ID ".",
        "b1." ID ".1",
        "b1." ID ".1.",
        "b1." ID "..2",
        "b1." ID ".1..",
        "b1.0123456789abcdef0123456789abcde.1.2",   /* 31 hex */
        "b1.0123456789abcdef0123456789abcdef0.1.2", /* 33 hex */
        "b1.0123456789ABCDEF0123456789abcdef.1.2",  /* uppercase */
        "b1.0123456789abcdeg0123456789abcdef.1.2",  /* not hex */
        "b1.0123456789abcde 0123456789abcdef.1.2",
        "b1." ID ".18446744073709551616.2", /* UINT64_MAX + 1 */
        "b1." ID ".1.18446744073709551616",
        "b1." ID ".1.99999999999999999999",
        "b1." ID ".1.184467440737095516150",
        "b1." ID ".01.2", /* leading zero */
        "b1." ID ".1.00",
        "b1." ID ".+1.2",
        "b1." ID ".-1.2",
        "b1." ID ". 1.2",
        "b1." ID ".1.2 ",
        "b1." ID ".1.2x", /* trailing junk */
        "b1." ID ".1.2\n",
        "b1." ID ".1.2.",                        /* empty mac */
        "b1." ID ".1.2.AAAAAAAAAAAAAAAAAAAAA",   /* 21 chars */
        "b1." ID ".1.2.AAAAAAAAAAAAAAAAAAAAAAA", /* 23 chars */
        "b1." ID ".1.2.AAAAAAAAAAAAAAAAAAAA+A",  /* not base64url */
        "b1." ID ".1.2.AAAAAAAAAAAAAAAAAAAA=A",
        "b1." ID ".1.2.AAAAAAAAAAAAAAAAAAAAAB",          /* spare bits set */
        "b1." ID ".1.2.AAAAAAAAAAAAAAAAAAAAAA.x",        /* a field too many */
        "b1." ID ".1.2.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAA", /* a field too many */
    };
    struct token_key *k = load_key("km", "malformed tests secret");
    struct token u = mk(ID, 7, 7);

    REQUIRE(k);
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        int a = token_parse(NULL, bad[i], &u), b = token_parse(k, bad[i], &u);
        if (a != TOKEN_ERR_MALFORMED || b != TOKEN_ERR_MALFORMED)
            fprintf(stderr, "  token '%s': %d %d\n", bad[i], a, b);
        CHECK(a == TOKEN_ERR_MALFORMED && b == TOKEN_ERR_MALFORMED);
    }
    CHECK(token_parse(NULL, NULL, &u) == TOKEN_ERR_MALFORMED);
    CHECK(u.epoch == 7 && u.txid == 7); /* untouched on failure */
    /* The well-formed neighbours of those parse. */
    CHECK(token_parse(NULL, "b1." ID ".18446744073709551615.0", &u) == 0);
    CHECK(u.epoch == UINT64_MAX);
    CHECK(token_parse(NULL, "b1." ID ".1.2.AAAAAAAAAAAAAAAAAAAAAA", &u) == 0);
    CHECK(token_parse(NULL, "b1." ID ".1.2.-_-_-_-_-_-_-_-_-_-_-w", &u) == 0);
    token_key_free(k);
}

TEST(tamper_token)
{
    struct token_key *k = load_key("kt", "tamper tests secret!");
    struct token t = mk(ID, 12, 345678), u;
    char s[TOKEN_MAX_LEN], m[TOKEN_MAX_LEN];
    size_t n;

    REQUIRE(k);
    token_format(k, &t, s);
    n = strlen(s);
    /* Any single changed character: malformed or a mac mismatch, never accepted. */
    for (size_t i = 0; i < n; i++) {
        for (int c = 1; c < 256; c++) {
            if (c == (unsigned char)s[i])
                continue;
            memcpy(m, s, n + 1);
            m[i] = (char)c;
            int rv = token_parse(k, m, &u);
            if (rv == 0)
                fprintf(stderr, "  accepted '%s'\n", m);
            CHECK(rv != 0);
        }
    }
    token_key_free(k);
}

TEST(ordering)
{
    struct token a = mk(ID, 1, 100), b = mk(ID, 1, 101), c = mk(ID, 2, 0), d = mk(ID, 1, 100);

    CHECK(token_cmp(&a, &b) < 0);
    CHECK(token_cmp(&b, &a) > 0);
    CHECK(token_cmp(&b, &c) < 0); /* a later epoch wins over any txid */
    CHECK(token_cmp(&c, &b) > 0);
    CHECK(token_cmp(&a, &d) == 0);
    struct token e = mk(ID, 0, UINT64_MAX), f = mk(ID, 1, 0);
    CHECK(token_cmp(&e, &f) < 0);
    struct token g = mk(ID, UINT64_MAX, UINT64_MAX), h = mk(ID, UINT64_MAX, UINT64_MAX - 1);
    CHECK(token_cmp(&g, &h) > 0);
}

TEST(baton_round_trip)
{
    struct token_key *k = token_key_random();
    const uint64_t ids[] = {1, 2, 0x0123456789abcdefULL, UINT64_MAX};
    const uint64_t seqs[] = {0, 1, 1000, UINT64_MAX};
    char b[BATON_LEN + 1];
    uint64_t id, seq;

    for (size_t i = 0; i < ARRAY_LEN(ids); i++) {
        for (size_t j = 0; j < ARRAY_LEN(seqs); j++) {
            baton_format(k, ids[i], seqs[j], b);
            CHECK(strlen(b) == BATON_LEN);
            CHECK(strspn(b, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") ==
                  BATON_LEN);
            CHECK(baton_parse(k, b, &id, &seq) == 0);
            CHECK(id == ids[i] && seq == seqs[j]);
        }
    }
    token_key_free(k);
}

TEST(baton_other_key)
{
    struct token_key *k1 = token_key_random(), *k2 = token_key_random();
    char b1[BATON_LEN + 1], b2[BATON_LEN + 1];
    uint64_t id = 0, seq = 0;

    baton_format(k1, 5, 6, b1);
    baton_format(k2, 5, 6, b2);
    CHECK(strcmp(b1, b2) != 0); /* random keys differ */
    CHECK(baton_parse(k2, b1, &id, &seq) == TOKEN_ERR_MAC);
    CHECK(baton_parse(k1, b2, &id, &seq) == TOKEN_ERR_MAC);
    CHECK(id == 0 && seq == 0);
    token_key_free(k1);
    token_key_free(k2);
}

TEST(baton_malformed)
{
    struct token_key *k = token_key_random();
    char b[BATON_LEN + 2];
    uint64_t id, seq;

    baton_format(k, 77, 3, b);
    CHECK(baton_parse(k, NULL, &id, &seq) == TOKEN_ERR_MALFORMED);
    CHECK(baton_parse(k, "", &id, &seq) == TOKEN_ERR_MALFORMED);
    b[BATON_LEN] = 'A';
    b[BATON_LEN + 1] = '\0';
    CHECK(baton_parse(k, b, &id, &seq) == TOKEN_ERR_MALFORMED); /* too long */
    b[BATON_LEN - 1] = '\0';
    CHECK(baton_parse(k, b, &id, &seq) == TOKEN_ERR_MALFORMED); /* too short */
    baton_format(k, 77, 3, b);
    b[10] = '=';
    CHECK(baton_parse(k, b, &id, &seq) == TOKEN_ERR_MALFORMED);
    baton_format(k, 77, 3, b);
    b[0] = '+'; /* standard base64, not base64url */
    CHECK(baton_parse(k, b, &id, &seq) == TOKEN_ERR_MALFORMED);
    token_key_free(k);
}

TEST(baton_tamper)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    struct token_key *k = token_key_random();
    char b[BATON_LEN + 1], m[BATON_LEN + 1];
    uint64_t id, seq;
    size_t fails = 0;

    baton_format(k, 0x1122334455667788ULL, 42, b);
    /* Every position, every other character of the alphabet (and every
     * byte value outside it): never accepted. */
    for (size_t i = 0; i < BATON_LEN; i++) {
        for (int c = 1; c < 256; c++) {
            if (c == (unsigned char)b[i])
                continue;
            memcpy(m, b, sizeof(b));
            m[i] = (char)c;
            int rv = baton_parse(k, m, &id, &seq);
            CHECK(rv == TOKEN_ERR_MAC || rv == TOKEN_ERR_MALFORMED);
            fails += rv != 0;
            if (strchr(alphabet, c) && i < BATON_LEN - 1)
                CHECK(rv == TOKEN_ERR_MAC); /* decodes, but the mac fails */
        }
    }
    CHECK(fails == BATON_LEN * 254);
    token_key_free(k);
}

/* Test-side base64url of 32 bytes (43 characters), to tamper with bytes. */
static void enc32(const uint8_t *in, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;

    for (size_t i = 0; i < 32; i++) {
        acc = acc << 8 | in[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[o++] = a[(acc >> bits) & 63];
        }
    }
    out[o++] = a[(acc << (6 - bits)) & 63];
    out[o] = '\0';
}

static void dec32(const char *s, uint8_t *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;

    for (size_t i = 0; i < BATON_LEN; i++) {
        acc = acc << 6 | (uint32_t)(strchr(a, s[i]) - a);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
}

TEST(baton_tamper_bytes)
{
    struct token_key *k = token_key_random();
    char b[BATON_LEN + 1], m[BATON_LEN + 1];
    uint8_t raw[32], t[32];
    uint64_t id, seq;

    baton_format(k, 9, 1, b);
    dec32(b, raw);
    enc32(raw, m);
    REQUIRE(strcmp(m, b) == 0); /* the test's codec agrees */
    CHECK(get_be64(raw) == 9 && get_be64(raw + 8) == 1);
    /* Every bit of every byte (id, seq and mac) flipped: the mac fails. */
    for (size_t i = 0; i < 32; i++) {
        for (int bit = 0; bit < 8; bit++) {
            memcpy(t, raw, 32);
            t[i] ^= (uint8_t)(1u << bit);
            enc32(t, m);
            CHECK(baton_parse(k, m, &id, &seq) == TOKEN_ERR_MAC);
        }
    }
    /* An old sequence number with its own valid mac still parses: the
     * stream table, not the mac, tells it is old. */
    baton_format(k, 9, 0, m);
    CHECK(baton_parse(k, m, &id, &seq) == 0 && id == 9 && seq == 0);
    token_key_free(k);
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_token.XXXXXX");
    if (!mkdtemp(tmpdir))
        return 1;
    log_level = LOGL_ERROR;
    RUN(unsigned_round_trip);
    RUN(signed_round_trip);
    RUN(key_file);
    RUN(malformed);
    RUN(tamper_token);
    RUN(ordering);
    RUN(baton_round_trip);
    RUN(baton_other_key);
    RUN(baton_malformed);
    RUN(baton_tamper);
    RUN(baton_tamper_bytes);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", tmpdir);
    return HARNESS_END();
}
