"""Single-stream latency of tuneforge's vLLM engine, one serving option per variant, side by side.

Each variant starts `VLLMEngine` (as `tuneforge serve` runs it) in its own child process with some
inference.* settings, then answers one request at a time (batch 1):

- synthetic (default): a prompt of --prompt-len tokens and exactly --output-len new tokens (ignore_eos),
  --repeats times: end-to-end seconds per answer and milliseconds per output token (and, after the engine
  starts, tuneforge serve's warm-up in seconds, then the first request's time to first token: what kernels
  compiled on first use cost, and whether the warm-up left any of it to a first client). With
  random weights (--load-format dummy) this is the 7B latency target's setup; speculative decoding cannot be
  judged here.
- --recipe (and --adapter): the recipe's test cases answered one by one with its sampling, scored with its
  metrics, so each option's accuracy cost and speculative decoding's acceptance rate show on real text.

Variants join options with '+': default, fp8 (FP8 weights, online quantization), fp8kv (FP8 KV cache),
ngram (n-gram speculative decoding, --spec-tokens per step), latency (what `--profile latency` picks),
gptq4 (the model folder as a 4-bit GPTQ checkpoint, group 128: random weights only, --load-format dummy),
marlin (vLLM's Marlin weight-only kernels for fp8 and gptq4 instead of its W8A8 / Machete choice),
v1runner (vLLM's V1 model runner instead of the V2 one it picks for these models: a step's CPU cost);
for a batch-1 step's host work: seqs1 (max_num_seqs 1), mp (the model runner in its own process), spin
(its queue spins), tritonattn or flashattn (vLLM's Triton or FlashAttention kernels), fa2 (FlashAttention 2,
not in vLLM 0.26's CUDA wheel), nostats, noprefix, e.g.

    python benchmarks/latency_profile.py /root/shapes/mistral-7b --load-format dummy --dtype bfloat16 \\
        --variants default,fp8,fp8+fp8kv,latency --prompt-len 128 --output-len 512
    python benchmarks/latency_profile.py smollm2-135m-instruct --recipe configs/demo-cpu.yaml \\
        --adapter runs/demo-cpu/adapter --dtype bfloat16 --variants default,ngram,fp8,fp8+ngram

Prints a table (ratios against the first variant), then a JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OPTIONS = {
    "default": {},
    "fp8": {"quantization": "fp8"},
    "fp8kv": {"kv_cache_dtype": "fp8"},
    "ngram": {"speculative": "ngram"},
    "latency": {"profile": "latency"},
    "gptq4": {},
    "marlin": {},
    "v1runner": {},
    "seqs1": {"max_num_seqs": 1},
    "mp": {},
    "spin": {},
    "tritonattn": {"attention_backend": "TRITON_ATTN"},  # --profile latency's pick for the 7B class on a GPU
    "flashattn": {"attention_backend": "FLASH_ATTN"},  # vLLM's own choice on Hopper (FlashAttention 3)
    "fa2": {},
    "nostats": {},
    "noprefix": {},
}
# Options that are vLLM engine arguments tuneforge's recipe does not carry: set on the engine's plan
ENGINE_ARGS = {
    "mp": {"distributed_executor_backend": "mp"},  # the model runner in its own process, off the engine loop
    "fa2": {"attention_config": {"flash_attn_version": 2}},  # FA3's per-step scheduler metadata skipped
    "nostats": {"disable_log_stats": True},
    "noprefix": {"enable_prefix_caching": False},
}
# Options that are not inference.* settings: environment for the variant's process, or a model folder change
ENVIRONMENT = {
    "marlin": {
        "VLLM_TEST_FORCE_FP8_MARLIN": "1",
        "VLLM_DISABLED_KERNELS": "MacheteLinearKernel,CutlassW4A8LinearKernel",
    },
    "v1runner": {"VLLM_USE_V2_MODEL_RUNNER": "0"},
    "spin": {"VLLM_USE_SPINLOOP_EXT": "1"},  # with mp: the runner's shared-memory queue spins, not sleeps
}
# vLLM finds a GPTQ checkpoint's quantized layers from its safetensors metadata unless the config lists them;
# dummy weights have no files, so the list is written out (without it every layer stays bf16)
GPTQ4 = {
    "quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True,
    "modules_in_block_to_quantize": [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"],
    ],
}  # fmt: skip


def _merged(table: dict[str, dict], variant: str) -> dict:
    """What the variant's options ('+'-joined) list in `table`, later options winning."""
    out: dict = {}
    for part in variant.split("+"):
        out.update(table.get(part, {}))
    return out


