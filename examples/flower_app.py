"""Flower (Message API, flwr>=1.20): a ServerApp whose initial arrays come from ``copre_hub.load``, and a ClientApp.

    pip install "copre-hub[flower]" "flwr[simulation]"
    python examples/flower_app.py --model copreFL-resnet18-cifar100 --data-dir ../shared/data

Running the file starts Flower's simulation engine (Ray) with one SuperNode per client. In a Flower project
(``flwr new``), keep ``server_app`` and ``client_app`` from here and point ``pyproject.toml`` at them::

    [tool.flwr.app.components]
    serverapp = "flower_app:server_app"
    clientapp = "flower_app:client_app"

The only copre-hub code is :func:`initial_arrays`: the server starts FedAvg from the pre-trained backbone with a
fresh k-way head. Each client holds a Dirichlet(0.5) share of 5 CIFAR-100 classes the initialization never saw
(80-84), split 80/20 into train and test; ``COPRE_HUB_DATA`` (or ``--data-dir``) points at a folder holding
``cifar100/`` (Parquet), otherwise CIFAR-100 comes from the Hugging Face Hub.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import datasets
import timm
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr_datasets.partitioner import DirichletPartitioner
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms.functional import pil_to_tensor

import copre_hub


@dataclass(frozen=True)
class Settings:
    """The federation: which initialization, which task, how to train."""

    model: str = "copreFL-resnet18-cifar100"
    classes: tuple[int, ...] = (80, 81, 82, 83, 84)
    clients: int = 10
    rounds: int = 20
    local_epochs: int = 1
    lr: float = 0.05
    batch_size: int = 32
    seed: int = 0
    data_dir: str | None = field(default_factory=lambda: os.environ.get("COPRE_HUB_DATA"))


# -- the copre-hub part: the initial global model ---------------------------------------------------------------------


def initial_model(settings: Settings) -> nn.Module:
    """The initialization's backbone with a fresh head for the task's classes."""
    return copre_hub.load(settings.model, num_classes=len(settings.classes))


def initial_arrays(settings: Settings) -> ArrayRecord:
    """What the ServerApp hands to ``strategy.start(initial_arrays=...)``."""
    return ArrayRecord(initial_model(settings).state_dict())


# -- the client's data ------------------------------------------------------------------------------------------------


# Each process keeps the clients' data it has built (a plain dict, so Ray can ship these functions by value).
_CLIENT_DATA: dict[tuple[Settings, int, int], tuple[TensorDataset, TensorDataset]] = {}


def client_data(settings: Settings, partition_id: int, num_partitions: int) -> tuple[TensorDataset, TensorDataset]:
    """This client's (train, test) tensors: its Dirichlet(0.5) share of the task, split 80/20."""
    key = (settings, partition_id, num_partitions)
    if key not in _CLIENT_DATA:
        _CLIENT_DATA[key] = _build_client_data(settings, partition_id, num_partitions)
    return _CLIENT_DATA[key]


def _build_client_data(
    settings: Settings, partition_id: int, num_partitions: int
) -> tuple[TensorDataset, TensorDataset]:
    task = load_task(settings.data_dir, settings.classes)
    partitioner = DirichletPartitioner(
        num_partitions=num_partitions, partition_by="label", alpha=0.5, seed=settings.seed
    )
    partitioner.dataset = task
    split = partitioner.load_partition(partition_id).train_test_split(test_size=0.2, seed=settings.seed)
    data_cfg = timm.data.resolve_model_data_config(initial_model(settings))  # the checkpoint's normalisation
    train_set, test_set = (to_tensors(split[name], data_cfg["mean"], data_cfg["std"]) for name in ("train", "test"))
    return train_set, test_set


