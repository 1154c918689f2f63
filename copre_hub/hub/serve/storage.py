"""On-disk repositories of ``copre-hub serve``: content-addressed blobs, immutable commits, refs moved by rename.

Layout under the storage root::

    blobs/ab/abcdef...        file contents named by their sha256; written once (temporary file, fsync, rename)
    repos/<org>/<name>/       one folder per repository, lower-cased (ids match case-insensitively)
        repo.json             {"id": "Org/Name", "private": false, "createdAt": "..."}
        commits/<oid>.json    immutable commit: parents, message, date, tree {path: {sha256, size, oid}}
        refs/heads/<branch>   the branch's commit oid; replaced atomically (temporary file, fsync, os.replace)
        refs/tags/<tag>
        lock                  flock'ed around every change of the refs
    tmp/                      repositories being created (same file system, so the final rename is atomic)

A commit becomes visible only when its branch file is replaced, after its blobs and its manifest are on disk: a
reader sees the previous revision or the new one, never a part, and a push that dies halfway leaves the branch
untouched (at worst an unreferenced blob). Every ref change holds an exclusive ``flock`` on the repository's lock
file (it excludes threads and processes alike), so concurrent commits are serialised and none is lost; a commit
naming a ``parentCommit`` that is no longer the head is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, unquote

from copre_hub._io import atomic_write, fsync
from copre_hub.errors import ConfigError
from copre_hub.hub.ids import is_commit_hash, validate_repo_id

DEFAULT_BRANCH = "main"
MAX_PATH_LENGTH = 1000
MAX_PATH_DEPTH = 32
_REF_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")
_MAX_REF_LENGTH = 200


class StoreError(Exception):
    """A request the store refuses; ``status`` and ``code`` become the HTTP status and ``X-Error-Code``."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.commit = commit


@dataclass(frozen=True)
class FileEntry:
    """A file of a commit: its blob (``sha256``), ``size`` and git blob id ``oid`` (the ETag clients cache by)."""

    sha256: str
    size: int
    oid: str


@dataclass(frozen=True)
class Commit:
    """An immutable commit: ``tree`` maps each file path to its :class:`FileEntry`."""

    oid: str
    parents: tuple[str, ...]
    summary: str
    description: str
    date: str
    tree: dict[str, FileEntry]


@dataclass(frozen=True)
class Repo:
    """A repository: its id as created, its folder, its visibility and creation date."""

    id: str
    path: Path
    private: bool
    created_at: str


@dataclass(frozen=True)
class AddFile:
    """Commit operation: put ``entry`` (an already stored blob) at ``path``."""

    path: str
    entry: FileEntry


@dataclass(frozen=True)
class DeleteFile:
    """Commit operation: remove the file at ``path``."""

    path: str


@dataclass(frozen=True)
class DeleteFolder:
    """Commit operation: remove every file under ``path/``."""

    path: str


Operation = AddFile | DeleteFile | DeleteFolder


def validate_file_path(path: object) -> str:
    """Check a path inside a repository: relative, ``/``-separated, no ``.``/``..``/empty part, no backslash,
    no control character, not under ``.git/``, bounded length and depth.

    Raises:
        StoreError: 400 naming the offending path.
    """
    if not isinstance(path, str) or not path:
        raise StoreError(400, "file path must be a non-empty string")
    parts = path.split("/")
    reason = None
    if len(path) > MAX_PATH_LENGTH or len(parts) > MAX_PATH_DEPTH:
        reason = f"longer than {MAX_PATH_LENGTH} characters or deeper than {MAX_PATH_DEPTH} folders"
    elif path.startswith("/") or "\\" in path:
        reason = "absolute paths and backslashes are not allowed"
    elif any(part in ("", ".", "..") for part in parts):
        reason = "empty, '.' and '..' path parts are not allowed"
    elif not _is_utf8(path):
        reason = "it is not valid Unicode (a lone surrogate)"
    elif any(ord(ch) < 32 or ch == "\x7f" for ch in path) or any(len(part.encode()) > 255 for part in parts):
        reason = "control characters and parts over 255 bytes are not allowed"
    elif parts[0] == ".git":
        reason = "'.git/' is reserved"
    if reason:
        raise StoreError(400, f"invalid file path {path!r}: {reason}")
    return path


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_ref_name(name: str) -> str:
    """Check a branch or tag name (letters, digits, ``._-``, ``/`` between parts; not a commit id).

    Raises:
        StoreError: 400 naming the offending name.
    """
    if not _is_ref_name(name) or is_commit_hash(name):
        raise StoreError(400, f"invalid branch or tag name {name!r}")
    return name


