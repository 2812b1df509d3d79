"""A tiny random-initialised Llama folder for the in-process ``hf`` policy, made at test time.

:func:`make_tiny_hf_model` writes an ordinary Hugging Face model folder in this interpreter
(``transformers`` and ``torch`` must be importable here): the locally trained byte-level BPE
tokenizer of :func:`doubles.sglang_double.build_tiny_tokenizer` (ChatML template, EOS
``<|im_end|>``) plus ``config.json`` and ``model.safetensors`` of a 2-layer Llama (hidden
64, one head, tied embeddings: about 117k parameters). Random weights: the output is
gibberish, but tokenization, templating, batching, the KV cache and logprobs are real.
No downloads; about 0.2 s.
"""

from __future__ import annotations

import json
from pathlib import Path

from doubles.sglang_double import build_tiny_tokenizer

__all__ = ["make_tiny_hf_model", "tiny_evolve_config"]


def make_tiny_hf_model(
    folder: Path, *, max_positions: int = 4096, seed: int = 0, eos_bias: float = 0.0
) -> Path:
    """Write the model folder at ``folder`` and return it.

    ``eos_bias`` is added to the output bias of EOS... there is none in Llama, so instead it
    scales EOS's (tied) embedding row: a large value makes the model stop early, which the
    tests use to get EOS-terminated turns.
    """
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    build_tiny_tokenizer(folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    eos = tok.token_to_id("<|im_end|>")
    bos = tok.token_to_id("<|endoftext|>")
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=bos,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if eos_bias:
        with torch.no_grad():
            model.model.embed_tokens.weight[eos] *= eos_bias
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def tiny_evolve_config(model: Path, *, iterations: int = 1, seed: int = 0) -> str:
    """A ``gymux evolve`` config that runs in seconds on the tiny model (maze only, a few
    tasks per stage, two learn steps): the embedded and the Ray evolve tests share it."""
    return f"""base_model = {json.dumps(str(model))}
iterations = {iterations}
concurrency = 4
seed = {seed}

[[envs]]
id = "maze"

[expert]
tasks = 3

[explore]
tasks = 2

[eval]
tasks = 1

[train]
max_steps = 2
batch_tokens = 1024
threads = 1

[policy]
max_new_tokens = 8
threads = 1
"""
