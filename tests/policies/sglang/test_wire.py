"""SGLang's answers decoded into msgspec Structs: shapes, malformed input, per-item errors."""

from __future__ import annotations

import json

import pytest

from gymux.errors import PolicyError
from gymux.policies.sglang.wire import (
    FinishReason,
    decode_answers,
    decode_chunk,
    decode_model_info,
    generate_body,
)


def answer(**meta) -> dict:
    base = {"finish_reason": {"type": "stop", "matched": 2}, "prompt_tokens": 3}
    return {"text": "hi", "output_ids": [5, 2], "meta_info": {**base, **meta}}


def test_single_and_batch_answers():
    (one,) = decode_answers(json.dumps(answer(e2e_latency=0.5)).encode(), where="w")
    assert not isinstance(one, PolicyError)
    assert one.output_ids == [5, 2] and one.text == "hi" and one.meta_info.e2e_latency == 0.5
    assert one.meta_info.finish_reason == FinishReason(type="stop")
    assert one.meta_info.finish_type == "stop" and one.meta_info.finished
    lps = [[-0.5, 5, None], [-0.25, 2]]  # a missing trailing text is tolerated
    two = decode_answers(
        json.dumps([answer(), answer(output_token_logprobs=lps)]).encode(), where="w"
    )
    assert len(two) == 2
    assert [(e.logprob, e.token_id) for e in two[1].meta_info.output_token_logprobs] == [
        (-0.5, 5),
        (-0.25, 2),
    ]


def test_finish_reason_forms():
    for finish, kind, finished in [("length", "length", True), (None, None, False)]:
        (item,) = decode_answers(json.dumps(answer(finish_reason=finish)).encode(), where="w")
        assert item.meta_info.finish_type == kind and item.meta_info.finished is finished


def test_malformed_json_raises_and_a_bad_item_fails_alone():
    with pytest.raises(PolicyError, match="w: malformed JSON in /generate answer"):
        decode_answers(b'{"output_ids": [1', where="w")
    bad = answer()
    bad["output_ids"] = "nope"
    good, broken = decode_answers(json.dumps([answer(), bad]).encode(), where="w")
    assert not isinstance(good, PolicyError)
    assert isinstance(broken, PolicyError)
    assert "unexpected answer shape" in str(broken) and "$.output_ids" in str(broken)
    (missing,) = decode_answers(b'{"output_ids": []}', where="w")
    assert isinstance(missing, PolicyError) and "meta_info" in str(missing)


def test_stream_chunks_and_model_info():
    chunk = decode_chunk(json.dumps({**answer(finish_reason=None), "index": 3}).encode(), where="w")
    assert chunk.index == 3 and not chunk.meta_info.finished
    with pytest.raises(PolicyError, match="w: malformed stream chunk"):
        decode_chunk(b"{not json", where="w")
    assert decode_model_info(b'{"max_context_length": 4096, "x": 1}').max_context_length == 4096
    assert decode_model_info(b"").max_context_length is None
    with pytest.raises(PolicyError, match="get_model_info"):
        decode_model_info(b'{"max_context_length": "big"}')


def test_generate_body():
    body = generate_body([[1, 2]], ["r"], {"max_new_tokens": 4}, stream=True)
    assert body == {
        "input_ids": [[1, 2]],
        "sampling_params": {"max_new_tokens": 4},
        "return_logprob": True,
        "rid": ["r"],
        "stream": True,
    }


@pytest.mark.parametrize("stream", [False, True])
def test_generate_body_parts_is_generate_body_for_one_sequence(stream: bool) -> None:
    import msgspec

    from gymux.policies.sglang.wire import generate_body_parts
    from gymux.policies.tokens import PromptIds

    sampling = {"max_new_tokens": 4, "temperature": 0.5, "stop_token_ids": [2]}
    prompt = PromptIds.of_parts([b"1,2", b"3000"], 3)
    parts = generate_body_parts(prompt.json_parts(), 'r-1"x', sampling, stream=stream)
    assert msgspec.json.decode(b"".join(parts)) == generate_body(
        [1, 2, 3000], 'r-1"x', sampling, stream=stream
    )


@pytest.mark.parametrize("stream", [False, True])
def test_generate_batch_body_parts_is_generate_body_for_a_batch(stream: bool) -> None:
    import msgspec

    from gymux.policies.sglang.wire import generate_batch_body_parts
    from gymux.policies.tokens import PromptIds

    sampling = {"max_new_tokens": 4, "stream_interval": 4}
    prompts = [PromptIds.of_parts([b"1,2", b"3000"], 3), PromptIds([7]), PromptIds([5, 6])]
    rids = ["a.", 'b"x.', "c."]
    parts = generate_batch_body_parts(
        [p.json_parts() for p in prompts], rids, sampling, stream=stream
    )
    assert msgspec.json.decode(b"".join(parts)) == generate_body(
        [[1, 2, 3000], [7], [5, 6]], rids, sampling, stream=stream
    )


def test_error_bodies_and_context_refusals():
    from gymux.policies.sglang.wire import (
        StreamError,
        context_limit_of,
        decode_event,
        error_message,
        is_context_error,
    )

    assert error_message(b'{"error": {"message": "input_ids cannot be empty."}}') == (
        "input_ids cannot be empty."
    )
    assert error_message(b'{"error": "unknown field `x`"}') == "unknown field `x`"
    assert error_message(b'{"object": "error", "message": "Retry later.", "code": 503}') == (
        "Retry later."
    )
    assert error_message(b"not json") == "not json"
    total = "Requested token count exceeds the model's maximum context length of 2048 tokens."
    longer = "The input (9000 tokens) is longer than the model's context length (8192 tokens)."
    assert is_context_error(total) and context_limit_of(total) == 2048
    assert is_context_error(longer) and context_limit_of(longer) == 8192
    assert not is_context_error("input_ids cannot be empty.")
    assert context_limit_of("other") is None
    event = decode_event(b'{"error": {"message": "m", "code": 400, "retryable": false}}', where="w")
    assert isinstance(event, StreamError) and event.error.message == "m"
    abort = decode_event(
        json.dumps(
            answer(finish_reason={"type": "abort", "message": "r", "status_code": 503})
        ).encode(),
        where="w",
    )
    assert not isinstance(abort, StreamError)
    assert abort.meta_info.finish_reason == FinishReason(type="abort", message="r", status_code=503)
    with pytest.raises(PolicyError, match="w: error in stream: m"):
        decode_chunk(b'{"error": {"message": "m"}}', where="w")
