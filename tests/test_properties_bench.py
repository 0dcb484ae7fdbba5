"""Properties 29-32 of the design: benchmark percentiles, throughput, resource monitoring, report."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneforge.bench.report import fmt, generate_benchmark_report, render_benchmark_html
from tuneforge.bench.resources import FIELDS, monitor_resources, summarize_samples
from tuneforge.bench.stats import METRICS, RequestRecord, summarize

SECONDS = st.floats(0.0005, 30.0, allow_nan=False)


@st.composite
def records(draw, min_ok: int = 0):
    """A run's records: completed requests with consistent timings, and failures of every kind."""
    n_ok = draw(st.integers(min_ok, 25))
    out = []
    for _ in range(n_ok):
        ttft = draw(SECONDS)
        tokens = draw(st.integers(1, 64))
        gaps = draw(st.lists(st.floats(0.0001, 2.0), min_size=tokens - 1, max_size=tokens - 1))
        e2e = ttft + sum(gaps) + draw(st.floats(0.0, 0.5))
        out.append(
            RequestRecord(
                ok=True,
                status=200,
                ttft_s=ttft,
                e2e_s=e2e,
                itl_s=gaps,
                input_tokens=draw(st.integers(1, 500)),
                output_tokens=tokens,
            )
        )
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(["http_503", "stream_error", "timeout", "connect", "incomplete_stream"]))
        out.append(
            RequestRecord(
                ok=False, error_kind=kind, e2e_s=draw(SECONDS), output_tokens=draw(st.integers(0, 5))
            )
        )
    return draw(st.permutations(out))


def _numpy_ms(values):
    return {p: float(np.percentile(np.array(values) * 1000, p)) for p in (50, 95, 99)}


# Feature: llm-fine-tuning-inference, Property 29: Benchmark measures all percentiles
@settings(max_examples=200, deadline=None)
@given(recs=records(min_ok=1), wall=st.floats(0.01, 1000.0))
def test_property_29_every_run_reports_p50_p95_p99_of_every_latency(recs, wall):
    summary = summarize(recs, wall)
    done = [r for r in recs if r.ok]
    samples = {
        "ttft": [r.ttft_s for r in done],
        "e2e": [r.e2e_s for r in done],
        "itl": [g for r in done for g in r.itl_s],
        "tpot": [(r.e2e_s - r.ttft_s) / (r.output_tokens - 1) for r in done if r.output_tokens > 1],
    }
    for metric in METRICS:
        dist = summary["latency_ms"][metric]
        assert {"p50", "p95", "p99"} <= set(dist)
        if not samples[metric]:  # e.g. every request generated one token: no TPOT, said as None
            assert dist["count"] == 0 and dist["p50"] is None
            continue
        assert dist["count"] == len(samples[metric])
        for p, expected in _numpy_ms(samples[metric]).items():
            assert dist[f"p{p}"] == pytest.approx(expected, rel=1e-9, abs=1e-9), (metric, p)
        assert dist["mean"] == pytest.approx(float(np.mean(samples[metric])) * 1000, rel=1e-9), metric
        assert dist["max"] == pytest.approx(max(samples[metric]) * 1000, rel=1e-12), metric
        assert dist["p50"] <= dist["p95"] <= dist["p99"] <= dist["max"] + 1e-9


# Feature: llm-fine-tuning-inference, Property 30: Throughput calculation correctness
@settings(max_examples=200, deadline=None)
@given(recs=records(), wall=st.floats(0.001, 10_000.0))
def test_property_30_throughput_is_completed_requests_over_duration(recs, wall):
    summary = summarize(recs, wall)
    completed = sum(r.ok for r in recs)
    assert summary["requests"]["total"] == len(recs)
    assert summary["requests"]["completed"] == completed
    assert summary["requests"]["failed"] == len(recs) - completed
    assert sum(summary["requests"]["errors"].values()) == len(recs) - completed
    assert summary["duration_s"] == wall
    assert summary["request_throughput_rps"] == pytest.approx(completed / wall, rel=1e-12)
    tokens = sum(r.output_tokens for r in recs if r.ok)
    assert summary["output_throughput_tok_s"] == pytest.approx(tokens / wall, rel=1e-12)


