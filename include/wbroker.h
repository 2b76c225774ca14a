/* wbroker.h -- Public API of libwbroker, the wbroker client library.
 *
 * libwbroker talks to wbrokerd over a Unix socket.  It publishes model
 * state_dicts (named tensors) into shared memory that the daemon owns, and
 * maps committed versions back read-only or copy-on-write, without copies.
 *
 * Every call is blocking and a client handle is not thread-safe: use one
 * handle per thread.  Functions that can fail return 0 (or a count) on
 * success and a negative WB_E* code on failure; wb_errmsg() then holds the
 * detail of the last failure on that handle. */
#ifndef WBROKER_H
#define WBROKER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define WB_EXTERN __attribute__((visibility("default")))
#else
#define WB_EXTERN
#endif

#define WB_VERSION_MAJOR 0
#define WB_VERSION_MINOR 1
#define WB_VERSION_PATCH 0
#define WB_VERSION_HEX                                                         \
    ((WB_VERSION_MAJOR << 16) | (WB_VERSION_MINOR << 8) | WB_VERSION_PATCH)

/* Library version at run time, as WB_VERSION_HEX and as "0.1.0". */
WB_EXTERN unsigned wb_version(void);
WB_EXTERN const char *wb_version_string(void);

/* ---------------------------------------------------------------- errors */

/* X(name, code, message).  Codes are stable: they travel on the wire and
 * scripts test for them.  Never renumber; append only. */
#define WB_ERRNO_MAP(X)                                                        \
    X(EINVAL, -1, "invalid argument")                                          \
    X(EPROTO, -2, "protocol error")                                            \
    X(ETOOBIG, -3, "request exceeds a protocol limit")                         \
    X(ENOMODEL, -4, "no such model")                                           \
    X(ENOVERSION, -5, "no such version")                                       \
    X(EEXIST, -6, "duplicate name")                                            \
    X(ENAME, -7, "invalid name")                                               \
    X(EDTYPE, -8, "invalid dtype")                                             \
    X(ESHAPE, -9, "invalid shape")                                             \
    X(ELIMIT, -10, "memory limit reached")                                     \
    X(ENOSPC, -11, "no space left in shared memory")                           \
    X(EPERM, -12, "permission denied")                                         \
    X(ECONNECT, -13, "cannot connect to the daemon")                           \
    X(ECLOSED, -14, "connection closed")                                       \
    X(EBUSY, -15, "segment still mapped writable")                             \
    X(ECORRUPT, -16, "segment contents were altered")                          \
    X(ESTATE, -17, "operation not valid in this state")                        \
    X(ERULE, -18, "invalid mapping rule")                                      \
    X(ECOLLISION, -19, "two source keys map to one target key")                \
    X(ELOAD, -20, "error(s) in loading state_dict")                            \
    X(EREGEX, -21, "mapping rules exceeded a match or time limit")             \
    X(ESYS, -22, "system error")                                               \
    X(EVERSION, -23, "protocol version mismatch")                              \
    X(ENOMEM, -24, "out of memory")                                            \
    X(EFORMAT, -25, "invalid file format")                                     \
    X(EIO, -26, "input/output error")

typedef enum {
    WB_OK = 0,
#define WB__ERR_ENUM(name, code, msg) WB_##name = (code),
    WB_ERRNO_MAP(WB__ERR_ENUM)
#undef WB__ERR_ENUM
} wb_errno;

/* Message for an error code ("unknown error" for codes not listed). */
WB_EXTERN const char *wb_strerror(int err);
/* Stable symbolic name of an error code, e.g. "ENOMODEL". */
WB_EXTERN const char *wb_err_name(int err);

/* ---------------------------------------------------------------- dtypes */

/* Dtypes, named as in safetensors. */
#define WB_DTYPE_MAP(X)                                                        \
    X(F64, 8) X(F32, 4) X(F16, 2) X(BF16, 2) X(I64, 8) X(I32, 4) X(I16, 2)     \
    X(I8, 1) X(U8, 1) X(BOOL, 1) X(F8_E4M3, 1) X(F8_E5M2, 1) X(U16, 2)         \
    X(U32, 4) X(U64, 8)

