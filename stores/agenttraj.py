"""Importing AgentGym's AgentTraj files into a store, so that they export back exactly.

::

    result = import_agenttraj("AgentTraj-L/textcraft_train.json", "runs/agenttraj/store")
    export_agenttraj("runs/agenttraj/store", "back.jsonl")   # the same records, as JSONL
    export_agenttraj_source("runs/agenttraj/store", "back.json")   # the same file

**The input** is what AgentGym writes and publishes: a JSON array of records (the
``AgentTraj-L`` files, read by AgentGym's trainers with ``json.load``), JSON Lines (the
``inference.jsonl`` its trainers append with ``jsonlines``), or one record alone (the
per-item ``.json`` files of ``openai_eval_multiprocessing.py``). A record is::

    {"conversations": [{"from": "human"|"gpt", "loss": bool|null, "value": str}, ...],
     "item_id": "<prefix>_<index>", "reward": number, "success": 0|1|bool}

``reward`` and ``success`` are optional (AgentTraj-L has neither), and so is each turn's
``loss``; ``from`` may also be ``system``. Other keys are kept as they are.

**What a record becomes.** One :class:`~gymux.trajectory.Trajectory`:

* ``env_id``/``task_id`` from ``item_id``: the index after the last ``_`` is the task id
  (as AgentGym's ``int(item_id.split("_")[-1])``), the prefix before it names the env
  through :data:`AGENTGYM_ENVS` (``lmrlgym_maze`` is ``maze``, ...). A prefix that is no
  gymux env (``webshop``, ``alfworld``, ...) is kept as the env id, and reported.
* ``messages``: one per conversation turn, in order (``human`` -> ``user``, ``gpt`` ->
  ``assistant``, ``system`` -> ``system``), with the text verbatim; ``loss`` as given, and
  where it is ``null``, false on ``human`` turns and true on ``gpt`` ones (AgentGym's
  trainers learn from every ``gpt`` turn). ``turns``: one per learned ``gpt`` turn that
  answers a ``human`` one (``observation``, ``raw_output`` and the ``Action:`` found in it).
* ``reward``/``success`` from the record (0 and false when absent); ``finish_reason``
  ``done``; ``policy`` :data:`SOURCE` (``gymux store export --policy agenttraj`` selects
  imported records); ``split`` :data:`SOURCE`; ``sample``: how many earlier records of the
  file had the same ``item_id``; ``run_id`` ``agenttraj-<sha256 of the file, 12 digits>``.
* ``env_version`` holds the record's *layout*: ``agenttraj:1:`` and a JSON object with the
  record itself minus the conversation texts (those are the messages), the kind of file it
  came from, and the JSON style its line (or its file) was written in.
  :func:`agenttraj_line` rebuilds the record from both.

**Equivalence.** The exported record has the same keys in the same order (at every
level), the same strings, the same numbers of the same JSON type (``1`` stays ``1``,
``1.0`` stays ``1.0``, ``0`` is not ``false``) and the same ``null``\\ s, as the source.
Where the source line was written by Python's ``json`` module (compact or with the default
``", "``/``": "`` separators, with or without ``ensure_ascii``) or by msgspec, which covers
every JSON Lines file AgentGym and gymux write, the exported line is *byte-identical*
(the line ending is always ``\\n``). Otherwise (the records of a JSON array, hand-edited
lines) the exported line is the record re-written compactly, UTF-8, with Python's number
formatting: equal as above, different only in whitespace between tokens, string escapes
and the spelling of numbers (``1E5`` becomes ``100000.0``). :attr:`AgentTrajImport.exact`
counts the byte-identical records.

**The source file again.** :func:`export_agenttraj_source` writes imported records in the
layout of their file: a JSON array (or one record) that Python's ``json.dump(...,
indent=4 or 2)`` wrote, with or without ``ensure_ascii`` and a final newline (AgentGym's
``agentevol_filter.py`` and per-item eval files), comes back byte-identical; JSON Lines as
above.

**Errors.** Malformed input raises :class:`AgentTrajError`, whose message names the file,
the record (1-based; and its line in JSON Lines) and the field
(``conversations[2].from``). Nothing is left behind: the store is written into a
temporary folder beside ``out`` and renamed into place only when every record is in.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from gymux.errors import AgentTrajError
from gymux.messages import Message, Role
from gymux.react import last_action_marker
from gymux.stores.codec import encode_trajectory
from gymux.stores.errors import StoreError
from gymux.stores.format import RecordType
from gymux.stores.store import DEFAULT_STREAM, Store
from gymux.trajectory import FinishReason, Trajectory, Turn

__all__ = [
    "AGENTGYM_ENVS",
    "LAYOUT_PREFIX",
    "SOURCE",
    "AgentTrajError",
    "AgentTrajImport",
    "SourceExport",
    "agenttraj_line",
    "export_agenttraj_source",
    "import_agenttraj",
    "is_imported",
    "parse_agenttraj",
    "split_item_id",
]

#: AgentGym ``item_id`` prefixes (its task names) and the gymux env each one is. AgentGym
#: names LMRL-Gym's envs both ways: ``maze``/``wordle`` in ``examples/basic/*_eval*.py``,
#: ``lmrlgym_maze``/``lmrlgym_wordle`` in ``utils/agentevol_filter.py`` and the AgentEvol
#: scripts. Its other tasks (``webshop``, ``alfworld``, ``weather``, ``movie``, ``todo``,
#: ``academia``, ``sheet``, ``webarena``, ``searchqa``) have no gymux env. AgentGym's Wordle
#: is LMRL-Gym's game, gymux's ``lmrl-wordle`` (item N = seed N), not gymux's ``wordle``.
AGENTGYM_ENVS: Mapping[str, str] = {
    "babyai": "babyai",
    "lmrlgym_maze": "maze",
    "lmrlgym_wordle": "lmrl-wordle",
    "maze": "maze",
    "sciworld": "sciworld",
    "sqlgym": "sqlgym",
    "textcraft": "textcraft",
    "wordle": "lmrl-wordle",
}

#: ``policy`` and ``split`` of an imported trajectory.
SOURCE = "agenttraj"
#: How an imported trajectory's ``env_version`` starts (the layout's version is 1).
LAYOUT_PREFIX = "agenttraj:1:"

_ROLES: Mapping[str, Role] = {"human": "user", "gpt": "assistant", "system": "system"}
_MAX_TASK_DIGITS = 18  # fits an int64

#: JSON styles an input line can be recognised in (tried in this order).
Style = Literal["msgspec", "compact", "spaced", "compact-ascii", "spaced-ascii"]
_STYLES: tuple[Style, ...] = ("msgspec", "compact", "spaced", "compact-ascii", "spaced-ascii")


class AgentTrajImport(msgspec.Struct, kw_only=True):
    """What :func:`import_agenttraj` wrote."""

    source: str
    store: str
    stream: str
    #: ``jsonl``, ``json-array`` or ``json-object`` (one record alone).
    layout: str
    trajectories: int
    #: Records that export back byte-identical to their source line (see the module doc).
    exact: int
    #: :func:`export_agenttraj_source` gives the whole file back byte-identical.
    file_exact: bool
    #: Trajectories per gymux env id (unknown prefixes included, as they are).
    envs: dict[str, int]
    #: AgentGym prefixes seen that name a gymux env by another name (``lmrlgym_maze``).
    renamed: dict[str, str]
    #: Records per prefix that is no gymux env (kept as the env id).
    unknown: dict[str, int]


class SourceRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One record of an AgentTraj input, parsed and checked."""

    #: 1-based position in the input.
    number: int
    #: 1-based line in a JSON Lines input, else ``None``.
    line: int | None
    value: dict[str, Any]
    #: The style the source line is written in, when it is one of :data:`Style`.
    style: Style | None
    #: How the whole source file is written, when it is a JSON array or one record that
    #: Python's ``json.dump(..., indent=N)`` wrote: ``{"kind": "array"|"object", "indent": N,
    #: "ascii": ensure_ascii, "eol": a final newline}`` (see :func:`export_agenttraj_source`).
    file: dict[str, Any] | None = None


