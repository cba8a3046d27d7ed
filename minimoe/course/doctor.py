"""The environment doctor: is this machine ready for the course?

    python -m minimoe doctor          # one line per check, exit 1 if any check FAILs

or, in a notebook cell, `from minimoe.course.doctor import doctor_report, format_report`.

Checks: the Python version; the versions of torch, triton, numpy, plotly, ipywidgets,
jupyterlab and (for the tests only) transformers, against the ranges minimoe declares; the device (a CUDA GPU or the CPU);
whether Triton compiles and runs a tiny kernel on the GPU or, without one, in its CPU interpreter
(in a subprocess, with TRITON_INTERPRET=1 set for that subprocess only); whether the JupyterLab
widget extensions are installed. Each problem comes with advice. It takes a few seconds.

Left out: checking a GPU's driver version against the torch build, and the browser side of
JupyterLab (the browser tests cover that).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from packaging.requirements import Requirement

Status = Literal["OK", "WARN", "FAIL"]

# package -> (what it is for, its status when missing). `make lab` installs the library and the
# `course` extra; a test-only package (`make test` installs it) is OK when missing.
PACKAGES: dict[str, tuple[str, Status]] = {
    "torch": ("the library itself", "FAIL"),
    "numpy": ("the library itself", "FAIL"),
    "triton": ("chapter 06 (Triton experts)", "WARN"),
    "plotly": ("interactive figures", "WARN"),
    "ipywidgets": ("interactive figures", "WARN"),
    "jupyterlab": ("opening the course", "WARN"),
    "transformers": ("the parity tests only; `make test` installs it", "OK"),
}
MIN_PYTHON = (3, 10)
INSTALL = "run `make lab` (or `pip install -c constraints.txt -e '.[course]'`)"

TRITON_PROBE = """
import torch, triton, triton.language as tl

@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, x + y, mask=mask)

device = "cuda" if torch.cuda.is_available() else "cpu"
x = torch.arange(100, dtype=torch.float32, device=device)
out = torch.empty_like(x)
add_kernel[(triton.cdiv(100, 64),)](x, 2 * x, out, 100, BLOCK=64)
assert torch.equal(out, 3 * x), "wrong sum"
print("ok")
"""


@dataclass
class Check:
    """One line of the report.

    Attributes:
        name: what was checked ("python", "torch", "device", "triton", ...).
        status: "OK", "WARN" (works, with a limitation) or "FAIL" (the course will not work).
        detail: what was found (a version, a device name).
        advice: what to do about a WARN or FAIL ("" when OK).
    """

    name: str
    status: Status
    detail: str
    advice: str = ""

    def __str__(self) -> str:
        line = f"{self.status:<4}  {self.name:<22} {self.detail}"
        return f"{line}\n      -> {self.advice}" if self.advice else line


def declared_ranges() -> dict[str, Requirement]:
    """minimoe's declared requirements: the installed metadata, else ../pyproject.toml."""
    try:
        lines = md.requires("minimoe") or []
    except md.PackageNotFoundError:
        lines = _pyproject_requirements()
    try:  # packaging comes with pip and jupyterlab; without it, versions are not range-checked
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:
        return {}
    reqs = {}
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        reqs.setdefault(req.name.lower(), req)
    return reqs


def _pyproject_requirements() -> list[str]:
    path = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        import tomllib  # Python >= 3.11
    except ImportError:
        return []
    if not path.exists():
        return []
    project = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {})
    extras = [r for group in project.get("optional-dependencies", {}).values() for r in group]
    return list(project.get("dependencies", [])) + extras


def check_python() -> Check:
    """Python >= 3.10."""
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] >= MIN_PYTHON:
        return Check("python", "OK", f"{version} ({sys.executable})")
    return Check(
        "python", "FAIL", version, "minimoe needs Python >= 3.10; create a new environment"
    )


def check_package(name: str, reqs: dict[str, Requirement]) -> Check:
    """The installed version of `name`, against minimoe's declared range."""
    purpose, missing_status = PACKAGES[name]
    try:
        version = md.version(name)
    except md.PackageNotFoundError:
        advice = "" if missing_status == "OK" else INSTALL
        return Check(name, missing_status, f"not installed (needed for {purpose})", advice)
    req = reqs.get(name)
    if req is not None and req.specifier and not req.specifier.contains(version, prereleases=True):
        return Check(
            name,
            "WARN",
            f"{version}, outside the tested range {req.specifier}",
            f"{INSTALL}; constraints.txt pins the tested versions",
        )
    return Check(name, "OK", version)


