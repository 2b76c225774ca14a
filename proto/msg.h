/* msg.h -- One codec per message of the wire protocol.
 *
 * Every request and reply of docs/protocol.md has a C struct here, an
 * encoder and a decoder, and the daemon and the client library both go
 * through them, so that no side packs or unpacks fields by hand (the tensor
 * table of a map reply, the list entries) and the two cannot drift.
 * Decoders check every field's type and every array's shape, never the
 * meaning (names, limits, ties: the daemon checks those and answers with
 * its own sentences).  Strings decode as views (wb__str) into the decoded
 * message, which must outlive the struct; arrays are allocated and freed
 * with the message's free function.  One reply has a second decoder
 * beside its general one, for speed: a successful map reply is read
 * straight from its bytes by wb__decode_map_rep_fast() (msg_fast.c),
 * which takes only what the general decoder would decode the same.
 * Encoders write the whole body ("op"/"id" or "id"/"err" included) into
 * a msgpack packer; those that stream a long table take a callback per
 * entry. */
#ifndef WB_PROTO_MSG_H
#define WB_PROTO_MSG_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#include "rules.h"
#include "wbroker.h"

/* A string inside a decoded message (not NUL-terminated). */
typedef struct wb__str {
    const char *p; /* Bytes. */
    size_t n;      /* Length. */
} wb__str;

/* Copies a view into a new NUL-terminated string (NULL on OOM). */
char *wb__str_dup(wb__str s);

/* ---------------------------------------------------------------- envelope */

/* Starts a request: a map of nfields + 2 entries, "op" and "id" first. */
void wb__pack_req_begin(msgpack_packer *pk, const char *op, uint64_t id,
                        size_t nfields);
/* Starts a reply: a map of nfields + 2 entries, "id" and "err" first; for
 * err != 0 add "msg" with wb__pack_key/wb__pack_cstr (count it). */
void wb__pack_rep_begin(msgpack_packer *pk, uint64_t id, int err,
                        size_t nfields);
/* The envelope of a decoded reply: its id, err and msg (empty if none).
 * Returns 0 or WB_EPROTO; then, when bad is not NULL, *bad names the
 * first field at fault, checked in the order "err" (absent, not an
 * integer, positive or below INT32_MIN), "id" (absent or not unsigned),
 * "msg" (not a string), so that a client can say what was wrong. */
int wb__decode_rep_envelope(const msgpack_object *root, uint64_t *id, int *err,
                            wb__str *msg, const char **bad);

/* Packs a whole error reply: code (< 0), the sentence msg and, for
 * WB_ESYS, the system's errno (sys_errno > 0; 0 leaves it out). */
void wb__pack_error_rep(msgpack_packer *pk, uint64_t id, int code,
                        const char *msg, int sys_errno);
/* The errno an error reply carries ("errno"), or 0 when it has none. */
int wb__decode_rep_errno(const msgpack_object *root);

/* ---------------------------------------------------------------- output */

/* Where a message is packed: msgpack-c's packer ignores what its writer
 * returns, so this buffer remembers a write that found no memory and drops
 * everything after it; a message is then whole, or known to be lost, never
 * sent cut short. */
typedef struct wb__pkbuf {
    msgpack_sbuffer sb; /* The bytes packed. */
    int failed;         /* 1 once a write did not fit in memory. */
} wb__pkbuf;

/* Empties b and points pk at it. */
void wb__pkbuf_init(wb__pkbuf *b, msgpack_packer *pk);
/* The packer's writer (data is a wb__pkbuf). */
int wb__pkbuf_write(void *data, const char *buf, size_t len);

/* ---------------------------------------------------------------- hello */

typedef struct wb__hello_req {
    uint64_t proto; /* WB_PROTO_VERSION of the client. */
    wb__str client; /* Client library version. */
} wb__hello_req;

typedef struct wb__hello_rep {
    uint64_t proto; /* Protocol the daemon speaks on this connection. */
    wb__str server; /* Daemon version. */
    uint32_t pid;   /* Daemon's process id. */
} wb__hello_rep;

/* proto: the protocol the client asks to speak. */
void wb__pack_hello_req(msgpack_packer *pk, uint64_t id, uint64_t proto,
                        const char *client_version);
