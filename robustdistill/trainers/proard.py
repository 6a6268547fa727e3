"""ProARD: Mousavi, Zoljodi, Daneshtalab et al., "ProARD: Progressive Adversarial Robustness Distillation: Provide
Wide Range of Robust Students", IJCNN 2025 (arXiv 2506.07666; official code hamidmousavi0/ProARD, built on
once-for-all).

One training gives a whole family of robust students. A weight-sharing dynamic network
(:class:`~robustdistill.models.dynamic.DynamicNetwork`: elastic width, depth and expand ratio per stage, and kernel
for the MobileNet family) is distilled from a frozen TEACHER, the largest network of the same space trained with
TRADES. Training runs in progressive stages (ResNet: width, then depth, then expand ratio), each opening more of the
space, sampling sub-networks at every step, and starting from the previous stage's best checkpoint; the student
matches the teacher with the RSLAD loss by default (ARD and AdaAD selectable), on adversarial examples crafted
against the sampled sub-network. ``schedule = "random"`` is the paper's failing baseline: sample from all choices
from the start, in one run of the same length and the same number of sub-networks per step.

Every sub-network is validated after its BatchNorm statistics are re-estimated on training images (sub-networks share
BatchNorm layers whose running statistics mix every sampled width and depth). Selection is on the val split.
The result is saved as an ordinary checkpoint of the LARGEST sub-network (arch ``proard-subnet``), which holds every
sub-network's weights: ``robustdistill proard export`` and ``robustdistill proard select`` extract from it.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Literal

import pydantic
import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from robustdistill.data import ImageSplit
from robustdistill.errors import UserInputError
from robustdistill.models import Classifier, save_checkpoint
from robustdistill.models.dynamic import DynamicNetwork, recalibrate_batchnorm
from robustdistill.models.search_space import SearchSpace, SubnetConfig, space_from
from robustdistill.trainers import distributed
from robustdistill.trainers.base import TRAINERS, Trainer, TrainState
from robustdistill.trainers.config import STRICT, SelectMetric, TrainConfig
from robustdistill.trainers.teachers import check_teacher, ensure_teacher, inference_forward, load_teacher
from robustdistill.utils import atomic_path

log = logging.getLogger(__name__)

DIMENSIONS = ("width", "depth", "expand", "kernel")


@dataclass(config=STRICT)
class ProARDStage:
    """One progressive stage: the choices it opens per dimension (a dimension left out keeps the previous stage's
    choices; in the first stage, only its largest value), the number of sub-networks sampled per step, epochs
    (default: the config's ``epochs``)."""

    name: str
    subnets_per_step: int = Field(1, ge=1)
    epochs: int | None = Field(None, ge=1)
    width: list[float] | None = None
    depth: list[int] | None = None
    expand: list[float] | None = None
    kernel: list[int] | None = None


def paper_stages(space: SearchSpace) -> list[ProARDStage]:
    """The paper's progressive schedule (official ProARD / once-for-all scripts) over this space's choices. ResNet:
    width (1 sub-network per step) -> the two deepest depth choices -> all depths (2 per step) -> the two largest
    expand ratios -> all (4 per step). MobileNet: kernel first instead of width."""
    first, choices = ("width", space.width_choices) if space.family == "resnet" else ("kernel", space.kernel_choices)
    depth, expand = sorted(space.depth_choices), sorted(space.expand_choices)
    return [
        ProARDStage(name=first, subnets_per_step=1, **{first: sorted(choices)}),
        ProARDStage(name="depth-1", subnets_per_step=2, depth=depth[-2:]),
        ProARDStage(name="depth-2", subnets_per_step=2, depth=depth),
        ProARDStage(name="expand-1", subnets_per_step=4, expand=expand[-2:]),
        ProARDStage(name="expand-2", subnets_per_step=4, expand=expand),
    ]


@dataclass(config=STRICT)
class ProARDConfig(TrainConfig):
    """ProARD (Mousavi et al., IJCNN 2025).

    ``teacher``: the largest network of the space trained with TRADES (arch ``proard-subnet``; trained first from
    ``teacher_recipe`` when missing); its architecture fixes the search space. The dynamic student starts from the
    teacher's weights (``init_from_teacher``, as once-for-all starts from the trained largest network).
    ``stages``: the progressive schedule (default: the paper's, for the teacher's family); ``epochs`` is the default
    length of each stage. ``loss``: ``rslad`` (5/6 KL(T(x)||S(x')) + 1/6 KL(T(x)||S(x)), mean-KL, x' maximising
    KL(T(x)||S(x')) against the sampled sub-network in eval mode, PGD-10 at eps 8/255, step 2/255), or ``ard`` /
    ``adaad`` with their papers' settings; ``loss_params`` overrides any field of that method's config.
    ``calibration_images``: training images used to re-estimate BatchNorm statistics before a sub-network is
    evaluated (4,000 in the paper; digits has fewer, so all of them). Selection: mean val robust accuracy of the
    stage's smallest and largest sub-networks (the test split is never used).
    """

    PATH_FIELDS = ("teacher", "teacher_recipe")

    teacher: str = ""
    teacher_recipe: str | None = None
    schedule: Literal["progressive", "random"] = "progressive"
    loss: Literal["rslad", "ard", "adaad"] = "rslad"
    loss_params: dict[str, Any] = Field(default_factory=dict)
    stages: list[ProARDStage] | None = None
    init_from_teacher: bool = True
    reorder_channels: bool = True
    calibration_images: int = Field(4000, ge=1)
    epochs: int = Field(25, ge=1)
    weight_decay: float = Field(3e-5, ge=0)
    lr: float = Field(0.025, gt=0)
    lr_milestones: list[int] = Field(default_factory=list)
    select_metric: SelectMetric = "robust"


def resolve_stages(config: ProARDConfig, space: SearchSpace) -> list[tuple[ProARDStage, dict[str, list[Any]]]]:
    """Each stage with the choices it samples from (cumulative over the stages). ``random``: one stage over the whole
    space, as long as all the progressive stages together."""
    stages = paper_stages(space) if config.stages is None else config.stages
    if not stages:
        raise UserInputError("stages", "is empty", "list at least one stage, or leave it out for the paper's schedule")
    available = {"width": space.width_choices, "depth": space.depth_choices, "expand": space.expand_choices,
                 "kernel": space.kernel_choices}
    allowed: dict[str, list[Any]] = {dim: [max(values)] for dim, values in available.items()}
    resolved = []
    for i, stage in enumerate(stages):
        for dim in DIMENSIONS:
            values = getattr(stage, dim)
            if values is None:
                continue
            unknown = [v for v in values if v not in available[dim]]
            if unknown or not values:
                raise UserInputError(f"stages[{i}].{dim}", f"{unknown or values} not in the space's choices {list(available[dim])}",
                                     "use values of the teacher's search space")
            allowed[dim] = sorted(values)
        resolved.append((stage, {dim: list(v) for dim, v in allowed.items()}))
    if config.schedule == "random":
        full = {dim: sorted(values) for dim, values in available.items()}
        total = sum(stage.epochs or config.epochs for stage, _ in resolved)
        # One run over everything; the sub-networks per step follow the progressive stage of the same epoch, so both
        # schedules spend the same compute (see ProARDTrainer.subnets_per_step).
        return [(ProARDStage(name="random", epochs=total, subnets_per_step=1), full)]
    return resolved


@TRAINERS.register("proard")
class ProARDTrainer(Trainer):
    """Progressive adversarial robustness distillation of a weight-sharing family (Mousavi et al., IJCNN 2025)."""

    config_class = ProARDConfig
    data_parallel = False  # its own stage loop and BatchNorm recalibration run in one process
    method = "proard"

    teacher: Classifier
    space: SearchSpace

    def __init__(self, config: ProARDConfig) -> None:
        super().__init__(config)
        self.inner = self._inner_trainer()
        self.stage_index = 0
        self.allowed: dict[str, list[Any]] = {}
        self.calibration: torch.Tensor | None = None
        self._per_step = 1

    # --- the distillation loss: the chosen method's own implementation, applied to the sampled sub-network ---
    def _inner_trainer(self) -> Trainer:
        from robustdistill.trainers import ard

        cfg = self.config
        trainer_class = {"rslad": ard.RSLADTrainer, "ard": ard.ARDTrainer, "adaad": ard.AdaADTrainer}[cfg.loss]
        shared = {"eps": cfg.eps, "norm": cfg.norm, "attack_steps": cfg.attack_steps,
                  "attack_step_size": cfg.attack_step_size, "seed": cfg.seed, "device": cfg.device}
        try:
            inner_config = trainer_class.config_class(**(shared | dict(cfg.loss_params)))
        except pydantic.ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(p) for p in error["loc"])
            raise UserInputError(f"loss_params.{field}", error["msg"], f"see the {cfg.loss} config's fields") from None
        return trainer_class(inner_config)

    # --- inputs ---
    def check_inputs(self) -> None:
        check_teacher(self.config.teacher, self.config.teacher_recipe, what="the largest network trained with TRADES")

    def prepare(self, train: ImageSplit) -> None:
        cfg = self.config
        path = ensure_teacher(cfg.teacher, cfg.teacher_recipe)
        self.parent("teacher", path)
        self.teacher = load_teacher(path).to(self.device)
        self.space = family_space(self.teacher, "teacher")
        if self.teacher.num_classes != train.num_classes:
            raise UserInputError("teacher", f"the teacher has {self.teacher.num_classes} classes, the data {train.num_classes}",
                                 "use a teacher trained on this dataset")
        self.inner.teacher = self.teacher
        self.inner.teacher_logits = inference_forward(self.teacher, train.x[: cfg.batch_size].to(self.device))
        self.stages = resolve_stages(cfg, self.space)
        self.calibration = train.subset(min(cfg.calibration_images, len(train)), seed=cfg.seed).x
        # (epochs, sub-networks per step) of the progressive stages: the random schedule follows the same counts.
        progressive = paper_stages(self.space) if cfg.stages is None else cfg.stages
        self.step_counts = [(stage.epochs or cfg.epochs, stage.subnets_per_step) for stage in progressive]

    def build_model(self, train: ImageSplit) -> Classifier:
        """The dynamic network inside a Classifier that saves as the largest ``proard-subnet`` (same state dict)."""
        cfg = self.config
        network = DynamicNetwork(self.space, train.num_classes, train.input_shape[0], min(train.input_shape[1:]))
        model = Classifier(network, arch="proard-subnet", num_classes=train.num_classes, input_shape=train.input_shape,
                           arch_params={"space": self.space.to_dict(), "subnet": "largest"},
                           classes=list(train.classes), mean=self.teacher.mean, std=self.teacher.std)
        if cfg.init_from_teacher:
            network.load_state_dict(self.teacher.network.state_dict())
        return model

    # --- one batch: sample sub-networks, sum their distillation losses ---
    def subnets_per_step(self, epoch: int) -> int:
        """The stage's count; for the random schedule, the count of the progressive stage at the same epoch."""
        if self.config.schedule != "random":
            return self.stages[self.stage_index][0].subnets_per_step
        end = 0
        for epochs, count in self.step_counts:
            end += epochs
            if epoch < end:
                return count
        return self.step_counts[-1][1]

    def batch_loss(self, model: Classifier, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        network = model.network
        assert isinstance(network, DynamicNetwork)
        total: torch.Tensor | None = None
        logits = None
        for _ in range(self._per_step):
            network.set_active(self.space.sample(generator, self.allowed))
            loss, logits = self.inner.batch_loss(model, x, y, generator)
            total = loss if total is None else total + loss
        assert total is not None and logits is not None
        network.set_active(self.space.largest())
        return total, logits

    # --- validation of sub-networks, each with re-estimated BatchNorm statistics ---
    def subnet_model(self, model: Classifier, subnet: SubnetConfig) -> Classifier:
        """A standalone copy of one sub-network, BatchNorm recalibrated on the calibration images."""
        sub = subnet_classifier(model, subnet)
        assert self.calibration is not None
        recalibrate_batchnorm(sub, self.calibration.to(self.device))
        return sub.eval()

    def representatives(self) -> dict[str, SubnetConfig]:
        """The smallest and largest sub-networks of the current stage's choices."""
        smallest = SubnetConfig(
            depth=(min(self.allowed["depth"]),) * self.space.num_stages, width=(min(self.allowed["width"]),) * len(self.space.stage_channels),
            expand=(min(self.allowed["expand"]),) * self.space.num_stages, kernel=(min(self.allowed["kernel"]),) * len(self.space.stage_channels))
        return {"smallest": smallest, "largest": self.space.largest()}

    def validate(self, model: Classifier, val: ImageSplit) -> dict[str, float]:
        metrics: dict[str, float] = {}
        per_subnet = [super(ProARDTrainer, self).validate(self.subnet_model(model, subnet), val) | {"name": name}
                      for name, subnet in self.representatives().items()]
        for record in per_subnet:
            name = record.pop("name")
            metrics |= {f"{key}_{name}": value for key, value in record.items()}
        for key in per_subnet[0]:
            metrics[key] = sum(float(r[key]) for r in per_subnet) / len(per_subnet)
        metrics["stage"] = float(self.stage_index + 1)
        return metrics

    # --- the stages ---
    def fit(self, out: str | Path, *, resume: bool = False, on_epoch_end: Any = None, train_data: ImageSplit | None = None) -> Path:
        """Train stage after stage, each from the previous stage's best (val) weights with a fresh optimiser and
        schedule; write the dynamic network as the checkpoint ``out`` (the largest sub-network holds all weights).

        Progress after each epoch is kept in ``<out>.partial/``; ``resume=True`` continues from there.
        """
        distributed.check_supported(self)  # not under torchrun
        out = Path(out)
        try:
            return self._fit_stages(out, resume, on_epoch_end, train_data)
        except BaseException:
            self.fail_run(out.with_name(out.name + ".partial"))
            raise

    def _fit_stages(self, out: Path, resume: bool, on_epoch_end: Any, train_data: ImageSplit | None) -> Path:
        cfg = self.config
        work, train, full, val, model = self.start_run(out, resume, train_data)
        history: list[dict[str, float]] = []
        stage_best: list[dict[str, Any]] = []
        start_stage, start_epoch, saved = 0, 0, None
        if resume and (work / "last.pt").exists():
            saved = self._load_progress(work / "last.pt")
            start_stage, start_epoch = saved["stage"], saved["stage_epoch"]
            history, stage_best = saved["history"], saved["stage_best"]
            model.load_state_dict(saved["model"])
            log.info("resuming proard from %s: stage %d, epoch %d", work, start_stage + 1, start_epoch)
        work.mkdir(parents=True, exist_ok=True)
        global_epoch = sum(stage.epochs or cfg.epochs for stage, _ in self.stages[:start_stage]) + start_epoch
        total = sum(stage.epochs or cfg.epochs for stage, _ in self.stages)
        with self.run_progress(total, global_epoch, train):  # one display for every stage's epochs
            for index in range(start_stage, len(self.stages)):
                stage, allowed = self.stages[index]
                self.stage_index, self.allowed = index, allowed
                epochs = stage.epochs or cfg.epochs
                optimizer, scheduler = self.make_optimizer(model)
                best = {"score": float("-inf"), "epoch": 0, "weights": copy.deepcopy(model.state_dict())}
                if saved is not None and index == start_stage and start_epoch > 0:
                    optimizer.load_state_dict(saved["optimizer"])
                    scheduler.load_state_dict(saved["scheduler"])
                    best = saved["best"]
                    torch.set_rng_state(saved["torch_rng"])
                elif cfg.reorder_channels and {"width", "expand"} & {d for d in DIMENSIONS if getattr(stage, d) is not None}:
                    # Once-for-all: before width or expand ratio becomes elastic, sort channels by importance so the
                    # slices keep the most important ones (the largest network's function is unchanged).
                    assert isinstance(model.network, DynamicNetwork)
                    model.network.reorder_channels()
                log.info("proard stage %d/%d (%s): %d epochs, %s", index + 1, len(self.stages), stage.name, epochs, allowed)
                for epoch in range(start_epoch if index == start_stage else 0, epochs):
                    with self.epoch_progress(global_epoch):
                        self._per_step = self.subnets_per_step(global_epoch)
                        record: dict[str, float] = {"epoch": float(global_epoch + 1), "stage_epoch": float(epoch + 1),
                                                    "lr": optimizer.param_groups[0]["lr"]}
                        started = time.perf_counter()
                        record |= self.train_epoch(model, optimizer, train, global_epoch)
                        self.epoch_seconds.append(time.perf_counter() - started)
                        scheduler.step()
                        record |= self.validate(model, val)
                        score = self.selection_score(record)
                        if score >= best["score"]:
                            best = {"score": score, "epoch": global_epoch + 1, "weights": copy.deepcopy(model.state_dict())}
                        history.append(record)
                        global_epoch += 1
                        self._save_progress(work / "last.pt", index, epoch + 1, model, optimizer, scheduler, best, history, stage_best)
                        shown = ("train_loss", "val_clean_accuracy", "val_robust_accuracy")
                        log.info("proard %s epoch %d/%d %s", stage.name, epoch + 1, epochs,
                                 " ".join(f"{k}={v:.4f}" for k, v in record.items() if k in shown))
                        if on_epoch_end is not None:
                            on_epoch_end(global_epoch, record)
                # The next stage starts from this stage's best checkpoint on val.
                model.load_state_dict(best["weights"])
                stage_best.append({"stage": stage.name, "best_epoch": best["epoch"], "score": best["score"],
                                   "choices": allowed, "subnets_per_step": stage.subnets_per_step, "epochs": epochs})
                self._save_progress(work / "last.pt", index + 1, 0, model, optimizer, scheduler,
                                    {"score": float("-inf"), "epoch": 0, "weights": model.state_dict()}, history, stage_best)
        model.eval()
        state = TrainState(global_epoch, stage_best[-1]["score"], stage_best[-1]["best_epoch"], history)
        self.stage_best = stage_best
        path = save_checkpoint(model, out, provenance=self.provenance(train, state, full))
        self.finish_run(work)  # only the files this run wrote in the work folder; then its lock goes
        return path

    def extra_provenance(self) -> dict[str, Any]:
        return {"proard": {"space": self.space.to_dict(), "schedule": self.config.schedule, "loss": self.config.loss,
                           "stages": getattr(self, "stage_best", [])}}

    def _save_progress(self, path: Path, stage: int, stage_epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                       scheduler: Any, best: dict[str, Any], history: list[dict[str, float]], stage_best: list[dict[str, Any]]) -> None:
        payload = {"stage": stage, "stage_epoch": stage_epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict(), "best": best, "history": history, "stage_best": stage_best,
                   "torch_rng": torch.get_rng_state()}
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    def _load_progress(self, path: Path) -> dict[str, Any]:
        try:
            payload = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # a damaged file or one from another version
            raise UserInputError("--resume", f"cannot continue from {path}: {exc}".splitlines()[0], f"delete {path.parent} to start over") from None
        if payload["stage"] >= len(self.stages):
            raise UserInputError("--resume", f"{path} is from a run with more stages", f"delete {path.parent} to start over")
        payload["torch_rng"] = payload["torch_rng"].cpu()
        return payload


def subnet_classifier(family: Classifier, subnet: SubnetConfig) -> Classifier:
    """A standalone ``proard-subnet`` copy of one sub-network of a Classifier wrapping a DynamicNetwork (its weights
    cloned slices, the family's input normalisation and classes), on the family's device; BatchNorm as in the
    family (recalibrate before evaluating)."""
    network = family.network
    assert isinstance(network, DynamicNetwork)
    return Classifier(network.extract(subnet), arch="proard-subnet", num_classes=family.num_classes,
                      input_shape=family.input_shape, arch_params={"space": network.space.to_dict(), "subnet": subnet.to_dict()},
                      classes=family.classes, mean=family.mean, std=family.std).to(next(family.parameters()).device)


def family_space(model: Classifier, field: str) -> SearchSpace:
    """The search space of a ProARD family checkpoint (or any ``proard-subnet`` largest network)."""
    if model.arch != "proard-subnet":
        raise UserInputError(field, f"is a {model.arch} checkpoint, not a ProARD network",
                             "train the teacher with arch = 'proard-subnet' (see defenses/digits-proard-teacher.toml)")
    subnet = model.arch_params.get("subnet", "largest")
    space = space_from(model.arch_params["space"])
    if subnet != "largest" and SubnetConfig.from_dict(subnet) != space.largest():
        raise UserInputError(field, "is an exported sub-network, not the largest network of its space",
                             "use the family checkpoint (or a teacher trained at subnet 'largest')")
    return space
