/* publish_map.c -- publishes a small model with libwbroker and maps it back.
 *
 *   publish_map [--socket PATH] [--model NAME]
 *
 * Declares three tensors (a float32 matrix, a float32 vector and an int64
 * scalar), fills them the two ways libwbroker offers (copying bytes in
 * with wb_publish_write(), writing where wb_publish_data() points),
 * commits them as the model's next version, then maps that version
 * read-only, prints its table and metadata and checks every byte.
 * Without --socket it uses $WBROKER_SOCKET, else the default path.
 * Exit status 0 when everything checks, 1 otherwise, 2 on bad usage.
 *
 * Build: `make examples` (build/examples/publish_map), or against an
 * installed libwbroker:
 *
 *   cc publish_map.c $(pkg-config --cflags --libs wbroker)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <wbroker.h>

static int fail(wb_client *c, const char *what, int rc) {
    const char *detail = wb_errmsg(c);
    fprintf(stderr, "publish_map: %s: %s (%s)\n", what,
            detail[0] ? detail : wb_strerror(rc), wb_err_name(rc));
    wb_close(c);
    return 1;
}

static int usage(FILE *f) {
    fprintf(f, "usage: publish_map [--socket PATH] [--model NAME]\n");
    return f == stdout ? 0 : 2;
}

int main(int argc, char **argv) {
    const char *socket_path = NULL; /* NULL: $WBROKER_SOCKET or default */
    const char *model = "example-c";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc)
            socket_path = argv[++i];
        else if (strcmp(argv[i], "--model") == 0 && i + 1 < argc)
            model = argv[++i];
        else if (strcmp(argv[i], "--help") == 0)
            return usage(stdout);
        else
            return usage(stderr);
    }

    wb_client *c = NULL;
    int rc = wb_connect(socket_path, &c);
    if (rc < 0)
        return fail(c, "connect", rc);

    /* The model: what a state_dict of nn.Linear(3, 4) plus a step counter
     * would hold. */
    static const int64_t weight_shape[2] = {4, 3};
    static const int64_t bias_shape[1] = {4};
    float weight[12], bias[4];
    int64_t step = 1000;
    for (int i = 0; i < 12; i++)
        weight[i] = 0.25f * (float)i;
    for (int i = 0; i < 4; i++)
        bias[i] = -1.0f * (float)i;
    const wb_tensor_spec specs[] = {
        {.name = "fc.weight",
         .dtype = WB_F32,
         .ndim = 2,
         .shape = weight_shape},
        {.name = "fc.bias", .dtype = WB_F32, .ndim = 1, .shape = bias_shape},
        {.name = "step", .dtype = WB_I64, .ndim = 0, .shape = NULL},
    };
    const wb_kv meta[] = {{"producer", "publish_map.c"}};

    wb_publish *p = NULL;
    rc = wb_publish_begin(c, model, specs, 3, meta, 1, &p);
    if (rc < 0)
        return fail(c, "publish", rc);
    /* Bytes that exist already: copied in by the kernel. */
    if ((rc = wb_publish_write(p, 0, weight, sizeof(weight), 0)) < 0 ||
        (rc = wb_publish_write(p, 2, &step, sizeof(step), 0)) < 0) {
        wb_publish_abort(p);
        return fail(c, "write", rc);
    }
    /* Bytes computed in place: written straight into the segment. */
    size_t nbytes = 0;
    float *dst = wb_publish_data(p, 1, &nbytes);
    if (dst == NULL || nbytes != sizeof(bias)) {
        wb_publish_abort(p);
        return fail(c, "map the publish", WB_ESYS);
    }
    memcpy(dst, bias, sizeof(bias));
    uint64_t version = 0;
    rc = wb_publish_commit(p, &version); /* frees p whatever happens */
    if (rc < 0)
        return fail(c, "commit", rc);
    printf("published %s@%llu: 3 tensors\n", model,
           (unsigned long long)version);

    /* Back again: read-only shared pages, no copy. */
    wb_mapping *m = NULL;
    rc = wb_map(c, model, version, WB_MAP_SHARED, &m);
    if (rc < 0)
        return fail(c, "map", rc);
    const void *expect[] = {weight, bias, &step};
    const size_t expect_size[] = {sizeof(weight), sizeof(bias), sizeof(step)};
    int bad = wb_map_count(m) != 3;
    for (size_t i = 0; i < wb_map_count(m) && i < 3; i++) {
        wb_tensor t;
        wb_map_tensor(m, i, &t);
        printf("  %-10s %-4s [", t.name, wb_dtype_name(t.dtype));
        for (int d = 0; d < t.ndim; d++)
            printf("%s%lld", d ? ", " : "", (long long)t.shape[d]);
        int same = t.nbytes == expect_size[i] &&
                   memcmp(t.data, expect[i], t.nbytes) == 0;
        printf("] %zu bytes %s\n", t.nbytes, same ? "ok" : "DIFFERENT");
        bad |= !same;
    }
    const char *producer = wb_map_meta(m, "producer");
    printf("  metadata producer=%s\n", producer ? producer : "(none)");
    bad |= producer == NULL || strcmp(producer, "publish_map.c") != 0;
    wb_unmap(m);
    wb_close(c);
    if (bad) {
        fprintf(stderr, "publish_map: the mapped version differs\n");
        return 1;
    }
    printf("ok: %s@%llu maps back byte for byte\n", model,
           (unsigned long long)version);
    return 0;
}
