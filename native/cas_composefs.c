/*
 * cas_composefs.c - the composefs EROFS image of a tree, byte for byte what
 * mkcomposefs (composefs 1.0.8+, ec2573a) writes.  The pure-Python twin is
 * cas/formats/composefs/erofs.py, which documents the format; the two must
 * agree on every input (tests/test_composefs_native.py, the fuzz target).
 *
 * Input: the tree as records (see cas_native.h); output: a malloc'd image.
 * Anything the twin refuses is refused here with -EINVAL (the caller then asks
 * the twin, which says why); nothing is trusted about the records.
 */
#include "cas_native.h"

#include <stdlib.h>
#include <string.h>

#define BLOCK 4096u
#define SLOT 32u
#define INODES_START 1152u
#define MAX_CHUNKS 1024u
#define MAX_SHARED 128u
#define XATTR_BUDGET 32767
#define CONTENT_MAX 5000u
#define PAYLOAD_MAX 4095u
#define FILTER_SEED 0x25BBE08Fu
#define NONE 0xFFFFFFFFu

#define S_FMT 0170000u
#define S_REG 0100000u
#define S_DIR 0040000u
#define S_LNK 0120000u
#define S_CHR 0020000u
#define S_BLK 0060000u
#define S_FIFO 0010000u
#define S_SOCK 0140000u

/* ---- an arena: every allocation of one call, freed at once --------------- */

struct arena_chunk { struct arena_chunk *next; size_t used, size; unsigned char data[]; };
struct arena { struct arena_chunk *head; };

static void *arena_alloc(struct arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->head->size - a->head->used < n) {
        size_t size = n > (1u << 16) ? n : (1u << 16);
        struct arena_chunk *c = malloc(sizeof *c + size);
        if (!c)
            return NULL;
        c->next = a->head;
        c->used = 0;
        c->size = size;
        a->head = c;
    }
    void *p = a->head->data + a->head->used;
    a->head->used += n;
    return p;
}

static void arena_free(struct arena *a)
{
    while (a->head) {
        struct arena_chunk *next = a->head->next;
        free(a->head);
        a->head = next;
    }
}

/* ---- the working tree ----------------------------------------------------- */

struct bytes { const uint8_t *p; uint32_t n; };

struct xattr {
    struct bytes key, value;
    int32_t shared;          /* index into the shared table, or -1 */
    uint32_t entry;          /* hash-table slot of (key, value) */
};

struct node;
struct dirent { struct bytes name; struct node *node; int link; };

struct node {
    uint32_t mode, uid, gid, nlink, rdev, nsec;
    int64_t mtime;
    uint64_t size;
    struct bytes payload, content;  /* p == NULL: none */
    const uint8_t *digest;
    struct xattr *xattrs;
    uint32_t n_xattrs, cap_xattrs;
    int64_t budget;
    struct dirent *dirents;
    uint32_t n_dirents, cap_dirents;
    uint32_t ino, blocks, tail, pad, xattr_size, n_shared;
    uint64_t nid, blkaddr;
    int compact, in_tree;
};

static int cmp_bytes(struct bytes a, struct bytes b)
{
    int r = memcmp(a.p, b.p, a.n < b.n ? a.n : b.n);
    return r ? r : (a.n > b.n) - (a.n < b.n);
}

static int eq_cstr(struct bytes a, const char *s)
{
    size_t n = strlen(s);
    return a.n == n && memcmp(a.p, s, n) == 0;
}

static int starts(struct bytes a, const char *s)
{
    size_t n = strlen(s);
    return a.n >= n && memcmp(a.p, s, n) == 0;
}

static struct bytes lit(const char *s)
{
    struct bytes b = { (const uint8_t *)s, (uint32_t)strlen(s) };
    return b;
}

static int grow(struct arena *a, void **items, uint32_t *cap, uint32_t n, size_t size)
{
    if (n < *cap)
        return 0;
    uint32_t new_cap = *cap ? *cap * 2 : 4;
    void *p = arena_alloc(a, new_cap * size);
    if (!p)
        return -ENOMEM;
    if (n)
        memcpy(p, *items, n * size);
    *items = p;
    *cap = new_cap;
    return 0;
}

