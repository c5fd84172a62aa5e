/* boomerang: gRPC message framing (the 5-byte length prefix) and status codes.
 *
 * A gRPC message on an HTTP/2 stream is: 1 byte compressed-flag (0 or 1),
 * 4 bytes big-endian length, then that many bytes of protobuf. The decoder is
 * incremental: feed it any chunk, it keeps its state between calls. */
#ifndef BOOMERANG_GRPC_H
#define BOOMERANG_GRPC_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/util.h"

enum grpc_status {
    GRPC_OK = 0,
    GRPC_CANCELLED = 1,
    GRPC_UNKNOWN = 2,
    GRPC_INVALID_ARGUMENT = 3,
    GRPC_DEADLINE_EXCEEDED = 4,
    GRPC_NOT_FOUND = 5,
    GRPC_ALREADY_EXISTS = 6,
    GRPC_PERMISSION_DENIED = 7,
    GRPC_RESOURCE_EXHAUSTED = 8,
    GRPC_FAILED_PRECONDITION = 9,
    GRPC_ABORTED = 10,
    GRPC_OUT_OF_RANGE = 11,
    GRPC_UNIMPLEMENTED = 12,
    GRPC_INTERNAL = 13,
    GRPC_UNAVAILABLE = 14,
    GRPC_DATA_LOSS = 15,
    GRPC_UNAUTHENTICATED = 16,
};

#define GRPC_PREFIX_LEN 5

enum grpc_err {
    GRPC_ERR_TOO_LARGE = -1,  /* message longer than the decoder's max_len */
    GRPC_ERR_COMPRESSED = -2, /* compressed flag set: we negotiate identity only */
    GRPC_ERR_BAD_FLAG = -3,   /* flag byte other than 0 or 1 */
};

enum grpc_decoder_state { GRPC_DEC_PREFIX, GRPC_DEC_BODY, GRPC_DEC_DONE, GRPC_DEC_ERROR };

struct grpc_decoder {
    enum grpc_decoder_state state;
    uint8_t prefix[GRPC_PREFIX_LEN];
    size_t prefix_have; /* bytes of prefix[] filled while state == GRPC_DEC_PREFIX */
    uint32_t msg_len;   /* declared length of the message being read (also set
                           when the message is refused as too large) */
    size_t max_len;     /* limit; larger messages fail with GRPC_ERR_TOO_LARGE */
    int err;            /* the grpc_err while state == GRPC_DEC_ERROR */
    struct buf msg;     /* the message body, complete when state == GRPC_DEC_DONE */
};

/* Start decoding; messages longer than max_len bytes are refused. */
void grpc_decoder_init(struct grpc_decoder *d, size_t max_len);
/* Feed bytes. Sets *consumed to how many were used: never past the end of a
 * completed message, so the caller feeds the rest after grpc_decoder_next().
 * Returns 1 when a whole message is ready (read it from d->msg, then call
 * grpc_decoder_next; feeding again before that consumes nothing and returns 1),
 * 0 when every byte was consumed and more are needed, or a negative grpc_err
 * (the decoder then stays in GRPC_DEC_ERROR and returns the same error).
 * The error is reported as soon as the offending byte is seen: the flag byte
 * for GRPC_ERR_COMPRESSED / GRPC_ERR_BAD_FLAG, the last prefix byte for
 * GRPC_ERR_TOO_LARGE. */
int MUST_CHECK grpc_decoder_feed(struct grpc_decoder *d, const uint8_t *data, size_t len,
                                 size_t *consumed);
/* Forget the completed message and expect the next prefix. */
void grpc_decoder_next(struct grpc_decoder *d);
/* Whether the decoder sits between messages (no partial prefix or body), i.e.
 * the stream may end here without truncating a message. */
int grpc_decoder_idle(const struct grpc_decoder *d);
/* Release the message buffer; the decoder may be initialised again. */
void grpc_decoder_free(struct grpc_decoder *d);

/* Write the 5-byte prefix for an uncompressed message of len bytes. */
void grpc_put_prefix(uint8_t out[GRPC_PREFIX_LEN], uint32_t len);

/* Canonical name, e.g. "UNAUTHENTICATED"; "UNKNOWN" for a value outside the enum. */
const char *grpc_status_name(enum grpc_status s);

/* Percent-encode a grpc-message value (gRPC HTTP/2 spec): bytes outside
 * 0x20..0x7E and '%' itself become "%XX" (upper-case hex). Never fails; the
 * caller frees the result. */
char *grpc_percent_encode(const char *msg);
/* Decode a percent-encoded grpc-message. A '%' not followed by two hex digits
 * is kept as is (the spec forbids failing on bad input). Never fails; the
 * caller frees the result. */
char *grpc_percent_decode(const char *msg);

#endif