/* Returns 0 or WB_EPROTO (proto is required, client is not). */
int wb__decode_hello_req(const msgpack_object *root, wb__hello_req *out);
/* proto: what the daemon speaks on this connection (the client's). */
void wb__pack_hello_rep(msgpack_packer *pk, uint64_t id, uint32_t pid,
                        uint64_t proto);
/* Returns 0 or WB_EPROTO (every field required; pid fits 32 bits). */
int wb__decode_hello_rep(const msgpack_object *root, wb__hello_rep *out);

/* ---------------------------------------------------------------- publish */

/* A declared tie: tensor alias shares the bytes of the earlier stored. */
typedef struct wb__tie {
    uint64_t alias;  /* Index of the tied tensor. */
    uint64_t stored; /* Index of the tensor it shares. */
} wb__tie;

typedef struct wb__publish_req {
    wb__str model;  /* Model name. */
    wb__tinfo *t;   /* Declared tensors (names allocated). */
    size_t n;       /* Entries in t. */
    wb__str *mkeys; /* Metadata keys. */
    wb__str *mvals; /* Metadata values. */
    size_t nmeta;   /* Metadata entries. */
    wb__tie *ties;  /* Declared ties. */
    size_t nties;   /* Entries in ties. */
} wb__publish_req;

/* Packs a publish; ties may be NULL when nties is 0. */
void wb__pack_publish_req(msgpack_packer *pk, uint64_t id, const char *model,
                          const wb_tensor_spec *t, size_t n, const wb_kv *meta,
                          size_t nmeta, const wb__tie *ties, size_t nties);
/* Decodes a publish.  Returns 0, WB_EPROTO (shape of the message), the
 * tensor entry's error (WB_ENAME, WB_EDTYPE, WB_ESHAPE) with *bad set to
 * its index, WB_ETOOBIG (more than WB_MAX_TENSORS or WB_MAX_META) or
 * WB_ENOMEM.  Free with wb__publish_req_free() in every case. */
int wb__decode_publish_req(const msgpack_object *root, wb__publish_req *out,
                           size_t *bad);
void wb__publish_req_free(wb__publish_req *r);

typedef struct wb__publish_rep {
    uint64_t pub;   /* Handle of the open publish. */
    uint64_t size;  /* Bytes of the segment. */
    uint64_t *offs; /* Absolute offset per declared tensor. */
    size_t n;       /* Entries in offs. */
} wb__publish_rep;

void wb__pack_publish_rep(msgpack_packer *pk, uint64_t id, uint64_t pub,
                          uint64_t size, const uint64_t *offs, size_t n);
/* Returns 0, WB_EPROTO or WB_ENOMEM.  Free with wb__publish_rep_free() in
 * every case. */
int wb__decode_publish_rep(const msgpack_object *root, wb__publish_rep *out);
void wb__publish_rep_free(wb__publish_rep *r);

/* ---------------------------------------------------------------- commit,
 * abort, drop, watch: small fixed messages */

void wb__pack_pub_req(msgpack_packer *pk, const char *op, uint64_t id,
                      uint64_t pub);
/* Reads the required "pub".  Returns 0 or WB_EPROTO. */
int wb__decode_pub_req(const msgpack_object *root, uint64_t *pub);
/* A reply with one unsigned field (commit: "version", drop: "dropped",
 * watch: "version"), or none when key is NULL (abort). */
void wb__pack_u64_rep(msgpack_packer *pk, uint64_t id, const char *key,
                      uint64_t value);
/* Reads the field key (required) into *value; with key NULL (abort)
 * there is nothing to read and *value is set to 0.  Returns 0 or
 * WB_EPROTO. */
int wb__decode_u64_rep(const msgpack_object *root, const char *key,
                       uint64_t *value);

typedef struct wb__model_req {
    wb__str model;    /* Model name. */
    uint64_t version; /* 0: latest (map) or all (drop). */
} wb__model_req;

void wb__pack_drop_req(msgpack_packer *pk, uint64_t id, const char *model,
                       uint64_t version);
/* Decodes the model and version of a drop or a map.  Returns 0, WB_EINVAL
 * (no model) or WB_EPROTO. */
int wb__decode_model_req(const msgpack_object *root, wb__model_req *out);

