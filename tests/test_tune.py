"""`tune` end to end on a small committed sample (one short pass: CI stays fast), the group split, serving a
tuned folder with `SemanticCache.from_tuned`, the cross-encoder verifier's fail-open, and the guard as a verifier.

The full run (qqp_dev, minutes of training) is a benchmark: benchmarks/tune_qqp.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from semantic_llm_cache import SemanticCache
from semantic_llm_cache.calibration import LabeledPair, load_pairs
from semantic_llm_cache.errors import ConfigurationError
from semantic_llm_cache.tune.calibrate import Point, wilson
from semantic_llm_cache.tune.split import group_split, pair_groups, text_identity
from semantic_llm_cache.verifiers import AnswerGuardVerifier, Candidate
from tests.fakes import BagOfWordsEmbedder

SAMPLE = Path(__file__).parent / "data" / "qqp_sample.jsonl"


def _texts(pairs: Sequence[LabeledPair]) -> set[str]:
    return {text_identity(text) for pair in pairs for text in (pair.text_a, pair.text_b)}


def test_split_keeps_connected_groups_on_one_side() -> None:
    chain = [LabeledPair("a?", "b", 1), LabeledPair("B!", "c", 0), LabeledPair("c", "d", 1)]  # one group via b~B!
    lone = [LabeledPair(f"x{i}", f"y{i}", i % 2) for i in range(20)]
    pairs = chain + lone
    groups = pair_groups(pairs)
    assert groups[0] == groups[1] == groups[2]
    assert len(set(groups)) == 1 + len(lone)
    for seed in range(5):
        rest, held = group_split(pairs, 0.3, seed)
        assert len(rest) + len(held) == len(pairs)
        assert not _texts(rest) & _texts(held)
        assert sum(pair in held for pair in chain) in (0, 3)
    assert group_split(pairs, 0.3, 1) == group_split(list(pairs), 0.3, 1)  # seeded
    assert group_split(pairs, 0.3, 1) != group_split(pairs, 0.3, 2)


def test_split_of_the_sample_is_disjoint_and_near_the_fraction() -> None:
    pairs = load_pairs(SAMPLE)
    rest, held = group_split(pairs, 0.2, 0)
    assert not _texts(rest) & _texts(held)
    assert 0.15 <= len(held) / len(pairs) <= 0.3


def test_wilson_interval_and_point() -> None:
    low, high = wilson(90, 100)
    assert low < 0.9 < high and low > 0.82 and high < 0.95
    point = Point(lookups=100, hits=20, correct=15, wrong=3, unlabeled=2)
    assert point.precision == pytest.approx(15 / 18) and point.strict_precision == pytest.approx(15 / 20)
    assert point.as_dict()["hit_rate"] == 0.2


async def test_the_answer_guard_as_a_verifier_refuses_what_the_built_in_guard_refuses() -> None:
    stored = ["what is the boiling point of water at 100 meters", "how do i sell my old car quickly online"]
    queries = [
        "what is the boiling point of water at 200 meters",
        "how do i buy my old car quickly online",
        "what is the boiling point of water at 100 meters ?",
        "how do i sell my old car quickly online now",
    ]
    built_in = SemanticCache(embedder=BagOfWordsEmbedder(), threshold=0.6)
    listed = SemanticCache(
        embedder=BagOfWordsEmbedder(), threshold=0.6, answer_guard=False, verifiers=[AnswerGuardVerifier()]
    )
    unguarded = SemanticCache(embedder=BagOfWordsEmbedder(), threshold=0.6, answer_guard=False)
    for cache in (built_in, listed, unguarded):
        for prompt in stored:
            await cache.store(prompt, prompt)
    outcomes = []
    for cache in (built_in, listed, unguarded):
        hits = [await cache.lookup(query) for query in queries]
        outcomes.append([None if hit is None else hit.response for hit in hits])
    assert outcomes[0] == outcomes[1]
    assert outcomes[2] != outcomes[0]  # the guard refused something here, so the comparison means something
    assert built_in.stats["guard_refusals"] == listed.stats["verifier_refusals"] > 0


# -- tune end to end -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch", reason="tune trains with torch (the [tune] extra)")
    from semantic_llm_cache.tune import TrainSettings, tune

    out = tmp_path_factory.mktemp("tuned")
    quick = TrainSettings(epochs=1.0, batch_size=16, max_length=48, frozen_layers=5)
    tune(
        SAMPLE,
        out,
        bi_encoder=quick,
        cross_encoder=dataclasses.replace(quick, learning_rate=1e-4),
        target_precision=0.8,
        progress=False,
    )
    return out


def test_tune_writes_the_manifest_the_report_and_onnx_models(tuned_dir: Path) -> None:
    manifest = json.loads((tuned_dir / "manifest.json").read_text())
    assert manifest["data"]["pairs"] == 300 and len(manifest["data"]["file_sha256"]) == 64
    split = manifest["split"]
    assert split["train_pairs"] + split["calibration_pairs"] == 300
    assert split["seed"] == 0 and split["calibration_pairs"] > 0
    for key in ("embedder", "cross_encoder"):
        model = manifest["models"][key]
        assert (tuned_dir / model["path"]).stat().st_size == model["bytes"]
        assert len(model["sha256"]) == 64
    thresholds = manifest["thresholds"]
    assert {"candidate_threshold", "verifier_threshold", "answer_guard", "verifier", "target_precision"} <= set(
        thresholds
    )
    base = manifest["measured"]["base_default"]
    assert base["threshold"] == 0.94 and 0 <= base["precision_ci95"][0] <= base["precision"] <= 1
    assert manifest["training"]["bi_encoder"]["epochs"] == 1.0
    assert manifest["seconds"]["bi_encoder"] > 0 and manifest["seconds"]["cross_encoder"] > 0
    assert "calibration part" in (tuned_dir / "report.md").read_text()


def test_a_rerun_skips_the_trained_stages(tuned_dir: Path) -> None:
    from semantic_llm_cache.tune import TrainSettings, tune

    before = (tuned_dir / "embedder" / "model.onnx").stat().st_mtime_ns
    quick = TrainSettings(epochs=1.0, batch_size=16, max_length=48, frozen_layers=5)
    started = time.perf_counter()
    result = tune(
        SAMPLE,
        tuned_dir,
        bi_encoder=quick,
        cross_encoder=dataclasses.replace(quick, learning_rate=1e-4),
        target_precision=0.8,
        progress=False,
    )
    assert (tuned_dir / "embedder" / "model.onnx").stat().st_mtime_ns == before
    assert time.perf_counter() - started < 60
    assert (
        result.manifest["models"]["embedder"]["sha256"]
        == json.loads((tuned_dir / "manifest.json").read_text())["models"]["embedder"]["sha256"]
    )


async def test_from_tuned_serves_with_the_tuned_name_verifier_and_thresholds(tuned_dir: Path) -> None:
    from semantic_llm_cache.tuned import CrossEncoderVerifier, LearnedVerifier

    manifest = json.loads((tuned_dir / "manifest.json").read_text())
    thresholds = manifest["thresholds"]
    cache = SemanticCache.from_tuned(tuned_dir)
    assert cache.embedder.name == "tuned:" + manifest["models"]["embedder"]["sha256"][:16]
    assert cache.config.threshold == thresholds["candidate_threshold"]
    assert cache.config.answer_guard == thresholds["answer_guard"]
    assert len(cache.verifiers) == 1 and isinstance(cache.verifiers[0], (CrossEncoderVerifier, LearnedVerifier))
    assert cache.verifiers[0].threshold == thresholds["verifier_threshold"]
    verifier = cache.verifiers[0]
    seen: list[int] = []
    original = verifier.verify

    async def counted(candidates: Sequence[Candidate]) -> Any:
        seen.append(len(candidates))
        return await original(candidates)

    verifier.verify = counted  # type: ignore[method-assign]
    prompt = "How do I learn to play the guitar quickly?"
    await cache.store(prompt, "practice")
    exact = await cache.lookup(prompt)
    assert exact is not None and exact.similarity == 1.0 and seen == []  # exact hits pay nothing
    cache.config = dataclasses.replace(cache.config, threshold=0.3)  # every stored prompt becomes a candidate
    await cache.lookup("How can I learn the guitar fast?")
    assert seen == [1]
    verdicts = await original([Candidate("How can I learn the guitar fast?", prompt, 0.8)])
    assert verdicts[0].score is not None and 0 <= verdicts[0].score <= 1
    # an explicit option wins over the manifest's; a tuned folder brings its own embedder
    assert SemanticCache(tuned=tuned_dir, threshold=0.99).config.threshold == 0.99
    with pytest.raises(ConfigurationError):
        SemanticCache(tuned=tuned_dir, embedder=BagOfWordsEmbedder())
    await cache.close()


async def test_the_tuned_embedder_matches_torch(tuned_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from semantic_llm_cache.tuned import tuned_embedder

    texts = ["How do I learn Python?", "What is the best way to learn to code as an adult with a full-time job?"]
    onnx = np.asarray(await tuned_embedder(tuned_dir).embed(texts))
    reference = SentenceTransformer(str(tuned_dir / "embedder"), device="cpu").encode(texts, normalize_embeddings=True)
    assert np.max(np.abs(onnx - reference)) < 1e-4


async def test_a_slow_cross_encoder_fails_open(tuned_dir: Path) -> None:
    from semantic_llm_cache.tuned import CrossEncoderScorer, CrossEncoderVerifier

    class Slow(CrossEncoderScorer):
        def pair_logits(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
            time.sleep(0.5)
            return np.full(len(pairs), 10.0, dtype=np.float32)

    verifier = CrossEncoderVerifier(Slow(tuned_dir / "cross_encoder"), 0.5, timeout=0.05)
    cache = SemanticCache(embedder=BagOfWordsEmbedder(), threshold=0.5, verifiers=[verifier])
    await cache.store("how do i renew my passport online today", "answer")
    assert await cache.lookup("how do i renew my passport online") is None  # a miss, never a wrong hit
    assert cache.stats["verifier_errors"] == 1
    fast = CrossEncoderVerifier(Slow(tuned_dir / "cross_encoder"), 0.5, timeout=2.0)
    cache = SemanticCache(embedder=BagOfWordsEmbedder(), threshold=0.5, verifiers=[fast])
    await cache.store("how do i renew my passport online today", "answer")
    hit = await cache.lookup("how do i renew my passport online")
    assert hit is not None and hit.response == "answer"
    await asyncio.sleep(0)


async def test_both_integrations_take_tuned(tuned_dir: Path) -> None:
    langchain = pytest.importorskip("langchain_semantic_cache")
    from langchain_core.language_models import FakeListLLM

    cache = langchain.SemanticCache(tuned=tuned_dir)
    assert cache.engine.embedder.name.startswith("tuned:") and len(cache.engine.verifiers) == 1
    llm = FakeListLLM(responses=["practice daily"], cache=cache)
    assert await llm.ainvoke("How do I learn to play the guitar quickly?") == "practice daily"
    assert await llm.ainvoke("How do I learn to play the guitar quickly?") == "practice daily"  # the exact hit
    llama = pytest.importorskip("llama_index.llms.semantic_cache")
    from llama_index.core.llms import MockLLM

    wrapped = llama.SemanticCacheLLM(MockLLM(), tuned=tuned_dir)
    assert wrapped.cache.embedder.name == cache.engine.embedder.name
    with pytest.raises(ConfigurationError):
        llama.SemanticCacheLLM(MockLLM(), tuned=tuned_dir, cache=SemanticCache(embedder=BagOfWordsEmbedder()))


def test_the_tune_command_refuses_bad_input_before_training(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from semantic_llm_cache.cli import app

    runner = CliRunner(env={"COLUMNS": "250"})
    missing = runner.invoke(app, ["tune", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "out")])
    assert missing.exit_code == 2 and "none.jsonl" in missing.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text_a": "a", "text_b": "b", "label": 2}\n')
    assert runner.invoke(app, ["tune", str(bad), "--out", str(tmp_path / "out")]).exit_code == 2
    wrong = runner.invoke(app, ["tune", str(SAMPLE), "--out", str(tmp_path / "out"), "--target-precision", "1.5"])
    assert wrong.exit_code == 1 and "--target-precision" in wrong.output
    assert not (tmp_path / "out").exists()


def test_a_tuned_folder_whose_graph_was_swapped_is_refused(tuned_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tuned_dir, copy)
    graph = copy / "embedder" / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 1
    graph.write_bytes(bytes(data))
    with pytest.raises(ConfigurationError, match="sha256"):
        SemanticCache.from_tuned(copy)


# -- the learned verifier's trees -------------------------------------------------------------------------------


def _stump(feature: int, threshold: float, left: float, right: float) -> Any:
    from semantic_llm_cache.tuned import LEARNED_FEATURES, TreeEnsemble

    size = len(LEARNED_FEATURES)
    assert 0 <= feature < size
    return TreeEnsemble(0.0, [0], [feature, -1, -1], [threshold, 0.0, 0.0], [1, -1, -1], [2, -1, -1],
                        [True, False, False], [0.0, left, right])  # fmt: skip


def test_trees_walk_to_their_leaves_and_send_missing_values_their_way() -> None:
    from semantic_llm_cache.tuned import LEARNED_FEATURES, sigmoid

    stump = _stump(1, 0.9, -2.0, 3.0)
    rows = np.zeros((3, len(LEARNED_FEATURES)))
    rows[:, 1] = [0.5, 0.95, np.nan]
    assert np.allclose(stump.probability(rows), sigmoid(np.array([-2.0, 3.0, -2.0])))
    with pytest.raises(ConfigurationError, match="malformed"):
        type(stump)(0.0, [0], [0, -1], [0.5, 0.0], [5, -1], [1, -1], [True, True], [0.0, 1.0])
    with pytest.raises(ConfigurationError, match="re-run"):
        type(stump).from_dict({**stump.as_dict(), "features": ["ce_logit", "cosine"]})
    assert type(stump).from_dict(stump.as_dict()) == stump


def test_exported_trees_give_scikit_learns_probabilities() -> None:
    pytest.importorskip("sklearn", reason="tune fits the learned verifier with scikit-learn (the [tune] extra)")
    from semantic_llm_cache.tune.calibrate import fit_trees
    from semantic_llm_cache.tuned import LEARNED_FEATURES

    rng = np.random.default_rng(3)
    rows = rng.normal(size=(600, len(LEARNED_FEATURES)))
    rows[rng.random(rows.shape) < 0.05] = np.nan
    labels = (np.nan_to_num(rows[:, 0]) + np.nan_to_num(rows[:, 1]) + rng.normal(size=600) > 0).astype(int)
    model = fit_trees(rows, labels)  # raises itself when its export and scikit-learn disagree
    fresh = rng.normal(size=(50, len(LEARNED_FEATURES)))
    probabilities = model.probability(fresh)
    assert probabilities.shape == (50,) and ((probabilities > 0) & (probabilities < 1)).all()
    assert np.corrcoef(probabilities, fresh[:, 0] + fresh[:, 1])[0, 1] > 0.5


def test_text_features_see_what_a_cosine_misses() -> None:
    from semantic_llm_cache.tuned import LEARNED_FEATURES, learned_features, text_features

    same = text_features("How do I learn Python?", "how do i learn python")
    assert same[:3] == [1.0, 1.0, 1.0] and same[3:5] == [0.0, 0.0]
    names = dict(zip(LEARNED_FEATURES[3:], text_features("Is 5 a prime?", "Is 7 not a prime?"), strict=True))
    assert names["digits_differ"] == 1.0 and names["negation_differs"] == 1.0
    row = learned_features(1.5, 0.97, "What is 2 + 2?", "What is 2 + 3?")
    assert len(row) == len(LEARNED_FEATURES) and row[:3] == [1.5, 0.97, 0.0]  # the guard refuses other numbers


async def test_the_learned_verifier_accepts_by_its_trees(tuned_dir: Path) -> None:
    from semantic_llm_cache.tuned import CrossEncoderScorer, LearnedVerifier

    class Fixed(CrossEncoderScorer):
        def pair_logits(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
            return np.full(len(pairs), 4.0, dtype=np.float32)

    verifier = LearnedVerifier(Fixed(tuned_dir / "cross_encoder"), _stump(1, 0.9, -3.0, 3.0), 0.5)
    query = "How can I learn the guitar fast?"
    verdicts = await verifier.verify(
        [Candidate(query, "How do I learn guitar quickly?", 0.95), Candidate(query, "How do I cook rice?", 0.6)]
    )
    assert [verdict.accept for verdict in verdicts] == [True, False]
    assert verdicts[0].score is not None and verdicts[0].score > 0.9


def test_a_folder_of_an_older_format_is_refused(tuned_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(tuned_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format": 1}))
    with pytest.raises(ConfigurationError, match="re-run semantic-llm-cache tune"):
        SemanticCache.from_tuned(copy)
