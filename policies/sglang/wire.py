"""SGLang's native HTTP API, typed: the ``/generate`` body, its answers and stream chunks,
its error bodies, and the model's limits from ``/v1/models`` and ``/server_info``.

Answers are decoded with msgspec into the Structs below (unknown fields are ignored, as
SGLang adds fields between versions); an answer that does not fit raises
:class:`~gymux.errors.PolicyError` saying what is wrong. Shapes as SGLang documents them:
``{"text", "output_ids", "meta_info": {"finish_reason": {"type": "stop"|"length"|"abort",
...}, "output_token_logprobs": [[logprob, token_id, text_or_null], ...], "prompt_tokens",
"completion_tokens", "e2e_latency", ...}}``, a list of those for a batch, and in a stream
one such object per ``data:`` chunk (cumulative, with ``index`` in a batch; only the new
``text``/``output_ids``/``output_token_logprobs`` when the server runs with
``--incremental-streaming-output``), or ``{"error": {"message", "type", "code",
"retryable"}}`` when the request failed after the stream began.

Error bodies (SGLang 0.5.23): ``{"error": {"message": ...}}`` for a ``ValueError`` (HTTP 400,
e.g. the context-length checks), ``{"error": "<text>"}`` for the schema gate (HTTP 400),
``{"object": "error", "message", "type", "code"}`` for an ``HTTPException`` (e.g. 503), and
``{"detail": ...}`` from FastAPI itself; :func:`error_message` reads all four.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from gymux.errors import PolicyError

__all__ = [
    "ErrorBody",
    "FinishReason",
    "GenerateAnswer",
    "MetaInfo",
    "ModelCard",
    "ModelInfo",
    "ModelList",
    "ServerInfo",
    "StreamError",
    "TokenLogprob",
    "context_limit_of",
    "decode_answers",
    "decode_chunk",
    "decode_event",
    "decode_model_info",
    "decode_model_list",
    "decode_server_info",
    "error_message",
    "generate_batch_body_parts",
    "generate_body",
    "generate_body_parts",
    "is_context_error",
]


class FinishReason(msgspec.Struct):
    """``meta_info.finish_reason`` when it is an object (older servers send a string)."""

    type: str = ""
    message: str | None = None
    #: With ``type == "abort"``: the HTTP status the server gives the abort (503 when the
    #: scheduler retracted the request under memory pressure or its queue was full;
    #: ``None`` for an abort a client asked for).
    status_code: int | None = None
    err_type: str | None = None


class TokenLogprob(msgspec.Struct, array_like=True, gc=False):
    """One ``[logprob, token_id, text]`` entry of ``output_token_logprobs``.

    Not tracked by the garbage collector (``gc=False``: it holds only numbers and a string,
    so it cannot be part of a cycle): an answer brings one per generated token, and
    thousands of tracked objects per turn made young collections run every few turns.
    """

    #: ``null`` is allowed by SGLang's schema (never expected on output tokens).
    logprob: float | None
    token_id: int
    text: str | None = None


class MetaInfo(msgspec.Struct):
    finish_reason: FinishReason | str | None
    output_token_logprobs: list[TokenLogprob] | None = None
    prompt_tokens: int = 0
    completion_tokens: int | None = None
    e2e_latency: float | None = 0.0
    #: The version of the weights that generated the output (SGLang sets it on every answer).
    weight_version: str | None = None

    @property
    def finish_type(self) -> str | None:
        """``"stop"``, ``"length"``, ``"abort"``, ..., or ``None`` while still generating."""
        finish = self.finish_reason
        if isinstance(finish, FinishReason):
            return finish.type
        return finish or None

    @property
    def finished(self) -> bool:
        finish = self.finish_reason
        return finish is not None and finish != ""


class GenerateAnswer(msgspec.Struct):
    """One sequence's answer (or, streamed, its state so far)."""

    output_ids: list[int]
    meta_info: MetaInfo
    text: str | None = None
    #: The item's place in a batch (streamed answers).
    index: int = 0


class ErrorBody(msgspec.Struct):
    """The ``error`` object of an in-stream error chunk."""

    message: str = ""
    type: str | None = None
    code: int | None = None
    retryable: bool = False


