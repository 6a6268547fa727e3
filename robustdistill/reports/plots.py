"""PNG plots for the reports, drawn with matplotlib's Agg canvas.

Figures are built with the object API (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``), never pyplot, so
rendering a report neither needs a display nor changes the backend of a notebook that imported pyplot. Every
function returns PNG bytes; nothing is written here (the caller writes atomically).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

from robustdistill.reports.data import Report
from robustdistill.reports.examples import Examples
from robustdistill.reports.privacy_data import VIEWS, RocCurve
from robustdistill.reports.records import Row, fmt_size, order_roles
from robustdistill.reports.size_data import Size

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ROLE_COLOURS = {"teacher": "#3b6fb6", "student": "#e07b39"}
OTHER_COLOURS = ["#2e9e6a", "#8e5ac8", "#c6454f", "#7a7a7a", "#b8a21c", "#1aa3b5"]
WRONG = "#cf222e"
RIGHT = "#1f2328"
DPI = 144


def role_colour(role: str, roles: list[str]) -> str:
    if role in ROLE_COLOURS:
        return ROLE_COLOURS[role]
    others = [r for r in roles if r not in ROLE_COLOURS]
    return OTHER_COLOURS[others.index(role) % len(OTHER_COLOURS)] if role in others else OTHER_COLOURS[0]


def _style() -> dict[str, Any]:
    return {
        "font.size": 10,
        "axes.titlesize": 12,
        "axes.titleweight": "bold",
        "axes.labelsize": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.edgecolor": "#57606a",
        "axes.grid": True,
        "grid.color": "#d0d7de",
        "grid.linewidth": 0.6,
        "legend.frameon": False,
        "savefig.facecolor": "white",
    }


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    return buffer.getvalue()


def _percent_axis(ax: Axes, top: float = 1.0) -> None:
    from matplotlib.ticker import PercentFormatter

    ax.set_ylim(0, max(1.0, top) * 1.04)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def _legend(ax: Axes, entries: int) -> None:
    """Beside the title (above the axes) for up to three entries; below the plot for more."""
    if entries <= 3:
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=entries, borderaxespad=0.2)
    else:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=min(entries, 4))


def robustness_curve(report: Report) -> bytes | None:
    """Robust accuracy vs eps, every role on one plot, with 95% CI bands where the rows carry them."""
    import matplotlib

    curves = report.curves()
    if not curves:
        return None
    roles = order_roles(role for role, _ in curves)
    labels = list(dict.fromkeys(label for _, label in curves))
    styles = ["-", "--", ":", "-."]
    with matplotlib.rc_context(_style()):
        figure = _figure(7.2, 4.0)
        ax = figure.add_subplot()
        top = 1.0
        for (role, label), rows in curves.items():
            eps = np.array([r.eps for r in rows], dtype=float)
            value = np.array([r.value for r in rows], dtype=float)
            colour = role_colour(role, roles)
            name = role if len(labels) == 1 else f"{role} · {report.display_label(label)}"
            ax.plot(
                eps,
                value,
                styles[labels.index(label) % len(styles)],
                color=colour,
                marker="o",
                markersize=4,
                linewidth=2,
                label=name,
            )
            with_ci = [r for r in rows if r.ci95 is not None]
            if len(with_ci) >= 2:
                ax.fill_between(
                    [r.eps for r in with_ci],
                    [r.ci95[0] for r in with_ci],
                    [r.ci95[1] for r in with_ci],
                    color=colour,
                    alpha=0.15,
                    linewidth=0,
                )
                top = max(top, max(r.ci95[1] for r in with_ci))
            top = max(top, float(value.max()))
        tm = report.threat_model_eps()
        if tm is not None:
            ax.axvline(tm, color="#57606a", linestyle=":", linewidth=1)
            ax.annotate(
                "threat model",
                (tm, 1.0),
                xytext=(4, -2),
                textcoords="offset points",
                fontsize=8,
                color="#57606a",
                va="top",
            )
        _percent_axis(ax, top)
        ax.set_xlim(left=0)
        ax.set_xlabel("ε (perturbation budget)")
        ax.set_ylabel("robust accuracy")
        title = "Robustness curve" + (f" ({report.display_label(labels[0])})" if len(labels) == 1 else "")
        ax.set_title(title, loc="left")
        _legend(ax, len(curves))
        return _png(figure)


def attack_bars(report: Report) -> bytes | None:
    """Grouped bars: clean accuracy and robust accuracy per attack, one bar per role, 95% CI error bars."""
    import matplotlib

    groups = report.bar_groups()
    if not groups:
        return None
    roles = order_roles(role for _, cells in groups for role in cells)
    width = 0.8 / max(1, len(roles))
    with matplotlib.rc_context(_style()):
        figure = _figure(max(7.2, 0.9 * len(groups) * max(1, len(roles)) ** 0.5 + 2.5), 4.0)
        ax = figure.add_subplot()
        ax.grid(axis="x", visible=False)
        positions = np.arange(len(groups))
        for i, role in enumerate(roles):
            xs, heights, lower, upper = [], [], [], []
            for position, (_, cells) in zip(positions, groups):
                row: Row | None = cells.get(role)
                if row is None or row.value is None:
                    continue
                xs.append(position - 0.4 + width * (i + 0.5))
                heights.append(row.value)
                lo, hi = row.ci95 if row.ci95 is not None else (row.value, row.value)
                lower.append(max(0.0, row.value - lo))
                upper.append(max(0.0, hi - row.value))
            if not xs:
                continue
            bars = ax.bar(xs, heights, width * 0.92, color=role_colour(role, roles), label=role, zorder=2)
            ax.errorbar(
                xs, heights, yerr=[lower, upper], fmt="none", ecolor="#24292f", elinewidth=1, capsize=3, zorder=3
            )
            for bar, height, up in zip(bars, heights, upper):
                ax.annotate(
                    f"{height * 100:.0f}%",
                    (bar.get_x() + bar.get_width() / 2, height + up),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    color="#424a53",
                )
        ax.set_xticks(positions, [title for title, _ in groups])
        _percent_axis(ax, 1.08)
        ax.set_ylabel("accuracy")
        ax.set_title("Accuracy per attack", loc="left")
        _legend(ax, len(roles))
        return _png(figure)


#: Line colours of the size plot: clean accuracy, then one per attack.
METRIC_COLOURS = ["#1f2328", "#3b6fb6", "#e07b39", "#2e9e6a", "#8e5ac8", "#c6454f", "#b8a21c", "#1aa3b5", "#7a7a7a"]


def accuracy_vs_size(size: Size | None) -> bytes | None:
    """Accuracy against parameters (log x axis): one line per metric (clean, each attack's robust accuracy), a point
    per model, the teacher a star; each model's role is written above its points."""
    import matplotlib
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    if size is None or len(size.models) < 2 or not size.columns:
        return None
    xs = {m.role: float(m.parameters.value or 0) for m in size.models}
    if min(xs.values()) <= 0:
        return None
    with matplotlib.rc_context(_style()):
        figure = _figure(7.2, 4.4)
        ax = figure.add_subplot()
        ax.set_xscale("log")
        top = {role: 0.0 for role in xs}
        colours = iter(METRIC_COLOURS)
        for column in size.columns:
            colour = next(colours, "#57606a")
            points = [(xs[m.role], column.cells[m.role].value, m.role) for m in size.models if m.role in column.cells]
            if not points:
                continue
            label = "clean" if column.kind == "clean" else f"robust: {column.title}"
            ax.plot([p[0] for p in points], [p[1] for p in points], "-", color=colour, linewidth=1.8, label=label,
                    zorder=2)
            for x, y, role in points:
                teacher = role == "teacher"
                ax.plot(x, y, "*" if teacher else "o", color=colour, markersize=13 if teacher else 5.5,
                        markeredgecolor="#1f2328" if teacher else colour, markeredgewidth=0.8, zorder=3)
                top[role] = max(top[role], float(y or 0.0))
        for role, x in xs.items():
            ax.annotate(role, (x, top[role]), xytext=(0, 8), textcoords="offset points", ha="center", va="bottom",
                        fontsize=8, color="#424a53", fontweight="bold" if role == "teacher" else "normal")
        ticks = sorted(set(xs.values()))
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: fmt_size(value)))
        ax.set_xlim(ticks[0] / 1.5, ticks[-1] * 1.5)
        _percent_axis(ax, 1.1)
        ax.set_xlabel("parameters (log scale)")
        ax.set_ylabel("accuracy")
        ax.set_title("Accuracy against size", loc="left")
        handles, _ = ax.get_legend_handles_labels()
        if "teacher" in xs:
            handles.append(Line2D([], [], marker="*", linestyle="none", color="#57606a", markeredgecolor="#1f2328",
                                  markersize=11, label="teacher"))
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=min(len(handles), 4))
        return _png(figure)


