"""The baselines against hand-written reference loops, and every shipped recipe against the recipe schema."""

from __future__ import annotations

import contextlib
import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_meta_step import SEED, tiny_federation, tiny_model
from torch.nn import functional as F

from copre_hub.fl.methods import available, create_method
from copre_hub.fl.partition import FederatedData
from copre_hub.fl.recipe import load_recipe
from copre_hub.fl.seeding import generator
from copre_hub.fl.simulation import Simulation, iterate_batches

RECIPES = sorted((Path(__file__).resolve().parents[1] / "training" / "recipes").glob("*.toml"))


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach()


def local_sgd(
    data: FederatedData, indices: torch.Tensor, draws: torch.Generator, epochs: int, lr: float, batch_size: int
) -> torch.Tensor:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for batch in iterate_batches(indices, batch_size, draws, epochs=epochs):
        opt.zero_grad()
        F.cross_entropy(model(data.images[batch]), data.labels[batch]).backward()
        opt.step()
    return flat(model)


def run(name: str, data: FederatedData | None = None, **args) -> tuple[torch.Tensor, object, FederatedData]:
    data = data or tiny_federation()
    method = create_method(name, **{"rounds": 1, "participants": 3, "local_epochs": 2, "batch_size": 8, **args})
    model = tiny_model()
    method.fit(model, data, seed=SEED)
    return flat(model), method, data


def test_fedavg_is_the_size_weighted_mean_of_local_sgd() -> None:
    after, method, data = run("fedavg")
    clients = method.sample(data, SEED, 0)
    locals_ = [local_sgd(data, data.clients[c], generator(SEED, "batches", 0, c), 2, method.lr, 8) for c in clients]
    sizes = torch.tensor([float(data.clients[c].numel()) for c in clients])
    expected = sum(w * v for w, v in zip(sizes / sizes.sum(), locals_, strict=True))
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)


def test_qffl_with_q_zero_is_the_unweighted_mean() -> None:
    after, method, data = run("qffl", q=0.0)
    clients = method.sample(data, SEED, 0)
    locals_ = [local_sgd(data, data.clients[c], generator(SEED, "batches", 0, c), 2, method.lr, 8) for c in clients]
    torch.testing.assert_close(after, torch.stack(locals_).mean(0), rtol=1e-5, atol=1e-6)


def test_qffl_weighs_high_loss_clients_more() -> None:
    fair, _, _ = run("qffl", q=5.0)
    plain, _, _ = run("qffl", q=0.0)
    assert not torch.allclose(fair, plain)


def test_fedmeta_round_by_hand() -> None:
    """Chen et al.'s round, first order: each participant adapts on its support set from the round's start and
    sends the query gradient at its adapted weights; the server averages them (query-size weights) and steps."""
    data = tiny_federation()
    method = create_method("fedmeta", rounds=1, participants=3, local_epochs=2, batch_size=8, lr=0.1, meta_lr=0.05)
    model = tiny_model()
    method.fit(model, data, seed=SEED)

    start = flat(tiny_model())
    meta_grad, total = torch.zeros_like(start), 0
    for c in method.sample(data, SEED, 0):
        support, query = method.split(data.clients[c], SEED, 0, c)
        adapted = tiny_model()
        opt = torch.optim.SGD(adapted.parameters(), lr=0.1)
        for batch in iterate_batches(support, 8, generator(SEED, "batches", 0, c), epochs=2):
            opt.zero_grad()
            F.cross_entropy(adapted(data.images[batch]), data.labels[batch]).backward()
            opt.step()
        loss = F.cross_entropy(adapted(data.images[query]), data.labels[query])
        grads = torch.autograd.grad(loss, list(adapted.parameters()))
        meta_grad += query.numel() * torch.cat([g.flatten() for g in grads])
        total += query.numel()
    torch.testing.assert_close(flat(model), start - 0.05 * meta_grad / total, rtol=1e-5, atol=1e-6)


def test_scenario_two_refines_on_server_data() -> None:
    g = torch.Generator().manual_seed(5)
    clients = [(torch.randn(20, 3, 2, 2, generator=g), torch.randint(0, 3, (20,), generator=g)) for _ in range(4)]
    server = (torch.randn(30, 3, 2, 2, generator=g), torch.randint(0, 3, (30,), generator=g))
    data = FederatedData.from_tensors(clients, server=server, num_classes=3)
    plain, _, _ = run("fedavg", data=data)
    hybrid, _, _ = run("fedavg", data=data, scenario=2, server_steps=3, server_lr=0.1)
    model = tiny_model()
    torch.nn.utils.vector_to_parameters(plain.clone(), model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for batch in iterate_batches(data.server, 8, generator(SEED, "server", 0), steps=3):
        opt.zero_grad()
        F.cross_entropy(model(data.images[batch]), data.labels[batch]).backward()
        opt.step()
    torch.testing.assert_close(hybrid, flat(model), rtol=1e-5, atol=1e-6)


def test_centralized_is_sgd_on_pooled_data() -> None:
    after, method, data = run("centralized", batch_size=16)
    pooled = torch.cat(data.clients)
    expected = local_sgd(data, pooled, generator(SEED, "centralized", 0), 1, method.lr, 16)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["fedavg", "qffl", "fedmeta", "coprefl"])
