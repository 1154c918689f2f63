"""copre_hub.load / pull / push / list_models / info end to end: the real huggingface_hub client over HTTP against
`copre-hub serve` on a loopback port, with a temporary HF_HOME."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch
from huggingface_hub import HfApi

import copre_hub
from copre_hub.errors import (
    AuthError,
    CheckpointError,
    ConfigError,
    IntegrityError,
    ModelNotFoundError,
    OfflineModelNotCachedError,
    RevisionNotFoundError,
)
from copre_hub.hub.checkpoint import sha256_file
from copre_hub.hub.serve.server import running

REPO = "org/tiny"


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], skip: str = "\0") -> bool:
    keys = {key for key in a if not key.startswith(skip)}
    return keys == {key for key in b if not key.startswith(skip)} and all(torch.equal(a[k], b[k]) for k in keys)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, hub_token: str, make_checkpoint) -> SimpleNamespace:
    """One endpoint for the module holding ``org/tiny``: tag v1 on a first push, main on a second, branch dev on a
    third (tests that write to it use other repositories); models and commits kept."""
    root = tmp_path_factory.mktemp("served")
    with running(root / "storage", tokens=[hub_token]) as url, pytest.MonkeyPatch.context() as env:
        env.setenv("HF_ENDPOINT", url)
        env.setenv("HF_TOKEN", hub_token)
        env.setenv("HF_HOME", str(root / "home"))
        m1, f1 = make_checkpoint(root / "v1", seed=1)
        c1 = copre_hub.push(f1, REPO, tag="v1")
        m2, f2 = make_checkpoint(root / "v2", seed=2)
        c2 = copre_hub.push(f2, REPO)
        m3, f3 = make_checkpoint(root / "v3", seed=3)
        c3 = copre_hub.push(f3, REPO, revision="dev")
        yield SimpleNamespace(
            url=url,
            v1=m1.state_dict(),
            v2=m2.state_dict(),
            v3=m3.state_dict(),
            c1=c1.oid,
            c2=c2.oid,
            c3=c3.oid,
            folder=f2,
        )


@pytest.fixture
def published(served: SimpleNamespace, hub_env: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """``served`` with this test's own empty HF_HOME and HF_ENDPOINT pointing at it."""
    monkeypatch.setenv("HF_ENDPOINT", served.url)
    return served


def test_pull_by_branch_tag_and_pinned_commit(published) -> None:
    cases = [
        ("org/tiny", published.c2, published.v2),
        ("org/tiny@v1", published.c1, published.v1),
        ("org/tiny@dev", published.c3, published.v3),
        (f"org/tiny@{published.c1}", published.c1, published.v1),
    ]
    for model_id, commit, weights in cases:
        folder = copre_hub.pull(model_id)
        assert folder.name == commit, model_id
        assert same_weights(weights, copre_hub.load(model_id).state_dict()), model_id
    assert copre_hub.pull(REPO, revision="v1").name == published.c1


def test_load_with_another_head_keeps_the_backbone(published) -> None:
    model = copre_hub.load(REPO, num_classes=3)
    assert model.get_classifier().out_features == 3
    assert same_weights(published.v2, model.state_dict(), skip="fc.")


def test_plain_timm_hf_hub_loads_the_same_weights(published, tmp_path: Path) -> None:
    env = {**os.environ, "HF_ENDPOINT": published.url, "HF_HOME": str(tmp_path / "fresh-home")}
    out = tmp_path / "timm.safetensors"
    code = (
        "import sys, timm, safetensors.torch as st; "
        "m = timm.create_model('hf-hub:org/tiny@v1', pretrained=True); st.save_file(m.state_dict(), sys.argv[1])"
    )
    result = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert same_weights(published.v1, safetensors.torch.load_file(out))


