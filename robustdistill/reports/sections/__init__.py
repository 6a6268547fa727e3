"""Report sections, registered per probe group: a model family that brings new probes adds one module here (calling
:func:`register`) instead of growing report.html's and report.md's renderers.

Which groups a report has comes from report.json's ``"sections"``: ``[{"group": "image-attacks", "family":
"classifier", "probes": ["clean", "pgd", ...]}, ...]``. A report.json without it (written before the runner
recorded it) has its groups derived from the suite's probe kinds (:data:`KIND_GROUPS`). Registered groups are
rendered in their ``order`` (the order people read a report in, not the suite's); a group nothing registered
renders with the generic rows table (:mod:`robustdistill.reports.sections.generic`) after them.

A section renders nothing when the run has no rows for it, so a group listed without data costs no heading.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from robustdistill.reports.data import Report
    from robustdistill.reports.privacy_data import Privacy

#: Probe kind -> its group, for a report.json without "sections" (the runner's grouping, robustdistill/audits/probes).
KIND_GROUPS = {
    "clean": "image-attacks",
    "attack": "image-attacks",
    "curve": "image-attacks",
    "masking": "masking",
    "transfer": "transfer-agreement",
    "agreement": "transfer-agreement",
    "retention": "transfer-agreement",
    "mia-loss": "privacy",
    "mia-confidence": "privacy",
    "mia-lira": "privacy",
    "size": "size",
    "bias-propagation": "lm-bias",
    "poison-filters": "lm-bias",
    "generation-quality": "generation",
    "diffusion-mia": "diffusion-privacy",
    "class-forgetting": "unlearning",
    "backdoor-removal": "unlearning",
}
DEFAULT_FAMILY = "classifier"
#: Under every table of values: how to read them.
INTERVALS = "Each value is followed by its 95% confidence interval; hover a value for n."
INTERVALS_MD = "Each value is followed by its 95% confidence interval."


@dataclass(frozen=True)
class SectionSpec:
    """One entry of report.json's "sections": a probe group, the model family it applies to, its probe names."""

    group: str
    family: str
    probes: tuple[str, ...]


@dataclass
class Context:
    """What every section renders from. ``pngs``: plot key -> PNG bytes (None: nothing to plot), for report.html;
    ``links``: plot key -> path relative to the run directory, for report.md."""

    report: Report
    spec: SectionSpec
    pngs: Mapping[str, bytes | None] = field(default_factory=dict)
    links: Mapping[str, str] = field(default_factory=dict)
    examples_note: str = ""
    privacy: Privacy | None = None

    @property
    def masked(self) -> set[str]:
        return set(self.report.masked_roles)


#: A section's HTML: (anchor, title for the page's navigation, the <section> element) per part it shows.
HtmlParts = list[tuple[str, str, str]]


@dataclass(frozen=True)
class Section:
    group: str
    title: str  # what the group checks, as the Flags section's "what was checked" names it
    order: int
    html: Callable[[Context], HtmlParts]
    markdown: Callable[[Context], list[str]]


SECTIONS: dict[str, Section] = {}


def register(section: Section) -> Section:
    if section.group in SECTIONS:
        raise ValueError(f"report section {section.group!r} is registered twice")
    SECTIONS[section.group] = section
    return section


def _parse(raw: Any) -> SectionSpec | None:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("group"), str):
        return None
    probes = raw.get("probes")
    names = tuple(str(p) for p in probes) if isinstance(probes, list | tuple) else ()
    return SectionSpec(raw["group"], str(raw.get("family") or DEFAULT_FAMILY), names)


def group_of(kind: str) -> str:
    if kind in KIND_GROUPS:
        return KIND_GROUPS[kind]
    return "privacy" if kind.startswith("mia-") else kind


def section_specs(report: Report) -> list[SectionSpec]:
    """The report's probe groups: report.json's "sections", else derived from the suite's probe kinds, else (a
    report.json without the suite) every registered group, each showing whatever rows it finds."""
    raw = report.raw.get("sections")
    if isinstance(raw, list):
        return [spec for spec in map(_parse, raw) if spec is not None]
    probes = report.suite.get("probes")
    if not isinstance(probes, list):
        return [SectionSpec(group, DEFAULT_FAMILY, ()) for group in SECTIONS]
    grouped: dict[str, list[str]] = {}
    for probe in probes:
        if isinstance(probe, Mapping) and probe.get("kind"):
            kind = str(probe["kind"])
            grouped.setdefault(group_of(kind), []).append(str(probe.get("name") or kind))
    return [SectionSpec(group, DEFAULT_FAMILY, tuple(names)) for group, names in grouped.items()]


def ordered(specs: list[SectionSpec]) -> list[tuple[SectionSpec, Section]]:
    """Each spec with its renderer: registered groups in their order, then the others in report order."""
    from robustdistill.reports.sections import generic

    known = sorted((s for s in specs if s.group in SECTIONS), key=lambda s: SECTIONS[s.group].order)
    return [(s, SECTIONS[s.group]) for s in known] + [(s, generic.section_for(s)) for s in specs if s not in known]


def coverage(report: Report, specs: list[SectionSpec]) -> list[str]:
    """What the run checked and what it did not, one sentence each, for the Flags section: "no flags" means
    little unless the reader knows which checks could have raised one."""
    lines = []
    for spec, section in ordered(specs):
        if spec.group != "masking" and spec.probes:
            lines.append(f"{section.title[:1].upper()}{section.title[1:]}: checked ({', '.join(spec.probes)}).")
    if specs and all(s.family != DEFAULT_FAMILY for s in specs):
        return lines  # gradient masking is a question about image classifiers' robust accuracy
    masking_specs = [s for s in specs if s.group == "masking"]
    names = {p for s in masking_specs for p in s.probes} | {"masking"}
    roles = list(dict.fromkeys(r.model for r in report.rows if r.probe in names and r.model != "?"))
    if masking_specs and roles:
        lines.append(f"Gradient masking: checked on {', '.join(roles)}.")
    elif not report.attacks_inputs:
        lines.append("Gradient masking: not checked (no attack probes).")
    else:
        lines.append("Gradient masking: not checked (this suite has no masking probe), so robust accuracies may "
                     "overstate robustness.")
    return lines


# Registration: one module per group, imported for its register() call.
for _module in ("image_attacks", "transfer", "size", "privacy", "masking", "language", "bias", "diffusion",
                "diffusion_privacy", "unlearning"):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["INTERVALS", "INTERVALS_MD", "KIND_GROUPS", "SECTIONS", "Context", "HtmlParts", "Section", "SectionSpec",
           "coverage", "ordered", "register", "section_specs"]
