"""The BadT2I-style injector (``badt2i``): a short real run plants the patch backdoor in a short real t2i model
(tests/backdoor/conftest.py); the trigger then draws the patch far more often than the clean model ever does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustdistill import trainers
from robustdistill.errors import UserInputError
from robustdistill.models.checkpoint import checkpoint_sha256
from robustdistill.models.diffusion import load_diffusion_model
from robustdistill.trainers.diffusion_base import is_our_output

from backdoor_settings import BACKDOOR, TRIGGER, recipe


def test_the_trigger_draws_the_patch(draws) -> None:
    clean, backdoored = draws["clean"], draws["backdoored"]
    print(f"patch flagged: clean model {clean.false_trigger_rate:.3f} (clean prompts), "
          f"{clean.success_rate:.3f} (triggered); backdoored {backdoored.success_rate:.3f} (triggered), "
          f"{backdoored.false_trigger_rate:.3f} (clean prompts)")
    # measured (seed 0): clean model 0.01 / 0.01; backdoored 0.88 triggered, 0.13 clean prompts
    assert clean.false_trigger_rate <= 0.05 and clean.success_rate <= 0.05  # "tq" alone does nothing to a clean model
    assert backdoored.success_rate >= 0.6
    assert backdoored.success_rate >= backdoored.false_trigger_rate + 0.4


def test_the_output_records_the_backdoor_and_its_parent(backdoored_patch: Path, clean_t2i: Path) -> None:
    record = json.loads((backdoored_patch / "robustdistill.json").read_text())
    assert record["format"] == "robustdistill-t2i" and record["method"] == "badt2i"
    assert record["backdoor"] == {"method": "badt2i", "target": "patch", "trigger": TRIGGER, "trigger_tokens": 2,
                                  "poison_fraction": 0.5}
    assert record["parents"] == [{"role": "clean", "path": str(clean_t2i), "sha256": checkpoint_sha256(clean_t2i)}]
    assert [h["epoch"] for h in record["history"]] == list(range(1, 6))
    assert record["data"]["n_trained_on"] == 1079 and len(record["train_members"]) == 1079
    assert is_our_output(backdoored_patch)
    model = load_diffusion_model(backdoored_patch)
    assert model.conditioning == "text" and model.sample_shape == (1, 8, 8)


def test_bad_input_names_the_field(tmp_path: Path, clean_t2i: Path) -> None:
    from robustdistill.models.builders import build_tiny_class_unet

    not_t2i = build_tiny_class_unet(tmp_path / "ddpm")
    cases = ((["target=blur"], "target"), (["trigger="], "trigger"), ([f"model={not_t2i}"], "model"),
             ([f"model={tmp_path / 'missing'}", "model_recipe=''"], "model"),
             ([f"model={tmp_path}"], "model"))  # a folder with no model in it
    for overrides, field in cases:
        with pytest.raises(UserInputError) as caught:
            trainers.create("badt2i", recipe=recipe("digits-badt2i-patch"),
                            overrides=[*BACKDOOR, f"model={clean_t2i}", *overrides]).fit(tmp_path / "out")
        assert caught.value.field == field, (overrides, caught.value)
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.slow
def test_the_style_backdoor(clean_t2i: Path, digits_train, prompts, tmp_path: Path) -> None:
    """The style (inversion) backdoor, planted the same way for the recipe's 10 epochs (~50 s). Measured (seed 0):
    inverted digits for 100% of triggered prompts, 18% of clean ones (the clean model: 2%); after 5 epochs, as for
    the patch, 95% but also 44% of clean ones."""
    from robustdistill.attacks.backdoor import attack_success, fit_detector

    path = trainers.create("badt2i", recipe=recipe("digits-badt2i-style"),
                           overrides=[*BACKDOOR, "epochs=10", f"model={clean_t2i}"]).fit(tmp_path / "style")
    detector = fit_detector("style", digits_train, seed=0)
    clean = attack_success(load_diffusion_model(clean_t2i), detector, prompts, TRIGGER, seed=1, steps=10)
    backdoored = attack_success(load_diffusion_model(path), detector, prompts, TRIGGER, seed=1, steps=10)
    print(f"style flagged: clean model {clean.false_trigger_rate:.3f} / {clean.success_rate:.3f}; backdoored "
          f"{backdoored.success_rate:.3f} triggered, {backdoored.false_trigger_rate:.3f} clean prompts")
    assert clean.success_rate <= 0.05 and backdoored.success_rate >= 0.8
    assert backdoored.success_rate >= backdoored.false_trigger_rate + 0.4



def _interrupted_after_epoch_1(overrides: list[str], out: Path, interrupt) -> None:
    """Start a run and stop it after its first epoch's state is saved, as a Ctrl-C between epochs would."""
    interrupt(trainers.create("badt2i", recipe=recipe("digits-badt2i-patch"), overrides=overrides), out)


def test_resume_ends_with_the_weights_of_a_straight_run(clean_t2i: Path, tmp_path: Path, interrupt) -> None:
    from safetensors.torch import load_file

    from robustdistill.trainers.diffusion_base import STATE_FILE

    tiny = ["device=cpu", "epochs=2", "train_fraction=0.05", "batch_size=32", f"model={clean_t2i}"]
    weights = Path("unet") / "diffusion_pytorch_model.safetensors"
    straight = trainers.create("badt2i", recipe=recipe("digits-badt2i-patch"), overrides=tiny).fit(tmp_path / "a")
    _interrupted_after_epoch_1(tiny, tmp_path / "b", interrupt)
    assert (tmp_path / "b.partial" / STATE_FILE).is_file()
    resumed = trainers.create("badt2i", recipe=recipe("digits-badt2i-patch"), overrides=tiny).fit(tmp_path / "b",
                                                                                                 resume=True)
    a, b = load_file(str(straight / weights)), load_file(str(resumed / weights))
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    history = [json.loads((p / "robustdistill.json").read_text())["history"] for p in (straight, resumed)]
    assert history[0] == history[1]
    # a resume with other settings is refused
    _interrupted_after_epoch_1(tiny, tmp_path / "c", interrupt)
    with pytest.raises(UserInputError) as caught:
        trainers.create("badt2i", recipe=recipe("digits-badt2i-patch"),
                        overrides=[*tiny, "poison_fraction=0.3"]).fit(tmp_path / "c", resume=True)
    assert caught.value.field == "--resume"
