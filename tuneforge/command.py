"""What every stage's command line shares: a recipe (or a data file) with KEY=VALUE overrides anywhere on
the line, and the JSON line each command ends with."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
from pathlib import Path

from tuneforge.config import Recipe
from tuneforge.recipes import load_recipe

RECIPE_SUFFIXES = (".yaml", ".yml")
OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[\w]+)+=")  # section.key=value


def stop_process(proc: subprocess.Popen, grace_s: float = 60) -> None:
    """Stop a child process (a server): SIGTERM, then SIGKILL if it is still there after `grace_s`."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()


def json_line(payload: dict) -> None:
    print(json.dumps(payload, default=str))


def recipe_for(target: str | None, overrides: list[str]) -> Recipe:
    """A recipe file, or a data file run with the default recipe (the embedded model)."""
    if target is None or target.endswith(RECIPE_SUFFIXES):
        return load_recipe(target, overrides)
    recipe = load_recipe(None, overrides)
    recipe.data = dataclasses.replace(recipe.data, train_file=target)
    return recipe


def add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        nargs="?",
        metavar="RECIPE_OR_FILE",
        help="a recipe (.yaml) or a data file read with the default recipe",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. data.max_seq_length=256"
    )


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, taking KEY=VALUE overrides wherever they stand (argparse stops collecting positionals at
    the first option: `eval RECIPE --adapter X eval.limit=2` would leave eval.limit=2 unrecognised)."""
    args, rest = parser.parse_known_args(argv)
    overrides = [a for a in rest if OVERRIDE.match(a)]
    unknown = [a for a in rest if not OVERRIDE.match(a)]
    if overrides and not hasattr(args, "overrides"):
        parser.error(f"unrecognized arguments: {' '.join(overrides)} (this command takes no KEY=VALUE)")
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if hasattr(args, "overrides"):
        # argparse fills the optional positional (recipe, data file or model) with whatever comes first,
        # an override included: sort the positionals into the one target and the overrides
        name = next((n for n in ("target", "model", "recipe") if hasattr(args, n)), None)
        items = [
            *([getattr(args, name)] if name and getattr(args, name) else []),
            *args.overrides,
            *overrides,
        ]
        targets = [a for a in items if not OVERRIDE.match(a) or Path(a).exists()]
        if len(targets) > (1 if name else 0):
            parser.error(
                f"unrecognized arguments: {' '.join(targets[1 if name else 0 :])} (KEY=VALUE expected)"
            )
        if name:
            setattr(args, name, targets[0] if targets else None)
        args.overrides = [a for a in items if a not in targets]
    return args
