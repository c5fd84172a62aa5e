/* boomerang: an HTTP/1.1 server on libev, parsing with http-parser.
 *
 * The server owns its listeners (TCP and/or a unix socket) and connections,
 * and takes over connections that another server accepted and sniffed
 * (h2server hands over those that open with an HTTP/1.x request line). It
 * reads each request completely (head and body, chunked or not) and hands it
 * to on_request; the application answers it with http_respond(), at once or
 * later. With on_h2c set, a connection that opens with the HTTP/2 preface
 * (prior-knowledge h2c) is handed, fd and bytes, to that callback instead;
 * with h2c set (and no on_h2c) the server speaks HTTP/2 on it itself (below).
 *
 * Typical use (the primary's /health and /metrics):
 *
 *   static void on_request(void *arg, struct http_request *req)
 *   {
 *       if (strcmp(http_request_path(req), "/health") == 0)
 *           http_respond(req, 200, "text/plain", "ok\n", 3, NULL, 0);
 *       else
 *           http_respond_error(req, 404, "not found");
 *   }
 *   struct http_server_config cfg = {.listen = "127.0.0.1:9090", .on_request = on_request};
 *   if (http_server_start(loop, &cfg, &srv) != 0) ...
 *   (or no listen, and pass srv as h2server_config.http1 to share the gRPC port)
 *
 * Protocol handled here:
 *   - keep-alive (HTTP/1.1 default, HTTP/1.0 with "Connection: keep-alive")
 *     and pipelining: one request is with the application at a time, the
 *     next is parsed only once it is answered, so answers go out in order;
 *   - Expect: 100-continue gets "100 Continue" once the head is accepted
 *     (unless the body is already here); any other expectation gets 417;
 *   - automatic answers, each with content-type exactly `application/json`,
 *     a body {"message":"..."} and "Connection: close":
 *       400 a malformed request, a field name that is not a token, a missing
 *           or repeated Host in HTTP/1.1, Transfer-Encoding in HTTP/1.0,
 *           chunked not last, Content-Length with Transfer-Encoding, CONNECT;
 *       408 the request was not received within read_timeout;
 *       413 the body exceeds max_body (known from Content-Length before any
 *           body is read, else found while reading);
 *       414 a request target over 64 KiB;
 *       417 an expectation other than 100-continue;
 *       431 request line plus headers over max_header_bytes, or more than
 *           HTTP_MAX_FIELDS fields;
 *       501 a transfer coding other than chunked;
 *       503 too many connections (see below);
 *       505 an HTTP version other than 1.0 and 1.1;
 *   - after a closing answer the server shuts down its side and drains the
 *     client's input for up to 2 s or 32 MiB ("lingering close", as nginx
 *     does), so the client reads the answer instead of a connection reset.
 *
 * Connection limits: past max_conns, a new connection gets the 503 answer and
 * is closed (it does not count against max_conns). If 64 such refusals are
 * still draining, the server instead stops accepting for 100 ms and lets the
 * kernel's backlog hold new connections.
 *
 * Timeouts (per connection): idle_timeout while waiting for the first byte
 * of a request on a kept-alive connection (closed quietly); read_timeout for
 * the whole request head, and then between two reads of the body (answered
 * 408, which defeats slowloris); write_timeout when queued output makes no
 * progress (closed). No timeout runs while the application holds a request:
 * the application bounds its own work.
 *
 * Backpressure: input is not read while 1 MiB of output waits, nor (while a
 * request is with the application) once 64 KiB of pipelined input is
 * buffered. A client that closes its side while its request is with the
 * application is taken as gone, as nginx does: the request is cancelled.
 *
 * Request lifetime: a request passed to on_request belongs to the
 * application until it calls http_respond() exactly once; until then it stays
 * valid, even if the connection is gone (http_request_alive() is then 0,
 * on_cancel has run, and http_respond() just frees it). After http_respond()
 * the request must not be touched.
 *
 * Callbacks run on the loop thread, from inside the server's processing; they
 * may respond (to this or any request), and call http_server_shutdown, but
 * must not call http_server_free. Everything here runs on the loop thread
 * that owns the server: a request worked on by another thread is answered
 * after handing it back (ev_async). Several loop threads can each run a
 * server on one address with reuse_port.
 *
 * HTTP/2 (cfg.h2c, prior knowledge over cleartext, RFC 9113; common/http2.c
 * on nghttp2): each stream's request reaches on_request as the same struct
 * http_request, answered with the same calls under the same rules; only
 * http_request_version() (20) tells. Requests are dispatched as they
 * complete and may be answered in any order (multiplexing). Differences
 * that follow from the protocol:
 *   - header names are lowercase; ":authority" is also there as "host"
 *     (unless a host field was sent); the target is ":path";
 *   - SETTINGS: max_streams concurrent streams, max_header_bytes as the header
 *     list size. A request is refused with the same JSON answers as HTTP/1
 *     (400, 408, 413, 414, 431; 501 for an unknown method), and a stream
 *     answered before its body ended is then reset with NO_ERROR;
 *   - timeouts: idle_timeout while no stream is open (GOAWAY and close),
 *     read_timeout for a stream's body between two DATA frames (408) and for
 *     a header block (GOAWAY), write_timeout as for HTTP/1;
 *   - a stream reset by the client cancels its request (on_cancel), the
 *     connection's end cancels all of them; http_server_shutdown sends GOAWAY
 *     and open streams finish; the application may hold at most max_streams
 *     cancelled, unanswered requests of one connection before its input
 *     stops being read (reset floods);
 *   - response headers: extra names are lowercased; connection-specific ones
 *     (Keep-Alive, Proxy-Connection, Upgrade, TE) are dropped as well;
 *   - output: frames are produced only while less than 1 MiB waits for the
 *     socket, and the client's flow-control windows bound the rest.
 * h2 connections count against max_conns. */
