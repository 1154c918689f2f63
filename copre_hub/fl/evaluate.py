"""Compare initializations on the same downstream FL tasks (what ``copre-hub evaluate`` does).

Each initialization is a checkpoint folder, a Hub id or ``"random"``. A checkpoint goes through
``copre_hub.load(id, num_classes=k)``: its backbone, a fresh k-way head. ``"random"`` is the same architecture with
random weights (taken from ``architecture=`` or from the first checkpoint listed). Every initialization is then
given the same head weights per task (:func:`copre_hub.fl.downstream.reset_head`), so only the backbone differs,
and runs the same tasks, partitions and batch orders (all keyed by ``DownstreamConfig.seed``).

The report (``results.json``) is a :class:`copre_hub.fl.report_format.Report`, whose module gives its format;
tables, plots, card results and merges of a report are in :mod:`copre_hub.fl.report`.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from copre_hub._logging import get_logger
from copre_hub.errors import ConfigError
from copre_hub.fl.data import DataConfig, ImageData, load_image_data, portable_source
from copre_hub.fl.distributed import Processes
from copre_hub.fl.downstream import (
    DownstreamConfig,
    DownstreamTask,
    class_pool,
    draw_tasks,
    reset_head,
    run_task,
)
from copre_hub.fl.metrics import summarize, task_metrics
from copre_hub.fl.partition import class_split
from copre_hub.fl.pretrain import software_versions
from copre_hub.fl.report_format import (
    FORMAT,
    RANDOM,
    DataRecord,
    InitializationResult,
    Report,
    TaskDraw,
    TaskResult,
    read_report,
)
from copre_hub.fl.seeding import derive_seed
from copre_hub.fl.task_cache import TaskCache
from copre_hub.hub.meta import CheckpointMeta

_logger = get_logger(__name__)

# Keys of DataConfig that describe the dataset itself (a recipe's data.path is machine-specific and left out).
_DATA_KEYS = ("dataset", "splits", "image_column", "label_column", "writer_column")


@dataclass(frozen=True)
class Initialization:
    """A starting point to compare.

    Attributes:
        source: what the user named: a checkpoint folder, a Hub id, or ``"random"``.
        folder: the checkpoint's local folder (None for random).
        config: the checkpoint's ``config.json`` (None for random).
        random_arch: for random, the timm architecture and its constructor arguments (set by
            :func:`with_random_architecture`).
    """

    source: str
    folder: Path | None = None
    config: dict[str, Any] | None = None
    random_arch: tuple[str, dict[str, Any]] | None = None

    @property
    def is_random(self) -> bool:
        return self.folder is None

    @property
    def meta(self) -> CheckpointMeta:
        """The checkpoint's ``copre_hub`` block (empty for random or a plain timm export)."""
        return CheckpointMeta.from_config(self.config or {})

    @property
    def architecture(self) -> str | None:
        """The timm architecture (None for a random initialization whose architecture is not yet set)."""
        if self.config is not None:
            return self.config["architecture"]
        return self.random_arch[0] if self.random_arch else None

    @property
    def default_label(self) -> str:
        return RANDOM if self.is_random else str(self.meta.model_id or self.source)


def resolve(source: str) -> Initialization:
    """``"random"``, or the checkpoint ``source`` (folder or Hub id) pulled and verified.

    Raises:
        ModelNotFoundError, CheckpointError, IntegrityError: as :func:`copre_hub.pull`.
    """
    if source.lower() == RANDOM:
        return Initialization(source=RANDOM)
    import copre_hub
    from copre_hub.hub.checkpoint import verify_checkpoint

    folder = copre_hub.pull(source)
    return Initialization(source=source, folder=folder, config=verify_checkpoint(folder))


