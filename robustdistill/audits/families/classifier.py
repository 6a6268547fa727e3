"""The image classifier family: models are nn.Modules mapping [0, 1] images to logits; the evaluation data is an
image split (x, y) from the suite's ``[data]``; attack probes work within the suite's threat model.

What it adds to the family-agnostic core: the forward-pass check that each model fits the data, the report's
adversarial examples (which attack probe fills the grid, which points, merged into artifacts/examples.npz), retention
rows (student over teacher accuracy, paired-bootstrap intervals) and the cross-probe gradient-masking checks, both
derived from the stored units' per-point masks.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustdistill.audits import masking
from robustdistill.audits.families.base import FAMILIES, EvalData, ModelFamily, Plan, StoredUnit
from robustdistill.audits.probes.image.attack import default_examples_probe
from robustdistill.audits.probes.image.context import ImageContext
from robustdistill.audits.store import ARTIFACTS
from robustdistill.errors import UserInputError
from robustdistill.stats import bootstrap_ratio_ci
from robustdistill.utils import atomic_path, model_device

log = logging.getLogger(__name__)

EXAMPLES = "examples.npz"
N_EXAMPLES = 12


def role_field(role: str) -> str:
    return f"pipeline.{role}" if role in ("teacher", "student") else f"pipeline.extra.{role}"


@FAMILIES.register("classifier")
class ClassifierFamily(ModelFamily):
    name = "classifier"
    title = "an image classifier"

    def accepts(self, model: Any) -> bool:
        return isinstance(model, nn.Module)

    def load_data(self, suite: Any) -> EvalData:
        from robustdistill.data import load_split

        return load_split(suite.data, suite.split).subset(suite.samples, seed=suite.seed)

    def check_models(self, models: Mapping[str, Any], data: Any, suite: Any) -> None:
        check_compatible(models, data.x, data.num_classes, suite.data.kind)

    def plan(self, suite: Any, data: Any) -> Plan:
        examples = suite.examples or default_examples_probe(suite.probes)
        rng = np.random.default_rng(suite.seed)
        example_idx = np.sort(rng.choice(len(data), size=min(N_EXAMPLES, len(data)), replace=False))
        return Plan(manifest={"examples": examples}, context={"example_idx": example_idx, "examples_probe": examples})

    def unit_identity(self, probe: Any, plan: Plan) -> dict[str, Any]:
        return {"examples": probe.name == plan.manifest["examples"]}

    def context(self, data: Any, models: Mapping[str, Any], suite: Any, artifacts: Path, plan: Plan) -> ImageContext:
        return ImageContext(models=dict(models), seed=suite.seed, batch_size=suite.batch_size, artifacts=artifacts,
                            x=data.x, y=data.y, **plan.context)

    def derive(self, manifest: Mapping[str, Any], units: Sequence[StoredUnit]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Retention rows, and the gradient-masking checks across attack and curve units."""
        attacks: dict[str, list[masking.AttackResult]] = {}
        curves: dict[str, list[tuple[str, list[tuple[float, np.ndarray]]]]] = {}
        correct: dict[tuple[str, str], np.ndarray] = {}  # (role, probe) -> per-point correct (clean or robust)
        retainable: list[tuple[str, str, dict[str, Any]]] = []  # (probe name, kind, params) in plan order
        for unit in units:
            kind, name, params = unit.kind, unit.probe, unit.params
            if kind in ("clean", "attack") and (name, kind, params) not in retainable:
                retainable.append((name, kind, params))
            for role, m in unit.masks.items():
                if kind == "clean":
                    correct[(role, name)] = m["correct"]
                elif kind == "attack":
                    correct[(role, name)] = m["robust"]
                    attacks.setdefault(role, []).append(attack_result(name, params, m))
                elif kind == "curve":
                    points = [(float(k.split("@", 1)[1]), v) for k, v in m.items() if k.startswith("robust@")]
                    curves.setdefault(role, []).append((name, points))
        roles = list(manifest.get("checkpoints", {}))
        rows = retention_rows(manifest, roles, retainable, correct, int(manifest["seed"]))
        settings = next((p for p in manifest["suite"].get("probes", []) if p.get("kind") == "masking"), {})
        tolerances = {"tolerance": settings.get("tolerance", masking.TOLERANCE),
                      "loss_tolerance": settings.get("loss_tolerance", masking.LOSS_TOLERANCE)}
        flags = []
        for role in roles:
            flags.extend(masking.cross_checks(role, attacks.get(role, []), curves.get(role, []), **tolerances))
        return rows, flags

    def finish(self, run_dir: Path, manifest: Mapping[str, Any], units: Sequence[StoredUnit], roles: list[str]) -> list[Path]:
        return merge_examples(run_dir, manifest, units, roles)


