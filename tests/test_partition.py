"""Class splits and client partitions: every sample in exactly one place, reproducible from the seed."""

from __future__ import annotations

import pytest
import torch

from copre_hub.errors import DataError
from copre_hub.fl.data import DataConfig, ImageData, load_image_data
from copre_hub.fl.partition import PartitionConfig, build_federation, class_split, support_query


def synthetic(n: int = 2000, classes: int = 10, writers: int = 40) -> ImageData:
    g = torch.Generator().manual_seed(1)
    return ImageData(
        images=torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g),
        labels=torch.randint(0, classes, (n,), generator=g),
        writers=torch.randint(0, writers, (n,), generator=g),
        class_names=[str(i) for i in range(classes)],
        mean=(0.5,),
        std=(0.5,),
    )


def placement(fed) -> torch.Tensor:
    parts = [*fed.clients, *([fed.server] if fed.server is not None else [])]
    return torch.cat(parts).sort().values


@pytest.mark.parametrize("scheme", ["dirichlet", "iid", "natural"])
def test_partition_covers_every_sample_once_and_is_reproducible(scheme: str) -> None:
    data = synthetic()
    classes = tuple(range(8))
    cfg = PartitionConfig(num_clients=None if scheme == "natural" else 20, scheme=scheme, alpha=0.3)
    fed = build_federation(data, classes, cfg, seed=7)
    expected = int(torch.isin(data.labels, torch.tensor(classes)).sum())
    assert torch.equal(placement(fed), torch.arange(expected)), "every pre-training sample exactly once"
    assert fed.server is not None and fed.server.numel() == round(0.05 * expected)
    assert set(fed.labels.unique().tolist()) == set(range(8))
    again = build_federation(data, classes, cfg, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(fed.clients, again.clients, strict=True))
    other = build_federation(data, classes, cfg, seed=8)
    assert not all(torch.equal(a, b) for a, b in zip(fed.clients, other.clients, strict=False))


def test_natural_partition_keeps_writers_whole() -> None:
    data = synthetic()
    fed = build_federation(
        data, tuple(range(10)), PartitionConfig(num_clients=None, scheme="natural", server_fraction=0.0), seed=0
    )
    writers = data.writers  # all classes kept, no server share: positions equal original indices
    for client in fed.clients:
        assert writers[client].unique().numel() == 1
    assert len(fed.clients) == 40


def test_dirichlet_is_heterogeneous_and_iid_is_not() -> None:
    data = synthetic(n=4000)
    classes = tuple(range(10))
    dirichlet = build_federation(data, classes, PartitionConfig(num_clients=10, alpha=0.1), seed=0)
    iid = build_federation(data, classes, PartitionConfig(num_clients=10, scheme="iid"), seed=0)

    def max_class_share(fed) -> float:
        return max(float(torch.bincount(fed.labels[c], minlength=10).max()) / c.numel() for c in fed.clients)

    assert max_class_share(dirichlet) > 0.5 > max_class_share(iid)


def test_support_query_split_is_disjoint_and_redrawn_each_round() -> None:
    indices = torch.arange(100, 150)
    s0, q0 = support_query(indices, 0.2, seed=1, round_=0, client=3)
    _s1, q1 = support_query(indices, 0.2, seed=1, round_=1, client=3)
    assert q0.numel() == 10 and s0.numel() == 40
    assert torch.equal(torch.cat([s0, q0]).sort().values, indices)
    assert not torch.equal(q0.sort().values, q1.sort().values)
    assert torch.equal(support_query(indices, 0.2, seed=1, round_=0, client=3)[1], q0)


def test_random_class_split_is_seeded_and_disjoint() -> None:
    data = synthetic()
    cfg = DataConfig(dataset="synthetic", num_pretrain_classes=6)
    pre, down = class_split(data, cfg, seed=4)
    assert len(pre) == 6 and len(down) == 4 and not set(pre) & set(down)
    assert class_split(data, cfg, seed=4) == (pre, down)


def test_cifar100_default_split_pools_600_images_per_class(data_dir) -> None:
    data = load_image_data(DataConfig(dataset="cifar100"))
    assert len(data) == 60000 and data.input_size == (3, 32, 32)
    pre, down = class_split(data, DataConfig(dataset="cifar100"), seed=0)
    assert pre == tuple(range(80)) and down == tuple(range(80, 100))
    fed = build_federation(data, pre, PartitionConfig(), seed=0)
    assert fed.server.numel() == 2400 and sum(fed.client_sizes) == 45600 and fed.num_clients == 100
    assert torch.bincount(fed.labels).tolist() == [600] * 80


def test_femnist_letters_pretrain_digits_downstream_by_writer(data_dir) -> None:
    data = load_image_data(DataConfig(dataset="femnist"))
    assert data.input_size == (1, 28, 28) and data.writers is not None
    pre, down = class_split(data, DataConfig(dataset="femnist"), seed=0)
    assert len(pre) == 52 and down == tuple(range(10))
    fed = build_federation(data, pre, PartitionConfig(num_clients=100, scheme="natural"), seed=0)
    assert fed.num_clients == 100


def test_natural_partition_without_writers_is_refused() -> None:
    data = synthetic()
    data.writers = None
    with pytest.raises(DataError, match="writer column"):
        build_federation(data, (0, 1), PartitionConfig(scheme="natural"), seed=0)
