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
    pid_t pid;      /* Daemon's process id. */
    char dir[64];   /* Temporary directory. */
    char sock[100]; /* Socket path inside dir. */
    char log[100];  /* Daemon's stderr. */
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
/* The descriptor count once it has stayed the same for quiet_ms (looked at
 * every 10 ms), or as it is after max_ms. */
int wbt_settled_fds(const wbt_daemon *d, int quiet_ms, int max_ms);
/* Waits up to 5 s for the daemon to hold no segments and no memory. */
void wbt_wait_clean(const wbt_daemon *d);
/* 1 if the daemon is still running. */
int wbt_alive(const wbt_daemon *d);
/* Memory in use according to status. */
uint64_t wbt_mem_used(const wbt_daemon *d);
/* The daemon's counter name ("holds", "bytes.retired"): 0 when it is not
 * reported, UINT64_MAX when status fails. */
uint64_t wbt_counter(const wbt_daemon *d, const char *name);

/* Publishes n float32 tensors "t<i>" of len elements each, element j of
 * tensor i being i * 1000 + j.  Returns the version or fails the test. */
uint64_t wbt_publish_f32(wb_client *c, const char *model, size_t n, size_t len);
/* Raw protocol access, for malformed input: a connected socket, a frame
 * sender, and a reply reader that returns the reply's "err" (or 1 when the
 * daemon closed the connection instead of answering). */
int wbt_raw_connect(const wbt_daemon *d);
int wbt_raw_send(int fd, const void *buf, size_t len);
/* Reads exactly len bytes (retrying on EINTR); 0, or -1 at end of stream
 * or on error. */
int wbt_raw_recv(int fd, void *buf, size_t len);
int wbt_raw_frame(int fd, const void *body, size_t len);
int wbt_raw_reply(int fd);
/* Sends a valid hello and reads its reply; returns its err. */
int wbt_raw_hello(int fd);

/* cmocka fixtures: starts a daemon with extra arguments into *state;
 * stops it and fails unless it exited cleanly (status 0). */
int wbt_setup(void **state, const char *const *extra);
int wbt_teardown(void **state);
/* wbt_setup with the daemon's RLIMIT_NOFILE set (see wbt_start_limits). */
int wbt_setup_limits(void **state, const char *const *extra,
                     unsigned long nofile);

/* Sends a frame whose body is the msgpack built by fn; packs a string. */
struct msgpack_packer;
void wbt_raw_packed(int fd, void (*fn)(struct msgpack_packer *));
void wbt_pk_str(struct msgpack_packer *pk, const char *s);

/* CLOCK_MONOTONIC in seconds. */
double wbt_now(void);
/* splitmix64: a well-mixed 64-bit value of x, for seeded random tests. */
uint64_t wbt_mix(uint64_t x);
/* The seed in environment variable env (so a printed seed repeats a run),
 * else one from the clock and the pid. */
uint64_t wbt_seed(const char *env);
/* Sleeps ms milliseconds, the whole time even if a signal comes. */
void wbt_sleep_ms(int ms);
/* Median of n > 0 values (sorts v in place). */
double wbt_median(double *v, int n);

/* "64M", "1G", "512K" or a plain number of bytes. */
size_t wbt_parse_size(const char *s);

/* For benchmarks: starts a quiet daemon (warnings only) and connects;
 * NULL, after saying why on stderr, if either fails. */
wb_client *wbt_bench_start(wbt_daemon *d);

/* Path of the build directory ("build" unless WB_BUILD is set). */
const char *wbt_build_dir(void);

/* ------------------------------------------------------------ abuse */

/* Like wbt_start, with the daemon's RLIMIT_NOFILE (soft and hard) set to
 * nofile before exec (0 leaves it unchanged). */
int wbt_start_limits(wbt_daemon *d, const char *const *extra,
                     unsigned long nofile);
/* Stops the daemon (SIGTERM, then SIGKILL after 10 s) and returns its wait
 * status, like wbt_stop; on anything but a clean exit (or if it was found
 * dead) it first prints the end of the daemon's log to stderr, where an
 * AddressSanitizer report lands. */
int wbt_finish(wbt_daemon *d);
/* cmocka teardown of a wbt_setup or wbt_setup_limits fixture that stops
 * the daemon with wbt_finish (not wbt_stop) and disarms the watchdog; fails
 * unless the daemon exited cleanly (status 0). */
int wbt_teardown_finish(void **state);
/* 1 if the daemon's process exists and has not exited (does not reap it,
 * so that wbt_finish still sees how it ended). */
