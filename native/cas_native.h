/*
 * cas_native.h - the C contract of the cas hot path (fs-verity digests,
 * flat SHA-256 and the import pipeline).
 *
 * Rules that hold for every function below:
 *   - int-returning functions return 0 on success or a negative errno
 *     (-EINVAL, -EIO, -ENOSPC, ...). errno itself is not meaningful afterwards.
 *   - -ECANCELED means the caller asked to stop through cas_progress.cancel.
 *   - -CAS_ECHANGED (-ESTALE) means a file changed length while it was being
 *     read twice (the two hashing threads saw different EOFs, or the
 *     destination of an import was truncated behind our back).
 *   - There is no Python in here. Every call is independent and thread-safe
 *     on distinct objects; a cas_hasher must not be used from two threads at
 *     once. The one piece of process-wide state is a counter of the hashing
 *     threads running (see cas_verity_fd), so that concurrent calls together
 *     do not start more threads than there are CPUs.
 *
 * The fs-verity digest is the one of `fsverity digest` (Linux
 * Documentation/filesystems/fsverity.rst): SHA-256, 4096-byte Merkle blocks,
 * no salt; verity = SHA-256 of the 256-byte fsverity_descriptor.
 */
#ifndef CAS_NATIVE_H
#define CAS_NATIVE_H

#include <stddef.h>
#include <stdint.h>
#include <errno.h>

struct cas_digests {
    uint8_t verity[32];   /* fs-verity file digest (the object id) */
    uint8_t sha256[32];   /* flat SHA-256 of the bytes; zeroed when not asked */
    uint64_t size;        /* number of bytes hashed */
};

/*
 * Optional everywhere (NULL allowed). Each call ADDS the bytes it has hashed
 * (counted by its slowest hashing thread, once per chunk) to `done`, with
 * atomic adds: a fresh progress counts one call from 0, and one progress may
 * be shared by several calls, even concurrent ones, to count their total.
 * A non-zero `cancel` makes a running call stop at its next chunk with
 * -ECANCELED; a call that starts with `cancel` already set returns -ECANCELED
 * at once.
 */
struct cas_progress {
    volatile uint64_t done;
    volatile int cancel;
};

#define CAS_ECHANGED ESTALE

/* ---- streaming hasher (bytes arriving in pieces) ------------------------
 * Bounded memory: one 4 KiB partial data block plus one 4 KiB pending block
 * per Merkle level (at most 9 levels for 2^64 bytes), about 45 KiB in all.
 * Always computes both digests.
 */
typedef struct cas_hasher cas_hasher;

cas_hasher *cas_hasher_new(void);  /* NULL on ENOMEM */
/* -EINVAL after final, or buf == NULL with len > 0; -EFBIG past 2^64 bytes. */
int cas_hasher_update(cas_hasher *h, const uint8_t *buf, size_t len);
/* -EINVAL when called twice. */
int cas_hasher_final(cas_hasher *h, struct cas_digests *out);
void cas_hasher_free(cas_hasher *h);  /* NULL is a no-op */
/* Both digests of one buffer (-EINVAL: buf == NULL with len > 0). */
int cas_hash_buffer(const uint8_t *buf, size_t len, struct cas_digests *out);

/* ---- whole files ---------------------------------------------------------
 * Both functions hash fd from offset 0 to EOF with pread (the file position
 * is not used or moved; fd must be seekable, else -ESPIPE).
 *
 * cas_verity_fd computes the fs-verity digest alone (out->sha256 is zeroed)
 * on up to `max_threads` threads (0: one per CPU the process may run on, at
 * most CAS_MAX_THREADS). The leaves are independent: threads claim 1 MiB
 * units in file order, hash their leaves and level-1 blocks, and finished
 * units are folded in order into the levels above; at most a fixed window of
 * units is in flight, so memory is bounded whatever the file size.
 * The calling thread always hashes. Helper threads join only while the
 * process runs fewer hashing threads than CPUs (every call's threads count,
 * cas_hash_fd's and cas_import_fd's too) and leave when there are more, so a
 * sweep hashing one file per CPU gets no helpers, and its last large file
 * gets them back. A unit with data after a short one (the file grew while
 * read) gives -CAS_ECHANGED.
 *
 * cas_hash_fd with CAS_HASH_SHA256 runs two threads, each reading the file
 * with its own bounded buffer: one computes the flat SHA-256 (inherently
 * serial), the other the Merkle tree, so the wall time is about one SHA-256
 * pass on two cores. If they reach different EOFs the result is
 * -CAS_ECHANGED. Without the flag it is cas_verity_fd(fd, 0, ...).
 */
