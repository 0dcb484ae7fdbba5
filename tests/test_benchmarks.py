"""The benchmark scripts run unchanged on this CPU with a tiny model (the GPU runs use the same code)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO


def test_train_throughput_runs_every_variant_in_its_own_process_on_the_same_examples(tiny_model_dir):
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "train_throughput.py"),
        "--model", str(tiny_model_dir), "--random-weights", "--lengths", "lognormal", "--seq", "96",
        "--batch", "3", "--steps", "3", "--warmup", "1", "--lr", "1e-2", "--record-loss",
        "--variants", "plain+gc,ours:attn=varlen;gc=on,ours:nonsense=1",
    ]  # fmt: skip
    bad = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert bad.returncode != 0 and "unknown key nonsense" in bad.stderr  # a typo fails before any run
    done = subprocess.run(
        [*cmd[:-1], "plain+gc,ours:attn=varlen;gc=on"], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-3].startswith("plain+gc") and lines[-2].startswith("ours:attn=varlen;gc=on")  # the table
    result = json.loads(lines[-1])
    plain, ours = result["results"]["plain+gc"], result["results"]["ours:attn=varlen;gc=on"]
    assert result["baseline"] == "plain+gc" and plain["ratio"] == 1.0
    assert ours["ratio"] == pytest.approx(ours["tokens_per_s"] / plain["tokens_per_s"], rel=1e-3)
    # both consumed the same examples: the same number of real (non-padding) tokens
    assert ours["tokens"] == plain["tokens"] > 0
    assert ours["plan"]["attention"] == "varlen" and ours["plan"]["checkpointing"] == "all layers"
    assert result["errors"] == {}
    # from the same weights and adapter initialisation, tuneforge's trainer (packed, varlen, checkpointed)
    # trains exactly as the plain padded loop: the same loss at every step
    assert len(ours["losses"]) == len(plain["losses"]) == 4
    assert ours["losses"] == pytest.approx(plain["losses"], rel=1e-4)


def test_serve_vs_vllm_attributes_cpu_time_and_profile_samples_correctly(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import serve_vs_vllm

    collapsed = tmp_path / "p.collapsed"
    collapsed.write_text("main (a.py:1);send (b.py:2) 3\nmain (a.py:1);encode (c.py:9) 1\n")
    shares = dict(serve_vs_vllm.top_functions(collapsed))
    assert shares == {"main": 1.0, "send": 0.75, "encode": 0.25}  # inclusive share of all samples
    # a parent that waits and a child that spins: the child's CPU is counted as a worker's, not the API's
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 3: pass\n"
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {spin!r}])"]
    )
    try:
        import time

        deadline = time.monotonic() + 20
        seconds = serve_vs_vllm.cpu_seconds(parent.pid)
        while seconds.get("worker", 0.0) < 1.0 and time.monotonic() < deadline:  # until the child has spun
            time.sleep(0.1)
            seconds = serve_vs_vllm.cpu_seconds(parent.pid)
    finally:
        parent.wait(timeout=30)
    assert set(seconds) == {"api", "worker"} and seconds["api"] < seconds["worker"]