def _is_ref_name(name: str) -> bool:
    return (
        len(name) <= _MAX_REF_LENGTH
        and bool(_REF_NAME.fullmatch(name))
        and ".." not in name
        and not name.endswith((".lock", "."))
    )


class RepoStore:
    """The repositories under one storage root; safe to share between threads and processes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        for folder in ("blobs", "repos", "tmp"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    # -- repositories ------------------------------------------------------------------------------------------

    def create_repo(self, repo_id: str, private: bool) -> Repo:
        """Create a repository whose ``main`` holds an empty initial commit.

        Raises:
            StoreError: 400 for an invalid id, 409 when it exists (in any letter case).
        """
        try:
            validate_repo_id(repo_id)
        except ConfigError as error:
            raise StoreError(400, str(error)) from error
        final = self._repo_path(repo_id)
        staging = self.root / "tmp" / f"repo-{uuid.uuid4().hex}"
        created_at = _now()
        try:
            (staging / "commits").mkdir(parents=True)
            (staging / "refs" / "heads").mkdir(parents=True)
            (staging / "refs" / "tags").mkdir()
            (staging / "lock").touch()
            _write_atomic(staging / "repo.json", {"id": repo_id, "private": private, "createdAt": created_at})
            initial = _make_commit((), "initial commit", "", created_at, {})
            _write_atomic(staging / "commits" / f"{initial.oid}.json", _commit_json(initial))
            _write_atomic(staging / "refs" / "heads" / DEFAULT_BRANCH, initial.oid)
            final.parent.mkdir(parents=True, exist_ok=True)
            with self._locked(self.root / "repos" / ".lock"):
                if final.exists():
                    raise StoreError(409, f"repository {self.get_repo(repo_id).id} already exists")
                os.rename(staging, final)
                fsync(final.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already when the rename happened
        return self.get_repo(repo_id)

    def get_repo(self, repo_id: str) -> Repo | None:
        """The repository ``org/name`` (any letter case), or None (also for an invalid id)."""
        try:
            path = self._repo_path(validate_repo_id(repo_id))
        except ConfigError:
            return None
        try:
            data = json.loads((path / "repo.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return Repo(id=data["id"], path=path, private=bool(data["private"]), created_at=data["createdAt"])

    def list_repos(self) -> list[Repo]:
        """Every repository, sorted by id."""
        folders = (name for org in self._children(self.root / "repos") for name in self._children(org))
        repos = (self.get_repo(f"{folder.parent.name}/{folder.name}") for folder in folders)
        return sorted((repo for repo in repos if repo is not None), key=lambda repo: repo.id.lower())

    # -- blobs -------------------------------------------------------------------------------------------------

    def write_blob(self, data: bytes) -> FileEntry:
        """Store ``data`` once under its sha256 (temporary file, fsync, rename) and describe it."""
        writer = self.open_blob()
        try:
            writer.write(data)
            return writer.commit()
        finally:
            writer.discard()

    def open_blob(self) -> BlobWriter:
        """A writer that streams one blob to disk; :meth:`BlobWriter.commit` stores it under its sha256."""
        return BlobWriter(self)

    def blob_path(self, entry: FileEntry) -> Path:
        """Where the content of ``entry`` is stored."""
        return self.root / "blobs" / entry.sha256[:2] / entry.sha256

    def read_blob(self, entry: FileEntry, limit: int) -> bytes | None:
        """The content of a blob of at most ``limit`` bytes, else None."""
        return self.blob_path(entry).read_bytes() if entry.size <= limit else None

    # -- revisions ---------------------------------------------------------------------------------------------

    def resolve(self, repo: Repo, revision: str) -> str:
        """The commit a branch, tag or full commit id names.

        Raises:
            StoreError: 404 ``RevisionNotFound``.
        """
        if is_commit_hash(revision):
            if (repo.path / "commits" / f"{revision}.json").is_file():
                return revision
        elif _is_ref_name(revision):
            for kind in ("heads", "tags"):
                with contextlib.suppress(OSError):
                    return (repo.path / "refs" / kind / _ref_file(revision)).read_text(encoding="ascii").strip()
        raise StoreError(404, f"revision {revision!r} not found in {repo.id}", "RevisionNotFound")

    def resolve_branch(self, repo: Repo, branch: str) -> str:
        """The head commit of ``branch`` (commits go to branches only, never to tags or commit ids).

        Raises:
            StoreError: 404 ``RevisionNotFound``.
        """
        with contextlib.suppress(OSError):
            if _is_ref_name(branch):
                return (repo.path / "refs" / "heads" / _ref_file(branch)).read_text(encoding="ascii").strip()
        raise StoreError(404, f"branch {branch!r} not found in {repo.id}", "RevisionNotFound")

    def read_commit(self, repo: Repo, oid: str) -> Commit:
        """The commit ``oid`` of ``repo`` (written once, never changed)."""
        data = json.loads((repo.path / "commits" / f"{oid}.json").read_text(encoding="utf-8"))
        return Commit(
            oid=oid,
            parents=tuple(data["parents"]),
            summary=data["summary"],
            description=data["description"],
            date=data["date"],
            tree={path: FileEntry(**entry) for path, entry in data["tree"].items()},
        )

    def history(self, repo: Repo, oid: str) -> Iterator[Commit]:
        """Commits from ``oid`` back to the first, following first parents."""
        while True:
            commit = self.read_commit(repo, oid)
            yield commit
            if not commit.parents:
                return
            oid = commit.parents[0]

    def commit(
        self,
        repo: Repo,
        branch: str,
        operations: Iterable[Operation],
        summary: str,
        description: str = "",
        parent_commit: str | None = None,
    ) -> Commit:
        """Apply ``operations`` on the head of ``branch`` as one new commit, then move the branch to it.

        Raises:
            StoreError: 404 ``RevisionNotFound`` (no such branch), 404 ``EntryNotFound`` (deleting a missing
                file), 409 (a file where a folder is, or the reverse), 412 (``parent_commit`` is not the head).
        """
        with self._locked(repo.path / "lock"):
            head = self.resolve_branch(repo, branch)
            if parent_commit is not None and not head.startswith(parent_commit.lower()):
                raise StoreError(
                    412,
                    f"parentCommit {parent_commit} is not the head of {branch!r} ({head}): another push landed "
                    "first; pull and push again",
                )
            tree = _apply(self.read_commit(repo, head).tree, operations)
            commit = _make_commit((head,), summary, description, _now(), tree)
            _write_atomic(repo.path / "commits" / f"{commit.oid}.json", _commit_json(commit))
            _write_atomic(repo.path / "refs" / "heads" / _ref_file(branch), commit.oid)
        return commit

    def refs(self, repo: Repo) -> tuple[dict[str, str], dict[str, str]]:
        """Branches and tags of ``repo``, each name -> commit."""
        return self._read_refs(repo, "heads"), self._read_refs(repo, "tags")

    def create_ref(self, repo: Repo, kind: str, name: str, oid: str) -> None:
        """Create branch (``kind="heads"``) or tag (``"tags"``) ``name`` at commit ``oid``.

        Raises:
            StoreError: 400 invalid name, 409 when a branch or tag of that name exists.
        """
        validate_ref_name(name)
        with self._locked(repo.path / "lock"):
            branches, tags = self.refs(repo)
            if name in branches or name in tags:
                kind_name = "branch" if name in branches else "tag"
                raise StoreError(409, f"{name!r} already exists in {repo.id} as a {kind_name}")
            _write_atomic(repo.path / "refs" / kind / _ref_file(name), oid)

    def delete_ref(self, repo: Repo, kind: str, name: str) -> None:
        """Delete a branch or a tag (``main`` stays).

        Raises:
            StoreError: 403 for ``main``, 404 ``RevisionNotFound`` when missing.
        """
        if kind == "heads" and name == DEFAULT_BRANCH:
            raise StoreError(403, f"the {DEFAULT_BRANCH!r} branch cannot be deleted")
        with self._locked(repo.path / "lock"), contextlib.suppress(FileNotFoundError):
            if _is_ref_name(name):
                (repo.path / "refs" / kind / _ref_file(name)).unlink()
                return
        raise StoreError(404, f"{name!r} not found in {repo.id}", "RevisionNotFound")

    # -- helpers -----------------------------------------------------------------------------------------------

    def _repo_path(self, repo_id: str) -> Path:
        org, name = repo_id.lower().split("/")
        return self.root / "repos" / org / name

    def _read_refs(self, repo: Repo, kind: str) -> dict[str, str]:
        return {
            unquote(path.name): path.read_text(encoding="ascii").strip()
            for path in self._children(repo.path / "refs" / kind)
        }

    @staticmethod
    def _children(folder: Path) -> list[Path]:
        """Entries of ``folder`` except dot-files (locks, temporary files); none when it is not a folder."""
        try:
            return sorted(path for path in folder.iterdir() if not path.name.startswith("."))
        except OSError:
            return []

    @staticmethod
    @contextlib.contextmanager
    def _locked(path: Path) -> Iterator[None]:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


class BlobWriter:
    """One blob being written: chunks go to a temporary file under ``tmp/`` while its sha256 is computed, so memory
    holds one chunk whatever the blob's size. Not thread-safe; use it from one thread at a time."""

    def __init__(self, store: RepoStore) -> None:
        self._store = store
        fd, name = tempfile.mkstemp(prefix="blob-", dir=store.root / "tmp")
        self._file = os.fdopen(fd, "wb")
        self._path = Path(name)
        self._sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        """Append ``data`` to the blob."""
        self._file.write(data)
        self._sha256.update(data)
        self.size += len(data)

    def commit(self) -> FileEntry:
        """Store the blob under its sha256 (fsync, rename; a blob already stored is kept) and describe it."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        entry = FileEntry(sha256=self._sha256.hexdigest(), size=self.size, oid=self._git_oid())
        path = self._store.blob_path(entry)
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            os.chmod(self._path, 0o644)
            os.replace(self._path, path)
            fsync(path.parent)
        return entry

    def discard(self) -> None:
        """Drop the temporary file (a no-op after :meth:`commit`)."""
        self._file.close()
        self._path.unlink(missing_ok=True)

    def _git_oid(self) -> str:
        """The git blob id, ``sha1("blob <size>\\0" + content)``: its header needs the size, so the file is re-read."""
        digest = hashlib.sha1(b"blob %d\0" % self.size, usedforsecurity=False)
        with open(self._path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()


def _apply(tree: dict[str, FileEntry], operations: Iterable[Operation]) -> dict[str, FileEntry]:
    tree = dict(tree)
    for operation in operations:
        if isinstance(operation, AddFile):
            _check_no_clash(tree, operation.path)
            tree[operation.path] = operation.entry
        elif isinstance(operation, DeleteFile):
            if tree.pop(operation.path, None) is None:
                raise StoreError(404, f"A file with this name doesn't exist: {operation.path!r}", "EntryNotFound")
        else:
            prefix = operation.path.rstrip("/") + "/"
            doomed = [path for path in tree if path.startswith(prefix)]
            if not doomed:
                raise StoreError(404, f"A folder with this name doesn't exist: {operation.path!r}", "EntryNotFound")
            for path in doomed:
                del tree[path]
    return tree


def _check_no_clash(tree: dict[str, FileEntry], path: str) -> None:
    parts = path.split("/")
    parents = ("/".join(parts[:i]) for i in range(1, len(parts)))
    if any(parent in tree for parent in parents) or any(other.startswith(path + "/") for other in tree):
        raise StoreError(409, f"cannot add {path!r}: a file and a folder would share a name")


def _make_commit(
    parents: tuple[str, ...], summary: str, description: str, date: str, tree: dict[str, FileEntry]
) -> Commit:
    """A commit whose oid is the sha1 of its canonical JSON (same content and parents, same oid)."""
    commit = Commit(oid="", parents=parents, summary=summary, description=description, date=date, tree=tree)
    oid = hashlib.sha1(json.dumps(_commit_json(commit), sort_keys=True).encode(), usedforsecurity=False)
    return dataclasses.replace(commit, oid=oid.hexdigest())


def _commit_json(commit: Commit) -> dict[str, object]:
    return {
        "parents": list(commit.parents),
        "summary": commit.summary,
        "description": commit.description,
        "date": commit.date,
        "tree": {path: dataclasses.asdict(entry) for path, entry in sorted(commit.tree.items())},
    }


def _ref_file(name: str) -> str:
    return quote(name, safe="")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _write_atomic(path: Path, content: bytes | str | dict[str, object]) -> None:
    """Write ``content`` atomically (temporary file, fsync, rename), then fsync the folder so the rename lasts."""
    if isinstance(content, dict):
        content = json.dumps(content, indent=1)
    data = content.encode() if isinstance(content, str) else content
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    fsync(path.parent)