#define CAS_MAX_THREADS 16u
int cas_verity_fd(int fd, unsigned max_threads, struct cas_digests *out,
                  struct cas_progress *progress);

#define CAS_HASH_SHA256 1u
int cas_hash_fd(int fd, unsigned flags, struct cas_digests *out,
                struct cas_progress *progress);

/* ---- import: copy + hash what landed -------------------------------------
 * Copies all of src_fd (offset 0 to EOF, pread/offset-based, file positions
 * untouched) into dst_fd, which must be an empty regular file open for writing
 * without O_APPEND (else -EINVAL, or -EBADF from the kernel for O_APPEND).
 * Methods are tried in the order reflink (FICLONE) -> copy_file_range ->
 * read/write, restricted to `allowed` (0 or unknown bits: -EINVAL).
 *
 * A method is skipped, before it has copied anything, only on errnos that mean
 * "not supported for these two files":
 *   FICLONE:          EOPNOTSUPP (== ENOTSUP), EXDEV, EINVAL, ENOTTY, ENOSYS,
 *                     EBADF (the kernel also uses it for "this filesystem
 *                     cannot reflink"; a genuinely bad fd fails again in the
 *                     next method and is reported there).
 *   copy_file_range:  EOPNOTSUPP, EXDEV, EINVAL, ENOSYS.
 *   read/write:       never skipped.
 * Any other errno (EIO, ENOSPC, EBADF from copy_file_range, ...) or any
 * failure after bytes were copied is returned as is. When every allowed
 * method is skipped, the errno of the last one is returned.
 *
 * The DESTINATION bytes are hashed while they land: the copier publishes how
 * many bytes are in dst after each chunk (reflink: the whole size at once) and
 * a SHA-256 thread and a Merkle thread pread dst up to that mark. A source
 * that shrinks mid-copy just yields a smaller out->size (callers compare with
 * their fstat). *method_used is one of CAS_COPY_*. Memory is bounded by a few
 * chunk buffers. progress->done counts hashed bytes.
 */
#define CAS_COPY_REFLINK 1u
#define CAS_COPY_RANGE 2u
#define CAS_COPY_READWRITE 4u
int cas_import_fd(int src_fd, int dst_fd, unsigned allowed,
                  struct cas_digests *out, unsigned *method_used,
                  struct cas_progress *progress);

/* ---- copy only -----------------------------------------------------------
 * cas_copy_fd is cas_import_fd without the hashing: the same methods, order,
 * skip rules and dst requirements; *copied = bytes now in dst. For callers
 * that hashed the source already and prove it unchanged (cas.store).
 * progress->done counts copied bytes.
 */
int cas_copy_fd(int src_fd, int dst_fd, unsigned allowed, uint64_t *copied,
                unsigned *method_used, struct cas_progress *progress);

/* ---- a file the caller fills, hashed behind it ---------------------------
 * For bytes that arrive from elsewhere (a download) and are written to a file
 * anyway: the caller writes fd and reports with cas_filler_mark how many
 * leading bytes are now written (monotone; writes at higher offsets may land
 * in any order); a Merkle thread and a SHA-256 thread pread fd up to that mark,
 * on other cores than the writer's. The threads start once the mark passes
 * CAS_FILLER_THREADED; a smaller file is hashed by cas_filler_finish in the
 * calling thread, so many small files cost no thread creations.
 *
 * cas_filler_mark returns 0 while all is well, else the first error of a
 * hashing thread or -ECANCELED (progress->cancel): the caller stops writing
 * and calls cas_filler_finish. A mark below the previous one is -EINVAL.
 * cas_filler_finish(f, 0, out) hashes up to the last mark and fills out
 * (out->size == the last mark); with abort != 0 it stops the threads and
 * returns -ECANCELED. Either way it joins the threads and frees f (NULL
 * returns -EINVAL). progress->done counts hashed bytes.
 *
 * With CAS_FILLER_WRITEBACK (a caller that will fsync) the Merkle thread starts
 * the writeback of each chunk it has hashed (sync_file_range, best effort), so
 * the disk writes while the rest arrives and the final fsync has little left.
 * Unknown flags: NULL.
 */
