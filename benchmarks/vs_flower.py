"""Target 5: the same FedAvg pre-training in Flower's simulation engine and in copre-hub's; the wall-time ratio.

    pip install -e ".[bench]"                                     # Flower with its Ray simulation backend
    python benchmarks/vs_flower.py                                 # resnet18, 100 clients, 20 per round, 3 rounds
    python benchmarks/vs_flower.py --arch test_resnet --clients 4 --participants 2 --rounds 1 --client-size 20

Both sides run the same model (same seeded initial weights), data (synthetic CIFAR-shaped blocks, client ``c``
holding block ``c``), participants (copre-hub's seeded draw of each round, which the Flower strategy is told to
select), rounds, local epochs, batch size, learning rate and batch order (the engine's seeded batch iterator),
and both average by number of examples. So their final weights must agree, and the script checks that they do.

Flower runs the way its documentation writes it: ``flwr.simulation.run_simulation`` with a ``ServerApp`` whose
strategy is ``FedAvg`` and a ``ClientApp`` that builds the model, loads the received arrays, trains with
``torch.optim.SGD`` and replies with its ``state_dict``; the Ray backend runs the clients in actors of
``--client-cpus`` CPUs each (as many at once as the cores allow). copre-hub runs in this process.

Reported, each the median of ``--repeats`` interleaved repetitions: the total wall time (Flower: the whole
``run_simulation`` call, Ray start included; copre-hub: data, model and every round) and the rounds alone (Flower:
timed inside the ServerApp around ``strategy.start``). The ratio is Flower's over copre-hub's.
"""

from __future__ import annotations

import argparse
import logging
import time
import types

import torch
from _common import (
    common_args,
    create_model,
    normalizer,
    print_table,
    print_targets,
    seconds,
    set_threads,
    summary,
    synthetic_client,
    synthetic_federation,
    target,
    write_result,
)
from torch.nn import functional as F

import copre_hub.fl.models  # noqa: F401  (timm and copre-hub's models imported before anything is timed)
from copre_hub.fl.methods import create_method
from copre_hub.fl.seeding import generator
from copre_hub.fl.simulation import Simulation, iterate_batches

GOAL = 1.0  # Flower's wall time over ours


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--participants", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--client-size", type=int, default=480)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--client-cpus", type=float, default=1.0, help="CPUs of each Flower client actor")
    args = common_args(parser, repeats=3).parse_args(argv)
    set_threads(args.threads)
    method = create_method(
        "fedavg",
        rounds=args.rounds,
        participants=args.participants,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
    )
    try:
        import flwr
        import ray  # noqa: F401  (Flower's simulation backend)
    except ImportError as error:
        flwr = None
        print(
            f"Flower's simulation engine is not installed ({error}; pip install -e '.[bench]'): only copre-hub "
            "is measured.\n"
        )

    reps = []
    for rep in range(args.repeats):
        sides = [("copre_hub", run_ours), ("flower", run_flower)][:: 1 if rep % 2 == 0 else -1]
        reps.append({name: fn(args, method) for name, fn in sides if flwr is not None or name == "copre_hub"})

    results: dict = {
        "repetitions": [
            {side: {k: v for k, v in r.items() if k != "weights"} for side, r in rep.items()} for rep in reps
        ]
    }
    rows = []
    for side in reps[0]:
        results[side] = {key: summary([rep[side][key] for rep in reps]) for key in ("total_seconds", "rounds_seconds")}
        rows.append(
            {
                "engine": side,
                "total s": results[side]["total_seconds"]["median"],
                "rounds s": results[side]["rounds_seconds"]["median"],
                "s/round": results[side]["rounds_seconds"]["median"] / args.rounds,
            }
        )
    print(
        f"FedAvg, {args.arch}, {args.clients} clients x {args.client_size} images, {args.participants} per round, "
        f"{args.rounds} rounds, {args.local_epochs} local epoch(s), batch {args.batch_size}\n"
    )
    print_table(rows)
    targets = []
    if flwr is not None:
        results["flower_setup"] = {
            "version": flwr.__version__,
            "backend": "ray",
            "client_resources": {"num_cpus": args.client_cpus, "num_gpus": 0.0},
        }
        difference = max(weight_difference(rep["copre_hub"]["weights"], rep["flower"]["weights"]) for rep in reps)
        results["max_weight_difference"] = difference
        print(f"\nlargest |weight difference| between the two final models: {difference:.2e}")
        for key, label in (("total_seconds", "total"), ("rounds_seconds", "rounds only")):
            ratios = [rep["flower"][key] / rep["copre_hub"][key] for rep in reps]
            results[f"ratio_{key}"] = summary(ratios)
            targets.append(target(f"5 Flower / copre-hub wall time, {label}", results[f"ratio_{key}"]["median"], GOAL))
        print_targets(targets)
    results["targets"] = targets
    print(f"\nwrote {write_result('vs_flower', args, results)}")
    return results


