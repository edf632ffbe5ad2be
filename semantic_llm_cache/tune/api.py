"""`tune(pairs, out)`: a tuned setup from labeled pairs (see the package docstring for the stages)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semantic_llm_cache.calibration import LabeledPair, load_pairs
from semantic_llm_cache.errors import ConfigurationError
from semantic_llm_cache.tune.split import group_split, pair_groups
from semantic_llm_cache.tune.train import TrainSettings
from semantic_llm_cache.tuned import TUNED_FORMAT

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STAGES = "stages.json"
FORMAT_VERSION = TUNED_FORMAT
DEFAULT_TARGET_PRECISION = 0.90
DEFAULT_CALIBRATION_FRACTION = 0.2
# Sized for a CPU (measured on 2 shared cores: see the README): the bi-encoder adapts its top 4 layers over one
# pass (half a pass over the top 2 served 0.148 of the test lookups at precision 0.902; this, 0.157 at 0.909);
# the cross-encoder (whose pair head starts from nothing) its top 4 over 2 passes (at 0.75 of a pass it ranked
# the calibration pairs worse than the tuned cosine: AUC 0.873 against 0.882; 2 passes served 0.200 at 0.904 on
# the test part, 2.5 passes 0.189 at 0.912, and 2 keep 20,000 pairs well inside the 30-minute budget).
DEFAULT_BI_SETTINGS = TrainSettings(epochs=1.0, batch_size=32, learning_rate=5e-5, max_length=64, frozen_layers=2)
DEFAULT_CROSS_SETTINGS = TrainSettings(epochs=2.0, batch_size=32, learning_rate=5e-5, max_length=128, frozen_layers=2)


@dataclass
class TuneResult:
    """Where the tuned setup is and what was chosen and measured (the manifest, as a dict)."""

    directory: Path
    manifest: dict[str, Any] = field(default_factory=dict)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def pairs_sha256(pairs: Sequence[LabeledPair]) -> str:
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps([pair.text_a, pair.text_b, pair.label]).encode() + b"\n")
    return digest.hexdigest()


def _stage_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _write_json(path: Path, value: Any) -> None:
    scratch = path.with_name(f".{path.name}.partial")
    scratch.write_text(json.dumps(value, indent=2, sort_keys=False) + "\n")
    os.replace(scratch, path)


def tune(
    pairs_path: str | Path,
    out: str | Path,
    *,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    calibration_fraction: float = DEFAULT_CALIBRATION_FRACTION,
    seed: int = 0,
    bi_encoder: TrainSettings | None = None,
    cross_encoder: TrainSettings | None = None,
    candidates: int = 4,
    base_model: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> TuneResult:
    """Build a tuned setup in `out` from the labeled pairs in `pairs_path` (JSON lines, text_a/text_b/label).

    Stages, each skipped when its output exists and was made from the same inputs (a hash of the data, the
    split, the settings and the base model; `force` reruns all): split by connected groups of texts into train
    and calibration parts; fine-tune the bi-encoder on the train part and export it to ONNX; train the
    cross-encoder on the train part and export it; choose the thresholds on the calibration part with the cache
    protocol for `target_precision`; write `manifest.json` and `report.md` (+ `report.png` with matplotlib).
    """
    from semantic_llm_cache.embeddings.local import bundled_model_path
    from semantic_llm_cache.embeddings.onnx import weights_fingerprint
    from semantic_llm_cache.tune import calibrate, train

    if not 0 < target_precision < 1:
        raise ConfigurationError(f"target precision must be between 0 and 1, got {target_precision}")
    started = time.perf_counter()
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    bi_settings = dataclasses.replace(bi_encoder or DEFAULT_BI_SETTINGS, seed=seed)
    cross_settings = dataclasses.replace(cross_encoder or DEFAULT_CROSS_SETTINGS, seed=seed)
    base = base_model or bundled_model_path()
    base_fingerprint = weights_fingerprint(base)
    pairs = load_pairs(pairs_path, limit)
    data_hash = pairs_sha256(pairs)
    train_pairs, calibration_pairs = group_split(pairs, calibration_fraction, seed)
    if not train_pairs or not calibration_pairs:
        raise ConfigurationError(f"{len(pairs)} pairs are too few to split into train and calibration parts")
    split = {
        "by": "connected groups of texts (case and punctuation ignored)",
        "seed": seed,
        "calibration_fraction": calibration_fraction,
        "groups": len(set(pair_groups(pairs))),
        "train_pairs": len(train_pairs),
        "train_positives": sum(pair.label for pair in train_pairs),
        "calibration_pairs": len(calibration_pairs),
        "calibration_positives": sum(pair.label for pair in calibration_pairs),
        "train_sha256": pairs_sha256(train_pairs),
        "calibration_sha256": pairs_sha256(calibration_pairs),
    }
    stages = {} if force else _read_json(directory / STAGES)
    timings: dict[str, float] = dict(stages.get("seconds", {}))

    def run_stage(name: str, key: str, target: Path, work: Any) -> None:
        if stages.get(name) == key and target.exists():
            logger.info("tune: %s is up to date (%s), skipped", name, target)
            return
        begun = time.perf_counter()
        work()
        timings[name] = round(time.perf_counter() - begun, 1)
        stages[name] = key
        stages["seconds"] = timings
        _write_json(directory / STAGES, stages)

    embedder_dir = directory / "embedder"
    bi_key = _stage_key(
        stage="bi", base=base_fingerprint, train=split["train_sha256"], **dataclasses.asdict(bi_settings)
    )
    run_stage(
        "bi_encoder",
        bi_key,
        embedder_dir / "model.onnx",
        lambda: (
            train.train_bi_encoder(base, train_pairs, embedder_dir, bi_settings, progress),
            train.export_bi_encoder(embedder_dir),
        ),
    )
    cross_dir = directory / "cross_encoder"
    cross_key = _stage_key(
        stage="cross", base=base_fingerprint, train=split["train_sha256"], **dataclasses.asdict(cross_settings)
    )
    run_stage(
        "cross_encoder",
        cross_key,
        cross_dir / "model.onnx",
        lambda: train.train_cross_encoder(base, train_pairs, cross_dir, cross_settings, progress),
    )
    cross_graph = train.quantize_cross_encoder(cross_dir)  # cheap; also for folders trained before it existed
    begun = time.perf_counter()
    chosen = calibrate.calibrate_dir(
        directory, calibration_pairs, target_precision, candidates=candidates, progress=progress, seed=seed
    )
    timings["calibration"] = round(time.perf_counter() - begun, 1)
    manifest = {
        "format": FORMAT_VERSION,
        "kind": "semantic-llm-cache tuned setup",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base_model": {"path_name": Path(base).name, "fingerprint": base_fingerprint},
        "data": {
            "file": Path(pairs_path).name,
            "file_sha256": file_sha256(pairs_path),
            "pairs": len(pairs),
            "positives": sum(pair.label for pair in pairs),
            "pairs_sha256": data_hash,
            "limit": limit,
        },
        "split": split,
        "training": {
            "bi_encoder": {**dataclasses.asdict(bi_settings), "loss": "CoSENT + in-batch ranking (both ways)"},
            "cross_encoder": {**dataclasses.asdict(cross_settings), "loss": "binary cross-entropy, class-balanced"},
            "device": "cpu",
        },
        "models": {
            "embedder": {
                "path": "embedder/model.onnx",
                "sha256": file_sha256(embedder_dir / "model.onnx"),
                "bytes": (embedder_dir / "model.onnx").stat().st_size,
            },
            "cross_encoder": {
                "path": f"cross_encoder/{cross_graph.name}",
                "sha256": file_sha256(cross_graph),
                "bytes": cross_graph.stat().st_size,
                "precision": "int8 (dynamic, per-channel), quantized from model.onnx (fp32)",
            },
        },
        **chosen,
        "seconds": {**timings, "total_this_run": round(time.perf_counter() - started, 1)},
    }
    _write_json(directory / MANIFEST, manifest)
    calibrate.write_report(directory, manifest)
    return TuneResult(directory, manifest)


__all__ = ["DEFAULT_TARGET_PRECISION", "MANIFEST", "TuneResult", "file_sha256", "pairs_sha256", "tune"]