class StreamError(msgspec.Struct):
    """``data: {"error": {...}}``: the request failed after its stream began."""

    error: ErrorBody
    index: int | None = None


class ModelInfo(msgspec.Struct):
    """``GET /get_model_info`` (kept for old callers; SGLang serves no context length there)."""

    max_context_length: int | None = None


class ModelCard(msgspec.Struct):
    """One entry of ``GET /v1/models``' ``data``."""

    id: str = ""
    max_model_len: int | None = None


class ModelList(msgspec.Struct):
    """``GET /v1/models`` (OpenAI's list shape; SGLang and vLLM add ``max_model_len``)."""

    data: list[ModelCard] = msgspec.field(default_factory=list)

    @property
    def max_model_len(self) -> int | None:
        """The context length of the served (first) model, when reported."""
        return self.data[0].max_model_len if self.data else None


class ServerInfo(msgspec.Struct):
    """What ``GET /server_info`` says that the policy uses."""

    #: The longest prompt the scheduler admits (its context length less one, or less when
    #: the KV cache is smaller).
    max_req_input_len: int | None = None
    #: Stream chunks carry only what is new (``--incremental-streaming-output``).
    incremental_streaming_output: bool = False


_ENCODER = msgspec.json.Encoder()


def generate_body(
    input_ids: list[int] | list[list[int]] | msgspec.Raw | list[msgspec.Raw],
    rid: str | list[str],
    sampling: dict[str, Any],
    *,
    stream: bool,
) -> dict[str, Any]:
    """A ``POST /generate`` body: one sequence, or a batch when given lists of lists (each
    sequence's ids may come as their JSON, a :class:`msgspec.Raw`)."""
    return {
        "input_ids": input_ids,
        "sampling_params": sampling,
        "return_logprob": True,
        "rid": rid,
        "stream": stream,
    }


def generate_body_parts(
    input_ids: Sequence[bytes], rid: str, sampling: dict[str, Any], *, stream: bool
) -> list[bytes]:
    """:func:`generate_body` for one sequence, as JSON fragments whose concatenation is the
    body: ``input_ids`` the fragments of its JSON array
    (:meth:`gymux.policies.tokens.PromptIds.json_parts`)."""
    return [
        b'{"input_ids":',
        *input_ids,
        b',"sampling_params":',
        _ENCODER.encode(sampling),
        b',"return_logprob":true,"rid":',
        _ENCODER.encode(rid),
        b',"stream":true}' if stream else b',"stream":false}',
    ]


def generate_batch_body_parts(
    input_ids: Sequence[Sequence[bytes]],
    rids: Sequence[str],
    sampling: dict[str, Any],
    *,
    stream: bool,
) -> list[bytes]:
    """:func:`generate_body` for a batch, as JSON fragments whose concatenation is the body:
    ``input_ids`` holds each sequence's fragments of its JSON array
    (:meth:`gymux.policies.tokens.PromptIds.json_parts`), so the prompts are copied once,
    when the request is written, not joined and encoded again first."""
    out = [b'{"input_ids":[']
    for i, parts in enumerate(input_ids):
        if i:
            out.append(b",")
        out += parts
    out += (
        b'],"sampling_params":',
        _ENCODER.encode(sampling),
        b',"return_logprob":true,"rid":',
        _ENCODER.encode(list(rids)),
        b',"stream":true}' if stream else b',"stream":false}',
    )
    return out


_ANSWER_DECODER = msgspec.json.Decoder(GenerateAnswer)
_BATCH_DECODER = msgspec.json.Decoder(list[msgspec.Raw])
_MODEL_INFO_DECODER = msgspec.json.Decoder(ModelInfo)
_MODEL_LIST_DECODER = msgspec.json.Decoder(ModelList)
_SERVER_INFO_DECODER = msgspec.json.Decoder(ServerInfo)


class _Event(msgspec.Struct):
    """A stream chunk before it is known to be an answer or an error."""

    output_ids: list[int] | None = None
    meta_info: MetaInfo | None = None
    text: str | None = None
    index: int | None = None
    error: ErrorBody | None = None


_EVENT_DECODER = msgspec.json.Decoder(_Event)
_ANY_DECODER = msgspec.json.Decoder()

