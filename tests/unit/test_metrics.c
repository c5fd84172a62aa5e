/* Tests for common/metrics.c: the exact text rendered for counters, gauges
 * (set and computed), histograms, labels and collectors; escaping; concurrent
 * updates from several threads; and registration misuse aborting. */
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/log.h"
#include "common/metrics.h"
#include "tests/unit/harness.h"

/* Render m into a NUL-terminated string the caller frees. */
static char *render(struct metrics *m)
{
    struct buf b = {0};
    char *s;

    metrics_render(m, &b);
    s = malloc(buf_avail(&b) + 1);
    memcpy(s, b.data ? (const char *)buf_head(&b) : "", buf_avail(&b));
    s[buf_avail(&b)] = '\0';
    buf_free(&b);
    return s;
}

static int text_is(struct metrics *m, const char *want)
{
    char *got = render(m);
    int ok = strcmp(got, want) == 0;

    if (!ok)
        fprintf(stderr, "  rendered:\n%s  wanted:\n%s", got, want);
    free(got);
    return ok;
}

TEST(empty_registry)
{
    struct metrics *m = metrics_new();

    CHECK(text_is(m, ""));
    metrics_free(m);
    metrics_free(NULL);
}

TEST(counters_with_and_without_labels)
{
    struct metrics *m = metrics_new();
    struct metrics_counter *c = metrics_counter_new(m, "boomerang_commits_total", "Commits.", NULL);
    struct metrics_counter *p =
        metrics_counter_new(m, "boomerang_fallbacks_total", "Reads that fell back, by kind.",
                            (const char *const[]){"kind", "primary", NULL});
    struct metrics_counter *s = metrics_counter_new(m, "boomerang_fallbacks_total", "ignored",
                                                    (const char *const[]){"kind", "stale", NULL});

    metrics_counter_inc(c);
    metrics_counter_add(c, 41);
    metrics_counter_add(p, 3);
    metrics_counter_add(s, UINT64_C(18446744073709551615));
    CHECK(metrics_counter_get(c) == 42);
    CHECK(text_is(m, "# HELP boomerang_commits_total Commits.\n"
                     "# TYPE boomerang_commits_total counter\n"
                     "boomerang_commits_total 42\n"
                     "# HELP boomerang_fallbacks_total Reads that fell back, by kind.\n"
                     "# TYPE boomerang_fallbacks_total counter\n"
                     "boomerang_fallbacks_total{kind=\"primary\"} 3\n"
                     "boomerang_fallbacks_total{kind=\"stale\"} 18446744073709551615\n"));
    metrics_free(m);
}

static double lag_fn(void *arg)
{
    return *(double *)arg;
}

TEST(gauges_set_added_and_computed)
{
    struct metrics *m = metrics_new();
    struct metrics_gauge *g = metrics_gauge_new(m, "g_subscribers", "Subscribers.", NULL);
    struct metrics_gauge *f = metrics_gauge_new(m, "g_ratio", "A ratio.", NULL);
    double lag = 1.5;

    metrics_gauge_fn_new(m, "g_lag_seconds", "Lag.",
                         (const char *const[]){"db", "main", "side", "left", NULL}, lag_fn, &lag);
    metrics_gauge_set(g, 3);
    metrics_gauge_add(g, -1);
    metrics_gauge_add(g, 0.5);
    metrics_gauge_set(f, 0.1);
    CHECK(metrics_gauge_get(g) == 2.5);
    CHECK(text_is(m, "# HELP g_subscribers Subscribers.\n"
                     "# TYPE g_subscribers gauge\n"
                     "g_subscribers 2.5\n"
                     "# HELP g_ratio A ratio.\n"
                     "# TYPE g_ratio gauge\n"
                     "g_ratio 0.1\n"
                     "# HELP g_lag_seconds Lag.\n"
                     "# TYPE g_lag_seconds gauge\n"
                     "g_lag_seconds{db=\"main\",side=\"left\"} 1.5\n"));
    /* Computed at render time. */
    lag = 250;
    metrics_gauge_set(f, -1e20);
    CHECK(text_is(m, "# HELP g_subscribers Subscribers.\n"
                     "# TYPE g_subscribers gauge\n"
                     "g_subscribers 2.5\n"
                     "# HELP g_ratio A ratio.\n"
                     "# TYPE g_ratio gauge\n"
                     "g_ratio -1e+20\n"
                     "# HELP g_lag_seconds Lag.\n"
                     "# TYPE g_lag_seconds gauge\n"
                     "g_lag_seconds{db=\"main\",side=\"left\"} 250\n"));
    metrics_free(m);
}

