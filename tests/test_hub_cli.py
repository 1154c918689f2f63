"""The hub verbs of the `copre-hub` command: help, the push/pull/list/info round trip, one-line errors, and the real
`copre-hub serve` process on an ephemeral port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from copre_hub.cli import main

HUB_VERBS = ["push", "pull", "list", "info", "serve"]


@pytest.mark.parametrize("verb", HUB_VERBS)
def test_every_hub_verb_has_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([verb, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: copre-hub {verb}")


def test_push_pull_list_info_round_trip(
    hub_server: str, tiny_checkpoint, unpublished_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, folder = tiny_checkpoint
    assert main(["push", str(folder), "org/cli-model", "--tag", "v1", "-m", "first upload"]) == 0
    commit = capsys.readouterr().out.split()[1].rstrip(":")
    assert main(["pull", "org/cli-model@v1"]) == 0
    assert Path(capsys.readouterr().out.strip()).name == commit
    assert main(["list", "--remote", "--author", "org"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["ID", "CACHED", "ENDPOINT", "WEIGHTS", "DESCRIPTION"]
    assert any(line.startswith("org/cli-model ") and " yes " in line and " cache,endpoint " in line for line in table)
    untrained = next(line for line in table if line.startswith(f"copre-hub/{unpublished_id} "))
    assert untrained.split()[1:4] == ["-", "no", "-"]
    assert untrained.endswith("(not trained yet: no card in model_cards/)")
    assert any(line.startswith("WEIGHTS: where a copy of the weights is") for line in table)
    assert main(["info", "org/cli-model", "--json"]) == 0
    details = json.loads(capsys.readouterr().out)
    assert details["commit"] == commit and details["config"]["architecture"] == "test_resnet"
    assert main(["info", "org/cli-model"]) == 0
    assert f"sha256        {details['sha256']}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pull", "org/never-pushed"], "no repository org/never-pushed"),
        (["pull", "org/x@a@b"], "at most one '@revision'"),
        (["info", "local-dir:/no/such/folder"], "no checkpoint folder at /no/such/folder"),
        (["push", "/no/such/folder", "org/x"], "is not a checkpoint folder"),
        (["serve", "--storage", "unused", "--gated-reads"], "--gated-reads needs --token-file or --token"),
        (["serve", "--storage", "unused", "--token-file", "/no/such/tokens"], "cannot read --token-file"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(hub_server, argv, message, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("copre-hub: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_serve_command_runs_a_hub_endpoint(tmp_path: Path, hub_env: Path, hub_token: str) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# tokens accepted for writes\n{hub_token}\n")
    command = [
        sys.executable,
        "-m",
        "copre_hub.cli",
        "serve",
        "--storage",
        str(tmp_path / "store"),
        "--port",
        "0",
        "--token-file",
        str(tokens),
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
    try:
        banner = server.stdout.readline()
        assert banner.startswith("copre-hub serve: http://127.0.0.1:"), banner + server.stderr.read()
        url = banner.split()[2]
        api = HfApi(endpoint=url, token=hub_token)
        api.create_repo("org/served")
        api.upload_file(path_or_fileobj=b"hello", path_in_repo="hello.txt", repo_id="org/served")
        assert api.list_repo_files("org/served") == ["hello.txt"]
        assert [model.id for model in HfApi(endpoint=url, token=False).list_models()] == ["org/served"]
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=10) == 0
    assert banner.rstrip().endswith("writes need a token; public reads)")


def test_serve_refuses_an_address_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from copre_hub.hub.serve.server import bind

    busy = bind("127.0.0.1", 0)
    try:
        port = busy.getsockname()[1]
        assert main(["serve", "--storage", str(tmp_path / "s"), "--port", str(port), "--token", "t"]) == 2
    finally:
        busy.close()
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
