/* fuzz_safetensors.c -- libFuzzer harness of the client's safetensors
 * header parser (wb_import_file, wb_check_file and the CLI read every
 * file through it).
 *
 * The input is a file, or the start of one: the 8-byte length prefix, the
 * JSON header and data.  It is parsed as a whole file, then as the start
 * of a longer one (longer by the KiB its last two bytes say), since the
 * parser reads only the header and the data section it describes may lie
 * past the bytes given.  A header that parses must describe tensors that
 * tile the data section in order. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../client/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Parses buf as the start of a file of file_size bytes and checks what a
 * successful parse promises. */
static void parse(const uint8_t *buf, size_t size, uint64_t file_size) {
    wb__st_file f;
    char err[256];
    int rc = wb__st_parse_header(buf, size, file_size, &f, err, sizeof(err));
    if (rc == 0) {
        uint64_t at = 0;
        for (size_t i = 0; i < f.n; i++) {
            if (f.t[i].begin != at || f.t[i].end < f.t[i].begin ||
                f.t[i].ndim < 0 || f.t[i].ndim > WB_MAX_DIMS)
                abort();
            at = f.t[i].end;
        }
        if (at != f.data_len || f.data_start + f.data_len != file_size)
            abort();
        for (size_t k = 0; k < f.n_ties; k++)
            if (f.tie_of[k] >= f.n)
                abort();
        wb__st_file_free(&f);
    } else if (rc != WB_EFORMAT && rc != WB_EINVAL && rc != WB_ENOMEM) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 1u << 20)
        return -1;
    uint64_t extra = 0;
    if (size >= 2)
        extra = ((uint64_t)data[size - 2] << 8 | data[size - 1]) * 1024;
    uint8_t *buf = malloc(size ? size : 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    parse(buf, size, size);
    if (extra)
        parse(buf, size, size + extra);
    free(buf);
    return 0;
}