def variant_engine_args(variant: str) -> dict:
    return _merged(ENGINE_ARGS, variant)


def with_engine_args(plan, variant: str):
    """An engine plan (VLLMEngine.prepare) with the variant's vLLM engine arguments set on it."""
    if extra := variant_engine_args(variant):
        return dataclasses.replace(plan, engine_args=dataclasses.replace(plan.engine_args, **extra))
    return plan


def variant_environment(variant: str) -> dict[str, str]:
    return _merged(ENVIRONMENT, variant)


def gptq4_folder(model: str, into: Path) -> Path:
    """A copy of a model folder (config and tokenizer) whose config says 4-bit GPTQ, for dummy weights."""
    import shutil

    into.mkdir(parents=True, exist_ok=True)
    for f in Path(model).iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy(f, into / f.name)
    config = json.loads((into / "config.json").read_text())
    config["quantization_config"] = GPTQ4
    (into / "config.json").write_text(json.dumps(config, indent=2))
    return into


def variant_settings(variant: str, spec_tokens: int) -> dict:
    """inference.* settings of a variant such as 'fp8+ngram'."""
    settings: dict = {}
    for part in variant.split("+"):
        if part not in OPTIONS:
            raise ValueError(
                f"variant {variant!r}: unknown option {part!r}; choose from {', '.join(OPTIONS)}"
            )
        settings.update(OPTIONS[part])
    if settings.get("speculative"):
        settings["speculative_tokens"] = spec_tokens
    return settings


def inference_config(variant: str, args):
    from tuneforge.config import InferenceConfig

    base = dict(dtype=args.dtype, load_format=args.load_format, max_model_len=args.max_model_len,
                gpu_memory_utilization=args.gpu_memory_utilization)  # fmt: skip
    if args.kv_cache_gb:
        base["kv_cache_gb"] = args.kv_cache_gb
    return InferenceConfig(**base, **variant_settings(variant, args.spec_tokens))


async def one_answer(engine, prompt: str, sampling, adapter: str | None) -> dict:
    """One request on its own: seconds to the first token and in all, tokens and text."""
    t0 = time.perf_counter()
    first, text, last = None, [], None
    async for chunk in engine.stream(prompt, sampling, adapter):
        if first is None and chunk.text:
            first = time.perf_counter() - t0
        text.append(chunk.text)
        last = chunk
    total = time.perf_counter() - t0
    return {"ttft": first or total, "seconds": total, "tokens": last.completion_tokens, "text": "".join(text)}


def summary(answers: list[dict]) -> dict:
    """Medians per answer; ms per output token after the first (decoding speed)."""
    decode = [(a["seconds"] - a["ttft"]) / max(a["tokens"] - 1, 1) * 1000 for a in answers]
    return {
        "answers": len(answers),
        "tokens": sum(a["tokens"] for a in answers),
        "seconds_p50": round(statistics.median(a["seconds"] for a in answers), 4),
        "ttft_ms_p50": round(statistics.median(a["ttft"] for a in answers) * 1000, 2),
        "ms_per_token_p50": round(statistics.median(decode), 3),
        "tok_s": round(sum(a["tokens"] for a in answers) / sum(a["seconds"] for a in answers), 1),
    }


def acceptance(before: dict, after: dict) -> dict:
    """Speculative decoding between two counter snapshots: share of drafted tokens accepted, and tokens
    accepted per verification step."""
    d = {k: after.get(k, 0) - before.get(k, 0) for k in ("drafts", "draft_tokens", "accepted_tokens")}
    if not d["draft_tokens"]:
        return {}
    return {"acceptance_rate": round(d["accepted_tokens"] / d["draft_tokens"], 3),
            "accepted_per_draft": round(d["accepted_tokens"] / max(d["drafts"], 1), 2)}  # fmt: skip


