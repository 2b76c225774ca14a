/* test_files.c -- Integration tests of wb_import_file(), wb_check_file(),
 * wb_export_file() and wb_export_fd() against a real wbrokerd: single
 * safetensors files, sharded checkpoints (an index and its shards), every
 * refusal through the socket, the progress callback and the atomic write.
 *
 * Files are written here by hand, byte by byte, so that the tests do not
 * trust the library's own writer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../common/identity.h"
#include "harness.h"

/* What an export of the mapped image img (len bytes) holds: the image with
 * the daemon's identity entry blanked out (common/identity.h).  Free it. */
static uint8_t *exported_image(const void *img, size_t len) {
    uint8_t *want = malloc(len);
    assert_non_null(want);
    memcpy(want, img, len);
    assert_int_equal(wb__blank_identity(want, len), 1);
    return want;
}

static int setup(void **state) {
    static const char *const extra[] = {"--memory-limit", "256M", NULL};
    return wbt_setup(state, extra);
}

static int teardown(void **state) {
    return wbt_teardown(state);
}

/* ------------------------------------------------------------ files */

/* One tensor of a hand-made file: n float32 values from base. */
typedef struct tspec {
    const char *name;
    int n;
    float base;
} tspec;

/* Writes path (in d's directory) holding the tensors of ts (F32, shape
 * [n], value base + j) and the metadata JSON text meta ("" for none). */
static void write_st(const wbt_daemon *d, const char *path, const tspec *ts,
                     size_t nt, const char *meta) {
    char header[4096] = "{", full[512];
    size_t off = 0;
    for (size_t i = 0; i < nt; i++) {
        size_t len = strlen(header);
        snprintf(header + len, sizeof(header) - len,
                 "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%d],"
                 "\"data_offsets\":[%zu,%zu]}",
                 i ? "," : "", ts[i].name, ts[i].n, off,
                 off + 4 * (size_t)ts[i].n);
        off += 4 * (size_t)ts[i].n;
    }
    size_t len = strlen(header);
    if (*meta)
        snprintf(header + len, sizeof(header) - len, "%s\"__metadata__\":%s",
                 nt ? "," : "", meta);
    strcat(header, "}");
    snprintf(full, sizeof(full), "%s/%s", d->dir, path);
    FILE *f = fopen(full, "wb");
    assert_non_null(f);
    uint64_t hl = strlen(header);
    uint8_t le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)(hl >> (8 * i));
    fwrite(le, 1, 8, f);
    fwrite(header, 1, hl, f);
    for (size_t i = 0; i < nt; i++)
        for (int j = 0; j < ts[i].n; j++) {
            float v = ts[i].base + (float)j;
            fwrite(&v, sizeof(v), 1, f);
        }
    assert_int_equal(fclose(f), 0);
}

/* Writes text into path in d's directory. */
static void write_text(const wbt_daemon *d, const char *path,
                       const char *text) {
    char full[512];
    snprintf(full, sizeof(full), "%s/%s", d->dir, path);
    FILE *f = fopen(full, "wb");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

/* The path of name in d's directory, in buf. */
static const char *in_dir(const wbt_daemon *d, const char *name, char *buf,
                          size_t len) {
    snprintf(buf, len, "%s/%s", d->dir, name);
    return buf;
}

/* Asserts that tensor name of m holds n float32 values from base. */
static void assert_tensor(const wb_mapping *m, const char *name, int n,
                          float base) {
    long i = wb_map_find(m, name);
    assert_true(i >= 0);
    wb_tensor t;
    assert_int_equal(wb_map_tensor(m, (size_t)i, &t), 0);
    assert_int_equal(t.dtype, WB_F32);
    assert_int_equal(t.ndim, 1);
    assert_int_equal(t.shape[0], n);
    for (int j = 0; j < n; j++)
        assert_true(((const float *)t.data)[j] == base + (float)j);
}

/* The value of counter name of d's daemon (0 when absent). */
static uint64_t counter(wb_client *c, const char *name) {
    wb_counter *v;
    size_t n;
    assert_int_equal(wb_get_counters(c, &v, &n), 0);
    uint64_t got = 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].name, name) == 0)
            got = v[i].value;
    wb_counters_free(v, n);
    return got;
}

