"""Compare initializations on the same downstream FL tasks (what ``copre-hub evaluate`` does).

Each initialization is a checkpoint folder, a Hub id or ``"random"``. A checkpoint goes through
``copre_hub.load(id, num_classes=k)``: its backbone, a fresh k-way head. ``"random"`` is the same architecture with
random weights (taken from ``architecture=`` or from the first checkpoint listed). Every initialization is then
given the same head weights per task (:func:`copre_hub.fl.downstream.reset_head`), so only the backbone differs,
and runs the same tasks, partitions and batch orders (all keyed by ``DownstreamConfig.seed``).

The report (JSON, ``results.json``)::

    {
      "format": "copre-hub/downstream-evaluation/1",
      "protocol": {DownstreamConfig fields: tasks, classes_per_task, class_pool, ..., seed},
      "data": {"dataset", "source", "input_size", "pretrain_classes", "downstream_classes", "class_pool"},
      "tasks": [{"index", "classes", "train_sizes", "test_sizes"}],          # one per task, shared by all
      "initializations": [
        {"label", "source", "architecture", "model_id", "sha256",           # sha256 of the weights, None if random
         "summary": {"mean_accuracy", "mean_accuracy_std", "variance", "variance_std",
                     "lowest_10", "lowest_10_std", "lowest_20", ..., "lowest_30_std"},   # %, %², over tasks
         "tasks": [{"index", "client_accuracies": [% per client], "mean_accuracy", "variance",
                    "lowest_10", "lowest_20", "lowest_30", "seconds"}],
         "seconds"}
      ],
      "versions": {package: version}, "created": ISO time
    }

Metric definitions are in :mod:`copre_hub.fl.metrics`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from copre_hub import _io
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
from copre_hub.fl.metrics import LOWEST, summarize, task_metrics
from copre_hub.fl.partition import class_split
from copre_hub.fl.pretrain import software_versions
from copre_hub.fl.seeding import derive_seed
from copre_hub.hub.cards import int_ranges
from copre_hub.hub.meta import CheckpointMeta, block_of

RANDOM = "random"
FORMAT = "copre-hub/downstream-evaluation/1"
REPORT_NAME = "results.json"
PLOT_NAME = "client_accuracies.png"
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
    on_task: Callable[[list[dict[str, Any]]], None] | None = None,
    finished: Sequence[dict[str, Any]] = (),
    on_round: Callable[[int, dict], None] | None = None,
) -> dict[str, Any]:
    """Run every task from ``build(task)`` and return this initialization's entry of the report.

    ``finished`` holds task results kept from an interrupted run (as in the entry's ``tasks``); those tasks are
    not run again. ``on_task`` is called with the results so far after each task that is run, ``on_round`` after
    each of its rounds.
    """
    done = {result["index"]: result for result in finished}
    per_task = []
    for task in tasks:
        if task.index in done:
            per_task.append(done[task.index])
            continue
        started = time.perf_counter()
        accuracies = run_task(build(task), task, cfg, processes, on_round)
        per_task.append(
            {
                "index": task.index,
                "client_accuracies": accuracies,
                **task_metrics(accuracies),
                "seconds": time.perf_counter() - started,
            }
        )
        if on_task is not None:
            on_task(per_task)
    return {
        "label": label,
        "source": init.source,
        "architecture": init.architecture,
        "model_id": init.meta.model_id,
        "sha256": init.meta.sha256,
        "summary": summarize(per_task),
        "tasks": per_task,
        "seconds": sum(result["seconds"] for result in per_task),
    }


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
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run every initialization of ``sources`` on the same downstream tasks; returns the report.

    Args:
        sources: checkpoint folders, Hub ids or ``"random"``, compared in this order.
        cfg: the downstream protocol, or settings over the paper's protocol for the dataset
            (:meth:`DownstreamConfig.for_dataset`, e.g. ``{"tasks": 3}``, or ``{"protocol": "calibrated"}`` for a
            named reading); default: the paper's protocol as its text reads (``literal``).
        data: the dataset; default: the one the first checkpoint was pre-trained on, else CIFAR-100.
        architecture: timm name for ``"random"``; default: the first checkpoint's architecture.
        labels: names in the report, one per source; default: each checkpoint's model id, ``random``.
        processes: where to run; default: this process on CUDA when available, else the CPU.
        progress: show a progress bar that moves once per downstream round.
        cache_dir: keep each finished task there and reuse those an earlier call finished under the same
            protocol, data and tasks (see :class:`TaskCache`): an interrupted comparison resumes where it stopped,
            and a baseline such as ``"random"`` is evaluated once for several checkpoints.
        data_dir: folder of local dataset copies (``--data-dir``); default: ``$COPRE_HUB_DATA``, else the Hub.

    Returns:
        The report described in the module docstring.

    Raises:
        ConfigError: no sources, labels that do not match, incompatible checkpoints, ``random`` without an
            architecture.
        DataError, DatasetNotFoundError: the dataset cannot give the tasks.
        ModelNotFoundError, CheckpointError, IntegrityError: a checkpoint cannot be found or is unsound.

    Example:
        >>> report = evaluate(["runs/coprefl/checkpoint", "random"])  # doctest: +SKIP
        >>> print(format_table(report))  # doctest: +SKIP
    """
    if not sources:
        raise ConfigError("nothing to evaluate; give checkpoint folders, Hub ids or 'random'.")
    inits = with_random_architecture([resolve(source) for source in sources], architecture)
    labels = unique_labels(labels or [init.default_label for init in inits], len(inits))
    data = data or data_config(inits)
    if not isinstance(cfg, DownstreamConfig):
        cfg = DownstreamConfig.for_dataset(data.dataset, **(cfg or {}))
    images = load_image_data(data, data_dir)
    seen, unseen = split_classes(images, data, inits, cfg.seed)
    pool = class_pool(cfg, seen, unseen)
    tasks = draw_tasks(images, seen, unseen, cfg)
    setting = {
        "protocol": dataclasses.asdict(cfg),
        "data": {
            "dataset": data.dataset,
            "source": portable_source(images.source, data_dir),
            "input_size": list(images.input_size),
            "pretrain_classes": list(seen),
            "downstream_classes": list(unseen),
            "class_pool": list(pool),
        },
        "tasks": [
            {
                "index": task.index,
                "classes": list(task.classes),
                "train_sizes": task.data.client_sizes,
                "test_sizes": [int(t.numel()) for t in task.test],
            }
            for task in tasks
        ],
    }
    cache = TaskCache(Path(cache_dir), setting) if cache_dir is not None else None
    processes = processes or Processes(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    bar = _progress_bar(len(inits) * len(tasks) * cfg.rounds, enabled=progress)
    entries = []
    try:
        for label, init in zip(labels, inits, strict=True):
            finished = cache.finished(init) if cache is not None else []
            bar.set_description(f"downstream {label}")
            bar.update(len(finished) * cfg.rounds)

            def on_task(per_task: list[dict[str, Any]], init: Initialization = init) -> None:
                if cache is not None:
                    cache.save(init, per_task)

            build = model_factory(init, images, cfg.classes_per_task, cfg)
            entries.append(
                evaluate_initialization(
                    label, init, build, tasks, cfg, processes, on_task, finished, lambda *_: bar.update(1)
                )
            )
    finally:
        bar.close()
    return {
        "format": FORMAT,
        **setting,
        "initializations": entries,
        "versions": software_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


class TaskCache:
    """Finished downstream tasks of each initialization under one protocol and dataset, so a comparison resumes.

    One JSON file per initialization, rewritten after each task. A result is reused only under the same protocol
    (apart from the number of tasks) and data, for the same drawn task (index, classes, client sizes) and the same
    weights: the checkpoint's recorded sha256, or for ``"random"`` its architecture (its weights are drawn from the
    protocol's seed). Task ``i`` is drawn from ``(seed, i)`` alone, so the first tasks of a longer comparison are
    those of a shorter one and are reused. A checkpoint without a recorded sha256 (a plain timm export) is never
    cached.
    """

    def __init__(self, folder: Path, setting: dict[str, Any]) -> None:
        self.folder = folder
        protocol = {key: value for key, value in setting["protocol"].items() if key != "tasks"}
        self.setting = _digest({"protocol": protocol, "data": setting["data"]})
        self.specs = {spec["index"]: spec for spec in setting["tasks"]}

    def finished(self, init: Initialization) -> list[dict[str, Any]]:
        """The task results of ``init`` saved for tasks of this setting (empty when none or unreadable)."""
        path = self._path(init)
        if path is None or not path.is_file():
            return []
        try:
            saved = json.loads(path.read_text())
            specs = {spec["index"]: spec for spec in saved["task_specs"]}
            return [r for r in saved["tasks"] if self.specs.get(r["index"]) == specs.get(r["index"])]
        except (OSError, ValueError, KeyError, TypeError):
            return []  # unreadable: run the tasks again and overwrite it

    def save(self, init: Initialization, tasks: list[dict[str, Any]]) -> None:
        """Save (atomically) the task results of ``init``, with those of other tasks saved before, when it has an
        identity to key them by."""
        path = self._path(init)
        if path is None:
            return
        try:
            saved = json.loads(path.read_text()) if path.is_file() else {"tasks": [], "task_specs": []}
            kept = {r["index"]: (r, s) for r, s in zip(saved["tasks"], saved["task_specs"], strict=True)}
        except (OSError, ValueError, KeyError, TypeError):
            kept = {}
        kept.update({r["index"]: (r, self.specs[r["index"]]) for r in tasks})
        ordered = [kept[index] for index in sorted(kept)]
        results, specs = [r for r, _ in ordered], [spec for _, spec in ordered]
        _io.atomic_write_json(path, {"source": init.source, "tasks": results, "task_specs": specs})

    def _path(self, init: Initialization) -> Path | None:
        if init.is_random:
            identity: Any = {"random": list(init.random_arch or ())}
        elif init.meta.sha256:
            identity = {"sha256": init.meta.sha256}
        else:
            return None
        return self.folder / f"{_digest({'setting': self.setting, 'weights': identity})[:24]}.json"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


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


def merge_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One report holding the initializations of several, which must share the protocol, data and tasks.

    Evaluating initializations one call at a time (to save each result as it finishes) and merging gives the
    same report as one call, because the tasks depend only on the protocol's seed and the data.

    Raises:
        ConfigError: the reports were made under different protocols, data or tasks.
    """
    if not reports:
        raise ConfigError("no reports to merge.")
    first = reports[0]
    for other in reports[1:]:
        for key in ("protocol", "data", "tasks"):
            if other[key] != first[key]:
                raise ConfigError(f"cannot merge evaluations with different {key}; rerun them with the same settings.")
    entries = [entry for report in reports for entry in report["initializations"]]
    labels = unique_labels([entry["label"] for entry in entries], len(entries))
    return {**first, "initializations": [{**e, "label": lab} for e, lab in zip(entries, labels, strict=True)]}


def format_table(report: dict[str, Any]) -> str:
    """The comparison as text, the one format of ``copre-hub evaluate`` and the demo.

    One row per initialization (mean ± std over tasks; no std with one task), then, when ``random`` weights are in
    the report, each other initialization's difference from them, then a legend of the columns.
    """
    columns = [("mean_accuracy", "accuracy (%)"), ("variance", "variance"), *_LOWEST_COLUMNS]
    tasks = report["protocol"]["tasks"]
    entries = report["initializations"]

    def cell(summary: dict[str, float], key: str) -> str:
        return f"{summary[key]:.2f}" + (f" ± {summary[f'{key}_std']:.2f}" if tasks > 1 else "")

    rows = [["initialization", *(name for _, name in columns)]]
    rows += [[entry["label"], *(cell(entry["summary"], key) for key, _ in columns)] for entry in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns) + 1)]
    lines = [
        "  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])
        for row in rows
    ]
    baseline = next((entry for entry in entries if entry["source"] == RANDOM), None)
    if baseline is not None:
        lines += [_difference(entry, baseline) for entry in entries if entry is not baseline]
    spread = f"mean ± std over {tasks} tasks" if tasks > 1 else "1 task"
    lines.append(
        f"({spread} of {report['protocol']['clients']} clients; accuracy: the clients' mean final test accuracy; "
        "variance: of the client accuracies, in %²; lowest k%: mean accuracy of the worst k% of clients)"
    )
    return "\n".join(lines)


_LOWEST_COLUMNS = [(f"lowest_{k}", f"lowest {k}% (%)") for k in LOWEST]


def _difference(entry: dict[str, Any], baseline: dict[str, Any]) -> str:
    ours, theirs = entry["summary"], baseline["summary"]
    return (
        f"{entry['label']} vs {baseline['label']}: "
        f"{ours['mean_accuracy'] - theirs['mean_accuracy']:+.2f} points of accuracy, "
        f"{ours['variance'] - theirs['variance']:+.2f} variance, "
        f"{ours['lowest_10'] - theirs['lowest_10']:+.2f} points for the lowest 10%"
    )


def write_report(report: dict[str, Any], folder: str | Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``client_accuracies.png`` into ``folder`` (atomically); returns both paths."""
    folder = Path(folder)
    json_path = _io.atomic_write_json(folder / REPORT_NAME, report)
    return json_path, plot_client_accuracies(report, folder / PLOT_NAME)


def plot_client_accuracies(report: dict[str, Any], path: str | Path) -> Path:
    """Histogram of per-client test accuracy (all tasks pooled), one panel per initialization (Figure 2 style)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    entries = report["initializations"]
    figure = Figure(figsize=(6.4, 1.6 + 1.4 * len(entries)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(entries), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    bins = list(range(0, 105, 5))
    for ax, entry, colour in zip(axes, entries, _colours(len(entries)), strict=True):
        accuracies = [a for task in entry["tasks"] for a in task["client_accuracies"]]
        summary = entry["summary"]
        ax.hist(accuracies, bins=bins, color=colour, alpha=0.8, edgecolor="white", label="clients per 5% bin")
        ax.axvline(summary["mean_accuracy"], color="black", linestyle="--", linewidth=1, label="mean accuracy")
        ax.axvline(summary["lowest_10"], color="black", linestyle=":", linewidth=1, label="lowest 10% (mean)")
        ax.set_title(
            f"{entry['label']}: mean {summary['mean_accuracy']:.1f}%, variance {summary['variance']:.1f}, "
            f"lowest 10% {summary['lowest_10']:.1f}%",
            fontsize=9,
            loc="left",
        )
        ax.set_ylabel("clients")
    axes[0].legend(fontsize=7, loc="upper left", frameon=False)
    axes[-1].set_xlabel("client test accuracy (%), all tasks' clients pooled")
    axes[-1].set_xlim(0, 100)
    protocol = report["protocol"]
    tasks = f"{protocol['tasks']} task" + ("s" if protocol["tasks"] != 1 else "")
    figure.suptitle(
        f"{report['data']['dataset']}: {tasks} x {protocol['clients']} clients, "
        f"{protocol['algorithm']} {protocol['rounds']} rounds",
        fontsize=10,
    )
    return _io.atomic_write(Path(path), lambda tmp: figure.savefig(tmp, format="png", dpi=120))


def card_eval_result(report: dict[str, Any], label: str) -> dict[str, Any]:
    """One initialization's results in the shape :func:`copre_hub.hub.cards.build_model_card` documents.

    ``client_accuracies`` pools every task's clients. ``protocol`` (the full downstream settings) is kept too,
    so a later merge of the same protocol replaces this entry instead of adding a second one. ``baselines`` holds
    the summaries of the report's other initializations (e.g. random), which faced the same tasks, and this
    initialization's paired differences against each (``paired``), so the card can show what it gains over them.

    Raises:
        ConfigError: no initialization has that label.
    """
    entry = next((e for e in report["initializations"] if e["label"] == label), None)
    if entry is None:
        known = ", ".join(e["label"] for e in report["initializations"])
        raise ConfigError(f"no initialization labelled {label!r} in the report; labels are {known}.")
    protocol = report["protocol"]
    summary = entry["summary"]
    return {
        "dataset": report["data"]["dataset"],
        "classes": f"{protocol['class_pool']} {int_ranges(report['data']['class_pool'])}",
        "algorithm": protocol["algorithm"],
        "tasks": protocol["tasks"],
        "clients": protocol["clients"],
        "rounds": protocol["rounds"],
        **{key: summary[key] for key in sorted(summary)},
        "client_accuracies": [a for task in entry["tasks"] for a in task["client_accuracies"]],
        "protocol": protocol,
        "baselines": [
            {"label": other["label"], **other["summary"], "paired": paired(entry, other)}
            for other in report["initializations"]
            if other is not entry
        ],
    }


def paired(entry: dict[str, Any], other: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``entry`` minus ``other`` task by task, per metric (:func:`copre_hub.fl.metrics.paired_difference`)."""
    from copre_hub.fl.metrics import METRICS, paired_difference

    return {m: paired_difference([t[m] for t in entry["tasks"]], [t[m] for t in other["tasks"]]) for m in METRICS}


def merge_into_checkpoint(folder: str | Path, result: dict[str, Any]) -> Path:
    """Add ``result`` (see :func:`card_eval_result`) to a local checkpoint's ``copre_hub.eval_results`` and card.

    A previous result with the same dataset and protocol is replaced; others are kept. The folder is rewritten
    with :func:`copre_hub.hub.checkpoint.save_checkpoint` (atomic per file; the weights are rewritten unchanged).

    Raises:
        ConfigError: ``folder`` is a Hugging Face cache snapshot (copy it to a folder of your own first).
        CheckpointError, IntegrityError: the folder is not a sound checkpoint.
    """
    from copre_hub.hub.checkpoint import WEIGHTS_NAME, load_checkpoint, save_checkpoint, verify_checkpoint

    folder = Path(folder)
    if (folder / WEIGHTS_NAME).is_symlink():
        raise ConfigError(
            f"{folder} is a Hub cache snapshot; copy it first (cp -rL {folder} my-checkpoint) and merge into the copy."
        )
    config = verify_checkpoint(folder)
    model = load_checkpoint(folder)
    block = block_of(config)
    previous = CheckpointMeta.from_config(config).eval_results
    kept = [r for r in previous if (r.get("dataset"), r.get("protocol")) != (result["dataset"], result["protocol"])]
    cfg = config["pretrained_cfg"]
    return save_checkpoint(
        model,
        folder,
        architecture=config["architecture"],
        model_args=config.get("model_args") or {},
        num_classes=config["num_classes"],
        input_size=tuple(cfg["input_size"]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        copre_hub_meta={**block, "eval_results": [*kept, result]},
        label_names=config.get("label_names"),
    )


def _colours(count: int) -> list[str]:
    palette = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974"]
    return [palette[i % len(palette)] for i in range(count)]


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="downstream", unit="round", disable=not enabled, dynamic_ncols=True)
