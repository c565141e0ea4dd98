/*
 * cas_hash.c - fs-verity Merkle digest and flat SHA-256: the streaming
 * hasher, and whole-file hashing with one thread per digest.
 *
 * The low-level SHA256_* API is used on purpose: it is the cheapest way to
 * hash one 4 KiB block (EVP adds a per-digest dispatch and, in OpenSSL 3, the
 * one-shot SHA256() fetches the algorithm on every call).
 */
#define _GNU_SOURCE
#define OPENSSL_SUPPRESS_DEPRECATED
#define CAS_NATIVE_INTERNAL
#include "cas_native.h"

#include <fcntl.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Per-thread read buffer (measured: 1 MiB beats 64 KiB-4 MiB here). */
#define CAS_READ_CHUNK (1024u * 1024u)

/* ---- Merkle tree, streaming ------------------------------------------- */

void cas_sha256_block(const uint8_t *block, uint8_t out[CAS_HASH_LEN])
{
    SHA256_CTX c;

    SHA256_Init(&c);
    SHA256_Update(&c, block, CAS_BLOCK);
    SHA256_Final(out, &c);
}

void cas_merkle_init(struct cas_merkle *m)
{
    m->size = 0;
    m->partial_len = 0;
    m->top = 0;
    memset(m->fill, 0, sizeof(m->fill));
}

/*
 * Appends a hash to a level. A full level block is hashed only when one more
 * hash arrives, so at the end a level holding a single hash and nothing above
 * it is known to be the root.
 */
void cas_merkle_push(struct cas_merkle *m, int lvl,
                     const uint8_t hash[CAS_HASH_LEN])
{
    if (m->fill[lvl] == CAS_BLOCK) {
        uint8_t up[CAS_HASH_LEN];

        cas_sha256_block(m->level[lvl], up);
        m->fill[lvl] = 0;
        cas_merkle_push(m, lvl + 1, up);
    }
    memcpy(m->level[lvl] + m->fill[lvl], hash, CAS_HASH_LEN);
    m->fill[lvl] += CAS_HASH_LEN;
    if (lvl > m->top)
        m->top = lvl;
}

static void cas_merkle_leaf(struct cas_merkle *m, const uint8_t *block)
{
    uint8_t h[CAS_HASH_LEN];

    cas_sha256_block(block, h);
    cas_merkle_push(m, 0, h);
}

static void cas_merkle_update(struct cas_merkle *m, const uint8_t *buf,
                              size_t len)
{
    m->size += len;
    if (m->partial_len > 0) {
        size_t take = CAS_BLOCK - m->partial_len;

        if (take > len)
            take = len;
        memcpy(m->partial + m->partial_len, buf, take);
        m->partial_len += take;
        buf += take;
        len -= take;
        if (m->partial_len < CAS_BLOCK)
            return;
        cas_merkle_leaf(m, m->partial);
        m->partial_len = 0;
    }
    for (; len >= CAS_BLOCK; buf += CAS_BLOCK, len -= CAS_BLOCK)
        cas_merkle_leaf(m, buf);
    memcpy(m->partial, buf, len);
    m->partial_len = len;
}

/*
 * The root of a tree fed from level 0 (cas_merkle_update) or, by
 * cas_verity.c, from level 1 (cas_merkle_push(m, 1, ...)): the levels below
 * the first one holding a hash are skipped. The caller handles trees of at
 * most one data block, whose root is the leaf hash itself.
 */
void cas_merkle_root(struct cas_merkle *m, uint8_t root[CAS_HASH_LEN])
{
    int lvl = 0;

    while (lvl < m->top && m->fill[lvl] == 0)
        lvl++;
    for (; lvl < m->top || m->fill[lvl] > CAS_HASH_LEN; lvl++) {
        uint8_t up[CAS_HASH_LEN];

        memset(m->level[lvl] + m->fill[lvl], 0, CAS_BLOCK - m->fill[lvl]);
        cas_sha256_block(m->level[lvl], up);
        cas_merkle_push(m, lvl + 1, up);
    }
    memcpy(root, m->level[lvl], CAS_HASH_LEN);
}

