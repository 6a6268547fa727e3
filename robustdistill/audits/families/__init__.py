"""Model families (DESIGN.md, "Model families"): ``classifier`` (images), ``language-model`` and ``diffusion``.

:func:`suite_family` says which family a suite's probes audit (one per suite); :func:`check_fit` refuses, before
anything is written, a model that is not of that family, naming the probe and the role. Adding a family is one
module here (a :class:`~robustdistill.audits.families.base.ModelFamily` subclass registered in ``FAMILIES``), one
folder of probes under robustdistill/audits/probes/ and one of report sections under robustdistill/reports/sections/.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from robustdistill.audits.families import classifier as _classifier  # noqa: F401  (registrations)
from robustdistill.audits.families import diffusion as _diffusion  # noqa: F401
from robustdistill.audits.families import language as _language  # noqa: F401
from robustdistill.audits.families.base import FAMILIES, EvalData, ModelFamily, Plan, StoredUnit
from robustdistill.audits.families.classifier import role_field
from robustdistill.errors import UserInputError


def family(name: str) -> ModelFamily:
    return FAMILIES.get(name)()


def family_of(model: Any) -> ModelFamily | None:
    """The family a loaded model belongs to (None: none recognises it)."""
    for _, family_class in FAMILIES.items():
        candidate = family_class()
        if candidate.accepts(model):
            return candidate
    return None


def suite_family(suite: Any) -> ModelFamily:
    """The one family every probe of the suite audits; a suite mixing families is refused at its first odd probe."""
    first = suite.probes[0]
    for probe in suite.probes[1:]:
        if probe.family != first.family:
            raise UserInputError(probe.where, f"{probe.name} ({probe.kind}) audits the {probe.family} family but "
                                 f"{first.name} ({first.kind}) audits the {first.family} family",
                                 "one suite audits one kind of model: split it into one suite per family")
    return family(first.family)


def check_fit(suite: Any, family: ModelFamily, models: Mapping[str, Any],
              checkpoints: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Refuse a model that is not of the suite's ``family`` (:func:`suite_family`), naming the suite's first probe
    (every probe audits that family) and the role; return role -> family name, for the manifest."""
    probe = suite.probes[0]
    for role, model in models.items():
        found = family_of(model)
        if found is not None and found.name == family.name:
            continue
        what = found.title if found is not None else f"a {type(model).__name__}"
        source = checkpoints.get(role, {}).get("path") or "in memory"
        raise UserInputError(probe.where, f"{probe.name} ({probe.kind}) audits {family.title}, but the {role} "
                             f"({source}) is {what}",
                             f"give {role_field(role)} {family.title}, or audit it with a suite of probes for {what}")
    return dict.fromkeys(models, family.name)


__all__ = ["FAMILIES", "EvalData", "ModelFamily", "Plan", "StoredUnit", "check_fit", "family", "family_of",
           "suite_family"]
