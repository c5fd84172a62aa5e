/* Unit tests for proxy/streams.c: the Hrana stream table. */
#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "harness.h"
#include "proxy/local.h"
#include "proxy/streams.h"
#include "proxy/token.h"

static struct token_key *key;

static double now_s(void)
{
    return (double)mono_us() / 1e6;
}

/* A registered and released stream: its baton in baton. */
static struct stream *open_stream(struct streams *t, char *baton)
{
    struct stream *s = streams_new_stream();

    if (streams_register(t, s) != STREAMS_OK) {
        streams_free_stream(s);
        return NULL;
    }
    streams_release(t, key, s, baton);
    return s;
}

TEST(take_release)
{
    struct streams *t = streams_new(8, 10.0);
    struct stream *s = streams_new_stream(), *got = NULL;
    char b1[BATON_LEN + 1], b2[BATON_LEN + 1], other[BATON_LEN + 1];
    uint64_t id, seq;

    CHECK(s->id == 0 && s->seq == 0);
    REQUIRE(streams_register(t, s) == STREAMS_OK);
    CHECK(s->id != 0);
    CHECK(streams_count(t) == 1);
    streams_release(t, key, s, b1);
    CHECK(strlen(b1) == BATON_LEN);
    CHECK(baton_parse(key, b1, &id, &seq) == 0 && id == s->id && seq == 1);
    REQUIRE(streams_take(t, key, b1, &got) == STREAMS_OK);
    CHECK(got == s);
    /* The same baton again while the stream is busy. */
    CHECK(streams_take(t, key, b1, &got) == STREAMS_BUSY);
    streams_release(t, key, s, b2);
    CHECK(strcmp(b1, b2) != 0);
    /* The old baton: reused. The next one, never handed out: invalid. */
    CHECK(streams_take(t, key, b1, &got) == STREAMS_REUSED);
    baton_format(key, s->id, 3, other);
    CHECK(streams_take(t, key, other, &got) == STREAMS_INVALID);
    baton_format(key, s->id, UINT64_MAX, other);
    CHECK(streams_take(t, key, other, &got) == STREAMS_INVALID);
    /* Unknown id, id 0, garbage, another key's baton. */
    baton_format(key, s->id ^ 1, 2, other);
    CHECK(streams_take(t, key, other, &got) == STREAMS_INVALID);
    baton_format(key, 0, 0, other);
    CHECK(streams_take(t, key, other, &got) == STREAMS_INVALID);
    CHECK(streams_take(t, key, "", &got) == STREAMS_INVALID);
    CHECK(streams_take(t, key, NULL, &got) == STREAMS_INVALID);
    CHECK(streams_take(t, key, "not a baton at all, not a baton at all, xxxx", &got) ==
          STREAMS_INVALID);
    struct token_key *k2 = token_key_random();
    baton_format(k2, s->id, 2, other);
    CHECK(streams_take(t, key, other, &got) == STREAMS_INVALID);
    token_key_free(k2);
    /* The current baton still works after all that. */
    got = NULL;
    CHECK(streams_take(t, key, b2, &got) == STREAMS_OK && got == s);
    streams_remove(t, s);
    CHECK(streams_count(t) == 0);
    CHECK(streams_take(t, key, b2, &got) == STREAMS_EXPIRED); /* closed: expired */
    streams_free_stream(s);
    streams_free(t);
}

TEST(full)
{
    struct streams *t = streams_new(2, 10.0);
    struct stream *a, *b, *c = streams_new_stream(), *z;
    char ba[BATON_LEN + 1], bb[BATON_LEN + 1];

    a = open_stream(t, ba);
    b = open_stream(t, bb);
    REQUIRE(a && b);
    CHECK(streams_register(t, c) == STREAMS_FULL);
    CHECK(c->id == 0); /* still the caller's, unregistered */
    CHECK(streams_count(t) == 2);
    REQUIRE(streams_take(t, key, ba, &a) == STREAMS_OK);
    streams_remove(t, a);
    streams_free_stream(a);
    CHECK(streams_register(t, c) == STREAMS_OK); /* room again */
    streams_release(t, key, c, ba);
    streams_free_stream(streams_new_stream()); /* never registered */
    streams_free_stream(NULL);
    z = streams_new_stream();
    struct streams *none = streams_new(0, 10.0);
    CHECK(streams_register(none, z) == STREAMS_FULL);
    streams_free_stream(z);
    streams_free(none);
    streams_free(t); /* frees b and c */
}

