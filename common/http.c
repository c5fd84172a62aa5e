/* boomerang: an HTTP/1.1 server on libev, parsing with http-parser.
 *
 *   accept4 / http_server_adopt -> conn (CONN_IDLE) -> scheduled for the prepare watcher
 *   (cfg.on_h2c: the first bytes are held while they match the HTTP/2 preface;
 *    all 24 of them hand the fd to on_h2c, CONN_CLOSED; a mismatch parses them)
 *
 *   recv -> conn_input -> http_decoder_feed -> http_parser_execute -> on_*_cb
 *             IDLE --first byte--> READING --HEAD--> (100 Continue) --REQUEST--> DISPATCHED
 *             DISPATCHED --http_respond, keep-alive--> IDLE (pipelined input parsed next)
 *             any --error / Connection: close / shutdown--> DRAINING (flush the answer)
 *             DRAINING --flushed: shutdown(SHUT_WR)--> LINGER (discard input, 2 s max)
 *             any --EOF, error, timeout, free--> CLOSED (freed from the prepare watcher)
 *
 *   http_respond -> conn->out -> send() now if inside the connection's own
 *   processing, else from the prepare watcher, before the loop blocks.
 *
 * The decoder wraps http_parser: it pauses the parser after the head and
 * after each message, so a caller sees both points, and one buffer holding
 * several pipelined requests is consumed one request at a time. It enforces
 * the size limits and the request rules http_parser leaves to the server
 * (RFC 9112: Host, field-name tokens, transfer codings; RFC 9110: Expect).
 *
 * Lifetimes: a connection is freed only from the prepare watcher (or
 * http_server_free), never inside its own callbacks; conn_close() marks it.
 * A request belongs to the decoder until dispatched, then to the application
 * until http_respond(); if its connection dies first it is orphaned (detached)
 * and freed by http_respond(). */
#include "common/http.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/http_internal.h"
#include "common/log.h"

#define HTTP_READ_CHUNK        (64 * 1024)
#define HTTP_OUT_HIGH          (1024 * 1024) /* stop reading above this much unsent output */
#define HTTP_IN_HIGH           (64 * 1024)   /* pipelined input kept while a request is out */
#define HTTP_BUF_KEEP          (16 * 1024)   /* larger idle buffers are released */
#define HTTP_ACCEPTS_PER_EVENT 64
#define HTTP_ACCEPT_PAUSE      0.1 /* seconds to stop accepting (out of fds, refusal flood) */
#define HTTP_MAX_REFUSING      64  /* 503 refusals draining at once */
#define HTTP_LINGER_TIME       2.0 /* seconds to drain input after a closing answer */
#define HTTP_LINGER_MAX        (32 * 1024 * 1024) /* bytes discarded at most while draining */
#define HTTP_BODY_WIRE_FACTOR  8     /* body framing (chunk sizes, extensions) allowed on top */
#define HTTP_MAX_TARGET        65535 /* http_parser_parse_url keeps 16-bit offsets */

/* ---- requests ------------------------------------------------------------------ */

struct http_request *http_req_new(void)
{
    struct http_request *r = xcalloc(1, sizeof(*r));

    r->state = HTTP_REQ_PARSING;
    return r;
}

void http_req_free(struct http_request *r)
{
    if (!r)
        return;
    if (r->strs.data) /* may hold an authorization header */
        explicit_bzero(r->strs.data, r->strs.cap);
    buf_free(&r->strs);
    buf_free(&r->body);
    free(r->fields);
    free(r);
}

static const char *req_str(const struct http_request *r, size_t off)
{
    return (const char *)r->strs.data + off;
}

static void req_terminate(struct http_request *r)
{
    buf_append(&r->strs, "", 1);
}

/* Append strs[off, off + len) to strs (reserve first: it may move). */
static void req_copy_self(struct http_request *r, size_t off, size_t len)
{
    buf_reserve(&r->strs, len);
    memcpy(r->strs.data + r->strs.len, r->strs.data + off, len);
    r->strs.len += len;
}

size_t http_req_add_str(struct http_request *r, const void *s, size_t len)
{
    size_t off = r->strs.len;

    buf_append(&r->strs, s, len);
    req_terminate(r);
    return off;
}

void http_req_add_field(struct http_request *r, const void *name, size_t nlen, const void *value,
                        size_t vlen)
{
    if (r->nfields == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 16;
        r->fields = xrealloc(r->fields, r->cap * sizeof(*r->fields));
    }
    r->fields[r->nfields].name = http_req_add_str(r, name, nlen);
    r->fields[r->nfields].value = http_req_add_str(r, value, vlen);
    r->nfields++;
}

int http_req_method_parse(const char *s)
{
    static const char *const names[] = {
#define HTTP_METHOD_NAME(num, name, string) [num] = #string,
        HTTP_METHOD_MAP(HTTP_METHOD_NAME)
#undef HTTP_METHOD_NAME
    };

    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        if (names[i] && strcmp(names[i], s) == 0)
            return (int)i;
    }
    return -1;
}

/* ---- decoder ------------------------------------------------------------------- */

enum field_state { FIELD_NONE, FIELD_NAME, FIELD_VALUE };

enum dec_phase {
    DEC_IDLE,  /* before a request's first byte */
    DEC_HEAD,  /* request line and fields */
    DEC_BODY,  /* head accepted, body (or its end) follows */
    DEC_DONE,  /* a request is complete, waiting for http_decoder_next */
    DEC_ERROR, /* final */
};

struct http_decoder {
    http_parser parser;
    size_t max_body, max_head;
    enum dec_phase phase;
    struct http_request *req;
    size_t head_bytes;      /* wire bytes of this request's head so far */
    size_t body_wire;       /* wire bytes of its body so far, framing included */
    enum field_state field; /* which part of a field the parser is in */
    int target_done;        /* the target is NUL-terminated in strs */
    int status;             /* after DEC_ERROR */
    char message[160];
};

static int dec_fail(struct http_decoder *d, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int dec_fail(struct http_decoder *d, int status, const char *fmt, ...)
{
    va_list ap;

    assert(d->phase != DEC_ERROR);
    d->phase = DEC_ERROR;
    d->status = status;
    va_start(ap, fmt);
    vsnprintf(d->message, sizeof(d->message), fmt, ap);
    va_end(ap);
    return -1;
}

static struct http_decoder *parser_dec(http_parser *p)
{
    return container_of(p, struct http_decoder, parser);
}

/* RFC 9110 token characters (field names). */
static int is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

static int is_token(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++) {
        if (!is_tchar((unsigned char)*s))
            return 0;
    }
    return 1;
}

static void dec_end_target(struct http_decoder *d)
{
    if (!d->target_done) {
        req_terminate(d->req);
        d->target_done = 1;
    }
}

/* Close the field in progress: trim the value's trailing whitespace. */
static void dec_end_field(struct http_decoder *d)
{
    struct http_request *r = d->req;

    /* http_parser reports a value (maybe empty) for every name. */
    assert(d->field != FIELD_NAME);
    if (d->field == FIELD_VALUE) {
        size_t start = r->fields[r->nfields - 1].value;
        while (r->strs.len > start &&
               (r->strs.data[r->strs.len - 1] == ' ' || r->strs.data[r->strs.len - 1] == '\t'))
            r->strs.len--;
        req_terminate(r);
    }
    d->field = FIELD_NONE;
}

static int on_message_begin_cb(http_parser *p)
{
    struct http_decoder *d = parser_dec(p);

    assert(d->phase == DEC_IDLE && d->req == NULL);
    d->phase = DEC_HEAD;
    d->req = http_req_new();
    return 0;
}

static int on_url_cb(http_parser *p, const char *at, size_t len)
{
    struct http_decoder *d = parser_dec(p);

    buf_append(&d->req->strs, at, len);
    return 0;
}

static int on_header_field_cb(http_parser *p, const char *at, size_t len)
{
    struct http_decoder *d = parser_dec(p);
    struct http_request *r = d->req;

    if (d->phase != DEC_HEAD)
        return 0; /* trailer fields of a chunked body are ignored */
    dec_end_target(d);
    if (d->field != FIELD_NAME) {
        dec_end_field(d);
        if (r->nfields == r->cap) {
            r->cap = r->cap ? r->cap * 2 : 16;
            r->fields = xrealloc(r->fields, r->cap * sizeof(*r->fields));
        }
        r->fields[r->nfields++].name = r->strs.len;
        d->field = FIELD_NAME;
    }
    buf_append(&r->strs, at, len);
    return 0;
}