def run_ours(args: argparse.Namespace, method) -> dict:
    """copre-hub's FedAvg in this process: data, model and all rounds."""
    began = time.perf_counter()
    data = synthetic_federation(args.clients, args.client_size, args.seed)
    sim = Simulation(create_model(args.arch, data.num_classes, seed=args.seed), data)
    rounds = seconds(lambda: method.run(sim, args.seed))
    return {
        "total_seconds": time.perf_counter() - began,
        "rounds_seconds": rounds,
        "weights": {k: v.detach().clone() for k, v in sim.model.state_dict().items()},
    }


def run_flower(args: argparse.Namespace, method) -> dict:
    """The same run through ``flwr.simulation.run_simulation`` (Ray backend)."""
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    out: dict = {}
    began = time.perf_counter()
    run_simulation(
        server_app=flower_server(args, method, out),
        client_app=flower_client(args, method),
        num_supernodes=args.clients,
        backend_config={
            "client_resources": {"num_cpus": args.client_cpus, "num_gpus": 0.0},
            "init_args": {"include_dashboard": False, "log_to_driver": False},
        },
    )
    return {"total_seconds": time.perf_counter() - began, **out}


def flower_server(args: argparse.Namespace, method, out: dict):
    """A ServerApp running FedAvg on the participants copre-hub draws for each round."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.serverapp.strategy.strategy_utils import sample_nodes

    federation = types.SimpleNamespace(num_clients=args.clients)  # all that Method.sample reads

    class SameParticipants(FedAvg):
        """FedAvg whose round ``t`` trains the nodes holding copre-hub's participants of round ``t``."""

        def __init__(self, node_of: dict[int, int]) -> None:
            super().__init__(fraction_evaluate=0.0, min_available_nodes=args.clients)
            self.node_of = node_of

        def configure_train(self, server_round, arrays, config, grid):
            config["server-round"] = server_round
            record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
            nodes = [self.node_of[c] for c in method.sample(federation, args.seed, server_round - 1)]
            return self._construct_messages(record, nodes, MessageType.TRAIN)

    app = ServerApp()

    @app.main()
    def _(grid, context) -> None:
        _, nodes = sample_nodes(grid, args.clients, args.clients)  # waits until every node is connected
        replies = grid.send_and_receive([Message(RecordDict(), n, MessageType.QUERY) for n in nodes])
        failed = [r.error.reason for r in replies if r.has_error()]
        if failed:
            raise RuntimeError(f"{len(failed)} Flower clients failed, e.g.: {failed[0]}")
        node_of = {int(r.content["node"]["partition-id"]): r.metadata.src_node_id for r in replies}
        initial = ArrayRecord(create_model(args.arch, seed=args.seed).state_dict())
        began = time.perf_counter()
        result = SameParticipants(node_of).start(
            grid=grid, initial_arrays=initial, num_rounds=args.rounds, train_config=ConfigRecord({"seed": args.seed})
        )
        out["rounds_seconds"] = time.perf_counter() - began
        out["weights"] = result.arrays.to_torch_state_dict()

    return app


def flower_client(args: argparse.Namespace, method):
    """A ClientApp as Flower's PyTorch examples write it: new model, load arrays, SGD, reply with the state_dict."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.query()
    def _(msg, context) -> Message:
        return Message(
            RecordDict({"node": MetricRecord({"partition-id": context.node_config["partition-id"]})}), reply_to=msg
        )

    @app.train()
    def _(msg, context) -> Message:
        client = int(context.node_config["partition-id"])
        t = int(msg.content["config"]["server-round"]) - 1
        images, labels = synthetic_client(client, args.client_size, args.seed)
        model = create_model(args.arch, seed=args.seed)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        loss = local_sgd(model, images, labels, generator(args.seed, "batches", t, client), method)
        metrics = MetricRecord({"num-examples": len(labels), "train_loss": loss})
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)

    return app


def local_sgd(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, draws: torch.Generator, method
) -> float:
    """The Flower client's training loop (``method`` gives lr, batch size and epochs), on the engine's batch order."""
    normalize = normalizer("cpu")
    optimizer = torch.optim.SGD(model.parameters(), lr=method.lr)
    model.train()
    losses = []
    for batch in iterate_batches(torch.arange(len(labels)), method.batch_size, draws, epochs=method.local_epochs):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(normalize(images[batch])), labels[batch])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)


def weight_difference(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference over the floating-point entries of two state dicts."""
    return max(float((ours[k] - theirs[k].to(ours[k].dtype)).abs().max()) for k in ours if ours[k].is_floating_point())


if __name__ == "__main__":
    main()
