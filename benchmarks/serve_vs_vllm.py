"""python benchmarks/serve_vs_vllm.py [--model smollm2-135m-instruct] [--profile runs/profile]

`tuneforge serve` against `vllm serve` (vLLM's own OpenAI server) on the same engine settings, each driven
by vLLM's own load generator (`vllm bench serve`: chat completions, random prompts of --input-len tokens,
exactly --output-len tokens out, fixed concurrency), the servers started one after the other. With
--profile, py-spy samples each server's API process while it is under load (the engine core runs in its
own process and is not sampled) and writes a collapsed-stack file per server, plus the top functions.

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from serve_overhead import free_port, wait_ready  # this folder is on sys.path when run as a script

LOAD = (
    "import argparse, sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "p = argparse.ArgumentParser(); add_cli_args(p)\n"
    "main(p.parse_args(sys.argv[1:]))\n"
)


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time (user + system) of the server's process tree by role: the API process, vLLM's engine
    core and its workers, told apart by their process titles."""
    import psutil

    root = psutil.Process(pid)
    out: dict[str, float] = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            title, times = " ".join(p.cmdline()) or p.name(), p.cpu_times()
        except psutil.Error:
            continue
        role = "api" if p.pid == pid else "engine core" if "EngineCor" in title else "worker"
        out[role] = out.get(role, 0.0) + times.user + times.system
    return out


def top_functions(collapsed: Path, n: int = 15) -> list[tuple[str, float]]:
    """Share of samples in which each function appears (inclusive), from py-spy's collapsed stacks."""
    counts, total = collections.Counter(), 0
    for line in collapsed.read_text().splitlines():
        stack, _, num = line.rpartition(" ")
        total += int(num)
        for frame in set(stack.split(";")):
            counts[frame.split(" (")[0]] += int(num)
    return [(f, c / total) for f, c in counts.most_common(n)] if total else []