static int on_header_value_cb(http_parser *p, const char *at, size_t len)
{
    struct http_decoder *d = parser_dec(p);
    struct http_request *r = d->req;

    if (d->phase != DEC_HEAD)
        return 0;
    if (d->field == FIELD_NAME) {
        req_terminate(r);
        r->fields[r->nfields - 1].value = r->strs.len;
        d->field = FIELD_VALUE;
    }
    /* http_parser refuses CR, LF, NUL and other controls in values, so the
     * value is a safe C string. */
    buf_append(&r->strs, at, len);
    return 0;
}

/* Count the fields named name, and return the first value (or NULL). */
static const char *req_field(const struct http_request *r, const char *name, unsigned *count)
{
    const char *first = NULL;

    *count = 0;
    for (unsigned i = 0; i < r->nfields; i++) {
        if (strcasecmp(req_str(r, r->fields[i].name), name) == 0) {
            if (!first)
                first = req_str(r, r->fields[i].value);
            (*count)++;
        }
    }
    return first;
}

/* Transfer-Encoding (RFC 9112 section 6.1): the only coding decoded here is
 * chunked, so the codings of all the fields together must be exactly one
 * "chunked" (http_parser would accept "gzip, chunked" and hand over gzip). */
static int dec_check_codings(struct http_decoder *d)
{
    const struct http_request *r = d->req;
    unsigned fields = 0, chunked = 0;

    for (unsigned i = 0; i < r->nfields; i++) {
        const char *v = req_str(r, r->fields[i].value);
        if (strcasecmp(req_str(r, r->fields[i].name), "transfer-encoding") != 0)
            continue;
        if (r->minor == 0)
            return dec_fail(d, 400, "Transfer-Encoding in an HTTP/1.0 request");
        fields++;
        while (*(v += strspn(v, " \t,"))) {
            size_t n = strcspn(v, " \t,;");
            if (!(n == 7 && strncasecmp(v, "chunked", 7) == 0))
                return dec_fail(d, 501, "transfer coding \"%.*s\" is not supported",
                                (int)MIN(n, (size_t)40), v);
            chunked++;
            v += n;
            v += strcspn(v, ","); /* parameters */
        }
    }
    if (fields > 0 && chunked != 1)
        return dec_fail(d, 400, "invalid Transfer-Encoding");
    return 0;
}

/* Split the target into path and query (appended to strs). */
int http_req_split_target(struct http_request *r)
{
    const char *t = req_str(r, r->target);
    size_t tlen = strlen(t);
    struct http_parser_url u;
    size_t path_off = 0, path_len = 0, q_off = 0, q_len = 0;

    if (strcmp(t, "*") == 0) {
        path_off = 0;
        path_len = 1;
    } else {
        http_parser_url_init(&u);
        if (tlen == 0 || tlen > HTTP_MAX_TARGET || http_parser_parse_url(t, tlen, 0, &u) != 0)
            return -1;
        if (u.field_set & (1 << UF_PATH)) {
            path_off = u.field_data[UF_PATH].off;
            path_len = u.field_data[UF_PATH].len;
        }
        if (u.field_set & (1 << UF_QUERY)) {
            q_off = u.field_data[UF_QUERY].off;
            q_len = u.field_data[UF_QUERY].len;
        }
    }
    r->path = r->strs.len;
    if (path_len == 0)
        buf_append(&r->strs, "/", 1); /* "http://host" means "/" */
    else
        req_copy_self(r, r->target + path_off, path_len);
    req_terminate(r);
    r->query = r->strs.len;
    req_copy_self(r, r->target + q_off, q_len);
    req_terminate(r);
    return 0;
}

static int dec_split_target(struct http_decoder *d)
{
    if (http_req_split_target(d->req) != 0)
        return dec_fail(d, 400, "invalid request target");
    return 0;
}

/* Sizes and field names. Checked here, once the head is in, rather than in
 * the data callbacks: http_parser calls those at chunk boundaries, so an
 * error found there would depend on how the input was split. */
static int dec_check_fields(struct http_decoder *d)
{
    const struct http_request *r = d->req;

    if (strlen(req_str(r, r->target)) > HTTP_MAX_TARGET)
        return dec_fail(d, 414, "request target exceeds %d bytes", HTTP_MAX_TARGET);
    if (r->nfields > HTTP_MAX_FIELDS)
        return dec_fail(d, 431, "request has more than %d header fields", HTTP_MAX_FIELDS);
    for (unsigned i = 0; i < r->nfields; i++) {
        if (!is_token(req_str(r, r->fields[i].name)))
            return dec_fail(d, 400, "invalid header field name");
    }
    return 0;
}

/* The head is in: apply the rules http_parser leaves to servers. */
static int dec_check_head(struct http_decoder *d)
{
    struct http_request *r = d->req;
    const http_parser *p = &d->parser;
    const char *expect;
    unsigned n;

    if (dec_check_fields(d) < 0)
        return -1;
    if (p->http_major != 1 || p->http_minor > 1)
        return dec_fail(d, 505, "HTTP version %u.%u is not supported", p->http_major,
                        p->http_minor);
    r->method = (enum http_method)p->method;
    r->minor = p->http_minor;
    r->version = 10 + r->minor;
    if (r->method == HTTP_CONNECT)
        return dec_fail(d, 400, "CONNECT is not supported");
    (void)req_field(r, "host", &n);
    if (r->minor == 1 && n != 1)
        return dec_fail(d, 400, n ? "repeated Host header" : "missing Host header");
    if (dec_check_codings(d) < 0)
        return -1;
    expect = req_field(r, "expect", &n);
    if (expect) {
        if (n > 1 || strcasecmp(expect, "100-continue") != 0)
            return dec_fail(d, 417, "unsupported expectation");
        r->expect_continue = r->minor == 1; /* HTTP/1.0 clients do not wait for it */
    }
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > d->max_body)
        return dec_fail(d, 413, "request body of %llu bytes exceeds the limit of %zu bytes",
                        (unsigned long long)p->content_length, d->max_body);
    return dec_split_target(d);
}

static int on_headers_complete_cb(http_parser *p)
{
    struct http_decoder *d = parser_dec(p);

    dec_end_target(d);
    dec_end_field(d);
    if (dec_check_head(d) < 0)
        return -1;
    d->phase = DEC_BODY;
    http_parser_pause(p, 1); /* report the head before reading the body */
    return 0;
}

static int on_body_cb(http_parser *p, const char *at, size_t len)
{
    struct http_decoder *d = parser_dec(p);
    struct http_request *r = d->req;

    /* Content-Length and each chunk size were checked against the limit. */
    assert(len <= d->max_body - buf_avail(&r->body));
    buf_append(&r->body, at, len);
    return 0;
}

/* A chunk that cannot fit is refused before its data arrives. */
static int on_chunk_header_cb(http_parser *p)
{
    struct http_decoder *d = parser_dec(p);

    if (p->content_length > d->max_body - buf_avail(&d->req->body))
        return dec_fail(d, 413, "request body exceeds the limit of %zu bytes", d->max_body);
    return 0;
}

static int on_message_complete_cb(http_parser *p)
{
    struct http_decoder *d = parser_dec(p);
    struct http_request *r = d->req;

    r->keep_alive = http_should_keep_alive(p);
    buf_append(&r->body, "", 1); /* the promised NUL, not counted */
    r->body.len--;
    d->phase = DEC_DONE;
    http_parser_pause(p, 1); /* one request at a time */
    return 0;
}

static const http_parser_settings dec_settings = {
    .on_message_begin = on_message_begin_cb,
    .on_url = on_url_cb,
    .on_header_field = on_header_field_cb,
    .on_header_value = on_header_value_cb,
    .on_headers_complete = on_headers_complete_cb,
    .on_body = on_body_cb,
    .on_message_complete = on_message_complete_cb,
    .on_chunk_header = on_chunk_header_cb,
};

