"""``gymux store import FILE --out STORE``: AgentGym's AgentTraj files into a new store, and
``gymux store export --format agenttraj`` back out.

Inputs are written as AgentGym writes them (see tests/stores/test_store_agenttraj.py for
the sources): JSON Lines through jsonlines' default encoder, ``json.JSONEncoder(
ensure_ascii=False, separators=(", ", ": "))``, and JSON arrays with ``json.dump(...,
indent=4)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.usefixtures("fresh_structlog")

_jsonlines = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "))


def record(item_id: str, reward: float | None = 1.0, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "conversations": [
            {"from": "human", "loss": None, "value": f"Instruction for {item_id} — go."},
            {"from": "gpt", "loss": False, "value": "Ok."},
            {"from": "human", "loss": None, "value": "You see a wall. ü"},
            {"from": "gpt", "loss": True, "value": "Thought:\nturn\n\nAction:\nmove left"},
        ],
        "item_id": item_id,
    }
    if reward is not None:
        out["reward"] = reward
        out["success"] = 1 if reward == 1 else 0
    out.update(extra)
    return out


RECORDS = [
    record("lmrlgym_maze_3"),
    record("textcraft_12", 0.0),
    record("webshop_5238", 0.75),
    record("lmrlgym_wordle_1"),
    record("alfworld_4", None),
]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> bytes:
    data = "".join(_jsonlines.encode(r) + "\n" for r in records).encode()
    path.write_bytes(data)
    return data


def test_import_then_export_is_byte_identical(tmp_path: Path, cli) -> None:
    src = tmp_path / "inference.jsonl"
    data = write_jsonl(src, RECORDS)
    store = tmp_path / "imported"
    res = cli(["store", "import", src, "--out", store])
    assert res.rc == 0, res.err
    assert res.err == ""
    lines = res.out.splitlines()
    assert lines[0] == (
        f"imported 5 trajectories (agenttraj, jsonl) from {src} into {store} (stream trajectories)"
    )
    assert lines[1] == "  envs: alfworld 1, lmrl-wordle 1, maze 1, textcraft 1, webshop 1"
    assert lines[2] == (
        "  AgentGym names mapped to gymux envs: lmrlgym_maze -> maze, lmrlgym_wordle -> lmrl-wordle"
    )
    assert lines[3] == "  not gymux envs, kept as env ids: alfworld (1), webshop (1)"
    assert lines[4] == "  export --format agenttraj: 5 of 5 record(s) come back byte-identical"
    assert len(lines) == 5

    back = tmp_path / "back.jsonl"
    res = cli(["store", "export", store, "--format", "agenttraj", "-o", back])
    assert res.rc == 0, res.err
    assert back.read_bytes() == data

    tail = cli(["store", "tail", store, "--json"])
    rows = [json.loads(line) for line in tail.out.splitlines()]
    assert [(r["env"], r["task_id"], r["policy"]) for r in rows] == [
        ("maze", 3, "agenttraj"),
        ("textcraft", 12, "agenttraj"),
        ("webshop", 5238, "agenttraj"),
        ("lmrl-wordle", 1, "agenttraj"),
        ("alfworld", 4, "agenttraj"),
    ]
    # gymux's filters apply to imported records; they keep their AgentGym item ids
    res = cli(["store", "export", store, "--format", "agenttraj", "-o", back, "--env", "maze"])
    assert res.rc == 0, res.err
    assert back.read_bytes() == (_jsonlines.encode(RECORDS[0]) + "\n").encode()


def test_import_json_array_says_what_comes_back(tmp_path: Path, inproc) -> None:
    src = tmp_path / "AgentTraj-L.json"
    src.write_text(json.dumps(RECORDS, indent=4))
    res = inproc(["store", "import", src, "--out", tmp_path / "s"])
    assert res.rc == 0, res.err
    assert res.out.splitlines()[-2:] == [
        "  export --format agenttraj: 0 of 5 record(s) come back byte-identical; the rest: "
        "same keys, order and values, compact JSON",
        "  the json-array file itself: byte-identical, through export --format agenttraj-source",
    ]
    back = tmp_path / "back.json"
    res = inproc(["store", "export", tmp_path / "s", "--format", "agenttraj-source", "-o", back])
    assert res.rc == 0, res.err
    assert back.read_bytes() == src.read_bytes()
    assert res.out.startswith(
        "exported 5 trajectories (agenttraj-source: json-array, byte-identical to its source)"
    )
    res = inproc(["store", "export", tmp_path / "s", "--format", "agenttraj-source", "-o", "-"])
    assert res.rc == 2 and "--out - does not apply" in res.err
    src.write_text(json.dumps(RECORDS, indent=3))
    res = inproc(["store", "import", src, "--out", tmp_path / "s3"])
    assert res.out.splitlines()[-1] == (
        "  the json-array file itself: with the same keys, order and values, through export "
        "--format agenttraj-source"
    )


def test_import_json_array_with_json_output(tmp_path: Path, inproc) -> None:
    src = tmp_path / "AgentTraj-L.json"
    src.write_text(json.dumps(RECORDS, indent=4))
    store = tmp_path / "s"
    res = inproc(["store", "import", src, "--out", store, "--format", "agenttraj", "--json"])
    assert res.rc == 0, res.err
    summary = json.loads(res.out)
    assert summary["layout"] == "json-array"
    assert (summary["trajectories"], summary["exact"], summary["file_exact"]) == (5, 0, True)
    assert summary["unknown"] == {"alfworld": 1, "webshop": 1}
    assert summary["renamed"] == {"lmrlgym_maze": "maze", "lmrlgym_wordle": "lmrl-wordle"}
    back = tmp_path / "back.jsonl"
    assert inproc(["store", "export", store, "--format", "agenttraj", "-o", back]).rc == 0
    exported = [json.loads(line, object_pairs_hook=list) for line in back.read_text().splitlines()]
    assert exported == [json.loads(json.dumps(r), object_pairs_hook=list) for r in RECORDS]


def test_import_into_another_stream(tmp_path: Path, inproc) -> None:
    src = tmp_path / "in.jsonl"
    write_jsonl(src, RECORDS[:2])
    res = inproc(["store", "import", src, "--out", tmp_path / "s", "--stream", "expert"])
    assert res.rc == 0, res.err
    info = json.loads(inproc(["store", "info", tmp_path / "s", "--json"]).out)
    assert [(s["name"], s["records"]) for s in info["streams"]] == [("expert", 2)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            [record("maze_1"), record("maze_2", conversations=[{"from": "bot", "value": "x"}])],
            'in.jsonl: record 2 (line 2): conversations[0].from: expected "human", "gpt" or '
            '"system", got "bot"',
        ),
        (
            [record("maze_1"), {"conversations": None, "item_id": "maze_2"}],
            "in.jsonl: record 2 (line 2): conversations: expected a list, got null",
        ),
        ([record("maze")], 'in.jsonl: record 1 (line 1): item_id: "maze" is not <env>_<index>'),
        ("{oops\n", "in.jsonl: record 1 (line 1): not valid JSON"),
    ],
)
def test_malformed_input_is_one_line_exit_2_and_no_store(
    tmp_path: Path, cli, content: Any, message: str
) -> None:
    src = tmp_path / "in.jsonl"
    if isinstance(content, str):
        src.write_text(content)
    else:
        write_jsonl(src, content)
    store = tmp_path / "s"
    res = cli(["store", "import", src, "--out", store])
    assert res.rc == 2, res
    assert res.out == ""
    assert res.err.count("\n") == 1 and res.err.startswith("gymux: error: "), res.err
    assert message in res.err
    assert "Traceback" not in res.err
    assert not store.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["import", "{tmp}/missing.jsonl", "--out", "{tmp}/s"], "no such file: "),
        (["import", "{src}", "--out", "{tmp}/existing"], "already exists"),
        (["import", "{src}", "--out", "{tmp}/no/such/folder/s"], "does not exist"),
        (["import", "{src}", "--out", "{tmp}/s", "--stream", "a/b"], "--stream: invalid stream"),
        (["import", "{src}", "--out", "{tmp}/s", "--format", "chat"], "invalid choice: 'chat'"),
        (["import", "{src}"], "the following arguments are required: --out"),
    ],
)
def test_bad_arguments(tmp_path: Path, inproc, args: list[str], message: str) -> None:
    src = tmp_path / "in.jsonl"
    write_jsonl(src, RECORDS[:1])
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep.txt").write_text("mine")
    argv = [a.format(tmp=tmp_path, src=src) for a in args]
    res = inproc(["store", *argv])
    res.assert_usage_error(message)
    assert (tmp_path / "existing" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "s").exists()


def test_store_help_lists_import(inproc) -> None:
    res = inproc(["store"])
    assert res.rc == 0
    assert "import" in res.out and "AgentTraj" in res.out
