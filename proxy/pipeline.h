/* boomerang: the sidecar's Hrana pipeline handler.
 *
 * One call per POST /v2/pipeline or /v3/pipeline: decode the body
 * (proxy/hrana.h), find or open the Hrana stream (proxy/streams.h, batons),
 * route every request (DESIGN.md "Routing"), run it on the local replica
 * (proxy/local.h) or forward it to the primary (proxy/link.h,
 * proxy/forward.h), wait until the replica has applied what the answer
 * reflects (tokens, floor, consistency headers), and answer with the Hrana
 * JSON, a Boomerang-Token and, where it applies, Boomerang-Stale or
 * Boomerang-Applied. See /work/notes/proxy-contract.md (README.md "Sidecar").
 *
 * Threading: a worker belongs to one app-facing thread (its loop and loopq);
 * the shared state is thread-safe. */
#ifndef BOOMERANG_PIPELINE_H
#define BOOMERANG_PIPELINE_H

#include <ev.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "common/util.h"

struct http_request;
struct link;
struct loopq;
struct metrics;
struct metrics_counter;
struct metrics_histogram;
struct streams;
struct token_key;

enum proxy_fallback {
    PROXY_FALLBACK_PRIMARY,
    PROXY_FALLBACK_ERROR,
    PROXY_FALLBACK_STALE,
};

/* Settings, fixed at start (from flags). */
struct proxy_conf {
    const char *replica_path;
    const char *database; /* on the primary; NULL = its only one */
    int64_t max_wait_ms;  /* wait budget (default 5000) */
    enum proxy_fallback fallback;
    int64_t stmt_timeout_ms;
    size_t max_rows;
    size_t max_response_bytes;
    double forward_timeout_s; /* deadline of a forwarded call (default 30) */
};

/* The sidecar's counters (registered by pipeline_metrics_register). */
struct proxy_metrics {
    struct metrics_counter *reads_local, *reads_primary, *writes;
    struct metrics_counter *fallback_primary, *fallback_error, *fallback_stale;
    struct metrics_counter *writes_unapplied;
    struct metrics_histogram *wait_seconds;
};

/* State every thread shares. Built by main; pointers borrowed. */
struct proxy_shared {
    const struct proxy_conf *conf;
    struct link *link;
    struct streams *streams;
    struct token_key *token_key; /* cluster secret for tokens, or NULL */
    struct token_key *baton_key; /* random per process */
    struct proxy_metrics metrics;
    _Atomic uint64_t floor; /* highest txid this sidecar acknowledged */
};

/* Register the proxy_* metrics in m and fill sh->metrics. */
void pipeline_metrics_register(struct proxy_shared *sh, struct metrics *m);

struct pipeline_worker;

/* A worker for the thread running loop; replies from the link arrive on q
 * (a loopq of that loop). Opens its local connection on the replica.
 * Returns 0 and *out, or -1 (logged). */
int MUST_CHECK pipeline_worker_new(struct proxy_shared *sh, struct ev_loop *loop, struct loopq *q,
                                   struct pipeline_worker **out);

/* Free a worker; call once no request it handles is pending (after the HTTP
 * servers of its thread are freed and its loopq drained). NULL: no-op. */
void pipeline_worker_free(struct pipeline_worker *w);

/* Requests w has taken and not finished yet (some may wait on the link even
 * after their client left). Shutdown waits for 0 before freeing the link. */
size_t pipeline_worker_pending(const struct pipeline_worker *w);

/* Answer a POST /v2/pipeline (version 2) or /v3/pipeline (version 3) request,
 * now or later, on w's thread. */
void pipeline_handle(struct pipeline_worker *w, struct http_request *req, int version);

/* Expire idle streams: roll back their transactions (primary-side ones
 * through the link, with replies on q) and free them. Call about every
 * second from one thread. */
void pipeline_expire_streams(struct proxy_shared *sh, struct loopq *q);

#endif
