/* test_msg_fast.c -- Unit tests of wb__decode_map_rep_fast(): on every
 * map reply it takes, its result is the general path's (wb__msg_decode,
 * the envelope, wb__decode_map_rep), field for field; whatever it does
 * not take it hands back (1) without crashing or leaking.
 *
 * Replies come from the daemon's own encoder in several shapes (no rows,
 * rows of several dtypes and ranks, metadata, a report, with and without
 * page backend and hold, integers in every width); each is then cut at
 * every length and has every byte replaced by a handful of values, and
 * every variant the fast decoder takes must decode the same both ways. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "msg.h"
#include "wire.h"

#define TEST_ID 77 /* Id of the replies built here. */

/* What a row callback of the encoder reads. */
typedef struct rows {
    size_t n;              /* Rows. */
    uint64_t big;          /* Added to offsets: integers of every width. */
    const char *long_name; /* Name of row 1 (str8/str16), or NULL. */
} rows;

static void row(void *arg, size_t i, wb__map_entry *e) {
    const rows *r = arg;
    static const int dtypes[] = {WB_F32, WB_F32, WB_BF16, WB_I64, WB_F32};
    static char names[64][32], sources[64][32];
    snprintf(names[i % 64], sizeof(names[0]), "layers.%zu.weight", i);
    snprintf(sources[i % 64], sizeof(sources[0]), "module.l%zu", i);
    const char *t = i == 1 && r->long_name ? r->long_name : names[i % 64];
    e->target.p = t;
    e->target.n = strlen(t);
    e->source.p = sources[i % 64];
    e->source.n = strlen(sources[i % 64]);
    e->dtype = dtypes[i % 5];
    e->ndim = (int)(i % 4);
    for (int k = 0; k < e->ndim; k++)
        e->shape[k] = k == 0 ? (int64_t)(70000 + i) : (int64_t)(3 + k);
    e->seg = 0;
    e->offset = r->big + i * 4096;
    e->nbytes = i * 300;
    e->cast = (int)(i % 2);
}

/* Packs a map reply of the given shape into sb. */
static void pack_reply(msgpack_sbuffer *sb, size_t n, int meta, int report,
                       int pages, int hold, uint64_t big,
                       const char *long_name) {
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    rows r = {n, big, long_name};
    uint64_t segs[2] = {big + (1u << 20), 4096};
    char *mk[2] = {"format", "step"}, *mv[2] = {"pt", "1200"};
    char *missing[2] = {"a.weight", "b.bias"}, *cast[1] = {"c"};
    wb__report_src rep;
    memset(&rep, 0, sizeof(rep));
    if (report) {
        rep.keys[WB_KEYS_MISSING] = missing;
        rep.n[WB_KEYS_MISSING] = 2;
        rep.keys[WB_KEYS_CAST] = cast;
        rep.n[WB_KEYS_CAST] = 1;
        rep.text = "Missing key(s) in state_dict: \"a.weight\"";
    }
    wb__pack_map_rep_pages(&pk, TEST_ID, 9 + big, hold, segs, report ? 2 : 1, n,
                           row, &r, mk, mv, meta ? 2 : 0, &rep,
                           pages ? "thp" : NULL, pages ? big + 2 : 0);
}

static int str_eq(wb__str a, wb__str b) {
    return a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0);
}

/* Fails unless a and b hold the same reply. */
static void assert_same(const wb__map_rep *a, const wb__map_rep *b) {
    assert_true(a->version == b->version);
    assert_int_equal(a->nsegs, b->nsegs);
    for (size_t k = 0; k < a->nsegs; k++)
        assert_true(a->segs[k] == b->segs[k]);
    assert_int_equal(a->n, b->n);
    for (size_t i = 0; i < a->n; i++) {
        const wb__map_entry *x = &a->t[i], *y = &b->t[i];
        assert_true(str_eq(x->target, y->target));
        assert_true(str_eq(x->source, y->source));
        assert_int_equal(x->dtype, y->dtype);
        assert_int_equal(x->ndim, y->ndim);
        for (int k = 0; k < x->ndim; k++)
            assert_true(x->shape[k] == y->shape[k]);
        assert_true(x->seg == y->seg && x->offset == y->offset &&
                    x->nbytes == y->nbytes);
        assert_int_equal(x->cast, y->cast);
    }
    assert_int_equal(a->nmeta, b->nmeta);
    for (size_t i = 0; i < a->nmeta; i++) {
        assert_true(str_eq(a->mkeys[i], b->mkeys[i]));
        assert_true(str_eq(a->mvals[i], b->mvals[i]));
    }
    for (int w = 0; w < WB_KEYS_COUNT; w++) {
        assert_int_equal(a->report.n[w], b->report.n[w]);
        for (size_t i = 0; i < a->report.n[w]; i++)
            assert_true(str_eq(a->report.keys[w][i], b->report.keys[w][i]));
    }
    assert_true(str_eq(a->report.text, b->report.text));
    assert_int_equal(a->hold, b->hold);
    assert_string_equal(a->pages, b->pages);
    assert_true(a->huge == b->huge);
}

/* Decodes body both ways.  Returns what the fast decoder returned; when
 * it took the body, the general path must have succeeded with the same
 * reply. */
