/* boomerang: leveled log lines on stderr.
 *
 * A line reads "2026-11-21T09:00:00.123456Z INFO primary: <prefix> <message>".
 * Messages follow "<action> failed: <reason>". Log once, where the error is
 * handled, and never log secrets (tokens, keys, row data). Debug and trace cost
 * one comparison when off. */
#ifndef BOOMERANG_LOG_H
#define BOOMERANG_LOG_H

enum log_level { LOGL_ERROR, LOGL_WARN, LOGL_INFO, LOGL_DEBUG, LOGL_TRACE };

extern enum log_level log_level;

/* Set the program name shown on every line (not copied). */
void log_set_program(const char *name);

/* Parse "error|warn|info|debug|trace". Returns 0, or -1 if unknown. */
int log_parse_level(const char *s, enum log_level *out);

void log_write(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_write(LOGL_ERROR, __VA_ARGS__)
#define log_warn(...)  log_write(LOGL_WARN, __VA_ARGS__)
#define log_info(...)                                                                              \
    do {                                                                                           \
        if (log_level >= LOGL_INFO)                                                                \
            log_write(LOGL_INFO, __VA_ARGS__);                                                     \
    } while (0)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_level >= LOGL_DEBUG)                                                               \
            log_write(LOGL_DEBUG, __VA_ARGS__);                                                    \
    } while (0)
#define log_trace(...)                                                                             \
    do {                                                                                           \
        if (log_level >= LOGL_TRACE)                                                               \
            log_write(LOGL_TRACE, __VA_ARGS__);                                                    \
    } while (0)

#endif
