"""The error budget: a cache that measures its own error rate on its traffic and keeps it under a limit.

`SemanticCache(max_error_rate=0.05, answers_match=...)` (off by default). The idea is vCache's (Verified
Semantic Prompt Caching, ICLR 2026: learn online, from the traffic, how similar a prompt must be for a cached
answer to still be right, by now and then calling the model anyway and comparing); the code is our own.

How a semantic candidate (one that passed the threshold, the entry's own floor, the answer guard and the
verifiers) is decided, per partition ("pool"):

- *unsafe* (below the pool's served threshold, or no threshold learned yet): with a `compute` (resolve,
  get_or_compute) it is a miss: the model is called, as for any miss, and its fresh answer is compared with the
  cached one: a *check*, which costs no model call beyond the miss, only the comparator. Without one
  (`lookup`) it is simply not served.
- *safe*: served, except a share that is computed anyway and compared: an *exploration*, the only extra model
  calls the budget costs once it has learned. The share is `exploration_rate`; for an entry that has not yet
  agreed at that similarity or a lower one it rises towards `unverified_exploration_rate` as the bound nears
  the budget (wrong answers come in clusters: one entry answering every wording of another question, and
  since a served query is not stored, nothing else takes its place; an entry's first uses catch them).

Where the bound comes from (`PoolEvidence`): outcomes are counted per similarity bin (`BIN_WIDTH`): candidates
seen (traffic), comparisons made, judged ones (the comparator said True or False; None is no evidence) and wrong
ones. The error of serving every candidate at similarity >= t is estimated post-stratified: strata of
`STRATUM_BINS` bins over [t, 1], each stratum's wrong rate weighted by its traffic (times its judged share), so
it does not matter whether a stratum was judged fully (checks, below the served threshold) or at the
exploration rate (above it): within a stratum, outcomes are taken as exchangeable. Its bound is the one-sided
Wilson score bound at `confidence` with the effective sample size of a stratified sample, n_eff = (sum a_s)^2 /
sum(a_s^2 / m_s) (a_s: the stratum's judged traffic weight, m_s: its judged outcomes; equal within-stratum
variance assumed, Kish's design effect). The served threshold is the lowest bin edge t >= the user's
threshold, at a bin with evidence, whose bound over [t, 1] is within the budget with at least `min_evidence`
effective outcomes: it bounds the error of the hits served (cumulative over sim >= t), not of every bin.

What keeps that honest, and what does not:
- A fixed-sample bound checked after every outcome would be spent again at each look. The threshold is
  therefore loosened only at looks spaced geometrically in the judged outcomes (`min_evidence`, then x1.5),
  and tightened at once when the bound over the served range exceeds the budget.
- The explorations are also kept apart, weighted by 1 / their draw probability (Horvitz-Thompson): the served
  hits' own sample. When it shows them over the budget (its lower bound above it), the threshold is tightened
  by a stratum whatever the pooled evidence says.
- Choosing the lowest of ~20 nested ranges is a mild multiple-comparison optimism; and the pooled estimate is
  biased low where wrong answers cluster on entries that are fixed once caught (checks find a cluster once,
  served traffic repeats it). `benchmarks/error_budget.py` measures both effects; the README states the result.

The pools live in this process (each process learns its own, also over a shared Redis: they are not persisted);
what is stored with each entry is its own bounded evidence (`CacheEntry.evidence`: two counters, the lowest
similarity at which it agreed, the last RECENT_OUTCOMES outcomes). A wrong outcome raises the entry's
`min_similarity` above that similarity, as negative feedback does.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import random
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from semantic_llm_cache.errors import ConfigurationError
from semantic_llm_cache.values import shown

BIN_WIDTH = 0.01  # similarity bins of the pool's evidence (and the resolution of the served threshold)
_BINS = round(1.0 / BIN_WIDTH)
STRATUM_BINS = 5  # bins per stratum of the estimate (0.05 of similarity; the threshold moves by single bins)
RECENT_OUTCOMES = 8  # outcomes kept on each entry (similarity, agreed), besides its two counters
DEFAULT_EXPLORATION_RATE = 0.10
DEFAULT_UNVERIFIED_EXPLORATION_RATE = 0.5
DEFAULT_CONFIDENCE = 0.90
DEFAULT_MIN_EVIDENCE = 30
DEFAULT_COMPARATOR_TIMEOUT = 30.0
DEFAULT_MAX_PENDING = 256
UNMET_EVIDENCE = 5  # judged outcomes (in min_evidence) before the budget may be called unmet: the top of the
# similarity range gets little traffic, and a verdict from the lower ranges alone would be premature
LOOK_GROWTH = 1.5  # the served threshold may loosen each time the judged outcomes have grown by half
_MAX_POOLS = 4096

Decision = Literal["serve", "explore", "check", "unsafe"]
AnswersMatch = Callable[[str, Any, Any], Any]


def wilson_bounds(rate: float, n: float, z: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion `rate` observed over `n` (possibly effective, non-integer)
    trials, at `z` standard deviations each side: (lower, upper). n <= 0 gives (0, 1)."""
    if n <= 0:
        return 0.0, 1.0
    rate = min(max(rate, 0.0), 1.0)
    z2 = z * z
    centre = rate + z2 / (2 * n)
    spread = z * math.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n))
    denominator = 1 + z2 / n
    return max(0.0, (centre - spread) / denominator), min(1.0, (centre + spread) / denominator)