/* The two shards and the index of a good sharded checkpoint in d's
 * directory: a, b in shard 1, c in shard 2 (a file name sorting first,
 * though weight_map lists it last). */
static const tspec SHARD1[] = {{"a", 3, 1.0f}, {"b", 5, 10.0f}};
static const tspec SHARD2[] = {{"c", 4, 100.0f}};
#define INDEX_OK                                                               \
    "{\"metadata\": {\"total_size\": 48}, \"weight_map\": {"                   \
    "\"a\": \"model-00002-of-00002.safetensors\", "                            \
    "\"b\": \"model-00002-of-00002.safetensors\", "                            \
    "\"c\": \"model-00001-of-00002.safetensors\"}}"

static void write_sharded(const wbt_daemon *d, const char *meta1,
                          const char *meta2) {
    write_st(d, "model-00002-of-00002.safetensors", SHARD1, 2, meta1);
    write_st(d, "model-00001-of-00002.safetensors", SHARD2, 1, meta2);
    write_text(d, "model.safetensors.index.json", INDEX_OK);
}

/* Progress calls seen by record_progress(). */
typedef struct seen {
    int calls;
    uint64_t first, last, total;
    int monotonic;
    int stop_at; /* Call number that returns WB_ESTATE, or 0. */
} seen;

static int record_progress(void *user, uint64_t done, uint64_t total) {
    seen *s = user;
    if (s->calls == 0)
        s->first = done;
    else if (done < s->last)
        s->monotonic = 0;
    s->calls++;
    s->last = done;
    s->total = total;
    return s->stop_at && s->calls == s->stop_at ? WB_ESTATE : 0;
}

/* ------------------------------------------------------------ tests */

/* A single file: every tensor, its metadata updated by the caller's, the
 * progress from 0 to the total; exported back, the same bytes. */
static void test_files_single_round_trip(void **state) {
    wbt_daemon *d = *state;
    static const tspec ts[] = {{"w", 6, 0.5f}, {"bias", 2, -3.0f}};
    write_st(d, "one.safetensors", ts, 2,
             "{\"format\": \"pt\", \"step\": \"1\"}");
    wb_client *c = wbt_connect(d);
    char path[256], out[256];
    in_dir(d, "one.safetensors", path, sizeof(path));
    wb_kv meta[] = {{"step", "2"}, {"by", "test"}};
    seen s = {.monotonic = 1};
    wb_file_info info;
    assert_int_equal(
        wb_import_file(c, path, "m", meta, 2, record_progress, &s, &info), 0);
    assert_int_equal(info.version, 1);
    assert_int_equal(info.tensors, 2);
    assert_int_equal(info.bytes, 32);
    assert_int_equal(info.files, 1);
    assert_true(s.calls >= 3 && s.monotonic);
    assert_int_equal(s.first, 0);
    assert_int_equal(s.last, 32);
    assert_int_equal(s.total, 32);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_SHARED, &m), 0);
    assert_tensor(m, "w", 6, 0.5f);
    assert_tensor(m, "bias", 2, -3.0f);
    assert_int_equal(wb_map_meta_count(m), 3);
    assert_string_equal(wb_map_meta(m, "format"), "pt");
    assert_string_equal(wb_map_meta(m, "step"), "2");
    assert_string_equal(wb_map_meta(m, "by"), "test");
    const void *img;
    size_t len;
    assert_int_equal(wb_map_image(m, &img, &len), 0);

    /* Exported: the image, byte for byte but for the daemon's identity
     * entry, in a new file of mode 0666 less the umask; then over a file of
     * mode 0640, which it keeps. */
    in_dir(d, "out.safetensors", out, sizeof(out));
    seen e = {.monotonic = 1};
    assert_int_equal(wb_export_file(c, "m", 1, out, record_progress, &e, &info),
                     0);
    assert_int_equal(info.version, 1);
    assert_int_equal(info.bytes, len);
    assert_int_equal(e.last, len);
    struct stat st;
    assert_int_equal(stat(out, &st), 0);
    assert_int_equal((size_t)st.st_size, len);
    mode_t mask = umask(0);
    umask(mask);
    assert_int_equal(st.st_mode & 0777, 0666 & ~mask);
    FILE *f = fopen(out, "rb");
    uint8_t *buf = malloc(len);
    assert_int_equal(fread(buf, 1, len, f), len);
    fclose(f);
    uint8_t *want = exported_image(img, len);
    assert_memory_equal(buf, want, len);
    free(want);
    free(buf);
    assert_int_equal(chmod(out, 0640), 0);
    assert_int_equal(wb_export_file(c, "m", 0, out, NULL, NULL, NULL), 0);
    assert_int_equal(stat(out, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);
    wb_unmap(m);

    /* The exported file imports again as the same tensors. */
    assert_int_equal(wb_import_file(c, out, "m", NULL, 0, NULL, NULL, &info),
                     0);
    assert_int_equal(info.version, 2);
    assert_int_equal(wb_map(c, "m", 2, WB_MAP_SHARED, &m), 0);
    assert_tensor(m, "w", 6, 0.5f);
    assert_string_equal(wb_map_meta(m, "by"), "test");
    wb_unmap(m);
    wb_close(c);
}

