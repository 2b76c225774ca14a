/* bench_rules.c -- Rule resolution and dtype conversion figures of
 * wbrokerd, each next to a baseline measured in the same run.
 *
 *   build/bench/bench_rules [--tensors 10000] [--runs 101]
 *                           [--long-runs 21] [--convert-size 256M]
 *                           [--convert-runs 9] [--cast-runs 3]
 *
 * rules:   a real daemon holds a transformer-like model of --tensors small
 *          float32 tensors saved from DistributedDataParallel
 *          ("module.model.layers.7.self_attn.q_proj.weight", ...).  Median
 *          and p90 latency of one wb_load() (request sent to reply decoded,
 *          segments mapped, name index built), as a plan (WB_MAP_PLAN) and
 *          as a real read-only map, of
 *            (c) no schema and no rules (a plain map, for reference),
 *            (a) a full target schema in the source's names, no rules,
 *            (b) the same schema in a Meta-Llama-style naming
 *                ("layers.7.attention.wq.weight", ...) reached through 20
 *                regex renames,
 *          and the ratio (b)/(a).  (b) is resolved on the daemon's thread
 *          pool, (a) on its loop: the ratio includes that hop, as every
 *          client sees it.  The requests of one run are interleaved
 *          (in a rotating order) so that noise hits every case alike.  One
 *          load of each is checked first: no missing, unexpected,
 *          mismatched or cast key, and every target key from the source
 *          key it must come from.
 * long:    a model of LONG_KEYS tensors whose keys are about 1 KiB long
 *          (LONG_DEPTH module levels, "mod0.mod1.(...).t0042"), and a
 *          target schema of the same keys, no rules.  Median wb_load()
 *          latency, plan and map, of the full schema next to the baseline
 *          of no schema (both interleaved, --long-runs each), and the
 *          median of wb__resolve() alone in this process next to the same
 *          resolution of as many keys of 32 bytes.
 * convert: in this process, on --convert-size of float32 weights-like
 *          values, wb__convert() F32 -> BF16 and F32 -> F16 (and the
 *          portable F32 -> F16 loop) in GB/s of input, next to memcpy of
 *          the same input bytes into a pre-faulted buffer; medians.
 * cast:    the daemon holds a --convert-size float32 model of 32 tensors; a
 *          target schema asks for float16.  The first wb_load() converts
 *          (on the daemon's thread pool) and caches; a second one maps the
 *          cached copies; a float32 schema load of the same model is the
 *          baseline.  The mapped float16 bytes are compared with the
 *          in-process conversion.  The daemon's conversion job is then
 *          replayed in this process on one thread, split into backing the
 *          copies and converting through fresh mappings (whose page faults
 *          the pre-faulted figure of "convert" does not pay). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "../daemon/convert.h"
#include "../daemon/resolve.h"
#include "../daemon/segment.h"
#include "harness.h"

/* Nearest-rank 90th percentile (sorts v). */
static double p90(double *v, int n) {
    wbt_median(v, n);         /* Sorts. */
    int k = (9 * n + 9) / 10; /* ceil(0.9 n) */
    return v[k > 0 ? k - 1 : 0];
}

/* ---------------------------------------------------------------- model */

#define NAME_LEN 112

/* A Qwen2-like decoder (HF names, q/k/v biases, grouped-query attention)
 * with tiny dimensions, saved from DDP: every key starts with "module.".
 * src[i] is a source key; dst[i] the key the target model gives the same
 * tensor (Meta-Llama naming).  The target schema lists dst in its own
 * order, given by order[]. */
typedef struct model {
    size_t n;              /* Tensors. */
    size_t layers;         /* Decoder layers. */
    char (*src)[NAME_LEN]; /* Source keys, published order. */
    char (*dst)[NAME_LEN]; /* Target keys, same index. */
    int64_t (*shape)[2];   /* Shapes. */
    int *ndim;             /* Dimensions. */
    size_t *order;         /* Target order: indices into src/dst. */
} model;

enum { D = 32, KV = 8, FF = 88, VOCAB = 256, HEAD = 8 };

/* Per-layer parts: HF suffix, target suffix, shape. */
static const struct part {
    const char *hf;
    const char *meta;
    int ndim;
    int64_t shape[2];
} parts[12] = {
    {"self_attn.q_proj.weight", "attention.wq.weight", 2, {D, D}},
    {"self_attn.q_proj.bias", "attention.wq.bias", 1, {D, 0}},
    {"self_attn.k_proj.weight", "attention.wk.weight", 2, {KV, D}},
    {"self_attn.k_proj.bias", "attention.wk.bias", 1, {KV, 0}},
    {"self_attn.v_proj.weight", "attention.wv.weight", 2, {KV, D}},
    {"self_attn.v_proj.bias", "attention.wv.bias", 1, {KV, 0}},
    {"self_attn.o_proj.weight", "attention.wo.weight", 2, {D, D}},
    {"mlp.gate_proj.weight", "feed_forward.w1.weight", 2, {FF, D}},
    {"mlp.up_proj.weight", "feed_forward.w3.weight", 2, {FF, D}},
    {"mlp.down_proj.weight", "feed_forward.w2.weight", 2, {D, FF}},
    {"input_layernorm.weight", "attention_norm.weight", 1, {D, 0}},
    {"post_attention_layernorm.weight", "ffn_norm.weight", 1, {D, 0}},
};