typedef enum {
#define WB__DT_ENUM(name, size) WB_##name,
    WB_DTYPE_MAP(WB__DT_ENUM)
#undef WB__DT_ENUM
    WB_DTYPE_COUNT
} wb_dtype;

/* Element size in bytes, or 0 for an unknown dtype. */
WB_EXTERN size_t wb_dtype_size(int dtype);
/* safetensors name ("F32"), or NULL for an unknown dtype. */
WB_EXTERN const char *wb_dtype_name(int dtype);
/* Dtype for a safetensors name, or WB_EDTYPE. */
WB_EXTERN int wb_dtype_from_name(const char *name);

#define WB_MAX_DIMS 16          /* Dimensions of one tensor. */
#define WB_MAX_NAME 1024        /* Bytes of a tensor or model name. */

/* ---------------------------------------------------------------- client */

typedef struct wb_client wb_client;

/* Resolves the socket path as every wbroker program does: explicit (may be
 * NULL), else $WBROKER_SOCKET, else /run/wbroker/wbroker.sock for root, else
 * $XDG_RUNTIME_DIR/wbroker.sock, else /tmp/wbroker-$UID/wbroker.sock.
 * Returns the length written, or WB_ETOOBIG if it does not fit. */
WB_EXTERN int wb_socket_path(const char *explicit_path, char *buf, size_t len);

/* Connects to the daemon at socket_path (NULL: the default path) and
 * exchanges the protocol hello.  On failure *out is set to NULL unless the
 * failure happened after the handle existed, in which case *out holds a
 * handle whose wb_errmsg() says why; close it with wb_close() either way. */
WB_EXTERN int wb_connect(const char *socket_path, wb_client **out);
/* Closes the connection.  Mappings and open publishes made through it stay
 * valid / are aborted respectively.  Accepts NULL. */
WB_EXTERN void wb_close(wb_client *c);
/* Detail of the last failure on c ("" if none). Accepts NULL. */
WB_EXTERN const char *wb_errmsg(const wb_client *c);

/* ---------------------------------------------------------------- publish */

typedef struct wb_publish wb_publish;

typedef struct wb_tensor_spec {
    const char *name;           /* UTF-8, 1..WB_MAX_NAME bytes. */
    int dtype;                  /* A wb_dtype. */
    int ndim;                   /* 0..WB_MAX_DIMS. */
    const int64_t *shape;       /* ndim sizes, each >= 0. */
    const char *tied_to;        /* NULL, or the name of an earlier tensor of
                                   the same dtype and shape whose bytes this
                                   one shares (tied weights): stored once. */
} wb_tensor_spec;

typedef struct wb_kv {
    const char *key;            /* Metadata key (UTF-8). */
    const char *value;          /* Metadata value (UTF-8). */
} wb_kv;

/* Metadata key under which a version's safetensors image (and an exported
 * file) records its tied tensors, as a JSON object {"alias": "stored"}:
 * the image lists each stored tensor once, as safetensors requires.
 * Reserved: publishers cannot set it; importers turn it back into ties. */
#define WB_TIED_KEY "wbroker.tied"

/* Declares a new version of model with n tensors and optional string
 * metadata.  The daemon lays out and backs a shared segment; fill each
 * tensor by copying bytes in with wb_publish_write(), or by writing where
 * wb_publish_data() points, then commit or abort.  Nothing is visible to
 * readers before the commit. */
WB_EXTERN int wb_publish_begin(wb_client *c, const char *model,
                               const wb_tensor_spec *tensors, size_t n,
                               const wb_kv *meta, size_t n_meta,
                               wb_publish **out);
/* Writable pointer to tensor i (declared order) and its size in bytes, or
 * NULL if i is out of range or the segment cannot be mapped (wb_errmsg()
 * says why).  The first call maps the segment.  A tied tensor gives the
 * bytes of the tensor it is tied to. */
WB_EXTERN void *wb_publish_data(wb_publish *p, size_t i, size_t *nbytes);
/* Copies len bytes from src into tensor i at byte offset off, with write(2)
 * on the segment rather than through a mapping: for bytes that already
 * exist elsewhere this is the faster way in (the kernel fills fresh shared
 * pages without a fault each).  Returns 0, WB_EINVAL (out of range) or
 * WB_ESYS. */