static void dec_init(struct http_decoder *d, size_t max_body, size_t max_header_bytes)
{
    memset(d, 0, sizeof(*d));
    http_parser_init(&d->parser, HTTP_REQUEST);
    d->max_body = max_body ? max_body : HTTP_DEFAULT_MAX_BODY;
    d->max_head = max_header_bytes ? max_header_bytes : HTTP_DEFAULT_MAX_HEADERS;
}

static void dec_clear(struct http_decoder *d)
{
    http_req_free(d->req);
    d->req = NULL;
}

static int dec_parser_error(struct http_decoder *d, enum http_errno e)
{
    if (d->phase == DEC_ERROR) /* a callback refused */
        return HTTP_DECODE_ERROR;
    if (e == HPE_HEADER_OVERFLOW)
        dec_fail(d, 431, "request headers exceed %zu bytes", d->max_head);
    else
        dec_fail(d, 400, "malformed request: %s", http_errno_description(e));
    return HTTP_DECODE_ERROR;
}

/* Chunk framing (sizes, extensions, trailers) is not body: bound the body's
 * wire bytes too, or tiny chunks with long extensions would keep a
 * connection busy forever. */
static size_t dec_wire_limit(const struct http_decoder *d)
{
    return d->max_body * HTTP_BODY_WIRE_FACTOR + 65536;
}

/* One http_parser_execute over at most the remaining head or body budget, so
 * a limit is hit at the same byte however the input is split. */
static int dec_execute(struct http_decoder *d, const uint8_t *data, size_t len, size_t *used)
{
    int in_head = d->phase <= DEC_HEAD;
    size_t got, *spent = in_head ? &d->head_bytes : &d->body_wire;
    size_t limit = in_head ? d->max_head : dec_wire_limit(d);
    enum http_errno e;

    if (*spent >= limit) {
        if (in_head)
            dec_fail(d, 431, "request headers exceed %zu bytes", d->max_head);
        else
            dec_fail(d, 413, "request body framing exceeds the limit");
        return HTTP_DECODE_ERROR;
    }
    len = MIN(len, limit - *spent);
    got = http_parser_execute(&d->parser, &dec_settings, (const char *)data, len);
    *used += got;
    *spent += got;
    e = HTTP_PARSER_ERRNO(&d->parser);
    if (e == HPE_PAUSED)
        return d->phase == DEC_DONE ? HTTP_DECODE_REQUEST : HTTP_DECODE_HEAD;
    if (e != HPE_OK)
        return dec_parser_error(d, e);
    return HTTP_DECODE_MORE;
}

struct http_decoder *http_decoder_new(size_t max_body, size_t max_header_bytes)
{
    struct http_decoder *d = xmalloc(sizeof(*d));

    dec_init(d, max_body, max_header_bytes);
    return d;
}

void http_decoder_free(struct http_decoder *d)
{
    if (!d)
        return;
    dec_clear(d);
    free(d);
}

int http_decoder_feed(struct http_decoder *d, const uint8_t *data, size_t len, size_t *used)
{
    *used = 0;
    if (d->phase == DEC_ERROR)
        return HTTP_DECODE_ERROR;
    if (d->phase == DEC_DONE)
        return HTTP_DECODE_REQUEST;
    if (HTTP_PARSER_ERRNO(&d->parser) == HPE_PAUSED) /* after HTTP_DECODE_HEAD */
        http_parser_pause(&d->parser, 0);
    while (*used < len) {
        int rv = dec_execute(d, data + *used, len - *used, used);
        if (rv != HTTP_DECODE_MORE)
            return rv;
    }
    return HTTP_DECODE_MORE;
}

int http_decoder_started(const struct http_decoder *d)
{
    return d->phase == DEC_HEAD || d->phase == DEC_BODY;
}

const struct http_request *http_decoder_request(const struct http_decoder *d)
{
    return d->phase == DEC_BODY || d->phase == DEC_DONE ? d->req : NULL;
}

int http_decoder_expects_continue(const struct http_decoder *d)
{
    return d->req && d->phase >= DEC_BODY && d->phase != DEC_ERROR && d->req->expect_continue;
}

/* Hand over the finished request and get ready for the next one. */
static struct http_request *dec_take(struct http_decoder *d)
{
    struct http_request *r = d->req;

    assert(d->phase == DEC_DONE);
    d->req = NULL;
    d->phase = DEC_IDLE;
    d->head_bytes = d->body_wire = 0;
    d->field = FIELD_NONE;
    d->target_done = 0;
    http_parser_pause(&d->parser, 0);
    return r;
}

void http_decoder_next(struct http_decoder *d)
{
    http_req_free(dec_take(d));
}

const char *http_decoder_error(const struct http_decoder *d, int *status)
{
    if (status)
        *status = d->phase == DEC_ERROR ? d->status : 0;
    return d->phase == DEC_ERROR ? d->message : "";
}

/* ---- JSON strings ------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t len)
{
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;

    if (s[0] >= 0xC2 && s[0] <= 0xDF)
        n = 2;
    else if (s[0] >= 0xE0 && s[0] <= 0xEF)
        n = 3;
    else if (s[0] >= 0xF0 && s[0] <= 0xF4)
        n = 4;
    else
        return 0;
    if (n > len)
        return 0;
    /* The second byte's range excludes overlongs, surrogates and > U+10FFFF. */
    if (s[0] == 0xE0)
        lo = 0xA0;
    else if (s[0] == 0xED)
        hi = 0x9F;
    else if (s[0] == 0xF0)
        lo = 0x90;
    else if (s[0] == 0xF4)
        hi = 0x8F;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    }
    return n;
}

void http_json_string(struct buf *out, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    buf_append(out, "\"", 1);
    while (i < len) {
        unsigned char ch = p[i];
        char esc[8];

        if (ch == '"' || ch == '\\') {
            esc[0] = '\\';
            esc[1] = (char)ch;
            buf_append(out, esc, 2);
        } else if (ch < 0x20) {
            snprintf(esc, sizeof(esc), "\\u%04x", ch);
            buf_append(out, esc, 6);
        } else if (ch >= 0x80) {
            size_t n = utf8_seq(p + i, len - i);
            if (n == 0) {
                buf_append(out, "\\ufffd", 6);
            } else {
                buf_append(out, p + i, n);
                i += n;
                continue;
            }
        } else {
            buf_append(out, &ch, 1);
        }
        i++;
    }
    buf_append(out, "\"", 1);
}

void http_error_body(struct buf *out, const char *message)
{
    buf_append(out, "{\"message\":", 11);
    http_json_string(out, message, strlen(message));
    buf_append(out, "}", 1);
}

/* ---- connections ------------------------------------------------------------------ */

enum conn_state {
    CONN_IDLE,       /* waiting for a request's first byte */
    CONN_READING,    /* a request is partly in */
    CONN_DISPATCHED, /* the application holds the request; input is buffered */
    CONN_DRAINING,   /* a closing answer is queued: flush it, discard input */
    CONN_LINGER,     /* our side shut down; discard input until EOF or timeout */
    CONN_CLOSED,     /* watchers stopped; freed from the prepare watcher */
    CONN_H2,         /* cfg.h2c: an HTTP/2 session (http2.c) runs the connection */
};

struct conn {
    struct http_server *srv;
    enum conn_state state;
    struct conn *prev, *next; /* srv->conns */
    struct conn *pend_next;   /* srv->pending, while pending */
    int pending;
    uint64_t id;
    int fd;
    int refused;       /* answered 503; not counted against max_conns */
    int busy;          /* inside conn_service: it flushes before returning */
    int peer_eof;      /* the client shut down its side */
    int want_continue; /* owe "100 Continue" if the body is not here yet */
    int sniffing;      /* cfg.on_h2c or h2c: the first bytes may be the HTTP/2 preface */
    char name[96];     /* "http#N PEER", for logs */
    char peer[64];
    ev_io io;
    int io_events;
    ev_timer timer;
    ev_tstamp timer_at;   /* when the timer fires, or 0 if stopped */
    ev_tstamp since;      /* when the current state (idle: output drained) began */
    ev_tstamp last_read;  /* last bytes in */
    ev_tstamp last_write; /* last bytes out, or when output was first queued */
    struct http_decoder dec;
    struct http_request *req; /* with the application */
    struct buf in;            /* unparsed input */
    struct buf out;           /* unsent output */
    size_t discarded;         /* input thrown away while draining */
    struct http2 *h2;         /* CONN_H2 (and after it, until freed) */
};

