/* safetensors.c -- Parses and validates safetensors file headers.
 *
 * The checks follow the safetensors specification and its reference
 * implementation: the JSON must be an object without duplicate keys, each
 * tensor's byte range must match its dtype and shape exactly, and the
 * ranges, sorted, must tile the data buffer with neither holes nor overlaps
 * up to the end of the file.  Unknown fields inside a tensor entry are
 * ignored, as the reference implementation does. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "safetensors.h"

/* Writes a formatted reason into err (if any) and returns code. */
static int st_fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int st_fail(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Reads a little-endian u64. */
static uint64_t st_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Orders tensors by (begin, end); names break ties so that the order does
 * not depend on qsort. */
static int st_cmp_offsets(const void *a, const void *b) {
    const wb__st_tensor *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Fills *t from the JSON entry v of tensor name (name_len bytes).  Returns
 * 0, WB_EFORMAT with err set, or WB_ENOMEM. */
static int st_parse_tensor(const char *name, size_t name_len, json_t *v,
                           wb__st_tensor *t, char *err, size_t errlen) {
    if (name_len == 0)
        return st_fail(err, errlen, WB_EFORMAT, "empty tensor name");
    if (name_len > WB_MAX_NAME)
        return st_fail(err, errlen, WB_EFORMAT,
                       "tensor name of %zu bytes exceeds %d: '%.40s...'",
                       name_len, WB_MAX_NAME, name);
    if (memchr(name, '\0', name_len) != NULL)
        return st_fail(err, errlen, WB_EFORMAT,
                       "tensor name '%s' contains a NUL byte", name);
    if (!json_is_object(v))
        return st_fail(err, errlen, WB_EFORMAT,
                       "tensor '%s': entry is not an object", name);

    json_t *dtype = json_object_get(v, "dtype");
    if (!json_is_string(dtype))
        return st_fail(err, errlen, WB_EFORMAT,
                       "tensor '%s': \"dtype\" missing or not a string", name);
    t->dtype = wb_dtype_from_name(json_string_value(dtype));
    if (t->dtype < 0)
        return st_fail(err, errlen, WB_EFORMAT,
                       "tensor '%s': unknown dtype '%.32s'", name,
                       json_string_value(dtype));

    json_t *shape = json_object_get(v, "shape");
    if (!json_is_array(shape))
        return st_fail(err, errlen, WB_EFORMAT,
                       "tensor '%s': \"shape\" missing or not an array", name);
    if (json_array_size(shape) > WB_MAX_DIMS)
        return st_fail(err, errlen, WB_EFORMAT,
                       "tensor '%s': %zu dimensions exceed %d", name,
                       json_array_size(shape), WB_MAX_DIMS);
    t->ndim = (int)json_array_size(shape);
    uint64_t elems = 1;
    int overflow = 0;
    for (int d = 0; d < t->ndim; d++) {
        json_t *s = json_array_get(shape, (size_t)d);
        if (!json_is_integer(s) || json_integer_value(s) < 0)
            return st_fail(err, errlen, WB_EFORMAT,
                           "tensor '%s': shape[%d] is not a non-negative "
                           "integer",
                           name, d);
        t->shape[d] = json_integer_value(s);
        overflow |=
            __builtin_mul_overflow(elems, (uint64_t)t->shape[d], &elems);
    }

    json_t *offs = json_object_get(v, "data_offsets");
    if (!json_is_array(offs) || json_array_size(offs) != 2)
        return st_fail(err, errlen, WB_EFORMAT,
                       "tensor '%s': \"data_offsets\" is not an array of two "
                       "integers",
                       name);
    json_t *b = json_array_get(offs, 0), *e = json_array_get(offs, 1);
    if (!json_is_integer(b) || !json_is_integer(e) ||
        json_integer_value(b) < 0 || json_integer_value(e) < 0)
        return st_fail(err, errlen, WB_EFORMAT,
                       "tensor '%s': data_offsets are not two non-negative "
                       "integers",
                       name);
    t->begin = (uint64_t)json_integer_value(b);
    t->end = (uint64_t)json_integer_value(e);
    if (t->begin > t->end)
        return st_fail(err, errlen, WB_EFORMAT,
                       "tensor '%s': data_offsets [%llu, %llu] end before "
                       "they begin",
                       name, (unsigned long long)t->begin,
                       (unsigned long long)t->end);

    uint64_t nbytes;
    overflow |= __builtin_mul_overflow(elems, (uint64_t)wb_dtype_size(t->dtype),
                                       &nbytes);
    if (overflow)
        return st_fail(err, errlen, WB_EFORMAT,
                       "tensor '%s': shape's byte size overflows 64 bits",
                       name);
    if (t->end - t->begin != nbytes)
        return st_fail(err, errlen, WB_EFORMAT,
                       "tensor '%s': data_offsets span %llu bytes but %s "
                       "shape needs %llu",
                       name, (unsigned long long)(t->end - t->begin),
                       wb_dtype_name(t->dtype), (unsigned long long)nbytes);

    t->name = malloc(name_len + 1);
    if (t->name == NULL)
        return st_fail(err, errlen, WB_ENOMEM, "out of memory");
    memcpy(t->name, name, name_len + 1);
    return 0;
}

/* Copies the "__metadata__" object m into f.  Returns 0, WB_EFORMAT with
 * err set, or WB_ENOMEM. */
static int st_parse_metadata(json_t *m, wb__st_file *f, char *err,
                             size_t errlen) {
    const char *key;
    size_t key_len;
    json_t *v;
    if (!json_is_object(m))
        return st_fail(err, errlen, WB_EFORMAT,
                       "\"" WB_ST_METADATA_KEY "\" is not an object");
    size_t n = json_object_size(m);
    f->meta_keys = calloc(n ? n : 1, sizeof *f->meta_keys);
    f->meta_vals = calloc(n ? n : 1, sizeof *f->meta_vals);
    if (f->meta_keys == NULL || f->meta_vals == NULL)
        return st_fail(err, errlen, WB_ENOMEM, "out of memory");
    json_object_keylen_foreach(m, key, key_len, v) {
        if (!json_is_string(v))
            return st_fail(err, errlen, WB_EFORMAT,
                           "metadata value of '%.64s' is not a string", key);
        if (memchr(key, '\0', key_len) != NULL)
            return st_fail(err, errlen, WB_EFORMAT,
                           "metadata key '%s' contains a NUL byte", key);
        size_t vlen = json_string_length(v);
        const char *val = json_string_value(v);
        if (memchr(val, '\0', vlen) != NULL)
            return st_fail(err, errlen, WB_EFORMAT,
                           "metadata value of '%.64s' contains a NUL byte",
                           key);
        char *k = strdup(key), *s = strdup(val);
        if (k == NULL || s == NULL) {
            free(k);
            free(s);
            return st_fail(err, errlen, WB_ENOMEM, "out of memory");
        }
        f->meta_keys[f->n_meta] = k;
        f->meta_vals[f->n_meta] = s;
        f->n_meta++;
    }
    return 0;
}

/* Index of the tensor named name in f, or SIZE_MAX. */
static size_t st_find(const wb__st_file *f, const char *name) {
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->t[i].name, name) == 0)
            return i;
    return SIZE_MAX;
}