def test_summing_two_clients_a_pass_gives_the_same_bits(name: str, monkeypatch) -> None:
    """On a CPU a round keeps the last client's weights and sums clients in pairs; the weights are those of
    summing one client at a time (an odd number of participants leaves one add for the reduce to settle)."""
    g = torch.Generator().manual_seed(5)
    clients = [(torch.randn(20, 3, 2, 2, generator=g), torch.randint(0, 3, (20,), generator=g)) for _ in range(5)]
    data = FederatedData.from_tensors(clients, num_classes=3)

    def final_weights() -> torch.Tensor:
        model = tiny_model()
        create_method(name, rounds=2, participants=3, local_epochs=1, batch_size=8).fit(model, data, seed=0)
        return flat(model)

    paired = final_weights()
    monkeypatch.setattr(Simulation, "client_loop", lambda self: contextlib.nullcontext())
    assert torch.equal(paired, final_weights())


@pytest.mark.parametrize("name", list(available()))
def test_every_method_changes_weights_and_reports_loss(name: str) -> None:
    g = torch.Generator().manual_seed(5)
    clients = [(torch.randn(20, 3, 2, 2, generator=g), torch.randint(0, 3, (20,), generator=g)) for _ in range(4)]
    server = (torch.randn(30, 3, 2, 2, generator=g), torch.randint(0, 3, (30,), generator=g))
    data = FederatedData.from_tensors(clients, server=server, num_classes=3)
    model = tiny_model()
    before = flat(model).clone()
    scenario = 2 if name == "coprefl-sgd" else 1
    history = create_method(name, rounds=2, participants=2, local_epochs=1, batch_size=8, scenario=scenario).fit(
        model, data, seed=0
    )
    assert len(history) == 2 and history[-1]["train_loss"] > 0
    assert not torch.equal(before, flat(model))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_are_valid(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem or path.stem == "smoke"
    assert recipe.build_method().name == recipe.method["name"]


def test_simulation_restores_weights_in_place_without_copies() -> None:
    """Outside a client loop, restoring copies into the same vector; inside one (on a CPU), it alternates between
    two vectors allocated once and leaves the replaced weights intact."""
    sim = Simulation(tiny_model(), tiny_federation())
    sim.snapshot()
    storage = sim.flat.vector.data_ptr()
    sim.train(sim.data.clients[0], lr=0.5, batch_size=8, generator=generator(0), epochs=1)
    sim.restore()
    assert torch.equal(sim.flat.vector, sim.start) and sim.flat.vector.data_ptr() == storage
    with sim.client_loop():
        sim.train(sim.data.clients[0], lr=0.5, batch_size=8, generator=generator(0), epochs=1)
        trained, kept = sim.flat.vector, sim.flat.vector.clone()
        assert not torch.equal(trained, sim.start)
        sim.restore()
        assert torch.equal(sim.flat.vector, sim.start)
        assert torch.equal(trained, kept), "the last client's weights survive the restore"
        vectors = {trained.data_ptr(), sim.flat.vector.data_ptr()}
        sim.restore()
        sim.restore()
    assert sim.flat.vector.data_ptr() in vectors and len(vectors) == 2, "two vectors, allocated once"
    start, end = sim.flat.vector.data_ptr(), sim.flat.vector.data_ptr() + 4 * sim.flat.vector.numel()
    assert all(start <= p.data_ptr() < end for p in sim.model.parameters()), "parameters are views of the vector"
    assert all(start <= b.data_ptr() < end for b in sim.model.buffers() if b.is_floating_point())
    assert not sim.keeps_last_client


@pytest.mark.parametrize("defer", [False, True], ids=["one-by-one", "deferred-in-pairs"])
@pytest.mark.parametrize("count", [1, 2, 3])
def test_accumulator_adds_float32_in_float64_exactly_as_one_cast(defer: bool, count: int) -> None:
    """The CPU path casts through a preallocated piece, two deferred adds in one pass; the sums are those of
    whole-vector float64 adds in the same order, whether the last add is paired or settled by a read."""
    from copre_hub.fl.aggregate import _PIECE, Accumulator

    values = [torch.randn(2 * _PIECE + 123, generator=generator(i)) for i in range(count)]
    acc = Accumulator({"w": values[0].numel(), "loss": 1}, torch.device("cpu"))
    expected = torch.zeros(values[0].numel(), dtype=torch.float64)
    for weight, value in zip((64.0, 17.0, 0.5), values, strict=False):
        acc.add_("w", value, weight=weight, defer=defer)
        acc.add_("loss", 1.0)
        expected.add_(value.double(), alpha=weight)
    assert torch.equal(acc["w"], expected) and acc.scalar("loss") == count
    acc.zero_().add_("w", values[0], defer=True)
    assert torch.equal(acc["w"], values[0].double()), "a read settles a deferred add made after zero_"
    acc.add_("w", values[0], defer=True)
    assert torch.equal(acc.zero_()["w"], torch.zeros_like(expected)), "zero_ drops a deferred add"


def test_scenario_two_edge_cases_are_refused_before_training() -> None:
    from copre_hub.errors import DataError

    g = torch.Generator().manual_seed(5)
    clients = [(torch.randn(20, 3, 2, 2, generator=g), torch.randint(0, 3, (20,), generator=g)) for _ in range(4)]
    small_server = (torch.randn(2, 3, 2, 2, generator=g), torch.randint(0, 3, (2,), generator=g))
    data = FederatedData.from_tensors(clients, server=small_server, num_classes=3)
    with pytest.raises(DataError, match="2 server samples into one query set per participant"):
        create_method("coprefl", scenario=2, participants=3).validate(data)
    no_server = FederatedData.from_tensors(clients, num_classes=3)
    with pytest.raises(DataError, match="Scenario II pools the server data too, but there is none"):
        create_method("centralized", scenario=2).validate(no_server)


THROWAWAY = """
from dataclasses import dataclass

from copre_hub.fl.methods.fedavg import FedAvg


@dataclass(frozen=True, kw_only=True)
class Throwaway(FedAvg):
    name = "throwaway"
    display_name = "Throw-Away"
"""


@contextlib.contextmanager
def method_file(folder: Path, module: str, source: str) -> Iterator[None]:
    """``source`` as the file ``module``.py of the methods package for the block (a folder added to its path);
    afterwards every reference the imports made is dropped, so discovery no longer sees the class."""
    import copre_hub.fl
    from copre_hub.fl import methods

    (folder / f"{module}.py").write_text(source)
    path = methods.__path__
    methods.__path__ = [*path, str(folder)]
    try:
        yield
    finally:
        methods.__path__ = path
        sys.modules.pop(f"{methods.__name__}.{module}", None)
        vars(methods).pop(module, None)  # the import made the module an attribute of its package
        vars(copre_hub.fl).pop("Throwaway", None)  # and copre_hub.fl's lazy export may have cached the class
        gc.collect()


def test_a_new_method_is_one_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import copre_hub.fl
    from copre_hub.cli import main
    from copre_hub.fl.pretrain import Prepared, checkpoint_meta
    from copre_hub.hub.cards import build_model_card

    with method_file(tmp_path, "throwaway", THROWAWAY):
        method = create_method("throwaway", rounds=1)
        assert type(method).__module__ == "copre_hub.fl.methods.throwaway"
        assert copre_hub.fl.Throwaway is type(method) is available()["throwaway"]
        assert "Throwaway" in copre_hub.fl.__all__
        with pytest.raises(SystemExit):
            main(["pretrain", "--help"])
        assert "throwaway" in capsys.readouterr().out
        data = FederatedData.from_tensors([(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]))], num_classes=2)
        prepared = Prepared(load_recipe(RECIPES[0]), method, data, tiny_model(), ((0,), (1,)), ["a", "b"], (1, 2, 2))
        meta = checkpoint_meta(prepared, versions={}, final_metrics={})
        del method, prepared
    assert meta["method"] == "throwaway" and meta["method_display"] == "Throw-Away"
    card = build_model_card({"architecture": "test_resnet", "copre_hub": meta})
    assert "A Throw-Away pre-trained initialization" in card.text
    assert "throwaway" not in available()


def test_methods_have_display_names_and_unique_names(tmp_path: Path) -> None:
    from copre_hub.hub.cards import METHOD_NAMES

    shown = {name: cls.display_name for name, cls in available().items()}
    assert shown["qffl"] == "q-FFL" and shown["coprefl-sgd"] == "CoPreFL-SGD"
    assert {name: METHOD_NAMES[name] for name in shown} == shown  # the cards' fallback for blocks without one
    second_fedavg = THROWAWAY.replace('"throwaway"', '"fedavg"')
    with method_file(tmp_path, "second_fedavg", second_fedavg), pytest.raises(TypeError, match="named 'fedavg'"):
        available()
    assert available()["fedavg"].__module__ == "copre_hub.fl.methods.fedavg"


def test_building_the_cli_imports_no_method() -> None:
    """Method discovery imports torch, so the --method help and copre_hub.fl's exports look only when asked."""
    script = "import sys; from copre_hub.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=root)
    assert run.stdout.strip() == "False"
