"""AgentEvol's learn step through TRL's ``SFTTrainer`` (``[train] trainer = "trl"``).

The same contract as :func:`gymux.evolve.learn.finetune` (from the base model, loss on the
agent's tokens only, checkpoint written under a temporary name and renamed when complete),
with TRL (``trl==1.16``, extra ``train``: ``pip install 'gymux[hf,train]'``) doing the
training. The examples go in already tokenized, as a dataset of ``input_ids`` and
``assistant_masks`` (the loss mask), so TRL neither re-renders nor re-tokenizes them and
trains exactly on what the policy generated; its collator turns every position whose mask
is 0 into an ignored label. One sequence per micro-batch (no padding), gradient
accumulation so that an optimizer step sees about ``batch_tokens`` tokens, constant
learning rate after ``warmup_steps`` of linear warm-up, AdamW, gradient clipping; TRL logs
the loss of every step (``on_step``).

CPU-heavy: call it from a worker thread or process, never on an event loop.
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gymux.evolve.config import TrainSettings
from gymux.evolve.data import Example
from gymux.evolve.learn import LearnResult, LearnStopped, load_base, write_checkpoint

__all__ = ["finetune_trl"]


def _accumulation(examples: Sequence[Example], batch_tokens: int) -> int:
    """Micro-batches (one sequence each) per optimizer step: about ``batch_tokens`` tokens."""
    mean = sum(len(e.ids) for e in examples) / max(1, len(examples))
    return max(1, round(batch_tokens / max(1.0, mean)))


def finetune_trl(
    base: Path,
    examples: Sequence[Example],
    out: Path,
    settings: TrainSettings,
    *,
    on_step: Callable[[int, float], None] | None = None,
    stop: threading.Event | None = None,
) -> LearnResult:
    """Fine-tune ``base`` on ``examples`` with TRL's SFTTrainer and write ``out``."""
    import datasets
    import torch
    import transformers
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    hf_logging: Any = transformers.utils.logging
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    started = time.perf_counter()
    model = load_base(base, settings)
    tokenizer: Any = transformers.AutoTokenizer.from_pretrained(str(base))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    data = datasets.Dataset.from_dict(
        {
            "input_ids": [list(e.ids) for e in examples],
            "assistant_masks": [list(e.mask) for e in examples],
        }
    )
    accumulation = _accumulation(examples, settings.batch_tokens)
    losses: list[float] = []
    stopped = False

    class _Steps(transformers.TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs and len(losses) < state.global_step:
                losses.append(float(logs["loss"]))
                if on_step is not None:
                    on_step(state.global_step, losses[-1])

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            nonlocal stopped
            if stop is not None and stop.is_set():
                stopped = True
                control.should_training_stop = True

    with tempfile.TemporaryDirectory(prefix="gymux-trl-") as scratch:
        config = SFTConfig(
            output_dir=scratch,
            per_device_train_batch_size=1,
            gradient_accumulation_steps=accumulation,
            num_train_epochs=settings.epochs,
            max_steps=settings.max_steps or -1,
            learning_rate=settings.learning_rate,
            weight_decay=settings.weight_decay,
            warmup_steps=settings.warmup_steps,
            lr_scheduler_type="constant_with_warmup",
            max_grad_norm=settings.grad_clip,
            max_length=settings.max_length,
            seed=settings.seed,
            data_seed=settings.seed,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            use_cpu=not torch.cuda.is_available(),
            bf16=False,
            fp16=False,
        )
        trainer: Any = SFTTrainer(
            model=model,
            args=config,
            train_dataset=data,
            processing_class=tokenizer,
            callbacks=[_Steps()],
        )
        trainer.remove_callback(transformers.PrinterCallback)  # on_step reports each step
        trainer.train()
        if stopped:
            raise LearnStopped("learn step stopped")
        steps = int(trainer.state.global_step)
        write_checkpoint(trainer.model, base, out)
    # Target tokens seen: those of the data per epoch (in proportion to the steps taken when
    # max_steps cut the run short; TRL's sampler order is its own).
    planned = math.ceil(len(examples) / accumulation) * settings.epochs
    per_epoch = sum(sum(e.mask[1:]) for e in examples)
    targets = round(per_epoch * settings.epochs * min(1.0, steps / max(1, planned)))
    return LearnResult(
        examples=len(examples),
        target_tokens=targets,
        steps=steps,
        losses=losses,
        wall_s=time.perf_counter() - started,
    )
