/*
 * cas_verity.c - the fs-verity digest of one file on several cores, and the
 * process-wide budget of hashing threads (contract: cas_verity_fd in
 * cas_native.h).
 *
 * The file is cut into units of whole level-1 blocks (128 data blocks, 512
 * KiB of data each). A thread claims the next unit, preads it, hashes its
 * leaves and the level-1 block(s) above them, and stores those hashes in the
 * unit's slot of a ring (the window). Whoever stores the oldest outstanding
 * unit folds every finished unit, in file order, into a streaming tree that
 * starts at level 1 (cas_merkle_push(tree, 1, ...)), so the levels above see
 * exactly the sequence a serial pass produces. Claims stop `window` units
 * ahead of the fold: memory stays a few MiB whatever the file size.
 *
 * One mutex guards the job; it is taken twice per unit (claim, store), which
 * costs nothing next to hashing 1 MiB.
 */
#define _GNU_SOURCE
#define OPENSSL_SUPPRESS_DEPRECATED
#define CAS_NATIVE_INTERNAL
#include "cas_native.h"

#include <fcntl.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Data bytes under one level-1 block. */
#define CAS_NODE_SPAN ((uint64_t)CAS_BLOCK * (CAS_BLOCK / CAS_HASH_LEN))
/* 2 level-1 blocks (1 MiB, the read size measured best for the serial hasher)
 * per unit, at most 64 units (64 MiB) ahead of the fold. */
#define CAS_UNIT_NODES 2u
#define CAS_WINDOW 64u
#define CAS_MAX_UNIT_NODES 8u

/* ---- budget of hashing threads ------------------------------------------- */

static unsigned cas_busy;  /* hashing threads running in this process */

/* A forked child runs only the thread that forked, which was not hashing. */
static void cas_budget_reset(void)
{
    __atomic_store_n(&cas_busy, 0, __ATOMIC_RELAXED);
}

__attribute__((constructor)) static void cas_budget_init(void)
{
    pthread_atfork(NULL, NULL, cas_budget_reset);
}

unsigned cas_budget_cpus(void)
{
    cpu_set_t set;
    long online;

    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
        return (unsigned)CPU_COUNT(&set);
    online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? (unsigned)online : 1u;
}

void cas_budget_enter(void)
{
    __atomic_fetch_add(&cas_busy, 1, __ATOMIC_RELAXED);
}

void cas_budget_leave(void)
{
    __atomic_fetch_sub(&cas_busy, 1, __ATOMIC_RELAXED);
}

