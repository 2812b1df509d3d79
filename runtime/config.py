"""Typed configuration: runtime limits and workloads, loadable from TOML.

Example ``gymux.toml``::

    [runtime]
    max_concurrent_episodes = 512
    step_timeout_s = 30
    env_instances = { wordle = 32 }

    [[workloads]]
    env = "maze"
    tasks = "test"
    samples = 4
    policy = "oracle"

    [[workloads]]
    env = "maze"
    policy = "openai"
    policy_options = { base_url = "http://127.0.0.1:8000/v1", model = "qwen", max_tokens = 256 }

``policy_options`` (only with ``policy = "openai"`` or ``"sglang"``) are the keyword
options of :func:`gymux.policies.registry.make_policy`; the CLI's model flags
(``--base-url``, ``--server``, ...) take precedence over them.

Unknown keys and invalid values are errors that name the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from gymux.errors import ConfigError

__all__ = ["ConfigError", "GymuxConfig", "RuntimeConfig", "Workload", "load_config"]

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]


#: Policies that take ``policy_options``.
MODEL_POLICIES = ("openai", "sglang")


class RuntimeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits and policies of the runtime, shared by all workloads."""

    #: Global cap on episodes running at once.
    max_concurrent_episodes: PositiveInt = 256
    #: Per-env cap on live environment instances (overrides the plugin's default).
    env_instances: dict[str, PositiveInt] = msgspec.field(default_factory=dict)
    #: Time limit for one ``reset`` or ``step`` call of an environment.
    step_timeout_s: PositiveFloat = 60.0
    #: Time limit for one policy call.
    policy_timeout_s: PositiveFloat = 300.0
    #: Time limit for a whole episode (all attempts); ``None`` for no limit.
    episode_timeout_s: PositiveFloat | None = 3600.0
    #: Time allowed for an environment's ``close``.
    close_timeout_s: PositiveFloat = 10.0
    #: Reruns of an episode after a :class:`~gymux.env_plugins.TransientEnvError`.
    env_retries: NonNegInt = 2
    #: First retry delay; doubles per attempt, with jitter, up to ``retry_backoff_max_s``.
    retry_backoff_s: NonNegFloat = 0.5
    retry_backoff_max_s: NonNegFloat = 10.0
    log_level: Literal["debug", "info", "warning", "error"] = "warning"
    #: While the runtime runs, Python's generation-0 GC threshold (default 700). Thousands
    #: of in-flight episodes make frequent young collections expensive; ``None`` leaves
    #: the interpreter's setting alone. Restored when the runtime exits.
    gc_threshold: PositiveInt | None = 50_000


class Workload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Episodes to run: an env x task ids x samples per task x a policy."""

    env: str
    #: A split name (``"test"``) or explicit task ids.
    tasks: str | list[int] = "test"
    samples: PositiveInt = 1
    #: Policy name, resolved by :func:`gymux.policies.registry.make_policy` (``oracle``,
    #: ``random``) unless a policy object is passed to ``Runtime.submit``.
    policy: str = "oracle"
    #: Turn budget; defaults to the env's ``max_turns``.
    max_turns: PositiveInt | None = None
    #: Run only the first ``limit`` tasks.
    limit: PositiveInt | None = None
    seed: int = 0
    #: Options of a model policy (``openai``, ``sglang``), given to ``make_policy``.
    policy_options: dict[str, str | int | float | bool | list[str]] = msgspec.field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        if self.policy_options and self.policy not in MODEL_POLICIES:
            raise ValueError(
                f"policy_options are for policy {' or '.join(map(repr, MODEL_POLICIES))}, "
                f"not {self.policy!r}"
            )


class GymuxConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A whole config file."""

    runtime: RuntimeConfig = msgspec.field(default_factory=RuntimeConfig)
    workloads: list[Workload] = msgspec.field(default_factory=list)
    #: Output directory for trajectories.
    out: str | None = None


def load_config(path: str | Path) -> GymuxConfig:
    """Read a TOML config, raising :class:`ConfigError` with the file and key at fault."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    return parse_config(data, source=str(path))


def parse_config(data: bytes | str, *, source: str = "<config>") -> GymuxConfig:
    """Parse TOML text into a :class:`GymuxConfig`."""
    try:
        return msgspec.toml.decode(data, type=GymuxConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