def similarity_bin(similarity: float) -> int:
    return min(max(int(similarity / BIN_WIDTH), 0), _BINS - 1)


@dataclass(frozen=True)
class Estimate:
    """An error rate over some range of similarities: the estimate, its Wilson bounds, the effective number
    of judged outcomes it rests on."""

    rate: float
    lower: float
    upper: float
    effective_n: float


class PoolEvidence:
    """One partition's evidence, per similarity bin (thread-safe)."""

    def __init__(self, min_evidence: float = DEFAULT_MIN_EVIDENCE) -> None:
        self._lock = threading.Lock()
        self.traffic = np.zeros(_BINS, dtype=np.int64)  # semantic candidates decided
        self.served = np.zeros(_BINS, dtype=np.int64)  # ... of which served
        self.compared = np.zeros(_BINS, dtype=np.int64)  # comparisons that came back (True, False or None)
        self.judged = np.zeros(_BINS, dtype=np.int64)  # ... True or False
        self.wrong = np.zeros(_BINS, dtype=np.int64)  # ... False
        self.threshold: float | None = None  # the served threshold learned so far (None: nothing is safe yet)
        self.met: bool | None = None  # True: a threshold keeps the budget; False: none can; None: not known yet
        self.floor: tuple[float, float] | None = None  # (lowest measured error, at threshold) with enough evidence
        self.warned = False
        self.pressure = 1.0  # the served range's error bound / the budget (at most 1): how close to the limit
        # The served hits' own sample: judged explorations, each weighted by 1 / the probability it was drawn
        # (Horvitz-Thompson), summed as (weights, squared weights, weights of the wrong ones); `recent` since the
        # served threshold last changed.
        self.explored = np.zeros(3)
        self.explored_recent = np.zeros(3)
        self.next_look = float(min_evidence)  # judged outcomes at which the threshold may next loosen

    def record_candidate(self, similarity: float, served: bool) -> None:
        with self._lock:
            index = similarity_bin(similarity)
            self.traffic[index] += 1
            if served:
                self.served[index] += 1

    def record_outcome(self, similarity: float, agreed: bool | None, explored_weight: float | None = None) -> None:
        """One comparison's outcome; `explored_weight` (1 / draw probability) for an exploration of a safe one."""
        with self._lock:
            index = similarity_bin(similarity)
            self.compared[index] += 1
            if agreed is not None:
                self.judged[index] += 1
                self.wrong[index] += not agreed
                if explored_weight is not None:
                    sample = np.array([explored_weight, explored_weight**2, explored_weight * (not agreed)])
                    self.explored += sample
                    self.explored_recent += sample

    def served_estimate(self, z: float, recent: bool = False) -> Estimate | None:
        """The error of the hits served, from their own sample (the explorations; see `explored`)."""
        with self._lock:
            weights, squares, wrong = self.explored_recent if recent else self.explored
        if weights <= 0:
            return None
        rate, effective = float(wrong / weights), float(weights * weights / squares)
        lower, upper = wilson_bounds(rate, effective, z)
        return Estimate(rate, lower, upper, effective)

    def _counts(self) -> tuple[npt.NDArray[np.int64], ...]:
        with self._lock:
            return self.traffic.copy(), self.served.copy(), self.compared.copy(), self.judged.copy(), self.wrong.copy()

    def cumulative(self, z: float, start: int = 0) -> list[Estimate | None]:
        """For each bin edge t from bin `start` up: the estimated error of serving every candidate at similarity
        >= t (None where nothing was judged); the list is indexed by bin (None below `start`)."""
        traffic, _, *outcomes = self._counts()
        estimates: list[Estimate | None] = [None] * start
        for index in range(start, _BINS):
            starts = _stratum_starts(index)
            total, errors, spread = _pieces(*(np.add.reduceat(counts[index:], starts)
                                              for counts in (traffic, *outcomes)))  # fmt: skip
            if total <= 0 or spread <= 0:
                estimates.append(None)
                continue
            rate = errors / total
            effective = total * total / spread
            lower, upper = wilson_bounds(rate, effective, z)
            estimates.append(Estimate(rate, lower, upper, effective))
        return estimates

    def served_totals(self) -> tuple[float, float, float]:
        """(sum a_s, sum a_s r_s, sum a_s^2 / m_s) over the hits served: the pieces of the served-error estimate,
        summed over pools (independent strata) before the rate and its bound are taken."""
        _, served, *outcomes = self._counts()
        starts = _stratum_starts(0)
        return _pieces(*(np.add.reduceat(counts, starts) for counts in (served, *outcomes)))

    def relearn(self, budget: float, z: float, floor: float, min_evidence: float) -> None:
        """Choose the served threshold from the evidence (see the module's docstring) and say whether the budget
        can be kept.

        A fixed-sample bound checked after every outcome would be spent again at each look: sooner or later
        noise lets it dip under the budget. So the threshold is *loosened* (moved down, or first set) only at
        looks spaced geometrically in the number of judged outcomes (`min_evidence`, then each time it has grown
        by LOOK_GROWTH), and *tightened* at once whenever the served range's bound is over the budget."""
        start = similarity_bin(floor)
        estimates = self.cumulative(z, start)
        qualifying: list[float] = []
        best: tuple[float, float] | None = None
        lowest_lower = math.inf
        for index in range(start, _BINS):
            estimate = estimates[index]
            if estimate is None or estimate.effective_n < min_evidence or not self.judged[index]:
                continue  # (a threshold starts where there is evidence: none is extrapolated to below it)
            edge = max(round(index * BIN_WIDTH, 6), floor)
            if estimate.upper <= budget:
                qualifying.append(edge)
            if best is None or estimate.rate < best[0]:
                best = (estimate.rate, edge)
            lowest_lower = min(lowest_lower, estimate.lower)
        judged = float(self.judged.sum())
        current = self.threshold
        served = self.served_estimate(z, recent=True)
        if (current is not None and served is not None and served.effective_n >= min_evidence / 3
                and served.lower > budget):  # fmt: skip
            # the served hits' own sample shows them over the budget, whatever the pooled evidence says: tighten
            # by a stratum at least, and wait for the next look to loosen again
            self.threshold = next((edge for edge in qualifying if edge >= current + STRATUM_BINS * BIN_WIDTH), None)
            self.next_look = max(self.next_look, judged * LOOK_GROWTH)
        elif qualifying and judged >= self.next_look and (current is None or qualifying[0] < current):
            self.threshold = qualifying[0]  # a look: loosen
            while self.next_look <= judged:
                self.next_look *= LOOK_GROWTH
        elif current is not None:  # between looks: keep, or tighten to the lowest qualifying threshold above
            self.threshold = next((edge for edge in qualifying if edge >= current), None)
        if self.threshold != current:
            with self._lock:
                self.explored_recent = np.zeros(3)
        self.floor = best
        served_range = None if self.threshold is None else estimates[similarity_bin(self.threshold)]
        self.pressure = 1.0 if served_range is None else min(1.0, served_range.upper / budget)
        if self.threshold is not None:
            self.met = True
        elif best is not None and lowest_lower > budget and judged >= UNMET_EVIDENCE * min_evidence:
            self.met = False  # at every threshold with enough evidence (and there is plenty), it is over the budget
        else:
            self.met = None


