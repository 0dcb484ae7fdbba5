"""Draw tuneforge's import graph between its parts, as Mermaid (GitHub renders it) or plain edges.

    .venv/bin/python scripts/import_graph.py            # Mermaid, as in docs/tour.md
    .venv/bin/python scripts/import_graph.py --edges    # one "from -> to (imports)" line per edge

Built with grimp (import-linter's graph library) from the source, so it shows what the code imports, not
what it should; `make lint` checks the layers (pyproject.toml, [tool.importlinter]). Stages sit side by
side: an edge between two stages would be a bug the layer contract reports.
"""

from __future__ import annotations

import argparse
import collections

import grimp

STAGES = ("train", "eval", "serve", "bench", "cost")
SHARED = ("engines", "data", "models")  # data is stage 1 and also what the others read data with
FLOOR = "floor"  # config, recipes, tracking, results, command, tables, errors, report_files


def part(module: str) -> str:
    """The part of the package a module belongs to."""
    name = module.split(".")[1] if "." in module else "cli"
    if name in STAGES or name in SHARED or name in ("cli", "pipeline"):
        return name
    return "cli" if name == "config_cli" else FLOOR


def edges() -> dict[tuple[str, str], int]:
    graph = grimp.build_graph("tuneforge")
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            a, b = part(module), part(imported)
            if a != b:
                counts[(a, b)] += 1
    return dict(sorted(counts.items()))


def mermaid(found: dict[tuple[str, str], int]) -> str:
    lines = ["graph TD", "  cli[cli: the tuneforge command]", "  pipeline[pipeline: tuneforge run]"]
    lines += [f"  {s}[{s}]" for s in STAGES]
    lines += [f"  {s}([{s}])" for s in SHARED]
    lines.append(f"  {FLOOR}[(floor: config, recipes, tracking, results, command, tables, errors)]")
    lines += [f"  {a} --> {b}" for (a, b) in found]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--edges", action="store_true", help="plain edges with their import counts")
    args = p.parse_args()
    found = edges()
    if args.edges:
        for (a, b), n in found.items():
            print(f"{a} -> {b} ({n})")
    else:
        print(mermaid(found))
    sideways = [(a, b) for (a, b) in found if a in STAGES and b in STAGES]
    if sideways:
        raise SystemExit(f"stages import each other: {sideways}")


if __name__ == "__main__":
    main()
