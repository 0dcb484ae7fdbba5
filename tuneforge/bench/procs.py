"""The load generator over several client processes, for loads one Python process cannot drive.

One streaming client (httpx + httpx-sse) spends about 100 µs of CPU per streamed token on this project's
reference CPU, so above roughly 8,000 tokens/s a single process is the bottleneck, not the server under
test (benchmarks/RESULTS.md, "api_overhead"). `run_load_procs` splits one load over N spawned processes:
the concurrency (or the arrival rate) and the requests are divided between them, each takes every N-th
prompt, all start together behind a barrier, and their records come back on one clock (perf_counter is
the system's monotonic clock, shared by every process).

    records, wall, cpu = run_load_procs(OpenAITarget(url, model), prompts, LoadSpec(256, None, 2048), 4)
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from tuneforge.bench.stats import RequestRecord

POLL_S = 0.1


def split(total: int, parts: int) -> list[int]:
    """`total` divided into `parts` near-equal whole shares, larger ones first (sums to `total`)."""
    return [total // parts + (k < total % parts) for k in range(parts)]


def share_specs(spec, procs: int) -> list:
    """Each process's LoadSpec: its share of the concurrency (or rate and its cap) and of the requests, and
    its own arrival seed; processes with nothing to send are dropped."""
    if spec.concurrency:  # fixed concurrency, or the cap of a rate
        procs = min(procs, spec.concurrency)
    if spec.num_requests is not None:
        procs = min(procs, spec.num_requests)
    counts = split(spec.num_requests, procs) if spec.num_requests is not None else [None] * procs
    if spec.rate is None:
        return [
            replace(spec, concurrency=c, num_requests=n)
            for c, n in zip(split(spec.concurrency, procs), counts, strict=True)
        ]
    caps = split(spec.concurrency, procs) if spec.concurrency else [None] * procs
    return [
        replace(spec, rate=spec.rate / procs, concurrency=cap, num_requests=n, seed=spec.seed + k)
        for k, (cap, n) in enumerate(zip(caps, counts, strict=True))
    ]


def _client(k: int, target, prompts, spec, barrier, ticks, results) -> None:
    """One client process: wait for the others, run its share, send back (k, records, t0, end, cpu)."""
    from tuneforge.bench.client import load_async

    try:
        barrier.wait()
        cpu0 = time.process_time()
        records, t0, end = asyncio.run(load_async(target, prompts, spec, lambda rec: ticks.put(rec.ok)))
        results.put((k, records, t0, end, time.process_time() - cpu0))
    except BaseException as e:  # the parent raises it, naming the process
        results.put((k, f"{type(e).__name__}: {e}"))


def run_load_procs(
    target,
    prompts: Sequence[str],
    spec,
    procs: int,
    tick: Callable[[bool], None] | None = None,
) -> tuple[list[RequestRecord], float, float]:
    """(records, wall seconds from the first send to the last completion, the busiest process's share of
    one CPU core over its run); `tick(ok)` after each request. Needs an HTTP target (picklable)."""
    if hasattr(target, "engine"):
        raise ValueError("client processes need an HTTP target; an in-process engine serves one event loop")
    if not prompts:
        raise ValueError("no prompts")
    specs = share_specs(spec, procs)
    ctx = mp.get_context("spawn")  # no forked copies of an event loop or of CUDA state
    barrier, ticks, results = ctx.Barrier(len(specs)), ctx.Queue(), ctx.Queue()
    workers = [
        ctx.Process(
            target=_client,
            args=(k, target, list(prompts[k :: len(specs)]) or list(prompts), s, barrier, ticks, results),
            daemon=True,
        )
        for k, s in enumerate(specs)
    ]
    for w in workers:
        w.start()
    done: dict[int, tuple] = {}
    try:
        while len(done) < len(workers):
            _drain(ticks, tick)
            try:
                k, *out = results.get(timeout=POLL_S)
            except queue.Empty:
                dead = [k for k, w in enumerate(workers) if not w.is_alive() and k not in done]
                if dead and results.empty():
                    raise RuntimeError(f"client process {dead[0]} exited without results") from None
                continue
            if isinstance(out[0], str):
                raise RuntimeError(f"client process {k}: {out[0]}")
            done[k] = tuple(out)
        _drain(ticks, tick)
    finally:
        for w in workers:
            w.join(timeout=5)
            if w.is_alive():
                w.kill()
    return merge(done)


def merge(done: dict[int, tuple]) -> tuple[list[RequestRecord], float, float]:
    """Each process's (records, t0, end, cpu seconds) onto one clock: starts counted from the earliest t0,
    the wall from there to the latest end, and the busiest process's CPU share."""
    start = min(t0 for _, t0, _, _ in done.values())
    records = [
        replace(r, start_s=r.start_s + t0 - start)
        for _, (recs, t0, _, _) in sorted(done.items())
        for r in recs
    ]
    records.sort(key=lambda r: r.start_s)
    wall = max(end for _, _, end, _ in done.values()) - start
    busiest = max(cpu / max(end - t0, 1e-9) for _, t0, end, cpu in done.values())
    return records, wall, busiest


def _drain(ticks, tick) -> None:
    while True:
        try:
            ok = ticks.get_nowait()
        except queue.Empty:
            return
        if tick is not None:
            tick(ok)