class FakeNVML:
    """A stand-in for pynvml: given devices, or a failure at a given call."""

    class NVMLError(Exception):
        pass

    def __init__(self, devices, fail_at=None):
        self.devices, self.fail_at = devices, fail_at

    def _maybe_fail(self, name):
        if self.fail_at == name:
            raise self.NVMLError(f"{name} failed")

    def nvmlInit(self):
        self._maybe_fail("init")

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        self._maybe_fail("count")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.devices[i]

    def nvmlDeviceGetUtilizationRates(self, d):
        self._maybe_fail("util")
        return SimpleNamespace(gpu=d["util"], memory=0)

    def nvmlDeviceGetMemoryInfo(self, d):
        return SimpleNamespace(used=d["used"], total=d["total"], free=d["total"] - d["used"])

    def nvmlDeviceGetPowerUsage(self, d):
        if d["power_mw"] is None:
            raise self.NVMLError("not supported")
        return d["power_mw"]

    def nvmlDeviceGetName(self, d):
        return b"NVIDIA H100 80GB HBM3"


DEVICE = st.fixed_dictionaries(
    {
        "util": st.integers(0, 100),
        "used": st.integers(0, 80 * 10**9),
        "total": st.just(80 * 10**9),
        "power_mw": st.one_of(st.none(), st.integers(50_000, 700_000)),
    }
)


# Feature: llm-fine-tuning-inference, Property 31: Resource monitoring completeness
@settings(max_examples=100, deadline=None)
@given(devices=st.lists(DEVICE, max_size=4), fail_at=st.sampled_from([None, None, "init", "count", "util"]))
def test_property_31_every_snapshot_has_gpu_utilization_and_memory(devices, fail_at):
    snap = monitor_resources(cpu_interval=None, nvml=FakeNVML(devices, fail_at))
    assert set(FIELDS) | {"gpu_available"} <= set(snap)
    assert snap["cpu_utilization_percent"] is not None and snap["process_memory_gb"] > 0
    if devices and fail_at is None:
        assert snap["gpu_available"] is True
        assert snap["gpu_utilization_percent"] == pytest.approx(np.mean([d["util"] for d in devices]))
        assert snap["gpu_memory_used_gb"] == pytest.approx(sum(d["used"] for d in devices) / 2**30)
        assert snap["gpu_memory_total_gb"] == pytest.approx(80e9 / 2**30 * len(devices))
        powers = [d["power_mw"] for d in devices]
        expected_power = None if None in powers else sum(powers) / 1000
        assert snap["gpu_power_w"] == (pytest.approx(expected_power) if expected_power is not None else None)
    else:
        assert snap["gpu_available"] is False
        assert all(snap[f] is None for f in FIELDS if f.startswith("gpu_"))
        assert snap["note"].startswith("no GPU")
    summary = summarize_samples([snap, snap])
    for f in FIELDS:
        assert summary[f]["max"] == snap[f]  # None where the snapshot has no value
        assert summary[f]["mean"] == (None if snap[f] is None else pytest.approx(snap[f]))


@st.composite
def samples(draw):
    """Resource snapshots where any field may be missing (None) in any sample, GPU or not."""
    gpu = draw(st.booleans())
    out = []
    for _ in range(draw(st.integers(0, 6))):
        snap = {f: draw(st.one_of(st.none(), st.floats(0, 1e4))) for f in FIELDS}
        if not gpu:
            snap.update({f: None for f in FIELDS if f.startswith("gpu_")}, note="no GPU: test")
        snap.update(gpu_available=gpu, gpu_name="H100" if gpu else None, gpu_count=2 if gpu else 0)
        out.append(snap)
    return out


