"""Ollama model names: its grammar, its defaults, its store locations, and their cas names.

A model is ``[host/][namespace/]model[:tag]`` (an ``http://`` or ``https://`` in front is
dropped, as Ollama does); the tag is what follows the last ``:`` when that comes after
the last ``/``, so ``localhost:11434/ns/model:q4`` is host ``localhost:11434``, tag
``q4``.  Missing parts default to ``registry.ollama.ai``, ``library``, ``latest``.  The
characters of each part are Ollama's (``types/model/name.go``):

    host       1..350  first a letter, digit or ``_``; then those and ``- . :``
    namespace  1..80   first a letter, digit or ``_``; then those and ``-``
    model, tag 1..80   first a letter, digit or ``_``; then those and ``- .``

so ``_private``, ``model-``, ``my_-model`` and ``a..b`` are names.  On disk a model is
``manifests/<host>/<namespace>/<model>/<tag>``, each part one path component (cas also
refuses a part over 255 bytes, which no filesystem could hold).

Ollama compares names ignoring ASCII case, tags included.  cas lower-cases the host,
namespace and model of its name but keeps the tag's case (OCI tags are case-sensitive,
and ``Q4_K_M`` reads better than ``q4_k_m``), so manifests whose tags differ only in case
— one model to Ollama — are two cas names.  Parts that are not valid in a cas name are
mapped as ``cas.formats.naming`` says; the exact spelling is kept in the image.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from cas import errors
from cas.core.treepath import check_name
from cas.formats import naming

DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
KINDS = ("host", "namespace", "model", "tag")

_FIRST = "A-Za-z0-9_"
_RULES = {
    "host": (350, re.compile(f"[{_FIRST}][{_FIRST}.:-]*")),
    "namespace": (80, re.compile(f"[{_FIRST}][{_FIRST}-]*")),
    "model": (80, re.compile(f"[{_FIRST}][{_FIRST}.-]*")),
    "tag": (80, re.compile(f"[{_FIRST}][{_FIRST}.-]*")),
}


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A fully qualified model name; every part is checked when one is made."""

    host: str
    namespace: str
    model: str
    tag: str

    def __post_init__(self) -> None:
        for kind, part in zip(KINDS, self.parts, strict=True):
            check_part(kind, part)

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return self.host, self.namespace, self.model, self.tag

    @property
    def folded(self) -> tuple[str, ...]:
        """The name as Ollama compares it (ASCII case ignored)."""
        return tuple(part.lower() for part in self.parts)

    @property
    def cas_name(self) -> str:
        """``hf.co/Org/Model:Q4_K_M`` → ``hf.co/org/model:Q4_K_M``; ``BadName`` only when
        the mapped name would exceed cas's 255 characters."""
        return naming.name([naming.host(self.host), naming.component(self.namespace),
                            naming.component(self.model)], self.tag)

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


def check_part(kind: str, part: str) -> None:
    """Refuse a name part Ollama would refuse, or one that is not a safe path component."""
    check_name(part, what=f"Ollama {kind}")
    limit, pattern = _RULES[kind]
    if len(part) > limit or not pattern.fullmatch(part):
        raise errors.BadName(name=part, reason=f"not a valid Ollama {kind} (1..{limit} "
                             "letters, digits and _ . - : as Ollama allows them)")


def parse_model(text: str) -> ModelRef:
    """``model``, ``model:tag``, ``ns/model[:tag]`` or ``host/ns/model[:tag]``, with
    Ollama's defaults for what is left out."""
    for scheme in ("http://", "https://"):
        text = text.removeprefix(scheme)
    path, tag = text, DEFAULT_TAG
    if text.rfind(":") > text.rfind("/"):
        path, _, tag = text.rpartition(":")
    parts = path.split("/")
    if len(parts) > 3:
        raise errors.BadName(name=text, reason="an Ollama model is [host/][namespace/]model[:tag]")
    defaults = [DEFAULT_HOST, DEFAULT_NAMESPACE][:3 - len(parts)]
    host, namespace, model = [*defaults, *parts]
    return ModelRef(host, namespace, model, tag)


def default_root() -> Path:
    """Where Ollama keeps its models: ``$OLLAMA_MODELS`` or ``~/.ollama/models``."""
    configured = os.environ.get("OLLAMA_MODELS")
    return Path(configured) if configured else Path.home() / ".ollama" / "models"


def parse_ref(text: str) -> tuple[Path, str | None]:
    """Split the text after ``ollama:`` into a store root and an optional model reference.

    - ``""``: the default store (``default_root()``), every model in it;
    - otherwise the longest leading part of the text, cut at a ``/``, that is an Ollama
      store directory (one holding ``manifests/``) is the root, and the rest, if any, the
      model: ``/srv/ollama``, ``/srv/ollama/llama3:8b``, ``~/m/hf.co/org/model:q4``; an
      existing empty directory is a root too when the rest ends in ``:tag``
      (``/mnt/usb/llama3:8b``: a new store there, the model renamed);
    - text with no such part that starts like a path (``/ ./ ../ ~``), or a bare word that
      names an existing directory, is the root itself, an export destination that need not
      exist yet (import refuses it: not a store) —
      unless its last component holds a ``:``: ``/new/dir/model:tag`` is refused rather
      than read as a store named ``model:tag``;
    - other text is a model in the default store (``llama3``, ``ns/model:tag``).
    """
    if not text:
        return default_root(), None
    expanded = os.path.expanduser(text)
    parts = expanded.split("/")
    for cut in range(len(parts), 0, -1):
        head, rest = "/".join(parts[:cut]), "/".join(parts[cut:]).strip("/")
        if head and ((Path(head) / "manifests").is_dir()
                     or (_has_tag(rest) and _is_empty_dir(Path(head)))):
            if rest:
                parse_model(rest)
            return Path(head), rest or None
    if expanded.startswith(("/", "./", "../", "~")) or expanded in (".", "..") or (
            "/" not in expanded and ":" not in expanded and Path(expanded).is_dir()):
        if _has_tag(expanded.rstrip("/")):
            raise NotAnOllamaStore(path=expanded, reason="no Ollama store or empty directory "
                                   "holds it; to export under a new name, create the directory "
                                   "first")
        return Path(expanded), None
    parse_model(text)
    return default_root(), text


def _has_tag(text: str) -> bool:
    return ":" in text.rpartition("/")[2]


def _is_empty_dir(path: Path) -> bool:
    try:
        return path.is_dir() and not any(path.iterdir())
    except OSError:
        return False


class NotAnOllamaStore(errors.BadInput):
    """{path}: not an Ollama model store ({reason})"""
