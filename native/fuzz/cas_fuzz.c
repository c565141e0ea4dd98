/*
 * cas_fuzz.c - fuzz / valgrind harness for the native hashing code.
 *
 * One input = 2 control bytes + payload:
 *   byte 0: split-point PRNG seed; bit 0 of byte 1 set: the payload is repeated
 *   (zeros if empty) up to a Merkle boundary (4 KiB, 512 KiB, ...) plus a small
 *   signed delta taken from the rest of byte 1, so short inputs reach the level
 *   changes.
 * Every input is hashed (a) in one cas_hasher_update, (b) in PRNG-sized pieces,
 * (c) by cas_hash_fd on a memfd with and without CAS_HASH_SHA256, (d) by the
 * parallel cas_verity_fd_tuned in several shapes (1-4 threads, 512 KiB or 1
 * MiB units, windows of 1-3 units, so small inputs cross many units and fill
 * the window), and checked against (e) a plain non-streaming Merkle computed
 * here with all leaf hashes in memory. Any mismatch aborts.
 *
 * Build (see Makefile): libFuzzer + ASan with `make fuzz`, or a plain driver
 * with `make standalone` that runs the files named on its command line, or,
 * without arguments, a fixed sweep of sizes plus an import of each through the
 * read/write and copy_file_range methods and a batch import of several sizes
 * (for valgrind: `make valgrind`).
 */
#define _GNU_SOURCE
#define CAS_NATIVE_INTERNAL
#include "cas_native.h"

#include <fcntl.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#define BLOCK 4096u

static const size_t boundaries[] = {
    BLOCK, 2 * BLOCK, 128 * BLOCK, 129 * BLOCK, 2 * 128 * BLOCK,
    3 * 128 * BLOCK, 5 * 128 * BLOCK + BLOCK,
};

/* Shapes of the parallel hasher: max_threads, cpus (the budget), unit_nodes,
 * window. cpus = 8 lets helpers run whatever the machine. */
static const struct cas_verity_tuning shapes[] = {
    {1, 8, 1, 1}, {2, 8, 1, 1}, {4, 8, 1, 2}, {3, 8, 2, 3}, {0, 0, 2, 64},
};

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "cas_fuzz: mismatch: %s\n", what);
        abort();
    }
}

/* Straightforward Merkle root: every level materialised. */
static void plain_root(const uint8_t *data, size_t len, uint8_t root[32])
{
    size_t n = (len + BLOCK - 1) / BLOCK, i;
    uint8_t *level = malloc(n ? n * 32 : 32), block[BLOCK];

    check(level != NULL, "malloc");
    memset(root, 0, 32);
    for (i = 0; i < n; i++) {
        size_t take = len - i * BLOCK < BLOCK ? len - i * BLOCK : BLOCK;

        memset(block, 0, BLOCK);
        memcpy(block, data + i * BLOCK, take);
        SHA256(block, BLOCK, level + 32 * i);
    }
    while (n > 1) {
        size_t bytes = n * 32, up = (bytes + BLOCK - 1) / BLOCK;

        for (i = 0; i < up; i++) {
            size_t take = bytes - i * BLOCK < BLOCK ? bytes - i * BLOCK : BLOCK;

            memset(block, 0, BLOCK);
            memcpy(block, level + i * BLOCK, take);
            SHA256(block, BLOCK, level + 32 * i);
        }
        n = up;
    }
    if (len > 0)
        memcpy(root, level, 32);
    free(level);
}

static void plain_verity(const uint8_t *data, size_t len, uint8_t out[32])
{
    uint8_t desc[256] = {1, 1, 12, 0};
    int i;

    for (i = 0; i < 8; i++)
        desc[8 + i] = (uint8_t)((uint64_t)len >> (8 * i));
    plain_root(data, len, desc + 16);
    SHA256(desc, sizeof(desc), out);
}

static void hash_pieces(const uint8_t *data, size_t len, uint32_t seed,
                        struct cas_digests *out)
{
    cas_hasher *h = cas_hasher_new();
    size_t off = 0;

