"""SGLang policy benchmark: dispatch strategies against the SGLang TEST DOUBLE.

2,000 concurrent episodes drive :class:`gymux.policies.sglang.client.SGLangPolicy` (the real
lean HTTP/1.1 client) against ``tests/doubles/sglang_double.py`` (a scripted stand-in for SGLang, no
model) started as a SUBPROCESS, so the double's CPU does not share the client's event loop
or GIL. Each configuration also runs its client in a fresh subprocess of this script, so
its CPU time (``getrusage``) belongs to it alone. Both processes share the machine's cores
(the figures in docs/benchmarks.md were taken on a 2-core box).

The double's cost model: a serialized per-request and per-sequence frontend overhead, then
``per_token_s`` per generated token while the sequence holds one of ``B`` decode slots
(more sequences queue for a slot). Generations are a mix of short and long (the double's
``lengths_model``), so a sequence's latency grows with its output length.

Each episode task loops: a fresh episode (turn 0 renders the chat template), then up to
``TURNS`` turns, each appending the model's answer and a new observation (token-exact
ledger, prompts only grow), then ``finish_episode`` and the next episode. Episodes are
driven by plain tasks calling ``policy.act`` (not the Runtime), to isolate the policy.
After a warm-up the double's stats are reset and a fixed window is measured.

Strategies: ``single``, ``batch``, ``batch_stream`` (see policies/sglang/client.py) and the naive
baseline ``naive``: one request per call, no coalescing, and a FRESH TCP connection per
request (no keep-alive pool) -- because ``single`` already is "one request per call over a
keep-alive pool".

Columns:

* ``turns/s``: turns answered in the window / window.
* ``util``: the double's busy slot-seconds / (B x window) -- achieved server utilisation.
* ``tok-util``: generated tokens x per_token_s / (B x window) (penalises timer overshoot).
* short/long ``mean``/``p99``: turn latency (``act()`` wall time) by generation length.
* ``client%``: sum(turn wall - server e2e latency of that request) / sum(turn wall): time
  a turn spends in the client (dispatch window, tokenizing, JSON, HTTP) as a fraction.
* ``cpu us/turn`` and ``cli cpu``/``srv cpu``: client process CPU per turn, and each
  process's CPU as a fraction of one core (~1.0 = that process is CPU-bound).

A second mode, ``--vllm``, measures against a REAL vLLM server (the CPU build, from the venv
``.ci/vllm-env`` makes) serving a tiny random Llama made on the spot: turns/s and client CPU
per turn at 1, 32 and 256 concurrent episodes, for the token-exact ``vllm`` policy and the
OpenAI-compatible ``openai`` policy side by side on the same server. Turn 0's prompt is
about 1k tokens (later turns grow it by ~20), generations are 8 tokens, so client work per
turn is dominated by the prompt. The episodes play 4 envs, each with its own instruction
(the same for all of that env's episodes, as real envs have), 4 turns an episode. Each
client's window starts after a warm-up, and the two policies take turns going first at
each concurrency. Each row also shows the machine's 1-minute load average at the end of its
window (``load``): client CPU per turn is only comparable between quiet runs. It prints a
message and exits 0 when the venv is absent.

``--fake-vllm`` runs the same rows against ``bench/_fake_vllm.py`` (a FAKE vLLM: no model,
answers shaped like vLLM's, started as a subprocess) and a tokenizer trained on the spot,
so the client's CPU per turn can be measured and profiled without vLLM (its figures are
labelled fake-server figures). ``--profile DIR`` writes each client's cProfile (timed by
``time.process_time``, i.e. CPU time) of its measuring window to ``DIR``. Each row also
shows the CPU the garbage collector took per turn, by generation (``gc.callbacks``).

Usage::

    python bench/policy.py --vllm           # real vLLM CPU rows (~5 min)
    python bench/policy.py --fake-vllm      # the same rows against bench/_fake_vllm.py
    python bench/policy.py --fake-vllm --profile DIR   # + a cProfile (CPU clock) per client
    python bench/policy.py                  # full run (~3 min)
    python bench/policy.py --quick          # smoke version (< 60 s)
    python bench/policy.py --json out.json  # also dump every measurement as JSON
    # one client, JSON on stdout (what the parent runs):
    python bench/policy.py --one single --url http://127.0.0.1:PORT --tok DIR --server-pid N
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio

ROOT = Path(__file__).resolve().parent.parent
DOUBLE = ROOT / "tests" / "doubles" / "sglang_double.py"
sys.path.insert(0, str(ROOT / "tests"))

from gymux.errors import PolicyError  # noqa: E402
from gymux.messages import Message, PolicyRequest  # noqa: E402
from gymux.policies.sglang.client import SGLangPolicy  # noqa: E402

EPISODES = 2000
TURNS = 8  # turns per episode before a fresh one starts
STRATEGIES = ("naive", "single", "batch", "batch_stream")

# Cost model of the double (a 7B-class model on one GPU, roughly): B decode slots,
# 10 ms per token per sequence (25.6k tokens/s at B=256), 1 ms + 0.05 ms/sequence frontend.
CAPACITY = 256
PER_TOKEN_S = 0.01
REQUEST_OVERHEAD_S = 0.001
ITEM_OVERHEAD_S = 0.00005
SHORT, LONG, LONG_FRAC = 16, 256, 0.2
MAX_NEW_TOKENS = 512

#: Per-server token budget (prompt + max_new_tokens in flight); the default 4M can bind at
#: 2,000 episodes x ~1.5k tokens, which moves the queue into the client.
TOKENS_BUDGET = 100_000_000

UTIL_TARGET = 0.90
CLIENT_TARGET = 0.05


# -- one client (subprocess) ------------------------------------------------------------------


async def use_fresh_connections(policy: Any) -> None:
    """The ``naive`` baseline: replace an entered SGLangPolicy's keep-alive pool by a session
    that opens a new connection per request (bench/rollout.py uses it too)."""
    from gymux.policies.sglang.http1 import Pool

    old = policy._session
    assert old is not None
    policy._session = Pool(
        connections_per_host=old.connections_per_host,
        request_timeout_s=old.request_timeout_s,
        connect_timeout_s=old.connect_timeout_s,
        keepalive_s=0,  # every connection is closed after its answer
    )
    await old.close()


class _BenchPolicy(SGLangPolicy):
    """SGLangPolicy that records each answer's server-side latency; optionally no pool."""

    def __init__(self, *args: Any, fresh_connections: bool = False, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.fresh_connections = fresh_connections
        self.e2e: dict[str, float] = {}

    async def __aenter__(self) -> _BenchPolicy:
        await super().__aenter__()
        if self.fresh_connections:
            await use_fresh_connections(self)
        return self

    def _to_response(self, server: Any, request: PolicyRequest, answer: Any) -> Any:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            self.e2e[request.episode_id] = float(answer.meta_info.e2e_latency)
        return super()._to_response(server, request, answer)


class GCClock:
    """CPU time spent in the garbage collector (``gc.callbacks``), by generation."""

    def __init__(self) -> None:
        self.cpu_s = [0.0, 0.0, 0.0]
        self.runs = [0, 0, 0]
        self._t0 = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.process_time()
        else:
            gen = info["generation"]
            self.cpu_s[gen] += time.process_time() - self._t0
            self.runs[gen] += 1

    def snapshot(self) -> tuple[list[float], list[int]]:
        return list(self.cpu_s), list(self.runs)

    def since(self, snap: tuple[list[float], list[int]], turns: int) -> dict[str, Any]:
        """GC CPU per turn (us) and collections, by generation, since ``snap``."""
        cpu = [a - b for a, b in zip(self.cpu_s, snap[0], strict=True)]
        runs = [a - b for a, b in zip(self.runs, snap[1], strict=True)]
        return {
            "gc_us_per_turn": [round(1e6 * c / turns, 1) if turns else None for c in cpu],
            "gc_runs": runs,
        }


def _proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _opening(instruction: str, idx: int, gen: int) -> list[Message]:
    """The first messages of a bench episode (``gen``-th of client ``idx``)."""
    return [
        Message(role="user", content=instruction),
        Message(role="assistant", content="OK"),
        Message(role="user", content=f"The goal is at position ({idx % 12}, {gen % 12})."),
    ]


def _reply(messages: list[Message], text: str, idx: int, turn: int) -> None:
    """Append the policy's answer ``text`` and the env's next observation."""
    messages.append(Message(role="assistant", content=text, loss=True))
    messages.append(Message(role="user", content=f"You moved ({idx}, {turn}). Walls: left."))


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def _client(args: argparse.Namespace) -> dict[str, Any]:
    strategy = args.one
    policy = _BenchPolicy(
        args.url,
        tokenizer=args.tok,
        strategy="single" if strategy == "naive" else strategy,
        fresh_connections=strategy == "naive",
        max_new_tokens=MAX_NEW_TOKENS,
        # Let all episodes' requests reach the server, so queueing for a decode slot happens
        # there (where it is counted as server time), not in the client's flow control.
        max_requests_per_server=max(1024, args.episodes),
        connections_per_server=max(256, args.episodes),
        max_tokens_per_server=TOKENS_BUDGET,
    )
    measuring = False
    records: list[tuple[float, float, int]] = []  # (wall, server e2e, completion tokens)
    errors = 0
    first_error = ""
    instruction = "Solve the maze. Answer with Thought: ... Action: move <direction>."

    async def episode_loop(idx: int) -> None:
        nonlocal errors, first_error
        gen = 0
        while True:
            ep = f"e{idx}-{gen}"
            gen += 1
            messages = _opening(instruction, idx, gen)
            for turn in range(TURNS):
                request = PolicyRequest(
                    episode_id=ep, env_id="maze", task_id=idx, turn=turn, messages=messages
                )
                t0 = time.perf_counter()
                try:
                    resp = await policy.act(request)
                except PolicyError as exc:
                    errors += 1
                    first_error = first_error or str(exc)[:300]
                    break
                wall = time.perf_counter() - t0
                if measuring:
                    records.append((wall, policy.e2e.pop(ep, 0.0), resp.completion_tokens))
                if resp.finish_reason == "context_limit":
                    break
                _reply(messages, resp.text, idx, turn)
            policy.finish_episode(ep)

    lags: list[float] = []

    async def lag_probe() -> None:  # how late the client's event loop wakes a 5 ms sleep
        while True:
            t = time.perf_counter()
            await anyio.sleep(0.005)
            if measuring:
                lags.append(time.perf_counter() - t - 0.005)

    async with policy, aiohttp.ClientSession() as ctl, anyio.create_task_group() as tg:
        for i in range(args.episodes):
            tg.start_soon(episode_loop, i)
        tg.start_soon(lag_probe)
        await anyio.sleep(args.warmup)
        async with ctl.post(args.url + "/_double/reset") as r:
            await r.read()
        cpu0, srv0, t0 = _self_cpu_s(), _proc_cpu_s(args.server_pid), time.perf_counter()
        reqs0, errors0 = policy.http_requests, errors
        measuring = True
        await anyio.sleep(args.window)
        measuring = False
        wall = time.perf_counter() - t0
        cpu, srv = _self_cpu_s() - cpu0, _proc_cpu_s(args.server_pid) - srv0
        async with ctl.get(args.url + "/_double/stats") as r:
            stats = await r.json()
        n = len(records)
        short = [w for w, _, c in records if c <= (SHORT + LONG) // 2]
        long_ = [w for w, _, c in records if c > (SHORT + LONG) // 2]
        total = sum(w for w, _, _ in records)
        client = sum(max(0.0, w - s) for w, s, _ in records)
        mean_tokens = sum(c for _, _, c in records) / n if n else float("nan")
        out = {
            "strategy": strategy,
            "episodes": args.episodes,
            "window_s": wall,
            "turns": n,
            "turns_per_s": n / wall,
            "capacity_turns_per_s": CAPACITY / (mean_tokens * PER_TOKEN_S),
            "util": stats["busy_s"] / (CAPACITY * wall),
            "tok_util": stats["generated_tokens"] * PER_TOKEN_S / (CAPACITY * wall),
            "short_n": len(short),
            "short_mean_s": sum(short) / len(short) if short else float("nan"),
            "short_p99_s": _pct(short, 0.99),
            "long_n": len(long_),
            "long_mean_s": sum(long_) / len(long_) if long_ else float("nan"),
            "long_p99_s": _pct(long_, 0.99),
            "client_frac": client / total if total else float("nan"),
            "client_ms_per_turn": 1000 * client / n if n else float("nan"),
            "client_p50_ms": 1000 * _pct([max(0.0, w - s) for w, s, _ in records], 0.5),
            "client_p99_ms": 1000 * _pct([max(0.0, w - s) for w, s, _ in records], 0.99),
            "loop_lag_mean_ms": 1000 * sum(lags) / len(lags) if lags else float("nan"),
            "loop_lag_p99_ms": 1000 * _pct(lags, 0.99),
            "long_share": len(long_) / n if n else float("nan"),
            "client_cpu_us_per_turn": 1e6 * cpu / n if n else float("nan"),
            "client_cpu_frac": cpu / wall,
            "server_cpu_frac": srv / wall,
            "http_requests": policy.http_requests - reqs0,
            "server_requests": stats["requests"],
            "server_max_batch": stats["max_batch_items"],
            "server_max_concurrent": stats["max_concurrent"],
            "errors": errors - errors0,
            "first_error": first_error,
        }
        print(json.dumps(out), flush=True)
        os._exit(0)  # skip tearing down 2,000 in-flight turns (and their aborts)
    return {}


# -- parent ------------------------------------------------------------------------------------


def _start_double() -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable,
        str(DOUBLE),
        f"--capacity={CAPACITY}",
        f"--per-token-s={PER_TOKEN_S}",
        f"--request-overhead-s={REQUEST_OVERHEAD_S}",
        f"--item-overhead-s={ITEM_OVERHEAD_S}",
        f"--short={SHORT}",
        f"--long={LONG}",
        f"--long-frac={LONG_FRAC}",
        "--token=100",
        "--eos=2",  # <|im_end|> in the tiny tokenizer (specials: endoftext, im_start, im_end)
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit(f"the SGLang double did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


def _run_one(strategy: str, tok: Path, args: argparse.Namespace) -> dict[str, Any]:
    proc, url = _start_double()
    try:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            strategy,
            "--url",
            url,
            "--tok",
            str(tok),
            "--server-pid",
            str(proc.pid),
            "--episodes",
            str(args.episodes),
            "--warmup",
            str(args.warmup),
            "--window",
            str(args.window),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if res.returncode != 0 or not res.stdout.strip():
            raise SystemExit(f"client {strategy} failed:\n{res.stderr[-3000:]}")
        return json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        proc.kill()
        proc.wait()


def _table(rows: list[dict[str, Any]]) -> str:
    base = next(r for r in rows if r["strategy"] == "naive")
    head = (
        f"{'strategy':<13}{'turns/s':>8}{'x naive':>8}{'util':>7}{'tok-util':>9}"
        f"{'short mean/p99 s':>17}{'long mean/p99 s':>17}{'client%':>8}{'cli ms':>8}{'lag ms':>10}"
        f"{'cpu us/turn':>12}"
        f"{'cli cpu':>8}{'srv cpu':>8}{'http req':>9}{'err':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['strategy']:<13}{r['turns_per_s']:>8.0f}"
            f"{r['turns_per_s'] / base['turns_per_s']:>8.2f}"
            f"{r['util']:>7.1%}{r['tok_util']:>9.1%}"
            f"{r['short_mean_s']:>9.2f}/{r['short_p99_s']:<7.2f}"
            f"{r['long_mean_s']:>9.2f}/{r['long_p99_s']:<7.2f}"
            f"{r['client_frac']:>8.1%}{r['client_ms_per_turn']:>8.0f}"
            f"{r['loop_lag_mean_ms']:>5.0f}/{r['loop_lag_p99_ms']:<4.0f}"
            f"{r['client_cpu_us_per_turn']:>12.0f}"
            f"{r['client_cpu_frac']:>8.2f}{r['server_cpu_frac']:>8.2f}"
            f"{r['http_requests']:>9}{r['errors']:>5}"
        )
    return "\n".join(lines)


# -- real vLLM (CPU build) ---------------------------------------------------------------------

VLLM_CONCURRENCY = (1, 32, 256)
VLLM_POLICIES = ("vllm", "openai")
VLLM_NEW_TOKENS = 8
VLLM_TURNS = 4
VLLM_MAX_MODEL_LEN = 2048
VLLM_ENVS = 4  # distinct instructions (one per env) among the episodes


def _long_instruction(tok_dir: Path, tokens: int) -> str:
    """A maze instruction padded to about ``tokens`` tokens of the tiny tokenizer."""
    from gymux.policies.tokens import ChatTokenizer

    tok = ChatTokenizer.from_dir(tok_dir)
    unit = "Solve the maze. Answer with Thought: ... Action: move <direction>. "
    per = len(tok.encode(unit))
    return unit * max(1, tokens // per)


async def _vllm_client(args: argparse.Namespace) -> None:
    if args.one_vllm == "vllm":
        from gymux.policies.vllm import VLLMPolicy

        policy: Any = VLLMPolicy(
            args.url,
            tokenizer=args.tok,
            max_new_tokens=VLLM_NEW_TOKENS,
            temperature=0.0,
            connections_per_server=max(256, args.episodes),
        )
    else:
        from gymux.policies.openai import OpenAICompatPolicy

        policy = OpenAICompatPolicy(
            base_url=args.url,
            model="tiny",
            max_tokens=VLLM_NEW_TOKENS,
            temperature=0.0,
            logprobs=True,
            max_concurrency=max(64, args.episodes),
        )
    instruction = _long_instruction(Path(args.tok), 1000)
    measuring = False
    turns = 0
    errors = 0
    first_error = ""
    prompt_tokens: list[int] = []

    async def episode_loop(idx: int) -> None:
        nonlocal turns, errors, first_error
        gen = 0
        while True:
            ep = f"e{idx}-{gen}"
            gen += 1
            # Each env has one instruction, the same for all its episodes (as real envs do).
            messages = _opening(f"[env {idx % VLLM_ENVS}] {instruction}", idx, gen)
            for turn in range(VLLM_TURNS):
                request = PolicyRequest(
                    episode_id=ep, env_id="maze", task_id=idx, turn=turn, messages=messages
                )
                try:
                    resp = await policy.act(request)
                except PolicyError as exc:
                    errors += 1
                    first_error = first_error or str(exc)[:300]
                    break
                if measuring:
                    turns += 1
                    if resp.prompt_tokens is not None:
                        prompt_tokens.append(resp.prompt_tokens)
                if resp.finish_reason == "context_limit":
                    break
                _reply(messages, resp.text, idx, turn)
            policy.finish_episode(ep)

    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile(time.process_time)
    gc_clock = GCClock()
    async with policy, anyio.create_task_group() as tg:
        for i in range(args.episodes):
            tg.start_soon(episode_loop, i)
        await anyio.sleep(args.warmup)
        gc0 = gc_clock.snapshot()
        cpu0, t0, errors0 = _self_cpu_s(), time.perf_counter(), errors
        measuring = True
        if profiler is not None:
            profiler.enable()
        await anyio.sleep(args.window)
        if profiler is not None:
            profiler.disable()
        measuring = False
        wall = time.perf_counter() - t0
        cpu = _self_cpu_s() - cpu0
        if profiler is not None:
            profiler.dump_stats(args.profile)
        out = {
            "policy": args.one_vllm,
            "episodes": args.episodes,
            "window_s": wall,
            "turns": turns,
            "turns_per_s": turns / wall,
            "client_cpu_us_per_turn": 1e6 * cpu / turns if turns else float("nan"),
            "client_cpu_frac": cpu / wall,
            "mean_prompt_tokens": sum(prompt_tokens) / len(prompt_tokens)
            if prompt_tokens
            else float("nan"),
            "errors": errors - errors0,
            "first_error": first_error,
            # The machine's 1-minute load average at the end of the window (others' work
            # on a shared machine inflates CPU time per turn).
            "load_avg_1m": os.getloadavg()[0],
            **gc_clock.since(gc0, turns),
        }
        print(json.dumps(out), flush=True)
        os._exit(0)


def _client_rows(url: str, tok: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each policy at each concurrency, each in a fresh client subprocess; with
    ``--before PATH``, each also with the gymux package found at PATH (an older tree,
    installed with ``pip install --no-deps --target PATH``), the two taking turns."""
    rows = []
    trees: list[tuple[str, str | None]] = [("now", args.client_pythonpath)]
    if args.before:
        trees.append(("before", args.before))
    for k, n in enumerate(args.concurrency or VLLM_CONCURRENCY):
        for policy in (args.policies or VLLM_POLICIES)[:: 1 if k % 2 == 0 else -1]:
            for tree, pythonpath in trees[:: 1 if k % 2 == 0 else -1]:
                env = dict(os.environ)
                if pythonpath:
                    env["PYTHONPATH"] = pythonpath
                cmd = [sys.executable, __file__, "--one-vllm", policy, "--url", url]
                cmd += ["--tok", str(tok), "--episodes", str(n)]
                cmd += ["--warmup", str(args.warmup), "--window", str(args.window)]
                if args.profile:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    cmd += ["--profile", str(args.profile / f"{policy}-x{n}-{tree}.prof")]
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
                if res.returncode != 0 or not res.stdout.strip():
                    raise SystemExit(f"client {policy} x{n} ({tree}) failed:\n{res.stderr[-3000:]}")
                row = json.loads(res.stdout.strip().splitlines()[-1])
                row["tree"] = tree
                rows.append(row)
                print(f"  {policy} x{n} ({tree}): done", flush=True)
    return rows


def _fake_vllm_rows(args: argparse.Namespace) -> None:
    from doubles.sglang_double import build_tiny_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tiny_tokenizer(Path(tmp) / "tok")
        cmd = [sys.executable, str(ROOT / "bench" / "_fake_vllm.py")]
        cmd += [f"--max-model-len={VLLM_MAX_MODEL_LEN}", f"--delay-s={args.fake_delay_s}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("PORT "):
                raise SystemExit(f"the fake vLLM did not start: {line!r}")
            url = f"http://127.0.0.1:{int(line.split()[1])}"
            print(
                f"FAKE vLLM server (bench/_fake_vllm.py, no model; answers after "
                f"{args.fake_delay_s:g} s) at {url}",
                flush=True,
            )
            rows = _client_rows(url, tok, args)
        finally:
            proc.kill()
            proc.wait()
    _print_vllm_rows(rows, args, label="FAKE vLLM server")


def _vllm_rows(args: argparse.Namespace) -> None:
    from doubles.tiny_model import build_tiny_model
    from doubles.vllm_server import VLLMServer, vllm_venv

    venv = vllm_venv()
    if venv is None:
        print("vLLM rows skipped: no vLLM venv (run `bash .ci/vllm-env`, or set GYMUX_VLLM_VENV)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "tiny", python=str(venv / "bin" / "python"))
        server = VLLMServer(venv, model, Path(tmp) / "server.log", max_model_len=VLLM_MAX_MODEL_LEN)
        t = time.perf_counter()
        server.start()
        print(f"real vLLM CPU server (tiny random Llama) ready in {time.perf_counter() - t:.0f} s")
        try:
            rows = _client_rows(server.url, model, args)
        finally:
            server.stop()
    _print_vllm_rows(rows, args, label="real vLLM CPU server")


def _print_vllm_rows(rows: list[dict[str, Any]], args: argparse.Namespace, *, label: str) -> None:
    print(f"against: {label}")
    head = f"{'policy':<8}{'tree':<7}{'episodes':>9}{'turns/s':>9}{'prompt tok':>11}"
    head += f"{'cpu us/turn':>12}"
    head += f"{'cli cpu':>8}{'err':>5}{'load':>6}  gc us/turn (gen 0/1/2)"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['policy']:<8}{r.get('tree', 'now'):<7}{r['episodes']:>9}{r['turns_per_s']:>9.1f}"
            f"{r['mean_prompt_tokens']:>11.0f}{r['client_cpu_us_per_turn']:>12.0f}"
            f"{r['client_cpu_frac']:>8.2f}{r['errors']:>5}{r['load_avg_1m']:>6.1f}"
            f"  {'/'.join(str(g) for g in r.get('gc_us_per_turn', []))}"
        )
    for r in rows:
        if r["errors"]:
            print(f"  {r['policy']} x{r['episodes']}: first error: {r['first_error']}")
    for r in rows:
        if r["policy"] == "vllm" and r.get("tree", "now") == "now":
            ok = r["client_cpu_us_per_turn"] < 200
            print(
                f"{'PASS' if ok else 'FAIL'} vllm x{r['episodes']}: client CPU "
                f"{r['client_cpu_us_per_turn']:.0f} us/turn at "
                f"~{r['mean_prompt_tokens']:.0f}-token prompts (target < 200 us; {label})"
            )
    if args.json:
        args.json.write_text(json.dumps({"vllm_rows": rows}, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short windows (< 60 s in all)")
    p.add_argument("--json", type=Path, help="also write every measurement here")
    p.add_argument("--only", action="append", choices=STRATEGIES)
    p.add_argument("--episodes", type=int, default=EPISODES)
    p.add_argument("--warmup", type=float)
    p.add_argument("--window", type=float)
    p.add_argument("--vllm", action="store_true", help="rows against a real vLLM CPU server")
    p.add_argument(
        "--fake-vllm", action="store_true", help="the --vllm rows against bench/_fake_vllm.py"
    )
    p.add_argument(
        "--fake-delay-s", type=float, default=0.05, help="--fake-vllm: answer after this long"
    )
    p.add_argument("--profile", type=Path, help="cProfile each client's window (CPU clock)")
    p.add_argument("--concurrency", type=int, action="append", help="--vllm episodes (repeat)")
    p.add_argument(
        "--before",
        metavar="PATH",
        help="--vllm/--fake-vllm: also run each client with the gymux package at PATH "
        "(an older tree: pip install --no-deps --target PATH <tree>), taking turns",
    )
    p.add_argument("--policies", action="append", choices=VLLM_POLICIES, help="--vllm policies")
    p.add_argument("--client-pythonpath", help=argparse.SUPPRESS)
    p.add_argument("--one", choices=STRATEGIES, help=argparse.SUPPRESS)
    p.add_argument("--one-vllm", choices=VLLM_POLICIES, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--tok", help=argparse.SUPPRESS)
    p.add_argument("--server-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.warmup is None:
        args.warmup = 6.0 if args.quick else 8.0
    if args.window is None:
        args.window = 4.0 if args.quick else 30.0
    if args.one:
        anyio.run(_client, args)
        return
    if args.one_vllm:
        anyio.run(_vllm_client, args)
        return
    if args.vllm:
        _vllm_rows(args)
        return
    if args.fake_vllm:
        _fake_vllm_rows(args)
        return

    from doubles.sglang_double import build_tiny_tokenizer

    strategies = args.only or list(STRATEGIES)
    if "naive" not in strategies:
        strategies.insert(0, "naive")
    cores = os.cpu_count()
    print(
        f"SGLang policy benchmark: {args.episodes} concurrent episodes x {TURNS} turns/episode, "
        f"warm-up {args.warmup:.0f} s, window {args.window:.0f} s per strategy\n"
        f"double (subprocess, TEST DOUBLE): B={CAPACITY}, {PER_TOKEN_S * 1000:g} ms/token, "
        f"frontend {REQUEST_OVERHEAD_S * 1000:g} ms/request + "
        f"{ITEM_OVERHEAD_S * 1000:g} ms/sequence; outputs {SHORT} tokens or {LONG} tokens "
        f"(~{LONG_FRAC:.0%})\n"
        f"machine: {cores} cores ({platform.processor() or platform.machine()}), "
        f"python {platform.python_version()}; client and double each run in their own "
        f"process and share these {cores} cores",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tiny_tokenizer(Path(tmp) / "tok")
        rows = []
        for s in strategies:
            t = time.perf_counter()
            rows.append(_run_one(s, tok, args))
            print(f"  {s}: done in {time.perf_counter() - t:.0f} s", flush=True)
    print()
    print(_table(rows))
    for r in rows:
        if r["errors"]:
            print(f"  {r['strategy']}: first error: {r['first_error']}")
    cap = rows[0]["capacity_turns_per_s"]
    print(
        f"\nserver capacity at this length mix: ~{cap:.0f} turns/s "
        f"(B / (mean generated tokens x per-token time))"
    )
    for r in rows:
        if r["strategy"] == "naive":
            continue
        u_ok = r["util"] >= UTIL_TARGET
        c_ok = r["client_frac"] < CLIENT_TARGET
        print(
            f"{'PASS' if u_ok else 'FAIL'} {r['strategy']}: server utilisation {r['util']:.1%} "
            f"(target >= {UTIL_TARGET:.0%}) at {r['episodes']} concurrent episodes"
        )
        print(
            f"{'PASS' if c_ok else 'FAIL'} {r['strategy']}: client-side time "
            f"{r['client_frac']:.2%} of a turn's wall time (target < {CLIENT_TARGET:.0%}); "
            f"client CPU {r['client_cpu_us_per_turn']:.0f} us/turn, "
            f"{r['client_cpu_frac']:.0%} of a core"
            + ("  [client CPU-bound]" if r["client_cpu_frac"] > 0.9 else "")
        )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
