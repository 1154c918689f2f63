"""Published snapshots: ``model_cards/<id>/`` is the exact tree of the Hub repository of each published id.

A snapshot holds ``config.json``, ``model.safetensors``, ``README.md`` (the card), ``evaluation.json`` and
``run.json`` (the run record); pushing the folder as it is gives the published repository. Its weights are the bytes
whose sha256 the registry pins (:attr:`copre_hub.hub.ids.PublishedModel.sha256`), and nothing is read from a
snapshot before that is checked.

Where snapshots are found: ``$COPRE_HUB_SNAPSHOTS`` when set (a folder of ``<id>/`` trees: a copy of
``model_cards/``, or a test's), else the ``model_cards/`` folder of the source checkout the package is imported from
(an editable install counts). A wheel ships no snapshots: its errors say where they can be had.
"""

from __future__ import annotations

from pathlib import Path

from copre_hub import _env
from copre_hub.errors import IntegrityError, ModelNotFoundError, UnpublishedModelError
from copre_hub.hub.checkpoint import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, sha256_file, verify_checkpoint
from copre_hub.hub.ids import PublishedModel

RUN_RECORD_NAME = "run.json"
EVALUATION_NAME = "evaluation.json"
SNAPSHOT_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, EVALUATION_NAME, RUN_RECORD_NAME)
SOURCE_FOLDER = "model_cards"
_WHERE_TO_GET = (
    "a source checkout of copre-hub ships them in model_cards/<id>/: set COPRE_HUB_SNAPSHOTS to that folder, or "
    "point HF_ENDPOINT at an endpoint that holds them (`copre-hub serve --with-published` run from a checkout, or "
    "one stocked with `copre-hub publish`)"
)


def snapshot_root() -> Path | None:
    """The folder of snapshots: ``$COPRE_HUB_SNAPSHOTS``, else the source checkout's ``model_cards/``, else None."""
    configured = _env.snapshots_dir()
    if configured is not None:
        return configured
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / SOURCE_FOLDER).is_dir():
        return checkout / SOURCE_FOLDER
    return None


def card_path(model: PublishedModel) -> str:
    """Where the card of ``model`` can be read: the snapshot's ``README.md`` (``none yet`` when the snapshot root
    has none), or without a snapshot root its path in the copre-hub source."""
    root = snapshot_root()
    if root is None:
        return f"{SOURCE_FOLDER}/{model.name}/{CARD_NAME} of the copre-hub source"
    card = root / model.name / CARD_NAME
    return str(card) if card.is_file() else "none yet"


def unpublished_error(model: PublishedModel) -> UnpublishedModelError:
    """The one-line error for a published id that has no published weights yet."""
    return UnpublishedModelError(
        f"{model.name!r} has no published weights yet (its card: {card_path(model)}); make them with "
        f"training/recipes/{model.name}.toml (see training/README.md), or load another id of `copre-hub list`."
    )


def pinned_sha256(model: PublishedModel) -> str:
    """The sha256 the registry pins for ``model``.

    Raises:
        UnpublishedModelError: ``model`` has no published weights yet (its pin is None).
    """
    if model.sha256 is None:
        raise unpublished_error(model)
    return model.sha256


def check_pin(model: PublishedModel, folder: Path, where: str, fix: str) -> None:
    """Refuse a copy of ``model`` whose weights are not the pinned ones.

    Args:
        model: the registry row.
        folder: the copy (a cache snapshot, a download, a source snapshot).
        where: how the error names the copy (``"the cached copy"``, ...).
        fix: what the error tells the user to do.

    Raises:
        UnpublishedModelError: no pin.
        IntegrityError: ``model.safetensors`` is missing or its sha256 is not the pinned one; the message names
            the id and both sha256.
    """
    expected = pinned_sha256(model)
    weights = folder / WEIGHTS_NAME
    found = sha256_file(weights) if weights.is_file() else "none (no model.safetensors)"
    if found != expected:
        raise IntegrityError(
            f"{model.name!r}: {where} ({folder}) has weights with sha256 {found}, but the registry pins {expected}; "
            f"it is not loaded: {fix}."
        )


def snapshot_files(folder: Path) -> list[str]:
    """The files of a snapshot tree, as ``/``-separated relative paths, sorted (dot-files and dot-folders left out,
    as a push leaves them out)."""
    paths = (path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    return sorted(path for path in paths if not any(part.startswith(".") for part in path.split("/")))


def snapshot(model: PublishedModel) -> Path:
    """The verified snapshot folder of ``model``: its weights are the pinned ones and match its ``config.json``.

    Raises:
        UnpublishedModelError: ``model`` has no published weights yet.
        ModelNotFoundError: no snapshot folder (a wheel install, or ``COPRE_HUB_SNAPSHOTS`` naming another folder).
        IntegrityError: the weights differ from the pin (id and both sha256 named) or from ``config.json``.
        CheckpointError: the folder is not a checkpoint.
    """
    pinned_sha256(model)
    root = snapshot_root()
    if root is None:
        raise ModelNotFoundError(
            f"no snapshot of {model.name!r}: this install has none (a wheel ships none); {_WHERE_TO_GET}."
        )
    folder = root / model.name
    if not (folder / WEIGHTS_NAME).is_file():
        raise ModelNotFoundError(f"no snapshot of {model.name!r} with weights at {folder}; {_WHERE_TO_GET}.")
    check_pin(model, folder, "the snapshot", f"restore it (git checkout -- {folder})")
    verify_checkpoint(folder)
    return folder
