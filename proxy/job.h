/* boomerang: the sidecar's request jobs, shared by proxy/pipeline.c (the
 * job: stream, headers, position checks, answer), proxy/program.c (a
 * request's steps: classification, routing, local runs, results) and
 * proxy/remote.c (running a program on the primary). Internal to those
 * three files; the public API is proxy/pipeline.h.
 *
 * Threading: a job belongs to its worker's thread. */
#ifndef BOOMERANG_JOB_H
#define BOOMERANG_JOB_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common/buf.h"
#include "proxy/hrana.h"
#include "proxy/link.h"
#include "proxy/local.h"
#include "proxy/pipeline.h"
#include "proxy/token.h"

struct loopq;
struct stream;

struct pipeline_worker {
    struct proxy_shared *sh;
    struct ev_loop *loop;
    struct loopq *q;
    struct local *local; /* autocommit reads of this thread */
    size_t jobs;         /* jobs alive */
    /* A read transaction on local shared by the reads of one loop iteration
     * (see pipeline_worker_snapshot), released before the loop blocks. */
    ev_prepare release;
    int held;
    uint64_t held_applied; /* link_applied() before it began: a lower bound */
    uint64_t held_pos;     /* link_applying() once it began: an upper bound */
};

enum cons { CONS_LOCAL, CONS_SESSION, CONS_STRONG, CONS_PRIMARY };
enum run { RUN_DONE, RUN_PENDING, RUN_ABORTED };
enum route { ROUTE_UNSET, ROUTE_LOCAL, ROUTE_LOCAL_TX, ROUTE_PRIMARY };
enum call { CALL_NONE, CALL_ATOMIC, CALL_BEGIN, CALL_CONTINUE, CALL_STEP };

struct pstep {
    const char *sql;
    const struct hrana_stmt *stmt;
    const struct hrana_cond *cond;
    enum local_kind kind;
    int many; /* more than one statement in sql */
    int noop; /* PRAGMA foreign_keys=...: answered here (see is_fk_pragma) */
};

struct prog {
    enum hrana_req_type type; /* EXECUTE, BATCH or SEQUENCE */
    struct pstep *steps;
    size_t n, k; /* k: next step to run (step by step) */
    uint8_t *ran, *failed;
    struct buf sr, se; /* step_results / step_errors elements */
    struct hrana_error first_err;
    int has_err;
    enum route route;
    enum call call; /* the single call in flight, if a fast path */
    int fast_checked;
    int done;
    struct hrana_cond *chain; /* sequence: ok(k-1) conditions */
    char **split;             /* sequence: its statements (one block) */
};

struct job {
    struct pipeline_worker *w;
    struct proxy_shared *sh;
    struct http_request *req;
    int version;
    double t0; /* ev_now at start */
    struct hrana_pipeline *pl;
    struct stream *st;
    int st_registered, st_closed;
    size_t i; /* current request */
    int in_prog;
    struct prog prog;
    struct buf results;
    size_t nresults;
    struct link_info info; /* at start */
    /* consistency */
    enum cons cons;
    int has_token;
    struct token token;
    int64_t max_staleness_ms; /* -1: none */
    int64_t max_wait_ms;
    enum proxy_fallback fallback;
    int pos_checked, pos_waiting, strong_done, force_primary, stale;
    uint64_t strong_head;
    uint64_t write_txid, reflect;
    int did_local, did_primary, did_write, unapplied;
    double wait_time;
};

/* ---- pipeline.c -------------------------------------------------------------- */

/* Go on with the job's requests from where it stopped (after an
 * asynchronous step completed); answers and frees it at the end. */
void pipeline_job_next(struct job *job);

/* Make w->local hold a read transaction at least at link_applied() now, and
 * return the upper bound of what it shows (for tokens); 0 if it could not
 * begin (then w->local is in autocommit). The reads of one loop iteration
 * share it, which saves SQLite's two WAL lock calls per read; it is renewed
 * when the replica moved, and released before the loop waits again, so it
 * never holds back the replica's checkpoints for longer than an iteration. */
uint64_t pipeline_worker_snapshot(struct pipeline_worker *w);

/* End w's shared read transaction, if any (before a program with its own
 * BEGIN/COMMIT runs on w->local). */
void pipeline_worker_release(struct pipeline_worker *w);

/* A read-only connection on the replica with the configured limits. */
int pipeline_open_local(const struct proxy_conf *c, struct local **out);

/* ---- program.c: a request's steps -------------------------------------------- */

/* Build job->prog for request r (execute, batch or sequence), classifying
 * every step on the worker's replica connection. */
void program_build(struct job *job, const struct hrana_req *r);

/* Where job->prog runs (see pipeline.c's header comment). */
enum route program_route(struct job *job);

/* Run job->prog on the replica (the position check passed). */
void program_run_local(struct job *job);

/* Append the finished program's result to job->results. */
void program_emit(struct job *job);

void program_free(struct prog *p);

/* Record step k's outcome: success with an empty result, an error, skipped.
 * Each appends exactly one element to step_results and step_errors. */
void program_step_ok(struct prog *p, size_t k);
void program_step_err(struct prog *p, size_t k, const struct hrana_error *e);
void program_step_err_code(struct prog *p, size_t k, const char *code, const char *msg);
void program_step_skip(struct prog *p, size_t k);

/* A step answered without running it anywhere (no statement, several, or a
 * PRAGMA foreign_keys); returns 1 if it was. */
int program_step_refused(struct prog *p, size_t k);

/* ---- remote.c: on the primary ------------------------------------------------- */

/* Run job->prog on the primary: RUN_DONE, or RUN_PENDING (a call is out;
 * its completion calls pipeline_job_next). */
enum run remote_run(struct job *job);

/* Roll back a stream's primary-side transaction, if any (fire and forget;
 * the reply comes to q). */
void remote_end_tx(struct proxy_shared *sh, struct stream *st, struct loopq *q);

/* ---- small helpers ------------------------------------------------------------- */

static inline void job_comma(struct buf *b, size_t index)
{
    if (index > 0)
        buf_append(b, ",", 1);
}

static inline void job_put(struct buf *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

static inline uint64_t job_max(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

static inline int program_is_begin(enum local_kind k)
{
    return k == LOCAL_BEGIN || k == LOCAL_BEGIN_READONLY;
}

#endif
