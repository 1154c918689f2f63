"""Labelled image datasets as one uint8 tensor: loaded with `datasets`, decoded once, cached on disk.

A dataset is named in a recipe's ``[data]`` table. Known names (``cifar100``, ``femnist``, ``tiny-imagenet``) carry
their Hub id, column names, class split and normalisation; any other name is taken as a Hub id or, with ``path``, a
local folder (Parquet shards or an imagefolder tree). Resolution (:func:`resolve_source`): ``path`` when given;
else, for a known name, ``<data folder>/<name>`` when there is a data folder (``data_dir=``, i.e. ``--data-dir``,
else ``$COPRE_HUB_DATA``: :func:`data_folder`); else the Hub id (needs the internet). A local source that is
named but does not hold the dataset is an error, never a silent download.
Reports and checkpoints record the source without the machine's data folder (:func:`portable_source`).

Importing this module does not import torch or numpy (recipe checks use it before any heavy import).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from copre_hub import _env
from copre_hub.errors import DataError, DatasetNotFoundError

if TYPE_CHECKING:
    import torch

# Files a local dataset folder is made of: what `datasets.load_dataset(folder)` reads (Parquet and friends, or the
# images of an imagefolder tree).
DATA_SUFFIXES = (".parquet", ".arrow", ".csv", ".json", ".jsonl", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
EXPECTED = "Parquet shards (e.g. data/*.parquet) or an imagefolder tree"


@dataclass(frozen=True)
class DatasetSpec:
    """What copre-hub knows about a public dataset: where it lives and how to read it."""

    hub_id: str
    image_columns: tuple[str, ...]
    label_columns: tuple[str, ...]
    writer_columns: tuple[str, ...] = ()
    pretrain_classes: tuple[int, ...] = ()
    downstream_classes: tuple[int, ...] = ()
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    flip: bool = True


KNOWN_DATASETS: dict[str, DatasetSpec] = {
    "cifar100": DatasetSpec(
        hub_id="uoft-cs/cifar100",
        image_columns=("img",),
        label_columns=("fine_label",),
        pretrain_classes=tuple(range(80)),
        downstream_classes=tuple(range(80, 100)),
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
    "femnist": DatasetSpec(
        hub_id="flwrlabs/femnist",
        image_columns=("image",),
        label_columns=("label", "character"),
        writer_columns=("writer_id",),
        pretrain_classes=tuple(range(10, 62)),
        downstream_classes=tuple(range(10)),
        mean=(0.9614,),  # measured on the 300-writer LEAF subset (white background)
        std=(0.1644,),
        flip=False,
    ),
    "tiny-imagenet": DatasetSpec(
        hub_id="zh-plus/tiny-imagenet",
        image_columns=("image",),
        label_columns=("label",),
        pretrain_classes=tuple(range(160)),
        downstream_classes=tuple(range(160, 200)),
        mean=(0.4802, 0.4481, 0.3975),
        std=(0.2770, 0.2691, 0.2821),
    ),
}


@dataclass(frozen=True)
class DataConfig:
    """The ``[data]`` table of a recipe.

    Attributes:
        dataset: a known name (``cifar100``, ``femnist``, ``tiny-imagenet``) or a Hub dataset id.
        path: local folder (Parquet shards or imagefolder); overrides ``$COPRE_HUB_DATA`` and the Hub.
        splits: splits to pool (the paper pools CIFAR-100 train and test: 600 images per class); empty = all.
        image_column, label_column, writer_column: override the per-dataset defaults.
        augment: random crop (padding 4) and, where the dataset allows, horizontal flip during local training.
        pretrain_classes, downstream_classes: explicit class ids; default: the dataset's known split.
        num_pretrain_classes: instead of lists, a seeded random split with this many pre-training classes.
    """

    dataset: str = "cifar100"
    path: str | None = None
    splits: tuple[str, ...] = ()
    image_column: str | None = None
    label_column: str | None = None
    writer_column: str | None = None
    augment: bool = False
    pretrain_classes: tuple[int, ...] | None = None
    downstream_classes: tuple[int, ...] | None = None
    num_pretrain_classes: int | None = None

    @property
    def spec(self) -> DatasetSpec | None:
        return KNOWN_DATASETS.get(self.dataset.lower())


@dataclass
class ImageData:
    """A whole dataset in memory: ``images`` uint8 [N, C, H, W], ``labels`` int64 [N], optional ``writers`` [N]."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    writers: torch.Tensor | None = None
    source: str = ""
    flip: bool = True
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.labels.numel()


