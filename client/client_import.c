/* client_import.c -- libwbroker: wb_import_file(), a safetensors file or a
 * sharded checkpoint published as one version.
 *
 * Everything that can be checked without the daemon is checked first:
 * every file's header (safetensors.c), and for an index how its shards
 * fit together.  Only then is the version declared, in one publish; each
 * tensor's bytes go from its file straight into the shared segment with
 * pread() and wb_publish_write(), chunk by chunk, and any failure aborts
 * the publish.  A process killed meanwhile aborts it by closing its
 * connection, so a half-imported version is never visible. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "client_internal.h"
#include "hash.h"
#include "safetensors.h"

#define WB_IMPORT_CHUNK (8u << 20)        /* Bytes per pread(). */
#define WB_INDEX_MAX (UINT64_C(64) << 20) /* Bytes of an index file. */
#define WB_INDEX_SUFFIX ".json"           /* Names an index, not a file. */

/* One safetensors file of the import. */
typedef struct imp_file {
    char *path;    /* For messages (and opening): as given, or DIR/NAME. */
    char *name;    /* Shard name in the index (NULL for a single file). */
    int fd;        /* Open for reading, or -1. */
    wb__st_file f; /* Its parsed header. */
} imp_file;

/* One import: its files and what the publish declares. */
typedef struct imp {
    wb_client *c;      /* Where failures are recorded, or NULL. */
    char *err;         /* Where wb_check_file() records them, or NULL. */
    size_t errlen;     /* Bytes of err. */
    imp_file *files;   /* The files, in the order they are declared. */
    size_t nfiles;     /* Entries in files. */
    size_t ntensors;   /* Stored tensors over all files. */
    size_t nties;      /* Tied names over all files. */
    uint64_t bytes;    /* Tensor bytes over all files. */
    const char **keys; /* Metadata of the version (borrowed strings). */
    const char **vals; /* Values, parallel to keys. */
    size_t nmeta;      /* Entries in keys. */
} imp;

/* Records a failure in im->err and on im->c (when set), keeping errno as
 * the system code of a WB_ESYS failure, and returns code. */
