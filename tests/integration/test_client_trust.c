/* test_client_trust.c -- Integration tests: the client library does not
 * trust whatever listens on its socket, and neither side trusts a socket
 * directory that someone else controls.
 *
 * A fake daemon (a forked process) listens on a socket in a temporary
 * directory, answers the hello, then misbehaves as each test asks: segment
 * descriptors smaller than declared, unsealed, writable or not memfds at
 * all; publish descriptors of the wrong size; more descriptors than a reply
 * may carry; replies with a wrong id.  Each failure must be a clean error
 * with nothing mapped, no descriptor left open and no signal.  Other fakes
 * run as another uid (nobody, 65534) or in directories that others can
 * write; the real daemon is started in such directories and must refuse.
 * Tests that need another uid are skipped unless run as root (CI is). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <msgpack.h>

#include "fdpass.h"
#include "harness.h"
#include "paths.h"

#define NOBODY 65534                /* The stranger's uid and gid. */
#define FAKE_SEG (2u * 1024 * 1024) /* Bytes of a fake segment. */
#define FAKE_SHORT 4096u            /* Bytes of a segment that lies. */
#define FAKE_TENSOR 4096u           /* Bytes of the one tensor, at the end. */
#define FAKE_MANY_FDS 100           /* More descriptors than a reply holds. */
#define FAKE_TIMEOUT 20             /* Seconds before a fake gives up. */
#define FAKE_PUB 7                  /* Publish handle the fake hands out. */

/* A misbehaviour: answers request op (not the hello) numbered id. */
typedef void (*fake_fn)(int conn, uint64_t id, const char *op);

typedef struct fake {
    pid_t pid;      /* The fake daemon, 0 once reaped. */
    char top[64];   /* Temporary directory holding it all. */
    char dir[80];   /* Socket directory (top or below). */
    char sock[100]; /* Socket path. */
} fake;

/* ------------------------------------------------------------ helpers */

/* Creates f->top (mode 0755, root's when run as root) and uses it as the
 * socket directory. */
static void fake_dirs(fake *f) {
    memset(f, 0, sizeof(*f));
    snprintf(f->top, sizeof(f->top), "/tmp/wbt-trust-XXXXXX");
    assert_non_null(mkdtemp(f->top));
    assert_int_equal(chmod(f->top, 0755), 0);
    snprintf(f->dir, sizeof(f->dir), "%s", f->top);
    snprintf(f->sock, sizeof(f->sock), "%s/wb.sock", f->dir);
}

/* Makes f->dir a subdirectory "sub" of f->top with the given owner and
 * mode (f->top's mode set to top_mode). */
static void fake_subdir(fake *f, uid_t owner, mode_t mode, mode_t top_mode) {
    snprintf(f->dir, sizeof(f->dir), "%s/sub", f->top);
    snprintf(f->sock, sizeof(f->sock), "%s/wb.sock", f->dir);
    assert_int_equal(mkdir(f->dir, 0700), 0);
    assert_int_equal(chown(f->dir, owner, owner), 0);
    assert_int_equal(chmod(f->dir, mode), 0);
    assert_int_equal(chmod(f->top, top_mode), 0);
}

/* Sends the first byte of buf with nfds > WB_FDPASS_MAX descriptors on it,
 * which wb__fd_send cannot do (it holds WB_FDPASS_MAX at the most): the
 * fakes send FAKE_MANY_FDS to see the client refuse a reply whose control
 * data the kernel truncated.  Returns what sendmsg() returns. */
