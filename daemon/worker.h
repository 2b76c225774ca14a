/* worker.h -- A thread of its own for CPU work that clients control.
 *
 * Resolving a map request's rules and schema costs what the client makes
 * it cost (within a time budget).  It runs here, one request at a time,
 * and not on libuv's thread pool, so that no client can starve the pool
 * that backs segments and converts dtypes for everyone.  Each connection
 * has at most one request in flight, so the queue is bounded by the
 * number of clients. */
#ifndef WB_DAEMON_WORKER_H
#define WB_DAEMON_WORKER_H

#include <uv.h>

typedef struct wb__task {
    void (*work)(struct wb__task *t); /* Runs on the worker thread. */
    void (*done)(struct wb__task *t); /* Runs on the loop afterwards. */
    struct wb__task *next;            /* Next in the worker's queues. */
} wb__task;

/* Starts the worker thread.  Returns 0 or -1. */
int wb__worker_start(uv_loop_t *loop);
/* Queues t: t->work runs on the worker, then t->done on the loop. */
void wb__worker_submit(wb__task *t);
/* Finishes the queued tasks, stops the thread and closes its handle. */
void wb__worker_stop(void);

#endif
