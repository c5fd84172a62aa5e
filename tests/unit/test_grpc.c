/* Tests for common/grpc.c: the 5-byte message framing, status names and the
 * grpc-message percent encoding. */
#include <stdlib.h>

#include "common/grpc.h"
#include "tests/unit/harness.h"

/* Append one framed message (flag, be32 length, body) to b. */
static void frame(struct buf *b, uint8_t flag, const char *body, size_t len)
{
    uint8_t p[GRPC_PREFIX_LEN];

    grpc_put_prefix(p, (uint32_t)len);
    p[0] = flag;
    buf_append(b, p, sizeof(p));
    buf_append(b, body, len);
}

/* Feed data in chunks of `step` bytes; collect each message's body into out
 * separated by '|'. Returns the first negative result, else the count. */
static int feed_all(struct grpc_decoder *d, const uint8_t *data, size_t len, size_t step,
                    struct buf *out)
{
    size_t off = 0;
    int count = 0;

    while (off < len) {
        size_t n = MIN(step, len - off), used = 0;
        int rv = grpc_decoder_feed(d, data + off, n, &used);
        if (rv < 0)
            return rv;
        off += used;
        if (rv == 1) {
            buf_append(out, buf_head(&d->msg), buf_avail(&d->msg));
            buf_append(out, "|", 1);
            grpc_decoder_next(d);
            count++;
        } else if (used != n) {
            return -100; /* 0 must mean "all consumed" */
        }
    }
    return count;
}

TEST(one_byte_at_a_time)
{
    struct grpc_decoder d;
    struct buf in = {0}, out = {0};

    grpc_decoder_init(&d, 1024);
    frame(&in, 0, "hello", 5);
    frame(&in, 0, "", 0);
    frame(&in, 0, "world!", 6);
    CHECK(feed_all(&d, buf_head(&in), buf_avail(&in), 1, &out) == 3);
    CHECK(out.len == 14 && memcmp(out.data, "hello||world!|", 14) == 0);
    CHECK(grpc_decoder_idle(&d));
    grpc_decoder_free(&d);
    buf_free(&in);
    buf_free(&out);
}

TEST(many_messages_in_one_chunk)
{
    struct grpc_decoder d;
    struct buf in = {0}, out = {0};
    size_t used = 0;

    grpc_decoder_init(&d, 1024);
    frame(&in, 0, "a", 1);
    frame(&in, 0, "bc", 2);
    frame(&in, 0, "def", 3);
    /* The decoder stops at each message end, never consuming past it. */
    CHECK(grpc_decoder_feed(&d, buf_head(&in), buf_avail(&in), &used) == 1);
    CHECK(used == 6);
    /* Until next() it keeps reporting the message and consumes nothing. */
    CHECK(grpc_decoder_feed(&d, buf_head(&in) + used, 3, &used) == 1 && used == 0);
    grpc_decoder_next(&d);
    buf_consume(&in, 6);
    CHECK(feed_all(&d, buf_head(&in), buf_avail(&in), 4096, &out) == 2);
    CHECK(out.len == 7 && memcmp(out.data, "bc|def|", 7) == 0);
    grpc_decoder_free(&d);
    buf_free(&in);
    buf_free(&out);
}

TEST(every_split_point)
{
    struct buf in = {0};

    frame(&in, 0, "0123456789", 10);
    frame(&in, 0, "xy", 2);
    for (size_t step = 1; step <= in.len; step++) {
        struct grpc_decoder d;
        struct buf out = {0};
        grpc_decoder_init(&d, 10);
        CHECK(feed_all(&d, in.data, in.len, step, &out) == 2);
        CHECK(out.len == 14 && memcmp(out.data, "0123456789|xy|", 14) == 0);
        grpc_decoder_free(&d);
        buf_free(&out);
    }
    buf_free(&in);
}

TEST(partial_message_is_not_idle)
{
    struct grpc_decoder d;
    const uint8_t part[] = {0, 0, 0, 0, 3, 'a'};
    size_t used;

    grpc_decoder_init(&d, 16);
    CHECK(grpc_decoder_idle(&d));
    CHECK(grpc_decoder_feed(&d, part, 2, &used) == 0 && used == 2);
    CHECK(!grpc_decoder_idle(&d));
    CHECK(grpc_decoder_feed(&d, part + 2, 4, &used) == 0 && used == 4);
    CHECK(!grpc_decoder_idle(&d));
    grpc_decoder_free(&d);
}

