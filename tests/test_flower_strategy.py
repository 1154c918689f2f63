"""copre_hub.flower without a runtime: what the strategy refuses, the job a message carries, a node's view."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr", reason="needs flwr: pip install 'copre-hub[flower]'")

from copre_hub.errors import ConfigError
from copre_hub.fl.methods import create_method
from copre_hub.flower import Job, LocalData, PreTraining


def tiny_model() -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=3)


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("centralized", {}, "does not run under Flower"),
        ("coprefl-sgd", {"scenario": 2}, "does not run under Flower"),
        ("coprefl", {"second_order": True}, "second_order"),
        ("coprefl", {"participants": 5}, "exceeds the 4 clients"),
        ("coprefl", {"scenario": 2}, "Scenario II needs the server's own data"),
    ],
)
def test_the_strategy_refuses_what_flower_cannot_run_before_any_node_is_contacted(name, params, match) -> None:
    method = create_method(name, **{"participants": 2, **params})
    with pytest.raises(ConfigError, match=match):
        PreTraining(method, tiny_model(), architecture="test_resnet", num_clients=4)


def test_a_job_survives_its_config_record() -> None:
    method = create_method("qffl", rounds=3, participants=2, local_steps=4, lr=0.05, q=2.0)
    job = Job(method, {"architecture": "test_resnet", "model_args": {}, "num_classes": 3}, 7, 2, 4, augment=True)
    config = job.to_config()
    assert config["server-round"] == 3  # Flower counts rounds from 1, the engine from 0
    assert Job.from_config(config) == job


def test_a_node_sees_a_federation_where_only_its_client_has_data() -> None:
    local = LocalData(torch.zeros(5, 3, 4, 4, dtype=torch.uint8), torch.arange(5) % 3, (0.5,) * 3, (0.5,) * 3)
    view = local.as_client(2, 4, num_classes=3)
    assert view.client_sizes == [0, 0, 5, 0] and view.server is None
    assert local.as_server(4, num_classes=3).server.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match=r"partition-id 4 is outside the federation.s clients 0\.\.3"):
        local.as_client(4, 4, num_classes=3)