    check(h != NULL, "cas_hasher_new");
    while (off < len) {
        size_t piece;

        seed = seed * 1103515245u + 12345u;
        piece = (seed >> 8) % (seed & 0x10 ? 9000 : 64);
        if (piece > len - off)
            piece = len - off;
        check(cas_hasher_update(h, data + off, piece) == 0, "update");
        off += piece;
    }
    check(cas_hasher_final(h, out) == 0, "final");
    check(cas_hasher_update(h, data, 0) == -EINVAL, "update after final");
    check(cas_hasher_final(h, out + 1) == -EINVAL, "final twice");
    cas_hasher_free(h);
}

static int memfd_with(const uint8_t *data, size_t len)
{
    int fd = memfd_create("cas_fuzz", 0);

    check(fd >= 0, "memfd_create");
    check(write(fd, data, len) == (ssize_t)len, "write memfd");
    return fd;
}

static void check_parallel(int fd, size_t len, const uint8_t verity[32])
{
    size_t i;

    for (i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        struct cas_digests got;
        struct cas_progress progress = {0, 0};

        check(cas_verity_fd_tuned(fd, &shapes[i], &got, &progress) == 0,
              "verity_fd_tuned");
        check(memcmp(got.verity, verity, 32) == 0 && got.size == len,
              "parallel verity");
        check(progress.done == len, "parallel progress");
    }
}

static void check_all(const uint8_t *data, size_t len, uint32_t seed)
{
    struct cas_digests one[2], split[2], both, merkle;
    uint8_t verity[32], sha[32];
    cas_hasher *h = cas_hasher_new();
    int fd = memfd_with(data, len);

    check(h != NULL, "cas_hasher_new");
    check(cas_hasher_update(h, data, len) == 0, "update one-shot");
    check(cas_hasher_final(h, one) == 0, "final one-shot");
    cas_hasher_free(h);
    hash_pieces(data, len, seed, split);
    check(cas_hash_fd(fd, CAS_HASH_SHA256, &both, NULL) == 0, "hash_fd");
    check(cas_hash_fd(fd, 0, &merkle, NULL) == 0, "hash_fd merkle");
    plain_verity(data, len, verity);
    check_parallel(fd, len, verity);
    close(fd);

    SHA256(data, len, sha);
    check(memcmp(one[0].verity, verity, 32) == 0, "one-shot verity");
    check(memcmp(split[0].verity, verity, 32) == 0, "split verity");
    check(memcmp(both.verity, verity, 32) == 0, "hash_fd verity");
    check(memcmp(merkle.verity, verity, 32) == 0, "hash_fd merkle verity");
    check(memcmp(one[0].sha256, sha, 32) == 0, "one-shot sha256");
    check(memcmp(split[0].sha256, sha, 32) == 0, "split sha256");
    check(memcmp(both.sha256, sha, 32) == 0, "hash_fd sha256");
    check(one[0].size == len && split[0].size == len && both.size == len &&
          merkle.size == len, "sizes");
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size)
{
    uint8_t *grown;
    size_t total, i;
    int delta;

    if (size < 2) {
        check_all(in, size, 0);
        return 0;
    }
    if ((in[1] & 1) == 0) {
        check_all(in + 2, size - 2, in[0]);
        return 0;
    }
    delta = (int)(in[1] >> 1) % 33 - 16;
    total = boundaries[in[0] % (sizeof(boundaries) / sizeof(boundaries[0]))];
    total = (size_t)((long)total + delta);
    grown = calloc(total ? total : 1, 1);
    check(grown != NULL, "calloc");
    for (i = 0; size > 2 && i < total; i++)
        grown[i] = in[2 + i % (size - 2)];
    check_all(grown, total, in[0]);
    free(grown);
    return 0;
}

#ifdef CAS_FUZZ_STANDALONE
static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    long n;

    check(f != NULL, path);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    rewind(f);
    buf = malloc(n > 0 ? (size_t)n : 1);
    check(buf != NULL && fread(buf, 1, (size_t)n, f) == (size_t)n, path);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* Imports through one method between two unnamed files in a fresh /tmp dir. */
