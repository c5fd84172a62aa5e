/* boomerang: the table of open Hrana streams (see proxy/streams.h).
 *
 * An open-addressing hash table of stream pointers keyed by their random
 * 64-bit ids (linear probing, backward-shift deletion, so no tombstones),
 * sized at creation for max_streams at a load of at most 1/2, behind one
 * mutex. Requests on streams are rare next to plain reads and each holds the
 * lock for a probe or two, so one lock is enough.
 *
 * Ids that left the table (expired or closed) go into a ring of the last
 * STREAMS_GONE_MAX, each remembered for STREAMS_GONE_S seconds, so a late
 * request with such a baton gets STREAM_EXPIRED rather than BATON_INVALID,
 * as sqld answers (research/hrana.md §1.9). The ring is searched only for a
 * baton that verified (MAC) but names no live stream, which a client cannot
 * produce at will. */
#include "proxy/streams.h"

#include <assert.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "proxy/local.h"

#define STREAMS_GONE_MAX 4096
#define STREAMS_GONE_S   300.0

struct stream_sql {
    int32_t id;
    char *sql;
};

struct gone {
    uint64_t id;
    double at; /* monotonic seconds when it left the table */
};

struct streams {
    pthread_mutex_t mu;
    size_t max_streams;
    double idle_s;
    struct stream **slots; /* cap entries, NULL = empty */
    size_t cap;            /* a power of two */
    unsigned shift;        /* 64 - log2(cap) */
    size_t count;
    struct gone gone[STREAMS_GONE_MAX];
    size_t gone_next; /* ring position of the next entry */
    size_t gone_n;    /* entries in use */
};

static double mono_s(void)
{
    return (double)mono_us() / 1e6;
}

/* ---- streams (not in the table) ------------------------------------------------ */

struct stream *streams_new_stream(void)
{
    struct stream *s = xcalloc(1, sizeof(*s));

    s->last_used = mono_s();
    return s;
}

void streams_free_stream(struct stream *s)
{
    if (!s)
        return;
    local_close(s->ltx);
    for (size_t i = 0; i < s->n_sqls; i++)
        free(s->sqls[i].sql);
    free(s->sqls);
    free(s);
}

static struct stream_sql *find_sql(const struct stream *s, int32_t id)
{
    for (size_t i = 0; i < s->n_sqls; i++)
        if (s->sqls[i].id == id)
            return &s->sqls[i];
    return NULL;
}

int stream_store_sql(struct stream *s, int32_t id, const char *sql, struct hrana_error *err)
{
    if (find_sql(s, id)) {
        hrana_error_set(err, "PROTOCOL_ERROR", "SQL text with id %d is already stored", (int)id);
        return -1;
    }
    if (s->n_sqls >= STREAM_MAX_SQL) {
        hrana_error_set(err, "SQL_STORE_TOO_MANY",
                        "SQL text %d cannot be stored: the stream already holds %d texts", (int)id,
                        STREAM_MAX_SQL);
        return -1;
    }
    if (strnlen(sql, STREAM_MAX_SQL_BYTES + 1) > STREAM_MAX_SQL_BYTES) {
        hrana_error_set(err, "SQL_STORE_TOO_LARGE",
                        "SQL text %d cannot be stored: it is longer than %d bytes", (int)id,
                        STREAM_MAX_SQL_BYTES);
        return -1;
    }
    /* At most STREAM_MAX_SQL entries: grow to the limit at once. */
    if (!s->sqls)
        s->sqls = xmalloc(STREAM_MAX_SQL * sizeof(*s->sqls));
    s->sqls[s->n_sqls].id = id;
    s->sqls[s->n_sqls].sql = xstrdup(sql);
    s->n_sqls++;
    return 0;
}

const char *stream_sql(const struct stream *s, int32_t id)
{
    const struct stream_sql *e = find_sql(s, id);

    return e ? e->sql : NULL;
}

void stream_close_sql(struct stream *s, int32_t id)
{
    struct stream_sql *e = find_sql(s, id);

    if (!e)
        return; /* closing an unknown id is not an error (sqld agrees) */
    free(e->sql);
    *e = s->sqls[--s->n_sqls];
}

/* ---- the table ----------------------------------------------------------------- */

static size_t slot_home(const struct streams *t, uint64_t id)
{
    return (size_t)((id * 0x9E3779B97F4A7C15ULL) >> t->shift);
}

/* Index of id's slot, or of the empty slot where it would go. */
static size_t slot_find(const struct streams *t, uint64_t id)
{
    size_t i = slot_home(t, id);

    while (t->slots[i] && t->slots[i]->id != id)
        i = (i + 1) & (t->cap - 1);
    return i;
}

/* Empty slot i, and move later entries of its probe run back into the hole
 * so every entry stays reachable from its home slot. */
static void slot_delete(struct streams *t, size_t i)
{
    size_t mask = t->cap - 1, j = i;

    t->slots[i] = NULL;
    for (;;) {
        j = (j + 1) & mask;
        if (!t->slots[j])
            break;
        size_t home = slot_home(t, t->slots[j]->id);
        /* Move j into the hole unless its home lies cyclically in (i, j]. */
        int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            t->slots[i] = t->slots[j];
            t->slots[j] = NULL;
            i = j;
        }
    }
    t->count--;
}

