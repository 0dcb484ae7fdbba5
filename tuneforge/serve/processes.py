"""`tuneforge serve --api-processes N`: N HTTP processes over one vLLM engine.

One API process parses HTTP, turns tokens into text and streams for every request on one core; at
64-256 concurrent streams on an H200 that core is the limit (about 13,000-18,000 tokens/s). With N, the
parent binds the port and starts vLLM's engine core once; each of N spawned processes runs the same app
on the shared socket with its own connection to the engine (engines/vllm_frontends.py), and the kernel
hands each new connection to one of them.

What differs from one process: runtime adapter loading is off (a process would load it for its own
requests only: list adapters with --adapter), max_pending is shared out, and when the engine stops the
server exits instead of starting a new engine (engine restarts belong to one process; a supervisor such
as systemd or Kubernetes restarts the server).
"""

from __future__ import annotations

import logging
import math
import socket

from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.serve.settings import ServeSettings

log = logging.getLogger(__name__)


def check(settings: ServeSettings, engine: str) -> None:
    """Refuse what several API processes cannot do, naming the setting to change."""
    n = settings.api_processes
    if engine != "vllm":
        raise ConfigError(
            f"api_processes={n}: several API processes share one vLLM engine; the {engine} engine runs "
            "inside its one process. Use --engine vllm, or --api-processes 1"
        )
    if settings.adapter_dir:
        raise ConfigError(
            f"api_processes={n} with --adapter-dir: an adapter loaded at runtime would reach one process "
            "only. List the adapters with --adapter NAME=PATH, or use --api-processes 1"
        )


def share(settings: ServeSettings) -> ServeSettings:
    """The settings one API process runs with: its share of max_pending, no engine restarts of its own."""
    per_process = math.ceil(settings.max_pending / settings.api_processes)
    return settings.model_copy(update={"max_pending": per_process, "engine_restarts": 0})


def listen(host: str, port: int) -> socket.socket:
    """The server socket, bound here (a port in use fails now) and shared by every API process."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); pick another port"
        ) from None
    return sock


def serve(settings: ServeSettings) -> None:
    """Start the engine and the API processes; return when they have stopped."""
    from tuneforge.engines.vllm_engine import VLLMEngine
    from tuneforge.engines.vllm_frontends import run_shared_engine

    plan = VLLMEngine.prepare(
        settings.model, settings.inference, name=settings.name, cache_dir=settings.cache_dir,
        enable_lora=bool(settings.adapters), revision=settings.revision,
        adapters=list(settings.adapters.values()),
    )  # fmt: skip
    sock = listen(settings.host, settings.port)
    address = f"http://{settings.host}:{settings.port}"
    log.info("%d API processes on %s over one vLLM engine", settings.api_processes, address)
    try:
        run_shared_engine(
            plan.engine_args, settings.api_processes, api_process, (settings, plan), address, sock
        )
    except RuntimeError as e:  # vLLM's word for an engine or API process that stopped
        raise TuneforgeError(
            f"the server stopped: {str(e).rstrip('.')}. The log above has the cause; with --api-processes "
            "the server exits when its engine stops (requests in flight are cut off), for its supervisor "
            "(systemd, Kubernetes) to start it again"
        ) from None


def api_process(listen_address: str, sock: socket.socket, payload, client_config: dict) -> None:
    """One API process (spawned): the app on the shared socket, its engine attached to the running one."""
    import uvicorn

    from tuneforge.engines.vllm_engine import VLLMEngine
    from tuneforge.serve.app import build_app

    settings, plan = payload
    index, count = client_config["client_index"], client_config["client_count"]
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s api{index + 1}/{count} %(name)s: %(message)s"
    )
    app = build_app(
        share(settings), lambda _settings: VLLMEngine.attach(plan, client_config), process=(index, count)
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_keep_alive=5))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
