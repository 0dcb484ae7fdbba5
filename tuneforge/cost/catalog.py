"""The instance catalog: prices (with dates and sources) and reference throughputs. Imports no torch.

    from tuneforge.cost.catalog import load_catalog
    catalog = load_catalog(["my-prices.yaml"])      # the shipped catalog.yaml, then yours (yours wins)
    catalog.get("g5.xlarge").on_demand_usd_per_hour

A user file has the shape of catalog.yaml (any of its sections). A bad entry fails with the file, the
entry and the field named; an unknown instance name fails with the closest names.

Sections: `instances` (prices), `gpus` (memory and memory bandwidth of each GPU model, for serving
estimates), `training_references`, `serving_references` (measured throughputs; tuneforge.cost.serving scales
them to other GPUs and model sizes) and `qlora_throughput_factor`.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tuneforge.errors import ConfigError

BUILTIN = "catalog.yaml"
SECTIONS = ("instances", "gpus", "training_references", "serving_references", "qlora_throughput_factor")


@dataclass(frozen=True)
class Instance:
    provider: str
    """aws, gcp, azure, lambda, runpod, modal, or anything for your own machines."""
    name: str
    """What --instance takes; unique in the catalog."""
    on_demand_usd_per_hour: float
    """List price of the whole instance, USD per hour."""
    gpu: str | None = None
    """GPU model, family first (H100-SXM-80GB); None for a CPU machine."""
    gpu_count: int = 0
    """GPUs in the instance."""
    gpu_memory_gb: float | None = None
    """Memory per GPU, GB."""
    vcpus: int | None = None
    """Host vCPUs (None where the provider does not fix them)."""
    memory_gb: float | None = None
    """Host RAM, GB."""
    spot_usd_per_hour: float | None = None
    """Spot / interruptible price, or None."""
    host_included: bool = True
    """False where CPU and memory are billed on top of this price (Modal)."""
    region: str | None = None
    """Region the price is for."""
    price_date: str | None = None
    """When the price was read (YYYY-MM-DD)."""
    source: str | None = None
    """Where the price comes from (a URL)."""
    note: str | None = None
    """How sure the price is, and what it leaves out."""
    origin: str = "builtin"
    """The catalog file the entry came from."""

    @property
    def gpu_family(self) -> str | None:
        """H100 for H100-SXM-80GB: the key of the reference throughputs."""
        return self.gpu.split("-")[0].upper() if self.gpu else None

    @property
    def total_gpu_memory_gb(self) -> float:
        return (self.gpu_memory_gb or 0.0) * self.gpu_count

    @property
    def is_gpu(self) -> bool:
        return self.gpu_count > 0

    def hourly(self, spot: bool = False) -> float:
        """The price per hour; with spot=True the spot price (an error when there is none)."""
        if not spot:
            return self.on_demand_usd_per_hour
        if self.spot_usd_per_hour is None:
            raise ConfigError(
                f"instance '{self.name}' has no spot price in the catalog; drop --spot or add "
                f"spot_usd_per_hour in your --catalog file"
            )
        return self.spot_usd_per_hour

    def describe(self) -> str:
        hw = f"{self.gpu_count}x {self.gpu}" if self.is_gpu else "CPU only"
        host = f", {self.vcpus} vCPU" if self.vcpus else ""
        return f"{self.provider} {self.name} ({hw}{host})"


@dataclass(frozen=True)
class TrainingReference:
    gpu: str
    """GPU family the figure was measured on (H100, A100)."""
    tokens_per_s: float
    """Training tokens per second per GPU."""
    params_b: float
    """Parameters of the model it was measured with, in billions."""
    method: str = "lora"
    """lora or qlora."""
    peak_memory_gb: float | None = None
    """Peak GPU memory of that run."""
    setup: str = ""
    """Model, sequence length, batch, precision, software."""
    source: str = ""
    """Who measured it and where it is recorded."""


@dataclass(frozen=True)
class GpuSpec:
    name: str
    """GPU model as instances name it (H100-SXM-80GB); matched case-insensitively."""
    memory_bandwidth_gbps: float
    """Memory bandwidth from the vendor's spec sheet, GB/s (10^9 bytes per second)."""
    memory_gb: float
    """Memory of one GPU, GB, as the spec sheet gives it."""
    source: str
    """Where the figures come from (a URL or document)."""
    note: str | None = None
    """How sure the figure is, and anything a user should know (no bf16 on T4)."""
    origin: str = "builtin"
    """The catalog file the entry came from."""


