/* boomerang: Hrana streams (batons) shared by the sidecar's threads.
 *
 * A Hrana stream outlives one HTTP request when its pipeline does not end
 * with `close`: @libsql/client's interactive transactions, for instance. The
 * stream keeps its stored SQL texts (store_sql), and an open transaction:
 * a read transaction on its own local connection, or a transaction on the
 * primary (its id). Requests on a stream may arrive on any thread (any
 * connection), one at a time.
 *
 *   no baton ─▶ streams_new_stream() (private to the request, not in the table)
 *              └─ pipeline ends without close ─▶ streams_register() ─▶ baton
 *   baton ─▶ streams_take() (verifies, marks busy) ─▶ ... ─▶ streams_release() ─▶ new baton
 *                                          └─ or streams_remove() + streams_free_stream()
 *   idle past idle_s ─▶ streams_expire() hands it to the caller, who ends its
 *                       transactions and frees it; its id answers STREAM_EXPIRED
 *                       for 300 s afterwards.
 *
 * Threading: the table has a mutex; a stream taken (busy) belongs to the
 * thread that took it until released or removed. */
#ifndef BOOMERANG_STREAMS_H
#define BOOMERANG_STREAMS_H

#include <stddef.h>
#include <stdint.h>

#include "common/util.h"
#include "proxy/hrana.h"
#include "proxy/token.h"

struct local;

#define STREAM_MAX_SQL       50          /* stored texts per stream (sqld's limit) */
#define STREAM_MAX_SQL_BYTES (64 * 1024) /* one stored text */

struct stream {
    uint64_t id;             /* 0 until registered */
    uint64_t seq;            /* sequence number of the next request */
    struct local *ltx;       /* local read transaction's connection, or NULL */
    uint64_t ptx;            /* primary-side transaction id, or 0 */
    uint64_t ptx_gen;        /* the link's connection generation when ptx began */
    uint64_t ltx_pos;        /* link_applying() when ltx's snapshot was taken */
    int busy;                /* private to streams.c */
    double last_used;        /* private: monotonic seconds */
    struct stream_sql *sqls; /* private: stored texts */
    size_t n_sqls;
};

enum streams_status {
    STREAMS_OK = 0,
    STREAMS_INVALID = -1, /* malformed, forged, or unknown baton */
    STREAMS_REUSED = -2,  /* a baton for an older request of a live stream */
    STREAMS_EXPIRED = -3, /* the stream expired (or was closed) recently */
    STREAMS_BUSY = -4,    /* another request is running on the stream */
    STREAMS_FULL = -5,    /* streams_register: max_streams are open */
};

struct streams;

/* max_streams: open streams at most; idle_s: idle expiry. Never fails. */
struct streams *streams_new(size_t max_streams, double idle_s);
/* Frees the table and every stream left in it (their ltx closed with
 * local_close; a ptx is just forgotten: the primary rolls it back). */
void streams_free(struct streams *t);

/* A fresh stream, not in the table, owned by the caller. Never fails.
 * (Not stream_new/stream_free: primary/stream.c has those names, and every
 * object is linked into every binary.) */
struct stream *streams_new_stream(void);
/* Free a stream that is not in the table (closes ltx; ptx is the caller's). */
void streams_free_stream(struct stream *s);

/* Store / look up / forget a SQL text (store_sql, sql_id, close_sql).
 * stream_store_sql fails with code SQL_STORE_TOO_MANY, SQL_STORE_TOO_LARGE,
 * or PROTOCOL_ERROR for an id already in use (then returns -1). */
int stream_store_sql(struct stream *s, int32_t id, const char *sql, struct hrana_error *err);
const char *stream_sql(const struct stream *s, int32_t id);
void stream_close_sql(struct stream *s, int32_t id);

/* Put a private stream in the table (still busy for the caller) and give it
 * an id. Returns STREAMS_OK or STREAMS_FULL (the stream stays the caller's). */
int streams_register(struct streams *t, struct stream *s);

/* Find the stream a baton names, check its sequence number, mark it busy.
 * Returns STREAMS_OK and *out, or a negative enum streams_status. */
int streams_take(struct streams *t, const struct token_key *k, const char *baton,
                 struct stream **out);

/* The request on s is done: bump its sequence, touch its idle time, mark it
 * free, and write its next baton into baton_out (BATON_LEN + 1 bytes). */
void streams_release(struct streams *t, const struct token_key *k, struct stream *s,
                     char *baton_out);

/* Take s (busy, registered) out of the table, for the caller to free; its id
 * answers STREAMS_EXPIRED afterwards. */
void streams_remove(struct streams *t, struct stream *s);

/* Take up to max streams idle for longer than idle_s (not busy) out of the
 * table into out[]; the caller ends their transactions and frees them.
 * Returns how many. now is monotonic seconds (mono_us() / 1e6). */
size_t streams_expire(struct streams *t, double now, struct stream **out, size_t max);

/* Streams in the table. */
size_t streams_count(struct streams *t);

#endif
