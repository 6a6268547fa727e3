"""Reading a finished run for rendering: report.json (DESIGN.md, "report.json"), artifacts/examples.npz and the
membership-inference ROC curves artifacts/roc-<probe>-<role>.npz.

Reading is tolerant on purpose: a row the renderer does not understand is still shown in the full results
table, never a reason to fail. Only a missing or unparseable report.json is an error (a :class:`UserInputError`).

The pieces live in their own modules: rows, gates, verdict, flags and formatting in
:mod:`robustdistill.reports.records`, the privacy section in :mod:`robustdistill.reports.privacy_data`, the size
section in :mod:`robustdistill.reports.size_data` and examples.npz in :mod:`robustdistill.reports.examples`. This
module keeps :class:`Report`, the view over report.json (rows, the teacher-vs-student comparison, the verdict,
and the privacy and size tables), and :class:`ComparisonRow`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from robustdistill.errors import UserInputError
from robustdistill.reports.privacy_data import MIA_KINDS, MIA_METRICS, TEACHER_MEMBERS, PrivacyRow
from robustdistill.reports.records import (  # fmt_ci, fmt_size, fmt_value: imported from here by tests
    COUNT_METRICS,
    LEGACY_VERDICT,
    SPECIAL_PROBES,
    Flag,
    Gate,
    Row,
    Verdict,
    fmt_ci,
    fmt_params,
    fmt_size,
    fmt_value,
    humanise,
    order_roles,
    role_sort_key,
    to_float,
)
from robustdistill.reports.size_data import SIZE_KINDS, Size, SizeColumn, SizeModel
from robustdistill.reports.status import reduced_labels, with_reduced

__all__ = ["ComparisonRow", "Report", "fmt_ci", "fmt_size", "fmt_value"]


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass
class Report:
    """report.json, read tolerantly."""

    suite: dict[str, Any]
    manifest: dict[str, Any]
    rows: list[Row]
    gates: list[Gate]
    flags: list[Flag]
    raw: dict[str, Any]
    stored_verdict: Verdict | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Report:
        def mapping(key: str) -> dict[str, Any]:
            value = raw.get(key)
            return dict(value) if isinstance(value, Mapping) else {}

        def items(key: str) -> list[Any]:
            value = raw.get(key)
            return list(value) if isinstance(value, list | tuple) else []

        return cls(
            suite=mapping("suite"),
            manifest=mapping("manifest"),
            rows=[Row.parse(r) for r in items("results")],
            gates=[Gate.parse(g) for g in items("gates")],
            flags=[Flag.parse(f) for f in items("flags")],
            raw=dict(raw),
            stored_verdict=Verdict.parse(raw.get("verdict")),
        )

    @classmethod
    def load(cls, path: Path) -> Report:
        if not path.is_file():
            raise UserInputError(
                "run_dir",
                f"no report.json in {path.parent}",
                "run `robustdistill audit` first, or point at a run directory",
            )
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserInputError(
                "report.json", f"{path} cannot be read as JSON ({error})", "re-run the audit to rewrite it"
            ) from None
        if not isinstance(raw, Mapping):
            raise UserInputError(
                "report.json", f"{path} holds a {type(raw).__name__}, not an object", "re-run the audit to rewrite it"
            )
        return cls.from_dict(raw)

    # --- summaries ----------------------------------------------------------------------------------------
    @property
    def suite_name(self) -> str:
        return str(self.suite.get("name") or "audit")

    def checkpoint_names(self) -> dict[str, str]:
        """Role -> the file or folder name of its checkpoint (``checkpoints/demo/kd-student`` -> ``kd-student``)."""
        names = {}
        for role, info in self.checkpoints.items():
            path = str(info.get("path") or "").rstrip("/\\")
            if path:
                names[role] = path.replace("\\", "/").rsplit("/", 1)[-1]
        return names

    @property
    def pipeline(self) -> str:
        """Which models the report audits, for its title: ``clean-teacher → kd-student`` (any other roles after
        them), or "" when the manifest names no checkpoints."""
        names = self.checkpoint_names()
        pair = [names.pop("teacher") + " → " + names.pop("student")] if {"teacher", "student"} <= set(names) else []
        return ", ".join(pair + [names[role] for role in order_roles(names)])

    @property
    def title(self) -> str:
        """The pipeline, else the suite name: every demo report has the suite name "demo", which tells them apart
        from nothing."""
        return self.pipeline or self.suite_name

    @cached_property
    def reduced(self) -> dict[str, str]:
        """Attack label (and probe name) -> why it ran reduced (robustdistill.reports.status.reduced_attack)."""
        return reduced_labels(self.rows)

    def display_label(self, label: str) -> str:
        """An attack's label as every report prints it: ``autoattack (reduced)`` when it ran reduced."""
        return with_reduced(label, self.reduced)

    @property
    def passed(self) -> bool | None:
        """The stored verdict's ``passed``. For a report.json without one (older files), derived the old way from the
        gates: False when any gate failed; True when every gate passed; None when there are no gates or some could
        not be decided (a malformed gate never lets a run pass)."""
        if self.stored_verdict is not None:
            return self.stored_verdict.passed
        results = [g.passed for g in self.gates]
        if False in results:
            return False
        if not results or None in results:
            return None
        return True

    @property
    def masked_roles(self) -> list[str]:
        return order_roles(f.model for f in self.flags if f.is_masking)

    @property
    def roles(self) -> list[str]:
        found = [r.model for r in self.rows if r.model != "?"]
        found += list(self.checkpoints)
        return order_roles(found)

    @property
    def checkpoints(self) -> dict[str, dict[str, Any]]:
        value = self.manifest.get("checkpoints")
        if not isinstance(value, Mapping):
            return {}
        return {str(k): (dict(v) if isinstance(v, Mapping) else {"path": str(v)}) for k, v in value.items()}

    def threat_model(self) -> str:
        tm = self.suite.get("threat_model")
        if isinstance(tm, Mapping):
            norm = tm.get("norm")
            eps = to_float(tm.get("eps"))
            parts = [str(norm).replace("linf", "L∞").replace("l2", "L2")] if norm else []
            if eps is not None:
                parts.append(f"ε = {eps:.4g}")
            return ", ".join(parts)
        return str(tm) if tm else ""

    @property
    def attacks_inputs(self) -> bool:
        """Whether any probe perturbs inputs (a privacy-only suite does not, and has no threat model to show)."""
        sections = self.raw.get("sections")
        if isinstance(sections, list) and sections and all(
                isinstance(s, Mapping) and s.get("family", "classifier") != "classifier" for s in sections):
            return False  # language and diffusion models: no pixel-space threat model
        kinds = {str(p.get("kind")) for p in self.suite.get("probes", []) if isinstance(p, Mapping)}
        return not kinds or bool(kinds - {"clean", "retention", "mia-loss", "mia-confidence", "mia-lira", *SIZE_KINDS})

    def threat_model_eps(self) -> float | None:
        tm = self.suite.get("threat_model")
        return to_float(tm.get("eps")) if isinstance(tm, Mapping) else None

    def verdict_text(self) -> str:
        if self.stored_verdict is not None:
            return self.stored_verdict.word
        passed = self.passed
        if passed is None:
            return "UNDECIDED" if self.gates else "NO GATES"
        return "PASS" if passed else "FAIL"

    def verdict_detail(self) -> str:
        if self.stored_verdict is not None:
            return self.stored_verdict.detail
        return f"{self.gate_detail()} {LEGACY_VERDICT}"

    @property
    def verdict_reasons(self) -> tuple[str, ...]:
        """Why the run failed, one sentence each (empty for a pass, or an older report.json)."""
        return self.stored_verdict.reasons if self.stored_verdict is not None else ()

    @property
    def verdict_notes(self) -> tuple[str, ...]:
        """Warnings that did not fail the run (e.g. masking, when the suite opted out of failing on it)."""
        return self.stored_verdict.notes if self.stored_verdict is not None else ()

    def gate_detail(self) -> str:
        decided = [g for g in self.gates if g.passed is not None]
        failed = [g for g in decided if not g.passed]
        undecided = len(self.gates) - len(decided)
        tail = f" ({undecided} could not be decided)" if undecided and decided else ""
        if not self.gates:
            return "This suite defines no gates."
        if not decided:
            return f"{_count(len(self.gates), 'gate')}, none could be decided."
        if failed:
            return f"{len(failed)} of {_count(len(decided), 'gate')} failed{tail}."
        if undecided:
            return f"{_count(len(decided), 'gate')} passed, {undecided} could not be decided."
        if len(decided) == 1:
            return "The gate passed."
        return f"All {_count(len(decided), 'gate')} passed."

    def masking_warning(self, role: str) -> str:
        n = sum(1 for f in self.flags if f.is_masking and f.model == role)
        return (
            f"Robust accuracy of {role} is not to be trusted: gradient masking detected "
            f"({n} check{'s' if n != 1 else ''} flagged)."
        )

    # --- tables -------------------------------------------------------------------------------------------
    def accuracy_entries(self) -> list[tuple[str, bool, ComparisonRow]]:
        """(one-line title, is clean accuracy, entry) for the teacher-vs-student entries of clean accuracy and of
        robust accuracy per attack: the columns of the index and of the size section."""
        out = []
        for entry in self.comparison()[1]:
            clean = entry.probe == "clean" and entry.metric == "accuracy"
            if clean or entry.metric == "robust_accuracy":
                out.append((entry.short_title().replace("\n", " "), clean, entry))
        return out

    def comparison(self) -> tuple[list[str], list[ComparisonRow]]:
        """Rows of the teacher-vs-student table: every accuracy-like metric measured outside the special probes,
        keyed by (probe, label, metric, shared params); columns are the roles that have any of them."""
        groups: dict[tuple[str, str, str, str], ComparisonRow] = {}
        # An attack's balanced accuracy at telling members apart is no accuracy of the model.
        skip = SPECIAL_PROBES | set(self.mia_probes())
        for row in self.rows:
            if row.probe in skip or not row.metric.endswith("accuracy") or row.model == "?":
                continue
            shared = {k: v for k, v in row.params.items() if k not in ("source", "target", "model", "seed")}
            key = (row.probe, row.label, row.metric, json.dumps(shared, sort_keys=True, default=str))
            reduced = self.reduced.get(row.label, "")
            entry = groups.setdefault(key, ComparisonRow(row.probe, row.label, row.metric, shared, {}, reduced=reduced))
            entry.cells.setdefault(row.model, row)
        roles = order_roles(role for entry in groups.values() for role in entry.cells)
        ordered = sorted(groups.values(), key=lambda e: (e.probe != "clean", e.metric != "accuracy", e.probe))
        # Only mention eps when the same attack appears at several radii.
        per_label: dict[tuple[str, str], set[str]] = {}
        for entry in ordered:
            per_label.setdefault((entry.label, entry.metric), set()).add(
                json.dumps(entry.params, sort_keys=True, default=str)
            )
        for entry in ordered:
            entry.ambiguous = len(per_label[(entry.label, entry.metric)]) > 1
        return roles, ordered

    def transfer_rows(self) -> list[Row]:
        return [r for r in self.rows if r.probe == "transfer"]

    def curves(self) -> dict[tuple[str, str], list[Row]]:
        """(role, attack label) -> curve rows sorted by eps (robust accuracy only, rows without eps dropped)."""
        curves: dict[tuple[str, str], list[Row]] = {}
        for row in self.rows:
            if row.probe == "curve" and row.eps is not None and row.value is not None and "accuracy" in row.metric:
                curves.setdefault((row.model, row.label), []).append(row)
        ordered = sorted(curves.items(), key=lambda kv: role_sort_key(kv[0][0]))
        return {key: sorted(rows, key=lambda r: r.eps or 0.0) for key, rows in ordered}

    def bar_groups(self) -> list[tuple[str, dict[str, Row]]]:
        """Groups of the per-attack bar chart: clean accuracy, then robust accuracy per attack; role -> row."""
        _, entries = self.comparison()
        groups = []
        for entry in entries:
            if entry.probe == "clean" or entry.metric == "robust_accuracy":
                cells = {role: row for role, row in entry.cells.items() if row.value is not None}
                if cells:
                    groups.append((entry.short_title(), cells))
        return groups

    # --- membership inference ---------------------------------------------------------------------------------
    def mia_probes(self) -> dict[str, str]:
        """Membership-inference probes that have rows: name -> kind, in suite order. The kind is read from the
        suite's probe list; a row's params "attack" (also the kind) stands in where a report.json lacks the suite."""
        kinds: dict[str, str] = {}
        probes = self.suite.get("probes")
        for probe in probes if isinstance(probes, list) else []:
            if isinstance(probe, Mapping) and probe.get("kind") in MIA_KINDS:
                kinds[str(probe.get("name") or probe["kind"])] = str(probe["kind"])
        found: dict[str, str] = {}
        for row in self.rows:
            attack = row.params.get("attack")
            kind = kinds.get(row.probe) or (str(attack) if attack in MIA_KINDS else None)
            if kind is not None:
                found.setdefault(row.probe, kind)
        order = [name for name in kinds if name in found] + [name for name in found if name not in kinds]
        return {name: found[name] for name in order}

    def privacy(self) -> tuple[list[str], list[PrivacyRow]]:
        """Rows of the privacy table, one per (probe, view), own members first; columns are the roles."""
        probes = self.mia_probes()
        entries: dict[tuple[str, str], PrivacyRow] = {}
        for row in self.rows:
            if row.probe not in probes or row.model == "?":
                continue
            view, metric = "own", row.metric
            if metric.startswith(TEACHER_MEMBERS):
                view, metric = "teacher", metric[len(TEACHER_MEMBERS) :]
            if metric not in MIA_METRICS:
                continue  # still listed under all results
            entry = entries.setdefault((row.probe, view), PrivacyRow(row.probe, probes[row.probe], view, {}))
            entry.cells.setdefault(row.model, {}).setdefault(metric, row)
        ordered = sorted(entries.values(), key=lambda e: (list(probes).index(e.probe), e.view != "own"))
        return order_roles(role for entry in ordered for role in entry.cells), ordered


    # --- accuracy and robustness against size ---------------------------------------------------------------
    def size_probes(self) -> list[str]:
        """Size probes that have rows, in suite order; a probe named "size" counts where report.json lacks the
        suite's probe list."""
        probes = self.suite.get("probes")
        names = [
            str(p.get("name") or p["kind"])
            for p in (probes if isinstance(probes, list) else [])
            if isinstance(p, Mapping) and p.get("kind") in SIZE_KINDS
        ]
        if not isinstance(probes, list):
            names = list(SIZE_KINDS)
        found = {row.probe for row in self.rows if row.metric in COUNT_METRICS}
        return [name for name in dict.fromkeys(names) if name in found]

    def size(self) -> Size | None:
        """The size section: every model with a parameter count, smallest first, with its clean accuracy, robust
        accuracy per attack. None with fewer than
        two sized models."""
        probes = self.size_probes()
        parameters: dict[str, Row] = {}
        macs: dict[str, Row] = {}
        for row in self.rows:
            if row.probe not in probes or row.value is None:
                continue
            if row.metric == "parameters":
                parameters.setdefault(row.model, row)
            elif row.metric == "macs":
                macs.setdefault(row.model, row)
        if len(parameters) < 2:
            return None
        models = [
            SizeModel(role, row, macs.get(role))
            for role, row in sorted(parameters.items(), key=lambda kv: (kv[1].value, role_sort_key(kv[0])))
        ]
        columns: list[SizeColumn] = []
        for title, clean, entry in self.accuracy_entries():
            cells = {role: row for role, row in entry.cells.items() if role in parameters and row.value is not None}
            if cells:
                columns.append(SizeColumn(title, "clean" if clean else "attack", cells, entry.detail()))
        # The masking probe's "worst case" is the worst over ITS attacks only (AutoAttack can be lower), so it is not
        # shown here as a worst case: the per-attack columns, AutoAttack among them, are the numbers to read.
        shapes = {json.dumps(row.params.get("input_shape")) for row in macs.values() if row.params.get("input_shape")}
        shape = ""
        if len(shapes) == 1:
            dims = json.loads(next(iter(shapes)))
            if isinstance(dims, list):
                shape = " × ".join(str(d) for d in dims)
        return Size(models, columns, shape)