@dataclass(frozen=True)
class ServingReference:
    """One measured serving throughput: what served what, how hard it was loaded, and how fast it went."""

    model: str
    """Model name or shape (Mistral-7B shape, HuggingFaceTB/SmolLM2-135M-Instruct)."""
    params_b: float
    """Its parameters, billions."""
    gpu: str | None
    """GPU model it ran on, as in `gpus` (H100-SXM-80GB); null for a CPU measurement (never scaled)."""
    dtype: str
    """Weights as served: bf16, fp16, awq-4bit."""
    engine: str
    """Serving engine (vLLM)."""
    engine_version: str | None
    """Its version (0.26.0)."""
    concurrency: int
    """Requests in flight (the batch of an offline run)."""
    input_len: int | None
    """Prompt tokens per request."""
    output_len: int | None
    """Generated tokens per request (with ignore_eos, every request generates exactly this many)."""
    request_throughput_rps: float | None
    """Completed requests per second."""
    output_tokens_per_s: float | None
    """Generated tokens per second, all requests together."""
    date: str | None
    """When it was measured (YYYY-MM-DD)."""
    source: str
    """Who measured it and where it is recorded."""
    ms_per_token: float | None = None
    """Per-stream decode time, at concurrency 1."""
    gpu_count: int = 1
    """GPUs the figure was measured on (the estimate divides by it)."""
    setup: str = ""
    """Anything else: weights (random or real), offline or server, kernels."""

    def throughputs(self) -> tuple[float | None, float | None]:
        """(requests/s, output tokens/s), each derived from the other through output_len when missing."""
        rps, tok_s = self.request_throughput_rps, self.output_tokens_per_s
        if tok_s is None and self.ms_per_token and self.concurrency == 1:
            tok_s = 1000.0 / self.ms_per_token
        if self.output_len:
            if rps is None and tok_s is not None:
                rps = tok_s / self.output_len
            if tok_s is None and rps is not None:
                tok_s = rps * self.output_len
        return rps, tok_s

    def key(self) -> tuple:
        """Entries of a user file with the same key replace the shipped one."""
        return (
            self.model,
            (self.gpu or "").upper(),
            self.dtype,
            self.engine,
            self.engine_version,
            self.concurrency,
            self.input_len,
            self.output_len,
        )


@dataclass
class Catalog:
    instances: dict[str, Instance] = field(default_factory=dict)
    gpus: dict[str, GpuSpec] = field(default_factory=dict)
    training_references: list[TrainingReference] = field(default_factory=list)
    serving_references: list[ServingReference] = field(default_factory=list)
    qlora_throughput_factor: float = 0.93
    files: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        return list(self.instances)

    def get(self, name: str) -> Instance:
        """The instance called `name` (case-insensitive), or an error that names the closest ones."""
        if name in self.instances:
            return self.instances[name]
        lower = {n.lower(): n for n in self.instances}
        if name.lower() in lower:
            return self.instances[lower[name.lower()]]
        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown instance type '{name}'{hint} (`tuneforge cost --list` shows the catalog; "
            "--price-per-hour prices a machine of your own)"
        )

    def gpu_spec(self, gpu: str | None) -> GpuSpec | None:
        """The spec of GPU model `gpu` (case-insensitive), or None when the catalog has none."""
        if not gpu:
            return None
        return self.gpus.get(gpu.upper())

    def training_reference(self, gpu_family: str | None) -> TrainingReference | None:
        if gpu_family is None:
            return None
        return next((r for r in self.training_references if r.gpu.upper() == gpu_family.upper()), None)


# --------------------------------------------------------------------------- validation


