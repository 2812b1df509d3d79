"""Importing AgentGym's AgentTraj files (gymux.stores.agenttraj) and exporting them back.

The inputs are written the way AgentGym writes them (WooooDyy/AgentGym):

* JSON Lines from its trainers and evaluators (``agentenv/trainer/bc_trainer.py``,
  ``agentevol_trainer.py``, ``distributed_evaluator.py``): ``jsonlines.open(..., "a")`` then
  ``f.write({"conversations", "item_id", "reward", "success"})``; jsonlines 4.0's default
  writer is ``json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "))`` (``compact=True``
  gives ``(",", ":")``), which is what :func:`jsonlines_text` reproduces;
* JSON arrays: the AgentTraj-L training files (``json.load`` in the trainers; the README's
  example has ``from``, ``loss``, ``value`` in that order and ``loss: null`` on human turns)
  and ``utils/agentevol_filter.py``'s ``json.dump(data, f, ensure_ascii=False, indent=4)``;
* one record alone: ``examples/basic/openai_eval_multiprocessing.py`` writes
  ``json.dump({...}, f, ensure_ascii=False, indent=4)`` per item.

"Equivalent" is checked with :func:`typed`: key order at every level, and each scalar with
its JSON type (``1`` is not ``1.0``, ``0`` is not ``false``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pyarrow.parquet as pq
import pytest

from gymux.messages import Message
from gymux.stores import RecordType, Store, StoreError
from gymux.stores.agenttraj import (
    AGENTGYM_ENVS,
    SOURCE,
    AgentTrajError,
    agenttraj_line,
    export_agenttraj_source,
    import_agenttraj,
    is_imported,
    parse_agenttraj,
    split_item_id,
)
from gymux.stores.codec import encode_trajectory
from gymux.stores.export import agenttraj_record, export_agenttraj, export_chat, export_parquet

from doubles.trajectories import make_trajectory

pytestmark = pytest.mark.usefixtures("fresh_structlog")


# -- helpers ----------------------------------------------------------------------------


def typed(value: Any) -> Any:
    """``value`` with key order and JSON types made comparable by ``==``."""
    if isinstance(value, dict):
        return ["{}", [(key, typed(item)) for key, item in value.items()]]
    if isinstance(value, list):
        return ["[]", [typed(item) for item in value]]
    return [type(value).__name__, value]


def loads_typed(text: str | bytes) -> Any:
    return typed(json.loads(text, object_pairs_hook=dict))


def conversation(i: int, *, turns: int = 2) -> list[dict[str, Any]]:
    """An AgentGym conversation: instruction, "Ok.", then observation/answer pairs."""
    conv: list[dict[str, Any]] = [
        {"from": "human", "loss": None, "value": f"You are an agent … task {i}.\nGo — “now”."},
        {"from": "gpt", "loss": False, "value": "Ok."},
    ]
    for t in range(turns):
        conv.append({"from": "human", "loss": None, "value": f'Observation {t}: 😀 "quoted"\t'})
        conv.append(
            {"from": "gpt", "loss": True, "value": f"Thought:\nstep {t}\n\nAction:\nmove up {t}"}
        )
    return conv


def inference_records() -> list[dict[str, Any]]:
    """Records as AgentGym's trainers write them to inference.jsonl (reward float,
    success an int)."""
    rewards: list[Any] = [1.0, 0.0, 0.30000000000000004, 1e-05, 1, 0.5]
    prefixes = ["lmrlgym_maze", "textcraft", "babyai", "sciworld", "webshop", "lmrlgym_maze"]
    records = [
        {
            "conversations": conversation(i, turns=1 + i % 3),
            "item_id": f"{prefix}_{10 + i}",
            "reward": reward,
            "success": 1 if reward == 1 else 0,
        }
        for i, (prefix, reward) in enumerate(zip(prefixes, rewards, strict=True))
    ]
    return [*records, {**ascii_record(), "reward": 0.0, "success": 0}]


def agenttraj_l_records() -> list[dict[str, Any]]:
    """Records as in AgentTraj-L: no reward or success; some files put item_id first."""
    out: list[dict[str, Any]] = [
        {"item_id": "webshop_0", "conversations": conversation(0)},
        {"conversations": conversation(1, turns=3), "item_id": "lmrlgym_wordle_7"},
        {"conversations": conversation(2), "item_id": "alfworld_3"},
        {"conversations": conversation(3), "item_id": "sqlgym_12"},
        ascii_record(),
    ]
    return out


def ascii_record() -> dict[str, Any]:
    """A record with no character outside ASCII: written alike with or without
    ``ensure_ascii``."""
    return {
        "conversations": [
            {"from": "human", "loss": None, "value": "Craft a stick.\nGoal: stick"},
            {"from": "gpt", "loss": False, "value": "Ok."},
        ],
        "item_id": "textcraft_1",
    }


def jsonlines_text(records: list[dict[str, Any]], *, compact: bool = False) -> bytes:
    """What ``jsonlines.Writer(fp, compact=compact).write(r)`` writes for each record."""
    encoder = json.JSONEncoder(
        ensure_ascii=False, separators=(",", ":") if compact else (", ", ": ")
    )
    return "".join(encoder.encode(r) + "\n" for r in records).encode("utf-8")


def round_trip(tmp_path: Path, data: bytes, name: str = "in.jsonl") -> tuple[Any, bytes]:
    """Import ``data`` (as file ``name``) into a new store, export it; the import's result
    and the exported bytes."""
    tmp_path.mkdir(exist_ok=True)
    src = tmp_path / name
    src.write_bytes(data)
    result = import_agenttraj(src, tmp_path / "store")
    out = tmp_path / "back.jsonl"
    export_agenttraj(tmp_path / "store", out)
    return result, out.read_bytes()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".store"))


# -- byte-identical round trips -----------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "write"),
    [
        ("jsonlines default", lambda r: jsonlines_text(r)),
        ("jsonlines compact", lambda r: jsonlines_text(r, compact=True)),
        (
            "json.dumps ensure_ascii",
            lambda r: "".join(json.dumps(x) + "\n" for x in r).encode(),
        ),
        (
            "json.dumps compact ensure_ascii",
            lambda r: "".join(json.dumps(x, separators=(",", ":")) + "\n" for x in r).encode(),
        ),
        ("msgspec", lambda r: b"".join(msgspec.json.encode(x) + b"\n" for x in r)),
    ],
)
def test_jsonl_written_by_agentgym_comes_back_byte_identical(
    tmp_path: Path, style: str, write: Any
) -> None:
    data = write(inference_records())
    result, back = round_trip(tmp_path, data)
    assert back == data, style
    assert result.layout == "jsonl"
    assert result.trajectories == result.exact == len(inference_records())


def test_gymux_export_import_export_is_byte_identical(tmp_path: Path) -> None:
    """A store of gymux's own trajectories, exported, imported and exported again."""
    native = tmp_path / "native"
    with Store(native).writer() as w:
        for i in range(5):
            t = make_trajectory(
                env="maze",
                task=i,
                reward=0.25 * i,
                success=i == 4,
                messages=[
                    Message(role="user", content=f"instruction {i} ü"),
                    Message(role="assistant", content="OK"),
                    Message(role="user", content="obs"),
                    Message(role="assistant", content="Action: up", loss=True),
                ],
            )
            w.append(encode_trajectory(t), RecordType.TRAJECTORY)
    first = tmp_path / "first.jsonl"
    export_agenttraj(native, first)
    result = import_agenttraj(first, tmp_path / "imported")
    second = tmp_path / "second.jsonl"
    export_agenttraj(tmp_path / "imported", second)
    assert second.read_bytes() == first.read_bytes()
    assert result.exact == 5 and result.envs == {"maze": 5} and not result.unknown


