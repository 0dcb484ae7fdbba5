"""Estimated serving throughput and cost on GPU instances, from measured references. Imports no torch.

    tuneforge cost gpus --bench runs/bench/results.json --instance c7i.large --top 8

    from tuneforge.cost.serving import estimate_serving_throughput
    est = estimate_serving_throughput(0.135, "A10G-24GB", load_catalog(), concurrency=16)
    est.output_tokens_per_second, est.basis   # "estimated: vLLM 0.26.0 Mistral-7B shape bf16 measured ..."

Why and how: a benchmark on this CPU machine says nothing about a GPU, so a GPU row is never computed from
it. Instead, a throughput measured on a GPU (catalog.yaml `serving_references`) is scaled:

    estimated tok/s = reference tok/s / reference GPUs
                      x target bandwidth / reference bandwidth        (catalog.yaml `gpus`, spec sheets)
                      x reference parameters / model parameters       (only when they differ)
                      x GPUs of the instance                          (one replica per GPU)
    estimated req/s = reference req/s scaled the same way, or estimated tok/s / the benchmark's output
                      tokens per request when that differs from the reference's (prefill ignored).

The reference: among GPU references of the same dtype (bf16), an exact model match when there is one;
otherwise those closest in parameter count (within 25% of the closest); among them, the same concurrency,
else the closest (with no concurrency asked for, the highest: the saturated throughput); then the closest
parameter count.

Bandwidth scaling holds because decode reads every weight once per step: it is memory-bandwidth-bound. It
ignores compute (prefill, and large batches that become compute-bound on GPUs with less compute per byte),
memory capacity (a smaller GPU has less room for the KV cache, so it may not reach the reference's batch)
and interconnect. Parameter scaling assumes the time per step is proportional to the bytes of weights read;
small models are bound by per-step overhead (scheduling, kernel launches, sampling, Python) instead, so a
figure scaled down from a 7B model to a 0.1B one is an upper bound, and the basis says so. A measured
reference of the same model (add one to catalog.yaml) removes that factor.

A GPU is skipped when the model's weights in bf16 (2 bytes per parameter) exceed 90% of one GPU's memory.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from tuneforge.cost.catalog import Catalog, Instance, ServingReference
from tuneforge.errors import ConfigError

FIT_FRACTION = 0.9
BYTES_PER_PARAMETER = {"bf16": 2, "fp16": 2}
SAME_SIZE = 1.25
"""References within this factor of the closest parameter count count as the same size."""
SAME_PARAMS = 0.02
"""Parameter counts within 2% are the same: no parameter scaling."""
METHOD = (
    "GPU rows are estimates, never the benchmark: a throughput measured with vLLM on a GPU (catalog.yaml "
    "serving_references) scaled by the memory-bandwidth ratio of the GPUs (decode is bandwidth-bound; "
    "compute, KV-cache capacity and interconnect are ignored) and, for another model size, by the "
    "parameter ratio (an upper bound for small models, which are overhead-bound); one replica per GPU; "
    f"GPUs that cannot hold the bf16 weights in {FIT_FRACTION:.0%} of their memory are skipped"
)


@dataclass(frozen=True)
class ServingEstimate:
    """An estimated serving throughput on one GPU model (times its count) and how it was reached."""

    requests_per_second: float | None
    """Estimated completed requests per second, all GPUs together."""
    output_tokens_per_second: float | None
    """Estimated generated tokens per second, all GPUs together."""
    basis: str
    """'estimated: <reference>, scaled by ...': what a reader needs to judge the figure."""
    reference: ServingReference
    """The measurement it is scaled from."""
    gpu: str
    """Target GPU model."""
    gpu_count: int
    """Replicas (one per GPU)."""
    bandwidth_ratio: float
    """Target / reference memory bandwidth."""
    params_ratio: float
    """Reference / model parameters (1.0 when they are the same)."""
    upper_bound: bool
    """True when scaled down to a smaller model: small models are overhead-bound."""


def weights_gb(params_b: float, dtype: str = "bf16") -> float:
    """GB (10^9 bytes) of the weights."""
    return params_b * BYTES_PER_PARAMETER.get(dtype, 2)


def fits(params_b: float, gpu_memory_gb: float, dtype: str = "bf16") -> bool:
    """Whether one GPU holds the weights in FIT_FRACTION of its memory (the rest is for the KV cache)."""
    return weights_gb(params_b, dtype) <= FIT_FRACTION * gpu_memory_gb


def _model_key(name: str) -> str:
    base = name.strip().lower().rsplit("/", 1)[-1].removesuffix(" shape")
    return re.sub(r"(-instruct.*|-chat.*|-hf|-base)$", "", base)


def same_model(ref: ServingReference, model: str | None) -> bool:
    return bool(model) and _model_key(ref.model) == _model_key(model or "")


def pick_reference(
    catalog: Catalog,
    params_b: float,
    concurrency: int | None = None,
    model: str | None = None,
    dtype: str = "bf16",
    gpu: str | None = None,
) -> ServingReference:
    """The GPU reference to scale from (order of preference: module docstring)."""
    candidates = [
        r
        for r in catalog.serving_references
        if r.gpu and r.dtype == dtype and catalog.gpu_spec(r.gpu) is not None and any(r.throughputs())
    ]
    if not candidates:
        raise ConfigError(
            f"no {dtype} serving reference measured on a GPU of the catalog's `gpus` section; add one under "
            "serving_references (tuneforge/cost/catalog.yaml shows the shape)"
        )
    pool = [r for r in candidates if same_model(r, model)] or candidates

    def dist(r: ServingReference) -> float:
        return abs(math.log(r.params_b / params_b))

    closest = min(dist(r) for r in pool)
    pool = [r for r in pool if dist(r) <= closest + math.log(SAME_SIZE)]
    target_gpu = (gpu or "").upper()

    def rank(r: ServingReference) -> tuple:
        conc = (
            (r.concurrency != concurrency, abs(math.log(r.concurrency / concurrency)))
            if concurrency
            else (0, -r.concurrency)
        )
        return (*conc, dist(r), r.gpu.upper() != target_gpu if r.gpu else True)

    return min(pool, key=rank)


def estimate_serving_throughput(
    params_b: float,
    gpu: str | Instance,
    catalog: Catalog,
    concurrency: int | None = None,
    output_len: float | None = None,
    model: str | None = None,
    dtype: str = "bf16",
) -> ServingEstimate | None:
    """Serving throughput of a `params_b` model on `gpu` (a GPU model of the catalog, or an instance: then
    one replica per GPU), scaled from the closest measured reference; None when one GPU cannot hold the
    weights. `output_len` is the generated tokens per request of the workload to price (default: the
    reference's); `model` prefers a reference of that model. Raises ConfigError when the catalog has no
    bandwidth for the GPU or no reference."""
    if not (isinstance(params_b, (int, float)) and params_b > 0 and math.isfinite(params_b)):
        raise ConfigError(f"params_b must be a number > 0, got {params_b!r}")
    if isinstance(gpu, Instance):
        if not gpu.is_gpu:
            raise ConfigError(f"instance '{gpu.name}' has no GPU")
        gpu_name, count, memory = gpu.gpu or "", gpu.gpu_count, gpu.gpu_memory_gb
    else:
        gpu_name, count, memory = gpu, 1, None
    spec = catalog.gpu_spec(gpu_name)
    if spec is None:
        raise ConfigError(
            f"no memory bandwidth for GPU '{gpu_name}' in the catalog; add it under `gpus` "
            "(name, memory_bandwidth_gbps, memory_gb, source)"
        )
    memory = memory or spec.memory_gb
    if not fits(params_b, memory, dtype):
        return None
    ref = pick_reference(catalog, params_b, concurrency, model, dtype, gpu_name)
    ref_spec = catalog.gpu_spec(ref.gpu)
    assert ref_spec is not None  # pick_reference keeps only references with a spec
    bw = spec.memory_bandwidth_gbps / ref_spec.memory_bandwidth_gbps
    scale_params = abs(ref.params_b / params_b - 1) > SAME_PARAMS
    p_ratio = ref.params_b / params_b if scale_params else 1.0
    factor = bw * p_ratio * count / ref.gpu_count
    ref_rps, ref_tok = ref.throughputs()
    tok = ref_tok * factor if ref_tok is not None else None
    rps = ref_rps * factor if ref_rps is not None else None
    reshaped = bool(
        output_len and ref.output_len and tok is not None and abs(output_len - ref.output_len) > 0.5
    )
    if reshaped:
        rps = tok / output_len  # type: ignore[operator]

    version = f" {ref.engine_version}" if ref.engine_version else ""
    where = f"{ref.gpu_count}x {ref.gpu}" if ref.gpu_count > 1 else ref.gpu
    batch = f"batch {ref.concurrency}"
    if concurrency and ref.concurrency != concurrency:
        batch += f", the closest measured to {concurrency}"
    parts = [f"estimated: {ref.engine}{version} {ref.model} {ref.dtype} measured on {where} ({batch})"]
    if (ref.gpu or "").upper() == gpu_name.upper():
        parts.append("same GPU")
    else:
        parts.append(f"scaled by memory bandwidth {ref.gpu}->{gpu_name} (x{bw:.2g})")
    if scale_params:
        parts.append(
            f"parameters {ref.params_b:g}B->{params_b:.3g}B (x{p_ratio:.3g}"
            + (", an upper bound: small models are overhead-bound)" if p_ratio > 1 else ")")
        )
    if count > 1:
        parts.append(f"x{count} GPUs (one replica per GPU)")
    if reshaped:
        parts.append(
            f"requests of {output_len:.0f} output tokens instead of {ref.output_len} (prefill ignored)"
        )
    return ServingEstimate(
        requests_per_second=rps,
        output_tokens_per_second=tok,
        basis=", ".join(parts[:1]) + (", " if len(parts) > 1 else "") + ", ".join(parts[1:]),
        reference=ref,
        gpu=gpu_name,
        gpu_count=count,
        bandwidth_ratio=bw,
        params_ratio=p_ratio,
        upper_bound=p_ratio > 1,
    )


def estimate_serving_costs(
    analyzer,
    params_b: float,
    concurrency: int | None = None,
    output_len: float | None = None,
    model: str | None = None,
    spot: bool = False,
    top: int | None = None,
) -> dict[str, Any]:
    """Estimated cost per 1K requests and per 1M output tokens on every GPU instance of the analyzer's
    catalog, cheapest first (`top` of them), with the instances skipped and why."""
    from tuneforge.cost.analyzer import ESTIMATED, Throughput

    rows, skipped = [], []
    for inst in analyzer.catalog.instances.values():
        if not inst.is_gpu:
            continue
        try:
            est = estimate_serving_throughput(
                params_b, inst, analyzer.catalog, concurrency, output_len, model
            )
            if est is None:
                skipped.append(
                    {
                        "instance": inst.name,
                        "reason": f"{weights_gb(params_b):.3g} GB of bf16 weights exceed {FIT_FRACTION:.0%} "
                        f"of {inst.gpu}'s {inst.gpu_memory_gb:g} GB",
                    }
                )
                continue
            analysis = analyzer.analyze(
                inst,
                throughput=Throughput(
                    est.requests_per_second,
                    est.output_tokens_per_second,
                    ESTIMATED,
                    est.basis,
                    f"gpu:{inst.gpu}",
                ),
                spot=spot,
            )
        except ConfigError as e:  # no bandwidth for this GPU, no spot price
            skipped.append({"instance": inst.name, "reason": str(e)})
            continue
        inf, ref = analysis["inference"], est.reference
        rows.append(
            {
                "basis": ESTIMATED,
                "instance": inst.name,
                "provider": inst.provider,
                "hardware": f"{inst.gpu_count}x {inst.gpu}",
                "usd_per_hour": analysis["pricing"]["usd_per_hour"],
                "requests_per_second": inf["requests_per_second"],
                "output_tokens_per_second": inf["output_tokens_per_second"],
                "cost_per_1k_requests_usd": inf["cost_per_1k_requests_usd"],
                "cost_per_1m_output_tokens_usd": inf["cost_per_1m_output_tokens_usd"],
                "how": est.basis,
                "upper_bound": est.upper_bound,
                "reference": f"{ref.model} on {ref.gpu}, batch {ref.concurrency}",
                "inference_per_1k_requests_usd": analysis["breakdown"].get("inference_per_1k_requests_usd"),
            }
        )

    def cost(r: dict[str, Any]) -> tuple[float, float]:
        per_1k, per_1m = r["cost_per_1k_requests_usd"], r["cost_per_1m_output_tokens_usd"]
        return (per_1k if per_1k is not None else math.inf, per_1m if per_1m is not None else math.inf)

    rows.sort(key=cost)
    shown = rows if top is None else rows[: max(top, 0)]
    return {
        "params_b": params_b,
        "model": model,
        "concurrency": concurrency,
        "output_len": output_len,
        "method": METHOD,
        "rows": shown,
        "not_shown": len(rows) - len(shown),
        "skipped": skipped,
    }


def params_from_model_name(name: str | None) -> float | None:
    """Billions of parameters of a model named `name`: from the config of a known model, else from a size
    in its name (SmolLM2-135M -> 0.135, Llama-3-8B -> 8); None when neither says."""
    if not name:
        return None
    from tuneforge.models.shape import KNOWN_SHAPES, ModelShape

    key = _model_key(name)
    for known, config in KNOWN_SHAPES.items():
        if known.lower() == name.lower() or _model_key(known) == key:
            return ModelShape.from_config(config).parameter_count() / 1e9
    sizes = re.findall(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)([bm])(?![a-z])", name.lower().rsplit("/", 1)[-1])
    if not sizes:
        return None
    value, unit = sizes[-1]
    return float(value) / (1000.0 if unit == "m" else 1.0)
