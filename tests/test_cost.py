"""Cost catalog loading and errors, the analyzer's rules, and the memory estimate against measured peaks."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge.cost.analyzer import CostAnalyzer, Throughput
from tuneforge.cost.catalog import custom_instance, load_catalog
from tuneforge.cost.estimate import KNOWN_SHAPES, ModelShape, estimate_memory, estimate_recipe
from tuneforge.errors import ConfigError
from tuneforge.recipes import load_recipe

REPO = Path(__file__).resolve().parents[1]
LLAMA2 = KNOWN_SHAPES["meta-llama/Llama-2-7b-hf"]
QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]


# --------------------------------------------------------------------------- catalog


def test_builtin_catalog_covers_the_providers_and_dates_every_price():
    catalog = load_catalog()
    providers = {i.provider for i in catalog.instances.values()}
    assert {"aws", "gcp", "azure", "lambda", "runpod", "modal"} <= providers
    assert {"c7i.large", "m7i.xlarge", "n2-standard-2"} <= set(catalog.names())  # CPU runs can be priced
    for inst in catalog.instances.values():
        assert inst.price_date and inst.source and inst.note, inst.name
        assert inst.on_demand_usd_per_hour > 0
    assert catalog.training_reference("H100").tokens_per_s == 8157
    assert catalog.training_reference("A100").tokens_per_s == 2392


def test_user_catalog_is_merged_and_wins(tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text(
        "instances:\n"
        "  - {provider: aws, name: g5.xlarge, gpu: A10G-24GB, gpu_count: 1, gpu_memory_gb: 24,\n"
        "     on_demand_usd_per_hour: 0.5, source: negotiated, price_date: '2026-11-01'}\n"
        "  - {provider: mine, name: box, on_demand_usd_per_hour: 0.2, vcpus: 8, memory_gb: 32}\n"
    )
    catalog = load_catalog([extra])
    assert catalog.get("g5.xlarge").on_demand_usd_per_hour == 0.5
    assert catalog.get("g5.xlarge").origin == str(extra)
    assert catalog.get("box").gpu is None and "p5.48xlarge" in catalog.names()


PRICE = "on_demand_usd_per_hour"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("gpu_count: 0", rf"instances\[0\] \(a\): field '{PRICE}' is required"),
        (f"{PRICE}: cheap", rf"\(a\): field '{PRICE}' must be a number"),
        (f"{PRICE}: -1", rf"\(a\): field '{PRICE}' must be > 0"),
        (f"{PRICE}: 1, gpus: 2", r"\(a\): unknown field 'gpus'; did you mean 'gpu'"),
        (f"{PRICE}: 1, gpu: L4-24GB", r"\(a\): field 'gpu_count' must be 0 exactly"),
        (f"{PRICE}: 1, gpu_count: 1.5", r"field 'gpu_count' must be a whole"),
    ],
)
def test_bad_catalog_entries_name_file_entry_and_field(tmp_path, fields, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"instances:\n  - {{provider: x, name: a, {fields}}}\n")
    with pytest.raises(ConfigError, match=message) as err:
        load_catalog([path])
    assert str(path) in str(err.value)


def test_bad_catalog_files(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("instances:\n" + "  - {provider: x, name: a, on_demand_usd_per_hour: 1}\n" * 2)
    with pytest.raises(ConfigError, match="appears twice"):
        load_catalog([dup])
    section = tmp_path / "section.yaml"
    section.write_text("instance: []\n")
    with pytest.raises(ConfigError, match="unknown section 'instance'; did you mean 'instances'"):
        load_catalog([section])
    broken = tmp_path / "broken.yaml"
    broken.write_text("instances: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_catalog([broken])


GPU = "gpu: L4-24GB, gpu_count: 1"
SERVING = "model: m, params_b: 1, gpu: L4-24GB, dtype: bf16, engine: vLLM, concurrency: 4, source: t"
BAD_ENTRIES = [  # (section, fields, the end of the message: the field and what is wrong)
    ("instances", f"{PRICE}: 1, gpu_count: '2'", "field 'gpu_count' must be a whole number, got '2'"),
    ("instances", f"{PRICE}: '0.9'", f"field '{PRICE}' must be a number, got '0.9'"),
    ("instances", f"{PRICE}: 1, region: 5", "field 'region' must be text (quote it in YAML) or null, got 5"),
    ("instances", f"{PRICE}: 1, host_included: 1", "field 'host_included' must be true or false, got 1"),
    ("instances", f"{PRICE}: -0.5", f"field '{PRICE}' must be > 0, got -0.5"),
    (
        "instances",
        f"{PRICE}: 1, spot_usd_per_hour: -1",
        "field 'spot_usd_per_hour' must be > 0 or null, got -1",
    ),
    ("instances", f"{PRICE}: 1, vcpus: 0", "field 'vcpus' must be >= 1 or null, got 0"),
    ("instances", f"{PRICE}: .nan", f"field '{PRICE}' must be a finite number, got nan"),
    (
        "instances",
        "on_demand_usd_per_hr: 1",
        f"unknown field 'on_demand_usd_per_hr'; did you mean '{PRICE}'?",
    ),
    (
        "instances",
        f"{PRICE}: 1, origin: mine",
        "unknown field 'origin'; did you mean 'region'?",
    ),  # the loader's
    ("instances", f"{PRICE}: 1, {GPU}", "field 'gpu_memory_gb' is required for a GPU instance"),
    ("instances", f"{PRICE}: 1, host_included: null", "field 'host_included' must not be null"),
    (
        "serving_references",
        SERVING,
        "give 'request_throughput_rps' or 'output_tokens_per_s' (or 'ms_per_token'",
    ),
    (
        "serving_references",
        f"{SERVING}, request_throughput: 2",
        "unknown field 'request_throughput'; did you mean 'request_throughput_rps'?",
    ),
    (
        "serving_references",
        f"{SERVING}, gpu_count: 0, output_tokens_per_s: 9",
        "'gpu_count' must be >= 1, got 0",
    ),
    ("gpus", "name: X, memory_bandwidth_gbps: 1, memory_gb: 8, source: 3", "field 'source' must be text"),
    ("training_references", "gpu: A, tokens_per_s: 1, params_b: 0", "field 'params_b' must be > 0, got 0"),
]


@pytest.mark.parametrize(("section", "fields", "message"), BAD_ENTRIES)
def test_every_bad_entry_names_the_file_the_entry_and_the_field(tmp_path, section, fields, message):
    path = tmp_path / "mine.yaml"
    name = {"instances": "provider: x, name: a, ", "gpus": ""}.get(section, "")
    path.write_text(f"{section}:\n  - {{{name}{fields}}}\n")
    entry = {"instances": "instances[0] (a)", "gpus": "gpus[0] (X)"}.get(section, f"{section}[0]")
    with pytest.raises(ConfigError) as err:
        load_catalog([path])
    assert str(err.value).startswith(f"{path}: {entry}: ") and message in str(err.value)
    assert "pydantic" not in str(err.value).lower() and "\n" not in str(err.value)


def test_catalog_entries_are_typed_frozen_models(tmp_path):
    from pydantic import ValidationError

    from tuneforge.cost.catalog import Instance

    path = tmp_path / "mine.yaml"
    path.write_text(
        "instances:\n  - {provider: x, name: a, on_demand_usd_per_hour: 2, price_date: 2025-06-05}\n"
        "serving_references:\n  - {model: m, params_b: 1, dtype: bf16, engine: vLLM, concurrency: 1,\n"
        "     ms_per_token: 20, date: 2026-01-02, source: t}\n"
    )
    catalog = load_catalog([path])
    inst = catalog.get("a")
    assert inst.price_date == "2025-06-05" and inst.on_demand_usd_per_hour == 2.0  # a YAML date is text
    assert catalog.serving_references[-1].date == "2026-01-02"
    assert catalog.serving_references[-1].throughputs() == (None, 50.0)
    with pytest.raises(ValidationError):
        inst.on_demand_usd_per_hour = 0.1  # frozen
    assert Instance.model_fields["on_demand_usd_per_hour"].description.startswith("List price")
    with pytest.raises(ConfigError, match=r"^custom instance 'box': --price-per-hour must be > 0, got -1.0$"):
        custom_instance("box", -1.0)
    with pytest.raises(ConfigError, match=r"custom instance 'box': --vcpus must be >= 1 or null, got 0"):
        custom_instance("box", 1.0, vcpus=0)
    with pytest.raises(ConfigError, match=r"qlora_throughput_factor must be a number in \(0, 1\], got 1.5"):
        path.write_text("qlora_throughput_factor: 1.5\n")
        load_catalog([path])


def test_unknown_instance_suggests_the_closest_names():
    with pytest.raises(ConfigError, match=r"unknown instance type 'p5.48xlage'; did you mean p5.48xlarge"):
        CostAnalyzer().calculate_training_cost("p5.48xlage", 1.0)
    assert CostAnalyzer().instance("G5.XLARGE").name == "g5.xlarge"


# --------------------------------------------------------------------------- analyzer


def test_known_costs():
    a = CostAnalyzer()
    assert a.calculate_training_cost("g5.xlarge", 3) == pytest.approx(3.018)
    assert a.calculate_inference_cost("g5.xlarge", 2.0) == pytest.approx(1.006 / 7200 * 1000)
    assert a.cost_per_million_tokens("g5.xlarge", 1000.0) == pytest.approx(1.006 / 3.6)
    with pytest.raises(ConfigError, match="no spot price"):
        a.calculate_training_cost("g5.xlarge", 1, spot=True)
    assert a.calculate_training_cost("runpod-l40s", 2, spot=True) == pytest.approx(1.58)
    with pytest.raises(ConfigError, match="> 0"):
        a.calculate_inference_cost("g5.xlarge", 0)


def test_breakdown_rules():
    a = CostAnalyzer()
    gpu = a.breakdown("g5.xlarge")  # 4 vCPU, 16 GB: host at GCP N2 rates, the rest GPU
    assert gpu["cpu"] == pytest.approx(4 * 0.031611) and gpu["memory"] == pytest.approx(16 * 0.004237)
    assert sum(gpu.values()) == pytest.approx(1.006)
    big_host = a.breakdown("gpu_1x_a10")  # 30 vCPU, 200 GB for 0.86/h: host capped at half
    assert big_host["cpu"] + big_host["memory"] == pytest.approx(0.43)
    assert a.breakdown("modal-l4") == {"gpu": 0.7992, "cpu": 0.0, "memory": 0.0}
    cpu = a.breakdown("n2-standard-2")
    assert cpu["gpu"] == 0 and cpu["cpu"] == pytest.approx(2 * 0.031611, rel=1e-3)


def test_a_cpu_measurement_is_never_priced_as_a_gpu_figure():
    a = CostAnalyzer()
    cpu_run = Throughput(3.0, 120.0, "measured", "results.json", "cpu")
    with pytest.raises(ConfigError, match="measured on a CPU"):
        a.analyze("g5.xlarge", throughput=cpu_run)
    ok = a.analyze("c7i.large", throughput=cpu_run)
    assert ok["inference"]["basis"] == "measured" and ok["inference"]["device"] == "cpu"
    with pytest.raises(ConfigError, match="measured on a GPU"):
        a.analyze("c7i.large", throughput=Throughput(3.0, None, "measured", "r", "gpu:NVIDIA H100"))
    with pytest.raises(ConfigError, match="must be > 0"):
        Throughput(0.0, None, "measured", "r", "cpu")


def test_custom_machine_and_estimated_training_hours():
    box = custom_instance("my-box", 0.9, gpu="A100-SXM-80GB")
    a = CostAnalyzer(extra=[box])
    assert a.calculate_training_cost("my-box", 2) == pytest.approx(1.8)
    result = a.compare_configurations(
        [{"instance": "gpu_1x_h100_sxm5", "training_tokens": 8157 * 3600, "params_b": 6.74, "method": "lora"}]
    )
    row = result["configs"][0]
    assert row["training_hours"] == pytest.approx(1.0) and row["training_basis"] == "estimated"
    assert "8,157 tok/s" in row["training_source"]


# --------------------------------------------------------------------------- estimate


def test_parameter_count_of_llama_2_7b():
    assert ModelShape.from_config(LLAMA2).parameter_count() == 6_738_415_616  # Llama-2-7B's published count


def test_memory_estimate_matches_the_measured_h100_peak():
    """ANCHORS.md / benchmarks/RESULTS.md: Llama-2-7B shape, LoRA r16 on q,k,v,o, seq 1024, batch 4,
    gradient checkpointing, bf16: 15.3 GB peak (plain HF+PEFT); with a 49,152 vocabulary 16.38 GB."""
    est = estimate_memory(ModelShape.from_config(LLAMA2), "lora", 16, QKVO, 1024, 4, True, "bfloat16")
    assert est["peak_gb"] == pytest.approx(15.3, rel=0.25)
    assert est["peak_gb"] == pytest.approx(15.3, rel=0.03)  # what it actually achieves (15.27)
    vocab49k = ModelShape.from_config({**LLAMA2, "vocab_size": 49152})
    assert estimate_memory(vocab49k, "lora", 16, QKVO, 1024, 4, True)["peak_gb"] == pytest.approx(
        16.38, rel=0.03
    )


# Peaks measured on an H200 through tuneforge's trainer (benchmarks/RESULTS.md, 2026-12-02), random weights,
# bf16: (shape, method, r, targets, seq, batch, checkpointed layers, lora dropout, liger, compiled, GB)
LLAMA2_49K = {**LLAMA2, "vocab_size": 49152}
MISTRAL_SHAPE = KNOWN_SHAPES["mistralai/Mistral-7B-Instruct-v0.3"]
LLAMA3 = KNOWN_SHAPES["meta-llama/Meta-Llama-3-8B-Instruct"]
H200_PEAKS = [
    ("llama2 no ckpt", LLAMA2_49K, "lora", 16, QKVO, 1024, 4, 0, 0.0, False, False, 35.44),
    ("llama2 no ckpt liger", LLAMA2_49K, "lora", 16, QKVO, 1024, 4, 0, 0.0, True, False, 28.65),
    ("llama2 no ckpt compiled", LLAMA2_49K, "lora", 16, QKVO, 1024, 4, 0, 0.0, False, True, 28.78),
    ("llama2 no ckpt liger ce + compiled", LLAMA2_49K, "lora", 16, QKVO, 1024, 4, 0, 0.0, True, True, 26.85),
    ("llama2 ckpt", LLAMA2_49K, "lora", 16, QKVO, 1024, 4, 32, 0.0, False, False, 16.38),
    ("mistral qlora ckpt", MISTRAL_SHAPE, "qlora", 16, QKVO, 2048, 1, 32, 0.0, False, False, 6.61),
    ("mistral qlora ckpt liger", MISTRAL_SHAPE, "qlora", 16, QKVO, 2048, 1, 32, 0.0, True, False, 6.21),
    ("mistral qlora no ckpt liger", MISTRAL_SHAPE, "qlora", 16, QKVO, 2048, 1, 0, 0.0, True, False, 17.20),
    ("llama3 qlora recipe ckpt", LLAMA3, "qlora", 64, ["all-linear"], 2048, 4, 32, 0.1, False, False, 26.07),
    (
        "llama3 qlora recipe ckpt liger",
        LLAMA3,
        "qlora",
        64,
        ["all-linear"],
        2048,
        4,
        32,
        0.1,
        True,
        False,
        16.60,
    ),
    ("llama3 qlora 30/32 liger", LLAMA3, "qlora", 64, ["all-linear"], 2048, 4, 30, 0.1, True, False, 19.07),
    ("llama3 qlora 27/32 liger", LLAMA3, "qlora", 64, ["all-linear"], 2048, 4, 27, 0.1, True, False, 25.23),
]


# QLoRA with embeddings, output head and norms kept in bf16 (quantization.fp32_unquantized null, the default)
H200_QLORA_BF16_PEAKS = [
    ("mistral qlora bf16 ckpt liger", MISTRAL_SHAPE, "qlora", 16, QKVO, 2048, 1, 32, 0.0, True, False, 4.96),
    ("llama3 qlora bf16 recipe", LLAMA3, "qlora", 64, ["all-linear"], 2048, 4, 32, 0.1, True, False, 11.30),
    ("llama3 qlora bf16 26/32", LLAMA3, "qlora", 64, ["all-linear"], 2048, 4, 26, 0.1, True, False, 19.39),
    ("llama3 qlora bf16 b1", LLAMA3, "qlora", 64, ["all-linear"], 2048, 1, 0, 0.1, True, False, 21.31),
]


@pytest.mark.parametrize(
    "case",
    [(*c, True) for c in H200_PEAKS] + [(*c, False) for c in H200_QLORA_BF16_PEAKS],
    ids=lambda c: c[0],
)
def test_memory_estimate_lands_within_10_percent_of_each_measured_h200_peak(case):
    _, config, method, r, targets, seq, batch, layers, dropout, liger, compiled, measured, fp32 = case
    est = estimate_memory(
        ModelShape.from_config(config),
        method,
        r,
        targets,
        seq,
        batch,
        lora_dropout=dropout,
        checkpointed_layers=layers,
        liger=liger,
        compiled=compiled,
        fp32_unquantized=fp32,
    )
    assert est["peak_gb"] == pytest.approx(measured, rel=0.10)


def test_each_adapter_parameter_costs_16_bytes_weight_gradient_and_two_adamw_moments():
    shape = ModelShape.from_config(LLAMA2)
    est = estimate_memory(shape, "lora", 16, QKVO, 1024, 4)
    n = 32 * 16 * (4096 + 4096) * 4  # layers x r x (in + out) x four 4096x4096 projections
    assert est["lora_parameters"] == n
    assert est["parts_gb"]["adapters_and_optimizer"] * 2**30 == n * 16


def test_selective_checkpointing_lies_between_none_and_all():
    shape = ModelShape.from_config(LLAMA2)
    by_layers = [
        estimate_memory(shape, "lora", 16, QKVO, 1024, 4, checkpointed_layers=k)["peak_gb"]
        for k in (0, 8, 31, 32)
    ]
    assert by_layers == sorted(by_layers, reverse=True) and len(set(by_layers)) == 4
    with pytest.raises(ConfigError, match="checkpointed_layers"):
        estimate_memory(shape, checkpointed_layers=33)


def test_fused_cross_entropy_removes_the_logits_from_the_peak():
    shape = ModelShape.from_config(LLAMA3)
    full = estimate_memory(shape, "qlora", 64, ["all-linear"], 2048, 4, checkpointed_layers=0)
    fused = estimate_memory(shape, "qlora", 64, ["all-linear"], 2048, 4, checkpointed_layers=0, liger=True)
    assert full["parts_gb"]["logits_or_recompute"] > 11  # 8192 tokens x 128,256 vocab x 12 bytes
    assert fused["parts_gb"]["logits_or_recompute"] < 1
    assert full["peak_gb"] - fused["peak_gb"] > 9


def test_memory_estimate_orders_the_methods():
    shape = ModelShape.from_config(LLAMA2)
    lora = estimate_memory(shape, "lora", 16, QKVO, 1024, 4, True)["peak_gb"]
    qlora = estimate_memory(shape, "qlora", 16, QKVO, 1024, 4, True)["peak_gb"]
    no_ckpt = estimate_memory(shape, "lora", 16, QKVO, 1024, 4, False)["peak_gb"]
    assert qlora < 0.6 * lora < lora < no_ckpt
    with pytest.raises(ConfigError, match="lora or qlora"):
        estimate_memory(shape, "full")


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_can_be_estimated(recipe):
    result = estimate_recipe(
        load_recipe(recipe), load_catalog(), dataset_tokens=1_000_000, dataset_source="test"
    )
    assert result["memory"]["peak_gb"] > 0 and result["instances"]
    for row in result["instances"]:  # every GPU row says what the speed plan picks there and fits by it
        assert row["plan"] and row["fits"] == (row["peak_gb"] <= row["gpu_memory_gb"] * 0.9)
    assert any(r["fits"] and r["cost_usd"] is not None for r in result["instances"])


def test_estimate_needs_tokens_when_epochs_set_the_length():
    recipe = load_recipe(REPO / "configs" / "llama3-8b-lora.yaml")
    with pytest.raises(ConfigError, match="--tokens"):
        estimate_recipe(recipe, load_catalog())


# --------------------------------------------------------------------------- CLI


def _run(argv: list[str], capsys) -> tuple[int, dict]:
    from tuneforge.cost.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    code = args.func(args)
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cost_cli_prints_one_json_line(tmp_path, capsys):
    code, payload = _run(
        ["cost", "instance", "g5.xlarge", "--hours", "2", "--rps", "4", "--out", str(tmp_path)], capsys
    )
    assert code == 0 and payload["training_cost_usd"] == pytest.approx(2.012)
    assert payload["cost_per_1k_requests_usd"] == pytest.approx(1.006 / (3.6 * 4))
    assert (tmp_path / "cost.html").read_text().count("<svg") == 1
    code, payload = _run(
        ["cost", "instance", "g6.xlarge,c7i.large", "--rps", "1", "--out", str(tmp_path)], capsys
    )
    assert [c["instance"] for c in payload["configs"]] == ["g6.xlarge", "c7i.large"]


def test_estimate_cli(tmp_path, capsys):
    code, payload = _run(
        [
            "estimate",
            str(REPO / "configs" / "mistral-7b-qlora.yaml"),
            "--tokens",
            "100000",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0 and payload["fits_on"] and payload["peak_memory_gb"] > 0
    assert (
        json.loads((tmp_path / "estimate.json").read_text())["model"] == "mistralai/Mistral-7B-Instruct-v0.3"
    )


# --------------------------------------------------------------------------- serving estimates

SMOL_H100 = """serving_references:
  - {model: HuggingFaceTB/SmolLM2-135M-Instruct, params_b: 0.1345, gpu: H100-SXM-80GB, dtype: bf16,
     engine: vLLM, engine_version: "0.26.0", concurrency: 16, input_len: 128, output_len: 128,
     request_throughput_rps: 50.0, output_tokens_per_s: 3200, date: "2026-12-01", source: test}
