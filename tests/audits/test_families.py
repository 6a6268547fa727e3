"""The family interface (DESIGN.md, "Model families"): probes declare their family and report group, a suite audits
one family, a model of another family is refused before anything is written (naming the probe and the role), every
probe file is picked up by the registry, and the family-agnostic core holds no image concepts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import robustdistill.audits.probes as probes_package
from robustdistill.audits import families
from robustdistill.audits.probes import PROBES, Probe
from robustdistill.cli import main
from robustdistill.errors import UserInputError
from robustdistill.models import build_tiny_causal_lm, build_tiny_class_unet
from robustdistill.reports.sections import SECTIONS

CORE = ["audits/runner.py", "audits/build.py", "audits/store.py", "audits/verdict.py", "audits/families/base.py"]


def test_every_registered_probe_declares_a_registered_family_and_a_report_group() -> None:
    for kind, probe_class in PROBES.items():
        assert probe_class.family in families.FAMILIES, f"{kind}: family {probe_class.family!r} is not registered"
        # A group without a registered section would render as the generic rows table: every shipped probe has one.
        assert probe_class.group in SECTIONS, f"{kind}: group {probe_class.group!r} has no report section"


def test_every_file_of_the_probes_package_is_imported_so_a_new_probe_file_registers_itself() -> None:
    root = Path(probes_package.__file__).parent
    on_disk = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        if parts:
            on_disk.add(".".join(("robustdistill.audits.probes", *parts)))
    assert on_disk == set(probes_package.MODULES)
    # One file per probe kind: no module registers two kinds.
    modules = [probe_class.__module__ for _, probe_class in PROBES.items()]
    assert len(modules) == len(set(modules)), modules


def test_the_family_agnostic_core_holds_no_image_concepts() -> None:
    """The runner, store, verdict and report builder never touch (x, y), eps, threat models or example grids: those
    are the classifier family's (audits/families/classifier.py, probes/image/)."""
    package = Path(probes_package.__file__).parents[1]
    image_words = re.compile(r"\.x\b|\.y\b|\beps\b|threat_model|example_idx|examples_probe|ImageContext|check_compatible")
    for name in CORE:
        source = (package.parent / name).read_text()
        code = "\n".join(line.split("#", 1)[0] for line in source.splitlines())
        assert not image_words.findall(code), (name, image_words.findall(code))


class _OtherFamilyProbe(Probe):
    kind = "other"
    family = "language-model"
    group = "image-attacks"


def test_a_suite_mixing_families_is_refused_at_its_first_odd_probe(cheap_suite: Any) -> None:
    from robustdistill.audits.schema import ThreatModel, load_suite

    suite = load_suite(cheap_suite("t", "s"))
    odd = _OtherFamilyProbe(_OtherFamilyProbe.config_class(kind="other"), ThreatModel(norm="linf", eps=0.1), 0,
                            "probes[8]")
    suite.probes.append(odd)
    with pytest.raises(UserInputError) as info:
        families.suite_family(suite)
    assert info.value.field == "probes[8]" and "language-model" in info.value.problem
    assert families.suite_family(load_suite(cheap_suite("t", "s"))).name == "classifier"


def test_models_are_recognised_by_their_family(tmp_path: Path, digits_pair: tuple[Path, Path]) -> None:
    from robustdistill.models import load_model

    lm = load_model(build_tiny_causal_lm(tmp_path / "lm", arch="gpt2", seed=0))
    unet = load_model(build_tiny_class_unet(tmp_path / "unet", seed=0))
    assert families.family_of(load_model(digits_pair[0])).name == "classifier"
    assert families.family_of(lm).name == "language-model"
    assert families.family_of(unet).name == "diffusion"
    assert families.family_of(object()) is None


@pytest.mark.parametrize("kind", ["language-model", "diffusion"])
def test_a_model_of_another_family_is_refused_before_the_run_naming_the_probe_and_role(
        kind: str, tmp_path: Path, digits_pair: tuple[Path, Path], cheap_suite: Any, snapshot: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    teacher, _ = digits_pair
    if kind == "language-model":
        other = build_tiny_causal_lm(tmp_path / "models" / "lm", arch="gpt2", seed=0)
    else:
        other = build_tiny_class_unet(tmp_path / "models" / "unet", seed=0)
    spec = cheap_suite(teacher, other)
    toml = tmp_path / "suite.toml"
    toml.write_text(_as_toml(spec))
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    code = main(["audit", str(toml), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "probes[0]" in err and "clean" in err and "student" in err and str(other) in err
    assert ("a language model" if kind == "language-model" else "a diffusion model") in err
    assert not out.exists() and snapshot(tmp_path) == before


def _as_toml(spec: dict[str, Any]) -> str:
    """The cheap suite as TOML (no tomli-w dependency: the suite is small and regular)."""
    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    lines = [f"{k} = {value(v)}" for k, v in spec.items() if not isinstance(v, (dict, list))]
    for table in ("pipeline", "data", "threat_model"):
        lines.append(f"[{table}]")
        lines.extend(f"{k} = {value(v)}" for k, v in spec[table].items())
    lines.append("[gates]")
    lines.extend(f"{json.dumps(k)} = {value(v)}" for k, v in spec["gates"].items())
    for probe in spec["probes"]:
        lines.append("[[probes]]")
        lines.extend(f"{k} = {value(v)}" for k, v in probe.items())
    return "\n".join(lines) + "\n"
