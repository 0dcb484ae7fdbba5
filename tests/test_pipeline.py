"""`tuneforge run`: what is skipped, what re-runs, and resuming after a crash (tuneforge/pipeline/)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO

from tuneforge.errors import ConfigError
from tuneforge.pipeline.run import run_pipeline
from tuneforge.pipeline.stages import Options, StageFailed
from tuneforge.pipeline.state import STATE_FILE, PipelineState, fingerprint
from tuneforge.recipes import load_recipe
from tuneforge.tables import duration

# --------------------------------------------------------------------------- the state (no model)


def test_a_stage_is_skipped_only_when_done_same_settings_and_outputs_present(tmp_path):
    state = PipelineState.load(tmp_path)
    fp = fingerprint({"lora": {"r": 8}})
    assert state.why_run("train", fp) == "not run yet"
    (tmp_path / "adapter").mkdir()
    state.finish("train", fp, ["adapter"], 12.5, {"loss": 0.1})
    again = PipelineState.load(tmp_path)  # read back from pipeline.json
    assert again.why_run("train", fp) is None
    assert again.stages["train"].summary == {"loss": 0.1} and again.stages["train"].seconds == 12.5
    changed = fingerprint({"lora": {"r": 16}})
    assert again.why_run("train", changed) == "its settings or an earlier stage changed"
    (tmp_path / "adapter").rmdir()
    assert again.why_run("train", fp) == "its output adapter is gone"


def test_fingerprints_follow_settings_and_upstream_but_not_key_order():
    a = fingerprint({"x": 1, "y": [1, 2]}, ["up1"])
    assert a == fingerprint({"y": [1, 2], "x": 1}, ["up1"])
    assert a != fingerprint({"x": 2, "y": [1, 2]}, ["up1"])
    assert a != fingerprint({"x": 1, "y": [1, 2]}, ["up2"])
    assert a != fingerprint({"x": 1, "y": [2, 1]}, ["up1"])


def test_forget_and_a_corrupt_state_file(tmp_path):
    state = PipelineState.load(tmp_path)
    state.finish("data", "f", [], 1.0, {})
    state.forget("data")
    assert "data" not in PipelineState.load(tmp_path).stages
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, nothing left behind
    (tmp_path / STATE_FILE).write_text("{half a file")
    with pytest.raises(ConfigError, match=rf"{STATE_FILE}: not a pipeline state.*delete it"):
        PipelineState.load(tmp_path)
    (tmp_path / STATE_FILE).write_text(json.dumps({"version": 99, "stages": {}}))
    with pytest.raises(ConfigError, match="version 99"):
        PipelineState.load(tmp_path)


@pytest.mark.parametrize(
    "seconds,text",
    [(0.04, "0.0 s"), (0.2, "0.2 s"), (9.94, "9.9 s"), (12.4, "12 s"), (60, "1 min"), (185, "3 min 5 s"),
     (3600, "1 h"), (3720, "1 h 2 min")],
)  # fmt: skip
def test_durations_read_as_a_person_writes_them(seconds, text):
    assert duration(seconds) == text


# --------------------------------------------------------------------------- the pipeline on a tiny model


def tiny_recipe(tiny_model_dir, data_file, tmp_path, *overrides):
    return load_recipe(
        None,
        [
            f"model.name_or_path={tiny_model_dir}",
            f"data.train_file={data_file}",
            f"data.test_file={data_file}",
            "data.max_seq_length=64",
            "data.validation_fraction=0.25",
            f"training.output_dir={tmp_path / 'run'}",
            "training.max_steps=2",
            "training.per_device_train_batch_size=2",
            "training.save_steps=1",
            "training.eval_strategy=no",
            "eval.limit=3",
            "eval.metrics=[exact_match]",
            "sampling.max_tokens=4",
            "inference.engine=transformers",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            *overrides,
        ],
    )


def test_run_skips_what_is_done_and_reruns_what_a_changed_key_affects(
    tiny_model_dir, small_data_file, tmp_path
):
    stages = ["data", "train", "compare", "report"]
    recipe = tiny_recipe(tiny_model_dir, small_data_file, tmp_path)
    first = run_pipeline(recipe, Options(), stages)
    assert [n for n, d in first.items() if d["status"] == "ran"] == stages
    assert first["train"]["summary"]["global_step"] == 2
    assert set(first["compare"]["summary"]["finetuned"]["metrics"]) == {"exact_match"}
    report = (tmp_path / "run" / "report.md").read_text()
    for section in ("## Data", "## Training", "## Base against fine-tuned", "## Time per stage"):
        assert section in report

    again = run_pipeline(recipe, Options(), stages)
    assert {n: d["status"] for n, d in again.items()} == dict.fromkeys(stages, "skipped")

    # a training key re-runs training and what reads its adapter, not the data
    longer = tiny_recipe(tiny_model_dir, small_data_file, tmp_path, "training.max_steps=3")
    third = run_pipeline(longer, Options(), stages)
    assert {n: d["status"] for n, d in third.items()} == {
        "data": "skipped", "train": "ran", "compare": "ran", "report": "ran"
    }  # fmt: skip
    assert third["train"]["summary"]["global_step"] == 3

    # an evaluation key re-runs the comparison only (and the report)
    fourth = run_pipeline(
        tiny_recipe(tiny_model_dir, small_data_file, tmp_path, "training.max_steps=3", "eval.limit=2"),
        Options(),
        stages,
    )
    assert [n for n, d in fourth.items() if d["status"] == "ran"] == ["compare", "report"]


def test_a_stage_whose_inputs_are_missing_is_refused(tiny_model_dir, small_data_file, tmp_path):
    recipe = tiny_recipe(tiny_model_dir, small_data_file, tmp_path)
    with pytest.raises(StageFailed, match="compare needs train done for these settings first"):
        run_pipeline(recipe, Options(), ["compare"])
    with pytest.raises(ConfigError, match="unknown stage 'trian'; the stages are data, train"):
        run_pipeline(recipe, Options(), ["trian"])


def test_sigkill_during_training_then_run_again_resumes_instead_of_redoing(
    tiny_model_dir, small_data_file, tmp_path
):
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(
        "\n".join(
            [
                f"model: {{name_or_path: '{tiny_model_dir}'}}",
                f"data: {{train_file: '{small_data_file}', max_seq_length: 64}}",
                f"training: {{output_dir: '{tmp_path / 'run'}', max_steps: 400, save_steps: 5,"
                " per_device_train_batch_size: 2, eval_strategy: 'no', logging_steps: 5}",
                f"tracking: {{tracking_uri: 'sqlite:///{tmp_path / 'mlflow.db'}'}}",
            ]
        )
    )
    cmd = [sys.executable, "-m", "tuneforge.cli", "run", str(recipe_file), "--stages", "data,train"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = tmp_path / "run"
    deadline = time.monotonic() + 300
    while not list(run.glob("checkpoint-*/trainer_state.json")):  # the first complete checkpoint
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint in 300 s"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = json.loads((run / STATE_FILE).read_text())["stages"]
    assert "data" in state and "train" not in state  # data finished; training did not

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    out = again.stdout + again.stderr
    assert "== data: done before for these settings" in out  # not redone
    assert "resuming from" in out and "checkpoint-" in out  # training continued from its checkpoint
    done = json.loads(again.stdout.strip().splitlines()[-1])["stages"]
    assert done["data"]["status"] == "skipped" and done["train"]["status"] == "ran"
    state = json.loads((run / STATE_FILE).read_text())["stages"]
    assert state["train"]["summary"]["global_step"] == 400
    assert "train loss" in out and (run / "run.log").is_file()  # the stage's result line; the logs kept


def test_each_stage_ends_with_one_line_a_person_can_read():
    from tuneforge.pipeline.console import stage_result

    data = {"records": 800, "valid": 798, "train_examples": 730, "validation_examples": 68, "tokens": 91234}
    assert (
        stage_result("data", data) == "798 of 800 records valid: 730 to train, 68 to validate, 91234 tokens"
    )
    train = {"global_step": 40, "train_loss": 0.11188, "eval_loss": 0.017386}
    assert stage_result("train", train) == "40 steps, train loss 0.112, eval loss 0.0174"
    compare = {"base": {"metrics": {"json_exact": 0.0, "json_fields": 0.224}},
               "finetuned": {"metrics": {"json_exact": 0.94, "json_fields": 0.988}}}  # fmt: skip
    assert stage_result("compare", compare) == "json_exact 0 -> 0.94, json_fields 0.22 -> 0.99"
    bench = {"levels": [{"load": "c1", "requests_per_s": 1.234, "output_tok_s": 50.0, "completed": 12}]}
    assert stage_result("bench", bench) == "c1: 1.23 req/s, 50.0 tok/s"
    assert "\n" not in stage_result("bench", {"levels": bench["levels"] * 3})


def test_without_verbose_the_terminal_keeps_tuneforge_lines_and_warnings_only():
    import logging

    from tuneforge.pipeline.console import ours_or_warning

    def record(name, level):
        return logging.LogRecord(name, level, __file__, 1, "m", None, None)

    assert ours_or_warning(record("tuneforge.train.workflow", logging.INFO))
    assert ours_or_warning(record("vllm.engine", logging.WARNING))
    assert not ours_or_warning(record("vllm.engine", logging.INFO))
    assert not ours_or_warning(record("tuneforgex", logging.INFO))  # a prefix is not our package
    # the stage commands' JSON (kilobytes for cost) goes to run.log only
    assert not ours_or_warning(record("tuneforge.pipeline.commands", logging.INFO))
    assert ours_or_warning(record("tuneforge.pipeline.commands", logging.WARNING))
    # bitsandbytes' CPU backend warns at import about an optional package: run.log only, errors still shown
    assert not ours_or_warning(record("bitsandbytes.backends.cpu.ops", logging.WARNING))
    assert ours_or_warning(record("bitsandbytes.backends.cpu.ops", logging.ERROR))
    assert ours_or_warning(record("bitsandbytes.nn", logging.WARNING))


def test_the_example_shown_is_the_case_fine_tuning_improved_most():
    from tuneforge.pipeline.stages import most_improved_case

    def case(i, prediction, score):
        prompt = (
            f"<|im_start|>user\nExtract the order.\n\nText number {i}.<|im_end|>\n<|im_start|>assistant\n"
        )
        return {"id": f"t{i}", "prompt": prompt, "reference": "R", "prediction": prediction,
                "scores": {"json_exact": score, "json_valid": 1.0}}  # fmt: skip

    results = {
        "base": {"cases": [case(0, "b0", 1.0), case(1, "b1", 0.0), case(2, "b2", None)]},
        "finetuned": {"cases": [case(0, "t0", 1.0), case(1, "t1", 1.0), case(2, "t2", 0.5)]},
    }
    ex = most_improved_case(results)
    assert (ex["id"], ex["base"], ex["finetuned"], ex["metric"]) == ("t1", "b1", "t1", "json_exact")
    assert ex["prompt"] == "Text number 1."  # the prompt's last line, without the chat template's tokens
    assert most_improved_case({"base": {"cases": []}, "finetuned": {"cases": []}}) is None


def test_a_stage_command_shows_its_tables_and_keeps_its_json_line_for_the_log(capsys, caplog):
    import logging

    from tuneforge.pipeline.stages import _command

    def register(sub):
        p = sub.add_parser("cost")
        p.set_defaults(func=lambda args: print('price  $1\n{"big": "json"}') or 0)

    with caplog.at_level(logging.INFO, logger="tuneforge.pipeline.commands"):
        assert _command(register, ["cost"]) == 0
    shown = capsys.readouterr().out
    assert "price  $1" in shown and '"big"' not in shown
    assert any('{"big": "json"}' in r.getMessage() for r in caplog.records)
