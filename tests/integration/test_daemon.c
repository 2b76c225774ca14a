/* test_daemon.c -- Integration tests: a real wbrokerd, real client
 * processes, real shared memory.
 *
 * Each test starts its own daemon on a private socket.  Publishers and
 * consumers run in separate processes (fork), and the daemon's descriptors,
 * segments and accounting are checked from the outside after every abuse. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <msgpack.h>

#include "../../client/safetensors.h"
#include "fdpass.h"
#include "harness.h"
#include "wire.h"

/* ------------------------------------------------------------ fixtures */

static int setup(void **state) {
    static const char *const extra[] = {"--memory-limit", "1G", NULL};
    return wbt_setup(state, extra);
}

/* Every version stays listed (no retention), for tests that count them. */
static int setup_keep_all(void **state) {
    static const char *const extra[] = {"--memory-limit", "1G", "--keep", "0",
                                        NULL};
    return wbt_setup(state, extra);
}

static int setup_small(void **state) {
    static const char *const extra[] = {"--memory-limit", "64M", NULL};
    return wbt_setup(state, extra);
}

static int setup_huge(void **state) {
    static const char *const extra[] = {"--memory-limit", "1024T", NULL};
    return wbt_setup(state, extra);
}

/* Stops the daemon; a clean exit (status 0) is part of every test. */
static int teardown(void **state) {
    return wbt_teardown(state);
}

static void wait_clean(const wbt_daemon *d) {
    wbt_wait_clean(d);
    assert_int_equal(wbt_segment_count(d), 0);
    assert_int_equal(wbt_mem_used(d), 0);
}

static void wait_fds(const wbt_daemon *d, int n) {
    assert_int_equal(wbt_wait_fds(d, n), n);
}

/* Runs fn(d) in a child process and returns its exit status. */
static int in_child(const wbt_daemon *d, int (*fn)(const wbt_daemon *)) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(fn(d));
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* 1 if addr lies in a shared mapping of a wbroker segment, per
 * /proc/self/maps. */
static int in_shared_segment(const void *addr) {
    FILE *f = fopen("/proc/self/maps", "re");
    char line[512];
    int found = 0;
    while (f && fgets(line, sizeof(line), f)) {
        unsigned long lo, hi;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3)
            continue;
        if ((unsigned long)addr >= lo && (unsigned long)addr < hi) {
            found = strstr(line, "/memfd:wbroker:") != NULL && perms[3] == 's';
            break;
        }
    }
    if (f)
        fclose(f);
    return found;
}

#define NT 4             /* Tensors of the standard test model. */
#define NE (1024 * 1024) /* Elements per tensor. */

static int publish_standard(const wbt_daemon *d) {
    wb_client *c = wbt_connect(d);
    if (c == NULL)
        return 1;
    uint64_t v = wbt_publish_f32(c, "m", NT, NE);
    wb_close(c);
    return v == 1 ? 0 : 2;
}

/* ------------------------------------------------------------ tests */

/* A version published by one process is read by another with the same
 * bytes, through a shared mapping of the daemon's segment (not a copy). */
static void test_daemon_publish_map_across_processes(void **state) {
    wbt_daemon *d = *state;
    assert_int_equal(in_child(d, publish_standard), 0);
    wb_client *c = wbt_connect(d);
    assert_non_null(c);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_SHARED, &m), 0);
    assert_int_equal(wb_map_version(m), 1);
    assert_int_equal(wb_map_count(m), NT);
    for (size_t i = 0; i < NT; i++) {
        char name[16];
        snprintf(name, sizeof(name), "t%zu", i);
        long k = wb_map_find(m, name);
        assert_true(k >= 0);
        wb_tensor t;
        assert_int_equal(wb_map_tensor(m, (size_t)k, &t), 0);
        assert_int_equal(t.dtype, WB_F32);
        assert_int_equal(t.nbytes, NE * 4);
        const float *f = t.data;
        for (size_t j = 0; j < NE; j += 4099)
            assert_true(f[j] == (float)(i * 1000 + j));
        assert_true(in_shared_segment(t.data));
    }
    assert_int_equal(wb_map_find(m, "absent"), -1);
    wb_unmap(m);
    wb_close(c);
}

/* A consumer can never write the shared bytes: a writable shared mapping is
 * refused, the sealed file refuses writes even through a reopened
 * descriptor, and copy-on-write writes stay private. */
static void test_daemon_readonly_and_cow(void **state) {
    wbt_daemon *d = *state;
    assert_int_equal(in_child(d, publish_standard), 0);
    wb_client *c = wbt_connect(d);
    wb_mapping *shared, *priv, *other;
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_SHARED, &shared), 0);
    wb_tensor t;
    wb_map_tensor(shared, (size_t)wb_map_find(shared, "t1"), &t);
    long page = sysconf(_SC_PAGESIZE);
    void *pg = (void *)((uintptr_t)t.data / (uintptr_t)page * (uintptr_t)page);
    assert_int_equal(mprotect(pg, (size_t)page, PROT_READ | PROT_WRITE), -1);
    assert_int_equal(errno, EACCES);

    /* Even root reopening the mapped file writable cannot write it. */
    FILE *f = fopen("/proc/self/maps", "re");
    char line[512], path[128] = "";
    while (fgets(line, sizeof(line), f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && (uintptr_t)t.data >= lo &&
            (uintptr_t)t.data < hi) {
            snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx", lo,
                     hi);
            break;
        }
    }
    fclose(f);
    int fd = open(path, O_RDWR);
    if (fd >= 0) {
        assert_int_equal(pwrite(fd, "x", 1, 0), -1);
        assert_int_equal(errno, EPERM);
        assert_true(mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_SHARED,
                         fd, 0) == MAP_FAILED);
        close(fd);
    }

    assert_int_equal(wb_map(c, "m", 0, WB_MAP_PRIVATE, &priv), 0);
    wb_tensor tp;
    wb_map_tensor(priv, (size_t)wb_map_find(priv, "t1"), &tp);
    ((float *)tp.data)[5] = -1.0f;
    assert_true(((float *)tp.data)[5] == -1.0f);
    assert_true(((const float *)t.data)[5] == 1005.0f);
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_PRIVATE, &other), 0);
    wb_tensor to;
    wb_map_tensor(other, (size_t)wb_map_find(other, "t1"), &to);
    assert_true(((const float *)to.data)[5] == 1005.0f);
    wb_unmap(other);
    wb_unmap(priv);
    wb_unmap(shared);
    wb_close(c);
}

