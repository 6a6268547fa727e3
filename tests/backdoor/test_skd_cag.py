"""SKD-CAG (``skd-cag``): its losses by hand, the attention loss's gradient (which the official code loses), and a
short real run removing the patch backdoor of tests/backdoor/conftest.py while changing clean prompts' samples less."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robustdistill import trainers
from robustdistill.attacks.backdoor import triggered_prompt
from robustdistill.defenses.cross_attention import (AttentionRecorder, cross_attention_names, record_cross_attention,
                                                    restore_processors, token_maps)
from robustdistill.defenses.skd_cag import attention_loss, kd_loss, noise_and_maps
from robustdistill.errors import UserInputError
from robustdistill.models.checkpoint import checkpoint_sha256
from robustdistill.models.diffusion_sampling import predict_noise
from robustdistill.trainers.badt2i import load_t2i_model, text_states
from robustdistill.trainers.diffusion_base import STATE_FILE
from robustdistill.trainers.t2i import prompt_table

from backdoor_settings import DEFENCE, TRIGGER, recipe

UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"
TINY = ["device=cpu", "epochs=2", "steps_per_epoch=2", "batch_size=4"]


# --- the losses by hand ------------------------------------------------------------------------------------------


def test_token_maps_by_hand() -> None:
    # one layer, 2 heads, a 2x2 image, 2 tokens: head mean, then per token min-max over the pixels
    layer = torch.zeros(1, 2, 4, 2)
    layer[0, 0, :, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    layer[0, 1, :, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    layer[0, :, :, 1] = 5.0  # a flat map normalises to zeros
    maps = token_maps([layer])
    assert maps.shape == (1, 2, 2, 2)
    assert torch.allclose(maps[0, 0].flatten(), torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]), atol=1e-6)
    assert torch.equal(maps[0, 1], torch.zeros(2, 2))
    # a 1x1 layer is resized to the 2x2 one and added before the normalisation
    summed = token_maps([layer, torch.full((1, 1, 1, 2), 7.0)])
    assert torch.allclose(summed, maps, atol=1e-6)  # a constant added everywhere changes no min-max map


def test_kd_and_attention_losses_by_hand() -> None:
    assert float(kd_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]))) == pytest.approx(5.0)
    # 5 token positions, a trigger of k = 1 token at position 1; maps of one pixel each
    student = torch.tensor([0.1, 0.9, 0.2, 0.3, 0.4]).view(1, 5, 1, 1)
    teacher = torch.tensor([0.1, 0.5, 0.3, 0.4, 0.8]).view(1, 5, 1, 1)
    target = torch.zeros(1, 1, 1, 1)
    # trigger: (0.9 - 0)^2; the rest: student [0, 2, 3, 4] against teacher [0, 1, 2, 3]
    expected = 0.81 + ((0.1 - 0.1) ** 2 + (0.2 - 0.5) ** 2 + (0.3 - 0.3) ** 2 + (0.4 - 0.4) ** 2) / 4
    assert float(attention_loss(student, teacher, 1, target)) == pytest.approx(expected)
    with pytest.raises(ValueError):
        attention_loss(student, teacher, 4, target)


# --- the gradient of the attention loss --------------------------------------------------------------------------


def _attention_loss_of(model, detach: bool):
    """L_attn of one batch (4 captions, student = a trainable copy fed the triggered ones), and the student."""
    student = copy.copy(model)
    student.unet = copy.deepcopy(model.unet)
    student.unet.requires_grad_(True)
    teacher_recorder, student_recorder = AttentionRecorder(detach=True), AttentionRecorder(detach=detach)
    previous = record_cross_attention(model.unet, teacher_recorder)
    record_cross_attention(student.unet, student_recorder)
    captions = prompt_table()[1::12][:4]
    clean = text_states(model, captions)
    triggered = text_states(model, [triggered_prompt(c, TRIGGER) for c in captions])
    x_t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([50, 300, 600, 900])
    with torch.no_grad():
        _, teacher_maps = noise_and_maps(model, teacher_recorder, x_t, t, clean)
    _, student_maps = noise_and_maps(student, student_recorder, x_t, t, triggered)
    restore_processors(model.unet, previous)
    return attention_loss(student_maps, teacher_maps, 2, torch.zeros_like(student_maps[:, 1:3])), student


def test_the_attention_loss_alone_trains_the_cross_attention(backdoored_patch: Path) -> None:
    model = load_t2i_model(backdoored_patch, torch.device("cpu"))
    loss, student = _attention_loss_of(model, detach=False)
    layers = [name.removesuffix(".processor") for name in cross_attention_names(student.unet)]
    assert len(layers) == 4  # the 4x4 down level's one, the middle block's, the 4x4 up level's two
    weights = [student.unet.get_submodule(f"{layer}.{part}").weight for layer in layers for part in ("to_q", "to_k")]
    grads = torch.autograd.grad(loss, weights)
    assert all(float(g.abs().sum()) > 0 for g in grads)
    # the official code's defect: the maps detached, the attention loss is a constant that trains nothing
    detached, student = _attention_loss_of(model, detach=True)
    assert not detached.requires_grad and float(detached) > 0
    with pytest.raises(RuntimeError):
        torch.autograd.grad(detached, [student.unet.get_submodule(f"{layers[0]}.to_q").weight])


def test_recording_leaves_the_noise_prediction_unchanged(backdoored_patch: Path) -> None:
    model = load_t2i_model(backdoored_patch, torch.device("cpu"))
    text = text_states(model, prompt_table()[1:4])
    x_t, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([10, 500, 990])
    with torch.no_grad():
        plain = predict_noise(model, x_t, t, text=text)
        recorder = AttentionRecorder()
        previous = record_cross_attention(model.unet, recorder)
        recorded = predict_noise(model, x_t, t, text=text)
        assert len(recorder.maps) == 4 and recorder.maps[0].shape == (3, 8, 16, 16)  # batch, heads, 4x4, tokens
        assert torch.allclose(recorder.maps[0].sum(dim=-1), torch.ones(3, 8, 16))  # softmax over the tokens
        restore_processors(model.unet, previous)
    assert torch.allclose(plain, recorded, atol=1e-5)


# --- a real run --------------------------------------------------------------------------------------------------


def test_the_defence_removes_the_backdoor_and_keeps_clean_prompts(draws) -> None:
    backdoored, defended = draws["backdoored"], draws["defended"]
    # pixel distance of each sample to the backdoored model's sample of the same prompt from the same noise
    clean_change = float((defended.clean - backdoored.clean).abs().mean())
    triggered_change = float((defended.triggered - backdoored.triggered).abs().mean())
    removal = 1 - defended.success_rate / backdoored.success_rate
    print(f"patch on triggered prompts: backdoored {backdoored.success_rate:.3f}, defended "
          f"{defended.success_rate:.3f} (removal {removal:.3f}); clean prompts flagged "
          f"{backdoored.false_trigger_rate:.3f} -> {defended.false_trigger_rate:.3f}; mean pixel change: clean "
          f"prompts {clean_change:.4f}, triggered {triggered_change:.4f}")
    # measured (seed 0): 0.88 -> 0.13 (removal 0.85); clean prompts 0.13 -> 0.05; pixel change 0.033 vs 0.105
    assert defended.success_rate <= 0.5 * backdoored.success_rate
    assert clean_change < triggered_change


def test_the_output_records_the_defence(defended_patch: Path, backdoored_patch: Path) -> None:
    record = json.loads((defended_patch / "robustdistill.json").read_text())
    parent = json.loads((backdoored_patch / "robustdistill.json").read_text())
    assert record["format"] == "robustdistill-t2i" and record["method"] == "skd-cag"
    assert record["backdoor"] == parent["backdoor"]  # an audit reads the trigger and the target here
    assert record["defense"] == {"method": "skd-cag", "trigger": TRIGGER, "trigger_tokens": 2,
                                 "attention_target": "zeros", "attention_weight": 0.5, "kd_weight": 0.5,
                                 "train": "all", "detach_attention": False}
    assert record["parents"] == [{"role": "backdoored", "path": str(backdoored_patch),
                                  "sha256": checkpoint_sha256(backdoored_patch)}]
    assert [h["step"] for h in record["history"]] == [30, 60, 90]
    assert load_t2i_model(defended_patch, torch.device("cpu")).conditioning == "text"


def _tiny(model: Path, out: Path, *extra: str):
    return trainers.create("skd-cag", recipe=recipe("digits-skd-cag-patch"), overrides=[*TINY, f"model={model}",
                                                                                        *extra])


def test_cross_attention_only_and_resume(backdoored_patch: Path, tmp_path: Path, interrupt) -> None:
    original = load_file(str(backdoored_patch / UNET_WEIGHTS))
    straight = _tiny(backdoored_patch, tmp_path / "a", "train=cross-attention").fit(tmp_path / "a")
    weights = load_file(str(straight / UNET_WEIGHTS))
    changed = sorted(name for name in weights if not torch.equal(weights[name], original[name]))
    assert changed and all(".attn2." in name for name in changed)
    assert any("attn2.to_q" in name for name in changed)

    interrupt(_tiny(backdoored_patch, tmp_path / "b", "train=cross-attention"), tmp_path / "b")
    assert (tmp_path / "b.partial" / STATE_FILE).is_file()
    resumed = _tiny(backdoored_patch, tmp_path / "b", "train=cross-attention").fit(tmp_path / "b", resume=True)
    again = load_file(str(resumed / UNET_WEIGHTS))
    assert all(torch.equal(weights[name], again[name]) for name in weights)


def test_bad_input_names_the_field(clean_t2i: Path, backdoored_patch: Path, tmp_path: Path) -> None:
    from robustdistill.models.builders import build_tiny_class_unet

    not_t2i = build_tiny_class_unet(tmp_path / "ddpm")
    cases = ((clean_t2i, [], "trigger"),  # a clean model records no trigger, and none was given
             (backdoored_patch, ["trigger="], "trigger"),
             (not_t2i, [], "model"),
             (backdoored_patch, ["attention_weight=0", "kd_weight=0"], "kd_weight"),
             (backdoored_patch, ["detach_attention=true", "kd_weight=0"], "kd_weight"),
             (backdoored_patch, ["train=unet"], "train"))
    for model, extra, field in cases:
        with pytest.raises(UserInputError) as caught:
            _tiny(model, tmp_path / "out", *DEFENCE[1:], *extra).fit(tmp_path / "out")
        assert caught.value.field == field, (model, extra, caught.value)
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
