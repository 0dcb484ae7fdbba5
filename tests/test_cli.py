"""The `tuneforge` command: help texts, exit codes, error messages and the data commands end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, alpaca, write_rows


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def json_line(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_console_script_is_installed():
    exe = shutil.which("tuneforge") or str(Path(sys.executable).parent / "tuneforge")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("tuneforge ")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["data"],
        ["data", "validate"],
        ["data", "prepare"],
        ["data", "stats"],
        ["models"],
        ["models", "prepare"],
        ["models", "list"],
        ["config"],
        ["config", "show"],
        ["config", "keys"],
        ["cost"],
        ["cost", "instance"],
        ["cost", "gpus"],
        ["cost", "compare"],
        ["cost", "catalog"],
        ["estimate"],
    ],
)
def test_every_command_explains_itself(args):
    out = run(*args, "--help")
    assert out.returncode == 0 and "usage: tuneforge" in out.stdout
    description = out.stdout.split("\n\n")[1]  # the paragraph after the usage line
    assert not description.startswith(("positional arguments", "options")), out.stdout
    if len(args) == 2 or not args:  # commands that do something show an example
        assert "example" in out.stdout


def test_validate_reports_malformed_line_7_and_missing_output(tmp_path):
    rows = alpaca(10)
    path = write_rows(tmp_path / "train.jsonl", rows)
    lines = path.read_text().splitlines()
    lines[6] = '{"id": "ex-6", "instruction": "Add." "output": "1"}'
    lines[8] = json.dumps({"id": "ex-8", "instruction": "Add."})
    path.write_text("\n".join(lines) + "\n")
    out = run("data", "validate", str(path))
    assert out.returncode == 1
    assert f"{path}:7: example id 'ex-6': malformed JSON" in out.stdout
    assert f"{path}:9: example id 'ex-8': field 'output': missing" in out.stdout
    assert json_line(out.stdout)["invalid_ids"] == ["ex-6", "ex-8"]


def test_validate_clean_file_exits_zero():
    out = run("data", "validate", "data/demo/train.jsonl", "data/demo/test.jsonl")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json_line(out.stdout)["invalid"] == 0


def test_errors_exit_2_with_a_message_and_no_traceback(tmp_path):
    out = run("data", "validate", str(tmp_path / "missing.jsonl"))
    assert out.returncode == 2 and "error:" in out.stderr and "file not found" in out.stderr
    assert "Traceback" not in out.stderr
    out = run("config", "show", "configs/demo-cpu.yaml", "lora.rank=4")
    assert out.returncode == 2 and "did you mean 'lora.r'" in out.stderr


def test_cost_without_a_subcommand_prints_its_help_and_exits_2():
    out = run("cost")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("usage: tuneforge cost") and "Traceback" not in out.stderr
    assert all(f"tuneforge cost {sub}" in out.stderr for sub in ("instance", "gpus", "compare", "catalog"))
    out = run("cost", "--list")  # the one-command form of old points to its sub-command
    assert out.returncode == 2 and "--list is now `tuneforge cost catalog`" in out.stderr
    out = run("cost", "catalog", "--bench", "results.json")
    assert out.returncode == 2 and "unrecognized arguments: --bench results.json" in out.stderr
    out = run("cost", "instance", "g5.xlarg")
    assert out.returncode == 2 and "did you mean g5.xlarge" in out.stderr
    assert "`tuneforge cost catalog` shows the catalog" in out.stderr


def test_config_show_applies_overrides():
    out = run("config", "show", "configs/demo-cpu.yaml", "training.learning_rate=1e-5")
    assert out.returncode == 0 and "learning_rate: 1.0e-05" in out.stdout
    out = run("config", "show", "lora.r=4")  # defaults only
    assert out.returncode == 0 and "r: 4" in out.stdout


def test_overrides_may_stand_anywhere_on_the_line():
    from tuneforge.cli import build_parser
    from tuneforge.command import parse

    parser = build_parser()
    args = parse(parser, ["eval", "configs/demo-cpu.yaml", "--adapter", "runs/a", "eval.limit=2", "lora.r=4"])
    assert (args.target, args.adapter, args.overrides) == (
        "configs/demo-cpu.yaml",
        "runs/a",
        ["eval.limit=2", "lora.r=4"],
    )
    args = parse(parser, ["compare", "eval.limit=3", "--other", "m", "training.seed=1"])  # no recipe at all
    assert (args.target, args.other, args.overrides) == (None, "m", ["eval.limit=3", "training.seed=1"])
    args = parse(parser, ["train", "--no-resume", "lora.r=8", "configs/demo-cpu.yaml"])
    assert (
        args.target == "configs/demo-cpu.yaml" and args.overrides == ["lora.r=8"] and args.resume == "never"
    )
    out = run("config", "show", "configs/demo-cpu.yaml", "lora.r=3", "--bogus")
    assert out.returncode == 2 and "unrecognized arguments: --bogus" in out.stderr
    out = run("models", "list", "lora.r=3")
    assert out.returncode == 2 and "takes no KEY=VALUE" in out.stderr


def test_config_keys_lists_keys_with_docs():
    out = run("config", "keys", "lora")
    assert out.returncode == 0 and "lora.r " in out.stdout and "LoRA rank" in out.stdout


def test_prepare_and_stats_on_a_tiny_model(tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "d.jsonl", [*alpaca(30), {"id": "bad"}])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model:\n  name_or_path: {tiny_model_dir}\ndata:\n  train_file: {data}\n"
        f"  on_invalid: skip\ntraining:\n  output_dir: {tmp_path / 'run'}\n"
    )
    out = run("data", "prepare", str(recipe), "data.max_seq_length=128")
    assert out.returncode == 0, out.stderr
    result = json_line(out.stdout)
    assert result["invalid_ids"] == ["bad"] and result["train_examples"] + result["validation_examples"] == 30
    assert (tmp_path / "run" / "data" / "train" / "dataset_info.json").is_file()
    assert json.loads((tmp_path / "run" / "data" / "stats.json").read_text())["max_seq_length"] == 128
    out = run("data", "stats", str(recipe), "--show", "1")
    assert out.returncode == 0 and "tokens per example:" in out.stdout and " | #" in out.stdout
    shown = out.stdout.split("loss is computed on the text between >>> and <<<:\n")[1]
    # the alpaca rows answer "Add i and i+1." with 2i+1: only that answer and the end marker are marked
    assert shown.count(">>>") == 1 and "<|im_start|>user\nAdd" in shown
    assert shown.split(">>>")[1].split("<<<")[0].rstrip("\n").endswith("<|im_end|>")
    # a data file alone runs with the default recipe, pointed at a model by override
    out = run("data", "stats", str(data), f"model.name_or_path={tiny_model_dir}", "data.on_invalid=skip")
    assert out.returncode == 0 and json_line(out.stdout)["valid"] == 30


def test_prepare_stops_on_invalid_examples_by_default(tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "d.jsonl", [*alpaca(3), {"id": "bad"}])
    out = run(
        "data",
        "prepare",
        str(data),
        f"model.name_or_path={tiny_model_dir}",
        f"training.output_dir={tmp_path / 'run'}",
    )
    assert out.returncode == 2 and "example id 'bad'" in out.stderr and "data.on_invalid=skip" in out.stderr
    assert not (tmp_path / "run").exists()


def test_serve_takes_overrides_alone_or_after_a_model_and_options():
    from tuneforge.cli import build_parser
    from tuneforge.command import parse
    from tuneforge.serve.cli import settings_from_args

    only = settings_from_args(parse(build_parser(), ["serve", "inference.dtype=float32", "--port", "9"]))
    assert only.model == "smollm2-135m-instruct" and only.inference.dtype == "float32" and only.port == 9
    after = parse(build_parser(), ["serve", "org/m", "--port", "9", "inference.max_model_len=64"])
    assert after.model == "org/m" and after.overrides == ["inference.max_model_len=64"]
    assert settings_from_args(after).inference.max_model_len == 64


def test_import_graph_draws_stages_side_by_side_and_matches_the_readme():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "import_graph.py")], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr  # exits non-zero when one stage imports another
    assert "train --> models" in done.stdout and "serve --> engines" in done.stdout
    assert done.stdout.strip() in (REPO / "docs" / "tour.md").read_text()  # the tour shows the graph as it is


def test_stop_process_terminates_then_kills_what_ignores_sigterm():
    import subprocess
    import sys
    import time

    from tuneforge.command import stop_process

    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stop_process(polite, grace_s=10)
    assert polite.returncode == -15  # SIGTERM was enough
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
         "print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert stubborn.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    stop_process(stubborn, grace_s=0.5)
    stubborn.wait(10)
    assert stubborn.returncode == -9 and time.monotonic() - t0 < 10  # killed after the grace period


def test_wait_ready_says_why_a_server_did_not_come_up(tmp_path):
    import http.server
    import json
    import subprocess
    import sys
    import threading

    from tuneforge.command import ServerNotReady, stop_process, wait_ready

    answers = iter([(503, {"status": "loading"}), (200, {"status": "ready"})])
    state = {"next": None}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            code, body = state["next"] or next(answers)
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/ready"
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert wait_ready(url, alive, timeout=10, poll_s=0.05) >= 0  # 503 while loading, then 200
        state["next"] = (503, {"status": "failed", "error": "no such model 'x'"})
        with pytest.raises(ServerNotReady, match="could not load its model: no such model 'x'"):
            wait_ready(url, alive, timeout=10, poll_s=0.05)
        state["next"] = (503, {"status": "loading"})
        with pytest.raises(ServerNotReady, match=r"not ready at .*/ready in 0 s"):
            wait_ready(url, alive, timeout=0.2, poll_s=0.05)
    finally:
        stop_process(alive, grace_s=5)
        httpd.shutdown()
    log = tmp_path / "serve.log"
    log.write_text("".join(f"line {i}\n" for i in range(40)) + "Traceback: the model is gone\n")
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait(10)
    with pytest.raises(ServerNotReady) as e:
        wait_ready(url, dead, timeout=10, log=log)
    assert "exited with 3" in str(e.value) and str(log) in str(e.value)
    assert str(e.value).endswith("Traceback: the model is gone")  # the log's last lines, not its first
    assert "line 10\n" not in str(e.value) and "line 39" in str(e.value)
