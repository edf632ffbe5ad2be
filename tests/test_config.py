"""CacheConfig and CacheEntry validate on construction; every error names the field it is about."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from semantic_llm_cache import CacheConfig, CacheEntry, ConfigurationError, InvalidInputError
from semantic_llm_cache.config import DEFAULT_THRESHOLD, as_unit_vector, validate_threshold, validate_ttl


def test_defaults() -> None:
    config = CacheConfig()
    assert config.threshold == DEFAULT_THRESHOLD
    assert 0.0 < DEFAULT_THRESHOLD <= 1.0
    assert config.ttl is None
    assert config.on_error == "log"
    assert config.answer_guard is True
    assert config.max_entries is not None and config.max_entries > 0


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": -0.1}, "threshold"),
        ({"threshold": True}, "threshold"),
        ({"threshold": "0.9"}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": -1.0}, "ttl"),
        ({"ttl": float("inf")}, "ttl"),
        ({"ttl": float("nan")}, "ttl"),
        ({"ttl": "60"}, "ttl"),
        ({"max_entries": 0}, "max_entries"),
        ({"max_entries": -3}, "max_entries"),
        ({"max_entries": 2.5}, "max_entries"),
        ({"max_entries": True}, "max_entries"),
        ({"namespace": ""}, "namespace"),
        ({"namespace": "   "}, "namespace"),
        ({"namespace": None}, "namespace"),
        ({"on_error": "x"}, "on_error"),
        ({"on_error": "ignore"}, "on_error"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": False}, "timeout"),
        ({"candidates": 0}, "candidates"),
        ({"candidates": 1.5}, "candidates"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(arguments: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        CacheConfig(**arguments)


@pytest.mark.parametrize(
    "arguments",
    [{"threshold": 0}, {"threshold": 1}, {"threshold": 0.5}, {"ttl": None}, {"ttl": 0.001}, {"max_entries": None},
     {"max_entries": 1}, {"on_error": "raise"}, {"candidates": 1}, {"timeout": 0.01}],
)  # fmt: skip
def test_config_accepts_boundary_values(arguments: dict[str, Any]) -> None:
    config = CacheConfig(**arguments)
    for name, value in arguments.items():
        assert getattr(config, name) == value


def test_errors_are_value_errors_and_package_errors() -> None:
    with pytest.raises(ValueError):
        CacheConfig(threshold=2)
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(InvalidInputError, ValueError)


def test_validators() -> None:
    assert validate_threshold(1) == 1.0 and isinstance(validate_threshold(1), float)
    assert validate_ttl(None) is None
    assert validate_ttl(5) == 5.0
    with pytest.raises(ConfigurationError, match="min_similarity"):
        validate_threshold(2, "min_similarity")
    with pytest.raises(ConfigurationError, match="expiry"):
        validate_ttl(0, "expiry")


def make_entry(**overrides: Any) -> CacheEntry:
    fields: dict[str, Any] = {"prompt": "How do I reset my password?", "response": "link", "partition_id": "p1"}
    return CacheEntry(**{**fields, **overrides})


def test_entry_normalises_its_embedding() -> None:
    entry = make_entry(embedding=[3.0, 4.0])
    assert entry.embedding is not None
    assert entry.embedding.dtype == np.float32
    np.testing.assert_allclose(entry.embedding, [0.6, 0.8], rtol=1e-6)
    assert entry.dimension == 2
    assert make_entry().dimension is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"partition_id": ""}, "partition_id"),
        ({"partition_id": None}, "partition_id"),
        ({"namespace": ""}, "namespace"),
        ({"embedding": [1.0, float("nan")]}, "embedding"),
        ({"embedding": [float("inf"), 1.0]}, "embedding"),
        ({"embedding": [0.0, 0.0]}, "embedding"),
        ({"embedding": [[1.0, 0.0]]}, "embedding"),
        ({"embedding": []}, "embedding"),
        ({"embedding": ["a", "b"]}, "embedding"),
        ({"expires_at": float("inf")}, "expires_at"),
        ({"expires_at": float("nan")}, "expires_at"),
        ({"metadata": ["not", "a", "dict"]}, "metadata"),
        ({"min_similarity": 2.5}, "min_similarity"),
        ({"min_similarity": -0.5}, "min_similarity"),
    ],
)
def test_entry_rejects_bad_fields_naming_them(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises((InvalidInputError, ConfigurationError), match=field):
        make_entry(**overrides)


def test_entry_expiry() -> None:
    now = time.time()
    assert not make_entry().is_expired()
    assert make_entry().ttl_remaining() is None
    entry = make_entry(expires_at=now + 10)
    assert not entry.is_expired(now)
    assert entry.is_expired(now + 10)  # expiry is at expires_at, not after it
    assert entry.ttl_remaining(now) == pytest.approx(10)
    assert make_entry(expires_at=now - 1).is_expired()


def test_as_unit_vector_checks_dimension() -> None:
    np.testing.assert_allclose(as_unit_vector([0.0, 2.0], dimension=2), [0.0, 1.0])
    with pytest.raises(InvalidInputError, match="dimension"):
        as_unit_vector([1.0, 2.0, 3.0], dimension=2)
