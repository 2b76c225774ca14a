/* common.c -- Error strings, dtype tables and version of the wbroker API.
 *
 * Shared by the daemon and the client library; generated from the X-macro
 * tables in wbroker.h so that codes, names and messages never drift. */
#include <string.h>

#include "wbroker.h"

unsigned wb_version(void) {
    return WB_VERSION_HEX;
}

#define WB__STR2(x) #x
#define WB__STR(x) WB__STR2(x)
const char *wb_version_string(void) {
    return WB__STR(WB_VERSION_MAJOR) "." WB__STR(WB_VERSION_MINOR) "." WB__STR(
        WB_VERSION_PATCH);
}

const char *wb_strerror(int err) {
    switch (err) {
    case WB_OK:
        return "success";
#define WB__ERR_MSG(name, code, msg)                                           \
    case WB_##name:                                                            \
        return msg;
        WB_ERRNO_MAP(WB__ERR_MSG)
#undef WB__ERR_MSG
    }
    return "unknown error";
}

const char *wb_err_name(int err) {
    switch (err) {
    case WB_OK:
        return "OK";
#define WB__ERR_NAME(name, code, msg)                                          \
    case WB_##name:                                                            \
        return #name;
        WB_ERRNO_MAP(WB__ERR_NAME)
#undef WB__ERR_NAME
    }
    return "EUNKNOWN";
}

static const struct {
    const char *name; /* safetensors name. */
    size_t size;      /* Element size in bytes. */
} dtype_table[WB_DTYPE_COUNT] = {
#define WB__DT_ROW(name, size) {#name, size},
    WB_DTYPE_MAP(WB__DT_ROW)
#undef WB__DT_ROW
};

size_t wb_dtype_size(int dtype) {
    if (dtype < 0 || dtype >= WB_DTYPE_COUNT)
        return 0;
    return dtype_table[dtype].size;
}

const char *wb_dtype_name(int dtype) {
    if (dtype < 0 || dtype >= WB_DTYPE_COUNT)
        return NULL;
    return dtype_table[dtype].name;
}

int wb_dtype_from_name(const char *name) {
    if (name == NULL)
        return WB_EDTYPE;
    for (int i = 0; i < WB_DTYPE_COUNT; i++)
        if (strcmp(dtype_table[i].name, name) == 0)
            return i;
    return WB_EDTYPE;
}
