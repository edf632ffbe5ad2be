"""What the engine hands back: a served hit, a computed answer's wrapper, and what one resolve did."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class CacheHit:
    """A served answer: the response, how it matched (`kind`, `similarity`), what it matched and how old it is.

    compute_seconds and tokens: what the answer cost when it was computed (what this hit saved), if known.
    """

    response: Any
    similarity: float
    kind: Literal["exact", "semantic"]
    prompt: str
    age: float
    key: str
    metadata: dict[str, Any]
    compute_seconds: float | None = None
    tokens: int | None = None


@dataclass(frozen=True)
class Computed:
    """What a `compute` callable may return instead of a bare value, to say more about it.

    value: the answer returned to every caller. tokens: what it cost, credited to savings on later hits.
    store: False shares the answer with concurrent callers but keeps it out of the cache (e.g. an answer the
    adapter cannot serialise faithfully).
    """

    value: Any
    tokens: int | None = None
    store: bool = True


@dataclass(frozen=True)
class Resolution:
    """What `resolve` did: the response, the hit that served it (None when computed or shared), whether this
    caller computed it, and whether it joined another caller's computation (`shared`)."""

    response: Any
    hit: CacheHit | None
    computed: bool
    shared: bool = False
    key: str | None = None  # the entry's key: the hit's, where a computed answer was stored (None: not stored),
    # where a shared answer is, or where a live stream's answer will be stored once it completes

    @property
    def kind(self) -> Literal["exact", "semantic", "shared", "miss"]:
        if self.hit is not None:
            return self.hit.kind
        return "shared" if self.shared else "miss"

    def info(self, prompt: str | None = None) -> dict[str, Any]:
        """How the answer was served, in the one vocabulary both integrations report (on hits and misses):
        hit, kind ("exact" | "semantic" | "shared" | "miss"), similarity, matched_prompt, age_seconds, key,
        shared, and `prompt` (the text looked up) when given."""
        hit = self.hit
        served = hit is not None or self.shared
        info: dict[str, Any] = {
            "hit": served,
            "kind": self.kind,
            "similarity": None if hit is None else hit.similarity,
            "matched_prompt": None if hit is None else hit.prompt,
            "age_seconds": None if hit is None else round(hit.age, 3),
            "key": hit.key if hit is not None else self.key,
            "shared": self.shared,
        }
        if prompt is not None:
            info["prompt"] = prompt
        return info


__all__ = ["CacheHit", "Computed", "Resolution"]
