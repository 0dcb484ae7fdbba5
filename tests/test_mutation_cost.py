"""Cost analysis and serving estimates on a small catalog of round numbers: every figure, note and error
of an analysis, a comparison and a table of GPU estimates (the cases the mutation run of
benchmarks/mutation.sh found untested)."""

from __future__ import annotations

import math
import re

import pytest
import yaml

from tuneforge.cost.analyzer import BREAKDOWN_RULE, HOST_RATES, CostAnalyzer, Throughput
from tuneforge.cost.catalog import Catalog, parse_catalog
from tuneforge.cost.estimate import KNOWN_SHAPES, ModelShape
from tuneforge.cost.serving import (
    METHOD,
    estimate_serving_costs,
    estimate_serving_throughput,
    params_from_model_name,
    pick_reference,
    same_model,
    weights_gb,
)
from tuneforge.errors import ConfigError

LAB = """
instances:
  - {provider: lab, name: ref-1, on_demand_usd_per_hour: 4.0, spot_usd_per_hour: 2.0, gpu: REF-80GB,
     gpu_count: 1, gpu_memory_gb: 80, vcpus: 10, memory_gb: 100, price_date: 2026-01-01,
     source: https://example.com/ref, note: a lab price}
  - {provider: lab, name: ref-2, on_demand_usd_per_hour: 8.0, gpu: REF-80GB, gpu_count: 2, gpu_memory_gb: 80,
     vcpus: 20, memory_gb: 200}
  - {provider: lab, name: slow-1, on_demand_usd_per_hour: 0.9, spot_usd_per_hour: 0.4, gpu: SLOW-24GB,
     gpu_count: 1, gpu_memory_gb: 24, memory_gb: 64}
  - {provider: lab, name: ref-8, on_demand_usd_per_hour: 32.0, gpu: REF-80GB, gpu_count: 8, gpu_memory_gb: 80,
     vcpus: 96}
  - {provider: gpuonly, name: ref-bare, on_demand_usd_per_hour: 3.0, gpu: REF-80GB, gpu_count: 1,
     gpu_memory_gb: 80, host_included: false}
  - {provider: lab, name: tiny-1, on_demand_usd_per_hour: 0.5, gpu: TINY-8GB, gpu_count: 1, gpu_memory_gb: 8}
  - {provider: lab, name: cpu-2, on_demand_usd_per_hour: 0.1, vcpus: 2, memory_gb: 8}
gpus:
  - {name: REF-80GB, memory_bandwidth_gbps: 2000, memory_gb: 80, source: t}
  - {name: SLOW-24GB, memory_bandwidth_gbps: 500, memory_gb: 24, source: t}
  - {name: TINY-8GB, memory_bandwidth_gbps: 400, memory_gb: 8, source: t}
training_references:
  - {gpu: REF, tokens_per_s: 1000, params_b: 7, source: lab run}
qlora_throughput_factor: 0.5
serving_references:
  - {model: Big-8B, params_b: 8, gpu: REF-80GB, dtype: bf16, engine: vLLM, engine_version: 0.26.0,
     concurrency: 16, output_len: 512, request_throughput_rps: 4, output_tokens_per_s: 2048, source: t}
  - {model: Big-8B, params_b: 8, gpu: REF-80GB, dtype: bf16, engine: vLLM, engine_version: 0.26.0,
     concurrency: 64, output_len: 512, request_throughput_rps: 12, output_tokens_per_s: 6144, source: t}
"""
UNKNOWN_DEVICE = "the device that served the benchmark is not recorded; check that it matches the instance"


def lab(extra: str = "") -> Catalog:
    return parse_catalog(yaml.safe_load(LAB + extra), "lab.yaml", Catalog())


def ref(model: str, params_b: float, gpu: str | None = "REF-80GB", **fields) -> str:
    """One serving reference as a line of YAML (bf16, vLLM, batch 16 unless `fields` say otherwise)."""
    entry = {"model": model, "params_b": params_b, "gpu": gpu, "dtype": "bf16", "engine": "vLLM"}
    entry |= {"concurrency": 16, "source": "t", **fields}
    return "  - " + yaml.safe_dump(entry, default_flow_style=True, width=10_000)


# --------------------------------------------------------------------------- analyzer


