/* wbroker.h -- Public API of libwbroker, the wbroker client library.
 *
 * libwbroker talks to wbrokerd over a Unix socket.  It publishes model
 * state_dicts (named tensors) into shared memory that the daemon owns, and
 * maps committed versions back read-only or copy-on-write, without copies.
 *
 * Conventions that every function below follows unless its comment says
 * otherwise:
 *
 * Errors.  Functions that can fail return 0 (or a count or length) on
 * success and a negative WB_E* code on failure.  A failure on a client
 * handle, or on a publish made through it, also leaves its detail in
 * wb_errmsg() of that handle.  A call that sends a request can, besides
 * the codes its comment lists, fail with the "transport errors":
 * WB_ECLOSED (the connection broke while the request was out, so whether
 * the daemon carried it out is unknown), WB_ECONNECT, WB_EPERM or
 * WB_EVERSION (the connection had been lost and reconnecting failed, as
 * for wb_connect(); wb_errmsg() says it was a reconnect), WB_EPROTO (the
 * daemon's reply was
 * malformed or out of sequence, or the daemon refused the request as a
 * protocol error; the connection may have been closed with it),
 * WB_ETOOBIG (the request exceeds the protocol's 32 MiB frame; nothing was
 * sent) and WB_ENOMEM.
 *
 * Reconnecting.  A handle outlives its connection: when the daemon went
 * away (it was restarted, or ended the connection after a protocol error
 * or one of the above), the next call on the handle connects again to the
 * same socket path, with the same checks of whoever listens there and a
 * new hello, and then sends its request.  A call finds the connection lost
 * when an earlier call marked it so or when its socket shows the daemon
 * gone; a call whose connection breaks while its request is out fails
 * with WB_ECLOSED instead, and the call after it reconnects.  Mappings
 * already made stay valid throughout: they do not depend on the
 * connection.  What lived on the lost connection does not come back: a
 * publish begun on it fails its wb_publish_commit() with WB_ECLOSED, and
 * a wb_watch() waiting on it fails with WB_ECLOSED.
 *
 * Arguments.  Pointer arguments must not be NULL unless the comment says
 * so; a NULL handle or output pointer is refused with WB_EINVAL, but a
 * NULL inside an array or a string that is not NUL-terminated is not
 * always detectable.  A "valid name" (of a model, a tensor or a metadata
 * key) is 1..WB_MAX_NAME bytes of UTF-8 without NUL, overlong forms or
 * surrogates; invalid model and tensor names fail with WB_ENAME.
 *
 * Ownership.  Strings and arrays passed in are copied (or sent) before the
 * call returns: the caller keeps them.  Objects a function hands out
 * (wb_client, wb_publish, wb_mapping, wb_rules, wb_schema, wb_model_info
 * arrays) belong to the caller until the matching free function; strings
 * and pointers read out of an object belong to that object and stay valid
 * until it is freed, unless the comment says otherwise.
 *
 * Threads.  Every call is blocking.  A client handle is not thread-safe:
 * use one handle per thread, or serialise all calls on it, including calls
 * on its publishes, which talk through it.  A wb_mapping can be read
 * (wb_map_*) from several threads at once, since reading does not change
 * it, but must not be unmapped while another thread still uses it; the
 * same holds for wb_rules and wb_schema, which wb_load() only reads.  The
 * functions that take no handle are thread-safe, and so is
 * wb_watch_cancel(), made to be called while another thread waits in
 * wb_watch(). */
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

/* Library version at run time, as WB_VERSION_HEX would give it: compare
 * with the WB_VERSION_HEX a program was built with to detect a different
 * libwbroker.  Cannot fail. */
WB_EXTERN unsigned wb_version(void);
/* Library version at run time as a string, "0.1.0": a static string, never
 * NULL, not to be freed. */
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
    X(EIO, -26, "input/output error")                                          \
    X(ECANCELED, -27, "cancelled")

typedef enum {
    WB_OK = 0,
#define WB__ERR_ENUM(name, code, msg) WB_##name = (code),
    WB_ERRNO_MAP(WB__ERR_ENUM)
#undef WB__ERR_ENUM
} wb_errno;

/* Generic message of an error code: "success" for 0, "unknown error" for
 * a code not in WB_ERRNO_MAP.  A static string, never NULL, not to be
 * freed.  The detail of one failure is in wb_errmsg(). */
WB_EXTERN const char *wb_strerror(int err);
/* Stable symbolic name of an error code, e.g. "ENOMODEL": "OK" for 0,
 * "EUNKNOWN" for a code not in WB_ERRNO_MAP.  A static string, never NULL,
 * not to be freed. */
WB_EXTERN const char *wb_err_name(int err);

/* ---------------------------------------------------------------- dtypes */

/* Dtypes, named as in safetensors: X(name, element size in bytes). */
/* clang-format off */
#define WB_DTYPE_MAP(X)                                                        \
    X(F64, 8) X(F32, 4) X(F16, 2) X(BF16, 2) X(I64, 8) X(I32, 4) X(I16, 2)     \
    X(I8, 1) X(U8, 1) X(BOOL, 1) X(F8_E4M3, 1) X(F8_E5M2, 1) X(U16, 2)         \
    X(U32, 4) X(U64, 8)
/* clang-format on */

typedef enum {
#define WB__DT_ENUM(name, size) WB_##name,
    WB_DTYPE_MAP(WB__DT_ENUM)
#undef WB__DT_ENUM
        WB_DTYPE_COUNT
} wb_dtype;

/* Element size in bytes of dtype (a wb_dtype), or 0 when dtype is not one
 * (negative or >= WB_DTYPE_COUNT). */
WB_EXTERN size_t wb_dtype_size(int dtype);
/* safetensors name of dtype ("F32"), a static string not to be freed, or
 * NULL when dtype is not a wb_dtype. */
WB_EXTERN const char *wb_dtype_name(int dtype);
/* The wb_dtype whose safetensors name is name, matched exactly (case
 * matters: "F32", not "f32").  Returns it (>= 0), or WB_EDTYPE for an
 * unknown name or a NULL one. */
WB_EXTERN int wb_dtype_from_name(const char *name);

