/* boomerang: a gRPC client on one multiplexed HTTP/2 connection (nghttp2 on libev).
 *
 * A client keeps one connection to one server, "http://host:port" (h2c with
 * prior knowledge) or "https://host:port" (TLS, ALPN h2, SNI and certificate
 * name = host). Many calls share it as HTTP/2 streams. The client connects on
 * its own, and reconnects after any failure with capped exponential backoff
 * and jitter (50 ms doubling to 2 s by default; back to no delay once a
 * connection has been up for a second).
 *
 * States: DISCONNECTED -> CONNECTING -> CONNECTED -> DISCONNECTED -> ...
 * CONNECTED means the transport is up and the server's SETTINGS arrived.
 *
 * Calls and connection state (fail fast, as gRPC without wait-for-ready):
 * - CONNECTED: the call is sent at once.
 * - CONNECTING, or the server sent GOAWAY and the connection is draining: the
 *   call waits for the next connection (bounded by its own deadline). If that
 *   connection attempt fails, it ends with UNAVAILABLE.
 * - DISCONNECTED (waiting out a backoff): it ends with UNAVAILABLE.
 * Calls in flight when the connection fails end with UNAVAILABLE. Calls the
 * server refused without processing (RST_STREAM REFUSED_STREAM, or above a
 * GOAWAY's last stream id) are sent again once, transparently.
 *
 * Callbacks: every callback (reply, message, end, state) runs from the event
 * loop, never from inside the API function that started or cancelled the
 * call, and never from inside nghttp2. The one exception is h2client_free(),
 * which completes the remaining calls from inside itself. A callback may
 * call any function here, including h2client_free() on its own client (the
 * free then happens once the callback has returned).
 *
 * Flow control of server streams: messages are handed to on_message as soon
 * as each read from the socket is decoded, and nghttp2's automatic
 * WINDOW_UPDATE acknowledges the bytes when on_message has returned. So
 * nothing piles up in the client: a consumer that takes its time inside
 * on_message stops the reads, the window closes, and the server stops
 * sending. The windows are large (H2CLIENT_STREAM_WINDOW per stream,
 * H2CLIENT_CONN_WINDOW per connection) so that one stream can fill a fast,
 * long-delay link.
 *
 * DNS: host names are resolved with getaddrinfo() on every connection
 * attempt, which blocks the loop for the lookup; use IP literals or names in
 * /etc/hosts where that matters.
 *
 * Threading: a client and its callbacks belong to the loop thread. */
#ifndef BOOMERANG_H2CLIENT_H
#define BOOMERANG_H2CLIENT_H

#include <ev.h>
#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>

#include "common/grpc.h"
#include "common/util.h"

#define H2CLIENT_STREAM_WINDOW (8u << 20)  /* bytes a server may send on one stream */
#define H2CLIENT_CONN_WINDOW   (32u << 20) /* bytes a server may send on the connection */

struct h2client;

enum h2client_state {
    H2CLIENT_DISCONNECTED, /* no connection; a reconnect timer is running */
    H2CLIENT_CONNECTING,   /* TCP connect, TLS handshake, or waiting for SETTINGS */
    H2CLIENT_CONNECTED,    /* ready for calls */
};

enum h2client_err {
    H2CLIENT_ERR_URL = -1,     /* malformed URL, or https without a TLS context */
    H2CLIENT_ERR_NO_CALL = -2, /* h2client_cancel: no such call, or it already ended */
};

/* The connection state changed to `state`. */
typedef void (*h2client_state_cb)(void *arg, enum h2client_state state);

/* A unary call ended. status is GRPC_OK with the reply message (reply,
 * reply_len; reply_len may be 0), or an error status with reply NULL.
 * grpc_message is the server's (decoded) grpc-message or our own reason, or
 * NULL. Both pointers are valid only during the callback. */
typedef void (*h2client_reply_cb)(void *arg, enum grpc_status status, const char *grpc_message,
                                  const uint8_t *reply, size_t reply_len);