def test_an_analysis_reports_every_figure_with_its_basis():
    a = CostAnalyzer(lab())
    out = a.analyze(
        "ref-1",
        training_hours=2.0,
        throughput=Throughput(2.0, 100.0, "measured", "bench.json", "gpu:REF-80GB"),
    )
    assert out["instance"] == {**a.instance("ref-1").model_dump(), "gpu_family": "REF"}
    assert out["pricing"] == {
        "usd_per_hour": 4.0,
        "spot": False,
        "price_date": "2026-01-01",
        "source": "https://example.com/ref",
    }
    assert out["training"] == {"hours": 2.0, "cost_usd": 8.0, "basis": "measured", "source": ""}
    per_1k, per_1m = 4.0 / (3600 * 2.0) * 1000, 4.0 / (3600 * 100.0) * 1e6
    assert out["inference"] == {
        "requests_per_second": 2.0,
        "output_tokens_per_second": 100.0,
        "cost_per_1k_requests_usd": pytest.approx(per_1k),
        "cost_per_1m_output_tokens_usd": pytest.approx(per_1m),
        "basis": "measured",
        "source": "bench.json",
        "device": "gpu:REF-80GB",
    }
    split = a.breakdown("ref-1")
    b = out["breakdown"]
    assert set(b) == {"rule", "usd_per_hour", "training_usd", "inference_per_1k_requests_usd"}
    assert b["rule"] == BREAKDOWN_RULE and b["usd_per_hour"] == split
    assert b["training_usd"] == pytest.approx({k: 2.0 * v for k, v in split.items()})
    assert b["inference_per_1k_requests_usd"] == pytest.approx(
        {k: per_1k * v / 4.0 for k, v in split.items()}
    )
    assert out["notes"] == ["a lab price"]  # measured on the instance's own GPU family: nothing to add
    tokens_only = a.analyze("ref-1", throughput=Throughput(None, 100.0, "estimated", "x", "gpu:REF"))
    assert tokens_only["inference"]["cost_per_1k_requests_usd"] is None and tokens_only["training"] is None
    assert "inference_per_1k_requests_usd" not in tokens_only["breakdown"]
    with pytest.raises(ConfigError, match="training basis must be 'measured' or 'estimated'"):
        a.analyze("ref-1", training_hours=1.0, training_basis="guessed")


def test_spot_prices_every_figure_of_an_analysis():
    a = CostAnalyzer(lab())
    assert a.hourly_rate("ref-1") == 4.0 and a.hourly_rate("ref-1", spot=True) == 2.0
    out = a.analyze("ref-1", 1.0, throughput=Throughput(2.0, 100.0, "measured", "b", "gpu:REF"), spot=True)
    assert out["pricing"]["usd_per_hour"] == 2.0 and out["pricing"]["spot"] is True
    assert out["training"]["cost_usd"] == 2.0
    assert out["inference"]["cost_per_1k_requests_usd"] == pytest.approx(2.0 / (3600 * 2.0) * 1000)
    assert out["inference"]["cost_per_1m_output_tokens_usd"] == pytest.approx(2.0 / (3600 * 100.0) * 1e6)


def test_notes_say_what_a_figure_assumes():
    a = CostAnalyzer(lab())

    def notes(instance, device, basis="measured"):
        return a.analyze(instance, throughput=Throughput(1.0, None, basis, "b", device))["notes"]

    other = (
        "throughput measured on NVIDIA SLOW, priced on 1x REF-80GB: the cost assumes the same throughput "
        "on that GPU"
    )
    assert notes("ref-1", "gpu:NVIDIA SLOW") == ["a lab price", other]
    assert notes("ref-1", "gpu:nvidia ref") == ["a lab price"]  # the family matches whatever the case
    assert notes("ref-1", "unknown") == ["a lab price", UNKNOWN_DEVICE]
    assert notes("ref-1", "") == ["a lab price", UNKNOWN_DEVICE]
    assert notes("ref-1", "unknown", "estimated") == ["a lab price"]  # an estimate names its own basis
    assert notes("cpu-2", "cpu") == []
    bare = "gpuonly bills CPU and memory on top of this price; they are not included"
    assert notes("ref-bare", "gpu:REF") == [bare]
    assert a.analyze("ref-2")["notes"] == []


