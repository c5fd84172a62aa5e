/* boomerang-bench: flags (notes/bench-contract.md) -> struct bench_config,
 * then the run (client.c) and the reports (report.c).
 *
 *   flags ──> bench_config ──> client_run() ──> report_summary / _json / _html / _svg
 *                                                  └─> exit 0, 1 (violations), 3 (setup)
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "tests/load/bench.h"
#include "tests/load/client.h"
#include "tests/load/report.h"

static const char usage[] =
    "usage: boomerang-bench --proxy URL [--proxy URL ...] [flags]\n"
    "  --proxy URL               a sidecar, http://HOST:PORT (repeat for several; up to 16)\n"
    "  --clients N               keep-alive connections per proxy (16)\n"
    "  --rate R                  operations per second, all proxies, open loop (200)\n"
    "  --write-ratio F           fraction of operations that write (0.2)\n"
    "  --duration S              stop scheduling after S seconds (30; 0 = no time bound)\n"
    "  --count N                 stop after N operations (0 = no count bound)\n"
    "  --row-bytes B             size of each row's text (100)\n"
    "  --keys K                  rows 1..K that reads pick from; pre-filled when the table\n"
    "                            is empty (100000; 0 = read the rows this run wrote)\n"
    "  --setup | --no-setup      create bench_kv (and pre-fill) through the first proxy (on)\n"
    "  --visibility-sample F     fraction of writes probed on every other proxy (0.1)\n"
    "  --visibility-timeout S    a probe not seen by then is lost (30)\n"
    "  --ryw-check | --no-ryw-check  read each write back with its token (on)\n"
    "  --metrics-interval S      scrape each proxy's /metrics (1; 0 = never)\n"
    "  --max-error-ratio F       errors above this share fail the run (0.01)\n"
    "  --timeout-ms N            per request (10000)\n"
    "  --json FILE  --html FILE  --svg-prefix P   reports\n"
    "  --progress auto|on|off    a status line per second on stderr (auto: if a TTY)\n"
    "  --label NAME              put in the reports\n"
    "  --app-token-file F        send 'Authorization: Bearer T' (T: F's first line) on every\n"
    "                            request, for sidecars run with --app-token-file\n"
    "  --seed N                  random seed (default: from the clock)\n"
    "  --log-level L             error|warn|info|debug|trace (warn)\n"
    "exit: 0 ok, 1 RYW violation / lost probe / too many errors, 2 bad flags, 3 setup failed\n";

enum {
    OPT_PROXY = 256,
    OPT_CLIENTS,
    OPT_RATE,
    OPT_WRITE_RATIO,
    OPT_DURATION,
    OPT_COUNT,
    OPT_ROW_BYTES,
    OPT_KEYS,
    OPT_SETUP,
    OPT_NO_SETUP,
    OPT_VIS_SAMPLE,
    OPT_VIS_TIMEOUT,
    OPT_RYW,
    OPT_NO_RYW,
    OPT_METRICS,
    OPT_MAX_ERR,
    OPT_TIMEOUT,
    OPT_JSON,
    OPT_HTML,
    OPT_SVG,
    OPT_PROGRESS,
    OPT_LABEL,
    OPT_APP_TOKEN,
    OPT_SEED,
    OPT_LOG_LEVEL,
    OPT_HELP,
};

static const struct option options[] = {
    {"proxy", required_argument, NULL, OPT_PROXY},
    {"clients", required_argument, NULL, OPT_CLIENTS},
    {"rate", required_argument, NULL, OPT_RATE},
    {"write-ratio", required_argument, NULL, OPT_WRITE_RATIO},
    {"duration", required_argument, NULL, OPT_DURATION},
    {"count", required_argument, NULL, OPT_COUNT},
    {"row-bytes", required_argument, NULL, OPT_ROW_BYTES},
    {"keys", required_argument, NULL, OPT_KEYS},
    {"setup", no_argument, NULL, OPT_SETUP},
    {"no-setup", no_argument, NULL, OPT_NO_SETUP},
    {"visibility-sample", required_argument, NULL, OPT_VIS_SAMPLE},
    {"visibility-timeout", required_argument, NULL, OPT_VIS_TIMEOUT},
    {"ryw-check", no_argument, NULL, OPT_RYW},
    {"no-ryw-check", no_argument, NULL, OPT_NO_RYW},
    {"metrics-interval", required_argument, NULL, OPT_METRICS},
    {"max-error-ratio", required_argument, NULL, OPT_MAX_ERR},
    {"timeout-ms", required_argument, NULL, OPT_TIMEOUT},
    {"json", required_argument, NULL, OPT_JSON},
    {"html", required_argument, NULL, OPT_HTML},
    {"svg-prefix", required_argument, NULL, OPT_SVG},
    {"progress", required_argument, NULL, OPT_PROGRESS},
    {"label", required_argument, NULL, OPT_LABEL},
    {"app-token-file", required_argument, NULL, OPT_APP_TOKEN},
    {"seed", required_argument, NULL, OPT_SEED},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

static int bad(const char *flag, const char *val, const char *why)
{
    fprintf(stderr, "boomerang-bench: --%s %s: %s (see --help)\n", flag, val, why);
    return -1;
}

/* A number in [lo, hi], the whole string. */
static int parse_num(const char *flag, const char *s, double lo, double hi, double *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v))
        return bad(flag, s, "not a number");
    if (v < lo || v > hi) {
        char why[96];
        snprintf(why, sizeof(why), "must be between %g and %g", lo, hi);
        return bad(flag, s, why);
    }
    *out = v;
    return 0;
}

