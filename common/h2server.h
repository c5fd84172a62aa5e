/* boomerang: a gRPC server on HTTP/2 (nghttp2 on libev), h2c or TLS.
 *
 * The server owns listeners and connections. It parses each stream's headers,
 * checks `content-type: application/grpc`, the bearer token (when tokens are
 * configured) and the message size limit, decodes the 5-byte gRPC framing, and
 * hands a complete unary request to on_call. It answers the protocol-level
 * failures itself (UNAUTHENTICATED, RESOURCE_EXHAUSTED, INTERNAL for bad
 * framing, UNIMPLEMENTED for compressed messages).
 *
 * Ownership of a call: every call passed to on_call must be ended exactly once
 * with h2call_reply(), h2call_fail() or h2call_finish(). Until then the call
 * stays valid, even if its stream or connection is gone (replies then go
 * nowhere and the call is simply freed). After ending it, the caller must not
 * touch it.
 *
 * Callbacks run on the loop thread, from inside the server's processing: they
 * may end calls (also synchronously, from on_call), send, and call
 * h2server_shutdown, but must not call h2server_free.
 *
 * Threading: everything here runs on the loop thread that owns the server. */
#ifndef BOOMERANG_H2SERVER_H
#define BOOMERANG_H2SERVER_H

#include <ev.h>
#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>

#include "common/grpc.h"
#include "common/util.h"

struct h2server;
struct h2call;
struct auth;
struct http_server;

/* A complete unary request arrived (exactly one message, request ended).
 * The application now owns call and must end it exactly once. */
typedef void (*h2server_call_cb)(void *arg, struct h2call *call);
/* Connection conn_id closed (after every call on it was cancelled). Fires for
 * every accepted connection, also those that failed the TLS handshake. */
typedef void (*h2server_close_cb)(void *arg, uint64_t conn_id);
/* The peer cancelled or lost the stream of a call that is not ended yet. The
 * call stays valid (h2call_alive() is now 0) and must still be ended; ending
 * it from inside this callback is fine. */
typedef void (*h2call_cancel_cb)(void *arg, struct h2call *call);
/* A streaming call's queued output fell below its low-water mark (see
 * h2call_on_drain). The call is alive; sending or ending it from here is fine. */
typedef void (*h2call_drain_cb)(void *arg, struct h2call *call);

/* The server copies the struct; tls and auth are borrowed and must outlive it. */
struct h2server_config {
    const char *listen;         /* "host:port" or "[v6]:port"; port 0 picks an ephemeral port */
    SSL_CTX *tls;               /* NULL for h2c; else ALPN h2 is required (see common/tls.h) */
    size_t max_message;         /* largest request message accepted, bytes; 0 means 4 MiB */
    const struct auth *auth;    /* NULL: no authorization header needed */
    double idle_timeout;        /* seconds a connection may go without a call in progress
                                   before it is closed (GOAWAY); 0 = never. Bytes that never
                                   complete a request do not count as activity. A TLS
                                   handshake gets min(idle_timeout, 10 s) in any case. */
    struct http_server *http1;  /* h2c only, optional: a connection whose first bytes are an
                                   HTTP/1.x request line instead of the HTTP/2 preface is
                                   handed (fd and bytes) to this server (common/http.h),
                                   which must run on the same loop and outlive this one.
                                   The server then sends its SETTINGS only once the preface
                                   arrived, and closes a connection that sends nothing for
                                   min(idle_timeout, 10 s). NULL: such connections fail as
                                   any bytes that are not HTTP/2 do (closed). */
    h2server_call_cb on_call;   /* required */
    h2server_close_cb on_close; /* optional */
    void *arg;                  /* passed to the callbacks */
};

/* Bind and listen. Logs "listening on HOST:PORT (h2c|tls)" at info level, with
 * the bound address (so port 0 shows the real port). Also sets SIGPIPE to
 * ignored if it still has the default action.
 * Returns 0 and *out, or a negative errno-style code (the reason is logged):
 * -EINVAL for a malformed listen string or missing on_call, -EADDRNOTAVAIL if
 * the host does not resolve or bind, or the bind/listen errno. */
int MUST_CHECK h2server_start(struct ev_loop *loop, const struct h2server_config *cfg,
                              struct h2server **out);

