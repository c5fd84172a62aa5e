/* boomerang-bench: the load generator. One libev loop drives, per proxy, a
 * pool of keep-alive HTTP/1.1 connections for the scheduled operations, one
 * probe connection for visibility probes and one auxiliary connection for set-up
 * and /metrics scrapes. */
#ifndef BOOMERANG_LOAD_CLIENT_H
#define BOOMERANG_LOAD_CLIENT_H

#include "common/util.h"
#include "tests/load/bench.h"

/* Run the whole benchmark described by b->cfg: check every proxy, set up the
 * schema (and pre-fill), run the open-loop load until the time or count bound
 * (or SIGINT), drain what is in flight, and fill b's results.
 * Returns 0 when the run happened (b says how it went), BENCH_EXIT_SETUP when a
 * proxy was unreachable or set-up failed (the reason is on stderr), or -ENOMEM
 * style negative codes for a local failure (socket(), the loop). */
int MUST_CHECK client_run(struct bench *b);

#endif
