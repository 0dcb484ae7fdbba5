"""Training and serving costs on catalog instances. Imports no torch.

    from tuneforge.cost.analyzer import CostAnalyzer
    a = CostAnalyzer()                                   # the shipped catalog
    a.calculate_training_cost("p5.48xlarge", hours=2.5)  # rate x hours
    a.calculate_inference_cost("g5.xlarge", 3.2)         # USD per 1,000 requests at 3.2 req/s

Formulas:
    training cost            = hourly rate x hours
    cost per 1K requests     = hourly rate / (3600 x requests per second) x 1000
    cost per 1M output tokens = hourly rate / (3600 x output tokens per second) x 1,000,000
These assume the instance is busy all the time at the measured throughput (a fully used endpoint);
idle time costs the same per hour and serves nothing.

Breakdown by resource: the hourly price is split into host (CPU and memory) and GPU shares. The host share
is the instance's vCPUs and memory priced at Google Cloud's N2 on-demand rates (HOST_RATES, us-central1),
the way GCP itself bills a GPU machine as GPUs + vCPUs + memory; for a GPU instance it is capped at half the
price (GPU clouds bundle large hosts cheaply), and the GPU share is the rest. A CPU instance splits its whole
price between CPU and memory in the same proportion. Where the provider bills the host on top (Modal) the
price is all GPU and the note says so. Where vCPUs or memory are not known, their share is 0.

Every figure carries its basis: "measured" (from a benchmark or a tracked run, with its source) or
"estimated" (from reference throughputs, with theirs). A throughput measured on a CPU is never priced on a
GPU instance, nor a GPU measurement on a CPU instance: that is an error, not a figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tuneforge.cost.catalog import Catalog, Instance, load_catalog
from tuneforge.errors import ConfigError

HOST_RATES = {"vcpu_usd_per_hour": 0.031611, "memory_usd_per_gb_hour": 0.004237}
HOST_SHARE_CAP = 0.5
BREAKDOWN_RULE = (
    "host share = vCPUs x 0.031611 + memory GB x 0.004237 USD/h (GCP N2 on-demand rates), at most half "
    "the price of a GPU instance; GPU share = the rest; a CPU instance's price is split between CPU and "
    "memory in the same proportion"
)
MEASURED, ESTIMATED = "measured", "estimated"


@dataclass
class Throughput:
    """A serving throughput and where it comes from."""

    requests_per_second: float | None = None
    """Completed requests per second."""
    output_tokens_per_second: float | None = None
    """Generated tokens per second."""
    basis: str = MEASURED
    """measured or estimated."""
    source: str = ""
    """The benchmark file, MLflow run or reference it comes from."""
    device: str = "unknown"
    """What served it: 'cpu', 'gpu:<name>', or 'unknown'."""

    def __post_init__(self):
        if self.basis not in (MEASURED, ESTIMATED):
            raise ConfigError(f"throughput basis must be '{MEASURED}' or '{ESTIMATED}', got '{self.basis}'")
        for name in ("requests_per_second", "output_tokens_per_second"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, (int, float)) and value > 0 and math.isfinite(value)
            ):
                raise ConfigError(
                    f"{name.replace('_', ' ')} must be > 0 to price it, got {value!r}"
                    + (" (the benchmark completed no request)" if value == 0 else "")
                )
        if self.requests_per_second is None and self.output_tokens_per_second is None:
            raise ConfigError("a throughput needs requests per second or output tokens per second")


def _positive(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


class CostAnalyzer:
    def __init__(self, catalog: Catalog | None = None, extra: list[Instance] | None = None):
        self.catalog = catalog or load_catalog()
        for inst in extra or []:
            self.catalog.instances[inst.name] = inst

    def instance(self, instance_type: str | Instance) -> Instance:
        return instance_type if isinstance(instance_type, Instance) else self.catalog.get(instance_type)

    def hourly_rate(self, instance_type: str | Instance, spot: bool = False) -> float:
        return self.instance(instance_type).hourly(spot)

    # ------------------------------------------------------------------ the formulas

    def calculate_training_cost(
        self, instance_type: str | Instance, hours: float, spot: bool = False
    ) -> float:
        """Hourly rate x hours (on-demand, or spot with spot=True)."""
        if (
            isinstance(hours, bool)
            or not isinstance(hours, (int, float))
            or not math.isfinite(hours)
            or hours < 0
        ):
            raise ConfigError(f"training hours must be a number >= 0, got {hours!r}")
        return self.hourly_rate(instance_type, spot) * hours

    def calculate_inference_cost(
        self, instance_type: str | Instance, requests_per_second: float, spot: bool = False
    ) -> float:
        """USD per 1,000 requests: rate / (3600 x requests per second) x 1000."""
        rps = _positive("requests per second", requests_per_second)
        return self.hourly_rate(instance_type, spot) / (3600.0 * rps) * 1000.0

    def cost_per_million_tokens(
        self, instance_type: str | Instance, output_tokens_per_second: float, spot: bool = False
    ) -> float:
        """USD per 1,000,000 output tokens: rate / (3600 x output tokens per second) x 1e6."""
        tps = _positive("output tokens per second", output_tokens_per_second)
        return self.hourly_rate(instance_type, spot) / (3600.0 * tps) * 1e6

    def breakdown(self, instance_type: str | Instance, spot: bool = False) -> dict[str, float]:
        """The hourly price split into gpu, cpu and memory shares that sum to it (rule: module docstring)."""
        inst = self.instance(instance_type)
        price = inst.hourly(spot)
        cpu_raw = (inst.vcpus or 0) * HOST_RATES["vcpu_usd_per_hour"]
        mem_raw = (inst.memory_gb or 0) * HOST_RATES["memory_usd_per_gb_hour"]
        host_raw = cpu_raw + mem_raw
        if not inst.is_gpu:
            if host_raw == 0:
                return {"gpu": 0.0, "cpu": price, "memory": 0.0}
            mem = max(0.0, price - price * cpu_raw / host_raw)  # no -1e-17 from rounding
            return {"gpu": 0.0, "cpu": price - mem, "memory": mem}
        if not inst.host_included or host_raw == 0:
            return {"gpu": price, "cpu": 0.0, "memory": 0.0}
        host = min(host_raw, HOST_SHARE_CAP * price)
        mem = max(0.0, host - host * cpu_raw / host_raw)
        return {"gpu": price - host, "cpu": host - mem, "memory": mem}

    # ------------------------------------------------------------------ one analysis

    def _check_device(self, inst: Instance, throughput: Throughput) -> list[str]:
        device = throughput.device or "unknown"
        if device == "cpu" and inst.is_gpu:
            raise ConfigError(
                f"the throughput ({throughput.source or 'given'}) was measured on a CPU; pricing it on GPU "
                f"instance '{inst.name}' would present a CPU figure as a GPU one. Price it on a CPU instance "
                "(c7i.large, m7i.xlarge, n2-standard-2), benchmark on the GPU, or give --rps as an estimate"
            )
        if device.startswith("gpu") and not inst.is_gpu:
            raise ConfigError(
                f"the throughput ({throughput.source or 'given'}) was measured on a GPU ({device[4:]}); "
                f"CPU instance '{inst.name}' would not reach it"
            )
        notes = []
        if device.startswith("gpu:") and inst.gpu_family and inst.gpu_family not in device.upper():
            notes.append(
                f"throughput measured on {device[4:]}, priced on {inst.gpu_count}x {inst.gpu}: the cost "
                "assumes the same throughput on that GPU"
            )
        if device == "unknown" and throughput.basis == MEASURED:
            notes.append(
                "the device that served the benchmark is not recorded; check that it matches the instance"
            )
        return notes

    def analyze(
        self,
        instance_type: str | Instance,
        training_hours: float | None = None,
        training_basis: str = MEASURED,
        training_source: str = "",
        throughput: Throughput | None = None,
        spot: bool = False,
    ) -> dict[str, Any]:
        """Training cost, serving cost and their breakdown by resource on one instance."""
        inst = self.instance(instance_type)
        rate = inst.hourly(spot)
        split = self.breakdown(inst, spot)
        notes = [n for n in (inst.note,) if n]
        if not inst.host_included:
            notes.append(f"{inst.provider} bills CPU and memory on top of this price; they are not included")
        out: dict[str, Any] = {
            "instance": {**inst.model_dump(), "gpu_family": inst.gpu_family},
            "pricing": {
                "usd_per_hour": rate,
                "spot": spot,
                "price_date": inst.price_date,
                "source": inst.source,
            },
            "training": None,
            "inference": None,
            "breakdown": {"rule": BREAKDOWN_RULE, "usd_per_hour": split},
            "notes": notes,
        }
        if training_hours is not None:
            if training_basis not in (MEASURED, ESTIMATED):
                raise ConfigError(f"training basis must be '{MEASURED}' or '{ESTIMATED}'")
            cost = self.calculate_training_cost(inst, training_hours, spot)
            out["training"] = {
                "hours": float(training_hours),
                "cost_usd": cost,
                "basis": training_basis,
                "source": training_source,
            }
            out["breakdown"]["training_usd"] = {k: v * training_hours for k, v in split.items()}
        if throughput is not None:
            notes += self._check_device(inst, throughput)
            inference: dict[str, Any] = {
                "requests_per_second": throughput.requests_per_second,
                "output_tokens_per_second": throughput.output_tokens_per_second,
                "cost_per_1k_requests_usd": None,
                "cost_per_1m_output_tokens_usd": None,
                "basis": throughput.basis,
                "source": throughput.source,
                "device": throughput.device,
            }
            if throughput.requests_per_second is not None:
                per_1k = self.calculate_inference_cost(inst, throughput.requests_per_second, spot)
                inference["cost_per_1k_requests_usd"] = per_1k
                out["breakdown"]["inference_per_1k_requests_usd"] = {
                    k: per_1k * v / rate for k, v in split.items()
                }
            if throughput.output_tokens_per_second is not None:
                inference["cost_per_1m_output_tokens_usd"] = self.cost_per_million_tokens(
                    inst, throughput.output_tokens_per_second, spot
                )
            out["inference"] = inference
        return out

    # ------------------------------------------------------------------ comparisons

    def estimated_training_hours(
        self, inst: Instance, tokens: float, params_b: float, method: str = "lora"
    ) -> tuple[float, str] | None:
        """Hours to train on `tokens` from the reference throughput of the instance's GPU, scaled by model
        size (linear DDP scaling over its GPUs assumed); None when there is no reference for that GPU."""
        ref = self.catalog.training_reference(inst.gpu_family)
        if ref is None or not inst.is_gpu:
            return None
        tok_s = ref.tokens_per_s * ref.params_b / params_b * inst.gpu_count
        source = (
            f"reference {ref.tokens_per_s:,.0f} tok/s on {ref.gpu} ({ref.source}), scaled to {params_b:g}B"
        )
        if method == "qlora":
            tok_s *= self.catalog.qlora_throughput_factor
            source += f", x{self.catalog.qlora_throughput_factor} for QLoRA"
        if inst.gpu_count > 1:
            source += f", x{inst.gpu_count} GPUs (linear scaling assumed)"
        return tokens / tok_s / 3600.0, source

    def compare_configurations(self, configs: list[dict[str, Any]]) -> dict[str, Any]:
        """Cost metrics for every configuration, in the order given (duplicates kept), and the cheapest.

        A config names `instance` and any of: `name`, `method` (lora/qlora), `precision` (bf16/4bit),
        `spot`, `training_hours` (+ `training_basis`, `training_source`), or `training_tokens` with
        `params_b` for an estimate from reference throughputs, and `requests_per_second` /
        `output_tokens_per_second` (+ `basis`, `source`, `device`)."""
        if not configs:
            raise ConfigError("compare needs at least one configuration")
        rows = []
        for i, cfg in enumerate(configs):
            if "instance" not in cfg:
                raise ConfigError(f"configuration {i + 1}: field 'instance' is required")
            inst = self.instance(cfg["instance"])
            spot = bool(cfg.get("spot", False))
            name = cfg.get("name") or " ".join(
                str(x) for x in (inst.name, cfg.get("method"), cfg.get("precision")) if x
            )
            hours, basis, source = cfg.get("training_hours"), cfg.get("training_basis", MEASURED), ""
            source = cfg.get("training_source", "")
            if hours is None and cfg.get("training_tokens") is not None:
                est = self.estimated_training_hours(
                    inst,
                    _positive("training_tokens", cfg["training_tokens"]),
                    _positive("params_b", cfg.get("params_b", 7.0)),
                    cfg.get("method", "lora"),
                )
                if est is not None:
                    hours, source = est
                    basis = ESTIMATED
            throughput = None
            if cfg.get("requests_per_second") is not None or cfg.get("output_tokens_per_second") is not None:
                throughput = Throughput(
                    cfg.get("requests_per_second"),
                    cfg.get("output_tokens_per_second"),
                    cfg.get("basis", MEASURED),
                    cfg.get("source", ""),
                    cfg.get("device", "unknown"),
                )
            analysis = self.analyze(inst, hours, basis, source, throughput, spot)
            inf = analysis["inference"] or {}
            rows.append(
                {
                    "index": i,
                    "name": name,
                    "instance": inst.name,
                    "provider": inst.provider,
                    "gpu": f"{inst.gpu_count}x {inst.gpu}" if inst.is_gpu else "CPU",
                    "method": cfg.get("method"),
                    "precision": cfg.get("precision"),
                    "usd_per_hour": analysis["pricing"]["usd_per_hour"],
                    "spot": spot,
                    "training_hours": hours,
                    "training_cost_usd": (analysis["training"] or {}).get("cost_usd"),
                    "training_basis": basis if hours is not None else None,
                    "training_source": source if hours is not None else None,
                    "requests_per_second": inf.get("requests_per_second"),
                    "output_tokens_per_second": inf.get("output_tokens_per_second"),
                    "cost_per_1k_requests_usd": inf.get("cost_per_1k_requests_usd"),
                    "cost_per_1m_output_tokens_usd": inf.get("cost_per_1m_output_tokens_usd"),
                    "inference_basis": inf.get("basis"),
                    "inference_source": inf.get("source"),
                    "breakdown_usd_per_hour": analysis["breakdown"]["usd_per_hour"],
                    "notes": analysis["notes"],
                }
            )
        return {"configs": rows, "cheapest": _cheapest(rows), "breakdown_rule": BREAKDOWN_RULE}


def _cheapest(rows: list[dict[str, Any]]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for key, label in (("training_cost_usd", "training"), ("cost_per_1k_requests_usd", "inference")):
        priced = [r for r in rows if r[key] is not None]
        out[label] = min(priced, key=lambda r: r[key])["name"] if priced else None
    return out
