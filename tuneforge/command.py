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


TAIL_LINES = 25  # of a server's log, in the error when it did not start


class ServerNotReady(RuntimeError):
    """A server child process exited, failed to load its model, or was not ready in time."""


def wait_ready(
    url: str,
    proc: subprocess.Popen,
    timeout: float = 900,
    log: Path | None = None,
    poll_s: float = 1.0,
    watch=None,
) -> float:
    """Poll `url` (tuneforge's /ready, vLLM's /health) until it answers 200; seconds it took. Raises
    ServerNotReady when the process exits (with its log's tail), when tuneforge's /ready says the model
    failed to load, or after `timeout` seconds. `watch()`, if given, runs on every poll."""
    import time

    import httpx

    def tail() -> str:
        lines = log.read_text(errors="replace").splitlines()[-TAIL_LINES:] if log else []
        return f"; the end of its log ({log}):\n" + "\n".join(lines) if log else ""

    start = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise ServerNotReady(f"the server exited with {proc.returncode}{tail()}")
        if watch is not None:
            watch()
        try:
            r = httpx.get(url, timeout=5)
        except httpx.TransportError:
            r = None
        if r is not None and r.status_code == 200:
            return time.monotonic() - start
        if r is not None and r.status_code == 503 and _failed(r):
            raise ServerNotReady(f"the server could not load its model: {_failed(r)}")
        if time.monotonic() - start > timeout:
            raise ServerNotReady(f"the server was not ready at {url} in {timeout:.0f} s{tail()}")
        time.sleep(poll_s)


def _failed(response) -> str | None:
    """tuneforge's /ready error when the model failed to load (503 {"status": "failed", "error"})."""
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("status") == "failed":
        return str(body.get("error") or "no error given")
    return None


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
