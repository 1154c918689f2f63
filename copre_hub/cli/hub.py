"""Hub verbs of the ``copre-hub`` command (push, pull, list, info, serve, publish).

Registering them imports nothing heavy: each handler imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from copre_hub.errors import ConfigError, OutputError

if TYPE_CHECKING:
    from copre_hub.hub.api import ModelListing

_MIB = 1 << 20


def register(verbs: argparse._SubParsersAction) -> None:
    """Add the hub verbs to the top-level parser."""
    push = verbs.add_parser(
        "push",
        help="publish a checkpoint folder to the Hub endpoint",
        description="Verify a checkpoint folder and publish it as one commit (repository and branch created if "
        "missing). The endpoint is HF_ENDPOINT; the token is HF_TOKEN.",
    )
    push.add_argument("folder", type=Path, help="checkpoint folder (config.json, model.safetensors, README.md)")
    push.add_argument("repo_id", help="org/name, or a short id under the default organisation")
    push.add_argument("--revision", help="branch to commit to (default: main)")
    push.add_argument("--tag", help="tag to put on the new commit")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("-m", "--message", dest="commit_message", help="commit message")
    push.set_defaults(handler=_push)

    pull = verbs.add_parser(
        "pull",
        help="download a checkpoint into the local cache and print its folder",
        description="Download a checkpoint into the Hugging Face cache (HF_HOME) so it loads offline later; prints "
        "the folder.",
    )
    pull.add_argument("model_id", help="short id, org/name[@rev], hf-hub:..., local-dir:... or a path")
    pull.add_argument("--revision", help="branch, tag or commit (default: main)")
    pull.set_defaults(handler=_pull)

    listing = verbs.add_parser(
        "list",
        help="list published, cached and (with --remote) endpoint models",
        description="List the published initializations, what the local cache holds and, with --remote, what the "
        "endpoint lists.",
    )
    listing.add_argument("--remote", action="store_true", help="also ask the endpoint (HF_ENDPOINT)")
    listing.add_argument("--author", help="organisation to list on the endpoint (default: COPRE_HUB_ORG)")
    listing.set_defaults(handler=_list)

    info = verbs.add_parser(
        "info",
        help="show a checkpoint's config, card metadata, results and weights hash",
        description="Pull a checkpoint if needed, verify it, and show its config, card metadata, evaluation "
        "results and the sha256 of its weights.",
    )
    info.add_argument("model_id", help="short id, org/name[@rev], hf-hub:..., local-dir:... or a path")
    info.add_argument("--revision", help="branch, tag or commit (default: main)")
    info.add_argument("--json", action="store_true", help="print everything as JSON")
    info.set_defaults(handler=_info)

    serve = verbs.add_parser(
        "serve",
        help="run a Hub-compatible endpoint storing repositories on disk",
        description="Run a Hugging Face Hub-compatible endpoint: point HF_ENDPOINT at the printed URL and the "
        "unmodified huggingface_hub client and timm push to and pull from it. Writes need a token.",
    )
    serve.add_argument("--storage", type=Path, required=True, help="folder holding the repositories")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, loopback only; put TLS in front of any other: tokens travel in the "
        "clear over HTTP)",
    )
    serve.add_argument("--port", type=_port, default=8080, help="port (default: 8080; 0 picks a free one)")
    tokens = serve.add_mutually_exclusive_group()
    tokens.add_argument("--token-file", type=Path, help="file with the accepted tokens, one per line")
    tokens.add_argument("--token", help="accepted token (visible to other local users; prefer --token-file)")
    serve.add_argument("--gated-reads", action="store_true", help="require a token for reads too")
    serve.add_argument("--max-body-mb", type=int, default=1024, help="largest commit body in MiB (default: 1024)")
    serve.add_argument("--max-uploads", type=int, default=4, help="commits received at once; more get 503 (default: 4)")
    serve.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--with-published",
        action="store_true",
        help="first stock the storage with the published repositories that have weights (from model_cards/)",
    )
    serve.set_defaults(handler=_serve)
    _register_publish(verbs)


def _register_publish(verbs: argparse._SubParsersAction) -> None:
    publish = verbs.add_parser(
        "publish",
        help="push the published snapshots (model_cards/<id>/) to the Hub endpoint",
        description="Push each published id's snapshot, checked against its pinned sha256, to HF_ENDPOINT (token: "
        "HF_TOKEN) as one commit tagged v1. Does nothing for an id the endpoint already holds; skips ids without "
        "published weights.",
    )
    publish.add_argument("model_ids", nargs="*", metavar="ID", help="published ids (default: all of them)")
    publish.set_defaults(handler=_publish)


def _push(args: argparse.Namespace) -> int:
    from copre_hub.hub.api import push

    commit = push(
        args.folder,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        tag=args.tag,
        commit_message=args.commit_message,
    )
    print(f"pushed {commit.oid}: {commit.commit_url}" + (f" (tag {args.tag})" if args.tag else ""))
    return 0


def _pull(args: argparse.Namespace) -> int:
    from copre_hub.hub.api import pull

    print(pull(args.model_id, revision=args.revision))
    return 0


def _list(args: argparse.Namespace) -> int:
    from copre_hub.hub.api import list_models

    cards = _published_cards_dir()
    rows = [("ID", "CACHED", *(("ENDPOINT",) if args.remote else ()), "WEIGHTS", "DESCRIPTION")]
    for listing in list_models(remote=args.remote, author=args.author):
        cached = ",".join(rev[:12] for rev in listing.cached_revisions) or "-"
        endpoint = ("yes" if listing.on_endpoint else "no",) if args.remote else ()
        rows.append((listing.repo_id, cached, *endpoint, _weights(listing, cards), _description(listing, cards)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    print(
        "\nWEIGHTS: where a copy of the weights is (cache: the local Hugging Face cache; endpoint: HF_ENDPOINT"
        + ("" if args.remote else ", asked only with --remote")
        + "; model_cards/<id>/: the snapshot in the source tree); '-': none found."
    )
    if cards is not None:
        print(f"Cards and measured results of the published ids: {cards}/<id>/README.md")
    return 0


def _published_cards_dir() -> Path | None:
    """The source tree's ``model_cards/`` folder (present in a clone, absent from an installed wheel)."""
    import copre_hub

    folder = Path(copre_hub.__file__).resolve().parents[1] / "model_cards"
    return folder if folder.is_dir() else None


