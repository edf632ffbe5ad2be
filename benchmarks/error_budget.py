"""The error budget on a simulated stream with answers you can check (issue 16).

Run: `.venv/bin/python benchmarks/error_budget.py [--pairs ../shared/data/qqp_dev.jsonl] [--seeds 5]`
(the first run embeds about 2,200 questions with the default embedder, a minute on two cores; the vectors are
kept in ~/.cache/semantic-llm-cache). Prints markdown tables and writes benchmarks/results/error_budget.png and
benchmarks/results/error_budget.md.

The simulation, from the labeled Quora pairs:
- questions joined by label-1 pairs form groups (union-find); *popular intents* are the groups with >= 4
  wordings; every label-0 partner of one of their questions is a hard negative (in its own group: the
  union-find group it has outside the popular ones, nearly always itself alone);
- the simulated model answers a question with its group id; a seeded stream asks each of these questions once,
  in random order, through the real `SemanticCache.resolve` (memory backend, answer guard on, the default
  embedder's vectors read from a table so the stream runs in seconds);
- a served answer is *correct* if it is the query's group, *wrong* if the two groups are joined by a label-0
  pair, *unknown* otherwise (Quora's labels are incomplete); error = wrong / judged. The budget's
  `answers_match` is that same judge (None for unknown), standing in for an LLM judge; each comparison is
  recorded before the next request (as a judge that answers within one request's time would).
- hit rate = semantic hits / requests (explorations and checks are computed, so they count as misses); model
  calls = requests - hits.

Tuning: the budget's defaults were chosen on the questions of half the connected groups (`--parts tune`,
components of the label-0 and label-1 pairs among the stream's questions, split by a seeded shuffle): the
exploration rates (0.05 / 0.10; unverified 0.1-0.8 and how they rise with the bound), the strata (0.01, 0.02,
0.05), the confidence (0.90 / 0.95) and weighting explorations by 1/p inside the strata (dropped: too noisy).
The tables report the other half (`--parts report`: no question, and no labeled pair, in both) and the whole
stream (which contains the tuning half).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from _tables import markdown_table
from scipy.stats import beta

from semantic_llm_cache import MemoryBackend, SemanticCache
from semantic_llm_cache.calibration import embed_texts
from semantic_llm_cache.embeddings import OnnxEmbedder
from semantic_llm_cache.error_budget import ErrorBudget
from semantic_llm_cache.scope import normalize_prompt

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PAIRS = os.environ.get("SEMANTIC_CACHE_PAIRS", str(ROOT.parent / "shared" / "data" / "qqp_dev.jsonl"))
STATIC = (0.80, 0.86, 0.90, 0.94, 0.96)
BUDGETS = (0.10, 0.05, 0.02)
FLOOR = 0.80  # the user's (bad) threshold every budget run starts from


class _Groups:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, item: str) -> str:
        self.parent.setdefault(item, item)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def join(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


@dataclass
class World:
    """The stream's questions, each question's answer (its group) and the judge."""

    questions: list[str]
    group: dict[str, str]
    apart: set[frozenset[str]]  # pairs of groups joined by a label-0 pair
    component: dict[str, str]  # connected component (label-0 and label-1 edges) of each question

    def judge(self, expected: str, served: Any) -> bool | None:
        if served == expected:
            return True
        if frozenset((str(served), expected)) in self.apart:
            return False
        return None


def build_world(path: str) -> World:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    groups = _Groups()
    for row in rows:
        groups.find(row["text_a"]), groups.find(row["text_b"])
        if row["label"] == 1:
            groups.join(row["text_a"], row["text_b"])
    members: dict[str, list[str]] = defaultdict(list)
    for question in list(groups.parent):
        members[groups.find(question)].append(question)
    popular = {root for root, wordings in members.items() if len(wordings) >= 4}
    stream = {question for root in popular for question in members[root]}
    for row in rows:
        if row["label"] == 0:
            for one, other in ((row["text_a"], row["text_b"]), (row["text_b"], row["text_a"])):
                if groups.find(one) in popular:
                    stream.add(other)  # a hard negative (a popular one is in the stream already)
    roots = sorted({groups.find(question) for question in stream})
    number = {root: index for index, root in enumerate(roots)}
    group = {question: f"g{number[groups.find(question)]}" for question in stream}
    apart = set()
    components = _Groups()
    for row in rows:
        a, b = row["text_a"], row["text_b"]
        if row["label"] == 0 and a in group and b in group:
            apart.add(frozenset((group[a], group[b])))
        if a in stream and b in stream:
            components.join(a, b)
    questions = sorted(stream)
    return World(questions, group, apart, {q: components.find(q) for q in questions})


def split(world: World, part: str) -> list[str]:
    """Half the connected components (seeded), or the other half, or every question."""
    if part == "all":
        return list(world.questions)
    roots = sorted({world.component[q] for q in world.questions})
    random.Random(16).shuffle(roots)
    sizes: dict[str, int] = defaultdict(int)
    for question in world.questions:
        sizes[world.component[question]] += 1
    halves: tuple[set[str], set[str]] = (set(), set())
    counts = [0, 0]
    for root in sorted(roots, key=lambda r: -sizes[r]):  # greedy: the bigger components first, to balance
        side = 0 if counts[0] <= counts[1] else 1
        halves[side].add(root)
        counts[side] += sizes[root]
    chosen = halves[0] if part == "tune" else halves[1]
    return [q for q in world.questions if world.component[q] in chosen]


class TableEmbedder:
    """The default embedder's vectors, precomputed; texts not in the table (the shared-text check's parts) are
    embedded by the model itself."""

    def __init__(self, model: OnnxEmbedder, table: dict[str, np.ndarray]) -> None:
        self.model = model
        self.table = table
        self.name = model.name
        self.dimension = model.dimension

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = [text for text in texts if text not in self.table]
        if missing:
            for text, vector in zip(missing, await self.model.embed(missing), strict=True):
                self.table[text] = np.asarray(vector, dtype=np.float32)
        return np.stack([self.table[text] for text in texts])


@dataclass
class Run:
    name: str
    hits: list[bool] = field(default_factory=list)
    verdicts: list[bool | None] = field(default_factory=list)  # of each hit; None for misses too
    thresholds: list[float | None] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return len(self.hits)

    def counts(self) -> tuple[int, int, int]:
        hits = sum(self.hits)
        judged = sum(v is not None for v in self.verdicts)
        wrong = sum(v is False for v in self.verdicts)
        return hits, judged, wrong


def upper95(wrong: int, judged: int) -> float:
    """One-sided 95% Clopper-Pearson upper bound of wrong / judged."""
    if judged == 0:
        return 1.0
    return 1.0 if wrong == judged else float(beta.ppf(0.95, wrong + 1, judged - wrong))


async def simulate(
    world: World, questions: list[str], embedder: TableEmbedder, seed: int, name: str, threshold: float,
    budget: ErrorBudget | None,
) -> Run:  # fmt: skip
    order = list(questions)
    random.Random(seed).shuffle(order)
    judge = world.judge

    def answers_match(query: str, cached: Any, fresh: Any) -> bool | None:
        return judge(fresh, cached)

    answers_match.fast = True  # type: ignore[attr-defined]
    if budget is not None:
        budget.answers_match = answers_match
    cache = SemanticCache(backend=MemoryBackend(None), embedder=embedder, threshold=threshold, on_error="raise",
                          error_budget=budget, never_cache=False)  # fmt: skip
    run = Run(name)
    partition = cache.partition_for(None)
    for question in order:
        answer = world.group[question]

        async def compute(answer: str = answer) -> str:
            return answer

        resolution = await cache.resolve(question, compute)
        await cache.wait_for_comparisons()
        hit = resolution.hit is not None and resolution.hit.kind == "semantic"
        run.hits.append(hit)
        run.verdicts.append(judge(answer, resolution.response) if hit else None)
        if budget is not None:
            pool = budget.pools().get(partition)
            run.thresholds.append(None if pool is None else pool.threshold)
    run.stats = await cache.get_stats()
    await cache.close()
    return run


def learned_after(run: Run, budget: float) -> tuple[int | None, int | None]:
    """(request at which the first semantic hit was served, request from which the cumulative measured error of
    the served hits stays within the budget, counted once 30 hits are judged)."""
    first = next((index + 1 for index, hit in enumerate(run.hits) if hit), None)
    judged = wrong = 0
    last_over = None
    for index, verdict in enumerate(run.verdicts):
        if verdict is None:
            continue
        judged += 1
        wrong += verdict is False
        if judged >= 30 and wrong / judged > budget:
            last_over = index + 1
    return first, (first if last_over is None else last_over + 1)


def row_of(run: Run, budget: float | None) -> list[Any]:
    hits, judged, wrong = run.counts()
    error = wrong / judged if judged else 0.0
    stats = run.stats
    estimate = stats.get("estimated_error_rate")
    estimate_upper = stats.get("estimated_error_upper")
    calls = run.requests - hits
    cells: list[Any] = [run.name, f"{hits / run.requests:.3f}", f"{error:.3f} ({wrong}/{judged})",
                        f"{upper95(wrong, judged):.3f}"]  # fmt: skip
    if budget is None:
        return [*cells, "-", calls, "-", "-", "-", "-"]
    met = stats.get("error_budget_met")
    floor = stats["error_budget"]["partitions"]
    measured = next(iter(floor.values()))["measured_floor"] if floor else None
    threshold = run.thresholds[-1] if run.thresholds else None
    first, kept = learned_after(run, budget)
    return [*cells,
            "-" if estimate is None else f"{estimate:.3f} (<= {estimate_upper:.3f})",
            calls, stats.get("budget_explorations", 0), stats.get("budget_checks", 0),
            "-" if threshold is None else f"{threshold:.2f}",
            f"{met}" + ("" if met is not False or measured is None
                        else f" (floor {measured['error']:.3f} at >= {measured['threshold']:.2f})")
            + f"; first hit at {first}, within budget from {kept}"]  # fmt: skip


HEADERS = [
    "configuration",
    "hit rate",
    "error (wrong/judged)",
    "95% upper",
    "cache's estimate (90% bound)",
    "model calls",
    "explorations (paid)",
    "checks (free)",
    "served threshold at end",
    "budget met; learning",
]


async def main(arguments: argparse.Namespace) -> None:
    world = build_world(arguments.pairs)
    texts = [normalize_prompt(q) for q in world.questions]
    model = OnnxEmbedder(max_batch_size=256)
    vectors = await embed_texts(texts, model, cache_dir=Path.home() / ".cache" / "semantic-llm-cache")
    embedder = TableEmbedder(model, {text: vectors[i] for i, text in enumerate(texts)})
    output: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        output.append(text)

    sizes: dict[str, int] = defaultdict(int)
    for question in world.questions:
        sizes[world.group[question]] += 1
    popular = sum(1 for question in world.questions if sizes[world.group[question]] >= 4)
    say(f"{len(world.questions)} questions ({popular} in popular intents, {len(world.questions) - popular} hard "
        f"negatives), {len(set(world.group.values()))} groups, {len(world.apart)} label-0 group pairs\n")  # fmt: skip
    runs_for_plot: dict[str, Run] = {}
    parts = arguments.parts.split(",")
    for part in parts:
        questions = split(world, part)
        say(f"### stream: {part} ({len(questions)} questions), seed 0\n")
        rows = []
        for threshold in STATIC:
            run = await simulate(world, questions, embedder, 0, f"static {threshold:.2f}", threshold, None)
            rows.append(row_of(run, None))
            if part == parts[-1]:
                runs_for_plot[run.name] = run
        for limit in BUDGETS:
            budget = ErrorBudget(limit, seed=0, **arguments.budget_options)
            run = await simulate(world, questions, embedder, 0, f"budget {limit:.2f} (from {FLOOR:.2f})", FLOOR,
                                 budget)  # fmt: skip
            rows.append(row_of(run, limit))
            if part == parts[-1]:
                runs_for_plot[run.name] = run
        say(markdown_table(HEADERS, rows))
        say()
        if arguments.seeds > 1:
            say(f"over {arguments.seeds} stream orders (seeds 0-{arguments.seeds - 1}): mean hit rate, mean and "
                "worst error, share of seeds within the budget\n")  # fmt: skip
            seed_rows = []
            for limit in BUDGETS:
                rates, errors, estimates = [], [], []
                for seed in range(arguments.seeds):
                    budget = ErrorBudget(limit, seed=seed, **arguments.budget_options)
                    run = await simulate(world, questions, embedder, seed, "", FLOOR, budget)
                    hits, judged, wrong = run.counts()
                    rates.append(hits / run.requests)
                    errors.append(wrong / judged if judged else 0.0)
                    estimates.append(run.stats.get("estimated_error_rate"))
                gaps = [abs(e - m) for e, m in zip(estimates, errors, strict=True) if e is not None]
                seed_rows.append([f"budget {limit:.2f}", f"{np.mean(rates):.3f}", f"{np.mean(errors):.3f}",
                                  f"{max(errors):.3f}", f"{sum(e <= limit for e in errors)}/{len(errors)}",
                                  f"{np.mean(gaps):.3f} / {max(gaps):.3f}" if gaps else "-"])  # fmt: skip
            say(markdown_table(["budget", "mean hit rate", "mean error", "worst error", "seeds within budget",
                                "gap of the estimate: mean / worst"], seed_rows))  # fmt: skip
            say()
    plot(runs_for_plot, ROOT / "benchmarks" / "results" / "error_budget.png", parts[-1])
    (ROOT / "benchmarks" / "results" / "error_budget.md").write_text("\n".join(output) + "\n", encoding="utf-8")
    say("plot: benchmarks/results/error_budget.png; tables: benchmarks/results/error_budget.md")
    model.close()


def plot(runs: dict[str, Run], path: Path, part: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rate_axis, error_axis) = plt.subplots(2, 1, figsize=(9, 8), sharex=True)
    shown = [name for name in runs if name.startswith("budget") or name in ("static 0.80", "static 0.90")]
    for name in shown:
        run = runs[name]
        steps = np.arange(1, run.requests + 1)
        window = 200
        hits = np.asarray(run.hits, dtype=float)
        moving = np.convolve(hits, np.ones(window), "full")[: run.requests] / np.minimum(steps, window)
        rate_axis.plot(steps, moving, label=name)
        judged = np.cumsum([v is not None for v in run.verdicts])
        wrong = np.cumsum([v is False for v in run.verdicts])
        error = np.where(judged >= 30, wrong / np.maximum(judged, 1), np.nan)
        (line,) = error_axis.plot(steps, error, label=name)
        if name.startswith("budget"):
            limit = float(name.split()[1])
            error_axis.axhline(limit, color=line.get_color(), linestyle=":", linewidth=1)
            _, kept = learned_after(run, limit)
            if kept is not None:
                error_axis.axvline(kept, color=line.get_color(), linestyle="--", linewidth=0.8)
    rate_axis.set_ylabel("hit rate (last 200 requests)")
    rate_axis.legend(fontsize=8)
    rate_axis.set_title(f"error budget from threshold {FLOOR:.2f}, stream '{part}', seed 0")
    error_axis.set_ylabel("cumulative error of served hits\n(wrong / judged, once 30 judged)")
    error_axis.set_xlabel("request (dashed: from here the cumulative error stays within the budget; dotted: budget)")
    error_axis.set_ylim(0, 0.12)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default=DEFAULT_PAIRS, help="labeled pairs, JSON lines")
    parser.add_argument("--parts", default="report,all", help="comma-separated: tune, report, all")
    parser.add_argument("--seeds", type=int, default=5, help="stream orders for the robustness table")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="an ErrorBudget option to try (tuning), e.g. confidence=0.8")  # fmt: skip
    parsed = parser.parse_args()
    if not Path(parsed.pairs).is_file():
        raise SystemExit(f"{parsed.pairs} not found: this benchmark needs the labeled Quora pairs (see --pairs)")
    parsed.budget_options = {name: float(value) for name, value in (item.split("=", 1) for item in parsed.option)}
    asyncio.run(main(parsed))
