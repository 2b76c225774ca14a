/* test_persist.c -- wbrokerd --persist DIR: versions survive a SIGKILL,
 * bit for bit, with their numbers, pins, owners and digests; files that
 * fail are set aside; a full disk is counted, never fatal. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <cmocka.h>

#include "../../client/safetensors.h"
#include "harness.h"
#include "wbroker.h"

/* A persistence directory of the test's own, removed afterwards. */
static void make_dir(char *dir, size_t n) {
    snprintf(dir, n, "/tmp/wbt-persist-XXXXXX");
    assert_non_null(mkdtemp(dir));
}

static void rm_rf(const char *dir) {
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void start(wbt_daemon *d, const char *dir, const char *keep) {
    const char *extra[] = {"--persist", dir, "--keep", keep, NULL};
    assert_int_equal(wbt_start(d, extra), 0);
}

/* Kills the daemon with SIGKILL (no chance to tidy up) and cleans its
 * temporary directory. */
static void kill_daemon(wbt_daemon *d) {
    kill(d->pid, SIGKILL);
    int st;
    assert_int_equal(waitpid(d->pid, &st, 0), d->pid);
    d->pid = 0;
    wbt_stop(d);
}

/* Waits until every queued write is done and written reaches n. */
static void wait_written(const wbt_daemon *d, uint64_t n) {
    for (int i = 0; i < 1000; i++) {
        if (wbt_counter(d, "persist.backlog") == 0 &&
            wbt_counter(d, "persist.written") +
                    wbt_counter(d, "persist.failed") >=
                n)
            return;
        wbt_sleep_ms(10);
    }
    fail_msg("persistence backlog never drained");
}

static int count_files(const char *dir, const char *suffix);

/* Waits up to 5 s for dir to hold n files ending with suffix. */
static int wait_files(const char *dir, const char *suffix, int n) {
    int k = -1;
    for (int i = 0; i < 500 && (k = count_files(dir, suffix)) != n; i++)
        wbt_sleep_ms(10);
    return k;
}

/* Files in dir whose names end with suffix. */
static int count_files(const char *dir, const char *suffix) {
    DIR *dd = opendir(dir);
    assert_non_null(dd);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dd)) != NULL) {
        size_t l = strlen(e->d_name), k = strlen(suffix);
        n += l > k && strcmp(e->d_name + l - k, suffix) == 0;
    }
    closedir(dd);
    return n;
}

/* Path of the version file of model@number in dir (found through its
 * header's identity), into path; 0 or -1. */
static int find_file(const char *dir, const char *model, uint64_t number,
                     char *path, size_t n) {
    DIR *dd = opendir(dir);
    assert_non_null(dd);
    struct dirent *e;
    char want[256];
    snprintf(want, sizeof(want), "\"model\":\"%s\",", model);
    char num[64];
    snprintf(num, sizeof(num), "\"number\":%llu,", (unsigned long long)number);
    int found = -1;
    while (found && (e = readdir(dd)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l < 12 || strcmp(e->d_name + l - 12, ".safetensors") != 0)
            continue;
        snprintf(path, n, "%s/%s", dir, e->d_name);
        int fd = open(path, O_RDONLY);
        wb__st_file f;
        if (fd >= 0 && wb__st_read_file_header(fd, &f, NULL, 0) == 0) {
            if (f.version && strstr(f.version, want) && strstr(f.version, num))
                found = 0;
            wb__st_file_free(&f);
        }
        if (fd >= 0)
            close(fd);
    }
    closedir(dd);
    return found;
}

/* A version's image bytes and what list said of its model. */
typedef struct snap {
    void *image;     /* Copy of the image. */
    size_t len;      /* Its bytes. */
    char digest[33]; /* Digest from list (latest versions only). */
} snap;

static void take(wb_client *c, const char *model, uint64_t version, snap *s) {
    wb_mapping *m;
    assert_int_equal(wb_map(c, model, version, WB_MAP_SHARED, &m), 0);
    const void *img;
    assert_int_equal(wb_map_image(m, &img, &s->len), 0);
    s->image = malloc(s->len);
    memcpy(s->image, img, s->len);
    wb_unmap(m);
}

