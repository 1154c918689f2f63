"""The checkpoint folder: written atomically, verified before anything is loaded from it.

A folder holds ``config.json`` (timm's format, so plain ``timm.create_model("hf-hub:...", pretrained=True)`` loads
it, plus one top-level ``"copre_hub"`` block with our metadata and the weights' sha256), ``model.safetensors``
(never a pickle) and ``README.md`` (the model card). Other files (run records, plots) may sit next to them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from copre_hub import __version__
from copre_hub._io import atomic_write_text, fsync
from copre_hub.errors import CheckpointError, ConfigError, IntegrityError, OutputError
from copre_hub.hub.meta import BLOCK

if TYPE_CHECKING:
    import torch

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
DEFAULT_LICENSE = "apache-2.0"
PAPER_NAME = "Rethinking the Starting Point: Collaborative Pre-Training for Federated Downstream Tasks"
PAPER_IDS = "arXiv:2402.02225"
# Derived values save_checkpoint writes into the copre_hub block, over anything of the same name in the metadata.
_DERIVED_KEYS = ("sha256", "copre_hub_version")


def save_checkpoint(
    model: torch.nn.Module,
    folder: str | Path,
    *,
    architecture: str,
    model_args: dict[str, Any],
    num_classes: int,
    input_size: tuple[int, int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    copre_hub_meta: dict[str, Any],
    label_names: list[str] | None = None,
    card: str | None = None,
) -> Path:
    """Write ``model`` as a checkpoint folder that plain timm and copre-hub both load.

    The three files are first written and fsynced in a temporary sibling folder. A new ``folder`` then appears
    with one rename; an existing one has each file replaced by ``os.replace`` (weights first, ``config.json``
    last), so a crash never leaves a half-written file under a final name, and a crash between two replacements
    leaves weights whose sha256 disagrees with ``config.json``, which every load refuses.

    Args:
        model: the timm model (any device; tensors are copied to CPU; tied tensors are stored under each name).
        folder: destination folder; created with its parents.
        architecture: timm model name (``timm.create_model(architecture, **model_args)`` rebuilds it).
        model_args: JSON-serialisable constructor arguments recorded as ``model_args``.
        num_classes: classes of the model's head; must match the model.
        input_size: ``(channels, height, width)`` the weights were trained at.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        copre_hub_meta: our metadata (method, scenario, recipe, data and class split, partitioner, seeds,
            versions, optional ``model_id``, ``tag``, ``license``, ``eval_results``); stored as the ``copre_hub``
            block with ``sha256`` (of ``model.safetensors``) and ``copre_hub_version`` added.
        label_names: one name per class, if known.
        card: the model card text; by default one is built from the config with
            :func:`copre_hub.hub.cards.build_model_card`.

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: the arguments disagree with the model or with timm (unknown architecture, head size, label
            count, non-JSON metadata).
        OutputError: the folder cannot be written.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    config = timm_config(
        model,
        architecture=architecture,
        model_args=model_args,
        num_classes=num_classes,
        input_size=input_size,
        mean=mean,
        std=std,
        copre_hub_meta=copre_hub_meta,
        label_names=label_names,
    )
    tensors = _safetensors_state_dict(model)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        staging.chmod(0o755)  # mkdtemp's 0o700 would become the checkpoint folder's mode
    except OSError as error:
        raise OutputError(f"cannot write checkpoint folder {folder}: {error.strerror}.") from error
    try:
        save_file(tensors, staging / WEIGHTS_NAME, metadata={"format": "pt"})
        config[BLOCK]["sha256"] = sha256_file(staging / WEIGHTS_NAME)
        if card is None:
            from copre_hub.hub.cards import build_model_card

            card = build_model_card(config).content
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (staging / CARD_NAME).write_text(card, encoding="utf-8")
        # safetensors creates its file 0600; give it the mode of the other files (0644 under the usual umask), as
        # huggingface_hub does for downloads, so that other users of a shared machine can load it.
        (staging / WEIGHTS_NAME).chmod((staging / CONFIG_NAME).stat().st_mode & 0o777)
        _publish(staging, folder)
    except OSError as error:
        raise OutputError(f"cannot write checkpoint folder {folder}: {error.strerror or error}.") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def timm_config(
    model: torch.nn.Module,
    *,
    architecture: str,
    model_args: dict[str, Any],
    num_classes: int,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    copre_hub_meta: dict[str, Any],
    label_names: list[str] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` content for ``model``, without the weights' sha256 (filled in once they are written).

    ``first_conv``, ``classifier``, ``num_features`` and ``global_pool`` come from the model itself (its
    ``pretrained_cfg`` and ``get_classifier``), never from timm's ImageNet defaults; ``pretrained_cfg`` holds only
    fields of timm's ``PretrainedCfg``.

    Raises:
        ConfigError: see :func:`save_checkpoint`.
    """
    import timm

    import copre_hub.timm_models  # noqa: F401 - registers copre-hub's own architectures with timm

    if not timm.is_model(architecture):
        raise ConfigError(f"architecture {architecture!r} is not a timm model name; see timm.list_models().")
    head = getattr(model, "num_classes", num_classes)
    if head != num_classes:
        raise ConfigError(f"num_classes={num_classes} but the model's head has {head} classes.")
    if label_names is not None and len(label_names) != num_classes:
        raise ConfigError(f"{len(label_names)} label names for {num_classes} classes.")
    if len(input_size) != 3 or len(mean) != input_size[0] or len(std) != input_size[0]:
        raise ConfigError(f"input_size {tuple(input_size)} needs one mean and one std per channel.")
    meta = {key: value for key, value in copre_hub_meta.items() if key not in _DERIVED_KEYS}
    _require_json("model_args", model_args)
    _require_json("copre_hub_meta", meta)

    model_cfg = dict(getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {})
    pretrained_cfg = {
        "tag": _tag(meta),
        "custom_load": False,
        "input_size": [int(size) for size in input_size],
        "fixed_input_size": bool(model_cfg.get("fixed_input_size", False)),
        "interpolation": model_cfg.get("interpolation", "bicubic"),
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": [float(value) for value in mean],
        "std": [float(value) for value in std],
        "num_classes": num_classes,
        "first_conv": model_cfg.get("first_conv") or _first_conv_name(model),
        "classifier": model_cfg.get("classifier") or _classifier_name(model),
        "license": meta.get("license", DEFAULT_LICENSE),
        "paper_name": PAPER_NAME,
        "paper_ids": PAPER_IDS,
    }
    config: dict[str, Any] = {
        "architecture": architecture,
        "num_classes": num_classes,
        "num_features": int(getattr(model, "num_features", 0)),
        "model_args": dict(model_args),
        "pretrained_cfg": pretrained_cfg,
    }
    if pool := _global_pool(model):
        config["global_pool"] = pool
    if label_names is not None:
        config["label_names"] = list(label_names)
    config[BLOCK] = {**meta, "sha256": None, "copre_hub_version": __version__}
    return config


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checkpoint(folder: str | Path) -> dict[str, Any]:
    """Check a checkpoint folder without importing torch or timm, and return its config.

    Checks that ``config.json`` parses and names an architecture and a ``pretrained_cfg``, that
    ``model.safetensors`` exists (a folder with only pickle weights is refused: copre-hub never unpickles), and,
    when the ``copre_hub`` block records a sha256, that the weights match it. A folder without the block (a
    plain timm export) has no recorded hash to check.

    Returns:
        The parsed ``config.json``.

    Raises:
        CheckpointError: not a folder, missing or malformed ``config.json``, no ``model.safetensors``, pickle-only
            weights, a ``copre_hub`` block without a sha256.
        IntegrityError: the weights' sha256 differs from the recorded one.
    """
    folder = Path(folder)
    config = check_layout(folder)
    weights = folder / WEIGHTS_NAME
    check_weights(weights, recorded_sha256(config, folder))
    return config


def update_metadata(folder: str | Path, copre_hub_meta: dict[str, Any]) -> Path:
    """Replace a checkpoint's ``copre_hub`` block and rebuild its card from the new config; ``model.safetensors``
    is neither read into a model nor rewritten (its bytes and mtime stay as they are).

    The folder is verified first, and the block keeps the weights' sha256 (computed now for a plain timm export).
    ``README.md`` is replaced first and ``config.json`` last, each atomically, as :func:`save_checkpoint` does.

    Args:
        folder: a checkpoint folder of your own (not a Hub cache snapshot, whose files are links into the cache).
        copre_hub_meta: the new block; ``sha256`` and ``copre_hub_version`` in it are ignored and filled in.

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.

    Raises:
        CheckpointError, IntegrityError: the folder is not a sound checkpoint (see :func:`verify_checkpoint`).
        ConfigError: the block is not JSON-serialisable.
        OutputError: the folder cannot be written.
    """
    from copre_hub.hub.cards import build_model_card

    folder = Path(folder)
    config = verify_checkpoint(folder)
    sha256 = recorded_sha256(config, folder) or sha256_file(folder / WEIGHTS_NAME)
    meta = {key: value for key, value in copre_hub_meta.items() if key not in _DERIVED_KEYS}
    _require_json("copre_hub_meta", meta)
    config[BLOCK] = {**meta, "sha256": sha256, "copre_hub_version": __version__}
    config["pretrained_cfg"]["tag"] = _tag(meta)
    try:
        atomic_write_text(folder / CARD_NAME, build_model_card(config).content)
        atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        fsync(folder)
    except OSError as error:
        raise OutputError(f"cannot write checkpoint folder {folder}: {error.strerror or error}.") from error
    return folder


def check_layout(folder: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a folder that has the checkpoint files (hashes not checked).

    Raises:
        CheckpointError: not a folder, missing or malformed ``config.json``, no ``model.safetensors``, pickle-only
            weights.
    """
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a checkpoint folder (config.json, model.safetensors, README.md).")
    config = _read_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        pickles = sorted(path.name for path in folder.iterdir() if path.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"{folder} holds only pickle weights ({', '.join(pickles)}); copre-hub loads model.safetensors only "
                "and never unpickles. Convert on a trusted machine: safetensors.torch.save_file(state_dict, "
                "'model.safetensors')."
            )
        raise CheckpointError(
            f"{folder} has no {WEIGHTS_NAME}; re-export it with copre_hub.hub.checkpoint.save_checkpoint."
        )
    return config


def recorded_sha256(config: dict[str, Any], folder: Path) -> str | None:
    """The weights' sha256 recorded in the ``copre_hub`` block (None for a plain timm export without the block).

    Raises:
        CheckpointError: the block exists but records no sha256.
    """
    block = config.get(BLOCK)
    if block is None:
        return None
    recorded = block.get("sha256") if isinstance(block, dict) else None
    if not isinstance(recorded, str):
        raise CheckpointError(f"{folder / CONFIG_NAME}: the copre_hub block records no sha256 of the weights.")
    return recorded


def check_weights(weights: Path, recorded: str | None) -> None:
    """Raise :class:`IntegrityError` when ``weights`` does not hash to ``recorded`` (no-op when None)."""
    if recorded is None:
        return
    actual = sha256_file(weights)
    if actual != recorded.lower():
        raise IntegrityError(
            f"{weights}: sha256 {actual[:16]}... differs from {recorded[:16]}... recorded in config.json; the file "
            "is corrupted or was replaced, so it is not loaded."
        )


def check_timm_config(config: dict[str, Any], folder: str | Path) -> None:
    """Refuse a config timm would reject: unknown architecture or keys that ``PretrainedCfg`` does not have.

    Raises:
        CheckpointError: naming the architecture or the unknown keys.
    """
    import timm
    from timm.models import PretrainedCfg

    import copre_hub.timm_models  # noqa: F401 - registers copre-hub's own architectures with timm

    architecture = config["architecture"]
    if not timm.is_model(architecture):
        raise CheckpointError(
            f"{Path(folder) / CONFIG_NAME}: architecture {architecture!r} is unknown to timm {timm.__version__}; "
            "upgrade timm or copre-hub."
        )
    unknown = sorted(set(config["pretrained_cfg"]) - {field.name for field in dataclasses.fields(PretrainedCfg)})
    if unknown:
        raise CheckpointError(
            f"{Path(folder) / CONFIG_NAME}: pretrained_cfg has keys timm does not know ({', '.join(unknown)}); "
            "move them into the top-level copre_hub block."
        )


def load_checkpoint(
    folder: str | Path,
    num_classes: int | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    **timm_kwargs: Any,
) -> torch.nn.Module:
    """Verify a checkpoint folder and build its timm model with the weights loaded.

    With ``num_classes`` different from the checkpoint's, timm keeps the backbone and gives a fresh head. Every
    other parameter must come from the file: a ``config.json`` naming another architecture than the weights is an
    error, never a partial load. ``checkpoint_path`` (timm's argument) names a ``.safetensors`` state dict loaded
    over the result, strictly.

    Raises:
        CheckpointError: see :func:`verify_checkpoint` and :func:`check_timm_config`, the weights do not fit the
            architecture, or ``checkpoint_path`` is not a safetensors file that fits the model (named in the message).
        IntegrityError: the weights' sha256 differs from the recorded one.
    """
    folder = Path(folder)
    config = check_layout(folder)
    check_timm_config(config, folder)
    # Hash the weights on a second thread (hashlib releases the GIL) while timm builds the model; a mismatch
    # raises below, so a model built from corrupted weights is never returned.
    with ThreadPoolExecutor(max_workers=1) as pool:
        integrity = pool.submit(check_weights, folder / WEIGHTS_NAME, recorded_sha256(config, folder))
        try:
            model = _build(folder, config, num_classes, timm_kwargs)
        except CheckpointError:
            integrity.result()  # corrupted weights are reported as such, before any does-not-fit error
            raise
        integrity.result()
    if checkpoint_path is not None:
        _load_state_dict_file(model, Path(checkpoint_path), config["architecture"])
    return model


def _load_state_dict_file(model: torch.nn.Module, path: Path, architecture: str) -> None:
    """Load the safetensors state dict at ``path`` into ``model`` (strict, as timm's ``checkpoint_path``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"checkpoint_path={path}: copre-hub loads .safetensors files only and never unpickles; convert it on a "
            "trusted machine with safetensors.torch.save_file(state_dict, 'weights.safetensors')."
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint_path={path} does not exist; check the path.")
    try:
        model.load_state_dict(load_file(path), strict=True)
    except (RuntimeError, SafetensorError) as error:
        reason = str(error).strip().splitlines()[0][:300]
        raise CheckpointError(
            f"checkpoint_path={path} does not fit architecture {architecture!r} ({reason})."
        ) from error


def _build(folder: Path, config: dict[str, Any], num_classes: int | None, timm_kwargs: dict[str, Any]):
    """timm's model for a checked folder, with every non-head parameter taken from the weights file."""
    import timm
    from safetensors import SafetensorError, safe_open

    kwargs = {key: value for key, value in timm_kwargs.items() if value is not None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    architecture = config["architecture"]
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=True, **kwargs)
        with safe_open(folder / WEIGHTS_NAME, framework="pt") as weights:
            stored = set(weights.keys())
    except (RuntimeError, AttributeError, KeyError, SafetensorError) as error:  # timm on weights of another model
        reason = str(error).strip().splitlines()[0][:300]
        raise CheckpointError(
            f"{folder}: {WEIGHTS_NAME} does not fit architecture {architecture!r} named by config.json ({reason})."
        ) from error
    heads = _as_tuple(config["pretrained_cfg"].get("classifier"))
    expected = _without_heads(model.state_dict(), heads)
    stored = _without_heads(stored, heads)
    missing = expected - stored
    unexpected = set() if kwargs.get("features_only") else stored - expected
    if missing or unexpected:
        sample = ", ".join(sorted(missing | unexpected)[:3])
        raise CheckpointError(
            f"{folder}: {WEIGHTS_NAME} does not fit architecture {architecture!r} named by config.json "
            f"({len(missing)} parameters missing, {len(unexpected)} unexpected, e.g. {sample})."
        )
    return model


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{folder} has no {CONFIG_NAME}; a checkpoint holds config.json, model.safetensors and README.md "
            "(write one with copre_hub.hub.checkpoint.save_checkpoint)."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}).") from error
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise CheckpointError(f"{path} names no architecture; it is not a timm config.")
    if not isinstance(config.get("pretrained_cfg"), dict):
        raise CheckpointError(f"{path} has no pretrained_cfg; it is not a timm config.")
    return config


def _publish(staging: Path, folder: Path) -> None:
    for name in (WEIGHTS_NAME, CARD_NAME, CONFIG_NAME):
        fsync(staging / name)
    fsync(staging)
    if not folder.exists():
        try:
            os.rename(staging, folder)
            fsync(folder.parent)
            return
        except OSError:
            if not folder.is_dir():
                raise
    for name in (WEIGHTS_NAME, CARD_NAME, CONFIG_NAME):
        os.replace(staging / name, folder / name)
    fsync(folder)


def _safetensors_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU tensors that safetensors accepts: contiguous, each owning its storage (tied weights are copied)."""
    tensors = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu")
        storage = tensor.untyped_storage()
        owns = (
            tensor.is_contiguous()
            and tensor.storage_offset() == 0
            and storage.nbytes() == tensor.numel() * tensor.element_size()
        )
        if not owns or storage.data_ptr() in seen:
            tensor = tensor.clone().contiguous()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    return tensors


def _tag(meta: dict[str, Any]) -> str:
    return str(meta.get("tag") or meta.get("model_id") or meta.get("method") or "copre_hub")


def _first_conv_name(model: torch.nn.Module) -> str | None:
    from torch import nn

    return next((name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)), None)


def _classifier_name(model: torch.nn.Module) -> str:
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    name = next((name for name, module in model.named_modules() if module is classifier and name), None)
    if name is None:
        raise ConfigError("cannot tell the model's classifier (no get_classifier()); timm needs it to swap heads.")
    return name


def _global_pool(model: torch.nn.Module) -> str | None:
    head = getattr(model, "head", None)
    candidates = (
        getattr(head, "global_pool", None),
        getattr(head, "pool_type", None),
        getattr(model, "global_pool", None),
    )
    for pool in candidates:
        pool = getattr(pool, "pool_type", pool)
        if isinstance(pool, str) and pool:
            return pool
    return None


def _require_json(what: str, value: Any) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{what} must be JSON-serialisable for config.json ({error}).") from error


def _as_tuple(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _without_heads(keys: Any, heads: tuple[str, ...]) -> set[str]:
    return {key for key in keys if not any(key.startswith(f"{head}.") for head in heads)}