static ssize_t send_too_many_fds(int conn, const uint8_t *buf, const int *fds,
                                 int nfds) {
    union {
        char buf[CMSG_SPACE(sizeof(int) * FAKE_MANY_FDS)];
        struct cmsghdr align;
    } ctl;
    if (nfds > FAKE_MANY_FDS)
        _exit(89);
    memset(&ctl, 0, sizeof(ctl));
    struct iovec iov = {(void *)buf, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    msg.msg_control = ctl.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
    return sendmsg(conn, &msg, MSG_NOSIGNAL);
}

/* Sends the frame in sb with nfds descriptors (any number) on its first
 * byte.  A client that hangs up in the middle (it refused the reply) ends
 * the fake with status 0. */
static void send_frame(int conn, const msgpack_sbuffer *sb, const int *fds,
                       int nfds) {
    wbt_frames f = {0};
    wbt_frames_add(&f, sb->data, sb->size);
    ssize_t n = nfds > WB_FDPASS_MAX
                    ? send_too_many_fds(conn, f.data, fds, nfds)
                    : wb__fd_send(conn, f.data, 1, fds, nfds, 0);
    if (n != 1)
        _exit(91);
    if (wbt_raw_send(conn, f.data + 1, f.len - 1) != 0)
        _exit(0);
    wbt_frames_free(&f);
}

/* Starts a reply with "id", "err" and n more fields. */
static void reply_begin(msgpack_sbuffer *sb, msgpack_packer *pk, uint64_t id,
                        int64_t err, size_t n) {
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(pk, n + 2);
    wbt_pk_str(pk, "id");
    msgpack_pack_uint64(pk, id);
    wbt_pk_str(pk, "err");
    msgpack_pack_int64(pk, err);
}

/* Sends the reply in sb with its descriptors and frees sb. */
static void reply_end(int conn, msgpack_sbuffer *sb, const int *fds, int nfds) {
    send_frame(conn, sb, fds, nfds);
    msgpack_sbuffer_destroy(sb);
}

/* Answers a request with err 0 and no fields. */
static void reply_empty(int conn, uint64_t id) {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    reply_begin(&sb, &pk, id, 0, 0);
    reply_end(conn, &sb, NULL, 0);
}

/* A map reply of one segment declared as declared bytes whose one tensor
 * "t" (float32, FAKE_TENSOR bytes) ends the segment, with nfds
 * descriptors. */
static void reply_map(int conn, uint64_t id, uint64_t declared, const int *fds,
                      int nfds) {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    reply_begin(&sb, &pk, id, 0, 6);
    wbt_pk_str(&pk, "version");
    msgpack_pack_uint64(&pk, 1);
    wbt_pk_str(&pk, "segs");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_uint64(&pk, declared);
    wbt_pk_str(&pk, "tensors");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 8);
    wbt_pk_str(&pk, "t");
    wbt_pk_str(&pk, "t");
    wbt_pk_str(&pk, "F32");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_uint64(&pk, FAKE_TENSOR / 4);
    msgpack_pack_uint64(&pk, 0);
    msgpack_pack_uint64(&pk, declared - FAKE_TENSOR);
    msgpack_pack_uint64(&pk, FAKE_TENSOR);
    msgpack_pack_false(&pk);
    wbt_pk_str(&pk, "meta");
    msgpack_pack_map(&pk, 0);
    wbt_pk_str(&pk, "report");
    msgpack_pack_map(&pk, 0);
    wbt_pk_str(&pk, "text");
    wbt_pk_str(&pk, "");
    reply_end(conn, &sb, fds, nfds);
}

/* A publish reply for one tensor at offset 0 in a segment declared as
 * declared bytes, with descriptor fd. */
static void reply_publish(int conn, uint64_t id, uint64_t declared, int fd) {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    reply_begin(&sb, &pk, id, 0, 3);
    wbt_pk_str(&pk, "pub");
    msgpack_pack_uint64(&pk, FAKE_PUB);
    wbt_pk_str(&pk, "size");
    msgpack_pack_uint64(&pk, declared);
    wbt_pk_str(&pk, "offs");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_uint64(&pk, 0);
    reply_end(conn, &sb, &fd, 1);
}

/* A memfd of size bytes filled with 0x5a, with the seals given. */
static int fake_memfd(size_t size, int seals) {
    int fd = memfd_create("fake", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 || ftruncate(fd, (off_t)size) < 0)
        _exit(92);
    char page[4096];
    memset(page, 0x5a, sizeof(page));
    for (size_t at = 0; at < size; at += sizeof(page))
        if (pwrite(fd, page, sizeof(page), (off_t)at) != sizeof(page))
            _exit(93);
    if (seals && fcntl(fd, F_ADD_SEALS, seals) < 0)
        _exit(94);
    return fd;
}

/* A read-only reopening of fd, as the daemon hands segments out. */
static int reopen_ro(int fd) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    int ro = open(path, O_RDONLY | O_CLOEXEC);
    if (ro < 0)
        _exit(95);
    return ro;
}