typedef struct wb__watch_req {
    wb__str model;      /* Model name. */
    uint64_t after;     /* Answer once latest > after. */
    int64_t timeout_ms; /* < 0 forever, 0 at once. */
} wb__watch_req;

void wb__pack_watch_req(msgpack_packer *pk, uint64_t id, const char *model,
                        uint64_t after, int64_t timeout_ms);
/* Returns 0, WB_EINVAL (no model) or WB_EPROTO; after defaults to 0 and
 * timeout_ms to -1 (forever). */
int wb__decode_watch_req(const msgpack_object *root, wb__watch_req *out);

/* ---------------------------------------------------------------- map */

typedef struct wb__map_req {
    wb__model_req mv;    /* Model and version. */
    int plan;            /* Dry run. */
    int strict;          /* strict=True (default 1). */
    int ignore_mismatch; /* ignore_mismatched_sizes=True. */
    int has_schema;      /* 1 if a target schema came. */
    wb__schema schema;   /* The target (owned). */
    int has_rules;       /* 1 if rules came. */
    wb__ruleset rules;   /* The rules (owned). */
    int hold;            /* 1 if the client asks for a hold (hold.h). */
} wb__map_req;

/* Packs a map request; schema and rules may be NULL.  Unless plan, it asks
 * for a hold ("hold": true): the reply then brings the hold pipe's write
 * end. */
void wb__pack_map_req(msgpack_packer *pk, uint64_t id, const char *model,
                      uint64_t version, int plan, int strict,
                      int ignore_mismatch, const wb__schema *schema,
                      const wb__ruleset *rules);
/* Returns 0, WB_EINVAL (no model), WB_EPROTO, WB_ERULE, WB_ETOOBIG, a
 * schema entry's error, or WB_ENOMEM.  Free with wb__map_req_free(). */
int wb__decode_map_req(const msgpack_object *root, wb__map_req *out);
void wb__map_req_free(wb__map_req *r);

/* One row of a map reply's tensor table. */
typedef struct wb__map_entry {
    wb__str target;             /* Target key. */
    wb__str source;             /* Source key. */
    int dtype;                  /* Dtype handed out. */
    int ndim;                   /* Dimensions. */
    int64_t shape[WB_MAX_DIMS]; /* Sizes. */
    uint64_t seg;               /* Index into the reply's segments. */
    uint64_t offset;            /* Byte offset in that segment. */
    uint64_t nbytes;            /* Bytes. */
    int cast;                   /* 1 if converted. */
} wb__map_entry;

/* The report of a map reply (also of a load error). */
typedef struct wb__report {
    wb__str *keys[WB_KEYS_COUNT]; /* Keys per wb_keyset. */
    size_t n[WB_KEYS_COUNT];      /* Entries of each. */
    wb__str text;                 /* PyTorch-format error text. */
} wb__report;

/* The report as the daemon packs it: each keyset as an array of C
 * strings (NULL arrays count as empty). */
typedef struct wb__report_src {
    char *const *keys[WB_KEYS_COUNT]; /* Keys per wb_keyset. */
    size_t n[WB_KEYS_COUNT];          /* Entries of each. */
    const char *text;                 /* Error text, "" if none. */
} wb__report_src;

typedef struct wb__map_rep {
    uint64_t version;  /* Version mapped. */
    uint64_t *segs;    /* Size of each segment. */
    size_t nsegs;      /* Entries in segs. */
    wb__map_entry *t;  /* Tensor table. */
    size_t n;          /* Entries in t. */
    wb__str *mkeys;    /* Metadata keys. */
    wb__str *mvals;    /* Metadata values. */
    size_t nmeta;      /* Metadata entries. */
    wb__report report; /* The load report. */
    int hold;          /* 1 if one more descriptor than segments came:
                          the write end of the hold pipe, last. */
    char pages[16];    /* Backend of the version's segment ("hugetlb",
                          "thp", "4k"), "" from a daemon older than it. */
    uint64_t huge;     /* Bytes of the segments in 2 MiB pages. */
} wb__map_rep;

/* Packs a map reply with n table rows produced by row(arg, i, &entry);
 * hold says that the hold pipe's write end follows the segments'
 * descriptors. */
