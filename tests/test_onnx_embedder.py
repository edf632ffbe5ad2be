"""OnnxEmbedder on a sentence-transformers folder: its export agrees with the torch path, batches, exports once.

The default embedder (no folder, no torch) is tested in test_default_embedder.py.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from semantic_llm_cache import SemanticCache
from semantic_llm_cache.embeddings import LocalEmbedder, OnnxEmbedder, bundled_model_path
from semantic_llm_cache.embeddings import onnx as onnx_module
from semantic_llm_cache.embeddings.local import model_directory_name
from semantic_llm_cache.errors import ConfigurationError
from tests.embedding_checks import check_concurrent_calls_share_forward_passes
from tests.sample_data import QQP_SAMPLE

pytest.importorskip("sentence_transformers", reason="the torch path needs the [torch] extra")

PAIR_COUNT = 300
# beyond the 256-token limit, upper case, accents, CJK and emoji: tokenization must match sentence-transformers'
AWKWARD_TEXTS = [
    "word " * 400,
    "HOW DO I RESET MY PASSWORD?",
    "Qu'est-ce que la crème brûlée ?",
    "东京的天气怎么样？",
    "is this 🔥 or 💩",
    "a",
]


def qqp_pairs(count: int) -> list[tuple[str, str]]:
    pairs = []
    with QQP_SAMPLE.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            pairs.append((row["text_a"], row["text_b"]))
            if len(pairs) == count:
                break
    return pairs


def pair_similarities(matrix: np.ndarray, count: int) -> np.ndarray:
    similarities: np.ndarray = np.einsum("ij,ij->i", matrix[:count], matrix[count : 2 * count])
    return similarities


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-exports")


@pytest.fixture(scope="module")
def torch_embedder() -> Iterator[LocalEmbedder]:
    embedder = LocalEmbedder()
    embedder.embed_sync(["warm up"])
    yield embedder
    embedder.close()


@pytest.fixture(scope="module")
def onnx_embedder(export_dir: Path) -> Iterator[OnnxEmbedder]:
    embedder = OnnxEmbedder(bundled_model_path(), cache_dir=str(export_dir))
    embedder.embed_sync(["warm up"])
    yield embedder
    embedder.close()


@pytest.fixture(scope="module")
def int8_embedder(export_dir: Path) -> Iterator[OnnxEmbedder]:
    embedder = OnnxEmbedder(bundled_model_path(), cache_dir=str(export_dir), precision="int8")
    embedder.embed_sync(["warm up"])
    yield embedder
    embedder.close()


@pytest.fixture(scope="module")
def qqp_texts() -> list[str]:
    pairs = qqp_pairs(PAIR_COUNT)
    return [first for first, _ in pairs] + [second for _, second in pairs]


@pytest.mark.model
def test_fp32_similarities_agree_with_torch_on_qqp(
    torch_embedder: LocalEmbedder, onnx_embedder: OnnxEmbedder, qqp_texts: list[str]
) -> None:
    reference = torch_embedder.embed_sync(qqp_texts)
    fast = onnx_embedder.embed_sync(qqp_texts)
    assert fast.shape == reference.shape == (2 * PAIR_COUNT, 384) and fast.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    difference = np.abs(pair_similarities(fast, PAIR_COUNT) - pair_similarities(reference, PAIR_COUNT))
    assert difference.max() <= 1e-4, f"max |Δ cosine| {difference.max():.2e}"
    # each text's two vectors point the same way, not just the pair scores
    assert np.einsum("ij,ij->i", fast, reference).min() >= 1 - 1e-5


@pytest.mark.model
def test_fp32_tokenizes_like_sentence_transformers(torch_embedder: LocalEmbedder, onnx_embedder: OnnxEmbedder) -> None:
    reference = torch_embedder.embed_sync(AWKWARD_TEXTS)
    fast = onnx_embedder.embed_sync(AWKWARD_TEXTS)
    assert np.einsum("ij,ij->i", fast, reference).min() >= 1 - 1e-5


@pytest.mark.model
def test_fp32_export_shares_the_torch_name_of_its_folder(onnx_embedder: OnnxEmbedder) -> None:
    folder = bundled_model_path()
    assert onnx_embedder.name == LocalEmbedder(folder).name == model_directory_name(folder)
    assert onnx_embedder.dimension == 384 and onnx_embedder.loaded


@pytest.mark.model
def test_int8_is_close_but_named_apart(
    torch_embedder: LocalEmbedder, int8_embedder: OnnxEmbedder, qqp_texts: list[str]
) -> None:
    assert int8_embedder.name == model_directory_name(bundled_model_path()) + onnx_module.INT8_NAME_SUFFIX
    assert int8_embedder.model_file is not None and int8_embedder.model_file.name == "model-int8.onnx"
    reference = torch_embedder.embed_sync(qqp_texts)
    quantized = int8_embedder.embed_sync(qqp_texts)
    difference = np.abs(pair_similarities(quantized, PAIR_COUNT) - pair_similarities(reference, PAIR_COUNT))
    # measured ~0.01 mean and ~0.05 max: close enough to rank alike, too far to share thresholds or partitions
    assert difference.mean() < 0.03 and difference.max() < 0.15
    assert difference.max() > 1e-4


@pytest.mark.model
async def test_concurrent_calls_share_forward_passes(onnx_embedder: OnnxEmbedder) -> None:
    await check_concurrent_calls_share_forward_passes(onnx_embedder)
    assert (await onnx_embedder.embed([])).shape == (0, 384)


@pytest.mark.model
def test_second_construction_reuses_the_export(
    onnx_embedder: OnnxEmbedder, export_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_file = onnx_embedder.model_file
    assert model_file is not None and model_file.is_relative_to(export_dir)
    modified = model_file.stat().st_mtime_ns

    def no_export(*_: Any) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_module, "_export_fp32", no_export)
    again = OnnxEmbedder(bundled_model_path(), cache_dir=str(export_dir))
    try:
        vector = again.embed_sync(["How do I reset my password?"])
        assert again.model_file == model_file
        assert model_file.stat().st_mtime_ns == modified
        np.testing.assert_allclose(vector, onnx_embedder.embed_sync(["How do I reset my password?"]), atol=1e-6)
    finally:
        again.close()


@pytest.mark.model
def test_concurrent_first_uses_export_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_export = onnx_module._export_fp32
    exports: list[str] = []

    def counting_export(source: str, output: str) -> None:
        exports.append(output)
        real_export(source, output)

    monkeypatch.setattr(onnx_module, "_export_fp32", counting_export)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(onnx_module.ensure_onnx_model(cache_dir=str(tmp_path))))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(exports) == 1
    assert len(results) == 3 and len(set(results)) == 1 and results[0].stat().st_size > 1_000_000
    assert [path.name for path in results[0].parent.iterdir() if path.name.endswith(".partial")] == []


def test_failed_export_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_export(source: str, output: str) -> None:
        Path(output).write_bytes(b"half a graph")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(onnx_module, "_export_fp32", broken_export)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        onnx_module.ensure_onnx_model(cache_dir=str(tmp_path))
    leftovers = [path.name for path in tmp_path.rglob("*") if path.is_file() and path.name != ".lock"]
    assert leftovers == []


@pytest.mark.model
async def test_semantic_cache_paraphrase_lookup(onnx_embedder: OnnxEmbedder) -> None:
    async with SemanticCache(embedder=onnx_embedder) as cache:
        await cache.store("How do I reset my password?", "Use the 'Forgot password' link on the sign-in page.")
        paraphrase = await cache.lookup("How can I reset my password?")
        assert paraphrase is not None and paraphrase.kind == "semantic"
        assert paraphrase.similarity >= cache.config.threshold
        assert await cache.lookup("How do I delete my account?") is None
        assert (await cache.get_stats())["embedder"] == onnx_embedder.name


def test_fingerprint_follows_the_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights one")
    first = onnx_module.weights_fingerprint(str(tmp_path))
    assert onnx_module.weights_fingerprint(str(tmp_path)) == first
    (tmp_path / "model.safetensors").write_bytes(b"weights two")
    assert onnx_module.weights_fingerprint(str(tmp_path)) != first
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ConfigurationError, match=r"no model\.safetensors"):
        onnx_module.weights_fingerprint(str(tmp_path))


def test_reads_the_bundled_pooling_config() -> None:
    config = onnx_module.read_sentence_model_config(bundled_model_path())
    assert config == onnx_module.SentenceModelConfig(
        max_seq_length=256, do_lower_case=False, pooling_mode="mean_tokens"
    )


def test_refuses_pipelines_it_would_get_wrong(tmp_path: Path) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigurationError, match="Dense"):
        onnx_module.read_sentence_model_config(str(tmp_path))
    (tmp_path / "modules.json").write_text(json.dumps(modules[:2]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_weightedmean_tokens": True}))
    with pytest.raises(ConfigurationError, match="pooling"):
        onnx_module.read_sentence_model_config(str(tmp_path))


@pytest.mark.parametrize(
    ("pooling", "expected"),
    [
        ("mean_tokens", [[2.0, 3.0]]),
        ("cls_token", [[1.0, 2.0]]),
        ("max_tokens", [[3.0, 4.0]]),
        ("mean_sqrt_len_tokens", [[4.0 / np.sqrt(2), 6.0 / np.sqrt(2)]]),
    ],
)
def test_pooling_ignores_padding(pooling: str, expected: list[list[float]]) -> None:
    tokens = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(onnx_module._pool(tokens, mask, pooling), expected, rtol=1e-6)


def test_rejects_bad_options(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="precision"):
        OnnxEmbedder(precision="int4")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="threads"):
        OnnxEmbedder(threads=0)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *rest: None if name == "onnxruntime" else real_find_spec(name, *rest)
    )
    with pytest.raises(ConfigurationError, match="pip install onnxruntime"):
        OnnxEmbedder()


def test_construction_is_lazy(tmp_path: Path) -> None:
    embedder = OnnxEmbedder(cache_dir=str(tmp_path), precision="int8")
    assert not embedder.loaded and embedder.model_file is None
    assert "+onnx-int8" in embedder.name and embedder.dimension == 384
    assert list(tmp_path.iterdir()) == []
