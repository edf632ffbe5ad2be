"""Training with torch (the `[tune]` extra): the bi-encoder fine-tuned on labeled pairs, and a cross-encoder
initialised from the same weights; both exported to ONNX for serving without torch.

Seeded (python, numpy, torch; one thread order), CPU only, with tqdm progress bars. A stage writes its folder
atomically (a temporary folder renamed at the end), so an interrupted run restarts that stage cleanly.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import random
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semantic_llm_cache.calibration import LabeledPair
from semantic_llm_cache.errors import ConfigurationError

logger = logging.getLogger(__name__)

CROSS_ENCODER_CONFIG = "cross_encoder.json"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_ONNX_OPSET = 17


@dataclass(frozen=True)
class TrainSettings:
    """What a training stage does; part of the manifest and of the hash that decides whether a stage reruns."""

    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup: float = 0.1
    max_length: int = 128
    scale: float = 20.0  # bi-encoder: cosine scale of the in-batch ranking and CoSENT losses
    seed: int = 0
    threads: int = 2
    frozen_layers: int = 0  # the token table and this many bottom layers keep their weights (cheaper on CPU)


def _step(model: Any, loss: Any, optimizer: Any, scheduler: Any, losses: list[float], bar: Any) -> None:
    """One optimisation step (gradients clipped at norm 1), its loss kept and shown on the progress bar."""
    import torch

    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    losses.append(float(loss.detach()))
    bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    bar.update()


def _torch() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        import transformers
    except ImportError as exc:  # pragma: no cover - the [tune] extra is missing
        raise ConfigurationError(
            "tune needs torch and transformers: pip install torch==2.13.0 'async-semantic-llm-cache[tune]'"
        ) from exc
    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    return torch


def seed_everything(seed: int, threads: int) -> None:
    torch = _torch()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))


def _progress(total: int, description: str, enabled: bool) -> Any:
    tqdm = importlib.import_module("tqdm.auto").tqdm
    return tqdm(total=total, desc=description, unit="step", disable=not enabled, dynamic_ncols=True)


def _batches(lengths: Sequence[int], batch_size: int, epochs: float, rng: random.Random) -> Iterator[list[int]]:
    """Shuffled row batches for `epochs` passes (a fraction of a pass allowed), the same for the same seed.

    Rows of similar length go together (sorted within windows of 50 batches, the batches then shuffled): a batch
    is padded to its longest row, so mixed lengths would waste most of the compute on padding."""
    steps = max(1, math.ceil(epochs * len(lengths) / batch_size))
    window = batch_size * 50
    pending: list[list[int]] = []
    produced = 0
    while produced < steps:
        if not pending:
            order = list(range(len(lengths)))
            rng.shuffle(order)
            for start in range(0, len(order), window):
                chunk = sorted(order[start : start + window], key=lengths.__getitem__)
                pending.extend(chunk[at : at + batch_size] for at in range(0, len(chunk), batch_size))
            rng.shuffle(pending)
        yield pending.pop()
        produced += 1


def _steps(count: int, settings: TrainSettings) -> int:
    return max(1, math.ceil(settings.epochs * count / settings.batch_size))


def _schedule(optimizer: Any, total: int, warmup: float) -> Any:
    torch = _torch()
    warm = max(1, int(total * warmup))

    def factor(step: int) -> float:
        return (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _freeze(model: Any, layers: int) -> None:
    """The embeddings (the 30k-row token table: most rows see no text of a small set) and the bottom `layers`
    transformer layers keep their weights: backward stops above them, which on CPU is most of the saving."""
    inner = model if hasattr(model, "get_input_embeddings") else model.encoder
    inner.embeddings.requires_grad_(False)
    for layer in inner.encoder.layer[:layers]:
        layer.requires_grad_(False)


def _trainable(model: Any) -> list[Any]:
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def _mean_pool(torch: Any, tokens: Any, mask: Any) -> Any:
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


@contextlib.contextmanager
def _staged(target: Path) -> Iterator[Path]:
    """A scratch folder next to `target`, renamed to it when the block succeeds (removed when it fails)."""
    scratch = target.with_name(f".{target.name}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        yield scratch
        shutil.rmtree(target, ignore_errors=True)
        os.replace(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _copy_sentence_files(base: Path, target: Path) -> None:
    """The base folder's tokenizer and sentence-transformers files (not its weights)."""
    for path in base.iterdir():
        if path.name in _WEIGHT_FILES or path.name.startswith("."):
            continue
        if path.is_dir():
            shutil.copytree(path, target / path.name, dirs_exist_ok=True)
        else:
            shutil.copy2(path, target / path.name)


