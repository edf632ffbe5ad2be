"""Split labeled pairs by connected groups of texts: a text (and every text paired with it, transitively) falls
wholly on one side, so nothing measured on one part was seen, even as the other half of a pair, in the other."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from semantic_llm_cache.calibration import LabeledPair

_NOT_WORD = re.compile(r"[\W_]+")


def text_identity(text: str) -> str:
    """The form under which two texts count as the same (case and punctuation ignored), as the judging does."""
    return _NOT_WORD.sub(" ", text.casefold()).strip()


def pair_groups(pairs: Sequence[LabeledPair]) -> list[int]:
    """For each pair, the id of its connected group (union-find over texts; ids in order of first appearance)."""
    parent: dict[str, str] = {}

    def find(text: str) -> str:
        root = text
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[text] != root:  # path compression
            parent[text], text = root, parent[text]
        return root

    for pair in pairs:
        a, b = find(text_identity(pair.text_a)), find(text_identity(pair.text_b))
        if a != b:
            parent[max(a, b)] = min(a, b)
    ids: dict[str, int] = {}
    return [ids.setdefault(find(text_identity(pair.text_a)), len(ids)) for pair in pairs]


def group_split(
    pairs: Sequence[LabeledPair], fraction: float, seed: int = 0
) -> tuple[list[LabeledPair], list[LabeledPair]]:
    """(rest, held): about `fraction` of the pairs, chosen as whole groups, seeded; no text on both sides.

    Groups are ordered by a seeded hash of their first text (the same split whatever the file's line order) and
    taken until the held part reaches `fraction` of the pairs."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    groups = pair_groups(pairs)
    members: dict[int, list[int]] = {}
    for row, group in enumerate(groups):
        members.setdefault(group, []).append(row)
    keys = {
        group: hashlib.sha256(f"{seed}\0{text_identity(pairs[rows[0]].text_a)}".encode()).hexdigest()
        for group, rows in members.items()
    }
    order = sorted(members, key=keys.__getitem__)
    wanted = fraction * len(pairs)
    held_rows: set[int] = set()
    for group in order:
        if len(held_rows) >= wanted:
            break
        held_rows.update(members[group])
    rest = [pair for row, pair in enumerate(pairs) if row not in held_rows]
    held = [pair for row, pair in enumerate(pairs) if row in held_rows]
    return rest, held


__all__ = ["group_split", "pair_groups", "text_identity"]