/* Serves one connection: the hello as the daemon would, every other
 * request through fn.  Exits 0 at end of stream, or 3 when expect_silence
 * and anything arrived (a client must refuse before it sends a byte). */
static void fake_serve(int conn, fake_fn fn, int expect_silence) {
    for (;;) {
        unsigned char h[4];
        if (wbt_raw_recv(conn, h, 4))
            _exit(0);
        if (expect_silence)
            _exit(3);
        size_t len = ((size_t)h[0] << 24) | ((size_t)h[1] << 16) |
                     ((size_t)h[2] << 8) | h[3];
        char *body = malloc(len ? len : 1);
        if (body == NULL || wbt_raw_recv(conn, body, len))
            _exit(96);
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        size_t off = 0;
        if (msgpack_unpack_next(&up, body, len, &off) !=
                MSGPACK_UNPACK_SUCCESS ||
            up.data.type != MSGPACK_OBJECT_MAP)
            _exit(97);
        uint64_t id = 0;
        char op[32] = "";
        for (uint32_t i = 0; i < up.data.via.map.size; i++) {
            const msgpack_object_kv *kv = &up.data.via.map.ptr[i];
            const msgpack_object_str *k = &kv->key.via.str;
            if (kv->key.type != MSGPACK_OBJECT_STR)
                continue;
            if (k->size == 2 && memcmp(k->ptr, "id", 2) == 0)
                id = kv->val.via.u64;
            else if (k->size == 2 && memcmp(k->ptr, "op", 2) == 0 &&
                     kv->val.type == MSGPACK_OBJECT_STR)
                snprintf(op, sizeof(op), "%.*s", (int)kv->val.via.str.size,
                         kv->val.via.str.ptr);
        }
        msgpack_unpacked_destroy(&up);
        free(body);
        if (strcmp(op, "hello") == 0) {
            msgpack_sbuffer sb;
            msgpack_packer pk;
            reply_begin(&sb, &pk, id, 0, 3);
            wbt_pk_str(&pk, "proto");
            msgpack_pack_int(&pk, 1);
            wbt_pk_str(&pk, "server");
            wbt_pk_str(&pk, "fake");
            wbt_pk_str(&pk, "pid");
            msgpack_pack_uint64(&pk, (uint64_t)getpid());
            reply_end(conn, &sb, NULL, 0);
        } else {
            fn(conn, id, op);
        }
    }
}

/* Starts a fake daemon on f->sock that answers with fn (NULL: expects the
 * client to send nothing), running as uid and gid as from before listen()
 * when as is not 0.  Returns once it listens. */
static void fake_start(fake *f, uid_t as, fake_fn fn) {
    int ready[2];
    assert_int_equal(pipe(ready), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(ready[0]);
        alarm(FAKE_TIMEOUT);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", f->sock);
        int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
            chmod(f->sock, 0666) < 0)
            _exit(80);
        if (as != 0 && (setgroups(0, NULL) || setgid(as) || setuid(as)))
            _exit(81);
        /* The peer's credentials are those of listen(), after setuid. */
        if (listen(ls, 4) < 0 || write(ready[1], "r", 1) != 1)
            _exit(82);
        int conn = accept(ls, NULL, NULL);
        if (conn < 0)
            _exit(83);
        fake_serve(conn, fn, fn == NULL);
        _exit(0);
    }
    close(ready[1]);
    char r;
    assert_int_equal(read(ready[0], &r, 1), 1);
    close(ready[0]);
    f->pid = pid;
}

/* Removes the fake's socket and directories. */
static void fake_remove(const fake *f) {
    unlink(f->sock);
    if (strcmp(f->dir, f->top) != 0)
        rmdir(f->dir);
    rmdir(f->top);
}

/* Waits up to ms for child pid to exit and returns its exit status (128
 * + the signal if one killed it); kills it and returns -1 if it is still
 * running by then. */