/* composefs's lcfs_node_set_xattr: replace, with its accounting of the space */
static int set_xattr(struct arena *a, struct node *n, struct bytes key, struct bytes value)
{
    if (key.n == 0 || key.n > 255 || value.n > 0xFFFF)
        return -EINVAL;
    for (uint32_t i = 0; i < n->n_xattrs; i++) {
        if (cmp_bytes(n->xattrs[i].key, key) == 0) {
            uint32_t old = n->xattrs[i].value.n;
            n->xattrs[i] = n->xattrs[--n->n_xattrs];
            n->budget = n->n_xattrs ? n->budget - (7 + key.n + old) : 0;
            break;
        }
    }
    int64_t cost = 7 + (int64_t)key.n + value.n + (n->n_xattrs ? 0 : 12);
    if (n->budget + cost > XATTR_BUDGET)
        return -EINVAL;
    if (grow(a, (void **)&n->xattrs, &n->cap_xattrs, n->n_xattrs, sizeof *n->xattrs))
        return -ENOMEM;
    struct xattr *x = &n->xattrs[n->n_xattrs++];
    x->key = key;
    x->value = value;
    x->shared = -1;
    n->budget += cost;
    return 0;
}

static int add_dirent(struct arena *a, struct node *dir, struct bytes name, struct node *n,
                      int link)
{
    if (grow(a, (void **)&dir->dirents, &dir->cap_dirents, dir->n_dirents,
             sizeof *dir->dirents))
        return -ENOMEM;
    struct dirent *d = &dir->dirents[dir->n_dirents++];
    d->name = name;
    d->node = n;
    d->link = link;
    return 0;
}

/* ---- reading the records ------------------------------------------------- */

struct reader { const uint8_t *p, *end; };

static int take(struct reader *r, size_t n, const uint8_t **out)
{
    if ((size_t)(r->end - r->p) < n)
        return -EINVAL;
    *out = r->p;
    r->p += n;
    return 0;
}

static uint32_t le32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint16_t le16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint64_t le64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static int valid_type(uint32_t mode)
{
    switch (mode & S_FMT) {
    case S_REG: case S_DIR: case S_LNK: case S_CHR: case S_BLK: case S_FIFO: case S_SOCK:
        return 1;
    }
    return 0;
}

struct record { uint32_t parent, link; struct bytes name; struct node *node; };

static int read_records(struct arena *a, const uint8_t *spec, size_t len, uint32_t count,
                        struct record *recs)
{
    struct reader r = { spec, spec + len };
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *h, *p;
        struct record *rec = &recs[i];
        if (take(&r, CAS_CFS_RECORD_HEADER, &h))
            return -EINVAL;
        rec->parent = le32(h);
        rec->link = le32(h + 4);
        uint16_t name_len = le16(h + 48), payload_len = le16(h + 50);
        uint16_t content_len = le16(h + 52), n_xattrs = le16(h + 54);
        if ((i == 0) != (rec->parent == NONE) || (i && rec->parent >= i) ||
            (rec->link != NONE && rec->link >= count) || (i == 0 && rec->link != NONE))
            return -EINVAL;
        if (take(&r, name_len, &p))
            return -EINVAL;
        rec->name.p = p;
        rec->name.n = name_len;
        if (rec->link != NONE) {
            rec->node = NULL;
            continue;
        }
        struct node *n = arena_alloc(a, sizeof *n);
        if (!n)
            return -ENOMEM;
        memset(n, 0, sizeof *n);
        rec->node = n;
        n->mode = le32(h + 8);
        n->uid = le32(h + 12);
        n->gid = le32(h + 16);
        n->nlink = le32(h + 20);
        n->rdev = le32(h + 24);
        n->nsec = le32(h + 28);
        n->mtime = (int64_t)le64(h + 32);
        n->size = le64(h + 40);
        if (!valid_type(n->mode) || n->mode > 0xFFFF || (i == 0 && (n->mode & S_FMT) != S_DIR))
            return -EINVAL;
        if (payload_len != 0xFFFF) {
            if (take(&r, payload_len, &p))
                return -EINVAL;
            n->payload.p = p;
            n->payload.n = payload_len;
        }
        if (content_len != 0xFFFF) {
            if (take(&r, content_len, &p))
                return -EINVAL;
            n->content.p = p;
            n->content.n = content_len;
        }
        if (h[56] && take(&r, 32, &n->digest))
            return -EINVAL;
        uint32_t kind = n->mode & S_FMT;
        if (n->content.p && (kind != S_REG || n->content.n != n->size ||
                             n->content.n > CONTENT_MAX))
            return -EINVAL;
        if (n->payload.p && (n->payload.n > PAYLOAD_MAX || memchr(n->payload.p, 0, n->payload.n)))
            return -EINVAL;
        if (kind == S_LNK) {
            if (!n->payload.p || n->payload.n == 0)
                return -EINVAL;
            n->size = n->payload.n;
        }
        for (uint32_t k = 0; k < n_xattrs; k++) {
            const uint8_t *kv, *key, *value;
            if (take(&r, 4, &kv) || take(&r, le16(kv), &key) || take(&r, le16(kv + 2), &value))
                return -EINVAL;
            struct bytes kb = { key, le16(kv) }, vb = { value, le16(kv + 2) };
            if (kb.n == 0 || kb.n > 255 || memchr(kb.p, 0, kb.n))
                return -EINVAL;
            n->budget += 7 + kb.n + vb.n + (n->n_xattrs ? 0 : 12);
            if (grow(a, (void **)&n->xattrs, &n->cap_xattrs, n->n_xattrs, sizeof *n->xattrs))
                return -ENOMEM;
            struct xattr *x = &n->xattrs[n->n_xattrs++];
            x->key = kb;
            x->value = vb;
            x->shared = -1;
        }
        if (n->budget > XATTR_BUDGET)
            return -EINVAL;
    }
    return r.p == r.end ? 0 : -EINVAL;
}

