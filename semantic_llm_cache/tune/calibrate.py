"""Choosing the thresholds of a tuned setup with the cache protocol, and measuring any setup the same way.

The protocol of ../shared/data/README.md (and `calibration.sweep`): store each distinct `text_a`, look up each
`text_b`. A lookup is an exact hit when the text is stored; otherwise the `candidates` nearest stored prompts at or
above the candidate threshold are tried in order (most similar first): the first one the answer guard (when on)
and the verifier (when there is one) accept is served, as the engine does. A served prompt is judged correct
when it is the query's own text, by the pair's label when the data labels (query, served), unlabeled otherwise.
Precision = correct / labeled hits; strict precision counts unlabeled hits as wrong; hit rate = hits / lookups.
Numpy only (the scores come from the ONNX models): it runs with the light install.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semantic_llm_cache.calibration import LabeledPair, embed_texts, nearest_candidates
from semantic_llm_cache.embeddings.base import Embedder
from semantic_llm_cache.errors import ConfigurationError
from semantic_llm_cache.guard import guard_refusal
from semantic_llm_cache.scope import normalize_prompt
from semantic_llm_cache.tune.split import pair_groups, text_identity

#: labeled hits a threshold point needs before its precision is trusted
MIN_LABELED_HITS = 30
#: the chosen point's precision must clear the target by this many standard errors (a one-sided ~69% bound):
#: the best of many grid points on one sample reads optimistic, and the margin pays for that (on Quora, held-out
#: precision stayed above the target at 0.5 and at 0; 1.0 gave up hits for nothing)
DEFAULT_MARGIN_Z = 0.5
#: cosines to try as the candidate threshold: every 0.01, and every 0.0025 from 0.90 (a tuned embedder packs its
#: paraphrases close to 1, where a step of 0.01 moves many lookups at once)
CANDIDATE_GRID = tuple(
    sorted({round(0.40 + 0.01 * step, 2) for step in range(50)} | {round(0.90 + 0.0025 * s, 4) for s in range(39)})
)
#: folds of the calibration part (by connected groups) for the learned verifier's out-of-fold scores
LEARNED_FOLDS = 5
VERIFIER_GRID = (*(round(0.02 * step, 2) for step in range(1, 50)), 0.99, 0.995)


@dataclass
class CandidateTable:
    """Per lookup: its nearest stored prompts (best first), their cosines, the judged verdict of serving each
    (1 correct, 0 wrong, -1 unlabeled), whether the answer guard allows each, and whether it is an exact hit."""

    queries: list[str]
    stored: list[str]
    indices: np.ndarray
    cosines: np.ndarray
    judged: np.ndarray
    allowed: np.ndarray
    exact: np.ndarray
    labels: np.ndarray

    @property
    def size(self) -> int:
        return len(self.queries)


@dataclass(frozen=True)
class Point:
    """The quality of one setting under the cache protocol."""

    lookups: int
    hits: int
    correct: int
    wrong: int
    unlabeled: int

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    @property
    def labeled(self) -> int:
        return self.correct + self.wrong

    @property
    def precision(self) -> float:
        return self.correct / self.labeled if self.labeled else 1.0

    @property
    def strict_precision(self) -> float:
        return self.correct / self.hits if self.hits else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "lookups": self.lookups,
            "hits": self.hits,
            "correct": self.correct,
            "wrong": self.wrong,
            "unlabeled": self.unlabeled,
            "hit_rate": round(self.hit_rate, 4),
            "hit_rate_ci95": [round(x, 4) for x in wilson(self.hits, self.lookups)],
            "precision": round(self.precision, 4),
            "precision_ci95": [round(x, 4) for x in wilson(self.correct, self.labeled)],
            "strict_precision": round(self.strict_precision, 4),
        }


def wilson(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def candidate_table(pairs: Sequence[LabeledPair], vectors: Callable[[list[str]], np.ndarray], k: int) -> CandidateTable:
    """The cache protocol's lookups over `pairs`, with `vectors(texts)` as the embedder (unit rows)."""
    stored = list(dict.fromkeys(normalize_prompt(pair.text_a) for pair in pairs))
    position = {text: row for row, text in enumerate(stored)}
    queries = [normalize_prompt(pair.text_b) for pair in pairs]
    known = {frozenset((text_identity(pair.text_a), text_identity(pair.text_b))): pair.label for pair in pairs}
    distinct = list(dict.fromkeys(stored + queries))
    matrix = vectors(distinct)
    row_of = {text: row for row, text in enumerate(distinct)}
    indices, cosines = nearest_candidates(
        matrix[[row_of[text] for text in queries]], matrix[[row_of[text] for text in stored]], k
    )

    def verdict(query: str, served: str) -> int:
        if text_identity(served) == text_identity(query):
            return 1
        return known.get(frozenset((text_identity(served), text_identity(query))), -1)

    judged = np.array([[verdict(q, stored[j]) for j in row] for q, row in zip(queries, indices, strict=True)])
    allowed = np.array(
        [[guard_refusal(q, stored[j]) is None for j in row] for q, row in zip(queries, indices, strict=True)]
    )
    exact = np.array([text in position for text in queries])
    labels = np.array([pair.label for pair in pairs])
    return CandidateTable(queries, stored, indices, np.minimum(cosines, 1.0), judged, allowed, exact, labels)


