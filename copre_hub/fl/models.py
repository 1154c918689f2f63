"""Models by timm name: a recipe's ``[model]`` table and the model it builds.

Importing this module registers copre-hub's own architectures (``femnist_cnn``, ``resnet18_cifar``, defined in
:mod:`copre_hub.timm_models`) with timm, so ``import copre_hub.fl.models`` is enough to build or load them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import timm
from torch import nn

import copre_hub.timm_models  # noqa: F401 - registers femnist_cnn and resnet18_cifar with timm
from copre_hub.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    """The ``[model]`` table of a recipe.

    Attributes:
        architecture: any name of ``timm.list_models()`` (including ``femnist_cnn`` and ``resnet18_cifar``).
        norm_layer: optional timm norm layer name (e.g. ``groupnorm``) replacing the default normalisation.
        model_args: further keyword arguments for ``timm.create_model`` (recorded in ``config.json``).
        init: start from this checkpoint's weights instead of random ones: anything ``copre_hub.load`` takes (a
            copre-hub id, a timm Hub id such as ``hf-hub:timm/resnet18.a1_in1k``, a folder). Its backbone is
            kept and the head is fresh, sized to the pre-training classes; the card names it as ``base_model``.
    """

    architecture: str = "resnet18"
    norm_layer: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    init: str | None = None

    def timm_args(self) -> dict[str, Any]:
        """Keyword arguments for ``timm.create_model`` and ``config.json``'s ``model_args``."""
        args = dict(self.model_args)
        if self.norm_layer:
            args["norm_layer"] = self.norm_layer
        return args


def create_model(cfg: ModelConfig, num_classes: int, in_chans: int, img_size: int) -> nn.Module:
    """A timm model for ``num_classes`` classes and ``in_chans`` input channels.

    Raises:
        ConfigError: the architecture is unknown to timm.
    """
    if not timm.is_model(cfg.architecture):
        close = timm.list_models(f"*{cfg.architecture.split('_')[0]}*")[:5]
        raise ConfigError(f"unknown timm architecture {cfg.architecture!r}; similar names: {close or 'none'}.")
    kwargs = cfg.timm_args()
    if takes_img_size(cfg.architecture):
        kwargs.setdefault("img_size", img_size)
    return timm.create_model(cfg.architecture, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


# Families whose constructor fixes the input size, so it must be given for inputs other than their default.
_IMG_SIZE_FAMILIES = {"femnist", "vit", "deit", "beit", "eva", "swin", "cait", "xcit", "mixer", "resmlp"}


def takes_img_size(architecture: str) -> bool:
    """Whether ``architecture``'s constructor needs ``img_size`` (its layers depend on the input size)."""
    return architecture.split("_")[0] in _IMG_SIZE_FAMILIES
