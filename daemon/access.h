/* access.h -- Who may do what: roles, model ownership, the policy file,
 * per-user quotas and connection caps.
 *
 * Every request passes wb__access_request() in dispatch.c before its
 * handler runs; the one decision a handler makes itself is ownership of
 * the model a commit creates (wb__access_model()), since only the commit
 * knows its model.  Root and the daemon's own user are always admins.
 * Without a policy file every other user may read everything and publish
 * new models; with one, the first line naming the user and the model
 * decides, and a user no line names cannot connect.  A model belongs to
 * its first publisher for as long as the daemon remembers its name: only
 * that user or an admin publishes further versions of it, pins or
 * removes it. */
#ifndef WB_DAEMON_ACCESS_H
#define WB_DAEMON_ACCESS_H

#include <stddef.h>
#include <stdint.h>

#include "session.h"
#include "wbroker.h" /* WB_NO_OWNER: also a name never committed to. */

#define WB_DEFAULT_ACCESS_FILE "/etc/wbroker/access.conf"
#define WB_ADMIN_SLOTS                                                         \
    16 /* Connections beyond --max-clients that                                \
          only admins may take. */

enum { WB_ROLE_NONE, WB_ROLE_READ, WB_ROLE_PUBLISH, WB_ROLE_ADMIN };

extern size_t wb__max_clients;          /* --max-clients. */
extern size_t wb__max_clients_per_user; /* --max-clients-per-user. */

/* Loads the policy file at start-up (path NULL: the default file when it
 * exists).  Returns 0, or -1 after logging the line and the reason. */
int wb__access_load(const char *path);
/* Reloads the policy file (SIGHUP); an error keeps the policy in force. */
void wb__access_reload(void);
/* Frees the policy (at shut-down). */
void wb__access_clear(void);

/* 1 when s's user is an admin of every model (root, the daemon's user, or
 * a policy line "WHO * admin" naming them). */
int wb__access_admin(const wb__session *s);
/* At accept, for the session s just opened: -1 (after logging) when its
 * user already has so many connections, hello or not, that it would crowd
 * others out before any hello could be refused: it is closed at once. */
int wb__access_open(const wb__session *s);
/* At hello: answers WB_EPERM or WB_ELIMIT and returns -1 when s's user
 * may not connect (not named by the policy, or over a connection cap). */
int wb__access_hello(wb__session *s, uint64_t id);
/* Checks that s's user holds role need for model (NULL: a request naming
 * no model) and, for need >= WB_ROLE_PUBLISH, owns the model when it has
 * an owner.  action names the request in the sentence ("remove").
 * Answers WB_EPERM, logs the refusal and returns -1; else 0. */
int wb__access_model(wb__session *s, uint64_t id, int need, const char *action,
                     const char *model);
/* Checks that charging bytes more to s's user stays within the quota the
 * policy gives it for model.  what names the charge ("publishing").
 * Answers WB_ELIMIT with the quota and the usage and returns -1; else 0. */
int wb__access_quota(wb__session *s, uint64_t id, const char *model,
                     uint64_t bytes, const char *what);

/* Whom a charge counts against, and the quota that applies to it. */
typedef struct wb__quota {
    uint32_t uid;   /* User charged. */
    uint64_t limit; /* Quota in bytes, or UINT64_MAX for none. */
    int line;       /* Policy line giving it. */
} wb__quota;
/* The quota that s's charges for model count against. */
wb__quota wb__access_quota_of(const wb__session *s, const char *model);

/* 1 when s may see a hold of user hold_uid on a model of owner: admins
 * see every hold, the owner every hold of its models, anyone else the
 * holds of its own processes. */
int wb__access_sees_hold(const wb__session *s, uint32_t hold_uid,
                         uint32_t owner);

/* "65534 (nobody)" for uid, into buf of n bytes. */
const char *wb__user_label(uint32_t uid, char *buf, size_t n);

#endif
