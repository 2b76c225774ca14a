/* ident.h -- A version's identity and digest, and a version rebuilt from
 * its safetensors header.
 *
 * Every version gets an opaque 64-bit id at publish, unique across
 * restarts (random at start plus a counter).  The header the daemon writes
 * records it under the reserved metadata key WB_VERSION_KEY, as a JSON
 * object: {"format":1,"model":NAME,"id":"16 hex digits","uid":PUBLISHER,
 * "data":DATA_BYTES,"order":[...]} ("order" gives, per tensor in image
 * order, its index in published order).  A file --persist writes adds
 * "number" and "digest" before "data".  The version number is not in an
 * image (it is not known at publish): it lives in the descriptor names of
 * the service manager's store and in the state record.
 *
 * The digest is XXH3-128 of the image's first image_len bytes, computed
 * once at commit, written as 32 lowercase hex digits (the canonical, big-
 * endian form of xxhsum --tag -H2 without its prefix). */
#ifndef WB_DAEMON_IDENT_H
#define WB_DAEMON_IDENT_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "registry.h"

#define WB_IDENT_FORMAT 1 /* "format" of the identity this daemon writes. */
#define WB_DIGEST_LEN 16  /* Bytes of a digest (XXH3-128). */

/* What a WB_VERSION_KEY entry says. */
typedef struct wb__ident {
    uint64_t format;   /* WB_IDENT_FORMAT. */
    char *model;       /* Model name (owned). */
    uint64_t id;       /* Version id. */
    uint32_t uid;      /* Publisher. */
    uint64_t data_len; /* Bytes of tensor data. */
    uint64_t number;   /* Version number, 0 when absent (an image). */
    int has_digest;    /* 1 if digest is set (a persisted file). */
    uint8_t digest[WB_DIGEST_LEN]; /* Digest of the image. */
    size_t *order;                 /* Per tensor in image order, its index in
                                      published order (owned). */
    size_t n;                      /* Entries of order. */
} wb__ident;

/* A new version id: never 0, never one handed out before by this daemon
 * nor, with overwhelming odds, by an earlier one. */
uint64_t wb__ident_new_id(void);
/* Appends the unclosed identity object that wb__layout_build() completes:
 * format, model, id, uid and, when number is not 0, number and digest. */
void wb__ident_render(wb__buf *b, const char *model, uint64_t id, uint32_t uid,
                      uint64_t number, const uint8_t *digest);
/* Parses a WB_VERSION_KEY value.  Returns 0, or WB_EFORMAT with err set
 * (unknown format, a missing or mistyped field, an order that is not a
 * permutation), or WB_ENOMEM.  Free with wb__ident_free(). */
int wb__ident_parse(const char *json, wb__ident *out, char *err, size_t errlen);
void wb__ident_free(wb__ident *id);

/* Writes d as 32 hex digits and a NUL. */
void wb__digest_hex(const uint8_t *d, char *out);
/* Parses 32 hex digits into d.  Returns 0 or -1. */
int wb__digest_parse(const char *hex, uint8_t *d);
/* Digests the first len bytes of a sealed segment (mapped read-only: a
 * sealed segment cannot shrink under the mapping).  Blocks for about
 * 0.1 s per GiB: call it off the loop.  Returns 0 or WB_ESYS. */
int wb__digest_seg(const wb__segment *s, uint64_t len, uint8_t *out);

/* A version rebuilt from a header: v holds its tensors (published order),
 * ties, metadata, offsets and lengths, image_len, data_bytes and id, but no
 * segment; header is the image's own header (what the daemon wrote at
 * publish), data_start where the data starts in the source read. */
typedef struct wb__rebuilt {
    wb__version *v;      /* New version, one reference (NULL on error). */
    wb__ident ident;     /* The source's identity entry. */
    uint8_t *header;     /* The image's header bytes (owned). */
    uint64_t header_len; /* Bytes of header (the image's data start). */
    uint64_t data_start; /* Where the data starts in the source. */
} wb__rebuilt;

/* Rebuilds a version from the first len bytes of a source (an image or a
 * persisted file) holding its whole header, file_size bytes long in all (0:
 * an image, whose length the identity gives).  Checks that the header
 * parses as safetensors, carries an identity this daemon reads, and is
 * exactly what the daemon would write for the identity's model, tensors,
 * ties and metadata (so that a foreign or altered header is refused).
 * Returns 0, WB_EFORMAT or WB_EINVAL with err set, or WB_ENOMEM.  Free with
 * wb__rebuilt_free(). */
int wb__rebuild(const uint8_t *buf, size_t len, uint64_t file_size,
                wb__rebuilt *out, char *err, size_t errlen);
/* Frees what wb__rebuild() made (the version unless taken: set v NULL). */
void wb__rebuilt_free(wb__rebuilt *r);
/* Reads 8 + N header bytes of a source with pread into a new buffer
 * (*out, *len).  Returns 0, WB_EFORMAT (a header length over the
 * safetensors parser's limit or the file's size) or WB_EIO. */
int wb__read_header(int fd, uint64_t size, uint8_t **out, size_t *len);

#endif
