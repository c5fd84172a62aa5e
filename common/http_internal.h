/* boomerang: what common/http.c (HTTP/1.1, connections) and common/http2.c
 * (the h2c engine inside the same server) share. Not a public API: the
 * application sees common/http.h only.
 *
 * Split of work: http.c owns the socket, the connection (struct conn, its
 * states, buffers, timer and close path) and the request struct; http2.c
 * owns one nghttp2 server session per h2c connection, turning bytes in into
 * requests and answers into bytes in the connection's output buffer.
 *
 *   http.c                                      http2.c
 *   conn_sniff: preface seen, cfg.h2c   ---->   http2_new, http2_input(preface...)
 *   conn_input (CONN_H2)                ---->   http2_input
 *   conn_service (CONN_H2)              ---->   http2_output (bounded), http2_done
 *   conn deadline / expiry              ---->   http2_deadline / http2_expire
 *   http_server_shutdown                ---->   http2_shutdown (GOAWAY)
 *   conn_close                          ---->   http2_close (cancel requests)
 *   http_respond / http_request_alive   ---->   http2_respond / http2_request_alive
 *   http2.c dispatch, answer            <----   http_conn_* hooks (below) */
#ifndef BOOMERANG_HTTP_INTERNAL_H
#define BOOMERANG_HTTP_INTERNAL_H

#include <ev.h>
#include <http_parser.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/http.h"

/* ---- requests (http.c) --------------------------------------------------------------- */

enum http_req_state {
    HTTP_REQ_PARSING,    /* being read; owned by the decoder or the HTTP/2 stream */
    HTTP_REQ_DISPATCHED, /* with the application, its connection (and stream) alive */
    HTTP_REQ_ORPHANED,   /* with the application, its client gone */
};

struct http_field {
    size_t name, value; /* offsets of NUL-terminated strings in strs */
};

struct conn;
struct http2;
struct http2_stream;

struct http_request {
    enum http_req_state state;
    struct conn *conn; /* HTTP/1: set while dispatched */
    uint64_t conn_id;
    char peer[64];
    enum http_method method;
    int version; /* 10, 11 or 20 */
    int minor;
    int keep_alive;
    int expect_continue;
    struct buf strs; /* target, then field names and values, then path and query */
    size_t target, path, query;
    struct http_field *fields;
    unsigned nfields, cap;
    struct buf body;
    http_cancel_cb on_cancel;
    void *cancel_arg;
    /* HTTP/2 only (conn stays NULL) */
    struct http2 *h2;                 /* the session, while the connection lives */
    struct http2_stream *h2s;         /* the stream, while open and not answered */
    struct http_request *prev, *next; /* the session's list of held requests */
};

/* A new request in HTTP_REQ_PARSING. Never fails. */
struct http_request *http_req_new(void);
/* Free r (NULL is fine), wiping its strings (they may hold credentials). */
void http_req_free(struct http_request *r);
/* Append a NUL-terminated copy of s[0..len) to r->strs; returns its offset. */
size_t http_req_add_str(struct http_request *r, const void *s, size_t len);
/* Add a header field (copied; the caller checked name and value). */
void http_req_add_field(struct http_request *r, const void *name, size_t nlen, const void *value,
                        size_t vlen);
/* Split r's target (set with http_req_add_str) into path and query. Returns
 * 0, or -1 if the target is not a valid request target. */
int MUST_CHECK http_req_split_target(struct http_request *r);
/* The method named s (as sent, case-sensitive), or -1 if http_parser does
 * not know it. */
int http_req_method_parse(const char *s);

/* Response header checks shared by both versions: an RFC 9110 token; a value
 * without CR, LF (or NUL); one of the headers the server writes itself. */
int http_header_name_ok(const char *name);
int http_header_value_ok(const char *value);
int http_header_reserved(const char *name);
/* {"message":"..."} for message (JSON-escaped), appended to out. */
void http_error_body(struct buf *out, const char *message);

/* ---- connection hooks (http.c, for http2.c) -------------------------------------------- */

const struct http_server_config *http_conn_cfg(const struct conn *c);
struct ev_loop *http_conn_loop(const struct conn *c);
const char *http_conn_name(const struct conn *c);
const char *http_conn_peer(const struct conn *c);
uint64_t http_conn_id(const struct conn *c);
int http_conn_shutting_down(const struct conn *c);
/* New output or input room (an answer, an orphan freed): service c from the
 * prepare watcher unless it is being serviced now. */
void http_conn_wake(struct conn *c);

/* ---- the HTTP/2 engine (http2.c) -------------------------------------------------------- */

/* Defaults for the zero config values. */
#define HTTP2_DEFAULT_MAX_STREAMS 100

/* A session for connection c (server side, SETTINGS queued). NULL if nghttp2
 * fails (logged). */
struct http2 *http2_new(struct conn *c);
/* Free the session and its streams. http2_close must have run. */
void http2_free(struct http2 *h);
/* Bytes from the client, starting with the preface. Returns 0, or -1 if the
 * session is broken beyond a GOAWAY (close the connection). May dispatch
 * requests (on_request runs) and answer refused streams. */
int MUST_CHECK http2_input(struct http2 *h, const uint8_t *data, size_t len);
/* Serialize queued frames into out while it holds less than high bytes.
 * Returns 0, or -1 on a fatal nghttp2 error (close the connection). */
int MUST_CHECK http2_output(struct http2 *h, struct buf *out, size_t high);
/* Whether to read from the socket now (the session wants input and the
 * application does not hold too many cancelled requests of this connection). */
int http2_want_read(const struct http2 *h);
/* Whether the session has frames to serialize. */
int http2_want_write(const struct http2 *h);
/* The session is over (GOAWAY exchanged, nothing left to send or receive):
 * flush and close. */
int http2_done(const struct http2 *h);
/* When a stream or the connection times out (0: no deadline). */
ev_tstamp http2_deadline(const struct http2 *h);
/* Handle the deadlines that passed: 408 to a stalled body, GOAWAY to an
 * idle connection or a stalled header block. */
void http2_expire(struct http2 *h);
/* Graceful shutdown: GOAWAY with the last stream seen; open streams finish. */
void http2_shutdown(struct http2 *h);
/* The connection is closing: every request still held by the application is
 * cancelled (on_cancel), and the session is not used again. */
void http2_close(struct http2 *h);

/* http_respond and http_request_alive for an HTTP/2 request. */
void http2_respond(struct http_request *r, int status, const char *content_type, const void *body,
                   size_t len, const struct http_header *extra, size_t nextra);
int http2_request_alive(const struct http_request *r);

#endif