#define WB_MAX_DIMS 16   /* Dimensions of one tensor. */
#define WB_MAX_NAME 1024 /* Bytes of a tensor or model name. */

/* ---------------------------------------------------------------- client */

typedef struct wb_client wb_client;

/* Resolves the socket path as every wbroker client does: explicit_path
 * when it is neither NULL nor "", else $WBROKER_SOCKET when set and not
 * empty, else /run/wbroker/wbroker.sock when the effective user is root,
 * else the user's own socket when one exists there
 * ($XDG_RUNTIME_DIR/wbroker.sock when that is set and not empty, else
 * /tmp/wbroker-$UID/wbroker.sock), else the system's
 * /run/wbroker/wbroker.sock.  (wbrokerd itself listens on the user's own
 * path whether or not it exists.)  Writes it NUL-terminated into buf (len
 * bytes; buf may be NULL only when len is 0).  Returns its length without
 * the NUL, or WB_ETOOBIG when it needs len bytes or more (buf then holds
 * a truncated path).  Reads the environment: do not call it while another
 * thread changes the environment. */
WB_EXTERN int wb_socket_path(const char *explicit_path, char *buf, size_t len);

/* Connects to the daemon at socket_path (NULL or "": the path
 * wb_socket_path() resolves) and exchanges the protocol hello.  On success
 * *out is a new handle, to be closed with wb_close().
 *
 * Fails with WB_EINVAL when out is NULL (nothing allocated) or the path
 * does not fit in a socket address (107 bytes); WB_ENOMEM when the handle
 * cannot be allocated; WB_ESYS when no socket can be made; WB_EPERM when
 * the socket's permissions refuse this user; WB_ECONNECT when nothing
 * listens there (no such file, connection refused); WB_EVERSION when the
 * daemon speaks another protocol version; and with the transport errors.
 * *out is NULL after the failures that come before the handle exists
 * (out NULL, WB_ENOMEM); after the others *out holds a handle good only
 * for wb_errmsg() (which names the socket path and says why) and
 * wb_close().  Close *out whenever it is not NULL. */
WB_EXTERN int wb_connect(const char *socket_path, wb_client **out);
/* Closes the connection and frees c.  Accepts NULL.  Mappings made through
 * c stay valid (free them with wb_unmap() as before).  The daemon aborts
 * every publish still open on the connection, but the wb_publish handles
 * point to c: commit or abort them before closing c, since none may be
 * used, not even aborted, afterwards.  Strings read from c (wb_errmsg())
 * are invalid afterwards. */
WB_EXTERN void wb_close(wb_client *c);
/* Detail of the most recent failure of a call on c or on one of its
 * publishes, a sentence such as "no model named 'm'"; "" when the most
 * recent request succeeded (each successful request clears it), and "" for
 * a NULL c.  The string belongs to c and is overwritten by the next call
 * on c; calls that fail because c itself is NULL record nothing. */
WB_EXTERN const char *wb_errmsg(const wb_client *c);
/* The system's error code (an errno value such as ENOMEM or EMFILE) behind
 * the most recent failure on c when that failure was WB_ESYS: this
 * process's own errno for a local system call, or the daemon's, which
 * WB_ESYS replies carry.  0 when the last failure was not WB_ESYS, when
 * the daemon did not say, after a success, and for a NULL c. */
WB_EXTERN int wb_sys_errno(const wb_client *c);

/* ---------------------------------------------------------------- publish */

typedef struct wb_publish wb_publish;

typedef struct wb_tensor_spec {
    const char *name;     /* UTF-8, 1..WB_MAX_NAME bytes. */
    int dtype;            /* A wb_dtype. */
    int ndim;             /* 0..WB_MAX_DIMS. */
    const int64_t *shape; /* ndim sizes, each >= 0. */
    const char *tied_to;  /* NULL, or the name of an earlier tensor of
                             the same dtype and shape whose bytes this
                             one shares (tied weights): stored once. */
} wb_tensor_spec;

typedef struct wb_kv {
    const char *key;   /* Metadata key (UTF-8). */
    const char *value; /* Metadata value (UTF-8). */
} wb_kv;

/* Metadata key under which a version's safetensors image (and an exported
 * file) records its tied tensors, as a JSON object {"alias": "stored"}:
 * the image lists each stored tensor once, as safetensors requires.
 * Reserved: publishers cannot set it; importers turn it back into ties. */
#define WB_TIED_KEY "wbroker.tied"
/* Metadata key under which the daemon records a version's identity in its
 * image and in the files --persist writes: a JSON object (format, model,
 * id, uid, the published order of the tensors; a persisted file adds the
 * number and the digest).  Reserved like WB_TIED_KEY: publishers cannot set
 * it, readers never see it among the metadata and importers drop it. */
#define WB_VERSION_KEY "wbroker.version"

/* Declares a new version of model (a valid name) with the n tensors of
 * tensors (NULL allowed when n is 0) and the n_meta entries of meta (NULL
 * allowed when n_meta is 0).  The daemon lays the tensors out in one
 * shared segment and backs it in full, so that a full memory fails here
 * and never later; every tensor byte starts as zero.  Fill each tensor by
 * copying bytes in with wb_publish_write(), or by writing where
 * wb_publish_data() points, then finish with wb_publish_commit() or
 * wb_publish_abort().  Nothing is visible to readers before the commit.
 * The specs and metadata are copied: the caller keeps them.  On success
 * *out is the new publish; it belongs to the caller and is freed by the
 * commit or the abort, whichever comes (exactly one of them must).  A
 * connection may hold up to 16 open publishes.
 *
 * Fails, with *out NULL (when out is not NULL) and nothing declared, with
 * WB_EINVAL for a NULL c, out or model, NULL tensors or meta with a
 * non-zero count, a metadata entry whose key is NULL or not a valid name
 * or whose value is NULL, longer than 1 MiB or holds a NUL, the reserved
 * keys "__metadata__" and WB_TIED_KEY (use tied_to), or a tied_to that
 * does not name an earlier tensor of the same dtype and shape that is not
 * itself tied; WB_ENAME for an invalid model or tensor name; WB_EDTYPE for
 * a dtype that is not a wb_dtype; WB_ESHAPE for an ndim outside
 * 0..WB_MAX_DIMS, a NULL shape with ndim > 0, a negative size, or a
 * tensor of more than 2^48 bytes; WB_EEXIST when two tensors share a
 * name; WB_ETOOBIG for more than 262,144 tensors or 1,024 metadata
 * entries, a 17th open publish on the connection, or a model too large to
 * lay out; WB_ELIMIT when the segment would exceed the daemon's memory
 * limit; WB_ENOSPC when the system cannot back it; WB_ESYS; and the
 * transport errors. */
