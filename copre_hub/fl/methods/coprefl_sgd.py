"""CoPreFL-SGD, the paper's Scenario II ablation: a Scenario I CoPreFL round on the clients (their own
support/query splits and meta-step), then ``server_steps`` plain SGD iterations on the server data.

It asks whether the server data is better used as meta-learning queries (CoPreFL, Scenario II) or for SGD.
"""

from __future__ import annotations

from dataclasses import dataclass

from copre_hub.errors import ConfigError
from copre_hub.fl.methods.base import server_sgd
from copre_hub.fl.methods.coprefl import CoPreFL
from copre_hub.fl.simulation import Simulation


@dataclass(frozen=True, kw_only=True)
class CoPreFLSGD(CoPreFL):
    """CoPreFL on the clients' queries, refined by SGD on the server data; Scenario II only."""

    name = "coprefl-sgd"
    display_name = "CoPreFL-SGD"

    scenario: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scenario != 2:
            raise ConfigError("coprefl-sgd is a Scenario II method (it needs server data); set method.scenario = 2.")

    @property
    def server_queries(self) -> bool:
        return False

    def server_update(self, sim: Simulation, seed: int, t: int, participants: list[int]) -> dict:
        metrics = super().server_update(sim, seed, t, participants)
        metrics["server_loss"] = server_sgd(sim, self, seed, t)
        return metrics
