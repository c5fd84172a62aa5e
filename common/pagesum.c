/* boomerang: the database checksum (see common/pagesum.h for the definition).
 *
 * Each page's hash is XXH3_64bits_withSeed(data, page_size, pgno). The XOR of
 * all of them is order-free, so a commit only rehashes the pages it wrote. The
 * per-page table costs 8 bytes a page (20 MB for a 10 GB database of 4 KiB
 * pages), which is what makes replacing a page O(page_size). */
#include "common/pagesum.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

/* SQLite's largest page size; a zero page of this size backs every "never
 * written" page hash. */
#define PAGESUM_MAX_PAGE 65536

/* Page-1 header fields that a replica's pager rewrites (change counter at 24,
 * version-valid-for at 92, SQLite version number at 96), so the checksum must
 * not see them (research/wal.md 1.4 #3). */
#define PAGESUM_MASK1_OFF 24
#define PAGESUM_MASK1_LEN 4
#define PAGESUM_MASK2_OFF 92
#define PAGESUM_MASK2_LEN 8

static const uint8_t zero_page[PAGESUM_MAX_PAGE];

uint32_t pagesum_lock_page(uint32_t page_size)
{
    assert(page_size >= 512 && page_size <= PAGESUM_MAX_PAGE);
    return 0x40000000u / page_size + 1;
}

uint64_t pagesum_page(uint32_t pgno, const uint8_t *data, uint32_t page_size)
{
    uint8_t *copy;
    uint64_t h;

    if (pgno != 1)
        return XXH3_64bits_withSeed(data, page_size, pgno);
    /* Page 1 is rare enough (schema, size or freelist changes) that a heap
     * copy beats a 64 KiB stack buffer on the writer thread. */
    copy = xmalloc(page_size);
    memcpy(copy, data, page_size);
    memset(copy + PAGESUM_MASK1_OFF, 0, PAGESUM_MASK1_LEN);
    memset(copy + PAGESUM_MASK2_OFF, 0, PAGESUM_MASK2_LEN);
    h = XXH3_64bits_withSeed(copy, page_size, 1);
    free(copy);
    return h;
}

void pagesum_init(struct pagesum *ps, uint32_t page_size)
{
    assert(page_size >= 512 && page_size <= PAGESUM_MAX_PAGE);
    assert((page_size & (page_size - 1)) == 0);
    memset(ps, 0, sizeof(*ps));
    ps->page_size = page_size;
}

void pagesum_free(struct pagesum *ps)
{
    free(ps->hash);
    ps->hash = NULL;
    ps->npages = ps->cap = 0;
    ps->sum = 0;
}

/* The hash a page contributes before anything is written to it: the hash of
 * zeros, except the lock-byte page, which never contributes. */
static uint64_t zero_hash(const struct pagesum *ps, uint32_t pgno)
{
    if (pgno == pagesum_lock_page(ps->page_size))
        return 0;
    return pagesum_page(pgno, zero_page, ps->page_size);
}

void pagesum_resize(struct pagesum *ps, uint32_t npages)
{
    if (npages > ps->cap) {
        uint32_t cap = ps->cap ? ps->cap : 64;
        while (cap < npages)
            cap = cap > UINT32_MAX / 2 ? npages : cap * 2;
        ps->hash = xrealloc(ps->hash, (size_t)cap * sizeof(ps->hash[0]));
        ps->cap = cap;
    }
    while (ps->npages < npages) {
        ps->hash[ps->npages] = zero_hash(ps, ps->npages + 1);
        ps->sum ^= ps->hash[ps->npages];
        ps->npages++;
    }
    while (ps->npages > npages) {
        ps->npages--;
        ps->sum ^= ps->hash[ps->npages];
    }
}

void pagesum_set(struct pagesum *ps, uint32_t pgno, const uint8_t *data)
{
    uint64_t h;

    assert(pgno >= 1 && pgno <= ps->npages);
    /* SQLite never writes the lock-byte page; a raw read of the database file
     * may still hand it to us, and it must stay out of the sum. */
    if (pgno == pagesum_lock_page(ps->page_size))
        return;
    h = pagesum_page(pgno, data, ps->page_size);
    ps->sum ^= ps->hash[pgno - 1] ^ h;
    ps->hash[pgno - 1] = h;
}
