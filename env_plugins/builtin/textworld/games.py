"""Generation and on-disk cache of TextWorld cooking games (used by ``textworld_env``).

A game is made by TextWorld's own ``tw-make tw-cooking`` command, run as a real
subprocess with ``PYTHONHASHSEED=0``: TextWorld iterates over Python sets while building
a game, so without a fixed hash seed the same ``--seed`` gives differently ordered rules
and grammar on every run. With it, and with the output written under a fixed relative name,
the same parameters give byte-identical game files on every run and machine (for a given
TextWorld version and CPython string-hash algorithm, both part of the cache key).

Cache layout: one directory per game under the cache root
(``$GYMUX_CACHE_DIR/textworld``, else ``$XDG_CACHE_HOME/gymux/textworld``, else
``~/.cache/gymux/textworld``)::

    <root>/<key>/game.z8      the compiled game (Z-machine)
    <root>/<key>/game.json    TextWorld's game description (needed for admissible commands)
    <root>/<key>/meta.json    ours: key, parameters, walkthrough, sha256 of both files

``meta.json`` is written last and records the sha256 of the two game files, so an entry is
valid only when it parses, names the expected key and both files match their hashes. A
generator writes into a private temporary directory and renames it into place (atomic on
one file system); a per-key ``flock`` (on ``<root>/.locks/<key>.lock``) makes concurrent
generators of the same key (threads or processes) wait for the first one instead of
repeating its work, and a lost rename race (a file system without locks) simply keeps the
winner's entry. A corrupt or partial entry is moved aside and regenerated.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Literal

import msgspec
import structlog

from gymux.env_plugins.protocol import EnvError

__all__ = [
    "CACHE_FORMAT",
    "INSTALL_HINT",
    "TEXTWORLD_VERSION",
    "CookingParams",
    "GameEntry",
    "GameMeta",
    "cache_root",
    "ensure_game",
    "generation_count",
    "load_entry",
]

log = structlog.get_logger(__name__)

#: The TextWorld release the task ids and cache keys are defined for.
TEXTWORLD_VERSION = "1.7.0"
#: Bump when the layout or content of a cache entry changes.
CACHE_FORMAT = 1
INSTALL_HINT = "pip install 'gymux[textworld]'"
#: Upper bound for one ``tw-make`` run (a game takes seconds; this only catches hangs).
GENERATION_TIMEOUT_S = 600.0

_GAME = "game.z8"
_GAME_JSON = "game.json"
_META = "meta.json"

_counter_lock = threading.Lock()
_generations = 0


class CookingParams(msgspec.Struct, frozen=True, kw_only=True):
    """The ``tw-make tw-cooking`` settings of one game."""

    #: Food distribution of TextWorld's cooking challenge (``--split``).
    split: Literal["train", "valid", "test"]
    #: Ingredients in the recipe (``--recipe``) and how many must be fetched (``--take``).
    recipe: int
    take: int
    #: Number of rooms: 1, 6, 9 or 12 (``--go``).
    go: int
    #: Containers and doors start closed (``--open``), ingredients must be cooked / cut.
    open: bool = False
    cook: bool = False
    cut: bool = False
    seed: int = 0

    def tw_make_args(self) -> list[str]:
        args = [
            "tw-cooking",
            "--recipe",
            str(self.recipe),
            "--take",
            str(self.take),
            "--go",
            str(self.go),
            "--split",
            self.split,
            "--seed",
            str(self.seed),
        ]
        args += [flag for flag, on in (("--open", self.open), ("--cook", self.cook)) if on]
        if self.cut:
            args.append("--cut")
        return args

    def key(self) -> str:
        """The cache key: TextWorld version, hash algorithm, cache format and settings."""
        skills = "".join(s for s, on in (("o", self.open), ("k", self.cook), ("c", self.cut)) if on)
        return (
            f"tw{TEXTWORLD_VERSION}-{sys.hash_info.algorithm}-f{CACHE_FORMAT}-cooking-"
            f"{self.split}-r{self.recipe}t{self.take}g{self.go}{'-' + skills if skills else ''}"
            f"-s{self.seed}"
        )


class GameMeta(msgspec.Struct, frozen=True, kw_only=True):
    """What ``meta.json`` holds."""

    format: int
    key: str
    textworld_version: str
    params: CookingParams
    #: The game's walkthrough (TextWorld's gold command sequence), one command a step.
    walkthrough: list[str]
    max_score: int
    objective: str
    game_sha256: str
    json_sha256: str


class GameEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A valid cache entry."""

    path: str
    meta: GameMeta

    @property
    def gamefile(self) -> str:
        return str(Path(self.path) / _GAME)


