"""The inference service: `tuneforge serve MODEL [--adapter NAME=PATH ...]`.

settings.py (environment and flags) -> app.py (`build_app`) -> routes.py, openai_routes.py, admin.py (HTTP
only) -> service.py (admission, timeouts, streaming, metrics) -> an engine from tuneforge.engines.
protocol.py holds the request and response schemas.
"""
