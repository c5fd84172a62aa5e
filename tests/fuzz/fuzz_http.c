/* libFuzzer target for the HTTP/1.1 request decoder (common/http.c).
 *
 * Input layout: byte 0 picks the limits (small ones, so they are reached),
 * byte 1 seeds the chunk sizes, the rest is the byte stream from a client.
 * The stream is decoded twice: in one call per step (the reference) and in
 * chunks of pseudo-random size. Both must yield the same requests (method,
 * target, path, query, fields, body, keep-alive) and the same final outcome,
 * and every call must keep the decoder's documented invariants. The JSON
 * string escaper runs on the same bytes and must emit clean JSON. */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/http.h"

static void put_str(struct buf *o, const char *s)
{
    buf_append(o, s, strlen(s) + 1);
}

/* Append everything a request exposes to o. */
static void describe(struct buf *o, const struct http_request *r)
{
    size_t len;
    const uint8_t *body = http_request_body(r, &len);
    char num[32];

    put_str(o, http_request_method(r));
    put_str(o, http_request_target(r));
    put_str(o, http_request_path(r));
    put_str(o, http_request_query(r));
    for (unsigned i = 0; i < http_request_header_count(r); i++) {
        const char *name, *value;
        http_request_header_at(r, i, &name, &value);
        put_str(o, name);
        put_str(o, value);
        /* Lookups find a field of that name (the first), in any case. */
        assert(http_request_header(r, name) != NULL);
    }
    assert(body[len] == '\0');
    buf_append(o, body, len);
    snprintf(num, sizeof(num), "|%zu|%d|%d", len, http_request_keep_alive(r),
             http_request_minor(r));
    put_str(o, num);
}

/* Decode, in chunks from seed (0: as much as each call takes). */
static void decode(const uint8_t *data, size_t len, size_t max_body, size_t max_head, uint32_t seed,
                   struct buf *o)
{
    struct http_decoder *d = http_decoder_new(max_body, max_head);
    size_t off = 0;

    while (off < len) {
        size_t n = len - off, used = 99;
        if (seed) {
            seed = seed * 1103515245u + 12345u;
            n = MIN(n, (size_t)(seed >> 16) % 37 + 1);
        }
        int rv = http_decoder_feed(d, data + off, n, &used);
        assert(used <= n);
        off += used;
        if (rv == HTTP_DECODE_MORE) {
            assert(used == n);
        } else if (rv == HTTP_DECODE_HEAD) {
            const struct http_request *r = http_decoder_request(d);
            assert(r && http_request_method(r)[0] && http_request_path(r)[0]);
        } else if (rv == HTTP_DECODE_REQUEST) {
            const struct http_request *r = http_decoder_request(d);
            size_t blen;
            assert(r);
            (void)http_request_body(r, &blen);
            assert(blen <= max_body);
            describe(o, r);
            http_decoder_next(d);
            assert(http_decoder_request(d) == NULL);
        } else {
            int status;
            const char *msg = http_decoder_error(d, &status);
            assert(rv == HTTP_DECODE_ERROR);
            assert(status == 400 || status == 413 || status == 414 || status == 417 ||
                   status == 431 || status == 501 || status == 505);
            assert(msg[0] != '\0');
            size_t again;
            assert(http_decoder_feed(d, data, len, &again) == HTTP_DECODE_ERROR && again == 0);
            put_str(o, msg);
            break;
        }
    }
    http_decoder_free(d);
}

static void check_json(const uint8_t *data, size_t len)
{
    struct buf j = {0};

    http_json_string(&j, (const char *)data, len);
    assert(j.len >= 2 && j.data[0] == '"' && j.data[j.len - 1] == '"');
    for (size_t i = 1; i + 1 < j.len; i++) {
        assert(j.data[i] >= 0x20); /* no raw control characters */
        if (j.data[i] == '\\')
            i++; /* an escape: skip its letter */
        else
            assert(j.data[i] != '"'); /* quotes are escaped */
    }
    buf_free(&j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t bodies[] = {0, 16, 1024, 65536};
    static const size_t heads[] = {64, 512, 4096, 0};
    struct buf whole = {0}, chunked = {0};
    size_t max_body, max_head;
    uint32_t seed;

    if (size < 2)
        return 0;
    max_body = bodies[data[0] & 3];
    max_head = heads[(data[0] >> 2) & 3];
    if (max_body == 0)
        max_body = HTTP_DEFAULT_MAX_BODY;
    if (max_head == 0)
        max_head = HTTP_DEFAULT_MAX_HEADERS;
    seed = (uint32_t)data[1] * 2654435761u + 1;
    decode(data + 2, size - 2, max_body, max_head, 0, &whole);
    decode(data + 2, size - 2, max_body, max_head, seed, &chunked);
    assert(whole.len == chunked.len &&
           (whole.len == 0 || memcmp(whole.data, chunked.data, whole.len) == 0));
    buf_free(&whole);
    buf_free(&chunked);
    check_json(data + 2, size - 2);
    return 0;
}
