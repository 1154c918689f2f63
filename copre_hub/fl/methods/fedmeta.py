"""FedMeta (Chen et al. 2018, arXiv 1802.07876) with first-order MAML: clients send meta-gradients, the server steps.

Each round, from the round's start θ, every participant j adapts on its support set and returns the gradient of its
query loss at the adapted weights:

    θ'_j = θ − lr · (local SGD on S_j)     the inner step(s): the method's local schedule (E epochs or local_steps)
    g_j  = ∇L_{Q_j}(θ'_j)                  first order: the gradient is taken at θ'_j, not pulled back to θ

and the server takes the outer step with the average meta-gradient, weighted by query-set size:

    θ ← θ − meta_lr · Σ_j (|Q_j| / Σ_i |Q_i|) g_j

BatchNorm buffers, which have no gradient, are averaged over the adapted clients with the same weights.
``local_steps = 1`` is Chen et al.'s single inner step; the default gives FedMeta the same local budget as the other
baselines. Scenario II adds the server's SGD on its data after the outer step, as for every baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

from copre_hub.errors import ConfigError
from copre_hub.fl.aggregate import Accumulator
from copre_hub.fl.methods.base import ClientResult, Method
from copre_hub.fl.seeding import generator
from copre_hub.fl.simulation import Simulation


@dataclass(frozen=True, kw_only=True)
class FedMeta(Method):
    """Federated first-order MAML. ``lr`` (and the optimiser settings) drive the inner steps, ``meta_lr`` the
    server's outer step."""

    name = "fedmeta"
    display_name = "FedMeta"

    meta_lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.meta_lr <= 0:
            raise ConfigError(f"method.meta_lr must be positive, got {self.meta_lr}.")

    @property
    def uses_query(self) -> bool:
        return True

    @property
    def sends_gradient(self) -> bool:
        return True  # the meta-gradient at the adapted weights

    def extra_sums(self, sim: Simulation) -> dict[str, int]:
        return {"meta_grad": sim.flat.num_params}

    def train_client(self, sim: Simulation, seed: int, t: int, client: int) -> ClientResult:
        """Adapt on the support set, then leave the query gradient at the adapted weights in ``sim.flat.grad``."""
        support, query = self.split(sim.data.clients[client], seed, t, client)
        loss = sim.train(support, generator=generator(seed, "batches", t, client), **self.local_schedule())
        sim.loss_and_grad(query)
        return ClientResult(weight=float(query.numel()), loss=loss)

    def accumulate(self, sim: Simulation, acc: Accumulator, result: ClientResult) -> None:
        super().accumulate(sim, acc, result)  # the adapted buffers (the parameters' part is replaced below)
        acc.add_("meta_grad", sim.flat.grad, result.weight)

    def aggregate(self, sim: Simulation, acc: Accumulator) -> None:
        weight = acc.scalar("weight")
        super().aggregate(sim, acc)
        params = sim.flat.params
        params.copy_(sim.start[: sim.flat.num_params]).sub_(
            acc["meta_grad"].to(params.dtype), alpha=self.meta_lr / weight
        )
