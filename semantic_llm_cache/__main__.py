"""`python -m semantic_llm_cache demo` (and, with the CLI installed, every other command)."""

from __future__ import annotations

import sys


def main() -> None:
    """Run the command line; `demo` works even without the CLI's optional dependencies."""
    try:
        from semantic_llm_cache.cli import app
    except ImportError as missing:
        if sys.argv[1:2] == ["demo"]:
            from semantic_llm_cache.demo import main as demo

            demo()
            return
        raise SystemExit(f"the command line needs typer and rich ({missing}); `demo` works without them") from None
    app()


if __name__ == "__main__":
    main()