/* The digest is SHA-256 of the 256-byte little-endian fsverity_descriptor. */
void cas_verity_descriptor(uint64_t size, const uint8_t root[CAS_HASH_LEN],
                           uint8_t verity[CAS_HASH_LEN])
{
    uint8_t desc[256] = {0};
    int i;

    desc[0] = 1;   /* version */
    desc[1] = 1;   /* hash algorithm: SHA-256 */
    desc[2] = 12;  /* log2(block size) */
    for (i = 0; i < 8; i++)
        desc[8 + i] = (uint8_t)(size >> (8 * i));
    memcpy(desc + 16, root, CAS_HASH_LEN);
    SHA256(desc, sizeof(desc), verity);
}

static void cas_merkle_final(struct cas_merkle *m, uint8_t verity[CAS_HASH_LEN])
{
    uint8_t root[CAS_HASH_LEN] = {0};

    if (m->partial_len > 0) {
        memset(m->partial + m->partial_len, 0, CAS_BLOCK - m->partial_len);
        cas_merkle_leaf(m, m->partial);
        m->partial_len = 0;
    }
    if (m->size > 0)
        cas_merkle_root(m, root);
    cas_verity_descriptor(m->size, root, verity);
}

/* ---- public streaming hasher ------------------------------------------ */

struct cas_hasher {
    struct cas_merkle merkle;
    SHA256_CTX flat;
    int finished;
};

cas_hasher *cas_hasher_new(void)
{
    cas_hasher *h = malloc(sizeof(*h));

    if (h == NULL)
        return NULL;
    cas_merkle_init(&h->merkle);
    SHA256_Init(&h->flat);
    h->finished = 0;
    return h;
}

int cas_hasher_update(cas_hasher *h, const uint8_t *buf, size_t len)
{
    if (h == NULL || h->finished || (buf == NULL && len > 0))
        return -EINVAL;
    if (h->merkle.size + len < h->merkle.size)
        return -EFBIG;
    cas_merkle_update(&h->merkle, buf, len);
    SHA256_Update(&h->flat, buf, len);
    return 0;
}

int cas_hasher_final(cas_hasher *h, struct cas_digests *out)
{
    if (h == NULL || out == NULL || h->finished)
        return -EINVAL;
    h->finished = 1;
    out->size = h->merkle.size;
    cas_merkle_final(&h->merkle, out->verity);
    SHA256_Final(out->sha256, &h->flat);
    return 0;
}

void cas_hasher_free(cas_hasher *h)
{
    free(h);
}

int cas_hash_buffer(const uint8_t *buf, size_t len, struct cas_digests *out)
{
    cas_hasher *h;
    int err;

    if (out == NULL || (buf == NULL && len > 0))
        return -EINVAL;
    h = cas_hasher_new();
    if (h == NULL)
        return -ENOMEM;
    err = cas_hasher_update(h, buf, len);
    if (err == 0)
        err = cas_hasher_final(h, out);
    cas_hasher_free(h);
    return err;
}

/* ---- pipeline: hashing threads reading one fd --------------------------- */

enum cas_worker_kind { CAS_WORKER_MERKLE, CAS_WORKER_FLAT };

struct cas_worker {
    struct cas_pipeline *pl;
    enum cas_worker_kind kind;
    int started;
    pthread_t thread;
    uint64_t pos;       /* bytes hashed; read by other threads for progress */
    uint8_t *buf;
    union {
        struct cas_merkle merkle;
        SHA256_CTX flat;
    } u;
};

struct cas_pipeline {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int fd;
    int to_eof;
    uint64_t mark;      /* under mu: readable bytes (mark mode) */
    int finished;       /* under mu: mark is final */
    int err;            /* first error; written under mu, read atomically */
    struct cas_progress *progress;
    uint64_t reported;  /* bytes already added to progress->done */
    struct cas_worker w[CAS_PIPELINE_WORKERS];  /* w[0]: Merkle, w[1]: flat */
};

