"""Target 2: the engine against the usual research-code loop, per round and in peak memory, 100 to 10,000 clients.

    python benchmarks/vs_research_loop.py                        # resnet18, 20 participants, 100 and 10,000 clients
    python benchmarks/vs_research_loop.py --arch test_resnet --sizes 10 100 --client-size 20 --participants 2

The usual loop (:class:`ResearchLoop`) is written the way most FL research code is (e.g. shaoxiongji/
federated-learning, with CoPreFL's meta-step added in the same style): per round, a ``copy.deepcopy`` of the
global model for each participant, a per-client ``DataLoader`` over a ``Dataset`` that yields one sample at a
time, a list of the clients' state dicts (deep-copied) averaged key by key at the end, and for CoPreFL a list of
per-client query gradients combined parameter by parameter. The engine runs the same method, model, data,
participants, local epochs and batch size.

Each (loop, federation size) runs in a fresh process; its peak memory is the process's RSS high-water mark
(``ru_maxrss``), reported with the RSS just before the loop was set up (imports and data), so the loop's own
share shows. Data is synthetic and built in blocks of ``--distinct`` clients' worth of images that larger
federations reuse (each client still has its own entry), so data memory is the same at every size and what grows,
if anything, is what a loop keeps per client.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import (
    common_args,
    create_model,
    normalizer,
    print_table,
    print_targets,
    run_worker,
    seconds,
    set_threads,
    summary,
    synthetic_federation,
    target,
    worker_output,
    write_result,
)
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

import copre_hub.fl.models  # noqa: F401  (timm and copre-hub's models imported before anything is measured)
from copre_hub.fl.methods import create_method
from copre_hub.fl.simulation import Simulation

MEMORY_GOAL = 1.05  # the engine's own memory at the largest federation over the smallest


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--method", choices=("coprefl", "fedavg"), default="coprefl")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000], help="numbers of clients")
    parser.add_argument("--participants", type=int, default=20)
    parser.add_argument("--client-size", type=int, default=480)
    parser.add_argument("--distinct", type=int, default=100, help="distinct client data blocks (see above)")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="rounds timed in each process (median reported)")
    parser.add_argument("--worker", choices=("research", "engine"), help=argparse.SUPPRESS)
    args = common_args(parser, repeats=1).parse_args(argv)
    if args.worker:
        return worker(args)

    runs = []
    for clients in args.sizes:
        for loop in ("research", "engine"):
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                *(argv or sys.argv[1:]),
                "--worker",
                loop,
                "--sizes",
                str(clients),
            ]
            runs.append({"loop": loop, "clients": clients, **run_worker(command)})
    for r in runs:
        r["loop_mb"] = r["peak_rss_mb"] - r["rss_before_mb"]  # what the loop itself added at its peak
    rows = [
        {
            "loop": r["loop"],
            "clients": r["clients"],
            "setup s": r["setup_seconds"],
            "s/round": r["round_seconds"]["median"],
            "RSS before loop MB": r["rss_before_mb"],
            "peak RSS MB": r["peak_rss_mb"],
            "loop's own MB": r["loop_mb"],
        }
        for r in runs
    ]
    print(
        f"{args.method}, {args.arch}, {args.participants} participants x {args.client_size} images, "
        f"{args.local_epochs} local epoch(s), batch {args.batch_size}\n"
    )
    print_table(rows)

    def pick(loop: str, clients: int) -> dict:
        return next(r for r in runs if r["loop"] == loop and r["clients"] == clients)

    small, large = min(args.sizes), max(args.sizes)
    targets = [
        target(
            f"2 speed: research s/round over engine s/round, {n} clients",
            pick("research", n)["round_seconds"]["median"] / pick("engine", n)["round_seconds"]["median"],
            1.0,
        )
        for n in args.sizes
    ]
    targets.append(
        target(
            f"2 engine's own memory flat: {large} over {small} clients",
            pick("engine", large)["loop_mb"] / pick("engine", small)["loop_mb"],
            MEMORY_GOAL,
            higher_is_better=False,
            note="peak RSS minus RSS before the loop",
        )
    )
    targets.append(
        target(
            f"2 research loop's own memory over the engine's, {large} clients",
            pick("research", large)["loop_mb"] / pick("engine", large)["loop_mb"],
            1.0,
        )
    )
    research_growth = pick("research", large)["loop_mb"] / pick("research", small)["loop_mb"]
    setup_growth = pick("research", large)["setup_seconds"] / pick("research", small)["setup_seconds"]
    print_targets(targets)
    print(
        f"\nresearch loop, {small} -> {large} clients: own memory x{research_growth:.3f}, "
        f"setup time x{setup_growth:.2f}"
    )
    results = {
        "runs": runs,
        "targets": targets,
        "research_own_memory_growth": research_growth,
        "research_setup_growth": setup_growth,
        "memory": "ru_maxrss of a fresh process per configuration; own = peak minus RSS before the loop was set up",
    }
    print(f"wrote {write_result('vs_research_loop', args, results)}")
    return results


def worker(args: argparse.Namespace) -> dict:
    """One (loop, federation size) in this fresh process: setup, then ``--rounds`` timed rounds."""
    set_threads(args.threads)
    clients = args.sizes[0]
    data = synthetic_federation(clients, args.client_size, args.seed, distinct=args.distinct)
    before = _rss_mb()
    method = create_method(
        args.method,
        rounds=args.rounds,
        participants=args.participants,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
    )
    began = time.perf_counter()
    model = create_model(args.arch, data.num_classes, seed=args.seed)
    if args.worker == "engine":
        sim = Simulation(model, data)
        method.validate(data)

        def play(t: int) -> None:
            method.round(sim, args.seed, t)
    else:
        play = ResearchLoop(model, data, method, args.seed).round
    setup_seconds = time.perf_counter() - began
    rounds = [seconds(lambda t=t: play(t)) for t in range(args.rounds)]
    result = {
        "setup_seconds": setup_seconds,
        "round_seconds": summary(rounds),
        "rss_before_mb": before,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    worker_output(result)
    return result


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class DatasetSplit(Dataset):
    """The usual per-client dataset: a list of indices, one normalised sample per ``__getitem__``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, idxs: np.ndarray) -> None:
        self.images, self.labels, self.idxs = images, labels, idxs
        self.normalize = normalizer("cpu")

    def __len__(self) -> int:
        return len(self.idxs)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(self.idxs[item])
        return self.normalize(self.images[i : i + 1])[0], self.labels[i]


