/* boomerang: the unit-test harness. Each test_<module>.c defines tests with
 * TEST(name) { ... } and lists them in main via RUN(name). CHECK records a
 * failure and continues; REQUIRE returns from the test. The last line printed
 * is "N passed, N failed", which CI reads. */
#ifndef BOOMERANG_HARNESS_H
#define BOOMERANG_HARNESS_H

#include <stdio.h>
#include <string.h>

static int harness_passed, harness_failed, harness_cur_failed;

#define TEST(name) static void name(void)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);             \
            harness_cur_failed = 1;                                                                \
        }                                                                                          \
    } while (0)

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "  %s:%d: REQUIRE failed: %s\n", __FILE__, __LINE__, #cond);           \
            harness_cur_failed = 1;                                                                \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#define RUN(name)                                                                                  \
    do {                                                                                           \
        harness_cur_failed = 0;                                                                    \
        name();                                                                                    \
        if (harness_cur_failed) {                                                                  \
            harness_failed++;                                                                      \
            fprintf(stderr, "FAIL %s\n", #name);                                                   \
        } else {                                                                                   \
            harness_passed++;                                                                      \
        }                                                                                          \
    } while (0)

#define HARNESS_END()                                                                              \
    (printf("%s: %d passed, %d failed\n", __FILE__, harness_passed, harness_failed),               \
     harness_failed ? 1 : 0)

#endif