def test_offline_loads_what_was_pulled_and_fails_fast_otherwise(published, monkeypatch: pytest.MonkeyPatch) -> None:
    copre_hub.pull(REPO)
    copre_hub.pull("org/tiny@v1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert same_weights(published.v2, copre_hub.load(REPO).state_dict())
    assert same_weights(published.v1, copre_hub.load("org/tiny@v1").state_dict())
    started = time.monotonic()
    with pytest.raises(OfflineModelNotCachedError) as caught:
        copre_hub.load("org/tiny@dev")
    assert time.monotonic() - started < 2
    assert "copre-hub pull org/tiny@dev" in str(caught.value) and "HF_ENDPOINT" in str(caught.value)


def test_cached_revisions_need_no_endpoint(published, monkeypatch: pytest.MonkeyPatch) -> None:
    copre_hub.pull(f"org/tiny@{published.c1}")
    copre_hub.pull(REPO)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    assert same_weights(published.v1, copre_hub.load(REPO, revision=published.c1).state_dict())
    assert same_weights(published.v2, copre_hub.load(REPO).state_dict())  # unreachable: the cached branch
    with pytest.raises(ModelNotFoundError, match="cannot be reached"):
        copre_hub.load("org/tiny@dev")


def test_short_published_ids_match_case_insensitively(hub_server: str, tiny_checkpoint, unpublished_id: str) -> None:
    model, folder = tiny_checkpoint
    commit = copre_hub.push(folder, unpublished_id)  # a registered id with no pinned weights
    assert commit.repo_url.repo_id == f"copre-hub/{unpublished_id}"
    loaded = copre_hub.load(unpublished_id.upper())
    assert same_weights(model.state_dict(), loaded.state_dict())
    listing = {entry.repo_id: entry for entry in copre_hub.list_models()}
    assert commit.oid in listing[f"copre-hub/{unpublished_id}"].cached_revisions


def test_push_mirrors_the_folder_and_refuses_pickles(hub_server: str, tiny_checkpoint, make_checkpoint, tmp_path):
    _, folder = tiny_checkpoint
    (folder / "plots").mkdir()
    (folder / "plots" / "hist.txt").write_text("histogram")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "junk").write_text("local only")
    copre_hub.push(folder, REPO)
    api = HfApi(endpoint=hub_server)
    assert sorted(api.list_repo_files(REPO)) == ["README.md", "config.json", "model.safetensors", "plots/hist.txt"]
    _, second = make_checkpoint(tmp_path / "second", seed=5)
    copre_hub.push(second, REPO)
    assert sorted(api.list_repo_files(REPO)) == ["README.md", "config.json", "model.safetensors"]
    first = copre_hub.push(second, REPO, tag="v2")
    assert copre_hub.push(second, REPO, tag="v2").oid == first.oid  # the same push again: no commit, same tag
    with pytest.raises(ConfigError, match="tag 'v2' already exists"):
        copre_hub.push(folder, REPO, tag="v2")
    (second / "optimizer.pt").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match=r"pickle files \(optimizer.pt\)"):
        copre_hub.push(second, REPO)


def test_info_reports_config_card_results_and_hash(hub_server: str, make_checkpoint, tmp_path: Path) -> None:
    evaluation = {"dataset": "cifar100", "algorithm": "fedavg", "tasks": 10, "mean_accuracy": 83.2, "variance": 34.7}
    _, folder = make_checkpoint(tmp_path / "evaluated", seed=0, eval_results=evaluation)
    commit = copre_hub.push(folder, REPO)
    details = copre_hub.info(REPO)
    assert details.commit == commit.oid and details.repo_id == REPO
    assert details.sha256 == sha256_file(folder / "model.safetensors")
    assert details.config["architecture"] == "test_resnet"
    assert {"copre-hub", "federated-learning"} <= set(details.card["tags"])
    assert {(r["metric"], r["value"]) for r in details.eval_results} == {("accuracy", 83.2), ("variance", 34.7)}
    assert json.loads(json.dumps(details.to_dict()))["sha256"] == details.sha256
    pushed_card = (details.path / "README.md").read_text()
    assert f'copre_hub.load("{REPO}", num_classes=10)' in pushed_card
    assert details.card["model-index"][0]["name"] == "tiny"
    assert "not pushed yet" in (folder / "README.md").read_text()  # the local folder's card is left as it was


def test_list_models_merges_registry_cache_and_endpoint(published) -> None:
    copre_hub.pull("org/tiny@v1")
    listing = {entry.repo_id: entry for entry in copre_hub.list_models(remote=True, author="org")}
    assert listing[REPO].on_endpoint and {"v1", published.c1} <= set(listing[REPO].cached_revisions)
    assert listing["copre-hub/copreFL-resnet18-cifar100-hybrid"].published is not None


# -- bad input: each case gives its own clear error and leaves the stored data intact -------------------------------


