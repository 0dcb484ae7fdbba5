"""The last part of `make demo`: serve the fine-tuned demo model, stream one answer, benchmark the
server with a short concurrency sweep, and price the training run and the serving.

    .venv/bin/python scripts/demo_serve.py --adapter runs/demo-cpu/adapter

Starts `tuneforge serve` (vLLM when installed) on a free port, stops it at the end, and prints the
commands to start it yourself.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tuneforge.command import ServerNotReady, stop_process, wait_ready

BIN = Path(sys.executable).parent
TUNEFORGE = [sys.executable, "-m", "tuneforge.cli"]  # also where tuneforge is on PYTHONPATH, not installed
# a held-out case in the training format (alpaca: instruction, blank line, input)
ASK = (
    "Extract the order details from the text as JSON with the keys name, city, item, color and quantity."
    "\n\nPlease send 3 green lamps to Lyon for Ada Okafor."
)


def free_port(preferred: int = 8000) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", default="runs/demo-cpu/adapter")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--instance", default="c7i.large", help="catalog instance that prices this machine")
    p.add_argument("--out", default="runs/demo-cpu")
    p.add_argument("--concurrency", default="1,4", help="benchmark levels (requests in flight)")
    p.add_argument("--requests", type=int, default=12, help="benchmark requests per level")
    p.add_argument(
        "--cost-args", default="", help="`cost gpus` options instead of --instance (e.g. --price-per-hour)"
    )
    p.add_argument("overrides", nargs="*", help="inference.* KEY=VALUE overrides for the server")
    args = p.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = [
        *TUNEFORGE,
        "serve",
        args.model,
        "--adapter",
        f"demo={args.adapter}",
        "--port",
        str(port),
        *args.overrides,
    ]
    log_path = Path(args.out) / "serve.log"
    print(f"$ {' '.join(serve)}   (log: {log_path})", flush=True)
    with open(log_path, "w") as log:
        server = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        try:
            took = wait_ready(f"{base}/ready", server, log=log_path, poll_s=2)
        except ServerNotReady as e:
            print(e, file=sys.stderr)
            return 1
        engine = httpx.get(f"{base}/ready").json()["engine"]
        print(f"ready in {took:.0f} s: {engine['kind']} on {engine['device']}, {engine['dtype']}")

        for model in ("base", "demo"):
            print(f"\nstreaming from /v1/chat/completions (model={model}):\n  ", end="", flush=True)
            body = {
                "model": args.model if model == "base" else model,
                "messages": [{"role": "user", "content": ASK}],
                "max_tokens": 48,
                "temperature": 0,
                "stream": True,
            }
            with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        choice = json.loads(line[6:])["choices"][0]
                        print(choice["delta"].get("content") or "", end="", flush=True)
            print()

        bench_dir = Path(args.out) / "bench"
        run([*TUNEFORGE, "bench", "--url", base, "--model", "demo", "--concurrency", args.concurrency,
             "--requests", str(args.requests), "--prompts", "data/demo/test.jsonl", "--output-len", "48",
             "--server-pid", str(server.pid), "--out", str(bench_dir)])  # fmt: skip
    finally:
        stop_process(server)

    run_file = Path(args.adapter).parent / "mlflow_run.json"
    price = shlex.split(args.cost_args) or ["--instance", args.instance]
    cost = [*TUNEFORGE, "cost", "gpus", *price,
            "--bench", str(bench_dir / "results.json"),
            "--model", "HuggingFaceTB/SmolLM2-135M-Instruct",  # the benchmark only knows the adapter's name
            "--out", str(Path(args.out) / "cost")]  # fmt: skip
    if run_file.is_file():
        info = json.loads(run_file.read_text())
        cost += ["--mlflow-run-id", info["run_id"]] + (
            ["--tracking-uri", info["tracking_uri"]] if info.get("tracking_uri") else []
        )
    run(cost)

    print("\nServe it yourself:")
    tuneforge = BIN / "tuneforge" if (BIN / "tuneforge").exists() else "python -m tuneforge.cli"
    print(f"  {tuneforge} serve {args.model} --adapter demo={args.adapter}")
    print("then, in another terminal, stream an answer (Server-Sent Events):")
    message = json.dumps({"model": "demo", "stream": True, "messages": [{"role": "user", "content": ASK}]})
    json_header = "-H 'content-type: application/json'"
    print(f"  curl -N http://127.0.0.1:8000/v1/chat/completions {json_header} -d '{message}'")
    raw = json.dumps({"model": "demo", "prompt": "The capital of France is", "max_tokens": 16})
    print(f"  curl -N http://127.0.0.1:8000/generate {json_header} -d '{raw}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
