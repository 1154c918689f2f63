"""A method run through Flower's own simulation runtime ends with the engine's weights (same seed, clients, data).

Each test runs the engine in this process, then the same job through ``flwr.simulation.run_simulation``: the
server is :class:`copre_hub.flower.PreTraining`, every node a ``pretraining_client_app`` holding only its own
client's samples, in Ray actors of their own. Tiny sizes: a timm ``test_resnet`` at 16x16, 4 clients of 20 samples.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr.simulation", reason="needs flwr: pip install 'copre-hub[flower]'")
pytest.importorskip("ray", reason="Flower's simulation runtime needs ray: pip install 'flwr[simulation]'")

from copre_hub.fl.methods import create_method
from copre_hub.fl.partition import FederatedData

SEED = 3
CLIENTS = 4
CLASSES = 5
ARCH = "test_resnet"


@pytest.fixture(autouse=True)
def one_thread():
    """Ray's actors run one torch thread each; the engine here runs one too, so both reduce in the same order (with
    two threads the float32 sums of a convolution's gradient differ in the last bits, and a test alone failed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def federation(server: bool) -> FederatedData:
    """4 clients of 20 random 16x16 images (uint8, normalised per batch as real data is) and 16 server images."""
    g = torch.Generator().manual_seed(0)

    def part(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
        return images, torch.randint(0, CLASSES, (n,), generator=g)

    clients = [part(20) for _ in range(CLIENTS)]
    return FederatedData.from_tensors(
        clients, server=part(16) if server else None, num_classes=CLASSES, mean=(0.5,) * 3, std=(0.25,) * 3
    )


def initial_model() -> torch.nn.Module:
    import timm

    torch.manual_seed(1)
    return timm.create_model(ARCH, num_classes=CLASSES)


def engine_run(method, data: FederatedData) -> dict[str, torch.Tensor]:
    model = initial_model()
    method.fit(model, data, seed=SEED)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def flower_run(method, data: FederatedData) -> dict:
    """The same job under Flower's simulation runtime; returns the final state and the strategy's history."""
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from copre_hub.flower import LocalData, PreTraining, pretraining_client_app

    out: dict = {}
    server_app = ServerApp()

    @server_app.main()
    def _(grid, context) -> None:
        strategy = PreTraining(
            method,
            initial_model(),
            architecture=ARCH,
            num_clients=CLIENTS,
            seed=SEED,
            server_data=LocalData.from_federation(data, data.server) if data.server is not None else None,
        )
        result = strategy.start(grid=grid, initial_arrays=strategy.initial_arrays(), num_rounds=method.rounds)
        out["state"] = result.arrays.to_torch_state_dict()
        out["history"] = strategy.history

    def own_data(context) -> LocalData:  # each node keeps its own client's samples only
        return LocalData.from_federation(data, data.clients[int(context.node_config["partition-id"])])

    run_simulation(
        server_app=server_app,
        client_app=pretraining_client_app(own_data),
        num_supernodes=CLIENTS,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"include_dashboard": False, "log_to_driver": False},
        },
    )
    assert "state" in out, "the ServerApp did not finish; see the Flower log above"
    return out


def assert_same_weights(engine: dict[str, torch.Tensor], flower: dict[str, torch.Tensor], start) -> None:
    floats = [name for name, tensor in engine.items() if tensor.is_floating_point()]
    assert set(floats) <= set(flower)
    moved = max(float((engine[n] - start[n]).abs().max()) for n in floats)
    assert moved > 1e-4  # the run changed the weights, so equality below means something
    for name in floats:
        torch.testing.assert_close(flower[name], engine[name], rtol=1e-5, atol=1e-6, msg=name)


SETTINGS = dict(rounds=2, participants=2, local_steps=2, batch_size=8, lr=0.05)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("coprefl", {"scenario": 1, "gamma": 0.5, "meta_lr": 0.05}),  # queries on the clients: two message phases
        ("coprefl", {"scenario": 2, "gamma": 0.75, "meta_lr": 0.05}),  # queries on the server's own data
    ],
    ids=["coprefl-scenario1", "coprefl-scenario2"],
)
def test_coprefl_under_flower_ends_with_the_engines_weights(name: str, params: dict) -> None:
    method = create_method(name, **SETTINGS, **params)
    data = federation(server=method.scenario == 2)
    flower = flower_run(method, data)
    assert_same_weights(engine_run(method, data), flower["state"], initial_model().state_dict())
    assert [row["round"] for row in flower["history"]] == [1, 2]
    assert all("query_loss_mean" in row for row in flower["history"])


@pytest.mark.parametrize(
    ("name", "params"),
    [
        pytest.param("fedavg", {"scenario": 2, "server_steps": 2, "server_lr": 0.05}, marks=pytest.mark.slow),
        ("fedmeta", {"meta_lr": 0.05}),  # in the default suite: its clients send a meta-gradient with the weights
        pytest.param("qffl", {"q": 1.0}, marks=pytest.mark.slow),
    ],
)
def test_baselines_under_flower_end_with_the_engines_weights(name: str, params: dict) -> None:
    method = create_method(name, **SETTINGS, **params)
    data = federation(server=method.scenario == 2)
    flower = flower_run(method, data)
    assert_same_weights(engine_run(method, data), flower["state"], initial_model().state_dict())