def train_bi_encoder(
    base_path: str | Path,
    pairs: Sequence[LabeledPair],
    target: Path,
    settings: TrainSettings,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the sentence model on `pairs` into the sentence-transformers folder `target`.

    Loss per batch of labeled pairs: CoSENT over every pair (each positive pair's cosine must exceed each negative
    pair's: it orders the cosines a threshold is drawn on) plus in-batch ranking (MultipleNegativesRanking) over
    the positive pairs, both ways (each text's partner must be its nearest among the batch's texts)."""
    torch = _torch()
    from transformers import AutoModel, AutoTokenizer

    seed_everything(settings.seed, settings.threads)
    base = Path(base_path)
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    model = AutoModel.from_pretrained(str(base), local_files_only=True)
    model.train()
    _freeze(model, settings.frozen_layers)
    optimizer = torch.optim.AdamW(_trainable(model), lr=settings.learning_rate, weight_decay=0.01)
    total = _steps(len(pairs), settings)
    scheduler = _schedule(optimizer, total, settings.warmup)
    rng = random.Random(settings.seed)
    lengths = [len(pair.text_a) + len(pair.text_b) for pair in pairs]
    losses: list[float] = []

    def encode(texts: list[str]) -> Any:
        inputs = tokenizer(texts, padding=True, truncation=True, max_length=settings.max_length, return_tensors="pt")
        output = model(**inputs).last_hidden_state
        return torch.nn.functional.normalize(_mean_pool(torch, output, inputs["attention_mask"]), dim=-1)

    with _progress(total, "bi-encoder", progress) as bar:
        for batch in _batches(lengths, settings.batch_size, settings.epochs, rng):
            chosen = [pairs[row] for row in batch]
            labels = torch.tensor([pair.label for pair in chosen], dtype=torch.float32)
            vectors = encode([pair.text_a for pair in chosen] + [pair.text_b for pair in chosen])
            left, right = vectors[: len(chosen)], vectors[len(chosen) :]
            cosines = (left * right).sum(-1) * settings.scale
            # CoSENT: log(1 + sum over (negative i, positive j) of exp(cos_i - cos_j))
            difference = cosines[:, None] - cosines[None, :]
            keep = (labels[:, None] < labels[None, :]).float()
            difference = difference - (1 - keep) * 1e12
            loss = torch.logsumexp(torch.cat([torch.zeros(1), difference.flatten()]), dim=0)
            positive = labels > 0.5
            if int(positive.sum()) > 1:
                scores = left[positive] @ right[positive].T * settings.scale
                targets = torch.arange(scores.shape[0])
                ranking = torch.nn.functional.cross_entropy(scores, targets)
                ranking = ranking + torch.nn.functional.cross_entropy(scores.T, targets)
                loss = loss + ranking / 2
            _step(model, loss, optimizer, scheduler, losses, bar)
    model.eval()
    with _staged(target) as scratch:
        _copy_sentence_files(base, scratch)
        model.save_pretrained(str(scratch))
    return {"steps": total, "final_loss": float(np.mean(losses[-50:]))}


def cross_encoder_module(torch: Any, encoder: Any) -> Any:
    """The cross-encoder: the transformer over `[CLS] a [SEP] b [SEP]`, mean-pooled, one linear logit."""

    class CrossEncoder(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.dropout = torch.nn.Dropout(0.1)
            self.head = torch.nn.Linear(encoder.config.hidden_size, 1)

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            output = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            pooled = _mean_pool(torch, output.last_hidden_state, attention_mask)
            return self.head(self.dropout(pooled)).squeeze(-1)

    return CrossEncoder()


def train_cross_encoder(
    base_path: str | Path,
    pairs: Sequence[LabeledPair],
    target: Path,
    settings: TrainSettings,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a cross-encoder from the sentence model's weights on `pairs` (binary cross-entropy, each pair in a
    random order so that the score does not depend on which text is the query); writes weights + ONNX."""
    torch = _torch()
    from transformers import AutoModel, AutoTokenizer

    seed_everything(settings.seed, settings.threads)
    base = Path(base_path)
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    encoder = AutoModel.from_pretrained(str(base), local_files_only=True)
    model = cross_encoder_module(torch, encoder)
    model.train()
    _freeze(model, settings.frozen_layers)
    optimizer = torch.optim.AdamW(_trainable(model), lr=settings.learning_rate, weight_decay=0.01)
    total = _steps(len(pairs), settings)
    scheduler = _schedule(optimizer, total, settings.warmup)
    rng = random.Random(settings.seed + 1)
    positives = sum(pair.label for pair in pairs)
    lengths = [len(pair.text_a) + len(pair.text_b) for pair in pairs]
    weight = torch.tensor((len(pairs) - positives) / max(1, positives))  # balance the classes
    losses: list[float] = []
    with _progress(total, "cross-encoder", progress) as bar:
        for batch in _batches(lengths, settings.batch_size, settings.epochs, rng):
            chosen = [pairs[row] for row in batch]
            swapped = [rng.random() < 0.5 for _ in chosen]
            first = [pair.text_b if swap else pair.text_a for pair, swap in zip(chosen, swapped, strict=True)]
            second = [pair.text_a if swap else pair.text_b for pair, swap in zip(chosen, swapped, strict=True)]
            inputs = tokenizer(
                first, second, padding=True, truncation=True, max_length=settings.max_length, return_tensors="pt"
            )
            labels = torch.tensor([pair.label for pair in chosen], dtype=torch.float32)
            logits = model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, pos_weight=weight)
            _step(model, loss, optimizer, scheduler, losses, bar)
    model.eval()
    with _staged(target) as scratch:
        _copy_sentence_files(base, scratch)
        torch.save(model.state_dict(), scratch / "cross_encoder.pt")
        # traced with eager attention (plain ONNX ops), the same weights
        eager = cross_encoder_module(
            torch, AutoModel.from_pretrained(str(base), local_files_only=True, attn_implementation="eager")
        )
        eager.load_state_dict(model.state_dict())
        export_cross_encoder(eager.eval(), scratch / "model.onnx", settings.max_length)
        config = {"max_length": settings.max_length, "pooling": "mean", "output": "logit", **asdict(settings)}
        (scratch / CROSS_ENCODER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return {"steps": total, "final_loss": float(np.mean(losses[-50:]))}


def _probe(torch: Any, lengths: Sequence[int]) -> tuple[Any, Any, Any]:
    longest = max(lengths)
    ids = torch.zeros((len(lengths), longest), dtype=torch.long)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.arange(1000, 1000 + length)
        ids[row, 0], ids[row, length - 1] = 101, 102
        mask[row, :length] = 1
        types[row, length // 2 : length] = 1
    return ids, mask, types


def export_cross_encoder(model: Any, output: Path, max_length: int) -> None:
    """The cross-encoder as ONNX (input_ids, attention_mask, token_type_ids -> logits), checked against torch."""
    torch = _torch()
    onnxruntime = importlib.import_module("onnxruntime")

    names = ["input_ids", "attention_mask", "token_type_ids"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            _probe(torch, (9, 7)),
            str(output),
            dynamo=False,
            input_names=names,
            output_names=["logits"],
            dynamic_axes={**{name: {0: "batch", 1: "sequence"} for name in names}, "logits": {0: "batch"}},
            opset_version=_ONNX_OPSET,
            do_constant_folding=True,
        )
        checks = [_probe(torch, lengths) for lengths in ((3, 12, 8), (min(40, max_length),))]
        expected = [model(*check).numpy() for check in checks]
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    for check, reference in zip(checks, expected, strict=True):
        got = session.run(None, {name: tensor.numpy() for name, tensor in zip(names, check, strict=True)})[0]
        error = float(np.max(np.abs(got - reference)))
        if not error <= 1e-3:
            raise RuntimeError(f"the cross-encoder's ONNX export differs from torch by {error:.2e}")


CROSS_ENCODER_GRAPH = "model-int8.onnx"


def quantize_cross_encoder(model_dir: Path) -> Path:
    """The cross-encoder's graph in dynamic int8 (per-channel weights), the one served: measured 3 ms against 9 ms
    for fp32 on one candidate (2 busy cores), the logit moving by about 0.05. Thresholds are chosen on it."""
    from semantic_llm_cache.embeddings.onnx import _quantize_int8

    output = model_dir / CROSS_ENCODER_GRAPH
    if not output.is_file():
        scratch = model_dir / f".{CROSS_ENCODER_GRAPH}.partial"
        _quantize_int8(model_dir / "model.onnx", str(scratch))
        os.replace(scratch, output)
    return output


def export_bi_encoder(model_dir: Path) -> Path:
    """`model.onnx` (token embeddings) in the sentence-transformers folder, checked against torch."""
    from semantic_llm_cache.embeddings.onnx import _export_fp32

    output = model_dir / "model.onnx"
    if not output.is_file():
        scratch = model_dir / ".model.onnx.partial"
        _export_fp32(str(model_dir), str(scratch))
        os.replace(scratch, output)
    return output


__all__ = [
    "CROSS_ENCODER_CONFIG",
    "CROSS_ENCODER_GRAPH",
    "TrainSettings",
    "cross_encoder_module",
    "export_bi_encoder",
    "export_cross_encoder",
    "quantize_cross_encoder",
    "seed_everything",
    "train_bi_encoder",
    "train_cross_encoder",
]