def _stratum_starts(index: int) -> npt.NDArray[np.intp]:
    """Where the strata of the range [bin `index`, 1] start, relative to `index`: at `index`, then at each
    multiple of STRATUM_BINS above it."""
    first = -(-index // STRATUM_BINS) * STRATUM_BINS
    if first == index:
        first += STRATUM_BINS
    return np.array([0, *range(first - index, _BINS - index, STRATUM_BINS)], dtype=np.intp)


def _pieces(
    base: npt.NDArray[np.int64],
    compared: npt.NDArray[np.int64],
    judged: npt.NDArray[np.int64],
    wrong: npt.NDArray[np.int64],
) -> tuple[float, float, float]:
    """The post-stratified estimate's pieces from per-stratum counts: (A, E, V) with a_s = base_s times the
    stratum's judged share, A = sum a_s, E = sum a_s r_s (r_s = wrong_s / judged_s), V = sum a_s^2 / judged_s;
    the rate is E / A and the effective sample size A^2 / V. The base count of a stratum never compared goes to
    the next compared stratum below it (the more conservative neighbour), or above it at the bottom."""
    weights = np.zeros(len(base))
    carry = 0.0
    lowest = None
    for index in range(len(base) - 1, -1, -1):
        carry += float(base[index])
        if compared[index]:
            weights[index] = carry * judged[index] / compared[index]
            carry, lowest = 0.0, index
    if carry and lowest is not None:
        weights[lowest] += carry * judged[lowest] / compared[lowest]
    rates = np.divide(wrong, judged, out=np.zeros(len(base)), where=judged > 0)
    variance = np.divide(weights**2, judged, out=np.zeros(len(base)), where=judged > 0)
    return float(weights.sum()), float((weights * rates).sum()), float(variance.sum())


def _entry_number(value: Any, default: float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    return float(value) if ok else default


def read_evidence(recorded: Any) -> dict[str, Any]:
    """An entry's evidence, read defensively (whatever an older version or a user left there):
    {"agreed": n, "disagreed": n, "lowest_agreed": similarity (2.0: none), "recent": [[similarity, 1 | 0], ...]
    (the last RECENT_OUTCOMES)}."""
    record = recorded if isinstance(recorded, dict) else {}
    recent = []
    for item in record.get("recent", []) if isinstance(record.get("recent"), list) else []:
        if isinstance(item, list) and len(item) == 2 and item[1] in (0, 1) and not isinstance(item[1], bool):
            similarity = _entry_number(item[0], -1.0)
            if 0.0 <= similarity <= 1.0:
                recent.append([similarity, int(item[1])])
    return {
        "agreed": int(_entry_number(record.get("agreed"), 0)),
        "disagreed": int(_entry_number(record.get("disagreed"), 0)),
        "lowest_agreed": min(_entry_number(record.get("lowest_agreed"), 2.0), 2.0),
        "recent": recent[-RECENT_OUTCOMES:],
    }


def verified_at(recorded: Any) -> float:
    """The lowest similarity at which the entry's answer was found right (2.0: never)."""
    return float(read_evidence(recorded)["lowest_agreed"])


def with_outcome(recorded: Any, similarity: float, agreed: bool) -> dict[str, Any]:
    """The entry's evidence with one more outcome (bounded: two counters and the last RECENT_OUTCOMES)."""
    evidence = read_evidence(recorded)
    evidence["agreed" if agreed else "disagreed"] += 1
    if agreed:
        evidence["lowest_agreed"] = min(evidence["lowest_agreed"], round(float(similarity), 6))
    evidence["recent"] = [*evidence["recent"], [round(float(similarity), 6), int(agreed)]][-RECENT_OUTCOMES:]
    return evidence


_SPACE = re.compile(r"\s+")


_TEXT_KEYS = ("text", "content")


def _answer_text(value: Any) -> str:
    """The text an answer says: a string as it is; for JSON, the strings under `text` / `content` keys in order
    (what the LangChain and LlamaIndex adapters store: generations, messages and their content blocks, whose
    other fields — ids, token usage, finish reasons — differ between two runs of the same answer), each piece
    once; JSON with no such strings (a structured answer) as sorted JSON."""
    if isinstance(value, str):
        return value
    pieces: list[str] = []
    pending: list[Any] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            for key in _TEXT_KEYS:
                if isinstance(item.get(key), str) and item[key] and (not pieces or pieces[-1] != item[key]):
                    pieces.append(item[key])
            pending.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            pending.extend(reversed(item))
    if pieces:
        return "\n".join(pieces)
    return json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)


def normalized_answer(value: Any) -> str:
    """An answer as text for comparison (`_answer_text`: the adapters' payloads by their text), case-folded,
    whitespace collapsed, surrounding spaces and final punctuation dropped."""
    return _SPACE.sub(" ", _answer_text(value).casefold()).strip().rstrip(".!?;:, ").strip()


def same_text(query: str, cached: Any, fresh: Any) -> bool:
    """The default comparator: the two answers are the same text once normalised (`normalized_answer`).

    Right for answers that are deterministic (temperature 0, classification, extraction, short facts); a model
    that words the same answer differently each time makes every comparison a disagreement, so the cache then
    learns that nothing is safe (it fails towards calling the model). Use `AnswerSimilarity` or an LLM judge
    for free text."""
    return normalized_answer(cached) == normalized_answer(fresh)


same_text.fast = True  # type: ignore[attr-defined]  # run on the loop, not in a worker thread


class AnswerSimilarity:
    """Comparator by answer embeddings: the answers agree when the cosine similarity of their embeddings is at
    least `cut` (default 0.90), disagree below `cut - unsure` and give no evidence in between.

    The default cut is a stated guess, not a measurement: answers to one question in different words score
    around 0.85-0.95 with the bundled model, answers to different questions mostly below 0.7. Measure it on
    pairs of your model's answers. `embedder`: any Embedder (default: the bundled model); answers longer than
    its window are compared on their beginning."""

    fast = False

    def __init__(self, cut: float = 0.90, *, unsure: float = 0.0, embedder: Any = None) -> None:
        if isinstance(cut, bool) or not isinstance(cut, (int, float)) or not 0.0 < cut <= 1.0:
            raise ConfigurationError(f"AnswerSimilarity cut must be in (0, 1], got {shown(cut)}")
        if isinstance(unsure, bool) or not isinstance(unsure, (int, float)) or not 0.0 <= unsure < cut:
            raise ConfigurationError(f"AnswerSimilarity unsure must be in [0, cut), got {shown(unsure)}")
        self.cut = float(cut)
        self.unsure = float(unsure)
        self._embedder = embedder

    async def __call__(self, query: str, cached: Any, fresh: Any) -> bool | None:
        from semantic_llm_cache.embeddings.adapters import as_embedder
        from semantic_llm_cache.embeddings.base import normalized_matrix

        if self._embedder is None:
            from semantic_llm_cache.cache import default_embedder

            self._embedder = default_embedder()
        embedder = as_embedder(self._embedder)
        texts = [_answer_text(cached), _answer_text(fresh)]
        if texts[0] == texts[1]:
            return True
        vectors = normalized_matrix(await embedder.embed(texts), 2, embedder.dimension)
        similarity = float(vectors[0] @ vectors[1])
        if similarity >= self.cut:
            return True
        if similarity < self.cut - self.unsure:
            return False
        return None


def _check_rate(value: Any, name: str, *, low: float, high: float, closed_low: bool = False) -> float:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and (low <= value if closed_low else low < value)
        and (value <= high if closed_low else value < high)
    )
    if not ok:
        bounds = f"[{low}, {high}]" if closed_low else f"({low}, {high})"
        raise ConfigurationError(f"{name} must be a number in {bounds}, got {shown(value)}")
    return float(value)