TEST(expire)
{
    struct streams *t = streams_new(16, 10.0);
    struct stream *a, *b, *c, *out[4];
    char ba[BATON_LEN + 1], bb[BATON_LEN + 1], bc[BATON_LEN + 1];
    double now = now_s();

    a = open_stream(t, ba);
    b = open_stream(t, bb);
    c = open_stream(t, bc);
    REQUIRE(a && b && c);
    CHECK(streams_expire(t, now + 5, out, 4) == 0);      /* not idle long enough */
    REQUIRE(streams_take(t, key, bb, &b) == STREAMS_OK); /* busy: never expired */
    CHECK(streams_expire(t, now + 11, out, 1) == 1);     /* at most max */
    CHECK(streams_count(t) == 2);
    struct stream *first = out[0];
    CHECK(first == a || first == c);
    CHECK(streams_expire(t, now + 11, out, 4) == 1);
    CHECK(out[0] != first && (out[0] == a || out[0] == c));
    CHECK(streams_count(t) == 1);
    CHECK(streams_take(t, key, ba, &a) == STREAMS_EXPIRED);
    CHECK(streams_take(t, key, bc, &c) == STREAMS_EXPIRED);
    streams_free_stream(first);
    streams_free_stream(out[0]);
    /* b, used just now, is idle again from its release. */
    streams_release(t, key, b, bb);
    CHECK(streams_expire(t, now_s() + 9, out, 4) == 0);
    CHECK(streams_expire(t, now_s() + 10.5, out, 4) == 1 && out[0] == b);
    CHECK(streams_take(t, key, bb, &b) == STREAMS_EXPIRED);
    streams_free_stream(b);
    CHECK(streams_count(t) == 0);
    streams_free(t);
}

/* An id that left the table more than 300 s ago is unknown again. (The
 * table takes the expiry time from the caller, so a clock 1000 s back
 * stands in for waiting; a negative idle time makes everything idle.) */
TEST(expired_forgotten)
{
    struct streams *t = streams_new(4, -2000.0);
    struct stream *a, *out[1];
    char ba[BATON_LEN + 1];

    a = open_stream(t, ba);
    REQUIRE(a);
    REQUIRE(streams_expire(t, now_s() - 1000, out, 1) == 1);
    CHECK(streams_take(t, key, ba, &a) == STREAMS_INVALID);
    streams_free_stream(out[0]);
    streams_free(t);
}

/* The memory of gone ids is bounded: the oldest is forgotten first. */
TEST(gone_ring_bounded)
{
    struct streams *t = streams_new(4, 10.0);
    char first[BATON_LEN + 1], last[BATON_LEN + 1], b[BATON_LEN + 1];
    struct stream *s;

    for (int i = 0; i < 4097; i++) {
        s = open_stream(t, b);
        REQUIRE(s);
        if (i == 0)
            memcpy(first, b, sizeof(b));
        memcpy(last, b, sizeof(b));
        REQUIRE(streams_take(t, key, b, &s) == STREAMS_OK);
        streams_remove(t, s);
        streams_free_stream(s);
    }
    CHECK(streams_take(t, key, first, &s) == STREAMS_INVALID);
    CHECK(streams_take(t, key, last, &s) == STREAMS_EXPIRED);
    streams_free(t);
}

/* Many streams, removed in a scattered order: the rest stay reachable
 * (exercises probing and backward-shift deletion). */