/* How far a doomed publisher gets before it is killed. */
static int kill_stage;

static int publish_and_die(const wbt_daemon *d) {
    wb_client *c = wbt_connect(d);
    int64_t shape[1] = {NE};
    wb_tensor_spec specs[NT];
    char names[NT][16];
    for (int i = 0; i < NT; i++) {
        snprintf(names[i], sizeof(names[i]), "t%d", i);
        specs[i] = (wb_tensor_spec){names[i], WB_F32, 1, shape, NULL};
    }
    wb_publish *p;
    if (wb_publish_begin(c, "m", specs, NT, NULL, 0, &p))
        return 3;
    for (int i = 0; i < NT; i++) {
        if (kill_stage == 1 && i == NT / 2)
            raise(SIGKILL); /* Midway through writing. */
        if (kill_stage == 0)
            raise(SIGKILL); /* Right after declaring. */
        size_t nb = 0;
        void *data = wb_publish_data(p, (size_t)i, &nb);
        memset(data, 0x41, nb);
    }
    raise(SIGKILL); /* Everything written, just before the commit. */
    return 4;
}

/* A publisher killed after declaring, midway through writing or just
 * before committing leaves no segment, descriptor or accounting behind,
 * and the same model can then be published. */
static void test_daemon_publisher_killed(void **state) {
    wbt_daemon *d = *state;
    wb_client *probe = wbt_connect(d);
    wb_close(probe);
    wbt_sleep_ms(50);
    int base = wbt_fd_count(d);
    for (kill_stage = 0; kill_stage < 3; kill_stage++) {
        assert_int_equal(in_child(d, publish_and_die), 128 + SIGKILL);
        wait_clean(d);
        wait_fds(d, base);
    }
    wb_client *c = wbt_connect(d);
    wb_model_info *mi;
    size_t n;
    assert_int_equal(wb_list(c, &mi, &n), 0);
    assert_int_equal(n, 0);
    wb_model_info_free(mi, n);
    wb_close(c);
    assert_int_equal(in_child(d, publish_standard), 0);
}

/* A publish over the memory limit fails cleanly before any segment exists,
 * and the daemon goes on serving reads and smaller publishes. */
static void test_daemon_memory_limit(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    int64_t shape[1] = {100 * 1024 * 1024 / 4};
    wb_tensor_spec spec = {"big", WB_F32, 1, shape, NULL};
    wb_publish *p = NULL;
    assert_int_equal(wb_publish_begin(c, "big", &spec, 1, NULL, 0, &p),
                     WB_ELIMIT);
    assert_null(p);
    assert_non_null(strstr(wb_errmsg(c), "memory limit"));
    assert_int_equal(wbt_segment_count(d), 0);
    assert_int_equal(wbt_publish_f32(c, "small", 2, 1024), 1);
    wb_status st;
    assert_int_equal(wb_get_status(c, &st), 0);
    assert_int_equal(st.memory_used, 2 * 1024 * 1024);
    assert_int_equal(st.memory_limit, 64 * 1024 * 1024);
    wb_close(c);
}

/* A publish larger than the free memory fails with "no space", not a
 * crash, and the daemon keeps serving. */
static void test_daemon_no_space(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    int64_t shape[2] = {1024 * 1024, 1024 * 1024}; /* 4 TiB of F32. */
    wb_tensor_spec spec = {"huge", WB_F32, 2, shape, NULL};
    wb_publish *p = NULL;
    assert_int_equal(wb_publish_begin(c, "huge", &spec, 1, NULL, 0, &p),
                     WB_ENOSPC);
    assert_null(p);
    assert_int_equal(wbt_segment_count(d), 0);
    assert_int_equal(wbt_mem_used(d), 0);
    assert_int_equal(wbt_publish_f32(c, "small", 1, 16), 1);
    wb_close(c);
}

static void body_unknown_op(msgpack_packer *pk) {
    msgpack_pack_map(pk, 2);
    wbt_pk_str(pk, "op");
    wbt_pk_str(pk, "explode");
    wbt_pk_str(pk, "id");
    msgpack_pack_uint64(pk, 2);
}

static void body_bad_types(msgpack_packer *pk) {
    msgpack_pack_map(pk, 4);
    wbt_pk_str(pk, "op");
    wbt_pk_str(pk, "publish");
    wbt_pk_str(pk, "id");
    msgpack_pack_uint64(pk, 3);
    wbt_pk_str(pk, "model");
    msgpack_pack_int(pk, 42);
    wbt_pk_str(pk, "tensors");
    wbt_pk_str(pk, "not a list");
}