def embed_with(embedder: Embedder) -> Callable[[list[str]], np.ndarray]:
    def vectors(texts: list[str]) -> np.ndarray:
        matrix = asyncio.run(embed_texts(texts, embedder, batch_size=128))
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return np.asarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)

    return vectors


def serve(
    table: CandidateTable,
    candidate_threshold: float,
    guard: bool,
    scores: np.ndarray | None = None,
    verifier_threshold: float = 0.0,
) -> Point:
    """The outcome of every lookup at one setting: the first candidate passing all checks is served."""
    passes = table.cosines >= candidate_threshold
    if guard:
        passes &= table.allowed
    if scores is not None:
        passes &= scores >= verifier_threshold
    served = passes.any(axis=1)
    first = passes.argmax(axis=1)
    verdicts = np.where(served, table.judged[np.arange(table.size), first], -2)
    verdicts = np.where(table.exact, 1, verdicts)
    return Point(
        table.size,
        int((verdicts > -2).sum()),
        int((verdicts == 1).sum()),
        int((verdicts == 0).sum()),
        int((verdicts == -1).sum()),
    )


def candidate_scores(
    table: CandidateTable, score_pairs: Callable[[list[tuple[str, str]]], np.ndarray], floor: float
) -> np.ndarray:
    """Scores of (query, candidate) for every candidate at or above `floor` (-inf below: never verified)."""
    scores = np.full(table.cosines.shape, -np.inf)
    rows, columns = np.nonzero(table.cosines >= floor)
    if len(rows):
        pairs = [(table.queries[r], table.stored[table.indices[r, c]]) for r, c in zip(rows, columns, strict=True)]
        scores[rows, columns] = score_pairs(pairs)
    return scores


@dataclass(frozen=True)
class Choice:
    candidate_threshold: float
    verifier_threshold: float
    guard: bool
    point: Point


def choose(
    table: CandidateTable,
    scores: np.ndarray,
    target: float,
    margin_z: float = DEFAULT_MARGIN_Z,
    min_hits: int = MIN_LABELED_HITS,
    candidate_grid: Sequence[float] = CANDIDATE_GRID,
    verifier_grid: Sequence[float] = VERIFIER_GRID,
    guards: Sequence[bool] = (True,),
) -> Choice | None:
    """The setting with the highest hit rate whose precision clears `target` by `margin_z` standard errors.

    The answer guard stays on by default: its rules (numbers, negation, names) hold in any domain, while a verifier
    learned on one domain may not (on STS-B, tuned on Quora, setups chosen with the guard off served more wrong
    answers than the base default)."""
    best: Choice | None = None
    for guard in guards:
        for candidate_threshold in candidate_grid:
            for verifier_threshold in verifier_grid:
                point = serve(table, candidate_threshold, guard, scores, verifier_threshold)
                if point.labeled < min_hits or not _clears(point, target, margin_z):
                    continue
                if best is None or point.hits > best.point.hits:
                    best = Choice(candidate_threshold, verifier_threshold, guard, point)
    return best


