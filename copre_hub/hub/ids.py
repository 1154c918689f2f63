"""Model ids: what a string names (a local folder or a Hub repository at a revision), and the published ids.

Accepted spellings, all case-insensitive for the published names:

==========================================  ============================================================
``copreFL-resnet18-cifar100``               short id: ``{default org}/copreFL-resnet18-cifar100``
``org/name``, ``org/name@rev``              a Hub repository, optionally at a branch, tag or commit
``hf-hub:org/name[@rev]``                   the same, spelled as timm spells it
``local-dir:path``                          a checkpoint folder on disk
``/abs/path``, ``./rel``, ``../rel``, ``~`` a checkpoint folder on disk
==========================================  ============================================================

A bare name or ``org/name`` that is also an existing folder is refused as ambiguous, with both spellings that work
(timm does the same). The published initializations are rows of :data:`PUBLISHED`, not code; each row pins the
sha256 of its weights, and every reader (``load``, ``pull``, ``info``, ``list``, ``publish``, ``serve
--with-published``, the card tests) takes it from there, through :func:`published_models` and :func:`published_model`,
which read :data:`PUBLISHED` at call time: a test replaces the registry with
``monkeypatch.setattr(copre_hub.hub.ids, "PUBLISHED", (...))``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from copre_hub import _env
from copre_hub.errors import ConfigError

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
DEFAULT_REVISION = "main"
PUBLISHED_TAG = "v1"  # the tag of every published repository's commit (tags never move)

# huggingface_hub's repo-id rules (utils/_validators.py): ASCII word chars, '-', '.', at most 96 per part,
# no leading/trailing '-' or '.', no '--' or '..', no '.git' suffix.
_REPO_PART = re.compile(r"(?!-|\.)[A-Za-z0-9_.\-]{1,96}(?<!-|\.)")
_COMMIT_HASH = re.compile(r"[0-9a-f]{40}")
_MAX_REVISION_LENGTH = 256


@dataclass(frozen=True)
class PublishedModel:
    """One published initialization: a row of the registry.

    Attributes:
        name: the short id, in its canonical spelling (``{method}-{arch}-{dataset}[-{variant}]``).
        method: pre-training method (``coprefl``, ``fedavg``, ...).
        architecture: the backbone family as the id spells it (``femnistcnn`` for copre-hub's ``femnist_cnn``).
        dataset: pre-training dataset.
        summary: one line for ``copre-hub list``.
        sha256: sha256 of its published ``model.safetensors`` (the snapshot ``model_cards/<name>/`` and the Hub
            repository's :data:`PUBLISHED_TAG` hold exactly these bytes), or None while it has no published
            weights.
    """

    name: str
    method: str
    architecture: str
    dataset: str
    summary: str
    sha256: str | None = None


PUBLISHED: tuple[PublishedModel, ...] = (
    PublishedModel(
        name="copreFL-resnet18-cifar100",
        method="coprefl",
        architecture="resnet18",
        dataset="cifar100",
        summary="CoPreFL, Scenario I (pre-training data only on clients), CIFAR-100 classes 0-79",
        sha256="391d7e1fef2a7add26abd5fe2712d306be70df5fd76bb13cc997db51ea31554c",
    ),
    PublishedModel(
        name="copreFL-resnet18-cifar100-hybrid",
        method="coprefl",
        architecture="resnet18",
        dataset="cifar100",
        summary="CoPreFL, Scenario II (clients plus a 5% server dataset), CIFAR-100 classes 0-79",
        sha256="3d8436758e9d1ede1d048785ac6eaa32c1a5ee0ba77a5943c165018fd2b9a8e8",
    ),
    PublishedModel(
        name="fedavg-resnet18-cifar100",
        method="fedavg",
        architecture="resnet18",
        dataset="cifar100",
        summary="FedAvg pre-training baseline, CIFAR-100 classes 0-79",
        sha256="fdcbb57873a73e1b5f5b60357c598c019a6a32a5941bc83def16645ddaaee8cc",
    ),
    PublishedModel(
        name="centralized-resnet18-cifar100",
        method="centralized",
        architecture="resnet18",
        dataset="cifar100",
        summary="centralized pre-training baseline on the pooled client data, CIFAR-100 classes 0-79",
        sha256="c62729c33da57b6b2f1fafb36ecb7e6fa732cb8b0205875471334217eda9d170",
    ),
    PublishedModel(
        name="copreFL-femnistcnn-femnist",
        method="coprefl",
        architecture="femnistcnn",
        dataset="femnist",
        summary="CoPreFL, Scenario I (pre-training data only on clients), FEMNIST's 52 letters on 100 writers",
        sha256="bc63656ed1d4ccd88df42d9fc1a7b8ab2ed8c0e7a7b86e361dda9013dbb368a6",
    ),
    PublishedModel(
        name="copreFL-femnistcnn-femnist-hybrid",
        method="coprefl",
        architecture="femnistcnn",
        dataset="femnist",
        summary="CoPreFL, Scenario II (clients plus a 5% server dataset), FEMNIST's 52 letters on 100 writers",
        sha256="f106a2353e9f17ef66e688372b3fc78d8e220ed713dfd1cadc44ff7df4e74770",
    ),
    PublishedModel(
        name="fedavg-femnistcnn-femnist",
        method="fedavg",
        architecture="femnistcnn",
        dataset="femnist",
        summary="FedAvg pre-training baseline, FEMNIST's 52 letters on 100 writers",
        sha256="718b931dbca6158a7e48342ba9f758bc5cbf5d7cbcf62a641a72b4cce76c0861",
    ),
    PublishedModel(
        name="centralized-femnistcnn-femnist",
        method="centralized",
        architecture="femnistcnn",
        dataset="femnist",
        summary="Centralized pre-training baseline on the pooled data of the same 100 writers, FEMNIST's 52 letters",
        sha256="9193ab3a7ab76b53009caa46ae0a58a49dc4d3fe997be6f8a6742373fa44386f",
    ),
)


@dataclass(frozen=True)
class ModelRef:
    """What a model id names: either a folder on disk (``path``) or a Hub repository (``repo_id``, ``revision``).

    Attributes:
        text: the id as the caller wrote it, for error messages.
        path: the checkpoint folder, when the id names one.
        repo_id: ``org/name`` on the Hub, when the id names a repository.
        revision: branch, tag or commit given with ``@``, or None.
        published: the registry row, when the id is a published initialization.
    """

    text: str
    path: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    published: PublishedModel | None = None


def published_models() -> tuple[PublishedModel, ...]:
    """The registry: every published initialization, with or without published weights."""
    return PUBLISHED


def published_model(name: str) -> PublishedModel | None:
    """The registry row of a published short id, matched case-insensitively, or None."""
    key = name.lower()
    return next((model for model in published_models() if model.name.lower() == key), None)


def published_repo_id(model: PublishedModel) -> str:
    """``{default org}/{name}``: where a published initialization lives on the Hub."""
    return f"{_env.default_org()}/{model.name}"


def is_commit_hash(revision: str) -> bool:
    """True for a full 40-hex commit id, the only revision that never moves."""
    return bool(_COMMIT_HASH.fullmatch(revision))


def parse_model_id(model_id: str | os.PathLike[str]) -> ModelRef:
    """Say what ``model_id`` names; no file-system or network access beyond an ambiguity check.

    Args:
        model_id: a short id, ``org/name[@rev]``, ``hf-hub:...``, ``local-dir:...`` or a path (see the module
            docstring for the table).

    Returns:
        A :class:`ModelRef` with either ``path`` or ``repo_id`` set.

    Raises:
        ConfigError: the id is empty, malformed, has an invalid repository name or revision, or names both an
            existing folder and a Hub repository.

    Example:
        >>> parse_model_id("copre-hub/copreFL-resnet18-cifar100@v1").revision
        'v1'
    """
    if isinstance(model_id, os.PathLike):
        return ModelRef(text=os.fspath(model_id), path=Path(model_id).expanduser())
    text = str(model_id).strip()
    if not text:
        raise ConfigError("empty model id; see `copre-hub list` for the published ids.")
    if text.startswith(LOCAL_DIR_PREFIX):
        folder = text[len(LOCAL_DIR_PREFIX) :]
        if not folder:
            raise ConfigError(f"{text!r} names no folder; write 'local-dir:/path/to/checkpoint'.")
        return ModelRef(text=text, path=Path(folder).expanduser())
    if text.startswith(HF_HUB_PREFIX):
        return parse_repo_id(text)
    if _looks_like_path(text):
        return ModelRef(text=text, path=Path(text).expanduser())
    ref = parse_repo_id(text)
    if Path(text).exists():
        raise ConfigError(
            f"{text!r} is both a local path and a model id; write 'local-dir:{text}' for the folder "
            f"or 'hf-hub:{ref.repo_id}' for the Hub repository."
        )
    return ref


def validate_repo_id(repo_id: str) -> str:
    """Check ``org/name`` against huggingface_hub's repo-id rules and return it.

    Raises:
        ConfigError: the id lacks an organisation or breaks a rule (characters, length, ``--``, ``..``, ``.git``).
    """
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_REPO_PART.fullmatch(part) for part in parts):
        raise ConfigError(
            f"invalid repository id {repo_id!r}: expected 'org/name' with letters, digits, '-', '_' or '.' "
            "(at most 96 each, not starting or ending with '-' or '.')."
        )
    if "--" in repo_id or ".." in repo_id or repo_id.endswith(".git"):
        raise ConfigError(f"invalid repository id {repo_id!r}: '--', '..' and a '.git' suffix are not allowed.")
    return repo_id


def validate_revision(revision: str) -> str:
    """Check a branch, tag or commit name and return it.

    Raises:
        ConfigError: empty, too long, with whitespace or control characters, or with a ``..`` component.
    """
    if (
        not revision
        or len(revision) > _MAX_REVISION_LENGTH
        or any(ch.isspace() or ord(ch) < 32 for ch in revision)
        or ".." in revision
        or revision.startswith(("/", "-"))
        or revision.endswith("/")
    ):
        raise ConfigError(f"invalid revision {revision!r}: use a branch, a tag or a 40-hex commit id.")
    return revision


def parse_repo_id(text: str) -> ModelRef:
    """Parse a Hub id (short id, ``org/name``, optional ``hf-hub:`` prefix and ``@revision``); never a path.

    Raises:
        ConfigError: malformed id or revision.
    """
    text = text.strip()
    spec = text[len(HF_HUB_PREFIX) :] if text.startswith(HF_HUB_PREFIX) else text
    name, sep, revision = spec.partition("@")
    if sep and not revision:
        raise ConfigError(f"{text!r}: nothing after '@'; write 'org/name@revision' or leave the '@' out.")
    if "@" in revision:
        raise ConfigError(f"{text!r}: put at most one '@revision' after the repository id.")
    org, slash, short = name.rpartition("/")
    org = org if slash else _env.default_org()
    published = published_model(short) if org.lower() == _env.default_org().lower() else None
    repo_id = validate_repo_id(f"{org}/{published.name if published else short}")
    return ModelRef(
        text=text,
        repo_id=repo_id,
        revision=validate_revision(revision) if sep else None,
        published=published,
    )


def _looks_like_path(text: str) -> bool:
    return (
        os.path.isabs(text)
        or text.startswith(("./", "../", "~", ".\\", "..\\"))
        or text in (".", "..")
        or "\\" in text
        or text.partition("@")[0].count("/") > 1
    )