def data_folder(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder of local dataset copies: ``data_dir`` (``--data-dir``) when given, else ``$COPRE_HUB_DATA``, else
    None (known datasets then come from the Hub)."""
    return Path(data_dir).expanduser() if data_dir else _env.data_dir()


def resolve_source(cfg: DataConfig, data_dir: str | os.PathLike[str] | None = None) -> str:
    """The local folder or Hub id that ``cfg`` points at (see the module docstring for the order); ``data_dir``
    is the folder of local copies (default: ``$COPRE_HUB_DATA``, see :func:`data_folder`).

    Raises:
        DatasetNotFoundError: ``data.path`` or ``$COPRE_HUB_DATA/<name>`` is named but does not hold the dataset
            (the message names the folder, what was expected there and, when it looks like one level off, the
            folder to give instead); or an unknown name that is not a Hub id.
    """
    if cfg.path:
        path = Path(cfg.path).expanduser()
        check_dataset_folder(path, "data.path (--data-path)")
        return str(path)
    spec = cfg.spec
    root = data_folder(data_dir)
    if root is not None and (spec is not None or (root / cfg.dataset.lower()).is_dir()):
        folder = root / cfg.dataset.lower()
        _check_data_dir(root, cfg.dataset.lower())
        check_dataset_folder(folder, "COPRE_HUB_DATA (--data-dir)")
        return str(folder)
    if spec is not None:
        return spec.hub_id
    if "/" in cfg.dataset:
        return cfg.dataset
    known = ", ".join(KNOWN_DATASETS)
    raise DatasetNotFoundError(
        f"unknown dataset {cfg.dataset!r}; use one of {known}, a Hub id such as 'org/name', or set `data.path`."
    )


def portable_source(source: str, data_dir: str | os.PathLike[str] | None = None) -> str:
    """``source`` (what :func:`resolve_source` returned) as reports and checkpoints record it: a folder inside the
    data folder (``data_dir``, default ``$COPRE_HUB_DATA``) as ``$COPRE_HUB_DATA/<its path there>``, so no
    machine's absolute path is written; a Hub id, or a ``data.path`` folder elsewhere (the recipe records it as
    given anyway), unchanged."""
    root, folder = data_folder(data_dir), Path(source)
    if root is None or not folder.is_dir():
        return source
    try:
        inside = folder.resolve().relative_to(root.resolve())
    except ValueError:
        return source
    return f"$COPRE_HUB_DATA/{inside.as_posix()}"


def _check_data_dir(root: Path, name: str) -> None:
    """``$COPRE_HUB_DATA`` must be the folder that holds ``<name>/``."""
    if (root / name).is_dir():
        return
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"COPRE_HUB_DATA (--data-dir) {str(root)!r} is not a folder; give the folder that holds {name}/ "
            f"(with {EXPECTED} inside), or unset it to use the Hub."
        )
    hint = ""
    if root.name.lower() == name or any(root.glob("*.parquet")) or any(root.glob("data/*.parquet")):
        hint = f" {str(root)!r} looks like the {name} folder itself: give its parent {str(root.parent)!r}."
    raise DatasetNotFoundError(
        f"COPRE_HUB_DATA (--data-dir) {str(root)!r} has no {name}/ folder; it should hold {name}/ with {EXPECTED}."
        + (hint or " Unset it to use the Hub.")
    )


def check_dataset_folder(folder: Path, given_as: str) -> None:
    """Refuse a local dataset folder that does not exist or holds no data files (see :data:`DATA_SUFFIXES`).

    Raises:
        DatasetNotFoundError: naming the folder, how it was given and what was expected in it.
    """
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise DatasetNotFoundError(f"{given_as} {str(folder)!r} {what}; it should be a folder of {EXPECTED}.")
    if not _holds_data(folder):
        raise DatasetNotFoundError(f"{given_as} {str(folder)!r} holds no data files; expected {EXPECTED}.")


def _holds_data(folder: Path) -> bool:
    """Whether any file under ``folder`` is a data file (stops at the first one)."""
    return any(path.suffix.lower() in DATA_SUFFIXES for path in folder.rglob("*") if not path.name.startswith("."))


def load_image_data(cfg: DataConfig, data_dir: str | os.PathLike[str] | None = None) -> ImageData:
    """Load ``cfg``'s dataset as an :class:`ImageData`, decoding images only the first time (then from cache);
    ``data_dir`` is the folder of local copies (default: ``$COPRE_HUB_DATA``, see :func:`data_folder`).

    Raises:
        DatasetNotFoundError: the dataset is neither local nor reachable on the Hub.
        DataError: a configured column does not exist, or the images do not share one shape.
    """
    source = resolve_source(cfg, data_dir)
    raw = _load_hf_dataset(source, cfg)
    spec = cfg.spec
    columns = raw.column_names
    image_col = _pick_column(cfg.image_column, spec.image_columns if spec else ("image", "img"), columns, "image")
    label_col = _pick_column(cfg.label_column, spec.label_columns if spec else ("label",), columns, "label")
    writer_candidates = spec.writer_columns if spec else ()
    writer_col = (
        _pick_column(cfg.writer_column, writer_candidates, columns, "writer")
        if cfg.writer_column or any(c in columns for c in writer_candidates)
        else None
    )
    images, labels, writers = _cached_tensors(raw, image_col, label_col, writer_col)
    label_feature = raw.features[label_col]
    num_classes = int(labels.max()) + 1 if labels.numel() else 0
    names = list(getattr(label_feature, "names", None) or [str(i) for i in range(num_classes)])
    channels = images.shape[1]
    mean = spec.mean if spec and len(spec.mean) == channels else (0.5,) * channels
    std = spec.std if spec and len(spec.std) == channels else (0.5,) * channels
    return ImageData(
        images=images,
        labels=labels,
        writers=writers,
        class_names=names,
        mean=mean,
        std=std,
        source=source,
        flip=spec.flip if spec else True,
        meta={"image_column": image_col, "label_column": label_col, "writer_column": writer_col},
    )


def _load_hf_dataset(source: str, cfg: DataConfig):
    """Every requested split of ``source``, concatenated into one ``datasets.Dataset``."""
    import datasets

    try:
        with _quiet("huggingface_hub.repocard"):  # local folders' READMEs carry no card metadata; not a problem
            loaded = datasets.load_dataset(source)
    except FileNotFoundError as error:
        raise DatasetNotFoundError(
            f"dataset {source!r} could not be loaded ({error}); check the id, or point `data.path` / "
            "$COPRE_HUB_DATA at a local copy."
        ) from error
    except ConnectionError as error:
        raise DatasetNotFoundError(
            f"dataset {source!r} is not local and the Hub cannot be reached; set `data.path` or $COPRE_HUB_DATA "
            "to a local copy (Parquet or imagefolder)."
        ) from error
    wanted = list(cfg.splits) or sorted(loaded)
    missing = [s for s in wanted if s not in loaded]
    if missing:
        raise DataError(f"dataset {source!r} has no split {missing}; available: {sorted(loaded)}. Fix `data.splits`.")
    parts = [loaded[s] for s in wanted]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence one logger's warnings for the duration of the block."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _pick_column(explicit: str | None, candidates: tuple[str, ...], columns: list[str], role: str) -> str:
    if explicit:
        if explicit not in columns:
            raise DataError(
                f"the dataset has no column {explicit!r} for the {role}; columns are {columns}. "
                f"Fix `data.{role}_column`."
            )
        return explicit
    for name in candidates:
        if name in columns:
            return name
    raise DataError(
        f"cannot find the {role} column (tried {list(candidates)}) among {columns}; set `data.{role}_column`."
    )


def _cached_tensors(raw, image_col: str, label_col: str, writer_col: str | None):
    """Decoded tensors for these columns, from the on-disk cache keyed by the dataset's fingerprint."""
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    key = hashlib.sha256(json.dumps([raw._fingerprint, image_col, label_col, writer_col]).encode()).hexdigest()[:24]
    path = _env.cache_dir() / "tensors" / f"{key}.safetensors"
    if path.exists():
        cached = load_file(path)
        return cached["images"], cached["labels"], cached.get("writers")
    images = _decode_images(raw, image_col)
    labels = torch.as_tensor(np.asarray(raw[label_col]), dtype=torch.int64)
    tensors = {"images": images, "labels": labels}
    writers = None
    if writer_col is not None:
        _, codes = np.unique(np.asarray(raw[writer_col]), return_inverse=True)
        writers = tensors["writers"] = torch.as_tensor(codes, dtype=torch.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file(tensors, tmp)
    os.replace(tmp, path)
    return images, labels, writers


def _decode_images(raw, image_col: str) -> torch.Tensor:
    """All images of ``image_col`` as uint8 [N, C, H, W]; grayscale keeps one channel."""
    import datasets
    import numpy as np
    import torch
    from PIL import Image

    column = raw.cast_column(image_col, datasets.Image(decode=False))[image_col]
    arrays = []
    for item in column:
        with Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]) as img:
            if img.mode not in ("L", "RGB"):
                img = img.convert("RGB")
            arrays.append(np.asarray(img))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataError(
            f"images have different shapes {sorted(shapes)[:3]}; resize the dataset to one size before training."
        )
    stacked = np.stack(arrays)
    stacked = stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(stacked))


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] to float, scaled to [0, 1] then standardised per channel."""
    return images.float().div_(255.0).sub_(mean).div_(std)


def augment(images: torch.Tensor, generator: torch.Generator, flip: bool, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and optional horizontal flip, drawn from ``generator`` (reproducible)."""
    import torch

    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(images.device)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    out = padded[batch, channels, rows, cols]
    if flip:
        flips = (torch.rand(b, generator=generator) < 0.5).to(images.device)
        out = torch.where(flips[:, None, None, None], out.flip(-1), out)
    return out
