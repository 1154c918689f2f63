"""From a dataset to a federation: class split, server share, client partition, support/query split.

Client partitions come from flwr-datasets partitioners (IID, Dirichlet, natural writer ids) fed an index table, so
every sample lands in exactly one place and the result depends only on the seed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from copre_hub.errors import ConfigError, DataError
from copre_hub.fl.data import DataConfig, ImageData
from copre_hub.fl.seeding import derive_seed, generator

SCHEMES = ("dirichlet", "iid", "natural")


@dataclass(frozen=True)
class PartitionConfig:
    """The ``[partition]`` table of a recipe.

    Attributes:
        num_clients: M; for ``natural`` a seeded sample of that many writers (None: every writer).
        scheme: ``dirichlet`` (per-class Dir(alpha) proportions), ``iid`` or ``natural`` (one client per writer).
        alpha: Dirichlet concentration; smaller is more heterogeneous.
        min_partition_size: the Dirichlet partitioner redraws until every client has at least this many samples.
        server_fraction: share of the pre-training data held by the server (Scenario II's D^s); Scenario I leaves it
            unused so both scenarios see the same client data.
    """

    num_clients: int | None = 100
    scheme: str = "dirichlet"
    alpha: float = 0.5
    min_partition_size: int = 10
    server_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(f"unknown partition scheme {self.scheme!r}; use one of {', '.join(SCHEMES)}.")
        if self.num_clients is not None and self.num_clients < 1:
            raise ConfigError(f"partition.num_clients must be at least 1, got {self.num_clients}.")
        if self.alpha <= 0:
            raise ConfigError(f"partition.alpha must be positive, got {self.alpha}.")
        if not 0 <= self.server_fraction < 1:
            raise ConfigError(f"partition.server_fraction must be in [0, 1), got {self.server_fraction}.")


@dataclass
class FederatedData:
    """Pre-training data of a simulated federation, held once; clients are index tensors into it.

    ``images`` are uint8 [N, C, H, W] (normalised on the fly with ``mean``/``std``) or already-float tensors
    (then ``mean``/``std`` are None and batches are used as they are). ``labels`` are 0..num_classes-1.
    """

    images: torch.Tensor
    labels: torch.Tensor
    clients: list[torch.Tensor]
    num_classes: int
    server: torch.Tensor | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    flip: bool = True
    class_ids: tuple[int, ...] = ()
    meta: dict = field(default_factory=dict)

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    @property
    def client_sizes(self) -> list[int]:
        return [int(c.numel()) for c in self.clients]

    @classmethod
    def from_tensors(
        cls,
        clients: list[tuple[torch.Tensor, torch.Tensor]],
        server: tuple[torch.Tensor, torch.Tensor] | None = None,
        num_classes: int | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> FederatedData:
        """A federation from your own per-client ``(inputs, labels)`` tensors (and optional server data).

        Inputs are used as given when floating point; uint8 images are scaled to [0, 1] and, with ``mean``/``std``,
        standardised.
        """
        parts = [*clients, *([server] if server is not None else [])]
        if not clients or any(len(x) != len(y) or len(x) == 0 for x, y in parts):
            raise DataError("every client needs as many inputs as labels, and at least one sample.")
        images = torch.cat([x for x, _ in parts])
        labels = torch.cat([y for _, y in parts]).long()
        bounds = np.cumsum([0, *[len(y) for _, y in parts]])
        ranges = [torch.arange(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        if images.dtype == torch.uint8 and mean is None:
            mean, std = (0.0,) * images.shape[1], (1.0,) * images.shape[1]
        return cls(
            images=images,
            labels=labels,
            clients=ranges[: len(clients)],
            server=ranges[-1] if server is not None else None,
            num_classes=num_classes or int(labels.max()) + 1,
            mean=mean,
            std=std,
        )


def class_split(data: ImageData, cfg: DataConfig, seed: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Pre-training and downstream class ids: explicit lists, a seeded random split, or the dataset's default.

    Raises:
        DataError: a class id does not exist, the two sets overlap, or no default split is known.
    """
    n = data.num_classes
    if cfg.num_pretrain_classes is not None:
        if not 0 < cfg.num_pretrain_classes < n:
            raise DataError(
                f"data.num_pretrain_classes={cfg.num_pretrain_classes} must be between 1 and {n - 1} "
                f"(the dataset has {n} classes)."
            )
        order = torch.randperm(n, generator=generator(seed, "class-split")).tolist()
        pre, down = sorted(order[: cfg.num_pretrain_classes]), sorted(order[cfg.num_pretrain_classes :])
    else:
        spec = cfg.spec
        pre = list(cfg.pretrain_classes if cfg.pretrain_classes is not None else spec.pretrain_classes if spec else ())
        down = list(
            cfg.downstream_classes if cfg.downstream_classes is not None else spec.downstream_classes if spec else ()
        )
        if not pre:
            raise DataError(
                f"no class split is known for {cfg.dataset!r}; set data.pretrain_classes (and downstream_classes) "
                "or data.num_pretrain_classes."
            )
    bad = sorted({c for c in [*pre, *down] if not 0 <= c < n})
    if bad:
        raise DataError(f"classes {bad[:10]} do not exist: the dataset has classes 0..{n - 1}; fix the class lists.")
    if set(pre) & set(down):
        raise DataError(f"classes {sorted(set(pre) & set(down))[:10]} are both pre-training and downstream classes.")
    present = set(torch.unique(data.labels).tolist())
    empty = sorted(set(pre) - present)
    if empty:
        raise DataError(f"pre-training classes {empty[:10]} have no samples in {data.source!r}; fix the class list.")
    return tuple(pre), tuple(down)


def build_federation(data: ImageData, classes: tuple[int, ...], cfg: PartitionConfig, seed: int) -> FederatedData:
    """Restrict ``data`` to ``classes`` (relabelled 0..K-1), hold out the server share and partition the rest.

    Raises:
        DataError: a natural partition without writer ids, or a client too small for its support/query split.
    """
    mask = torch.isin(data.labels, torch.tensor(classes))
    keep = mask.nonzero().squeeze(1)
    relabel = torch.full((data.num_classes,), -1, dtype=torch.int64)
    relabel[torch.tensor(classes)] = torch.arange(len(classes))
    labels = relabel[data.labels[keep]]
    order = torch.randperm(keep.numel(), generator=generator(seed, "server-share"))
    n_server = round(cfg.server_fraction * keep.numel())
    server, rest = order[:n_server].sort().values, order[n_server:].sort().values
    writers = data.writers[keep][rest] if data.writers is not None else None
    parts = partition_indices(labels[rest], writers, cfg, seed)
    clients = [rest[torch.as_tensor(p, dtype=torch.int64)].sort().values for p in parts]
    fed = FederatedData(
        images=data.images[keep],
        labels=labels,
        clients=clients,
        server=server if n_server else None,
        num_classes=len(classes),
        mean=data.mean,
        std=data.std,
        flip=data.flip,
        class_ids=tuple(classes),
        meta={"source": data.source},
    )
    return fed


def partition_indices(
    labels: torch.Tensor, writers: torch.Tensor | None, cfg: PartitionConfig, seed: int
) -> list[np.ndarray]:
    """Positions ``0..len(labels)-1`` divided among clients by an flwr-datasets partitioner."""
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, NaturalIdPartitioner

    table = {"idx": np.arange(labels.numel()), "label": labels.numpy()}
    if cfg.scheme == "natural":
        if writers is None:
            raise DataError(
                "partition.scheme='natural' needs a writer column; set data.writer_column or use dirichlet."
            )
        table["writer"] = writers.numpy()
        partitioner = NaturalIdPartitioner(partition_by="writer")
    elif cfg.scheme == "iid":
        shuffle = np.random.default_rng(derive_seed(seed, "iid")).permutation(labels.numel())
        table = {k: v[shuffle] for k, v in table.items()}
        partitioner = IidPartitioner(num_partitions=_num_clients(cfg, labels.numel()))
    else:
        partitioner = DirichletPartitioner(
            num_partitions=_num_clients(cfg, labels.numel()),
            partition_by="label",
            alpha=cfg.alpha,
            min_partition_size=min(cfg.min_partition_size, labels.numel() // _num_clients(cfg, labels.numel())),
            seed=derive_seed(seed, "dirichlet") % 2**32,
        )
    partitioner.dataset = datasets.Dataset.from_dict(table)
    parts = [np.asarray(partitioner.load_partition(i)["idx"]) for i in range(partitioner.num_partitions)]
    if cfg.scheme == "natural" and cfg.num_clients is not None:
        if cfg.num_clients > len(parts):
            raise DataError(
                f"partition.num_clients={cfg.num_clients} but the data has only {len(parts)} writers; "
                f"lower num_clients to at most {len(parts)}."
            )
        pick = torch.randperm(len(parts), generator=generator(seed, "writers"))[: cfg.num_clients].sort().values
        parts = [parts[i] for i in pick.tolist()]
    return parts


def _num_clients(cfg: PartitionConfig, n_samples: int) -> int:
    clients = cfg.num_clients or 100
    if clients > n_samples:
        raise DataError(f"cannot split {n_samples} samples among {clients} clients; lower partition.num_clients.")
    return clients


def query_size(n: int, query_fraction: float) -> int:
    """Number of query samples of a client with ``n`` samples."""
    return int(n * query_fraction)


def check_support_query(sizes: list[int], query_fraction: float) -> None:
    """Fail before training if some client cannot give both a support and a query sample."""
    small = [
        i for i, n in enumerate(sizes) if query_size(n, query_fraction) < 1 or n - query_size(n, query_fraction) < 1
    ]
    if small:
        need = int(np.ceil(1 / query_fraction))
        raise DataError(
            f"{len(small)} clients (e.g. client {small[0]} with {sizes[small[0]]} samples) are too small for a "
            f"{1 - query_fraction:.0%}/{query_fraction:.0%} support/query split (need {need}+ samples); use fewer "
            "clients, a larger Dirichlet alpha or a larger partition.min_partition_size."
        )


def support_query(
    indices: torch.Tensor, query_fraction: float, seed: int, round_: int, client: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A client's support and query index sets for this round (``round_`` is 0 for a fixed split)."""
    perm = indices[torch.randperm(indices.numel(), generator=generator(seed, "support-query", round_, client))]
    n_query = query_size(indices.numel(), query_fraction)
    return perm[n_query:], perm[:n_query]
