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


# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; beyond, the normal 1.96 (within 2%).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131)
_T975 += (2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def paired_difference(ours: Sequence[float], theirs: Sequence[float]) -> dict[str, float]:
    """``ours − theirs`` paired by task: mean, the half-width of its 95% t interval, and the tasks where ours is
    higher.

    Pairing removes how hard each task is (both faced the same task, partition, head and batches), so the interval
    is about the initializations, not the tasks. The interval uses the sample std (n − 1) of the differences; with
    one task it is infinite.

    Example:
        >>> paired_difference([70.0, 72.0, 71.0], [68.0, 71.0, 71.5])["mean"]
        0.8333333333333334

    Raises:
        DataError: no pairs, or sequences of different lengths.
    """
    if not ours or len(ours) != len(theirs):
        raise DataError(f"paired differences need equally many tasks on both sides, got {len(ours)} and {len(theirs)}.")
    diffs = [a - b for a, b in zip(ours, theirs, strict=True)]
    n = len(diffs)
    centre = mean(diffs)
    if n == 1:
        half = math.inf
    else:
        sd = math.sqrt(math.fsum((d - centre) ** 2 for d in diffs) / (n - 1))
        half = (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * sd / math.sqrt(n)
    return {"mean": centre, "ci95": half, "higher": sum(d > 0 for d in diffs), "tasks": n}