/* Turns the WB_TIED_KEY metadata entry, if any, into f's ties: a JSON
 * object mapping each alias (not itself a tensor) to a stored tensor.  The
 * entry leaves the metadata.  Returns 0 or WB_EFORMAT / WB_ENOMEM. */
static int st_parse_ties(wb__st_file *f, char *err, size_t errlen) {
    size_t m = 0;
    while (m < f->n_meta && strcmp(f->meta_keys[m], WB_TIED_KEY) != 0)
        m++;
    if (m == f->n_meta)
        return 0;
    json_error_t jerr;
    json_t *o = json_loads(f->meta_vals[m], JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(o)) {
        json_decref(o);
        return st_fail(err, errlen, WB_EFORMAT,
                       "metadata '%s' is not a JSON object of names",
                       WB_TIED_KEY);
    }
    size_t n = json_object_size(o);
    f->tie_alias = calloc(n ? n : 1, sizeof *f->tie_alias);
    f->tie_of = calloc(n ? n : 1, sizeof *f->tie_of);
    if (f->tie_alias == NULL || f->tie_of == NULL) {
        json_decref(o);
        return st_fail(err, errlen, WB_ENOMEM, "out of memory");
    }
    const char *alias;
    json_t *v;
    int rc = 0;
    json_object_foreach(o, alias, v) {
        size_t of =
            json_is_string(v) ? st_find(f, json_string_value(v)) : SIZE_MAX;
        if (of == SIZE_MAX || st_find(f, alias) != SIZE_MAX) {
            rc = st_fail(err, errlen, WB_EFORMAT,
                         "metadata '%s': '%.64s' must tie a new name to a "
                         "stored tensor",
                         WB_TIED_KEY, alias);
            break;
        }
        if ((f->tie_alias[f->n_ties] = strdup(alias)) == NULL) {
            rc = st_fail(err, errlen, WB_ENOMEM, "out of memory");
            break;
        }
        f->tie_of[f->n_ties++] = of;
    }
    json_decref(o);
    if (rc == 0) {
        free(f->meta_keys[m]);
        free(f->meta_vals[m]);
        f->n_meta--;
        memmove(f->meta_keys + m, f->meta_keys + m + 1,
                (f->n_meta - m) * sizeof *f->meta_keys);
        memmove(f->meta_vals + m, f->meta_vals + m + 1,
                (f->n_meta - m) * sizeof *f->meta_vals);
    }
    return rc;
}

