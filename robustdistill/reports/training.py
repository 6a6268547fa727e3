"""The training report ``robustdistill train`` writes next to a checkpoint: per-epoch curves from its provenance.

``<out>.training.png`` and a self-contained ``<out>.training.html`` (outside the checkpoint directory, so the
checkpoint's sha256 stays the one of its weights and config). The page has the audit reports' look and number
formats (:mod:`robustdistill.reports.html_page`, :func:`robustdistill.reports.records.fmt_value`): the selected
epoch and its val accuracy, the curves (:mod:`robustdistill.reports.training_plot`), a table per epoch and the
recipe.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

from robustdistill.errors import UserInputError
from robustdistill.reports.html_page import _figure, _section, esc, html_table, page
from robustdistill.reports.records import fmt_param, fmt_value, humanise, to_float
from robustdistill.reports.training_plot import SUBNETS, extra_series, series_name, training_png

__all__ = ["check_training_report", "extra_series", "report_paths", "training_page", "write_training_report"]

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


# Table headers as (line 1, line 2): two short lines keep a wide history (MTARD's, ProARD's) within the page.
COLUMN_NAMES = {"epoch": ("Epoch", ""), "lr": ("Learning", "rate"), "train_loss": ("Train", "loss"),
                "train_accuracy": ("Train", "accuracy"), "val_clean_accuracy": ("Val", "clean"),
                "stage": ("Stage", ""), "stage_epoch": ("Epoch", "of stage")}
SELECTION = {"clean": "clean accuracy", "robust": "robust accuracy", "mean": "the mean of clean and robust accuracy"}


def write_training_report(checkpoint: str | Path) -> list[Path]:
    """Write ``<checkpoint>.training.png`` and ``.training.html`` from the checkpoint's provenance; a file of the
    same name that robustdistill did not write is never replaced."""
    from robustdistill.reports.render import _write_bytes, _write_text

    checkpoint = Path(checkpoint)
    check_training_report(checkpoint)
    provenance = json.loads((checkpoint / "config.json").read_text()).get("provenance") or {}
    png = training_png(provenance, f"{robust_name(provenance)} (val)")
    png_path, html_path = report_paths(checkpoint)
    _write_bytes(png_path, png)
    _write_text(html_path, training_page(checkpoint, provenance, png))
    return [png_path, html_path]


def robust_name(provenance: dict[str, Any]) -> str:
    """The val attack as the curves and the table name it: ``PGD-10``."""
    steps = ((provenance.get("recipe") or {}).get("config") or {}).get("val_attack_steps")
    return f"PGD-{steps}" if isinstance(steps, int) else "PGD"


def training_page(checkpoint: Path, provenance: dict[str, Any], png: bytes) -> str:
    """The HTML page around the curves ``png``: a header, the selected epoch, the curves, every epoch, the recipe."""
    recipe = provenance.get("recipe") or {}
    method = str(recipe.get("method", "training"))
    history = provenance.get("history") or []
    parts = [  # the audit report's layout: header, sections, footer
        f'<header><p class="eyebrow">robustdistill training report · {esc(method)}</p><h1>{esc(checkpoint.name)}</h1>'
        f'<p class="sub">{esc(_subtitle(method, provenance))}</p>'
        '<nav><a href="#selected">Selected epoch</a><a href="#curves">Curves</a><a href="#epochs">Per epoch</a>'
        '<a href="#recipe">Recipe</a></nav></header>',
        _section("selected", "Selected epoch", _selection(checkpoint, provenance)),
        _section("curves", "Curves", _figure(png, "training curves", _caption(provenance), "No epochs recorded.")),
        _section("epochs", "Per epoch", _epoch_table(provenance) if history else '<p class="note">No epochs recorded.</p>'),
        _section("recipe", "Recipe", "<details><summary>The recipe as trained (every setting, defaults included)"
                 f"</summary><pre>{esc(json.dumps(recipe, indent=2))}</pre></details>"),
        f"<footer>robustdistill{(' ' + esc(provenance['robustdistill'])) if provenance.get('robustdistill') else ''}"
        f" · rendered {esc(dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC'))}</footer>",
    ]
    html = page(f"{checkpoint.name} ({method}) — robustdistill training report", "\n".join(parts))
    # The generator tag marks the page as ours (see _ours): in <head>, which page() does not take content for.
    tagged = html.replace("</title>", f"</title>\n{GENERATOR}", 1)
    if GENERATOR not in tagged:
        raise RuntimeError("html_page.page() wrote no <title>: the training report would not be recognised as ours")
    return tagged


def _subtitle(method: str, provenance: dict[str, Any]) -> str:
    config = (provenance.get("recipe") or {}).get("config") or {}
    data = provenance.get("data") or {}
    kind = (data.get("spec") or {}).get("kind", "data")
    n = data.get("n_trained_on")
    points = f" ({n:,} points)" if isinstance(n, int) else ""
    epochs = len(provenance.get("history") or [])
    created = _when(provenance.get("created"))
    return (f"{method} training of {config.get('arch', 'a model')} on {kind}{points}, {epochs} epoch"
            f"{'s' if epochs != 1 else ''}" + (f" · {created}" if created else ""))


def _when(stamp: Any) -> str:
    """``2026-12-01 02:08 UTC`` from provenance's ISO time stamp (as the reports' footers write times)."""
    try:
        return dt.datetime.fromisoformat(str(stamp)).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return str(stamp or "")


def _selection(checkpoint: Path, provenance: dict[str, Any]) -> str:
    selection = provenance.get("selection") or {}
    history = provenance.get("history") or []
    best = selection.get("best_epoch")
    metric = str(selection.get("metric"))
    record = next((r for r in history if r.get("epoch") == best), None)
    where = f"<p>Checkpoint: <code>{esc(checkpoint)}</code></p>"
    if record is None:
        return f'<p class="note">No epoch was selected.</p>{where}'
    how = ("the last epoch, kept without selection" if metric == "last"
           else f"the best {esc(selection.get('split', 'val'))} {esc(SELECTION.get(metric, metric))}")
    values = [f"{esc(_val_name(key, provenance))} <strong>{esc(fmt_value(record[key], key))}</strong>"
              for key in record if key.startswith("val_") and to_float(record[key]) is not None]
    return (f"<p>Epoch <strong>{esc(best)}</strong> of {len(history)}, {how}."
            + (f" On val: {', '.join(values)}." if values else "") + f"</p>{where}")


def _val_name(key: str, provenance: dict[str, Any]) -> str:
    """``PGD-10 accuracy`` for ``val_robust_accuracy`` (in a sentence that already says "on val")."""
    if key == "val_robust_accuracy":
        return f"{robust_name(provenance)} accuracy"
    if key == "val_clean_accuracy":
        return "clean accuracy"
    name = series_name(key.removeprefix("val_"))
    return name[:1].lower() + name[1:]


def _caption(provenance: dict[str, Any]) -> str:
    config = (provenance.get("recipe") or {}).get("config") or {}
    eps, norm = to_float(config.get("eps")), config.get("norm", "linf")
    attack = (f"{robust_name(provenance)}: {config.get('val_attack_steps')}-step PGD at eps {eps:.4g} ({norm}) on "
              "every val point." if eps else "")
    return f"Loss and accuracy per epoch; the dotted line marks the selected epoch. {attack}".strip()


def _column_name(key: str, provenance: dict[str, Any]) -> tuple[str, str]:
    if key == "val_robust_accuracy":
        return "Val", robust_name(provenance)
    if key in COLUMN_NAMES:
        return COLUMN_NAMES[key]
    head, _, tail = key.rpartition("_")
    if tail in SUBNETS:  # ProARD: val_clean_accuracy_smallest -> "Val clean", "smallest"
        return humanise(head.removesuffix("_accuracy")), tail
    name, _, detail = series_name(key).partition(" · ")
    return name, detail


def _cell(key: str, value: Any) -> str:
    """The audit reports' formats: accuracies as ``93.3%``, other numbers with three decimals, settings (the
    learning rate) as written."""
    if key == "lr":
        return esc(fmt_param(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return esc(value)
    return esc(fmt_value(value, key))


def _epoch_table(provenance: dict[str, Any]) -> str:
    history = provenance.get("history") or []
    best = (provenance.get("selection") or {}).get("best_epoch")
    keys = list(dict.fromkeys(key for record in history for key in record))
    rows = []
    for record in history:
        cells = [_cell(key, record[key]) if key in record else "—" for key in keys]
        if record.get("epoch") == best:
            cells[keys.index("epoch")] += ' <span class="pill pass">selected</span>'
        rows.append(cells)
    numeric = [i for i, key in enumerate(keys) if key != "stage"]
    header = ["<br>".join(esc(line) for line in _column_name(key, provenance) if line) for key in keys]
    return html_table(header, rows, numeric=numeric, css="compact")
