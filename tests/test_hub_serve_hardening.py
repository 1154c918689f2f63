"""`copre-hub serve` under hostile or broken input: alias-bomb cards, malformed bytes, large and concurrent uploads,
aborted uploads, exposed binds and request logging."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi

from copre_hub.hub.serve.server import build_server, exposure_warnings, running
from copre_hub.hub.serve.storage import RepoStore

REPO = "org/model"


def alias_bomb(levels: int = 7) -> str:
    """A ~450-byte card whose YAML metadata expands to 10**levels strings once its aliases are followed."""
    lines = ["a0: &a0 [" + ",".join(['"lol"'] * 10) + "]"]
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels + 1)]
    return "---\n" + "\n".join(lines) + "\n---\n# a card\n"


def ndjson(*lines: dict) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


HEADER = {"key": "header", "value": {"summary": "raw", "description": ""}}


@pytest.fixture
def api(hub_server: str, hub_token: str) -> HfApi:
    api = HfApi(endpoint=hub_server, token=hub_token)
    api.create_repo(REPO)
    return api


@pytest.fixture
def auth(hub_token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {hub_token}"}


@pytest.fixture
def serve_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="copre_hub.serve")
    return caplog


def test_alias_bomb_card_is_refused_at_commit_and_served_without_metadata(api, hub_server, auth, tmp_path) -> None:
    card = tmp_path / "README.md"
    card.write_text(alias_bomb())
    with pytest.raises(ValueError, match="expands to more than 10000 values"):  # validate-yaml, before the upload
        api.upload_file(path_or_fileobj=str(card), path_in_repo="README.md", repo_id=REPO)
    body = ndjson(HEADER, {"key": "file", "value": {"path": "README.md", "content": _b64(card), "encoding": "base64"}})
    refused = httpx.post(f"{hub_server}/api/models/{REPO}/commit/main", content=body, headers=auth)
    assert refused.status_code == 400 and "expands to more than" in refused.json()["error"]
    assert [f for f in api.list_repo_files(REPO) if f == "README.md"] == []

    # One stored before the caps existed (written straight into the store): reads stay small and succeed.
    store = RepoStore(tmp_path / "hub-storage")
    repo = store.get_repo(REPO)
    store.commit(repo, "main", [_add_file(store, "README.md", alias_bomb().encode())], "old bomb")
    response = httpx.get(f"{hub_server}/api/models/{REPO}")
    assert response.status_code == 200 and len(response.content) < 10_000
    assert "cardData" not in response.json()
    assert httpx.get(f"{hub_server}/api/models", params={"cardData": "1"}).status_code == 200


def _add_file(store: RepoStore, path: str, data: bytes):
    from copre_hub.hub.serve.storage import AddFile

    return AddFile(path, store.write_blob(data))


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


MALFORMED = {
    "deep-json-validate-yaml": ("POST", "/api/validate-yaml", b"[" * 100_000 + b"]" * 100_000, "not JSON|nests"),
    "deep-json-object": ("POST", "/api/validate-yaml", b'{"a":' * 200 + b"1" + b"}" * 200, "nests deeper"),
    "surrogate-in-preupload-path": (
        "POST",
        f"/api/models/{REPO}/preupload/main",
        b'{"files": [{"path": "\\udc80", "size": 1, "sample": ""}]}',
        "not valid Unicode",
    ),
    "surrogate-in-commit-path": (
        "POST",
        f"/api/models/{REPO}/commit/main",
        ndjson(HEADER) + b'{"key": "file", "value": {"path": "a\\udc80b", "content": "", "encoding": "base64"}}\n',
        "not valid Unicode",
    ),
    "surrogate-in-tag": ("POST", f"/api/models/{REPO}/tag/main", b'{"tag": "v\\udc80"}', "invalid branch or tag"),
    "surrogate-in-card": (
        "POST",
        "/api/validate-yaml",
        json.dumps({"content": '---\nlicense: "\\udc80"\n---\n'}).encode(),
        "not valid Unicode",
    ),
    "card-key-shadowing-a-parameter": (
        "POST",
        "/api/validate-yaml",
        json.dumps({"content": "---\nignore_metadata_errors: 1\n---\n"}).encode(),
        "cannot be read as a model card",
    ),
    "latin1-body": ("POST", "/api/validate-yaml", '{"content": "é"}'.encode("latin-1"), "not JSON"),
    "nul-in-url-path": ("GET", f"/api/models/{REPO}/tree/main/a%00b", b"", "no folder"),
    "surrogate-in-url-path": ("GET", f"/api/models/{REPO}/tree/main/%ed%b2%80", b"", "not percent-encoded UTF-8"),
    "unicode-digits-limit": ("GET", "/api/models?limit=%C2%B2", b"", None),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_input_gets_a_one_line_400(case, api, hub_server, auth, caplog) -> None:
    method, path, body, message = MALFORMED[case]
    caplog.set_level(logging.INFO)
    logging.getLogger("uvicorn").addHandler(caplog.handler)  # uvicorn's loggers do not propagate
    try:
        response = httpx.request(method, f"{hub_server}{path}", content=body, headers=auth)
    finally:
        logging.getLogger("uvicorn").removeHandler(caplog.handler)
    assert response.status_code < 500, response.text
    if message is not None:
        assert response.status_code in (400, 404)
        data = response.json()
        error = data["error"] if "error" in data else data["errors"][0]["message"]  # validate-yaml's shape
        assert "\n" not in error and re.search(message, error), error
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def _streamed_commit(path: str, size: int, block: int = 3 << 16) -> Iterator[bytes]:
    """An NDJSON commit adding ``size`` bytes at ``path``, generated block by block (the client holds one block)."""
    yield json.dumps(HEADER).encode() + b"\n"
    yield b'{"key": "file", "value": {"path": "' + path.encode() + b'", "encoding": "base64", "content": "'
    pattern = bytes(range(256)) * (block // 256)
    for start in range(0, size, block):
        yield base64.b64encode(pattern[: min(block, size - start)])
    yield b'"}}\n'


def test_large_upload_streams_to_disk_with_bounded_memory(api, hub_server, auth) -> None:
    size = 24 << 20
    tracemalloc.start()
    try:
        response = httpx.post(
            f"{hub_server}/api/models/{REPO}/commit/main", content=_streamed_commit("big.bin", size), headers=auth
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 200, response.text
    assert peak < 12 << 20, f"peak {peak / 2**20:.1f} MiB for a {size >> 20} MiB upload"
    expected = (bytes(range(256)) * (size // 256))[:size]
    download = httpx.get(f"{hub_server}/{REPO}/resolve/main/big.bin")
    assert download.content == expected


@pytest.mark.slow
def test_300_mib_upload_keeps_server_memory_bounded(api, hub_server, auth) -> None:
    size = 300 << 20
    tracemalloc.start()
    try:
        response = httpx.post(
            f"{hub_server}/api/models/{REPO}/commit/main",
            content=_streamed_commit("big.bin", size),
            headers=auth,
            timeout=600,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 200, response.text
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB for a 300 MiB upload"


def test_streamed_content_must_be_base64(api, hub_server, auth) -> None:
    def body() -> Iterator[bytes]:
        yield from _streamed_commit("big.bin", 3 << 20)
        yield b"\n"

    good = b"".join(body())
    cut = len(good) // 2
    bad = good[:cut] + b"!!!!" + good[cut + 4 :]
    response = httpx.post(f"{hub_server}/api/models/{REPO}/commit/main", content=bad, headers=auth)
    assert response.status_code == 400 and "not base64" in response.json()["error"]
    assert "big.bin" not in api.list_repo_files(REPO)


def test_uploads_beyond_the_limit_get_503_and_the_abort_is_logged(tmp_path, hub_token, auth, serve_log) -> None:
    sent, release = threading.Event(), threading.Event()
    with running(tmp_path / "storage", tokens=[hub_token], max_concurrent_uploads=1) as url:
        HfApi(endpoint=url, token=hub_token).create_repo(REPO)
        commit_url = f"{url}/api/models/{REPO}/commit/main"
        first = threading.Thread(target=_upload_then_give_up, args=(commit_url, auth, sent, release))
        first.start()
        assert sent.wait(10)
        time.sleep(0.2)  # a probe arriving with the first upload could take the one slot and shut it out
        busy = _post_until(commit_url, auth, 503)  # once the first upload has started
        assert busy.headers["retry-after"] == "1" and "uploads in progress" in busy.json()["error"]
        release.set()
        first.join(30)
        _post_until(commit_url, auth, 200)  # once the server has seen the first one go away
    aborted = [r.getMessage() for r in serve_log.records if "aborted" in r.getMessage()]
    assert any("upload to org/model@main aborted" in line and "nothing was committed" in line for line in aborted)


def _post_until(url: str, headers: dict[str, str], status: int) -> httpx.Response:
    """POST an empty commit every 50 ms until the answer has ``status`` (at most 10 s)."""
    deadline = time.monotonic() + 10
    while (response := httpx.post(url, content=ndjson(HEADER), headers=headers)).status_code != status:
        assert time.monotonic() < deadline, f"still {response.status_code}: {response.text}"
        time.sleep(0.05)
    return response


def _upload_then_give_up(url: str, headers: dict[str, str], sent: threading.Event, release: threading.Event) -> None:
    """Start a commit upload, set ``sent`` once its first line is out, wait for ``release``, then drop the
    connection before the body ends."""

    def body() -> Iterator[bytes]:
        yield json.dumps(HEADER).encode() + b"\n"
        sent.set()
        release.wait(30)
        raise ConnectionAbortedError("the client gives up mid-upload")

    with contextlib.suppress(ConnectionAbortedError, httpx.HTTPError):
        httpx.post(url, content=body(), headers=headers)


@pytest.mark.parametrize(
    ("host", "gated", "warned"),
    [("127.0.0.1", False, 0), ("::1", False, 0), ("localhost", False, 0), ("0.0.0.0", False, 2),
     ("0.0.0.0", True, 1), ("::", False, 2), ("hub.internal", True, 1)],
)  # fmt: skip
def test_exposed_binds_are_warned_about(host: str, gated: bool, warned: int) -> None:
    warnings = exposure_warnings(host, gated)
    assert len(warnings) == warned
    assert all("\n" not in line for line in warnings)
    if warned:
        assert "plain HTTP" in warnings[0] and "TLS" in warnings[0]
    if warned == 2:
        assert "--gated-reads" in warnings[1]


@pytest.mark.parametrize(("level", "access"), [("debug", True), ("info", True), ("warning", False)])
def test_requests_are_logged_at_info_and_debug(tmp_path: Path, level: str, access: bool) -> None:
    server = build_server(tmp_path, tokens=[], log_level=level)
    assert server.config.access_log is access
    assert logging.getLogger("copre_hub.serve").getEffectiveLevel() == getattr(logging, level.upper())


def test_streamed_content_may_escape_slashes_across_chunk_boundaries(api, hub_server, auth) -> None:
    data = bytes(range(256)) * (12 << 12)  # 3 MiB: streamed, and its base64 holds many "/"
    content = base64.b64encode(data).replace(b"/", b"\\/")  # JSON allows "\/" for "/"
    line = b'{"key": "file", "value": {"path": "s.bin", "encoding": "base64", "content": "' + content + b'"}}\n'
    body = json.dumps(HEADER).encode() + b"\n" + line
    start = body.index(b'"content"')
    cuts = sorted({body.index(b"\\", i) + 1 for i in range(start, len(body) - 100, 1 << 16)})
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]  # each ends on a backslash
    response = httpx.post(f"{hub_server}/api/models/{REPO}/commit/main", content=iter(pieces), headers=auth)
    assert response.status_code == 200, response.text
    assert httpx.get(f"{hub_server}/{REPO}/resolve/main/s.bin").content == data
