"""Reports: render a finished audit run for people.

    from robustdistill.reports import render, render_index
    render("reports/x")          # reports/x/report.json -> report.md, report.html (self-contained), plots/*.png
    render_index(entries, "reports/demo/index.html", title="robustdistill demo")

report.json is the stable, machine-readable result (DESIGN.md); report.md is for terminals and pull requests;
report.html is one self-contained file (inline CSS, plots embedded as data URIs) to open in a browser.
Importing this package is cheap: matplotlib loads only when a plot is drawn.
"""

from __future__ import annotations

from robustdistill.reports.data import Report
from robustdistill.reports.render import index_entry, render, render_index, render_sweep_index

__all__ = ["Report", "index_entry", "render", "render_index", "render_sweep_index"]
