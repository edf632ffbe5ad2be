"""Serving a tuned setup (the folder `semantic-llm-cache tune` writes) with the light install: onnxruntime,
tokenizers and numpy, no torch.

- `TunedEmbedder(folder)`: the fine-tuned bi-encoder's ONNX graph, named `tuned:<sha256 prefix of the graph>`,
  so its vectors never share a partition with the base model's (or another tuning's).
- `CrossEncoderVerifier`: the cross-encoder reads the query and each candidate prompt together and scores the
  pair; a lookup's candidates run as one batch in a worker thread (off the event loop), under a timeout.
- `LearnedVerifier`: gradient-boosted trees over the cross-encoder's logit, the cosine, the answer guard's verdict
  and cheap text features (trees in the manifest, numpy at serve time), used when it measured better than the
  cross-encoder alone.
- `load_tuned(folder)`: the embedder, the verifiers and the thresholds the manifest states.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semantic_llm_cache.embeddings.onnx import OnnxEmbedder, OnnxSentenceModel, _session, length_groups
from semantic_llm_cache.errors import ConfigurationError
from semantic_llm_cache.guard import guard_refusal
from semantic_llm_cache.verifiers import DEFAULT_VERIFIER_TIMEOUT, Candidate, Verdict, checked_timeout

MANIFEST = "manifest.json"
#: the manifest format this version writes and reads (2: the learned verifier is gradient-boosted trees)
TUNED_FORMAT = 2
TUNED_PREFIX = "tuned:"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_WORD = re.compile(r"\w+")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class TunedEmbedder(OnnxEmbedder):
    """A fine-tuned sentence model from its ready ONNX graph (`model_dir/model.onnx` + the tokenizer and pooling
    files of its sentence-transformers folder): nothing is exported, torch is never imported."""

    def __init__(
        self, model_dir: str | Path, *, name: str | None = None, sha256: str | None = None, **options: Any
    ) -> None:
        folder = Path(model_dir)
        graph = folder / "model.onnx"
        if not graph.is_file():
            raise ConfigurationError(f"{folder} holds no model.onnx: not a tuned embedder folder")
        digest = sha256 or _sha256(graph)
        super().__init__(str(folder), name=name or f"{TUNED_PREFIX}{digest[:16]}", **options)
        self.graph_file = graph

    def _load_model(self) -> Any:
        model = OnnxSentenceModel(str(self._model_path), self.graph_file, threads=self.threads)
        self._dimension = model.dimension
        return model


class CrossEncoderScorer:
    """The cross-encoder's ONNX graph with its tokenizer: `logits(query, prompts)`, one forward pass per batch of
    similar lengths. Thread-safe (onnxruntime sessions may run concurrently)."""

    def __init__(self, model_dir: str | Path, threads: int | None = None, graph: str = "model-int8.onnx") -> None:
        from tokenizers import Tokenizer

        folder = Path(model_dir)
        if not (folder / graph).is_file():
            raise ConfigurationError(f"{folder} holds no {graph}: not a tuned cross-encoder folder")
        config = json.loads((folder / "cross_encoder.json").read_text())
        self.max_length = int(config.get("max_length", 128))
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.session = _session(folder / graph, threads or min(2, os.cpu_count() or 1))
        self.input_names = [node.name for node in self.session.get_inputs()]

    def logits(self, query: str, prompts: Sequence[str]) -> np.ndarray:
        return self.pair_logits([(query, prompt) for prompt in prompts])

    async def score(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """The logit of each candidate's (query, prompt), computed in a worker thread (off the event loop)."""
        return await asyncio.to_thread(
            self.pair_logits, [(candidate.query, candidate.prompt) for candidate in candidates]
        )

    def pair_logits(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(list(pairs))
        out = np.zeros(len(encodings), dtype=np.float32)
        for group in length_groups([len(encoding.ids) for encoding in encodings]):
            longest = max(len(encodings[row].ids) for row in group)
            arrays = {name: np.zeros((len(group), longest), dtype=np.int64) for name in _INPUTS}
            for at, row in enumerate(group):
                encoding = encodings[row]
                size = len(encoding.ids)
                arrays["input_ids"][at, :size] = encoding.ids
                arrays["attention_mask"][at, :size] = encoding.attention_mask
                arrays["token_type_ids"][at, :size] = encoding.type_ids
            out[group] = self.session.run(None, {name: arrays[name] for name in self.input_names})[0].reshape(-1)
        return out


def sigmoid(values: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(values, -50, 50))), dtype=np.float64)


