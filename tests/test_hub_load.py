"""Load: 8 clients pull while another client pushes new versions; bounded in time, nothing lost or corrupted.

(`benchmarks/hub_load.py` measures the same with separate processes and a resnet18-sized checkpoint.)
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from huggingface_hub import HfApi, snapshot_download

import copre_hub
from copre_hub.hub.checkpoint import verify_checkpoint

CLIENTS, PULLS_PER_CLIENT, NEW_VERSIONS = 8, 3, 3
TIME_LIMIT_S = 60


def test_eight_clients_pull_while_another_pushes(hub_server: str, make_checkpoint, tmp_path: Path) -> None:
    folders = [make_checkpoint(tmp_path / f"v{i}", seed=i)[1] for i in range(1 + NEW_VERSIONS)]
    pushed = {verify_checkpoint(folder)["copre_hub"]["sha256"] for folder in folders}
    copre_hub.push(folders[0], "org/busy")
    pulled: list[str] = []
    errors: list[BaseException] = []

    def pusher() -> None:
        try:
            for folder in folders[1:]:
                copre_hub.push(folder, "org/busy")
        except BaseException as error:  # reported by the assertions below
            errors.append(error)

    def puller(client: int) -> None:
        try:
            for pull in range(PULLS_PER_CLIENT):  # a fresh cache each time: every pull downloads every file
                cache = tmp_path / "clients" / f"{client}-{pull}"
                folder = snapshot_download("org/busy", endpoint=hub_server, cache_dir=cache)
                pulled.append(verify_checkpoint(folder)["copre_hub"]["sha256"])  # weights match their config
        except BaseException as error:  # reported by the assertions below
            errors.append(error)

    threads = [threading.Thread(target=puller, args=(client,)) for client in range(CLIENTS)]
    threads.append(threading.Thread(target=pusher))
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIME_LIMIT_S)
    elapsed = time.monotonic() - started

    assert elapsed < TIME_LIMIT_S and not any(thread.is_alive() for thread in threads)
    assert not errors, errors[0]
    assert len(pulled) == CLIENTS * PULLS_PER_CLIENT and set(pulled) <= pushed
    commits = HfApi(endpoint=hub_server).list_repo_commits("org/busy")
    assert len(commits) == 2 + NEW_VERSIONS  # the initial commit, then every push: none lost
    latest = copre_hub.pull("org/busy")
    assert verify_checkpoint(latest)["copre_hub"]["sha256"] == verify_checkpoint(folders[-1])["copre_hub"]["sha256"]
