"""Prometheus metrics for one app (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram

ENGINE_STATES = ["loading", "ready", "restarting", "failed", "dead"]
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tuneforge_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.errors = Counter(
            "tuneforge_errors",
            "Failed requests and failed streams by status and kind",
            ["status", "kind"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "tuneforge_queue_depth", "Generation requests admitted and not finished", registry=r
        )
        self.ttft = Histogram(
            "tuneforge_time_to_first_token_seconds",
            "Time to the first generated text",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "tuneforge_request_latency_seconds",
            "Request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.generated_tokens = Counter("tuneforge_generated_tokens", "Tokens generated", registry=r)
        self.prompt_tokens = Counter("tuneforge_prompt_tokens", "Prompt tokens processed", registry=r)
        self.engine_state = Enum(
            "tuneforge_engine_state",
            "The engine: loading, ready, restarting (it stopped; a new one is starting), failed (never "
            "loaded) or dead (stopped, no restart left)",
            states=ENGINE_STATES,
            registry=r,
        )
        self.engine_restarts = Counter(
            "tuneforge_engine_restarts",
            "Engine restarts after the engine stopped, by outcome (ok: serving again; failed)",
            ["outcome"],
            registry=r,
        )