WB_EXTERN int wb_publish_begin(wb_client *c, const char *model,
                               const wb_tensor_spec *tensors, size_t n,
                               const wb_kv *meta, size_t n_meta,
                               wb_publish **out);
/* Writable pointer to the bytes of tensor i of p (in the order declared)
 * and, when nbytes is not NULL, their size in *nbytes.  The first call
 * maps the whole segment shared and writable.  A tied tensor gives the
 * bytes of the tensor it is tied to.  The pointer is valid until the
 * commit or abort of p, which unmap it; write only within the nbytes
 * bytes: a write beyond them changes another tensor or the header, and a
 * changed header makes the commit fail with WB_ECORRUPT.  Returns NULL
 * when p is NULL or i is out of range (nothing recorded), or when the
 * segment cannot be mapped (WB_ESYS, detail in wb_errmsg() of p's
 * client). */
WB_EXTERN void *wb_publish_data(wb_publish *p, size_t i, size_t *nbytes);
/* Copies len bytes from src (NULL allowed when len is 0) into tensor i of
 * p at byte offset off within the tensor, with pwrite(2) on the segment
 * rather than through a mapping: for bytes that already exist elsewhere
 * this is the faster way in (the kernel fills fresh shared pages without
 * a fault each).  Writing to a tied tensor writes the tensor it is tied
 * to.  Mixes freely with writes through wb_publish_data().  Talks to no
 * daemon.  Returns 0; WB_EINVAL when p is NULL, i is out of range, src is
 * NULL with len > 0, or [off, off + len) does not lie within the tensor's
 * bytes (nothing written); or WB_ESYS when the write fails (the tensor
 * may be partly written). */
WB_EXTERN int wb_publish_write(wb_publish *p, size_t i, const void *src,
                               size_t len, size_t off);
/* Unmaps p's writable mapping (pointers from wb_publish_data() become
 * invalid), asks the daemon to check the header, seal the segment against
 * any further change and commit it as the model's next version, and frees
 * p whatever the outcome.  On success the version is visible to every
 * reader and watcher, and *version (NULL allowed) is its number, counted
 * from 1 per model.  On failure nothing is published.
 *
 * Fails with WB_EINVAL for a NULL p; WB_EBUSY when another writable
 * mapping of the segment still exists (a forked child's, say: the kernel
 * cannot seal it); WB_ECORRUPT when the header the daemon wrote was
 * changed; WB_ESTATE when the daemon no longer knows the publish;
 * WB_ETOOBIG when the model is new and the daemon already holds its
 * maximum of 4,096 models; and the transport errors. */
WB_EXTERN int wb_publish_commit(wb_publish *p, uint64_t *version);
/* Abandons the publish: unmaps it, tells the daemon to discard the
 * segment (when the connection still works; any failure of that is
 * ignored, and wb_errmsg() keeps the failure that led here) and frees p.
 * Accepts NULL. */
WB_EXTERN void wb_publish_abort(wb_publish *p);

/* ---------------------------------------------------------------- files
 *
 * Safetensors files in and out: the one implementation that the wbroker
 * CLI and the Python package both call. */

/* Progress of a file transfer: done of total bytes moved so far.  Called
 * with done 0 before the first byte (an export to a file calls it once
 * before its temporary file exists and once after, so that a caller
 * knows from the first call on that a stop is needed to undo it), after
 * every chunk (at most 8 MiB),
 * and once more with done == total when everything is written (and, for a
 * file, synced), just before the commit or the rename that makes it
 * visible: the last chance to stop.  Return 0 to go on; any other value
 * stops the transfer, which then undoes itself (the publish is aborted,
 * the temporary file removed) and returns that value, so return a
 * negative WB_E* code of your choosing.  It may not call the library on
 * the same handle. */
typedef int (*wb_progress_fn)(void *user, uint64_t done, uint64_t total);

/* What a transfer moved, filled on success when the pointer given is not
 * NULL. */
typedef struct wb_file_info {
    uint64_t version; /* Version published, or written out. */
    uint64_t tensors; /* Import: tensors stored (tied names not counted);
                         export: names the version maps (tied included). */
    uint64_t bytes;   /* Import: tensor bytes read; export: the bytes of
                         the safetensors image written. */
    uint64_t files;   /* Import: safetensors files read (1, or the shards
                         of an index); export: 0. */
} wb_file_info;

/* Index file of a sharded checkpoint, as transformers' save_pretrained
 * names it, and the single file it writes otherwise: what
 * wb_import_file() looks for in a directory. */
#define WB_ST_INDEX_NAME "model.safetensors.index.json"
#define WB_ST_FILE_NAME "model.safetensors"

