/* registry.h -- Models, versions, references and memory accounting.
 *
 * The registry is the daemon's state that outlives any one connection: the
 * models by name, each model's committed versions, the dtype-converted
 * copies cached per version, and the bytes charged against the memory
 * limit.  It knows nothing of connections or requests: the request
 * handlers call down into it, never the other way round.
 *
 * Lifetimes are reference counts, asserted SQLite-style.  A version is
 * referenced by its model's list while it is listed, by every request or
 * thread-pool job that still reads it, and by every hold (hold.h: a
 * process that maps it); it is freed, and its memory refunded, when the
 * last reference goes.  A version that left its list (dropped, or retired
 * by --keep) and is referenced by holds alone closes its segments at once,
 * so that the kernel frees the pages when the last mapping goes, while its
 * bytes stay charged until the last hold ends.  A version keeps a reference to
 * its model, so a model outlives every version and job that names it.
 * Everything here runs on the event-loop thread; thread-pool jobs only
 * read what they were handed. */
#ifndef WB_DAEMON_REGISTRY_H
#define WB_DAEMON_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "../proto/rules.h"
#include "segment.h"

#define WB_MAX_MODELS 4096 /* Models holding versions at once. */
/* Names remembered after their last version went, so that numbers never
 * repeat (the oldest is forgotten): in all, and per user (the one who
 * committed the name's last version), so that one user who publishes and
 * drops many names forgets their own first, not everyone's. */
#define WB_MAX_MODEL_RECORDS 4096
#define WB_MAX_MODEL_RECORDS_PER_USER 1024

struct wb__model;
struct wb__watch;
struct conv_job;

/* A segment of dtype-converted copies, written by one conversion job. */
typedef struct wb__dseg {
    wb__segment seg;       /* Sealed once every copy is written. */
    uint64_t accounted;    /* Bytes charged to the memory limit. */
    uint32_t charged_to;   /* Uid whose quota they count against. */
    int ready;             /* 1 once converted and sealed. */
    struct conv_job *job;  /* The job writing it, until it is done. */
    struct wb__dseg *next; /* Next in the version's list. */
} wb__dseg;

/* A dtype-converted copy of one tensor of a version. */
typedef struct wb__derived {
    int dtype_from;               /* Source dtype. */
    int dtype_to;                 /* Converted dtype. */
    size_t src;                   /* Source tensor index (stored order). */
    wb__dseg *ds;                 /* Segment holding the copy. */
    uint64_t offset;              /* Where in it. */
    uint64_t nbytes;              /* Bytes of the converted tensor. */
    struct wb__derived *next_src; /* Next copy of the same source tensor. */
} wb__derived;

typedef struct wb__version {
    uint64_t number;          /* 1, 2, ... per model; 0 until committed. */
    struct wb__model *model;  /* Owning model (referenced; NULL while
                                 pending). */
    wb__segment seg;          /* The safetensors image. */
    size_t n;                 /* Tensors. */
    wb__tinfo *t;             /* Tensors in published order. */
    uint64_t *offset;         /* Absolute offset of each tensor. */
    uint64_t *nbytes;         /* Bytes of each tensor. */
    size_t *tie;              /* NULL, or per tensor the index of the one
                                 whose bytes it shares (its own if none). */
    uint64_t data_bytes;      /* Bytes stored (tied tensors once). */
    uint64_t image_len;       /* Bytes of the safetensors image. */
    char **mkeys;             /* Metadata keys. */
    char **mvals;             /* Metadata values. */
    size_t nmeta;             /* Metadata entries. */
    uint64_t accounted;       /* Bytes charged to the memory limit. */
    uint32_t charged_to;      /* Uid whose quota they count against (the
                                 publisher's). */
    int refs;                 /* Model's list + requests + jobs + holds. */
    int holds;                /* Holds among refs. */
    int listed;               /* 1 while in its model's list. */
    int pinned;               /* 1 if retention must leave it listed. */
    int closed;               /* 1 once its segments' descriptors are
                                 closed (unlisted, held only). */
    int mark;                 /* Scratch flag of one pass over holds. */
    wb__derived **by_src;     /* Per tensor, its converted copies (NULL
                                 until the first conversion). */
    wb__dseg *dsegs;          /* Segments holding them. */
    uint64_t id;              /* Opaque id, unique across restarts (ident.h). */
    uint8_t digest[16];       /* XXH3-128 of the image, set at commit. */
    int persisted;            /* 1 once --persist wrote its file. */
    int stored;               /* 1 while the service manager's descriptor
                                 store holds its segment (fdstore.h). */
    char *map_tail;           /* NULL, or the packed tail of the reply to
                                 a map of the whole version (op_map.c),
                                 kept since the version never changes. */
    size_t map_tail_len;      /* Bytes of map_tail. */
    struct wb__version *next; /* Next newer version of the model. */
} wb__version;

