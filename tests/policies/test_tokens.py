"""TokenLedger / ChatTokenizer: template once, observations appended, exact ids and masks."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")

from gymux.errors import PolicyError
from gymux.messages import Message
from gymux.policies.tokens import ChatTokenizer, TokenLedger
from gymux.stores.codec import pack_int32, pack_uint8

from doubles.sglang_double import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> ChatTokenizer:
    return ChatTokenizer.from_dir(build_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def first_messages() -> list[Message]:
    return [
        Message(role="user", content="Solve the maze."),
        Message(role="assistant", content="OK"),
        Message(role="user", content="The goal is at position (1, 2)."),
    ]


def test_roundtrip_and_template(tok: ChatTokenizer) -> None:
    text = "Thought: go.\nAction: move up"
    assert tok.decode(tok.encode(text)) == text
    rendered = tok.render(first_messages(), add_generation_prompt=True)
    assert rendered.startswith("<|im_start|>user\nSolve the maze.<|im_end|>\n")
    assert rendered.endswith("<|im_start|>assistant\n")
    assert tok.eos_id == tok.tokenizer.token_to_id("<|im_end|>")


def test_ledger_appends_and_masks(tok: ChatTokenizer) -> None:
    ledger = TokenLedger(tok)
    msgs = first_messages()
    p0 = ledger.prompt_for(msgs)
    assert p0 == tok.encode(tok.render(msgs, add_generation_prompt=True))
    out = [*tok.encode("Thought: x\nAction: move up"), tok.eos_id]
    ledger.append_generated(out, [-0.5] * len(out))
    msgs += [
        Message(role="assistant", content="Thought: x\nAction: move up"),
        Message(role="user", content="You moved up."),
    ]
    p1 = ledger.prompt_for(msgs)
    assert p1[: len(p0) + len(out)] == p0 + out  # prefix never changes
    # The suffix is exactly the template's rendering of the next turn (EOS not duplicated).
    full = tok.render(msgs, add_generation_prompt=True)
    assert tok.decode(p1, skip_special_tokens=False) == full
    assert ledger.loss_mask == [0] * len(p0) + [1] * len(out) + [0] * (len(p1) - len(p0) - len(out))
    assert ledger.logprobs[len(p0) : len(p0) + len(out)] == [-0.5] * len(out)
    data = ledger.token_data()
    assert data.ids == pack_int32(p1) and data.loss_mask == pack_uint8(ledger.loss_mask)
    assert data.length == len(p1)


def test_length_finish_gets_full_closing(tok: ChatTokenizer) -> None:
    ledger = TokenLedger(tok)
    msgs = first_messages()
    p0 = ledger.prompt_for(msgs)
    out = tok.encode("Thought: tru")  # cut off, no EOS
    ledger.append_generated(out, None)
    msgs += [Message(role="assistant", content="Thought: tru"), Message(role="user", content="Go.")]
    p1 = ledger.prompt_for(msgs)
    assert tok.decode(p1, skip_special_tokens=False) == tok.render(msgs, add_generation_prompt=True)
    assert p1[: len(p0)] == p0


def test_out_of_step_is_policy_error(tok: ChatTokenizer) -> None:
    ledger = TokenLedger(tok)
    msgs = first_messages()
    ledger.prompt_for(msgs)
    with pytest.raises(PolicyError):
        ledger.prompt_for([*msgs, Message(role="user", content="again")])
    with pytest.raises(PolicyError):
        ledger.append_generated([1, 2], [0.0])


def test_missing_template(tmp_path: Path) -> None:
    folder = build_tiny_tokenizer(tmp_path)
    (folder / "tokenizer_config.json").write_text("{}")
    with pytest.raises(PolicyError, match="chat_template"):
        ChatTokenizer.from_dir(folder)
    with pytest.raises(PolicyError, match="cannot load"):
        ChatTokenizer.from_dir(tmp_path / "nope")
