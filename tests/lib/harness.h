/* harness.h -- Starts a real wbrokerd for a test and inspects it.
 *
 * Each daemon gets its own temporary directory and socket; tests talk to it
 * through the real client library. */
#ifndef WB_TESTS_HARNESS_H
#define WB_TESTS_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "wbroker.h"

typedef struct wbt_daemon {
    pid_t pid;                  /* Daemon's process id. */
    char dir[64];              /* Temporary directory. */
    char sock[100];             /* Socket path inside dir. */
    char log[100];              /* Daemon's stderr. */
} wbt_daemon;

/* Starts build/wbrokerd (WB_BUILD overrides the directory) with extra
 * arguments (NULL-terminated, may be NULL) and waits until it accepts. */
int wbt_start(wbt_daemon *d, const char *const *extra);
/* SIGTERM, wait; returns the exit status (or -1). */
int wbt_stop(wbt_daemon *d);
/* Connects or fails the test. */
wb_client *wbt_connect(const wbt_daemon *d);
/* Open descriptors of the daemon, from /proc. */
int wbt_fd_count(const wbt_daemon *d);
/* memfd segments the daemon holds open (wbroker:* in /proc/PID/fd). */
int wbt_segment_count(const wbt_daemon *d);
/* Waits up to 5 s for the descriptor count to become n; returns the
 * count at the end. */
int wbt_wait_fds(const wbt_daemon *d, int n);
/* Waits up to 5 s for the segment count to become n (read-only
 * descriptors for a reply are closed just after it is sent); returns the
 * count at the end. */
int wbt_wait_segments(const wbt_daemon *d, int n);
/* Waits up to 5 s for the daemon to hold no segments and no memory. */
void wbt_wait_clean(const wbt_daemon *d);
/* 1 if the daemon is still running. */
int wbt_alive(const wbt_daemon *d);
/* Memory in use according to status. */
uint64_t wbt_mem_used(const wbt_daemon *d);

/* Publishes n float32 tensors "t<i>" of len elements each, element j of
 * tensor i being i * 1000 + j.  Returns the version or fails the test. */
uint64_t wbt_publish_f32(wb_client *c, const char *model, size_t n,
                         size_t len);
/* Raw protocol access, for malformed input: a connected socket, a frame
 * sender, and a reply reader that returns the reply's "err" (or 1 when the
 * daemon closed the connection instead of answering). */
int wbt_raw_connect(const wbt_daemon *d);
int wbt_raw_send(int fd, const void *buf, size_t len);
int wbt_raw_frame(int fd, const void *body, size_t len);
int wbt_raw_reply(int fd);
/* Sends a valid hello and reads its reply; returns its err. */
int wbt_raw_hello(int fd);

/* cmocka fixtures: starts a daemon with extra arguments into *state;
 * stops it and fails unless it exited cleanly (status 0). */
int wbt_setup(void **state, const char *const *extra);
int wbt_teardown(void **state);

/* Sends a frame whose body is the msgpack built by fn; packs a string. */
struct msgpack_packer;
void wbt_raw_packed(int fd, void (*fn)(struct msgpack_packer *));
void wbt_pk_str(struct msgpack_packer *pk, const char *s);

/* CLOCK_MONOTONIC in seconds. */
double wbt_now(void);
/* Median of n > 0 values (sorts v in place). */
double wbt_median(double *v, int n);

/* "64M", "1G", "512K" or a plain number of bytes. */
size_t wbt_parse_size(const char *s);

/* For benchmarks: starts a quiet daemon (warnings only) and connects;
 * NULL, after saying why on stderr, if either fails. */
wb_client *wbt_bench_start(wbt_daemon *d);

/* Path of the build directory ("build" unless WB_BUILD is set). */
const char *wbt_build_dir(void);

#endif
