/* access.c -- Roles, ownership, the policy file, quotas and connection
 * caps (see access.h).
 *
 * The policy is an array of rules parsed whole before it replaces the one
 * in force, so that a reload with an error changes nothing.  Names of
 * users and groups are resolved when the file is read: a rule names ids,
 * and the peer's ids (SO_PEERCRED, SO_PEERGROUPS) are what it is matched
 * against, never the user database's view of the peer. */
#include "access.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <fnmatch.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "registry.h"
#include "reply.h"
#include "wire.h"

enum { WHO_ANY, WHO_USER, WHO_GROUP };

typedef struct rule {
    int who;        /* WHO_ANY, WHO_USER or WHO_GROUP. */
    uint32_t id;    /* Uid or gid named. */
    char *models;   /* Glob of model names (fnmatch). */
    int role;       /* WB_ROLE_READ .. WB_ROLE_ADMIN. */
    uint64_t quota; /* Bytes per user, or UINT64_MAX for none. */
    int line;       /* Line in the file, for logs. */
} rule;

typedef struct policy {
    rule *r;  /* Rules in file order. */
    size_t n; /* Entries in r. */
} policy;

size_t wb__max_clients = 1024;
size_t wb__max_clients_per_user = 256;

static char *policy_path; /* File in force, or NULL: no policy. */
static policy *cur;       /* Rules in force (NULL with no file). */

/* ------------------------------------------------------------ the file */

static void policy_free(policy *p) {
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->n; i++)
        free(p->r[i].models);
    free(p->r);
    free(p);
}

/* Parses "123", "64K", "512M", "8G", "1T" (powers of 1024). */
static int parse_quota(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)*s))
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    int shift = 0;
    switch (*end) {
    case '\0':
        break;
    case 'k':
    case 'K':
        shift = 10;
        break;
    case 'm':
    case 'M':
        shift = 20;
        break;
    case 'g':
    case 'G':
        shift = 30;
        break;
    case 't':
    case 'T':
        shift = 40;
        break;
    default:
        return -1;
    }
    if (*end && end[1] != '\0' && strcmp(end + 1, "iB") != 0 &&
        strcmp(end + 1, "B") != 0)
        return -1;
    if (shift && v > (UINT64_MAX >> shift))
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

/* Parses "NAME" or "ID" of a user (group set) into *id. */
static int parse_id(const char *s, int group, uint32_t *id) {
    char *end;
    if (isdigit((unsigned char)*s)) {
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (errno || *end || v >= UINT32_MAX)
            return -1;
        *id = (uint32_t)v;
        return 0;
    }
    if (group) {
        struct group *g = getgrnam(s);
        if (g == NULL)
            return -1;
        *id = (uint32_t)g->gr_gid;
    } else {
        struct passwd *pw = getpwnam(s);
        if (pw == NULL)
            return -1;
        *id = (uint32_t)pw->pw_uid;
    }
    return 0;
}

/* Parses one non-empty line into r.  Returns NULL or the reason. */
static const char *parse_rule(char *line, rule *r) {
    char *f[5];
    int n = 0;
    for (char *tok = strtok(line, " \t"); tok; tok = strtok(NULL, " \t")) {
        if (n == 4)
            return "too many fields (WHO MODELS ROLE [quota=SIZE])";
        f[n++] = tok;
    }
    if (n < 3)
        return "too few fields (WHO MODELS ROLE [quota=SIZE])";
    if (strcmp(f[0], "*") == 0) {
        r->who = WHO_ANY;
    } else if (strncmp(f[0], "user:", 5) == 0) {
        r->who = WHO_USER;
        if (parse_id(f[0] + 5, 0, &r->id))
            return "unknown user";
    } else if (strncmp(f[0], "group:", 6) == 0) {
        r->who = WHO_GROUP;
        if (parse_id(f[0] + 6, 1, &r->id))
            return "unknown group";
    } else {
        return "WHO must be user:NAME|UID, group:NAME|GID or *";
    }
    if (strcmp(f[2], "read") == 0)
        r->role = WB_ROLE_READ;
    else if (strcmp(f[2], "publish") == 0)
        r->role = WB_ROLE_PUBLISH;
    else if (strcmp(f[2], "admin") == 0)
        r->role = WB_ROLE_ADMIN;
    else
        return "ROLE must be read, publish or admin";
    r->quota = UINT64_MAX;
    if (n == 4 && (strncmp(f[3], "quota=", 6) != 0 ||
                   parse_quota(f[3] + 6, &r->quota) != 0))
        return "the fourth field must be quota=SIZE (e.g. quota=8G)";
    if ((r->models = strdup(f[1])) == NULL)
        return "out of memory";
    return NULL;
}

