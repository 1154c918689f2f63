"""Run a recipe end to end: data, model, method, rounds with resumable state, then the checkpoint folder.

A run folder holds::

    run.json             the run record: resolved recipe, fingerprint, seeds, versions, class split, per-round metrics
    state.safetensors    resumable state (the global weights after the last saved round), written atomically
    checkpoint/          config.json + model.safetensors + README.md, the publishable initialization

Resuming needs only the global weights and the round number: every random draw is keyed by (seed, round, client),
so a resumed run ends with the same weights as an uninterrupted one. ``run.json``'s ``status`` says where a run
stands: ``running (round N)``, ``interrupted`` (Ctrl-C; ``saved_round`` is where ``--resume`` continues from) or
``finished``; ``started`` is the first start and ``seconds`` the training time of all sessions together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from copre_hub import _io
from copre_hub.errors import ConfigError, OutputError, ResumeError
from copre_hub.fl.data import load_image_data, portable_source
from copre_hub.fl.distributed import Processes
from copre_hub.fl.methods import Method
from copre_hub.fl.models import create_model
from copre_hub.fl.partition import FederatedData, build_federation, class_split
from copre_hub.fl.recipe import Recipe, differences
from copre_hub.fl.recipe_files import RECORD_NAME
from copre_hub.fl.seeding import derive_seed
from copre_hub.fl.simulation import Simulation
from copre_hub.hub.meta import CheckpointMeta

STATE_NAME = "state.safetensors"
CHECKPOINT_DIR = "checkpoint"
NO_CUDA = "--device cuda (run.device) was asked for but no CUDA device is visible; use --device cpu or auto."


@dataclass
class Prepared:
    """Everything a run needs, built and validated before the first round."""

    recipe: Recipe
    method: Method
    data: FederatedData
    model: torch.nn.Module
    classes: tuple[tuple[int, ...], tuple[int, ...]]
    class_names: list[str]
    input_size: tuple[int, int, int]
    init: dict[str, Any] | None = None
    data_dir: Path | None = None  # the folder of local dataset copies the data came from (None: $COPRE_HUB_DATA)


def initial_model(
    recipe: Recipe, num_classes: int, in_chans: int, img_size: int
) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """The model a run starts from, and where its weights came from (None for random weights).

    Random weights are drawn from ``(seed, "init")``; with ``model.init`` the checkpoint's backbone is loaded and
    the head is fresh, drawn from the same seed, so a run is reproducible either way.

    Raises:
        ConfigError: ``model.init`` is of another architecture than ``model.architecture``.
        ModelNotFoundError, CheckpointError, IntegrityError: ``model.init`` cannot be loaded (as ``copre_hub.load``).
    """
    torch.manual_seed(derive_seed(recipe.seed, "init"))
    source = recipe.model.init
    if source is None:
        return create_model(recipe.model, num_classes=num_classes, in_chans=in_chans, img_size=img_size), None
    import copre_hub
    from copre_hub.hub.checkpoint import WEIGHTS_NAME, sha256_file, verify_checkpoint

    folder = copre_hub.pull(source)
    architecture = verify_checkpoint(folder)["architecture"]
    if architecture != recipe.model.architecture:
        raise ConfigError(
            f"model.init {source!r} is a {architecture}, but model.architecture is {recipe.model.architecture!r}; "
            f"set model.architecture = {architecture!r}."
        )
    model = copre_hub.load(folder, num_classes=num_classes)
    return model, {"id": source, "sha256": sha256_file(folder / WEIGHTS_NAME)}


def prepare(recipe: Recipe, data_dir: Path | None = None) -> Prepared:
    """Load the data (known datasets from ``data_dir``, default ``$COPRE_HUB_DATA``, else the Hub), split classes,
    partition clients, build the model and the method (all validated)."""
    method = recipe.build_method()
    images = load_image_data(recipe.data, data_dir)
    pretrain_classes, downstream_classes = class_split(images, recipe.data, recipe.seed)
    fed = build_federation(images, pretrain_classes, recipe.partition, recipe.seed)
    method.validate(fed)
    channels, height, _ = images.input_size
    model, init = initial_model(recipe, num_classes=len(pretrain_classes), in_chans=channels, img_size=height)
    return Prepared(
        recipe=recipe,
        method=method,
        data=fed,
        model=model,
        init=init,
        classes=(pretrain_classes, downstream_classes),
        class_names=[images.class_names[c] for c in pretrain_classes],
        input_size=images.input_size,
        data_dir=data_dir,
    )


def pretrain(
    recipe: Recipe,
    output_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    processes: Processes | None = None,
    data_dir: Path | None = None,
) -> Path:
    """Run ``recipe`` into ``output_dir`` and return the checkpoint folder.

    Args:
        recipe: the run (see :mod:`copre_hub.fl.recipe`).
        output_dir: the run folder; must be new or empty unless ``resume``.
        resume: continue the run saved in ``output_dir`` (same recipe required).
        progress: show a progress bar on the main process.
        processes: this process's place among processes; by default joined through Accelerate.
        data_dir: folder of local dataset copies (``--data-dir``); default: ``$COPRE_HUB_DATA``, else the Hub.

    A failure leaves no folder behind that the run created and did not fill. On Ctrl-C, ``run.json`` records
    ``interrupted`` and the ``KeyboardInterrupt`` propagates.

    Raises:
        OutputError: ``output_dir`` cannot be written, or already holds a run and ``resume`` is off.
        ResumeError: the saved run was made by another recipe (the message names the settings that differ), or its
            state is unreadable.
        ConfigError, DataError: invalid recipe or data, or ``cuda`` without a CUDA device (raised before any
            training).
    """
    out = Path(output_dir)
    require_device(recipe.run.device)
    check_output(out, resume)
    saved = read_state(out, recipe) if resume else None
    prepared = prepare(recipe, data_dir)
    with _created_folder(out):
        return _train(recipe, prepared, out, saved, processes, progress)


def _train(
    recipe: Recipe,
    prepared: Prepared,
    out: Path,
    saved: tuple[int, torch.Tensor, list[dict]] | None,
    processes: Processes | None,
    progress: bool,
) -> Path:
    """The rounds, the resumable state and the final folder of :func:`pretrain` (``out`` exists)."""
    processes = processes or Processes.from_accelerate(
        cpu=recipe.run.device == "cpu", mixed_precision=recipe.run.mixed_precision
    )
    sim = Simulation(
        prepared.model,
        prepared.data,
        processes,
        augment=recipe.data.augment,
        eval_batch_size=recipe.run.eval_batch_size,
    )
    history: list[dict] = []
    start = 0
    if saved is not None:
        start, vector, history = saved
        sim.flat.load_(vector.to(sim.device))
    record = run_record(prepared, processes)
    previous = _read_json(out / RECORD_NAME) if saved is not None else {}
    record["started"] = previous.get("started", record["started"])  # a resumed run keeps its first start
    seconds_before, session_start = float(previous.get("seconds", 0.0)), time.perf_counter()
    saved_round = start
    bar = _progress_bar(recipe.name, prepared.method.rounds, start, enabled=progress and processes.is_main)

    def on_round(done: int, metrics: dict) -> None:
        nonlocal saved_round
        history.append(metrics)
        record["seconds"] = seconds_before + time.perf_counter() - session_start
        bar.set_postfix(_postfix(metrics), refresh=False)  # shown by the update, with this round's count
        bar.update(1)
        if processes.is_main and (done % recipe.run.checkpoint_every == 0 or done == prepared.method.rounds):
            write_state(out, recipe, done, sim.flat.vector, {**record, "rounds": history})
            saved_round = done

    try:
        prepared.method.run(sim, recipe.seed, start_round=start, on_round=on_round)
    except KeyboardInterrupt:
        if processes.is_main:
            kept = [metrics for metrics in history if metrics["round"] <= saved_round]
            status = {"status": "interrupted", "saved_round": saved_round, "rounds": kept}
            _io.atomic_write_json(out / RECORD_NAME, {**record, **status})
        raise
    finally:
        bar.close()
    folder = out / CHECKPOINT_DIR
    if processes.is_main:
        record.update(rounds=history, status="finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        _io.atomic_write_json(out / RECORD_NAME, record)
        save_run_checkpoint(prepared, sim, folder, record)
    processes.barrier()
    return folder


def require_device(device: str) -> None:
    """Refuse ``cuda`` when no CUDA device is visible, rather than training on the CPU without a word.

    Raises:
        ConfigError: :data:`NO_CUDA`, the one line every verb prints for it.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(NO_CUDA)