def _clears(point: Point, target: float, margin_z: float) -> bool:
    p = point.precision
    return p - margin_z * math.sqrt(max(p * (1 - p), 1e-9) / point.labeled) >= target


def frontier(table: CandidateTable, scores: np.ndarray | None, guard: bool = True) -> list[tuple[float, float]]:
    """(hit rate, precision) over the grid: the best precision reached at each hit rate (for the plot)."""
    points: list[tuple[float, float]] = []
    for candidate_threshold in CANDIDATE_GRID:
        for verifier_threshold in VERIFIER_GRID if scores is not None else (0.0,):
            point = serve(table, candidate_threshold, guard, scores, verifier_threshold)
            if point.labeled >= MIN_LABELED_HITS:
                points.append((point.hit_rate, point.precision))
    points.sort()
    upper: list[tuple[float, float]] = []
    for hit_rate, precision in reversed(points):
        if not upper or precision > upper[-1][1]:
            upper.append((hit_rate, precision))
    return sorted(upper)


def fit_trees(rows: np.ndarray, labels: np.ndarray, seed: int = 0) -> Any:
    """Gradient-boosted trees (scikit-learn, the [tune] extra) on the learned verifier's rows, exported to the
    numpy `TreeEnsemble` that serves them; the export is checked against scikit-learn's own probabilities."""
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - the [tune] extra installs it
        raise ConfigurationError(
            "tune trains its learned verifier with scikit-learn: pip install 'async-semantic-llm-cache[tune]'"
        ) from exc
    from semantic_llm_cache.tuned import TreeEnsemble

    model = HistGradientBoostingClassifier(
        max_iter=200,
        learning_rate=0.05,
        max_leaf_nodes=15,
        min_samples_leaf=40,
        l2_regularization=1.0,
        early_stopping=False,
        random_state=seed,
    )
    model.fit(rows, labels.astype(int))
    roots: list[int] = []
    columns: dict[str, list[Any]] = {name: [] for name in ("feature", "threshold", "left", "right", "missing", "value")}
    for (tree,) in model._predictors:  # binary classification: one tree per boosting iteration
        nodes = tree.nodes
        offset = len(columns["feature"])
        roots.append(offset)
        for node in nodes:
            leaf = bool(node["is_leaf"])
            columns["feature"].append(-1 if leaf else int(node["feature_idx"]))
            columns["threshold"].append(float(node["num_threshold"]))
            columns["left"].append(-1 if leaf else offset + int(node["left"]))
            columns["right"].append(-1 if leaf else offset + int(node["right"]))
            columns["missing"].append(bool(node["missing_go_to_left"]))
            columns["value"].append(float(node["value"]) if leaf else 0.0)
    ensemble = TreeEnsemble(
        float(np.ravel(model._baseline_prediction)[0]),
        roots,
        columns["feature"],
        columns["threshold"],
        columns["left"],
        columns["right"],
        columns["missing"],
        columns["value"],
    )
    if not np.allclose(ensemble.probability(rows), model.predict_proba(rows)[:, 1], atol=1e-6):
        raise RuntimeError("the exported trees disagree with scikit-learn's (an unsupported scikit-learn version?)")
    return ensemble


