"""The round loop, written once. A pre-training method is a small dataclass that overrides a few hooks.

One round (``Method.round``):

1. ``sample``: the round's participants, drawn from (seed, round) so every process draws the same set;
2. for each participant this process owns: restore the round's start, ``train_client`` in place, ``accumulate``
   (neither hook restores: on a CPU the last client's weights are summed only once the next client is trained);
3. one all-reduce of the accumulator, then ``aggregate`` writes the new global weights;
4. ``server_update``: whatever the server does next (CoPreFL's meta-step, Scenario II's SGD on server data).

Hyperparameters are dataclass fields (keyword-only), so a recipe's ``[method]`` table maps onto them and the run
record stores them with ``dataclasses.asdict``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from copre_hub.errors import ConfigError, DataError
from copre_hub.fl.aggregate import Accumulator
from copre_hub.fl.distributed import Processes
from copre_hub.fl.optim import SGDSettings, check_sgd_settings
from copre_hub.fl.partition import FederatedData, check_support_query, support_query
from copre_hub.fl.seeding import generator
from copre_hub.fl.simulation import Simulation

RoundCallback = Callable[[int, dict], None]


@dataclass(frozen=True, kw_only=True)
class ClientResult:
    """What a client reports after local training: aggregation weight, mean training loss and, for methods that
    need it (q-FFL), its loss at the round's starting weights."""

    weight: float
    loss: float
    start_loss: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Method:
    """Federated pre-training with FedAvg aggregation; subclasses change the hooks.

    Attributes:
        rounds: T, pre-training rounds.
        participants: |m|, clients sampled per round (without replacement).
        local_epochs: E, passes over the client's training data per round.
        local_steps: instead of epochs, exactly this many mini-batch steps per round (downstream FL uses 5).
        batch_size, lr: local mini-batch SGD.
        momentum, nesterov, weight_decay: the local optimiser beyond plain SGD (``torch.optim.SGD``'s meaning),
            also used by the server's SGD steps; its state starts fresh every round on every client, as on real
            FL clients. The defaults are the paper's plain SGD.
        scenario: 1 (all data on clients) or 2 (hybrid: the server holds a small share, ``FederatedData.server``).
        server_steps, server_lr: Scenario II refinement, SGD iterations on the server data after each round.
        query_fraction: share of a client's data in its query set, for methods that split (``uses_query``).
        resplit_every_round: redraw each client's support/query split every round (Algorithm 1) or once.

    Class attributes:
        name: the id recipes, the CLI and checkpoints use (``method.name``); a class without one is not offered.
        display_name: how cards and help print the method (e.g. ``"q-FFL"``); defaults to ``name``.
    """

    name: ClassVar[str] = ""
    display_name: ClassVar[str] = ""

    rounds: int = 50
    participants: int = 20
    local_epochs: int = 5
    local_steps: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    scenario: int = 1
    server_steps: int = 5
    server_lr: float = 1e-3
    query_fraction: float = 0.2
    resplit_every_round: bool = True

    def __init_subclass__(cls, **kwargs: object) -> None:
        """Default a subclass's ``display_name`` to its own ``name``, never to an inherited display name."""
        super().__init_subclass__(**kwargs)
        if "display_name" not in vars(cls):
            cls.display_name = cls.name

    def __post_init__(self) -> None:
        positive = {"rounds": self.rounds, "participants": self.participants, "batch_size": self.batch_size}
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"method.{key} must be at least 1, got {value}.")
        if self.local_epochs < 0 or self.server_steps < 0 or (self.local_steps is not None and self.local_steps < 1):
            raise ConfigError("method.local_epochs and server_steps cannot be negative, nor local_steps below 1.")
        if self.lr <= 0 or self.server_lr <= 0:
            raise ConfigError(f"learning rates must be positive (lr={self.lr}, server_lr={self.server_lr}).")
        check_sgd_settings(self.momentum, self.nesterov, self.weight_decay, where="method.")
        if self.scenario not in (1, 2):
            raise ConfigError(f"method.scenario must be 1 or 2, got {self.scenario}.")
        if not 0 < self.query_fraction < 1:
            raise ConfigError(f"method.query_fraction must be in (0, 1), got {self.query_fraction}.")

    @property
    def uses_query(self) -> bool:
        """Whether clients split their data into support and query sets."""
        return False

    @property
    def sends_gradient(self) -> bool:
        """Whether :meth:`accumulate` reads the client's gradient in ``sim.flat.grad`` besides its weights (a
        federation must then carry that gradient from client to server with the weights)."""
        return False

    def hyperparameters(self) -> dict:
        """The method's settings as plain data (for run records and model cards)."""
        return {"name": self.name, **dataclasses.asdict(self)}

    # ------------------------------------------------------------------ checks

    def validate(self, data: FederatedData) -> None:
        """Reject a federation this method cannot run on, before any training.

        Raises:
            DataError: more participants than clients, no server data in Scenario II, clients too small to split.
        """
        if self.participants > data.num_clients:
            raise DataError(
                f"method.participants={self.participants} exceeds the {data.num_clients} clients; "
                f"lower participants or raise partition.num_clients."
            )
        empty = [i for i, n in enumerate(data.client_sizes) if n == 0]
        if empty:
            raise DataError(f"clients {empty[:5]} have no data; use fewer clients or a larger Dirichlet alpha.")
        if self.scenario == 2 and (data.server is None or data.server.numel() == 0):
            raise DataError("Scenario II needs server data; set partition.server_fraction above 0 (default 0.05).")
        if self.uses_query:
            check_support_query(data.client_sizes, self.query_fraction)

    # ------------------------------------------------------------------ the loop

    def fit(
        self,
        model: torch.nn.Module,
        data: FederatedData,
        seed: int = 0,
        processes: Processes | None = None,
        on_round: RoundCallback | None = None,
    ) -> list[dict]:
        """Pre-train ``model`` in place on ``data`` for all rounds; returns the per-round metrics.

        Raises:
            DataError: the federation does not fit the method (see :meth:`validate`).
        """
        return self.run(Simulation(model, data, processes), seed, on_round=on_round)

    def run(
        self,
        sim: Simulation,
        seed: int,
        start_round: int = 0,
        on_round: RoundCallback | None = None,
    ) -> list[dict]:
        """Rounds ``start_round .. rounds-1`` on ``sim``; returns the per-round metrics."""
        self.validate(sim.data)
        history = []
        for t in range(start_round, self.rounds):
            began = time.perf_counter()
            metrics = {"round": t + 1, **self.round(sim, seed, t)}
            metrics["seconds"] = time.perf_counter() - began
            history.append(metrics)
            if on_round is not None:
                on_round(t + 1, metrics)
        return history

    def round(self, sim: Simulation, seed: int, t: int) -> dict:
        """One federated round; returns its metrics."""
        participants = self.sample(sim.data, seed, t)
        sizes = [float(sim.data.clients[c].numel()) for c in participants]
        acc = self.accumulator(sim)
        sim.snapshot()
        with sim.client_loop():
            for client in sim.processes.share(participants, sizes):
                sim.restore()
                result = self.train_client(sim, seed, t, client)
                self.accumulate(sim, acc, result)
                acc.add_("loss", result.loss)
        acc.reduce_(sim.processes)
        self.aggregate(sim, acc)
        metrics = {"train_loss": acc.scalar("loss") / len(participants)}
        metrics.update(self.server_update(sim, seed, t, participants))
        return metrics

    def sample(self, data: FederatedData, seed: int, t: int) -> list[int]:
        """The round's participants (sorted client ids)."""
        order = torch.randperm(data.num_clients, generator=generator(seed, "participants", t))
        return sorted(order[: self.participants].tolist())

    # ------------------------------------------------------------------ hooks

    def training_indices(self, sim: Simulation, seed: int, t: int, client: int) -> torch.Tensor:
        """The data a client trains on this round: its support set when the method splits, else all of it."""
        indices = sim.data.clients[client]
        if not self.uses_query:
            return indices
        return self.split(indices, seed, t, client)[0]

    def split(self, indices: torch.Tensor, seed: int, t: int, client: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A client's (support, query) sets for round ``t``."""
        return support_query(indices, self.query_fraction, seed, t if self.resplit_every_round else 0, client)

    def train_client(self, sim: Simulation, seed: int, t: int, client: int) -> ClientResult:
        """Local SGD from the round's start; the trained weights are left in ``sim.flat``."""
        indices = self.training_indices(sim, seed, t, client)
        loss = sim.train(indices, generator=generator(seed, "batches", t, client), **self.local_schedule())
        return ClientResult(weight=float(indices.numel()), loss=loss)

    @property
    def sgd(self) -> SGDSettings:
        """The local (and server) optimiser's settings beyond the learning rate."""
        return SGDSettings(momentum=self.momentum, nesterov=self.nesterov, weight_decay=self.weight_decay)

    def local_schedule(self) -> dict:
        """Keyword arguments of :meth:`Simulation.train` for one client's local update."""
        amount = {"epochs": self.local_epochs} if self.local_steps is None else {"steps": self.local_steps}
        return {"lr": self.lr, "batch_size": self.batch_size, "sgd": self.sgd, **amount}

    def accumulator(self, sim: Simulation) -> Accumulator:
        """The round's running sums (allocated once per simulation, zeroed each round)."""
        sizes = {"state": sim.flat.vector.numel(), "weight": 1, "loss": 1, **self.extra_sums(sim)}
        return sim.accumulator("round", sizes)

    def extra_sums(self, sim: Simulation) -> dict[str, int]:
        """Further named sums a subclass accumulates (name -> length)."""
        return {}

    def accumulate(self, sim: Simulation, acc: Accumulator, result: ClientResult) -> None:
        """Add a trained client to the running weighted sum."""
        acc.add_("state", sim.flat.vector, result.weight, defer=sim.keeps_last_client)
        acc.add_("weight", result.weight)

    def aggregate(self, sim: Simulation, acc: Accumulator) -> None:
        """The weighted average of the clients' weights becomes the model's weights."""
        sim.flat.vector.copy_(acc["state"].div_(acc.scalar("weight")))

    def server_update(self, sim: Simulation, seed: int, t: int, participants: list[int]) -> dict:
        """After aggregation: in Scenario II, ``server_steps`` SGD iterations on the server data."""
        if self.scenario == 2 and self.server_steps:
            return {"server_loss": server_sgd(sim, self, seed, t)}
        return {}


def server_sgd(sim: Simulation, method: Method, seed: int, t: int) -> float:
    """``method.server_steps`` SGD iterations on the server's data at ``server_lr``, with the method's optimiser
    settings (fresh state each round). Identical on every process (same generator), so no reduction is needed."""
    return sim.train(
        sim.data.server,
        lr=method.server_lr,
        batch_size=method.batch_size,
        generator=generator(seed, "server", t),
        steps=method.server_steps,
        sgd=method.sgd,
    )
