"""`tuneforge bench`: load a serving endpoint and report latency percentiles, throughput and resource use.

    tuneforge bench --url http://127.0.0.1:8000 --api openai --concurrency 1,4,16 --requests 200 \
        --input-len 128 --output-len 256 --out runs/bench
    tuneforge bench --url http://127.0.0.1:8000 --api generate --rate 2,4 --duration 60 \
        --prompts data/demo/test.jsonl

Writes report.md, report.html and results.json to --out, prints a table, then one JSON line. Resource use
is sampled on this machine (give --server-pid to follow a local server's processes); a remote server's GPU
is not seen from here, and the report says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError

log = logging.getLogger(__name__)


def _numbers(text: str, kind, name: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{name}: every value must be > 0, got {text!r}")
    return values


def _client_procs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--client-procs: expected a whole number >= 1, got {text!r}")
    return n


def _first_model(url: str, api_key: str | None) -> str:
    """The first model a server lists at /v1/models (what vLLM serves when no name is given)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    resp = httpx.get(url.rstrip("/") + "/v1/models", headers=headers, timeout=10.0)
    resp.raise_for_status()
    return resp.json()["data"][0]["id"]


LOCAL_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "::1", "[::1]")


def server_device(args: argparse.Namespace, runs: list[dict[str, Any]]) -> str:
    """What served the benchmark: --server-device, or for a server on this machine its GPU (or 'cpu');
    'unknown' for a remote server, whose hardware cannot be seen from here."""
    from urllib.parse import urlparse

    if args.server_device:
        return args.server_device
    if args.url and urlparse(args.url).hostname not in LOCAL_HOSTS:
        return "unknown"
    gpu = next((r["resources"] for r in runs if (r.get("resources") or {}).get("gpu_available")), None)
    return f"gpu:{gpu['gpu_name']}" if gpu else "cpu"


def build_target(args: argparse.Namespace):
    from tuneforge.bench.targets import EngineTarget, GenerateTarget, OpenAITarget

    if args.in_process:
        from tuneforge.config import InferenceConfig, SamplingParams
        from tuneforge.engines.select import start_engine

        cfg = InferenceConfig(engine=args.engine, max_model_len=args.max_model_len)
        engine = start_engine(args.in_process, cfg, enable_lora=False)
        sampling = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=args.ignore_eos)
        return EngineTarget(engine, sampling)
    if args.api == "openai":
        model = args.model or _first_model(args.url, args.api_key)
        return OpenAITarget(args.url, model, args.output_len, args.api_key, ignore_eos=args.ignore_eos)
    return GenerateTarget(args.url, args.model, args.output_len, args.api_key)