#: SGLang's two context-length refusals (tokenizer_manager ``_validate_one_request``).
_CONTEXT_PATTERNS = (
    re.compile(r"maximum context length of (\d+) tokens"),
    re.compile(r"longer than the model's context length \((\d+) tokens\)"),
)


def decode_answers(raw: bytes, *, where: str) -> list[GenerateAnswer | PolicyError]:
    """A ``/generate`` answer: one item, or a list for a batch. An item that does not fit
    becomes a :class:`PolicyError` in its place; a body that is not JSON raises one."""
    batch = raw.lstrip()[:1] == b"["
    try:
        if not batch:  # one pass: decoded straight into its type
            try:
                return [_ANSWER_DECODER.decode(raw)]
            except msgspec.ValidationError as exc:
                return [PolicyError(f"{where}: unexpected answer shape: {exc}")]
        items = _BATCH_DECODER.decode(raw)
    except msgspec.DecodeError:
        raise PolicyError(
            f"{where}: malformed JSON in /generate answer ({len(raw)} bytes)"
        ) from None
    out: list[GenerateAnswer | PolicyError] = []
    for item in items:
        try:
            out.append(_ANSWER_DECODER.decode(item))
        except msgspec.DecodeError as exc:
            out.append(PolicyError(f"{where}: unexpected answer shape: {exc}"))
    return out


def decode_chunk(payload: bytes, *, where: str) -> GenerateAnswer:
    """One ``data:`` chunk of a streamed ``/generate``; an error chunk raises
    :class:`PolicyError` with the server's message (see :func:`decode_event`)."""
    event = decode_event(payload, where=where)
    if isinstance(event, StreamError):
        raise PolicyError(f"{where}: error in stream: {event.error.message}")
    return event


def decode_event(payload: bytes, *, where: str) -> GenerateAnswer | StreamError:
    """One ``data:`` chunk of a streamed ``/generate``: an answer, or the server's error."""
    try:
        event = _EVENT_DECODER.decode(payload)
    except msgspec.DecodeError as exc:
        raise PolicyError(f"{where}: malformed stream chunk ({exc})") from None
    if event.error is not None:
        return StreamError(error=event.error, index=event.index)
    if event.output_ids is None or event.meta_info is None:
        missing = "output_ids" if event.output_ids is None else "meta_info"
        raise PolicyError(f"{where}: malformed stream chunk (no `{missing}`)")
    return GenerateAnswer(
        output_ids=event.output_ids,
        meta_info=event.meta_info,
        text=event.text,
        index=event.index or 0,
    )


def decode_model_info(raw: bytes) -> ModelInfo:
    """``GET /get_model_info``'s answer (an empty body: nothing known)."""
    if not raw.strip():
        return ModelInfo()
    try:
        return _MODEL_INFO_DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        raise PolicyError(f"malformed /get_model_info answer: {exc}") from None


def decode_model_list(raw: bytes) -> ModelList:
    """``GET /v1/models``' answer."""
    try:
        return _MODEL_LIST_DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        raise PolicyError(f"malformed /v1/models answer: {exc}") from None


def decode_server_info(raw: bytes) -> ServerInfo:
    """``GET /server_info``' answer."""
    try:
        return _SERVER_INFO_DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        raise PolicyError(f"malformed /server_info answer: {exc}") from None


def error_message(raw: bytes) -> str:
    """The message of an SGLang error body (any of the shapes in the module doc), or the
    start of the body when it has none of them."""
    try:
        body = _ANY_DECODER.decode(raw)
    except msgspec.DecodeError:
        return raw[:200].decode("utf-8", "replace")
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        for key in ("message", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return raw[:200].decode("utf-8", "replace")


def is_context_error(message: str) -> bool:
    """Whether ``message`` is SGLang refusing a prompt that does not fit the context."""
    return any(p.search(message) for p in _CONTEXT_PATTERNS)


def context_limit_of(message: str) -> int | None:
    """The context length a context-length refusal names, if it names one."""
    for pattern in _CONTEXT_PATTERNS:
        found = pattern.search(message)
        if found:
            return int(found.group(1))
    return None
