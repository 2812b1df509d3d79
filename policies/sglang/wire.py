"""SGLang's native HTTP API, typed: the ``/generate`` body, its answers, ``/get_model_info``.

Answers are decoded with msgspec into the Structs below (unknown fields are ignored, as
SGLang adds fields between versions); an answer that does not fit raises
:class:`~gymux.errors.PolicyError` saying what is wrong. Shapes as SGLang documents them:
``{"text", "output_ids", "meta_info": {"finish_reason": {"type": "stop"|"length"|"abort",
...}, "output_token_logprobs": [[logprob, token_id, text_or_null], ...], "prompt_tokens",
"completion_tokens", "e2e_latency", ...}}``, a list of those for a batch, and in a stream
one such object per ``data:`` chunk (cumulative, with ``index`` in a batch).
"""

from __future__ import annotations

from typing import Any

import msgspec

from gymux.errors import PolicyError

__all__ = [
    "FinishReason",
    "GenerateAnswer",
    "MetaInfo",
    "ModelInfo",
    "TokenLogprob",
    "decode_answers",
    "decode_chunk",
    "decode_model_info",
    "generate_body",
]


class FinishReason(msgspec.Struct):
    """``meta_info.finish_reason`` when it is an object (older servers send a string)."""

    type: str = ""
    message: str | None = None


class TokenLogprob(msgspec.Struct, array_like=True):
    """One ``[logprob, token_id, text]`` entry of ``output_token_logprobs``."""

    logprob: float
    token_id: int
    text: str | None = None


class MetaInfo(msgspec.Struct):
    finish_reason: FinishReason | str | None
    output_token_logprobs: list[TokenLogprob] | None = None
    prompt_tokens: int = 0
    completion_tokens: int | None = None
    e2e_latency: float = 0.0

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


class ModelInfo(msgspec.Struct):
    """What ``GET /get_model_info`` says that the policy uses."""

    max_context_length: int | None = None


def generate_body(
    input_ids: list[int] | list[list[int]],
    rid: str | list[str],
    sampling: dict[str, Any],
    *,
    stream: bool,
) -> dict[str, Any]:
    """A ``POST /generate`` body: one sequence, or a batch when given lists of lists."""
    return {
        "input_ids": input_ids,
        "sampling_params": sampling,
        "return_logprob": True,
        "rid": rid,
        "stream": stream,
    }


_ANSWER_DECODER = msgspec.json.Decoder(GenerateAnswer)
_BATCH_DECODER = msgspec.json.Decoder(list[msgspec.Raw])
_ITEM_DECODER = msgspec.json.Decoder(msgspec.Raw)
_MODEL_INFO_DECODER = msgspec.json.Decoder(ModelInfo)


def decode_answers(raw: bytes, *, where: str) -> list[GenerateAnswer | PolicyError]:
    """A ``/generate`` answer: one item, or a list for a batch. An item that does not fit
    becomes a :class:`PolicyError` in its place; a body that is not JSON raises one."""
    batch = raw.lstrip()[:1] == b"["
    try:
        items = _BATCH_DECODER.decode(raw) if batch else [_ITEM_DECODER.decode(raw)]
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
    """One ``data:`` chunk of a streamed ``/generate``."""
    try:
        return _ANSWER_DECODER.decode(payload)
    except msgspec.DecodeError as exc:
        raise PolicyError(f"{where}: malformed stream chunk ({exc})") from None


def decode_model_info(raw: bytes) -> ModelInfo:
    """``GET /get_model_info``'s answer (an empty body: nothing known)."""
    if not raw.strip():
        return ModelInfo()
    try:
        return _MODEL_INFO_DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        raise PolicyError(f"malformed /get_model_info answer: {exc}") from None
