/* fdpass.h -- Descriptors over a Unix stream socket (SCM_RIGHTS), the one
 * implementation the daemon and the client library share.
 *
 * Descriptors always ride on the first byte of the data they belong to,
 * and at least one data byte goes with them (Linux drops a control message
 * sent with no data). */
#ifndef WB_COMMON_FDPASS_H
#define WB_COMMON_FDPASS_H

#include <stddef.h>
#include <sys/types.h>

#define WB_FDPASS_MAX                                                          \
    65 /* Descriptors in one message, either way: a                            \
          map reply's 64 segments and its hold. */

/* Sends up to len > 0 bytes of buf with nfds (0..WB_FDPASS_MAX) descriptors
 * attached, with MSG_NOSIGNAL and the extra flags given (e.g.
 * MSG_DONTWAIT).  The descriptors stay open here: the kernel holds its own
 * references once the call returned a positive count.  Returns the bytes
 * sent, or -1 with errno set. */
ssize_t wb__fd_send(int sock, const void *buf, size_t len, const int *fds,
                    int nfds, int flags);

/* Receives up to len bytes into buf with MSG_CMSG_CLOEXEC and the extra
 * flags given.  Up to maxfds passed descriptors are stored in fds (fds may
 * be NULL when maxfds is 0) and counted in *nfds; any others are closed at
 * once.  *ctrunc is set to 1 when the kernel truncated the control data
 * (descriptors were lost), else 0.  Returns the bytes received (0 at end of
 * stream), or -1 with errno set (nothing stored). */
ssize_t wb__fd_recv(int sock, void *buf, size_t len, int *fds, int maxfds,
                    int *nfds, int *ctrunc, int flags);

#endif