int64_t cas_pread_full(int fd, uint8_t *buf, size_t len, uint64_t off)
{
    size_t got = 0;

    while (got < len) {
        ssize_t n = pread(fd, buf + got, len - got, (off_t)(off + got));

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (int64_t)got;
}

static void cas_pipeline_fail(struct cas_pipeline *pl, int err)
{
    pthread_mutex_lock(&pl->mu);
    if (pl->err == 0)
        __atomic_store_n(&pl->err, err, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&pl->cv);
    pthread_mutex_unlock(&pl->mu);
}

int cas_pipeline_status(struct cas_pipeline *pl)
{
    int err = __atomic_load_n(&pl->err, __ATOMIC_RELAXED);

    if (err == 0 && cas_cancelled(pl->progress))
        err = -ECANCELED;
    return err;
}

void cas_pipeline_publish(struct cas_pipeline *pl, uint64_t mark)
{
    pthread_mutex_lock(&pl->mu);
    pl->mark = mark;
    pthread_cond_broadcast(&pl->cv);
    pthread_mutex_unlock(&pl->mu);
}

/* Bytes the worker at `pos` may read next: > 0, 0 at the end, or -errno. */
static int64_t cas_pipeline_wait(struct cas_pipeline *pl, uint64_t pos)
{
    uint64_t avail;
    int err;

    if (pl->to_eof)
        return CAS_READ_CHUNK;
    pthread_mutex_lock(&pl->mu);
    while (pl->err == 0 && !pl->finished && pl->mark <= pos)
        pthread_cond_wait(&pl->cv, &pl->mu);
    err = pl->err;
    avail = pl->mark - pos;
    pthread_mutex_unlock(&pl->mu);
    if (err != 0)
        return err;
    return avail < CAS_READ_CHUNK ? (int64_t)avail : CAS_READ_CHUNK;
}

/*
 * Adds to progress->done what the slowest worker has hashed since the last
 * report; the CAS on `reported` makes each byte counted once. Two workers
 * finishing together may each still see the other's old position (relaxed
 * loads), so cas_pipeline_finish catches up once more after joining them.
 */
static void cas_progress_catch_up(struct cas_pipeline *pl)
{
    uint64_t lo = UINT64_MAX, old;
    int i;

    if (pl->progress == NULL)
        return;
    for (i = 0; i < CAS_PIPELINE_WORKERS; i++) {
        uint64_t pos = __atomic_load_n(&pl->w[i].pos, __ATOMIC_RELAXED);

        if (pos < lo)
            lo = pos;
    }
    old = __atomic_load_n(&pl->reported, __ATOMIC_RELAXED);
    while (old < lo) {
        if (__atomic_compare_exchange_n(&pl->reported, &old, lo, 1,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            __atomic_fetch_add(&pl->progress->done, lo - old, __ATOMIC_RELAXED);
            return;
        }
    }
}

static void cas_worker_advance(struct cas_worker *w, uint64_t n)
{
    __atomic_store_n(&w->pos, w->pos + n, __ATOMIC_RELAXED);
    cas_progress_catch_up(w->pl);
}

static void cas_worker_consume(struct cas_worker *w, const uint8_t *buf,
                               size_t len)
{
    if (w->kind == CAS_WORKER_MERKLE)
        cas_merkle_update(&w->u.merkle, buf, len);
    else
        SHA256_Update(&w->u.flat, buf, len);
}

static int cas_worker_run(struct cas_worker *w)
{
    struct cas_pipeline *pl = w->pl;

    for (;;) {
        int64_t want, got;
        int err = cas_pipeline_status(pl);

        if (err != 0)
            return err;
        want = cas_pipeline_wait(pl, w->pos);
        if (want <= 0)
            return (int)want;
        got = cas_pread_full(pl->fd, w->buf, (size_t)want, w->pos);
        if (got < 0)
            return (int)got;
        cas_worker_consume(w, w->buf, (size_t)got);
        cas_worker_advance(w, (uint64_t)got);
        if (got < want)
            return pl->to_eof ? 0 : -CAS_ECHANGED;
    }
}

static void *cas_worker_main(void *arg)
{
    struct cas_worker *w = arg;
    int err;

    cas_budget_enter();
    err = cas_worker_run(w);
    cas_budget_leave();
    if (err != 0)
        cas_pipeline_fail(w->pl, err);
    return NULL;
}

static void cas_pipeline_free(struct cas_pipeline *pl)
{
    int i;

    for (i = 0; i < CAS_PIPELINE_WORKERS; i++)
        free(pl->w[i].buf);
    pthread_cond_destroy(&pl->cv);
    pthread_mutex_destroy(&pl->mu);
    free(pl);
}

struct cas_pipeline *cas_pipeline_new(int fd, int to_eof,
                                      struct cas_progress *progress)
{
    struct cas_pipeline *pl = calloc(1, sizeof(*pl));
    int i;

    if (pl == NULL)
        return NULL;
    pthread_mutex_init(&pl->mu, NULL);
    pthread_cond_init(&pl->cv, NULL);
    pl->fd = fd;
    pl->to_eof = to_eof;
    pl->progress = progress;
    pl->w[0].kind = CAS_WORKER_MERKLE;
    cas_merkle_init(&pl->w[0].u.merkle);
    pl->w[1].kind = CAS_WORKER_FLAT;
    SHA256_Init(&pl->w[1].u.flat);
    for (i = 0; i < CAS_PIPELINE_WORKERS; i++) {
        pl->w[i].pl = pl;
        pl->w[i].buf = aligned_alloc(CAS_BLOCK, CAS_READ_CHUNK);
        if (pl->w[i].buf == NULL) {
            cas_pipeline_free(pl);
            return NULL;
        }
    }
    return pl;
}

static int cas_pipeline_spawn(struct cas_pipeline *pl, int first)
{
    int i;

    for (i = first; i < CAS_PIPELINE_WORKERS; i++) {
        int rc = pthread_create(&pl->w[i].thread, NULL, cas_worker_main,
                                &pl->w[i]);

        if (rc != 0)
            return -rc;
        pl->w[i].started = 1;
    }
    return 0;
}

int cas_pipeline_start(struct cas_pipeline *pl)
{
    return cas_pipeline_spawn(pl, 0);
}

/* Both workers must have hashed the same bytes. */
static int cas_pipeline_collect(struct cas_pipeline *pl,
                                struct cas_digests *out)
{
    uint64_t size = pl->w[0].pos;

    if (pl->w[1].pos != size)
        return -CAS_ECHANGED;
    out->size = size;
    cas_merkle_final(&pl->w[0].u.merkle, out->verity);
    SHA256_Final(out->sha256, &pl->w[1].u.flat);
    return 0;
}

int cas_pipeline_finish(struct cas_pipeline *pl, int err,
                        struct cas_digests *out)
{
    int i;

    pthread_mutex_lock(&pl->mu);
    if (pl->err == 0)
        __atomic_store_n(&pl->err, err, __ATOMIC_RELAXED);
    pl->finished = 1;
    pthread_cond_broadcast(&pl->cv);
    pthread_mutex_unlock(&pl->mu);
    for (i = 0; i < CAS_PIPELINE_WORKERS; i++)
        if (pl->w[i].started)
            pthread_join(pl->w[i].thread, NULL);
    cas_progress_catch_up(pl);  /* the joins make every final position visible */
    err = pl->err;
    if (err == 0)
        err = cas_pipeline_collect(pl, out);
    cas_pipeline_free(pl);
    return err;
}

/* ---- whole file -------------------------------------------------------- */

int cas_hash_fd(int fd, unsigned flags, struct cas_digests *out,
                struct cas_progress *progress)
{
    struct cas_pipeline *pl;
    int err;

    if (out == NULL || (flags & ~CAS_HASH_SHA256) != 0)
        return -EINVAL;
    if (!(flags & CAS_HASH_SHA256))
        return cas_verity_fd(fd, 0, out, progress);
    memset(out, 0, sizeof(*out));
    if (cas_cancelled(progress))
        return -ECANCELED;
    pl = cas_pipeline_new(fd, 1, progress);
    if (pl == NULL)
        return -ENOMEM;
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    err = cas_pipeline_spawn(pl, 1);
    if (err == 0)
        cas_worker_main(&pl->w[0]);
    return cas_pipeline_finish(pl, err, out);
}
