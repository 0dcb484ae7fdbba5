"""Task metrics on known cases, and a failing metric that does not stop the others."""

from __future__ import annotations

import json

import pytest

from tuneforge.eval.metrics import (
    contains,
    exact_match,
    json_exact,
    json_fields,
    json_valid,
    normalize,
    regex,
    resolve_metric,
    rouge_l,
    score_case,
    token_f1,
)

ORDER = {"name": "Maria Lopez", "city": "Lisbon", "item": "umbrella", "color": "blue", "quantity": 3}
REF = json.dumps(ORDER)


def test_normalisation_follows_the_squad_convention():
    assert normalize("  The  Capital, of FRANCE!  ") == "capital of france"
    assert normalize("ｆｕｌｌ-width") == "fullwidth"  # NFKC, punctuation removed


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [("Paris.", "paris", 1.0), ("The Paris", "Paris", 1.0), ("Paris, France", "Paris", 0.0), ("", "", 1.0)],
)
def test_exact_match(pred, ref, expected):
    assert exact_match(pred, ref) == expected


def test_contains():
    assert contains("The capital is Paris.", "paris") == 1.0
    assert contains("The capital is Lyon.", "paris") == 0.0


def test_token_f1_on_known_cases():
    assert token_f1("the cat sat", "the cat sat") == 1.0
    assert token_f1("cat sat on mat", "cat sat") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "cat") == 0.0


def test_rouge_l_on_known_cases():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    # LCS "the cat the mat" = 4 of 6 tokens each way
    assert rouge_l("the cat ran to the mat", "the cat sat on the mat") == pytest.approx(4 / 6)
    assert rouge_l("zebra", "the cat") == 0.0


def test_json_metrics():
    assert json_valid(' {"a": 1} ') == 1.0 and json_valid("{a: 1}") == 0.0
    assert json_exact(json.dumps(ORDER, indent=2), REF) == 1.0  # formatting does not matter
    wrong_city = json.dumps({**json.loads(REF), "city": "Porto"})
    assert json_exact(wrong_city, REF) == 0.0
    assert json_fields(wrong_city, REF) == pytest.approx(4 / 5)
    assert json_fields('{"name": "Maria Lopez"}', REF) == pytest.approx(1 / 5)
    assert json_fields("not json", REF) == 0.0 and json_fields("[1, 2]", REF) == 0.0
    assert json_fields(REF, json.loads(REF)) == 1.0  # the reference may be an object already


def test_regex():
    assert regex("order #12345 shipped", r"#\d{5}\b") == 1.0
    assert regex("order shipped", r"#\d{5}") == 0.0


def test_user_metric_by_module_path():
    assert resolve_metric("tuneforge.eval.metrics:token_f1")("a b", "a b") == 1.0
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        resolve_metric("bleu")
    with pytest.raises(ValueError, match="cannot be imported"):
        resolve_metric("no_such_module:fn")


def test_a_failing_metric_is_recorded_and_the_others_still_run():
    def broken(pred, ref):
        raise KeyError("boom")

    def out_of_range(pred, ref):
        return 3.0

    result = score_case(
        "Paris", "Paris", {"exact_match": exact_match, "broken": broken, "wild": out_of_range}
    )
    assert result["scores"] == {"exact_match": 1.0, "broken": None, "wild": None}
    assert result["errors"]["broken"] == "KeyError: 'boom'" and "outside [0, 1]" in result["errors"]["wild"]
    missing = score_case(None, "Paris", {"exact_match": exact_match})
    assert (
        missing["scores"] == {"exact_match": None}
        and missing["errors"]["exact_match"] == "no output was generated"
    )


def test_token_f1_is_symmetric_when_precision_and_recall_differ():
    # precision 1, recall 1/2 one way; precision 1/2, recall 1 the other: F1 = 2/3 both ways
    assert token_f1("cat sat", "cat sat on mat") == pytest.approx(2 / 3)
    assert token_f1("cat sat on mat", "cat sat") == pytest.approx(2 / 3)
    assert token_f1("a cat", "dog cat cat") == pytest.approx(token_f1("dog cat cat", "a cat"))


def test_json_exact_scores_unparseable_predictions_zero():
    assert json_exact("not json", REF) == 0.0
    assert json_exact('{"name": "Maria Lopez"', REF) == 0.0  # truncated


@pytest.mark.parametrize("reference", ["[1, 2]", [1, 2], "{}", {}, '"text"', 3])
def test_json_fields_refuses_a_reference_that_is_not_a_non_empty_object(reference):
    with pytest.raises(ValueError, match="needs a non-empty JSON object as the reference"):
        json_fields(REF, reference)


def test_resolve_metric_errors_say_what_to_use():
    with pytest.raises(ValueError, match="use one of exact_match, contains, token_f1, rouge_l"):
        resolve_metric("bleu")
    with pytest.raises(ValueError, match=r"'tuneforge\.eval\.metrics:BUILTIN' is not callable"):
        resolve_metric("tuneforge.eval.metrics:BUILTIN")
    with pytest.raises(ValueError, match="cannot be imported"):
        resolve_metric("tuneforge.eval.metrics:no_such_metric")


def test_score_case_keeps_in_range_values_and_scores_every_metric():
    def const(value):
        return lambda pred, ref: value

    metrics = {"low": const(0.0), "high": const(1.5), "mid": const(0.5), "neg": const(-0.5), "top": const(1)}
    result = score_case("Paris", "Paris", metrics)
    assert result["scores"] == {"low": 0.0, "high": None, "mid": 0.5, "neg": None, "top": 1.0}
    assert set(result["errors"]) == {"high", "neg"}
    assert result["errors"]["high"] == "returned 1.5, outside [0, 1]"
    missing = score_case(None, "Paris", metrics)
    assert missing["scores"] == dict.fromkeys(metrics)
    assert missing["errors"] == dict.fromkeys(metrics, "no output was generated")
