"""CoPreFL (Chu et al., AAAI 2025, arXiv 2402.02225): a FedAvg round on support data, then one variance-aware
meta-step on query losses at the aggregated (temporary) model.

Scenario I (Algorithm 1): each participant splits its data 80/20 into support S_j and query Q_j.
Scenario II (Algorithm 2): participants train on all their data; the server's data D^s, re-split every round into
|m| equal parts, plays the query sets.

Per round, after aggregation gives the temporary model Φ̄ (eq. 3-4 and Algorithm 1 lines 15-19):

    L_j     = L_{Q_j}(Φ̄)                                   query loss of participant j
    L_meta  = γ · Σ_j L_j + (1 − γ) · (1/|m|) Σ_j (L_j − L̄)²     L̄ = mean of the L_j (population variance)
    Φ^t     = Φ̄ − ζ ∇L_meta(Φ̄)                             first-order: gradients taken at Φ̄

Since Σ_j (L_j − L̄) = 0, ∇L_meta = Σ_j [γ + (1 − γ)(2/|m|)(L_j − L̄)] g_j with g_j = ∇L_j(Φ̄), so one pass over
the queries that sums G1 = Σ g_j and G2 = Σ L_j g_j is enough: ∇L_meta = γ G1 + (1 − γ)(2/|m|)(G2 − L̄ G1).
With ``reduction="sum"`` (the paper, literally) the γ term's step scales with |m|; ``"mean"`` divides it by |m|.
BatchNorm buffers are averaged like weights and untouched by the meta-step.

``second_order=True`` differentiates through every local SGD step of every participant (the exact gradient of
L_meta with respect to the round's start Φ^{t-1}, eq. 5 without its last-step truncation) and applies it to Φ̄.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from copre_hub.errors import ConfigError, DataError
from copre_hub.fl.methods.base import Method
from copre_hub.fl.partition import FederatedData
from copre_hub.fl.seeding import generator
from copre_hub.fl.simulation import Simulation

REDUCTIONS = ("sum", "mean")


@dataclass(frozen=True, kw_only=True)
class CoPreFL(Method):
    """Variance-aware collaborative pre-training.

    Attributes:
        gamma: γ in eq. 4; 1 optimises the summed query loss only, 0 only the variance of query losses.
        meta_lr: ζ, the meta-step size.
        reduction: ``sum`` (paper) or ``mean`` of the per-client query losses in the γ term.
        second_order: differentiate through the local updates (costly; the paper's method is first-order).
    """

    name = "coprefl"
    display_name = "CoPreFL"

    gamma: float = 0.5
    meta_lr: float = 1e-3
    reduction: str = "sum"
    second_order: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"method.gamma must be in [0, 1], got {self.gamma}.")
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"method.reduction must be one of {REDUCTIONS}, got {self.reduction!r}.")
        if self.meta_lr <= 0:
            raise ConfigError(f"method.meta_lr must be positive, got {self.meta_lr}.")
        if self.second_order and not self.sgd.is_plain:
            raise ConfigError("method.second_order replays plain SGD; set momentum and weight_decay to 0 or drop it.")

    def validate(self, data: FederatedData) -> None:
        """Also refuse Scenario II server data too small to give every participant a query set.

        Raises:
            DataError: fewer server samples than participants (some query sets would be empty).
        """
        super().validate(data)
        if self.server_queries and data.server.numel() < self.participants:
            raise DataError(
                f"Scenario II splits the {data.server.numel()} server samples into one query set per participant, "
                f"but method.participants={self.participants}; raise partition.server_fraction or lower participants."
            )

    @property
    def server_queries(self) -> bool:
        """Whether the query sets are the server's data (Scenario II) rather than the clients' own."""
        return self.scenario == 2

    @property
    def uses_query(self) -> bool:
        return not self.server_queries

    def query_sets(self, sim: Simulation, seed: int, t: int, participants: list[int]) -> list[torch.Tensor]:
        """Q_j for each participant, in order: the client's query split, or an equal part of the server data."""
        if not self.server_queries:
            return [self.split(sim.data.clients[c], seed, t, c)[1] for c in participants]
        server = sim.data.server
        perm = server[torch.randperm(server.numel(), generator=generator(seed, "server-query", t))]
        size = server.numel() // len(participants)
        return [perm[i * size : (i + 1) * size] for i in range(len(participants))]

    def server_update(self, sim: Simulation, seed: int, t: int, participants: list[int]) -> dict:
        round_start = sim.start.clone() if self.second_order else None  # Φ^{t-1}, to replay local updates
        sim.snapshot()  # Φ̄^t
        queries = self.query_sets(sim, seed, t, participants)
        m = len(participants)
        P = sim.flat.num_params
        acc = sim.accumulator("meta", {"g": P, "lg": P, "losses": m})
        positions = sim.processes.share(list(range(m)), [float(q.numel()) for q in queries])
        for j in positions:
            sim.restore()
            loss = sim.loss_and_grad(queries[j])
            acc.add_("g", sim.flat.grad)
            acc.add_("lg", sim.flat.grad, loss)
            acc["losses"][j] = loss
        acc.reduce_(sim.processes)

        losses = acc["losses"]
        meta_grad = self.meta_gradient_(losses, acc["g"], acc["lg"])
        if self.second_order:
            meta_grad = self.through_local_updates(sim, round_start, seed, t, participants, meta_grad)
        sim.restore()
        sim.flat.params.sub_(meta_grad.to(sim.flat.params.dtype), alpha=self.meta_lr)
        return self.meta_metrics(losses)

    def meta_gradient_(self, losses: torch.Tensor, grad_sum: torch.Tensor, loss_grad_sum: torch.Tensor) -> torch.Tensor:
        """∇L_meta at Φ̄ from the |m| query losses L_j, G1 = Σ g_j and G2 = Σ L_j g_j (see the module docstring).

        Built in place in ``loss_grad_sum`` (no model-sized temporaries) and returned; ``grad_sum`` is unchanged.
        Pure arithmetic on its arguments, so the engine and a Flower server (``copre_hub.flower``) share it.
        """
        m = losses.numel()
        scale = 1.0 if self.reduction == "sum" else 1.0 / m
        # ∇L_meta = γ·scale·G1 + (1 − γ)(2/m)(G2 − L̄·G1)
        meta_grad = loss_grad_sum.sub_(grad_sum, alpha=float(losses.mean())).mul_((1 - self.gamma) * 2 / m)
        return meta_grad.add_(grad_sum, alpha=self.gamma * scale)

    def meta_metrics(self, losses: torch.Tensor) -> dict[str, float]:
        """The round's query-loss mean and population variance, and L_meta (eq. 4), from the |m| query losses."""
        mean = losses.mean()
        variance = ((losses - mean) ** 2).mean()
        summed = losses.sum() * (1.0 if self.reduction == "sum" else 1.0 / losses.numel())
        return {
            "query_loss_mean": float(mean),
            "query_loss_var": float(variance),
            "meta_loss": float(self.gamma * summed + (1 - self.gamma) * variance),
        }

    def through_local_updates(
        self,
        sim: Simulation,
        round_start: torch.Tensor,
        seed: int,
        t: int,
        participants: list[int],
        meta_grad: torch.Tensor,
    ) -> torch.Tensor:
        """Σ_j w_j J_jᵀ v: the meta-gradient v pulled back through each participant's local SGD trajectory."""
        from copre_hub.fl.second_order import trajectory_vjp

        weights = [float(self.training_indices(sim, seed, t, c).numel()) for c in participants]
        total = sum(weights)
        acc = sim.accumulator("second-order", {"g": sim.flat.num_params})
        for pos in sim.processes.share(list(range(len(participants))), weights):
            client = participants[pos]
            vjp = trajectory_vjp(
                sim,
                start=round_start,
                indices=self.training_indices(sim, seed, t, client),
                vector=meta_grad.float(),
                generator=generator(seed, "batches", t, client),
                **self.local_schedule(),
            )
            acc.add_("g", vjp, weights[pos] / total)
        return acc.reduce_(sim.processes)["g"].clone()