def build_prompts(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    from tuneforge.bench.client import dataset_prompts, synthetic_prompts

    if args.prompts:
        prompts = dataset_prompts(args.prompts)
        return prompts, {"prompts": f"{args.prompts} ({len(prompts)} prompts)", "max_tokens": args.output_len}
    n = max(args.requests or 0, 64)
    prompts = synthetic_prompts(n, args.input_len, args.seed)
    return prompts, {"prompts": f"synthetic, {args.input_len} words each", "max_tokens": args.output_len}


BUSY = 0.9  # a process this busy (share of one core) may be what limits the figures, not the engine


def busy_levels(runs: list[dict[str, Any]], share_of) -> list[tuple[str, float]]:
    """(level, share) for each run where `share_of(run)` (a share of one core, or None) reached BUSY."""
    out = []
    for run in runs:
        share = share_of(run) or 0.0
        if share >= BUSY:
            load = run["load"]
            rate = load["mode"] == "rate"
            out.append((f"rate {load['rate']}/s" if rate else f"concurrency {load['concurrency']}", share))
    return out


def client_limit_notes(runs: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """A note for each level where the busiest HTTP client process was near a full core."""
    if args.in_process:  # the engine shares that process: its CPU is not the client's
        return []
    return [
        f"at {level} the busiest client process used {share:.0%} of a CPU core, so the load generator"
        f" may be what limits these figures; run again with --client-procs {2 * args.client_procs}"
        for level, share in busy_levels(runs, lambda run: (run.get("client") or {}).get("cpu_share"))
    ]


def server_limit_notes(runs: list[dict[str, Any]]) -> list[str]:
    """A note for each level where the server's own process (--server-pid, without its children) was near a
    full core. On vLLM that process is the API server (the engine runs in children), and one busy event loop
    then limits the load (benchmarks/RESULTS.md, serve_overhead at 64 and 256 streams); with the transformers
    engine it also generates, and the note says which case it means."""
    share_of = lambda run: (run.get("resources") or {}).get("server_process_cpu_share")  # noqa: E731
    return [
        f"at {level} the server's main process (--server-pid) used {share:.0%} of a CPU core: in a"
        " vLLM server (tuneforge serve on vLLM, or vllm serve) that is its API process, whose one"
        " event loop then limits these figures rather than the GPU; tuneforge serve --api-processes N"
        " (vllm serve --api-server-count N) spreads it over N processes, and inference.stream_interval=N"
        " sends N tokens per chunk"
        for level, share in busy_levels(runs, share_of)
    ]


def run_levels(target, prompts: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    from tuneforge.bench.client import LoadSpec, run_benchmark
    from tuneforge.bench.resources import ResourceMonitor

    if args.rate:
        specs = [
            LoadSpec(args.max_concurrency, r, args.requests, args.duration, args.seed) for r in args.rate
        ]
    else:
        specs = [LoadSpec(c, None, args.requests, args.duration, args.seed) for c in args.concurrency]
    runs = []
    for spec in specs:
        with ResourceMonitor(args.sample_interval, args.server_pid) as monitor:
            run = run_benchmark(target, prompts, spec, not args.quiet, args.client_procs)
        run["resources"] = monitor.summary()
        runs.append(run)
    return runs


def log_to_mlflow(results: dict[str, Any], out: Path, run_id: str, tracking_uri: str | None) -> None:
    """Add every run's throughputs and latency percentiles, and the report, to an existing MLflow run."""
    from tuneforge.tracking import ExperimentTracker

    tracker = ExperimentTracker.for_run(run_id, tracking_uri)
    metrics: dict[str, float] = {}
    for run in results["runs"]:
        load = run["load"]
        key = f"bench/rate_{load['rate']}" if load["mode"] == "rate" else f"bench/c{load['concurrency']}"
        s = run["summary"]
        metrics[f"{key}/request_throughput_rps"] = s["request_throughput_rps"]
        metrics[f"{key}/output_throughput_tok_s"] = s["output_throughput_tok_s"]
        metrics[f"{key}/failed"] = s["requests"]["failed"]
        for name, d in s["latency_ms"].items():
            for p in ("p50", "p95", "p99"):
                if d[p] is not None:
                    metrics[f"{key}/{name}_{p}_ms"] = d[p]
        gpu = (run.get("resources") or {}).get("gpu_utilization_percent") or {}
        if gpu.get("mean") is not None:
            metrics[f"{key}/gpu_utilization_percent"] = gpu["mean"]
    tracker.log_metrics(metrics, step=0)
    for name in ("report.md", "report.html", "results.json"):
        tracker.log_artifact(out / name, "bench")


def cmd_bench(args: argparse.Namespace) -> int:
    from tuneforge.bench.report import generate_benchmark_report, summary_line, table_rows
    from tuneforge.tables import print_table

    if args.requests is None and args.duration is None:
        args.requests = 100
    if args.in_process and args.client_procs > 1:
        print(
            "error: --client-procs needs --url: an in-process engine serves one event loop", file=sys.stderr
        )
        return 2
    try:
        target = build_target(args)
    except TuneforgeError:
        raise
    except Exception as e:  # httpx errors while asking /v1/models
        if args.in_process:
            raise
        print(f"error: cannot ask {args.url}/v1/models for a model name ({e}); pass --model", file=sys.stderr)
        return 2
    prompts, workload = build_prompts(args)
    try:
        runs = run_levels(target, prompts, args)
    finally:
        engine = getattr(target, "engine", None)
        if engine is not None and hasattr(engine, "close"):
            engine.close()
    notes = client_limit_notes(runs, args) + server_limit_notes(runs)
    for note in notes:
        log.warning(note)
    if not any((r.get("resources") or {}).get("gpu_available") for r in runs):
        note = next((r["resources"].get("note") for r in runs if r.get("resources")), None) or "no GPU"
        notes.append(
            f"resource use was sampled on the client machine, which has {note.removeprefix('no GPU: ')}"
        )
    results = {
        "title": f"Serving benchmark of {target.describe().get('model') or args.url}",
        "target": target.describe(),
        "workload": workload,
        "environment": {"client": platform.node(), "python": platform.python_version(), "time": time.time()},
        "server_device": server_device(args, runs),
        "notes": notes,
        "runs": runs,
    }
    out = Path(args.out)
    generate_benchmark_report(results, out)
    if results["runs"]:
        print_table(table_rows(results))
    else:
        print("(no runs)")
    print(f"report     {out / 'report.html'} (also report.md, results.json)")
    if args.mlflow_run_id:
        log_to_mlflow(results, out, args.mlflow_run_id, args.tracking_uri)
        print(f"mlflow     logged to run {args.mlflow_run_id}")
    print(json.dumps({"report": str(out / "report.html"), **summary_line(results)}, default=str))
    completed = sum(r["summary"]["requests"]["completed"] for r in runs)
    return 0 if completed else 1


def register(subparsers) -> argparse.ArgumentParser:
    """Add `bench` to the `tuneforge` sub-command parsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "bench",
        formatter_class=fmt,
        help="load a serving endpoint: latency percentiles, throughput, resource use",
        description="Stream requests to an OpenAI-compatible server (/v1/completions) or tuneforge's\n"
        "/generate, at fixed concurrency levels (a sweep) or Poisson request rates, and report TTFT,\n"
        "TPOT, ITL and end-to-end latency at p50/p95/p99, request and output-token throughput, errors\n"
        "by kind (a stream ending in an error event is a failure), and CPU/GPU use.",
        epilog="examples:\n"
        "  tuneforge bench --url http://127.0.0.1:8000 --concurrency 1,4,16 --requests 200\n"
        "  tuneforge bench --url http://127.0.0.1:8000 --api generate --rate 2 --duration 60\n"
        "  tuneforge bench --in-process smollm2-135m-instruct --concurrency 1,8 --requests 32",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="server base URL, e.g. http://127.0.0.1:8000")
    where.add_argument(
        "--in-process", metavar="MODEL", help="start an engine for MODEL in this process (no HTTP) instead"
    )
    p.add_argument(
        "--engine", choices=("auto", "vllm", "transformers"), default="auto", help="with --in-process"
    )
    p.add_argument("--max-model-len", type=int, default=2048, help="with --in-process (default 2048)")
    p.add_argument(
        "--api", choices=("openai", "generate"), default="openai", help="endpoint (default: openai)"
    )
    p.add_argument("--model", help="model or adapter name (openai default: the first at /v1/models)")
    p.add_argument(
        "--concurrency",
        type=lambda t: _numbers(t, int, "--concurrency"),
        default=[1],
        metavar="N[,N...]",
        help="requests in flight; a list sweeps (default: 1)",
    )
    p.add_argument(
        "--rate",
        type=lambda t: _numbers(t, float, "--rate"),
        metavar="R[,R...]",
        help="Poisson arrivals at R requests/s instead of fixed concurrency; a list sweeps",
    )
    p.add_argument("--max-concurrency", type=int, help="with --rate: cap on requests in flight")
    p.add_argument("--requests", type=int, help="requests per level (default 100 unless --duration)")
    p.add_argument("--duration", type=float, help="seconds per level (requests in flight then finish)")
    p.add_argument("--prompts", metavar="FILE", help="take prompts from a dataset file (any training format)")
    p.add_argument(
        "--input-len", type=int, default=128, help="synthetic prompt length in words (default 128)"
    )
    p.add_argument("--output-len", type=int, default=128, help="max_tokens per request (default 128)")
    p.add_argument(
        "--ignore-eos", action="store_true", help="openai api: ask for exactly --output-len tokens"
    )
    p.add_argument("--api-key", help="bearer token for the server")
    p.add_argument("--seed", type=int, default=0, help="seed for synthetic prompts and arrival times")
    p.add_argument(
        "--server-pid",
        type=int,
        help="also sample this local process's (and children's) memory, and its own CPU share (a busy API"
        " process limits the load; with tuneforge serve --api-processes N, /health names an API process's"
        " pid)",
    )
    p.add_argument(
        "--server-device", help="what serves the endpoint: cpu or gpu:<name> (default: detected when local)"
    )
    p.add_argument("--sample-interval", type=float, default=1.0, help="seconds between resource samples")
    p.add_argument("--out", default="runs/bench", help="folder for report.md, report.html, results.json")
    p.add_argument("--mlflow-run-id", help="log the results to this existing MLflow run")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite)")
    p.add_argument(
        "--client-procs",
        type=_client_procs,
        default=1,
        metavar="N",
        help="send the load from N client processes (HTTP only): one streaming client tops out near a core",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)
    return p
