/* boomerang-bench: the outputs of a run (struct bench, bench.h): the summary
 * table, the JSON report, and the HTML report with its SVG charts. */
#ifndef BOOMERANG_LOAD_REPORT_H
#define BOOMERANG_LOAD_REPORT_H

#include <stdio.h>

#include "common/util.h"
#include "tests/load/bench.h"

/* Print the summary table (p50, p90, p99, p99.9, max per metric, totals and
 * per proxy), the counters and the RYW line to out. */
void report_summary(const struct bench *b, FILE *out);

/* Write the JSON report to path. Returns 0, or -errno (nothing half-written is
 * left behind under path's name on failure is not promised). */
int MUST_CHECK report_json(const struct bench *b, const char *path);

/* Write the self-contained HTML report (inline SVG charts, the summary table,
 * the config) to path. Returns 0 or -errno. */
int MUST_CHECK report_html(const struct bench *b, const char *path);

/* Write prefix-timeline.svg and prefix-distribution.svg. Returns 0 or -errno. */
int MUST_CHECK report_svg(const struct bench *b, const char *prefix);

#endif