/* Takes the WB_VERSION_KEY metadata entry, if any, out of the metadata
 * into f->version: the daemon's identity of the image it came from, which
 * only the daemon reads back (an importer publishes a new version). */
static void st_take_version(wb__st_file *f) {
    size_t m = 0;
    while (m < f->n_meta && strcmp(f->meta_keys[m], WB_VERSION_KEY) != 0)
        m++;
    if (m == f->n_meta)
        return;
    free(f->meta_keys[m]);
    f->version = f->meta_vals[m];
    f->n_meta--;
    memmove(f->meta_keys + m, f->meta_keys + m + 1,
            (f->n_meta - m) * sizeof *f->meta_keys);
    memmove(f->meta_vals + m, f->meta_vals + m + 1,
            (f->n_meta - m) * sizeof *f->meta_vals);
}

/* Parses the JSON root into f (whose header fields are set) and checks the
 * tensors' layout.  Returns 0 or an error with err set; on error f may hold
 * partial allocations for the caller to free. */
static int st_parse_root(json_t *root, wb__st_file *f, char *err,
                         size_t errlen) {
    const char *key;
    size_t key_len;
    json_t *v;
    int rc;

    if (!json_is_object(root))
        return st_fail(err, errlen, WB_EFORMAT, "header JSON is not an object");
    size_t cap = json_object_size(root);
    f->t = calloc(cap ? cap : 1, sizeof *f->t);
    if (f->t == NULL)
        return st_fail(err, errlen, WB_ENOMEM, "out of memory");
    json_object_keylen_foreach(root, key, key_len, v) {
        if (key_len == strlen(WB_ST_METADATA_KEY) &&
            strcmp(key, WB_ST_METADATA_KEY) == 0) {
            rc = st_parse_metadata(v, f, err, errlen);
        } else {
            rc = st_parse_tensor(key, key_len, v, &f->t[f->n], err, errlen);
            if (rc == 0)
                f->n++;
        }
        if (rc != 0)
            return rc;
    }

    qsort(f->t, f->n, sizeof *f->t, st_cmp_offsets);
    uint64_t pos = 0;
    for (size_t i = 0; i < f->n; i++) {
        const wb__st_tensor *t = &f->t[i];
        if (t->begin < pos)
            return st_fail(err, errlen, WB_EFORMAT,
                           "tensor '%s' at [%llu, %llu) overlaps '%s'", t->name,
                           (unsigned long long)t->begin,
                           (unsigned long long)t->end, f->t[i - 1].name);
        if (t->begin > pos)
            return st_fail(err, errlen, WB_EFORMAT,
                           "hole in the data buffer: [%llu, %llu) before "
                           "tensor '%s' belongs to no tensor",
                           (unsigned long long)pos,
                           (unsigned long long)t->begin, t->name);
        pos = t->end;
    }
    if (pos != f->data_len)
        return st_fail(err, errlen, WB_EFORMAT,
                       "tensors cover %llu bytes but the data buffer (file "
                       "size - %llu) has %llu",
                       (unsigned long long)pos,
                       (unsigned long long)f->data_start,
                       (unsigned long long)f->data_len);
    rc = st_parse_ties(f, err, errlen);
    if (rc == 0)
        st_take_version(f);
    return rc;
}

