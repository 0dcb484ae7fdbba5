"""tuneforge on Modal: the whole pipeline as a function, and `tuneforge serve` as a web endpoint, on the
catalog's `modal-l40s` (one L40S), so `tuneforge cost instance modal-l40s` prices them.

    modal run deploy/modal_app.py::train --recipe configs/mistral-7b-qlora.yaml
    modal deploy deploy/modal_app.py          # then the URL Modal prints serves the adapter

Runs go to the Modal volume `tuneforge-runs`; a run started again skips its finished stages and training
resumes from its last checkpoint. Gated models need a Modal secret named `huggingface` with HF_TOKEN.
"""

import subprocess

import modal

INSTANCE = "modal-l40s"  # the catalog entry this app runs on
GPU = "L40S"
MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
RUNS = "/runs"

image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install_from_pyproject("pyproject.toml", optional_dependencies=["gpu", "vllm"])
    .add_local_dir(".", "/app", ignore=[".venv", "runs", ".git"])
)
app = modal.App("tuneforge", image=image)
runs = modal.Volume.from_name("tuneforge-runs", create_if_missing=True)
secrets = [modal.Secret.from_name("huggingface")]


@app.function(gpu=GPU, volumes={RUNS: runs}, secrets=secrets, timeout=8 * 3600)
def train(recipe: str = "configs/mistral-7b-qlora.yaml") -> None:
    name = recipe.rsplit("/", 1)[-1].removesuffix(".yaml")
    cmd = ["tuneforge", "run", recipe, f"training.output_dir={RUNS}/{name}", "--instance", INSTANCE]
    subprocess.run(cmd, check=True, cwd="/app")
    runs.commit()


@app.function(gpu=GPU, volumes={RUNS: runs}, secrets=secrets, timeout=24 * 3600)
@modal.web_server(8000, startup_timeout=900)
def serve() -> None:
    cmd = ["tuneforge", "serve", MODEL, "--adapter", f"tuned={RUNS}/mistral-7b-qlora/adapter",
           "--host", "0.0.0.0", "--port", "8000"]  # fmt: skip
    subprocess.Popen(cmd, cwd="/app")