static int wait_exit(pid_t pid, int ms) {
    for (int i = 0; i < ms / 10; i++) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        wbt_sleep_ms(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

/* Waits for the fake to exit (it does when the client hangs up; killed
 * after 5 s), removes its files and returns its exit status. */
static int fake_stop(fake *f) {
    int code = f->pid ? wait_exit(f->pid, 5000) : -1;
    f->pid = 0;
    fake_remove(f);
    return code;
}

/* Descriptors open in this process. */
static int fd_count(void) {
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* Mappings of the fake's memfds in this process. */
static int fake_maps(void) {
    FILE *f = fopen("/proc/self/maps", "re");
    assert_non_null(f);
    char line[512];
    int n = 0;
    while (fgets(line, sizeof(line), f))
        n += strstr(line, "/memfd:fake") != NULL;
    fclose(f);
    return n;
}

/* 1 if the tests may take other uids. */
static int need_root(void) {
    if (geteuid() == 0)
        return 1;
    fprintf(stderr, "  (skipped: needs root to act as uid %d)\n", NOBODY);
    return 0;
}

/* Checks that the handle dropped its connection to the fake at once (its
 * next call would reconnect): of the descriptors this process holds
 * beyond the before it had, only the handle's cancel eventfd is left. */
static void assert_closed(int before) {
    assert_int_equal(fd_count(), before + 1);
}

/* Starts a fake as uid as (0: this process's) answering with fn in f,
 * whose directories are made, and connects to it; fails the test unless
 * the client accepts it. */
static wb_client *fake_connect(fake *f, uid_t as, fake_fn fn) {
    fake_start(f, as, fn);
    wb_client *c = NULL;
    assert_int_equal(wb_connect(f->sock, &c), 0);
    return c;
}

/* Says what c's request got (rc) and fails unless it is the error want
 * with a message that contains what. */
static void assert_refused(wb_client *c, int rc, int want, const char *what) {
    fprintf(stderr, "  %s: %s\n", wb_err_name(rc), wb_errmsg(c));
    assert_int_equal(rc, want);
    assert_non_null(strstr(wb_errmsg(c), what));
}

/* Closes c and fails unless the fake then exits with status 0 (3 if it
 * heard a byte it should not have) and this process holds the before
 * descriptors it had before the fake started. */
static void fake_end(fake *f, wb_client *c, int before) {
    wb_close(c);
    assert_int_equal(fake_stop(f), 0);
    assert_int_equal(fd_count(), before);
}

/* Runs a map against a fake answering with fn and expects a clean
 * WB_EPROTO whose message contains what: nothing mapped, every descriptor
 * closed, no signal, the connection closed. */
static void expect_map_refused(fake_fn fn, const char *what) {
    fake f;
    fake_dirs(&f);
    int before = fd_count();
    wb_client *c = fake_connect(&f, 0, fn);
    wb_mapping *m = NULL;
    int rc = wb_map(c, "m", 0, 0, &m);
    if (rc == 0) { /* Would have trusted it: touch what it claims. */
        wb_tensor t;
        wb_map_tensor(m, 0, &t);
        fprintf(stderr, "  mapped; last byte %d\n",
                ((const volatile uint8_t *)t.data)[t.nbytes - 1]);
        wb_unmap(m);
        m = NULL;
    }
    assert_refused(c, rc, WB_EPROTO, what);
    assert_null(m);
    assert_non_null(strstr(wb_errmsg(c), f.sock));
    assert_int_equal(fake_maps(), 0);
    assert_closed(before);
    fake_end(&f, c, before);
}

/* Starts a publish of one float32 tensor of FAKE_TENSOR bytes. */
static int publish_one(wb_client *c, wb_publish **p) {
    int64_t shape[1] = {FAKE_TENSOR / 4};
    wb_tensor_spec spec = {"t", WB_F32, 1, shape, NULL};
    return wb_publish_begin(c, "m", &spec, 1, NULL, 0, p);
}

/* Runs a publish against a fake answering with fn and expects a clean
 * WB_EPROTO whose message contains what. */
static void expect_publish_refused(fake_fn fn, const char *what) {
    fake f;
    fake_dirs(&f);
    int before = fd_count();
    wb_client *c = fake_connect(&f, 0, fn);
    wb_publish *p = NULL;
    int rc = publish_one(c, &p);
    assert_refused(c, rc, WB_EPROTO, what);
    assert_null(p);
    assert_int_equal(fake_maps(), 0);
    assert_closed(before);
    fake_end(&f, c, before);
}

/* Runs a list against a fake answering with fn and expects error rc with
 * a message containing what, and the connection closed after it. */
static void expect_list_fails(fake_fn fn, int want, const char *what) {
    fake f;
    fake_dirs(&f);
    int before = fd_count();
    wb_client *c = fake_connect(&f, 0, fn);
    wb_model_info *v = NULL;
    size_t n = 0;
    int rc = wb_list(c, &v, &n);
    assert_refused(c, rc, want, what);
    assert_null(v);
    assert_closed(before);
    fake_end(&f, c, before);
}

/* Starts a fake as uid as that expects to hear nothing in f, whose
 * directories are made, and expects the client to refuse it with WB_EPERM
 * before it sends a byte, with a message that names where and says why. */
static void expect_connect_refused(fake *f, uid_t as, const char *where,
                                   const char *why) {
    int before = fd_count();
    fake_start(f, as, NULL);
    wb_client *c = NULL;
    int rc = wb_connect(f->sock, &c);
    assert_refused(c, rc, WB_EPERM, where);
    assert_non_null(strstr(wb_errmsg(c), why));
    fake_end(f, c, before);
}

/* ------------------------------------------------------------ fakes */

#define ALL_SEALS (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

/* Answers a map with a read-only segment of size real bytes and the seals
 * given that claims FAKE_SEG. */
static void map_with_segment(int conn, uint64_t id, size_t real, int seals) {
    int fd = fake_memfd(real, seals);
    int ro = reopen_ro(fd);
    reply_map(conn, id, FAKE_SEG, &ro, 1);
    close(ro);
    close(fd);
}

static void fake_map_good(int conn, uint64_t id, const char *op) {
    map_with_segment(conn, id, FAKE_SEG, ALL_SEALS);
}

static void fake_map_short(int conn, uint64_t id, const char *op) {
    map_with_segment(conn, id, FAKE_SHORT, ALL_SEALS);
}

static void fake_map_unsealed(int conn, uint64_t id, const char *op) {
    map_with_segment(conn, id, FAKE_SEG, 0);
}

/* Seals everything but hands out the memfd's own read-write descriptor. */
static void fake_map_writable(int conn, uint64_t id, const char *op) {
    int fd = fake_memfd(FAKE_SEG, ALL_SEALS);
    reply_map(conn, id, FAKE_SEG, &fd, 1);
    close(fd);
}

/* A plain (unlinked) file of the right size, read-only. */
static void fake_map_plain_file(int conn, uint64_t id, const char *op) {
    int fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, FAKE_SEG) < 0)
        _exit(98);
    int ro = reopen_ro(fd);
    reply_map(conn, id, FAKE_SEG, &ro, 1);
    close(ro);
    close(fd);
}

/* A pipe where the segment should be. */
static void fake_map_pipe(int conn, uint64_t id, const char *op) {
    int p[2];
    if (pipe(p) < 0)
        _exit(98);
    reply_map(conn, id, FAKE_SEG, &p[0], 1);
    close(p[0]);
    close(p[1]);
}

/* FAKE_MANY_FDS good segments on one map reply. */
static void fake_map_many(int conn, uint64_t id, const char *op) {
    int fd = fake_memfd(FAKE_SEG, ALL_SEALS);
    int fds[FAKE_MANY_FDS];
    for (int i = 0; i < FAKE_MANY_FDS; i++)
        fds[i] = reopen_ro(fd);
    reply_map(conn, id, FAKE_SEG, fds, FAKE_MANY_FDS);
    for (int i = 0; i < FAKE_MANY_FDS; i++)
        close(fds[i]);
    close(fd);
}

/* Answers a publish with a read-write memfd of real bytes and the seals
 * given, declared as FAKE_SEG; a commit with version 1. */
static void publish_with(int conn, uint64_t id, const char *op, size_t real,
                         int seals) {
    if (strcmp(op, "commit") == 0) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        reply_begin(&sb, &pk, id, 0, 1);
        wbt_pk_str(&pk, "version");
        msgpack_pack_uint64(&pk, 1);
        reply_end(conn, &sb, NULL, 0);
        return;
    }
    if (strcmp(op, "publish") != 0) {
        reply_empty(conn, id);
        return;
    }
    int fd = fake_memfd(real, seals);
    reply_publish(conn, id, FAKE_SEG, fd);
    close(fd);
}