#define CAS_FILLER_THREADED (4u << 20)
#define CAS_FILLER_WRITEBACK 1u
typedef struct cas_pipeline cas_filler;
cas_filler *cas_filler_new(int fd, unsigned flags, struct cas_progress *progress);
int cas_filler_mark(cas_filler *f, uint64_t mark);
int cas_filler_finish(cas_filler *f, int abort, struct cas_digests *out);

/* ---- import of many small files (cas_batch.c) -----------------------------
 * cas_import_batch imports files[0..n) one after another on the calling
 * thread, for the tree walk that would otherwise make a Python call (and
 * several GIL hand-offs) per file.  For each file:
 *   - `name` below src_dir_fd is opened O_NOFOLLOW | O_NONBLOCK and must be a
 *     regular file (fstat) with the size, mtime and ctime it was listed with
 *     (`size` at most CAS_BATCH_MAX_FILE);
 *   - a new temp file "<prefix>.<i in hex>" is made in tmp_dir_fd (O_EXCL,
 *     0600); with CAS_BATCH_REFLINK the source is cloned into it (FICLONE)
 *     and the bytes are read back from the source if its ctime is at least
 *     settle_ns old, else from the clone.  FICLONE errnos meaning "not
 *     supported here" (cas_import_fd's list) fall back to read/write, and
 *     CAS_BATCH_NO_REFLINK in *flags_out says so (not tried again in this
 *     call); otherwise the source is read once into a buffer that is written
 *     to the temp file;
 *   - both digests are computed from that buffer (the bytes of the object);
 *   - the source must still have the size, mtime and ctime it had when it was
 *     opened, and have given exactly `size` bytes;
 *   - the temp file gets the xattrs user.cas.object and user.cas.sha256 (best
 *     effort: a filesystem without user xattrs is fine) and, with
 *     CAS_BATCH_SEAL, mode 0444; then both fds are closed.
 * progress->done counts each file's bytes once it is stored; a set cancel
 * stops the call before the next file (-ECANCELED).
 * Returns 0 when every file is in its temp file (the caller publishes them
 * and removes those it does not keep).  Otherwise the -errno of the first
 * failure: *failed is the index of the file (n for a failure of the call), and
 * its `stage` says what failed: CAS_BATCH_OPEN (opening the source),
 * CAS_BATCH_TYPE (not a regular file: `mode` is its st_mode),
 * CAS_BATCH_CHANGED (-CAS_ECHANGED: `changed` is 1 size, 2 mtime, 3 ctime and
 * `was`/`now` the values), CAS_BATCH_READ (reading the source),
 * CAS_BATCH_STORE (making or writing the temp file); every temp file this call
 * made is removed again.
 */
#define CAS_BATCH_MAX_FILE (1u << 20)
#define CAS_BATCH_REFLINK 1u
#define CAS_BATCH_SEAL 2u
#define CAS_BATCH_NO_REFLINK 1u
enum { CAS_BATCH_OK, CAS_BATCH_OPEN, CAS_BATCH_TYPE, CAS_BATCH_CHANGED, CAS_BATCH_READ,
       CAS_BATCH_STORE };
struct cas_batch_file {
    const char *name;           /* in */
    uint64_t size;              /* in: as listed (st_size, st_mtime/st_ctime in ns) */
    int64_t mtime_ns, ctime_ns;
    struct cas_digests digests; /* out */
    unsigned method;            /* out: CAS_COPY_REFLINK or CAS_COPY_READWRITE */
    int stage;                  /* out: CAS_BATCH_* of a failure, else 0 */
    uint32_t mode;              /* out: st_mode, for CAS_BATCH_TYPE */
    int changed;                /* out: for CAS_BATCH_CHANGED */
    int64_t was, now;
};
int cas_import_batch(int src_dir_fd, int tmp_dir_fd, const char *prefix,
                     struct cas_batch_file *files, size_t n, unsigned flags,
                     int64_t settle_ns, unsigned *flags_out, size_t *failed,
                     struct cas_progress *progress);

