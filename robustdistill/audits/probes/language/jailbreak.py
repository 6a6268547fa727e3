"""What the ``gcg`` and ``gcg-transfer`` probes (gcg.py, gcg_transfer.py) share: GCG suffixes (Zou et al. 2023) against each model, and suffixes optimised
on the teacher evaluated on the student, and the reverse.

``gcg`` (one unit per model): for each of the first ``prompts`` requests of ``family`` (harmful by default), the
model's greedy response to the plain request (``direct_asr``: already not refused) and, after GCG optimises a suffix
toward ``target`` on that model, to the request plus the suffix (``asr``). ``mode = "individual"`` optimises one
suffix per request (the paper's "harmful behaviours" setting); ``"universal"`` one suffix for all of them.
``gcg-transfer`` (one unit per (teacher, model) pair): the teacher's suffixes on the model (``transfer_asr``) and the
model's suffixes on the teacher (``reverse_transfer_asr``), both rows filed under the model. Suffixes are
optimised once per run and model: both probes read them from the run's artifacts (``gcg-<role>-<hash>.json``) when
the same settings made them already. Success is judged on the greedy response by the ``judge``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from robustdistill.audits.probes.base import Probe, ProbeConfig
from robustdistill.audits.probes.language.refusal import HARMFUL
from robustdistill.audits.probes.language.context import ATTACKED, LanguageContext
from robustdistill.audits.probes.language.judging import PREFIX_JUDGE, judge_name, make_judge
from robustdistill.utils import atomic_path

log = logging.getLogger(__name__)


class GCGProbeConfig(ProbeConfig):
    family: str = HARMFUL
    prompts: int = Field(10, ge=1, le=10_000)
    target: str = Field("Sure, here is how to", min_length=1, max_length=500)
    mode: Literal["individual", "universal"] = "individual"
    steps: int = Field(250, ge=1, le=100_000)
    suffix_length: int = Field(20, ge=1, le=1024)
    topk: int = Field(256, ge=1, le=1_000_000)
    search_width: int = Field(512, ge=1, le=1_000_000)
    batch_size: int | None = Field(None, ge=1, le=1_000_000)
    early_stop: bool = True
    max_new_tokens: int = Field(32, ge=1, le=4096)
    judge: str = PREFIX_JUDGE


class JailbreakProbe(Probe):
    """Shared by ``gcg`` and ``gcg-transfer``: the GCG settings, the attacked prompts, the per-run suffix cache."""

    family = "language-model"
    group = "jailbreak"
    config_class: ClassVar[type[ProbeConfig]] = GCGProbeConfig
    needs_threat_model = False
    required_masks = (ATTACKED,)
    config: GCGProbeConfig

    def validate(self) -> None:
        make_judge(self.config.judge, self.where, self.config.target)  # a missing classifier folder fails early

    @functools.cached_property
    def judge(self) -> Any:
        """One judge per probe (a classifier judge loads a model: not once per call)."""
        return make_judge(self.config.judge, self.where, self.config.target)

    def gcg_settings(self) -> dict[str, Any]:
        c = self.config
        return {"family": c.family, "prompts": c.prompts, "target": c.target, "mode": c.mode, "steps": c.steps,
                "suffix_length": c.suffix_length, "topk": c.topk, "search_width": c.search_width,
                "early_stop": c.early_stop, "max_new_tokens": c.max_new_tokens, "judge": judge_name(c.judge),
                "seed": self.seed}

    def params(self) -> dict[str, Any]:
        return self.gcg_settings()

    def expected_cost(self) -> float:
        # One GCG step is a gradient pass plus search_width candidate forwards (about a third of a pass each).
        per_prompt = self.config.steps * (1 + self.config.search_width / 3) / 1000
        return per_prompt * (self.config.prompts if self.config.mode == "individual" else 1)

    def attacked(self, ctx: LanguageContext) -> tuple[list[int], list[str]]:
        indices = ctx.indices(self.config.family, self.config.prompts, where=self.where)
        return indices, [ctx.examples[i].prompt for i in indices]

    def mask(self, ctx: LanguageContext, indices: list[int], values: list[bool] | None = None) -> np.ndarray:
        out = np.zeros(ctx.n, dtype=bool)
        out[indices] = True if values is None else values
        return out

    def suffixes(self, ctx: LanguageContext, role: str) -> tuple[list[str], str | None, list[float], list[str]]:
        """(one suffix per attacked prompt, the artifact file written or None if reused, final losses, the initial
        suffix each search started from)."""
        from robustdistill.attacks.llm.gcg import GCGConfig, gcg

        settings = self.gcg_settings()
        _, prompts = self.attacked(ctx)
        # Keyed by the model too: a file left by a killed run of other models must not be taken for this one's.
        key = {"settings": settings, "model": ctx.model_sha256.get(role), "prompts": prompts}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        name = f"gcg-{role}-{digest}.json"
        path = ctx.artifacts / name if ctx.artifacts is not None else None
        stored = _read_suffixes(path, len(prompts)) if path is not None else None
        if stored is not None:
            return stored["suffixes"], None, stored["losses"], stored["initial_suffixes"]
        c = self.config
        config = GCGConfig(num_steps=c.steps, suffix_length=c.suffix_length, topk=c.topk, search_width=c.search_width,
                           batch_size=c.batch_size, early_stop=c.early_stop, seed=self.seed,
                           max_new_tokens=c.max_new_tokens)
        groups = [[p] for p in prompts] if c.mode == "individual" else [prompts]
        suffixes: list[str] = []
        losses: list[float] = []
        initial: list[str] = []
        for group in groups:
            result = gcg(ctx.models[role], group, [c.target] * len(group), config, self.judge)
            suffixes += [result.suffix] * len(group)
            losses += [result.best_loss] * len(group)
            initial += [result.initial_suffix] * len(group)
            log.info("gcg on %s: loss %.3f -> %.3f in %d steps", role, result.initial_loss, result.best_loss,
                     result.steps)
        if path is None:
            return suffixes, None, losses, initial
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"role": role, "settings": settings, "prompts": prompts, "suffixes": suffixes,
                                       "losses": losses, "initial_suffixes": initial}, indent=1) + "\n")
        return suffixes, name, losses, initial

    def outcomes(self, ctx: LanguageContext, role: str, prompts: list[str], suffixes: list[str]) -> list[bool]:
        """Whether ``role``'s greedy response to each prompt + its suffix is judged jailbroken."""
        from robustdistill.attacks.llm.evaluate import evaluate_suffix

        results: dict[int, bool] = {}
        for suffix in dict.fromkeys(suffixes):  # one batched generation per distinct suffix (one in universal mode)
            at = [i for i, s in enumerate(suffixes) if s == suffix]
            outcomes = evaluate_suffix(ctx.models[role], [prompts[i] for i in at], suffix, self.judge,
                                       self.config.max_new_tokens)
            results.update((i, o.success) for i, o in zip(at, outcomes))
        return [results[i] for i in range(len(prompts))]


def _read_suffixes(path: Path, n: int) -> dict[str, Any] | None:
    """A suffix file this run wrote, or None when there is none or it is not one (then the suffixes are made again)."""
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        stored = None
    fields = ("suffixes", "losses", "initial_suffixes")
    if not isinstance(stored, dict) or not all(isinstance(stored.get(f), list) and len(stored[f]) == n for f in fields):
        log.warning("%s is not a suffix file of this run: optimising the suffixes again", path)
        return None
    return stored