void wb__pack_map_rep(msgpack_packer *pk, uint64_t id, uint64_t version,
                      int hold, const uint64_t *segs, size_t nsegs, size_t n,
                      void (*row)(void *arg, size_t i, wb__map_entry *e),
                      void *arg, char *const *mkeys, char *const *mvals,
                      size_t nmeta, const wb__report_src *report);
/* The same with the page backend of the version's segment (NULL: none)
 * and the bytes of the mapped segments the kernel holds in 2 MiB pages. */
void wb__pack_map_rep_pages(msgpack_packer *pk, uint64_t id, uint64_t version,
                            int hold, const uint64_t *segs, size_t nsegs,
                            size_t n,
                            void (*row)(void *arg, size_t i, wb__map_entry *e),
                            void *arg, char *const *mkeys, char *const *mvals,
                            size_t nmeta, const wb__report_src *report,
                            const char *pages, uint64_t huge);
/* The same in two parts, so that a daemon can keep the second: the head
 * (id, page backend, hold) changes with each request, the tail (version,
 * segments, tensor table, metadata, report) not for a version mapped
 * whole.  Head then tail are the bytes of wb__pack_map_rep_pages(). */
void wb__pack_map_rep_head(msgpack_packer *pk, uint64_t id, int hold,
                           const char *pages, uint64_t huge);
void wb__pack_map_rep_tail(msgpack_packer *pk, uint64_t version,
                           const uint64_t *segs, size_t nsegs, size_t n,
                           void (*row)(void *arg, size_t i, wb__map_entry *e),
                           void *arg, char *const *mkeys, char *const *mvals,
                           size_t nmeta, const wb__report_src *report);
/* Packs the reply to a strict load that failed: WB_ELOAD, the report and
 * its text (also as "msg"), and the version. */
void wb__pack_load_error_rep(msgpack_packer *pk, uint64_t id, uint64_t version,
                             const wb__report_src *report);
/* Decodes a map reply (or, with err WB_ELOAD, only version and report).
 * Returns 0, WB_EPROTO or WB_ENOMEM.  Free with wb__map_rep_free(). */
int wb__decode_map_rep(const msgpack_object *root, int load_error,
                       wb__map_rep *out);
void wb__map_rep_free(wb__map_rep *r);
/* Decodes the whole body of a frame (len bytes, no header) when it is a
 * successful map reply in the shape wbrokerd sends (msg_fast.c), straight
 * from the bytes, without msgpack-c: *id is its id (never 0).  Strings
 * are views into body.  Returns 0; 1 when the body is anything else (a
 * failure, another shape, malformed), which the general path
 * (wb__msg_decode, the envelope, wb__decode_map_rep) must then decode,
 * with the same result on every body this takes; or WB_ENOMEM.  Free
 * with wb__map_rep_free() after 0 (nothing to free otherwise). */
int wb__decode_map_rep_fast(const uint8_t *body, size_t len, uint64_t *id,
                            wb__map_rep *out);

/* ---------------------------------------------------------------- list */

/* Packs a list request: the envelope and "digest": true, which asks for
 * rows of nine (a daemon older than digests ignores it). */
void wb__pack_list_req(msgpack_packer *pk, uint64_t id);
/* 1 if a list request asks for digests: rows of eight go to older clients,
 * whose decoders refuse longer ones. */
int wb__decode_list_req(const msgpack_object *root);

typedef struct wb__list_entry {
    wb__str name;      /* Model name. */
    uint64_t latest;   /* Latest version. */
    uint64_t versions; /* Versions held. */
    uint64_t tensors;  /* Tensors of the latest. */
    uint64_t bytes;    /* Bytes of the latest. */
    uint64_t readers;  /* Processes holding any of its versions. */
    uint64_t pinned;   /* Pinned versions (0 from an older daemon). */
    uint64_t owner;    /* Uid of its first publisher (WB_NO_OWNER from an
                          older daemon). */
    wb__str digest;    /* 32 hex digits of the latest version's digest;
                          p NULL: not sent (an older daemon or client). */
} wb__list_entry;

/* Packs a list reply of n entries produced by row(arg, i, &entry), for a
 * client of protocol proto (1: the six fields it knows). */