/* A sharded checkpoint, named by its index or by its directory, is one
 * version of every shard's tensors, shards in name order; the shards'
 * agreeing metadata is kept once, the index's own is not. */
static void test_files_sharded_one_version(void **state) {
    wbt_daemon *d = *state;
    write_sharded(d, "{\"format\": \"pt\"}", "{\"format\": \"pt\"}");
    wb_client *c = wbt_connect(d);
    char path[256];
    wb_file_info info;
    assert_int_equal(wb_check_file(in_dir(d, "model.safetensors.index.json",
                                          path, sizeof(path)),
                                   NULL, 0, &info, NULL, 0),
                     0);
    assert_int_equal(info.files, 2);
    assert_int_equal(info.tensors, 3);
    assert_int_equal(info.bytes, 48);
    seen s = {.monotonic = 1};
    assert_int_equal(
        wb_import_file(c, path, "sh", NULL, 0, record_progress, &s, &info), 0);
    assert_int_equal(info.version, 1);
    assert_int_equal(info.files, 2);
    assert_int_equal(info.tensors, 3);
    assert_int_equal(s.last, 48);
    assert_true(s.monotonic);
    /* The directory (with a trailing slash) finds the index. */
    char dir[256];
    snprintf(dir, sizeof(dir), "%s/", d->dir);
    assert_int_equal(wb_import_file(c, dir, "sh", NULL, 0, NULL, NULL, &info),
                     0);
    assert_int_equal(info.version, 2);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "sh", 2, WB_MAP_SHARED, &m), 0);
    assert_int_equal(wb_map_count(m), 3);
    wb_tensor t;
    wb_map_tensor(m, 0, &t);
    assert_string_equal(t.name, "c"); /* model-00001 first. */
    wb_map_tensor(m, 1, &t);
    assert_string_equal(t.name, "a");
    assert_tensor(m, "a", 3, 1.0f);
    assert_tensor(m, "b", 5, 10.0f);
    assert_tensor(m, "c", 4, 100.0f);
    assert_int_equal(wb_map_meta_count(m), 1);
    assert_string_equal(wb_map_meta(m, "format"), "pt");
    wb_unmap(m);

    /* A directory with only model.safetensors imports that file. */
    char sub[256], file[300];
    snprintf(sub, sizeof(sub), "%s/single", d->dir);
    assert_int_equal(mkdir(sub, 0755), 0);
    write_st(d, "single/model.safetensors", SHARD2, 1, "");
    assert_int_equal(wb_import_file(c, sub, "one", NULL, 0, NULL, NULL, &info),
                     0);
    assert_int_equal(info.files, 1);
    assert_int_equal(info.tensors, 1);
    /* A directory with neither is refused. */
    snprintf(file, sizeof(file), "%s/empty", d->dir);
    assert_int_equal(mkdir(file, 0755), 0);
    assert_int_equal(wb_import_file(c, file, "x", NULL, 0, NULL, NULL, NULL),
                     WB_EFORMAT);
    assert_non_null(strstr(wb_errmsg(c), "neither"));
    wb_close(c);
}

/* Shards whose metadata disagree are refused, naming the key and both
 * files, unless the caller gives the key a value, which wins. */
