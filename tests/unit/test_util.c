/* Unit tests: common/util.c's number formatting (the hot paths' snprintf). */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/util.h"
#include "harness.h"

static int same_u64(uint64_t v)
{
    char got[UTIL_U64_DIGITS + 1], want[32];
    size_t n = util_fmt_u64(got, v);

    got[n] = '\0';
    snprintf(want, sizeof(want), "%" PRIu64, v);
    return n == strlen(want) && strcmp(got, want) == 0;
}

static int same_i64(int64_t v)
{
    char got[UTIL_U64_DIGITS + 2], want[32];
    size_t n = util_fmt_i64(got, v);

    got[n] = '\0';
    snprintf(want, sizeof(want), "%" PRId64, v);
    return n == strlen(want) && strcmp(got, want) == 0;
}

TEST(u64_edges_and_every_length)
{
    uint64_t v = 1;

    CHECK(same_u64(0));
    CHECK(same_u64(UINT64_MAX));
    for (int i = 0; i < 20; i++, v *= 10) {
        CHECK(same_u64(v));
        CHECK(same_u64(v - 1));
        CHECK(same_u64(v + 7));
    }
}

TEST(i64_edges)
{
    CHECK(same_i64(0));
    CHECK(same_i64(-1));
    CHECK(same_i64(INT64_MIN));
    CHECK(same_i64(INT64_MIN + 1));
    CHECK(same_i64(INT64_MAX));
    CHECK(same_i64(-1234567890123LL));
}

int main(void)
{
    RUN(u64_edges_and_every_length);
    RUN(i64_edges);
    return HARNESS_END();
}
