"""GUARD and SRe2L: dataset distillation by squeeze, recover and relabel, then a student trained on the result.

SRe2L: Yin, Xing and Shen, "Squeeze, Recover and Relabel: Dataset Condensation at ImageNet Scale From A New
Perspective", NeurIPS 2023. GUARD: Xue et al., "Towards Adversarially Robust Dataset Distillation by Curvature
Regularization", AAAI 2025 (arXiv 2403.10045). GUARD is SRe2L with a curvature regulariser added to the squeeze
stage only (:mod:`robustdistill.trainers.curvature`); recover, relabel and the student are unchanged.

1. squeeze: train a model WITH BatchNorm on the real data (cross-entropy, plus the curvature regulariser for GUARD,
   computed in eval mode so the perturbed inputs never enter the BatchNorm running statistics, as in the official
   code). ``squeeze_checkpoint`` reuses an existing squeezed model instead.
2. recover: synthesise ``ipc`` images per class from Gaussian noise by optimising them so that the squeezed model
   classifies them as their class (cross-entropy) while the mean and variance of every BatchNorm layer's input over
   a batch of synthetic images match that layer's running statistics
   (r_bn * sum_l m_l * (||mu_l(x) - mu_l||_2 + ||var_l(x) - var_l||_2), m = first_bn_multiplier for the first layer,
   1 after). One batch holds one image of each class (up to ``classes_per_batch`` classes), as in the official
   CIFAR code; the ``ipc`` batches are independent problems, optimised side by side. Adam lr 0.25, betas (0.5, 0.9),
   cosine decay, 1000 iterations, r_bn 0.01, a random roll of up to ``jitter`` pixels each iteration. The images are
   optimised in the network's normalised input space, as in the official code (so the papers' lr means the same),
   and clamped there to the image of [0, 1]: the saved images are [0, 1] pixels.
3. relabel: soft labels of the squeezed model at temperature 20.
4. student: a fresh model trained on the synthetic images with KL(softmax(t/T) || softmax(s/T)) (batchmean, no T^2
   factor, as in the official code), where t are the squeezed model's logits for the very (augmented, mixed) batch
   the student sees - the official CIFAR relabel step. Without augmentation and mixup these are exactly the stored
   soft labels. The student is selected on the REAL validation split (never on the test split).

Outputs of ``robustdistill train guard --config RECIPE --out OUT``::

    OUT/                        the student checkpoint; provenance["distilled"] names the distilled dataset
    OUT.distilled/
        squeezed/               the squeezed model (a checkpoint; absent when squeeze_checkpoint names one)
        dataset/                the distilled dataset, a DatasetDict written with save_to_disk: "train" = the
                                synthetic images (image: float32 HxWxC in [0, 1], label: ClassLabel, soft_label:
                                the relabel probabilities), "validation"/"test" = the real data's val/test splits,
                                so ``[data] kind = "hf-disk", root = "OUT.distilled/dataset"`` trains on the
                                synthetic images and selects and evaluates on real ones
        grid.png                the synthetic images, one row per class
        distilled.json          what was distilled from what: fingerprints, settings, BatchNorm-matching losses

Every piece is written atomically. An interrupted run keeps what finished: ``--resume`` reuses a finished squeeze
and distilled dataset made with the same settings and continues the student from its last epoch.

This module holds the pipeline: the configs (:class:`GuardConfig`, :class:`SRe2LConfig`, :func:`squeeze_config`) and
the trainers registered as ``guard`` and ``sre2l``, which squeeze, recover, relabel and then train the student. The
stages live beside it: :mod:`robustdistill.trainers.guard_squeeze` (1), :mod:`robustdistill.trainers.guard_recover`
(2), :mod:`robustdistill.trainers.guard_relabel` (3 and the distilled dataset's files); their public names are
re-exported here.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from robustdistill import ownership
from robustdistill.data import ImageSplit, load_split
from robustdistill.errors import UserInputError
from robustdistill.models import Classifier, checkpoint_sha256, load_model
from robustdistill.models.checkpoint import check_checkpoint_out
from robustdistill.trainers import distributed
from robustdistill.trainers.base import TRAINERS, Trainer, TrainState, derived_seed
from robustdistill.trainers.config import STRICT, TrainConfig, config_to_dict
from robustdistill.trainers.guard_recover import (
    Recovered,
    RecoverSettings,
    batchnorm_layers,
    bn_matching_loss,
    recover,
)
from robustdistill.trainers.guard_relabel import (
    DISTILLED,
    _is_legacy_distilled,
    distilled_fingerprint,
    distilled_paths,
    relabel,
    save_distilled_dataset,
    save_grid,
)
from robustdistill.trainers.guard_squeeze import (
    Curvature,
    Optimizer,
    Schedule,
    SqueezeConfig,
    SqueezeSettings,
    SqueezeTrainer,
)
from robustdistill.utils import seed_everything, write_json_atomic

log = logging.getLogger(__name__)

CURVATURE_WEIGHTS = {"double-backprop": 100.0, "simple": 1e-4, "none": 0.0}  # GUARD's lambda (CIFAR) and beta


# --------------------------------------------------------------------------------------------------------------
# Configs


@dataclass(config=STRICT)
class GuardConfig(TrainConfig):
    """GUARD: SRe2L with the curvature regulariser in the squeeze stage. The top-level training fields are the
    student's; ``[squeeze]`` and ``[recover]`` configure those stages.

    Student defaults: the official CIFAR relabel/train step (relabel_cifar.py) - AdamW lr 0.001, weight decay 0.01,
    cosine over 400 epochs, batch 128, crop + flip, mixup 0.8, the last epoch kept. Temperature 20 (the papers'
    relabel temperature; the CIFAR script hard-codes 30). Curvature: double backprop with lambda 100 and h 3 (the
    CIFAR version, at the official code's scale: the gradient of the batch-MEAN loss change, so lambda holds for the
    squeeze batch size, 128 there; see :mod:`robustdistill.trainers.curvature`); ``simple`` is the large-data version
    with beta 1e-4. ``curvature_h`` and the weight act in the network's normalised input space, as in the official code.
    """

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("squeeze_checkpoint",)

    ipc: int = 10
    temperature: float = Field(20.0, gt=0)
    mixup_alpha: float = Field(0.8, ge=0)
    curvature: Curvature = "double-backprop"
    curvature_weight: float | None = Field(None, ge=0)  # None: 100 (double-backprop) or 1e-4 (simple)
    curvature_h: float = Field(3.0, gt=0)
    squeeze_checkpoint: str = ""  # reuse this squeezed model (a BatchNorm checkpoint) instead of training one
    squeeze: SqueezeSettings = field(default_factory=SqueezeSettings)
    recover: RecoverSettings = field(default_factory=RecoverSettings)
    # Student training (fields shared with every trainer, with the official defaults of the relabel step).
    epochs: int = Field(400, ge=1)
    optimizer: Optimizer = "adamw"  # type: ignore[assignment]
    lr: float = Field(0.001, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    lr_schedule: Schedule = "cosine"
    lr_milestones: list[int] = field(default_factory=list)
    select_metric: Literal["clean", "robust", "mean", "last"] = "last"
    val_robust: bool = False

    @property
    def curvature_strength(self) -> float:
        return CURVATURE_WEIGHTS[self.curvature] if self.curvature_weight is None else self.curvature_weight


@dataclass(config=STRICT)
class SRe2LConfig(GuardConfig):
    """SRe2L: the same pipeline without the curvature regulariser (``curvature = "none"``)."""

    curvature: Curvature = "none"


def squeeze_config(cfg: GuardConfig) -> SqueezeConfig:
    s = cfg.squeeze
    return SqueezeConfig(
        data=cfg.data, train_fraction=cfg.train_fraction, train_subset_seed=cfg.train_subset_seed,
        arch=s.arch, arch_params=dict(s.arch_params), mean=cfg.mean, std=cfg.std, epochs=s.epochs,
        batch_size=s.batch_size, optimizer=s.optimizer, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
        lr_schedule=s.lr_schedule, lr_milestones=list(s.lr_milestones), lr_gamma=s.lr_gamma, augment=s.augment,
        seed=cfg.seed, device=cfg.device, threat_model=cfg.threat_model, norm=cfg.norm, eps=cfg.eps,
        attack_steps=cfg.attack_steps, attack_step_size=cfg.attack_step_size, select_metric=s.select_metric,
        val_robust=s.val_robust, val_attack_steps=cfg.val_attack_steps, curvature=cfg.curvature,
        curvature_weight=cfg.curvature_strength, curvature_h=cfg.curvature_h,
    )


# --------------------------------------------------------------------------------------------------------------
# The pipeline


@TRAINERS.register("guard")
class GuardTrainer(Trainer):
    """GUARD (Xue et al. AAAI 2025): SRe2L dataset distillation with a curvature-regularised squeeze, then a student."""

    config_class: ClassVar[type[TrainConfig]] = GuardConfig
    method = "guard"
    config: GuardConfig
    data_parallel = False  # the squeeze, recover and relabel stages run in one process

    def __init__(self, config: GuardConfig) -> None:
        super().__init__(config)
        if config.ipc < 1:
            raise UserInputError("ipc", f"{config.ipc} images per class is nothing to distil",
                                 "use ipc >= 1, e.g. 10 or 50 as in the papers")
        if self.method == "sre2l" and config.curvature != "none":
            raise UserInputError("curvature", "sre2l is the pipeline without the curvature regulariser",
                                 "run `robustdistill train guard` for a curvature-regularised squeeze, or set curvature = 'none'")
        self.squeezed: Classifier | None = None
        self.distilled: dict[str, Any] = {}
        self.dataset_spec: dict[str, Any] = {}
        self.real_train: ImageSplit | None = None

    # --- stages -------------------------------------------------------------------------------------------
    def check_squeeze_inputs(self, real: ImageSplit) -> None:
        """Fail before any training: the squeeze architecture (or checkpoint) must have BatchNorm layers."""
        cfg = self.config
        if cfg.squeeze_checkpoint:
            if not Path(cfg.squeeze_checkpoint).exists():
                raise UserInputError("squeeze_checkpoint", f"no checkpoint at {cfg.squeeze_checkpoint}",
                                     "fix the path, or leave it empty to squeeze with [squeeze]")
            return
        from robustdistill.models import build_network

        network = build_network(cfg.squeeze.arch, real.num_classes, real.input_shape[0],
                                min(real.input_shape[1:]), **cfg.squeeze.arch_params)
        if not batchnorm_layers(network):
            raise UserInputError("squeeze.arch", f"{cfg.squeeze.arch} has no BatchNorm layers, and the recover stage "
                                 "matches BatchNorm statistics", "use a BatchNorm architecture, e.g. cnn-bn (digits) "
                                 "or resnet18-cifar")

    def squeeze(self, paths: dict[str, Path], real: ImageSplit, resume: bool) -> tuple[Classifier, dict[str, Any]]:
        """Train (or reuse) the squeezed model; returns it and its record for provenance."""
        cfg = self.config
        if cfg.squeeze_checkpoint:
            return self._given_squeeze(Path(cfg.squeeze_checkpoint), real)
        squeeze_cfg = squeeze_config(cfg)
        wanted = _comparable(config_to_dict(squeeze_cfg))
        target = paths["squeezed"]
        done = resume and (target / "config.json").is_file() and _comparable(
            _recipe_config(target).get("config", {})) == wanted
        if done:
            log.info("reusing the squeezed model in %s", target)
        else:
            log.info("squeeze: %s on the real data, curvature %s", cfg.squeeze.arch, cfg.curvature)
            squeezer = SqueezeTrainer(squeeze_cfg)
            squeezer.threads = self.threads
            squeezer.fit(target, resume=resume)
        model = load_model(target, device=self.device)
        assert isinstance(model, Classifier)
        record = {"path": str(target), "sha256": checkpoint_sha256(target), "arch": model.arch,
                  "curvature": {"kind": cfg.curvature, "weight": cfg.curvature_strength if cfg.curvature != "none" else 0.0,
                                "h": cfg.curvature_h}}
        return model, record

    def _given_squeeze(self, path: Path, real: ImageSplit) -> tuple[Classifier, dict[str, Any]]:
        cfg = self.config
        try:
            model = load_model(path, device=self.device)
        except UserInputError as exc:
            raise UserInputError("squeeze_checkpoint", f"{path}: {exc.problem}", exc.fix) from None
        if not isinstance(model, Classifier):
            raise UserInputError("squeeze_checkpoint", f"{path} is not an image classifier", "point at a squeezed model")
        if not batchnorm_layers(model.network):
            raise UserInputError("squeeze_checkpoint", f"{path} ({model.arch}) has no BatchNorm layers, and the recover "
                                 "stage matches BatchNorm statistics", "squeeze with a BatchNorm architecture")
        if model.num_classes != real.num_classes or tuple(model.input_shape) != real.input_shape:
            raise UserInputError("squeeze_checkpoint", f"{path} takes {tuple(model.input_shape)} inputs with "
                                 f"{model.num_classes} classes, the data {real.input_shape} with {real.num_classes}",
                                 "use a model squeezed on this data")
        recipe = _recipe_config(path)
        if recipe.get("method") == SqueezeTrainer.method:
            used = recipe.get("config", {})
            curvature = {"kind": used.get("curvature", "none"), "weight": used.get("curvature_weight", 0.0),
                         "h": used.get("curvature_h", 3.0)}
        elif cfg.curvature == "none":  # any BatchNorm model trained without the regulariser is an SRe2L squeeze
            curvature = {"kind": "none", "weight": 0.0, "h": cfg.curvature_h}
        else:
            raise UserInputError("squeeze_checkpoint", f"{path} has no record of a curvature-regularised squeeze",
                                 "leave squeeze_checkpoint empty so this recipe squeezes it, or set curvature = 'none'")
        if curvature["kind"] != cfg.curvature:
            raise UserInputError("squeeze_checkpoint", f"{path} was squeezed with curvature {curvature['kind']!r}, this "
                                 f"recipe asks for {cfg.curvature!r}", "point at a matching squeeze, or change curvature")
        record = {"path": str(path), "sha256": checkpoint_sha256(path), "arch": model.arch, "curvature": curvature,
                  "given": True}
        return model, record

    def distil(self, paths: dict[str, Path], squeezed: Classifier, squeeze_record: dict[str, Any], real: ImageSplit,
               resume: bool) -> dict[str, Any]:
        """Recover + relabel (or reuse a finished distilled dataset made from the same inputs); write the dataset,
        the grid and the manifest. Returns the manifest."""
        cfg = self.config
        inputs = {"squeezed_sha256": squeeze_record["sha256"], "ipc": cfg.ipc, "temperature": cfg.temperature,
                  "recover": config_to_dict(cfg.recover), "seed": cfg.seed, "real_fingerprint": real.fingerprint}
        manifest_path = paths["manifest"]
        if resume and manifest_path.is_file() and paths["dataset"].is_dir():
            import json

            previous = json.loads(manifest_path.read_text())
            if previous.get("inputs") == inputs:
                log.info("reusing the distilled dataset in %s", paths["dataset"])
                return previous
        recovered = recover(squeezed, cfg.ipc, cfg.recover, seed=derived_seed(cfg.seed, "recover"))
        soft = relabel(squeezed, recovered.images, cfg.temperature)
        fingerprint = distilled_fingerprint(recovered.images, recovered.labels)
        val, test = load_split(cfg.data, "val"), load_split(cfg.data, "test")
        ownership.adopt(paths["root"], DISTILLED, legacy=_is_legacy_distilled)
        save_distilled_dataset(paths["dataset"], recovered.images, recovered.labels, soft, real.classes, val, test)
        ownership.record(paths["root"], [paths["dataset"] / name for name in ownership.files_under(paths["dataset"])])
        save_grid(recovered.images, recovered.labels, real.classes, paths["grid"])
        ownership.record(paths["root"], [paths["grid"]])
        manifest = {
            "method": self.method,
            "fingerprint": fingerprint,
            "images": len(recovered.labels),
            "ipc": cfg.ipc,
            "classes": list(real.classes),
            "input_shape": list(real.input_shape),
            "dataset": str(paths["dataset"]),
            "grid": str(paths["grid"]),
            "squeeze": squeeze_record,
            "curvature": squeeze_record["curvature"],
            "recover": {**config_to_dict(cfg.recover), "bn_loss_initial": recovered.bn_initial,
                        "bn_loss_final": recovered.bn_final, "squeezed_accuracy": recovered.squeezed_accuracy},
            "relabel": {"temperature": cfg.temperature},
            "real_data": {"spec": cfg.data.model_dump(mode="json"), "fingerprint": real.fingerprint,
                          "split": real.split, "n": len(real)},
            "seed": cfg.seed,
            "inputs": inputs,
        }
        write_json_atomic(manifest_path, manifest)  # written last: its presence marks a finished distillation
        ownership.record(paths["root"], [manifest_path])
        log.info("distilled %d images (%d per class) to %s; BatchNorm matching loss %.3g -> %.3g", len(recovered.labels),
                 cfg.ipc, paths["dataset"], sum(recovered.bn_initial), sum(recovered.bn_final))
        return manifest

    # --- the whole pipeline -----------------------------------------------------------------------------------
    def fit(self, out: str | Path, *, resume: bool = False, on_epoch_end: Any = None,
            train_data: ImageSplit | None = None) -> Path:
        """Squeeze, recover, relabel, then train the student on the distilled data; writes ``out`` (the student)
        and ``<out>.distilled/`` (see the module docstring)."""
        distributed.check_supported(self)  # not under torchrun
        if train_data is not None:
            raise UserInputError("train_data", "GUARD / SRe2L train the student on the data they distil",
                                 "give the real data in the recipe's [data]")
        out = Path(out)
        self.apply_threads()  # before the squeeze and recover stages, not only the student's epochs
        paths = distilled_paths(out)
        # Before the squeeze: the student's checkpoint and <out>.distilled are new, empty or robustdistill's own.
        check_checkpoint_out(out)
        ownership.claim_out(paths["root"], DISTILLED, legacy=_is_legacy_distilled, what="<out>.distilled")
        for partial in (out.with_name(out.name + ".partial"), paths["squeezed"].with_name("squeezed.partial")):
            if partial.exists() and not resume:
                raise UserInputError("--resume", f"an interrupted run is kept in {partial}",
                                     f"add --resume to continue it, or delete {partial} to start over")
        cfg = self.config
        seed_everything(cfg.seed)
        real, _ = self.training_split()
        self.real_train = real
        self.check_squeeze_inputs(real)
        squeezed, squeeze_record = self.squeeze(paths, real, resume)
        squeezed.eval()
        self.squeezed = squeezed
        manifest = self.distil(paths, squeezed, squeeze_record, real, resume)
        self.distilled = manifest
        self.parents = [{"role": "squeezed", "path": squeeze_record["path"], "sha256": squeeze_record["sha256"]}]
        self.dataset_spec = {"kind": "hf-disk", "root": str(paths["dataset"])}
        synthetic = load_split(self.dataset_spec, "train")  # what was saved is what the student learns from
        if distilled_fingerprint(synthetic.x, synthetic.y) != manifest["fingerprint"]:
            raise UserInputError(str(paths["dataset"]), "does not hold the images its manifest names (changed on disk?)",
                                 f"delete {paths['root']} and run again")
        return super().fit(out, resume=resume, on_epoch_end=on_epoch_end, train_data=synthetic)

    # --- the student ------------------------------------------------------------------------------------------
    def batch_loss(self, model: Classifier, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        assert self.squeezed is not None, "fit() loads the squeezed model first"
        if cfg.mixup_alpha > 0:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
            lam = float(rng.beta(cfg.mixup_alpha, cfg.mixup_alpha))
            perm = torch.randperm(len(x), generator=generator).to(x.device)
            x = lam * x + (1 - lam) * x[perm]
        with torch.no_grad():
            teacher = self.squeezed(x)
        logits = model(x)
        loss = nn.functional.kl_div(torch.log_softmax(logits / cfg.temperature, dim=1),
                                    torch.log_softmax(teacher / cfg.temperature, dim=1),
                                    reduction="batchmean", log_target=True)
        return loss, logits

    def provenance(self, train: ImageSplit, state: TrainState, full: ImageSplit | None = None) -> dict[str, Any]:
        record = super().provenance(train, state, full)
        manifest = self.distilled
        record["data"] = {"spec": self.dataset_spec, "fingerprint": train.fingerprint, "split": "train",
                          "n_trained_on": len(train)}
        record["distilled"] = {
            "fingerprint": manifest["fingerprint"],
            "dataset": manifest["dataset"],
            "grid": manifest["grid"],
            "images": manifest["images"],
            "ipc": manifest["ipc"],
            "curvature": manifest["curvature"],
            "squeeze": manifest["squeeze"],
            "recover": manifest["recover"],
            "relabel": manifest["relabel"],
            "real_data": manifest["real_data"],
        }
        return record


@TRAINERS.register("sre2l")
class SRe2LTrainer(GuardTrainer):
    """SRe2L (Yin et al. NeurIPS 2023): squeeze, recover, relabel dataset distillation, then a student."""

    config_class = SRe2LConfig
    method = "sre2l"


def _recipe_config(checkpoint: Path) -> dict[str, Any]:
    import json

    try:
        provenance = json.loads((checkpoint / "config.json").read_text()).get("provenance") or {}
    except (OSError, ValueError):
        return {}
    recipe = provenance.get("recipe")
    return recipe if isinstance(recipe, dict) else {}


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A squeeze config without the settings that do not change the model (device)."""
    config = copy.deepcopy(config)
    config.pop("device", None)
    return config


__all__ = ["GuardConfig", "GuardTrainer", "RecoverSettings", "Recovered", "SRe2LConfig", "SRe2LTrainer",
           "SqueezeConfig", "SqueezeSettings", "SqueezeTrainer", "batchnorm_layers", "bn_matching_loss",
           "distilled_fingerprint", "distilled_paths", "recover", "relabel", "save_distilled_dataset", "save_grid"]
