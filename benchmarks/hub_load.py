"""Load on `copre-hub serve`: N client processes pull a checkpoint while another process pushes new versions.

    python benchmarks/hub_load.py --clients 8 --pulls 3 --pushes 3 --arch resnet18

The endpoint is the real `copre-hub serve` command on a free loopback port; every client is a separate process with
its own fresh Hugging Face cache for each pull (so every pull downloads every file) and checks the pulled weights
against the sha256 in their config.json. Prints a table and writes benchmarks/results/hub-load.json; exits non-zero
if any pull failed or was corrupted, or if a push was lost.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = "hub-load-benchmark"
REPO = "bench/busy"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent pulling processes")
    parser.add_argument("--pulls", type=int, default=3, help="pulls per client")
    parser.add_argument("--pushes", type=int, default=3, help="new versions pushed while the clients pull")
    parser.add_argument("--arch", default="resnet18", help="timm architecture of the checkpoint")
    parser.add_argument("--num-classes", type=int, default=80)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hub-load-") as tmp:
        root = Path(tmp)
        folders = [_checkpoint(root / f"v{i}", args.arch, args.num_classes, seed=i) for i in range(1 + args.pushes)]
        size_mb = sum(path.stat().st_size for path in folders[0].iterdir()) / 1e6
        server, url = _start_server(root)
        try:
            os.environ.update(HF_ENDPOINT=url, HF_TOKEN=TOKEN, HF_HOME=str(root / "home"))
            import copre_hub

            copre_hub.push(folders[0], REPO)
            context = multiprocessing.get_context("spawn")
            with context.Manager() as manager, ProcessPoolExecutor(args.clients + 1, mp_context=context) as pool:
                barrier = manager.Barrier(args.clients + 1)
                pulls = [
                    pool.submit(_puller, url, root / f"client{c}", args.pulls, barrier) for c in range(args.clients)
                ]
                push = pool.submit(_pusher, url, folders[1:], barrier)
                pull_results = [future.result() for future in pulls]
                push_result = push.result()
            from huggingface_hub import HfApi

            commits = len(HfApi(endpoint=url).list_repo_commits(REPO))
        finally:
            server.terminate()
            server.wait(timeout=30)

    result = _summary(args, size_mb, pull_results, push_result, commits)
    _print_table(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hub-load.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {RESULTS / 'hub-load.json'}")
    ok = result["pull"]["errors"] == result["pull"]["corrupted"] == result["push"]["errors"] == 0
    sys.exit(0 if ok and result["lost_pushes"] == 0 else 1)


def _checkpoint(folder: Path, arch: str, num_classes: int, seed: int) -> Path:
    import timm
    import torch

    from copre_hub.hub.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=num_classes)
    return save_checkpoint(
        model,
        folder,
        architecture=arch,
        model_args={},
        num_classes=num_classes,
        input_size=(3, 32, 32),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        copre_hub_meta={"model_id": "hub-load", "seed": seed},
    )


def _start_server(root: Path) -> tuple[subprocess.Popen[str], str]:
    (root / "tokens").write_text(TOKEN + "\n")
    command = [
        sys.executable,
        "-m",
        "copre_hub.cli",
        "serve",
        "--storage",
        str(root / "storage"),
        "--port",
        "0",
        "--token-file",
        str(root / "tokens"),
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    banner = server.stdout.readline()
    if not banner.startswith("copre-hub serve: http://"):
        server.kill()
        raise SystemExit(f"copre-hub serve did not start: {banner!r}")
    return server, banner.split()[2]


def _puller(url: str, cache_root: Path, pulls: int, barrier) -> dict:
    """One client: ``pulls`` downloads, each into a fresh cache, each verified against its recorded sha256."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    from copre_hub.errors import CheckpointError
    from copre_hub.hub.checkpoint import verify_checkpoint

    disable_progress_bars()
    barrier.wait()
    latencies, seen, errors, corrupted, megabytes = [], [], 0, 0, 0.0
    for pull in range(pulls):
        began = time.perf_counter()
        try:
            folder = Path(snapshot_download(REPO, endpoint=url, cache_dir=cache_root / str(pull), token=TOKEN))
            seen.append(verify_checkpoint(folder)["copre_hub"]["sha256"])
            megabytes += sum(path.stat().st_size for path in folder.iterdir()) / 1e6
        except CheckpointError:
            corrupted += 1
        except Exception:  # counted: the benchmark reports failures instead of stopping at the first
            errors += 1
        latencies.append(time.perf_counter() - began)
    return {"latencies": latencies, "seen": seen, "errors": errors, "corrupted": corrupted, "megabytes": megabytes}


