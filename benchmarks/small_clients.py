"""Small clients: the engine's FedAvg round against the in-place loop and a plain centralized loop, and where the
engine's time per client goes beyond the SGD steps.

    python benchmarks/small_clients.py                 # resnet18 at 32x32, 20 of 100 clients x 64 images, 1 epoch
    python benchmarks/small_clients.py --arch test_resnet --participants 4 --repeats 2   # seconds

Four loops over the same participants, batch order (``iterate_batches`` with the engine's generators), data (uint8,
normalised per batch) and plain SGD, interleaved in one process (the order rotates each repetition):

* C, centralized: ``torch.optim.SGD`` over as many image-steps in one model, no federation at all;
* P2, the in-place loop a careful student writes: one model, ``load_state_dict`` of the global state per client,
  ``torch.optim.SGD``, a running float32 weighted sum of the state dicts;
* E, the engine: ``FedAvg.round`` on a :class:`~copre_hub.fl.simulation.Simulation` (timing its phases);
* E1, the engine adding one client at a time to its float64 sums (as on an accelerator, and as on a CPU before
  2026-12-07), where E adds two clients in one pass: the before and after of that change.

Goals (issue 18): E at least as fast as P2 and at least 0.95 of C, each judged on the median of the repetitions'
paired ratios (the two runs of one repetition share the machine's speed of that moment), printed with a
distribution-free interval. E's rounds also time, in place, its restores and its local SGD, so that the SGD steps
can be set against C's same number of steps and the rest of E's time is what the federation costs. Then the
engine's per-client fixed costs are timed alone, each repeated on the same client: restoring the round's start,
adding the client to the float64 accumulator (per client of a pair: on a CPU two clients go through the sum in one
pass), making the draws (the batch generator and the shuffled order) and gathering and normalising the batches,
against the whole per-client time of E.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import statistics
import time

import torch
from _common import (
    centralized_sgd,
    common_args,
    create_model,
    interleaved,
    normalizer,
    paired_ratio,
    print_table,
    print_targets,
    seconds,
    set_threads,
    summary,
    synthetic_federation,
    target,
    write_result,
)
from torch.nn import functional as F

from copre_hub.fl.methods import create_method
from copre_hub.fl.seeding import generator
from copre_hub.fl.simulation import Simulation, iterate_batches

GOALS = {"E over P2 (speed)": 1.0, "C over E (efficiency)": 0.95}


class InPlaceLoop:
    """P2: one model trained in place client after client, restored with ``load_state_dict``, averaged as a
    running float32 weighted sum of its state dict (integer buffers are taken from the last client)."""

    def __init__(self, model: torch.nn.Module, data, method, seed: int) -> None:
        self.model, self.data, self.method, self.seed = model, data, method, seed
        self.state = {k: v.clone() for k, v in model.state_dict().items()}
        self.normalize = normalizer("cpu")

    def round(self, t: int) -> None:
        total: dict[str, torch.Tensor] = {}
        weight = 0.0
        for client in self.method.sample(self.data, self.seed, t):
            self.model.load_state_dict(self.state)
            optimizer = torch.optim.SGD(self.model.parameters(), lr=self.method.lr)
            indices = self.data.clients[client]
            draws = generator(self.seed, "batches", t, client)
            self.model.train()
            for batch in iterate_batches(indices, self.method.batch_size, draws, epochs=self.method.local_epochs):
                loss = F.cross_entropy(self.model(self.normalize(self.data.images[batch])), self.data.labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            n = float(indices.numel())
            with torch.no_grad():
                for key, value in self.model.state_dict().items():
                    if not value.is_floating_point():
                        total[key] = value.clone()
                    elif key in total:
                        total[key].add_(value, alpha=n)
                    else:
                        total[key] = value * n
            weight += n
        self.state = {k: v / weight if v.is_floating_point() else v for k, v in total.items()}


class TimedSimulation(Simulation):
    """E's simulation, adding up the seconds of its restores and of its local SGD (``train``) as a round runs."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.phases: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def _timed(self, phase: str):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] += time.perf_counter() - began

    def restore(self) -> None:
        with self._timed("restore"):
            super().restore()

    def train(self, *args, **kwargs) -> float:
        with self._timed("local SGD"):
            return super().train(*args, **kwargs)