def check_device() -> Check:
    """A CUDA GPU if there is one, else the CPU (which is enough for the whole course)."""
    try:
        import torch
    except ImportError:
        return Check("device", "FAIL", "torch is not importable", INSTALL)
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return Check(
            "device", "OK", f"CUDA: {name} (torch {torch.__version__}, CUDA {torch.version.cuda})"
        )
    return Check(
        "device",
        "OK",
        "CPU (no CUDA GPU): every chapter runs; Triton kernels run in the interpreter on tiny "
        "shapes, and GPU benchmarks are skipped",
    )


def check_triton(timeout: float = 60) -> Check:
    """Compile and run a tiny Triton kernel in a subprocess (on the GPU, or in the interpreter)."""
    try:
        import torch
    except ImportError:
        return Check("triton kernel", "FAIL", "torch is not importable", INSTALL)
    try:
        md.version("triton")
    except md.PackageNotFoundError:
        return Check(
            "triton kernel",
            "WARN",
            "not installed: chapter 06 cannot run its kernels",
            "Triton is Linux-only; on Linux " + INSTALL,
        )
    gpu = torch.cuda.is_available()
    env = dict(os.environ)
    if gpu:
        env.pop("TRITON_INTERPRET", None)
        where = "compiles and runs on the GPU"
    else:
        env["TRITON_INTERPRET"] = "1"  # this subprocess only
        where = "the interpreter runs a kernel on the CPU (TRITON_INTERPRET=1)"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", TRITON_PROBE],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return Check(
            "triton kernel", "FAIL", f"a tiny kernel took over {timeout:g} s", "reinstall triton"
        )
    if proc.returncode == 0 and "ok" in proc.stdout:
        return Check("triton kernel", "OK", where)
    last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
    if gpu:
        return Check(
            "triton kernel",
            "FAIL",
            f"the GPU kernel failed: {last}",
            "check that the triton version matches your torch build (constraints.txt); "
            "the CPU interpreter still works with TRITON_INTERPRET=1",
        )
    return Check(
        "triton kernel",
        "FAIL",
        f"the interpreter failed: {last}",
        "install the triton version pinned in constraints.txt",
    )


def _labextension(name: str) -> Path | None:
    from jupyter_core.paths import jupyter_path

    for folder in jupyter_path("labextensions"):
        if (Path(folder) / name / "package.json").is_file():
            return Path(folder) / name
    return None


def check_widgets() -> list[Check]:
    """The JupyterLab extensions that show ipywidgets, anywidget and plotly figures."""
    checks = []
    for name, package, status in (
        ("@jupyter-widgets/jupyterlab-manager", "jupyterlab_widgets", "FAIL"),
        ("anywidget", "anywidget", "FAIL"),
        (
            "jupyterlab-plotly",
            "plotly",
            "WARN",
        ),  # plotly's own renderer; FigureWidget needs anywidget
    ):
        try:
            found = _labextension(name)
        except ImportError:
            found = None
        if found is not None:
            checks.append(Check(f"lab {package}", "OK", f"{name} in {found.parent}"))
        else:
            checks.append(
                Check(
                    f"lab {package}",
                    status,
                    f"JupyterLab extension {name} not found",
                    f"interactive figures will show as text; pip install {package} in the environment "
                    "that runs JupyterLab, then restart it",
                )
            )
    return checks


def doctor_report(triton_timeout: float = 60) -> list[Check]:
    """Run every check. Usable from a notebook cell: `for c in doctor_report(): print(c)`."""
    reqs = declared_ranges()
    checks = [check_python()]
    checks += [check_package(name, reqs) for name in PACKAGES]
    checks += [check_device(), check_triton(triton_timeout)]
    return checks + check_widgets()


def format_report(checks: list[Check]) -> str:
    """The report as text: one line per check, advice indented below, then a summary."""
    worst = (
        "FAIL"
        if any(c.status == "FAIL" for c in checks)
        else ("WARN" if any(c.status == "WARN" for c in checks) else "OK")
    )
    summary = {
        "OK": "All good: `make lab` opens the course at notebooks/00_start_here.ipynb.",
        "WARN": "Usable, with the limitations above.",
        "FAIL": "Some checks FAILed: follow the advice above, then run `python -m minimoe doctor` again.",
    }[worst]
    return "\n".join([*map(str, checks), "", summary])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `doctor` subcommand takes no arguments."""


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print the report; exit code 1 if any check FAILed."""
    checks = doctor_report()
    print(format_report(checks))
    return int(any(c.status == "FAIL" for c in checks))