/* The port actually bound (useful with port 0). */
int h2server_port(const struct h2server *s);

/* Number of open connections. */
unsigned h2server_conn_count(const struct h2server *s);

/* Stop accepting (the listening socket is closed), send GOAWAY on every
 * connection, and close each one once its open calls have ended and its
 * output is flushed. Idempotent. h2server_conn_count() reaching 0 tells when
 * it is done. */
void h2server_shutdown(struct h2server *s);

/* Close everything now and free the server (NULL is fine). Calls still open
 * are cancelled first: their on_cancel and every on_close run before this
 * returns; those calls stay valid until the application ends them. */
void h2server_free(struct h2server *s);

/* ---- calls ----------------------------------------------------------------*/

/* The request path, e.g. "/boomerang.v1.Primary/Execute". Valid until the call ends. */
const char *h2call_path(const struct h2call *c);
/* The request message (without the 5-byte prefix); valid until the call ends. */
const uint8_t *h2call_message(const struct h2call *c, size_t *len);
/* Value of a request header (lower-case name; pseudo-headers such as
 * ":authority" too), or NULL. The first one wins if repeated. Valid until the
 * call ends. "authorization" is there as sent: never log it. */
const char *h2call_header(const struct h2call *c, const char *name);
/* Id of the connection the call arrived on, unique for the server's life. */
uint64_t h2call_conn_id(const struct h2call *c);
/* "conn#12 127.0.0.1:40512 stream 3", for log lines. */
const char *h2call_peer(const struct h2call *c);
/* Whether the stream is still open (a reply can still be delivered). */
int h2call_alive(const struct h2call *c);
/* Register a callback for when the peer goes away before the call ends. */
void h2call_on_cancel(struct h2call *c, h2call_cancel_cb cb, void *arg);

/* Unary success: headers, one message (copied), trailers grpc-status 0.
 * Ends the call. On a streaming call it sends one last message, then OK. */
void h2call_reply(struct h2call *c, const uint8_t *msg, size_t len);
/* Failure: a trailers-only response with status and grpc-message
 * (percent-encoded here; NULL or "" for none). Ends the call. On a call that
 * already sent messages it is the same as h2call_finish. */
void h2call_fail(struct h2call *c, enum grpc_status status, const char *message);

/* Server streaming: send one more message (copied). The first send sends the
 * response headers. Returns 0, or -1 if the stream is gone (see
 * h2call_alive; the call must still be ended) or len exceeds 4 GiB. Sending never blocks;
 * h2call_pending() tells how many bytes are queued in the call and not yet
 * handed to the connection, which only takes more while the peer's HTTP/2
 * flow-control window is open and the connection's unsent output is below
 * 1 MiB, so a producer can stop at a threshold (flow control). */
int h2call_send(struct h2call *c, const uint8_t *msg, size_t len);
size_t h2call_pending(const struct h2call *c);
/* Flow control without polling: cb(arg, call) runs once each time
 * h2call_pending() falls below `low` after a send left it at or above `low`
 * (also if it already is at or above `low` now). It runs on the loop thread
 * once the connection's send loop is done (which may be inside h2call_flush),
 * never from inside nghttp2. cb NULL turns it off. The registration ends with
 * the call. */
void h2call_on_drain(struct h2call *c, size_t low, h2call_drain_cb cb, void *arg);
/* Serialize the HTTP/2 output queued on the call's connection now (frames for
 * every call on it, in the order nghttp2 schedules them, past the usual 1 MiB
 * cap on a connection's unsent output, up to 16 MiB) and write what the
 * socket takes, instead of waiting for the end of the loop iteration. Lets a
 * caller put one call's messages on the wire ahead of another call's reply
 * submitted afterwards on the same connection. Output that the peer's
 * flow-control windows hold back, or beyond 16 MiB unsent, stays queued. A
 * no-op when the call is not alive, or when called from inside the server's
 * own processing (e.g. from on_call), where the usual flush at the end of the
 * loop iteration follows anyway. */
void h2call_flush(struct h2call *c);
/* End a streaming call: the queued messages go out, then the trailers with
 * status and message (percent-encoded here; NULL or "" for none). If nothing
 * was sent it is a trailers-only response. Ends the call. */
void h2call_finish(struct h2call *c, enum grpc_status status, const char *message);

#endif
