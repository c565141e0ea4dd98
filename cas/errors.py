"""The one error hierarchy of cas.

Each error's docstring is its message template (``str.format`` fields filled from the
keyword arguments), and its ``exit_code`` is what the CLI exits with.  Library code
raises; only ``cas.cli`` prints or exits.

Exit codes: 0 success, 1 a failed operation, 2 bad usage or bad input,
3 the store cannot be used (missing, not a store, too new, read-only, full),
4 something asked for does not exist, 5 stored bytes failed an integrity check,
6 ``cas verify`` / ``cas repair`` ran and found problems (or left some unrepaired),
7 ``cas verify`` could not run because another sweep holds the lock,
8 ``cas gc`` could not run because another GC holds the store lock,
9 an import of many artifacts (an Ollama store, a Hugging Face cache) skipped some that
failed (each reported; the others were imported and named).
10 the trust policy refused an artifact (signature missing, invalid or not trusted).
"""

from __future__ import annotations

#: typing.TYPE_CHECKING without importing typing (start-up cost, as in ``cas``)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

#: ``cas verify``/``cas repair``: the run completed and problems remain (not an error).
PROBLEMS_FOUND = 6
#: ``cas import``: some artifacts of the source were imported, others failed (a result).
SOME_FAILED = 9
#: Longest a field may be in a message (``--json`` carries the whole value in its field).
FIELD_MAX = 1000
#: Most items a message lists (``listing``).
LIST_MAX = 10

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def printable(value: object, limit: int | None = FIELD_MAX) -> str:
    """``value`` as safe, unambiguous one-line text for a terminal: line breaks, control
    characters, terminal escapes and every other non-printable character (bidi
    overrides, lone surrogates) escaped backslash-style, a backslash doubled, bytes that
    are not UTF-8 (fs-encoded as U+DC80..U+DCFF) shown as ``\\xHH``; cut after ``limit``
    characters, saying how many were left out.  Every untrusted string shown to a human
    goes through here; ``--json`` carries the text exactly instead."""
    text = str(value) if limit is None else _cut(str(value), limit)
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if char in _ESCAPES:
        return _ESCAPES[char]
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the raw byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else (
        f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")


def listing(items: Iterable[object], limit: int = LIST_MAX) -> str:
    """``a, b, c`` — at most ``limit`` items, then how many more there are."""
    shown = list(items)
    text = ", ".join(str(i) for i in shown[:limit])
    return text + (f", ... ({len(shown) - limit} more)" if len(shown) > limit else "")


class CasError(Exception):
    """{message}"""

    exit_code = 1

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        super().__init__(self.message())

    def message(self) -> str:
        """The template filled in; a field longer than ``FIELD_MAX`` is cut (``to_json``
        keeps it whole)."""
        # the docstring's first paragraph, its lines joined: long templates may wrap
        paragraph = (type(self).__doc__ or "").strip().split("\n\n")[0]
        template = " ".join(line.strip() for line in paragraph.splitlines())
        return template.format(**{k: _bounded(v) for k, v in self.fields.items()})

    def to_json(self) -> dict[str, Any]:
        """A machine-readable form: kebab-case kind, message and fields (exact)."""
        kind = _kebab(type(self).__name__)
        fields = {k: str(v) for k, v in self.fields.items()}
        return {"error": kind, "message": self.message(), **fields}


def _bounded(value: Any) -> Any:
    text = str(value)
    return value if len(text) <= FIELD_MAX else _cut(text, FIELD_MAX)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def _kebab(name: str) -> str:
    return "".join("-" + c.lower() if c.isupper() else c for c in name).lstrip("-")


# -- bad input (exit 2) ---------------------------------------------------------------


class BadInput(CasError):
    """{message}"""

    exit_code = 2


class InvalidObjectId(BadInput):
    """malformed object id {value!r}: expected 64 lowercase hex digits or sha256:<64 hex>"""


class NotARegularFile(BadInput):
    """{path}: not a regular file ({kind})"""


class SourceMissing(BadInput):
    """{path}: no such file"""


class SourceUnreadable(BadInput):
    """{path}: cannot read: {reason}"""


class BadPath(BadInput):
    """unsafe {what} {path!r}: {reason}"""


class BadName(BadInput):
    """invalid name {name!r}: {reason}"""


class NameClash(BadInput):
    """{first} and {second} would both be named {name} in cas; {second} was not imported
    (import it alone, with --name)"""


class BadImage(BadInput):
    """bad metadata image: {reason}"""


class BadDumpfile(BadInput):
    """bad composefs dumpfile (line {line}): {reason}"""


class BadComposefsTree(BadInput):
    """cannot write a composefs image: {path}: {reason}"""


class DumpNotImportable(BadInput):
    """{source}: {path!r}: {reason}; an artifact cannot keep it (cas mkcomposefs builds
    the dump's image without a store); nothing was imported"""


class ContentMismatch(BadInput):
    """{what}: content does not match what was declared ({detail}); nothing was stored"""


class UnsupportedSource(BadInput):
    """{location}: unsupported location (oci:PATH[:TAG], ollama:[PATH][/model:tag],
    hf:[CACHE][/org/name[@revision]], docker://REF, dump:PATH, a path; tar:PATH and
    composefs:PATH for export)"""


class DestinationExists(BadInput):
    """{path}: already exists; cas never writes into an existing destination"""


class NameCollision(BadInput):
    """{dest}: {path!r} names the same file as another entry on this filesystem (it folds
    case or normalises names); nothing was checked out"""


class BadDestination(BadInput):
    """{path}: cannot write there: {reason}"""


class NotOneArtifact(BadInput):
    """{source} holds {count} artifacts; --name needs one"""


class LinkUnsupported(CasError):
    """cannot {mode} from the store to the destination: {reason}"""


class MountFailed(CasError):
    """cannot mount or unmount {path}: {reason}"""


class BadLayout(BadInput):
    """{path}: bad OCI image layout: {reason}"""


class BadLayer(BadInput):
    """layer {digest}: {reason}"""


class RegistryError(CasError):
    """{registry}: {reason}"""


class BadPolicy(BadInput):
    """{path}: invalid trust policy: {reason}"""


class BadKey(BadInput):
    """{path}: {reason}"""


class BadSignature(BadInput):
    """{reason}"""


class NotSignable(BadInput):
    """{name}: cannot be signed: {reason}"""


class NotPublishable(BadInput):
    """{path}: cannot be published as an OCI artifact: {reason}"""


class SourceChanged(CasError):
    """{path}: the file changed while it was being imported ({what}); nothing was stored"""


# -- the store cannot be used (exit 3) --------------------------------------------------


class StoreUnusable(CasError):
    """{message}"""

    exit_code = 3


class NoStoreGiven(StoreUnusable):
    """no store given: use --store PATH or set ${variable}"""


class StoreNotFound(StoreUnusable):
    """{path}: no such directory"""


class NotAStore(StoreUnusable):
    """{path}: not a cas store ({reason})"""


class StoreExists(StoreUnusable):
    """{path}: already exists and is not empty"""


class UnsupportedFormat(StoreUnusable):
    """{path}: store format {found} is not supported (this cas reads {supported}); upgrade cas"""


class StoreReadOnly(StoreUnusable):
    """{path}: the store is read-only"""


class StoreFull(StoreUnusable):
    """{path}: no space left on the store's filesystem; nothing was stored"""


class StoreCorrupt(StoreUnusable):
    """{path}: store damaged: {reason}"""


class ForeignEntry(StoreCorrupt):
    """{path}: store damaged: a {kind} where cas keeps {expected} (cas never made it;
    remove it)"""


class StoreNotOwned(StoreUnusable):
    """{path}: owned by uid {owner}; a store's directory must belong to the user who
    creates it"""


# -- not found (exit 4) -------------------------------------------------------------------


class NotFound(CasError):
    """{message}"""

    exit_code = 4


class ObjectNotFound(NotFound):
    """object {object_id} is not in the store"""


class ObjectsMissing(NotFound):
    """{source}: {count} objects the tree needs are not in the store (e.g. {path!r} needs
    {object_id}); add them first (cas add), or build the image without a store (cas
    mkcomposefs); nothing was imported"""


class NameNotFound(NotFound):
    """no artifact named {name!r}"""


class RegistryNotFound(NotFound):
    """{ref}: not found in the registry ({reason})"""


# -- integrity (exit 5) ---------------------------------------------------------------------


class CorruptObject(CasError):
    """object {object_id} is corrupt: {detail}{users}"""

    exit_code = 5
    MISMATCH = "its bytes do not match its name"

    def __init__(self, *, object_id: str, users: str = "", detail: str = MISMATCH) -> None:
        super().__init__(object_id=object_id, users=users, detail=detail)


# -- sweeps (exit 7; exit 6 is PROBLEMS_FOUND, a result rather than an error) ----------


class SweepBusy(CasError):
    """another verification sweep holds {path}; try again later or use --wait"""

    exit_code = 7


class GcBusy(CasError):
    """another gc holds the lock of {path}; try again later or use --wait SECONDS"""

    exit_code = 8


# -- trust (exit 10) -------------------------------------------------------------------------


class SignatureRefused(CasError):
    """{ref}: refused by the trust policy ({policy}, scope {scope}): {reason}"""

    exit_code = 10
