"""``robustdistill sweep``: every audit of a sweep file into its own run directory, the same results as the audits
run one by one, resumed on a second run, one index comparing them; and the refusals, before anything is written."""

from __future__ import annotations

import json
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
    assert all(f'data-sort="{name}"' in html for name in ("kd", "copy-a", "copy-b"))  # one sortable line each
    assert "table.sortable" in html and html.count("<tr>") == 1 + 3  # the header and one line per audit
    from safetensors import safe_open

    with safe_open(str(digits_pair[1] / "model.safetensors"), framework="pt") as handle:
        count = sum(handle.get_tensor(k).numel() for k in handle.keys())
    assert f"{count:,}" in html  # the student's size, read from its checkpoint's header
    assert "accuracy against size" not in html  # three students of one size: nothing to plot against it
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


def test_accuracy_against_size_is_plotted_for_students_of_several_sizes() -> None:
    from robustdistill.reports.plots import sweep_accuracy_vs_size
    from robustdistill.reports.sweep_index import size_points

    def entry(parameters: int | None, clean: float, pgd: float) -> dict:
        cells = {"clean": {"student": {"value": clean, "ci95": [clean - 0.25, clean + 0.0625], "metric": "accuracy"}},
                 "pgd": {"student": {"value": pgd, "ci95": None, "metric": "robust_accuracy"}},
                 "MIA AUC": {"student": {"value": 0.6, "ci95": None, "metric": "auc"}}}
        return {"name": "x", "parameters": parameters, "summary": cells}

    points = size_points([entry(1000, 0.9, 0.3), entry(None, 0.5, 0.1), entry(50_000, 0.95, 0.5)])
    assert set(points) == {"clean", "pgd"}  # accuracies only; the unsized student is left out
    assert points["clean"] == [(1000.0, 0.9, [0.65, 0.9625]), (50_000.0, 0.95, [0.7, 1.0125])]
    assert sweep_accuracy_vs_size(points).startswith(b"\x89PNG")
    assert size_points([entry(1000, 0.9, 0.3), entry(1000, 0.8, 0.2)]) == {}


def test_a_model_an_earlier_entrys_recipe_trains_may_be_named_again(world: Path, digits_pair: tuple[Path, Path]) -> None:
    recipe = Path(__file__).resolve().parents[2] / "defenses" / "digits-kd.toml"
    (world / "planned.toml").write_text(
        f'name = "x"\nsuite = "clean.toml"\n[[audits]]\nname = "first"\nteacher = "{digits_pair[0]}"\n'
        f'student = "not-yet"\nstudent_recipe = "{recipe}"\n'
        f'[[audits]]\nname = "second"\nteacher = "not-yet"\nstudent = "{digits_pair[1]}"\n')
    sweep = load_sweep(world / "planned.toml")
    assert [e.student_recipe is not None for e in sweep.entries] == [True, False]
    assert sweep.entries[1].teacher == "not-yet"  # trained by the first entry before the second audit runs


def test_a_sweep_continues_a_training_it_was_interrupted_in(world: Path, digits_pair: tuple[Path, Path],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A sweep stopped while it trained a missing model leaves that training's .partial folder; the next sweep
    continues it (the sweep command has no --resume of its own to pass), and the model ends fully trained."""
    from robustdistill.trainers import from_recipe

    repo = Path(__file__).resolve().parents[2]
    text = (repo / "defenses" / "digits-standard.toml").read_text()
    text = text.replace('"attacks/digits-linf.toml"', f'"{repo / "attacks" / "digits-linf.toml"}"')
    (world / "teacher.toml").write_text(text.replace("epochs = 30", "epochs = 2").replace("seed = 0", "seed = 0\n"
                                                                                         "val_robust = false"))
    teacher = world / "interrupted-teacher"

    def stop_after_the_first_epoch(epoch: int, record: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        from_recipe(world / "teacher.toml").fit(teacher, on_epoch_end=stop_after_the_first_epoch)
    assert (world / "interrupted-teacher.partial").is_dir() and not teacher.exists()
    (world / "resumed.toml").write_text(
        f'name = "resumed"\nsuite = "clean.toml"\n[[audits]]\nname = "kd"\nteacher = "{teacher}"\n'
        f'teacher_recipe = "teacher.toml"\nstudent = "{digits_pair[1]}"\n')
    with caplog.at_level("INFO", logger="robustdistill"):
        _, reports, _ = run_sweep(world / "resumed.toml", world / "resumed-runs", progress=False)
    assert any("resuming standard" in message and "after epoch 1" in message for message in caplog.messages)
    history = json.loads((teacher / "config.json").read_text())["provenance"]["history"]
    assert [entry["epoch"] for entry in history] == [1, 2] and not (world / "interrupted-teacher.partial").exists()
    assert len(reports) == 1 and reports[0].rows
