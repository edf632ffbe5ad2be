"""The small labeled sample committed with the tests (the full shared data is for benchmarks only)."""

from __future__ import annotations

from pathlib import Path

QQP_SAMPLE = Path(__file__).resolve().parent / "data" / "qqp_sample.jsonl"