class OneAddPerClient(Simulation):
    """E1: a simulation whose client loop keeps no last client, so each client is summed on its own."""

    def client_loop(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def fixed_costs(sim: Simulation, method, seed: int, repeats: int) -> dict[str, float]:
    """Milliseconds per client of each engine step beyond SGD, each timed alone (median of ``repeats`` calls,
    on the first participant of round 0)."""
    client = method.sample(sim.data, seed, 0)[0]
    indices = sim.data.clients[client]
    acc = method.accumulator(sim)
    sim.snapshot()

    def draws() -> list[torch.Tensor]:
        return list(iterate_batches(indices, method.batch_size, generator(seed, "batches", 0, client), epochs=1))

    def accumulate() -> float:
        """Seconds per client of two accumulates with a restore between, as in a round (on a CPU the first one
        waits and the second adds both clients in one pass)."""
        first = seconds(lambda: method.accumulate(sim, acc, _result(indices)))
        sim.restore()
        return (first + seconds(lambda: method.accumulate(sim, acc, _result(indices)))) / 2

    batches = draws()
    steps = {
        "restore": lambda: seconds(sim.restore),
        "accumulate": accumulate,
        "draws": lambda: seconds(draws),
        "batch gather + normalise": lambda: seconds(lambda: [sim.batch(b, None) for b in batches]),
    }
    with sim.client_loop():
        for fn in steps.values():
            fn()  # warm-up
        return {name: 1e3 * statistics.median(fn() for _ in range(repeats)) for name, fn in steps.items()}


def _result(indices: torch.Tensor):
    from copre_hub.fl.methods.base import ClientResult

    return ClientResult(weight=float(indices.numel()), loss=0.0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--participants", type=int, default=20)
    parser.add_argument("--client-size", type=int, default=64)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cost-repeats", type=int, default=20, help="calls per fixed cost timed (median)")
    args = common_args(parser, repeats=5).parse_args(argv)
    set_threads(args.threads)

    data = synthetic_federation(args.clients, args.client_size, args.seed)
    method = create_method(
        "fedavg", participants=args.participants, local_epochs=args.local_epochs, batch_size=args.batch_size
    )
    sim = TimedSimulation(create_model(args.arch, seed=args.seed), data)
    one_add = OneAddPerClient(create_model(args.arch, seed=args.seed), data)
    p2 = InPlaceLoop(create_model(args.arch, seed=args.seed), data, method, args.seed)
    first_round_difference = _first_round_difference(sim, p2, method, args.seed)
    central = create_model(args.arch, seed=args.seed)
    steps = sum(data.clients[c].numel() for c in method.sample(data, args.seed, 0)) * args.local_epochs
    phases: list[collections.Counter[str]] = []

    def engine_round(t: int) -> None:
        sim.phases.clear()
        method.round(sim, args.seed, t)
        phases.append(collections.Counter(sim.phases))

    loops = {
        "C": lambda t: centralized_sgd(central, data, steps, args.batch_size, method.lr, seed=args.seed + t),
        "P2": p2.round,
        "E": engine_round,
        "E1": lambda t: method.round(one_add, args.seed, t),
    }
    for fn in loops.values():
        fn(1)  # warm-up
    phases.clear()
    times = interleaved(loops, args.repeats, first=2)
    medians = {name: statistics.median(values) for name, values in times.items()}
    in_place = _in_place_phases(phases, times, args.participants)
    costs = fixed_costs(sim, method, args.seed, args.cost_repeats)
    per_client_ms = 1e3 * medians["E"] / args.participants

    print(
        f"{args.arch} at 32x32, {args.participants} of {args.clients} clients x {args.client_size} images, "
        f"{args.local_epochs} epoch(s), batch {args.batch_size}, {args.repeats} interleaved repetitions (medians), "
        f"{torch.get_num_threads()} thread(s), load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n"
    )
    print_table([{"loop": name, "s/round": medians[name], "over E": medians[name] / medians["E"]} for name in loops])
    print()
    print("E's rounds, per client (medians over the repetitions), against C's steps of as many images:\n")
    print_table(
        [
            {"in E's rounds": name, "ms per client": ms, "of E's client": ms / per_client_ms}
            for name, ms in in_place.items()
        ]
    )
    print()
    rows = [
        {"engine step per client, alone": name, "ms": ms, "of E's client": ms / per_client_ms}
        for name, ms in costs.items()
    ]
    rows.append({"engine step per client, alone": "E's whole client", "ms": per_client_ms, "of E's client": 1.0})
    print_table(rows)
    paired = {
        "E over P2 (speed)": paired_ratio(times["P2"], times["E"]),
        "C over E (efficiency)": paired_ratio(times["C"], times["E"]),
        "E1 over E (one add per client against two a pass)": paired_ratio(times["E1"], times["E"]),
        "C over E's local SGD (the same steps)": paired_ratio(times["C"], [p["local SGD"] for p in phases]),
    }
    print("\nPaired ratios (median of the repetitions' ratios, distribution-free interval):\n")
    print_table(
        [
            {"ratio": name, "median": r["median"], "low": r["low"], "high": r["high"], "level": r["level"]}
            for name, r in paired.items()
        ]
    )
    targets = [
        target(
            name, paired[name]["median"], goal, note=f"interval {paired[name]['low']:.3f}-{paired[name]['high']:.3f}"
        )
        for name, goal in GOALS.items()
    ]
    print_targets(targets)
    results = {
        "seconds_per_round": {name: summary(values) for name, values in times.items()},
        "engine_round_ms_per_client": in_place,
        "fixed_costs_ms_per_client": costs,
        "engine_ms_per_client": per_client_ms,
        "paired_ratios": paired,
        "ratio_of_medians": {
            "E over P2 (speed)": medians["P2"] / medians["E"],
            "C over E (efficiency)": medians["C"] / medians["E"],
        },
        "first_round_max_weight_difference_p2_vs_engine": first_round_difference,
        "targets": targets,
    }
    print(f"\nwrote {write_result('small_clients', args, results)}")
    return results


def _in_place_phases(
    phases: list[collections.Counter[str]], times: dict[str, list[float]], participants: int
) -> dict[str, float]:
    """Milliseconds per client of E's rounds: its restores, its local SGD, the rest (accumulate, aggregate,
    sampling), beside C's time for as many images (C's round over the participants), medians over the repetitions."""

    def per_client(values) -> float:
        return 1e3 * statistics.median(values) / participants

    return {
        "restore": per_client(p["restore"] for p in phases),
        "local SGD": per_client(p["local SGD"] for p in phases),
        "the rest (accumulate, aggregate, sampling)": per_client(
            e - p["restore"] - p["local SGD"] for p, e in zip(phases, times["E"], strict=True)
        ),
        "C, as many images": per_client(times["C"]),
    }


def _first_round_difference(sim: Simulation, p2: InPlaceLoop, method, seed: int) -> float:
    """Round 0 from the same weights in E and P2: the largest difference of the resulting weights (float64 against
    float32 sums, so about float32 rounding)."""
    method.round(sim, seed, 0)
    p2.round(0)
    engine = {name: tensor for name, tensor in sim.model.state_dict().items() if tensor.is_floating_point()}
    return max(float((engine[name] - p2.state[name]).abs().max()) for name in engine)


if __name__ == "__main__":
    main()
