/* boomerang-bench: the reports (report.h).
 *
 * Every latency is a struct loadhist of microseconds. The summary table, the
 * HTML table and the JSON report list the same rows (report_rows), so the three
 * always agree. The charts are hand-written SVG: a timeline (1 s buckets, log
 * y axis) and a CDF per metric (log x axis), both self-contained. */
#include "tests/load/report.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_ROWS (8 + 4 * BENCH_MAX_PROXIES + BENCH_MAX_PROXIES * BENCH_MAX_PROXIES)

struct row {
    char name[96];
    const struct loadhist *h;
};

static const char *const palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                      "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

/* The rows every report lists: totals, then per proxy, then per pair. */
static int report_rows(const struct bench *b, struct row *rows, int max)
{
    int n = 0, np = b->cfg.nproxies;

#define ROW(hist, ...)                                                                             \
    do {                                                                                           \
        if (n < max) {                                                                             \
            snprintf(rows[n].name, sizeof(rows[n].name), __VA_ARGS__);                             \
            rows[n++].h = (hist);                                                                  \
        }                                                                                          \
    } while (0)
    ROW(&b->write_ack, "write_ack");
    ROW(&b->read, "read");
    ROW(&b->ryw_read, "ryw_read");
    ROW(&b->visibility, "visibility");
    ROW(&b->server_lag, "server_lag");
    for (int p = 0; np > 1 && p < np; p++) {
        ROW(&b->proxy[p].write_ack, "write_ack p%d", p);
        ROW(&b->proxy[p].read, "read p%d", p);
        ROW(&b->proxy[p].ryw_read, "ryw_read p%d", p);
        ROW(&b->proxy[p].server_lag, "server_lag p%d", p);
    }
    for (int w = 0; np > 1 && w < np; w++) {
        for (int r = 0; r < np; r++) {
            if (w != r)
                ROW(&b->vis_pair[w * np + r], "visibility p%d->p%d", w, r);
        }
    }
#undef ROW
    return n;
}

static void fmt_us(char *out, size_t len, uint64_t us)
{
    if (us < 1000)
        snprintf(out, len, "%lluus", (unsigned long long)us);
    else if (us < 1000000)
        snprintf(out, len, "%.1fms", (double)us / 1e3);
    else
        snprintf(out, len, "%.2fs", (double)us / 1e6);
}

static const double quantiles[] = {0.5, 0.9, 0.99, 0.999, 1.0};

static void summary_row(FILE *out, const struct row *r)
{
    char v[16];

    fprintf(out, "%-22s %8llu", r->name, (unsigned long long)r->h->count);
    for (size_t i = 0; i < ARRAY_LEN(quantiles); i++) {
        fmt_us(v, sizeof(v), loadhist_quantile(r->h, quantiles[i]));
        fprintf(out, " %8s", r->h->count ? v : "-");
    }
    fputc('\n', out);
}

static void summary_errors(const struct bench *b, FILE *out)
{
    fprintf(out, "errors: %llu", (unsigned long long)b->errors);
    for (int i = 0; i < b->nerrs; i++)
        fprintf(out, "%s%s %llu", i ? ", " : " (", b->errs[i].kind,
                (unsigned long long)b->errs[i].n);
    fprintf(out, "%s\n", b->nerrs ? ")" : "");
}

