"""Model ids: every accepted spelling, the refusals, and the published registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from copre_hub.errors import ConfigError
from copre_hub.hub.ids import PUBLISHED, is_commit_hash, parse_model_id, parse_repo_id, published_model

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _default_org(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("COPRE_HUB_ORG", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    ("text", "repo_id", "revision"),
    [
        ("copreFL-resnet18-cifar100", "copre-hub/copreFL-resnet18-cifar100", None),
        ("COPREFL-RESNET18-CIFAR100-HYBRID", "copre-hub/copreFL-resnet18-cifar100-hybrid", None),
        ("unpublished-model", "copre-hub/unpublished-model", None),
        ("org/name", "org/name", None),
        ("org/name@v1", "org/name", "v1"),
        (f"org/name@{SHA}", "org/name", SHA),
        ("hf-hub:org/name@dev", "org/name", "dev"),
        ("hf-hub:copre-hub/coprefl-resnet18-cifar100", "copre-hub/copreFL-resnet18-cifar100", None),
        ("copreFL-resnet18-cifar100@v2", "copre-hub/copreFL-resnet18-cifar100", "v2"),
    ],
)
def test_hub_ids_resolve_to_repo_and_revision(text: str, repo_id: str, revision: str | None) -> None:
    ref = parse_model_id(text)
    assert (ref.repo_id, ref.revision, ref.path) == (repo_id, revision, None)


def test_short_ids_use_the_configured_org(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPRE_HUB_ORG", "my-lab")
    assert parse_model_id("copreFL-resnet18-cifar100").repo_id == "my-lab/copreFL-resnet18-cifar100"


@pytest.mark.parametrize("text", ["local-dir:some/folder", "/abs/folder", "./rel", "../up/folder", "a/b/c", "~/x"])
def test_paths_name_folders(text: str) -> None:
    ref = parse_model_id(text)
    assert ref.repo_id is None and ref.path is not None


def test_pathlike_is_a_folder(tmp_path: Path) -> None:
    assert parse_model_id(tmp_path).path == tmp_path


@pytest.mark.parametrize("text", ["org/name", "copreFL-resnet18-cifar100"])
def test_existing_folder_named_like_an_id_is_refused_with_both_spellings(tmp_path: Path, text: str) -> None:
    (tmp_path / text).mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"local-dir:.*hf-hub:"):
        parse_model_id(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "org/na me",
        "org/-name",
        "org/name.git",
        "org/a--b",
        "org/a..b",
        "org/name@",
        "org/name@a@b",
        "org/x@a b",
        "hf-hub:a/b/c",
        "local-dir:",
    ],
)
def test_malformed_ids_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_model_id(text)


def test_repo_ids_never_become_paths(tmp_path: Path) -> None:
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert parse_repo_id("org/name").repo_id == "org/name"


def test_commit_hash_detection() -> None:
    assert is_commit_hash(SHA)
    assert not is_commit_hash("main") and not is_commit_hash(SHA[:12]) and not is_commit_hash(SHA.upper())


@pytest.mark.parametrize("model", PUBLISHED, ids=lambda model: model.name)
def test_published_ids_round_trip_case_insensitively(model) -> None:
    assert published_model(model.name.upper()) is model
    ref = parse_model_id(model.name.lower())
    assert ref.published is model and ref.repo_id == f"copre-hub/{model.name}"
    assert model.name.lower().startswith(f"{model.method}-{model.architecture}-{model.dataset}")