TEST(special_values)
{
    struct metrics *m = metrics_new();
    struct metrics_gauge *a =
        metrics_gauge_new(m, "v", "V.", (const char *const[]){"i", "a", NULL});
    struct metrics_gauge *b =
        metrics_gauge_new(m, "v", "V.", (const char *const[]){"i", "b", NULL});
    struct metrics_gauge *c =
        metrics_gauge_new(m, "v", "V.", (const char *const[]){"i", "c", NULL});
    struct metrics_gauge *d =
        metrics_gauge_new(m, "v", "V.", (const char *const[]){"i", "d", NULL});

    metrics_gauge_set(a, NAN);
    metrics_gauge_set(b, INFINITY);
    metrics_gauge_set(c, -INFINITY);
    metrics_gauge_set(d, 1.0 / 3.0);
    CHECK(text_is(m, "# HELP v V.\n# TYPE v gauge\n"
                     "v{i=\"a\"} NaN\n"
                     "v{i=\"b\"} +Inf\n"
                     "v{i=\"c\"} -Inf\n"
                     "v{i=\"d\"} 0.3333333333333333\n"));
    metrics_free(m);
}

TEST(histogram_buckets_sum_count)
{
    struct metrics *m = metrics_new();
    static const double bounds[] = {0.001, 0.01, 0.1};
    struct metrics_histogram *h =
        metrics_histogram_new(m, "wait_seconds", "Wait time.", NULL, bounds, 3);
    struct metrics_histogram *l = metrics_histogram_new(
        m, "wait_seconds", "Wait time.", (const char *const[]){"mode", "session", NULL}, bounds, 3);

    metrics_histogram_observe(h, 0.0005); /* first bucket */
    metrics_histogram_observe(h, 0.001);  /* le is inclusive: first bucket */
    metrics_histogram_observe(h, 0.05);   /* third */
    metrics_histogram_observe(h, 2);      /* +Inf only */
    metrics_histogram_observe(h, NAN);    /* ignored */
    metrics_histogram_observe(l, 0.01);
    CHECK(text_is(m, "# HELP wait_seconds Wait time.\n"
                     "# TYPE wait_seconds histogram\n"
                     "wait_seconds_bucket{le=\"0.001\"} 2\n"
                     "wait_seconds_bucket{le=\"0.01\"} 2\n"
                     "wait_seconds_bucket{le=\"0.1\"} 3\n"
                     "wait_seconds_bucket{le=\"+Inf\"} 4\n"
                     "wait_seconds_sum 2.0515\n"
                     "wait_seconds_count 4\n"
                     "wait_seconds_bucket{mode=\"session\",le=\"0.001\"} 0\n"
                     "wait_seconds_bucket{mode=\"session\",le=\"0.01\"} 1\n"
                     "wait_seconds_bucket{mode=\"session\",le=\"0.1\"} 1\n"
                     "wait_seconds_bucket{mode=\"session\",le=\"+Inf\"} 1\n"
                     "wait_seconds_sum{mode=\"session\"} 0.01\n"
                     "wait_seconds_count{mode=\"session\"} 1\n"));
    metrics_free(m);
}

TEST(latency_buckets_render)
{
    struct metrics *m = metrics_new();
    struct metrics_histogram *h = metrics_histogram_new(
        m, "lat_seconds", "L.", NULL, metrics_latency_buckets, METRICS_LATENCY_NBUCKETS);
    char *text;

    metrics_histogram_observe(h, 0.0003);
    text = render(m);
    CHECK(strstr(text, "lat_seconds_bucket{le=\"0.0001\"} 0\n") != NULL);
    CHECK(strstr(text, "lat_seconds_bucket{le=\"0.00025\"} 0\n") != NULL);
    CHECK(strstr(text, "lat_seconds_bucket{le=\"0.0005\"} 1\n") != NULL);
    CHECK(strstr(text, "lat_seconds_bucket{le=\"10\"} 1\n") != NULL);
    CHECK(strstr(text, "lat_seconds_bucket{le=\"+Inf\"} 1\n") != NULL);
    CHECK(strstr(text, "lat_seconds_sum 0.0003\n") != NULL);
    free(text);
    metrics_free(m);
}

