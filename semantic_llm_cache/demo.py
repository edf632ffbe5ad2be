"""The demo: an exact hit, a semantic hit for a paraphrase, and a miss for a look-alike question."""

from __future__ import annotations

import asyncio
import time

from semantic_llm_cache.cache import SemanticCache

ANSWERS = {
    "How do I reset my password?": "Open Settings > Security and choose 'Reset password'.",
    "How do I export my data to CSV?": "Go to Reports, pick a report and click 'Export CSV'.",
    "Is an SGPA of 6.86 good?": "Yes: 6.86 is above the usual 6.5 cut-off.",
}

QUERIES = [
    ("exact hit", "How do I reset my password?"),
    ("paraphrase", "How can I reset my password?"),
    ("paraphrase", "How can I export my data as a CSV file?"),
    ("different question", "How do I delete my account?"),
    ("number differs", "Is an SGPA of 6.71 good?"),
]


async def run_demo() -> None:
    """Store a few answers with the bundled model, then look up each query and print what happened."""
    cache = SemanticCache()
    print(f"Loading the bundled model ({cache.embedder.name}) ...")
    started = time.perf_counter()
    await cache.warmup()
    print(f"  loaded in {time.perf_counter() - started:.1f} s; threshold {cache.config.threshold} (cosine, >=)\n")
    for prompt, answer in ANSWERS.items():
        await cache.store(prompt, answer)
        print(f"stored   {prompt!r}")
    print()
    print(f"{'case':<20} {'query':<45} {'result':<9} {'similarity':>10} {'time':>9}  answer")
    for case, query in QUERIES:
        started = time.perf_counter()
        hit = await cache.lookup(query)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if hit is None:
            print(f"{case:<20} {query:<45} {'miss':<9} {'-':>10} {elapsed_ms:>7.2f}ms  (call the LLM)")
        else:
            print(f"{case:<20} {query:<45} {hit.kind:<9} {hit.similarity:>10.3f} {elapsed_ms:>7.2f}ms  {hit.response}")
    stats = await cache.get_stats()
    print(
        f"\nexact hits {stats['exact_hits']}, semantic hits {stats['semantic_hits']}, misses {stats['misses']}, "
        f"guard refusals {stats['guard_refusals']} (a close prompt with another number, name or negation is "
        "refused: its answer would be wrong)"
    )
    await cache.close()


def main() -> None:
    """Entry point of `python -m semantic_llm_cache demo`."""
    asyncio.run(run_demo())
