"""The baseline trainers on real digits: accuracy, robustness, provenance, determinism and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robustdistill import attacks, load_model, trainers
from robustdistill.data import load_split
from robustdistill.errors import UserInputError
from robustdistill.models import checkpoint_sha256
from robustdistill.trainers.config import load_threat_model

DIGITS_EPS = load_threat_model("attacks/digits-linf.toml")["eps"]


def test_accuracy(model: torch.nn.Module, split: str = "test") -> float:
    data = load_split({"kind": "digits"}, split)
    with torch.no_grad():
        return float((model(data.x).argmax(1) == data.y).float().mean())


test_accuracy.__test__ = False  # a helper, not a test


def pgd20_accuracy(model: torch.nn.Module) -> float:
    data = load_split({"kind": "digits"}, "test")
    x_adv = attacks.create("pgd", eps=DIGITS_EPS, alpha=DIGITS_EPS / 4, steps=20, seed=0)(model, data.x, data.y)
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == data.y).float().mean())


@pytest.fixture(scope="session")
def standard_teacher(tmp_path_factory: pytest.TempPathFactory, test_seed: int) -> Path:
    out = tmp_path_factory.mktemp("standard") / "digits-standard"
    return trainers.create("standard", recipe="defenses/digits-standard.toml", overrides=[f"seed={test_seed}"]).fit(out)


@pytest.fixture(scope="session")
def pgd_at_model(tmp_path_factory: pytest.TempPathFactory, test_seed: int) -> Path:
    out = tmp_path_factory.mktemp("pgd-at") / "digits-pgd-at"
    return trainers.create("pgd-at", recipe="defenses/digits-pgd-at.toml", overrides=[f"seed={test_seed}"]).fit(out)


def test_digits_teacher_reaches_97_percent(standard_teacher: Path) -> None:
    assert test_accuracy(load_model(standard_teacher)) >= 0.97


def test_threat_model_breaks_the_standard_model(standard_teacher: Path) -> None:
    # The digits eps was chosen so that a standard model's PGD-20 accuracy falls below 20%; over 3 seeds x 2 CPU
    # kernel sets it is 0.11-0.17, so the test allows 25% (0.20 was within 12 test points of failing).
    score = pgd20_accuracy(load_model(standard_teacher))
    assert score < 0.25, score


def test_pgd_at_beats_standard_under_pgd20_by_20_points(standard_teacher: Path, pgd_at_model: Path) -> None:
    standard, robust = pgd20_accuracy(load_model(standard_teacher)), pgd20_accuracy(load_model(pgd_at_model))
    assert robust >= standard + 0.20, (standard, robust)
    assert robust <= test_accuracy(load_model(pgd_at_model))


def test_provenance_records_recipe_data_and_members(standard_teacher: Path) -> None:
    config = json.loads((standard_teacher / "config.json").read_text())
    provenance = config["provenance"]
    train = load_split({"kind": "digits"}, "train")
    assert provenance["recipe"]["method"] == "standard"
    assert provenance["recipe"]["config"]["arch"] == "cnn-small"
    assert provenance["data"]["fingerprint"] == train.fingerprint
    assert sorted(provenance["train_members"]) == sorted(int(i) for i in train.indices)
    assert provenance["selection"]["split"] == "val"
    assert len(provenance["history"]) == provenance["recipe"]["config"]["epochs"]
    best = provenance["history"][provenance["selection"]["best_epoch"] - 1]
    assert best["val_clean_accuracy"] == max(h["val_clean_accuracy"] for h in provenance["history"])


def test_kd_student_records_its_teacher(standard_teacher: Path, tmp_path: Path, test_seed: int) -> None:
    trainer = trainers.create("kd", recipe="defenses/digits-kd.toml", overrides=[f"teacher={standard_teacher}", f"seed={test_seed}"])
    out = trainer.fit(tmp_path / "kd")
    provenance = json.loads((out / "config.json").read_text())["provenance"]
    assert provenance["parents"] == [{"role": "teacher", "path": str(standard_teacher), "sha256": checkpoint_sha256(standard_teacher)}]
    student = load_model(out)
    assert student.arch == "cnn-tiny"
    # It learned (chance is 0.1); how well is seed- and kernel-dependent: 0.73-0.97 over 3 seeds x 2 CPU kernel sets.
    score = test_accuracy(student)
    assert score > 0.5, score


def test_kd_without_teacher_or_recipe_is_a_clear_error(tmp_path: Path) -> None:
    trainer = trainers.create("kd", recipe="defenses/digits-kd.toml", overrides=[f"teacher={tmp_path / 'missing'}", "teacher_recipe=''"])
    with pytest.raises(UserInputError, match="teacher"):
        trainer.fit(tmp_path / "kd")
    assert not (tmp_path / "kd").exists()


def test_defensive_distillation_trains_teacher_at_t_and_deploys_at_1(tmp_path: Path, test_seed: int) -> None:
    out = trainers.create("defensive-distillation", recipe="defenses/digits-defensive-distillation.toml",
                          overrides=["epochs=12", f"seed={test_seed}"]).fit(tmp_path / "dd")
    provenance = json.loads((out / "config.json").read_text())["provenance"]
    assert provenance["training_temperature"] == 100.0 and provenance["deployed_temperature"] == 1.0
    assert provenance["parents"][0]["path"] == str(tmp_path / "dd-teacher")
    student = load_model(out)
    score = test_accuracy(student)  # 0.88-0.93 over 3 seeds x 2 CPU kernel sets (0.85 was 0.027 from failing)
    assert score > 0.75, score
    # Deployed at T = 1, a model trained at T = 100 has logits ~100x larger than usual: its softmax saturates.
    data = load_split({"kind": "digits"}, "test")
    with torch.no_grad():
        logits = student(data.x)
    assert logits.std() > 30
    assert (torch.softmax(logits, 1).amax(1) > 0.999).float().mean() > 0.9


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize(
    ("method", "recipe", "overrides"),
    [
        ("standard", "defenses/digits-standard.toml", ["epochs=4", "lr_milestones=[2]"]),
        ("pgd-at", "defenses/digits-pgd-at.toml", ["epochs=3", "attack_steps=2", "lr_milestones=[2]"]),
        ("trades", "defenses/digits-trades.toml", ["epochs=3", "attack_steps=2", "lr_milestones=[2]"]),
    ],
)
def test_resume_after_interruption_matches_an_uninterrupted_run(method: str, recipe: str, overrides: list[str], tmp_path: Path) -> None:
    straight = trainers.create(method, recipe=recipe, overrides=overrides).fit(tmp_path / "straight")

    class Interrupt(KeyboardInterrupt):
        pass

    def stop_after_two(epoch: int, record: dict[str, float]) -> None:
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        trainers.create(method, recipe=recipe, overrides=overrides).fit(tmp_path / "resumed", on_epoch_end=stop_after_two)
    assert not (tmp_path / "resumed").exists()
    assert (tmp_path / "resumed.partial" / "last.pt").exists()
    # Without --resume the kept progress is not thrown away silently.
    with pytest.raises(UserInputError, match="--resume"):
        trainers.create(method, recipe=recipe, overrides=overrides).fit(tmp_path / "resumed")
    epochs_run: list[int] = []
    resumed = trainers.create(method, recipe=recipe, overrides=overrides).fit(
        tmp_path / "resumed", resume=True, on_epoch_end=lambda epoch, record: epochs_run.append(epoch)
    )
    assert epochs_run == list(range(3, int(overrides[0].split("=")[1]) + 1))
    assert not (tmp_path / "resumed.partial").exists()
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    history = lambda p: json.loads((p / "config.json").read_text())["provenance"]["history"]  # noqa: E731
    assert history(straight) == history(resumed)


def test_different_seeds_give_different_weights(tmp_path: Path) -> None:
    base = ["epochs=1"]
    a = trainers.create("standard", recipe="defenses/digits-standard.toml", overrides=base + ["seed=0"]).fit(tmp_path / "a")
    b = trainers.create("standard", recipe="defenses/digits-standard.toml", overrides=base + ["seed=1"]).fit(tmp_path / "b")
    assert not torch.equal(_weights(a)["conv1.weight"], _weights(b)["conv1.weight"])
