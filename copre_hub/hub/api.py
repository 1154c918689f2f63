"""The Hub client behind ``copre_hub.load``, ``pull``, ``push``, ``list_models`` and ``info``.

Every HTTP call, cache entry and revision goes through ``huggingface_hub``. It reads ``HF_ENDPOINT``,
``HF_HUB_OFFLINE`` and ``HF_HOME`` once at import, so each call here passes ``endpoint=``, ``cache_dir=`` and
``token=`` from :mod:`copre_hub._env` explicitly and decides offline mode itself.

Resolution order of :func:`pull` (and so of :func:`load` and :func:`info`):

1. a folder (``local-dir:``, a path): used as it is;
2. a 40-hex commit, or any revision when offline: the Hugging Face cache, with no network access;
3. otherwise the endpoint (``snapshot_download``, which reuses cached blobs). A branch or tag is asked from the
   endpoint because it moves: a cached ``main`` may be stale. When the endpoint cannot be reached, or fails
   mid-request (a reset connection, a 5xx), the cached revision is used, with a warning.

A published short id (a row of :data:`copre_hub.hub.ids.PUBLISHED`, with no revision or its published tag ``v1``)
whose registry pin is set resolves instead from: the cache (tag ``v1``, no network: pinned bytes never go stale),
then the endpoint (online, when it holds the repository at ``v1``), then the snapshot shipped in the source tree
(:mod:`copre_hub.hub.snapshots`). Offline, the cache then the snapshot. Every copy is checked against the pinned
sha256, and a mismatch is an ``IntegrityError``, never a fall-through to the next source. A published id without
a pin resolves as any Hub id; found nowhere, it is an ``UnpublishedModelError`` (no published weights yet).
:func:`info` reports which source was used, :func:`load` logs it.

Tokens: ``HF_TOKEN`` is sent when set; the stored login of ``huggingface_hub`` only to huggingface.co, or when
``COPRE_HUB_STORED_TOKEN=1`` (see :func:`copre_hub._env.token`), so a huggingface.co token never reaches a
self-hosted endpoint. The ``copre_hub`` logger says at ``info`` what each :func:`load` resolved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from copre_hub import _env
from copre_hub._logging import get_logger
from copre_hub.errors import (
    AuthError,
    CheckpointError,
    ConfigError,
    ConflictError,
    CopreHubError,
    HubEndpointError,
    IntegrityError,
    ModelNotFoundError,
    OfflineModelNotCachedError,
    RevisionNotFoundError,
)
from copre_hub.hub.cards import parse_card_data
from copre_hub.hub.checkpoint import (
    CARD_NAME,
    CONFIG_NAME,
    PICKLE_SUFFIXES,
    check_timm_config,
    load_checkpoint,
    recorded_sha256,
    verify_checkpoint,
)
from copre_hub.hub.ids import (
    DEFAULT_REVISION,
    PUBLISHED_TAG,
    ModelRef,
    PublishedModel,
    is_commit_hash,
    parse_model_id,
    parse_repo_id,
    published_model,
    published_models,
    published_repo_id,
    validate_revision,
)
from copre_hub.hub.meta import CheckpointMeta
from copre_hub.hub.snapshots import check_pin, snapshot, unpublished_error

if TYPE_CHECKING:
    import torch
    from huggingface_hub import CommitInfo, HfApi, ModelCardData

_REPO_FOLDER_PREFIX = "models--"
_logger = get_logger(__name__)

Source = Literal["folder", "cache", "endpoint", "snapshot"]


@dataclasses.dataclass(frozen=True)
class _Found:
    """A resolved checkpoint: its local ``folder``, the kind of ``source`` and, for messages, ``where`` exactly."""

    folder: Path
    source: Source
    where: str


@dataclasses.dataclass(frozen=True)
class ModelListing:
    """One model known to copre-hub.

    Attributes:
        repo_id: ``org/name`` on the Hub.
        published: the registry row when it is a published initialization, else None.
        cached_revisions: branches, tags and commits of it in the local cache (refs first).
        on_endpoint: True when the endpoint listed it (only asked with ``remote=True``).
    """

    repo_id: str
    published: PublishedModel | None = None
    cached_revisions: tuple[str, ...] = ()
    on_endpoint: bool = False


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`info` reports about a checkpoint.

    Attributes:
        model_id: the id as given.
        path: the local folder (a cache snapshot or the given folder).
        repo_id: ``org/name`` for a Hub id, else None.
        commit: the commit of a cached snapshot, else None.
        config: ``config.json``.
        card: the model card's YAML metadata.
        eval_results: the card's ``model-index`` results, one dict per metric.
        sha256: sha256 of ``model.safetensors`` (recorded in ``config.json`` and checked).
        source: where the checkpoint came from: ``"folder"`` (a path given), ``"cache"`` (the Hugging Face cache),
            ``"endpoint"`` (downloaded now) or ``"snapshot"`` (a published snapshot of the source tree).
    """

    model_id: str
    path: Path
    repo_id: str | None
    commit: str | None
    config: dict[str, Any]
    card: dict[str, Any]
    eval_results: list[dict[str, Any]]
    sha256: str | None
    source: Source

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``path`` as a string)."""
        return {**dataclasses.asdict(self), "path": str(self.path)}


def load(
    model_id: str | os.PathLike[str],
    num_classes: int | None = None,
    revision: str | None = None,
    *,
    pretrained: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    **timm_kwargs: Any,
) -> torch.nn.Module:
    """A timm model with the weights of an initialization.

    Args:
        model_id: short id (``copreFL-resnet18-cifar100``), ``org/name[@rev]``, ``hf-hub:...``, ``local-dir:...``
            or a folder path; published short ids match case-insensitively.
        num_classes: classes of the downstream task. When it differs from the checkpoint's, the backbone is
            loaded and the head is fresh (timm's behaviour); None keeps the checkpoint's head.
        revision: branch, tag or commit (alternatively ``@rev`` in the id).
        pretrained: timm's flag, accepted so that ``timm.create_model`` calls carry over; loading an initialization
            always loads its weights, so only True is valid.
        cache_dir: the Hugging Face cache to use instead of ``$HF_HOME/hub`` (timm's ``cache_dir``).
        checkpoint_path: a ``.safetensors`` state dict loaded over the initialization's weights (timm's
            ``checkpoint_path``); it must fit the model exactly. Pickle files are refused.
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``drop_rate``, ``in_chans``).

    Returns:
        The ``torch.nn.Module``, in training mode as timm returns it.

    Raises:
        ModelNotFoundError: nothing under that id at the endpoint or in the cache.
        RevisionNotFoundError: the repository exists but not the revision.
        OfflineModelNotCachedError: ``HF_HUB_OFFLINE=1`` and the checkpoint was never pulled.
        UnpublishedModelError: a published id that has no published weights yet.
        IntegrityError: ``model.safetensors`` differs from the sha256 recorded in ``config.json``, or for a
            published id from the registry's pin (the message names the id and both sha256).
        CheckpointError: missing weights, pickle-only folder, or a ``config.json`` of another architecture.
        AuthError: the endpoint refused the token.
        ConfigError: ``pretrained=False``.

    Example:
        >>> model = copre_hub.load("copreFL-resnet18-cifar100", num_classes=5)  # doctest: +SKIP
    """
    if not pretrained:
        raise ConfigError(
            "copre_hub.load(pretrained=False): an initialization is its weights; for random weights of the same "
            "architecture call timm.create_model(architecture, pretrained=False)."
        )
    ref = parse_model_id(model_id)
    found = _fetch(ref, revision, Path(cache_dir).expanduser() if cache_dir is not None else None)
    folder = found.folder
    with _naming(ref, found):
        model = load_checkpoint(folder, num_classes=num_classes, checkpoint_path=checkpoint_path, **timm_kwargs)
    config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))  # load_checkpoint checked it
    sha256 = recorded_sha256(config, folder) or "not recorded (plain timm)"
    _logger.info("loaded %s: sha256 %s, from %s", ref.text, sha256, found.where)
    return model


def pull(model_id: str | os.PathLike[str], revision: str | None = None) -> Path:
    """Make a checkpoint available locally and return its folder.

    Hub ids land in the Hugging Face cache (``$HF_HOME/hub``); the returned folder is the cached snapshot. A
    published id that only its source snapshot holds returns that folder (``model_cards/<id>/``; nothing is copied).
    The folder is verified (files present, sha256 of the weights, the registry's pin) before it is returned. See the
    module docstring for the resolution order.

    Raises:
        ModelNotFoundError, RevisionNotFoundError, OfflineModelNotCachedError, UnpublishedModelError, AuthError: as
            for :func:`load`.
        CheckpointError, IntegrityError: the folder is not a sound checkpoint, or not the pinned weights.
    """
    ref = parse_model_id(model_id)
    found = _fetch(ref, revision)
    with _naming(ref, found):
        verify_checkpoint(found.folder)
    return found.folder


def push(
    folder: str | os.PathLike[str],
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    tag: str | None = None,
    commit_message: str | None = None,
) -> CommitInfo:
    """Publish a checkpoint folder to the endpoint as one commit.

    The folder is verified first (timm-valid config, safetensors weights matching their sha256, no pickle file).
    The repository and the branch are created when missing; the commit makes the branch hold exactly the folder's
    files (files that were on the branch and are not in the folder are deleted, except dot-files such as
    ``.gitattributes``). All files go in one ``create_commit``, so readers see the old or the new revision,
    never a mix. A ``tag`` is then put on that commit. The model card goes up written for ``repo_id``: its "How to
    load" snippets and ``model-index`` name name the target repository (the folder's own README.md is unchanged).

    Args:
        folder: the checkpoint folder (see :func:`copre_hub.hub.checkpoint.save_checkpoint`).
        repo_id: ``org/name`` or a short id (expanded with the default organisation).
        private: create the repository private (only applies when it is created).
        revision: target branch (default ``main``).
        tag: tag to create on the new commit; tags never move, so a tag that exists on another commit is an error
            (pushing the same folder again with the same tag is not).
        commit_message: defaults to ``Upload <model id> with copre-hub``.

    Returns:
        ``huggingface_hub.CommitInfo`` (``oid`` is the commit, ``commit_url`` its address).

    Raises:
        CheckpointError, IntegrityError: the folder is not a sound checkpoint.
        ConfigError: invalid repository id, revision or tag, or the tag already exists.
        AuthError: no token, or a token the endpoint refuses (set ``HF_TOKEN``).
        ConflictError: another push moved the branch while this one was being sent; nothing was committed.
        HubEndpointError: offline mode, endpoint unreachable or failing.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    folder = Path(folder)
    config = verify_checkpoint(folder)
    check_timm_config(config, folder)
    files = _publishable_files(folder)
    ref = parse_repo_id(repo_id)
    branch = _revision(ref, revision)
    if is_commit_hash(branch):
        raise ConfigError(f"push targets a branch, not commit {branch}; pass a branch name as revision.")
    if tag is not None:
        validate_revision(tag)
    if _env.offline():
        raise HubEndpointError(f"cannot push {folder} to {ref.repo_id}: HF_HUB_OFFLINE=1; unset it to push.")
    card = folder / CARD_NAME
    if card.is_file():
        try:
            parse_card_data(card.read_text(encoding="utf-8", errors="replace"))
        except CheckpointError as error:
            raise CheckpointError(f"{card}: {error}") from None
    endpoint = _env.endpoint()
    token = _env.token(endpoint)
    api = _hf_api(endpoint, token)
    repo = ref.repo_id
    with _hub_errors(f"push of {folder} to {repo}", ref, endpoint, token):
        if not api.repo_exists(repo):  # create_repo(exist_ok) mishandles a 401 on non-huggingface.co endpoints
            api.create_repo(repo, private=private, exist_ok=True)
        if branch != DEFAULT_REVISION:
            api.create_branch(repo, branch=branch, exist_ok=True)
        # The commit names the head it was built on: if another push moves the branch first, it is refused whole.
        head = api.model_info(repo, revision=branch, files_metadata=False)
        stale = [sibling.rfilename for sibling in head.siblings or [] if sibling.rfilename not in files]
        operations = [
            *(CommitOperationDelete(path_in_repo=path) for path in stale if not _is_hidden(path)),
            *(
                CommitOperationAdd(path_in_repo=path, path_or_fileobj=_upload(folder, path, config, repo))
                for path in files
            ),
        ]
        model_name = CheckpointMeta.from_config(config).model_id or folder.name
        commit = api.create_commit(
            repo,
            operations,
            commit_message=commit_message or f"Upload {model_name} with copre-hub",
            revision=branch,
            parent_commit=head.sha,
        )
    if tag is not None:
        _create_tag(api, ref, tag, commit.oid, endpoint, token)
    return commit


def list_models(remote: bool = False, author: str | None = None) -> list[ModelListing]:
    """The models copre-hub knows: the published registry, the local cache and, with ``remote``, the endpoint.

    Args:
        remote: also ask the endpoint (``HfApi.list_models``); refused in offline mode.
        author: organisation listed on the endpoint (default: ``COPRE_HUB_ORG``, else ``copre-hub``). Published and
            cached repositories of other organisations are asked about too, so ``on_endpoint`` is right for every
            repository listed.

    Returns:
        One :class:`ModelListing` per repository, sorted by id (case-insensitively).

    Raises:
        HubEndpointError: ``remote`` while offline, or the endpoint cannot be reached.
        AuthError: the endpoint refused the token.
    """
    listings: dict[str, ModelListing] = {}

    def add(repo_id: str, **fields: Any) -> None:
        key = repo_id.lower()
        listings[key] = dataclasses.replace(listings.get(key, ModelListing(repo_id=repo_id)), **fields)

    for model in published_models():
        add(published_repo_id(model), published=model)
    for repo_id, revisions in _cached_repos().items():
        org, _, name = repo_id.partition("/")
        published = published_model(name) if org.lower() == _env.default_org().lower() else None
        add(repo_id, cached_revisions=revisions, published=published)
    if remote:
        known = [listing.repo_id for listing in listings.values()]
        for repo_id in _endpoint_repos(author or _env.default_org(), known):
            add(repo_id, on_endpoint=True)
    return sorted(listings.values(), key=lambda listing: listing.repo_id.lower())


def info(model_id: str | os.PathLike[str], revision: str | None = None) -> CheckpointInfo:
    """Config, card metadata, evaluation results and weights' sha256 of a checkpoint (pulled if needed).

    Raises:
        As :func:`pull`.
    """
    ref = parse_model_id(model_id)
    found = _fetch(ref, revision)
    folder = found.folder
    with _naming(ref, found):
        config = verify_checkpoint(folder)
    card = _card_data(folder / CARD_NAME)
    results = [
        {
            "dataset": result.dataset_type,
            "split": result.dataset_split,
            "metric": result.metric_type,
            "name": result.metric_name,
            "value": result.metric_value,
            "config": result.metric_config,
        }
        for result in (getattr(card, "eval_results", None) or [])
    ]
    return CheckpointInfo(
        model_id=ref.text,
        path=folder,
        repo_id=ref.repo_id,
        commit=folder.name if folder.parent.name == "snapshots" else None,
        config=config,
        card=card.to_dict() if card is not None else {},
        eval_results=results,
        sha256=CheckpointMeta.from_config(config).sha256,
        source=found.source,
    )


def _card_data(path: Path) -> ModelCardData | None:
    """The metadata of the model card at ``path``, parsed within caps; None without a card, or (with a warning)
    for metadata that breaks them."""
    if not path.is_file():
        return None
    try:
        return parse_card_data(path.read_text(encoding="utf-8", errors="replace"))
    except CheckpointError as error:
        _logger.warning("%s: %s; its metadata is ignored.", path, error)
        return None


def _fetch(ref: ModelRef, revision: str | None, cache_dir: Path | None = None) -> _Found:
    """The local folder of ``ref`` and where it came from: the given folder, a cache snapshot, a fresh download, or
    for a published id a source snapshot (see module doc)."""
    if ref.path is not None:
        if revision is not None:
            raise ConfigError(f"revision={revision!r} applies to Hub ids, not to the folder {ref.path}.")
        if not ref.path.is_dir():
            raise ModelNotFoundError(
                f"{ref.text!r}: no checkpoint folder at {ref.path}; check the path, or see `copre-hub list` for ids."
            )
        _logger.info("%s: the folder %s", ref.text, ref.path)
        return _Found(ref.path, "folder", f"the folder {ref.path}")
    resolved = _revision(ref, revision)
    cache_dir = cache_dir or _env.hub_cache_dir()
    if ref.published is not None and (revision or ref.revision) in (None, PUBLISHED_TAG):
        return _fetch_published(ref, ref.published, resolved, cache_dir)
    return _fetch_hub(ref, resolved, cache_dir)


def _fetch_published(ref: ModelRef, model: PublishedModel, revision: str, cache_dir: Path) -> _Found:
    """A published id: with a pin, the cache, the endpoint (online), then the source snapshot, each checked against
    the pin; without one, as any Hub id, and found nowhere it has no published weights yet."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if model.sha256 is None:
        try:
            return _fetch_hub(ref, revision, cache_dir)
        except RevisionNotFoundError:
            raise
        except ModelNotFoundError as error:
            raise unpublished_error(model) from error
    repo_id = _cached_spelling(ref.repo_id, cache_dir)
    with contextlib.suppress(LocalEntryNotFoundError):
        folder = Path(snapshot_download(repo_id, revision=PUBLISHED_TAG, cache_dir=cache_dir, local_files_only=True))
        check_pin(model, folder, "the cached copy", f"delete {folder.parent.parent} and load again")
        _logger.info("%s: tag %s from the cache, commit %s", ref.text, PUBLISHED_TAG, folder.name)
        return _Found(folder, "cache", f"the cache {folder}")
    miss = "HF_HUB_OFFLINE=1 keeps the endpoint out"
    if not _env.offline():
        endpoint = _env.endpoint()
        try:
            found = _fetch_hub(ref, PUBLISHED_TAG, cache_dir)
        except (ModelNotFoundError, HubEndpointError) as error:
            miss = _endpoint_miss(error, endpoint)
            _logger.info("%s: %s; trying the source snapshot", ref.text, miss)
        else:
            fix = (
                f"{endpoint} serves other weights under this id; load them by an explicit revision "
                f"({ref.repo_id}@main), or point HF_ENDPOINT at an endpoint that holds the published ones"
            )
            check_pin(model, found.folder, f"the copy from {endpoint}", fix)
            return found
    try:
        folder = snapshot(model)
    except ModelNotFoundError as error:
        raise ModelNotFoundError(f"{ref.text!r}: not in the cache {cache_dir}; {miss}; {error}") from error
    _logger.info("%s: the source snapshot %s (sha256 %s, as pinned)", ref.text, folder, model.sha256)
    return _Found(folder, "snapshot", f"the snapshot {folder}")


def _endpoint_miss(error: CopreHubError, endpoint: str) -> str:
    """Why the endpoint gave no copy of a published id, in a few words."""
    from huggingface_hub.errors import RepositoryNotFoundError

    if isinstance(error, RevisionNotFoundError):
        return f"{endpoint} has the repository but no tag {PUBLISHED_TAG}"
    if isinstance(error.__cause__, RepositoryNotFoundError):
        return f"{endpoint} has no such repository"
    return f"{endpoint} failed ({_reason(error.__cause__ or error)})"


def _fetch_hub(ref: ModelRef, revision: str, cache_dir: Path) -> _Found:
    """A Hub id at ``revision``: the cache (offline, or a commit id) or the endpoint, falling back to the cache."""
    import httpx
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id = _cached_spelling(ref.repo_id, cache_dir)
    if _env.offline() or is_commit_hash(revision):
        with contextlib.suppress(LocalEntryNotFoundError):
            folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True))
            _logger.info("%s: revision %s from the cache, commit %s", ref.text, revision, folder.name)
            return _Found(folder, "cache", f"the cache {folder}")
        if _env.offline():
            raise OfflineModelNotCachedError(
                f"{ref.text!r} (revision {revision}) is not in the local cache {cache_dir} and HF_HUB_OFFLINE=1; "
                f"run `copre-hub pull {ref.text}` on a connected machine with the same HF_HOME, or unset "
                "HF_HUB_OFFLINE and point HF_ENDPOINT at a `copre-hub serve` endpoint."
            )
    endpoint = _env.endpoint()
    token = _env.token(endpoint)
    _isolate_from_huggingface_co(endpoint)
    with _hub_errors(f"{ref.text!r}", ref, endpoint, token):
        try:
            folder = Path(
                snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, endpoint=endpoint, token=token)
            )
        except (LocalEntryNotFoundError, httpx.TransportError, HfHubHTTPError) as error:
            status = getattr(getattr(error, "response", None), "status_code", None)
            if status is not None and status < 500:
                raise  # the endpoint answered: no such repository or revision, or no access
            with contextlib.suppress(LocalEntryNotFoundError):
                folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True))
                _logger.warning(
                    "%s: %s failed (%s); using the cached revision %s, commit %s.",
                    ref.text,
                    endpoint,
                    _reason(error),
                    revision,
                    folder.name,
                )
                return _Found(folder, "cache", f"the cache {folder}")
            raise ModelNotFoundError(
                f"{ref.text!r}: {endpoint} cannot be reached ({_reason(error)}) and {repo_id}@{revision} is not in "
                f"the cache {cache_dir}; check HF_ENDPOINT and the network, or run `copre-hub pull {ref.text}` on a "
                "connected machine."
            ) from error
    _logger.info("%s: revision %s from %s, commit %s", ref.text, revision, endpoint, folder.name)
    return _Found(folder, "endpoint", f"{endpoint} (revision {revision}, commit {folder.name})")


def _hf_api(endpoint: str, token: str | bool | None) -> HfApi:
    """An ``HfApi`` on ``endpoint`` with ``token``; huggingface_hub is kept off huggingface.co when it is another."""
    from huggingface_hub import HfApi

    _isolate_from_huggingface_co(endpoint)
    return HfApi(endpoint=endpoint, token=token)


def _isolate_from_huggingface_co(endpoint: str) -> None:
    """Stop huggingface_hub's own requests to the endpoint it read at import when copre-hub talks to another one.

    huggingface_hub fetches ``{its ENDPOINT}/api/agent-harnesses`` once a day to build its user agent; that
    ENDPOINT was fixed at import, so with ``HF_ENDPOINT`` set later it would be huggingface.co. The request belongs
    to its telemetry, which ``HF_HUB_DISABLE_TELEMETRY`` turns off; copre-hub turns it off for the process.
    """
    from huggingface_hub import constants

    if constants.ENDPOINT.rstrip("/") != endpoint:
        constants.HF_HUB_DISABLE_TELEMETRY = True


def _reason(error: BaseException) -> str:
    """One line naming an error: its type, then its first line of text."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def _revision(ref: ModelRef, revision: str | None) -> str:
    if revision is not None:
        validate_revision(revision)
        if ref.revision is not None and ref.revision != revision:
            raise ConfigError(f"{ref.text!r} pins revision {ref.revision!r} but revision={revision!r}; give one.")
    return revision or ref.revision or DEFAULT_REVISION


def _cached_spelling(repo_id: str, cache_dir: Path) -> str:
    """The spelling under which ``repo_id`` sits in the cache (ids match case-insensitively), else ``repo_id``."""
    wanted = _REPO_FOLDER_PREFIX + repo_id.replace("/", "--")
    if (cache_dir / wanted).is_dir():
        return repo_id
    with contextlib.suppress(OSError):
        for entry in cache_dir.iterdir():
            if entry.name.lower() == wanted.lower() and entry.is_dir():
                return entry.name[len(_REPO_FOLDER_PREFIX) :].replace("--", "/", 1)
    return repo_id


def _cached_repos() -> dict[str, tuple[str, ...]]:
    """Model repositories in the local cache, with their refs and commits."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir(_env.hub_cache_dir())
    except CacheNotFound:
        return {}
    return {
        repo.repo_id: tuple(
            sorted({ref for revision in repo.revisions for ref in revision.refs})
            + sorted(revision.commit_hash for revision in repo.revisions)
        )
        for repo in cache.repos
        if repo.repo_type == "model"
    }


def _endpoint_repos(author: str, known: list[str]) -> list[str]:
    """Repositories of ``author`` on the endpoint, and which of ``known`` (``org/name``, of other organisations)
    it holds (one request each: the cache and the registry hold few)."""
    if _env.offline():
        raise HubEndpointError("cannot list the endpoint's models: HF_HUB_OFFLINE=1; drop --remote or unset it.")
    endpoint = _env.endpoint()
    token = _env.token(endpoint)
    api = _hf_api(endpoint, token)
    with _hub_errors(f"listing of {author}'s models", None, endpoint, token):
        found = [model.id for model in api.list_models(author=author)]
        others = [repo for repo in known if repo.split("/")[0].lower() != author.lower()]
        found += [repo for repo in others if api.repo_exists(repo)]
    return found


def _create_tag(api: HfApi, ref: ModelRef, tag: str, commit: str, endpoint: str, token: str | bool | None) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    with _hub_errors(f"tagging {ref.repo_id}@{commit} as {tag!r}", ref, endpoint, token):
        try:
            api.create_tag(ref.repo_id, tag=tag, revision=commit)
        except HfHubHTTPError as error:
            if error.response.status_code != 409:
                raise
            if any(t.name == tag and t.target_commit == commit for t in api.list_repo_refs(ref.repo_id).tags):
                return  # the same push again (nothing changed): the tag already names this commit
            raise ConfigError(
                f"tag {tag!r} already exists on {ref.repo_id} (tags never move); commit {commit} was pushed "
                "untagged: tag it with another name."
            ) from error


def _upload(folder: Path, path: str, config: dict[str, Any], repo_id: str) -> str | bytes:
    """What to upload for ``path``: the file itself, except the model card, written for ``repo_id``."""
    if path != CARD_NAME:
        return str(folder / path)
    from copre_hub.hub.cards import card_for_repo

    return card_for_repo((folder / path).read_text(encoding="utf-8"), config, repo_id).encode("utf-8")


def _publishable_files(folder: Path) -> list[str]:
    """Relative paths of the files to push (dot-files and dot-folders skipped); refuses pickles."""
    files = sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and not _is_hidden(path.relative_to(folder).as_posix())
    )
    pickles = [path for path in files if path.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise CheckpointError(
            f"{folder} contains pickle files ({', '.join(pickles)}); copre-hub publishes safetensors only: "
            "remove them before pushing."
        )
    return files


def _is_hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/"))


def _no_token_sent(endpoint: str) -> str:
    return (
        f"{endpoint} needs a token and none was sent: HF_TOKEN is unset, and the stored huggingface_hub login goes to "
        "huggingface.co only; set HF_TOKEN to a token of this endpoint (or COPRE_HUB_STORED_TOKEN=1 to send the "
        "stored one)."
    )


@contextlib.contextmanager
def _naming(ref: ModelRef, found: _Found) -> Iterator[None]:
    """Prefix checkpoint errors with the id the caller used (they name the folder, which may be a cache snapshot);
    for a corrupted cached file, say how to get a clean copy (the cache would re-link the same blob)."""
    try:
        yield
    except CheckpointError as error:
        if ref.path is not None:
            raise
        fix = ""
        if isinstance(error, IntegrityError) and found.source in ("cache", "endpoint"):
            fix = f" Delete the cached copy {found.folder.parent.parent} and pull again."
        raise type(error)(f"{ref.text!r}: {error}{fix}") from error


@contextlib.contextmanager
def _hub_errors(what: str, ref: ModelRef | None, endpoint: str, token: str | bool | None) -> Iterator[None]:
    """Turn huggingface_hub and httpx errors into copre-hub errors that name the id, the endpoint and the fix.

    ``token`` is what was given to huggingface_hub, so that a refusal says whether a token was sent at all.
    """
    import httpx
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
    from huggingface_hub.errors import RevisionNotFoundError as HubRevisionNotFoundError

    repo = ref.repo_id if ref is not None else None
    try:
        yield
    except HubRevisionNotFoundError as error:
        raise RevisionNotFoundError(
            f"{what}: {repo} on {endpoint} has no such branch, tag or commit; use one of its branches or tags "
            "(main by default) or a full commit id."
        ) from error
    except RepositoryNotFoundError as error:
        if error.response.status_code == 401 and token is False:
            raise AuthError(f"{what}: {_no_token_sent(endpoint)}") from error
        raise ModelNotFoundError(
            f"{what}: no repository {repo} on {endpoint} (cache: {_env.hub_cache_dir()}); check the id "
            "(`copre-hub list --remote`), or set HF_TOKEN if the endpoint requires one."
        ) from error
    except HfHubHTTPError as error:
        status = error.response.status_code
        message = (error.server_message or str(error)).strip().splitlines()[0]
        if status in (401, 403) and token is False:
            raise AuthError(f"{what}: {_no_token_sent(endpoint)}") from error
        if status in (401, 403):
            raise AuthError(
                f"{what}: {endpoint} refused the request ({status}: {message}); set HF_TOKEN to a token it accepts."
            ) from error
        if status == 412:
            raise ConflictError(
                f"{what}: the branch moved while this push was sent, so nothing was committed: another push landed "
                "first; pull and push again."
            ) from error
        raise HubEndpointError(f"{what}: {endpoint} answered {status} ({message}).") from error
    except httpx.TransportError as error:  # connect, timeout, reset (ReadError), broken responses, bad URLs
        raise HubEndpointError(
            f"{what}: {endpoint} failed ({_reason(error)}); check HF_ENDPOINT and the network, then try again."
        ) from error
    except CopreHubError:
        raise
    except ValueError as error:  # huggingface_hub's checks of what is sent (paths, README metadata)
        raise CheckpointError(f"{what}: {error}") from error