class ErrorBudget:
    """The options of the error budget and the pools it learns (one per partition, in this process).

    max_error_rate: the share of judged semantic hits that may be wrong (0 < rate < 1).
    answers_match: `(query, cached_response, fresh_response) -> bool | None`, sync or async (None: cannot tell,
        no evidence); default `same_text`. A sync one runs in a worker thread unless it has `fast = True`.
    exploration_rate: the share of safe candidates computed anyway and compared (the paid explorations).
    unverified_exploration_rate: the same for an entry that has not yet agreed at that similarity or closer.
    confidence: the one-sided confidence of the bound the served threshold must keep (Wilson; see the module).
    min_evidence: effective judged outcomes a threshold needs before it can be trusted at all.
    comparator_timeout: seconds one comparison may take (then it is no evidence, counted).
    max_pending: comparisons waiting at once; more are skipped (counted), so a slow judge cannot pile up work.
    seed: of the exploration draws (None: random).
    """

    def __init__(
        self,
        max_error_rate: float,
        answers_match: AnswersMatch | None = None,
        *,
        exploration_rate: float = DEFAULT_EXPLORATION_RATE,
        unverified_exploration_rate: float = DEFAULT_UNVERIFIED_EXPLORATION_RATE,
        confidence: float = DEFAULT_CONFIDENCE,
        min_evidence: float = DEFAULT_MIN_EVIDENCE,
        comparator_timeout: float = DEFAULT_COMPARATOR_TIMEOUT,
        max_pending: int = DEFAULT_MAX_PENDING,
        seed: int | None = None,
    ) -> None:
        self.max_error_rate = _check_rate(max_error_rate, "max_error_rate", low=0.0, high=1.0)
        if answers_match is not None and not callable(answers_match):
            raise ConfigurationError("answers_match must be a callable (query, cached, fresh) -> bool | None")
        self.answers_match: AnswersMatch = answers_match or same_text
        self.exploration_rate = _check_rate(exploration_rate, "exploration_rate", low=0.0, high=1.0, closed_low=True)
        self.unverified_exploration_rate = _check_rate(
            unverified_exploration_rate, "unverified_exploration_rate", low=0.0, high=1.0, closed_low=True
        )
        self.confidence = _check_rate(confidence, "confidence", low=0.5, high=1.0)
        if isinstance(min_evidence, bool) or not isinstance(min_evidence, (int, float)) or not min_evidence >= 1:
            raise ConfigurationError(f"min_evidence must be a number >= 1, got {shown(min_evidence)}")
        self.min_evidence = float(min_evidence)
        if (
            isinstance(comparator_timeout, bool)
            or not isinstance(comparator_timeout, (int, float))
            or not 0 < comparator_timeout <= 3600
        ):
            raise ConfigurationError(
                f"comparator_timeout must be seconds in (0, 3600], got {shown(comparator_timeout)}"
            )
        self.comparator_timeout = float(comparator_timeout)
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ConfigurationError(f"max_pending must be an integer >= 1, got {shown(max_pending)}")
        self.max_pending = max_pending
        self.z = NormalDist().inv_cdf(self.confidence)
        self._random = random.Random(seed)
        self._pools: OrderedDict[str, PoolEvidence] = OrderedDict()
        self._lock = threading.Lock()

    def pool(self, partition: str) -> PoolEvidence:
        with self._lock:
            pool = self._pools.get(partition)
            if pool is None:
                pool = self._pools[partition] = PoolEvidence(self.min_evidence)
                if len(self._pools) > _MAX_POOLS:
                    self._pools.popitem(last=False)
            else:
                self._pools.move_to_end(partition)
            return pool

    def pools(self) -> dict[str, PoolEvidence]:
        with self._lock:
            return dict(self._pools)

    def decide(
        self, partition: str, similarity: float, floor: float, computes: bool, verified: bool = True
    ) -> tuple[Decision, float]:
        """What to do with a semantic candidate at `similarity` that passed every other check: serve it,
        explore it (safe, computed anyway), check it (unsafe, computed as a miss) or, without a compute, not
        serve it (unsafe); and the probability that it was drawn for exploration (1 when not explored).

        `verified`: the entry itself has agreed at this similarity or a lower one. A safe candidate of an entry
        not verified so close is explored at `unverified_exploration_rate`: wrong answers come in clusters (one
        entry answering every wording of another question, and since served queries are not stored, nothing
        else takes its place), and the entry's first uses are where a cluster is caught."""
        pool = self.pool(partition)
        threshold = pool.threshold
        safe = threshold is not None and similarity >= max(threshold, floor)
        rate = self.exploration_rate
        if not verified:  # once the bound is past half the budget, the closer it gets, the more are explored
            extra = max(0.0, self.unverified_exploration_rate - rate)
            rate += extra * max(0.0, 2.0 * pool.pressure - 1.0) ** 2
        drawn = 1.0
        if safe and computes and rate and self._draw() < rate:
            decision: Decision = "explore"
            drawn = rate
        elif safe:
            decision = "serve"
        else:
            decision = "check" if computes else "unsafe"
        pool.record_candidate(similarity, served=decision == "serve")
        return decision, drawn

    def _draw(self) -> float:
        with self._lock:
            return self._random.random()

    def record(
        self, partition: str, similarity: float, agreed: bool | None, floor: float, drawn: float | None = None
    ) -> PoolEvidence:
        """Add one outcome to the partition's pool and learn again from it (`drawn`: the probability with which
        an explored candidate was drawn; None for a check or feedback)."""
        pool = self.pool(partition)
        pool.record_outcome(similarity, agreed, None if drawn is None else 1.0 / drawn)
        pool.relearn(self.max_error_rate, self.z, floor, self.min_evidence)
        return pool

    async def judge(self, query: str, cached: Any, fresh: Any) -> bool | None:
        """The comparator's verdict within `comparator_timeout` (raises what it raises, TimeoutError, or
        TypeError for an answer that is not True, False or None)."""
        check = self.answers_match
        if inspect.iscoroutinefunction(check) or inspect.iscoroutinefunction(type(check).__call__):
            outcome = await asyncio.wait_for(check(query, cached, fresh), self.comparator_timeout)
        elif getattr(check, "fast", False):
            outcome = check(query, cached, fresh)
        else:
            outcome = await asyncio.wait_for(asyncio.to_thread(check, query, cached, fresh), self.comparator_timeout)
        if inspect.isawaitable(outcome):
            outcome = await asyncio.wait_for(outcome, self.comparator_timeout)
        if outcome is not None and not isinstance(outcome, (bool, np.bool_)):
            raise TypeError(f"answers_match returned {type(outcome).__name__}; expected True, False or None")
        return None if outcome is None else bool(outcome)

    def report(self) -> dict[str, Any]:
        """What the budget measured, for get_stats(): the served error estimate over every pool, its bound,
        whether the budget is met, and each pool's threshold and evidence."""
        pools = self.pools()
        total = wrong = spread = 0.0
        sums = np.zeros(3)
        partitions: dict[str, Any] = {}
        states = []
        for partition, pool in pools.items():
            weight, errors, variance = pool.served_totals()
            total, wrong, spread = total + weight, wrong + errors, spread + variance
            with pool._lock:
                sums += pool.explored
            states.append(pool.met)
            partitions[partition] = {
                "served_threshold": pool.threshold,
                "error_budget_met": pool.met,
                "judged": int(pool.judged.sum()),
                "wrong": int(pool.wrong.sum()),
                "measured_floor": None if pool.floor is None else {"error": pool.floor[0], "threshold": pool.floor[1]},
            }
        if total > 0 and spread > 0:
            estimated: float | None = wrong / total
            upper: float | None = wilson_bounds(wrong / total, total * total / spread, self.z)[1]
        else:
            estimated = upper = None
        weights, squares, explored_wrong = (float(value) for value in sums)
        explored = None if weights <= 0 else {
            "error": explored_wrong / weights, "effective_n": weights * weights / squares,
            "upper": wilson_bounds(explored_wrong / weights, weights * weights / squares, self.z)[1]}  # fmt: skip
        if any(state is False for state in states):
            met: bool | None = False
        elif states and all(state is True for state in states):
            met = True
        else:
            met = None
        return {
            "estimated_error_rate": estimated,
            "estimated_error_upper": upper,
            "error_budget_met": met,
            "error_budget": {
                "max_error_rate": self.max_error_rate,
                "confidence": self.confidence,
                "bound": "one-sided Wilson score bound at the stated confidence of the served hits' error, "
                "post-stratified by similarity over every comparison, with a stratified effective n",
                "explorations_alone": explored,
                "exploration_rate": self.exploration_rate,
                "partitions": partitions,
            },
        }


__all__ = [
    "BIN_WIDTH",
    "AnswerSimilarity",
    "ErrorBudget",
    "Estimate",
    "PoolEvidence",
    "normalized_answer",
    "read_evidence",
    "same_text",
    "verified_at",
    "wilson_bounds",
    "with_outcome",
]