static void body_bad_tensor(msgpack_packer *pk) {
    msgpack_pack_map(pk, 4);
    wbt_pk_str(pk, "op");
    wbt_pk_str(pk, "publish");
    wbt_pk_str(pk, "id");
    msgpack_pack_uint64(pk, 4);
    wbt_pk_str(pk, "model");
    wbt_pk_str(pk, "m");
    wbt_pk_str(pk, "tensors");
    msgpack_pack_array(pk, 1);
    msgpack_pack_array(pk, 3);
    wbt_pk_str(pk, "w");
    wbt_pk_str(pk, "F99");
    msgpack_pack_array(pk, 0);
}

static void body_commit_unknown(msgpack_packer *pk) {
    msgpack_pack_map(pk, 3);
    wbt_pk_str(pk, "op");
    wbt_pk_str(pk, "commit");
    wbt_pk_str(pk, "id");
    msgpack_pack_uint64(pk, 5);
    wbt_pk_str(pk, "pub");
    msgpack_pack_uint64(pk, 999999);
}

static void body_bad_proto(msgpack_packer *pk) {
    msgpack_pack_map(pk, 3);
    wbt_pk_str(pk, "op");
    wbt_pk_str(pk, "hello");
    wbt_pk_str(pk, "id");
    msgpack_pack_uint64(pk, 1);
    wbt_pk_str(pk, "proto");
    msgpack_pack_int(pk, 99);
}

/* Sends a hello of protocol proto and a list (id 2) on a new raw
 * connection; returns it with the hello's reply in *hello. */
static int hello_proto(const wbt_daemon *d, uint64_t proto, wbt_reply *hello) {
    int fd = wbt_raw_connect(d);
    assert_true(fd >= 0);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    wbt_pk_str(&pk, "op");
    wbt_pk_str(&pk, "hello");
    wbt_pk_str(&pk, "id");
    msgpack_pack_uint64(&pk, 1);
    wbt_pk_str(&pk, "proto");
    msgpack_pack_uint64(&pk, proto);
    assert_int_equal(wbt_raw_frame(fd, sb.data, sb.size), 0);
    msgpack_sbuffer_clear(&sb);
    msgpack_pack_map(&pk, 2);
    wbt_pk_str(&pk, "op");
    wbt_pk_str(&pk, "list");
    wbt_pk_str(&pk, "id");
    msgpack_pack_uint64(&pk, 2);
    assert_int_equal(wbt_raw_frame(fd, sb.data, sb.size), 0);
    msgpack_sbuffer_destroy(&sb);
    wbt_raw_read(fd, 5000, hello);
    return fd;
}

/* Fields of each row of a list reply on fd; -1 unless every row has the
 * same number. */
static int list_fields(int fd) {
    wbt_reply r;
    assert_int_equal(wbt_raw_read(fd, 5000, &r), 0);
    const msgpack_object *models = NULL;
    for (uint32_t i = 0; i < r.root->via.map.size; i++) {
        const msgpack_object_kv *kv = &r.root->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == 6 &&
            memcmp(kv->key.via.str.ptr, "models", 6) == 0)
            models = &kv->val;
    }
    assert_non_null(models);
    assert_int_equal(models->type, MSGPACK_OBJECT_ARRAY);
    assert_true(models->via.array.size > 0);
    int fields = -1;
    for (uint32_t i = 0; i < models->via.array.size; i++) {
        int n = (int)models->via.array.ptr[i].via.array.size;
        fields = i == 0 || n == fields ? n : -1;
    }
    wbt_reply_free(&r);
    return fields;
}

/* A client of protocol 1 (the previous release) is answered in protocol 1:
 * list rows of the six fields it decodes.  Protocols the daemon does not
 * speak get EVERSION and a close. */
static void test_daemon_protocol_versions(void **state) {
    wbt_daemon *d = *state;
    assert_int_equal(in_child(d, publish_standard), 0);
    wbt_reply h;
    int fd = hello_proto(d, 1, &h);
    assert_int_equal(h.err, 0);
    assert_int_equal(wbt_reply_u64(&h, "proto"), 1);
    wbt_reply_free(&h);
    assert_int_equal(list_fields(fd), 6);
    close(fd);
    fd = hello_proto(d, WB_PROTO_VERSION, &h);
    assert_int_equal(h.err, 0);
    assert_int_equal(wbt_reply_u64(&h, "proto"), WB_PROTO_VERSION);
    wbt_reply_free(&h);
    assert_int_equal(list_fields(fd), 8);
    close(fd);
    uint64_t bad[] = {0, WB_PROTO_VERSION + 1};
    for (int i = 0; i < 2; i++) {
        fd = hello_proto(d, bad[i], &h);
        assert_int_equal(h.err, WB_EVERSION);
        wbt_reply_free(&h);
        assert_true(wbt_raw_wait_closed(fd, 5000));
        close(fd);
    }
    /* The library speaks the newest. */
    wb_client *c = wbt_connect(d);
    wb_model_info *mi = NULL;
    size_t n = 0;
    assert_int_equal(wb_list(c, &mi, &n), 0);
    assert_true(n > 0);
    wb_model_info_free(mi, n);
    wb_close(c);
}

/* Sends one valid hello frame with an unasked descriptor attached. */
static void send_hello_with_fd(int fd) {
    int extra = open("/dev/null", O_RDONLY | O_CLOEXEC);
    unsigned char frame[] = {0,    0,   0,   21,  0x83, 0xa2, 'o', 'p', 0xa5,
                             'h',  'e', 'l', 'l', 'o',  0xa2, 'i', 'd', 0x01,
                             0xa5, 'p', 'r', 'o', 't',  'o',  0x01};
    assert_true(wb__fd_send(fd, frame, sizeof(frame), &extra, 1, 0) > 0);
    close(extra);
}

