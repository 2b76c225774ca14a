/* request.h -- What every handler reads from a request the same way. */
#ifndef WB_DAEMON_REQUEST_H
#define WB_DAEMON_REQUEST_H

#include <msgpack.h>
#include <stdint.h>

#include "msg.h"
#include "registry.h"
#include "session.h"

/* Copies the model name a request carries into buf (WB_MAX_NAME + 1
 * bytes) after checking it.  Returns 0 or WB_ENAME. */
int wb__req_name(wb__str name, char *buf);

/* Looks up the model@version named by the request's "model" and "version"
 * (0: the latest), copying the name into model (WB_MAX_NAME + 1 bytes).
 * Answers the error itself (WB_EPROTO, WB_ENAME, WB_ENOMODEL,
 * WB_ENOVERSION) and returns NULL then. */
wb__version *wb__req_version(wb__session *s, uint64_t id,
                             const msgpack_object *req, char *model);

#endif
