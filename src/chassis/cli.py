"""The ``chassis`` command.

::

    chassis run TARGET [--host HOST] [--port PORT]
    chassis --version

``TARGET`` names a :class:`~chassis.Service` (or a function returning one) as
``package.module:attribute`` or ``path/to/file.py:attribute``. ``python -m chassis``
is the same command.

Exit codes: 0 after a clean drain; 2 for a usage error, a target that cannot be
loaded, or invalid configuration (one message on stderr, no traceback); 1 when the
service fails while running.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ._version import __version__
from .exceptions import ConfigError
from .service import Service

__all__ = ["TargetError", "load_target", "main"]


class TargetError(Exception):
    """``TARGET`` could not be loaded as a service."""


def _import_file(path: Path) -> object:
    if not path.is_file():
        raise TargetError(f"no such file: {path}")
    module_name = f"_chassis_target_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    # Let the target import its sibling modules.
    sys.path.insert(0, str(path.parent.resolve()))
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def load_target(target: str) -> Service:
    """Resolve ``module:attr`` or ``file.py:attr`` to a :class:`Service`."""
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise TargetError(
            f"invalid target {target!r}: expected 'package.module:attribute' "
            "or 'path/to/file.py:attribute'"
        )
    try:
        if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
            module = _import_file(Path(module_part))
        else:
            sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_part)
    except ModuleNotFoundError as exc:
        raise TargetError(f"cannot import {module_part!r}: {exc}") from exc
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetError(f"{module_part!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Service) and callable(obj):
        obj = obj()
    if not isinstance(obj, Service):
        raise TargetError(f"{target!r} is {type(obj).__name__}, not a chassis Service")
    return obj


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chassis", description="The aiochassis command line.")
    parser.add_argument("--version", action="version", version=f"aiochassis {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run a service until SIGTERM/SIGINT, then drain it")
    run.add_argument("target", metavar="TARGET", help="module:attribute or file.py:attribute")
    run.add_argument("--host", help="interface to bind (default: CHASSIS_HTTP__HOST)")
    run.add_argument("--port", type=int, help="TCP port (default: CHASSIS_HTTP__PORT)")
    return parser


def _fail(message: str) -> int:
    print(f"chassis: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``chassis`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command != "run":
        parser.print_help(sys.stderr)
        return 2
    if args.port is not None and not 0 <= args.port <= 65535:
        return _fail(f"--port must be between 0 and 65535, got {args.port}")
    try:
        service = load_target(args.target)
        service.settings  # noqa: B018 - read now so bad config fails before anything starts
    except ConfigError as exc:
        return _fail(str(exc))
    except TargetError as exc:
        return _fail(str(exc))
    try:
        service.run(host=args.host, port=args.port)
    except ConfigError as exc:
        return _fail(str(exc))
    except OSError as exc:
        logging.getLogger("chassis.service").critical("cannot serve: %s", exc)
        logging.shutdown()
        return 1
    except Exception:
        logging.getLogger("chassis.service").critical("service failed", exc_info=True)
        logging.shutdown()
        return 1
    logging.shutdown()
    return 0
