"""The two architectures copre-hub registers with timm.

* ``femnist_cnn``: the paper's FEMNIST model, "two 3x3 convolutional layers followed by two linear layers". The
  paper gives no widths; ours are 32 and 64 channels (each conv + ReLU + 2x2 max-pool) and a 512-unit hidden layer.
* ``resnet18_cifar``: timm's resnet18 with the usual CIFAR stem (one 3x3 stride-1 conv, no max-pool), 16x the
  FLOPs of the default stem at 32x32.

Both are registered with ``timm.models.register_model`` when this module is imported, so checkpoints of them load
through ``timm.create_model`` once it is imported (``copre_hub.load`` and the engine do; ``import copre_hub.fl.models``
does too). It sits at the package's top level because both the hub (loading, saving) and the engine (training)
need it, and the hub imports nothing from the engine.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import get_norm_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn


class FemnistCNN(nn.Module):
    """Two 3x3 conv layers and two linear layers (see the module docstring for the widths)."""

    def __init__(
        self,
        num_classes: int = 62,
        in_chans: int = 1,
        img_size: int = 28,
        widths: tuple[int, int] = (32, 64),
        hidden: int = 512,
        norm_layer: str | None = None,
        **_: Any,
    ) -> None:
        super().__init__()
        norm = get_norm_layer(norm_layer) if norm_layer else None
        layers: list[nn.Module] = []
        channels = in_chans
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1)]
            layers += [norm(width)] if norm else []
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.num_features = channels * (img_size // 4) ** 2
        self.fc1 = nn.Linear(self.num_features, hidden)
        self.fc = nn.Linear(hidden, num_classes) if num_classes else nn.Identity()
        self.num_classes = num_classes

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, **_: Any) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.fc1.out_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)  # [B, C * H/4 * W/4]
        return self.fc(torch.relu(self.fc1(x)))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {"crop_pct": 1.0, "license": "apache-2.0", "classifier": "fc", **kwargs}


# timm's registry reads a module's ``default_cfgs`` when ``register_model`` files its functions.
default_cfgs = generate_default_cfgs(
    {
        "femnist_cnn": _cfg(num_classes=62, input_size=(1, 28, 28), mean=(0.5,), std=(0.5,), first_conv="features.0"),
        "resnet18_cifar": _cfg(
            num_classes=100,
            input_size=(3, 32, 32),
            mean=(0.5071, 0.4865, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            first_conv="conv1",
        ),
    }
)


@register_model
def femnist_cnn(pretrained: bool = False, **kwargs: Any) -> FemnistCNN:
    """The FEMNIST CNN of CoPreFL (two 3x3 convs, two linear layers)."""
    return build_model_with_cfg(FemnistCNN, "femnist_cnn", pretrained, **kwargs)


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-18 with a CIFAR stem: 3x3 stride-1 first conv, no max-pool."""
    from timm.models.resnet import BasicBlock, ResNet

    def build(**args: Any) -> ResNet:
        model = ResNet(block=BasicBlock, layers=(2, 2, 2, 2), **args)
        model.conv1 = nn.Conv2d(args.get("in_chans", 3), 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        return model

    return build_model_with_cfg(build, "resnet18_cifar", pretrained, **kwargs)