/* Publishes a safetensors checkpoint as one new version of model.  path
 * names a safetensors file; or an index (a file whose name ends in
 * ".json", such as WB_ST_INDEX_NAME) whose "weight_map" object maps every
 * tensor name to the shard file holding it; or a directory holding
 * WB_ST_INDEX_NAME (preferred) or WB_ST_FILE_NAME.  Symbolic links are
 * followed (a Hugging Face cache's snapshot is made of them).
 *
 * Every file's header is read and validated before any request is sent:
 * nothing is declared for a file that would fail.  Then every tensor of
 * every file is declared in one publish (the files' tensors in data order,
 * shards in the order of their names, then the names a WB_TIED_KEY entry
 * ties to them), each tensor's bytes are read from its file straight into
 * the shared segment, and the version is committed.  Any failure, a
 * progress callback that stops it, or the death of the process aborts the
 * publish: a half-imported version is never visible.
 *
 * An index is checked as a whole: each shard is a plain file name in the
 * index's directory (not empty, no '/', no ".."); each weight_map entry is
 * a tensor of its shard; no tensor is in two shards; no shard holds a
 * tensor the weight_map does not list (under that shard).  The index's own
 * "metadata" (total_size) is not kept: the version has its own size.
 *
 * Metadata: the files' __metadata__ entries (without WB_TIED_KEY, which
 * becomes ties), then the n_meta entries of meta (NULL allowed when n_meta
 * is 0), which replace entries of the same key.  Shards merge theirs: a
 * key several shards give keeps its value when they agree (save_pretrained
 * writes {"format": "pt"} into each); when they disagree the import fails
 * with WB_EFORMAT, unless meta gives that key a value, which wins.
 *
 * progress (NULL allowed) counts tensor bytes read (see wb_progress_fn);
 * user is passed to it.  On success the version is committed, *info (NULL
 * allowed) says what was moved, and it returns 0.
 *
 * Fails, with nothing published, with WB_EINVAL for a NULL c, path or
 * model, NULL meta with a non-zero n_meta, a metadata entry wb_publish_begin()
 * refuses; WB_ESYS when path or a shard cannot be found, opened or is not
 * a regular file (wb_sys_errno() has the errno); WB_EFORMAT for a file
 * that is not valid safetensors, an index that is not a JSON object with a
 * non-empty "weight_map" object of plain file names, a shard that breaks a
 * rule above, a name both stored and tied (or tied twice) across shards,
 * shards whose metadata disagree, and a directory with neither file in
 * it; WB_EIO when reading fails or a file ends early; WB_ENOMEM; whatever
 * wb_publish_begin(), wb_publish_write() and wb_publish_commit() fail with
 * (WB_ENAME, WB_ETOOBIG, WB_ELIMIT, ...); and whatever progress returned.
 * wb_errmsg() names the file, and the tensor or key at fault. */
WB_EXTERN int wb_import_file(wb_client *c, const char *path, const char *model,
                             const wb_kv *meta, size_t n_meta,
                             wb_progress_fn progress, void *user,
                             wb_file_info *info);

/* Reads and validates what wb_import_file() would import from path with
 * the n_meta entries of meta (NULL allowed when n_meta is 0: every header,
 * an index's shards, the metadata merge), without a daemon and
 * without reading any tensor's bytes: for refusing a bad checkpoint before
 * connecting, or checking one.  Returns 0 with *info (NULL allowed; its
 * version 0) saying what an import would move; WB_EINVAL for a NULL path,
 * NULL meta with a non-zero n_meta or an entry with a NULL key or value;
 * or the code wb_import_file() would fail with for the files (WB_ESYS,
 * WB_EFORMAT, WB_EIO, WB_ENOMEM), with the detail in err (NULL allowed,
 * or errlen 0; truncated to errlen bytes).  Thread-safe. */
WB_EXTERN int wb_check_file(const char *path, const wb_kv *meta, size_t n_meta,
                            wb_file_info *info, char *err, size_t errlen);

/* Writes version (0: the latest) of model as a safetensors file at path,
 * atomically: the version's whole image (the daemon keeps versions in
 * that layout, tied names under WB_TIED_KEY) goes to a fresh temporary
 * file next to path (".NAME.RANDOM.tmp", opened with O_EXCL and
 * O_NOFOLLOW, so that nothing planted there is written through), which is
 * synced, renamed over path, and the directory synced: path is either the
 * old file or the complete new one.  path must be absent or a regular
 * file, checked before the daemon is asked for anything and again just
 * before the rename: a directory, device, fifo, socket or symbolic link is
 * refused (renaming over it would replace it, or the link rather than what
 * it points to).  A replaced file keeps its permission bits; a new one
 * gets 0666 less the umask.  The library installs no signal handler: a
 * program that wants the temporary file removed on SIGINT stops the
 * transfer from its progress callback (as the wbroker CLI does).
 *
 * progress (NULL allowed) counts the image's bytes; user is passed to it.
 * On success *info (NULL allowed) says what was written.  Fails, with
 * path untouched and no temporary file left, with WB_EINVAL for a NULL c,
 * model or path, a path ending in '/', longer than 4,095 bytes or naming
 * something that is not a regular file; WB_ESYS when its directory cannot
 * be opened, or creating, writing, syncing or renaming the file fails
 * (wb_sys_errno() has the errno); whatever wb_map() fails with (WB_ENAME,
 * WB_ENOMODEL, WB_ENOVERSION, the transport errors); WB_ECORRUPT for an
 * image without a valid header; and whatever progress returned. */
WB_EXTERN int wb_export_file(wb_client *c, const char *model, uint64_t version,
                             const char *path, wb_progress_fn progress,
                             void *user, wb_file_info *info);

/* wb_export_file() to the open descriptor fd (a pipe, a socket, standard
 * output) from where it stands, with write(2); nothing is synced and
 * nothing renamed.  Writing to a pipe whose reader left raises SIGPIPE
 * unless the program ignores it.  Fails with WB_EINVAL for a negative fd,
 * WB_ESYS when a write fails (the bytes before it are written), and as
 * wb_export_file() otherwise. */
WB_EXTERN int wb_export_fd(wb_client *c, const char *model, uint64_t version,
                           int fd, wb_progress_fn progress, void *user,
                           wb_file_info *info);

/* ---------------------------------------------------------------- rules */

typedef struct wb_rules wb_rules;

/* Mapping rules that wb_load() sends with a request: source keys are
 * filtered (include, exclude) and then renamed by every rename rule in the
 * order added; cast rules pick dtypes.  See the README for the semantics
 * and the rules-file format.  Every rule is checked when it is added, so
 * that a bad one fails at the call that made it; the daemon checks again.
 * A failed call adds nothing and leaves its detail in wb_rules_errmsg().
 * Operands are copied.  A request holds at most 4,096 rules (more fail at
 * wb_load() with WB_ETOOBIG).  A wb_rules is not thread-safe to change. */

/* A new, empty rule list, to be freed with wb_rules_free(); NULL when out
 * of memory. */
