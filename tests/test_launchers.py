"""Cloud launchers shipped in deploy/ (SkyPilot tasks, a Modal app): each runs on the catalog instance it
names, asks for that instance's GPU, installs extras that exist, and runs commands the CLI accepts. Neither
SkyPilot nor Modal is installed here: the files are read as data (YAML, Python's AST)."""

from __future__ import annotations

import ast
import re
import string
import tomllib

import pytest
import yaml
from conftest import REPO

from tuneforge.cli import build_parser
from tuneforge.command import parse
from tuneforge.cost.catalog import load_catalog

DEPLOY = REPO / "deploy"
CATALOG = load_catalog()
EXTRAS = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def assert_cli_accepts(argv: list[str]) -> None:
    assert argv[0] == "tuneforge", argv
    assert callable(parse(build_parser(), argv[1:]).func)  # SystemExit on an unknown command or option


def gpu_family(instance: str) -> tuple[str, int]:
    inst = CATALOG.get(instance)
    assert inst.is_gpu, f"{instance} has no GPU in the catalog"
    return inst.gpu_family, inst.gpu_count


@pytest.mark.parametrize("name", ["sky-train.yaml", "sky-serve.yaml"])
def test_skypilot_task_matches_its_catalog_instance_and_runs_real_commands(name):
    task = yaml.safe_load((DEPLOY / name).read_text())
    res = task["resources"]
    family, count = gpu_family(res["instance_type"])
    accel, _, n = res["accelerators"].partition(":")
    assert (accel.upper(), int(n)) == (family, count)
    for extra in re.findall(r"\.\[([\w,-]+)\]", task["setup"]):
        assert set(extra.split(",")) <= EXTRAS, f"{name}: unknown extra in {extra}"
    env = {k: (v if v is not None else "x") for k, v in task["envs"].items()}
    lines = [ln for ln in task["run"].splitlines() if ln.strip().startswith("tuneforge")]
    assert lines, f"{name} runs no tuneforge command"
    for line in lines:
        assert_cli_accepts(string.Template(line).substitute(env).split())
    if "RECIPE" in env:
        assert (REPO / env["RECIPE"]).is_file()
    if task["envs"].get("INSTANCE"):
        assert task["envs"]["INSTANCE"] == res["instance_type"]


def test_skyserve_probes_the_readiness_route():
    from tuneforge.serve.app import build_app
    from tuneforge.serve.settings import ServeSettings

    task = yaml.safe_load((DEPLOY / "sky-serve.yaml").read_text())
    routes = {r.path for r in build_app(ServeSettings(), engine_factory=lambda s: None).routes}
    assert task["service"]["readiness_probe"]["path"] in routes
    assert task["service"]["replicas"] >= 2 and task["resources"]["ports"] == 8000


def test_modal_app_runs_on_its_catalog_instance_with_real_commands():
    tree = ast.parse((DEPLOY / "modal_app.py").read_text())
    consts = {
        t.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    family, count = gpu_family(consts["INSTANCE"])
    assert (consts["GPU"].upper(), count) == (family, 1)
    extras = next(
        kw.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "pip_install_from_pyproject"
        for kw in node.keywords
        if kw.arg == "optional_dependencies"
    )
    assert {e.value for e in extras.elts} <= EXTRAS
    commands = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.List) and node.elts and getattr(node.elts[0], "value", None) == "tuneforge"
    ]
    assert len(commands) == 2  # train: `tuneforge run`, serve: `tuneforge serve`
    for node in commands:
        argv = []
        for elt in node.elts:
            if isinstance(elt, ast.Constant):
                argv.append(elt.value)
            elif isinstance(elt, ast.Name):
                argv.append(str(consts.get(elt.id, "x")))  # a parameter: any value
            else:  # an f-string: its literal parts with placeholders filled
                argv.append("".join(v.value if isinstance(v, ast.Constant) else "x" for v in elt.values))
        assert_cli_accepts(argv)
