"""Fixtures shared by the SGLang policy tests."""

from __future__ import annotations

import pytest

from gymux.policies.tokens import ChatTokenizer

from doubles.sglang_double import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> ChatTokenizer:
    """The tiny chat tokenizer the SGLang test double serves (needs ``tokenizers``)."""
    return ChatTokenizer.from_dir(build_tiny_tokenizer(tmp_path_factory.mktemp("tok")))
