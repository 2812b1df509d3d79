"""The model policies' Options Structs: msgspec validation, errors that name the field."""

from __future__ import annotations

import msgspec
import pytest

from gymux.env_plugins.registry import default_registry
from gymux.errors import PolicyOptionsError
from gymux.policies.openai import OpenAICompatPolicy
from gymux.policies.options import OpenAIOptions, SGLangOptions, validate_options
from gymux.policies.registry import OPENAI_OPTIONS, SGLANG_OPTIONS, make_policy


def maze():
    return default_registry().get("maze")


def test_convert_names_the_field():
    with pytest.raises(msgspec.ValidationError, match=r"at `\$\.max_retries`"):
        msgspec.convert({"base_url": "http://x", "model": "m", "max_retries": -1}, OpenAIOptions)
    with pytest.raises(msgspec.ValidationError, match="unknown field `bogus`"):
        msgspec.convert({"urls": ["http://x"], "bogus": 1}, SGLangOptions)
    with pytest.raises(msgspec.ValidationError, match=r"at `\$\.urls`"):
        msgspec.convert({"urls": []}, SGLangOptions)


def test_known_options_are_the_struct_fields():
    assert {"base_url", "model", "max_retries", "logprobs"} <= OPENAI_OPTIONS
    assert {"urls", "tokenizer_path", "strategy", "max_new_tokens"} <= SGLANG_OPTIONS


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_retries": 0.5}, "max_retries"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"request_timeout_s": 0}, "request_timeout_s"),
        ({"temperature": "hot"}, "temperature"),
        ({"stop": "x"}, "stop"),
    ],
)
def test_make_policy_openai_invalid_option_names_the_field(options, field):
    opts = {"base_url": "http://127.0.0.1:9", "model": "m", **options}
    with pytest.raises(PolicyOptionsError, match=rf"policy 'openai'.*\$\.{field}"):
        make_policy("openai", maze(), options=opts)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"strategy": "bogus"}, "strategy"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"retries": -1}, "retries"),
        # Server URLs are http:// or https:// with a host (the HTTP client speaks nothing else).
        ({"urls": ["ftp://127.0.0.1:9"]}, "urls"),
        ({"urls": ["127.0.0.1:9"]}, "urls"),
        ({"worker_urls": ["http://"]}, "worker_urls"),
    ],
)
def test_make_policy_sglang_invalid_option_names_the_field(options, field):
    opts = {"urls": ["http://127.0.0.1:9"], "tokenizer_path": "/nowhere", **options}
    with pytest.raises(PolicyOptionsError, match=rf"policy 'sglang'.*\$\.{field}"):
        make_policy("sglang", maze(), options=opts)


def test_make_policy_sglang_without_a_tokenizer_folder_is_an_options_error(tmp_path):
    with pytest.raises(PolicyOptionsError, match="policy 'sglang'"):
        make_policy("sglang", maze(), options={"urls": ["http://a"], "tokenizer": str(tmp_path)})


def test_policy_keywords_are_validated_the_same_way():
    with pytest.raises(PolicyOptionsError, match=r"\$\.max_concurrency"):
        OpenAICompatPolicy(base_url="http://x", model="m", max_concurrency=0)
    with pytest.raises(PolicyOptionsError, match="unknown field `bogus`"):
        OpenAICompatPolicy(base_url="http://x", model="m", bogus=1)
    with pytest.raises(PolicyOptionsError, match="base_url must start with http"):
        OpenAICompatPolicy(base_url="x", model="m")
    with pytest.raises(TypeError, match="not both"):
        OpenAICompatPolicy(options=OpenAIOptions(base_url="http://x", model="m"), model="n")


def test_options_struct_is_accepted_and_checked():
    policy = OpenAICompatPolicy(
        options=OpenAIOptions(base_url="http://x/v1", model="m", max_tokens=5, name="mine")
    )
    assert policy.url == "http://x/v1/chat/completions" and policy.name == "mine"
    assert policy.options.max_tokens == 5
    with pytest.raises(PolicyOptionsError, match=r"\$\.max_tokens"):
        OpenAICompatPolicy(options=OpenAIOptions(base_url="http://x", model="m", max_tokens=0))
    with pytest.raises(PolicyOptionsError, match=r"\$\.backoff_s"):
        validate_options(SGLangOptions(urls=["http://x"], backoff_s=-1.0))
