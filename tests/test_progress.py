"""robustdistill/progress.py: work-weighted ETA, no silent gaps without a terminal, labelled and bar-safe log lines."""

from __future__ import annotations

import contextlib
import logging
import sys
import time

import pytest
from tqdm.auto import tqdm

from robustdistill import progress

def probe_costs() -> dict[str, float]:
    """Each probe's expected_cost() as the runner asks it, for the probes of a digits-like suite."""
    from robustdistill.audits.schema import load_suite

    suite = load_suite({
        "name": "costs", "pipeline": {"teacher": "t", "student": "s"}, "data": {"kind": "digits"},
        "threat_model": {"norm": "linf", "eps": 0.125},
        "probes": [
            {"kind": "clean"}, {"kind": "size"}, {"kind": "mia-loss"},
            {"kind": "attack", "attack": "fgsm"},
            {"kind": "attack", "name": "pgd-20", "attack": "pgd", "params": {"steps": 20}},
            {"kind": "attack", "name": "pgd-40", "attack": "pgd", "params": {"steps": 40}},
            {"kind": "attack", "attack": "autoattack"},
            {"kind": "curve", "attack": "pgd", "params": {"steps": 20}, "eps": [0.0625, 0.125, 0.1875, 0.25]},
            {"kind": "transfer", "params": {"steps": 20}},
            {"kind": "masking"},
            {"kind": "mia-lira", "name": "lira-16", "shadows": 16},
            {"kind": "mia-lira", "name": "lira-4", "shadows": 4},
        ],
    })
    return {probe.name: probe.expected_cost() for probe in suite.probes}


def test_costs_follow_the_work_not_the_unit_count() -> None:
    cost = probe_costs()
    clean, fgsm, pgd, autoattack = cost["clean"], cost["fgsm"], cost["pgd-20"], cost["autoattack"]
    # Measured on digits: clean 0.03 s, FGSM 0.09 s, PGD-20 1.0 s, AutoAttack 35 s
    assert clean == cost["size"] == cost["mia-loss"] == 1.0  # about one pass over the points
    assert clean < fgsm < pgd < autoattack
    assert autoattack / clean > 300 and 10 < autoattack / pgd < 100 and 10 < pgd / fgsm < 30
    assert cost["curve"] == pytest.approx(4 * pgd)
    assert cost["transfer"] == pytest.approx(2 * pgd)  # one attack per model of the pair
    assert cost["pgd-40"] > 1.9 * pgd
    assert pgd < cost["masking"] < autoattack
    assert cost["lira-16"] == pytest.approx(4 * cost["lira-4"])


def test_without_a_terminal_a_long_unit_has_heartbeats_and_each_unit_a_line_with_eta(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="robustdistill")
    # enabled=None and stderr is not a terminal under pytest: log lines instead of a bar.
    with progress.WorkProgress("audit x", total=11.0, units=2, enabled=None, heartbeat_s=0.2) as bar:
        assert bar.text
        with bar.unit("autoattack on teacher", 10.0):
            time.sleep(1.0)
        with bar.unit("clean on student", 1.0):
            pass
    lines = [r.getMessage() for r in caplog.records if r.name == "robustdistill.progress"]
    beats = [line for line in lines if "still running autoattack on teacher" in line]
    assert len(beats) >= 2, lines  # at most heartbeat_s of silence, not one line per unit
    first, second = (line for line in lines if " done; " in line)
    assert "autoattack on teacher done; 1/2 units, 91% of the work" in first and "ETA 0:0" in first
    assert "clean on student done; 2/2 units, 100% of the work" in second


def test_no_lines_when_progress_is_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="robustdistill")
    with progress.WorkProgress("audit x", total=1.0, units=1, enabled=False, heartbeat_s=0.1) as bar:
        with bar.unit("clean on teacher", 1.0):
            time.sleep(0.3)
    assert not [r for r in caplog.records if r.name == "robustdistill.progress"]


def test_log_lines_inside_a_unit_name_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="robustdistill")  # an earlier CLI run (-q) may have raised its level
    attack_log = logging.getLogger("robustdistill.attacks.autoattack")
    with progress.labelled("autoattack on student"):
        attack_log.info("AutoAttack: robust accuracy after %s: %.2f%%", "APGD-CE", 3.9)
        logging.getLogger("somebody.else").info("not ours")
    attack_log.info("outside")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["[autoattack on student] AutoAttack: robust accuracy after APGD-CE: 3.90%", "not ours", "outside"]


def _bar_and_log(redirect: bool, capsys: pytest.CaptureFixture[str]) -> str:
    """Log one line while a bar is drawn on stderr (as the CLI's handler and tqdm do); what stderr received."""
    capsys.readouterr()
    logger = logging.getLogger("robustdistill")
    saved = logger.handlers[:]
    logger.handlers[:] = [logging.StreamHandler(sys.stderr)]
    try:
        bar = tqdm(total=10, desc="audit x", file=sys.stderr, mininterval=0)
        bar.update(3)
        with progress.logs_above_bars() if redirect else contextlib.nullcontext():
            logger.warning("a line from the run")
        bar.close()
    finally:
        logger.handlers[:] = saved
    return capsys.readouterr().err


def test_log_lines_are_printed_above_the_bar_not_onto_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    def shown(text: str) -> list[str]:  # what a terminal shows per line: the text after the line's last \r
        return [line.rsplit("\r", 1)[-1] for line in text.split("\n")]

    assert "a line from the run" in shown(_bar_and_log(True, capsys))
    # Without the redirection the line is glued onto the bar (what the issue saw): the check above can fail.
    assert "a line from the run" not in shown(_bar_and_log(False, capsys))


def test_eta_falls_while_a_long_unit_runs() -> None:
    # Without credit for the running unit, the ETA climbed for as long as AutoAttack ran (6:45, then 12:22).
    with progress.WorkProgress("audit x", total=11.0, units=2, enabled=False) as bar:
        with bar.unit("clean on teacher", 1.0):
            time.sleep(0.2)
        with bar.unit("autoattack on teacher", 10.0):  # expected about 2 s at the first unit's rate
            time.sleep(0.3)
            early = bar.eta()
            time.sleep(0.7)
            later = bar.eta()
    assert early is not None and later is not None
    assert later < early
