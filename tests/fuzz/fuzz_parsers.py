"""Coverage-guided fuzzing (atheris) of every cas parser of untrusted bytes.

    python tests/fuzz/fuzz_parsers.py TARGET [libFuzzer flags, e.g. -runs=100000 CORPUS_DIR]

TARGET is one of: image, tar, tar-gzip, tar-split, ollama-manifest, oci-document, name,
policy, signature, docker-ref, key, composefs-dump, name-file, sweep-state, damage-mark,
challenge, reference, printable.  A parser may only ever refuse its input with a
``cas.errors.CasError``; any other exception (or a crash) is a finding.
tests/test_fuzz.py runs each target briefly.
"""

from __future__ import annotations

import io
import sys
import tempfile
from collections.abc import Callable

import atheris

with atheris.instrument_imports():
    from cas import errors
    from cas.core import damage, image, names, strictjson
    from cas.core.store import Store
    from cas.formats import oci, ollama, tarlayer
    from cas.formats.composefs import dumpfile, erofs, native
    from cas.integrity import dockerref, keys, policy, signature, verify_state
    from cas.transport import auth, registry

_store: Store | None = None


def store() -> Store:
    global _store
    if _store is None:
        _store = Store.init(tempfile.mkdtemp() + "/store", fsync=False)
    return _store


def tar(data: bytes, compression: str = "") -> None:
    tarlayer.unpack(store(), io.BytesIO(data), compression=compression, limit=1 << 24,
                    tree=tarlayer.Tree(), what="fuzz")


def tar_split(data: bytes) -> None:
    oid = store().add_bytes(data).object_id
    for _ in tarlayer.tar_chunks(store(), oid):
        pass


def oci_document(data: bytes) -> None:
    doc = oci._document(data, "fuzz", None)
    oci._descriptors(doc, "layers", "fuzz")


def signature_record(data: bytes) -> None:
    """A stored record, then the payload it carries (as a policy would read both)."""
    signature.parse_payload(signature.Signature.from_record(data).payload)


def composefs_dump(data: bytes) -> None:
    """Parse; whatever parses writes back to text that parses to the same tree; the
    native writer and its Python twin agree (the same image, or both refuse); the
    dump composefs-info would print of the image parses too."""
    tree = dumpfile.parse(data)
    text = dumpfile.write(tree)
    assert dumpfile.write(dumpfile.parse(text)) == text
    try:
        image: bytes | None = erofs.reference_write(tree)
    except errors.CasError:
        image = None
    assert native.write(tree, 0, 1) == image
    if image is not None:
        dumpfile.parse(dumpfile.write(erofs.readback(tree)))


def state_file(parse: Callable[[dict[str, object]], object]) -> Callable[[bytes], None]:
    """A file in state/ (tampered, torn): refused only with what the loaders catch."""
    def target(data: bytes) -> None:
        try:
            parse(strictjson.load_object(data))
        except strictjson.UNREADABLE as exc:
            raise errors.BadInput(message=str(exc)) from None
    return target


def printable(data: bytes) -> None:
    text = errors.printable(data.decode("utf-8", "surrogateescape"), 100)
    if not text.isprintable() or len(text) > 1100:
        raise AssertionError(f"not one short printable line: {text!r}")


TARGETS: dict[str, Callable[[bytes], object]] = {
    "image": image.decode,
    "tar": tar,
    "tar-gzip": lambda data: tar(data, "gzip"),
    "tar-split": tar_split,
    "ollama-manifest": lambda data: ollama.parse_manifest(data, "fuzz"),
    "oci-document": oci_document,
    "name": lambda data: names.normalize(data.decode("utf-8", "replace")),
    "policy": lambda data: policy.parse(data, "fuzz"),
    "signature": signature_record,
    "docker-ref": lambda data: dockerref.parse(data.decode("utf-8", "replace")),
    "key": lambda data: keys.load_private(data, b"", "fuzz"),
    "composefs-dump": composefs_dump,
    "name-file": lambda data: names._parse(data, "0" * 64),
    "sweep-state": state_file(verify_state.SweepState.from_json),
    "damage-mark": state_file(damage.DamageMark.from_json),
    "challenge": lambda data: auth.parse_challenge(data.decode("utf-8", "replace")),
    "reference": lambda data: registry.parse_reference(data.decode("utf-8", "replace")),
    "printable": printable,
}


def main() -> None:
    target = TARGETS[sys.argv.pop(1)]

    def one_input(data: bytes) -> None:
        try:
            target(data)
        except errors.CasError:
            pass

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
