"""The HTML report, its trajectory viewer and the PNG charts.

Unit tests check the page's pieces (ReAct splitting, JSON escaping, size caps, SVG bar
heights, PNG files). The browser tests load real reports (from real ``gymux eval`` and
``gymux report`` runs) in a headless Chromium driven over the DevTools protocol: the page
loads without JavaScript errors, the charts have one bar per env with the right heights,
the filters change the episode list, an episode opens turn by turn, and text from an
episode is shown as text, never run as markup.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gymux.eval.charts import charts_available, write_charts
from gymux.eval.html import (
    PLOT_H,
    bar_chart_svg,
    episode_payload,
    json_for_script,
    render_html,
    split_react,
    water_level,
)
from gymux.eval.metrics import compute_metrics
from gymux.eval.report import RunData, RunInfo, compare_runs
from gymux.eval.run import read_store
from gymux.messages import Message
from gymux.trajectory import FinishReason, Trajectory, Turn

CHROMIUM = Path("/usr/bin/chromium")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
XSS = "</script><script>window.__pwned=1;alert(1)</script>"
XSS_IMG = '<img src=x onerror="window.__pwned=2">'

# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


TrajMaker = Callable[..., Trajectory]


def _with_chat(
    make_traj: TrajMaker, env: str, task: int, success: bool, turns: list[Turn], **kw: Any
) -> Trajectory:
    """A trajectory whose messages are the chat of ``turns``."""
    messages = [Message(role="user", content=f"instruction for {env}")]
    messages.append(Message(role="assistant", content="OK"))
    for t in turns:
        messages.append(Message(role="user", content=t.observation))
        messages.append(Message(role="assistant", content=t.raw_output))
    return make_traj(env, task, success, messages=messages, turns=turns, **kw)


def _run(trajs: list[Trajectory], letter: str = "A", name: str = "synthetic") -> RunData:
    envs = sorted({t.env_id for t in trajs})
    info = RunInfo(letter=letter, name=name, path=f"/runs/{name}", suite="s", policy="p")
    return RunData(
        info=info, seed=0, envs=envs, metrics=compute_metrics(trajs, envs=envs), trajectories=trajs
    )


def _xss_run(make_traj: TrajMaker) -> RunData:
    turns = [
        Turn(
            index=0,
            observation=XSS,
            raw_output=f"Thought:\nI see {XSS_IMG}\n\nAction:\nlook </script>",
            action="look </script>",
        ),
        Turn(
            index=1,
            observation="second",
            raw_output="Action: stop",
            action="stop",
            done=True,
            reward=float("nan"),  # JSON has no NaN: shown as n/a
        ),
    ]
    return _run([_with_chat(make_traj, "evil<env>", 0, True, turns)])


# --------------------------------------------------------------------------------------
# Unit tests
# --------------------------------------------------------------------------------------


def test_split_react() -> None:
    assert split_react("Thought:\nclose to goal\n\nAction:\nmove up") == (
        "close to goal",
        "move up",
    )
    assert split_react("Thought: a\nAction: one\nmore\nAction: two") == (
        "a\nAction: one\nmore",
        "two",
    )
    assert split_react("**Action:** go") == ("", "go")
    assert split_react("just text") == (None, "just text")


def test_json_for_script_cannot_close_the_script() -> None:
    data = {"obs": XSS, "sep": "a\u2028b", "amp": "&lt;"}
    text = json_for_script(data)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == data


def test_page_embeds_episode_text_only_as_escaped_json(make_traj: TrajMaker) -> None:
    page = render_html([_xss_run(make_traj)])
    # The only script elements are the data block and the viewer.
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert "alert(1)" not in page.replace("window.__pwned=1;alert(1)", "")  # only in JSON
    assert XSS not in page and XSS_IMG not in page
    assert "evil&lt;env&gt;" in page  # env names in tables/charts are HTML-escaped
    blob = re.search(r'<script type="application/json" id="gymux-data">(.*?)</script>', page)
    assert blob is not None
    assert "NaN" not in blob.group(1)
    data = json.loads(blob.group(1))
    first = data["episodes"][0]["turns"][0]
    assert first["obs"] == XSS
    assert first["thought"] == f"I see {XSS_IMG}" and first["action"] == "look </script>"
    assert data["instructions"] == ["[user]\ninstruction for evil<env>\n\n[assistant]\nOK"]


def test_water_level() -> None:
    assert water_level([1, 2, 10, 10], 13) == 5.0  # 1 + 2 + 5 + 5
    assert water_level([1, 2, 10, 10], 23) == math.inf
    assert water_level([], 0) == math.inf


def test_payload_caps_long_text_and_turns(make_traj: TrajMaker) -> None:
    long = "x" * 50_000
    turns = [Turn(index=i, observation=long, raw_output="Action: a", action="a") for i in range(40)]
    short = [Turn(index=i, observation="o", raw_output="Action: b", action="b") for i in range(3)]
    run = _run(
        [
            _with_chat(make_traj, "maze", 0, False, turns, finish_reason=FinishReason.MAX_TURNS),
            _with_chat(make_traj, "maze", 1, True, short),
        ]
    )

    def size(ep: dict[str, Any]) -> int:
        return sum(len(json.dumps(t, ensure_ascii=False)) for t in ep["turns"])

    data = episode_payload([run], max_field_chars=1000, max_embed_chars=20_000)
    big, small = data["episodes"]
    obs = big["turns"][0]["obs"]
    assert len(obs) < 1100 and "characters cut from the report" in obs
    assert obs.startswith("x" * 600) and obs.endswith("x" * 200)
    # The short episode is whole; the long one fills the rest of the budget.
    assert small["omitted_turns"] == 0 and len(small["turns"]) == 3
    assert 10 < len(big["turns"]) < 40 and big["n_turns"] == 40
    assert big["omitted_turns"] == 40 - len(big["turns"])
    assert size(big) + size(small) <= 20_000 < size(big) + size(small) + 1100
    # A tiny budget: the first turn of each episode, fields cut to MIN_FIELD_CHARS.
    tiny = episode_payload([run], max_embed_chars=1)["episodes"]
    assert [len(ep["turns"]) for ep in tiny] == [1, 1]
    assert len(tiny[0]["turns"][0]["obs"]) < 400
    # The default budget embeds everything.
    full = episode_payload([run])["episodes"]
    assert [ep["omitted_turns"] for ep in full] == [0, 0]
    assert len(full[0]["turns"][0]["obs"]) < 4100


def test_svg_bars_have_data_heights() -> None:
    svg = bar_chart_svg(
        "c",
        "t",
        ["maze", "wordle"],
        [("A", [0.25, 1.0], [(0.1, 0.5), (0.6, 1.0)]), ("B", [0.0, 0.5], [(0, 0.3), (0.2, 0.8)])],
        percent=True,
    )
    root = ET.fromstring(svg)
    bars = [e for e in root.iter() if e.get("class") == "bar"]
    got = [(b.get("data-env"), b.get("data-series"), float(b.get("height", "nan"))) for b in bars]
    want = [("maze", "A", 0.25), ("maze", "B", 0.0), ("wordle", "A", 1.0), ("wordle", "B", 0.5)]
    assert [(e, s) for e, s, _ in got] == [(e, s) for e, s, _ in want]
    for (_, _, h), (_, _, v) in zip(got, want, strict=True):
        assert h == pytest.approx(v * PLOT_H, abs=0.01)


def test_png_charts_single_and_comparison(tmp_path: Path, make_traj: TrajMaker) -> None:
    pytest.importorskip("matplotlib")
    a = _xss_run(make_traj)
    paths = write_charts(tmp_path / "one", [a], None)
    assert [p.name for p in paths] == ["success.png", "score.png"]
    b = _run(a.trajectories, letter="B", name="other")
    comp = compare_runs([a, b])
    paths = write_charts(tmp_path / "two", [a, b], comp)
    assert [p.name for p in paths] == ["success.png", "score.png", "diff-B.png"]
    for p in paths:
        head = p.read_bytes()[:24]
        assert head[:8] == PNG_MAGIC and head[12:16] == b"IHDR"
        width, height = struct.unpack(">II", head[16:24])
        assert width > 300 and height > 200


def test_eval_writes_html_and_charts(mini_evals: dict[str, Path]) -> None:
    out = mini_evals["oracle"]
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page  # self-contained: nothing fetched
    if charts_available():  # the `plot` extra
        assert sorted(p.name for p in (out / "charts").iterdir()) == ["score.png", "success.png"]


# --------------------------------------------------------------------------------------
# Headless Chromium over the DevTools protocol
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator[int]:
    """A headless Chromium; yields its DevTools port. Killed at teardown."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install -y chromium)")
    profile = Path(tempfile.mkdtemp(prefix="gymux-chromium-"))
    proc = subprocess.Popen(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"chromium exited with {proc.returncode}")
            text = port_file.read_text() if port_file.exists() else ""
            if text.strip():
                break
            time.sleep(0.05)
        else:
            pytest.fail("chromium did not open its DevTools port within 30 s")
        yield int(text.split()[0])
    finally:
        # The browser's helpers (zygote, renderers, GPU) share its new session's process
        # group: kill the group, so nothing outlives the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