/* Thousands of garbage, truncated and oversized frames, wrong types,
 * protocol abuse and unasked descriptors get error replies or a close;
 * the daemon keeps serving with the descriptor count it started with. */
static void test_daemon_garbage_frames(void **state) {
    wbt_daemon *d = *state;
    assert_int_equal(in_child(d, publish_standard), 0);
    wb_client *probe = wbt_connect(d);
    wb_close(probe);
    wbt_sleep_ms(50);
    int base = wbt_fd_count(d);
    srand(4242);
    for (int i = 0; i < 3000; i++) {
        int fd = wbt_raw_connect(d);
        assert_true(fd >= 0);
        int kind = i % 10;
        if (kind == 0) { /* Random bytes. */
            char junk[512];
            size_t n = 1 + (size_t)(rand() % (int)sizeof(junk));
            for (size_t k = 0; k < n; k++)
                junk[k] = (char)rand();
            wbt_raw_send(fd, junk, n);
        } else if (kind == 1) { /* Oversized length. */
            unsigned char h[4] = {0xff, 0xff, 0xff, 0xff};
            wbt_raw_send(fd, h, 4);
            assert_int_equal(wbt_raw_reply(fd), WB_ETOOBIG);
        } else if (kind == 2) { /* Truncated frame, then hang up. */
            unsigned char h[6] = {0, 0, 1, 0, 0x82, 0xa2};
            wbt_raw_send(fd, h, sizeof(h));
        } else if (kind == 3) { /* A request before the hello. */
            wbt_raw_packed(fd, body_unknown_op);
            assert_int_equal(wbt_raw_reply(fd), WB_EPROTO);
            assert_int_equal(wbt_raw_reply(fd), 1); /* closed */
        } else if (kind == 4) { /* Unknown op after the hello. */
            assert_int_equal(wbt_raw_hello(fd), 0);
            wbt_raw_packed(fd, body_unknown_op);
            assert_int_equal(wbt_raw_reply(fd), WB_EPROTO);
        } else if (kind == 5) { /* Wrong types. */
            assert_int_equal(wbt_raw_hello(fd), 0);
            wbt_raw_packed(fd, body_bad_types);
            int err = wbt_raw_reply(fd);
            assert_true(err == WB_EINVAL || err == WB_EPROTO);
            wbt_raw_packed(fd, body_bad_tensor);
            assert_int_equal(wbt_raw_reply(fd), WB_EDTYPE);
            wbt_raw_packed(fd, body_commit_unknown);
            assert_int_equal(wbt_raw_reply(fd), WB_ESTATE);
        } else if (kind == 6) { /* A map within a map within ... */
            unsigned char deep[64];
            size_t n = 0;
            for (int k = 0; k < 20; k++) {
                deep[n++] = 0x81;
                deep[n++] = 0xa1;
                deep[n++] = 'k';
            }
            deep[n++] = 0xc0;
            wbt_raw_frame(fd, deep, n);
            assert_int_equal(wbt_raw_reply(fd), WB_EPROTO);
        } else if (kind == 7) { /* Unasked descriptors. */
            send_hello_with_fd(fd);
            assert_int_equal(wbt_raw_reply(fd), 0);
        } else if (kind == 8) { /* Wrong protocol version. */
            wbt_raw_packed(fd, body_bad_proto);
            assert_int_equal(wbt_raw_reply(fd), WB_EVERSION);
        } else { /* Billion-element header inside a valid frame. */
            unsigned char body[] = {0x81, 0xa1, 'x',  0xdd,
                                    0x3b, 0x9a, 0xca, 0x00};
            wbt_raw_frame(fd, body, sizeof(body));
            assert_int_equal(wbt_raw_reply(fd), WB_EPROTO);
        }
        close(fd);
    }
    assert_true(wbt_alive(d));
    wait_fds(d, base);
    /* Still serving, and the committed version is intact. */
    wb_client *c = wbt_connect(d);
    assert_non_null(c);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_SHARED, &m), 0);
    wb_tensor t;
    wb_map_tensor(m, (size_t)wb_map_find(m, "t2"), &t);
    assert_true(((const float *)t.data)[77] == 2077.0f);
    wb_unmap(m);
    wb_close(c);
}

/* Dropping a version that is mapped keeps the mapping readable and removes
 * the version from the listing; its memory is refunded at the unmap. */
static void test_daemon_drop_while_mapped(void **state) {
    wbt_daemon *d = *state;
    assert_int_equal(in_child(d, publish_standard), 0);
    wb_client *c = wbt_connect(d);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_SHARED, &m), 0);
    assert_int_equal(wb_drop(c, "m", 1), 0);
    assert_int_equal(wb_drop(c, "m", 1), WB_ENOMODEL);
    wb_tensor t;
    wb_map_tensor(m, (size_t)wb_map_find(m, "t3"), &t);
    const float *f = t.data;
    for (size_t j = 0; j < NE; j += 1021)
        assert_true(f[j] == (float)(3000 + j));
    /* The daemon let go of the segment, but the mapping still holds its
     * memory: it stays charged until the unmap. */
    assert_int_not_equal(wbt_mem_used(d), 0);
    assert_int_equal(wbt_segment_count(d), 0);
    wb_mapping *again;
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_SHARED, &again), WB_ENOMODEL);
    assert_null(again);
    wb_unmap(m);
    wait_clean(d);
    wb_close(c);
}

