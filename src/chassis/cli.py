"""The ``chassis`` command.

::

    chassis run TARGET [--host HOST] [--port PORT]
    chassis new NAME [--output-dir DIR] [--no-input] [--option KEY=VALUE ...] [--force]
    chassis status URL [--token TOKEN] [--watch [--interval S] [--count N]] [--json] [--settings]
    chassis --version

``TARGET`` names a :class:`~chassis.Service` (or a function returning one) as
``package.module:attribute`` or ``path/to/file.py:attribute``. ``python -m chassis``
is the same command.

``chassis new`` generates a service project from the cookiecutter template shipped
in the package (:data:`TEMPLATE_DIR`); it needs the ``template`` extra.

Exit codes: 0 after a clean drain (or a generated project); 2 for a usage error, a
target that cannot be loaded, invalid configuration, or a project that ``chassis new``
refuses to generate (one message on stderr, no traceback); 1 when the service fails
while running, or the generation fails.

``chassis status`` prints a running service's live state (its ``/_chassis``
endpoint, see :mod:`chassis.introspection`) as tables; the token comes from
``--token`` or ``CHASSIS_STATUS_TOKEN``. Its exit codes: 0 shown, 1 unreachable (or
not a chassis service), 2 usage error, 3 unauthorized.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import keyword
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._version import __version__
from .exceptions import ConfigError
from .service import _NAME_OK, Service

__all__ = ["TEMPLATE_DIR", "TargetError", "TemplateError", "load_target", "main", "new_service"]

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates" / "service"
"""The service template of ``chassis new``; the ``cookiecutter`` command takes it too."""

# Packages a generated project imports: a project named after one would shadow it.
# The template's pre_gen_project hook applies the same rules.
_TAKEN_PACKAGES = frozenset({"aiohttp", "chassis", "pydantic", "pytest", "tests"})


class TargetError(Exception):
    """``TARGET`` could not be loaded as a service."""


class TemplateError(Exception):
    """``chassis new`` refused to generate a project; nothing was written."""


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


def _check_name(what: str, name: str) -> None:
    if not _NAME_OK(name):
        raise TemplateError(
            f"invalid {what} {name!r}: use 1-63 characters of a-z, 0-9, '-' and '_', "
            "starting with a letter"
        )


def _check_package(project_slug: str) -> None:
    package = project_slug.replace("-", "_")
    stdlib: frozenset[str] = getattr(sys, "stdlib_module_names", frozenset())
    if keyword.iskeyword(package):
        clash = "is a Python keyword"
    elif package in stdlib:
        clash = "would shadow the standard library's module"
    elif package in _TAKEN_PACKAGES:
        clash = "would shadow a package the service imports"
    else:
        return
    raise TemplateError(
        f"package name {package!r} {clash}; choose another project_slug "
        f"(--option project_slug={project_slug}-service)"
    )


def _template_context(name: str, options: Mapping[str, str]) -> dict[str, Any]:
    """The template's answers from ``name`` and ``options``, checked against its variables."""
    variables = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text(encoding="utf-8"))
    public = sorted(key for key in variables if not key.startswith("_") and key != "service_name")
    context: dict[str, Any] = {"service_name": name, "_chassis_version": __version__}
    for key, value in options.items():
        if key == "service_name":
            raise TemplateError("the service name is NAME, not an --option")
        if key not in variables or key.startswith("_"):
            raise TemplateError(f"unknown option {key!r}; the template has {', '.join(public)}")
        choices = variables[key]
        if isinstance(choices, list) and value not in choices:
            raise TemplateError(f"option {key} must be one of {', '.join(choices)}, not {value!r}")
        context[key] = value
    return context


def new_service(
    name: str,
    *,
    output_dir: str | Path = ".",
    options: Mapping[str, str] | None = None,
    no_input: bool = True,
    force: bool = False,
) -> Path:
    """Generate a service project from :data:`TEMPLATE_DIR`; return its directory.

    The project goes to ``output_dir/<project_slug>`` (the slug is ``name`` unless
    ``options`` sets ``project_slug``). Everything is checked before anything is
    written: the names, the options, and that the directory does not exist yet.

    Args:
        name: the service name, by the rule of :class:`~chassis.Service`.
        output_dir: where the project directory is created.
        options: answers to the template's other questions (``description``,
            ``author``, ``version``, ``python_version``, ``project_slug``).
        no_input: take the defaults for unanswered questions instead of prompting.
        force: write the template's files into an existing directory, replacing
            those with the same names (other files stay).

    Raises:
        TemplateError: a name or option is invalid, the directory exists and
            ``force`` is false, the ``template`` extra is not installed, or the
            template's own checks refused the answers given at a prompt.
    """
    options = dict(options or {})
    _check_name("service name", name)
    project_slug = options.get("project_slug", name)
    _check_name("project_slug", project_slug)
    _check_package(project_slug)
    context = _template_context(name, options)
    target = Path(output_dir) / project_slug
    if target.exists() and not force:
        raise TemplateError(f"{target} already exists; pass --force to write the template over it")
    if target.exists() and not target.is_dir():
        raise TemplateError(f"{target} exists and is not a directory")
    try:
        from cookiecutter.exceptions import FailedHookException, OutputDirExistsException
        from cookiecutter.main import cookiecutter
    except ImportError:
        raise TemplateError(
            "chassis new needs the 'template' extra: pip install 'aiochassis[template]'"
        ) from None
    try:
        project = cookiecutter(
            str(TEMPLATE_DIR),
            no_input=no_input,
            extra_context=context,
            output_dir=str(output_dir),
            overwrite_if_exists=force,
        )
    except OutputDirExistsException as exc:  # a slug changed at a prompt
        raise TemplateError(f"{exc}; pass --force to write the template over it") from None
    except FailedHookException:
        raise TemplateError("the template refused the answers (see the error above)") from None
    return Path(project)


