"""``copre_hub.save``: weights trained elsewhere (a Flower run's final arrays, a fine-tuned model) as a checkpoint.

The folder is the one :func:`copre_hub.hub.checkpoint.save_checkpoint` writes (``config.json``, ``model.safetensors``,
``README.md``), so ``copre-hub push`` takes it as it is. What the weights alone do not say (the architecture and
its arguments, the input size, the normalisation) comes from another checkpoint, ``like``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from copre_hub.errors import CheckpointError
from copre_hub.hub.checkpoint import CONFIG_NAME, save_checkpoint
from copre_hub.hub.meta import block_of

if TYPE_CHECKING:
    import torch

# Facts of ``like``'s block that describe its own file or its own evaluation, not the weights being saved.
_NOT_INHERITED = ("sha256", "copre_hub_version", "model_id", "tag", "repo_id", "eval_results", "final_metrics")


def save(
    model: torch.nn.Module | Mapping[str, torch.Tensor],
    folder: str | os.PathLike[str],
    *,
    like: str | os.PathLike[str] | Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    label_names: list[str] | None = None,
) -> Path:
    """Write ``model`` (a timm model or its ``state_dict``) as a checkpoint folder shaped like ``like``.

    Args:
        model: the weights; the class count is read from their classifier (``pretrained_cfg["classifier"]`` of
            ``like``), so a downstream head of any size is kept.
        folder: the checkpoint folder to write (atomically; created with its parents).
        like: where the architecture, ``model_args``, input size, mean and std come from: a model id or
            checkpoint folder (resolved as :func:`copre_hub.pull` does, so a folder or a cached id needs no
            network), or a ``config.json`` mapping.
        meta: facts to record in the ``copre_hub`` block (e.g. ``{"model_id": ..., "method": "fedavg"}``), over
            those inherited from ``like``'s block (its own ``sha256``, ``model_id`` and evaluation are dropped).
            An id or folder ``like`` is recorded as ``derived_from``.
        label_names: one name per class of the saved head; by default ``like``'s when the class count is the same.

    Returns:
        ``folder`` as a :class:`~pathlib.Path`, ready for ``copre-hub push``.

    Raises:
        CheckpointError: the weights do not fit ``like``'s architecture (names missing, unexpected or of another
            shape).
        ModelNotFoundError, IntegrityError: ``like`` cannot be resolved or is corrupted (see :func:`copre_hub.pull`).
        OutputError: the folder cannot be written.

    Example:
        >>> copre_hub.save(result.arrays.to_torch_state_dict(), "fl-run/checkpoint",
        ...                like="copreFL-resnet18-cifar100", meta={"model_id": "my-downstream"})  # doctest: +SKIP
    """
    config, source = _config_of(like)
    state = model.state_dict() if hasattr(model, "state_dict") else dict(model)
    pretrained_cfg = config["pretrained_cfg"]
    num_classes = _head_size(state, pretrained_cfg.get("classifier"), int(config["num_classes"]))
    target = _fitted_model(config, state, num_classes, source)
    block = {key: value for key, value in block_of(config).items() if key not in _NOT_INHERITED}
    if source is not None:
        block["derived_from"] = source
    block.update(meta or {})
    if label_names is None and num_classes == config["num_classes"]:
        label_names = config.get("label_names")
    return save_checkpoint(
        target,
        folder,
        architecture=config["architecture"],
        model_args=dict(config.get("model_args", {})),
        num_classes=num_classes,
        input_size=tuple(pretrained_cfg["input_size"]),
        mean=tuple(pretrained_cfg["mean"]),
        std=tuple(pretrained_cfg["std"]),
        copre_hub_meta=block,
        label_names=label_names,
    )


def _config_of(like: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``like``'s ``config.json`` and, for an id or folder, how to name it."""
    if isinstance(like, Mapping):
        return dict(like), None
    from copre_hub.hub.api import pull

    folder = pull(like)
    return json.loads((Path(folder) / CONFIG_NAME).read_text(encoding="utf-8")), str(like)


def _head_size(state: Mapping[str, Any], classifier: str | list[str] | None, default: int) -> int:
    """Rows of the classifier's weight in ``state`` (``default`` when the state has no such entry)."""
    name = classifier if isinstance(classifier, str) else (classifier or [None])[0]
    weight = state.get(f"{name}.weight") if name else None
    return int(weight.shape[0]) if weight is not None else default


def _fitted_model(config: dict[str, Any], state: Mapping[str, Any], num_classes: int, source: str | None):
    """``config``'s architecture with ``num_classes`` classes and ``state`` loaded strictly."""

    import timm
    import torch

    import copre_hub.timm_models  # noqa: F401 - registers copre-hub's own architectures with timm

    architecture = config["architecture"]
    model = timm.create_model(
        architecture, pretrained=False, num_classes=num_classes, **dict(config.get("model_args", {}))
    )
    try:
        model.load_state_dict({name: torch.as_tensor(value) for name, value in state.items()}, strict=True)
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:300]
        where = f"of {source!r}" if source else "of the given config"
        raise CheckpointError(
            f"the weights do not fit architecture {architecture!r} {where} ({reason}); pass like= the checkpoint "
            "the weights started from."
        ) from error
    return model
