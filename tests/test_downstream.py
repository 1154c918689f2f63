"""Downstream tasks: seeded draws shared across initializations, the 80/20 split, and the algorithms' equivalences."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from copre_hub.errors import ConfigError, DataError
from copre_hub.fl.data import ImageData
from copre_hub.fl.downstream import (
    DownstreamConfig,
    class_pool,
    downstream_method,
    draw_tasks,
    reset_head,
    run_task,
    train_test_split,
)
from copre_hub.fl.seeding import generator

SEEN, UNSEEN = tuple(range(6)), tuple(range(6, 12))


def synthetic_images(per_class: int = 40, classes: int = 12) -> ImageData:
    """``classes`` classes of ``per_class`` random 3x8x8 uint8 images each, in a shuffled order."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(per_class)[torch.randperm(classes * per_class, generator=g)]
    images = torch.randint(0, 256, (labels.numel(), 3, 8, 8), dtype=torch.uint8, generator=g)
    return ImageData(images, labels, [str(c) for c in range(classes)], mean=(0.5,) * 3, std=(0.25,) * 3)


class TinyNet(nn.Module):
    """Conv + BatchNorm backbone and a linear head, with timm's ``reset_classifier``."""

    def __init__(self, num_classes: int = 5, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(4, num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def config(**settings) -> DownstreamConfig:
    base = {"tasks": 3, "clients": 4, "rounds": 2, "local_steps": 2, "batch_size": 8, "lr": 0.05, "seed": 7}
    return DownstreamConfig(**{**base, **settings})


def final_weights(cfg: DownstreamConfig, task) -> tuple[torch.Tensor, list[float]]:
    """The trained model's float state as one vector, and the clients' accuracies."""
    model = trained(cfg, task)
    return torch.cat([t.flatten() for t in model.state_dict().values() if t.is_floating_point()]), model.accuracies


def trained(cfg: DownstreamConfig, task) -> nn.Module:
    model = reset_head(TinyNet(), task.num_classes, cfg.seed, task.index)
    model.accuracies = run_task(model, task, cfg)
    return model


def test_paper_defaults_and_femnist_rounds() -> None:
    cfg = DownstreamConfig()
    assert (cfg.tasks, cfg.classes_per_task, cfg.clients, cfg.alpha, cfg.rounds) == (10, 5, 10, 0.5, 50)
    assert (cfg.local_steps, cfg.batch_size, cfg.lr, cfg.algorithm) == (5, 32, 1e-3, "fedavg")
    assert DownstreamConfig.for_dataset("femnist").rounds == 10
    assert DownstreamConfig.for_dataset("femnist", rounds=3).rounds == 3
    assert DownstreamConfig.for_dataset("cifar100").rounds == 50


def test_the_calibrated_protocol_is_the_reading_the_calibration_selected() -> None:
    """``calibrated`` is what ``benchmarks/calibrate.py`` selected on validation tasks, and it keeps the seed of the
    reported tasks (0), not the validation seed."""
    import json
    from pathlib import Path

    record = json.loads((Path(__file__).parents[1] / "benchmarks/results/calibrate-cifar100.json").read_text())
    chosen = next(r for r in record["readings"] if r["name"] == record["selected"]["reading"])
    cfg = DownstreamConfig.for_dataset("cifar100", "calibrated")
    measured = {key: chosen["protocol"][key] for key in ("local_epochs", "lr", "momentum", "rounds", "batch_size")}
    assert {key: getattr(cfg, key) for key in measured} == measured
    assert cfg.seed == 0 and chosen["protocol"]["seed"] == 1
    assert DownstreamConfig.for_dataset("femnist", "calibrated").rounds == 10
    with pytest.raises(ConfigError, match="unknown downstream protocol 'tuned'; use one of literal, calibrated"):
        DownstreamConfig.for_dataset("cifar100", "tuned")


@pytest.mark.parametrize(
    "settings", [{"class_pool": "both"}, {"algorithm": "scaffold"}, {"clients": 0}, {"test_fraction": 1.0}]
)
def test_invalid_settings_are_config_errors(settings) -> None:
    with pytest.raises(ConfigError):
        DownstreamConfig(**settings)
    with pytest.raises(ConfigError, match="no_such"):
        DownstreamConfig.for_dataset("cifar100", no_such=1)


def test_same_seed_same_tasks_for_every_initialization() -> None:
    images = synthetic_images()
    first, second = draw_tasks(images, SEEN, UNSEEN, config()), draw_tasks(images, SEEN, UNSEEN, config())
    for a, b in zip(first, second, strict=True):
        assert a.classes == b.classes
        assert all(torch.equal(x, y) for x, y in zip(a.data.clients, b.data.clients, strict=True))
        assert all(torch.equal(x, y) for x, y in zip(a.test, b.test, strict=True))
    other = draw_tasks(images, SEEN, UNSEEN, config(seed=8))
    pairs = [(x, y) for a, b in zip(first, other, strict=True) for x, y in zip(a.test, b.test, strict=True)]
    assert any(not torch.equal(x, y) for x, y in pairs)


def test_a_task_splits_its_classes_among_clients_80_20() -> None:
    images = synthetic_images()
    cfg = config(classes_per_task=3)
    for task in draw_tasks(images, SEEN, UNSEEN, cfg):
        assert len(task.classes) == 3 and set(task.classes) <= set(UNSEEN)
        assert task.data.images is images.images  # shared, never copied
        everything = torch.cat([*task.data.clients, *task.test])
        expected = torch.isin(images.labels, torch.tensor(task.classes)).nonzero().squeeze(1)
        assert torch.equal(everything.sort().values, expected)  # every sample of the task exactly once
        for train, test in zip(task.data.clients, task.test, strict=True):
            n = train.numel() + test.numel()
            assert test.numel() == max(1, int(n * 0.2))
        relabelled = task.data.labels[everything]  # 0..k-1, in the order of task.classes
        assert torch.equal(torch.tensor(task.classes)[relabelled], images.labels[everything])


def test_class_pools() -> None:
    assert class_pool(config(class_pool="unseen"), SEEN, UNSEEN) == UNSEEN
    assert class_pool(config(class_pool="seen"), SEEN, UNSEEN) == SEEN
    mixed = class_pool(config(class_pool="mixed", mixed_per_side=2, classes_per_task=3), SEEN, UNSEEN)
    assert len(set(mixed) & set(SEEN)) == 2 and len(set(mixed) & set(UNSEEN)) == 2
    with pytest.raises(DataError, match="classes_per_task"):
        class_pool(config(classes_per_task=7), SEEN, UNSEEN)
    with pytest.raises(DataError, match="mixed_per_side"):
        class_pool(config(class_pool="mixed", mixed_per_side=7), SEEN, UNSEEN)


def test_train_test_split_floor_of_20_percent_at_least_one() -> None:
    for n, n_test in [(10, 2), (14, 2), (15, 3), (4, 1), (2, 1)]:
        train, test = train_test_split(torch.arange(n), 0.2, generator(0, "split"))
        assert (train.numel(), test.numel()) == (n - n_test, n_test)
        assert not set(train.tolist()) & set(test.tolist())
    with pytest.raises(DataError, match="too few"):
        train_test_split(torch.arange(1), 0.2, generator(0, "split"))


def test_head_depends_only_on_seed_and_task() -> None:
    a = reset_head(TinyNet(seed=1), 5, seed=3, task=0)
    b = reset_head(TinyNet(seed=2), 5, seed=3, task=0)
    c = reset_head(TinyNet(seed=1), 5, seed=3, task=1)
    assert torch.equal(a.fc.weight, b.fc.weight) and torch.equal(a.fc.bias, b.fc.bias)
    assert not torch.equal(a.features[0].weight, b.features[0].weight)
    assert not torch.equal(a.fc.weight, c.fc.weight)


def test_every_client_takes_part_with_exact_local_steps() -> None:
    method = downstream_method(config(algorithm="fedprox", mu=0.5))
    assert (method.name, method.participants, method.local_steps, method.mu) == ("fedprox", 4, 2, 0.5)
    task = draw_tasks(synthetic_images(), SEEN, UNSEEN, config())[0]
    assert method.sample(task.data, 0, 0) == [0, 1, 2, 3]


def test_run_task_is_reproducible_and_gives_client_accuracies() -> None:
    cfg = config()
    task = draw_tasks(synthetic_images(), SEEN, UNSEEN, cfg)[1]
    weights, accuracies = final_weights(cfg, task)
    again, accuracies_again = final_weights(cfg, task)
    assert torch.equal(weights, again) and accuracies == accuracies_again
    assert len(accuracies) == cfg.clients and all(0 <= a <= 100 for a in accuracies)

    model = trained(cfg, task).eval()  # the final global model, on each client's own test split
    with torch.no_grad():
        for test, accuracy in zip(task.test, accuracies, strict=True):
            x = (task.data.images[test].float() / 255 - 0.5) / 0.25
            correct = (model(x).argmax(1) == task.data.labels[test]).sum().item()
            assert accuracy == pytest.approx(100 * correct / test.numel())


def test_fedprox_with_mu_zero_equals_fedavg() -> None:
    task = draw_tasks(synthetic_images(), SEEN, UNSEEN, config())[0]
    fedavg = final_weights(config(), task)
    fedprox = final_weights(config(algorithm="fedprox", mu=0.0), task)
    assert torch.equal(fedavg[0], fedprox[0]) and fedavg[1] == fedprox[1]
    proximal = final_weights(config(algorithm="fedprox", mu=1.0), task)
    assert not torch.equal(fedavg[0], proximal[0])


def test_qffl_with_q_zero_equals_fedavg_when_clients_hold_equal_data() -> None:
    """What "q-FFL with q = 0 equals FedAvg" means here.

    Our q-FFL uses the step constant L = 1/lr. With q = 0 every client gets h_k = L and Δ_k = L (w - w̄_k), so the
    update is w - Σ_k (w - w̄_k) / |G| = the unweighted mean of the clients' trained weights (BatchNorm buffers are
    averaged by data size, as in FedAvg). FedAvg weighs the same w̄_k by |D_k| / |D|. The two coincide exactly
    when every client holds the same amount of training data (up to float rounding: float64 sums of different
    terms), and differ otherwise.
    """
    cfg = config(partition="iid", classes_per_task=6, rounds=3)  # 6 x 40 = 240 samples: 60 per client, 48 train
    task = draw_tasks(synthetic_images(), SEEN, UNSEEN, cfg)[0]
    assert len(set(task.data.client_sizes)) == 1
    fedavg, _ = final_weights(cfg, task)
    qffl, _ = final_weights(config(partition="iid", classes_per_task=6, rounds=3, algorithm="qffl", q=0.0), task)
    torch.testing.assert_close(qffl, fedavg, rtol=1e-5, atol=1e-6)

    uneven = draw_tasks(synthetic_images(), SEEN, UNSEEN, config(alpha=0.3))[0]
    assert len(set(uneven.data.client_sizes)) > 1
    fedavg, _ = final_weights(config(alpha=0.3), uneven)
    qffl, _ = final_weights(config(alpha=0.3, algorithm="qffl", q=0.0), uneven)
    assert not torch.allclose(qffl, fedavg, rtol=1e-5, atol=1e-6)
