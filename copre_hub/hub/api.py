"""The Hub client behind ``copre_hub.load``, ``pull``, ``push``, ``list_models`` and ``info``.

Every HTTP call, cache entry and revision goes through ``huggingface_hub``. It reads ``HF_ENDPOINT``,
``HF_HUB_OFFLINE`` and ``HF_HOME`` once at import, so each call here passes ``endpoint=``, ``cache_dir=`` and
``token=`` from :mod:`copre_hub._env` explicitly and decides offline mode itself.

Resolution order of :func:`pull` (and so of :func:`load` and :func:`info`):

1. a folder (``local-dir:``, a path): used as it is;
2. a 40-hex commit, or any revision when offline: the Hugging Face cache, with no network access;
3. otherwise the endpoint (``snapshot_download``, which reuses cached blobs and falls back to the cache when the
   endpoint cannot be reached). A branch or tag is asked from the endpoint because it moves: a cached ``main``
   may be stale.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from copre_hub import _env
from copre_hub.errors import (
    AuthError,
    CheckpointError,
    ConfigError,
    CopreHubError,
    HubEndpointError,
    IntegrityError,
    ModelNotFoundError,
    OfflineModelNotCachedError,
    RevisionNotFoundError,
)
from copre_hub.hub.checkpoint import (
    CARD_NAME,
    PICKLE_SUFFIXES,
    check_timm_config,
    load_checkpoint,
    verify_checkpoint,
)
from copre_hub.hub.ids import (
    DEFAULT_REVISION,
    PUBLISHED,
    ModelRef,
    PublishedModel,
    is_commit_hash,
    parse_model_id,
    parse_repo_id,
    published_model,
    published_repo_id,
    validate_revision,
)

if TYPE_CHECKING:
    import torch
    from huggingface_hub import CommitInfo, HfApi

_REPO_FOLDER_PREFIX = "models--"


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
    """

    model_id: str
    path: Path
    repo_id: str | None
    commit: str | None
    config: dict[str, Any]
    card: dict[str, Any]
    eval_results: list[dict[str, Any]]
    sha256: str | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``path`` as a string)."""
        return {**dataclasses.asdict(self), "path": str(self.path)}


def load(
    model_id: str | os.PathLike[str],
    num_classes: int | None = None,
    revision: str | None = None,
    **timm_kwargs: Any,
) -> torch.nn.Module:
    """A timm model with the weights of an initialization.

    Args:
        model_id: short id (``copreFL-resnet18-cifar100``), ``org/name[@rev]``, ``hf-hub:...``, ``local-dir:...``
            or a folder path; published short ids match case-insensitively.
        num_classes: classes of the downstream task. When it differs from the checkpoint's, the backbone is
            loaded and the head is fresh (timm's behaviour); None keeps the checkpoint's head.
        revision: branch, tag or commit (alternatively ``@rev`` in the id).
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``drop_rate``, ``in_chans``).

    Returns:
        The ``torch.nn.Module``, in training mode as timm returns it.

    Raises:
        ModelNotFoundError: nothing under that id at the endpoint or in the cache.
        RevisionNotFoundError: the repository exists but not the revision.
        OfflineModelNotCachedError: ``HF_HUB_OFFLINE=1`` and the checkpoint was never pulled.
        IntegrityError: ``model.safetensors`` differs from the sha256 recorded in ``config.json``.
        CheckpointError: missing weights, pickle-only folder, or a ``config.json`` of another architecture.
        AuthError: the endpoint refused the token.

    Example:
        >>> model = copre_hub.load("copreFL-resnet18-cifar100", num_classes=5)  # doctest: +SKIP
    """
    ref = parse_model_id(model_id)
    folder = _fetch(ref, revision)
    with _naming(ref, folder):
        return load_checkpoint(folder, num_classes=num_classes, **timm_kwargs)


def pull(model_id: str | os.PathLike[str], revision: str | None = None) -> Path:
    """Make a checkpoint available locally and return its folder.

    Hub ids land in the Hugging Face cache (``$HF_HOME/hub``); the returned folder is the cached snapshot. The
    folder is verified (files present, sha256 of the weights) before it is returned. See the module docstring
    for the resolution order.

    Raises:
        ModelNotFoundError, RevisionNotFoundError, OfflineModelNotCachedError, AuthError: as for :func:`load`.
        CheckpointError, IntegrityError: the folder is not a sound checkpoint.
    """
    ref = parse_model_id(model_id)
    folder = _fetch(ref, revision)
    with _naming(ref, folder):
        verify_checkpoint(folder)
    return folder


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
        HubEndpointError: offline mode, endpoint unreachable or failing.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

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
    endpoint = _env.endpoint()
    api = HfApi(endpoint=endpoint, token=_env.token())
    repo = ref.repo_id
    with _hub_errors(f"push of {folder} to {repo}", ref, endpoint):
        if not api.repo_exists(repo):  # create_repo(exist_ok) mishandles a 401 on non-huggingface.co endpoints
            api.create_repo(repo, private=private, exist_ok=True)
        if branch != DEFAULT_REVISION:
            api.create_branch(repo, branch=branch, exist_ok=True)
        stale = [path for path in api.list_repo_files(repo, revision=branch) if path not in files]
        operations = [
            *(CommitOperationDelete(path_in_repo=path) for path in stale if not _is_hidden(path)),
            *(
                CommitOperationAdd(path_in_repo=path, path_or_fileobj=_upload(folder, path, config, repo))
                for path in files
            ),
        ]
        model_name = (config.get("copre_hub") or {}).get("model_id") or folder.name
        commit = api.create_commit(
            repo,
            operations,
            commit_message=commit_message or f"Upload {model_name} with copre-hub",
            revision=branch,
        )
    if tag is not None:
        _create_tag(api, ref, tag, commit.oid, endpoint)
    return commit


def list_models(remote: bool = False, author: str | None = None) -> list[ModelListing]:
    """The models copre-hub knows: the published registry, the local cache and, with ``remote``, the endpoint.

    Args:
        remote: also ask the endpoint (``HfApi.list_models``); refused in offline mode.
        author: organisation listed on the endpoint (default: ``COPRE_HUB_ORG``, else ``copre-hub``).

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

    for model in PUBLISHED:
        add(published_repo_id(model), published=model)
    for repo_id, revisions in _cached_repos().items():
        org, _, name = repo_id.partition("/")
        published = published_model(name) if org.lower() == _env.default_org().lower() else None
        add(repo_id, cached_revisions=revisions, published=published)
    if remote:
        for repo_id in _endpoint_repos(author or _env.default_org()):
            add(repo_id, on_endpoint=True)
    return sorted(listings.values(), key=lambda listing: listing.repo_id.lower())


