"""ChatTokenizer.from_dir on the folder layouts current Hugging Face models ship.

The chat template may be ``chat_template.jinja`` (what transformers writes on
``save_pretrained``), ``"chat_template"`` in ``tokenizer_config.json`` (the older layout) or
``chat_template.json`` (older processor layout); each is loaded and renders the same ids.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gymux.errors import PolicyError
from gymux.messages import Message
from gymux.policies.tokens import ChatTokenizer, TokenLedger

from doubles.sglang_double import CHATML_TEMPLATE, build_tiny_tokenizer
from doubles.tiny_model import hf_chat_template_ids, save_pretrained_tokenizer, transformers_python
from doubles.vllm_server import vllm_venv

MESSAGES = [
    Message(role="user", content="Walk the maze."),
    Message(role="assistant", content="OK"),
    Message(role="user", content="The goal is at position (1, 2)."),
]
#: A template that differs from the ChatML one (to see which file won).
OTHER_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}:{{ m['content'] }}<|im_end|>"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def _expected_ids(base: Path, template: str) -> list[int]:
    tok = ChatTokenizer.from_dir(base)
    text = ChatTokenizer(tok.tokenizer, template, eos_token="<|im_end|>").render(
        MESSAGES, add_generation_prompt=True
    )
    return tok.encode(text)


def _layout(base: Path, dst: Path, *, config_template: object = None) -> Path:
    """A copy of ``base`` whose tokenizer_config.json holds ``config_template`` (or none)."""
    dst.mkdir()
    shutil.copy(base / "tokenizer.json", dst / "tokenizer.json")
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template")
    if config_template is not None:
        config["chat_template"] = config_template
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return dst


def _render_ids(folder: Path) -> list[int]:
    ledger = TokenLedger(ChatTokenizer.from_dir(folder))
    return ledger.prompt_for(MESSAGES)


def test_template_in_tokenizer_config(base: Path) -> None:
    assert _render_ids(base) == _expected_ids(base, CHATML_TEMPLATE)


def test_template_in_chat_template_jinja(base: Path, tmp_path: Path) -> None:
    folder = _layout(base, tmp_path / "jinja")
    (folder / "chat_template.jinja").write_text(CHATML_TEMPLATE)
    assert _render_ids(folder) == _expected_ids(base, CHATML_TEMPLATE)


def test_template_in_chat_template_json(base: Path, tmp_path: Path) -> None:
    folder = _layout(base, tmp_path / "json")
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": CHATML_TEMPLATE}))
    assert _render_ids(folder) == _expected_ids(base, CHATML_TEMPLATE)


def test_named_templates_use_default(base: Path, tmp_path: Path) -> None:
    named = [
        {"name": "tool_use", "template": OTHER_TEMPLATE},
        {"name": "default", "template": CHATML_TEMPLATE},
    ]
    folder = _layout(base, tmp_path / "named", config_template=named)
    assert _render_ids(folder) == _expected_ids(base, CHATML_TEMPLATE)


def test_jinja_file_wins_over_config_and_json(base: Path, tmp_path: Path) -> None:
    """As in transformers: chat_template.jinja overrides tokenizer_config.json's template,
    which overrides the processor's chat_template.json."""
    folder = _layout(base, tmp_path / "all", config_template=CHATML_TEMPLATE)
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": CHATML_TEMPLATE}))
    (folder / "chat_template.jinja").write_text(OTHER_TEMPLATE)
    assert _render_ids(folder) == _expected_ids(base, OTHER_TEMPLATE)
    (folder / "chat_template.jinja").unlink()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": OTHER_TEMPLATE}))
    assert _render_ids(folder) == _expected_ids(base, CHATML_TEMPLATE)


def test_eos_from_special_tokens_map(base: Path, tmp_path: Path) -> None:
    folder = _layout(base, tmp_path / "stm", config_template=CHATML_TEMPLATE)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("eos_token")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    eos = {"content": "<|im_end|>", "lstrip": False, "normalized": False}
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": eos}))
    tok = ChatTokenizer.from_dir(folder)
    assert tok.eos_token == "<|im_end|>"
    assert tok.eos_id == tok.tokenizer.token_to_id("<|im_end|>")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "no chat template"),
        ({"chat_template.json": "{not json"}, "is not valid JSON"),
        ({"chat_template.json": "[1, 2]"}, "is not a JSON object"),
        ({"chat_template.jinja": "   \n"}, "no chat template"),
    ],
    ids=["none", "bad-json", "json-not-object", "empty-jinja"],
)
def test_missing_or_broken_template_is_one_clear_error(
    base: Path, tmp_path: Path, files: dict[str, str], message: str
) -> None:
    folder = _layout(base, tmp_path / "bad")
    for name, text in files.items():
        (folder / name).write_text(text)
    with pytest.raises(PolicyError, match=message) as raised:
        ChatTokenizer.from_dir(folder)
    assert str(folder) in str(raised.value)


def test_no_tokenizer_json(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"no tokenizer\.json"):
        ChatTokenizer.from_dir(tmp_path)


def test_folder_written_by_save_pretrained(base: Path, tmp_path: Path) -> None:
    """transformers' own save_pretrained layout (chat_template.jinja beside a
    tokenizer_config.json without the template) loads and renders exactly what
    transformers' apply_chat_template renders."""
    venv = vllm_venv()
    python = transformers_python(venv / "bin" / "python" if venv else None)
    if python is None:
        pytest.skip("needs transformers (pip install 'transformers<5.20') or the vLLM venv")
    folder = save_pretrained_tokenizer(base, tmp_path / "saved", python=python)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert "chat_template" not in config  # the layout under test
    assert (folder / "chat_template.jinja").read_text() == CHATML_TEMPLATE
    assert _render_ids(folder) == _expected_ids(base, CHATML_TEMPLATE)
    assert ChatTokenizer.from_dir(folder).eos_token == "<|im_end|>"
    as_dicts = [{"role": m.role, "content": m.content} for m in MESSAGES]
    assert _render_ids(folder) == hf_chat_template_ids(folder, as_dicts, python=python)
