"""Latency and throughput statistics of a serving benchmark. Imports no torch.

    from tuneforge.bench.stats import summarize
    summary = summarize(records, wall_s)

Conventions follow `vllm bench serve` and GuideLLM:
    TTFT   time from sending the request to the first generated text
    TPOT   (end-to-end - TTFT) / (output tokens - 1): decode time per token, first token excluded;
           only for requests that generated more than one token
    ITL    every gap between two successive streamed chunks after the first
    E2E    time from sending the request to the end of its stream
Latency statistics count completed requests only; a request counts as failed when its HTTP status is not
200, when its stream carries an error event (even under HTTP 200), or when it times out or cannot connect.
Request throughput is completed requests / wall time; output throughput is their output tokens / wall time.
Percentiles interpolate linearly between order statistics (numpy's default, "linear").
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (50, 95, 99)
METRICS = ("ttft", "tpot", "itl", "e2e")
METRIC_NAMES = {
    "ttft": "time to first token",
    "tpot": "time per output token (first excluded)",
    "itl": "inter-token latency",
    "e2e": "end-to-end latency",
}


@dataclass
class RequestRecord:
    """What one request did, as the client saw it."""

    ok: bool
    """True when the request completed: HTTP 200 and a stream that ended without an error event."""
    error_kind: str | None = None
    """Why it failed: http_<status>, stream_error, timeout, connect, incomplete_stream or exception."""
    status: int | None = None
    """HTTP status, when a response arrived (None for in-process engines and connection failures)."""
    ttft_s: float | None = None
    """Seconds from sending to the first generated text."""
    e2e_s: float | None = None
    """Seconds from sending to the end of the stream."""
    itl_s: list[float] = field(default_factory=list)
    """Gaps in seconds between successive streamed chunks, after the first."""
    input_tokens: int = 0
    """Prompt tokens as the server counted them (0 when it did not say)."""
    output_tokens: int = 0
    """Generated tokens as the server counted them (else the number of non-empty chunks)."""
    start_s: float = 0.0
    """When the request was sent, in seconds from the start of the run."""
    error: str | None = None
    """The error message, when there was one."""

    @property
    def tpot_s(self) -> float | None:
        if not self.ok or self.e2e_s is None or self.ttft_s is None or self.output_tokens <= 1:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between order statistics (numpy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    return float(np.percentile(values, q))


def distribution(values: Sequence[float], scale: float = 1.0) -> dict[str, float | int | None]:
    """count, mean, p50, p95, p99 and max of `values` x `scale` (None for each when there are no values)."""
    keys = ["mean", *(f"p{p}" for p in PERCENTILES), "max"]
    if not values:
        return {"count": 0, **dict.fromkeys(keys)}
    scaled = [v * scale for v in values]
    out: dict[str, float | int | None] = {"count": len(scaled), "mean": math.fsum(scaled) / len(scaled)}
    for p in PERCENTILES:
        out[f"p{p}"] = percentile(scaled, p)
    out["max"] = max(scaled)
    return out


def summarize(records: Iterable[RequestRecord], wall_s: float) -> dict[str, Any]:
    """Counts, errors by kind, throughputs and latency distributions (milliseconds) of one run."""
    records = list(records)
    if not wall_s > 0:
        raise ValueError(f"wall_s must be > 0 seconds, got {wall_s}")
    done = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    errors = Counter(r.error_kind or "unknown" for r in failed)
    output_tokens = sum(r.output_tokens for r in done)
    samples = {
        "ttft": [r.ttft_s for r in done if r.ttft_s is not None],
        "tpot": [t for t in (r.tpot_s for r in done) if t is not None],
        "itl": [gap for r in done for gap in r.itl_s],
        "e2e": [r.e2e_s for r in done if r.e2e_s is not None],
    }
    return {
        "requests": {
            "total": len(records),
            "completed": len(done),
            "failed": len(failed),
            "errors": dict(sorted(errors.items())),
        },
        "duration_s": wall_s,
        "request_throughput_rps": len(done) / wall_s,
        "output_throughput_tok_s": output_tokens / wall_s,
        "input_tokens": sum(r.input_tokens for r in done),
        "output_tokens": output_tokens,
        "latency_ms": {name: distribution(samples[name], 1000.0) for name in METRICS},
    }
