/* boomerang: the primary's HTTP/1.1 endpoints for operators.
 *
 *   GET /health     200 "ok" while serving, 503 while shutting down
 *   GET /metrics    Prometheus text: commits, batch sizes, commit latency,
 *                   log size and retention, subscribers and their lag,
 *                   snapshots and transactions sent
 *   GET /v1/status  JSON: database, id, epoch, head and first txid, log bytes
 *
 * They are served on the gRPC listen port (h2server hands over connections
 * that start with an HTTP/1.x request line instead of the HTTP/2 preface)
 * and, with --metrics-listen, on a port of their own. */
#ifndef BOOMERANG_ADMIN_H
#define BOOMERANG_ADMIN_H

#include <ev.h>

#include "common/util.h"

struct admin;
struct http_server;
struct writer;
struct stream;

struct admin_config {
    const char *database;
    const char *listen;    /* --metrics-listen HOST:PORT, or NULL */
    struct writer *writer; /* borrowed */
    struct stream *stream; /* borrowed */
    uint64_t retain_bytes; /* log retention, for the gauge */
};

/* Build the registry and start the HTTP server. Returns 0 and *out, or -1
 * (logged). */
int MUST_CHECK admin_start(struct ev_loop *loop, const struct admin_config *cfg,
                           struct admin **out);
/* The HTTP server, for h2server_config.http1. */
struct http_server *admin_http(struct admin *a);
/* From now on /health answers 503 (the primary is draining). */
void admin_set_draining(struct admin *a);
/* The writer is gone: stop reading its state. */
void admin_forget_writer(struct admin *a);
void admin_shutdown(struct admin *a);
void admin_free(struct admin *a);

#endif
