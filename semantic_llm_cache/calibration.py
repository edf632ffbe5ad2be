"""Calibrate the similarity threshold on labeled prompt pairs (the format of ../shared/data/qqp_dev.jsonl).

Protocol (after the data folder's README): store each distinct `text_a` once and query with each `text_b`. The
sweep reproduces the engine's lookup: an exact text match is a hit, else the nearest `candidates` entries at or
above the threshold are tried in order and, with the answer guard on, the first the guard allows is served.

A served entry is judged by what the data says about (query, served prompt):
- the same text (ignoring case and punctuation): correct;
- a pair the data labels (in either order): its label (1 correct, 0 wrong);
- anything else is *unlabeled*: nobody said whether it is the same question.
`precision` is correct / labeled hits; `strict_precision` also counts every unlabeled hit as wrong (the
README's "any other entry returned is wrong"), a lower bound. Hit rate = hits / queries; recall = correct hits
on the query's own label-1 pair / label-1 pairs.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semantic_llm_cache.embeddings.base import Embedder
from semantic_llm_cache.errors import InvalidInputError
from semantic_llm_cache.guard import guard_refusal
from semantic_llm_cache.scope import normalize_prompt
from semantic_llm_cache.values import check_text, shown

Progress = Callable[[int, int], None]
_NOT_WORD = re.compile(r"[\W_]+")
#: Labeled hits a threshold needs before `recommend` judges its precision (see CalibrationReport.recommend).
DEFAULT_MIN_HITS = 20
DEFAULT_THRESHOLDS = tuple(round(0.60 + 0.005 * step, 3) for step in range(81))


@dataclass(frozen=True)
class LabeledPair:
    """Two prompts and whether they mean the same (1) or not (0)."""

    text_a: str
    text_b: str
    label: int


@dataclass(frozen=True)
class SweepRow:
    """Quality of one threshold, with or without the answer guard."""

    threshold: float
    guard: bool
    queries: int
    hits: int
    correct_hits: int
    wrong_hits: int
    precision: float
    hit_rate: float
    recall: float
    f1: float
    unlabeled_hits: int = 0
    strict_precision: float = 1.0

    @property
    def labeled_hits(self) -> int:
        """Hits the data judges (correct + wrong): the denominator of `precision`."""
        return self.correct_hits + self.wrong_hits


@dataclass(frozen=True)
class CalibrationReport:
    """All sweep rows, plus the sample it was measured on."""

    rows: list[SweepRow]
    pairs: int
    positives: int
    stored: int
    embedder: str

    def row(self, threshold: float, guard: bool = True) -> SweepRow:
        """The row measured at `threshold` (nearest swept value)."""
        candidates = [row for row in self.rows if row.guard == guard]
        return min(candidates, key=lambda row: abs(row.threshold - threshold))

    def recommend(
        self, target_precision: float = 0.9, guard: bool = True, min_hits: int = DEFAULT_MIN_HITS
    ) -> SweepRow | None:
        """The lowest threshold whose precision reaches `target_precision` and stays there at every stricter one.

        Only thresholds with at least `min_hits` labeled hits (correct + wrong) are judged: near the top a
        threshold serves a handful of queries, where one wrong hit among 7 reads as precision 0.857 and would
        otherwise veto every lower threshold, although the same wrong hit is also counted at each of them (the
        sample's mistake, not the threshold's). Thresholds with fewer labeled hits neither qualify nor veto.
        None when no judged threshold reaches the target.
        """
        rows = sorted((row for row in self.rows if row.guard == guard), key=lambda row: row.threshold)
        best: SweepRow | None = None
        for row in reversed(rows):
            if row.labeled_hits < min_hits:
                continue
            if row.precision < target_precision:
                break
            best = row
        return best


def load_pairs(path: str | Path, limit: int | None = None) -> list[LabeledPair]:
    """Read labeled pairs from JSON lines; a malformed line raises InvalidInputError naming its number.

    Each line is {"text_a": str, "text_b": str, "label": 0 or 1}; texts must be non-empty strings and labels
    exactly 0 or 1 (1.7, "1", true or null are refused, not rounded)."""
    source = Path(path)
    if not source.is_file():
        raise InvalidInputError(f"no such file: {source}")
    pairs: list[LabeledPair] = []
    try:
        with source.open(encoding="utf-8-sig") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                pairs.append(_pair(source, number, line))
                if limit is not None and len(pairs) >= limit:
                    break
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{source} is not UTF-8 text: {exc}") from exc
    if not pairs:
        raise InvalidInputError(f"{source} holds no labeled pairs")
    return pairs


def _pair(source: Path, number: int, line: str) -> LabeledPair:
    where = f"{source}:{number}"
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise InvalidInputError(f"{where}: not JSON: {exc}") from exc
    except RecursionError:
        raise InvalidInputError(f"{where}: nests too deeply to read") from None
    if not isinstance(record, dict):
        raise InvalidInputError(f'{where}: expected {{"text_a": str, "text_b": str, "label": 0 or 1}}')
    for name in ("text_a", "text_b"):
        text = record.get(name)
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError(f"{where}: {name} must be a non-empty string, got {shown(text)}")
        check_text(text, f"{where}: {name}")
    label = record.get("label")
    if isinstance(label, bool) or not isinstance(label, (int, float)) or label not in (0, 1):
        raise InvalidInputError(f"{where}: label must be 0 or 1, got {shown(label)}")
    return LabeledPair(record["text_a"], record["text_b"], int(label))


async def embed_texts(
    texts: Sequence[str],
    embedder: Embedder,
    batch_size: int = 256,
    progress: Progress | None = None,
    cache_dir: str | Path | None = None,
) -> np.ndarray:
    """Embed `texts` in batches, reporting progress as (texts done, total).

    With `cache_dir`, the matrix is saved there (as .npy, named by a hash of the embedder and the texts) and
    read back by later runs over the same texts.
    """
    cached: Path | None = None
    if cache_dir is not None:
        digest = hashlib.sha256("\n".join([embedder.name, *texts]).encode()).hexdigest()[:24]
        cached = Path(cache_dir) / f"vectors-{digest}.npy"
        if cached.is_file():
            if progress is not None:
                progress(len(texts), len(texts))
            loaded: np.ndarray = np.load(cached)
            return loaded
    blocks = []
    for start in range(0, len(texts), batch_size):
        blocks.append(await embedder.embed(list(texts[start : start + batch_size])))
        if progress is not None:
            progress(min(start + batch_size, len(texts)), len(texts))
    matrix = np.concatenate(blocks).astype(np.float32)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(cached, matrix)
    return matrix


def nearest_candidates(
    queries: np.ndarray, stored: np.ndarray, k: int, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k stored rows per query by inner product: (indices, similarities), best first."""
    k = min(k, stored.shape[0])
    indices = np.empty((queries.shape[0], k), dtype=np.int64)
    scores = np.empty((queries.shape[0], k), dtype=np.float32)
    for start in range(0, queries.shape[0], chunk):
        block = queries[start : start + chunk] @ stored.T
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        indices[start : start + chunk] = np.take_along_axis(top, order, axis=1)
        scores[start : start + chunk] = np.take_along_axis(top_scores, order, axis=1)
    return indices, scores