class ResearchLoop:
    """FedAvg / CoPreFL rounds as research code usually writes them (see the module docstring).

    ``method`` supplies the hyperparameters only (participants, epochs, batch size, learning rates, gamma).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        data,
        method,
        seed: int,
        device: str = "cpu",
        precision: str = "no",
        channels_last: bool = False,
    ) -> None:
        self.device = torch.device(device)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net_glob = model.to(self.device, memory_format=memory_format)
        self.channels_last = channels_last
        self.images, self.labels = data.images, data.labels
        self.dict_users = {c: data.clients[c].numpy() for c in range(data.num_clients)}
        self.method = method
        self.seed = seed
        self.precision = precision
        self.images_seen = 0  # training and query images through forward and backward

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(self, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.to(self.device), y.to(self.device)
        self.images_seen += len(y)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            logits = net(x)
        return F.cross_entropy(logits.float(), y)

    def round(self, t: int) -> float:
        m = self.method
        rng = np.random.default_rng([self.seed, t])
        idxs_users = rng.choice(len(self.dict_users), m.participants, replace=False)
        w_locals, sizes, queries, losses = [], [], [], []
        for idx in idxs_users:
            idxs = rng.permutation(self.dict_users[idx])
            n_query = int(len(idxs) * m.query_fraction) if m.name == "coprefl" else 0
            queries.append(idxs[:n_query])
            net = copy.deepcopy(self.net_glob)
            w, loss = self.local_update(net, idxs[n_query:])
            w_locals.append(copy.deepcopy(w))
            sizes.append(len(idxs) - n_query)
            losses.append(loss)
        self.net_glob.load_state_dict(fed_avg(w_locals, sizes))
        if m.name == "coprefl":
            self.meta_step(queries)
        return statistics.mean(losses)

    def local_update(self, net: torch.nn.Module, idxs: np.ndarray) -> tuple[dict, float]:
        loader = DataLoader(
            DatasetSplit(self.images, self.labels, idxs), batch_size=self.method.batch_size, shuffle=True
        )
        optimizer = torch.optim.SGD(net.parameters(), lr=self.method.lr)
        net.train()
        batch_loss = []
        for _ in range(self.method.local_epochs):
            for x, y in loader:
                optimizer.zero_grad()
                loss = self.forward(net, x, y)
                loss.backward()
                optimizer.step()
                batch_loss.append(loss.item())
        return net.state_dict(), sum(batch_loss) / len(batch_loss)

    def meta_step(self, queries: list[np.ndarray]) -> None:
        """CoPreFL's variance-aware step at the averaged model: a list of per-client query gradients."""
        m = self.method
        params = list(self.net_glob.parameters())
        losses, grads = [], []
        for idxs in queries:
            x, y = next(iter(DataLoader(DatasetSplit(self.images, self.labels, idxs), batch_size=len(idxs))))
            loss = self.forward(self.net_glob, x, y)
            grads.append(torch.autograd.grad(loss, params))
            losses.append(loss.item())
        mean = sum(losses) / len(losses)
        coefficients = [m.gamma + (1 - m.gamma) * 2 / len(losses) * (loss - mean) for loss in losses]
        with torch.no_grad():
            for i, p in enumerate(params):
                p -= m.meta_lr * sum(c * g[i] for c, g in zip(coefficients, grads, strict=True))


def fed_avg(w: list[dict], sizes: list[int]) -> dict:
    """The usual key-by-key weighted average of a list of state dicts (integer buffers taken from the first)."""
    w_avg = copy.deepcopy(w[0])
    total = sum(sizes)
    for k in w_avg:
        if w_avg[k].is_floating_point():
            w_avg[k] = sum(w[i][k] * (sizes[i] / total) for i in range(len(w)))
    return w_avg


if __name__ == "__main__":
    main()
