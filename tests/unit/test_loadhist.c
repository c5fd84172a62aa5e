/* Unit tests for boomerang-bench's histogram (tests/load/loadhist.c): every
 * quantile against a sorted-array oracle within the documented relative error,
 * merging, and the extremes the bench must cover (1 µs to 10 min and beyond).
 * tests/load/ is not part of the library the unit tests link, so the module is
 * compiled into this test directly. */
#include "tests/load/loadhist.c"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "common/util.h"
#include "tests/unit/harness.h"

#define MAX_REL_ERR (1.0 / (2.0 * LOADHIST_SUB))

static struct loadhist ha, hb, hc;

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The q-quantile of a sorted array by the same rank rule as the histogram. */
static uint64_t oracle(const uint64_t *v, size_t n, double q)
{
    size_t want = q <= 0.0 ? 1 : (size_t)ceil(q * (double)n);
    if (want == 0)
        want = 1;
    if (want > n)
        want = n;
    return v[want - 1];
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t rng_next(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static int within(uint64_t got, uint64_t want)
{
    double err = fabs((double)got - (double)want);
    return err <= MAX_REL_ERR * (double)want + 0.5;
}

static void check_against_oracle(uint64_t *v, size_t n)
{
    static const double qs[] = {0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0};
    loadhist_reset(&ha);
    for (size_t i = 0; i < n; i++)
        loadhist_record(&ha, v[i]);
    qsort(v, n, sizeof(v[0]), cmp_u64);
    CHECK(ha.count == n);
    CHECK(ha.min == v[0]);
    CHECK(ha.max == v[n - 1]);
    for (size_t i = 0; i < ARRAY_LEN(qs); i++) {
        uint64_t got = loadhist_quantile(&ha, qs[i]), want = oracle(v, n, qs[i]);
        if (!within(got, want))
            fprintf(stderr, "  q=%g got %llu want %llu\n", qs[i], (unsigned long long)got,
                    (unsigned long long)want);
        CHECK(within(got, want));
    }
}

TEST(empty_is_zero)
{
    loadhist_reset(&ha);
    CHECK(loadhist_quantile(&ha, 0.5) == 0);
    CHECK(loadhist_quantile(&ha, 1.0) == 0);
    CHECK(loadhist_mean(&ha) == 0.0);
}

TEST(uniform_microseconds_to_seconds)
{
    static uint64_t v[20000];
    for (size_t i = 0; i < ARRAY_LEN(v); i++)
        v[i] = 1 + rng_next() % 5000000;
    check_against_oracle(v, ARRAY_LEN(v));
}

TEST(log_uniform_1us_to_10min)
{
    static uint64_t v[20000];
    for (size_t i = 0; i < ARRAY_LEN(v); i++) {
        double e = (double)(rng_next() % 1000000) / 1000000.0 * log(600e6);
        v[i] = (uint64_t)exp(e);
        if (v[i] < 1)
            v[i] = 1;
    }
    check_against_oracle(v, ARRAY_LEN(v));
}

TEST(small_values_are_exact)
{
    loadhist_reset(&ha);
    for (uint64_t x = 0; x < LOADHIST_SUB; x++)
        loadhist_record(&ha, x);
    for (uint64_t x = 0; x < LOADHIST_SUB; x++)
        CHECK(loadhist_quantile(&ha, (double)(x + 1) / LOADHIST_SUB) == x);
}

TEST(extremes_one_us_and_ten_minutes)
{
    const uint64_t ten_min = 600ull * 1000 * 1000;
    loadhist_reset(&ha);
    loadhist_record(&ha, 1);
    loadhist_record(&ha, ten_min);
    CHECK(loadhist_quantile(&ha, 0.5) == 1);
    CHECK(loadhist_quantile(&ha, 1.0) == ten_min);
    CHECK(within(loadhist_quantile(&ha, 0.99), ten_min));
    /* Every value's bucket brackets it, across the whole range. */
    for (uint64_t x = 1; x <= ten_min * 4; x = x * 3 / 2 + 1) {
        unsigned i = loadhist_index(x);
        CHECK(i < LOADHIST_BUCKETS);
        CHECK(loadhist_lower(i) <= x && x <= loadhist_upper(i));
    }
}

TEST(beyond_range_is_clamped)
{
    loadhist_reset(&ha);
    loadhist_record(&ha, UINT64_MAX);
    loadhist_record(&ha, LOADHIST_MAX + 5);
    CHECK(loadhist_index(UINT64_MAX) == LOADHIST_BUCKETS - 1);
    CHECK(ha.max == UINT64_MAX);
    CHECK(loadhist_quantile(&ha, 1.0) == UINT64_MAX);
    CHECK(loadhist_quantile(&ha, 0.5) >= LOADHIST_MAX / 2);
}

TEST(buckets_tile_the_range)
{
    for (unsigned i = 0; i + 1 < LOADHIST_BUCKETS; i++) {
        CHECK(loadhist_upper(i) + 1 == loadhist_lower(i + 1));
        CHECK(loadhist_index(loadhist_lower(i)) == i);
        CHECK(loadhist_index(loadhist_upper(i)) == i);
    }
}

TEST(merge_equals_recording_both)
{
    loadhist_reset(&ha);
    loadhist_reset(&hb);
    loadhist_reset(&hc);
    for (int i = 0; i < 5000; i++) {
        uint64_t x = rng_next() % 100000000;
        loadhist_record(i % 3 ? &ha : &hb, x);
        loadhist_record(&hc, x);
    }
    loadhist_merge(&ha, &hb);
    CHECK(ha.count == hc.count);
    CHECK(ha.min == hc.min);
    CHECK(ha.max == hc.max);
    CHECK(memcmp(ha.buckets, hc.buckets, sizeof(ha.buckets)) == 0);
    CHECK(fabs(loadhist_mean(&ha) - loadhist_mean(&hc)) < 1e-6 * loadhist_mean(&hc));
    /* Merging an empty histogram changes nothing, min included. */
    loadhist_reset(&hb);
    loadhist_merge(&ha, &hb);
    CHECK(ha.count == hc.count && ha.min == hc.min);
    loadhist_merge(&hb, &ha);
    CHECK(hb.count == hc.count && hb.min == hc.min && hb.max == hc.max);
}

TEST(mean_is_exact)
{
    loadhist_reset(&ha);
    loadhist_record(&ha, 1000);
    loadhist_record(&ha, 3000);
    CHECK(loadhist_mean(&ha) == 2000.0);
}

int main(void)
{
    RUN(empty_is_zero);
    RUN(uniform_microseconds_to_seconds);
    RUN(log_uniform_1us_to_10min);
    RUN(small_values_are_exact);
    RUN(extremes_one_us_and_ten_minutes);
    RUN(beyond_range_is_clamped);
    RUN(buckets_tile_the_range);
    RUN(merge_equals_recording_both);
    RUN(mean_is_exact);
    return HARNESS_END();
}
