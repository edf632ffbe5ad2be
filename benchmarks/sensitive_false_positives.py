"""False positives of the sensitive-content detector on Quora questions, and its speed.

Run: `.venv/bin/python benchmarks/sensitive_false_positives.py [--pairs ../shared/data/qqp_dev.jsonl]`.
Runs `find_sensitive` over every distinct question of the pairs file with the defaults and with e-mails and
phones on, and prints markdown tables: flagged questions per reason (Quora questions hold no secrets, so a flag
is presumably a false positive; examples are shown with the span in «» so a reader can judge; a question counts
once, under its first finding), and the time per question and per 1 KB of text (questions joined into 1 KB
chunks, and a sample LLM answer with numbers and code).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tables import markdown_table

from semantic_llm_cache.sensitive import REASONS, SensitiveFinding, find_sensitive

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PAIRS = os.environ.get("SEMANTIC_CACHE_PAIRS", str(ROOT.parent / "shared" / "data" / "qqp_dev.jsonl"))
CONFIGS: dict[str, dict[str, bool]] = {"defaults": {}, "emails+phones": {"emails": True, "phones": True}}
SAMPLE_ANSWER = """To reset your router, hold the reset button for 10 seconds (model RT-AX58U, firmware
3.0.0.4.388_24243). Then open http://192.168.50.1 in a browser, log in with the password printed on the label
and pick a new one of at least 12 characters. Prices in 2024: the base plan costs $49.99/month, the pro plan
$1,299.00 a year.

```python
import requests
response = requests.get("https://api.vendor.io/v2/items", params={"page": 2, "per_page": 100}, timeout=30)
items = response.json()["items"]
print(len(items), items[0]["id"])  # e.g. 3f2c9a1e-8b7d-4c6e-9f01-2a3b4c5d6e7f
```

Support hours are 9:00-17:30 CET, Monday to Friday (closed 24-26 December and 1 January). Order
#20240117-88213 shipped on 2024-01-17 and should arrive within 3-5 working days; track it with the order number.
See RFC 7231 section 6.5.4 and ISO 8601 for the date formats; version 1.24.3 fixed the bug from issue #4521.
"""


def load_questions(path: str) -> list[str]:
    """Every distinct question of the pairs file, in file order."""
    questions: dict[str, None] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                pair = json.loads(line)
                questions.setdefault(pair["text_a"], None)
                questions.setdefault(pair["text_b"], None)
    return list(questions)


def chunks_of(texts: Sequence[str], size: int) -> list[str]:
    """Texts joined with spaces into chunks of about `size` characters."""
    chunks, current = [], ""
    for text in texts:
        current = f"{current} {text}" if current else text
        if len(current) >= size:
            chunks.append(current[:size])
            current = ""
    return chunks


def timed(check: Callable[[str], object], texts: Sequence[str], rounds: int = 3) -> float:
    """The best of `rounds` mean seconds per text."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for text in texts:
            check(text)
        best = min(best, (time.perf_counter() - started) / len(texts))
    return best


def marked(text: str, finding: SensitiveFinding) -> str:
    shown = f"{text[: finding.start]}«{text[finding.start : finding.end]}»{text[finding.end :]}"
    return shown.replace("|", "\\|").replace("\n", " ")


def main(pairs_path: str, examples: int) -> None:
    questions = load_questions(pairs_path)
    total = len(questions)
    print(f"{total} distinct questions from {pairs_path}\n")
    flagged: dict[str, dict[str, list[tuple[str, SensitiveFinding]]]] = {}
    for name, options in CONFIGS.items():
        by_reason: dict[str, list[tuple[str, SensitiveFinding]]] = {reason: [] for reason in REASONS}
        for question in questions:
            finding = find_sensitive(question, **options)
            if finding is not None:
                by_reason[finding.reason].append((question, finding))
        flagged[name] = by_reason

    rows = []
    for reason in (*REASONS, "any"):
        row: list[object] = [reason]
        for name, options in CONFIGS.items():
            if reason in ("email", "phone") and not options.get(reason + "s"):
                row += ["off", "—"]
                continue
            count = sum(map(len, flagged[name].values())) if reason == "any" else len(flagged[name][reason])
            row += [count, f"{count / total:.4%}"]
        rows.append(row)
    print(f"## False positives ({total} questions checked)\n")
    print(markdown_table(["reason", "flagged (defaults)", "rate", "flagged (emails+phones)", "rate"], rows))

    print(f"\n## Flagged examples (up to {examples} per reason, emails+phones on; the flagged span in «»)\n")
    for reason in REASONS:
        found = flagged["emails+phones"][reason]
        print(f"**{reason}**: {len(found)}")
        for question, finding in found[:examples]:
            print(f"- {marked(question, finding)}")
        print()

    kilobytes = chunks_of(questions, 1024)
    timing_rows = []
    for name, options in CONFIGS.items():

        def check(text: str, options: dict[str, bool] = options) -> object:
            return find_sensitive(text, **options)

        timing_rows.append([
            name,
            f"{timed(check, questions) * 1e6:.1f}",
            f"{timed(check, kilobytes) * 1e6:.1f}",
            f"{timed(check, [SAMPLE_ANSWER[:1024]] * 200, rounds=5) * 1e6:.1f}",
        ])  # fmt: skip
    print("## Speed (best of 3 runs, one core)\n")
    mean_length = sum(map(len, questions)) / total
    print(markdown_table(["config", f"µs per question (mean {mean_length:.0f} chars)",
                          f"µs per 1 KB of questions ({len(kilobytes)} chunks)", "µs per 1 KB sample answer"],
                         timing_rows))  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default=DEFAULT_PAIRS, help="labeled pairs, JSON lines of text_a/text_b/label")
    parser.add_argument("--examples", type=int, default=10, help="flagged examples shown per reason")
    arguments = parser.parse_args()
    main(arguments.pairs, arguments.examples)
