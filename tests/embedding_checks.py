"""Checks every embedder of the package must pass, shared by the torch and ONNX embedder tests."""

from __future__ import annotations

import asyncio

import numpy as np

from semantic_llm_cache.embeddings import LocalEmbedder


async def check_concurrent_calls_share_forward_passes(embedder: LocalEmbedder, dimension: int = 384) -> None:
    """64 concurrent single-text calls take far fewer forward passes than 64 and give one-at-a-time's vectors."""
    texts = [f"Question number {number}: how do I configure feature {number * 7}?" for number in range(64)]
    one_at_a_time = np.stack([(await embedder.embed([text]))[0] for text in texts])
    batches_before = embedder.batches
    results = await asyncio.gather(*(embedder.embed([text]) for text in texts))
    passes = embedder.batches - batches_before
    assert passes < 64 / 4
    concurrent = np.stack([result[0] for result in results])
    np.testing.assert_allclose(concurrent, one_at_a_time, atol=1e-4)
    assert [result.shape for result in results] == [(1, dimension)] * 64
