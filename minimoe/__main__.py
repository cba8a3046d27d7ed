"""The `minimoe` command: `python -m minimoe COMMAND`, one module per command (`SUBCOMMANDS`).

Each subcommand lives in its own module, which provides

    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int

A module listed in `SUBCOMMANDS` that is not installed is left out of the command. A module
that offers `main(argv) -> int` instead of that pair gets the rest of the command line as is; a
package with neither is looked up as `<package>.cli`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# name -> (module, one-line help). A module is imported only when its subcommand runs.
SUBCOMMANDS = {
    "doctor": ("minimoe.course.doctor", "check the environment: versions, device, Triton, widgets"),
    "grade": ("minimoe.course.grade", "grade submitted exercise notebooks"),
    "lab": ("minimoe.course.lab", "open the course in JupyterLab, your work in workspace/"),
    "bench": ("minimoe.bench", "benchmark the MoE implementations"),
    "train": ("minimoe.lm", "train the tiny MoE language model (or its dense twin)"),
    "collapse-lab": ("minimoe.collapse", "collapse a router, then recover it with each remedy"),
    "zoo": ("minimoe.zoo", "train every router of chapter 08 on the same tasks and compare them"),
    "ep": ("minimoe.distributed", "expert parallelism over processes: check it and time it"),
    "generate": ("minimoe.serving.cli_generate", "generate text with the tiny MoE LM (KV cache)"),
    "offload": ("minimoe.serving.cli_offload", "serve the tiny LM with offloaded, cached experts"),
    "triangle": (
        "minimoe.serving.cli_triangle",
        "cost, accuracy, performance: the tiny LM's dense twins and MoE variants side by side",
    ),
}


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _command_module(module_name: str):
    """The module itself, or its `cli` submodule when the module is a package without a CLI."""
    module = importlib.import_module(module_name)
    if not hasattr(module, "run") and not hasattr(module, "main"):
        if _available(f"{module_name}.cli"):
            module = importlib.import_module(f"{module_name}.cli")
    return module


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser. Only `command`'s module is imported (so `doctor` works even when
    another subcommand's dependencies are broken); the others are listed by name."""
    parser = argparse.ArgumentParser(prog="minimoe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if not _available(module_name):
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = _command_module(module_name)
            if hasattr(module, "add_arguments"):
                module.add_arguments(p)
            p.set_defaults(_module=module, _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `minimoe` and `python -m minimoe`. Returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args, rest = build_parser(command).parse_known_args(argv)
    module = args._module
    if hasattr(module, "run"):
        if rest:
            args._parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return int(module.run(args, args._parser) or 0)
    return int(module.main(rest) or 0)  # a module with its own parser gets its arguments as is


if __name__ == "__main__":
    sys.exit(main())