_STOP_WORDS = frozenset(
    _WORD.findall(
        "a an the of to in on for and or is are be what how why which who when where do does can i you my your it "
        "this that with as at by from"
    )
)
_NEGATIONS = frozenset(("not", "no", "never", "without"))
#: the learned verifier's inputs, in order (the manifest names them; a folder whose list differs is refused)
LEARNED_FEATURES = (
    "ce_logit",
    "cosine",
    "guard_allows",
    "word_jaccard",
    "content_word_jaccard",
    "char_trigram_jaccard",
    "query_only_words",
    "prompt_only_words",
    "length_difference",
    "query_log_chars",
    "prompt_log_chars",
    "same_first_word",
    "digits_differ",
    "negation_differs",
    "same_last_words",
)


def _jaccard(a: set[str], b: set[str]) -> float:
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def _trigrams(words: list[str]) -> set[str]:
    text = " ".join(words)
    return {text[at : at + 3] for at in range(max(0, len(text) - 2))}


def text_features(query: str, prompt: str) -> list[float]:
    """Cheap pair features (words, content words, character trigrams, lengths, first/last words, digits,
    negation): what a cosine misses about two short texts (microseconds for a question)."""
    words_a, words_b = _WORD.findall(query.casefold()), _WORD.findall(prompt.casefold())
    set_a, set_b = set(words_a), set(words_b)
    content_a, content_b = set_a - _STOP_WORDS, set_b - _STOP_WORDS
    length_a, length_b = len(query), len(prompt)
    digits = float(sorted(re.findall(r"\d+", query)) != sorted(re.findall(r"\d+", prompt)))
    negation = float(bool(set_a & _NEGATIONS or "n't" in query) != bool(set_b & _NEGATIONS or "n't" in prompt))
    return [
        _jaccard(set_a, set_b),
        _jaccard(content_a, content_b),
        _jaccard(_trigrams(words_a), _trigrams(words_b)),
        float(len(content_a - content_b)),
        float(len(content_b - content_a)),
        abs(length_a - length_b) / max(length_a, length_b, 1),
        math.log1p(length_a),
        math.log1p(length_b),
        float(words_a[:1] == words_b[:1]),
        digits,
        negation,
        float(words_a[-3:] == words_b[-3:]),
    ]


def learned_features(logit: float, similarity: float, query: str, prompt: str) -> list[float]:
    """The learned verifier's row for one candidate, in `LEARNED_FEATURES` order."""
    allows = float(guard_refusal(query, prompt) is None)
    return [logit, similarity, allows, *text_features(query, prompt)]