static void check_import(const uint8_t *data, size_t len, unsigned method)
{
    struct cas_digests want, got;
    struct cas_progress progress = {0, 0};
    unsigned used = 0;
    char dir[] = "/tmp/cas_fuzz.XXXXXX";
    int src, dst, rc;

    check(mkdtemp(dir) != NULL, "mkdtemp");
    src = open(dir, O_RDWR | O_TMPFILE, 0600);
    dst = open(dir, O_RDWR | O_TMPFILE, 0600);
    check(src >= 0 && dst >= 0, "O_TMPFILE");
    check(write(src, data, len) == (ssize_t)len, "write src");
    check(cas_hash_fd(src, CAS_HASH_SHA256, &want, NULL) == 0, "hash src");
    rc = cas_import_fd(src, dst, method, &got, &used, &progress);
    if (rc != 0)
        fprintf(stderr, "cas_fuzz: import of %zu bytes (method %u): %s\n",
                len, method, strerror(-rc));
    check(rc == 0 && used == method, "import");
    check(memcmp(&want, &got, sizeof(want)) == 0 && progress.done == len,
          "import digests");
    close(src);
    close(dst);
    rmdir(dir);
}

/* cas_import_batch of files of the sweep's sizes (up to CAS_BATCH_MAX_FILE) in
 * one call against cas_hash_buffer, then a call that fails at its last file (a
 * directory): no temp file may be left. */