static void test_files_sharded_metadata_conflict(void **state) {
    wbt_daemon *d = *state;
    write_sharded(d, "{\"format\": \"pt\", \"step\": \"1\"}",
                  "{\"format\": \"pt\", \"step\": \"2\"}");
    wb_client *c = wbt_connect(d);
    char path[256];
    in_dir(d, "model.safetensors.index.json", path, sizeof(path));
    assert_int_equal(wb_import_file(c, path, "sh", NULL, 0, NULL, NULL, NULL),
                     WB_EFORMAT);
    const char *e = wb_errmsg(c);
    assert_non_null(strstr(e, "metadata 'step'"));
    assert_non_null(strstr(e, "model-00001-of-00002.safetensors"));
    assert_non_null(strstr(e, "model-00002-of-00002.safetensors"));
    char err[1024];
    assert_int_equal(wb_check_file(path, NULL, 0, NULL, err, sizeof(err)),
                     WB_EFORMAT);
    assert_string_equal(err, e);
    wb_kv meta[] = {{"step", "3"}};
    assert_int_equal(wb_check_file(path, meta, 1, NULL, err, sizeof(err)), 0);
    assert_int_equal(wb_check_file(path, NULL, 1, NULL, err, sizeof(err)),
                     WB_EINVAL);
    wb_file_info info;
    assert_int_equal(wb_import_file(c, path, "sh", meta, 1, NULL, NULL, &info),
                     0);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "sh", info.version, WB_MAP_SHARED, &m), 0);
    assert_string_equal(wb_map_meta(m, "step"), "3");
    assert_string_equal(wb_map_meta(m, "format"), "pt");
    wb_unmap(m);
    wb_close(c);
}

/* One bad index: its text, extra files to write, the code and the words
 * wb_errmsg() must hold. */
typedef struct bad_index {
    const char *index;
    const char *want[3];
    int code;
} bad_index;

#define S1 "model-00002-of-00002.safetensors"
#define S2 "model-00001-of-00002.safetensors"

static const bad_index BAD[] = {
    /* A shard outside the index's directory. */
    {"{\"weight_map\": {\"a\": \"../" S1 "\"}}",
     {"../" S1, "plain name", "'a'"},
     WB_EFORMAT},
    {"{\"weight_map\": {\"a\": \"sub/" S1 "\"}}",
     {"sub/" S1, "plain name", NULL},
     WB_EFORMAT},
    {"{\"weight_map\": {\"a\": \"\"}}", {"plain name", NULL, NULL}, WB_EFORMAT},
    {"{\"weight_map\": {\"a\": 7}}", {"not a string", NULL, NULL}, WB_EFORMAT},
    /* An entry its shard lacks. */
    {"{\"weight_map\": {\"a\": \"" S1 "\", \"b\": \"" S1 "\", \"c\": \"" S2
     "\", \"zz\": \"" S1 "\"}}",
     {"'zz'", S1, "no such tensor"},
     WB_EFORMAT},
    /* A tensor the weight_map does not list. */
    {"{\"weight_map\": {\"a\": \"" S1 "\", \"c\": \"" S2 "\"}}",
     {"'b'", S1, "does not list"},
     WB_EFORMAT},
    /* A tensor listed under another shard. */
    {"{\"weight_map\": {\"a\": \"" S1 "\", \"b\": \"" S2 "\", \"c\": \"" S2
     "\"}}",
     {"'b'", "puts in " S2, NULL},
     WB_EFORMAT},
    /* A shard that does not exist. */
    {"{\"weight_map\": {\"a\": \"" S1 "\", \"b\": \"" S1 "\", \"c\": \"" S2
     "\", \"d\": \"gone.safetensors\"}}",
     {"gone.safetensors", NULL, NULL},
     WB_ESYS},
    /* Not an index at all. */
    {"{\"weight_map\": {\"a\": ", {"not valid JSON", NULL, NULL}, WB_EFORMAT},
    {"[1, 2]", {"not a safetensors index", NULL, NULL}, WB_EFORMAT},
    {"{\"metadata\": {}}", {"weight_map", NULL, NULL}, WB_EFORMAT},
    {"{\"weight_map\": {}}", {"weight_map", NULL, NULL}, WB_EFORMAT},
    {"{\"weight_map\": {\"a\": \"x\", \"a\": \"y\"}}",
     {"not valid JSON", NULL, NULL},
     WB_EFORMAT},
};

