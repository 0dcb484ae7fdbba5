"""Find the last complete checkpoint of a run, skipping corrupt or half-written ones with a warning."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)
REQUIRED = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "trainer_state.json",
    "optimizer.pt",
    "scheduler.pt",
)


def checkpoint_step(path: Path) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else -1


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None if it is complete and readable."""
    import torch
    from safetensors import safe_open

    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        json.loads((path / "trainer_state.json").read_text())
        json.loads((path / "adapter_config.json").read_text())
        with safe_open(str(path / "adapter_model.safetensors"), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
                f.get_tensor(key)
        torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file makes the checkpoint unusable
        return f"unreadable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def last_good_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint-N folder under `run_dir` that is complete; older ones are the fallback."""
    folders = sorted(
        (p for p in Path(run_dir).glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) >= 0),
        key=checkpoint_step,
        reverse=True,
    )
    for folder in folders:
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        log.warning(
            "checkpoint %s is corrupt or incomplete (%s); falling back to the previous one", folder, problem
        )
    return None
