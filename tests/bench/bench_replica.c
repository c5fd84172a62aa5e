/* bench_replica: the replica's side of the replication benchmarks, in process.
 *
 *   flags ─▶ apply_open(--replica) ─▶ h2client(--primary) ─▶ follow_start ─▶ one ev loop
 *
 *   --mode live     wait until the link is LIVE ("bench_replica: live" on stderr),
 *                   then, for every transaction applied, record
 *                       lag = now (right after the replica's COMMIT)
 *                             - TxnChunk.commit_time_us (the primary's commit)
 *                   into a histogram; stop once no transaction came for
 *                   --idle-exit-ms (after at least one), or at --max-seconds.
 *   --mode catchup  time from follow_start until the link is LIVE, i.e. applied ==
 *                   the primary's head as of the Hello (and any heartbeat since):
 *                   pages and MiB applied per second, and this process's CPU
 *                   seconds (getrusage) meanwhile; if a snapshot came first, its
 *                   own time and pages too. Start it on a copy of a replica that
 *                   has a position, N MiB behind, to measure catch-up from the
 *                   log; on a new file, to measure a snapshot.
 *
 * Lag needs one clock: both sides' times are CLOCK_REALTIME microseconds
 * (now_us), so it is only meaningful with the primary on the same machine.
 * The apply completion time is taken in follow's on_applied callback, right
 * after the transaction's COMMIT: it is visible to readers at that instant,
 * and no other work of the loop comes in between. Snapshots are not
 * transactions and are not counted.
 *
 * Output: one JSON line on stdout (with --json), else a short text report;
 * a markdown table row on stderr in both cases.
 *
 * Exit status: 0; 1 if nothing was measured (no transaction, or not LIVE
 * before --max-seconds) or the link saw errors; 2 on bad flags or setup. */
#include <ev.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "common/h2client.h"
#include "common/log.h"
#include "common/opt.h"
#include "common/util.h"
#include "replica/apply.h"
#include "replica/follow.h"
#include "tests/bench/hist.h"

#define MIB (1024.0 * 1024.0)

static struct {
    const char *primary, *replica, *mode, *log_level;
    int64_t max_seconds, idle_exit_ms, checkpoint_pages, max_message_mb;
    int json;
} conf = {
    .mode = "live",
    .log_level = "warn",
    .max_seconds = 60,
    .idle_exit_ms = 1000,
    .max_message_mb = 256,
};

static const struct opt opts[] = {
    {"primary", "BENCH_REPLICA_PRIMARY", OPT_STRING, &conf.primary, "URL",
     "the primary, http://HOST:PORT"},
    {"replica", "BENCH_REPLICA_PATH", OPT_STRING, &conf.replica, "PATH",
     "the replica database (created if missing; an existing one resumes from its position)"},
    {"mode", "BENCH_REPLICA_MODE", OPT_STRING, &conf.mode, "MODE",
     "live (lag per transaction) or catchup (time until caught up) (default live)"},
    {"max-seconds", "BENCH_REPLICA_MAX_SECONDS", OPT_INT, &conf.max_seconds, "S",
     "give up after S seconds (default 60)"},
    {"idle-exit-ms", "BENCH_REPLICA_IDLE_EXIT_MS", OPT_INT, &conf.idle_exit_ms, "MS",
     "live: stop once no transaction came for MS ms, after the first (default 1000)"},
    {"checkpoint-pages", "BENCH_REPLICA_CHECKPOINT_PAGES", OPT_INT, &conf.checkpoint_pages, "N",
     "passive checkpoint past N WAL pages (default: apply's, 4000)"},
    {"max-message-mb", "BENCH_REPLICA_MAX_MESSAGE_MB", OPT_INT, &conf.max_message_mb, "N",
     "largest replication event, MiB (default 256)"},
    {"json", "BENCH_REPLICA_JSON", OPT_FLAG, &conf.json, NULL, "print one JSON line"},
    {"log-level", "BENCH_REPLICA_LOG_LEVEL", OPT_STRING, &conf.log_level, "LEVEL",
     "error, warn, info, debug or trace (default warn)"},
};

