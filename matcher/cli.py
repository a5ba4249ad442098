"""The one CLI, ``matcher``. Each command is a thin wrapper over an importable function.

This is the wiring on top (``matcher/``, the only package that imports all four). Each command group lives in
its own module here and adds its commands through a ``register(subparsers)`` function, imported plainly below:
a renamed module is an ``ImportError`` at once, never a command that silently vanishes. Those modules import
nothing heavy at import time (torch is imported inside the handlers), so ``matcher --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from engine.errors import CONFIG_ERROR_EXIT, ConfigError, MatcherError
from engine.redaction import redact
from engine.settings import Settings, load_settings
from matcher import evaluation_commands, ingest_commands, store_commands, train_commands
from matcher.service import commands as serve_commands

log = logging.getLogger(__name__)

# Command groups in the order their commands appear in ``matcher --help``.
COMMAND_GROUPS = (store_commands, ingest_commands, train_commands, evaluation_commands, serve_commands)

Handler = Callable[[argparse.Namespace, Settings], int]


def build_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the global flags that were given.

    Raises ``ConfigError`` naming each bad ``MATCHER_*`` variable.
    """
    settings = load_settings()
    update: dict[str, Any] = {}
    if getattr(args, "store", None):
        update["store_path"] = Path(args.store)
    if getattr(args, "backend", None):
        update["store_backend"] = args.backend
    if getattr(args, "no_progress", False):
        update["progress"] = False
    return settings.model_copy(update=update) if update else settings


DESCRIPTION = (
    "Reciprocal photo-based match recommendations: ingest photos, train the encoder, recommend, evaluate, "
    "serve. Global options (--store, --backend, --no-progress, -v) may come before or after the command."
)


def _add_global_flags(parser: argparse._ActionsContainer, *, on_command: bool = False) -> None:
    """The global flags. On a command's parser they default to ``SUPPRESS``: a flag not given after the
    command leaves the value given before it (or the default) untouched."""
    kw: dict[str, Any] = {"default": argparse.SUPPRESS} if on_command else {}
    parser.add_argument("--store", metavar="PATH", help="folder of the embedded store (MATCHER_STORE_PATH)", **kw)
    parser.add_argument(
        "--backend",
        choices=["auto", "edge", "local", "server"],
        help="store backend (MATCHER_STORE_BACKEND)",
        **kw,
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars", **kw)
    parser.add_argument(
        "-v", "--verbose", action="count", help="more logging (-vv for debug)", **(kw or {"default": 0})
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="matcher", description=DESCRIPTION)
    _add_global_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in COMMAND_GROUPS:
        group.register(sub)
    for command_parser in sub.choices.values():
        group_flags = command_parser.add_argument_group("global options (also accepted before the command)")
        _add_global_flags(group_flags, on_command=True)
    return parser


def configure_logging(verbose: int) -> None:
    """Our log lines on stderr, at WARNING (``-v`` INFO, ``-vv`` DEBUG), each record printed once.

    huggingface_hub puts a handler of its own on its logger when it is imported; a record that also reached
    ours printed every retry warning twice, so its records stay with its handler.
    """
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("huggingface_hub").propagate = False


def _redacting_excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    # A bug's traceback may quote a URL or a header: scrubbed like every log record (engine/redaction.py).
    sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))


def main(argv: Sequence[str] | None = None) -> int:
    sys.excepthook = _redacting_excepthook
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        settings = build_settings(args)
        handler: Handler = args.func
        return handler(args, settings)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"matcher {args.command}: configuration error: {line}", file=sys.stderr)
        return CONFIG_ERROR_EXIT
    except MatcherError as exc:
        print(f"matcher {args.command}: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"matcher {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
