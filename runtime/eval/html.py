"""The self-contained HTML report of ``gymux eval`` / ``gymux report``.

One file, no network: inline CSS, inline SVG bar charts drawn here in Python (success rate
and mean score per environment, with their 95% intervals; in a comparison, one bar per run
in each environment's group and a chart of the differences ``B - A``), the tables of the
Markdown report, and a trajectory viewer in plain JavaScript.

The viewer's data is JSON inside ``<script type="application/json">``; every ``<``, ``>``
and ``&`` in it is written as a ``\\u00XX`` escape, so no text from an episode can close the
script element, and the viewer puts text on the page with ``textContent`` only. Size caps:
each text field (observation, thought, action, error, instruction) keeps its first
:data:`FIELD_HEAD` and last :data:`FIELD_TAIL` characters when longer than
:data:`MAX_FIELD_CHARS`. The episodes' turns share a budget of :data:`MAX_EMBED_CHARS`
characters of JSON (less what the distinct instructions take, but at least half of it):
with ``c`` the largest cap such that ``sum(min(size_i, c))`` fits the budget, an episode
smaller than ``c`` is embedded whole and a larger one keeps its first turns up to ``c``
characters (always at least its first turn), with its text fields cut to ``c / 4``
characters (not below :data:`MIN_FIELD_CHARS`); the viewer says how many later turns were
left out. Every episode's metadata (env, task, sample, success, reward,
finish reason, number of turns) is always embedded.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from gymux.eval.metrics import EnvMetrics, EvalMetrics
from gymux.eval.report import (
    METRIC_COLUMNS,
    Comparison,
    EnvDiff,
    RunData,
    comparison_notes,
    identity_of,
    identity_text,
    metric_cells,
    report_notes,
    run_title,
    score_ranges_of,
    score_series,
)
from gymux.trajectory import Trajectory

__all__ = [
    "MAX_EMBED_CHARS",
    "MAX_FIELD_CHARS",
    "bar_chart_svg",
    "diff_chart_svg",
    "episode_payload",
    "json_for_script",
    "render_html",
    "split_react",
    "water_level",
]

MAX_FIELD_CHARS = 4000
FIELD_HEAD = 2500
FIELD_TAIL = 1000
MAX_EMBED_CHARS = 24_000_000
MIN_FIELD_CHARS = 300
#: Rows the episode list shows at once (the count says how many match).
MAX_LIST_ROWS = 1000

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f"]

_ACTION_RE = re.compile(r"^[\s*_#>]*action[\s*_]*:[ \t*_]*", re.IGNORECASE | re.MULTILINE)
_THOUGHT_RE = re.compile(r"^[\s*_#>]*thought[\s*_]*:[ \t*_]*", re.IGNORECASE)


def split_react(text: str) -> tuple[str | None, str]:
    """``(thought, action)`` of ReAct output (the last ``Action:`` line splits them);
    ``(None, text)`` when there is no ``Action:``."""
    matches = list(_ACTION_RE.finditer(text))
    if not matches:
        return None, text.strip()
    last = matches[-1]
    thought = _THOUGHT_RE.sub("", text[: last.start()], count=1).strip()
    return thought, text[last.end() :].strip()


def _cut(text: str | None, limit: int = MAX_FIELD_CHARS) -> str | None:
    if text is None or len(text) <= limit:
        return text
    head = FIELD_HEAD * limit // MAX_FIELD_CHARS
    tail = FIELD_TAIL * limit // MAX_FIELD_CHARS
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut} characters cut from the report ...]\n{text[-tail:]}"


def _preamble(t: Trajectory) -> tuple[str, str | None]:
    """The messages before the first observation (the instruction), and the observation
    after the last turn when the conversation ends with one."""
    msgs = t.messages
    first = t.turns[0].observation if t.turns else None
    end = len(msgs)
    for i, m in enumerate(msgs):
        if m.role == "user" and m.content == first:
            end = i
            break
    instruction = "\n\n".join(f"[{m.role}]\n{m.content}" for m in msgs[:end])
    final = None
    if msgs and msgs[-1].role == "user" and t.turns and msgs[-1].content != t.turns[-1].observation:
        final = msgs[-1].content
    return instruction, final


def _finite(x: float) -> float | None:
    """JSON has no NaN or infinity: those become ``null`` (shown as n/a)."""
    return x if math.isfinite(x) else None


def _turn(turn: Any, limit: int) -> dict[str, Any]:
    thought, action = split_react(turn.raw_output)
    return {
        "obs": _cut(turn.observation, limit),
        "thought": _cut(thought, limit),
        "action": _cut(action, limit),
        "parsed": turn.action,
        "parse_error": _cut(turn.parse_error, limit),
        "reward": _finite(turn.reward),
        "done": turn.done,
    }


def _size(item: dict[str, Any]) -> int:
    return len(json.dumps(item, ensure_ascii=False))


def water_level(sizes: Sequence[int], budget: int) -> float:
    """The largest cap ``c`` with ``sum(min(size, c)) <= budget`` (infinity when everything
    fits): episodes smaller than ``c`` are embedded whole, the others up to ``c``."""
    left, n = budget, len(sizes)
    for size in sorted(sizes):
        if size * n > left:
            return left / n
        left -= size
        n -= 1
    return math.inf


def episode_payload(
    runs: Sequence[RunData],
    *,
    max_field_chars: int = MAX_FIELD_CHARS,
    max_embed_chars: int = MAX_EMBED_CHARS,
) -> dict[str, Any]:
    """The viewer's data: runs, distinct instructions, and every episode (see the module
    docstring for the caps)."""
    trajs = [(index, t) for index, run in enumerate(runs) for t in run.trajectories]
    instructions: dict[str, int] = {}
    keys: list[int] = []
    finals: list[str | None] = []
    for _, t in trajs:
        instruction, final = _preamble(t)
        text = _cut(instruction, max_field_chars) or ""
        keys.append(instructions.setdefault(text, len(instructions)))
        finals.append(final)
    sizes = [sum(_size(_turn(turn, max_field_chars)) for turn in t.turns) for _, t in trajs]
    budget = max(max_embed_chars // 2, max_embed_chars - sum(map(len, instructions)))
    cap = water_level(sizes, budget)
    episodes: list[dict[str, Any]] = []
    for (index, t), key, final, full in zip(trajs, keys, finals, sizes, strict=True):
        limit = max_field_chars
        if full > cap:  # this episode gets a share only: cut long fields harder
            limit = max(MIN_FIELD_CHARS, min(max_field_chars, int(cap) // 4))
        turns: list[dict[str, Any]] = []
        used = 0
        for turn in t.turns:
            item = _turn(turn, limit)
            size = _size(item)
            if turns and used + size > cap:
                break
            turns.append(item)
            used += size
        episodes.append(
            {
                "run": index,
                "env": t.env_id,
                "task": t.task_id,
                "sample": t.sample,
                "split": t.split,
                "success": t.success,
                "reward": _finite(t.reward),
                "finish": str(t.finish_reason),
                "error": _cut(t.error, max_field_chars),
                "n_turns": t.num_turns,
                "invalid": t.invalid_actions,
                "episode_id": t.episode_id,
                "instruction": key,
                "turns": turns,
                "omitted_turns": t.num_turns - len(turns),
                "final_obs": _cut(final, limit),
            }
        )
    return {
        "runs": [
            {"letter": r.info.letter, "name": r.info.name, "policy": r.info.policy} for r in runs
        ],
        "instructions": list(instructions),
        "episodes": episodes,
    }


def json_for_script(data: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: ``<``, ``>``, ``&`` and the
    JavaScript line separators are ``\\u`` escapes."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(ch, esc)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


class _Series:
    def __init__(
        self, label: str, values: list[float], cis: list[tuple[float, float]], color: str
    ) -> None:
        self.label, self.values, self.cis, self.color = label, values, cis, color


PLOT_H = 180.0
_TOP, _LEFT, _BOTTOM = 36.0, 52.0, 46.0


def bar_chart_svg(
    chart_id: str,
    title: str,
    groups: Sequence[str],
    series: Sequence[tuple[str, Sequence[float], Sequence[tuple[float, float]]]],
    *,
    percent: bool = False,
) -> str:
    """A grouped bar chart (one group per env, one bar per series) with interval whiskers.

    Each bar is ``<rect class="bar" data-env data-series data-value>``; its height is
    ``|value| / (y_max - y_min) * PLOT_H`` with the y range ``[min(0, lows), max(1, highs)]``
    (``[0, 1]`` for rates), written on the ``<svg>`` as ``data-y-min`` / ``data-y-max``.
    """
    ss = [
        _Series(label, list(v), list(c), PALETTE[i % len(PALETTE)])
        for i, (label, v, c) in enumerate(series)
    ]
    lows = [lo for s in ss for lo, _ in s.cis] + [v for s in ss for v in s.values]
    highs = [hi for s in ss for _, hi in s.cis] + [v for s in ss for v in s.values]
    y_min = min([0.0, *lows])
    y_max = max([1.0, *highs])
    bar_w = 26.0 if len(ss) > 1 else 36.0
    gap = 22.0
    group_w = bar_w * len(ss) + gap
    legend_h = 18.0 * len(ss) if len(ss) > 1 else 0.0
    width = max(340.0, _LEFT + group_w * len(groups) + 20, 7.0 * len(title) + _LEFT)
    height = _TOP + PLOT_H + _BOTTOM + legend_h

    def y(v: float) -> float:
        return _TOP + PLOT_H * (y_max - v) / (y_max - y_min)

    out = [
        f'<svg id="{_e(chart_id)}" class="chart" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'role="img" aria-label="{_e(title)}" data-plot-height="{PLOT_H:.0f}" '
        f'data-y-min="{y_min!r}" data-y-max="{y_max!r}">',
        f'<text class="chart-title" x="{_LEFT}" y="16">{_e(title)}</text>',
    ]
    for k in range(5):
        v = y_min + (y_max - y_min) * k / 4
        label = f"{v * 100:.0f}%" if percent else f"{v:.2f}"
        out.append(
            f'<line class="grid" x1="{_LEFT}" x2="{width - 10:.0f}" y1="{y(v):.1f}" '
            f'y2="{y(v):.1f}"/><text class="tick" x="{_LEFT - 6}" y="{y(v) + 4:.1f}" '
            f'text-anchor="end">{label}</text>'
        )
    zero = y(0.0)
    for gi, group in enumerate(groups):
        x0 = _LEFT + gap / 2 + gi * group_w
        for si, s in enumerate(ss):
            v = s.values[gi]
            lo, hi = s.cis[gi]
            x = x0 + si * bar_w
            top, bottom = min(y(v), zero), max(y(v), zero)
            text = f"{v * 100:.1f}%" if percent else f"{v:.3f}"
            ci = f"[{lo * 100:.1f}%, {hi * 100:.1f}%]" if percent else f"[{lo:.3f}, {hi:.3f}]"
            out.append(
                f'<rect class="bar" data-env="{_e(group)}" data-series="{_e(s.label)}" '
                f'data-value="{v!r}" x="{x + 2:.1f}" y="{top:.3f}" width="{bar_w - 4:.1f}" '
                f'height="{bottom - top:.3f}" fill="{s.color}"><title>{_e(group)}'
                f"{' / ' + _e(s.label) if len(ss) > 1 else ''}: {text} {ci}</title></rect>"
            )
            cx = x + bar_w / 2
            out.append(
                f'<text class="value" x="{cx:.1f}" y="{min(top, y(hi)) - 4:.1f}" '
                f'text-anchor="middle">{text}</text>'
            )
            out.append(
                f'<path class="whisker" d="M{cx:.1f},{y(lo):.1f}V{y(hi):.1f}'
                f'M{cx - 5:.1f},{y(lo):.1f}h10M{cx - 5:.1f},{y(hi):.1f}h10"/>'
            )
        label_x = x0 + bar_w * len(ss) / 2
        out.append(
            f'<text class="group-label" x="{label_x:.1f}" y="{_TOP + PLOT_H + 16:.1f}" '
            f'text-anchor="middle">{_e(group)}</text>'
        )
    out.append(
        f'<line class="axis" x1="{_LEFT}" x2="{width - 10:.0f}" y1="{zero:.1f}" y2="{zero:.1f}"/>'
    )
    if len(ss) > 1:
        for si, s in enumerate(ss):
            ly = _TOP + PLOT_H + _BOTTOM - 6 + 18 * si
            out.append(
                f'<rect x="{_LEFT}" y="{ly - 10:.1f}" width="12" height="12" fill="{s.color}"/>'
                f'<text class="legend" x="{_LEFT + 18}" y="{ly:.1f}">{_e(s.label)}</text>'
            )
    out.append("</svg>")
    return "".join(out)


def diff_chart_svg(chart_id: str, title: str, rows: Sequence[EnvDiff]) -> str:
    """Differences ``B - A`` of success rates per env, as points with their intervals on a
    -100..+100 percentage-point axis (``<circle class="diff" data-env data-value>``)."""
    row_h, left, right_pad = 26.0, 120.0, 30.0
    plot_w = 360.0
    height = _TOP + row_h * len(rows) + 30
    width = left + plot_w + right_pad

    def x(v: float) -> float:
        return left + plot_w * (v + 1) / 2

    out = [
        f'<svg id="{_e(chart_id)}" class="chart" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'role="img" aria-label="{_e(title)}">',
        f'<text class="chart-title" x="10" y="16">{_e(title)}</text>',
    ]
    bottom = _TOP + row_h * len(rows)
    for v in (-1.0, -0.5, 0.0, 0.5, 1.0):
        cls = "axis" if v == 0 else "grid"
        out.append(
            f'<line class="{cls}" x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{_TOP - 6}" '
            f'y2="{bottom:.1f}"/><text class="tick" x="{x(v):.1f}" y="{bottom + 16:.1f}" '
            f'text-anchor="middle">{v * 100:+.0f}</text>'
        )
    for i, d in enumerate(rows):
        cy = _TOP + row_h * i + row_h / 2
        lo, hi = d.success_diff_ci
        out.append(
            f'<text class="group-label" x="{left - 8}" y="{cy + 4:.1f}" '
            f'text-anchor="end">{_e(d.env)}</text>'
            f'<line class="ci" x1="{x(lo):.1f}" x2="{x(hi):.1f}" y1="{cy:.1f}" y2="{cy:.1f}"/>'
            f'<circle class="diff" data-env="{_e(d.env)}" data-value="{d.success_diff!r}" '
            f'cx="{x(d.success_diff):.1f}" cy="{cy:.1f}" r="5"><title>{_e(d.env)}: '
            f"{d.success_diff * 100:+.1f} pp [{lo * 100:+.1f}, {hi * 100:+.1f}]</title></circle>"
        )
    out.append("</svg>")
    return "".join(out)


def _metrics_table(metrics: EvalMetrics) -> str:
    head = "<tr>" + "".join(f"<th>{_e(c)}</th>" for c in METRIC_COLUMNS) + "</tr>"

    def row(m: EnvMetrics, cls: str = "") -> str:
        cells = "".join(f"<td>{_e(c)}</td>" for c in metric_cells(m))
        return f'<tr class="{cls}">{cells}</tr>'

    rows = "".join(row(m) for m in metrics.envs) + row(metrics.overall, "overall")
    return f'<table class="metrics"><thead>{head}</thead><tbody>{rows}</tbody></table>'


def _diff_table(rows: Sequence[EnvDiff]) -> str:
    a, b = rows[0].a, rows[0].b
    head = (
        f"<tr><th>env</th><th>{a} success</th><th>{b} success</th>"
        f"<th>{b} - {a} [95% CI]</th><th>score {b} - {a} [95% CI]</th>"
        f"<th>episodes {a} / {b}</th><th>note</th></tr>"
    )
    body = []
    for d in rows:
        lo, hi = d.success_diff_ci
        clo, chi = d.score_diff_ci
        cls = "overall" if d.env == "overall" else ""
        diff = f"{d.success_diff * 100:+.1f} pp [{lo * 100:+.1f}, {hi * 100:+.1f}]"
        score = f"{d.score_diff:+.3f} [{clo:+.3f}, {chi:+.3f}]"
        note = "" if d.same_tasks else "different tasks"
        if not (d.episodes_a and d.episodes_b):
            diff, score, note = "n/a", "n/a", "no episodes"
        body.append(
            f'<tr class="{cls}" data-env="{_e(d.env)}"><td>{_e(d.env)}</td>'
            f"<td>{d.success_a * 100:.1f}%</td><td>{d.success_b * 100:.1f}%</td>"
            f"<td>{diff}</td><td>{score}</td>"
            f"<td>{d.episodes_a} / {d.episodes_b}</td><td>{note}</td></tr>"
        )
    return f'<table class="diff"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


#: Title of the score chart: scores are plotted as a fraction of each env's reward range,
#: so sciworld's 0-100 and everyone else's 0-1 share one axis (the tables keep raw units).
SCORE_TITLE = "Mean score, fraction of the env's reward range (95% bootstrap CI)"


def _run_section(run: RunData) -> str:
    m = run.metrics
    envs = [e.env for e in m.envs]
    success = bar_chart_svg(
        "chart-success",
        "Success rate (95% Wilson CI)",
        envs,
        [(run.info.letter, [e.success_rate for e in m.envs], [e.success_ci for e in m.envs])],
        percent=True,
    )
    score = bar_chart_svg(
        "chart-score", SCORE_TITLE, envs, [score_series(run.info.letter, m, run.score_ranges)]
    )
    return (
        f'<section id="summary"><h2>Results</h2>{_metrics_table(m)}'
        f'<div class="charts">{success}{score}</div></section>'
    )


def _comparison_section(
    comp: Comparison, ranges: Mapping[str, tuple[float, float]] | None = None
) -> str:
    ranges = ranges or {}
    envs = comp.shared_envs
    labels = [f"{r.letter}: {r.name}" for r in comp.runs]
    success = bar_chart_svg(
        "chart-success",
        "Success rate (95% Wilson CI)",
        envs,
        [
            (label, [e.success_rate for e in m.envs], [e.success_ci for e in m.envs])
            for label, m in zip(labels, comp.metrics, strict=True)
        ],
        percent=True,
    )
    score = bar_chart_svg(
        "chart-score",
        SCORE_TITLE,
        envs,
        [score_series(label, m, ranges) for label, m in zip(labels, comp.metrics, strict=True)],
    )
    notes = "".join(f"<p class='note'>{_e(n)}</p>" for n in comparison_notes(comp))
    parts = [
        f'<section id="summary"><h2>Comparison</h2>{notes}'
        f'<div class="charts">{success}{score}</div>'
    ]
    for rows in comp.diffs:
        a, b = rows[0].a, rows[0].b
        chart = diff_chart_svg(
            f"chart-diff-{b}", f"Success {b} - {a}, percentage points (95% Newcombe CI)", rows
        )
        parts.append(
            f'<h3>{_e(b)} - {_e(a)}</h3><div class="charts">{chart}</div>{_diff_table(rows)}'
        )
    for info, m in zip(comp.runs, comp.metrics, strict=True):
        parts.append(f"<h3>{_e(run_title(info))}</h3>{_metrics_table(m)}")
    parts.append("</section>")
    return "".join(parts)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;
max-width:1200px;padding:0 16px 48px;color:#222}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;margin-top:28px}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:right}th:first-child,td:first-child{text-align:left}tr.overall{font-weight:600}
td:last-child{text-align:left}
.charts{display:flex;flex-wrap:wrap;gap:24px;margin:12px 0}
.chart text{font-size:11px;fill:#333}.chart .chart-title{font-size:12px;font-weight:600}
.chart .grid{stroke:#e4e4e4}.chart .axis{stroke:#555}.chart .whisker,.chart .ci{stroke:#222;
stroke-width:1.5;fill:none}.chart .diff{fill:#e15759}.chart .value{font-size:10px;fill:#444}
.filters{display:flex;gap:14px;flex-wrap:wrap;align-items:center;margin:8px 0}
#viewer{display:grid;grid-template-columns:minmax(440px,1fr) 1.5fr;gap:16px}
#episode-list{max-height:80vh;overflow:auto;border:1px solid #ccc;position:sticky;top:8px;
align-self:start}#episode-list td,#episode-list th{padding:2px 5px}
#episode-list table{margin:0;width:100%;font-size:13px}#episode-list tr{cursor:pointer}
#episode-list tbody tr:hover{background:#f2f6fb}#episode-list tr.selected{background:#dce8f7}
.ok{color:#2a7a2a}.fail{color:#b03030}
#episode-view pre{white-space:pre-wrap;word-break:break-word;margin:2px 0 8px;padding:6px;
background:#f7f7f7;border-radius:4px}
.turn{border-left:3px solid #4e79a7;padding-left:10px;margin:10px 0}
.turn-head{font-weight:600}.label{font-size:12px;color:#666;text-transform:uppercase}
.thought{color:#555}.action{background:#eef5ea!important}.parse-error{color:#b03030}
.muted{color:#777}
"""

