/* hash.h -- A string-keyed open-addressing hash table, shared by the daemon
 * and the client library.
 *
 * Keys are borrowed byte strings (not necessarily NUL-terminated) that must
 * outlive the table; values are size_t.  Linear probing, load factor at
 * most 1/2, FNV-1a 64-bit hashing.  No deletion: every user builds a table
 * once and reads it. */
#ifndef WB_COMMON_HASH_H
#define WB_COMMON_HASH_H

#include <stddef.h>
#include <stdint.h>

#define WB_HASH_MIN_CAP 16 /* Smallest table, in slots. */

/* One slot; key NULL means empty. */
typedef struct wb__hslot {
    const char *key; /* Borrowed key bytes. */
    size_t len;      /* Bytes of key. */
    uint64_t hash;   /* wb__hash_bytes(key, len). */
    size_t val;      /* Value stored for the key. */
} wb__hslot;

typedef struct wb__htab {
    wb__hslot *v; /* cap slots. */
    size_t cap;   /* Slots, a power of two (0: unallocated). */
    size_t n;     /* Keys stored. */
} wb__htab;

/* FNV-1a, 64 bits (offset basis 14695981039346656037). */
uint64_t wb__hash_bytes(const char *s, size_t len);

/* Allocates a table sized for about expect keys.  Returns 0 or
 * WB_ENOMEM. */
int wb__ht_init(wb__htab *h, size_t expect);
/* Frees the slots; the table may be initialised again.  Accepts a zeroed
 * table. */
void wb__ht_free(wb__htab *h);
/* Returns the slot of key, or NULL when the key is absent. */
wb__hslot *wb__ht_find(const wb__htab *h, const char *key, size_t len);
/* Inserts key -> val unless key is there.  Returns 1 when inserted, 0 when
 * the key existed (*old, if not NULL, receives its value), or WB_ENOMEM
 * (the table is unchanged). */
int wb__ht_put(wb__htab *h, const char *key, size_t len, size_t val,
               size_t *old);

#endif
