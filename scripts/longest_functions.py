"""List the longest functions (lines from ``def`` to the last line of the body).

python scripts/longest_functions.py [--top N] [PATH ...]     (default: models streams)
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def functions(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            found.append((length, f"{path}:{node.lineno} {node.name}"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("paths", nargs="*", default=["models", "streams"])
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    found = [
        f for p in args.paths for file in sorted(Path(p).rglob("*.py")) for f in functions(file)
    ]
    for length, where in sorted(found, reverse=True)[: args.top]:
        print(f"{length:5d}  {where}")


if __name__ == "__main__":
    main()