/* "http://HOST:PORT" with an optional trailing "/". */
static int add_proxy(struct bench_config *cfg, const char *url)
{
    char hostport[300];
    const char *rest;
    size_t len;

    if (cfg->nproxies == BENCH_MAX_PROXIES)
        return bad("proxy", url, "too many proxies (at most 16)");
    if (strncmp(url, "http://", 7) != 0)
        return bad("proxy", url, "expected http://HOST:PORT");
    rest = url + 7;
    len = strlen(rest);
    if (len && rest[len - 1] == '/')
        len--;
    if (len == 0 || len >= sizeof(hostport) || memchr(rest, '/', len))
        return bad("proxy", url, "expected http://HOST:PORT");
    memcpy(hostport, rest, len);
    hostport[len] = '\0';
    if (util_split_hostport(hostport, cfg->proxy_hosts[cfg->nproxies], sizeof(cfg->proxy_hosts[0]),
                            &cfg->proxy_ports[cfg->nproxies]) < 0 ||
        cfg->proxy_ports[cfg->nproxies] <= 0 || cfg->proxy_ports[cfg->nproxies] > 65535)
        return bad("proxy", url, "expected http://HOST:PORT");
    cfg->proxy_urls[cfg->nproxies++] = xstrdup(url);
    return 0;
}

static void config_defaults(struct bench_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->clients = 16;
    cfg->rate = 200;
    cfg->write_ratio = 0.2;
    cfg->duration_s = 30;
    cfg->row_bytes = 100;
    cfg->keys = 100000;
    cfg->setup = 1;
    cfg->vis_sample = 0.1;
    cfg->vis_timeout_s = 30;
    cfg->ryw_check = 1;
    cfg->metrics_interval_s = 1;
    cfg->max_error_ratio = 0.01;
    cfg->timeout_ms = 10000;
    cfg->progress = isatty(STDERR_FILENO);
    cfg->label = "";
}

/* One numeric flag into its field. */
static int parse_numeric(struct bench_config *cfg, int opt, const char *arg)
{
    double v;

    switch (opt) {
    case OPT_CLIENTS:
        if (parse_num("clients", arg, 1, 1024, &v) < 0)
            return -1;
        cfg->clients = (int)v;
        return 0;
    case OPT_RATE:
        return parse_num("rate", arg, 0.001, 1e6, &cfg->rate);
    case OPT_WRITE_RATIO:
        return parse_num("write-ratio", arg, 0, 1, &cfg->write_ratio);
    case OPT_DURATION:
        return parse_num("duration", arg, 0, 1e7, &cfg->duration_s);
    case OPT_COUNT:
        if (parse_num("count", arg, 0, 1e15, &v) < 0)
            return -1;
        cfg->count = (uint64_t)v;
        return 0;
    case OPT_ROW_BYTES:
        if (parse_num("row-bytes", arg, 1, 1 << 20, &v) < 0)
            return -1;
        cfg->row_bytes = (int)v;
        return 0;
    case OPT_KEYS:
        if (parse_num("keys", arg, 0, 1e12, &v) < 0)
            return -1;
        cfg->keys = (int64_t)v;
        return 0;
    case OPT_VIS_SAMPLE:
        return parse_num("visibility-sample", arg, 0, 1, &cfg->vis_sample);
    case OPT_VIS_TIMEOUT:
        return parse_num("visibility-timeout", arg, 0.01, 86400, &cfg->vis_timeout_s);
    case OPT_METRICS:
        return parse_num("metrics-interval", arg, 0, 3600, &cfg->metrics_interval_s);
    case OPT_MAX_ERR:
        return parse_num("max-error-ratio", arg, 0, 1, &cfg->max_error_ratio);
    case OPT_TIMEOUT:
        if (parse_num("timeout-ms", arg, 1, 3600000, &v) < 0)
            return -1;
        cfg->timeout_ms = (int)v;
        return 0;
    case OPT_SEED:
        if (parse_num("seed", arg, 0, 1e18, &v) < 0)
            return -1;
        cfg->seed = (uint64_t)v;
        return 0;
    }
    return bad("?", arg, "unknown flag");
}

