/* client_export.c -- libwbroker: wb_export_file() and wb_export_fd(), a
 * version written out as a safetensors file.
 *
 * The daemon keeps every version as one valid safetensors image, so an
 * export maps the version shared and read-only and writes the image as it
 * is, but for the daemon's identity entry in its header, blanked out.  A file
 * is written atomically: a fresh temporary file next to it (a random name
 * opened with O_EXCL and O_NOFOLLOW, so that a file or a symbolic link planted
 * there is never written through), synced, renamed over the target, then the
 * directory synced.  The target must be absent or a regular file, checked
 * before the daemon is asked for anything and again just before the rename,
 * because the rename would replace a device node, a fifo, a socket, a directory
 * or a link rather than write to it.
 *
 * Nothing here touches process-wide state (no signal handlers, no umask
 * change), since a library shares its process: a new file gets its mode
 * from open(2) as any other new file would. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client_internal.h"
#include "identity.h"

#define WB_EXPORT_CHUNK (8u << 20) /* Bytes per write(). */
#define WB_EXPORT_PATH_MAX 4096    /* Bytes of a target path, NUL included. */
#define WB_TMP_TRIES 100           /* Random temporary names tried. */
#define WB_TMP_RANDOM 8            /* Random bytes in a temporary name. */
#define WB_TMP_MODE 0600           /* Temporary file replacing a file. */
#define WB_NEW_MODE                                                            \
    0666 /* Temporary file of a new file (less                                 \
            the umask, applied by open). */

/* The target of an export: its directory, held open so that every step
 * works on the same directory whatever happens to the path meanwhile, and
 * its name there. */
typedef struct target {
    const char *path; /* As given. */
    const char *base; /* Its last component (points into path). */
    int dfd;          /* Its directory, opened O_DIRECTORY, or -1. */
    int exists;       /* 1 if a regular file is there now. */
    mode_t mode;      /* Its permission bits, when it exists. */
} target;

/* Names the kind of a file that is not a regular file. */
static const char *file_kind(mode_t mode) {
    if (S_ISDIR(mode))
        return "a directory";
    if (S_ISCHR(mode))
        return "a character device";
    if (S_ISBLK(mode))
        return "a block device";
    if (S_ISFIFO(mode))
        return "a fifo";
    if (S_ISSOCK(mode))
        return "a socket";
    return "a special file";
}

/* Looks at what t's name is now, without following a symbolic link:
 * absent or a regular file is fine; anything else is refused.  Returns 0,
 * or records why on c. */
static int target_check(wb_client *c, target *t) {
    struct stat st;
    if (fstatat(t->dfd, t->base, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno != ENOENT)
            return wb__cl_fail(c, WB_ESYS, "%s: %s", t->path, strerror(errno));
        t->exists = 0;
        return 0;
    }
    if (S_ISREG(st.st_mode)) {
        t->exists = 1;
        t->mode = st.st_mode & 0777;
        return 0;
    }
    if (S_ISLNK(st.st_mode))
        return wb__cl_fail(c, WB_EINVAL,
                           "%s: a symbolic link, not a regular file; export "
                           "neither follows nor replaces links (name the "
                           "file it points to)",
                           t->path);
    return wb__cl_fail(c, WB_EINVAL,
                       "%s: %s, not a regular file; export only creates or "
                       "replaces regular files",
                       t->path, file_kind(st.st_mode));
}

/* Opens the directory of path into *t and checks the target.  Returns 0
 * (close t->dfd when done), or records the failure with nothing open. */
static int target_open(wb_client *c, const char *path, target *t) {
    char dir[WB_EXPORT_PATH_MAX];
    const char *slash = strrchr(path, '/');
    memset(t, 0, sizeof(*t));
    t->path = path;
    t->base = slash ? slash + 1 : path;
    t->dfd = -1;
    if (*t->base == '\0')
        return wb__cl_fail(c, WB_EINVAL,
                           "%s: names a directory, not a regular file", path);
    if (strlen(path) >= sizeof(dir))
        return wb__cl_fail(c, WB_EINVAL, "%s: path too long", path);
    size_t dlen = slash == NULL   ? 0
                  : slash == path ? 1
                                  : (size_t)(slash - path);
    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else
        snprintf(dir, sizeof(dir), "%.*s", (int)dlen, path);
    t->dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (t->dfd < 0)
        return wb__cl_fail(c, WB_ESYS, "%s: directory %s: %s", path, dir,
                           strerror(errno));
    int rc = target_check(c, t);
    if (rc) {
        close(t->dfd);
        t->dfd = -1;
    }
    return rc;
}