/* A commit while another process still maps the segment writable is
 * refused (the kernel will not seal it), and leaves nothing behind. */
static void test_daemon_commit_while_mapped_writable(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    int64_t shape[1] = {1024};
    wb_tensor_spec spec = {"w", WB_F32, 1, shape, NULL};
    wb_publish *p;
    assert_int_equal(wb_publish_begin(c, "m", &spec, 1, NULL, 0, &p), 0);
    assert_non_null(wb_publish_data(p, 0, NULL)); /* Maps it writable. */
    int go[2];
    assert_int_equal(pipe(go), 0);
    pid_t pid = fork();
    if (pid == 0) { /* Inherits the writable mapping and holds it. */
        char b;
        close(go[1]);
        ssize_t r = read(go[0], &b, 1);
        _exit(r < 0);
    }
    close(go[0]);
    uint64_t v = 0;
    assert_int_equal(wb_publish_commit(p, &v), WB_EBUSY);
    assert_non_null(strstr(wb_errmsg(c), "writable mapping"));
    close(go[1]);
    waitpid(pid, NULL, 0);
    wait_clean(d);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "m", 0, 0, &m), WB_ENOMODEL);
    wb_close(c);
}

/* A publisher that overwrites the safetensors header gets its commit
 * refused. */
static void test_daemon_header_tampered(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    int64_t shape[1] = {16};
    wb_tensor_spec spec = {"w", WB_F32, 1, shape, NULL};
    wb_publish *p;
    assert_int_equal(wb_publish_begin(c, "m", &spec, 1, NULL, 0, &p), 0);
    char *data = wb_publish_data(p, 0, NULL);
    data[-1] = 'X'; /* Last byte of the header's padding. */
    assert_int_equal(wb_publish_commit(p, NULL), WB_ECORRUPT);
    wait_clean(d);
    wb_close(c);
}

static int publish_later(const wbt_daemon *d) {
    wbt_sleep_ms(200);
    return publish_standard(d);
}

/* Versions count up per model, each stays addressable until dropped, its
 * metadata travels with it, and watch wakes up for a new commit. */