static int imp_fail(imp *im, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int imp_fail(imp *im, int code, const char *fmt, ...) {
    int e = errno;
    char msg[WB_CLIENT_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (im->err != NULL && im->errlen > 0)
        snprintf(im->err, im->errlen, "%s", msg);
    errno = e;
    if (im->c != NULL)
        wb__cl_fail(im->c, code, "%s", msg);
    errno = e;
    return code;
}

static void imp_free(imp *im) {
    for (size_t i = 0; i < im->nfiles; i++) {
        imp_file *f = &im->files[i];
        if (f->fd >= 0)
            close(f->fd);
        wb__st_file_free(&f->f);
        free(f->path);
        free(f->name);
    }
    free(im->files);
    free(im->keys);
    free(im->vals);
}

/* A copy of "dir/name", or of name alone when dir is NULL. */
static char *join_path(const char *dir, size_t dlen, const char *name) {
    size_t n = strlen(name);
    char *s = malloc(dlen + 1 + n + 1);
    if (s == NULL)
        return NULL;
    if (dir != NULL) {
        memcpy(s, dir, dlen);
        if (dlen == 0 || dir[dlen - 1] != '/')
            s[dlen++] = '/';
        memcpy(s + dlen, name, n + 1);
    } else {
        memcpy(s, name, n + 1);
    }
    return s;
}

/* Records that path is not a regular file (WB_ESYS, with EISDIR for a
 * directory and EINVAL otherwise as its errno) and returns the code. */
static int not_regular(imp *im, const char *path, mode_t mode) {
    errno = S_ISDIR(mode) ? EISDIR : EINVAL;
    return imp_fail(im, WB_ESYS, "%s: not a regular file", path);
}

/* Opens f->path (at dfd when f->name is set) and parses its header.
 * Returns 0, or records the failure on im->c. */
static int file_open(imp *im, imp_file *f, int dfd) {
    struct stat st;
    const char *at = f->name ? f->name : f->path;
    int base = f->name ? dfd : AT_FDCWD;
    /* Refuse a fifo or a device before open() could block on it. */
    if (fstatat(base, at, &st, 0) != 0)
        return imp_fail(im, WB_ESYS, "%s: %s", f->path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return not_regular(im, f->path, st.st_mode);
    f->fd = openat(base, at, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (f->fd < 0)
        return imp_fail(im, WB_ESYS, "%s: %s", f->path, strerror(errno));
    char err[WB_CLIENT_ERRMSG_MAX / 2] = "";
    int rc = wb__st_read_file_header(f->fd, &f->f, err, sizeof(err));
    if (rc)
        return imp_fail(im, rc, "%s: %s", f->path, err);
    posix_fadvise(f->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    return 0;
}

/* 1 if s (len bytes) is a plain file name: not empty, no '/', no "..",
 * no NUL, at most NAME_MAX bytes. */
static int plain_name(const char *s, size_t len) {
    return len > 0 && len <= NAME_MAX && memchr(s, '/', len) == NULL &&
           memchr(s, '\0', len) == NULL && strstr(s, "..") == NULL;
}

/* Orders shards by name, which is their order in save_pretrained's
 * numbering (model-00001-of-00003.safetensors, ...). */
static int cmp_shard(const void *a, const void *b) {
    const imp_file *x = a, *y = b;
    return strcmp(x->name, y->name);
}

/* Reads the whole index file at path into a NUL-terminated buffer.
 * Returns 0 with *out (free it), or records the failure. */
static int index_read(imp *im, const char *path, char **out) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return imp_fail(im, WB_ESYS, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return imp_fail(im, WB_ESYS, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return not_regular(im, path, st.st_mode);
    }
    if ((uint64_t)st.st_size > WB_INDEX_MAX) {
        close(fd);
        return imp_fail(im, WB_EFORMAT,
                        "%s: index of %lld bytes exceeds the limit of "
                        "%llu",
                        path, (long long)st.st_size,
                        (unsigned long long)WB_INDEX_MAX);
    }
    size_t size = (size_t)st.st_size, done = 0;
    char *buf = malloc(size + 1);
    if (buf == NULL) {
        close(fd);
        return imp_fail(im, WB_ENOMEM, "%s: out of memory", path);
    }
    while (done < size) {
        ssize_t r = pread(fd, buf + done, size - done, (off_t)done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : 0;
            free(buf);
            close(fd);
            return imp_fail(im, WB_EIO, "%s: %s", path,
                            e ? strerror(e) : "file shrank");
        }
        done += (size_t)r;
    }
    close(fd);
    buf[size] = '\0';
    *out = buf;
    return 0;
}

/* Makes im->files the shards that the weight_map wm of the index at path
 * names, sorted by name, each opened in dfd and parsed.  Returns 0 or
 * records the failure. */
static int index_shards(imp *im, const char *path, json_t *wm, int dfd) {
    const char *slash = strrchr(path, '/');
    const char *dir = slash ? path : NULL;
    size_t dlen = slash ? (slash == path ? 1 : (size_t)(slash - path)) : 0;
    wb__htab seen = {0};
    size_t cap = json_object_size(wm);
    im->files = calloc(cap, sizeof(*im->files));
    if (im->files == NULL || wb__ht_init(&seen, cap))
        return imp_fail(im, WB_ENOMEM, "%s: out of memory", path);
    const char *key;
    json_t *v;
    int rc = 0;
    json_object_foreach(wm, key, v) {
        if (!json_is_string(v) ||
            !plain_name(json_string_value(v), json_string_length(v))) {
            rc = imp_fail(im, WB_EFORMAT,
                          "%s: weight_map puts tensor '%.200s' in %s, "
                          "which is not the plain name of a file in the "
                          "index's directory (no '/', no '..')",
                          path, key,
                          json_is_string(v) ? json_string_value(v)
                                            : "something not a string");
            break;
        }
        const char *name = json_string_value(v);
        rc = wb__ht_put(&seen, name, strlen(name), im->nfiles, NULL);
        if (rc < 0) {
            rc = imp_fail(im, WB_ENOMEM, "%s: out of memory", path);
            break;
        }
        if (rc == 0)
            continue;
        rc = 0;
        imp_file *f = &im->files[im->nfiles++];
        f->fd = -1;
        f->name = strdup(name);
        f->path = f->name ? join_path(dir, dlen, name) : NULL;
        if (f->path == NULL) {
            rc = imp_fail(im, WB_ENOMEM, "%s: out of memory", path);
            break;
        }
    }
    wb__ht_free(&seen);
    if (rc)
        return rc;
    qsort(im->files, im->nfiles, sizeof(*im->files), cmp_shard);
    for (size_t i = 0; i < im->nfiles; i++)
        if ((rc = file_open(im, &im->files[i], dfd)))
            return rc;
    return 0;
}

/* Checks that the shards and the weight_map wm of the index at path agree
 * (see wb_import_file()) and that no name is both stored and tied, or
 * tied twice, across shards.  Returns 0 or records the failure. */
static int index_check(imp *im, const char *path, json_t *wm) {
    wb__htab names = {0};
    size_t total = 0;
    for (size_t i = 0; i < im->nfiles; i++)
        total += im->files[i].f.n + im->files[i].f.n_ties;
    if (wb__ht_init(&names, total))
        return imp_fail(im, WB_ENOMEM, "%s: out of memory", path);
    int rc = 0;
    for (size_t i = 0; i < im->nfiles && rc == 0; i++) {
        const imp_file *f = &im->files[i];
        for (size_t j = 0; j < f->f.n && rc == 0; j++) {
            const char *t = f->f.t[j].name;
            size_t old;
            rc = wb__ht_put(&names, t, strlen(t), i, &old);
            if (rc < 0) {
                rc = imp_fail(im, WB_ENOMEM, "out of memory");
                break;
            }
            if (rc == 0) {
                rc = imp_fail(im, WB_EFORMAT,
                              "tensor '%.200s' is in two shards, %s and "
                              "%s",
                              t, im->files[old].path, f->path);
                break;
            }
            rc = 0;
        }
    }
    for (size_t i = 0; i < im->nfiles && rc == 0; i++) {
        const imp_file *f = &im->files[i];
        for (size_t j = 0; j < f->f.n && rc == 0; j++) {
            const char *t = f->f.t[j].name;
            json_t *where = json_object_get(wm, t);
            if (where == NULL)
                rc = imp_fail(im, WB_EFORMAT,
                              "%s holds tensor '%.200s', which the "
                              "weight_map of %s does not list",
                              f->path, t, path);
            else if (strcmp(json_string_value(where), f->name) != 0)
                rc = imp_fail(im, WB_EFORMAT,
                              "%s holds tensor '%.200s', which the "
                              "weight_map of %s puts in %s",
                              f->path, t, path, json_string_value(where));
        }
    }
    const char *key;
    json_t *v;
    if (rc == 0)
        json_object_foreach(wm, key, v) {
            if (wb__ht_find(&names, key, strlen(key)) == NULL) {
                rc = imp_fail(im, WB_EFORMAT,
                              "%s: weight_map puts tensor '%.200s' in "
                              "%s, which has no such tensor",
                              path, key, json_string_value(v));
                break;
            }
        }
    for (size_t i = 0; i < im->nfiles && rc == 0; i++) {
        const imp_file *f = &im->files[i];
        for (size_t j = 0; j < f->f.n_ties && rc == 0; j++) {
            const char *a = f->f.tie_alias[j];
            rc = wb__ht_put(&names, a, strlen(a), i, NULL);
            if (rc < 0)
                rc = imp_fail(im, WB_ENOMEM, "out of memory");
            else if (rc == 0)
                rc = imp_fail(im, WB_EFORMAT,
                              "%s: metadata '%s' ties the name '%.200s', "
                              "which another shard stores or ties",
                              f->path, WB_TIED_KEY, a);
            else
                rc = 0;
        }
    }
    wb__ht_free(&names);
    return rc;
}

/* Reads, checks and opens the shards of the index at path (the index
 * file itself).  Returns 0 or records the failure. */
static int index_open(imp *im, const char *path) {
    char *text = NULL;
    int rc = index_read(im, path, &text);
    if (rc)
        return rc;
    json_error_t jerr;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (root == NULL)
        return imp_fail(im, WB_EFORMAT,
                        "%s: not valid JSON: %s at line %d, column %d", path,
                        jerr.text, jerr.line, jerr.column);
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(root) || !json_is_object(wm) ||
        json_object_size(wm) == 0) {
        json_decref(root);
        return imp_fail(im, WB_EFORMAT,
                        "%s: not a safetensors index (a JSON object "
                        "whose \"weight_map\" maps each tensor to its "
                        "shard file)",
                        path);
    }
    /* The shards live in the index's directory, opened once so that every
     * shard is looked up in the same one. */
    const char *slash = strrchr(path, '/');
    char *dir =
        slash ? strndup(path, slash == path ? 1 : slash - path) : strdup(".");
    int dfd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (dir == NULL)
        rc = imp_fail(im, WB_ENOMEM, "out of memory");
    else if (dfd < 0)
        rc = imp_fail(im, WB_ESYS, "%s: directory %s: %s", path, dir,
                      strerror(errno));
    free(dir);
    if (rc == 0)
        rc = index_shards(im, path, wm, dfd);
    if (rc == 0)
        rc = index_check(im, path, wm);
    if (dfd >= 0)
        close(dfd);
    json_decref(root);
    return rc;
}

/* Opens the single safetensors file at path as im's only file.  Returns 0
 * or records the failure. */
static int single_open(imp *im, const char *path) {
    im->files = calloc(1, sizeof(*im->files));
    if (im->files == NULL || (im->files[0].path = strdup(path)) == NULL)
        return imp_fail(im, WB_ENOMEM, "out of memory");
    im->files[0].fd = -1;
    im->nfiles = 1;
    return file_open(im, &im->files[0], AT_FDCWD);
}

/* Opens what path names: a directory (its index, else its single file),
 * an index, or a safetensors file.  Returns 0 or records the failure. */
static int imp_open(imp *im, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0)
        return imp_fail(im, WB_ESYS, "%s: %s", path, strerror(errno));
    size_t n = strlen(path);
    if (!S_ISDIR(st.st_mode)) {
        size_t sl = strlen(WB_INDEX_SUFFIX);
        if (n >= sl && strcmp(path + n - sl, WB_INDEX_SUFFIX) == 0)
            return index_open(im, path);
        return single_open(im, path);
    }
    while (n > 1 && path[n - 1] == '/')
        n--;
    const char *names[] = {WB_ST_INDEX_NAME, WB_ST_FILE_NAME};
    for (size_t i = 0; i < 2; i++) {
        char *p = join_path(path, n, names[i]);
        if (p == NULL)
            return imp_fail(im, WB_ENOMEM, "out of memory");
        int rc = 0;
        if (stat(p, &st) == 0)
            rc = i == 0 ? index_open(im, p) : single_open(im, p);
        else if (errno != ENOENT)
            rc = imp_fail(im, WB_ESYS, "%s: %s", p, strerror(errno));
        else
            rc = 1; /* Not there: the next name. */
        free(p);
        if (rc != 1)
            return rc;
    }
    return imp_fail(im, WB_EFORMAT, "%s: a directory holding neither %s nor %s",
                    path, WB_ST_INDEX_NAME, WB_ST_FILE_NAME);
}

/* Index of key among the n_meta entries of meta, or SIZE_MAX. */
static size_t meta_find(const wb_kv *meta, size_t n_meta, const char *key) {
    for (size_t i = 0; i < n_meta; i++)
        if (meta[i].key != NULL && strcmp(meta[i].key, key) == 0)
            return i;
    return SIZE_MAX;
}

/* Builds the version's metadata: the files' entries, merged (a key the
 * caller sets is theirs; otherwise shards must agree on a key's value),
 * then the caller's, which replace entries of the same key.  Returns 0 or
 * records the failure. */
static int imp_meta(imp *im, const wb_kv *meta, size_t n_meta) {
    size_t cap = n_meta;
    for (size_t i = 0; i < im->nfiles; i++)
        cap += im->files[i].f.n_meta;
    im->keys = calloc(cap ? cap : 1, sizeof(*im->keys));
    im->vals = calloc(cap ? cap : 1, sizeof(*im->vals));
    size_t *origin = calloc(cap ? cap : 1, sizeof(*origin)); /* File of each. */
    wb__htab keys = {0};
    if (im->keys == NULL || im->vals == NULL || origin == NULL ||
        wb__ht_init(&keys, cap)) {
        free(origin);
        return imp_fail(im, WB_ENOMEM, "out of memory");
    }
    int rc = 0;
    for (size_t i = 0; i < n_meta && rc == 0; i++)
        if (meta[i].key == NULL || meta[i].value == NULL)
            rc = imp_fail(im, WB_EINVAL,
                          "metadata entry %zu: NULL key or value", i);
    for (size_t i = 0; i < im->nfiles && rc == 0; i++) {
        const wb__st_file *f = &im->files[i].f;
        for (size_t j = 0; j < f->n_meta && rc == 0; j++) {
            const char *k = f->meta_keys[j], *v = f->meta_vals[j];
            if (meta_find(meta, n_meta, k) != SIZE_MAX)
                continue;
            size_t old;
            rc = wb__ht_put(&keys, k, strlen(k), im->nmeta, &old);
            if (rc < 0) {
                rc = imp_fail(im, WB_ENOMEM, "out of memory");
            } else if (rc == 1) {
                origin[im->nmeta] = i;
                im->keys[im->nmeta] = k;
                im->vals[im->nmeta++] = v;
                rc = 0;
            } else if (strcmp(im->vals[old], v) != 0) {
                rc = imp_fail(im, WB_EFORMAT,
                              "metadata '%.100s' is '%.100s' in %s but "
                              "'%.100s' in %s (give the import a value "
                              "of its own for it)",
                              k, im->vals[old], im->files[origin[old]].path, v,
                              im->files[i].path);
            } else {
                rc = 0;
            }
        }
    }
    wb__ht_free(&keys);
    free(origin);
    for (size_t i = 0; i < n_meta && rc == 0; i++) {
        size_t at = 0;
        while (at < im->nmeta && strcmp(im->keys[at], meta[i].key) != 0)
            at++;
        im->keys[at] = meta[i].key;
        im->vals[at] = meta[i].value;
        if (at == im->nmeta)
            im->nmeta++;
    }
    return rc;
}

/* Copies len bytes at offset off of file f into tensor i of p, in chunks
 * through buf, reporting each to progress.  Returns 0, or records the
 * failure (p is left for the caller to abort). */
static int copy_tensor(imp *im, const imp_file *f, wb_publish *p, size_t i,
                       uint8_t *buf, uint64_t off, uint64_t len, uint64_t *done,
                       wb_progress_fn progress, void *user) {
    uint64_t at = 0;
    while (at < len) {
        size_t want =
            len - at < WB_IMPORT_CHUNK ? (size_t)(len - at) : WB_IMPORT_CHUNK;
        ssize_t n = pread(f->fd, buf, want, (off_t)(off + at));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return imp_fail(im, WB_EIO, "%s: %s", f->path, strerror(errno));
        if (n == 0)
            return imp_fail(im, WB_EIO,
                            "%s: unexpected end of file at byte %llu", f->path,
                            (unsigned long long)(off + at));
        int rc = wb_publish_write(p, i, buf, (size_t)n, (size_t)at);
        if (rc)
            return rc;
        at += (uint64_t)n;
        *done += (uint64_t)n;
        if (progress && (rc = progress(user, *done, im->bytes)))
            return imp_fail(im, rc, "stopped by the progress callback");
    }
    return 0;
}

/* Copies every tensor of every file into p, then gives progress its last
 * word.  Returns 0, or records the failure (p is left to abort). */
static int imp_fill(imp *im, wb_publish *p, wb_progress_fn progress,
                    void *user) {
    uint8_t *buf = malloc(WB_IMPORT_CHUNK);
    if (buf == NULL)
        return imp_fail(im, WB_ENOMEM, "out of memory");
    uint64_t done = 0;
    int rc = progress ? progress(user, 0, im->bytes) : 0;
    if (rc)
        rc = imp_fail(im, rc, "stopped by the progress callback");
    /* The parser checked that each tensor's bytes match its shape, which
     * is what the daemon laid out; wb_publish_write() refuses any more. */
    size_t slot = 0;
    for (size_t i = 0; i < im->nfiles && rc == 0; i++) {
        const imp_file *f = &im->files[i];
        for (size_t j = 0; j < f->f.n && rc == 0; j++, slot++) {
            const wb__st_tensor *t = &f->f.t[j];
            rc = copy_tensor(im, f, p, slot, buf, f->f.data_start + t->begin,
                             t->end - t->begin, &done, progress, user);
        }
    }
    free(buf);
    if (rc == 0 && progress && (rc = progress(user, done, im->bytes)))
        rc = imp_fail(im, rc, "stopped by the progress callback");
    return rc;
}

/* Declares every file's tensors, then their tied names, and the metadata
 * in one publish, fills it and commits.  Returns 0 with the version in
 * *version, or records the failure with nothing published. */
static int imp_publish(imp *im, const char *model, wb_progress_fn progress,
                       void *user, uint64_t *version) {
    size_t n = im->ntensors + im->nties;
    wb_tensor_spec *specs = calloc(n ? n : 1, sizeof(*specs));
    wb_kv *kv = calloc(im->nmeta ? im->nmeta : 1, sizeof(*kv));
    if (specs == NULL || kv == NULL) {
        free(specs);
        free(kv);
        return imp_fail(im, WB_ENOMEM, "declaring %zu tensors", n);
    }
    size_t s = 0, a = im->ntensors;
    for (size_t i = 0; i < im->nfiles; i++) {
        const wb__st_file *f = &im->files[i].f;
        for (size_t j = 0; j < f->n; j++, s++) {
            specs[s].name = f->t[j].name;
            specs[s].dtype = f->t[j].dtype;
            specs[s].ndim = f->t[j].ndim;
            specs[s].shape = f->t[j].shape;
        }
        for (size_t j = 0; j < f->n_ties; j++, a++) {
            const wb__st_tensor *t = &f->t[f->tie_of[j]];
            specs[a].name = f->tie_alias[j];
            specs[a].dtype = t->dtype;
            specs[a].ndim = t->ndim;
            specs[a].shape = t->shape;
            specs[a].tied_to = t->name;
        }
    }
    assert(s == im->ntensors && a == n);
    for (size_t i = 0; i < im->nmeta; i++) {
        kv[i].key = im->keys[i];
        kv[i].value = im->vals[i];
    }
    wb_publish *p = NULL;
    int rc = wb_publish_begin(im->c, model, specs, n, kv, im->nmeta, &p);
    free(specs);
    free(kv);
    if (rc)
        return rc;
    if ((rc = imp_fill(im, p, progress, user))) {
        wb_publish_abort(p);
        return rc;
    }
    return wb_publish_commit(p, version);
}

/* Opens, validates and totals what path names, with the metadata it
 * would publish.  Returns 0 or records the failure. */
static int imp_prepare(imp *im, const char *path, const wb_kv *meta,
                       size_t n_meta) {
    int rc = imp_open(im, path);
    for (size_t i = 0; i < im->nfiles && rc == 0; i++) {
        im->ntensors += im->files[i].f.n;
        im->nties += im->files[i].f.n_ties;
        im->bytes += im->files[i].f.data_len;
    }
    return rc ? rc : imp_meta(im, meta, n_meta);
}

/* Fills *info (when not NULL) from im. */
static void imp_info(const imp *im, uint64_t version, wb_file_info *info) {
    if (info == NULL)
        return;
    info->version = version;
    info->tensors = im->ntensors;
    info->bytes = im->bytes;
    info->files = im->nfiles;
}

int wb_check_file(const char *path, const wb_kv *meta, size_t n_meta,
                  wb_file_info *info, char *err, size_t errlen) {
    imp im = {.err = err, .errlen = errlen};
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (path == NULL || (n_meta && meta == NULL))
        return imp_fail(&im, WB_EINVAL, "missing argument");
    int rc = imp_prepare(&im, path, meta, n_meta);
    if (rc == 0)
        imp_info(&im, 0, info);
    imp_free(&im);
    return rc;
}

int wb_import_file(wb_client *c, const char *path, const char *model,
                   const wb_kv *meta, size_t n_meta, wb_progress_fn progress,
                   void *user, wb_file_info *info) {
    if (c == NULL || path == NULL || model == NULL || (n_meta && meta == NULL))
        return wb__cl_fail(c, WB_EINVAL, "missing argument");
    imp im = {.c = c};
    int rc = imp_prepare(&im, path, meta, n_meta);
    uint64_t version = 0;
    if (rc == 0)
        rc = imp_publish(&im, model, progress, user, &version);
    if (rc == 0)
        imp_info(&im, version, info);
    imp_free(&im);
    return rc;
}
