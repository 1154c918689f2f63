"""Published initializations: resolution by short id (cache, endpoint, then the source snapshot, all checked against
the registry's pin), `copre-hub publish` and `copre-hub serve --with-published`, with a small snapshot registered as
a published id in a temporary snapshot root (``COPRE_HUB_SNAPSHOTS``), and the real registry's honest state."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import HfApi

import copre_hub
from copre_hub.cli import main
from copre_hub.errors import IntegrityError, ModelNotFoundError, UnpublishedModelError
from copre_hub.hub import ids, snapshots
from copre_hub.hub.cards import card_for_repo
from copre_hub.hub.checkpoint import sha256_file, verify_checkpoint
from copre_hub.hub.publish import publish
from copre_hub.hub.serve.server import running
from copre_hub.hub.serve.stock import stock_published
from copre_hub.hub.serve.storage import RepoStore

NAME = "copreFL-testresnet-tiny"
REPO_ID = f"copre-hub/{NAME}"
CHECKOUT = Path(__file__).resolve().parents[1]


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], skip: str = "\0") -> bool:
    keys = {key for key in a if not key.startswith(skip)}
    return keys == {key for key in b if not key.startswith(skip)} and all(torch.equal(a[k], b[k]) for k in keys)


def register(monkeypatch: pytest.MonkeyPatch, name: str, sha256: str | None) -> ids.PublishedModel:
    row = ids.PublishedModel(name, "coprefl", "test_resnet", "cifar100", "a test snapshot", sha256=sha256)
    monkeypatch.setattr(ids, "PUBLISHED", (*ids.PUBLISHED, row))
    return row


@pytest.fixture
def published(tmp_path: Path, hub_env: Path, monkeypatch: pytest.MonkeyPatch, make_checkpoint) -> SimpleNamespace:
    """A ``test_resnet`` snapshot (the five files) registered as the published id NAME, in a temporary snapshot root
    that also links the checkout's real snapshots (so stocking every published id still finds each one)."""
    root = tmp_path / "snapshots"
    root.mkdir()
    for model in ids.PUBLISHED:
        if model.sha256 is not None:
            (root / model.name).symlink_to(CHECKOUT / "model_cards" / model.name, target_is_directory=True)
    model, folder = make_checkpoint(root / NAME, seed=3, model_id=NAME)
    (folder / "evaluation.json").write_text(json.dumps({"initializations": []}) + "\n")
    (folder / "run.json").write_text(json.dumps({"recipe": {"name": NAME}}) + "\n")
    sha256 = sha256_file(folder / "model.safetensors")
    monkeypatch.setenv("COPRE_HUB_SNAPSHOTS", str(root))
    return SimpleNamespace(
        root=root, folder=folder, weights=model.state_dict(), sha256=sha256, row=register(monkeypatch, NAME, sha256)
    )


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