# -- errors -----------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A value as it appears in an error line: JSON, one line, at most 60 characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Invalid(Exception):
    """A problem in one record: the field and what is wrong with it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)


def _where(name: str, number: int, line: int | None) -> str:
    return f"{name}: record {number}" + (f" (line {line})" if line is not None else "")


# -- JSON with key order, number types and duplicate keys kept honest --------------------


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _Invalid("", f"duplicate key {_show(key)}")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise _Invalid("", f"{name} is not a JSON number")


def _loads(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)


def _render(value: Any, style: Style | None) -> bytes:
    """``value`` as one line of JSON in ``style`` (``None``: compact UTF-8)."""
    if style == "msgspec":
        return msgspec.json.encode(value)
    ascii_only = style is not None and style.endswith("-ascii")
    separators = (", ", ": ") if style is not None and style.startswith("spaced") else (",", ":")
    return json.dumps(value, ensure_ascii=ascii_only, separators=separators).encode()


def _pretty(value: Any, indent: int, ascii_only: bool, depth: int) -> str:
    """``value`` as ``json.dump(..., indent=indent)`` writes it at nesting ``depth``."""
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only)
    return text.replace("\n", "\n" + " " * (indent * depth)) if depth else text


def _style_of(value: Any, raw: bytes) -> Style | None:
    # ensure_ascii output is ASCII; without it, output is ASCII only when it equals the
    # ensure_ascii one: so an ASCII line needs the -ascii styles alone, and others none
    ascii_line = raw.isascii()
    for style in _STYLES:
        if style != "msgspec" and style.endswith("-ascii") != ascii_line:
            continue
        try:
            if _render(value, style) == raw:
                return style
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
            continue
    return None


# -- checking a record ------------------------------------------------------------------


def split_item_id(item_id: str) -> tuple[str, int]:
    """``(prefix, index)`` of an AgentGym ``item_id`` (``lmrlgym_maze_3`` -> ``("lmrlgym_maze",
    3)``); :class:`ValueError` unless it is ``<prefix>_<decimal index>``."""
    prefix, sep, index = item_id.rpartition("_")
    if not sep or not prefix:
        raise ValueError(f"{_show(item_id)} is not <env>_<index>")
    if not (index.isascii() and index.isdigit()) or len(index) > _MAX_TASK_DIGITS:
        raise ValueError(f"{_show(item_id)} does not end in _<index> (a decimal integer)")
    return prefix, int(index)


def _check_text(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(field, f"expected a string, got {_show(value)}")
    return value


#: A ``\uD800``-``\uDFFF`` escape: the only way a JSON text that is valid UTF-8 can hold
#: a string that is not (an unpaired surrogate).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(field, f"expected a number, got {_show(value)}")
    if not math.isfinite(value):
        raise _Invalid(field, f"expected a finite number, got {_show(value)}")
    return float(value)


def _check_record(value: Any) -> None:
    if not isinstance(value, dict):
        raise _Invalid("", f"expected a JSON object, got {_show(value)}")
    if "conversations" not in value:
        raise _Invalid("conversations", "missing")
    conversations = value["conversations"]
    if not isinstance(conversations, list):
        hint = " (an AgentEval task list has no trajectories)" if conversations is None else ""
        raise _Invalid("conversations", f"expected a list, got {_show(conversations)}{hint}")
    for i, turn in enumerate(conversations):
        field = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise _Invalid(field, f"expected an object, got {_show(turn)}")
        if "from" not in turn:
            raise _Invalid(f"{field}.from", "missing")
        if not isinstance(turn["from"], str) or turn["from"] not in _ROLES:
            raise _Invalid(
                f"{field}.from", f'expected "human", "gpt" or "system", got {_show(turn["from"])}'
            )
        if "value" not in turn:
            raise _Invalid(f"{field}.value", "missing")
        _check_text(f"{field}.value", turn["value"])
        if turn.get("loss") is not None and not isinstance(turn["loss"], bool):
            raise _Invalid(
                f"{field}.loss", f"expected true, false or null, got {_show(turn['loss'])}"
            )
    if "item_id" not in value:
        raise _Invalid("item_id", "missing")
    item_id = _check_text("item_id", value["item_id"])
    try:
        split_item_id(item_id)
    except ValueError as exc:
        raise _Invalid("item_id", str(exc)) from None
    if "reward" in value:
        _check_number("reward", value["reward"])
    if "success" in value and not isinstance(value["success"], bool):
        _check_number("success", value["success"])


def _check_strings(value: Any, field: str) -> None:
    """Every string (keys too) encodes as UTF-8: the store keeps text as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Invalid(field or "record", "contains an unpaired UTF-16 surrogate") from None
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_strings(item, f"{field}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, f"{field}{'.' if field else ''}<key>")
            _check_strings(item, f"{field}{'.' if field else ''}{key}")


# -- reading an input -------------------------------------------------------------------


def _record(
    name: str,
    number: int,
    line: int | None,
    text: str,
    raw: bytes | None,
    frame: dict[str, Any] | None = None,
) -> SourceRecord:
    """Record ``number``, parsed and checked. ``raw``: its bytes, a line of JSON Lines;
    ``frame``: how the file around it is written (``kind``, ``indent``, ``eol``), when that
    is ``json.dump``'s framing: the record's own text then tells ``ensure_ascii``."""
    try:
        try:
            value = _loads(text)
        except json.JSONDecodeError as exc:
            raise _Invalid("", f"not valid JSON: {exc.msg} at column {exc.colno}") from None
        _check_record(value)
        if _SURROGATE_ESCAPE.search(text):
            _check_strings(value, "")
    except _Invalid as exc:
        raise AgentTrajError(f"{_where(name, number, line)}: {exc}") from None
    except RecursionError:
        raise AgentTrajError(f"{_where(name, number, line)}: nested too deeply") from None
    style = _style_of(value, raw) if raw is not None else None
    file = None
    if frame is not None:
        depth = 1 if frame["kind"] == "array" else 0
        ascii_only = text.isascii()  # (as in _style_of)
        if _pretty(value, frame["indent"], ascii_only, depth) == text:
            file = {**frame, "ascii": ascii_only}
    return SourceRecord(number=number, line=line, value=value, style=style, file=file)


def _decode(data: bytes, name: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AgentTrajError(f"{name}: not UTF-8 (byte {exc.start})") from None
    return text.removeprefix("\ufeff")


_INDENTS = (4, 2)


def _array_frame(data: bytes, elements: list[msgspec.Raw]) -> dict[str, Any] | None:
    """How ``json.dump(records, f, indent=N)`` frames the elements, if that wrote ``data``."""
    for indent in _INDENTS:
        pad = b" " * indent
        framed = b"[\n" + pad + (b",\n" + pad).join(bytes(e) for e in elements) + b"\n]"
        if data in (framed, framed + b"\n"):
            return {"kind": "array", "indent": indent, "eol": data.endswith(b"\n")}
    return None


def _object_frame(text: str) -> dict[str, Any] | None:
    """How ``json.dump(record, f, indent=N)`` wrote ``text``, if it did (the indent is the
    one of its second line)."""
    second = text.split("\n", 2)[1] if text.count("\n") >= 1 else ""
    indent = len(second) - len(second.lstrip(" "))
    if indent not in _INDENTS:
        return None
    return {"kind": "object", "indent": indent, "eol": text.endswith("}\n")}


def _array(data: bytes, text: str, name: str) -> Iterator[SourceRecord]:
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        elements = msgspec.json.decode(data, type=list[msgspec.Raw])
    except msgspec.DecodeError as error:
        try:  # for the line and column of the problem
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise AgentTrajError(
                f"{name}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        except (ValueError, RecursionError):
            pass
        raise AgentTrajError(f"{name}: not valid JSON: {error}") from None
    frame = _array_frame(data, elements)
    for number, element in enumerate(elements, 1):
        yield _record(name, number, None, bytes(element).decode("utf-8"), None, frame)


def _lines(text: str, name: str) -> Iterator[SourceRecord]:
    number = 0
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        number += 1
        yield _record(name, number, lineno, line, line.encode("utf-8"))


_SPACE = re.compile(r"\s*")
_NOT_SPACE = re.compile(r"\S")


def _layout_of(data: bytes, text: str, name: str) -> str:
    space = _SPACE.match(text)
    start = space.end() if space is not None else 0
    first = text[start : start + 1]
    if first == "[":
        return "json-array"
    if first != "{":
        what = "empty" if not first else f"starts with {_show(first)}"
        raise AgentTrajError(
            f"{name}: not AgentTraj ({what}; expected a JSON array or JSON Lines of records)"
        )
    end = text.find("\n", start)
    if end >= 0 and _NOT_SPACE.search(text, end):
        try:
            json.loads(text[start:end])
        except (json.JSONDecodeError, RecursionError):
            try:  # one pretty-printed record
                if isinstance(json.loads(text), dict):
                    return "json-object"
            except (json.JSONDecodeError, RecursionError):
                pass
    return "jsonl"


def parse_agenttraj(data: bytes, *, name: str = "<input>") -> tuple[str, Iterator[SourceRecord]]:
    """The layout of an AgentTraj input (``jsonl``, ``json-array``, ``json-object``) and
    its records, checked one by one as they are read (:class:`AgentTrajError` at the first
    bad one)."""
    text = _decode(data, name)
    layout = _layout_of(data, text, name)
    if layout == "json-array":
        return layout, _array(data, text, name)
    if layout == "json-object":
        body = text.removesuffix("\n")
        return layout, iter([_record(name, 1, None, body, None, _object_frame(text))])
    return layout, _lines(text, name)


# -- a record as a trajectory, and back ---------------------------------------------------


def _messages(conversations: list[dict[str, Any]]) -> list[Message]:
    out = []
    for turn in conversations:
        role = _ROLES[turn["from"]]
        loss = turn.get("loss")
        out.append(
            Message(
                role=role,
                content=turn["value"],
                loss=loss if isinstance(loss, bool) else role == "assistant",
            )
        )
    return out


def _turns(messages: list[Message]) -> list[Turn]:
    turns: list[Turn] = []
    for before, message in itertools.pairwise(messages):
        if message.role != "assistant" or not message.loss or before.role != "user":
            continue
        marker = last_action_marker(message.content)
        action = message.content[marker.end() :].strip() if marker is not None else None
        turns.append(
            Turn(
                index=len(turns),
                observation=before.content,
                raw_output=message.content,
                action=action or None,
            )
        )
    return turns


def _layout(record: SourceRecord, source: str) -> str:
    skeleton = dict(record.value)
    skeleton["conversations"] = [
        {key: (None if key == "value" else item) for key, item in turn.items()}
        for turn in record.value["conversations"]
    ]
    layout = {"source": source, "style": record.style, "file": record.file, "record": skeleton}
    return LAYOUT_PREFIX + json.dumps(layout, ensure_ascii=False, separators=(",", ":"))


def to_trajectory(
    record: SourceRecord, *, run_id: str, sample: int, source: str = "jsonl"
) -> Trajectory:
    """The trajectory that stores ``record`` of a ``source`` input (``jsonl``,
    ``json-array``, ``json-object``; see the module docstring)."""
    value = record.value
    prefix, task_id = split_item_id(value["item_id"])
    messages = _messages(value["conversations"])
    success = value.get("success", False)
    return Trajectory(
        run_id=run_id,
        episode_id=f"{run_id}:{record.number}",
        env_id=AGENTGYM_ENVS.get(prefix, prefix),
        env_version=_layout(record, source),
        task_id=task_id,
        split=SOURCE,
        sample=sample,
        policy=SOURCE,
        policy_version="",
        messages=messages,
        turns=_turns(messages),
        reward=float(value.get("reward", 0.0)),
        success=bool(success),
        finish_reason=FinishReason.DONE,
    )


def is_imported(trajectory: Trajectory) -> bool:
    """Whether ``trajectory`` was imported from AgentTraj (it carries its source layout)."""
    return trajectory.policy == SOURCE and trajectory.env_version.startswith(LAYOUT_PREFIX)


class _Source(msgspec.Struct, frozen=True):
    """An imported trajectory's source record and how its file was written."""

    record: dict[str, Any]
    #: ``jsonl``, ``json-array`` or ``json-object``.
    source: str
    style: Style | None
    file: dict[str, Any] | None


def _source(trajectory: Trajectory) -> _Source:
    if not is_imported(trajectory):
        raise StoreError(f"trajectory {trajectory.episode_id} was not imported from AgentTraj")
    where = f"trajectory {trajectory.episode_id}"
    try:
        layout = _loads(trajectory.env_version[len(LAYOUT_PREFIX) :])
        record = dict(layout["record"])
        turns = record["conversations"]
        style, file, source = layout["style"], layout.get("file"), layout.get("source", "jsonl")
        if not isinstance(turns, list) or style not in (*_STYLES, None):
            raise TypeError(style)
    except (ValueError, KeyError, TypeError, _Invalid):
        raise StoreError(f"{where}: its AgentTraj layout is unreadable") from None
    if len(turns) != len(trajectory.messages):
        raise StoreError(
            f"{where}: its AgentTraj layout has {len(turns)} turns, which does not match "
            f"its {len(trajectory.messages)} messages"
        )
    record["conversations"] = [
        {key: (message.content if key == "value" else item) for key, item in turn.items()}
        for turn, message in zip(turns, trajectory.messages, strict=True)
    ]
    return _Source(record=record, source=source, style=style, file=file)


def agenttraj_line(trajectory: Trajectory) -> bytes:
    """The AgentTraj record an imported trajectory came from, as one line of JSON (no line
    ending): byte-identical to the source line where its style was recognised."""
    src = _source(trajectory)
    return _render(src.record, src.style)


class SourceExport(msgspec.Struct, kw_only=True):
    """What :func:`export_agenttraj_source` wrote."""

    path: str
    #: ``jsonl``, ``json-array`` or ``json-object``: the layout of the source file.
    layout: str
    trajectories: int
    bytes: int
    #: Every record, and the file around them, in the style recognised at import: the
    #: file is byte-identical to the source when the export selects all its records.
    exact: bool


#: How a JSON array is written back when its source's style was not recognised (as
#: AgentGym's ``utils/agentevol_filter.py`` writes its training files).
_DEFAULT_FILE: dict[str, Any] = {"indent": 4, "ascii": False, "eol": False}


def _write_source(fh: Any, sources: Iterator[_Source]) -> tuple[str, int, bool]:
    """Write ``sources`` in the layout of the first one's file; ``(layout, count, exact)``."""
    first = next(sources, None)
    if first is None:
        return "jsonl", 0, True
    layout, frame = first.source, first.file
    exact = frame is not None or layout == "jsonl"
    if frame is None:
        frame = _DEFAULT_FILE
    count = 0
    if layout == "jsonl":
        for src in itertools.chain([first], sources):
            exact = exact and src.source == "jsonl" and src.style is not None
            fh.write(_render(src.record, src.style) + b"\n")
            count += 1
        return layout, count, exact
    pad = " " * frame["indent"]
    depth = 1 if layout == "json-array" else 0
    parts = [b"[\n" + pad.encode()] if depth else []
    same = ("kind", "indent", "eol")
    for src in itertools.chain([first], sources):
        fits = src.file is not None and all(src.file[k] == frame[k] for k in same)
        exact = exact and src.source == layout and fits
        # each record's own ensure_ascii (a pure-ASCII record is written alike either way)
        ascii_only = src.file["ascii"] if src.file is not None and fits else frame["ascii"]
        if count:
            if not depth:  # one record was asked for, several were found: an array
                raise StoreError(
                    "the records come from a file of one record (json-object); select one"
                )
            parts.append((",\n" + pad).encode())
        parts.append(_pretty(src.record, frame["indent"], ascii_only, depth).encode())
        count += 1
        fh.write(b"".join(parts))
        parts.clear()
    tail = "\n]" if depth else ""
    fh.write((tail + ("\n" if frame["eol"] else "")).encode())
    return layout, count, exact


def export_agenttraj_source(
    store: str | os.PathLike[str] | Store,
    out: str | os.PathLike[str],
    *,
    stream: str = DEFAULT_STREAM,
    **filters: Any,
) -> SourceExport:
    """Write imported records back in the layout of the file they came from: JSON Lines
    as :func:`~gymux.stores.export.export_agenttraj` does, a JSON array or a single record
    pretty-printed as ``json.dump(..., indent=N)`` wrote it (byte-identical where its style
    was recognised at import; see :attr:`SourceExport.exact`). ``filters`` are
    :func:`~gymux.stores.codec.make_filter`'s. A trajectory that was not imported raises
    :class:`StoreError` (``export_agenttraj`` writes any trajectory). Written to
    ``OUT.tmp`` and renamed into place when complete."""
    st = store if isinstance(store, Store) else Store(store, create=False)
    st.existing_stream(stream)
    path = Path(out)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            sources = (_source(t) for t in st.trajectories(stream, **filters))
            layout, count, exact = _write_source(fh, sources)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return SourceExport(
        path=str(path), layout=layout, trajectories=count, bytes=path.stat().st_size, exact=exact
    )


# -- importing a file into a new store -------------------------------------------------


def _temporary(out: Path) -> Path:
    return out.with_name(f".{out.name}.import-{os.getpid()}")


def import_agenttraj(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    stream: str = DEFAULT_STREAM,
) -> AgentTrajImport:
    """Import the AgentTraj file ``source`` into a new store at ``out`` (which must not
    exist, or be an empty folder). All or nothing: on any error no store is left at ``out``.
    """
    source_path, out_path = Path(source), Path(out)
    name = str(source_path)
    if out_path.exists() and (not out_path.is_dir() or any(out_path.iterdir())):
        raise StoreError(f"{out_path} already exists (import writes a new store)")
    data = source_path.read_bytes()
    run_id = f"{SOURCE}-{hashlib.sha256(data).hexdigest()[:12]}"
    layout, records = parse_agenttraj(data, name=name)
    tmp = _temporary(out_path)
    shutil.rmtree(tmp, ignore_errors=True)
    seen: dict[str, int] = {}
    envs: dict[str, int] = {}
    renamed: dict[str, str] = {}
    unknown: dict[str, int] = {}
    count = exact = 0
    file_exact = True
    try:
        store = Store(tmp)
        with store.writer(stream, durability="os") as writer:
            for record in records:
                item_id = record.value["item_id"]
                trajectory = to_trajectory(
                    record, run_id=run_id, sample=seen.get(item_id, 0), source=layout
                )
                seen[item_id] = seen.get(item_id, 0) + 1
                writer.append(encode_trajectory(trajectory), RecordType.TRAJECTORY)
                prefix, _ = split_item_id(item_id)
                envs[trajectory.env_id] = envs.get(trajectory.env_id, 0) + 1
                if prefix not in AGENTGYM_ENVS:
                    unknown[prefix] = unknown.get(prefix, 0) + 1
                elif AGENTGYM_ENVS[prefix] != prefix:
                    renamed[prefix] = AGENTGYM_ENVS[prefix]
                count += 1
                exact += record.style is not None
                recognised = record.style if layout == "jsonl" else record.file
                file_exact = file_exact and recognised is not None
        if not count:
            raise AgentTrajError(f"{name}: no AgentTraj records")
        if out_path.is_dir():
            out_path.rmdir()
        os.replace(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return AgentTrajImport(
        source=name,
        store=str(out_path),
        stream=stream,
        layout=layout,
        trajectories=count,
        exact=exact,
        file_exact=file_exact,
        envs=dict(sorted(envs.items())),
        renamed=dict(sorted(renamed.items())),
        unknown=dict(sorted(unknown.items())),
    )