/* Target state_dict order of a layer (Meta's module order), as indices
 * into parts[]. */
static const int meta_order[12] = {0, 1, 2, 3, 4, 5, 6, 7, 9, 8, 10, 11};

/* The 20 regex renames from the source keys to the target keys.  They run
 * in order on every key: strip DDP's prefix, HF names to an intermediate
 * "blocks." naming, then that to Meta's.  Every rule fires on some key;
 * the replacements use \N, \g<N> and \g<name>. */
static const char *const rename_rules[20][2] = {
    {"module\\.(.*)", "\\1"},
    {"model\\.embed_tokens\\.weight", "tok_embeddings.weight"},
    {"model\\.layers\\.(\\d+)\\.self_attn\\.q_proj\\.weight",
     "blocks.\\1.attn.q.weight"},
    {"model\\.layers\\.(\\d+)\\.self_attn\\.k_proj\\.weight",
     "blocks.\\1.attn.k.weight"},
    {"model\\.layers\\.(\\d+)\\.self_attn\\.v_proj\\.weight",
     "blocks.\\1.attn.v.weight"},
    {"model\\.layers\\.(\\d+)\\.self_attn\\.([qkv])_proj\\.bias",
     "blocks.\\1.attn.\\2.bias"},
    {"model\\.layers\\.(\\d+)\\.self_attn\\.o_proj\\.weight",
     "blocks.\\g<1>.attn.o.weight"},
    {"model\\.layers\\.(\\d+)\\.mlp\\.gate_proj\\.weight",
     "blocks.\\1.ffn.w1.weight"},
    {"model\\.layers\\.(\\d+)\\.mlp\\.down_proj\\.weight",
     "blocks.\\1.ffn.w2.weight"},
    {"model\\.layers\\.(\\d+)\\.mlp\\.up_proj\\.weight",
     "blocks.\\1.ffn.w3.weight"},
    {"model\\.layers\\.(\\d+)\\.input_layernorm\\.weight",
     "blocks.\\1.norm1.weight"},
    {"model\\.layers\\.(\\d+)\\.post_attention_layernorm\\.weight",
     "blocks.\\1.norm2.weight"},
    {"model\\.norm\\.weight", "norm.weight"},
    {"lm_head\\.weight", "output.weight"},
    {"model\\.rotary_emb\\.inv_freq", "rope.freqs"},
    {"blocks\\.(?<layer>\\d+)\\.attn\\.(?<proj>[qkv])\\.(?<kind>weight|bias)",
     "layers.\\g<layer>.attention.w\\g<proj>.\\g<kind>"},
    {"blocks\\.(\\d+)\\.attn\\.o\\.weight", "layers.\\1.attention.wo.weight"},
    {"blocks\\.(\\d+)\\.ffn\\.(w[123])\\.weight",
     "layers.\\1.feed_forward.\\2.weight"},
    {"blocks\\.(\\d+)\\.norm1\\.weight", "layers.\\1.attention_norm.weight"},
    {"blocks\\.(\\d+)\\.norm2\\.weight", "layers.\\1.ffn_norm.weight"},
};

/* Adds tensor i to m. */
static void model_set(model *m, size_t i, const char *src, const char *dst,
                      int ndim, int64_t d0, int64_t d1) {
    snprintf(m->src[i], NAME_LEN, "module.%s", src);
    snprintf(m->dst[i], NAME_LEN, "%s", dst);
    m->ndim[i] = ndim;
    m->shape[i][0] = d0;
    m->shape[i][1] = d1;
}

/* About ntensors tensors: 12 per layer and 4 outside the layers. */
static void model_make(model *m, size_t ntensors) {
    m->layers = ntensors > 16 ? (ntensors - 4) / 12 : 1;
    m->n = m->layers * 12 + 4;
    m->src = calloc(m->n, sizeof(*m->src));
    m->dst = calloc(m->n, sizeof(*m->dst));
    m->shape = calloc(m->n, sizeof(*m->shape));
    m->ndim = calloc(m->n, sizeof(int));
    m->order = calloc(m->n, sizeof(size_t));
    if (!m->src || !m->dst || !m->shape || !m->ndim || !m->order) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    /* Source (HF) order: embeddings, layers, norm, head, rotary buffer. */
    size_t i = 0;
    model_set(m, i++, "model.embed_tokens.weight", "tok_embeddings.weight", 2,
              VOCAB, D);
    char a[NAME_LEN - 16], b[NAME_LEN - 16];
    for (size_t l = 0; l < m->layers; l++)
        for (int k = 0; k < 12; k++) {
            snprintf(a, sizeof a, "model.layers.%zu.%s", l, parts[k].hf);
            snprintf(b, sizeof b, "layers.%zu.%s", l, parts[k].meta);
            model_set(m, i++, a, b, parts[k].ndim, parts[k].shape[0],
                      parts[k].shape[1]);
        }
    model_set(m, i++, "model.norm.weight", "norm.weight", 1, D, 0);
    model_set(m, i++, "lm_head.weight", "output.weight", 2, VOCAB, D);
    model_set(m, i++, "model.rotary_emb.inv_freq", "rope.freqs", 1, HEAD / 2,
              0);
    /* Target (Meta) order: embeddings, layers in Meta's module order,
     * norm, output, rope.freqs. */
    size_t o = 0;
    m->order[o++] = 0;
    for (size_t l = 0; l < m->layers; l++)
        for (int k = 0; k < 12; k++)
            m->order[o++] = 1 + l * 12 + (size_t)meta_order[k];
    for (size_t k = 0; k < 3; k++)
        m->order[o++] = 1 + m->layers * 12 + k;
}

