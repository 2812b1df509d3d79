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

``policy_options`` (only with a model policy: ``openai``, ``sglang``, ``vllm``, ``hf``) are
the keyword options of :func:`gymux.policies.registry.make_policy`; the CLI's model flags
(``--base-url``, ``--server``, ...) take precedence over them.

Unknown keys and invalid values are errors that name the key. Every numeric option is
bounded (the aliases below say how); a workload plans at most :data:`MAX_EPISODES` episodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import msgspec

from gymux.errors import ConfigError

__all__ = [
    "MAX_EPISODES",
    "ConfigError",
    "GymuxConfig",
    "RuntimeConfig",
    "Workload",
    "checked",
    "load_config",
]

#: Most episodes one workload may plan (task ids x samples); more is refused with one line.
MAX_EPISODES = 100_000_000
#: Longest time limit or delay any option accepts: a year, in seconds.
MAX_SECONDS = 365 * 24 * 3600.0

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
#: Bounded numbers: every numeric option has an upper bound, so no value can overflow a C
#: integer (``gc.set_threshold``) or make a limit meaningless.
Seconds = Annotated[float, msgspec.Meta(gt=0, le=MAX_SECONDS)]
Delay = Annotated[float, msgspec.Meta(ge=0, le=3600.0)]
Episodes = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
Instances = Annotated[int, msgspec.Meta(ge=1, le=100_000)]
Retries = Annotated[int, msgspec.Meta(ge=0, le=100)]
GcThreshold = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
Samples = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
Turns = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
TaskLimit = Annotated[int, msgspec.Meta(ge=1, le=MAX_EPISODES)]
Seed = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
GroupSize = Annotated[int, msgspec.Meta(ge=1, le=65_536)]
Oversample = Annotated[int, msgspec.Meta(ge=0, le=65_536)]
Staleness = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]


#: One value of ``policy_options``: a scalar, a list of names, or a table of scalars.
_OptionValue = str | int | float | bool | list[str] | dict[str, str | int | float | bool]

#: Policies that take ``policy_options``.
MODEL_POLICIES = ("openai", "sglang", "vllm", "hf")


class RuntimeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits and policies of the runtime, shared by all workloads."""

    #: Global cap on episodes running at once.
    max_concurrent_episodes: Episodes = 256
    #: Per-env cap on live environment instances (overrides the plugin's default).
    env_instances: dict[str, Instances] = msgspec.field(default_factory=dict)
    #: Time limit for one ``reset`` or ``step`` call of an environment.
    step_timeout_s: Seconds = 60.0
    #: Time limit for one policy call.
    policy_timeout_s: Seconds = 300.0
    #: Time limit for a whole episode (all attempts); ``None`` for no limit.
    episode_timeout_s: Seconds | None = 3600.0
    #: Time allowed for an environment's ``close``.
    close_timeout_s: Seconds = 10.0
    #: Reruns of an episode after a :class:`~gymux.env_plugins.TransientEnvError`.
    env_retries: Retries = 2
    #: First retry delay; doubles per attempt, with jitter, up to ``retry_backoff_max_s``.
    retry_backoff_s: Delay = 0.5
    retry_backoff_max_s: Delay = 10.0
    log_level: Literal["debug", "info", "warning", "error"] = "warning"
    #: While the runtime runs, Python's generation-0 GC threshold (default 700). Thousands
    #: of in-flight episodes make frequent young collections expensive; ``None`` leaves
    #: the interpreter's setting alone. Restored when the runtime exits.
    gc_threshold: GcThreshold | None = 50_000
    #: How the store sink (``out/store``) commits trajectories: ``always`` (default) reports
    #: an episode finished (events, progress, run handles, summary) only once its record is
    #: fsynced, group-committed with the others; ``batch`` fsyncs at most every 10 ms and
    #: ``os`` only hands records to the OS: both report episodes before they are durable, so
    #: a crash can lose episodes already shown as finished.
    durability: Literal["os", "batch", "always"] = "always"


class Workload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Episodes to run: an env x task ids x samples per task x a policy."""

    env: str
    #: A split name (``"test"``) or explicit task ids.
    tasks: str | list[int] = "test"
    #: Episodes per task (at most 1,000,000; a workload plans at most :data:`MAX_EPISODES`).
    samples: Samples = 1
    #: Policy name, resolved by :func:`gymux.policies.registry.make_policy` (``oracle``,
    #: ``random``) unless a policy object is passed to ``Runtime.submit``.
    policy: str = "oracle"
    #: Turn budget; defaults to the env's ``max_turns``.
    max_turns: Turns | None = None
    #: Run only the first ``limit`` tasks.
    limit: TaskLimit | None = None
    seed: Seed = 0
    #: Options of a model policy (``openai``, ``sglang``, ``vllm``), given to ``make_policy``.
    #: A value may itself be a table of scalars (vLLM's ``extra_body``, for example).
    policy_options: dict[str, _OptionValue] = msgspec.field(default_factory=dict)
    #: RL groups (GRPO): each task's samples come in groups of ``group_size`` episodes,
    #: and ``samples`` counts groups per task. A group reaches the sinks whole
    #: (``Sink.write_group``) or not at all. ``None``: no groups.
    group_size: GroupSize | None = None
    #: Over-sampling: start ``group_size + oversample`` episodes per group, keep the first
    #: ``group_size`` that finish, cancel the rest (their in-flight policy calls too).
    oversample: Oversample = 0
    #: Drop groups whose rewards are all equal (no learning signal for GRPO).
    drop_zero_variance: bool = False
    #: Staleness bound: an episode that finishes with a turn generated more than this many
    #: weight updates ago (``Runtime.update_policy``) is not handed on. ``None``: no bound.
    max_staleness: Staleness | None = None
    #: What happens to a stale episode: ``discard`` it, or ``restart`` it from its reset.
    stale: Literal["discard", "restart"] = "discard"

    @property
    def shared_policy_key(self) -> str | None:
        """Workloads with the same key share one policy object (its connection pool, its
        loaded model): a model policy with the same options (and, for ``hf``, which samples
        with it, the same seed). ``None`` for ``oracle`` and ``random``: one per run."""
        if self.policy not in MODEL_POLICIES:
            return None
        key = self.policy + msgspec.json.encode(self.policy_options, order="sorted").decode()
        return f"{key} seed={self.seed}" if self.policy == "hf" else key

    def __post_init__(self) -> None:
        if self.group_size is None and (self.oversample or self.drop_zero_variance):
            raise ConfigError("oversample and drop_zero_variance need group_size")
        if self.policy_options and self.policy not in MODEL_POLICIES:
            raise ConfigError(
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


_S = TypeVar("_S", RuntimeConfig, Workload)


def checked(value: _S, *, labels: Mapping[str, str] | None = None) -> _S:
    """``value`` validated against its schema, bounds included (a Struct built in code, e.g.
    from CLI flags, is not validated by its constructor). Raises :class:`ConfigError` naming
    the field, after its label in ``labels`` (e.g. ``{"samples": "--samples"}``) if any."""
    try:
        return msgspec.convert(msgspec.to_builtins(value), type(value))
    except msgspec.ValidationError as exc:
        text = str(exc)
        field = text.rpartition("`$.")[2].split("`")[0].split(".")[0].split("[")[0]
        label = (labels or {}).get(field)
        raise ConfigError(f"{label}: {text}" if label else f"invalid option: {text}") from None
