"""The trace viewer: pages rendered from fixed traces, run-file index pages, CLI errors, and one headless
Chromium check (skipped where /usr/bin/chromium is missing — run it with
`apt-get install -y chromium && python -m pytest -q tests/test_viewer.py -k chromium`)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from collabthink.cli import main
from collabthink.evaluation.runfile import FORMAT
from collabthink.viewer import question_filename, render_trace_page, write_view

CHROMIUM = Path("/usr/bin/chromium")


def cpt_trace() -> dict:
    """A small CPT trace in the shape `Trace.to_dict()` writes (method extras at the top level)."""
    return {
        "method": "cpt", "problem": "What is 2 + 3 <and> 1?", "reference": "6",
        "config": {"branches": 3, "tau_start": 0.4, "tau_stop": 0.1},
        "model": {"name": "tiny"},
        "branches": [
            {"index": 0, "answer": "6", "correct": True, "tokens": 30, "finish_reason": "eos", "text": "...",
             "extra": {"segments": [{"kind": "generated", "round": 0, "text": "First I add 2 and 3."},
                                    {"kind": "broadcast", "round": 0, "text": "NOTE FROM PEERS: add <the> one"},
                                    {"kind": "generated", "round": 1, "text": "So \\boxed{6}."}],
                       "notes": [{"kind": "insight", "text": "2 + 3 = 5"}]}},
            {"index": 1, "answer": "5", "correct": False, "tokens": 20, "finish_reason": "eos", "text": "...",
             "extra": {"segments": [{"kind": "generated", "round": 0, "text": "It is \\boxed{5}."}],
                       "notes": [{"kind": "pitfall", "text": "forgot the <1>"}]}},
            {"index": 2, "answer": "6", "correct": True, "tokens": 40, "finish_reason": "eos", "text": "...",
             "extra": {"segments": [{"kind": "generated", "round": 0, "text": "2+3+1"},
                                    {"kind": "generated", "round": 1, "text": "=6"}], "notes": []}}],
        "rounds": [
            {"round": 0, "phase": "explore", "tokens": {"0": 16, "1": 20, "2": 16}, "broadcast": {"0": 2},
             "notes_extracted": 3, "new_entries": [0, 1], "ig": 0.5, "d": None, "pool_size": 2,
             "phase_after": "broadcast"},
            {"round": 1, "phase": "broadcast", "tokens": {"0": 14, "2": 24}, "broadcast": {},
             "notes_extracted": 1, "new_entries": [], "ig": 0.0, "d": 0.05, "pool_size": 2,
             "phase_after": "finalize"}],
        "vote": {"winner": "6", "counts": {"6": 2.0, "5": 1.0}, "valid": 3, "total": 3, "correct": True},
        "cost": {"generated_tokens": 90, "initial_prompt_tokens": 30, "prefill_computed": 120, "prefill_reused": 77,
                 "injected_tokens": 12, "wall_s": 3.0, "decode_s": 2.0, "extraction_s": 0.5, "other_s": 0.5},
        "pool": [{"id": 0, "kind": "insight", "text": "2 + 3 = 5 <b>bold?</b>", "author": 0, "round": 0, "hits": 2,
                  "received_by": [0, 2], "found_by": [0, 2]},
                 {"id": 1, "kind": "pitfall", "text": "do not forget the 1 & more", "author": 1, "round": 0,
                  "hits": 1, "received_by": [0], "found_by": [1]}],
        "schedule": [{"round": 0, "ig": 0.5, "d": None}, {"round": 1, "ig": 0.0, "d": 0.05}],
        "phase_changes": {"finalize": 1},
    }


def parallel_trace() -> dict:
    return {"method": "parallel", "problem": "p", "reference": None, "config": {}, "model": {},
            "branches": [{"index": 0, "answer": "4", "correct": None, "tokens": 5, "finish_reason": "eos",
                          "text": "so <4>", "extra": {}},
                         {"index": 1, "answer": None, "correct": None, "tokens": 8, "finish_reason": "length",
                          "text": "hmm", "extra": {}}],
            "rounds": [{"round": 0, "phase": "decode", "tokens": [5, 8]}],
            "vote": {"winner": "4", "counts": {"4": 1.0}, "valid": 1, "total": 2, "correct": None},
            "cost": {"generated_tokens": 13}}


def record(qid: str, method: str, trace: dict, correct: bool) -> dict:
    return {"type": "record", "key": f"{qid}|{method}", "question": {"id": qid, "index": 0, "answer": "6"},
            "method": method, "setting": {"branches": 3, "budget": 64}, "answer": trace["vote"]["winner"],
            "correct": correct, "trace": trace}


@pytest.fixture
def run_file(tmp_path) -> Path:
    path = tmp_path / "run.jsonl"
    lines = [{"type": "header", "format": FORMAT, "config": {"dataset": "toy"}, "info": {}},
             record("q1", "cpt", cpt_trace(), True), record("q1", "parallel", parallel_trace(), False),
             record("q/2", "parallel", parallel_trace(), False)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_cpt_page_content():
    page = render_trace_page(cpt_trace(), {"answer": "6", "votes": {}, "correct": True})
    for key in ('id="timeline"', 'id="pool"', 'id="vote"', 'id="cost"', 'id="pool-chart"'):
        assert key in page
    timeline = page.split('id="timeline"')[1].split("</table>")[0]
    assert timeline.count('class="branch-row"') == 3
    assert "ph-explore" in timeline and "ph-broadcast" in timeline and "+2 notes" in timeline
    assert timeline.count('class="end ok"') == 2 and timeline.count('class="end bad"') == 1
    assert page.count('<details class="branch"') == 3
    # model text is escaped, never raw
    assert "2 + 3 = 5 &lt;b&gt;bold?&lt;/b&gt;" in page and "<b>bold?</b>" not in page
    assert "do not forget the 1 &amp; more" in page
    assert "What is 2 + 3 &lt;and&gt; 1?" in page
    # broadcast block highlighted, notes listed
    assert re.search(r'class="seg seg-broadcast"><span class="seg-label">broadcast · round 0</span>'
                     r"NOTE FROM PEERS: add &lt;the&gt; one", page)
    assert "forgot the &lt;1&gt;" in page
    # vote and cost
    vote = page.split('id="vote"')[1].split("</div>")[0]
    assert 'class="vote-winner">6<' in vote and "2.000" in vote and "1.000" in vote
    assert "prefill_reused" in page and "77" in page
    # tau lines in the chart
    assert "tau_start = 0.4" in page and "tau_stop = 0.1" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page


def test_other_methods_and_missing_keys_render():
    page = render_trace_page(parallel_trace())
    assert 'id="timeline"' in page and 'id="vote"' in page and 'id="pool"' not in page
    assert "so &lt;4&gt;" in page
    for bare in ({}, {"branches": []}, {"branches": [{}], "rounds": [{}], "vote": {}, "cost": {}, "pool": [{}]}):
        assert "<html" in render_trace_page(bare)


def test_result_json_and_bare_trace(tmp_path):
    res = tmp_path / "res.json"
    res.write_text(json.dumps({"answer": "6", "votes": {"6": 2.0}, "correct": True, "trace": cpt_trace()}))
    assert main(["view", str(res)]) == 0
    assert 'id="pool"' in (tmp_path / "res.html").read_text()
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(parallel_trace()))
    out = tmp_path / "o" / "bare.html"
    assert main(["view", str(bare), "--out", str(out)]) == 0 and 'class="branch"' in out.read_text()


def test_run_file_index_and_question_pages(run_file, tmp_path):
    out = tmp_path / "site" / "index.html"
    assert main(["view", str(run_file), "--out", str(out)]) == 0
    index = out.read_text()
    assert f'href="{question_filename("q1")}"' in index and 'href="q-q_2.html"' in index
    assert "cpt (branches=3, budget=64)" in index and "parallel (branches=3, budget=64)" in index
    q1 = (out.parent / "q-q1.html").read_text()
    assert q1.count('<section class="trace"') == 2
    assert 'id="timeline"' in q1 and 'id="timeline-1"' in q1 and 'id="pool"' in q1 and 'href="index.html"' in q1
    assert (out.parent / "q-q_2.html").exists()
    single = tmp_path / "one.html"
    assert main(["view", str(run_file), "--question", "q1", "--out", str(single)]) == 0
    assert single.read_text().count('<section class="trace"') == 2


@pytest.mark.parametrize("argv, message", [
    (["view", "/no/such/trace.json"], "file '/no/such/trace.json' not found"),
    (["view", "RUN", "--question", "zz"], "question 'zz' is not in"),
    (["view", "RES", "--question", "q1"], "--question applies to run files"),
    (["view", "JUNK"], "neither a trace"),
])
def test_cli_errors_are_one_line_exit_2(argv, message, run_file, tmp_path, capsys):
    res = tmp_path / "res.json"
    res.write_text(json.dumps(cpt_trace()))
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\n")
    argv = [{"RUN": str(run_file), "RES": str(res), "JUNK": str(junk)}.get(a, a) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_write_view_into_a_folder(tmp_path, run_file):
    d = tmp_path / "d"
    d.mkdir()
    assert write_view(run_file, d)[0] == d / "index.html"


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         *args], capture_output=True, text=True, timeout=120)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (Debian package `chromium`)")
def test_page_renders_in_headless_chromium(tmp_path):
    page = tmp_path / "page.html"
    page.write_text(render_trace_page(cpt_trace()))
    png = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={png}", "--window-size=1200,1600", page.as_uri())
    assert png.exists() and png.stat().st_size > 10_000
    from matplotlib.image import imread

    pixels = imread(str(png))
    assert pixels.shape[0] >= 1000 and len({tuple(p) for p in pixels[::20, ::20].reshape(-1, pixels.shape[-1])}) > 10
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    assert 'id="timeline"' in dom and 'id="pool"' in dom and dom.count('class="branch-row"') == 3