static void model_free(model *m) {
    free(m->src);
    free(m->dst);
    free(m->shape);
    free(m->ndim);
    free(m->order);
}

/* Publishes m; the tensors keep the zeros of a fresh segment (map latency
 * reads no tensor byte). */
static int model_publish(wb_client *c, const char *name, const model *m) {
    wb_tensor_spec *specs = calloc(m->n, sizeof(*specs));
    if (specs == NULL)
        return WB_ENOMEM;
    for (size_t i = 0; i < m->n; i++)
        specs[i] =
            (wb_tensor_spec){m->src[i], WB_F32, m->ndim[i], m->shape[i], NULL};
    wb_publish *p;
    int rc = wb_publish_begin(c, name, specs, m->n, NULL, 0, &p);
    free(specs);
    return rc ? rc : wb_publish_commit(p, NULL);
}

/* The full target schema, in target order, named by the source keys
 * (renamed = 0) or the target keys (renamed = 1). */
static wb_schema *model_schema(const model *m, int renamed) {
    wb_schema *s = wb_schema_new("bench-target");
    for (size_t k = 0; s && k < m->n; k++) {
        size_t i = m->order[k];
        if (wb_schema_add(s, renamed ? m->dst[i] : m->src[i], WB_F32,
                          m->ndim[i], m->shape[i])) {
            wb_schema_free(s);
            return NULL;
        }
    }
    return s;
}

/* ---------------------------------------------------------------- rules */

/* One request shape of the rules benchmark. */
typedef struct req_case {
    const char *label;       /* Printed name. */
    const wb_schema *schema; /* May be NULL. */
    const wb_rules *rules;   /* May be NULL. */
    int renamed;             /* 1 if target keys are m->dst. */
} req_case;

/* Loads once without timing and checks the result: every tensor, target
 * keys from the right source keys, an empty report.  Returns 0 or -1. */
static int check_case(wb_client *c, const model *m, const req_case *rc) {
    wb_mapping *mp;
    int err = wb_load(c, "rules", 0, rc->schema, rc->rules, WB_MAP_SHARED, &mp);
    if (err) {
        fprintf(stderr, "%s: %s: %s\n%s\n", rc->label, wb_err_name(err),
                wb_errmsg(c), mp ? wb_map_error_text(mp) : "");
        wb_unmap(mp);
        return -1;
    }
    size_t bad = 0;
    for (int w = 0; w < WB_KEYS_COUNT; w++)
        bad += wb_map_keys_count(mp, w);
    if (wb_map_count(mp) != m->n)
        bad++;
    for (size_t i = 0; i < m->n && bad == 0; i++) {
        const char *want = rc->renamed ? m->dst[i] : m->src[i];
        long k = wb_map_find(mp, want);
        wb_tensor t;
        if (k < 0 || wb_map_tensor(mp, (size_t)k, &t) ||
            strcmp(t.source, m->src[i]) != 0 || t.data == NULL || t.cast) {
            fprintf(stderr, "%s: target key %s not from %s\n", rc->label, want,
                    m->src[i]);
            bad++;
        }
    }
    printf("check %-34s %zu tensors, missing %zu, unexpected %zu, "
           "mismatched %zu, cast %zu: %s\n",
           rc->label, wb_map_count(mp), wb_map_keys_count(mp, WB_KEYS_MISSING),
           wb_map_keys_count(mp, WB_KEYS_UNEXPECTED),
           wb_map_keys_count(mp, WB_KEYS_MISMATCHED),
           wb_map_keys_count(mp, WB_KEYS_CAST), bad ? "FAILED" : "ok");
    wb_unmap(mp);
    return bad ? -1 : 0;
}

/* One timed wb_load(); returns seconds, or -1 on failure. */
static double time_load(wb_client *c, const req_case *rc, int flags) {
    wb_mapping *mp;
    double t0 = wbt_now();
    int err = wb_load(c, "rules", 0, rc->schema, rc->rules, flags, &mp);
    double dt = wbt_now() - t0;
    if (err) {
        fprintf(stderr, "%s: %s: %s\n", rc->label, wb_err_name(err),
                wb_errmsg(c));
        wb_unmap(mp);
        return -1;
    }
    wb_unmap(mp);
    return dt;
}

