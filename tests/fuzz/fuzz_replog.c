/* Fuzz target: primary/replog.c reading untrusted segment bytes. The input is
 * written as the only segment of a log (named after the txid its first header
 * claims, so the name check passes), then the log is opened (tail recovery),
 * every record and page is read back, and one more record is appended and
 * read. Nothing may crash, leak or read out of bounds.
 *
 * Run with -close_fd_mask=2: the log reports every damaged record on stderr. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "primary/replog.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[] = "/tmp/fuzz_replog.XXXXXX";
static char logdir[64];

/* Empty the log directory (it only ever holds segment files). */
static void clear_dir(void)
{
    DIR *d = opendir(logdir);
    struct dirent *de;

    if (!d)
        return;
    while ((de = readdir(d)) != NULL)
        if (de->d_name[0] != '.')
            unlinkat(dirfd(d), de->d_name, 0);
    closedir(d);
}

static void write_segment(const uint8_t *data, size_t size)
{
    uint64_t first = size >= 16 ? get_be64(data + 8) : 1;
    char path[128];
    FILE *f;

    clear_dir();
    if (mkdir(logdir, 0755) != 0 && errno != EEXIST)
        abort();
    snprintf(path, sizeof(path), "%s/%016llx.log", logdir, (unsigned long long)(first ? first : 1));
    f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size)
        abort();
    fclose(f);
}

static void read_all(struct replog *log, uint64_t from)
{
    struct replog_reader *r;
    struct replog_txn t;

    if (replog_reader_open(log, from, &r) != 0)
        return;
    while (replog_reader_next(r, &t) == 0) {
        for (uint32_t i = 0; i < t.npages; i++) {
            const uint8_t *page;
            uint32_t pgno;
            if (replog_reader_page(r, i, &pgno, &page) != 0)
                break;
        }
    }
    replog_reader_close(r);
}

static void append_one(struct replog *log)
{
    static uint8_t page[512];
    const uint8_t *pages[1] = {page};
    uint32_t pgno[1] = {1};
    struct replog_txn t;

    memset(&t, 0, sizeof(t));
    t.txid = replog_head(log) + 1;
    t.page_size = 512;
    t.db_pages = 1;
    t.npages = 1;
    if (t.txid != 0 && replog_append_pages(log, &t, pgno, pages) == 0)
        read_all(log, t.txid);
}

static void cleanup(void)
{
    clear_dir();
    rmdir(logdir);
    rmdir(dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    struct replog_config cfg;
    struct replog *log;

    if (!ready) {
        if (!mkdtemp(dir))
            abort();
        snprintf(logdir, sizeof(logdir), "%s/log", dir);
        atexit(cleanup);
        ready = 1;
    }
    write_segment(data, size);
    memset(&cfg, 0, sizeof(cfg));
    cfg.dir = logdir;
    if (replog_open(&cfg, &log) != 0)
        return 0;
    if (replog_first(log))
        read_all(log, replog_first(log));
    append_one(log);
    replog_close(log);
    return 0;
}
