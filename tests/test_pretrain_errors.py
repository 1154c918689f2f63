"""Bad input to `copre-hub pretrain`: one line on stderr naming the problem and the fix, exit 2, nothing trained."""

from __future__ import annotations

from pathlib import Path

import pytest

from copre_hub.cli import main

SMOKE = Path(__file__).resolve().parents[1] / "training" / "recipes" / "smoke.toml"

CASES = {
    "unknown dataset": (["--dataset", "nosuch"], "unknown dataset 'nosuch'"),
    "unknown column": (["--set", "data.label_column=nope"], "no column 'nope'"),
    "classes that do not exist": (["--set", "data.pretrain_classes=[0, 1, 250]"], "classes [250] do not exist"),
    "more participants than clients": (["--clients", "5", "--participants", "8"], "participants=8 exceeds the 5"),
    "gamma outside [0, 1]": (["--gamma", "1.5"], "gamma must be in [0, 1]"),
    "too few samples for support/query": (["--set", "method.query_fraction=0.0001"], "too small for a"),
    "unknown method": (["--method", "fedsomething"], "unknown method 'fedsomething'"),
    "unknown recipe key": (["--set", "method.gama=0.5"], "has no setting ['gama']"),
    "unknown architecture": (["--arch", "resnet_nope"], "unknown timm architecture"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_before_training(case: str, data_dir, tmp_path, capsys) -> None:
    args, message = CASES[case]
    out = tmp_path / "run"
    assert main(["pretrain", str(SMOKE), "-o", str(out), "-q", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("copre-hub: error: ")
    assert message in err
    assert not out.exists()  # no folder is left behind by a run that never started


def test_unwritable_output_folder(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    assert main(["pretrain", str(SMOKE), "-o", str(blocker / "run"), "-q"]) == 2
    assert "choose a writable --output" in capsys.readouterr().err
    assert blocker.read_text() == "keep me"


def test_resume_folder_from_another_recipe(data_dir, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    fast = ["--rounds", "1", "--participants", "2", "--set", "method.local_epochs=1"]
    assert main(["pretrain", str(SMOKE), "-o", str(out), "-q", *fast]) == 0
    before = (out / "state.safetensors").read_bytes()
    assert main(["pretrain", str(SMOKE), "-o", str(out), "-q", "--resume", *fast, "--gamma", "0.1"]) == 2
    assert "made by a different recipe (method.gamma: saved 0.75, given 0.1)" in capsys.readouterr().err
    assert main(["pretrain", str(SMOKE), "-o", str(out), "-q", *fast]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert (out / "state.safetensors").read_bytes() == before


def test_missing_recipe_file(tmp_path, capsys) -> None:
    assert main(["pretrain", str(tmp_path / "nope.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
