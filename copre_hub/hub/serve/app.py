"""The HTTP face of ``copre-hub serve``: the part of the Hugging Face Hub API that huggingface_hub and timm use.

- ``POST /api/repos/create``: ``create_repo`` (409 with ``url`` when the repository exists)
- ``POST /api/validate-yaml``: README metadata check that ``create_commit`` makes first
- ``GET /api/models``: ``list_models`` (``search``, ``author``, ``filter``, ``limit``, ``full``, ``cardData``)
- ``GET /api/models/{repo}`` and ``.../revision/{rev}``: ``model_info`` / ``repo_info``
- ``GET /api/models/{repo}/tree/{rev}[/{path}]``: ``list_repo_tree`` / ``list_repo_files``
- ``GET /api/models/{repo}/refs`` and ``.../commits/{rev}``: ``list_repo_refs``, ``list_repo_commits``
- ``POST /api/models/{repo}/preupload/{rev}``: every file is a ``"regular"`` upload (no LFS, no Xet)
- ``POST /api/models/{repo}/commit/{rev}``: the NDJSON commit body (see ``commit_body``)
- ``POST``/``DELETE /api/models/{repo}/tag/...`` and ``.../branch/...``: tags and branches
- ``GET``/``HEAD /{repo}/resolve/{rev}/{path}``: file download with ``X-Repo-Commit``, ``ETag``, ranges

Errors carry the ``X-Error-Code`` huggingface_hub maps to its exceptions (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``) and a JSON ``{"error": message}``. Writes need one of the tokens given at start (as
``Authorization: Bearer``); reads need one too for private repositories, or for all with ``gated_reads``. Paths are
routed from the raw, still percent-encoded request path, so a revision such as ``refs%2Fpr%2F1`` stays one part.

Malformed input (a path that is not UTF-8 or holds a lone surrogate, JSON nested too deep, a number that is not
one) gets a 400 with a one-line reason. Commit bodies stream to disk (see ``commit_body``), at most
``max_concurrent_uploads`` at a time (503 with ``Retry-After`` beyond), and each aborted one is logged. Card
metadata is parsed within caps (``copre_hub.hub.cards.parse_card_data``): a commit whose README breaks them is
refused, and a stored one that does is served without ``cardData``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from functools import partial
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from copre_hub._logging import get_logger
from copre_hub.errors import CheckpointError
from copre_hub.hub.cards import parse_card_data
from copre_hub.hub.serve.commit_body import CommitRequest, read_commit_body
from copre_hub.hub.serve.storage import AddFile, Commit, Repo, RepoStore, StoreError, validate_file_path

DEFAULT_MAX_BODY_BYTES = 1 << 30
DEFAULT_MAX_CONCURRENT_UPLOADS = 4
MAX_JSON_DEPTH = 32
MAX_JSON_BYTES = 8 << 20
MAX_URL_PATH = 4096
MAX_CARD_BYTES = 1 << 20
MAX_PREUPLOAD_FILES = 10_000
# huggingface_hub reads this exact X-Error-Message on a 401 as "bad token", not as "repository not found".
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_TRUE = {"1", "true", "True", "yes"}
_logger = get_logger("copre_hub.serve")
T = TypeVar("T")


def create_app(
    store: RepoStore,
    *,
    tokens: Iterable[str],
    gated_reads: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_concurrent_uploads: int = DEFAULT_MAX_CONCURRENT_UPLOADS,
) -> Starlette:
    """The ASGI application serving the repositories of ``store``.

    Args:
        store: where repositories live.
        tokens: accepted bearer tokens; writes need one. With no token at all the endpoint is read-only.
        gated_reads: reads need a token too (otherwise only private repositories do).
        max_body_bytes: largest commit body accepted (413 beyond).
        max_concurrent_uploads: commit bodies received at once (503 beyond, with ``Retry-After``).
    """
    hub = _Hub(store, frozenset(tokens), gated_reads, max_body_bytes, max_concurrent_uploads)
    methods = ["GET", "HEAD", "POST", "DELETE"]
    return Starlette(routes=[Route("/{path:path}", hub.dispatch, methods=methods)])


class _Hub:
    def __init__(
        self, store: RepoStore, tokens: frozenset[str], gated_reads: bool, max_body_bytes: int, max_uploads: int
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.gated_reads = gated_reads
        self.max_body_bytes = max_body_bytes
        self.max_uploads = max_uploads
        self.uploads = 0  # commit bodies being received; changed on the event loop only

    async def dispatch(self, request: Request) -> Response:
        try:
            handler = self._route(request.method, _path_parts(request))
            return await handler(request)
        except StoreError as error:
            return _error_response(error)
        except ClientDisconnect:
            _logger.debug("client went away during %s %s; nothing was committed", request.method, request.url.path)
            return Response(status_code=400)

    def _route(self, method: str, parts: list[str]) -> Callable[[Request], Awaitable[Response]]:
        match parts:
            case ["api", "repos", "create"] if method == "POST":
                return self.create_repo
            case ["api", "validate-yaml"] if method == "POST":
                return self.validate_yaml
            case ["api", "models"] if method == "GET":
                return self.list_models
            case ["api", "models", org, name, *rest]:
                return self._repo_route(method, f"{org}/{name}", rest)
            case ["api", "datasets" | "spaces", *_]:
                raise StoreError(404, "this endpoint hosts model repositories only", "RepoNotFound")
            case [org, name, "resolve", revision, *path] if method in ("GET", "HEAD") and path:
                return partial(self.resolve, repo_id=f"{org}/{name}", revision=revision, path="/".join(path))
        raise StoreError(404, f"no such endpoint: {method} /{'/'.join(parts)}")

    def _repo_route(self, method: str, repo_id: str, rest: list[str]) -> Callable[[Request], Awaitable[Response]]:
        match method, rest:
            case "GET", []:
                return partial(self.model_info, repo_id=repo_id, revision=None)
            case "GET", ["revision", *revision] if revision:
                return partial(self.model_info, repo_id=repo_id, revision="/".join(revision))
            case "GET", ["tree", revision, *path]:
                return partial(self.tree, repo_id=repo_id, revision=revision, path="/".join(path).strip("/"))
            case "GET", ["refs"]:
                return partial(self.refs, repo_id=repo_id)
            case "GET", ["commits", *revision] if revision:
                return partial(self.commits, repo_id=repo_id, revision="/".join(revision))
            case "POST", ["preupload", *revision] if revision:
                return partial(self.preupload, repo_id=repo_id, branch="/".join(revision))
            case "POST", ["commit", *revision] if revision:
                return partial(self.commit, repo_id=repo_id, branch="/".join(revision))
            case "POST", ["tag", *revision] if revision:
                return partial(self.create_tag, repo_id=repo_id, revision="/".join(revision))
            case "POST", ["branch", *branch] if branch:
                return partial(self.create_branch, repo_id=repo_id, branch="/".join(branch))
            case "DELETE", [("tag" | "branch") as kind, *name] if name:
                return partial(self.delete_ref, repo_id=repo_id, kind=kind, name="/".join(name))
        raise StoreError(404, f"no such endpoint: {method} /api/models/{repo_id}/{'/'.join(rest)}")

    # -- writes ------------------------------------------------------------------------------------------------

    async def create_repo(self, request: Request) -> Response:
        self._require_write(request)
        body = await _json_body(request)
        if body.get("type") not in (None, "model"):
            raise StoreError(400, "this endpoint hosts model repositories only")
        name, organization = body.get("name"), body.get("organization")
        if not isinstance(name, str) or not isinstance(organization, str):
            raise StoreError(400, "create_repo needs an 'org/name' repository id")
        private = bool(body.get("private")) or body.get("visibility") == "private"
        repo_id = f"{organization}/{name}"
        try:
            repo = await _run(self.store.create_repo, repo_id, private)
        except StoreError as error:
            if error.status != 409:
                raise
            existing = await _run(self.store.get_repo, repo_id)
            url = f"{_base_url(request)}/{existing.id if existing else repo_id}"
            return JSONResponse({"error": str(error), "url": url}, status_code=409)
        url = f"{_base_url(request)}/{repo.id}"
        return JSONResponse({"url": url, "name": repo.id, "id": repo.id})

    async def preupload(self, request: Request, repo_id: str, branch: str) -> Response:
        self._require_write(request)
        repo = await self._writable_repo(repo_id, request)
        body = await _json_body(request)
        files = body.get("files")
        if (
            not isinstance(files, list)
            or len(files) > MAX_PREUPLOAD_FILES
            or not all(isinstance(f, dict) for f in files)
        ):
            raise StoreError(400, f"preupload needs 'files': a list of at most {MAX_PREUPLOAD_FILES} objects")
        head = await _run(self.store.resolve_branch, repo, branch)
        tree = (await _run(self.store.read_commit, repo, head)).tree
        answers = []
        for item in files:
            path = validate_file_path(item.get("path"))
            size = item.get("size")
            if not isinstance(size, int) or size < 0:
                raise StoreError(400, f"preupload: size of {path!r} must be a non-negative integer")
            if size * 4 // 3 > self.max_body_bytes:
                raise StoreError(413, f"{path!r} ({size} bytes) exceeds this endpoint's upload limit")
            existing = tree.get(path)
            answers.append(
                {
                    "path": path,
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": existing.oid if existing else None,
                }
            )
        return JSONResponse({"files": answers, "commitOid": head})

    async def commit(self, request: Request, repo_id: str, branch: str) -> Response:
        self._require_write(request)
        repo = await self._writable_repo(repo_id, request)
        await _run(self.store.resolve_branch, repo, branch)
        declared = _natural(request.headers.get("content-length", ""))
        if declared is not None and declared > self.max_body_bytes:
            raise StoreError(413, f"commit body larger than {self.max_body_bytes} bytes")
        if self.uploads >= self.max_uploads:
            raise StoreError(503, f"{self.uploads} uploads in progress, the most this endpoint takes; retry shortly")
        self.uploads += 1
        try:
            body = await self._receive_commit(request, repo, branch)
        finally:
            self.uploads -= 1
        commit = await _run(
            self.store.commit, repo, branch, body.operations, body.summary, body.description, body.parent_commit
        )
        return JSONResponse(
            {
                "commitUrl": f"{_base_url(request)}/{repo.id}/commit/{commit.oid}",
                "commitOid": commit.oid,
                "pullRequestUrl": None,
            }
        )

    async def _receive_commit(self, request: Request, repo: Repo, branch: str) -> CommitRequest:
        """The parsed commit body, its README's metadata checked; an upload that fails is logged, once."""
        received = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal received
            async for chunk in request.stream():
                received += len(chunk)
                yield chunk

        try:
            body = await read_commit_body(counted(), self.store, self.max_body_bytes)
            await _run(self._check_card, body)
        except (StoreError, ClientDisconnect) as error:
            reason = "the client went away" if isinstance(error, ClientDisconnect) else f"{error.status} {error}"
            _logger.warning(
                "upload to %s@%s aborted after %d bytes (%s); nothing was committed", repo.id, branch, received, reason
            )
            raise
        return body

    def _check_card(self, body: CommitRequest) -> None:
        """Refuse a commit whose README.md metadata breaks the caps (see ``parse_card_data``)."""
        for operation in body.operations:
            if isinstance(operation, AddFile) and operation.path == "README.md":
                content = self.store.read_blob(operation.entry, MAX_CARD_BYTES)
                if content is None:
                    raise StoreError(413, f"README.md is over {MAX_CARD_BYTES} bytes")
                try:
                    parse_card_data(content.decode("utf-8", errors="replace"))
                except CheckpointError as error:
                    raise StoreError(400, str(error)) from None

    async def create_tag(self, request: Request, repo_id: str, revision: str) -> Response:
        self._require_write(request)
        repo = await self._writable_repo(repo_id, request)
        body = await _json_body(request)
        tag = body.get("tag")
        if not isinstance(tag, str):
            raise StoreError(400, "create_tag needs a 'tag' name")
        oid = await _run(self.store.resolve, repo, revision)
        await _run(self.store.create_ref, repo, "tags", tag, oid)
        return JSONResponse({"name": tag, "targetCommit": oid})

    async def create_branch(self, request: Request, repo_id: str, branch: str) -> Response:
        self._require_write(request)
        repo = await self._writable_repo(repo_id, request)
        body = await _json_body(request)
        start = body.get("startingPoint") or "main"
        if not isinstance(start, str):
            raise StoreError(400, "startingPoint must be a revision")
        oid = await _run(self.store.resolve, repo, start)
        await _run(self.store.create_ref, repo, "heads", branch, oid)
        return JSONResponse({"name": branch, "targetCommit": oid})

    async def delete_ref(self, request: Request, repo_id: str, kind: str, name: str) -> Response:
        self._require_write(request)
        repo = await self._writable_repo(repo_id, request)
        await _run(self.store.delete_ref, repo, "tags" if kind == "tag" else "heads", name)
        return JSONResponse({})

    async def validate_yaml(self, request: Request) -> Response:
        body = await _json_body(request)
        content = body.get("content")
        if not isinstance(content, str):
            raise StoreError(400, "validate-yaml needs 'content'")
        try:
            _card_metadata(content)
        except CheckpointError as error:
            return JSONResponse({"errors": [{"message": str(error)}], "warnings": []}, status_code=400)
        return JSONResponse({"errors": [], "warnings": []})

    # -- reads -------------------------------------------------------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        authorized = self._authorized(request)
        if self.gated_reads and not authorized:
            raise StoreError(401, "this endpoint needs a token for reads: set HF_TOKEN")
        params = request.query_params
        return JSONResponse(
            await _run(
                self._model_list,
                authorized,
                params.get("author"),
                [term.lower() for term in params.getlist("search")],
                params.getlist("filter"),
                params.get("full") in _TRUE,
                params.get("cardData") in _TRUE,
                _natural(params.get("limit", "")),
            )
        )

    async def model_info(self, request: Request, repo_id: str, revision: str | None) -> Response:
        repo = await self._readable_repo(repo_id, request)
        commit = await self._commit_at(repo, revision or "main")
        blobs = request.query_params.get("blobs") in _TRUE
        return JSONResponse(await _run(self._model_json, repo, commit, True, blobs))

    async def tree(self, request: Request, repo_id: str, revision: str, path: str) -> Response:
        repo = await self._readable_repo(repo_id, request)
        commit = await self._commit_at(repo, revision)
        recursive = request.query_params.get("recursive") in _TRUE
        entries = _tree_entries(commit, path, recursive)
        if path and not entries:
            raise StoreError(404, f"no folder {path!r} at {commit.oid}", "EntryNotFound", commit=commit.oid)
        return JSONResponse(entries)

    async def refs(self, request: Request, repo_id: str) -> Response:
        repo = await self._readable_repo(repo_id, request)
        branches, tags = await _run(self.store.refs, repo)

        def listing(refs: dict[str, str], kind: str) -> list[dict[str, str]]:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": oid} for n, oid in sorted(refs.items())]

        return JSONResponse(
            {"branches": listing(branches, "heads"), "converts": [], "tags": listing(tags, "tags"), "pullRequests": []}
        )

    async def commits(self, request: Request, repo_id: str, revision: str) -> Response:
        repo = await self._readable_repo(repo_id, request)
        oid = await _run(self.store.resolve, repo, revision)
        history = await _run(lambda: list(self.store.history(repo, oid)))
        return JSONResponse(
            [
                {"id": c.oid, "title": c.summary, "message": c.description, "authors": [], "date": c.date}
                for c in history
            ]
        )

    async def resolve(self, request: Request, repo_id: str, revision: str, path: str) -> Response:
        repo = await self._readable_repo(repo_id, request)
        commit = await self._commit_at(repo, revision)
        entry = commit.tree.get(path)
        if entry is None:
            raise StoreError(404, f"{path!r} not found in {repo.id} at {commit.oid}", "EntryNotFound", commit.oid)
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.oid}"'}
        return FileResponse(self.store.blob_path(entry), headers=headers, media_type="application/octet-stream")

    # -- helpers -----------------------------------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        return scheme.lower() == "bearer" and any(hmac.compare_digest(given, known.encode()) for known in self.tokens)

    def _require_write(self, request: Request) -> None:
        if not self.tokens:
            raise StoreError(403, "this endpoint is read-only: it was started without a token")
        if not self._authorized(request):
            raise StoreError(
                401, "writes need the token given to `copre-hub serve`: set HF_TOKEN (missing or wrong token)"
            )

    async def _readable_repo(self, repo_id: str, request: Request) -> Repo:
        repo = await _run(self.store.get_repo, repo_id)
        authorized = self._authorized(request)
        if repo is not None and (authorized or not (self.gated_reads or repo.private)):
            return repo
        if authorized:
            raise StoreError(404, f"repository {repo_id} not found", "RepoNotFound")
        raise StoreError(401, f"repository {repo_id} not found, or it needs a token: set HF_TOKEN", "RepoNotFound")

    async def _writable_repo(self, repo_id: str, request: Request) -> Repo:
        repo = await _run(self.store.get_repo, repo_id)
        if repo is None:
            raise StoreError(404, f"repository {repo_id} not found; create it first", "RepoNotFound")
        return repo

    async def _commit_at(self, repo: Repo, revision: str) -> Commit:
        oid = await _run(self.store.resolve, repo, revision)
        return await _run(self.store.read_commit, repo, oid)

    def _model_json(self, repo: Repo, commit: Commit, siblings: bool, blobs: bool) -> dict[str, Any]:
        card = self._card_data(commit)
        data: dict[str, Any] = {
            "_id": hashlib.sha1(repo.id.lower().encode(), usedforsecurity=False).hexdigest()[:24],
            "id": repo.id,
            "modelId": repo.id,
            "author": repo.id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "library_name": (card or {}).get("library_name"),
            "pipeline_tag": (card or {}).get("pipeline_tag"),
            "tags": list((card or {}).get("tags") or []),
            "usedStorage": sum(entry.size for entry in commit.tree.values()),
        }
        if card is not None:
            data["cardData"] = card
        if siblings:
            data["siblings"] = [
                {"rfilename": path, **({"size": entry.size, "blobId": entry.oid} if blobs else {})}
                for path, entry in sorted(commit.tree.items())
            ]
        return data

    def _model_list(
        self,
        authorized: bool,
        author: str | None,
        search: list[str],
        filters: list[str],
        full: bool,
        card_data: bool,
        limit: int | None,
    ) -> list[dict[str, Any]]:
        items = []
        for repo in self.store.list_repos():
            if repo.private and not authorized:
                continue
            if author and repo.id.split("/")[0].lower() != author.lower():
                continue
            if not all(term in repo.id.lower() for term in search):
                continue
            item = self._model_json(repo, self.store.read_commit(repo, self.store.resolve(repo, "main")), full, False)
            if not set(filters) <= set(item["tags"]):
                continue
            if not card_data:
                item.pop("cardData", None)
            items.append(item)
        return items[:limit] if limit else items

    def _card_data(self, commit: Commit) -> dict[str, Any] | None:
        """The README's metadata; None without a README, or for one over the caps (then served without it)."""
        entry = commit.tree.get("README.md")
        content = self.store.read_blob(entry, MAX_CARD_BYTES) if entry else None
        if content is None:
            return None
        try:
            return _card_metadata(content.decode("utf-8", errors="replace"))
        except CheckpointError as error:
            _logger.debug("README.md of commit %s served without metadata: %s", commit.oid, error)
            return None