typedef struct wb__model {
    char *name;                 /* Model name. */
    uint64_t last_number;       /* Highest version number handed out. */
    uint32_t owner;             /* Uid of the first commit's publisher
                                   (WB_NO_OWNER before it), kept while
                                   the name is remembered. */
    wb__version *versions;      /* Committed versions, oldest first. */
    size_t nversions;           /* Versions in the list. */
    struct wb__watch *watchers; /* Clients waiting for a new version. */
    int refs;                   /* Versions + watchers + requests. */
    struct wb__model *next;     /* Next model (or record). */
} wb__model;

typedef struct wb__registry {
    wb__model *models;   /* Models and remembered names. */
    size_t nmodels;      /* Entries in models holding versions or
                            references. */
    size_t nrecords;     /* Entries in models holding neither. */
    uint64_t mem_used;   /* Bytes charged to the limit. */
    uint64_t mem_limit;  /* Effective limit in bytes. */
    uint64_t versions;   /* Committed versions listed. */
    uint64_t mem_pinned; /* Bytes charged for good: abandoned
                            segments sealed with pages a client may
                            still hold (status counter bytes.pinned). */
    uint64_t keep;       /* --keep: unpinned versions a commit leaves
                            per model (0: all). */
} wb__registry;

extern wb__registry wb__reg; /* The daemon's one registry. */

/* Looks a model up by name; NULL when absent.  A remembered name without
 * versions is found too (its last_number survives). */
wb__model *wb__model_find(const char *name);
/* Finds or creates the model and takes a reference on it.  Returns NULL
 * when WB_MAX_MODELS models are in use or memory ran out.  Release with
 * wb__model_unref(). */
wb__model *wb__model_acquire(const char *name);
void wb__model_ref(wb__model *m);
/* Drops a reference.  A model left with no versions and no references
 * becomes a record (name and last number only); the oldest records are
 * forgotten past WB_MAX_MODEL_RECORDS_PER_USER of its owner's and past
 * WB_MAX_MODEL_RECORDS in all. */
void wb__model_unref(wb__model *m);

/* Version number (0 = latest) of m, or NULL. */
wb__version *wb__version_find(const wb__model *m, uint64_t number);
wb__version *wb__version_latest(const wb__model *m);
/* Allocates an empty pending version with one reference. */
wb__version *wb__version_new(void);
void wb__version_ref(wb__version *v);
/* Drops a reference; the last one frees the version, closes its segments
 * and refunds their memory.  Accepts NULL. */
void wb__version_unref(wb__version *v);
/* Appends pending version v to m with the next number (v->model takes a
 * reference on m; the list takes over the caller's reference on v). */
void wb__version_commit(wb__model *m, wb__version *v);
/* Appends v, read back at start (restart.h), to m under number, which is
 * higher than any m lists; m's last number grows to it if lower. */
void wb__version_restore(wb__model *m, wb__version *v, uint64_t number);
/* Removes a listed version from its model and drops the list's
 * reference.  Requests, jobs and holds that hold v keep it alive. */
void wb__version_drop(wb__version *v);
/* Retires the oldest unpinned versions of m while it lists more than
 * wb__reg.keep unpinned ones (nothing when keep is 0).  Returns how many
 * it retired. */
size_t wb__retention_apply(wb__model *m);
/* Bytes charged for v and its converted copies. */
uint64_t wb__version_charged(const wb__version *v);
/* Pinned versions m lists. */
uint64_t wb__model_pinned(const wb__model *m);

/* Charges bytes against the limit.  Returns 0 or WB_ELIMIT (nothing
 * charged). */
int wb__mem_charge(uint64_t bytes);
/* Refunds bytes charged before. */
void wb__mem_refund(uint64_t bytes);

/* Gives up a segment that a client may still hold: empties and seals it
 * (wb__seg_release), closes it and refunds accounted bytes.  A segment
 * that was already sealed for good with pages in it keeps them for as long
 * as any holder likes: those bytes stay charged (mem_pinned). */
void wb__seg_abandon(wb__segment *seg, uint64_t accounted);

/* Bytes of shared memory the kernel has allocated to every segment the
 * daemon holds (versions, copies, publishes in progress). */
uint64_t wb__registry_shmem(void);
/* Models holding at least one committed version. */
size_t wb__registry_models_held(void);
/* Frees every version and model (at shut-down). */
/* Bytes charged to user uid (versions published, copies cast). */
void wb__usage_charge(uint32_t uid, uint64_t bytes);
void wb__usage_refund(uint32_t uid, uint64_t bytes);
uint64_t wb__usage_of(uint32_t uid);

void wb__registry_clear(void);

#endif
