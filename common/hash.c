/* hash.c -- String-keyed open-addressing hash table. */
#include "hash.h"

#include <stdlib.h>
#include <string.h>

#include "wbroker.h"

uint64_t wb__hash_bytes(const char *s, size_t len) {
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

int wb__ht_init(wb__htab *h, size_t expect) {
    size_t cap = WB_HASH_MIN_CAP;
    while (cap / 2 < expect) {
        if (cap > SIZE_MAX / 2 / sizeof(wb__hslot))
            return WB_ENOMEM;
        cap *= 2;
    }
    h->v = calloc(cap, sizeof *h->v);
    if (h->v == NULL)
        return WB_ENOMEM;
    h->cap = cap;
    h->n = 0;
    return 0;
}

void wb__ht_free(wb__htab *h) {
    free(h->v);
    memset(h, 0, sizeof *h);
}

/* Returns the slot holding key, or the empty slot where it would go. */
static wb__hslot *ht_slot(const wb__htab *h, const char *key, size_t len,
                          uint64_t hash) {
    size_t mask = h->cap - 1;
    for (size_t i = (size_t)hash & mask;; i = (i + 1) & mask) {
        wb__hslot *s = &h->v[i];
        if (s->key == NULL ||
            (s->hash == hash && s->len == len && memcmp(s->key, key, len) == 0))
            return s;
    }
}

wb__hslot *wb__ht_find(const wb__htab *h, const char *key, size_t len) {
    if (h->cap == 0)
        return NULL;
    wb__hslot *s = ht_slot(h, key, len, wb__hash_bytes(key, len));
    return s->key != NULL ? s : NULL;
}

/* Doubles the table. */
static int ht_grow(wb__htab *h) {
    wb__htab nh;
    if (wb__ht_init(&nh, h->cap) != 0)
        return WB_ENOMEM;
    for (size_t i = 0; i < h->cap; i++)
        if (h->v[i].key != NULL)
            *ht_slot(&nh, h->v[i].key, h->v[i].len, h->v[i].hash) = h->v[i];
    nh.n = h->n;
    free(h->v);
    *h = nh;
    return 0;
}

int wb__ht_put(wb__htab *h, const char *key, size_t len, size_t val,
               size_t *old) {
    if (h->cap == 0 && wb__ht_init(h, 0) != 0)
        return WB_ENOMEM;
    if ((h->n + 1) * 2 > h->cap && ht_grow(h) != 0)
        return WB_ENOMEM;
    uint64_t hash = wb__hash_bytes(key, len);
    wb__hslot *s = ht_slot(h, key, len, hash);
    if (s->key != NULL) {
        if (old != NULL)
            *old = s->val;
        return 0;
    }
    *s = (wb__hslot){key, len, hash, val};
    h->n++;
    return 1;
}
