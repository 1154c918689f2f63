"""Reading the NDJSON body of ``POST /api/models/{repo}/commit/{revision}``, as huggingface_hub's ``_send_commit``
writes it, one JSON object per line::

    {"key": "header", "value": {"summary": str, "description": str, "parentCommit": oid (optional)}}
    {"key": "file", "value": {"path": str, "content": base64 str, "encoding": "base64"}}
    {"key": "deletedFile", "value": {"path": str}}
    {"key": "deletedFolder", "value": {"path": str}}

``lfsFile`` lines are refused: preupload answers ``"regular"`` for every file, so clients never send them. The body
is read as a stream, one line at a time; each file is decoded and stored as a blob as soon as its line is complete
(in a worker thread, off the event loop), so memory holds at most one line. Nothing becomes visible here: the
caller commits the returned operations, and a body that breaks off or is malformed leaves only unreferenced blobs.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio.to_thread

from copre_hub.hub.serve.storage import (
    AddFile,
    DeleteFile,
    DeleteFolder,
    Operation,
    RepoStore,
    StoreError,
    validate_file_path,
)

MAX_OPERATIONS = 10_000
_MAX_MESSAGE = 10_000
_COMMIT_OID = re.compile(r"[0-9a-fA-F]{5,40}")


@dataclass
class CommitRequest:
    """A parsed commit body: the header's message and parent, and the operations in order."""

    summary: str = ""
    description: str = ""
    parent_commit: str | None = None
    operations: list[Operation] = field(default_factory=list)


async def read_commit_body(chunks: AsyncIterator[bytes], store: RepoStore, max_bytes: int) -> CommitRequest:
    """Parse a commit body from its byte chunks, storing each file's content as a blob.

    Args:
        chunks: the request body (``request.stream()``).
        store: where file contents go.
        max_bytes: the largest body accepted.

    Returns:
        The header fields and the operations.

    Raises:
        StoreError: 400 for a malformed body (not NDJSON, no header first, unknown key, bad path, bad base64,
            ``lfsFile``), 413 past ``max_bytes`` or :data:`MAX_OPERATIONS`.
        starlette.requests.ClientDisconnect: the client went away before the end of the body.
    """
    request: CommitRequest | None = None
    buffer = bytearray()
    scanned = received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > max_bytes:
            raise StoreError(413, f"commit body larger than {max_bytes} bytes")
        buffer += chunk
        while (newline := buffer.find(b"\n", scanned)) >= 0:
            line = bytes(buffer[:newline])
            del buffer[: newline + 1]
            scanned = 0
            request = await anyio.to_thread.run_sync(_add_line, request, line, store)
        scanned = len(buffer)
    if buffer.strip():
        request = await anyio.to_thread.run_sync(_add_line, request, bytes(buffer), store)
    if request is None:
        raise StoreError(400, "malformed commit body: empty, expected NDJSON starting with a header line")
    return request


def _add_line(request: CommitRequest | None, line: bytes, store: RepoStore) -> CommitRequest | None:
    """Parse one NDJSON line into ``request`` (created by the header line); file contents go to ``store``."""
    if not line.strip():
        return request
    try:
        item = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise StoreError(400, "malformed commit body: a line is not JSON") from None
    if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
        raise StoreError(400, 'malformed commit body: each line must be {"key": ..., "value": {...}}')
    key, value = item.get("key"), item["value"]
    if request is None:
        if key != "header":
            raise StoreError(400, "malformed commit body: the first line must be the header")
        return _header(value)
    if len(request.operations) >= MAX_OPERATIONS:
        raise StoreError(413, f"more than {MAX_OPERATIONS} operations in one commit")
    if key == "file":
        request.operations.append(_file(value, store))
    elif key == "deletedFile":
        request.operations.append(DeleteFile(validate_file_path(value.get("path"))))
    elif key == "deletedFolder":
        request.operations.append(DeleteFolder(validate_file_path(str(value.get("path", "")).rstrip("/"))))
    elif key == "lfsFile":
        raise StoreError(400, "LFS uploads are not supported: this endpoint takes regular uploads only")
    else:
        raise StoreError(400, f"malformed commit body: unknown operation {key!r}")
    return request


def _header(value: dict[str, object]) -> CommitRequest:
    summary, description = value.get("summary", ""), value.get("description", "")
    parent = value.get("parentCommit")
    if not isinstance(summary, str) or not isinstance(description, str) or len(summary + description) > _MAX_MESSAGE:
        raise StoreError(
            400, f"malformed commit header: summary and description are strings of at most {_MAX_MESSAGE} characters"
        )
    if parent is not None and not (isinstance(parent, str) and _COMMIT_OID.fullmatch(parent)):
        raise StoreError(400, "malformed commit header: parentCommit must be a commit id (5 to 40 hex digits)")
    return CommitRequest(summary=summary, description=description, parent_commit=parent)


def _file(value: dict[str, object], store: RepoStore) -> AddFile:
    path = validate_file_path(value.get("path"))
    content = value.get("content")
    if value.get("encoding") != "base64" or not isinstance(content, str):
        raise StoreError(400, f"malformed file operation for {path!r}: expected base64 'content'")
    try:
        data = base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise StoreError(400, f"malformed file operation for {path!r}: invalid base64") from None
    return AddFile(path, store.write_blob(data))