void wb__pack_list_rep(msgpack_packer *pk, uint64_t id, size_t n,
                       void (*row)(void *arg, size_t i, wb__list_entry *e),
                       void *arg, uint64_t proto);
/* Decodes a list reply into *out (allocated, *n entries; free()).
 * Returns 0, WB_EPROTO or WB_ENOMEM; on failure *out is NULL and *n 0. */
int wb__decode_list_rep(const msgpack_object *root, wb__list_entry **out,
                        size_t *n);

/* ---------------------------------------------------------------- status */

/* Packs a status request: the envelope alone. */
void wb__pack_status_req(msgpack_packer *pk, uint64_t id);

typedef struct wb__status_rep {
    wb__str server;    /* Daemon version. */
    double uptime;     /* Seconds since start. */
    uint64_t used;     /* Bytes charged to the limit. */
    uint64_t limit;    /* The limit. */
    uint64_t shmem;    /* Bytes the kernel allocated to segments. */
    uint64_t models;   /* Models holding versions. */
    uint64_t versions; /* Versions held. */
    uint64_t clients;  /* Connected clients. */
    uint32_t pid;      /* Daemon's process id. */
    wb__str *cnames;   /* Counter names ("requests.map", ...). */
    uint64_t *cvalues; /* Their counts. */
    size_t ncounters;  /* Entries of cnames and cvalues. */
} wb__status_rep;

/* Packs a status reply; its ncounters counters (cnames/cvalues of st are
 * ignored) come from counter(arg, i, &name, &value). */
void wb__pack_status_rep(msgpack_packer *pk, uint64_t id,
                         const wb__status_rep *st,
                         void (*counter)(void *arg, size_t i, wb__str *name,
                                         uint64_t *value),
                         void *arg);
/* Frees the counters a decoded status holds. */
void wb__status_rep_free(wb__status_rep *st);
/* Returns 0, WB_EPROTO or WB_ENOMEM.  Every field is required but shmem
 * and counters: a reply without them (from an older daemon) decodes with
 * 0 and none.  Free with wb__status_rep_free() in every case. */
int wb__decode_status_rep(const msgpack_object *root, wb__status_rep *out);

/* ---------------------------------------------------------------- pin */

typedef struct wb__pin_req {
    wb__model_req mv; /* Model and version (0: the latest). */
    int pin;          /* 1 to pin, 0 to unpin. */
} wb__pin_req;

void wb__pack_pin_req(msgpack_packer *pk, uint64_t id, const char *model,
                      uint64_t version, int pin);
/* Returns 0, WB_EINVAL (no model) or WB_EPROTO (no "pin" boolean).  The
 * reply is a wb__pack_u64_rep with "version", the version (un)pinned. */
int wb__decode_pin_req(const msgpack_object *root, wb__pin_req *out);

/* ---------------------------------------------------------------- holders */

/* Packs a holders request; model NULL asks for every model's holds. */
void wb__pack_holders_req(msgpack_packer *pk, uint64_t id, const char *model);
/* Reads the optional "model" (has_model 0 when absent).  Returns 0 or
 * WB_EPROTO. */
int wb__decode_holders_req(const msgpack_object *root, wb__str *model,
                           int *has_model);

/* One hold: a mapping that some process keeps of a version. */
typedef struct wb__holder_entry {
    uint32_t pid;     /* Process that mapped it (SO_PEERCRED). */
    uint32_t uid;     /* Its user. */
    wb__str comm;     /* Its command name at map time. */
    wb__str model;    /* Model name. */
    uint64_t version; /* Version held. */
    uint64_t bytes;   /* Bytes of the segments mapped. */
    uint64_t since;   /* Wall-clock seconds since the epoch. */
} wb__holder_entry;

/* Packs a holders reply of n rows produced by row(arg, i, &entry). */
void wb__pack_holders_rep(msgpack_packer *pk, uint64_t id, size_t n,
                          void (*row)(void *arg, size_t i, wb__holder_entry *e),
                          void *arg);
/* Decodes a holders reply into *out (allocated, *n entries; free()).
 * Returns 0, WB_EPROTO or WB_ENOMEM; on failure *out is NULL and *n 0. */
int wb__decode_holders_rep(const msgpack_object *root, wb__holder_entry **out,
                           size_t *n);

#endif
