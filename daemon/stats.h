/* stats.h -- Counters an operator graphs: requests by op, errors by code.
 *
 * Cumulative since the daemon started; status reports them (as
 * "counters", name -> count).  Loop thread only. */
#ifndef WB_DAEMON_STATS_H
#define WB_DAEMON_STATS_H

#include <stddef.h>
#include <stdint.h>

#define WB_STATS_MAX_OPS 16    /* Distinct ops counted (then "other"). */
#define WB_STATS_MAX_ERRORS 64 /* Error codes counted: -1 .. -64. */

/* Counts one request of op (a static string: the op table's name), or of
 * an unknown op when op is NULL. */
void wb__stats_request(const char *op);
/* Counts one error reply with code (< 0). */
void wb__stats_error(int code);
/* Calls fn(arg, name, count) for every nonzero counter, names such as
 * "requests.map" and "errors.ENOMODEL". */
void wb__stats_each(void (*fn)(void *arg, const char *name, uint64_t count),
                    void *arg);
/* Counters wb__stats_each() would report. */
size_t wb__stats_count(void);

#endif