/* The digest list reports for model, and its entry. */
static wb_model_info find_info(wb_client *c, const char *model, char *digest) {
    wb_model_info *v, out;
    size_t n;
    memset(&out, 0, sizeof(out));
    assert_int_equal(wb_list(c, &v, &n), 0);
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].name, model) == 0) {
            out = v[i];
            memcpy(digest, v[i].digest, 33);
        }
    out.name = NULL;
    wb_model_info_free(v, n);
    return out;
}

/* XXH3-128 of bytes, in the daemon's hex form. */
static void xxh_hex(const void *p, size_t n, char *out) {
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits(p, n));
    for (int i = 0; i < 16; i++)
        sprintf(out + 2 * i, "%02x", c.digest[i]);
}

/* Publishes "lm": emb, norm, head tied to emb, and a BOOL mask, with
 * metadata, the values depending on seed. */
static uint64_t publish_lm(wb_client *c, const char *model, int seed) {
    int64_t mat[2] = {4, 8}, vec[1] = {8};
    wb_tensor_spec specs[4] = {{"norm", WB_F32, 1, vec, NULL},
                               {"emb", WB_F32, 2, mat, NULL},
                               {"mask", WB_BOOL, 1, vec, NULL},
                               {"head", WB_F32, 2, mat, "emb"}};
    char val[32];
    snprintf(val, sizeof(val), "seed %d", seed);
    wb_kv meta[2] = {{"format", "pt"}, {"note", val}};
    wb_publish *p;
    assert_int_equal(wb_publish_begin(c, model, specs, 4, meta, 2, &p), 0);
    float *emb = wb_publish_data(p, 1, NULL);
    for (int i = 0; i < 32; i++)
        emb[i] = (float)(i * seed);
    float *norm = wb_publish_data(p, 0, NULL);
    for (int i = 0; i < 8; i++)
        norm[i] = (float)seed;
    uint8_t *mask = wb_publish_data(p, 2, NULL);
    for (int i = 0; i < 8; i++)
        mask[i] = (uint8_t)((i + seed) & 1);
    uint64_t v;
    assert_int_equal(wb_publish_commit(p, &v), 0);
    return v;
}

/* Everything committed comes back after a SIGKILL: bytes, numbers, pins,
 * owners, ties, metadata, published order and digests (equal to XXH3-128
 * of the image); new commits go on numbering; dropped and retired
 * versions lose their files and stay gone. */