static void gone_add(struct streams *t, uint64_t id, double at)
{
    t->gone[t->gone_next].id = id;
    t->gone[t->gone_next].at = at;
    t->gone_next = (t->gone_next + 1) % STREAMS_GONE_MAX;
    if (t->gone_n < STREAMS_GONE_MAX)
        t->gone_n++;
}

static int gone_has(const struct streams *t, uint64_t id, double now)
{
    for (size_t i = 0; i < t->gone_n; i++)
        if (t->gone[i].id == id && now - t->gone[i].at <= STREAMS_GONE_S)
            return 1;
    return 0;
}

struct streams *streams_new(size_t max_streams, double idle_s)
{
    struct streams *t = xcalloc(1, sizeof(*t));
    unsigned bits = 4;

    while (((size_t)1 << bits) < 2 * max_streams)
        bits++;
    t->cap = (size_t)1 << bits;
    t->shift = 64 - bits;
    t->slots = xcalloc(t->cap, sizeof(*t->slots));
    t->max_streams = max_streams;
    t->idle_s = idle_s;
    if (pthread_mutex_init(&t->mu, NULL) != 0)
        abort(); /* only on resource exhaustion, at start */
    return t;
}

void streams_free(struct streams *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->cap; i++)
        streams_free_stream(t->slots[i]);
    free(t->slots);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

/* A random id, never 0, not open and not remembered as gone. Lock held. */
static uint64_t new_id(struct streams *t, double now)
{
    uint8_t r[8];
    uint64_t id;

    do {
        if (RAND_bytes(r, sizeof(r)) != 1) {
            log_error("make stream id failed: no randomness from OpenSSL");
            abort();
        }
        id = get_be64(r);
    } while (id == 0 || t->slots[slot_find(t, id)] || gone_has(t, id, now));
    return id;
}

int streams_register(struct streams *t, struct stream *s)
{
    double now = mono_s();

    assert(s->id == 0);
    pthread_mutex_lock(&t->mu);
    if (t->count >= t->max_streams) {
        pthread_mutex_unlock(&t->mu);
        return STREAMS_FULL;
    }
    s->id = new_id(t, now);
    s->busy = 1;
    s->last_used = now;
    t->slots[slot_find(t, s->id)] = s;
    t->count++;
    pthread_mutex_unlock(&t->mu);
    return STREAMS_OK;
}

/* The checks of streams_take, lock held. */
static int take_locked(struct streams *t, uint64_t id, uint64_t seq, struct stream **out)
{
    struct stream *s = t->slots[slot_find(t, id)];

    if (!s)
        return gone_has(t, id, mono_s()) ? STREAMS_EXPIRED : STREAMS_INVALID;
    if (seq < s->seq)
        return STREAMS_REUSED;
    if (seq > s->seq)
        return STREAMS_INVALID; /* never handed out: not ours to honour */
    if (s->busy)
        return STREAMS_BUSY;
    s->busy = 1;
    *out = s;
    return STREAMS_OK;
}

int streams_take(struct streams *t, const struct token_key *k, const char *baton,
                 struct stream **out)
{
    uint64_t id, seq;
    int rv;

    if (baton_parse(k, baton, &id, &seq) != 0 || id == 0)
        return STREAMS_INVALID;
    pthread_mutex_lock(&t->mu);
    rv = take_locked(t, id, seq, out);
    pthread_mutex_unlock(&t->mu);
    return rv;
}

void streams_release(struct streams *t, const struct token_key *k, struct stream *s,
                     char *baton_out)
{
    uint64_t id, seq;

    pthread_mutex_lock(&t->mu);
    assert(s->busy && s->id != 0);
    s->seq++;
    s->last_used = mono_s();
    s->busy = 0;
    id = s->id;
    seq = s->seq;
    pthread_mutex_unlock(&t->mu);
    baton_format(k, id, seq, baton_out); /* the MAC needs no lock */
}

void streams_remove(struct streams *t, struct stream *s)
{
    double now = mono_s();
    size_t i;

    pthread_mutex_lock(&t->mu);
    i = slot_find(t, s->id);
    assert(t->slots[i] == s);
    slot_delete(t, i);
    gone_add(t, s->id, now);
    pthread_mutex_unlock(&t->mu);
}

size_t streams_expire(struct streams *t, double now, struct stream **out, size_t max)
{
    size_t n = 0;

    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < t->cap && n < max; i++) {
        struct stream *s = t->slots[i];
        if (s && !s->busy && now - s->last_used > t->idle_s)
            out[n++] = s;
    }
    /* Delete after the scan: a deletion shifts entries the scan has yet to see. */
    for (size_t j = 0; j < n; j++) {
        slot_delete(t, slot_find(t, out[j]->id));
        gone_add(t, out[j]->id, now);
    }
    pthread_mutex_unlock(&t->mu);
    return n;
}

size_t streams_count(struct streams *t)
{
    size_t n;

    pthread_mutex_lock(&t->mu);
    n = t->count;
    pthread_mutex_unlock(&t->mu);
    return n;
}
