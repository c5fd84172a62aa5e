/* boomerang: the Hrana-over-HTTP JSON protocol (research/hrana.md), as spoken
 * by @libsql/client 0.18 and Drizzle: decode a pipeline request body into C
 * structs, and write the JSON of results.
 *
 *   POST /v2/pipeline body ─▶ hrana_pipeline_decode() ─▶ struct hrana_pipeline
 *                                                        (requests, statements, values,
 *                                                         batch steps and conditions)
 *   results ─▶ hrana_stmt_out_* / hrana_json_* ─▶ JSON text appended to a struct buf
 *
 * The decoder is strict where the protocol is (research/hrana.md §1.10): an
 * unknown request, condition or value type, `sql` and `sql_id` both or
 * neither, a condition naming the same or a later step, an integer value that
 * is not a decimal string in the int64 range (a whole JSON number is also
 * accepted), bad base64 (padded, unpadded and URL-safe are accepted), a NUL
 * character in sql, a name or the baton, or a Hrana 3
 * feature (get_autocommit, is_autocommit) on version 2 fails the whole
 * pipeline with a message for a 400 answer. It ignores fields it does not
 * know (the spec requires it), and accepts `replication_index` anywhere.
 *
 * Memory: everything a pipeline points to (strings, arrays) belongs to the
 * pipeline and is freed by hrana_pipeline_free(). Text values keep their
 * length, so embedded NULs survive; they are also NUL-terminated.
 *
 * Output: the writers append compact JSON to a struct buf and never fail
 * (buf aborts on OOM). Integers go out as decimal strings, floats as JSON
 * numbers (a non-finite REAL, which JSON cannot carry, goes out as null),
 * blobs as padded base64, text with JSON escapes (invalid UTF-8 becomes
 * U+FFFD).
 *
 * Threading: no shared state; any thread. */
#ifndef BOOMERANG_HRANA_H
#define BOOMERANG_HRANA_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/util.h"

/* ---- decoded requests ----------------------------------------------------------- */

enum hrana_value_type {
    HRANA_VALUE_NULL,
    HRANA_VALUE_INTEGER,
    HRANA_VALUE_FLOAT,
    HRANA_VALUE_TEXT,
    HRANA_VALUE_BLOB,
};

struct hrana_value {
    enum hrana_value_type type;
    int64_t integer;
    double real;
    const char *bytes; /* TEXT (NUL-terminated, may hold NULs) or BLOB data; len bytes */
    size_t len;
};

struct hrana_named_arg {
    const char *name; /* as sent: "id", ":id", "@id", "$id" */
    struct hrana_value value;
};

struct hrana_stmt {
    const char *sql; /* NULL when sql_id names a stored text */
    int has_sql_id;
    int32_t sql_id;
    struct hrana_value *args;
    size_t n_args;
    struct hrana_named_arg *named_args;
    size_t n_named_args;
    int want_rows; /* 1 when absent (Hrana 3 default) */
};

enum hrana_cond_type {
    HRANA_COND_OK,            /* step ran and succeeded */
    HRANA_COND_ERROR,         /* step ran and failed */
    HRANA_COND_NOT,           /* conds[0] */
    HRANA_COND_AND,           /* all of conds (true when empty) */
    HRANA_COND_OR,            /* any of conds (false when empty) */
    HRANA_COND_IS_AUTOCOMMIT, /* version 3 only */
};

struct hrana_cond {
    enum hrana_cond_type type;
    uint32_t step; /* OK, ERROR: always < the index of the step holding the condition */
    struct hrana_cond *conds;
    size_t n_conds;
};

struct hrana_step {
    struct hrana_cond *cond; /* NULL: run unconditionally */
    struct hrana_stmt stmt;
};

enum hrana_req_type {
    HRANA_REQ_EXECUTE,
    HRANA_REQ_BATCH,
    HRANA_REQ_SEQUENCE,
    HRANA_REQ_DESCRIBE,
    HRANA_REQ_STORE_SQL,
    HRANA_REQ_CLOSE_SQL,
    HRANA_REQ_CLOSE,
    HRANA_REQ_GET_AUTOCOMMIT, /* version 3 only */
};

struct hrana_req {
    enum hrana_req_type type;
    struct hrana_stmt stmt;   /* EXECUTE */
    struct hrana_step *steps; /* BATCH */
    size_t n_steps;
    const char *sql; /* SEQUENCE, DESCRIBE (or sql_id), STORE_SQL (always) */
    int has_sql_id;  /* SEQUENCE, DESCRIBE; always 1 for STORE_SQL, CLOSE_SQL */
    int32_t sql_id;
};

struct hrana_pipeline {
    const char *baton; /* NULL when absent or null */
    struct hrana_req *reqs;
    size_t n_reqs;
    struct hrana_arena *arena; /* private: owns every pointer above */
};

