"""What an import of many artifacts returns: the ones imported and the ones that failed.

A source holding many artifacts (an Ollama store, a Hugging Face cache) is imported one
artifact at a time: a model with a missing blob or a bad manifest is reported and
skipped, the others are imported.  A failure is data here, not an exception, so the good
artifacts are never lost with it; the CLI prints each failure and exits with
``cas.errors.SOME_FAILED``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cas.core.image import Image
from cas.errors import CasError, NotOneArtifact


@dataclass(frozen=True, slots=True)
class Failure:
    """One artifact (or one entry of the source) that could not be imported, and why."""

    source: str
    error: CasError

    def to_json(self) -> dict[str, Any]:
        return {**self.error.to_json(), "source": self.source}

    def __str__(self) -> str:
        return f"{self.source}: {self.error}"


@dataclass(slots=True)
class Imported:
    """(default cas name, image) per imported artifact, and the failures."""

    artifacts: list[tuple[str, Image]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def require_one(source: Path, count: int, failed: bool) -> None:
    """``--name``: the source must hold one artifact (or only ones that failed, which are
    reported as such).  Called before the import's objects are published."""
    if count > 1 or (count == 0 and not failed):
        raise NotOneArtifact(source=source, count=count)