struct http_server {
    struct ev_loop *loop;
    struct http_server_config cfg;
    char *unix_path; /* our copy; cfg.listen is not kept */
    int tcp_fd, unix_fd;
    int port;
    ev_io tcp_w, unix_w;
    ev_timer accept_pause;
    struct conn *conns;
    unsigned nconns;   /* counted against max_conns */
    unsigned nrefused; /* draining a 503 refusal */
    uint64_t next_id;
    struct conn *pending;
    ev_prepare prepare;
    int shutting_down;
    time_t date_sec;
    char date[48]; /* "Date: ...\r\n" for date_sec */
    uint8_t rbuf[HTTP_READ_CHUNK];
};

static void conn_close(struct conn *c, const char *why);
static void conn_service(struct conn *c);

static const char *conn_state_name(enum conn_state s)
{
    static const char *const names[] = {"idle",   "reading", "dispatched", "draining",
                                        "linger", "closed",  "h2"};
    return names[s];
}

static void conn_set_state(struct conn *c, enum conn_state s)
{
    static const unsigned allowed[] = {
        [CONN_IDLE] = 1u << CONN_READING | 1u << CONN_DRAINING | 1u << CONN_CLOSED,
        [CONN_READING] =
            1u << CONN_DISPATCHED | 1u << CONN_DRAINING | 1u << CONN_CLOSED | 1u << CONN_H2,
        [CONN_DISPATCHED] = 1u << CONN_IDLE | 1u << CONN_DRAINING | 1u << CONN_CLOSED,
        [CONN_DRAINING] = 1u << CONN_LINGER | 1u << CONN_CLOSED,
        [CONN_LINGER] = 1u << CONN_CLOSED,
        [CONN_CLOSED] = 0,
        [CONN_H2] = 1u << CONN_DRAINING | 1u << CONN_CLOSED,
    };

    assert(allowed[c->state] & (1u << s));
    /* trace: the idle/reading/dispatched cycle runs once per request. */
    log_trace("%s: %s -> %s", c->name, conn_state_name(c->state), conn_state_name(s));
    c->state = s;
    c->since = ev_now(c->srv->loop);
}

/* Queue c for the prepare watcher (service it, or free it if closed). */
static void conn_schedule(struct conn *c)
{
    struct http_server *srv = c->srv;

    if (c->pending)
        return;
    c->pending = 1;
    c->pend_next = srv->pending;
    srv->pending = c;
    ev_prepare_start(srv->loop, &srv->prepare);
}

static void conn_out_append(struct conn *c, const void *p, size_t n)
{
    if (buf_avail(&c->out) == 0)
        c->last_write = ev_now(c->srv->loop); /* the write timeout counts from here */
    buf_append(&c->out, p, n);
}

static void conn_out_str(struct conn *c, const char *s)
{
    conn_out_append(c, s, strlen(s));
}

