"""AgentEvol's learn step: supervised fine-tuning from the base model, in plain torch.

Each learn stage starts from the **base** model (AgentGym's recipe: not from the previous
iteration) and trains on the expert set plus every trajectory kept so far. The loss is the
mean cross-entropy over the tokens whose loss-mask bit is 1 (the agent's own tokens): the
prompt, the instructions and the observations are context, never targets.

Sequences go through the model one at a time (no padding), gradients accumulate until an
optimizer step has seen ``batch_tokens`` tokens, and the step's loss is normalised by the
number of target tokens it saw. AdamW, linear warm-up, gradient clipping. The checkpoint is
written to ``<out>.tmp`` and renamed into place once complete (a killed learn step leaves no
half checkpoint behind), together with the base folder's tokenizer and chat template.

CPU-heavy: call it from a worker thread or process, never on an event loop.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from gymux.evolve.config import TrainSettings
from gymux.evolve.data import Example

__all__ = [
    "TOKENIZER_FILES",
    "LearnResult",
    "LearnStopped",
    "copy_tokenizer",
    "finetune",
    "load_base",
    "write_checkpoint",
]

#: What a model folder needs beside its weights to be loaded by the ``hf`` policy.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
)


class LearnStopped(Exception):
    """``stop`` was set: the learn step ended early and wrote no checkpoint."""


class LearnResult(msgspec.Struct, kw_only=True):
    """What one learn stage did."""

    examples: int
    target_tokens: int
    steps: int
    #: The loss of each optimizer step.
    losses: list[float]
    wall_s: float


def copy_tokenizer(base: Path, out: Path) -> None:
    """The base folder's tokenizer files (those it has) into ``out``."""
    for name in TOKENIZER_FILES:
        src = base / name
        if src.is_file() and not (out / name).exists():
            shutil.copyfile(src, out / name)


def write_checkpoint(model: Any, base: Path, out: Path) -> None:
    """Save ``model`` with ``base``'s tokenizer files as the folder ``out``: written to
    ``<out>.tmp`` and renamed into place once complete (never a half checkpoint)."""
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), safe_serialization=True)
    copy_tokenizer(base, tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def load_base(base: Path, settings: TrainSettings) -> Any:
    """The model folder ``base`` loaded for training in float32, with torch's CPU threads set
    (``settings.threads``, else the CPUs up to 8) and transformers' progress bars off (the
    CLI shows one line per step instead). Shared by both trainers."""
    import torch
    import transformers

    hf_logging: Any = transformers.utils.logging
    hf_logging.disable_progress_bar()
    torch.set_num_threads(settings.threads or min(os.cpu_count() or 1, 8))
    return transformers.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)


def _steps(examples: Sequence[Example], batch_tokens: int) -> list[list[Example]]:
    steps: list[list[Example]] = [[]]
    size = 0
    for example in examples:
        if steps[-1] and size + len(example.ids) > batch_tokens:
            steps.append([])
            size = 0
        steps[-1].append(example)
        size += len(example.ids)
    return [s for s in steps if s]


def finetune(
    base: Path,
    examples: Sequence[Example],
    out: Path,
    settings: TrainSettings,
    *,
    on_step: Callable[[int, float], None] | None = None,
    stop: threading.Event | None = None,
) -> LearnResult:
    """Fine-tune ``base`` on ``examples`` and write the model folder ``out``.

    ``on_step(step, loss)`` after each optimizer step; ``stop`` (checked between steps)
    ends it early with :class:`LearnStopped`.
    """
    import torch

    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    model = load_base(base, settings)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    rng = random.Random(settings.seed)
    losses: list[float] = []
    targets_seen = 0
    step = 0
    for _epoch in range(settings.epochs):
        order = list(examples)
        rng.shuffle(order)
        for batch in _steps(order, settings.batch_tokens):
            if settings.max_steps and step >= settings.max_steps:
                break
            if stop is not None and stop.is_set():
                raise LearnStopped("learn step stopped")
            targets = sum(sum(e.mask[1:]) for e in batch)
            if targets == 0:
                continue
            scale = min(1.0, (step + 1) / settings.warmup_steps) if settings.warmup_steps else 1.0
            for group in optimizer.param_groups:
                group["lr"] = settings.learning_rate * scale
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for example in batch:
                ids = torch.tensor([example.ids], dtype=torch.long)
                weights = torch.tensor(example.mask[1:], dtype=torch.float32)
                logits = model(input_ids=ids).logits[0, :-1].float()
                token_loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
                loss: Any = (token_loss * weights).sum() / targets
                loss.backward()
                total += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            losses.append(total)
            targets_seen += targets
            step += 1
            if on_step is not None:
                on_step(step, total)
    write_checkpoint(model, base, out)
    return LearnResult(
        examples=len(examples),
        target_tokens=targets_seen,
        steps=step,
        losses=losses,
        wall_s=time.perf_counter() - started,
    )
