"""Property 16 of the design: perplexity from known log-likelihoods; and the sliding windows that feed it."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneforge.eval.perplexity import PerplexityAccumulator, perplexity, sliding_windows

LOGLIKES = st.lists(st.floats(-30.0, 0.0), min_size=1, max_size=200)


# Feature: llm-fine-tuning-inference, Property 16: Perplexity calculation correctness
@settings(max_examples=200, deadline=None)
@given(examples=st.lists(LOGLIKES, min_size=1, max_size=8))
def test_property_16_perplexity_is_exp_of_the_token_weighted_mean_nll(examples):
    flat = [ll for ex in examples for ll in ex]
    expected = math.exp(-sum(flat) / len(flat))
    assert perplexity(flat) == pytest.approx(expected, rel=1e-9)
    acc = PerplexityAccumulator()  # batch by batch, as the evaluator accumulates
    for ex in examples:
        acc.add_sum(-sum(ex), len(ex))
    assert acc.perplexity == pytest.approx(expected, rel=1e-9)


def test_perplexity_weights_tokens_not_examples():
    # a 1-token example with NLL 4 and a 3-token example with NLL 0 each: mean NLL 1, not 2
    assert perplexity([-4.0, 0.0, 0.0, 0.0]) == pytest.approx(math.e)


def test_no_tokens_is_an_error_not_a_number():
    with pytest.raises(ValueError, match="no tokens"):
        _ = PerplexityAccumulator().perplexity


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 300), window=st.integers(2, 64), data=st.data())
def test_sliding_windows_score_every_position_once(length, window, data):
    stride = data.draw(st.integers(1, window))
    windows = sliding_windows(length, window, stride)
    scored = [p for _, end, first in windows for p in range(first, end)]
    assert scored == list(range(1, length))  # every position with context, once, in order
    for start, end, first in windows:
        assert end - start <= window and start < first <= end