/* "Date: <IMF-fixdate>\r\n", formatted once per second. */
static const char *server_date(struct http_server *srv)
{
    time_t now = (time_t)ev_now(srv->loop);
    struct tm tm;

    if (now != srv->date_sec || !srv->date[0]) {
        srv->date_sec = now;
        gmtime_r(&now, &tm);
        strftime(srv->date, sizeof(srv->date), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
    }
    return srv->date;
}

int http_header_name_ok(const char *name)
{
    return is_token(name);
}

int http_header_value_ok(const char *v)
{
    return strpbrk(v, "\r\n") == NULL;
}

/* Headers the server writes itself. */
int http_header_reserved(const char *name)
{
    static const char *const own[] = {"content-length", "transfer-encoding", "connection", "date",
                                      "content-type"};

    for (size_t i = 0; i < ARRAY_LEN(own); i++) {
        if (strcasecmp(name, own[i]) == 0)
            return 1;
    }
    return 0;
}

static void conn_out_extra(struct conn *c, const struct http_header *extra, size_t nextra)
{
    for (size_t i = 0; i < nextra; i++) {
        const struct http_header *h = &extra[i];
        if (!h->name || !h->value || !is_token(h->name) || !http_header_value_ok(h->value) ||
            http_header_reserved(h->name)) {
            log_error("%s: add response header %s failed: invalid or reserved", c->name,
                      h->name ? h->name : "(null)");
            continue;
        }
        conn_out_str(c, h->name);
        conn_out_append(c, ": ", 2);
        conn_out_str(c, h->value);
        conn_out_append(c, "\r\n", 2);
    }
}

static const char *reason_phrase(int status)
{
    const char *s = http_status_str((enum http_status)status);
    return strcmp(s, "<unknown>") == 0 ? "Unknown" : s;
}

struct answer {
    int status;
    const char *content_type;
    const void *body;
    size_t len;
    const struct http_header *extra;
    size_t nextra;
    int head_only; /* HEAD request: no body */
    int close;     /* Connection: close */
    int minor;     /* the request's HTTP minor version */
};

static void conn_out_answer(struct conn *c, const struct answer *a)
{
    int bodyless = a->status == 204 || a->status == 304;
    char line[128];
    int n;

    n = snprintf(line, sizeof(line), "HTTP/1.1 %d %s\r\n", a->status, reason_phrase(a->status));
    conn_out_append(c, line, (size_t)n);
    conn_out_str(c, server_date(c->srv));
    if (a->content_type && http_header_value_ok(a->content_type)) {
        conn_out_append(c, "Content-Type: ", 14);
        conn_out_str(c, a->content_type);
        conn_out_append(c, "\r\n", 2);
    } else if (a->content_type) {
        log_error("%s: set content-type failed: CR or LF in it", c->name);
    }
    if (!bodyless) {
        conn_out_append(c, "Content-Length: ", 16);
        conn_out_append(c, line, util_fmt_u64(line, a->len));
        conn_out_append(c, "\r\n", 2);
    }
    if (a->close)
        conn_out_append(c, "Connection: close\r\n", 19);
    else if (a->minor == 0)
        conn_out_append(c, "Connection: keep-alive\r\n", 24);
    conn_out_extra(c, a->extra, a->nextra);
    conn_out_append(c, "\r\n", 2);
    if (!bodyless && !a->head_only && a->len > 0)
        conn_out_append(c, a->body, a->len);
}

/* Queue {"message": ...} as a closing answer and start draining. */
static void conn_fail(struct conn *c, int status, const char *message)
{
    struct buf body = {0};
    struct answer a = {
        .status = status, .content_type = "application/json", .close = 1, .minor = 1};

    log_debug("%s: request refused: %d %s", c->name, status, message);
    http_error_body(&body, message);
    a.body = body.data;
    a.len = body.len;
    conn_out_answer(c, &a);
    buf_free(&body);
    dec_clear(&c->dec);
    c->want_continue = 0;
    buf_reset(&c->in);
    conn_set_state(c, CONN_DRAINING);
}

/* Free buffers that grew for one large message, so idle connections stay small. */
static void buf_shrink(struct buf *b)
{
    if (buf_avail(b) == 0 && b->cap > HTTP_BUF_KEEP)
        buf_free(b);
}

static void conn_dispatch(struct conn *c)
{
    struct http_server *srv = c->srv;
    struct http_request *r = dec_take(&c->dec);

    r->state = HTTP_REQ_DISPATCHED;
    r->conn = c;
    r->conn_id = c->id;
    snprintf(r->peer, sizeof(r->peer), "%s", c->peer);
    c->req = r;
    c->want_continue = 0;
    conn_set_state(c, CONN_DISPATCHED);
    srv->cfg.on_request(srv->cfg.arg, r); /* may answer at once */
}

static int conn_can_parse(const struct conn *c)
{
    return (c->state == CONN_IDLE || c->state == CONN_READING) && !c->sniffing &&
           buf_avail(&c->out) < HTTP_OUT_HIGH;
}

/* Parse data and dispatch what completes, while the connection may. Returns
 * how much was used; the rest must be kept (or was discarded: error). */
static size_t conn_parse(struct conn *c, const uint8_t *data, size_t len)
{
    size_t off = 0;

    while (off < len && conn_can_parse(c)) {
        size_t used;
        int rv = http_decoder_feed(&c->dec, data + off, len - off, &used), status;
        const char *msg;

        off += used;
        if (c->state == CONN_IDLE && http_decoder_started(&c->dec))
            conn_set_state(c, CONN_READING);
        if (rv == HTTP_DECODE_HEAD) {
            c->want_continue = http_decoder_expects_continue(&c->dec);
        } else if (rv == HTTP_DECODE_REQUEST) {
            conn_dispatch(c);
        } else if (rv == HTTP_DECODE_ERROR) {
            msg = http_decoder_error(&c->dec, &status);
            conn_fail(c, status, msg);
            return len;
        }
    }
    /* Only now: if the body came with the head, the client needs no 100. */
    if (c->want_continue && c->state == CONN_READING) {
        conn_out_str(c, "HTTP/1.1 100 Continue\r\n\r\n");
        c->want_continue = 0;
    }
    return off;
}

static void conn_parse_buffered(struct conn *c)
{
    size_t used;

    if (buf_avail(&c->in) == 0 || !conn_can_parse(c))
        return;
    used = conn_parse(c, buf_head(&c->in), buf_avail(&c->in));
    if (c->state != CONN_DRAINING) /* conn_fail already emptied it */
        buf_consume(&c->in, used);
    buf_shrink(&c->in);
}

static void conn_discard(struct conn *c, size_t n)
{
    c->discarded += n;
    if (c->discarded > HTTP_LINGER_MAX)
        conn_close(c, "client keeps sending after a closing answer");
}

/* The HTTP/2 client preface (RFC 9113 section 3.4) that opens a
 * prior-knowledge h2c connection. No HTTP/1 method starts with "PRI". */
static const char h2_preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define H2_PREFACE_LEN (sizeof(h2_preface) - 1)

/* cfg.h2c: serve the connection with an HTTP/2 session from now on, starting
 * with the bytes held (the preface and whatever followed). */
static void conn_start_h2(struct conn *c)
{
    int rv;

    c->sniffing = 0;
    c->h2 = http2_new(c);
    if (!c->h2) {
        conn_close(c, "HTTP/2 session could not be created");
        return;
    }
    conn_set_state(c, CONN_H2);
    if (c->srv->shutting_down)
        http2_shutdown(c->h2);
    rv = http2_input(c->h2, buf_head(&c->in), buf_avail(&c->in));
    buf_reset(&c->in);
    buf_shrink(&c->in);
    if (rv < 0)
        conn_close(c, "HTTP/2 session failed");
}

/* cfg.on_h2c or h2c: hold the first bytes until they are the whole preface
 * (hand the connection over, or start HTTP/2) or stop matching it (parse
 * them as HTTP/1.x). */
static void conn_sniff(struct conn *c, const uint8_t *data, size_t n)
{
    struct http_server *srv = c->srv;
    size_t have;
    int fd;

    buf_append(&c->in, data, n);
    have = buf_avail(&c->in);
    if (memcmp(buf_head(&c->in), h2_preface, MIN(have, H2_PREFACE_LEN)) != 0) {
        c->sniffing = 0;
        conn_parse_buffered(c);
        return;
    }
    if (c->state == CONN_IDLE)
        conn_set_state(c, CONN_READING); /* the head deadline covers the preface */
    if (have < H2_PREFACE_LEN)
        return;
    if (!srv->cfg.on_h2c) {
        conn_start_h2(c);
        return;
    }
    fd = c->fd;
    c->fd = -1; /* the callback owns it now */
    conn_close(c, "HTTP/2 preface: handed over as h2c");
    srv->cfg.on_h2c(srv->cfg.arg, fd, buf_head(&c->in), have, c->peer); /* c->in lives on */
}

/* New bytes from the socket (or adopted with the connection). */
static void conn_input(struct conn *c, const uint8_t *data, size_t n)
{
    size_t used;

    switch (c->state) {
    case CONN_IDLE:
    case CONN_READING:
        if (c->sniffing) {
            conn_sniff(c, data, n);
            break;
        }
        /* Reading is on only with room to parse, and conn_service parsed
         * everything buffered then: nothing older waits. */
        assert(buf_avail(&c->in) == 0);
        used = conn_parse(c, data, n);
        if (used < n && c->state != CONN_DRAINING && c->state != CONN_CLOSED)
            buf_append(&c->in, data + used, n - used);
        break;
    case CONN_DISPATCHED:
        buf_append(&c->in, data, n); /* pipelined: parsed after the answer */
        break;
    case CONN_DRAINING:
    case CONN_LINGER:
        conn_discard(c, n);
        break;
    case CONN_H2:
        if (http2_input(c->h2, data, n) < 0)
            conn_close(c, "HTTP/2 session failed");
        break;
    case CONN_CLOSED:
        break;
    }
}

static void conn_on_eof(struct conn *c)
{
    c->peer_eof = 1;
    switch (c->state) {
    case CONN_DISPATCHED:
        /* As nginx does: a client that hangs up does not want the answer. */
        conn_close(c, "client closed while its request was being handled");
        break;
    case CONN_IDLE:
    case CONN_READING:
        if (buf_avail(&c->out) == 0) {
            conn_close(c, c->state == CONN_IDLE ? "client closed" : "client closed mid-request");
        } else {
            dec_clear(&c->dec);
            c->want_continue = 0;
            conn_set_state(c, CONN_DRAINING); /* it may still read what we owe it */
        }
        break;
    case CONN_LINGER:
        conn_close(c, "closed after the last answer");
        break;
    case CONN_H2:
        /* HTTP/2 has no half-close of the connection: the client is gone. */
        conn_close(c, "client closed the HTTP/2 connection");
        break;
    case CONN_DRAINING:
    case CONN_CLOSED:
        break;
    }
}

static void conn_read(struct conn *c)
{
    struct http_server *srv = c->srv;
    ssize_t n;

    do
        n = recv(c->fd, srv->rbuf, sizeof(srv->rbuf), 0);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
        c->last_read = ev_now(srv->loop);
        conn_input(c, srv->rbuf, (size_t)n);
    } else if (n == 0) {
        conn_on_eof(c);
    } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
        log_debug("%s: read failed: %s", c->name, strerror(errno));
        conn_close(c, "read failed");
    }
}

/* Send queued output until done or the socket is full. Returns 0, or -1 if
 * the connection is dead. */
