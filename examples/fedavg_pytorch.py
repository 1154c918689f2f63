"""Downstream FedAvg in plain PyTorch, starting from a copre-hub initialization.

    python examples/fedavg_pytorch.py --model copreFL-resnet18-cifar100 --data-dir ../shared/data
    python examples/fedavg_pytorch.py --model copre-hub-demo/runs/copreFL-resnet10t-cifar100-demo/checkpoint \
        --data-dir ../shared/data

The one copre-hub line is ``copre_hub.load(model, num_classes=k)``: the pre-trained backbone with a fresh k-way head.
The rest is a FedAvg loop to adapt: a task of 5 CIFAR-100 classes the initialization never saw (80-84), split over
the clients by a Dirichlet(0.5) partition (flwr-datasets), each client's share split 80/20 into train and test;
every round, each client trains from the global weights and the server averages their state dicts, weighted by
data size. At the end, each client's test accuracy under the global model. ``--data-dir`` points at a folder
holding ``cifar100/`` (Parquet); without it CIFAR-100 comes from the Hugging Face Hub.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Sequence

import datasets
import timm
import torch
from flwr_datasets.partitioner import DirichletPartitioner
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms.functional import pil_to_tensor

import copre_hub

CLASSES = (80, 81, 82, 83, 84)


def load_task(data_dir: str | None, classes: Sequence[int]) -> datasets.Dataset:
    """CIFAR-100's images of ``classes`` (train and test pooled), with a ``label`` column 0..k-1."""
    source = os.path.join(data_dir, "cifar100") if data_dir else "uoft-cs/cifar100"
    splits = datasets.load_dataset(source)
    pooled = datasets.concatenate_datasets(list(splits.values()))
    wanted = list(classes)
    task = pooled.filter(lambda labels: [y in wanted for y in labels], batched=True, input_columns="fine_label")
    return task.map(
        lambda labels: {"label": [wanted.index(y) for y in labels]}, batched=True, input_columns="fine_label"
    )


def client_splits(task: datasets.Dataset, clients: int, seed: int) -> list[datasets.DatasetDict]:
    """Each client's ``train`` and ``test`` parts: a Dirichlet(0.5) partition over labels, then 80/20 per client."""
    partitioner = DirichletPartitioner(num_partitions=clients, partition_by="label", alpha=0.5, seed=seed)
    partitioner.dataset = task
    return [partitioner.load_partition(c).train_test_split(test_size=0.2, seed=seed) for c in range(clients)]


def to_tensors(part: datasets.Dataset, mean: Sequence[float], std: Sequence[float]) -> TensorDataset:
    """Normalised float images [N, 3, 32, 32] and labels [N]."""
    images = torch.stack([pil_to_tensor(image.convert("RGB")) for image in part["img"]]).float().div(255)
    images = (images - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return TensorDataset(images, torch.tensor(part["label"]))


def local_update(
    model: nn.Module,
    global_state: dict[str, torch.Tensor],
    data: TensorDataset,
    epochs: int,
    lr: float,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """A client's round: start from the global weights, SGD over its data, return its new state dict."""
    model.load_state_dict(global_state)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    device = next(model.parameters()).device
    for _ in range(epochs):
        for x, y in DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x.to(device)), y.to(device)).backward()
            optimizer.step()
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def fedavg_round(
    model: nn.Module,
    global_state: dict[str, torch.Tensor],
    clients: list[TensorDataset],
    epochs: int,
    lr: float,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """One FedAvg round: the clients' state dicts averaged with weights |D_k| / sum |D|, as a running sum."""
    total = sum(len(data) for data in clients)
    running = {name: torch.zeros_like(value, dtype=torch.float32) for name, value in global_state.items()}
    for data in clients:
        state = local_update(model, global_state, data, epochs, lr, batch_size)
        for name in running:
            running[name] += state[name].float() * (len(data) / total)
    return {name: running[name].to(global_state[name].dtype) for name in running}


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorDataset) -> float:
    """Test accuracy in % (eval-mode BatchNorm)."""
    model.eval()
    device = next(model.parameters()).device
    correct = sum(
        int((model(x.to(device)).argmax(1) == y.to(device)).sum()) for x, y in DataLoader(data, batch_size=256)
    )
    return 100.0 * correct / len(data)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="copreFL-resnet18-cifar100", help="model id or checkpoint folder")
    parser.add_argument("--data-dir", default=os.environ.get("COPRE_HUB_DATA"), help="folder holding cifar100/")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[float]:
    """Run the federation; prints and returns each client's final test accuracy (%)."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = copre_hub.load(args.model, num_classes=len(CLASSES)).to(device)
    data_cfg = timm.data.resolve_model_data_config(model)  # the checkpoint's own normalisation
    parts = client_splits(load_task(args.data_dir, CLASSES), args.clients, args.seed)
    train = [to_tensors(part["train"], data_cfg["mean"], data_cfg["std"]) for part in parts]
    test = [to_tensors(part["test"], data_cfg["mean"], data_cfg["std"]) for part in parts]

    global_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    for round_ in range(1, args.rounds + 1):
        global_state = fedavg_round(model, global_state, train, args.local_epochs, args.lr, args.batch_size)
        print(f"round {round_}/{args.rounds} done", flush=True)
    model.load_state_dict(global_state)

    accuracies = [accuracy(model, data) for data in test]
    lowest = sorted(accuracies)[: max(1, len(accuracies) // 10)]
    print(f"client accuracies (%): {', '.join(f'{a:.1f}' for a in accuracies)}")
    print(
        f"mean {statistics.fmean(accuracies):.2f} %, variance {statistics.pvariance(accuracies):.2f}, "
        f"lowest 10% {statistics.fmean(lowest):.2f} %"
    )
    return accuracies


if __name__ == "__main__":
    main()
