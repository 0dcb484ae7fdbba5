"""Issue 14, item 2: the soak's guarantees (benchmarks/soak.py), each shown to fail when broken.

The 10-minute soak against the real vLLM engine is recorded in benchmarks/RESULTS.md ("soak"); here the
checks themselves are tested on made-up runs, and a short soak runs against a real `tuneforge serve`."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
from conftest import REPO

from tuneforge.bench.stats import RequestRecord

pytestmark = pytest.mark.reliability
ARGS = SimpleNamespace(warmup=10.0, window=10.0, duration=60.0)


def soak():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import soak

    return soak


def steady_run(n=60, last_latency=1.0):
    """One request a second; those in the last window take `last_latency` s, the others 1 s."""
    return [
        RequestRecord(ok=True, start_s=float(i), e2e_s=last_latency if i >= 50 else 1.0) for i in range(n)
    ]


def samples(rss_after_warmup=(1000.0, 1050.0)):
    return [{"t": 5.0, "rss_mb": 500.0, "queue": 1}] + [
        {"t": 10.0 + i, "rss_mb": rss, "queue": 1} for i, rss in enumerate(rss_after_warmup)
    ]


def test_a_steady_run_passes_every_check():
    result = soak().checks(steady_run(), samples(), 60, 60.0, 0.0, ARGS)
    assert all(c["ok"] for c in result.values()), result
    assert result["memory_flat"]["growth"] == pytest.approx(0.05)  # warm-up's 500 MB not counted


@pytest.mark.parametrize(
    ("broken", "check"),
    [
        (
            {"records": [*steady_run()[:-1], RequestRecord(ok=False, error_kind="timeout", start_s=59.0)]},
            "none_lost",
        ),
        ({"served": 61.0}, "none_duplicated"),
        ({"samples": samples((1000.0, 1150.0))}, "memory_flat"),
        ({"records": steady_run(last_latency=1.3)}, "latency_steady"),
        ({"end_queue": 1.0}, "queue_empty_at_end"),
    ],
)
def test_each_check_fails_when_its_guarantee_breaks(broken, check):
    given = {"records": steady_run(), "samples": samples(), "served": 60.0, "end_queue": 0.0} | broken
    result = soak().checks(given["records"], given["samples"], 60, given["served"], given["end_queue"], ARGS)
    assert [name for name, c in result.items() if not c["ok"]] == [check]


def test_metric_sums_the_samples_whose_labels_match():
    text = "\n".join([
        "# HELP tuneforge_requests_total HTTP requests",
        'tuneforge_requests_total{route="/v1/completions",status="200"} 41.0',
        'tuneforge_requests_total{route="/v1/completions",status="429"} 2.0',
        'tuneforge_requests_total{route="/health",status="200"} 7.0',
        "tuneforge_queue_depth 0.0",
    ])  # fmt: skip
    assert soak().metric(text, "tuneforge_requests_total", 'route="/v1/completions"') == 43.0
    assert soak().metric(text, "tuneforge_queue_depth") == 0.0


def test_windows_give_each_minute_after_warm_up_its_own_percentiles():
    # 10 requests per 10 s window after the 10 s warm-up; the window from 30 s has one slow request
    records = [
        RequestRecord(ok=True, start_s=float(i), e2e_s=5.0 if i == 35 else 1.0 + i / 100) for i in range(60)
    ]
    rows = soak().windows(records, ARGS)
    assert [w["from_s"] for w in rows] == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert all(w["n"] == 10 for w in rows)
    assert rows[0]["p50_s"] == 1.15 and rows[0]["p99_s"] == 1.19  # starts 10..19: the 6th and 10th
    assert rows[2]["p99_s"] == 5.0 and rows[2]["p50_s"] == 1.36  # the blip moves p99 only
    assert rows[3]["p99_s"] == 1.49
