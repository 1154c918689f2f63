"""``copre-hub demo``: the whole product on one machine, with no account and no internet access to the Hub.

1. start a local ``copre-hub serve`` endpoint on a free loopback port, with a one-time token;
2. pre-train a small CoPreFL initialization on CIFAR-100 (the recipe below, embedded as data);
3. push the checkpoint folder (weights, timm config, model card) to that endpoint;
4. load it back with ``copre_hub.load`` and check that the weights are the ones pushed;
5. run one downstream FedAvg task from random weights and from the CoPreFL weights (same task, partition, head and
   batch order) and print the comparison: mean accuracy, variance and lowest 10% of client accuracies;
6. run one task of the paper's CIFAR-100 protocol from random weights and from the published
   ``copreFL-resnet18-cifar100`` (resolved as ``copre_hub.load`` resolves a published id, checked against its
   pinned sha256), so the user also sees what a real initialization does; skipped, with a line saying why, where
   this install has no copy of it.

The endpoint is stopped at the end. Everything lands in the output folder (default ``./copre-hub-demo``)::

    runs/<name>/            the pre-training run; its checkpoint/ is the initialization (reused when run again)
    hub/                    the endpoint's storage: `copre-hub serve --storage copre-hub-demo/hub` serves it again
    results.json            the downstream comparison (format of `copre-hub evaluate`)
    client_accuracies.png   per-client test accuracy, one panel per initialization
    published/              the same two files for the published initialization's task (step 6)

CIFAR-100 is read from ``<data folder>/cifar100`` when there is a data folder
(``data_dir``, i.e. ``--data-dir``, else ``$COPRE_HUB_DATA``), else from the Hub. The Hub cache used for the pull is
a temporary folder, so the user's own cache is never touched. The only progress bars are
copre-hub's own (pre-training rounds, downstream rounds): those of huggingface_hub and datasets are off meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from copre_hub.fl.downstream import DownstreamConfig
    from copre_hub.fl.recipe import Recipe

DEFAULT_OUTPUT = Path("copre-hub-demo")
DEMO_ORG = "demo"
RANDOM_LABEL = "random init"
COPREFL_LABEL = "CoPreFL init"
PUBLISHED_ID = "copreFL-resnet18-cifar100"  # a published id with weights; its dataset is step 6's
PUBLISHED_LABEL = f"published {PUBLISHED_ID}"
PUBLISHED_DATASET = "cifar100"
PUBLISHED_TASK = "CIFAR-100's unseen classes 80-99"  # what step 6's downstream task is drawn from


@dataclass(frozen=True)
class DemoSettings:
    """How big the demo is: a CoPreFL pre-training run on CIFAR-100, then one downstream FedAvg task.

    Attributes:
        architecture: timm backbone (at CIFAR-100's 32x32).
        clients: pre-training clients (Dirichlet 0.5 split of the pre-training classes).
        participants: clients per pre-training round.
        rounds: pre-training rounds.
        local_epochs: local passes over a client's support set per round.
        lr: local SGD learning rate of pre-training (above the paper's 1e-3, so that a dozen rounds learn).
        pretrain_classes: CIFAR-100 classes pre-trained on; None: the paper's 0-79 (80-99 stay unseen).
        downstream_clients: clients of the downstream task (5 unseen classes, Dirichlet 0.5).
        downstream_rounds: FedAvg rounds of the downstream task.
        local_steps: local SGD steps per client per downstream round.
        downstream_lr: local SGD learning rate downstream, the same for both initializations; 0.005 over 10 rounds
            of 5 steps is the paper's total (50 rounds of 5 steps at 1e-3).
        seed: seed of every draw, shared by both initializations downstream.
    """

    architecture: str = "resnet10t"
    clients: int = 100
    participants: int = 10
    rounds: int = 12
    local_epochs: int = 1
    lr: float = 0.05
    pretrain_classes: tuple[int, ...] | None = None
    downstream_clients: int = 10
    downstream_rounds: int = 10
    local_steps: int = 5
    downstream_lr: float = 0.005
    seed: int = 0

    @property
    def name(self) -> str:
        """The model id of the initialization (``copreFL-{arch}-cifar100-demo``)."""
        return f"copreFL-{self.architecture}-cifar100-demo"

    def recipe(self) -> Recipe:
        """The embedded pre-training recipe: CoPreFL, Scenario I, gamma 0.75 (the paper's value for CIFAR-100)."""
        from copre_hub.fl.recipe import recipe_from_dict

        data: dict[str, Any] = {"dataset": "cifar100"}
        if self.pretrain_classes is not None:
            data["pretrain_classes"] = list(self.pretrain_classes)
        return recipe_from_dict(
            {
                "name": self.name,
                "seed": self.seed,
                "data": data,
                "partition": {"num_clients": self.clients, "scheme": "dirichlet", "alpha": 0.5},
                "model": {"architecture": self.architecture},
                "method": {
                    "name": "coprefl",
                    "scenario": 1,
                    "gamma": 0.75,
                    "rounds": self.rounds,
                    "participants": self.participants,
                    "local_epochs": self.local_epochs,
                    "batch_size": 32,
                    "lr": self.lr,
                },
                "run": {"checkpoint_every": 1},
            }
        )

    def downstream(self) -> DownstreamConfig:
        """One downstream FedAvg task over 5 unseen classes; the rest of the paper's protocol unchanged."""
        from copre_hub.fl.downstream import DownstreamConfig

        return DownstreamConfig(
            tasks=1,
            clients=self.downstream_clients,
            rounds=self.downstream_rounds,
            local_steps=self.local_steps,
            lr=self.downstream_lr,
            algorithm="fedavg",
            seed=self.seed,
        )

    def published_downstream(self) -> DownstreamConfig:
        """One task of the paper's protocol on the published initialization's dataset, at this size's counts and
        step size (``downstream_lr``: the paper's 50 rounds of 1e-3 in 10 rounds)."""
        from copre_hub.fl.downstream import DownstreamConfig

        return DownstreamConfig.for_dataset(
            PUBLISHED_DATASET,
            tasks=1,
            clients=self.downstream_clients,
            rounds=self.downstream_rounds,
            local_steps=self.local_steps,
            lr=self.downstream_lr,
            algorithm="fedavg",
            seed=self.seed,
        )


SIZES: Mapping[str, DemoSettings] = {
    "default": DemoSettings(),
    # The same code path in seconds: a tiny model, ten pre-training classes, one round of everything.
    "tiny": DemoSettings(
        architecture="test_resnet",
        clients=8,
        participants=2,
        rounds=1,
        pretrain_classes=tuple(range(10)),
        downstream_clients=4,
        downstream_rounds=1,
        local_steps=1,
    ),
}


@dataclass(frozen=True)
class DemoResult:
    """What a demo run produced.

    Attributes:
        endpoint: URL the local endpoint served on (stopped once the demo returns).
        storage: the endpoint's storage folder, holding the pushed repository.
        repo_id: the repository pushed to.
        commit: the pushed commit.
        checkpoint: the local checkpoint folder that was pushed.
        weights_match: whether ``copre_hub.load(repo_id)`` gave exactly the pushed weights.
        report: the downstream comparison (format: :mod:`copre_hub.fl.evaluate`).
        results: the report as JSON.
        plot: the per-client accuracy plot.
        published: step 6's comparison (same format; its files in ``published/``), or None when it was skipped.
    """

    endpoint: str
    storage: Path
    repo_id: str
    commit: str
    checkpoint: Path
    weights_match: bool
    report: dict[str, Any]
    results: Path
    plot: Path
    published: dict[str, Any] | None


def run_demo(
    settings: DemoSettings,
    output: str | os.PathLike[str] = DEFAULT_OUTPUT,
    progress: bool = True,
    data_dir: str | os.PathLike[str] | None = None,
) -> DemoResult:
    """Run the demo (see the module docstring) into ``output`` and return what it produced; CIFAR-100 comes from
    ``data_dir`` (default: ``$COPRE_HUB_DATA``, else the Hub).

    Environment variables the demo sets for its endpoint (``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_CACHE``,
    ``HF_HUB_OFFLINE``) are restored when it returns.

    Raises:
        DatasetNotFoundError: the data folder holds no ``cifar100/``, or there is none and the Hub cannot be
            reached (checked before anything is written).
        OutputError: ``output`` cannot be written.
        ResumeError: ``output`` holds a pre-training run of other settings under the same name.
    """
    from copre_hub._progress import only_our_progress_bars
    from copre_hub.fl.data import data_folder, resolve_source
    from copre_hub.fl.report import format_table, write_report

    output, data_dir = Path(output), data_folder(data_dir)
    check_output_folder(output)
    resolve_source(settings.recipe().data, data_dir)
    repo_id = f"{DEMO_ORG}/{settings.name}"
    storage = output / "hub"
    with local_hub(storage) as endpoint, only_our_progress_bars():
        say(f"[1/6] local Hub endpoint {endpoint} (storage {storage}; stopped at the end)")
        checkpoint = pretrain_initialization(settings, output / "runs" / settings.name, progress, data_dir)
        commit = publish(checkpoint, repo_id)
        weights_match = reload_matches(repo_id, checkpoint)
        report = compare(repo_id, settings, progress, data_dir)
        published = compare_published(settings, progress, data_dir)
    results, plot = write_report(report, output)
    say("\n" + format_table(report))
    if published is not None:
        write_report(published, output / "published")
        say(f"\nThe published initialization, on one task of the paper's protocol:\n{format_table(published)}")
    say(f"\nresults: {results}\nplot: {plot}\ncheckpoint: {checkpoint}")
    say(f"pushed as {repo_id}; serve it again with: copre-hub serve --storage {storage}")
    return DemoResult(endpoint, storage, repo_id, commit, checkpoint, weights_match, report, results, plot, published)


def check_output_folder(output: Path) -> None:
    """Refuse an output that is a file, or lies under one, before anything is written.

    Raises:
        OutputError: naming the file in the way.
    """
    from copre_hub.errors import OutputError

    blocker = next((path for path in (output, *output.absolute().parents) if path.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise OutputError(f"-o {output}: {blocker} is a file; give a folder for the demo's output.")


@contextlib.contextmanager
def local_hub(storage: Path) -> Iterator[str]:
    """A ``copre-hub serve`` endpoint on a free loopback port with a one-time token, and the environment that
    points copre-hub at it (and at a temporary Hub cache) for the duration of the block; yields its URL."""
    # huggingface_hub and datasets read HF_* once, at import: import them first, so their own caches stay the
    # user's, while copre-hub (which reads the variables on every call) uses the demo's endpoint and cache.
    import datasets  # noqa: F401
    import huggingface_hub  # noqa: F401

    from copre_hub.hub.serve.server import running

    token = secrets.token_urlsafe(16)
    with (
        tempfile.TemporaryDirectory(prefix="copre-hub-demo-cache-") as cache,
        running(storage, tokens=[token]) as url,
        environment({"HF_ENDPOINT": url, "HF_TOKEN": token, "HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": None}),
    ):
        yield url


@contextlib.contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) environment variables for the block; their previous values come back after."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            _set_env(name, value)
        yield
    finally:
        for name, value in saved.items():
            _set_env(name, value)


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def pretrain_initialization(settings: DemoSettings, run_dir: Path, progress: bool, data_dir: Path | None) -> Path:
    """Pre-train the embedded recipe on the data in ``data_dir`` (or the Hub) into ``run_dir`` (continuing or
    reusing a run of the same settings there); returns the checkpoint folder."""
    from copre_hub.fl.data import resolve_source
    from copre_hub.fl.pretrain import STATE_NAME, pretrain

    recipe = settings.recipe()
    method = recipe.method
    say(
        f"[2/6] pre-training {recipe.name}: CoPreFL on CIFAR-100 ({resolve_source(recipe.data, data_dir)}), "
        f"{method['rounds']} rounds x {method['participants']} of {recipe.partition.num_clients} clients"
    )
    resume = (run_dir / STATE_NAME).exists()
    if resume:
        say(f"      continuing the run in {run_dir} (delete it to train from scratch)")
    return pretrain(recipe, run_dir, resume=resume, progress=progress, data_dir=data_dir)


def publish(checkpoint: Path, repo_id: str) -> str:
    """Push the checkpoint folder (weights, config, model card) to the endpoint; returns the commit."""
    import copre_hub

    commit = copre_hub.push(checkpoint, repo_id, commit_message=f"Upload {repo_id} from copre-hub demo")
    say(f"[3/6] pushed {repo_id} with its model card: commit {commit.oid[:12]}")
    return commit.oid


def reload_matches(repo_id: str, checkpoint: Path) -> bool:
    """Load ``repo_id`` back from the endpoint with ``copre_hub.load``; True when its weights equal the pushed ones."""
    import torch
    from safetensors.torch import load_file

    import copre_hub
    from copre_hub.hub.checkpoint import WEIGHTS_NAME

    loaded = copre_hub.load(repo_id).state_dict()
    pushed = load_file(checkpoint / WEIGHTS_NAME)
    match = loaded.keys() == pushed.keys() and all(torch.equal(loaded[k], pushed[k]) for k in pushed)
    verdict = "identical to" if match else "DIFFERENT from"
    say(f"[4/6] copre_hub.load({repo_id!r}): {len(pushed)} tensors, {verdict} the pushed checkpoint")
    return match


def compare(repo_id: str, settings: DemoSettings, progress: bool, data_dir: Path | None) -> dict[str, Any]:
    """One downstream FedAvg task from random weights and from ``repo_id``, on identical draws (data from
    ``data_dir``, or the Hub); the report."""
    from copre_hub.fl.evaluate import evaluate

    cfg = settings.downstream()
    say(
        f"[5/6] downstream FedAvg on {cfg.classes_per_task} unseen classes: {cfg.clients} clients, "
        f"{cfg.rounds} rounds x {cfg.local_steps} local steps, from random init and from CoPreFL init"
    )
    return evaluate(
        ["random", repo_id], cfg, labels=[RANDOM_LABEL, COPREFL_LABEL], progress=progress, data_dir=data_dir
    )


def compare_published(settings: DemoSettings, progress: bool, data_dir: Path | None) -> dict[str, Any] | None:
    """One task of the paper's protocol from random weights and from the published :data:`PUBLISHED_ID`, on
    identical draws; the report, or None (with a line saying why) when the initialization or the data is missing."""
    import copre_hub
    from copre_hub.errors import DatasetNotFoundError, ModelNotFoundError
    from copre_hub.fl.data import DataConfig, resolve_source
    from copre_hub.fl.evaluate import evaluate

    cfg = settings.published_downstream()
    try:
        source = resolve_source(DataConfig(dataset=PUBLISHED_DATASET), data_dir)
        where = copre_hub.info(PUBLISHED_ID).source  # resolves the id and checks its pinned sha256
    except (DatasetNotFoundError, ModelNotFoundError) as error:
        say(f"[6/6] skipped the published {PUBLISHED_ID}: {error}")
        return None
    say(
        f"[6/6] downstream FedAvg on {PUBLISHED_TASK} ({source}) from the published {PUBLISHED_ID} (from the "
        f"{where}) and from random init: {cfg.clients} clients, {cfg.rounds} rounds x {cfg.local_steps} local steps"
    )
    return evaluate(
        ["random", PUBLISHED_ID], cfg, labels=[RANDOM_LABEL, PUBLISHED_LABEL], progress=progress, data_dir=data_dir
    )


def say(text: str) -> None:
    """Print a demo line at once (progress bars share the terminal)."""
    print(text, flush=True)
