/*
 * cas_batch.c - import many small files in one call (contract: cas_import_batch
 * in cas_native.h).
 *
 * A tree of thousands of small files spent most of its time around the bytes:
 * a Python call, temp file, GIL hand-off and future per file.  Here one call
 * does a whole run of files, without the GIL, each read once into one buffer
 * that is written to the temp file and hashed (both digests) while cached.
 */
#define _GNU_SOURCE
#define CAS_NATIVE_INTERNAL
#include "cas_native.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define CAS_BATCH_FLAGS (CAS_BATCH_REFLINK | CAS_BATCH_SEAL)
#define CAS_BATCH_PREFIX_MAX 200
#define CAS_BATCH_NAME_MAX (CAS_BATCH_PREFIX_MAX + 2 + 2 * sizeof(size_t))

struct cas_batch_call {
    int src_dir, tmp_dir;
    const char *prefix;
    unsigned flags;       /* CAS_BATCH_REFLINK is cleared once unsupported */
    unsigned flags_out;
    int64_t settle_ns;
    uint8_t *buf;         /* CAS_BATCH_MAX_FILE + 1 bytes: one more shows growth */
};

static void cas_batch_temp_name(const char *prefix, size_t i, char *out)
{
    snprintf(out, CAS_BATCH_NAME_MAX, "%s.%zx", prefix, i);
}

