"""The same CoPreFL job in the engine and under Flower's simulation runtime (copre_hub.flower): seconds and ratio.

    pip install -e ".[flower]"                        # flwr[simulation] >= 1.42 (Ray)
    python benchmarks/coprefl_flower.py              # test_resnet, 4 clients x 40 images, 2 per round, 2 rounds
    python benchmarks/coprefl_flower.py --arch resnet18 --clients 20 --participants 4 --rounds 3 --client-size 200

Both sides run one job: the same seeded model, synthetic CIFAR-shaped clients (client ``c`` holds block ``c``),
CoPreFL Scenario I (support/query split, local SGD, aggregation, query losses and gradients at Φ̄, meta-step) with
the same seed, so the same participants, splits and batch orders. The engine runs it in this process
(``CoPreFL.fit``); Flower runs :class:`copre_hub.flower.PreTraining` with ``pretraining_client_app`` nodes through
``flwr.simulation.run_simulation`` (Ray actors of ``--client-cpus`` CPUs, each node holding only its own client's
data), and the script checks that both end with the same weights.

Reported, the median of ``--repeats`` interleaved repetitions: the total wall time (Flower: the whole
``run_simulation`` call, Ray start included; engine: model, data and every round) and the rounds alone (the
strategy's per-round seconds: configure, both message phases and aggregation). The ratio is Flower's over the
engine's: the price of real message passing and separate processes over the simulator's in-place clients.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from _common import (
    common_args,
    create_model,
    print_table,
    print_targets,
    set_threads,
    summary,
    synthetic_federation,
    target,
    write_result,
)

from copre_hub.fl.methods import create_method

SAME_WEIGHTS = 1e-5  # largest |difference| of the two final models


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="test_resnet")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--participants", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--client-size", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--client-cpus", type=float, default=1.0, help="CPUs of each Flower node's Ray actor")
    args = common_args(parser, repeats=1).parse_args(argv)
    set_threads(args.threads)
    method = create_method(
        "coprefl",
        rounds=args.rounds,
        participants=args.participants,
        local_steps=args.local_steps,
        batch_size=args.batch_size,
        lr=0.01,
        meta_lr=0.01,
    )
    reps = []
    for rep in range(args.repeats):
        sides = [("engine", run_engine), ("flower", run_flower)][:: 1 if rep % 2 == 0 else -1]
        reps.append({name: fn(args, method) for name, fn in sides})

    results: dict = {
        "repetitions": [
            {side: {k: v for k, v in r.items() if k != "weights"} for side, r in rep.items()} for rep in reps
        ]
    }
    rows = []
    for side in ("engine", "flower"):
        results[side] = {key: summary([rep[side][key] for rep in reps]) for key in ("total_seconds", "rounds_seconds")}
        rows.append(
            {
                "runtime": side,
                "total s": results[side]["total_seconds"]["median"],
                "rounds s": results[side]["rounds_seconds"]["median"],
                "s/round": results[side]["rounds_seconds"]["median"] / args.rounds,
            }
        )
    for key in ("total_seconds", "rounds_seconds"):
        results[f"ratio_{key}"] = summary([rep["flower"][key] / rep["engine"][key] for rep in reps])
    rows.append(
        {
            "runtime": "flower / engine",
            "total s": results["ratio_total_seconds"]["median"],
            "rounds s": results["ratio_rounds_seconds"]["median"],
            "s/round": results["ratio_rounds_seconds"]["median"],
        }
    )
    import flwr

    results["flower"]["version"] = flwr.__version__
    difference = max(weight_difference(rep["engine"]["weights"], rep["flower"]["weights"]) for rep in reps)
    results["max_weight_difference"] = difference
    print(
        f"CoPreFL Scenario I, {args.arch}, {args.clients} clients x {args.client_size} images, {args.participants} "
        f"per round, {args.rounds} rounds, {args.local_steps} local steps, batch {args.batch_size}, "
        f"flwr {flwr.__version__}\n"
    )
    print_table(rows)
    print(f"\nlargest |weight difference| between the two final models: {difference:.2e}")
    targets = [target("same final weights (max |difference|)", difference, SAME_WEIGHTS, higher_is_better=False)]
    print_targets(targets)
    results["targets"] = targets
    print(f"\nwrote {write_result('coprefl_flower', args, results)}")
    return results


def run_engine(args: argparse.Namespace, method) -> dict:
    """The job in copre-hub's engine, in this process."""
    began = time.perf_counter()
    data = synthetic_federation(args.clients, args.client_size, args.seed)
    model = create_model(args.arch, data.num_classes, seed=args.seed)
    history = method.fit(model, data, seed=args.seed)
    return {
        "total_seconds": time.perf_counter() - began,
        "rounds_seconds": sum(row["seconds"] for row in history),
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }


def run_flower(args: argparse.Namespace, method) -> dict:
    """The job under Flower's simulation runtime: PreTraining on the server, one node per client."""
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from copre_hub.flower import LocalData, PreTraining, pretraining_client_app

    logging.getLogger("flwr").setLevel(logging.WARNING)
    out: dict = {}
    began = time.perf_counter()
    data = synthetic_federation(args.clients, args.client_size, args.seed)
    server_app = ServerApp()

    @server_app.main()
    def _(grid, context) -> None:
        model = create_model(args.arch, data.num_classes, seed=args.seed)
        strategy = PreTraining(method, model, architecture=args.arch, num_clients=args.clients, seed=args.seed)
        result = strategy.start(grid=grid, initial_arrays=strategy.initial_arrays(), num_rounds=args.rounds)
        out["rounds_seconds"] = sum(row["seconds"] for row in strategy.history)
        out["weights"] = result.arrays.to_torch_state_dict()

    def own_data(context) -> LocalData:
        return LocalData.from_federation(data, data.clients[int(context.node_config["partition-id"])])

    run_simulation(
        server_app=server_app,
        client_app=pretraining_client_app(own_data),
        num_supernodes=args.clients,
        backend_config={
            "client_resources": {"num_cpus": args.client_cpus, "num_gpus": 0.0},
            "init_args": {"include_dashboard": False, "log_to_driver": False},
        },
    )
    if "weights" not in out:
        raise SystemExit("the Flower ServerApp did not finish; see Flower's log above.")
    return {"total_seconds": time.perf_counter() - began, **out}


def weight_difference(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference over the floating-point entries of two state dicts."""
    return max(float((ours[k] - theirs[k].to(ours[k].dtype)).abs().max()) for k in ours if ours[k].is_floating_point())


if __name__ == "__main__":
    main()