static void test_daemon_versions_metadata_watch(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    int64_t shape[1] = {4};
    wb_tensor_spec spec = {"w", WB_I32, 1, shape, NULL};
    for (int32_t ver = 1; ver <= 3; ver++) {
        char val[16];
        snprintf(val, sizeof(val), "step-%d", ver);
        wb_kv meta[2] = {{"step", val}, {"format", "pt"}};
        wb_publish *p;
        assert_int_equal(wb_publish_begin(c, "m", &spec, 1, meta, 2, &p), 0);
        int32_t *x = wb_publish_data(p, 0, NULL);
        for (int k = 0; k < 4; k++)
            x[k] = ver * 10 + k;
        uint64_t got;
        assert_int_equal(wb_publish_commit(p, &got), 0);
        assert_int_equal(got, (uint64_t)ver);
    }
    wb_model_info *mi;
    size_t n;
    assert_int_equal(wb_list(c, &mi, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(mi[0].name, "m");
    assert_int_equal(mi[0].latest, 3);
    assert_int_equal(mi[0].nversions, 3);
    assert_int_equal(mi[0].tensors, 1);
    assert_int_equal(mi[0].bytes, 16);
    wb_model_info_free(mi, n);

    wb_mapping *m;
    assert_int_equal(wb_map(c, "m", 2, WB_MAP_SHARED, &m), 0);
    wb_tensor t;
    wb_map_tensor(m, 0, &t);
    assert_int_equal(((int32_t *)t.data)[3], 23);
    assert_string_equal(wb_map_meta(m, "step"), "step-2");
    assert_string_equal(wb_map_meta(m, "format"), "pt");
    assert_null(wb_map_meta(m, "absent"));
    wb_unmap(m);
    assert_int_equal(wb_map(c, "m", 9, 0, &m), WB_ENOVERSION);
    assert_non_null(strstr(wb_errmsg(c), "latest is 3"));
    assert_int_equal(wb_drop(c, "m", 2), 0);
    assert_int_equal(wb_map(c, "m", 2, 0, &m), WB_ENOVERSION);
    assert_int_equal(wb_map(c, "m", 3, 0, &m), 0);
    wb_unmap(m);

    /* A watch with a time limit returns the old version; one without
     * wakes up when another process commits. */
    uint64_t v = 0;
    assert_int_equal(wb_watch(c, "m", 3, 50, &v), 0);
    assert_int_equal(v, 3);
    assert_int_equal(wb_watch(c, "other", 0, 0, &v), 0);
    assert_int_equal(v, 0);
    pid_t pid = fork();
    if (pid == 0)
        _exit(publish_later(d));
    assert_int_equal(wb_watch(c, "m", 3, 10000, &v), 0);
    int st;
    waitpid(pid, &st, 0);
    /* publish_standard expects version 1 of "m": here it is version 4. */
    assert_int_equal(v, 4);
    wb_close(c);
}

/* Bad tensor declarations are refused with the matching code and leave
 * nothing behind. */
static void test_daemon_bad_declarations(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    int64_t shape[1] = {4};
    int64_t neg[1] = {-1};
    wb_tensor_spec dup[2] = {{"w", WB_F32, 1, shape, NULL},
                             {"w", WB_F16, 1, shape, NULL}};
    wb_tensor_spec baddt = {"w", 99, 1, shape, NULL};
    wb_tensor_spec badshape = {"w", WB_F32, 1, neg, NULL};
    wb_tensor_spec badname = {"", WB_F32, 1, shape, NULL};
    wb_publish *p;
    assert_int_equal(wb_publish_begin(c, "m", dup, 2, NULL, 0, &p), WB_EEXIST);
    assert_int_equal(wb_publish_begin(c, "m", &baddt, 1, NULL, 0, &p),
                     WB_EDTYPE);
    assert_int_equal(wb_publish_begin(c, "m", &badshape, 1, NULL, 0, &p),
                     WB_ESHAPE);
    assert_int_equal(wb_publish_begin(c, "m", &badname, 1, NULL, 0, &p),
                     WB_ENAME);
    assert_int_equal(wb_publish_begin(c, "", dup, 1, NULL, 0, &p), WB_ENAME);
    wb_kv meta = {"k", NULL};
    assert_int_equal(wb_publish_begin(c, "m", dup, 1, &meta, 1, &p) != 0, 1);
    assert_int_equal(wb_map(c, "nothing", 0, 0, NULL), WB_EINVAL);
    wait_clean(d);
    wb_close(c);
}

/* An unreachable socket is reported as a connection error naming it. */
static void test_daemon_connect_refused(void **state) {
    wb_client *c = NULL;
    assert_int_equal(wb_connect("/nonexistent/wb.sock", &c), WB_ECONNECT);
    assert_non_null(strstr(wb_errmsg(c), "/nonexistent/wb.sock"));
    wb_close(c);
}

/* A daemon that went away makes status and counters fail on a client
 * connected before (reconnecting finds nothing listening: ECONNECT, said
 * to be a reconnect), with nothing to free from the reply. */
static void test_daemon_status_after_daemon_left(void **state) {
    wbt_daemon d;
    assert_int_equal(wbt_start(&d, NULL), 0);
    wb_client *c = wbt_connect(&d);
    wb_status st;
    assert_int_equal(wb_get_status(c, &st), 0);
    assert_int_equal(wbt_stop(&d), 0);
    assert_int_equal(wb_get_status(c, &st), WB_ECONNECT);
    assert_non_null(strstr(wb_errmsg(c), "reconnecting failed"));
    wb_counter *cv = (wb_counter *)&st; /* Must come back NULL. */
    size_t n = 99;
    assert_int_equal(wb_get_counters(c, &cv, &n), WB_ECONNECT);
    assert_null(cv);
    assert_int_equal(n, 0);
    wb_close(c);
}

/* A model of 10,000 tensors publishes and maps, and every name is found. */
static void test_daemon_many_tensors(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    assert_int_equal(wbt_publish_f32(c, "wide", 10000, 3), 1);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "wide", 0, WB_MAP_SHARED, &m), 0);
    assert_int_equal(wb_map_count(m), 10000);
    for (int i = 0; i < 10000; i += 37) {
        char name[24];
        snprintf(name, sizeof(name), "t%d", i);
        wb_tensor t;
        assert_int_equal(wb_map_tensor(m, (size_t)wb_map_find(m, name), &t), 0);
        assert_true(((const float *)t.data)[2] == (float)(i * 1000 + 2));
    }
    /* The segment is a valid safetensors image. */
    const void *img;
    size_t len;
    assert_int_equal(wb_map_image(m, &img, &len), 0);
    uint64_t hlen;
    memcpy(&hlen, img, 8);
    assert_true(hlen < len);
    assert_int_equal(((const char *)img)[8], '{');
    assert_int_equal((8 + hlen) % 64, 0);
    assert_int_equal(len, 8 + hlen + 10000 * 12);
    wb_unmap(m);
    wb_close(c);
}

/* wb_publish_write() fills tensors without a mapping (in pieces, at
 * offsets), refuses bytes out of range, and the commit seals them. */
static void test_daemon_publish_write(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    int64_t shape[1] = {1000};
    wb_tensor_spec specs[2] = {{"a", WB_F32, 1, shape, NULL},
                               {"b", WB_I16, 1, shape, NULL}};
    float fa[1000];
    int16_t ib[1000];
    for (int i = 0; i < 1000; i++) {
        fa[i] = (float)i / 4;
        ib[i] = (int16_t)(i - 500);
    }
    wb_publish *p;
    assert_int_equal(wb_publish_begin(c, "w", specs, 2, NULL, 0, &p), 0);
    assert_int_equal(wb_publish_write(p, 0, fa, sizeof(fa), 0), 0);
    assert_int_equal(wb_publish_write(p, 1, ib, 600, 0), 0);
    assert_int_equal(wb_publish_write(p, 1, (char *)ib + 600, 1400, 600), 0);
    assert_int_equal(wb_publish_write(p, 1, ib, 2, 1999), WB_EINVAL);
    assert_non_null(strstr(wb_errmsg(c), "out of range"));
    assert_int_equal(wb_publish_write(p, 2, ib, 1, 0), WB_EINVAL);
    assert_int_equal(wb_publish_write(NULL, 0, ib, 1, 0), WB_EINVAL);
    assert_int_equal(wb_publish_commit(p, NULL), 0);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "w", 0, WB_MAP_SHARED, &m), 0);
    wb_tensor t;
    assert_int_equal(wb_map_tensor(m, (size_t)wb_map_find(m, "a"), &t), 0);
    assert_memory_equal(t.data, fa, sizeof(fa));
    assert_int_equal(wb_map_tensor(m, (size_t)wb_map_find(m, "b"), &t), 0);
    assert_memory_equal(t.data, ib, sizeof(ib));
    wb_unmap(m);
    wb_close(c);
}

