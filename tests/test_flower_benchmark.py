"""benchmarks/coprefl_flower.py runs end to end at a tiny size: both runtimes, one table, one JSON record."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr.simulation", reason="needs flwr: pip install 'copre-hub[flower]'")
pytest.importorskip("ray", reason="Flower's simulation runtime needs ray: pip install 'flwr[simulation]'")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_coprefl_under_flower_and_in_the_engine_is_timed_and_agrees(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    benchmark = importlib.import_module("coprefl_flower")
    args = ["--clients", "3", "--participants", "2", "--rounds", "1", "--client-size", "10", "--local-steps", "2"]
    benchmark.main([*args, "--threads", "1", "--out-dir", str(tmp_path)])
    record = json.loads((tmp_path / "coprefl_flower.json").read_text())
    assert record["max_weight_difference"] < 1e-5 and record["targets"][0]["pass"]
    assert record["flower"]["version"] and record["ratio_rounds_seconds"]["median"] > 0
    assert "| flower / engine |" in capsys.readouterr().out
    sys.modules.pop("coprefl_flower", None)
