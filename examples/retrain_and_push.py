"""Pre-train an initialization from a recipe, evaluate it against random weights, and push it with its results.

    export HF_ENDPOINT=http://127.0.0.1:8080 HF_TOKEN=...   # a `copre-hub serve` endpoint, or leave unset for the Hub
    python examples/retrain_and_push.py training/recipes/smoke.toml my-org/my-init --data-dir ../shared/data

The same as ``copre-hub pretrain``, ``copre-hub evaluate --merge`` and ``copre-hub push`` in a row, from Python:

1. :func:`copre_hub.fl.pretrain.pretrain` runs the recipe into ``<output>/<recipe name>/`` (its ``checkpoint/`` is
   the initialization; ``--set section.key=value`` overrides any recipe key, as on the command line);
2. :func:`copre_hub.fl.evaluate.evaluate` runs downstream FedAvg tasks from it and from random weights, on
   identical tasks, and writes ``results.json`` and the per-client accuracy plot to ``<output>/evaluation/``;
3. the results go into the checkpoint's ``config.json`` and model card (``model-index``);
4. :func:`copre_hub.push` publishes the folder to ``$HF_ENDPOINT`` (token ``$HF_TOKEN``) as one commit.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import copre_hub
from copre_hub.fl.evaluate import evaluate
from copre_hub.fl.pretrain import pretrain
from copre_hub.fl.recipe import load_recipe
from copre_hub.fl.report import card_eval_result, format_table, merge_into_checkpoint, write_report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", type=Path, help="recipe TOML file (see training/recipes/)")
    parser.add_argument("repo_id", help="where to push: org/name")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data-dir", help="folder of local dataset copies (default: $COPRE_HUB_DATA)")
    parser.add_argument("-o", "--output", type=Path, default=Path("runs"), help="folder for the run and evaluation")
    parser.add_argument("--tasks", type=int, default=3, help="downstream tasks (the paper: 10)")
    parser.add_argument("--rounds", type=int, default=10, help="downstream FedAvg rounds (the paper: 50)")
    parser.add_argument("--tag", help="tag to put on the pushed commit, e.g. v1")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> str:
    """Pre-train, evaluate, record, push; returns the pushed commit."""
    args = parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)

    checkpoint = pretrain(recipe, args.output / recipe.name, data_dir=args.data_dir, progress=not args.quiet)
    report = evaluate(
        [str(checkpoint), "random"],
        {"tasks": args.tasks, "rounds": args.rounds},
        labels=[recipe.name, "random"],
        data_dir=args.data_dir,
        progress=not args.quiet,
    )
    results, plot = write_report(report, args.output / "evaluation")
    print(format_table(report), f"\nresults: {results}\nplot: {plot}")

    merge_into_checkpoint(checkpoint, card_eval_result(report, recipe.name))
    commit = copre_hub.push(checkpoint, args.repo_id, tag=args.tag)
    print(f"pushed {args.repo_id} ({commit.oid[:12]}): {commit.commit_url}")
    return commit.oid


if __name__ == "__main__":
    main()