TEST(too_large)
{
    struct grpc_decoder d;
    struct buf in = {0}, out = {0};
    size_t used;

    grpc_decoder_init(&d, 4);
    frame(&in, 0, "1234", 4); /* exactly the limit is fine */
    CHECK(feed_all(&d, in.data, in.len, 1, &out) == 1);
    buf_reset(&in);
    frame(&in, 0, "12345", 5);
    CHECK(feed_all(&d, in.data, in.len, 1, &out) == GRPC_ERR_TOO_LARGE);
    CHECK(d.state == GRPC_DEC_ERROR && d.msg_len == 5);
    /* The error sticks. */
    CHECK(grpc_decoder_feed(&d, in.data, 1, &used) == GRPC_ERR_TOO_LARGE);
    grpc_decoder_free(&d);

    /* A huge declared length fails on the prefix alone, allocating nothing big. */
    grpc_decoder_init(&d, 16 * 1024 * 1024);
    const uint8_t huge[] = {0, 0xff, 0xff, 0xff, 0xff};
    CHECK(grpc_decoder_feed(&d, huge, sizeof(huge), &used) == GRPC_ERR_TOO_LARGE);
    CHECK(used == 5 && d.msg_len == 0xffffffffu);
    grpc_decoder_free(&d);
    buf_free(&in);
    buf_free(&out);
}

TEST(compressed_flag)
{
    struct grpc_decoder d;
    struct buf in = {0}, out = {0};

    grpc_decoder_init(&d, 64);
    frame(&in, 0, "ok", 2);
    frame(&in, 1, "zz", 2);
    CHECK(feed_all(&d, in.data, in.len, 1, &out) == GRPC_ERR_COMPRESSED);
    CHECK(out.len == 3); /* the first message still came out */
    CHECK(d.state == GRPC_DEC_ERROR);
    grpc_decoder_free(&d);
    buf_free(&in);
    buf_free(&out);
}

TEST(bad_flag)
{
    struct grpc_decoder d;
    const uint8_t bad[] = {2, 0, 0, 0, 0};
    size_t used;

    grpc_decoder_init(&d, 64);
    CHECK(grpc_decoder_feed(&d, bad, sizeof(bad), &used) == GRPC_ERR_BAD_FLAG);
    CHECK(used == 1);
    CHECK(grpc_decoder_feed(&d, bad, sizeof(bad), &used) == GRPC_ERR_BAD_FLAG);
    grpc_decoder_free(&d);
}

TEST(empty_feed)
{
    struct grpc_decoder d;
    size_t used = 99;

    grpc_decoder_init(&d, 64);
    CHECK(grpc_decoder_feed(&d, (const uint8_t *)"", 0, &used) == 0 && used == 0);
    grpc_decoder_free(&d);
}

TEST(prefix_format)
{
    uint8_t p[GRPC_PREFIX_LEN];

    grpc_put_prefix(p, 0x01020304);
    CHECK(p[0] == 0 && p[1] == 1 && p[2] == 2 && p[3] == 3 && p[4] == 4);
}

TEST(status_names)
{
    CHECK(strcmp(grpc_status_name(GRPC_OK), "OK") == 0);
    CHECK(strcmp(grpc_status_name(GRPC_UNAUTHENTICATED), "UNAUTHENTICATED") == 0);
    CHECK(strcmp(grpc_status_name(GRPC_RESOURCE_EXHAUSTED), "RESOURCE_EXHAUSTED") == 0);
    CHECK(strcmp(grpc_status_name((enum grpc_status)99), "UNKNOWN") == 0);
    CHECK(strcmp(grpc_status_name((enum grpc_status) - 1), "UNKNOWN") == 0);
}

static int roundtrip(const char *s, const char *want_encoded)
{
    char *e = grpc_percent_encode(s);
    char *d = grpc_percent_decode(e);
    int ok = strcmp(d, s) == 0 && (!want_encoded || strcmp(e, want_encoded) == 0);

    if (!ok)
        fprintf(stderr, "  roundtrip of \"%s\": encoded \"%s\", decoded \"%s\"\n", s, e, d);
    free(e);
    free(d);
    return ok;
}

TEST(percent_roundtrip)
{
    char all[256];

    CHECK(roundtrip("", ""));
    CHECK(roundtrip("plain text: ok!", "plain text: ok!"));
    CHECK(roundtrip("100%", "100%25"));
    CHECK(roundtrip("line\nbreak\t", "line%0Abreak%09"));
    CHECK(roundtrip("caf\xc3\xa9", "caf%C3%A9"));
    CHECK(roundtrip("\x7f~ ", "%7F~ "));
    /* Every byte value except NUL. */
    for (int i = 1; i < 256; i++)
        all[i - 1] = (char)i;
    all[255] = '\0';
    CHECK(roundtrip(all, NULL));
}

TEST(percent_decode_bad_input_kept)
{
    const char *cases[][2] = {
        {"%", "%"},       {"%4", "%4"},   {"%zz", "%zz"},   {"abc%", "abc%"},
        {"%41%4a", "AJ"}, {"%%41", "%A"}, {"%4G1", "%4G1"},
    };

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char *d = grpc_percent_decode(cases[i][0]);
        CHECK(strcmp(d, cases[i][1]) == 0);
        free(d);
    }
}

int main(void)
{
    RUN(one_byte_at_a_time);
    RUN(many_messages_in_one_chunk);
    RUN(every_split_point);
    RUN(partial_message_is_not_idle);
    RUN(too_large);
    RUN(compressed_flag);
    RUN(bad_flag);
    RUN(empty_feed);
    RUN(prefix_format);
    RUN(status_names);
    RUN(percent_roundtrip);
    RUN(percent_decode_bad_input_kept);
    return HARNESS_END();
}
