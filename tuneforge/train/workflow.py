"""The `tuneforge train` workflow: prepare the data, plan, track, train (resuming where a run stopped).

    tuneforge train configs/demo-cpu.yaml training.max_steps=20
    outcome = run_training(load_recipe("configs/demo-cpu.yaml"))

Under `torchrun` / `accelerate launch` every rank runs it; only rank 0 writes files and tracks.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

from tuneforge.config import Recipe
from tuneforge.recipes import dump_recipe, flatten, recipe_to_dict
from tuneforge.train.trainer import LoRATrainer, TrainingError, TrainOutcome, longest

log = logging.getLogger(__name__)


def environment() -> dict[str, str]:
    import peft
    import torch
    import transformers

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor()})"
    return {
        "env.python": platform.python_version(),
        "env.torch": torch.__version__,
        "env.transformers": transformers.__version__,
        "env.peft": peft.__version__,
        "env.device": device,
        "env.cuda_devices": str(torch.cuda.device_count()),
    }


def is_main_process() -> bool:
    """True outside distributed runs, and on rank 0 under torchrun / accelerate launch."""
    return int(os.environ.get("RANK", "0")) == 0


def run_training(recipe: Recipe, resume: str = "auto") -> TrainOutcome:
    """Prepare data, train, track: the whole `tuneforge train` (resume: auto, always or never).

    Under `torchrun` / `accelerate launch` every rank runs this; only rank 0 writes files and tracks."""
    from tuneforge.data import DatasetPreprocessor
    from tuneforge.train.checkpoints import last_good_checkpoint

    main = is_main_process()
    run_dir = Path(recipe.training.output_dir)
    check_output_dir(run_dir)  # before the model loads: a large one takes minutes
    checkpoint = last_good_checkpoint(run_dir) if resume != "never" else None
    if resume == "always" and checkpoint is None:
        raise TrainingError(f"--resume: {run_dir} has no complete checkpoint to resume from")

    trainer = LoRATrainer(recipe.model.name_or_path, recipe.lora, recipe.model, recipe.quantization)
    prepared = DatasetPreprocessor(trainer.load_tokenizer(), recipe.data).prepare()
    if main:
        try:
            prepared.save(run_dir / "data")
            (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))
        except Exception as e:
            from tuneforge.train.checkpoints import disk_full_error, is_disk_full

            if is_disk_full(e, run_dir):
                raise disk_full_error(run_dir, "the prepared data", None, e) from e
            raise
    if recipe.training.auto_tune:
        from tuneforge.train.speedups import use_expandable_segments

        use_expandable_segments()  # before the first CUDA allocation
    trainer.plan = trainer.make_plan(recipe.training, longest(prepared.train))
    log.info("%s", trainer.plan.describe())

    tracker = None
    if recipe.tracking.enabled and main:
        from tuneforge.tracking import ExperimentTracker, recorded_run_id

        tracker = ExperimentTracker(recipe.tracking.tracking_uri)
        previous = recorded_run_id(run_dir) if checkpoint is not None else None
        data_stats = {k: v for k, v in prepared.stats.items() if k not in ("config", "invalid_ids")}
        params = {
            **flatten(recipe_to_dict(recipe)),
            **environment(),
            **flatten(data_stats, "dataset."),
            **trainer.plan.params(),
        }
        try:
            tracker.start_run(recipe.tracking.experiment, params, run_name=recipe.name, run_id=previous)
        except Exception as e:  # before training: stop here, with what to do
            raise TrainingError(
                f"tracking server {tracker.tracking_uri} (tracking.tracking_uri) cannot start the run: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. Start it, or set "
                "tracking.enabled=false to train without tracking"
            ) from e
        tracker.record(run_dir)
        # from here a tracking outage never stops training: calls are buffered and sent when it is back
        tracker = tracker.buffered(run_dir)
        tracker.log_artifact(run_dir / "data" / "stats.json", "dataset")
        tracker.log_artifact(run_dir / "recipe.yaml")
        if checkpoint is not None:
            tracker.set_tags({"resumed_from": checkpoint.name})
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)
    try:
        outcome = trainer.train(
            prepared.train,
            prepared.validation,
            recipe.training,
            tracker,
            checkpoint,
            recipe.tracking.log_checkpoints,
        )
    except BaseException as e:
        if tracker is not None:
            tracker.set_tags({"error": f"{type(e).__name__}: {e}"[:5000]})
            tracker.end_run(
                metrics_so_far(trainer), "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
            )
        raise
    if tracker is not None:
        outcome.run_id = tracker.run_id
        tracker.log_model(outcome.adapter_dir, artifact_path="adapter")
        if outcome.stopped_early:
            tracker.set_tags({"stopped_early": outcome.stopped_early})
        tracker.end_run(outcome.metrics, "FINISHED", step=outcome.global_step)
    return outcome


def check_output_dir(run_dir: Path) -> None:
    """Create the run folder and write a file in it, or fail with a TrainingError naming the folder and
    why. A real write, not os.access: root passes permission checks, not a read-only file system."""
    import errno
    import tempfile

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=run_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if isinstance(e, FileExistsError) or os.path.isfile(run_dir):
            why = "it exists and is a file, not a folder"
        elif e.errno == errno.ENOTDIR:
            parent = next((p for p in run_dir.parents if os.path.isfile(p)), run_dir.parent)
            why = f"{parent} is a file, not a folder"
        elif e.errno == errno.EROFS:
            why = "it is on a read-only file system"
        elif e.errno in (errno.EACCES, errno.EPERM):
            why = "permission denied"
        else:
            why = e.strerror or str(e)
        raise TrainingError(
            f"training.output_dir {run_dir} is not writable: {why}. Checkpoints, the adapter and the "
            "prepared data go there; set training.output_dir to a folder you can write "
            "(e.g. training.output_dir=runs/my-run)"
        ) from None


def metrics_so_far(trainer: LoRATrainer) -> dict[str, float]:
    """The step reached and the last logged training loss, for a run that ends in an error."""
    state = getattr(trainer.trainer, "state", None)
    if state is None:
        return {}
    out = {"global_step": float(state.global_step)}
    last = next((h for h in reversed(state.log_history) if "loss" in h), None)
    if last is not None:
        out["loss"] = float(last["loss"])
    return out