def child(args, variant: str) -> None:
    """In the child process: start the engine, answer, print RESULT lines."""
    from tuneforge.config import SamplingParams
    from tuneforge.engines.vllm_engine import VLLMEngine, spec_decode_counts

    t0 = time.time()
    adapters = [args.adapter] if args.adapter else []
    model = args.model
    if "gptq4" in variant.split("+"):
        model = str(gptq4_folder(args.model, Path(tempfile.mkdtemp(prefix="gptq4-"))))
    plan = VLLMEngine.prepare(model, inference_config(variant, args), enable_lora=bool(adapters),
                              adapters=adapters)  # fmt: skip
    engine = VLLMEngine.launch(with_engine_args(plan, variant))
    print(f"STARTED {time.time() - t0:.1f}", flush=True)
    print("ENGINE " + json.dumps(engine.describe(), default=str), flush=True)
    adapter = None
    if args.adapter:
        engine.run_sync(engine.load_adapter("ad", args.adapter))
        adapter = "ad"
    if args.recipe:
        from tuneforge.data.cases import load_test_cases
        from tuneforge.eval.evaluator import summarise
        from tuneforge.eval.metrics import resolve_metric, score_case
        from tuneforge.recipes import load_recipe

        recipe = load_recipe(args.recipe, [])
        cases = load_test_cases(recipe.data.test_file, engine.tokenizer, recipe.data)[: args.limit]
        sampling, prompts = recipe.sampling, [c.prompt for c in cases]
    else:
        cases = None
        sampling = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
        ids = list(range(1000, 1000 + args.prompt_len))  # distinct tokens: no accidental n-gram matches
        prompts = [engine.tokenizer.decode(ids)] * args.repeats
    # tuneforge serve's warm-up (engine.warm_up) compiles what the engine's start did not; then the first
    # request's TTFT shows whether anything is left for a user's first request to pay
    warmup_s = engine.run_sync(engine.warm_up())
    warm = SamplingParams(temperature=0.0, max_tokens=16)
    first = [engine.run_sync(one_answer(engine, prompt, warm, adapter)) for prompt in prompts[:2]]
    before = spec_decode_counts()
    answers = [engine.run_sync(one_answer(engine, p, sampling, adapter)) for p in prompts]
    result = {"variant": variant, **summary(answers), **acceptance(before, spec_decode_counts()),
              "warmup_s": round(warmup_s, 3),
              "first_request_ttft_ms": round(first[0]["ttft"] * 1000, 1)}  # fmt: skip
    if cases:
        metrics = {name: resolve_metric(name) for name in recipe.eval.metrics}
        scored = [
            {"scores": score_case(a["text"], c.reference, metrics)["scores"]}
            for a, c in zip(answers, cases, strict=True)
        ]
        result["metrics"] = {k: v["mean"] for k, v in summarise(scored, list(metrics)).items()}
        result["outputs"] = [a["text"] for a in answers]
    print("RESULT " + json.dumps(result), flush=True)
    engine.close()


def run_variant(args, variant: str, log_dir: Path) -> dict:
    log = log_dir / f"latency_{variant.replace('+', '_')}.log"
    cmd = [sys.executable, __file__, "--child", variant, *sys.argv[1:]]
    t0 = time.time()
    with open(log, "w") as f:
        try:
            env = {**os.environ, **variant_environment(variant)}
            done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=args.wait, env=env)
            rc = done.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    lines = log.read_text().splitlines()
    found = [json.loads(line[7:]) for line in lines if line.startswith("RESULT ")]
    started = [float(line.split()[1]) for line in lines if line.startswith("STARTED ")]
    engine = [json.loads(line[7:]) for line in lines if line.startswith("ENGINE ")]
    out = {"variant": variant, "rc": rc, "wall_s": round(time.time() - t0, 1),
           "start_s": started[0] if started else None, "engine": engine[0] if engine else None}  # fmt: skip
    if found:
        out.update(found[0])
    else:
        out["last_lines"] = [line[:300] for line in lines[-8:]]
    return out


