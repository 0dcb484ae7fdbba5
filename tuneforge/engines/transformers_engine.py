"""Generation with transformers: the engine for machines without vLLM, and for fast tests.

    engine = TransformersEngine.start("smollm2-135m-instruct", InferenceConfig())

One worker thread runs the model, so the server's event loop never waits on it and requests take
turns. A batch request is one left-padded `generate` call: one forward pass per step for all of its
prompts (tests/test_properties_serve.py checks it). Adapters are PEFT adapters chosen per request by
name (`adapter_names`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from tuneforge.config import InferenceConfig, SamplingParams
from tuneforge.engines.base import (
    AdapterNotFound,
    Chunk,
    Completion,
    EngineOutOfMemory,
    InvalidRequest,
    check_context,
    cut_at_stop,
)

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
_END = object()


class TransformersEngine:
    def __init__(
        self, model, tokenizer, batch_size: int = 8, name: str = "model", max_model_len: int | None = None
    ):
        self.model, self.tokenizer, self.batch_size, self.name = model.eval(), tokenizer, batch_size, name
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.max_model_len = max_model_len or getattr(model.config, "max_position_embeddings", 2048)
        self._adapters: dict[str, str] = {}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneforge-generate")

    @classmethod
    def start(
        cls,
        reference: str,
        cfg: InferenceConfig,
        *,
        name: str | None = None,
        cache_dir: str | None = None,
        revision: str | None = None,
    ) -> TransformersEngine:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        from tuneforge.models.resolve import resolve_model

        ref = resolve_model(reference, cache_dir)
        gpu = torch.cuda.is_available()
        dtype = {"auto": "auto" if gpu else torch.float32}.get(cfg.dtype) or getattr(torch, cfg.dtype)
        revision = revision if ref.kind == "hub" else None  # a local folder has no revisions
        kwargs = {"dtype": dtype, "revision": revision}
        if cfg.quantization == "bitsandbytes":
            compute = torch.bfloat16 if gpu else torch.float32
            kwargs["quantization_config"] = (
                BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
                )
                if cfg.quantization_bits == 4
                else BitsAndBytesConfig(load_in_8bit=True)
            )
        model = AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
        if gpu and cfg.quantization is None:
            model = model.to("cuda")
        tokenizer = AutoTokenizer.from_pretrained(ref.path, revision=revision)
        return cls(model, tokenizer, name=name or reference, max_model_len=cfg.max_model_len)

    # -- prompts -------------------------------------------------------------------------------------
    def _encode(self, prompt: str) -> list[int]:
        bos = self.tokenizer.bos_token
        return self.tokenizer.encode(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))

    def count_tokens(self, prompt: str) -> int:
        return len(self._encode(prompt))

    def apply_chat_template(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self._adapters:
            raise AdapterNotFound(
                f"no adapter named '{adapter}'; loaded: {sorted(self._adapters) or 'none'}", param="model"
            )

    # -- the model call (worker thread) --------------------------------------------------------------
    def _generate_ids(self, batch_ids, sampling: SamplingParams, adapter, streamer=None, cancel=None):
        """New token ids per prompt: one `generate` over the left-padded batch."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                stop = cancel is not None and cancel.is_set()
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

        tok = self.tokenizer
        width = max(len(ids) for ids in batch_ids)
        input_ids = torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i in batch_ids])
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in batch_ids])
        kwargs = {
            "max_new_tokens": sampling.max_tokens,
            "pad_token_id": tok.pad_token_id,
            "stopping_criteria": StoppingCriteriaList([Cancelled()]),
            "streamer": streamer,
        }
        sampling = sampling.concrete()
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=tok)
        if sampling.ignore_eos:
            kwargs["min_new_tokens"] = sampling.max_tokens
        if self._adapters:
            kwargs["adapter_names"] = [adapter or BASE] * len(batch_ids)
        try:
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=input_ids.to(self.model.device),
                    attention_mask=mask.to(self.model.device),
                    **kwargs,
                )
        except torch.OutOfMemoryError as e:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise EngineOutOfMemory(
                f"out of memory generating {len(batch_ids)} prompt(s) x max_tokens={sampling.max_tokens}: "
                "send fewer prompts per batch or lower max_tokens"
            ) from e
        return [self._trim(row[width:].tolist()) for row in out]

    def _trim(self, ids: list[int]) -> list[int]:
        """Up to and including the first end-of-sequence token (what follows is padding)."""
        eos = self.tokenizer.eos_token_id
        return ids[: ids.index(eos) + 1] if eos in ids else ids

    def _finish(self, ids: list[int], text: str, sampling: SamplingParams) -> tuple[str, str]:
        visible, hit = cut_at_stop(text, sampling.stop)
        ended = hit or (self.tokenizer.eos_token_id in ids and not sampling.ignore_eos)
        return visible, "stop" if ended or len(ids) < sampling.max_tokens else "length"

    # -- the interface -------------------------------------------------------------------------------
    async def stream(
        self, prompt: str, sampling: SamplingParams, adapter: str | None = None
    ) -> AsyncIterator[Chunk]:
        ids = self._encode(prompt)
        check_context(len(ids), sampling.max_tokens, self.max_model_len)
        self._check_adapter(adapter)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        streamer = _QueueStreamer(loop, queue)

        def run():
            try:
                return self._generate_ids([ids], sampling, adapter, streamer, cancel)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        job = loop.run_in_executor(self._worker, run)
        new: list[int] = []
        sent = 0
        hold = max((len(s) for s in sampling.stop), default=1) - 1  # a stop string may be half-made
        try:
            while (item := await queue.get()) is not _END:
                new.extend(item)
                text = self.tokenizer.decode(new, skip_special_tokens=True)
                visible, hit = cut_at_stop(text, sampling.stop)
                if hit:
                    break
                safe = len(visible) - hold
                if safe > sent and not visible.endswith("\ufffd"):  # not mid-way through a character
                    yield Chunk(visible[sent:safe], len(ids), len(new))
                    sent = safe
            cancel.set()
            await job  # raises what generation raised
            visible, reason = self._finish(
                new, self.tokenizer.decode(new, skip_special_tokens=True), sampling
            )
            yield Chunk(visible[sent:], len(ids), len(new), reason)
        finally:
            cancel.set()  # a client that went away stops its generation at the next step

    async def complete_batch(
        self, prompts: Sequence[str], sampling: SamplingParams, adapter: str | None = None
    ) -> list[Completion]:
        batch = [self._encode(p) for p in prompts]
        for i, ids in enumerate(batch):
            try:
                check_context(len(ids), sampling.max_tokens, self.max_model_len)
            except InvalidRequest as e:
                raise type(e)(f"prompts[{i}]: {e}", param=f"prompts[{i}]") from None
        self._check_adapter(adapter)
        loop = asyncio.get_running_loop()
        outs = await loop.run_in_executor(self._worker, self._generate_ids, batch, sampling, adapter)
        return [self._completion(ids, new, sampling) for ids, new in zip(batch, outs, strict=True)]

    def _completion(self, prompt_ids, new, sampling) -> Completion:
        text, reason = self._finish(new, self.tokenizer.decode(new, skip_special_tokens=True), sampling)
        return Completion(text, reason, len(prompt_ids), len(new))

    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, adapter: str | None = None
    ) -> list[str]:
        """Offline (evaluation): `batch_size` prompts per `generate` call, in the caller's thread."""
        self._check_adapter(adapter)
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = [self._encode(p) for p in prompts[start : start + self.batch_size]]
            news = self._generate_ids(batch, sampling, adapter)
            out.extend(
                self._completion(ids, new, sampling).text for ids, new in zip(batch, news, strict=True)
            )
        return out

    # -- adapters ------------------------------------------------------------------------------------
    async def load_adapter(self, name: str, path: str) -> None:
        await asyncio.get_running_loop().run_in_executor(self._worker, self.load_adapter_now, name, path)

    def load_adapter_now(self, name: str, path: str) -> None:
        from peft import PeftModel

        try:
            if name in self._adapters:
                self.model.delete_adapter(name)
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(path), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
        except Exception as e:
            raise InvalidRequest(f"cannot load adapter '{name}' from {path}: {e}", param="path") from e
        self.model.eval()
        self._adapters[name] = str(path)

    async def unload_adapter(self, name: str) -> None:
        self._check_adapter(name)
        await asyncio.get_running_loop().run_in_executor(self._worker, self._unload, name)

    def _unload(self, name: str) -> None:
        if len(self._adapters) == 1:
            self.model = self.model.unload()  # the last one: back to the plain base model
        else:
            self.model.delete_adapter(name)
        del self._adapters[name]

    def adapters(self) -> dict[str, str]:
        return dict(self._adapters)

    def describe(self) -> dict:
        weight = next(self.model.parameters())
        quant = getattr(self.model.config, "quantization_config", None)
        return {
            "kind": "transformers",
            "device": str(weight.device),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "max_model_len": self.max_model_len,
            "quantization": getattr(getattr(quant, "quant_method", None), "value", None),
        }

    # -- life ----------------------------------------------------------------------------------------
    async def warm_up(self) -> float:
        """Nothing to do: PyTorch's eager kernels compile nothing on a first request."""
        return 0.0

    def is_healthy(self) -> bool:
        return True

    async def shutdown(self) -> None:
        self.close()

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


class _QueueStreamer:
    """A transformers streamer that hands each step's new token ids to an asyncio queue."""

    def __init__(self, loop, queue):
        self.loop, self.queue, self.prompt_seen = loop, queue, False

    def put(self, value):
        if not self.prompt_seen:  # generate() first passes the prompt itself
            self.prompt_seen = True
            return
        self.loop.call_soon_threadsafe(self.queue.put_nowait, value.reshape(-1).tolist())

    def end(self):
        pass
