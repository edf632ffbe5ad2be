"""Check a light install (`make test-light` runs it in a fresh venv after a plain `pip install .`).

Fails unless: none of torch, transformers, sentence-transformers, scipy, scikit-learn or sympy is installed; the
venv is at most 300 MB; and `SemanticCache()` serves a paraphrase with the default embedder, from installed files
only (HF_HUB_OFFLINE=1, a fresh HOME, nothing written under it). Prints the figures it checked.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

FORBIDDEN = ("torch", "transformers", "sentence-transformers", "scipy", "scikit-learn", "sympy")
MAX_VENV_MB = 300


def main() -> int:
    started = time.perf_counter()
    from semantic_llm_cache import SemanticCache

    imported = time.perf_counter()
    installed = {dist.metadata["Name"].lower() for dist in importlib.metadata.distributions()}
    present = [name for name in FORBIDDEN if name in installed]
    venv = Path(sys.prefix)
    size_mb = int(subprocess.run(["du", "-sm", str(venv)], capture_output=True, text=True).stdout.split()[0])
    print(f"distributions: {len(installed)}; venv {venv}: {size_mb} MB (du -sm)")
    failures = []
    if present:
        failures.append(f"installed but must not be: {present}")
    if size_mb > MAX_VENV_MB:
        failures.append(f"the venv takes {size_mb} MB, more than {MAX_VENV_MB}")

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    home = Path(os.environ.get("HOME", "~")).expanduser()
    before = set(home.rglob("*")) if home.is_dir() else set()

    async def paraphrase() -> tuple[object, float, float]:
        cache = SemanticCache()
        made = time.perf_counter()
        await cache.store("How do I reset my password?", "Settings > Security > Reset password.")
        stored = time.perf_counter()
        hit = await cache.lookup("How can I reset my password?")
        await cache.close()
        return hit, made, stored

    hit, made, stored = asyncio.run(paraphrase())
    print(f"import {imported - started:.2f} s; SemanticCache() {made - imported:.2f} s; ", end="")
    print(f"first store (loads the model) {stored - made:.2f} s")
    if hit is None or getattr(hit, "kind", None) != "semantic":
        failures.append(f"the paraphrase was not a semantic hit: {hit!r}")
    else:
        print(f"semantic hit, similarity {getattr(hit, 'similarity', 0.0):.3f}")
    # onnxruntime itself keeps a 36-byte device id there (not this package's doing)
    onnxruntime_own = home / ".cache" / "Microsoft"
    allowed = {home / ".cache", onnxruntime_own}
    after = set(home.rglob("*")) if home.is_dir() else set()
    written = {path for path in after - before if path not in allowed and onnxruntime_own not in path.parents}
    if written:
        failures.append(f"wrote under HOME: {sorted(map(str, written))[:5]}")
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
