"""sqlgym's query sandbox under hostile queries: memory bombs run in a child process with
a bounded address space and must end as the env's error observation; the deadline is
consulted often enough that an endless query is interrupted, not finished."""

from __future__ import annotations

import itertools

import pytest

from gymux.env_plugins.builtin.sqlgym import safe
from gymux.env_plugins.builtin.sqlgym.benchmark import SqlBenchmark, builtin_benchmark
from gymux.env_plugins.builtin.sqlgym.safe import QueryError, run_query

from doubles.procs import last_json, run_python

_ROWS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 900) "
_WIDE_ZERO = "SELECT " + ", ".join(["zeroblob(9999000)"] * 200)
_WIDE_PRINTF = "SELECT " + ", ".join(["printf('%.*c', 9999000, 'x')"] * 200)

BOMBS = [
    ("zeroblob rows", _ROWS + "SELECT zeroblob(9999000) FROM c"),
    ("printf rows", _ROWS + "SELECT printf('%.*c', 9999000, 'x') FROM c"),
    ("zeroblob columns", _WIDE_ZERO),
    ("printf columns", _WIDE_PRINTF),
    ("zeroblob rows and columns", _ROWS + "SELECT zeroblob(9999000), zeroblob(9999000) FROM c"),
    ("randomblob rows", _ROWS + "SELECT randomblob(9999000) FROM c"),
    (
        "concatenated rows",
        _ROWS + "SELECT printf('%.*c', 5000000, 'x') || hex(zeroblob(2500000)) FROM c",
    ),
]

#: The child: builds the env, caps its own address space 512 MiB above what it uses, runs
#: one query through the env's step and prints what the step returned.
_CHILD = r"""
import json, resource, sys
from gymux.env_plugins import Task
from gymux.env_plugins.builtin.sqlgym.env import SqlGymEnv
from gymux.env_plugins.builtin.sqlgym.benchmark import builtin_benchmark

bench = builtin_benchmark()
env = SqlGymEnv(bench, time_limit_s=600.0)
env.reset(Task(id=0))
bench.gold(bench.questions[0].question_id, time_limit_s=600.0, max_rows=100_000)
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
limit = vm + 512 * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
result = env.step(sys.stdin.read())
print(json.dumps({"error": result.info["error"], "text": result.observation.text[:300],
                  "reward": result.reward, "done": result.done}))
"""


@pytest.fixture(scope="module")
def bench() -> SqlBenchmark:
    return builtin_benchmark()


@pytest.mark.parametrize("sql", [b[1] for b in BOMBS], ids=[b[0] for b in BOMBS])
def test_memory_bombs_end_as_an_error_observation(bench: SqlBenchmark, sql: str) -> None:
    bench.db_path("school")  # built once here, not under the child's memory limit
    result = last_json(run_python(_CHILD, input=sql), tail=2000)
    assert (result["reward"], result["done"]) == (0.0, True)
    if result["error"] is None:
        # SQLite's printf() gives NULL for a string over the length limit: defused, answered
        assert result["text"].startswith("Your query returned 1 row."), result
        assert "printf" in sql
        return
    assert result["error"] in {"too_large", "sql"}, result
    assert result["text"].startswith("Error: ")
    if result["error"] == "too_large":
        assert "more than 16 MB" in result["text"]
    else:
        assert "too big" in result["text"]


def test_byte_budget_counts_every_row(bench: SqlBenchmark) -> None:
    path = bench.db_path("school")
    # 40 rows of 1 MB each: no value is too big, but together they exceed a 16 MB budget
    sql = _ROWS.replace("900", "40") + "SELECT printf('%.*c', 1000000, 'x') FROM c"
    with pytest.raises(QueryError) as info:
        run_query(path, sql)
    assert info.value.kind == "too_large"
    # the same rows fit a larger budget, and a smaller query fits the default one
    assert len(run_query(path, sql, max_bytes=64 * 1024 * 1024).rows) == 40
    small = _ROWS.replace("900", "10") + "SELECT printf('%.*c', 1000000, 'x') FROM c"
    assert [len(str(r[0])) for r in run_query(path, small).rows] == [1_000_000] * 10


def test_values_are_bounded_by_the_column_count(bench: SqlBenchmark) -> None:
    path = bench.db_path("school")
    # one 9 MB value is fine alone; four of them in one row exceed the budget per column
    assert len(run_query(path, "SELECT zeroblob(9000000)").rows[0][0]) == 9_000_000  # type: ignore[arg-type]
    with pytest.raises(QueryError) as info:
        run_query(path, "SELECT zeroblob(9000000), 1, 2, 3")
    assert info.value.kind == "sql" and "too big" in str(info.value)


def test_an_endless_query_is_interrupted_by_the_deadline(
    bench: SqlBenchmark, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clock advances one tick per reading: an endless query under a 2,000-tick limit
    must be stopped by the deadline, long before it returns its 1,000,000th row, so the
    deadline is read at least every few hundred rows (whatever the machine's speed)."""
    ticks = itertools.count()
    monkeypatch.setattr(safe, "_clock", lambda: float(next(ticks)))
    path = bench.db_path("school")
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) "
    for select in ("SELECT x FROM c", "SELECT zeroblob(100) FROM c", "SELECT count(*) FROM c"):
        with pytest.raises(QueryError) as info:
            run_query(path, endless + select, time_limit_s=2_000, max_rows=1_000_000)
        assert info.value.kind == "timeout", select
        assert "2000 s time limit" in str(info.value)
