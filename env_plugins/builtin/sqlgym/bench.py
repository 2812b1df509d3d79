"""The built-in text-to-SQL benchmark of ``sqlgym``: four databases and 293 questions, as data.

Four SQLite databases (``school``, ``shop``, ``library``, ``flights``) ship as
``data/<db_id>.json`` (``{"schema": [CREATE TABLE ...], "rows": {table: [[value, ...]]}}``),
turned into SQL scripts by :func:`database_dump`, and the questions as
``data/questions.json``: a list, in task-id order (database by database), of BIRD-shaped
objects ``{db_id, question, evidence, sql, difficulty}`` with a gold SQL query each.

The data was produced by gymux's seeded generator, version :data:`GENERATOR_VERSION`: rows
from fixed ``random.Random`` seeds; questions from templates (a difficulty, a question,
BIRD-style evidence and a gold query with placeholders), keeping a candidate only when its
gold query returns a non-empty result that is not just ``NULL``\\ s or a zero count, its
question text is new, and -- for ``ORDER BY ... LIMIT k`` questions -- the ``k``-th and
``k+1``-th sort keys differ (no tie decides the answer). The files are the benchmark now:
changing one changes task ids or answers and must bump :data:`GENERATOR_VERSION`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
from dataclasses import dataclass

import msgspec

__all__ = [
    "DB_IDS",
    "GENERATOR_VERSION",
    "GeneratedQuestion",
    "database_dump",
    "dump_digest",
    "generate_questions",
]

#: Bump when the shipped databases or questions change.
GENERATOR_VERSION = "1"
#: The built-in databases, in task order.
DB_IDS: tuple[str, ...] = ("school", "shop", "library", "flights")


@dataclass(frozen=True)
class GeneratedQuestion:
    db_id: str
    question: str
    evidence: str
    sql: str
    difficulty: str


def _data(name: str) -> str:
    return (importlib.resources.files(__package__ or "") / "data" / name).read_text("utf-8")


class _Database(msgspec.Struct, frozen=True):
    schema: list[str]
    rows: dict[str, list[list[int | float | str | None]]]


def _literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("'", "''")
    return f"'{text}'"


@functools.cache
def database_dump(db_id: str) -> str:
    """The SQL script (schema, then ``INSERT`` rows) that builds database ``db_id``."""
    if db_id not in DB_IDS:
        raise KeyError(f"no built-in sqlgym database {db_id!r} (known: {', '.join(DB_IDS)})")
    db = msgspec.json.decode(_data(f"{db_id}.json"), type=_Database)
    lines = [stmt + ";" for stmt in db.schema]
    for table, rows in db.rows.items():
        for row in rows:
            lines.append(f"INSERT INTO {table} VALUES ({', '.join(_literal(v) for v in row)});")
    return "\n".join(lines) + "\n"


@functools.cache
def generate_questions() -> tuple[GeneratedQuestion, ...]:
    """Every built-in question, in task-id order."""
    return tuple(msgspec.json.decode(_data("questions.json"), type=list[GeneratedQuestion]))


def dump_digest(db_id: str) -> str:
    """A short sha256 digest of :func:`database_dump` (names the cached database file)."""
    return hashlib.sha256(database_dump(db_id).encode()).hexdigest()[:16]
