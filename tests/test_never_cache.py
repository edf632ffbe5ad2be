"""What must never be cached (#19): the engine keeps answers with card numbers, IBANs or secrets out, by default."""

from __future__ import annotations

from typing import Any

import pytest

from semantic_llm_cache import ConfigurationError, SemanticCache
from semantic_llm_cache.sensitive import NeverCache
from semantic_llm_cache.storage import StorageBackend
from tests.fakes import BagOfWordsEmbedder

CARD_ANSWER = "The card on file is 4111 1111 1111 1111, expiring 12/29."
IBAN_ANSWER = {"text": "Wire it to DE89 3704 0044 0532 0130 00, reference 42."}


def new_cache(backend: StorageBackend | None = None, **options: Any) -> SemanticCache:
    return SemanticCache(backend=backend, embedder=BagOfWordsEmbedder(), threshold=0.8, **options)


async def test_sensitive_answers_are_returned_but_never_stored_on_any_backend(backend: StorageBackend) -> None:
    cache = new_cache(backend)
    assert await cache.get_or_compute("What card do you have for me?", lambda: CARD_ANSWER) == CARD_ANSWER
    assert await cache.get_or_compute("Where do I send the money?", lambda: IBAN_ANSWER) == IBAN_ANSWER
    assert cache.resolve_sync("Which key do we deploy with?", lambda: "AKIAIOSFODNN7EXAMPLE").computed
    assert await cache.store("What card do you have for me?", CARD_ANSWER) is None
    assert await backend.iterate() == []
    stats = cache.stats.snapshot()
    assert stats["never_cache_refusals"] == 4 and stats["never_cache_payment_card"] == 2
    assert stats["never_cache_iban"] == 1 and stats["never_cache_secret"] == 1
    assert await cache.get_or_compute("What is the refund policy?", lambda: "30 days") == "30 days"
    assert len(await backend.iterate()) == 1  # ordinary answers are cached as before


async def test_a_sensitive_prompt_keeps_its_answer_out_too() -> None:
    cache = new_cache()
    await cache.get_or_compute("Is 4111-1111-1111-1111 a valid card?", lambda: "It passes the Luhn check.")
    assert await cache.backend.iterate() == []


async def test_never_cache_can_be_turned_off_replaced_or_widened() -> None:
    off = new_cache(never_cache=False)
    assert await off.store("What card do you have for me?", CARD_ANSWER)

    def no_names(prompt: str, response: Any) -> str | None:
        return "a name" if "Alice" in str(response) else None

    custom = new_cache(never_cache=no_names)
    assert await custom.store("Who signed?", "Alice did.") is None
    assert await custom.store("What card do you have for me?", CARD_ANSWER)  # the custom rule replaces the default
    assert custom.stats["never_cache_a name"] == 1

    async def judge(prompt: str, response: Any) -> str | None:
        return "judged private"

    assert await new_cache(never_cache=judge).store("Anything?", "anything") is None
    widened = new_cache(never_cache=NeverCache(emails=True, phones=True))
    assert await widened.store("How do I reach support?", "Write to jane.roe@acme-support.io.") is None

    def broken(prompt: str, response: Any) -> str | None:
        raise RuntimeError("classifier down")

    failing = new_cache(never_cache=broken)
    assert await failing.get_or_compute("What is the refund policy?", lambda: "30 days") == "30 days"
    assert await failing.backend.iterate() == [] and failing.stats["never_cache_errors"] == 1
    with pytest.raises(ConfigurationError, match="never_cache"):
        new_cache(never_cache="yes")  # type: ignore[arg-type]