TEST(escaping_of_help_and_label_values)
{
    struct metrics *m = metrics_new();

    metrics_counter_new(m, "esc_total", "Line one\nback\\slash \"quoted\"",
                        (const char *const[]){"path", "a\"b\\c\nd", NULL});
    CHECK(text_is(m, "# HELP esc_total Line one\\nback\\\\slash \"quoted\"\n"
                     "# TYPE esc_total counter\n"
                     "esc_total{path=\"a\\\"b\\\\c\\nd\"} 0\n"));
    metrics_free(m);
}

struct sub {
    const char *peer;
    double lag;
};

static void collect_subs(void *arg, struct metrics_sink *sink)
{
    const struct sub *subs = arg;

    for (int i = 0; subs[i].peer; i++)
        metrics_sample(sink, (const char *const[]){"peer", subs[i].peer, NULL}, subs[i].lag);
    metrics_sample(sink, (const char *const[]){"bad-name", "x", NULL}, 1); /* dropped */
}

TEST(collector_emits_dynamic_series)
{
    struct metrics *m = metrics_new();
    struct sub subs[3] = {{"10.0.0.1:5000", 3}, {"10.0.0.2:5000", 0}, {NULL, 0}};

    metrics_collect_new(m, "sub_lag_txids", "Lag per subscriber.", METRICS_GAUGE, collect_subs,
                        subs);
    CHECK(text_is(m, "# HELP sub_lag_txids Lag per subscriber.\n"
                     "# TYPE sub_lag_txids gauge\n"
                     "sub_lag_txids{peer=\"10.0.0.1:5000\"} 3\n"
                     "sub_lag_txids{peer=\"10.0.0.2:5000\"} 0\n"));
    subs[0].peer = NULL; /* everyone left */
    CHECK(text_is(m, "# HELP sub_lag_txids Lag per subscriber.\n"
                     "# TYPE sub_lag_txids gauge\n"));
    metrics_free(m);
}

#define THREADS 4
#define ROUNDS  100000

struct hammer {
    struct metrics_counter *c;
    struct metrics_gauge *g;
    struct metrics_histogram *h;
};

static void *hammer_main(void *arg)
{
    struct hammer *hm = arg;

    for (int i = 0; i < ROUNDS; i++) {
        metrics_counter_inc(hm->c);
        metrics_gauge_add(hm->g, 1);
        metrics_histogram_observe(hm->h, (i % 2) ? 0.5 : 2);
    }
    return NULL;
}

TEST(concurrent_updates_are_not_lost)
{
    struct metrics *m = metrics_new();
    static const double bounds[] = {1};
    struct hammer hm = {
        .c = metrics_counter_new(m, "h_total", "H.", NULL),
        .g = metrics_gauge_new(m, "h_gauge", "H.", NULL),
        .h = metrics_histogram_new(m, "h_seconds", "H.", NULL, bounds, 1),
    };
    pthread_t t[THREADS];
    char want[256], *text;

    for (int i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, hammer_main, &hm);
    for (int i = 0; i < 50; i++) /* render while updates land */
        free(render(m));
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    CHECK(metrics_counter_get(hm.c) == (uint64_t)THREADS * ROUNDS);
    CHECK(metrics_gauge_get(hm.g) == (double)THREADS * ROUNDS);
    text = render(m);
    snprintf(want, sizeof(want),
             "h_seconds_bucket{le=\"1\"} %d\nh_seconds_bucket{le=\"+Inf\"} %d\n"
             "h_seconds_sum %d\nh_seconds_count %d\n",
             THREADS * ROUNDS / 2, THREADS * ROUNDS, THREADS * ROUNDS * 5 / 4, THREADS * ROUNDS);
    CHECK(strstr(text, want) != NULL);
    free(text);
    metrics_free(m);
}

/* The registry the misuse cases register in (a global, so that what the
 * aborting child allocated stays reachable for leak checkers). */
static struct metrics *scratch;