static int bench_rules(wb_client *c, size_t ntensors, int runs) {
    model m;
    model_make(&m, ntensors);
    if (model_publish(c, "rules", &m)) {
        fprintf(stderr, "publish: %s\n", wb_errmsg(c));
        return -1;
    }
    wb_schema *sa = model_schema(&m, 0), *sb = model_schema(&m, 1);
    wb_rules *rules = wb_rules_new();
    if (!sa || !sb || !rules)
        return -1;
    for (int k = 0; k < 20; k++)
        if (wb_rules_rename_regex(rules, rename_rules[k][0],
                                  rename_rules[k][1])) {
            fprintf(stderr, "rule %d refused\n", k + 1);
            return -1;
        }
    const req_case cases[3] = {
        {"(c) no schema, no rules", NULL, NULL, 0},
        {"(a) full schema, no rules", sa, NULL, 0},
        {"(b) full schema, 20 regex renames", sb, rules, 1},
    };
    printf("\n# rules: %zu tensors (%zu layers), wb_load latency, %d runs "
           "(+2 warm-up), requests interleaved\n",
           m.n, m.layers, runs);
    for (int k = 0; k < 3; k++)
        if (check_case(c, &m, &cases[k]))
            return -1;

    /* Six timed requests per run: 3 cases x {plan, map}. */
    double *t[6];
    for (int j = 0; j < 6; j++)
        if ((t[j] = calloc((size_t)runs, sizeof(double))) == NULL)
            return -1;
    for (int r = -2; r < runs; r++)
        for (int s = 0; s < 6; s++) {
            int j = (s + (r < 0 ? 0 : r)) % 6;
            int flags = j < 3 ? WB_MAP_PLAN : WB_MAP_SHARED;
            double dt = time_load(c, &cases[j % 3], flags);
            if (dt < 0)
                return -1;
            if (r >= 0)
                t[j][r] = dt;
        }
    double med[6], hi[6];
    for (int j = 0; j < 6; j++) {
        med[j] = wbt_median(t[j], runs) * 1e3;
        hi[j] = p90(t[j], runs) * 1e3;
        free(t[j]);
    }
    printf("%-36s %12s %10s %12s %10s\n", "request", "plan median", "p90",
           "map median", "p90");
    for (int k = 0; k < 3; k++)
        printf("%-36s %9.2f ms %7.2f ms %9.2f ms %7.2f ms\n", cases[k].label,
               med[k], hi[k], med[3 + k], hi[3 + k]);
    printf("%-36s %11.2fx %9.2fx %11.2fx %9.2fx\n",
           "ratio (b)/(a)  (rules' cost)", med[2] / med[1], hi[2] / hi[1],
           med[5] / med[4], hi[5] / hi[4]);
    printf("%-36s %11.2fx %9.2fx %11.2fx %9.2fx\n",
           "ratio (a)/(c)  (schema's cost)", med[1] / med[0], hi[1] / hi[0],
           med[4] / med[3], hi[4] / hi[3]);
    printf("per key and rule, (b)-(a) plan: %.1f ns\n",
           (med[2] - med[1]) * 1e6 / ((double)m.n * 20));
    wb_rules_free(rules);
    wb_schema_free(sa);
    wb_schema_free(sb);
    wb_drop(c, "rules", 0);
    model_free(&m);
    return 0;
}

/* ---------------------------------------------------------------- long */

enum { LONG_KEYS = 4000, LONG_DEPTH = 200 };

/* Key i of the long-key model: LONG_DEPTH module levels shared by every
 * key ("mod0.mod1.(...).mod9.mod0..."), then "t%04zu"; 1,005 bytes.  With
 * short = 1 the key of the 32-byte baseline instead. */
static void long_key(char *buf, size_t cap, size_t i, int short_key) {
    size_t n = 0;
    if (short_key) {
        snprintf(buf, cap, "encoder.layers.%04zu.mlp.weight", i);
        return;
    }
    for (int j = 0; j < LONG_DEPTH; j++)
        n += (size_t)snprintf(buf + n, cap - n, "mod%d.", j % 10);
    snprintf(buf + n, cap - n, "t%04zu", i);
}

/* Median seconds of wb__resolve() in this process on LONG_KEYS keys (long
 * or short), as source table and as target schema, no rules; -1 on a
 * failure. */
