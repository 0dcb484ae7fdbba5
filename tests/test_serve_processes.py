"""`tuneforge serve --api-processes N`: several HTTP processes over one vLLM engine (serve/processes.py).

The real server (vLLM's CPU build, the embedded default, a random adapter) with two API processes: both
answer, each with the right text for base and adapter; /metrics adds up every process's counts; SIGTERM
stops the parent, both API processes and the engine. Then what several processes refuse, and the
metrics' sum across processes on its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import httpx
import psutil
import pytest
from serve_client import start_server
from test_serve_app import free_port
from test_serve_real import CHAT, random_adapter

from tuneforge.errors import ConfigError
from tuneforge.serve import processes
from tuneforge.serve.settings import ServeSettings

KEY = "test-key"
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("vllm")
    from tuneforge.models.resolve import resolve_model

    model = resolve_model("smollm2-135m-instruct").path
    adapter = random_adapter(model, tmp_path_factory.mktemp("adapters") / "first")
    port = free_port()
    cmd = [
        sys.executable, "-m", "tuneforge.cli", "serve", model, "inference.max_model_len=512",
        "--engine", "vllm", "--port", str(port), "--served-name", "base", "--adapter", f"first={adapter}",
        "--api-key", KEY, "--api-processes", "2", "--max-pending", "16",
    ]  # fmt: skip
    log = tmp_path_factory.mktemp("log") / "server.log"
    proc, base = start_server(cmd, log)
    yield {"base": base, "proc": proc, "log": log}
    if proc.poll() is None:
        proc.kill()


def each_process(server, path: str, tries: int = 200) -> dict[str, httpx.Response]:
    """`path` asked over new connections until both API processes have answered: process -> response."""
    seen: dict[str, httpx.Response] = {}
    for _ in range(tries):
        with httpx.Client(base_url=server["base"], headers=AUTH, timeout=120) as client:  # a new connection
            r = client.get("/health")
            which = r.json()["api_process"]
            if which not in seen:
                seen[which] = client.get(path) if path != "/health" else r
        if len(seen) == 2:
            break
    return seen


@pytest.mark.vllm
@pytest.mark.slow
def test_both_api_processes_answer_with_the_same_engine(server):
    seen = each_process(server, "/ready")
    assert sorted(seen) == ["1/2", "2/2"], f"only {sorted(seen)} answered"
    children = {p.pid for p in psutil.Process(server["proc"].pid).children()}
    pids = {httpx.get(server["base"] + "/health").json()["pid"] for _ in range(40)}
    assert pids <= children and server["proc"].pid not in pids  # the API processes, not the parent
    assert all(r.status_code == 200 and r.json()["models"] == ["base", "first"] for r in seen.values())
    texts: dict[str, set[str]] = {"base": set(), "first": set()}
    answered_by: set[str] = set()
    for i in range(60):  # new connections, so both processes generate
        with httpx.Client(base_url=server["base"], headers=AUTH, timeout=120) as client:
            answered_by.add(client.get("/health").json()["api_process"])
            for model in texts:
                body = {"prompt": CHAT, "max_tokens": 12, "temperature": 0, "stream": False, "model": model}
                r = client.post("/generate", json=body)
                assert r.status_code == 200, r.text
                texts[model].add(r.json()["text"])
        if len(answered_by) == 2 and i >= 3:
            break
    assert answered_by == {"1/2", "2/2"}
    assert texts["base"] == {"The capital of France is Paris."}  # every process, the same greedy answer
    assert len(texts["first"]) == 1 and texts["first"] != texts["base"]  # the adapter, loaded in each


@pytest.mark.vllm
@pytest.mark.slow
def test_base_requests_beside_adapter_requests_get_the_base_answer(server):
    """One adapter slot, base and adapter requests in the same batches: without the fix for vLLM's CPU
    LoRA op (engines/vllm_cpu_lora.py) base requests were answered through the adapter."""
    import concurrent.futures

    def ask(model: str) -> tuple[str, str]:
        body = {"prompt": CHAT, "max_tokens": 12, "temperature": 0, "stream": False, "model": model}
        r = httpx.post(server["base"] + "/generate", json=body, headers=AUTH, timeout=120)
        assert r.status_code == 200, r.text
        return model, r.json()["text"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, ["base", "first"] * 6))
    assert {text for model, text in answers if model == "base"} == {"The capital of France is Paris."}
    assert len({text for model, text in answers if model == "first"}) == 1


@pytest.mark.vllm
@pytest.mark.slow
def test_metrics_add_up_every_process(server):
    before = {k: requests_total(r.text) for k, r in each_process(server, "/metrics").items()}
    assert len(before) == 2 and len(set(before.values())) == 1  # both processes report the same sum
    n = 8
    for _ in range(n):
        with httpx.Client(base_url=server["base"], headers=AUTH, timeout=120) as client:
            body = {"prompt": "The sky is", "max_tokens": 2, "stream": False}
            assert client.post("/generate", json=body).status_code == 200
    after = {k: requests_total(r.text) for k, r in each_process(server, "/metrics").items()}
    assert set(after.values()) == {next(iter(before.values())) + n}
    text = next(iter(each_process(server, "/metrics").values())).text
    assert 'tuneforge_engine_state{tuneforge_engine_state="ready"} 1.0' in text
    assert "vllm:" not in text  # vLLM's own metrics share the folder; /metrics shows tuneforge's


def requests_total(text: str) -> float:
    line = 'tuneforge_requests_total{route="/generate",status="200"} '
    return sum(float(row[len(line) :]) for row in text.splitlines() if row.startswith(line))


@pytest.mark.vllm
@pytest.mark.slow
def test_sigterm_stops_every_process(server):
    proc = server["proc"]
    family = psutil.Process(proc.pid).children(recursive=True)
    assert len(family) >= 3  # two API processes and the engine (and vLLM's helpers)
    proc.terminate()
    assert proc.wait(120) == 0
    _, alive = psutil.wait_procs(family, timeout=60)
    assert not alive, [p.name() for p in alive]


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.reliability
def test_when_the_engine_dies_the_server_exits_with_its_processes_and_says_why(tmp_path):
    """No engine restarts with several API processes: the whole server stops, for its supervisor."""
    port = free_port()
    serve = [sys.executable, "-m", "tuneforge.cli", "serve", "smollm2-135m-instruct"]
    cmd = [
        *serve,
        "inference.max_model_len=64",
        "--engine",
        "vllm",
        "--port",
        str(port),
        "--api-processes",
        "2",
    ]
    proc, _ = start_server(cmd, tmp_path / "server.log")
    family = psutil.Process(proc.pid).children(recursive=True)
    engine = [p for p in family if "EngineCore" in p.name()]
    assert len(engine) == 1, [p.name() for p in family]
    engine[0].kill()
    assert proc.wait(120) != 0
    _, alive = psutil.wait_procs(family, timeout=60)
    assert not alive, [p.name() for p in alive]
    log = (tmp_path / "server.log").read_text()
    assert "error: the server stopped: Engine core process" in log and "--api-processes" in log


# -- what several API processes refuse, without starting anything ------------------------------------


def test_runtime_adapters_and_the_transformers_engine_are_refused():
    with pytest.raises(ConfigError, match=r"--adapter-dir.*--adapter NAME=PATH"):
        processes.check(ServeSettings(api_processes=2, adapter_dir="runs"), "vllm")
    with pytest.raises(ConfigError, match="--engine vllm"):
        processes.check(ServeSettings(api_processes=2), "transformers")
    processes.check(ServeSettings(api_processes=2, adapters={}), "vllm")  # accepted


def test_each_process_gets_its_share_of_max_pending_and_no_restarts():
    one = processes.share(ServeSettings(api_processes=3, max_pending=256, engine_restarts=3))
    assert one.max_pending == 86 and one.engine_restarts == 0  # 3 x 86 >= 256: none refused early
    assert processes.share(ServeSettings(api_processes=4, max_pending=3)).max_pending == 1


def test_a_port_in_use_is_named():
    held = processes.listen("127.0.0.1", 0)
    held.listen()
    port = held.getsockname()[1]
    try:
        with pytest.raises(ConfigError, match=f"--port {port}: cannot listen"):
            processes.listen("127.0.0.1", port)
    finally:
        held.close()


def test_the_cli_refuses_before_loading_anything(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "serve", "--engine", "transformers", "--api-processes", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode != 0 and "--api-processes 1" in out.stderr, out.stderr[-2000:]


SCRIPT = textwrap.dedent(
    """
    import sys
    from tuneforge.serve.metrics import ServerMetrics
    m = ServerMetrics()
    for _ in range(int(sys.argv[1])):
        m.requests.labels("/generate", "200").inc()
    m.queue_depth.inc(int(sys.argv[2]))
    m.engine_state.state("ready")
    if len(sys.argv) > 3:
        sys.stdout.buffer.write(m.exposition())
    """
)


def test_metrics_from_several_processes_are_summed(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    run = [sys.executable, "-c", SCRIPT]
    subprocess.run([*run, "3", "1"], env=env, check=True, timeout=60)
    subprocess.run([*run, "4", "0"], env=env, check=True, timeout=60)
    text = subprocess.run(
        [*run, "5", "2", "show"], env=env, check=True, timeout=60, capture_output=True
    ).stdout
    text = text.decode()
    assert requests_total(text) == 12.0  # 3 + 4 from processes gone, 5 from the one answering
    assert "tuneforge_queue_depth 3.0" in text  # requests in progress, summed over processes
    assert 'tuneforge_engine_state{tuneforge_engine_state="ready"} 1.0' in text
    alone = subprocess.run(
        [*run, "5", "2", "show"], env={k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        check=True, timeout=60, capture_output=True,
    ).stdout.decode()  # fmt: skip
    assert requests_total(alone) == 5.0  # one process: its own registry


def test_api_processes_below_one_is_refused_by_name():
    from tuneforge.serve.settings import load_settings

    with pytest.raises(ConfigError, match="api_processes"):
        load_settings(api_processes=0)
    assert load_settings().api_processes == 1