def test_crlf_and_blank_lines(tmp_path: Path) -> None:
    """CRLF endings and blank lines are read; lines come back with "\\n" endings."""
    data = jsonlines_text(inference_records()[:2])
    crlf = data.replace(b"\n", b"\r\n\r\n")
    result, back = round_trip(tmp_path, crlf)
    assert back == data and result.exact == 2


# -- JSON arrays and single records: equivalent ------------------------------------------


@pytest.mark.parametrize("ensure_ascii", [False, True])
def test_json_array_comes_back_equivalent(tmp_path: Path, ensure_ascii: bool) -> None:
    records = agenttraj_l_records() + inference_records()
    data = json.dumps(records, ensure_ascii=ensure_ascii, indent=4).encode()
    result, back = round_trip(tmp_path, data, "AgentTraj-L.json")
    lines = back.decode().splitlines()
    assert result.layout == "json-array" and result.trajectories == len(records)
    assert result.exact == 0  # whitespace differs: the records of an array are not lines
    assert [loads_typed(line) for line in lines] == [typed(r) for r in records]
    # exactly: the record written compactly, UTF-8, with Python's number spelling
    assert lines == [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in records]


def test_single_record_file_is_one_record(tmp_path: Path) -> None:
    record = inference_records()[0]
    data = json.dumps(record, ensure_ascii=False, indent=4).encode()
    result, back = round_trip(tmp_path, data, "lmrlgym_maze_10.json")
    assert result.layout == "json-object" and result.trajectories == 1
    assert loads_typed(back) == typed(record)


