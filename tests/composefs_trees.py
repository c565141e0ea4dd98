"""Trees for the composefs tests: named feature trees (golden digests) and random ones."""

from __future__ import annotations

import random
import stat
from typing import Any

from cas.formats.composefs.tree import Hardlink, Inode, directory

T0 = 1_700_000_000


def digest(n: int) -> bytes:
    return bytes((n * 7 + i) % 256 for i in range(32))


def external(size: int, n: int = 0, **attrs: object) -> Inode:
    """A regular file whose bytes are object ``n`` in the store."""
    d = digest(n)
    return Inode(**_defaults(stat.S_IFREG | 0o644, attrs), size=size, digest=d,
                 payload=b"%02x/%s" % (d[0], d[1:].hex().encode()))


def small(data: bytes, **attrs: object) -> Inode:
    return Inode(**_defaults(stat.S_IFREG | 0o644, attrs), size=len(data),
                 content=data or None)


def symlink(target: bytes, **attrs: object) -> Inode:
    return Inode(**_defaults(stat.S_IFLNK | 0o777, attrs), size=len(target), payload=target)


def _defaults(mode: int, attrs: dict[str, object]) -> dict[str, Any]:
    return {"mode": mode, "mtime": T0} | attrs


def tree(**children: Inode | Hardlink) -> Inode:
    root = directory(mtime=T0)
    assert root.children is not None
    root.children.update({k.encode(): v for k, v in children.items()})
    return root


def subdir(entries: dict[bytes, Inode | Hardlink], **attrs: int) -> Inode:
    node = directory(**({"mtime": T0} | attrs))
    node.children = dict(entries)
    return node


def feature_trees() -> dict[str, Inode]:
    """One small tree per composefs feature, each pinned by a golden digest."""
    trees: dict[str, Inode] = {}
    trees["empty"] = tree()
    trees["inline-sizes"] = tree(**{f"f{n}": small(bytes([n % 251]) * n)
                                    for n in (0, 1, 63, 64, 2048, 2049, 4095, 4096, 4097, 5000)})
    trees["external-sizes"] = tree(**{f"e{n}": external(n, n)
                                      for n in (65, 4095, 4096, 4097, 1 << 20, (1 << 32) + 1,
                                                5 << 30, (1 << 43) + 1)})
    deep = subdir({b"leaf": small(b"x")})
    for depth in range(60):
        deep = subdir({b"d%d" % depth: deep})
    trees["deep"] = tree(top=deep)
    trees["wide"] = tree(many=subdir({b"n%05d-%s" % (i, b"x" * (i % 40)): small(b"")
                                      for i in range(3000)}))
    trees["symlinks"] = tree(short=symlink(b"a"), abs=symlink(b"/etc/passwd"),
                             long=symlink(b"t/" * 1500 + b"end"),
                             longest=symlink(b"x" * 4095))
    label = {b"security.selinux": b"system_u:object_r:usr_t:s0\0"}
    trees["xattrs"] = tree(
        a=small(b"1", xattrs=dict(label)), b=small(b"2", xattrs=dict(label)),
        c=external(100, 1, xattrs={b"user.one": b"only-here", **label}),
        o=small(b"", xattrs={b"trusted.overlay.opaque": b"y", b"trusted.overlay.overlay.x": b"z"}),
        odd=small(b"", xattrs={b"system.other": b"1", b"lustre.x": b"2", b"user.=eq": b"a=b"}),
        big=small(b"", xattrs={b"user.big": b"v" * 30000}))
    trees["shared-many"] = tree(**{f"f{i}": small(b"", xattrs={b"user.k%03d" % k: b"v"
                                                               for k in range(140)})
                                   for i in range(3)})
    acl = (b"\x02\x00\x00\x00\x01\x00\x07\x00\xff\xff\xff\xff\x04\x00\x05\x00\xff\xff\xff\xff"
           b"\x10\x00\x05\x00\xff\xff\xff\xff\x20\x00\x05\x00\xff\xff\xff\xff")
    trees["acl"] = tree(d=subdir({b"f": small(b"acl", xattrs={b"system.posix_acl_access": acl})},
                                 ))
    target = external(1000, 3, nlink=3)
    trees["hardlinks"] = tree(a=target, b=Hardlink(b"/a", target),
                              z=subdir({b"c": Hardlink(b"/a", target)}))
    moved = external(1000, 4, nlink=2)
    trees["hardlink-deep-first"] = tree(a=Hardlink(b"/z/f", moved), z=subdir({b"f": moved}))
    trees["devices"] = tree(
        null=Inode(stat.S_IFCHR | 0o666, rdev=(1 << 8) | 3, mtime=T0),
        sda=Inode(stat.S_IFBLK | 0o660, rdev=(8 << 8), gid=6, mtime=T0),
        fifo=Inode(stat.S_IFIFO | 0o600, mtime=T0),
        sock=Inode(stat.S_IFSOCK | 0o755, mtime=T0),
        big=Inode(stat.S_IFCHR | 0o600, rdev=0xFFFFFFFF, mtime=T0))
    trees["whiteouts"] = tree(
        wh=Inode(stat.S_IFCHR | 0o000, mtime=T0),
        d=subdir({b"gone": Inode(stat.S_IFCHR | 0o644, mtime=T0)},
                 ),
        **{"00": small(b"shadows a store dir")})
    trees["modes-owners"] = tree(
        suid=small(b"s", mode=stat.S_IFREG | 0o4755, uid=65535, gid=65536),
        sticky=subdir({}, mode=stat.S_IFDIR | 0o1777),
        none=small(b"", mode=stat.S_IFREG),
        all=small(b"", mode=stat.S_IFREG | 0o7777, uid=(1 << 32) - 1, gid=(1 << 32) - 1))
    trees["mtimes"] = tree(
        nano=small(b"", mtime=T0, mtime_nsec=999_999_999),
        old=small(b"", mtime=-1, mtime_nsec=5),
        older=small(b"", mtime=-(1 << 40)),
        future=small(b"", mtime=1 << 40))
    trees["names"] = tree(**{"caf\u00e9": small(b"utf8"), "A": small(b"A"), "a": small(b"a"),
                             " space": small(b""), "-": small(b"-"), "n" * 255: small(b"")},
                          )
    assert trees["names"].children is not None
    trees["names"].children[b"\xff\xfe-latin1-\xe9"] = small(b"not utf-8")
    trees["names"].children[b"nl\nx\\y=z"] = symlink(b"-")
    return trees


