"""The report from fixed records: every plot written as PNG and SVG, table values right."""

from __future__ import annotations

import json

import pytest
from evalhelpers import make_record, write_run_file

from collabthink.evaluation.report import PLOTS, write_report


def _cpt_record(qid, correct, pool, extracted_new, changes):
    rounds = []
    size = 0
    for i, (extracted, new) in enumerate(extracted_new):
        size += new
        phase = "explore" if i <= changes.get("broadcast", 99) else "broadcast"
        rounds.append({"round": i, "phase": phase, "notes_extracted": extracted, "new_entries": list(range(new)),
                       "pool_size": size, "ig": new / 16, "d": None if i < 3 else 0.3})
    return make_record("cpt", 2, 64, qid, correct, [correct, False], wall=3.0, decode=1.0, extraction=1.5,
                       generated=120, rounds=rounds,
                       extra={"pool": [{}] * pool, "schedule": [], "phase_changes": changes, "extraction_tokens": 40})


@pytest.fixture
def runs(tmp_path):
    par = [
        make_record("parallel", 2, 64, "a", True, [True, False], wall=1.0, decode=0.8, generated=100),
        make_record("parallel", 2, 64, "b", False, [False, False], wall=3.0, decode=2.5, generated=140),
        make_record("parallel", 4, 64, "a", True, [True, True, True, False], wall=2.0, decode=1.8, generated=220),
        make_record("parallel", 4, 64, "b", True, [True, False, False, False], wall=6.0, decode=5.0, generated=260),
    ]
    cpt = [
        _cpt_record("a", True, 6, [(4, 4), (3, 1), (2, 1), (2, 0)], {"broadcast": 1}),
        _cpt_record("b", True, 3, [(2, 2), (2, 1), (1, 0)], {}),
    ]
    return [write_run_file(tmp_path / "par.jsonl", par), write_run_file(tmp_path / "cpt.jsonl", cpt)]


def _table(markdown: str, first_header: str) -> list[list[str]]:
    lines = markdown.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith(f"| {first_header} |"))
    rows = []
    for l in lines[start + 2:]:
        if not l.startswith("|"):
            break
        rows.append([c.strip() for c in l.strip("|").split("|")])
    return rows


def test_every_plot_is_written_as_png_and_svg(runs, tmp_path):
    out = tmp_path / "report"
    written = write_report(runs, out)
    assert written["plots"] == list(PLOTS)
    for name in PLOTS:
        png, svg = out / f"{name}.png", out / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
        text = svg.read_text()
        assert text.lstrip().startswith("<?xml") and "<svg" in text, name
    md = (out / "report.md").read_text()
    for name in PLOTS:
        assert f"({name}.png)" in md


def test_plot_labels_titles_and_legends(runs, tmp_path):
    out = tmp_path / "report"
    write_report(runs, out)
    svg = (out / "accuracy_vs_latency.svg").read_text()
    # matplotlib writes text as glyph paths, with the original string in a comment
    for text in ("Accuracy vs latency", "mean wall-clock latency per question (s)", "majority-vote accuracy (%)",
                 "parallel", "cpt", "n=4,T=64"):
        assert text in svg, text
    rounds = (out / "cpt_rounds.svg").read_text()
    for text in ("pool size (entries)", "IG_t (new entries / token)", "D_t", "round", "broadcast (median"):
        assert text in rounds, text
    assert "duplicate-discovery rate (%)" in (out / "cpt_duplicate_rate.svg").read_text()


def test_table_values(runs, tmp_path):
    out = tmp_path / "report"
    written = write_report(runs, out)
    rows = _table(written["markdown"], "method")
    assert [r[:3] for r in rows] == [["cpt", "n=2,T=64", "2"], ["parallel", "n=2,T=64", "2"],
                                     ["parallel", "n=4,T=64", "2"]]
    cpt, p2, p4 = rows
    # vote acc, branch acc, pass@n, latency mean, latency median, generated tokens per question
    assert p2[3:9] == ["50.0%", "25.0%", "50.0%", "2.00", "2.00", "120"]
    assert p4[3:9] == ["100.0%", "50.0%", "100.0%", "4.00", "4.00", "240"]
    assert cpt[3:6] == ["100.0%", "50.0%", "100.0%"]
    cost = _table(written["markdown"].split("## Time and tokens")[1], "method")
    # decode, extraction, other (s), prefill computed / reused per question
    assert cost[1][2:7] == ["1.65", "0.00", "0.35", "40", "0"]
    assert cost[0][2:5] == ["1.00", "1.50", "0.50"]
    cpt_rows = _table(written["markdown"].split("## CPT")[1], "method")
    # pool size, rounds, rounds per phase, duplicate rate (1 - 9 new / 16 extracted), extraction tokens
    assert cpt_rows == [["cpt", "n=2,T=64", "4.5", "3.5", "broadcast 1.0, explore 2.5", "43.8%", "40"]]
    summary = json.loads((out / "summary.json").read_text())
    groups = {(g["method"], g["setting"]["branches"]): g for g in summary["groups"]}
    assert groups[("parallel", 2)]["vote_accuracy"] == 0.5
    assert [q["id"] for q in groups[("parallel", 4)]["per_question"]] == ["a", "b"]
    assert groups[("cpt", 2)]["cpt"]["duplicate_rate"]["overall"] == pytest.approx(1 - 9 / 16)


def test_no_cpt_plots_without_cpt_records(tmp_path):
    run = write_run_file(tmp_path / "par.jsonl", [make_record("parallel", 2, 64, "a", True, [True, False])])
    written = write_report([run], tmp_path / "out")
    assert written["plots"] == ["accuracy_vs_latency", "accuracy_vs_tokens", "accuracy_vs_flops"]
    assert not (tmp_path / "out" / "cpt_rounds.png").exists()
    assert "## CPT" not in written["markdown"] and "## DeepConf" not in written["markdown"]


def test_deepconf_section_when_present(tmp_path):
    recs = [make_record("deepconf", 2, 64, q, True, [True, False],
                        extra={"deepconf": {"stopped_early": 1, "skipped": 0, "tokens_saved": saved}})
            for q, saved in (("a", 50), ("b", 10))]
    written = write_report([write_run_file(tmp_path / "dc.jsonl", recs)], tmp_path / "out")
    assert _table(written["markdown"].split("## DeepConf")[1], "method") == [
        ["deepconf", "n=2,T=64", "2/4", "0/4", "30"]]


def test_viewer_link_only_when_the_page_exists(runs, tmp_path):
    out = tmp_path / "report"
    assert "](viewer.html)" not in write_report(runs, out)["markdown"]
    (out / "viewer.html").write_text("<html></html>")
    assert "[viewer.html](viewer.html)" in write_report(runs, out)["markdown"]


def test_empty_run_file_is_an_error(tmp_path):
    run = write_run_file(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match="no finished records"):
        write_report([run], tmp_path / "out")
