/* boomerang benchmarks: a log-linear latency histogram, shared by the bench
 * programs (header-only: each bench is one .c file, see the Makefile's
 * $(BUILD)/bench/% rule).
 *
 * Values (microseconds, or any u64) below HIST_SUB get a bucket each; above,
 * each power of two is cut into HIST_SUB equal parts, so a reported quantile
 * is the upper bound of its bucket: at most 1/16 above the true value, and
 * never above the largest value seen. Recording is O(1) and allocation-free;
 * the struct is about 8 KiB. */
#ifndef BOOMERANG_BENCH_HIST_H
#define BOOMERANG_BENCH_HIST_H

#include <math.h>
#include <stdint.h>

#include "common/util.h"

#define HIST_SUB_BITS 4
#define HIST_SUB      (1u << HIST_SUB_BITS)
#define HIST_BUCKETS  (64 * HIST_SUB)

struct hist {
    uint64_t n;
    uint64_t max;
    uint64_t buckets[HIST_BUCKETS];
};

static inline unsigned hist_index(uint64_t v)
{
    unsigned msb;

    if (v < HIST_SUB)
        return (unsigned)v;
    msb = 63u - (unsigned)__builtin_clzll(v);
    return (msb - HIST_SUB_BITS + 1) * HIST_SUB +
           (unsigned)((v >> (msb - HIST_SUB_BITS)) & (HIST_SUB - 1));
}

/* The largest value that lands in bucket i. */
static inline uint64_t hist_upper(unsigned i)
{
    unsigned shift;

    if (i < HIST_SUB)
        return i;
    shift = i / HIST_SUB - 1;
    return (((uint64_t)HIST_SUB + i % HIST_SUB + 1) << shift) - 1;
}

static inline void hist_add(struct hist *h, uint64_t v)
{
    h->buckets[hist_index(v)]++;
    h->n++;
    h->max = MAX(h->max, v);
}

/* The value at quantile q (0 < q <= 1): the upper bound of its bucket, but
 * never more than the largest value seen; 0 for an empty histogram. */
static inline uint64_t hist_quantile(const struct hist *h, double q)
{
    uint64_t want = (uint64_t)ceil(q * (double)h->n), seen = 0;

    if (h->n == 0)
        return 0;
    want = MAX(want, 1);
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= want)
            return MIN(hist_upper(i), h->max);
    }
    return h->max;
}

#endif
