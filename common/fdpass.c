/* fdpass.c -- Sending and receiving descriptors with SCM_RIGHTS. */
#include "fdpass.h"

#include <assert.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Control buffer for WB_FDPASS_MAX descriptors, aligned for cmsghdr. */
typedef union fd_ctl {
    char buf[CMSG_SPACE(sizeof(int) * WB_FDPASS_MAX)];
    struct cmsghdr align;
} fd_ctl;

ssize_t wb__fd_send(int sock, const void *buf, size_t len, const int *fds,
                    int nfds, int flags) {
    assert(len > 0 || nfds == 0);
    assert(nfds >= 0 && nfds <= WB_FDPASS_MAX);
    struct iovec iov = {(void *)buf, len};
    struct msghdr msg = {0};
    fd_ctl ctl;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (nfds > 0) {
        memset(&ctl, 0, sizeof(ctl));
        msg.msg_control = ctl.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t n;
    do
        n = sendmsg(sock, &msg, MSG_NOSIGNAL | flags);
    while (n < 0 && errno == EINTR);
    return n;
}

ssize_t wb__fd_recv(int sock, void *buf, size_t len, int *fds, int maxfds,
                    int *nfds, int *ctrunc, int flags) {
    assert(maxfds == 0 || fds != NULL);
    struct iovec iov = {buf, len};
    struct msghdr msg = {0};
    fd_ctl ctl;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl.buf;
    msg.msg_controllen = sizeof(ctl.buf);
    *nfds = 0;
    *ctrunc = 0;
    ssize_t n;
    do
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | flags);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -1;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm;
         cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
            if (*nfds < maxfds)
                fds[(*nfds)++] = fd;
            else
                close(fd);
        }
    }
    if (msg.msg_flags & MSG_CTRUNC)
        *ctrunc = 1;
    return n;
}