TEST(table_churn)
{
    enum { N = 1000 };
    struct streams *t = streams_new(N, 10.0);
    static char batons[N][BATON_LEN + 1];
    static struct stream *ss[N];
    static int alive[N];
    struct stream *got;

    for (int i = 0; i < N; i++) {
        ss[i] = open_stream(t, batons[i]);
        REQUIRE(ss[i]);
        alive[i] = 1;
    }
    CHECK(streams_count(t) == N);
    struct stream *extra = streams_new_stream();
    CHECK(streams_register(t, extra) == STREAMS_FULL);
    streams_free_stream(extra);
    for (int round = 0; round < 3; round++) {
        for (int i = round; i < N; i += 3 + round) {
            if (!alive[i])
                continue;
            REQUIRE(streams_take(t, key, batons[i], &got) == STREAMS_OK && got == ss[i]);
            streams_remove(t, got);
            streams_free_stream(got);
            alive[i] = 0;
        }
        size_t n = 0;
        for (int i = 0; i < N; i++) {
            if (!alive[i])
                continue;
            n++;
            got = NULL;
            CHECK(streams_take(t, key, batons[i], &got) == STREAMS_OK && got == ss[i]);
            if (got)
                streams_release(t, key, got, batons[i]);
        }
        CHECK(streams_count(t) == n);
    }
    streams_free(t);
}

TEST(sql_store)
{
    struct stream *s = streams_new_stream();
    struct hrana_error err;
    char *big = xmalloc(STREAM_MAX_SQL_BYTES + 2);

    CHECK(stream_sql(s, 1) == NULL);
    CHECK(stream_store_sql(s, 1, "SELECT 1", &err) == 0);
    CHECK(stream_store_sql(s, -7, "SELECT -7", &err) == 0);
    CHECK(strcmp(stream_sql(s, 1), "SELECT 1") == 0);
    CHECK(strcmp(stream_sql(s, -7), "SELECT -7") == 0);
    memset(&err, 0, sizeof(err));
    CHECK(stream_store_sql(s, 1, "SELECT 2", &err) == -1);
    CHECK(strcmp(err.code, "PROTOCOL_ERROR") == 0 && err.message[0]);
    CHECK(strcmp(stream_sql(s, 1), "SELECT 1") == 0); /* unchanged */
    stream_close_sql(s, 1);
    CHECK(stream_sql(s, 1) == NULL);
    CHECK(strcmp(stream_sql(s, -7), "SELECT -7") == 0);
    stream_close_sql(s, 1); /* unknown: fine */
    CHECK(stream_store_sql(s, 1, "SELECT 3", &err) == 0);
    CHECK(strcmp(stream_sql(s, 1), "SELECT 3") == 0);
    /* 50 texts at most. */
    for (int i = 2; i <= STREAM_MAX_SQL - 1; i++) {
        char sql[32];
        snprintf(sql, sizeof(sql), "SELECT %d", i);
        CHECK(stream_store_sql(s, i, sql, &err) == 0);
    }
    CHECK(s->n_sqls == STREAM_MAX_SQL);
    memset(&err, 0, sizeof(err));
    CHECK(stream_store_sql(s, 1000, "SELECT 0", &err) == -1);
    CHECK(strcmp(err.code, "SQL_STORE_TOO_MANY") == 0);
    CHECK(stream_sql(s, 1000) == NULL);
    stream_close_sql(s, 25);
    CHECK(stream_store_sql(s, 1000, "SELECT 1000", &err) == 0);
    CHECK(strcmp(stream_sql(s, 1000), "SELECT 1000") == 0);
    CHECK(strcmp(stream_sql(s, 49), "SELECT 49") == 0);
    stream_close_sql(s, 1000);
    /* One text at most STREAM_MAX_SQL_BYTES. */
    memset(big, 'x', STREAM_MAX_SQL_BYTES + 1);
    big[STREAM_MAX_SQL_BYTES + 1] = '\0';
    memset(&err, 0, sizeof(err));
    CHECK(stream_store_sql(s, 2000, big, &err) == -1);
    CHECK(strcmp(err.code, "SQL_STORE_TOO_LARGE") == 0);
    big[STREAM_MAX_SQL_BYTES] = '\0';
    CHECK(stream_store_sql(s, 2000, big, &err) == 0);
    CHECK(strlen(stream_sql(s, 2000)) == STREAM_MAX_SQL_BYTES);
    free(big);
    streams_free_stream(s); /* frees the texts */
}

/* A stream's local read transaction ends with it: freed alone, or with
 * the table (under ASan a connection left open shows up as a leak). */