static void fake_publish_good(int conn, uint64_t id, const char *op) {
    publish_with(conn, id, op, FAKE_SEG, F_SEAL_SHRINK | F_SEAL_GROW);
}

static void fake_publish_short(int conn, uint64_t id, const char *op) {
    publish_with(conn, id, op, FAKE_SHORT, F_SEAL_SHRINK | F_SEAL_GROW);
}

static void fake_publish_unsealed(int conn, uint64_t id, const char *op) {
    publish_with(conn, id, op, FAKE_SEG, 0);
}

/* A list reply {id, err, models: []} with the id and err given. */
static void list_reply(int conn, uint64_t id, int64_t err) {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    reply_begin(&sb, &pk, id, err, 1);
    wbt_pk_str(&pk, err ? "msg" : "models");
    if (err)
        wbt_pk_str(&pk, "frame too big for the fake");
    else
        msgpack_pack_array(&pk, 0);
    reply_end(conn, &sb, NULL, 0);
}

static void fake_list_good(int conn, uint64_t id, const char *op) {
    list_reply(conn, id, 0);
}

static void fake_id_zero(int conn, uint64_t id, const char *op) {
    list_reply(conn, 0, 0);
}

static void fake_id_wrong(int conn, uint64_t id, const char *op) {
    list_reply(conn, id + 1, 0);
}

