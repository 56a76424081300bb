"""A trace viewer: one self-contained HTML page per question (`collabthink view`).

Input: a trace as written by `collabthink solve --json` (`Result.to_dict()`, or a bare `Trace.to_dict()`),
or a run file of `collabthink eval`. A run file gives an index page (questions × methods, correctness,
links) and one page per question beside it, `q-<id>.html`; `question=` renders just that question.

Pages use inline CSS, a little vanilla JS and inline SVG only: no network, no library. Every piece of
model text goes through `html.escape`. Missing trace keys are skipped, so every method's trace renders
(CPT shows rounds, pool and broadcasts; parallel, DeepConf and LEAP show what they record).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any, Iterable

__all__ = ["ViewerError", "load_input", "render_trace_page", "render_question_page", "render_index",
           "question_filename", "write_view"]


class ViewerError(ValueError):
    """Input the viewer cannot use; the message says why and what to do."""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool) or value is None:
        return esc(value if value is not None else "–")
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return esc(value)


def _per_branch(value: Any, index: int, default: Any = None) -> Any:
    """A per-branch figure of a round record: a dict keyed by index (str after JSON) or a list."""
    if isinstance(value, dict):
        return value.get(str(index), value.get(index, default))
    if isinstance(value, list):
        return value[index] if 0 <= index < len(value) else default
    return default


def _dict(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _list(x: Any) -> list:
    return x if isinstance(x, list) else []


# ---------------------------------------------------------------------------------------------- input
def load_input(path: str | Path) -> tuple[str, Any]:
    """('trace', (trace, result_or_None)) for a trace file, ('run', (header, records)) for a run file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ViewerError(f"file '{path}' not found: pass a trace (`collabthink solve --json`) "
                          "or a run file (`collabthink eval`)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ViewerError(f"cannot read '{path}': {getattr(e, 'strerror', None) or e}") from None
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and obj.get("type") != "header":
        if isinstance(obj.get("trace"), dict):
            return "trace", (obj["trace"], obj)
        if "branches" in obj:
            return "trace", (obj, None)
        raise ViewerError(f"'{path}' is JSON but not a collabthink trace (no 'trace' or 'branches')")
    first = text.lstrip().split("\n", 1)[0]
    try:
        head = json.loads(first)
    except ValueError:
        head = None
    if not (isinstance(head, dict) and head.get("type") == "header"):
        raise ViewerError(f"'{path}' is neither a trace (JSON) nor a run file (JSONL with a header line)")
    from .evaluation.runfile import read_run

    return "run", read_run(path)


# ---------------------------------------------------------------------------------------------- style
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;padding:16px 24px;color:#1d232b;background:#fafbfc}
h1{font-size:20px;margin:0 0 6px}h2{font-size:16px;margin:22px 0 8px;border-bottom:1px solid #dde2e8;padding-bottom:3px}
h3{font-size:15px;margin:14px 0 6px}
.meta{color:#555;font-size:13px}.problem{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:8px 12px;white-space:pre-wrap}
table{border-collapse:collapse;background:#fff;margin:4px 0}td,th{border:1px solid #dde2e8;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f3f6;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.timeline td.cell{min-width:64px;text-align:center;cursor:pointer;font-variant-numeric:tabular-nums;position:relative}
.ph-explore{background:#dbeafe}.ph-broadcast{background:#fde68a}.ph-finalize{background:#e9d5ff}
.ph-decode{background:#dbeafe}.ph-answer{background:#e9d5ff}.ph-other{background:#e5e7eb}.idle{background:#f7f7f7;color:#bbb}
.bc{display:block;font-size:11px;color:#92400e}
.end{display:inline-block;margin-left:4px;padding:0 5px;border-radius:8px;font-size:11px;font-weight:700;color:#fff;background:#6b7280}
.end.ok{background:#15803d;color:#fff}.end.bad{background:#b91c1c;color:#fff}
.legend span{display:inline-block;padding:1px 8px;margin-right:6px;border-radius:4px;font-size:12px}
.ok{color:#15803d}.bad{color:#b91c1c}
details.branch{background:#fff;border:1px solid #dde2e8;border-radius:6px;margin:6px 0;padding:4px 10px}
details.branch>summary{cursor:pointer;font-weight:600}
.seg{white-space:pre-wrap;font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace;padding:4px 6px;margin:2px 0}
.seg-broadcast,.seg-injected{background:#fef3c7;border-left:4px solid #f59e0b}
.seg-cut{background:#fee2e2;border-left:4px solid #ef4444}
.seg-label{display:block;font:600 11px system-ui,sans-serif;color:#92400e;margin-bottom:2px}
.seg-generated .seg-label{color:#1e40af}
.kind-insight{color:#1e40af}.kind-pitfall{color:#b45309}
.winner{font-weight:700;background:#dcfce7}
.bar{display:flex;height:14px;width:420px;border:1px solid #ccc;margin:4px 0}.bar div{height:100%}
section.trace{border-top:3px solid #94a3b8;margin-top:26px;padding-top:6px}
.btn{font-size:12px;margin:0 4px 4px 0;cursor:pointer}
"""

JS = """
function openBranch(id){var d=document.getElementById(id);if(d){d.open=true;d.scrollIntoView({behavior:'smooth'});}}
function setAll(sel,open){document.querySelectorAll(sel).forEach(function(d){d.open=open;});}
"""

PHASES = ("explore", "broadcast", "finalize", "decode", "answer")


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style><script>{JS}</script></head>"
            f"<body>{body}</body></html>\n")


def _phase_class(phase: Any) -> str:
    return f"ph-{phase}" if phase in PHASES else "ph-other"


# ---------------------------------------------------------------------------------------------- parts
def _ended_round(branch_index: int, rounds: list[dict], segments: list[dict]) -> int | None:
    """The last round in which the branch decoded anything (where it ended)."""
    last = None
    for k, rec in enumerate(rounds):
        n = _per_branch(_dict(rec).get("tokens"), branch_index, 0) or 0
        if isinstance(n, (int, float)) and n > 0:
            last = k
    if last is None:
        rs = [s.get("round") for s in segments if isinstance(s, dict) and s.get("kind") == "generated"]
        rs = [r for r in rs if isinstance(r, int)]
        if rs:
            positions = {_dict(rec).get("round", k): k for k, rec in enumerate(rounds)}
            last = positions.get(max(rs))
    return last


def _timeline(trace: dict, sfx: str) -> str:
    rounds = [r for r in _list(trace.get("rounds")) if isinstance(r, dict)]
    branches = [b for b in _list(trace.get("branches")) if isinstance(b, dict)]
    if not rounds or not branches:
        return ""
    head = "".join(f"<th title=\"phase {esc(r.get('phase'))}\">round {esc(r.get('round', k))}<br>"
                   f"<small>{esc(r.get('phase', ''))}</small></th>" for k, r in enumerate(rounds))
    rows = []
    for pos, b in enumerate(branches):
        idx = b.get("index", pos)
        segs = _list(_dict(b.get("extra")).get("segments"))
        end = _ended_round(idx, rounds, segs)
        cells = []
        for k, r in enumerate(rounds):
            n = _per_branch(r.get("tokens"), idx, None)
            bc = _per_branch(r.get("broadcast"), idx, None)
            cls = _phase_class(r.get("phase")) if n else "idle"
            inner = esc(n) if n is not None else "·"
            if bc:
                inner += f"<span class=\"bc\" title=\"notes broadcast to this branch after this round\">+{esc(bc)} notes</span>"
            if k == end:
                c = b.get("correct")
                mark = "ok" if c is True else "bad" if c is False else ""
                inner += (f"<span class=\"end {mark}\" title=\"ended ({esc(b.get('finish_reason'))}) with answer "
                          f"{esc(b.get('answer'))}\">{esc(b.get('answer') if b.get('answer') is not None else '∅')}</span>")
            cells.append(f"<td class=\"cell {cls}\" onclick=\"openBranch('branch-{esc(idx)}{sfx}')\">{inner}</td>")
        rows.append(f"<tr class=\"branch-row\" data-branch=\"{esc(idx)}\"><th>branch {esc(idx)}</th>{''.join(cells)}</tr>")
    present = [p for p in PHASES if any(r.get("phase") == p for r in rounds)]
    legend = "".join(f"<span class=\"{_phase_class(p)}\">{p}</span>" for p in present)
    legend += "<span class=\"end ok\">answer ✓</span><span class=\"end bad\">answer ✗</span>"
    return (f"<h2>Timeline</h2><p class=\"meta\">tokens decoded per branch and round; colour = phase; "
            f"the badge marks the round a branch ended, with its answer. Click a cell for the branch's text.</p>"
            f"<div class=\"legend\">{legend}</div>"
            f"<table id=\"timeline{sfx}\" class=\"timeline\"><tr><th>branch</th>{head}</tr>{''.join(rows)}</table>")


def _pool(trace: dict, sfx: str) -> str:
    extra = _dict(trace.get("extra"))
    pool = trace.get("pool", extra.get("pool"))
    if not isinstance(pool, list):
        return ""
    rows = []
    for e in pool:
        if not isinstance(e, dict):
            continue
        received = _list(e.get("received_by"))
        found = _list(e.get("found_by"))
        kind = e.get("kind", "")
        rows.append(
            f"<tr class=\"entry\"><td class=\"n\">{esc(e.get('id'))}</td><td class=\"kind-{esc(kind)}\">{esc(kind)}</td>"
            f"<td>{esc(e.get('text'))}</td><td class=\"n\">{esc(e.get('author'))}</td><td class=\"n\">{esc(e.get('round'))}</td>"
            f"<td class=\"n\" title=\"branches {esc(', '.join(map(str, received)))}\">{len(received)}</td>"
            f"<td class=\"n\">{esc(', '.join(map(str, found)))}</td><td class=\"n\">{esc(e.get('hits', ''))}</td></tr>")
    table = (f"<table id=\"pool{sfx}\" class=\"pool\"><tr><th>id</th><th>type</th><th>text</th><th>author branch</th>"
             f"<th>round</th><th>received by</th><th>found by</th><th>hits</th></tr>{''.join(rows)}</table>")
    return f"<h2>Shared pool ({len(rows)} entries)</h2>{_chart(trace)}{table}"


def _chart(trace: dict) -> str:
    """Inline SVG: pool size per round (bars, left axis) and IG_t / D_t (lines, right axis) with the τ lines."""
    rounds = [r for r in _list(trace.get("rounds")) if isinstance(r, dict)]
    if not rounds:
        return ""
    sched = {s.get("round"): s for s in _list(trace.get("schedule", _dict(trace.get("extra")).get("schedule")))
             if isinstance(s, dict)}
    xs, pool, ig, d = [], [], [], []
    size = 0
    for k, r in enumerate(rounds):
        rn = r.get("round", k)
        xs.append(rn)
        if isinstance(r.get("pool_size"), (int, float)):
            size = r["pool_size"]
        else:
            size += len(_list(r.get("new_entries")))
        pool.append(size)
        s = _dict(sched.get(rn))
        ig.append(r.get("ig", s.get("ig")))
        d.append(r.get("d", s.get("d")))
    cfg = _dict(trace.get("config"))
    taus = [(name, cfg.get(name)) for name in ("tau_start", "tau_stop") if isinstance(cfg.get(name), (int, float))]
    if not any(isinstance(v, (int, float)) for v in ig + d) and not any(pool):
        return ""
    W, H, L, R, T, B = 560, 220, 44, 44, 14, 30
    pw, ph = W - L - R, H - T - B
    n = len(xs)
    step = pw / max(n, 1)
    pmax = max(max(pool), 1)
    vals = [v for v in ig + d + [t for _, t in taus] if isinstance(v, (int, float))]
    vmax = max(max(vals) if vals else 1.0, 1e-9)
    vmax = 1.0 if vmax <= 1.0 else vmax

    def y_pool(v):
        return T + ph - ph * v / pmax

    def y_val(v):
        return T + ph - ph * v / vmax

    out = [f"<svg id=\"pool-chart\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" "
           f"viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"pool size and IG/D per round\">",
           f"<rect x=\"{L}\" y=\"{T}\" width=\"{pw}\" height=\"{ph}\" fill=\"#fff\" stroke=\"#ccc\"/>"]
    for k, v in enumerate(pool):
        x = L + k * step + step * 0.2
        out.append(f"<rect class=\"pool-bar\" x=\"{x:.1f}\" y=\"{y_pool(v):.1f}\" width=\"{step * 0.6:.1f}\" "
                   f"height=\"{T + ph - y_pool(v):.1f}\" fill=\"#bfdbfe\"><title>round {esc(xs[k])}: pool {v}</title></rect>")
        out.append(f"<text x=\"{L + k * step + step / 2:.1f}\" y=\"{H - 12}\" font-size=\"11\" text-anchor=\"middle\">{esc(xs[k])}</text>")
    out.append(f"<text x=\"{L + pw / 2}\" y=\"{H - 1}\" font-size=\"11\" text-anchor=\"middle\">round</text>")
    out.append(f"<text x=\"{L - 6}\" y=\"{T + 8}\" font-size=\"11\" text-anchor=\"end\">{pmax:g}</text>"
               f"<text x=\"{L - 6}\" y=\"{T + ph}\" font-size=\"11\" text-anchor=\"end\">0</text>"
               f"<text x=\"4\" y=\"{T + ph / 2}\" font-size=\"11\" fill=\"#1e40af\">pool</text>")
    out.append(f"<text x=\"{W - R + 6}\" y=\"{T + 8}\" font-size=\"11\">{vmax:g}</text>"
               f"<text x=\"{W - R + 6}\" y=\"{T + ph}\" font-size=\"11\">0</text>")
    for name, t in taus:
        y = y_val(t)
        out.append(f"<line class=\"tau\" x1=\"{L}\" x2=\"{L + pw}\" y1=\"{y:.1f}\" y2=\"{y:.1f}\" stroke=\"#6b7280\" "
                   f"stroke-dasharray=\"5,4\"/><text x=\"{L + 4}\" y=\"{y - 3:.1f}\" font-size=\"10\" fill=\"#374151\">"
                   f"{esc(name)} = {t:g}</text>")
    for label, series, colour in (("IG_t", ig, "#16a34a"), ("D_t", d, "#dc2626")):
        pts = [(L + k * step + step / 2, y_val(v)) for k, v in enumerate(series) if isinstance(v, (int, float))]
        if len(pts) > 1:
            out.append(f"<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" "
                       f"points=\"{' '.join(f'{x:.1f},{y:.1f}' for x, y in pts)}\"/>")
        for (x, y), v in zip(pts, [v for v in series if isinstance(v, (int, float))]):
            out.append(f"<circle cx=\"{x:.1f}\" cy=\"{y:.1f}\" r=\"3.5\" fill=\"{colour}\"><title>{label} = {v:.3g}</title></circle>")
    out.append(f"<g font-size=\"11\"><rect x=\"{L + pw - 150}\" y=\"{T + 4}\" width=\"10\" height=\"10\" fill=\"#bfdbfe\"/>"
               f"<text x=\"{L + pw - 136}\" y=\"{T + 13}\">pool size</text>"
               f"<rect x=\"{L + pw - 80}\" y=\"{T + 4}\" width=\"10\" height=\"3\" fill=\"#16a34a\"/>"
               f"<text x=\"{L + pw - 66}\" y=\"{T + 11}\">IG_t</text>"
               f"<rect x=\"{L + pw - 40}\" y=\"{T + 4}\" width=\"10\" height=\"3\" fill=\"#dc2626\"/>"
               f"<text x=\"{L + pw - 26}\" y=\"{T + 11}\">D_t</text></g></svg>")
    missing = "" if any(isinstance(v, (int, float)) for v in d) else " (D_t not defined in these rounds)"
    return f"<div class=\"meta\">pool size, IG_t and D_t per round{missing}</div>{''.join(out)}"


def _branches(trace: dict, sfx: str) -> str:
    branches = [b for b in _list(trace.get("branches")) if isinstance(b, dict)]
    if not branches:
        return ""
    parts = [f"<h2>Branches ({len(branches)})</h2><button class=\"btn\" onclick=\"setAll('details.branch',true)\">"
             f"expand all</button><button class=\"btn\" onclick=\"setAll('details.branch',false)\">collapse all</button>"]
    for pos, b in enumerate(branches):
        idx = b.get("index", pos)
        extra = _dict(b.get("extra"))
        c = b.get("correct")
        verdict = " <span class=\"ok\">✓</span>" if c is True else " <span class=\"bad\">✗</span>" if c is False else ""
        summary = (f"branch {esc(idx)} — answer <b>{esc(b.get('answer'))}</b>{verdict} · {esc(b.get('tokens', '?'))} tokens"
                   f" · finish {esc(b.get('finish_reason'))}")
        segs = [s for s in _list(extra.get("segments")) if isinstance(s, dict)]
        body = []
        if segs:
            for s in segs:
                kind = str(s.get("kind", "generated"))
                cls = {"generated": "seg-generated", "broadcast": "seg-broadcast", "cut": "seg-cut"}.get(kind, "seg-injected")
                label = f"{kind} · round {s.get('round', '?')}"
                body.append(f"<div class=\"seg {cls}\"><span class=\"seg-label\">{esc(label)}</span>{esc(s.get('text'))}</div>")
        else:
            body.append(f"<div class=\"seg seg-generated\">{esc(b.get('text'))}</div>")
        notes = [n for n in _list(extra.get("notes")) if n]
        if notes:
            items = "".join(
                f"<li><span class=\"kind-{esc(n.get('kind'))}\">[{esc(n.get('kind'))}]</span> {esc(n.get('text'))}</li>"
                if isinstance(n, dict) else f"<li>{esc(n)}</li>" for n in notes)
            body.append(f"<details class=\"notes\"><summary>notes extracted from this branch ({len(notes)})</summary>"
                        f"<ul>{items}</ul></details>")
        for key in ("summaries", "received"):
            vals = _list(extra.get(key))
            if vals:
                items = "".join(f"<li>{esc(v if not isinstance(v, (dict, list)) else json.dumps(v, ensure_ascii=False))}</li>"
                                for v in vals)
                body.append(f"<details class=\"{esc(key)}\"><summary>{esc(key)} ({len(vals)})</summary><ul>{items}</ul></details>")
        scalars = {k: v for k, v in extra.items() if isinstance(v, (int, float, str, bool)) and k not in ("text",)}
        if scalars:
            body.append("<div class=\"meta\">" + " · ".join(f"{esc(k)}: {_num(v, 3)}" for k, v in scalars.items()) + "</div>")
        parts.append(f"<details class=\"branch\" id=\"branch-{esc(idx)}{sfx}\" data-branch=\"{esc(idx)}\">"
                     f"<summary>{summary}</summary>{''.join(body)}</details>")
    return "".join(parts)


def _vote(trace: dict, result: dict | None, sfx: str) -> str:
    vote = _dict(trace.get("vote"))
    counts = _dict(vote.get("counts")) or _dict((result or {}).get("votes"))
    winner = vote.get("winner", (result or {}).get("answer"))
    if not vote and not counts:
        return ""
    ref = trace.get("reference")
    rows = "".join(
        f"<tr class=\"{'winner' if a == winner else ''}\"><td>{esc(a)}{' ✓' if ref is not None and str(a) == str(ref) else ''}"
        f"</td><td class=\"n\">{_num(c, 3)}</td></tr>"
        for a, c in sorted(counts.items(), key=lambda kv: -(kv[1] if isinstance(kv[1], (int, float)) else 0)))
    correct = vote.get("correct", (result or {}).get("correct"))
    verdict = "" if correct is None else (" <span class=\"ok\">correct</span>" if correct else " <span class=\"bad\">incorrect</span>")
    return (f"<h2>Vote</h2><div id=\"vote{sfx}\" class=\"vote\"><p>winner: <b class=\"vote-winner\">{esc(winner)}</b>{verdict}"
            f"{'' if ref is None else f' · reference {esc(ref)}'} · {esc(vote.get('valid', '?'))}/{esc(vote.get('total', '?'))} "
            f"branches gave an answer</p><table><tr><th>answer</th><th>votes</th></tr>{rows}</table></div>")


def _cost(trace: dict, sfx: str) -> str:
    cost = _dict(trace.get("cost"))
    if not cost:
        return ""
    rows = "".join(f"<tr><th>{esc(k)}</th><td class=\"n\">{_num(v)}</td></tr>" for k, v in cost.items())
    parts = [(k, cost.get(k)) for k in ("decode_s", "extraction_s", "other_s")]
    parts = [(k, v) for k, v in parts if isinstance(v, (int, float)) and v > 0]
    total = sum(v for _, v in parts)
    bar = ""
    if total > 0:
        colours = {"decode_s": "#60a5fa", "extraction_s": "#f59e0b", "other_s": "#9ca3af"}
        bar = ("<div class=\"bar\" title=\"time split\">" + "".join(
            f"<div style=\"width:{100 * v / total:.1f}%;background:{colours[k]}\" title=\"{k} {v:.1f}s\"></div>" for k, v in parts)
            + "</div><div class=\"meta\">time split: " + ", ".join(f"{k[:-2]} {100 * v / total:.0f}%" for k, v in parts) + "</div>")
    extra = {k: trace.get(k) for k in ("extraction_tokens", "summary_tokens") if isinstance(trace.get(k), (int, float))}
    extra_rows = "".join(f"<tr><th>{esc(k)}</th><td class=\"n\">{_num(v)}</td></tr>" for k, v in extra.items())
    return f"<h2>Cost</h2><table id=\"cost{sfx}\" class=\"cost\">{rows}{extra_rows}</table>{bar}"


def render_trace(trace: dict, result: dict | None = None, sfx: str = "", heading: str | None = None) -> str:
    """The body of one trace (no <html>): header, timeline, pool + chart, branches, vote, cost."""
    trace = _dict(trace)
    if isinstance(trace.get("extra"), dict):  # a trace object's dict with `extra` not flattened
        trace = {**trace["extra"], **{k: v for k, v in trace.items() if k != "extra"}}
    model = trace.get("model")
    model_name = model.get("name", "") if isinstance(model, dict) else model
    cfg = _dict(trace.get("config"))
    cfg_line = " · ".join(f"{esc(k)}={esc(v)}" for k, v in cfg.items())
    head = [f"<h1>{esc(heading or ('collabthink trace: ' + str(trace.get('method', '?'))))}</h1>",
            f"<p class=\"meta\">method <b>{esc(trace.get('method', '?'))}</b>"
            f"{f' · model {esc(model_name)}' if model_name else ''} · {len(_list(trace.get('rounds')))} rounds"
            f"{'' if trace.get('reference') is None else ' · reference ' + esc(trace.get('reference'))}</p>"]
    if trace.get("problem"):
        head.append(f"<div class=\"problem\">{esc(trace.get('problem'))}</div>")
    if cfg:
        head.append(f"<details><summary class=\"meta\">config</summary><p class=\"meta\">{cfg_line}</p></details>")
    return "".join(head + [_timeline(trace, sfx), _pool(trace, sfx), _vote(trace, result, sfx), _cost(trace, sfx),
                           _branches(trace, sfx)])


def render_trace_page(trace: dict, result: dict | None = None, title: str | None = None) -> str:
    return _page(title or f"collabthink trace ({_dict(trace).get('method', '?')})", render_trace(trace, result, heading=title))


# ---------------------------------------------------------------------------------------------- run files
def question_filename(qid: Any) -> str:
    return "q-" + (re.sub(r"[^A-Za-z0-9_.-]", "_", str(qid)) or "_") + ".html"


def _label(record: dict) -> str:
    setting = _dict(record.get("setting"))
    bits = ", ".join(f"{k}={v}" for k, v in sorted(setting.items()))
    return f"{record.get('method', '?')}" + (f" ({bits})" if bits else "")


def _by_question(records: Iterable[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        qid = str(_dict(r.get("question")).get("id", "?"))
        out.setdefault(qid, []).append(r)
    return out


def render_question_page(qid: str, records: list[dict], index_name: str | None = None) -> str:
    q = _dict(records[0].get("question")) if records else {}
    back = f" · <a href=\"{esc(index_name)}\">all questions</a>" if index_name else ""
    parts = [f"<h1>question {esc(qid)}</h1><p class=\"meta\">reference answer: {esc(q.get('answer'))} · "
             f"{len(records)} method runs"
             f"{back}</p>",
             "<ul>" + "".join(f"<li><a href=\"#run-{k}\">{esc(_label(r))}</a>: answer {esc(r.get('answer'))} "
                              f"{'<span class=ok>✓</span>' if r.get('correct') else '<span class=bad>✗</span>'}</li>"
                              for k, r in enumerate(records)) + "</ul>"]
    for k, r in enumerate(records):
        sfx = "" if k == 0 else f"-{k}"
        parts.append(f"<section class=\"trace\" id=\"run-{k}\">"
                     + render_trace(_dict(r.get("trace")), {"answer": r.get("answer"), "correct": r.get("correct")},
                                    sfx=sfx, heading=_label(r)) + "</section>")
    return _page(f"question {qid}", "".join(parts))


def render_index(header: dict, records: list[dict], title: str = "collabthink run") -> str:
    groups = _by_question(records)
    labels = sorted({_label(r) for r in records}, key=lambda s: (s.split(" ")[0], s))
    head = "".join(f"<th>{esc(lb)}</th>" for lb in labels)
    rows = []
    for qid, recs in groups.items():
        by_label = {_label(r): r for r in recs}
        cells = []
        for lb in labels:
            r = by_label.get(lb)
            if r is None:
                cells.append("<td>–</td>")
            else:
                ok = r.get("correct")
                cells.append(f"<td class=\"{'ok' if ok else 'bad'}\">{'✓' if ok else '✗'} {esc(r.get('answer'))}</td>")
        ref = _dict(recs[0].get("question")).get("answer")
        rows.append(f"<tr class=\"question\"><td><a href=\"{esc(question_filename(qid))}\">{esc(qid)}</a></td>"
                    f"<td>{esc(ref)}</td>{''.join(cells)}</tr>")
    acc = []
    for lb in labels:
        rs = [r for r in records if _label(r) == lb]
        acc.append(f"<td class=\"n\">{sum(bool(r.get('correct')) for r in rs)}/{len(rs)}</td>")
    cfg = _dict(_dict(header).get("config"))
    meta = " · ".join(f"{esc(k)}: {esc(v if not isinstance(v, (dict, list)) else json.dumps(v))}"
                      for k, v in cfg.items() if k in ("dataset", "model", "engine", "methods", "limit", "seed"))
    body = (f"<h1>{esc(title)}</h1><p class=\"meta\">{meta}</p><p class=\"meta\">{len(groups)} questions, "
            f"{len(records)} records; click a question for its traces.</p>"
            f"<table id=\"index\"><tr><th>question</th><th>reference</th>{head}</tr>{''.join(rows)}"
            f"<tr><th>correct</th><td></td>{''.join(acc)}</tr></table>")
    return _page(title, body)


# ---------------------------------------------------------------------------------------------- entry
def write_view(path: str | Path, out: str | Path | None = None, question: str | None = None) -> list[Path]:
    """Render `path` (trace or run file) to HTML; returns the pages written (the main one first)."""
    path = Path(path)
    kind, data = load_input(path)
    out = Path(out) if out else path.with_suffix(".html")
    if out.exists() and out.is_dir():
        out = out / ("index.html" if kind == "run" and question is None else "viewer.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "trace":
        if question is not None:
            raise ViewerError(f"--question applies to run files; '{path}' holds a single trace")
        trace, result = data
        out.write_text(render_trace_page(trace, result), encoding="utf-8")
        return [out]
    header, records = data
    groups = _by_question(records)
    if not groups:
        raise ViewerError(f"run file '{path}' has no records yet: run `collabthink eval` first")
    if question is not None:
        if str(question) not in groups:
            ids = list(groups)
            raise ViewerError(f"question '{question}' is not in '{path}': it has {len(ids)} questions "
                              f"({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})")
        out.write_text(render_question_page(str(question), groups[str(question)]), encoding="utf-8")
        return [out]
    written = [out]
    out.write_text(render_index(header, records, title=f"collabthink run: {path.name}"), encoding="utf-8")
    for qid, recs in groups.items():
        page = out.parent / question_filename(qid)
        page.write_text(render_question_page(qid, recs, index_name=out.name), encoding="utf-8")
        written.append(page)
    return written
