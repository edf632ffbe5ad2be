"""Serving a tuned setup (the folder `semantic-llm-cache tune` writes) with the light install: onnxruntime,
tokenizers and numpy, no torch.

- `TunedEmbedder(folder)`: the fine-tuned bi-encoder's ONNX graph, named `tuned:<sha256 prefix of the graph>`,
  so its vectors never share a partition with the base model's (or another tuning's).
- `CrossEncoderVerifier`: the cross-encoder reads the query and each candidate prompt together and scores the
  pair; a lookup's candidates run as one batch in a worker thread (off the event loop), under a timeout.
- `LearnedVerifier`: a logistic regression over the cross-encoder's logit, the cosine and cheap text features
  (coefficients in the manifest, numpy at serve time), used when it measured better than the cross-encoder alone.
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
from semantic_llm_cache.verifiers import DEFAULT_VERIFIER_TIMEOUT, Candidate, Verdict, checked_timeout

MANIFEST = "manifest.json"
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


def text_features(query: str, prompt: str) -> list[float]:
    """Cheap pair features: word Jaccard, relative length difference, whether the digits differ."""
    words_a, words_b = set(_WORD.findall(query.casefold())), set(_WORD.findall(prompt.casefold()))
    union = words_a | words_b
    jaccard = len(words_a & words_b) / len(union) if union else 1.0
    length = abs(len(query) - len(prompt)) / max(len(query), len(prompt), 1)
    digits = float(sorted(re.findall(r"\d+", query)) != sorted(re.findall(r"\d+", prompt)))
    return [jaccard, length, digits]


def learned_features(logit: float, similarity: float, query: str, prompt: str) -> list[float]:
    return [logit, similarity, *text_features(query, prompt)]


@dataclass(frozen=True)
class LogisticModel:
    """p = sigmoid(bias + weights . (features - mean) / scale)."""

    weights: list[float]
    bias: float
    mean: list[float]
    scale: list[float]
    features: list[str] = field(default_factory=lambda: ["ce_logit", "cosine", "jaccard", "length_diff", "digits"])

    def probability(self, rows: np.ndarray) -> np.ndarray:
        standardized = (rows - np.asarray(self.mean)) / np.asarray(self.scale)
        return sigmoid(standardized @ np.asarray(self.weights) + self.bias)

    def as_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "bias": self.bias,
            "mean": self.mean,
            "scale": self.scale,
            "features": self.features,
        }

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> LogisticModel:
        return cls(
            [float(w) for w in value["weights"]],
            float(value["bias"]),
            [float(m) for m in value["mean"]],
            [float(s) for s in value["scale"]],
            list(value.get("features", [])),
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
    """A logistic regression over the cross-encoder's logit, the cosine and cheap text features; accepts at
    `threshold` (a probability). Trained by `tune` on held-out pairs; its coefficients live in the manifest."""

    def __init__(
        self,
        scorer: CrossEncoderScorer | str | Path,
        model: LogisticModel,
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
        logits = await self.scorer.score(candidates)
        rows = np.array(
            [
                learned_features(float(logit), c.similarity, c.query, c.prompt)
                for logit, c in zip(logits, candidates, strict=True)
            ]
        )
        probabilities = self.model.probability(rows)
        return [Verdict(bool(p >= self.threshold), score=float(p)) for p in probabilities]


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
        model = LogisticModel.from_dict(manifest["learned_verifier"])
        verifiers = [LearnedVerifier(scorer, model, float(thresholds["verifier_threshold"]), timeout=verifier_timeout)]
    else:
        verifiers = [CrossEncoderVerifier(scorer, float(thresholds["verifier_threshold"]), timeout=verifier_timeout)]
    threshold = float(thresholds["candidate_threshold"])
    if not math.isfinite(threshold) or not 0 < threshold <= 1:
        raise ConfigurationError(f"the manifest's candidate threshold {threshold} is not a cosine in (0, 1]")
    guard = bool(thresholds.get("answer_guard", True))
    return TunedSetup(folder, manifest, embedder, verifiers, threshold, guard, int(thresholds.get("candidates", 4)))


__all__ = [
    "CrossEncoderScorer",
    "CrossEncoderVerifier",
    "LearnedVerifier",
    "LogisticModel",
    "TunedEmbedder",
    "TunedSetup",
    "learned_features",
    "load_tuned",
    "read_manifest",
    "sigmoid",
    "text_features",
    "tuned_embedder",
]
