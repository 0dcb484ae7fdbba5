"""One vLLM engine, several API processes: what `vllm serve --api-server-count N` does, for tuneforge's
own server. The engine core starts once (here, in the parent); each API process runs
`target(listen_address, sock, payload, client_config)` and connects its own `AsyncLLM` to the engine
with `client_config` (see `VLLMEngine.attach`). Each process then parses HTTP, turns tokens into text and
streams on its own core, which a single API process cannot do past about 13,000 tokens/s.

vLLM's plumbing for this changed between the two builds tuneforge runs on: 0.26 (CUDA) lets each API
process bind its engine sockets and report them back; 0.32 (CPU) binds them here first. Both paths are
vLLM's own functions, called as `vllm serve` calls them.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

log = logging.getLogger(__name__)


def stop_on_signals() -> None:
    """SIGTERM and SIGINT end the wait below with SystemExit, once, so the processes are shut down."""
    asked = False

    def handler(signum, frame):
        nonlocal asked
        if not asked:
            asked = True
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_shared_engine(engine_args, count: int, target: Callable, payload, listen_address: str, sock) -> None:
    """Start the engine core for `engine_args` and `count` API processes, then wait until one of them
    stops (or SIGTERM/SIGINT); the rest are shut down. Blocks; raises when a process fails."""
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine import utils as engine_utils
    from vllm.v1.executor import Executor
    from vllm.v1.metrics.prometheus import setup_multiprocess_prometheus
    from vllm.v1.utils import APIServerProcessManager, wait_for_completion_or_failure

    setup_multiprocess_prometheus()  # PROMETHEUS_MULTIPROC_DIR: every process's metrics, summed
    stop_on_signals()
    engine_args._api_process_count = count
    engine_args._api_process_rank = -1  # the parent: it starts the engine and serves no requests
    config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    executor = Executor.get_class(config)
    log_stats = not engine_args.disable_log_stats
    frontends = engine = coordinator = None
    if hasattr(engine_utils, "bind_engine_zmq_listeners"):  # vLLM 0.32: sockets bound here, handed over
        listeners = engine_utils.bind_engine_zmq_listeners(config, count)
        with engine_utils.launch_core_engines(config, executor, log_stats, listeners.addresses) as launch:
            engine, coordinator = launch.engine_manager, launch.coordinator
            frontends = APIServerProcessManager(
                listen_address=listen_address, sock=sock, args=payload, num_servers=count,
                input_listeners=listeners.inputs, output_listeners=listeners.outputs,
                target_server_fn=target, tensor_queue=launch.tensor_queue,
                stats_update_address=coordinator.get_stats_publish_address() if coordinator else None,
            )  # fmt: skip
            launch.watched_frontend_processes = frontends.processes
    else:  # vLLM 0.26: each API process binds its own and reports the address back
        addresses = engine_utils.get_engine_zmq_addresses(config, count, defer_api_server_ports=True)
        with engine_utils.launch_core_engines(config, executor, log_stats, addresses, count) as launched:
            engine, coordinator, addresses, queue = launched
            frontends = APIServerProcessManager(
                listen_address=listen_address, sock=sock, args=payload, num_servers=count,
                input_addresses=addresses.inputs, output_addresses=addresses.outputs,
                target_server_fn=target, tensor_queue=queue,
                stats_update_address=coordinator.get_stats_publish_address() if coordinator else None,
            )  # fmt: skip
            addresses.inputs, addresses.outputs = frontends.gather_actual_addresses()
    log.info("engine ready; %d API processes (pids %s)", count, [p.pid for p in frontends.processes])
    try:
        wait_for_completion_or_failure(
            api_server_manager=frontends, engine_manager=engine, coordinator=coordinator
        )
    finally:
        timeout = config.shutdown_timeout
        frontends.shutdown(timeout=timeout)
        if engine:
            engine.shutdown(timeout=timeout)
        if coordinator:
            coordinator.shutdown(timeout=timeout)


def client_engine_config(engine_args, client_config: dict):
    """In an API process: vLLM's config for `engine_args` as client `client_index` of `client_count`,
    and the keyword arguments `AsyncLLM.from_vllm_config` takes to reach the running engine."""
    from vllm.usage.usage_lib import UsageContext

    addresses = dict(client_config)
    count, index = addresses.pop("client_count", 1), addresses.pop("client_index", 0)
    addresses.pop("api_server_loads", None)  # vLLM 0.32's own server's accept balancing; not used here
    engine_args._api_process_count, engine_args._api_process_rank = count, index
    config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    return config, {"client_addresses": addresses, "client_count": count, "client_index": index}