static void fake_id_zero_error(int conn, uint64_t id, const char *op) {
    list_reply(conn, 0, WB_ETOOBIG);
}

static void fake_id_missing(int conn, uint64_t id, const char *op) {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    wbt_pk_str(&pk, "err");
    msgpack_pack_int64(&pk, 0);
    wbt_pk_str(&pk, "models");
    msgpack_pack_array(&pk, 0);
    reply_end(conn, &sb, NULL, 0);
}

/* FAKE_MANY_FDS descriptors on a list reply, which expects none. */
static void fake_list_many(int conn, uint64_t id, const char *op) {
    int fds[FAKE_MANY_FDS];
    for (int i = 0; i < FAKE_MANY_FDS; i++)
        fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    reply_begin(&sb, &pk, id, 0, 1);
    wbt_pk_str(&pk, "models");
    msgpack_pack_array(&pk, 0);
    reply_end(conn, &sb, fds, FAKE_MANY_FDS);
    for (int i = 0; i < FAKE_MANY_FDS; i++)
        close(fds[i]);
}

/* ------------------------------------------------------------ tests */

/* The fake speaks the protocol: a good segment maps and reads. */
static void test_trust_map_good_fake(void **state) {
    fake f;
    fake_dirs(&f);
    int before = fd_count();
    wb_client *c = fake_connect(&f, 0, fake_map_good);
    wb_mapping *m = NULL;
    assert_int_equal(wb_map(c, "m", 0, 0, &m), 0);
    wb_tensor t;
    assert_int_equal(wb_map_tensor(m, 0, &t), 0);
    assert_int_equal(t.nbytes, FAKE_TENSOR);
    assert_int_equal(((const uint8_t *)t.data)[FAKE_TENSOR - 1], 0x5a);
    assert_int_equal(fake_maps(), 1);
    wb_unmap(m);
    fake_end(&f, c, before);
}

/* A segment smaller than the reply says (SIGBUS on touching the end). */
static void test_trust_map_short_segment(void **state) {
    expect_map_refused(fake_map_short, "4096 bytes");
}

static void test_trust_map_unsealed_segment(void **state) {
    expect_map_refused(fake_map_unsealed, "not sealed");
}

static void test_trust_map_writable_segment(void **state) {
    expect_map_refused(fake_map_writable, "open for writing");
}

static void test_trust_map_not_memfd(void **state) {
    expect_map_refused(fake_map_plain_file, "segment 0");
    expect_map_refused(fake_map_pipe, "not a regular file");
}

/* More descriptors than a reply can carry: the kernel truncates the
 * control data, and the reply cannot be believed. */
