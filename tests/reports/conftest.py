"""Fixtures for the report tests: a real audit-like run directory built from two tiny digits models.

Nothing here is a stand-in for a number: the models are trained on the built-in digits, and every row of
report.json (accuracies, robust accuracies, curves, transfer, agreement, the masking checks' evidence) is measured
on them with robustdistill.attacks. The runner in robustdistill/audits produces the real thing; this builder only
has to produce the same schema (DESIGN.md, "report.json").
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
EPS = 0.125  # attacks/digits-linf.toml
CURVE_EPS = [0.0, 0.03, 0.06, 0.09, 0.125, 0.2, 0.3]


def wilson(correct: int, n: int, z: float = 1.959964) -> list[float] | None:
    if n == 0:
        return None
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _acc_row(probe: str, model: str, metric: str, correct: torch.Tensor, params: dict[str, Any]) -> dict[str, Any]:
    n = int(correct.numel())
    k = int(correct.sum())
    return {
        "probe": probe,
        "model": model,
        "metric": metric,
        "value": k / n if n else float("nan"),
        "ci95": wilson(k, n),
        "n": n,
        "params": params,
    }


@torch.no_grad()
def _predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def build_run_dir(
    run_dir: Path,
    teacher_path: Path,
    student_path: Path,
    *,
    n: int = 200,
    seed: int = 0,
    suite_name: str = "digits-report-test",
    examples: int = 10,
) -> Path:
    """Audit ``student_path`` against ``teacher_path`` on ``n`` digits test examples and write run_dir/report.json
    and run_dir/artifacts/examples.npz in the runner's schema."""
    from robustdistill import __version__, attacks
    from robustdistill.data import load_split
    from robustdistill.models import checkpoint_sha256, load_model

    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    roles = {"teacher": load_model(teacher_path), "student": load_model(student_path)}
    data = load_split({"kind": "digits"}, "test").subset(n, seed=seed)
    x, y = data.x, data.y
    rows: list[dict[str, Any]] = []
    adv: dict[tuple[str, str], torch.Tensor] = {}
    specs = {"fgsm": {"attack": "fgsm", "eps": EPS}, "pgd": {"attack": "pgd", "eps": EPS, "steps": 20}}
    for role, model in roles.items():
        rows.append(_acc_row("clean", role, "accuracy", _predict(model, x) == y, {}))
        for name, spec in specs.items():
            params = {k: v for k, v in spec.items() if k != "attack"}
            atk = attacks.create(spec["attack"], seed=seed, **params)
            x_adv = atk(model, x, y)
            adv[(role, name)] = x_adv
            wrong = _predict(model, x_adv) != y
            rows.append(_acc_row("attack", role, "robust_accuracy", ~wrong, dict(spec)))
            rows.append({**_acc_row("attack", role, "success_rate", wrong, dict(spec)), "ci95": None})
            l2 = (x_adv - x).flatten(1).norm(dim=1)[wrong]
            rows.append(
                {
                    "probe": "attack",
                    "model": role,
                    "metric": "median_l2",
                    "value": float(l2.median()) if l2.numel() else None,
                    "ci95": None,
                    "n": int(wrong.sum()),
                    "params": dict(spec),
                }
            )
        for eps in CURVE_EPS:
            x_adv = attacks.create("pgd", eps=eps, steps=10, seed=seed)(model, x, y) if eps > 0 else x
            rows.append(
                _acc_row(
                    "curve",
                    role,
                    "robust_accuracy",
                    _predict(model, x_adv) == y,
                    {"attack": "pgd", "eps": eps, "steps": 10},
                )
            )
    for source, target in (("teacher", "student"), ("student", "teacher")):
        rows.append(
            _acc_row(
                "transfer",
                target,
                "transfer_accuracy",
                _predict(roles[target], adv[(source, "pgd")]) == y,
                {"attack": "pgd", "eps": EPS, "source": source, "target": target},
            )
        )
    agree_clean = _predict(roles["teacher"], x) == _predict(roles["student"], x)
    rows.append(_acc_row("agreement", "student", "agreement_clean", agree_clean, {"with": "teacher"}))
    x_adv = adv[("student", "pgd")]
    agree_adv = _predict(roles["teacher"], x_adv) == _predict(roles["student"], x_adv)
    rows.append(_acc_row("agreement", "student", "agreement_adv", agree_adv, {"with": "teacher", "attack": "pgd"}))
    by_key = {
        (r["model"], r["probe"], r["params"].get("attack"), r["metric"]): r
        for r in rows
        if r["probe"] in ("clean", "attack")
    }
    for role in roles:
        t = by_key[("teacher", "attack", "pgd", "robust_accuracy")]["value"]
        s = by_key[("student", "attack", "pgd", "robust_accuracy")]["value"]
        if role == "student":
            rows.append(
                {
                    "probe": "retention",
                    "model": "student",
                    "metric": "robust_accuracy_retention",
                    "value": s / t if t else None,
                    "ci95": None,
                    "n": n,
                    "params": {"attack": "pgd"},
                }
            )

    # Masking checks, measured: an iterative attack weaker than FGSM; success far from 100% at a huge eps.
    flags: list[dict[str, Any]] = []
    for role, model in roles.items():
        fgsm = by_key[(role, "attack", "fgsm", "robust_accuracy")]["value"]
        pgd = by_key[(role, "attack", "pgd", "robust_accuracy")]["value"]
        x_big = attacks.create("pgd", eps=0.5, steps=10, seed=seed)(model, x, y)
        big_success = float((_predict(model, x_big) != y).float().mean())
        rows.append(
            {
                "probe": "masking",
                "model": role,
                "metric": "success_rate_large_eps",
                "value": big_success,
                "ci95": None,
                "n": n,
                "params": {"attack": "pgd", "eps": 0.5, "steps": 10},
            }
        )
        if pgd > fgsm + 0.02:
            flags.append(
                {
                    "kind": "gradient_masking",
                    "model": role,
                    "check": "iterative_weaker_than_fgsm",
                    "evidence": f"PGD-20 robust accuracy {pgd:.3f} > FGSM robust accuracy {fgsm:.3f} at eps={EPS}",
                }
            )
        if big_success < 0.99:
            flags.append(
                {
                    "kind": "gradient_masking",
                    "model": role,
                    "check": "large_eps_not_saturating",
                    "evidence": f"PGD-10 success rate at eps=0.5 is {big_success:.3f}, expected about 1.0",
                }
            )

    value = lambda role, atk: by_key[(role, "attack", atk, "robust_accuracy")]["value"]
    clean_s = by_key[("student", "clean", None, "accuracy")]["value"]
    gate_specs = [
        ("student.clean.accuracy", ">=", 0.5, clean_s),
        ("student.pgd.robust_accuracy", ">=", 0.3, value("student", "pgd")),
        ("student.fgsm.robust_accuracy", ">=", 0.2, value("student", "fgsm")),
    ]
    gates = [
        {"metric": m, "op": op, "threshold": th, "value": v, "passed": bool(v >= th)} for m, op, th, v in gate_specs
    ]

    # A grid of examples: the first `examples` test digits, PGD per role.
    k = min(examples, n)
    arrays: dict[str, np.ndarray] = {
        "clean": x[:k].numpy().astype(np.float32),
        "labels": y[:k].numpy(),
        "attack": np.array("pgd"),
    }
    for role, model in roles.items():
        arrays[f"adv_{role}"] = adv[(role, "pgd")][:k].numpy().astype(np.float32)
        arrays[f"pred_clean_{role}"] = _predict(model, x[:k]).numpy()
        arrays[f"pred_adv_{role}"] = _predict(model, adv[(role, "pgd")][:k]).numpy()
    (run_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    np.savez(run_dir / "artifacts" / "examples.npz", **arrays)

    report = {
        "suite": {
            "name": suite_name,
            "threat_model": {"norm": "linf", "eps": EPS},
            "data": {"kind": "digits", "split": "test", "n": n},
            "probes": [
                {"probe": "clean"},
                {"probe": "attack", "attack": "fgsm", "eps": EPS},
                {"probe": "attack", "attack": "pgd", "eps": EPS, "steps": 20},
                {"probe": "curve", "attack": "pgd", "eps": CURVE_EPS},
                {"probe": "transfer", "attack": "pgd"},
                {"probe": "agreement"},
                {"probe": "masking"},
            ],
            "gates": {m: {"min": th} for m, _, th, _ in gate_specs},
        },
        "manifest": {
            "robustdistill": __version__,
            "torch": torch.__version__,
            "git": "unknown",
            "seed": seed,
            "checkpoints": {
                role: {"path": str(p), "sha256": checkpoint_sha256(p)}
                for role, p in (("teacher", teacher_path), ("student", student_path))
            },
            "started": started,
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
        "results": rows,
        "gates": gates,
        "flags": flags,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return run_dir


def train_pair(root: Path, epochs: int = 5) -> tuple[Path, Path]:
    """A clean teacher and a defensively distilled student (expected to mask gradients), tiny and quick."""
    from robustdistill import trainers

    common = [
        f"epochs={epochs}",
        "device=cpu",
        "val_robust=false",
        "arch=cnn-tiny",
        "lr_milestones=[]",
        "optimizer=adam",
    ]
    teacher = trainers.create(
        "standard", recipe=REPO / "defenses/digits-standard.toml", overrides=[*common, "lr=0.003", "weight_decay=0"]
    ).fit(root / "teacher")
    student = trainers.create(
        "defensive-distillation", recipe=REPO / "defenses/digits-defensive-distillation.toml", overrides=common
    ).fit(root / "student-dd")
    return Path(teacher), Path(student)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; with two on a busy 2-core machine they ran ~40x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def trained_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    with one_thread():
        return train_pair(tmp_path_factory.mktemp("report-models"))


@pytest.fixture(scope="session")
def audited_run(trained_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with report.json and artifacts/examples.npz (shared: copy it before rendering)."""
    with one_thread():
        return build_run_dir(tmp_path_factory.mktemp("report-run"), *trained_pair)