@dataclass
class ComparisonRow:
    probe: str
    label: str
    metric: str
    params: dict[str, Any]
    cells: dict[str, Row]
    ambiguous: bool = False
    reduced: str = ""  # why the attack ran reduced (robustdistill.reports.status), "" at full strength

    @property
    def display_label(self) -> str:
        return f"{self.label} (reduced)" if self.reduced else self.label

    def title(self) -> str:
        if self.probe == "clean" and self.metric == "accuracy":
            return "Clean accuracy"
        base = humanise(self.metric)
        if self.label != self.probe or self.probe not in ("clean", "attack"):
            base += f" · {self.display_label}"
        eps = to_float(self.params.get("eps"))
        if self.ambiguous and eps is not None:
            base += f" (ε = {eps:.3g})"
        return base

    def short_title(self) -> str:
        if self.probe == "clean" and self.metric == "accuracy":
            return "clean"
        title = self.display_label
        eps = to_float(self.params.get("eps"))
        if self.ambiguous and eps is not None:
            title += f"\nε={eps:.3g}"
        return title

    def detail(self) -> str:
        return fmt_params(self.params, skip=("attack", "name"))

    def retention(self) -> float | None:
        teacher, student = self.cells.get("teacher"), self.cells.get("student")
        if teacher is None or student is None or teacher.value in (None, 0) or student.value is None:
            return None
        return student.value / teacher.value