struct bench {
    struct ev_loop *loop;
    struct apply *apply;
    struct h2client *client;
    struct follow *follow;
    int catchup;
    int done; /* catchup: LIVE reached */

    /* live */
    int live; /* LIVE was reached once: record from now on */
    struct hist lag;
    int64_t last_apply_mono;
    ev_timer idle;

    /* catchup; times on mono_us() */
    int64_t t_start, t_hello, t_snapshot_end, t_live;
    double cpu_start, cpu_live; /* this process's user + system seconds */
    uint64_t pages_start, pages_at_snapshot_end;
    uint32_t page_size;
    int saw_snapshot;

    ev_timer limit;
};

/* ---- live: lag per transaction ----------------------------------------------------*/

/* follow's on_applied: runs right after each transaction's COMMIT (never for
 * a snapshot), before the waiters are told. */
static void on_applied_cb(void *arg, uint64_t txid, int64_t commit_time_us)
{
    struct bench *b = arg;
    int64_t now = now_us();

    (void)txid;
    if (!b->live || commit_time_us <= 0)
        return;
    hist_add(&b->lag, (uint64_t)MAX(now - commit_time_us, 0));
    b->last_apply_mono = mono_us();
}

static void idle_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct bench *b = container_of(t, struct bench, idle);

    (void)revents;
    if (b->lag.n > 0 && mono_us() - b->last_apply_mono >= conf.idle_exit_ms * 1000)
        ev_break(loop, EVBREAK_ONE);
}

/* ---- catchup: time until LIVE ------------------------------------------------------*/

/* User + system CPU seconds of this process so far. */
static double cpu_seconds(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void on_state_cb(void *arg, enum follow_state state)
{
    struct bench *b = arg;
    struct apply_stats as;
    int64_t now = mono_us();

    if (state == FOLLOW_SNAPSHOT)
        b->saw_snapshot = 1;
    if (!b->t_hello && state >= FOLLOW_SNAPSHOT)
        b->t_hello = now;
    if (b->saw_snapshot && !b->t_snapshot_end && state >= FOLLOW_CATCHING_UP) {
        b->t_snapshot_end = now;
        apply_stats(b->apply, &as);
        b->pages_at_snapshot_end = as.pages;
    }
    if (state != FOLLOW_LIVE)
        return;
    if (b->catchup && !b->done) {
        b->done = 1;
        b->t_live = now;
        b->cpu_live = cpu_seconds();
        ev_break(b->loop, EVBREAK_ONE);
    } else if (!b->catchup && !b->live) {
        b->live = 1;
        b->last_apply_mono = now;
        fprintf(stderr, "bench_replica: live at txid %" PRIu64 "\n", follow_applied(b->follow));
    }
}

static void limit_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)t;
    (void)revents;
    fprintf(stderr, "bench_replica: --max-seconds %" PRId64 " reached\n", conf.max_seconds);
    ev_break(loop, EVBREAK_ONE);
}

/* ---- reports --------------------------------------------------------------------*/

static void report_live(const struct bench *b, const struct follow_status *st)
{
    const struct hist *h = &b->lag;
    unsigned long long p50 = hist_quantile(h, 0.50), p90 = hist_quantile(h, 0.90),
                       p99 = hist_quantile(h, 0.99), p999 = hist_quantile(h, 0.999);

    if (conf.json)
        printf("{\"mode\":\"live\",\"txns\":%" PRIu64 ",\"p50_us\":%llu,\"p90_us\":%llu,"
               "\"p99_us\":%llu,\"p999_us\":%llu,\"max_us\":%" PRIu64 ",\"reconnects\":%" PRIu64
               ",\"applied_txid\":%" PRIu64 "}\n",
               h->n, p50, p90, p99, p999, h->max, st->reconnects, st->applied_txid);
    else
        printf("bench_replica: %" PRIu64 " transactions; lag (us, primary commit to replica "
               "commit): p50 %llu  p90 %llu  p99 %llu  p99.9 %llu  max %" PRIu64 "\n",
               h->n, p50, p90, p99, p999, h->max);
    fprintf(stderr, "| lag | %" PRIu64 " | %llu | %llu | %" PRIu64 " |\n", h->n, p50, p99, h->max);
}