@dataclass(frozen=True)
class TreeEnsemble:
    """Gradient-boosted decision trees (trained by scikit-learn's HistGradientBoostingClassifier in `tune`),
    evaluated with numpy: p = sigmoid(baseline + the sum of one leaf value per tree). All trees are walked at
    once, one level per step, so a lookup's few candidates cost tens of microseconds.

    Node arrays are flat over all trees: `feature` (-1 at a leaf), `threshold` (go left when x <= threshold),
    `left`/`right` (absolute node indices), `missing_left`, `value` (a leaf's contribution); `roots` index each
    tree's first node."""

    baseline: float
    roots: list[int]
    feature: list[int]
    threshold: list[float]
    left: list[int]
    right: list[int]
    missing_left: list[bool]
    value: list[float]
    features: list[str] = field(default_factory=lambda: list(LEARNED_FEATURES))

    def __post_init__(self) -> None:
        arrays = {
            "feature": np.asarray(self.feature, dtype=np.int64),
            "threshold": np.asarray(self.threshold, dtype=np.float64),
            "left": np.asarray(self.left, dtype=np.int64),
            "right": np.asarray(self.right, dtype=np.int64),
            "missing_left": np.asarray(self.missing_left, dtype=bool),
            "value": np.asarray(self.value, dtype=np.float64),
            "roots": np.asarray(self.roots, dtype=np.int64),
        }
        sizes = {len(arrays[name]) for name in ("feature", "threshold", "left", "right", "missing_left", "value")}
        nodes = len(arrays["feature"])
        inner = arrays["feature"] >= 0
        if (
            len(sizes) != 1
            or not len(arrays["roots"])
            or arrays["roots"].min() < 0
            or arrays["roots"].max() >= nodes
            or (inner & ((arrays["left"] < 0) | (arrays["left"] >= nodes))).any()
            or (inner & ((arrays["right"] < 0) | (arrays["right"] >= nodes))).any()
            or (arrays["feature"] >= len(self.features)).any()
        ):
            raise ConfigurationError("the learned verifier's trees are malformed (re-run semantic-llm-cache tune)")
        object.__setattr__(self, "_arrays", arrays)

    def probability(self, rows: np.ndarray) -> np.ndarray:
        arrays: dict[str, np.ndarray] = self._arrays  # type: ignore[attr-defined]
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, len(self.features))
        nodes = np.broadcast_to(arrays["roots"], (len(rows), len(arrays["roots"]))).copy()
        row_index = np.arange(len(rows))[:, None]
        while True:
            feature = arrays["feature"][nodes]
            inner = feature >= 0
            if not inner.any():
                break
            values = rows[row_index, np.maximum(feature, 0)]
            go_left = np.where(np.isnan(values), arrays["missing_left"][nodes], values <= arrays["threshold"][nodes])
            nodes = np.where(inner, np.where(go_left, arrays["left"][nodes], arrays["right"][nodes]), nodes)
        return sigmoid(self.baseline + arrays["value"][nodes].sum(axis=1))

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": "gradient-boosted trees",
            "baseline": self.baseline,
            "roots": self.roots,
            "feature": self.feature,
            "threshold": self.threshold,
            "left": self.left,
            "right": self.right,
            "missing_left": self.missing_left,
            "value": self.value,
            "features": self.features,
        }

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> TreeEnsemble:
        if value.get("kind") != "gradient-boosted trees" or list(value.get("features", [])) != list(LEARNED_FEATURES):
            raise ConfigurationError(
                "this tuned folder's learned verifier was made by another version: re-run semantic-llm-cache tune "
                "on the same pairs (the trained models are reused; only the calibration runs again)"
            )
        return cls(
            float(value["baseline"]),
            [int(v) for v in value["roots"]],
            [int(v) for v in value["feature"]],
            [float(v) for v in value["threshold"]],
            [int(v) for v in value["left"]],
            [int(v) for v in value["right"]],
            [bool(v) for v in value["missing_left"]],
            [float(v) for v in value["value"]],
            list(value["features"]),
        )


