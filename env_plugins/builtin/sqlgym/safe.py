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
* a wall-clock deadline, checked by a progress handler every few hundred virtual-machine
  instructions (which interrupts the query) and between the rows fetched;
* caps on what a query may return: the number of rows, and the total bytes of its values
  (:data:`DEFAULT_MAX_BYTES`, counted row by row as they are fetched, one row at a time). Each
  value is bounded too: SQLite's ``SQLITE_LIMIT_LENGTH`` is set to the byte budget divided by
  the statement's column count (read from ``EXPLAIN`` before it runs), so no single row, and
  no string or blob built along the way, can exceed the budget.

Failures are raised as :class:`QueryError` with a short, model-readable message.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import msgspec

__all__ = [
    "DEFAULT_MAX_BYTES",
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
#: Default cap on the total bytes of the values one query may return (strings and blobs
#: count their length, every other value 8 bytes).
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
#: Largest string or blob a query may build (bytes), whatever its column count.
_MAX_LENGTH = 10_000_000
#: The progress handler runs every this many virtual-machine instructions. Small, because
#: one instruction can be expensive (building a 10 MB string).
_PROGRESS_STEPS = 200
#: Bytes counted for a value that is not a string or blob.
_SCALAR_BYTES = 8
#: The clock of the deadline (a module attribute so tests can drive it).
_clock = time.monotonic

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
    statement), ``"timeout"``, ``"too_many_rows"``, ``"too_large"`` (the values returned
    exceed the byte budget), ``"sql"`` (any other SQLite error: syntax, unknown table or
    column, a string or blob too big, ...).
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


def _result_columns(conn: sqlite3.Connection, sql: str) -> int:
    """How many columns ``sql`` returns, from its compiled program (``EXPLAIN``: the
    ``ResultRow`` instructions' second operand), without running it. When ``EXPLAIN`` fails
    (a syntax error, a statement that already starts with ``EXPLAIN``), the most SQLite
    allows: the real statement then reports its own error, or runs under the tightest cap."""
    try:
        program = conn.execute("EXPLAIN " + sql).fetchall()
    except (sqlite3.Error, sqlite3.Warning):
        return conn.getlimit(sqlite3.SQLITE_LIMIT_COLUMN)
    counts = [int(row[3]) for row in program if len(row) > 3 and row[1] == "ResultRow"]
    return max(counts, default=1)


def _size(row: tuple[object, ...]) -> int:
    total = 0
    for value in row:
        if isinstance(value, (str, bytes)):
            total += len(value)
        else:
            total += _SCALAR_BYTES
    return total


def run_query(
    path: str | Path,
    sql: str,
    *,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> QueryResult:
    """Run one read-only statement on the database at ``path`` and fetch its rows.

    Raises :class:`QueryError` when the statement is refused, fails, runs past
    ``time_limit_s``, returns more than ``max_rows`` rows or more than ``max_bytes`` bytes.
    """
    if not sql.strip():
        raise QueryError("sql", "SQL error: the query is empty")
    conn = open_readonly(path)
    deadline = _clock() + time_limit_s
    timed_out = False

    def progress() -> int:
        nonlocal timed_out
        if _clock() > deadline:
            timed_out = True
            return 1
        return 0

    def timeout() -> QueryError:
        return QueryError("timeout", f"the query ran longer than the {time_limit_s:g} s time limit")

    conn.set_progress_handler(progress, _PROGRESS_STEPS)
    try:
        try:
            columns_n = max(1, _result_columns(conn, sql))
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, min(_MAX_LENGTH, max_bytes // columns_n))
            cursor = conn.execute(sql)
            rows: list[tuple[object, ...]] = []
            total = 0
            # One row at a time: the budget is checked before the next row is materialised.
            for row in cursor:
                rows.append(row)
                total += _size(row)
                if total > max_bytes:
                    raise QueryError(
                        "too_large",
                        f"the query returns more than {max_bytes // (1024 * 1024)} MB of data; "
                        "refine it",
                    )
                if len(rows) > max_rows:
                    raise QueryError(
                        "too_many_rows",
                        f"the query returns more than {max_rows} rows; refine it",
                    )
                if _clock() > deadline:
                    raise timeout()
            columns = [d[0] for d in cursor.description or ()]
        except sqlite3.Warning as exc:  # e.g. "You can only execute one statement at a time."
            raise QueryError(
                "multiple", "only one SQL statement can be executed at a time"
            ) from exc
        except sqlite3.Error as exc:
            if timed_out:
                raise timeout() from exc
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