def load_task(data_dir: str | None, classes: Sequence[int]) -> datasets.Dataset:
    """CIFAR-100's images of ``classes`` (train and test pooled), with a ``label`` column 0..k-1."""
    source = os.path.join(data_dir, "cifar100") if data_dir else "uoft-cs/cifar100"
    pooled = datasets.concatenate_datasets(list(datasets.load_dataset(source).values()))
    wanted = list(classes)
    task = pooled.filter(lambda labels: [y in wanted for y in labels], batched=True, input_columns="fine_label")
    return task.map(
        lambda labels: {"label": [wanted.index(y) for y in labels]}, batched=True, input_columns="fine_label"
    )


def to_tensors(part: datasets.Dataset, mean: Sequence[float], std: Sequence[float]) -> TensorDataset:
    """Normalised float images [N, 3, 32, 32] and labels [N]."""
    images = torch.stack([pil_to_tensor(image.convert("RGB")) for image in part["img"]]).float().div(255)
    images = (images - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return TensorDataset(images, torch.tensor(part["label"]))


# -- training and evaluation, plain PyTorch ---------------------------------------------------------------------------


def train(model: nn.Module, data: TensorDataset, epochs: int, lr: float, batch_size: int) -> float:
    """Local SGD in place; returns the mean training loss."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        for x, y in DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return sum(losses) / max(len(losses), 1)


@torch.no_grad()
def test(model: nn.Module, data: TensorDataset) -> tuple[float, float]:
    """Mean loss and accuracy (fraction) over ``data`` (eval-mode BatchNorm)."""
    model.eval()
    loss, correct = 0.0, 0
    for x, y in DataLoader(data, batch_size=256):
        logits = model(x)
        loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
    return loss / len(data), correct / len(data)


# -- the Flower apps --------------------------------------------------------------------------------------------------


def make_client_app(settings: Settings) -> ClientApp:
    """A ClientApp that trains (``train`` messages) and tests (``evaluate`` messages) the arrays it receives."""
    app = ClientApp()

    def received_model(msg: Message) -> nn.Module:
        model = initial_model(settings)  # the architecture; its weights are replaced by the server's
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        return model

    @app.train()
    def train_handler(msg: Message, context: Context) -> Message:
        model = received_model(msg)
        train_set, _ = client_data(settings, context.node_config["partition-id"], context.node_config["num-partitions"])
        loss = train(model, train_set, settings.local_epochs, float(msg.content["config"]["lr"]), settings.batch_size)
        metrics = MetricRecord({"train_loss": loss, "num-examples": len(train_set)})
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate_handler(msg: Message, context: Context) -> Message:
        model = received_model(msg)
        _, test_set = client_data(settings, context.node_config["partition-id"], context.node_config["num-partitions"])
        loss, acc = test(model, test_set)
        metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(test_set)})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def make_server_app(settings: Settings) -> ServerApp:
    """A ServerApp running FedAvg over every client each round, from the copre-hub initialization."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=settings.clients,
            min_evaluate_nodes=settings.clients,
            min_available_nodes=settings.clients,
        )
        strategy.start(  # Flower logs each round's aggregated metrics and the final result
            grid=grid,
            initial_arrays=initial_arrays(settings),
            num_rounds=settings.rounds,
            train_config=ConfigRecord({"lr": settings.lr}),
        )

    return app


server_app = make_server_app(Settings())
client_app = make_client_app(Settings())


def parse_settings(argv: Sequence[str] | None) -> Settings:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=defaults.model, help="model id or checkpoint folder")
    parser.add_argument("--data-dir", default=defaults.data_dir, help="folder holding cifar100/")
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--local-epochs", type=int, default=defaults.local_epochs)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    args = parser.parse_args(argv)
    return dataclasses.replace(defaults, **vars(args))


def main(argv: Sequence[str] | None = None) -> None:
    """Simulate the federation with Flower's simulation engine (needs ``flwr[simulation]``)."""
    from flwr.simulation import run_simulation

    settings = parse_settings(argv)
    run_simulation(
        server_app=make_server_app(settings),
        client_app=make_client_app(settings),
        num_supernodes=settings.clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )


if __name__ == "__main__":
    main()