WB_EXTERN int wb_publish_write(wb_publish *p, size_t i, const void *src,
                               size_t len, size_t off);
/* Unmaps any writable mapping, asks the daemon to seal and commit, and frees
 * p whatever the outcome.  On success *version (may be NULL) is the new
 * version number. */
WB_EXTERN int wb_publish_commit(wb_publish *p, uint64_t *version);
/* Abandons the publish and frees p.  Accepts NULL. */
WB_EXTERN void wb_publish_abort(wb_publish *p);

/* ---------------------------------------------------------------- rules */

typedef struct wb_rules wb_rules;

/* Mapping rules: filters, then renames in order.  See the README for the
 * semantics and the rules-file format. */
WB_EXTERN wb_rules *wb_rules_new(void);
WB_EXTERN void wb_rules_free(wb_rules *r);
WB_EXTERN int wb_rules_include(wb_rules *r, const char *glob);
WB_EXTERN int wb_rules_exclude(wb_rules *r, const char *glob);
WB_EXTERN int wb_rules_rename(wb_rules *r, const char *from, const char *to);
WB_EXTERN int wb_rules_rename_prefix(wb_rules *r, const char *from,
                                     const char *to);
WB_EXTERN int wb_rules_rename_regex(wb_rules *r, const char *pattern,
                                    const char *replacement);
/* Converts keys matching glob (after renaming) to dtype when the target
 * schema does not say otherwise. */
WB_EXTERN int wb_rules_cast(wb_rules *r, const char *glob, int dtype);
/* Detail of the last failed wb_rules_* call on r ("" if none), e.g.
 * "regex \"layer(\\d+\" at offset 9: missing closing parenthesis".
 * Accepts NULL. */
WB_EXTERN const char *wb_rules_errmsg(const wb_rules *r);
/* Appends the rules of a rules-file text.  On failure nothing is appended
 * and err (if not NULL) receives "line N: why". */
WB_EXTERN int wb_rules_parse(wb_rules *r, const char *text, char *err,
                             size_t errlen);

/* ---------------------------------------------------------------- target schema */

typedef struct wb_schema wb_schema;

/* The target's tensors in its state_dict order. */
WB_EXTERN wb_schema *wb_schema_new(const char *target_name);
WB_EXTERN void wb_schema_free(wb_schema *s);
WB_EXTERN int wb_schema_add(wb_schema *s, const char *name, int dtype,
                            int ndim, const int64_t *shape);

/* ---------------------------------------------------------------- map */

typedef struct wb_mapping wb_mapping;

enum {
    WB_MAP_PRIVATE = 0,         /* Copy-on-write: writes stay private. */
    WB_MAP_SHARED = 1 << 0,     /* Shared, read-only. */
    WB_MAP_NONSTRICT = 1 << 1,  /* strict=False. */
    WB_MAP_IGNORE_MISMATCH = 1 << 2, /* ignore_mismatched_sizes=True. */
    WB_MAP_PLAN = 1 << 3        /* Dry run: report only, maps nothing. */
};

typedef struct wb_tensor {
    const char *name;           /* Target key (after renaming). */
    const char *source;         /* Source key it came from. */
    int dtype;                  /* A wb_dtype. */
    int ndim;                   /* Number of dimensions. */
    int64_t shape[WB_MAX_DIMS]; /* Sizes. */
    void *data;                 /* Mapped bytes (NULL for a plan). */
    size_t nbytes;              /* Size of data. */
    int cast;                   /* 1 if converted from the source dtype. */
} wb_tensor;

/* Maps the latest (version 0) or a given version of model, read-only shared
 * or copy-on-write as flags say. */
WB_EXTERN int wb_map(wb_client *c, const char *model, uint64_t version,
                     int flags, wb_mapping **out);
/* Maps with a target schema and rules (either may be NULL).  On a load
 * error (strict violation, size mismatch) it returns WB_ELOAD, maps
 * nothing, and *out still holds the report (wb_map_error_text() has the
 * PyTorch-format text); free it with wb_unmap().  For other errors *out is
 * NULL. */
