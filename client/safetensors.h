/* safetensors.h -- Parses and validates safetensors file headers.
 *
 * A safetensors file is an 8-byte little-endian header length N, N bytes of
 * UTF-8 JSON (possibly padded with trailing spaces) and the data buffer.
 * The JSON maps each tensor name to {"dtype", "shape", "data_offsets"},
 * offsets relative to the data buffer, plus an optional "__metadata__"
 * object of strings.  The parser trusts nothing: every refusal is WB_EFORMAT
 * with the reason in err.  Pure apart from wb__st_read_file_header(), which
 * reads the header from a file descriptor. */
#ifndef WB_CLIENT_SAFETENSORS_H
#define WB_CLIENT_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "wbroker.h"

#define WB_ST_PREFIX_LEN 8 /* Bytes of the header-length prefix. */
#define WB_ST_MAX_HEADER (UINT64_C(100) << 20) /* Max JSON header bytes. */
#define WB_ST_METADATA_KEY "__metadata__"      /* Key of the metadata object. */

typedef struct wb__st_tensor {
    char *name;                 /* Tensor name, UTF-8 without NUL. */
    int dtype;                  /* A wb_dtype. */
    int ndim;                   /* Number of dimensions, 0..WB_MAX_DIMS. */
    int64_t shape[WB_MAX_DIMS]; /* Sizes, each >= 0; unused ones are 0. */
    uint64_t begin;             /* First byte, relative to data_start. */
    uint64_t end;               /* One past the last byte, same origin. */
} wb__st_tensor;

typedef struct wb__st_file {
    wb__st_tensor *t;    /* Tensors in data order (ascending begin). */
    size_t n;            /* Number of tensors. */
    char **meta_keys;    /* Metadata keys, in file order. */
    char **meta_vals;    /* Metadata values, parallel to meta_keys. */
    size_t n_meta;       /* Number of metadata entries (without the
                            WB_TIED_KEY entry, which becomes the ties,
                            and the WB_VERSION_KEY entry). */
    char **tie_alias;    /* Names that share a stored tensor's bytes. */
    size_t *tie_of;      /* Per alias: index in t of the stored tensor. */
    size_t n_ties;       /* Number of aliases. */
    char *version;       /* NULL, or the value of the WB_VERSION_KEY
                            entry (not among the metadata): written by
                            the daemon, read back by the daemon alone. */
    uint64_t header_len; /* N, the JSON header's length in bytes. */
    uint64_t data_start; /* Offset of the data buffer in the file: 8 + N. */
    uint64_t data_len;   /* Bytes of the data buffer (tensors tile it). */
} wb__st_file;

/* Parses the header of a safetensors file of file_size bytes whose first
 * len bytes are at buf; buf must hold the 8-byte prefix and the whole JSON
 * header.  On success fills *out (free it with wb__st_file_free()) and
 * returns 0.  Otherwise *out is zeroed and holds nothing to free, err (if
 * not NULL) receives the reason, and it returns WB_EFORMAT for an invalid
 * file, WB_EINVAL if buf is shorter than the header it announces, or
 * WB_ENOMEM. */
int wb__st_parse_header(const uint8_t *buf, size_t len, uint64_t file_size,
                        wb__st_file *out, char *err, size_t errlen);

/* Reads and parses the header of the open regular file fd with pread(),
 * validating it against the file's size from fstat(); the file offset is
 * not moved.  Returns as wb__st_parse_header(), or WB_EIO if reading fails
 * or the file is not a regular file. */
int wb__st_read_file_header(int fd, wb__st_file *out, char *err, size_t errlen);

/* Frees what a successful parse put in f and zeroes it.  Accepts NULL and
 * a zeroed struct. */
void wb__st_file_free(wb__st_file *f);

#endif /* WB_CLIENT_SAFETENSORS_H */
