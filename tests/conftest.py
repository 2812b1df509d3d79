"""Shared fixtures: the anyio backend and helpers that run the ``gymux`` CLI for real."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import structlog

from doubles.procs import clean_env


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fresh_structlog() -> Iterator[None]:
    """``gymux`` CLI commands configure structlog for the current sys.stderr (a capture
    object when run in-process); start the test from structlog's defaults, as a new
    process would, and leave them behind."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


RunGymux = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def child_env() -> Callable[..., dict[str, str]]:
    """``child_env(**extra)``: an environment for subprocesses (see :func:`clean_env`)."""
    return clean_env


@pytest.fixture
def run_gymux(tmp_path: Path) -> RunGymux:
    """Run ``python -m gymux ARGS`` in a real subprocess (cwd: a temporary folder)."""

    def run(
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        timeout: float = 60,
        python: str = sys.executable,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [python, "-m", "gymux", *args],
            cwd=cwd or tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run