def test_types_and_spellings_are_kept(tmp_path: Path) -> None:
    """Values whose JSON spelling a careless round trip would change."""
    record = {
        "item_id": "maze_0",
        "conversations": [
            {"value": "x", "from": "human"},  # other key order, no loss
            {"from": "gpt", "loss": None, "value": "y", "extra": [1, 1.0, None, True]},
        ],
        "success": True,
        "reward": 1,
        "note": {"b": 1, "a": 2},
    }
    line = json.dumps(record, ensure_ascii=False) + "\n"
    result, back = round_trip(tmp_path, line.encode())
    assert back == line.encode() and result.exact == 1
    # a spelling Python does not write: equal, not byte-identical
    odd = '{"conversations": [], "item_id": "maze_1", "reward": 1E0, "success": 0}\n'
    result, back = round_trip(tmp_path / "odd", odd.encode())
    assert result.exact == 0
    assert loads_typed(back) == loads_typed(odd) and b"1.0" in back


# -- the source file again: export_agenttraj_source ------------------------------------


@pytest.mark.parametrize(
    ("name", "write"),
    [
        # AgentTraj-L as json.dump writes by default, and as agentevol_filter.py writes it
        ("AgentTraj-L.json", lambda r: json.dumps(r, indent=4)),
        ("filtered.json", lambda r: json.dumps(r, indent=4, ensure_ascii=False)),
        ("two.json", lambda r: json.dumps(r, indent=2) + "\n"),
        # openai_eval_multiprocessing.py's one record per file
        ("lmrlgym_maze_10.json", lambda r: json.dumps(r[0], ensure_ascii=False, indent=4)),
        ("one.json", lambda r: json.dumps(r[0], indent=2) + "\n"),
        ("inference.jsonl", lambda r: jsonlines_text(r).decode()),
    ],
)
def test_source_file_comes_back_byte_identical(tmp_path: Path, name: str, write: Any) -> None:
    records = agenttraj_l_records() + inference_records()
    src = tmp_path / name
    src.write_text(write(records), encoding="utf-8")
    imported = import_agenttraj(src, tmp_path / "s")
    back = tmp_path / ("back-" + name)
    result = export_agenttraj_source(tmp_path / "s", back)
    assert back.read_bytes() == src.read_bytes()
    assert result.exact and imported.file_exact and result.layout == imported.layout
    assert result.trajectories == imported.trajectories
    assert result.bytes == src.stat().st_size


def test_source_file_in_an_unknown_style_is_equal_not_identical(tmp_path: Path) -> None:
    records = inference_records()
    src = tmp_path / "odd.json"
    src.write_text(json.dumps(records, indent=3))
    assert not import_agenttraj(src, tmp_path / "s").file_exact
    back = tmp_path / "back.json"
    result = export_agenttraj_source(tmp_path / "s", back)
    assert not result.exact
    assert back.read_text() == json.dumps(records, indent=4, ensure_ascii=False)
    # a subset, selected by gymux's filters, in the source's style
    src.write_text(json.dumps(records, indent=4))
    import_agenttraj(src, tmp_path / "s2")
    result = export_agenttraj_source(tmp_path / "s2", back, env="maze")
    assert result.exact and result.trajectories == 2
    assert back.read_text() == json.dumps([records[0], records[5]], indent=4)


def test_source_export_refuses_native_trajectories(tmp_path: Path) -> None:
    with Store(tmp_path / "s").writer() as w:
        w.append(encode_trajectory(make_trajectory(env="maze")), RecordType.TRAJECTORY)
    with pytest.raises(StoreError, match="was not imported from AgentTraj"):
        export_agenttraj_source(tmp_path / "s", tmp_path / "out.json")
    assert list(tmp_path.glob("out.json*")) == []