def sweep_accuracy_vs_size(curves: dict[str, list[tuple[float, float, list[float] | None]]]) -> bytes | None:
    """A sweep's students: accuracy against parameters (log x axis), a point per student and accuracy column (clean,
    each attack) with its 95% interval as an error bar (``curves`` from robustdistill.reports.sweep_index.size_points)."""
    import matplotlib

    curves = {column: points for column, points in curves.items() if all(x > 0 for x, _, _ in points)}
    if not curves:
        return None
    with matplotlib.rc_context(_style()):
        figure = _figure(7.2, 4.4)
        ax = figure.add_subplot()
        ax.set_xscale("log")
        colours = iter(METRIC_COLOURS)
        for column, points in curves.items():  # a point per student (several may share a size): no lines
            colour = next(colours, "#57606a")
            xs, ys = [x for x, _, _ in points], [y for _, y, _ in points]
            low = [y - ci[0] if ci else 0.0 for _, y, ci in points]
            high = [ci[1] - y if ci else 0.0 for _, y, ci in points]
            ax.errorbar(xs, ys, yerr=[low, high], fmt="o", color=colour, markersize=5.5, capsize=3, linewidth=1.2,
                        label=column, zorder=2)
        _percent_axis(ax, 1.1)
        ax.set_xlabel("student parameters (log scale)")
        ax.set_ylabel("accuracy")
        ax.set_title("Accuracy against size", loc="left")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=min(len(curves), 4))
        return _png(figure)


