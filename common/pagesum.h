/* boomerang: the database checksum (DESIGN.md, invariant 3).
 *
 * checksum(db) = XOR over every page p in 1..npages, except the lock-byte
 * page, of XXH3_64bits_withSeed(data(p), page_size, seed = p), where data(1)
 * has bytes 24..27 and 92..99 zeroed (SQLite rewrites those on a replica) and
 * a page that was never written reads as zeros. XOR makes it incremental: a
 * commit XORs out each replaced page's old hash and XORs in the new one.
 *
 * The lock-byte page is the page holding byte offset 0x40000000
 * (pgno = 0x40000000 / page_size + 1); SQLite never writes it. */
#ifndef BOOMERANG_PAGESUM_H
#define BOOMERANG_PAGESUM_H

#include <stdint.h>

#include "common/util.h"

/* Hash of one page as it enters the checksum (page 1 masked). */
uint64_t pagesum_page(uint32_t pgno, const uint8_t *data, uint32_t page_size);

/* pgno of the lock-byte page for this page size. */
uint32_t pagesum_lock_page(uint32_t page_size);

/* Per-page hashes of one database, and their XOR. */
struct pagesum {
    uint32_t page_size;
    uint32_t npages; /* database size in pages */
    uint32_t cap;
    uint64_t *hash; /* hash[pgno-1] */
    uint64_t sum;
};

void pagesum_init(struct pagesum *ps, uint32_t page_size);
void pagesum_free(struct pagesum *ps);
/* Change the database size: new pages read as zeros, dropped pages leave. */
void pagesum_resize(struct pagesum *ps, uint32_t npages);
/* Replace page pgno (1 <= pgno <= npages) with data. */
void pagesum_set(struct pagesum *ps, uint32_t pgno, const uint8_t *data);
static inline uint64_t pagesum_value(const struct pagesum *ps)
{
    return ps->sum;
}

#endif