/* Every bad index is refused by wb_check_file() without a daemon and by
 * wb_import_file() through the socket with the same code, a message
 * naming the file and the tensor, and nothing asked of the daemon:
 * nothing published, not even a publish begun. */
static void test_files_sharded_refusals(void **state) {
    wbt_daemon *d = *state;
    write_sharded(d, "", "");
    wb_client *c = wbt_connect(d);
    char path[256], err[1024];
    in_dir(d, "bad.index.json", path, sizeof(path));
    for (size_t i = 0; i < sizeof(BAD) / sizeof(BAD[0]); i++) {
        const bad_index *b = &BAD[i];
        write_text(d, "bad.index.json", b->index);
        int rc = wb_check_file(path, NULL, 0, NULL, err, sizeof(err));
        if (rc != b->code)
            fail_msg("case %zu: %d %s", i, rc, err);
        assert_int_equal(
            wb_import_file(c, path, "bad", NULL, 0, NULL, NULL, NULL), b->code);
        assert_string_equal(wb_errmsg(c), err);
        for (size_t k = 0; k < 3 && b->want[k]; k++)
            if (strstr(err, b->want[k]) == NULL)
                fail_msg("case %zu: '%s' not in: %s", i, b->want[k], err);
    }
    /* A tensor in two shards. */
    static const tspec dup[] = {{"a", 3, 1.0f}, {"c", 4, 100.0f}};
    write_st(d, S2, dup, 2, "");
    write_text(d, "bad.index.json", INDEX_OK);
    assert_int_equal(wb_import_file(c, path, "bad", NULL, 0, NULL, NULL, NULL),
                     WB_EFORMAT);
    assert_non_null(strstr(wb_errmsg(c), "'a' is in two shards"));
    /* A shard that is not safetensors names the shard. */
    write_text(d, S2, "{\"not\": \"safetensors\"}");
    assert_int_equal(wb_import_file(c, path, "bad", NULL, 0, NULL, NULL, NULL),
                     WB_EFORMAT);
    assert_non_null(strstr(wb_errmsg(c), S2 ": "));
    assert_int_equal(counter(c, "requests.publish"), 0);
    wb_model_info *mi;
    size_t n;
    assert_int_equal(wb_list(c, &mi, &n), 0);
    assert_int_equal(n, 0);
    wb_model_info_free(mi, n);
    wb_close(c);
}

/* Single files and paths that cannot be imported, and bad arguments. */
static void test_files_import_refusals(void **state) {
    wbt_daemon *d = *state;
    wb_client *c = wbt_connect(d);
    char path[256];
    assert_int_equal(
        wb_import_file(c, in_dir(d, "absent.safetensors", path, sizeof(path)),
                       "m", NULL, 0, NULL, NULL, NULL),
        WB_ESYS);
    assert_int_equal(wb_sys_errno(c), ENOENT);
    assert_non_null(strstr(wb_errmsg(c), "absent.safetensors"));
    in_dir(d, "fifo.safetensors", path, sizeof(path));
    assert_int_equal(mkfifo(path, 0600), 0);
    assert_int_equal(wb_import_file(c, path, "m", NULL, 0, NULL, NULL, NULL),
                     WB_ESYS);
    assert_non_null(strstr(wb_errmsg(c), "not a regular file"));
    write_text(d, "bad.safetensors", "\x02\0\0\0\0\0\0\0{}x");
    in_dir(d, "bad.safetensors", path, sizeof(path));
    assert_int_equal(wb_import_file(c, path, "m", NULL, 0, NULL, NULL, NULL),
                     WB_EFORMAT);
    assert_non_null(strstr(wb_errmsg(c), "bad.safetensors: "));
    static const tspec ts[] = {{"w", 2, 0.0f}};
    write_st(d, "ok.safetensors", ts, 1, "");
    in_dir(d, "ok.safetensors", path, sizeof(path));
    assert_int_equal(wb_import_file(NULL, path, "m", NULL, 0, NULL, NULL, NULL),
                     WB_EINVAL);
    assert_int_equal(wb_import_file(c, NULL, "m", NULL, 0, NULL, NULL, NULL),
                     WB_EINVAL);
    assert_int_equal(wb_import_file(c, path, NULL, NULL, 0, NULL, NULL, NULL),
                     WB_EINVAL);
    assert_int_equal(wb_import_file(c, path, "m", NULL, 1, NULL, NULL, NULL),
                     WB_EINVAL);
    wb_kv reserved[] = {{WB_TIED_KEY, "{}"}};
    assert_int_equal(
        wb_import_file(c, path, "m", reserved, 1, NULL, NULL, NULL), WB_EINVAL);
    assert_int_equal(wb_import_file(c, path, "", NULL, 0, NULL, NULL, NULL),
                     WB_ENAME);
    assert_int_equal(wb_check_file(NULL, NULL, 0, NULL, NULL, 0), WB_EINVAL);
    wb_model_info *mi;
    size_t n;
    assert_int_equal(wb_list(c, &mi, &n), 0);
    assert_int_equal(n, 0);
    wb_model_info_free(mi, n);
    wb_close(c);
}