def test_device_errors_name_the_source_and_the_way_out():
    a = CostAnalyzer(lab())
    with pytest.raises(
        ConfigError,
        match=r"the throughput \(bench\.json\) was measured on a CPU; pricing it on GPU instance 'ref-1' .*"
        r"Price it on a CPU instance \(c7i\.large, m7i\.xlarge, n2-standard-2\), benchmark on the GPU, or "
        r"give --rps as an estimate",
    ):
        a.analyze("ref-1", throughput=Throughput(1.0, None, "measured", "bench.json", "cpu"))
    with pytest.raises(ConfigError, match=r"the throughput \(given\) was measured on a CPU"):
        a.analyze("ref-1", throughput=Throughput(1.0, None, "measured", "", "cpu"))
    with pytest.raises(
        ConfigError,
        match=r"the throughput \(bench\.json\) was measured on a GPU \(NVIDIA H100\); CPU instance 'cpu-2' "
        r"would not reach it",
    ):
        a.analyze("cpu-2", throughput=Throughput(1.0, None, "measured", "bench.json", "gpu:NVIDIA H100"))
    with pytest.raises(ConfigError, match=r"the throughput \(given\) was measured on a GPU"):
        a.analyze("cpu-2", throughput=Throughput(1.0, None, "measured", "", "gpu:NVIDIA H100"))


def test_throughput_errors_say_which_figure_and_why():
    with pytest.raises(
        ConfigError, match=r"^throughput basis must be 'measured' or 'estimated', got 'guessed'$"
    ):
        Throughput(1.0, None, "guessed")
    with pytest.raises(
        ConfigError,
        match=r"^requests per second must be > 0 to price it, got 0\.0 "
        r"\(the benchmark completed no request\)$",
    ):
        Throughput(0.0)
    with pytest.raises(ConfigError, match=r"^output tokens per second must be > 0 to price it, got -1\.0$"):
        Throughput(None, -1.0)
    with pytest.raises(
        ConfigError, match="a throughput needs requests per second or output tokens per second"
    ):
        Throughput()


@pytest.mark.parametrize("bad", [True, "3", 0, -1.0, math.inf, math.nan])
def test_throughputs_and_hours_must_be_numbers(bad):
    a = CostAnalyzer(lab())
    got = re.escape(repr(bad))
    with pytest.raises(ConfigError, match=f"requests per second must be a number > 0, got {got}"):
        a.calculate_inference_cost("ref-1", bad)
    with pytest.raises(ConfigError, match=f"output tokens per second must be a number > 0, got {got}"):
        a.cost_per_million_tokens("ref-1", bad)
    if bad == 0:
        assert a.calculate_training_cost("ref-1", bad) == 0.0  # no training costs nothing
    else:
        with pytest.raises(ConfigError, match=f"training hours must be a number >= 0, got {got}"):
            a.calculate_training_cost("ref-1", bad)


def test_a_host_size_the_catalog_does_not_know_has_no_share():
    a = CostAnalyzer(lab())
    no_vcpus = a.breakdown("slow-1")  # 64 GB of memory, vCPUs unknown
    assert no_vcpus["cpu"] == pytest.approx(0.0, abs=1e-12)
    assert no_vcpus["memory"] == pytest.approx(64 * HOST_RATES["memory_usd_per_gb_hour"])
    no_memory = a.breakdown("ref-8")  # 96 vCPUs, memory unknown
    assert no_memory["memory"] == pytest.approx(0.0, abs=1e-12)
    assert no_memory["cpu"] == pytest.approx(96 * HOST_RATES["vcpu_usd_per_hour"])


def test_estimated_training_hours_scale_with_gpus_model_size_and_qlora():
    a = CostAnalyzer(lab())  # the REF reference: 1,000 tok/s on a 7B model; QLoRA at 0.5 of that
    base = "reference 1,000 tok/s on REF (lab run), scaled to 7B"
    one, two, eight = a.instance("ref-1"), a.instance("ref-2"), a.instance("ref-8")
    assert a.estimated_training_hours(one, 3_600_000, 7.0) == (pytest.approx(1.0), base)
    assert a.estimated_training_hours(one, 3_600_000, 14.0)[0] == pytest.approx(2.0)
    assert a.estimated_training_hours(one, 3_600_000, 7.0, "qlora") == (
        pytest.approx(2.0),
        base + ", x0.5 for QLoRA",
    )
    linear = ", x{} GPUs (linear scaling assumed)"
    assert a.estimated_training_hours(two, 3_600_000, 7.0) == (pytest.approx(0.5), base + linear.format(2))
    assert a.estimated_training_hours(eight, 3_600_000, 7.0, "qlora") == (
        pytest.approx(0.25),
        base + ", x0.5 for QLoRA" + linear.format(8),
    )
    assert a.estimated_training_hours(a.instance("slow-1"), 1e6, 7.0) is None  # no reference for SLOW
    assert a.estimated_training_hours(a.instance("cpu-2"), 1e6, 7.0) is None