def random_tree(seed: int, files: int = 200) -> Inode:
    """A random tree exercising every feature at once (for live comparisons)."""
    rng = random.Random(seed)
    root = directory(mode=rng.choice([0o755, 0o700]), mtime=T0 + rng.randrange(3),
                     uid=rng.choice([0, 1000]))
    dirs = [(b"", root)]
    regular: list[tuple[bytes, Inode]] = []
    labels = [b"", b"system_u:object_r:etc_t:s0", b"unconfined_u:object_r:user_home_t:s0"]

    def attrs() -> dict[str, object]:
        out: dict[str, object] = {
            "mtime": rng.choice([T0, T0, T0 + 1, -7, T0 + rng.randrange(1 << 20)]),
            "mtime_nsec": rng.choice([0, 0, 1, 999_999_999, rng.randrange(10**9)]),
            "uid": rng.choice([0, 0, 1000, 70000]), "gid": rng.choice([0, 0, 100, 1 << 20])}
        xattrs = {}
        label = rng.choice(labels)
        if label:
            xattrs[b"security.selinux"] = label
        for _ in range(rng.choice([0, 0, 0, 1, 2, 5])):
            xattrs[rng.choice([b"user.", b"trusted.", b"trusted.overlay.", b"security."])
                   + rng.choice([b"a", b"bb", b"opaque", b"x" * rng.randrange(1, 60)])] = \
                rng.choice([b"", b"1", b"y", bytes(rng.randrange(256) for _ in range(20))])
        out["xattrs"] = xattrs
        return out

    for i in range(files):
        parent_path, parent = rng.choice(dirs)
        assert parent.children is not None
        name = rng.choice([b"f%d" % i, b"%02x" % rng.randrange(256), b"n-%d.txt" % i,
                           bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 12)))
                           .replace(b"/", b"_").replace(b"\0", b"_")])
        if name in (b".", b"..") or name in parent.children:
            continue
        kind = rng.choices(["dir", "small", "ext", "link", "dev", "wh", "hard"],
                           [10, 30, 30, 8, 3, 3, 6])[0]
        node: Inode | Hardlink
        if kind == "dir":
            node = directory(mode=rng.choice([0o755, 0o1777, 0o700]), **attrs())  # type: ignore[arg-type]
            dirs.append((parent_path + b"/" + name, node))
        elif kind == "small":
            size = rng.choice([0, 1, 10, 64, 100, 2049, 4096, 4100])
            node = small(bytes(rng.randrange(256) for _ in range(size)), **attrs())
        elif kind == "ext":
            size = rng.choice([65, 4096, 4097, 1 << 20, rng.randrange(65, 1 << 34)])
            node = external(size, rng.randrange(8), **attrs())
        elif kind == "link":
            node = symlink(rng.choice([b"/usr/bin/x", b"../" * rng.randrange(1, 40) + b"t",
                                       b"x" * rng.randrange(1, 4096)]), **attrs())
        elif kind == "dev":
            node = Inode(rng.choice([stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO]) | 0o640,
                         rdev=rng.randrange(1, 1 << 20), **attrs())  # type: ignore[arg-type]
            if stat.S_ISFIFO(node.mode):
                node.rdev = 0
        elif kind == "wh":
            node = Inode(stat.S_IFCHR | 0o000, **attrs())  # type: ignore[arg-type]
        elif regular:
            path, target = rng.choice(regular)
            target.nlink += 1
            node = Hardlink(path, target)
        else:
            continue
        parent.children[name] = node
        if isinstance(node, Inode) and stat.S_ISREG(node.mode):
            regular.append((parent_path + b"/" + name, node))
    return root
