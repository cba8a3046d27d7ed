"""pytest configuration for nbval runs of the course notebooks.

    pytest -n 2 --dist loadfile --nbval-lax --nbval-current-env notebooks solutions exercises

nbval (0.11) makes one test item (`nbval.plugin.IPyNbCell`, named "Cell N") per code cell and
runs a notebook's items in order in one kernel, which lives as long as the notebook's collector:
a cell that raises fails its own item, and the next cells still run in the same kernel.
`--dist loadfile` keeps all of a notebook's cells on one xdist worker.

What this file adds:
- Exercises as shipped must fail exactly at their checks. In a notebook inside a folder named
  `exercises`, every cell tagged `check` is marked `xfail(strict=True)`: a check cell that raises
  AssertionError or NotImplementedError is the expected result, and a check cell that passes makes
  the run fail (proof that every check can fail). Any other error there (a NameError, a timeout)
  is reported as a failure: the check is broken, not merely unanswered.
- Outputs are never compared (notebooks are stored without outputs), even in cells marked
  NBVAL_CHECK_OUTPUT.
- Unit-test runs (not nbval) without a CUDA GPU set TRITON_INTERPRET=1 for the whole run, so every
  Triton kernel a test file defines runs in Triton's CPU interpreter. Notebooks set it themselves.
- Kernels start with PYTHONHASHSEED=0 and this repository first on PYTHONPATH, so notebooks
  import this checkout's `minimoe` and set iteration order is the same on every run. Notebooks
  seed torch themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

try:
    from nbval.plugin import IPyNbCell, NbCellError
except ImportError:  # nbval not installed: nothing to configure
    IPyNbCell = NbCellError = None

ROOT = Path(__file__).resolve().parent
EXPECTED_CHECK_ERRORS = ("AssertionError", "NotImplementedError")


class BrokenCheckError(Exception):
    """A check cell of a shipped exercise failed for a reason other than an unanswered exercise."""


def _nbval_on(config: pytest.Config) -> bool:
    return bool(
        getattr(config.option, "nbval", False) or getattr(config.option, "nbval_lax", False)
    )


def _is_exercise_check(item: pytest.Item) -> bool:
    return (
        IPyNbCell is not None
        and isinstance(item, IPyNbCell)
        and item.path.parent.name == "exercises"
        and "check" in item.cell.metadata.get("tags", [])
    )


def pytest_configure(config: pytest.Config) -> None:
    if not _nbval_on(config):
        _triton_interpreter_without_gpu()
        return
    # nbval's kernels inherit this process's environment (set before any kernel starts).
    os.environ["PYTHONHASHSEED"] = "0"
    paths = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


def _triton_interpreter_without_gpu() -> None:
    """Without a CUDA GPU, Triton runs only in its interpreter, which must be on before any kernel is
    defined. Test files import Triton kernels at collection, and xdist collects every file in each
    worker, so the switch is made once here for the whole run rather than by each file in turn."""
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IPyNbCell is None:
        return
    for item in items:
        if not isinstance(item, IPyNbCell):
            continue
        item.options["check"] = False  # never compare outputs
        if _is_exercise_check(item):
            item.add_marker(
                pytest.mark.xfail(
                    strict=True,
                    raises=NbCellError,
                    reason="an exercise as shipped must fail at its check cell",
                )
            )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    try:
        return (yield)
    except Exception as err:
        if NbCellError is None or not isinstance(err, NbCellError) or not _is_exercise_check(item):
            raise
        errors = [o for o in (item.test_outputs or []) if o.get("output_type") == "error"]
        ename = errors[-1].get("ename", "?") if errors else "a timeout"
        if ename in EXPECTED_CHECK_ERRORS:
            raise
        raise BrokenCheckError(
            f"{item.path.name} cell {item.cell_num}: the check raised {ename}, not one of "
            f"{EXPECTED_CHECK_ERRORS}: the check itself is broken\n{err}"
        ) from err