def cache_root() -> Path:
    """The cache directory for TextWorld games (see the module docstring)."""
    explicit = os.environ.get("GYMUX_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser() / "textworld"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "gymux" / "textworld"


def generation_count() -> int:
    """How many games this process has generated (``tw-make`` runs that succeeded)."""
    return _generations


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_entry(directory: Path, params: CookingParams) -> GameEntry | None:
    """The entry in ``directory`` if it is complete and intact, else ``None``."""
    try:
        meta = msgspec.json.decode((directory / _META).read_bytes(), type=GameMeta)
        if (
            meta.format != CACHE_FORMAT
            or meta.key != params.key()
            or meta.params != params
            or not meta.walkthrough
            or _sha256(directory / _GAME) != meta.game_sha256
            or _sha256(directory / _GAME_JSON) != meta.json_sha256
        ):
            return None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    return GameEntry(path=str(directory), meta=meta)


def _tw_make() -> str:
    """Path of the ``tw-make`` script of the running interpreter's environment."""
    beside = Path(sys.executable).parent / "tw-make"
    if beside.is_file():
        return str(beside)
    found = shutil.which("tw-make")
    if found is None:
        raise EnvError(f"TextWorld's tw-make command was not found; {INSTALL_HINT}")
    return found


def _run_tw_make(params: CookingParams, workdir: Path) -> None:
    """Run ``tw-make`` into ``workdir/game.z8`` (a real subprocess; raises EnvError)."""
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = "0"
    cmd = [sys.executable, _tw_make(), *params.tw_make_args(), "--output", _GAME, "--silent"]
    try:
        done = subprocess.run(
            cmd,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=GENERATION_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EnvError(
            f"tw-make did not finish within {GENERATION_TIMEOUT_S:.0f} s ({params.key()})"
        ) from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-800:]
        raise EnvError(f"tw-make failed (exit {done.returncode}) for {params.key()}: {tail}")


def _generate(params: CookingParams, workdir: Path) -> GameMeta:
    global _generations
    _run_tw_make(params, workdir)
    try:
        info = msgspec.json.decode((workdir / _GAME_JSON).read_bytes())
        metadata = info["metadata"]
        walkthrough = [str(c) for c in metadata["walkthrough"]]
        max_score = int(metadata["max_score"])
        objective = str(info.get("objective") or "")
    except (OSError, msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
        raise EnvError(
            f"tw-make wrote no usable game description for {params.key()}: {exc}"
        ) from None
    (workdir / "game.ni").unlink(missing_ok=True)  # Inform 7 source: not needed to play
    meta = GameMeta(
        format=CACHE_FORMAT,
        key=params.key(),
        textworld_version=TEXTWORLD_VERSION,
        params=params,
        walkthrough=walkthrough,
        max_score=max_score,
        objective=objective,
        game_sha256=_sha256(workdir / _GAME),
        json_sha256=_sha256(workdir / _GAME_JSON),
    )
    with (workdir / _META).open("wb") as f:
        f.write(msgspec.json.encode(meta))
        f.flush()
        os.fsync(f.fileno())
    with _counter_lock:
        _generations += 1
    return meta


@contextlib.contextmanager
def _key_lock(root: Path, key: str) -> Iterator[None]:
    """An exclusive advisory lock per key (threads and processes); a no-op without fcntl."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: rely on the atomic rename alone
        yield
        return
    locks = root / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    handle: IO[bytes] = (locks / f"{key}.lock").open("ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # closing the descriptor releases the lock


def _discard(path: Path, root: Path) -> None:
    """Move ``path`` out of the way (atomically), then delete it."""
    trash = root / f".trash-{uuid.uuid4().hex}"
    try:
        path.rename(trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def ensure_game(params: CookingParams, root: Path | None = None) -> GameEntry:
    """The cache entry for ``params``, generating it first if it is missing or corrupt.

    Blocking (a generation takes seconds): call it from a worker thread or process.
    """
    root = cache_root() if root is None else root
    key = params.key()
    final = root / key
    entry = load_entry(final, params)
    if entry is not None:
        return entry
    root.mkdir(parents=True, exist_ok=True)
    with _key_lock(root, key):
        entry = load_entry(final, params)  # made by whoever held the lock before us
        if entry is not None:
            return entry
        if final.exists():
            log.warning("textworld cache entry is corrupt; regenerating", key=key)
            _discard(final, root)
        workdir = root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        workdir.mkdir()
        try:
            log.info("generating textworld game", key=key)
            _generate(params, workdir)
            try:
                workdir.rename(final)
            except OSError:
                # Lost a race with a generator that holds no lock: keep the winner's entry.
                entry = load_entry(final, params)
                if entry is None:
                    raise
                return entry
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    entry = load_entry(final, params)
    if entry is None:
        raise EnvError(f"textworld cache entry {final} is invalid right after generation")
    return entry
