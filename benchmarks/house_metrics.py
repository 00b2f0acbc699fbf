"""Print the shape of the house: lines per package, the longest function per package, and who
imports whom (package level, imports inside functions included).

    python benchmarks/house_metrics.py [--root DIR]

Run it on two checkouts to compare a refactor before and after.
"""
from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path

PACKAGES = ("contract", "gat", "sweeps", "analysis")


def _package(module: str) -> str | None:
    head = module.split(".")[0]
    if head == "gat" and module.startswith("gat.models"):
        return "gat.models"
    return head if head in PACKAGES else None


def measure(root: Path) -> dict[str, dict]:
    """Per package: lines, modules, its longest function (name, lines) and the packages it imports."""
    out: dict[str, dict] = defaultdict(lambda: {"lines": 0, "modules": 0, "longest": ("", 0), "imports": set()})
    for top in PACKAGES:
        for path in sorted((root / top).rglob("*.py")) if (root / top).is_dir() else []:
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            package = _package(module)
            text = path.read_text()
            entry = out[package]
            entry["lines"] += text.count("\n")
            entry["modules"] += 1
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > entry["longest"][1]:
                        entry["longest"] = (f"{module}.{node.name}", length)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    target = _package(node.module)
                    if target and target != package:
                        entry["imports"].add(target)
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        target = _package(alias.name)
                        if target and target != package:
                            entry["imports"].add(target)
    return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    root = parser.parse_args().root
    print("| package | modules | lines | longest function (lines) | imports |")
    print("|---|---:|---:|---|---|")
    for package, entry in sorted(measure(root).items()):
        name, length = entry["longest"]
        print(f"| {package} | {entry['modules']} | {entry['lines']} | {name} ({length}) | "
              f"{', '.join(sorted(entry['imports'])) or '-'} |")


if __name__ == "__main__":
    main()
