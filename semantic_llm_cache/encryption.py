"""Entries encrypted at rest: AES-256-GCM over an entry's prompt, response and metadata, with key rotation.

What stays readable to whoever can read the backend: the vector (searchable by design; embeddings can be
inverted to approximate text), the partition id and exact key (hashes: equal prompts have equal keys, and a
guessed prompt can be checked against a key), the namespace, timestamps, hit counters and sizes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from semantic_llm_cache.config import CacheEntry
from semantic_llm_cache.errors import ConfigurationError

PREFIX = "enc1:"  # format version 1: key id (4 bytes) + nonce (12 bytes) + AES-GCM ciphertext and tag
_KEY_ID_BYTES = 4
_NONCE_BYTES = 12

KeyMaterial = str | bytes


class DecryptionError(Exception):
    """A sealed value that no configured key opens (wrong or missing key, or tampered data)."""


def _key_bytes(key: KeyMaterial) -> bytes:
    """32 raw bytes, or their hex or base64 (standard or URL-safe) text."""
    if isinstance(key, bytes) and len(key) == 32:
        return key
    text = (key.decode("ascii", "replace") if isinstance(key, bytes) else key).strip()
    candidates: list[bytes] = []
    with contextlib.suppress(ValueError):
        candidates.append(bytes.fromhex(text))
    with contextlib.suppress(ValueError, binascii.Error):
        padded = text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4)
        candidates.append(base64.urlsafe_b64decode(padded))
    for raw in candidates:
        if len(raw) == 32:
            return raw
    raise ConfigurationError(
        "an encryption key must be 32 random bytes, or their hex or base64 text "
        "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    )


class EntryCipher:
    """Seals and opens entries. The first key encrypts; every key decrypts (rotation: put the new key first,
    keep the old ones until their entries have expired or been rewritten).

    Each value is bound to its entry's key (AES-GCM associated data), so a sealed answer copied under another
    key, partition or tenant does not open: it is a miss, never another tenant's answer.
    """

    def __init__(self, keys: KeyMaterial | Sequence[KeyMaterial]) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as exc:  # pragma: no cover - the extra is missing
            raise ConfigurationError(
                "encryption needs the cryptography package: pip install 'async-semantic-llm-cache[encryption]'"
            ) from exc
        listed = [keys] if isinstance(keys, (str, bytes)) else list(keys)
        if not listed:
            raise ConfigurationError("encryption_key needs at least one key")
        self._ciphers: dict[bytes, Any] = {}
        self._writer: tuple[bytes, Any] | None = None
        for key in listed:
            raw = _key_bytes(key)
            key_id = hashlib.sha256(b"semantic-llm-cache key id\x00" + raw).digest()[:_KEY_ID_BYTES]
            cipher = AESGCM(raw)
            self._ciphers.setdefault(key_id, cipher)
            if self._writer is None:
                self._writer = (key_id, cipher)

    def seal_text(self, text: str, bound_to: str) -> str:
        assert self._writer is not None
        key_id, cipher = self._writer
        nonce = os.urandom(_NONCE_BYTES)
        sealed = cipher.encrypt(nonce, text.encode("utf-8"), bound_to.encode("utf-8"))
        return PREFIX + base64.urlsafe_b64encode(key_id + nonce + sealed).decode("ascii")

    def open_text(self, token: str, bound_to: str) -> str:
        from cryptography.exceptions import InvalidTag

        if not token.startswith(PREFIX):
            raise DecryptionError("not a sealed value")
        try:
            blob = base64.urlsafe_b64decode(token[len(PREFIX) :])
        except (ValueError, binascii.Error) as exc:
            raise DecryptionError("a sealed value that is not base64") from exc
        cipher = self._ciphers.get(blob[:_KEY_ID_BYTES])
        if cipher is None:
            raise DecryptionError("sealed with a key this cache does not have")
        nonce, sealed = blob[_KEY_ID_BYTES : _KEY_ID_BYTES + _NONCE_BYTES], blob[_KEY_ID_BYTES + _NONCE_BYTES :]
        try:
            return str(cipher.decrypt(nonce, sealed, bound_to.encode("utf-8")).decode("utf-8"))
        except (InvalidTag, UnicodeDecodeError, ValueError) as exc:
            raise DecryptionError("the key does not open it, or the data was changed") from exc

    def seal(self, key: str, entry: CacheEntry) -> CacheEntry:
        """The entry with its prompt, response and metadata encrypted (bound to `key`)."""
        payload = json.dumps({"response": entry.response, "metadata": entry.metadata}, ensure_ascii=False)
        return replace(
            entry,
            prompt=self.seal_text(entry.prompt, key),
            response=self.seal_text(payload, key + "\x1fpayload"),
            metadata={},
        )

    def open(self, key: str, entry: CacheEntry) -> CacheEntry:
        """The entry decrypted; DecryptionError if it is not sealed or no key of this cache opens it."""
        if not isinstance(entry.response, str):
            raise DecryptionError("an entry that is not encrypted")
        prompt = self.open_text(entry.prompt, key)
        payload = json.loads(self.open_text(entry.response, key + "\x1fpayload"))
        return replace(entry, prompt=prompt, response=payload["response"], metadata=payload["metadata"])


def is_sealed(entry: CacheEntry) -> bool:
    """True for an entry written by an encrypting cache."""
    return entry.prompt.startswith(PREFIX)


__all__ = ["DecryptionError", "EntryCipher", "KeyMaterial", "is_sealed"]
