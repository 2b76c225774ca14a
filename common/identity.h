/* identity.h -- The daemon's identity entry in a safetensors header, blanked
 * out.
 *
 * A version's image carries the daemon's identity under WB_VERSION_KEY in
 * its metadata (daemon/ident.h).  The identity names the version, not its
 * content: an export leaves it out, and the digest is computed without it,
 * so that a version's digest is the XXH3-128 of its exported file and two
 * versions of the same content have the same digest.  Both blank the entry
 * with spaces in place, keeping the header's length and so every offset. */
#ifndef WB_COMMON_IDENTITY_H
#define WB_COMMON_IDENTITY_H

#include <stddef.h>
#include <stdint.h>

/* Finds the WB_VERSION_KEY entry (and its separating comma) of the header
 * at hdr, len bytes: bytes [*start, *end) are what blanking replaces.
 * Returns 1 if there is one, else 0. */
int wb__identity_span(const uint8_t *hdr, size_t len, size_t *start,
                      size_t *end);
/* Blanks the WB_VERSION_KEY entry (and its separating comma) of the header
 * at hdr, len bytes: the 8-byte length and at least part of the JSON.
 * Returns 1 if it found and blanked one, else 0 (hdr unchanged). */
int wb__blank_identity(uint8_t *hdr, size_t len);

#endif
