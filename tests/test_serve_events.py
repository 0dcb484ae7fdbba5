"""protocol.text_event: a stream's events with their shared fields serialized once, byte-identical to
json.dumps of the whole event (the SSE routes send its output as is)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tuneforge.serve.protocol import text_event


def completion_chunk(model: str, rid: str):
    def make(text: str) -> dict:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
        return {"id": rid, "object": "text_completion", "created": 1, "model": model, "choices": [choice]}

    return make


@settings(max_examples=200, deadline=None)
@given(text=st.text(), model=st.text(), rid=st.text(min_size=1))
def test_text_event_is_json_dumps_of_the_whole_event(text, model, rid):
    make = completion_chunk(model, rid)
    out = text_event(make)(text)
    assert out == json.dumps(make(text), ensure_ascii=False)
    assert json.loads(out) == make(text)


def test_text_event_serializes_the_shared_fields_once():
    calls = []

    def make(text: str) -> dict:
        calls.append(text)
        return {"type": "token", "text": text}

    token = text_event(make)
    assert [token(t) for t in ("a", '"quoted"\n', "é")] == [
        '{"type": "token", "text": "a"}',
        '{"type": "token", "text": "\\"quoted\\"\\n"}',
        '{"type": "token", "text": "é"}',
    ]
    assert len(calls) == 1  # the template; each event after it dumps only its text


def test_text_event_falls_back_when_another_field_holds_the_marker():
    # a field that repeats the text (or holds the marker) cannot be split around one slot
    make = completion_chunk("m", "id")
    twice = lambda text: {**make(text), "echo": text}  # noqa: E731
    out = text_event(twice)("hi")
    assert json.loads(out) == twice("hi")
    marker_model = completion_chunk("\x00tuneforge-text\x00", "id")
    assert json.loads(text_event(marker_model)("hi")) == marker_model("hi")
