"""SGLang's own HTTP schema for the SGLang stand-in: ``sglang/api/v1/api_types.py``.

That file is SGLang's generated ``/generate`` contract (``GenerateRequest``,
``SamplingParams``, ``GenerateResponse``, ``GenerateMetaInfo``, ``LogprobEntry``,
``FinishAbort``, ``GenerateStreamError``, ``AbortRequest``, ``ModelCard``,
``GetModelInfoResponse``, ``GetServerInfoResponse``, ``JsonContractError``); the Python
server's gate (``sglang.srt.entrypoints.api_contract.generate_contract_error``) is
``GenerateRequest.from_json_value`` on the parsed body. It needs only msgspec.

:func:`fetch` takes it from the pinned wheel on PyPI once (``pip download --no-deps
sglang==0.5.23``, 39 MB), keeps only that file under ``~/.cache/gymux-tests/`` and loads
it by path; nothing of SGLang is committed. :func:`cached` loads it only when it is already
there (no network). :func:`require` is for tests: it skips with the reason when PyPI cannot
be reached, except in CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from types import ModuleType

SGLANG_VERSION = "0.5.23"
MEMBER = "sglang/api/v1/api_types.py"
CACHE = Path.home() / ".cache" / "gymux-tests" / f"sglang-{SGLANG_VERSION}"
SCHEMA_FILE = CACHE / "api_types.py"

_loaded: ModuleType | None = None


class SchemaUnavailable(RuntimeError):
    """The schema file could not be fetched."""


def load(path: Path = SCHEMA_FILE) -> ModuleType:
    """Load ``api_types.py`` from ``path`` as a module of its own."""
    global _loaded
    if _loaded is not None and Path(_loaded.__file__ or "") == path:
        return _loaded
    name = "gymux_tests_sglang_api_types"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # msgspec resolves the Structs' annotations through it
    spec.loader.exec_module(module)
    _loaded = module
    return module


def cached() -> ModuleType | None:
    """The schema when it was fetched before, else ``None`` (never downloads)."""
    return load() if SCHEMA_FILE.is_file() else None


def fetch(timeout_s: float = 600.0) -> ModuleType:
    """The schema, downloading the pinned wheel once; :class:`SchemaUnavailable` if not."""
    if not SCHEMA_FILE.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            pin = f"sglang=={SGLANG_VERSION}"
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--disable-pip-version-check", pin, "-d", tmp]  # fmt: skip
            try:
                done = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=timeout_s, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise SchemaUnavailable(f"pip download sglang=={SGLANG_VERSION}: {exc}") from None
            wheels = sorted(Path(tmp).glob("sglang-*.whl"))
            if done.returncode != 0 or not wheels:
                last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
                raise SchemaUnavailable(f"pip download sglang=={SGLANG_VERSION} failed: {last}")
            with zipfile.ZipFile(wheels[0]) as wheel:
                try:
                    data = wheel.read(MEMBER)
                except KeyError:
                    raise SchemaUnavailable(f"{wheels[0].name} has no {MEMBER}") from None
            part = Path(tmp) / "api_types.py"
            part.write_bytes(data)
            os.replace(part, SCHEMA_FILE)
    return load()


def require() -> ModuleType:
    """For tests: the schema, or skip (fail under ``CI=true``) saying why it is missing."""
    import pytest

    try:
        return fetch()
    except SchemaUnavailable as exc:
        reason = f"SGLang's schema (sglang=={SGLANG_VERSION} {MEMBER}) is unavailable: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
