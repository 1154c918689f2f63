"""What a downstream comparison's report becomes: the text table, the per-client accuracy plot, ``results.json``,
a checkpoint card's results, and merges (of reports, and of results into a checkpoint).

The report itself (:class:`copre_hub.fl.report_format.Report`) is made by :func:`copre_hub.fl.evaluate.evaluate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from copre_hub import _io
from copre_hub.errors import ConfigError
from copre_hub.fl.evaluate import unique_labels
from copre_hub.fl.metrics import LOWEST
from copre_hub.fl.report_format import InitializationResult, Report, initialization, pooled_accuracies, random_entry
from copre_hub.hub.cards import int_ranges
from copre_hub.hub.meta import CheckpointMeta, block_of

REPORT_NAME = "results.json"
PLOT_NAME = "client_accuracies.png"


def merge_reports(reports: Sequence[Report]) -> Report:
    """One report holding the initializations of several, which must share the protocol, data and tasks.

    Evaluating initializations one call at a time (to save each result as it finishes) and merging gives the
    same report as one call, because the tasks depend only on the protocol's seed and the data.

    Raises:
        ConfigError: the reports were made under different protocols, data or tasks.
    """
    if not reports:
        raise ConfigError("no reports to merge.")
    first = reports[0]
    for other in reports[1:]:
        for key in ("protocol", "data", "tasks"):
            if other[key] != first[key]:
                raise ConfigError(f"cannot merge evaluations with different {key}; rerun them with the same settings.")
    entries = [entry for report in reports for entry in report["initializations"]]
    labels = unique_labels([entry["label"] for entry in entries], len(entries))
    renamed = [InitializationResult(**{**e, "label": lab}) for e, lab in zip(entries, labels, strict=True)]
    return Report(**{**first, "initializations": renamed})


def format_table(report: Report) -> str:
    """The comparison as text, the one format of ``copre-hub evaluate`` and the demo.

    One row per initialization (mean ± std over tasks; no std with one task), then, when ``random`` weights are in
    the report, each other initialization's difference from them, then a legend of the columns.
    """
    columns = [("mean_accuracy", "accuracy (%)"), ("variance", "variance"), *_LOWEST_COLUMNS]
    tasks = len(report["tasks"])
    entries = report["initializations"]

    def cell(summary: dict[str, float], key: str) -> str:
        return f"{summary[key]:.2f}" + (f" ± {summary[f'{key}_std']:.2f}" if tasks > 1 else "")

    rows = [["initialization", *(name for _, name in columns)]]
    rows += [[entry["label"], *(cell(entry["summary"], key) for key, _ in columns)] for entry in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns) + 1)]
    lines = [
        "  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])
        for row in rows
    ]
    baseline = random_entry(report)
    if baseline is not None:
        lines += [_difference(entry, baseline) for entry in entries if entry is not baseline]
    spread = f"mean ± std over {tasks} tasks" if tasks > 1 else "1 task"
    lines.append(
        f"({spread} of {report['protocol']['clients']} clients; accuracy: the clients' mean final test accuracy; "
        "variance: of the client accuracies, in %²; lowest k%: mean accuracy of the worst k% of clients)"
    )
    return "\n".join(lines)


_LOWEST_COLUMNS = [(f"lowest_{k}", f"lowest {k}% (%)") for k in LOWEST]


def _difference(entry: InitializationResult, baseline: InitializationResult) -> str:
    ours, theirs = entry["summary"], baseline["summary"]
    return (
        f"{entry['label']} vs {baseline['label']}: "
        f"{ours['mean_accuracy'] - theirs['mean_accuracy']:+.2f} points of accuracy, "
        f"{ours['variance'] - theirs['variance']:+.2f} variance, "
        f"{ours['lowest_10'] - theirs['lowest_10']:+.2f} points for the lowest 10%"
    )


def write_report(report: Report, folder: str | Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``client_accuracies.png`` into ``folder`` (atomically); returns both paths."""
    folder = Path(folder)
    json_path = _io.atomic_write_json(folder / REPORT_NAME, report)
    return json_path, plot_client_accuracies(report, folder / PLOT_NAME)


