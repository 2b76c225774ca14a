/* test_segment.c -- Unit tests of daemon/segment.c and of how the daemon
 * maps sealed segments.
 *
 * Linux before 6.7 refuses to mmap a write-sealed memfd through a writable
 * descriptor, even read-only; newer kernels allow it, so the refusal cannot
 * happen on this machine.  This binary is linked with -Wl,--wrap=mmap and
 * its mmap behaves like the old kernels: a shared mapping of a write-sealed
 * file through a descriptor opened for writing fails with EPERM.  The tests
 * then run the daemon's real code paths (the read-only map helper, a whole
 * dtype conversion job on a libuv loop) and check that they still work and
 * never asked for such a mapping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uv.h>

#include "../../daemon/convjob.h"
#include "../../daemon/registry.h"
#include "../../daemon/segment.h"
#include "wbroker.h"

void *__real_mmap(void *addr, size_t len, int prot, int flags, int fd,
                  off_t off);
void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd,
                  off_t off);

static int refused; /* Mappings the old-kernel rule refused. */

/* mmap as Linux < 6.7 does it for sealed memfds. */
void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd,
                  off_t off) {
    if (fd >= 0 && (flags & MAP_SHARED)) {
        int seals = fcntl(fd, F_GET_SEALS);
        int fl = fcntl(fd, F_GETFL);
        if (seals >= 0 && (seals & F_SEAL_WRITE) && fl >= 0 &&
            (fl & O_ACCMODE) != O_RDONLY) {
            refused++;
            errno = EPERM;
            return MAP_FAILED;
        }
    }
    return __real_mmap(addr, len, prot, flags, fd, off);
}

/* Makes a sealed segment holding n float32 values i * 0.5 at offset 0. */
static void make_sealed_f32(wb__segment *s, size_t n) {
    char err[256];
    assert_int_equal(wb__seg_create("wbroker:test", wb__seg_round(n * 4), s,
                                    err, sizeof(err)),
                     0);
    wb__seg_register(s);
    float *buf = malloc(n * 4);
    assert_non_null(buf);
    for (size_t i = 0; i < n; i++)
        buf[i] = (float)i * 0.5f;
    assert_int_equal(pwrite(s->fd, buf, n * 4, 0), (ssize_t)(n * 4));
    free(buf);
    assert_int_equal(wb__seg_seal(s), 0);
}

/* The wrapper really refuses what old kernels refuse. */
static void test_segment_wrapper_refuses_writable_fd(void **state) {
    wb__segment s;
    make_sealed_f32(&s, 1024);
    refused = 0;
    void *p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, s.fd, 0);
    assert_true(p == MAP_FAILED);
    assert_int_equal(refused, 1);
    wb__seg_close(&s);
}

/* wb__seg_map_ro maps a sealed segment through a read-only descriptor. */
static void test_segment_map_ro_sealed(void **state) {
    wb__segment s;
    make_sealed_f32(&s, 1024);
    refused = 0;
    const float *p = wb__seg_map_ro(&s, 0, 4096, 1);
    assert_non_null(p);
    assert_true(p[3] == 1.5f);
    munmap((void *)p, 4096);
    assert_int_equal(refused, 0);
    assert_true(wb__seg_allocated(&s) >= 4096);
    assert_true(wb__seg_allocated_total() >= 4096);
    wb__seg_close(&s);
    assert_int_equal(wb__seg_allocated_total(), 0);
}

/* An abandoned segment is truncated to nothing and sealed, even while a
 * writable mapping of it exists: a descriptor kept elsewhere pins no
 * memory and can get none back. */
static void test_segment_release_punches_and_seals(void **state) {
    wb__segment s;
    char err[256];
    assert_int_equal(
        wb__seg_create("wbroker:test", 4u << 20, &s, err, sizeof(err)), 0);
    wb__seg_register(&s);
    int kept = wb__seg_open_rw(&s);
    assert_true(kept >= 0);
    char junk[4096];
    memset(junk, 7, sizeof(junk));
    assert_int_equal(write(kept, junk, sizeof(junk)), (ssize_t)sizeof(junk));
    void *w =
        __real_mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, kept, 0);
    assert_true(w != MAP_FAILED);
    assert_int_equal(wb__seg_release(&s), 0);
    munmap(w, 4096);
    assert_int_equal(wb__seg_allocated(&s), 0);
    assert_true(pwrite(kept, junk, sizeof(junk), 0) < 0);
    assert_true(fallocate(kept, 0, 0, 1 << 20) < 0);
    assert_int_equal(ftruncate(kept, 1 << 20), -1);
    assert_int_equal(wb__seg_allocated(&s), 0);
    close(kept);
    wb__seg_close(&s);
}

static int conv_done_calls;
static void on_conv_done(wb__conv_waiter *w) {
    conv_done_calls++;
}

/* A whole conversion job (segment on the thread pool, parts, seal) works
 * when sealed files cannot be mapped through writable descriptors. */
static void test_segment_conversion_maps_sealed_read_only(void **state) {
    enum { N = 1 << 20 };
    wb__reg.mem_limit = 1ull << 30;
    wb__model *m = wb__model_acquire("conv-model");
    assert_non_null(m);
    wb__version *v = wb__version_new();
    assert_non_null(v);
    make_sealed_f32(&v->seg, N);
    int64_t shape[1] = {N};
    v->n = 1;
    v->t = calloc(1, sizeof(wb__tinfo));
    v->offset = calloc(1, sizeof(uint64_t));
    v->nbytes = calloc(1, sizeof(uint64_t));
    v->t[0].name = strdup("w");
    v->t[0].dtype = WB_F32;
    v->t[0].ndim = 1;
    memcpy(v->t[0].shape, shape, sizeof(shape));
    v->nbytes[0] = (uint64_t)N * 4;
    wb__version_commit(m, v);
    wb__model_unref(m);

    wb__resolved res = {.target = "w", .src = 0, .dtype = WB_F16, .cast = 1};
    wb__derived *conv[1] = {NULL};
    wb__conv_waiter w = {.done = on_conv_done};
    char err[256];
    wb__quota q = {0, UINT64_MAX, 0};
    refused = 0;
    assert_int_equal(
        wb__conv_prepare(v, &res, 1, conv, &w, &q, err, sizeof(err)), 0);
    assert_int_equal(w.waiting, 1);
    uv_run(uv_default_loop(), UV_RUN_DEFAULT);
    assert_int_equal(conv_done_calls, 1);
    assert_int_equal(w.failed, 0);
    assert_int_equal(refused, 0);
    assert_non_null(conv[0]);
    const uint16_t *h = wb__seg_map_ro(&conv[0]->ds->seg, 0, N * 2, 0);
    assert_non_null(h);
    assert_int_equal(h[3], 0x3e00); /* 1.5 in float16. */
    munmap((void *)h, N * 2);
    wb__registry_clear();
    assert_int_equal(wb__reg.mem_used, 0);
    assert_int_equal(wb__seg_allocated_total(), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_segment_wrapper_refuses_writable_fd),
        cmocka_unit_test(test_segment_map_ro_sealed),
        cmocka_unit_test(test_segment_release_punches_and_seals),
        cmocka_unit_test(test_segment_conversion_maps_sealed_read_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
