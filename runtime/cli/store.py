"""``gymux store``: look after a trajectory store from the command line.

::

    gymux store info PATH [--stream S] [--segments] [--json]
    gymux store tail PATH [--stream S] [-n N] [--follow] [--json]
    gymux store verify PATH [--stream S] [--json]          # exit 0 clean, 1 damaged
    gymux store export PATH --format agenttraj|chat|parquet -o FILE
                      [--env E]... [--success | --failed] [--min-policy-step N] ...
    gymux store compact PATH [--stream S] [--target-mb MB] [--salvage] [--json]
    gymux store import FILE --out STORE [--format agenttraj] [--stream S] [--json]
    gymux store reverify PATH [--env E]... [--limit N] [--json]  # exit 0 agree, 1 differ

PATH is the store folder (``runs/x/store``) or the run folder holding it (``runs/x``).
``import`` writes a new store at STORE from an AgentGym AgentTraj file (a JSON array or
JSON Lines; see :mod:`gymux.stores.agenttraj`): all or nothing, and a malformed record is
bad input (exit 2) whose line names the record and the field.
Bare ``gymux store`` prints this command list. Bad input (no store at PATH, an unknown
stream, a bad option) prints one line
``gymux: error: ...`` on stderr and exits 2; an operation that fails on a good input (a
stream locked by a writer, damage found while exporting or compacting) exits 1.
"""

from __future__ import annotations

import argparse
import collections
import functools
import itertools
import sys
from pathlib import Path
from typing import Any

import anyio
import msgspec

from gymux.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    add_command,
    non_negative_int,
    positive_float_of,
    positive_int,
)
from gymux.cli.common import err as _err
from gymux.cli.common import out as _out
from gymux.env_plugins.registry import Registry
from gymux.stores.agenttraj import (
    AgentTrajError,
    AgentTrajImport,
    export_agenttraj_source,
    import_agenttraj,
)
from gymux.stores.codec import TrajectoryMeta, decode_meta
from gymux.stores.errors import StoreError
from gymux.stores.export import FORMATS, export
from gymux.stores.format import SEGMENT_HEADER, segment_name
from gymux.stores.maintenance import (
    DEFAULT_TARGET_BYTES,
    CompactResult,
    StreamInfo,
    VerifyReport,
    compact,
    store_info,
    verify,
)
from gymux.stores.reader import Position, StreamReader
from gymux.stores.store import DEFAULT_STREAM, Store, trajectory_records
from gymux.trajectory import FinishReason

__all__ = ["add_parser", "run"]

#: Formats ``gymux store import --format`` reads.
IMPORT_FORMATS = ("agenttraj",)


