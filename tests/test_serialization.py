"""The versioned JSON codec: entries round-trip exactly, malformed input is rejected, nothing is ever pickled."""

from __future__ import annotations

import ast
import base64
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import semantic_llm_cache
from semantic_llm_cache import CacheEntry, InvalidInputError
from semantic_llm_cache.serialization import (
    FORMAT_VERSION,
    check_json_value,
    dumps_entry,
    entry_from_dict,
    entry_to_dict,
    loads_entry,
    vector_from_bytes,
    vector_to_bytes,
)

PACKAGE = Path(semantic_llm_cache.__file__).resolve().parent


def full_entry() -> CacheEntry:
    now = time.time()
    return CacheEntry(
        prompt="Wie setze ich mein Passwort zurück? 🔑",
        response={"text": "Use the link.", "choices": [1, 2.5, None, True], "nested": {"ok": "ja"}},
        partition_id="0123456789abcdef0123456789abcdef",
        namespace="tenant-a",
        embedding=np.random.default_rng(3).standard_normal(384).astype(np.float32),
        embedder="sentence-transformers/all-MiniLM-L6-v2",
        created_at=now,
        expires_at=now + 3600,
        hits=7,
        last_hit_at=now + 1,
        metadata={"source": "test", "feedback": {"correct": 2}},
        compute_seconds=1.25,
        tokens=42,
        min_similarity=0.9612,
    )


def assert_same_entry(restored: CacheEntry, original: CacheEntry, *, with_vector: bool = True) -> None:
    for field in ("prompt", "response", "partition_id", "namespace", "embedder", "created_at", "expires_at", "hits",
                  "last_hit_at", "metadata", "compute_seconds", "tokens", "min_similarity"):  # fmt: skip
        assert getattr(restored, field) == getattr(original, field), field
    if with_vector:
        assert restored.embedding is not None and original.embedding is not None
        assert restored.embedding.dtype == np.float32
        np.testing.assert_array_equal(restored.embedding, original.embedding)
    else:
        assert restored.embedding is None


def test_entry_round_trip_is_exact() -> None:
    original = full_entry()
    text = dumps_entry(original)
    assert "\n" not in text
    assert json.loads(text)["format"] == FORMAT_VERSION
    assert_same_entry(loads_entry(text), original)
    assert_same_entry(loads_entry(text.encode()), original)


def test_round_trip_of_a_minimal_entry() -> None:
    original = CacheEntry(prompt="p", response="r", partition_id="x")
    restored = loads_entry(dumps_entry(original))
    assert_same_entry(restored, original, with_vector=False)
    assert restored.min_similarity == 0.0


def test_vector_can_be_left_out_and_supplied_separately() -> None:
    original = full_entry()
    data = entry_to_dict(original, include_vector=False)
    assert "embedding" not in data
    assert_same_entry(entry_from_dict(data), original, with_vector=False)
    assert original.embedding is not None
    assert_same_entry(entry_from_dict(data, original.embedding), original)


def test_vectors_are_little_endian_float32() -> None:
    vector = np.array([1.0, -2.5, 3.25], dtype=np.float32)
    blob = vector_to_bytes(vector)
    assert blob == np.array([1.0, -2.5, 3.25], dtype="<f4").tobytes() and len(blob) == 12
    np.testing.assert_array_equal(vector_from_bytes(blob, 3), vector)
    with pytest.raises(ValueError):
        vector_from_bytes(blob, 4)
    with pytest.raises(ValueError):
        vector_from_bytes(blob[:-1])
    with pytest.raises(ValueError):
        vector_from_bytes(b"")


def tampered(**changes: Any) -> str:
    data = entry_to_dict(full_entry())
    for key, value in changes.items():
        if value is KeyError:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    "text",
    [
        "not json at all",
        "",
        "[1, 2, 3]",
        '"a string"',
        "null",
        tampered(format=FORMAT_VERSION + 1),
        tampered(prompt=KeyError),
        tampered(response=KeyError),
        tampered(partition_id=KeyError),
        tampered(created_at=KeyError),
        tampered(prompt=42),
        tampered(partition_id=""),
        tampered(created_at="yesterday"),
        tampered(hits="many"),
        tampered(tokens=[1]),
        tampered(metadata=["not", "a", "dict"]),
        tampered(min_similarity=2.5),
        tampered(expires_at="Infinity"),
        tampered(embedding="!!not base64!!"),
        tampered(embedding=base64.b64encode(b"\x00\x01\x02").decode()),
        tampered(embedding=base64.b64encode(np.zeros(4, dtype="<f4").tobytes()).decode()),
        tampered(embedding=base64.b64encode(np.array([np.nan, 1.0], dtype="<f4").tobytes()).decode()),
        tampered(embedding=12),
        '{"format": 1, "prompt": "p", "response": NaN, "partition_id": "x", "created_at": 1.0}',
    ],
)
def test_malformed_input_raises_invalid_input_error(text: str) -> None:
    with pytest.raises(InvalidInputError):
        loads_entry(text)


@pytest.mark.parametrize(
    "value", [None, "s", "", 0, -3, 1.5, True, [], {}, [1, "two", [3.0, {"four": None}]], {"a": {"b": [True, False]}}]
)
def test_json_values_are_accepted(value: Any) -> None:
    check_json_value(value)
    assert json.loads(json.dumps(value)) == value


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ((1, 2), "tuple"),
        ({1, 2}, "set"),
        (b"bytes", "bytes"),
        (object(), "object"),
        (float("nan"), "nan"),
        (float("-inf"), "inf"),
        ({1: "a"}, "non-string key"),
        ({"outer": [{"inner": (1,)}]}, "response['outer'][0]['inner']"),
        (np.float32(1.0), "float32"),
    ],
)
def test_non_json_values_are_rejected_with_their_location(value: Any, where: str) -> None:
    with pytest.raises(InvalidInputError) as raised:
        check_json_value(value)
    assert where in str(raised.value)


UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def package_sources() -> list[Path]:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 10
    return sources


@pytest.mark.parametrize("source", package_sources(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_the_package_never_pickles_or_evals(source: Path) -> None:
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported = {(node.module or "").split(".")[0]}
        else:
            imported = set()
        assert not imported & UNSAFE_MODULES, f"{source.name}:{node.lineno} imports {imported & UNSAFE_MODULES}"
        if isinstance(node, ast.Call):
            function = node.func
            if isinstance(function, ast.Name):  # the builtins; redis's client.eval (a Lua script) is fine
                assert function.id not in {"eval", "exec"}, f"{source.name}:{node.lineno} calls {function.id}"
            if isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name):
                owner = function.value.id
                assert not (owner in UNSAFE_MODULES | {"yaml"} and function.attr in {"load", "loads", "Unpickler"}), (
                    f"{source.name}:{node.lineno} calls {owner}.{function.attr}"
                )
    text = source.read_text(encoding="utf-8")
    assert not re.search(r"^\s*(import|from)\s+(c?pickle|_pickle|dill|cloudpickle)\b", text, re.MULTILINE)
    assert "__reduce__" not in text and "__getstate__" not in text
