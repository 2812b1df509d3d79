"""Read-only, sandboxed execution of one SQL query against a SQLite file (for ``sqlgym``).

Every query the agent sends goes through :func:`run_query`, which layers these guards:

* the file is opened read-only (``file:...?mode=ro`` URI) in autocommit mode, and
  ``PRAGMA query_only=ON`` is set before anything else runs;
* an authorizer allows only reads: ``SELECT``, column reads, function calls (except
  ``load_extension`` and ``fts3_tokenizer``), recursive CTEs and a few schema-introspection
  pragmas (``PRAGMA table_info(t)``, ``index_list``, ``foreign_key_list``, ...). Everything else --
  ``INSERT``/``UPDATE``/``DELETE``, ``CREATE``/``DROP``/``ALTER``, ``ATTACH``/``DETACH``
  (which also covers ``VACUUM INTO``), transactions, every other pragma (so also
  ``PRAGMA query_only=OFF``) -- is denied;
* extension loading is switched off (``enable_load_extension(False)``, where the Python
  build supports extensions at all) and no database may be attached;
* only one statement per call (``sqlite3`` refuses a second one);
* a wall-clock deadline, enforced by a progress handler that interrupts the query, and a cap
  on the number of rows fetched and on the size of any string or blob.

Failures are raised as :class:`QueryError` with a short, model-readable message.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import msgspec

__all__ = [
    "DEFAULT_MAX_ROWS",
    "DEFAULT_TIME_LIMIT_S",
    "QueryError",
    "QueryResult",
    "open_readonly",
    "run_query",
    "schema_sql",
]

#: Default wall-clock limit of one query, in seconds.
DEFAULT_TIME_LIMIT_S = 10.0
#: Default cap on the rows one query may return.
DEFAULT_MAX_ROWS = 100_000
#: Largest string or blob a query may build (bytes).
_MAX_LENGTH = 10_000_000
#: The progress handler runs every this many virtual-machine instructions.
_PROGRESS_STEPS = 10_000

_ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE})
_DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer"})
_READ_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
    }
)


class QueryError(Exception):
    """A query was refused or failed; ``kind`` says why, the message is for the model.

    Kinds: ``"denied"`` (not a read-only statement), ``"multiple"`` (more than one
    statement), ``"timeout"``, ``"too_many_rows"``, ``"sql"`` (any other SQLite error:
    syntax, unknown table or column, ...).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class QueryResult(msgspec.Struct, frozen=True, kw_only=True):
    """The rows (as tuples) and column names of a successful query."""

    columns: list[str]
    rows: list[tuple[object, ...]]


def _authorize(
    action: int, arg1: str | None, arg2: str | None, db: str | None, src: str | None
) -> int:
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION:
        name = (arg2 or "").lower()
        return sqlite3.SQLITE_DENY if name in _DENIED_FUNCTIONS else sqlite3.SQLITE_OK
    # For a pragma, arg1 is its name and arg2 its argument (for these: a table or index name).
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _READ_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """Open ``path`` read-only with every guard of this module installed (except the deadline)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no SQLite database at {file}")
    uri = file.resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA query_only=ON")
        # Builds of Python without extension support lack the method (and the feature).
        disable = getattr(conn, "enable_load_extension", None)
        if disable is not None:
            disable(False)
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, _MAX_LENGTH)
        conn.set_authorizer(_authorize)
    except BaseException:
        conn.close()
        raise
    return conn


def _message(exc: sqlite3.Error) -> QueryError:
    text = str(exc)
    lowered = text.lower()
    if isinstance(exc, sqlite3.ProgrammingError) and "one statement" in lowered:
        return QueryError("multiple", "only one SQL statement can be executed at a time")
    if "not authorized" in lowered or "authorization denied" in lowered:
        return QueryError("denied", "the database is read-only: only SELECT queries are allowed")
    if "readonly" in lowered or "read-only" in lowered:
        return QueryError("denied", "the database is read-only: only SELECT queries are allowed")
    return QueryError("sql", f"SQL error: {text}")


def run_query(
    path: str | Path,
    sql: str,
    *,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> QueryResult:
    """Run one read-only statement on the database at ``path`` and fetch its rows.

    Raises :class:`QueryError` when the statement is refused, fails, runs past
    ``time_limit_s`` or returns more than ``max_rows`` rows.
    """
    if not sql.strip():
        raise QueryError("sql", "SQL error: the query is empty")
    conn = open_readonly(path)
    deadline = time.monotonic() + time_limit_s
    timed_out = False

    def progress() -> int:
        nonlocal timed_out
        if time.monotonic() > deadline:
            timed_out = True
            return 1
        return 0

    conn.set_progress_handler(progress, _PROGRESS_STEPS)
    try:
        try:
            cursor = conn.execute(sql)
            rows: list[tuple[object, ...]] = []
            while True:
                batch = cursor.fetchmany(1_000)
                if not batch:
                    break
                rows.extend(batch)
                if len(rows) > max_rows:
                    raise QueryError(
                        "too_many_rows",
                        f"the query returns more than {max_rows} rows; refine it",
                    )
            columns = [d[0] for d in cursor.description or ()]
        except sqlite3.Warning as exc:  # e.g. "You can only execute one statement at a time."
            raise QueryError(
                "multiple", "only one SQL statement can be executed at a time"
            ) from exc
        except sqlite3.Error as exc:
            if timed_out:
                raise QueryError(
                    "timeout", f"the query ran longer than the {time_limit_s:g} s time limit"
                ) from exc
            raise _message(exc) from exc
    finally:
        conn.close()
    return QueryResult(columns=columns, rows=rows)


def schema_sql(path: str | Path) -> str:
    """The ``CREATE TABLE`` statements of the database at ``path``, in schema order."""
    conn = open_readonly(path)
    try:
        rows = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND sql IS NOT NULL ORDER BY rowid"
        ).fetchall()
    finally:
        conn.close()
    return "\n\n".join(str(r[0]).strip().rstrip(";") + ";" for r in rows)
