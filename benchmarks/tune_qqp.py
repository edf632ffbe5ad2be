"""Tune on Quora question pairs, measure on a group-disjoint test part and on another domain (STS-B).

Run: `nice -n 10 .venv/bin/python benchmarks/tune_qqp.py [--pairs ../shared/data/qqp_dev.jsonl]
[--stsb ../shared/data/stsb_dev.jsonl] [--work DIR]`.

1. Split qqp_dev by connected groups of questions (seeded): 20% of the pairs -> the test part, never seen by
   tuning; the rest -> DIR/qqp_tune.jsonl (outside the repository).
2. `tune(DIR/qqp_tune.jsonl, DIR/tuned)` (what `semantic-llm-cache tune` runs): its own group split into train and
   calibration, training, ONNX export, thresholds chosen on the calibration part. Stages already done are
   skipped (a rerun only measures).
3. The cache protocol (store text_a, look up text_b, judged as in the data README) on the test part and on
   stsb_dev: the base install's default (bundled model, 0.94, answer guard) against the tuned setup; then the
   same lookups through `SemanticCache.from_tuned` (the engine itself) and the verifier's cost per lookup.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _tables import markdown_table

from semantic_llm_cache import SemanticCache
from semantic_llm_cache.calibration import LabeledPair, load_pairs
from semantic_llm_cache.tune import measure_dir, tune
from semantic_llm_cache.tune.calibrate import Point
from semantic_llm_cache.tune.split import group_split, text_identity

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


def _rows(name: str, points: dict[str, Point]) -> list[list[object]]:
    labels = {
        "base_default": "base default (bundled model, 0.94 + answer guard)",
        "tuned": "tuned (embedder + verifier, thresholds from calibration)",
        "tuned_embedder_alone": "ablation: tuned embedder at the candidate threshold, no verifier",
    }
    return [
        [
            name,
            labels[key],
            f"{p.hit_rate:.3f}",
            f"{p.precision:.3f}",
            f"{p.strict_precision:.3f}",
            p.hits,
            p.wrong,
            p.unlabeled,
            p.lookups,
        ]
        for key, p in points.items()
    ]


async def engine_check(directory: Path, pairs: list[LabeledPair], limit: int) -> dict[str, object]:
    """The same protocol through the engine (SemanticCache.from_tuned, memory backend): hits, precision, and the
    verifier's time per lookup that reached it, by number of candidates."""
    cache = SemanticCache.from_tuned(directory)
    timings: dict[int, list[float]] = {}
    inner = cache.verifiers[0]
    original = inner.verify

    async def timed(candidates: object) -> object:
        started = time.perf_counter()
        try:
            return await original(candidates)  # type: ignore[arg-type]
        finally:
            timings.setdefault(len(candidates), []).append(time.perf_counter() - started)  # type: ignore[arg-type]

    inner.verify = timed  # type: ignore[method-assign]
    chosen = pairs[:limit]
    known = {frozenset((text_identity(p.text_a), text_identity(p.text_b))): p.label for p in chosen}
    for pair in {p.text_a: p for p in chosen}.values():
        await cache.store(pair.text_a, pair.text_a)
    hits = correct = wrong = unlabeled = 0
    lookup_times = []
    for pair in chosen:
        started = time.perf_counter()
        hit = await cache.lookup(pair.text_b)
        lookup_times.append(time.perf_counter() - started)
        if hit is None:
            continue
        hits += 1
        served = str(hit.response)
        verdict = (
            1
            if text_identity(served) == text_identity(pair.text_b)
            else known.get(frozenset((text_identity(served), text_identity(pair.text_b))), -1)
        )
        correct += verdict == 1
        wrong += verdict == 0
        unlabeled += verdict == -1
    await cache.close()
    cache.embedder.close()  # type: ignore[attr-defined]
    import numpy as np

    per_size = {size: round(float(np.median(values)) * 1000, 2) for size, values in sorted(timings.items())}
    counts = {size: len(values) for size, values in sorted(timings.items())}
    every = [value for values in timings.values() for value in values]
    return {
        "lookups": len(chosen),
        "hit_rate": round(hits / len(chosen), 3),
        "precision": round(correct / max(1, correct + wrong), 3),
        "strict_precision": round(correct / max(1, hits), 3),
        "verifier_p50_ms": round(float(np.median(every)) * 1000, 2) if every else None,
        "verifier_p50_ms_by_candidates": per_size,
        "verified_lookups_by_candidates": counts,
        "lookup_p50_ms": round(float(np.median(lookup_times)) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default=str(SHARED / "qqp_dev.jsonl"))
    parser.add_argument("--stsb", default=str(SHARED / "stsb_dev.jsonl"))
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "semantic-llm-cache" / "tune-qqp"))
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine-lookups", type=int, default=1500, help="lookups of the engine check")
    arguments = parser.parse_args()
    work = Path(arguments.work)
    work.mkdir(parents=True, exist_ok=True)
    pairs = load_pairs(arguments.pairs)
    rest, test = group_split(pairs, arguments.test_fraction, seed=arguments.seed)
    assert not {text_identity(t) for p in rest for t in (p.text_a, p.text_b)} & {
        text_identity(t) for p in test for t in (p.text_a, p.text_b)
    }, "the test part shares a text with the tuning part"
    tune_file = work / "qqp_tune.jsonl"
    with tune_file.open("w") as out:
        for pair in rest:
            out.write(json.dumps({"text_a": pair.text_a, "text_b": pair.text_b, "label": pair.label}) + "\n")
    started = time.perf_counter()
    result = tune(tune_file, work / "tuned", seed=arguments.seed)
    print(f"tune: {time.perf_counter() - started:.0f} s this run; stage seconds {result.manifest['seconds']}")
    print(f"thresholds: {json.dumps(result.manifest['thresholds'])}")
    print(
        f"qqp_dev: {len(pairs)} pairs -> tuning {len(rest)}, test {len(test)} (group-disjoint, seed {arguments.seed})"
    )
    rows = _rows(f"qqp test part ({len(test)} pairs)", measure_dir(work / "tuned", test))
    stsb = load_pairs(arguments.stsb)
    rows += _rows(f"stsb_dev ({len(stsb)} pairs)", measure_dir(work / "tuned", stsb))
    print()
    print(
        markdown_table(
            [
                "data",
                "system",
                "hit rate",
                "precision",
                "strict precision",
                "hits",
                "wrong (labeled)",
                "unlabeled",
                "lookups",
            ],
            rows,
        )
    )
    for name, data in (("qqp test part", test), ("stsb_dev", stsb)):
        check = asyncio.run(engine_check(work / "tuned", data, arguments.engine_lookups))
        print(f"\nengine check, {name} (SemanticCache.from_tuned, first {check['lookups']} pairs): {json.dumps(check)}")


if __name__ == "__main__":
    main()
