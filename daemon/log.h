/* log.h -- Leveled, one-line-per-event logging to stderr. */
#ifndef WB_DAEMON_LOG_H
#define WB_DAEMON_LOG_H

enum { WB_LOG_DEBUG, WB_LOG_INFO, WB_LOG_WARN, WB_LOG_ERROR };

extern int wb__log_level; /* Events below this level are dropped. */

/* Logs one line.  Control characters in the formatted text are escaped, so
 * names that clients chose cannot forge log lines. */
void wb__log(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Parses "debug", "info", "warn" or "error"; -1 when unknown. */
int wb__log_level_parse(const char *s);

#define wb__debug(...) wb__log(WB_LOG_DEBUG, __VA_ARGS__)
#define wb__info(...) wb__log(WB_LOG_INFO, __VA_ARGS__)
#define wb__warn(...) wb__log(WB_LOG_WARN, __VA_ARGS__)
#define wb__error(...) wb__log(WB_LOG_ERROR, __VA_ARGS__)

#endif