void report_summary(const struct bench *b, FILE *out)
{
    static struct row rows[MAX_ROWS];
    int n = report_rows(b, rows, MAX_ROWS);

    if (b->cfg.nproxies > 1) {
        for (int p = 0; p < b->cfg.nproxies; p++)
            fprintf(out, "p%d = %s\n", p, b->cfg.proxy_urls[p]);
    }
    fprintf(out, "%-22s %8s %8s %8s %8s %8s %8s\n", "metric", "count", "p50", "p90", "p99", "p99.9",
            "max");
    for (int i = 0; i < n; i++) {
        if (i < 5 || rows[i].h->count)
            summary_row(out, &rows[i]);
    }
    fprintf(out,
            "ops: %llu scheduled in %.1f s (%.1f/s), %llu writes, %llu reads, %llu dropped "
            "(overload)%s\n",
            (unsigned long long)b->scheduled, b->duration_s,
            b->duration_s > 0 ? (double)b->scheduled / b->duration_s : 0.0,
            (unsigned long long)b->writes_ok, (unsigned long long)b->reads_ok,
            (unsigned long long)b->overload, b->interrupted ? ", interrupted" : "");
    if (b->keys_filled)
        fprintf(out, "setup: pre-filled %llu rows (ids 1..%lld)\n",
                (unsigned long long)b->keys_filled, (long long)b->cfg.keys);
    summary_errors(b, out);
    fprintf(out,
            "visibility probes: %llu, seen before the write's ack (lag 0): %llu, lost: %llu, "
            "skipped: %llu\n",
            (unsigned long long)b->probes, (unsigned long long)b->probes_before_ack,
            (unsigned long long)b->probes_lost, (unsigned long long)b->probes_skipped);
    fprintf(out, "ryw violations: %llu of %llu reads with a token\n",
            (unsigned long long)b->ryw_violations, (unsigned long long)b->ryw_reads);
}

/* ------------------------------------------------------------------ JSON */

static json_t *json_hist(const struct loadhist *h)
{
    return json_pack(
        "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f}", "count", (json_int_t)h->count, "min_us",
        (json_int_t)(h->count ? h->min : 0), "p50_us", (json_int_t)loadhist_quantile(h, 0.5),
        "p90_us", (json_int_t)loadhist_quantile(h, 0.9), "p99_us",
        (json_int_t)loadhist_quantile(h, 0.99), "p999_us", (json_int_t)loadhist_quantile(h, 0.999),
        "max_us", (json_int_t)h->max, "mean_us", loadhist_mean(h));
}

static json_t *json_config(const struct bench_config *c)
{
    json_t *proxies = json_array();

    for (int p = 0; p < c->nproxies; p++)
        json_array_append_new(proxies, json_string(c->proxy_urls[p]));
    return json_pack("{s:o,s:i,s:f,s:f,s:f,s:I,s:i,s:I,s:b,s:f,s:f,s:b,s:f,s:f,s:i}", "proxies",
                     proxies, "clients", c->clients, "rate", c->rate, "write_ratio", c->write_ratio,
                     "duration_s", c->duration_s, "count", (json_int_t)c->count, "row_bytes",
                     c->row_bytes, "keys", (json_int_t)c->keys, "setup", c->setup,
                     "visibility_sample", c->vis_sample, "visibility_timeout_s", c->vis_timeout_s,
                     "ryw_check", c->ryw_check, "metrics_interval_s", c->metrics_interval_s,
                     "max_error_ratio", c->max_error_ratio, "timeout_ms", c->timeout_ms);
}

static json_t *json_proxies(const struct bench *b)
{
    json_t *arr = json_array();
    int np = b->cfg.nproxies;

    for (int p = 0; p < np; p++) {
        const struct bench_proxy *bp = &b->proxy[p];
        json_t *o = json_pack("{s:i,s:s,s:o,s:o,s:o,s:o,s:I,s:I,s:I,s:I}", "index", p, "url",
                              b->cfg.proxy_urls[p], "write_ack", json_hist(&bp->write_ack), "read",
                              json_hist(&bp->read), "ryw_read", json_hist(&bp->ryw_read),
                              "server_lag_ms", json_hist(&bp->server_lag), "writes",
                              (json_int_t)bp->writes, "reads", (json_int_t)bp->reads, "ryw_reads",
                              (json_int_t)bp->ryw_reads, "errors", (json_int_t)bp->errors);
        json_t *vis = json_array();
        for (int r = 0; r < np; r++) {
            size_t i = (size_t)p * (size_t)np + (size_t)r;
            json_t *h;
            if (r == p)
                continue;
            h = json_hist(&b->vis_pair[i]);
            json_object_set_new(h, "to", json_integer(r));
            json_object_set_new(h, "to_url", json_string(b->cfg.proxy_urls[r]));
            json_object_set_new(h, "before_ack", json_integer((json_int_t)b->vis_before_ack[i]));
            json_object_set_new(h, "lost", json_integer((json_int_t)b->vis_lost[i]));
            json_array_append_new(vis, h);
        }
        json_object_set_new(o, "visibility_to", vis);
        json_array_append_new(arr, o);
    }
    return arr;
}

