/* boomerang: gRPC message framing and status codes.
 *
 * Wire format of one message on an HTTP/2 stream (gRPC "Length-Prefixed-Message"):
 *
 *   +--------+--------+--------+--------+--------+------------------+
 *   | flag   | length, 32-bit big-endian          | length bytes ... |
 *   +--------+--------+--------+--------+--------+------------------+
 *
 * flag is 0 (identity) or 1 (compressed with the stream's grpc-encoding). We
 * never negotiate compression, so 1 is an error here, and any other value is a
 * framing error. A message may be split across DATA frames in any way, and one
 * DATA frame may carry several messages, hence the incremental decoder. */
#include "common/grpc.h"

#include <assert.h>
#include <string.h>

static_assert(GRPC_PREFIX_LEN == 1 + sizeof(uint32_t), "flag byte + be32 length");

/* Cap on the up-front reservation for a message: a peer that declares a large
 * length but sends nothing must not make us allocate the whole limit. */
#define GRPC_RESERVE_MAX (64 * 1024)

void grpc_decoder_init(struct grpc_decoder *d, size_t max_len)
{
    memset(d, 0, sizeof(*d));
    d->state = GRPC_DEC_PREFIX;
    d->max_len = max_len;
}

static int decoder_fail(struct grpc_decoder *d, int err)
{
    d->state = GRPC_DEC_ERROR;
    d->err = err;
    return err;
}

/* Take prefix bytes; on the last one decide what follows. */
static int decoder_prefix(struct grpc_decoder *d, const uint8_t *data, size_t len, size_t *used)
{
    size_t n = MIN(len, GRPC_PREFIX_LEN - d->prefix_have);

    if (d->prefix_have == 0 && len > 0) {
        /* Check the flag at once, so a bad stream is refused at its first byte. */
        if (data[0] == 1) {
            *used = 1;
            return decoder_fail(d, GRPC_ERR_COMPRESSED);
        }
        if (data[0] != 0) {
            *used = 1;
            return decoder_fail(d, GRPC_ERR_BAD_FLAG);
        }
    }
    memcpy(d->prefix + d->prefix_have, data, n);
    d->prefix_have += n;
    *used = n;
    if (d->prefix_have < GRPC_PREFIX_LEN)
        return 0;
    d->msg_len = get_be32(d->prefix + 1);
    if (d->msg_len > d->max_len)
        return decoder_fail(d, GRPC_ERR_TOO_LARGE);
    buf_reset(&d->msg);
    buf_reserve(&d->msg, MIN((size_t)d->msg_len, (size_t)GRPC_RESERVE_MAX));
    d->state = d->msg_len == 0 ? GRPC_DEC_DONE : GRPC_DEC_BODY;
    return d->state == GRPC_DEC_DONE;
}

static int decoder_body(struct grpc_decoder *d, const uint8_t *data, size_t len, size_t *used)
{
    size_t need = d->msg_len - buf_avail(&d->msg);
    size_t n = MIN(len, need);

    buf_append(&d->msg, data, n);
    *used = n;
    if (n < need)
        return 0;
    d->state = GRPC_DEC_DONE;
    return 1;
}

int grpc_decoder_feed(struct grpc_decoder *d, const uint8_t *data, size_t len, size_t *consumed)
{
    size_t off = 0;
    int rv = 0;

    while (off < len || d->state == GRPC_DEC_DONE || d->state == GRPC_DEC_ERROR) {
        size_t used = 0;

        switch (d->state) {
        case GRPC_DEC_PREFIX:
            rv = decoder_prefix(d, data + off, len - off, &used);
            break;
        case GRPC_DEC_BODY:
            rv = decoder_body(d, data + off, len - off, &used);
            break;
        case GRPC_DEC_DONE:
            rv = 1;
            break;
        case GRPC_DEC_ERROR:
            rv = d->err;
            break;
        }
        off += used;
        if (rv != 0)
            break;
    }
    *consumed = off;
    return rv;
}

void grpc_decoder_next(struct grpc_decoder *d)
{
    assert(d->state == GRPC_DEC_DONE);
    buf_reset(&d->msg);
    d->prefix_have = 0;
    d->msg_len = 0;
    d->state = GRPC_DEC_PREFIX;
}

int grpc_decoder_idle(const struct grpc_decoder *d)
{
    return d->state == GRPC_DEC_PREFIX && d->prefix_have == 0;
}

void grpc_decoder_free(struct grpc_decoder *d)
{
    buf_free(&d->msg);
}

void grpc_put_prefix(uint8_t out[GRPC_PREFIX_LEN], uint32_t len)
{
    out[0] = 0;
    put_be32(out + 1, len);
}

const char *grpc_status_name(enum grpc_status s)
{
    static const char *const names[] = {
        [GRPC_OK] = "OK",
        [GRPC_CANCELLED] = "CANCELLED",
        [GRPC_UNKNOWN] = "UNKNOWN",
        [GRPC_INVALID_ARGUMENT] = "INVALID_ARGUMENT",
        [GRPC_DEADLINE_EXCEEDED] = "DEADLINE_EXCEEDED",
        [GRPC_NOT_FOUND] = "NOT_FOUND",
        [GRPC_ALREADY_EXISTS] = "ALREADY_EXISTS",
        [GRPC_PERMISSION_DENIED] = "PERMISSION_DENIED",
        [GRPC_RESOURCE_EXHAUSTED] = "RESOURCE_EXHAUSTED",
        [GRPC_FAILED_PRECONDITION] = "FAILED_PRECONDITION",
        [GRPC_ABORTED] = "ABORTED",
        [GRPC_OUT_OF_RANGE] = "OUT_OF_RANGE",
        [GRPC_UNIMPLEMENTED] = "UNIMPLEMENTED",
        [GRPC_INTERNAL] = "INTERNAL",
        [GRPC_UNAVAILABLE] = "UNAVAILABLE",
        [GRPC_DATA_LOSS] = "DATA_LOSS",
        [GRPC_UNAUTHENTICATED] = "UNAUTHENTICATED",
    };

    if ((unsigned)s >= ARRAY_LEN(names))
        return "UNKNOWN";
    return names[s];
}

/* The gRPC spec's "Percent-Byte-Unencoded": printable ASCII except '%'. */
static int pct_plain(uint8_t c)
{
    return c >= 0x20 && c <= 0x7e && c != '%';
}

char *grpc_percent_encode(const char *msg)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(msg);
    char *out = xmalloc(3 * n + 1);
    char *o = out;

    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)msg[i];
        if (pct_plain(c)) {
            *o++ = (char)c;
        } else {
            *o++ = '%';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 0xf];
        }
    }
    *o = '\0';
    return out;
}

static int hex_val(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

char *grpc_percent_decode(const char *msg)
{
    size_t n = strlen(msg);
    char *out = xmalloc(n + 1);
    char *o = out;

    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (msg[i] == '%' && i + 2 < n && (hi = hex_val(msg[i + 1])) >= 0 &&
            (lo = hex_val(msg[i + 2])) >= 0) {
            *o++ = (char)(hi << 4 | lo);
            i += 2;
        } else {
            *o++ = msg[i];
        }
    }
    *o = '\0';
    return out;
}
