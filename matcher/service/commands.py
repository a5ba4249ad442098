"""``matcher serve``: the HTTP service over the configured store (needs the ``serve`` extra)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse has no public type for it
    """Add ``matcher serve`` to the ``matcher`` parser."""
    p = sub.add_parser(
        "serve",
        help="the HTTP service and the match-review page (needs the 'serve' extra)",
        description="Serve recommendations, photo thumbnails and embeddings over HTTP (OpenAPI docs at /docs, "
        "the review page at /review). Settings from MATCHER_* (MATCHER_SERVE__API_KEY: an optional key "
        "clients send as X-API-Key).",
    )
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1, MATCHER_SERVE__HOST)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000, MATCHER_SERVE__PORT)")
    p.add_argument(
        "--photos",
        metavar="DIR",
        default=None,
        help="folder the photos were ingested from (MATCHER_SERVE__PHOTOS_ROOT)",
    )
    p.add_argument(
        "--compare-store",
        metavar="PATH",
        default=None,
        help="a second embedded store of the same photos made with another encoder (e.g. the untrained one), "
        "shown beside the main store on the review page (MATCHER_SERVE__COMPARE_STORE_PATH)",
    )
    p.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        import uvicorn

        from matcher.service.app import create_app
    except ModuleNotFoundError as exc:
        print(
            f"matcher serve: error: {exc.name} is not installed; "
            "install the extra: pip install 'profile-matcher[serve]'",
            file=sys.stderr,
        )
        return 2
    update: dict[str, object] = {}
    if args.host is not None:
        update["host"] = args.host
    if args.port is not None:
        update["port"] = args.port
    if args.photos is not None:
        update["photos_root"] = Path(args.photos)
    if args.compare_store is not None:
        update["compare_store_path"] = Path(args.compare_store)
    serve = settings.serve.model_copy(update=update)
    settings = settings.model_copy(update={"serve": serve})
    # Before uvicorn starts: a missing store is one clear line, not a start-up traceback.
    from engine.store import check_store_exists
    from matcher.service.app import compare_settings

    if settings.resolved_backend != "server":
        check_store_exists(settings)
    compare = compare_settings(settings)
    if compare is not None:
        check_store_exists(compare)
    print(f"matcher serve: http://{serve.host}:{serve.port}/review  (API docs: /docs)", file=sys.stderr)
    uvicorn.run(create_app(settings), host=serve.host, port=serve.port, log_level="info")
    return 0
