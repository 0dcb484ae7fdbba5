"""Model-side perplexity against an independent computation on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from tuneforge.data.templates import IGNORE_INDEX
from tuneforge.eval.likelihood import dataset_perplexity, text_perplexity


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def reference_nll(model, ids: list[int], scored: list[int]) -> tuple[float, int]:
    """One forward pass per scored position, on exactly the prefix before it: no batching, no padding."""
    total = 0.0
    with torch.no_grad():
        for p in scored:
            logits = model(input_ids=torch.tensor([ids[:p]])).logits[0, -1].double()
            total -= torch.log_softmax(logits, -1)[ids[p]].item()
    return total, len(scored)


def test_response_only_perplexity_matches_an_independent_computation(model, train_data):
    rows = [train_data[0][i] for i in range(5)]
    ids = [r["input_ids"] for r in rows]
    labels = [r["labels"] for r in rows]
    nll, n = 0.0, 0
    for r in rows:
        scored = [p for p in range(1, len(r["input_ids"])) if r["labels"][p] != IGNORE_INDEX]
        a, b = reference_nll(model, r["input_ids"], scored)
        nll, n = nll + a, n + b
    ours = dataset_perplexity(model, ids, labels, pad_id=2, batch_size=4)
    assert ours.tokens == n
    assert ours.perplexity == pytest.approx(math.exp(nll / n), rel=1e-4)


def test_batching_and_padding_do_not_change_the_result(model, train_data):
    rows = [train_data[0][i] for i in range(6)]
    ids, labels = [r["input_ids"] for r in rows], [r["labels"] for r in rows]
    one = dataset_perplexity(model, ids, labels, pad_id=2, batch_size=1)
    four = dataset_perplexity(model, ids, labels, pad_id=2, batch_size=4)
    assert one.tokens == four.tokens
    assert four.perplexity == pytest.approx(one.perplexity, rel=1e-5)


@pytest.mark.parametrize(("window", "stride"), [(64, 64), (64, 16), (200, 50)])
def test_sliding_window_perplexity_matches_an_independent_computation(model, window, stride):
    from tuneforge.eval.perplexity import sliding_windows

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49152, (150,), generator=g).tolist()
    ours = text_perplexity(model, ids, window=window, stride=stride)
    assert ours.tokens == len(ids) - 1  # every token after the first, once
    nll = 0.0
    for start, end, first in sliding_windows(len(ids), window, stride):
        part, _ = reference_nll(model, ids[start:end], list(range(first - start, end - start)))
        nll += part
    assert ours.perplexity == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-4)
    if window >= len(ids):  # one window holds everything: the full-context perplexity
        full, n = reference_nll(model, ids, list(range(1, len(ids))))
        assert ours.perplexity == pytest.approx(math.exp(full / n), rel=1e-4)
