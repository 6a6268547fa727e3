"""``robustdistill sweep``: every audit of a sweep file into its own run directory, the same results as the audits
run one by one, resumed on a second run, one index comparing them; and the refusals, before anything is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from robustdistill import audit
from robustdistill.audits.sweep import load_sweep, run_sweep
from robustdistill.errors import UserInputError

SUITE = 'name = "clean-only"\nseed = 0\nsamples = 60\n[data]\nkind = "digits"\nsplit = "test"\n[[probes]]\nkind = "clean"\n'


@pytest.fixture(scope="module")
def world(digits_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep file auditing the KD student by name and two more copies of it through a glob, with a clean suite."""
    teacher, student = digits_pair
    root = tmp_path_factory.mktemp("sweep")
    (root / "clean.toml").write_text(SUITE)
    for name in ("copy-a", "copy-b"):
        shutil.copytree(student, root / "students" / name)
    (root / "sweep.toml").write_text(
        f'name = "tiny"\nsuite = "clean.toml"\n[[audits]]\nname = "kd"\nteacher = "{teacher}"\nstudent = "{student}"\n'
        f'[glob]\nteacher = "{teacher}"\nstudents = "students/*"\n')
    return root


def rows(report) -> list[tuple]:
    return sorted((r["probe"], r["model"], r["metric"], r["value"], tuple(r["ci95"] or ())) for r in report.rows)


def test_a_sweep_gives_each_audits_own_results_and_resumes(world: Path, digits_pair: tuple[Path, Path]) -> None:
    out = world / "runs"
    sweep, reports, index = run_sweep(world / "sweep.toml", out, progress=False)
    assert [e.name for e in sweep.entries] == ["kd", "copy-a", "copy-b"]  # the glob's matches in name order
    alone = audit(str(world / "clean.toml"), teacher=digits_pair[0], student=digits_pair[1], out=world / "alone",
                  progress=False)
    assert all(rows(report) == rows(alone) for report in reports)  # the copies are the same checkpoint
    html = index.read_text()
    assert all(f">{name}<" in html or name in html for name in ("kd", "copy-a", "copy-b"))
    assert all((out / name / "report.json").is_file() for name in ("kd", "copy-a", "copy-b"))
    # a second sweep of the same checkpoints resumes every audit: its results so far are kept, no unit runs again
    before = {name: (out / name / "results.jsonl").read_text() for name in ("kd", "copy-a", "copy-b")}
    _, again, _ = run_sweep(world / "sweep.toml", out, progress=False)
    for name, text in before.items():
        now = (out / name / "results.jsonl").read_text()
        assert now.startswith(text) and '"type": "unit"' not in now[len(text):]  # a resume record, no new unit
    assert [rows(r) for r in again] == [rows(r) for r in reports]


@pytest.mark.parametrize(("text", "field"), [
    ('name = "x"\n[[audits]]\nteacher = "{t}"\nstudent = "{s}"\n', "audits[0].suite"),
    ('name = "x"\nsuite = "clean.toml"\n[[audits]]\nteacher = "{t}"\nstudent = "missing"\n', "audits[0].student"),
    ('name = "x"\nsuite = "clean.toml"\n[[audits]]\nname = "a"\nteacher = "{t}"\nstudent = "{s}"\n'
     '[[audits]]\nname = "a"\nteacher = "{t}"\nstudent = "{s}"\n', "audits.name"),
    ('name = "x"\nsuite = "clean.toml"\n[glob]\nteacher = "{t}"\nstudents = "nothing-here/*"\n', "glob.students"),
    ('name = "x"\nsuite = "clean.toml"\n', "audits"),
    ('name = "x"\nsuite = "clean.toml"\ncolour = "red"\n', "colour"),
])
def test_bad_sweep_files_are_refused_naming_the_field(world: Path, digits_pair: tuple[Path, Path], text: str,
                                                      field: str) -> None:
    path = world / "bad.toml"
    path.write_text(text.format(t=digits_pair[0], s=digits_pair[1]))
    with pytest.raises(UserInputError) as caught:
        load_sweep(path)
    assert field in caught.value.field


def test_a_users_folder_is_refused_as_out_before_any_audit(world: Path, plant_users_files, snapshot) -> None:
    mine = world / "mine"
    before = plant_users_files(mine, {"notes.txt": "my notes"})
    with pytest.raises(UserInputError) as caught:
        run_sweep(world / "sweep.toml", mine, progress=False)
    assert caught.value.field == "out" and snapshot(mine) == before
