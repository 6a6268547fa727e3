"""The generation section's plot: per generation-quality probe, the models' class-conditional sample grids side
by side (rows are classes), each sample framed red where the probe's classifier read another class. PNG bytes
only, drawn like every plot of robustdistill.reports.plots."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from robustdistill.reports.plots import RIGHT, WRONG, _figure, _png, _strip, _style, _upscale

#: Samples shown per class (row) of a grid.
COLUMNS = 8


def _panel(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, classes: Sequence[int], size: int,
           border: int, gap: int) -> np.ndarray:
    """One model's grid: a strip per class, its first COLUMNS samples, white gaps between the strips."""
    strips = []
    for label in classes:
        chosen = np.flatnonzero(labels == label)[:COLUMNS]
        cells = [_upscale(images[i], size) for i in chosen]
        frames = [WRONG if predicted[i] != label else "#d0d7de" for i in chosen]
        while len(cells) < COLUMNS:  # a class with fewer samples keeps the grid rectangular
            cells.append(np.ones_like(cells[0]) if cells else np.ones((size, size, 3), dtype=np.float32))
            frames.append("#ffffff")
        strips.append(_strip(cells, frames, border, gap))
    rows = []
    for strip in strips:
        rows += [strip, np.ones((gap, strip.shape[1], 3), dtype=np.float32)]
    return np.concatenate(rows[:-1])


def sample_grids(panels: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], title: str,
                 row_names: dict[int, str] | None = None) -> bytes | None:
    """``panels``: (heading, images (n, C, H, W) in [0, 1], labels asked for, labels the classifier read) per
    model, in the order shown left to right; ``row_names``: a label's row heading other than its number."""
    import matplotlib

    panels = [p for p in panels if len(p[2])]
    if not panels:
        return None
    classes = sorted({int(c) for _, _, labels, _ in panels for c in labels})
    height = panels[0][1].shape[2]
    size = height * max(1, -(-32 // height))  # 32 px a side at least, an integer multiple of the original
    border, gap = max(1, size // 16), max(3, size // 8)
    grids = [_panel(images, labels, predicted, classes, size, border, gap) for _, images, labels, predicted in panels]
    box = size + 2 * border
    with matplotlib.rc_context({**_style(), "axes.grid": False}):
        figure = _figure(3.4 * len(panels) + 0.6, 0.36 * len(classes) + 1.0)
        axes = figure.subplots(1, len(panels), squeeze=False)[0]
        for index, (ax, grid, (heading, *_)) in enumerate(zip(axes, grids, panels)):
            ax.imshow(grid, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(heading, loc="left", fontsize=10, fontweight="bold", color=RIGHT)
            if index == 0:
                for row, label in enumerate(classes):
                    ax.text(-gap, row * (box + gap) + box / 2, (row_names or {}).get(label, str(label)), ha="right",
                            va="center", fontsize=8)
        figure.subplots_adjust(wspace=0.06)
        figure.suptitle(title, x=0.02, ha="left", fontsize=12, fontweight="bold")
        return _png(figure)


def auc_by_timestep(curves: dict) -> bytes | None:
    """The loss attack's AUC (with its 95% band) against the timestep t, a line per model: where in the diffusion
    process the model gives its training images away. ``curves``: role -> [(t, Row)] sorted by t."""
    import matplotlib

    from robustdistill.reports.plots import role_colour

    if not curves:
        return None
    roles = list(curves)
    with matplotlib.rc_context(_style()):
        figure = _figure(6.0, 4.0)
        ax = figure.add_subplot()
        ax.axhline(0.5, linestyle="--", color="#57606a", linewidth=1.2, label="chance")
        for role, points in curves.items():
            ts = np.array([t for t, _ in points], dtype=float)
            aucs = np.array([row.value for _, row in points], dtype=float)
            colour = role_colour(role, roles)
            ax.plot(ts, aucs, "o-", color=colour, linewidth=2, markersize=4, label=role)
            bands = [row.ci95 for _, row in points]
            if all(band is not None for band in bands):
                ax.fill_between(ts, [b[0] for b in bands], [b[1] for b in bands], color=colour, alpha=0.15,
                                linewidth=0)
        ax.set_xlabel("timestep t of the loss attack")
        ax.set_ylabel("AUC (members vs non-members)")
        ax.set_ylim(0.0, 1.0)
        ax.set_title("Membership inference by timestep", loc="left")
        ax.legend(loc="lower right", fontsize=9, frameon=True, framealpha=0.85, edgecolor="none")
        return _png(figure)