static json_t *json_timeline(const struct bench *b)
{
    json_t *arr = json_array();

    for (int i = 0; i < b->nticks; i++) {
        const struct bench_tick *t = &b->ticks[i];
        json_array_append_new(
            arr, json_pack("{s:f,s:I,s:I,s:I,s:I,s:I,s:f,s:I,s:I}", "t_s", t->t_s,
                           "write_ack_p50_us", (json_int_t)t->write_ack_p50, "write_ack_p99_us",
                           (json_int_t)t->write_ack_p99, "read_p50_us", (json_int_t)t->read_p50,
                           "read_p99_us", (json_int_t)t->read_p99, "visibility_p99_us",
                           (json_int_t)t->visibility_p99, "server_lag_ms_max", t->server_lag_ms_max,
                           "ops", (json_int_t)t->ops, "errors", (json_int_t)t->errors));
    }
    return arr;
}

static void iso_time(char *out, size_t len, int64_t us)
{
    time_t s = (time_t)(us / 1000000);
    struct tm tm;

    if (!gmtime_r(&s, &tm) || strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, len, "%lld", (long long)s);
}

static json_t *json_report(const struct bench *b)
{
    json_t *errs = json_object(), *root;
    char started[32];

    for (int i = 0; i < b->nerrs; i++)
        json_object_set_new(errs, b->errs[i].kind, json_integer((json_int_t)b->errs[i].n));
    iso_time(started, sizeof(started), b->started_at_us);
    root = json_pack(
        "{s:s,s:o,s:s,s:f,s:b,s:{s:I,s:I,s:I,s:I,s:I,s:I},"
        "s:{s:o,s:o,s:o,s:o,s:o},s:o,s:{s:I,s:I},s:{s:I,s:I,s:I,s:I},s:I,s:o,s:o}",
        "label", b->cfg.label, "config", json_config(&b->cfg), "started_at", started, "duration_s",
        b->duration_s, "interrupted", b->interrupted, "ops", "scheduled", (json_int_t)b->scheduled,
        "writes", (json_int_t)b->writes_ok, "reads", (json_int_t)b->reads_ok, "ryw_reads",
        (json_int_t)b->ryw_reads, "overload", (json_int_t)b->overload, "keys_filled",
        (json_int_t)b->keys_filled, "metrics", "write_ack", json_hist(&b->write_ack), "read",
        json_hist(&b->read), "ryw_read", json_hist(&b->ryw_read), "visibility",
        json_hist(&b->visibility), "server_lag_ms", json_hist(&b->server_lag), "per_proxy",
        json_proxies(b), "ryw", "reads", (json_int_t)b->ryw_reads, "violations",
        (json_int_t)b->ryw_violations, "visibility_probes", "sampled", (json_int_t)b->probes,
        "before_ack", (json_int_t)b->probes_before_ack, "lost", (json_int_t)b->probes_lost,
        "skipped", (json_int_t)b->probes_skipped, "error_count", (json_int_t)b->errors, "errors",
        errs, "timeline", json_timeline(b));
    return root;
}

int report_json(const struct bench *b, const char *path)
{
    json_t *root = json_report(b);
    int rc;

    if (!root)
        return -EINVAL;
    rc = json_dump_file(root, path, JSON_INDENT(1) | JSON_REAL_PRECISION(6));
    json_decref(root);
    return rc == 0 ? 0 : -(errno ? errno : EIO);
}

/* ------------------------------------------------------------------ SVG */

#define SVG_W  900
#define SVG_H  340
#define PAD_L  70
#define PAD_R  180
#define PAD_T  30
#define PAD_B  45
#define PLOT_W (SVG_W - PAD_L - PAD_R)
#define PLOT_H (SVG_H - PAD_T - PAD_B)

struct logaxis {
    double lo, hi; /* decades: log10 of the first and last tick, in µs */
};

static struct logaxis axis_for(uint64_t lo_us, uint64_t hi_us)
{
    struct logaxis a;