def _weights(listing: ModelListing, cards: Path | None) -> str:
    """Where the weights of ``listing`` are: ``cache``, ``endpoint``, ``model_cards/<id>/``, or ``-``."""
    places = []
    if listing.cached_revisions:
        places.append("cache")
    if listing.on_endpoint:
        places.append("endpoint")
    if listing.published and cards is not None and (cards / listing.published.name / "model.safetensors").is_file():
        places.append(f"model_cards/{listing.published.name}/")
    return ",".join(places) or "-"


def _description(listing: ModelListing, cards: Path | None) -> str:
    """A published id's summary and its pinned weights (or that it has none yet); an id without a card in the
    source tree is marked as not trained yet. Empty for other repositories."""
    published = listing.published
    if published is None:
        return ""
    if cards is not None and not (cards / published.name / "README.md").is_file():
        return f"{published.summary} (not trained yet: no card in model_cards/)"
    pin = f"weights sha256 {published.sha256[:12]}..." if published.sha256 else "no published weights yet"
    return f"{published.summary} ({pin})"


def _info(args: argparse.Namespace) -> int:
    from copre_hub.hub.api import info

    details = info(args.model_id, revision=args.revision)
    if args.json:
        print(json.dumps(details.to_dict(), indent=2, default=str))
        return 0
    config = details.config
    print(f"id            {details.model_id}")
    print(f"folder        {details.path}")
    print(f"source        {_source(details.source)}")
    if details.commit:
        print(f"commit        {details.commit}")
    print(f"architecture  {config['architecture']} ({config.get('num_classes')} classes)")
    print(f"sha256        {details.sha256 or '(not recorded: not a copre-hub checkpoint)'}")
    print(f"tags          {', '.join(details.card.get('tags') or []) or '-'}")
    for result in details.eval_results:
        print(f"result        {result['name'] or result['metric']}: {result['value']}")
    return 0


def _source(source: str) -> str:
    from copre_hub import _env

    return {
        "folder": "the folder given",
        "cache": "the Hugging Face cache",
        "endpoint": f"the endpoint {_env.endpoint()}",
        "snapshot": "the published snapshot in the source tree (no cache or endpoint had it)",
    }[source]


def _serve(args: argparse.Namespace) -> int:
    from copre_hub.hub.serve.server import bind, build_server, exposure_warnings, url_of

    tokens = _tokens(args)
    if args.gated_reads and not tokens:
        raise ConfigError("--gated-reads needs --token-file or --token: no reader could ever authenticate.")
    for flag, value in (("--max-body-mb", args.max_body_mb), ("--max-uploads", args.max_uploads)):
        if value <= 0:
            raise ConfigError(f"{flag} must be positive, got {value}.")
    sock = bind(args.host, args.port)  # before the storage folder exists, so a busy port leaves nothing behind
    try:
        server = build_server(
            args.storage,
            tokens=tokens,
            gated_reads=args.gated_reads,
            max_body_bytes=args.max_body_mb * _MIB,
            max_concurrent_uploads=args.max_uploads,
            log_level=args.log_level,
        )
        stocked = _stock_published(args.storage) if args.with_published else []
    except OSError as error:
        sock.close()
        raise OutputError(f"cannot use {args.storage} as storage ({error.strerror}).") from error
    writes = "writes need a token" if tokens else "read-only (no token given)"
    reads = "reads need a token" if args.gated_reads else "public reads"
    print(f"copre-hub serve: {url_of(sock)} (storage {args.storage}; {writes}; {reads})", flush=True)
    for line in stocked:
        print(f"copre-hub serve: {line}", flush=True)
    for warning in exposure_warnings(args.host, args.gated_reads):
        print(f"copre-hub serve: warning: {warning}", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a server stops: uvicorn re-raises it once shut down
        server.run(sockets=[sock])
    return 0


def _port(text: str) -> int:
    """An argparse type: a TCP port number, 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number from 0 to 65535, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be from 0 to 65535 (0: any free port), got {port}")
    return port


def _stock_published(storage: Path) -> list[str]:
    from copre_hub.hub.serve.stock import stock_published
    from copre_hub.hub.serve.storage import RepoStore

    return stock_published(RepoStore(storage))


def _publish(args: argparse.Namespace) -> int:
    from copre_hub.hub.publish import publish_model, select

    for model in select(args.model_ids):
        print(publish_model(model).message, flush=True)
    return 0


def _tokens(args: argparse.Namespace) -> list[str]:
    if args.token is not None:
        return [args.token] if args.token.strip() else []
    if args.token_file is None:
        return []
    try:
        lines = args.token_file.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ConfigError(f"cannot read --token-file {args.token_file} ({error.strerror}).") from error
    tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise ConfigError(f"--token-file {args.token_file} holds no token (one per line).")
    return tokens