def test_a_comparison_row_carries_every_input_and_figure():
    a = CostAnalyzer(lab())
    result = a.compare_configurations(
        [
            {
                "instance": "ref-1",
                "name": "mine",
                "method": "qlora",
                "precision": "4bit",
                "spot": True,
                "training_hours": 2.0,
                "training_basis": "estimated",
                "training_source": "my guess",
                "requests_per_second": 2.0,
                "output_tokens_per_second": 100.0,
                "basis": "estimated",
                "source": "bench.json",
                "device": "gpu:NVIDIA SLOW",
            },
            {"instance": "cpu-2", "method": "lora", "training_tokens": 3_600_000},  # no reference: no hours
            {
                "instance": "ref-2",
                "precision": "bf16",
                "training_tokens": 7_200_000,
                "requests_per_second": 1.0,
            },
            {"instance": "ref-1", "method": "qlora", "training_tokens": 3_600_000, "params_b": 3.5},
            {"instance": "ref-1", "training_hours": 0.5},
        ]
    )
    assert result["breakdown_rule"] == BREAKDOWN_RULE
    rows = result["configs"]
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["name"] for r in rows] == ["mine", "cpu-2 lora", "ref-2 bf16", "ref-1 qlora", "ref-1"]
    first = dict(rows[0])
    assert first.pop("cost_per_1k_requests_usd") == pytest.approx(2.0 / (3600 * 2.0) * 1000)
    assert first.pop("cost_per_1m_output_tokens_usd") == pytest.approx(2.0 / (3600 * 100.0) * 1e6)
    assert first == {
        "index": 0,
        "name": "mine",
        "instance": "ref-1",
        "provider": "lab",
        "gpu": "1x REF-80GB",
        "method": "qlora",
        "precision": "4bit",
        "usd_per_hour": 2.0,
        "spot": True,
        "training_hours": 2.0,
        "training_cost_usd": 4.0,
        "training_basis": "estimated",
        "training_source": "my guess",
        "requests_per_second": 2.0,
        "output_tokens_per_second": 100.0,
        "inference_basis": "estimated",
        "inference_source": "bench.json",
        "breakdown_usd_per_hour": a.breakdown("ref-1", spot=True),
        "notes": [
            "a lab price",
            "throughput measured on NVIDIA SLOW, priced on 1x REF-80GB: the cost assumes the same "
            "throughput on that GPU",
        ],
    }
    cpu, two, qlora, plain = rows[1:]
    assert (cpu["gpu"], cpu["method"], cpu["precision"], cpu["spot"]) == ("CPU", "lora", None, False)
    assert (
        cpu["training_hours"],
        cpu["training_cost_usd"],
        cpu["training_basis"],
        cpu["training_source"],
    ) == (
        None,
        None,
        None,
        None,
    )
    assert cpu["requests_per_second"] is None and cpu["inference_basis"] is None and cpu["notes"] == []
    # 7.2M tokens on 2 GPUs at 1,000 tok/s each, for the default 7B model with LoRA: one hour
    assert two["training_hours"] == pytest.approx(1.0) and two["training_basis"] == "estimated"
    assert (
        two["training_source"]
        == "reference 1,000 tok/s on REF (lab run), scaled to 7B, x2 GPUs (linear scaling assumed)"
    )
    assert (two["inference_basis"], two["inference_source"]) == ("measured", "")
    assert two["notes"] == [UNKNOWN_DEVICE]  # no device given: unknown
    assert qlora["training_hours"] == pytest.approx(1.0)  # half the model at half the speed
    assert qlora["training_source"].endswith(", scaled to 3.5B, x0.5 for QLoRA")
    assert (plain["training_cost_usd"], plain["training_basis"], plain["training_source"]) == (
        2.0,
        "measured",
        "",
    )
    assert result["cheapest"] == {"training": "ref-1", "inference": "mine"}  # 2.0 USD; 0.28 USD per 1K


