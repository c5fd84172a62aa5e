/* boomerang-bench: the run's configuration and the results it collects,
 * shared by main.c (flags), client.c (the load) and report.c (the output).
 *
 *   main.c ── bench_config ──> client.c: setup, open-loop schedule, probes, /metrics
 *                                  │ fills struct bench (histograms, counters, timeline)
 *                                  v
 *                               report.c: summary table, JSON, HTML + SVG
 */
#ifndef BOOMERANG_LOAD_BENCH_H
#define BOOMERANG_LOAD_BENCH_H

#include <stdint.h>

#include "tests/load/loadhist.h"

#define BENCH_MAX_PROXIES   16
#define BENCH_MAX_ERR_KINDS 32

/* Exit codes (notes/bench-contract.md). */
enum bench_exit {
    BENCH_EXIT_OK = 0,
    BENCH_EXIT_FAILED = 1, /* RYW violation, lost visibility probe, too many errors */
    BENCH_EXIT_USAGE = 2,
    BENCH_EXIT_SETUP = 3, /* a proxy unreachable, a non-200 during setup */
};

struct bench_config {
    int nproxies;
    char *proxy_urls[BENCH_MAX_PROXIES];
    char proxy_hosts[BENCH_MAX_PROXIES][256];
    int proxy_ports[BENCH_MAX_PROXIES];
    int clients;        /* keep-alive connections per proxy */
    double rate;        /* operations per second, all proxies together */
    double write_ratio; /* 0..1 */
    double duration_s;  /* 0 = no time bound */
    uint64_t count;     /* 0 = no count bound */
    int row_bytes;
    int64_t keys;
    int setup;            /* CREATE TABLE (+ pre-fill when empty) before the run */
    double vis_sample;    /* fraction of writes probed on every other proxy */
    double vis_timeout_s; /* a probe not seen by then is lost */
    int ryw_check;
    double metrics_interval_s; /* 0 = no scraping */
    double max_error_ratio;
    int timeout_ms; /* per request */
    int progress;   /* 1 on, 0 off */
    uint64_t seed;
    const char *json_path;
    const char *html_path;
    const char *svg_prefix;
    const char *label;
    char bearer[512]; /* "" or the app token sent as Authorization: Bearer (every request) */
};

/* Per-proxy results. */
struct bench_proxy {
    struct loadhist write_ack, read, ryw_read, server_lag;
    uint64_t writes, reads, ryw_reads, errors;
    double lag_ms_last;
    int64_t lag_txids_last;
};

/* One second of the run. Latencies in µs; 0 when nothing was recorded. */
struct bench_tick {
    double t_s;
    uint64_t write_ack_p50, write_ack_p99, read_p50, read_p99, visibility_p99;
    double server_lag_ms_max;
    uint64_t ops, errors;
};

struct bench_err {
    char kind[64];
    uint64_t n;
};

struct bench {
    struct bench_config cfg;
    /* totals */
    struct loadhist write_ack, read, ryw_read, visibility, server_lag;
    struct bench_proxy proxy[BENCH_MAX_PROXIES];
    /* visibility per (writer, reader) pair, index writer * nproxies + reader */
    struct loadhist *vis_pair;
    uint64_t *vis_before_ack; /* seen before the writer's ack arrived (recorded as 0) */
    uint64_t *vis_lost;
    /* counters */
    uint64_t scheduled, writes_ok, reads_ok, ryw_reads, ryw_violations;
    uint64_t overload, probes, probes_skipped, probes_lost, probes_before_ack, errors;
    uint64_t keys_filled;
    int keys_ready; /* reads may pick ids 1..keys */
    struct bench_err errs[BENCH_MAX_ERR_KINDS];
    int nerrs;
    /* timeline */
    struct bench_tick *ticks;
    int nticks, cap_ticks;
    int64_t started_at_us; /* wall clock */
    double duration_s;     /* measured, schedule start to drain end */
    int interrupted;
};

/* Allocate the per-pair arrays and reset every histogram. */
void bench_init(struct bench *b);
/* Free what bench_init allocated and the timeline. */
void bench_free(struct bench *b);
/* Count one error of a kind (a short token such as "timeout", "http_503"). */
void bench_error(struct bench *b, int proxy, const char *kind);
/* The exit code the results call for (0 or BENCH_EXIT_FAILED). */
int bench_verdict(const struct bench *b);

#endif