WB_EXTERN wb_rules *wb_rules_new(void);
/* Frees r and its rules.  Accepts NULL.  Strings read from r
 * (wb_rules_errmsg()) are invalid afterwards. */
WB_EXTERN void wb_rules_free(wb_rules *r);
/* Keeps only the source keys that match glob (an fnmatch(3) pattern) or
 * another include glob; with no include rule every key is kept.  Returns
 * 0; WB_EINVAL for a NULL r (nothing recorded) or glob; WB_ENAME for a
 * glob longer than WB_MAX_NAME bytes; WB_ERULE for an empty or malformed
 * glob (an unclosed '[', a trailing backslash); or WB_ENOMEM. */
WB_EXTERN int wb_rules_include(wb_rules *r, const char *glob);
/* Drops the source keys that match glob; an exclude wins over an include.
 * Returns as wb_rules_include(). */
WB_EXTERN int wb_rules_exclude(wb_rules *r, const char *glob);
/* Renames the key exactly equal to from (as the renames before this one
 * left it) into to.  Returns 0; WB_EINVAL for a NULL r (nothing recorded),
 * from or to; WB_ENAME for an operand longer than WB_MAX_NAME bytes;
 * WB_ERULE for an empty operand; or WB_ENOMEM. */
WB_EXTERN int wb_rules_rename(wb_rules *r, const char *from, const char *to);
/* Replaces the prefix from of every key that starts with it by to; from ""
 * puts to in front of every key, to "" strips from.  Returns as
 * wb_rules_rename(), except that empty operands are allowed. */
WB_EXTERN int wb_rules_rename_prefix(wb_rules *r, const char *from,
                                     const char *to);
/* Renames every key that the PCRE2 pattern matches as a whole into
 * replacement, with Python's re.sub syntax (\1, \g<1>, \g<name>).  The
 * pattern is compiled and the replacement's group references are checked
 * now.  Returns 0; WB_EINVAL for a NULL r (nothing recorded), pattern or
 * replacement; WB_ENAME for an operand longer than WB_MAX_NAME bytes;
 * WB_ERULE for an empty or invalid pattern or a replacement naming a
 * group the pattern lacks (wb_rules_errmsg() says where); or WB_ENOMEM.
 * Matching is bounded at the daemon (see EREGEX at wb_load()). */
WB_EXTERN int wb_rules_rename_regex(wb_rules *r, const char *pattern,
                                    const char *replacement);
/* Converts the keys matching glob (after renaming) to dtype when the
 * target schema does not give their dtype; the last matching cast rule
 * wins.  Returns 0; WB_EINVAL for a NULL r (nothing recorded) or glob;
 * WB_ENAME for a glob longer than WB_MAX_NAME bytes; WB_ERULE for an empty
 * or malformed glob; WB_EDTYPE when dtype is not a wb_dtype; or
 * WB_ENOMEM.  A conversion the daemon cannot do fails at wb_load() with
 * WB_EDTYPE. */
WB_EXTERN int wb_rules_cast(wb_rules *r, const char *glob, int dtype);
/* Detail of the last failed wb_rules_* call on r ("" if none), e.g.
 * "regex \"layer(\\d+\" at offset 9: missing closing parenthesis".
 * Accepts NULL (gives "").  The string belongs to r and is overwritten by
 * the next failing call on r. */
WB_EXTERN const char *wb_rules_errmsg(const wb_rules *r);
/* Appends the rules of a rules-file text (NUL-terminated; lines end with
 * LF or CRLF), and takes the "strict" and "ignore-mismatched-sizes" lines
 * it has (the last of each wins) as options for wb_load(): they can only
 * relax the flags given there.  On failure nothing is appended, the
 * options are unchanged, and err (NULL allowed, or errlen 0) receives
 * "line N: why" truncated to errlen bytes, which wb_rules_errmsg() also
 * gives.  Returns 0; WB_EINVAL for a NULL r or text; WB_ERULE for a line
 * that is not a valid rule; or WB_ENOMEM. */
WB_EXTERN int wb_rules_parse(wb_rules *r, const char *text, char *err,
                             size_t errlen);

/* ---------------------------------------------------------------- target
 * schema */

typedef struct wb_schema wb_schema;

/* The target of a load: its tensors in its state_dict order, against
 * which wb_load() matches the (renamed) source keys as load_state_dict()
 * would.  A wb_schema is not thread-safe to change. */

/* A new, empty schema for a target called target_name (copied; NULL means
 * ""), the name error texts give ("Error(s) in loading state_dict for
 * NAME").  Free it with wb_schema_free().  Returns NULL when out of memory
 * or when the name is longer than WB_MAX_NAME bytes. */
WB_EXTERN wb_schema *wb_schema_new(const char *target_name);
/* Frees s, its target name and its tensors.  Accepts NULL. */
WB_EXTERN void wb_schema_free(wb_schema *s);
/* Appends a target tensor: its key, dtype (a wb_dtype) and ndim sizes at
 * shape (NULL allowed when ndim is 0); name and sizes are copied.  Returns
 * 0; WB_EINVAL for a NULL s; WB_ENAME for a name that is NULL, empty or
 * longer than WB_MAX_NAME bytes (other invalid names fail at wb_load());
 * WB_EDTYPE; WB_ESHAPE for an ndim outside 0..WB_MAX_DIMS, a NULL shape
 * with ndim > 0 or a negative size; or WB_ENOMEM.  The schema is unchanged
 * on failure.  A key listed twice fails at wb_load() with WB_EEXIST. */
WB_EXTERN int wb_schema_add(wb_schema *s, const char *name, int dtype, int ndim,
                            const int64_t *shape);

/* ---------------------------------------------------------------- map */

typedef struct wb_mapping wb_mapping;