def _card_metadata(content: str) -> dict[str, Any]:
    """The YAML metadata of a README, parsed within caps, then normalised as the Hub does (``ModelCardData``).

    Raises:
        CheckpointError: the block is malformed or breaks a cap.
    """
    return parse_card_data(content).to_dict()


def _tree_entries(commit: Commit, path: str, recursive: bool) -> list[dict[str, Any]]:
    """Files and folders under ``path`` (all depths with ``recursive``), as ``list_repo_tree`` expects them."""
    prefix = f"{path}/" if path else ""
    entries: dict[str, dict[str, Any]] = {}
    for file_path, entry in commit.tree.items():
        if not file_path.startswith(prefix):
            continue
        parts = file_path[len(prefix) :].split("/")
        depth = len(parts) if recursive else 1
        for i in range(1, min(depth, len(parts) - 1) + 1):
            folder = prefix + "/".join(parts[:i])
            folder_oid = hashlib.sha1(f"{commit.oid}:{folder}".encode(), usedforsecurity=False).hexdigest()
            entries[folder] = {"type": "directory", "oid": folder_oid, "path": folder}
        if recursive or len(parts) == 1:
            entries[file_path] = {"type": "file", "oid": entry.oid, "size": entry.size, "path": file_path}
    return [entries[key] for key in sorted(entries)]


