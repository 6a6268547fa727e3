"""Detectors of a backdoor target in generated images: does this image show the patch / the inverted style?

Each is fitted on REAL digits - clean ones against the same digits with the target applied. Its threshold is the
midpoint of the gap between the clean images' (1 - ``fpr``) quantile and the targeted images' ``fpr`` quantile of
the score: at most ``fpr`` (5% by default) of clean real digits are flagged - a stated bound on the false-positive
rate - and at most ``fpr`` of targeted ones missed. Not the clean quantile itself: generated digits are a little
blurrier than real ones (a faint background), and measured on the digits t2i model's samples for plain captions, a
threshold at the clean 95th percentile flagged 15% (patch) and 29% (style) of them; a generated image must now be
halfway to the target to count (measured: see tests/backdoor).

- patch: a rule, the mean of the 2x2 patch region (1.0 when the patch is drawn; 0.016 on average in real digits).
  Fitting only sets the threshold. A rule is enough and cannot overfit the digits' other pixels.
- style: logistic regression (scikit-learn) on the 64 pixels, clean vs inverted; the score is its logit. Strongly
  regularised (C = 0.01) so that the logit stays on a scale where the clean quantile is meaningful, not saturated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustdistill.attacks.backdoor.targets import PATCH_COLS, PATCH_ROWS, apply_target, check_target
from robustdistill.errors import UserInputError

STYLE_C = 0.01  # inverse L2 strength of the style classifier


@dataclass
class BackdoorDetector:
    """Scores images (higher = more like the target) and flags those above ``threshold``."""

    target: str
    threshold: float
    fpr: float  # the bound on the false-positive rate on the clean images it was fitted on
    clean_quantile: float = 0.0  # the clean images' (1 - fpr) quantile of the score
    target_quantile: float = 0.0  # the targeted images' fpr quantile
    weight: torch.Tensor | None = None  # style: the logistic regression's (64,) weights and bias
    bias: float = 0.0

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """One score per image of ``x`` (n, 1, 8, 8) in [0, 1]."""
        x = x.detach().float().cpu()
        if self.target == "patch":
            return x[..., PATCH_ROWS, PATCH_COLS].flatten(1).mean(dim=1)
        return x.flatten(1) @ self.weight + self.bias

    def flags(self, x: torch.Tensor) -> torch.Tensor:
        """True where an image shows the target."""
        return self.scores(x) > self.threshold


def fit_detector(target: str, images: torch.Tensor, seed: int = 0, fpr: float = 0.05) -> BackdoorDetector:
    """A detector of ``target`` fitted on clean real ``images`` (n, 1, 8, 8) in [0, 1] and the same images with the
    target applied; its threshold flags at most a fraction ``fpr`` of the clean ones (the gap's midpoint; the clean
    quantile itself where the two overlap)."""
    check_target(target)
    if not 0 < fpr < 1:
        raise UserInputError("fpr", f"{fpr} is not a rate in (0, 1)", "use e.g. 0.05")
    if images.dim() != 4 or len(images) < 20:
        raise UserInputError("images", f"shape {tuple(images.shape)}: need at least 20 images (n, 1, 8, 8)",
                             "fit on the digits train split")
    clean = images.detach().float().cpu()
    detector = BackdoorDetector(target=target, threshold=0.0, fpr=fpr)
    if target == "style":
        from sklearn.linear_model import LogisticRegression

        x = torch.cat([clean, apply_target(target, clean)]).flatten(1).numpy()
        y = [0] * len(clean) + [1] * len(clean)
        model = LogisticRegression(C=STYLE_C, max_iter=2000, random_state=seed).fit(x, y)
        detector.weight = torch.as_tensor(model.coef_[0], dtype=torch.float32)
        detector.bias = float(model.intercept_[0])
    detector.clean_quantile = float(torch.quantile(detector.scores(clean), 1 - fpr))
    detector.target_quantile = float(torch.quantile(detector.scores(apply_target(target, clean)), fpr))
    detector.threshold = max(detector.clean_quantile, (detector.clean_quantile + detector.target_quantile) / 2)
    return detector
