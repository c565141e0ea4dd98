"""cffi API-mode (out-of-line) builder for ``cas._native``.

Used by setuptools through ``cffi_modules`` in setup.py; paths are
relative to the repository root, which is the working directory of a build.
API-mode calls release the GIL for their whole duration.

Set ``CAS_NATIVE_WERROR=0`` to build with a compiler that warns where gcc 12
does not.
"""

import os

from cffi import FFI

CDEF = """
struct cas_digests { uint8_t verity[32]; uint8_t sha256[32]; uint64_t size; };
struct cas_progress { volatile uint64_t done; volatile int cancel; };

typedef struct cas_hasher cas_hasher;
cas_hasher *cas_hasher_new(void);
int cas_hasher_update(cas_hasher *, const uint8_t *, size_t);
int cas_hasher_final(cas_hasher *, struct cas_digests *);
void cas_hasher_free(cas_hasher *);
int cas_hash_buffer(const uint8_t *, size_t, struct cas_digests *);

#define CAS_HASH_SHA256 ...
int cas_hash_fd(int, unsigned, struct cas_digests *, struct cas_progress *);
int cas_verity_fd(int, unsigned, struct cas_digests *, struct cas_progress *);

#define CAS_COPY_REFLINK ...
#define CAS_COPY_RANGE ...
#define CAS_COPY_READWRITE ...
int cas_import_fd(int, int, unsigned, struct cas_digests *, unsigned *,
                  struct cas_progress *);
int cas_copy_fd(int, int, unsigned, uint64_t *, unsigned *, struct cas_progress *);

typedef struct cas_pipeline cas_filler;
#define CAS_FILLER_WRITEBACK ...
cas_filler *cas_filler_new(int, unsigned, struct cas_progress *);
int cas_filler_mark(cas_filler *, uint64_t);
int cas_filler_finish(cas_filler *, int, struct cas_digests *);

#define CAS_BATCH_MAX_FILE ...
#define CAS_BATCH_REFLINK ...
#define CAS_BATCH_SEAL ...
#define CAS_BATCH_NO_REFLINK ...
enum { CAS_BATCH_OK, CAS_BATCH_OPEN, CAS_BATCH_TYPE, CAS_BATCH_CHANGED, CAS_BATCH_READ,
       CAS_BATCH_STORE };
struct cas_batch_file { const char *name; uint64_t size; int64_t mtime_ns, ctime_ns;
                        struct cas_digests digests;
                        unsigned method; int stage; uint32_t mode; int changed;
                        int64_t was, now; };
int cas_import_batch(int, int, const char *, struct cas_batch_file *, size_t, unsigned,
                     int64_t, unsigned *, size_t *, struct cas_progress *);

#define CAS_CFS_RECORD_HEADER ...
int cas_cfs_write(const uint8_t *, size_t, uint32_t, int, int, uint8_t **, size_t *);
void cas_cfs_free(uint8_t *);
#define CAS_SWEEP_DRY_RUN ...
enum { CAS_SWEEP_GONE, CAS_SWEEP_NOT_FILE, CAS_SWEEP_YOUNG, CAS_SWEEP_REMOVED };
struct cas_sweep_entry { char name[63]; uint8_t status; uint8_t index_unlinked;
                         uint64_t size; uint64_t links; };
size_t cas_ids_sort_unique(uint8_t *, size_t);
int cas_sweep_shard(int, unsigned, const uint8_t *, size_t, const int *, int64_t, unsigned,
                    struct cas_sweep_entry **, size_t *, uint64_t *);
void cas_sweep_free(struct cas_sweep_entry *);
"""

CFLAGS = ["-O3", "-std=gnu11", "-Wall", "-Wextra", "-fvisibility=hidden"]
if os.environ.get("CAS_NATIVE_WERROR", "1") != "0":
    CFLAGS.append("-Werror")

def make_builder(root: str = "") -> FFI:
    """The builder; `root` prefixes the source paths (empty: relative to cwd)."""
    builder = FFI()
    builder.cdef(CDEF)
    native = os.path.join(root, "native")
    builder.set_source(
        "cas._native",
        '#include "cas_native.h"',
        sources=[os.path.join(native, name) for name in
                 ("cas_hash.c", "cas_copy.c", "cas_batch.c", "cas_verity.c", "cas_sweep.c",
                  "cas_composefs.c")],
        include_dirs=[native],
        depends=[os.path.join(native, "cas_native.h")],
        libraries=["crypto", "pthread"],
        extra_compile_args=CFLAGS,
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    # Developer shortcut: `python native/build_ffi.py` builds cas/_native*.so in
    # place. It compiles in a scratch directory because distutils would read
    # the project's pyproject.toml from the working directory.
    import shutil
    import tempfile

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        built = make_builder(repo).compile(tmpdir=tmp, verbose=True)
        shutil.copy(built, os.path.join(repo, "cas", os.path.basename(built)))
