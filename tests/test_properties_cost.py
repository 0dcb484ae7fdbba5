"""Properties 33-36 of the design: training cost, inference cost, comparisons, cost report."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneforge.cost.analyzer import CostAnalyzer, Throughput
from tuneforge.cost.catalog import Catalog, load_catalog, parse_catalog
from tuneforge.cost.report import RESOURCES, generate_cost_report, render_cost_html, usd

BUILTIN = load_catalog()
NAMES = BUILTIN.names()
PRICE = st.floats(0.01, 150.0, allow_nan=False)


@st.composite
def instances(draw):
    """Catalog entries as a user would write them: GPU (host included or not) and CPU machines."""
    gpu = draw(st.booleans())
    entry = {
        "provider": draw(st.sampled_from(["aws", "gcp", "azure", "lambda", "runpod", "modal", "mine"])),
        "name": "inst-" + draw(st.text("abcdefgh0123456789", min_size=3, max_size=10)),
        "on_demand_usd_per_hour": draw(PRICE),
        "spot_usd_per_hour": draw(st.one_of(st.none(), PRICE)),
        "gpu": draw(st.sampled_from(["H100-SXM-80GB", "A100-SXM-40GB", "L4-24GB", "T4-16GB"]))
        if gpu
        else None,
        "gpu_count": draw(st.sampled_from([1, 2, 4, 8])) if gpu else 0,
        "gpu_memory_gb": draw(st.sampled_from([16, 24, 40, 80])) if gpu else None,
        "vcpus": draw(st.one_of(st.none(), st.integers(1, 256))),
        "memory_gb": draw(st.one_of(st.none(), st.floats(1.0, 2048.0))),
        "host_included": draw(st.booleans()) if gpu else True,
        "price_date": "2026-01-01",
        "source": "https://example.com/prices",
    }
    catalog = parse_catalog({"instances": [entry]}, "test.yaml", Catalog())
    return catalog, entry


# Feature: llm-fine-tuning-inference, Property 33: Training cost calculation correctness
@settings(max_examples=200, deadline=None)
@given(inst=instances(), hours=st.floats(0.0, 10_000.0), spot=st.booleans())
def test_property_33_training_cost_is_rate_times_hours(inst, hours, spot):
    catalog, entry = inst
    analyzer = CostAnalyzer(catalog)
    if spot and entry["spot_usd_per_hour"] is None:
        with pytest.raises(Exception, match="no spot price"):
            analyzer.calculate_training_cost(entry["name"], hours, spot=True)
        return
    rate = entry["spot_usd_per_hour"] if spot else entry["on_demand_usd_per_hour"]
    assert analyzer.calculate_training_cost(entry["name"], hours, spot) == pytest.approx(
        rate * hours, rel=1e-12
    )
    analysis = analyzer.analyze(entry["name"], training_hours=hours, spot=spot)
    assert analysis["training"]["cost_usd"] == pytest.approx(rate * hours, rel=1e-12)
    assert sum(analysis["breakdown"]["training_usd"].values()) == pytest.approx(
        rate * hours, rel=1e-9, abs=1e-9
    )


# Feature: llm-fine-tuning-inference, Property 34: Inference cost calculation correctness
@settings(max_examples=200, deadline=None)
@given(inst=instances(), rps=st.floats(0.001, 10_000.0), tok_s=st.floats(0.01, 100_000.0), spot=st.booleans())
def test_property_34_cost_per_1k_requests_is_rate_over_throughput(inst, rps, tok_s, spot):
    catalog, entry = inst
    analyzer = CostAnalyzer(catalog)
    if spot and entry["spot_usd_per_hour"] is None:
        with pytest.raises(Exception, match="no spot price"):
            analyzer.calculate_inference_cost(entry["name"], rps, spot=True)
        return
    rate = entry["spot_usd_per_hour"] if spot else entry["on_demand_usd_per_hour"]
    per_1k = analyzer.calculate_inference_cost(entry["name"], rps, spot=spot)
    assert per_1k == pytest.approx(rate / (3600 * rps) * 1000, rel=1e-12)
    # the same figure seen as cost per request: an hour's price over an hour's requests
    assert per_1k / 1000 == pytest.approx(rate / (rps * 3600), rel=1e-12)
    assert analyzer.cost_per_million_tokens(entry["name"], tok_s, spot=spot) == pytest.approx(
        rate / (3600 * tok_s) * 1e6, rel=1e-12
    )
    for bad in (0, -rps, float("nan")):
        with pytest.raises(Exception, match="> 0"):
            analyzer.calculate_inference_cost(entry["name"], bad)


CONFIG = st.fixed_dictionaries(
    {"instance": st.sampled_from(NAMES)},
    optional={
        "training_hours": st.floats(0.0, 500.0),
        "requests_per_second": st.floats(0.01, 500.0),
        "output_tokens_per_second": st.floats(1.0, 50_000.0),
        "method": st.sampled_from(["lora", "qlora"]),
        "precision": st.sampled_from(["bf16", "4bit"]),
        "basis": st.sampled_from(["measured", "estimated"]),
    },
)


# Feature: llm-fine-tuning-inference, Property 35: Configuration comparison shows all configs
@settings(max_examples=100, deadline=None)
@given(configs=st.lists(CONFIG, min_size=1, max_size=8))
def test_property_35_comparison_has_cost_metrics_for_every_config(configs):
    analyzer = CostAnalyzer(BUILTIN)
    result = analyzer.compare_configurations(configs)
    assert len(result["configs"]) == len(configs)  # duplicates kept, nothing dropped
    for cfg, row in zip(configs, result["configs"], strict=True):
        inst = BUILTIN.get(cfg["instance"])
        assert row["instance"] == cfg["instance"]
        assert row["usd_per_hour"] == inst.on_demand_usd_per_hour
        if "training_hours" in cfg:
            assert row["training_cost_usd"] == pytest.approx(
                inst.on_demand_usd_per_hour * cfg["training_hours"]
            )
        if "requests_per_second" in cfg:
            assert row["cost_per_1k_requests_usd"] == pytest.approx(
                analyzer.calculate_inference_cost(inst, cfg["requests_per_second"])
            )
            assert row["inference_basis"] == cfg.get("basis", "measured")
        if "output_tokens_per_second" in cfg:
            assert row["cost_per_1m_output_tokens_usd"] is not None
    markdown = generate_cost_report(result)
    page = render_cost_html(result)
    for row in result["configs"]:
        assert row["name"] in markdown and row["name"] in page
        assert usd(row["training_cost_usd"]) in markdown
        assert usd(row["cost_per_1k_requests_usd"]) in markdown


# Feature: llm-fine-tuning-inference, Property 36: Cost report completeness
@settings(max_examples=100, deadline=None)
@given(inst=instances(), hours=st.floats(0.001, 1000.0), rps=st.floats(0.01, 1000.0))
def test_property_36_report_has_training_inference_and_resource_breakdown(inst, hours, rps):
    catalog, entry = inst
    analyzer = CostAnalyzer(catalog)
    device = "gpu:test" if entry["gpu"] else "cpu"
    analysis = analyzer.analyze(
        entry["name"], hours, "measured", "a run", Throughput(rps, None, "measured", "b", device)
    )
    b = analysis["breakdown"]
    assert set(b["usd_per_hour"]) == set(RESOURCES)
    assert sum(b["usd_per_hour"].values()) == pytest.approx(entry["on_demand_usd_per_hour"], rel=1e-9)
    assert all(v >= 0 for v in b["usd_per_hour"].values())
    if not entry["gpu"]:
        assert b["usd_per_hour"]["gpu"] == 0
    markdown = generate_cost_report(analysis)
    page = render_cost_html(analysis)
    for doc in (markdown, page):
        assert "training cost" in doc and usd(analysis["training"]["cost_usd"]) in doc
        assert "inference cost per 1K requests" in doc
        assert usd(analysis["inference"]["cost_per_1k_requests_usd"]) in doc
        for key in ("usd_per_hour", "training_usd", "inference_per_1k_requests_usd"):
            line = ", ".join(f"{r.upper()} {usd(b[key][r])}" for r in RESOURCES)
            assert line in doc
        assert "measured" in doc