def test_comparison_errors_name_the_configuration_and_field():
    a = CostAnalyzer(lab())
    with pytest.raises(ConfigError, match="compare needs at least one configuration"):
        a.compare_configurations([])
    with pytest.raises(ConfigError, match="configuration 2: field 'instance' is required"):
        a.compare_configurations([{"instance": "ref-1"}, {"name": "no instance"}])
    with pytest.raises(ConfigError, match="training_tokens must be a number > 0, got 0"):
        a.compare_configurations([{"instance": "ref-1", "training_tokens": 0}])
    with pytest.raises(ConfigError, match="params_b must be a number > 0, got -1"):
        a.compare_configurations([{"instance": "ref-1", "training_tokens": 10, "params_b": -1}])
    assert a.compare_configurations([{"instance": "ref-1"}])["cheapest"] == {
        "training": None,
        "inference": None,
    }


# --------------------------------------------------------------------------- serving estimates


def test_model_names_match_across_orgs_paths_suffixes_and_shapes():
    r = pick_reference(lab(ref("Mistral-7B shape", 7.2, output_len=10, output_tokens_per_s=100)), 7.2, 16)
    assert r.dtype == "bf16"  # bf16 unless asked otherwise
    assert same_model(r, "mistralai/Mistral-7B-Instruct-v0.3")
    smol = pick_reference(
        lab(ref("SmolLM2-135M-Instruct", 0.135, output_len=10, output_tokens_per_s=100)), 0.135
    )
    assert same_model(smol, "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert same_model(smol, "/models/HuggingFaceTB/SmolLM2-135M")
    assert not same_model(smol, "SmolLM2-360M-Instruct") and not same_model(smol, None)


def test_only_bf16_references_on_a_known_gpu_with_a_figure_are_scaled():
    refs = ref("Quant-8B", 8, dtype="awq-4bit", output_len=512, output_tokens_per_s=99_999) + ref(
        "Mystery-8B", 8, gpu="MYSTERY-80GB", output_len=512, output_tokens_per_s=99_999
    )
    assert pick_reference(lab(refs), 8.0, concurrency=16).model == "Big-8B"
    with pytest.raises(
        ConfigError,
        match=r"no fp8 serving reference measured on a GPU of the catalog's `gpus` section; add one under "
        r"serving_references \(tuneforge/cost/catalog\.yaml shows the shape\)",
    ):
        pick_reference(lab(), 8.0, dtype="fp8")


def test_the_reference_is_the_closest_size_then_concurrency_then_the_target_gpu():
    refs = ref("Near-1B", 1.0, output_len=512, output_tokens_per_s=1000) + ref(
        "Edge-1B", 1.25, concurrency=64, output_len=512, output_tokens_per_s=3000
    )
    # within 25% of the closest size counts as the same size: there, the same concurrency wins
    assert pick_reference(lab(refs), 1.0, concurrency=64).model == "Edge-1B"
    assert pick_reference(lab(refs), 1.0, concurrency=16).model == "Near-1B"
    # the closest concurrency by ratio: 128 is 2x from 64 and 8x from 16
    assert pick_reference(lab(), 8.0, concurrency=128).concurrency == 64
    assert pick_reference(lab(), 8.0, concurrency=20).concurrency == 16
    # all else equal, a reference measured on the GPU asked for
    same = ref("Twin-2B", 2.0, output_len=512, output_tokens_per_s=1000)
    twins = same + same.replace("REF-80GB", "SLOW-24GB").replace("1000", "400")
    assert pick_reference(lab(twins), 2.0, 16, gpu="slow-24gb").gpu == "SLOW-24GB"
    assert pick_reference(lab(twins), 2.0, 16, gpu="REF-80GB").gpu == "REF-80GB"
    est = estimate_serving_throughput(2.0, "SLOW-24GB", lab(twins), concurrency=16)
    assert est.output_tokens_per_second == 400 and est.bandwidth_ratio == 1.0
    assert est.basis == "estimated: vLLM Twin-2B bf16 measured on SLOW-24GB (batch 16), same GPU"


def test_an_estimate_scales_by_bandwidth_size_and_gpus_and_says_so():
    catalog = lab(ref("Pair-8B", 8, gpu_count=2, concurrency=8, output_len=100, request_throughput_rps=40))
    pair = estimate_serving_throughput(8, "REF-80GB", catalog, concurrency=8)
    assert pair.output_tokens_per_second == 2000 and pair.requests_per_second == 20  # per GPU: half of 2
    assert pair.basis == "estimated: vLLM Pair-8B bf16 measured on 2x REF-80GB (batch 8), same GPU"
    wide = estimate_serving_throughput(16, CostAnalyzer(catalog).instance("ref-2"), catalog, concurrency=16)
    assert (wide.gpu, wide.gpu_count, wide.params_ratio, wide.upper_bound) == ("REF-80GB", 2, 0.5, False)
    assert wide.output_tokens_per_second == 2048 and wide.requests_per_second == 4
    assert wide.basis == (
        "estimated: vLLM 0.26.0 Big-8B bf16 measured on REF-80GB (batch 16), same GPU, "
        "parameters 8B->16B (x0.5), x2 GPUs (one replica per GPU)"
    )
    closest = estimate_serving_throughput(8, "SLOW-24GB", lab(), concurrency=20)
    assert closest.basis == (
        "estimated: vLLM 0.26.0 Big-8B bf16 measured on REF-80GB (batch 16, the closest measured to 20), "
        "scaled by memory bandwidth REF-80GB->SLOW-24GB (x0.25)"
    )
    assert (closest.gpu, closest.gpu_count) == ("SLOW-24GB", 1)
    # a reference that gives one figure and no output length: the other stays unknown
    only_rps = estimate_serving_throughput(1, "REF-80GB", lab(ref("R-1B", 1, request_throughput_rps=3)), 16)
    assert (only_rps.requests_per_second, only_rps.output_tokens_per_second) == (3, None)
    only_tok = estimate_serving_throughput(1, "REF-80GB", lab(ref("T-1B", 1, output_tokens_per_s=300)), 16)
    assert (only_tok.requests_per_second, only_tok.output_tokens_per_second) == (None, 300)


def test_requests_of_another_length_change_requests_per_second_only():
    same = estimate_serving_throughput(8, "REF-80GB", lab(), concurrency=16, output_len=512)
    assert same.requests_per_second == 4 and "output tokens instead of" not in same.basis
    longer = estimate_serving_throughput(8, "REF-80GB", lab(), concurrency=16, output_len=513)
    assert longer.output_tokens_per_second == 2048 and longer.requests_per_second == pytest.approx(2048 / 513)
    assert longer.basis.endswith(", requests of 513 output tokens instead of 512 (prefill ignored)")


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, "7"])
def test_an_estimate_needs_a_model_size_and_a_gpu(bad):
    with pytest.raises(ConfigError, match=f"params_b must be a number > 0, got {re.escape(repr(bad))}"):
        estimate_serving_throughput(bad, "REF-80GB", lab())
    a = CostAnalyzer(lab())
    with pytest.raises(ConfigError, match="instance 'cpu-2' has no GPU"):
        estimate_serving_throughput(1.0, a.instance("cpu-2"), lab())
    with pytest.raises(
        ConfigError,
        match=r"no memory bandwidth for GPU 'B200' in the catalog; add it under `gpus` \(name, "
        r"memory_bandwidth_gbps, memory_gb, source\)",
    ):
        estimate_serving_throughput(1.0, "B200", lab())
    assert weights_gb(7.0) == weights_gb(7.0, "fp16") == 14.0
    assert weights_gb(7.0, "awq-4bit") == 14.0  # any dtype is sized in bf16, as the module docstring says