static double time_resolve(int short_key, int runs) {
    wb__schema src = {0};
    char key[WB_MAX_NAME + 1];
    int64_t shape[1] = {1};
    for (size_t i = 0; i < LONG_KEYS; i++) {
        long_key(key, sizeof key, i, short_key);
        if (wb__schema_push(&src, key, WB_U8, 1, shape))
            return -1;
    }
    wb__resolve_req req = {.src = src.v,
                           .nsrc = src.n,
                           .schema = &src,
                           .strict = 1,
                           .budget_ms = WB_RULES_BUDGET_MS};
    double *t = calloc((size_t)runs, sizeof(double)), med = -1;
    for (int r = -1; t && r < runs; r++) {
        wb__resolve_out out;
        double t0 = wbt_now();
        int rc = wb__resolve(&req, &out);
        double dt = wbt_now() - t0;
        size_t n = out.n;
        wb__resolve_out_free(&out);
        if (rc != 0 || n != LONG_KEYS) {
            fprintf(stderr, "wb__resolve: %s\n", wb_err_name(rc));
            free(t);
            wb__schema_clear(&src);
            return -1;
        }
        if (r >= 0)
            t[r] = dt;
    }
    if (t)
        med = wbt_median(t, runs);
    free(t);
    wb__schema_clear(&src);
    return med;
}

static int bench_long(wb_client *c, int runs) {
    wb_tensor_spec *specs = calloc(LONG_KEYS, sizeof(*specs));
    char(*names)[WB_MAX_NAME + 1] = calloc(LONG_KEYS, sizeof(*names));
    wb_schema *s = wb_schema_new("long-target");
    int64_t shape[1] = {1};
    if (!specs || !names || !s)
        return -1;
    for (size_t i = 0; i < LONG_KEYS; i++) {
        long_key(names[i], sizeof names[i], i, 0);
        specs[i] = (wb_tensor_spec){names[i], WB_U8, 1, shape, NULL};
        if (wb_schema_add(s, names[i], WB_U8, 1, shape))
            return -1;
    }
    wb_publish *p;
    if (wb_publish_begin(c, "long", specs, LONG_KEYS, NULL, 0, &p) ||
        wb_publish_commit(p, NULL)) {
        fprintf(stderr, "publish long: %s\n", wb_errmsg(c));
        return -1;
    }
    printf("\n# long keys: %d tensors, keys of %zu bytes (%d module "
           "levels), no rules; wb_load latency, %d runs (+2 warm-up), "
           "interleaved\n",
           LONG_KEYS, strlen(names[0]), LONG_DEPTH, runs);
    wb_mapping *mp;
    int err = wb_load(c, "long", 0, s, NULL, WB_MAP_SHARED, &mp);
    size_t bad = err ? 1 : 0;
    for (int w = 0; !err && w < WB_KEYS_COUNT; w++)
        bad += wb_map_keys_count(mp, w);
    if (!err && wb_map_count(mp) != LONG_KEYS)
        bad++;
    printf("check %-34s %zu tensors: %s\n", "(d) full schema of long keys",
           err ? 0 : wb_map_count(mp), bad ? "FAILED" : "ok");
    wb_unmap(mp);
    if (bad) {
        fprintf(stderr, "long: %s: %s\n", wb_err_name(err), wb_errmsg(c));
        return -1;
    }
    /* Four timed requests per run: {no schema, schema} x {plan, map}. */
    const req_case cases[2] = {
        {"(e) no schema (baseline)", NULL, NULL, 0},
        {"(d) full schema, no rules", s, NULL, 0},
    };
    double *t[4];
    for (int j = 0; j < 4; j++)
        if ((t[j] = calloc((size_t)runs, sizeof(double))) == NULL)
            return -1;
    for (int r = -2; r < runs; r++)
        for (int k = 0; k < 4; k++) {
            int j = (k + (r < 0 ? 0 : r)) % 4;
            wb_mapping *m;
            double t0 = wbt_now();
            err = wb_load(c, "long", 0, cases[j % 2].schema, NULL,
                          j < 2 ? WB_MAP_PLAN : WB_MAP_SHARED, &m);
            double dt = wbt_now() - t0;
            wb_unmap(m);
            if (err) {
                fprintf(stderr, "long: %s: %s\n", wb_err_name(err),
                        wb_errmsg(c));
                return -1;
            }
            if (r >= 0)
                t[j][r] = dt;
        }
    double med[4];
    for (int j = 0; j < 4; j++) {
        med[j] = wbt_median(t[j], runs) * 1e3;
        free(t[j]);
    }
    printf("%-36s %12s %12s\n", "request", "plan median", "map median");
    for (int k = 0; k < 2; k++)
        printf("%-36s %9.2f ms %9.2f ms\n", cases[k].label, med[k], med[2 + k]);
    printf("%-36s %11.2fx %11.2fx\n", "ratio (d)/(e)  (schema's cost)",
           med[1] / med[0], med[3] / med[2]);
    double rl = time_resolve(0, runs), rs = time_resolve(1, runs);
    if (rl < 0 || rs < 0)
        return -1;
    printf("%-36s %9.2f ms\n", "wb__resolve alone, 1 KiB keys", rl * 1e3);
    printf("%-36s %9.2f ms  (1 KiB / 32 B: %.1fx)\n",
           "wb__resolve alone, 32-byte keys", rs * 1e3, rl / rs);
    wb_schema_free(s);
    free(specs);
    free(names);
    wb_drop(c, "long", 0);
    return 0;
}

