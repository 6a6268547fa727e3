"""artifacts/examples.npz: the clean and adversarial example images a run saved (:class:`Examples`), read by
:func:`load_examples` tolerantly (a missing or malformed file is a note in the report, not an error), and
:func:`inside_run`, which keeps a report to its own run's files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robustdistill.reports.records import order_roles

log = logging.getLogger(__name__)


@dataclass
class Examples:
    """artifacts/examples.npz: clean (K, C, H, W) in [0, 1], labels (K,), attack name, and per role r
    adv_<r>, pred_clean_<r>, pred_adv_<r>."""

    clean: np.ndarray
    labels: np.ndarray
    attack: str
    adv: dict[str, np.ndarray]
    pred_clean: dict[str, np.ndarray]
    pred_adv: dict[str, np.ndarray]
    classes: list[str] | None = None

    @property
    def roles(self) -> list[str]:
        return order_roles(self.adv)

    def class_name(self, index: Any) -> str:
        try:
            i = int(index)
        except (TypeError, ValueError):
            return str(index)
        if self.classes and 0 <= i < len(self.classes):
            return self.classes[i]
        return str(i)


def _as_nchw(array: np.ndarray) -> np.ndarray | None:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 3:  # (K, H, W): one channel
        array = array[:, None]
    if array.ndim != 4:
        return None
    if array.shape[1] not in (1, 3) and array.shape[-1] in (1, 3):  # channels last
        array = array.transpose(0, 3, 1, 2)
    if array.shape[1] not in (1, 3):
        return None
    return np.clip(np.nan_to_num(array), 0.0, 1.0)


def inside_run(path: Path, run_dir: Path) -> bool:
    """Whether ``path``, followed through any symbolic link, lies inside ``run_dir``: a report reads only its own
    run's files, never a link to a file elsewhere."""
    return path.resolve().is_relative_to(run_dir.resolve())


def load_examples(path: Path) -> tuple[Examples | None, str]:
    """(examples, "") or (None, why not): a missing or malformed file is a note in the report, not an error."""
    if not path.is_file():
        return None, "this run saved no examples (artifacts/examples.npz)"
    if not inside_run(path, path.parent.parent):
        return None, "artifacts/examples.npz leads outside the run directory: not read"
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported, not raised
        log.warning("cannot read %s: %s", path, error)
        return None, f"artifacts/examples.npz could not be read ({type(error).__name__})"
    if "clean" not in arrays:
        return None, "artifacts/examples.npz has no 'clean' array"
    clean = _as_nchw(arrays["clean"])
    if clean is None or clean.shape[0] == 0:
        return None, f"artifacts/examples.npz: 'clean' has shape {arrays['clean'].shape}, expected (K, C, H, W)"
    k = clean.shape[0]
    labels = arrays.get("labels")
    labels = (
        np.asarray(labels).reshape(-1)[:k] if labels is not None and np.asarray(labels).size >= k else np.full(k, -1)
    )
    adv, pred_clean, pred_adv = {}, {}, {}
    for key, value in arrays.items():
        if not key.startswith("adv_"):
            continue
        role = key[len("adv_") :]
        array = _as_nchw(value)
        if array is None or array.shape != clean.shape:
            log.warning("examples.npz: %s has shape %s, clean %s; skipped", key, np.shape(value), clean.shape)
            continue
        adv[role] = array
        for store, prefix in ((pred_clean, "pred_clean_"), (pred_adv, "pred_adv_")):
            pred = arrays.get(prefix + role)
            if pred is not None and np.asarray(pred).size >= k:
                store[role] = np.asarray(pred).reshape(-1)[:k]
    attack = arrays.get("attack")
    attack_name = str(attack.reshape(-1)[0]) if attack is not None and np.asarray(attack).size else "attack"
    classes = arrays.get("classes")
    class_names = [str(c) for c in np.asarray(classes).reshape(-1)] if classes is not None else None
    return Examples(clean, labels, attack_name, adv, pred_clean, pred_adv, class_names), ""