static void test_trust_too_many_descriptors(void **state) {
    expect_map_refused(fake_map_many, "truncated");
    expect_list_fails(fake_list_many, WB_EPROTO, "truncated");
}

/* The fake's publish path works, through a mapping and through write. */
static void test_trust_publish_good_fake(void **state) {
    fake f;
    fake_dirs(&f);
    int before = fd_count();
    wb_client *c = fake_connect(&f, 0, fake_publish_good);
    wb_publish *p = NULL;
    assert_int_equal(publish_one(c, &p), 0);
    size_t nb = 0;
    float *x = wb_publish_data(p, 0, &nb);
    assert_non_null(x);
    assert_int_equal(nb, FAKE_TENSOR);
    x[0] = 1.0f;
    float y = 2.0f;
    assert_int_equal(wb_publish_write(p, 0, &y, sizeof(y), 4), 0);
    uint64_t v = 0;
    assert_int_equal(wb_publish_commit(p, &v), 0);
    assert_int_equal(v, 1);
    fake_end(&f, c, before);
}

static void test_trust_publish_wrong_size(void **state) {
    expect_publish_refused(fake_publish_short, "4096 bytes");
}

static void test_trust_publish_unsealed(void **state) {
    expect_publish_refused(fake_publish_unsealed, "not sealed");
}

/* Only a reply with the request's id answers it; id 0 is the daemon's
 * last word, and only with an error. */
static void test_trust_reply_ids(void **state) {
    expect_list_fails(fake_id_zero, WB_EPROTO, "id 0");
    expect_list_fails(fake_id_wrong, WB_EPROTO, "out of sequence");
    expect_list_fails(fake_id_missing, WB_EPROTO, "no id");
    expect_list_fails(fake_id_zero_error, WB_ETOOBIG, "frame too big");
}

/* A fake running as nobody, in a root-owned 0755 directory, is refused
 * before the client sends a byte. */
static void test_trust_peer_stranger(void **state) {
    if (!need_root())
        return;
    fake f;
    fake_dirs(&f);
    expect_connect_refused(&f, NOBODY, f.sock, "uid 65534");
}

/* A socket directory anyone can write is refused, even with a trusted
 * peer. */
static void test_trust_dir_world_writable(void **state) {
    fake f;
    fake_dirs(&f);
    assert_int_equal(chmod(f.top, 0777), 0);
    expect_connect_refused(&f, 0, f.dir, "mode 0777");
}

/* The attack on /tmp/wbroker-$UID: a stranger creates the directory in a
 * sticky, world-writable parent and listens in it as itself. */
static void test_trust_dir_stranger_in_tmp(void **state) {
    if (!need_root())
        return;
    fake f;
    fake_dirs(&f);
    fake_subdir(&f, NOBODY, 0755, 01777);
    expect_connect_refused(&f, NOBODY, f.dir, "owner uid 65534");
}

/* A directory that only root can have given to another user (systemd's
 * /run/wbroker for the service user), with the daemon running as that
 * user, is trusted. */
static void test_trust_dir_placed_by_root(void **state) {
    if (!need_root())
        return;
    fake f;
    fake_dirs(&f);
    fake_subdir(&f, NOBODY, 0755, 0755);
    int before = fd_count();
    wb_client *c = fake_connect(&f, NOBODY, fake_list_good);
    wb_model_info *v = NULL;
    size_t n = 1;
    assert_int_equal(wb_list(c, &v, &n), 0);
    assert_int_equal(n, 0);
    wb_model_info_free(v, n);
    fake_end(&f, c, before);
}

/* In a root-owned sticky directory (like /tmp) root's daemon is trusted
 * and a stranger's socket is refused by its uid. */
static void test_trust_dir_sticky(void **state) {
    if (!need_root())
        return;
    fake f;
    fake_dirs(&f);
    assert_int_equal(chmod(f.top, 01777), 0);
    int before = fd_count();
    wb_client *c = fake_connect(&f, 0, fake_list_good);
    fake_end(&f, c, before);

    fake_dirs(&f);
    assert_int_equal(chmod(f.top, 01777), 0);
    expect_connect_refused(&f, NOBODY, f.sock, "uid 65534");
}

