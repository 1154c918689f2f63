"""Model cards: YAML metadata and body rendered from data (config, run record, evaluation) and one template.

The template is ``copre_hub/hub/templates/modelcard.md`` (``model_cards/template.md`` in the repository is the
same file, kept identical by a test). Cards are never hand-written YAML: the metadata is a
``huggingface_hub.ModelCardData`` with ``EvalResult`` rows, so the Hub reads the ``model-index``.

A card is written for the repository it will live in: until a checkpoint is pushed its "How to load" section says it
is a local folder and loads it by path; ``copre-hub push`` rewrites that section (between the
``<!-- copre-hub:how-to-load -->`` markers) and the ``model-index`` name for the target repository
(:func:`card_for_repo`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from copre_hub import _env
from copre_hub.errors import CheckpointError
from copre_hub.hub.meta import CheckpointMeta, block_of

if TYPE_CHECKING:
    import yaml
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE_PATH = Path(__file__).with_name("templates") / "modelcard.md"
BASE_TAGS = ("copre-hub", "federated-learning", "image-classification", "timm")
DATASET_IDS = {"cifar100": "uoft-cs/cifar100", "femnist": "flwrlabs/femnist"}
DATASET_NAMES = {"cifar100": "CIFAR-100", "femnist": "FEMNIST"}
# How to print a method id where the checkpoint block has no ``method_display`` (written before it) and for the
# downstream algorithm of an evaluation; new checkpoints carry the engine's own ``Method.display_name``.
METHOD_NAMES = {
    "centralized": "Centralized",
    "coprefl": "CoPreFL",
    "coprefl-sgd": "CoPreFL-SGD",
    "fedavg": "FedAvg",
    "fedmeta": "FedMeta",
    "fedprox": "FedProx",
    "qffl": "q-FFL",
}
# Architectures that copre_hub.timm_models registers with timm: plain timm cannot build them, so their cards say so,
# and no published id uses one (a test keeps this list and that module in step).
REGISTERED_ARCHITECTURES = ("femnist_cnn", "resnet18_cifar")
SCENARIOS = {"1": "Scenario I (pre-training data only on clients)", "2": "Scenario II (clients plus a server dataset)"}
_HISTOGRAM_BINS = 10
# Caps on a card's YAML metadata. The published cards have about 1 KiB, 200 nodes and 8 levels; a YAML alias chain
# ("billion laughs") of a few hundred bytes expands to millions of nodes when served as JSON.
MAX_METADATA_BYTES = 64 << 10
MAX_METADATA_NODES = 10_000
MAX_METADATA_DEPTH = 32
LOCAL_PATH = "path/to/checkpoint"  # what an unpushed card's snippets load
_HOW_TO_LOAD = re.compile(r"<!-- copre-hub:how-to-load -->.*?<!-- copre-hub:how-to-load:end -->", re.DOTALL)
# Load targets in the snippets of cards without the markers (written before them): copre_hub.load("...") and timm ids.
_LOAD_CALL = re.compile(r'copre_hub\.load\("[^"]*"')
_TIMM_ID = re.compile(r'"(?:hf-hub|local-dir):[^"]*"')


def build_model_card(
    config: dict[str, Any],
    run_record: dict[str, Any] | None = None,
    eval_results: dict[str, Any] | list[dict[str, Any]] | None = None,
) -> ModelCard:
    """Build the model card of a checkpoint from its ``config.json`` and, when given, its run and evaluation.

    Everything is optional beyond ``config["architecture"]``: missing pieces leave their section saying so.

    Args:
        config: the checkpoint's ``config.json``. Its ``copre_hub`` block (a
            :class:`~copre_hub.hub.meta.CheckpointMeta`), as ``copre-hub pretrain`` writes it, may hold
            ``model_id``, ``repo_id`` (the repository the card is for; without it, the card is for a local
            folder), ``method`` and ``method_display`` (its printed name), ``scenario`` (1 or 2), ``seed``, ``data``
            (``dataset``, ``pretrain_classes``, ``downstream_classes``), ``partition`` (``num_clients``, ``scheme``,
            ``alpha``, ``server_fraction``), ``hyperparameters`` (``rounds``, ...), ``recipe``, ``versions``,
            ``final_metrics`` (the last round's), ``sha256`` and ``eval_results``.
        run_record: the pre-training run: ``recipe`` (nested dict), ``rounds`` (list of per-round metric dicts;
            the last one is shown), ``versions`` (package -> version). Values here win over the block.
        eval_results: downstream evaluation of this initialization, one dict or a list of dicts (one per
            downstream setting), each with the keys:

            - ``dataset`` (str, e.g. ``"cifar100"``), ``classes`` (str, optional, e.g. ``"80-99"``),
            - ``algorithm`` (str, downstream FL algorithm, e.g. ``"fedavg"``), ``tasks`` (int, FL tasks averaged),
              ``clients`` and ``rounds`` (int, optional, per task),
            - ``mean_accuracy`` and ``mean_accuracy_std`` (%: clients' mean final accuracy, mean and std over tasks),
            - ``variance`` and ``variance_std`` (population variance of client accuracies, mean and std over tasks),
            - ``lowest_10``, ``lowest_20``, ``lowest_30`` (%: mean accuracy of the worst 10/20/30% of clients),
            - ``client_accuracies`` (list of %, optional: one task's clients, drawn as a text histogram),
            - ``baselines`` (optional): other initializations run on the same tasks, each a ``label`` and the
              metrics above, shown as rows under this one.

            Defaults to the block's ``eval_results``. Missing numbers are shown as a dash.

    Returns:
        A ``huggingface_hub.ModelCard`` whose YAML has ``library_name: timm``, the tags ``copre-hub`` and
        ``federated-learning``, ``datasets`` and a ``model-index`` with mean accuracy and variance per setting.

    Example:
        >>> card = build_model_card({"architecture": "resnet18", "pretrained_cfg": {}})  # doctest: +SKIP
        >>> card.data.library_name  # doctest: +SKIP
        'timm'
    """
    from huggingface_hub import ModelCard, ModelCardData

    meta = CheckpointMeta.from_config(config)
    record = run_record or {}
    evaluations = _as_list(eval_results) if eval_results is not None else [dict(e) for e in meta.eval_results]
    model_id = str(meta.model_id or config.get("pretrained_cfg", {}).get("tag") or config["architecture"])
    repo_id = str(meta.extra["repo_id"]) if meta.extra.get("repo_id") else None
    method = str(meta.method or "")
    dataset = str((meta.data or {}).get("dataset") or "")
    datasets = _unique(DATASET_IDS.get(name, name) for name in [dataset, *(e.get("dataset") for e in evaluations)])
    results = [result for evaluation in evaluations for result in _eval_results(evaluation)]
    card_data = ModelCardData(
        license=config.get("pretrained_cfg", {}).get("license"),
        library_name="timm",
        pipeline_tag="image-classification",
        tags=_unique([*BASE_TAGS, method.lower(), config["architecture"]]),
        datasets=datasets or None,
        model_name=model_id if results else None,
        eval_results=results or None,
        base_model=base_model(meta.init),
    )
    rounds = record.get("rounds") or ([dict(meta.final_metrics)] if meta.final_metrics else [])
    facts = {**block_of(config), **{key: value for key, value in record.items() if key != "rounds"}}
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_id=model_id,
        repo_id=repo_id,
        load_id=repo_id or LOCAL_PATH,
        timm_id=f"hf-hub:{repo_id}" if repo_id else f"local-dir:{LOCAL_PATH}",
        summary=_summary(config, meta, dataset),
        architecture=config["architecture"],
        registered_by_copre_hub=config["architecture"] in REGISTERED_ARCHITECTURES,
        num_classes=config.get("num_classes", "?"),
        input_size="x".join(str(size) for size in config.get("pretrained_cfg", {}).get("input_size", ())) or "?",
        method_name=_method_name(meta.method, meta.method_display) or "unknown method",
        scenario=_display("scenario", meta.scenario or ""),
        dataset=_display("dataset", dataset),
        sha256=meta.sha256 or "",
        copre_hub_version=meta.copre_hub_version or "?",
        pretraining_rows=_pretraining_rows(facts),
        recipe_rows=[
            (key, _cell(value)) for key, value in _flatten(facts.get("recipe") or {}) if value not in (None, "", [], {})
        ],
        round_rows=[(key, _cell(value)) for key, value in (rounds[-1] if rounds else {}).items()],
        rounds_recorded=len(record.get("rounds") or []),
        version_rows=[(key, _cell(value)) for key, value in (facts.get("versions") or {}).items()],
        result_rows=[row for evaluation in evaluations for row in _result_rows(evaluation)],
        paired_lines=[line for evaluation in evaluations for line in _paired_lines(evaluation)],
        histograms=[
            (_setting(evaluation), _histogram(evaluation["client_accuracies"]))
            for evaluation in evaluations
            if evaluation.get("client_accuracies")
        ],
    )


def parse_card_metadata(content: str) -> dict[str, Any]:
    """The YAML metadata block of a model card, parsed safely and within caps.

    The block (between the leading ``---`` lines, as huggingface_hub finds it) must be at most
    :data:`MAX_METADATA_BYTES`; once aliases are expanded it must hold at most :data:`MAX_METADATA_NODES` nodes,
    nest at most :data:`MAX_METADATA_DEPTH` levels and refer to nothing recursively. The node graph is measured
    before any Python object is built, so an alias bomb costs no more than its own size. Only plain YAML types
    are built (``yaml.SafeLoader``), then returned as JSON types (a date becomes its ISO text).

    Returns:
        The metadata mapping ({} when the card has no metadata block).

    Raises:
        CheckpointError: naming the cap that was passed, or the YAML error.
    """
    import yaml
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    match = REGEX_YAML_BLOCK.search(content)
    if match is None:
        return {}
    block = match.group(2)
    size = len(block.encode("utf-8", errors="surrogatepass"))
    if size > MAX_METADATA_BYTES:
        raise CheckpointError(
            f"README.md metadata is {size} bytes, over the {MAX_METADATA_BYTES}-byte cap; move long text below the "
            "metadata block."
        )
    try:
        root = yaml.compose(block, Loader=yaml.SafeLoader)
        if root is None:
            return {}
        _check_node_graph(root)
        data = yaml.safe_load(block)
    except RecursionError:
        raise CheckpointError(
            f"README.md metadata nests deeper than {MAX_METADATA_DEPTH} levels; flatten it."
        ) from None
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())
        raise CheckpointError(
            f"README.md metadata is not valid YAML ({reason}); fix the block between '---' lines."
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError("README.md metadata must be a YAML mapping (key: value lines between '---' lines).")
    try:  # as JSON, the way the Hub serves it: dates become strings, and text must be valid Unicode
        return json.loads(json.dumps(data, ensure_ascii=False, default=str).encode("utf-8"))
    except UnicodeEncodeError:
        raise CheckpointError("README.md metadata holds text that is not valid Unicode (a lone surrogate).") from None


def parse_card_data(content: str) -> ModelCardData:
    """The metadata of a model card as ``huggingface_hub.ModelCardData`` (``model-index`` read into
    ``eval_results``), parsed with :func:`parse_card_metadata`'s caps.

    Raises:
        CheckpointError: as :func:`parse_card_metadata`, or keys ``ModelCardData`` cannot take.
    """
    from huggingface_hub import ModelCardData

    metadata = parse_card_metadata(content)
    try:
        return ModelCardData(**metadata, ignore_metadata_errors=True)
    except (TypeError, ValueError) as error:  # e.g. a key named like one of its parameters
        raise CheckpointError(f"README.md metadata cannot be read as a model card ({error}).") from None


def _check_node_graph(root: yaml.Node) -> None:
    """Refuse a YAML node graph that expands past the caps or refers to itself (see :func:`parse_card_metadata`).

    Each node is measured once (aliases share nodes), so the check is linear in the document, not in its expansion.
    """
    expanded: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes once expanded, depth)
    visiting: set[int] = set()

    def measure(node: yaml.Node, level: int) -> tuple[int, int]:
        if level > MAX_METADATA_DEPTH:
            raise CheckpointError(f"README.md metadata nests deeper than {MAX_METADATA_DEPTH} levels; flatten it.")
        key = id(node)
        if key in expanded:
            return expanded[key]
        if key in visiting:
            raise CheckpointError("README.md metadata refers to itself through a YAML alias; remove the alias.")
        visiting.add(key)
        children: list[yaml.Node] = []
        if isinstance(node.value, list):
            for item in node.value:
                children.extend(item if isinstance(item, tuple) else (item,))
        nodes, depth = 1, 1
        for child in children:
            child_nodes, child_depth = measure(child, level + 1)
            nodes += child_nodes
            depth = max(depth, child_depth + 1)
            if nodes > MAX_METADATA_NODES:
                raise CheckpointError(
                    f"README.md metadata expands to more than {MAX_METADATA_NODES} values (YAML aliases count once "
                    "per use); write it without aliases."
                )
        visiting.discard(key)
        expanded[key] = (nodes, depth)
        return nodes, depth

    if measure(root, 1)[1] > MAX_METADATA_DEPTH:  # a shared node measured higher up may sit deeper here
        raise CheckpointError(f"README.md metadata nests deeper than {MAX_METADATA_DEPTH} levels; flatten it.")


def card_for_repo(text: str, config: dict[str, Any], repo_id: str) -> str:
    """The card ``text`` as it should read in the repository ``repo_id`` (what ``push`` uploads as README.md).

    The "How to load" section between the ``copre-hub:how-to-load`` markers is rendered again for ``repo_id``
    (a card without the markers has the ids in its ``copre_hub.load``/``hf-hub:`` snippets replaced), and the
    ``model-index`` name becomes the repository's name. Everything else, hand edits included, is kept.

    Example:
        >>> card_for_repo(open("README.md").read(), config, "my-org/my-init")  # doctest: +SKIP
    """
    from huggingface_hub import ModelCard

    card = ModelCard(text, ignore_metadata_errors=True)
    if card.data.eval_results:
        card.data.model_name = repo_id.split("/")[-1]
    block = block_of(config) | {"repo_id": repo_id}
    fresh = _HOW_TO_LOAD.search(build_model_card({**config, "copre_hub": block}, eval_results=[]).content)
    if _HOW_TO_LOAD.search(card.text) and fresh is not None:
        card.text = _HOW_TO_LOAD.sub(lambda _: fresh.group(0), card.text, count=1)
    else:
        card.text = _LOAD_CALL.sub(lambda _: f'copre_hub.load("{repo_id}"', card.text)
        card.text = _TIMM_ID.sub(lambda _: f'"hf-hub:{repo_id}"', card.text)
    return card.content


def _pretraining_rows(facts: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, cell) rows of what the pre-training was: method, scenario, data, partition, rounds and seed."""
    data = facts.get("data") or {}
    partition = facts.get("partition") or {}
    split = {"pretrain": data.get("pretrain_classes"), "downstream": data.get("downstream_classes")}
    rows = [
        ("Method", _method_name(facts.get("method"), facts.get("method_display"))),
        ("Scenario", _display("scenario", facts.get("scenario"))),
        ("Dataset", _display("dataset", data.get("dataset"))),
        ("Class split", split if data.get("pretrain_classes") else None),
        ("Partitioner", {key: partition[key] for key in ("scheme", "alpha", "server_fraction") if key in partition}),
        ("Clients", partition.get("num_clients")),
        ("Rounds", (facts.get("hyperparameters") or {}).get("rounds")),
        ("Local optimizer", _optimizer(facts.get("hyperparameters") or {})),
        ("Starting weights", _starting_weights(facts["init"]) if "init" in facts else None),
        ("Seed", facts.get("seed")),
    ]
    return [(label, _cell(value)) for label, value in rows if value not in (None, "", [], {})]


def _optimizer(hyperparameters: dict[str, Any]) -> str | None:
    """The clients' SGD settings in one phrase, e.g. ``SGD lr 0.01, momentum 0.9`` (fresh state every round)."""
    if "lr" not in hyperparameters:
        return None
    extras = [
        f"{key.replace('_', ' ')} {hyperparameters[key]:g}"
        for key in ("momentum", "weight_decay")
        if hyperparameters.get(key)
    ]
    extras += ["Nesterov"] if hyperparameters.get("nesterov") else []
    return ", ".join([f"SGD lr {hyperparameters['lr']:g}", *extras])


def _starting_weights(init: dict[str, Any] | None) -> str:
    """Where pre-training started: ``model.init`` (with its sha256) or seeded random weights."""
    if not init:
        return "random (seeded)"
    return f"{init['id']} (sha256 {str(init.get('sha256'))[:12]}...)"


def base_model(init: dict[str, Any] | None) -> str | None:
    """The card's ``base_model``: ``model.init`` when it names a Hub repository (not a local folder)."""
    source = str((init or {}).get("id") or "").removeprefix("hf-hub:").split("@")[0]
    if not source or source.startswith((".", "/", "~", "local-dir:")) or source.count("/") > 1 or Path(source).exists():
        return None
    return source if "/" in source else f"{_env.default_org()}/{source}"


def _eval_results(evaluation: dict[str, Any]) -> list[EvalResult]:
    """EvalResult rows of one downstream setting: mean accuracy, variance and the lowest-k% accuracies."""
    from huggingface_hub import EvalResult

    dataset = str(evaluation.get("dataset") or "unknown")
    common = {
        "task_type": "image-classification",
        "dataset_type": DATASET_IDS.get(dataset, dataset),
        "dataset_name": _display("dataset", dataset),
        "dataset_split": evaluation.get("classes"),
        "metric_config": evaluation.get("algorithm"),
    }
    tasks = f", {evaluation['tasks']} tasks" if evaluation.get("tasks") else ""
    algorithm = _display("method", evaluation.get("algorithm") or "FL")
    metrics = [
        ("mean_accuracy", "accuracy", f"Downstream mean accuracy ({algorithm}{tasks})"),
        ("variance", "variance", f"Downstream client accuracy variance ({algorithm}{tasks})"),
        *((f"lowest_{k}", "accuracy", f"Downstream lowest {k}% clients accuracy ({algorithm})") for k in (10, 20, 30)),
    ]
    return [
        EvalResult(**common, metric_type=metric_type, metric_name=name, metric_value=float(evaluation[key]))
        for key, metric_type, name in metrics
        if evaluation.get(key) is not None
    ]


def _summary(config: dict[str, Any], meta: CheckpointMeta, dataset: str) -> str:
    method = _method_name(meta.method, meta.method_display) or "federated"
    architecture = config["architecture"]
    owner = "copre-hub's timm-registered" if architecture in REGISTERED_ARCHITECTURES else "timm"
    text = f"A {method} pre-trained initialization of {owner} `{architecture}` for federated downstream tasks"
    if dataset:
        text += f", pre-trained on {_display('dataset', dataset)}"
    if meta.scenario:
        text += f" in {_display('scenario', meta.scenario)}"
    return text + "."


def _method_name(method: Any, display: Any) -> str:
    """The printed name of the pre-training method: its recorded ``method_display``, else the id's known name."""
    return str(display or _display("method", method or ""))


def _display(key: str, value: Any) -> Any:
    """The readable name of a method, scenario or dataset id; other values unchanged."""
    names = {"method": METHOD_NAMES, "scenario": SCENARIOS, "dataset": DATASET_NAMES}.get(key, {})
    return names.get(str(value).lower(), value)


def _setting(evaluation: dict[str, Any]) -> str:
    dataset = str(evaluation.get("dataset") or "")
    parts = [_display("dataset", dataset) or "downstream"]
    if evaluation.get("classes"):
        parts.append(f"classes {evaluation['classes']}")
    algorithm = evaluation.get("algorithm")
    protocol = [f"{evaluation[key]} {key}" for key in ("tasks", "clients", "rounds") if evaluation.get(key)]
    if algorithm:
        parts.append(str(_display("method", algorithm)))
    return _cell(" ".join(parts) + (f" ({', '.join(protocol)})" if protocol else ""))


def _result_rows(evaluation: dict[str, Any]) -> list[dict[str, str]]:
    """This initialization's row of a setting, then one row per baseline run on the same tasks."""
    rows = [_metric_cells(f"**{_setting(evaluation)}**", evaluation)]
    for baseline in evaluation.get("baselines") or []:
        rows.append(_metric_cells(_cell(f"same tasks from {baseline.get('label', '?')}"), baseline))
    return rows


def _paired_lines(evaluation: dict[str, Any]) -> list[str]:
    """One line per baseline with paired differences: accuracy, variance and the lowest 10%, and tasks won."""
    lines = []
    for baseline in evaluation.get("baselines") or []:
        paired = baseline.get("paired") or {}
        if "mean_accuracy" not in paired:
            continue
        parts = []
        for key, name, better in (("mean_accuracy", "accuracy", "higher"), ("variance", "variance", "lower")):
            d = paired[key]
            won = d["higher"] if better == "higher" else d["tasks"] - d["higher"]
            parts.append(f"{name} {d['mean']:+.2f} ± {d['ci95']:.2f} ({better} in {won}/{d['tasks']} tasks)")
        if "lowest_10" in paired:
            parts.append(f"lowest 10% {paired['lowest_10']['mean']:+.2f} ± {paired['lowest_10']['ci95']:.2f}")
        lines.append(f"{_setting(evaluation)} vs {_cell(baseline.get('label', '?'))}: " + "; ".join(parts))
    return lines


def _metric_cells(setting: str, metrics: dict[str, Any]) -> dict[str, str]:
    def number(key: str) -> str:
        value = metrics.get(key)
        if value is None:
            return "—"
        spread = metrics.get(f"{key}_std")
        return f"{float(value):.2f}" + (f" ± {float(spread):.2f}" if spread is not None else "")

    return {
        "setting": setting,
        "accuracy": number("mean_accuracy"),
        "variance": number("variance"),
        **{f"lowest_{k}": number(f"lowest_{k}") for k in (10, 20, 30)},
    }


def _histogram(accuracies: list[float]) -> str:
    """A text histogram of client accuracies (%) in 10-point bins, one ``#`` per client."""
    counts = [0] * _HISTOGRAM_BINS
    for accuracy in accuracies:
        counts[min(int(float(accuracy) // 10), _HISTOGRAM_BINS - 1)] += 1
    return "\n".join(f"{10 * i:3d}-{10 * (i + 1):3d}% | {'#' * count} {count}" for i, count in enumerate(counts))


def _flatten(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _cell(value: Any) -> str:
    """One table cell: dicts as ``k=v``, runs of integers as ``a-b``, floats to 4 significant digits."""
    if isinstance(value, dict):
        text = "; ".join(f"{key}={_cell(item)}" for key, item in value.items())
    elif isinstance(value, list | tuple):
        text = int_ranges(value) if value and all(isinstance(v, int) for v in value) else ", ".join(map(_cell, value))
    elif isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def int_ranges(values: Sequence[int]) -> str:
    """``[80, 81, 82, 90]`` as ``80-82, 90`` (class lists in cards and reports)."""
    runs: list[list[int]] = []
    for value in sorted(values):
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def _as_list(value: dict[str, Any] | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    if value is None:
        return []
    return [value] if isinstance(value, dict) else list(value)


def _unique(values: Any) -> list[str]:
    return list(dict.fromkeys(str(value) for value in values if value))
