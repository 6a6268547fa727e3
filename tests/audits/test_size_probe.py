"""The size probe (kind = "size") and its counting functions: count_params, count_macs against hand-computed
numbers, and an audit of a family of three digits students of different widths against their teacher (real tiny
models, a few seconds to train) whose report shows accuracy and robustness against size."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from robustdistill import load_model
from robustdistill.audits import audit
from robustdistill.errors import UserInputError
from robustdistill.models.size import count_macs, count_params

REPO = Path(__file__).resolve().parents[2]
# role -> cnn-tiny / cnn-small arch params: four sizes, the teacher the largest.
FAMILY = {"teacher": ("cnn-small", {"width": 16, "hidden": 32}), "student": ("cnn-tiny", {"width": 8, "hidden": 32}),
          "medium": ("cnn-tiny", {"width": 4, "hidden": 16}), "small": ("cnn-tiny", {"width": 2, "hidden": 8})}
BY_SIZE = ["small", "medium", "student", "teacher"]
EXTRA = ("medium", "small")


def test_count_params_is_the_sum_of_numel() -> None:
    torch.manual_seed(0)
    shared = nn.Linear(6, 6)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 6),
                        shared, nn.ReLU(), shared)  # the shared layer counts once
    assert count_params(net) == sum(p.numel() for p in net.parameters())
    assert count_params(net) == 3 * 4 * 9 + 2 * 4 + (64 * 6 + 6) + (36 + 6)
    assert count_params(nn.ReLU()) == 0


class Tiny(nn.Module):
    """A grouped conv, a depthwise strided conv, a linear layer called twice, and layers that cost no MACs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, kernel_size=3, padding=1, groups=2)  # 6 x 5 x 7 outputs, fan-in 2 x 9
        self.bn = nn.BatchNorm2d(6)
        self.depthwise = nn.Conv2d(6, 6, kernel_size=(3, 1), stride=2, groups=6, bias=False)  # 6 x 2 x 4, fan-in 3
        self.fc = nn.Linear(48, 48)
        self.head = nn.Linear(48, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn(self.conv(x)))
        out = self.depthwise(out).flatten(1)
        return self.head(self.fc(self.fc(out)))


def test_count_macs_matches_the_hand_count() -> None:
    net = Tiny()
    expected = (6 * 5 * 7) * (2 * 3 * 3) + (6 * 2 * 4) * (1 * 3 * 1) + 2 * (48 * 48) + 3 * 48
    assert expected == 3780 + 144 + 4608 + 144
    net.train()
    running = net.bn.running_mean.clone()
    assert count_macs(net, (4, 5, 7)) == expected
    assert count_macs(net, [4, 5, 7]) == expected  # any sequence
    # Counted in eval mode, without gradients, and the module is left as it was.
    assert net.training and all(m.training for m in net.modules())
    assert torch.equal(net.bn.running_mean, running)
    assert all(p.grad is None for p in net.parameters())
    assert not net.conv._forward_hooks and not net.fc._forward_hooks
    net.eval()
    assert count_macs(net, (4, 5, 7)) == expected and not net.training


def test_count_macs_bad_shape_is_a_user_error() -> None:
    with pytest.raises(UserInputError, match="input_shape"):
        count_macs(Tiny(), (3, 5, 7))  # the conv wants 4 channels
    with pytest.raises(UserInputError, match="input_shape"):
        count_macs(Tiny(), (4, 0, 7))


# --------------------------------------------------------------------------------------------------------------
# An audit of a family