#: The one-line description of ``gymux store`` and the examples its help shows.
SUMMARY = "inspect, tail, verify, export, compact or import a store"
EXAMPLES = (
    "gymux store verify runs/demo",
    "gymux store tail runs/demo -n 5",
    "gymux store import AgentTraj-L.json --out runs/agenttraj/store",
)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def add_parser(sub: Any) -> None:
    """Register ``gymux store`` and its subcommands on the top-level subparsers."""
    store = add_command(sub, "store", SUMMARY, *EXAMPLES)
    store.set_defaults(store_parser=store)
    cmds = store.add_subparsers(dest="store_command", title="commands", metavar="COMMAND")

    def command(
        name: str, summary: str, example: str, *, all_streams: bool = False
    ) -> argparse.ArgumentParser:
        """Subcommand ``name`` of ``gymux store`` with its ``PATH`` and ``--stream``."""
        p = add_command(cmds, name, summary, example)
        p.add_argument(
            "path",
            metavar="PATH",
            help="the store folder (runs/x/store) or the run folder holding it (runs/x)",
        )
        stream_help = (
            "only this stream (default: all)"
            if all_streams
            else f"stream (default: {DEFAULT_STREAM})"
        )
        p.add_argument("--stream", help=stream_help)
        return p

    info = command(
        "info",
        "streams, segments, records, committed position, writer",
        "gymux store info runs/demo --segments",
        all_streams=True,
    )
    info.add_argument("--segments", action="store_true", help="also list every segment")
    info.add_argument("--json", action="store_true", help="print JSON")

    tail = command(
        "tail",
        "the latest trajectories, one line each",
        "gymux store tail runs/demo -n 20 --follow",
    )
    tail.add_argument(
        "-n", "--n", dest="n", type=non_negative_int, default=10, help="how many to show"
    )
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new ones")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")

    ver = command(
        "verify",
        "check every record and index; exit 1 if damaged",
        "gymux store verify runs/demo",
        all_streams=True,
    )
    ver.add_argument("--json", action="store_true", help="print JSON")

    exp = command(
        "export",
        "write trajectories as AgentTraj/chat JSONL or Parquet",
        "gymux store export runs/demo --format chat --success -o demo-chat.jsonl",
    )
    exp.add_argument(
        "--format",
        required=True,
        choices=[*FORMATS, SOURCE_FORMAT],
        help=f"output format ({SOURCE_FORMAT}: imported AgentTraj records in the layout of "
        "the file they came from, e.g. a JSON array)",
    )
    exp.add_argument("--out", "-o", required=True, help="output file ('-': stdout, JSONL only)")
    exp.add_argument("--env", action="append", help="only this env (repeatable)")
    outcome = exp.add_mutually_exclusive_group()
    outcome.add_argument("--success", action="store_true", help="only successful episodes")
    outcome.add_argument("--failed", action="store_true", help="only failed episodes")
    exp.add_argument("--min-policy-step", type=non_negative_int, help="only policy_step >= N")
    exp.add_argument("--policy", help="only this policy")
    exp.add_argument("--split", help="only this task split")
    exp.add_argument(
        "--finish-reason",
        action="append",
        choices=[r.value for r in FinishReason],
        help="only these finish reasons (repeatable)",
    )
    exp.add_argument("--committed-only", action="store_true", help="stop at the durable offset")
    exp.add_argument("--salvage", action="store_true", help="skip damaged records")

    com = command(
        "compact",
        "merge small sealed segments; rebuild indexes",
        "gymux store compact runs/demo --target-mb 64",
    )
    com.add_argument(
        "--target-mb",
        type=positive_float_of("MiB"),
        default=DEFAULT_TARGET_BYTES / 2**20,
        help="size of a merged segment in MiB",
    )
    com.add_argument("--salvage", action="store_true", help="drop damaged ranges (reported)")
    com.add_argument("--json", action="store_true", help="print JSON")

    rev = command(
        "reverify",
        "replay the stored actions in fresh envs and compare the rewards (no model)",
        "gymux store reverify runs/demo --env maze",
    )
    rev.add_argument("--env", action="append", help="only this env (repeatable)")
    rev.add_argument("--limit", type=non_negative_int, help="at most N trajectories")
    rev.add_argument(
        "--concurrency", type=positive_int, default=8, help="episodes replayed at once"
    )
    rev.add_argument("--json", action="store_true", help="print JSON")

    imp = add_command(
        cmds,
        "import",
        "write an AgentGym AgentTraj file (JSON array or JSON Lines) into a new store",
        "gymux store import inference.jsonl --out runs/agenttraj/store",
    )
    imp.add_argument("file", metavar="FILE", help="the AgentTraj file (.json or .jsonl)")
    imp.add_argument(
        "--out", "-o", required=True, help="the new store's folder (must not exist, or be empty)"
    )
    imp.add_argument("--format", choices=IMPORT_FORMATS, default="agenttraj", help="input format")
    imp.add_argument("--stream", default=DEFAULT_STREAM, help=f"stream (default: {DEFAULT_STREAM})")
    imp.add_argument("--json", action="store_true", help="print JSON")


# -- commands ---------------------------------------------------------------------------


def _store(args: argparse.Namespace) -> Store:
    """The store at ``PATH``, or in ``PATH/store`` when PATH is the run folder holding it."""
    path = Path(args.path)
    if not path.exists():
        raise UsageError(f"no such store: {path}")
    try:
        return Store(path, create=False)
    except StoreError as exc:
        inner = path / "store"
        if inner.is_dir():
            try:
                return Store(inner, create=False)
            except StoreError as inner_exc:
                raise UsageError(f"{inner}: {inner_exc}") from None
        raise UsageError(
            f"{exc} (a gymux run keeps its store in OUT/store; give that folder or OUT)"
        ) from None


def _stream(store: Store, name: str | None) -> str:
    stream = name or DEFAULT_STREAM
    try:
        exists = store.stream_path(stream).is_dir()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not exists:
        known = ", ".join(store.streams()) or "none"
        raise UsageError(f"no stream {stream!r} in {store.path} (streams: {known})")
    return stream


