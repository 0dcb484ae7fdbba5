"""`tuneforge run`: every stage in order, skipping those already done for the same settings.

    summary = run_pipeline(load_recipe("configs/demo-cpu.yaml"), Options(), only=None)

The run folder is the recipe's `training.output_dir`; its `pipeline.json` (pipeline/state.py) says what is
done. A stage that fails stops the run with its error; what finished before stays done, and training
resumes from its last complete checkpoint on the next attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuneforge.config import Recipe
from tuneforge.pipeline.console import stage_result
from tuneforge.pipeline.stages import NAMES, STAGES, Context, Options, StageFailed
from tuneforge.pipeline.state import PipelineState, fingerprint
from tuneforge.tables import duration

log = logging.getLogger(__name__)
NEEDS = {"compare": ("train",), "bench": ("train",), "cost": ("bench",)}  # outputs a stage reads


def check_stage_names(names: Sequence[str], flag: str) -> None:
    from tuneforge.errors import ConfigError

    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ConfigError(f"{flag}: unknown stage '{unknown[0]}'; the stages are {', '.join(NAMES)}")


def run_pipeline(
    recipe: Recipe, options: Options, only: Sequence[str] | None = None, force: Sequence[str] = ()
) -> dict[str, Any]:
    """Run the stages in `only` (default: all), skipping those done for the same settings unless forced;
    returns {stage: {"ran" or "skipped", seconds, summary}}."""
    check_stage_names(only or (), "--stages")
    check_stage_names(force, "--force")
    folder = Path(recipe.training.output_dir)
    state = PipelineState.load(folder)
    ctx = Context(recipe, folder, options)
    prints: dict[str, str] = {}
    fingerprints: dict[str, str] = {}
    for stage in STAGES:
        upstream = [fingerprints[a] for a in stage.after]
        if stage.shows_what_ran:  # after `--stages data,train`, a later full run writes the report again
            upstream.append(",".join(n for n in NAMES if n in ctx.results))
        fp = fingerprints[stage.name] = fingerprint(stage.settings(recipe, options), upstream)
        reason = "asked with --force" if stage.name in force else state.why_run(stage.name, fp)
        if reason is None:
            rec = state.stages[stage.name]
            ctx.results[stage.name] = {"outputs": rec.outputs, "summary": rec.summary, "seconds": rec.seconds}
            prints[stage.name] = "skipped"
            print(
                f"== {stage.name}: done before for these settings ({duration(rec.seconds)}); skipped",
                flush=True,
            )
            continue
        if only is not None and stage.name not in only:
            continue
        missing = [n for n in NEEDS.get(stage.name, ()) if n not in ctx.results]
        if missing:
            raise StageFailed(
                f"stage {stage.name} needs {missing[0]} done for these settings first: add it to --stages, "
                "or run without --stages"
            )
        print(f"== {stage.name}: running ({reason})", flush=True)
        state.forget(stage.name)  # a crash from here on must not look finished
        t0 = time.monotonic()
        outcome = stage.run(ctx)
        seconds = time.monotonic() - t0
        state.finish(stage.name, fp, outcome.outputs, seconds, outcome.summary)
        ctx.results[stage.name] = {"outputs": outcome.outputs, "summary": outcome.summary, "seconds": seconds}
        prints[stage.name] = "ran"
        print(f"== {stage.name}: done in {duration(seconds)}", flush=True)
        if line := stage_result(stage.name, outcome.summary):
            print(f"   {line}", flush=True)
    return {
        name: {
            "status": prints[name],
            "seconds": ctx.results[name]["seconds"],
            "summary": ctx.results[name]["summary"],
        }
        for name in NAMES
        if name in prints
    }
