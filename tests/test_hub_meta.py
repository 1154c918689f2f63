"""The ``copre_hub`` block as a typed CheckpointMeta: what pretrain writes reads back the same, and older or
foreign blocks read without an error."""

from __future__ import annotations

import doctest

import copre_hub.hub.meta
from copre_hub.hub.meta import CheckpointMeta, block_of

RUN_BLOCK = {
    "model_id": "copreFL-test_resnet-cifar100",
    "method": "coprefl",
    "method_display": "CoPreFL",
    "scenario": 1,
    "hyperparameters": {"rounds": 2, "gamma": 0.5},
    "recipe": {"data": {"dataset": "cifar100"}, "seed": 0},
    "fingerprint": "f" * 16,
    "seed": 0,
    "data": {
        "source": "uoft-cs/cifar100",
        "pretrain_classes": [0, 1],
        "downstream_classes": [2],
        "dataset": "cifar100",
    },
    "partition": {"num_clients": 4, "scheme": "dirichlet"},
    "versions": {},
    "final_metrics": {},
    "init": None,
}


def test_a_run_block_reads_back_as_written() -> None:
    meta = CheckpointMeta.from_block(RUN_BLOCK)
    assert meta.to_block() == RUN_BLOCK and list(meta.to_block()) == list(RUN_BLOCK)  # same keys, same order
    assert (meta.dataset, meta.class_split) == ("cifar100", ((0, 1), (2,)))


def test_what_save_and_merge_add_is_read_too() -> None:
    stored = {**RUN_BLOCK, "eval_results": [{"dataset": "cifar100"}], "sha256": "ab" * 32, "copre_hub_version": "0.1"}
    meta = CheckpointMeta.from_config({"copre_hub": {**stored, "trained_with": "flower"}})
    assert (meta.sha256, meta.eval_results, meta.extra) == (
        "ab" * 32,
        ({"dataset": "cifar100"},),
        {"trained_with": "flower"},
    )
    assert meta.to_block() == {**stored, "trained_with": "flower"}


def test_older_and_foreign_blocks_are_tolerated() -> None:
    assert CheckpointMeta.from_config({"architecture": "resnet18"}) == CheckpointMeta()  # a plain timm export
    assert CheckpointMeta.from_config({"copre_hub": ["not", "an", "object"]}) == CheckpointMeta()
    single = CheckpointMeta.from_config({"copre_hub": {"eval_results": {"dataset": "femnist"}}})
    assert single.eval_results == ({"dataset": "femnist"},)  # one dict, as early versions stored it
    assert CheckpointMeta.from_block({"data": {"dataset": "femnist"}}).dataset == "femnist"  # no recipe recorded
    assert CheckpointMeta().to_block() == {} and CheckpointMeta().class_split is None
    assert block_of({"copre_hub": {"tag": "v1"}}) == {"tag": "v1"} and block_of({}) == {}


def test_the_module_example_runs() -> None:
    assert doctest.testmod(copre_hub.hub.meta).failed == 0
