"""Environment variables of copre-hub, read at call time (so tests can ``monkeypatch.setenv``).

=========================  ==========================================================================================
``COPRE_HUB_DATA``         folder holding local copies of known datasets (``cifar100/``, ``femnist/``, ...); when a
                           recipe names a known dataset without a path, ``$COPRE_HUB_DATA/<name>`` is used (an error
                           if it does not hold the dataset); unset, the dataset is fetched from the Hub by id.
``COPRE_HUB_ORG``          organisation that short model ids resolve under (default ``copre-hub``).
``COPRE_HUB_CACHE``        where decoded dataset tensors are cached (default ``~/.cache/copre_hub``).
``HF_ENDPOINT``            Hub endpoint (default ``https://huggingface.co``), e.g. a ``copre-hub serve`` address.
``HF_HUB_OFFLINE``         ``1`` to never touch the network: only cached checkpoints load.
``HF_HOME``                cache root of ``huggingface_hub`` (checkpoints land in ``$HF_HOME/hub``).
``HF_TOKEN``               token for pushes (and for reads from gated endpoints).
``COPRE_HUB_STORED_TOKEN`` ``1`` to send the stored login (``$HF_HOME/token``, from ``hf auth login``) to an
                           endpoint other than huggingface.co when ``HF_TOKEN`` is unset; by default it is sent
                           to huggingface.co only, so a huggingface.co token never reaches a self-hosted endpoint.
``COPRE_HUB_SNAPSHOTS``    folder of published snapshots (``<id>/config.json``, ``model.safetensors``, ...) used
                           when the cache and the endpoint lack a published id; default: ``model_cards/`` of the
                           source checkout the package runs from (a wheel install has none).
``COPRE_HUB_VERBOSITY``    level of the ``copre_hub`` logger (``debug``, ``info``, ``warning``, ``error``);
                           read once, at the first import that logs.
=========================  ==========================================================================================

``huggingface_hub`` reads ``HF_*`` once at import; copre-hub reads them here on every call and passes ``endpoint=``,
``cache_dir=`` and ``token=`` explicitly, so a change after import is honoured.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from copre_hub.errors import ConfigError

DEFAULT_ORG = "copre-hub"
DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "true", "yes", "on"}


def data_dir() -> Path | None:
    """Folder of local dataset copies, or None when ``COPRE_HUB_DATA`` is unset."""
    value = os.environ.get("COPRE_HUB_DATA")
    return Path(value).expanduser() if value else None


def default_org() -> str:
    """Organisation used to expand short model ids."""
    return os.environ.get("COPRE_HUB_ORG") or DEFAULT_ORG


def endpoint() -> str:
    """Hub endpoint URL without a trailing slash.

    Raises:
        ConfigError: ``HF_ENDPOINT`` is not an ``http://`` or ``https://`` URL with a host.
    """
    value = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).strip().rstrip("/")
    try:
        url = urlsplit(value)
        valid = url.scheme in ("http", "https") and bool(url.hostname)
    except ValueError:  # e.g. an unbalanced "[" in an IPv6 host
        valid = False
    if not valid:
        example = value if "://" in value else f"http://{value}"
        raise ConfigError(
            f"HF_ENDPOINT={value!r} is not an http(s) URL; set it with its scheme, e.g. HF_ENDPOINT={example}"
        )
    return value


def offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks for no network access."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir() -> Path:
    """Where ``huggingface_hub`` keeps downloaded repositories (``$HF_HUB_CACHE`` or ``$HF_HOME/hub``)."""
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def token(endpoint: str) -> str | bool | None:
    """The ``token=`` to give ``huggingface_hub`` for requests to ``endpoint``.

    ``HF_TOKEN`` when set. Otherwise None (``huggingface_hub`` then sends its stored login) for huggingface.co or
    with ``COPRE_HUB_STORED_TOKEN=1``, and False (send no token at all) for any other endpoint: the stored login
    is usually a huggingface.co token, which a self-hosted endpoint, often plain HTTP, must not receive.
    """
    if value := os.environ.get("HF_TOKEN", "").strip():
        return value
    if endpoint == DEFAULT_ENDPOINT or os.environ.get("COPRE_HUB_STORED_TOKEN", "").strip().lower() in _TRUE:
        return None
    return False


def snapshots_dir() -> Path | None:
    """The folder ``COPRE_HUB_SNAPSHOTS`` names, or None when it is unset."""
    value = os.environ.get("COPRE_HUB_SNAPSHOTS", "").strip()
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """Where copre-hub keeps decoded dataset tensors (``$COPRE_HUB_CACHE``, default ``~/.cache/copre_hub``)."""
    return Path(os.environ.get("COPRE_HUB_CACHE") or "~/.cache/copre_hub").expanduser()