static void check_batch(const uint8_t *data)
{
    static const size_t sizes[] = {0, 1, 4095, 4096, 4097, 524288, CAS_BATCH_MAX_FILE};
    enum { N = sizeof(sizes) / sizeof(sizes[0]) };
    struct cas_batch_file files[N + 1];
    struct cas_progress progress = {0, 0};
    char dir[] = "/tmp/cas_fuzz.XXXXXX", name[N + 1][16], path[64];
    unsigned flags_out;
    size_t i, failed, total = 0;
    int dir_fd, rc;

    check(mkdtemp(dir) != NULL, "mkdtemp");
    dir_fd = open(dir, O_RDONLY | O_DIRECTORY);
    check(dir_fd >= 0, "open dir");
    memset(files, 0, sizeof(files));
    for (i = 0; i <= N; i++) {
        struct stat st;
        int fd;

        snprintf(name[i], sizeof(name[i]), "src%zu", i);
        files[i].name = name[i];
        if (i == N) {
            check(mkdirat(dir_fd, name[i], 0700) == 0, "mkdir");
            break;
        }
        fd = openat(dir_fd, name[i], O_WRONLY | O_CREAT | O_EXCL, 0600);
        check(fd >= 0 && write(fd, data, sizes[i]) == (ssize_t)sizes[i], "write src");
        check(fstat(fd, &st) == 0, "fstat src");
        files[i].size = sizes[i];
        files[i].mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
        files[i].ctime_ns = (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec;
        total += sizes[i];
        close(fd);
    }
    rc = cas_import_batch(dir_fd, dir_fd, "obj-0-fuzz", files, N,
                          CAS_BATCH_REFLINK | CAS_BATCH_SEAL, 0, &flags_out, &failed,
                          &progress);
    check(rc == 0 && failed == N && progress.done == total, "batch");
    for (i = 0; i < N; i++) {
        struct cas_digests want;

        check(cas_hash_buffer(data, sizes[i], &want) == 0, "hash buffer");
        check(memcmp(&want, &files[i].digests, sizeof(want)) == 0, "batch digests");
        snprintf(path, sizeof(path), "obj-0-fuzz.%zx", i);
        check(unlinkat(dir_fd, path, 0) == 0, "batch temp file");
    }
    rc = cas_import_batch(dir_fd, dir_fd, "obj-0-fuzz", files, N + 1, 0, 0, &flags_out,
                          &failed, NULL);
    check(rc == -EINVAL && failed == N && files[N].stage == CAS_BATCH_TYPE, "batch refusal");
    for (i = 0; i < N; i++) {
        snprintf(path, sizeof(path), "obj-0-fuzz.%zx", i);
        check(faccessat(dir_fd, path, F_OK, 0) != 0, "batch cleanup");
        check(unlinkat(dir_fd, name[i], 0) == 0, "unlink src");
    }
    check(unlinkat(dir_fd, name[N], AT_REMOVEDIR) == 0, "rmdir src");
    close(dir_fd);
    check(rmdir(dir) == 0, "rmdir");
}

/* Three calls at once on one file: the budget shared by concurrent calls. */
struct concurrent_arg {
    int fd;
    struct cas_digests out;
    int rc;
};

static void *concurrent_main(void *arg)
{
    struct concurrent_arg *c = arg;

    c->rc = cas_verity_fd(c->fd, 0, &c->out, NULL);
    return NULL;
}

static void check_concurrent(const uint8_t *data, size_t len)
{
    struct concurrent_arg args[3];
    pthread_t threads[3];
    uint8_t verity[32];
    int fd = memfd_with(data, len), i;

    plain_verity(data, len, verity);
    for (i = 0; i < 3; i++) {
        args[i].fd = fd;
        check(pthread_create(&threads[i], NULL, concurrent_main, &args[i]) == 0,
              "pthread_create");
    }
    for (i = 0; i < 3; i++) {
        pthread_join(threads[i], NULL);
        check(args[i].rc == 0 && memcmp(args[i].out.verity, verity, 32) == 0,
              "concurrent verity");
    }
    close(fd);
}

/* Cancelling a running parallel call: -ECANCELED, helpers gone (no leak). */
static void *cancel_main(void *arg)
{
    struct cas_progress *progress = arg;

    while (__atomic_load_n(&progress->done, __ATOMIC_RELAXED) == 0)
        usleep(100);
    __atomic_store_n(&progress->cancel, 1, __ATOMIC_RELAXED);
    return NULL;
}

static void check_cancel(void)
{
    static const struct cas_verity_tuning shape = {4, 8, 1, 4};
    struct cas_progress progress = {0, 0};
    struct cas_digests out;
    pthread_t canceller;
    int fd = memfd_create("cas_fuzz_cancel", 0);

    check(fd >= 0 && ftruncate(fd, (off_t)1 << 34) == 0, "sparse memfd");
    check(pthread_create(&canceller, NULL, cancel_main, &progress) == 0,
          "pthread_create");
    check(cas_verity_fd_tuned(fd, &shape, &out, &progress) == -ECANCELED,
          "cancel");
    pthread_join(canceller, NULL);
    check(progress.done < (uint64_t)1 << 34, "cancelled early");
    close(fd);
}

/* GC's sweep of one shard: an old unmarked indexed object goes with its index
 * entry, a young one and a directory stay, a marked one and a stray are never
 * judged; the mark set is sorted without repeats. */
static void check_sweep(void)
{
    char dir[] = "/tmp/cas_fuzz_sweep.XXXXXX", path[256], rest[63], name[4][63];
    struct cas_sweep_entry *out = NULL;
    struct timespec times[2] = {{1000, 0}, {1000, 0}};
    uint8_t sha[32], marked[3 * 32];
    uint64_t scanned;
    size_t n;
    int index_fds[256], shard_fd, i, fd;

    check(mkdtemp(dir) != NULL, "mkdtemp");
    for (i = 0; i < 256; i++)
        index_fds[i] = -1;
    for (i = 0; i < 4; i++) {              /* old, young, sub, marked: in name order */
        memset(name[i], '1' + i, 62);
        name[i][62] = '\0';
    }
    snprintf(path, sizeof(path), "%s/ab", dir);
    check(mkdir(path, 0755) == 0, "mkdir shard");
    shard_fd = open(path, O_RDONLY | O_DIRECTORY);
    snprintf(path, sizeof(path), "%s/11", dir);
    check(mkdir(path, 0755) == 0, "mkdir index");
    index_fds[0x11] = open(path, O_RDONLY | O_DIRECTORY);
    memset(sha, 0x11, sizeof(sha));
    memset(rest, '1', 62);
    rest[62] = '\0';
    fd = openat(shard_fd, name[0], O_WRONLY | O_CREAT, 0444);
    check(fd >= 0 && fsetxattr(fd, "user.cas.sha256", sha, 32, 0) == 0, "xattr");
    check(futimens(fd, times) == 0, "futimens");
    close(fd);
    check(linkat(shard_fd, name[0], index_fds[0x11], rest, 0) == 0, "index link");
    close(openat(shard_fd, name[1], O_WRONLY | O_CREAT, 0444));
    check(mkdirat(shard_fd, name[2], 0755) == 0, "mkdirat");
    close(openat(shard_fd, name[3], O_WRONLY | O_CREAT, 0444));
    close(openat(shard_fd, "README", O_WRONLY | O_CREAT, 0444));
    memset(marked, 0x44, sizeof(marked));  /* ab4444..., twice, after ff4444... */
    marked[0] = 0xff;
    marked[32] = marked[64] = 0xab;
    check(cas_ids_sort_unique(marked, 3) == 2 && marked[0] == 0xab
          && marked[32] == 0xff, "ids sorted without repeats");
    check(cas_sweep_shard(shard_fd, 256, marked, 2, index_fds, 0, 0, &out, &n,
                          &scanned) == -EINVAL && out == NULL, "sweep refuses a bad shard");
    check(cas_sweep_shard(shard_fd, 0xab, marked, 2, index_fds, 2000000000000LL, 0,
                          &out, &n, &scanned) == 0, "sweep");
    check(n == 3 && scanned == 5 && strcmp(out[0].name, name[0]) == 0
          && out[0].status == CAS_SWEEP_REMOVED && out[0].index_unlinked == 1
          && out[1].status == CAS_SWEEP_YOUNG && out[2].status == CAS_SWEEP_NOT_FILE,
          "sweep outcomes");
    cas_sweep_free(out);
    check(faccessat(shard_fd, name[0], F_OK, 0) != 0
          && faccessat(index_fds[0x11], rest, F_OK, 0) != 0
          && faccessat(shard_fd, name[3], F_OK, 0) == 0
          && faccessat(shard_fd, "README", F_OK, 0) == 0, "sweep unlinked");
    unlinkat(shard_fd, name[1], 0);
    unlinkat(shard_fd, name[2], AT_REMOVEDIR);
    unlinkat(shard_fd, name[3], 0);
    unlinkat(shard_fd, "README", 0);
    close(shard_fd);
    close(index_fds[0x11]);
    snprintf(path, sizeof(path), "%s/ab", dir);
    rmdir(path);
    snprintf(path, sizeof(path), "%s/11", dir);
    rmdir(path);
    rmdir(dir);
}

int main(int argc, char **argv)
{
    static const long sweep[] = {0, 1, 4095, 4096, 4097, 524287, 524288,
                                 524289, 3 << 20, 5 * 524288 + 4096,
                                 (9 << 20) + 4097};
    size_t i;
    int a;

    for (a = 1; a < argc; a++) {
        size_t len;
        uint8_t *buf = read_file(argv[a], &len);

        LLVMFuzzerTestOneInput(buf, len);
        free(buf);
    }
    if (argc > 1)
        return 0;
    for (i = 0; i < sizeof(sweep) / sizeof(sweep[0]); i++) {
        uint8_t *buf = malloc(sweep[i] + 1);
        long j;

        check(buf != NULL, "malloc");
        for (j = 0; j < sweep[i]; j++)
            buf[j] = (uint8_t)(j * 2654435761u >> 13);
        check_all(buf, (size_t)sweep[i], (uint32_t)i);
        check_import(buf, (size_t)sweep[i], CAS_COPY_READWRITE);
        check_import(buf, (size_t)sweep[i], CAS_COPY_RANGE);
        if (sweep[i] > 3 << 20)
            check_concurrent(buf, (size_t)sweep[i]);
        free(buf);
    }
    {
        uint8_t *buf = malloc(CAS_BATCH_MAX_FILE);

        check(buf != NULL, "malloc");
        for (i = 0; i < CAS_BATCH_MAX_FILE; i++)
            buf[i] = (uint8_t)(i * 2654435761u >> 13);
        check_batch(buf);
        free(buf);
    }
    check_cancel();
    check_sweep();
    printf("cas_fuzz: all checks passed\n");
    return 0;
}
#endif