static int both_ways(const uint8_t *body, size_t len) {
    wb__map_rep fast, gen;
    uint64_t id = 0;
    int rc = wb__decode_map_rep_fast(body, len, &id, &fast);
    assert_true(rc == 0 || rc == 1);
    if (rc)
        return rc;
    wb__msg m;
    assert_int_equal(wb__msg_decode(&m, body, len), 0);
    uint64_t rid;
    int err;
    wb__str msg;
    assert_int_equal(wb__decode_rep_envelope(m.root, &rid, &err, &msg, NULL),
                     0);
    assert_int_equal(err, 0);
    assert_true(rid == id && rid != 0);
    assert_int_equal(wb__decode_map_rep(m.root, 0, &gen), 0);
    assert_same(&fast, &gen);
    wb__map_rep_free(&fast);
    wb__map_rep_free(&gen);
    wb__msg_free(&m);
    return 0;
}

/* The shapes the daemon sends decode, and the same as the general path. */
static void test_fast_takes_daemon_replies(void **state) {
    (void)state;
    static char name300[301];
    memset(name300, 'w', 300);
    const struct {
        size_t n;
        int meta, report, pages, hold;
        uint64_t big;
        const char *long_name;
    } cases[] = {
        {0, 0, 0, 0, 0, 0, NULL},
        {1, 0, 0, 1, 1, 0, NULL},
        {12, 1, 0, 1, 1, 200, NULL},
        {7, 1, 1, 0, 0, 70000, "a.name.longer.than.thirty.one.bytes.x"},
        {9, 0, 1, 1, 1, UINT64_C(5000000000), name300},
        {300, 1, 0, 1, 1, 0, NULL},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        msgpack_sbuffer sb;
        pack_reply(&sb, cases[c].n, cases[c].meta, cases[c].report,
                   cases[c].pages, cases[c].hold, cases[c].big,
                   cases[c].long_name);
        assert_int_equal(both_ways((const uint8_t *)sb.data, sb.size), 0);
        msgpack_sbuffer_destroy(&sb);
    }
}

/* Every cut and every byte replaced: the fast decoder takes a variant only
 * when the general path decodes it to the same reply. */
static void test_fast_mutations_agree(void **state) {
    (void)state;
    static const uint8_t subst[] = {0x00, 0x01, 0x7f, 0x80, 0x90, 0xa0,
                                    0xc0, 0xc2, 0xc3, 0xcc, 0xcf, 0xd0,
                                    0xd9, 0xdc, 0xde, 0xff};
    for (int shape = 0; shape < 2; shape++) {
        msgpack_sbuffer sb;
        pack_reply(&sb, 3, 1, shape, 1, 1, shape ? 300 : 0, NULL);
        uint8_t *b = malloc(sb.size);
        assert_non_null(b);
        size_t taken = 0;
        for (size_t len = 0; len < sb.size; len++) {
            memcpy(b, sb.data, len);
            assert_int_equal(both_ways(b, len), 1); /* Cut: never whole. */
        }
        for (size_t i = 0; i < sb.size; i++)
            for (size_t s = 0; s < sizeof(subst) + 2; s++) {
                memcpy(b, sb.data, sb.size);
                uint8_t o = b[i];
                b[i] = s < sizeof(subst)    ? subst[s]
                       : s == sizeof(subst) ? (uint8_t)(o + 1)
                                            : (uint8_t)(o - 1);
                taken += both_ways(b, sb.size) == 0;
            }
        assert_true(taken > 0); /* Some variants stay valid (names). */
        free(b);
        msgpack_sbuffer_destroy(&sb);
    }
}

/* Error replies, load errors, other replies and garbage go to the
 * general path. */
static void test_fast_leaves_the_rest(void **state) {
    (void)state;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wb__pack_error_rep(&pk, TEST_ID, WB_ENOMODEL, "no model", 0);
    assert_int_equal(both_ways((const uint8_t *)sb.data, sb.size), 1);
    msgpack_sbuffer_clear(&sb);
    wb__report_src rep;
    memset(&rep, 0, sizeof(rep));
    rep.text = "Error(s) in loading state_dict";
    wb__pack_load_error_rep(&pk, TEST_ID, 3, &rep);
    assert_int_equal(both_ways((const uint8_t *)sb.data, sb.size), 1);
    msgpack_sbuffer_clear(&sb);
    wb__pack_hello_rep(&pk, TEST_ID, 1234, WB_PROTO_VERSION);
    assert_int_equal(both_ways((const uint8_t *)sb.data, sb.size), 1);
    msgpack_sbuffer_clear(&sb);
    /* A reply with id 0, which only an error may carry. */
    rows r = {1, 0, NULL};
    uint64_t seg = 1u << 20;
    wb__pack_map_rep(&pk, 0, 1, 1, &seg, 1, 1, row, &r, NULL, NULL, 0, &rep);
    assert_int_equal(both_ways((const uint8_t *)sb.data, sb.size), 1);
    msgpack_sbuffer_destroy(&sb);
    assert_int_equal(both_ways((const uint8_t *)"", 0), 1);
    assert_int_equal(both_ways((const uint8_t *)"\xdf\xff\xff\xff\xff", 5), 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fast_takes_daemon_replies),
        cmocka_unit_test(test_fast_mutations_agree),
        cmocka_unit_test(test_fast_leaves_the_rest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
