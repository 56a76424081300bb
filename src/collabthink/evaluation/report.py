"""`collabthink report`: tables (markdown and terminal) and plots from one or more run files.

Files written to the output folder:
- `report.md`: the tables, links to the plots, the run files read;
- `summary.json`: every metric per (dataset, model, method, setting) with the per-question values;
- plots, each as PNG and SVG:
  `accuracy_vs_latency`, `accuracy_vs_tokens`, `accuracy_vs_flops` (one line per method across settings),
  and with CPT records `cpt_rounds` (pool size, IG_t and D_t per round, phase boundaries) and
  `cpt_duplicate_rate` (duplicate-discovery rate per round).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from .metrics import fmt_flops, is_cpt, setting_label, summarize_all
from .runfile import read_run

__all__ = ["load_records", "render_markdown", "terminal_table", "write_plots", "write_report", "VIEWER_PAGE"]

# The trace viewer's index page (`collabthink view RUNFILE --out REPORT_DIR/viewer.html`) is linked from the
# report when it exists here.
VIEWER_PAGE = "viewer.html"

PLOTS = ("accuracy_vs_latency", "accuracy_vs_tokens", "accuracy_vs_flops", "cpt_rounds", "cpt_duplicate_rate")


def load_records(paths: Sequence[str | Path]) -> tuple[list[dict], list[dict]]:
    """Records of several run files, each labelled with its dataset and model; and their headers."""
    records, headers = [], []
    for p in paths:
        header, recs = read_run(p)
        headers.append({"path": str(p), **header})
        dataset = header.get("config", {}).get("dataset", {}).get("name", "")
        for r in recs:
            r.setdefault("dataset", dataset)
            r.setdefault("model", (r.get("trace", {}).get("model") or {}).get("name", ""))
            records.append(r)
    return records, headers


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def _name(s: dict, with_dataset: bool, with_model: bool) -> str:
    head = s["method"]
    extra = [x for x, on in ((s["dataset"], with_dataset), (s["model"], with_model)) if on and x]
    return head + (f" ({', '.join(extra)})" if extra else "")


def _flags(summaries: list[dict]) -> tuple[bool, bool]:
    return len({s["dataset"] for s in summaries}) > 1, len({s["model"] for s in summaries}) > 1


def main_rows(summaries: list[dict]) -> tuple[list[str], list[list[str]]]:
    ds, md = _flags(summaries)
    head = ["method", "setting", "questions", "vote acc", "branch acc", "pass@n", "latency mean (s)",
            "latency median (s)", "gen tokens / q", "FLOPs / q"]
    rows = []
    for s in summaries:
        k = max(s["pass_at_k"]) if s["pass_at_k"] else None
        lat = s["latency_s"]["wall"]
        rows.append([_name(s, ds, md), setting_label(s["setting"]), str(s["questions"]), _pct(s["vote_accuracy"]),
                     _pct(s["branch_accuracy"]), _pct(s["pass_at_k"].get(k)) if k else "-", _num(lat["mean"]),
                     _num(lat["median"]), _num(s["tokens"]["generated_tokens"]["mean"], ".0f"),
                     fmt_flops(s["flops"]["total"]) if s["flops"] else "-"])
    return head, rows


def cost_rows(summaries: list[dict]) -> tuple[list[str], list[list[str]]]:
    ds, md = _flags(summaries)
    head = ["method", "setting", "decode (s)", "extraction (s)", "other (s)", "prefill computed / q",
            "prefill reused / q", "prefill FLOPs / q", "decode FLOPs / q"]
    rows = []
    for s in summaries:
        lat, tok, fl = s["latency_s"], s["tokens"], s["flops"]
        rows.append([_name(s, ds, md), setting_label(s["setting"]), _num(lat["decode"]["mean"]),
                     _num(lat["extraction"]["mean"]), _num(lat["other"]["mean"]),
                     _num(tok["prefill_computed"]["mean"], ".0f"), _num(tok["prefill_reused"]["mean"], ".0f"),
                     fmt_flops(fl["prefill"]) if fl else "-", fmt_flops(fl["decode"]) if fl else "-"])
    return head, rows


def cpt_rows(summaries: list[dict]) -> tuple[list[str], list[list[str]]]:
    ds, md = _flags(summaries)
    head = ["method", "setting", "pool size", "rounds", "rounds per phase", "duplicate rate", "extraction tokens / q"]
    rows = []
    for s in summaries:
        c = s["cpt"]
        if not c:
            continue
        phases = ", ".join(f"{k} {v:.1f}" for k, v in c["rounds_per_phase"].items())
        rows.append([_name(s, ds, md), setting_label(s["setting"]), _num(c["pool_size"]["mean"], ".1f"),
                     _num(c["rounds"]["mean"], ".1f"), phases or "-", _pct(c["duplicate_rate"]["overall"]),
                     _num(c["extraction_tokens"]["mean"], ".0f")])
    return head, rows


def deepconf_rows(summaries: list[dict]) -> tuple[list[str], list[list[str]]]:
    ds, md = _flags(summaries)
    head = ["method", "setting", "traces stopped early", "traces skipped", "tokens saved / q"]
    rows = []
    for s in summaries:
        d = s["deepconf"]
        if d:
            rows.append([_name(s, ds, md), setting_label(s["setting"]), f"{d['stopped_early']}/{d['branches']}",
                         f"{d['skipped']}/{d['branches']}", _num(d["tokens_saved"] / max(1, s["questions"]), ".0f")])
    return head, rows


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(summaries: list[dict], headers: list[dict], plots: list[str], out_dir: Path) -> str:
    parts = ["# collabthink evaluation report", ""]
    for h in headers:
        cfg = h.get("config", {})
        d = cfg.get("dataset", {})
        parts.append(f"- run file `{h['path']}`: dataset {d.get('name')} ({d.get('source')}, {d.get('n_questions')} "
                     f"questions), methods {', '.join(cfg.get('methods', []))}, model {cfg.get('model')}, "
                     f"engine {cfg.get('engine')}, seed {cfg.get('seed')}")
    parts += ["", "## Accuracy and cost", "", _md_table(*main_rows(summaries)), "",
              "pass@n: unbiased pass@k with k = the setting's branches; branch acc = pass@1. "
              "FLOPs: forward-pass estimate, 2·N_params + 4·n_layer·n_embd·context per token.", "",
              "## Time and tokens per question (means)", "", _md_table(*cost_rows(summaries)), ""]
    head, rows = cpt_rows(summaries)
    if rows:
        parts += ["## CPT", "", _md_table(head, rows), "",
                  "duplicate rate: share of extracted notes already in the pool, 1 − new/extracted.", ""]
    head, rows = deepconf_rows(summaries)
    if rows:
        parts += ["## DeepConf", "", _md_table(head, rows), ""]
    if plots:
        parts += ["## Plots", ""]
        for name in plots:
            parts.append(f"![{name}]({name}.png) ([svg]({name}.svg))")
        parts.append("")
    if (out_dir / VIEWER_PAGE).exists():
        parts += [f"Traces: [{VIEWER_PAGE}]({VIEWER_PAGE})", ""]
    else:
        parts += [f"<!-- traces viewer: `collabthink view RUNFILE --out {out_dir / VIEWER_PAGE}` writes {VIEWER_PAGE} "
                  "here, then rerun the report to link it -->", ""]
    return "\n".join(parts)


def terminal_table(summaries: list[dict], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # logs and pipes: wide enough that no column is cut
            console = Console(width=200)
    def show(title: str, head: list[str], rows: list[list[str]]) -> None:
        table = Table(title=title)
        for i, h in enumerate(head):
            table.add_column(h, justify="left" if i < 2 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)

    show("accuracy and cost per method and setting", *main_rows(summaries))
    head, rows = cpt_rows(summaries)
    if rows:
        show("CPT", head, rows)


# ----------------------------------------------------------------------------- plots

def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir: Path, name: str) -> None:
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}.png", dpi=150)
    fig.savefig(out_dir / f"{name}.svg")


def _frontier(plt, summaries, out_dir, name, x_of, xlabel, title, logx=False) -> bool:
    ds, md = _flags(summaries)
    lines: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for s in summaries:
        x, y = x_of(s), s["vote_accuracy"]
        if x is None or y is None:
            continue
        lines[_name(s, ds, md)].append((x, 100 * y, setting_label(s["setting"])))
    if not lines:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for label, pts in sorted(lines.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        for x, y, text in pts:
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if logx:
        ax.set_xscale("log")
    ax.margins(x=0.12)  # room for the setting labels at the ends
    ax.set_xlabel(xlabel)
    ax.set_ylabel("majority-vote accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(title="method")
    _save(fig, out_dir, name)
    plt.close(fig)
    return True


def _cpt_series(records: list[dict]):
    """Per CPT setting: per-round lists of pool size, IG_t, D_t, duplicate rate; phase-change rounds; taus."""
    out: dict[str, dict] = {}
    for r in records:
        if not is_cpt(r):
            continue
        label = f"{r.get('method')} {setting_label(r.get('setting', {}))}"
        g = out.setdefault(label, {"pool": defaultdict(list), "ig": defaultdict(list), "d": defaultdict(list),
                                   "dup": defaultdict(list), "changes": defaultdict(list), "tau": None})
        t = r["trace"]
        cfg = t.get("config", {}) or {}
        if "tau_start" in cfg:
            g["tau"] = (cfg.get("tau_start"), cfg.get("tau_stop"))
        for i, rd in enumerate(t.get("rounds", [])):
            rnd = int(rd.get("round", i))
            if "pool_size" in rd:
                g["pool"][rnd].append(rd["pool_size"])
            if rd.get("ig") is not None:
                g["ig"][rnd].append(rd["ig"])
            if rd.get("d") is not None:
                g["d"][rnd].append(rd["d"])
            extracted = rd.get("notes_extracted")
            if extracted:
                new = rd.get("new_entries", 0)
                new = len(new) if isinstance(new, (list, tuple)) else int(new or 0)
                g["dup"][rnd].append(1.0 - min(new, extracted) / extracted)
        for phase, rnd in (t.get("phase_changes") or {}).items():
            g["changes"][phase].append(rnd)
    return out


def _mean_line(ax, series: dict, label: str, color=None):
    xs = sorted(series)
    ys = [statistics.fmean(series[x]) for x in xs]
    return ax.plot(xs, ys, marker=".", label=label, color=color)[0]


def _plot_cpt(plt, records, out_dir) -> list[str]:
    from matplotlib.ticker import MaxNLocator

    data = _cpt_series(records)
    if not data:
        return []
    written = []
    fig, axes = plt.subplots(3, 1, figsize=(7.5, 8.5), sharex=True)
    for label, g in sorted(data.items()):
        line = _mean_line(axes[0], g["pool"], label)
        color = line.get_color()
        if g["ig"]:
            _mean_line(axes[1], g["ig"], label, color)
        if g["d"]:
            _mean_line(axes[2], g["d"], label, color)
        for phase, style in (("broadcast", "--"), ("finalize", ":")):
            if g["changes"].get(phase):
                # the phase applies from the round after the change was recorded
                x = statistics.median(g["changes"][phase]) + 0.5
                for ax in axes:
                    ax.axvline(x, color=color, linestyle=style, alpha=0.7,
                               label=f"→ {phase} (median, {label})" if ax is axes[0] else None)
        if g["tau"] and g["d"]:
            for tau, name in zip(g["tau"], ("τ_start", "τ_stop")):
                if tau is not None:
                    axes[2].axhline(tau, color=color, linestyle="-.", alpha=0.4, linewidth=0.8)
                    axes[2].annotate(f"{name}={tau}", (0, tau), fontsize=7, color=color,
                                     textcoords="offset points", xytext=(2, 2))
    axes[0].set_ylabel("pool size (entries)")
    axes[0].set_ylim(bottom=0)
    axes[0].set_title("CPT: pool growth, information gain and novelty per round (mean over questions)", fontsize=10)
    axes[1].set_ylabel("IG_t (new entries / token)")
    axes[2].set_ylabel("D_t (novelty ratio, late / early IG)")
    axes[2].set_xlabel("round")
    if not any(g["d"] for g in data.values()):
        axes[2].text(0.5, 0.5, "D_t not defined yet: runs too short for the schedule's window", ha="center",
                     va="center", transform=axes[2].transAxes, fontsize=9, color="gray")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=7)
    _save(fig, out_dir, "cpt_rounds")
    plt.close(fig)
    written.append("cpt_rounds")

    # written whenever there are CPT records, so the report always has it
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if not any(g["dup"] for g in data.values()):
        ax.text(0.5, 0.5, "no notes were extracted in these runs", ha="center", va="center",
                transform=ax.transAxes, fontsize=10, color="gray")
    for label, g in sorted(data.items()):
        if g["dup"]:
            allv = [v for vs in g["dup"].values() for v in vs]
            _mean_line(ax, {k: [100 * v for v in vs] for k, vs in g["dup"].items()},
                       f"{label} (mean {100 * statistics.fmean(allv):.0f}%)")
    ax.set_xlabel("round")
    ax.set_ylabel("duplicate-discovery rate (%)")
    ax.set_ylim(-3, 103)
    ax.set_title("CPT: share of extracted notes already in the pool, per round")
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if any(g["dup"] for g in data.values()):
        ax.legend(fontsize=8)
    _save(fig, out_dir, "cpt_duplicate_rate")
    plt.close(fig)
    written.append("cpt_duplicate_rate")
    return written


def write_plots(summaries: list[dict], records: list[dict], out_dir: Path) -> list[str]:
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    specs = [
        ("accuracy_vs_latency", lambda s: s["latency_s"]["wall"]["mean"], "mean wall-clock latency per question (s)",
         "Accuracy vs latency", False),
        ("accuracy_vs_tokens", lambda s: s["tokens"]["generated_tokens"]["mean"],
         "generated tokens per question (all branches)", "Accuracy vs generated tokens", False),
        ("accuracy_vs_flops", lambda s: s["flops"]["total"] if s["flops"] else None,
         "estimated FLOPs per question (prefill + decode, log scale)", "Accuracy vs compute", True),
    ]
    for name, x_of, xlabel, title, logx in specs:
        if _frontier(plt, summaries, out_dir, name, x_of, xlabel, title, logx):
            written.append(name)
    written += _plot_cpt(plt, records, out_dir)
    return written


def write_report(paths: Sequence[str | Path], out_dir: str | Path) -> dict:
    """Read run files, write report.md, summary.json and the plots; return what was written."""
    records, headers = load_records(paths)
    if not records:
        raise ValueError(f"no finished records in {', '.join(map(str, paths))}: run `collabthink eval` first")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = summarize_all(records)
    plots = write_plots(summaries, records, out_dir)
    (out_dir / "summary.json").write_text(json.dumps({"runs": [h["path"] for h in headers], "groups": summaries},
                                                     indent=1, default=str))
    markdown = render_markdown(summaries, headers, plots, out_dir)
    (out_dir / "report.md").write_text(markdown)
    return {"summaries": summaries, "plots": plots, "markdown": markdown, "out": out_dir}
