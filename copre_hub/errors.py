"""The one exception hierarchy of copre-hub.

Every error derives from :class:`CopreHubError` and from the built-in exception a caller would naturally catch
(``ValueError`` for bad input, ``FileNotFoundError`` for something missing), so ``except ValueError`` keeps working.
Messages are one line: what is wrong, then the fix. The CLI prints ``str(error)`` and exits with status 2.
"""

from __future__ import annotations


class CopreHubError(Exception):
    """Root of every error raised on purpose by copre-hub."""


class ConfigError(CopreHubError, ValueError):
    """A recipe, flag or argument is invalid (unknown key, value out of range, inconsistent settings)."""


class DataError(CopreHubError, ValueError):
    """The dataset cannot serve the requested run: unknown dataset or column, missing classes, too few samples."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset could be found neither locally nor on the Hub."""


class OutputError(CopreHubError, OSError):
    """An output folder cannot be written."""


class ResumeError(CopreHubError, ValueError):
    """A run folder cannot be resumed with the given recipe (different recipe, missing or damaged state)."""


class ModelNotFoundError(CopreHubError, FileNotFoundError):
    """A model id resolves to no checkpoint in any of the places searched."""


class RevisionNotFoundError(ModelNotFoundError):
    """The repository exists but the requested branch, tag or commit does not."""


class OfflineModelNotCachedError(ModelNotFoundError):
    """Offline mode is on and the requested checkpoint is not in the local cache."""


class UnpublishedModelError(ModelNotFoundError):
    """A published id whose weights are not published yet (its registry pin is None), and no endpoint holds it.

    The message reads ``'<id>' has no published weights yet (its card: ...); ...``.
    """


class CheckpointError(CopreHubError, ValueError):
    """A checkpoint folder is malformed: missing weights, pickle-only, config of another architecture."""


class IntegrityError(CheckpointError):
    """The weights' sha256 differs from the one recorded in ``config.json``, or, for a published id, from the one
    the registry pins (the message then names the id, the expected and the found sha256)."""


class AuthError(CopreHubError, PermissionError):
    """A write was refused for lack of a valid token."""


class HubEndpointError(CopreHubError, ConnectionError):
    """The Hub endpoint cannot be reached (or offline mode is on) for an operation that needs it, or it answered
    with an error no retry or fix on our side can clear."""


class ConflictError(CopreHubError, RuntimeError):
    """A push lost a race: the branch moved after the push read it, so nothing was committed.

    The message reads ``... another push landed first; pull and push again``.
    """
