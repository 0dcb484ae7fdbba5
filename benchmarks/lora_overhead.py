"""What a LoRA adapter costs in tuneforge's vLLM engine: output tokens/s of base, adapter and mixed requests.

Each setting starts `VLLMEngine` (tuneforge's engine, as `tuneforge serve` runs it: AsyncLLM with its engine
core in its own process) in a child process, loads one random rank-R adapter on the given modules, and
streams fixed-length answers (ignore_eos) at each concurrency: all base, all adapter, then half and half in
one batch. The baseline is the same model served without LoRA (setting `nolora`).

    python benchmarks/lora_overhead.py MODEL_DIR --load-format dummy --dtype bfloat16 \\
        --settings nolora,wide,sized --concurrency 1,64 --output-len 256      # a GPU, vLLM staged

Settings: nolora (enable_lora off), wide (room for 4 adapters of rank 64: what an engine keeps when
adapters may be loaded at runtime), sized (the engine told which adapter it serves, as `serve --adapter`
and `compare` do: room for 1 of its rank, engines/lora_slots.py), single (sized with vLLM's dual-stream
LoRA kernels off, VLLM_LORA_ENABLE_DUAL_STREAM=0: the same-run baseline for them). A setting whose
engine has not answered within --wait seconds gets its stacks dumped (py-spy when on the PATH) and stopped.
Prints a table, then a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = ("nolora", "wide", "sized", "single")
# single: sized with vLLM's dual-stream LoRA kernels off (tuneforge turns them on on CUDA unless set)
MODULES = {  # PEFT module -> (input, output) feature sizes, from the model's config
    "q_proj": ("hidden", "q"),
    "k_proj": ("hidden", "kv"),
    "v_proj": ("hidden", "kv"),
    "o_proj": ("q", "hidden"),
    "gate_proj": ("hidden", "inter"),
    "up_proj": ("hidden", "inter"),
    "down_proj": ("inter", "hidden"),
}
ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}


def make_adapter(model: str, out: str, rank: int, targets: list[str], seed: int = 0) -> None:
    """A random PEFT LoRA adapter for MODEL's shape (bf16 safetensors, as `tuneforge train` saves one)."""
    import torch
    from safetensors.torch import save_file

    cfg = json.loads((Path(model) / "config.json").read_text())
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    size = {"hidden": cfg["hidden_size"], "q": heads * head_dim, "inter": cfg["intermediate_size"]}
    size["kv"] = head_dim * cfg.get("num_key_value_heads", heads)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(cfg["num_hidden_layers"]):
        for m in targets:
            fin, fout = (size[k] for k in MODULES[m])
            p = f"base_model.model.model.layers.{i}.{'self_attn' if m in ATTENTION else 'mlp'}.{m}"
            tensors[f"{p}.lora_A.weight"] = (torch.randn(rank, fin, generator=gen) * 0.01).to(torch.bfloat16)
            tensors[f"{p}.lora_B.weight"] = (torch.randn(fout, rank, generator=gen) * 0.01).to(torch.bfloat16)
    os.makedirs(out, exist_ok=True)
    save_file(tensors, os.path.join(out, "adapter_model.safetensors"))
    Path(out, "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": targets,
        "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM", "base_model_name_or_path": model,
    }))  # fmt: skip


def inference_config(setting: str, args):
    from tuneforge.config import InferenceConfig

    cfg = dict(dtype=args.dtype, load_format=args.load_format, max_model_len=args.max_model_len,
               gpu_memory_utilization=args.gpu_memory_utilization)  # fmt: skip
    if setting == "wide":
        cfg.update(max_loras=4, max_lora_rank=64)
    return InferenceConfig(**cfg)


async def measure(engine, prompt: str, concurrency: int, requests: int, output_len: int, who) -> dict:
    """`requests` answers of exactly `output_len` tokens with `concurrency` in flight; who(i) picks the
    adapter of request i (None: the base model)."""
    from tuneforge.config import SamplingParams

    sampling = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    gate = asyncio.Semaphore(concurrency)
    tokens = []

    async def one(i: int) -> None:
        async with gate:
            last = None
            async for chunk in engine.stream(prompt, sampling, who(i)):
                last = chunk
            tokens.append(last.completion_tokens)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    seconds = time.perf_counter() - t0
    return {"tokens": sum(tokens), "seconds": round(seconds, 3), "tok_s": round(sum(tokens) / seconds, 1)}