/* Run fn in a child process; 1 if it died of SIGABRT. */
static int aborts(void (*fn)(void))
{
    pid_t pid = fork();
    int status;

    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) /* silence the expected error line */
            dup2(null, STDERR_FILENO);
        scratch = metrics_new();
        fn();
        _exit(0);
    }
    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        return 0;
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

static void bad_name(void)
{
    metrics_counter_new(scratch, "1bad", "x", NULL);
}

static void bad_label_name(void)
{
    metrics_counter_new(scratch, "ok_total", "x", (const char *const[]){"a-b", "v", NULL});
}

static void odd_labels(void)
{
    metrics_counter_new(scratch, "ok_total", "x", (const char *const[]){"a", NULL});
}

static void reserved_label(void)
{
    metrics_counter_new(scratch, "ok_total", "x", (const char *const[]){"__x", "v", NULL});
}

static void le_on_histogram(void)
{
    static const double b[] = {1};
    metrics_histogram_new(scratch, "h", "x", (const char *const[]){"le", "1", NULL}, b, 1);
}

static void type_clash(void)
{
    metrics_counter_new(scratch, "same", "x", NULL);
    metrics_gauge_new(scratch, "same", "x", (const char *const[]){"a", "b", NULL});
}

static void duplicate_series(void)
{
    metrics_counter_new(scratch, "dup_total", "x", (const char *const[]){"a", "b", NULL});
    metrics_counter_new(scratch, "dup_total", "x", (const char *const[]){"a", "b", NULL});
}

static void unsorted_buckets(void)
{
    static const double b[] = {1, 1};
    metrics_histogram_new(scratch, "h", "x", NULL, b, 2);
}

static void infinite_bucket(void)
{
    const double b[] = {1, INFINITY};
    metrics_histogram_new(scratch, "h", "x", NULL, b, 2);
}

static void collector_name_taken(void)
{
    metrics_gauge_new(scratch, "taken", "x", NULL);
    metrics_collect_new(scratch, "taken", "x", METRICS_GAUGE, collect_subs, NULL);
}

static void join_collector_family(void)
{
    metrics_collect_new(scratch, "coll", "x", METRICS_GAUGE, collect_subs, NULL);
    metrics_gauge_new(scratch, "coll", "x", (const char *const[]){"a", "b", NULL});
}

static void histogram_collector(void)
{
    metrics_collect_new(scratch, "coll", "x", METRICS_HISTOGRAM, collect_subs, NULL);
}

static void gauge_fn_without_fn(void)
{
    metrics_gauge_fn_new(scratch, "g", "x", NULL, NULL, NULL);
}

TEST(registration_misuse_aborts)
{
    CHECK(aborts(bad_name));
    CHECK(aborts(bad_label_name));
    CHECK(aborts(odd_labels));
    CHECK(aborts(reserved_label));
    CHECK(aborts(le_on_histogram));
    CHECK(aborts(type_clash));
    CHECK(aborts(duplicate_series));
    CHECK(aborts(unsorted_buckets));
    CHECK(aborts(infinite_bucket));
    CHECK(aborts(collector_name_taken));
    CHECK(aborts(join_collector_family));
    CHECK(aborts(histogram_collector));
    CHECK(aborts(gauge_fn_without_fn));
}

TEST(valid_names_with_colons_and_digits)
{
    struct metrics *m = metrics_new();

    metrics_counter_new(m, "ns:sub_9_total", "x", (const char *const[]){"_a9", "", NULL});
    CHECK(text_is(m, "# HELP ns:sub_9_total x\n# TYPE ns:sub_9_total counter\n"
                     "ns:sub_9_total{_a9=\"\"} 0\n"));
    metrics_free(m);
}

int main(void)
{
    log_level = LOGL_WARN;
    RUN(empty_registry);
    RUN(counters_with_and_without_labels);
    RUN(gauges_set_added_and_computed);
    RUN(special_values);
    RUN(histogram_buckets_sum_count);
    RUN(latency_buckets_render);
    RUN(escaping_of_help_and_label_values);
    RUN(collector_emits_dynamic_series);
    RUN(registration_misuse_aborts); /* forks: before any thread exists */
    RUN(concurrent_updates_are_not_lost);
    RUN(valid_names_with_colons_and_digits);
    return HARNESS_END();
}
