"""copre-flower-app: the ServerApp. FedAvg from a copre-hub initialization, loaded once, here.

The initialization's backbone with a fresh ``num-classes`` head is the run's ``initial_arrays``. The clients get,
with every message, the architecture to build (from the checkpoint's ``config.json``) and its normalisation, so they
need neither the checkpoint nor the Hub. The final arrays become a copre-hub checkpoint folder (``output-dir``),
ready for ``copre-hub push``.
"""

from __future__ import annotations

import json
from logging import INFO
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

import copre_hub
from copre_flower_app.task import FIRST_CLASS

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` FedAvg rounds over whatever nodes the federation has, then save the result."""
    cfg = context.run_config
    model_id, num_classes = str(cfg["model-id"]), int(cfg["num-classes"])
    folder = copre_hub.pull(model_id)  # the one Hub access of the run (none for a folder or a cached id)
    checkpoint = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    model = copre_hub.load(folder, num_classes=num_classes)
    config = ConfigRecord(
        {
            "lr": float(cfg["lr"]),
            "model": json.dumps(
                {
                    "architecture": checkpoint["architecture"],
                    "model_args": checkpoint.get("model_args", {}),
                    "num_classes": num_classes,
                }
            ),
            "mean": [float(v) for v in checkpoint["pretrained_cfg"]["mean"]],
            "std": [float(v) for v in checkpoint["pretrained_cfg"]["std"]],
        }
    )
    strategy = FedAvg(  # at least one node per phase, so any federation size runs
        fraction_train=float(cfg["fraction-train"]),
        fraction_evaluate=1.0,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=int(cfg["num-server-rounds"]),
        train_config=config,
        evaluate_config=config,
    )
    meta = {
        "model_id": f"{Path(model_id).name}-flower-{num_classes}way",
        "downstream": {
            "framework": "flower",
            "algorithm": "fedavg",
            "rounds": int(cfg["num-server-rounds"]),
            "fraction_train": float(cfg["fraction-train"]),
            "local_steps": int(cfg["local-steps"]),
            "lr": float(cfg["lr"]),
            "classes": f"{FIRST_CLASS}-{FIRST_CLASS + num_classes - 1}",
            "final_metrics": dict(result.evaluate_metrics_clientapp.get(int(cfg["num-server-rounds"]), {})),
        },
    }
    output = Path(str(cfg["output-dir"])).resolve()
    out = copre_hub.save(result.arrays.to_torch_state_dict(), output, like=model_id, meta=meta)
    log(INFO, "copre-hub checkpoint of the final model: %s (push it with `copre-hub push %s ORG/NAME`)", out, out)
