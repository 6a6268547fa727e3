"""The language-model trainers (sft, seq-kd, logit-kd) on real tiny models built offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustdistill import cli, trainers
from robustdistill.attacks.judges import RefusalPrefixJudge
from robustdistill.data.instruction_spec import InstructionSpec
from robustdistill.errors import UserInputError
from robustdistill.models import build_tiny_causal_lm, checkpoint_sha256, load_model
from robustdistill.models.language import load_language_model
from robustdistill.models.lm_text import encode_pair, generate, pad_batch, response_logits, special_ids
from robustdistill.trainers.lm import GENERATIONS_FILE, generations_fingerprint
from robustdistill.trainers.lm_config import LMTrainConfig, LogitKDConfig, load_lm_recipe
from robustdistill.trainers.lm_objectives import OBJECTIVES

ROOT = Path(__file__).resolve().parents[2]
# Few families, few examples: a teacher that learns to refuse in seconds. "subtract" is a held-out family.
DATA = {"kind": "instructions", "n": 160, "seed": 0, "families": ["harmful", "capital", "uppercase", "subtract"]}
TEACHER = {"data": DATA, "init": {"arch": "llama", "width": 64, "layers": 2, "heads": 4}, "epochs": 6,
           "batch_size": 8, "lr": 5e-3, "seed": 0}
STUDENT_INIT = {"arch": "llama", "width": 32, "layers": 1, "heads": 2}


class Interrupted(Exception):
    pass


def stop_after_first_epoch(epoch: int, record: dict[str, float]) -> None:
    raise Interrupted


def create(method: str, **settings: object) -> trainers.Trainer:
    config_class = trainers.TRAINERS.get(method).config_class
    return trainers.create(method, config_class(**settings))


def refusal_rate(lm, prompts: list[str]) -> float:
    jailbroken = RefusalPrefixJudge().judge(prompts, generate(lm, prompts, max_new_tokens=24))
    return 1 - sum(jailbroken) / len(jailbroken)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_language_model(path).model.state_dict()


@pytest.fixture(scope="module")
def spec() -> InstructionSpec:
    return InstructionSpec(**DATA)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create("sft", **TEACHER).fit(tmp_path_factory.mktemp("lm") / "teacher")


def test_every_recipe_loads_and_typos_are_named() -> None:
    recipes = sorted((ROOT / "defenses").glob("instructions-*.toml")) + sorted((ROOT / "defenses").glob("llm-*.toml"))
    assert len(recipes) == 6
    for recipe in recipes:
        method = trainers.read_toml(recipe, "--config")["method"]
        config_class = trainers.TRAINERS.get(method).config_class
        config = load_lm_recipe(config_class, recipe, [], method)
        assert isinstance(config, config_class)
        if recipe.name.startswith("llm-"):
            assert config.lora is not None and config.device == "cuda"
    teacher_recipe = ROOT / "defenses" / "instructions-teacher.toml"
    with pytest.raises(UserInputError) as typo:
        load_lm_recipe(LMTrainConfig, teacher_recipe, ["epochz=3"], "sft")
    assert typo.value.field == "epochz"
    with pytest.raises(UserInputError) as both:
        load_lm_recipe(LMTrainConfig, teacher_recipe, ["base=/models/x"], "sft")
    assert both.value.field == "base"
    with pytest.raises(UserInputError) as data_typo:
        load_lm_recipe(LMTrainConfig, teacher_recipe, ["data.famlies=['add']"], "sft")
    assert data_typo.value.field.startswith("data")


def test_sft_lowers_val_loss_and_teaches_refusal(teacher: Path, spec: InstructionSpec, tmp_path: Path) -> None:
    history = load_model(teacher).provenance["history"]
    assert history[-1]["val_loss"] < 0.7 * history[0]["val_loss"]
    harmful = [e.prompt for e in spec.load("test").where(family="harmful")]
    assert len(harmful) >= 10
    assert refusal_rate(load_model(teacher), harmful) >= 0.8
    fresh = load_model(build_tiny_causal_lm(tmp_path / "fresh", arch="llama", width=64, layers=2, heads=4))
    assert refusal_rate(fresh, harmful) <= 0.2


def test_provenance_records_members_fingerprint_and_parents(teacher: Path, spec: InstructionSpec) -> None:
    record = load_model(teacher).provenance
    trained = spec.load("train").where(held_out=False)
    assert record["method"] == "sft" and record["parents"] == []
    assert record["data"]["fingerprint"] == trained.fingerprint and record["data"]["split"] == "train"
    assert record["train_members"] == list(trained.ids)
    assert not any(i.startswith("subtract-") for i in record["train_members"])
    assert any(i.startswith("subtract-") for i in spec.load("train").ids)  # the held-out family was there to skip
    assert record["recipe"]["config"]["init"]["width"] == 64
    assert set(record["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in record["files"])


def test_provenance_file_that_is_not_a_json_object_is_refused(tmp_path: Path) -> None:
    path = build_tiny_causal_lm(tmp_path / "lm", arch="llama", width=16, layers=1, heads=2)
    (path / "robustdistill.json").write_text("[1, 2]")
    with pytest.raises(UserInputError, match="JSON object"):
        load_model(path)
    (path / "robustdistill.json").write_text("not json")
    with pytest.raises(UserInputError, match="not readable JSON"):
        load_model(path)


def test_seq_kd_trains_on_the_teachers_text_and_resume_reuses_it(teacher: Path, spec: InstructionSpec,
                                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    settings = {"data": DATA, "init": STUDENT_INIT, "teacher": str(teacher), "epochs": 2, "batch_size": 8,
                "max_train_examples": 24, "max_new_tokens": 24, "lr": 5e-3}
    out = tmp_path / "seq-kd"
    with pytest.raises(Interrupted):
        create("seq-kd", **settings).fit(out, on_epoch_end=stop_after_first_epoch)
    cached = json.loads((tmp_path / "seq-kd.partial" / GENERATIONS_FILE).read_text())
    examples = spec.load("train").where(held_out=False).select(cached["ids"])
    assert len(examples) == 24
    prompts = [e.prompt for e in examples]
    assert cached["responses"] == generate(load_model(teacher), prompts, max_new_tokens=24)
    assert cached["responses"] != [e.response for e in examples]  # a 6-epoch teacher does not reproduce them all

    def no_generation(*args: object, **kwargs: object) -> list[str]:
        raise AssertionError("resume generated the teacher's answers again")

    monkeypatch.setattr("robustdistill.trainers.lm.generate", no_generation)
    path = create("seq-kd", **settings).fit(out, resume=True)
    record = load_model(path).provenance
    assert record["teacher_generations"]["fingerprint"] == generations_fingerprint(cached["ids"], cached["responses"])
    assert record["parents"] == [{"role": "teacher", "path": str(teacher), "sha256": checkpoint_sha256(teacher)}]
    assert record["data"]["fingerprint"] == examples.fingerprint  # the data's examples, not the teacher's text


def test_logit_kd_resume_and_seed_give_identical_weights(teacher: Path, tmp_path: Path) -> None:
    # lmbda = 0.5: on-policy sampling and dropout-free Llama; the sampled batches must replay exactly on resume.
    settings = {"data": DATA, "init": STUDENT_INIT, "teacher": str(teacher), "epochs": 2, "batch_size": 8,
                "max_train_examples": 16, "max_new_tokens": 12, "lmbda": 0.5, "objective": "gjsd", "lr": 5e-3}
    whole = create("logit-kd", **settings).fit(tmp_path / "whole")
    again = create("logit-kd", **settings).fit(tmp_path / "again")
    with pytest.raises(Interrupted):
        create("logit-kd", **settings).fit(tmp_path / "resumed", on_epoch_end=stop_after_first_epoch)
    resumed = create("logit-kd", **settings).fit(tmp_path / "resumed", resume=True)
    reference = weights(whole)
    for other in (again, resumed):
        other_weights = weights(other)
        assert all(torch.equal(reference[name], other_weights[name]) for name in reference)
    assert not (tmp_path / "resumed.partial").exists()
    history = load_model(resumed).provenance["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_logit_kd_refuses_a_teacher_with_another_tokenizer(tmp_path: Path) -> None:
    other = build_tiny_causal_lm(tmp_path / "other-teacher", arch="llama", vocab_size=320, width=32, layers=1, heads=2)
    trainer = create("logit-kd", data=DATA, init=STUDENT_INIT, teacher=str(other), epochs=1)
    with pytest.raises(UserInputError) as refused:
        trainer.fit(tmp_path / "student")
    assert refused.value.field == "teacher" and "seq-kd" in (refused.value.fix or "")
    assert not (tmp_path / "student").exists() and not (tmp_path / "student.partial").exists()


def test_missing_teacher_is_trained_from_its_recipe_and_missing_base_is_named(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny-teacher.toml"
    recipe.write_text('method = "sft"\nepochs = 1\nbatch_size = 8\n[init]\narch = "llama"\nwidth = 16\nlayers = 1\n'
                      'heads = 2\n[data]\nn = 80\nfamilies = ["harmful", "capital"]\n')
    teacher = tmp_path / "made" / "teacher"
    path = create("logit-kd", data={**DATA, "n": 80, "families": ["harmful", "capital"]}, init=STUDENT_INIT,
                  teacher=str(teacher), teacher_recipe=str(recipe), epochs=1, max_train_examples=8).fit(tmp_path / "s")
    assert load_model(teacher).provenance["method"] == "sft"
    assert load_model(path).provenance["parents"][0]["sha256"] == checkpoint_sha256(teacher)
    with pytest.raises(UserInputError) as missing:
        create("sft", data=DATA, base=str(tmp_path / "nowhere"), epochs=1).fit(tmp_path / "x")
    assert missing.value.field == "base" and not (tmp_path / "x.partial").exists()


def test_user_folder_as_out_is_refused_before_work(teacher: Path, tmp_path: Path, snapshot, plant_users_files) -> None:
    before = plant_users_files(tmp_path / "mine", {"notes.txt": "my notes", "config.json": "{}"})
    with pytest.raises(UserInputError) as refused:
        create("sft", **TEACHER).fit(tmp_path / "mine")
    assert refused.value.field == "out"
    assert snapshot(tmp_path / "mine") == before and not (tmp_path / "mine.partial").exists()


@pytest.fixture(scope="module")
def kd_batch(teacher: Path, spec: InstructionSpec):
    """A logit-kd trainer with its teacher loaded, a fresh student and one batch of training examples."""
    trainer = create("logit-kd", data=DATA, init=STUDENT_INIT, teacher=str(teacher), epochs=1)
    trainer.load_teachers()
    student = trainer.build_student()
    trainer.check_student(student)
    trainer.total_steps = 10
    examples = list(spec.load("train").where(held_out=False))[:6]
    batch = pad_batch([encode_pair(student, e.prompt, e.response) for e in examples], special_ids(student)[1])
    return trainer, student, batch


def test_logit_kd_prompt_tokens_never_reach_the_loss(kd_batch) -> None:
    trainer, student, batch = kd_batch
    with torch.no_grad():
        student_logits = response_logits(student, batch)
        teacher_logits = response_logits(trainer.teacher, batch)
    changed = teacher_logits.clone()
    changed[~batch.target_mask] = torch.randn_like(changed[~batch.target_mask]) * 50
    assert bool((~batch.target_mask).any()) and bool(batch.target_mask.any())
    for objective in OBJECTIVES:
        trainer.config = LogitKDConfig(**{**trainer.config.__dict__, "objective": objective, "ce_weight": 0.5})
        original = trainer.loss(student_logits, teacher_logits, batch, step=3)
        assert torch.equal(original, trainer.loss(student_logits, changed, batch, step=3)), objective
        changed_response = teacher_logits.clone()
        changed_response[batch.target_mask] += torch.randn_like(changed_response[batch.target_mask])
        assert not torch.equal(original, trainer.loss(student_logits, changed_response, batch, step=3)), objective


def test_every_objective_trains_and_lowers_its_loss(kd_batch) -> None:
    trainer, student, batch = kd_batch
    start = {name: p.detach().clone() for name, p in student.model.named_parameters()}
    for objective in OBJECTIVES:
        with torch.no_grad():
            for name, p in student.model.named_parameters():
                p.copy_(start[name])
        trainer.config = LogitKDConfig(**{**trainer.config.__dict__, "objective": objective, "ce_weight": 0.0})
        optimizer = torch.optim.Adam(student.model.parameters(), lr=1e-2)
        with torch.no_grad():
            teacher_logits = response_logits(trainer.teacher, batch)
        losses = []
        for _ in range(6):
            loss = trainer.loss(response_logits(student, batch), teacher_logits, batch, step=0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        assert all(torch.isfinite(torch.tensor(losses))), objective
        moved = any(not torch.equal(start[name], p) for name, p in student.model.named_parameters())
        assert moved, objective
        if objective != "taid":  # TAID's target moves with the student itself: its loss need not fall step by step
            assert losses[-1] < losses[0], (objective, losses)


def test_lora_run_writes_a_plain_model_directory(teacher: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    path = create("sft", data=DATA, base=str(teacher), lora={"r": 4, "alpha": 8.0}, epochs=1, batch_size=8,
                  max_train_examples=16, lr=1e-2).fit(tmp_path / "lora")
    assert not (path / "adapter_config.json").exists() and (path / "model.safetensors").is_file()
    lm = load_language_model(path)
    assert not any("lora" in name for name in lm.model.state_dict())
    assert lm.provenance["parents"] == [{"role": "base", "path": str(teacher), "sha256": checkpoint_sha256(teacher)}]
    base, tuned = weights(teacher), lm.model.state_dict()
    assert set(base) == set(tuned)
    assert any(not torch.equal(base[name], tuned[name]) for name in base)  # the merged adapters changed weights


def test_cli_trains_the_teacher_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lm-teacher"
    code = cli.main(["train", "sft", "--config", str(ROOT / "defenses" / "instructions-teacher.toml"), "--out", str(out),
                     "--set", "epochs=1", "--set", "data.n=80", "--set", "data.families=['harmful', 'capital']", "--set", "init.width=16", "--set", "init.heads=2"])
    assert code == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert load_model(out).provenance["recipe"]["config"]["epochs"] == 1


def test_bf16_autocast_trains_to_the_same_loss_and_keeps_float32_weights(tmp_path: Path) -> None:
    """Mixed precision changes the arithmetic, not the result: the same run under bf16 autocast ends within a few
    percent of the float32 run's losses, and its saved weights are float32."""
    settings = {**TEACHER, "epochs": 2, "device": "cpu"}
    plain = create("sft", **settings).fit(tmp_path / "fp32")
    mixed_trainer = create("sft", **settings, autocast="bf16")
    mixed = mixed_trainer.fit(tmp_path / "bf16")
    losses = [json.loads((p / "robustdistill.json").read_text())["history"] for p in (plain, mixed)]
    for a, b in zip(*losses):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=0.05)
    assert losses[0] != losses[1]  # bf16 really ran: not bit-identical
    assert all(t.dtype == torch.float32 for t in weights(mixed).values())
