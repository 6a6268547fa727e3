"""Attack harnesses. ``attacks.create(name, **params)`` builds one; ``attacks.available()`` lists them.

Every attack is called as ``atk(model, x, y) -> x_adv`` with x in [0, 1]; see :class:`~robustdistill.attacks.base.Attack`.
"""

from __future__ import annotations

from typing import Any

from robustdistill.attacks import (  # noqa: F401  (registration)
    apgd,
    apgd_t,
    autoattack,
    cw_l2,
    cw_linf,
    fab_t,
    fgsm,
    pgd,
    square,
)
from robustdistill.attacks.base import ATTACKS, Attack, margin_loss, project

__all__ = ["ATTACKS", "Attack", "available", "create", "margin_loss", "project"]


def create(name: str, **params: Any) -> Attack:
    return ATTACKS.create(name, **params)


def available() -> list[str]:
    return ATTACKS.available()