#: Lowest FPR and TPR on the log axes; zeros are clipped below it so their lines run off the edge.
ROC_FLOOR = 1e-3


def roc_curve(probe: str, kind: str, curves: list[RocCurve]) -> bytes | None:
    """Log-log ROC of one membership-inference probe: solid lines attack each model with its own members, dashed
    ones with the teacher's. Log axes because the low-FPR corner is where an attack is a real threat
    (Carlini et al. 2022) and a linear plot squeezes it into the origin."""
    import matplotlib
    from matplotlib.ticker import FuncFormatter

    if not curves:
        return None
    roles = order_roles(curve.role for curve in curves)
    with matplotlib.rc_context(_style()):
        figure = _figure(6.0, 4.6)
        ax = figure.add_subplot()
        ax.plot([ROC_FLOOR, 1], [ROC_FLOOR, 1], ":", color="#57606a", linewidth=1.2, label="chance")
        for curve in curves:
            auc = f" (AUC {curve.auc:.3f})" if curve.auc is not None else ""
            ax.plot(
                np.maximum(curve.fpr, ROC_FLOOR / 100),
                np.maximum(curve.tpr, ROC_FLOOR / 100),
                "-" if curve.view == "own" else "--",
                color=role_colour(curve.role, roles),
                linewidth=2,
                label=f"{curve.role}, {VIEWS[curve.view]}{auc}",
            )
        percent = FuncFormatter(lambda value, _: f"{value * 100:g}%")  # 0.1%, 1%... as the table's columns
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(percent)
        ax.yaxis.set_major_formatter(percent)
        ax.set_xlim(ROC_FLOOR, 1)
        ax.set_ylim(ROC_FLOOR, 1)
        ax.set_xlabel("false-positive rate (non-members flagged as members)")
        ax.set_ylabel("true-positive rate (members found)")
        ax.set_title(f"Membership inference ROC: {probe}" + (f" ({kind})" if kind != probe else ""), loc="left")
        # Below the diagonal, where ROC curves rarely go; a light frame for where they do.
        ax.legend(loc="lower right", fontsize=9, frameon=True, framealpha=0.85, edgecolor="none")
        return _png(figure)


