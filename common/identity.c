/* identity.c -- The daemon's identity entry in a header, blanked out. */
#include "identity.h"

#include <string.h>

#include "wbroker.h"

int wb__identity_span(const uint8_t *hdr, size_t len, size_t *start_out,
                      size_t *end_out) {
    if (len < 8)
        return 0;
    uint64_t n = 0;
    for (int i = 0; i < 8; i++)
        n |= (uint64_t)hdr[i] << (8 * i);
    if (n > len - 8)
        n = len - 8;
    /* The key followed by a string value can only be a metadata entry: a
     * tensor's value is an object, and quotes inside strings are escaped. */
    static const char key[] = "\"" WB_VERSION_KEY "\":\"";
    size_t klen = sizeof(key) - 1;
    const uint8_t *k = memmem(hdr + 8, (size_t)n, key, klen);
    if (k == NULL)
        return 0;
    size_t start = (size_t)(k - hdr), end = start + klen, stop = 8 + (size_t)n;
    while (end < stop && hdr[end] != '"')
        end += hdr[end] == '\\' ? 2 : 1;
    if (end >= stop)
        return 0;
    end++; /* The closing quote. */
    if (hdr[start - 1] == ',')
        start--; /* The entry follows another. */
    else if (end < stop && hdr[end] == ',')
        end++; /* The entry comes first. */
    *start_out = start;
    *end_out = end;
    return 1;
}

int wb__blank_identity(uint8_t *hdr, size_t len) {
    size_t start, end;
    if (!wb__identity_span(hdr, len, &start, &end))
        return 0;
    memset(hdr + start, ' ', end - start);
    return 1;
}