def info(model_id: str | os.PathLike[str], revision: str | None = None) -> CheckpointInfo:
    """Config, card metadata, evaluation results and weights' sha256 of a checkpoint (pulled if needed).

    Raises:
        As :func:`pull`.
    """
    from huggingface_hub import ModelCard

    ref = parse_model_id(model_id)
    folder = _fetch(ref, revision)
    with _naming(ref, folder):
        config = verify_checkpoint(folder)
    card_path = folder / CARD_NAME
    card = ModelCard.load(card_path, ignore_metadata_errors=True).data if card_path.is_file() else None
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
        sha256=(config.get("copre_hub") or {}).get("sha256"),
    )


def _fetch(ref: ModelRef, revision: str | None) -> Path:
    """The local folder of ``ref``: the given folder, a cache snapshot, or a fresh download (see module doc)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if ref.path is not None:
        if revision is not None:
            raise ConfigError(f"revision={revision!r} applies to Hub ids, not to the folder {ref.path}.")
        if not ref.path.is_dir():
            raise ModelNotFoundError(
                f"{ref.text!r}: no checkpoint folder at {ref.path}; check the path, or see `copre-hub list` for ids."
            )
        return ref.path
    revision = _revision(ref, revision)
    repo_id = _cached_spelling(ref.repo_id)
    cache_dir = _env.hub_cache_dir()
    if _env.offline() or is_commit_hash(revision):
        with contextlib.suppress(LocalEntryNotFoundError):
            return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True))
        if _env.offline():
            raise OfflineModelNotCachedError(
                f"{ref.text!r} (revision {revision}) is not in the local cache {cache_dir} and HF_HUB_OFFLINE=1; "
                f"run `copre-hub pull {ref.text}` on a connected machine with the same HF_HOME, or unset "
                "HF_HUB_OFFLINE and point HF_ENDPOINT at a `copre-hub serve` endpoint."
            )
    endpoint = _env.endpoint()
    with _hub_errors(f"{ref.text!r}", ref, endpoint):
        try:
            folder = snapshot_download(
                repo_id, revision=revision, cache_dir=cache_dir, endpoint=endpoint, token=_env.token()
            )
        except LocalEntryNotFoundError as error:
            raise ModelNotFoundError(
                f"{ref.text!r}: {endpoint} cannot be reached and {repo_id}@{revision} is not in the cache "
                f"{cache_dir}; check HF_ENDPOINT and the network, or run `copre-hub pull {ref.text}` on a "
                "connected machine."
            ) from error
    return Path(folder)


def _revision(ref: ModelRef, revision: str | None) -> str:
    if revision is not None:
        validate_revision(revision)
        if ref.revision is not None and ref.revision != revision:
            raise ConfigError(f"{ref.text!r} pins revision {ref.revision!r} but revision={revision!r}; give one.")
    return revision or ref.revision or DEFAULT_REVISION


def _cached_spelling(repo_id: str) -> str:
    """The spelling under which ``repo_id`` sits in the cache (ids match case-insensitively), else ``repo_id``."""
    wanted = _REPO_FOLDER_PREFIX + repo_id.replace("/", "--")
    cache_dir = _env.hub_cache_dir()
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


def _endpoint_repos(author: str) -> list[str]:
    from huggingface_hub import HfApi

    if _env.offline():
        raise HubEndpointError("cannot list the endpoint's models: HF_HUB_OFFLINE=1; drop --remote or unset it.")
    endpoint = _env.endpoint()
    with _hub_errors(f"listing of {author}'s models", None, endpoint):
        return [model.id for model in HfApi(endpoint=endpoint, token=_env.token()).list_models(author=author)]


def _create_tag(api: HfApi, ref: ModelRef, tag: str, commit: str, endpoint: str) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    with _hub_errors(f"tagging {ref.repo_id}@{commit} as {tag!r}", ref, endpoint):
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


@contextlib.contextmanager
def _naming(ref: ModelRef, folder: Path) -> Iterator[None]:
    """Prefix checkpoint errors with the id the caller used (they name the folder, which may be a cache snapshot);
    for a corrupted cached file, say how to get a clean copy (the cache would re-link the same blob)."""
    try:
        yield
    except CheckpointError as error:
        if ref.path is not None:
            raise
        fix = ""
        if isinstance(error, IntegrityError):
            fix = f" Delete the cached copy {folder.parent.parent} and pull again."
        raise type(error)(f"{ref.text!r}: {error}{fix}") from error


@contextlib.contextmanager
def _hub_errors(what: str, ref: ModelRef | None, endpoint: str) -> Iterator[None]:
    """Turn huggingface_hub and httpx errors into copre-hub errors that name the id, the endpoint and the fix."""
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
        raise ModelNotFoundError(
            f"{what}: no repository {repo} on {endpoint} (cache: {_env.hub_cache_dir()}); check the id "
            "(`copre-hub list --remote`), or set HF_TOKEN if the endpoint requires one."
        ) from error
    except HfHubHTTPError as error:
        status = error.response.status_code
        message = (error.server_message or str(error)).strip().splitlines()[0]
        if status in (401, 403):
            raise AuthError(
                f"{what}: {endpoint} refused the request ({status}: {message}); set HF_TOKEN to a token it accepts."
            ) from error
        raise HubEndpointError(f"{what}: {endpoint} answered {status} ({message}).") from error
    except (httpx.ConnectError, httpx.TimeoutException) as error:
        raise HubEndpointError(
            f"{what}: cannot reach {endpoint} ({error}); check HF_ENDPOINT and the network."
        ) from error
    except CopreHubError:
        raise
    except ValueError as error:  # huggingface_hub's checks of what is sent (paths, README metadata)
        raise CheckpointError(f"{what}: {error}") from error
