"""Bench scripts refuse bad arguments with one line and exit status 2 (argparse), before
they start any server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_rollout_bench_refuses_a_repeat_below_one() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "rollout.py"), "--repeat", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].endswith("--repeat must be at least 1, got 0")
