/* fuzz_common.h -- What the resolver harnesses share: a realistic source
 * table (the state_dict of a small transformer with a tied embedding),
 * and one resolution checked for the invariants wb__resolve() promises.
 *
 * Only the harnesses in fuzz/ include this header. */
#ifndef WB_FUZZ_COMMON_H
#define WB_FUZZ_COMMON_H

#include <stdlib.h>
#include <string.h>

#include "../daemon/resolve.h"

/* Names of the fixed source table, in state_dict order. */
static const char *const fz_src_names[] = {
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.v_proj.weight",
    "model.layers.0.self_attn.o_proj.weight",
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.1.self_attn.q_proj.weight",
    "model.layers.1.self_attn.q_proj.bias",
    "model.layers.1.mlp.up_proj.weight",
    "model.layers.1.input_layernorm.weight",
    "model.norm.weight",
    "module.bn.running_mean",
    "module.bn.num_batches_tracked",
    "lm_head.weight",
};
#define FZ_NSRC (sizeof(fz_src_names) / sizeof(fz_src_names[0]))

/* Fills *s with the fixed table: 2-dim F32 weights, 1-dim BF16 norms and
 * biases, a 0-dim I64 counter; lm_head is tied to the embedding. */
static inline void fz_src_table(wb__schema *s, size_t *tie) {
    memset(s, 0, sizeof(*s));
    for (size_t i = 0; i < FZ_NSRC; i++) {
        const char *n = fz_src_names[i];
        int64_t shp[2] = {8, 4};
        int nd = 2, dt = WB_F32;
        if (strstr(n, "norm") || strstr(n, "bias") || strstr(n, "running")) {
            nd = 1;
            dt = WB_BF16;
        } else if (strstr(n, "num_batches")) {
            nd = 0;
            dt = WB_I64;
        }
        if (wb__schema_push(s, n, dt, nd, shp) != 0)
            abort();
        tie[i] = i;
    }
    tie[FZ_NSRC - 1] = 0;
}

/* Runs one resolution and checks what the caller may rely on: an answer
 * of the documented codes, every tensor handed out naming a source entry,
 * and an error text exactly for a load that may not go ahead. */
static inline void fz_resolve(const wb__tinfo *src, size_t nsrc,
                              const size_t *tie, const wb__ruleset *rules,
                              const wb__schema *schema, int strict,
                              int ignore) {
    wb__resolve_req rq = {.src = src,
                          .nsrc = nsrc,
                          .tie = tie,
                          .rules = rules,
                          .schema = schema,
                          .strict = strict,
                          .ignore_mismatch = ignore,
                          .budget_ms = WB_RULES_BUDGET_MS};
    wb__resolve_out out;
    int rc = wb__resolve(&rq, &out);
    switch (rc) {
    case 0:
        for (size_t i = 0; i < out.n; i++)
            if (out.v[i].src >= nsrc || out.v[i].target == NULL ||
                strlen(out.v[i].target) > WB_MAX_NAME)
                abort();
        break;
    case WB_ELOAD:
        if (out.error_text == NULL || out.n != 0)
            abort();
        break;
    case WB_ERULE:
    case WB_ECOLLISION:
    case WB_EREGEX:
    case WB_EEXIST:
    case WB_EINVAL:
    case WB_ENOMEM:
        if (memchr(out.errmsg, '\0', sizeof(out.errmsg)) == NULL)
            abort();
        break;
    default:
        abort(); /* Not a code wb__resolve() may return. */
    }
    wb__resolve_out_free(&out);
}

#endif
