"""What `tuneforge run` shows a person: one result line per stage, the engines' logs in the run folder.
Imports no torch.

Without -v the terminal gets tuneforge's own lines and every warning; everything, vLLM's and transformers'
INFO lines too, goes to <run folder>/run.log, and vLLM's engine processes log at WARNING.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# the stage commands' JSON results (kilobytes for cost): run.log only, never the terminal
COMMANDS_LOG = "tuneforge.pipeline.commands"
# warnings a reader cannot act on, kept in run.log: bitsandbytes' CPU backend looks for an optional
# kernels package at import, which plain LoRA never uses
RUN_LOG_ONLY = ("bitsandbytes.backends.cpu",)


def ours_or_warning(record: logging.LogRecord) -> bool:
    if record.name == COMMANDS_LOG:
        return record.levelno >= logging.WARNING
    if record.name.startswith(RUN_LOG_ONLY) and record.levelno < logging.ERROR:
        return False
    return record.levelno >= logging.WARNING or record.name.split(".")[0] == "tuneforge"


def route_logs(folder: Path, verbose: bool) -> Path:
    """Send every log record to <folder>/run.log; keep the terminal to warnings unless `verbose`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.log"
    root = logging.getLogger()
    file = logging.FileHandler(path, encoding="utf-8")
    file.setFormatter(logging.Formatter(LOG_FORMAT))
    file.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        for handler in root.handlers:
            handler.addFilter(ours_or_warning)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its engine processes inherit this
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # "Saving the dataset" bars
    root.addHandler(file)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return path


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _short(text: Any, n: int = 110) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def stage_result(name: str, summary: dict[str, Any]) -> str:
    """A line saying what a stage produced (compare adds its most improved example; empty: nothing to say)."""
    s = summary or {}
    if name == "data":
        return (
            f"{s.get('valid')} of {s.get('records')} records valid: {s.get('train_examples')} to train, "
            f"{s.get('validation_examples')} to validate, {_num(s.get('tokens'))} tokens"
        )
    if name == "train":
        return (
            f"{s.get('global_step')} steps, train loss {_num(s.get('train_loss'))}, "
            f"eval loss {_num(s.get('eval_loss'))}"
        )
    if name == "compare":
        base = (s.get("base") or {}).get("metrics", {})
        tuned = (s.get("finetuned") or {}).get("metrics", {})
        line = ", ".join(f"{m} {_num(base.get(m), 2)} -> {_num(v, 2)}" for m, v in tuned.items())
        if ex := s.get("example"):
            line += (f"\n   e.g. {ex['id']}: {_short(ex['prompt'])}\n     base:       {_short(ex['base'])}"
                     f"\n     fine-tuned: {_short(ex['finetuned'])}")  # fmt: skip
        return line
    if name == "bench":
        return "; ".join(
            f"{lv['load']}: {lv['requests_per_s']:.2f} req/s, {lv['output_tok_s']:.1f} tok/s"
            for lv in s.get("levels", [])
        )
    if name in ("cost", "report"):
        return str(s.get("report", ""))
    return ""
