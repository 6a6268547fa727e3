"""Training configs and recipes.

A recipe is a TOML file whose keys are the fields of a trainer's config dataclass (``[data]`` is the
:class:`~robustdistill.data.DataSpec`). ``--set key=value`` overrides any field, type-checked. A recipe may name a
threat-model preset (``threat_model = "attacks/digits-linf.toml"``) that supplies ``eps`` and ``norm`` unless the
recipe sets them itself.
"""

from __future__ import annotations

import tomllib
from dataclasses import field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

from robustdistill.data import DataSpec, parse_spec
from robustdistill.errors import UserInputError
from robustdistill.limits import (MAX_LR, check_epochs, check_eps, check_finite, check_lr, check_seed, check_steps,
                                  read_text)

STRICT = ConfigDict(extra="forbid")
SelectMetric = Literal["clean", "robust", "mean", "last"]  # "last": no selection, keep the final epoch


@dataclass(config=STRICT)
class TrainConfig:
    """Fields every trainer shares. Optimisation defaults follow the CIFAR-10 papers; the data default is the
    built-in digits (a CIFAR-10 run needs a folder: see defenses/cifar10-*.toml)."""

    data: DataSpec = field(default_factory=DataSpec)
    # Train on part of the train split: a seeded, class-balanced subset of this fraction (``train_subset_rest``:
    # the points that subset leaves out). Membership-inference experiments train a model on half the data so the
    # other half are known non-members; provenance records exactly which points were used.
    train_fraction: float = pydantic.Field(1.0, gt=0, le=1)
    train_subset_seed: int = 0
    train_subset_rest: bool = False
    arch: str = "resnet18-cifar"
    arch_params: dict[str, Any] = field(default_factory=dict)
    # Input normalisation applied inside the model (attacks always work in [0, 1] pixel space).
    mean: list[float] | None = None
    std: list[float] | None = None
    epochs: int = pydantic.Field(200, ge=1)
    batch_size: int = pydantic.Field(128, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = pydantic.Field(0.1, gt=0)
    momentum: float = pydantic.Field(0.9, ge=0, lt=1)
    weight_decay: float = pydantic.Field(5e-4, ge=0)
    lr_milestones: list[int] = field(default_factory=lambda: [100, 150])
    lr_gamma: float = pydantic.Field(0.1, gt=0, le=1)
    augment: Literal["crop-flip", "shift", "none"] = "crop-flip"
    seed: int = 0
    device: str = "auto"
    # Threat model used by adversarial training and by the robust validation metric.
    threat_model: str | None = None
    norm: Literal["linf", "l2"] = "linf"
    eps: float = pydantic.Field(8 / 255, ge=0)
    attack_steps: int = pydantic.Field(10, ge=1)
    attack_step_size: float | None = None  # None -> eps / 4 (2/255 at 8/255)
    attack_bn_mode: Literal["eval", "train"] = "eval"
    # Model selection on the validation split (never the test split).
    select_metric: SelectMetric = "clean"
    val_robust: bool = True
    val_attack_steps: int = pydantic.Field(10, ge=1)

    @property
    def step_size(self) -> float:
        return self.attack_step_size if self.attack_step_size is not None else self.eps / 4


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value), the value read as a TOML literal (strings may be bare)."""
    if "=" not in item:
        raise UserInputError("--set", f"{item!r} is not key=value", "write e.g. --set epochs=5")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise UserInputError("--set", f"{item!r} has an empty key", "write e.g. --set epochs=5")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string such as a path or an architecture name
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        target = raw
        for part in path[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise UserInputError(f"--set {item}", f"{part!r} is not a table")
        target[path[-1]] = value
    return raw


def resolve_path(value: str, recipe: Path | None) -> str:
    """Paths in a recipe are relative to the working directory, else to the recipe's folder or its parent."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists() or recipe is None:
        return str(path)
    for base in (recipe.parent, recipe.parent.parent):
        if (base / path).exists():
            return str(base / path)
    return str(path)


