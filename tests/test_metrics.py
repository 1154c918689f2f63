"""The paper's downstream metrics against values worked out by hand."""

from __future__ import annotations

import pytest

from copre_hub.errors import DataError
from copre_hub.fl.metrics import lowest_accuracy, lowest_count, population_variance, summarize, task_metrics

# Ten clients, shuffled so that the lowest-k% must sort them.
TEN = [100, 70, 100, 50, 90, 100, 60, 100, 80, 100]


def test_ten_clients_by_hand() -> None:
    # mean = (50 + 60 + 70 + 80 + 90 + 5 * 100) / 10 = 85
    # squared deviations: 35² + 25² + 15² + 5² + 5² + 5 * 15² = 1225 + 625 + 225 + 25 + 25 + 1125 = 3250
    # population variance = 3250 / 10 = 325 (the sample variance would be 361.1)
    # L10 = worst client = 50; L20 = (50 + 60) / 2 = 55; L30 = (50 + 60 + 70) / 3 = 60
    assert task_metrics(TEN) == {
        "mean_accuracy": 85.0,
        "variance": 325.0,
        "lowest_10": 50.0,
        "lowest_20": 55.0,
        "lowest_30": 60.0,
    }


@pytest.mark.parametrize(
    ("clients", "percent", "count"),
    [
        (10, 10, 1),
        (10, 20, 2),
        (10, 30, 3),  # 0.3 * 10 is 3.0000000000000004 in floating point: integer arithmetic keeps it at 3
        (7, 10, 1),  # ceil(0.7)
        (7, 20, 2),  # ceil(1.4)
        (7, 30, 3),  # ceil(2.1)
        (3, 30, 1),  # ceil(0.9)
        (20, 30, 6),
        (1, 10, 1),
        (10, 100, 10),
    ],
)
def test_lowest_count_rounds_up(clients: int, percent: int, count: int) -> None:
    assert lowest_count(clients, percent) == count


def test_lowest_accuracy_with_seven_clients() -> None:
    accuracies = [40, 10, 70, 20, 60, 30, 50]
    assert lowest_accuracy(accuracies, 10) == 10.0
    assert lowest_accuracy(accuracies, 20) == 15.0
    assert lowest_accuracy(accuracies, 30) == 20.0


def test_variance_is_population_variance() -> None:
    assert population_variance([80.0, 90.0]) == 25.0  # ((-5)² + 5²) / 2, not / 1


def test_summary_is_mean_and_population_std_over_tasks() -> None:
    tasks = [task_metrics([80, 80]), task_metrics([90, 100])]  # means 80 and 95; variances 0 and 25
    summary = summarize(tasks)
    assert summary["mean_accuracy"] == 87.5
    assert summary["mean_accuracy_std"] == 7.5  # sqrt(((80 - 87.5)² + (95 - 87.5)²) / 2)
    assert summary["variance"] == 12.5
    assert summary["variance_std"] == 12.5
    assert summary["lowest_10"] == 85.0  # worst clients 80 and 90
    assert summary["lowest_10_std"] == 5.0


@pytest.mark.parametrize("call", [lambda: task_metrics([]), lambda: summarize([]), lambda: lowest_count(10, 0)])
def test_empty_or_invalid_inputs_raise(call) -> None:
    with pytest.raises(DataError):
        call()


def test_paired_difference_is_a_t_interval_over_tasks() -> None:
    from copre_hub.fl.metrics import paired_difference

    result = paired_difference([3.0, 5.0, 7.0, 9.0], [1.0, 2.0, 3.0, 4.0])  # differences 2, 3, 4, 5
    assert result["mean"] == 3.5 and result["higher"] == 4 and result["tasks"] == 4
    sd = (sum((d - 3.5) ** 2 for d in (2, 3, 4, 5)) / 3) ** 0.5
    assert result["ci95"] == pytest.approx(3.182 * sd / 2)
    assert paired_difference([1.0], [0.0])["ci95"] == float("inf")
    with pytest.raises(DataError, match="equally many tasks"):
        paired_difference([1.0, 2.0], [1.0])
