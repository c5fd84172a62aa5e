/* boomerang-bench: the log-bucketed histogram (layout in loadhist.h). */
#include "tests/load/loadhist.h"

#include <math.h>
#include <string.h>

void loadhist_reset(struct loadhist *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

unsigned loadhist_index(uint64_t v)
{
    unsigned msb;

    if (v > LOADHIST_MAX)
        v = LOADHIST_MAX;
    if (v < LOADHIST_SUB)
        return (unsigned)v;
    msb = 63u - (unsigned)__builtin_clzll(v);
    /* Octave msb >= SUB_BITS starts at bucket (msb - SUB_BITS + 1) * SUB; the
     * SUB_BITS bits below the leading one pick the sub-bucket. */
    return (msb - LOADHIST_SUB_BITS + 1) * LOADHIST_SUB +
           (unsigned)((v >> (msb - LOADHIST_SUB_BITS)) & (LOADHIST_SUB - 1));
}

uint64_t loadhist_lower(unsigned i)
{
    unsigned shift;

    if (i < LOADHIST_SUB)
        return i;
    shift = i / LOADHIST_SUB - 1;
    return ((uint64_t)LOADHIST_SUB + i % LOADHIST_SUB) << shift;
}

uint64_t loadhist_upper(unsigned i)
{
    if (i + 1 >= LOADHIST_BUCKETS)
        return LOADHIST_MAX;
    return loadhist_lower(i + 1) - 1;
}

void loadhist_record(struct loadhist *h, uint64_t v)
{
    h->buckets[loadhist_index(v)]++;
    h->count++;
    h->sum += (double)v;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
}

void loadhist_merge(struct loadhist *dst, const struct loadhist *src)
{
    if (src->count == 0)
        return;
    for (unsigned i = 0; i < LOADHIST_BUCKETS; i++)
        dst->buckets[i] += src->buckets[i];
    dst->count += src->count;
    dst->sum += src->sum;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
}

uint64_t loadhist_quantile(const struct loadhist *h, double q)
{
    uint64_t want, seen = 0, mid;

    if (h->count == 0)
        return 0;
    if (q >= 1.0)
        return h->max;
    want = q <= 0.0 ? 1 : (uint64_t)ceil(q * (double)h->count);
    if (want == 0)
        want = 1;
    for (unsigned i = 0; i < LOADHIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen < want)
            continue;
        mid = loadhist_lower(i) + (loadhist_upper(i) - loadhist_lower(i)) / 2;
        if (mid < h->min)
            mid = h->min;
        if (mid > h->max)
            mid = h->max;
        return mid;
    }
    return h->max;
}

double loadhist_mean(const struct loadhist *h)
{
    return h->count ? h->sum / (double)h->count : 0.0;
}