/* ---------------------------------------------------------------- convert */

/* Weights-like float32 values: a triangular distribution around 0 of width
 * 0.1 (xorshift64*), with one element in 64 near 1 as norm weights are. */
static void fill_weights(float *v, size_t n) {
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < n; i++) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        uint64_t r = s * 0x2545F4914F6CDD1Dull;
        float u1 = (float)(r >> 40) * 0x1.0p-24f;
        float u2 = (float)((r >> 16) & 0xFFFFFF) * 0x1.0p-24f;
        v[i] = (u1 - u2) * 0.05f + ((r & 63) == 0 ? 1.0f : 0.0f);
    }
}

/* Rounds up to a whole number of 32 * 4-byte elements, at least 1 MiB. */
static size_t round_size(size_t s) {
    s = s < (1u << 20) ? (1u << 20) : s;
    return s / 128 * 128;
}

/* In-process conversion throughput.  Leaves the float16 result of the
 * whole buffer in out16 for the cast check.  Returns 0 or -1. */
static int bench_convert(const float *src, size_t bytes, uint16_t *out16,
                         int runs) {
    size_t n = bytes / 4;
    uint8_t *cpy = malloc(bytes);
    uint16_t *bf = malloc(n * 2);
    if (!cpy || !bf)
        return -1;
    memset(cpy, 0, bytes); /* Pre-fault every destination. */
    memset(bf, 0, n * 2);
    memset(out16, 0, n * 2);
    printf("\n# convert: %.0f MiB of float32 (%zu elements), single thread, "
           "median of %d runs (+1 warm-up); GB/s of input bytes\n",
           (double)bytes / (1 << 20), n, runs);
#if defined(__x86_64__) && defined(__GNUC__)
    printf("cpu: avx2 %s, f16c %s\n",
           __builtin_cpu_supports("avx2") ? "yes" : "no",
           __builtin_cpu_supports("f16c") ? "yes" : "no");
#endif
    enum { NOPS = 4 };
    static const char *const label[NOPS] = {
        "memcpy (same input bytes)", "wb__convert F32 -> BF16",
        "wb__convert F32 -> F16", "wb__convert_portable F32 -> F16"};
    double *t[NOPS];
    for (int j = 0; j < NOPS; j++)
        if ((t[j] = calloc((size_t)runs, sizeof(double))) == NULL)
            return -1;
    for (int r = -1; r < runs; r++)
        for (int s = 0; s < NOPS; s++) {
            int j = (s + (r < 0 ? 0 : r)) % NOPS, rc = 0;
            double t0 = wbt_now();
            if (j == 0)
                memcpy(cpy, src, bytes);
            else if (j == 1)
                rc = wb__convert(WB_F32, WB_BF16, src, bf, n);
            else if (j == 2)
                rc = wb__convert(WB_F32, WB_F16, src, out16, n);
            else
                rc = wb__convert_portable(WB_F32, WB_F16, src, bf, n);
            double dt = wbt_now() - t0;
            if (rc) {
                fprintf(stderr, "%s: %s\n", label[j], wb_err_name(rc));
                return -1;
            }
            if (r >= 0)
                t[j][r] = dt;
        }
    /* Keep the copies alive past the loop. */
    volatile uint8_t sink = cpy[bytes - 1] ^ (uint8_t)bf[n - 1];
    (void)sink;
    double med[NOPS];
    for (int j = 0; j < NOPS; j++) {
        med[j] = wbt_median(t[j], runs);
        free(t[j]);
    }
    printf("%-34s %10s %10s %16s\n", "operation", "median", "GB/s",
           "ratio to memcpy");
    for (int j = 0; j < NOPS; j++)
        printf("%-34s %7.1f ms %10.2f %15.2fx\n", label[j], med[j] * 1e3,
               (double)bytes / med[j] / 1e9, med[0] / med[j]);
    free(cpy);
    free(bf);
    return 0;
}

/* ---------------------------------------------------------------- cast */

enum { CAST_TENSORS = 32 };

/* A wb_load() of "cast" with schema s; seconds, or -1.  Keeps the mapping
 * in *keep when keep is not NULL. */
static double time_cast_load(wb_client *c, const wb_schema *s,
                             wb_mapping **keep) {
    wb_mapping *mp;
    double t0 = wbt_now();
    int err = wb_load(c, "cast", 0, s, NULL, WB_MAP_SHARED, &mp);
    double dt = wbt_now() - t0;
    if (err) {
        fprintf(stderr, "cast load: %s: %s\n", wb_err_name(err), wb_errmsg(c));
        wb_unmap(mp);
        return -1;
    }
    if (keep)
        *keep = mp;
    else
        wb_unmap(mp);
    return dt;
}

/* Checks that every tensor of mp is float16, cast, and equal to the
 * in-process conversion in ref.  Returns 0 or -1. */