static int conn_flush(struct conn *c)
{
    while (buf_avail(&c->out) > 0) {
        ssize_t n = send(c->fd, buf_head(&c->out), buf_avail(&c->out), MSG_NOSIGNAL);
        if (n >= 0) {
            buf_consume(&c->out, (size_t)n);
            c->last_write = ev_now(c->srv->loop);
            if (buf_avail(&c->out) == 0 && c->state == CONN_IDLE)
                c->since = c->last_write; /* idle from now */
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        log_debug("%s: write failed: %s", c->name, strerror(errno));
        return -1;
    }
    buf_shrink(&c->out);
    return 0;
}

static void conn_update_io(struct conn *c)
{
    int ev = 0, room = buf_avail(&c->out) < HTTP_OUT_HIGH;

    switch (c->state) {
    case CONN_IDLE:
    case CONN_READING:
        ev = room ? EV_READ : 0;
        break;
    case CONN_DISPATCHED:
        ev = room && buf_avail(&c->in) < HTTP_IN_HIGH ? EV_READ : 0;
        break;
    case CONN_DRAINING:
    case CONN_LINGER:
        ev = c->peer_eof ? 0 : EV_READ;
        break;
    case CONN_H2:
        ev = room && http2_want_read(c->h2) ? EV_READ : 0;
        break;
    case CONN_CLOSED:
        return;
    }
    if (buf_avail(&c->out) > 0)
        ev |= EV_WRITE;
    if (ev == c->io_events)
        return;
    ev_io_stop(c->srv->loop, &c->io);
    ev_io_set(&c->io, c->fd, ev);
    if (ev)
        ev_io_start(c->srv->loop, &c->io);
    c->io_events = ev;
}

static ev_tstamp after(ev_tstamp t, double timeout)
{
    return timeout > 0 ? t + timeout : 0;
}

static ev_tstamp earliest(ev_tstamp a, ev_tstamp b)
{
    return a == 0 ? b : (b == 0 ? a : MIN(a, b));
}

/* When the current state times out (0: never). */
static ev_tstamp conn_deadline(const struct conn *c)
{
    const struct http_server_config *cfg = &c->srv->cfg;
    int writing = buf_avail(&c->out) > 0;
    ev_tstamp d = 0;

    switch (c->state) {
    case CONN_IDLE:
        d = writing ? 0 : after(c->since, cfg->idle_timeout);
        break;
    case CONN_READING:
        /* The head must arrive in time as a whole; the body must keep moving. */
        d = after(c->dec.phase == DEC_BODY ? c->last_read : c->since, cfg->read_timeout);
        break;
    case CONN_LINGER:
        d = c->since + HTTP_LINGER_TIME;
        break;
    case CONN_H2:
        d = http2_deadline(c->h2);
        break;
    case CONN_DISPATCHED:
    case CONN_DRAINING:
    case CONN_CLOSED:
        break;
    }
    if (writing)
        d = earliest(d, after(c->last_write, cfg->write_timeout));
    return d;
}

/* Lazy: a timer that fires no later than the deadline is left alone, and
 * re-armed from its callback. */
static void conn_arm_timer(struct conn *c)
{
    struct ev_loop *loop = c->srv->loop;
    ev_tstamp d = conn_deadline(c);

    if (d == 0 || (c->timer_at != 0 && c->timer_at <= d))
        return;
    ev_timer_stop(loop, &c->timer);
    ev_timer_set(&c->timer, MAX(d - ev_now(loop), 0.0), 0);
    ev_timer_start(loop, &c->timer);
    c->timer_at = d;
}

static void conn_expire(struct conn *c)
{
    const struct http_server_config *cfg = &c->srv->cfg;
    ev_tstamp now = ev_now(c->srv->loop);
    char msg[96];

    if (buf_avail(&c->out) > 0 && cfg->write_timeout > 0 &&
        now >= c->last_write + cfg->write_timeout) {
        conn_close(c, "write timeout: the client does not read");
    } else if (c->state == CONN_READING) {
        snprintf(msg, sizeof(msg), "request not received within %g s", cfg->read_timeout);
        conn_fail(c, 408, msg);
        conn_service(c);
    } else if (c->state == CONN_H2) {
        http2_expire(c->h2);
        conn_service(c);
    } else {
        conn_close(c, c->state == CONN_IDLE ? "idle timeout" : "linger timeout");
    }
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct conn *c = container_of(w, struct conn, timer);
    ev_tstamp d = conn_deadline(c);

    (void)revents;
    c->timer_at = 0;
    if (d == 0)
        return;
    if (d > ev_now(loop)) {
        conn_arm_timer(c);
        return;
    }
    c->busy = 1;
    conn_expire(c);
    c->busy = 0;
}

/* Serialize HTTP/2 frames while there is room, and send them. When the
 * session is over, drain like a closing HTTP/1 answer. Returns -1 if c was
 * closed. */
static int conn_service_h2(struct conn *c)
{
    for (;;) {
        int was_empty = buf_avail(&c->out) == 0;
        size_t before;

        if (http2_output(c->h2, &c->out, HTTP_OUT_HIGH) < 0) {
            conn_close(c, "HTTP/2 session failed");
            return -1;
        }
        if (was_empty && buf_avail(&c->out) > 0)
            c->last_write = ev_now(c->srv->loop); /* the write timeout counts from here */
        before = buf_avail(&c->out);
        if (conn_flush(c) < 0) {
            conn_close(c, "write failed");
            return -1;
        }
        /* Go on only while the socket takes everything and frames wait. */
        if (before == 0 || buf_avail(&c->out) > 0 || !http2_want_write(c->h2))
            break;
    }
    if (http2_done(c->h2))
        conn_set_state(c, CONN_DRAINING);
    return 0;
}

/* After input or an answer: parse what waits, flush, move on, re-arm. */
static void conn_service(struct conn *c)
{
    struct http_server *srv = c->srv;

    if (c->state == CONN_H2 && conn_service_h2(c) < 0)
        return;
    /* Flushing may make room to parse buffered requests, which queue more. */
    do {
        conn_parse_buffered(c);
        assert(c->state != CONN_CLOSED); /* parsing never closes */
        if (conn_flush(c) < 0) {
            conn_close(c, "write failed");
            return;
        }
    } while (buf_avail(&c->in) > 0 && conn_can_parse(c));
    if (c->state == CONN_DRAINING && buf_avail(&c->out) == 0) {
        if (c->peer_eof) {
            conn_close(c, "closed after the last answer");
            return;
        }
        /* Our FIN tells the client the answer is complete; reading on until
         * its FIN keeps its unread request bytes from turning into an RST
         * that could destroy the answer in flight. */
        if (shutdown(c->fd, SHUT_WR) != 0) {
            conn_close(c, "shutdown failed");
            return;
        }
        conn_set_state(c, CONN_LINGER);
    }
    if (c->state == CONN_IDLE && srv->shutting_down && buf_avail(&c->out) == 0 &&
        buf_avail(&c->in) == 0) {
        conn_close(c, "server shutting down");
        return;
    }
    conn_update_io(c);
    conn_arm_timer(c);
}

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn *c = container_of(w, struct conn, io);

    (void)loop;
    c->busy = 1;
    if (revents & EV_READ)
        conn_read(c);
    if (c->state != CONN_CLOSED)
        conn_service(c);
    c->busy = 0;
}

/* The application lost its client. */
static void request_orphan(struct http_request *r)
{
    r->conn = NULL;
    r->state = HTTP_REQ_ORPHANED;
    if (r->on_cancel)
        r->on_cancel(r->cancel_arg, r); /* may answer, and so free, r */
}

/* The only way a connection ends: stop its watchers now, free it later. */
static void conn_close(struct conn *c, const char *why)
{
    struct http_request *r = c->req;

    if (c->state == CONN_CLOSED)
        return;
    log_debug("%s: closing (%s): %s", c->name, conn_state_name(c->state), why);
    c->req = NULL;
    conn_set_state(c, CONN_CLOSED);
    ev_io_stop(c->srv->loop, &c->io);
    ev_timer_stop(c->srv->loop, &c->timer);
    c->io_events = 0;
    c->timer_at = 0;
    conn_schedule(c);
    if (r)
        request_orphan(r);
    if (c->h2)
        http2_close(c->h2); /* cancels its requests */
}

static void conn_free(struct conn *c)
{
    struct http_server *srv = c->srv;

    assert(c->state == CONN_CLOSED && !c->pending && !c->req);
    dec_clear(&c->dec);
    if (c->fd >= 0 && close(c->fd) != 0) /* -1: handed over as h2c */
        log_debug("%s: close failed: %s", c->name, strerror(errno));
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->refused)
        srv->nrefused--;
    else
        srv->nconns--;
    log_debug("%s: closed", c->name);
    http2_free(c->h2);
    buf_free(&c->in);
    buf_free(&c->out);
    free(c);
}

/* ---- hooks for http2.c ------------------------------------------------------------- */

const struct http_server_config *http_conn_cfg(const struct conn *c)
{
    return &c->srv->cfg;
}

struct ev_loop *http_conn_loop(const struct conn *c)
{
    return c->srv->loop;
}

const char *http_conn_name(const struct conn *c)
{
    return c->name;
}

const char *http_conn_peer(const struct conn *c)
{
    return c->peer;
}

uint64_t http_conn_id(const struct conn *c)
{
    return c->id;
}

int http_conn_shutting_down(const struct conn *c)
{
    return c->srv->shutting_down;
}

void http_conn_wake(struct conn *c)
{
    if (!c->busy && c->state != CONN_CLOSED)
        conn_schedule(c);
}

/* ---- server ------------------------------------------------------------------------ */

static void format_addr(const struct sockaddr_storage *ss, char *out, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";

    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
        snprintf(out, len, "%s:%d", ip, ntohs(a->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        snprintf(out, len, "[%s]:%d", ip, ntohs(a->sin6_port));
    } else if (ss->ss_family == AF_UNIX) {
        snprintf(out, len, "unix");
    } else {
        snprintf(out, len, "unknown");
    }
}

static void server_pause_accept(struct http_server *srv)
{
    ev_io_stop(srv->loop, &srv->tcp_w);
    ev_io_stop(srv->loop, &srv->unix_w);
    /* Set it anew: an expired timer keeps an already-elapsed offset. */
    ev_timer_stop(srv->loop, &srv->accept_pause);
    ev_timer_set(&srv->accept_pause, HTTP_ACCEPT_PAUSE, 0);
    ev_timer_start(srv->loop, &srv->accept_pause);
}

static void server_accept_pause_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct http_server *srv = container_of(w, struct http_server, accept_pause);

    (void)revents;
    if (srv->tcp_fd >= 0)
        ev_io_start(loop, &srv->tcp_w);
    if (srv->unix_fd >= 0)
        ev_io_start(loop, &srv->unix_w);
}