/* ---- composefs images (cas_composefs.c) ---------------------------------
 * cas_cfs_write writes the composefs EROFS image of a tree given as `count`
 * records, byte for byte what mkcomposefs writes (the pure-Python twin and the
 * format: cas/formats/composefs/erofs.py).  Record i (parents before
 * children, record 0 the root directory): a CAS_CFS_RECORD_HEADER-byte
 * little-endian header {u32 parent (0xFFFFFFFF for the root), u32 link (the
 * record of the inode this name is a hard link to, else 0xFFFFFFFF), u32 mode,
 * uid, gid, nlink, rdev, mtime_nsec; i64 mtime; u64 size; u16 name_len,
 * payload_len, content_len (0xFFFF: none), n_xattrs; u8 has_digest; 7 zero
 * bytes}, then the name, payload, content, 32-byte digest (if any) and
 * n_xattrs times {u16 name_len, u16 value_len, name, value}.
 * On success *image is a malloc'd buffer for cas_cfs_free.  -EINVAL for any
 * input composefs would refuse (the twin says why), -ENOMEM.
 */
#define CAS_CFS_RECORD_HEADER 64
int cas_cfs_write(const uint8_t *spec, size_t spec_len, uint32_t count, int version,
                  int max_version, uint8_t **image, size_t *image_len);
void cas_cfs_free(uint8_t *image);
/* ---- GC: the mark set and the sweep of one objects/XX shard ---------------
 * cas_ids_sort_unique sorts n raw 32-byte ids in place, drops repeats and
 * returns how many are left (the mark set for cas_sweep_shard).
 *
 * cas_sweep_shard lists shard_fd (the directory objects/XX, XX = `shard` in
 * hex). A name that is not 62 lowercase hex digits is a stray and never
 * judged; an id (shard byte + name) found in `marked` (n_marked sorted unique
 * ids) is reachable. Each other name, in name order, is looked at with fstatat
 * without following: gone -> CAS_SWEEP_GONE; anything but a regular file ->
 * CAS_SWEEP_NOT_FILE; modified after `cutoff_ns` (ns since the epoch: the
 * grace period) -> CAS_SWEEP_YOUNG; else CAS_SWEEP_REMOVED, and unless
 * CAS_SWEEP_DRY_RUN the object is unlinked -- after its index entry if it has
 * more than one link: its user.cas.sha256 xattr (32 bytes) names the entry
 * <hex of sha[1..31]> in index_fds[sha[0]] (256 fds, -1 for a missing shard),
 * unlinked only if it is the same inode (index_unlinked = 1; 0 if it could not
 * be found so). size and links come from the fstatat.
 * On success *out (free with cas_sweep_free) holds *n_out entries, one per
 * unreachable name, and *scanned counts every name listed. Returns 0, or the
 * -errno of the first failure other than ENOENT (then *out is NULL).
 */
#define CAS_SWEEP_DRY_RUN 1u
enum { CAS_SWEEP_GONE, CAS_SWEEP_NOT_FILE, CAS_SWEEP_YOUNG, CAS_SWEEP_REMOVED };
struct cas_sweep_entry {
    char name[63];
    uint8_t status;
    uint8_t index_unlinked;
    uint64_t size;
    uint64_t links;
};
size_t cas_ids_sort_unique(uint8_t *ids, size_t n);
int cas_sweep_shard(int shard_fd, unsigned shard, const uint8_t *marked,
                    size_t n_marked, const int *index_fds, int64_t cutoff_ns,
                    unsigned flags, struct cas_sweep_entry **out, size_t *n_out,
                    uint64_t *scanned);
void cas_sweep_free(struct cas_sweep_entry *entries);

/* ---- internal: shared by cas_hash.c and cas_copy.c, not exported to Python.
 * A pipeline owns the hashing threads of one call. In "EOF" mode they read
 * fd until EOF; in "mark" mode a producer publishes how many bytes of fd are
 * readable and the threads never read past that mark.
 */
#ifdef CAS_NATIVE_INTERNAL
#define CAS_BLOCK 4096u
#define CAS_HASH_LEN 32u
/* xattrs of a stored object (cas.core.store.OBJECT_XATTR / SHA256_XATTR): its
 * fs-verity digest and its SHA-256, the name of its index entry */