/* One message of a server stream (valid only during the callback). */
typedef void (*h2client_message_cb)(void *arg, const uint8_t *msg, size_t len);

/* A server stream ended (no on_message follows). grpc_message as above. */
typedef void (*h2client_end_cb)(void *arg, enum grpc_status status, const char *grpc_message);

struct h2client_config {
    const char *url;            /* "http://host:port" or "https://host:port" (copied) */
    SSL_CTX *tls;               /* required for https, ignored for http; not owned, must
                                   outlive the client (verification settings come from it) */
    const char *auth_token;     /* NULL, or sent as "authorization: Bearer T" (copied) */
    size_t max_message;         /* largest response message; 0 = 16 MiB */
    double connect_timeout;     /* seconds for TCP + TLS + SETTINGS; 0 = 5 s */
    double backoff_initial;     /* first reconnect delay, seconds; 0 = 0.05 */
    double backoff_max;         /* reconnect delay cap, seconds; 0 = 2 */
    h2client_state_cb on_state; /* optional */
    void *arg;                  /* passed to on_state */
};

/* Create a client and start connecting: h2client_state() is CONNECTING (or
 * DISCONNECTED if the attempt already failed) when this returns, and on_state
 * is called from the loop for each change, the first being CONNECTING. The
 * process must ignore SIGPIPE (TLS writes go through write()). Returns 0 and
 * *out, or H2CLIENT_ERR_URL (logged). The caller owns *out and frees it with
 * h2client_free(). */
int MUST_CHECK h2client_new(struct ev_loop *loop, const struct h2client_config *cfg,
                            struct h2client **out);

/* Current state. */
enum h2client_state h2client_state(const struct h2client *c);

/* Start a unary call: send msg (len bytes, copied) to path (e.g.
 * "/boomerang.v1.Primary/Execute"), with a deadline of timeout_s seconds
 * (<= 0: none; it is also sent to the server as grpc-timeout). cb(arg, ...)
 * runs exactly once: with the reply; with the server's status; UNAVAILABLE if
 * there is no connection or it is lost; DEADLINE_EXCEEDED at the deadline
 * (the stream is reset with RST_STREAM CANCEL); RESOURCE_EXHAUSTED if the
 * reply exceeds max_message; INTERNAL on a malformed response; CANCELLED
 * after h2client_cancel() or h2client_free(). Returns the call's id (never 0),
 * for h2client_cancel(). */
uint64_t h2client_unary(struct h2client *c, const char *path, const uint8_t *msg, size_t len,
                        double timeout_s, h2client_reply_cb cb, void *arg);

/* Start a server-streaming call: like h2client_unary(), but on_message runs
 * for every message the server sends, in order, and on_end(arg, ...) runs
 * exactly once at the end (GRPC_OK when the server finished cleanly). No
 * on_message runs after a local end (deadline, cancel, free). Returns the
 * call's id (never 0). */
uint64_t h2client_stream(struct h2client *c, const char *path, const uint8_t *msg, size_t len,
                         double timeout_s, h2client_message_cb on_message, h2client_end_cb on_end,
                         void *arg);

/* Cancel call `id`: its stream is reset (RST_STREAM CANCEL) and its callback
 * runs later from the loop with CANCELLED. Returns 0, or H2CLIENT_ERR_NO_CALL
 * if the call is unknown or has already ended (its callback then runs, or
 * ran, with the real outcome). Linear in the number of open calls. */
int h2client_cancel(struct h2client *c, uint64_t id);

/* Number of calls whose final callback has not run yet. */
unsigned h2client_pending(const struct h2client *c);

/* Close the connection and free the client. Every call that has not ended
 * gets its callback with CANCELLED, from inside this function (a call started
 * from one of those callbacks is cancelled too). Called from inside one of
 * this client's callbacks, the free is deferred until that callback returns.
 * NULL is a no-op. */
void h2client_free(struct h2client *c);

/* "DISCONNECTED", "CONNECTING", "CONNECTED". */
const char *h2client_state_name(enum h2client_state s);

#endif