def _identity(text: str) -> str:
    return _NOT_WORD.sub(" ", text.casefold()).strip()


def _row(threshold: float, guard: bool, verdicts: np.ndarray, own_pair: np.ndarray, labels: np.ndarray) -> SweepRow:
    """verdicts: per query 1 correct, 0 wrong, -1 unlabeled, -2 no hit; own_pair: hit on its own label-1 pair."""
    hit = verdicts > -2
    hits = int(hit.sum())
    correct_hits = int((verdicts == 1).sum())
    wrong_hits = int((verdicts == 0).sum())
    unlabeled = int((verdicts == -1).sum())
    positives = int((labels == 1).sum())
    labeled = correct_hits + wrong_hits
    precision = correct_hits / labeled if labeled else 1.0
    recall = int(own_pair.sum()) / positives if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return SweepRow(threshold, guard, len(labels), hits, correct_hits, wrong_hits, precision, hits / len(labels),
                    recall, f1, unlabeled, correct_hits / hits if hits else 1.0)  # fmt: skip


async def sweep(
    pairs: Sequence[LabeledPair],
    embedder: Embedder,
    thresholds: Iterable[float] | None = None,
    progress: Progress | None = None,
    candidates: int = 4,
    cache_dir: str | Path | None = None,
) -> CalibrationReport:
    """Measure precision, hit rate, recall and F1 at each threshold, with and without the answer guard."""
    stored_texts = list(dict.fromkeys(normalize_prompt(pair.text_a) for pair in pairs))
    position = {text: row for row, text in enumerate(stored_texts)}
    queries = [normalize_prompt(pair.text_b) for pair in pairs]
    expected = np.array([position[normalize_prompt(pair.text_a)] for pair in pairs])
    labels = np.array([pair.label for pair in pairs])
    known = {frozenset((_identity(pair.text_a), _identity(pair.text_b))): pair.label for pair in pairs}
    distinct = list(dict.fromkeys(stored_texts + queries))
    vectors = await embed_texts(distinct, embedder, progress=progress, cache_dir=cache_dir)
    row_of = {text: row for row, text in enumerate(distinct)}
    stored = vectors[[row_of[text] for text in stored_texts]]
    query_vectors = vectors[[row_of[text] for text in queries]]
    indices, scores = nearest_candidates(query_vectors, stored, candidates)
    exact = np.array([position.get(text, -1) for text in queries])

    def verdict(query: str, served: int) -> int:
        served_text = stored_texts[served]
        if _identity(served_text) == _identity(query):
            return 1
        return known.get(frozenset((_identity(served_text), _identity(query))), -1)

    judged = np.array([[verdict(query, int(j)) for j in row] for query, row in zip(queries, indices, strict=True)])
    allowed = np.array(
        [
            [guard_refusal(query, stored_texts[j]) is None for j in row]
            for query, row in zip(queries, indices, strict=True)
        ]
    )
    first_allowed = np.where(allowed.any(axis=1), allowed.argmax(axis=1), -1)
    everyone = np.arange(len(queries))
    rows: list[SweepRow] = []
    for threshold in thresholds or DEFAULT_THRESHOLDS:
        for guard in (False, True):
            column = first_allowed if guard else np.zeros(len(queries), dtype=np.int64)
            valid = column >= 0
            picked = np.where(valid, column, 0)
            served = valid & (scores[everyone, picked] >= threshold)
            verdicts = np.where(served, judged[everyone, picked], -2)
            own_pair = served & (labels == 1) & (indices[everyone, picked] == expected)
            verdicts = np.where(exact >= 0, 1, verdicts)  # an exact text match is always served, and right
            own_pair = np.where(exact >= 0, (labels == 1) & (exact == expected), own_pair)
            rows.append(_row(float(threshold), guard, verdicts, own_pair, labels))
    return CalibrationReport(rows, len(pairs), int((labels == 1).sum()), len(stored_texts), embedder.name)


