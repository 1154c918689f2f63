"""copre-flower-app: the model, the data and the training loop, in plain PyTorch.

The task: CIFAR-100 classes 80 .. 80 + k - 1 (classes copre-hub's initializations never saw), train and test images
pooled, divided among the nodes by a Dirichlet(0.5) partition over labels (flwr-datasets), and each node's share
split 80/20 into train and test.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import datasets
import torch
from flwr_datasets.partitioner import DirichletPartitioner
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms.functional import pil_to_tensor

FIRST_CLASS = 80
CIFAR100_HUB_ID = "uoft-cs/cifar100"

_PARTITIONS: dict[tuple, tuple[TensorDataset, TensorDataset]] = {}  # per process: each node's data, built once


def cifar100_source(data_dir: str) -> str:
    """The local CIFAR-100 Parquet folder (``data_dir``, else ``$COPRE_HUB_DATA``), or the Hub id."""
    root = data_dir or os.environ.get("COPRE_HUB_DATA", "")
    return str(Path(root) / "cifar100") if root else CIFAR100_HUB_ID


def load_partition(
    data_dir: str, num_classes: int, partition_id: int, num_partitions: int, seed: int, mean, std
) -> tuple[TensorDataset, TensorDataset]:
    """This node's (train, test) tensors, normalised with the checkpoint's ``mean`` and ``std``."""
    key = (data_dir, num_classes, partition_id, num_partitions, seed, tuple(mean), tuple(std))
    if key not in _PARTITIONS:
        task = load_task(cifar100_source(data_dir), range(FIRST_CLASS, FIRST_CLASS + num_classes))
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions, partition_by="label", alpha=0.5, min_partition_size=2, seed=seed
        )
        partitioner.dataset = task
        split = partitioner.load_partition(partition_id).train_test_split(test_size=0.2, seed=seed)
        _PARTITIONS[key] = (to_tensors(split["train"], mean, std), to_tensors(split["test"], mean, std))
    return _PARTITIONS[key]


def load_task(source: str, classes: Sequence[int]) -> datasets.Dataset:
    """CIFAR-100's images of ``classes`` (train and test pooled), with a ``label`` column 0..k-1."""
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


def train(model: nn.Module, data: TensorDataset, steps: int, lr: float, batch_size: int, seed: int) -> float:
    """``steps`` mini-batch SGD steps in place (passes over the shuffled data as needed); the mean batch loss."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    draws = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    while len(losses) < steps:
        for x, y in DataLoader(data, batch_size=batch_size, shuffle=True, generator=draws):
            if len(y) < 2:  # BatchNorm cannot train on one sample
                continue
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    return sum(losses) / len(losses)


@torch.no_grad()
def test(model: nn.Module, data: TensorDataset) -> tuple[float, float]:
    """Mean loss and accuracy (fraction) over ``data`` (eval-mode BatchNorm)."""
    model.eval()
    loss, correct = 0.0, 0
    for x, y in DataLoader(data, batch_size=256):
        logits = model(x)
        loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
    return loss / max(len(data), 1), correct / max(len(data), 1)
