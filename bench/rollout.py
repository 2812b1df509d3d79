"""Rollout-scale benchmark (issue 13): the Runtime with RL groups driving the real
:class:`gymux.policies.sglang.client.SGLangPolicy` against the SGLang TEST DOUBLE.

The double (``tests/doubles/sglang_double.py``, scripted, no model) runs in its own
subprocess with the cost model of ``bench/policy.py`` (B decode slots, a per-token time,
a serialized frontend cost); this script subclasses it only to timestamp each
``/abort_request`` it receives (``time.monotonic``, the same clock in every process).
Each measured client runs in a fresh subprocess, so its CPU time (``getrusage``) is the
gymux side alone: the Runtime, the env, the policy client. The run is submitted as a
rollout service submits one, with ``keep_trajectories=False`` (its trajectories go to the
sink, here one that drops them, not into the run handle's memory).

The env (defined here) is cheap and never ends an episode: every episode plays
``TURNS`` turns, each a real env step (any output parses as an action) whose observation is
new text. Its instruction is about ``PROMPT_TOKENS`` tokens of the tiny tokenizer,
so every turn's prompt is ~2k tokens (shown as ``prompt tok``).

Two scenarios per client, each with a fresh double:

* ``scale``: ``EPISODES`` (4,096) concurrent episodes in groups of 8
  (``Workload(group_size=8)``, ``max_concurrent_episodes=4096``); after a warm-up the
  double's stats are reset and a window measured: ``busy`` = the mean of the double's
  occupied decode slots (sampled every 10 ms) / B (target >= 95%); ``busy_s`` = its busy
  slot-seconds / (B x window), which credits a sequence's whole decode time when it ends, so
  it can pass 100%; ``cpu us/turn`` = client process CPU / turns answered in
  the window (target < 150 us); ``gc us/turn``: the part of it the garbage collector took,
  by generation (``gc.callbacks``; a young collection here is rare and long, so a window
  may hold none or one).
* ``oversample``: groups of 8 with ``oversample=K``; per group, its completion time is when
  the 8th member's last turn came back to the client (the runtime then keeps the group and
  cancels the surplus), and the latency is from then to the double receiving the abort of a
  surplus member's in-flight request (p50/p99 over the window; target < 100 ms).

Where the window falls matters: all episodes start at once, the first wave's 4,096
episodes end together some 30-45 s in (every turn then also ends one episode and starts
another), and a young GC pass comes every ~20 s. ``--curve S`` prints, for each client, its
CPU per turn (user, system, GC) in every S seconds since it started.

Clients: ``naive`` is the BASELINE (``single`` strategy over a fresh TCP connection per
request and per abort, no keep-alive pool); ``single`` (the default strategy), ``batch``
(the one for rollouts at this scale: turns coalesced into one ``/generate`` per batch, a
batch's observations tokenized in one call) and ``batch_stream`` are the real client as
configured in production, each judged against the targets. ``floor`` (``scale`` only)
is a reference, not gymux: the same traffic from a bare asyncio loop doing only the work no
client can skip (the same request bytes over a keep-alive connection, the answer decoded
into the same types, one ``tokenizers`` call per observation, ids and logprobs kept as
typed arrays and joined once per episode); ``policy_only`` (``scale`` only) is the real
``SGLangPolicy`` driven from plain anyio tasks without the Runtime. ``single`` minus
``floor`` is what gymux adds: the policy client's share up to ``policy_only``, the Runtime's
above it.

Usage::

    python bench/rollout.py            # full sizes (4,096 episodes; ~7 min)
    python bench/rollout.py --quick    # shorter windows, same sizes
    python bench/rollout.py --json out.json
    python bench/rollout.py --only single --scenarios scale --profile DIR  # + cProfile
    python bench/rollout.py --before DIR   # + each client with an older tree's gymux
    python bench/rollout.py --only single --scenarios scale --before DIR --repeat 3
    python bench/rollout.py --only single --scenarios scale --curve 2.5  # + CPU over time
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from policy import GCClock, use_fresh_connections  # noqa: E402  (bench/policy.py)

from gymux.config import RuntimeConfig, Workload  # noqa: E402
from gymux.env_plugins import (  # noqa: E402
    EnvPlugin,
    EnvSpec,
    Observation,
    StepResult,
    Task,
    splits_from,
)
from gymux.env_plugins.registry import Registry  # noqa: E402
from gymux.events import Event, TurnFinished  # noqa: E402
from gymux.policies.sglang.client import SGLangPolicy  # noqa: E402
from gymux.runtime import Runtime  # noqa: E402
from gymux.trajectory import Trajectory  # noqa: E402

CLIENTS = ("naive", "floor", "policy_only", "single", "batch", "batch_stream")
#: Reference clients (not gymux as a user runs it): where a turn's CPU goes.
_REFERENCES = ("floor", "policy_only")
EPISODES = 4096
GROUP = 8
OVERSAMPLE = 4
OVERSAMPLE_GROUPS = 96  # groups running at once in the oversample scenario
TURNS = 4
PROMPT_TOKENS = 2000
TASKS = 512

# The double's cost model (as bench/policy.py): B slots, 10 ms/token, 1 ms + 0.05 ms/seq.
CAPACITY = 256
PER_TOKEN_S = 0.01
REQUEST_OVERHEAD_S = 0.001
ITEM_OVERHEAD_S = 0.00005
SHORT, LONG, LONG_FRAC = 16, 256, 0.2
MAX_NEW_TOKENS = 512
TOKENS_BUDGET = 1_000_000_000

BUSY_TARGET = 0.95
CPU_TARGET_US = 150.0
ABORT_TARGET_MS = 100.0
SAMPLE_S = 0.01  # the double samples its occupied slots this often


# -- the double, with timestamped aborts (server subprocess) ----------------------------------


async def _serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    from doubles.sglang_double import CostModel, SGLangDouble, lengths_model

    class TimedDouble(SGLangDouble):
        """Records ``(rid, monotonic time)`` of every ``/abort_request`` it receives."""

        abort_times: list[tuple[str, float]] = []
        slot_samples = 0  # sum of sampled occupied slots
        samples = 0

        async def sample_slots(self) -> None:
            """Occupied decode slots every ``SAMPLE_S``: their mean / B is how busy the
            server was in the window (``busy_s`` credits whole sequences when they end)."""
            while True:
                await asyncio.sleep(SAMPLE_S)
                self.slot_samples += self.stats.concurrent
                self.samples += 1

        async def _abort(self, request: web.Request) -> web.Response:
            t = time.monotonic()
            body = await request.json()
            self.abort_times.append((str(body.get("rid") or ""), t))
            return await super()._abort(_Replay(request, body))  # type: ignore[arg-type]

        async def _stats(self, request: web.Request) -> web.Response:
            out = self.stats.as_json()
            out.pop("aborted_rids", None)
            out.pop("abort_matched", None)
            out["abort_times"] = self.abort_times
            out["slots_mean"] = self.slot_samples / self.samples if self.samples else 0.0
            return web.json_response(out)

        def reset_stats(self) -> None:
            super().reset_stats()
            self.abort_times = []
            self.slot_samples = self.samples = 0

    double = TimedDouble(
        lengths_model(SHORT, LONG, LONG_FRAC, 100, 2),
        cost=CostModel(
            request_overhead_s=REQUEST_OVERHEAD_S,
            item_overhead_s=ITEM_OVERHEAD_S,
            per_token_s=args.per_token_ms / 1000,
            capacity=CAPACITY,
        ),
        eos_id=2,
        context_length=1 << 20,
        stream_interval=8,
        schema=None,  # throughput: no per-answer schema checks
    )
    await double.start()
    sampler = asyncio.ensure_future(double.sample_slots())
    print(f"PORT {double.port}", flush=True)
    await asyncio.Event().wait()
    sampler.cancel()


class _Replay:
    """A request whose JSON body was already read (the double's handler reads it again)."""

    def __init__(self, request: Any, body: Any) -> None:
        self._request = request
        self._body = body

    async def json(self) -> Any:
        return self._body

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


# -- the env -----------------------------------------------------------------------------------


class _Endless:
    """Never done: every episode plays ``max_turns`` turns. Observations vary per instance,
    so the double's output lengths (a function of the prompt) vary within a group."""

    def __init__(self) -> None:
        self._rng = random.Random()
        self._steps = 0

    async def reset(self, task: Task) -> Observation:
        self._steps = 0
        return Observation(text=f"Maze {task.id}, start {self._rng.randrange(10**9)}.")

    async def step(self, action: str) -> StepResult:
        self._steps += 1
        return StepResult(
            observation=Observation(text=f"Moved {self._steps}: {self._rng.randrange(10**6)}."),
            reward=0.0,
            done=False,
        )

    async def close(self) -> None:
        return None


def _any_text(text: str) -> str:
    """Any output is an action: the double's outputs are random tokens, and with the ReAct
    parser every later turn would be a parse error whose observation is the same text (no
    env step, and an observation the tokenizer's piece cache already holds)."""
    return text.strip()[:40] or "wait"


def _instruction(tok_dir: str) -> str:
    from gymux.policies.tokens import ChatTokenizer

    tok = ChatTokenizer.from_dir(Path(tok_dir))
    unit = "Solve the maze. Answer with Thought: ... Action: move <direction>. "
    return unit * max(1, PROMPT_TOKENS // len(tok.encode(unit)))


def _registry(tok_dir: str, instances: int) -> Registry:
    spec = EnvSpec(
        id="maze",
        version="1",
        instruction=_instruction(tok_dir),
        action_format="Action: move <direction>",
        splits=splits_from({"test": range(TASKS)}),
        max_turns=TURNS,
        example_actions=["move left"],
    )
    reg = Registry(entry_points_group=None)
    reg.register(
        EnvPlugin(
            spec,
            _Endless,  # type: ignore[arg-type]
            execution="async",
            max_instances=instances,
            parse_action=_any_text,
        )
    )
    return reg


class _NullSink:
    async def open(self) -> None:
        return None

    async def write(self, trajectory: Trajectory) -> None:
        return None

    async def write_group(self, trajectories: Sequence[Trajectory]) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


# -- one client (subprocess) ------------------------------------------------------------------


class _BenchPolicy(SGLangPolicy):
    """The real policy plus what the benchmark measures: turns and prompt tokens in the
    window and when each episode's last turn ended (from the runtime's ``TurnFinished``
    events, :meth:`on_event`; nothing is added to the call path itself), and with
    ``track_rids`` (``oversample``) which episode each request id belongs to. ``naive``: no
    keep-alive pool (a fresh connection per request)."""

    def __init__(
        self, *args: Any, fresh_connections: bool = False, track_rids: bool = False, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.fresh_connections = fresh_connections
        self.track_rids = track_rids
        self.measuring = False
        self.turns = 0
        self.prompt_tokens = 0
        self.rid_episode: dict[str, str] = {}
        self.last_turn_at: dict[str, float] = {}

    async def __aenter__(self) -> _BenchPolicy:
        await super().__aenter__()
        if self.fresh_connections:
            await use_fresh_connections(self)
        return self

    def _rid(self, episode_id: str) -> str:
        rid = super()._rid(episode_id)
        if self.track_rids:
            self.rid_episode[rid] = episode_id
        return rid

    def on_event(self, event: Event) -> None:
        if not isinstance(event, TurnFinished):
            return
        turn = event.turn
        if self.track_rids and turn.index == TURNS - 1:
            self.last_turn_at[event.episode_id] = time.monotonic()
        if self.measuring:
            self.turns += 1
            self.prompt_tokens += turn.prompt_tokens or 0


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _group_of(episode_id: str, size: int) -> tuple[str, int]:
    """(task, group index) of a planned episode id ``run:env:task:sample``."""
    _, _, task, sample = episode_id.rsplit(":", 3)
    return task, int(sample) // size


async def _sample_curve(
    policy: Any, gc_clock: GCClock, every_s: float, out: list[dict[str, float]]
) -> None:
    """Every ``every_s`` seconds from the start: the client's CPU per turn (user, system,
    GC) in that interval, turns counted as requests sent."""
    t0 = time.perf_counter()
    last = None
    while True:
        await anyio.sleep(every_s)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        now = (ru.ru_utime, ru.ru_stime, sum(gc_clock.cpu_s), policy.http_requests)
        if last is not None and now[3] > last[3]:
            n = now[3] - last[3]
            out.append(
                {
                    "t": round(time.perf_counter() - t0, 1),
                    "turns": n,
                    "user_us": round(1e6 * (now[0] - last[0]) / n),
                    "sys_us": round(1e6 * (now[1] - last[1]) / n),
                    "gc_us": round(1e6 * (now[2] - last[2]) / n),
                }
            )
        last = now


async def _measure_window(
    args: argparse.Namespace, counter: Any, *, episodes: int, oversample: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The row of a client whose episodes already run, and the double's stats: warm-up, the
    double's stats reset, the window (cProfiled with ``--profile``). ``counter`` counts
    ``http_requests`` (``--curve`` counts turns by them) and, while ``measuring``, the
    window's ``turns`` and their ``prompt_tokens``."""
    gc_clock = GCClock()
    curve: list[dict[str, float]] = []
    async with aiohttp.ClientSession() as ctl, anyio.create_task_group() as tg:
        if args.curve:
            tg.start_soon(_sample_curve, counter, gc_clock, args.curve, curve)
        await anyio.sleep(args.warmup)
        async with ctl.post(args.url + "/_double/reset") as r:
            await r.read()
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile(time.process_time)  # CPU time, not wall time
        gc0 = gc_clock.snapshot()
        cpu0, t0 = _cpu_s(), time.perf_counter()
        counter.measuring = True
        if profiler is not None:
            profiler.enable()
        await anyio.sleep(args.window)
        if profiler is not None:
            profiler.disable()
        counter.measuring = False
        wall = time.perf_counter() - t0
        cpu = _cpu_s() - cpu0
        if profiler is not None:
            profiler.dump_stats(args.profile)
        async with ctl.get(args.url + "/_double/stats") as r:
            double: dict[str, Any] = await r.json()
        tg.cancel_scope.cancel()
    turns = counter.turns
    out: dict[str, Any] = {
        "client": args.client,
        "scenario": args.scenario,
        "episodes": episodes,
        "oversample": oversample,
        "window_s": wall,
        "turns": turns,
        "turns_per_s": turns / wall,
        "prompt_tokens": counter.prompt_tokens / turns if turns else 0,
        "busy": double["slots_mean"] / CAPACITY,
        "busy_s_frac": double["busy_s"] / (CAPACITY * wall),
        "cpu_us_per_turn": 1e6 * cpu / turns if turns else float("nan"),
        "client_cpu_frac": cpu / wall,
        "server_max_concurrent": double["max_concurrent"],
        "load_avg_1m": os.getloadavg()[0],
        **gc_clock.since(gc0, turns),
    }
    if curve:
        out["curve"] = curve
    return out, double


async def _client(args: argparse.Namespace) -> None:
    oversample = args.scenario == "oversample"
    k = OVERSAMPLE if oversample else 0
    concurrent = OVERSAMPLE_GROUPS * (GROUP + k) if oversample else EPISODES
    policy = _BenchPolicy(
        args.url,
        tokenizer=args.tok,
        strategy="single" if args.client == "naive" else args.client,
        fresh_connections=args.client == "naive",
        track_rids=oversample,
        max_new_tokens=MAX_NEW_TOKENS,
        max_requests_per_server=concurrent,
        connections_per_server=concurrent,
        max_tokens_per_server=TOKENS_BUDGET,
    )
    config = RuntimeConfig(
        max_concurrent_episodes=concurrent,
        policy_timeout_s=3600.0,
        episode_timeout_s=36000.0,
    )
    # Enough groups that the run outlasts warm-up + window.
    workload = Workload(
        env="maze",
        tasks=list(range(TASKS)),
        samples=64,
        max_turns=TURNS,
        group_size=GROUP,
        oversample=k,
    )
    reg = _registry(args.tok, concurrent)
    async with policy, Runtime(config, registry=reg, sinks=[_NullSink()]) as rt:
        rt.subscribe(policy.on_event)
        await rt.submit(workload, policy=policy, keep_trajectories=False)
        out, stats = await _measure_window(args, policy, episodes=concurrent, oversample=k)
        if oversample:
            size = GROUP + k
            ends: dict[tuple[str, int], list[float]] = {}
            for ep, t in policy.last_turn_at.items():
                ends.setdefault(_group_of(ep, size), []).append(t)
            complete = {g: sorted(ts)[GROUP - 1] for g, ts in ends.items() if len(ts) >= GROUP}
            lat: list[float] = []
            unmatched = 0
            for rid, t in stats["abort_times"]:
                episode = policy.rid_episode.get(rid)
                done = complete.get(_group_of(episode, size)) if episode else None
                if done is None:
                    unmatched += 1
                    continue
                lat.append(t - done)
            out.update(
                aborts=len(stats["abort_times"]),
                aborts_unmatched=unmatched,
                abort_requests=stats["abort_requests"],
                abort_p50_ms=1000 * _pct(lat, 0.5),
                abort_p99_ms=1000 * _pct(lat, 0.99),
                abort_max_ms=1000 * max(lat) if lat else float("nan"),
            )
        print(json.dumps(out), flush=True)
        os._exit(0)  # skip tearing down thousands of in-flight episodes


# -- the floor: the same traffic with nothing but the wire work ------------------------------


class _FloorConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the floor client: a request written whole, an
    answer framed by its Content-Length (all the double sends)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1  # bytes of head + body, once the head is in
        self.start = 0
        self.waiter: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            low = bytes(buf[:end]).lower()
            at = low.index(b"content-length:") + 15
            eol = low.find(b"\r\n", at)
            self.start = end + 4
            self.need = self.start + int(low[at : eol if eol >= 0 else len(low)])
        if len(buf) >= self.need and self.waiter is not None:
            self.waiter.set_result(bytes(buf[self.start : self.need]))
            del buf[:]
            self.need = -1

    async def post(self, head: bytes, parts: list[bytes]) -> bytes:
        """Send ``head`` (up to ``Content-Length: ``) and the body ``parts`` in one write
        (one copy of them), and wait for the answer's body."""
        assert self.transport is not None
        n = sum(map(len, parts))
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(b"".join([head, b"%d\r\n\r\n" % n, *parts]))
        return await self.waiter


class _Tally:
    """What a reference client counts: requests sent (``--curve`` counts turns by them), and
    while the window is measured its turns and their prompt tokens."""

    def __init__(self) -> None:
        self.http_requests = 0
        self.turns = 0
        self.prompt_tokens = 0
        self.measuring = False

    def turn(self, prompt_tokens: int) -> None:
        if self.measuring:
            self.turns += 1
            self.prompt_tokens += prompt_tokens


def _runtime_gc_threshold() -> None:
    """The young-generation threshold a Runtime sets by default (``gc_threshold``), so a
    reference client's collector runs as often as gymux's."""
    import gc

    threshold = RuntimeConfig().gc_threshold
    if threshold is not None:  # None: a Runtime leaves the collector as it is
        gc.set_threshold(threshold, *gc.get_threshold()[1:])


async def _floor_client(args: argparse.Namespace) -> None:
    """``floor``: the scale scenario's traffic from a bare asyncio loop. Per turn exactly the
    work no client can skip: the same ``/generate`` request (the same prompt ids as JSON
    fragments, the instruction's encoded once and shared), its answer decoded into the same
    types (``decode_answers``), its ids and logprobs kept as typed arrays, one ``tokenizers``
    call on the next observation's piece, and per episode its token record joined once;
    no Runtime, env, scheduler, groups, ledger checks or events. ``single`` minus ``floor``
    is what gymux adds on top of the wire."""
    from array import array

    import msgspec

    from gymux.messages import Message
    from gymux.policies.sglang.wire import decode_answers, generate_body_parts
    from gymux.policies.tokens import ChatTokenizer

    chat = ChatTokenizer.from_dir(Path(args.tok))
    raw_tok = chat.tokenizer
    enc = msgspec.json.Encoder()
    probe = "\x00PROBE\x00"
    text = chat.render(
        [
            Message(role="user", content=_instruction(args.tok)),
            Message(role="assistant", content="OK"),
            Message(role="user", content=probe),
        ],
        add_generation_prompt=True,
    )
    before, after = text.split(probe)
    head_ids = raw_tok.encode(before, add_special_tokens=False).ids
    head_json = enc.encode(head_ids)[1:-1]
    head_arr = array("i", head_ids)  # shared by every episode, as the ledger's head pieces
    turn_before = "<|im_end|>\n<|im_start|>user\n"
    sampling = {"max_new_tokens": MAX_NEW_TOKENS}
    url = args.url.split("//", 1)[1]
    host, port = url.rsplit(":", 1)
    req_head = (
        f"POST /generate HTTP/1.1\r\nHost: {url}\r\nContent-Type: application/json\r\n"
        "Content-Length: "
    ).encode()
    rng = random.Random()
    tally = _Tally()
    loop = asyncio.get_running_loop()
    _runtime_gc_threshold()

    async def slot(k: int) -> None:
        _, conn = await loop.create_connection(_FloorConn, host, int(port))
        episode = 0
        while True:
            episode += 1
            obs = f"Maze {k}, start {rng.randrange(10**9)}."
            first = raw_tok.encode(obs + after, add_special_tokens=False).ids
            parts = [head_json, enc.encode(first)[1:-1]]
            n = len(head_ids) + len(first)
            runs = [array("i", first)]
            logprobs = array("f")
            for turn in range(TURNS):
                ids_json = [b"["]
                for part in parts:
                    ids_json += (part, b",")
                ids_json[-1] = b"]"
                rid = f"floor-{k}-{episode}-{turn}"
                body = generate_body_parts(ids_json, rid, sampling, stream=False)
                tally.http_requests += 1
                answer = decode_answers(await conn.post(req_head, body), where="floor")[0]
                assert not isinstance(answer, BaseException)
                out = answer.output_ids
                entries = answer.meta_info.output_token_logprobs or []
                run = array("i")
                run.fromlist(out)
                runs.append(run)
                logprobs.fromlist([e.logprob for e in entries])
                parts.append(enc.encode(out)[1:-1])
                tally.turn(n)
                n += len(out)
                if turn < TURNS - 1:
                    piece = raw_tok.encode(
                        f"{turn_before}Moved {turn + 1}: {rng.randrange(10**6)}.{after}",
                        add_special_tokens=False,
                    ).ids
                    runs.append(array("i", piece))
                    parts.append(enc.encode(piece)[1:-1])
                    n += len(piece)
            record = (b"".join([head_arr, *runs]), logprobs.tobytes())  # as TokenData's
            del record

    tasks = [asyncio.ensure_future(slot(k)) for k in range(EPISODES)]
    out, _ = await _measure_window(args, tally, episodes=EPISODES, oversample=0)
    failed = [t for t in tasks if t.done()]
    if failed:
        failed[0].result()  # a slot died: its exception, not a figure
    print(json.dumps(out), flush=True)
    os._exit(0)


async def _policy_only_client(args: argparse.Namespace) -> None:
    """``policy_only``: the scale scenario's turns sent through the real
    :class:`SGLangPolicy` (``single``) from plain anyio tasks, without the Runtime: the same
    messages per turn as the env's, ``act`` per turn and ``finish_episode`` per episode
    (the token record). ``policy_only`` minus ``floor`` is the policy client's own cost,
    ``single`` minus ``policy_only`` the Runtime's (scheduler, groups, episode loop, env
    calls, trajectory, events)."""
    from gymux.messages import Message, PolicyRequest

    policy = SGLangPolicy(
        args.url,
        tokenizer=args.tok,
        strategy="single",
        max_new_tokens=MAX_NEW_TOKENS,
        max_requests_per_server=EPISODES,
        connections_per_server=EPISODES,
        max_tokens_per_server=TOKENS_BUDGET,
    )
    instruction = _instruction(args.tok)
    rng = random.Random()
    tally = _Tally()
    _runtime_gc_threshold()

    async def slot(k: int) -> None:
        episode = 0
        while True:
            episode += 1
            episode_id = f"policy-only:maze:{k}:{episode}"
            messages = [
                Message(role="user", content=instruction),
                Message(role="assistant", content="OK"),
                Message(role="user", content=f"Maze {k}, start {rng.randrange(10**9)}."),
            ]
            for turn in range(TURNS):
                tally.http_requests += 1
                response = await policy.act(
                    PolicyRequest(
                        episode_id=episode_id,
                        env_id="maze",
                        task_id=k,
                        turn=turn,
                        messages=list(messages),
                    )
                )
                tally.turn(response.prompt_tokens or 0)
                messages.append(Message(role="assistant", content=response.text, loss=True))
                observation = f"Moved {turn + 1}: {rng.randrange(10**6)}."
                messages.append(Message(role="user", content=observation))
            policy.finish_episode(episode_id)

    async with policy, anyio.create_task_group() as tg:
        for k in range(EPISODES):
            tg.start_soon(slot, k)
        out, _ = await _measure_window(args, tally, episodes=EPISODES, oversample=0)
        print(json.dumps(out), flush=True)
        os._exit(0)


# -- parent ------------------------------------------------------------------------------------


def _start_double(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--per-token-ms", str(args.per_token_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit(f"the SGLang double did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


def _run_one(
    client: str, scenario: str, tok: Path, args: argparse.Namespace, pythonpath: str | None = None
) -> dict[str, Any]:
    proc, url = _start_double(args)
    try:
        cmd = [sys.executable, __file__, "--client", client, "--scenario", scenario]
        cmd += ["--url", url, "--tok", str(tok)]
        cmd += ["--warmup", str(args.warmup), "--window", str(args.window), "--loop", args.loop]
        if args.curve:
            cmd += ["--curve", str(args.curve)]
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            cmd += ["--profile", str(args.profile / f"{client}-{scenario}.prof")]
        env = dict(os.environ)
        pythonpath = pythonpath or args.client_pythonpath
        if pythonpath:  # e.g. an older tree's package, for "before" figures
            env["PYTHONPATH"] = pythonpath
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        if res.returncode != 0 or not res.stdout.strip():
            raise SystemExit(f"client {client} {scenario} failed:\n{res.stderr[-3000:]}")
        row: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
        return row
    finally:
        proc.kill()
        proc.wait()


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'client':<15}{'scenario':<16}{'episodes':>9}{'turns/s':>9}{'prompt tok':>11}"
        f"{'busy':>8}{'busy_s':>8}{'cpu us/turn':>12}{'cli cpu':>8}{'abort p50/p99 ms':>18}"
        f"{'aborts':>8}{'load':>6}  gc us/turn (gen 0/1/2)"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        scen = r["scenario"] + (f" k={r['oversample']}" if r["oversample"] else "")
        ab = (
            f"{r['abort_p50_ms']:>9.1f}/{r['abort_p99_ms']:<8.1f}"
            if "abort_p50_ms" in r
            else f"{'-':>18}"
        )
        lines.append(
            f"{r['client']:<15}{scen:<16}{r['episodes']:>9}{r['turns_per_s']:>9.0f}"
            f"{r['prompt_tokens']:>11.0f}{r['busy']:>8.1%}{r['busy_s_frac']:>8.1%}{r['cpu_us_per_turn']:>12.0f}"
            f"{r['client_cpu_frac']:>8.2f}{ab}{r.get('aborts', 0):>8}{r['load_avg_1m']:>6.1f}"
            f"  {'/'.join(str(g) for g in r.get('gc_us_per_turn', []))}"
        )
    return "\n".join(lines)


def _median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median client CPU per turn, with every run's figure beside it."""
    ordered = sorted(runs, key=lambda r: float(r["cpu_us_per_turn"]))
    row = dict(ordered[(len(ordered) - 1) // 2])
    row["cpu_us_per_turn_runs"] = [r["cpu_us_per_turn"] for r in runs]
    return row


def _split(row: dict[str, Any], refs: dict[str, dict[str, Any]]) -> str:
    """Where ``row``'s CPU per turn goes, by the reference rows measured in the same run:
    the wire work alone (``floor``), then (for ``single``) the policy client, then the
    Runtime."""
    us = float(row["cpu_us_per_turn"])
    floor, policy = refs.get("floor"), refs.get("policy_only")
    if row["client"] != "single":
        policy = None  # policy_only drives the single strategy: no split for another
    parts = []
    if floor:
        parts.append(f"the wire work alone (floor) {floor['cpu_us_per_turn']:.0f}")
    if policy:
        base = float(floor["cpu_us_per_turn"]) if floor else 0.0
        parts.append(f"the policy client +{float(policy['cpu_us_per_turn']) - base:.0f}")
        parts.append(f"the Runtime +{us - float(policy['cpu_us_per_turn']):.0f}")
    elif floor:
        parts.append(f"gymux {us - float(floor['cpu_us_per_turn']):+.0f}")
    return f"; of it: {', '.join(parts)} us" if parts else ""


def _verdicts(rows: list[dict[str, Any]]) -> list[str]:
    base = {r["scenario"]: r for r in rows if r["client"] == "naive"}
    out = []
    refs = {r["client"]: r for r in rows if r["client"] in _REFERENCES}
    for r in rows:
        if r["client"] == "naive" or r["client"] in _REFERENCES or "@" in r["client"]:
            continue
        b = base.get(r["scenario"])
        if r["scenario"] == "scale":
            ok = r["busy"] >= BUSY_TARGET
            vs = f" (baseline naive {b['busy']:.1%})" if b else ""
            out.append(
                f"{'PASS' if ok else 'FAIL'} {r['client']}: server busy {r['busy']:.1%} at "
                f"{r['episodes']} concurrent episodes in groups of {GROUP} "
                f"(target >= {BUSY_TARGET:.0%}){vs}"
            )
            ok = r["cpu_us_per_turn"] < CPU_TARGET_US
            vs = f" (baseline naive {b['cpu_us_per_turn']:.0f} us)" if b else ""
            vs += _split(r, refs)
            out.append(
                f"{'PASS' if ok else 'FAIL'} {r['client']}: client CPU "
                f"{r['cpu_us_per_turn']:.0f} us/turn at ~{r['prompt_tokens']:.0f}-token "
                f"prompts (target < {CPU_TARGET_US:.0f} us){vs}"
            )
        elif not r.get("aborts"):
            # Nothing was in flight at the server when a group completed: no abort to time.
            out.append(
                f"N/A  {r['client']}: no surplus request was in flight when its group "
                f"completed (0 aborts, oversample={r['oversample']}): nothing to free"
            )
        else:
            ok = r["abort_p99_ms"] < ABORT_TARGET_MS
            vs = (
                f" (baseline naive p50/p99 {b['abort_p50_ms']:.1f}/{b['abort_p99_ms']:.1f} ms)"
                if b
                else ""
            )
            out.append(
                f"{'PASS' if ok else 'FAIL'} {r['client']}: group complete -> surplus abort at "
                f"the server p50 {r['abort_p50_ms']:.1f} ms, p99 {r['abort_p99_ms']:.1f} ms "
                f"over {r['aborts']} aborts, oversample={r['oversample']} "
                f"(target < {ABORT_TARGET_MS:.0f} ms){vs}"
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter warm-up and window")
    p.add_argument("--json", type=Path, help="also write every measurement here")
    p.add_argument("--only", action="append", choices=CLIENTS)
    p.add_argument("--scenarios", default="scale,oversample")
    p.add_argument("--warmup", type=float)
    p.add_argument("--window", type=float)
    p.add_argument("--profile", type=Path, help="cProfile each client's window (CPU clock)")
    p.add_argument(
        "--per-token-ms",
        type=float,
        default=PER_TOKEN_S * 1000,
        help="the stand-in's decode time per token (default %(default)g; smaller: the "
        "client, not the server, becomes the bottleneck)",
    )
    p.add_argument(
        "--before",
        metavar="PATH",
        help="also run each client (not naive) with the gymux package at PATH (an older "
        "tree: pip install --no-deps --target PATH <tree>), shown as CLIENT@before",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run each row N times (taking turns with --before) and show the run of median "
        "client CPU: on a shared or virtual machine one window's CPU per turn varies by 20%%",
    )
    p.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the clients' event loop (uvloop: pip install uvloop)",
    )
    p.add_argument(
        "--curve",
        type=float,
        metavar="S",
        help="also show each client's CPU per turn (user, system, GC) every S seconds "
        "from its start",
    )
    p.add_argument("--client-pythonpath", help=argparse.SUPPRESS)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--client", choices=CLIENTS, help=argparse.SUPPRESS)
    p.add_argument("--scenario", choices=("scale", "oversample"), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--tok", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repeat < 1:
        p.error(f"--repeat must be at least 1, got {args.repeat}")
    if args.warmup is None:
        args.warmup = 12.0 if args.quick else 20.0
    if args.window is None:
        args.window = 8.0 if args.quick else 20.0
    if args.serve:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(_serve(args))
        return
    if args.client == "floor":
        asyncio.run(_floor_client(args))
        return
    if args.client == "policy_only":
        anyio.run(_policy_only_client, args)
        return
    if args.client:
        anyio.run(_client, args, backend_options={"use_uvloop": args.loop == "uvloop"})
        return

    from doubles.sglang_double import build_tiny_tokenizer

    clients = args.only or list(CLIENTS)
    if "naive" not in clients:
        clients.insert(0, "naive")
    scenarios = args.scenarios.split(",")
    cores = os.cpu_count()
    print(
        f"Rollout-scale benchmark: Runtime + SGLangPolicy vs the SGLang TEST DOUBLE "
        f"(subprocess), {TURNS} turns/episode, ~{PROMPT_TOKENS}-token prompts, "
        f"warm-up {args.warmup:.0f} s, window {args.window:.0f} s per row\n"
        f"double: B={CAPACITY}, {args.per_token_ms:g} ms/token, frontend "
        f"{REQUEST_OVERHEAD_S * 1000:g} ms/request + {ITEM_OVERHEAD_S * 1000:g} ms/sequence; "
        f"outputs {SHORT} or {LONG} tokens (~{LONG_FRAC:.0%})\n"
        f"scale: {EPISODES} concurrent episodes, groups of {GROUP}; oversample: "
        f"{OVERSAMPLE_GROUPS} groups of {GROUP}+{OVERSAMPLE} at once\n"
        f"machine: {cores} cores ({platform.processor() or platform.machine()}), python "
        f"{platform.python_version()}; baseline = naive (fresh TCP connection per request)",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tiny_tokenizer(Path(tmp) / "tok")
        for scenario in scenarios:
            for client in clients:
                if client in _REFERENCES and scenario != "scale":
                    continue  # no groups to over-sample: a reference for scale only
                runs: list[dict[str, Any]] = []
                before: list[dict[str, Any]] = []
                for _ in range(args.repeat):  # taking turns with the older tree, if any
                    t = time.perf_counter()
                    runs.append(_run_one(client, scenario, tok, args))
                    print(
                        f"  {client} {scenario}: done in {time.perf_counter() - t:.0f} s",
                        flush=True,
                    )
                    if args.before and client != "naive":  # naive's pool is today's code
                        row = _run_one(client, scenario, tok, args, pythonpath=args.before)
                        row["client"] = f"{client}@before"
                        before.append(row)
                        print(f"  {client}@before {scenario}: done", flush=True)
                rows.append(_median_row(runs))
                if before:
                    rows.append(_median_row(before))
    print()
    print(_table(rows))
    if args.repeat > 1:
        print(f"\nrows: the run of median client CPU of {args.repeat}; every run's us/turn:")
        for r in rows:
            runs_us = " ".join(f"{x:.0f}" for x in r["cpu_us_per_turn_runs"])
            print(f"  {r['client']:<15}{r['scenario']:<12}{runs_us}")
    for r in rows:
        if r.get("curve"):
            print(f"\n{r['client']} {r['scenario']}: CPU per turn over time (us: user + sys, gc)")
            for c in r["curve"]:
                print(
                    f"  t={c['t']:6.1f} s  {c['turns']:6d} turns  {c['user_us']:5d} + "
                    f"{c['sys_us']:4d}  gc {c['gc_us']:4d}"
                )
    print()
    print("\n".join(_verdicts(rows)))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