# -- resolution ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("network", ["offline", "endpoint unreachable"])
def test_short_id_loads_the_snapshot_without_an_endpoint(
    published, network: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if network == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    caplog.set_level(logging.INFO, logger="copre_hub")
    model = copre_hub.load(NAME.upper(), num_classes=5)
    assert model.get_classifier().out_features == 5
    assert same_tensors(published.weights, model.state_dict(), skip="fc.")  # the backbone is the snapshot's
    assert f"loaded {NAME.upper()}: sha256 {published.sha256}, from the snapshot {published.folder}" in caplog.text
    details = copre_hub.info(NAME)
    assert (details.source, details.path, details.sha256) == ("snapshot", published.folder, published.sha256)
    assert copre_hub.pull(NAME) == published.folder


def test_a_snapshot_with_one_flipped_byte_is_refused(published, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _flip_last_byte(published.folder / "model.safetensors")
    found = sha256_file(published.folder / "model.safetensors")
    with pytest.raises(IntegrityError) as caught:
        copre_hub.load(NAME)
    message = str(caught.value)
    assert NAME in message and published.sha256 in message and found in message and "\n" not in message


def test_an_endpoint_copy_with_other_weights_is_refused_not_replaced(
    published, hub_server: str, make_checkpoint, tmp_path: Path
) -> None:
    other_model, other = make_checkpoint(tmp_path / "other", seed=4, model_id=NAME)
    copre_hub.push(other, REPO_ID, tag="v1")
    with pytest.raises(IntegrityError) as caught:
        copre_hub.load(NAME)
    message = str(caught.value)
    assert NAME in message and published.sha256 in message and sha256_file(other / "model.safetensors") in message
    # An explicit revision other than v1 is any Hub revision: no pin applies.
    assert same_tensors(other_model.state_dict(), copre_hub.load(f"{REPO_ID}@main").state_dict())


def test_a_wheel_install_says_where_snapshots_are(published, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(snapshots, "snapshot_root", lambda: None)
    with pytest.raises(ModelNotFoundError) as caught:
        copre_hub.load(NAME)
    message = str(caught.value)
    assert "a wheel ships none" in message and "COPRE_HUB_SNAPSHOTS" in message
    assert "serve --with-published" in message and "HF_HUB_OFFLINE=1" in message


def test_a_source_checkout_finds_its_model_cards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COPRE_HUB_SNAPSHOTS", raising=False)
    assert snapshots.snapshot_root() == CHECKOUT / "model_cards"


# -- publish and serve --with-published ---------------------------------------------------------------------------


def test_publish_then_load_by_id_through_the_endpoint(
    published, hub_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    api = HfApi(endpoint=hub_server)
    [first] = publish([NAME])
    assert first.status == "published"
    assert sorted(api.list_repo_files(REPO_ID)) == sorted(snapshots.snapshot_files(published.folder))
    assert [tag.target_commit for tag in api.list_repo_refs(REPO_ID).tags if tag.name == "v1"] == [first.commit]
    commits = len(api.list_repo_commits(REPO_ID))

    assert main(["publish", NAME]) == 0  # the second publish
    assert "unchanged" in capsys.readouterr().out
    assert len(api.list_repo_commits(REPO_ID)) == commits

    monkeypatch.setenv("COPRE_HUB_SNAPSHOTS", str(tmp_path / "no-snapshots"))  # only the endpoint can serve it now
    assert copre_hub.info(NAME).source == "endpoint"
    assert same_tensors(published.weights, copre_hub.load(NAME).state_dict())
    assert copre_hub.info(NAME).source == "cache"  # pinned: the cached copy needs no endpoint


def test_publish_adds_only_the_tag_when_main_already_holds_the_weights(published, hub_server: str) -> None:
    commit = copre_hub.push(published.folder, REPO_ID)
    [outcome] = publish([NAME])
    assert (outcome.status, outcome.commit) == ("tagged", commit.oid)
    assert len(HfApi(endpoint=hub_server).list_repo_commits(REPO_ID)) == 2  # the initial commit and the push


def test_publish_refuses_a_flipped_snapshot(published, hub_server: str) -> None:
    _flip_last_byte(published.folder / "model.safetensors")
    with pytest.raises(IntegrityError, match=published.sha256):
        publish([NAME])
    assert not HfApi(endpoint=hub_server).repo_exists(REPO_ID)


def test_plain_timm_loads_the_snapshot_and_the_published_repository(published, hub_server: str, tmp_path) -> None:
    local = timm.create_model(f"local-dir:{published.folder}", pretrained=True)
    assert same_tensors(published.weights, local.state_dict())
    publish([NAME])
    env = {**os.environ, "HF_ENDPOINT": hub_server, "HF_HOME": str(tmp_path / "fresh-home")}
    out = tmp_path / "timm.safetensors"
    code = (
        "import sys, timm, safetensors.torch as st; "
        f"m = timm.create_model('hf-hub:{REPO_ID}@v1', pretrained=True); st.save_file(m.state_dict(), sys.argv[1])"
    )
    result = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert same_tensors(published.weights, safetensors.torch.load_file(out))


def test_a_stocked_store_serves_the_published_repositories(
    published, unpublished_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RepoStore(tmp_path / "store")
    assert any(line.startswith(f"{NAME}: stocked {REPO_ID}@v1") for line in stock_published(store))
    assert any(line.startswith(f"{NAME}: unchanged") for line in stock_published(store))  # a restart commits nothing
    skipped = f"{unpublished_id}: skipped, no published weights yet"
    assert any(line.startswith(skipped) for line in stock_published(store))
    with running(store.root, tokens=[]) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("COPRE_HUB_SNAPSHOTS", str(tmp_path / "no-snapshots"))
        assert len(HfApi(endpoint=url).list_repo_commits(REPO_ID)) == 2
        assert copre_hub.info(NAME).source == "endpoint"
        assert same_tensors(published.weights, copre_hub.load(NAME).state_dict())


def test_serve_with_published_command(published, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real command in its own process, with this test's registry row added before it runs.
    code = (
        "import sys; from copre_hub.hub import ids; "
        f"ids.PUBLISHED += (ids.PublishedModel({NAME!r}, 'coprefl', 'test_resnet', 'cifar100', 'test', "
        f"sha256={published.sha256!r}),); "
        "from copre_hub.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    command = [sys.executable, "-c", code, "serve", "--with-published", "--storage", str(tmp_path / "store")]
    server = subprocess.Popen([*command, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = server.stdout.readline()
        assert banner.startswith("copre-hub serve: http://127.0.0.1:"), banner + server.stderr.read()
        lines = [server.stdout.readline() for _ in ids.PUBLISHED]
        assert any(f"{NAME}: stocked {REPO_ID}@v1" in line for line in lines), lines
        monkeypatch.setenv("HF_ENDPOINT", banner.split()[2])
        monkeypatch.setenv("COPRE_HUB_SNAPSHOTS", str(tmp_path / "no-snapshots"))
        assert same_tensors(published.weights, copre_hub.load(NAME).state_dict())
    finally:
        server.terminate()
        server.wait(timeout=10)


# -- ids without published weights, and the real registry ---------------------------------------------------------


def test_an_id_without_weights_is_one_line(
    hub_server: str,
    unpublished_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("COPRE_HUB_SNAPSHOTS", raising=False)
    with pytest.raises(UnpublishedModelError) as caught:
        copre_hub.load(unpublished_id, num_classes=5)
    message = str(caught.value)
    assert f"{unpublished_id!r} has no published weights yet (its card: none yet)" in message and "\n" not in message
    assert f"training/recipes/{unpublished_id}.toml" in message
    assert main(["info", unpublished_id]) == 2
    err = capsys.readouterr().err
    assert "no published weights yet" in err and err.count("\n") == 1
    assert main(["publish"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(ids.PUBLISHED)
    for model, line in zip(ids.PUBLISHED, out, strict=True):
        assert ("skipped, no published weights yet" in line) == (model.sha256 is None), line
    assert main(["list"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if f"/{unpublished_id} " in line]
    assert line.endswith("(not trained yet: no card in model_cards/)")  # the test's row has no card either
    cards = tmp_path / "model_cards"  # a card committed before its weights: listed as having no weights yet
    (cards / unpublished_id).mkdir(parents=True)
    (cards / unpublished_id / "README.md").write_text("# a card\n")
    monkeypatch.setattr("copre_hub.cli.hub._published_cards_dir", lambda: cards)
    assert main(["list"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if f"/{unpublished_id} " in line]
    assert line.endswith("(no published weights yet)")


@pytest.mark.parametrize("model", ids.PUBLISHED, ids=lambda model: model.name)
def test_the_source_tree_holds_exactly_the_pinned_weights(model: ids.PublishedModel) -> None:
    folder = CHECKOUT / "model_cards" / model.name
    if model.sha256 is None:  # not published yet: the folder may hold its card, never weights
        assert not (folder / "model.safetensors").exists()
        return
    assert sorted(snapshots.snapshot_files(folder)) == sorted(snapshots.SNAPSHOT_FILES)
    assert sha256_file(folder / "model.safetensors") == model.sha256
    assert verify_checkpoint(folder)["copre_hub"]["sha256"] == model.sha256
    assert f"sha256 `{model.sha256}`" in (folder / "README.md").read_text()


WITH_WEIGHTS = [model for model in ids.PUBLISHED if model.sha256 is not None]


@pytest.mark.parametrize("model", WITH_WEIGHTS, ids=lambda model: model.name)
def test_a_published_id_loads_offline_from_a_fresh_checkout(
    model: ids.PublishedModel, hub_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the README's first Python line does on a machine with an empty cache and no network.
    monkeypatch.delenv("COPRE_HUB_SNAPSHOTS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = CHECKOUT / "model_cards" / model.name
    loaded = copre_hub.load(model.name, num_classes=10)
    assert loaded.get_classifier().out_features == 10
    pinned = safetensors.torch.load_file(folder / "model.safetensors")
    head = loaded.default_cfg["classifier"] + "."
    assert same_tensors(pinned, loaded.state_dict(), skip=head)  # the backbone is exactly the pinned snapshot's
    details = copre_hub.info(model.name)
    assert (details.source, details.path, details.sha256) == ("snapshot", folder, model.sha256)
    plain = timm.create_model(f"local-dir:{folder}", pretrained=True)  # copre_hub imported: its architectures exist
    assert same_tensors(pinned, plain.state_dict())


@pytest.mark.parametrize("model", WITH_WEIGHTS, ids=lambda model: model.name)
def test_a_snapshot_card_is_already_the_published_repositorys(model: ids.PublishedModel) -> None:
    # Pushed as it is (publish, serve --with-published), the folder is the repository: its card needs no rewrite.
    folder = CHECKOUT / "model_cards" / model.name
    card = (folder / "README.md").read_text()
    config = json.loads((folder / "config.json").read_text())
    assert card_for_repo(card, config, ids.published_repo_id(model)) == card
    assert f'copre_hub.load("{ids.published_repo_id(model)}"' in card


def test_some_published_id_has_weights() -> None:
    assert WITH_WEIGHTS, "no published id pins weights: the README's first Python line cannot work"


def test_publish_and_serve_say_what_they_do(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["publish", "--help"], ["serve", "--help"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "usage: copre-hub publish" in out and "tagged v1" in out and "--with-published" in out


def test_publish_rejects_ids_that_are_not_published(hub_server: str) -> None:
    with pytest.raises(ValueError, match="not a published id: org/tiny"):
        publish(["org/tiny"])


def test_a_copy_in_a_test_root_is_found_before_the_checkout(published) -> None:
    assert snapshots.snapshot(published.row) == published.folder
    shutil.rmtree(published.folder)
    with pytest.raises(ModelNotFoundError, match=f"no snapshot of '{NAME}' with weights at"):
        snapshots.snapshot(published.row)