static void report_catchup(const struct bench *b, const struct follow_status *st)
{
    struct apply_stats as;
    double secs = (double)(b->t_live - b->t_start) / 1e6, snap_secs = 0, catch_secs;
    uint64_t pages, snap_pages = 0, catch_pages;

    apply_stats(b->apply, &as);
    pages = as.pages - b->pages_start;
    if (b->saw_snapshot && b->t_snapshot_end) {
        snap_secs = (double)(b->t_snapshot_end - b->t_start) / 1e6;
        snap_pages = b->pages_at_snapshot_end - b->pages_start;
    }
    catch_secs = secs - snap_secs;
    catch_pages = pages - snap_pages;
#define RATE(n, s) ((s) > 0 ? (double)(n) / (s) : 0.0)
    if (conf.json)
        printf("{\"mode\":\"catchup\",\"seconds\":%.3f,\"hello_ms\":%.1f,\"txns\":%" PRIu64
               ",\"page_size\":%u,\"pages\":%" PRIu64 ",\"mib\":%.1f,\"pages_per_s\":%.0f,"
               "\"mib_per_s\":%.1f,\"snapshot_seconds\":%.3f,\"snapshot_pages\":%" PRIu64
               ",\"snapshot_mib_per_s\":%.1f,\"log_seconds\":%.3f,\"log_pages\":%" PRIu64
               ",\"log_pages_per_s\":%.0f,\"log_mib_per_s\":%.1f,\"cpu_s\":%.3f,\"applied_txid\":"
               "%" PRIu64 "}\n",
               secs, (double)(b->t_hello - b->t_start) / 1e3, st->txns, b->page_size, pages,
               (double)pages * b->page_size / MIB, RATE(pages, secs),
               RATE(pages, secs) * b->page_size / MIB, snap_secs, snap_pages,
               RATE(snap_pages, snap_secs) * b->page_size / MIB, catch_secs, catch_pages,
               RATE(catch_pages, catch_secs), RATE(catch_pages, catch_secs) * b->page_size / MIB,
               b->cpu_live - b->cpu_start, st->applied_txid);
    else
        printf("bench_replica: caught up to txid %" PRIu64 " in %.3f s: %" PRIu64
               " pages (%.1f MiB), %.0f pages/s, %.1f MiB/s; snapshot %.3f s, %" PRIu64 " pages\n",
               st->applied_txid, secs, pages, (double)pages * b->page_size / MIB, RATE(pages, secs),
               RATE(pages, secs) * b->page_size / MIB, snap_secs, snap_pages);
    fprintf(stderr, "| catchup | %" PRIu64 " | %.1f | %.3f | %.0f | %.1f |\n", pages,
            (double)pages * b->page_size / MIB, secs, RATE(pages, secs),
            RATE(pages, secs) * b->page_size / MIB);
#undef RATE
}

/* ---- setup ----------------------------------------------------------------------*/

static int check_flags(void)
{
    enum log_level lvl;

    if (log_parse_level(conf.log_level, &lvl) != 0) {
        fprintf(stderr, "bench_replica: unknown --log-level '%s'\n", conf.log_level);
        return -1;
    }
    log_level = lvl;
    if (!conf.primary || !conf.replica) {
        fprintf(stderr, "bench_replica: --primary and --replica are required; see --help\n");
        return -1;
    }
    if (strcmp(conf.mode, "live") != 0 && strcmp(conf.mode, "catchup") != 0) {
        fprintf(stderr, "bench_replica: --mode must be live or catchup\n");
        return -1;
    }
    if (conf.max_seconds < 1 || conf.max_message_mb < 1 || conf.max_message_mb > 1024 ||
        conf.checkpoint_pages > UINT32_MAX) {
        fprintf(stderr, "bench_replica: --max-seconds >= 1, --max-message-mb 1..1024, "
                        "--checkpoint-pages <= 4294967295\n");
        return -1;
    }
    return 0;
}