def child(args, setting: str, adapter: str) -> None:
    """Runs in the child process: start the engine, measure, print RESULT lines."""
    from tuneforge.engines.vllm_engine import VLLMEngine

    lora = setting != "nolora"
    t0 = time.time()
    served = [adapter] if setting in ("sized", "single") else []
    engine = VLLMEngine.start(args.model, inference_config(setting, args), enable_lora=lora, adapters=served)
    print(f"STARTED {time.time() - t0:.1f}", flush=True)
    print("ENGINE " + json.dumps(engine.describe(), default=str), flush=True)
    prompt = " ".join(["word"] * args.input_len)
    modes = {"base": lambda i: None}
    if lora:
        engine.run_sync(engine.load_adapter("ad", adapter))
        modes.update(adapter=lambda i: "ad", mixed=lambda i: "ad" if i % 2 else None)
    for who in modes.values():  # warm-up: the first requests compile kernels and capture graphs
        engine.run_sync(measure(engine, prompt, 2, 2, 8, who))
    for c in args.concurrency:
        requests = max(c, args.min_requests)
        for mode, who in modes.items():
            r = engine.run_sync(measure(engine, prompt, c, requests, args.output_len, who))
            print(
                "RESULT " + json.dumps({"setting": setting, "mode": mode, "concurrency": c, **r}), flush=True
            )
    engine.close()


def run_setting(args, setting: str, adapter: str, log_dir: Path) -> tuple[list[dict], dict]:
    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_lora_start import descendants, dump_stacks

    log = log_dir / f"lora_overhead_{setting}.log"
    cmd = [sys.executable, __file__, "--child", setting, "--adapter", adapter, *sys.argv[1:]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    if setting == "single":
        env["VLLM_LORA_ENABLE_DUAL_STREAM"] = "0"
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        while proc.poll() is None and time.time() - t0 < args.wait:
            time.sleep(1)
    status = {"setting": setting, "rc": proc.poll(), "seconds": round(time.time() - t0, 1)}
    if proc.poll() is None:
        status["stalled"] = True
        dump_stacks(
            [proc.pid, *descendants(proc.pid)], log_dir / f"lora_overhead_{setting}.stacks.txt", proc.pid
        )
    text = log.read_text()
    results = [json.loads(line[7:]) for line in text.splitlines() if line.startswith("RESULT ")]
    started = [line.split()[1] for line in text.splitlines() if line.startswith("STARTED ")]
    status["start_s"] = float(started[0]) if started else None
    engine = [json.loads(line[7:]) for line in text.splitlines() if line.startswith("ENGINE ")]
    status["engine"] = engine[0] if engine else None
    if not results:
        status["last_lines"] = [line[:300] for line in text.splitlines()[-8:]]
    return results, status


def table(results: list[dict]) -> list[dict]:
    """Each row with its ratio against the base model served without LoRA at the same concurrency (or,
    without a `nolora` run, against the same engine's base requests)."""
    rows = []
    for r in results:
        ref = next(
            (b for b in results if b["setting"] == "nolora" and b["concurrency"] == r["concurrency"]), None
        )
        same = (r["setting"], "base", r["concurrency"])
        ref = ref or next(b for b in results if (b["setting"], b["mode"], b["concurrency"]) == same)
        rows.append({**r, "vs_base": round(r["tok_s"] / ref["tok_s"], 3)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "model", help="model folder (config.json and tokenizer; weights unless --load-format dummy)"
    )
    p.add_argument("--settings", default="nolora,wide,sized")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    p.add_argument("--concurrency", default="1,64")
    p.add_argument("--min-requests", type=int, default=4, help="requests per level at least")
    p.add_argument("--input-len", type=int, default=128, help="prompt length in words")
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    p.add_argument("--wait", type=float, default=420, help="seconds a setting may take in all")
    p.add_argument("--log-dir", default=os.environ.get("OUT", tempfile.gettempdir()))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--adapter", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    targets = args.targets.split(",")
    if unknown := set(targets) - set(MODULES):
        p.error(f"--targets: unknown module(s) {sorted(unknown)}; choose from {', '.join(MODULES)}")
    if args.child:
        child(args, args.child, args.adapter)
        return
    settings = args.settings.split(",")
    if unknown := set(settings) - set(SETTINGS):
        p.error(f"--settings: unknown setting(s) {sorted(unknown)}; choose from {', '.join(SETTINGS)}")
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    adapter = str(log_dir / "lora_overhead_adapter")
    make_adapter(args.model, adapter, args.rank, targets)
    results, statuses = [], []
    for s in settings:
        got, status = run_setting(args, s, adapter, log_dir)
        results += got
        statuses.append(status)
        print(
            f"{s}: engine started in {status['start_s']} s, {len(got)} results, rc={status['rc']}", flush=True
        )
        if not got:
            print("\n".join(status.get("last_lines", [])), flush=True)
    rows = table(results) if results else []
    print(f"\n{'setting':8} {'mode':8} {'conc':>5} {'tok/s':>10} {'vs base':>8}")
    for r in rows:
        print(
            f"{r['setting']:8} {r['mode']:8} {r['concurrency']:>5} {r['tok_s']:>10,.1f} {r['vs_base']:>8.3f}"
        )
    print(json.dumps({"benchmark": "lora_overhead", "model": args.model, "rank": args.rank,
                      "targets": targets, "output_len": args.output_len, "input_len": args.input_len,
                      "rows": rows, "engines": statuses}))  # fmt: skip


if __name__ == "__main__":
    main()