def _pusher(url: str, folders: list[Path], barrier) -> dict:
    os.environ.update(HF_ENDPOINT=url, HF_TOKEN=TOKEN)
    import copre_hub
    import copre_hub.fl.models  # push checks configs against timm: import it before the clock runs

    barrier.wait()
    latencies, errors = [], 0
    for folder in folders:
        began = time.perf_counter()
        try:
            copre_hub.push(folder, REPO)
        except Exception:  # counted, see _puller
            errors += 1
        latencies.append(time.perf_counter() - began)
    return {"latencies": latencies, "errors": errors}


def _summary(args: argparse.Namespace, size_mb: float, pulls: list[dict], push: dict, commits: int) -> dict:
    def stats(latencies: list[float]) -> dict:
        ordered = sorted(latencies)
        return {
            "ops": len(ordered),
            "p50_s": statistics.median(ordered),
            "p95_s": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
            "max_s": ordered[-1],
        }

    pull_latencies = [latency for result in pulls for latency in result["latencies"]]
    megabytes = sum(result["megabytes"] for result in pulls)
    wall = max(sum(result["latencies"]) for result in pulls)
    return {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "setup": {
            "clients": args.clients,
            "pulls_per_client": args.pulls,
            "pushes": args.pushes,
            "arch": args.arch,
            "checkpoint_mb": round(size_mb, 1),
        },
        "pull": {
            **stats(pull_latencies),
            "megabytes": round(megabytes, 1),
            "mb_per_s": round(megabytes / wall, 1),
            "errors": sum(r["errors"] for r in pulls),
            "corrupted": sum(r["corrupted"] for r in pulls),
            "versions_seen": len({sha for r in pulls for sha in r["seen"]}),
        },
        "push": {**stats(push["latencies"]), "errors": push["errors"]},
        "lost_pushes": (1 + args.pushes - push["errors"]) - (commits - 1),
    }


def _print_table(result: dict) -> None:
    setup = result["setup"]
    print(
        f"\n{setup['clients']} clients x {setup['pulls_per_client']} pulls of a {setup['checkpoint_mb']} MB "
        f"{setup['arch']} checkpoint while {setup['pushes']} new versions are pushed\n"
    )
    header = f"{'role':<6}{'ops':>5}{'p50 s':>9}{'p95 s':>9}{'max s':>9}{'MB/s':>9}{'errors':>8}{'corrupt':>9}"
    print(header)
    print("-" * len(header))
    pull, push = result["pull"], result["push"]
    print(
        f"{'pull':<6}{pull['ops']:>5}{pull['p50_s']:>9.2f}{pull['p95_s']:>9.2f}{pull['max_s']:>9.2f}"
        f"{pull['mb_per_s']:>9.1f}{pull['errors']:>8}{pull['corrupted']:>9}"
    )
    print(
        f"{'push':<6}{push['ops']:>5}{push['p50_s']:>9.2f}{push['p95_s']:>9.2f}{push['max_s']:>9.2f}"
        f"{'':>9}{push['errors']:>8}{'':>9}"
    )
    print(
        f"\nversions seen by the pulls: {pull['versions_seen']} of {1 + setup['pushes']}; "
        f"lost pushes: {result['lost_pushes']}"
    )


if __name__ == "__main__":
    main()
