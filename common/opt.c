/* boomerang: command-line flags with environment-variable fallbacks. */
#include "common/opt.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#ifndef BOOMERANG_VERSION
#define BOOMERANG_VERSION "0.1.0"
#endif

static int set_value(const char *program, const struct opt *o, const char *val, const char *from)
{
    char *end;
    long long v;

    switch (o->kind) {
    case OPT_STRING:
        *(const char **)o->target = val;
        return 0;
    case OPT_FLAG:
        *(int *)o->target = !val || strcmp(val, "1") == 0 || strcasecmp(val, "true") == 0 ||
                            strcasecmp(val, "yes") == 0;
        return 0;
    case OPT_INT:
        errno = 0;
        v = strtoll(val, &end, 10);
        if (errno || *end || end == val || v < 0) {
            fprintf(stderr, "%s: %s%s: not a non-negative integer: '%s'\n", program,
                    from ? from : "--", from ? "" : o->name, val);
            return -1;
        }
        *(int64_t *)o->target = v;
        return 0;
    }
    return -1;
}

static void usage(const char *program, const char *summary, const struct opt *opts, int nopts)
{
    printf("usage: %s [flags]\n%s\n\nflags (each also read from its environment variable):\n",
           program, summary);
    for (int i = 0; i < nopts; i++) {
        char left[64];
        snprintf(left, sizeof(left), "--%s%s%s", opts[i].name, opts[i].arg ? " " : "",
                 opts[i].arg ? opts[i].arg : "");
        printf("  %-28s %s\n  %-28s [env %s]\n", left, opts[i].help, "", opts[i].env);
    }
    printf("  %-28s show this help\n  %-28s show the version\n", "--help", "--version");
}

int opt_parse(const char *program, const char *summary, const struct opt *opts, int nopts, int argc,
              char **argv)
{
    struct option *lo = xcalloc((size_t)nopts + 3, sizeof(*lo));
    char *given = xcalloc((size_t)nopts, 1);
    int rc = 0, c, idx;

    for (int i = 0; i < nopts; i++) {
        lo[i].name = opts[i].name;
        lo[i].has_arg = opts[i].kind == OPT_FLAG ? no_argument : required_argument;
        lo[i].val = 0x100 + i;
    }
    lo[nopts].name = "help";
    lo[nopts].val = 'h';
    lo[nopts + 1].name = "version";
    lo[nopts + 1].val = 'V';
    optind = 1;
    while (rc == 0 && (c = getopt_long(argc, argv, "h", lo, &idx)) != -1) {
        if (c == 'h' || c == 'V') {
            if (c == 'h')
                usage(program, summary, opts, nopts);
            else
                printf("%s %s\n", program, BOOMERANG_VERSION);
            rc = 1;
        } else if (c >= 0x100 && c < 0x100 + nopts) {
            given[c - 0x100] = 1;
            rc = set_value(program, &opts[c - 0x100], optarg, NULL);
        } else {
            fprintf(stderr, "%s: see --help\n", program);
            rc = -1;
        }
    }
    if (rc == 0 && optind < argc) {
        fprintf(stderr, "%s: unexpected argument '%s'; see --help\n", program, argv[optind]);
        rc = -1;
    }
    for (int i = 0; rc == 0 && i < nopts; i++) {
        const char *val = given[i] ? NULL : getenv(opts[i].env);
        if (val && *val)
            rc = set_value(program, &opts[i], val, opts[i].env);
    }
    free(given);
    free(lo);
    return rc;
}
