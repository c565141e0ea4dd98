"""The top-level commands, known without importing them: name → the module under
``cas.cli`` that defines it and the first paragraph of its help (what click shortens
into the ``cas --help`` listing and completion).  ``cas.cli.common.cli`` imports a
command's module only when that command is used; ``tests/test_startup.py`` checks this
table against the commands themselves (names, modules, help, hidden)."""

from __future__ import annotations

from typing import NamedTuple


class Entry(NamedTuple):
    module: str
    summary: str = ""
    hidden: bool = False


COMMANDS: dict[str, Entry] = {
    "add": Entry("objects",
        "Add FILES to the store; print each object id (reflinked where possible)."),
    "cat": Entry("objects",
        "Write an object's bytes to stdout (OBJECT: object id or sha256:<OCI digest>)."),
    "checkout": Entry("artifacts",
        "Materialise artifact NAME's tree at DEST (which must not exist), with its modes, mtimes,"
        " xattrs, hard links, FIFOs and devices, and (as root) owners."),
    "completion": Entry("system", "Print the completion script for SHELL."),
    "cron": Entry("system", "An /etc/cron.d file that runs cas verify and cas gc daily."),
    "du": Entry("maintenance",
        "Disk usage: totals, bytes saved by dedup (and reflinks), per-artifact bytes."),
    "export": Entry("artifacts",
        "Export artifact NAME to oci:PATH[:TAG] (Docker schema 2 manifests become OCI ones "
        "there), docker://REF (as cas push), ollama:PATH[/model:tag] (a new model name: a "
        "rename), hf:CACHE, tar:PATH (a reproducible tar layer of its tree: sorted, mtime 0, "
        "uid/gid 0), dump:PATH (its composefs dumpfile, as composefs-info dump prints it) or "
        "composefs:PATH (its composefs image, as mkcomposefs writes it)."),
    "gc": Entry("maintenance",
        "Remove objects no name needs (safe beside running imports and readers)."),
    "import": Entry("artifacts",
        "Import an artifact: a directory, files, oci:PATH[:TAG], ollama:[PATH][/model:tag], "
        "hf:[CACHE][/org/name[@revision]], docker://REF (pulled under the trust policy, as cas "
        "pull does, with the same registry options) or dump:PATH (a composefs dumpfile, whose "
        "objects must be in the store already)."),
    "init": Entry("objects", "Create a new store at PATH."),
    "inspect": Entry("artifacts",
        "Show artifact NAME: its tree with sizes and digests, its blobs and what its stored "
        "signatures claim."),
    "keygen": Entry("signing",
        "Write a new ECDSA P-256 signing key pair: PREFIX.key (encrypted, cosign/sigstore format,"
        " mode 0600) and PREFIX.pub (PEM), as skopeo and cosign read them."),
    "ls": Entry("artifacts",
        "List the named artifacts (DAMAGED: an object it needs is corrupt or missing)."),
    "man": Entry("system",
        "Show the man page of cas COMMAND (on a terminal through man(1), else as roff), or write "
        "all pages with --write DIR."),
    "mkcomposefs": Entry("mount",
        "Write the composefs image of DUMPFILE (composefs-dump(5)) at IMAGE, byte for byte as "
        "mkcomposefs --from-file does; needs no store. Prints the image's fs-verity digest."),
    "mount": Entry("mount",
        "Mount artifact NAME read-only at MOUNTPOINT (EROFS image + overlayfs; root only)."),
    "pull": Entry("registry",
        "Pull REF ([docker://]HOST[:PORT]/REPO[:TAG|@sha256:...]) from a registry and name it."),
    "push": Entry("registry",
        "Push artifact NAME to REF, then its stored signatures (the sha256-<hex>.sig attachment, "
        "as skopeo writes it)."),
    "referrers": Entry("registry",
        "List the artifacts that refer to REF's manifest (referrers API or tag fallback)."),
    "repair": Entry("maintenance",
        "Fix what can be fixed in place (object files with a write bit get mode 0444) and restore"
        " damaged objects from SOURCE (digests checked before they enter the store); exit 6 if "
        "some remain damaged (always, without --from, while any is marked). A registry "
        "(docker://REF) serves the blobs of REF's repository by digest."),
    "rm": Entry("artifacts", "Remove artifact names (their bytes go at the next GC)."),
    "sign": Entry("signing",
        "Sign artifact NAME's manifest (a sigstore signature, kept in the store; cas push "
        "attaches it in the registry as skopeo does)."),
    "stat": Entry("objects",
        "Show the store's summary, or the given objects' size, mode and times."),
    "stats": Entry("maintenance", hidden=True),
    "systemd": Entry("system",
        "systemd timer and service units that run cas verify and cas gc daily."),
    "tag": Entry("artifacts", "Give artifact SOURCE another name TARGET."),
    "umount": Entry("mount", "Unmount an artifact mounted with 'cas mount'."),
    "verify": Entry("maintenance",
        "Check the store: exit 0 clean, 6 problems found (corrupt objects are quarantined and "
        "their artifacts marked damaged), 7 another sweep is running, 3 store unusable."),
}
