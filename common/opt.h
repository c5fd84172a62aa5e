/* boomerang: command-line flags with environment-variable fallbacks.
 *
 * Each binary describes its flags in a table. A flag given on the command line
 * wins; otherwise the environment variable (e.g. BOOMERANG_DB for --db) is
 * used; otherwise the default stays. --help prints the table. */
#ifndef BOOMERANG_OPT_H
#define BOOMERANG_OPT_H

#include <stdint.h>

#include "common/util.h"

enum opt_kind {
    OPT_STRING, /* const char ** */
    OPT_INT,    /* int64_t *, decimal, >= 0 */
    OPT_FLAG,   /* int *, set to 1; env accepts 1/true/yes */
};

struct opt {
    const char *name; /* long name without "--" */
    const char *env;  /* environment variable */
    enum opt_kind kind;
    void *target;
    const char *arg; /* argument name for --help, e.g. "PATH" */
    const char *help;
};

/* Parse argv and the environment into the targets. On --help prints usage to
 * stdout and returns 1; on --version prints version and returns 1. Returns 0
 * on success, or -1 after printing the problem to stderr. */
int MUST_CHECK opt_parse(const char *program, const char *summary, const struct opt *opts,
                         int nopts, int argc, char **argv);

#endif
