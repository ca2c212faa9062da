"""Rewrite the README's F1 numbers (the block between its f1-numbers markers) from the records of results/f1.

    python scripts/readme_numbers.py [--results results/f1] [--readme README.md] [--check]

`--check` changes nothing and exits 1 when the README's block differs from what the records give
(tests/test_docs.py runs the same comparison).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerepro.headline import readme_block, replace_block  # noqa: E402
from nerepro.report import load_results  # noqa: E402


def main() -> int:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=root / "results" / "f1")
    parser.add_argument("--readme", type=Path, default=root / "README.md")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = args.readme.read_text()
    new = replace_block(text, readme_block(load_results(args.results)))
    if args.check:
        if new != text:
            print(f"{args.readme}: its F1 numbers differ from {args.results}'s records: run scripts/readme_numbers.py")
            return 1
        return 0
    args.readme.write_text(new)
    print(f"{args.readme}: F1 numbers from {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