def _learned_rows(table: CandidateTable, logits: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    from semantic_llm_cache.tuned import LEARNED_FEATURES, learned_features

    rows, columns = np.nonzero(table.cosines >= floor)
    features = np.array(
        [
            learned_features(
                float(logits[r, c]), float(table.cosines[r, c]), table.queries[r], table.stored[table.indices[r, c]]
            )
            for r, c in zip(rows, columns, strict=True)
        ]
    ).reshape(len(rows), len(LEARNED_FEATURES))
    return features, np.stack([rows, columns], axis=1)


def _scattered(table: CandidateTable, where: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-candidate scores from the values of the candidates at `where`; -1 (never accepted) elsewhere."""
    scores = np.full(table.cosines.shape, -1.0)
    if len(where):
        scores[where[:, 0], where[:, 1]] = values
    return scores


def _tables(
    directory: Path, pairs: Sequence[LabeledPair], k: int, floor: float
) -> tuple[CandidateTable, CandidateTable, np.ndarray]:
    """The candidate tables of `pairs` with the base default embedder and with the tuned folder's, and the
    tuned cross-encoder's logits of the tuned table's candidates at or above `floor` (-inf below)."""
    from semantic_llm_cache.embeddings.onnx import OnnxEmbedder
    from semantic_llm_cache.tuned import CrossEncoderScorer, TunedEmbedder

    base = OnnxEmbedder(max_batch_size=128)
    base_table = candidate_table(pairs, embed_with(base), k)
    base.close()
    tuned = TunedEmbedder(directory / "embedder", max_batch_size=128)
    table = candidate_table(pairs, embed_with(tuned), k)
    tuned.close()
    scorer = CrossEncoderScorer(directory / "cross_encoder")
    return base_table, table, candidate_scores(table, scorer.pair_logits, floor)


def _probabilities(logits: np.ndarray) -> np.ndarray:
    """The cross-encoder's probabilities of the scored candidates; -1 (never accepted) for the unscored ones."""
    from semantic_llm_cache.tuned import sigmoid

    scored = np.isfinite(logits)
    return np.where(scored, sigmoid(np.where(scored, logits, 0.0)), -1.0)


def calibrate_dir(
    directory: Path,
    pairs: Sequence[LabeledPair],
    target: float,
    candidates: int = 4,
    progress: bool = True,
    margin_z: float = DEFAULT_MARGIN_Z,
    seed: int = 0,
) -> dict[str, Any]:
    """Choose the tuned folder's thresholds on the calibration `pairs`; the manifest's measured sections."""
    from semantic_llm_cache.config import DEFAULT_THRESHOLD

    floor = min(CANDIDATE_GRID)
    base_table, table, logits = _tables(directory, pairs, candidates, floor)
    probabilities = _probabilities(logits)
    cross_choice = choose(table, probabilities, target, margin_z)

    # the learned verifier: fitted on the calibration part, so its thresholds are chosen on out-of-fold scores
    # (each connected group of texts scored by trees fitted without it); the served trees are fitted on all of it
    learned: dict[str, Any] = {}
    learned_choice: Choice | None = None
    learned_scores: np.ndarray | None = None
    features, where = _learned_rows(table, np.where(np.isfinite(logits), logits, 0.0), floor)
    judged = table.judged[where[:, 0], where[:, 1]] if len(where) else np.zeros(0, dtype=int)
    labeled = judged >= 0
    if labeled.sum() >= 50 and len(set(judged[labeled].tolist())) == 2:
        groups = np.array(pair_groups(list(pairs)))
        distinct = np.unique(groups)
        drawn = np.random.default_rng(seed).integers(0, LEARNED_FOLDS, len(distinct))
        fold_of = dict(zip(distinct.tolist(), drawn.tolist(), strict=True))
        fold = np.array([fold_of[group] for group in groups.tolist()])[where[:, 0]]
        out_of_fold = np.full(len(where), -1.0)
        for held in range(LEARNED_FOLDS):
            fit = labeled & (fold != held)
            if fit.sum() < 50 or len(set(judged[fit].tolist())) < 2:
                continue  # too small a sample to fit: that fold's candidates are never accepted
            out_of_fold[fold == held] = fit_trees(features[fit], judged[fit], seed).probability(features[fold == held])
        learned_scores = _scattered(table, where, out_of_fold)
        learned_choice = choose(table, learned_scores, target, margin_z)
        learned = fit_trees(features[labeled], judged[labeled], seed).as_dict()
    use_learned = learned_choice is not None and (
        cross_choice is None or learned_choice.point.hits > cross_choice.point.hits
    )
    chosen = learned_choice if use_learned else cross_choice
    base_default = serve(base_table, DEFAULT_THRESHOLD, True)
    measured: dict[str, Any] = {
        "protocol": "cache protocol: store text_a, look up text_b, judged as in the data README",
        "on": "calibration part (texts disjoint from the train part)",
        "base_default": {
            "embedder": "default (bundled all-MiniLM-L6-v2)",
            "threshold": DEFAULT_THRESHOLD,
            "answer_guard": True,
            **base_default.as_dict(),
        },
        "cross_encoder_alone": None if cross_choice is None else _choice_dict(cross_choice),
        "learned_verifier_out_of_fold": None if learned_choice is None else _choice_dict(learned_choice),
    }
    if chosen is None:
        thresholds: dict[str, Any] = {
            "candidate_threshold": 0.99,
            "verifier_threshold": 0.99,
            "answer_guard": True,
            "verifier": "cross-encoder",
            "target_precision": target,
            "met": False,
        }
    else:
        thresholds = {
            "candidate_threshold": chosen.candidate_threshold,
            "verifier_threshold": chosen.verifier_threshold,
            "answer_guard": chosen.guard,
            "verifier": "learned" if use_learned else "cross-encoder",
            "target_precision": target,
            "margin_z": margin_z,
            "candidates": candidates,
            "met": True,
        }
        measured["tuned"] = _choice_dict(chosen)
    curves = {
        "base": frontier(base_table, None),
        "tuned_embedder": frontier(table, None),
        "tuned_with_verifier": frontier(table, probabilities, guard=bool(thresholds["answer_guard"])),
    }
    if learned_scores is not None:
        curves["tuned_with_learned_verifier_out_of_fold"] = frontier(
            table, learned_scores, guard=bool(thresholds["answer_guard"])
        )
    return {"thresholds": thresholds, "measured": measured, "learned_verifier": learned or None, "curves": curves}


def _choice_dict(choice: Choice) -> dict[str, Any]:
    return {
        "candidate_threshold": choice.candidate_threshold,
        "verifier_threshold": choice.verifier_threshold,
        "answer_guard": choice.guard,
        **choice.point.as_dict(),
    }


def write_report(directory: Path, manifest: dict[str, Any]) -> Path:
    """`report.md` (and `report.png` when matplotlib is installed): what was trained on what, chosen, measured."""
    measured = manifest["measured"]
    thresholds = manifest["thresholds"]
    split = manifest["split"]
    lines = [
        "# Tuned setup",
        "",
        f"Data: `{manifest['data']['file']}` ({manifest['data']['pairs']} pairs, sha256 "
        f"{manifest['data']['file_sha256'][:16]}...), split by connected groups of texts (seed {split['seed']}): "
        f"{split['train_pairs']} train pairs, {split['calibration_pairs']} calibration pairs.",
        "",
        f"Chosen on the calibration part for precision >= {thresholds['target_precision']}: candidate threshold "
        f"{thresholds['candidate_threshold']}, verifier ({thresholds['verifier']}) threshold "
        f"{thresholds['verifier_threshold']}, answer guard {'on' if thresholds['answer_guard'] else 'off'}.",
        "",
        f"Measured on the calibration part ({measured['protocol']}):",
        "",
        "| system | hit rate (95% CI) | precision (95% CI) | strict precision | hits | wrong | unlabeled |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [
        ("base default", measured["base_default"]),
        ("tuned (chosen)", measured.get("tuned")),
        ("cross-encoder alone", measured.get("cross_encoder_alone")),
        ("learned verifier (out of fold)", measured.get("learned_verifier_out_of_fold")),
    ]
    for label, row in rows:
        if not row:
            continue
        lines.append(
            f"| {label} | {row['hit_rate']:.3f} ({row['hit_rate_ci95'][0]:.3f}-{row['hit_rate_ci95'][1]:.3f}) | "
            f"{row['precision']:.3f} ({row['precision_ci95'][0]:.3f}-{row['precision_ci95'][1]:.3f}) | "
            f"{row['strict_precision']:.3f} | {row['hits']} | {row['wrong']} | {row['unlabeled']} |"
        )
    lines += ["", f"Seconds per stage: {manifest.get('seconds')}", ""]
    plot = _plot(directory, manifest)
    if plot is not None:
        lines += [f"![precision against hit rate]({plot.name})", ""]
    report = directory / "report.md"
    report.write_text("\n".join(lines))
    return report


def _plot(directory: Path, manifest: dict[str, Any]) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5))
    styles = {
        "base": ("base embedder, cosine + guard", "tab:grey"),
        "tuned_embedder": ("tuned embedder, cosine + guard", "tab:blue"),
        "tuned_with_verifier": ("tuned embedder + cross-encoder", "tab:green"),
        "tuned_with_learned_verifier_out_of_fold": ("tuned embedder + learned verifier (out of fold)", "tab:red"),
    }
    for key, (label, color) in styles.items():
        curve = manifest["curves"].get(key) or []
        if curve:
            axes.plot([x for x, _ in curve], [y for _, y in curve], color=color, label=label)
    base = manifest["measured"]["base_default"]
    axes.plot([base["hit_rate"]], [base["precision"]], "o", color="tab:grey", label="base default")
    tuned = manifest["measured"].get("tuned")
    if tuned:
        axes.plot([tuned["hit_rate"]], [tuned["precision"]], "*", markersize=12, color="tab:green", label="chosen")
    axes.axhline(manifest["thresholds"]["target_precision"], color="grey", linewidth=0.8)
    axes.set_xlabel("hit rate (lookups served)")
    axes.set_ylabel("precision (labeled hits)")
    axes.set_title("calibration part, cache protocol: best precision at each hit rate")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    output = directory / "report.png"
    figure.savefig(output, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return output


__all__ = [
    "CandidateTable",
    "Choice",
    "Point",
    "calibrate_dir",
    "candidate_scores",
    "candidate_table",
    "choose",
    "embed_with",
    "frontier",
    "serve",
    "wilson",
    "write_report",
]


def measure_dir(directory: Path, pairs: Sequence[LabeledPair], candidates: int | None = None) -> dict[str, Point]:
    """The cache protocol on `pairs` for the base default and the tuned folder at its chosen thresholds (and the
    tuned embedder alone, at the same candidate threshold): measurement on data the tuning never saw."""
    from semantic_llm_cache.config import DEFAULT_THRESHOLD
    from semantic_llm_cache.tuned import TreeEnsemble, read_manifest

    manifest = read_manifest(directory)
    thresholds = manifest["thresholds"]
    k = candidates or int(thresholds.get("candidates", 4))
    candidate_threshold = float(thresholds["candidate_threshold"])
    base_table, table, logits = _tables(directory, pairs, k, candidate_threshold)
    if thresholds.get("verifier") == "learned":
        model = TreeEnsemble.from_dict(manifest["learned_verifier"])
        features, where = _learned_rows(table, np.where(np.isfinite(logits), logits, 0.0), candidate_threshold)
        scores = _scattered(table, where, model.probability(features) if len(where) else np.zeros(0))
    else:
        scores = _probabilities(logits)
    guard = bool(thresholds["answer_guard"])
    return {
        "base_default": serve(base_table, DEFAULT_THRESHOLD, True),
        "tuned_embedder_alone": serve(table, candidate_threshold, guard),
        "tuned": serve(table, candidate_threshold, guard, scores, float(thresholds["verifier_threshold"])),
    }