int cas_budget_try_enter(unsigned cpus)
{
    unsigned busy = __atomic_load_n(&cas_busy, __ATOMIC_RELAXED);

    while (busy < cpus)
        if (__atomic_compare_exchange_n(&cas_busy, &busy, busy + 1, 1,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return 1;
    return 0;
}

/* Leaves only while over budget, one thread per excess thread. */
int cas_budget_try_leave(unsigned cpus)
{
    unsigned busy = __atomic_load_n(&cas_busy, __ATOMIC_RELAXED);

    while (busy > cpus)
        if (__atomic_compare_exchange_n(&cas_busy, &busy, busy - 1, 1,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return 1;
    return 0;
}

/* ---- one job: the digest of one file ------------------------------------- */

struct cas_verity_job {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int fd;
    struct cas_verity_tuning t;
    size_t unit;            /* bytes per unit */
    uint64_t units_hint;    /* units in the file when it was fstat'ed */
    struct cas_progress *progress;
    /* under mu: */
    unsigned threads;       /* running: the caller and its helpers */
    uint64_t next;          /* next unit to claim */
    uint64_t end;           /* no unit at or past it is claimed */
    uint64_t folded;        /* units folded into `tree` */
    int short_seen;         /* a folded unit was short: the end of the data */
    int err;
    uint8_t leaf0[CAS_HASH_LEN];  /* first leaf: the root of a 1-block file */
    struct cas_merkle tree;       /* level-1 hashes, in file order */
    uint64_t *len;          /* per slot: bytes of the unit, once stored */
    uint8_t *stored;        /* per slot: 1 once the unit is stored */
    uint8_t *nodes;         /* per slot: unit_nodes level-1 hashes */
    uint8_t *buf;           /* the caller's read buffer */
};

/*
 * Hashes buf[0..len) (len < unit: zero-padded in place; buf holds a whole
 * unit) into its level-1 block hashes; the first leaf hash goes to leaf0.
 */
static void cas_hash_unit(uint8_t *buf, size_t len, uint8_t *nodes,
                          uint8_t leaf0[CAS_HASH_LEN])
{
    uint8_t level0[CAS_BLOCK];
    size_t off = 0, pad = (CAS_BLOCK - len % CAS_BLOCK) % CAS_BLOCK;

    memset(buf + len, 0, pad);
    len += pad;
    memset(leaf0, 0, CAS_HASH_LEN);
    while (off < len) {
        size_t fill = 0;

        for (; fill < CAS_BLOCK && off < len; fill += CAS_HASH_LEN, off += CAS_BLOCK)
            cas_sha256_block(buf + off, level0 + fill);
        if (off <= CAS_NODE_SPAN)  /* the unit's first level-1 block */
            memcpy(leaf0, level0, CAS_HASH_LEN);
        memset(level0 + fill, 0, CAS_BLOCK - fill);
        cas_sha256_block(level0, nodes);
        nodes += CAS_HASH_LEN;
    }
}

static void cas_job_fail(struct cas_verity_job *job, int err)
{
    if (job->err == 0)
        job->err = err;
    pthread_cond_broadcast(&job->cv);
}

/* Folds the finished units at the front of the window (under mu). */
static void cas_job_fold(struct cas_verity_job *job)
{
    while (job->folded < job->next) {
        size_t slot = job->folded % job->t.window;
        uint64_t len = job->len[slot], node;

        if (!job->stored[slot])
            break;
        if (len > 0 && job->short_seen)
            cas_job_fail(job, -CAS_ECHANGED);
        for (node = 0; node * CAS_NODE_SPAN < len; node++)
            cas_merkle_push(&job->tree, 1,
                            job->nodes + (slot * job->t.unit_nodes + node) * CAS_HASH_LEN);
        job->tree.size += len;
        job->short_seen |= len < job->unit;
        job->stored[slot] = 0;
        job->folded++;
        if (job->progress != NULL)
            __atomic_fetch_add(&job->progress->done, len, __ATOMIC_RELAXED);
    }
    pthread_cond_broadcast(&job->cv);
}

/* Claims the next unit (under mu): 1 with *unit set, or 0 when there is
 * nothing left to do (the end, an error, a cancel). */
static int cas_job_claim(struct cas_verity_job *job, uint64_t *unit)
{
    while (job->err == 0 && job->next < job->end
           && job->next >= job->folded + job->t.window)
        pthread_cond_wait(&job->cv, &job->mu);
    if (job->err == 0 && cas_cancelled(job->progress))
        cas_job_fail(job, -ECANCELED);
    if (job->err != 0 || job->next >= job->end)
        return 0;
    *unit = job->next++;
    return 1;
}

/* Stores what unit `i` read and hashed (under mu). */
static void cas_job_store(struct cas_verity_job *job, uint64_t i, int64_t got,
                          const uint8_t *nodes, const uint8_t leaf0[CAS_HASH_LEN])
{
    size_t slot = i % job->t.window;

    if (got < 0) {
        cas_job_fail(job, (int)got);
        return;
    }
    if ((uint64_t)got < job->unit && i + 1 < job->end)
        job->end = i + 1;
    if (i == 0)
        memcpy(job->leaf0, leaf0, CAS_HASH_LEN);
    memcpy(job->nodes + slot * job->t.unit_nodes * CAS_HASH_LEN, nodes,
           job->t.unit_nodes * CAS_HASH_LEN);
    job->len[slot] = (uint64_t)got;
    job->stored[slot] = 1;
    cas_job_fold(job);
}

static void *cas_helper_main(void *arg);

/*
 * Starts a helper if the call may have one more thread, work remains for it
 * and the process is below its budget (called by the caller, under mu).
 */
static void cas_job_recruit(struct cas_verity_job *job)
{
    pthread_attr_t attr;
    pthread_t thread;
    int rc;

    if (job->threads >= job->t.max_threads || job->next >= job->units_hint
        || !cas_budget_try_enter(job->t.cpus))
        return;
    rc = pthread_attr_init(&attr);
    if (rc == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        rc = pthread_create(&thread, &attr, cas_helper_main, job);
        pthread_attr_destroy(&attr);
    }
    if (rc != 0) {
        cas_budget_leave();  /* no helper: the caller carries on alone */
        return;
    }
    job->threads++;
}

/*
 * The loop of every thread of a job (mu held on entry and on return). Helpers
 * leave early when the process runs more hashing threads than CPUs.
 */
static void cas_job_work(struct cas_verity_job *job, uint8_t *buf,
                         int caller, int *left)
{
    uint8_t nodes[CAS_MAX_UNIT_NODES * CAS_HASH_LEN], leaf0[CAS_HASH_LEN];
    uint64_t i;

    while (cas_job_claim(job, &i)) {
        int64_t got;

        if (caller)
            cas_job_recruit(job);
        pthread_mutex_unlock(&job->mu);
        got = cas_pread_full(job->fd, buf, job->unit, i * job->unit);
        if (got >= 0)
            cas_hash_unit(buf, (size_t)got, nodes, leaf0);
        pthread_mutex_lock(&job->mu);
        cas_job_store(job, i, got, nodes, leaf0);
        if (!caller && cas_budget_try_leave(job->t.cpus)) {
            *left = 1;
            return;
        }
    }
}

static void *cas_helper_main(void *arg)
{
    struct cas_verity_job *job = arg;
    uint8_t *buf = aligned_alloc(CAS_BLOCK, job->unit);
    int left = 0;

    pthread_setname_np(pthread_self(), "cas-verity");  /* for top -H and tests */
    pthread_mutex_lock(&job->mu);
    if (buf != NULL)
        cas_job_work(job, buf, 0, &left);
    pthread_mutex_unlock(&job->mu);
    free(buf);
    if (!left)
        cas_budget_leave();
    /* The last touch of job: the caller frees it once threads == 1. */
    pthread_mutex_lock(&job->mu);
    job->threads--;
    pthread_cond_broadcast(&job->cv);
    pthread_mutex_unlock(&job->mu);
    return NULL;
}

/* 0 or -ENOMEM; either way cas_job_free releases what was taken. */
static int cas_job_init(struct cas_verity_job *job, int fd,
                        const struct cas_verity_tuning *t,
                        struct cas_progress *progress)
{
    struct stat st;
    size_t window = t->window;
    unsigned cap;

    memset(job, 0, sizeof(*job));
    pthread_mutex_init(&job->mu, NULL);
    pthread_cond_init(&job->cv, NULL);
    job->fd = fd;
    job->t = *t;
    if (job->t.cpus == 0)
        job->t.cpus = cas_budget_cpus();
    cap = t->max_threads != 0 ? t->max_threads : job->t.cpus;
    job->t.max_threads = cap < CAS_MAX_THREADS ? cap : CAS_MAX_THREADS;
    job->unit = t->unit_nodes * CAS_NODE_SPAN;
    if (fstat(fd, &st) == 0 && st.st_size > 0)
        job->units_hint = ((uint64_t)st.st_size + job->unit - 1) / job->unit;
    job->progress = progress;
    job->threads = 1;
    job->end = UINT64_MAX;
    cas_merkle_init(&job->tree);
    job->len = calloc(window, sizeof(*job->len));
    job->stored = calloc(window, 1);
    job->nodes = calloc(window * t->unit_nodes, CAS_HASH_LEN);
    job->buf = aligned_alloc(CAS_BLOCK, job->unit);
    if (job->len == NULL || job->stored == NULL || job->nodes == NULL
        || job->buf == NULL)
        return -ENOMEM;
    return 0;
}

static void cas_job_free(struct cas_verity_job *job)
{
    free(job->len);
    free(job->stored);
    free(job->nodes);
    free(job->buf);
    pthread_cond_destroy(&job->cv);
    pthread_mutex_destroy(&job->mu);
    free(job);
}

static void cas_job_digest(struct cas_verity_job *job, struct cas_digests *out)
{
    uint8_t root[CAS_HASH_LEN] = {0};

    out->size = job->tree.size;
    if (out->size > CAS_BLOCK)
        cas_merkle_root(&job->tree, root);
    else if (out->size > 0)
        memcpy(root, job->leaf0, CAS_HASH_LEN);
    cas_verity_descriptor(out->size, root, out->verity);
}

int cas_verity_fd_tuned(int fd, const struct cas_verity_tuning *t,
                        struct cas_digests *out, struct cas_progress *progress)
{
    struct cas_verity_job *job;
    int err, left = 0;

    if (out == NULL || t == NULL || t->unit_nodes == 0
        || t->unit_nodes > CAS_MAX_UNIT_NODES || t->window == 0)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    if (cas_cancelled(progress))
        return -ECANCELED;
    job = malloc(sizeof(*job));
    if (job == NULL)
        return -ENOMEM;
    if (cas_job_init(job, fd, t, progress) != 0) {
        cas_job_free(job);
        return -ENOMEM;
    }
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    cas_budget_enter();
    pthread_mutex_lock(&job->mu);
    cas_job_work(job, job->buf, 1, &left);
    while (job->threads > 1)
        pthread_cond_wait(&job->cv, &job->mu);
    pthread_mutex_unlock(&job->mu);
    cas_budget_leave();
    err = job->err;
    if (err == 0)
        cas_job_digest(job, out);
    cas_job_free(job);
    return err;
}

int cas_verity_fd(int fd, unsigned max_threads, struct cas_digests *out,
                  struct cas_progress *progress)
{
    struct cas_verity_tuning t = {max_threads, 0, CAS_UNIT_NODES, CAS_WINDOW};

    return cas_verity_fd_tuned(fd, &t, out, progress);
}
