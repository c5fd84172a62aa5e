/* boomerang-bench: a log-bucketed latency histogram, good from 1 µs to hours.
 *
 * Values are unsigned integers (the bench records microseconds). Values below
 * LOADHIST_SUB get one exact bucket each; above that, every power of two is cut
 * into LOADHIST_SUB equal sub-buckets (HdrHistogram's layout with 4 significant
 * bits). A quantile is reported as the midpoint of its bucket, clamped to the
 * smallest and largest values seen, so its relative error is at most
 * 1 / (2 * LOADHIST_SUB) = 3.125%. Recording and merging allocate nothing; one
 * histogram is about 5 KiB. Values above LOADHIST_MAX are clamped to it (and
 * counted in the top bucket); max keeps the true value. */
#ifndef BOOMERANG_LOADHIST_H
#define BOOMERANG_LOADHIST_H

#include <stdint.h>

#define LOADHIST_SUB_BITS 4
#define LOADHIST_SUB      (1u << LOADHIST_SUB_BITS)
#define LOADHIST_OCTAVES  40 /* 2^40 µs is 12.7 days */
#define LOADHIST_BUCKETS  ((LOADHIST_OCTAVES - LOADHIST_SUB_BITS + 1) * LOADHIST_SUB)
#define LOADHIST_MAX      ((UINT64_C(1) << LOADHIST_OCTAVES) - 1)

struct loadhist {
    uint64_t count;
    uint64_t min; /* UINT64_MAX while empty */
    uint64_t max;
    double sum;
    uint64_t buckets[LOADHIST_BUCKETS];
};

/* Make h empty. */
void loadhist_reset(struct loadhist *h);

/* Record one value. */
void loadhist_record(struct loadhist *h, uint64_t v);

/* Add every value of src to dst (src unchanged). */
void loadhist_merge(struct loadhist *dst, const struct loadhist *src);

/* The value at quantile q in [0, 1] (0.5 = median, 1 = max): the midpoint of
 * the bucket holding the ceil(q * count)-th smallest value, clamped to
 * [min, max]. 0 for an empty histogram. */
uint64_t loadhist_quantile(const struct loadhist *h, double q);

/* Mean of the recorded values (exact), 0 when empty. */
double loadhist_mean(const struct loadhist *h);

/* Bucket layout, for drawing distributions: the bucket index of v, and the
 * smallest and largest value bucket i holds. */
unsigned loadhist_index(uint64_t v);
uint64_t loadhist_lower(unsigned i);
uint64_t loadhist_upper(unsigned i);

#endif