_JS = """
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("gymux-data").textContent);
  var MAX_ROWS = __MAX_ROWS__;
  function $(id) { return document.getElementById(id); }
  function num(x) { return x === null ? "n/a" : x.toFixed(3); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function unique(key) {
    var seen = [];
    DATA.episodes.forEach(function (ep) {
      if (seen.indexOf(ep[key]) < 0) { seen.push(ep[key]); }
    });
    return seen;
  }
  function options(select, pairs) {
    pairs.forEach(function (p) {
      var o = el("option", null, p[1]);
      o.value = p[0];
      select.appendChild(o);
    });
  }
  options($("filter-env"), unique("env").map(function (v) { return [v, v]; }));
  options($("filter-finish"), unique("finish").sort().map(function (v) { return [v, v]; }));
  options($("filter-run"), DATA.runs.map(function (r, i) {
    return [String(i), r.letter + ": " + r.name];
  }));
  if (DATA.runs.length < 2) { $("filter-run-box").hidden = true; }

  function matches(ep) {
    var env = $("filter-env").value, ok = $("filter-success").value;
    var fin = $("filter-finish").value, run = $("filter-run").value;
    if (env && ep.env !== env) { return false; }
    if (ok === "yes" && !ep.success) { return false; }
    if (ok === "no" && ep.success) { return false; }
    if (fin && ep.finish !== fin) { return false; }
    if (run && String(ep.run) !== run) { return false; }
    return true;
  }
  var selected = -1;
  function renderList() {
    var body = $("episode-rows");
    body.replaceChildren();
    var shown = 0, total = 0;
    DATA.episodes.forEach(function (ep, i) {
      if (!matches(ep)) { return; }
      total += 1;
      if (shown >= MAX_ROWS) { return; }
      shown += 1;
      var tr = el("tr", i === selected ? "selected" : null);
      tr.dataset.index = String(i);
      tr.tabIndex = 0;
      var cells = [DATA.runs[ep.run].letter, ep.env, ep.task, ep.sample,
                   ep.success ? "yes" : "no", num(ep.reward), ep.n_turns, ep.finish];
      cells.forEach(function (c, k) {
        var td = el("td", k === 4 ? (ep.success ? "ok" : "fail") : null, c);
        tr.appendChild(td);
      });
      tr.addEventListener("click", function () { showEpisode(i); });
      tr.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter") { showEpisode(i); }
      });
      body.appendChild(tr);
    });
    var text = total + " of " + DATA.episodes.length + " episodes";
    if (total > shown) { text += " (first " + shown + " listed; narrow the filters)"; }
    $("episode-count").textContent = text;
  }
  function field(parent, label, text, cls) {
    if (text === null || text === undefined) { return; }
    parent.appendChild(el("div", "label", label));
    parent.appendChild(el("pre", cls, text));
  }
  function showEpisode(i) {
    var ep = DATA.episodes[i], view = $("episode-view");
    selected = i;
    Array.prototype.forEach.call(document.querySelectorAll("#episode-rows tr"), function (tr) {
      tr.classList.toggle("selected", tr.dataset.index === String(i));
    });
    view.replaceChildren();
    view.dataset.index = String(i);
    var run = DATA.runs[ep.run];
    view.appendChild(el("h3", null, run.letter + ": " + run.name + " \\u00b7 " + ep.env +
      " \\u00b7 task " + ep.task + " \\u00b7 sample " + ep.sample));
    var outcome = el("p", "outcome");
    outcome.appendChild(el("span", ep.success ? "ok" : "fail",
      ep.success ? "success" : "failure"));
    outcome.appendChild(document.createTextNode(" \\u00b7 final reward " +
      num(ep.reward) + " \\u00b7 finish reason " + ep.finish + " \\u00b7 " +
      ep.n_turns + " turns \\u00b7 " + ep.invalid + " invalid actions"));
    view.appendChild(outcome);
    view.appendChild(el("p", "muted", ep.episode_id));
    if (ep.error) { field(view, "Error", ep.error, "parse-error"); }
    var instr = DATA.instructions[ep.instruction];
    if (instr) {
      var det = el("details");
      det.appendChild(el("summary", null, "Instruction"));
      det.appendChild(el("pre", "instruction", instr));
      view.appendChild(det);
    }
    var list = el("ol", "turns");
    ep.turns.forEach(function (t, k) {
      var li = el("li", "turn");
      li.appendChild(el("div", "turn-head", "Turn " + (k + 1) + " \\u00b7 reward " +
        num(t.reward) + (t.done ? " \\u00b7 done" : "")));
      field(li, "Observation", t.obs, "obs");
      if (t.thought !== null) { field(li, "Thought", t.thought, "thought"); }
      field(li, t.thought === null ? "Output" : "Action", t.action, "action");
      if (t.parsed !== null && t.parsed !== t.action) {
        field(li, "Parsed action", t.parsed, "parsed");
      }
      field(li, "Parse error", t.parse_error, "parse-error");
      list.appendChild(li);
    });
    view.appendChild(list);
    if (ep.omitted_turns > 0) {
      view.appendChild(el("p", "muted", ep.omitted_turns +
        " later turns are not embedded (report size cap); read them from the store."));
    }
    field(view, "Final observation", ep.final_obs, "obs final");
    view.appendChild(el("p", "final-outcome", "Final reward " + num(ep.reward) +
      ", finish reason " + ep.finish + "."));
    if (window.location.hash !== "#episode-" + i) {
      history.replaceState(null, "", "#episode-" + i);
    }
  }
  ["filter-env", "filter-success", "filter-finish", "filter-run"].forEach(function (id) {
    $(id).addEventListener("change", renderList);
  });
  renderList();
  var m = /^#episode-(\\d+)$/.exec(window.location.hash);
  if (m && DATA.episodes[Number(m[1])]) { showEpisode(Number(m[1])); }
  window.gymuxViewer = { data: DATA, show: showEpisode, render: renderList };
})();
"""