TEST(ltx_closed)
{
    char dir[] = "/tmp/test_streams.XXXXXX", path[64];
    struct local_config lc = {0};
    struct hrana_error err;
    struct streams *t = streams_new(4, 10.0);
    struct stream *a = streams_new_stream(), *b = streams_new_stream();
    char baton[BATON_LEN + 1];
    sqlite3 *db = NULL;

    REQUIRE(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/r.db", dir);
    REQUIRE(sqlite3_open(path, &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES(1)",
                         NULL, NULL, NULL) == SQLITE_OK);
    lc.path = path;
    REQUIRE(local_open(&lc, &a->ltx) == 0);
    REQUIRE(local_open(&lc, &b->ltx) == 0);
    CHECK(local_exec_sql(a->ltx, "BEGIN", &err) == 0);
    CHECK(!local_autocommit(a->ltx));
    CHECK(local_exec_sql(b->ltx, "BEGIN", &err) == 0);
    streams_free_stream(a); /* rolls back and closes */
    REQUIRE(streams_register(t, b) == STREAMS_OK);
    streams_release(t, key, b, baton);
    streams_free(t); /* closes b's too */
    CHECK(sqlite3_exec(db, "INSERT INTO t VALUES(2)", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    char cmd[96];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

/* ---- four threads at once ------------------------------------------------------ */

enum { THREADS = 4, ROUNDS = 2000 };

struct shared {
    struct streams *t;
    pthread_mutex_t mu;
    char baton[BATON_LEN + 1]; /* the shared stream's current baton */
    int wins, busy, reused, other;
};

static void *worker(void *arg)
{
    struct shared *sh = arg;
    char mine[BATON_LEN + 1], cur[BATON_LEN + 1];
    struct stream *s;

    for (int i = 0; i < ROUNDS; i++) {
        /* Race the others for the shared stream with the baton last seen. */
        pthread_mutex_lock(&sh->mu);
        memcpy(cur, sh->baton, sizeof(cur));
        pthread_mutex_unlock(&sh->mu);
        int rv = streams_take(sh->t, key, cur, &s);
        if (rv == STREAMS_OK) {
            pthread_mutex_lock(&sh->mu); /* publish before the stream is free again */
            streams_release(sh->t, key, s, sh->baton);
            sh->wins++;
            pthread_mutex_unlock(&sh->mu);
        } else {
            pthread_mutex_lock(&sh->mu);
            sh->busy += rv == STREAMS_BUSY;
            sh->reused += rv == STREAMS_REUSED;
            sh->other += rv != STREAMS_BUSY && rv != STREAMS_REUSED;
            pthread_mutex_unlock(&sh->mu);
        }
        /* Open, use and close a private stream. */
        s = open_stream(sh->t, mine);
        if (!s)
            continue; /* table full: fine under contention */
        if (streams_take(sh->t, key, mine, &s) != STREAMS_OK) {
            pthread_mutex_lock(&sh->mu);
            sh->other++;
            pthread_mutex_unlock(&sh->mu);
            continue;
        }
        streams_remove(sh->t, s);
        streams_free_stream(s);
    }
    return NULL;
}

TEST(four_threads)
{
    struct shared sh = {.t = streams_new(64, 10.0)};
    pthread_t th[THREADS];
    struct stream *s;

    REQUIRE(pthread_mutex_init(&sh.mu, NULL) == 0);
    s = open_stream(sh.t, sh.baton);
    REQUIRE(s);
    for (int i = 0; i < THREADS; i++)
        REQUIRE(pthread_create(&th[i], NULL, worker, &sh) == 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    CHECK(sh.other == 0);
    CHECK(sh.wins + sh.busy + sh.reused == THREADS * ROUNDS);
    CHECK(sh.wins > 0);
    CHECK(s->seq == (uint64_t)sh.wins + 1); /* one sequence step per request */
    CHECK(streams_count(sh.t) == 1);
    pthread_mutex_destroy(&sh.mu);
    streams_free(sh.t);
}

int main(void)
{
    log_level = LOGL_ERROR;
    key = token_key_random();
    RUN(take_release);
    RUN(full);
    RUN(expire);
    RUN(expired_forgotten);
    RUN(gone_ring_bounded);
    RUN(table_churn);
    RUN(sql_store);
    RUN(ltx_closed);
    RUN(four_threads);
    token_key_free(key);
    return HARNESS_END();
}
