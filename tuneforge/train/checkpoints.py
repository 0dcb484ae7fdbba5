"""Checkpoints: find the last complete one of a run (corrupt or half-written ones are skipped with a
warning), and write each one atomically (staging folder, then rename), stopping on a full disk with the
folder, the space needed and the checkpoint kept."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
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


# ---------------------------------------------------------------- writing checkpoints atomically

STAGING = ".staging"  # run_dir/.staging/checkpoint-N is written, then renamed to run_dir/checkpoint-N
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Libraries that wrap the OS error in their own: tokenizers (Rust) says "No space left on device (os
# error 28)"; torch.save says only "file write failed", which the free-space check below catches.
DISK_FULL_TEXT = ("no space left on device", "os error 28", "disk quota exceeded")


def save_atomically(final: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(folder)` into a staging folder next to `final`, synced, then renamed to `final`: a crash or a
    full disk mid-write leaves `final` as it was (absent, or the previous complete folder), never half
    written. A failed write's staging folder is removed, giving back the space it took."""
    final = Path(final)
    staging = final.parent / STAGING / final.name
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(staging)
        _sync_tree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_if_empty(staging.parent)
        raise
    if final.exists():  # the same step saved again (a resumed run, a divergence stop): swap it out
        old = final.parent / STAGING / f"replaced-{final.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)
    _sync_dir(final.parent)
    _remove_if_empty(staging.parent)
    return final


def save_checkpoints_atomically(trainer) -> None:
    """Make a transformers Trainer write each checkpoint-N through `save_atomically`, and turn a full disk
    into a TrainingError that names the folder, the space needed and the last good checkpoint.

    Wraps Trainer._save_checkpoint (private, stable across transformers 5.x): it writes into the folder
    `_get_output_dir()` returns, so that points at the staging folder while it runs. Only single-process
    runs: under torchrun several ranks write parts of one checkpoint, and they keep transformers' own
    saving."""
    if trainer.args.world_size != 1:
        return
    from transformers.trainer_utils import rotate_checkpoints

    save = trainer._save_checkpoint
    shutil.rmtree(Path(trainer.args.output_dir) / STAGING, ignore_errors=True)  # left by a killed run

    def atomic_save(model, trial):
        run_dir = Path(trainer._get_output_dir(trial=trial))
        final = run_dir / f"checkpoint-{trainer.state.global_step}"
        previous = last_good_checkpoint_fast(run_dir)
        free_before = free_bytes(run_dir)

        def write(staging: Path) -> None:
            trainer._get_output_dir = lambda trial=None: str(staging.parent)
            try:
                save(model, trial)
            finally:
                del trainer._get_output_dir

        try:
            save_atomically(final, write)
        except Exception as e:
            needed = folder_bytes(previous) if previous is not None else None
            if is_disk_full(e, run_dir, needed):
                raise disk_full_error(run_dir, final.name, needed, e, free_before) from e
            raise
        rotate_checkpoints(
            output_dir=str(run_dir),
            save_total_limit=trainer.args.save_total_limit,
            best_model_checkpoint=trainer.state.best_model_checkpoint,
            use_mtime=True,
        )

    trainer._save_checkpoint = atomic_save


def is_disk_full(error: BaseException, folder: str | Path, needed: int | None = None) -> bool:
    """Whether `error` (or what caused it) is the disk running out of space (or quota) under `folder`."""
    seen = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(e).lower() for text in DISK_FULL_TEXT):
            return True
        e = e.__cause__ or e.__context__
    if needed is None or not isinstance(error, (OSError, RuntimeError)):
        return False
    return free_bytes(folder) < needed  # torch.save: "file write failed", with the disk still full


def disk_full_error(
    run_dir: str | Path,
    what: str,
    needed: int | None,
    error: BaseException,
    free_before: int | None = None,
):
    """The TrainingError for a full disk: where, how much is needed and free, what was kept, what to do.
    `needed`: the size of the previous checkpoint, when there is one; else all that is known is that the
    write needed more than the `free_before` bytes that were free when it started."""
    from tuneforge.train.trainer import TrainingError

    run_dir = Path(run_dir)
    last = last_good_checkpoint_fast(run_dir)
    if needed:
        need = f"about {human_bytes(needed)}"
    elif free_before is not None:
        need = f"more than the {human_bytes(free_before)} that were free"
    else:
        need = "more than was free"
    kept = (
        f"The last good checkpoint, {last}, is kept: run the same command again to resume from it."
        if last is not None
        else "No checkpoint was saved before this one."
    )
    return TrainingError(
        f"disk full while writing {what} to {run_dir}: it needs {need}, {human_bytes(free_bytes(run_dir))} "
        f"is free ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). {kept} "
        "Free some space, or set training.output_dir to a larger disk (or lower "
        "training.save_total_limit)."
    )


def last_good_checkpoint_fast(run_dir: str | Path) -> Path | None:
    """The newest checkpoint-N folder with every required file, without reading them (checkpoints are
    renamed into place only when complete; `last_good_checkpoint` also reads each file)."""
    folders = sorted(Path(run_dir).glob("checkpoint-*"), key=checkpoint_step, reverse=True)
    return next(
        (p for p in folders if checkpoint_step(p) >= 0 and all((p / n).is_file() for n in REQUIRED)), None
    )


def folder_bytes(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def free_bytes(folder: str | Path) -> int:
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _sync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder`: the rename that follows must not land before the data."""
    for path in [*folder.rglob("*"), folder]:
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            _sync_dir(path)


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()
