"""Adapters at runtime: list, load, unload (also under vLLM's route names, so vLLM tooling works).

A path must resolve inside the server's adapter directory (`adapter_dir`): `..` and links that lead
outside it are refused with 403, and with no adapter directory, runtime loading is off. Loading a name
that is loaded from the same folder is a no-op (200), from another folder a 409; unloading waits for
the requests using the adapter to finish (new ones get 404 meanwhile). The service does both.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request

from tuneforge.engines.base import InvalidRequest
from tuneforge.serve.errors import Forbidden
from tuneforge.serve.protocol import AdapterLoad, VLLMAdapterLoad, VLLMAdapterUnload
from tuneforge.serve.routes import ERRORS, service
from tuneforge.serve.settings import check_adapter_name

router = APIRouter(prefix="/v1")


def resolve_inside(adapter_dir: str | None, path: str) -> Path:
    """The adapter folder for `path`, which must lie inside `adapter_dir` once links are followed."""
    if adapter_dir is None:
        raise Forbidden(
            "loading adapters at runtime is off: start the server with --adapter-dir DIR "
            "(or TUNEFORGE_ADAPTER_DIR) to allow folders inside DIR",
            param="path",
        )
    root = Path(adapter_dir).resolve()
    try:
        target = (root / path).resolve()
    except (ValueError, OSError) as e:  # e.g. a NUL byte in the path
        raise InvalidRequest(f"adapter path {path!r} is not a valid path: {e}", param="path") from None
    if not target.is_relative_to(root):
        raise Forbidden(f"adapter path '{path}' resolves outside the adapter directory {root}", param="path")
    if not (target / "adapter_config.json").is_file():
        raise InvalidRequest(
            f"'{path}' is not a PEFT adapter folder (no adapter_config.json in {target})", param="path"
        )
    return target


@router.get("/adapters")
async def list_adapters(request: Request):
    engine = service(request).require_engine()
    return {"adapters": [{"name": n, "path": p} for n, p in sorted(engine.adapters().items())]}


@router.post("/adapters", responses=ERRORS)
async def load_adapter(body: AdapterLoad, request: Request):
    return await _load(request, body.name, body.path)


@router.delete("/adapters/{name}", responses=ERRORS)
async def unload_adapter(name: str, request: Request):
    """Waits for the requests using the adapter to finish; `waited_for` says how many there were."""
    svc = service(request)
    if name in (svc.settings.name, svc.settings.model):
        _not_base(name)
    waited = await svc.unload_adapter(name)
    return {"unloaded": name, "waited_for": waited}


@router.post("/load_lora_adapter", responses=ERRORS)
async def vllm_load(body: VLLMAdapterLoad, request: Request):
    return await _load(request, body.lora_name, body.lora_path)


@router.post("/unload_lora_adapter", responses=ERRORS)
async def vllm_unload(body: VLLMAdapterUnload, request: Request):
    return await unload_adapter(body.lora_name, request)


async def _load(request: Request, name: str, path: str):
    svc = service(request)
    try:
        check_adapter_name(name)
    except ValueError as e:
        raise InvalidRequest(str(e), param="name") from None
    if name == svc.settings.name:
        raise InvalidRequest(f"'{name}' is the base model's name; pick another", param="name")
    folder = resolve_inside(svc.settings.adapter_dir, path)
    await svc.load_adapter(name, str(folder))
    return {"loaded": name, "path": str(folder)}


def _not_base(name: str):
    raise InvalidRequest(f"'{name}' is the base model, not an adapter", param="name")
