"""Downstream federated tasks (paper section 2.5): draw them, then run one federation from one initialization.

A task is ``classes_per_task`` classes drawn from a pool (the downstream classes, "unseen"; the pre-training
classes, "seen"; or Table 4's mixed pool of 10 seen + 10 unseen), relabelled 0..k-1, split over ``clients``
clients (Dirichlet(alpha) per class, or IID), and each client's share split 80/20 into train and test. The
federation (:class:`~copre_hub.fl.partition.FederatedData`) holds the train parts as its clients and shares the
dataset's uint8 image tensor (never copied); the test parts are kept aside for the metrics.

Every draw comes from a generator keyed by ``(seed, purpose, task, ...)`` (:mod:`copre_hub.fl.seeding`): the
task's classes, its partition, the train/test split, the fresh head's weights and the mini-batch order. Two
initializations evaluated with the same ``DownstreamConfig.seed`` therefore face identical tasks, partitions,
heads and batch orders; only the backbone differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from copre_hub.errors import ConfigError, DataError
from copre_hub.fl.data import ImageData
from copre_hub.fl.distributed import Processes
from copre_hub.fl.methods import Method, create_method
from copre_hub.fl.methods.base import RoundCallback
from copre_hub.fl.optim import check_sgd_settings
from copre_hub.fl.partition import FederatedData, PartitionConfig, partition_indices
from copre_hub.fl.protocols import PROTOCOLS
from copre_hub.fl.seeding import derive_seed, generator
from copre_hub.fl.simulation import Simulation

CLASS_POOLS = ("unseen", "seen", "mixed")
PARTITIONS = ("dirichlet", "iid")
ALGORITHMS = ("fedavg", "fedprox", "qffl")
# Paper section 2.5: R = 50 for CIFAR-100 and Tiny-ImageNet, R = 10 for FEMNIST.
ROUNDS_BY_DATASET = {"femnist": 10}


@dataclass(frozen=True)
class DownstreamConfig:
    """The downstream protocol; defaults are the paper's (section 2.5).

    Attributes:
        tasks: X, independent downstream FL tasks.
        classes_per_task: k, classes of each task (the head is resized to k).
        class_pool: ``unseen`` (the downstream classes), ``seen`` (the pre-training classes) or ``mixed``
            (Table 4: ``mixed_per_side`` of each, drawn once per seed; tasks draw from their union).
        mixed_per_side: seen and unseen classes in the mixed pool.
        clients: |G|, clients per task; all of them take part in every round.
        partition: ``dirichlet`` (per-class Dir(alpha) proportions) or ``iid``.
        alpha: Dirichlet concentration.
        test_fraction: share of each client's data held out as its test split (floor, at least 1 sample).
        rounds: R, downstream FL rounds.
        local_steps: mini-batch SGD iterations per client per round.
        local_epochs: instead of ``local_steps``, this many passes over the client's train split per round.
        batch_size, lr: local SGD.
        momentum, nesterov, weight_decay: the clients' optimiser beyond plain SGD (``torch.optim.SGD``'s meaning);
            its state starts fresh every round, as on real FL clients.
        algorithm: ``fedavg``, ``fedprox`` (with ``mu``) or ``qffl`` (with ``q``; step constant L = 1/lr, so with
            q = 0 the update is the unweighted mean of the clients' weights: FedAvg when clients hold equal data).
        mu: FedProx proximal weight (the paper's Table 3b uses 1).
        q: q-FFL fairness exponent (the paper's Table 3b uses 2).
        seed: the seed every draw is keyed by; share it across the initializations being compared.
    """

    tasks: int = 10
    classes_per_task: int = 5
    class_pool: str = "unseen"
    mixed_per_side: int = 10
    clients: int = 10
    partition: str = "dirichlet"
    alpha: float = 0.5
    test_fraction: float = 0.2
    rounds: int = 50
    local_steps: int = 5
    local_epochs: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    algorithm: str = "fedavg"
    mu: float = 1.0
    q: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        choices = {"class_pool": CLASS_POOLS, "partition": PARTITIONS, "algorithm": ALGORITHMS}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"downstream {key}={getattr(self, key)!r} is unknown; use one of {allowed}.")
        counts = ("tasks", "mixed_per_side", "clients", "rounds", "local_steps", "batch_size")
        for key in counts:
            if getattr(self, key) < 1:
                raise ConfigError(f"downstream {key} must be at least 1, got {getattr(self, key)}.")
        if self.classes_per_task < 2:
            raise ConfigError(f"downstream classes_per_task must be at least 2, got {self.classes_per_task}.")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"downstream test_fraction must be in (0, 1), got {self.test_fraction}.")
        for key, value in {"alpha": self.alpha, "lr": self.lr}.items():
            if value <= 0:
                raise ConfigError(f"downstream {key} must be positive, got {value}.")
        for key, value in {"mu": self.mu, "q": self.q}.items():
            if value < 0:
                raise ConfigError(f"downstream {key} cannot be negative, got {value}.")
        if self.local_epochs is not None and self.local_epochs < 1:
            raise ConfigError(f"downstream local_epochs must be at least 1, got {self.local_epochs}.")
        check_sgd_settings(self.momentum, self.nesterov, self.weight_decay, where="downstream ")

    @classmethod
    def for_dataset(cls, dataset: str, protocol: str = "literal", **settings: object) -> DownstreamConfig:
        """The paper's protocol for ``dataset`` (R = 10 on FEMNIST, 50 elsewhere) under the reading ``protocol``
        (a key of :data:`PROTOCOLS`), with ``settings`` on top.

        Raises:
            ConfigError: an unknown protocol or setting, or an invalid value.
        """
        if protocol not in PROTOCOLS:
            raise ConfigError(f"unknown downstream protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}.")
        defaults = {"rounds": ROUNDS_BY_DATASET.get(dataset.lower(), cls.rounds), **PROTOCOLS[protocol]}
        if "local_steps" in settings and "local_epochs" not in settings:
            defaults["local_epochs"] = None  # steps asked for explicitly replace a reading's epochs
        try:
            return cls(**{**defaults, **settings})
        except TypeError as error:
            raise ConfigError(f"invalid downstream setting: {error}.") from error


@dataclass
class DownstreamTask:
    """One downstream FL task: the federation of train parts, and each client's test part.

    Attributes:
        index: the task's number (every draw of the task is keyed by it).
        classes: the dataset's class ids, in the order of the task's labels 0..k-1.
        data: the federation; ``data.clients[g]`` are client g's train indices into the shared image tensor.
        test: ``test[g]`` are client g's test indices.
    """

    index: int
    classes: tuple[int, ...]
    data: FederatedData
    test: list[torch.Tensor] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def class_pool(cfg: DownstreamConfig, seen: tuple[int, ...], unseen: tuple[int, ...]) -> tuple[int, ...]:
    """The classes tasks are drawn from (sorted), as ``cfg.class_pool`` asks.

    Raises:
        DataError: the pool is smaller than a task, or the mixed pool cannot take ``mixed_per_side`` of each side.
    """
    if cfg.class_pool == "mixed":
        short = min(len(seen), len(unseen))
        if short < cfg.mixed_per_side:
            raise DataError(
                f"the mixed pool needs {cfg.mixed_per_side} seen and unseen classes but one side has only {short}; "
                "lower mixed_per_side."
            )
        sides = []
        for name, side in (("seen", seen), ("unseen", unseen)):
            order = torch.randperm(len(side), generator=generator(cfg.seed, "mixed-pool", name))
            sides += [side[i] for i in order[: cfg.mixed_per_side].tolist()]
        pool = tuple(sorted(sides))
    else:
        pool = tuple(sorted(unseen if cfg.class_pool == "unseen" else seen))
    if len(pool) < cfg.classes_per_task:
        raise DataError(
            f"the {cfg.class_pool} class pool has {len(pool)} classes, fewer than classes_per_task="
            f"{cfg.classes_per_task}; lower classes_per_task or choose another class_pool."
        )
    return pool


def task_classes(cfg: DownstreamConfig, pool: tuple[int, ...], task: int) -> tuple[int, ...]:
    """Task ``task``'s classes: ``classes_per_task`` of ``pool`` drawn from (seed, "task-classes", task), sorted."""
    order = torch.randperm(len(pool), generator=generator(cfg.seed, "task-classes", task))
    return tuple(sorted(pool[i] for i in order[: cfg.classes_per_task].tolist()))


def train_test_split(
    indices: torch.Tensor, test_fraction: float, draws: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (train, test) split of one client's ``indices``: ``floor(n * test_fraction)`` test samples, at least 1.

    Raises:
        DataError: fewer than 2 samples (no room for both a train and a test sample).
    """
    n = indices.numel()
    if n < 2:
        raise DataError(f"a downstream client has {n} sample(s), too few for a train/test split; use fewer clients.")
    n_test = min(max(1, int(n * test_fraction)), n - 1)
    perm = indices[torch.randperm(n, generator=draws)]
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def build_task(images: ImageData, classes: tuple[int, ...], cfg: DownstreamConfig, index: int) -> DownstreamTask:
    """Task ``index`` over ``classes``: relabel, partition over ``cfg.clients``, split each client 80/20.

    Raises:
        DataError: a class has no samples, too few samples for the clients, or a client too small to split.
    """
    class_ids = torch.tensor(classes, dtype=torch.int64)
    relabel = torch.full((max(images.num_classes, int(class_ids.max()) + 1),), -1, dtype=torch.int64)
    relabel[class_ids] = torch.arange(len(classes))
    labels = relabel[images.labels]  # [N]: 0..k-1 for the task's classes, -1 elsewhere (never indexed)
    members = (labels >= 0).nonzero().squeeze(1)
    present = torch.unique(labels[members]).numel()
    if present < len(classes):
        raise DataError(f"task {index}: {len(classes) - present} of the classes {list(classes)} have no samples.")
    scheme = PartitionConfig(num_clients=cfg.clients, scheme=cfg.partition, alpha=cfg.alpha, server_fraction=0.0)
    parts = partition_indices(labels[members], None, scheme, derive_seed(cfg.seed, "partition", index))
    train, test = [], []
    for client, part in enumerate(parts):
        own = members[torch.as_tensor(part, dtype=torch.int64)]
        client_train, client_test = train_test_split(
            own, cfg.test_fraction, generator(cfg.seed, "train-test", index, client)
        )
        train.append(client_train)
        test.append(client_test)
    data = FederatedData(
        images=images.images,
        labels=labels,
        clients=train,
        num_classes=len(classes),
        mean=images.mean,
        std=images.std,
        flip=images.flip,
        class_ids=classes,
        meta={"source": images.source, "task": index},
    )
    return DownstreamTask(index=index, classes=classes, data=data, test=test)


def draw_tasks(
    images: ImageData, seen: tuple[int, ...], unseen: tuple[int, ...], cfg: DownstreamConfig
) -> list[DownstreamTask]:
    """All ``cfg.tasks`` tasks; the same ``cfg`` (seed included) and data always give the same tasks.

    Args:
        images: the whole dataset (its image tensor is shared by every task).
        seen: the pre-training classes; unseen: the downstream classes.
        cfg: the protocol.

    Raises:
        DataError: see :func:`class_pool` and :func:`build_task`.
    """
    pool = class_pool(cfg, seen, unseen)
    return [build_task(images, task_classes(cfg, pool, index), cfg, index) for index in range(cfg.tasks)]


def downstream_method(cfg: DownstreamConfig) -> Method:
    """The downstream FL algorithm: every client each round, ``local_steps`` mini-batch steps, ``rounds`` rounds."""
    settings = {"fedprox": {"mu": cfg.mu}, "qffl": {"q": cfg.q}}.get(cfg.algorithm, {})
    amount = {"local_steps": cfg.local_steps} if cfg.local_epochs is None else {"local_epochs": cfg.local_epochs}
    return create_method(
        cfg.algorithm,
        rounds=cfg.rounds,
        participants=cfg.clients,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
        **amount,
        **settings,
    )


def reset_head(model: nn.Module, num_classes: int, seed: int, task: int) -> nn.Module:
    """Give ``model`` a fresh ``num_classes``-way head whose weights depend only on ``(seed, task)``.

    Every initialization of a task therefore starts from the same head. The global RNG is left untouched.

    Raises:
        ConfigError: the model has no ``reset_classifier`` (not a timm classifier).
    """
    if not hasattr(model, "reset_classifier"):
        raise ConfigError(f"{type(model).__name__} has no reset_classifier(); downstream tasks need a timm classifier.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "head", task))
        model.reset_classifier(num_classes)
    return model


def run_task(
    model: nn.Module,
    task: DownstreamTask,
    cfg: DownstreamConfig,
    processes: Processes | None = None,
    on_round: RoundCallback | None = None,
) -> list[float]:
    """Run task ``task`` from ``model`` (trained in place) and return each client's final test accuracy in %.

    ``on_round(round, metrics)`` is called after each round (a progress bar moves once per round).

    The model must already have a ``task.num_classes``-way head (see :func:`reset_head`). Accuracy is measured
    with the final global model (eval-mode BatchNorm) on each client's own test split.

    Raises:
        DataError: the task's federation does not fit the algorithm.
    """
    sim = Simulation(model, task.data, processes)
    downstream_method(cfg).run(sim, derive_seed(cfg.seed, "downstream", task.index), on_round=on_round)
    return [100.0 * sim.evaluate(test)[1] for test in task.test]
