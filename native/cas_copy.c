/*
 * cas_copy.c - import pipeline: put the bytes of src into dst by the cheapest
 * allowed method and hash dst as it fills (see cas_import_fd in cas_native.h).
 *
 * The calling thread copies; the pipeline's two threads pread dst up to the
 * mark the copier publishes after each chunk.
 */
#define _GNU_SOURCE
#define CAS_NATIVE_INTERNAL
#include "cas_native.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define CAS_COPY_ALL (CAS_COPY_REFLINK | CAS_COPY_RANGE | CAS_COPY_READWRITE)
/* Bytes per copy_file_range call and per read/write round trip. */
#define CAS_COPY_CHUNK (8u << 20)
#define CAS_RW_CHUNK (1u << 20)

/*
 * Where a copier reports progress: the hashing pipeline of cas_import_fd, or
 * (pl == NULL, cas_copy_fd) just the byte count and the caller's progress.
 */
struct cas_copy_ctx {
    struct cas_pipeline *pl;
    struct cas_progress *progress;
    uint64_t copied;
};

static int cas_ctx_status(struct cas_copy_ctx *ctx)
{
    if (ctx->pl != NULL)
        return cas_pipeline_status(ctx->pl);
    return cas_cancelled(ctx->progress) ? -ECANCELED : 0;
}

static void cas_ctx_publish(struct cas_copy_ctx *ctx, uint64_t mark)
{
    if (ctx->pl != NULL)
        cas_pipeline_publish(ctx->pl, mark);
    else if (ctx->progress != NULL)
        __atomic_fetch_add(&ctx->progress->done, mark - ctx->copied,
                           __ATOMIC_RELAXED);
    ctx->copied = mark;
}

/*
 * A copy method returns 0 or -errno and sets *untouched when it failed before
 * putting any byte into dst (only then may the next method take over).
 */
typedef int (*cas_copy_fn)(int src, int dst, struct cas_copy_ctx *ctx,
                           int *untouched);

int cas_reflink_unsupported(int err)
{
    return err == EOPNOTSUPP || err == ENOTSUP || err == EXDEV ||
           err == EINVAL || err == ENOTTY || err == ENOSYS || err == EBADF;
}

static int cas_range_unsupported(int err)
{
    return err == EOPNOTSUPP || err == ENOTSUP || err == EXDEV ||
           err == EINVAL || err == ENOSYS;
}

static int cas_copy_reflink(int src, int dst, struct cas_copy_ctx *ctx,
                            int *untouched)
{
    struct stat st;

    *untouched = 1;
    if (ioctl(dst, FICLONE, src) != 0)
        return -errno;
    *untouched = 0;
    if (fstat(dst, &st) != 0)
        return -errno;
    cas_ctx_publish(ctx, (uint64_t)st.st_size);
    return 0;
}

static int cas_copy_range(int src, int dst, struct cas_copy_ctx *ctx,
                          int *untouched)
{
    loff_t in = 0, out = 0;

    for (;;) {
        ssize_t n;
        int err = cas_ctx_status(ctx);

        *untouched = out == 0;
        if (err != 0)
            return err;
        n = copy_file_range(src, &in, dst, &out, CAS_COPY_CHUNK, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return 0;
        cas_ctx_publish(ctx, (uint64_t)out);
    }
}

int cas_pwrite_full(int fd, const uint8_t *buf, size_t len, uint64_t off)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, buf, len, (off_t)off);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        buf += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int cas_copy_readwrite(int src, int dst, struct cas_copy_ctx *ctx,
                              int *untouched)
{
    uint8_t *buf = aligned_alloc(4096, CAS_RW_CHUNK);
    uint64_t off = 0;
    int err = 0;

    *untouched = 1;
    if (buf == NULL)
        return -ENOMEM;
    (void)posix_fadvise(src, 0, 0, POSIX_FADV_SEQUENTIAL);
    for (;;) {
        int64_t n;

        err = cas_ctx_status(ctx);
        if (err != 0)
            break;
        n = cas_pread_full(src, buf, CAS_RW_CHUNK, off);
        if (n <= 0) {
            err = (int)n;
            break;
        }
        *untouched = 0;
        err = cas_pwrite_full(dst, buf, (size_t)n, off);
        if (err != 0)
            break;
        off += (uint64_t)n;
        cas_ctx_publish(ctx, off);
        if ((size_t)n < CAS_RW_CHUNK)
            break;
    }
    free(buf);
    return err;
}

