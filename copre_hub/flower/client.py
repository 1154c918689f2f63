"""The client side: one party's own data and the ``ClientApp`` that runs the engine's client steps on it.

A node holds :class:`LocalData` (its samples only). Seen from the engine, it is a federation of ``num_clients``
clients in which only its own client (``partition-id``) has data, so the engine's code, keyed by client id, runs
unchanged: ``Method.train_client`` (local SGD through ``Method.local_schedule`` and ``Simulation.train``) and the
query loss and gradient of CoPreFL. The support/query split and the batch order are drawn from the same seeded keys
as in the simulator and applied to the client's samples in the order the engine holds them, so both pick the same
samples.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from copre_hub.errors import ConfigError
from copre_hub.fl.methods.coprefl import CoPreFL
from copre_hub.fl.partition import FederatedData, check_support_query
from copre_hub.fl.simulation import Simulation
from copre_hub.flower.messages import (
    ARRAYS,
    CONFIG,
    GRADIENT,
    METRICS,
    PARTITION_ID,
    Job,
    load_arrays_,
    state_arrays,
    vector_arrays,
)

LoadData = Callable[[Context], "LocalData"]


@dataclass(frozen=True)
class LocalData:
    """The data one party of a federation holds: a client's own samples, or the server's D^s.

    ``images`` are uint8 [N, C, H, W] (normalised per batch with ``mean``/``std``) or float tensors used as they are
    (``mean``/``std`` None); ``labels`` are int64 class ids 0..K-1.
    """

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    flip: bool = True

    @classmethod
    def from_federation(cls, data: FederatedData, indices: torch.Tensor) -> LocalData:
        """The samples ``indices`` of a simulated federation, in that order (e.g. ``data.clients[c]``, or
        ``data.server``): how a node takes its own partition of a dataset the engine partitioned."""
        return cls(data.images[indices], data.labels[indices], data.mean, data.std, data.flip)

    def __len__(self) -> int:
        return self.labels.numel()

    def as_client(self, client: int, num_clients: int, num_classes: int) -> FederatedData:
        """The engine's view of this node: ``num_clients`` clients, only ``client`` with data (all of it)."""
        if not 0 <= client < num_clients:
            raise ConfigError(
                f"partition-id {client} is outside the federation's clients 0..{num_clients - 1}; start the "
                "SuperNode with --node-config 'partition-id=<0..M-1> num-partitions=<M>'."
            )
        clients = [torch.empty(0, dtype=torch.int64)] * num_clients
        clients[client] = torch.arange(len(self))
        return self._federation(clients, None, num_classes)

    def as_server(self, num_clients: int, num_classes: int) -> FederatedData:
        """The engine's view of the server: ``num_clients`` clients without data and this data as D^s."""
        clients = [torch.empty(0, dtype=torch.int64)] * num_clients
        return self._federation(clients, torch.arange(len(self)) if len(self) else None, num_classes)

    def _federation(self, clients: list[torch.Tensor], server: torch.Tensor | None, num_classes: int):
        return FederatedData(
            images=self.images,
            labels=self.labels,
            clients=clients,
            num_classes=num_classes,
            server=server,
            mean=self.mean,
            std=self.std,
            flip=self.flip,
        )


def build_model(spec: dict) -> torch.nn.Module:
    """The timm architecture ``spec`` names (see :class:`~copre_hub.flower.messages.Job`), without weights."""
    import timm

    import copre_hub.timm_models  # noqa: F401 - registers copre-hub's own architectures with timm

    return timm.create_model(
        spec["architecture"], pretrained=False, num_classes=spec["num_classes"], **spec.get("model_args", {})
    )


def pretraining_client_app(load_data: LoadData) -> ClientApp:
    """A ``ClientApp`` that runs a copre-hub pre-training method's client steps on this node's own data.

    Args:
        load_data: returns this node's :class:`LocalData` from its Flower ``Context`` (called once per run and
            client in each process, then kept). The node's client id is ``context.node_config["partition-id"]``
            (set by Flower's simulation, or by ``flower-supernode --node-config 'partition-id=3 ...'``).

    Returns:
        A ``ClientApp`` answering ``query.identify``, ``train`` and ``query.meta_gradient``
        (see :mod:`copre_hub.flower.messages`).
    """
    app = ClientApp()
    models: dict[str, torch.nn.Module] = {}  # one model object per architecture and process, reused every message
    held: dict[tuple[int, int], LocalData] = {}

    def client_id(context: Context) -> int:
        if PARTITION_ID not in context.node_config:
            raise ConfigError(
                "this SuperNode has no partition-id; start it with --node-config 'partition-id=<i> num-partitions=<M>'."
            )
        return int(context.node_config[PARTITION_ID])

    def simulation(msg: Message, context: Context) -> tuple[Simulation, Job, int]:
        job = Job.from_config(msg.content[CONFIG])
        client = client_id(context)
        key = (context.run_id, client)
        if key not in held:
            held[key] = load_data(context)
        spec = json.dumps(job.model, sort_keys=True)
        if spec not in models:
            models[spec] = build_model(job.model)
        model = models[spec]
        load_arrays_(model, msg.content[ARRAYS])
        view = held[key].as_client(client, job.num_clients, job.model["num_classes"])
        return Simulation(model, view, augment=job.augment), job, client

    @app.query("identify")
    def identify(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({PARTITION_ID: client_id(context)})
        return Message(RecordDict({METRICS: metrics}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        sim, job, client = simulation(msg, context)
        if job.method.uses_query:  # the engine's check, on this client's size only
            check_support_query([len(held[(context.run_id, client)])], job.method.query_fraction)
        result = job.method.train_client(sim, job.seed, job.round, client)
        metrics = MetricRecord(
            {
                PARTITION_ID: client,
                "num-examples": result.weight,
                "train_loss": result.loss,
                "start_loss": result.start_loss,
            }
        )
        reply = RecordDict({ARRAYS: state_arrays(sim.model), METRICS: metrics})
        if job.method.sends_gradient:
            reply[GRADIENT] = vector_arrays(sim.flat.grad)
        return Message(reply, reply_to=msg)

    @app.query("meta_gradient")
    def meta_gradient(msg: Message, context: Context) -> Message:
        sim, job, client = simulation(msg, context)
        if not isinstance(job.method, CoPreFL):
            raise ConfigError(f"method {job.method.name!r} has no meta-gradient; only CoPreFL asks for one.")
        (query,) = job.method.query_sets(sim, job.seed, job.round, [client])
        loss = sim.loss_and_grad(query)
        metrics = MetricRecord({PARTITION_ID: client, "query_loss": loss, "num-examples": query.numel()})
        return Message(RecordDict({GRADIENT: vector_arrays(sim.flat.grad), METRICS: metrics}), reply_to=msg)

    return app
