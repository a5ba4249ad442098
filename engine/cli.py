"""The one CLI, ``matcher``. Each command is a thin wrapper over an importable function.

Commands are registered by a ``register(subparsers)`` function in each package's ``cli`` module. Those modules
import nothing heavy at import time (torch is imported inside the handlers), so ``matcher --help`` is fast
and ``engine`` stays importable without torch: the CLI is the one edge allowed to reach the other packages,
by name, at run time.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.errors import MatcherError
from engine.settings import Settings

log = logging.getLogger(__name__)

# Packages whose ``cli`` module contributes commands; a missing one (a slim install) is skipped.
COMMAND_MODULES = ("engine.commands", "ingestion.cli", "training.cli", "evaluation.cli", "matcher.service.commands")

Handler = Callable[[argparse.Namespace, Settings], int]


def build_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the global flags that were given."""
    settings = Settings()
    update: dict[str, Any] = {}
    if getattr(args, "store", None):
        update["store_path"] = Path(args.store)
    if getattr(args, "backend", None):
        update["store_backend"] = args.backend
    if getattr(args, "no_progress", False):
        update["progress"] = False
    return settings.model_copy(update=update) if update else settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="matcher", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--store", metavar="PATH", help="folder of the embedded store (MATCHER_STORE_PATH)")
    parser.add_argument(
        "--backend", choices=["auto", "edge", "local", "server"], help="store backend (MATCHER_STORE_BACKEND)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # pragma: no cover - a partial install
            log.debug("commands of %s unavailable: %s", name, exc)
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = build_settings(args)
        handler: Handler = args.func
        return handler(args, settings)
    except MatcherError as exc:
        print(f"matcher {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"matcher {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