/* What buf (len >= 8 bytes, the start of a file) looks like when it is a
 * format people mistake for safetensors, or NULL: a zip archive is what
 * torch.save writes since 1.6, a pickle what it wrote before. */
static const char *st_other_format(const uint8_t *buf, size_t len) {
    if (len >= 4 && memcmp(buf, "PK\x03\x04", 4) == 0)
        return "a torch.save archive (zip)";
    if (len >= 2 && buf[0] == 0x80 && buf[1] >= 2 && buf[1] <= 5)
        return "a pickle, as the legacy torch.save writes";
    if (len >= 6 && memcmp(buf, "\x93NUMPY", 6) == 0)
        return "a NumPy .npy file";
    if (len >= 8 && memcmp(buf, "\x89HDF\r\n\x1a\n", 8) == 0)
        return "an HDF5 file";
    return NULL;
}

int wb__st_parse_header(const uint8_t *buf, size_t len, uint64_t file_size,
                        wb__st_file *out, char *err, size_t errlen) {
    json_error_t jerr;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (out == NULL || (buf == NULL && len > 0))
        return st_fail(err, errlen, WB_EINVAL, "invalid argument");
    memset(out, 0, sizeof *out);
    if (file_size < WB_ST_PREFIX_LEN)
        return st_fail(err, errlen, WB_EFORMAT,
                       "file of %llu bytes is shorter than the 8-byte header "
                       "length",
                       (unsigned long long)file_size);
    if (len < WB_ST_PREFIX_LEN)
        return st_fail(err, errlen, WB_EINVAL,
                       "buffer holds %zu bytes, less than the header length",
                       len);
    uint64_t n = st_le64(buf);
    const char *kind = st_other_format(buf, len);
    if (kind != NULL &&
        (n > WB_ST_MAX_HEADER || n > file_size - 8 || n < 2 ||
         n > len - WB_ST_PREFIX_LEN || buf[WB_ST_PREFIX_LEN] != '{'))
        return st_fail(err, errlen, WB_EFORMAT,
                       "not a safetensors file (it looks like %s); convert "
                       "it first, e.g. safetensors.torch.save_file("
                       "torch.load(path), out)",
                       kind);
    if (n > WB_ST_MAX_HEADER)
        return st_fail(err, errlen, WB_EFORMAT,
                       "header length %llu exceeds the limit of %llu bytes",
                       (unsigned long long)n,
                       (unsigned long long)WB_ST_MAX_HEADER);
    if (n > file_size - WB_ST_PREFIX_LEN)
        return st_fail(err, errlen, WB_EFORMAT,
                       "header length %llu runs past the end of the %llu-byte "
                       "file",
                       (unsigned long long)n, (unsigned long long)file_size);
    if (n > len - WB_ST_PREFIX_LEN)
        return st_fail(err, errlen, WB_EINVAL,
                       "buffer holds %zu bytes, the header needs %llu", len,
                       (unsigned long long)(n + WB_ST_PREFIX_LEN));
    /* The reference implementation insists on '{' first, no whitespace. */
    if (n == 0 || buf[WB_ST_PREFIX_LEN] != '{')
        return st_fail(err, errlen, WB_EFORMAT,
                       "JSON header does not start with '{'");

    json_t *root = json_loadb((const char *)buf + WB_ST_PREFIX_LEN, (size_t)n,
                              JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return st_fail(err, errlen, WB_EFORMAT,
                       "header is not valid JSON: %s at byte %d", jerr.text,
                       jerr.position);
    out->header_len = n;
    out->data_start = WB_ST_PREFIX_LEN + n;
    out->data_len = file_size - out->data_start;
    int rc = st_parse_root(root, out, err, errlen);
    json_decref(root);
    if (rc != 0)
        wb__st_file_free(out);
    return rc;
}

/* Reads exactly len bytes at offset off of fd.  Returns 0, or -1 with
 * errno set (0 for a short file). */
static int st_pread_full(int fd, void *buf, size_t len, off_t off) {
    size_t done = 0;
    while (done < len) {
        ssize_t r =
            pread(fd, (char *)buf + done, len - done, off + (off_t)done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = 0;
            return -1;
        }
        done += (size_t)r;
    }
    return 0;
}

int wb__st_read_file_header(int fd, wb__st_file *out, char *err,
                            size_t errlen) {
    struct stat st;
    uint8_t prefix[WB_ST_PREFIX_LEN];
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (out == NULL)
        return st_fail(err, errlen, WB_EINVAL, "invalid argument");
    memset(out, 0, sizeof *out);
    if (fstat(fd, &st) != 0)
        return st_fail(err, errlen, WB_EIO, "fstat: %s", strerror(errno));
    if (!S_ISREG(st.st_mode))
        return st_fail(err, errlen, WB_EIO, "not a regular file");
    uint64_t size = (uint64_t)st.st_size;
    if (size < WB_ST_PREFIX_LEN)
        return wb__st_parse_header(NULL, 0, size, out, err, errlen);
    if (st_pread_full(fd, prefix, sizeof prefix, 0) != 0)
        return st_fail(err, errlen, WB_EIO, "reading the header length: %s",
                       errno ? strerror(errno) : "file shrank");
    uint64_t n = st_le64(prefix);
    if (n > WB_ST_MAX_HEADER || n > size - WB_ST_PREFIX_LEN)
        return wb__st_parse_header(prefix, sizeof prefix, size, out, err,
                                   errlen);
    size_t total = WB_ST_PREFIX_LEN + (size_t)n;
    uint8_t *buf = malloc(total);
    if (buf == NULL)
        return st_fail(err, errlen, WB_ENOMEM, "out of memory");
    memcpy(buf, prefix, sizeof prefix);
    if (st_pread_full(fd, buf + WB_ST_PREFIX_LEN, (size_t)n,
                      WB_ST_PREFIX_LEN) != 0) {
        int e = errno;
        free(buf);
        return st_fail(err, errlen, WB_EIO, "reading the header: %s",
                       e ? strerror(e) : "file shrank");
    }
    int rc = wb__st_parse_header(buf, total, size, out, err, errlen);
    free(buf);
    return rc;
}

void wb__st_file_free(wb__st_file *f) {
    if (f == NULL)
        return;
    if (f->t != NULL)
        for (size_t i = 0; i < f->n; i++)
            free(f->t[i].name);
    free(f->t);
    for (size_t i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->meta_keys);
    free(f->meta_vals);
    for (size_t i = 0; i < f->n_ties; i++)
        free(f->tie_alias[i]);
    free(f->tie_alias);
    free(f->tie_of);
    free(f->version);
    memset(f, 0, sizeof *f);
}