def plot_client_accuracies(report: Report, path: str | Path) -> Path:
    """Histogram of per-client test accuracy (all tasks pooled), one panel per initialization (Figure 2 style)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    entries = report["initializations"]
    figure = Figure(figsize=(6.4, 1.6 + 1.4 * len(entries)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(entries), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    bins = list(range(0, 105, 5))
    for ax, entry, colour in zip(axes, entries, _colours(len(entries)), strict=True):
        summary = entry["summary"]
        ax.hist(
            pooled_accuracies(entry), bins=bins, color=colour, alpha=0.8, edgecolor="white", label="clients per 5% bin"
        )
        ax.axvline(summary["mean_accuracy"], color="black", linestyle="--", linewidth=1, label="mean accuracy")
        ax.axvline(summary["lowest_10"], color="black", linestyle=":", linewidth=1, label="lowest 10% (mean)")
        ax.set_title(
            f"{entry['label']}: mean {summary['mean_accuracy']:.1f}%, variance {summary['variance']:.1f}, "
            f"lowest 10% {summary['lowest_10']:.1f}%",
            fontsize=9,
            loc="left",
        )
        ax.set_ylabel("clients")
    axes[0].legend(fontsize=7, loc="upper left", frameon=False)
    axes[-1].set_xlabel("client test accuracy (%), all tasks' clients pooled")
    axes[-1].set_xlim(0, 100)
    protocol = report["protocol"]
    count = len(report["tasks"])
    tasks = f"{count} task" + ("s" if count != 1 else "")
    figure.suptitle(
        f"{report['data']['dataset']}: {tasks} x {protocol['clients']} clients, "
        f"{protocol['algorithm']} {protocol['rounds']} rounds",
        fontsize=10,
    )
    return _io.atomic_write(Path(path), lambda tmp: figure.savefig(tmp, format="png", dpi=120))


def card_eval_result(report: Report, label: str) -> dict[str, Any]:
    """One initialization's results in the shape :func:`copre_hub.hub.cards.build_model_card` documents.

    ``client_accuracies`` pools every task's clients. ``protocol`` (the full downstream settings) is kept too,
    so a later merge of the same protocol replaces this entry instead of adding a second one. ``baselines`` holds
    the summaries of the report's other initializations (e.g. random), which faced the same tasks, and this
    initialization's paired differences against each (``paired``), so the card can show what it gains over them.

    Raises:
        ConfigError: no initialization has that label.
    """
    entry = initialization(report, label)
    protocol = report["protocol"]
    summary = entry["summary"]
    return {
        "dataset": report["data"]["dataset"],
        "classes": f"{protocol['class_pool']} {int_ranges(report['data']['class_pool'])}",
        "algorithm": protocol["algorithm"],
        "tasks": len(report["tasks"]),
        "clients": protocol["clients"],
        "rounds": protocol["rounds"],
        **{key: summary[key] for key in sorted(summary)},
        "client_accuracies": pooled_accuracies(entry),
        "protocol": protocol,
        "baselines": [
            {"label": other["label"], **other["summary"], "paired": paired(entry, other)}
            for other in report["initializations"]
            if other is not entry
        ],
    }


def paired(entry: InitializationResult, other: InitializationResult) -> dict[str, dict[str, float]]:
    """``entry`` minus ``other`` task by task, per metric (:func:`copre_hub.fl.metrics.paired_difference`)."""
    from copre_hub.fl.metrics import METRICS, paired_difference

    return {m: paired_difference([t[m] for t in entry["tasks"]], [t[m] for t in other["tasks"]]) for m in METRICS}


def merge_into_checkpoint(folder: str | Path, result: dict[str, Any]) -> Path:
    """Add ``result`` (see :func:`card_eval_result`) to a local checkpoint's ``copre_hub.eval_results`` and card.

    A previous result with the same dataset and protocol is replaced; others are kept. Only ``config.json`` and
    ``README.md`` are rewritten (:func:`copre_hub.hub.checkpoint.update_metadata`); the weights are not touched.

    Raises:
        ConfigError: ``folder`` is a Hugging Face cache snapshot (copy it to a folder of your own first).
        CheckpointError, IntegrityError: the folder is not a sound checkpoint.
    """
    from copre_hub.hub.checkpoint import WEIGHTS_NAME, update_metadata, verify_checkpoint

    folder = Path(folder)
    if (folder / WEIGHTS_NAME).is_symlink():
        raise ConfigError(
            f"{folder} is a Hub cache snapshot; copy it first (cp -rL {folder} my-checkpoint) and merge into the copy."
        )
    config = verify_checkpoint(folder)
    previous = CheckpointMeta.from_config(config).eval_results
    kept = [r for r in previous if (r.get("dataset"), r.get("protocol")) != (result["dataset"], result["protocol"])]
    return update_metadata(folder, {**block_of(config), "eval_results": [*kept, result]})


def _colours(count: int) -> list[str]:
    palette = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974"]
    return [palette[i % len(palette)] for i in range(count)]