/* ---- 1. rewrite ----------------------------------------------------------- */

static int overlay_xattrs(struct arena *a, struct node *n, struct node *parent, int version)
{
    static const char overlay[] = "trusted.overlay.", escaped[] = "trusted.overlay.overlay.";
    for (uint32_t i = 0; i < n->n_xattrs; i++) {
        struct bytes k = n->xattrs[i].key;
        if (!starts(k, overlay))
            continue;
        uint32_t rest = k.n - (sizeof overlay - 1);
        uint8_t *name = arena_alloc(a, sizeof escaped - 1 + rest);
        if (!name)
            return -ENOMEM;
        memcpy(name, escaped, sizeof escaped - 1);
        memcpy(name + sizeof escaped - 1, k.p + sizeof overlay - 1, rest);
        n->xattrs[i].key.p = name;
        n->xattrs[i].key.n = sizeof escaped - 1 + rest;
    }
    uint32_t kind = n->mode & S_FMT;
    int rc = 0;
    if (kind == S_REG && n->size > 0 && !n->content.p) {
        struct bytes metacopy = { NULL, 0 };
        if (n->digest) {
            uint8_t *v = arena_alloc(a, 36);
            if (!v)
                return -ENOMEM;
            memcpy(v, "\x00\x24\x00\x01", 4);
            memcpy(v + 4, n->digest, 32);
            metacopy.p = v;
            metacopy.n = 36;
        } else {
            metacopy.p = (const uint8_t *)"";
        }
        if ((rc = set_xattr(a, n, lit("trusted.overlay.metacopy"), metacopy)))
            return rc;
        if (n->payload.p && n->payload.n) {
            uint8_t *v = arena_alloc(a, n->payload.n + 1);
            if (!v)
                return -ENOMEM;
            v[0] = '/';
            memcpy(v + 1, n->payload.p, n->payload.n);
            struct bytes redirect = { v, n->payload.n + 1 };
            if ((rc = set_xattr(a, n, lit("trusted.overlay.redirect"), redirect)))
                return rc;
        }
    } else if (kind == S_CHR && n->rdev == 0) {
        struct bytes empty = lit(""), x = lit("x");
        n->size = 0;
        n->mode = S_REG | (n->mode & ~S_FMT);
        if ((rc = set_xattr(a, n, lit("trusted.overlay.overlay.whiteout"), empty)) ||
            (rc = set_xattr(a, n, lit("user.overlay.whiteout"), empty)) ||
            (rc = set_xattr(a, parent, lit("trusted.overlay.overlay.whiteouts"), empty)) ||
            (rc = set_xattr(a, parent, lit("user.overlay.whiteouts"), empty)))
            return rc;
        if (version >= 1 &&
            ((rc = set_xattr(a, parent, lit("trusted.overlay.overlay.opaque"), x)) ||
             (rc = set_xattr(a, parent, lit("user.overlay.opaque"), x))))
            return rc;
    }
    return 0;
}

static const char HEX[] = "0123456789abcdef";
static const char WHITEOUT_NAMES[] =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
    "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
    "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
    "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

