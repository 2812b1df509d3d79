"""The rollout bench's verdicts split a turn's client CPU by the reference clients measured
in the same run (``floor``: the wire work alone; ``policy_only``: the policy client without
the Runtime)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_rollout_bench_splits_a_turn_by_the_reference_rows_of_the_same_run() -> None:
    """``single``'s CPU per turn is split by the ``floor`` and ``policy_only`` rows measured
    beside it; another strategy only against the floor (policy_only drives ``single``)."""
    spec = importlib.util.spec_from_file_location("_rollout_bench", ROOT / "bench" / "rollout.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = [
        {"client": client, "scenario": "scale", "cpu_us_per_turn": us, "busy": 0.99}
        | {"episodes": 4096, "prompt_tokens": 2200}
        for client, us in [
            ("naive", 300.0),
            ("floor", 100.0),
            ("policy_only", 160.0),
            ("single", 210.0),
            ("batch_stream", 500.0),
        ]
    ]
    lines = bench._verdicts(rows)
    assert not any(line.split()[1] in ("naive:", "floor:", "policy_only:") for line in lines)
    single = next(line for line in lines if "single: client CPU 210" in line)
    assert single.startswith("FAIL") and single.endswith(
        "of it: the wire work alone (floor) 100, the policy client +60, the Runtime +50 us"
    )
    other = next(line for line in lines if "batch_stream: client CPU 500" in line)
    assert other.endswith("of it: the wire work alone (floor) 100, gymux +400 us")
    without = bench._verdicts([r for r in rows if r["client"] not in ("floor", "policy_only")])
    assert all("of it" not in line for line in without)
    # Below the floor (batching amortizes the wire work per turn), the difference is signed.
    cheap = {**rows[0], "client": "batch", "cpu_us_per_turn": 90.0}
    line = next(x for x in bench._verdicts([*rows, cheap]) if "batch: client CPU 90" in x)
    assert line.startswith("PASS") and line.endswith("(floor) 100, gymux -10 us")


def test_rollout_bench_says_when_no_surplus_was_in_flight() -> None:
    """An over-sampling row with aborts is judged by their latency; one with none (a batch
    strategy finishes a group's members together) says so instead of judging a NaN."""
    spec = importlib.util.spec_from_file_location("_rollout_bench", ROOT / "bench" / "rollout.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    nan = float("nan")
    base = {"scenario": "oversample", "oversample": 4}
    rows = [
        {**base, "client": "single", "aborts": 700, "abort_p50_ms": 6.0, "abort_p99_ms": 30.0},
        {**base, "client": "batch", "aborts": 0, "abort_p50_ms": nan, "abort_p99_ms": nan},
        {
            **base,
            "client": "batch_stream",
            "aborts": 9,
            "abort_p50_ms": 50.0,
            "abort_p99_ms": 150.0,
        },
    ]
    lines = bench._verdicts(rows)
    assert lines[0].startswith("PASS single: group complete") and "over 700 aborts" in lines[0]
    assert lines[1] == (
        "N/A  batch: no surplus request was in flight when its group completed "
        "(0 aborts, oversample=4): nothing to free"
    )
    assert lines[2].startswith("FAIL batch_stream: group complete")