#define CAS_OBJECT_XATTR "user.cas.object"
#define CAS_SHA256_XATTR "user.cas.sha256"
/* 2^64 bytes = 2^52 blocks; 128 hashes per block: levels 0..8. */
#define CAS_MAX_LEVELS 9

/* A streaming Merkle tree (cas_hash.c). */
struct cas_merkle {
    uint64_t size;
    size_t partial_len;
    int top;                        /* highest level holding a hash */
    size_t fill[CAS_MAX_LEVELS];    /* bytes of hashes in level[i] */
    uint8_t partial[CAS_BLOCK];
    uint8_t level[CAS_MAX_LEVELS][CAS_BLOCK];
};

void cas_sha256_block(const uint8_t *block, uint8_t out[CAS_HASH_LEN]);
void cas_merkle_init(struct cas_merkle *m);
/* Appends a hash to level `lvl`, hashing full level blocks upwards. */
void cas_merkle_push(struct cas_merkle *m, int lvl,
                     const uint8_t hash[CAS_HASH_LEN]);
/* The root of a tree holding at least one hash, fed from level 0 or from
 * level 1 (a tree of one data block has the leaf hash as its root). */
void cas_merkle_root(struct cas_merkle *m, uint8_t root[CAS_HASH_LEN]);
/* SHA-256 of the fsverity_descriptor of a file of `size` bytes. */
void cas_verity_descriptor(uint64_t size, const uint8_t root[CAS_HASH_LEN],
                           uint8_t verity[CAS_HASH_LEN]);

/* The process-wide count of running hashing threads (cas_verity.c). */
unsigned cas_budget_cpus(void);           /* CPUs the process may run on */
void cas_budget_enter(void);              /* this thread hashes now */
void cas_budget_leave(void);
int cas_budget_try_enter(unsigned cpus);  /* 1 if below `cpus`, counted */
int cas_budget_try_leave(unsigned cpus);  /* 1 if above `cpus`, uncounted */

/* cas_verity_fd with its shape exposed, for the fuzz harness: `cpus` (0:
 * detect) is the budget, `unit_nodes` level-1 blocks per unit (512 KiB each),
 * `window` units in flight at most. */
struct cas_verity_tuning {
    unsigned max_threads, cpus, unit_nodes, window;
};
int cas_verity_fd_tuned(int fd, const struct cas_verity_tuning *t,
                        struct cas_digests *out, struct cas_progress *progress);

/* Has the caller asked to stop? (NULL: never.) Read from any thread. */
static inline int cas_cancelled(struct cas_progress *progress)
{
    return progress != NULL && __atomic_load_n(&progress->cancel, __ATOMIC_RELAXED);
}

/* Two hashing threads (Merkle, flat SHA-256) reading one fd. */
struct cas_pipeline;
#define CAS_PIPELINE_WORKERS 2

/* NULL on ENOMEM. */
struct cas_pipeline *cas_pipeline_new(int fd, int to_eof,
                                      struct cas_progress *progress);
/* Starts the hashing threads; 0 or -errno (then call cas_pipeline_finish). */
int cas_pipeline_start(struct cas_pipeline *pl);
/* Producer side: `mark` bytes of fd may now be read (monotone). */
void cas_pipeline_publish(struct cas_pipeline *pl, uint64_t mark);
/* 0 while all is well, else the first error of a hashing thread, or
 * -ECANCELED once progress->cancel is set; producers poll it between chunks. */
int cas_pipeline_status(struct cas_pipeline *pl);
/* Ends production (err != 0 aborts the threads), joins them, fills out and
 * frees pl. Returns the first error recorded (a thread's or err), else 0. */
int cas_pipeline_finish(struct cas_pipeline *pl, int err,
                        struct cas_digests *out);
/* pread that retries EINTR and short reads; returns bytes read (< len only at
 * EOF) or -errno. */
int64_t cas_pread_full(int fd, uint8_t *buf, size_t len, uint64_t off);
/* pwrite all of buf, retrying EINTR and short writes; 0 or -errno. */
int cas_pwrite_full(int fd, const uint8_t *buf, size_t len, uint64_t off);
/* Does FICLONE's errno mean "not between these two files"? (cas_import_fd) */
int cas_reflink_unsupported(int err);
#endif

#endif /* CAS_NATIVE_H */
