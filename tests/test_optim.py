"""Client SGD with momentum, Nesterov and weight decay: torch.optim.SGD's update, state fresh every round."""

from __future__ import annotations

import pytest
import torch
from test_meta_step import SEED, tiny_federation, tiny_model
from torch.nn import functional as F

from copre_hub.errors import ConfigError
from copre_hub.fl.methods import create_method
from copre_hub.fl.optim import LocalSGD, SGDSettings
from copre_hub.fl.seeding import generator
from copre_hub.fl.simulation import iterate_batches


@pytest.mark.parametrize(
    "settings",
    [SGDSettings(), SGDSettings(momentum=0.9), SGDSettings(momentum=0.9, nesterov=True, weight_decay=5e-4)],
    ids=["plain", "momentum", "nesterov-wd"],
)
def test_local_sgd_equals_torch_sgd(settings: SGDSettings) -> None:
    torch.manual_seed(0)
    ours = [torch.randn(4, 3), torch.randn(5)]
    theirs = [p.clone().requires_grad_(True) for p in ours]
    optimizer = torch.optim.SGD(theirs, lr=0.1, **vars(settings))
    step = LocalSGD(ours, 0.1, settings, [torch.empty_like(p) for p in ours])
    for _ in range(4):
        grads = [torch.randn_like(p) for p in ours]
        for p, g in zip(theirs, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
        step.step(grads)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-6)


def test_fedavg_with_momentum_is_torch_sgd_fresh_on_each_client_each_round() -> None:
    """Two rounds of FedAvg with momentum 0.9 and weight decay equal a loop that builds a new torch.optim.SGD for
    every client in every round (no optimiser state crosses clients or rounds)."""
    data = tiny_federation()
    settings = {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}
    method = create_method("fedavg", rounds=2, participants=3, local_epochs=2, batch_size=8, lr=0.05, **settings)
    model = tiny_model()
    method.fit(model, data, seed=SEED)

    reference = tiny_model()
    for t in range(2):
        start = {k: v.clone() for k, v in reference.state_dict().items()}
        clients = method.sample(data, SEED, t)
        sizes = torch.tensor([float(data.clients[c].numel()) for c in clients])
        ends = []
        for c in clients:
            reference.load_state_dict(start)
            opt = torch.optim.SGD(reference.parameters(), lr=0.05, **settings)
            for batch in iterate_batches(data.clients[c], 8, generator(SEED, "batches", t, c), epochs=2):
                opt.zero_grad()
                F.cross_entropy(reference(data.images[batch]), data.labels[batch]).backward()
                opt.step()
            ends.append({k: v.clone() for k, v in reference.state_dict().items()})
        weights = sizes / sizes.sum()
        reference.load_state_dict({k: sum(w * e[k] for w, e in zip(weights, ends, strict=True)) for k in start})
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-5, atol=1e-6)


def test_centralized_uses_the_optimizer_settings_fresh_each_epoch() -> None:
    """Centralized with momentum and weight decay is torch.optim.SGD over the pooled data, a new one each epoch."""
    data = tiny_federation()
    settings = {"momentum": 0.9, "weight_decay": 1e-3}
    method = create_method("centralized", rounds=2, batch_size=8, lr=0.05, **settings)
    model = tiny_model()
    method.fit(model, data, seed=SEED)

    reference = tiny_model()
    pooled = torch.cat(list(data.clients))
    for t in range(2):
        opt = torch.optim.SGD(reference.parameters(), lr=0.05, **settings)
        for batch in iterate_batches(pooled, 8, generator(SEED, "centralized", t), epochs=1):
            opt.zero_grad()
            F.cross_entropy(reference(data.images[batch]), data.labels[batch]).backward()
            opt.step()
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"momentum": 1.0}, "method.momentum must be in [0, 1)"),
        ({"weight_decay": -1.0}, "method.weight_decay cannot be negative"),
        ({"nesterov": True}, "method.nesterov needs method.momentum"),
    ],
)
def test_bad_settings_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        create_method("fedavg", **settings)


def test_second_order_refuses_momentum() -> None:
    with pytest.raises(ConfigError, match="second_order replays plain SGD"):
        create_method("coprefl", second_order=True, momentum=0.9)