static void test_persist_roundtrip(void **state) {
    char dir[64];
    make_dir(dir, sizeof(dir));
    wbt_daemon d;
    start(&d, dir, "2");
    wb_client *c = wbt_connect(&d);
    assert_int_equal(publish_lm(c, "lm", 1), 1);
    assert_int_equal(publish_lm(c, "lm", 2), 2);
    assert_int_equal(wb_pin(c, "lm", 1), 0);
    assert_int_equal(publish_lm(c, "lm", 3), 3); /* Keeps 1 (pinned), 2, 3. */
    assert_int_equal(wbt_publish_f32(c, "plain", 3, 1000), 1);
    assert_int_equal(wbt_publish_f32(c, "plain", 3, 1000), 2);
    assert_int_equal(wbt_publish_f32(c, "plain", 3, 1000), 3); /* Retires 1. */
    assert_int_equal(wbt_publish_f32(c, "gone", 1, 10), 1);
    assert_int_equal(wbt_publish_f32(c, "gone", 1, 10), 2);
    assert_int_equal(wb_drop(c, "gone", 0), 0);
    assert_int_equal(wbt_publish_f32(c, "dropone", 1, 10), 1);
    assert_int_equal(wbt_publish_f32(c, "dropone", 1, 10), 2);
    assert_int_equal(wb_drop(c, "dropone", 2), 0);
    wait_written(&d, 6);
    assert_int_equal(wbt_counter(&d, "persist.failed"), 0);
    /* lm 1-3, plain 2-3, dropone 1. */
    assert_int_equal(wait_files(dir, ".safetensors", 6), 6);
    char path[512];
    assert_int_equal(find_file(dir, "plain", 1, path, sizeof(path)), -1);
    assert_int_equal(find_file(dir, "plain", 2, path, sizeof(path)), 0);

    snap lm[3], plain[2];
    for (int i = 0; i < 3; i++)
        take(c, "lm", (uint64_t)i + 1, &lm[i]);
    for (int i = 0; i < 2; i++)
        take(c, "plain", (uint64_t)i + 2, &plain[i]);
    char dlm[33], dplain[33], want[33];
    wb_model_info ilm = find_info(c, "lm", dlm);
    find_info(c, "plain", dplain);
    xxh_hex(lm[2].image, lm[2].len, want);
    assert_string_equal(dlm, want);
    xxh_hex(plain[1].image, plain[1].len, want);
    assert_string_equal(dplain, want);
    assert_int_equal(ilm.pinned, 1);
    /* The identity's key is the daemon's alone. */
    int64_t one[1] = {1};
    wb_tensor_spec spec = {"x", WB_F32, 1, one, NULL};
    wb_kv reserved = {WB_VERSION_KEY, "{}"};
    wb_publish *p;
    assert_int_equal(wb_publish_begin(c, "lm", &spec, 1, &reserved, 1, &p),
                     WB_EINVAL);
    assert_non_null(strstr(wb_errmsg(c), "reserved"));
    wb_close(c);
    kill_daemon(&d);

    start(&d, dir, "2");
    c = wbt_connect(&d);
    char got[33];
    wb_model_info i2 = find_info(c, "lm", got);
    assert_string_equal(got, dlm);
    assert_int_equal(i2.latest, 3);
    assert_int_equal(i2.nversions, 3);
    assert_int_equal(i2.pinned, 1);
    assert_int_equal(i2.owner, (uint32_t)getuid());
    find_info(c, "plain", got);
    assert_string_equal(got, dplain);
    for (int i = 0; i < 3; i++) {
        snap s;
        take(c, "lm", (uint64_t)i + 1, &s);
        assert_int_equal(s.len, lm[i].len);
        assert_memory_equal(s.image, lm[i].image, s.len);
        free(s.image);
        free(lm[i].image);
    }
    for (int i = 0; i < 2; i++) {
        snap s;
        take(c, "plain", (uint64_t)i + 2, &s);
        assert_int_equal(s.len, plain[i].len);
        assert_memory_equal(s.image, plain[i].image, s.len);
        free(s.image);
        free(plain[i].image);
    }
    wb_mapping *m;
    assert_int_equal(wb_map(c, "plain", 1, WB_MAP_SHARED, &m), WB_ENOVERSION);
    assert_int_equal(wb_map(c, "dropone", 2, WB_MAP_SHARED, &m), WB_ENOVERSION);
    assert_int_equal(wb_map(c, "gone", 0, WB_MAP_SHARED, &m), WB_ENOMODEL);
    /* Ties, metadata and published order, as published. */
    assert_int_equal(wb_map(c, "lm", 2, WB_MAP_SHARED, &m), 0);
    const char *order[] = {"norm", "emb", "mask", "head"};
    for (size_t i = 0; i < 4; i++) {
        wb_tensor t;
        assert_int_equal(wb_map_tensor(m, i, &t), 0);
        assert_string_equal(t.name, order[i]);
    }
    wb_tensor te, th;
    assert_int_equal(wb_map_tensor(m, 1, &te), 0);
    assert_int_equal(wb_map_tensor(m, 3, &th), 0);
    assert_ptr_equal(te.data, th.data);
    assert_string_equal(wb_map_meta(m, "note"), "seed 2");
    assert_null(wb_map_meta(m, WB_VERSION_KEY));
    assert_int_equal(wb_map_meta_count(m), 2);
    wb_unmap(m);
    /* Numbers go on, also for names whose versions all went. */
    assert_int_equal(publish_lm(c, "lm", 4), 4);
    assert_int_equal(wbt_publish_f32(c, "gone", 1, 10), 3);
    assert_int_equal(wbt_publish_f32(c, "dropone", 1, 10), 3);
    assert_int_equal(wbt_counter(&d, "persist.recovered"), 6);
    assert_int_equal(wbt_counter(&d, "persist.corrupt"), 0);
    const char *needle[] = {"recovered 6 versions", NULL};
    assert_true(wbt_log_grep(&d, 0, needle) >= 1);
    wb_close(c);
    /* A clean stop leaves every file for the next start. */
    wait_written(&d, 3);
    assert_int_equal(wbt_stop(&d), 0);
    start(&d, dir, "2");
    c = wbt_connect(&d);
    i2 = find_info(c, "lm", got);
    assert_int_equal(i2.latest, 4);
    assert_int_equal(i2.nversions, 3); /* 1 (pinned), 3 and 4. */
    assert_int_equal(i2.pinned, 1);
    wb_close(c);
    assert_int_equal(wbt_stop(&d), 0);
    rm_rf(dir);
}

