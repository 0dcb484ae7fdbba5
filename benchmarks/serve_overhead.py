"""What our HTTP layer costs: the same prompts through the vLLM engine called directly, through
`tuneforge serve` (FastAPI over the same engine), and through `vllm serve` (vLLM's own OpenAI server).

    .venv/bin/python benchmarks/serve_overhead.py                       # CPU: embedded default, fp32
    python benchmarks/serve_overhead.py --model M --load-format dummy --dtype bfloat16 --requests 256

Every path gets the same synthetic prompts, `ignore_eos` (so every request makes exactly --output-len
tokens), greedy sampling, prefix caching on, at fixed concurrency. Both servers are timed by the same
streaming client (tuneforge.bench.client, /v1/completions). Target: ours >= 95% of direct throughput.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import httpx

from tuneforge.bench.client import LoadSpec, run_load, run_load_async, synthetic_prompts
from tuneforge.bench.stats import summarize
from tuneforge.bench.targets import EngineTarget, OpenAITarget
from tuneforge.config import InferenceConfig, SamplingParams


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code == 200:
                return
            if r.status_code == 503 and "failed" in r.text:  # tuneforge's /ready: the model did not load
                raise RuntimeError(f"server failed to load its model: {r.text[:500]}")
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise TimeoutError(url)


def direct(args, cfg: InferenceConfig, prompts: list[str], spec: LoadSpec) -> dict:
    from tuneforge.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine.start(args.model, cfg, enable_lora=False)
    sampling = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    target = EngineTarget(engine, sampling)
    try:
        engine.run_sync(
            run_load_async(target, prompts[: args.warmup], LoadSpec(args.concurrency, None, args.warmup))
        )
        records, wall = engine.run_sync(run_load_async(target, prompts, spec))
    finally:
        engine.close()
    return summarize(records, wall)


def over_http(
    args, cmd: list[str], ready_path: str, model: str, prompts: list[str], spec: LoadSpec, port: int
) -> dict:
    log = open(f"{args.log_dir}/{model.replace('/', '_')}-{port}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + ready_path, proc)
        target = OpenAITarget(base, model, max_tokens=args.output_len, ignore_eos=True)
        run_load(
            target, prompts[: args.warmup], LoadSpec(args.concurrency, None, args.warmup), show_progress=False
        )
        records, wall = run_load(target, prompts, spec, show_progress=False)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return summarize(records, wall)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--load-format", default="auto")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--warmup", type=int, default=16)
    p.add_argument("--input-len", type=int, default=128, help="words per synthetic prompt")
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--skip-vllm-serve", action="store_true")
    p.add_argument("--log-dir", default="/tmp")
    args = p.parse_args()

    from tuneforge.engines.vllm_engine import on_cpu, serving_dtype
    from tuneforge.models.resolve import resolve_model

    path = resolve_model(args.model).path
    cfg = InferenceConfig(dtype=args.dtype, max_model_len=args.max_model_len, load_format=args.load_format)
    prompts = synthetic_prompts(args.requests + args.warmup, args.input_len, seed=0)
    spec = LoadSpec(concurrency=args.concurrency, rate=None, num_requests=args.requests)
    results = {"direct engine": direct(args, cfg, prompts[args.warmup :], spec)}

    port = free_port()
    ours = [sys.executable, "-m", "tuneforge.cli", "serve", path, f"inference.dtype={args.dtype}",
            f"inference.max_model_len={args.max_model_len}", f"inference.load_format={args.load_format}",
            "--engine", "vllm", "--served-name", "m", "--port", str(port)]  # fmt: skip
    results["tuneforge serve"] = over_http(args, ours, "/ready", "m", prompts[args.warmup :], spec, port)

    if not args.skip_vllm_serve:
        port = free_port()
        dtype = serving_dtype(args.dtype, on_cpu())
        theirs = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path,
                  "--served-model-name", "m", "--dtype", dtype, "--max-model-len", str(args.max_model_len),
                  "--load-format", args.load_format, "--enable-prefix-caching", "--port", str(port),
                  "--seed", "0"]  # fmt: skip
        if on_cpu():
            theirs += ["--kv-cache-memory-bytes", str(2**30)]
        results["vllm serve"] = over_http(args, theirs, "/health", "m", prompts[args.warmup :], spec, port)

    print(f"\n{'path':<18}{'req/s':>9}{'out tok/s':>11}{'TTFT p50 ms':>13}{'TPOT p50 ms':>13}{'failed':>8}")
    for name, s in results.items():
        print(
            f"{name:<18}{s['request_throughput_rps']:>9.3f}{s['output_throughput_tok_s']:>11.1f}"
            f"{s['latency_ms']['ttft']['p50']:>13.1f}{s['latency_ms']['tpot']['p50']:>13.2f}{s['requests']['failed']:>8}"
        )
    base = results["direct engine"]["output_throughput_tok_s"]
    ratios = {k: v["output_throughput_tok_s"] / base for k, v in results.items()}
    print("throughput vs direct: " + ", ".join(f"{k} {r:.3f}" for k, r in ratios.items()))
    summary = {
        "benchmark": "serve_overhead",
        "model": args.model,
        "load_format": args.load_format,
        "dtype": serving_dtype(args.dtype, on_cpu()),
        "device": "cpu" if on_cpu() else "cuda",
        "concurrency": args.concurrency,
        "requests": args.requests,
        "input_words": args.input_len,
        "output_tokens": args.output_len,
        "throughput_vs_direct": ratios,
        "results": {
            k: {
                "request_throughput_rps": v["request_throughput_rps"],
                "output_throughput_tok_s": v["output_throughput_tok_s"],
                "ttft_p50_ms": v["latency_ms"]["ttft"]["p50"],
                "tpot_p50_ms": v["latency_ms"]["tpot"]["p50"],
                "failed": v["requests"]["failed"],
            }
            for k, v in results.items()
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":  # vLLM starts worker processes
    main()
