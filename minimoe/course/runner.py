"""Run a notebook cell by cell in a separate Jupyter kernel, and survive whatever a cell does.

Used by the grader. Every code cell gets a result (`CellRun`): it ran, raised, ran past the
per-cell timeout or the whole run's time budget, or killed the kernel. After a timeout or a kernel
death the kernel is replaced by a fresh one, the cells that ran cleanly before are replayed (so
later cells see the same names; cells listed in `no_replay` are not), and the run goes on with the
next cell. A learner's infinite loop therefore costs one timeout, never the whole grading run; many
slow cells cost at most the budget.

The kernel is the ipykernel of the Python running this module (as nbval's `--nbval-current-env`),
in its own session (process group), with this repository's `minimoe` put first on PYTHONPATH
unless the caller gives the environment. A caller may put a launcher in front of the kernel's
command (`kernel_prefix`: the grader's `minimoe.course.kernel_box` sets a memory limit and drops
privileges) and learn each kernel's process id (`on_kernel`) to clean up after a run it had to kill.

Built on nbclient (jupyter/nbclient). Left out: widgets' front-end state. Isolation between
notebooks is the grader's (`minimoe.course.sandbox`); this module alone runs a notebook with the
caller's rights.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping
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
from traitlets import List, Unicode, default

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
    """Resolves CURRENT_ENV_KERNEL to an ipykernel running on this very interpreter, with
    `argv_prefix` in front of its command."""

    argv_prefix = List(Unicode())

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name == CURRENT_ENV_KERNEL:
            spec = ipykernel.kernelspec.get_kernel_dict()
            spec["argv"] = [*self.argv_prefix, *spec["argv"]]
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
    nb: NotebookNode,
    cwd: str | Path,
    timeout: float = 60,
    startup_timeout: float = 60,
    *,
    budget: float | None = None,
    env: dict[str, str] | None = None,
    kernel_prefix: list[str] | None = None,
    no_replay: Collection[int] = (),
    on_kernel: Callable[[int], None] | None = None,
    cell_timeouts: Mapping[int, float] | None = None,
) -> list[CellRun]:
    """Run every code cell of `nb` in order, in a fresh kernel started in `cwd`.

    Args:
        nb: the notebook (copied; not modified).
        cwd: the kernel's working directory.
        timeout: seconds one cell may run (rounded up to whole seconds).
        startup_timeout: seconds a kernel may take to start.
        budget: seconds the whole run may take, kernel starts and replays included (None: no
            limit); the cells left when it is spent are "timeout" without running.
        env: the kernel's environment (default `kernel_env()`).
        kernel_prefix: a command put in front of the kernel's own (a launcher that execs it).
        no_replay: cells never replayed after a restart (the grader's checks: run once).
        on_kernel: called with the process id of every kernel started.
        cell_timeouts: {cell index: seconds} for cells that may take longer (or shorter) than
            `timeout` (the grader's first cell imports torch and the checks).

    Returns:
        One `CellRun` per cell of `nb`, in order.

    Raises:
        RuntimeError: if a kernel cannot be started at all.
    """
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    deadline = None if budget is None else time.monotonic() + budget
    runs = {
        i: CellRun(i, "skipped")
        for i, cell in enumerate(nb.cells)
        if cell.cell_type != "code" or not cell.source.strip()
    }
    pending = [i for i in range(len(nb.cells)) if i not in runs]
    clean: list[int] = []  # cells that ran without error, replayed after a kernel restart

    def seconds_left() -> float:
        return math.inf if deadline is None else deadline - time.monotonic()

    def limit(i: int) -> float:
        return (cell_timeouts or {}).get(i, timeout)

    def cell_timeout(i: int) -> int:
        return max(1, math.ceil(min(limit(i), seconds_left())))

    while pending:
        if seconds_left() <= 0:
            for i in pending:
                runs[i] = CellRun(
                    i,
                    "timeout",
                    "TimeoutError",
                    f"not run: the notebook used up its time budget of {budget:g} s",
                )
            break
        specs = _CurrentEnvSpecs(argv_prefix=list(kernel_prefix or []))
        client = NotebookClient(
            nb,
            km=_CurrentEnvKernelManager(kernel_name=CURRENT_ENV_KERNEL, kernel_spec_manager=specs),
            timeout=max(1, math.ceil(timeout)),
            startup_timeout=max(1, math.ceil(min(startup_timeout, seconds_left()))),
            kernel_name=CURRENT_ENV_KERNEL,
            allow_errors=True,
            interrupt_on_timeout=False,
            shutdown_kernel="immediate",
            log=_log,
        )
        kernel_env_ = kernel_env() if env is None else env
        with client.setup_kernel(cwd=str(cwd), env=kernel_env_, stderr=subprocess.DEVNULL):
            if on_kernel is not None:
                on_kernel(client.km.provisioner.process.pid)
            for i in clean:  # a fresh kernel: rebuild the state the next cells expect
                if i in no_replay:
                    continue
                client.timeout = cell_timeout(i)
                try:
                    client.execute_cell(nbformat.from_dict(dict(nb.cells[i])), i)
                except (CellTimeoutError, DeadKernelError):
                    break
            while pending:
                i = pending.pop(0)
                client.timeout = cell_timeout(i)
                by_budget = client.timeout < limit(i)
                try:
                    runs[i] = _outcome(i, client.execute_cell(nb.cells[i], i))
                except CellTimeoutError:
                    runs[i] = CellRun(
                        i,
                        "timeout",
                        "TimeoutError",
                        f"the notebook used up its time budget of {budget:g} s in this cell"
                        if by_budget
                        else f"the cell ran longer than {limit(i):g} s (an endless loop?)",
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