"""


def _serving_catalog(extra_refs: str = ""):
    """Round numbers: REF 2000 GB/s, SLOW 500 GB/s (x0.25), TINY 8 GB of memory."""
    from tuneforge.cost.catalog import Catalog, parse_catalog

    doc = (
        "gpus:\n"
        "  - {name: REF-80GB, memory_bandwidth_gbps: 2000, memory_gb: 80, source: t}\n"
        "  - {name: SLOW-24GB, memory_bandwidth_gbps: 500, memory_gb: 24, source: t}\n"
        "  - {name: TINY-8GB, memory_bandwidth_gbps: 400, memory_gb: 8, source: t}\n"
        "serving_references:\n"
        "  - {model: Big-8B, params_b: 8, gpu: REF-80GB, dtype: bf16, engine: vLLM, concurrency: 16,\n"
        "     output_len: 512, request_throughput_rps: 4, output_tokens_per_s: 2048, source: t}\n"
        "  - {model: Big-8B, params_b: 8, gpu: REF-80GB, dtype: bf16, engine: vLLM, concurrency: 64,\n"
        "     output_len: 512, request_throughput_rps: 12, output_tokens_per_s: 6144, source: t}\n"
        "  - {model: Small-1B, params_b: 1, gpu: REF-80GB, dtype: bf16, engine: vLLM, concurrency: 16,\n"
        "     output_len: 512, output_tokens_per_s: 8000, source: t}\n"
        "  - {model: Other-1B, params_b: 1, gpu: REF-80GB, dtype: bf16, engine: vLLM, concurrency: 16,\n"
        "     output_len: 512, output_tokens_per_s: 5000, source: t}\n"
        "  - {model: Small-1B, params_b: 1, gpu: null, dtype: bf16, engine: vllm-cpu, concurrency: 16,\n"
        "     output_len: 64, output_tokens_per_s: 300000, source: a CPU figure that must never be scaled}\n"
        + extra_refs
    )
    import yaml

    return parse_catalog(yaml.safe_load(doc), "test.yaml", Catalog())


def test_every_catalog_gpu_has_a_sourced_memory_bandwidth():
    catalog = load_catalog()
    for inst in catalog.instances.values():
        if inst.is_gpu:
            spec = catalog.gpu_spec(inst.gpu)
            assert spec is not None and spec.source and spec.memory_bandwidth_gbps > 0, inst.name
            assert spec.memory_gb == inst.gpu_memory_gb, inst.name
    assert catalog.gpu_spec("h100-sxm-80gb").memory_bandwidth_gbps == 3350
    assert catalog.gpu_spec("A10G-24GB").memory_bandwidth_gbps == 600


def test_the_anchored_7b_references_are_in_the_catalog():
    refs = {
        (r.model, r.concurrency, r.dtype): r
        for r in load_catalog().serving_references
        if r.gpu == "H100-SXM-80GB"
    }
    at256 = refs[("Mistral-7B shape", 256, "bf16")]
    assert (at256.request_throughput_rps, at256.output_tokens_per_s) == (35.0, 17905)
    assert (at256.engine, at256.engine_version, at256.input_len, at256.output_len) == (
        "vLLM",
        "0.26.0",
        128,
        512,
    )
    at16 = refs[("Mistral-7B shape", 16, "bf16")]
    assert (at16.request_throughput_rps, at16.output_tokens_per_s) == (4.6, 2370)
    assert refs[("Llama-2-7B shape", 256, "bf16")].request_throughput_rps == 15.9


def test_bandwidth_scaling_on_known_numbers():
    from tuneforge.cost.serving import estimate_serving_throughput

    catalog = _serving_catalog()
    est = estimate_serving_throughput(8, "SLOW-24GB", catalog, concurrency=16)
    assert est.output_tokens_per_second == pytest.approx(2048 * 0.25)
    assert est.requests_per_second == pytest.approx(1.0)
    assert est.bandwidth_ratio == 0.25 and est.params_ratio == 1.0 and not est.upper_bound
    assert est.basis.startswith("estimated: vLLM Big-8B bf16 measured on REF-80GB (batch 16)")
    assert "memory bandwidth REF-80GB->SLOW-24GB (x0.25)" in est.basis and "parameters" not in est.basis
    # the same concurrency wins; without one, the highest (saturated) figure
    assert estimate_serving_throughput(8, "SLOW-24GB", catalog, 64).output_tokens_per_second == 1536
    assert estimate_serving_throughput(8, "SLOW-24GB", catalog).reference.concurrency == 64
    closest = estimate_serving_throughput(8, "SLOW-24GB", catalog, 32)
    assert closest.reference.concurrency in (16, 64) and "the closest measured to 32" in closest.basis
    # on the shipped catalog: H100 -> A10G is x0.18
    shipped = estimate_serving_throughput(7.25, "A10G-24GB", load_catalog(), concurrency=16)
    assert shipped.output_tokens_per_second == pytest.approx(2370 * 600 / 3350)
    assert shipped.requests_per_second == pytest.approx(4.6 * 600 / 3350)
    assert "Mistral-7B shape bf16 measured on H100-SXM-80GB (batch 16)" in shipped.basis
    assert "H100-SXM-80GB->A10G-24GB (x0.18)" in shipped.basis


def test_parameter_scaling_and_the_upper_bound_label():
    from tuneforge.cost.serving import estimate_serving_throughput

    catalog = _serving_catalog()
    smaller = estimate_serving_throughput(4, "REF-80GB", catalog, concurrency=16)
    assert smaller.reference.model == "Big-8B"  # 8B is closer to 4B than 1B is
    assert smaller.output_tokens_per_second == pytest.approx(4096) and smaller.params_ratio == 2
    assert smaller.upper_bound and "parameters 8B->4B (x2, an upper bound" in smaller.basis
    assert "same GPU" in smaller.basis
    larger = estimate_serving_throughput(16, "REF-80GB", catalog, concurrency=16)
    assert larger.output_tokens_per_second == pytest.approx(1024)
    assert not larger.upper_bound and "upper bound" not in larger.basis
    # requests of another length: tok/s stays, req/s follows the output tokens per request
    short = estimate_serving_throughput(8, "REF-80GB", catalog, concurrency=16, output_len=128)
    assert short.output_tokens_per_second == 2048 and short.requests_per_second == pytest.approx(16)
    assert "128 output tokens instead of 512" in short.basis
    # derived: Small-1B gives only tok/s; req/s = tok/s / output_len
    assert estimate_serving_throughput(1, "REF-80GB", catalog, 16, model="Small-1B").requests_per_second == (
        pytest.approx(8000 / 512)
    )


def test_an_exact_model_match_is_preferred_and_a_cpu_reference_is_never_scaled():
    from tuneforge.cost.catalog import Catalog, parse_catalog
    from tuneforge.cost.serving import estimate_serving_throughput

    catalog = _serving_catalog()
    assert (
        estimate_serving_throughput(1, "REF-80GB", catalog, 16, model="Other-1B").reference.model
        == "Other-1B"
    )
    small = estimate_serving_throughput(1.01, "REF-80GB", catalog, 16, model="acme/small-1b-instruct")
    assert small.reference.model == "Small-1B" and small.params_ratio == 1.0  # within 2%: not scaled
    assert small.reference.gpu == "REF-80GB"  # the CPU entry of Small-1B (300,000 tok/s) is never used
    # the name wins over a closer parameter count
    assert estimate_serving_throughput(4, "REF-80GB", catalog, 16).reference.model == "Big-8B"
    assert (
        estimate_serving_throughput(4, "REF-80GB", catalog, 16, model="Small-1B").reference.model
        == "Small-1B"
    )
    cpu_only = parse_catalog(
        {
            "gpus": [{"name": "REF-80GB", "memory_bandwidth_gbps": 2000, "memory_gb": 80, "source": "t"}],
            "serving_references": [
                {
                    "model": "m",
                    "params_b": 1,
                    "gpu": None,
                    "dtype": "bf16",
                    "engine": "vllm-cpu",
                    "concurrency": 1,
                    "output_tokens_per_s": 30,
                    "source": "t",
                }
            ],
        },
        "t",
        Catalog(),
    )
    with pytest.raises(ConfigError, match="no bf16 serving reference measured on a GPU"):
        estimate_serving_throughput(1, "REF-80GB", cpu_only)


def test_gpus_without_room_for_the_weights_are_skipped():
    from tuneforge.cost.analyzer import CostAnalyzer
    from tuneforge.cost.serving import estimate_serving_costs, estimate_serving_throughput

    catalog = _serving_catalog()
    assert estimate_serving_throughput(3.6, "TINY-8GB", catalog) is not None  # 7.2 GB = 90% of 8
    assert estimate_serving_throughput(3.7, "TINY-8GB", catalog) is None
    with pytest.raises(ConfigError, match="no memory bandwidth for GPU 'B200'"):
        estimate_serving_throughput(1, "B200", catalog)
    shipped = load_catalog()
    result = estimate_serving_costs(CostAnalyzer(shipped), params_b=13.0, concurrency=16)
    shown = {r["instance"] for r in result["rows"]}
    skipped = {s["instance"]: s["reason"] for s in result["skipped"]}
    assert "g4dn.xlarge" in skipped and "26 GB of bf16 weights exceed 90%" in skipped["g4dn.xlarge"]
    assert "g5.xlarge" in skipped and "runpod-l40s" in shown and "p5.48xlarge" in shown
    costs = [r["cost_per_1k_requests_usd"] for r in result["rows"]]
    assert costs == sorted(costs)  # cheapest first
    p5 = next(r for r in result["rows"] if r["instance"] == "p5.48xlarge")
    one = next(r for r in result["rows"] if r["instance"] == "gpu_1x_h100_sxm5")
    assert p5["output_tokens_per_second"] == pytest.approx(8 * one["output_tokens_per_second"])
    assert "x8 GPUs (one replica per GPU)" in p5["how"]


def test_bad_serving_entries_name_the_field(tmp_path):
    path = tmp_path / "refs.yaml"
    path.write_text(
        "serving_references:\n  - {model: m, params_b: 1, gpu: H100-SXM-80GB, dtype: bf16, engine: vLLM,\n"
        "     concurrency: 4, source: t}\n"
    )
    with pytest.raises(ConfigError, match=r"serving_references\[0\]: give 'request_throughput_rps'"):
        load_catalog([path])
    path.write_text("gpus:\n  - {name: X, memory_bandwidth_gbps: 0, memory_gb: 8, source: t}\n")
    with pytest.raises(ConfigError, match=r"gpus\[0\] \(X\): field 'memory_bandwidth_gbps' must be > 0"):
        load_catalog([path])


def test_model_size_from_its_name():
    from tuneforge.cost.serving import params_from_model_name

    assert params_from_model_name("HuggingFaceTB/SmolLM2-135M-Instruct") == pytest.approx(0.1345, rel=1e-3)
    assert params_from_model_name("Qwen/Qwen2.5-0.5B-Instruct") == 0.5
    assert params_from_model_name("meta-llama/Llama-3.1-8B") == 8.0
    assert params_from_model_name("my-adapter") is None


def test_serving_module_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, tuneforge.cost.serving; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _bench_results(path: Path, rps_at_16: float = 4.7, model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"):
    def run(concurrency, rps, tok_s, completed=32):
        return {
            "load": {"mode": "concurrency", "concurrency": concurrency},
            "summary": {
                "requests": {"total": completed, "completed": completed, "failed": 0, "errors": {}},
                "duration_s": 10.0,
                "request_throughput_rps": rps,
                "output_throughput_tok_s": tok_s,
                "input_tokens": 4000,
                "output_tokens": completed * 64,
                "latency_ms": {},
            },
            "records": [],
            "resources": None,
        }

    path.write_text(
        json.dumps(
            {
                "title": "t",
                "target": {"api": "openai", "url": "http://127.0.0.1:8000", "model": model, "max_tokens": 64},
                "workload": {"prompts": "synthetic, 128 words each", "max_tokens": 64},
                "server_device": "cpu",
                "notes": [],
                "runs": [run(1, 0.6, 39.0), run(16, rps_at_16, rps_at_16 * 64)],
            }
        )
    )
    return path


def test_cost_cli_prints_measured_cpu_and_estimated_gpu_serving_costs(tmp_path, capsys, monkeypatch):
    import tuneforge.cost.inputs as cost_inputs

    bench = _bench_results(tmp_path / "results.json")
    monkeypatch.setattr(
        cost_inputs,
        "training_from_mlflow",
        lambda run_id, uri: (2.0, f"MLflow run {run_id} final/train_runtime on cpu", "cpu"),
    )
    argv = ["cost", "gpus", "--bench", str(bench), "--instance", "c7i.large", "--top", "5"]
    code, payload = _run([*argv, "--mlflow-run-id", "abc", "--out", str(tmp_path / "a")], capsys)
    assert code == 0
    assert (
        payload["training_cost_usd"] == pytest.approx(0.08925 * 2) and payload["training_basis"] == "measured"
    )
    measured = payload["measured_serving"]
    assert measured["basis"] == "measured" and measured["device"] == "cpu" and measured["hardware"] == "CPU"
    assert measured["cost_per_1k_requests_usd"] == pytest.approx(0.08925 / (3.6 * 4.7))
    rows = payload["estimated_serving"]
    assert len(rows) == 5 and all(
        r["basis"] == "estimated" and r["how"].startswith("estimated: ") for r in rows
    )
    # the shipped catalog holds an H100 measurement of this very model: bandwidth scaling only
    assert all(r["hardware"] != "CPU" and not r["upper_bound"] for r in rows)
    assert all("SmolLM2-135M-Instruct bf16 measured on H100-SXM-80GB (batch 16)" in r["how"] for r in rows)
    assert [r["cost_per_1k_requests_usd"] for r in rows] == sorted(
        r["cost_per_1k_requests_usd"] for r in rows
    )
    inputs = payload["estimate_inputs"]
    assert inputs["params_b"] == pytest.approx(0.1345, rel=1e-3) and inputs["concurrency"] == 16
    assert inputs["output_len"] == 64
    # the GPU rows never come from the CPU benchmark: ten times its throughput changes none of them
    _bench_results(bench, rps_at_16=47.0)
    _, again = _run([*argv, "--out", str(tmp_path / "b")], capsys)
    assert again["estimated_serving"] == rows
    assert again["measured_serving"]["requests_per_second"] == 47.0
    for name in ("cost.md", "cost.html"):
        doc = (tmp_path / "a" / name).read_text()
        assert "Serving cost: measured and estimated" in doc and "estimated" in doc
        assert "measured: " in doc and "scaled by memory bandwidth" in doc
        assert "training cost" in doc
    assert len(json.loads((tmp_path / "a" / "cost.json").read_text())["serving_estimates"]["rows"]) == 5


def test_cost_cli_uses_a_measured_reference_of_the_same_model(tmp_path, capsys):
    """Adding a measured SmolLM2 entry to a catalog is all it takes to replace the scaled-down 7B figure."""
    bench = _bench_results(tmp_path / "results.json")
    mine = tmp_path / "mine.yaml"
    mine.write_text(SMOL_H100)
    argv = ["cost", "gpus", "--bench", str(bench), "--instance", "c7i.large", "--catalog", str(mine)]
    _, payload = _run([*argv, "--top", "50", "--out", str(tmp_path)], capsys)
    h100 = next(r for r in payload["estimated_serving"] if r["instance"] == "gpu_1x_h100_sxm5")
    assert h100["output_tokens_per_second"] == 3200 and h100["requests_per_second"] == 50.0
    assert "SmolLM2-135M-Instruct bf16 measured on H100-SXM-80GB (batch 16), same GPU" in h100["how"]
    assert not h100["upper_bound"]
    a10g = next(r for r in payload["estimated_serving"] if r["instance"] == "g5.xlarge")
    assert a10g["output_tokens_per_second"] == pytest.approx(3200 * 600 / 3350)


def test_cost_cli_estimates_refuse_what_they_cannot_do(tmp_path, capsys):
    bench = _bench_results(tmp_path / "results.json", model="my-adapter")
    with pytest.raises(ConfigError, match="--params-b"):
        _run(["cost", "gpus", "--bench", str(bench), "--instance", "c7i.large"], capsys)
    with pytest.raises(ConfigError, match="measured on a CPU"):  # a CPU figure priced on a GPU instance
        _run(
            ["cost", "gpus", "--bench", str(bench), "--instance", "g5.xlarge", "--params-b", "0.1"],
            capsys,
        )
    # no --instance: estimates only, for a model given by size
    argv = ["cost", "gpus", "--params-b", "7.25", "--concurrency", "256", "--top", "3"]
    code, payload = _run([*argv, "--out", str(tmp_path)], capsys)
    assert code == 0 and payload["measured_serving"] is None and len(payload["estimated_serving"]) == 3
    assert "Estimated serving cost" in (tmp_path / "cost.md").read_text()


def test_cost_cli_footnotes_number_the_estimated_rows_only(tmp_path, capsys):
    """A serving rate given with --rps is an estimate too, but its basis is printed in its own row: the
    footnotes [1]..[n] belong to the estimated GPU rows, in order."""
    argv = ["cost", "gpus", "--rps", "10", "--instance", "runpod-h100-sxm", "--params-b", "7.25"]
    from tuneforge.cost.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args([*argv, "--top", "3", "--out", str(tmp_path)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    payload = json.loads(printed.strip().splitlines()[-1])
    table = [line for line in printed.splitlines() if line.startswith("estimated ")]
    assert "given on the command line" in table[0]  # the --rps row keeps its own words
    rows = payload["estimated_serving"]
    for k, (line, row) in enumerate(zip(table[1:], rows, strict=True), 1):
        assert line.split()[1] == row["instance"] and line.rstrip().endswith(f"[{k}]")
        assert f"  [{k}] {row['instance']}: " in printed


# --------------------------------------------------------------------------- sub-commands and tables


def _parser() -> argparse.ArgumentParser:
    from tuneforge.cost.cli import register

    parser = argparse.ArgumentParser(prog="tuneforge")
    register(parser.add_subparsers())
    return parser


def test_cost_compare_and_catalog_print_a_table_then_one_json_line(tmp_path, capsys):
    configs = tmp_path / "configs.yaml"
    configs.write_text(
        "configs:\n  - {instance: g5.xlarge, training_hours: 2, requests_per_second: 4}\n"
        "  - {instance: c7i.large, training_hours: 20, requests_per_second: 0.5, name: cpu}\n"
    )
    code, payload = _run(["cost", "compare", str(configs), "--out", str(tmp_path)], capsys)
    assert code == 0 and [c["name"] for c in payload["configs"]] == ["g5.xlarge", "cpu"]
    assert payload["configs"][0]["training_cost_usd"] == pytest.approx(2.012)
    assert (tmp_path / "cost.md").is_file()
    configs.write_text("instance: g5.xlarge\n")
    with pytest.raises(ConfigError, match=r"^cost compare .*: expected a list of configurations"):
        _run(["cost", "compare", str(configs)], capsys)
    mine = tmp_path / "mine.yaml"
    mine.write_text("instances:\n  - {provider: me, name: box, on_demand_usd_per_hour: 0.25, vcpus: 8}\n")
    args = _parser().parse_args(["cost", "catalog", "--catalog", str(mine)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out.splitlines()
    payload = json.loads(printed[-1])
    assert "box" in payload["instances"] and "p5.48xlarge" in payload["instances"]
    assert payload["files"] == ["builtin catalog.yaml", str(mine)]
    assert printed[0].split() == ["name", "provider", "GPU", "vCPU", "USD/h", "spot", "date", "checked"]
    assert next(line for line in printed if line.startswith("box ")).split() == [
        "box",
        "me",
        "-",
        "8",
        "0.25",
        "-",
        "-",
        "no",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["instance", "g5.xlarge", "--top", "3"], "unrecognized arguments: --top 3"),
        (["instance", "g5.xlarge", "--params-b", "7"], "unrecognized arguments: --params-b 7"),
        (["instance", "g5.xlarge", "--instance", "c7i.large"], "unrecognized arguments: --instance"),
        (
            ["instance", "g5.xlarge", "--bench", "r.json", "--rps", "1"],
            "--rps: not allowed with argument --bench",
        ),
        (
            ["instance", "g5.xlarge", "--bench", "r.json", "--tok-s", "9"],
            "--tok-s: not allowed with argument --bench",
        ),
        (
            ["instance", "g5.xlarge", "--hours", "1", "--mlflow-run-id", "x"],
            "not allowed with argument --hours",
        ),
        (["instance", "g5.xlarge", "--level", "0"], "argument --level: goes with --bench"),
        (["instance", "g5.xlarge", "--gpu-count", "0"], "argument --gpu-count: goes with --price-per-hour"),
        (["instance", "g5.xlarge", "--log-to-run"], "argument --log-to-run: goes with --mlflow-run-id"),
        (["instance", "g5.xlarge", "--gpu", "A10-24GB"], "argument --gpu: goes with --price-per-hour"),
        (["instance"], "required: NAME"),
        (["gpus", "--params-b", "7", "r.json"], "unrecognized arguments: r.json"),
        (["gpus", "--compare", "c.yaml"], "unrecognized arguments: --compare"),
        (["gpus", "--measured-on", "cpu"], "argument --measured-on: goes with --bench"),
        (["compare", "c.yaml", "--instance", "g5.xlarge"], "unrecognized arguments: --instance"),
        (["compare", "c.yaml", "--rps", "1"], "unrecognized arguments: --rps"),
        (["compare", "c.yaml", "--spot"], "unrecognized arguments: --spot"),
        (["compare"], "required: FILE"),
        (["catalog", "--bench", "r.json"], "unrecognized arguments: --bench"),
        (["catalog", "--hours", "2"], "unrecognized arguments: --hours"),
        (["catalog", "--out", "runs/cost"], "unrecognized arguments: --out"),
        (["--list"], "--list is now `tuneforge cost catalog`"),
        (["--compare", "c.yaml"], "--compare is now `tuneforge cost compare FILE`"),
        (["--instance", "g5.xlarge", "--hours", "3"], "--instance is now `tuneforge cost instance NAME"),
        (["--estimate-gpus"], "--estimate-gpus is now `tuneforge cost gpus"),
    ],
)
def test_each_subcommand_refuses_the_options_of_the_others(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["cost", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_cost_alone_prints_the_subcommands_and_exits_2(capsys):
    args = _parser().parse_args(["cost"])
    assert args.func(args) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.startswith("usage: tuneforge cost")
    for sub in ("instance", "gpus", "compare", "catalog"):
        assert f"tuneforge cost {sub}" in printed.err


def test_several_instances_are_compared_and_one_is_broken_down(tmp_path, capsys):
    argv = ["cost", "instance", "g5.xlarge,c7i.large", "--hours", "2", "--rps", "1", "--out", str(tmp_path)]
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[:2] == ["configuration", "instance"]
    assert printed[1].startswith("g5.xlarge ") and printed[2].startswith("c7i.large ")
    assert [c["training_cost_usd"] for c in json.loads(printed[-1])["configs"]] == pytest.approx(
        [2.012, 0.1785]
    )
    with pytest.raises(ConfigError, match="--price-per-hour prices one machine"):
        _run([*argv, "--price-per-hour", "1"], capsys)
    _, payload = _run(["cost", "instance", "my-box", "--price-per-hour", "0.5", "--rps", "1"], capsys)
    assert payload["instance"] == "my-box" and payload["usd_per_hour"] == 0.5
    with pytest.raises(ConfigError, match="one instance"):
        _run(["cost", "gpus", "--instance", "g5.xlarge,c7i.large", "--params-b", "7"], capsys)


LONG = "x" * 300


def test_a_long_cell_stays_on_one_line_when_piped_to_a_narrow_terminal(capsys):
    from tuneforge.tables import print_pairs, print_table

    print_table([{"a": "1", "how": LONG}, {"a": "[1]", "how": "[bold]b"}], title="t")
    print_pairs([("source", LONG), ("k", "v")])
    assert capsys.readouterr().out.splitlines() == [
        "t",
        "a    how",
        f"1    {LONG}",
        "[1]  [bold]b",  # cells are text, not markup
        f"source  {LONG}",
        "k       v",
    ]
    code = (
        "from tuneforge.tables import print_table, print_pairs\n"
        f"print_table([{{'instance': 'g5', 'how': {LONG!r}}}, {{'instance': 'p5.48xlarge', 'how': 'b'}}])\n"
        f"print_pairs([('note', {LONG!r} + ' end')])"
    )
    env = {"COLUMNS": "20", "PATH": "/usr/bin:/bin", "FORCE_COLOR": "1", "TERM": "xterm-256color"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.splitlines() == [
        "instance     how",
        f"g5           {LONG}",
        "p5.48xlarge  b",
        f"note  {LONG} end",
    ]
