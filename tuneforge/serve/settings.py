"""Server settings: defaults < environment (`TUNEFORGE_*`) < flags, validated at start-up.

TUNEFORGE_API_KEY=secret TUNEFORGE_INFERENCE__DTYPE=float32 tuneforge serve smollm2-135m-instruct
"""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tuneforge.config import InferenceConfig, SamplingParams
from tuneforge.errors import ConfigError


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", env_nested_delimiter="__", extra="forbid")

    model: str = "smollm2-135m-instruct"
    """Model reference: the embedded default, a local folder or a hub id."""
    served_name: str | None = None
    """Name clients use for the base model (OpenAI `model`); defaults to the model reference."""
    adapters: dict[str, str] = Field(default_factory=dict)
    """Adapters loaded at start-up, name -> folder."""
    adapter_dir: str | None = None
    """Folder that adapters loaded at runtime must resolve inside; None turns runtime loading off."""
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = None
    """Bearer token required on every route but /health and /ready; None: no key."""
    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed by CORS, e.g. ["https://app.example.com"] or ["*"]."""
    max_batch_prompts: int = Field(64, ge=1)
    """Most prompts in one batch request."""
    max_body_bytes: int = Field(1_000_000, ge=1024)
    """Largest request body; larger ones get 413."""
    max_pending: int = Field(256, ge=1)
    """Requests admitted at once (running or queued in the engine); more get 429 with Retry-After."""
    request_timeout_s: float = Field(300.0, gt=0)
    """A generation still running after this long ends with 504 and its partial text."""
    engine_restarts: int = Field(3, ge=0)
    """Engine restarts the server may make over its life after the engine stops (each attempt counts);
    0: never, the server stays down and says so on /health and /ready."""
    engine_restart_backoff_s: float = Field(2.0, ge=0)
    """Wait before the first restart attempt after the engine stops, doubled after each failed attempt."""
    api_processes: int = Field(1, ge=1)
    """HTTP processes over one vLLM engine (as `vllm serve --api-server-count`): each parses requests and
    streams on its own core. With more than 1, max_pending is shared out among them, adapters come only
    from `adapters`, and the server exits when the engine stops (a supervisor restarts it)."""
    warmup: bool = True
    """Generate a few tokens after the engine starts and before /ready says ready, so that the first client
    does not pay for kernels vLLM compiles on first use (Triton attention: about 0.45 s on an H200)."""
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    """Engine settings (see `tuneforge config keys`, section inference)."""
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    """Defaults for what a request leaves out (temperature, top_p, max_tokens; section sampling)."""
    cache_dir: str | None = None
    """Where the embedded default is converted (default ~/.cache/tuneforge)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of the model; the recipe's model.revision with --recipe."""

    @field_validator("adapters")
    @classmethod
    def _names(cls, adapters: dict[str, str]) -> dict[str, str]:
        for name in adapters:
            check_adapter_name(name)
        return adapters

    @property
    def name(self) -> str:
        return self.served_name or self.model


def check_adapter_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "._-" for c in name):
        raise ValueError(f"adapter name '{name}': use letters, digits, '.', '_' or '-'")
    return name


def load_settings(**values) -> ServeSettings:
    """Settings from the environment, with `values` (from flags) on top; errors name the setting."""
    try:
        return ServeSettings(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in e.errors()
        ]
        raise ConfigError(
            "invalid server settings (flags or TUNEFORGE_* environment variables):\n  "
            + "\n  ".join(problems)
        ) from None
    except ConfigError as e:  # raised by InferenceConfig's own checks
        raise ConfigError(f"invalid server settings: inference.{e}") from None
