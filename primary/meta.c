/* boomerang: the database's identity file (see meta.h).
 *
 * <state_dir>/meta is text, one "key=value" line per field, every key exactly
 * once, in any order:
 *
 *   database_id=<32 lowercase hex digits>
 *   epoch=<decimal, >= 1>
 *   base_txid=<decimal>
 *   base_checksum=<16 lowercase hex digits>
 *   base_salt1=<decimal u32>
 *   base_salt2=<decimal u32>
 *   base_frame=<decimal u32>
 *
 * It is only ever replaced whole (write a temporary file, fsync, rename,
 * fsync the directory), so a crash leaves either the old or the new one. */
#include "primary/meta.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"

#define META_MAX_BYTES 4096

enum meta_key { K_ID, K_EPOCH, K_BASE, K_CKSUM, K_SALT1, K_SALT2, K_FRAME, K_COUNT };

static const char *const key_names[K_COUNT] = {
    "database_id", "epoch", "base_txid", "base_checksum", "base_salt1", "base_salt2", "base_frame",
};

int meta_create(struct meta *out)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t raw[16];

    memset(out, 0, sizeof(*out));
    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        log_error("meta: generate database id failed: RAND_bytes");
        return META_ERR_IO;
    }
    for (size_t i = 0; i < sizeof(raw); i++) {
        out->database_id[2 * i] = hex[raw[i] >> 4];
        out->database_id[2 * i + 1] = hex[raw[i] & 15];
    }
    out->database_id[32] = '\0';
    out->epoch = 1;
    return 0;
}

static int hex_digit(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Whether s is exactly n lowercase hex digits. */
static int is_hex(const char *s, size_t n)
{
    if (strlen(s) != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (hex_digit(s[i]) < 0)
            return 0;
    return 1;
}

/* Parse exactly 16 lowercase hex digits. */
static int parse_hex64(const char *s, uint64_t *out)
{
    uint64_t v = 0;

    if (!is_hex(s, 16))
        return -1;
    for (int i = 0; i < 16; i++)
        v = v << 4 | (uint64_t)hex_digit(s[i]);
    *out = v;
    return 0;
}

static int parse_dec(const char *s, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;

    if (*s == '\0' || strlen(s) > 20)
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

/* Store one field. Returns 0 or -1 if the value is malformed. */
static int meta_set(struct meta *m, enum meta_key k, const char *v)
{
    uint64_t x;

    switch (k) {
    case K_ID:
        if (!is_hex(v, 32))
            return -1;
        memcpy(m->database_id, v, 33);
        return 0;
    case K_CKSUM:
        return parse_hex64(v, &m->base_checksum);
    case K_EPOCH:
        return parse_dec(v, UINT64_MAX, &m->epoch) == 0 && m->epoch >= 1 ? 0 : -1;
    case K_BASE:
        return parse_dec(v, UINT64_MAX, &m->base_txid);
    default:
        if (parse_dec(v, UINT32_MAX, &x) != 0)
            return -1;
        if (k == K_SALT1)
            m->base_salt1 = (uint32_t)x;
        else if (k == K_SALT2)
            m->base_salt2 = (uint32_t)x;
        else
            m->base_frame = (uint32_t)x;
        return 0;
    }
}

/* Parse one "key=value" line into m, marking the key in seen. */
static int meta_parse_line(char *line, struct meta *m, int *seen)
{
    char *eq = strchr(line, '=');

    if (!eq)
        return -1;
    *eq = '\0';
    for (int k = 0; k < K_COUNT; k++) {
        if (strcmp(line, key_names[k]) != 0)
            continue;
        if (seen[k] || meta_set(m, (enum meta_key)k, eq + 1) != 0)
            return -1;
        seen[k] = 1;
        return 0;
    }
    return -1;
}

/* Parse the file's text (modified in place). */
static int meta_parse(char *text, struct meta *m)
{
    int seen[K_COUNT] = {0};
    char *line = text, *nl;

    memset(m, 0, sizeof(*m));
    for (; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        if (!nl)
            return -1; /* every line ends in a newline: a missing one means a cut file */
        *nl = '\0';
        if (meta_parse_line(line, m, seen) != 0)
            return -1;
    }
    for (int k = 0; k < K_COUNT; k++)
        if (!seen[k])
            return -1;
    return 0;
}

int meta_load(const char *path, struct meta *out)
{
    char *text;
    size_t len;
    int rc = util_read_file(path, META_MAX_BYTES, &text, &len);

    if (rc == -ENOENT)
        return META_ERR_MISSING;
    if (rc < 0) {
        log_error("meta: read %s failed: %s", path, strerror(-rc));
        return rc == -EFBIG ? META_ERR_FORMAT : META_ERR_IO;
    }
    rc = strlen(text) == len && meta_parse(text, out) == 0 ? 0 : META_ERR_FORMAT;
    if (rc < 0)
        log_error("meta: parse %s failed: not a valid meta file", path);
    free(text);
    return rc;
}

static int meta_write_tmp(const char *tmp, const char *text)
{
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int rc;

    if (fd < 0) {
        log_error("meta: create %s failed: %s", tmp, strerror(errno));
        return META_ERR_IO;
    }
    rc = util_write_all(fd, text, strlen(text));
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    close(fd);
    if (rc < 0) {
        log_error("meta: write %s failed: %s", tmp, strerror(-rc));
        unlink(tmp);
        return META_ERR_IO;
    }
    return 0;
}

int meta_save(const char *path, const struct meta *m)
{
    char text[512], tmp[4096];
    int rc;

    snprintf(text, sizeof(text),
             "database_id=%s\nepoch=%" PRIu64 "\nbase_txid=%" PRIu64 "\nbase_checksum=%016" PRIx64
             "\nbase_salt1=%" PRIu32 "\nbase_salt2=%" PRIu32 "\nbase_frame=%" PRIu32 "\n",
             m->database_id, m->epoch, m->base_txid, m->base_checksum, m->base_salt1, m->base_salt2,
             m->base_frame);
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)) {
        log_error("meta: save %s failed: path too long", path);
        return META_ERR_IO;
    }
    rc = meta_write_tmp(tmp, text);
    if (rc < 0)
        return rc;
    if (rename(tmp, path) != 0) {
        log_error("meta: rename %s failed: %s", tmp, strerror(errno));
        unlink(tmp);
        return META_ERR_IO;
    }
    rc = util_fsync_dir(path);
    if (rc < 0) {
        log_error("meta: fsync directory of %s failed: %s", path, strerror(-rc));
        return META_ERR_IO;
    }
    return 0;
}