def with_random_architecture(inits: Sequence[Initialization], architecture: str | None) -> list[Initialization]:
    """``inits`` with the architecture of ``"random"`` filled in: ``architecture``, else the first checkpoint's.

    The first checkpoint's constructor arguments are kept when its architecture is the one used, except input
    channels and size, which come from the dataset.

    Raises:
        ConfigError: ``"random"`` is listed with neither an architecture nor a checkpoint to take it from.
    """
    if not any(init.is_random for init in inits):
        return list(inits)
    first = next((init.config for init in inits if not init.is_random), None)
    if architecture is None and first is None:
        raise ConfigError("'random' needs an architecture: pass --arch NAME, or list a checkpoint as well.")
    name = architecture or first["architecture"]
    args = dict(first.get("model_args") or {}) if first and first["architecture"] == name else {}
    arch = (name, {k: v for k, v in args.items() if k not in ("in_chans", "img_size", "num_classes")})
    return [dataclasses.replace(init, random_arch=arch) if init.is_random else init for init in inits]


def data_config(inits: Sequence[Initialization]) -> DataConfig:
    """The dataset the first checkpoint was pre-trained on (its recipe's data table), else CIFAR-100."""
    for init in inits:
        meta = init.meta
        recipe_data = (meta.recipe or {}).get("data") or {}
        if dataset := meta.dataset:
            fields = {k: recipe_data[k] for k in _DATA_KEYS if recipe_data.get(k) is not None}
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
            return DataConfig(**{**fields, "dataset": dataset})
    return DataConfig()


