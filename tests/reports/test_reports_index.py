"""render_index(): one self-contained page linking every student's report."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from robustdistill.reports import index_entry, render, render_index


def test_render_index_links_every_entry(tmp_path: Path) -> None:
    entries = [
        {
            "name": "kd-student",
            "report": "kd/report.html",
            "teacher": "digits-standard",
            "student": "digits-kd",
            "passed": True,
            "flags": 0,
            "summary": {"clean": 0.97, "pgd": 0.05},
        },
        {
            "name": "dd <student>",
            "report": "defensive distillation/report.html",
            "teacher": "digits-standard",
            "student": "digits-dd",
            "passed": False,
            "flags": 2,
            "summary": {"clean": 0.9, "median_l2": 0.84},
        },
        {"name": "broken", "report": "broken/report.html"},  # whatever the runner could not fill in
    ]
    out = render_index(entries, tmp_path / "demo" / "index.html", title="robustdistill demo")
    assert out == tmp_path / "demo" / "index.html"
    html = out.read_text()
    hrefs = re.findall(r'href="([^"#][^"]*)"', html)
    assert hrefs == [e["report"] for e in entries]
    assert "dd &lt;student&gt;" in html
    assert html.count('class="pill pass"') == 1 and html.count('class="pill fail"') == 1
    assert "97.0%" in html and "0.840" in html  # accuracies as percentages, distances as numbers
    assert "http://" not in html and "<script" not in html and " src=" not in html
    assert not list(out.parent.glob("*.tmp"))


def test_index_entry_from_a_real_run(audited_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "demo" / "dd-student"
    shutil.copytree(audited_run, run_dir)
    render(run_dir)
    entry = index_entry(run_dir, tmp_path / "demo")
    assert entry["report"] == "dd-student/report.html"
    assert entry["flags"] == len(json.loads((run_dir / "report.json").read_text())["flags"])
    assert {"clean", "fgsm", "pgd"} <= set(entry["summary"])
    out = render_index([entry], tmp_path / "demo" / "index.html", title="demo")
    assert (out.parent / entry["report"]).is_file()