/* wb_publish_write() after wb_publish_data() copies through the mapping
 * and returns, whatever errno held before (a stale EINTR once made it
 * retry forever). */
static void test_daemon_publish_write_after_data(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    int64_t shape[1] = {1000};
    wb_tensor_spec specs[2] = {{"a", WB_F32, 1, shape, NULL},
                               {"b", WB_F32, 1, shape, NULL}};
    float fa[1000];
    for (int i = 0; i < 1000; i++)
        fa[i] = (float)i / 8;
    wb_publish *p;
    assert_int_equal(wb_publish_begin(c, "wd", specs, 2, NULL, 0, &p), 0);
    float *b = wb_publish_data(p, 1, NULL);
    assert_non_null(b);
    memset(b, 0, sizeof(fa));
    errno = EINTR;
    assert_int_equal(wb_publish_write(p, 0, fa, sizeof(fa), 0), 0);
    errno = EINTR;
    assert_int_equal(wb_publish_write(p, 1, fa + 10, 40, 4), 0);
    assert_int_equal(wb_publish_commit(p, NULL), 0);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "wd", 0, WB_MAP_SHARED, &m), 0);
    wb_tensor t;
    assert_int_equal(wb_map_tensor(m, (size_t)wb_map_find(m, "a"), &t), 0);
    assert_memory_equal(t.data, fa, sizeof(fa));
    assert_int_equal(wb_map_tensor(m, (size_t)wb_map_find(m, "b"), &t), 0);
    assert_true(((const float *)t.data)[0] == 0.0f);
    assert_memory_equal((const char *)t.data + 4, fa + 10, 40);
    wb_unmap(m);
    wb_close(c);
}

/* Which malformed "tied" list body_tied() sends. */
static int tied_case;

/* A publish of a[2], b[2] (F32) and c[3] (F32) with a bad "tied" list. */
static void body_tied(msgpack_packer *pk) {
    msgpack_pack_map(pk, 5);
    wbt_pk_str(pk, "op");
    wbt_pk_str(pk, "publish");
    wbt_pk_str(pk, "id");
    msgpack_pack_uint64(pk, 9);
    wbt_pk_str(pk, "model");
    wbt_pk_str(pk, "t");
    wbt_pk_str(pk, "tensors");
    msgpack_pack_array(pk, 3);
    static const char *const names[3] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) {
        msgpack_pack_array(pk, 3);
        wbt_pk_str(pk, names[i]);
        wbt_pk_str(pk, "F32");
        msgpack_pack_array(pk, 1);
        msgpack_pack_uint64(pk, i < 2 ? 2 : 3);
    }
    wbt_pk_str(pk, "tied");
    static const int pairs[][2] = {
        {0, 1}, /* The stored tensor comes after its alias. */
        {2, 0}, /* Shapes differ. */
        {1, 1}, /* Tied to itself. */
        {9, 0}, /* No such tensor. */
    };
    if (tied_case == 0) {
        wbt_pk_str(pk, "b=a"); /* Not a list. */
    } else if (tied_case == 1) {
        msgpack_pack_array(pk, 1);
        msgpack_pack_array(pk, 1); /* Not a pair. */
        msgpack_pack_uint64(pk, 1);
    } else if (tied_case == 2) {
        msgpack_pack_array(pk, 2); /* Tied twice. */
        for (int k = 0; k < 2; k++) {
            msgpack_pack_array(pk, 2);
            msgpack_pack_uint64(pk, 1);
            msgpack_pack_uint64(pk, 0);
        }
    } else {
        msgpack_pack_array(pk, 1);
        msgpack_pack_array(pk, 2);
        msgpack_pack_uint64(pk, (uint64_t)pairs[tied_case - 3][0]);
        msgpack_pack_uint64(pk, (uint64_t)pairs[tied_case - 3][1]);
    }
}

/* The daemon checks ties itself: a malformed or impossible "tied" list is
 * refused with a stable code, and nothing is laid out or leaked. */
static void test_daemon_bad_ties_on_wire(void **state) {
    wbt_daemon *d = *state;
    /* A round trip first: by then the daemon has also seen the start-up
     * probe's connection close, so the count below is settled. */
    wb_client *c = wbt_connect(d);
    wb_status st;
    assert_int_equal(wb_get_status(c, &st), 0);
    int fds = wbt_fd_count(d);
    int fd = wbt_raw_connect(d);
    assert_true(fd >= 0);
    assert_int_equal(wbt_raw_hello(fd), 0);
    static const int want[] = {WB_EPROTO, WB_EPROTO, WB_EINVAL, WB_EINVAL,
                               WB_EINVAL, WB_EINVAL, WB_EINVAL};
    for (tied_case = 0; tied_case < 7; tied_case++) {
        wbt_raw_packed(fd, body_tied);
        int err = wbt_raw_reply(fd);
        if (err != want[tied_case])
            fail_msg("case %d: err %d, want %d", tied_case, err,
                     want[tied_case]);
    }
    close(fd);
    assert_int_equal(wbt_wait_fds(d, fds), fds);
    assert_int_equal(wbt_segment_count(d), 0);
    assert_int_equal(wb_get_status(c, &st), 0);
    assert_int_equal(st.memory_used, 0);
    wb_close(c);
}

/* Tied tensors are stored once and published under every name: both names
 * map to the same bytes, the image stays a valid safetensors file listing
 * the stored tensor once and the ties under WB_TIED_KEY, and a target
 * receiving both names reports the second as aliased.  Bad ties and the
 * reserved metadata key are refused. */