def split_classes(
    images: ImageData, data: DataConfig, inits: Sequence[Initialization], seed: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(seen, unseen): the class split the checkpoints record, else the dataset's default split.

    Raises:
        ConfigError: two checkpoints were pre-trained on different class splits (their "unseen" classes differ).
        DataError: no split is recorded or known (see :func:`copre_hub.fl.partition.class_split`).
    """
    recorded = {}
    for init in inits:
        if split := init.meta.class_split:
            recorded[init.source] = split
    if len(set(recorded.values())) > 1:
        raise ConfigError(
            f"{', '.join(recorded)} were pre-trained on different class splits, so they have different unseen "
            "classes; evaluate them separately."
        )
    if recorded:
        return next(iter(recorded.values()))
    return class_split(images, data, seed)


def model_factory(
    init: Initialization, images: ImageData, num_classes: int, cfg: DownstreamConfig
) -> Callable[[DownstreamTask], nn.Module]:
    """A function giving, per task, a fresh model: this initialization's backbone and the task's seeded head.

    A checkpoint is loaded once (``copre_hub.load(folder, num_classes=k)``) and copied per task; a random
    backbone is drawn per task from ``(seed, "random-init", task)``.

    Raises:
        ConfigError: the checkpoint expects other input channels than the dataset has, or a random
            initialization has no architecture (see :func:`with_random_architecture`).
    """
    channels, height, _ = images.input_size
    if init.is_random:
        return _random_factory(init, channels, height, num_classes, cfg)
    import copre_hub

    expected = (init.config or {}).get("pretrained_cfg", {}).get("input_size") or [channels]
    if int(expected[0]) != channels:
        raise ConfigError(
            f"{init.source} takes {expected[0]}-channel input but the dataset has {channels} channels; evaluate it "
            "on the dataset it was pre-trained for (--dataset)."
        )
    template = copre_hub.load(init.folder, num_classes=num_classes)

    def checkpoint_model(task: DownstreamTask) -> nn.Module:
        return reset_head(copy.deepcopy(template), num_classes, cfg.seed, task.index)

    return checkpoint_model


def _random_factory(
    init: Initialization, channels: int, height: int, num_classes: int, cfg: DownstreamConfig
) -> Callable[[DownstreamTask], nn.Module]:
    from copre_hub.fl.models import ModelConfig, create_model

    if init.random_arch is None:
        raise ConfigError("'random' needs an architecture: pass --arch NAME, or list a checkpoint as well.")
    architecture, model_args = init.random_arch
    model_cfg = ModelConfig(architecture=architecture, model_args=model_args)

    def random_model(task: DownstreamTask) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, "random-init", task.index))
            model = create_model(model_cfg, num_classes=num_classes, in_chans=channels, img_size=height)
        return reset_head(model, num_classes, cfg.seed, task.index)

    return random_model


def evaluate_initialization(
    label: str,
    init: Initialization,
    build: Callable[[DownstreamTask], nn.Module],
    tasks: Sequence[DownstreamTask],
    cfg: DownstreamConfig,
    processes: Processes,
    on_task: Callable[[list[TaskResult]], None] | None = None,
    finished: Sequence[TaskResult] = (),
    on_round: Callable[[int, dict], None] | None = None,
) -> InitializationResult:
    """Run every task from ``build(task)`` and return this initialization's entry of the report.

    ``finished`` holds task results kept from an interrupted run (as in the entry's ``tasks``); those tasks are
    not run again. ``on_task`` is called with the results so far after each task that is run, ``on_round`` after
    each of its rounds.
    """
    done = {result["index"]: result for result in finished}
    per_task: list[TaskResult] = []
    for task in tasks:
        if task.index in done:
            per_task.append(done[task.index])
            continue
        started = time.perf_counter()
        accuracies = run_task(build(task), task, cfg, processes, on_round)
        metrics = task_metrics(accuracies)
        per_task.append(
            TaskResult(
                index=task.index,
                client_accuracies=accuracies,
                mean_accuracy=metrics["mean_accuracy"],
                variance=metrics["variance"],
                lowest_10=metrics["lowest_10"],
                lowest_20=metrics["lowest_20"],
                lowest_30=metrics["lowest_30"],
                seconds=time.perf_counter() - started,
            )
        )
        if on_task is not None:
            on_task(per_task)
    return InitializationResult(
        label=label,
        source=init.source,
        architecture=init.architecture,
        model_id=init.meta.model_id,
        sha256=init.meta.sha256,
        summary=summarize(per_task),
        tasks=per_task,
        seconds=sum(result["seconds"] for result in per_task),
    )


def evaluate(
    sources: Sequence[str],
    cfg: DownstreamConfig | Mapping[str, Any] | None = None,
    data: DataConfig | None = None,
    *,
    architecture: str | None = None,
    labels: Sequence[str] | None = None,
    processes: Processes | None = None,
    progress: bool = False,
    cache_dir: str | Path | None = None,
    reuse: Sequence[str | Path] = (),
    data_dir: str | Path | None = None,
    task_indices: Sequence[int] | None = None,
) -> Report:
    """Run every initialization of ``sources`` on the same downstream tasks; returns the report.

    Args:
        sources: checkpoint folders, Hub ids or ``"random"``, compared in this order.
        cfg: the downstream protocol, or settings over the paper's protocol for the dataset
            (:meth:`DownstreamConfig.for_dataset`, e.g. ``{"tasks": 3}``, or ``{"protocol": name}`` for a named
            reading of :data:`copre_hub.fl.protocols.PROTOCOLS`); default: the paper's protocol as its text reads
            (``literal``).
        data: the dataset; default: the one the first checkpoint was pre-trained on, else CIFAR-100.
        architecture: timm name for ``"random"``; default: the first checkpoint's architecture.
        labels: names in the report, one per source; default: each checkpoint's model id, ``random``.
        processes: where to run; default: this process on CUDA when available, else the CPU.
        progress: show a progress bar that moves once per downstream round.
        cache_dir: keep each finished task there and reuse those an earlier call finished under the same
            protocol, data and tasks (see :class:`copre_hub.fl.task_cache.TaskCache`): an interrupted comparison
            resumes where it stopped, and a baseline such as ``"random"`` is evaluated once for several checkpoints.
        reuse: reports of earlier comparisons (``results.json``, or a card's ``evaluation.json``) whose tasks
            count as finished for the same weights, where their protocol, data and tasks are these (see
            :class:`copre_hub.fl.task_cache.TaskCache`): a new checkpoint is compared with published ones without
            running theirs again.
        data_dir: folder of local dataset copies (``--data-dir``); default: ``$COPRE_HUB_DATA``, else the Hub.
        task_indices: run only these of the protocol's ``cfg.tasks`` tasks (0-based; default all), e.g. the tasks
            one machine or one session takes; each task is drawn from the seed and its index alone, so these are
            the same tasks a whole comparison runs, and the report holds just them.

    Returns:
        The report (:class:`copre_hub.fl.report_format.Report`).

    Raises:
        ConfigError: no sources, labels that do not match, incompatible checkpoints, ``random`` without an
            architecture, a ``reuse`` file that is not a report, a task index outside the protocol's tasks.
        DataError, DatasetNotFoundError: the dataset cannot give the tasks.
        ModelNotFoundError, CheckpointError, IntegrityError: a checkpoint cannot be found or is unsound.

    Example:
        >>> report = evaluate(["runs/coprefl/checkpoint", "random"])  # doctest: +SKIP
        >>> print(copre_hub.fl.report.format_table(report))  # doctest: +SKIP
    """
    if not sources:
        raise ConfigError("nothing to evaluate; give checkpoint folders, Hub ids or 'random'.")
    earlier = [read_report(path) for path in reuse]
    inits = with_random_architecture([resolve(source) for source in sources], architecture)
    labels = unique_labels(labels or [init.default_label for init in inits], len(inits))
    data = data or data_config(inits)
    if not isinstance(cfg, DownstreamConfig):
        cfg = DownstreamConfig.for_dataset(data.dataset, **(cfg or {}))
    images = load_image_data(data, data_dir)
    seen, unseen = split_classes(images, data, inits, cfg.seed)
    pool = class_pool(cfg, seen, unseen)
    tasks = draw_tasks(images, seen, unseen, cfg)
    if task_indices is not None:
        tasks = only_tasks(tasks, task_indices)
    protocol = dataclasses.asdict(cfg)
    record = DataRecord(
        dataset=data.dataset,
        source=portable_source(images.source, data_dir),
        input_size=list(images.input_size),
        pretrain_classes=list(seen),
        downstream_classes=list(unseen),
        class_pool=list(pool),
    )
    draws = [
        TaskDraw(
            index=task.index,
            classes=list(task.classes),
            train_sizes=task.data.client_sizes,
            test_sizes=[int(t.numel()) for t in task.test],
        )
        for task in tasks
    ]
    cache = TaskCache(Path(cache_dir) if cache_dir is not None else None, protocol, record, draws, earlier)
    for path, report in zip(reuse, earlier, strict=True):
        if not any(kept is report for kept in cache.reused):
            _logger.warning("nothing reused from %s: it was made under another protocol or data than these.", path)
    processes = processes or Processes(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    bar = _progress_bar(len(inits) * len(tasks) * cfg.rounds, enabled=progress)
    entries: list[InitializationResult] = []
    try:
        for label, init in zip(labels, inits, strict=True):
            finished = cache.finished(init)
            bar.set_description(f"downstream {label}")
            bar.update(len(finished) * cfg.rounds)

            def on_task(per_task: list[TaskResult], init: Initialization = init) -> None:
                cache.save(init, per_task)

            build = model_factory(init, images, cfg.classes_per_task, cfg)
            entries.append(
                evaluate_initialization(
                    label, init, build, tasks, cfg, processes, on_task, finished, lambda *_: bar.update(1)
                )
            )
    finally:
        bar.close()
    return Report(
        format=FORMAT,
        protocol=protocol,
        data=record,
        tasks=draws,
        initializations=entries,
        versions=software_versions(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def only_tasks(tasks: Sequence[DownstreamTask], indices: Sequence[int]) -> list[DownstreamTask]:
    """The tasks of ``tasks`` with these indices, in task order.

    Raises:
        ConfigError: no index, or an index that is not one of the tasks.
    """
    wanted = set(indices)
    unknown = sorted(wanted - {task.index for task in tasks})
    if not wanted or unknown:
        raise ConfigError(
            f"task indices {unknown or '(none)'} are not among the protocol's {len(tasks)} tasks "
            f"(0-{len(tasks) - 1}); give indices in that range, or raise the protocol's tasks."
        )
    return [task for task in tasks if task.index in wanted]


def unique_labels(labels: Sequence[str], count: int) -> list[str]:
    """``labels`` with repeats made distinct (``name``, ``name#2``, ...).

    Raises:
        ConfigError: not one label per initialization.
    """
    if len(labels) != count:
        raise ConfigError(f"{len(labels)} labels for {count} initializations; give one label per initialization.")
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="downstream", unit="round", disable=not enabled, dynamic_ncols=True)
