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
