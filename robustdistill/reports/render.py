"""Rendering a finished run: report.json (+ artifacts/examples.npz, artifacts/roc-*.npz) -> report.md, report.html,
plots/*.png."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from robustdistill import ownership
from robustdistill.errors import UserInputError
from robustdistill.reports import plots as plotting
from robustdistill.reports.data import Report
from robustdistill.reports.examples import load_examples
from robustdistill.reports.html import render_html
from robustdistill.reports.html_index import index_summary, render_index_html
from robustdistill.reports.markdown import render_markdown
from robustdistill.reports.privacy_data import ROC_KEY, Privacy, load_privacy
from robustdistill.reports.sections.diffusion import SAMPLES_KEY, grid_pngs
from robustdistill.reports.sections.diffusion_privacy import PLOT_KEY as DIFFUSION_MIA_KEY
from robustdistill.reports.sections.diffusion_privacy import sweep_png
from robustdistill.reports.sections.unlearning import grid_pngs as unlearning_grid_pngs
from robustdistill.reports.size_data import SIZE_TITLE

log = logging.getLogger(__name__)

#: plot key -> (file name under plots/, caption in report.md)
PLOTS = {
    "curve": ("robustness_curve.png", "Robustness curve"),
    "attacks": ("accuracy_per_attack.png", "Clean and robust accuracy per attack"),
    "examples": ("examples.png", "Clean and adversarial examples"),
    "size": ("accuracy_vs_size.png", SIZE_TITLE),
    "bias-defences": ("bias_defences.png", "Defences' catch rates per bias type"),
    DIFFUSION_MIA_KEY: ("diffusion_mia_by_t.png", "Membership inference by timestep"),
}


def plot_file(key: str) -> tuple[str, str]:
    """(file name under plots/, caption) of a plot key: PLOTS, or ROC_KEY + probe for plots/roc-<probe>.png."""
    if key in PLOTS:
        return PLOTS[key]
    if key.startswith(SAMPLES_KEY):
        probe = key.removeprefix(SAMPLES_KEY)
        return f"samples-{re.sub(r'[^A-Za-z0-9._-]+', '_', probe)}.png", f"Class-conditional samples ({probe})"
    probe = key.removeprefix(ROC_KEY)
    return f"roc-{re.sub(r'[^A-Za-z0-9._-]+', '_', probe)}.png", f"Membership inference ROC ({probe})"


def _file_mode() -> int:
    """The mode a plain ``open(..., "w")`` would give (mkstemp's temporary files are 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _write_bytes(target: Path, payload: bytes) -> None:
    from robustdistill.utils import atomic_path  # lazy: robustdistill.utils imports torch

    with atomic_path(target) as tmp:
        tmp.write_bytes(payload)
        tmp.chmod(_file_mode())


def _write_text(target: Path, text: str) -> None:
    _write_bytes(target, text.encode("utf-8"))


def build_plots(report: Report, run_dir: Path, privacy: Privacy | None = None) -> tuple[dict[str, bytes | None], str]:
    """All plots as PNG bytes (None where the run has nothing to plot) and the note on missing examples."""
    examples, note = load_examples(run_dir / "artifacts" / "examples.npz")
    pngs: dict[str, bytes | None] = {
        "curve": plotting.robustness_curve(report),
        "attacks": plotting.attack_bars(report),
        "examples": plotting.examples_grid(examples, report.display_label(examples.attack))
        if examples is not None
        else None,
        "size": plotting.accuracy_vs_size(report.size()),
        "bias-defences": plotting.bias_defence_bars(report),
        DIFFUSION_MIA_KEY: sweep_png(report),
    }
    pngs.update(grid_pngs(report, run_dir))
    pngs.update(unlearning_grid_pngs(report, run_dir))
    if privacy is not None:
        kinds = {row.probe: row.kind for row in privacy.rows}
        for probe in privacy.probes:
            pngs[ROC_KEY + probe] = plotting.roc_curve(probe, kinds[probe], privacy.curves[probe])
    return pngs, note


def render(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Render ``run_dir/report.json`` (and ``artifacts/examples.npz``, ``artifacts/roc-*.npz`` when present) into
    ``report.md``, ``report.html`` (self-contained) and the PNGs under ``plots/`` that report.md links.

    Everything is computed in memory first and each file is written atomically, plots first and report.html
    last: if anything fails, the previous report.md and report.html are left exactly as they were. Returns the
    written paths (report.md, report.html, then the plots).
    """
    run_dir = Path(run_dir)
    report = Report.load(run_dir / "report.json")
    privacy = load_privacy(report, run_dir)
    pngs, examples_note = build_plots(report, run_dir, privacy)
    links = {key: f"plots/{plot_file(key)[0]}" for key, png in pngs.items() if png is not None}
    markdown = render_markdown(report, links, examples_note, privacy)
    html = render_html(report, pngs, examples_note, privacy)

    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    plots = {run_dir / "plots" / plot_file(key)[0]: png for key, png in pngs.items() if png is not None}
    # Only files robustdistill wrote here are ever replaced: refuse before writing anything.
    _check_owned(run_dir, [*plots, md_path, html_path])
    plot_paths = []
    for target, png in plots.items():
        _write_bytes(target, png)
        plot_paths.append(target)
        ownership.record(run_dir, [target])
    _write_text(md_path, markdown)
    _write_text(html_path, html)
    ownership.record(run_dir, [md_path, html_path])
    # Plots of an earlier render that this run no longer has data for: only those the marker says we wrote.
    stale = [path for path in (run_dir / "plots").glob("*.png") if path not in plots]
    ownership.remove_owned(run_dir, stale)
    log.info("wrote %s and %s", md_path, html_path)
    return [md_path, html_path, *plot_paths]


def _check_owned(run_dir: Path, targets: Sequence[Path]) -> None:
    """Refuse to replace a file in ``run_dir`` that robustdistill did not write there (a user's own report.md or
    plot); a run directory without a marker is adopted only if it provably is an earlier version's audit."""
    legacy = ownership.read_marker(run_dir) is None and ownership.is_legacy_audit(run_dir)
    foreign = [t for t in targets if (t.exists() or t.is_symlink()) and not (legacy or ownership.owns(run_dir, t))]
    if foreign:
        raise UserInputError("out", f"{foreign[0]} exists and was not written by robustdistill",
                             "move it away, or write the audit into a new --out")
    ownership.adopt(run_dir, ownership.AUDIT, legacy=ownership.is_legacy_audit)


def render_index(entries: Sequence[Mapping[str, Any]], out: str | os.PathLike[str], title: str) -> Path:
    """Write a self-contained index.html at ``out`` linking every report.

    Each entry (:func:`index_entry` writes them): ``{"name", "report" (path of its report.html relative to out's
    folder), "teacher", "student" (model names), "passed" (bool), "flags" (int), "masked" (roles flagged for
    gradient masking), "summary" ({column: {role: {"value", "ci95", "metric", "n"}}}, accuracies as fractions; a plain
    number stands for the student's value), "notes" (lines printed under the table)}``.
    """
    out = Path(out)
    _write_text(out, render_index_html(list(entries), title))
    return out


def render_sweep_index(entries: Sequence[Mapping[str, Any]], out: str | os.PathLike[str], title: str) -> Path:
    """Write a sweep's self-contained index.html at ``out``: one sortable line per audit (its student's numbers and
    size), and accuracy against size when two or more students have a known parameter count. Entries are
    :func:`index_entry`'s plus ``parameters``."""
    from robustdistill.reports.sweep_index import render_sweep_index_html, size_points

    out = Path(out)
    size_png = plotting.sweep_accuracy_vs_size(size_points(entries))
    _write_text(out, render_sweep_index_html(list(entries), title, size_png))
    return out


def index_entry(
    run_dir: str | os.PathLike[str], index_dir: str | os.PathLike[str], name: str | None = None
) -> dict[str, Any]:
    """The :func:`render_index` entry for a rendered run, read from its report.json: verdict, flag count, the models
    flagged for gradient masking, and the teacher's and student's clean and robust accuracies (one per attack) and
    LiRA AUCs with their intervals (:func:`robustdistill.reports.html_index.index_summary`); ``report`` is relative
    to ``index_dir``."""
    run_dir = Path(run_dir)
    report = Report.load(run_dir / "report.json")
    names = report.checkpoint_names()
    summary, notes = index_summary(report)
    return {
        "name": name or run_dir.name,
        "report": os.path.relpath(run_dir / "report.html", Path(index_dir)).replace(os.sep, "/"),
        "teacher": names.get("teacher", "—"),
        "student": names.get("student", "—"),
        "passed": report.passed,
        "flags": len(report.flags),
        "masked": report.masked_roles,
        "summary": summary,
        "notes": notes,
    }


__all__ = ["PLOTS", "ROC_KEY", "build_plots", "index_entry", "plot_file", "render", "render_index"]