def _closest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1)
    return f"; did you mean '{match[0]}'?" if match else f"; valid fields: {', '.join(valid)}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_entry(cls, raw: Any, where: str, origin: str):
    """Build a `cls` from a mapping, naming the field at fault in every error."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "origin"}
    required = [
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and "None" not in str(f.type)
    ]
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{where}: unknown field '{key}'{_closest(str(key), list(fields))}")
    for key in required:
        if raw.get(key) is None:
            raise ConfigError(f"{where}: field '{key}' is required")
    for key, f in fields.items():  # nullable fields without a default may be left out
        if key not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raw = {**raw, key: None}
    values = dict(raw)
    for key, value in raw.items():
        hint = str(fields[key].type)
        if value is None:
            if "None" not in hint:
                raise ConfigError(f"{where}: field '{key}' must not be null")
            continue
        if "float" in hint:
            if not _is_number(value):
                raise ConfigError(f"{where}: field '{key}' must be a number, got {value!r}")
            if value < 0 or (
                key.endswith(("per_hour", "per_s", "rps", "params_b", "gbps", "memory_gb")) and value <= 0
            ):
                raise ConfigError(f"{where}: field '{key}' must be > 0, got {value!r}")
        elif "int" in hint:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{where}: field '{key}' must be a whole number >= 0, got {value!r}")
        elif "bool" in hint:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: field '{key}' must be true or false, got {value!r}")
        elif "str" in hint:
            values[key] = str(value)  # YAML reads 2025-06-05 as a date
    if "origin" in {f.name for f in dataclasses.fields(cls)}:
        values["origin"] = origin
    return cls(**values)


def _check_instance(raw: Any, where: str, origin: str) -> Instance:
    inst = _check_entry(Instance, raw, where, origin)
    if (inst.gpu is None) != (inst.gpu_count == 0):
        raise ConfigError(
            f"{where}: field 'gpu_count' must be 0 exactly when 'gpu' is null, got gpu={inst.gpu!r}, "
            f"gpu_count={inst.gpu_count}"
        )
    if inst.gpu is not None and not inst.gpu_memory_gb:
        raise ConfigError(f"{where}: field 'gpu_memory_gb' is required for a GPU instance")
    if inst.vcpus == 0:
        raise ConfigError(f"{where}: field 'vcpus' must be >= 1 or null")
    return inst


def _check_serving(raw: Any, where: str, origin: str) -> ServingReference:
    ref = _check_entry(ServingReference, raw, where, origin)
    if ref.request_throughput_rps is None and ref.output_tokens_per_s is None and ref.ms_per_token is None:
        raise ConfigError(
            f"{where}: give 'request_throughput_rps' or 'output_tokens_per_s' "
            "(or 'ms_per_token' at concurrency 1)"
        )
    if ref.concurrency < 1 or ref.gpu_count < 1:
        raise ConfigError(f"{where}: fields 'concurrency' and 'gpu_count' must be >= 1")
    return ref


def parse_catalog(data: Any, origin: str, into: Catalog | None = None) -> Catalog:
    """Validate one catalog document and merge it into `into` (its entries replace same-named ones)."""
    catalog = into or Catalog()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a catalog is a mapping with {', '.join(SECTIONS)}")
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(f"{origin}: unknown section '{key}'{_closest(str(key), list(SECTIONS))}")
    seen: set[str] = set()
    for i, raw in enumerate(data.get("instances") or []):
        name = raw.get("name") if isinstance(raw, dict) else None
        where = f"{origin}: instances[{i}]" + (f" ({name})" if name else "")
        inst = _check_instance(raw, where, origin)
        if inst.name in seen:
            raise ConfigError(f"{where}: field 'name': '{inst.name}' appears twice in this file")
        seen.add(inst.name)
        catalog.instances[inst.name] = inst
    for i, raw in enumerate(data.get("gpus") or []):
        name = raw.get("name") if isinstance(raw, dict) else None
        spec = _check_entry(GpuSpec, raw, f"{origin}: gpus[{i}]" + (f" ({name})" if name else ""), origin)
        catalog.gpus[spec.name.upper()] = spec
    training = [
        _check_entry(TrainingReference, raw, f"{origin}: training_references[{i}]", origin)
        for i, raw in enumerate(data.get("training_references") or [])
    ]
    if training:
        keys = {(e.gpu, e.method) for e in training}
        catalog.training_references[:] = [
            e for e in catalog.training_references if (e.gpu, e.method) not in keys
        ]
        catalog.training_references.extend(training)
    serving = [
        _check_serving(raw, f"{origin}: serving_references[{i}]", origin)
        for i, raw in enumerate(data.get("serving_references") or [])
    ]
    if serving:
        keys = {e.key() for e in serving}
        catalog.serving_references[:] = [e for e in catalog.serving_references if e.key() not in keys]
        catalog.serving_references.extend(serving)
    if "qlora_throughput_factor" in data:
        factor = data["qlora_throughput_factor"]
        if not _is_number(factor) or not 0 < factor <= 1:
            raise ConfigError(f"{origin}: qlora_throughput_factor must be a number in (0, 1], got {factor!r}")
        catalog.qlora_throughput_factor = float(factor)
    catalog.files.append(origin)
    return catalog


def _read(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"catalog {path}: cannot read it ({e.strerror or e})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"catalog {path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None


def load_catalog(extra: list[str | Path] | None = None) -> Catalog:
    """The shipped catalog, then each file of `extra` merged over it in order."""
    builtin = resources.files("tuneforge.cost").joinpath(BUILTIN)
    catalog = parse_catalog(yaml.safe_load(builtin.read_text()), "builtin " + BUILTIN)
    for path in extra or []:
        parse_catalog(_read(Path(path)), str(path), catalog)
    return catalog


def custom_instance(
    name: str,
    usd_per_hour: float,
    gpu: str | None = None,
    gpu_count: int | None = None,
    gpu_memory_gb: float | None = None,
    vcpus: int | None = None,
    memory_gb: float | None = None,
) -> Instance:
    """A machine of your own at a given price (`--price-per-hour`)."""
    if not _is_number(usd_per_hour) or usd_per_hour <= 0:
        raise ConfigError(f"--price-per-hour must be > 0, got {usd_per_hour!r}")
    count = gpu_count if gpu_count is not None else (1 if gpu else 0)
    raw = {
        "provider": "custom",
        "name": name,
        "on_demand_usd_per_hour": float(usd_per_hour),
        "gpu": gpu,
        "gpu_count": count,
        "gpu_memory_gb": gpu_memory_gb if gpu else None,
        "vcpus": vcpus,
        "memory_gb": memory_gb,
        "source": "given on the command line",
        "note": "price given by the user",
    }
    if gpu and not gpu_memory_gb:
        raw["gpu_memory_gb"] = 80.0 if "80" in gpu else 24.0
        raw["note"] += f"; GPU memory assumed {raw['gpu_memory_gb']:g} GB"
    return _check_instance(raw, f"custom instance '{name}'", "command line")
