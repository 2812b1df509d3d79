"""Child processes of the tests: the repository root and a clean environment for them."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["REPO_ROOT", "clean_env"]

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