int wbt_running(const wbt_daemon *d);
/* Arms a watchdog for the calling process: after seconds, it says so on
 * stderr and SIGKILLs d's daemon, so that every call blocked on it returns
 * and the test fails instead of hanging; 30 s later it exits the program.
 * 0 disarms it. */
void wbt_watchdog(const wbt_daemon *d, unsigned seconds);
/* User + system CPU seconds the daemon has used (/proc/PID/stat), or -1. */
double wbt_cpu_seconds(const wbt_daemon *d);
/* Lines in the daemon's log so far. */
int wbt_log_lines(const wbt_daemon *d);
/* Lines of the log after the first skip that contain any of the needles
 * (NULL-terminated list; case-insensitive). */
int wbt_log_grep(const wbt_daemon *d, int skip, const char *const *needles);
/* Prints the last n lines of the daemon's log to stderr. */
void wbt_log_tail(const wbt_daemon *d, int n);
/* Shmem of /proc/meminfo, in bytes. */
uint64_t wbt_shmem_bytes(void);
/* Connected clients according to status (the asking one included), or
 * -1 if status fails. */
long wbt_clients(const wbt_daemon *d);

/* Several request frames built into one buffer, to be sent in one write
 * (pipelined).  A zeroed struct is an empty buffer. */
typedef struct wbt_frames {
    uint8_t *data; /* Frames, back to back. */
    size_t len;    /* Bytes in data. */
    size_t cap;    /* Bytes allocated. */
} wbt_frames;
/* Appends one frame around a msgpack body. */
void wbt_frames_add(wbt_frames *f, const void *body, size_t len);
void wbt_frames_hello(wbt_frames *f, uint64_t id);
void wbt_frames_status(wbt_frames *f, uint64_t id);
/* watch model after, with timeout_ms (-1 forever). */
void wbt_frames_watch(wbt_frames *f, uint64_t id, const char *model,
                      uint64_t after, int64_t timeout_ms);
void wbt_frames_commit(wbt_frames *f, uint64_t id, uint64_t pub);
void wbt_frames_abort(wbt_frames *f, uint64_t id, uint64_t pub);
/* drop model version (0: every version). */
void wbt_frames_drop(wbt_frames *f, uint64_t id, const char *model,
                     uint64_t version);
/* A plain map of model version (0: latest), no schema or rules. */
void wbt_frames_map(wbt_frames *f, uint64_t id, const char *model,
                    uint64_t version);
/* publish of n F32 tensors "t<i>" of len elements. */
void wbt_frames_publish_f32(wbt_frames *f, uint64_t id, const char *model,
                            size_t n, size_t len);
/* The same with metadata {key: value} (any bytes but NUL; no metadata
 * when key is NULL). */
void wbt_frames_publish_f32_meta(wbt_frames *f, uint64_t id, const char *model,
                                 size_t n, size_t len, const char *key,
                                 const char *value);
/* Sends every frame in one go; 0 or -1. */
int wbt_frames_send(int fd, const wbt_frames *f);
void wbt_frames_free(wbt_frames *f);

/* One reply read from a raw connection, with its descriptors. */
#define WBT_CLOSED 1       /* wbt_raw_read: the daemon closed the socket. */
#define WBT_TIMEOUT 2      /* wbt_raw_read: no whole frame in time. */
#define WBT_MALFORMED 1000 /* wbt_raw_read: not a map with an "err". */
typedef struct wbt_reply {
    int err;                           /* The reply's "err", or a WBT_ code. */
    uint64_t id;                       /* The reply's "id". */
    int fds[65];                       /* Descriptors that came with it. */
    int nfds;                          /* Entries in fds. */
    const struct msgpack_object *root; /* Decoded map, or NULL. */
    void *priv;                        /* Body and unpacked message. */
} wbt_reply;
/* Reads one reply frame, waiting at most timeout_ms in all; returns
 * r->err.  Free r with wbt_reply_free() whatever the outcome. */
int wbt_raw_read(int fd, int timeout_ms, wbt_reply *r);
/* Unsigned field key of the reply, or UINT64_MAX when absent. */
uint64_t wbt_reply_u64(const wbt_reply *r, const char *key);
/* Frees the reply and closes the descriptors still in fds (set an entry
 * to -1 to keep it). */
void wbt_reply_free(wbt_reply *r);
/* Waits up to timeout_ms for the daemon to close fd, reading and
 * discarding whatever arrives (descriptors closed); 1 if it closed. */
int wbt_raw_wait_closed(int fd, int timeout_ms);

#endif
