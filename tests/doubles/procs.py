"""Child processes of the tests: the repository root and a clean environment for them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["REPO_ROOT", "clean_env", "last_json", "reaped", "run_child", "run_python"]

#: The repository root (the folder holding pyproject.toml).
REPO_ROOT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without variables that could make a child import the wrong code."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH"}
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_child(
    cmd: Sequence[str],
    *,
    input: str | None = None,
    cwd: Path = REPO_ROOT,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run CMD to the end (text, output captured, no check), by default in the repository
    root with :func:`clean_env`."""
    return subprocess.run(
        list(cmd),
        input=input,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env() if env is None else env,
        timeout=timeout,
        check=False,
    )


def run_python(
    code: str, *, input: str | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c CODE`` in a child (see :func:`run_child`)."""
    return run_child([sys.executable, "-c", code], input=input, timeout=timeout)


def last_json(proc: subprocess.CompletedProcess[str], *, tail: int = 3000) -> Any:
    """The JSON on PROC's last stdout line, once PROC has exited 0."""
    assert proc.returncode == 0, proc.stderr[-tail:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@contextmanager
def reaped(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """Leaves no child behind: PROC, if still running when the block ends, is killed and
    reaped."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
