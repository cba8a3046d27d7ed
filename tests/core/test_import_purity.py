"""The library imports no course machinery: `import minimoe` (and the library's subpackages) loads
no Jupyter, widget, notebook or plotting package, so it works where only the base dependencies of
`pyproject.toml` are installed. Each import runs in a fresh interpreter, since this test process
has long since imported everything."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Packages that only the `course` extra installs (and what they pull in).
COURSE_ONLY = (
    "IPython",
    "anywidget",
    "ipykernel",
    "ipywidgets",
    "jupyter_client",
    "jupyter_server",
    "jupyterlab",
    "matplotlib",
    "nbclient",
    "nbformat",
    "plotly",
)
LIBRARY = ("minimoe", "minimoe.impls", "minimoe.triton", "minimoe.lm", "minimoe.collapse")


def _loaded_after_import(module: str) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", LIBRARY)
def test_library_imports_no_course_package(module: str) -> None:
    loaded = set(_loaded_after_import(module))
    assert "torch" in loaded  # the probe sees what the import loaded
    assert not loaded & set(COURSE_ONLY), (
        f"`import {module}` loads {sorted(loaded & set(COURSE_ONLY))}: keep course packages "
        "behind imports inside minimoe.viz / minimoe.course"
    )


def test_the_probe_sees_a_course_import() -> None:
    """The probe can fail: importing a course module does load course packages."""
    assert "nbformat" in _loaded_after_import("minimoe.course.notebooks")
