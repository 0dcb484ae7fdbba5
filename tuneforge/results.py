"""Files one stage writes and another reads, typed: `tuneforge bench`'s results.json, which cost prices.

Only the fields a reader relies on are declared; the rest of the file passes through untouched. A file that
does not match says which field is wrong, where. Imports no torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneforge.errors import ConfigError


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class BenchLoad(_Open):
    mode: str = "concurrency"  # "concurrency" (a fixed number in flight) or "rate" (Poisson arrivals)
    concurrency: int | None = None
    rate: int | float | None = None
    max_concurrency: int | None = None

    def label(self) -> str:
        if self.mode == "rate":
            cap = f" (max {self.max_concurrency} in flight)" if self.max_concurrency else ""
            rate = f"{self.rate:,}" if isinstance(self.rate, int) else f"{self.rate:.4g}"
            return f"rate {rate}/s{cap}"
        return f"concurrency {self.concurrency}"

    @property
    def in_flight(self) -> int | None:
        return self.concurrency or self.max_concurrency


class BenchRequests(_Open):
    completed: int = Field(ge=0)


class BenchSummary(_Open):
    requests: BenchRequests
    request_throughput_rps: float = Field(ge=0)
    output_throughput_tok_s: float | None = None
    output_tokens: int = 0


class BenchRun(_Open):
    load: BenchLoad
    summary: BenchSummary


class BenchResults(_Open):
    runs: list[BenchRun]
    target: dict = Field(default_factory=dict)
    workload: dict = Field(default_factory=dict)
    server_device: str | None = None


def load_label(load: dict) -> str:
    """How a run's load reads in tables: "concurrency 8" or "rate 2/s (max 64 in flight)"."""
    return BenchLoad.model_validate(load).label()


def read_bench_results(path: str | Path) -> BenchResults:
    """A `tuneforge bench` results.json; anything else is a ConfigError naming the file and the field."""
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:
        raise ConfigError(f"{path}: not JSON ({e})") from None
    try:
        return BenchResults.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(
            f"{path}: not a tuneforge bench results.json: {where}: {first['msg']} ({e.error_count()} "
            "problem(s); write one with `tuneforge bench ... --out FOLDER`)"
        ) from None