/* Set up a connection for fd; it is serviced from the prepare watcher. */
static void conn_new(struct http_server *srv, int fd, const char *peer, const uint8_t *pre,
                     size_t n)
{
    int refuse = srv->nconns >= srv->cfg.max_conns;
    struct conn *c;

    if (refuse && srv->nrefused >= HTTP_MAX_REFUSING) {
        log_debug("refusing connections faster than they drain: pausing accept");
        if (close(fd) != 0)
            log_debug("close failed: %s", strerror(errno));
        server_pause_accept(srv);
        return;
    }
    c = xcalloc(1, sizeof(*c));
    c->srv = srv;
    c->fd = fd;
    c->id = ++srv->next_id;
    c->state = CONN_IDLE;
    snprintf(c->peer, sizeof(c->peer), "%s", peer);
    snprintf(c->name, sizeof(c->name), "http#%llu %s", (unsigned long long)c->id, c->peer);
    dec_init(&c->dec, srv->cfg.max_body, srv->cfg.max_header_bytes);
    ev_io_init(&c->io, conn_io_cb, fd, 0);
    ev_timer_init(&c->timer, conn_timer_cb, 0, 0);
    c->since = c->last_read = c->last_write = ev_now(srv->loop);
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    c->refused = refuse;
    if (refuse)
        srv->nrefused++;
    else
        srv->nconns++;
    log_debug("%s: accepted", c->name);
    if (refuse)
        conn_fail(c, 503, "too many connections");
    else
        buf_append(&c->in, pre, n);
    /* Adopted bytes come from a server that told HTTP/1.x apart already. */
    c->sniffing = (srv->cfg.on_h2c || srv->cfg.h2c) && !refuse && n == 0;
    conn_schedule(c);
}

static void server_accept(struct http_server *srv, int lfd)
{
    for (int i = 0; i < HTTP_ACCEPTS_PER_EVENT; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        char peer[64];
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC), one = 1;

        if (fd >= 0) {
            format_addr(&ss, peer, sizeof(peer));
            if (ss.ss_family != AF_UNIX &&
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
                log_debug("set TCP_NODELAY for %s failed: %s", peer, strerror(errno));
            conn_new(srv, fd, peer, NULL, 0);
            if (ev_is_active(&srv->accept_pause))
                return;
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        log_warn("accept failed: %s", strerror(errno));
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
            server_pause_accept(srv); /* level-triggered: retrying now would spin */
        return;
    }
}

static void server_tcp_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    server_accept(container_of(w, struct http_server, tcp_w), w->fd);
}

static void server_unix_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    server_accept(container_of(w, struct http_server, unix_w), w->fd);
}

static void server_prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct http_server *srv = container_of(w, struct http_server, prepare);
    struct conn *c;

    (void)revents;
    while ((c = srv->pending) != NULL) {
        srv->pending = c->pend_next;
        c->pending = 0;
        if (c->state == CONN_CLOSED) {
            conn_free(c);
            continue;
        }
        c->busy = 1;
        conn_service(c);
        c->busy = 0;
    }
    ev_prepare_stop(loop, w);
}

static int listen_tcp_on(const struct addrinfo *ai, int reuse_port)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    int one = 1, err;

    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        (reuse_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
        err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

/* Bind the first address host resolves to. Returns the fd or -errno (logged). */
static int server_bind_tcp(struct http_server *srv, const char *listen_str, char *bound,
                           size_t bound_len)
{
    struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res, *ai;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char host[256], portstr[16];
    int fd = -EADDRNOTAVAIL, rv, port;

    if (util_split_hostport(listen_str, host, sizeof(host), &port) != 0) {
        log_error("listen on %s failed: expected HOST:PORT", listen_str);
        return -EINVAL;
    }
    snprintf(portstr, sizeof(portstr), "%d", port);
    rv = getaddrinfo(host, portstr, &hints, &res);
    if (rv != 0) {
        log_error("listen on %s failed: %s", listen_str, gai_strerror(rv));
        return -EADDRNOTAVAIL;
    }
    for (ai = res; ai && fd < 0; ai = ai->ai_next)
        fd = listen_tcp_on(ai, srv->cfg.reuse_port);
    freeaddrinfo(res);
    if (fd < 0) {
        log_error("listen on %s failed: %s", listen_str, strerror(-fd));
        return fd;
    }
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
        rv = -errno;
        log_error("listen on %s failed: getsockname: %s", listen_str, strerror(errno));
        close(fd);
        return rv;
    }
    format_addr(&ss, bound, bound_len);
    srv->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

/* Remove path if it is a socket nobody accepts on. Returns 0 or -errno. */
static int unix_clear_stale(const char *path, const struct sockaddr_un *sa)
{
    struct stat st;
    int fd, rv = 0;

    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode))
        return -EEXIST;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0 || errno == EAGAIN)
        rv = -EADDRINUSE; /* someone is listening (EAGAIN: with a full backlog) */
    else if (errno != ECONNREFUSED && errno != ENOENT)
        rv = -errno;
    else if (unlink(path) != 0 && errno != ENOENT)
        rv = -errno;
    close(fd);
    return rv;
}

