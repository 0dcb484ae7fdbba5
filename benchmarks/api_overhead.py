"""What tuneforge's HTTP layer costs per streamed token, without a model: CPU seconds of the API process.

On a GPU the API process runs beside the engine, and at high concurrency its event loop is what limits
`tuneforge serve` (H200, Mistral-7B shape: 0.83-0.86x of the engine at concurrency 64, where `vllm serve`
kept 0.98x; benchmarks/RESULTS.md, "serve_overhead"). This measures that layer on any machine: a
simulated engine (`StepEngine`: every --step-ms one batch step gives each running request one token, as
vLLM's output handler does) behind

- `tuneforge`: the real app (`tuneforge.serve.app.build_app`) in uvicorn, as `tuneforge serve` runs it;
- `minimal`: the least a FastAPI server can do for the same route (one StreamingResponse writing
  `data: {json}` lines straight from the engine; no admission, metrics or timeouts), the floor.

Each server runs in its own process; a streaming client (tuneforge.bench.client, /v1/completions) drives
it from this one at each concurrency. The API process's CPU time (psutil) per streamed token is the
figure that carries across machines; throughput and TTFT show what it does to clients.

    .venv/bin/python benchmarks/api_overhead.py --concurrency 16,64 --requests 256 --tokens 128

Prints a table (ratios against `minimal`), then a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_overhead import free_port, stop, wait_ready

from tuneforge.bench.client import LoadSpec, run_load, synthetic_prompts
from tuneforge.bench.targets import OpenAITarget

SERVERS = ("minimal", "tuneforge")
MODEL = "smollm2-135m-instruct"  # the name tuneforge's app serves by default (no model is loaded)


class StepEngine:
    """An engine without a model: one loop steps every running request by one token per `step_s`."""

    name = "step"

    def __init__(self, step_s: float, max_model_len: int = 4096):
        self.step_s, self.max_model_len = step_s, max_model_len
        self.running: set[asyncio.Queue] = set()
        self.ticker: asyncio.Task | None = None

    async def _tick(self) -> None:
        while self.running:
            await asyncio.sleep(self.step_s)
            for q in list(self.running):
                q.put_nowait(1)
        self.ticker = None

    def count_tokens(self, prompt: str) -> int:
        return len(prompt.split())

    def apply_chat_template(self, messages: list[dict]) -> str:
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages)

    async def stream(self, prompt, sampling, adapter=None):
        from tuneforge.engines.base import Chunk

        n_prompt, q = self.count_tokens(prompt), asyncio.Queue()
        self.running.add(q)
        if self.ticker is None:
            self.ticker = asyncio.get_running_loop().create_task(self._tick())
        try:
            for i in range(sampling.max_tokens):
                await q.get()
                last = i == sampling.max_tokens - 1
                yield Chunk(f" w{i}", n_prompt, i + 1, "length" if last else None)
        finally:
            self.running.discard(q)

    async def complete_batch(self, prompts, sampling, adapter=None):
        raise NotImplementedError

    def adapters(self) -> dict[str, str]:
        return {}

    def describe(self) -> dict:
        return {"kind": "step", "max_model_len": self.max_model_len, "step_ms": self.step_s * 1000}

    async def warm_up(self) -> float:
        return 0.0  # nothing compiles: its tokens are simulated

    def is_healthy(self) -> bool:
        return True

    async def shutdown(self) -> None:
        pass


def minimal_app(engine: StepEngine):
    """The same route with nothing around it: Starlette, one StreamingResponse of `data:` lines."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    from tuneforge.config import SamplingParams

    async def ready(request):
        return JSONResponse({"status": "ready"})

    async def completions(request):
        body = await request.json()
        sampling = SamplingParams(temperature=0.0, max_tokens=body["max_tokens"])

        async def events():
            async for c in engine.stream(body["prompt"], sampling):
                event = {"object": "text_completion", "choices": [{"index": 0, "text": c.text}]}
                if c.finish_reason is not None:  # usage in the last chunk, as OpenAI's include_usage
                    event["usage"] = {"prompt_tokens": c.prompt_tokens,
                                      "completion_tokens": c.completion_tokens}  # fmt: skip
                yield f"data: {json.dumps(event)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/ready", ready), Route("/v1/completions", completions, methods=["POST"])])


