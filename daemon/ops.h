/* ops.h -- The request handlers, one family per file.
 *
 *   op_publish.c  publish, commit, abort, drop (writing and removing)
 *   op_map.c      map (resolution, conversion, the load report)
 *   op_watch.c    watch (waiting for a newer version)
 *   op_inspect.c  list, status, holders
 *   op_pin.c      pin (pins and unpins)
 * dispatch.c decodes the envelope of every request and calls the handler
 * named by its "op".  A handler validates its arguments first and answers
 * with exactly one reply, now or later: to answer later it parks the
 * session (wb__session_pause) and resumes it once answered.  It never
 * closes a connection or runs another client's requests. */
#ifndef WB_DAEMON_OPS_H
#define WB_DAEMON_OPS_H

#include <msgpack.h>
#include <stdint.h>

#include "session.h"

extern double wb__started; /* uv_hrtime() at start, in seconds (set by
                              main.c). */

/* A handler: answers request id of s whose decoded map is req. */
typedef void (*wb__op_fn)(wb__session *s, uint64_t id,
                          const msgpack_object *req);

void wb__op_publish(wb__session *s, uint64_t id, const msgpack_object *req);
void wb__op_commit(wb__session *s, uint64_t id, const msgpack_object *req);
void wb__op_abort(wb__session *s, uint64_t id, const msgpack_object *req);
void wb__op_drop(wb__session *s, uint64_t id, const msgpack_object *req);
void wb__op_map(wb__session *s, uint64_t id, const msgpack_object *req);
void wb__op_watch(wb__session *s, uint64_t id, const msgpack_object *req);
void wb__op_list(wb__session *s, uint64_t id, const msgpack_object *req);
void wb__op_status(wb__session *s, uint64_t id, const msgpack_object *req);
void wb__op_holders(wb__session *s, uint64_t id, const msgpack_object *req);
void wb__op_pin(wb__session *s, uint64_t id, const msgpack_object *req);

/* Called when s's client is gone: abort its publishes, end its watch. */
void wb__publish_session_closed(wb__session *s);
void wb__watch_session_closed(wb__session *s);
/* Answers the watchers of model that wait for a version older than its
 * latest (after a commit). */
struct wb__model;
void wb__watch_notify(struct wb__model *m);

#endif
