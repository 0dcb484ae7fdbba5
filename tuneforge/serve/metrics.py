"""Prometheus metrics for one app (its own registry, so several apps can live in one process). When
several API processes serve one engine (`api_processes`), each writes its counts to
PROMETHEUS_MULTIPROC_DIR and /metrics adds up all of them, whichever process answers."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

OWN_PREFIX = "tuneforge_"  # vLLM's processes write their metrics to the same folder; /metrics shows ours

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
            "tuneforge_queue_depth",
            "Generation requests admitted and not finished",
            registry=r,
            multiprocess_mode="livesum",  # with several API processes: the sum over those alive
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

    def exposition(self) -> bytes:
        """The text /metrics serves: this process's registry, or with several API processes everyone's
        counts added up (and this process's engine state: one engine, the same for all)."""
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not folder:
            return generate_latest(self.registry)
        summed = CollectorRegistry()
        summed.register(OwnFamilies(folder))
        summed.register(self.engine_state)
        return generate_latest(summed)


class OwnFamilies:
    """tuneforge's metric families from every process's files in `folder`."""

    def __init__(self, folder: str):
        self.all = MultiProcessCollector(None, folder)

    def collect(self):
        return [family for family in self.all.collect() if family.name.startswith(OWN_PREFIX)]
