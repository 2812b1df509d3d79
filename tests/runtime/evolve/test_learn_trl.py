"""The learn step through TRL's SFTTrainer (``[train] trainer = "trl"``): the same loss as
gymux's own loop on the same tokenized example, the loss mask honoured, a complete
checkpoint, and a stop that writes none."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import msgspec
import pytest

pytest.importorskip("trl")
pytest.importorskip("torch")

from gymux.evolve.config import TrainSettings
from gymux.evolve.data import Example
from gymux.evolve.learn import LearnStopped, finetune
from gymux.evolve.learn_trl import finetune_trl

from doubles.tiny_hf_model import make_tiny_hf_model


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf_model(tmp_path_factory.mktemp("tiny"))


def _example(seed: int, n: int = 60) -> Example:
    rng = random.Random(seed)
    ids = [rng.randint(5, 200) for _ in range(n)]
    return Example(ids=ids, mask=[0] * (n // 2) + [1] * (n - n // 2))


def test_first_step_loss_equals_gymux_loop_and_follows_the_mask(base: Path, tmp_path: Path) -> None:
    example = _example(1)
    flipped = Example(ids=example.ids, mask=[1 - b for b in example.mask])
    settings = TrainSettings(max_steps=1, batch_tokens=64, learning_rate=1e-4, threads=1)
    ours = finetune(base, [example], tmp_path / "torch", settings).losses
    trl = finetune_trl(base, [example], tmp_path / "trl", settings)
    # One sequence, initial weights: both compute the mean cross-entropy over the masked
    # positions, so the first step's loss is the same number.
    assert trl.steps == 1 and trl.losses[0] == pytest.approx(ours[0], rel=1e-4)
    assert trl.target_tokens == sum(example.mask[1:])
    other = finetune_trl(base, [flipped], tmp_path / "flipped", settings).losses
    mine = finetune(base, [flipped], tmp_path / "flipped-torch", settings).losses
    assert other[0] == pytest.approx(mine[0], rel=1e-4)
    assert other[0] != pytest.approx(trl.losses[0], rel=1e-3)  # the mask chose the targets


def test_checkpoint_is_complete_and_steps_are_reported(base: Path, tmp_path: Path) -> None:
    examples = [_example(i, 40 + i) for i in range(6)]
    seen: list[tuple[int, float]] = []
    settings = TrainSettings(epochs=2, batch_tokens=100, learning_rate=1e-3, threads=1)
    result = finetune_trl(
        base, examples, tmp_path / "ckpt", settings, on_step=lambda s, x: seen.append((s, x))
    )
    assert result.steps == len(result.losses) == len(seen) > 1
    assert [s for s, _ in seen] == list(range(1, result.steps + 1))
    assert all(0 < loss < 100 for loss in result.losses)
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not (tmp_path / "ckpt.tmp").exists()
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(str(tmp_path / "ckpt")) is not None


def test_stop_writes_no_checkpoint(base: Path, tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(LearnStopped):
        finetune_trl(base, [_example(2)], tmp_path / "ckpt", TrainSettings(threads=1), stop=stop)
    assert not (tmp_path / "ckpt").exists()


def test_trainer_setting_is_validated() -> None:
    assert msgspec.convert({"trainer": "trl"}, TrainSettings).trainer == "trl"
    with pytest.raises(msgspec.ValidationError, match=r"\$\.trainer"):
        msgspec.convert({"trainer": "deepspeed"}, TrainSettings)