def _push_raw(ctx, edit) -> str:
    """Upload a damaged copy of a good checkpoint with plain huggingface_hub (copre_hub.push would refuse it)."""
    folder = ctx.tmp_path / "raw"
    shutil.copytree(ctx.published.folder, folder)
    edit(folder)
    HfApi(endpoint=ctx.published.url).create_repo("org/broken", exist_ok=True)
    HfApi(endpoint=ctx.published.url).upload_folder(folder_path=folder, repo_id="org/broken")
    return "org/broken"


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _corrupt_cached_weights(ctx) -> str:
    weights = copre_hub.pull(REPO) / "model.safetensors"
    blob = weights.resolve()
    blob.write_bytes(blob.read_bytes()[:-4] + b"\0\0\0\0")
    return REPO


def _pickle_only_folder(ctx) -> Path:
    folder = ctx.tmp_path / "pickled"
    shutil.copytree(ctx.published.folder, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    return folder


def _push_without_token(ctx) -> None:
    ctx.monkeypatch.delenv("HF_TOKEN")
    copre_hub.push(ctx.published.folder, REPO)


def _push_with_wrong_token(ctx) -> None:
    ctx.monkeypatch.setenv("HF_TOKEN", "not-the-token")
    copre_hub.push(ctx.published.folder, REPO)


def _push_corrupted_folder(ctx) -> None:
    folder = ctx.tmp_path / "corrupt"
    shutil.copytree(ctx.published.folder, folder)
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    copre_hub.push(folder, REPO)


BAD_INPUTS = {
    "unknown-id": (
        lambda ctx: copre_hub.load("org/no-such-model"),
        ModelNotFoundError,
        r"no repository org/no-such-model on http://127\.0\.0\.1.*copre-hub list",
    ),
    "unknown-revision": (
        lambda ctx: copre_hub.load("org/tiny@v9"),
        RevisionNotFoundError,
        r"'org/tiny@v9'.*no such branch, tag or commit",
    ),
    "missing-weights": (
        lambda ctx: copre_hub.load(_push_raw(ctx, lambda f: (f / "model.safetensors").unlink())),
        CheckpointError,
        r"'org/broken'.*has no model\.safetensors",
    ),
    "corrupted-weights": (
        lambda ctx: copre_hub.load(_corrupt_cached_weights(ctx)),
        IntegrityError,
        r"'org/tiny'.*sha256 .* differs .*Delete the cached copy .*models--org--tiny and pull again",
    ),
    "other-architecture": (
        lambda ctx: copre_hub.load(_push_raw(ctx, lambda f: _edit_config(f, architecture="resnet18"))),
        CheckpointError,
        r"does not fit architecture 'resnet18'",
    ),
    "pickle-only-folder": (
        lambda ctx: copre_hub.load(_pickle_only_folder(ctx)),
        CheckpointError,
        r"only pickle weights \(pytorch_model\.bin\).*never unpickles",
    ),
    "push-without-token": (_push_without_token, AuthError, r"needs a token and none was sent.*set HF_TOKEN"),
    "push-with-wrong-token": (_push_with_wrong_token, AuthError, r"refused the request \(401.*set HF_TOKEN"),
    "push-corrupted-folder": (_push_corrupted_folder, IntegrityError, r"differs from .* recorded"),
    "path-with-dotdot": (
        lambda ctx: copre_hub.push(ctx.published.folder, "org/../escape"),
        ConfigError,
        r"invalid repository id",
    ),
    "missing-folder": (
        lambda ctx: copre_hub.load(ctx.tmp_path / "nowhere"),
        ModelNotFoundError,
        r"no checkpoint folder at",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_gives_a_clear_error_and_keeps_stored_data(case, published, tmp_path, monkeypatch) -> None:
    trigger, error, message = BAD_INPUTS[case]
    ctx = SimpleNamespace(published=published, tmp_path=tmp_path, monkeypatch=monkeypatch)
    with pytest.raises(error, match=message) as caught:
        trigger(ctx)
    assert "\n" not in str(caught.value)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "after"))  # a fresh cache: read back what the endpoint stores
    assert same_weights(published.v2, copre_hub.load(REPO).state_dict())
    assert HfApi(endpoint=published.url).model_info(REPO).sha == published.c2


def test_a_corrupted_cached_copy_is_refused_until_fetched_again(published) -> None:
    weights = copre_hub.pull(REPO) / "model.safetensors"
    weights.resolve().write_bytes(b"\0" * 16)  # the blob behind the snapshot's symlink
    with pytest.raises(IntegrityError) as caught:
        copre_hub.load(REPO)
    shutil.rmtree(weights.parent.parent.parent)  # what the message says: the repository's cache folder
    assert str(weights.parent.parent.parent) in str(caught.value)
    assert same_weights(published.v2, copre_hub.load(REPO).state_dict())
