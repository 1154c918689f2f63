"""Finished downstream tasks kept between comparisons: the ``cache/`` folder of ``copre-hub evaluate`` and the
reports of earlier comparisons (``--reuse``), so that no task is run twice for the same weights.

A task result stands for a pair (setting, weights). The setting is the protocol (apart from the number of tasks),
the data and the drawn task (index, classes, client sizes); task ``i`` is drawn from ``(seed, i)`` alone, so the
first tasks of a longer comparison are those of a shorter one. The weights are a checkpoint's recorded sha256, or
for ``"random"`` its architecture and constructor arguments (its weights are drawn from the protocol's seed). A
checkpoint without a recorded sha256 (a plain timm export) has no identity, so nothing is kept or reused for it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from copre_hub import _io
from copre_hub.fl.report_format import RANDOM, DataRecord, InitializationResult, Report, TaskDraw, TaskResult

if TYPE_CHECKING:
    from copre_hub.fl.evaluate import Initialization


class TaskCache:
    """The finished tasks of each initialization under one setting: saved ones, then those of reused reports.

    ``folder`` holds one JSON file per initialization, rewritten (atomically) after each task; None keeps nothing.
    ``reuse`` are earlier reports (a ``results.json``, or a card's ``evaluation.json``); their tasks count as
    finished for the initializations with the same weights, where their protocol, data and task draws are this
    setting's. A report names random weights by architecture only, so its random entry stands for that
    architecture with default constructor arguments.
    """

    def __init__(
        self,
        folder: Path | None,
        protocol: dict[str, Any],
        data: DataRecord,
        tasks: Sequence[TaskDraw],
        reuse: Sequence[Report] = (),
    ) -> None:
        self.folder = folder
        self.setting = setting_digest(protocol, data)
        self.specs = {spec["index"]: spec for spec in tasks}
        self.reused = [report for report in reuse if setting_digest(report["protocol"], report["data"]) == self.setting]

    def finished(self, init: Initialization) -> list[TaskResult]:
        """The results of ``init`` for tasks of this setting, in task order (empty when none)."""
        identity = weights_identity(init)
        if identity is None:
            return []
        found: dict[int, TaskResult] = {}
        for report in self.reused:
            specs = {spec["index"]: spec for spec in report["tasks"]}
            for entry in report["initializations"]:
                if _entry_identity(entry) == identity:
                    found.update({r["index"]: r for r in self._same_tasks(entry["tasks"], specs)})
        found.update({r["index"]: r for r in self._saved(identity)})
        return [found[index] for index in sorted(found)]

    def save(self, init: Initialization, tasks: list[TaskResult]) -> None:
        """Save the task results of ``init`` with those of other tasks saved before (when it has an identity)."""
        identity = weights_identity(init)
        if identity is None or self.folder is None:
            return
        path = self._path(identity)
        try:
            saved = json.loads(path.read_text()) if path.is_file() else {"tasks": [], "task_specs": []}
            kept = {r["index"]: (r, s) for r, s in zip(saved["tasks"], saved["task_specs"], strict=True)}
        except (OSError, ValueError, KeyError, TypeError):
            kept = {}
        kept.update({r["index"]: (r, self.specs[r["index"]]) for r in tasks})
        ordered = [kept[index] for index in sorted(kept)]
        results, specs = [r for r, _ in ordered], [spec for _, spec in ordered]
        _io.atomic_write_json(path, {"source": init.source, "tasks": results, "task_specs": specs})

    def _saved(self, identity: dict[str, Any]) -> list[TaskResult]:
        path = self._path(identity) if self.folder is not None else None
        if path is None or not path.is_file():
            return []
        try:
            saved = json.loads(path.read_text())
            return self._same_tasks(saved["tasks"], {spec["index"]: spec for spec in saved["task_specs"]})
        except (OSError, ValueError, KeyError, TypeError):
            return []  # unreadable: run the tasks again and overwrite it

    def _same_tasks(self, results: list[TaskResult], specs: dict[int, TaskDraw]) -> list[TaskResult]:
        return [r for r in results if r["index"] in self.specs and self.specs[r["index"]] == specs.get(r["index"])]

    def _path(self, identity: dict[str, Any]) -> Path:
        assert self.folder is not None
        return self.folder / f"{_digest({'setting': self.setting, 'weights': identity})[:24]}.json"


def setting_digest(protocol: dict[str, Any], data: DataRecord) -> str:
    """What a task result depends on besides the task and the weights: the protocol but its task count, the data."""
    protocol = {key: value for key, value in protocol.items() if key != "tasks"}
    return _digest({"protocol": protocol, "data": data})


def weights_identity(init: Initialization) -> dict[str, Any] | None:
    """What names ``init``'s weights: its sha256, or for random weights the architecture and its arguments."""
    if init.is_random:
        return {"random": list(init.random_arch or ())}
    return {"sha256": init.meta.sha256} if init.meta.sha256 else None


def _entry_identity(entry: InitializationResult) -> dict[str, Any] | None:
    if entry["source"] == RANDOM:
        return {"random": [entry["architecture"], {}]}
    return {"sha256": entry["sha256"]} if entry["sha256"] else None


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
