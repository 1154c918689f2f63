"""copre_hub.save: a Flower run's final arrays (a state dict) become a checkpoint folder that loads and pushes."""

from __future__ import annotations

import json

import pytest
import timm
import torch

import copre_hub
from copre_hub.errors import CheckpointError


def downstream_state(seed: int = 5, num_classes: int = 3) -> dict[str, torch.Tensor]:
    """What a downstream run ends with: the tiny checkpoint's architecture, trained weights, a 3-way head."""
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", num_classes=num_classes).state_dict()


def test_save_writes_a_state_dict_as_a_checkpoint_shaped_like_its_initialization(tiny_checkpoint, tmp_path) -> None:
    _, init = tiny_checkpoint
    state = downstream_state()
    folder = copre_hub.save(state, tmp_path / "final", like=init, meta={"model_id": "flower-downstream"})

    config = json.loads((folder / "config.json").read_text())
    assert config["num_classes"] == 3 and config["architecture"] == "test_resnet"
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    block = config["copre_hub"]
    assert block["derived_from"] == str(init) and block["model_id"] == "flower-downstream"
    assert block["method"] == "coprefl"  # inherited from the initialization's block
    assert (folder / "README.md").read_text().startswith("---")
    model = copre_hub.load(folder)  # verified (sha256) and loaded with its own 3-way head
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in state.items())


def test_save_takes_a_config_mapping_and_a_model(tiny_checkpoint, tmp_path) -> None:
    model, init = tiny_checkpoint
    config = json.loads((init / "config.json").read_text())
    folder = copre_hub.save(model, tmp_path / "same", like=config, meta={"model_id": "again"})
    again = json.loads((folder / "config.json").read_text())
    assert again["num_classes"] == 7
    assert "derived_from" not in again["copre_hub"]
    assert torch.equal(copre_hub.load(folder).fc.weight, model.fc.weight)


def test_save_refuses_weights_of_another_architecture(tiny_checkpoint, tmp_path) -> None:
    _, init = tiny_checkpoint
    torch.manual_seed(0)
    other = timm.create_model("resnet10t", num_classes=3).state_dict()
    with pytest.raises(CheckpointError, match="do not fit architecture 'test_resnet'"):
        copre_hub.save(other, tmp_path / "bad", like=init)
    assert not (tmp_path / "bad").exists()


def test_a_saved_folder_is_ready_for_push(tiny_checkpoint, hub_server, tmp_path) -> None:
    _, init = tiny_checkpoint
    folder = copre_hub.save(downstream_state(), tmp_path / "final", like=init, meta={"model_id": "pushed"})
    copre_hub.push(folder, "org/flower-final")
    pulled = copre_hub.load("org/flower-final")
    assert pulled.fc.weight.shape[0] == 3
