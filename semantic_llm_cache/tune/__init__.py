"""`tune`: a tuned setup from your own labeled pairs (`semantic-llm-cache tune PAIRS.jsonl --out DIR`).

Stages: split the pairs by connected groups of texts into train and calibration parts (`split.py`); fine-tune
the bundled bi-encoder and train a cross-encoder from the same weights on the train part, on CPU, and export both
to ONNX (`train.py`, needs the `[tune]` extra: torch); choose the candidate and verifier thresholds on the
calibration part with the cache protocol for a target precision, and fit the learned verifier (`calibrate.py`);
write `manifest.json` and `report.md`/`report.png` (`api.py`). Serving the folder needs only the light install:
`SemanticCache.from_tuned(DIR)` (`semantic_llm_cache.tuned`).
"""

from semantic_llm_cache.tune.api import DEFAULT_TARGET_PRECISION, MANIFEST, TuneResult, tune
from semantic_llm_cache.tune.calibrate import measure_dir
from semantic_llm_cache.tune.split import group_split, pair_groups
from semantic_llm_cache.tune.train import TrainSettings

__all__ = [
    "DEFAULT_TARGET_PRECISION",
    "MANIFEST",
    "TrainSettings",
    "TuneResult",
    "group_split",
    "measure_dir",
    "pair_groups",
    "tune",
]
