"""Export an initialization as a ``.pt`` state dict that ``torch.load`` reads, for NVFlare, FL-bench and the like.

    python examples/export_state_dict.py copreFL-resnet18-cifar100 --num-classes 10 -o copreFL-resnet18.pt
    python examples/export_state_dict.py copreFL-resnet18-cifar100 --layout flbench -o FL-bench/copreFL-res18.pt

copre-hub itself never writes pickles (checkpoints are safetensors); frameworks that take a ``.pt`` file get one
here, holding tensors only, so ``torch.load(path, weights_only=True)`` reads it. After writing it, the script prints
the lines that use it:

* ``--layout timm`` (default): the whole timm state dict of ``copre_hub.load(model, num_classes=k)``, i.e. the
  pre-trained backbone and a fresh k-way head; load it into ``timm.create_model(architecture, num_classes=k)``.
  NVFlare takes it through ``PTFileModelPersistor(source_ckpt_file_full_name=...)``.
* ``--layout flbench``: FL-bench's ``DecoupledModel`` naming for its torchvision ResNets (``base.`` + the backbone's
  parameters; FL-bench keeps its own ``classifier`` for the dataset), read through
  ``common.external_model_params_file``. timm's ResNets use torchvision's parameter names, so only the prefix changes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

import copre_hub

# timm architectures whose parameters match FL-bench's torchvision-based models, and FL-bench's names for them.
FLBENCH_MODELS = {"resnet18": "res18", "resnet34": "res34", "resnet50": "res50", "resnet101": "res101"}


def timm_state_dict(model_id: str, num_classes: int) -> dict[str, torch.Tensor]:
    """The initialization's timm state dict, with a fresh head when ``num_classes`` differs from the checkpoint's."""
    return dict(copre_hub.load(model_id, num_classes=num_classes).state_dict())


def flbench_state_dict(model_id: str) -> dict[str, torch.Tensor]:
    """The backbone's parameters under FL-bench's names: ``base.<name>``, without the classifier."""
    model = copre_hub.load(model_id)
    head = f"{model.pretrained_cfg['classifier']}."
    return {f"base.{name}": p for name, p in model.named_parameters() if not name.startswith(head)}


def save(state_dict: dict[str, torch.Tensor], output: Path) -> Path:
    """``torch.save`` of plain CPU tensors (contiguous, no shared storage), loadable with ``weights_only=True``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({name: tensor.detach().cpu().contiguous().clone() for name, tensor in state_dict.items()}, output)
    return output


def nvflare_lines(path: Path, architecture: str, model_args: str) -> str:
    return f"""NVFlare: the server's persistor starts the job from the file (the model must be the same architecture):

    import timm
    from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor

    model = timm.create_model("{architecture}", {model_args})
    persistor = PTFileModelPersistor(model=model, source_ckpt_file_full_name="{path.resolve()}")
    # recipe API (NVFlare >= 2.7): FedAvgRecipe(..., initial_model=model, model_persistor=persistor)
    # clients train the same model: timm.create_model("{architecture}", {model_args})

Plain PyTorch: model.load_state_dict(torch.load("{path}", weights_only=True))"""


def flbench_lines(path: Path, flbench_model: str) -> str:
    return f"""FL-bench: copy the file into the FL-bench folder (the path is relative to it), then

    python main.py method=fedavg common.dataset=cifar100 common.model={flbench_model} \\
        common.external_model_params_file={path.name}

FL-bench's {flbench_model} keeps its own classifier for the dataset; the backbone's parameters come from the file."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model id or checkpoint folder")
    parser.add_argument("-o", "--output", type=Path, help="the .pt file (default: <model name>.pt)")
    parser.add_argument("--num-classes", type=int, help="classes of the downstream task (default: the checkpoint's)")
    parser.add_argument("--layout", choices=["timm", "flbench"], default="timm", help="parameter names to write")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    """Write the ``.pt`` file, print how to use it, and return its path."""
    args = parse_args(argv)
    config = copre_hub.info(args.model).config  # pulls the checkpoint when it is not local yet
    architecture = config["architecture"]
    output = args.output or Path(f"{Path(args.model).name}.pt")
    if args.layout == "flbench":
        if architecture not in FLBENCH_MODELS:
            raise SystemExit(
                f"{architecture} has no FL-bench counterpart; --layout flbench takes {list(FLBENCH_MODELS)}."
            )
        state_dict = flbench_state_dict(args.model)
        usage = flbench_lines(output, FLBENCH_MODELS[architecture])
    else:
        num_classes = args.num_classes or config["num_classes"]
        state_dict = timm_state_dict(args.model, num_classes)
        arguments = {"num_classes": num_classes, **(config.get("model_args") or {})}
        usage = nvflare_lines(output, architecture, ", ".join(f"{k}={v!r}" for k, v in arguments.items()))
    save(state_dict, output)
    print(f"wrote {output} ({len(state_dict)} tensors)\n\n{usage}")
    return output


if __name__ == "__main__":
    main()
