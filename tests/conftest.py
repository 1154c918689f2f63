"""Shared fixtures. Real data comes from $COPRE_HUB_DATA, else ../shared/data beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("COPRE_HUB_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Decoded-tensor cache per test session, so tests never touch the user's cache."""
    os.environ["COPRE_HUB_CACHE"] = str(tmp_path_factory.mktemp("copre-cache"))


@pytest.fixture
def data_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Folder of the real datasets (skips when it is absent); exported as COPRE_HUB_DATA."""
    if not (DATA_DIR / "cifar100").is_dir():
        pytest.skip(f"real data not found at {DATA_DIR}; set COPRE_HUB_DATA to the shared/data folder")
    monkeypatch.setenv("COPRE_HUB_DATA", str(DATA_DIR))
    return DATA_DIR


# -- hub: a `copre-hub serve` endpoint on an ephemeral loopback port, a temporary HF_HOME, a tiny checkpoint --------

HUB_TOKEN = "copre-hub-test-token"


@pytest.fixture(scope="session")
def hub_token() -> str:
    """The token the test endpoints accept (also exported as HF_TOKEN by ``hub_env``)."""
    return HUB_TOKEN


@pytest.fixture
def hub_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary HF_HOME, the test token as HF_TOKEN, online mode and the default organisation; returns HF_HOME."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "COPRE_HUB_ORG", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def hub_server(tmp_path: Path, hub_env: Path, monkeypatch: pytest.MonkeyPatch):
    """The serve endpoint (uvicorn in a background thread, storage in tmp_path) with HF_ENDPOINT set; yields its URL."""
    from copre_hub.hub.serve.server import running

    with running(tmp_path / "hub-storage", tokens=[HUB_TOKEN]) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        yield url


@pytest.fixture(scope="session")
def make_checkpoint():
    """Factory: ``make_checkpoint(folder, seed)`` writes a seeded timm ``test_resnet`` checkpoint (7 classes at 32x32
    by default) with save_checkpoint and returns ``(model, folder)``."""
    import timm
    import torch

    from copre_hub.hub.checkpoint import save_checkpoint

    def make(folder: Path, seed: int = 0, num_classes: int = 7, **meta):
        torch.manual_seed(seed)
        model = timm.create_model("test_resnet", num_classes=num_classes)
        meta = {
            "model_id": "test-resnet-tiny",
            "method": "coprefl",
            "data": {"dataset": "cifar100"},
            "seed": seed,
            **meta,
        }
        save_checkpoint(
            model,
            folder,
            architecture="test_resnet",
            model_args={},
            num_classes=num_classes,
            input_size=(3, 32, 32),
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            copre_hub_meta=meta,
        )
        return model, folder

    return make


@pytest.fixture
def unpublished_id(monkeypatch: pytest.MonkeyPatch) -> str:
    """A published id with no weights and no card, added to the registry for one test: every real id may be
    pinned, and what an id without weights does must stay tested."""
    from copre_hub.hub import ids

    row = ids.PublishedModel("copreFL-resnet50-cifar100", "coprefl", "resnet50", "cifar100", "a test's row")
    monkeypatch.setattr(ids, "PUBLISHED", (*ids.PUBLISHED, row))
    return row.name


@pytest.fixture
def tiny_checkpoint(tmp_path: Path, make_checkpoint):
    """A timm ``test_resnet`` (7 classes, 32x32) and its checkpoint folder: ``(model, folder)``."""
    return make_checkpoint(tmp_path / "checkpoint", seed=0)
