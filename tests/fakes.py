"""Small deterministic fakes for tests: a bag-of-words embedder. (The LLM fakes live with each integration.)"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from semantic_llm_cache.embeddings.base import Matrix

_WORD = re.compile(r"\w+")


def word_vector(word: str, dimension: int) -> np.ndarray:
    """A fixed pseudo-random unit vector per word (seeded by the word's hash)."""
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dimension)
    return vector / np.linalg.norm(vector)


class BagOfWordsEmbedder:
    """Sum of per-word vectors: prompts sharing most words are close, prompts sharing none are not.

    Counts calls and texts so tests can check when the engine embeds.
    """

    def __init__(self, dimension: int = 64, name: str = "test-bag-of-words") -> None:
        self._dimension = dimension
        self._name = name
        self.calls = 0
        self.texts: list[str] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return self._dimension

    def vector(self, text: str) -> np.ndarray:
        words = _WORD.findall(text.lower()) or ["<empty>"]
        total = np.sum([word_vector(word, self._dimension) for word in words], axis=0)
        return (total / np.linalg.norm(total)).astype(np.float32)

    async def embed(self, texts: Sequence[str]) -> Matrix:
        self.calls += 1
        self.texts.extend(texts)
        return np.stack([self.vector(text) for text in texts]).astype(np.float32)


def unit(values: Sequence[float]) -> np.ndarray:
    """A float32 unit vector in the direction of `values`."""
    vector = np.asarray(values, dtype=np.float32)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def unnamed_embed(texts: Sequence[str]) -> np.ndarray:
    """A plain embedding function: it names no model (an embedder without a stable name)."""
    model = BagOfWordsEmbedder()
    return np.stack([model.vector(text) for text in texts])
