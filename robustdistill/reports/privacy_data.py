"""The privacy (membership-inference) section's data: its constants and introduction, the table rows
(:class:`PrivacyRow`), the ROC curves read from artifacts/roc-<probe>-<role>.npz (:class:`RocCurve`) and
:func:`load_privacy`, which gathers them in :class:`Privacy`. A missing or unreadable ROC file costs its lines
(with a note), never the report.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from robustdistill.reports.examples import inside_run
from robustdistill.reports.records import Row, order_roles, to_float

if TYPE_CHECKING:
    from robustdistill.reports.data import Report

log = logging.getLogger(__name__)

#: Probe kinds whose rows form the membership-inference (privacy) section.
MIA_KINDS = frozenset({"mia-loss", "mia-confidence", "mia-lira"})
#: Metrics of the privacy table, with their column titles (the line breaks are for the narrow HTML columns).
MIA_METRICS = {
    "auc": "AUC",
    "balanced_accuracy": "Balanced\naccuracy",
    "tpr_at_0_1pct_fpr": "TPR @\n0.1% FPR",
    "tpr_at_1pct_fpr": "TPR @\n1% FPR",
}
#: A non-teacher model attacked with the teacher's members: the same metrics under this prefix.
TEACHER_MEMBERS = "teacher_members_"
VIEWS = {"own": "own members", "teacher": "teacher's members"}
#: Plot key of a membership-inference probe's ROC: ROC_KEY + probe name.
ROC_KEY = "roc:"
PRIVACY_INTRO = (
    "Membership inference asks whether someone who can query a model can tell if a given example was in its "
    "training set; any success beyond guessing leaks private training data. Each attack scores known members and "
    "non-members, and the table shows how well that score separates them. AUC and balanced accuracy average over "
    "all thresholds: an AUC near 0.5 means no measurable leakage. The true-positive rate at a low false-positive "
    "rate matters most: an attack that confidently picks out even a few members is a real breach although its "
    "average-case numbers look harmless (Carlini et al. 2022, “Membership Inference Attacks From First "
    "Principles”, which introduced LiRA). Rows on the teacher's members attack the student (and any other model) "
    "with the teacher's training examples: leakage there means distillation passed the teacher's membership "
    "signal on."
)


@dataclass
class PrivacyRow:
    probe: str
    kind: str
    view: str  # a key of VIEWS
    cells: dict[str, dict[str, Row]]  # role -> metric (unprefixed) -> row

    def title(self) -> str:
        return self.probe if self.probe == self.kind else f"{self.probe} ({self.kind})"

    def sizes(self) -> str:
        """``members / non-members``; per role when the roles were attacked with sets of different sizes."""
        found: dict[str, str] = {}
        for role, metrics in self.cells.items():
            for row in metrics.values():
                members, others = to_float(row.params.get("n_members")), to_float(row.params.get("n_nonmembers"))
                if members is not None and others is not None:
                    found[role] = f"{int(members)} / {int(others)}"
                    break
        if len(set(found.values())) == 1:
            return next(iter(found.values()))
        return " · ".join(f"{role} {found[role]}" for role in order_roles(found)) or "—"


# --- artifacts/roc-<probe>-<role>.npz --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RocCurve:
    role: str
    view: str  # a key of VIEWS
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float | None  # from report.json, so the legend and the table agree


@dataclass
class Privacy:
    """Everything the privacy section shows: the table, and per probe its ROC curves and notes on missing ones."""

    roles: list[str]
    rows: list[PrivacyRow]
    curves: dict[str, list[RocCurve]]
    notes: dict[str, list[str]]

    @property
    def probes(self) -> list[str]:
        return list(dict.fromkeys(row.probe for row in self.rows))

    def footnote(self, row: Row) -> int | None:
        """The 1-based number of an unresolvable row's note among :meth:`footnotes`."""
        notes = self.footnotes()
        return notes.index(row.note) + 1 if row.unresolvable and row.note in notes else None

    def footnotes(self) -> list[str]:
        """The distinct notes of the unresolvable cells, numbered by position (1-based) in the tables."""
        notes = [
            row.note
            for entry in self.rows
            for metrics in entry.cells.values()
            for row in metrics.values()
            if row.unresolvable and row.note
        ]
        return list(dict.fromkeys(notes))


def _curve(arrays: Mapping[str, np.ndarray], view: str) -> tuple[np.ndarray, np.ndarray] | None:
    fpr, tpr = arrays.get(f"fpr_{view}"), arrays.get(f"tpr_{view}")
    if fpr is None or tpr is None:
        return None
    fpr, tpr = np.asarray(fpr, dtype=float).reshape(-1), np.asarray(tpr, dtype=float).reshape(-1)
    keep = np.isfinite(fpr) & np.isfinite(tpr) if fpr.shape == tpr.shape else np.zeros(0, dtype=bool)
    if keep.sum() < 2:
        return None
    order = np.lexsort((tpr[keep], fpr[keep]))
    return np.clip(fpr[keep][order], 0.0, 1.0), np.clip(tpr[keep][order], 0.0, 1.0)


def load_privacy(report: Report, run_dir: Path) -> Privacy | None:
    """The privacy section's content, or None when the run has no membership-inference rows. A missing or
    unreadable ROC file costs its lines (with a note), never the report."""
    roles, rows = report.privacy()
    if not rows:
        return None
    curves: dict[str, list[RocCurve]] = {}
    notes: dict[str, list[str]] = {}
    for probe in dict.fromkeys(row.probe for row in rows):
        views = {(role, row.view): row.cells[role] for row in rows if row.probe == probe for role in row.cells}
        curves[probe], notes[probe] = [], []
        for role in order_roles(role for role, _ in views):
            name = f"artifacts/roc-{probe}-{role}.npz"
            path = run_dir / name
            if not path.is_file():
                notes[probe].append(f"no ROC curve for {role}: {name} is missing")
                continue
            if not inside_run(path, run_dir):
                notes[probe].append(f"no ROC curve for {role}: {name} leads outside the run directory: not read")
                continue
            try:
                with np.load(path, allow_pickle=False) as npz:
                    arrays = {key: npz[key] for key in npz.files}
            except Exception as error:  # noqa: BLE001 - any unreadable file is a note, not an error
                log.warning("cannot read %s: %s", path, error)
                notes[probe].append(f"no ROC curve for {role}: {name} could not be read ({type(error).__name__})")
                continue
            for view in VIEWS:
                if (role, view) not in views:
                    continue
                curve = _curve(arrays, view)
                if curve is None:
                    notes[probe].append(f"no ROC curve for {role} ({VIEWS[view]}): {name} has no usable "
                                        f"fpr_{view} / tpr_{view} arrays")
                    continue
                auc = views[(role, view)].get("auc")
                curves[probe].append(RocCurve(role, view, *curve, auc.value if auc is not None else None))
    return Privacy(roles, rows, curves, notes)
