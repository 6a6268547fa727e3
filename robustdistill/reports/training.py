"""The training report ``robustdistill train`` writes next to a checkpoint: per-epoch curves from its provenance.

``<out>.training.png`` and a self-contained ``<out>.training.html`` (outside the checkpoint directory, so the
checkpoint's sha256 stays the one of its weights and config). Panels: the training loss; clean and PGD accuracy on
val with the selected epoch marked; and any method-specific series the trainer recorded per epoch (MTARD's teacher
weights ``w_*``, B-MTARD's temperatures ``tau_*``).
"""

from __future__ import annotations

import base64
import html
import itertools
import json
from pathlib import Path
from typing import Any

from robustdistill.errors import UserInputError
from robustdistill.reports import plots

STANDARD = {"epoch", "lr", "train_loss", "train_accuracy", "val_clean_accuracy", "val_robust_accuracy",
            "stage", "stage_epoch"}  # ProARD's stage is drawn as boundaries, not as a series
SUBNETS = ("smallest", "largest")  # ProARD validates these sub-networks: one panel per metric, a line each


def extra_series(history: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Method-specific per-epoch numbers (everything but the standard keys), by name."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in history:
        for key, value in record.items():
            if key not in STANDARD and isinstance(value, (int, float)):
                series.setdefault(key, []).append((int(record["epoch"]), float(value)))
    return series


def training_figure(provenance: dict[str, Any], title: str) -> bytes:
    history = provenance.get("history") or []
    best = (provenance.get("selection") or {}).get("best_epoch")
    extras = extra_series(history)
    groups = {}  # one panel per family: w_* together, tau_* together, a metric over sub-networks together, the rest alone
    for key in extras:
        head, _, tail = key.rpartition("_")
        family = key.split("_")[0] if key.split("_")[0] in ("w", "tau") else head if tail in SUBNETS else key
        groups.setdefault(family, []).append(key)
    # Epochs after which a new stage begins (ProARD's progressive stages).
    stages = [int(r["epoch"]) for previous, r in itertools.pairwise(history) if r.get("stage") != previous.get("stage")]
    panels = 2 + len(groups)
    from matplotlib import rc_context

    with rc_context(plots._style()):
        figure = plots._figure(4.2 * min(panels, 3), 3.2 * ((panels + 2) // 3))
        epochs = [int(r["epoch"]) for r in history]
        ax = figure.add_subplot((panels + 2) // 3, min(panels, 3), 1)
        ax.plot(epochs, [r.get("train_loss") for r in history], color="#57606a")
        ax.set(title="training loss", xlabel="epoch")
        ax = figure.add_subplot((panels + 2) // 3, min(panels, 3), 2)
        for key, label, colour in (("val_clean_accuracy", "clean (val)", "#3b6fb6"),
                                   ("val_robust_accuracy", "PGD (val)", "#e07b39")):
            if any(key in r for r in history):
                ax.plot(epochs, [r.get(key) for r in history], label=label, color=colour)
        for i, start in enumerate(stages):
            ax.axvline(start - 0.5, color="#8c959f", linewidth=0.8, label="new stage" if i == 0 else None)
        if best:
            ax.axvline(best, color="#2e9e6a", linestyle=":", label=f"selected (epoch {best})")
        ax.set(title="validation accuracy", xlabel="epoch", ylim=(0, 1.02))
        ax.legend(loc="lower right")
        for i, (family, keys) in enumerate(groups.items()):
            ax = figure.add_subplot((panels + 2) // 3, min(panels, 3), 3 + i)
            for key in keys:
                points = extras[key]
                tail = key.rpartition("_")[2]
                ax.plot([p[0] for p in points], [p[1] for p in points], label=f"{tail} of the stage" if tail in SUBNETS else key)
            name = {"w": "teacher weights", "tau": "teacher temperatures"}.get(family, family)
            if all(key.rpartition("_")[2] in SUBNETS for key in keys):
                name = f"{family.removeprefix('val_').replace('_', ' ')} (val) by sub-network"
            ax.set(title=name, xlabel="epoch")
            ax.legend(loc="best")
        figure.suptitle(title, fontweight="bold")
        figure.tight_layout()
        return plots._png(figure)


GENERATOR = '<meta name="generator" content="robustdistill training report">'
# What an earlier version's training report (no generator tag) always holds.
LEGACY_SIGNATURE = '<img alt="training curves" src="data:image/png;base64,'


def report_paths(checkpoint: str | Path) -> tuple[Path, Path]:
    """(``<checkpoint>.training.png``, ``<checkpoint>.training.html``)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + ".training.png"), checkpoint.with_name(checkpoint.name + ".training.html")


def _ours(png_path: Path, html_path: Path) -> tuple[bool, bool]:
    """Whether the existing .training.png / .training.html are robustdistill's: the page carries our generator tag
    (or an earlier version's signature), and the PNG is the very image that page embeds."""
    try:
        page = html_path.read_text(encoding="utf-8") if html_path.is_file() and not html_path.is_symlink() else ""
    except (OSError, UnicodeDecodeError):
        page = ""
    html_ours = GENERATOR in page or LEGACY_SIGNATURE in page
    png_ours = False
    if html_ours and png_path.is_file() and not png_path.is_symlink():
        png_ours = f"data:image/png;base64,{base64.b64encode(png_path.read_bytes()).decode()}\"" in page
    return png_ours, html_ours


def check_training_report(checkpoint: str | Path) -> None:
    """Before training: refuse when ``<checkpoint>.training.png`` or ``.html`` exists and robustdistill did not
    write it (the report would overwrite a user's file)."""
    from robustdistill import ownership

    paths = report_paths(checkpoint)
    for path, ours in zip(paths, _ours(*paths), strict=True):
        ownership.check_location(path, "out")
        if (path.exists() or path.is_symlink()) and not ours:
            raise UserInputError("out", f"{path} exists and was not written by robustdistill (the training report "
                                 "goes there)", "move it away, or choose another --out")


def write_training_report(checkpoint: str | Path) -> list[Path]:
    """Write ``<checkpoint>.training.png`` and ``.training.html`` from the checkpoint's provenance; a file of the
    same name that robustdistill did not write is never replaced."""
    from robustdistill.reports.render import _write_bytes, _write_text

    checkpoint = Path(checkpoint)
    check_training_report(checkpoint)
    provenance = json.loads((checkpoint / "config.json").read_text()).get("provenance") or {}
    recipe = provenance.get("recipe") or {}
    title = f"{recipe.get('method', 'training')}: {checkpoint.name}"
    png = training_figure(provenance, title)
    png_path, html_path = report_paths(checkpoint)
    _write_bytes(png_path, png)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(f'{v:.4g}' if isinstance(v, float) else str(v))}</td>" for v in r.values())
        + "</tr>" for r in provenance.get("history") or [])
    header = "".join(f"<th>{html.escape(k)}</th>" for k in ((provenance.get("history") or [{}])[0]))
    selection = provenance.get("selection") or {}
    _write_text(html_path, f"""<!doctype html><html><head><meta charset="utf-8">{GENERATOR}<title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#1f2328}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border-bottom:1px solid #d0d7de;padding:3px 8px;text-align:right}}img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Selected epoch {html.escape(str(selection.get('best_epoch')))} on the {html.escape(str(selection.get('split', 'val')))}
split by {html.escape(str(selection.get('metric')))} accuracy. Checkpoint: <code>{html.escape(str(checkpoint))}</code>.</p>
<img alt="training curves" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<h2>Per epoch</h2><table><tr>{header}</tr>{rows}</table>
<details><summary>Recipe</summary><pre>{html.escape(json.dumps(recipe, indent=2))}</pre></details>
</body></html>
""")
    return [png_path, html_path]