def plot_report(
    report: CalibrationReport,
    path: str | Path,
    target_precision: float | None = None,
    min_hits: int = DEFAULT_MIN_HITS,
) -> Path:
    """Write a PNG of precision and hit rate against threshold, with and without the guard."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for guard, style in ((False, "--"), (True, "-")):
        rows = sorted((row for row in report.rows if row.guard == guard), key=lambda row: row.threshold)
        label = "guard on" if guard else "guard off"
        axes.plot([r.threshold for r in rows], [r.precision for r in rows], style, color="tab:blue",
                  label=f"precision ({label})")  # fmt: skip
        axes.plot([r.threshold for r in rows], [r.hit_rate for r in rows], style, color="tab:orange",
                  label=f"hit rate ({label})")  # fmt: skip
    if target_precision is not None:
        axes.axhline(target_precision, color="grey", linewidth=0.8)
        chosen = report.recommend(target_precision, min_hits=min_hits)
        if chosen is not None:
            axes.axvline(chosen.threshold, color="tab:green", linewidth=0.8, label=f"recommended {chosen.threshold}")
    axes.set_xlabel("threshold (cosine similarity, >=)")
    axes.set_ylabel("fraction")
    axes.set_title(f"{report.embedder}: {report.pairs} labeled pairs, {report.stored} stored prompts")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize=8)
    output = Path(path)
    figure.savefig(output, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return output
