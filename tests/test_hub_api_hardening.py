"""The Hub client under hostile or broken conditions: stored tokens, racing pushes, reset connections, oversized card
metadata, a misspelt HF_ENDPOINT; and timm's habits in ``load`` (``pretrained``, ``cache_dir``,
``checkpoint_path``)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import safetensors.torch
import torch
from huggingface_hub import HfApi, constants

import copre_hub
from copre_hub.errors import (
    AuthError,
    CheckpointError,
    ConfigError,
    ConflictError,
    HubEndpointError,
    ModelNotFoundError,
)
from copre_hub.hub.serve.app import create_app
from copre_hub.hub.serve.server import serving
from copre_hub.hub.serve.storage import RepoStore

REPO = "org/tiny"
ROOT = Path(__file__).resolve().parents[1]


def alias_bomb(levels: int = 7) -> str:
    lines = ["a0: &a0 [" + ",".join(['"lol"'] * 10) + "]"]
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels + 1)]
    return "---\n" + "\n".join(lines) + "\n---\n# a card\n"


# -- tokens ---------------------------------------------------------------------------------------------------------


class _RecordingApp:
    """ASGI middleware keeping the Authorization header of every request (None when absent)."""

    def __init__(self, app) -> None:
        self.app = app
        self.authorizations: list[str | None] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            self.authorizations.append(headers.get(b"authorization", b"").decode() or None)
        await self.app(scope, receive, send)


@pytest.fixture
def recording_hub(tmp_path: Path, hub_env: Path, hub_token: str, monkeypatch, make_checkpoint):
    """An endpoint recording request headers, holding ``org/tiny`` (pushed with HF_TOKEN), with a stored login in
    ``$HF_HOME/token`` and HF_TOKEN unset afterwards; yields the recorder."""
    app = _RecordingApp(create_app(RepoStore(tmp_path / "storage"), tokens=[hub_token]))
    with serving(app) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        copre_hub.push(make_checkpoint(tmp_path / "ck")[1], REPO)
        stored = tmp_path / "stored-token"
        stored.write_text("hf_stored_huggingface_co_token")
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(stored))
        monkeypatch.delenv("HF_TOKEN")
        app.authorizations.clear()
        yield app


def test_no_stored_token_is_sent_to_a_self_hosted_endpoint(recording_hub: _RecordingApp, monkeypatch) -> None:
    copre_hub.load(REPO)
    copre_hub.pull(REPO)
    copre_hub.info(REPO)
    copre_hub.list_models(remote=True, author="org")
    assert len(recording_hub.authorizations) >= 4
    assert set(recording_hub.authorizations) == {None}

    monkeypatch.setenv("COPRE_HUB_STORED_TOKEN", "1")  # the documented opt-in
    recording_hub.authorizations.clear()
    copre_hub.list_models(remote=True, author="org")
    assert set(recording_hub.authorizations) == {"Bearer hf_stored_huggingface_co_token"}


def test_push_without_a_token_says_none_was_sent(recording_hub: _RecordingApp, tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="none was sent: HF_TOKEN is unset") as caught:
        copre_hub.push(tmp_path / "ck", REPO)
    assert "Invalid credentials" not in str(caught.value) and "\n" not in str(caught.value)
    assert set(recording_hub.authorizations) == {None}


# -- concurrent pushes ----------------------------------------------------------------------------------------------


def test_concurrent_pushes_have_exactly_one_winner(hub_server: str, tmp_path: Path, make_checkpoint, monkeypatch):
    folders = []
    for name in ("a", "b"):
        _, folder = make_checkpoint(tmp_path / name, seed=len(folders))
        (folder / f"extra-{name}.txt").write_text(name)
        folders.append(folder)
    copre_hub.push(make_checkpoint(tmp_path / "base", seed=9)[1], REPO)  # both racers start from this commit
    both_read_the_head = threading.Barrier(2, timeout=30)
    create_commit = HfApi.create_commit

    def racing_commit(self, *args, **kwargs):
        both_read_the_head.wait()
        return create_commit(self, *args, **kwargs)

    monkeypatch.setattr(HfApi, "create_commit", racing_commit)
    outcomes: dict[str, object] = {}

    def push(folder: Path) -> None:
        try:
            outcomes[folder.name] = copre_hub.push(folder, REPO)
        except Exception as error:
            outcomes[folder.name] = error

    threads = [threading.Thread(target=push, args=(folder,)) for folder in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    errors = [o for o in outcomes.values() if isinstance(o, Exception)]
    winners = [name for name, o in outcomes.items() if not isinstance(o, Exception)]
    assert len(errors) == 1 and len(winners) == 1, outcomes
    assert isinstance(errors[0], ConflictError)
    assert "another push landed first; pull and push again" in str(errors[0])
    files = set(HfApi(endpoint=hub_server).list_repo_files(REPO))
    assert f"extra-{winners[0]}.txt" in files and len([f for f in files if f.startswith("extra-")]) == 1


# -- transport errors -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def resetting_endpoint() -> Iterator[str]:
    """A loopback port that accepts each connection, reads the request and resets it (TCP RST)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError):
                conn.settimeout(2)
                conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_a_reset_connection_is_mapped_and_the_cache_is_used(hub_server, tiny_checkpoint, monkeypatch, caplog):
    model, folder = tiny_checkpoint
    copre_hub.push(folder, REPO)
    copre_hub.pull(REPO)
    with resetting_endpoint() as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        caplog.set_level(logging.WARNING, logger="copre_hub")
        loaded = copre_hub.load(REPO)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
        assert any(url in r.getMessage() and "using the cached revision main" in r.getMessage() for r in caplog.records)
        with pytest.raises(ModelNotFoundError, match=f"{url} cannot be reached .*not in the cache"):
            copre_hub.load("org/never-pulled")
        with pytest.raises(HubEndpointError, match=f"{url} failed \\(.*Error") as caught:
            copre_hub.push(folder, REPO)
        assert "\n" not in str(caught.value)


