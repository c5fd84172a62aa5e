/* Unit tests: common/pagesum.c, the database checksum. */
#include <stdlib.h>
#include <string.h>

#include "common/pagesum.h"
#include "harness.h"

static void fill_random(uint8_t *p, size_t n, unsigned *seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)rand_r(seed);
}

/* The checksum recomputed from scratch over a model of the pages. */
static uint64_t full_sum(uint8_t *const *pages, uint32_t npages, uint32_t page_size)
{
    static const uint8_t zeros[65536];
    uint64_t sum = 0;

    for (uint32_t p = 1; p <= npages; p++) {
        if (p == pagesum_lock_page(page_size))
            continue;
        sum ^= pagesum_page(p, pages[p - 1] ? pages[p - 1] : zeros, page_size);
    }
    return sum;
}

TEST(page1_header_fields_are_masked)
{
    uint8_t a[4096], b[4096];
    unsigned seed = 1;
    uint64_t h;

    fill_random(a, sizeof(a), &seed);
    h = pagesum_page(1, a, sizeof(a));
    memcpy(b, a, sizeof(a));
    for (int i = 24; i < 28; i++)
        b[i] ^= 0xff;
    for (int i = 92; i < 100; i++)
        b[i] ^= 0x5a;
    CHECK(pagesum_page(1, b, sizeof(b)) == h);
    CHECK(memcmp(a, b, 24) == 0); /* the input is not modified */
    const int others[] = {0, 23, 28, 40, 91, 100, 4095};
    for (size_t k = 0; k < ARRAY_LEN(others); k++) {
        memcpy(b, a, sizeof(a));
        b[others[k]] ^= 1;
        CHECK(pagesum_page(1, b, sizeof(b)) != h);
    }
}

TEST(only_page1_is_masked_and_pgno_seeds)
{
    uint8_t a[1024], b[1024];
    unsigned seed = 2;

    fill_random(a, sizeof(a), &seed);
    memcpy(b, a, sizeof(a));
    b[25] ^= 1;
    CHECK(pagesum_page(2, a, sizeof(a)) != pagesum_page(2, b, sizeof(b)));
    CHECK(pagesum_page(2, a, sizeof(a)) != pagesum_page(3, a, sizeof(a)));
}

TEST(incremental_equals_full_recompute)
{
    const uint32_t ps = 512, max_pages = 300;
    uint8_t *pages[300] = {0};
    unsigned seed = 3;
    struct pagesum ps_state;

    pagesum_init(&ps_state, ps);
    CHECK(pagesum_value(&ps_state) == 0);
    for (int step = 0; step < 2000; step++) {
        uint32_t n = ps_state.npages;
        if (rand_r(&seed) % 10 == 0) {
            uint32_t to = (uint32_t)rand_r(&seed) % max_pages;
            for (uint32_t p = to + 1; p <= n; p++) { /* dropped pages come back as zeros */
                free(pages[p - 1]);
                pages[p - 1] = NULL;
            }
            pagesum_resize(&ps_state, to);
        } else if (n > 0) {
            uint32_t p = 1 + (uint32_t)rand_r(&seed) % n;
            if (!pages[p - 1])
                pages[p - 1] = malloc(ps);
            fill_random(pages[p - 1], ps, &seed);
            pagesum_set(&ps_state, p, pages[p - 1]);
        } else {
            pagesum_resize(&ps_state, 1 + (uint32_t)rand_r(&seed) % max_pages);
        }
        if (step % 97 == 0)
            CHECK(pagesum_value(&ps_state) == full_sum(pages, ps_state.npages, ps));
    }
    CHECK(pagesum_value(&ps_state) == full_sum(pages, ps_state.npages, ps));
    pagesum_resize(&ps_state, 0);
    CHECK(pagesum_value(&ps_state) == 0);
    for (uint32_t p = 0; p < max_pages; p++)
        free(pages[p]);
    pagesum_free(&ps_state);
}

TEST(lock_page_never_counts)
{
    const uint32_t ps = 65536, lock = 0x40000000 / 65536 + 1;
    uint8_t *page = malloc(ps);
    struct pagesum s;
    uint64_t before;

    CHECK(pagesum_lock_page(4096) == 262145);
    CHECK(pagesum_lock_page(ps) == lock);
    memset(page, 0xab, ps);
    pagesum_init(&s, ps);
    pagesum_resize(&s, lock + 1);
    before = pagesum_value(&s);
    pagesum_set(&s, lock, page); /* SQLite never writes it; a raw copy might */
    CHECK(pagesum_value(&s) == before);
    pagesum_set(&s, lock + 1, page);
    CHECK(pagesum_value(&s) != before);
    /* Shrinking below and growing past it again keeps it out. */
    pagesum_resize(&s, lock - 1);
    pagesum_resize(&s, lock + 1);
    CHECK(pagesum_value(&s) == before);
    pagesum_free(&s);
    free(page);
}

int main(void)
{
    RUN(page1_header_fields_are_masked);
    RUN(only_page1_is_masked_and_pgno_seeds);
    RUN(incremental_equals_full_recompute);
    RUN(lock_page_never_counts);
    return HARNESS_END();
}
