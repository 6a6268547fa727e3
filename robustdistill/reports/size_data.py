"""The size section's data: each model's parameters and MACs (:class:`SizeModel`) and the accuracy columns shown
against them (:class:`SizeColumn`), gathered in :class:`Size` by :meth:`robustdistill.reports.data.Report.size`.
"""

from __future__ import annotations

from dataclasses import dataclass

from robustdistill.reports.records import Row

#: Probe kinds whose rows give each model's size; with two or more sized models the report gets the size section.
SIZE_KINDS = frozenset({"size"})
SIZE_TITLE = "Accuracy and robustness against size"


@dataclass
class SizeModel:
    role: str
    parameters: Row
    macs: Row | None


@dataclass
class SizeColumn:
    title: str  # "clean" or the attack's label
    kind: str  # "clean" or "attack"
    cells: dict[str, Row]  # role -> row
    detail: str = ""

    @property
    def robust(self) -> bool:
        return self.kind != "clean"


@dataclass
class Size:
    """The models by size (smallest first) and the accuracy columns shown against it."""

    models: list[SizeModel]
    columns: list[SizeColumn]
    input_shape: str  # "1 × 8 × 8" when every MACs row was counted for one shape, else ""

    def intro(self, threat_model: str = "") -> str:
        shape = f" of shape {self.input_shape}" if self.input_shape else ""
        robust = any(c.robust for c in self.columns)
        text = (
            "The models from smallest to largest: parameters, and multiply-accumulates (MACs) of the conv and linear "
            f"layers for one input{shape}"
        )
        if robust:
            text += "; robust accuracy under each attack" + (f" at {threat_model}" if threat_model else "")
        text += "."
        return text