/* Limits on what one pipeline may hold (beyond the HTTP body limit). */
#define HRANA_MAX_REQUESTS 1024  /* requests per pipeline */
#define HRANA_MAX_STEPS    4096  /* steps per batch */
#define HRANA_MAX_ARGS     32766 /* SQLITE_MAX_VARIABLE_NUMBER's default */
#define HRANA_MAX_DEPTH    32    /* nesting of conditions */

/* Decode a pipeline request body (JSON). version is 2 or 3 (the endpoint).
 * Returns 0 and *out (free with hrana_pipeline_free), or -1 with a
 * human-readable reason in err[0..errlen) (for a 400 PROTOCOL_ERROR answer),
 * e.g. "requests[2]: unknown request type \"foo\"". */
int MUST_CHECK hrana_pipeline_decode(const uint8_t *body, size_t len, int version,
                                     struct hrana_pipeline **out, char *err, size_t errlen);

void hrana_pipeline_free(struct hrana_pipeline *p);

/* Name of a request type as on the wire ("execute", "batch", ...). */
const char *hrana_req_type_name(enum hrana_req_type t);

/* Evaluate cond for the step being decided. ran[i] is 1 if step i ran,
 * failed[i] is 1 if it ran and failed (indexes < the current step);
 * autocommit is the connection's state for IS_AUTOCOMMIT. NULL cond is true. */
int hrana_cond_eval(const struct hrana_cond *cond, const uint8_t *ran, const uint8_t *failed,
                    int autocommit);

/* ---- errors -------------------------------------------------------------------- */

/* A per-request error, for {"type":"error","error":{"message":..,"code":..}}
 * and for batch step_errors. */
struct hrana_error {
    char code[48];     /* "SQLITE_CONSTRAINT", "TIMEOUT", "PROXY_ERROR", ... */
    char message[512]; /* truncated if longer */
};

/* Fill e (printf-style message). */
void hrana_error_set(struct hrana_error *e, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Append {"message":"...","code":"..."} (code omitted when ""). */
void hrana_json_error(struct buf *out, const struct hrana_error *e);

/* ---- writing results ----------------------------------------------------------- */

/* Values, as Hrana JSON objects: {"type":"null"}, {"type":"integer","value":"-5"},
 * {"type":"float","value":1.5}, {"type":"text","value":"..."},
 * {"type":"blob","base64":"..."}. */
void hrana_json_null(struct buf *out);
void hrana_json_integer(struct buf *out, int64_t v);
void hrana_json_float(struct buf *out, double v);
void hrana_json_text(struct buf *out, const char *s, size_t len);
void hrana_json_blob(struct buf *out, const void *data, size_t len);

/* Append a JSON string literal (quotes included), escaped; invalid UTF-8
 * becomes U+FFFD. */
void hrana_json_string(struct buf *out, const char *s, size_t len);

/* A StmtResult being written:
 *
 *   hrana_stmt_out_begin(&so, out);
 *   hrana_stmt_out_col(&so, "id", "INTEGER");      (each column, before any row)
 *   hrana_stmt_out_row(&so);                        (each row, then its values:)
 *   hrana_stmt_out_integer(&so, 1); hrana_stmt_out_text(&so, "a", 1);
 *   hrana_stmt_out_end(&so, affected, has_rowid, rowid);
 *
 * writes {"cols":[{"name":"id","decltype":"INTEGER"}],"rows":[[{...},{...}]],
 * "affected_row_count":N,"last_insert_rowid":"N"|null,"rows_read":0,
 * "rows_written":0,"query_duration_ms":0}. A NULL decltype is written null.
 * hrana_stmt_out_abort() takes back everything written since begin (for a
 * statement that failed half-way). bytes() is what this result has added to
 * out so far, for response limits. */
struct hrana_stmt_out {
    struct buf *out;
    size_t start; /* where the result begins: buf_avail(out) at begin */
    size_t ncols; /* columns written */
    size_t nrows; /* rows begun */
    size_t nvals; /* values in the current row */
    int state;    /* private */
};

void hrana_stmt_out_begin(struct hrana_stmt_out *so, struct buf *out);
void hrana_stmt_out_col(struct hrana_stmt_out *so, const char *name, const char *decltype);
void hrana_stmt_out_row(struct hrana_stmt_out *so);
void hrana_stmt_out_null(struct hrana_stmt_out *so);
void hrana_stmt_out_integer(struct hrana_stmt_out *so, int64_t v);
void hrana_stmt_out_float(struct hrana_stmt_out *so, double v);
void hrana_stmt_out_text(struct hrana_stmt_out *so, const char *s, size_t len);
void hrana_stmt_out_blob(struct hrana_stmt_out *so, const void *data, size_t len);
void hrana_stmt_out_end(struct hrana_stmt_out *so, uint64_t affected_row_count, int has_rowid,
                        int64_t last_insert_rowid);
void hrana_stmt_out_abort(struct hrana_stmt_out *so);
size_t hrana_stmt_out_bytes(const struct hrana_stmt_out *so);

/* An empty StmtResult (BEGIN, COMMIT, ... : no columns, no rows, 0 affected,
 * null rowid). */
void hrana_json_empty_result(struct buf *out);

#endif