static int64_t cas_ns(const struct timespec *t)
{
    return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

static int cas_batch_fail(struct cas_batch_file *f, int stage, int err)
{
    f->stage = stage;
    return err;
}

static int cas_batch_changed(struct cas_batch_file *f, int what, int64_t was,
                             int64_t now)
{
    f->changed = what;
    f->was = was;
    f->now = now;
    return cas_batch_fail(f, CAS_BATCH_CHANGED, -CAS_ECHANGED);
}

/*
 * Put the source's bytes into the empty temp file dst and into c->buf
 * (*got bytes: the source's at most size + 1).
 */
static int cas_batch_fill(struct cas_batch_call *c, struct cas_batch_file *f,
                          int src, int dst, const struct stat *before,
                          int64_t *got)
{
    int err;

    if (c->flags & CAS_BATCH_REFLINK) {
        if (ioctl(dst, FICLONE, src) == 0) {
            struct timespec now;
            int from = dst;

            /* a settled source's ctime moves with any write: read it there */
            if (clock_gettime(CLOCK_REALTIME, &now) == 0 &&
                cas_ns(&now) - cas_ns(&before->st_ctim) >= c->settle_ns)
                from = src;
            f->method = CAS_COPY_REFLINK;
            *got = cas_pread_full(from, c->buf, f->size + 1, 0);
            if (*got < 0)
                return cas_batch_fail(f, from == src ? CAS_BATCH_READ
                                                     : CAS_BATCH_STORE, (int)*got);
            return 0;
        }
        if (!cas_reflink_unsupported(errno))
            return cas_batch_fail(f, CAS_BATCH_STORE, -errno);
        c->flags &= ~CAS_BATCH_REFLINK;
        c->flags_out |= CAS_BATCH_NO_REFLINK;
    }
    f->method = CAS_COPY_READWRITE;
    *got = cas_pread_full(src, c->buf, f->size + 1, 0);
    if (*got < 0)
        return cas_batch_fail(f, CAS_BATCH_READ, (int)*got);
    if ((uint64_t)*got != f->size)
        return 0;  /* the caller reports the change; nothing worth writing */
    err = cas_pwrite_full(dst, c->buf, (size_t)*got, 0);
    return err != 0 ? cas_batch_fail(f, CAS_BATCH_STORE, err) : 0;
}

/* The source must still be what it was when it was opened. */
static int cas_batch_unchanged(struct cas_batch_file *f, int src,
                               const struct stat *before, int64_t got)
{
    struct stat after;

    if (fstat(src, &after) != 0)
        return cas_batch_fail(f, CAS_BATCH_READ, -errno);
    if (after.st_size != before->st_size)
        return cas_batch_changed(f, 1, before->st_size, after.st_size);
    if ((uint64_t)got != f->size)
        return cas_batch_changed(f, 1, (int64_t)f->size, got);
    if (cas_ns(&after.st_mtim) != cas_ns(&before->st_mtim))
        return cas_batch_changed(f, 2, cas_ns(&before->st_mtim), cas_ns(&after.st_mtim));
    if (cas_ns(&after.st_ctim) != cas_ns(&before->st_ctim))
        return cas_batch_changed(f, 3, cas_ns(&before->st_ctim), cas_ns(&after.st_ctim));
    return 0;
}

/* The object's names as xattrs (best effort, as Store._publish), then 0444. */
static int cas_batch_seal(struct cas_batch_call *c, struct cas_batch_file *f,
                          int dst)
{
    (void)fsetxattr(dst, CAS_OBJECT_XATTR, f->digests.verity, CAS_HASH_LEN, 0);
    (void)fsetxattr(dst, CAS_SHA256_XATTR, f->digests.sha256, CAS_HASH_LEN, 0);
    if ((c->flags & CAS_BATCH_SEAL) && fchmod(dst, 0444) != 0)
        return cas_batch_fail(f, CAS_BATCH_STORE, -errno);
    return 0;
}

/* Open the source and check it; *src is -1 on failure. */
static int cas_batch_open(struct cas_batch_call *c, struct cas_batch_file *f,
                          int *src, struct stat *before)
{
    *src = openat(c->src_dir, f->name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (*src < 0)
        return cas_batch_fail(f, CAS_BATCH_OPEN, -errno);
    if (fstat(*src, before) != 0)
        return cas_batch_fail(f, CAS_BATCH_READ, -errno);
    if (!S_ISREG(before->st_mode)) {
        f->mode = before->st_mode;
        return cas_batch_fail(f, CAS_BATCH_TYPE, -EINVAL);
    }
    /* since it was listed */
    if ((uint64_t)before->st_size != f->size)
        return cas_batch_changed(f, 1, (int64_t)f->size, before->st_size);
    if (cas_ns(&before->st_mtim) != f->mtime_ns)
        return cas_batch_changed(f, 2, f->mtime_ns, cas_ns(&before->st_mtim));
    if (cas_ns(&before->st_ctim) != f->ctime_ns)
        return cas_batch_changed(f, 3, f->ctime_ns, cas_ns(&before->st_ctim));
    return 0;
}

static int cas_batch_one(struct cas_batch_call *c, struct cas_batch_file *f,
                         const char *temp, int *made)
{
    struct stat before;
    int64_t got = 0;
    int src, dst = -1;
    int err = cas_batch_open(c, f, &src, &before);

    if (err == 0) {
        dst = openat(c->tmp_dir, temp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                     0600);
        if (dst < 0)
            err = cas_batch_fail(f, CAS_BATCH_STORE, -errno);
        *made = dst >= 0;
    }
    if (err == 0)
        err = cas_batch_fill(c, f, src, dst, &before, &got);
    if (err == 0)
        err = cas_batch_unchanged(f, src, &before, got);
    if (err == 0)
        err = cas_hash_buffer(c->buf, (size_t)got, &f->digests);
    if (err == 0)
        err = cas_batch_seal(c, f, dst);
    if (dst >= 0 && close(dst) != 0 && err == 0)
        err = cas_batch_fail(f, CAS_BATCH_STORE, -errno);
    if (src >= 0)
        close(src);
    return err;
}

int cas_import_batch(int src_dir_fd, int tmp_dir_fd, const char *prefix,
                     struct cas_batch_file *files, size_t n, unsigned flags,
                     int64_t settle_ns, unsigned *flags_out, size_t *failed,
                     struct cas_progress *progress)
{
    struct cas_batch_call c = {src_dir_fd, tmp_dir_fd, prefix, flags, 0, settle_ns, NULL};
    char temp[CAS_BATCH_NAME_MAX];
    size_t i, made = 0;
    int err = 0;

    if (failed == NULL || flags_out == NULL)
        return -EINVAL;
    *failed = n;
    *flags_out = 0;
    if (prefix == NULL || strlen(prefix) > CAS_BATCH_PREFIX_MAX || strchr(prefix, '/') ||
        (files == NULL && n > 0) || (flags & ~CAS_BATCH_FLAGS) != 0)
        return -EINVAL;
    for (i = 0; i < n; i++) {
        memset(&files[i].digests, 0, sizeof(files[i].digests));
        files[i].method = 0;
        files[i].stage = CAS_BATCH_OK;
        files[i].mode = 0;
        files[i].changed = 0;
        files[i].was = files[i].now = 0;
        if (files[i].name == NULL || files[i].size > CAS_BATCH_MAX_FILE)
            return -EINVAL;
    }
    c.buf = malloc(CAS_BATCH_MAX_FILE + 1);
    if (c.buf == NULL)
        return -ENOMEM;
    for (i = 0; i < n && err == 0; i++) {
        int this_made = 0;

        if (cas_cancelled(progress)) {
            err = -ECANCELED;
            break;
        }
        cas_batch_temp_name(prefix, i, temp);
        err = cas_batch_one(&c, &files[i], temp, &this_made);
        made += (size_t)this_made;
        if (err != 0)
            *failed = i;
        else if (progress != NULL)
            __atomic_fetch_add(&progress->done, files[i].size, __ATOMIC_RELAXED);
    }
    free(c.buf);
    *flags_out = c.flags_out;
    if (err != 0) {
        for (i = 0; i < made; i++) {
            cas_batch_temp_name(prefix, i, temp);
            (void)unlinkat(tmp_dir_fd, temp, 0);
        }
    }
    return err;
}