def test_a_table_of_estimates_passes_the_workload_on_and_prices_every_gpu_instance():
    catalog = lab(
        ref("Other-7B", 7, output_len=512, output_tokens_per_s=50_000)
    )  # closer in size than Big-8B
    a = CostAnalyzer(catalog)
    result = estimate_serving_costs(a, 7.0, concurrency=16, output_len=256, model="Big-8B", top=3)
    assert {k: v for k, v in result.items() if k != "rows"} == {
        "params_b": 7.0,
        "model": "Big-8B",
        "concurrency": 16,
        "output_len": 256,
        "method": METHOD,
        "not_shown": 2,
        "skipped": [{"instance": "tiny-1", "reason": "14 GB of bf16 weights exceed 90% of TINY-8GB's 8 GB"}],
    }
    rows = result["rows"]
    assert [r["instance"] for r in rows] == ["ref-bare", "slow-1", "ref-1"]  # cheapest first, 3 of 5
    est = estimate_serving_throughput(7.0, a.instance("slow-1"), catalog, 16, 256, "Big-8B")
    assert (
        est.reference.model == "Big-8B" and est.reference.concurrency == 16
    )  # the model and batch asked for
    assert est.requests_per_second == pytest.approx(2048 * 0.25 * 8 / 7 / 256)  # 256 tokens per request
    per_1k = a.calculate_inference_cost("slow-1", est.requests_per_second)
    assert rows[1] == {
        "basis": "estimated",
        "instance": "slow-1",
        "provider": "lab",
        "hardware": "1x SLOW-24GB",
        "usd_per_hour": 0.9,
        "requests_per_second": est.requests_per_second,
        "output_tokens_per_second": est.output_tokens_per_second,
        "cost_per_1k_requests_usd": per_1k,
        "cost_per_1m_output_tokens_usd": a.cost_per_million_tokens("slow-1", est.output_tokens_per_second),
        "how": est.basis,
        "upper_bound": True,
        "reference": "Big-8B on REF-80GB, batch 16",
        "inference_per_1k_requests_usd": {k: per_1k * v / 0.9 for k, v in a.breakdown("slow-1").items()},
    }
    assert estimate_serving_costs(a, 7.0, top=0)["rows"] == []
    assert estimate_serving_costs(a, 7.0, top=0)["not_shown"] == 5


