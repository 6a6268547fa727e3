"""``--executor ray``: every probe unit a Ray task on a local Ray instance. A sweep over three digits students gives
the same report.json results as the same audits run here one after another; a worker killed mid-sweep has its unit
run again and the results do not change; the run store is the same (a sequential run resumes a Ray run without
running a unit again); and the refusals."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from robustdistill.audits.executors import RayExecutor, make_executor
from robustdistill.audits.sweep import run_sweep
from robustdistill.errors import UserInputError

ray = pytest.importorskip("ray", reason="the ray extra is not installed (make install installs it)")

SUITE = """name = "ray-check"
seed = 0
samples = 60
[data]
kind = "digits"
split = "test"
[threat_model]
norm = "linf"
eps = 0.125
[[probes]]
kind = "clean"
[[probes]]
kind = "attack"
attack = "fgsm"
[[probes]]
kind = "attack"
name = "pgd-20"
attack = "pgd"
params = { steps = 20, alpha = 0.03125, restarts = 2 }
"""
REPO = Path(__file__).resolve().parents[2]
TASK_TITLE = "ray::robustdistill-unit"  # what Ray shows as a worker's process title while it runs one of our units


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module (the executor reuses a running instance and leaves it running)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def three_students(digits_pair, pgd_at_student, dd_student, tmp_path_factory) -> Path:
    teacher, kd = digits_pair
    root = tmp_path_factory.mktemp("ray-sweep")
    (root / "suite.toml").write_text(SUITE)
    entries = "".join(f'[[audits]]\nname = "{name}"\nteacher = "{teacher}"\nstudent = "{student}"\n'
                      for name, student in (("kd", kd), ("pgd-at", pgd_at_student), ("dd", dd_student)))
    (root / "sweep.toml").write_text(f'name = "three"\nsuite = "suite.toml"\n{entries}')
    return root


def results_of(out: Path) -> dict[str, dict]:
    """Each audit's report.json without its manifest (times, paths and the executor differ; the results may not)."""
    reports = {}
    for name in ("kd", "pgd-at", "dd"):
        report = json.loads((out / name / "report.json").read_text())
        reports[name] = {key: value for key, value in report.items() if key != "manifest"}
    return reports


def units_of(out: Path, name: str) -> list[str]:
    lines = (out / name / "results.jsonl").read_text().splitlines()
    return [json.loads(line)["key"] for line in lines if json.loads(line)["type"] == "unit"]


def stored_once_each(out: Path, name: str) -> bool:
    """Every planned unit of the audit is stored, and exactly once."""
    lines = [json.loads(line) for line in (out / name / "results.jsonl").read_text().splitlines()]
    planned = {entry["key"] for entry in lines[0]["plan"]}
    keys = units_of(out, name)
    return len(keys) == len(set(keys)) == len(planned) == 6 and set(keys) == planned  # 3 probes x 2 models


@pytest.fixture(scope="module")
def sequential(three_students: Path) -> Path:
    out = three_students / "sequential"
    run_sweep(three_students / "sweep.toml", out, progress=False)
    return out


def test_a_ray_sweep_gives_the_results_of_sequential_audits(local_ray, three_students: Path, sequential: Path) -> None:
    out = three_students / "ray"
    sweep, reports, index = run_sweep(three_students / "sweep.toml", out, progress=False, executor="ray")
    assert [e.name for e in sweep.entries] == ["kd", "pgd-at", "dd"] and len(reports) == 3  # in the sweep's order
    ray_results, alone = results_of(out), results_of(sequential)
    assert ray_results == alone
    assert len({json.dumps(r["results"], sort_keys=True) for r in alone.values()}) == 3  # three different students
    manifest = json.loads((out / "kd" / "report.json").read_text())["manifest"]
    assert [e["name"] for e in manifest["executors"]] == ["ray"]
    assert index.is_file() and all(f'data-sort="{n}"' in index.read_text() for n in ("kd", "pgd-at", "dd"))
    # The same run store and keys: a sequential sweep into the Ray sweep's folder resumes every audit, runs no unit.
    before = {name: units_of(out, name) for name in ("kd", "pgd-at", "dd")}
    assert all(stored_once_each(out, name) for name in before)
    run_sweep(three_students / "sweep.toml", out, progress=False)
    assert {name: units_of(out, name) for name in before} == before


def test_a_worker_killed_mid_sweep_has_its_unit_run_again(local_ray, three_students: Path, sequential: Path) -> None:
    out = three_students / "killed"
    killed: list[int] = []
    stop = threading.Event()

    def kill_one_running_unit() -> None:
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            for process in psutil.Process().children(recursive=True):  # only this test's Ray workers
                try:
                    if process.name() == TASK_TITLE:
                        os.kill(process.pid, signal.SIGKILL)
                        killed.append(process.pid)
                        return
                except psutil.NoSuchProcess:
                    continue
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_running_unit, daemon=True)
    killer.start()
    try:
        run_sweep(three_students / "sweep.toml", out, progress=False, executor="ray")
    finally:
        stop.set()
        killer.join()
    assert killed, "no running unit was seen to kill"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    assert results_of(out) == results_of(sequential)  # the lost unit ran again: nothing missing, nothing changed
    assert all(stored_once_each(out, name) for name in ("kd", "pgd-at", "dd"))


def test_executor_refusals() -> None:
    with pytest.raises(UserInputError) as caught:
        make_executor("dask")
    assert caught.value.field == "--executor"
    with pytest.raises(UserInputError) as caught:
        make_executor(None, address="10.0.0.1:6379")
    assert caught.value.field == "--address"
    with pytest.raises(UserInputError) as caught:
        RayExecutor(retries=-1)
    assert caught.value.field == "retries"
    for address in ("not-an-address", "127.0.0.1:1"):  # Ray itself would retry an unreachable cluster for minutes
        started = time.monotonic()
        with pytest.raises(UserInputError) as caught:
            make_executor("ray", address=address)
        assert caught.value.field == "--address" and time.monotonic() - started < 10


def test_a_bad_address_on_the_cli_exits_2_before_writing(tmp_path: Path, digits_pair) -> None:
    from robustdistill.cli import main

    out = tmp_path / "run"
    code = main(["audit", str(REPO / "audits" / "demo-quick.toml"), "--teacher", str(digits_pair[0]), "--student",
                 str(digits_pair[1]), "--executor", "ray", "--address", "127.0.0.1:1", "--out", str(out)])
    assert code == 2 and not out.exists()