def _info_lines(stream: StreamInfo, segments: bool) -> list[str]:
    seqs = f"seq {stream.first_seq}-{stream.last_seq}" if stream.first_seq is not None else "no seq"
    lines = [
        f"stream {stream.name}: {stream.records} records ({seqs}), {stream.segments} segment(s), "
        f"{_size(stream.bytes)}"
    ]
    c = stream.committed
    if c is None:
        lines.append("  committed: none published")
    else:
        lines.append(
            f"  committed: next seq {c.next_seq} ({segment_name(c.segment)} byte {c.offset})"
        )
    lines.append(f"  writer: {stream.writer or 'none'}")
    if stream.tail_bytes:
        lines.append(f"  active segment tail: {stream.tail_bytes} bytes after the last record")
    if segments:
        for seg in stream.segment_list:
            last = f"..{seg.last_seq}" if seg.last_seq is not None else ""
            state = "sealed" if seg.sealed else "active"
            indexed = "indexed" if seg.indexed else "no index" if seg.sealed else ""
            lines.append(
                f"  {seg.name}  {state}  {seg.records:>8} records  seq {seg.first_seq}{last}  "
                f"{_size(seg.bytes)}  {indexed}".rstrip()
            )
    return lines


def _cmd_info(args: argparse.Namespace) -> int:
    store = _store(args)
    stream = _stream(store, args.stream) if args.stream else None
    info = store_info(store, stream)
    if args.json:
        _out(msgspec.json.encode(info).decode())
        return EXIT_OK
    _out(f"store {info.path} (format {info.format_version}), {len(info.streams)} stream(s)")
    for s in info.streams:
        for line in _info_lines(s, args.segments):
            _out(line)
    return EXIT_OK


def _tail_line(seq: int, meta: TrajectoryMeta, as_json: bool) -> str:
    if as_json:
        return msgspec.json.encode(
            {
                "seq": seq,
                "env": meta.env_id,
                "task_id": meta.task_id,
                "reward": meta.reward,
                "success": meta.success,
                "finish_reason": meta.finish_reason,
                "episode_id": meta.episode_id,
                "policy": meta.policy,
                "num_turns": meta.num_turns,
            }
        ).decode()
    ok = "yes" if meta.success else "no"
    return (
        f"{seq:>8}  {meta.env_id:<10} {meta.task_id:>6}  {meta.reward:>8.3f}  {ok:<7}  "
        f"{meta.finish_reason}"
    )


_TAIL_HEADER = f"{'seq':>8}  {'env':<10} {'task':>6}  {'reward':>8}  {'success':<7}  finish"


def _last(reader: StreamReader, n: int) -> tuple[list[tuple[int, TrajectoryMeta]], Position]:
    """The last ``n`` trajectories and the position after the last record."""
    firsts = reader.segments()
    if not firsts:
        return [], reader.start()
    # Start from the newest segments whose indexes together count at least n records.
    start = len(firsts) - 1
    have = 0
    while start > 0:
        have += reader.index(firsts[start]).count
        if have >= n:
            break
        start -= 1
    while True:
        first = firsts[start]
        pos = Position(first, SEGMENT_HEADER.size, first)
        last: collections.deque[tuple[int, TrajectoryMeta]] = collections.deque(maxlen=n)
        for record in reader.records(pos):
            pos = record.next
            for member in trajectory_records([record], None):  # a group: each member
                if n:
                    last.append((member.seq, decode_meta(member.payload)))
        if len(last) >= n or start == 0:
            return list(last), pos
        start = 0  # other record types in between: read it all