def attack_result(name: str, params: Mapping[str, Any], m: Mapping[str, np.ndarray]) -> masking.AttackResult:
    attack = params.get("attack", name)
    loss = "ce" if attack in ("fgsm", "pgd", "apgd-ce") and params.get("loss", "ce") == "ce" else "other"
    eps = params.get("eps")
    return masking.AttackResult(name, attack, float(eps) if isinstance(eps, (int, float)) else None,
                                params.get("norm", "linf"), loss, m["robust"], m["clean"], m)


def check_compatible(models: Mapping[str, nn.Module], x: torch.Tensor, num_classes: int, data_kind: str) -> None:
    """One forward pass per model on two evaluation points: right input shape, one logit per class."""
    sample = x[:2]
    for role, model in models.items():
        where = role_field(role)
        try:
            with torch.no_grad():
                logits = model(sample.to(model_device(model)))
        except Exception as exc:  # the user's model on the user's data: report it, do not dump a traceback
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserInputError(where, f"cannot run on the {data_kind} data (inputs {tuple(sample.shape[1:])}): {message}",
                                 "audit the model with the data it was trained on") from None
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != sample.shape[0]:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise UserInputError(where, f"returns {shape} for a batch of {sample.shape[0]}, not (batch, classes) logits",
                                 "wrap the model so that forward returns logits")
        if logits.shape[1] != num_classes:
            raise UserInputError(where, f"has {logits.shape[1]} outputs but the {data_kind} data has {num_classes} classes",
                                 "audit the model with the data it was trained on")


def retention_rows(manifest: Mapping[str, Any], roles: list[str], retainable: list[tuple[str, str, dict[str, Any]]],
                   correct: Mapping[tuple[str, str], np.ndarray], seed: int) -> list[dict[str, Any]]:
    """Student (and extra model) accuracy / teacher accuracy per clean and attack probe, paired-bootstrap CI."""
    only: set[str] | None = None
    for probe in manifest.get("suite", {}).get("probes", []):
        if probe.get("kind") == "retention" and probe.get("of"):
            only = set(probe["of"])
    rows = []
    for role in roles:
        if role == "teacher":
            continue
        for name, kind, params in retainable:
            if only is not None and name not in only:
                continue
            teacher, other = correct.get(("teacher", name)), correct.get((role, name))
            if teacher is None or other is None:
                continue
            metric = "accuracy_retention" if kind == "clean" else "robust_accuracy_retention"
            value = float(other.mean() / teacher.mean()) if teacher.any() else None
            row_params = {"of": name, "with": "teacher"}
            if kind == "attack":
                row_params |= {"attack": params.get("attack"), "eps": params.get("eps")}
            rows.append({"probe": "retention", "model": role, "metric": metric, "value": value,
                         "ci95": bootstrap_ratio_ci(other.astype(float), teacher.astype(float), seed=seed),
                         "n": int(teacher.size), "params": row_params})
    return rows


def merge_examples(run_dir: Path, manifest: Mapping[str, Any], units: Sequence[StoredUnit], roles: list[str]) -> list[Path]:
    """artifacts/examples.npz for the renderer: clean, labels, attack, and adv_/pred_clean_/pred_adv_<role>."""
    name = manifest.get("examples")
    if not name:
        return []
    files: dict[str, Path] = {}
    for unit in units:
        if unit.probe != name:
            continue
        for artifact in unit.artifacts:
            files[unit.roles[0]] = run_dir / ARTIFACTS / artifact
    if set(files) != set(roles) or not all(p.is_file() for p in files.values()):
        return []
    inside = (run_dir / ARTIFACTS).resolve()
    for path in files.values():  # the store checked the names; a symbolic link could still lead elsewhere
        if not path.resolve().is_relative_to(inside):
            raise UserInputError(str(path), f"leads outside {inside}", "a run reads only its own files; re-run the "
                                 "audit into a new --out")
    arrays: dict[str, np.ndarray] = {}
    try:
        for role in roles:
            with np.load(files[role], allow_pickle=False) as part:
                if "clean" not in arrays:
                    arrays |= {"clean": part["clean"], "labels": part["labels"], "index": part["index"],
                               "attack": np.array(name)}
                arrays[f"adv_{role}"] = part["adv"]
                arrays[f"pred_clean_{role}"] = part["pred_clean"]
                arrays[f"pred_adv_{role}"] = part["pred_adv"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # damaged examples cost the examples only
        log.warning("cannot merge the examples of %s (%s: %s): the report shows none", name, type(exc).__name__, exc)
        return []
    target = run_dir / ARTIFACTS / EXAMPLES
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return [target]