def _parse_options(pairs: Sequence[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TemplateError(f"--option takes KEY=VALUE, not {pair!r}")
        options[key.strip()] = value
    return options


def _new(args: argparse.Namespace) -> int:
    # Cookiecutter logs a failed hook with its traceback; the hook's own message is enough.
    quiet = logging.getLogger("cookiecutter")
    if not any(isinstance(handler, logging.NullHandler) for handler in quiet.handlers):
        quiet.addHandler(logging.NullHandler())
    try:
        project = new_service(
            args.name,
            output_dir=args.output_dir,
            options=_parse_options(args.option),
            no_input=args.no_input or not sys.stdin.isatty(),
            force=args.force,
        )
    except TemplateError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:  # Ctrl-C at a prompt
        print(file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"chassis: generating the project failed: {exc}", file=sys.stderr)
        return 1
    print(f"created {project}")
    print(f"next: cd {project} && pip install -e '.[dev]' && pytest")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chassis", description="The aiochassis command line.")
    parser.add_argument("--version", action="version", version=f"aiochassis {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run a service until SIGTERM/SIGINT, then drain it")
    run.add_argument("target", metavar="TARGET", help="module:attribute or file.py:attribute")
    run.add_argument("--host", help="interface to bind (default: CHASSIS_HTTP__HOST)")
    run.add_argument("--port", type=int, help="TCP port (default: CHASSIS_HTTP__PORT)")
    new = sub.add_parser(
        "new",
        help="generate a new service project from the template (needs aiochassis[template])",
    )
    new.add_argument("name", metavar="NAME", help="service name: lower case, e.g. orders")
    new.add_argument(
        "--output-dir", default=".", metavar="DIR", help="where to create the project (default: .)"
    )
    new.add_argument(
        "--no-input",
        action="store_true",
        help="use the defaults instead of prompting (implied when stdin is not a terminal)",
    )
    new.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="answer a template question, e.g. --option description='Order intake'",
    )
    new.add_argument(
        "--force", action="store_true", help="write into an existing project directory"
    )
    status = sub.add_parser(
        "status", help="show a running service's live state (its /_chassis endpoint)"
    )
    status.add_argument(
        "url", metavar="URL", help="base URL of the service, e.g. http://127.0.0.1:8080"
    )
    status.add_argument(
        "--token", help="introspection bearer token (default: env CHASSIS_STATUS_TOKEN)"
    )
    status.add_argument("--watch", action="store_true", help="refresh until interrupted")
    status.add_argument(
        "--interval", type=float, default=2.0, metavar="S", help="seconds between refreshes"
    )
    status.add_argument(
        "--count", type=int, metavar="N", help="with --watch: stop after N refreshes"
    )
    status.add_argument("--json", action="store_true", help="print the JSON state as it is")
    status.add_argument(
        "--settings", action="store_true", help="also list the settings (secrets redacted)"
    )
    status.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for an answer"
    )
    return parser


def _status(args: argparse.Namespace) -> int:
    import os

    from . import _status

    if args.interval <= 0 or args.timeout <= 0:
        return _fail("--interval and --timeout must be positive")
    if args.count is not None and args.count < 1:
        return _fail("--count must be at least 1")
    if args.count is not None and not args.watch:
        return _fail("--count needs --watch")
    try:
        _status.endpoint_of(args.url)
    except ValueError as exc:
        return _fail(str(exc))
    token = args.token or os.environ.get("CHASSIS_STATUS_TOKEN") or None
    outcome = [0]

    def poll() -> str:
        try:
            data = _status.fetch(args.url, token=token, timeout_seconds=args.timeout)
        except _status.Unauthorized:
            raise
        except _status.StatusError as exc:
            outcome[0] = 1
            if not args.watch:
                raise
            return f"chassis: {exc}"
        outcome[0] = 0
        if args.json:
            return json.dumps(data, indent=2, ensure_ascii=False)
        return _status.render(data, settings=args.settings)

    try:
        _status.watch(
            poll,
            sys.stdout,
            interval_seconds=args.interval,
            count=args.count if args.watch else 1,
            clear=args.watch and sys.stdout.isatty(),
        )
    except _status.Unauthorized as exc:
        print(f"chassis: {exc}", file=sys.stderr)
        return 3
    except _status.StatusError as exc:
        print(f"chassis: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return outcome[0]
    return outcome[0]


def _fail(message: str) -> int:
    print(f"chassis: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``chassis`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "new":
        return _new(args)
    if args.command == "status":
        return _status(args)
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