/* The first line of path (trimmed) becomes the bearer token. */
static int read_bearer(struct bench_config *cfg, const char *path)
{
    FILE *f = fopen(path, "r");
    size_t n;

    if (!f)
        return bad("app-token-file", path, strerror(errno));
    if (!fgets(cfg->bearer, sizeof(cfg->bearer), f))
        cfg->bearer[0] = '\0';
    fclose(f);
    n = strcspn(cfg->bearer, "\r\n");
    cfg->bearer[n] = '\0';
    while (n > 0 && (cfg->bearer[n - 1] == ' ' || cfg->bearer[n - 1] == '\t'))
        cfg->bearer[--n] = '\0';
    if (n == 0)
        return bad("app-token-file", path, "no token on its first line");
    return 0;
}

static int parse_other(struct bench_config *cfg, int opt, const char *arg)
{
    switch (opt) {
    case OPT_PROXY:
        return add_proxy(cfg, arg);
    case OPT_SETUP:
    case OPT_NO_SETUP:
        cfg->setup = opt == OPT_SETUP;
        return 0;
    case OPT_RYW:
    case OPT_NO_RYW:
        cfg->ryw_check = opt == OPT_RYW;
        return 0;
    case OPT_JSON:
        cfg->json_path = arg;
        return 0;
    case OPT_HTML:
        cfg->html_path = arg;
        return 0;
    case OPT_SVG:
        cfg->svg_prefix = arg;
        return 0;
    case OPT_LABEL:
        cfg->label = arg;
        return 0;
    case OPT_APP_TOKEN:
        return read_bearer(cfg, arg);
    case OPT_PROGRESS:
        if (strcmp(arg, "auto") == 0)
            cfg->progress = isatty(STDERR_FILENO);
        else if (strcmp(arg, "on") == 0 || strcmp(arg, "off") == 0)
            cfg->progress = strcmp(arg, "on") == 0;
        else
            return bad("progress", arg, "expected auto, on or off");
        return 0;
    case OPT_LOG_LEVEL:
        if (log_parse_level(arg, &log_level) < 0)
            return bad("log-level", arg, "expected error, warn, info, debug or trace");
        return 0;
    }
    return parse_numeric(cfg, opt, arg);
}

/* Returns 0, 1 for --help, or -1 (message printed). */
static int parse_flags(struct bench_config *cfg, int argc, char **argv)
{
    int opt;

    config_defaults(cfg);
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        if (opt == OPT_HELP)
            return 1;
        if (opt == '?' || opt == ':') {
            fprintf(stderr, "boomerang-bench: bad or incomplete flag %s (see --help)\n",
                    argv[optind - 1]);
            return -1;
        }
        if (parse_other(cfg, opt, optarg) < 0)
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "boomerang-bench: unexpected argument %s (see --help)\n", argv[optind]);
        return -1;
    }
    if (cfg->nproxies == 0) {
        fprintf(stderr, "boomerang-bench: at least one --proxy URL is required (see --help)\n");
        return -1;
    }
    if (cfg->duration_s == 0 && cfg->count == 0) {
        fprintf(stderr, "boomerang-bench: --duration 0 needs a --count bound\n");
        return -1;
    }
    return 0;
}

static int write_reports(const struct bench *b)
{
    int rc, bad_out = 0;

    if (b->cfg.json_path && (rc = report_json(b, b->cfg.json_path)) < 0) {
        fprintf(stderr, "boomerang-bench: write %s failed: %s\n", b->cfg.json_path, strerror(-rc));
        bad_out = 1;
    }
    if (b->cfg.html_path && (rc = report_html(b, b->cfg.html_path)) < 0) {
        fprintf(stderr, "boomerang-bench: write %s failed: %s\n", b->cfg.html_path, strerror(-rc));
        bad_out = 1;
    }
    if (b->cfg.svg_prefix && (rc = report_svg(b, b->cfg.svg_prefix)) < 0) {
        fprintf(stderr, "boomerang-bench: write %s-*.svg failed: %s\n", b->cfg.svg_prefix,
                strerror(-rc));
        bad_out = 1;
    }
    return bad_out;
}

int main(int argc, char **argv)
{
    static struct bench b; /* large: histograms */
    int rc;

    log_set_program("boomerang-bench");
    log_level = LOGL_WARN;
    rc = parse_flags(&b.cfg, argc, argv);
    if (rc != 0) {
        if (rc > 0)
            fputs(usage, stdout);
        for (int i = 0; i < b.cfg.nproxies; i++)
            free(b.cfg.proxy_urls[i]);
        return rc > 0 ? 0 : BENCH_EXIT_USAGE;
    }
    bench_init(&b);
    rc = client_run(&b);
    if (rc == 0) {
        report_summary(&b, stdout);
        fflush(stdout);
        rc = write_reports(&b) ? BENCH_EXIT_FAILED : bench_verdict(&b);
    } else if (rc < 0) {
        fprintf(stderr, "boomerang-bench: run failed: %s\n", strerror(-rc));
        rc = BENCH_EXIT_FAILED;
    }
    bench_free(&b);
    for (int i = 0; i < b.cfg.nproxies; i++)
        free(b.cfg.proxy_urls[i]);
    return rc;
}