#ifndef BOOMERANG_HTTP_H
#define BOOMERANG_HTTP_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/util.h"

struct http_server;
struct http_request;
struct http_decoder;

/* A complete request arrived; the application now owns req. */
typedef void (*http_request_cb)(void *arg, struct http_request *req);
/* The client went away before req was answered. req stays valid and must
 * still be answered (the answer is dropped); answering from here is fine. */
typedef void (*http_cancel_cb)(void *arg, struct http_request *req);
/* A connection opened with the HTTP/2 client preface (prior-knowledge h2c).
 * The callee owns fd (non-blocking) from now on; pre[0..n) are the bytes
 * read so far (the 24-byte preface and maybe more), valid during the call;
 * peer is "IP:PORT" or "unix". */
typedef void (*http_h2c_cb)(void *arg, int fd, const uint8_t *pre, size_t n, const char *peer);

/* Defaults for the zero values of struct http_server_config. */
#define HTTP_DEFAULT_MAX_BODY      (1024 * 1024)
#define HTTP_DEFAULT_MAX_HEADERS   (16 * 1024)
#define HTTP_DEFAULT_IDLE_TIMEOUT  60.0
#define HTTP_DEFAULT_READ_TIMEOUT  10.0
#define HTTP_DEFAULT_WRITE_TIMEOUT 30.0
#define HTTP_DEFAULT_MAX_CONNS     1024
#define HTTP_MAX_FIELDS            128 /* header fields per request */

/* The server copies the struct and the strings. Zero sizes and timeouts mean
 * the defaults above; a negative timeout disables that timeout. */
struct http_server_config {
    const char *listen;         /* "host:port" or "[v6]:port" (port 0: ephemeral), or NULL */
    const char *unix_path;      /* unix socket path, or NULL; see http_server_start */
    int reuse_port;             /* SO_REUSEPORT on the TCP listener, so several servers
                                   (one per loop thread) can share one address */
    size_t max_body;            /* largest request body, bytes (after chunked decoding) */
    size_t max_header_bytes;    /* request line plus header fields, bytes */
    double idle_timeout;        /* seconds a kept-alive connection may wait for a request */
    double read_timeout;        /* seconds for the head, then between body reads */
    double write_timeout;       /* seconds queued output may go without progress */
    unsigned max_conns;         /* open connections, beyond which new ones get 503 */
    http_request_cb on_request; /* required */
    http_h2c_cb on_h2c;         /* optional: where h2c connections go (an HTTP/2 server's
                                   adopt); NULL: the preface is answered 400 like any
                                   malformed request */
    void *arg;                  /* passed to the callbacks */
    int h2c;                    /* serve prior-knowledge h2c here (when on_h2c is NULL) */
    unsigned max_streams;       /* HTTP/2 concurrent streams per connection; 0: 100 */
};

