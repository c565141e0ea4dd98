/*
 * cas_sweep.c - GC's removal loop for one objects/XX shard (contract:
 * cas_sweep_shard in cas_native.h).
 *
 * Python decides which names are unreachable (the mark); this loop makes the
 * syscalls for each of them without the GIL, so two sweep threads remove
 * objects truly side by side and no Python object is made per syscall.
 */
#define _GNU_SOURCE
#define CAS_NATIVE_INTERNAL
#include "cas_native.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#define CAS_SHA256_XATTR "user.cas.sha256"

/*
 * Unlinks the index entry of the object `name` (whose stat is `st`): the entry
 * its user.cas.sha256 xattr names, if that entry is the same inode. 1 if it was
 * unlinked, 0 if it cannot be found that way, or -errno.
 */
static int cas_unlink_index_entry(int shard_fd, const char *name,
                                  const struct stat *st, const int *index_fds)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t sha[CAS_HASH_LEN];
    char rest[2 * CAS_HASH_LEN - 1];
    struct stat entry;
    ssize_t got;
    int fd, idx_fd, i;

    fd = openat(shard_fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return 0;
    got = fgetxattr(fd, CAS_SHA256_XATTR, sha, sizeof(sha));
    close(fd);
    if (got != (ssize_t)sizeof(sha))
        return 0;
    idx_fd = index_fds[sha[0]];
    if (idx_fd < 0)
        return 0;
    for (i = 1; i < (int)CAS_HASH_LEN; i++) {
        rest[2 * i - 2] = hex[sha[i] >> 4];
        rest[2 * i - 1] = hex[sha[i] & 15];
    }
    rest[sizeof(rest) - 1] = '\0';
    if (fstatat(idx_fd, rest, &entry, AT_SYMLINK_NOFOLLOW) != 0)
        return errno == ENOENT ? 0 : -errno;
    if (entry.st_dev != st->st_dev || entry.st_ino != st->st_ino)
        return 0;
    if (unlinkat(idx_fd, rest, 0) != 0)
        return errno == ENOENT ? 0 : -errno;
    return 1;
}

/* One candidate: 0 with *out filled, or -errno. */
static int cas_sweep_one(int shard_fd, const char *name, const int *index_fds,
                         int64_t cutoff_ns, unsigned flags,
                         struct cas_sweep_entry *out)
{
    struct stat st;
    int64_t mtime_ns;
    int rc;

    if (fstatat(shard_fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno != ENOENT)
            return -errno;
        out->status = CAS_SWEEP_GONE;
        return 0;
    }
    out->size = (uint64_t)st.st_size;
    out->links = (uint64_t)st.st_nlink;
    mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    if (!S_ISREG(st.st_mode)) {
        out->status = CAS_SWEEP_NOT_FILE;
        return 0;
    }
    if (mtime_ns > cutoff_ns) {
        out->status = CAS_SWEEP_YOUNG;
        return 0;
    }
    out->status = CAS_SWEEP_REMOVED;
    if (flags & CAS_SWEEP_DRY_RUN)
        return 0;
    if (st.st_nlink > 1) {
        rc = cas_unlink_index_entry(shard_fd, name, &st, index_fds);
        if (rc < 0)
            return rc;
        out->index_unlinked = (uint8_t)rc;
    }
    if (unlinkat(shard_fd, name, 0) != 0 && errno != ENOENT)
        return -errno;
    return 0;
}

int cas_sweep_shard(int shard_fd, const int *index_fds, const char *names,
                    size_t n, int64_t cutoff_ns, unsigned flags,
                    struct cas_sweep_entry *out)
{
    const char *name = names;
    size_t i;

    if ((n > 0 && (names == NULL || out == NULL)) || index_fds == NULL
        || (flags & ~CAS_SWEEP_DRY_RUN) != 0)
        return -EINVAL;
    for (i = 0; i < n; i++, name += strlen(name) + 1) {
        memset(&out[i], 0, sizeof(out[i]));  /* CAS_SWEEP_NOT_REACHED */
        if (strchr(name, '/') != NULL)
            return -EINVAL;                  /* before anything is touched */
    }
    for (i = 0, name = names; i < n; i++, name += strlen(name) + 1) {
        int rc = cas_sweep_one(shard_fd, name, index_fds, cutoff_ns, flags, &out[i]);

        if (rc != 0)
            return rc;
    }
    return 0;
}
