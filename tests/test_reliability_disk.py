"""A full disk and unwritable folders (issue 14, item 4): a full disk while checkpointing keeps the last
good checkpoint and stops naming the folder and the space needed; a checkpoint is renamed into place only
when complete; resuming picks the last good one; an unwritable run folder fails before the model loads.

    pytest -m reliability tests/test_reliability_disk.py

Where this machine lets us (root with mount rights), the disk is a real tmpfs filled up during training
and the read-only folder a read-only mount; elsewhere those two tests skip and the others still run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from transformers import Trainer, TrainerCallback

from tuneforge.recipes import load_recipe
from tuneforge.train.checkpoints import STAGING, last_good_checkpoint, save_atomically
from tuneforge.train.trainer import TrainingError
from tuneforge.train.workflow import run_training

pytestmark = pytest.mark.reliability


def recipe(tiny_model_dir, data_file, run_dir, db, *overrides):
    return load_recipe(
        None,
        [
            f"model.name_or_path={tiny_model_dir}",
            f"data.train_file={data_file}",
            "data.max_seq_length=64",
            "data.validation_fraction=0.25",
            f"training.output_dir={run_dir}",
            "training.max_steps=3",
            "training.per_device_train_batch_size=2",
            "training.gradient_accumulation_steps=1",
            "training.logging_steps=1",
            "training.save_strategy=steps",
            "training.save_steps=1",
            "training.eval_strategy=no",
            "training.learning_rate=1e-2",
            f"tracking.tracking_uri=sqlite:///{db}",
            *overrides,
        ],
    )


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    """A tmpfs mounted at `folder` for the block; skips the test where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip() or done.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fingerprint(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


class FillDisk(TrainerCallback):
    """After checkpoint-1 is saved, fills the disk it is on, leaving `leave` bytes."""

    def __init__(self, leave: int = 64 * 1024):
        self.leave = leave

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 1:
            free = shutil.disk_usage(args.output_dir).free
            with open(Path(args.output_dir).parent / "filler", "wb") as f:
                f.write(b"\0" * max(free - self.leave, 0))


def with_callbacks(monkeypatch, *callbacks):
    from tuneforge.train.trainer import LoRATrainer

    original = LoRATrainer.train
    monkeypatch.setattr(
        LoRATrainer, "train", lambda self, *a, **kw: original(self, *a, **kw, callbacks=list(callbacks))
    )


def test_a_full_disk_keeps_the_last_good_checkpoint_and_resume_picks_it(
    tiny_model_dir, small_data_file, tmp_path, monkeypatch
):
    """The real thing: a 64 MB tmpfs that training fills up after checkpoint-1."""
    with tmpfs(tmp_path / "disk", "size=64m") as disk:
        run_dir = disk / "run"
        r = recipe(tiny_model_dir, small_data_file, run_dir, tmp_path / "mlflow.db")
        with monkeypatch.context() as m:
            with_callbacks(m, FillDisk())
            with pytest.raises(TrainingError) as caught:
                run_training(r)
        message = str(caught.value)
        size = sum(p.stat().st_size for p in (run_dir / "checkpoint-1").iterdir())
        assert f"disk full while writing checkpoint-2 to {run_dir}" in message
        assert f"it needs about {size / 2**20:.1f} MB" in message  # the size of the checkpoint before
        assert f"{run_dir / 'checkpoint-1'}, is kept" in message
        assert "training.output_dir" in message  # what to change
        assert not (run_dir / "checkpoint-2").exists() and not (run_dir / STAGING).exists()
        assert last_good_checkpoint(run_dir) == run_dir / "checkpoint-1"  # complete and readable

        (disk / "filler").unlink()  # space is back: the same command resumes from checkpoint-1
        outcome = run_training(r, resume="always")
        assert outcome.global_step == 3 and last_good_checkpoint(run_dir) == run_dir / "checkpoint-3"
        from mlflow.tracking import MlflowClient

        run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(outcome.run_id)
        assert run.data.tags["resumed_from"] == "checkpoint-1" and run.info.status == "FINISHED"


def test_a_checkpoint_that_fails_half_written_never_replaces_the_good_one(
    tiny_model_dir, small_data_file, tmp_path, monkeypatch
):
    """ENOSPC from the optimizer save, after the adapter files of checkpoint-2 were already written, when
    a good checkpoint-2 from an earlier run is in place: that one is untouched, nothing half-written
    stays, and the error names the folder and the space needed."""
    run_dir = tmp_path / "run"
    r = recipe(tiny_model_dir, small_data_file, run_dir, tmp_path / "mlflow.db", "training.max_steps=2")
    run_training(r)
    good = fingerprint(run_dir / "checkpoint-2")
    original = Trainer._save_optimizer_and_scheduler

    def full_disk(self, output_dir):
        if self.state.global_step == 2:
            Path(output_dir, "optimizer.pt").write_bytes(b"\0" * 1000)  # half written
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", full_disk)
    with pytest.raises(
        TrainingError, match=rf"disk full while writing checkpoint-2 to {run_dir}: it needs about"
    ):
        run_training(r, resume="never")
    assert fingerprint(run_dir / "checkpoint-2") == good
    assert not (run_dir / STAGING).exists()
    assert last_good_checkpoint(run_dir) == run_dir / "checkpoint-2"


def test_save_atomically_leaves_the_old_folder_when_a_write_fails(tmp_path):
    final = tmp_path / "adapter"
    save_atomically(final, lambda d: (d.mkdir(), (d / "a").write_text("old")))

    def half(d: Path):
        d.mkdir()
        (d / "a").write_text("new, half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        save_atomically(final, half)
    assert (final / "a").read_text() == "old" and sorted(os.listdir(tmp_path)) == ["adapter"]
    save_atomically(final, lambda d: (d.mkdir(), (d / "b").write_text("new")))
    assert sorted(os.listdir(final)) == ["b"] and sorted(os.listdir(tmp_path)) == ["adapter"]


class NoModel:
    """Fails the test if anything loads a tokenizer or a model."""

    def __call__(self, *a, **kw):
        raise AssertionError("the model was loaded before the run folder was checked")


def forbid_loading(monkeypatch):
    import tuneforge.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "tokenizer_for", NoModel())
    monkeypatch.setattr(trainer_module, "load_base_model", NoModel())


def test_an_output_folder_under_a_file_fails_before_the_model_loads(
    tiny_model_dir, small_data_file, tmp_path, monkeypatch
):
    (tmp_path / "runs").write_text("a file where a folder should be")
    run_dir = tmp_path / "runs" / "demo"
    forbid_loading(monkeypatch)
    with pytest.raises(TrainingError) as caught:
        run_training(recipe(tiny_model_dir, small_data_file, run_dir, tmp_path / "mlflow.db"))
    assert str(caught.value).startswith(
        f"training.output_dir {run_dir} is not writable: {tmp_path / 'runs'} is a file"
    )


def test_a_read_only_output_folder_fails_before_the_model_loads_with_a_clear_cli_error(
    tiny_model_dir, small_data_file, tmp_path, monkeypatch
):
    """A read-only mount refuses root too. Through the command line: exit 2, one line, no traceback."""
    from tuneforge.cli import main

    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        forbid_loading(monkeypatch)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main(
                [
                    "train",
                    f"model.name_or_path={tiny_model_dir}",
                    f"data.train_file={small_data_file}",
                    f"training.output_dir={ro}",
                    f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                ]
            )
    assert status == 2
    assert err.getvalue().startswith(f"error: training.output_dir {ro} is not writable: it is on a read-only")
    assert "Traceback" not in err.getvalue()


def as_user_nobody(fn) -> str:
    """Run `fn()` in a forked child that has dropped root for the user nobody; what it raised, or "ok"."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no exec, so nothing has to be readable by nobody
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                fn()
                answer = "ok"
            except Exception as e:
                answer = f"{type(e).__name__}: {e}"
            os.write(write, answer.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        answer = f.read()
    os.waitpid(pid, 0)
    return answer


def test_a_folder_without_write_permission_fails_with_its_name():
    """chmod 0o500. Root ignores permissions, so as root the check runs in a child that is the user nobody."""
    from tuneforge.train.workflow import check_output_dir

    parent = Path(tempfile.mkdtemp(prefix="tuneforge-"))  # pytest's tmp folders are closed to other users
    try:
        parent.chmod(0o755)  # anyone may look in
        locked = parent / "run"
        locked.mkdir(mode=0o500)
        if os.geteuid() == 0:
            answer = as_user_nobody(lambda: check_output_dir(locked))
        else:
            with pytest.raises(TrainingError) as caught:
                check_output_dir(locked)
            answer = f"TrainingError: {caught.value}"
    finally:
        shutil.rmtree(parent)
    assert answer.startswith(
        f"TrainingError: training.output_dir {locked} is not writable: permission denied"
    )