def test_a_table_of_spot_estimates_skips_instances_without_a_spot_price_and_says_why():
    result = estimate_serving_costs(CostAnalyzer(lab()), 8.0, spot=True)
    assert [(r["instance"], r["usd_per_hour"]) for r in result["rows"]] == [("slow-1", 0.4), ("ref-1", 2.0)]
    skipped = {s["instance"]: s["reason"] for s in result["skipped"]}
    assert list(skipped) == ["ref-2", "ref-8", "ref-bare", "tiny-1"]
    assert skipped["ref-2"].startswith("instance 'ref-2' has no spot price in the catalog")


def test_rows_without_a_request_figure_sort_after_those_with_one():
    # REF's reference gives requests/s; SLOW's gives tokens/s only (no output length): SLOW rows have no
    # cost per 1K requests and come last, ordered by their cost per 1M tokens
    refs = ref("Split-2B", 2, request_throughput_rps=1, output_tokens_per_s=100, output_len=100) + ref(
        "Split-2B", 2, gpu="SLOW-24GB", output_tokens_per_s=1000
    )
    rows = estimate_serving_costs(CostAnalyzer(lab(refs)), 2.0, model="Split-2B")["rows"]
    priced = [r for r in rows if r["cost_per_1k_requests_usd"] is not None]
    assert rows[: len(priced)] == sorted(priced, key=lambda r: r["cost_per_1k_requests_usd"])
    rest = rows[len(priced) :]
    assert [r["instance"] for r in rest] == ["slow-1"] and rest[0][
        "cost_per_1m_output_tokens_usd"
    ] is not None
    assert priced[-1]["cost_per_1m_output_tokens_usd"] > rest[0]["cost_per_1m_output_tokens_usd"]


def test_model_size_from_a_known_config_or_from_the_name():
    for known, config in KNOWN_SHAPES.items():
        count = ModelShape.from_config(config).parameter_count()
        assert params_from_model_name(known) == count / 1e9
        assert params_from_model_name(known.rsplit("/", 1)[-1].upper()) == count / 1e9  # the name, any case
    assert params_from_model_name("Mistral-7B-Instruct-v0.3") == pytest.approx(7.248, rel=1e-3)  # not 7
    assert params_from_model_name("acme/tiny-350M") == 0.35
    assert params_from_model_name("acme/Tiny-1.5b-chat") == 1.5
    assert params_from_model_name("acme-13b/adapter") is None  # the org's name says nothing of the model
    assert params_from_model_name("models/acme-13b/adapter") is None
    assert params_from_model_name("") is None
