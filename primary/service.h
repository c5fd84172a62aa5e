/* boomerang: the primary's gRPC service (boomerang.v1.Primary).
 *
 *   client ──h2c/TLS──▶ h2server ──on_call──▶ service: unpack, check database
 *                                              │  Execute ─▶ writer_submit(job)
 *                                              │  Status  ─▶ answered here
 *   client ◀──reply─── h2server ◀──done_cb──── writer (group commit, capture)
 *
 * SIGTERM drains: new calls get UNAVAILABLE, queued ones finish, the writer
 * checkpoints and closes the database, connections get GOAWAY. */
#ifndef BOOMERANG_SERVICE_H
#define BOOMERANG_SERVICE_H

#include <ev.h>
#include <openssl/ssl.h>

#include "common/util.h"
#include "primary/writer.h"

struct service;
struct auth;

struct service_config {
    const char *database;       /* the name clients use; "" also matches */
    const char *listen;         /* HOST:PORT */
    SSL_CTX *tls;               /* NULL for h2c */
    const struct auth *auth;    /* NULL: no bearer token required */
    size_t max_message;         /* largest request message, bytes */
    const char *metrics_listen; /* HTTP /health, /metrics on their own port, or NULL */
    struct writer_config writer;
};

/* Open the database, recover, start the writer thread and listen. Returns 0
 * and *out, or -1 with the reason logged. */
int MUST_CHECK service_start(struct ev_loop *loop, const struct service_config *cfg,
                             struct service **out);

/* Begin a graceful shutdown; ev_break(loop) is called once it is complete
 * (or after a 10 s deadline). */
void service_drain(struct service *s);

/* Free everything (call after the loop returned). */
void service_free(struct service *s);

#endif
