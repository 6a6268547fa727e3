"""The training report's figure: per-epoch curves from a checkpoint's provenance history.

Panels: the training loss; clean and PGD accuracy on val (in %, as every other report) with the selected epoch and
ProARD's stage boundaries marked; then one panel per family of method-specific series (MTARD's teacher weights
``w_*``, B-MTARD's temperatures ``tau_*``, ProARD's metrics by sub-network, anything else alone). Legends sit below
their panel, never over the curves. The figure carries no title of its own: the page around it has one.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from robustdistill.reports import plots
from robustdistill.reports.records import humanise, is_fraction

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

STANDARD = {"epoch", "lr", "train_loss", "train_accuracy", "val_clean_accuracy", "val_robust_accuracy",
            "stage", "stage_epoch"}  # ProARD's stage is drawn as boundaries, not as a series
SUBNETS = ("smallest", "largest")  # ProARD validates these sub-networks: one panel per metric, a line each
FAMILY_TITLES = {"w": "Teacher weights", "tau": "Teacher temperatures"}
# MTARD / B-MTARD's per-epoch series: adv is the robust teacher's term (on adversarial inputs), nat the clean one's.
SERIES_NAMES = {"w_adv": "w_adv · robust teacher", "w_nat": "w_nat · clean teacher",
                "tau_adv": "tau_adv · robust teacher", "tau_nat": "tau_nat · clean teacher",
                "kl_adv": "KL adv · robust teacher", "kl_nat": "KL nat · clean teacher"}
CLEAN, ROBUST, SELECTED, STAGE, LOSS = "#3b6fb6", "#e07b39", "#2e9e6a", "#8c959f", "#57606a"
PANEL_WIDTH, PANEL_HEIGHT = 3.8, 3.3  # inches; three panels a row fill the report page's 1,000 px column
COLUMNS = 3


def extra_series(history: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Method-specific per-epoch numbers (everything but the standard keys), by name."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in history:
        for key, value in record.items():
            if key not in STANDARD and isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(key, []).append((int(record["epoch"]), float(value)))
    return series


def series_groups(names: list[str]) -> dict[str, list[str]]:
    """One panel per family: ``w_*`` together, ``tau_*`` together, a metric over sub-networks together, the rest
    alone."""
    groups: dict[str, list[str]] = {}
    for key in names:
        head, _, tail = key.rpartition("_")
        first = key.split("_")[0]
        family = first if first in FAMILY_TITLES else head if tail in SUBNETS else key
        groups.setdefault(family, []).append(key)
    return groups


def series_name(key: str) -> str:
    """How the curves and the table name a method-specific series."""
    return SERIES_NAMES.get(key) or humanise(key)


def stage_starts(history: list[dict[str, Any]]) -> list[int]:
    """The first epoch of each new stage (ProARD's progressive stages)."""
    return [int(r["epoch"]) for previous, r in itertools.pairwise(history) if r.get("stage") != previous.get("stage")]


def training_figure(provenance: dict[str, Any], robust_label: str = "PGD (val)") -> Figure:
    """The curves of ``provenance["history"]`` (see the module docstring); ``robust_label`` names the val attack."""
    from matplotlib import rc_context

    history = provenance.get("history") or []
    best = (provenance.get("selection") or {}).get("best_epoch")
    stages = stage_starts(history)
    extras = extra_series(history)
    groups = series_groups(list(extras))
    validation = [(key, label, colour) for key, label, colour in
                  (("val_clean_accuracy", "clean (val)", CLEAN), ("val_robust_accuracy", robust_label, ROBUST))
                  if any(key in r for r in history)]  # ProARD validates sub-networks instead: no such panel
    panels = 1 + bool(validation) + len(groups)
    columns, rows = min(panels, COLUMNS), -(-panels // COLUMNS)
    with rc_context(plots._style()):
        figure = plots._figure(PANEL_WIDTH * columns, PANEL_HEIGHT * rows)
        figure.set_layout_engine("constrained")  # makes room for the legends below the panels
        epochs = [int(r["epoch"]) for r in history]
        ax = figure.add_subplot(rows, columns, 1)
        _line(ax, epochs, [r.get("train_loss") for r in history], label=None, colour=LOSS)
        _finish(ax, "Training loss", "loss (mean over the epoch)")
        if validation:
            ax = figure.add_subplot(rows, columns, 2)
            for key, label, colour in validation:
                _line(ax, epochs, [r.get(key) for r in history], label=label, colour=colour)
            _mark_epochs(ax, stages, best)
            plots._percent_axis(ax)
            _finish(ax, "Validation accuracy", "accuracy")
        for i, (family, keys) in enumerate(groups.items()):
            ax = figure.add_subplot(rows, columns, 2 + bool(validation) + i)
            by_subnet = all(key.rpartition("_")[2] in SUBNETS for key in keys)
            for key in keys:
                points = extras[key]
                label = f"{key.rpartition('_')[2]} of the stage" if by_subnet else series_name(key)
                _line(ax, [p[0] for p in points], [p[1] for p in points], label=label if len(keys) > 1 else None,
                      colour=None)
            title = FAMILY_TITLES.get(family) or series_name(family)
            if by_subnet:
                title = f"{humanise(family.removeprefix('val_'))} (val)"
            if all(is_fraction(key) for key in keys):
                _mark_epochs(ax, stages, best)
                plots._percent_axis(ax)
            _finish(ax, title, "")
        return figure


def training_png(provenance: dict[str, Any], robust_label: str = "PGD (val)") -> bytes:
    return plots._png(training_figure(provenance, robust_label))


def _line(ax: Axes, x: list[int], y: list[Any], label: str | None, colour: str | None) -> None:
    # Dots on short runs, where a line alone hides which epochs were measured.
    marker = "o" if len(x) <= 12 else None
    ax.plot(x, y, label=label, color=colour, marker=marker, markersize=3.5, linewidth=1.8)


def _mark_epochs(ax: Axes, stages: list[int], best: Any) -> None:
    for i, start in enumerate(stages):
        ax.axvline(start - 0.5, color=STAGE, linewidth=0.8, label="new stage" if i == 0 else None)
    if isinstance(best, int) and best >= 1:
        ax.axvline(best, color=SELECTED, linestyle=":", linewidth=1.6, label="selected epoch")


def _finish(ax: Axes, title: str, ylabel: str) -> None:
    """Title, labels, whole-number epoch ticks and the legend below the panel (outside the axes)."""
    from matplotlib.ticker import MaxNLocator

    ax.set(title=title, xlabel="epoch", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    labels = ax.get_legend_handles_labels()[1]
    if labels:
        # Two short entries a row; long ones one a row, so that a legend is no wider than its panel.
        columns = 2 if max(len(label) for label in labels) <= 15 else 1
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=min(len(labels), columns), fontsize=9,
                  handlelength=1.6, columnspacing=1.0)
