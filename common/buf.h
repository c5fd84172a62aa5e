/* boomerang: a growable byte buffer with a read offset.
 *
 * Data lives in data[off, len). Appends grow the allocation geometrically;
 * consuming advances off, and the space is reclaimed on the next reserve. */
#ifndef BOOMERANG_BUF_H
#define BOOMERANG_BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf {
    uint8_t *data;
    size_t off; /* first unread byte */
    size_t len; /* end of data */
    size_t cap;
};

/* Make room for n more bytes after len. Never fails (aborts on OOM). */
void buf_reserve(struct buf *b, size_t n);
void buf_append(struct buf *b, const void *p, size_t n);
/* Bytes available to read. */
static inline size_t buf_avail(const struct buf *b)
{
    return b->len - b->off;
}
static inline const uint8_t *buf_head(const struct buf *b)
{
    return b->data + b->off;
}
/* Drop n bytes from the head. */
void buf_consume(struct buf *b, size_t n);
/* Drop bytes from the tail so that n bytes remain to read (n <= buf_avail),
 * to take back a partly written message. Record the length to return to as
 * buf_avail(), not as len: a reserve may move the data down to offset 0. */
void buf_truncate(struct buf *b, size_t n);
void buf_reset(struct buf *b);
void buf_free(struct buf *b);

#endif
