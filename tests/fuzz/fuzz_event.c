/* libFuzzer target: the replica's replication-stream decoder.
 *
 * The input is a sequence of events, each a 2-byte big-endian length and a
 * serialized ReplicationEvent. They are fed to a real follow (the link state
 * machine) with a real apply on a fresh replica file, exactly as if they had
 * arrived on the Subscribe stream: malformed protobuf, events out of order,
 * bad pages, wrong checksums and snapshots of garbage must all be refused
 * without a crash or leak, and whatever apply committed must be a database
 * SQLite can open. The seed corpus holds a valid snapshot plus transactions. */
#include <ev.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/h2client.h"
#include "common/log.h"
#include "replica/apply.h"
#include "replica/follow.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64];

static void cleanup(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct h2client_config hc = {.url = "http://127.0.0.1:9"};
    struct h2client *client = NULL;
    struct apply *apply = NULL;
    struct follow *f = NULL;
    char path[96];

    log_level = LOGL_ERROR + (getenv("FUZZ_LOG") != NULL) * 4;
    snprintf(dir, sizeof(dir), "/tmp/boomerang-fuzz-event-%d", (int)getpid());
    cleanup();
    if (mkdir(dir, 0700) != 0)
        abort();
    snprintf(path, sizeof(path), "%s/r.db", dir);
    if (h2client_new(loop, &hc, &client) != 0 ||
        apply_open(&(struct apply_config){.path = path}, &apply) != 0 ||
        follow_start(loop, &(struct follow_config){.client = client, .apply = apply}, &f) != 0)
        abort();
    while (size >= 2) {
        size_t n = (size_t)data[0] << 8 | data[1];
        data += 2;
        size -= 2;
        n = n < size ? n : size;
        follow_feed(f, data, n);
        data += n;
        size -= n;
    }
    follow_free(f);
    h2client_free(client);
    apply_close(apply);
    ev_loop_destroy(loop);
    cleanup();
    return 0;
}
