"""``copre-hub publish``: mirror the published snapshots to the endpoint, one commit and the ``v1`` tag each.

For every published id whose registry pin is set, the snapshot ``model_cards/<id>/`` (checked against the pin) is
pushed as it is with :func:`copre_hub.hub.api.push`: one commit on ``main`` of ``{org}/{id}`` that makes the
repository hold exactly the snapshot's files, then the tag ``v1`` on it. Publishing is idempotent:

- ``v1`` already holds the pinned weights: nothing is done (``unchanged``);
- ``main`` holds them but ``v1`` is missing (a publish cut short after its commit): only the tag is added
  (``tagged``);
- ``v1`` holds other weights: refused, since tags never move;
- otherwise one commit and the tag (``published``).

"Holds the pinned weights" is decided from the endpoint's file metadata, without downloading anything: the sha256 of
an LFS file (huggingface.co), else the git blob id of a regular one (``copre-hub serve``), compared with that of the
snapshot's bytes. Ids without weights are skipped (``skipped``), with a line saying so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from copre_hub import _env
from copre_hub.errors import ConfigError, HubEndpointError
from copre_hub.hub.api import _create_tag, _hf_api, _hub_errors, push
from copre_hub.hub.checkpoint import WEIGHTS_NAME
from copre_hub.hub.ids import (
    DEFAULT_REVISION,
    PUBLISHED_TAG,
    PublishedModel,
    parse_repo_id,
    published_model,
    published_models,
    published_repo_id,
)
from copre_hub.hub.snapshots import card_path, snapshot

if TYPE_CHECKING:
    from huggingface_hub import HfApi, ModelInfo

Status = Literal["published", "tagged", "unchanged", "skipped"]


@dataclasses.dataclass(frozen=True)
class PublishOutcome:
    """What :func:`publish_model` did for one id.

    Attributes:
        model_id: the published id.
        repo_id: its repository, ``{org}/{id}``.
        status: ``published`` (a new commit and its tag), ``tagged`` (the tag only), ``unchanged`` or ``skipped``
            (no published weights yet).
        commit: the commit that holds the pinned weights, None when skipped.
        message: one line saying what happened, for the command line.
    """

    model_id: str
    repo_id: str
    status: Status
    commit: str | None
    message: str


def select(model_ids: Sequence[str] = ()) -> list[PublishedModel]:
    """The registry rows named by ``model_ids`` (short ids, any letter case), or every published id when empty.

    Raises:
        ConfigError: an id that is not a published one.
    """
    if not model_ids:
        return list(published_models())
    rows = [(model_id, published_model(model_id)) for model_id in model_ids]
    unknown = [model_id for model_id, row in rows if row is None]
    if unknown:
        names = ", ".join(model.name for model in published_models())
        raise ConfigError(f"not a published id: {', '.join(unknown)}; the published ids are {names}.")
    return [row for _, row in rows if row is not None]


def publish(model_ids: Sequence[str] = ()) -> list[PublishOutcome]:
    """Publish the snapshots of ``model_ids`` (default: every published id) to ``$HF_ENDPOINT`` with ``$HF_TOKEN``.

    Raises:
        As :func:`select` and :func:`publish_model`.
    """
    return [publish_model(model) for model in select(model_ids)]


def publish_model(model: PublishedModel) -> PublishOutcome:
    """Publish the snapshot of ``model`` to ``$HF_ENDPOINT`` as one commit tagged ``v1``, unless already there.

    Raises:
        ModelNotFoundError: no snapshot (a wheel install; the message says where snapshots can be had).
        IntegrityError: the snapshot's weights are not the pinned ones (the id and both sha256 named).
        ConfigError: ``v1`` at the endpoint already names a commit with other weights.
        AuthError, ConflictError, HubEndpointError: as :func:`copre_hub.hub.api.push` (offline mode included).
    """
    repo_id = published_repo_id(model)
    if model.sha256 is None:
        message = f"{model.name}: skipped, no published weights yet (its card: {card_path(model)})"
        return PublishOutcome(model.name, repo_id, "skipped", None, message)
    folder = snapshot(model)
    if _env.offline():
        raise HubEndpointError(f"cannot publish {model.name}: HF_HUB_OFFLINE=1; unset it to publish.")
    endpoint = _env.endpoint()
    token = _env.token(endpoint)
    api = _hf_api(endpoint, token)
    ref = parse_repo_id(repo_id)
    short = f"sha256 {model.sha256[:12]}..."
    with _hub_errors(f"publish of {model.name} to {repo_id}", ref, endpoint, token):
        exists = api.repo_exists(repo_id)
        tags = {tag.name: tag.target_commit for tag in api.list_repo_refs(repo_id).tags} if exists else {}
        if PUBLISHED_TAG in tags:
            if not _holds(_revision_info(api, repo_id, PUBLISHED_TAG), folder, model.sha256):
                raise ConfigError(
                    f"{repo_id}@{PUBLISHED_TAG} at {endpoint} (commit {tags[PUBLISHED_TAG]}) holds other weights than "
                    f"the pinned {model.sha256}; tags never move: delete the repository there, or publish elsewhere."
                )
            commit = tags[PUBLISHED_TAG]
            message = f"{model.name}: unchanged, {repo_id}@{PUBLISHED_TAG} at {endpoint} already holds {short}"
            return PublishOutcome(model.name, repo_id, "unchanged", commit, message)
        head = _revision_info(api, repo_id, DEFAULT_REVISION) if exists else None
    if head is not None and _holds(head, folder, model.sha256):
        _create_tag(api, ref, PUBLISHED_TAG, head.sha, endpoint, token)
        message = f"{model.name}: tagged commit {head.sha[:12]} of {repo_id} at {endpoint} {PUBLISHED_TAG} ({short})"
        return PublishOutcome(model.name, repo_id, "tagged", head.sha, message)
    commit = push(folder, repo_id, tag=PUBLISHED_TAG, commit_message=f"Publish {model.name} ({PUBLISHED_TAG})")
    message = f"{model.name}: published {repo_id}@{PUBLISHED_TAG} to {endpoint}, commit {commit.oid[:12]} ({short})"
    return PublishOutcome(model.name, repo_id, "published", commit.oid, message)


def _revision_info(api: HfApi, repo_id: str, revision: str) -> ModelInfo:
    return api.model_info(repo_id, revision=revision, files_metadata=True)


def _holds(info: ModelInfo, folder: Path, sha256: str) -> bool:
    """True when the revision ``info`` describes has, as ``model.safetensors``, the bytes of the snapshot's."""
    from huggingface_hub.utils.sha import git_hash

    sibling = next((file for file in info.siblings or [] if file.rfilename == WEIGHTS_NAME), None)
    if sibling is None:
        return False
    if sibling.lfs is not None:
        return sibling.lfs.sha256 == sha256
    return sibling.blob_id == git_hash((folder / WEIGHTS_NAME).read_bytes())
