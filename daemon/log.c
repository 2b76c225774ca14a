/* log.c -- Leveled logging to stderr, one escaped line per event. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int wb__log_level = WB_LOG_INFO;

static const char *level_names[] = {"debug", "info", "warn", "error"};

int wb__log_level_parse(const char *s) {
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

void wb__log(int level, const char *fmt, ...) {
    if (level < wb__log_level)
        return;
    char msg[2048], line[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)msg;
         *p && o + 5 < sizeof(line); p++) {
        if (*p < 0x20 || *p == 0x7f)
            o += (size_t)snprintf(line + o, sizeof(line) - o, "\\x%02x", *p);
        else
            line[o++] = (char)*p;
    }
    line[o] = '\0';

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s\n",
            tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
            tm.tm_sec, ts.tv_nsec / 1000000, level_names[level], line);
}
