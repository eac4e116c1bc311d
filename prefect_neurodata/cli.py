"""The ``neurodata`` command line.

Each area of the project contributes one command group through a ``register(subparsers)``
function that adds its group parser (named like the group) and sets ``func`` on each leaf
parser (``func(args) -> int`` exit code). Groups are listed in :data:`COMMAND_GROUPS` and
imported lazily: ``neurodata sandbox up`` imports only the sandbox commands, so one area's
import cost or breakage never affects another area's commands.

To add a group, add ``"name": ("module.path", "one-line help")`` to :data:`COMMAND_GROUPS` and
give ``module.path`` a ``register(subparsers)`` function.

Example:
    >>> from prefect_neurodata.cli import main
    >>> main(["--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Sequence

# name -> (module with register(subparsers), help shown by `neurodata --help`)
COMMAND_GROUPS: dict[str, tuple[str, str]] = {
    "sandbox": (
        "prefect_neurodata.sandbox.commands",
        "start, inspect, seed and stop the local stand-in services",
    ),
    "events": ("prefect_neurodata.relay", "relay S3 upload notifications to Prefect events"),
    "deployments": (
        "prefect_neurodata.deployments",
        "show the deployments or write deployments/prefect.yaml",
    ),
}


def _selected_group(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMAND_GROUPS else None
    return None


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Build the parser; only the group named in ``argv`` gets its full subcommands."""
    parser = argparse.ArgumentParser(
        prog="neurodata",
        description="prefect-neurodata: Prefect tasks and flows for AIND metadata and CAVE.",
    )
    from prefect_neurodata import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="group", metavar="COMMAND")
    selected = _selected_group(argv)
    for name, (module, help_text) in COMMAND_GROUPS.items():
        if name == selected:
            importlib.import_module(module).register(subparsers)
        else:
            subparsers.add_parser(name, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    func = getattr(args, "func", None)
    if func is None:
        # A group without a subcommand: show that group's help (or the top-level one).
        if args.group:
            with contextlib.suppress(SystemExit):
                build_parser([args.group]).parse_args([args.group, "--help"])
        else:
            parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
