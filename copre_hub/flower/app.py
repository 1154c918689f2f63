"""A pre-training recipe as a Flower App: ``server_app`` and ``client_app`` for ``flwr run`` and real SuperNodes.

The app's run config *is* the recipe: ``[tool.flwr.app.config]`` holds ``name`` and ``seed`` and the nested tables
``data``, ``partition``, ``model`` and ``method`` exactly as a recipe TOML file does (Flower flattens them to
``method.rounds``-style keys, so ``flwr run . --run-config "method.rounds=2"`` overrides one), plus ``output-dir``:
where the final checkpoint folder goes. Lists (explicit class ids) do not fit Flower's run config; use
``data.num_pretrain_classes``.

Data: the ServerApp prepares the run as the engine does (class split, partition, seeded initial weights) and keeps
only the server's share D^s; each ClientApp keeps only its own client's samples, ``partition-id``. A SuperNode
started with ``--node-config "partition-id=3 data-path=/silo/data"`` reads its own folder (Parquet or imagefolder,
the recipe's dataset columns) instead: its samples of the recipe's pre-training classes are its whole share.
"""

from __future__ import annotations

import dataclasses
from logging import INFO
from pathlib import Path
from typing import Any

import flwr
from flwr.app import Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from copre_hub.fl.data import load_image_data
from copre_hub.fl.partition import PartitionConfig, build_federation, class_split
from copre_hub.fl.pretrain import checkpoint_args, checkpoint_meta, prepare, software_versions
from copre_hub.fl.recipe import Recipe, recipe_from_dict
from copre_hub.flower.client import LocalData, pretraining_client_app
from copre_hub.flower.messages import PARTITION_ID
from copre_hub.flower.strategy import PreTraining

OUTPUT_DIR = "output-dir"  # the one run-config key that is not part of the recipe
DATA_PATH = "data-path"  # node config: this SuperNode's own data folder


def recipe_of(context: Context) -> Recipe:
    """The recipe in the run config (see the module docstring).

    Raises:
        ConfigError: an unknown key or an invalid value, as for a recipe file.
    """
    raw: dict[str, Any] = {}
    for key, value in context.run_config.items():  # Flower's flat "method.rounds" keys back into tables
        if key != OUTPUT_DIR:
            *tables, leaf = key.split(".")
            node = raw
            for table in tables:
                node = node.setdefault(table, {})
            node[leaf] = value
    return recipe_from_dict(raw)


def own_data(context: Context) -> LocalData:
    """This node's share: its folder (node config ``data-path``) or its partition of the recipe's dataset."""
    recipe = recipe_of(context)
    if DATA_PATH in context.node_config:
        images = load_image_data(dataclasses.replace(recipe.data, path=str(context.node_config[DATA_PATH])))
        classes, _ = class_split(images, recipe.data, recipe.seed)
        whole = PartitionConfig(num_clients=1, scheme="iid", server_fraction=0.0)
        silo = build_federation(images, classes, whole, recipe.seed)
        return LocalData.from_federation(silo, silo.clients[0])
    images = load_image_data(recipe.data)
    classes, _ = class_split(images, recipe.data, recipe.seed)
    data = build_federation(images, classes, recipe.partition, recipe.seed)
    return LocalData.from_federation(data, data.clients[int(context.node_config[PARTITION_ID])])


client_app = pretraining_client_app(own_data)
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Pre-train with the recipe's method over the federation, then write the checkpoint folder."""
    recipe = recipe_of(context)
    prepared = prepare(recipe)  # the engine's class split, partition and seeded initial weights
    method, data = prepared.method, prepared.data
    server = LocalData.from_federation(data, data.server) if method.scenario == 2 else None
    strategy = PreTraining(
        method,
        prepared.model,
        architecture=recipe.model.architecture,
        model_args=checkpoint_args(prepared)["model_args"],
        num_clients=data.num_clients,
        seed=recipe.seed,
        server_data=server,
        augment=recipe.data.augment,
    )
    result = strategy.start(grid=grid, initial_arrays=strategy.initial_arrays(), num_rounds=method.rounds)
    save_checkpoint_folder(prepared, result.arrays.to_torch_state_dict(), strategy.history, context)


def save_checkpoint_folder(prepared, state: dict, history: list[dict], context: Context) -> Path:
    """The final weights as a checkpoint folder (``output-dir``) with the run's facts in its card."""
    import copre_hub
    from copre_hub.hub.checkpoint import timm_config

    meta = checkpoint_meta(prepared, software_versions() | {"flwr": flwr.__version__}, history[-1] if history else {})
    like = timm_config(prepared.model, **checkpoint_args(prepared), copre_hub_meta=meta | {"trained_with": "flower"})
    output = Path(str(context.run_config.get(OUTPUT_DIR, "checkpoint"))).resolve()
    folder = copre_hub.save(state, output, like=like)
    log(INFO, "copre-hub checkpoint: %s (push it with `copre-hub push %s ORG/NAME`)", folder, folder)
    return folder
