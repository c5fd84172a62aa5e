/* boomerang-bench: the results' lifetime and verdict (struct bench, bench.h). */
#include "tests/load/bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

void bench_init(struct bench *b)
{
    size_t pairs = (size_t)b->cfg.nproxies * (size_t)b->cfg.nproxies;

    loadhist_reset(&b->write_ack);
    loadhist_reset(&b->read);
    loadhist_reset(&b->ryw_read);
    loadhist_reset(&b->visibility);
    loadhist_reset(&b->server_lag);
    for (int i = 0; i < BENCH_MAX_PROXIES; i++) {
        struct bench_proxy *p = &b->proxy[i];
        memset(p, 0, sizeof(*p));
        loadhist_reset(&p->write_ack);
        loadhist_reset(&p->read);
        loadhist_reset(&p->ryw_read);
        loadhist_reset(&p->server_lag);
        p->lag_txids_last = -1;
        p->lag_ms_last = -1;
    }
    b->vis_pair = xcalloc(pairs, sizeof(*b->vis_pair));
    for (size_t i = 0; i < pairs; i++)
        loadhist_reset(&b->vis_pair[i]);
    b->vis_before_ack = xcalloc(pairs, sizeof(*b->vis_before_ack));
    b->vis_lost = xcalloc(pairs, sizeof(*b->vis_lost));
}

void bench_free(struct bench *b)
{
    free(b->vis_pair);
    free(b->vis_before_ack);
    free(b->vis_lost);
    free(b->ticks);
    b->vis_pair = NULL;
    b->vis_before_ack = b->vis_lost = NULL;
    b->ticks = NULL;
}

void bench_error(struct bench *b, int proxy, const char *kind)
{
    int i;

    b->errors++;
    if (proxy >= 0 && proxy < BENCH_MAX_PROXIES)
        b->proxy[proxy].errors++;
    for (i = 0; i < b->nerrs; i++) {
        if (strcmp(b->errs[i].kind, kind) == 0)
            break;
    }
    if (i == b->nerrs) {
        if (b->nerrs == BENCH_MAX_ERR_KINDS)
            i = b->nerrs - 1; /* the last slot collects the rest */
        else
            snprintf(b->errs[b->nerrs++].kind, sizeof(b->errs[0].kind), "%s", kind);
    }
    b->errs[i].n++;
}

int bench_verdict(const struct bench *b)
{
    uint64_t done = b->writes_ok + b->reads_ok + b->ryw_reads + b->errors;

    if (b->ryw_violations > 0 || b->probes_lost > 0)
        return BENCH_EXIT_FAILED;
    if (done > 0 && (double)b->errors / (double)done > b->cfg.max_error_ratio)
        return BENCH_EXIT_FAILED;
    return BENCH_EXIT_OK;
}