def _path_parts(request: Request) -> list[str]:
    """The request path split on ``/`` before percent-decoding each part (a ``%2F`` stays inside its part)."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    raw = raw.split(b"?", 1)[0]
    if len(raw) > MAX_URL_PATH:
        raise StoreError(414, f"request path longer than {MAX_URL_PATH} bytes")
    try:
        return [unquote_to_bytes(part).decode("utf-8") for part in raw.decode("ascii").lstrip("/").split("/")]
    except UnicodeDecodeError:
        raise StoreError(400, "request path is not percent-encoded UTF-8") from None


async def _json_body(request: Request) -> dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise StoreError(413, f"request body larger than {MAX_JSON_BYTES} bytes")
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except RecursionError:
        raise StoreError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError:
        raise StoreError(400, "request body is not JSON (UTF-8)") from None
    if not isinstance(data, dict):
        raise StoreError(400, "request body must be a JSON object")
    if _json_depth(data) > MAX_JSON_DEPTH:
        raise StoreError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    return data


def _json_depth(value: Any, level: int = 1) -> int:
    """Nesting depth of parsed JSON, looking no deeper than one level past :data:`MAX_JSON_DEPTH`."""
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    if level > MAX_JSON_DEPTH:
        return level
    return max((_json_depth(child, level + 1) for child in children), default=level)


def _natural(text: str) -> int | None:
    """``text`` as a non-negative integer when it is one in ASCII digits, else None (``"²".isdigit()`` is True)."""
    return int(text) if text.isascii() and text.isdigit() else None


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _error_response(error: StoreError) -> JSONResponse:
    message = str(error)
    header = INVALID_CREDENTIALS if error.status == 401 and error.code is None else message
    headers = {"X-Error-Message": header.encode("ascii", "backslashreplace").decode("ascii").replace("\n", " ")}
    if error.code:
        headers["X-Error-Code"] = error.code
    if error.commit:
        headers["X-Repo-Commit"] = error.commit
    if error.status == 503:
        headers["Retry-After"] = "1"
    return JSONResponse({"error": message}, status_code=error.status, headers=headers)


async def _run(function: Callable[..., T], *args: Any) -> T:
    """Run blocking file-system work in a worker thread, keeping the event loop free for other requests."""
    return await anyio.to_thread.run_sync(function, *args)