/* Open the replica, the client and the link. Returns 0 or -1 (logged). */
static int bench_open(struct bench *b)
{
    struct apply_config ac = {.path = conf.replica,
                              .checkpoint_pages = (uint32_t)conf.checkpoint_pages};
    struct h2client_config hc = {.url = conf.primary,
                                 .max_message = (size_t)conf.max_message_mb << 20};
    struct follow_config fc = {.on_state = on_state_cb, .on_applied = on_applied_cb, .arg = b};
    struct apply_stats as;

    if (apply_open(&ac, &b->apply) != 0)
        return -1;
    apply_stats(b->apply, &as);
    b->pages_start = as.pages;
    if (h2client_new(b->loop, &hc, &b->client) != 0)
        return -1;
    fc.client = b->client;
    fc.apply = b->apply;
    b->t_start = mono_us();
    b->cpu_start = cpu_seconds();
    if (follow_start(b->loop, &fc, &b->follow) != 0) {
        fprintf(stderr, "bench_replica: follow_start failed\n");
        return -1;
    }
    return 0;
}

static void bench_close(struct bench *b)
{
    follow_free(b->follow);
    h2client_free(b->client);
    apply_close(b->apply);
}

/* 0 if the run measured something and the link saw no errors. */
static int bench_report(struct bench *b)
{
    struct follow_status st;
    struct apply_position pos;

    follow_status(b->follow, &st);
    apply_position(b->apply, &pos);
    b->page_size = pos.page_size;
    if (b->catchup) {
        if (!b->done) {
            fprintf(stderr,
                    "bench_replica: not caught up (applied %" PRIu64 ", head %" PRIu64 ")\n",
                    st.applied_txid, st.primary_head_txid);
            return -1;
        }
        report_catchup(b, &st);
    } else {
        report_live(b, &st);
        if (b->lag.n == 0)
            return -1;
    }
    if (st.checksum_mismatches || st.apply_errors || st.protocol_errors) {
        fprintf(stderr,
                "bench_replica: link errors: %" PRIu64 " mismatches, %" PRIu64 " apply, %" PRIu64
                " protocol\n",
                st.checksum_mismatches, st.apply_errors, st.protocol_errors);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static struct bench b; /* the histogram is large */
    int rc = opt_parse("bench_replica",
                       "Replication lag per transaction, or catch-up speed, of an in-process "
                       "replica (follow + apply on one loop).",
                       opts, (int)ARRAY_LEN(opts), argc, argv);

    if (rc != 0)
        return rc > 0 ? 0 : 2;
    log_set_program("bench_replica");
    if (check_flags() != 0)
        return 2;
    signal(SIGPIPE, SIG_IGN);
    b.catchup = strcmp(conf.mode, "catchup") == 0;
    b.loop = ev_default_loop(0);
    if (bench_open(&b) != 0) {
        bench_close(&b);
        return 2;
    }
    ev_timer_init(&b.limit, limit_cb, (double)conf.max_seconds, 0.);
    ev_timer_start(b.loop, &b.limit);
    ev_timer_init(&b.idle, idle_cb, 0.1, 0.1);
    if (!b.catchup)
        ev_timer_start(b.loop, &b.idle);
    ev_run(b.loop, 0);
    ev_timer_stop(b.loop, &b.limit);
    ev_timer_stop(b.loop, &b.idle);
    rc = bench_report(&b) == 0 ? 0 : 1;
    bench_close(&b);
    return rc;
}