# -- card metadata --------------------------------------------------------------------------------------------------


def test_alias_bomb_card_is_refused_at_push_and_harmless_on_read(hub_server, tmp_path, make_checkpoint) -> None:
    _, folder = make_checkpoint(tmp_path / "bomb")
    (folder / "README.md").write_text(alias_bomb())
    with pytest.raises(CheckpointError, match="expands to more than 10000 values") as caught:
        copre_hub.push(folder, REPO)
    assert "\n" not in str(caught.value) and str(folder / "README.md") in str(caught.value)
    details = copre_hub.info(folder)  # a folder holding one (from elsewhere) reads with its metadata ignored
    assert details.card == {} and details.eval_results == []


# -- one request to huggingface.co ----------------------------------------------------------------------------------


def test_huggingface_co_is_not_contacted_when_hf_endpoint_is_set_after_import(
    hub_server, tiny_checkpoint, tmp_path, monkeypatch
) -> None:
    from huggingface_hub.utils import _detect_agent

    assert constants.ENDPOINT == "https://huggingface.co"  # huggingface_hub was imported before HF_ENDPOINT was set
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", False)
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "harnesses.json"))
    monkeypatch.setattr(_detect_agent, "_registry", None)  # as in a fresh process
    hosts: list[str] = []
    handle = httpx.HTTPTransport.handle_request

    def record(self, request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        if request.url.host != "127.0.0.1":
            raise httpx.ConnectError("only loopback in this test")
        return handle(self, request)

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", record)
    copre_hub.push(tiny_checkpoint[1], REPO)
    copre_hub.load(REPO)
    copre_hub.list_models(remote=True)
    assert hosts and set(hosts) == {"127.0.0.1"}


# -- HF_ENDPOINT and list --remote (issue 17) -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["localhost:8080", "127.0.0.1:8080", "ftp://hub", "http://"])
def test_hf_endpoint_without_a_scheme_gives_one_line(value: str, hub_env: Path) -> None:
    env = {**os.environ, "HF_ENDPOINT": value, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "copre_hub.cli", "list", "--remote"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "HF_ENDPOINT=" in lines[0] and "http" in lines[0], result.stderr
    if ":" in value and "://" not in value:
        assert f"HF_ENDPOINT=http://{value}" in lines[0]


def test_list_remote_marks_every_repository_on_the_endpoint(hub_server, tiny_checkpoint) -> None:
    copre_hub.push(tiny_checkpoint[1], "my-org/mine")
    copre_hub.pull("my-org/mine")
    listed = {listing.repo_id: listing for listing in copre_hub.list_models(remote=True)}  # no author given
    assert listed["my-org/mine"].on_endpoint and listed["my-org/mine"].cached_revisions
    assert not listed["copre-hub/copreFL-resnet18-cifar100"].on_endpoint


# -- timm's habits in load ------------------------------------------------------------------------------------------


def test_load_accepts_timm_pretrained_and_refuses_false(tiny_checkpoint) -> None:
    model, folder = tiny_checkpoint
    loaded = copre_hub.load(folder, pretrained=True)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match=r"pretrained=False.*timm.create_model\(architecture, pretrained=False\)"):
        copre_hub.load(folder, pretrained=False)


def test_load_honours_cache_dir(hub_server, hub_env, tiny_checkpoint, tmp_path, monkeypatch) -> None:
    copre_hub.push(tiny_checkpoint[1], REPO)
    cache = tmp_path / "elsewhere"
    copre_hub.load(REPO, cache_dir=cache)
    assert (cache / "models--org--tiny" / "snapshots").is_dir()
    assert not (hub_env / "hub" / "models--org--tiny").exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    copre_hub.load(REPO, cache_dir=cache)  # offline: found in that cache
    with pytest.raises(ModelNotFoundError, match="not in the local cache"):
        copre_hub.load(REPO)


def test_load_checkpoint_path_overrides_the_weights_and_names_its_file(tiny_checkpoint, tmp_path, make_checkpoint):
    _, folder = tiny_checkpoint
    other, _ = make_checkpoint(tmp_path / "other", seed=5)
    weights = tmp_path / "fine-tuned.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in other.state_dict().items()}, weights)
    loaded = copre_hub.load(folder, checkpoint_path=weights)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in other.state_dict().items())

    wrong = tmp_path / "wrong.safetensors"
    safetensors.torch.save_file({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(CheckpointError, match=f"checkpoint_path={wrong} does not fit") as caught:
        copre_hub.load(folder, checkpoint_path=wrong)
    assert "model.safetensors" not in str(caught.value)
    with pytest.raises(CheckpointError, match=r"checkpoint_path=.*\.pth: copre-hub loads \.safetensors files only"):
        copre_hub.load(folder, checkpoint_path=tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        copre_hub.load(folder, checkpoint_path=tmp_path / "missing.safetensors")


def test_weights_are_written_readable_by_others(tiny_checkpoint) -> None:
    _, folder = tiny_checkpoint
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"]
    assert modes["model.safetensors"] & 0o044 == 0o044 & ~_umask()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# -- the library logger ---------------------------------------------------------------------------------------------


def test_verbosity_variable_makes_load_say_what_it_resolved(hub_server, hub_env, tiny_checkpoint) -> None:
    copre_hub.push(tiny_checkpoint[1], REPO)
    script = "import copre_hub; copre_hub.load('org/tiny')"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COPRE_HUB_VERBOSITY": "info", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    sha256 = copre_hub.info(REPO).sha256
    assert f"org/tiny: revision main from {hub_server}, commit " in result.stderr
    assert f"loaded org/tiny: sha256 {sha256}" in result.stderr
