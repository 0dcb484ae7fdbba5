"""Issue 14, item 7: `tuneforge run` killed with SIGKILL at points spread over the whole run (data, training,
comparison, report) resumes N times out of N to the result of a run that was never killed: the same steps,
the same adapter weights, the same comparison, the same report."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
KILLS = int(os.environ.get("TUNEFORGE_PIPELINE_KILLS", "3"))
STAGES = "data,train,compare,report"
VOLATILE = re.compile(r"run_id|runtime|per_second|seconds|report|flos")


def write_recipe(folder: Path, model: Path, data: Path) -> Path:
    folder.mkdir(parents=True)
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        "\n".join([
            f"model: {{name_or_path: '{model}'}}",
            f"data: {{train_file: '{data}', test_file: '{data}', max_seq_length: 64,"
            " validation_fraction: 0.25}",
            f"training: {{output_dir: '{folder / 'run'}', max_steps: 8, save_steps: 2,"
            " per_device_train_batch_size: 2, eval_strategy: 'no', logging_steps: 2}",
            "eval: {limit: 4, metrics: [exact_match, token_f1]}",
            "sampling: {max_tokens: 6}",
            "inference: {engine: transformers}",
            f"tracking: {{tracking_uri: 'sqlite:///{folder / 'mlflow.db'}'}}",
        ])
    )  # fmt: skip
    return recipe


def run(recipe: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tuneforge.cli", "run", str(recipe), "--stages", STAGES]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def outcome(folder: Path) -> dict:
    """What the run produced, without what differs between any two runs (times, run ids, paths)."""
    from safetensors.torch import load_file

    state = json.loads((folder / "run" / "pipeline.json").read_text())["stages"]

    def stable(value):
        if isinstance(value, dict):
            return {k: stable(v) for k, v in value.items() if not VOLATILE.search(k)}
        return value

    summaries = {name: stable(state[name]["summary"]) for name in ("data", "train", "compare")}
    summaries["train"].pop("train_loss", None)  # averaged over the steps this process ran, not the run's
    weights = load_file(str(folder / "run" / "adapter" / "adapter_model.safetensors"))
    report = (folder / "run" / "report.md").read_text()
    compared = (
        report[report.index("## Base against fine-tuned") :].split("\n## ")[0].replace(str(folder), "<run>")
    )
    return {"summaries": summaries, "weights": weights, "compared": compared}


def differences(a: dict, b: dict) -> list[str]:
    """What differs between two outcomes (empty: the same result)."""

    out = [f"{k} summary: {a['summaries'][k]} != {b['summaries'][k]}" for k in a["summaries"]
           if a["summaries"][k] != b["summaries"][k]]  # fmt: skip
    if a["weights"].keys() != b["weights"].keys():
        out.append("adapter tensors differ in name")
    else:
        worst = max((a["weights"][k] - b["weights"][k]).abs().max().item() for k in a["weights"])
        if worst > 1e-6:
            out.append(f"adapter weights differ by up to {worst:.3g}")
    if a["compared"] != b["compared"]:
        out.append(f"report: {a['compared']!r} != {b['compared']!r}")
    return out


def test_sigkill_anywhere_in_the_run_resumes_to_the_same_result(tiny_model_dir, small_data_file, tmp_path):
    t0 = time.monotonic()
    reference = run(write_recipe(tmp_path / "ref", tiny_model_dir, small_data_file))
    whole = time.monotonic() - t0
    assert reference.returncode == 0, reference.stdout[-2000:] + reference.stderr[-3000:]
    expected = outcome(tmp_path / "ref")

    rng = random.Random(14)
    killed_in = []
    for i in range(KILLS):
        folder = tmp_path / f"kill{i}"
        recipe = write_recipe(folder, tiny_model_dir, small_data_file)
        cmd = [sys.executable, "-m", "tuneforge.cli", "run", str(recipe), "--stages", STAGES]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(whole * (i + rng.uniform(0.2, 0.8)) / KILLS)  # spread over the run: early, middle, late
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state_file = folder / "run" / "pipeline.json"
        done = json.loads(state_file.read_text())["stages"] if state_file.exists() else {}
        killed_in.append(next((s for s in STAGES.split(",") if s not in done), "after the report"))

        again = run(recipe)
        assert again.returncode == 0, f"kill {i} ({killed_in[-1]}): " + again.stderr[-3000:]
        diff = differences(outcome(folder), expected)
        assert not diff, f"kill {i} during {killed_in[-1]} resumed to another result: {diff}"
    assert len(set(killed_in)) >= min(2, KILLS), f"the kills all landed in {killed_in}"
