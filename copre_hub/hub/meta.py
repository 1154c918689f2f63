"""The ``copre_hub`` block of a checkpoint's ``config.json``, as one typed value.

Pre-training writes it (:meth:`CheckpointMeta.to_block`) and every reader goes through
:meth:`CheckpointMeta.from_config`, which accepts what older copre-hub versions and other writers left: a missing
block, missing keys, or a single ``eval_results`` dict instead of a list. Keys it does not know (``repo_id``,
``tag``, ``license``, ``trained_with``, ``derived_from``, ...) are kept in ``extra``.

>>> meta = CheckpointMeta.from_config({"copre_hub": {"model_id": "copreFL-resnet18-cifar100", "tag": "v1"}})
>>> meta.model_id, meta.sha256, meta.extra
('copreFL-resnet18-cifar100', None, {'tag': 'v1'})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

BLOCK = "copre_hub"


@dataclass(frozen=True)
class CheckpointMeta:
    """What made a checkpoint's weights, and what was measured from them.

    Attributes:
        model_id: the run's name, the id it is published under.
        method: pre-training method name (``coprefl``, ``fedavg``, ...); ``method_display`` its printed name.
        scenario: 1 (all data on clients) or 2 (hybrid, with server data).
        hyperparameters: the method's settings.
        recipe: the whole resolved recipe; ``fingerprint`` its hash, ``seed`` its run seed.
        data: data source and class split (``source``, ``pretrain_classes``, ``downstream_classes``,
            ``num_clients``, ``server_size``, ``dataset``).
        partition: the client partition settings.
        versions: software versions of the run.
        final_metrics: the last round's metrics.
        init: the starting weights (``{"id", "sha256"}``); None for random weights.
        eval_results: downstream results merged in (see :func:`copre_hub.fl.report.card_eval_result`).
        sha256: of ``model.safetensors``; ``copre_hub_version`` the version that wrote the folder.
        extra: every other key of the block, as found.
    """

    model_id: str | None = None
    method: str | None = None
    method_display: str | None = None
    scenario: int | None = None
    hyperparameters: Mapping[str, Any] | None = None
    recipe: Mapping[str, Any] | None = None
    fingerprint: str | None = None
    seed: int | None = None
    data: Mapping[str, Any] | None = None
    partition: Mapping[str, Any] | None = None
    versions: Mapping[str, str] | None = None
    final_metrics: Mapping[str, Any] | None = None
    init: Mapping[str, Any] | None = None
    eval_results: tuple[Mapping[str, Any], ...] = ()
    sha256: str | None = None
    copre_hub_version: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CheckpointMeta:
        """The block of a ``config.json`` (empty for a plain timm export, or a block that is not a JSON object)."""
        return cls.from_block(block_of(config))

    @classmethod
    def from_block(cls, block: Mapping[str, Any]) -> CheckpointMeta:
        """The block itself, already taken out of its config."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "eval_results"}
        values = {key: value for key, value in block.items() if key in known}
        extra = {key: value for key, value in block.items() if key not in known and key != "eval_results"}
        return cls(**values, eval_results=_as_tuple(block.get("eval_results")), extra=extra)

    def to_block(self) -> dict[str, Any]:
        """The block as ``config.json`` stores it: every field that is set, in the order above, then ``extra``.

        ``init`` is written for every run (``method`` set), None meaning random weights, so a card can say so.
        """
        block: dict[str, Any] = {}
        for name in (f.name for f in dataclasses.fields(self) if f.name != "extra"):
            value = getattr(self, name)
            if name == "eval_results":
                value = [dict(result) for result in value] or None
            if value is not None or (name == "init" and self.method is not None):
                block[name] = value
        return {**block, **self.extra}

    @property
    def dataset(self) -> str | None:
        """The pre-training dataset: the recipe's ``data.dataset``, else the data record's."""
        recipe_data = (self.recipe or {}).get("data") or {}
        return recipe_data.get("dataset") or (self.data or {}).get("dataset") or None

    @property
    def class_split(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """(pre-training classes, downstream classes) as recorded; None when either is not."""
        data = self.data or {}
        seen, unseen = data.get("pretrain_classes"), data.get("downstream_classes")
        return (tuple(seen), tuple(unseen)) if seen and unseen else None


def block_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the raw ``copre_hub`` block of ``config`` (empty when it has none, or one that is not an object),
    for writers that must keep every key as found."""
    block = config.get(BLOCK)
    return dict(block) if isinstance(block, Mapping) else {}


def _as_tuple(results: Any) -> tuple[Mapping[str, Any], ...]:
    """``eval_results`` as a tuple: older blocks hold one dict, or nothing."""
    if isinstance(results, Mapping):
        return (results,)
    return tuple(results) if isinstance(results, list | tuple) else ()
