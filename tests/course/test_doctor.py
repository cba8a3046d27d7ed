"""The environment doctor: right findings on this machine, and clear advice when something is off."""

from __future__ import annotations

import importlib.metadata as md
import os
import time

import pytest
import torch
from packaging.requirements import Requirement

from minimoe.__main__ import main
from minimoe.course import doctor
from minimoe.course.doctor import Check


@pytest.mark.slow
def test_report_on_this_machine_is_fast_and_complete():
    interpret_before = os.environ.get("TRITON_INTERPRET")
    start = time.perf_counter()
    checks = doctor.doctor_report()
    assert time.perf_counter() - start < 20
    by_name = {c.name: c for c in checks}
    expected = {"python", *doctor.PACKAGES, "device", "triton kernel"}
    assert expected <= set(by_name)
    assert all(c.status in ("OK", "WARN", "FAIL") for c in checks)
    assert all(c.advice for c in checks if c.status != "OK")
    assert by_name["torch"].detail == md.version("torch")
    assert by_name["python"].status == "OK"
    if torch.cuda.is_available():
        assert torch.cuda.get_device_name(0) in by_name["device"].detail
    else:
        assert by_name["device"].detail.startswith("CPU")
        assert "interpreter" in by_name["triton kernel"].detail
    assert os.environ.get("TRITON_INTERPRET") == interpret_before  # probed in a subprocess only


def test_missing_package_fails_or_warns_with_advice(monkeypatch):
    def not_installed(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(doctor.md, "version", not_installed)
    torch_check = doctor.check_package("torch", {})
    plotly_check = doctor.check_package("plotly", {})
    transformers_check = doctor.check_package("transformers", {})
    assert (torch_check.status, plotly_check.status) == ("FAIL", "WARN")
    assert "not installed" in torch_check.detail and "make lab" in torch_check.advice
    # `make lab` installs the course without the test-only tools: not a problem for a learner
    assert transformers_check.status == "OK" and "make test" in transformers_check.detail


def test_version_outside_the_declared_range_warns(monkeypatch):
    monkeypatch.setattr(doctor.md, "version", lambda name: "3.0.0")
    check = doctor.check_package("plotly", {"plotly": Requirement("plotly>=6,<3")})
    assert check.status == "WARN" and "outside the tested range" in check.detail
    assert doctor.check_package("plotly", {"plotly": Requirement("plotly>=3")}).status == "OK"


def test_declared_ranges_match_pyproject():
    reqs = doctor.declared_ranges()
    assert str(reqs["torch"].specifier) == ">=2.4"
    assert reqs["ipywidgets"].specifier.contains("8.1") and not reqs[
        "ipywidgets"
    ].specifier.contains("9.0")


@pytest.mark.slow
def test_broken_triton_is_reported_with_its_error(monkeypatch):
    monkeypatch.setattr(doctor, "TRITON_PROBE", "raise RuntimeError('no active driver')")
    check = doctor.check_triton()
    assert check.status == "FAIL"
    assert check.detail.endswith("RuntimeError: no active driver") and check.advice


def test_missing_widget_extensions_fail_with_advice(monkeypatch, tmp_path):
    import jupyter_core.paths

    monkeypatch.setattr(jupyter_core.paths, "jupyter_path", lambda *parts: [str(tmp_path)])
    checks = doctor.check_widgets()
    assert [c.status for c in checks] == ["FAIL", "FAIL", "WARN"]
    assert "pip install jupyterlab_widgets" in checks[0].advice

    (tmp_path / "@jupyter-widgets" / "jupyterlab-manager").mkdir(parents=True)
    (tmp_path / "@jupyter-widgets" / "jupyterlab-manager" / "package.json").write_text("{}")
    assert doctor.check_widgets()[0].status == "OK"


def test_format_and_exit_code(monkeypatch, capsys):
    ok, warn = Check("a", "OK", "fine"), Check("b", "WARN", "meh", "do x")
    fail = Check("c", "FAIL", "broken", "do y")
    assert doctor.format_report([ok]).endswith(
        "All good: `make lab` opens the course at notebooks/00_start_here.ipynb."
    )
    text = doctor.format_report([ok, warn, fail])
    assert "WARN  b" in text and "-> do y" in text and "FAILed" in text.splitlines()[-1]

    monkeypatch.setattr(doctor, "doctor_report", lambda: [ok, warn])
    assert main(["doctor"]) == 0
    monkeypatch.setattr(doctor, "doctor_report", lambda: [ok, fail])
    assert main(["doctor"]) == 1
    assert "broken" in capsys.readouterr().out


def test_cli_lists_available_subcommands_and_passes_arguments_through(monkeypatch, tmp_path):
    (tmp_path / "fake_bench_mod.py").write_text(
        "seen = []\ndef main(argv):\n    seen.append(argv)\n    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(
        __import__("minimoe.__main__").__main__.SUBCOMMANDS,
        "bench",
        ("fake_bench_mod", "a module with its own argument parser"),
    )
    assert main(["bench", "--size", "3", "loop"]) == 3
    import fake_bench_mod

    assert fake_bench_mod.seen == [["--size", "3", "loop"]]
    with pytest.raises(SystemExit) as exit_:
        main(["doctor", "--bogus"])
    assert exit_.value.code == 2
