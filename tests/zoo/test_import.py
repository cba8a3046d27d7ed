"""`import minimoe.zoo` loads the core only: no course, widget or plotting package; and the
`minimoe zoo` command finds its arguments in `minimoe.zoo.cli`."""

from __future__ import annotations

import json
import subprocess
import sys

COURSE_ONLY = {"IPython", "ipywidgets", "jupyterlab", "matplotlib", "nbformat", "plotly"}


def test_import_loads_no_course_package():
    code = (
        "import json, sys, minimoe.zoo\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)  # fmt: skip
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "torch" in loaded and not loaded & COURSE_ONLY


def test_command_uses_the_cli_module():
    from minimoe.__main__ import _command_module

    module = _command_module("minimoe.zoo")
    assert module.__name__ == "minimoe.zoo.cli" and hasattr(module, "add_arguments")
