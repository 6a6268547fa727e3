"""Contract: what each probe declares it produces (``Probe.produces``, against which gates are checked when a suite is
loaded) is exactly what it emits on a real run, for every registered probe kind and every model it runs on.

If a probe starts emitting a new metric, or stops emitting one, without updating ``produces``, this test fails: a
gate on the new metric would be refused at load, and a gate on the dropped one would be reported "missing" after
the run instead of refused before it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from robustdistill.audits import load_suite
from robustdistill.audits.probes import PROBES

EPS = 0.125  # attacks/digits-linf.toml
ROLES = ("teacher", "student")
SMALL_TRUTH = {"members": {"kind": "digits", "split": "val"}, "nonmembers": {"kind": "digits", "split": "test"}}


def every_probe_suite() -> dict[str, Any]:
    """One probe of each registered kind (and the variants whose metrics differ: L-inf/L2, AutoAttack's stages),
    each trimmed to seconds on 40 digits."""
    return {
        "name": "contract", "seed": 0, "samples": 40, "data": {"kind": "digits"},
        "threat_model": {"norm": "linf", "eps": EPS},
        "probes": [
            {"kind": "clean"},
            {"kind": "attack", "attack": "fgsm"},
            {"kind": "attack", "name": "pgd-l2", "attack": "pgd", "params": {"norm": "l2", "eps": 1.5, "steps": 5}},
            {"kind": "attack", "attack": "autoattack", "params": {"steps": 5, "n_queries": 50}},
            {"kind": "curve", "params": {"steps": 3}, "eps": [0.0, 0.125]},
            {"kind": "transfer", "params": {"steps": 3}},
            {"kind": "agreement", "params": {"steps": 3}},
            {"kind": "retention"},
            {"kind": "masking", "steps": 3, "more_steps": 6, "restarts": 2, "scales": [10.0], "square_queries": 20},
            {"kind": "size"},
            {"kind": "mia-loss"},
            {"kind": "mia-confidence", "views": ["own"]},
            # LiRA's shadow models on 718 points rather than the whole train split: 4 shadows need IN = OUT.
            {"kind": "mia-lira", "views": ["own"], "shadows": 4, "ground_truth": {role: SMALL_TRUTH for role in ROLES}},
        ],
    }


@pytest.fixture(scope="module")
def contract_run(digits_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory,
                 audit_pair: Any) -> tuple[Any, Any]:
    teacher, student = digits_pair
    spec = every_probe_suite()
    report = audit_pair(spec, digits_pair, tmp_path_factory, "contract")
    return load_suite(spec, teacher=str(teacher), student=str(student)), report


def test_the_suites_cover_every_registered_probe_kind() -> None:
    from test_bias_audit import bias_suite  # same folder: on sys.path under pytest
    from test_diffusion_mia import mia_suite
    from test_diffusion_quality import quality_suite
    from test_language_audit import language_suite
    from test_unlearning_audit import backdoor_suite, unlearning_suite

    kinds = {probe["kind"] for suite in (every_probe_suite(), language_suite(), bias_suite(), quality_suite(),
                                         mia_suite(), unlearning_suite(Path("c"), Path("r")), backdoor_suite())
             for probe in suite["probes"]}
    derived_elsewhere = {"alo-asr"}  # rows the language family derives from the jailbreak probes' masks
    assert kinds | derived_elsewhere == set(PROBES.available()), \
        ("add the new probe kind to every_probe_suite() (images), language_suite(), bias_suite() or "
         "quality_suite() or mia_suite() (diffusion), unlearning_suite() or backdoor_suite() (tests/audits/)")


def test_every_probe_emits_exactly_what_it_declares(contract_run: tuple[Any, Any]) -> None:
    suite, report = contract_run
    emitted: dict[tuple[str, str], set[str]] = {}
    for row in report.rows:
        emitted.setdefault((row["probe"], row["model"]), set()).add(row["metric"])
    for probe in suite.probes:
        for role in suite.roles:
            declared = set(probe.produces(role))
            found = emitted.get((probe.name, role), set())
            if probe.kind == "retention" and role == "teacher":
                assert not found  # retention is of a model relative to the teacher
                continue
            assert found == declared, (probe.name, role, sorted(found - declared), sorted(declared - found))
            assert set(probe.gate_metrics(role)) <= declared
    assert {name for name, _ in emitted} == {probe.name for probe in suite.probes}
