/* worker.c -- A thread of its own for CPU work that clients control. */
#include "worker.h"

#include <assert.h>
#include <stddef.h>

static struct {
    uv_thread_t thread;  /* The worker. */
    uv_mutex_t lock;     /* Guards the fields below. */
    uv_cond_t wake;      /* Signalled when todo grows or on stop. */
    wb__task *todo;      /* Queued, oldest first. */
    wb__task *todo_tail; /* Last queued. */
    wb__task *finished;  /* Done on the worker, for the loop. */
    int stopping;        /* 1 once asked to stop. */
    int running;         /* 1 while the thread exists. */
    uv_async_t async;    /* Wakes the loop for finished tasks. */
} W;

static void worker_main(void *arg) {
    uv_mutex_lock(&W.lock);
    for (;;) {
        while (W.todo == NULL && !W.stopping)
            uv_cond_wait(&W.wake, &W.lock);
        if (W.todo == NULL)
            break;
        wb__task *t = W.todo;
        W.todo = t->next;
        if (W.todo == NULL)
            W.todo_tail = NULL;
        uv_mutex_unlock(&W.lock);
        t->work(t);
        uv_mutex_lock(&W.lock);
        t->next = W.finished;
        W.finished = t;
        uv_async_send(&W.async);
    }
    uv_mutex_unlock(&W.lock);
}

/* On the loop: runs the completions of finished tasks, oldest first. */
static void on_async(uv_async_t *a) {
    uv_mutex_lock(&W.lock);
    wb__task *list = W.finished;
    W.finished = NULL;
    uv_mutex_unlock(&W.lock);
    wb__task *rev = NULL;
    while (list) {
        wb__task *next = list->next;
        list->next = rev;
        rev = list;
        list = next;
    }
    while (rev) {
        wb__task *next = rev->next;
        rev->done(rev);
        rev = next;
    }
}

int wb__worker_start(uv_loop_t *loop) {
    if (uv_mutex_init(&W.lock) || uv_cond_init(&W.wake) ||
        uv_async_init(loop, &W.async, on_async))
        return -1;
    uv_unref((uv_handle_t *)&W.async); /* The loop may end without it. */
    if (uv_thread_create(&W.thread, worker_main, NULL))
        return -1;
    W.running = 1;
    return 0;
}

void wb__worker_submit(wb__task *t) {
    assert(W.running && t->work && t->done);
    t->next = NULL;
    uv_mutex_lock(&W.lock);
    if (W.todo_tail)
        W.todo_tail->next = t;
    else
        W.todo = t;
    W.todo_tail = t;
    uv_cond_signal(&W.wake);
    uv_mutex_unlock(&W.lock);
}

void wb__worker_stop(void) {
    if (!W.running)
        return;
    uv_mutex_lock(&W.lock);
    W.stopping = 1;
    uv_cond_signal(&W.wake);
    uv_mutex_unlock(&W.lock);
    uv_thread_join(&W.thread);
    W.running = 0;
    on_async(&W.async);
    uv_close((uv_handle_t *)&W.async, NULL);
}
