"""Checkpoint I/O: save robustdistill classifiers, load every model format robustdistill understands.

Loading never unpickles arbitrary objects: weights come from safetensors, or from ``torch.load(weights_only=True)``
for plain state dicts, and Hugging Face / diffusers directories are read with remote code disabled. A checkpoint
from an untrusted source therefore cannot run code.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustdistill import ownership
from robustdistill.errors import UserInputError
from robustdistill.models.architectures import infer_arch_params
from robustdistill.models.classifier import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION, Classifier, HFImageClassifier
from robustdistill.utils import sha256_tree

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CHECKPOINT_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME})  # all a robustdistill checkpoint directory holds
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Keys under which training scripts commonly nest the state dict, in the order they are tried.
STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "net", "model")
# Prefixes added by DataParallel / DistributedDataParallel and torch.compile.
STRIPPED_PREFIXES = ("module.", "_orig_mod.")
# Final layers whose output size gives the number of classes.
HEAD_KEYS = ("linear.weight", "fc.weight", "fc2.weight")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def robustdistill_version() -> str:
    try:
        return metadata.version("robustdistill")
    except metadata.PackageNotFoundError:
        return "0+unknown"


# --------------------------------------------------------------------------------------------------------------
# Saving


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str], *, may_replace: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``target``; on success it replaces ``target`` in one rename.

    An existing ``target`` is only replaced when ``may_replace(target)`` agrees, and only after the new directory
    is complete; on failure the temporary directory is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not may_replace(target):
        raise UserInputError(str(target), "exists and is not a model directory robustdistill wrote",
                             "choose another output directory, or remove it first")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            # Directories cannot be renamed over non-empty ones: move the old one aside, then swap.
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / "previous")
            try:
                os.replace(tmp, target)
            except BaseException:
                # Put the old checkpoint back; if even that fails it stays in `old` rather than being deleted.
                os.replace(old / "previous", target)
                old.rmdir()
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _is_replaceable_checkpoint(path: Path) -> bool:
    """Empty, or a robustdistill checkpoint holding nothing but the two files save_checkpoint writes: a folder with
    anything else in it (a user's notes next to a config.json) is never replaced."""
    if not path.is_dir() or path.is_symlink():
        return False
    entries = list(path.iterdir())
    if not entries:
        return True
    if {p.name for p in entries} != CHECKPOINT_FILES or any(p.is_symlink() or not p.is_file() for p in entries):
        return False
    try:
        return json.loads((path / CONFIG_NAME).read_text(encoding="utf-8")).get("format") == CHECKPOINT_FORMAT
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def check_checkpoint_out(target: str | os.PathLike[str], field: str = "out") -> Path:
    """Before any training: ``target`` can become a checkpoint directory (new and creatable, empty, or a checkpoint
    robustdistill wrote that may be replaced); otherwise a :class:`UserInputError` and nothing is written."""
    target = Path(target)
    ownership.check_location(target, field)
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise UserInputError(field, f"{target} is a file, not a folder",
                                 "choose a checkpoint directory that does not exist yet")
        if not _is_replaceable_checkpoint(target):
            raise UserInputError(field, f"{target} exists and is not a model directory robustdistill wrote "
                                 f"(only {CONFIG_NAME} and {WEIGHTS_NAME})",
                                 "choose another output directory; robustdistill replaces only its own checkpoints")
    return target


def remove_checkpoint(target: str | os.PathLike[str]) -> None:
    """Delete a checkpoint directory robustdistill wrote (only config.json and model.safetensors in it); anything
    else is refused, never deleted."""
    target = Path(target)
    if not _is_replaceable_checkpoint(target):
        raise UserInputError(str(target), "is not a checkpoint directory robustdistill wrote, so it is not deleted",
                             "move it away, then run again")
    for name in CHECKPOINT_FILES:
        (target / name).unlink(missing_ok=True)
    target.rmdir()


def _safetensors_ready(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that own their storage (safetensors refuses shared or strided tensors)."""
    seen: set[int] = set()
    ready: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu")
        storage = tensor.untyped_storage()
        shared = storage.data_ptr() in seen or storage.nbytes() != tensor.numel() * tensor.element_size()
        if shared or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        seen.add(tensor.untyped_storage().data_ptr())
        ready[name] = tensor
    return ready


def save_checkpoint(
    model: Classifier, out_dir: str | os.PathLike[str], provenance: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` as a checkpoint directory (config.json + model.safetensors), atomically.

    ``provenance`` (recipe, parents, data, train_members, metrics, ...) is stored in config.json; when omitted the
    model's own ``provenance`` is kept. ``created`` and ``robustdistill_version`` are filled in if missing.
    """
    from safetensors.torch import save_file

    if not isinstance(model, Classifier):
        raise UserInputError("model", f"save_checkpoint writes robustdistill Classifiers, got {type(model).__name__}",
                             "wrap the network with Classifier(...) or Classifier.from_arch(...)")
    record = dict(model.provenance if provenance is None else provenance)
    record.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    record.setdefault("robustdistill_version", robustdistill_version())
    config = {**model.config(), "provenance": record}
    try:
        config_text = json.dumps(config, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise UserInputError("provenance", f"is not JSON-serialisable ({exc})",
                             "pass plain dicts, lists, strings and finite numbers") from None
    tensors = _safetensors_ready(model.network.state_dict())
    target = Path(out_dir)
    with atomic_directory(target, may_replace=_is_replaceable_checkpoint) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(config_text)
    model.provenance = record
    logger.info("saved %s checkpoint to %s", model.arch, target)
    return target


def checkpoint_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a checkpoint file, or of all files in a checkpoint directory (names and contents)."""
    target = Path(path)
    if not target.exists():
        raise UserInputError("path", f"no such file or directory: {target}", "check the checkpoint path")
    return sha256_tree(target)


# --------------------------------------------------------------------------------------------------------------
# Loading


def load_model(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    classes: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    **arch_params: Any,
) -> Any:
    """Load a model from a local path, in eval mode.

    Returns a :class:`Classifier` (robustdistill checkpoint directory, or a plain state dict / safetensors file
    together with ``arch=``), an :class:`HFImageClassifier` (transformers image-classification directory), a
    :class:`~robustdistill.models.language.LanguageModel` (causal-LM directory) or a
    :class:`~robustdistill.models.diffusion.DiffusionModel` (diffusers directory). Nothing is ever downloaded.
    """
    target = Path(path).expanduser()
    if not target.exists():
        # Say first what is true of every missing path; a Hub-shaped name (checkpoints/x looks like one too) only
        # adds the hint.
        text = str(path)
        fix = "check the path"
        if _HUB_NAME.match(text):
            fix += ("; if it is a Hugging Face Hub name: robustdistill never downloads models, so download it "
                    "first (`hf download NAME --local-dir DIR`) and pass the local directory")
        raise UserInputError("model", f"no such file or directory: {text}", fix)
    if target.is_dir():
        model = _load_directory(target, arch=arch, num_classes=num_classes, input_shape=input_shape, mean=mean,
                                std=std, classes=classes, device=device, arch_params=arch_params)
    else:
        model = _load_weights_file(target, arch=arch, num_classes=num_classes, input_shape=input_shape, mean=mean,
                                   std=std, classes=classes, device=device, arch_params=arch_params)
    return model


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserInputError(str(path), f"is not readable JSON ({exc})", "restore or re-save the checkpoint") from None
    if not isinstance(data, dict):
        raise UserInputError(str(path), "must hold a JSON object", "restore or re-save the checkpoint")
    return data


def _load_directory(target: Path, *, arch: str | None, device: str | torch.device, arch_params: dict[str, Any],
                    **overrides: Any) -> Any:
    config_path = target / CONFIG_NAME
    if (target / "model_index.json").is_file():
        from robustdistill.models.diffusion import load_diffusion_model

        return load_diffusion_model(target, device=device)
    if not config_path.is_file():
        raise UserInputError("model", f"{target} has no config.json or model_index.json",
                             "pass a robustdistill checkpoint, a Hugging Face or diffusers directory, "
                             "or a state-dict file with arch=")
    config = _read_json(config_path)
    if config.get("format") == CHECKPOINT_FORMAT:
        ignored = [k for k, v in {"arch": arch, **overrides, **arch_params}.items() if v is not None]
        if ignored:
            logger.warning("%s: ignoring %s; the checkpoint's config.json decides them", target, ", ".join(ignored))
        return _load_robustdistill_checkpoint(target, config, device)
    if config.get("_class_name"):
        from robustdistill.models.diffusion import load_diffusion_model

        return load_diffusion_model(target, device=device)
    architectures = [str(a) for a in config.get("architectures") or []]
    if any(a.endswith("ForImageClassification") for a in architectures):
        return _load_hf_image_classifier(target, overrides.get("mean"), overrides.get("std"), device)
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        from robustdistill.models.language import load_language_model

        return load_language_model(target, device=device)
    found = ", ".join(architectures) or "none"
    raise UserInputError(str(config_path), f"does not describe a model robustdistill reads (architectures: {found})",
                         "supported: robustdistill checkpoints, *ForImageClassification, *ForCausalLM, diffusers UNets")


def _load_robustdistill_checkpoint(target: Path, config: dict[str, Any], device: str | torch.device) -> Classifier:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    version = config.get("format_version", 1)
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise UserInputError(f"{target / CONFIG_NAME}: format_version",
                             f"{version!r} is newer than this robustdistill reads ({CHECKPOINT_FORMAT_VERSION})",
                             "upgrade robustdistill")
    weights = target / WEIGHTS_NAME
    if not weights.is_file():
        raise UserInputError(str(target), f"has no {WEIGHTS_NAME}", "the checkpoint is incomplete; save it again")
    model = Classifier.from_config(config)
    try:
        state_dict = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise UserInputError(str(weights), f"is not a readable safetensors file ({exc})",
                             "the checkpoint is damaged; save it again") from None
    _load_strict(model.network, state_dict, source=str(weights), arch=model.arch)
    return model.to(device).eval()


def _load_hf_image_classifier(target: Path, mean: Any, std: Any, device: str | torch.device) -> HFImageClassifier:
    from transformers import AutoModelForImageClassification

    try:
        network = AutoModelForImageClassification.from_pretrained(
            str(target), local_files_only=True, trust_remote_code=False, use_safetensors=True
        )
    except (OSError, ValueError) as exc:
        raise UserInputError(str(target), f"cannot load the image classifier: {exc}".splitlines()[0],
                             "the directory needs config.json and model.safetensors (save_pretrained writes both)",
                             ) from None
    processor_path = target / "preprocessor_config.json"
    processor = _read_json(processor_path) if processor_path.is_file() else {}
    if not processor and mean is None:
        logger.warning("%s has no preprocessor_config.json: inputs are not normalised or resized", target)
    model = HFImageClassifier(network, processor=processor, mean=mean, std=std,
                              provenance={"source": str(target), "format": "huggingface"})
    return model.to(device).eval()


def _load_weights_file(target: Path, *, arch: str | None, num_classes: int | None, input_shape: Sequence[int] | None,
                       mean: Any, std: Any, classes: Any, device: str | torch.device,
                       arch_params: dict[str, Any]) -> Classifier:
    suffix = target.suffix.lower()
    if suffix not in STATE_DICT_SUFFIXES + (".safetensors",):
        raise UserInputError("model", f"{target.name}: unknown file type {suffix or '(none)'}",
                             "pass a checkpoint directory, or a state dict saved as .pt/.pth/.bin or .safetensors")
    if arch is None:
        raise UserInputError("arch", f"{target.name} is a bare state dict and does not say its architecture",
                             "pass arch= (Python) or --arch (CLI), e.g. arch='resnet18-cifar'")
    state_dict = _read_safetensors(target) if suffix == ".safetensors" else _read_torch_state_dict(target)
    state_dict = _strip_prefixes(state_dict)
    if num_classes is None:
        head = next((state_dict[k] for k in HEAD_KEYS if k in state_dict and state_dict[k].dim() == 2), None)
        num_classes = int(head.shape[0]) if head is not None else 10
    if input_shape is None:
        stem = state_dict.get("conv1.weight")
        channels = int(stem.shape[1]) if stem is not None and stem.dim() == 4 else 3
        input_shape = (channels, 32, 32)
    params = {**infer_arch_params(arch, state_dict), **arch_params}
    model = Classifier.from_arch(arch, num_classes=num_classes, input_shape=input_shape, mean=mean, std=std,
                                 classes=classes, provenance={"source": str(target), "format": "state_dict"}, **params)
    _load_strict(model.network, state_dict, source=str(target), arch=arch)
    if mean is None:
        logger.info("%s: no mean/std given, so inputs reach the network unnormalised", target.name)
    return model.to(device).eval()


def _read_safetensors(target: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(target), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise UserInputError(str(target), f"is not a readable safetensors file ({exc})", "check the file") from None


def _read_torch_state_dict(target: Path) -> dict[str, torch.Tensor]:
    try:
        # weights_only=True: tensors and plain containers only; any other pickled object is refused unexecuted.
        with warnings.catch_warnings():
            # Plain pickles (not torch.save zips) trigger a protocol notice that means nothing to the user.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            loaded = torch.load(str(target), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserInputError(
            str(target),
            "holds pickled Python objects (for example a whole nn.Module), which robustdistill will not unpickle "
            "because unpickling can run arbitrary code",
            "in the trusted environment that made it, save `model.state_dict()` with torch.save, or safetensors",
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, AttributeError) as exc:
        raise UserInputError(str(target), f"is not a readable PyTorch state dict ({exc})".splitlines()[0],
                             "save it with torch.save(model.state_dict(), path)") from None
    return _unwrap_state_dict(loaded, target)


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _unwrap_state_dict(loaded: Any, target: Path) -> dict[str, torch.Tensor]:
    if _is_state_dict(loaded):
        return dict(loaded)
    if isinstance(loaded, Mapping):
        for key in STATE_DICT_WRAPPERS:
            if _is_state_dict(loaded.get(key)):
                return dict(loaded[key])
        keys = ", ".join(sorted(map(str, loaded))[:8])
        raise UserInputError(str(target), f"holds a dict without a state dict of tensors (top-level keys: {keys})",
                             "save model.state_dict() itself, or nest it under one of "
                             + ", ".join(STATE_DICT_WRAPPERS))
    raise UserInputError(str(target), f"holds a {type(loaded).__name__}, not a state dict",
                         "save it with torch.save(model.state_dict(), path)")


def _strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                changed = True
    return state_dict


def _load_strict(network: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str, arch: str) -> None:
    """Strict loading, with mismatches reported as the keys and the fix rather than a torch traceback."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys ({_few(missing)})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys ({_few(unexpected)})")
        raise UserInputError(source, f"does not match architecture {arch!r}: " + "; ".join(parts),
                             "pass the arch= (and arch params) the weights were trained with")
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if tuple(state_dict[k].shape) != tuple(v.shape)]
    if wrong:
        raise UserInputError(source, f"tensor shapes do not match architecture {arch!r}: {_few(wrong)}",
                             "check arch=, num_classes= and the arch params (e.g. depth, widen_factor)")
    network.load_state_dict(state_dict, strict=True)


def _few(items: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")