def median_run(runs: list[dict]) -> dict:
    """The round with the median request throughput (the lower middle one for an even count), with every
    round's throughput beside it."""
    ranked = sorted(runs, key=lambda r: r["request_throughput"])
    return {**ranked[(len(ranked) - 1) // 2], "rounds": [r["request_throughput"] for r in runs]}


def run_server(name: str, cmd: list[str], ready: str, args, port: int, out: Path) -> dict:
    log = open(out / f"{name}.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    spy = None
    try:
        wait_ready(f"http://127.0.0.1:{port}{ready}", proc)
        sent = {"temperature": args.temperature, "top-p": args.top_p}
        sampling = [f"--{k}={v}" for k, v in sent.items() if v is not None]

        def load(prompts: int, result: str) -> list[str]:
            return [
            sys.executable, "-c", LOAD, "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
            "--base-url", f"http://127.0.0.1:{port}", "--model", "m", "--tokenizer", args.model_path,
            "--dataset-name", "random", "--random-input-len", str(args.input_len),
            "--random-output-len", str(args.output_len), "--ignore-eos", "--num-prompts", str(prompts),
            "--max-concurrency", str(args.concurrency), "--seed", "0", "--disable-tqdm",
            "--save-result", "--result-dir", str(out), "--result-filename", result, *sampling,
            ]  # fmt: skip

        # a warm-up round first, not recorded
        subprocess.run(load(args.concurrency, f"{name}-warmup.json"), capture_output=True, timeout=900)
        if args.profile:
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            spy = subprocess.Popen(
                [py_spy, "record", "--pid", str(proc.pid), "--format", "raw", "--rate", "200",
                 "--output", str(out / f"{name}.collapsed"), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        before = cpu_seconds(proc.pid)
        done = subprocess.run(
            load(args.prompts, f"{name}.json"), capture_output=True, text=True, timeout=1800
        )
        if done.returncode != 0:
            raise SystemExit(f"vllm bench serve failed against {name}:\n{done.stderr[-3000:]}")
        after = cpu_seconds(proc.pid)
        result = json.loads((out / f"{name}.json").read_text())
        result["cpu_seconds"] = {k: round(after[k] - before.get(k, 0.0), 2) for k in after}
        return result
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--prompts", type=int, default=48)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--temperature", type=float, help="sent with every request (default: none, as a new user)")
    p.add_argument("--top-p", type=float, help="sent with every request (default: none)")
    p.add_argument("--profile", help="folder for py-spy's samples of each API process (needs py-spy)")
    p.add_argument("--only", choices=("tuneforge", "vllm"), help="run one server only")
    p.add_argument(
        "--repeat", type=int, default=1, help="rounds; the order alternates (A B, B A, ...) and medians count"
    )
    args = p.parse_args()

    from tuneforge.models.resolve import resolve_model

    args.model_path = resolve_model(args.model).path
    out = Path(args.profile or tempfile.mkdtemp(prefix="serve-vs-vllm-"))
    out.mkdir(parents=True, exist_ok=True)
    common = [f"inference.dtype={args.dtype}", f"inference.max_model_len={args.max_model_len}"]
    port = free_port()
    servers = {
        "tuneforge serve": (
            "tuneforge", "/ready",
            [sys.executable, "-m", "tuneforge.cli", "serve", args.model_path, *common, "--engine", "vllm",
             "--served-name", "m", "--port", str(port)],
        ),
        "vllm serve": (
            "vllm", "/health",
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model_path,
             "--served-model-name", "m", "--dtype", args.dtype, "--max-model-len", str(args.max_model_len),
             "--enable-prefix-caching", "--seed", "0", "--port", str(port),
             "--kv-cache-memory-bytes", str(2**30)],
        ),
    }  # fmt: skip
    order = [n for n in servers if args.only is None or servers[n][0] == args.only]
    rounds: dict[str, list[dict]] = {n: [] for n in order}
    for i in range(args.repeat):
        for name in order if i % 2 == 0 else order[::-1]:  # alternate who goes first
            tag, ready, cmd = servers[name]
            rounds[name].append(run_server(f"{tag}-{i}", cmd, ready, args, port, out))
            r = rounds[name][-1]
            print(f"round {i + 1}: {name:<16} {r['request_throughput']:.3f} req/s", flush=True)
    results = {name: median_run(runs) for name, runs in rounds.items()}
    keys = (
        "request_throughput",
        "output_throughput",
        "median_ttft_ms",
        "median_tpot_ms",
        "completed",
        "failed",
    )
    print(
        f"{'server':<16}{'req/s':>8}{'out tok/s':>11}{'TTFT p50 ms':>13}{'TPOT p50 ms':>13}"
        f"{'done':>6}{'failed':>8}"
    )
    for name, r in results.items():
        print(
            f"{name:<16}{r['request_throughput']:>8.3f}{r['output_throughput']:>11.1f}{r['median_ttft_ms']:>13.1f}"
            f"{r['median_tpot_ms']:>13.1f}{r['completed']:>6}{r['failed']:>8}"
        )
    ratio = None
    if len(results) == 2:
        ratio = results["tuneforge serve"]["request_throughput"] / results["vllm serve"]["request_throughput"]
        print(f"tuneforge / vllm serve, requests/s: {ratio:.3f}")
    if args.repeat > 1:
        for name, r in results.items():
            print(f"{name}: req/s per round {', '.join(f'{x:.3f}' for x in r['rounds'])} (median shown)")
    for name, r in results.items():
        cpu = ", ".join(f"{k} {v:.1f} s" for k, v in r["cpu_seconds"].items())
        print(f"CPU time under load, {name}: {cpu} ({r['completed']} requests)")
    if args.profile:
        for name in ("tuneforge", "vllm"):
            collapsed = out / f"{name}-0.collapsed"  # the first round's samples
            if collapsed.is_file():
                print(f"\n{name}: share of API-process samples per function (inclusive)")
                for func, share in top_functions(collapsed):
                    print(f"  {share:6.1%}  {func}")
    print(
        json.dumps(
            {
                "benchmark": "serve_vs_vllm",
                "model": args.model,
                "dtype": args.dtype,
                "input_len": args.input_len,
                "output_len": args.output_len,
                "concurrency": args.concurrency,
                "prompts": args.prompts,
                "sampling_sent": {"temperature": args.temperature, "top_p": args.top_p},
                "ratio_requests_per_s": ratio,
                "repeat": args.repeat,
                "results": {
                    k: {m: v[m] for m in (*keys, "cpu_seconds", "rounds")} for k, v in results.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