    lo_us = MAX(lo_us, 1);
    hi_us = MAX(hi_us, lo_us * 10);
    a.lo = floor(log10((double)lo_us));
    a.hi = ceil(log10((double)hi_us));
    if (a.hi <= a.lo)
        a.hi = a.lo + 1;
    return a;
}

/* Position along a log axis of length len: 0 at lo, len at hi. */
static double axis_pos(const struct logaxis *a, double us, double len)
{
    double l = log10(MAX(us, 1.0));
    return (l - a->lo) / (a->hi - a->lo) * len;
}

static void decade_label(char *out, size_t len, double decade)
{
    double us = pow(10, decade);

    if (us < 1000)
        snprintf(out, len, "%gus", us);
    else if (us < 1e6)
        snprintf(out, len, "%gms", us / 1e3);
    else
        snprintf(out, len, "%gs", us / 1e6);
}

static void svg_open(FILE *f, const char *title)
{
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 "
            "%d %d\" font-family=\"sans-serif\" font-size=\"11\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
            "<text x=\"%d\" y=\"18\" font-size=\"14\" font-weight=\"bold\">%s</text>\n",
            SVG_W, SVG_H, SVG_W, SVG_H, PAD_L, title);
    fprintf(f,
            "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#444\"/>\n",
            PAD_L, PAD_T, PLOT_W, PLOT_H);
}

static void svg_legend(FILE *f, int i, const char *name, const char *color)
{
    int y = PAD_T + 10 + i * 16;
    fprintf(f,
            "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"2\"/>"
            "<text x=\"%d\" y=\"%d\">%s</text>\n",
            SVG_W - PAD_R + 10, y, SVG_W - PAD_R + 30, y, color, SVG_W - PAD_R + 35, y + 4, name);
}

/* Horizontal gridlines and labels of a log y axis. */
static void svg_log_y(FILE *f, const struct logaxis *a)
{
    char label[16];

    for (double d = a->lo; d <= a->hi + 1e-9; d += 1) {
        double y = PAD_T + PLOT_H - axis_pos(a, pow(10, d), PLOT_H);
        decade_label(label, sizeof(label), d);
        fprintf(f,
                "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n",
                PAD_L, y, PAD_L + PLOT_W, y, PAD_L - 5, y + 4, label);
    }
}

struct series {
    const char *name;
    uint64_t (*get)(const struct bench_tick *t);
};

static uint64_t get_wack50(const struct bench_tick *t)
{
    return t->write_ack_p50;
}
static uint64_t get_wack99(const struct bench_tick *t)
{
    return t->write_ack_p99;
}
static uint64_t get_read99(const struct bench_tick *t)
{
    return t->read_p99;
}
static uint64_t get_vis99(const struct bench_tick *t)
{
    return t->visibility_p99;
}
static uint64_t get_lag(const struct bench_tick *t)
{
    return (uint64_t)(t->server_lag_ms_max * 1000.0);
}

static const struct series timeline_series[] = {
    {"write_ack p50", get_wack50}, {"write_ack p99", get_wack99}, {"read p99", get_read99},
    {"visibility p99", get_vis99}, {"server lag max", get_lag},
};

static void svg_timeline(FILE *f, const struct bench *b)
{
    uint64_t lo = UINT64_MAX, hi = 0;
    double tmax = 1;
    struct logaxis a;

    for (int i = 0; i < b->nticks; i++) {
        tmax = MAX(tmax, b->ticks[i].t_s);
        for (size_t s = 0; s < ARRAY_LEN(timeline_series); s++) {
            uint64_t v = timeline_series[s].get(&b->ticks[i]);
            if (v) {
                lo = MIN(lo, v);
                hi = MAX(hi, v);
            }
        }
    }
    a = axis_for(lo == UINT64_MAX ? 100 : lo, hi ? hi : 100000);
    svg_open(f, "Latency and lag over time (1 s buckets)");
    svg_log_y(f, &a);
    for (int s = 0; s <= 10; s++) {
        double x = PAD_L + PLOT_W * s / 10.0;
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%.*f</text>\n", x,
                PAD_T + PLOT_H + 15, tmax < 20 ? 1 : 0, tmax * s / 10.0);
    }
    fprintf(f,
            "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">time since start (s)</text>\n"
            "<text transform=\"translate(14 %d) rotate(-90)\" text-anchor=\"middle\">latency "
            "(log scale)</text>\n",
            PAD_L + PLOT_W / 2, SVG_H - 8, PAD_T + PLOT_H / 2);
    for (size_t s = 0; s < ARRAY_LEN(timeline_series); s++) {
        const char *color = palette[s % ARRAY_LEN(palette)];
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", color);
        for (int i = 0; i < b->nticks; i++) {
            uint64_t v = timeline_series[s].get(&b->ticks[i]);
            if (!v)
                continue; /* nothing recorded in that second */
            fprintf(f, "%.1f,%.1f ", PAD_L + PLOT_W * b->ticks[i].t_s / tmax,
                    PAD_T + PLOT_H - axis_pos(&a, (double)v, PLOT_H));
        }
        fprintf(f, "\"/>\n");
        svg_legend(f, (int)s, timeline_series[s].name, color);
    }
    fprintf(f, "</svg>\n");
}

