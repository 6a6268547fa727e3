"""The membership-inference (privacy) section of report.html and report.md, from a run directory written by hand
in the schema the mia-loss / mia-confidence / mia-lira probes write (rows in report.json, ROC curves in
artifacts/roc-<probe>-<role>.npz)."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from robustdistill.reports import Report, render

NOTE = "not resolvable: TPR at 0.1% FPR needs at least 1000 non-members, there are 540"
N_MEMBERS, N_NONMEMBERS = 540, 540


def mia_rows(probe: str, role: str, members_of: str, auc: float, tpr_1pct: float) -> list[dict[str, Any]]:
    """The four rows of one (probe, role, member set); TPR at 0.1% FPR is not resolvable with 540 non-members."""
    prefix = "teacher_members_" if members_of == "teacher" else ""
    common = {"members_of": members_of, "n_members": N_MEMBERS, "n_nonmembers": N_NONMEMBERS, "attack": "mia-lira"}
    n = N_MEMBERS + N_NONMEMBERS
    return [
        {"probe": probe, "model": role, "metric": prefix + "auc", "value": auc, "ci95": [auc - 0.03, auc + 0.03],
         "n": n, "params": dict(common)},
        {"probe": probe, "model": role, "metric": prefix + "balanced_accuracy", "value": auc - 0.05,
         "ci95": [auc - 0.08, auc - 0.02], "n": n, "params": dict(common)},
        {"probe": probe, "model": role, "metric": prefix + "tpr_at_0_1pct_fpr", "value": None, "ci95": None, "n": n,
         "params": {**common, "fpr": 0.001, "resolvable": False, "note": NOTE}},
        {"probe": probe, "model": role, "metric": prefix + "tpr_at_1pct_fpr", "value": tpr_1pct,
         "ci95": [tpr_1pct - 0.01, tpr_1pct + 0.01], "n": n, "params": {**common, "fpr": 0.01, "resolvable": True}},
    ]


def roc(shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An empirical ROC of Gaussian member / non-member scores ``shift`` apart, starting at (0, 0)."""
    rng = np.random.default_rng(seed)
    members, others = rng.normal(shift, 1, N_MEMBERS), rng.normal(0, 1, N_NONMEMBERS)
    thresholds = np.sort(np.concatenate([members, others]))[::-1]
    tpr = (members[None] >= thresholds[:, None]).mean(1)
    fpr = (others[None] >= thresholds[:, None]).mean(1)
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])


