"""RAG-style prompts: one shared context around each question. Do different questions share answers?

Run: `.venv/bin/python benchmarks/rag_templates.py [--pairs ../shared/data/qqp_dev.jsonl] [--limit 1500]`.

From labeled Quora pairs (seeded sample): each distinct `text_a` is stored as
"Answer only from the context. Context: <shared context> Question: <text_a>", each `text_b` is looked up the same
way, through the real engine and the bundled model. The shared context is built from other Quora questions (not
in the sample), 50 to 400 words. Judged as in the data README: the same question is correct, a labeled pair
counts as its label, anything else is unlabeled. Compared: the bare questions (no template), and the templated
prompts with the engine's shared-text check off and on. Past 256 word pieces a prompt is exact-only (the window
check), so long contexts serve no semantic hit at all.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _tables import markdown_table

import semantic_llm_cache.cache as cache_module
from semantic_llm_cache import SemanticCache
from semantic_llm_cache.cache import default_embedder
from semantic_llm_cache.calibration import LabeledPair, load_pairs

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PAIRS = os.environ.get("SEMANTIC_CACHE_PAIRS", str(ROOT.parent / "shared" / "data" / "qqp_dev.jsonl"))


class MemoEmbedder:
    """The bundled embedder with a memory of every vector (the runs with and without the check embed alike)."""

    def __init__(self) -> None:
        self.inner = default_embedder()
        self.name = self.inner.name
        self.dimension = self.inner.dimension
        self.max_tokens = self.inner.max_tokens
        self.tokenizer_loaded = True
        self.count_tokens = self.inner.count_tokens
        self.memory: dict[str, np.ndarray] = {}

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = [text for text in dict.fromkeys(texts) if text not in self.memory]
        if missing:
            for text, vector in zip(missing, await self.inner.embed(missing), strict=True):
                self.memory[text] = vector
        return np.stack([self.memory[text] for text in texts])


def build_context(sources: list[str], words: int, rng: random.Random) -> str:
    chosen: list[str] = []
    while sum(len(text.split()) for text in chosen) < words:
        chosen.append(rng.choice(sources).strip())
    return " ".join(" ".join(chosen).split()[:words]).rstrip("?") + "."


async def run(
    pairs: list[LabeledPair],
    render: Callable[[str], str],
    embedder: MemoEmbedder,
    labels: dict[tuple[str, str], int],
) -> dict[str, Any]:
    cache = SemanticCache(embedder=embedder)
    by_prompt: dict[str, str] = {}
    stored = list(dict.fromkeys(pair.text_a for pair in pairs))
    for start in range(0, len(stored), 64):
        batch = stored[start : start + 64]
        await asyncio.gather(*(cache.store(render(text), text) for text in batch))
        by_prompt.update({render(text): text for text in batch})
    correct = wrong = unlabeled = hits = 0
    for start in range(0, len(pairs), 64):
        batch = pairs[start : start + 64]
        found = await asyncio.gather(*(cache.lookup(render(pair.text_b)) for pair in batch))
        for pair, hit in zip(batch, found, strict=True):
            if hit is None:
                continue
            hits += 1
            served = hit.response
            if served == pair.text_b:
                correct += 1
                continue
            label = labels.get((pair.text_b, served), labels.get((served, pair.text_b)))
            if label is None:
                unlabeled += 1
            elif label == 1:
                correct += 1
            else:
                wrong += 1
    judged = correct + wrong
    stats = cache.stats.snapshot()
    return {
        "hit rate": hits / len(pairs),
        "precision": correct / judged if judged else float("nan"),
        "strict precision": correct / hits if hits else float("nan"),
        "wrong": wrong,
        "shared-text refusals": stats.get("shared_text_refusals", 0),
        "exact-only (too long)": stats.get("too_long_for_semantic", 0),
    }


async def main(pairs_path: str, limit: int, seed: int) -> None:
    every = load_pairs(pairs_path)
    rng = random.Random(seed)
    sample = rng.sample(every, min(limit, len(every)))
    in_sample = {text for pair in sample for text in (pair.text_a, pair.text_b)}
    sources = [pair.text_a for pair in every if pair.text_a not in in_sample]
    labels = {(pair.text_a, pair.text_b): pair.label for pair in every}
    embedder = MemoEmbedder()
    original = cache_module.differing_parts
    rows = []

    def bare(question: str) -> str:
        return question

    rows.append(["bare questions", "-", *(await run(sample, bare, embedder, labels)).values()])
    for words in (50, 150, 400):
        context = build_context(sources, words, random.Random(seed + words))

        def templated(question: str, context: str = context) -> str:
            return f"Answer only from the context. Context: {context} Question: {question}"

        for check in (False, True):
            cache_module.differing_parts = original if check else (lambda query, candidate, **_: None)  # type: ignore[assignment]
            result = await run(sample, templated, embedder, labels)
            rows.append([f"context of {words} words", "on" if check else "off", *result.values()])
        cache_module.differing_parts = original
    headers = ["prompts", "shared-text check", "hit rate", "precision", "strict precision", "wrong (labeled)",
               "shared-text refusals", "exact-only (too long)"]  # fmt: skip
    formatted = [[f"{value:.3f}" if isinstance(value, float) else value for value in row] for row in rows]
    print(f"{len(sample)} pairs ({sum(pair.label for pair in sample)} same meaning), threshold 0.94, guard on\n")
    print(markdown_table(headers, formatted))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default=DEFAULT_PAIRS)
    parser.add_argument("--limit", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=7)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.pairs, arguments.limit, arguments.seed))
