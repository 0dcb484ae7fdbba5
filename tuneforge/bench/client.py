"""The load generator: prompts, and requests sent to a target (bench/targets.py) under a load.

    tuneforge bench --url http://127.0.0.1:8000 --api openai --model M --concurrency 1,4,16 --requests 200

Load: a fixed number of concurrent clients, or Poisson arrivals at a request rate (seeded); stop after N
requests or after a duration (requests in flight then finish).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tuneforge.bench.stats import RequestRecord, summarize

WORDS = str.split(
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night point "
    "home water room mother area money story fact month lot right study book eye job word business issue "
    "side kind head house service friend father power hour game line end member law car city community name"
)


# --------------------------------------------------------------------------- prompts


def synthetic_prompts(n: int, input_len: int, seed: int = 0) -> list[str]:
    """`n` different prompts of `input_len` common English words each (about one token per word)."""
    if n < 1 or input_len < 1:
        raise ValueError(f"need n >= 1 and input_len >= 1 words, got n={n}, input_len={input_len}")
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(input_len)) for _ in range(n)]


def dataset_prompts(path: str, limit: int | None = None, data_format: str = "auto") -> list[str]:
    """Prompts of a dataset file, read and validated like training data (plain template, no tokenizer):
    everything before the last assistant turn, the prompt of prompt/completion data, or plain text."""
    from tuneforge.config import DataConfig
    from tuneforge.data import DatasetPreprocessor
    from tuneforge.data.cases import case_from_example
    from tuneforge.errors import DatasetError

    pre = DatasetPreprocessor(config=DataConfig(train_file=path, format=data_format, on_invalid="skip"))
    loaded = pre.load_dataset()
    pre.check(loaded)
    prompts = [
        ex.text if ex.text is not None and ex.messages is None else case_from_example(ex).prompt
        for ex in loaded.examples[: limit or None]
    ]
    if not prompts:
        raise DatasetError(f"{path}: no valid examples to take prompts from")
    return prompts


# --------------------------------------------------------------------------- load


@dataclass
class LoadSpec:
    """How much load, and when to stop."""

    concurrency: int | None = 1
    """Requests in flight at once (fixed-concurrency mode), or the cap with `rate` (None: no cap)."""
    rate: float | None = None
    """Poisson arrivals at this many requests per second; None: fixed concurrency."""
    num_requests: int | None = 100
    """Stop sending after this many requests (None: only the duration limits)."""
    duration_s: float | None = None
    """Stop sending after this many seconds (requests in flight finish)."""
    seed: int = 0
    """Seed of the arrival times."""

    def __post_init__(self):
        if self.num_requests is None and self.duration_s is None:
            raise ValueError("give num_requests or duration_s (or both)")
        if self.num_requests is not None and self.num_requests < 1:
            raise ValueError(f"num_requests must be >= 1, got {self.num_requests}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        if self.rate is None and (self.concurrency is None or self.concurrency < 1):
            raise ValueError(f"concurrency must be >= 1 without a rate, got {self.concurrency}")
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"rate must be > 0 requests/s, got {self.rate}")

    def describe(self) -> dict[str, Any]:
        if self.rate is not None:
            return {"mode": "rate", "rate": self.rate, "max_concurrency": self.concurrency, "seed": self.seed}
        return {"mode": "concurrency", "concurrency": self.concurrency}


def arrival_times(rate: float, seed: int = 0) -> Iterator[float]:
    """Send times (seconds from the start) of requests arriving as a Poisson process, without end: the
    first at 0, then exponential gaps with mean 1/rate."""
    rng = random.Random(seed)
    t = 0.0
    while True:
        yield t
        t += rng.expovariate(rate)


def poisson_arrivals(rate: float, n: int, seed: int = 0) -> list[float]:
    """The first `n` of `arrival_times`."""
    return list(itertools.islice(arrival_times(rate, seed), n))


async def run_load_async(
    target, prompts: Sequence[str], spec: LoadSpec, progress: Callable[[RequestRecord], None] | None = None
) -> tuple[list[RequestRecord], float]:
    """(records in send order, wall seconds from the first send to the last completion)."""
    records, t0, end = await load_async(target, prompts, spec, progress)
    return records, end - t0


async def load_async(
    target, prompts: Sequence[str], spec: LoadSpec, progress: Callable[[RequestRecord], None] | None = None
) -> tuple[list[RequestRecord], float, float]:
    """(records in send order, perf_counter at the first send, perf_counter at the last completion)."""
    import httpx

    if not prompts:
        raise ValueError("no prompts")
    records: dict[int, RequestRecord] = {}
    limit = spec.concurrency or 1000
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(600.0, connect=10.0),
        limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
    ) as client:
        t0 = time.perf_counter()
        deadline = t0 + spec.duration_s if spec.duration_s is not None else None

        async def one(i: int) -> None:
            rec = await target.send(client, prompts[i % len(prompts)], t0)
            records[i] = rec
            if progress is not None:
                progress(rec)

        if spec.rate is None:
            counter = iter(range(spec.num_requests) if spec.num_requests is not None else _count())

            async def worker() -> None:
                for i in counter:
                    if deadline is not None and time.perf_counter() >= deadline:
                        return
                    await one(i)

            await asyncio.gather(*(worker() for _ in range(spec.concurrency or 1)))
        else:
            gate = asyncio.Semaphore(spec.concurrency) if spec.concurrency else None
            arrivals = arrival_times(spec.rate, spec.seed)
            tasks, i = [], 0

            async def gated(i: int) -> None:
                if gate is None:
                    return await one(i)
                async with gate:
                    await one(i)

            while spec.num_requests is None or i < spec.num_requests:
                send_at = next(arrivals)
                if deadline is not None and t0 + send_at >= deadline:
                    break
                await asyncio.sleep(max(0.0, t0 + send_at - time.perf_counter()))
                tasks.append(asyncio.create_task(gated(i)))
                i += 1
            await asyncio.gather(*tasks)
        end = time.perf_counter()
    return [records[i] for i in sorted(records)], t0, end


def _count():
    i = 0
    while True:
        yield i
        i += 1


def run_load(
    target, prompts: Sequence[str], spec: LoadSpec, show_progress: bool = True, client_procs: int = 1
) -> tuple[list[RequestRecord], float]:
    """run_load_async with a tqdm bar over requests (failed ones counted in its postfix), in this process
    or split over `client_procs` client processes (bench/procs.py)."""
    records, wall, _ = measured_load(target, prompts, spec, show_progress, client_procs)
    return records, wall


def measured_load(
    target, prompts: Sequence[str], spec: LoadSpec, show_progress: bool = True, client_procs: int = 1
) -> tuple[list[RequestRecord], float, float]:
    """run_load, and the busiest client process's share of one CPU core (near 1.0: the client may be the
    limit)."""
    from tqdm.auto import tqdm

    if client_procs < 1:
        raise ValueError(f"client_procs must be >= 1, got {client_procs}")
    with tqdm(total=spec.num_requests, desc=_label(spec), unit="req", disable=not show_progress) as bar:
        failed = 0

        def tick(ok: bool) -> None:
            nonlocal failed
            failed += not ok
            bar.update(1)
            if failed:
                bar.set_postfix(failed=failed)

        if client_procs > 1:
            from tuneforge.bench.procs import run_load_procs

            return run_load_procs(target, prompts, spec, client_procs, tick)
        # an engine that keeps its own event loop (vLLM binds to the first one it runs on) provides run_sync
        runner = getattr(getattr(target, "engine", None), "run_sync", asyncio.run)
        cpu0 = time.process_time()
        records, wall = runner(run_load_async(target, prompts, spec, lambda rec: tick(rec.ok)))
        return records, wall, (time.process_time() - cpu0) / max(wall, 1e-9)


def _label(spec: LoadSpec) -> str:
    return f"rate {spec.rate}/s" if spec.rate is not None else f"concurrency {spec.concurrency}"


def run_benchmark(
    target, prompts: Sequence[str], spec: LoadSpec, show_progress: bool = True, client_procs: int = 1
) -> dict[str, Any]:
    """One load level: {"load", "summary", "client", "records"}; "client" says how many client processes
    sent the load and how busy the busiest was (a share of one core)."""
    records, wall, cpu = measured_load(target, prompts, spec, show_progress, client_procs)
    if not records:
        raise ValueError("no request was sent (the duration ended before the first one)")
    return {
        "load": spec.describe(),
        "summary": summarize(records, wall),
        "client": {"procs": client_procs, "cpu_share": round(cpu, 3)},
        "records": [r.to_dict() for r in records],
    }
