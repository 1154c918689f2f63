"""`copre-hub serve` against the real huggingface_hub client (and raw HTTP for what the client never sends)."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from copre_hub.hub.serve.server import running

REPO = "org/model"


@pytest.fixture
def api(hub_server: str, hub_token: str) -> HfApi:
    return HfApi(endpoint=hub_server, token=hub_token)


@pytest.fixture
def auth(hub_token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {hub_token}"}


@pytest.fixture
def repo(api: HfApi, tmp_path: Path) -> str:
    """``org/model`` with one commit on main holding a.txt, sub/b.bin and README.md; returns that commit."""
    return make_repo(api, tmp_path / "files")


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory, hub_token: str):
    """One endpoint and repository shared by the tests of refused requests (each checks nothing changed):
    yields ``(url, api, commit, auth headers)``."""
    root = tmp_path_factory.mktemp("refusals")
    with running(root / "storage", tokens=[hub_token]) as url:
        api = HfApi(endpoint=url, token=hub_token)
        yield url, api, make_repo(api, root / "files"), {"authorization": f"Bearer {hub_token}"}


def make_repo(api: HfApi, folder: Path) -> str:
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("first")
    (folder / "sub" / "b.bin").write_bytes(os.urandom(3000))
    (folder / "README.md").write_text("---\nlibrary_name: timm\ntags: [copre-hub]\n---\n# model\n")
    api.create_repo(REPO)
    return api.upload_folder(folder_path=folder, repo_id=REPO, commit_message="first").oid


def head(api: HfApi) -> str:
    return api.model_info(REPO).sha


def commit_body(*lines: dict) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def header(summary: str = "raw") -> dict:
    return {"key": "header", "value": {"summary": summary, "description": ""}}


def add(path: str, content: bytes) -> dict:
    return {"key": "file", "value": {"path": path, "content": base64.b64encode(content).decode(), "encoding": "base64"}}


def test_create_repo_conflict_answers_409_with_url(api: HfApi, hub_server: str, auth: dict) -> None:
    url = api.create_repo("Org/Model")
    assert url.repo_id == "Org/Model"
    response = httpx.post(f"{hub_server}/api/repos/create", json={"name": "model", "organization": "org"}, headers=auth)
    assert response.status_code == 409 and response.json()["url"] == f"{hub_server}/Org/Model"
    assert api.create_repo("org/MODEL", exist_ok=True).repo_id == "Org/Model"  # ids match case-insensitively


def test_upload_then_download_round_trips_with_hub_headers(api: HfApi, repo: str, hub_server: str, tmp_path: Path):
    blob_ids = {
        entry.path: entry.blob_id for entry in api.list_repo_tree(REPO, recursive=True) if hasattr(entry, "blob_id")
    }
    head_response = httpx.head(f"{hub_server}/{REPO}/resolve/main/a.txt")
    assert head_response.headers["x-repo-commit"] == repo
    assert head_response.headers["etag"] == f'"{blob_ids["a.txt"]}"'
    assert head_response.headers["content-length"] == "5"
    ranged = httpx.get(f"{hub_server}/{REPO}/resolve/{repo}/a.txt", headers={"range": "bytes=1-3"})
    assert ranged.status_code == 206 and ranged.content == b"irs"
    folder = snapshot_download(REPO, endpoint=hub_server, cache_dir=tmp_path / "cache")
    assert Path(folder, "a.txt").read_text() == "first" and Path(folder).name == repo


def test_model_info_tree_and_listing(api: HfApi, repo: str) -> None:
    info = api.model_info(REPO, files_metadata=True)
    assert info.sha == repo and info.library_name == "timm" and info.card_data.tags == ["copre-hub"]
    assert {(s.rfilename, s.size) for s in info.siblings} >= {("a.txt", 5), ("sub/b.bin", 3000)}
    top = {(type(e).__name__, e.path) for e in api.list_repo_tree(REPO)}
    assert top == {("RepoFile", "README.md"), ("RepoFile", "a.txt"), ("RepoFolder", "sub")}
    assert [e.path for e in api.list_repo_tree(REPO, path_in_repo="sub")] == ["sub/b.bin"]
    assert sorted(api.list_repo_files(REPO)) == ["README.md", "a.txt", "sub/b.bin"]
    assert [m.id for m in api.list_models(search="MOD")] == [REPO]
    assert [m.id for m in api.list_models(author="other")] == []
    assert [m.id for m in api.list_models(filter="copre-hub")] == [REPO]


def test_tags_branches_refs_and_history(api: HfApi, repo: str, tmp_path: Path, hub_server: str) -> None:
    api.create_tag(REPO, tag="v1")
    api.create_branch(REPO, branch="dev")
    second = api.upload_file(path_or_fileobj=b"second", path_in_repo="a.txt", repo_id=REPO, revision="dev").oid
    refs = api.list_repo_refs(REPO)
    assert {(b.name, b.target_commit) for b in refs.branches} == {("main", repo), ("dev", second)}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", repo)]
    assert [c.title for c in api.list_repo_commits(REPO, revision="dev")] == [
        "Upload a.txt with huggingface_hub",
        "first",
        "initial commit",
    ]
    cache = tmp_path / "cache"
    for revision, expected in (
        ("main", "first"),
        ("v1", "first"),
        ("dev", "second"),
        (repo, "first"),
        (second, "second"),
    ):
        assert (
            Path(hf_hub_download(REPO, "a.txt", revision=revision, endpoint=hub_server, cache_dir=cache)).read_text()
            == expected
        )
    with pytest.raises(HfHubHTTPError, match="409"):
        api.create_tag(REPO, tag="v1", revision="dev")  # tags never move
    api.delete_tag(REPO, tag="v1")
    api.delete_branch(REPO, branch="dev")
    assert [b.name for b in api.list_repo_refs(REPO).branches] == ["main"]


@pytest.mark.parametrize(
    ("repo_id", "revision", "filename", "error"),
    [
        ("org/missing", "main", "a.txt", RepositoryNotFoundError),
        (REPO, "no-such-branch", "a.txt", RevisionNotFoundError),
        (REPO, "main", "missing.txt", EntryNotFoundError),
    ],
)
def test_errors_map_to_the_client_exceptions(refusals, hub_token, tmp_path, repo_id, revision, filename, error):
    url = refusals[0]
    with pytest.raises(error):
        hf_hub_download(repo_id, filename, revision=revision, endpoint=url, cache_dir=tmp_path, token=hub_token)


def test_stale_parent_commit_is_refused(api: HfApi, repo: str) -> None:
    api.upload_file(path_or_fileobj=b"newer", path_in_repo="a.txt", repo_id=REPO)
    with pytest.raises(HfHubHTTPError, match="412") as caught:
        api.create_commit(REPO, [CommitOperationAdd("c.txt", b"late")], commit_message="late", parent_commit=repo)
    assert "another push landed first" in str(caught.value)


def test_writes_need_the_token_and_leave_data_intact(refusals) -> None:
    url, api, repo, _ = refusals
    for token in (False, "wrong-token"):
        anonymous = HfApi(endpoint=url, token=token)
        with pytest.raises(HfHubHTTPError, match="401") as caught:
            anonymous.upload_file(path_or_fileobj=b"evil", path_in_repo="a.txt", repo_id=REPO)
        assert "set HF_TOKEN" in str(caught.value)
        with pytest.raises(HfHubHTTPError, match="401"):
            anonymous.create_repo("org/other")
    assert head(api) == repo
    assert httpx.get(f"{url}/{REPO}/resolve/main/a.txt").text == "first"


def test_private_repositories_and_gated_reads(tmp_path: Path, hub_token: str) -> None:
    with running(tmp_path / "gated", tokens=[hub_token], gated_reads=True) as url:
        api = HfApi(endpoint=url, token=hub_token)
        api.create_repo("org/gated")
        assert api.model_info("org/gated").id == "org/gated"
        with pytest.raises(RepositoryNotFoundError):
            HfApi(endpoint=url, token=False).model_info("org/gated")
    with running(tmp_path / "public", tokens=[hub_token]) as url:
        api = HfApi(endpoint=url, token=hub_token)
        api.create_repo("org/secret", private=True)
        api.create_repo("org/open")
        anonymous = HfApi(endpoint=url, token=False)
        assert [m.id for m in anonymous.list_models()] == ["org/open"]
        with pytest.raises(RepositoryNotFoundError):
            anonymous.model_info("org/secret")


def test_read_only_endpoint_refuses_writes(tmp_path: Path, hub_token: str) -> None:
    with running(tmp_path / "ro", tokens=[]) as url:
        with pytest.raises(HfHubHTTPError, match="403") as caught:
            HfApi(endpoint=url, token=hub_token).create_repo("org/x")
        assert "read-only" in str(caught.value)


@pytest.mark.parametrize(
    "path",
    [
        "../escape.txt",
        "a/../../escape.txt",
        "/abs.txt",
        "a\\b.txt",
        "a//b.txt",
        "./a.txt",
        ".git/config",
        "x" * 1001,
        "a\x00b",
        "",
    ],
)
def test_bad_paths_are_refused_at_preupload_and_commit(refusals, tmp_path_factory, path: str) -> None:
    url, api, repo, auth = refusals
    preupload = httpx.post(
        f"{url}/api/models/{REPO}/preupload/main",
        json={"files": [{"path": path, "size": 4, "sample": ""}]},
        headers=auth,
    )
    assert preupload.status_code == 400 and "file path" in preupload.json()["error"]
    body = commit_body(header(), add(path, b"evil"))
    response = httpx.post(f"{url}/api/models/{REPO}/commit/main", content=body, headers=auth)
    assert response.status_code == 400 and "file path" in response.json()["error"]
    assert head(api) == repo and not list(tmp_path_factory.getbasetemp().rglob("escape.txt"))


def test_bad_repository_names_are_refused(refusals) -> None:
    url, _, _, auth = refusals
    for name in ("a..b", "-lead", "x" * 97, "dots.git", "sp ace", "../up"):
        response = httpx.post(f"{url}/api/repos/create", json={"name": name, "organization": "org"}, headers=auth)
        assert response.status_code == 400, name
    response = httpx.get(f"{url}/api/models/org/{'x' * 5000}")
    assert response.status_code == 414


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/%2E%2E/%2E%2E/resolve/main/repo.json", 401),
        ("GET", "/api/models/..%2F..%2Frepos/x", 401),
        ("GET", f"/{REPO}/resolve/..%2F..%2F..%2Fblobs/a.txt", 404),
        ("GET", f"/{REPO}/resolve/main/..%2Fa.txt", 404),
        ("DELETE", f"/api/models/{REPO}/tag/..", 404),
        ("POST", f"/api/models/{REPO}/commit/..%2Fheads%2Fmain", 404),
    ],
)
def test_traversal_in_urls_reaches_nothing(refusals, method: str, path: str, status: int) -> None:
    url, api, repo, auth = refusals
    response = httpx.request(method, url + path, headers=auth if method != "GET" else {}, content=b"")
    assert response.status_code == status
    assert head(api) == repo and api.list_repo_refs(REPO).tags == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"not json\n", "not JSON"),
        (commit_body(add("a.txt", b"x")), "first line must be the header"),
        (
            commit_body(header(), {"key": "file", "value": {"path": "a.txt", "content": "@@@", "encoding": "base64"}}),
            "invalid base64",
        ),
        (commit_body(header(), {"key": "lfsFile", "value": {"path": "a.txt", "oid": "0" * 64, "size": 1}}), "LFS"),
        (commit_body(header(), {"key": "rename", "value": {"path": "a.txt"}}), "unknown operation"),
        (commit_body(header(), add("new.txt", b"x")) + b'{"key": "file", "val', "not JSON"),
        (commit_body({"key": "header", "value": {"summary": 3}}), "summary and description"),
        (commit_body(header(), {"key": "deletedFile", "value": {"path": "missing.txt"}}), "doesn't exist"),
    ],
    ids=[
        "empty",
        "not-json",
        "no-header",
        "bad-base64",
        "lfs",
        "unknown-key",
        "truncated-line",
        "bad-header",
        "delete-missing",
    ],
)
def test_malformed_commit_bodies_change_nothing(refusals, body: bytes, message: str) -> None:
    url, api, repo, auth = refusals
    response = httpx.post(f"{url}/api/models/{REPO}/commit/main", content=body, headers=auth)
    assert response.status_code in (400, 404) and message in response.json()["error"]
    assert head(api) == repo
    assert sorted(api.list_repo_files(REPO)) == ["README.md", "a.txt", "sub/b.bin"]


def test_oversized_bodies_are_refused(tmp_path: Path, hub_token: str, auth: dict) -> None:
    with running(tmp_path / "small", tokens=[hub_token], max_body_bytes=10_000) as url:
        api = HfApi(endpoint=url, token=hub_token)
        api.create_repo(REPO)
        with pytest.raises(HfHubHTTPError, match="413"):
            api.upload_file(path_or_fileobj=os.urandom(20_000), path_in_repo="big.bin", repo_id=REPO)
        chunked = (chunk for chunk in [commit_body(header()), b"x" * 20_000])
        response = httpx.post(f"{url}/api/models/{REPO}/commit/main", content=chunked, headers=auth)
        assert response.status_code == 413
        assert api.list_repo_files(REPO) == []


def test_push_cut_off_mid_body_leaves_the_previous_revision(api, repo, hub_server: str, hub_token: str) -> None:
    body = commit_body(header("cut off"), add("a.txt", b"replaced"), add("big.bin", os.urandom(200_000)))
    host, port = urlsplit(hub_server).hostname, urlsplit(hub_server).port
    with socket.create_connection((host, port)) as sock:
        sock.sendall(
            f"POST /api/models/{REPO}/commit/main HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {hub_token}"
            f"\r\nContent-Type: application/x-ndjson\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        sock.sendall(body[: len(body) // 2])  # the pushing process dies here
    time.sleep(0.2)
    assert head(api) == repo
    assert httpx.get(f"{hub_server}/{REPO}/resolve/main/a.txt").text == "first"
    assert api.upload_file(path_or_fileobj=b"after", path_in_repo="a.txt", repo_id=REPO).oid != repo


def test_push_killed_at_any_moment_is_all_or_nothing(api, repo, hub_server: str, hub_token: str, tmp_path: Path):
    (tmp_path / "big").mkdir()
    payload = os.urandom(8 << 20)
    (tmp_path / "big" / "a.txt").write_text("second")
    (tmp_path / "big" / "weights.bin").write_bytes(payload)
    script = (
        "import sys; from huggingface_hub import HfApi; "
        "HfApi(endpoint=sys.argv[1], token=sys.argv[2]).upload_folder(folder_path=sys.argv[3], repo_id='org/model')"
    )
    for delay in (0.3, 0.8, 1.5):
        pusher = subprocess.Popen([sys.executable, "-c", script, hub_server, hub_token, str(tmp_path / "big")])
        time.sleep(delay)
        pusher.kill()
        pusher.wait()
        sha = head(api)  # one revision, read consistently (a commit may still be landing)
        text = httpx.get(f"{hub_server}/{REPO}/resolve/{sha}/a.txt").text
        if "weights.bin" in api.list_repo_files(REPO, revision=sha):  # the commit landed: whole
            assert text == "second"
            assert httpx.get(f"{hub_server}/{REPO}/resolve/{sha}/weights.bin").content == payload
        else:  # it did not: the previous revision, untouched
            assert (sha, text) == (repo, "first")


def test_concurrent_pushes_lose_no_commit(api: HfApi, repo: str) -> None:
    pushes_per_client, clients = 4, 3
    errors: list[BaseException] = []

    def push(client: int) -> None:
        try:
            for i in range(pushes_per_client):
                api.upload_file(
                    path_or_fileobj=f"{client}-{i}".encode(), path_in_repo=f"c{client}/f{i}.txt", repo_id=REPO
                )
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=push, args=(client,)) for client in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    files = set(api.list_repo_files(REPO))
    assert {f"c{c}/f{i}.txt" for c in range(clients) for i in range(pushes_per_client)} <= files
    assert len(api.list_repo_commits(REPO)) == 2 + clients * pushes_per_client


def test_validate_yaml(refusals) -> None:
    url = refusals[0]
    ok = httpx.post(f"{url}/api/validate-yaml", json={"content": "---\nlicense: mit\n---\n"})
    assert ok.status_code == 200
    bad = httpx.post(f"{url}/api/validate-yaml", json={"content": "---\nlicense: [mit\n---\n"})
    assert bad.status_code == 400 and bad.json()["errors"]