class _ScoredVerifier:
    """What the tuned verifiers share: a cross-encoder scorer, a probability to accept at, a name, a timeout."""

    def __init__(self, scorer: CrossEncoderScorer | str | Path, threshold: float, name: str, timeout: float) -> None:
        self.scorer = scorer if isinstance(scorer, CrossEncoderScorer) else CrossEncoderScorer(scorer)
        if not 0 <= threshold <= 1:
            raise ConfigurationError(f"a {name} verifier's threshold is a probability in [0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.name = name
        self.timeout = checked_timeout(timeout)


class CrossEncoderVerifier(_ScoredVerifier):
    """Accepts a candidate when the cross-encoder's probability that it means the same as the query reaches
    `threshold`. The batch runs in a worker thread; the engine bounds it by `timeout` (fail-open: a miss)."""

    def __init__(
        self,
        scorer: CrossEncoderScorer | str | Path,
        threshold: float,
        *,
        name: str = "cross-encoder",
        timeout: float = DEFAULT_VERIFIER_TIMEOUT,
    ) -> None:
        super().__init__(scorer, threshold, name, timeout)

    async def verify(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        if not candidates:
            return []
        probabilities = sigmoid(await self.scorer.score(candidates))
        return [Verdict(bool(p >= self.threshold), score=float(p)) for p in probabilities]


class LearnedVerifier(_ScoredVerifier):
    """Gradient-boosted trees over the cross-encoder's logit, the cosine, the answer guard's verdict and cheap
    text features (`LEARNED_FEATURES`); accepts at `threshold` (a probability). Trained by `tune` on the calibration
    part; its trees live in the manifest and run on numpy."""

    def __init__(
        self,
        scorer: CrossEncoderScorer | str | Path,
        model: TreeEnsemble,
        threshold: float,
        *,
        name: str = "learned",
        timeout: float = DEFAULT_VERIFIER_TIMEOUT,
    ) -> None:
        super().__init__(scorer, threshold, name, timeout)
        self.model = model

    async def verify(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        if not candidates:
            return []
        probabilities = await asyncio.to_thread(self.probabilities, candidates)
        return [Verdict(bool(p >= self.threshold), score=float(p)) for p in probabilities]

    def probabilities(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """The trees' probability for each candidate: the cross-encoder's batch, then the text features (which
        grow with the prompts' length), all in the calling (worker) thread."""
        logits = self.scorer.pair_logits([(c.query, c.prompt) for c in candidates])
        rows = np.array(
            [
                learned_features(float(logit), c.similarity, c.query, c.prompt)
                for logit, c in zip(logits, candidates, strict=True)
            ]
        )
        return self.model.probability(rows)


@dataclass
class TunedSetup:
    """What a tuned folder serves with: the embedder, the ordered verifiers, the candidate threshold, the guard."""

    directory: Path
    manifest: dict[str, Any]
    embedder: TunedEmbedder
    verifiers: list[Any]
    threshold: float
    answer_guard: bool
    candidates: int = 4


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    folder = Path(directory)
    path = folder / MANIFEST
    if not path.is_file():
        raise ConfigurationError(
            f"{folder} is not a tuned setup (no {MANIFEST}; make one with semantic-llm-cache tune)"
        )
    manifest = json.loads(path.read_text())
    if not isinstance(manifest, dict) or "thresholds" not in manifest:
        raise ConfigurationError(f"{path} states no thresholds")
    if manifest.get("format") != TUNED_FORMAT:
        raise ConfigurationError(
            f"{path} is format {manifest.get('format')!r}; this version reads format {TUNED_FORMAT}: re-run "
            "semantic-llm-cache tune on the same pairs into the same folder (the trained models are reused; only "
            "the calibration runs again)"
        )
    return manifest


def tuned_embedder(directory: str | os.PathLike[str], **options: Any) -> TunedEmbedder:
    """Only the embedder of a tuned folder (what `warm --tuned` stores with)."""
    folder = Path(directory)
    models = read_manifest(folder)["models"]
    return TunedEmbedder(
        folder / Path(models["embedder"]["path"]).parent, sha256=str(models["embedder"]["sha256"]), **options
    )


def load_tuned(directory: str | os.PathLike[str], *, verifier_timeout: float = DEFAULT_VERIFIER_TIMEOUT) -> TunedSetup:
    """The tuned setup in `directory` as the manifest states it (hashes of the graphs checked)."""
    folder = Path(directory)
    manifest = read_manifest(folder)
    models = manifest["models"]
    for key in ("embedder", "cross_encoder"):
        path = folder / models[key]["path"]
        if not path.is_file():
            raise ConfigurationError(f"{path} is missing: the tuned setup in {folder} is incomplete")
        if path.stat().st_size != int(models[key].get("bytes", path.stat().st_size)) or _sha256(path) != str(
            models[key]["sha256"]
        ):  # the name of the embedder's partitions rests on this hash: a swapped graph must not borrow it
            raise ConfigurationError(f"{path} is not the file the manifest names (its size or sha256 differs)")
    thresholds = manifest["thresholds"]
    embedder = tuned_embedder(folder)
    cross_graph = Path(models["cross_encoder"]["path"])
    scorer = CrossEncoderScorer(folder / cross_graph.parent, graph=cross_graph.name)
    verifier_kind = thresholds.get("verifier", "cross-encoder")
    verifiers: list[Any]
    if verifier_kind == "learned":
        model = TreeEnsemble.from_dict(manifest["learned_verifier"])
        verifiers = [LearnedVerifier(scorer, model, float(thresholds["verifier_threshold"]), timeout=verifier_timeout)]
    else:
        verifiers = [CrossEncoderVerifier(scorer, float(thresholds["verifier_threshold"]), timeout=verifier_timeout)]
    threshold = float(thresholds["candidate_threshold"])
    if not math.isfinite(threshold) or not 0 < threshold <= 1:
        raise ConfigurationError(f"the manifest's candidate threshold {threshold} is not a cosine in (0, 1]")
    guard = bool(thresholds.get("answer_guard", True))
    return TunedSetup(folder, manifest, embedder, verifiers, threshold, guard, int(thresholds.get("candidates", 4)))


__all__ = [
    "LEARNED_FEATURES",
    "TUNED_FORMAT",
    "CrossEncoderScorer",
    "CrossEncoderVerifier",
    "LearnedVerifier",
    "TreeEnsemble",
    "TunedEmbedder",
    "TunedSetup",
    "learned_features",
    "load_tuned",
    "read_manifest",
    "sigmoid",
    "text_features",
    "tuned_embedder",
]
