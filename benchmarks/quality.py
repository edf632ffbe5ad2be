"""Answer quality of the default configuration on labeled question pairs: precision and hit rate per threshold.

Run: `.venv/bin/python benchmarks/quality.py [--pairs ../shared/data/qqp_dev.jsonl] [--limit N] [--embedder torch]`.
Embeds every distinct question once with the default embedder (or the torch model; minutes on 2 cores; the
vectors are kept in ~/.cache/semantic-llm-cache so a second run takes seconds), then prints markdown tables and
writes benchmarks/results/quality.png. Judging rules: semantic_llm_cache/calibration.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _tables import markdown_table

from semantic_llm_cache.calibration import load_pairs, plot_report, sweep
from semantic_llm_cache.config import DEFAULT_THRESHOLD
from semantic_llm_cache.embeddings import LocalEmbedder, OnnxEmbedder

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PAIRS = os.environ.get("SEMANTIC_CACHE_PAIRS", str(ROOT.parent / "shared" / "data" / "qqp_dev.jsonl"))
SHOWN = (0.80, 0.85, 0.90, 0.92, 0.935, 0.94, 0.95, 0.96, 0.97, 0.98)


async def main(pairs_path: str, limit: int | None, target: float, embedder_kind: str) -> None:
    pairs = load_pairs(pairs_path, limit)
    embedder = OnnxEmbedder(max_batch_size=256) if embedder_kind == "default" else LocalEmbedder(max_batch_size=256)
    report = await sweep(pairs, embedder, cache_dir=Path.home() / ".cache" / "semantic-llm-cache")
    embedder.close()
    print(f"{report.pairs} pairs ({report.positives} labeled same meaning), {report.stored} stored prompts, "
          f"embedder {report.embedder}\n")  # fmt: skip
    rows = []
    for threshold in sorted({*SHOWN, DEFAULT_THRESHOLD}):
        for guard in (False, True):
            row = report.row(threshold, guard)
            marker = " (default)" if guard and abs(threshold - DEFAULT_THRESHOLD) < 1e-9 else ""
            rows.append([f"{row.threshold:.3f}{marker}", "on" if guard else "off", f"{row.hit_rate:.3f}",
                         f"{row.precision:.3f}", f"{row.strict_precision:.3f}", f"{row.recall:.3f}",
                         row.hits, row.wrong_hits, row.unlabeled_hits])  # fmt: skip
    print(markdown_table(["threshold", "guard", "hit rate", "precision", "strict precision", "recall", "hits",
                          "wrong (labeled)", "unlabeled"], rows))  # fmt: skip
    for guard in (True, False):
        chosen = report.recommend(target, guard)
        label = "with the guard" if guard else "without the guard"
        if chosen is None:
            print(f"\nno threshold reaches precision {target} {label}")
        else:
            print(f"\nlowest threshold with precision >= {target} {label}: {chosen.threshold:.3f} "
                  f"(hit rate {chosen.hit_rate:.3f}, strict precision {chosen.strict_precision:.3f})")  # fmt: skip
    suffix = "" if embedder_kind == "default" else f"-{embedder_kind}"
    output = plot_report(report, ROOT / "benchmarks" / "results" / f"quality{suffix}.png", target)
    print(f"\nplot: {output.relative_to(ROOT)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default=DEFAULT_PAIRS, help="labeled pairs, JSON lines")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    parser.add_argument("--target-precision", type=float, default=0.9)
    parser.add_argument("--embedder", choices=("default", "torch"), default="default")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.pairs, arguments.limit, arguments.target_precision, arguments.embedder))