enum {
    WB_MAP_PRIVATE = 0,              /* Copy-on-write: writes stay private. */
    WB_MAP_SHARED = 1 << 0,          /* Shared, read-only. */
    WB_MAP_NONSTRICT = 1 << 1,       /* strict=False. */
    WB_MAP_IGNORE_MISMATCH = 1 << 2, /* ignore_mismatched_sizes=True. */
    WB_MAP_PLAN = 1 << 3,            /* Dry run: report only, maps nothing. */
    WB_MAP_POPULATE = 1 << 4         /* Make every page resident before the
                                        call returns (MADV_POPULATE_READ,
                                        else a read of each page), for a
                                        server that wants no page fault
                                        on its first request. */
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

/* wb_load() without a schema or rules: maps every tensor of version
 * (0: the latest) of model under its own name, in the order it was
 * published, tied tensors under each of their names at the same bytes.
 * flags: WB_MAP_SHARED for read-only shared pages (a write faults), else
 * copy-on-write (WB_MAP_PRIVATE: writes stay in this process); WB_MAP_PLAN
 * for the table without the bytes.  Only a mapping made here without
 * WB_MAP_PLAN gives wb_map_image().  Returns and fails as wb_load(). */
WB_EXTERN int wb_map(wb_client *c, const char *model, uint64_t version,
                     int flags, wb_mapping **out);
/* Maps version (0: the latest) of model through a target schema and rules
 * (either or both may be NULL; both are only read, and may be freed after
 * the call).  The daemon filters and renames the source keys, matches
 * them against the schema as load_state_dict() would and converts dtypes
 * the schema or a cast rule asks for (once, cached for every later
 * consumer).  flags are WB_MAP_* values ORed: WB_MAP_SHARED or copy-on-
 * write as for wb_map(); WB_MAP_NONSTRICT (strict=False) and
 * WB_MAP_IGNORE_MISMATCH (ignore_mismatched_sizes=True), which a rules
 * file's options can also set; WB_MAP_PLAN for the report and table
 * without mapping anything (data pointers NULL).  On success *out is the
 * mapping (free it with wb_unmap()): with a schema, the target keys that
 * matched, in the schema's order, each with its source key; without, every
 * kept key in the version's order; and the load report.  The mapping does
 * not depend on c, which may be closed before it, and the bytes stay
 * mapped even when the version is dropped.
 *
 * On a load error (strict and missing or unexpected keys, a size mismatch
 * without WB_MAP_IGNORE_MISMATCH) it returns WB_ELOAD, maps nothing, and
 * *out still holds the report and the version number
 * (wb_map_error_text() has the PyTorch-format text, also in wb_errmsg());
 * free it with wb_unmap().  For every other error *out is NULL (when out
 * is not NULL): WB_EINVAL for a NULL c, model or out; WB_ENAME for an
 * invalid model name, or a schema key the daemon finds invalid;
 * WB_ENOMODEL when no model has that name; WB_ENOVERSION when it has no
 * such version; WB_EEXIST for a schema key listed twice; WB_ERULE for a
 * rule the daemon refuses; WB_EREGEX when a regex hits PCRE2's match
 * limits or the rules take longer than 2 seconds on all the keys;
 * WB_ECOLLISION when two source keys are renamed to one target key;
 * WB_EDTYPE for a conversion the daemon cannot do; WB_ELIMIT or WB_ENOSPC
 * when the converted copies do not fit in memory; WB_ETOOBIG for more
 * than 4,096 rules or 262,144 schema tensors, or copies spread over more
 * than 63 segments; WB_ESYS when a segment cannot be mapped; and the
 * transport errors. */
WB_EXTERN int wb_load(wb_client *c, const char *model, uint64_t version,
                      const wb_schema *schema, const wb_rules *rules, int flags,
                      wb_mapping **out);

/* The reading functions below (wb_map_*) only read m: they talk to no
 * daemon, record nothing in wb_errmsg(), accept NULL for m (as an empty
 * mapping) and may run in several threads at once. */

/* Version number m maps (also for a WB_ELOAD report), or 0 for NULL. */
WB_EXTERN uint64_t wb_map_version(const wb_mapping *m);
/* The page backend of m's version, as the daemon chose it: "hugetlb"
 * (2 MiB pages of the host's pool), "thp" (shared memory that the kernel
 * may back with 2 MiB transparent huge pages), "4k", or "" (NULL m, or a
 * daemon older than huge pages).  huge_bytes (may be NULL) gets the bytes
 * of the mapped segments that the kernel held in 2 MiB pages when each
 * was sealed. */
WB_EXTERN const char *wb_map_pages(const wb_mapping *m, uint64_t *huge_bytes);
/* Tensors in m's table (0 for NULL and for a WB_ELOAD report). */
WB_EXTERN size_t wb_map_count(const wb_mapping *m);
/* Fills *t with tensor i (0..wb_map_count() - 1) of m's table.  t->name
 * and t->source belong to m; t->data points into m's mapping (NULL for a
 * plan), read-only for WB_MAP_SHARED, private copy-on-write otherwise;
 * tied tensors share their bytes.  Returns 0, or WB_EINVAL for a NULL m
 * or t or an i out of range (*t untouched). */
WB_EXTERN int wb_map_tensor(const wb_mapping *m, size_t i, wb_tensor *t);
/* Index in m's table of the tensor whose target key is name, found through
 * a hash table; -1 when absent, or when m or name is NULL. */
WB_EXTERN long wb_map_find(const wb_mapping *m, const char *name);
/* Value of the version's metadata entry key (the publisher's metadata,
 * without the reserved keys), belonging to m; NULL when there is no such
 * entry, m or key is NULL, or m is a WB_ELOAD report. */
WB_EXTERN const char *wb_map_meta(const wb_mapping *m, const char *key);
/* Metadata entries of m (0 for NULL and for a WB_ELOAD report). */
WB_EXTERN size_t wb_map_meta_count(const wb_mapping *m);
/* Stores entry i (0..wb_map_meta_count() - 1) of m's metadata in *key and
 * *value (either pointer may be NULL to skip it); the strings belong to m.
 * Returns 0, or WB_EINVAL for a NULL m or an i out of range. */
WB_EXTERN int wb_map_meta_at(const wb_mapping *m, size_t i, const char **key,
                             const char **value);

/* The load report. */
typedef enum {
    WB_KEYS_MISSING,      /* Target keys no source key reached. */
    WB_KEYS_UNEXPECTED,   /* Source keys (renamed) the target lacks. */
    WB_KEYS_MISMATCHED,   /* Same key, different shape. */
    WB_KEYS_CAST,         /* Same key and shape, converted dtype. */
    WB_KEYS_ALIASED,      /* Target keys sharing a source (tied). */
    WB_KEYS_UNUSED_RULES, /* Rules that matched no key, each described as
                             'line 3: rename "a" -> "b"' (or "rule 3: "
                             for rules from wb_rules_* calls). */
    WB_KEYS_COUNT
} wb_keyset;
/* Keys in set which (a wb_keyset) of m's load report; 0 for a NULL m, a
 * which out of range, and for a mapping made without a schema or rules,
 * whose report is empty. */
WB_EXTERN size_t wb_map_keys_count(const wb_mapping *m, int which);
/* Key i (0..wb_map_keys_count() - 1) of set which of m's report, belonging
 * to m; NULL for a NULL m or a which or i out of range. */
WB_EXTERN const char *wb_map_key(const wb_mapping *m, int which, size_t i);
/* PyTorch-format error text of a WB_ELOAD report, belonging to m; "" when
 * the load succeeded and for a NULL m. */
WB_EXTERN const char *wb_map_error_text(const wb_mapping *m);

/* The version's whole safetensors image (header and data, exactly what a
 * .safetensors file holds) as mapped by wb_map(): *data points to its
 * first byte inside m's mapping and *len is its size, at most the mapped
 * segment's (which is rounded up to whole 2 MiB).  It belongs to m and is
 * valid until wb_unmap(); for a copy-on-write mapping it shows this
 * process's own writes.  Returns 0; WB_EINVAL for a NULL argument;
 * WB_ESTATE for a plan, a WB_ELOAD report or a mapping made with a schema
 * or rules; or WB_ECORRUPT when the segment does not hold a valid header
 * length.  *data and *len are set only on success. */
WB_EXTERN int wb_map_image(const wb_mapping *m, const void **data, size_t *len);

/* Unmaps and frees m.  Every pointer read from it (tensor data, names,
 * metadata, report keys, the image) is invalid afterwards; other threads
 * must be done with it.  Accepts NULL.
 *
 * Holds.  A mapping made without WB_MAP_PLAN (that is, not a plan nor a
 * WB_ELOAD report) holds its version in the daemon: a version that
 * retention retires or wb_drop() removes stays readable here, and its
 * memory stays charged to the daemon's limit, until every process holding
 * it has let go; wb_holders() lists the holds.  The mapping keeps a pipe
 * descriptor (O_CLOEXEC) that the daemon watches: wb_unmap() closes it
 * after unmapping, process exit closes it however the process ends, and a
 * fork()ed child inherits it with the mapping, so that the hold lasts
 * until the parent has unmapped and the child has unmapped or exited.
 * exec() closes it (the mapping is gone too).  Closing the client does
 * not end a hold.  The descriptor counts against this process's
 * RLIMIT_NOFILE like any other: one per mapping held.  Each hold costs
 * the daemon a descriptor too: wb_map() and
 * wb_load() fail with WB_ETOOBIG when this user already holds the most
 * mappings the daemon allows one user (wbrokerd --max-holds-per-user),
 * and with WB_ESYS (wb_sys_errno() EMFILE) when the daemon is out of
 * descriptors. */
WB_EXTERN void wb_unmap(wb_mapping *m);

/* ---------------------------------------------------------------- inspect */

typedef struct wb_model_info {
    char *name;         /* Model name. */
    uint64_t latest;    /* Latest committed version. */
    uint64_t nversions; /* Committed versions listed (retired ones are
                           not). */
    uint64_t tensors;   /* Tensors in the latest version. */
    uint64_t bytes;     /* Tensor bytes of the latest version. */
    uint64_t readers;   /* Processes holding a mapping of any of its
                           versions, retired ones included (see
                           wb_holders()); connected or not. */
    uint64_t pinned;    /* Pinned versions among nversions (0 from a
                           daemon older than pins). */
    uint32_t owner;     /* Uid of the user who first published it, who
                           with the admins alone may publish further
                           versions, pin or remove it (WB_NO_OWNER from a
                           daemon older than ownership). */
    char digest[33];    /* XXH3-128 of the latest version's safetensors
                           image, 32 lowercase hex digits ("" from a
                           daemon older than digests). */
} wb_model_info;

#define WB_NO_OWNER UINT32_MAX /* wb_model_info.owner when unknown. */

/* Lists the models that hold at least one committed version.  On success
 * *out is a new array of *n entries (possibly none) that belongs to the
 * caller: free it with wb_model_info_free(*out, *n).  Fails with WB_EINVAL
 * when c, out or n is NULL, and with the transport errors; on failure
 * *out is NULL and *n is 0 (when they are not NULL). */
WB_EXTERN int wb_list(wb_client *c, wb_model_info **out, size_t *n);
/* Frees an array of n entries from wb_list() and their names.  Accepts
 * NULL. */
WB_EXTERN void wb_model_info_free(wb_model_info *v, size_t n);

typedef struct wb_status {
    char version[32];      /* Daemon version string. */
    double uptime;         /* Seconds since start. */
    uint64_t memory_used;  /* Bytes of shared memory held. */
    uint64_t memory_limit; /* Configured limit in bytes. */
    uint64_t memory_shmem; /* Bytes the kernel has allocated to the
                            * daemon's segments (what it really holds:
                            * 0 from a daemon that does not say). */
    uint64_t models;       /* Models held. */
    uint64_t versions;     /* Committed versions held. */
    uint64_t clients;      /* Connected clients. */
    uint32_t pid;          /* Daemon's process id. */
} wb_status;

/* Fills *out with the daemon's status (zeroed first): memory_used is what
 * the daemon charges to its limit, memory_shmem what the kernel has
 * allocated to its segments.  Fails with WB_EINVAL when c or out is NULL,
 * with WB_EPROTO when the reply is malformed, and with the transport
 * errors. */
WB_EXTERN int wb_get_status(wb_client *c, wb_status *out);

/* One counter of the daemon's, cumulative since it started. */
typedef struct wb_counter {
    char *name;     /* "requests.map", "errors.ENOMODEL", "bytes.4k", ... */
    uint64_t value; /* Its count (bytes for bytes.*). */
} wb_counter;

/* The daemon's counters, for graphs: requests by op (requests.OP),
 * error replies by code (errors.ENAME), the bytes of its segments by
 * page size (bytes.4k), the holds in progress (holds: mappings processes
 * keep) and the bytes still charged for versions that were retired or
 * dropped but are held (bytes.retired).  Counters that are 0 may be left out.
 * *out is an array of *n entries; free it with wb_counters_free().  Fails with
 * WB_EINVAL for a NULL argument, WB_EPROTO for a malformed reply,
 * WB_ENOMEM, and the transport errors. */
WB_EXTERN int wb_get_counters(wb_client *c, wb_counter **out, size_t *n);
/* Frees the n counters of v that wb_get_counters() returned, names and
 * all.  Accepts NULL. */
WB_EXTERN void wb_counters_free(wb_counter *v, size_t n);

/* Drops version of model, or every version of it when version is 0, so
 * that no new mapping can be made of it; the memory is freed, and refunded
 * to the limit, when the last existing mapping of it goes (its holds end:
 * see wb_unmap()), and those mappings stay valid.  A pinned version is
 * dropped too: a pin only protects from retention.  Dropping a
 * model's last version removes the model from the list, but version
 * numbers are never reused: the next publish of that name goes on from its
 * last number (the daemon remembers the last number of up to 4,096 names
 * that hold no version, and up to 1,024 per user who committed their last
 * version, forgetting the oldest first).  Fails with
 * WB_EINVAL when c or model is NULL; WB_ENAME for an invalid model name;
 * WB_ENOMODEL when no model has that name; WB_ENOVERSION when it has no
 * such version; and with the transport errors. */
WB_EXTERN int wb_drop(wb_client *c, const char *model, uint64_t version);

/* Waits until model (a valid name; it need not exist yet) has a committed
 * version newer than after, and stores the latest version in *version:
 * when one is already there it returns at once, with the latest, which
 * may be more than after + 1.  timeout_ms < 0 waits forever; 0 does not
 * wait; otherwise after timeout_ms milliseconds without such a version it
 * returns 0 with *version == after.  The handle is busy meanwhile.  Fails
 * with WB_EINVAL when c, model or version is NULL; WB_ENAME for an
 * invalid model name; WB_ETOOBIG when the model does not exist yet and
 * the daemon already holds its maximum of 4,096 models; WB_ECANCELED when
 * wb_watch_cancel() ended it (see there); and the transport errors. */
WB_EXTERN int wb_watch(wb_client *c, const char *model, uint64_t after,
                       int timeout_ms, uint64_t *version);
/* Ends a wb_watch() on c: one that another thread is waiting in returns
 * WB_ECANCELED at once (within milliseconds).  Its reply is still due on
 * the connection, so that connection is dropped, and the next call on c
 * reconnects (see "Reconnecting" above); a reply that has already begun
 * to arrive wins, and the cancel is then kept for the next wb_watch().
 * When no wb_watch() is running, the next one on c returns WB_ECANCELED
 * at once without sending anything, so that a cancel made just before
 * the watch starts is not lost; it does so once however many cancels
 * came before, and other calls ignore a pending cancel.  Only wb_watch()
 * is cancellable.  Thread-safe and async-signal-safe (it writes to an
 * eventfd inside c and keeps errno), the one call on c that may run while
 * another thread uses c; c must stay open until it returns.  Returns 0,
 * or WB_EINVAL for a NULL c. */
WB_EXTERN int wb_watch_cancel(wb_client *c);

/* ---------------------------------------------------------------- versions
 * and holders */

/* Pins version (0: the latest) of model so that retention (wbrokerd
 * --keep N, which retires the oldest unpinned versions beyond N at each
 * commit) never retires it.  A pin does not stop wb_drop().  Pinning a
 * pinned version succeeds and changes nothing.  Fails with WB_EINVAL when
 * c or model is NULL; WB_ENAME for an invalid model name; WB_ENOMODEL when
 * no model has that name; WB_ENOVERSION when it lists no such version
 * (retired versions are not listed); and the transport errors. */
WB_EXTERN int wb_pin(wb_client *c, const char *model, uint64_t version);
/* Removes the pin of version (0: the latest) of model; unpinning an
 * unpinned version succeeds.  Retention then runs at once, as after a
 * commit: with more than N unpinned versions listed the oldest are
 * retired, the version just unpinned included when it is among them.
 * Fails as wb_pin(). */
WB_EXTERN int wb_unpin(wb_client *c, const char *model, uint64_t version);

/* One hold: a mapping some process keeps of a version (see wb_unmap()). */
typedef struct wb_holder {
    uint32_t pid;     /* Process that made the mapping (a fork()ed child
                         that inherited it is not named). */
    uint32_t uid;     /* Its user id. */
    char *comm;       /* Its command name when it mapped (/proc/PID/comm,
                         "?" when unknown). */
    char *model;      /* Model name. */
    uint64_t version; /* Version held (possibly retired or dropped). */
    uint64_t bytes;   /* Bytes of shared memory the mapping covers. */
    uint64_t since;   /* When it was made, seconds since the epoch. */
} wb_holder;

/* Lists the holds on versions of model, or on every model when model is
 * NULL, newest first: those of the caller's own processes, and every
 * hold of the models it owns; an admin (root, the daemon's user, or an
 * admin of every model by the access policy) sees them all.  On success *out is
 * a new array of *n entries (possibly none): free it with wb_holders_free(*out,
 * *n).  Fails with WB_EINVAL when c, out or n is NULL; WB_ENAME for an invalid
 * model name; WB_ENOMODEL when no model has that name (a model whose versions
 * were all dropped or retired is found while they are held); and the transport
 * errors; on failure *out is NULL and *n is 0 (when they are not NULL). */
WB_EXTERN int wb_holders(wb_client *c, const char *model, wb_holder **out,
                         size_t *n);
/* Frees n entries from wb_holders() and their strings.  Accepts NULL. */
WB_EXTERN void wb_holders_free(wb_holder *v, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* WBROKER_H */
