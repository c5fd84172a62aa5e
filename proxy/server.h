/* boomerang: the sidecar's app-facing threads.
 *
 * N threads, each with its own libev loop, loopq, pipeline worker and HTTP
 * server (HTTP/1.1 and prior-knowledge h2c) on the same TCP address with
 * SO_REUSEPORT, so the kernel spreads connections over them; thread 0 also
 * serves the unix socket. Each thread answers every endpoint itself:
 *
 *   request ─▶ app auth (Bearer, all but GET /health) ─▶ route:
 *     POST /v2/pipeline, /v3/pipeline ─▶ pipeline_handle (proxy/pipeline.h)
 *     GET /v2, /v3, /health, /ready, /v1/status, /metrics ─▶ answered here
 *     else 404 (unknown path) or 405 (known path, wrong method)
 *
 * Lifecycle, driven by the main (link) thread:
 *   server_start ─▶ threads run ─▶ server_shutdown (stop accepting; on_drained
 *   posted to main_q once every thread has no connection left) ─▶ [link_free]
 *   ─▶ server_stop (what the link posted runs first, then the threads end,
 *   are joined and everything is freed).
 *
 * Threading: every function here on the main thread. */
#ifndef BOOMERANG_SERVER_H
#define BOOMERANG_SERVER_H

#include <stddef.h>

#include "common/util.h"

struct auth;
struct loopq;
struct metrics;
struct proxy_shared;

struct server_config {
    const char *listen;          /* HOST:PORT (port 0: ephemeral, then shared by all) */
    const char *unix_path;       /* or NULL */
    unsigned threads;            /* at least 1 */
    size_t max_body;             /* bytes; larger requests get 413 */
    unsigned max_conns;          /* per thread */
    const struct auth *app_auth; /* app bearer tokens, or NULL (no auth) */
    struct proxy_shared *sh;     /* borrowed: outlives the server */
    struct metrics *metrics;     /* rendered on GET /metrics; borrowed */
    struct loopq *main_q;        /* the main thread's queue, for on_drained */
    void (*on_drained)(void *arg);
    void *arg;
};

struct server;

/* Create the threads' loops, workers and HTTP servers (binding the address
 * here, so errors show before anything runs), then start the threads.
 * Returns 0 and *out, or -1 (logged; nothing left running). */
int MUST_CHECK server_start(const struct server_config *cfg, struct server **out);

/* The TCP port bound. */
int server_port(const struct server *s);

/* Stop accepting and close idle connections on every thread; requests in
 * progress finish. cfg->on_drained(arg) then runs once on main_q's loop, when
 * no thread has a connection left. Idempotent. */
void server_shutdown(struct server *s);

/* End the threads: each first runs what is already queued to it (replies
 * the link posted), then closes what is left, and exits; then join and free
 * everything. NULL: no-op. */
void server_stop(struct server *s);

#endif