/* One extra response header; the name must be a token, the value must not
 * contain CR, LF or NUL. */
struct http_header {
    const char *name;
    const char *value;
};

/* ---- server -------------------------------------------------------------------- */

/* Start listening on cfg->listen and/or cfg->unix_path (neither is fine: the
 * server then only serves connections given to http_server_adopt). A stale
 * unix socket file (nobody accepts on it) is replaced; the socket gets the
 * process umask's permissions, and is unlinked by shutdown and free. Logs
 * "listening on ADDR (http)" with the bound address at info level, and sets
 * SIGPIPE to ignored if it still has the default action.
 * Returns 0 and *out, or a negative errno-style code (the reason is logged):
 * -EINVAL a malformed listen string, an over-long unix path or no
 * on_request; -EADDRNOTAVAIL the host does not resolve; -EADDRINUSE the unix
 * socket is in use; -EEXIST unix_path exists and is not a socket; else the
 * socket/bind/listen errno. */
int MUST_CHECK http_server_start(struct ev_loop *loop, const struct http_server_config *cfg,
                                 struct http_server **out);

/* The TCP port actually bound (useful with port 0), or 0 without a TCP listener. */
int http_server_port(const struct http_server *s);

/* Open connections, including those being refused with 503 and those
 * draining after their last answer. */
unsigned http_server_conn_count(const struct http_server *s);

/* Serve a connection accepted elsewhere. fd is a connected stream socket
 * (made non-blocking here); pre[0..n) are bytes already read from it, which
 * are parsed first (copied). peer names the client in logs and
 * http_request_peer() ("IP:PORT"; NULL: asked from the socket). The server
 * takes fd in every case. Parsing starts from the loop (not inside this
 * call), so it is safe to call from another server's callback.
 * Returns 0, or (fd closed) -ESHUTDOWN if the server is shutting down, or
 * -errno if fd cannot be made non-blocking (-EBADF: not an open fd). Past
 * max_conns the connection is adopted and answered 503 like an accepted one. */
int MUST_CHECK http_server_adopt(struct http_server *s, int fd, const uint8_t *pre, size_t n,
                                 const char *peer);

/* Stop accepting (listeners closed, the unix socket unlinked), close idle
 * connections, and let requests in progress finish: their answers carry
 * "Connection: close". Idempotent. http_server_conn_count() reaching 0 tells
 * when it is done. */
void http_server_shutdown(struct http_server *s);

/* Close everything now and free the server (NULL is fine). Requests still
 * with the application are cancelled first (their on_cancel runs before this
 * returns); they stay valid until answered. Not from inside a callback. */
void http_server_free(struct http_server *s);

/* ---- requests ---------------------------------------------------------------------- */

/* The accessors work on requests from on_request and from a decoder (where
 * the peer is "" and the connection id 0). Strings live as long as r. */

/* "GET", "POST", ... */
const char *http_request_method(const struct http_request *r);
/* The request target as sent: "/v2/pipeline?x=1", "http://host/p", "*". */
const char *http_request_target(const struct http_request *r);
/* The path of the target ("/v2/pipeline"; "*" for OPTIONS *), not
 * percent-decoded. */
const char *http_request_path(const struct http_request *r);
/* The query without '?' ("" if none), not percent-decoded. */
const char *http_request_query(const struct http_request *r);
/* The value of header name (any case), trimmed, or NULL. With repeats, the
 * first. "authorization" is there as sent: never log it. */
const char *http_request_header(const struct http_request *r, const char *name);
/* Number of header fields, and the i-th (0-based) name and value. */
unsigned http_request_header_count(const struct http_request *r);
void http_request_header_at(const struct http_request *r, unsigned i, const char **name,
                            const char **value);
/* The body (decoded if chunked), followed by a NUL not counted in *len. */
const uint8_t *http_request_body(const struct http_request *r, size_t *len);
/* 1 if the connection stays open after this answer (as the client asked;
 * always 1 for HTTP/2). */
