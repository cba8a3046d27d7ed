"""The `minimoe` command: `python -m minimoe doctor`, `python -m minimoe grade PATH...`.

Each subcommand lives in its own module, which provides

    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int

A module listed in `SUBCOMMANDS` that is not installed is left out of the command. A module
that offers `main(argv) -> int` instead of that pair gets the rest of the command line as is.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# name -> (module, one-line help). Modules are imported only when their subcommand runs,
# except to read their arguments.
SUBCOMMANDS = {
    "doctor": ("minimoe.doctor", "check the environment: versions, device, Triton, widgets"),
    "grade": ("minimoe.course.grade", "grade submitted exercise notebooks"),
    "bench": ("minimoe.bench", "benchmark the MoE implementations"),
}


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one sub-parser per available subcommand."""
    parser = argparse.ArgumentParser(prog="minimoe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if not _available(module_name):
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)
        else:
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(_module=module, _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `minimoe` and `python -m minimoe`. Returns the exit code."""
    args = build_parser().parse_args(argv)
    module = args._module
    if hasattr(module, "run"):
        return int(module.run(args, args._parser) or 0)
    return int(module.main(args.rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
