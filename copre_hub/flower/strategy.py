"""The server side: a copre-hub pre-training method as a Flower strategy.

:class:`PreTraining` extends Flower's ``FedAvg`` and keeps Flower's round loop (``Strategy.start``), its logging
and its ``Result``. It changes what a round does, to what the engine's ``Method.round`` does:

1. ``configure_train``: the engine's participants of round t (``Method.sample``, keyed by seed and round), each
   sent to the node that holds that client;
2. ``aggregate_train``: the trained weights, in participant order, go through ``Method.accumulate`` and
   ``Method.aggregate`` on a server-side ``Simulation``, which gives the temporary model Φ̄;
3. then the server update: for CoPreFL in Scenario I a second message phase (``query.meta_gradient``) gathers
   each participant's query loss and gradient at Φ̄ and the server takes the variance-aware meta-step with
   ``CoPreFL.meta_gradient_``; every other case (Scenario II's server queries or server SGD) is
   ``Method.server_update`` itself, on the server's own data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import INFO

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from copre_hub.errors import ConfigError
from copre_hub.fl.methods import Method
from copre_hub.fl.methods.base import ClientResult
from copre_hub.fl.methods.coprefl import CoPreFL
from copre_hub.fl.simulation import Simulation
from copre_hub.flower.client import LocalData
from copre_hub.flower.messages import (
    ARRAYS,
    GRADIENT,
    IDENTIFY,
    META_GRADIENT,
    METRICS,
    PARTITION_ID,
    TRAIN,
    FederationError,
    Job,
    arrays_vector,
    load_arrays_,
    replies_by_client,
    state_arrays,
)

RoundCallback = Callable[[int, dict], None]
UNSUPPORTED = {"centralized": "it pools all data in one place", "coprefl-sgd": "it is a simulator-only ablation"}


class PreTraining(FedAvg):
    """Pre-train an initialization over Flower nodes with a copre-hub method (CoPreFL, FedAvg, FedMeta, q-FFL).

    Args:
        method: the engine's method and its settings (``participants`` clients per round, local schedule, ...).
        model: the server's model; its weights are the run's start and, after each round, the global model.
        architecture: its timm name, and ``model_args`` its constructor arguments: clients build the same model
            from them (without weights).
        num_clients: M, the clients of the federation; the run waits until M nodes have reported partition ids
            0..M-1.
        seed: the run seed that keys every draw, as in the engine.
        server_data: the server's own data D^s; Scenario II needs it.
        augment: random crop and flip in local training (and the server's), the recipe's ``data.augment``.
        on_round: called after each round with (round, metrics), like the engine's ``on_round``.
        timeout: seconds to wait for the replies of one message phase.

    Raises:
        ConfigError: a method Flower cannot run (centralized, CoPreFL-SGD, second-order CoPreFL), more
            participants than clients, or Scenario II without server data.

    Example::

        strategy = PreTraining(CoPreFL(rounds=10, participants=4), model, architecture="resnet18", num_clients=20)
        result = strategy.start(grid=grid, initial_arrays=strategy.initial_arrays(), num_rounds=10)
    """

    def __init__(
        self,
        method: Method,
        model: torch.nn.Module,
        *,
        architecture: str,
        num_clients: int,
        model_args: dict | None = None,
        seed: int = 0,
        server_data: LocalData | None = None,
        augment: bool = False,
        on_round: RoundCallback | None = None,
        timeout: float = 3600.0,
    ) -> None:
        check_supported(method, num_clients, server_data)
        super().__init__(
            fraction_train=method.participants / num_clients,
            fraction_evaluate=0.0,
            min_train_nodes=method.participants,
            min_available_nodes=num_clients,
        )
        self.method = method
        self.seed = seed
        self.num_clients = num_clients
        self.model_spec = {
            "architecture": architecture,
            "model_args": dict(model_args or {}),
            "num_classes": int(model.num_classes),
        }
        server = server_data or LocalData(torch.empty(0, 1, 1, 1), torch.empty(0, dtype=torch.int64))
        self.sim = Simulation(model, server.as_server(num_clients, int(model.num_classes)), augment=augment)
        self.on_round = on_round
        self.timeout = timeout
        self.history: list[dict] = []
        self._nodes: dict[int, int] | None = None
        self._grid: Grid | None = None
        self._participants: list[int] = []
        self._began = 0.0

    def initial_arrays(self) -> ArrayRecord:
        """The server model's current weights: what ``start(initial_arrays=...)`` begins from."""
        return state_arrays(self.sim.model)

    def summary(self) -> None:
        log(INFO, "\t├──> copre-hub method: %s", self.method.hyperparameters())
        log(INFO, "\t├──> clients: %d, seed: %d", self.num_clients, self.seed)
        super().summary()

    # ------------------------------------------------------------------ round hooks

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Round t's participants, as the engine draws them, each sent the round's start and the job."""
        self._began = time.perf_counter()
        self._grid = grid
        nodes = self.nodes(grid)
        load_arrays_(self.sim.model, arrays)
        self.sim.snapshot()  # the round's start, which q-FFL's aggregation reads
        self._participants = self.method.sample(self.sim.data, self.seed, server_round - 1)
        content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: self._config(server_round, config)})
        log(INFO, "configure_train: clients %s", self._participants)
        return [Message(content, dst_node_id=nodes[c], message_type=TRAIN) for c in self._participants]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The engine's aggregation of the trained weights, then its server update; returns the new global model."""
        by_client = replies_by_client(list(replies), self._participants, "train")
        acc = self.method.accumulator(self.sim)
        for client in self._participants:  # participant order, as the engine sums
            content = by_client[client].content
            load_arrays_(self.sim.model, content[ARRAYS])
            if self.method.sends_gradient:
                self.sim.flat.grad.copy_(arrays_vector(content[GRADIENT]))
            reported = content[METRICS]
            result = ClientResult(
                weight=float(reported["num-examples"]),
                loss=float(reported["train_loss"]),
                start_loss=float(reported["start_loss"]),
            )
            self.method.accumulate(self.sim, acc, result)
            acc.add_("loss", result.loss)
        self.method.aggregate(self.sim, acc)
        metrics = {"train_loss": acc.scalar("loss") / len(self._participants)}
        metrics.update(self.server_update(server_round))
        metrics["seconds"] = time.perf_counter() - self._began
        self.history.append({"round": server_round, **metrics})
        if self.on_round is not None:
            self.on_round(server_round, metrics)
        return state_arrays(self.sim.model), MetricRecord(metrics)

    def server_update(self, server_round: int) -> dict:
        """After aggregation: CoPreFL's meta-step on the clients' queries, or the method's own server update."""
        t = server_round - 1
        if isinstance(self.method, CoPreFL) and not self.method.server_queries:
            return self.meta_step(server_round)
        return self.method.server_update(self.sim, self.seed, t, self._participants)

    def meta_step(self, server_round: int) -> dict:
        """Gather each participant's query loss L_j and gradient g_j at Φ̄, then Φ = Φ̄ − ζ ∇L_meta (eq. 4)."""
        method = self.method
        assert isinstance(method, CoPreFL)
        content = RecordDict(
            {self.arrayrecord_key: state_arrays(self.sim.model), self.configrecord_key: self._config(server_round)}
        )
        nodes = self.nodes(self._grid)
        messages = [Message(content, dst_node_id=nodes[c], message_type=META_GRADIENT) for c in self._participants]
        replies = list(self._grid.send_and_receive(messages, timeout=self.timeout))
        by_client = replies_by_client(replies, self._participants, "meta-gradient")
        size = self.sim.flat.num_params
        acc = self.sim.accumulator("meta", {"g": size, "lg": size, "losses": len(self._participants)})
        for j, client in enumerate(self._participants):
            reply = by_client[client].content
            grad = arrays_vector(reply[GRADIENT])
            loss = float(reply[METRICS]["query_loss"])
            acc.add_("g", grad)
            acc.add_("lg", grad, loss)
            acc["losses"][j] = loss
        meta_grad = method.meta_gradient_(acc["losses"], acc["g"], acc["lg"])
        self.sim.flat.params.sub_(meta_grad.to(self.sim.flat.params.dtype), alpha=method.meta_lr)
        return method.meta_metrics(acc["losses"])

    # ------------------------------------------------------------------ nodes

    def nodes(self, grid: Grid) -> dict[int, int]:
        """Client id -> node id, asked once: waits for M nodes, then each reports its ``partition-id``.

        Raises:
            FederationError: the nodes' partition ids are not exactly 0..M-1.
        """
        if self._nodes is not None:
            return self._nodes
        while len(connected := list(grid.get_node_ids())) < self.num_clients:
            log(INFO, "Waiting for nodes: %d connected, %d clients.", len(connected), self.num_clients)
            time.sleep(1)
        questions = [Message(RecordDict(), n, IDENTIFY) for n in connected]
        replies = list(grid.send_and_receive(questions, timeout=self.timeout))
        failed = [r.error.reason for r in replies if r.has_error()]
        if failed:
            raise FederationError(f"{len(failed)} nodes could not say which client they hold, e.g.: {failed[0]}")
        reported = [(int(r.content[METRICS][PARTITION_ID]), r.metadata.src_node_id) for r in replies]
        ids = sorted(c for c, _ in reported)
        if ids != list(range(self.num_clients)):
            raise FederationError(
                f"the {len(ids)} nodes hold partition ids {ids[:10]}, expected each of 0..{self.num_clients - 1} "
                "once; start SuperNode i with --node-config 'partition-id=i num-partitions=M'."
            )
        self._nodes = dict(reported)
        return self._nodes

    def _config(self, server_round: int, base: ConfigRecord | None = None) -> ConfigRecord:
        job = Job(self.method, self.model_spec, self.seed, server_round - 1, self.num_clients, self.sim.augment)
        job = job.to_config()
        merged = ConfigRecord(dict(base or {}))
        for key, value in job.items():
            merged[key] = value
        return merged


def check_supported(method: Method, num_clients: int, server_data: LocalData | None) -> None:
    """Refuse, before any node is contacted, what this strategy cannot run.

    Raises:
        ConfigError: see :class:`PreTraining`.
    """
    if method.name in UNSUPPORTED:
        raise ConfigError(f"method {method.name!r} does not run under Flower ({UNSUPPORTED[method.name]}).")
    if getattr(method, "second_order", False):
        raise ConfigError("second_order CoPreFL replays every client's local steps on one process; set it false.")
    if method.participants > num_clients:
        raise ConfigError(f"method.participants={method.participants} exceeds the {num_clients} clients.")
    if method.scenario == 2 and (server_data is None or len(server_data) == 0):
        raise ConfigError("Scenario II needs the server's own data; pass server_data= (D^s) or set scenario = 1.")