def read_toml(path: str | Path, field_name: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(field_name, f"file not found: {path}", "check the path")
    try:
        return tomllib.loads(read_text(path, field_name))
    except tomllib.TOMLDecodeError as exc:
        raise UserInputError(field_name, f"{path} is not valid TOML: {exc}", "fix the syntax") from None


def load_threat_model(path: str) -> dict[str, Any]:
    preset = read_toml(path, "threat_model").get("threat_model")
    if not isinstance(preset, dict) or "eps" not in preset:
        raise UserInputError("threat_model", f"{path} has no [threat_model] table with eps", "point at a preset in attacks/")
    return preset


def build_config(config_class: type, raw: dict[str, Any], recipe: Path | None = None) -> Any:
    """Validate a raw dict into ``config_class``; errors name the field."""
    raw = dict(raw)
    raw.pop("method", None)
    raw.pop("description", None)
    if raw.get("threat_model"):
        raw["threat_model"] = resolve_path(raw["threat_model"], recipe)
        preset = load_threat_model(raw["threat_model"])
        for key in ("eps", "norm"):
            if key in preset:
                raw.setdefault(key, preset[key])
    for key in path_fields(config_class):
        if raw.get(key) == "":
            raw[key] = None if key.endswith("_recipe") else ""
        elif isinstance(raw.get(key), str):
            raw[key] = resolve_path(raw[key], recipe)
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("root"), str):
        data = {**data, "root": resolve_path(data["root"], recipe)}
    if data is not None:
        raw["data"] = parse_spec(data)  # raises UserInputError naming data.<field>
    config = construct(config_class, raw)
    check_bounds(config)
    return config


def construct(config_class: type, raw: dict[str, Any]) -> Any:
    """``config_class(**raw)``, a validation failure as a UserInputError naming the setting (a check of the config
    itself, in its __post_init__, raises its own UserInputError, which pydantic wraps: it is unwrapped)."""
    try:
        return config_class(**raw)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        original = (error.get("ctx") or {}).get("error")
        if isinstance(original, UserInputError):
            raise original from None
        where = ".".join(str(p) for p in error["loc"]) or "config"
        if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            known = ", ".join(f.name for f in fields(config_class))
            raise UserInputError(where, "unknown setting", f"known settings: {known}") from None
        raise UserInputError(where, error["msg"], f"got {error.get('input')!r}") from None


def check_bounds(config: Any, prefix: str = "") -> None:
    """Bounds that hold for every trainer's config, nested settings included, by field name: no inf or nan,
    seeds that every RNG accepts, learning rates and attack steps with a ceiling, eps within the input range.

    The field declarations give the lower bounds; these add what pydantic would let through (TOML's inf, 1e308,
    2**64) and would otherwise fail after the data is loaded, or in the middle of training.
    """
    norm = getattr(config, "norm", "linf")
    data = getattr(config, "data", None)
    dims = data.input_values() if isinstance(data, DataSpec) else None  # the L2 diameter, when the spec decides it
    for item in fields(config):
        name, value, where = item.name, getattr(config, item.name), f"{prefix}{item.name}"
        if is_dataclass(value) and not isinstance(value, type):
            check_bounds(value, f"{where}.")
        elif isinstance(value, float):
            check_finite(where, value)
        if value is None or isinstance(value, bool):
            continue
        if name == "seed" or name.endswith("_seed"):
            check_seed(where, value)
        elif name == "lr":
            check_lr(where, value)
        elif name.endswith("_lr") and isinstance(value, (int, float)) and value > MAX_LR:
            raise UserInputError(where, f"must be at most {MAX_LR:g}, got {value:g}")
        elif (name.endswith("steps") or name == "iterations") and isinstance(value, int):
            check_steps(where, value)
        elif (name == "epochs" or name.endswith("_epochs")) and isinstance(value, int):
            check_epochs(where, value)
        elif name == "eps":
            check_eps(where, value, norm, dims=dims)
        elif name.endswith("step_size") and value <= 0:
            raise UserInputError(where, f"must be > 0, got {value:g}", "omit it for the paper's eps / 4")


def path_fields(config_class: type) -> list[str]:
    """Config fields holding paths to resolve: declared by the class as ``PATH_FIELDS``."""
    return list(getattr(config_class, "PATH_FIELDS", ()))


def load_recipe(config_class: type, path: str | Path | None, overrides: list[str], method: str,
                build: Any = None) -> Any:
    """The config of a recipe file plus ``key=value`` overrides, built by ``build(config_class, raw, recipe)``
    (:func:`build_config` for the image trainers; the language-model trainers pass their own)."""
    raw: dict[str, Any] = {}
    recipe = Path(path) if path else None
    if recipe is not None:
        raw = read_toml(recipe, "--config")
        named = raw.get("method")
        if named is not None and named != method:
            raise UserInputError("method", f"{recipe} is a {named!r} recipe, not {method!r}", f"run `robustdistill train {named} --config {recipe}`")
    return (build or build_config)(config_class, apply_overrides(raw, overrides), recipe)


def config_to_dict(config: Any) -> dict[str, Any]:
    return pydantic.TypeAdapter(type(config)).dump_python(config, mode="json")