# -- what a record becomes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("item_id", "env", "task"),
    [
        ("lmrlgym_maze_3", "maze", 3),
        ("maze_3", "maze", 3),
        ("lmrlgym_wordle_7", "lmrl-wordle", 7),
        ("wordle_7", "lmrl-wordle", 7),
        ("textcraft_12", "textcraft", 12),
        ("babyai_40", "babyai", 40),
        ("sciworld_1999", "sciworld", 1999),
        ("sqlgym_5", "sqlgym", 5),
        ("webshop_5238", "webshop", 5238),
        ("alfworld_0", "alfworld", 0),
        ("textcraft_007", "textcraft", 7),
    ],
)
def test_item_id_maps_to_env_and_task(tmp_path: Path, item_id: str, env: str, task: int) -> None:
    record = {"conversations": conversation(0), "item_id": item_id}
    src = tmp_path / "one.jsonl"
    src.write_text(json.dumps(record) + "\n")
    result = import_agenttraj(src, tmp_path / "s")
    (t,) = Store(tmp_path / "s").trajectories()
    assert (t.env_id, t.task_id) == (env, task)
    prefix = item_id.rpartition("_")[0]
    assert result.envs == {env: 1}
    assert result.unknown == ({} if prefix in AGENTGYM_ENVS else {prefix: 1})
    assert result.renamed == ({prefix: env} if prefix != env else {})
    # exported back under its own name, not gymux's
    export_agenttraj(tmp_path / "s", tmp_path / "b.jsonl")
    (line,) = (tmp_path / "b.jsonl").read_text().splitlines()
    assert json.loads(line)["item_id"] == item_id


def test_split_item_id() -> None:
    assert split_item_id("lmrlgym_maze_3") == ("lmrlgym_maze", 3)
    for bad in ("maze", "_3", "maze_", "maze_x", "maze_-1", "maze_٣", "maze_" + "9" * 19):
        with pytest.raises(ValueError, match=r"is not <env>_<index>|does not end in _<index>"):
            split_item_id(bad)


def test_trajectory_fields(tmp_path: Path) -> None:
    records = [*inference_records()[:2], dict(inference_records()[0], reward=0.0, success=0)]
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonlines_text(records))
    result = import_agenttraj(src, tmp_path / "s")
    trajs = list(Store(tmp_path / "s").trajectories())
    first = trajs[0]
    assert all(is_imported(t) for t in trajs)
    assert first.policy == SOURCE and first.split == SOURCE
    assert first.run_id.startswith("agenttraj-") and len(first.run_id) == len("agenttraj-") + 12
    assert [t.episode_id for t in trajs] == [f"{first.run_id}:{n}" for n in (1, 2, 3)]
    # the same item twice: samples 0 and 1
    assert [(t.env_id, t.task_id, t.sample) for t in trajs] == [
        ("maze", 10, 0),
        ("textcraft", 11, 0),
        ("maze", 10, 1),
    ]
    assert (first.reward, first.success) == (1.0, True)
    assert (trajs[2].reward, trajs[2].success) == (0.0, False)
    conv = records[0]["conversations"]
    assert [m.content for m in first.messages] == [c["value"] for c in conv]
    assert [m.role for m in first.messages] == [
        {"human": "user", "gpt": "assistant"}[c["from"]] for c in conv
    ]
    # loss null on human turns is false; "Ok." keeps its false; answers are learned
    assert [m.loss for m in first.messages] == [False, False, False, True]
    assert [(t.observation, t.action) for t in first.turns] == [(conv[2]["value"], "move up 0")]
    # a second import of the same file gets the same run id
    again = import_agenttraj(src, tmp_path / "s2")
    assert next(iter(Store(tmp_path / "s2").trajectories())).run_id == first.run_id
    assert again.trajectories == result.trajectories == 3


def test_missing_reward_and_null_gpt_loss(tmp_path: Path) -> None:
    record = {
        "conversations": [
            {"from": "system", "value": "sys"},
            {"from": "human", "loss": True, "value": "q"},
            {"from": "gpt", "loss": None, "value": "Action: a"},
        ],
        "item_id": "maze_1",
    }
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(record) + "\n")
    import_agenttraj(src, tmp_path / "s")
    (t,) = Store(tmp_path / "s").trajectories()
    assert (t.reward, t.success) == (0.0, False)
    assert [(m.role, m.loss) for m in t.messages] == [
        ("system", False),
        ("user", True),
        ("assistant", True),  # AgentGym's trainers learn from every gpt turn
    ]
    assert [tt.action for tt in t.turns] == ["a"]