class Page:
    """A minimal DevTools-protocol client for one page target."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        call_id = self.next_id
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=20)
            if msg.get("id") == call_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg["result"]
                return result
            await self._event(msg)

    async def _event(self, msg: dict[str, Any]) -> None:
        self.events.append(msg)
        if msg.get("method") == "Page.javascriptDialogOpening":
            # Never leave a dialog blocking the page; the test fails on it anyway.
            await self.ws.send_json(
                {"id": 0, "method": "Page.handleJavaScriptDialog", "params": {"accept": True}}
            )

    async def wait_event(self, method: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events:
                if ev.get("method") == method:
                    self.events.remove(ev)
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {method} within {timeout} s")
            await self._event(await self.ws.receive_json(timeout=left))

    async def js(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def open(self, path: Path) -> None:
        await self.call("Page.navigate", url=path.resolve().as_uri())
        await self.wait_event("Page.loadEventFired")

    def errors(self) -> list[dict[str, Any]]:
        """Uncaught exceptions, dialogs, console errors and failed loads seen so far."""
        return [ev for ev in self.events if _is_error(ev)]


def _is_error(ev: dict[str, Any]) -> bool:
    method, params = ev.get("method"), ev.get("params", {})
    if method in ("Runtime.exceptionThrown", "Page.javascriptDialogOpening"):
        return True
    if method == "Runtime.consoleAPICalled":
        return bool(params.get("type") == "error")
    return method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error"


async def _page(port: int) -> tuple[Any, Any, Page]:
    import aiohttp

    session = aiohttp.ClientSession()
    async with session.get(f"http://127.0.0.1:{port}/json") as resp:
        targets = await resp.json()
    url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
    ws = await session.ws_connect(url, max_msg_size=64 * 1024 * 1024)
    page = Page(ws)
    for domain in ("Page", "Runtime", "Log"):
        await page.call(f"{domain}.enable")
    return session, ws, page


ROWS = "document.querySelectorAll('#episode-rows tr').length"


async def _select(page: Page, select_id: str, value: str) -> int:
    await page.js(
        f"(() => {{ const s = document.getElementById({json.dumps(select_id)}); "
        f"s.value = {json.dumps(value)}; s.dispatchEvent(new Event('change')); }})()"
    )
    rows: int = await page.js(ROWS)
    return rows


@pytest.mark.anyio
async def test_browser_single_run_report(
    chromium: int, mini_evals: dict[str, Path], tmp_path: Path
) -> None:
    session, ws, page = await _page(chromium)
    try:
        await page.open(mini_evals["random"] / "report.html")
        assert await page.js("document.title") == "gymux eval: suite mini, policy random"
        report = json.loads((mini_evals["random"] / "report.json").read_text())
        # One bar per env, heights from the metrics, drawn with a real size.
        bars = await page.js(
            "Array.from(document.querySelectorAll('#chart-success rect.bar')).map(r => "
            "[r.dataset.env, Number(r.dataset.value), Number(r.getAttribute('height')), "
            "r.getBoundingClientRect().width])"
        )
        assert [b[0] for b in bars] == [e["env"] for e in report["envs"]] == ["maze", "wordle"]
        for (_, value, height, width), env in zip(bars, report["envs"], strict=True):
            assert value == env["success_rate"]
            assert height == pytest.approx(value * PLOT_H, abs=0.01) and width > 10
        scores = await page.js(
            "Array.from(document.querySelectorAll('#chart-score rect.bar')).map(r => "
            "Number(r.dataset.value))"
        )
        assert scores == [e["mean_score"] for e in report["envs"]]
        # Filters change the list.
        trajs = read_store(mini_evals["random"])
        assert await page.js(ROWS) == len(trajs) == 6
        assert await _select(page, "filter-env", "maze") == 3
        reasons = {t.finish_reason for t in trajs if t.env_id == "maze"}
        reason = sorted(reasons)[0]
        want = sum(1 for t in trajs if t.env_id == "maze" and t.finish_reason == reason)
        assert await _select(page, "filter-finish", str(reason)) == want
        assert await _select(page, "filter-success", "yes") == 0
        assert await page.js("document.getElementById('episode-count').textContent") == (
            "0 of 6 episodes"
        )
        await _select(page, "filter-success", "")
        await _select(page, "filter-finish", "")
        assert await _select(page, "filter-env", "wordle") == 3
        # Click an episode: its turns in order.
        await page.js("document.querySelector('#episode-rows tr').click()")
        view = await page.js(
            "(() => { const v = document.getElementById('episode-view'); return {"
            "index: Number(v.dataset.index),"
            "turns: v.querySelectorAll('li.turn').length,"
            "obs: Array.from(v.querySelectorAll('li.turn pre.obs')).map(e => e.textContent),"
            "thought: v.querySelector('li.turn pre.thought').textContent,"
            "action: v.querySelector('li.turn pre.action').textContent,"
            "text: v.textContent}; })()"
        )
        first = sorted((t for t in trajs if t.env_id == "wordle"), key=lambda t: t.task_id)[0]
        assert view["turns"] == first.num_turns
        assert view["obs"] == [t.observation for t in first.turns]
        assert view["thought"] == "I pick an action at random."
        assert view["action"] == split_react(first.turns[0].raw_output)[1]
        assert view["action"].startswith("guess ")
        assert f"finish reason {first.finish_reason}" in view["text"]
        assert await page.js("location.hash") == f"#episode-{view['index']}"
        shot = await page.call("Page.captureScreenshot", format="png")
        png = base64.b64decode(shot["data"])
        (tmp_path / "report.png").write_bytes(png)
        assert png[:8] == PNG_MAGIC and struct.unpack(">II", png[16:24])[0] > 500
        assert page.errors() == []
    finally:
        await ws.close()
        await session.close()


@pytest.mark.anyio
async def test_browser_comparison_report(chromium: int, mini_evals: dict[str, Path]) -> None:
    session, ws, page = await _page(chromium)
    try:
        await page.open(mini_evals["cmp"] / "report.html")
        bars = await page.js(
            "Array.from(document.querySelectorAll('#chart-success rect.bar')).map(r => "
            "[r.dataset.env, r.dataset.series, Number(r.getAttribute('height'))])"
        )
        assert bars == [
            ["maze", "A: oracle", pytest.approx(PLOT_H)],
            ["maze", "B: random", 0.0],
            ["wordle", "A: oracle", pytest.approx(PLOT_H)],
            ["wordle", "B: random", 0.0],
        ]
        diffs = await page.js(
            "Array.from(document.querySelectorAll('#chart-diff-B circle.diff')).map(c => "
            "[c.dataset.env, Number(c.dataset.value)])"
        )
        assert diffs == [["maze", -1.0], ["wordle", -1.0], ["overall", -1.0]]
        assert await page.js(ROWS) == 12
        assert await _select(page, "filter-run", "1") == 6
        assert await _select(page, "filter-success", "yes") == 0
        assert await _select(page, "filter-run", "0") == 6
        await page.js("document.querySelector('#episode-rows tr').click()")
        head = await page.js("document.querySelector('#episode-view h3').textContent")
        assert head.startswith("A: oracle")
        assert page.errors() == []
    finally:
        await ws.close()
        await session.close()


@pytest.mark.anyio
async def test_browser_shows_markup_as_text(
    chromium: int, tmp_path: Path, make_traj: TrajMaker
) -> None:
    path = tmp_path / "report.html"
    path.write_text(render_html([_xss_run(make_traj)]), encoding="utf-8")
    session, ws, page = await _page(chromium)
    try:
        await page.open(path)
        await page.js("document.querySelector('#episode-rows tr').click()")
        got = await page.js(
            "(() => { const v = document.getElementById('episode-view'); return {"
            "obs: v.querySelector('pre.obs').textContent,"
            "thought: v.querySelector('pre.thought').textContent,"
            "imgs: document.querySelectorAll('img').length, text: v.textContent,"
            "pwned: window.__pwned === undefined ? null : window.__pwned}; })()"
        )
        assert "Turn 2 \u00b7 reward n/a \u00b7 done" in got.pop("text")
        assert got == {"obs": XSS, "thought": f"I see {XSS_IMG}", "imgs": 0, "pwned": None}
        assert await page.js("document.querySelector('#summary td').textContent") == "evil<env>"
        assert page.errors() == []
    finally:
        await ws.close()
        await session.close()


def test_score_chart_plots_fractions_of_each_env_reward_range(make_traj: TrajMaker) -> None:
    """sciworld scores 0-100 and maze 0-1: the chart puts both on one 0..1 axis (the table
    keeps each env's own units)."""
    trajs = [
        _with_chat(make_traj, "sciworld", 0, False, [], reward=50.0),
        _with_chat(make_traj, "sciworld", 1, True, [], reward=100.0),
        _with_chat(make_traj, "maze", 0, True, []),
    ]
    run = _run(trajs)
    run.score_ranges = {"sciworld": (0.0, 100.0), "maze": (0.0, 1.0)}
    page = render_html([run])
    chart = page[page.index('id="chart-score"') :]
    chart = chart[: chart.index("</svg>")]
    values = dict(re.findall(r'data-env="(\w+)"[^>]*data-value="([0-9.]+)"', chart))
    assert float(values["sciworld"]) == 0.75 and float(values["maze"]) == 1.0
    assert "75.000" in page  # the table shows sciworld's mean score in its own units
