/* session.c -- The request layer's state per connection, and the list of
 * connected sessions.
 *
 * See session.h.  Nothing here answers requests: handlers build replies
 * (reply.c) and dispatch.c opens and closes sessions for the connection
 * layer. */
#include "session.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

static wb__session *sessions; /* Connected sessions. */
static size_t nsessions;      /* Entries in sessions. */

/* ------------------------------------------------------------ sessions */

void wb__session_ref(wb__session *s) {
    assert(s->refs > 0);
    s->refs++;
}

void wb__session_unref(wb__session *s) {
    if (s == NULL)
        return;
    assert(s->refs > 0);
    if (--s->refs > 0)
        return;
    assert(s->conn == NULL && s->pending == NULL && s->watch == NULL);
    free(s);
}

int wb__session_live(const wb__session *s) {
    return s->conn != NULL && !wb__conn_closing(s->conn);
}

void wb__session_pause(wb__session *s) {
    assert(!s->busy);
    s->busy = 1;
    wb__conn_pause(s->conn);
}

void wb__session_resume(wb__session *s) {
    assert(s->busy);
    s->busy = 0;
    if (s->conn)
        wb__conn_resume(s->conn);
}

size_t wb__sessions_count(void) {
    return nsessions;
}

size_t wb__sessions_count_hello(uint32_t uid) {
    size_t n = 0;
    for (const wb__session *s = sessions; s; s = s->next)
        n += s->hello && (uid == UINT32_MAX || (uint32_t)s->cred.uid == uid);
    return n;
}

size_t wb__sessions_count_of(uint32_t uid) {
    size_t n = 0;
    for (const wb__session *s = sessions; s; s = s->next)
        n += (uint32_t)s->cred.uid == uid;
    return n;
}

wb__session *wb__session_open(wb__conn *c) {
    wb__session *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->conn = c;
    s->id = wb__conn_id(c);
    s->cred = *wb__conn_cred(c);
    s->ngroups = wb__conn_groups(c, s->groups, WB_MAX_PEER_GROUPS);
    s->refs = 1;
    s->next = sessions;
    if (sessions)
        sessions->prev = s;
    sessions = s;
    nsessions++;
    return s;
}

void wb__session_close(wb__session *s) {
    assert(s->conn != NULL);
    assert(s->pending == NULL && s->watch == NULL);
    if (s->prev)
        s->prev->next = s->next;
    else
        sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    assert(nsessions > 0);
    nsessions--;
    s->conn = NULL;
    wb__session_unref(s);
}
