"""The seed job's script: a small "spark-like" job in pure Python.

It reads every text file under $INPUT (if set and present), maps each line to its words, reduces
them to counts per file and in total, and prints a summary. Without $INPUT it counts a built-in
sample, so it always does some work and exits 0.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from pathlib import Path

WORD = re.compile(r"[a-z0-9åäöüéæø']+")
SAMPLE = """the exchange matches work with capacity
like a power market matches buyers and sellers of electricity"""


def partitions(root: Path) -> list[tuple[str, str]]:
    """(name, text) of every readable text file under root, in a stable order."""
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            out.append((str(path.relative_to(root)), path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue  # binary or unreadable: not input for this job
    return out


def map_reduce(text: str) -> Counter[str]:
    return Counter(w for line in text.splitlines() for w in WORD.findall(line.lower()))


def main() -> int:
    input_dir = os.environ.get("INPUT")
    if input_dir and Path(input_dir).is_dir():
        parts = partitions(Path(input_dir))
        print(f"input: {input_dir} ({len(parts)} files)")
    else:
        parts = [("(built-in sample)", SAMPLE)]
        why = f"{input_dir} is not a directory" if input_dir else "$INPUT is not set"
        print(f"input: {why}; using a built-in sample")
    total: Counter[str] = Counter()
    lines = 0
    for name, text in parts:
        counts = map_reduce(text)
        n_lines = len(text.splitlines())
        lines += n_lines
        total.update(counts)
        print(f"  {name}: {n_lines} lines, {sum(counts.values())} words")
    print(f"total: {len(parts)} files, {lines} lines, {sum(total.values())} words, {len(total)} distinct")
    for word, n in total.most_common(5):
        print(f"  {n:6d}  {word}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
