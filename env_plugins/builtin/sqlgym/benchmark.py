"""SQLGym's benchmarks: questions, their databases, splits and gold results.

:func:`builtin_benchmark` is the built-in generated benchmark, :func:`load_benchmark_dir` a
BIRD or Spider directory; the module docstring of :mod:`.env` describes both. Shared by the
environment (:mod:`.env`) and its oracle (:mod:`.oracle`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

import msgspec

from gymux.env_plugins.builtin.sqlgym.bench import (
    GENERATOR_VERSION,
    database_dump,
    dump_digest,
    generate_questions,
)
from gymux.env_plugins.builtin.sqlgym.safe import QueryError, run_query, schema_sql
from gymux.env_plugins.protocol import EnvError

__all__ = [
    "CACHE_DIR_VAR",
    "DIFFICULTIES",
    "ENV_DIR_VAR",
    "SPEC_VERSION",
    "TEST_PER_DIFFICULTY",
    "Builder",
    "SqlBenchmark",
    "SqlQuestion",
    "builtin_benchmark",
    "load_benchmark_dir",
    "results_match",
]

#: Environment variable naming a BIRD or Spider directory to load instead of the built-in set.
ENV_DIR_VAR = "GYMUX_SQLGYM_DIR"
#: Environment variable naming the folder the built-in databases are built into.
CACHE_DIR_VAR = "GYMUX_SQLGYM_CACHE"
SPEC_VERSION = "1"
DIFFICULTIES = ("simple", "moderate", "challenging")
#: Test-split size per difficulty of the built-in benchmark (100 in all).
TEST_PER_DIFFICULTY = {"simple": 34, "moderate": 33, "challenging": 33}
_ORDER_SALT = "gymux-sqlgym-v1:"


class SqlQuestion(msgspec.Struct, frozen=True, kw_only=True):
    """One text-to-SQL question (BIRD's fields)."""

    question_id: int
    db_id: str
    question: str
    evidence: str
    sql: str
    difficulty: str


# --------------------------------------------------------------------------- benchmarks


class SqlBenchmark:
    """Questions, their databases, splits, and a cache of gold results and schemas.

    Shared by every env instance of a plugin (thread-safe); :meth:`db_path` locates (or,
    for the built-in benchmark, first builds) a database file.
    """

    def __init__(
        self,
        *,
        name: str,
        version: str,
        questions: Sequence[SqlQuestion],
        splits: dict[str, list[int]],
        db_files: dict[str, Path] | None = None,
        builder: Builder | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.questions = tuple(questions)
        self.splits = splits
        self._db_files = dict(db_files or {})
        self._builder = builder
        self._lock = threading.Lock()
        self._schemas: dict[str, str] = {}
        self._gold: dict[int, frozenset[tuple[object, ...]]] = {}

    def question(self, task_id: int) -> SqlQuestion:
        if not 0 <= task_id < len(self.questions):
            raise EnvError(
                f"unknown sqlgym task id {task_id}: valid ids are 0..{len(self.questions) - 1}"
            )
        return self.questions[task_id]

    def db_path(self, db_id: str) -> Path:
        with self._lock:
            path = self._db_files.get(db_id)
            if path is None and self._builder is not None:
                path = self._builder.build(db_id)
                self._db_files[db_id] = path
        if path is None:
            raise EnvError(f"sqlgym: no database {db_id!r} in {self.name}")
        if not path.is_file():
            raise EnvError(f"sqlgym: database file {path} is missing")
        return path

    def schema(self, db_id: str) -> str:
        with self._lock:
            cached = self._schemas.get(db_id)
        if cached is not None:
            return cached
        try:
            text = schema_sql(self.db_path(db_id))
        except sqlite3.Error as exc:
            raise EnvError(f"sqlgym: cannot read the schema of {db_id!r}: {exc}") from exc
        with self._lock:
            self._schemas[db_id] = text
        return text

    def gold(
        self, task_id: int, *, time_limit_s: float, max_rows: int
    ) -> frozenset[tuple[object, ...]]:
        """The gold query's result as a set of rows (computed once per question)."""
        with self._lock:
            cached = self._gold.get(task_id)
        if cached is not None:
            return cached
        q = self.question(task_id)
        try:
            result = run_query(
                self.db_path(q.db_id), q.sql, time_limit_s=time_limit_s, max_rows=max_rows
            )
        except QueryError as exc:
            raise EnvError(f"sqlgym: the gold query of task {task_id} failed: {exc}") from exc
        rows = frozenset(result.rows)
        with self._lock:
            self._gold[task_id] = rows
        return rows


class Builder:
    """Builds the built-in databases from their SQL dumps into a cache folder, atomically."""

    def __init__(self, folder: Path | None = None) -> None:
        self._folder = folder

    def _folders(self) -> list[Path]:
        if self._folder is not None:
            return [self._folder]
        folders = []
        if os.environ.get(CACHE_DIR_VAR):
            folders.append(Path(os.environ[CACHE_DIR_VAR]))
        if os.environ.get("GYMUX_CACHE_DIR"):  # gymux's common cache root, as textworld
            folders.append(Path(os.environ["GYMUX_CACHE_DIR"]) / "sqlgym")
        xdg = os.environ.get("XDG_CACHE_HOME")
        folders.append((Path(xdg) if xdg else Path.home() / ".cache") / "gymux" / "sqlgym")
        uid = os.getuid() if hasattr(os, "getuid") else 0
        folders.append(Path(tempfile.gettempdir()) / f"gymux-sqlgym-{uid}")
        return folders

    def build(self, db_id: str) -> Path:
        name = f"{db_id}-v{GENERATOR_VERSION}-{dump_digest(db_id)}.sqlite"
        errors: list[str] = []
        for folder in self._folders():
            target = folder / name
            if target.is_file():
                return target
            try:
                folder.mkdir(parents=True, exist_ok=True)
                tmp = folder / f".{name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
                try:
                    conn = sqlite3.connect(tmp)
                    try:
                        # One transaction, no journal: the file only counts once renamed.
                        conn.executescript(
                            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; BEGIN;\n"
                            + database_dump(db_id)
                            + "COMMIT;"
                        )
                    finally:
                        conn.close()
                    with tmp.open("rb") as handle:
                        os.fsync(handle.fileno())
                    os.replace(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
                return target
            except (OSError, sqlite3.Error) as exc:
                errors.append(f"{folder}: {exc}")
        raise EnvError(f"sqlgym: cannot build database {db_id!r}: " + "; ".join(errors))


def _order_key(task_id: int) -> str:
    return hashlib.sha256(f"{_ORDER_SALT}{task_id}".encode()).hexdigest()


@functools.cache
def builtin_benchmark() -> SqlBenchmark:
    """The generated benchmark (see the module docstring); databases built on first use."""
    questions = [
        SqlQuestion(
            question_id=i,
            db_id=g.db_id,
            question=g.question,
            evidence=g.evidence,
            sql=g.sql,
            difficulty=g.difficulty,
        )
        for i, g in enumerate(generate_questions())
    ]
    test: list[int] = []
    for difficulty, size in TEST_PER_DIFFICULTY.items():
        ids = sorted(
            (q.question_id for q in questions if q.difficulty == difficulty), key=_order_key
        )
        test.extend(ids[:size])
    test.sort()
    chosen = set(test)
    train = [q.question_id for q in questions if q.question_id not in chosen]
    return SqlBenchmark(
        name="the built-in benchmark",
        version=f"{SPEC_VERSION}+gen{GENERATOR_VERSION}",
        questions=questions,
        splits={"test": test, "train": train},
        builder=Builder(),
    )


_QUESTION_FILES = {
    "test": ("dev.json",),
    "train": ("train.json", "train_spider.json"),
}
_DB_FOLDERS = ("{stem}_databases", "dev_databases", "train_databases", "database", "databases")


def _find_db(root: Path, stem: str, db_id: str) -> Path | None:
    for pattern in _DB_FOLDERS:
        candidate = root / pattern.format(stem=stem) / db_id / f"{db_id}.sqlite"
        if candidate.is_file():
            return candidate
    return None


def _read_questions(file: Path, start: int) -> list[SqlQuestion]:
    try:
        items = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EnvError(f"sqlgym: cannot read {file}: {exc}") from exc
    if not isinstance(items, list):
        raise EnvError(f"sqlgym: {file} must hold a JSON list of questions")
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise EnvError(f"sqlgym: {file} item {n} is not an object")
        sql = item.get("SQL", item.get("query"))
        db_id, question = item.get("db_id"), item.get("question")
        if not (isinstance(sql, str) and isinstance(db_id, str) and isinstance(question, str)):
            raise EnvError(
                f"sqlgym: {file} item {n} needs string fields db_id, question and SQL (or query)"
            )
        evidence = item.get("evidence")
        difficulty = item.get("difficulty")
        out.append(
            SqlQuestion(
                question_id=start + n,
                db_id=db_id,
                question=question.strip(),
                evidence=evidence.strip() if isinstance(evidence, str) else "",
                sql=sql.strip(),
                difficulty=difficulty if isinstance(difficulty, str) else "",
            )
        )
    return out


def load_benchmark_dir(path: str | os.PathLike[str]) -> SqlBenchmark:
    """Load a BIRD- or Spider-format directory (see the module docstring)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise EnvError(f"sqlgym: {root} is not a directory")
    questions: list[SqlQuestion] = []
    splits: dict[str, list[int]] = {}
    db_files: dict[str, Path] = {}
    digest = hashlib.sha256()
    for split, names in _QUESTION_FILES.items():
        file = next((root / n for n in names if (root / n).is_file()), None)
        if file is None:
            continue
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
        part = _read_questions(file, len(questions))
        stem = file.stem.removesuffix("_spider")
        for q in part:
            if q.db_id not in db_files:
                found = _find_db(root, stem, q.db_id)
                if found is None:
                    raise EnvError(
                        f"sqlgym: database {q.db_id!r} of {file.name} not found under {root} "
                        f"(looked for <folder>/{q.db_id}/{q.db_id}.sqlite)"
                    )
                db_files[q.db_id] = found
        splits[split] = [q.question_id for q in part]
        questions.extend(part)
    if not questions:
        raise EnvError(
            f"sqlgym: {root} holds no dev.json, train.json or train_spider.json with questions"
        )
    return SqlBenchmark(
        name=str(root),
        version=f"{SPEC_VERSION}+data.{digest.hexdigest()[:12]}",
        questions=questions,
        splits=splits,
        db_files=db_files,
    )


# --------------------------------------------------------------------------- comparison


def results_match(
    predicted: Sequence[tuple[object, ...]], gold: frozenset[tuple[object, ...]]
) -> bool:
    """BIRD's execution match: the two results hold the same *set* of rows."""
    return frozenset(predicted) == gold