@pytest.fixture(scope="module")
def family(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four digits classifiers of different widths, trained briefly with the standard recipe."""
    from robustdistill import trainers

    root = tmp_path_factory.mktemp("size-family")
    paths = {}
    for role, (arch, params) in FAMILY.items():
        inline = "{" + ", ".join(f"{k} = {v}" for k, v in params.items()) + "}"
        overrides = ["device=cpu", "epochs=3", "val_robust=false", f"arch={arch}", f"arch_params={inline}",
                     "lr_milestones=[]", "optimizer=adam", "lr=0.003", "weight_decay=0"]
        trainer = trainers.create("standard", recipe=REPO / "defenses" / "digits-standard.toml", overrides=overrides)
        paths[role] = Path(trainer.fit(root / role))
    return paths


def family_suite(family: dict[str, Path], probes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": "family", "seed": 0, "samples": 80, "data": {"kind": "digits"},
            "pipeline": {"teacher": str(family["teacher"]), "student": str(family["student"]),
                         "extra": {role: str(family[role]) for role in EXTRA}},
            "probes": probes, **extra}


def test_audit_a_family_by_size(family: dict[str, Path], tmp_path: Path) -> None:
    probes = [{"kind": "size"}, {"kind": "clean"}, {"kind": "attack", "attack": "fgsm"},
              {"kind": "attack", "name": "pgd-5", "attack": "pgd", "params": {"steps": 5}},
              {"kind": "masking", "steps": 3, "more_steps": 6, "restarts": 2, "square_queries": 20}]
    suite = family_suite(family, probes, threat_model={"norm": "linf", "eps": 0.125})
    report = audit(suite, out=tmp_path / "run", progress=False)
    run_dir = tmp_path / "run"

    # Rows for each role: exactly what the functions count on the loaded checkpoint, for one 1x8x8 digit.
    for role, path in family.items():
        model = load_model(path)
        rows = {r["metric"]: r for r in report.rows if r["probe"] == "size" and r["model"] == role}
        assert set(rows) == {"parameters", "macs"}
        assert rows["parameters"]["value"] == count_params(model) > 0
        assert rows["macs"]["value"] == count_macs(model, (1, 8, 8)) > 0
        assert rows["macs"]["params"] == {"input_shape": [1, 8, 8]}
        assert rows["parameters"]["ci95"] is None and rows["parameters"]["n"] is None
    sizes = {role: report.value(role, "size", "parameters") for role in family}
    assert sorted(sizes, key=sizes.__getitem__) == BY_SIZE
    saved = json.loads((run_dir / "report.json").read_text())
    assert sum(r["probe"] == "size" for r in saved["results"]) == 2 * len(family)

    # report.html and report.md show the family smallest first, with each attack.
    html = (run_dir / "report.html").read_text()
    md = (run_dir / "report.md").read_text()
    size = re.search(r'<section id="size">.*?</section>', html, re.DOTALL)
    assert size, "no size section in report.html"
    assert re.findall(r"<tr><td>([a-z]+)</td>", size.group(0)) == BY_SIZE
    for header in (">fgsm<", ">pgd-5<", "Clean accuracy"):
        assert header in size.group(0), header
    assert "data:image/png;base64," in size.group(0)
    assert (run_dir / "plots" / "accuracy_vs_size.png").stat().st_size > 1000
    section = md[md.index("## Accuracy and robustness against size"):]
    section = section[: section.index("\n## ", 1)]
    rows = [line.split(" | ")[0].removeprefix("| ") for line in section.splitlines() if line.startswith("| ")]
    assert rows == ["model", *BY_SIZE]
    assert "| model | parameters | MACs | clean | robust: fgsm | robust: pgd-5 |" in section


def test_gates_on_size_and_no_threat_model_needed(family: dict[str, Path], tmp_path: Path) -> None:
    """Size and clean accuracy alone need no threat model; parameters take a max gate like any value metric."""
    small = count_params(load_model(family["small"]))
    gates = {"small.footprint.parameters": {"max": small}, "teacher.footprint.parameters": {"max": small},
             "student.footprint.macs": {"min": 1}}
    report = audit(family_suite(family, [{"kind": "clean"}, {"kind": "size", "name": "footprint"}], gates=gates),
                   out=tmp_path / "run", progress=False)
    status = {g["metric"]: g["status"] for g in report.gates}
    assert status == {"small.footprint.parameters": "passed", "teacher.footprint.parameters": "failed",
                      "student.footprint.macs": "passed"}
    assert report.exit_code == 1
    assert {r["probe"] for r in report.rows} == {"clean", "footprint", "retention"}
    html = (tmp_path / "run" / "report.html").read_text()
    assert '<section id="size">' in html and "Robust accuracy" not in html.split('<section id="size">')[1].split(
        "</section>")[0]
    assert '<section id="curves">' not in html  # nothing attacks inputs


def test_no_size_probe_no_section(family: dict[str, Path], tmp_path: Path) -> None:
    report = audit(family_suite(family, [{"kind": "clean"}]), out=tmp_path / "run", progress=False)
    assert not [r for r in report.rows if r["metric"] in ("parameters", "macs")]
    html = (tmp_path / "run" / "report.html").read_text()
    assert 'id="size"' not in html and "against size" not in (tmp_path / "run" / "report.md").read_text()
    assert not (tmp_path / "run" / "plots" / "accuracy_vs_size.png").exists()