/* Overwrites len bytes at off of path. */
static void poke(const char *path, off_t off, const void *p, size_t len) {
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, p, len, off), (ssize_t)len);
    close(fd);
}

static void write_file(const char *dir, const char *name, const void *p,
                       size_t len) {
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, p, len), (ssize_t)len);
    close(fd);
}

/* A truncated file, a flipped data byte (the digest catches it), a
 * safetensors file the daemon did not write and a random file are set
 * aside into DIR/corrupt/ and counted; a leftover temporary file is
 * deleted; the good versions are served. */
static void test_persist_bad_files(void **state) {
    char dir[64];
    make_dir(dir, sizeof(dir));
    wbt_daemon d;
    start(&d, dir, "0");
    wb_client *c = wbt_connect(&d);
    for (int i = 0; i < 4; i++)
        assert_int_equal(wbt_publish_f32(c, "m", 2, 4096), (uint64_t)i + 1);
    wait_written(&d, 4);
    wb_close(c);
    kill_daemon(&d);

    char p1[512], p2[512];
    assert_int_equal(find_file(dir, "m", 1, p1, sizeof(p1)), 0);
    assert_int_equal(find_file(dir, "m", 2, p2, sizeof(p2)), 0);
    assert_int_equal(truncate(p1, 1000), 0);
    struct stat st;
    assert_int_equal(stat(p2, &st), 0);
    uint8_t b = 0x5a;
    poke(p2, st.st_size - 3, &b, 1);
    static const char foreign[] = "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],"
                                  "\"data_offsets\":[0,4]}}";
    uint8_t buf[256] = {0};
    buf[0] = (uint8_t)strlen(foreign);
    memcpy(buf + 8, foreign, strlen(foreign));
    write_file(dir, "00000000000000aa.safetensors", buf,
               8 + strlen(foreign) + 4);
    write_file(dir, "notes.txt", "hello", 5);
    write_file(dir, "00000000000000bb.safetensors.tmp", "partial", 7);

    start(&d, dir, "0");
    c = wbt_connect(&d);
    wb_model_info *v;
    size_t n;
    assert_int_equal(wb_list(c, &v, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(v[0].nversions, 2);
    assert_int_equal(v[0].latest, 4);
    wb_model_info_free(v, n);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "m", 2, WB_MAP_SHARED, &m), WB_ENOVERSION);
    assert_int_equal(wb_map(c, "m", 3, WB_MAP_SHARED, &m), 0);
    wb_tensor t;
    assert_int_equal(wb_map_tensor(m, 1, &t), 0);
    assert_true(((const float *)t.data)[4095] == 1000.0f + 4095.0f);
    wb_unmap(m);
    assert_int_equal(wbt_counter(&d, "persist.corrupt"), 4);
    char cdir[128];
    snprintf(cdir, sizeof(cdir), "%s/corrupt", dir);
    assert_int_equal(count_files(cdir, ".safetensors"), 3);
    assert_int_equal(count_files(cdir, ".txt"), 1);
    assert_int_equal(count_files(dir, ".tmp"), 0);
    const char *needle[] = {"digest mismatch", NULL};
    assert_true(wbt_log_grep(&d, 0, needle) >= 1);
    /* Numbers go on past what was set aside. */
    assert_int_equal(wbt_publish_f32(c, "m", 2, 16), 5);
    wb_close(c);
    assert_int_equal(wbt_stop(&d), 0);
    rm_rf(dir);
}