static int server_bind_unix(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd, rv;

    if (strlen(path) >= sizeof(sa.sun_path)) {
        log_error("listen on unix:%s failed: path too long", path);
        return -EINVAL;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    rv = unix_clear_stale(path, &sa);
    if (rv < 0) {
        log_error("listen on unix:%s failed: %s", path,
                  rv == -EADDRINUSE ? "another process accepts on it"
                  : rv == -EEXIST   ? "the path exists and is not a socket"
                                    : strerror(-rv));
        return rv;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (const struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        listen(fd, SOMAXCONN) != 0) {
        rv = -errno;
        log_error("listen on unix:%s failed: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return rv;
    }
    return fd;
}

/* A peer that vanishes must not kill the process (send uses MSG_NOSIGNAL,
 * but other code in the process may write to sockets). Leave any handler the
 * program installed. */
static void ignore_sigpipe(void)
{
    struct sigaction sa;

    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
        sa.sa_handler = SIG_IGN;
        (void)sigaction(SIGPIPE, &sa, NULL);
    }
}

static void server_defaults(struct http_server_config *cfg)
{
    if (cfg->max_body == 0)
        cfg->max_body = HTTP_DEFAULT_MAX_BODY;
    if (cfg->max_header_bytes == 0)
        cfg->max_header_bytes = HTTP_DEFAULT_MAX_HEADERS;
    if (cfg->idle_timeout == 0)
        cfg->idle_timeout = HTTP_DEFAULT_IDLE_TIMEOUT;
    if (cfg->read_timeout == 0)
        cfg->read_timeout = HTTP_DEFAULT_READ_TIMEOUT;
    if (cfg->write_timeout == 0)
        cfg->write_timeout = HTTP_DEFAULT_WRITE_TIMEOUT;
    if (cfg->max_conns == 0)
        cfg->max_conns = HTTP_DEFAULT_MAX_CONNS;
    cfg->listen = NULL; /* not kept */
    cfg->unix_path = NULL;
}

static int server_listen(struct http_server *srv, const struct http_server_config *cfg)
{
    char bound[INET6_ADDRSTRLEN + 16];

    if (cfg->listen) {
        srv->tcp_fd = server_bind_tcp(srv, cfg->listen, bound, sizeof(bound));
        if (srv->tcp_fd < 0)
            return srv->tcp_fd;
        ev_io_init(&srv->tcp_w, server_tcp_cb, srv->tcp_fd, EV_READ);
        ev_io_start(srv->loop, &srv->tcp_w);
        log_info("listening on %s (http)", bound);
    }
    if (cfg->unix_path) {
        srv->unix_fd = server_bind_unix(cfg->unix_path);
        if (srv->unix_fd < 0)
            return srv->unix_fd;
        srv->unix_path = xstrdup(cfg->unix_path);
        ev_io_init(&srv->unix_w, server_unix_cb, srv->unix_fd, EV_READ);
        ev_io_start(srv->loop, &srv->unix_w);
        log_info("listening on unix:%s (http)", cfg->unix_path);
    }
    return 0;
}

static void server_stop_listening(struct http_server *s)
{
    ev_timer_stop(s->loop, &s->accept_pause);
    if (s->tcp_fd >= 0) {
        ev_io_stop(s->loop, &s->tcp_w);
        if (close(s->tcp_fd) != 0)
            log_warn("close listener failed: %s", strerror(errno));
        s->tcp_fd = -1;
    }
    if (s->unix_fd >= 0) {
        ev_io_stop(s->loop, &s->unix_w);
        if (close(s->unix_fd) != 0)
            log_warn("close listener failed: %s", strerror(errno));
        s->unix_fd = -1;
        if (unlink(s->unix_path) != 0 && errno != ENOENT)
            log_warn("remove unix:%s failed: %s", s->unix_path, strerror(errno));
    }
}

int http_server_start(struct ev_loop *loop, const struct http_server_config *cfg,
                      struct http_server **out)
{
    struct http_server *srv;
    int rv;

    if (!cfg->on_request) {
        log_error("start HTTP server failed: on_request is required");
        return -EINVAL;
    }
    srv = xcalloc(1, sizeof(*srv));
    srv->loop = loop;
    srv->cfg = *cfg;
    server_defaults(&srv->cfg);
    srv->tcp_fd = srv->unix_fd = -1;
    ev_prepare_init(&srv->prepare, server_prepare_cb);
    ev_timer_init(&srv->accept_pause, server_accept_pause_cb, HTTP_ACCEPT_PAUSE, 0);
    rv = server_listen(srv, cfg);
    if (rv < 0) {
        server_stop_listening(srv);
        free(srv->unix_path);
        free(srv);
        return rv;
    }
    ignore_sigpipe();
    *out = srv;
    return 0;
}

int http_server_port(const struct http_server *s)
{
    return s->port;
}

unsigned http_server_conn_count(const struct http_server *s)
{
    return s->nconns + s->nrefused;
}

int http_server_adopt(struct http_server *s, int fd, const uint8_t *pre, size_t n, const char *peer)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char addr[64];
    int fl = fcntl(fd, F_GETFL), err;

    if (s->shutting_down || fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
        err = s->shutting_down ? -ESHUTDOWN : -errno;
        if (err != -ESHUTDOWN)
            log_warn("adopt connection failed: %s", strerror(-err));
        if (close(fd) != 0)
            log_debug("close failed: %s", strerror(errno));
        return err;
    }
    if (!peer) {
        if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0)
            format_addr(&ss, addr, sizeof(addr));
        else
            snprintf(addr, sizeof(addr), "unknown");
        peer = addr;
    }
    conn_new(s, fd, peer, pre, n);
    return 0;
}

void http_server_shutdown(struct http_server *s)
{
    if (s->shutting_down)
        return;
    s->shutting_down = 1;
    server_stop_listening(s);
    log_info("shutting down HTTP server: %u connection(s) open", http_server_conn_count(s));
    /* Idle ones close (once their output is out); the others finish their
     * request and close after its answer. */
    for (struct conn *c = s->conns; c; c = c->next) {
        if (c->state == CONN_H2)
            http2_shutdown(c->h2); /* GOAWAY; open streams finish */
        if (c->state == CONN_IDLE || c->state == CONN_H2)
            conn_schedule(c);
    }
}

void http_server_free(struct http_server *s)
{
    if (!s)
        return;
    server_stop_listening(s);
    for (struct conn *c = s->conns; c; c = c->next)
        conn_close(c, "server stopped");
    /* Every connection is closed, so nothing can be scheduled again. */
    while (s->pending) {
        s->pending->pending = 0;
        s->pending = s->pending->pend_next;
    }
    while (s->conns)
        conn_free(s->conns);
    ev_prepare_stop(s->loop, &s->prepare);
    free(s->unix_path);
    free(s);
}

/* ---- request API ---------------------------------------------------------------------- */

const char *http_request_method(const struct http_request *r)
{
    return http_method_str(r->method);
}

const char *http_request_target(const struct http_request *r)
{
    return req_str(r, r->target);
}

const char *http_request_path(const struct http_request *r)
{
    return req_str(r, r->path);
}

const char *http_request_query(const struct http_request *r)
{
    return req_str(r, r->query);
}

const char *http_request_header(const struct http_request *r, const char *name)
{
    unsigned n;
    return req_field(r, name, &n);
}

unsigned http_request_header_count(const struct http_request *r)
{
    return r->nfields;
}

void http_request_header_at(const struct http_request *r, unsigned i, const char **name,
                            const char **value)
{
    assert(i < r->nfields);
    *name = req_str(r, r->fields[i].name);
    *value = req_str(r, r->fields[i].value);
}

const uint8_t *http_request_body(const struct http_request *r, size_t *len)
{
    *len = buf_avail(&r->body);
    return r->body.data ? buf_head(&r->body) : (const uint8_t *)"";
}

int http_request_keep_alive(const struct http_request *r)
{
    return r->keep_alive;
}

int http_request_minor(const struct http_request *r)
{
    return r->minor;
}

const char *http_request_peer(const struct http_request *r)
{
    return r->peer;
}

uint64_t http_request_conn_id(const struct http_request *r)
{
    return r->conn_id;
}

int http_request_version(const struct http_request *r)
{
    return r->version;
}

int http_request_alive(const struct http_request *r)
{
    if (r->version == 20)
        return http2_request_alive(r);
    return r->state == HTTP_REQ_DISPATCHED && r->conn && r->conn->state == CONN_DISPATCHED;
}

void http_request_on_cancel(struct http_request *r, http_cancel_cb cb, void *arg)
{
    r->on_cancel = cb;
    r->cancel_arg = arg;
}

void http_respond(struct http_request *r, int status, const char *content_type, const void *body,
                  size_t len, const struct http_header *extra, size_t nextra)
{
    struct conn *c = r->conn;
    struct answer a = {.status = status,
                       .content_type = content_type,
                       .body = body,
                       .len = len,
                       .extra = extra,
                       .nextra = nextra,
                       .head_only = r->method == HTTP_HEAD,
                       .minor = r->minor};

    if (r->version == 20) {
        http2_respond(r, status, content_type, body, len, extra, nextra);
        return;
    }
    if (r->state == HTTP_REQ_ORPHANED) {
        http_req_free(r);
        return;
    }
    assert(r->state == HTTP_REQ_DISPATCHED && c && c->req == r && c->state == CONN_DISPATCHED);
    if (status < 200 || status > 599) {
        log_error("%s: respond failed: status %d is not a final status", c->name, status);
        static const char oops[] = "{\"message\":\"internal error\"}";
        a = (struct answer){.status = 500,
                            .content_type = "application/json",
                            .body = oops,
                            .len = sizeof(oops) - 1,
                            .head_only = a.head_only,
                            .minor = a.minor};
    }
    a.close = !r->keep_alive || c->srv->shutting_down;
    conn_out_answer(c, &a);
    c->req = NULL;
    http_req_free(r);
    conn_set_state(c, a.close ? CONN_DRAINING : CONN_IDLE);
    if (a.close)
        buf_reset(&c->in); /* pipelined requests after a closing answer are dropped */
    if (!c->busy)
        conn_schedule(c);
}

void http_respond_error_code(struct http_request *r, int status, const char *code,
                             const char *message, const struct http_header *extra, size_t nextra)
{
    struct buf body = {0};

    http_error_body(&body, message);
    if (code) {
        body.len--; /* the closing brace */
        buf_append(&body, ",\"code\":", 8);
        http_json_string(&body, code, strlen(code));
        buf_append(&body, "}", 1);
    }
    http_respond(r, status, "application/json", body.data, body.len, extra, nextra);
    buf_free(&body);
}

void http_respond_error(struct http_request *r, int status, const char *message)
{
    http_respond_error_code(r, status, NULL, message, NULL, 0);
}
