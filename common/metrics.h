/* boomerang: a small Prometheus metrics registry (text exposition format 0.0.4).
 *
 * A registry holds families (one name, HELP and TYPE each) of series (one
 * fixed label set each): counters, gauges (set by the program, or computed by
 * a callback when rendered), histograms with fixed buckets, and collectors
 * that emit a dynamic set of samples at render time (for per-subscriber
 * series that come and go). metrics_render() writes the whole registry as
 *
 *   # HELP boomerang_fallbacks_total Reads that fell back, by kind.
 *   # TYPE boomerang_fallbacks_total counter
 *   boomerang_fallbacks_total{kind="primary"} 3
 *   boomerang_fallbacks_total{kind="stale"} 0
 *
 * Families render in registration order, series in registration order within
 * their family.
 *
 * Threading: updates (add, set, observe) are lock-free C11 atomics and may
 * come from any thread (the primary's writer thread counts commits).
 * Registration and rendering take the registry's mutex, so they may also run
 * on any thread; gauge and collector callbacks run inside metrics_render(),
 * on its thread, with that mutex held: they must not register metrics.
 * A histogram read while observations land may show a _sum that lags its
 * buckets by the observations in flight; _count always equals the +Inf bucket.
 *
 * Labels are passed as a NULL-terminated array of alternating names and
 * values, e.g. (const char *const[]){"kind", "primary", NULL}, or NULL for
 * none. Registration copies every string.
 *
 * Misuse at registration (an invalid metric or label name, an odd label
 * array, a family registered again with another type, the same label set
 * twice, unsorted buckets) is a programming error: it logs and aborts, so it
 * shows up on the first run, and registration functions never fail
 * otherwise. */
#ifndef BOOMERANG_METRICS_H
#define BOOMERANG_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

/* The content-type of a rendered registry (for the HTTP response). */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

struct metrics;
struct metrics_counter;
struct metrics_gauge;
struct metrics_histogram;
struct metrics_sink;

enum metrics_type {
    METRICS_COUNTER,
    METRICS_GAUGE,
    METRICS_HISTOGRAM,
};

/* A computed gauge: returns the current value (NaN is rendered as NaN). */
typedef double (*metrics_gauge_cb)(void *arg);
/* A collector: calls metrics_sample() once per series it has right now. */
typedef void (*metrics_collect_cb)(void *arg, struct metrics_sink *sink);

/* Latency buckets in seconds, 100 us to 10 s (16 bounds), for
 * metrics_histogram_new(). */
#define METRICS_LATENCY_NBUCKETS 16
extern const double metrics_latency_buckets[METRICS_LATENCY_NBUCKETS];

/* A new empty registry; never fails (aborts on OOM). */
struct metrics *metrics_new(void);
/* Free the registry and every series in it (NULL is fine). No update may run
 * concurrently, and every handle it returned becomes invalid. */
void metrics_free(struct metrics *m);

/* ---- counters: monotonically increasing integers --------------------------------- */

/* Register a counter series at 0. name should end in _total. help is the
 * family's HELP text (the first registration's text wins). */
struct metrics_counter *metrics_counter_new(struct metrics *m, const char *name, const char *help,
                                            const char *const *labels);
void metrics_counter_add(struct metrics_counter *c, uint64_t n);
void metrics_counter_inc(struct metrics_counter *c);
uint64_t metrics_counter_get(const struct metrics_counter *c);

/* ---- gauges: values that go up and down ----------------------------------------- */

/* Register a gauge series at 0. */
struct metrics_gauge *metrics_gauge_new(struct metrics *m, const char *name, const char *help,
                                        const char *const *labels);
void metrics_gauge_set(struct metrics_gauge *g, double v);
/* Atomically add delta (may be negative). */
void metrics_gauge_add(struct metrics_gauge *g, double delta);
double metrics_gauge_get(const struct metrics_gauge *g);

/* Register a gauge series whose value fn(arg) computes at render time. arg is
 * borrowed and must outlive the registry (or stay valid while rendering). */
void metrics_gauge_fn_new(struct metrics *m, const char *name, const char *help,
                          const char *const *labels, metrics_gauge_cb fn, void *arg);

/* ---- histograms ----------------------------------------------------------------- */

/* Register a histogram series with upper bounds bounds[0..nbounds) (finite,
 * strictly increasing, copied); a +Inf bucket is implied. */
struct metrics_histogram *metrics_histogram_new(struct metrics *m, const char *name,
                                                const char *help, const char *const *labels,
                                                const double *bounds, size_t nbounds);
/* Count one observation (NaN is ignored). */
void metrics_histogram_observe(struct metrics_histogram *h, double v);

/* ---- collectors: series decided at render time ----------------------------------- */

/* Register a family (METRICS_COUNTER or METRICS_GAUGE) whose samples fn
 * emits when rendered, e.g. one gauge per connected subscriber. The family
 * name must not be used by other registrations. arg as for gauge callbacks. */
void metrics_collect_new(struct metrics *m, const char *name, const char *help,
                         enum metrics_type type, metrics_collect_cb fn, void *arg);
/* From a collector: one sample with labels (as above; values are escaped
 * here). A sample with an invalid label name is dropped and logged. */
void metrics_sample(struct metrics_sink *sink, const char *const *labels, double value);

/* ---- rendering ------------------------------------------------------------------ */

/* Append the registry in text format 0.0.4 to out (HELP and TYPE lines, one
 * line per sample, a trailing newline). */
void metrics_render(struct metrics *m, struct buf *out);

#endif