def _cmd_tail(args: argparse.Namespace) -> int:
    store = _store(args)
    stream = _stream(store, args.stream)
    reader = store.reader(stream)
    try:
        rows, pos = _last(reader, args.n)
        if not args.json:
            _out(_TAIL_HEADER)
        for seq, meta in rows:
            _out(_tail_line(seq, meta, args.json))
        sys.stdout.flush()
        if not args.follow:
            return EXIT_OK
        for record in reader.records(pos, follow=True, poll_s=0.05):
            for member in trajectory_records([record], None):  # a group: each member
                _out(_tail_line(member.seq, decode_meta(member.payload), args.json))
                sys.stdout.flush()
    except KeyboardInterrupt:  # Ctrl-C is how --follow ends
        sys.stdout.flush()
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    store = _store(args)
    stream = _stream(store, args.stream) if args.stream else None
    report: VerifyReport = verify(store, stream)
    if args.json:
        _out(msgspec.json.encode(report).decode())
        return EXIT_OK if report.clean else EXIT_FAILED
    _out(f"verify {report.path}")
    for s in report.streams:
        state = "clean" if not s.problems else f"{len(s.problems)} problem(s)"
        writer = f", writer: {s.writer}" if s.writer else ""
        _out(
            f"stream {s.name}: {s.segments} segment(s), {s.records} valid records: {state}{writer}"
        )
        for p in s.problems:
            _out(f"  {p.kind.upper():<22} {p.where}: {p.reason}")
        for note in s.notes:
            _out(f"  note: {note}")
    problems = report.problems
    if report.clean:
        _out("result: clean")
        return EXIT_OK
    damaged = sum(p.bytes for p in problems)
    _out(f"result: DAMAGED ({len(problems)} problem(s), {damaged} bytes in damaged ranges)")
    return EXIT_FAILED


#: ``gymux store export --format agenttraj-source``: see :func:`export_agenttraj_source`.
SOURCE_FORMAT = "agenttraj-source"


def _export_source(
    store: Store, stream: str, args: argparse.Namespace, filters: dict[str, Any]
) -> int:
    for flag, given in (
        ("--out -", args.out == "-"),
        ("--committed-only", args.committed_only),
        ("--salvage", args.salvage),
    ):
        if given:
            raise UsageError(f"{flag} does not apply to --format {SOURCE_FORMAT}")
    result = export_agenttraj_source(store, args.out, stream=stream, **filters)
    exact = ", byte-identical to its source" if result.exact else ""
    _out(
        f"exported {result.trajectories} trajectories ({SOURCE_FORMAT}: {result.layout}{exact}) "
        f"to {result.path} ({_size(result.bytes)})"
    )
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    store = _store(args)
    stream = _stream(store, args.stream)
    to_stdout = args.out == "-"
    if to_stdout and args.format == "parquet":
        raise UsageError("--out -: Parquet cannot be written to stdout; give a file name")
    if not to_stdout and not Path(args.out).resolve().parent.is_dir():
        raise UsageError(f"--out: folder {Path(args.out).parent} does not exist")
    filters: dict[str, Any] = {
        "env": args.env,
        "success": True if args.success else False if args.failed else None,
        "min_policy_step": args.min_policy_step,
        "policy": args.policy,
        "split": args.split,
        "finish_reasons": args.finish_reason,
    }
    if args.format == SOURCE_FORMAT:
        return _export_source(store, stream, args, filters)
    result = export(
        store,
        sys.stdout.buffer if to_stdout else args.out,
        args.format,
        stream=stream,
        committed_only=args.committed_only,
        salvage=args.salvage,
        **filters,
    )
    if to_stdout:
        sys.stdout.flush()
        return EXIT_OK
    _out(
        f"exported {result.trajectories} trajectories ({result.format}) to {result.path} "
        f"({_size(result.bytes)})"
    )
    if result.skipped_bytes:
        _out(f"salvage: skipped {result.skipped_bytes} damaged bytes")
    return EXIT_OK


def _compact_lines(r: CompactResult) -> list[str]:
    lines = [
        f"compacted {r.stream}: {r.segments_before} -> {r.segments_after} segment(s) "
        f"({r.segments_written} written, {r.indexes_rebuilt} index(es) rebuilt), "
        f"{r.records} records, {_size(r.bytes_before)} -> {_size(r.bytes_after)}"
    ]
    if r.resumed:
        lines.insert(0, "finished an interrupted compaction first")
    if r.dropped:
        lines.append(f"salvage dropped {len(r.dropped)} range(s), {r.dropped_bytes} bytes:")
        for d in r.dropped:
            lines.append(f"  {d.segment} bytes {d.start}-{d.end} ({d.end - d.start}): {d.reason}")
    return lines


def _cmd_compact(args: argparse.Namespace) -> int:
    store = _store(args)
    stream = _stream(store, args.stream)
    target = int(args.target_mb * 2**20)
    if target <= SEGMENT_HEADER.size:
        raise UsageError(f"--target-mb: a segment must hold more than {SEGMENT_HEADER.size} bytes")
    result = compact(store, stream, target_bytes=target, salvage=args.salvage)
    if args.json:
        _out(msgspec.json.encode(result).decode())
    else:
        for line in _compact_lines(result):
            _out(line)
    return EXIT_OK


