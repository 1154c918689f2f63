"""``copre-hub serve --with-published``: the storage stocked with the published repositories before the endpoint opens.

Each published id with weights gets, in its repository ``{org}/{id}``, what ``copre-hub publish`` would leave there:
one commit on ``main`` holding exactly its snapshot's files, tagged ``v1``. The store is written directly (no HTTP,
so no token and no network are needed, and ``HF_HUB_OFFLINE`` does not matter), through the same atomic commits and
ref locks as every push. Stocking is idempotent: a repository whose ``v1`` already holds the pinned weights is left
as it is, so a restarted server commits nothing.
"""

from __future__ import annotations

from pathlib import Path

from copre_hub.errors import ConfigError
from copre_hub.hub.checkpoint import WEIGHTS_NAME
from copre_hub.hub.ids import DEFAULT_REVISION, PUBLISHED_TAG, PublishedModel, published_models, published_repo_id
from copre_hub.hub.serve.storage import AddFile, DeleteFile, FileEntry, RepoStore, StoreError
from copre_hub.hub.snapshots import card_path, snapshot, snapshot_files

_CHUNK = 1 << 20


def stock_published(store: RepoStore) -> list[str]:
    """Put every published repository that has weights into ``store``; one line per published id saying what was done.

    Raises:
        ModelNotFoundError: a pinned id has no snapshot (a wheel install; the message says where to get them).
        IntegrityError: a snapshot's weights are not the pinned ones.
        ConfigError: a repository's ``v1`` in ``store`` already names other weights (tags never move), or another
            writer changed the repository meanwhile.
    """
    lines = []
    for model in published_models():
        if model.sha256 is None:
            lines.append(f"{model.name}: skipped, no published weights yet (its card: {card_path(model)})")
            continue
        folder = snapshot(model)
        try:
            lines.append(_stock(store, model, folder))
        except StoreError as error:  # a concurrent writer: the repository was created, moved or tagged meanwhile
            raise ConfigError(f"cannot stock {model.name} in {store.root}: {error}; start the server again.") from error
    return lines


def _stock(store: RepoStore, model: PublishedModel, folder: Path) -> str:
    repo_id = published_repo_id(model)
    repo = store.get_repo(repo_id) or store.create_repo(repo_id, private=False)
    _, tags = store.refs(repo)
    if PUBLISHED_TAG in tags:
        if not _holds(store.read_commit(repo, tags[PUBLISHED_TAG]).tree, model):
            raise ConfigError(
                f"{repo.id}@{PUBLISHED_TAG} in {store.root} (commit {tags[PUBLISHED_TAG]}) holds other weights than "
                f"the pinned {model.sha256}; tags never move: serve another --storage."
            )
        return f"{model.name}: unchanged, {repo.id}@{PUBLISHED_TAG} already holds sha256 {model.sha256[:12]}..."
    head = store.resolve_branch(repo, DEFAULT_REVISION)
    tree = store.read_commit(repo, head).tree
    if _holds(tree, model):
        commit = head
    else:
        files = {path: _store_file(store, folder / path) for path in snapshot_files(folder)}
        operations = [
            *(DeleteFile(path) for path in tree if path not in files and not path.startswith(".")),
            *(AddFile(path, entry) for path, entry in files.items()),
        ]
        summary = f"Publish {model.name} ({PUBLISHED_TAG})"
        commit = store.commit(repo, DEFAULT_REVISION, operations, summary, parent_commit=head).oid
    store.create_ref(repo, "tags", PUBLISHED_TAG, commit)
    return f"{model.name}: stocked {repo.id}@{PUBLISHED_TAG}, commit {commit[:12]} (sha256 {model.sha256[:12]}...)"


def _holds(tree: dict[str, FileEntry], model: PublishedModel) -> bool:
    entry = tree.get(WEIGHTS_NAME)
    return entry is not None and entry.sha256 == model.sha256


def _store_file(store: RepoStore, path: Path) -> FileEntry:
    writer = store.open_blob()
    try:
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(_CHUNK), b""):
                writer.write(block)
        return writer.commit()
    finally:
        writer.discard()