static int root_whiteouts(struct arena *a, struct node *root)
{
    int rc = set_xattr(a, root, lit("trusted.overlay.opaque"), lit("y"));
    if (rc)
        return rc;
    struct bytes label = { NULL, 0 };
    for (uint32_t i = 0; i < root->n_xattrs; i++)
        if (eq_cstr(root->xattrs[i].key, "security.selinux"))
            label = root->xattrs[i].value;
    uint8_t present[256] = { 0 };
    for (uint32_t i = 0; i < root->n_dirents; i++) {
        struct bytes nm = root->dirents[i].name;
        const char *h0, *h1;
        if (nm.n == 2 && (h0 = memchr(HEX, nm.p[0], 16)) && (h1 = memchr(HEX, nm.p[1], 16)))
            present[(h0 - HEX) * 16 + (h1 - HEX)] = 1;
    }
    for (uint32_t i = 0; i < 256; i++) {
        if (present[i])
            continue;
        struct node *w = arena_alloc(a, sizeof *w);
        if (!w)
            return -ENOMEM;
        memset(w, 0, sizeof *w);
        w->mode = S_CHR | 0644;
        w->uid = root->uid;
        w->gid = root->gid;
        w->nlink = 1;
        w->mtime = root->mtime;
        w->nsec = root->nsec;
        if (label.p && (rc = set_xattr(a, w, lit("security.selinux"), label)))
            return rc;
        struct bytes name = { (const uint8_t *)WHITEOUT_NAMES + 2 * i, 2 };
        if ((rc = add_dirent(a, root, name, w, 0)))
            return rc;
    }
    return 0;
}

/* ---- 2. order ------------------------------------------------------------- */

static int cmp_dirent(const void *a, const void *b)
{
    return cmp_bytes(((const struct dirent *)a)->name, ((const struct dirent *)b)->name);
}

static int cmp_xattr(const void *a, const void *b)
{
    return cmp_bytes(((const struct xattr *)a)->key, ((const struct xattr *)b)->key);
}

/* ---- 3. shared xattrs: a hash table of (key, value) ----------------------- */

struct entry { struct bytes key, value; uint32_t count; int32_t shared; uint32_t offset; };
struct table { struct entry *slots; uint32_t mask, used; };