/* Reads path whole.  Returns the policy, or NULL after logging why. */
static policy *policy_read(const char *path) {
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        wb__error("access policy %s: %s", path, strerror(errno));
        return NULL;
    }
    policy *p = calloc(1, sizeof(*p));
    char buf[1024];
    int lineno = 0;
    const char *why = p ? NULL : "out of memory";
    while (why == NULL && fgets(buf, sizeof(buf), f)) {
        lineno++;
        size_t len = strlen(buf);
        if (len == sizeof(buf) - 1 && buf[len - 1] != '\n') {
            why = "line too long";
            break;
        }
        char *hash = strchr(buf, '#');
        if (hash)
            *hash = '\0';
        buf[strcspn(buf, "\r\n")] = '\0';
        char *s = buf;
        while (*s == ' ' || *s == '\t')
            s++;
        if (*s == '\0')
            continue;
        rule r = {.line = lineno};
        why = parse_rule(s, &r);
        if (why)
            break;
        rule *nr = realloc(p->r, (p->n + 1) * sizeof(*nr));
        if (nr == NULL) {
            free(r.models);
            why = "out of memory";
            break;
        }
        p->r = nr;
        p->r[p->n++] = r;
    }
    if (why == NULL && ferror(f))
        why = "read error", lineno = 0;
    fclose(f);
    if (why) {
        wb__error("access policy %s line %d: %s", path, lineno, why);
        policy_free(p);
        return NULL;
    }
    return p;
}

int wb__access_load(const char *path) {
    if (path == NULL) {
        if (access(WB_DEFAULT_ACCESS_FILE, F_OK) != 0)
            return 0;
        path = WB_DEFAULT_ACCESS_FILE;
    }
    policy *p = policy_read(path);
    if (p == NULL || (policy_path = strdup(path)) == NULL) {
        policy_free(p);
        return -1;
    }
    cur = p;
    wb__info("access policy %s: %zu rules", path, p->n);
    return 0;
}

void wb__access_reload(void) {
    if (policy_path == NULL) {
        /* The default file may have been written since the start. */
        if (access(WB_DEFAULT_ACCESS_FILE, F_OK) == 0)
            wb__access_load(NULL);
        else
            wb__info("audit: reload: no access policy file (%s does not "
                     "exist)",
                     WB_DEFAULT_ACCESS_FILE);
        return;
    }
    policy *p = policy_read(policy_path);
    if (p == NULL) {
        wb__warn("audit: reload of %s failed: the policy in force stays",
                 policy_path);
        return;
    }
    policy_free(cur);
    cur = p;
    wb__info("audit: reloaded access policy %s: %zu rules", policy_path, p->n);
}

void wb__access_clear(void) {
    policy_free(cur);
    cur = NULL;
    free(policy_path);
    policy_path = NULL;
}

/* ------------------------------------------------------------ matching */

static int who_matches(const rule *r, const wb__session *s) {
    switch (r->who) {
    case WHO_ANY:
        return 1;
    case WHO_USER:
        return r->id == (uint32_t)s->cred.uid;
    default:
        if (r->id == (uint32_t)s->cred.gid)
            return 1;
        for (int i = 0; i < s->ngroups; i++)
            if (r->id == (uint32_t)s->groups[i])
                return 1;
        return 0;
    }
}

