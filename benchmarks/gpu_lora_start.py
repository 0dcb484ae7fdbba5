"""Why does a vLLM engine with LoRA stall at start on the GPU when its engine core runs in its own process?

Starts vLLM's offline engine (random weights, `load_format="dummy"`) with `enable_lora=True` in a child
process, once per setting given, and waits up to --wait seconds for it to serve a base and an adapter
request. A stalled engine gets its stacks dumped: `py-spy dump` of every process of the tree when py-spy is
on the PATH, then SIGABRT with PYTHONFAULTHANDLER=1 (Python's own traceback of every thread).

    python benchmarks/gpu_lora_start.py MODEL_DIR default spawn inproc   # on the GPU machine, vLLM staged

Settings: default (vLLM as it starts), spawn (VLLM_WORKER_MULTIPROC_METHOD=spawn), inproc
(VLLM_ENABLE_V1_MULTIPROCESSING=0), each also with VLLM_LORA_DISABLE_PDL=1 when suffixed "+nopdl".
Prints one line per setting, then a JSON line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lora_overhead import make_adapter  # this folder is on sys.path when run as a script

SETTINGS = {
    "default": {},
    "spawn": {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"},
    "inproc": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
}


def child(model: str, adapter: str) -> None:
    """Runs in the child: start the engine, one base and one adapter request."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    t0 = time.time()
    llm = LLM(model=model, load_format="dummy", dtype="bfloat16", max_model_len=1024,
              gpu_memory_utilization=0.5, enable_lora=True, max_lora_rank=16, max_loras=1,
              enable_prefix_caching=False, enforce_eager=True)  # fmt: skip
    print(f"STARTED {time.time() - t0:.1f}", flush=True)
    sp = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    prompt = [{"prompt_token_ids": list(range(100, 164))}]
    for name, req in (("base", None), ("adapter", LoRARequest("ad", 1, adapter))):
        t = time.time()
        llm.generate(prompt, sp, lora_request=req, use_tqdm=False)
        print(f"SERVED {name} {time.time() - t:.1f}", flush=True)


def descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    kids = [int(p) for p in out.split()]
    return kids + [d for k in kids for d in descendants(k)]


def dump_stacks(pids: list[int], path: Path, group: int) -> None:
    """py-spy's native stacks of each process (when on the PATH), then SIGABRT so that faulthandler writes
    every thread's Python traceback to the process's log; then the process group is killed."""
    with open(path, "w") as f:
        for pid in pids:
            if shutil.which("py-spy"):
                f.write(f"===== py-spy dump --native --pid {pid}\n")
                f.flush()
                subprocess.run(["py-spy", "dump", "--native", "--pid", str(pid)], stdout=f,
                               stderr=subprocess.STDOUT, timeout=60)  # fmt: skip
    for pid in reversed(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGABRT)
    time.sleep(3)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


def attempt(model: str, adapter: str, setting: str, wait: float, log_dir: Path) -> dict:
    base, _, extra = setting.partition("+")
    env = {**os.environ, **SETTINGS[base], "PYTHONFAULTHANDLER": "1", "PYTHONUNBUFFERED": "1"}
    if extra == "nopdl":
        env["VLLM_LORA_DISABLE_PDL"] = "1"
    log = log_dir / f"lora_start_{setting}.log"
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, __file__, "--child", model, adapter], env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        while proc.poll() is None and time.time() - t0 < wait:
            time.sleep(1)
    text = log.read_text()
    result = {"setting": setting, "seconds": round(time.time() - t0, 1), "rc": proc.poll()}
    result["started"] = "STARTED" in text
    result["served"] = [line.split()[1] for line in text.splitlines() if line.startswith("SERVED")]
    last = [line for line in text.splitlines() if line.strip()][-3:]
    result["last_lines"] = [line[:200] for line in last]
    if proc.poll() is None:  # stalled: dump every process's stacks, then stop the tree
        dump_stacks(
            [proc.pid, *descendants(proc.pid)], log_dir / f"lora_start_{setting}.stacks.txt", proc.pid
        )
        result["stalled"] = True
    return result


def main() -> None:
    if sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("settings", nargs="+")
    parser.add_argument("--wait", type=float, default=150)
    parser.add_argument("--log-dir", default=os.environ.get("OUT", tempfile.gettempdir()))
    args = parser.parse_args()
    for s in args.settings:
        if s.partition("+")[0] not in SETTINGS or s.partition("+")[2] not in ("", "nopdl"):
            parser.error(f"unknown setting '{s}': {', '.join(SETTINGS)}, each optionally +nopdl")
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    adapter = str(log_dir / "adapter")
    make_adapter(args.model, adapter, 8, ["q_proj", "v_proj"])  # rank 8 on q, v
    results = []
    for s in args.settings:
        r = attempt(args.model, adapter, s, args.wait, log_dir)
        results.append(r)
        last = r["last_lines"][-1] if r["last_lines"] else ""
        served = ",".join(r["served"]) or "-"
        print(f"{s:16} started={r['started']!s:5} served={served:14} {r['seconds']:6.1f} s  {last}")
    print(json.dumps({"benchmark": "gpu_lora_start", "model": args.model, "results": results}))


if __name__ == "__main__":
    main()