static const struct {
    unsigned method;
    cas_copy_fn copy;
    int (*unsupported)(int err);   /* NULL: never skipped */
} cas_copy_methods[] = {
    {CAS_COPY_REFLINK, cas_copy_reflink, cas_reflink_unsupported},
    {CAS_COPY_RANGE, cas_copy_range, cas_range_unsupported},
    {CAS_COPY_READWRITE, cas_copy_readwrite, NULL},
};

static int cas_copy_any(int src, int dst, unsigned allowed,
                        struct cas_copy_ctx *ctx, unsigned *used)
{
    size_t i;
    int err = -EINVAL;

    for (i = 0; i < sizeof(cas_copy_methods) / sizeof(cas_copy_methods[0]);
         i++) {
        int untouched = 0;

        if ((allowed & cas_copy_methods[i].method) == 0)
            continue;
        err = cas_copy_methods[i].copy(src, dst, ctx, &untouched);
        if (err == 0) {
            *used = cas_copy_methods[i].method;
            return 0;
        }
        if (!untouched || cas_copy_methods[i].unsupported == NULL ||
            !cas_copy_methods[i].unsupported(-err))
            return err;
    }
    return err;
}

static int cas_check_dst(int dst)
{
    struct stat st;

    if (fstat(dst, &st) != 0)
        return -errno;
    if (!S_ISREG(st.st_mode) || st.st_size != 0)
        return -EINVAL;
    return 0;
}

/* The checks both entry points start with: 0, or -errno to return at once. */
static int cas_copy_precheck(int dst_fd, unsigned allowed, unsigned *method_used,
                             struct cas_progress *progress)
{
    if (method_used == NULL || allowed == 0 || (allowed & ~CAS_COPY_ALL) != 0)
        return -EINVAL;
    *method_used = 0;
    if (cas_cancelled(progress))
        return -ECANCELED;
    return cas_check_dst(dst_fd);
}

int cas_import_fd(int src_fd, int dst_fd, unsigned allowed,
                  struct cas_digests *out, unsigned *method_used,
                  struct cas_progress *progress)
{
    struct cas_copy_ctx ctx = {NULL, progress, 0};
    unsigned used = 0;
    int err;

    if (out == NULL)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    err = cas_copy_precheck(dst_fd, allowed, method_used, progress);
    if (err != 0)
        return err;
    ctx.pl = cas_pipeline_new(dst_fd, 0, progress);
    if (ctx.pl == NULL)
        return -ENOMEM;
    err = cas_pipeline_start(ctx.pl);
    if (err == 0)
        err = cas_copy_any(src_fd, dst_fd, allowed, &ctx, &used);
    err = cas_pipeline_finish(ctx.pl, err, out);
    if (err == 0)
        *method_used = used;
    return err;
}

int cas_copy_fd(int src_fd, int dst_fd, unsigned allowed, uint64_t *copied,
                unsigned *method_used, struct cas_progress *progress)
{
    struct cas_copy_ctx ctx = {NULL, progress, 0};
    unsigned used = 0;
    int err;

    if (copied == NULL)
        return -EINVAL;
    *copied = 0;
    err = cas_copy_precheck(dst_fd, allowed, method_used, progress);
    if (err == 0)
        err = cas_copy_any(src_fd, dst_fd, allowed, &ctx, &used);
    if (err == 0) {
        *copied = ctx.copied;
        *method_used = used;
    }
    return err;
}