static void test_daemon_tied_tensors(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    int64_t mat[2] = {4, 8}, vec[1] = {8};
    wb_tensor_spec specs[3] = {{"emb", WB_F32, 2, mat, NULL},
                               {"norm", WB_F32, 1, vec, NULL},
                               {"head", WB_F32, 2, mat, "emb"}};
    wb_publish *p;
    assert_int_equal(wb_publish_begin(c, "lm", specs, 3, NULL, 0, &p), 0);
    size_t nb;
    float *emb = wb_publish_data(p, 0, &nb);
    assert_int_equal(nb, 32 * 4);
    assert_ptr_equal(wb_publish_data(p, 2, NULL), emb);
    for (int i = 0; i < 32; i++)
        emb[i] = (float)i;
    float *norm = wb_publish_data(p, 1, NULL);
    for (int i = 0; i < 8; i++)
        norm[i] = 1.0f;
    uint64_t v;
    assert_int_equal(wb_publish_commit(p, &v), 0);

    wb_model_info *info;
    size_t n;
    assert_int_equal(wb_list(c, &info, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(info[0].tensors, 3);
    assert_int_equal(info[0].bytes, (32 + 8) * 4); /* Stored once. */
    wb_model_info_free(info, n);

    wb_mapping *m;
    assert_int_equal(wb_map(c, "lm", 0, WB_MAP_SHARED, &m), 0);
    wb_tensor te, th;
    assert_int_equal(wb_map_tensor(m, (size_t)wb_map_find(m, "emb"), &te), 0);
    assert_int_equal(wb_map_tensor(m, (size_t)wb_map_find(m, "head"), &th), 0);
    assert_ptr_equal(te.data, th.data);
    assert_true(((const float *)th.data)[31] == 31.0f);
    assert_null(wb_map_meta(m, WB_TIED_KEY));
    const void *img;
    size_t len;
    assert_int_equal(wb_map_image(m, &img, &len), 0);
    wb__st_file f;
    char err[256];
    assert_int_equal(wb__st_parse_header(img, len, len, &f, err, sizeof(err)),
                     0);
    assert_int_equal(f.n, 2);
    assert_non_null(strstr((const char *)img + 8,
                           "\"" WB_TIED_KEY
                           "\":\"{\\\"head\\\":\\\"emb\\\"}\""));
    assert_int_equal(f.n_meta, 0);
    assert_int_equal(f.n_ties, 1);
    assert_string_equal(f.tie_alias[0], "head");
    assert_string_equal(f.t[f.tie_of[0]].name, "emb");
    wb__st_file_free(&f);
    wb_unmap(m);

    wb_schema *s = wb_schema_new("LM");
    wb_schema_add(s, "emb", WB_F32, 2, mat);
    wb_schema_add(s, "head", WB_F32, 2, mat);
    wb_schema_add(s, "norm", WB_F32, 1, vec);
    assert_int_equal(wb_load(c, "lm", 0, s, NULL, WB_MAP_SHARED, &m), 0);
    assert_int_equal(wb_map_keys_count(m, WB_KEYS_ALIASED), 1);
    assert_string_equal(wb_map_key(m, WB_KEYS_ALIASED, 0), "head");
    wb_unmap(m);
    wb_schema_free(s);

    /* Bad ties are refused before anything is laid out. */
    wb_tensor_spec later[2] = {{"head", WB_F32, 2, mat, "emb"},
                               {"emb", WB_F32, 2, mat, NULL}};
    wb_tensor_spec shape[2] = {{"emb", WB_F32, 2, mat, NULL},
                               {"head", WB_F32, 1, vec, "emb"}};
    wb_tensor_spec chain[3] = {{"emb", WB_F32, 2, mat, NULL},
                               {"head", WB_F32, 2, mat, "emb"},
                               {"out", WB_F32, 2, mat, "head"}};
    assert_int_equal(wb_publish_begin(c, "x", later, 2, NULL, 0, &p),
                     WB_EINVAL);
    assert_non_null(strstr(wb_errmsg(c), "not an earlier tensor"));
    assert_int_equal(wb_publish_begin(c, "x", shape, 2, NULL, 0, &p),
                     WB_EINVAL);
    assert_int_equal(wb_publish_begin(c, "x", chain, 3, NULL, 0, &p),
                     WB_EINVAL);
    wb_kv kv = {WB_TIED_KEY, "{}"};
    assert_int_equal(wb_publish_begin(c, "x", specs, 2, &kv, 1, &p), WB_EINVAL);
    assert_non_null(strstr(wb_errmsg(c), "reserved"));
    wb_close(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_daemon_publish_map_across_processes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_daemon_protocol_versions, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_daemon_readonly_and_cow, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_daemon_publisher_killed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_daemon_memory_limit, setup_small,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_daemon_no_space, setup_huge,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_daemon_garbage_frames, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_daemon_drop_while_mapped, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_daemon_commit_while_mapped_writable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_daemon_header_tampered, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_daemon_versions_metadata_watch,
                                        setup_keep_all, teardown),
        cmocka_unit_test_setup_teardown(test_daemon_bad_declarations, setup,
                                        teardown),
        cmocka_unit_test(test_daemon_connect_refused),
        cmocka_unit_test(test_daemon_status_after_daemon_left),
        cmocka_unit_test_setup_teardown(test_daemon_bad_ties_on_wire, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_daemon_publish_write, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_daemon_publish_write_after_data,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_daemon_tied_tensors, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_daemon_many_tensors, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