_VIEWER = """
<section id="trajectories"><h2>Trajectories</h2>
<div class="filters">
<label id="filter-run-box">run
<select id="filter-run"><option value="">all</option></select></label>
<label>environment <select id="filter-env"><option value="">all</option></select></label>
<label>success <select id="filter-success"><option value="">all</option>
<option value="yes">yes</option><option value="no">no</option></select></label>
<label>finish reason <select id="filter-finish"><option value="">all</option></select></label>
<span id="episode-count" class="muted"></span>
</div>
<div id="viewer">
<div id="episode-list"><table><thead><tr><th>run</th><th>env</th><th>task</th>
<th>sample</th><th>success</th><th>reward</th><th>turns</th><th>finish</th></tr></thead>
<tbody id="episode-rows"></tbody></table></div>
<div id="episode-view"><p class="muted">Pick an episode in the list.</p></div>
</div></section>
"""


def render_html(
    runs: Sequence[RunData],
    comparison: Comparison | None = None,
    *,
    max_field_chars: int = MAX_FIELD_CHARS,
    max_embed_chars: int = MAX_EMBED_CHARS,
) -> str:
    """The whole report page: one run's results, or ``comparison`` of ``runs``."""
    if comparison is None:
        info = runs[0].info
        title = f"gymux eval: suite {info.suite}, policy {info.policy}"
        head = f"<p class='muted'>{_e(info.path)}</p>"
        identity = identity_text(identity_of(info.path))
        if identity:
            head += f"<p class='identity'>Policy {_e(info.policy)}: {_e(identity)}</p>"
        head += "".join(f"<p class='muted'>{_e(n)}</p>" for n in report_notes(runs[0].metrics))
        body = _run_section(runs[0])
    else:
        title = f"gymux report: {len(runs)} runs compared"
        head = "<ul>" + "".join(
            f"<li>{_e(run_title(r))}: <span class='muted'>{_e(r.path)}</span></li>"
            for r in comparison.runs
        )
        head += "</ul>"
        body = _comparison_section(comparison, score_ranges_of(runs))
    data = episode_payload(runs, max_field_chars=max_field_chars, max_embed_chars=max_embed_chars)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1>{head}{body}{_VIEWER}"
        f'<script type="application/json" id="gymux-data">{json_for_script(data)}</script>'
        f"<script>{_JS.replace('__MAX_ROWS__', str(MAX_LIST_ROWS))}</script></body></html>\n"
    )
