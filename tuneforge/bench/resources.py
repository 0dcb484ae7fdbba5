"""CPU, memory and GPU use: one snapshot, or samples taken in a thread while a benchmark runs.

    from tuneforge.bench.resources import ResourceMonitor, monitor_resources
    monitor_resources()                           # one snapshot of this machine
    with ResourceMonitor(interval_s=1.0, pid=server_pid) as mon:
        ...                                       # run the load
    mon.summary()                                 # mean and max of every field

GPU figures come from NVML (`pynvml`, package nvidia-ml-py), imported only here and only when called; any
NVML failure (no library, no driver, no device) gives the no-GPU snapshot, whose `note` says why. GPU
memory is the device's (all processes); process memory is the resident set of `pid` and its children
(a vLLM server runs its engine in child processes). GB are 2^30 bytes throughout.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

GB = 2**30  # as torch and nvidia-smi (MiB) count: an "80GB" H100 shows 79.6
GPU_FIELDS = ("gpu_utilization_percent", "gpu_memory_used_gb", "gpu_memory_total_gb", "gpu_power_w")
HOST_FIELDS = ("cpu_utilization_percent", "process_memory_gb", "system_memory_used_gb")
FIELDS = GPU_FIELDS + HOST_FIELDS


def gpu_snapshot(nvml: Any = None) -> dict[str, Any]:
    """GPU fields summed over devices (utilization averaged), or None for each with a note saying why.

    `nvml` is the pynvml module (imported here by default); tests pass a stand-in."""
    try:
        if nvml is None:
            import pynvml as nvml
        nvml.nvmlInit()
    except Exception as e:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
        return _no_gpu(f"no GPU: NVML is not available ({_describe(e)})")
    try:
        count = nvml.nvmlDeviceGetCount()
        if count == 0:
            return _no_gpu("no GPU: NVML found no devices")
        devices = []
        for i in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                power = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0  # milliwatts
            except Exception:  # some devices (and MIG slices) do not report power
                power = None
            name = nvml.nvmlDeviceGetName(handle)
            devices.append(
                {
                    "index": i,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "utilization_percent": float(util.gpu),
                    "memory_used_gb": mem.used / GB,
                    "memory_total_gb": mem.total / GB,
                    "power_w": power,
                }
            )
    except Exception as e:
        return _no_gpu(f"no GPU: NVML query failed ({_describe(e)})")
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    powers = [d["power_w"] for d in devices]
    return {
        "gpu_available": True,
        "gpu_count": len(devices),
        "gpu_name": devices[0]["name"],
        "gpu_utilization_percent": math.fsum(d["utilization_percent"] for d in devices) / len(devices),
        "gpu_memory_used_gb": math.fsum(d["memory_used_gb"] for d in devices),
        "gpu_memory_total_gb": math.fsum(d["memory_total_gb"] for d in devices),
        "gpu_power_w": None if any(p is None for p in powers) else math.fsum(powers),
        "gpus": devices,
    }


def _describe(e: Exception) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _no_gpu(note: str) -> dict[str, Any]:
    return {
        "gpu_available": False,
        "gpu_count": 0,
        "gpu_name": None,
        **dict.fromkeys(GPU_FIELDS),
        "note": note,
    }


def _process_rss(pid: int) -> float | None:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # a child that ended between listing and reading
            continue
    return total / GB


def monitor_resources(
    pid: int | None = None, cpu_interval: float | None = 0.1, nvml: Any = None
) -> dict[str, Any]:
    """One snapshot. Always has every key of FIELDS plus gpu_available; GPU values are None without a GPU.

    cpu_interval: seconds over which CPU use is measured (None: since the previous call, as psutil does)."""
    import psutil

    snap = gpu_snapshot(nvml)
    snap["cpu_utilization_percent"] = float(psutil.cpu_percent(interval=cpu_interval))
    snap["process_memory_gb"] = _process_rss(pid if pid is not None else os.getpid())
    snap["system_memory_used_gb"] = psutil.virtual_memory().used / GB
    snap["pid"] = pid if pid is not None else os.getpid()
    return snap


def summarize_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """mean and max of every field over the samples (None where no sample had a value)."""
    out: dict[str, Any] = {"samples": len(samples)}
    for name in FIELDS:
        values = [s[name] for s in samples if s.get(name) is not None]
        out[name] = (
            {"mean": math.fsum(values) / len(values), "max": max(values)}
            if values
            else {"mean": None, "max": None}
        )
    out["gpu_available"] = any(s.get("gpu_available") for s in samples)
    gpu = next((s for s in samples if s.get("gpu_available")), None)
    out["gpu_name"] = gpu["gpu_name"] if gpu else None
    out["gpu_count"] = gpu["gpu_count"] if gpu else 0
    if not out["gpu_available"]:
        out["note"] = samples[0].get("note") if samples else "no samples taken"
    return out


class ResourceMonitor:
    """Samples `monitor_resources` every `interval_s` seconds in a daemon thread while in the `with` block."""

    def __init__(self, interval_s: float = 1.0, pid: int | None = None, nvml: Any = None):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self.pid = pid
        self.nvml = nvml
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        try:
            snap = monitor_resources(self.pid, cpu_interval=None, nvml=self.nvml)
        except Exception as e:  # never let monitoring break a benchmark
            log.warning("resource sample failed: %s", e)
            return
        snap["t_s"] = time.perf_counter() - self._t0
        self.samples.append(snap)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> ResourceMonitor:
        import psutil

        psutil.cpu_percent(interval=None)  # starts psutil's CPU window
        self._t0 = time.perf_counter()
        self._server_cpu0 = process_cpu_seconds(self.pid)
        self._thread = threading.Thread(target=self._run, name="resource-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval_s + 5)
        self._sample()  # at least one sample, even for a run shorter than the interval
        wall, cpu1 = time.perf_counter() - self._t0, process_cpu_seconds(self.pid)
        self.server_cpu_share = (
            None
            if cpu1 is None or self._server_cpu0 is None
            else (cpu1 - self._server_cpu0) / max(wall, 1e-9)
        )

    def summary(self) -> dict[str, Any]:
        """The samples' summary, and `server_process_cpu_share`: the CPU that process `pid` itself (not its
        children: a server's API process, without its engine) used over the block, as a share of one core."""
        out = summarize_samples(self.samples)
        share = getattr(self, "server_cpu_share", None)
        out["server_process_cpu_share"] = None if share is None else round(share, 3)
        return out


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of process `pid` alone; None without a pid or once it is gone."""
    if pid is None:
        return None
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return t.user + t.system
