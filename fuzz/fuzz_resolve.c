/* fuzz_resolve.c -- libFuzzer harness of a map request's rules and target
 * schema, from the wire through rule compilation (globs, PCRE2 regexes,
 * replacement templates) to the load plan and the PyTorch-format report.
 *
 * The input is a msgpack map request body as a client sends it.  It is
 * decoded with wb__decode_map_req(), as op_map.c does, and resolved
 * against a source table: the request's own "source" array of tensor
 * entries [name, dtype, [dims]] when it has one (a field the daemon never
 * reads, there so that the fuzzer controls both sides), else the fixed
 * table of fuzz_common.h. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "msg.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_MAX_SOURCE 4096 /* Source entries taken from one input. */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 1u << 20)
        return -1;
    uint8_t *body = malloc(size ? size : 1);
    if (body == NULL)
        return 0;
    memcpy(body, data, size);
    wb__msg m;
    wb__map_req mq;
    memset(&mq, 0, sizeof(mq));
    if (wb__msg_decode(&m, body, size) == 0 &&
        wb__decode_map_req(m.root, &mq) == 0) {
        wb__schema src;
        size_t *tie = NULL;
        const msgpack_object_array *sa = NULL;
        memset(&src, 0, sizeof(src));
        if (wb__mp_get_array(m.root, "source", &sa) == 0 &&
            sa->size <= FZ_MAX_SOURCE) {
            for (uint32_t i = 0; i < sa->size; i++) {
                wb__tinfo t;
                if (wb__decode_tinfo(&sa->ptr[i], &t) == 0)
                    (void)wb__schema_push(&src, t.name, t.dtype, t.ndim,
                                          t.shape);
                free(t.name);
            }
        } else {
            tie = malloc(FZ_NSRC * sizeof(size_t));
            if (tie == NULL)
                abort();
            fz_src_table(&src, tie);
        }
        fz_resolve(src.v, src.n, tie, mq.has_rules ? &mq.rules : NULL,
                   mq.has_schema ? &mq.schema : NULL, mq.strict,
                   mq.ignore_mismatch);
        wb__schema_clear(&src);
        free(tie);
    }
    wb__map_req_free(&mq);
    wb__msg_free(&m);
    free(body);
    return 0;
}