def agreement(a: list[str] | None, b: list[str] | None) -> float | None:
    """Share of answers identical to the first variant's (greedy decoding)."""
    if not a or not b:
        return None
    return round(sum(x == y for x, y in zip(a, b, strict=False)) / len(a), 3)


def print_table(rows: list[dict]) -> None:
    ref = rows[0]
    print(f"{'variant':<16} {'start s':>8} {'warm-up s':>9} {'s/answer':>9} {'ms/token':>9} {'TTFT ms':>8} "
          f"{'1st TTFT':>9} {'tok/s':>8} {'vs first':>8} {'accept':>7} {'same':>5}  metrics")  # fmt: skip
    for r in rows:
        if "tok_s" not in r:
            print(f"{r['variant']:<16} failed (rc {r['rc']}): {(r.get('last_lines') or [''])[-1][:100]}")
            continue
        speed = ref.get("seconds_p50") and r["seconds_p50"] and ref["seconds_p50"] / r["seconds_p50"]
        same = agreement(ref.get("outputs"), r.get("outputs"))
        first = r.get("first_request_ttft_ms") or 0
        metrics = " ".join(f"{k}={v:.3f}" for k, v in (r.get("metrics") or {}).items() if v is not None)
        print(
            f"{r['variant']:<16} {r['start_s'] or 0:>8.1f} {r.get('warmup_s') or 0:>9.2f} "
            f"{r['seconds_p50']:>9.3f} "
            f"{r['ms_per_token_p50']:>9.2f} {r['ttft_ms_p50']:>8.1f} {first:>9.1f} {r['tok_s']:>8.1f} "
            f"{speed or 0:>7.2f}x "
            f"{r.get('acceptance_rate', '-'):>7} {same if same is not None else '-':>5}  {metrics}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="model reference or folder (weights unless --load-format dummy)")
    p.add_argument("--variants", default="default,fp8,latency")
    p.add_argument("--recipe", help="answer this recipe's test cases (its sampling and metrics)")
    p.add_argument("--adapter", help="with --recipe: answer through this adapter (a LoRA request)")
    p.add_argument("--limit", type=int, default=50, help="test cases with --recipe")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5, help="answers per variant (synthetic)")
    p.add_argument("--spec-tokens", type=int, default=4, help="tokens drafted per step (ngram)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--kv-cache-gb", type=float, help="KV cache size (default: vLLM's sizing; on CPU 1 GiB)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    p.add_argument("--wait", type=float, default=420, help="seconds a variant may take in all")
    p.add_argument("--log-dir", default=os.environ.get("OUT", tempfile.gettempdir()))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    variants = args.variants.split(",")
    for v in variants:
        try:
            variant_settings(v, args.spec_tokens)
        except ValueError as e:
            p.error(f"--variants: {e}")
        if "gptq4" in v.split("+") and args.load_format != "dummy":
            p.error(f"--variants: {v!r}: gptq4 relabels the weights as 4-bit; it needs --load-format dummy")
    if args.child:
        child(args, args.child)
        return
    Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    rows = []
    for v in variants:  # each row also goes to a file as it lands, so a cut-off run keeps what it measured
        rows.append(run_variant(args, v, Path(args.log_dir)))
        with open(Path(args.log_dir) / "latency_rows.jsonl", "a") as f:
            f.write(json.dumps({k: x for k, x in rows[-1].items() if k != "outputs"}) + "\n")
    print_table(rows)
    ref = rows[0]
    for r in rows:
        if r.get("seconds_p50") and ref.get("seconds_p50"):
            r["speedup"] = round(ref["seconds_p50"] / r["seconds_p50"], 3)
        r["same_as_first"] = agreement(ref.get("outputs"), r.get("outputs"))
    slim = [{k: v for k, v in r.items() if k != "outputs"} for r in rows]
    print(
        json.dumps(
            {
                "benchmark": "latency_profile",
                "model": args.model,
                "recipe": args.recipe,
                "adapter": bool(args.adapter),
                "prompt_len": args.prompt_len,
                "output_len": args.output_len,
                "variants": slim,
            }
        )
    )


if __name__ == "__main__":
    main()
