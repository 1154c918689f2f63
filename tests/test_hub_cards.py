"""Model cards: Hub metadata built with ModelCardData/EvalResult, the body sections, tolerance to missing data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from copre_hub.hub.cards import TEMPLATE_PATH, build_model_card, card_for_repo

REPO = Path(__file__).resolve().parents[1]

CONFIG = {
    "architecture": "resnet18",
    "num_classes": 80,
    "pretrained_cfg": {"input_size": [3, 32, 32], "license": "apache-2.0", "tag": "copreFL-resnet18-cifar100"},
    "copre_hub": {
        "model_id": "copreFL-resnet18-cifar100",
        "method": "coprefl",
        "scenario": 1,
        "data": {
            "dataset": "cifar100",
            "pretrain_classes": list(range(80)),
            "downstream_classes": list(range(80, 100)),
        },
        "sha256": "ab" * 32,
        "copre_hub_version": "0.1.0",
    },
}
EVAL = {
    "dataset": "cifar100",
    "classes": "80-99",
    "algorithm": "fedavg",
    "tasks": 10,
    "mean_accuracy": 83.2,
    "mean_accuracy_std": 2.6,
    "variance": 34.7,
    "variance_std": 3.1,
    "lowest_10": 61.0,
    "client_accuracies": [55.0, 71.5, 88.0, 100.0],
}
RUN = {
    "recipe": {"train": {"rounds": 50, "lr": 0.001}},
    "rounds": [{"round": 1, "loss": 2.3}, {"round": 2, "loss": 1.9}],
    "versions": {"torch": "2.14.1"},
}


def test_card_metadata_is_what_the_hub_reads() -> None:
    card = build_model_card(CONFIG, RUN, EVAL)
    reparsed = ModelCard(card.content)  # what the Hub and huggingface_hub parse back from README.md
    data = reparsed.data
    assert data.library_name == "timm"
    assert {"copre-hub", "federated-learning"} <= set(data.tags)
    assert data.datasets == ["uoft-cs/cifar100"]
    assert data.model_name == "copreFL-resnet18-cifar100"
    metrics = {(result.metric_type, result.metric_value) for result in data.eval_results}
    assert {("accuracy", 83.2), ("variance", 34.7), ("accuracy", 61.0)} <= metrics


def test_card_body_has_every_section_and_the_numbers() -> None:
    pushed = {**CONFIG, "copre_hub": {**CONFIG["copre_hub"], "repo_id": "copre-hub/copreFL-resnet18-cifar100"}}
    content = build_model_card(pushed, RUN, EVAL).content
    for heading in (
        "## How to load",
        "## Pre-training details",
        "## Downstream protocol and results",
        "## Limitations",
        "## Citation",
    ):
        assert heading in content
    for snippet in (
        'copre_hub.load("copre-hub/copreFL-resnet18-cifar100"',
        "hf-hub:copre-hub/copreFL-resnet18-cifar100",
        "ArrayRecord",
        "PTFileModelPersistor",
        "83.20 ± 2.60",
        "34.70 ± 3.10",
        "pretrain=0-79",
        "`train.lr` | 0.001",
        "2 rounds recorded",
        "90-100% | # 1",
        "ab" * 32,
        "arXiv",
    ):
        assert snippet in content


@pytest.mark.parametrize("eval_results", [None, [], [EVAL, {**EVAL, "algorithm": "fedprox", "lowest_10": None}]])
def test_card_tolerates_missing_or_several_results(eval_results) -> None:
    config = {"architecture": "test_resnet", "pretrained_cfg": {}}
    card = build_model_card(config, None, eval_results)
    assert card.data.library_name == "timm"
    if eval_results:
        assert "FedProx" in card.content and len(card.data.eval_results) == 5
    else:
        assert card.data.eval_results is None
        assert "No downstream evaluation" in card.content and "No pre-training record" in card.content


def test_results_default_to_the_config_block() -> None:
    card = build_model_card({**CONFIG, "copre_hub": {**CONFIG["copre_hub"], "eval_results": EVAL}})
    assert any(result.metric_value == 83.2 for result in card.data.eval_results)


def test_repository_template_is_the_packaged_one() -> None:
    assert (REPO / "model_cards" / "template.md").read_text() == TEMPLATE_PATH.read_text()


def test_card_reads_the_block_pretrain_writes() -> None:
    """`copre-hub pretrain` records the scenario as a number and the data, partition and method as tables."""
    block = {
        "model_id": "copreFL-resnet18-cifar100",
        "method": "coprefl",
        "scenario": 2,
        "seed": 0,
        "data": {"dataset": "cifar100", "pretrain_classes": list(range(80)), "downstream_classes": [80, 81, 82]},
        "partition": {"num_clients": 100, "scheme": "dirichlet", "alpha": 0.5, "server_fraction": 0.05},
        "hyperparameters": {"rounds": 50, "gamma": 0.25},
        "recipe": {"data": {"dataset": "cifar100", "path": None}},
        "final_metrics": {"round": 50, "train_loss": 3.9892},
    }
    content = build_model_card({**CONFIG, "copre_hub": block}).content
    for row in (
        "| Scenario | Scenario II (clients plus a server dataset) |",
        "| Dataset | CIFAR-100 |",
        "| Class split | pretrain=0-79; downstream=80-82 |",
        "| Partitioner | scheme=dirichlet; alpha=0.5; server_fraction=0.05 |",
        "| Clients | 100 |",
        "| Rounds | 50 |",
        "| train_loss | 3.989 |",
    ):
        assert row in content
    assert "`data.path`" not in content and "rounds recorded" not in content


def test_cards_of_architectures_copre_hub_registers_say_to_import_it() -> None:
    own = build_model_card({"architecture": "femnist_cnn", "pretrained_cfg": {}}).content
    assert "import copre_hub.fl.models  # registers femnist_cnn with timm\nimport timm" in own
    assert "With plain timm" not in own
    plain = build_model_card(CONFIG).content
    assert "With plain timm" in plain and "copre_hub.fl.models" not in plain


def test_registered_architectures_are_the_ones_plain_timm_lacks_and_cards_say_so() -> None:
    import timm

    import copre_hub.fl.models  # noqa: F401  (registers them)
    from copre_hub.hub.cards import REGISTERED_ARCHITECTURES

    assert set(timm.list_models(module="timm_models")) == set(REGISTERED_ARCHITECTURES)  # copre_hub/timm_models.py's
    script = (
        "import sys, timm; names = sys.argv[1:]; print(' '.join(name for name in names if not timm.is_model(name)))"
    )
    plain = subprocess.run(  # a fresh interpreter with timm only: copre_hub never imported
        [sys.executable, "-c", script, *REGISTERED_ARCHITECTURES], capture_output=True, text=True
    )
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.split() == list(REGISTERED_ARCHITECTURES)
    snapshots = sorted(path.parent for path in (REPO / "model_cards").glob("*/config.json"))
    assert snapshots
    for folder in snapshots:  # a published card tells plain-timm users what their architecture needs
        registered = json.loads((folder / "config.json").read_text())["architecture"] in REGISTERED_ARCHITECTURES
        card = (folder / "README.md").read_text()
        assert ("import copre_hub.fl.models" in card) == registered and ("With plain timm" in card) != registered


def test_an_unpushed_card_loads_the_local_folder() -> None:
    content = build_model_card(CONFIG, RUN, EVAL).content
    assert "belongs to a local folder, not pushed yet" in content
    assert 'copre_hub.load("path/to/checkpoint"' in content and '"local-dir:path/to/checkpoint"' in content
    assert "hf-hub:" not in content and "copre-hub/copreFL" not in content


def test_push_writes_the_card_for_the_target_repository() -> None:
    local = build_model_card(CONFIG, RUN, EVAL).content.replace("## Limitations", "A note of ours.\n\n## Limitations")
    pushed = card_for_repo(local, CONFIG, "demo/my-init")
    for snippet in ('copre_hub.load("demo/my-init", num_classes=10)', '"hf-hub:demo/my-init"', "A note of ours."):
        assert snippet in pushed
    assert "path/to/checkpoint" not in pushed and "local folder" not in pushed
    card = ModelCard(pushed)
    assert card.data.model_name == "my-init" and card.data.eval_results[0].metric_value == 83.2
    assert card_for_repo(pushed, CONFIG, "demo/my-init") == pushed


def test_cards_written_before_the_markers_are_retargeted_too() -> None:
    published = (REPO / "tests" / "fixtures" / "card-before-markers.md").read_text()  # a card as once published
    assert "copre-hub:how-to-load" not in published
    pushed = card_for_repo(published, CONFIG, "lab/copy")
    assert "copre-hub/copreFL-resnet18-cifar100-hybrid" not in pushed
    assert pushed.count('copre_hub.load("lab/copy"') == 3 and '"hf-hub:lab/copy"' in pushed


def test_committed_reports_record_no_machine_paths() -> None:
    reports = sorted((REPO / "model_cards").glob("*/evaluation.json"))
    sources = {path.parent.name: json.loads(path.read_text())["data"]["source"] for path in reports}
    assert sources and all(not Path(source).is_absolute() for source in sources.values()), sources
    records = sorted((REPO / "model_cards").glob("*/run.json"))
    sources = {path.parent.name: json.loads(path.read_text())["data"]["source"] for path in records}
    assert all(not Path(source).is_absolute() for source in sources.values()), sources
