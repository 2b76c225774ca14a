/* convjob.h -- Dtype-converted copies of a version's tensors, made once
 * and shared.
 *
 * A map request whose target wants another dtype asks for copies: a copy
 * that exists is reused, one being made is waited for, and all the others
 * the request needs are made by one job into one new segment (so a reply
 * carries few descriptors however many tensors are cast).  A job makes its
 * segment on libuv's thread pool, writes it in parallel parts, seals it on
 * the loop and then tells every waiter.  Copies live in the version
 * (registry.h) and go with it. */
#ifndef WB_DAEMON_CONVJOB_H
#define WB_DAEMON_CONVJOB_H

#include <stddef.h>

#include "access.h"
#include "registry.h"
#include "resolve.h"

#define WB_CONV_PART_MIN (16u << 20) /* Fewest output bytes worth a thread. */
/* Threads of libuv's pool (4 by default) conversions may use at once; the
 * others back segments. */
#define WB_CONV_MAX_THREADS 2

/* Something waiting for conversion jobs: done() runs on the loop once
 * waiting drops to 0, with the first failure (0 if none). */
typedef struct wb__conv_waiter {
    int waiting; /* Jobs still running. */
    int failed;  /* First error of one of them, or 0. */
    void (*done)(struct wb__conv_waiter *w);
} wb__conv_waiter;

/* Finds or starts the copies that the cast entries of res[0..n) need from
 * version v, storing each in conv[i] (conv has n entries, NULL where no
 * cast).  Jobs that w must wait for are counted in w->waiting (0: all
 * ready now).  New copies are charged to q's user, and refused
 * (WB_ELIMIT) past its quota before any segment is made.  Returns 0, WB_EDTYPE
 * (a pair that cannot be converted), WB_ELIMIT or WB_ENOMEM, with err filled
 * in; on an error w may still wait for jobs it joined before the failure. */
int wb__conv_prepare(wb__version *v, const wb__resolved *res, size_t n,
                     wb__derived **conv, wb__conv_waiter *w, const wb__quota *q,
                     char *err, size_t errlen);

#endif
