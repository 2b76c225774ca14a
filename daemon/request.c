/* request.c -- What every handler reads from a request the same way: a
 * valid name, and the model@version it names (answering the error itself).
 */
#include <string.h>

#include "request.h"

#include "msg.h"
#include "reply.h"
#include "wire.h"

int wb__req_name(wb__str name, char *buf) {
    if (wb__check_name(name.p, name.n))
        return WB_ENAME;
    memcpy(buf, name.p, name.n);
    buf[name.n] = '\0';
    return 0;
}

wb__version *wb__req_version(wb__session *s, uint64_t id,
                             const msgpack_object *req, char *model) {
    wb__model_req mr;
    int rc = wb__decode_model_req(req, &mr);
    if (rc == 0)
        rc = wb__req_name(mr.model, model);
    if (rc) {
        wb__reply_error(s, id, rc,
                        rc == WB_EPROTO ? "model must be a string and "
                                          "version an integer"
                                        : "a valid model name is required");
        return NULL;
    }
    wb__model *m = wb__model_find(model);
    if (m == NULL || m->versions == NULL) {
        wb__reply_error(s, id, WB_ENOMODEL, "no model named '%s'", model);
        return NULL;
    }
    wb__version *v = wb__version_find(m, mr.version);
    if (v == NULL)
        wb__reply_error(s, id, WB_ENOVERSION,
                        "model '%s' has no version %llu (latest is %llu)",
                        model, (unsigned long long)mr.version,
                        (unsigned long long)wb__version_latest(m)->number);
    return v;
}
