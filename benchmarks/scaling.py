"""Target 3: a round's cost grows linearly with the participants per round and with the local epochs.

    python benchmarks/scaling.py                                  # resnet18, participants 5..40, epochs 1..4
    python benchmarks/scaling.py --arch test_resnet --participants 1 2 --epochs 1 2 --client-size 20 --repeats 1

One process, one simulation (synthetic CIFAR-shaped data, CoPreFL by default). Every point of both sweeps is
timed ``--repeats`` times, the repetitions interleaved across points; the median seconds per round are fitted with
a line (least squares). The slope is the cost of one more participant (or local epoch), the intercept the fixed
cost of a round, and R^2 says how straight the line is (goal: at least 0.99).
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import (
    common_args,
    create_model,
    print_table,
    print_targets,
    seconds,
    set_threads,
    summary,
    synthetic_federation,
    target,
    write_result,
)

from copre_hub.fl.methods import create_method
from copre_hub.fl.simulation import Simulation

R2_GOAL = 0.99


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--method", default="coprefl")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--client-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--participants", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--fixed-participants", type=int, default=10, help="participants during the epoch sweep")
    parser.add_argument("--fixed-epochs", type=int, default=1, help="local epochs during the participant sweep")
    args = common_args(parser, repeats=3).parse_args(argv)
    set_threads(args.threads)

    data = synthetic_federation(args.clients, args.client_size, args.seed)
    sim = Simulation(create_model(args.arch, data.num_classes, seed=args.seed), data)
    points = [("participants", p, {"participants": p, "local_epochs": args.fixed_epochs}) for p in args.participants]
    points += [("local_epochs", e, {"participants": args.fixed_participants, "local_epochs": e}) for e in args.epochs]
    methods = [create_method(args.method, batch_size=args.batch_size, **settings) for *_, settings in points]

    methods[0].round(sim, args.seed, 0)  # warm-up
    times: list[list[float]] = [[] for _ in points]
    t = 1
    for _ in range(args.repeats):
        for i, method in enumerate(methods):
            times[i].append(seconds(lambda m=method, t=t: m.round(sim, args.seed, t)))
            t += 1

    results: dict = {"points": [], "fits": {}}
    for (sweep, x, _), runs in zip(points, times, strict=True):
        results["points"].append({"sweep": sweep, "x": x, "round_seconds": summary(runs)})
    targets = []
    for sweep, unit in (("participants", "participant"), ("local_epochs", "local epoch")):
        xs = [p["x"] for p in results["points"] if p["sweep"] == sweep]
        ys = [p["round_seconds"]["median"] for p in results["points"] if p["sweep"] == sweep]
        fit = line_fit(xs, ys)
        results["fits"][sweep] = fit
        print(
            f"\nseconds per round against {sweep.replace('_', ' ')} ({args.method}, {args.arch}, "
            f"{args.client_size} images per client, batch {args.batch_size})\n"
        )
        print_table(
            [{sweep: x, "s/round": y, "line": fit["intercept"] + fit["slope"] * x} for x, y in zip(xs, ys, strict=True)]
        )
        print(f"\nslope {fit['slope']:.3g} s per {unit}, intercept {fit['intercept']:.3g} s, R^2 {fit['r2']:.4f}")
        if len(xs) > 2:
            targets.append(
                target(
                    f"3 linear in {sweep.replace('_', ' ')} (R^2)",
                    fit["r2"],
                    R2_GOAL,
                    note=f"{fit['slope']:.3g} s per {unit}",
                )
            )
    results["targets"] = targets
    if targets:
        print_targets(targets)
    print(f"\nwrote {write_result('scaling', args, results)}")
    return results


def line_fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares line through (xs, ys) with its R^2 (1.0 when there is nothing left to explain)."""
    slope, intercept = np.polyfit(xs, ys, 1)
    predicted = intercept + slope * np.asarray(xs)
    residual = float(((np.asarray(ys) - predicted) ** 2).sum())
    total = float(((np.asarray(ys) - np.mean(ys)) ** 2).sum())
    return {"slope": float(slope), "intercept": float(intercept), "r2": 1.0 - residual / total if total else 1.0}


if __name__ == "__main__":
    main()
