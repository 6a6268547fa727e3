"""The training report next to a trained checkpoint (issue 12, section 2): one title, legends beside (not over) the
curves and the selected-epoch line, a labelled loss axis, accuracy in % as everywhere else, one number format (the
audit reports'), and the audit reports' page style. Rendered from a real tiny training on the digits: GUARD's squeeze
stage with the curvature regulariser, which records a method-specific series (an extra panel) and PGD val accuracy.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from robustdistill.models import load_model
from robustdistill.reports.html_page import CSS
from robustdistill.reports.records import fmt_value
from robustdistill.reports.training import _ours, report_paths, write_training_report
from robustdistill.reports.training_plot import SELECTED, training_figure
from robustdistill.trainers.guard import SqueezeConfig, SqueezeTrainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, test_seed: int) -> Path:
    """A 3-epoch squeeze (tiny BatchNorm CNN, simple curvature penalty, PGD-2 on val), selected on clean accuracy."""
    config = SqueezeConfig(arch="cnn-bn", arch_params={"width": 8, "hidden": 32}, epochs=3, batch_size=64, lr=0.05,
                           augment="none", select_metric="clean", val_robust=True, val_attack_steps=2, eps=0.125,
                           curvature="simple", curvature_weight=1e-4, device="cpu", seed=test_seed)
    return SqueezeTrainer(config).fit(tmp_path_factory.mktemp("training-report") / "squeezed")


@pytest.fixture(scope="module")
def provenance(trained: Path) -> dict[str, Any]:
    return load_model(trained).provenance


@pytest.fixture(scope="module")
def page(trained: Path) -> str:
    png, html = write_training_report(trained)
    assert (png, html) == report_paths(trained)
    return html.read_text()


def test_the_figure_has_no_title_of_its_own_and_labelled_axes(provenance: dict[str, Any]) -> None:
    figure = training_figure(provenance)
    assert figure.get_suptitle() == ""  # the page's <h1> is the one title
    loss, accuracy, penalty = figure.axes
    assert loss.get_title() == "Training loss" and loss.get_ylabel()
    assert accuracy.get_title() == "Validation accuracy" and penalty.get_title() == "Curvature penalty"
    for ax in figure.axes:
        assert ax.get_xlabel() == "epoch"
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)  # epochs, not 1.5


def test_accuracy_is_drawn_in_percent(provenance: dict[str, Any]) -> None:
    accuracy = training_figure(provenance).axes[1]
    accuracy.figure.canvas.draw()
    labels = [t.get_text() for t in accuracy.get_yticklabels() if t.get_text()]
    assert labels and all(label.endswith("%") for label in labels) and "100%" in labels
    assert accuracy.get_ylim()[1] == pytest.approx(1.04)  # fractions on a 0-100% axis


def test_legends_sit_outside_every_panel_and_name_the_selected_epoch(provenance: dict[str, Any]) -> None:
    figure = training_figure(provenance)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    accuracy = figure.axes[1]
    legend = accuracy.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["clean (val)", "PGD (val)", "selected epoch"]
    best = provenance["selection"]["best_epoch"]
    assert [line.get_xdata()[0] for line in accuracy.get_lines() if line.get_color() == SELECTED] == [best]
    legends = [ax.get_legend() for ax in figure.axes if ax.get_legend() is not None]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in figure.axes:  # neither over the curves nor over a neighbour's axis labels
            assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()
            assert not box.overlaps(ax.xaxis.label.get_window_extent(renderer)), ax.get_title()


def test_the_page_has_one_title_the_audit_reports_style_and_percentages(page: str, provenance: dict[str, Any]) -> None:
    assert page.count("<h1>") == 1 and "<h1>squeezed</h1>" in page
    assert CSS in page  # the audit reports' stylesheet, not a page of its own
    assert '<p class="eyebrow">robustdistill training report · squeeze</p>' in page
    best = provenance["selection"]["best_epoch"]
    record = provenance["history"][best - 1]
    selected = page[page.index('id="selected"'):page.index('id="curves"')]
    assert f"clean accuracy <strong>{fmt_value(record['val_clean_accuracy'], 'accuracy')}</strong>" in selected
    assert f"PGD-2 accuracy <strong>{fmt_value(record['val_robust_accuracy'], 'accuracy')}</strong>" in selected


def test_every_number_in_the_table_is_in_the_audit_reports_format(page: str, provenance: dict[str, Any]) -> None:
    table = page[page.index('id="epochs"'):page.index('id="recipe"')]
    cells = re.findall(r'<td class="num">(.*?)</td>', table)
    history = provenance["history"]
    columns = list(history[0])
    assert len(cells) == len(history) * len(columns)
    for row, record in enumerate(history):
        for column, key in enumerate(columns):
            cell = re.sub(r"\s*<span.*", "", cells[row * len(columns) + column])
            value = record[key]
            if key == "epoch":
                assert cell == str(value)
            elif key == "lr":
                assert cell == f"{value:.4g}"  # a setting, as the audit reports print parameters
            elif "accuracy" in key:
                assert cell == f"{value * 100:.1f}%"  # "93.3%"
            else:
                assert cell == f"{value:.3f}"  # losses and penalties: three decimals, as the audit reports
    assert cells[(provenance["selection"]["best_epoch"] - 1) * len(columns)].endswith(
        '<span class="pill pass">selected</span>')


def test_the_page_and_image_are_recognised_as_ours_and_rewritten(trained: Path, page: str) -> None:
    png, html = report_paths(trained)
    assert _ours(png, html) == (True, True)
    write_training_report(trained)  # replaces its own files
    assert _ours(png, html) == (True, True)
    assert '<meta name="generator" content="robustdistill training report">' in html.read_text().split("</head>")[0]
