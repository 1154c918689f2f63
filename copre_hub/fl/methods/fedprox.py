"""FedProx (Li et al. 2020): FedAvg whose local objective adds ``mu/2 * ||w - w_global||^2``.

The paper uses it downstream with mu = 1 (Table 3b). mu = 0 is FedAvg exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from copre_hub.errors import ConfigError
from copre_hub.fl.methods.base import Method


@dataclass(frozen=True, kw_only=True)
class FedProx(Method):
    """FedAvg with a proximal term pulling local weights toward the round's global weights."""

    name = "fedprox"
    display_name = "FedProx"

    mu: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mu < 0:
            raise ConfigError(f"method.mu must be non-negative, got {self.mu}.")

    def local_schedule(self) -> dict:
        return {**super().local_schedule(), "prox_mu": self.mu}
