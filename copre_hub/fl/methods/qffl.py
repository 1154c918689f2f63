"""q-FFL pre-training with the q-FedAvg update of Li et al. (ICLR 2020), Algorithm 2.

With L = 1/lr, F_k the client's loss at the round's start w (before local training) and w̄_k its locally trained
weights:

    Δw_k = L (w − w̄_k),   Δ_k = F_k^q Δw_k,   h_k = q F_k^(q−1) ||Δw_k||² + L F_k^q
    w ← w − Σ_k Δ_k / Σ_k h_k

Clients with a higher loss weigh more as q grows; q = 0 gives the unweighted mean of the clients' weights.
BatchNorm buffers are averaged by data size, as in FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass

from copre_hub.errors import ConfigError
from copre_hub.fl.aggregate import Accumulator
from copre_hub.fl.methods.base import ClientResult, Method
from copre_hub.fl.simulation import Simulation


@dataclass(frozen=True, kw_only=True)
class QFFL(Method):
    """Fair resource allocation: clients with larger loss get larger aggregation weight. ``q >= 0``."""

    name = "qffl"
    display_name = "q-FFL"

    q: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.q < 0:
            raise ConfigError(f"method.q must be non-negative, got {self.q}.")

    def extra_sums(self, sim: Simulation) -> dict[str, int]:
        return {"delta": sim.flat.num_params, "h": 1}

    def train_client(self, sim: Simulation, seed: int, t: int, client: int) -> ClientResult:
        start_loss, _ = sim.evaluate(self.training_indices(sim, seed, t, client))
        result = super().train_client(sim, seed, t, client)
        return ClientResult(weight=result.weight, loss=result.loss, start_loss=start_loss)

    def accumulate(self, sim: Simulation, acc: Accumulator, result: ClientResult) -> None:
        super().accumulate(sim, acc, result)
        lipschitz = 1.0 / self.lr
        delta = (sim.start[: sim.flat.num_params] - sim.flat.params) * lipschitz
        f = max(result.start_loss, 1e-12)
        acc.add_("delta", delta, f**self.q)
        acc.add_("h", self.q * f ** (self.q - 1) * float(delta.pow(2).sum()) + lipschitz * f**self.q)

    def aggregate(self, sim: Simulation, acc: Accumulator) -> None:
        super().aggregate(sim, acc)  # buffers: data-size weighted mean
        step = acc["delta"] / acc.scalar("h")
        sim.flat.params.copy_(sim.start[: sim.flat.num_params] - step)
