"""`model.init`: pre-training that starts from an existing checkpoint's backbone, recorded as the card's base_model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from copre_hub.cli import main
from copre_hub.hub.cards import base_model
from copre_hub.hub.checkpoint import WEIGHTS_NAME, sha256_file

SMOKE = Path(__file__).resolve().parents[1] / "training" / "recipes" / "smoke.toml"
FAST = ["--rounds", "1", "--participants", "2", "--set", "method.local_epochs=1"]


def test_pretraining_starts_from_model_init_and_records_it(data_dir, tiny_checkpoint, tmp_path) -> None:
    from copre_hub.fl.pretrain import initial_model
    from copre_hub.fl.recipe import load_recipe

    source, folder = tiny_checkpoint
    recipe = load_recipe(SMOKE, [f'model.init="{folder}"'])
    model, init = initial_model(recipe, num_classes=80, in_chans=3, img_size=32)
    assert init == {"id": str(folder), "sha256": sha256_file(folder / WEIGHTS_NAME)}
    theirs = source.state_dict()
    head = {name for name in theirs if name.startswith(source.default_cfg["classifier"])}
    for name, value in model.state_dict().items():
        if name not in head:
            assert torch.equal(value, theirs[name]), name
    assert model.get_classifier().out_features == 80

    out = tmp_path / "run"
    assert main(["pretrain", str(SMOKE), "-o", str(out), "-q", *FAST, "--set", f'model.init="{folder}"']) == 0
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    assert config["copre_hub"]["init"] == init
    card = (out / "checkpoint" / "README.md").read_text()
    assert f"| Starting weights | {folder} (sha256 {init['sha256'][:12]}...) |" in card
    assert "base_model" not in card.split("---")[1]  # a local folder is not a Hub repository


def test_model_init_of_another_architecture_is_refused(data_dir, tiny_checkpoint, tmp_path, capsys) -> None:
    _, folder = tiny_checkpoint
    args = ["--arch", "resnet10t", "--set", f'model.init="{folder}"']
    assert main(["pretrain", str(SMOKE), "-o", str(tmp_path / "run"), "-q", *FAST, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a test_resnet, but model.architecture is 'resnet10t'" in err


def test_base_model_names_hub_repositories_only(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("COPRE_HUB_ORG", raising=False)
    assert base_model({"id": "hf-hub:timm/resnet18.a1_in1k"}) == "timm/resnet18.a1_in1k"
    assert base_model({"id": "copreFL-resnet18-cifar100"}) == "copre-hub/copreFL-resnet18-cifar100"
    assert base_model({"id": "org/name@v1"}) == "org/name"
    assert base_model({"id": str(tmp_path)}) is None
    assert base_model(None) is None
