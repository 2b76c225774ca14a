/* op_pin.c -- pin: keeping a version listed whatever --keep says.
 *
 * A pin protects a version from retention only: an explicit drop still
 * removes it.  Unpinning can leave a model with more unpinned versions
 * than --keep allows; retention then runs at once, as after a commit, and
 * may retire the version just unpinned. */
#include "log.h"
#include "msg.h"
#include "ops.h"
#include "registry.h"
#include "reply.h"
#include "request.h"
#include "restart.h"
#include "wire.h"

void wb__op_pin(wb__session *s, uint64_t id, const msgpack_object *req) {
    wb__pin_req pr;
    int rc = wb__decode_pin_req(req, &pr);
    if (rc) {
        wb__reply_error(s, id, rc,
                        rc == WB_EINVAL ? "a model name is required"
                                        : "pin needs a model string, a "
                                          "version integer and a pin "
                                          "boolean");
        return;
    }
    char model[WB_MAX_NAME + 1];
    wb__version *v = wb__req_version(s, id, req, model);
    if (v == NULL)
        return;
    uint64_t number = v->number;
    wb__model *m = v->model;
    if (v->pinned != pr.pin)
        wb__info("audit: %s %s@%llu (client %llu uid %u pid %d)",
                 pr.pin ? "pinned" : "unpinned", m->name,
                 (unsigned long long)number, (unsigned long long)s->id,
                 (unsigned)s->cred.uid, (int)s->cred.pid);
    v->pinned = pr.pin;
    wb__restart_changed();
    if (!pr.pin) {
        wb__model_ref(m);
        wb__retention_apply(m);
        wb__model_unref(m);
    }
    wb__reply r;
    wb__reply_init(&r, id);
    wb__pack_u64_rep(&r.pk, id, "version", number);
    wb__reply_send(s, &r, NULL, 0);
}
