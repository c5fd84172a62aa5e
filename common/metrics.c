/* boomerang: a small Prometheus metrics registry (text exposition format 0.0.4).
 *
 * Format (https://prometheus.io/docs/instrumenting/exposition_formats/):
 *   # HELP <name> <help, with \ and newline escaped>
 *   # TYPE <name> counter|gauge|histogram
 *   <name>{<label>="<value, with \ " and newline escaped>",...} <value>
 * A histogram series renders cumulative <name>_bucket{...,le="<bound>"}
 * lines ending with le="+Inf", then <name>_sum and <name>_count.
 *
 * Storage: each series is a struct with its atomics; gauges and the
 * histogram sum keep a double's bits in a 64-bit atomic (C11 has no portable
 * lock-free atomic double arithmetic), updated by compare-and-swap. */
#include "common/metrics.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"

const double metrics_latency_buckets[METRICS_LATENCY_NBUCKETS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};

enum series_kind {
    SERIES_COUNTER,
    SERIES_GAUGE,
    SERIES_GAUGE_FN,
    SERIES_HISTOGRAM,
    SERIES_COLLECT,
};

struct family;

struct series {
    enum series_kind kind;
    struct family *fam;
    struct series *next; /* fam->series, in registration order */
    char *labels;        /* rendered `a="x",b="y"`, or "" */
};

struct metrics_counter {
    struct series base;
    atomic_uint_fast64_t value;
};

struct metrics_gauge {
    struct series base;
    atomic_uint_fast64_t bits; /* the double's bit pattern */
    metrics_gauge_cb fn;       /* SERIES_GAUGE_FN only */
    void *arg;
};

struct metrics_histogram {
    struct series base;
    size_t nbounds;
    double *bounds;
    atomic_uint_fast64_t *counts; /* per bucket (not cumulative), nbounds + 1 */
    atomic_uint_fast64_t sum_bits;
};

struct collector {
    struct series base;
    metrics_collect_cb fn;
    void *arg;
};

struct family {
    char *name;
    char *help;
    enum metrics_type type;
    int collected; /* owned by one collector */
    struct series *series, **tail;
    struct family *next;
};

struct metrics {
    pthread_mutex_t mu;
    struct family *families, **tail;
};

struct metrics_sink {
    struct buf *out;
    const struct family *fam;
};

/* ---- doubles in atomics ---------------------------------------------------------- */

static uint64_t dbits(double v)
{
    uint64_t b;
    memcpy(&b, &v, sizeof(b));
    return b;
}

static double bitsd(uint64_t b)
{
    double v;
    memcpy(&v, &b, sizeof(v));
    return v;
}

