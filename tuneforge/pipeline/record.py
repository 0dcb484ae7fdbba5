"""What a `tuneforge run` left in its folder, read back for the run report. Imports no torch.

    record = read_run("runs/demo-cpu")   # pipeline.json, the recipe, and each stage's own files

Only the files of stages done for the run's settings are read (`stages`: pipeline.json's records, or the
summaries `tuneforge run` holds); a stage that did not run has no entry, and its part stays None.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneforge.pipeline.state import PipelineState

HISTORY_FILE = "train_history.jsonl"  # written by tuneforge/train/callbacks.py (TrackingCallback)


@dataclass
class RunRecord:
    folder: Path
    stages: dict[str, dict[str, Any]]
    """Stage name -> {"outputs", "summary", "seconds", "finished_at"} (pipeline.json's record)."""
    recipe_yaml: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    data_stats: dict[str, Any] | None = None
    """data/stats.json: counts, tokens, token lengths."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """The trainer's logs, one dict per log: step, loss, learning_rate, eval_loss, tokens_per_second..."""
    history_source: str | None = None
    compare: dict[str, Any] | None = None
    """eval/results.json: every case of base and fine-tuned, their metrics, the differences."""
    bench: dict[str, Any] | None = None
    """bench/results.json: each load level's latencies, throughput and resource use."""
    cost: dict[str, Any] | None = None
    """cost/cost.json: training and serving cost, measured and estimated, and the prices used."""


def read_run(
    folder: str | Path, stages: dict[str, dict[str, Any]] | None = None, recipe_yaml: str | None = None
) -> RunRecord:
    """Everything the report shows, from the run folder (the stages' files) and `stages` (default:
    pipeline.json's records); `recipe_yaml` defaults to the recipe the run saved."""
    folder = Path(folder)
    recorded = {n: asdict(r) for n, r in PipelineState.load(folder).stages.items()}
    # the stages given say which count; pipeline.json, written as each finished, has their full record
    stages = {n: recorded.get(n, s) for n, s in (recorded if stages is None else stages).items()}
    if recipe_yaml is None:
        saved = [folder / name for name in ("recipe.yaml", "run-recipe.yaml") if (folder / name).is_file()]
        recipe_yaml = saved[0].read_text() if saved else None
    record = RunRecord(folder, stages, recipe_yaml, yaml.safe_load(recipe_yaml or "") or {})
    if "data" in stages:
        record.data_stats = _json(folder / "data" / "stats.json")
    if "train" in stages:
        output_dir = (folder / stages["train"]["outputs"][0]).parent.parent  # <output_dir>/adapter/...
        record.history, record.history_source = read_history(output_dir)
    if "compare" in stages:
        record.compare = _json(folder / stages["compare"]["outputs"][0])
    if "bench" in stages:
        record.bench = _json(folder / "bench" / "results.json")
    if "cost" in stages:
        record.cost = _json(folder / "cost" / "cost.json")
    return record


def read_history(output_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    """(the training logs, the file they came from): train_history.jsonl, else the last checkpoint's
    trainer_state.json (runs from before the history file; a checkpoint holds the logs up to its step)."""
    path = output_dir / HISTORY_FILE
    if path.is_file():
        lines = path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()], HISTORY_FILE
    states = sorted(output_dir.glob("checkpoint-*/trainer_state.json"), key=_checkpoint_step)
    if states:
        history = json.loads(states[-1].read_text()).get("log_history", [])
        return history, str(states[-1].relative_to(output_dir))
    return [], None


def _checkpoint_step(path: Path) -> int:
    suffix = path.parent.name.rpartition("-")[2]
    return int(suffix) if suffix.isdigit() else -1


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None