int http_request_keep_alive(const struct http_request *r);
/* HTTP minor version: 0 or 1 (0 for HTTP/2.0). */
int http_request_minor(const struct http_request *r);
/* The protocol version: 10 (HTTP/1.0), 11 (HTTP/1.1) or 20 (HTTP/2). */
int http_request_version(const struct http_request *r);
/* "127.0.0.1:40512" or "unix". */
const char *http_request_peer(const struct http_request *r);
/* Id of the connection the request came on, unique for the server's life. */
uint64_t http_request_conn_id(const struct http_request *r);
/* Whether an answer can still be delivered. */
int http_request_alive(const struct http_request *r);
/* Call cb(arg, r) if the client goes away before r is answered. */
void http_request_on_cancel(struct http_request *r, http_cancel_cb cb, void *arg);

/* Answer r and end it. status is 200..599 (anything else is logged and
 * answered 500). content_type may be NULL (no Content-Type header). The body
 * (copied) is sent with a Content-Length, except for HEAD requests and
 * 204/304 answers, which carry no body. extra[0..nextra) are added as given
 * (copied); Content-Length, Transfer-Encoding, Connection, Date and
 * Content-Type are the server's and are dropped with an error log, as are
 * invalid ones (and a content_type with CR or LF). The connection closes
 * after the answer if the client asked so or the server is shutting down.
 * If the connection is gone, r is simply freed. */
void http_respond(struct http_request *r, int status, const char *content_type, const void *body,
                  size_t len, const struct http_header *extra, size_t nextra);

/* Answer r with content-type `application/json` and body {"message":"..."}
 * (message is JSON-escaped; invalid UTF-8 becomes U+FFFD). Ends r. */
void http_respond_error(struct http_request *r, int status, const char *message);

/* The same with a machine-readable code: {"message":"...","code":"..."}
 * (code NULL: none), plus extra headers as in http_respond(). Hrana clients
 * show the code only with content-type exactly `application/json`, which
 * this sends. Ends r. */
void http_respond_error_code(struct http_request *r, int status, const char *code,
                             const char *message, const struct http_header *extra, size_t nextra);

/* Append s as a JSON string literal (quotes included) to out, escaping
 * quotes, backslashes and control characters, and replacing invalid UTF-8
 * with U+FFFD. For building JSON bodies. */
void http_json_string(struct buf *out, const char *s, size_t len);

/* ---- the request decoder (no sockets: the server, tests and fuzzing) -------------- */

/* Results of http_decoder_feed(). */
enum http_decode {
    HTTP_DECODE_ERROR = -1,  /* malformed or refused: see http_decoder_error(); final */
    HTTP_DECODE_MORE = 0,    /* all input consumed; feed more */
    HTTP_DECODE_HEAD = 1,    /* the head is complete and accepted; the body follows */
    HTTP_DECODE_REQUEST = 2, /* a request is complete: http_decoder_request() */
};

/* A decoder with the given limits (0 means the server's default). Never
 * fails (aborts on OOM). */
struct http_decoder *http_decoder_new(size_t max_body, size_t max_header_bytes);
void http_decoder_free(struct http_decoder *d);

/* Parse data[0..len). Stops after a head (HTTP_DECODE_HEAD) and after each
 * request (HTTP_DECODE_REQUEST), so *used may be less than len: feed the rest
 * again (after http_decoder_next() for a request). Any chunking of the input
 * gives the same results. Once it returned HTTP_DECODE_ERROR it keeps doing
 * so and consumes nothing. */
int http_decoder_feed(struct http_decoder *d, const uint8_t *data, size_t len, size_t *used);

/* Whether a request has begun (its first byte was parsed) and is not done. */
int http_decoder_started(const struct http_decoder *d);

/* The request being read (after HTTP_DECODE_HEAD: method, target and
 * headers) or just read (after HTTP_DECODE_REQUEST: everything), else NULL.
 * Owned by the decoder; valid until http_decoder_next() or free. */
const struct http_request *http_decoder_request(const struct http_decoder *d);

/* 1 if the current head asked for "Expect: 100-continue" (HTTP/1.1). */
int http_decoder_expects_continue(const struct http_decoder *d);

/* After HTTP_DECODE_REQUEST: drop that request and get ready for the next. */
void http_decoder_next(struct http_decoder *d);

/* After HTTP_DECODE_ERROR: the status to answer (400, 413, 417, 431, 501 or
 * 505) and its message; NULL status is fine. The string lives in d. */
const char *http_decoder_error(const struct http_decoder *d, int *status);

#endif