static void atomic_add_double(atomic_uint_fast64_t *a, double delta)
{
    uint_fast64_t old = atomic_load_explicit(a, memory_order_relaxed);

    while (!atomic_compare_exchange_weak_explicit(a, &old, dbits(bitsd(old) + delta),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

/* ---- validation and escaping ------------------------------------------------------ */

static int valid_name(const char *s, int colons)
{
    if (!s || !*s || (*s >= '0' && *s <= '9'))
        return 0;
    for (; *s; s++) {
        int ok = (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
                 *s == '_' || (colons && *s == ':');
        if (!ok)
            return 0;
    }
    return 1;
}

/* Append s with backslash and newline escaped, and quotes too if quote. */
static void append_escaped(struct buf *b, const char *s, int quote)
{
    for (; *s; s++) {
        if (*s == '\\')
            buf_append(b, "\\\\", 2);
        else if (*s == '\n')
            buf_append(b, "\\n", 2);
        else if (quote && *s == '"')
            buf_append(b, "\\\"", 2);
        else
            buf_append(b, s, 1);
    }
}

/* Render labels to `a="x",b="y"` in b (not NUL-terminated). Returns 0, or
 * -1 if a name is invalid or reserved, or the array has an odd length. */
static int render_labels(struct buf *b, const char *const *labels, int histogram)
{
    for (size_t i = 0; labels && labels[i]; i += 2) {
        const char *name = labels[i], *value = labels[i + 1];

        if (!value || !valid_name(name, 0) || strncmp(name, "__", 2) == 0 ||
            (histogram && strcmp(name, "le") == 0))
            return -1;
        if (i > 0)
            buf_append(b, ",", 1);
        buf_append(b, name, strlen(name));
        buf_append(b, "=\"", 2);
        append_escaped(b, value, 1);
        buf_append(b, "\"", 1);
    }
    return 0;
}

/* Shortest text that reads back as v, in the spellings Prometheus parses. */
static void format_double(char *out, size_t len, double v)
{
    if (isnan(v)) {
        snprintf(out, len, "NaN");
    } else if (isinf(v)) {
        snprintf(out, len, v > 0 ? "+Inf" : "-Inf");
    } else if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(out, len, "%.0f", v);
    } else {
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(out, len, "%.*g", prec, v);
            if (strtod(out, NULL) == v)
                break;
        }
    }
}

static void append_double(struct buf *b, double v)
{
    char tmp[40];

    format_double(tmp, sizeof(tmp), v);
    buf_append(b, tmp, strlen(tmp));
}

static void append_u64(struct buf *b, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof(tmp), "%" PRIu64, v);

    buf_append(b, tmp, (size_t)n);
}

/* ---- registration ------------------------------------------------------------------ */

static const char *type_name(enum metrics_type t)
{
    static const char *const names[] = {"counter", "gauge", "histogram"};
    return names[t];
}

static void misuse(const char *name, const char *why)
{
    log_error("register metric %s failed: %s", name ? name : "(null)", why);
    abort();
}

static struct family *family_get(struct metrics *m, const char *name, const char *help,
                                 enum metrics_type type)
{
    struct family *f;

    if (!valid_name(name, 1))
        misuse(name, "invalid metric name");
    for (f = m->families; f; f = f->next) {
        if (strcmp(f->name, name) != 0)
            continue;
        if (f->type != type)
            misuse(name, "registered before with another type");
        if (f->collected)
            misuse(name, "the family belongs to a collector");
        return f;
    }
    f = xcalloc(1, sizeof(*f));
    f->name = xstrdup(name);
    f->help = xstrdup(help ? help : "");
    f->type = type;
    f->tail = &f->series;
    *m->tail = f;
    m->tail = &f->next;
    return f;
}

/* Link s into its family under the lock; aborts on a bad or repeated label set. */
static void series_add(struct metrics *m, struct series *s, enum series_kind kind, const char *name,
                       const char *help, enum metrics_type type, const char *const *labels)
{
    struct buf lb = {0};

    if (render_labels(&lb, labels, type == METRICS_HISTOGRAM) != 0)
        misuse(name, "invalid label names or an odd label array");
    buf_append(&lb, "", 1);
    pthread_mutex_lock(&m->mu);
    s->fam = family_get(m, name, help, type);
    for (const struct series *o = s->fam->series; o; o = o->next) {
        if (strcmp(o->labels, (const char *)lb.data) == 0)
            misuse(name, "this label set is registered already");
    }
    s->kind = kind;
    s->labels = xstrdup((const char *)lb.data);
    *s->fam->tail = s;
    s->fam->tail = &s->next;
    pthread_mutex_unlock(&m->mu);
    buf_free(&lb);
}

struct metrics *metrics_new(void)
{
    struct metrics *m = xcalloc(1, sizeof(*m));

    pthread_mutex_init(&m->mu, NULL);
    m->tail = &m->families;
    return m;
}

static void series_free(struct series *s)
{
    free(s->labels);
    if (s->kind == SERIES_HISTOGRAM) {
        struct metrics_histogram *h = container_of(s, struct metrics_histogram, base);
        free(h->bounds);
        free((void *)h->counts);
    }
    free(s); /* base is the first member of every series type */
}

void metrics_free(struct metrics *m)
{
    struct family *f, *fnext;

    if (!m)
        return;
    for (f = m->families; f; f = fnext) {
        struct series *s, *snext;
        fnext = f->next;
        for (s = f->series; s; s = snext) {
            snext = s->next;
            series_free(s);
        }
        free(f->name);
        free(f->help);
        free(f);
    }
    pthread_mutex_destroy(&m->mu);
    free(m);
}

struct metrics_counter *metrics_counter_new(struct metrics *m, const char *name, const char *help,
                                            const char *const *labels)
{
    struct metrics_counter *c = xcalloc(1, sizeof(*c));

    atomic_init(&c->value, 0);
    series_add(m, &c->base, SERIES_COUNTER, name, help, METRICS_COUNTER, labels);
    return c;
}

void metrics_counter_add(struct metrics_counter *c, uint64_t n)
{
    atomic_fetch_add_explicit(&c->value, n, memory_order_relaxed);
}

void metrics_counter_inc(struct metrics_counter *c)
{
    metrics_counter_add(c, 1);
}

uint64_t metrics_counter_get(const struct metrics_counter *c)
{
    return atomic_load_explicit(&c->value, memory_order_relaxed);
}

struct metrics_gauge *metrics_gauge_new(struct metrics *m, const char *name, const char *help,
                                        const char *const *labels)
{
    struct metrics_gauge *g = xcalloc(1, sizeof(*g));

    atomic_init(&g->bits, dbits(0.0));
    series_add(m, &g->base, SERIES_GAUGE, name, help, METRICS_GAUGE, labels);
    return g;
}

void metrics_gauge_set(struct metrics_gauge *g, double v)
{
    atomic_store_explicit(&g->bits, dbits(v), memory_order_relaxed);
}

void metrics_gauge_add(struct metrics_gauge *g, double delta)
{
    atomic_add_double(&g->bits, delta);
}

double metrics_gauge_get(const struct metrics_gauge *g)
{
    return bitsd(atomic_load_explicit(&g->bits, memory_order_relaxed));
}

void metrics_gauge_fn_new(struct metrics *m, const char *name, const char *help,
                          const char *const *labels, metrics_gauge_cb fn, void *arg)
{
    struct metrics_gauge *g;

    if (!fn)
        misuse(name, "no callback");
    g = xcalloc(1, sizeof(*g));
    g->fn = fn;
    g->arg = arg;
    atomic_init(&g->bits, dbits(0.0));
    series_add(m, &g->base, SERIES_GAUGE_FN, name, help, METRICS_GAUGE, labels);
}

struct metrics_histogram *metrics_histogram_new(struct metrics *m, const char *name,
                                                const char *help, const char *const *labels,
                                                const double *bounds, size_t nbounds)
{
    struct metrics_histogram *h = xcalloc(1, sizeof(*h));

    for (size_t i = 0; i < nbounds; i++) {
        if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
            misuse(name, "bucket bounds must be finite and strictly increasing");
    }
    h->nbounds = nbounds;
    h->bounds = xmalloc((nbounds ? nbounds : 1) * sizeof(double));
    if (nbounds)
        memcpy(h->bounds, bounds, nbounds * sizeof(double));
    h->counts = xcalloc(nbounds + 1, sizeof(*h->counts));
    for (size_t i = 0; i <= nbounds; i++)
        atomic_init(&h->counts[i], 0);
    atomic_init(&h->sum_bits, dbits(0.0));
    series_add(m, &h->base, SERIES_HISTOGRAM, name, help, METRICS_HISTOGRAM, labels);
    return h;
}

void metrics_histogram_observe(struct metrics_histogram *h, double v)
{
    size_t lo = 0, hi = h->nbounds;

    if (isnan(v))
        return;
    /* The first bucket whose bound is >= v (Prometheus buckets are le). */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (h->bounds[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    atomic_fetch_add_explicit(&h->counts[lo], 1, memory_order_relaxed);
    atomic_add_double(&h->sum_bits, v);
}

void metrics_collect_new(struct metrics *m, const char *name, const char *help,
                         enum metrics_type type, metrics_collect_cb fn, void *arg)
{
    struct collector *c;

    if (!fn || type == METRICS_HISTOGRAM)
        misuse(name, "a collector needs a callback and a counter or gauge type");
    c = xcalloc(1, sizeof(*c));
    c->fn = fn;
    c->arg = arg;
    pthread_mutex_lock(&m->mu);
    for (const struct family *f = m->families; f; f = f->next) {
        if (strcmp(f->name, name) == 0)
            misuse(name, "a collector's family name must be its own");
    }
    pthread_mutex_unlock(&m->mu);
    series_add(m, &c->base, SERIES_COLLECT, name, help, type, NULL);
    pthread_mutex_lock(&m->mu);
    c->base.fam->collected = 1;
    pthread_mutex_unlock(&m->mu);
}

/* ---- rendering ---------------------------------------------------------------------- */

/* `name[suffix]{labels[,extra]} ` (the value follows). */
static void sample_start(struct buf *b, const char *name, const char *suffix, const char *labels,
                         const char *extra)
{
    int any = labels[0] || (extra && extra[0]);

    buf_append(b, name, strlen(name));
    buf_append(b, suffix, strlen(suffix));
    if (any) {
        buf_append(b, "{", 1);
        buf_append(b, labels, strlen(labels));
        if (labels[0] && extra && extra[0])
            buf_append(b, ",", 1);
        if (extra)
            buf_append(b, extra, strlen(extra));
        buf_append(b, "}", 1);
    }
    buf_append(b, " ", 1);
}

static void render_histogram(struct buf *b, const struct metrics_histogram *h)
{
    const char *name = h->base.fam->name, *labels = h->base.labels;
    uint64_t cum = 0;
    char le[64], num[40];

    for (size_t i = 0; i <= h->nbounds; i++) {
        cum += atomic_load_explicit(&h->counts[i], memory_order_relaxed);
        if (i < h->nbounds)
            format_double(num, sizeof(num), h->bounds[i]);
        else
            snprintf(num, sizeof(num), "+Inf");
        snprintf(le, sizeof(le), "le=\"%s\"", num);
        sample_start(b, name, "_bucket", labels, le);
        append_u64(b, cum);
        buf_append(b, "\n", 1);
    }
    sample_start(b, name, "_sum", labels, NULL);
    append_double(b, bitsd(atomic_load_explicit(&h->sum_bits, memory_order_relaxed)));
    buf_append(b, "\n", 1);
    sample_start(b, name, "_count", labels, NULL);
    append_u64(b, cum);
    buf_append(b, "\n", 1);
}

static void render_series(struct buf *b, struct series *s)
{
    const char *name = s->fam->name;

    switch (s->kind) {
    case SERIES_COUNTER:
        sample_start(b, name, "", s->labels, NULL);
        append_u64(b, metrics_counter_get(container_of(s, struct metrics_counter, base)));
        break;
    case SERIES_GAUGE:
        sample_start(b, name, "", s->labels, NULL);
        append_double(b, metrics_gauge_get(container_of(s, struct metrics_gauge, base)));
        break;
    case SERIES_GAUGE_FN: {
        struct metrics_gauge *g = container_of(s, struct metrics_gauge, base);
        sample_start(b, name, "", s->labels, NULL);
        append_double(b, g->fn(g->arg));
        break;
    }
    case SERIES_HISTOGRAM:
        render_histogram(b, container_of(s, struct metrics_histogram, base));
        return;
    case SERIES_COLLECT: {
        struct collector *c = container_of(s, struct collector, base);
        struct metrics_sink sink = {.out = b, .fam = s->fam};
        c->fn(c->arg, &sink);
        return;
    }
    }
    buf_append(b, "\n", 1);
}

void metrics_sample(struct metrics_sink *sink, const char *const *labels, double value)
{
    struct buf lb = {0};

    if (render_labels(&lb, labels, 0) != 0) {
        log_error("render metric %s failed: invalid label names in a sample", sink->fam->name);
        buf_free(&lb);
        return;
    }
    buf_append(&lb, "", 1);
    sample_start(sink->out, sink->fam->name, "", (const char *)lb.data, NULL);
    append_double(sink->out, value);
    buf_append(sink->out, "\n", 1);
    buf_free(&lb);
}

void metrics_render(struct metrics *m, struct buf *out)
{
    pthread_mutex_lock(&m->mu);
    for (const struct family *f = m->families; f; f = f->next) {
        buf_append(out, "# HELP ", 7);
        buf_append(out, f->name, strlen(f->name));
        buf_append(out, " ", 1);
        append_escaped(out, f->help, 0);
        buf_append(out, "\n# TYPE ", 8);
        buf_append(out, f->name, strlen(f->name));
        buf_append(out, " ", 1);
        buf_append(out, type_name(f->type), strlen(type_name(f->type)));
        buf_append(out, "\n", 1);
        for (struct series *s = f->series; s; s = s->next)
            render_series(out, s);
    }
    pthread_mutex_unlock(&m->mu);
}