def check_output(out: Path, resume: bool) -> None:
    """Refuse an unwritable folder, or one that already holds a run we were not asked to resume.

    Nothing is created here: the folder appears once the run is ready to train (see :func:`pretrain`).
    """
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {str(out)!r} is a file; choose a folder path.")
    if not resume and (out / STATE_NAME).exists():
        raise OutputError(f"{str(out)!r} already holds a run; pass --resume to continue it or choose another output.")
    if resume and not (out / STATE_NAME).exists():
        raise ResumeError(f"{str(out)!r} holds no saved run to resume; drop --resume to start a new run there.")
    existing = next(parent for parent in (out, *out.absolute().parents) if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "is a file" if not existing.is_dir() else "is not writable"
        raise OutputError(f"cannot write to {str(out)!r} ({existing} {why}); choose a writable --output.")


@contextlib.contextmanager
def _created_folder(out: Path) -> Iterator[None]:
    """Create ``out`` (and missing parents) for the block; if the block fails, remove those it left empty."""
    missing = [folder for folder in (out, *out.absolute().parents) if not folder.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot write to {str(out)!r} ({error.strerror}); choose a writable --output.") from error
    try:
        yield
    except BaseException:
        for folder in missing:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when empty
        raise


def read_state(out: Path, recipe: Recipe) -> tuple[int, torch.Tensor, list[dict]]:
    """The saved round, weights and metrics of a run folder made by ``recipe``.

    Raises:
        ResumeError: another recipe made it (the settings that differ are named), or the state is unreadable.
    """
    from safetensors import safe_open

    try:
        with safe_open(out / STATE_NAME, framework="pt") as handle:
            meta = handle.metadata() or {}
            vector = handle.get_tensor("vector")
    except Exception as error:  # safetensors raises several kinds for damaged files
        raise ResumeError(f"state in {str(out)!r} is unreadable ({error}); start a new run elsewhere.") from error
    record = _read_json(out / RECORD_NAME)
    if meta.get("fingerprint") != recipe.fingerprint():
        changed = differences(record.get("recipe") or {}, recipe.to_dict())
        what = "; ".join(changed) or f"fingerprint {meta.get('fingerprint')} vs {recipe.fingerprint()}"
        raise ResumeError(
            f"{str(out)!r} was made by a different recipe ({what}); resume with its settings (without a recipe, "
            "--resume reuses the one stored there) or choose another output."
        )
    done = int(meta["round"])
    history = [r for r in record.get("rounds", []) if r["round"] <= done]
    return done, vector, history


def write_state(out: Path, recipe: Recipe, done: int, vector: torch.Tensor, record: dict) -> None:
    """Save resumable state after round ``done``: the run record first, then the weights (both atomic)."""
    from safetensors.torch import save_file

    _io.atomic_write_json(out / RECORD_NAME, {**record, "status": f"running (round {done})"})
    metadata = {"round": str(done), "fingerprint": recipe.fingerprint()}
    _io.atomic_write(out / STATE_NAME, lambda tmp: save_file({"vector": vector.cpu()}, tmp, metadata=metadata))


def run_record(prepared: Prepared, processes: Processes) -> dict[str, Any]:
    """What the run was: recipe, seeds, versions, data, model size and the process layout."""
    recipe = prepared.recipe
    pretrain_classes, downstream_classes = prepared.classes
    return {
        "name": recipe.name,
        "recipe": recipe.to_dict(),
        "fingerprint": recipe.fingerprint(),
        "seed": recipe.seed,
        "method": prepared.method.hyperparameters(),
        "data": {
            "source": recorded_source(prepared),
            "pretrain_classes": list(pretrain_classes),
            "downstream_classes": list(downstream_classes),
            "num_clients": prepared.data.num_clients,
            "client_sizes": prepared.data.client_sizes,
            "server_size": 0 if prepared.data.server is None else int(prepared.data.server.numel()),
        },
        "model": {
            "architecture": recipe.model.architecture,
            "parameters": sum(p.numel() for p in prepared.model.parameters()),
            "init": prepared.init,
        },
        "processes": {"world_size": processes.world_size, "device": str(processes.device)},
        "versions": software_versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def recorded_source(prepared: Prepared) -> str | None:
    """Where the data came from, as the run record and the checkpoint keep it: no machine's absolute paths."""
    source = prepared.data.meta.get("source")
    return portable_source(source, prepared.data_dir) if source else None


def save_run_checkpoint(prepared: Prepared, sim: Simulation, folder: Path, record: dict) -> Path:
    """Write the final weights as a publishable checkpoint folder."""
    from copre_hub.hub.checkpoint import save_checkpoint

    meta = checkpoint_meta(prepared, record["versions"], record["rounds"][-1] if record["rounds"] else {})
    return save_checkpoint(sim.model, folder, **checkpoint_args(prepared), copre_hub_meta=meta)


def checkpoint_meta(prepared: Prepared, versions: dict[str, str], final_metrics: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``copre_hub`` block (a :class:`~copre_hub.hub.meta.CheckpointMeta`, as stored): what the
    run was (method, recipe, data, partition, starting weights, versions and the last round's metrics), whichever
    runtime trained it."""
    recipe, data = prepared.recipe, prepared.data
    pretrain_classes, downstream_classes = prepared.classes
    meta = CheckpointMeta(
        model_id=recipe.name,
        method=prepared.method.name,
        method_display=prepared.method.display_name,
        scenario=prepared.method.scenario,
        hyperparameters=prepared.method.hyperparameters(),
        recipe=recipe.to_dict(),
        fingerprint=recipe.fingerprint(),
        seed=recipe.seed,
        data={
            "source": recorded_source(prepared),
            "pretrain_classes": list(pretrain_classes),
            "downstream_classes": list(downstream_classes),
            "num_clients": data.num_clients,
            "server_size": 0 if data.server is None else int(data.server.numel()),
            "dataset": recipe.data.dataset,
        },
        partition=dataclasses.asdict(recipe.partition),
        versions=versions,
        final_metrics=final_metrics,
        init=prepared.init,
    )
    return meta.to_block()


def checkpoint_args(prepared: Prepared) -> dict[str, Any]:
    """The architecture, constructor arguments, classes, input size, normalisation and label names of the run's
    checkpoint (the keyword arguments of ``save_checkpoint`` and ``timm_config`` besides the model and block)."""
    recipe, data = prepared.recipe, prepared.data
    channels = prepared.input_size[0]
    return {
        "architecture": recipe.model.architecture,
        "model_args": recipe.model.timm_args() | _size_args(recipe, prepared.input_size),
        "num_classes": data.num_classes,
        "input_size": prepared.input_size,
        "mean": tuple(data.mean or (0.0,) * channels),
        "std": tuple(data.std or (1.0,) * channels),
        "label_names": prepared.class_names,
    }


def _size_args(recipe: Recipe, input_size: tuple[int, int, int]) -> dict[str, Any]:
    """Constructor arguments that rebuilding the model needs beyond the class count (input channels and size)."""
    from copre_hub.fl.models import takes_img_size

    args: dict[str, Any] = {"in_chans": input_size[0]}
    if takes_img_size(recipe.model.architecture):
        args["img_size"] = input_size[1]
    return args


def software_versions() -> dict[str, str]:
    """Versions of everything that can change the numbers."""
    import accelerate
    import datasets
    import huggingface_hub
    import timm

    from copre_hub import __version__

    return {
        "copre_hub": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "platform": platform.platform(),
    }


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _progress_bar(name: str, rounds: int, start: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=rounds, initial=start, desc=name, unit="round", disable=not enabled, dynamic_ncols=True)


def _postfix(metrics: dict) -> dict[str, str]:
    keys = {"train_loss": "loss", "query_loss_mean": "q_mean", "query_loss_var": "q_var", "server_loss": "srv"}
    return {short: f"{metrics[key]:.4f}" for key, short in keys.items() if key in metrics}
