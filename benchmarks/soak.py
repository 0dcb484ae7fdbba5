"""A long soak of `tuneforge serve`: steady load near capacity on loopback, and what must hold after it.

Starts `tuneforge serve` in its own process, keeps --concurrency streaming requests in flight for --duration
seconds (tuneforge's bench client, /v1/completions), samples the server's memory (its process and the
engine's) and its queue gauge every --sample seconds, then checks (issue 14, item 2):

- no request lost: every request the client sent completed (HTTP 200, a stream that ended properly);
- none duplicated: the server counted exactly as many completion requests as the client sent;
- memory flat: after --warmup seconds, the largest sample within 10% of the smallest;
- latency steady: p99 end-to-end latency of the last --window seconds within 20% of the first window's
  (the first window after warm-up);
- the queue gauge back to 0 at the end.

    .venv/bin/python benchmarks/soak.py --duration 600 --concurrency 4          # the 10-minute soak, vLLM
    .venv/bin/python benchmarks/soak.py --engine transformers --duration 20 --warmup 5 --window 5   # short

Prints a table of the checks, then a JSON line; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from serve_overhead import free_port, wait_ready  # noqa: E402
from serve_overhead import stop as stop_server  # noqa: E402

from tuneforge.bench.client import LoadSpec, run_load_async, synthetic_prompts  # noqa: E402
from tuneforge.bench.targets import OpenAITarget  # noqa: E402

MEMORY_TOLERANCE, LATENCY_TOLERANCE = 0.10, 0.20


def metric(text: str, name: str, labels: str = "") -> float:
    """Sum of a Prometheus metric's samples whose labels contain `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.eE+-]+)$", line)
        if m and labels in (m.group(1) or ""):
            total += float(m.group(2))
    return total


def tree_rss(pid: int) -> int:
    """Resident memory of a process and its children (the engine runs in child processes)."""
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return total


def sample(base: str, pid: int, every: float, stop: threading.Event, t0: float, out: list[dict]) -> None:
    while not stop.wait(every):
        try:
            queue = metric(httpx.get(f"{base}/metrics", timeout=5).text, "tuneforge_queue_depth")
        except httpx.HTTPError:
            queue = None
        out.append(
            {"t": round(time.monotonic() - t0, 1), "rss_mb": round(tree_rss(pid) / 2**20, 1), "queue": queue}
        )


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(0.99 * len(values)))]


def quantile(sorted_values: list[float], q: float) -> float | None:
    return (
        round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 3)
        if sorted_values
        else None
    )


def windows(records, args) -> list[dict]:
    """Latency of each --window after warm-up (requests by start time): count, p50, p95, p99 seconds, so a
    drift shows as a trend and one slow request as a blip."""
    ok, rows, start = [r for r in records if r.ok], [], args.warmup
    while start + args.window <= args.duration + 1e-9:
        e2e = sorted(r.e2e_s for r in ok if start <= r.start_s < start + args.window)
        rows.append(
            {"from_s": start, "n": len(e2e), **{f"p{q}_s": quantile(e2e, q / 100) for q in (50, 95, 99)}}
        )
        start += args.window
    return rows


def checks(records, samples: list[dict], sent: int, served: float, end_queue: float | None, args) -> dict:
    """Each guarantee with the figures behind it and whether it held."""
    ok = [r for r in records if r.ok]
    after = [s["rss_mb"] for s in samples if s["t"] >= args.warmup]
    growth = (max(after) / min(after) - 1) if after else None
    start = args.warmup
    first = [r.e2e_s for r in ok if start <= r.start_s < start + args.window]
    last = [r.e2e_s for r in ok if r.start_s >= args.duration - args.window]
    p_first, p_last = p99(first), p99(last)
    drift = (p_last / p_first - 1) if p_first and p_last else None
    return {
        "none_lost": {"ok": len(ok) == sent, "sent": sent, "completed": len(ok), "failed": sent - len(ok)},
        "none_duplicated": {"ok": served == sent, "sent": sent, "server_counted": served},
        "memory_flat": {"ok": growth is not None and growth <= MEMORY_TOLERANCE, "growth": growth,
                        "min_mb": min(after, default=None), "max_mb": max(after, default=None)},
        "latency_steady": {"ok": drift is not None and drift <= LATENCY_TOLERANCE, "p99_first_s": p_first,
                           "p99_last_s": p_last, "change": drift, "first_n": len(first), "last_n": len(last)},
        "queue_empty_at_end": {"ok": end_queue == 0, "queue": end_queue},
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--engine", default="auto", choices=["auto", "vllm", "transformers"])
    p.add_argument("--duration", type=float, default=600, help="seconds of load")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (near capacity here: 4)")
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--input-len", type=int, default=64, help="words per synthetic prompt")
    p.add_argument("--warmup", type=float, default=60, help="seconds before memory and latency count")
    p.add_argument("--window", type=float, default=60, help="seconds compared at the start and the end")
    p.add_argument("--sample", type=float, default=5, help="seconds between memory and queue samples")
    p.add_argument("--log-dir", default=os.environ.get("OUT", "/tmp"))
    args = p.parse_args()
    if args.warmup + 2 * args.window > args.duration:
        p.error("--duration must hold --warmup and two --window periods")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(Path(args.log_dir) / f"soak-serve-{port}.log", "w")  # noqa: SIM115
    cmd = [sys.executable, "-m", "tuneforge.cli", "serve", args.model, "--engine", args.engine,
           "--port", str(port), "--served-name", "m"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_ready(f"{base}/ready", server)
        prompts = synthetic_prompts(4096, args.input_len, seed=0)
        target = OpenAITarget(base, "m", max_tokens=args.output_len, ignore_eos=args.engine != "transformers")
        spec = LoadSpec(concurrency=args.concurrency, num_requests=None, duration_s=args.duration)
        samples: list[dict] = []
        stop = threading.Event()
        t0 = time.monotonic()
        sampler = threading.Thread(target=sample, args=(base, server.pid, args.sample, stop, t0, samples))
        sampler.start()
        records, wall = asyncio.run(run_load_async(target, prompts, spec))
        stop.set()
        sampler.join()
        time.sleep(1)
        text = httpx.get(f"{base}/metrics", timeout=10).text
        served = metric(text, "tuneforge_requests_total", 'route="/v1/completions"')
        result = checks(records, samples, len(records), served, metric(text, "tuneforge_queue_depth"), args)
    finally:
        stop_server(server)
    per_window = windows(records, args)
    print(f"\n{'window from':>12} {'requests':>9} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7}")
    for w in per_window:
        cells = " ".join(f"{w[k] or 0:>7.2f}" for k in ("p50_s", "p95_s", "p99_s"))
        print(f"{w['from_s']:>11.0f}s {w['n']:>9} {cells}")
    print(f"\n{'check':<20} {'held':<5} figures")
    for name, c in result.items():
        figures = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in c.items() if k != "ok"
        )
        print(f"{name:<20} {'yes' if c['ok'] else 'NO':<5} {figures}")
    summary = {"benchmark": "soak", "model": args.model, "engine": args.engine, "duration_s": args.duration,
               "concurrency": args.concurrency, "requests": len(records), "wall": round(wall, 1)}  # fmt: skip
    print(json.dumps({**summary, "checks": result, "windows": per_window, "samples": samples}))
    return 0 if all(c["ok"] for c in result.values()) else 1


if __name__ == "__main__":  # vLLM starts worker processes
    sys.exit(main())
