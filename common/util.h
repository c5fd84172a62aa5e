/* boomerang: small helpers every module uses.
 *
 * Allocation never fails from the caller's view: x*alloc() abort on OOM, as
 * Redis's zmalloc does, because a half-handled OOM in an event loop is worse
 * than a clean crash that systemd restarts. */
#ifndef BOOMERANG_UTIL_H
#define BOOMERANG_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define MUST_CHECK __attribute__((warn_unused_result))

/* Recover the struct that embeds `ptr` as its member `member`. */
#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b)    ((a) < (b) ? (a) : (b))
#define MAX(a, b)    ((a) > (b) ? (a) : (b))

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);

/* Wall clock, microseconds since the Unix epoch. */
int64_t now_us(void);
/* Monotonic clock, microseconds from an arbitrary origin. */
int64_t mono_us(void);

/* Big-endian load/store, for the wire and file formats. */
static inline uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline uint64_t get_be64(const uint8_t *p)
{
    return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}
static inline void put_be64(uint8_t *p, uint64_t v)
{
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

/* Split "host:port" (or "[v6]:port") into its parts. host must have room for
 * host_len bytes. Returns 0, or -1 if the string is malformed. */
int MUST_CHECK util_split_hostport(const char *s, char *host, size_t host_len, int *port);

/* Read a whole small file (at most max bytes) into a NUL-terminated buffer the
 * caller frees. Returns 0, or -errno. */
int MUST_CHECK util_read_file(const char *path, size_t max, char **out, size_t *len);

/* write() all of buf, retrying on EINTR and short writes. Returns 0 or -errno. */
int MUST_CHECK util_write_all(int fd, const void *buf, size_t len);

/* pread() exactly len bytes. Returns 0, -EIO on a short read (EOF), or -errno. */
int MUST_CHECK util_pread_all(int fd, void *buf, size_t len, int64_t off);

/* fsync the directory that holds path, so a create/rename in it is durable. */
int MUST_CHECK util_fsync_dir(const char *path);

/* Write v in decimal to out (at least UTIL_U64_DIGITS bytes; no NUL) and
 * return the length: the hot paths' replacement for snprintf("%llu"). */
#define UTIL_U64_DIGITS 20
size_t util_fmt_u64(char *out, uint64_t v);
/* The same for a signed value (at least UTIL_U64_DIGITS + 1 bytes). */
size_t util_fmt_i64(char *out, int64_t v);

#endif
