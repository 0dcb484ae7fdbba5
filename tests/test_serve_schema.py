"""Schema fuzzing: schemathesis generates requests from /openapi.json; none may get a 5xx.

The app runs with a scripted engine and an adapter directory, so every route is reachable.
"""

from __future__ import annotations

import schemathesis
from fake_engine import FakeEngine
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tuneforge.serve.app import build_app
from tuneforge.serve.settings import ServeSettings

app = build_app(ServeSettings(model="fake", adapter_dir="."), engine_factory=lambda s: FakeEngine())
app.state.service.engine = FakeEngine(max_model_len=4096)  # ready at once (no lifespan per call)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
# derandomized: CI sees the same cases on every run (a random run found the NUL-byte path bug)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors(case):
    case.call_and_validate(checks=[not_a_server_error])