/* Root and the daemon's own user. */
static int born_admin(const wb__session *s) {
    return s->cred.uid == 0 || s->cred.uid == getuid();
}

/* The first rule naming s's user and model, or NULL. */
static const rule *rule_for(const wb__session *s, const char *model) {
    for (size_t i = 0; cur && i < cur->n; i++)
        if (who_matches(&cur->r[i], s) &&
            fnmatch(cur->r[i].models, model, 0) == 0)
            return &cur->r[i];
    return NULL;
}

/* s's role for model (NULL: a request naming none). */
static int role_of(const wb__session *s, const char *model) {
    if (born_admin(s))
        return WB_ROLE_ADMIN;
    if (cur == NULL)
        return WB_ROLE_PUBLISH;
    if (model == NULL)
        return wb__access_admin(s) ? WB_ROLE_ADMIN : WB_ROLE_READ;
    const rule *r = rule_for(s, model);
    return r ? r->role : WB_ROLE_NONE;
}

int wb__access_admin(const wb__session *s) {
    if (born_admin(s))
        return 1;
    for (size_t i = 0; cur && i < cur->n; i++)
        if (who_matches(&cur->r[i], s)) /* The first naming s decides. */
            return cur->r[i].role == WB_ROLE_ADMIN &&
                   strcmp(cur->r[i].models, "*") == 0;
    return 0;
}

const char *wb__user_label(uint32_t uid, char *buf, size_t n) {
    struct passwd *pw = getpwuid((uid_t)uid);
    if (pw)
        snprintf(buf, n, "%u (%s)", (unsigned)uid, pw->pw_name);
    else
        snprintf(buf, n, "%u", (unsigned)uid);
    return buf;
}

/* Name of uid alone, for "it belongs to NAME". */
static const char *user_name(uint32_t uid, char *buf, size_t n) {
    struct passwd *pw = getpwuid((uid_t)uid);
    if (pw)
        snprintf(buf, n, "%s", pw->pw_name);
    else
        snprintf(buf, n, "user %u", (unsigned)uid);
    return buf;
}

static const char *role_name(int role) {
    static const char *const names[] = {"no role", "read", "publish", "admin"};
    assert(role >= 0 && role <= WB_ROLE_ADMIN);
    return names[role];
}

/* ------------------------------------------------------------ checks */

int wb__access_open(const wb__session *s) {
    if (born_admin(s))
        return 0;
    size_t mine = wb__sessions_count_of((uint32_t)s->cred.uid);
    if (mine <= wb__max_clients_per_user + WB_ADMIN_SLOTS)
        return 0;
    wb__info("audit: refused a connection of uid %u pid %d: %zu open "
             "already, with or without a hello",
             (unsigned)s->cred.uid, (int)s->cred.pid, mine - 1);
    return -1;
}

int wb__access_hello(wb__session *s, uint64_t id) {
    char who[96];
    int admin = wb__access_admin(s);
    int named = born_admin(s) || cur == NULL;
    for (size_t i = 0; !named && i < cur->n; i++)
        named = who_matches(&cur->r[i], s);
    if (!named) {
        wb__user_label((uint32_t)s->cred.uid, who, sizeof(who));
        wb__info("audit: refused connect: user %s pid %d is not named by "
                 "the access policy",
                 who, (int)s->cred.pid);
        wb__reply_error(s, id, WB_EPERM,
                        "user %s may not connect: the access policy %s names "
                        "no rule for it",
                        who, policy_path);
        return -1;
    }
    size_t total = wb__sessions_count_hello(UINT32_MAX);
    size_t mine = wb__sessions_count_hello((uint32_t)s->cred.uid);
    const char *cap = NULL;
    size_t limit = 0;
    /* Admins have WB_ADMIN_SLOTS beyond --max-clients, and no per-user
     * cap, so that a full daemon can still be inspected and cleaned. */
    if (admin && total >= wb__max_clients + WB_ADMIN_SLOTS)
        cap = "clients in all (--max-clients and the admins' slots)",
        limit = wb__max_clients + WB_ADMIN_SLOTS;
    else if (admin)
        return 0;
    else if (total >= wb__max_clients)
        cap = "clients in all (--max-clients)", limit = wb__max_clients;
    else if (mine >= wb__max_clients_per_user)
        cap = "clients per user (--max-clients-per-user)",
        limit = wb__max_clients_per_user;
    if (cap) {
        wb__user_label((uint32_t)s->cred.uid, who, sizeof(who));
        wb__info("audit: refused connect: user %s pid %d: %zu %s", who,
                 (int)s->cred.pid, limit, cap);
        wb__reply_error(s, id, WB_ELIMIT,
                        "user %s may not connect: at most %zu %s are served "
                        "at once",
                        who, limit, cap);
        return -1;
    }
    return 0;
}

