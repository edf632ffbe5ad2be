"""`@cached(cache)`: cache the answers of an async or sync function whose first argument is the prompt."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

from semantic_llm_cache.cache import SemanticCache
from semantic_llm_cache.errors import InvalidInputError
from semantic_llm_cache.scope import Scope

F = TypeVar("F", bound=Callable[..., Any])


def cached(
    cache: SemanticCache,
    *,
    prompt_arg: str | None = None,
    scope: Scope | None = None,
    ttl: float | None = None,
) -> Callable[[F], F]:
    """Serve calls from `cache`, keyed by the prompt argument; the other arguments partition the cache.

    The prompt is the argument named `prompt_arg` (default: the first parameter). Every other argument is
    part of the partition, so `answer("hi", temperature=0)` and `answer("hi", temperature=1)` never share an
    answer. Concurrent identical calls run the function once. A sync function runs in the calling thread; its
    lookups and stores go through one shared background loop (no event loop is created per call).
    """

    def decorate(function: F) -> F:
        signature = inspect.signature(function)
        parameters = list(signature.parameters)
        if not parameters:
            raise InvalidInputError(f"{function.__qualname__} takes no arguments: there is no prompt to cache by")
        name = prompt_arg or parameters[0]
        if name not in signature.parameters:
            raise InvalidInputError(f"{function.__qualname__} has no parameter {name!r} (prompt_arg)")
        base = scope or Scope()
        identity = f"{function.__module__}.{function.__qualname__}"

        def key_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Scope]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            prompt = arguments.pop(name)
            params = {**dict(base.params), "function": identity, "arguments": arguments}
            return prompt, Scope(namespace=base.namespace, model=base.model, params=params, context=base.context)

        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                prompt, call_scope = key_of(args, kwargs)
                compute = functools.partial(function, *args, **kwargs)
                return await cache.get_or_compute(prompt, compute, call_scope, ttl=ttl)

            return cast(F, async_wrapper)

        @functools.wraps(function)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            prompt, call_scope = key_of(args, kwargs)
            compute = functools.partial(function, *args, **kwargs)
            return cache.resolve_sync(prompt, compute, call_scope, ttl=ttl).response

        return cast(F, sync_wrapper)

    return decorate