/* A progress callback that stops an import aborts the publish and its
 * code is returned; one that stops an export leaves no temporary file and
 * the target as it was. */
static void test_files_progress_stops(void **state) {
    wbt_daemon *d = *state;
    write_sharded(d, "", "");
    wb_client *c = wbt_connect(d);
    char path[256], out[256];
    in_dir(d, "model.safetensors.index.json", path, sizeof(path));
    for (int at = 1; at <= 5; at++) {
        seen s = {.stop_at = at};
        assert_int_equal(
            wb_import_file(c, path, "sh", NULL, 0, record_progress, &s, NULL),
            WB_ESTATE);
        assert_non_null(strstr(wb_errmsg(c), "progress callback"));
    }
    wb_model_info *mi;
    size_t n;
    assert_int_equal(wb_list(c, &mi, &n), 0);
    assert_int_equal(n, 0);
    wb_model_info_free(mi, n);
    wbt_wait_clean(d);
    assert_int_equal(wbt_mem_used(d), 0);

    assert_int_equal(wb_import_file(c, path, "sh", NULL, 0, NULL, NULL, NULL),
                     0);
    in_dir(d, "out.safetensors", out, sizeof(out));
    write_text(d, "out.safetensors", "old");
    for (int at = 1; at <= 3; at++) {
        seen s = {.stop_at = at};
        assert_int_equal(
            wb_export_file(c, "sh", 0, out, record_progress, &s, NULL),
            WB_ESTATE);
        struct stat st;
        assert_int_equal(stat(out, &st), 0);
        assert_int_equal(st.st_size, 3);
    }
    /* Nothing but what the test wrote is left in the directory. */
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "ls -a %s | grep -c '\\.tmp$'", d->dir);
    FILE *p = popen(cmd, "r");
    int tmps = -1;
    assert_int_equal(fscanf(p, "%d", &tmps), 1);
    pclose(p);
    assert_int_equal(tmps, 0);
    wb_close(c);
}

/* Export refuses targets it would not replace, before asking the daemon,
 * and reports the daemon's refusals; wb_export_fd() writes the image to a
 * pipe. */
