"""The downstream comparison's report, ``results.json``: one type per JSON object, and the look-ups its readers share.

A report is plain JSON, written once and read by tables, plots, cards and the benchmarks, so its types are
``TypedDict``s: what :func:`copre_hub.fl.evaluate.evaluate` returns is exactly what ``json.load`` gives back from
``results.json``, and a type checker sees every key a reader uses. Percentages are in % and variances in %²;
metric definitions are in :mod:`copre_hub.fl.metrics`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

from copre_hub.errors import ConfigError

FORMAT = "copre-hub/downstream-evaluation/1"
RANDOM = "random"  # the source (and default label) of random weights

Summary = dict[str, float]
"""Each metric of :data:`copre_hub.fl.metrics.METRICS` over tasks: ``name`` (mean) and ``name_std`` (population)."""


class DataRecord(TypedDict):
    """The dataset the tasks were drawn from; ``source`` is as :func:`copre_hub.fl.data.portable_source` records it
    (a Hub id, or ``$COPRE_HUB_DATA/<name>`` for a local copy in the data folder)."""

    dataset: str
    source: str | None
    input_size: list[int]
    pretrain_classes: list[int]
    downstream_classes: list[int]
    class_pool: list[int]


class TaskDraw(TypedDict):
    """One downstream task as drawn (shared by every initialization): its classes and each client's sizes."""

    index: int
    classes: list[int]
    train_sizes: list[int]
    test_sizes: list[int]


class TaskResult(TypedDict):
    """One initialization on one task: each client's final test accuracy and the task's metrics."""

    index: int
    client_accuracies: list[float]
    mean_accuracy: float
    variance: float
    lowest_10: float
    lowest_20: float
    lowest_30: float
    seconds: float


class InitializationResult(TypedDict):
    """One initialization on every task; ``sha256`` is that of its weights (None for random weights)."""

    label: str
    source: str
    architecture: str | None
    model_id: str | None
    sha256: str | None
    summary: Summary
    tasks: list[TaskResult]
    seconds: float


class Report(TypedDict):
    """A comparison of initializations on the same tasks: ``protocol`` holds the fields of
    :class:`copre_hub.fl.downstream.DownstreamConfig`, ``versions`` the software that ran it."""

    format: str
    protocol: dict[str, Any]
    data: DataRecord
    tasks: list[TaskDraw]
    initializations: list[InitializationResult]
    versions: dict[str, str]
    created: str


def read_report(path: str | Path) -> Report:
    """The report in ``path`` (a ``results.json``, or a card's ``evaluation.json``).

    Raises:
        ConfigError: the file cannot be read or is not a report of this format.
    """
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read the report {path}: {error}; give a results.json or evaluation.json.") from None
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        raise ConfigError(
            f"{path} is not a downstream report ({FORMAT}); give the results.json of `copre-hub evaluate` or a "
            "card's evaluation.json."
        )
    return report


def initialization(report: Report, label: str) -> InitializationResult:
    """The entry labelled ``label``.

    Raises:
        ConfigError: no initialization has that label (the error lists the labels there are).
    """
    entry = next((e for e in report["initializations"] if e["label"] == label), None)
    if entry is None:
        known = ", ".join(e["label"] for e in report["initializations"])
        raise ConfigError(f"no initialization labelled {label!r} in the report; labels are {known}.")
    return entry


def random_entry(report: Report) -> InitializationResult | None:
    """The random-weights entry, the floor the others are read against (None when the report has none)."""
    return next((entry for entry in report["initializations"] if entry["source"] == RANDOM), None)


def pooled_accuracies(entry: InitializationResult) -> list[float]:
    """Every client's accuracy on every task, in task order (the per-client histograms and cards pool them)."""
    return [accuracy for task in entry["tasks"] for accuracy in task["client_accuracies"]]
