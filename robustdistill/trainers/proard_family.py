"""Using a ProARD family: export one sub-network as a standalone checkpoint, or search the space for the most robust
sub-network within a parameter or MAC budget (``robustdistill proard export`` / ``robustdistill proard select``).

The paper searches with an accuracy/robustness predictor and NSGA-II under a FLOPs budget. The digits and CIFAR
spaces here are small enough to measure instead of predict: each candidate is extracted, its BatchNorm statistics
re-estimated on training images, and its robust accuracy estimated with a short PGD on part of the val split (never
the test split); an evolutionary search (mutation and crossover of the best candidates) spends a fixed number of
such evaluations.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from robustdistill.attacks.pgd import PGD
from robustdistill.data import ImageSplit, load_split
from robustdistill.errors import UserInputError
from robustdistill.models import Classifier, checkpoint_sha256, load_model, save_checkpoint
from robustdistill.models.checkpoint import check_checkpoint_out
from robustdistill.models.dynamic import DynamicNetwork, count_macs, count_params, recalibrate_batchnorm
from robustdistill.models.search_space import SearchSpace, SubnetConfig
from robustdistill.trainers.base import accuracy
from robustdistill.trainers.proard import family_space, subnet_classifier

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Family:
    """A trained ProARD family: the dynamic network (in a Classifier), its space, where it came from."""

    model: Classifier
    space: SearchSpace
    path: Path
    provenance: dict[str, Any]

    @property
    def network(self) -> DynamicNetwork:
        assert isinstance(self.model.network, DynamicNetwork)
        return self.model.network

    def data_spec(self) -> dict[str, Any]:
        spec = self.provenance.get("data", {}).get("spec")
        if not isinstance(spec, dict):
            raise UserInputError("family", f"{self.path} records no training data", "export from a checkpoint written by `robustdistill train proard`")
        return spec

    def split(self, name: str) -> ImageSplit:
        split = load_split(self.data_spec(), name)
        recorded = self.provenance.get("data", {}).get("fingerprint")
        if name == "train" and recorded and split.fingerprint != recorded:
            raise UserInputError("family", f"the training data of {self.path} has changed since it was trained",
                                 "restore the dataset the family was trained on")
        return split

    def threat(self) -> dict[str, Any]:
        config = self.provenance.get("recipe", {}).get("config", {})
        eps = float(config.get("eps", 8 / 255))
        step = config.get("attack_step_size")
        return {"eps": eps, "norm": config.get("norm", "linf"), "alpha": float(step) if step else eps / 4}


def load_family(path: str | Path, device: str | torch.device = "cpu") -> Family:
    """Read a family checkpoint (the largest ``proard-subnet``) into a dynamic network; nothing is unpickled."""
    path = Path(path)
    if not path.exists():
        raise UserInputError("family", f"no checkpoint at {path}", "train one with `robustdistill train proard --config ...`")
    stored = load_model(path, device="cpu")
    if not isinstance(stored, Classifier):
        raise UserInputError("family", f"{path} is not an image classifier checkpoint", "point at a ProARD family checkpoint")
    space = family_space(stored, "family")
    network = DynamicNetwork(space, stored.num_classes, stored.input_shape[0], min(stored.input_shape[1:]))
    network.load_state_dict(stored.network.state_dict())
    model = Classifier(network, arch=stored.arch, num_classes=stored.num_classes, input_shape=stored.input_shape,
                       arch_params=stored.arch_params, classes=stored.classes, mean=stored.mean, std=stored.std)
    return Family(model.to(device).eval(), space, path, dict(stored.provenance))


def size_of(family: Family, subnet: SubnetConfig) -> tuple[int, int]:
    """(parameters, multiply-accumulates per input) of a sub-network."""
    static = family.network.extract(subnet)
    return count_params(static), count_macs(static, family.model.input_shape)


def export_subnet(family_path: str | Path, subnet: str, out: str | Path, *, calibration_images: int = 4000,
                  seed: int = 0) -> Path:
    """Write one sub-network as a checkpoint with BatchNorm recalibrated on ``calibration_images`` training images;
    its provenance names the family (sha256), the sub-network, its size and the calibration."""
    check_checkpoint_out(out)  # before the BatchNorm recalibration: a user's folder or a file is refused, not replaced
    family = load_family(family_path)
    config = SubnetConfig.parse(subnet, family.space)
    train = family.split("train")
    calibration = train.subset(min(calibration_images, len(train)), seed=seed)
    model = subnet_classifier(family.model, config)
    recalibrate_batchnorm(model, calibration.x)
    params, macs = size_of(family, config)
    provenance = {
        "recipe": {"method": "proard-export", "config": {"subnet": config.to_dict(), "key": config.key(),
                                                         "calibration_images": len(calibration), "seed": seed}},
        "parents": [{"role": "family", "path": str(family.path), "sha256": checkpoint_sha256(family.path)}],
        "data": family.provenance.get("data", {}),
        "train_members": family.provenance.get("train_members", []),
        "proard_subnet": {"key": config.key(), "parameters": params, "macs": macs},
    }
    path = save_checkpoint(model.eval(), out, provenance=provenance)
    log.info("exported %s (%d parameters, %d MACs) to %s", config.key(), params, macs, path)
    return path


# --- search -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Candidate:
    subnet: SubnetConfig
    parameters: int
    macs: int
    clean: float = float("nan")
    robust: float = float("nan")

    def row(self) -> dict[str, Any]:
        return {"subnet": self.subnet.key(), "parameters": self.parameters, "macs": self.macs,
                "clean": self.clean, "robust": self.robust}


class Estimator:
    """Fast robust-accuracy estimate of a sub-network: BatchNorm re-estimated on ``calibration_images`` training
    images, then PGD-``steps`` on the first ``samples`` val points (balanced subset, fixed seed)."""

    def __init__(self, family: Family, *, samples: int, steps: int, calibration_images: int, seed: int) -> None:
        self.family = family
        train, val = family.split("train"), family.split("val")
        self.calibration = train.subset(min(calibration_images, len(train)), seed=seed).x
        evaluation = val.subset(min(samples, len(val)), seed=seed)
        self.x, self.y = evaluation.x, evaluation.y
        threat = family.threat()
        self.attack = PGD(eps=threat["eps"], alpha=threat["alpha"], steps=steps, norm=threat["norm"], seed=seed)

    def __call__(self, candidate: Candidate) -> Candidate:
        model = subnet_classifier(self.family.model, candidate.subnet)
        recalibrate_batchnorm(model, self.calibration)
        model.eval()
        candidate.clean = accuracy(model, self.x, self.y)
        self.attack(model, self.x, self.y)
        assert self.attack.last_success is not None
        candidate.robust = float((~self.attack.last_success).float().mean())
        return candidate


def _score(candidate: Candidate) -> tuple[float, float, int]:
    return (candidate.robust, candidate.clean, -candidate.parameters)


def _mutate(space: SearchSpace, subnet: SubnetConfig, generator: torch.Generator, rate: float) -> SubnetConfig:
    """Each per-stage value is redrawn from its choices with probability ``rate``."""
    choices = {"depth": space.depth_choices, "width": space.width_choices, "expand": space.expand_choices,
               "kernel": space.kernel_choices}
    values: dict[str, tuple[Any, ...]] = {}
    for dim, options in choices.items():
        current = list(getattr(subnet, dim))
        for i in range(len(current)):
            if float(torch.rand((), generator=generator)) < rate:
                current[i] = options[int(torch.randint(len(options), (), generator=generator))]
        values[dim] = tuple(current)
    return SubnetConfig(**values)


def _crossover(a: SubnetConfig, b: SubnetConfig, generator: torch.Generator) -> SubnetConfig:
    values = {}
    for dim in ("depth", "width", "expand", "kernel"):
        pairs = zip(getattr(a, dim), getattr(b, dim), strict=True)
        values[dim] = tuple(x if float(torch.rand((), generator=generator)) < 0.5 else y for x, y in pairs)
    return SubnetConfig(**values)


def select_subnet(family_path: str | Path, *, budget_params: int | None = None, budget_macs: int | None = None,
                  evaluations: int = 40, population: int = 12, samples: int = 200, steps: int = 10,
                  calibration_images: int = 1000, seed: int = 0) -> list[Candidate]:
    """The evaluated candidates within the budget, best first (robust estimate, then clean, then fewer parameters).

    Evolutionary search: ``population`` random sub-networks within the budget (the smallest always among them),
    then rounds of mutation and crossover of the best half, until ``evaluations`` distinct candidates have been
    estimated (or the space within the budget is exhausted).
    """
    if budget_params is None and budget_macs is None:
        raise UserInputError("--budget-params", "no budget given", "give --budget-params N and/or --budget-macs N")
    for name, value in (("--budget-params", budget_params), ("--budget-macs", budget_macs)):
        if value is not None and value < 1:
            raise UserInputError(name, f"must be positive, got {value}", "give a number of parameters / MACs")
    if evaluations < 1 or population < 2:
        raise UserInputError("--evaluations", "needs at least 1 evaluation and a population of 2", "raise them")
    family = load_family(family_path)
    space = family.space

    def fits(candidate: Candidate) -> bool:
        return (budget_params is None or candidate.parameters <= budget_params) and (
            budget_macs is None or candidate.macs <= budget_macs)

    sizes: dict[SubnetConfig, Candidate] = {}

    def candidate_of(subnet: SubnetConfig) -> Candidate:
        if subnet not in sizes:
            sizes[subnet] = Candidate(subnet, *size_of(family, subnet))
        return sizes[subnet]

    smallest = candidate_of(space.smallest())
    if not fits(smallest):
        raise UserInputError("--budget-params" if budget_params is not None else "--budget-macs",
                             f"even the smallest sub-network ({smallest.parameters} parameters, {smallest.macs} MACs) is over budget",
                             "raise the budget")
    generator = torch.Generator().manual_seed(seed)
    estimate = Estimator(family, samples=samples, steps=steps, calibration_images=calibration_images, seed=seed)
    evaluated: dict[SubnetConfig, Candidate] = {}
    bar = tqdm(total=evaluations, desc="proard select", unit="subnet", disable=None)

    def evaluate(candidates: Sequence[Candidate]) -> None:
        for candidate in candidates:
            if len(evaluated) >= evaluations or candidate.subnet in evaluated:
                continue
            evaluated[candidate.subnet] = estimate(candidate)
            bar.update(1)

    def draw(make: Any, count: int, tries: int = 200) -> list[Candidate]:
        found: list[Candidate] = []
        for _ in range(tries):
            if len(found) >= count:
                break
            candidate = candidate_of(make())
            if fits(candidate) and candidate.subnet not in evaluated and candidate not in found:
                found.append(candidate)
        return found

    evaluate([smallest, *draw(lambda: space.sample(generator), population - 1)])
    while len(evaluated) < evaluations:
        parents = sorted(evaluated.values(), key=_score, reverse=True)[: max(2, population // 2)]

        def child(parents: list[Candidate] = parents) -> SubnetConfig:
            a = parents[int(torch.randint(len(parents), (), generator=generator))]
            if float(torch.rand((), generator=generator)) < 0.5:
                b = parents[int(torch.randint(len(parents), (), generator=generator))]
                return _mutate(space, _crossover(a.subnet, b.subnet, generator), generator, 0.1)
            return _mutate(space, a.subnet, generator, 0.3)

        children = draw(child, population)
        if not children:  # the neighbourhood is exhausted; try fresh random ones before giving up
            children = draw(lambda: space.sample(generator), population)
        if not children:
            break
        evaluate(children)
    bar.close()
    return sorted(evaluated.values(), key=_score, reverse=True)
