"""Every script in examples/ runs as a user would run it (its main() with command-line arguments), at tiny scale."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import timm
import torch
from safetensors.torch import load_file

import copre_hub
from copre_hub.hub.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
TESTED = {"fedavg_pytorch", "export_state_dict", "retrain_and_push"}  # the Flower Apps: tests/test_flower_apps.py
TASK_CLASSES = 5  # the examples' downstream task: CIFAR-100 classes 80-84


def example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def backbone(state: dict[str, torch.Tensor], head: str = "fc.") -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in state.items() if not name.startswith(head)}


def test_every_example_has_a_test() -> None:
    assert {path.stem for path in EXAMPLES.glob("*.py")} == TESTED


# -- plain PyTorch FedAvg ---------------------------------------------------------------------------------------------


def test_fedavg_pytorch_runs_a_federation_from_a_checkpoint(data_dir, tiny_checkpoint, capsys) -> None:
    _, folder = tiny_checkpoint
    accuracies = example("fedavg_pytorch").main(
        ["--model", str(folder), "--data-dir", str(data_dir), "--clients", "2", "--rounds", "1"]
    )
    assert len(accuracies) == 2 and all(0.0 <= a <= 100.0 for a in accuracies)
    assert "lowest 10%" in capsys.readouterr().out


# -- export for NVFlare / FL-bench ------------------------------------------------------------------------------------


def test_export_writes_a_torch_loadable_timm_state_dict(tiny_checkpoint, tmp_path, capsys) -> None:
    _, folder = tiny_checkpoint
    path = example("export_state_dict").main([str(folder), "--num-classes", "5", "-o", str(tmp_path / "init.pt")])
    state = torch.load(path, weights_only=True)
    model = timm.create_model("test_resnet", num_classes=5)
    model.load_state_dict(state)  # strict: every name and shape fits
    stored = load_file(folder / "model.safetensors")
    assert all(torch.equal(state[name], stored[name]) for name in backbone(stored))
    printed = capsys.readouterr().out
    assert f'source_ckpt_file_full_name="{path.resolve()}"' in printed
    assert 'model = timm.create_model("test_resnet", num_classes=5)' in printed


def test_export_for_flbench_uses_its_resnet_parameter_names(tmp_path, capsys) -> None:
    import torchvision

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=7)
    folder = save_checkpoint(
        model,
        tmp_path / "resnet18",
        architecture="resnet18",
        model_args={},
        num_classes=7,
        input_size=(3, 32, 32),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        copre_hub_meta={"model_id": "resnet18-test"},
    )
    path = example("export_state_dict").main([str(folder), "--layout", "flbench", "-o", str(tmp_path / "r18.pt")])
    state = torch.load(path, weights_only=True)
    # FL-bench's res18: base = torchvision resnet18 (fc replaced by Identity), classifier = its own Linear
    expected = {f"base.{name}": p.shape for name, p in torchvision.models.resnet18().named_parameters()}
    assert {name: tensor.shape for name, tensor in state.items()} == backbone(expected, "base.fc.")
    assert torch.equal(state["base.conv1.weight"], model.conv1.weight)
    assert "common.model=res18" in capsys.readouterr().out


def test_export_for_flbench_refuses_an_architecture_it_does_not_have(tiny_checkpoint, tmp_path) -> None:
    _, folder = tiny_checkpoint
    with pytest.raises(SystemExit, match="no FL-bench counterpart"):
        example("export_state_dict").main([str(folder), "--layout", "flbench", "-o", str(tmp_path / "x.pt")])


# -- retrain and push -------------------------------------------------------------------------------------------------


def test_retrain_and_push_publishes_the_run_with_its_results(data_dir, hub_server, tmp_path) -> None:
    tiny = [
        "method.rounds=1",
        "method.participants=2",
        "partition.num_clients=10",
        f"data.pretrain_classes={list(range(10))}",
    ]
    commit = example("retrain_and_push").main(
        [
            str(REPO / "training/recipes/smoke.toml"),
            "org/retrained",
            "-o",
            str(tmp_path),
            "--tasks",
            "1",
            "--rounds",
            "1",
            "-q",
        ]
        + [arg for item in tiny for arg in ("--set", item)]
        + ["--tag", "v1"]
    )
    details = copre_hub.info("org/retrained@v1")
    assert details.commit == commit
    assert details.config["copre_hub"]["method"] == "coprefl"
    assert any(result["metric"] == "accuracy" for result in details.eval_results)
    assert (tmp_path / "evaluation" / "results.json").is_file()
