"""Task metrics on generated outputs. Imports no torch.

    exact_match      equal after normalisation (below)
    contains         the normalised reference occurs in the normalised prediction
    token_f1         SQuAD-style bag-of-tokens F1 after normalisation
    rouge_l          ROUGE-L F-measure (Google's rouge-score package, its default tokenizer)
    json_valid       the prediction parses as JSON (surrounding whitespace allowed)
    json_fields      share of the reference object's fields whose values the prediction matches exactly
    json_exact       the parsed prediction equals the parsed reference
    regex            the prediction matches the pattern given as the reference (re.search)

Normalisation for exact_match, contains and token_f1: Unicode NFKC, lower case, punctuation removed,
articles (a, an, the) removed, whitespace collapsed (the SQuAD convention).
A user metric is any callable `(prediction, reference) -> float in [0, 1]`, named in a recipe as
"package.module:function".
"""

from __future__ import annotations

import importlib
import json
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable
from typing import Any

Metric = Callable[[str, Any], float]
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def contains(prediction: str, reference: str) -> float:
    return float(normalize(reference) in normalize(prediction))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"]).score(reference, prediction)["rougeL"].fmeasure


def _parse(text: Any) -> Any:
    return json.loads(text) if isinstance(text, str) else text


def json_valid(prediction: str, reference: Any = None) -> float:
    try:
        json.loads(prediction)
    except (json.JSONDecodeError, TypeError):
        return 0.0
    return 1.0


def json_exact(prediction: str, reference: Any) -> float:
    try:
        return float(json.loads(prediction) == _parse(reference))
    except (json.JSONDecodeError, TypeError):
        return 0.0


def json_fields(prediction: str, reference: Any) -> float:
    ref = _parse(reference)
    if not isinstance(ref, dict) or not ref:
        raise ValueError("json_fields needs a non-empty JSON object as the reference")
    try:
        pred = json.loads(prediction)
    except (json.JSONDecodeError, TypeError):
        return 0.0
    if not isinstance(pred, dict):
        return 0.0
    return sum(k in pred and pred[k] == v for k, v in ref.items()) / len(ref)


def regex(prediction: str, reference: str) -> float:
    return float(re.search(reference, prediction) is not None)


BUILTIN: dict[str, Metric] = {
    "exact_match": exact_match,
    "contains": contains,
    "token_f1": token_f1,
    "rouge_l": rouge_l,
    "json_valid": json_valid,
    "json_exact": json_exact,
    "json_fields": json_fields,
    "regex": regex,
}


def resolve_metric(name: str) -> Metric:
    """A built-in metric by name, or a user callable named "package.module:function"."""
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" not in name:
        raise ValueError(f"unknown metric '{name}': use one of {', '.join(BUILTIN)} or 'module:function'")
    module_name, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"metric '{name}' cannot be imported: {e}") from None
    if not callable(fn):
        raise ValueError(f"metric '{name}' is not callable")
    return fn


def score_case(prediction: str | None, reference: Any, metrics: dict[str, Metric]) -> dict[str, Any]:
    """Every metric on one case; a metric that fails is recorded with its error and the others still run."""
    scores: dict[str, float | None] = {}
    errors: dict[str, str] = {}
    for name, fn in metrics.items():
        if prediction is None:
            scores[name], errors[name] = None, "no output was generated"
            continue
        try:
            value = float(fn(prediction, reference))
        except Exception as e:  # a user metric may raise anything: record it, keep going
            scores[name], errors[name] = None, f"{type(e).__name__}: {e}"
            continue
        if not 0.0 <= value <= 1.0:
            scores[name], errors[name] = None, f"returned {value}, outside [0, 1]"
            continue
        scores[name] = value
    return {"scores": scores, "errors": errors}
