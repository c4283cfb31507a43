"""Word count over a folder: the demo's job that does real work on real data.

Walks $INPUT (default: the current directory) recursively, reads every .md, .txt, .csv and .yaml
file, counts the words (and, for a little more real CPU work, the word pairs), and prints the top
$TOP words (default 20) with totals. Exits 0, or 2 when $INPUT is not a directory.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

SUFFIXES = {".md", ".txt", ".csv", ".yaml", ".yml"}
WORD = re.compile(r"[^\W\d_]{2,}", re.UNICODE)  # letters only, at least two: skips numbers in the CSVs


def count(root: Path) -> tuple[Counter[str], Counter[tuple[str, str]], dict[str, int]]:
    words: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    stats = {"files": 0, "skipped": 0, "bytes": 0, "lines": 0}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()  # a stable walk: the same input gives the same output
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            if path.suffix.lower() not in SUFFIXES:
                continue
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                stats["skipped"] += 1
                continue
            stats["files"] += 1
            stats["bytes"] += len(text.encode("utf-8"))
            for line in text.splitlines():
                stats["lines"] += 1
                tokens = [t.lower() for t in WORD.findall(line)]
                words.update(tokens)
                pairs.update(zip(tokens, tokens[1:], strict=False))
    return words, pairs, stats


def main() -> int:
    root = Path(os.environ.get("INPUT", "."))
    top = int(os.environ.get("TOP", "20"))
    if not root.is_dir():
        print(f"INPUT={root} is not a directory", file=sys.stderr)
        return 2
    started = time.process_time()
    words, pairs, stats = count(root)
    cpu = time.process_time() - started
    print(f"input {root}: {stats['files']} files, {stats['lines']} lines, {stats['bytes']} bytes "
          f"({stats['skipped']} unreadable)")
    print(f"words: {sum(words.values())} total, {len(words)} distinct; word pairs: {len(pairs)} distinct")
    print(f"top {top} words:")
    for rank, (word, n) in enumerate(words.most_common(top), start=1):
        print(f"  {rank:3d}. {word:<24} {n:8d}")
    if pairs:
        (a, b), n = pairs.most_common(1)[0]
        print(f"most common pair: {a} {b} ({n})")
    print(f"cpu time: {cpu:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
