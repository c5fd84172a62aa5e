/* libFuzzer target for the gRPC message decoder (common/grpc.c).
 *
 * Input layout: byte 0 picks the message size limit, byte 1 seeds the chunk
 * sizes, the rest is the byte stream. The stream is decoded twice: once in
 * one call per message (the reference) and once in chunks of pseudo-random
 * size. Both must yield the same messages and the same final outcome, and
 * every call must keep the decoder's documented invariants. The grpc-message
 * percent codec is round-tripped on the same bytes. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/grpc.h"

struct outcome {
    struct buf msgs; /* each message as be32 length + body */
    int count;
    int err; /* last negative result, or 0 */
};

static void record(struct outcome *o, const struct grpc_decoder *d)
{
    uint8_t len[4];

    put_be32(len, (uint32_t)buf_avail(&d->msg));
    buf_append(&o->msgs, len, 4);
    buf_append(&o->msgs, buf_head(&d->msg), buf_avail(&d->msg));
    o->count++;
}

/* Feed [data, data+len) in chunks from next_chunk(); check invariants. */
static void decode(const uint8_t *data, size_t len, size_t max_len, uint32_t seed,
                   struct outcome *o)
{
    struct grpc_decoder d;
    size_t off = 0;

    grpc_decoder_init(&d, max_len);
    while (off < len) {
        size_t n = len - off, used = 99;
        if (seed) {
            seed = seed * 1103515245u + 12345u;
            n = MIN(n, (size_t)(seed >> 16) % 23 + 1);
        }
        int rv = grpc_decoder_feed(&d, data + off, n, &used);
        assert(used <= n);
        off += used;
        if (rv < 0) {
            assert(d.state == GRPC_DEC_ERROR && d.err == rv);
            assert(rv == GRPC_ERR_TOO_LARGE || rv == GRPC_ERR_COMPRESSED ||
                   rv == GRPC_ERR_BAD_FLAG);
            assert(rv != GRPC_ERR_TOO_LARGE || d.msg_len > max_len);
            size_t again;
            assert(grpc_decoder_feed(&d, data, len, &again) == rv); /* sticky */
            o->err = rv;
            break;
        }
        if (rv == 0) {
            assert(used == n);
            assert(d.state == GRPC_DEC_PREFIX || d.state == GRPC_DEC_BODY);
            continue;
        }
        assert(rv == 1 && d.state == GRPC_DEC_DONE);
        assert(buf_avail(&d.msg) == d.msg_len && d.msg_len <= max_len);
        record(o, &d);
        grpc_decoder_next(&d);
        assert(grpc_decoder_idle(&d));
    }
    grpc_decoder_free(&d);
}

static void percent_roundtrip(const uint8_t *data, size_t len)
{
    char *s = malloc(len + 1);
    char *e, *back;

    memcpy(s, data, len);
    s[len] = '\0'; /* stops at the first NUL: grpc-message values have none */
    e = grpc_percent_encode(s);
    for (const char *p = e; *p; p++)
        assert(*p >= 0x20 && *p <= 0x7e);
    back = grpc_percent_decode(e);
    assert(strcmp(back, s) == 0);
    free(grpc_percent_decode(s)); /* arbitrary input must not crash */
    free(back);
    free(e);
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct outcome whole = {0}, chunked = {0};
    size_t max_len;
    uint32_t seed;

    if (size < 2)
        return 0;
    max_len = data[0] == 255 ? 16u << 20 : (size_t)data[0] * 3;
    seed = data[1] | 1u;
    decode(data + 2, size - 2, max_len, 0, &whole);
    decode(data + 2, size - 2, max_len, seed, &chunked);
    assert(whole.count == chunked.count && whole.err == chunked.err);
    assert(
        whole.msgs.len == chunked.msgs.len &&
        (whole.msgs.len == 0 || memcmp(whole.msgs.data, chunked.msgs.data, whole.msgs.len) == 0));
    buf_free(&whole.msgs);
    buf_free(&chunked.msgs);
    percent_roundtrip(data, size);
    return 0;
}
