"""CoPreFL's meta-step against references computed independently of the engine."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from copre_hub.fl.methods import create_method
from copre_hub.fl.partition import FederatedData
from copre_hub.fl.seeding import generator
from copre_hub.fl.simulation import Simulation, iterate_batches

SEED = 3


def tiny_federation(num_clients: int = 4, per_client: int = 20) -> FederatedData:
    g = torch.Generator().manual_seed(0)
    clients = [
        (torch.randn(per_client + 3 * i, 3, 2, 2, generator=g), torch.randint(0, 3, (per_client + 3 * i,), generator=g))
        for i in range(num_clients)
    ]
    return FederatedData.from_tensors(clients, num_classes=3)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


def run_round(**method_args) -> tuple[torch.Tensor, object, Simulation]:
    """Weights after one CoPreFL round, with the method and simulation used."""
    method = create_method("coprefl", rounds=1, participants=3, local_epochs=2, batch_size=8, **method_args)
    sim = Simulation(tiny_model(), tiny_federation())
    method.run(sim, SEED)
    return sim.flat.vector.clone(), method, sim


def query_losses(weights: dict[str, torch.Tensor], model: nn.Module, data: FederatedData, queries) -> torch.Tensor:
    return torch.stack(
        [F.cross_entropy(functional_call(model, weights, (data.images[q],)), data.labels[q]) for q in queries]
    )


def temporary_model_by_hand(method, data: FederatedData) -> torch.Tensor:
    """FedAvg on support sets with a plain training loop: the support-size-weighted mean of local SGD results."""
    participants = method.sample(data, SEED, 0)
    total, weight = 0, 0
    for c in participants:
        model = tiny_model()
        support, _ = method.split(data.clients[c], SEED, 0, c)
        opt = torch.optim.SGD(model.parameters(), lr=method.lr)
        draws = generator(SEED, "batches", 0, c)
        for batch in iterate_batches(support, method.batch_size, draws, epochs=method.local_epochs):
            opt.zero_grad()
            F.cross_entropy(model(data.images[batch]), data.labels[batch]).backward()
            opt.step()
        total = total + support.numel() * torch.cat([p.detach().flatten() for p in model.parameters()])
        weight += support.numel()
    return total / weight


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_meta_step_matches_closed_form(gamma: float) -> None:
    phi_bar, method, sim = run_round(gamma=gamma, meta_lr=1e-12)  # a vanishing step leaves the temporary model
    phi_bar_by_hand = temporary_model_by_hand(method, sim.data)
    torch.testing.assert_close(phi_bar, phi_bar_by_hand, rtol=1e-5, atol=1e-6)

    zeta = 0.05
    after, method, sim = run_round(gamma=gamma, meta_lr=zeta)
    model = tiny_model()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    params = phi_bar.clone().requires_grad_(True)
    weights = dict(zip(names, torch.split(params, [s.numel() for s in shapes]), strict=True))
    weights = {n: w.view(s) for (n, w), s in zip(weights.items(), shapes, strict=True)}
    participants = method.sample(sim.data, SEED, 0)
    queries = method.query_sets(sim, SEED, 0, participants)
    losses = query_losses(weights, model, sim.data, queries)
    m = len(participants)

    # Closed form: sum_j [gamma + (1 - gamma) * 2/m * (L_j - mean L)] * g_j
    grads = [torch.autograd.grad(loss, params, retain_graph=True)[0] for loss in losses]
    coeffs = gamma + (1 - gamma) * 2 / m * (losses.detach() - losses.detach().mean())
    closed_form = sum(c * g for c, g in zip(coeffs, grads, strict=True))
    # Autograd of eq. 4 directly: gamma * sum(L) + (1 - gamma) * population variance
    meta_loss = gamma * losses.sum() + (1 - gamma) * losses.var(unbiased=False)
    autograd = torch.autograd.grad(meta_loss, params)[0]
    torch.testing.assert_close(closed_form, autograd, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(after, phi_bar - zeta * closed_form.detach(), rtol=1e-5, atol=1e-6)


def test_gamma_one_is_fedavg_then_sgd_on_summed_query_loss() -> None:
    phi_bar, method, sim = run_round(gamma=1.0, meta_lr=1e-12)
    after, _, _ = run_round(gamma=1.0, meta_lr=0.1)
    model = tiny_model()
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(phi_bar, model.parameters())
    participants = method.sample(sim.data, SEED, 0)
    queries = method.query_sets(sim, SEED, 0, participants)
    summed = sum(F.cross_entropy(model(sim.data.images[q]), sim.data.labels[q]) for q in queries)
    torch.optim.SGD(model.parameters(), lr=0.1).zero_grad()
    summed.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    torch.testing.assert_close(
        after, torch.nn.utils.parameters_to_vector(model.parameters()).detach(), rtol=1e-5, atol=1e-6
    )


def test_mean_reduction_divides_the_gamma_term_by_participants() -> None:
    phi_bar, _, _ = run_round(gamma=1.0, meta_lr=1e-12)
    summed, _, _ = run_round(gamma=1.0, meta_lr=0.3)
    mean, _, _ = run_round(gamma=1.0, meta_lr=0.9, reduction="mean")  # 0.9 / 3 participants = 0.3
    torch.testing.assert_close(mean - phi_bar, summed - phi_bar, rtol=1e-4, atol=1e-7)


def test_second_order_pulls_the_meta_gradient_through_local_steps() -> None:
    """With second_order, the step is J^T v summed over clients; check it against unrolled autograd."""
    phi_bar, method, sim = run_round(gamma=0.5, meta_lr=1e-12)
    first, _, _ = run_round(gamma=0.5, meta_lr=0.05)
    second, _, _ = run_round(gamma=0.5, meta_lr=0.05, second_order=True)
    v = (phi_bar - first) / 0.05  # the first-order meta-gradient at the temporary model
    start = torch.nn.utils.parameters_to_vector(tiny_model().parameters()).detach()
    participants = method.sample(sim.data, SEED, 0)

    def temporary(theta0: torch.Tensor) -> torch.Tensor:
        model = tiny_model()
        names = [n for n, _ in model.named_parameters()]
        shapes = [p.shape for p in model.parameters()]
        total, weight = 0, 0
        for c in participants:
            support, _ = method.split(sim.data.clients[c], SEED, 0, c)
            theta = theta0
            draws = generator(SEED, "batches", 0, c)
            for batch in iterate_batches(support, method.batch_size, draws, epochs=method.local_epochs):
                parts = [
                    p.view(s) for p, s in zip(torch.split(theta, [s.numel() for s in shapes]), shapes, strict=True)
                ]
                logits = functional_call(model, dict(zip(names, parts, strict=True)), (sim.data.images[batch],))
                loss = F.cross_entropy(logits, sim.data.labels[batch])
                theta = theta - method.lr * torch.autograd.grad(loss, theta, create_graph=True)[0]
            total = total + support.numel() * theta
            weight += support.numel()
        return total / weight

    _, expected = torch.autograd.functional.vjp(temporary, start, v)
    torch.testing.assert_close(second, phi_bar - 0.05 * expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(second, first)


def test_fit_with_own_module_and_client_tensors() -> None:
    from copre_hub.fl import CoPreFL

    model = tiny_model()
    before = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    history = CoPreFL(rounds=2, participants=2, local_epochs=1, batch_size=8).fit(model, tiny_federation(), seed=0)
    assert [h["round"] for h in history] == [1, 2]
    assert {"train_loss", "query_loss_mean", "query_loss_var", "meta_loss"} <= history[-1].keys()
    assert not torch.equal(before, torch.nn.utils.parameters_to_vector(model.parameters()))
