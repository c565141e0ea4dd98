/*
 * cas_sweep.c - GC's sweep of one objects/XX shard and its mark set (contract:
 * cas_sweep_shard and cas_ids_sort_unique in cas_native.h).
 *
 * The mark (Python) gathers the reachable ids as raw 32-byte digests; here
 * they are sorted once, and each shard is listed, its names parsed and looked
 * up by binary search, and the unreachable objects checked and removed -- all
 * without the GIL and without a Python object per name, id or syscall, so two
 * sweep threads run side by side.
 */
#define _GNU_SOURCE
#define CAS_NATIVE_INTERNAL
#include "cas_native.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#define CAS_REST_HEX (2 * CAS_HASH_LEN - 2)  /* an id without its shard byte */

static int cas_id_cmp(const void *a, const void *b)
{
    return memcmp(a, b, CAS_HASH_LEN);
}

size_t cas_ids_sort_unique(uint8_t *ids, size_t n)
{
    size_t i, kept;

    if (ids == NULL || n == 0)
        return 0;
    qsort(ids, n, CAS_HASH_LEN, cas_id_cmp);
    for (i = 1, kept = 1; i < n; i++) {
        if (memcmp(ids + i * CAS_HASH_LEN, ids + (kept - 1) * CAS_HASH_LEN,
                   CAS_HASH_LEN) == 0)
            continue;
        memmove(ids + kept * CAS_HASH_LEN, ids + i * CAS_HASH_LEN, CAS_HASH_LEN);
        kept++;
    }
    return kept;
}

static int cas_hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* The id named `shard` + `name` if name is 62 lowercase hex digits; else 0. */
static int cas_parse_rest(const char *name, uint8_t shard, uint8_t id[CAS_HASH_LEN])
{
    int i;

    if (strlen(name) != CAS_REST_HEX)
        return 0;
    id[0] = shard;
    for (i = 0; i < (int)CAS_REST_HEX; i += 2) {
        int hi = cas_hex_digit(name[i]), lo = cas_hex_digit(name[i + 1]);

        if (hi < 0 || lo < 0)
            return 0;
        id[1 + i / 2] = (uint8_t)(hi << 4 | lo);
    }
    return 1;
}

static int cas_entry_cmp(const void *a, const void *b)
{
    return strcmp(((const struct cas_sweep_entry *)a)->name,
                  ((const struct cas_sweep_entry *)b)->name);
}

/*
 * The names in shard_fd that are object ids not in `marked`, sorted (names
 * that are not ids -- strays -- are never judged). *scanned counts every entry.
 */
static int cas_list_unmarked(int shard_fd, uint8_t shard, const uint8_t *marked,
                             size_t n_marked, struct cas_sweep_entry **out,
                             size_t *n_out, uint64_t *scanned)
{
    struct cas_sweep_entry *list = NULL;
    size_t cap = 0, n = 0;
    struct dirent *de;
    DIR *dir;
    int fd = openat(shard_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), err = 0;

    if (fd < 0)
        return -errno;
    dir = fdopendir(fd);
    if (dir == NULL) {
        err = -errno;
        close(fd);
        return err;
    }
    for (;;) {
        uint8_t id[CAS_HASH_LEN];

        errno = 0;
        de = readdir(dir);
        if (de == NULL) {
            err = -errno;
            break;
        }
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        (*scanned)++;
        if (!cas_parse_rest(de->d_name, shard, id)
            || bsearch(id, marked, n_marked, CAS_HASH_LEN, cas_id_cmp) != NULL)
            continue;
        if (n == cap) {
            struct cas_sweep_entry *grown;

            cap = cap ? 2 * cap : 64;
            grown = realloc(list, cap * sizeof(*list));
            if (grown == NULL) {
                err = -ENOMEM;
                break;
            }
            list = grown;
        }
        memset(&list[n], 0, sizeof(list[n]));
        memcpy(list[n].name, de->d_name, CAS_REST_HEX + 1);
        n++;
    }
    closedir(dir);
    if (err != 0) {
        free(list);
        return err;
    }
    if (n > 1)
        qsort(list, n, sizeof(*list), cas_entry_cmp);
    *out = list;
    *n_out = n;
    return 0;
}

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
    char rest[CAS_REST_HEX + 1];
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
    rest[CAS_REST_HEX] = '\0';
    if (fstatat(idx_fd, rest, &entry, AT_SYMLINK_NOFOLLOW) != 0)
        return errno == ENOENT ? 0 : -errno;
    if (entry.st_dev != st->st_dev || entry.st_ino != st->st_ino)
        return 0;
    if (unlinkat(idx_fd, rest, 0) != 0)
        return errno == ENOENT ? 0 : -errno;
    return 1;
}

/* One unreachable object: 0 with e filled, or -errno. */
static int cas_sweep_one(int shard_fd, const int *index_fds, int64_t cutoff_ns,
                         unsigned flags, struct cas_sweep_entry *e)
{
    struct stat st;
    int64_t mtime_ns;
    int rc;

    if (fstatat(shard_fd, e->name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno != ENOENT)
            return -errno;
        e->status = CAS_SWEEP_GONE;
        return 0;
    }
    e->size = (uint64_t)st.st_size;
    e->links = (uint64_t)st.st_nlink;
    mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    if (!S_ISREG(st.st_mode)) {
        e->status = CAS_SWEEP_NOT_FILE;
        return 0;
    }
    if (mtime_ns > cutoff_ns) {
        e->status = CAS_SWEEP_YOUNG;
        return 0;
    }
    e->status = CAS_SWEEP_REMOVED;
    if (flags & CAS_SWEEP_DRY_RUN)
        return 0;
    if (st.st_nlink > 1) {
        rc = cas_unlink_index_entry(shard_fd, e->name, &st, index_fds);
        if (rc < 0)
            return rc;
        e->index_unlinked = (uint8_t)rc;
    }
    if (unlinkat(shard_fd, e->name, 0) != 0 && errno != ENOENT)
        return -errno;
    return 0;
}

int cas_sweep_shard(int shard_fd, unsigned shard, const uint8_t *marked,
                    size_t n_marked, const int *index_fds, int64_t cutoff_ns,
                    unsigned flags, struct cas_sweep_entry **out, size_t *n_out,
                    uint64_t *scanned)
{
    struct cas_sweep_entry *list = NULL;
    size_t n = 0, i;
    int err;

    if (out == NULL || n_out == NULL || scanned == NULL || index_fds == NULL
        || (marked == NULL && n_marked > 0) || shard > 255
        || (flags & ~CAS_SWEEP_DRY_RUN) != 0)
        return -EINVAL;
    *out = NULL;
    *n_out = 0;
    *scanned = 0;
    err = cas_list_unmarked(shard_fd, (uint8_t)shard, marked, n_marked, &list, &n,
                            scanned);
    for (i = 0; err == 0 && i < n; i++)
        err = cas_sweep_one(shard_fd, index_fds, cutoff_ns, flags, &list[i]);
    if (err != 0) {
        free(list);
        return err;
    }
    *out = list;
    *n_out = n;
    return 0;
}

void cas_sweep_free(struct cas_sweep_entry *entries)
{
    free(entries);
}
