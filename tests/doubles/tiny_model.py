"""A tiny random-initialised Llama model folder, made at test time (no downloads).

:func:`build_tiny_model` writes an ordinary Hugging Face model folder: the locally trained
byte-level BPE tokenizer of :func:`doubles.sglang_double.build_tiny_tokenizer` (ChatML
template, EOS ``<|im_end|>``) plus ``config.json`` and ``model.safetensors`` of a 2-layer
Llama (hidden 64, about 117k parameters) written by ``transformers``' ``save_pretrained``.
Its output is gibberish, but a real server (vLLM) serves it with real tokenization,
batching, logprobs and limits.

``transformers`` and ``torch`` may live in another interpreter than the test's (the vLLM
venv has both): the model part runs as ``python -c`` in the interpreter given.
:func:`transformers_python` picks one that has ``transformers``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from doubles.procs import clean_env
from doubles.sglang_double import build_tiny_tokenizer

__all__ = [
    "build_tiny_model",
    "hf_chat_template_ids",
    "save_pretrained_tokenizer",
    "transformers_python",
]

# Run in a child interpreter: argv[1] = the folder (holding tokenizer.json already).
_MODEL_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

folder = Path(sys.argv[1])
tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
eos = tok.token_to_id("<|im_end|>")
bos = tok.token_to_id("<|endoftext|>")
config = LlamaConfig(
    vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
    num_hidden_layers=2, num_attention_heads=1, num_key_value_heads=1, head_dim=64,
    max_position_embeddings=int(sys.argv[2]), tie_word_embeddings=True,
    bos_token_id=bos, eos_token_id=eos, pad_token_id=bos, torch_dtype="float32",
)
torch.manual_seed(int(sys.argv[3]))
model = LlamaForCausalLM(config)
model.save_pretrained(str(folder), safe_serialization=True)
"""

# argv[1] = a tokenizer folder, argv[2] = the output folder.
_SAVE_TOKENIZER_SCRIPT = """
import json, sys
from pathlib import Path
from transformers import PreTrainedTokenizerFast

src, dst = Path(sys.argv[1]), sys.argv[2]
config = json.loads((src / "tokenizer_config.json").read_text())
tok = PreTrainedTokenizerFast(
    tokenizer_file=str(src / "tokenizer.json"), eos_token=config["eos_token"]
)
tok.chat_template = config["chat_template"]
tok.save_pretrained(dst)
"""


# argv[1] = a model folder, argv[2] = JSON messages; prints the ids as JSON.
_APPLY_TEMPLATE_SCRIPT = """
import json, sys
from transformers import AutoTokenizer

tok = AutoTokenizer.from_pretrained(sys.argv[1])
ids = tok.apply_chat_template(json.loads(sys.argv[2]), add_generation_prompt=True, tokenize=True)
if isinstance(ids, dict) or hasattr(ids, "keys"):
    ids = ids["input_ids"]
print(json.dumps([int(i) for i in ids]))
"""


def transformers_python(*fallbacks: str | Path | None) -> str | None:
    """An interpreter that can import ``transformers``: this one, else the first fallback
    that exists (e.g. the vLLM venv's python), else ``None``."""
    if importlib.util.find_spec("transformers") is not None:
        return sys.executable
    for candidate in fallbacks:
        if candidate is not None and Path(candidate).is_file():
            return str(candidate)
    return None


def _run(python: str, script: str, *args: str) -> str:
    proc = subprocess.run(
        [python, "-c", script, *args],
        env=clean_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{python} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def build_tiny_model(
    folder: Path, *, python: str, max_positions: int = 2048, seed: int = 0
) -> Path:
    """Write the tiny tokenizer and a random tiny Llama into ``folder`` (see module doc)."""
    build_tiny_tokenizer(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    # What transformers (and so vLLM) needs to load tokenizer.json as a fast tokenizer.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config))
    _run(python, _MODEL_SCRIPT, str(folder), str(max_positions), str(seed))
    return folder


def save_pretrained_tokenizer(src: Path, dst: Path, *, python: str) -> Path:
    """``PreTrainedTokenizerFast(...).save_pretrained(dst)`` of the tiny tokenizer at ``src``
    (with its chat template), run by ``python``: the folder layout transformers writes."""
    _run(python, _SAVE_TOKENIZER_SCRIPT, str(src), str(dst))
    return dst


def hf_chat_template_ids(folder: Path, messages: list[dict[str, str]], *, python: str) -> list[int]:
    """What transformers' ``AutoTokenizer.apply_chat_template`` makes of ``messages`` (with
    the generation prompt) for the tokenizer in ``folder``."""
    out = _run(python, _APPLY_TEMPLATE_SCRIPT, str(folder), json.dumps(messages))
    ids: list[int] = json.loads(out.strip().splitlines()[-1])
    return ids