static int check_cast(const wb_mapping *mp, const uint16_t *ref, size_t per) {
    if (wb_map_count(mp) != CAST_TENSORS ||
        wb_map_keys_count(mp, WB_KEYS_CAST) != CAST_TENSORS)
        return -1;
    for (size_t i = 0; i < CAST_TENSORS; i++) {
        wb_tensor t;
        if (wb_map_tensor(mp, i, &t) || t.dtype != WB_F16 || !t.cast ||
            t.nbytes != per * 2 || strcmp(t.source, t.name) != 0)
            return -1;
        unsigned k;
        if (sscanf(t.name, "layers.%u.weight", &k) != 1 || k >= CAST_TENSORS ||
            memcmp(t.data, ref + k * per, t.nbytes))
            return -1;
    }
    return 0;
}

/* Replays the daemon's conversion job (conv_work in daemon/handlers.c) in
 * this process on one thread: per tensor a new segment backed at once, a
 * fresh read mapping of the tensor in the source segment and a fresh
 * mapping of the copy, wb__convert(), unmap, seal.  Returns seconds, or -1;
 * *tseg and *tconv receive the parts spent in wb__seg_create() and in
 * wb__convert() (which takes the page faults of the fresh mappings). */
static double replay_cast(const wb__segment *srcseg, size_t per, double *tseg,
                          double *tconv) {
    size_t sbytes = per * 4, dbytes = per * 2;
    double t0 = wbt_now(), ts = 0, tc = 0;
    for (size_t i = 0; i < CAST_TENSORS; i++) {
        wb__segment d;
        char err[128];
        double t1 = wbt_now();
        if (wb__seg_create("wbroker:bench:cast", wb__seg_round(dbytes), &d, err,
                           sizeof err)) {
            fprintf(stderr, "replay: %s\n", err);
            return -1;
        }
        ts += wbt_now() - t1;
        void *sp = mmap(NULL, sbytes, PROT_READ, MAP_SHARED, srcseg->fd,
                        (off_t)(i * sbytes));
        void *dp =
            mmap(NULL, dbytes, PROT_READ | PROT_WRITE, MAP_SHARED, d.fd, 0);
        if (sp == MAP_FAILED || dp == MAP_FAILED) {
            perror("replay: mmap");
            return -1;
        }
        t1 = wbt_now();
        int rc = wb__convert(WB_F32, WB_F16, sp, dp, per);
        tc += wbt_now() - t1;
        munmap(dp, dbytes);
        munmap(sp, sbytes);
        if (rc || wb__seg_seal(&d)) {
            fprintf(stderr, "replay: convert or seal failed\n");
            return -1;
        }
        wb__seg_close(&d);
    }
    *tseg = ts;
    *tconv = tc;
    return wbt_now() - t0;
}

