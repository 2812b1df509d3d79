"""Running a scenario script inside new network and pid namespaces (only ``lo`` up; the
pid namespace's end kills whatever the scenario leaves behind), as the Ray cluster tests
do: Ray advertises the machine's interface address unless it has none."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from doubles.procs import clean_env

__all__ = ["UNSHARE", "run_in_namespaces"]

#: A network namespace with only ``lo``, and a pid namespace whose end kills every process
#: the scenario leaves behind.
UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount-proc"]


def _problem(modules: Mapping[str, str]) -> str | None:
    """Why the scenario cannot run here (``modules``: module -> the reason if missing)."""
    for module, reason in modules.items():
        if importlib.util.find_spec(module) is None:
            return reason
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2)"
    if os.geteuid() != 0:
        return "needs root for a network namespace"
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"cannot create namespaces here: {probe.stderr.strip()[:200]}"
    return None


def run_in_namespaces(
    argv: Sequence[str],
    out: Path,
    *,
    what: str,
    modules: Mapping[str, str],
    cwd: Path | None = None,
) -> None:
    """Run ``argv`` in the namespaces; fail the test with its stderr and the tails of the
    ``*.log`` files it wrote to ``out`` if it fails. Skipped where it cannot run, except
    under ``CI=true``, where that fails the test."""
    reason = _problem(modules)
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: the Ray cluster tests must run, but {reason}")
        pytest.skip(reason)
    proc = subprocess.run(
        [*UNSHARE, *argv],
        capture_output=True,
        text=True,
        timeout=450,
        env=clean_env(),
        cwd=cwd,
    )
    if proc.returncode != 0:
        logs = "".join(
            f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(out.glob("*.log"))
        )
        pytest.fail(f"{what} failed ({proc.returncode}):\n{proc.stderr[-6000:]}{logs}")
