"""The ``Options`` of the model policies: msgspec Structs, validated by msgspec.

:class:`OpenAIOptions` configures :class:`gymux.policies.openai.OpenAICompatPolicy`,
:class:`SGLangOptions` configures :class:`gymux.policies.sglang.SGLangPolicy`. Unknown fields
are refused and bounds are declared with :class:`msgspec.Meta`, so
``msgspec.convert(mapping, OpenAIOptions)`` (what :func:`gymux.policies.registry.make_policy`
does with a config's ``policy_options``) fails with a message that names the field, e.g.
``Expected `int` >= 1 - at `$.max_retries```. :func:`build_options` does the same for the
policies' keyword arguments and raises :class:`gymux.errors.PolicyOptionsError`.

This module imports no HTTP client, so options can be checked without one.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec

from gymux.errors import PolicyOptionsError

__all__ = [
    "OpenAIOptions",
    "SGLangOptions",
    "Strategy",
    "build_options",
    "field_names",
    "validate_options",
]

_O = TypeVar("_O", bound=msgspec.Struct)

_Positive = Annotated[float, msgspec.Meta(gt=0)]
_NonNegative = Annotated[float, msgspec.Meta(ge=0)]
_Count = Annotated[int, msgspec.Meta(ge=0)]
_AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
_Name = Annotated[str, msgspec.Meta(min_length=1)]

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


class SGLangOptions(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Options of the token-exact SGLang policy."""

    #: Server URLs (an episode stays on the one it started on while it is healthy).
    urls: Annotated[list[_Name], msgspec.Meta(min_length=1)]
    #: Local model folder the tokenizer is loaded from (``tokenizer.json`` and
    #: ``tokenizer_config.json``); not needed when a tokenizer object is passed.
    tokenizer_path: _Name | None = None
    strategy: Strategy = "single"
    max_new_tokens: _AtLeastOne = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] | None = None
    #: The model's context; default: the smallest ``max_context_length`` the servers report.
    context_length: _AtLeastOne | None = None
    max_batch: _AtLeastOne = 128
    window_s: _NonNegative = 0.002
    max_inflight_batches: _AtLeastOne = 64
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


def _convert(data: Any, options_type: type[_O], *, who: str | None = None) -> _O:
    try:
        return msgspec.convert(data, options_type)
    except msgspec.ValidationError as exc:
        prefix = f"{who}: " if who else ""
        raise PolicyOptionsError(f"{prefix}invalid option: {exc}") from None
