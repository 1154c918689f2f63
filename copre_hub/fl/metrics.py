"""Downstream metrics of the paper (section 2.5): pure functions of per-client accuracies, easy to check by hand.

For one task, with the final global model's accuracy ``a_g`` (%) on each client's own test split:

* ``mean_accuracy``: ``(1/|G|) Σ_g a_g``;
* ``variance``: the **population** variance ``(1/|G|) Σ_g (a_g − mean)²``, in %² (the project's decision, paper
  notes section 0);
* ``lowest_k``: the mean accuracy of the ``ceil(k · |G| / 100)`` worst clients, computed in integers so that
  ``k = 30`` with 10 clients takes exactly 3 clients (``0.3 * 10`` is ``3.0000000000000004`` in floating point).
  With 10 clients: L10 is the worst client, L20 the mean of the worst 2, L30 of the worst 3. With 7 clients:
  L10 takes 1 client, L20 2 (ceil 1.4), L30 3 (ceil 2.1). At least one client is always taken.

Across tasks, every metric is reported as its mean and its population standard deviation (``<name>_std``),
the "± std over the X tasks" of the paper's tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from copre_hub.errors import DataError

LOWEST = (10, 20, 30)
METRICS = ("mean_accuracy", "variance", *(f"lowest_{k}" for k in LOWEST))


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean.

    Raises:
        DataError: ``values`` is empty.
    """
    if not values:
        raise DataError("cannot average an empty list of accuracies; every task needs at least one client.")
    return math.fsum(values) / len(values)


def population_variance(values: Sequence[float]) -> float:
    """``(1/n) Σ (v − mean)²``: divides by the number of values, not n − 1.

    Raises:
        DataError: ``values`` is empty.
    """
    centre = mean(values)
    return math.fsum((v - centre) ** 2 for v in values) / len(values)


def population_std(values: Sequence[float]) -> float:
    """Square root of :func:`population_variance`."""
    return math.sqrt(population_variance(values))


def lowest_count(num_clients: int, percent: int) -> int:
    """How many clients "the lowest ``percent``%" of ``num_clients`` means: ``ceil(percent · n / 100)``, at least 1.

    Raises:
        DataError: no clients, or ``percent`` outside 1..100.
    """
    if num_clients < 1 or not 1 <= percent <= 100:
        raise DataError(f"lowest-{percent}% of {num_clients} clients is undefined; use 1..100% of 1+ clients.")
    return max(1, -(-percent * num_clients // 100))


def lowest_accuracy(accuracies: Sequence[float], percent: int) -> float:
    """Mean of the ``lowest_count(len(accuracies), percent)`` smallest accuracies.

    Raises:
        DataError: see :func:`lowest_count`.
    """
    worst = sorted(accuracies)[: lowest_count(len(accuracies), percent)]
    return mean(worst)


def task_metrics(accuracies: Sequence[float]) -> dict[str, float]:
    """The paper's metrics of one task from its clients' accuracies in % (see the module docstring).

    Example:
        >>> task_metrics([50, 60, 70, 80, 90, 100, 100, 100, 100, 100])["lowest_20"]
        55.0

    Raises:
        DataError: no accuracies.
    """
    accuracies = [float(a) for a in accuracies]
    return {
        "mean_accuracy": mean(accuracies),
        "variance": population_variance(accuracies),
        **{f"lowest_{k}": lowest_accuracy(accuracies, k) for k in LOWEST},
    }


def summarize(per_task: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean and population std over tasks of every metric in :data:`METRICS` (``name`` and ``name_std``).

    Raises:
        DataError: no tasks.
    """
    if not per_task:
        raise DataError("no downstream tasks to summarise; run at least one task.")
    summary: dict[str, float] = {}
    for name in METRICS:
        values = [float(task[name]) for task in per_task]
        summary[name] = mean(values)
        summary[f"{name}_std"] = population_std(values)
    return summary
