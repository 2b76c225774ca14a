/* fuzz_request.c -- libFuzzer harness of the daemon's request path: one
 * frame body, as a client could send it, through the frame checker, the
 * message decoder and every request decoder the handlers call.
 *
 * The input is the body of one frame (the bytes after the 4-byte length).
 * wb__msg_decode() must refuse or accept it without reading past it or
 * reserving memory the body cannot justify; every decoder of msg.h that
 * the daemon runs on a request then gets the root, whatever its "op" says,
 * so that each decoder sees every shape of map.  A publish that decodes
 * and passes the daemon's own checks is laid out (layout.c), and the
 * safetensors header the daemon would write must parse back with the
 * client's parser to the same tensors: a header the daemon writes is read
 * by every client that exports or loads it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../client/safetensors.h"
#include "../daemon/layout.h"
#include "msg.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* 1 if the publish passes the checks op_publish.c makes before laying it
 * out (metadata keys and values, ties), with the tie table in *tie. */
static int publish_ok(const wb__publish_req *pr, size_t **tie) {
    *tie = NULL;
    for (size_t i = 0; i < pr->nmeta; i++) {
        wb__str k = pr->mkeys[i], v = pr->mvals[i];
        if (wb__check_name(k.p, k.n) || v.n > WB_MAX_META_BYTES ||
            wb__check_text(v.p, v.n) ||
            (k.n == 12 && memcmp(k.p, WB_ST_METADATA_KEY, 12) == 0) ||
            (k.n == strlen(WB_TIED_KEY) && memcmp(k.p, WB_TIED_KEY, k.n) == 0))
            return 0;
    }
    if (pr->nties == 0)
        return 1;
    size_t *t = malloc((pr->n ? pr->n : 1) * sizeof(size_t));
    if (t == NULL)
        return 0;
    for (size_t i = 0; i < pr->n; i++)
        t[i] = i;
    for (size_t k = 0; k < pr->nties; k++) {
        uint64_t a = pr->ties[k].alias, st = pr->ties[k].stored;
        if (a >= pr->n || st >= a || t[a] != a || t[st] != st ||
            pr->t[a].dtype != pr->t[st].dtype ||
            pr->t[a].ndim != pr->t[st].ndim ||
            memcmp(pr->t[a].shape, pr->t[st].shape,
                   (size_t)pr->t[a].ndim * sizeof(int64_t)) != 0) {
            free(t);
            return 0;
        }
        t[a] = (size_t)st;
    }
    *tie = t;
    return 1;
}

/* Lays a valid publish out and parses the header back. */
static void publish_roundtrip(const wb__publish_req *pr) {
    size_t *tie;
    if (!publish_ok(pr, &tie))
        return;
    char **mk = calloc(pr->nmeta + 1, sizeof(char *));
    char **mv = calloc(pr->nmeta + 1, sizeof(char *));
    if (mk == NULL || mv == NULL)
        abort();
    for (size_t i = 0; i < pr->nmeta; i++) {
        mk[i] = wb__str_dup(pr->mkeys[i]);
        mv[i] = wb__str_dup(pr->mvals[i]);
        if (mk[i] == NULL || mv[i] == NULL)
            abort();
    }
    wb__layout lay = {0};
    int rc = wb__layout_build(pr->t, pr->n, tie, mk, mv, pr->nmeta, NULL, &lay);
    if (rc == 0) {
        wb__st_file f;
        char err[256];
        uint64_t file_size = lay.header_len + lay.data_len;
        rc = wb__st_parse_header(lay.header, lay.header_len, file_size, &f, err,
                                 sizeof(err));
        if (rc != 0 && rc != WB_ENOMEM)
            abort(); /* The daemon wrote a header no client can read. */
        if (rc == 0) {
            if (f.n + f.n_ties != pr->n || f.n_meta != pr->nmeta)
                abort();
            wb__st_file_free(&f);
        }
    }
    wb__layout_free(&lay);
    for (size_t i = 0; i < pr->nmeta; i++) {
        free(mk[i]);
        free(mv[i]);
    }
    free(mk);
    free(mv);
    free(tie);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 1u << 20)
        return -1; /* Far more than any seed needs; keeps runs fast. */
    /* The daemon hands wb__msg_decode the bytes of its read buffer: a
     * copy of exactly size bytes lets ASan see any read past them. */
    uint8_t *body = malloc(size ? size : 1);
    if (body == NULL)
        return 0;
    memcpy(body, data, size);
    wb__msg m;
    int rc = wb__msg_decode(&m, body, size);
    if (rc == 0) {
        const msgpack_object *root = m.root;
        uint64_t id, pub;
        const msgpack_object *op = wb__mp_get(root, "op");
        (void)wb__mp_get_u64(root, "id", &id);
        if (op != NULL) /* As dispatch.c checks, before any comparison. */
            (void)wb__mp_streq(op, "hello");

        wb__hello_req h;
        (void)wb__decode_hello_req(root, &h);

        wb__publish_req pr;
        size_t bad;
        if (wb__decode_publish_req(root, &pr, &bad) == 0 &&
            wb__check_name(pr.model.p, pr.model.n) == 0)
            publish_roundtrip(&pr);
        wb__publish_req_free(&pr);

        (void)wb__decode_pub_req(root, &pub);

        wb__model_req mr;
        if (wb__decode_model_req(root, &mr) == 0)
            (void)wb__check_name(mr.model.p, mr.model.n);

        wb__watch_req wr;
        (void)wb__decode_watch_req(root, &wr);

        wb__map_req mq;
        (void)wb__decode_map_req(root, &mq);
        wb__map_req_free(&mq);

        wb__pin_req pq;
        (void)wb__decode_pin_req(root, &pq);

        wb__str hm;
        int has;
        (void)wb__decode_holders_req(root, &hm, &has);
    }
    wb__msg_free(&m);
    free(body);
    return 0;
}