static void test_files_export_refusals_and_fd(void **state) {
    wbt_daemon *d = *state;
    static const tspec ts[] = {{"w", 4, 2.0f}};
    write_st(d, "w.safetensors", ts, 1, "");
    wb_client *c = wbt_connect(d);
    char path[256], out[256];
    in_dir(d, "w.safetensors", path, sizeof(path));
    assert_int_equal(wb_import_file(c, path, "m", NULL, 0, NULL, NULL, NULL),
                     0);
    uint64_t maps = counter(c, "requests.map");
    in_dir(d, "fifo", out, sizeof(out));
    assert_int_equal(mkfifo(out, 0600), 0);
    assert_int_equal(wb_export_file(c, "m", 0, out, NULL, NULL, NULL),
                     WB_EINVAL);
    assert_non_null(strstr(wb_errmsg(c), "a fifo, not a regular file"));
    in_dir(d, "link", out, sizeof(out));
    assert_int_equal(symlink(path, out), 0);
    assert_int_equal(wb_export_file(c, "m", 0, out, NULL, NULL, NULL),
                     WB_EINVAL);
    assert_non_null(strstr(wb_errmsg(c), "symbolic link"));
    assert_int_equal(wb_export_file(c, "m", 0, d->dir, NULL, NULL, NULL),
                     WB_EINVAL);
    assert_non_null(strstr(wb_errmsg(c), "a directory"));
    snprintf(out, sizeof(out), "%s/", d->dir);
    assert_int_equal(wb_export_file(c, "m", 0, out, NULL, NULL, NULL),
                     WB_EINVAL);
    snprintf(out, sizeof(out), "%s/no/such/dir/f", d->dir);
    assert_int_equal(wb_export_file(c, "m", 0, out, NULL, NULL, NULL), WB_ESYS);
    assert_int_equal(wb_sys_errno(c), ENOENT);
    assert_int_equal(counter(c, "requests.map"), maps);

    in_dir(d, "new.safetensors", out, sizeof(out));
    assert_int_equal(wb_export_file(c, "nope", 0, out, NULL, NULL, NULL),
                     WB_ENOMODEL);
    assert_int_equal(wb_export_file(c, "m", 7, out, NULL, NULL, NULL),
                     WB_ENOVERSION);
    assert_int_equal(access(out, F_OK), -1);
    assert_int_equal(wb_export_file(NULL, "m", 0, out, NULL, NULL, NULL),
                     WB_EINVAL);
    assert_int_equal(wb_export_file(c, NULL, 0, out, NULL, NULL, NULL),
                     WB_EINVAL);
    assert_int_equal(wb_export_fd(c, "m", 0, -1, NULL, NULL, NULL), WB_EINVAL);

    int fds[2];
    assert_int_equal(pipe(fds), 0);
    wb_file_info info;
    assert_int_equal(wb_export_fd(c, "m", 0, fds[1], NULL, NULL, &info), 0);
    close(fds[1]);
    uint8_t buf[4096];
    ssize_t got = read(fds[0], buf, sizeof(buf));
    close(fds[0]);
    assert_int_equal((size_t)got, info.bytes);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "m", 0, WB_MAP_SHARED, &m), 0);
    const void *img;
    size_t len;
    assert_int_equal(wb_map_image(m, &img, &len), 0);
    assert_int_equal(len, info.bytes);
    uint8_t *want = exported_image(img, len);
    assert_memory_equal(buf, want, len);
    free(want);
    wb_unmap(m);
    /* A descriptor that is not open is the system's error.  (Not fds[1]:
     * its number is free again, and the export's own mapping takes a
     * descriptor for its hold.) */
    assert_int_equal(wb_export_fd(c, "m", 0, INT_MAX, NULL, NULL, NULL),
                     WB_ESYS);
    assert_int_equal(wb_sys_errno(c), EBADF);
    wb_close(c);
}

/* A shard's WB_TIED_KEY entry ties its names again in the one version;
 * a tied name that another shard stores is refused. */
static void test_files_sharded_ties(void **state) {
    wbt_daemon *d = *state;
    write_sharded(d, "", "{\"wbroker.tied\": \"{\\\"head\\\": \\\"c\\\"}\"}");
    wb_client *c = wbt_connect(d);
    char path[256];
    in_dir(d, "model.safetensors.index.json", path, sizeof(path));
    wb_file_info info;
    assert_int_equal(wb_import_file(c, path, "t", NULL, 0, NULL, NULL, &info),
                     0);
    assert_int_equal(info.tensors, 3);
    wb_mapping *m;
    assert_int_equal(wb_map(c, "t", 0, WB_MAP_SHARED, &m), 0);
    assert_int_equal(wb_map_count(m), 4);
    wb_tensor h, t;
    wb_map_tensor(m, (size_t)wb_map_find(m, "head"), &h);
    wb_map_tensor(m, (size_t)wb_map_find(m, "c"), &t);
    assert_ptr_equal(h.data, t.data);
    assert_int_equal(wb_map_meta_count(m), 0);
    wb_unmap(m);
    write_sharded(d, "", "{\"wbroker.tied\": \"{\\\"a\\\": \\\"c\\\"}\"}");
    assert_int_equal(wb_import_file(c, path, "t", NULL, 0, NULL, NULL, NULL),
                     WB_EFORMAT);
    assert_non_null(strstr(wb_errmsg(c), "ties the name 'a'"));
    wb_close(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_files_single_round_trip, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_files_sharded_one_version, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_files_sharded_metadata_conflict,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_files_sharded_refusals, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_files_sharded_ties, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_files_import_refusals, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_files_progress_stops, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_files_export_refusals_and_fd,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
