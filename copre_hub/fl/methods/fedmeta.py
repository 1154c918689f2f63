"""FedMeta (Chen et al. 2018), first-order MAML inside each client, FedAvg across clients.

The paper gives no FedMeta learning rates or step counts. Ours gives it the same budget as the other baselines:
E epochs of episodes over the client's support set, each episode a support mini-batch and a query mini-batch:

    θ' = θ − lr · ∇L_S(θ)          inner step on the support batch
    θ  = θ − meta_lr · ∇L_Q(θ')    outer step with the query gradient taken at θ' (first-order MAML)

The server averages the clients' θ weighted by support size (plus Scenario II's server SGD when scenario = 2).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from copre_hub.fl.methods.base import ClientResult, Method
from copre_hub.fl.seeding import generator
from copre_hub.fl.simulation import Simulation, iterate_batches


@dataclass(frozen=True, kw_only=True)
class FedMeta(Method):
    """Federated first-order MAML. ``lr`` is the inner step, ``meta_lr`` the outer step."""

    name = "fedmeta"

    meta_lr: float = 1e-3

    @property
    def uses_query(self) -> bool:
        return True

    def train_client(self, sim: Simulation, seed: int, t: int, client: int) -> ClientResult:
        support, query = self.split(sim.data.clients[client], seed, t, client)
        draws = generator(seed, "batches", t, client)
        query_batches = iterate_batches(query, self.batch_size, generator(seed, "query", t, client), steps=sys.maxsize)
        theta = sim.workspace("fedmeta-theta", sim.flat.num_params)
        flat = sim.flat
        sim.model.train()
        total, count = 0.0, 0
        amount = {"epochs": self.local_epochs} if self.local_steps is None else {"steps": self.local_steps}
        for batch in iterate_batches(support, self.batch_size, draws, **amount):
            theta.copy_(flat.params)
            flat.zero_grad_()
            support_loss = sim.loss(*sim.batch(batch, draws))
            support_loss.backward()
            flat.sgd_step_(self.lr)
            flat.zero_grad_()
            sim.loss(*sim.batch(next(query_batches), draws)).backward()
            flat.params.copy_(theta)
            flat.sgd_step_(self.meta_lr)
            total += float(support_loss.detach())
            count += 1
        return ClientResult(weight=float(support.numel()), loss=total / max(count, 1))
