"""Benchmark statistics on known numbers, and the load generator against a real server process whose
failures are known in advance (tests/servers/flaky_openai.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tuneforge.bench.client import (
    LoadSpec,
    dataset_prompts,
    poisson_arrivals,
    run_benchmark,
    synthetic_prompts,
)
from tuneforge.bench.stats import RequestRecord, distribution, percentile, summarize
from tuneforge.bench.targets import EngineTarget, GenerateTarget, OpenAITarget
from tuneforge.config import SamplingParams

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "tests" / "servers" / "flaky_openai.py"
FAIL_EVERY, ERROR_EVERY, TOKENS = 5, 3, 6


# --------------------------------------------------------------------------- statistics


def test_percentile_interpolates_linearly_like_numpy():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == pytest.approx(3.97)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="percentile of no values"):
        percentile([], 50)


def test_percentile_reaches_both_ends_and_refuses_q_outside_0_100():
    values = [3.0, 1.0, 4.0, 1.5, 9.0]
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 9.0
    for q in (-0.5, 100.5, 101):
        with pytest.raises(ValueError, match=r"percentile q must be in \[0, 100\], got "):
            percentile(values, q)


def test_distribution_of_unscaled_values_and_of_none():
    assert distribution([2.0, 4.0, 9.0]) == {
        "count": 3,
        "mean": 5.0,
        "p50": 4.0,
        "p95": 8.5,
        "p99": 8.9,
        "max": 9.0,
    }
    assert distribution([2.0, 4.0], scale=1000.0)["mean"] == 3000.0
    assert distribution([]) == {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}


def test_a_failure_without_a_kind_is_counted_as_unknown():
    records = [
        RequestRecord(ok=False),
        RequestRecord(ok=False, error_kind="timeout"),
        RequestRecord(ok=False),
    ]
    assert summarize(records, 1.0)["requests"]["errors"] == {"timeout": 1, "unknown": 2}


def test_summary_on_known_records():
    records = [
        RequestRecord(ok=True, ttft_s=0.1, e2e_s=1.0, itl_s=[0.1] * 9, input_tokens=5, output_tokens=10),
        RequestRecord(ok=True, ttft_s=0.3, e2e_s=0.3, itl_s=[], input_tokens=5, output_tokens=1),
        RequestRecord(ok=False, error_kind="http_503", status=503, e2e_s=0.01),
        RequestRecord(
            ok=False, error_kind="stream_error", status=200, ttft_s=0.1, e2e_s=0.2, output_tokens=2
        ),
    ]
    s = summarize(records, wall_s=2.0)
    assert s["requests"] == {
        "total": 4,
        "completed": 2,
        "failed": 2,
        "errors": {"http_503": 1, "stream_error": 1},
    }
    assert s["request_throughput_rps"] == 1.0  # 2 completed in 2 s; failures do not count
    assert s["output_throughput_tok_s"] == 5.5  # 11 tokens of completed requests in 2 s
    tpot = s["latency_ms"]["tpot"]  # (1.0 - 0.1) / 9 for the 10-token request; the 1-token one has none
    assert tpot["count"] == 1 and tpot["p50"] == pytest.approx(100.0)
    assert s["latency_ms"]["ttft"]["p50"] == pytest.approx(200.0)
    assert s["latency_ms"]["e2e"]["max"] == pytest.approx(1000.0)
    assert s["latency_ms"]["itl"]["count"] == 9
    with pytest.raises(ValueError, match="wall_s"):
        summarize(records, 0)


def test_poisson_arrivals_are_seeded_with_the_right_mean_gap():
    a = poisson_arrivals(4.0, 4000, seed=3)
    assert a == poisson_arrivals(4.0, 4000, seed=3) and a[0] == 0.0
    assert a != poisson_arrivals(4.0, 4000, seed=4)
    assert (a[-1] / (len(a) - 1)) == pytest.approx(0.25, rel=0.05)


def test_prompts_from_a_dataset_and_synthetic():
    prompts = dataset_prompts(str(REPO / "data" / "demo" / "test.jsonl"), limit=3)
    assert len(prompts) == 3 and all(p.strip() for p in prompts)
    synthetic = synthetic_prompts(5, 12, seed=1)
    assert len(set(synthetic)) == 5 and all(len(p.split()) == 12 for p in synthetic)


# --------------------------------------------------------------------------- in-process engine


class FakeEngine:
    name = "fake"

    def __init__(self, fail_on: str | None = None):
        self.fail_on = fail_on

    async def stream(self, prompt, sampling, adapter=None):
        from types import SimpleNamespace

        if prompt == self.fail_on:
            err = RuntimeError("engine died")
            err.kind, err.status = "engine_dead", 503
            raise err
        for i in range(sampling.max_tokens):
            await asyncio.sleep(0)
            last = i == sampling.max_tokens - 1
            yield SimpleNamespace(
                text=f" w{i}",
                prompt_tokens=3,
                completion_tokens=i + 1,
                finish_reason="length" if last else None,
            )


def test_engine_target_counts_tokens_and_engine_errors():
    target = EngineTarget(FakeEngine(fail_on="bad"), SamplingParams(temperature=0.0, max_tokens=5))
    run = run_benchmark(target, ["good", "bad", "good"], LoadSpec(concurrency=2, num_requests=9), False)
    s = run["summary"]
    assert s["requests"] == {"total": 9, "completed": 6, "failed": 3, "errors": {"engine_dead": 3}}
    assert s["output_tokens"] == 30 and s["input_tokens"] == 18
    assert s["latency_ms"]["itl"]["count"] == 6 * 4


# --------------------------------------------------------------------------- a real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def flaky_server():
    """A fresh server per test, so its request numbering (and so its failures) starts at 1."""
    port = _free_port()
    args = ["--port", str(port), "--fail-every", str(FAIL_EVERY), "--error-every", str(ERROR_EVERY)]
    proc = subprocess.Popen([sys.executable, str(SERVER), *args, "--tokens", str(TOKENS)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/health", timeout=1.0)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("flaky server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def expected_counts(n: int) -> dict:
    http_503 = n // FAIL_EVERY
    stream_errors = sum(1 for i in range(1, n + 1) if i % ERROR_EVERY == 0 and i % FAIL_EVERY != 0)
    failed = http_503 + stream_errors
    errors = {k: v for k, v in (("http_503", http_503), ("stream_error", stream_errors)) if v}
    return {"total": n, "completed": n - failed, "failed": failed, "errors": errors}


@pytest.mark.parametrize("api", ["openai", "generate"])
@pytest.mark.parametrize("mode", ["concurrency", "rate"])
def test_client_counts_are_exact_against_a_flaky_server(flaky_server, api, mode):
    n = 47
    target = (
        OpenAITarget(flaky_server, "m", max_tokens=TOKENS)
        if api == "openai"
        else GenerateTarget(flaky_server, max_tokens=TOKENS)
    )
    spec = (
        LoadSpec(concurrency=8, num_requests=n) if mode == "concurrency" else LoadSpec(None, 200.0, n, seed=1)
    )
    run = run_benchmark(target, synthetic_prompts(7, 10), spec, show_progress=False)
    s = run["summary"]
    assert s["requests"] == expected_counts(n)
    completed = s["requests"]["completed"]
    assert s["output_tokens"] == completed * TOKENS  # from the usage chunk / done event
    assert s["input_tokens"] == completed * 7
    assert s["latency_ms"]["ttft"]["count"] == completed
    assert s["latency_ms"]["tpot"]["count"] == completed
    assert s["latency_ms"]["itl"]["count"] == completed * (TOKENS - 1)
    assert s["request_throughput_rps"] == pytest.approx(completed / s["duration_s"])
    failed = [r for r in run["records"] if not r["ok"]]
    assert {r["status"] for r in failed if r["error_kind"] == "stream_error"} == {
        200
    }  # failed under HTTP 200


def test_duration_mode_stops_sending(flaky_server):
    run = run_benchmark(
        OpenAITarget(flaky_server, "m", max_tokens=TOKENS),
        ["x"],
        LoadSpec(2, None, None, 0.5),
        show_progress=False,
    )
    s = run["summary"]
    assert s["requests"]["total"] >= 2 and s["duration_s"] < 5
    assert s["requests"] == expected_counts(s["requests"]["total"])


def test_unreachable_server_fails_every_request_as_connect():
    url = f"http://127.0.0.1:{_free_port()}"
    run = run_benchmark(OpenAITarget(url, "m"), ["x"], LoadSpec(concurrency=2, num_requests=4), False)
    assert run["summary"]["requests"] == {"total": 4, "completed": 0, "failed": 4, "errors": {"connect": 4}}


def test_bench_cli_writes_reports_and_one_json_line(flaky_server, tmp_path, capsys):
    import argparse

    from tuneforge.bench.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    argv = ["bench", "--url", flaky_server, "--model", "m", "--concurrency", "1,4", "--requests", "20"]
    argv += ["--output-len", "4", "--input-len", "8", "--out", str(tmp_path), "--quiet"]
    args = parser.parse_args([*argv, "--sample-interval", "0.2"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    payload = json.loads(lines[-1])
    assert [r["load"]["concurrency"] for r in payload["runs"]] == [1, 4]
    assert payload["runs"][0]["requests"]["total"] == 20
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["server_device"] in ("cpu",) or results["server_device"].startswith("gpu:")
    page = (tmp_path / "report.html").read_text()
    assert "<svg" in page and "Throughput against load" in page and "<script" not in page
    assert "p50 / p95 / p99" in (tmp_path / "report.md").read_text()


# --------------------------------------------------------------------------- several client processes


@pytest.mark.parametrize(
    ("spec", "procs", "shares"),
    [
        (LoadSpec(concurrency=10, num_requests=47), 4, [(3, 12), (3, 12), (2, 12), (2, 11)]),
        (LoadSpec(concurrency=2, num_requests=47), 4, [(1, 24), (1, 23)]),  # no more processes than slots
        (LoadSpec(concurrency=8, num_requests=3), 4, [(3, 1), (3, 1), (2, 1)]),  # nor than requests
        (LoadSpec(concurrency=4, num_requests=None, duration_s=2.0), 3, [(2, None), (1, None), (1, None)]),
    ],
)
def test_a_load_is_shared_out_without_losing_a_slot_or_a_request(spec, procs, shares):
    from tuneforge.bench.procs import share_specs

    parts = share_specs(spec, procs)
    assert [(p.concurrency, p.num_requests) for p in parts] == shares
    assert all(p.duration_s == spec.duration_s and p.rate is None for p in parts)


def test_a_rate_is_shared_out_with_a_seed_per_process():
    from tuneforge.bench.procs import share_specs

    parts = share_specs(LoadSpec(concurrency=5, rate=9.0, num_requests=20, seed=3), 3)
    assert [p.rate for p in parts] == [3.0, 3.0, 3.0]
    assert [p.concurrency for p in parts] == [2, 2, 1] and [p.num_requests for p in parts] == [7, 7, 6]
    assert [p.seed for p in parts] == [3, 4, 5]  # Poisson streams that differ; their sum is Poisson at 9/s
    uncapped = share_specs(LoadSpec(concurrency=None, rate=4.0, num_requests=8), 2)
    assert [p.concurrency for p in uncapped] == [None, None]


@pytest.mark.parametrize("mode", ["concurrency", "rate"])
def test_client_processes_count_exactly_on_one_clock(flaky_server, mode):
    n = 47
    spec = LoadSpec(concurrency=8, num_requests=n) if mode == "concurrency" else LoadSpec(8, 200.0, n, seed=1)
    run = run_benchmark(
        OpenAITarget(flaky_server, "m", max_tokens=TOKENS), synthetic_prompts(7, 10), spec, False, 3
    )
    s = run["summary"]
    assert s["requests"] == expected_counts(n)  # the server numbers requests as they arrive, from any client
    assert s["output_tokens"] == s["requests"]["completed"] * TOKENS
    assert run["client"]["procs"] == 3 and run["client"]["cpu_share"] > 0
    starts = [r["start_s"] for r in run["records"]]
    assert starts == sorted(starts) and min(starts) >= 0
    # every request ran inside the run's wall time, measured on the clock all processes share
    assert all(r["start_s"] + r["e2e_s"] <= s["duration_s"] + 1e-6 for r in run["records"])


def test_client_processes_refuse_an_in_process_engine():
    from tuneforge.bench.procs import run_load_procs

    with pytest.raises(ValueError, match="HTTP target"):
        run_load_procs(EngineTarget(engine=object()), ["x"], LoadSpec(2, None, 4), 2)


def test_a_busy_client_is_named_in_the_notes_with_what_to_do():
    import argparse

    from tuneforge.bench.cli import client_limit_notes

    runs = [
        {"load": {"mode": "concurrency", "concurrency": 16}, "client": {"procs": 2, "cpu_share": 0.5}},
        {"load": {"mode": "concurrency", "concurrency": 256}, "client": {"procs": 2, "cpu_share": 0.97}},
    ]
    notes = client_limit_notes(runs, argparse.Namespace(in_process=None, client_procs=2))
    assert len(notes) == 1 and "concurrency 256" in notes[0] and "97%" in notes[0]
    assert "--client-procs 4" in notes[0]
    assert client_limit_notes(runs, argparse.Namespace(in_process="m", client_procs=1)) == []


def test_records_of_processes_that_started_apart_land_on_one_clock():
    from tuneforge.bench.procs import merge

    late = [RequestRecord(ok=True, ttft_s=0.1, e2e_s=1.0, start_s=0.2)]
    early = [RequestRecord(ok=True, ttft_s=0.1, e2e_s=1.0, start_s=0.0), RequestRecord(ok=False, start_s=0.5)]
    records, wall, busiest = merge({1: (late, 100.5, 102.0, 0.75), 0: (early, 100.0, 101.5, 0.3)})
    assert [r.start_s for r in records] == pytest.approx([0.0, 0.5, 0.7])  # 0.2 s after a start 0.5 s later
    assert [r.ok for r in records] == [True, False, True]
    assert wall == pytest.approx(2.0)  # from the first start (100.0) to the last end (102.0)
    assert busiest == pytest.approx(0.5)  # 0.75 s of CPU over 1.5 s


@pytest.mark.parametrize("bad", ["0", "2,3", "two"])
def test_client_procs_must_be_one_whole_number(bad, capsys):
    import argparse

    from tuneforge.bench.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--url", "http://x", "--client-procs", bad])
    assert f"--client-procs: expected a whole number >= 1, got '{bad}'" in capsys.readouterr().err
    assert parser.parse_args(["bench", "--url", "http://x", "--client-procs", "3"]).client_procs == 3


def test_the_server_process_cpu_share_is_its_own_over_the_block():
    """--server-pid: the share of one core that process alone used while the load ran (a busy one spins)."""
    from tuneforge.bench.resources import ResourceMonitor

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.5)  # both started (an interpreter's start-up is CPU too)
        with ResourceMonitor(0.2, busy.pid) as spinning, ResourceMonitor(0.2, idle.pid) as sleeping:
            time.sleep(1.5)
        assert spinning.summary()["server_process_cpu_share"] > 0.4  # about 1.0 unless the cores are shared
        assert sleeping.summary()["server_process_cpu_share"] < 0.1
    finally:
        busy.kill()
        idle.kill()
        busy.wait()
        idle.wait()
    with ResourceMonitor(0.2) as nobody:
        pass
    assert nobody.summary()["server_process_cpu_share"] is None
    with ResourceMonitor(0.2, busy.pid) as gone:  # the process has exited: no share, no error
        pass
    assert gone.summary()["server_process_cpu_share"] is None


def test_a_busy_server_process_is_named_in_the_notes_with_what_to_do():
    from tuneforge.bench.cli import server_limit_notes

    runs = [
        {"load": {"mode": "concurrency", "concurrency": 16}, "resources": {"server_process_cpu_share": 0.4}},
        {"load": {"mode": "rate", "rate": 50.0}, "resources": {"server_process_cpu_share": 0.93}},
        {"load": {"mode": "concurrency", "concurrency": 64}, "resources": {"server_process_cpu_share": None}},
        {"load": {"mode": "concurrency", "concurrency": 256}},  # no resources (nothing sampled)
    ]
    notes = server_limit_notes(runs)
    assert len(notes) == 1 and "rate 50.0/s" in notes[0] and "93%" in notes[0]
    assert "inference.stream_interval" in notes[0] and "--api-processes N" in notes[0]