int wb__access_model(wb__session *s, uint64_t id, int need, const char *action,
                     const char *model) {
    int role = role_of(s, model);
    const char *why = NULL;
    char owner[64] = "", who[96];
    if (role < need) {
        why = "role";
    } else if (need >= WB_ROLE_PUBLISH && role < WB_ROLE_ADMIN && model) {
        const wb__model *m = wb__model_find(model);
        if (m && m->owner != WB_NO_OWNER && m->owner != (uint32_t)s->cred.uid)
            why = user_name(m->owner, owner, sizeof(owner));
    }
    if (why == NULL)
        return 0;
    wb__user_label((uint32_t)s->cred.uid, who, sizeof(who));
    wb__info("audit: refused %s of model '%s' for user %s pid %d (%s)", action,
             model ? model : "", who, (int)s->cred.pid,
             owner[0] ? "not its owner" : role_name(role));
    if (owner[0])
        wb__reply_error(s, id, WB_EPERM,
                        "user %s may not %s model '%s': it belongs to %s", who,
                        action, model, owner);
    else if (model)
        wb__reply_error(s, id, WB_EPERM,
                        "user %s may not %s model '%s': the access policy "
                        "gives it %s there, %s is needed",
                        who, action, model, role_name(role), role_name(need));
    else
        wb__reply_error(s, id, WB_EPERM,
                        "user %s may not %s: the access policy gives it %s, "
                        "%s is needed",
                        who, action, role_name(role), role_name(need));
    return -1;
}

wb__quota wb__access_quota_of(const wb__session *s, const char *model) {
    wb__quota q = {(uint32_t)s->cred.uid, UINT64_MAX, 0};
    const rule *r = born_admin(s) ? NULL : rule_for(s, model);
    if (r)
        q.limit = r->quota, q.line = r->line;
    return q;
}

int wb__access_quota(wb__session *s, uint64_t id, const char *model,
                     uint64_t bytes, const char *what) {
    if (born_admin(s) || cur == NULL)
        return 0;
    const rule *r = rule_for(s, model);
    if (r == NULL || r->quota == UINT64_MAX)
        return 0;
    uint64_t used = wb__usage_of((uint32_t)s->cred.uid);
    if (bytes <= r->quota && used <= r->quota - bytes)
        return 0;
    char who[96];
    wb__user_label((uint32_t)s->cred.uid, who, sizeof(who));
    wb__info("audit: refused %s %llu bytes for model '%s' to user %s pid %d: "
             "quota %llu, %llu in use",
             what, (unsigned long long)bytes, model, who, (int)s->cred.pid,
             (unsigned long long)r->quota, (unsigned long long)used);
    wb__reply_error(s, id, WB_ELIMIT,
                    "%s %llu bytes would exceed the quota of user %s (%llu "
                    "bytes, line %d of %s; %llu in use)",
                    what, (unsigned long long)bytes, who,
                    (unsigned long long)r->quota, r->line, policy_path,
                    (unsigned long long)used);
    return -1;
}

int wb__access_sees_hold(const wb__session *s, uint32_t hold_uid,
                         uint32_t owner) {
    uint32_t me = (uint32_t)s->cred.uid;
    return hold_uid == me || owner == me || wb__access_admin(s);
}