/* The directory rule on its own: a missing directory, a relative path. */
static void test_trust_dir_check_rule(void **state) {
    char why[WB_DIR_WHY_MAX] = "";
    uid_t owner = 12345;
    assert_int_equal(wb__socket_dir_check("/nonexistent-wbt/x/wb.sock",
                                          geteuid(), 0, &owner, why,
                                          sizeof(why)),
                     1);
    fake f;
    fake_dirs(&f);
    char cwd[4096];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(f.top), 0);
    assert_int_equal(
        wb__socket_dir_check("wb.sock", geteuid(), 0, &owner, why, sizeof(why)),
        0);
    assert_int_equal(owner, geteuid());
    assert_int_equal(chmod(f.top, 0775), 0);
    assert_int_equal(
        wb__socket_dir_check("wb.sock", geteuid(), 0, &owner, why, sizeof(why)),
        WB_EPERM);
    assert_non_null(strstr(why, f.top)); /* Resolved, not ".". */
    assert_int_equal(chdir(cwd), 0);
    fake_remove(&f);
}

/* Runs the real daemon on dir/wb.sock; returns its exit status (-1 if it
 * kept running for 10 s) with its stderr in log. */
static int run_daemon(const char *dir, char *log, size_t n) {
    char sock[160], logpath[160], bin[256];
    snprintf(sock, sizeof(sock), "%s/wb.sock", dir);
    snprintf(logpath, sizeof(logpath), "%s.log", dir);
    snprintf(bin, sizeof(bin), "%s/wbrokerd", wbt_build_dir());
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (freopen(logpath, "w", stderr) == NULL)
            _exit(126);
        unsetenv("LISTEN_FDS");
        unsetenv("NOTIFY_SOCKET");
        execl(bin, bin, "--socket", sock, (char *)NULL);
        _exit(127);
    }
    int code = wait_exit(pid, 10000);
    FILE *f = fopen(logpath, "re");
    size_t k = f ? fread(log, 1, n - 1, f) : 0;
    log[k] = '\0';
    if (f)
        fclose(f);
    fprintf(stderr, "  wbrokerd: %s", log);
    unlink(logpath);
    unlink(sock);
    return code;
}

/* The daemon refuses to listen in a directory that a stranger created. */
static void test_trust_daemon_stranger_dir(void **state) {
    if (!need_root())
        return;
    fake f;
    fake_dirs(&f);
    fake_subdir(&f, NOBODY, 0755, 0700);
    char log[4096];
    assert_int_equal(run_daemon(f.dir, log, sizeof(log)), 1);
    assert_non_null(strstr(log, "refusing to listen"));
    assert_non_null(strstr(log, "owner uid 65534"));
    fake_remove(&f);
}

/* The daemon refuses a directory that anyone can write. */
static void test_trust_daemon_open_dir(void **state) {
    fake f;
    fake_dirs(&f);
    fake_subdir(&f, geteuid(), 0777, 0700);
    char log[4096];
    assert_int_equal(run_daemon(f.dir, log, sizeof(log)), 1);
    assert_non_null(strstr(log, "refusing to listen"));
    assert_non_null(strstr(log, "mode 0777"));
    fake_remove(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trust_map_good_fake),
        cmocka_unit_test(test_trust_map_short_segment),
        cmocka_unit_test(test_trust_map_unsealed_segment),
        cmocka_unit_test(test_trust_map_writable_segment),
        cmocka_unit_test(test_trust_map_not_memfd),
        cmocka_unit_test(test_trust_too_many_descriptors),
        cmocka_unit_test(test_trust_publish_good_fake),
        cmocka_unit_test(test_trust_publish_wrong_size),
        cmocka_unit_test(test_trust_publish_unsealed),
        cmocka_unit_test(test_trust_reply_ids),
        cmocka_unit_test(test_trust_peer_stranger),
        cmocka_unit_test(test_trust_dir_world_writable),
        cmocka_unit_test(test_trust_dir_stranger_in_tmp),
        cmocka_unit_test(test_trust_dir_placed_by_root),
        cmocka_unit_test(test_trust_dir_sticky),
        cmocka_unit_test(test_trust_dir_check_rule),
        cmocka_unit_test(test_trust_daemon_stranger_dir),
        cmocka_unit_test(test_trust_daemon_open_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