WB_EXTERN int wb_load(wb_client *c, const char *model, uint64_t version,
                      const wb_schema *schema, const wb_rules *rules,
                      int flags, wb_mapping **out);

WB_EXTERN uint64_t wb_map_version(const wb_mapping *m);
WB_EXTERN size_t wb_map_count(const wb_mapping *m);
/* Fills *t with tensor i of the mapped table.  Returns 0 or WB_EINVAL. */
WB_EXTERN int wb_map_tensor(const wb_mapping *m, size_t i, wb_tensor *t);
/* Looks a tensor up by target name; returns its index, or -1 when absent. */
WB_EXTERN long wb_map_find(const wb_mapping *m, const char *name);
/* Metadata value for key, or NULL. */
WB_EXTERN const char *wb_map_meta(const wb_mapping *m, const char *key);
WB_EXTERN size_t wb_map_meta_count(const wb_mapping *m);
WB_EXTERN int wb_map_meta_at(const wb_mapping *m, size_t i, const char **key,
                             const char **value);

/* The load report. */
typedef enum {
    WB_KEYS_MISSING,            /* Target keys no source key reached. */
    WB_KEYS_UNEXPECTED,         /* Source keys (renamed) the target lacks. */
    WB_KEYS_MISMATCHED,         /* Same key, different shape. */
    WB_KEYS_CAST,               /* Same key and shape, converted dtype. */
    WB_KEYS_ALIASED,            /* Target keys sharing a source (tied). */
    WB_KEYS_COUNT
} wb_keyset;
WB_EXTERN size_t wb_map_keys_count(const wb_mapping *m, int which);
WB_EXTERN const char *wb_map_key(const wb_mapping *m, int which, size_t i);
/* PyTorch-format error text ("" when the load succeeded). */
WB_EXTERN const char *wb_map_error_text(const wb_mapping *m);

/* The version's whole safetensors image (header and data, exactly what a
 * .safetensors file holds) as mapped by wb_map().  Returns 0, or
 * WB_ESTATE for a plan or a mapping made with a schema or rules. */
WB_EXTERN int wb_map_image(const wb_mapping *m, const void **data,
                           size_t *len);

/* Unmaps and frees m.  Pointers into it are invalid afterwards.  Accepts
 * NULL. */
WB_EXTERN void wb_unmap(wb_mapping *m);

/* ---------------------------------------------------------------- inspect */

typedef struct wb_model_info {
    char *name;                 /* Model name. */
    uint64_t latest;            /* Latest committed version. */
    uint64_t nversions;         /* Committed versions held. */
    uint64_t tensors;           /* Tensors in the latest version. */
    uint64_t bytes;             /* Tensor bytes of the latest version. */
    uint64_t readers;           /* Connections holding a map of it. */
} wb_model_info;

/* Lists models.  *out is an array of *n entries; free with
 * wb_model_info_free(). */
WB_EXTERN int wb_list(wb_client *c, wb_model_info **out, size_t *n);
WB_EXTERN void wb_model_info_free(wb_model_info *v, size_t n);

typedef struct wb_status {
    char version[32];           /* Daemon version string. */
    double uptime;              /* Seconds since start. */
    uint64_t memory_used;       /* Bytes of shared memory held. */
    uint64_t memory_limit;      /* Configured limit in bytes. */
    uint64_t models;            /* Models held. */
    uint64_t versions;          /* Committed versions held. */
    uint64_t clients;           /* Connected clients. */
    uint32_t pid;               /* Daemon's process id. */
} wb_status;

WB_EXTERN int wb_get_status(wb_client *c, wb_status *out);

/* Drops one version, or every version of model when version is 0.
 * Mappings that exist stay valid. */
WB_EXTERN int wb_drop(wb_client *c, const char *model, uint64_t version);

/* Blocks until model has a committed version newer than after, and stores
 * it in *version.  timeout_ms < 0 waits forever; 0 on timeout is WB_OK with
 * *version == after. */
WB_EXTERN int wb_watch(wb_client *c, const char *model, uint64_t after,
                       int timeout_ms, uint64_t *version);

#ifdef __cplusplus
}
#endif
#endif /* WBROKER_H */