@settings(max_examples=100, deadline=None)
@given(samples())
def test_summarize_samples_gives_each_fields_own_mean_and_max_over_the_samples_that_have_it(snaps):
    summary = summarize_samples(snaps)
    assert summary["samples"] == len(snaps)
    for f in FIELDS:
        values = [s[f] for s in snaps if s[f] is not None]
        if values:
            assert summary[f]["mean"] == pytest.approx(sum(values) / len(values), rel=1e-9, abs=1e-9)
            assert summary[f]["max"] == max(values)
            assert min(values) - 1e-9 <= summary[f]["mean"] <= max(values) + 1e-9
        else:
            assert summary[f] == {"mean": None, "max": None}
    gpu = any(s["gpu_available"] for s in snaps)
    assert summary["gpu_available"] is gpu
    assert (summary["gpu_name"], summary["gpu_count"]) == (("H100", 2) if gpu else (None, 0))
    if not gpu:
        assert summary["note"] == ("no GPU: test" if snaps else "no samples taken")


@st.composite
def bench_results(draw):
    runs = []
    for c in draw(st.lists(st.integers(1, 64), min_size=1, max_size=4, unique=True)):
        recs = draw(records(min_ok=1))
        summary = summarize(recs, draw(st.floats(0.1, 500.0)))
        gpu = draw(st.booleans())
        value = st.floats(0.0, 100.0)
        resources = {
            "samples": 3,
            "gpu_available": gpu,
            "gpu_name": "NVIDIA H100" if gpu else None,
            **{
                f: ({"mean": draw(value), "max": draw(value)} if gpu or not f.startswith("gpu_") else None)
                for f in FIELDS
            },
        }
        if not gpu:
            resources.update({f: {"mean": None, "max": None} for f in FIELDS if f.startswith("gpu_")})
            resources["note"] = "no GPU: NVML is not available"
        load = {"mode": "concurrency", "concurrency": c}
        records_ = [r.to_dict() for r in recs]
        runs.append({"load": load, "summary": summary, "resources": resources, "records": records_})
    return {"title": "t", "target": {"api": "openai", "model": "m"}, "runs": runs}


# Feature: llm-fine-tuning-inference, Property 32: Benchmark report completeness
@settings(max_examples=100, deadline=None)
@given(results=bench_results())
def test_property_32_report_contains_every_measurement(results):
    markdown = generate_benchmark_report(results)
    page = render_benchmark_html(results)
    for doc in (markdown, page):
        for run in results["runs"]:
            s, res = run["summary"], run["resources"]
            assert f"concurrency {run['load']['concurrency']}" in doc
            for metric in METRICS:
                d = s["latency_ms"][metric]
                values = " / ".join(fmt(d[k]) for k in ("mean", "p50", "p95", "p99", "max"))
                assert f"{metric.upper()} (ms) mean / p50 / p95 / p99 / max" in doc
                assert values in doc
            assert fmt(s["request_throughput_rps"]) in doc
            assert fmt(s["output_throughput_tok_s"]) in doc
            assert f"{s['requests']['total']} sent, {s['requests']['completed']} completed" in doc
            for kind, n in s["requests"]["errors"].items():
                assert f"{kind}: {n}" in doc
            if res["gpu_available"]:
                util = res["gpu_utilization_percent"]
                assert f"{fmt(util['mean'])} / {fmt(util['max'])}" in doc
                assert fmt(res["gpu_memory_used_gb"]["max"]) in doc
            else:
                assert "n/a (no GPU" in doc
            assert fmt(res["cpu_utilization_percent"]["mean"]) in doc
            assert fmt(res["process_memory_gb"]["max"]) in doc
    assert "<svg" in page and "<script" not in page
    assert not math.isnan(sum(r["summary"]["request_throughput_rps"] for r in results["runs"]))
