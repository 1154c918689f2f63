"""The committed cards of the published initializations: each one's numbers are those of its evaluation report.

``model_cards/<id>/README.md`` is the card ``copre-hub evaluate ... --merge`` generated for the checkpoint, and
``model_cards/<id>/evaluation.json`` the report (``results.json``) it was generated from. These tests keep the two
in step and the card honest about what was run: the paper's downstream protocol, the weights it names, and the
random-weights baseline on the same tasks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from copre_hub.fl.downstream import DownstreamConfig
from copre_hub.hub.ids import published_model

CARDS = Path(__file__).resolve().parents[1] / "model_cards"
CARD_DIRS = sorted(path.parent for path in CARDS.glob("*/README.md"))


def test_there_are_published_cards() -> None:
    assert CARD_DIRS, f"no model_cards/<id>/README.md under {CARDS}"


@pytest.fixture(params=CARD_DIRS, ids=[path.name for path in CARD_DIRS])
def published(request: pytest.FixtureRequest) -> tuple[str, ModelCard, dict]:
    folder: Path = request.param
    report = json.loads((folder / "evaluation.json").read_text())
    return folder.name, ModelCard.load(folder / "README.md"), report


def _entry(report: dict, model_id: str) -> dict:
    entries = [entry for entry in report["initializations"] if entry["model_id"] == model_id]
    assert len(entries) == 1, f"evaluation.json should hold exactly one entry for {model_id}"
    return entries[0]


def test_card_is_a_published_id(published: tuple[str, ModelCard, dict]) -> None:
    model_id, card, _ = published
    assert published_model(model_id) is not None
    assert card.text.lstrip().startswith(f"# {model_id}")


def test_report_ran_the_papers_protocol(published: tuple[str, ModelCard, dict]) -> None:
    _, _, report = published
    paper = DownstreamConfig.for_dataset(report["data"]["dataset"])
    assert DownstreamConfig(**report["protocol"]) == paper  # keys added since the report was written: defaults
    for entry in report["initializations"]:
        assert [task["index"] for task in entry["tasks"]] == list(range(paper.tasks))


def test_card_names_the_evaluated_weights(published: tuple[str, ModelCard, dict]) -> None:
    model_id, card, report = published
    sha256 = _entry(report, model_id)["sha256"]
    assert len(sha256) == 64
    assert f"sha256 `{sha256}`" in card.text


def test_card_metrics_are_the_reports(published: tuple[str, ModelCard, dict]) -> None:
    model_id, card, report = published
    summary = _entry(report, model_id)["summary"]
    values = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert values == pytest.approx(
        {
            f"Downstream mean accuracy (FedAvg, {report['protocol']['tasks']} tasks)": summary["mean_accuracy"],
            f"Downstream client accuracy variance (FedAvg, {report['protocol']['tasks']} tasks)": summary["variance"],
            **{f"Downstream lowest {k}% clients accuracy (FedAvg)": summary[f"lowest_{k}"] for k in (10, 20, 30)},
        }
    )


def test_card_shows_the_baselines_on_the_same_tasks(published: tuple[str, ModelCard, dict]) -> None:
    model_id, card, report = published
    others = [entry for entry in report["initializations"] if entry["model_id"] != model_id]
    assert any(entry["label"] == "random" for entry in others)
    for entry in others:
        cells = f"{entry['summary']['mean_accuracy']:.2f} ± {entry['summary']['mean_accuracy_std']:.2f}"
        assert f"| same tasks from {entry['label']} | {cells} |" in card.text
