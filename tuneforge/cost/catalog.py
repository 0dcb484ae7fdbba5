"""The instance catalog: prices (with dates and sources) and reference throughputs. Imports no torch.

    from tuneforge.cost.catalog import load_catalog
    catalog = load_catalog(["my-prices.yaml"])      # the shipped catalog.yaml, then yours (yours wins)
    catalog.get("g5.xlarge").on_demand_usd_per_hour

A user file has the shape of catalog.yaml (any of its sections). Each entry is a frozen pydantic model:
types are strict (a number is not text, 1.5 is not a whole number, "3" is not a number; a YAML date such
as 2025-06-05 is read as the text "2025-06-05"), bounds are declared on the fields, unknown fields are
refused, and the rules across fields are model validators. A bad entry fails with the file, the entry and
the field named (an unknown field with the closest valid one); an unknown instance name fails with the
closest names.

Sections: `instances` (prices), `gpus` (memory and memory bandwidth of each GPU model, for serving
estimates), `training_references`, `serving_references` (measured throughputs; tuneforge.cost.serving scales
them to other GPUs and model sizes) and `qlora_throughput_factor`. The module is longer than most because
every field carries its docstring: together they are the catalog format's documentation.
"""

from __future__ import annotations

import datetime
import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from tuneforge.errors import ConfigError

BUILTIN = "catalog.yaml"
SECTIONS = ("instances", "gpus", "training_references", "serving_references", "qlora_throughput_factor")
LOADER_FIELDS = ("origin",)  # set by the loader, never by a catalog file
CUSTOM_FLAGS = {  # the fields of `custom_instance` as the command line names them
    "on_demand_usd_per_hour": "--price-per-hour",
    "gpu": "--gpu",
    "gpu_count": "--gpu-count",
    "gpu_memory_gb": "--gpu-memory-gb",
    "vcpus": "--vcpus",
    "memory_gb": "--memory-gb",
}
QLORA_FACTOR = TypeAdapter(Annotated[float, Field(gt=0, le=1, strict=True, allow_inf_nan=False)])


class _Entry(BaseModel):
    """One catalog entry: strict types, declared bounds, no unknown fields, immutable."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, allow_inf_nan=False, use_attribute_docstrings=True
    )

    @field_validator("*", mode="before")
    @classmethod
    def _dates_are_text(cls, value: Any) -> Any:
        """YAML reads an unquoted 2025-06-05 as a date: it is the text "2025-06-05"."""
        return str(value) if isinstance(value, datetime.date) else value


class Instance(_Entry):
    provider: str
    """aws, gcp, azure, lambda, runpod, modal, or anything for your own machines."""
    name: str
    """What `tuneforge cost instance NAME` and --instance take; unique in the catalog."""
    on_demand_usd_per_hour: PositiveFloat
    """List price of the whole instance, USD per hour."""
    gpu: str | None = None
    """GPU model, family first (H100-SXM-80GB); None for a CPU machine."""
    gpu_count: NonNegativeInt = 0
    """GPUs in the instance."""
    gpu_memory_gb: PositiveFloat | None = None
    """Memory per GPU, GB."""
    vcpus: Annotated[int, Field(ge=1)] | None = None
    """Host vCPUs (None where the provider does not fix them)."""
    memory_gb: PositiveFloat | None = None
    """Host RAM, GB."""
    spot_usd_per_hour: PositiveFloat | None = None
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

    @model_validator(mode="after")
    def _gpu_fields_agree(self) -> Instance:
        if (self.gpu is None) != (self.gpu_count == 0):
            raise ValueError(
                f"field 'gpu_count' must be 0 exactly when 'gpu' is null, got gpu={self.gpu!r}, "
                f"gpu_count={self.gpu_count}"
            )
        if self.gpu is not None and self.gpu_memory_gb is None:
            raise ValueError("field 'gpu_memory_gb' is required for a GPU instance")
        return self

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


class TrainingReference(_Entry):
    gpu: str
    """GPU family the figure was measured on (H100, A100)."""
    tokens_per_s: PositiveFloat
    """Training tokens per second per GPU."""
    params_b: PositiveFloat
    """Parameters of the model it was measured with, in billions."""
    method: str = "lora"
    """lora or qlora."""
    peak_memory_gb: PositiveFloat | None = None
    """Peak GPU memory of that run."""
    setup: str = ""
    """Model, sequence length, batch, precision, software."""
    source: str = ""
    """Who measured it and where it is recorded."""


class GpuSpec(_Entry):
    name: str
    """GPU model as instances name it (H100-SXM-80GB); matched case-insensitively."""
    memory_bandwidth_gbps: PositiveFloat
    """Memory bandwidth from the vendor's spec sheet, GB/s (10^9 bytes per second)."""
    memory_gb: PositiveFloat
    """Memory of one GPU, GB, as the spec sheet gives it."""
    source: str
    """Where the figures come from (a URL or document)."""
    note: str | None = None
    """How sure the figure is, and anything a user should know (no bf16 on T4)."""
    origin: str = "builtin"
    """The catalog file the entry came from."""


