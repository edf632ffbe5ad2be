"""Scope -> partition id (stable, exact), exact keys, and whitespace-only prompt normalisation."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from semantic_llm_cache import InvalidInputError, Scope
from semantic_llm_cache.scope import canonical_json, exact_key, normalize_prompt, partition_id, partition_of_key

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_SCOPE = Scope(
    model="openai:gpt-4o-mini", params={"temperature": 0}, context=[{"role": "system", "content": "Be brief."}]
)
# Computed once and hard-coded: a change here orphans every stored entry (bump PARTITION_VERSION on purpose).
REFERENCE_PARTITION = "bba772f058eaa3a34d94c87607f48b98"
DEFAULT_PARTITION = "574d824168c8b80aacf5cb33e6ca57b0"


def test_partition_id_is_a_fixed_value() -> None:
    assert partition_id(REFERENCE_SCOPE, "acme", "test-embedder") == REFERENCE_PARTITION
    assert partition_id(Scope(), "default", "test-embedder") == DEFAULT_PARTITION
    assert re.fullmatch(r"[0-9a-f]{32}", REFERENCE_PARTITION)


def test_partition_id_is_stable_across_calls_and_processes() -> None:
    assert {partition_id(REFERENCE_SCOPE, "acme", "test-embedder") for _ in range(5)} == {REFERENCE_PARTITION}
    code = (
        "from semantic_llm_cache.scope import Scope, partition_id\n"
        "print(partition_id(Scope(model='openai:gpt-4o-mini', params={'temperature': 0}, "
        "context=[{'role': 'system', 'content': 'Be brief.'}]), 'acme', 'test-embedder'))"
    )
    for seed in ("1", "12345"):
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            timeout=120,
            check=True,
        )
        assert result.stdout.strip() == REFERENCE_PARTITION


@pytest.mark.parametrize(
    ("scope", "namespace", "embedder"),
    [
        (Scope(namespace="other-tenant", model=REFERENCE_SCOPE.model, params=REFERENCE_SCOPE.params,
               context=REFERENCE_SCOPE.context), "acme", "test-embedder"),
        (REFERENCE_SCOPE, "other-tenant", "test-embedder"),
        (Scope(model="openai:gpt-4o", params={"temperature": 0}, context=REFERENCE_SCOPE.context), "acme",
         "test-embedder"),
        (Scope(model=REFERENCE_SCOPE.model, params={"temperature": 0.7}, context=REFERENCE_SCOPE.context), "acme",
         "test-embedder"),
        (Scope(model=REFERENCE_SCOPE.model, params={"temperature": 0, "max_tokens": 10},
               context=REFERENCE_SCOPE.context), "acme", "test-embedder"),
        (Scope(model=REFERENCE_SCOPE.model, params={"temperature": 0},
               context=[{"role": "system", "content": "Be verbose."}]), "acme", "test-embedder"),
        (Scope(model=REFERENCE_SCOPE.model, params={"temperature": 0}), "acme", "test-embedder"),
        (REFERENCE_SCOPE, "acme", "another-embedder"),
    ],
    ids=["scope namespace", "default namespace", "model", "param value", "extra param", "context", "no context",
         "embedder"],
)  # fmt: skip
def test_partition_id_differs_by_every_part(scope: Scope, namespace: str, embedder: str) -> None:
    assert partition_id(scope, namespace, embedder) != REFERENCE_PARTITION


def test_partition_id_ignores_parameter_order_and_mapping_type() -> None:
    first = Scope(model="m", params={"temperature": 0, "stop": ["\n"], "max_tokens": 5})
    second = Scope(model="m", params=dict(reversed(list(first.params.items()))))
    assert partition_id(first, "ns", "e") == partition_id(second, "ns", "e")


def test_scope_namespace_overrides_the_default_namespace() -> None:
    assert partition_id(Scope(namespace="acme"), "default", "e") == partition_id(Scope(), "acme", "e")
    assert Scope().with_namespace("acme").namespace == "acme"
    assert Scope(namespace="kept").with_namespace("acme").namespace == "kept"


def deeply_nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("make_scope", "namespace", "message"),
    [
        (lambda: Scope(namespace=""), "default", "namespace"),
        (lambda: Scope(), "", "namespace"),
        (lambda: Scope(model=42), "default", "model"),
        (lambda: Scope(params={"callback": object()}), "default", "Scope"),
        (lambda: Scope(context={"temperature": float("nan")}), "default", "Scope"),
        (lambda: Scope(params=None), "default", "params"),
        (lambda: Scope(params="abc"), "default", "params"),
        (lambda: Scope(params=[1]), "default", "params"),
        (lambda: Scope(params={1: "a"}), "default", "params"),
        (lambda: {"namespace": "acme"}, "default", "must be a Scope"),
        (lambda: Scope(namespace="a\ud800"), "default", "surrogate"),
        (lambda: Scope(context="a\udfff b"), "default", "surrogate"),
        (lambda: Scope(model="\ud83d"), "default", "surrogate"),
        (lambda: Scope(), "tenant-\ud800", "surrogate"),
        (lambda: Scope(context=deeply_nested(5000)), "default", "deep"),
        (lambda: Scope(params={"p": deeply_nested(5000)}), "default", "deep"),
    ],
)
def test_invalid_scopes_are_rejected(make_scope: Callable[[], Any], namespace: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        partition_id(make_scope(), namespace, "e")


def test_exact_key_format() -> None:
    partition = partition_id(Scope(), "default", "e")
    key = exact_key(partition, "How do I reset my password?")
    assert re.fullmatch(rf"{partition}:[0-9a-f]{{32}}", key)
    assert key == exact_key(partition, "How do I reset my password?")
    assert key != exact_key(partition, "how do I reset my password?")
    assert key != exact_key(partition_id(Scope(model="m"), "default", "e"), "How do I reset my password?")
    assert partition_of_key(key) == partition


@pytest.mark.parametrize("bad_key", ["", "no-separator", ":digest-only", "partition-only:"])
def test_partition_of_key_rejects_non_keys(bad_key: str) -> None:
    with pytest.raises(InvalidInputError):
        partition_of_key(bad_key)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("How do I reset my password?", "How do I reset my password?"),
        ("  How  do I\treset\nmy password?  ", "How do I reset my password?"),
        ("line one\r\n\r\nline two", "line one line two"),
        ("non\u00a0breaking space", "non breaking space"),
        ("Is it NOT the same?", "Is it NOT the same?"),
        ("the a an of to is it", "the a an of to is it"),
        ("What's 6.86 + 2?!", "What's 6.86 + 2?!"),
    ],
)
def test_normalize_prompt_collapses_whitespace_only(raw: str, normalized: str) -> None:
    assert normalize_prompt(raw) == normalized


@pytest.mark.parametrize("bad", ["", " ", "\n\t\r ", None, 3, b"bytes", ["list"]])
def test_normalize_prompt_rejects_empty_and_non_strings(bad: object) -> None:
    with pytest.raises(InvalidInputError, match="prompt"):
        normalize_prompt(bad)


def test_canonical_json_is_deterministic() -> None:
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'
    with pytest.raises(InvalidInputError, match="JSON"):
        canonical_json({"a": {1, 2}})