def serve(kind: str, port: int, step_s: float, http: str = "auto") -> None:
    """In the server process: the app on uvicorn, as `tuneforge serve` starts it (`http`: uvicorn's HTTP
    implementation; auto takes httptools when installed, else h11)."""
    import uvicorn

    if kind == "minimal":
        app = minimal_app(StepEngine(step_s))
    else:
        from tuneforge.serve.app import build_app
        from tuneforge.serve.settings import ServeSettings

        app = build_app(ServeSettings(port=port, max_pending=4096), lambda settings: StepEngine(step_s))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", http=http)


def measure(kind: str, args, prompts: list[str]) -> list[dict]:
    port = free_port()
    cmd = [sys.executable, __file__, "--serve", kind, "--port", str(port), "--step-ms", str(args.step_ms),
           "--http", args.http]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        wait_ready(f"{base}/ready", proc, timeout=120)
        server, me = psutil.Process(proc.pid), psutil.Process()
        target = OpenAITarget(base, MODEL, max_tokens=args.tokens, ignore_eos=True)
        run_load(target, prompts[:16], LoadSpec(concurrency=8, num_requests=16), show_progress=False)
        for c in args.concurrency:
            before, client_before, t0 = server.cpu_times(), me.cpu_times(), time.perf_counter()
            records, wall = run_load(target, prompts, LoadSpec(concurrency=c, num_requests=args.requests),
                                     show_progress=False)  # fmt: skip
            after, client_after = server.cpu_times(), me.cpu_times()
            ok = [r for r in records if r.ok]
            tokens = sum(r.output_tokens for r in ok)
            cpu = (after.user - before.user) + (after.system - before.system)
            client = (client_after.user - client_before.user) + (client_after.system - client_before.system)
            rows.append({
                "server": kind, "concurrency": c, "completed": len(ok), "failed": len(records) - len(ok),
                "tokens": tokens, "tok_s": round(tokens / wall, 1),
                "ttft_ms_p50": round(statistics.median(r.ttft_s for r in ok) * 1000, 2) if ok else None,
                "api_cpu_s": round(cpu, 3), "api_cpu_us_per_token": round(cpu / max(tokens, 1) * 1e6, 2),
                "client_cpu_us_per_token": round(client / max(tokens, 1) * 1e6, 2),
                "wall_s": round(time.perf_counter() - t0, 2),
            })  # fmt: skip
    finally:
        stop(proc, grace_s=10)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated: {', '.join(SERVERS)}")
    p.add_argument("--concurrency", default="16,64", help="comma-separated levels")
    p.add_argument("--requests", type=int, default=128, help="per level")
    p.add_argument("--tokens", type=int, default=128, help="streamed tokens per request")
    p.add_argument(
        "--step-ms", type=float, default=6.0, help="simulated engine step (a 7B model on an H200: ~6)"
    )
    p.add_argument(
        "--http", choices=("auto", "h11", "httptools"), default="auto", help="uvicorn's HTTP parser"
    )
    p.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.step_ms / 1000, args.http)
        return
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    servers = args.servers.split(",")
    for s in servers:
        if s not in SERVERS:
            p.error(f"--servers: unknown {s!r}; choose from {', '.join(SERVERS)}")
    prompts = synthetic_prompts(args.requests, 32, seed=0)
    rows = [row for s in servers for row in measure(s, args, prompts)]
    floor = {r["concurrency"]: r for r in rows if r["server"] == "minimal"}
    head = ("server", "conc", "tok/s", "TTFT p50 ms", "API CPU µs/token", "vs minimal", "client µs/token")
    print("{:<10} {:>5} {:>9} {:>12} {:>17} {:>11} {:>16}".format(*head))
    for r in rows:
        ref = floor.get(r["concurrency"])
        ratio = ref and r["api_cpu_us_per_token"] / ref["api_cpu_us_per_token"]
        r["cpu_vs_minimal"] = round(ratio, 3) if ratio else None
        print(f"{r['server']:<10} {r['concurrency']:>5} {r['tok_s']:>9.0f} {r['ttft_ms_p50'] or 0:>12.1f} "
              f"{r['api_cpu_us_per_token']:>17.1f} {ratio or 0:>10.2f}x "
              f"{r['client_cpu_us_per_token']:>16.1f}")  # fmt: skip
    print(json.dumps({"benchmark": "api_overhead", "step_ms": args.step_ms, "tokens": args.tokens,
                      "http": args.http, "requests": args.requests, "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