def write_run(run_dir: Path, mia: bool = True) -> Path:
    results: list[dict[str, Any]] = [
        {"probe": "clean", "model": role, "metric": "accuracy", "value": value, "ci95": [value - 0.02, value + 0.02],
         "n": 500, "params": {}}
        for role, value in (("teacher", 0.97), ("student", 0.95))
    ]
    probes: list[dict[str, Any]] = [{"kind": "clean", "name": "clean"}]
    if mia:
        probes += [{"kind": "mia-lira", "name": "mia-lira", "shadow_models": 16}]
        probes += [{"kind": "mia-loss", "name": "mia-loss"}]
        results += mia_rows("mia-lira", "teacher", "own", 0.612, 0.031)
        results += mia_rows("mia-lira", "student", "own", 0.574, 0.022)
        results += mia_rows("mia-lira", "student", "teacher", 0.533, 0.017)
        results += mia_rows("mia-lira", "robust", "own", 0.509, 0.012)
        results += mia_rows("mia-loss", "teacher", "own", 0.588, 0.019)
        results += mia_rows("mia-loss", "student", "own", 0.551, 0.014)
        artifacts = run_dir / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        curves = {"teacher": (0.6, None), "student": (0.4, 0.2), "robust": (0.05, None)}
        for role, (own, teacher) in curves.items():
            arrays = dict(zip(("fpr_own", "tpr_own"), roc(own, seed=len(role))))
            if teacher is not None:
                arrays |= dict(zip(("fpr_teacher", "tpr_teacher"), roc(teacher, seed=7)))
            np.savez(artifacts / f"roc-mia-lira-{role}.npz", **arrays)
        for role in ("teacher", "student"):
            np.savez(artifacts / f"roc-mia-loss-{role}.npz", **dict(zip(("fpr_own", "tpr_own"), roc(0.3, seed=1))))
    report = {
        "suite": {"name": "privacy-report-test", "threat_model": {"norm": "linf", "eps": 0.125}, "probes": probes},
        "manifest": {
            "robustdistill": "0.0.0",
            "seed": 0,
            "checkpoints": {
                role: {"path": f"checkpoints/{role}", "sha256": f"{i}" * 64}
                for i, role in enumerate(("teacher", "student", "robust"))
            },
        },
        "results": results,
        "gates": [],
        "flags": [],
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    return run_dir


def section(html: str) -> str:
    match = re.search(r'<section id="privacy">.*?</section>', html, re.S)
    assert match, "no privacy section"
    return match.group(0)


def roc_images(html: str) -> list[Image.Image]:
    sources = re.findall(r'<img alt="Log-log ROC[^"]*" src="data:image/png;base64,([^"]+)"', html)
    return [Image.open(io.BytesIO(base64.b64decode(src))) for src in sources]


def test_privacy_section_in_html_and_markdown(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run")
    written = render(run_dir)
    html = (run_dir / "report.html").read_text()
    md = (run_dir / "report.md").read_text()
    privacy = section(html)

    assert "<h2>Membership inference (privacy)</h2>" in privacy
    assert '<a href="#privacy">' in html
    assert html.index('<section id="privacy">') < html.index('<section id="flags">')
    # A privacy-only suite perturbs no inputs: no threat model, robustness curve or adversarial examples to show.
    assert '<section id="examples">' not in html and '<section id="curves">' not in html and "ε =" not in html
    assert "Carlini et al. 2022" in privacy and "AUC near 0.5" in privacy
    # Both views, the roles in order (teacher, student, then the extra one), the sizes, values with their CIs.
    assert "own members" in privacy and "teacher&#x27;s members" in privacy
    heads = re.findall(r'<th class="group" colspan="4">([^<]+)</th>', privacy)
    assert heads == ["teacher", "student", "robust"]
    assert f"Members / non-members: {N_MEMBERS} / {N_NONMEMBERS} for every row." in privacy
    for text in ("0.612", "0.574", "0.533", "3.1%", "56.2%"):
        assert f'>{text} <span class="ci">[' in privacy, text
    # AUCs with their intervals printed (issue 12: they were hover-only), n on hover.
    assert '<span title="n = 1080">0.612 <span class="ci">[0.582, 0.642]</span></span>' in privacy
    assert '0.533 <span class="ci">[0.503, 0.563]</span>' in privacy
    # An unresolvable TPR says so, with the probe's reason as footnote; never 0 or a dash.
    assert privacy.count('>not resolvable</span><sup class="fn">1</sup>') == 6  # one per (probe, role, view)
    assert f"<li>{NOTE}</li>" in privacy
    assert "0.0%" not in privacy
    # One embedded log-log ROC per probe, also written for report.md.
    images = roc_images(privacy)
    assert len(images) == 2 and all(image.size[0] > 400 for image in images)
    assert {p.name for p in written[2:]} == {"accuracy_per_attack.png", "roc-mia-lira.png", "roc-mia-loss.png"}

    assert "## Membership inference (privacy)" in md
    assert "| probe | attacked with | members / non-members | teacher AUC |" in md
    lira_teacher_view = next(line for line in md.splitlines() if line.startswith("| mia-lira | teacher's members"))
    assert "0.533 [0.503, 0.563]" in lira_teacher_view and "not resolvable¹" in lira_teacher_view
    assert f"¹ {NOTE}" in md
    assert "![Membership inference ROC (mia-lira)](plots/roc-mia-lira.png)" in md
    # The attack's balanced accuracy is not a model accuracy: it stays out of the teacher-vs-student table.
    _, entries = Report.load(run_dir / "report.json").comparison()
    assert [entry.probe for entry in entries] == ["clean"]
    # The full results table says "not resolvable" too.
    assert "| mia-lira | mia-lira | teacher | tpr_at_0_1pct_fpr | not resolvable |" in md


def test_no_mia_rows_no_privacy_section(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", mia=False)
    written = render(run_dir)
    html = (run_dir / "report.html").read_text()
    md = (run_dir / "report.md").read_text()
    assert 'id="privacy"' not in html and "Membership inference" not in html
    assert "Membership inference" not in md
    assert {p.name for p in written[2:]} == {"accuracy_per_attack.png"}


def test_kind_from_rows_when_the_suite_is_missing(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run")
    raw = json.loads((run_dir / "report.json").read_text())
    del raw["suite"]
    (run_dir / "report.json").write_text(json.dumps(raw))
    render(run_dir)
    assert '>0.612 <span class="ci">' in section((run_dir / "report.html").read_text())


def test_missing_or_broken_roc_files_are_notes(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run")
    render(run_dir)
    assert (run_dir / "plots" / "roc-mia-loss.png").is_file()
    artifacts = run_dir / "artifacts"
    (artifacts / "roc-mia-lira-student.npz").unlink()
    (artifacts / "roc-mia-lira-robust.npz").write_bytes(b"not an npz")
    np.savez(artifacts / "roc-mia-lira-teacher.npz", fpr_own=np.zeros(3), tpr_own=np.zeros(4))  # lengths differ
    for role in ("teacher", "student"):
        (artifacts / f"roc-mia-loss-{role}.npz").unlink()

    written = render(run_dir)
    html = (run_dir / "report.html").read_text()
    md = (run_dir / "report.md").read_text()
    privacy = section(html)
    assert "no ROC curve for student: artifacts/roc-mia-lira-student.npz is missing" in privacy
    assert "no ROC curve for robust: artifacts/roc-mia-lira-robust.npz could not be read" in privacy
    assert "no ROC curve for teacher (own members): artifacts/roc-mia-lira-teacher.npz has no usable" in privacy
    assert "No ROC curves for mia-loss." in privacy
    assert "roc-mia-lira-student.npz is missing" in md
    # The table does not depend on the curves; plots without curves are not written, and stale ones go.
    assert '>0.612 <span class="ci">' in privacy
    assert roc_images(privacy) == []
    assert not any(p.name.startswith("roc-") for p in written)
    assert not list((run_dir / "plots").glob("roc-*.png"))


@pytest.mark.parametrize("view", ["own", "teacher"])
def test_a_partial_curve_set_still_plots(tmp_path: Path, view: str) -> None:
    """A student file with only one of its two curves: the other line is a note, the plot is drawn."""
    run_dir = write_run(tmp_path / "run")
    path = run_dir / "artifacts" / "roc-mia-lira-student.npz"
    with np.load(path) as npz:
        arrays = {key: npz[key] for key in npz.files if not key.endswith(f"_{view}")}
    np.savez(path, **arrays)
    render(run_dir)
    privacy = section((run_dir / "report.html").read_text())
    label = "own members" if view == "own" else "teacher&#x27;s members"
    assert f"no ROC curve for student ({label})" in privacy
    assert len(roc_images(privacy)) == 2
