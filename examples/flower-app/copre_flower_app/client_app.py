"""copre-flower-app: the ClientApp. Local SGD and evaluation on this node's own share of the task.

The architecture comes from the message (the checkpoint's ``config.json`` as the server read it), built without
weights; the weights are the message's arrays. No checkpoint and no Hub access on the nodes.
"""

from __future__ import annotations

import json

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from copre_flower_app.task import load_partition, test, train
from copre_hub.fl.seeding import derive_seed
from copre_hub.flower import build_model

app = ClientApp()


def received_model(msg: Message):
    """The architecture named by the message, with the message's weights."""
    model = build_model(json.loads(str(msg.content["config"]["model"])))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


def node_data(msg: Message, context: Context):
    """This node's (train, test) share, from its partition id and the run config."""
    config, run = msg.content["config"], context.run_config
    return load_partition(
        str(run["data-dir"]),
        int(run["num-classes"]),
        int(context.node_config["partition-id"]),
        int(context.node_config["num-partitions"]),
        int(run["seed"]),
        config["mean"],
        config["std"],
    )


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    """``local-steps`` SGD steps from the received weights; replies with the trained weights."""
    model = received_model(msg)
    train_set, _ = node_data(msg, context)
    run, config = context.run_config, msg.content["config"]
    # batch order keyed by (seed, round, node), as copre-hub's engine keys its draws
    seed = derive_seed(
        int(run["seed"]), "batches", int(config["server-round"]), int(context.node_config["partition-id"])
    )
    loss = train(model, train_set, int(run["local-steps"]), float(config["lr"]), int(run["batch-size"]), seed)
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(train_set)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the received weights on this node's test share."""
    model = received_model(msg)
    _, test_set = node_data(msg, context)
    loss, accuracy = test(model, test_set)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": accuracy, "num-examples": len(test_set)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