class ServingReference(_Entry):
    """One measured serving throughput: what served what, how hard it was loaded, and how fast it went."""

    model: str
    """Model name or shape (Mistral-7B shape, HuggingFaceTB/SmolLM2-135M-Instruct)."""
    params_b: PositiveFloat
    """Its parameters, billions."""
    gpu: str | None = None
    """GPU model it ran on, as in `gpus` (H100-SXM-80GB); null for a CPU measurement (never scaled)."""
    dtype: str
    """Weights as served: bf16, fp16, awq-4bit."""
    engine: str
    """Serving engine (vLLM)."""
    engine_version: str | None = None
    """Its version (0.26.0)."""
    concurrency: int = Field(ge=1)
    """Requests in flight (the batch of an offline run)."""
    input_len: NonNegativeInt | None = None
    """Prompt tokens per request."""
    output_len: NonNegativeInt | None = None
    """Generated tokens per request (with ignore_eos, every request generates exactly this many)."""
    request_throughput_rps: PositiveFloat | None = None
    """Completed requests per second."""
    output_tokens_per_s: PositiveFloat | None = None
    """Generated tokens per second, all requests together."""
    date: str | None = None
    """When it was measured (YYYY-MM-DD)."""
    source: str
    """Who measured it and where it is recorded."""
    ms_per_token: PositiveFloat | None = None
    """Per-stream decode time, at concurrency 1."""
    gpu_count: int = Field(1, ge=1)
    """GPUs the figure was measured on (the estimate divides by it)."""
    setup: str = ""
    """Anything else: weights (random or real), offline or server, kernels."""

    @model_validator(mode="after")
    def _has_a_throughput(self) -> ServingReference:
        if (
            self.request_throughput_rps is None
            and self.output_tokens_per_s is None
            and self.ms_per_token is None
        ):
            raise ValueError(
                "give 'request_throughput_rps' or 'output_tokens_per_s' (or 'ms_per_token' at concurrency 1)"
            )
        return self

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
            f"unknown instance type '{name}'{hint} (`tuneforge cost catalog` shows the catalog; "
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


RULES = {
    "float_type": "must be a number",
    "int_type": "must be a whole number",
    "bool_type": "must be true or false",
    "string_type": "must be text (quote it in YAML)",
    "finite_number": "must be a finite number",
    "greater_than": "must be > {gt:g}",
    "greater_than_equal": "must be >= {ge:g}",
}


def _unknown(key: str, cls: type[BaseModel]) -> str:
    valid = [n for n in cls.model_fields if n not in LOADER_FIELDS]
    return f"unknown field '{key}'{_closest(key, valid)}"


