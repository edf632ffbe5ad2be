"""When two prompts share most of their text (a template, a retrieved context), find the parts that differ.

A long shared part dominates an embedding: "Context: <300 words> Question: how many sick days?" and the same
with "vacation days" score 0.95+ although the questions score 0.7. The engine therefore decides such pairs on
what differs: the differing span of words, widened to whole sentences so that a rephrased question is compared
as a question, not as a few stray words.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Share of the longer prompt's characters that must be common (outside the differing sentences) before the
#: decision moves to the differing parts. Below it the prompts are compared whole, as usual.
MIN_SHARED_FRACTION = 0.5
_SENTENCE_ENDS = (".", "!", "?", ":", ";")


@dataclass(frozen=True)
class Difference:
    """The sentences of each prompt that the other does not share, and how much of the text is shared."""

    query_part: str
    candidate_part: str
    shared_fraction: float


def _common_prefix(first: list[str], second: list[str]) -> int:
    count = 0
    for left, right in zip(first, second, strict=False):
        if left != right:
            break
        count += 1
    return count


def _sentence_start(words: list[str], position: int) -> int:
    """The index of the first word of the sentence holding words[position] (or `position` itself at the end)."""
    while position > 0 and not words[position - 1].endswith(_SENTENCE_ENDS):
        position -= 1
    return position


def _sentence_end(words: list[str], position: int) -> int:
    """One past the last word of the sentence whose words start at or before `position` (exclusive end)."""
    while position < len(words) and not words[position - 1].endswith(_SENTENCE_ENDS):
        position += 1
    return position


def differing_parts(query: str, candidate: str, min_shared: float = MIN_SHARED_FRACTION) -> Difference | None:
    """The differing sentences of two prompts that share at least `min_shared` of their text; else None.

    The shared text is the common run of words at the start and at the end (a template's frame, a context
    before or after the question). The span between them, on each side, is widened to sentence boundaries.
    """
    query_words, candidate_words = query.split(" "), candidate.split(" ")
    prefix = _common_prefix(query_words, candidate_words)
    longest_suffix = min(len(query_words), len(candidate_words)) - prefix
    suffix = min(_common_prefix(query_words[::-1], candidate_words[::-1]), longest_suffix)
    if prefix == 0 and suffix == 0:
        return None
    start = min(_sentence_start(query_words, prefix), _sentence_start(candidate_words, prefix))
    query_end = _sentence_end(query_words, max(len(query_words) - suffix, start + 1))
    candidate_end = _sentence_end(candidate_words, max(len(candidate_words) - suffix, start + 1))
    kept = min(len(query_words) - query_end, len(candidate_words) - candidate_end)  # the shared words after
    query_part = " ".join(query_words[start : len(query_words) - kept])
    candidate_part = " ".join(candidate_words[start : len(candidate_words) - kept])
    longer = max(len(query), len(candidate))
    shared = longer - max(len(query_part), len(candidate_part))
    fraction = shared / longer if longer else 0.0
    if fraction < min_shared:
        return None
    return Difference(query_part, candidate_part, fraction)


__all__ = ["MIN_SHARED_FRACTION", "Difference", "differing_parts"]