def test_gymux_filters_and_other_exports_see_imported_records(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    records = inference_records()
    src.write_bytes(jsonlines_text(records))
    import_agenttraj(src, tmp_path / "s")
    out = tmp_path / "maze.jsonl"
    assert export_agenttraj(tmp_path / "s", out, env="maze", success=True).trajectories == 1
    assert out.read_bytes() == jsonlines_text([records[0]])
    assert export_agenttraj(tmp_path / "s", out, policy=SOURCE).trajectories == len(records)
    chat = tmp_path / "chat.jsonl"
    export_chat(tmp_path / "s", chat)
    rows = [json.loads(line) for line in chat.read_text().splitlines()]
    assert rows[1]["env"] == "textcraft" and rows[1]["task_id"] == 11
    assert [m["content"] for m in rows[1]["messages"]] == [
        c["value"] for c in records[1]["conversations"]
    ]
    table = pq.read_table(export_parquet(tmp_path / "s", tmp_path / "t.parquet").path)
    prefixes = [split_item_id(r["item_id"])[0] for r in records]
    assert table.column("env_id").to_pylist() == [AGENTGYM_ENVS.get(p, p) for p in prefixes]
    assert table.column("num_turns").to_pylist() == [
        sum(c["from"] == "gpt" and c["loss"] is True for c in r["conversations"]) for r in records
    ]


def test_agenttraj_record_of_an_imported_trajectory(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    data = jsonlines_text(inference_records()[:1])
    src.write_bytes(data)
    import_agenttraj(src, tmp_path / "s")
    (t,) = Store(tmp_path / "s").trajectories()
    raw = agenttraj_record(t, null_human_loss=True)
    assert isinstance(raw, msgspec.Raw)
    assert bytes(raw) + b"\n" == data == agenttraj_line(t) + b"\n"
    # a native trajectory is not imported, and stays a dict
    native = make_trajectory(env="maze", messages=[Message(role="user", content="x")])
    assert not is_imported(native) and isinstance(agenttraj_record(native), dict)
    with pytest.raises(StoreError, match="not imported"):
        agenttraj_line(native)
    # a layout that does not fit the messages is refused, not exported wrongly
    broken = msgspec.structs.replace(t, messages=t.messages[:-1])
    with pytest.raises(StoreError, match="does not match"):
        agenttraj_line(broken)


# -- malformed input: one clear error, nothing written -----------------------------------

GOOD = json.dumps({"conversations": conversation(0), "item_id": "maze_1"})


def line_with(**changes: Any) -> str:
    record = {"conversations": conversation(0), "item_id": "maze_1", "reward": 1.0}
    record.update(changes)
    return json.dumps(record)


def conv_with(index: int, **changes: Any) -> str:
    conv = conversation(0)
    conv[index] = {**conv[index], **changes}
    return line_with(conversations=conv)


BAD_INPUTS = [
    (GOOD + "\n{not json\n", "record 2 (line 2): not valid JSON: Expecting property name"),
    (GOOD + "\n[1, 2]\n", "record 2 (line 2): expected a JSON object, got [1, 2]"),
    (GOOD + '\n{"item_id": "maze_1"}\n', "record 2 (line 2): conversations: missing"),
    (
        GOOD + '\n{"conversations": null, "item_id": "maze_2"}\n',
        "record 2 (line 2): conversations: expected a list, got null (an AgentEval task list",
    ),
    (conv_with(2, **{"from": "user"}), 'conversations[2].from: expected "human", "gpt" or'),
    (conv_with(1, **{"from": ["gpt"]}), "conversations[1].from: expected"),
    (conv_with(3, value=None), "record 1 (line 1): conversations[3].value: expected a string"),
    (conv_with(3, loss="yes"), 'conversations[3].loss: expected true, false or null, got "yes"'),
    (line_with(conversations=["hi"]), 'conversations[0]: expected an object, got "hi"'),
    (line_with(item_id=3), "item_id: expected a string, got 3"),
    (line_with(item_id="maze"), 'item_id: "maze" is not <env>_<index>'),
    (line_with(item_id="maze_x"), 'item_id: "maze_x" does not end in _<index>'),
    (line_with(reward="1"), 'reward: expected a number, got "1"'),
    (line_with(reward=True), "reward: expected a number, got true"),
    (line_with(success="yes"), 'success: expected a number, got "yes"'),
    (GOOD.replace('"item_id"', '"item_id": "x_1", "item_id"'), 'duplicate key "item_id"'),
    (GOOD.replace('"maze_1"}', '"maze_1", "reward": NaN}'), "NaN is not a JSON number"),
    (GOOD.replace("Ok.", "Ok.\\ud800"), "conversations[1].value: contains an unpaired"),
    ("", "not AgentTraj (empty; expected a JSON array or JSON Lines"),
    ("42\n", 'not AgentTraj (starts with "4"'),
    ("[]", "no AgentTraj records"),
    ("[\n" + GOOD + ",\n{oops}\n]", "not valid JSON: Expecting property name enclosed in double"),
    ("[" + GOOD + ", 5]", "record 2: expected a JSON object, got 5"),
    ('[{"reward": NaN}]', "not valid JSON: JSON is malformed"),
    ('{"a": 1}', "record 1 (line 1): conversations: missing"),
]


@pytest.mark.parametrize(("text", "message"), BAD_INPUTS)
def test_malformed_input_names_record_and_field_and_leaves_nothing(
    tmp_path: Path, text: str, message: str
) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text(text)
    with pytest.raises(AgentTrajError) as info:
        import_agenttraj(src, tmp_path / "store")
    line = str(info.value)
    assert line.startswith(f"{src}: ") and message in line, line
    assert "\n" not in line
    assert not (tmp_path / "store").exists()
    assert leftovers(tmp_path) == []


def test_not_utf8(tmp_path: Path) -> None:
    src = tmp_path / "latin1.jsonl"
    src.write_bytes(GOOD.replace("Ok.", "Ok\xe9").encode("latin-1"))
    with pytest.raises(AgentTrajError, match=r"not UTF-8 \(byte \d+\)"):
        import_agenttraj(src, tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_a_bad_record_after_good_ones_leaves_no_partial_store(tmp_path: Path) -> None:
    """Records 1-3 are written to the temporary store before record 4 is read: the failure
    removes them all."""
    lines = [line_with(item_id=f"maze_{i}") for i in range(3)] + [line_with(reward="x")]
    lines += [line_with(item_id="maze_9")]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    empty = tmp_path / "store"
    empty.mkdir()  # an empty folder may be the target; it stays as it was
    with pytest.raises(AgentTrajError, match=r"record 4 \(line 4\): reward"):
        import_agenttraj(src, empty)
    assert empty.is_dir() and list(empty.iterdir()) == []
    assert leftovers(tmp_path) == []
    # and the same file, fixed, imports into that folder
    src.write_text("\n".join(lines[:3]) + "\n")
    assert import_agenttraj(src, empty).trajectories == 3


def test_an_interrupted_import_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while record 3 is being written: the records before it go too."""
    import gymux.stores.agenttraj as agenttraj

    calls = []

    def encode(trajectory: Any) -> bytes:
        calls.append(trajectory.task_id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return encode_trajectory(trajectory)

    monkeypatch.setattr(agenttraj, "encode_trajectory", encode)
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonlines_text(inference_records()))
    with pytest.raises(KeyboardInterrupt):
        import_agenttraj(src, tmp_path / "store")
    assert calls == [10, 11, 12]
    assert not (tmp_path / "store").exists() and leftovers(tmp_path) == []


def test_an_existing_store_is_not_touched(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(GOOD + "\n")
    import_agenttraj(src, tmp_path / "s")
    before = sorted(p.name for p in (tmp_path / "s").rglob("*"))
    with pytest.raises(StoreError, match="already exists"):
        import_agenttraj(src, tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s").rglob("*")) == before


def test_parse_agenttraj_reads_lazily() -> None:
    """Records are checked as they are read: the first one comes before a later bad one
    is seen (so a big file is not held as decoded records)."""
    data = (GOOD + "\n" + "{bad\n").encode()
    layout, records = parse_agenttraj(data, name="mem")
    assert layout == "jsonl"
    first = next(records)
    assert first.number == 1 and first.line == 1 and first.style == "spaced-ascii"
    with pytest.raises(AgentTrajError, match="mem: record 2"):
        next(records)