/* Creates a fresh temporary file for t in its directory, named
 * ".BASE.RANDOM.tmp" (BASE shortened to fit NAME_MAX) with
 * O_CREAT|O_EXCL|O_NOFOLLOW, so that nothing already there is ever
 * opened; up to WB_TMP_TRIES random names.  Writes the name into name.
 * Returns the descriptor, or -1 with errno set. */
static int tmp_create(const target *t, char name[NAME_MAX + 1]) {
    static const char hex[] = "0123456789abcdef";
    /* Room for BASE beside the two dots, the random digits and ".tmp". */
    int room = NAME_MAX - 2 - 2 * WB_TMP_RANDOM - 4;
    for (int attempt = 0; attempt < WB_TMP_TRIES; attempt++) {
        uint8_t r[WB_TMP_RANDOM];
        if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r))
            return -1;
        char suffix[2 * WB_TMP_RANDOM + 1];
        for (size_t i = 0; i < sizeof(r); i++) {
            suffix[2 * i] = hex[r[i] >> 4];
            suffix[2 * i + 1] = hex[r[i] & 15];
        }
        suffix[2 * WB_TMP_RANDOM] = '\0';
        snprintf(name, NAME_MAX + 1, ".%.*s.%s.tmp", room, t->base, suffix);
        int fd = openat(t->dfd, name,
                        O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                        t->exists ? WB_TMP_MODE : WB_NEW_MODE);
        if (fd >= 0 || errno != EEXIST)
            return fd;
    }
    errno = EEXIST;
    return -1;
}

/* Writes the image of len bytes at data to fd in chunks, reporting each to
 * progress, with the daemon's identity entry of its header (identity.h)
 * written as spaces: an export holds the tensors, their metadata and ties,
 * and its bytes are what the version's digest digests.  Nothing is copied,
 * so there is no allocation to fail.  Returns 0, or records the failure
 * (what names the destination). */