static void svg_cdf_curve(FILE *f, const struct loadhist *h, const struct logaxis *a,
                          const char *color)
{
    uint64_t seen = 0;

    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"%.1f,%d ",
            color, PAD_L + axis_pos(a, (double)h->min, PLOT_W), PAD_T + PLOT_H);
    for (unsigned i = 0; i < LOADHIST_BUCKETS; i++) {
        uint64_t x;
        if (!h->buckets[i])
            continue;
        seen += h->buckets[i];
        x = MIN(MAX(loadhist_upper(i), h->min), h->max);
        fprintf(f, "%.1f,%.1f ", PAD_L + axis_pos(a, (double)x, PLOT_W),
                PAD_T + PLOT_H - PLOT_H * (double)seen / (double)h->count);
    }
    fprintf(f, "\"/>\n");
}

static void svg_cdf(FILE *f, const struct bench *b)
{
    static struct row rows[MAX_ROWS];
    int n = report_rows(b, rows, MAX_ROWS), shown = 0;
    uint64_t lo = UINT64_MAX, hi = 0;
    struct logaxis a;
    char label[16];

    for (int i = 0; i < n; i++) {
        if (rows[i].h->count) {
            lo = MIN(lo, rows[i].h->min);
            hi = MAX(hi, rows[i].h->max);
        }
    }
    a = axis_for(lo == UINT64_MAX ? 100 : lo, hi ? hi : 100000);
    svg_open(f, "Distributions (CDF)");
    for (double d = a.lo; d <= a.hi + 1e-9; d += 1) {
        double x = PAD_L + axis_pos(&a, pow(10, d), PLOT_W);
        decade_label(label, sizeof(label), d);
        fprintf(f,
                "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"/>"
                "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>\n",
                x, PAD_T, x, PAD_T + PLOT_H, x, PAD_T + PLOT_H + 15, label);
    }
    for (int p = 0; p <= 4; p++) {
        double y = PAD_T + PLOT_H - PLOT_H * p / 4.0;
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%d%%</text>\n", PAD_L - 5, y + 4,
                p * 25);
    }
    fprintf(f,
            "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">latency (log scale)</text>\n"
            "<text transform=\"translate(14 %d) rotate(-90)\" text-anchor=\"middle\">fraction "
            "at or below</text>\n",
            PAD_L + PLOT_W / 2, SVG_H - 8, PAD_T + PLOT_H / 2);
    for (int i = 0; i < n && shown < 18; i++) {
        const char *color = palette[shown % ARRAY_LEN(palette)];
        if (!rows[i].h->count)
            continue;
        svg_cdf_curve(f, rows[i].h, &a, color);
        svg_legend(f, shown++, rows[i].name, color);
    }
    fprintf(f, "</svg>\n");
}

/* ------------------------------------------------------------------ HTML */

static void html_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<':
            fputs("&lt;", f);
            break;
        case '>':
            fputs("&gt;", f);
            break;
        case '&':
            fputs("&amp;", f);
            break;
        case '"':
            fputs("&quot;", f);
            break;
        default:
            fputc(*s, f);
        }
    }
}

