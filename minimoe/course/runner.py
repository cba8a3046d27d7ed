"""Run a notebook cell by cell in a separate Jupyter kernel, and survive whatever a cell does.

Used by the grader. Every code cell gets a result (`CellRun`): it ran, raised, ran past the
per-cell timeout, or killed the kernel. After a timeout or a kernel death the kernel is replaced
by a fresh one, the cells that ran cleanly before are replayed (so later cells see the same
names), and the run goes on with the next cell. A learner's infinite loop therefore costs one
timeout, never the whole grading run.

The kernel is the ipykernel of the Python running this module (as nbval's `--nbval-current-env`),
started in the notebook's folder, with this repository's `minimoe` put first on PYTHONPATH.

Built on nbclient (jupyter/nbclient). Left out: widgets' front-end state, and sandboxing (a
submission runs with the grader's rights; grade only notebooks you would run yourself).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import ipykernel.kernelspec
import nbformat
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from traitlets import default

import minimoe

CURRENT_ENV_KERNEL = "minimoe-current-env"
REPO_ROOT = Path(minimoe.__file__).resolve().parents[1]
Status = Literal["ok", "error", "timeout", "died", "skipped"]

_log = logging.getLogger("minimoe.course.runner")
_log.addHandler(logging.NullHandler())
_log.propagate = False


@dataclass
class CellRun:
    """What happened when one cell ran.

    Attributes:
        index: the cell's position in the notebook.
        status: "ok", "error" (raised), "timeout", "died" (the kernel died), "skipped" (not code).
        ename, evalue: the exception's type name and message ("" when ok).
        stdout: what the cell printed.
    """

    index: int
    status: Status
    ename: str = ""
    evalue: str = ""
    stdout: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "skipped")

    @property
    def hint(self) -> str:
        """The exception's name and the last line of its message, e.g. 'AssertionError: ...'."""
        lines = [line.strip() for line in self.evalue.splitlines() if line.strip()]
        return f"{self.ename}: {lines[-1]}" if lines else self.ename


class _CurrentEnvSpecs(KernelSpecManager):
    """Resolves CURRENT_ENV_KERNEL to an ipykernel running on this very interpreter."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name == CURRENT_ENV_KERNEL:
            spec = ipykernel.kernelspec.get_kernel_dict()
            return KernelSpec(resource_dir=ipykernel.kernelspec.RESOURCES, **spec)
        return super().get_kernel_spec(kernel_name)


class _CurrentEnvKernelManager(AsyncKernelManager):
    @default("kernel_spec_manager")
    def _default_specs(self) -> KernelSpecManager:
        return _CurrentEnvSpecs(data_dir=self.data_dir)


def kernel_env() -> dict[str, str]:
    """The kernel's environment: ours, with the repository root first on PYTHONPATH."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _outcome(index: int, cell: NotebookNode) -> CellRun:
    stdout = "".join(
        o.get("text", "")
        for o in cell.get("outputs", [])
        if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return CellRun(index, "error", out.get("ename", ""), out.get("evalue", ""), stdout)
    return CellRun(index, "ok", stdout=stdout)


def run_cells(
    nb: NotebookNode, cwd: str | Path, timeout: float = 60, startup_timeout: float = 60
) -> list[CellRun]:
    """Run every code cell of `nb` in order, in a fresh kernel started in `cwd`.

    Args:
        nb: the notebook (copied; not modified).
        cwd: the kernel's working directory.
        timeout: seconds one cell may run (rounded up to whole seconds).
        startup_timeout: seconds a kernel may take to start.

    Returns:
        One `CellRun` per cell of `nb`, in order.

    Raises:
        RuntimeError: if a kernel cannot be started at all.
    """
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    runs = {
        i: CellRun(i, "skipped")
        for i, cell in enumerate(nb.cells)
        if cell.cell_type != "code" or not cell.source.strip()
    }
    pending = [i for i in range(len(nb.cells)) if i not in runs]
    clean: list[int] = []  # cells that ran without error, replayed after a kernel restart
    while pending:
        client = NotebookClient(
            nb,
            timeout=max(1, math.ceil(timeout)),
            startup_timeout=max(1, math.ceil(startup_timeout)),
            kernel_name=CURRENT_ENV_KERNEL,
            kernel_manager_class=_CurrentEnvKernelManager,
            allow_errors=True,
            interrupt_on_timeout=False,
            shutdown_kernel="immediate",
            log=_log,
        )
        with client.setup_kernel(cwd=str(cwd), env=kernel_env(), stderr=subprocess.DEVNULL):
            for i in clean:  # a fresh kernel: rebuild the state the next cells expect
                try:
                    client.execute_cell(nbformat.from_dict(dict(nb.cells[i])), i)
                except (CellTimeoutError, DeadKernelError):
                    break
            while pending:
                i = pending.pop(0)
                try:
                    runs[i] = _outcome(i, client.execute_cell(nb.cells[i], i))
                except CellTimeoutError:
                    runs[i] = CellRun(
                        i,
                        "timeout",
                        "TimeoutError",
                        f"the cell ran longer than {timeout:g} s (an endless loop?)",
                    )
                    break  # this kernel is busy for good: start another
                except DeadKernelError:
                    runs[i] = CellRun(
                        i,
                        "died",
                        "DeadKernelError",
                        "the kernel died while running this cell (out of memory, or exit())",
                    )
                    break
                if runs[i].ok:
                    clean.append(i)
    return [runs[i] for i in range(len(nb.cells))]


if __name__ == "__main__":  # debugging aid: python -m minimoe.course.runner NOTEBOOK
    path = Path(sys.argv[1])
    for run in run_cells(nbformat.read(path, as_version=4), path.parent):
        print(run.index, run.status, run.hint)
