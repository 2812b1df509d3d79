"""Tests for the sqlgym environment plugin (gymux.env_plugins.builtin.sqlgym.env)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import pytest

from gymux.env_plugins import ActionParseError, EnvError, EnvPlugin, SyncEnv, Task
from gymux.env_plugins.builtin.sqlgym import bench as bench_mod
from gymux.env_plugins.builtin.sqlgym.env import (
    CACHE_DIR_VAR,
    ENV_DIR_VAR,
    TEST_PER_DIFFICULTY,
    Builder,
    SqlBenchmark,
    SqlGymEnv,
    SqlGymOracle,
    builtin_benchmark,
    load_benchmark_dir,
    parse_sql_action,
    plugin,
    sqlgym_plugin,
)
from gymux.env_plugins.builtin.sqlgym.safe import QueryError, run_query
from gymux.env_plugins.conformance import check_plugin
from gymux.policies import Message, PolicyError, PolicyRequest
from gymux.policies.oracle import OraclePolicy

from doubles import envs as E

# Pinned fingerprints of the built-in benchmark (generator version 1). If one changes, task
# ids changed meaning: bump GENERATOR_VERSION / SPEC_VERSION and update these on purpose.
QUESTIONS_SHA256 = "7a505a189308e1c31dfbf7d8c5a8fde1810d1d0305a0f8ee100b3cd75e625674"
SPLITS_SHA256 = "a9648b188b8a679fb5e3c292cde15e6c6175472075b897772fa4f93c5ef34d4f"
DUMP_DIGESTS = {
    "school": "eb0040c81f075212",
    "shop": "2ed378e0e15ffbb7",
    "library": "a32a1d2ea2cbe3bb",
    "flights": "1aaf4c96897ebfd2",
}


#: The built-in benchmark's plugin (``plugin`` itself follows $GYMUX_SQLGYM_DIR).
BUILTIN = sqlgym_plugin()


@pytest.fixture(scope="module")
def bench() -> SqlBenchmark:
    return builtin_benchmark()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- the benchmark


def test_splits_counts_and_fingerprint(bench: SqlBenchmark) -> None:
    n = len(bench.questions)
    assert n == 293
    assert [q.question_id for q in bench.questions] == list(range(n))
    test, train = bench.splits["test"], bench.splits["train"]
    assert len(test) == 100 and len(train) == 193
    assert sorted(test + train) == list(range(n))
    by_difficulty = Counter(bench.questions[i].difficulty for i in test)
    assert by_difficulty == Counter(TEST_PER_DIFFICULTY)
    assert {bench.questions[i].db_id for i in test} == set(bench_mod.DB_IDS)
    assert Counter(q.difficulty for q in bench.questions) == {
        "simple": 94,
        "moderate": 100,
        "challenging": 99,
    }
    assert hashlib.sha256(msgspec.json.encode(list(bench.questions))).hexdigest() == (
        QUESTIONS_SHA256
    )
    splits_json = json.dumps(bench.splits, sort_keys=True).encode()
    assert hashlib.sha256(splits_json).hexdigest() == SPLITS_SHA256
    assert {d: bench_mod.dump_digest(d) for d in bench_mod.DB_IDS} == DUMP_DIGESTS
    assert BUILTIN.spec.splits["test"].ids == test


def test_generation_is_deterministic_in_a_fresh_process(
    child_env: Callable[..., dict[str, str]],
) -> None:
    code = (
        "import hashlib, msgspec\n"
        "from gymux.env_plugins.builtin.sqlgym.env import builtin_benchmark\n"
        "b = builtin_benchmark()\n"
        "print(hashlib.sha256(msgspec.json.encode(list(b.questions))).hexdigest())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(PYTHONHASHSEED="12345"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == QUESTIONS_SHA256


def test_every_gold_query_returns_rows_and_questions_are_distinct(bench: SqlBenchmark) -> None:
    seen: dict[tuple[str, str], frozenset[tuple[object, ...]]] = {}
    for q in bench.questions:
        gold = bench.gold(q.question_id, time_limit_s=30, max_rows=100_000)
        assert gold, f"task {q.question_id} has an empty gold result"
        assert not all(v is None for row in gold for v in row), q.question_id
        assert q.question.endswith("?") or q.question.endswith("."), q.question
        assert q.difficulty in ("simple", "moderate", "challenging")
        key = (q.db_id, q.question)
        assert key not in seen, f"duplicate question {q.question!r}"
        seen[key] = gold
    texts = [q.question for q in bench.questions]
    assert len(set(texts)) == len(texts)


def test_builder_builds_atomically_and_reuses(tmp_path: Path) -> None:
    builder = Builder(tmp_path)
    path = builder.build("library")
    assert path.parent == tmp_path and path.name.startswith("library-v1-")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    mtime = path.stat().st_mtime_ns
    assert builder.build("library") == path and path.stat().st_mtime_ns == mtime
    conn = sqlite3.connect(path)
    try:
        counts = {
            t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("authors", "books", "members", "loans")
        }
    finally:
        conn.close()
    assert counts == {"authors": 30, "books": 100, "members": 60, "loans": 400}


def test_builder_falls_back_to_the_next_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv(CACHE_DIR_VAR, str(blocker))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = Builder().build("shop")
    assert path.parent == tmp_path / "xdg" / "gymux" / "sqlgym"
    assert run_query(path, "SELECT COUNT(*) FROM products").rows == [(30,)]


# --------------------------------------------------------------------------- conformance


@pytest.mark.anyio
async def test_conformance_and_oracle_on_the_whole_test_split(bench: SqlBenchmark) -> None:
    assert BUILTIN.id == "sqlgym" and BUILTIN.spec.max_turns == 1
    tasks = [Task(id=i, split="test") for i in bench.splits["test"]]
    report = await check_plugin(BUILTIN, oracle_tasks=tasks, timeout_s=120)
    assert report.ok, report.problems
    assert report.oracle_episodes == report.oracle_successes == 100


def test_entry_point_resolves_to_the_plugin() -> None:
    loaded = E.load_entry_point("sqlgym")
    assert isinstance(loaded, EnvPlugin) and loaded.id == "sqlgym"


def test_oracle_on_the_train_split_and_unknown_task(bench: SqlBenchmark) -> None:
    env = SqlGymEnv(bench)
    for task_id in bench.splits["train"]:
        env.reset(Task(id=task_id))
        result = env.step(bench.questions[task_id].sql)
        assert result.reward == 1.0 and result.done, task_id
    import anyio

    oracle = OraclePolicy(SqlGymOracle(bench))
    request = PolicyRequest(episode_id="e", env_id="sqlgym", task_id=10**6, turn=0, messages=[])
    with pytest.raises(PolicyError, match="unknown task"):
        anyio.run(oracle.act, request)
    good = PolicyRequest(
        episode_id="e",
        env_id="sqlgym",
        task_id=7,
        turn=0,
        messages=[Message(role="user", content="anything")],
    )
    text = anyio.run(oracle.act, good).text
    assert parse_sql_action(text) == bench.questions[7].sql


# --------------------------------------------------------------------------- episodes


def test_reset_observation_and_episode_rules(bench: SqlBenchmark) -> None:
    env = SqlGymEnv(bench)
    assert isinstance(env, SyncEnv)
    with pytest.raises(EnvError, match="before reset"):
        env.step("SELECT 1")
    q = next(q for q in bench.questions if q.evidence and q.db_id == "shop")
    obs = env.reset(Task(id=q.question_id))
    assert obs.text.startswith("Database: shop\n")
    assert "CREATE TABLE order_items (" in obs.text
    assert f"Question: {q.question}" in obs.text and f"Evidence: {q.evidence}" in obs.text
    assert env.reset(Task(id=q.question_id)).text == obs.text
    result = env.step(q.sql)
    assert (result.reward, result.done, result.info["correct"]) == (1.0, True, True)
    assert "The answer is correct." in result.observation.text
    with pytest.raises(EnvError, match="after the episode ended"):
        env.step(q.sql)
    with pytest.raises(EnvError, match="unknown sqlgym task id"):
        env.reset(Task(id=len(bench.questions)))
    # reuse: a new episode on the same instance
    env.reset(Task(id=0))
    assert env.step(bench.questions[0].sql).reward == 1.0
    env.close()
    with pytest.raises(EnvError, match="closed"):
        env.reset(Task(id=0))


def test_wrong_answers_score_zero(bench: SqlBenchmark) -> None:
    env = SqlGymEnv(bench)
    count_q = next(
        q for q in bench.questions if q.sql.startswith("SELECT COUNT(*) FROM students WHERE city")
    )
    env.reset(Task(id=count_q.question_id))
    result = env.step("SELECT COUNT(*) FROM students")
    assert (result.reward, result.done, result.info["correct"]) == (0.0, True, False)
    assert "returned 1 row" in result.observation.text
    assert "The answer is wrong." in result.observation.text
    # the right rows with an extra column are wrong too (columns matter)
    q = next(
        q
        for q in bench.questions
        if q.sql.startswith("SELECT first_name, last_name FROM students WHERE city")
    )
    env.reset(Task(id=q.question_id))
    extra = q.sql.replace("SELECT first_name, last_name", "SELECT first_name, last_name, gpa")
    assert env.step(extra).reward == 0.0
    # swapped columns: different tuples, wrong
    env.reset(Task(id=q.question_id))
    assert env.step(q.sql.replace("first_name, last_name", "last_name, first_name")).reward == 0.0


def test_set_semantics_order_and_duplicates_do_not_matter(bench: SqlBenchmark) -> None:
    q = next(
        q
        for q in bench.questions
        if "ORDER BY" not in q.sql
        and len(bench.gold(q.question_id, time_limit_s=30, max_rows=1000)) >= 5
    )
    path = bench.db_path(q.db_id)
    gold_rows = run_query(path, q.sql).rows
    reordered = f"SELECT * FROM ({q.sql}) ORDER BY 1 DESC, 2 DESC"
    if len(gold_rows[0]) == 1:
        reordered = f"SELECT * FROM ({q.sql}) ORDER BY 1 DESC"
    other_rows = run_query(path, reordered).rows
    assert other_rows != gold_rows and sorted(map(repr, other_rows)) == sorted(map(repr, gold_rows))
    env = SqlGymEnv(bench)
    env.reset(Task(id=q.question_id))
    assert env.step(reordered).reward == 1.0
    env.reset(Task(id=q.question_id))
    assert env.step(f"{q.sql} UNION ALL {q.sql}").reward == 1.0  # duplicates too


def test_result_observation_is_truncated(bench: SqlBenchmark) -> None:
    env = SqlGymEnv(bench)
    env.reset(Task(id=0))
    result = env.step("SELECT * FROM enrollments")
    assert result.reward == 0.0 and result.info["rows"] == len(
        run_query(bench.db_path("school"), "SELECT * FROM enrollments").rows
    )
    assert "... and " in result.observation.text and "more rows" in result.observation.text
    assert len(result.observation.text) < 2_200


def test_instances_in_parallel_threads(bench: SqlBenchmark) -> None:
    ids = bench.splits["test"][:40]

    def play(task_id: int) -> float:
        env = SqlGymEnv(bench)
        try:
            env.reset(Task(id=task_id))
            return env.step(bench.questions[task_id].sql).reward
        finally:
            env.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(play, ids)) == [1.0] * len(ids)


# --------------------------------------------------------------------------- safety

SAFETY_CASES = [
    (
        "insert",
        "INSERT INTO students VALUES (999, 'A', 'B', 'F', '2000-01-01', 'X', 1, 2020, 3.0)",
        "denied",
    ),
    ("update", "UPDATE students SET gpa = 4.0", "denied"),
    ("delete", "DELETE FROM enrollments", "denied"),
    ("drop", "DROP TABLE students", "denied"),
    ("create", "CREATE TABLE evil (x)", "denied"),
    ("create temp", "CREATE TEMP TABLE evil (x)", "denied"),
    ("alter", "ALTER TABLE students ADD COLUMN evil TEXT", "denied"),
    ("attach", "ATTACH DATABASE '{tmp}/evil.db' AS evil", "denied"),
    ("detach", "DETACH DATABASE main", "denied"),
    ("vacuum into", "VACUUM INTO '{tmp}/evil.db'", "denied"),
    ("pragma write", "PRAGMA query_only = OFF", "denied"),
    ("pragma journal", "PRAGMA journal_mode = DELETE", "denied"),
    ("transaction", "BEGIN IMMEDIATE", "denied"),
    # denied by the authorizer (or, where SQLite omits extension loading, an unknown function)
    ("load_extension", "SELECT load_extension('{tmp}/evil.so')", "denied|sql"),
    ("two statements", "SELECT 1; DROP TABLE students", "multiple"),
    ("two selects", "SELECT 1; SELECT 2", "multiple"),
    (
        "infinite recursive CTE",
        "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT COUNT(*) FROM r",
        "timeout",
    ),
    (
        "huge cross join, counted",
        "SELECT COUNT(*) FROM enrollments AS a, enrollments AS b, enrollments AS c",
        "timeout",
    ),
    (
        "huge cross join, fetched",
        "SELECT * FROM enrollments AS a, enrollments AS b",
        "too_many_rows",
    ),
    ("huge blob", "SELECT zeroblob(100000000)", "sql"),
    ("syntax error", "SELEC * FROM students", "sql"),
    ("unknown table", "SELECT * FROM no_such_table", "sql"),
]


@pytest.mark.parametrize(
    ("sql", "kind"), [c[1:] for c in SAFETY_CASES], ids=[c[0] for c in SAFETY_CASES]
)
def test_unsafe_or_failing_queries(
    bench: SqlBenchmark, tmp_path: Path, sql: str, kind: str
) -> None:
    path = bench.db_path("school")
    before = sha256_file(path)
    siblings = sorted(p.name for p in path.parent.iterdir())
    # a short deadline only where the deadline is what is tested (CI machines are slow)
    env = SqlGymEnv(bench, time_limit_s=0.5 if kind == "timeout" else 20.0, max_rows=5_000)
    env.reset(Task(id=0))
    assert bench.questions[0].db_id == "school"
    result = env.step(sql.format(tmp=tmp_path))
    assert (result.reward, result.done) == (0.0, True)
    assert result.info["error"] in kind.split("|") and result.info["correct"] is False
    kind = str(result.info["error"])
    assert result.observation.text.startswith("Error: ")
    expected = {
        "denied": "read-only: only SELECT queries are allowed",
        "multiple": "only one SQL statement",
        "timeout": "time limit",
        "too_many_rows": "more than 5000 rows",
        "sql": "SQL error: ",
    }[kind]
    assert expected in result.observation.text
    assert sha256_file(path) == before
    assert sorted(p.name for p in path.parent.iterdir()) == siblings
    assert list(tmp_path.iterdir()) == []
    # the instance still works afterwards
    env.reset(Task(id=0))
    assert env.step(bench.questions[0].sql).reward == 1.0


def test_run_query_guards_directly(bench: SqlBenchmark) -> None:
    path = bench.db_path("flights")
    assert run_query(path, "PRAGMA table_info(airports)").rows[0][1] == "code"
    assert run_query(path, "SELECT COUNT(*) FROM airports;  -- trailing comment").rows == [(12,)]
    with pytest.raises(QueryError) as info:
        run_query(path, "   ")
    assert info.value.kind == "sql"
    with pytest.raises(FileNotFoundError):
        run_query(path.parent / "missing.sqlite", "SELECT 1")


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "sql"),
    [
        (
            "Thought:\nCount.\n\nAction:\n```sql\nSELECT COUNT(*)\nFROM t\n```",
            "SELECT COUNT(*)\nFROM t",
        ),
        ("Action: SELECT a FROM t WHERE b = 'x'", "SELECT a FROM t WHERE b = 'x'"),
        ("Action:\nSELECT a\nFROM t;\n\nThis returns a.", "SELECT a\nFROM t;"),
        ("Here it is:\n```SQL\nSELECT 1\n```\nDone.", "SELECT 1"),
        ("```sql SELECT 2```", "SELECT 2"),
        ("Action:\n```sql\nSELECT 3\n", "SELECT 3"),
        ("```sql\nSELECT 0\n```\nAction:\n```sqlite\nSELECT 4\n```", "SELECT 4"),
        ("**Action**: `SELECT 5`", "SELECT 5"),
    ],
)
def test_parse_sql_action(text: str, sql: str) -> None:
    assert parse_sql_action(text) == sql


@pytest.mark.parametrize(
    "text", ["", "I do not know.", "Action:", "Action:\n```sql\n```", "Thought: hm\nAction:   \n"]
)
def test_parse_sql_action_rejects(text: str) -> None:
    with pytest.raises(ActionParseError, match=r"Action:"):
        parse_sql_action(text)


# --------------------------------------------------------------------------- BIRD / Spider dirs


def make_db(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE pets (id INTEGER PRIMARY KEY, name TEXT, kind TEXT, age INTEGER);"
        "INSERT INTO pets VALUES (1, 'Rex', 'dog', 3), (2, 'Tom', 'cat', 5), "
        "(3, 'Fido', 'dog', 9), (4, 'Kit', 'cat', 1);"
    )
    conn.commit()
    conn.close()


def make_bird_dir(root: Path) -> Path:
    make_db(root / "dev_databases" / "pets" / "pets.sqlite")
    make_db(root / "train_databases" / "zoo" / "zoo.sqlite")
    dev = [
        {
            "question_id": 0,
            "db_id": "pets",
            "question": "How many dogs are there?",
            "evidence": "dog refers to kind = 'dog'",
            "SQL": "SELECT COUNT(*) FROM pets WHERE kind = 'dog'",
            "difficulty": "simple",
        },
        {
            "question_id": 1,
            "db_id": "pets",
            "question": "Name the senior pets.",
            "evidence": "senior refers to age > 4",
            "SQL": "SELECT name FROM pets WHERE age > 4",
            "difficulty": "moderate",
        },
    ]
    train = [
        {
            "db_id": "zoo",
            "question": "What is the oldest pet's name?",
            "evidence": "",
            "SQL": "SELECT name FROM pets ORDER BY age DESC LIMIT 1",
        }
    ]
    (root / "dev.json").write_text(json.dumps(dev))
    (root / "train.json").write_text(json.dumps(train))
    return root


@pytest.mark.anyio
async def test_bird_directory(tmp_path: Path) -> None:
    root = make_bird_dir(tmp_path / "bird")
    before = sha256_file(root / "dev_databases" / "pets" / "pets.sqlite")
    p = sqlgym_plugin(root)
    assert p.spec.splits["test"].ids == [0, 1] and p.spec.splits["train"].ids == [2]
    assert p.spec.version.startswith("1+data.")
    report = await check_plugin(p, oracle_tasks=[Task(id=i) for i in (0, 1, 2)], timeout_s=60)
    assert report.ok, report.problems
    assert report.oracle_successes == 3
    env = p.factory()
    assert isinstance(env, SqlGymEnv)
    obs = env.reset(Task(id=1))
    assert "Database: pets" in obs.text and "CREATE TABLE pets" in obs.text
    assert "Evidence: senior refers to age > 4" in obs.text
    result = env.step("SELECT name FROM pets WHERE age > 4 ORDER BY name DESC")
    assert result.reward == 1.0 and "Columns: (name)" in result.observation.text
    env.reset(Task(id=1))
    assert env.step("SELECT name FROM pets WHERE age >= 3").reward == 0.0
    env.reset(Task(id=0))
    assert env.step("DELETE FROM pets").info["error"] == "denied"
    assert sha256_file(root / "dev_databases" / "pets" / "pets.sqlite") == before
    # another data release gets another version
    (root / "dev.json").write_text(json.dumps(json.loads((root / "dev.json").read_text())[:1]))
    assert load_benchmark_dir(root).version != p.spec.version


def test_spider_directory(tmp_path: Path) -> None:
    root = tmp_path / "spider"
    make_db(root / "database" / "pets" / "pets.sqlite")
    dev = [
        {
            "db_id": "pets",
            "question": "List the cats.",
            "query": "SELECT name FROM pets WHERE kind = 'cat'",
        }
    ]
    train = [{"db_id": "pets", "question": "How many pets?", "query": "SELECT count(*) FROM pets"}]
    (root / "dev.json").write_text(json.dumps(dev))
    (root / "train_spider.json").write_text(json.dumps(train))
    b = load_benchmark_dir(root)
    assert b.splits == {"test": [0], "train": [1]}
    assert [(q.evidence, q.difficulty) for q in b.questions] == [("", ""), ("", "")]
    env = SqlGymEnv(b)
    obs = env.reset(Task(id=0))
    assert "Evidence" not in obs.text
    assert env.step("SELECT name FROM pets WHERE kind = 'cat'").reward == 1.0
    env.reset(Task(id=1))
    assert env.step("SELECT COUNT(id) FROM pets").reward == 1.0


def test_bad_directories(tmp_path: Path) -> None:
    with pytest.raises(EnvError, match="not a directory"):
        load_benchmark_dir(tmp_path / "nope")
    with pytest.raises(EnvError, match=r"holds no dev\.json"):
        load_benchmark_dir(tmp_path)
    (tmp_path / "dev.json").write_text(
        json.dumps([{"db_id": "x", "question": "q?", "SQL": "SELECT 1"}])
    )
    with pytest.raises(EnvError, match=r"database 'x' of dev\.json not found"):
        load_benchmark_dir(tmp_path)
    (tmp_path / "dev.json").write_text(json.dumps([{"db_id": "x"}]))
    with pytest.raises(EnvError, match="needs string fields"):
        load_benchmark_dir(tmp_path)


def test_env_var_selects_a_directory(
    tmp_path: Path, child_env: Callable[..., dict[str, str]]
) -> None:
    root = make_bird_dir(tmp_path / "bird")
    code = (
        "from gymux.env_plugins.registry import Registry\n"
        "p = Registry().get('sqlgym')\n"
        "print(p.spec.splits['test'].ids, p.spec.splits['train'].ids, p.spec.version)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(**{ENV_DIR_VAR: str(root)}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:3] == ["[0,", "1]", "[2]"]
    assert out.stdout.split()[3] == load_benchmark_dir(root).version
    # a wrong directory makes the plugin BROKEN, with the cause, and nothing else
    broken = subprocess.run(
        [sys.executable, "-m", "gymux", "envs"],
        env=child_env(**{ENV_DIR_VAR: str(tmp_path / "missing")}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    line = next(x for x in broken.stdout.splitlines() if x.startswith("sqlgym"))
    assert "BROKEN" in line and "is not a directory" in broken.stdout + broken.stderr, line
    assert any(x.startswith("wordle") and "BROKEN" not in x for x in broken.stdout.splitlines())


@pytest.mark.skipif(bool(os.environ.get(ENV_DIR_VAR)), reason=f"{ENV_DIR_VAR} is set")
def test_default_plugin_is_the_builtin_benchmark(bench: SqlBenchmark) -> None:
    assert plugin.spec.version == BUILTIN.spec.version == "1+gen1"
    assert plugin.spec.splits == BUILTIN.spec.splits
