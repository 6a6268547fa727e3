"""robustdistill: robustness and security audits for teacher-to-student distillation, and robust trainers.

    from robustdistill import load_model, attacks
    model = load_model("checkpoints/digits-standard")
    x_adv = attacks.create("pgd", eps=0.1, steps=20)(model, x, y)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["UserInputError", "__version__", "attacks", "audit", "load_model"]

from robustdistill.errors import UserInputError

if TYPE_CHECKING:
    from robustdistill import attacks
    from robustdistill.audits import audit
    from robustdistill.models import load_model


def __getattr__(name: str) -> Any:
    # Lazy: `import robustdistill` stays fast; torch-heavy parts load on first use.
    if name == "load_model":
        from robustdistill.models import load_model

        return load_model
    if name == "audit":
        from robustdistill.audits import audit

        return audit
    if name == "attacks":
        import robustdistill.attacks as attacks

        return attacks
    raise AttributeError(name)