def config_error(err: ValidationError, where: str, cls: type[BaseModel], labels: dict | None = None):
    """The ConfigError for the first problem of `err` (an unknown field first, then a missing one): `where`,
    the field (or its label, e.g. a command-line flag), what it must be and what it got."""
    e = min(err.errors(), key=lambda e: {"extra_forbidden": 0, "missing": 1}.get(e["type"], 2))
    if not e["loc"]:  # a rule across fields (a model validator): its message names them
        return ConfigError(f"{where}: {e['ctx']['error'] if 'error' in e.get('ctx', {}) else e['msg']}")
    key, value = str(e["loc"][0]), e.get("input")
    if e["type"] == "extra_forbidden":
        return ConfigError(f"{where}: {_unknown(key, cls)}")
    name, spec = (labels or {}).get(key, f"field '{key}'"), cls.model_fields[key]
    if e["type"] == "missing" or (value is None and spec.is_required()):
        return ConfigError(f"{where}: {name} is required")
    if value is None:
        return ConfigError(f"{where}: {name} must not be null")
    rule = RULES[e["type"]].format(**e.get("ctx", {})) if e["type"] in RULES else e["msg"]
    nullable = not spec.is_required() and spec.default is None
    return ConfigError(f"{where}: {name} {rule}{' or null' if nullable else ''}, got {value!r}")


def _entry(cls: type[_Entry], raw: Any, where: str, origin: str, labels: dict | None = None):
    """A `cls` from one mapping of a catalog file, or a ConfigError naming `where` and the field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {type(raw).__name__}")
    for key in raw:
        if key in LOADER_FIELDS:  # set by the loader: unknown to a file
            raise ConfigError(f"{where}: {_unknown(key, cls)}")
    try:
        return cls.model_validate({**raw, "origin": origin} if "origin" in cls.model_fields else raw)
    except ValidationError as e:
        raise config_error(e, where, cls, labels) from None


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
        inst = _entry(Instance, raw, where, origin)
        if inst.name in seen:
            raise ConfigError(f"{where}: field 'name': '{inst.name}' appears twice in this file")
        seen.add(inst.name)
        catalog.instances[inst.name] = inst
    for i, raw in enumerate(data.get("gpus") or []):
        name = raw.get("name") if isinstance(raw, dict) else None
        spec = _entry(GpuSpec, raw, f"{origin}: gpus[{i}]" + (f" ({name})" if name else ""), origin)
        catalog.gpus[spec.name.upper()] = spec
    training = [
        _entry(TrainingReference, raw, f"{origin}: training_references[{i}]", origin)
        for i, raw in enumerate(data.get("training_references") or [])
    ]
    if training:
        keys = {(e.gpu, e.method) for e in training}
        catalog.training_references[:] = [
            e for e in catalog.training_references if (e.gpu, e.method) not in keys
        ]
        catalog.training_references.extend(training)
    serving = [
        _entry(ServingReference, raw, f"{origin}: serving_references[{i}]", origin)
        for i, raw in enumerate(data.get("serving_references") or [])
    ]
    if serving:
        keys = {e.key() for e in serving}
        catalog.serving_references[:] = [e for e in catalog.serving_references if e.key() not in keys]
        catalog.serving_references.extend(serving)
    if "qlora_throughput_factor" in data:
        factor = data["qlora_throughput_factor"]
        try:
            catalog.qlora_throughput_factor = float(QLORA_FACTOR.validate_python(factor))
        except ValidationError:
            raise ConfigError(
                f"{origin}: qlora_throughput_factor must be a number in (0, 1], got {factor!r}"
            ) from None
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
    """A machine of your own at a given price (`--price-per-hour`); a bad value names its flag."""
    count = gpu_count if gpu_count is not None else (1 if gpu else 0)
    raw = {
        "provider": "custom",
        "name": name,
        "on_demand_usd_per_hour": usd_per_hour,
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
    return _entry(Instance, raw, f"custom instance '{name}'", "command line", CUSTOM_FLAGS)