def _import_lines(r: AgentTrajImport) -> list[str]:
    lines = [
        f"imported {r.trajectories} trajectories (agenttraj, {r.layout}) from {r.source} "
        f"into {r.store} (stream {r.stream})",
        "  envs: " + ", ".join(f"{env} {n}" for env, n in r.envs.items()),
    ]
    if r.renamed:
        mapped = ", ".join(f"{prefix} -> {env}" for prefix, env in r.renamed.items())
        lines.append(f"  AgentGym names mapped to gymux envs: {mapped}")
    if r.unknown:
        kept = ", ".join(f"{prefix} ({n})" for prefix, n in r.unknown.items())
        lines.append(f"  not gymux envs, kept as env ids: {kept}")
    same = "same keys, order and values"
    rest = f"; the rest: {same}, compact JSON" if r.exact < r.trajectories else ""
    lines.append(
        f"  export --format agenttraj: {r.exact} of {r.trajectories} record(s) come back "
        f"byte-identical{rest}"
    )
    if r.layout != "jsonl":
        how = "byte-identical" if r.file_exact else f"with the {same}"
        lines.append(
            f"  the {r.layout} file itself: {how}, through export --format {SOURCE_FORMAT}"
        )
    return lines


def _cmd_import(args: argparse.Namespace) -> int:
    source, out = Path(args.file), Path(args.out)
    if not source.is_file():
        raise UsageError(f"no such file: {source}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out: {out} already exists (import writes a new store)")
    if not out.resolve().parent.is_dir():
        raise UsageError(f"--out: folder {out.parent} does not exist")
    try:
        result = import_agenttraj(source, out, stream=args.stream)
    except AgentTrajError as exc:
        raise UsageError(str(exc)) from None
    except ValueError as exc:  # Store.stream_path: not a stream name
        raise UsageError(f"--stream: {exc}") from None
    if args.json:
        _out(msgspec.json.encode(result).decode())
    else:
        for line in _import_lines(result):
            _out(line)
    return EXIT_OK


def _cmd_reverify(args: argparse.Namespace, registry: Registry) -> int:
    """Exit 0 when every replayed episode agrees, 1 when any disagrees."""
    from gymux.reverify import reverify

    store = _store(args)
    stream = _stream(store, args.stream)
    trajectories = store.trajectories(stream, env=args.env)
    if args.limit is not None:
        trajectories = itertools.islice(trajectories, args.limit)
    report = anyio.run(
        functools.partial(reverify, trajectories, registry, concurrency=args.concurrency)
    )
    if args.json:
        _out(msgspec.json.encode(report).decode())
    else:
        _out(
            f"replayed {report.checked} episode(s): {report.agreed} agree, "
            f"{len(report.disagreements)} disagree"
            + (
                f" ({report.version_changed} under another env version)"
                if report.version_changed
                else ""
            )
        )
        for reason, count in sorted(report.skipped.items()):
            _out(f"  not replayed: {count} ({reason})")
        for d in report.disagreements[:50]:
            _out(f"  {d.episode_id}: {d.note}")
        if len(report.disagreements) > 50:
            _out(f"  ... and {len(report.disagreements) - 50} more (--json lists them all)")
    return EXIT_FAILED if report.disagreements else EXIT_OK


_COMMANDS = {
    "info": _cmd_info,
    "tail": _cmd_tail,
    "verify": _cmd_verify,
    "export": _cmd_export,
    "compact": _cmd_compact,
    "import": _cmd_import,
}


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Run a parsed ``gymux store ...`` command; returns the exit code. Bad input raises
    :class:`UsageError` and a store error :class:`StoreError` (``gymux.cli.main`` maps them
    to exit codes 2 and 1); a failed read or write of a file is exit 1 too."""
    if args.store_command is None:  # bare gymux store: its command list
        _out(args.store_parser.format_help().rstrip())
        return EXIT_OK
    try:
        if args.store_command == "reverify":
            return _cmd_reverify(args, registry)
        return _COMMANDS[args.store_command](args)
    except BrokenPipeError:  # the reader of stdout went away (gymux store tail | head)
        return EXIT_OK
    except OSError as exc:
        _err(f"gymux: error: {exc}")
        return EXIT_FAILED