static int bench_cast(wb_client *c, const float *src, size_t bytes,
                      const uint16_t *ref16, int runs) {
    size_t per = bytes / 4 / CAST_TENSORS; /* Elements per tensor. */
    int64_t shape[2] = {(int64_t)(per / 1024), 1024};
    if (per % 1024)
        shape[0] = (int64_t)per, shape[1] = 1;
    char names[CAST_TENSORS][32];
    wb_tensor_spec specs[CAST_TENSORS];
    wb_schema *s16 = wb_schema_new("cast-f16"),
              *s32 = wb_schema_new("cast-f32");
    if (!s16 || !s32)
        return -1;
    for (int i = 0; i < CAST_TENSORS; i++) {
        snprintf(names[i], sizeof names[i], "layers.%d.weight", i);
        specs[i] = (wb_tensor_spec){names[i], WB_F32, 2, shape, NULL};
        if (wb_schema_add(s16, names[i], WB_F16, 2, shape) ||
            wb_schema_add(s32, names[i], WB_F32, 2, shape))
            return -1;
    }
    printf("\n# cast: %.0f MiB float32 model of %d tensors, target schema "
           "asks float16; median of %d runs, each on a fresh version\n",
           (double)bytes / (1 << 20), CAST_TENSORS, runs);
    /* The source of the replay: a segment holding the same model. */
    wb__segment srcseg;
    char err[128];
    if (wb__seg_create("wbroker:bench:src", wb__seg_round(bytes), &srcseg, err,
                       sizeof err)) {
        fprintf(stderr, "source segment: %s\n", err);
        return -1;
    }
    void *sp =
        mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, srcseg.fd, 0);
    if (sp == MAP_FAILED)
        return -1;
    memcpy(sp, src, bytes);
    munmap(sp, bytes);
    double *t[6];
    for (int j = 0; j < 6; j++)
        if ((t[j] = calloc((size_t)runs, sizeof(double))) == NULL)
            return -1;
    for (int r = 0; r < runs; r++) {
        wb_publish *p;
        if (wb_publish_begin(c, "cast", specs, CAST_TENSORS, NULL, 0, &p)) {
            fprintf(stderr, "publish: %s\n", wb_errmsg(c));
            return -1;
        }
        for (size_t i = 0; i < CAST_TENSORS; i++) {
            size_t nb;
            void *dst = wb_publish_data(p, i, &nb);
            memcpy(dst, (const uint8_t *)src + i * per * 4, nb);
        }
        if (wb_publish_commit(p, NULL)) {
            fprintf(stderr, "commit: %s\n", wb_errmsg(c));
            return -1;
        }
        wb_mapping *first = NULL;
        if ((t[0][r] = time_cast_load(c, s32, NULL)) < 0 ||
            (t[1][r] = time_cast_load(c, s16, &first)) < 0 ||
            (t[2][r] = time_cast_load(c, s16, NULL)) < 0)
            return -1;
        if (r == 0 && check_cast(first, ref16, per)) {
            fprintf(stderr, "cast: the mapped float16 tensors differ from "
                            "wb__convert's\n");
            return -1;
        }
        if (r == 0)
            printf("check: %d tensors cast to float16, bit-identical to "
                   "the in-process conversion: ok\n",
                   CAST_TENSORS);
        wb_unmap(first);
        wb_drop(c, "cast", 0);
        if ((t[3][r] = replay_cast(&srcseg, per, &t[4][r], &t[5][r])) < 0)
            return -1;
    }
    wb__seg_close(&srcseg);
    double med[6];
    for (int j = 0; j < 6; j++) {
        med[j] = wbt_median(t[j], runs);
        free(t[j]);
    }
    printf("%-42s %10.1f ms\n", "load, float32 schema (no conversion)",
           med[0] * 1e3);
    printf("%-42s %10.1f ms  (%.2f GB/s of input)\n",
           "first load asking float16 (converts)", med[1] * 1e3,
           (double)bytes / med[1] / 1e9);
    printf("%-42s %10.1f ms  (first / cached: %.0fx)\n",
           "later load asking float16 (cached)", med[2] * 1e3, med[1] / med[2]);
    printf("%-42s %10.1f ms  (%.2f GB/s of input)\n",
           "same job in this process, one thread", med[3] * 1e3,
           (double)bytes / med[3] / 1e9);
    printf("%-42s %10.1f ms\n", "  of which backing the copies", med[4] * 1e3);
    printf("%-42s %10.1f ms  (4 KiB page faults of the fresh mappings)\n",
           "  of which wb__convert on fresh mappings", med[5] * 1e3);
    wb_schema_free(s16);
    wb_schema_free(s32);
    return 0;
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv) {
    size_t ntensors = 10000, csize = 256u << 20;
    int runs = 101, lruns = 21, cruns = 9, castruns = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--tensors") == 0)
            ntensors = (size_t)atol(argv[i + 1]);
        else if (strcmp(argv[i], "--runs") == 0)
            runs = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--long-runs") == 0)
            lruns = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--convert-size") == 0)
            csize = wbt_parse_size(argv[i + 1]);
        else if (strcmp(argv[i], "--convert-runs") == 0)
            cruns = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--cast-runs") == 0)
            castruns = atoi(argv[i + 1]);
        else {
            fprintf(stderr,
                    "usage: %s [--tensors N] [--runs N] [--long-runs N] "
                    "[--convert-size SIZE] [--convert-runs N] [--cast-runs "
                    "N]\n",
                    argv[0]);
            return 2;
        }
    }
    runs = runs < 1 ? 1 : runs;
    lruns = lruns < 1 ? 1 : lruns;
    cruns = cruns < 1 ? 1 : cruns;
    castruns = castruns < 1 ? 1 : castruns;
    csize = round_size(csize);

    wbt_daemon d;
    wb_client *c = wbt_bench_start(&d);
    if (c == NULL)
        return 1;
    double t0 = wbt_now();
    printf("# wbroker rules and conversion benchmark\n");
    int rc = bench_rules(c, ntensors, runs);
    if (rc == 0)
        rc = bench_long(c, lruns);

    float *src = rc ? NULL : malloc(csize);
    uint16_t *out16 = rc ? NULL : malloc(csize / 2);
    if (rc == 0 && (!src || !out16))
        rc = -1;
    if (rc == 0) {
        fill_weights(src, csize / 4);
        rc = bench_convert(src, csize, out16, cruns);
    }
    if (rc == 0)
        rc = bench_cast(c, src, csize, out16, castruns);
    free(src);
    free(out16);
    if (rc == 0)
        printf("\ntotal %.0f s; reproduce: %s/bench/bench_rules --tensors "
               "%zu --runs %d --long-runs %d\n",
               wbt_now() - t0, wbt_build_dir(), ntensors, runs, lruns);
    wb_close(c);
    if (rc) { /* The daemon's warnings say why; wbt_stop() removes them. */
        FILE *f = fopen(d.log, "re");
        char line[512];
        while (f && fgets(line, sizeof line, f))
            fprintf(stderr, "wbrokerd: %s", line);
        if (f)
            fclose(f);
    }
    int st = wbt_stop(&d);
    if (st != 0)
        fprintf(stderr, "bench_rules: the daemon did not exit cleanly\n");
    return rc || st != 0 ? 1 : 0;
}