static int write_all(wb_client *c, int fd, const char *what,
                     const uint8_t *data, size_t len, wb_progress_fn progress,
                     void *user) {
    static const uint8_t spaces[4096] = {[0 ... 4095] = ' '};
    size_t start = 0, end = 0; /* The bytes written as spaces. */
    wb__identity_span(data, len, &start, &end);
    size_t done = 0;
    int rc = progress ? progress(user, 0, len) : 0;
    while (rc == 0 && done < len) {
        size_t want =
            len - done < WB_EXPORT_CHUNK ? len - done : WB_EXPORT_CHUNK;
        const uint8_t *from = data + done;
        if (done >= start && done < end) {
            from = spaces;
            want = end - done < sizeof(spaces) ? end - done : sizeof(spaces);
        } else if (done < start && want > start - done) {
            want = start - done;
        }
        ssize_t n = write(fd, from, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return wb__cl_fail(c, WB_ESYS, "writing %s: %s", what,
                               strerror(errno));
        done += (size_t)n;
        if (progress)
            rc = progress(user, done, len);
    }
    return rc ? wb__cl_fail(c, rc, "stopped by the progress callback") : 0;
}

/* Writes the image to t's file atomically (see the file comment).
 * Returns 0, or records the failure with the file untouched and the
 * temporary file removed. */
static int write_atomic(wb_client *c, target *t, const uint8_t *data,
                        size_t len, wb_progress_fn progress, void *user) {
    /* Asked once before the temporary file exists too, so that a caller
     * that stops on a signal (the CLI) knows when there is something to
     * undo: a signal before this call may end the process outright, one
     * after it makes the next call stop the write and remove the file. */
    if (progress) {
        int stop = progress(user, 0, len);
        if (stop)
            return wb__cl_fail(c, stop, "stopped by the progress callback");
    }
    char tmp[NAME_MAX + 1];
    int fd = tmp_create(t, tmp);
    if (fd < 0)
        return wb__cl_fail(c, WB_ESYS, "%s: creating a temporary file: %s",
                           t->path, strerror(errno));
    /* The mode the target had when it was checked; a new file has its
     * mode from open() already. */
    int exists = t->exists;
    mode_t mode = t->mode;
    int rc = write_all(c, fd, tmp, data, len, progress, user);
    const char *what = NULL;
    if (rc == 0 && exists && fchmod(fd, mode) != 0)
        what = "setting the mode of";
    else if (rc == 0 && fsync(fd) != 0)
        what = "syncing";
    int e = what ? errno : 0;
    if (close(fd) != 0 && rc == 0 && what == NULL) {
        e = errno;
        what = "closing";
    }
    if (what != NULL) {
        errno = e;
        rc = wb__cl_fail(c, WB_ESYS, "%s %s: %s", what, tmp, strerror(e));
    }
    if (rc == 0 && progress && (rc = progress(user, len, len)))
        rc = wb__cl_fail(c, rc, "stopped by the progress callback");
    /* The target may have become something else while we wrote; what can
     * still change between this check and the rename is only replaced,
     * never written through (rename replaces the directory entry). */
    if (rc == 0)
        rc = target_check(c, t);
    if (rc == 0 && renameat(t->dfd, tmp, t->dfd, t->base) != 0)
        rc = wb__cl_fail(c, WB_ESYS, "renaming %s to %s: %s", tmp, t->path,
                         strerror(errno));
    if (rc) {
        unlinkat(t->dfd, tmp, 0);
        return rc;
    }
    /* Make the rename itself durable; the file is in place either way. */
    fsync(t->dfd);
    return 0;
}

/* Maps version of model and finds its image.  Returns 0 with *m (unmap
 * it) and the image, or records the failure with *m NULL. */
static int image_map(wb_client *c, const char *model, uint64_t version,
                     wb_mapping **m, const void **data, size_t *len) {
    int rc = wb_map(c, model, version, WB_MAP_SHARED, m);
    if (rc) {
        wb_unmap(*m); /* A WB_ELOAD report cannot come without rules. */
        *m = NULL;
        return rc;
    }
    if ((rc = wb_map_image(*m, data, len))) {
        wb_unmap(*m);
        *m = NULL;
        return wb__cl_fail(c, rc, "%s: cannot read the safetensors image",
                           model);
    }
    return 0;
}

/* Fills *info after exporting m's image of len bytes. */
static void export_info(wb_file_info *info, const wb_mapping *m, size_t len) {
    if (info == NULL)
        return;
    info->version = wb_map_version(m);
    info->tensors = wb_map_count(m);
    info->bytes = len;
    info->files = 0;
}

int wb_export_file(wb_client *c, const char *model, uint64_t version,
                   const char *path, wb_progress_fn progress, void *user,
                   wb_file_info *info) {
    if (c == NULL || model == NULL || path == NULL)
        return wb__cl_fail(c, WB_EINVAL, "missing argument");
    /* Refuse a target we would not replace before asking the daemon. */
    target t;
    int rc = target_open(c, path, &t);
    if (rc)
        return rc;
    wb_mapping *m = NULL;
    const void *data = NULL;
    size_t len = 0;
    rc = image_map(c, model, version, &m, &data, &len);
    if (rc == 0)
        rc = write_atomic(c, &t, data, len, progress, user);
    if (rc == 0)
        export_info(info, m, len);
    wb_unmap(m);
    close(t.dfd);
    return rc;
}

int wb_export_fd(wb_client *c, const char *model, uint64_t version, int fd,
                 wb_progress_fn progress, void *user, wb_file_info *info) {
    if (c == NULL || model == NULL || fd < 0)
        return wb__cl_fail(c, WB_EINVAL, "missing argument");
    wb_mapping *m = NULL;
    const void *data = NULL;
    size_t len = 0;
    int rc = image_map(c, model, version, &m, &data, &len);
    if (rc == 0) {
        char what[32];
        snprintf(what, sizeof(what), "descriptor %d", fd);
        rc = write_all(c, fd, what, data, len, progress, user);
    }
    if (rc == 0)
        export_info(info, m, len);
    wb_unmap(m);
    return rc;
}