/* A SIGKILL in the middle of a large write leaves the versions written
 * before loadable, and no half file is ever loaded. */
static void test_persist_kill_during_write(void **state) {
    char dir[64];
    make_dir(dir, sizeof(dir));
    wbt_daemon d;
    start(&d, dir, "0");
    wb_client *c = wbt_connect(&d);
    assert_int_equal(wbt_publish_f32(c, "small", 2, 1000), 1);
    wait_written(&d, 1);
    snap before;
    take(c, "small", 1, &before);
    /* 256 MiB, killed as soon as it is committed. */
    assert_int_equal(wbt_publish_f32(c, "big", 4, 16u << 20), 1);
    kill_daemon(&d);
    wb_close(c);

    start(&d, dir, "0");
    c = wbt_connect(&d);
    snap s;
    take(c, "small", 1, &s);
    assert_int_equal(s.len, before.len);
    assert_memory_equal(s.image, before.image, s.len);
    free(s.image);
    free(before.image);
    assert_int_equal(wbt_counter(&d, "persist.corrupt"), 0);
    assert_int_equal(count_files(dir, ".tmp"), 0);
    /* The big one is either whole or absent. */
    wb_mapping *m;
    int rc = wb_map(c, "big", 1, WB_MAP_SHARED, &m);
    assert_true(rc == 0 || rc == WB_ENOMODEL);
    if (rc == 0) {
        wb_tensor t;
        assert_int_equal(wb_map_tensor(m, 3, &t), 0);
        assert_true(((const float *)t.data)[12345] == 3000.0f + 12345.0f);
        wb_unmap(m);
    }
    wb_close(c);
    assert_int_equal(wbt_stop(&d), 0);
    rm_rf(dir);
}

/* A full disk (a 4 MiB tmpfs) is a counted failure; commits go on. */
static void test_persist_enospc(void **state) {
    char dir[64];
    make_dir(dir, sizeof(dir));
    if (mount("tmpfs", dir, "tmpfs", 0, "size=4m") != 0) {
        rm_rf(dir);
        skip(); /* Not root, or no mount in this container. */
    }
    wbt_daemon d;
    start(&d, dir, "0");
    wb_client *c = wbt_connect(&d);
    assert_int_equal(wbt_publish_f32(c, "fits", 1, 1000), 1);
    assert_int_equal(wbt_publish_f32(c, "big", 2, 1u << 20), 1); /* 8 MiB. */
    assert_int_equal(wbt_publish_f32(c, "fits", 1, 1000), 2);
    wait_written(&d, 3);
    assert_int_equal(wbt_counter(&d, "persist.failed"), 1);
    assert_int_equal(wbt_counter(&d, "persist.written"), 2);
    assert_int_equal(count_files(dir, ".tmp"), 0);
    const char *needle[] = {"No space left", NULL};
    assert_true(wbt_log_grep(&d, 0, needle) >= 1);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "big", 1, WB_MAP_SHARED, &m), 0);
    wb_unmap(m);
    wb_close(c);
    assert_int_equal(wbt_stop(&d), 0);
    assert_int_equal(umount(dir), 0);
    rm_rf(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_persist_roundtrip),
        cmocka_unit_test(test_persist_bad_files),
        cmocka_unit_test(test_persist_kill_during_write),
        cmocka_unit_test(test_persist_enospc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
