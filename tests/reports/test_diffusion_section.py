"""The "Generation quality" section (group generation) of report.html and report.md, from a report.json written in
the schema the generation-quality probe writes and its artifacts/samples-<probe>-<role>.npz: a teacher sampled
with 50 DDIM steps and a one-step student, the table with its intervals, the two sample grids side by side in one
PNG (embedded in report.html, written under plots/ and linked from report.md), and what a missing file costs."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from robustdistill.data import load_split
from robustdistill.reports import Report, render
from robustdistill.reports.html import render_html
from robustdistill.reports.sections import group_of

PROBE = "quality"
# role -> (steps, generator, class accuracy, Frechet distance, samples/s)
MODELS = {"teacher": (50, "ddim", 0.91, 1.234, 250.5), "student": (1, "one-step", 0.62, 7.5, 9100.0)}
PER_CLASS = 10


def rows() -> list[dict[str, Any]]:
    out = []
    for role, (steps, generator, accuracy, distance, speed) in MODELS.items():
        params = {"name": PROBE, "classifier": "checkpoints/digits-classifier", "classifier_sha256": "ab" * 32,
                  "per_class": PER_CLASS, "steps": steps, "generator": generator, "guidance": None, "resamples": 200}
        out += [{"probe": PROBE, "model": role, "metric": "class_accuracy", "value": accuracy,
                 "ci95": [accuracy - 0.05, accuracy + 0.04], "n": 10 * PER_CLASS, "params": params},
                {"probe": PROBE, "model": role, "metric": "frechet_distance", "value": distance,
                 "ci95": [distance * 0.8, distance * 1.3], "n": 10 * PER_CLASS, "params": params | {"n_real": 360}},
                {"probe": PROBE, "model": role, "metric": "samples_per_second", "value": speed,
                 "ci95": [speed * 0.9, speed * 1.1], "n": 10 * PER_CLASS, "params": params}]
    return out


def write_run(run: Path, roles: tuple[str, ...] = ("teacher", "student")) -> None:
    """report.json and, per role in ``roles``, a samples file: the teacher's "samples" are real digits of each
    class (what a good model draws), the student's uniform noise."""
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps({
        "suite": {"name": "diffusion", "probes": [{"kind": "generation-quality", "name": PROBE}]},
        "sections": [{"group": "generation", "family": "diffusion", "probes": [PROBE]}],
        "manifest": {"robustdistill": "0.0.0", "seed": 0, "family": "diffusion",
                     "checkpoints": {role: {"path": f"checkpoints/{role}"} for role in MODELS}},
        "results": rows(), "gates": [], "flags": []}))
    digits = load_split({"kind": "digits"}, "test")
    labels = np.repeat(np.arange(10), PER_CLASS)
    real = np.stack([digits.x[digits.y == c][:PER_CLASS].numpy() for c in range(10)]).reshape(-1, 1, 8, 8)
    noise = np.random.default_rng(0).random((len(labels), 1, 8, 8)).astype(np.float32)
    (run / "artifacts").mkdir()
    for role in roles:
        images = real if role == "teacher" else noise
        predicted = labels if role == "teacher" else (labels + 1) % 10
        np.savez(run / "artifacts" / f"samples-{PROBE}-{role}.npz", images=images, labels=labels,
                 predicted=predicted, steps=np.int64(MODELS[role][0]))


def section_of(html: str) -> str:
    match = re.search(r'<section id="generation">.*?</section>', html, re.DOTALL)
    assert match, "no generation section"
    return match.group(0)


def md_section(markdown: str) -> str:
    start = markdown.index("## Generation quality")
    end = markdown.find("\n## ", start + 1)
    return markdown[start:end if end > 0 else None]


def png_size(payload: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(payload)) as image:
        return image.size


def test_kind_maps_to_group() -> None:
    assert group_of("generation-quality") == "generation"


def test_table_and_side_by_side_grids_in_html_and_markdown(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_run(run)
    written = render(run)
    html, markdown = (run / "report.html").read_text(), (run / "report.md").read_text()
    section, md = section_of(html), md_section(markdown)
    for text in (re.sub(r"<[^>]+>", "", section), md):
        # Teacher first, each model's steps and generator, every value with its interval.
        assert text.index("teacher") < text.index("student")
        assert "50 (ddim)" in text and "1 (one-step)" in text
        assert "91.0%" in text and "[86.0, 95.0]" in text and "62.0%" in text
        assert "1.234 [0.987, 1.604]" in text and "7.500" in text
        # Samples per second in three significant figures, not the three decimals of the shared formatter.
        assert "250 [225, 276]" in text and "9,100 [8,190, 10,000]" in text
        assert "Fréchet distance" in text and "samples / s" in text
        # Shared settings once, the classifier's digest shortened.
        assert "per_class=10" in text and "abababababababab" in text and "ab" * 32 not in text
    # One PNG holding both grids: embedded once in report.html, written under plots/ and linked from report.md.
    assert section.count("data:image/png;base64,") == 1
    png = run / "plots" / f"samples-{PROBE}.png"
    assert png in written and f"](plots/samples-{PROBE}.png)" in md
    width, height = png_size(png.read_bytes())
    assert width > 1.4 * height  # two grids of 10 rows x 8 columns side by side
    assert 'href="#generation"' in html and "Generation quality: checked (quality)." in html


def test_a_missing_samples_file_costs_its_panel_and_none_costs_the_figure(tmp_path: Path) -> None:
    write_run(tmp_path / "both")
    write_run(tmp_path / "one", roles=("teacher",))
    write_run(tmp_path / "none", roles=())
    for name in ("both", "one", "none"):
        render(tmp_path / name)
    both = png_size((tmp_path / "both" / "plots" / f"samples-{PROBE}.png").read_bytes())
    one = png_size((tmp_path / "one" / "plots" / f"samples-{PROBE}.png").read_bytes())
    assert one[0] < 0.7 * both[0]  # one panel, not two
    html = section_of((tmp_path / "none" / "report.html").read_text())
    md = md_section((tmp_path / "none" / "report.md").read_text())
    assert "<img" not in html and "No sample grids" in html and "No sample grids" in md
    assert not (tmp_path / "none" / "plots" / f"samples-{PROBE}.png").exists()
    assert "91.0%" in html  # the table stays


def test_report_without_generation_rows_has_no_section() -> None:
    report = Report.from_dict({"suite": {"name": "x", "probes": []}, "manifest": {}, "results": [], "gates": [],
                               "flags": [], "sections": [{"group": "generation", "family": "diffusion",
                                                          "probes": [PROBE]}]})
    assert 'id="generation"' not in render_html(report, {})
