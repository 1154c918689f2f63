"""Reading the NDJSON body of ``POST /api/models/{repo}/commit/{revision}``, as huggingface_hub's ``_send_commit``
writes it, one JSON object per line::

    {"key": "header", "value": {"summary": str, "description": str, "parentCommit": oid (optional)}}
    {"key": "file", "value": {"path": str, "content": base64 str, "encoding": "base64"}}
    {"key": "deletedFile", "value": {"path": str}}
    {"key": "deletedFolder", "value": {"path": str}}

``lfsFile`` lines are refused: preupload answers ``"regular"`` for every file, so clients never send them. The body
is read as a stream, one line at a time, and memory stays bounded whatever its size: a line is kept whole up to
:data:`SPILL_BYTES`; past that, the base64 ``content`` string of a file line is decoded as it arrives and streamed
into a blob on disk (in worker threads, off the event loop), and only the rest of the line is kept. Nothing becomes
visible here: the caller commits the returned operations, and a body that breaks off or is malformed leaves only
unreferenced blobs.
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
    BlobWriter,
    DeleteFile,
    DeleteFolder,
    FileEntry,
    Operation,
    RepoStore,
    StoreError,
    validate_file_path,
)

MAX_OPERATIONS = 10_000
SPILL_BYTES = 1 << 20
_MAX_MESSAGE = 10_000
_COMMIT_OID = re.compile(r"[0-9a-fA-F]{5,40}")
# Where a file's content string starts. Inside a JSON string every quote is escaped, so this matches real keys only.
_CONTENT_START = re.compile(rb'"content"\s*:\s*"')


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
            ``lfsFile``, a line over :data:`SPILL_BYTES` that is not a file), 413 past ``max_bytes`` or
            :data:`MAX_OPERATIONS`.
        starlette.requests.ClientDisconnect: the client went away before the end of the body.
    """
    request: CommitRequest | None = None
    line = bytearray()  # the current line, without the part of a file's content already streamed to a blob
    spill: _ContentSpill | None = None  # the content string being streamed, until its closing quote
    spilled: FileEntry | None = None  # the blob of the current line's streamed content
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > max_bytes:
                raise StoreError(413, f"commit body larger than {max_bytes} bytes")
            pos = 0
            while pos < len(chunk):
                if spill is not None:
                    quote = chunk.find(b'"', pos)
                    await spill.add(chunk[pos : len(chunk) if quote < 0 else quote])
                    if quote < 0:
                        break
                    spilled, spill = await spill.finish(), None
                    line += b'"'  # the streamed string stays in the line as "" (its blob is ``spilled``)
                    pos = quote + 1
                    continue
                newline = chunk.find(b"\n", pos)
                if newline < 0:
                    line += chunk[pos:]
                    pos = len(chunk)
                    if len(line) > SPILL_BYTES:
                        if spilled is not None:
                            raise StoreError(400, f"malformed commit body: a line over {SPILL_BYTES} bytes")
                        spill, chunk = _start_spill(line, store)
                        pos = 0
                    continue
                line += chunk[pos:newline]
                request = await anyio.to_thread.run_sync(_add_line, request, bytes(line), store, spilled)
                line.clear()
                spilled = None
                pos = newline + 1
        if spill is not None:
            raise StoreError(400, "malformed commit body: a file's content string is not closed")
        if line.strip() or spilled is not None:
            request = await anyio.to_thread.run_sync(_add_line, request, bytes(line), store, spilled)
    finally:
        if spill is not None:
            await anyio.to_thread.run_sync(spill.writer.discard)
    if request is None:
        raise StoreError(400, "malformed commit body: empty, expected NDJSON starting with a header line")
    return request


def _start_spill(line: bytearray, store: RepoStore) -> tuple[_ContentSpill, bytes]:
    """Begin streaming the content string of an over-long line: cut the line after the string's opening quote and
    return the spill with the bytes that already follow the quote (to be fed to it)."""
    match = _CONTENT_START.search(line)
    if match is None:
        raise StoreError(400, f"malformed commit body: a line over {SPILL_BYTES} bytes that holds no file content")
    rest = bytes(line[match.end() :])
    del line[match.end() :]
    return _ContentSpill(store.open_blob()), rest


class _ContentSpill:
    """Decodes one base64 string as it arrives and writes it to a blob, in blocks of about :data:`SPILL_BYTES`."""

    def __init__(self, writer: BlobWriter) -> None:
        self.writer = writer
        self.pending = bytearray()

    async def add(self, data: bytes) -> None:
        self.pending += data
        if len(self.pending) >= SPILL_BYTES:
            await anyio.to_thread.run_sync(self._flush, False)

    async def finish(self) -> FileEntry:
        await anyio.to_thread.run_sync(self._flush, True)
        return await anyio.to_thread.run_sync(self.writer.commit)

    def _flush(self, final: bool) -> None:
        """Decode the complete 4-character groups pending (all of it when ``final``); JSON's ``\\/`` is a ``/``."""
        keep = 1 if not final and self.pending.endswith(b"\\") else 0  # the first half of an escape
        text = bytes(self.pending[: len(self.pending) - keep]).replace(b"\\/", b"/")
        usable = len(text) if final else max(len(text) - 4, 0) // 4 * 4  # padding can only be in the last group
        block, rest = text[:usable], text[usable:]
        if b"\\" in block or (not final and b"=" in block):
            raise StoreError(400, "malformed file operation: the content is not base64")
        try:
            self.writer.write(base64.b64decode(block, validate=True))
        except (binascii.Error, ValueError):
            raise StoreError(400, "malformed file operation: the content is not base64") from None
        self.pending = bytearray(rest + bytes(self.pending[len(self.pending) - keep :]))


def _add_line(
    request: CommitRequest | None, line: bytes, store: RepoStore, spilled: FileEntry | None = None
) -> CommitRequest | None:
    """Parse one NDJSON line into ``request`` (created by the header line); file contents go to ``store``.

    ``spilled`` is the blob of the line's content string when it was streamed (the line then holds ``""``).
    """
    if not line.strip() and spilled is None:
        return request
    try:
        item = json.loads(line)
    except (ValueError, RecursionError):
        raise StoreError(400, "malformed commit body: a line is not JSON (or nests too deep)") from None
    if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
        raise StoreError(400, 'malformed commit body: each line must be {"key": ..., "value": {...}}')
    key, value = item.get("key"), item["value"]
    if request is None:
        if key != "header":
            raise StoreError(400, "malformed commit body: the first line must be the header")
        return _header(value)
    if len(request.operations) >= MAX_OPERATIONS:
        raise StoreError(413, f"more than {MAX_OPERATIONS} operations in one commit")
    if spilled is not None and key != "file":
        raise StoreError(400, f"malformed commit body: a {key!r} line over {SPILL_BYTES} bytes")
    if key == "file":
        request.operations.append(_file(value, store, spilled))
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


def _file(value: dict[str, object], store: RepoStore, spilled: FileEntry | None) -> AddFile:
    path = validate_file_path(value.get("path"))
    content = value.get("content")
    if value.get("encoding") != "base64" or not isinstance(content, str):
        raise StoreError(400, f"malformed file operation for {path!r}: expected base64 'content'")
    if spilled is not None:
        if content:  # the streamed string was another key's, not this file's content
            raise StoreError(400, f"malformed file operation for {path!r}: expected base64 'content'")
        return AddFile(path, spilled)
    try:
        data = base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise StoreError(400, f"malformed file operation for {path!r}: invalid base64") from None
    return AddFile(path, store.write_blob(data))
