"""Typed reading of the files stages hand each other (tuneforge.results): bench's results.json."""

from __future__ import annotations

import json

import pytest

from tuneforge.errors import ConfigError
from tuneforge.results import load_label, read_bench_results

RUN = {"load": {"mode": "concurrency", "concurrency": 8},
       "summary": {"requests": {"completed": 10, "failed": 0}, "request_throughput_rps": 2.5,
                   "output_throughput_tok_s": 80.0, "output_tokens": 320, "latency_ms": {}}}  # fmt: skip


def write(tmp_path, payload) -> str:
    path = tmp_path / "results.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return str(path)


def test_a_results_file_reads_typed_and_keeps_what_it_does_not_declare(tmp_path):
    results = read_bench_results(write(tmp_path, {"runs": [RUN], "server_device": "H200", "title": "t"}))
    run = results.runs[0]
    assert run.summary.request_throughput_rps == 2.5 and run.summary.requests.completed == 10
    assert run.load.in_flight == 8 and results.server_device == "H200"
    assert results.model_extra == {"title": "t"} and run.summary.model_extra["latency_ms"] == {}


@pytest.mark.parametrize(
    "payload, where",
    [
        ({"runs": [{**RUN, "summary": {**RUN["summary"], "request_throughput_rps": "fast"}}]},
         "runs.0.summary.request_throughput_rps"),
        ({"runs": [{"load": RUN["load"]}]}, "runs.0.summary"),
        ({"results": []}, "runs"),
        ({"runs": [{**RUN, "summary": {**RUN["summary"], "requests": {"completed": -1}}}]},
         "runs.0.summary.requests.completed"),
    ],
)  # fmt: skip
def test_a_wrong_field_is_named_with_its_path(tmp_path, payload, where):
    with pytest.raises(ConfigError, match=rf"results\.json: not a tuneforge bench results\.json: {where}:"):
        read_bench_results(write(tmp_path, payload))


def test_unreadable_and_non_json_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"results\.json: not JSON"):
        read_bench_results(write(tmp_path, "{half"))
    with pytest.raises(ConfigError, match=r"missing\.json: cannot read"):
        read_bench_results(tmp_path / "missing.json")


def test_load_labels():
    assert load_label({"mode": "concurrency", "concurrency": 16}) == "concurrency 16"
    assert load_label({"mode": "rate", "rate": 2.5, "max_concurrency": 64}) == "rate 2.5/s (max 64 in flight)"
    assert load_label({"mode": "rate", "rate": 1000}) == "rate 1,000/s"
