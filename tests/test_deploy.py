"""The way to production (deploy/): the Dockerfiles pass hadolint, every command they and the compose file
run exists in the CLI, the files they copy exist, the versions they pin are the ones tuneforge pins, and
the health checks ask routes the service has. No Docker engine here: these checks stand in for a build."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from tuneforge.cli import build_parser
from tuneforge.command import parse

DEPLOY = REPO / "deploy"
DOCKERFILES = sorted(DEPLOY.glob("Dockerfile.*"))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def exec_form(path: Path, word: str) -> list[str]:
    return next((json.loads(rest) for w, rest in instructions(path) if w == word), [])


def argv_of(dockerfile: Path, cmd: list[str] | None = None) -> list[str]:
    """What the container runs by default (or with `cmd`), minus the `tuneforge` program name."""
    full = exec_form(dockerfile, "ENTRYPOINT") + (cmd if cmd is not None else exec_form(dockerfile, "CMD"))
    assert full[0] == "tuneforge", full
    return full[1:]


def assert_cli_accepts(argv: list[str]) -> None:
    args = parse(build_parser(), argv)  # exits (SystemExit) on an unknown command or option
    assert callable(args.func)


def test_there_is_a_cuda_and_a_cpu_image():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.cuda"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_commands_exist_and_copied_files_are_there(dockerfile):
    assert_cli_accepts(argv_of(dockerfile))
    for word, rest in instructions(dockerfile):
        if word == "RUN":
            for command in re.findall(r"tuneforge ([a-z][^&;|]*)", rest):
                assert_cli_accepts(command.split())
        if word == "COPY":
            for source in rest.split()[:-1]:
                assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source}: no such file"
    for usage in re.findall(r"docker run .*?tuneforge:\w+ (.+)", dockerfile.read_text()):  # usage on top
        cmd = usage.split("#")[0].split()
        if cmd and not cmd[0].startswith("-"):
            assert_cli_accepts(argv_of(dockerfile, cmd))


def test_images_pin_the_versions_tuneforge_pins():
    pyproject = (REPO / "pyproject.toml").read_text()
    vllm = re.search(r'vllm = \["vllm==([\d.]+)"\]', pyproject).group(1)
    assert (
        exec_form is not None and f"FROM vllm/vllm-openai:v{vllm}" in (DEPLOY / "Dockerfile.cuda").read_text()
    )
    lines = (REPO / "constraints-cpu.txt").read_text().splitlines()
    pins = dict(line.split("#")[0].strip().split("==") for line in lines if "==" in line)
    cpu = (DEPLOY / "Dockerfile.cpu").read_text()
    assert f"torch=={pins['torch']}" in cpu
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert compose["services"]["mlflow"]["image"].endswith(f":v{pins['mlflow']}")


def test_compose_starts_mlflow_then_tuneforge_with_health_checks_on_real_routes():
    from tuneforge.serve.app import build_app
    from tuneforge.serve.settings import ServeSettings

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"mlflow", "tuneforge"}
    tf = services["tuneforge"]
    assert tf["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert tf["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert (REPO / "deploy" / tf["build"]["context"] / tf["build"]["dockerfile"]).is_file()
    assert_cli_accepts(argv_of(DEPLOY / "Dockerfile.cpu", tf["command"]))
    routes = {r.path for r in build_app(ServeSettings(), engine_factory=lambda s: None).routes}
    for name, service in services.items():
        check = " ".join(service["healthcheck"]["test"])
        path = re.search(r"http://127\.0\.0\.1:\d+(/\w+)", check).group(1)
        if name == "tuneforge":
            assert path in routes, f"{name} health check asks {path}, which the service does not have"
        assert service["healthcheck"]["start_period"]


def test_the_fsdp_config_is_one_accelerate_reads_and_the_commands_it_names_exist():
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType

    path = DEPLOY / "accelerate-fsdp.yaml"
    config = ClusterConfig.from_yaml_file(str(path))
    assert config.distributed_type == DistributedType.FSDP and config.mixed_precision == "bf16"
    fsdp = config.fsdp_config
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_use_orig_params"] is False  # PEFT mixes frozen and trainable parameters in a layer
    # the launch command in the file's header and in the docs trains a shipped recipe with our CLI
    for text in (path.read_text(), (REPO / "docs" / "scale-out.md").read_text()):
        launch = re.search(
            r"accelerate launch --config_file deploy/accelerate-fsdp.yaml -m tuneforge.cli (.*)", text
        )
        assert launch, "no launch command with the FSDP config"
        argv = launch.group(1).split()
        assert (REPO / argv[-1]).is_file()
        assert_cli_accepts(argv)
