"""The checkpoint folder: timm-valid config, safetensors weights, atomic writes, verification before any load."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from timm.models import PretrainedCfg

from copre_hub import __version__
from copre_hub.errors import CheckpointError, ConfigError, IntegrityError, OutputError
from copre_hub.hub.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    sha256_file,
    update_metadata,
    verify_checkpoint,
)


def same_weights(a: torch.nn.Module, b: torch.nn.Module, skip: str = "\0") -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    keys = [key for key in sa if not key.startswith(skip)]
    return all(torch.equal(sa[key], sb[key]) for key in keys)


def test_config_is_timm_valid_and_carries_our_block(tiny_checkpoint) -> None:
    model, folder = tiny_checkpoint
    assert sorted(path.name for path in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 7
    assert config["num_features"] == model.num_features and config["global_pool"] == "avg"
    cfg = config["pretrained_cfg"]
    assert set(cfg) <= {field.name for field in dataclasses.fields(PretrainedCfg)}
    assert (cfg["first_conv"], cfg["classifier"]) == ("conv1.0", "fc")  # from the model, not ImageNet defaults
    assert cfg["input_size"] == [3, 32, 32] and cfg["mean"] == [0.5] * 3 and cfg["paper_ids"] == "arXiv:2402.02225"
    block = config["copre_hub"]
    assert block["method"] == "coprefl" and block["copre_hub_version"] == __version__
    assert block["sha256"] == sha256_file(folder / "model.safetensors")
    assert (folder / "README.md").read_text().startswith("---\n")


def test_plain_timm_loads_the_folder(tiny_checkpoint) -> None:
    model, folder = tiny_checkpoint
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert same_weights(model, loaded)
    assert tuple(loaded.pretrained_cfg["input_size"]) == (3, 32, 32)


def test_load_keeps_backbone_and_gives_a_fresh_head(tiny_checkpoint) -> None:
    model, folder = tiny_checkpoint
    same = load_checkpoint(folder)
    assert same_weights(model, same)
    five = load_checkpoint(folder, num_classes=5)
    assert five.get_classifier().out_features == 5
    assert same_weights(model, five, skip="fc.")


def test_shared_and_noncontiguous_tensors_are_stored_per_name(tmp_path: Path) -> None:
    model = timm.create_model("test_resnet", num_classes=3)
    model.layer1[0].conv2.weight = model.layer1[0].conv1.weight  # tied: one storage, two names
    model.fc.weight = torch.nn.Parameter(model.fc.weight.detach().t().contiguous().t())  # non-contiguous
    folder = save_checkpoint(
        model,
        tmp_path / "tied",
        architecture="test_resnet",
        model_args={},
        num_classes=3,
        input_size=(3, 32, 32),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        copre_hub_meta={},
    )
    stored = safetensors.torch.load_file(folder / "model.safetensors")
    assert torch.equal(stored["layer1.0.conv1.weight"], stored["layer1.0.conv2.weight"])
    assert same_weights(model, load_checkpoint(folder))


def test_saving_over_a_folder_replaces_the_checkpoint_and_keeps_other_files(tmp_path: Path, make_checkpoint) -> None:
    folder = tmp_path / "run"
    make_checkpoint(folder, seed=0)
    (folder / "run_record.json").write_text("{}")
    second, _ = make_checkpoint(folder, seed=1)
    assert same_weights(second, load_checkpoint(folder))
    assert (folder / "run_record.json").exists()
    assert [path.name for path in tmp_path.iterdir()] == ["run"]  # no staging folder left behind


def test_a_metadata_update_rewrites_only_the_config_and_the_card(tiny_checkpoint) -> None:
    _, folder = tiny_checkpoint
    weights = folder / "model.safetensors"
    before = (weights.read_bytes(), weights.stat().st_mtime_ns, weights.stat().st_ino)
    old = verify_checkpoint(folder)
    block = {**old["copre_hub"], "model_id": "renamed", "sha256": "forged", "note": "kept"}
    assert update_metadata(folder, block) == folder
    assert (weights.read_bytes(), weights.stat().st_mtime_ns, weights.stat().st_ino) == before
    config = verify_checkpoint(folder)  # still sound: the recorded sha256 is the weights', not the one passed
    assert config["copre_hub"] == {**block, "sha256": old["copre_hub"]["sha256"], "copre_hub_version": __version__}
    assert config["pretrained_cfg"]["tag"] == "renamed" and "renamed" in (folder / "README.md").read_text()
    assert {key: value for key, value in config.items() if key != "copre_hub"} == {
        **{key: value for key, value in old.items() if key != "copre_hub"},
        "pretrained_cfg": {**old["pretrained_cfg"], "tag": "renamed"},
    }
    assert sorted(path.name for path in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_a_crash_while_saving_leaves_the_previous_checkpoint_whole(
    tmp_path: Path, make_checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, folder = make_checkpoint(tmp_path / "run", seed=0)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}

    def dies_halfway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", dies_halfway)
    with pytest.raises(OutputError, match="No space left"):
        make_checkpoint(folder, seed=1)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["run"]
    assert same_weights(model, load_checkpoint(folder))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": "not_a_timm_model"}, "not a timm model"),
        ({"num_classes": 9}, "head has 7 classes"),
        ({"label_names": ["a", "b"]}, "2 label names for 7 classes"),
        ({"mean": (0.5,)}, "one mean and one std per channel"),
        ({"model_args": {"act": object()}}, "JSON-serialisable"),
    ],
)
def test_save_refuses_inconsistent_arguments(tmp_path: Path, change: dict, message: str) -> None:
    args = {
        "architecture": "test_resnet",
        "model_args": {},
        "num_classes": 7,
        "input_size": (3, 32, 32),
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
        "copre_hub_meta": {},
        **change,
    }
    with pytest.raises(ConfigError, match=message):
        save_checkpoint(timm.create_model("test_resnet", num_classes=7), tmp_path / "bad", **args)
    assert not (tmp_path / "bad").exists()


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (lambda f: (f / "model.safetensors").unlink(), CheckpointError, "has no model.safetensors"),
        (
            lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin"),
            CheckpointError,
            "only pickle weights .pytorch_model.bin.*never unpickles",
        ),
        (lambda f: (f / "config.json").unlink(), CheckpointError, "has no config.json"),
        (lambda f: (f / "config.json").write_text("{not json"), CheckpointError, "not valid JSON"),
        (
            lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-8] + b"\0" * 8),
            IntegrityError,
            "sha256 .* differs from .* recorded in config.json",
        ),
        (
            lambda f: _edit_config(f, lambda c: c["copre_hub"].pop("sha256")),
            CheckpointError,
            "records no sha256",
        ),
        (
            lambda f: _edit_config(f, lambda c: c.update(architecture="resnet18")),
            CheckpointError,
            "does not fit architecture 'resnet18'",
        ),
        (
            lambda f: _edit_config(f, lambda c: c.update(architecture="no_such_net")),
            CheckpointError,
            "unknown to timm",
        ),
        (
            lambda f: _edit_config(f, lambda c: c["pretrained_cfg"].update(run_id=3)),
            CheckpointError,
            "keys timm does not know .run_id.",
        ),
    ],
    ids=[
        "missing-weights",
        "pickle-only",
        "missing-config",
        "bad-json",
        "corrupted-weights",
        "no-recorded-hash",
        "other-architecture",
        "unknown-architecture",
        "unknown-cfg-key",
    ],
)
def test_damaged_folders_are_refused_before_loading(tiny_checkpoint, damage, error, message) -> None:
    _, folder = tiny_checkpoint
    damage(folder)
    with pytest.raises(error, match=message):
        load_checkpoint(folder)


def test_another_architecture_is_refused_even_with_a_new_head(tiny_checkpoint) -> None:
    _, folder = tiny_checkpoint  # timm loads non-strictly when the head changes: our own key check must catch it
    _edit_config(folder, lambda c: c.update(architecture="resnet18"))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(folder, num_classes=3)


def test_verify_accepts_a_plain_timm_export_without_our_block(tmp_path: Path) -> None:
    model = timm.create_model("test_resnet", num_classes=4)
    timm.models.save_for_hf(model, tmp_path / "plain", safe_serialization=True)  # no copre_hub block
    config = verify_checkpoint(tmp_path / "plain")
    assert "copre_hub" not in config


@pytest.mark.parametrize(
    ("architecture", "model_args", "input_size"),
    [("femnist_cnn", {"in_chans": 1, "img_size": 28}, (1, 28, 28)), ("resnet18_cifar", {}, (3, 32, 32))],
)
def test_copre_hub_registered_architectures_round_trip(tmp_path: Path, architecture, model_args, input_size) -> None:
    importlib.import_module("copre_hub.fl.models")  # registers them with timm, as load() does
    model = timm.create_model(architecture, num_classes=6, **model_args)
    channels = input_size[0]
    folder = save_checkpoint(
        model,
        tmp_path / architecture,
        architecture=architecture,
        model_args=model_args,
        num_classes=6,
        input_size=input_size,
        mean=(0.5,) * channels,
        std=(0.5,) * channels,
        copre_hub_meta={},
    )
    assert same_weights(model, load_checkpoint(folder))
    fresh = load_checkpoint(folder, num_classes=5)
    assert fresh.get_classifier().out_features == 5 and same_weights(model, fresh, skip="fc.")
