"""The base of the probes that attack the teacher-student pair with one attack (transfer, agreement)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from robustdistill.audits.probes.base import Probe, ProbeConfig
from robustdistill.audits.probes.image.context import attack_cost, resolve_attack


class PairAttackConfig(ProbeConfig):
    attack: str = "pgd"
    params: dict[str, Any] = Field(default_factory=lambda: {"steps": 20})


class PairAttackProbe(Probe):
    """A probe over the teacher-student pair that runs one attack (shared by transfer and agreement)."""

    config_class = PairAttackConfig
    family = "classifier"
    group = "transfer-agreement"
    pair = True
    config: PairAttackConfig

    def validate(self) -> None:
        self.spec_ = resolve_attack(self.config.attack, self.config.params, self.threat_model, self.seed, self.where)

    def params(self) -> dict[str, Any]:
        return self.spec_.describe()

    def expected_cost(self) -> float:
        return 2 * attack_cost(self.params())  # one attack per model of the pair
