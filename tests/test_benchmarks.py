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


def lora_overhead():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import lora_overhead

    return lora_overhead


def test_lora_overhead_adapter_has_the_model_shape_and_loads_into_peft(tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora_overhead().make_adapter(str(tiny_model_dir), str(tmp_path / "ad"), 8, targets)
    saved = load_file(tmp_path / "ad" / "adapter_model.safetensors")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "ad")
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(saved) == 2 * len(targets) * 2  # A and B per module, 2 layers
    for name, tensor in saved.items():  # every saved tensor landed in its module (not left at its init)
        key = name.replace(".weight", ".default.weight")
        assert torch.equal(loaded[key].to(tensor.dtype), tensor), name


def test_lora_overhead_ratios_are_against_the_model_served_without_lora():
    rows = [
        {"setting": "nolora", "mode": "base", "concurrency": 1, "tok_s": 200.0},
        {"setting": "sized", "mode": "base", "concurrency": 1, "tok_s": 190.0},
        {"setting": "sized", "mode": "adapter", "concurrency": 1, "tok_s": 150.0},
        {"setting": "sized", "mode": "adapter", "concurrency": 8, "tok_s": 600.0},
        {"setting": "sized", "mode": "base", "concurrency": 8, "tok_s": 800.0},
    ]
    ratio = {(r["setting"], r["mode"], r["concurrency"]): r["vs_base"] for r in lora_overhead().table(rows)}
    assert ratio[("sized", "base", 1)] == 0.95 and ratio[("sized", "adapter", 1)] == 0.75
    # no nolora run at concurrency 8: against the same engine's base requests
    assert ratio[("sized", "adapter", 8)] == 0.75 and ratio[("sized", "base", 8)] == 1.0


@pytest.mark.slow
@pytest.mark.vllm
def test_lora_overhead_runs_tuneforge_vllm_engine_sized_to_the_adapter(tmp_path):
    pytest.importorskip("vllm")
    from tuneforge.models.resolve import resolve_model

    model = resolve_model("smollm2-135m-instruct").path
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "lora_overhead.py"), model, "--settings", "sized",
        "--concurrency", "1,2", "--output-len", "4", "--input-len", "8", "--min-requests", "2",
        "--wait", "600", "--log-dir", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    got = {(r["mode"], r["concurrency"]): r for r in result["rows"]}
    assert set(got) == {(m, c) for m in ("base", "adapter", "mixed") for c in (1, 2)}
    assert all(r["tokens"] == 2 * 4 for r in got.values())  # every answer exactly --output-len tokens
    engine = result["engines"][0]["engine"]  # read back from the running vLLM engine
    assert (engine["max_loras"], engine["max_lora_rank"]) == (1, 16)