def _upscale(image: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) -> (size, size', 3) RGB, enlarged by an integer factor with nearest-neighbour."""
    factor = max(1, size // max(1, image.shape[1]))
    image = np.repeat(np.repeat(image, factor, axis=1), factor, axis=2)
    rgb = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image[:3]
    return rgb.transpose(1, 2, 0)


def _strip(cells: list[np.ndarray], borders: list[str], border: int, gap: int) -> np.ndarray:
    """Cells (h, w, 3) side by side, each framed in its border colour, white gaps between."""
    from matplotlib.colors import to_rgb

    h, w = cells[0].shape[:2]
    box_h, box_w = h + 2 * border, w + 2 * border
    strip = np.ones((box_h, len(cells) * (box_w + gap) - gap, 3), dtype=np.float32)
    for i, (cell, colour) in enumerate(zip(cells, borders)):
        x0 = i * (box_w + gap)
        strip[:, x0 : x0 + box_w] = to_rgb(colour)
        strip[border : border + h, x0 + border : x0 + border + w] = cell
    return strip


def examples_grid(examples: Examples, attack: str = "", max_examples: int = 10) -> bytes:
    """A row of clean inputs, then per role its adversarial inputs and the perturbation (adv - clean).

    Titles give the true label over the clean row and ``clean prediction → adversarial prediction`` over the
    adversarial rows, red (and framed red) when the adversarial prediction is wrong. Small images (8x8 digits)
    are enlarged with nearest-neighbour so every pixel stays a visible square. One axes per row keeps this fast.
    """
    import matplotlib

    k = min(max_examples, examples.clean.shape[0])
    roles = examples.roles
    height = examples.clean.shape[2]
    size = height * max(1, -(-64 // height))  # at least 64 px a side, an integer multiple of the original
    border, gap = max(2, size // 24), max(8, size // 6)
    deltas = {role: examples.adv[role][:k] - examples.clean[:k] for role in roles}
    scale = max([float(np.abs(d).max()) for d in deltas.values()] + [1e-6])
    cmap = matplotlib.colormaps["coolwarm"]
    plain = "#d0d7de"

    rows: list[tuple[str, np.ndarray, list[tuple[str, str]]]] = []
    clean = [_upscale(examples.clean[c], size) for c in range(k)]
    rows.append(
        (
            "clean",
            _strip(clean, [plain] * k, border, gap),
            [(f"label {examples.class_name(examples.labels[c])}", RIGHT) for c in range(k)],
        )
    )
    for role in roles:
        titles, frames = [], []
        adv, before = examples.pred_adv.get(role), examples.pred_clean.get(role)
        for c in range(k):
            if adv is None:
                titles.append(("", RIGHT))
                frames.append(plain)
                continue
            wrong = bool(examples.labels[c] >= 0 and adv[c] != examples.labels[c])
            text = (f"{examples.class_name(before[c])} → " if before is not None else "pred ") + examples.class_name(
                adv[c]
            )
            titles.append((text, WRONG if wrong else RIGHT))
            frames.append(WRONG if wrong else plain)
        cells = [_upscale(examples.adv[role][c], size) for c in range(k)]
        rows.append((f"{role}\nadversarial", _strip(cells, frames, border, gap), titles))
        delta = deltas[role].mean(axis=1, keepdims=True)  # (k, 1, H, W): signed change, averaged over channels
        coloured = cmap(np.clip(delta[:, 0] / (2 * scale) + 0.5, 0, 1))[..., :3].transpose(0, 3, 1, 2)
        cells = [_upscale(coloured[c], size) for c in range(k)]
        rows.append((f"{role}\nperturbation", _strip(cells, [plain] * k, border, gap), [("", RIGHT)] * k))

    box = size + 2 * border
    with matplotlib.rc_context({**_style(), "axes.grid": False}):
        figure = _figure(0.95 * k + 1.3, 1.2 * len(rows) + 0.4)
        axes = figure.subplots(len(rows), 1, squeeze=False)[:, 0]
        for ax, (label, strip, titles) in zip(axes, rows):
            ax.imshow(strip, interpolation="nearest")
            ax.set_axis_off()
            ax.text(-gap, box / 2, label, ha="right", va="center", fontsize=9, fontweight="bold")
            for c, (text, colour) in enumerate(titles):
                if text:
                    ax.text(
                        c * (box + gap) + box / 2,
                        -border,
                        text,
                        ha="center",
                        va="bottom",
                        fontsize=9,
                        color=colour,
                        fontweight="bold" if colour == WRONG else "normal",
                    )
        figure.subplots_adjust(hspace=0.35)
        figure.suptitle(
            f"Clean and adversarial examples, {attack or examples.attack}; perturbation colour scale ±{scale:.3g}",
            x=0.02,
            ha="left",
            fontsize=12,
            fontweight="bold",
        )
        return _png(figure)


def bias_defence_bars(report: Report) -> bytes | None:
    """Grouped bars of the lm-bias section: per bias type (x), one bar per defence, the fraction of that bias's
    poisoned training examples it catches (TPR) with its 95% interval; the legend gives each defence's achieved
    false-positive rate on the clean examples, since a catch rate means little without it."""
    import matplotlib

    # Lazy: the section module owns how the probe's rows are read; importing it at the top would load every section.
    from robustdistill.reports.sections.bias import defence_groups, fpr_text, report_bias

    groups = defence_groups(report_bias(report))
    if not groups:
        return None
    defences = list(dict.fromkeys(defence for _, cells in groups for defence in cells))
    width = 0.8 / len(defences)
    with matplotlib.rc_context(_style()):
        figure = _figure(max(7.2, 1.1 * len(groups) * max(1, len(defences)) ** 0.5 + 2.5), 4.0)
        ax = figure.add_subplot()
        ax.grid(axis="x", visible=False)
        for i, defence in enumerate(defences):
            rows = [(position, cells[defence]) for position, (_, cells) in enumerate(groups)
                    if defence in cells and cells[defence].value is not None]
            if not rows:
                continue
            fprs = list(dict.fromkeys(fpr_text(row) for _, row in rows))
            xs = [position - 0.4 + width * (i + 0.5) for position, _ in rows]
            heights = [row.value for _, row in rows]
            lower = [max(0.0, row.value - row.ci95[0]) if row.ci95 else 0.0 for _, row in rows]
            upper = [max(0.0, row.ci95[1] - row.value) if row.ci95 else 0.0 for _, row in rows]
            label = f"{defence} (FPR {', '.join(fprs)})"
            ax.bar(xs, heights, width * 0.92, color=OTHER_COLOURS[i % len(OTHER_COLOURS)], label=label, zorder=2)
            ax.errorbar(xs, heights, yerr=[lower, upper], fmt="none", ecolor="#24292f", elinewidth=1, capsize=3,
                        zorder=3)
            for x, height, up in zip(xs, heights, upper):
                ax.annotate(f"{height * 100:.0f}%", (x, height + up),
                            xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7,
                            color="#424a53")
        ax.set_xticks(range(len(groups)), [label for label, _ in groups])
        _percent_axis(ax, 1.08)
        ax.set_ylabel("poisoned examples caught (TPR)")
        ax.set_title("Defences' catch rates on the poisoned training data", loc="left")
        # Below the plot whatever the count: the labels carry their FPRs, too long to sit beside the title.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=min(len(defences), 3))
        return _png(figure)
