"""Properties 17 and 18 of the design: comparisons use identical inputs; every test case is evaluated."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tuneforge.config import SamplingParams
from tuneforge.data.cases import TestCase
from tuneforge.eval.evaluator import ModelEvaluator

SETTINGS = settings(max_examples=100, deadline=None)
TEXT = st.text(max_size=20)
CASES = st.lists(st.builds(TestCase, id=st.uuids().map(str), prompt=TEXT, reference=TEXT), max_size=12)


class RecordingEngine:
    """A deterministic engine that records every prompt and the settings it was asked with, and fails
    on the prompts it is told to."""

    def __init__(self, name, fail_on=frozenset(), fail_batches=False):
        self.name, self.fail_on, self.fail_batches = name, fail_on, fail_batches
        self.seen: list[str] = []
        self.settings: list[SamplingParams] = []

    def generate(self, prompts, sampling):
        if self.fail_batches and len(prompts) > 1:
            raise RuntimeError("batch failed")
        self.settings.append(sampling)
        out = []
        for p in prompts:
            if p in self.fail_on:
                raise ValueError(f"cannot generate for {p!r}")
            self.seen.append(p)
            out.append(p[::-1])
        return out


# Feature: llm-fine-tuning-inference, Property 17: Model comparison uses identical data
@SETTINGS
@given(cases=CASES, temperature=st.floats(0, 2), max_tokens=st.integers(1, 64))
def test_property_17_both_models_receive_exactly_the_same_inputs(cases, temperature, max_tokens):
    base, tuned = RecordingEngine("base"), RecordingEngine("tuned")
    evaluator = ModelEvaluator(
        ["exact_match", "token_f1"], SamplingParams(temperature=temperature, max_tokens=max_tokens)
    )
    result = evaluator.compare_models(base, tuned, cases)
    assert base.seen == tuned.seen == [c.prompt for c in cases]
    assert base.settings == tuned.settings
    assert [c["id"] for c in result["base"]["cases"]] == [c["id"] for c in result["finetuned"]["cases"]]
    assert result["case_ids"] == [c.id for c in cases]


# Feature: llm-fine-tuning-inference, Property 18: All test cases evaluated
@SETTINGS
@given(cases=CASES, data=st.data())
def test_property_18_every_test_case_is_evaluated(cases, data):
    failing = frozenset(data.draw(st.sets(st.sampled_from([c.prompt for c in cases]))) if cases else set())
    engine = RecordingEngine("m", fail_on=failing, fail_batches=True)
    result = ModelEvaluator(["exact_match", "contains"]).evaluate_task(engine, cases)
    assert [c["id"] for c in result["cases"]] == [c.id for c in cases]
    assert result["num_examples"] == len(cases)
    for case, out in zip(cases, result["cases"], strict=True):
        if case.prompt in failing:
            assert out["prediction"] is None
            assert set(out["errors"]) == {"exact_match", "contains"}
            assert all("cannot generate" in e for e in out["errors"].values())
        else:
            assert out["prediction"] == case.prompt[::-1]
            assert set(out["scores"]) == {"exact_match", "contains"}
            assert all(v is not None for v in out["scores"].values())
    failed = sum(c.prompt in failing for c in cases)
    for summary in result["metrics"].values():
        assert summary["failed"] == failed and summary["scored"] == len(cases) - failed