static uint64_t hash_kv(struct bytes k, struct bytes v)
{
    uint64_t h = 1469598103934665603ull;
    for (uint32_t i = 0; i < k.n; i++)
        h = (h ^ k.p[i]) * 1099511628211ull;
    h = (h ^ 0x100) * 1099511628211ull;
    for (uint32_t i = 0; i < v.n; i++)
        h = (h ^ v.p[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static uint32_t table_slot(struct table *t, struct bytes k, struct bytes v)
{
    uint32_t i = (uint32_t)hash_kv(k, v) & t->mask;
    for (;;) {
        struct entry *e = &t->slots[i];
        if (!e->key.p) {
            e->key = k;
            e->value = v;
            t->used++;
            return i;
        }
        if (cmp_bytes(e->key, k) == 0 && cmp_bytes(e->value, v) == 0)
            return i;
        i = (i + 1) & t->mask;
    }
}

static int cmp_shared_desc(const void *a, const void *b)
{
    const struct entry *x = *(const struct entry *const *)a, *y = *(const struct entry *const *)b;
    int r = cmp_bytes(y->key, x->key);
    if (r)
        return r;
    if (x->value.n != y->value.n)
        return x->value.n < y->value.n ? 1 : -1;
    return memcmp(y->value.p, x->value.p, x->value.n);
}

/* ---- EROFS pieces --------------------------------------------------------- */

static const struct { const char *prefix; uint8_t index; } PREFIXES[] = {
    { "user.", 1 }, { "system.posix_acl_access", 2 }, { "system.posix_acl_default", 3 },
    { "trusted.", 4 }, { "security.", 6 },
};

static uint8_t split_name(struct bytes name, struct bytes *suffix)
{
    for (size_t i = 0; i < sizeof PREFIXES / sizeof PREFIXES[0]; i++) {
        if (starts(name, PREFIXES[i].prefix)) {
            size_t n = strlen(PREFIXES[i].prefix);
            suffix->p = name.p + n;
            suffix->n = name.n - (uint32_t)n;
            return PREFIXES[i].index;
        }
    }
    *suffix = name;
    return 0;
}

static uint32_t entry_size(struct bytes key, struct bytes value)
{
    struct bytes suffix;
    split_name(key, &suffix);
    return (4 + suffix.n + value.n + 3) & ~3u;
}

static uint8_t *put_entry(uint8_t *out, struct bytes key, struct bytes value)
{
    struct bytes suffix;
    uint8_t index = split_name(key, &suffix);
    out[0] = (uint8_t)suffix.n;
    out[1] = index;
    out[2] = value.n & 0xFF;
    out[3] = value.n >> 8;
    memcpy(out + 4, suffix.p, suffix.n);
    memcpy(out + 4 + suffix.n, value.p, value.n);
    return out + entry_size(key, value);
}

static uint32_t rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

static uint32_t xxh32(const uint8_t *p, size_t len, uint32_t seed)
{
    const uint32_t P1 = 2654435761u, P2 = 2246822519u, P3 = 3266489917u, P4 = 668265263u,
                   P5 = 374761393u;
    const uint8_t *end = p + len;
    uint32_t h;
    if (len >= 16) {
        uint32_t v[4] = { seed + P1 + P2, seed + P2, seed, seed - P1 };
        while (p <= end - 16) {
            for (int i = 0; i < 4; i++, p += 4)
                v[i] = rotl32(v[i] + le32(p) * P2, 13) * P1;
        }
        h = rotl32(v[0], 1) + rotl32(v[1], 7) + rotl32(v[2], 12) + rotl32(v[3], 18);
    } else {
        h = seed + P5;
    }
    h += (uint32_t)len;
    for (; p + 4 <= end; p += 4)
        h = rotl32(h + le32(p) * P3, 17) * P4;
    for (; p < end; p++)
        h = rotl32(h + *p * P5, 11) * P1;
    h ^= h >> 15;
    h *= P2;
    h ^= h >> 13;
    h *= P3;
    return h ^ (h >> 16);
}

static uint64_t round_up(uint64_t v, uint64_t to) { return (v + to - 1) / to * to; }

static void chunking(uint64_t size, uint32_t *bits, uint64_t *count)
{
    uint32_t b = 12;
    while (b < 64 && (((size - 1) >> b) != 0))
        b++;
    if (size <= 1)
        b = 12;
    if (b > 43)
        b = 43;
    *bits = b;
    *count = (size >> b) + ((size & ((1ull << b) - 1)) != 0);
}

static uint64_t inode_size(const struct node *n)
{
    uint32_t kind = n->mode & S_FMT;
    if (kind == S_DIR)
        return (uint64_t)n->blocks * BLOCK + n->tail;
    if (kind == S_LNK && !n->blocks)
        return n->tail;
    return kind == S_REG || kind == S_LNK ? n->size : 0;
}

static int data_shape(struct node *n)
{
    uint32_t kind = n->mode & S_FMT;
    if (kind == S_DIR) {
        uint32_t used = 0;
        for (uint32_t i = 0; i < n->n_dirents; i++) {
            uint32_t len = 12 + n->dirents[i].name.n;
            if (used + len > BLOCK) {
                n->blocks++;
                used = 0;
            }
            used += len;
        }
        n->tail = used;
        if (used > BLOCK / 2) {
            n->blocks++;
            n->tail = 0;
        }
    } else if (kind == S_LNK) {
        n->tail = (uint32_t)n->size;
    } else if (kind == S_REG && n->size && n->content.p) {
        n->blocks = (uint32_t)(n->size / BLOCK);
        n->tail = n->size % BLOCK;
        if (n->tail > BLOCK / 2) {
            n->blocks++;
            n->tail = 0;
        }
    } else if (kind == S_REG && n->size) {
        uint32_t bits;
        uint64_t count;
        chunking(n->size, &bits, &count);
        if (count > MAX_CHUNKS)
            return -EINVAL;
        n->tail = (uint32_t)count * 4;
    }
    return 0;
}

static uint64_t tail_padding(struct node *n, uint64_t pos, uint64_t head)
{
    if ((n->mode & S_FMT) == S_LNK) {
        uint64_t total = head + n->tail;
        if (total >= BLOCK) {
            n->blocks++;
            n->tail = 0;
        }
        if (pos / BLOCK != (pos + total - 1) / BLOCK)
            return round_up(pos, BLOCK) - pos;
        return 0;
    }
    uint64_t room = BLOCK - (pos + head) % BLOCK;
    if (room >= n->tail)
        return 0;
    uint64_t pad = round_up(room, SLOT);
    if (n->tail <= BLOCK - (pos + head + pad) % BLOCK)
        return pad;
    n->blocks++;
    n->tail = 0;
    return round_up(pos, BLOCK) - pos;
}

static uint8_t file_type(uint32_t mode)
{
    switch (mode & S_FMT) {
    case S_REG: return 1;
    case S_DIR: return 2;
    case S_CHR: return 3;
    case S_BLK: return 4;
    case S_FIFO: return 5;
    case S_SOCK: return 6;
    case S_LNK: return 7;
    }
    return 0;
}

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* Writes one group of dirents (a block or the tail) at out. */
static void put_dirents(uint8_t *out, const struct dirent *d, uint32_t count)
{
    uint32_t nameoff = 12 * count;
    for (uint32_t i = 0; i < count; i++) {
        put64(out + 12 * i, d[i].node->nid);
        put16(out + 12 * i + 8, (uint16_t)nameoff);
        out[12 * i + 10] = file_type(d[i].node->mode);
        out[12 * i + 11] = 0;
        memcpy(out + nameoff, d[i].name.p, d[i].name.n);
        nameoff += d[i].name.n;
    }
}

/* Writes a directory's block groups: whole blocks at data, the tail (if any) at tail. */
static void put_directory(const struct node *n, uint8_t *data, uint8_t *tail)
{
    uint32_t first = 0, used = 0, group = 0;
    for (uint32_t i = 0; i <= n->n_dirents; i++) {
        int last = i == n->n_dirents;
        if (last || used + 12 + n->dirents[i].name.n > BLOCK) {
            uint8_t *out = group < n->blocks ? data + (uint64_t)group * BLOCK : tail;
            if (out)
                put_dirents(out, n->dirents + first, i - first);
            group++;
            first = i;
            used = 0;
        }
        if (!last)
            used += 12 + n->dirents[i].name.n;
    }
}

/* ---- the whole image ------------------------------------------------------ */

int cas_cfs_write(const uint8_t *spec, size_t spec_len, uint32_t count, int version,
                  int max_version, uint8_t **image, size_t *image_len)
{
    struct arena a = { NULL };
    int rc = -ENOMEM;
    struct record *recs = NULL;
    struct node **order = NULL;
    struct entry **shared = NULL;
    struct table t = { NULL, 0, 0 };
    uint8_t *out = NULL;

    *image = NULL;
    *image_len = 0;
    if (count == 0 || version < 0 || version > 1 || max_version < 0 || max_version > 1)
        return -EINVAL;
    recs = calloc(count, sizeof *recs);
    if (!recs)
        goto done;
    if ((rc = read_records(&a, spec, spec_len, count, recs)))
        goto done;
    rc = -EINVAL;
    for (uint32_t i = 1; i < count; i++) {
        struct node *parent = recs[recs[i].parent].node;
        struct node *target = recs[i].node;
        struct bytes name = recs[i].name;
        if (!parent || (parent->mode & S_FMT) != S_DIR || name.n == 0 || name.n > 255 ||
            memchr(name.p, '/', name.n) || memchr(name.p, 0, name.n) ||
            eq_cstr(name, ".") || eq_cstr(name, ".."))
            goto done;
        if (recs[i].link != NONE) {
            target = recs[recs[i].link].node;
            if (!target || (target->mode & S_FMT) == S_DIR)
                goto done;
        } else if (version < 1 && max_version >= 1 && (target->mode & S_FMT) == S_CHR &&
                   target->rdev == 0) {
            version = 1;
        }
        if ((rc = add_dirent(&a, parent, recs[i].name, target, recs[i].link != NONE)))
            goto done;
        rc = -EINVAL;
    }
    /* 1. rewrite, parents first (records are), then . and .. */
    for (uint32_t i = 0; i < count; i++) {
        struct node *n = recs[i].node;
        if (!n)
            continue;
        struct node *parent = i ? recs[recs[i].parent].node : n;
        if ((rc = overlay_xattrs(&a, n, parent, version)))
            goto done;
        if ((n->mode & S_FMT) == S_DIR &&
            ((rc = add_dirent(&a, n, lit("."), n, 1)) ||
             (rc = add_dirent(&a, n, lit(".."), parent, 1))))
            goto done;
    }
    struct node *root = recs[0].node;
    if ((rc = root_whiteouts(&a, root)))
        goto done;
    /* 2. breadth first */
    uint32_t n_nodes = 0, cap = count + 256;
    rc = -ENOMEM;
    order = malloc(cap * sizeof *order);
    if (!order)
        goto done;
    order[n_nodes++] = root;
    int64_t min_sec = root->mtime;
    uint32_t min_nsec = root->nsec;
    int has_acl = 0;
    uint64_t n_items = 0;
    for (uint32_t q = 0; q < n_nodes; q++) {
        struct node *n = order[q];
        n->ino = q;
        qsort(n->xattrs, n->n_xattrs, sizeof *n->xattrs, cmp_xattr);
        n_items += n->n_xattrs;
        for (uint32_t i = 0; i < n->n_xattrs; i++) {
            if (i && cmp_bytes(n->xattrs[i].key, n->xattrs[i - 1].key) == 0) {
                rc = -EINVAL;  /* a name twice in the records */
                goto done;
            }
            if (eq_cstr(n->xattrs[i].key, "system.posix_acl_access") ||
                eq_cstr(n->xattrs[i].key, "system.posix_acl_default"))
                has_acl = 1;
        }
        if (n->mtime < min_sec || (n->mtime == min_sec && n->nsec < min_nsec)) {
            min_sec = n->mtime;
            min_nsec = n->nsec;
        }
        if ((n->mode & S_FMT) != S_DIR)
            continue;
        qsort(n->dirents, n->n_dirents, sizeof *n->dirents, cmp_dirent);
        n->nlink = 2;
        for (uint32_t i = 0; i < n->n_dirents; i++) {
            struct dirent *d = &n->dirents[i];
            if (i && cmp_bytes(d->name, n->dirents[i - 1].name) == 0) {
                rc = -EINVAL;
                goto done;
            }
            if (d->link)
                continue;
            if (d->node->in_tree || n_nodes == cap) {
                rc = -EINVAL;
                goto done;
            }
            d->node->in_tree = 1;
            if ((d->node->mode & S_FMT) == S_DIR)
                n->nlink++;
            order[n_nodes++] = d->node;
        }
    }
    /* 3. shared xattrs */
    uint32_t size = 16;
    while (size < 2 * n_items + 16)
        size *= 2;
    t.slots = calloc(size, sizeof *t.slots);
    if (!t.slots)
        goto done;
    t.mask = size - 1;
    for (uint32_t q = 0; q < n_nodes; q++) {
        struct node *n = order[q];
        for (uint32_t i = 0; i < n->n_xattrs; i++) {
            struct xattr *x = &n->xattrs[i];
            x->entry = table_slot(&t, x->key, x->value);
            t.slots[x->entry].count++;
        }
    }
    shared = malloc((t.used + 1) * sizeof *shared);
    if (!shared)
        goto done;
    uint32_t n_shared = 0;
    for (uint32_t i = 0; i < size; i++)
        if (t.slots[i].key.p && t.slots[i].count > 1)
            shared[n_shared++] = &t.slots[i];
    qsort(shared, n_shared, sizeof *shared, cmp_shared_desc);
    uint64_t shared_size = 0;
    for (uint32_t i = 0; i < n_shared; i++) {
        shared[i]->offset = (uint32_t)shared_size;
        shared_size += entry_size(shared[i]->key, shared[i]->value);
    }
    /* 4. placement */
    rc = -EINVAL;
    uint64_t pos = INODES_START, data_blocks = 0;
    for (uint32_t q = 0; q < n_nodes; q++) {
        struct node *n = order[q];
        uint32_t unshared = 0;
        for (uint32_t i = 0; i < n->n_xattrs; i++) {
            struct xattr *x = &n->xattrs[i];
            if (t.slots[x->entry].count > 1 && n->n_shared < MAX_SHARED) {
                x->shared = 1;
                n->n_shared++;
            } else {
                unshared += entry_size(x->key, x->value);
            }
        }
        n->xattr_size = n->n_xattrs ? 12 + 4 * n->n_shared + unshared : 0;
        if (n->xattr_size && (n->xattr_size - 12) / 4 + 1 > 0xFFFF)
            goto done;
        if (data_shape(n))
            goto done;
        n->compact = n->mtime == min_sec && n->nsec == min_nsec && n->nlink <= 0xFFFF &&
                     n->uid <= 0xFFFF && n->gid <= 0xFFFF && inode_size(n) <= 0xFFFFFFFFu;
        uint64_t head = (n->compact ? 32 : 64) + n->xattr_size;
        uint64_t aligned = round_up(pos, SLOT);
        uint64_t pad = tail_padding(n, aligned, head);
        n->pad = (uint32_t)(aligned - pos + pad);
        n->nid = (aligned + pad) / SLOT;
        pos = aligned + pad + head + n->tail;
        data_blocks += n->blocks;
    }
    uint64_t inodes_end = round_up(pos, SLOT);
    uint64_t data_start = round_up(inodes_end + shared_size, BLOCK);
    uint64_t total = data_start + data_blocks * BLOCK;
    if (total / BLOCK > 0xFFFFFFFFu)
        goto done;
    /* 5. bytes */
    rc = -ENOMEM;
    out = calloc(1, total);
    if (!out)
        goto done;
    put32(out, 0xD078629Au);
    put32(out + 4, 1);
    put32(out + 8, has_acl ? 1 : 0);
    put32(out + 12, (uint32_t)version);
    uint8_t *sb = out + 1024;
    put32(sb, 0xE0F5E1E2u);
    put32(sb + 8, 0x6);
    sb[12] = 12;
    put16(sb + 14, (uint16_t)root->nid);
    put64(sb + 16, n_nodes);
    put64(sb + 24, (uint64_t)min_sec);
    put32(sb + 32, min_nsec);
    put32(sb + 36, (uint32_t)(total / BLOCK));
    put32(sb + 44, (uint32_t)(inodes_end / BLOCK));
    uint64_t next_block = data_start / BLOCK, cursor = INODES_START;
    uint32_t shared_base = inodes_end % BLOCK;
    for (uint32_t q = 0; q < n_nodes; q++) {
        struct node *n = order[q];
        uint32_t kind = n->mode & S_FMT;
        uint8_t *p = out + cursor + n->pad;
        n->blkaddr = 0;
        if (n->blocks) {
            n->blkaddr = next_block;
            next_block += n->blocks;
        }
        uint32_t layout = n->tail ? 2 : 0, i_u = (uint32_t)n->blkaddr;
        if (kind == S_CHR || kind == S_BLK) {
            i_u = n->rdev;
        } else if (kind == S_REG && n->size && !n->content.p) {
            uint32_t bits;
            uint64_t chunks;
            chunking(n->size, &bits, &chunks);
            layout = 4;
            i_u = (i_u & 0xFFFF0000u) | (bits - 12);
        }
        uint16_t icount = n->n_xattrs ? (uint16_t)((n->xattr_size - 12) / 4 + 1) : 0;
        put16(p + 2, icount);
        put16(p + 4, (uint16_t)n->mode);
        if (n->compact) {
            put16(p, (uint16_t)(layout << 1));
            put16(p + 6, (uint16_t)n->nlink);
            put32(p + 8, (uint32_t)inode_size(n));
            put32(p + 16, i_u);
            put32(p + 20, n->ino);
            put16(p + 24, (uint16_t)n->uid);
            put16(p + 26, (uint16_t)n->gid);
            p += 32;
        } else {
            put16(p, (uint16_t)(layout << 1 | 1));
            put64(p + 8, inode_size(n));
            put32(p + 16, i_u);
            put32(p + 20, n->ino);
            put32(p + 24, n->uid);
            put32(p + 28, n->gid);
            put64(p + 32, (uint64_t)n->mtime);
            put32(p + 40, n->nsec);
            put32(p + 44, n->nlink);
            p += 64;
        }
        if (n->n_xattrs) {
            uint32_t filter = 0;
            for (uint32_t i = 0; i < n->n_xattrs; i++) {
                struct bytes suffix;
                uint8_t index = split_name(n->xattrs[i].key, &suffix);
                filter |= 1u << (xxh32(suffix.p, suffix.n, FILTER_SEED + index) & 31);
            }
            put32(p, ~filter);
            p[4] = (uint8_t)n->n_shared;
            p += 12;
            for (uint32_t i = 0; i < n->n_xattrs; i++) {
                if (n->xattrs[i].shared > 0) {
                    put32(p, (shared_base + t.slots[n->xattrs[i].entry].offset) / 4);
                    p += 4;
                }
            }
            for (uint32_t i = 0; i < n->n_xattrs; i++)
                if (n->xattrs[i].shared < 0)
                    p = put_entry(p, n->xattrs[i].key, n->xattrs[i].value);
        }
        uint8_t *data = out + n->blkaddr * BLOCK;
        if (kind == S_DIR) {
            put_directory(n, data, n->tail ? p : NULL);
        } else if (kind == S_LNK) {
            memcpy(n->blocks ? data : p, n->payload.p, n->payload.n);
        } else if (kind == S_REG && n->content.p) {
            if (n->blocks)
                memcpy(data, n->content.p, n->size < BLOCK ? n->size : BLOCK);
            if (n->tail)
                memcpy(p, n->content.p + n->size - n->tail, n->tail);
        } else if (kind == S_REG && n->size) {
            memset(n->blocks ? data : p, 0xFF, n->blocks ? BLOCK : n->tail);
        }
        cursor += n->pad + (n->compact ? 32 : 64) + n->xattr_size + n->tail;
    }
    uint8_t *area = out + inodes_end;
    for (uint32_t i = 0; i < n_shared; i++)
        area = put_entry(area, shared[i]->key, shared[i]->value);
    *image = out;
    *image_len = total;
    out = NULL;
    rc = 0;
done:
    free(out);
    free(shared);
    free(t.slots);
    free(order);
    free(recs);
    arena_free(&a);
    return rc;
}

void cas_cfs_free(uint8_t *image)
{
    free(image);
}