static void html_table(FILE *f, const struct bench *b)
{
    static struct row rows[MAX_ROWS];
    int n = report_rows(b, rows, MAX_ROWS);
    char v[16];

    fputs("<table><tr><th>metric</th><th>count</th><th>p50</th><th>p90</th><th>p99</th>"
          "<th>p99.9</th><th>max</th></tr>\n",
          f);
    for (int i = 0; i < n; i++) {
        if (i >= 5 && !rows[i].h->count)
            continue;
        fputs("<tr><td>", f);
        html_text(f, rows[i].name);
        fprintf(f, "</td><td>%llu</td>", (unsigned long long)rows[i].h->count);
        for (size_t q = 0; q < ARRAY_LEN(quantiles); q++) {
            fmt_us(v, sizeof(v), loadhist_quantile(rows[i].h, quantiles[q]));
            fprintf(f, "<td>%s</td>", rows[i].h->count ? v : "-");
        }
        fputs("</tr>\n", f);
    }
    fputs("</table>\n", f);
}

/* The text summary, escaped (row names hold "->", URLs come from flags). */
static void html_summary(FILE *f, const struct bench *b)
{
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);

    if (!mem)
        return;
    report_summary(b, mem);
    if (fclose(mem) == 0 && text)
        html_text(f, text);
    free(text);
}

static void html_body(FILE *f, const struct bench *b)
{
    char started[32];

    iso_time(started, sizeof(started), b->started_at_us);
    fputs("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>boomerang-bench ", f);
    html_text(f, b->cfg.label);
    fputs("</title>\n<style>body{font-family:sans-serif;margin:2em}table{border-collapse:"
          "collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
          "td:first-child{text-align:left}pre{background:#f6f6f6;padding:1em}</style>\n"
          "</head><body>\n<h1>boomerang-bench ",
          f);
    html_text(f, b->cfg.label);
    fprintf(f, "</h1>\n<p>started %s, ran %.1f s</p>\n<h2>Over time</h2>\n", started,
            b->duration_s);
    svg_timeline(f, b);
    fputs("<h2>Distributions</h2>\n", f);
    svg_cdf(f, b);
    fputs("<h2>Summary</h2>\n", f);
    html_table(f, b);
    fputs("<pre>", f);
    html_summary(f, b);
    fputs("</pre>\n<h2>Config</h2>\n<pre>", f);
    for (int p = 0; p < b->cfg.nproxies; p++) {
        fputs("proxy ", f);
        html_text(f, b->cfg.proxy_urls[p]);
        fputc('\n', f);
    }
    fprintf(f,
            "clients %d per proxy, rate %.1f/s, write ratio %.2f, duration %.1f s, count %llu, "
            "row bytes %d, keys %lld, visibility sample %.3f, ryw check %s</pre>\n</body></html>\n",
            b->cfg.clients, b->cfg.rate, b->cfg.write_ratio, b->cfg.duration_s,
            (unsigned long long)b->cfg.count, b->cfg.row_bytes, (long long)b->cfg.keys,
            b->cfg.vis_sample, b->cfg.ryw_check ? "on" : "off");
}

static int write_with(const char *path, void (*fn)(FILE *, const struct bench *),
                      const struct bench *b)
{
    FILE *f = fopen(path, "w");
    int rc = 0;

    if (!f)
        return -errno;
    fn(f, b);
    if (ferror(f))
        rc = -EIO;
    if (fclose(f) != 0 && rc == 0)
        rc = -errno;
    return rc;
}

int report_html(const struct bench *b, const char *path)
{
    return write_with(path, html_body, b);
}

static void svg_file_timeline(FILE *f, const struct bench *b)
{
    fputs("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n", f);
    svg_timeline(f, b);
}

static void svg_file_cdf(FILE *f, const struct bench *b)
{
    fputs("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n", f);
    svg_cdf(f, b);
}

int report_svg(const struct bench *b, const char *prefix)
{
    char path[4096];
    int rc;

    snprintf(path, sizeof(path), "%s-timeline.svg", prefix);
    rc = write_with(path, svg_file_timeline, b);
    if (rc < 0)
        return rc;
    snprintf(path, sizeof(path), "%s-distribution.svg", prefix);
    return write_with(path, svg_file_cdf, b);
}
