/* state.h -- The state record: what changes after a commit.
 *
 * What is fixed at commit lives in each version's image (ident.h).  What
 * changes later lives here: per model name (remembered names included) its
 * last version number and owner; per listed version its id, number, pin,
 * publisher and digest; per version that left its list but is still held
 * its id, model, number, the bytes it still charges and to whom.  The
 * daemon renders it again after every change and keeps it in the service
 * manager's store (fdstore.h) and in --persist's directory (persist.h).
 *
 * The encoding is little-endian binary:
 *
 *   "WBSTATE\0", u32 format (WB_STATE_FORMAT), u64 sequence,
 *   u32 models, per model: str name, u64 last_number, u32 owner,
 *       u32 versions, per version: u64 id, u64 number, u8 pinned,
 *       u32 charged_to, 16 bytes digest;
 *   u32 retired, per entry: u64 id, str model, u64 number, u64 bytes,
 *       u32 uid;
 *   u64 XXH3-64 of every byte before it.
 *
 * where str is a u16 length and that many bytes (a valid model name).
 * Decoding trusts nothing: every count is checked against the bytes left
 * and the limits below before anything is allocated. */
#ifndef WB_DAEMON_STATE_H
#define WB_DAEMON_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define WB_STATE_FORMAT 1 /* Format this daemon writes and reads. */
#define WB_STATE_MAX_BYTES (256u << 20) /* Largest record decoded. */
#define WB_STATE_MAX_MODELS 16384       /* Models (and names) in one. */

typedef struct wb__state_version {
    uint64_t id;         /* Version id. */
    uint64_t number;     /* Its number. */
    int pinned;          /* 1 if pinned. */
    uint32_t charged_to; /* Publisher, charged for its bytes. */
    uint8_t digest[16];  /* Digest of its image. */
} wb__state_version;

typedef struct wb__state_model {
    char *name;           /* Model name (owned). */
    uint64_t last_number; /* Highest number handed out. */
    uint32_t owner;       /* Owner uid, or WB_NO_OWNER. */
    wb__state_version *v; /* Listed versions, oldest first (owned). */
    size_t nv;            /* Entries of v. */
} wb__state_model;

typedef struct wb__state_retired {
    uint64_t id;     /* Version id. */
    char *model;     /* Its model's name (owned). */
    uint64_t number; /* Its number. */
    uint64_t bytes;  /* Bytes it still charges. */
    uint32_t uid;    /* To whom. */
} wb__state_retired;

typedef struct wb__state {
    uint64_t seq;         /* Sequence number: higher is newer. */
    wb__state_model *m;   /* Models (owned). */
    size_t nm;            /* Entries of m. */
    wb__state_retired *r; /* Retired-but-held versions (owned). */
    size_t nr;            /* Entries of r. */
} wb__state;

/* Appends the encoding of st to out (out->oom on failure). */
void wb__state_encode(const wb__state *st, wb__buf *out);
/* Decodes len bytes at p into *out.  Returns 0, WB_EFORMAT with err set
 * (a bad magic, format, count, name, length or checksum), or WB_ENOMEM;
 * on failure *out holds nothing to free. */
int wb__state_decode(const uint8_t *p, size_t len, wb__state *out, char *err,
                     size_t errlen);
void wb__state_free(wb__state *st);
/* The model of st named name, or NULL. */
const wb__state_model *wb__state_model_find(const wb__state *st,
                                            const char *name);
/* The listed version with id in st (and its model in *m), or NULL. */
const wb__state_version *wb__state_version_find(const wb__state *st,
                                                uint64_t id,
                                                const wb__state_model **m);

/* Builds the record of the daemon's registry now, with sequence seq.
 * Returns 0 or WB_ENOMEM. */
int wb__state_of_registry(uint64_t seq, wb__state *out);

#endif
