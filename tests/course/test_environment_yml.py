"""environment.yml mirrors pyproject.toml: every dependency of the library and of the `course`
extra (what `make lab` installs), with the same version range."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
# PyPI name -> the conda-forge names that provide it
CONDA_NAMES = {
    "torch": {"pytorch", "pytorch-cpu", "pytorch-gpu"},
    "matplotlib": {"matplotlib-base"},
}


def conda_spec(line: str) -> tuple[str, SpecifierSet]:
    """'ipywidgets>=8,<9' or 'numpy >=1.24' -> ('ipywidgets', SpecifierSet('>=8,<9'))."""
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*", line.split("::")[-1])
    if match is None:
        raise ValueError(f"cannot read the conda spec {line!r}")
    return match.group(1).lower(), SpecifierSet(match.group(2).replace(" ", ""))


def mismatches(pyproject_text: str, env_text: str) -> list[str]:
    """What environment.yml lacks or states differently, one line per dependency of the library
    and of the course extra."""
    project = tomllib.loads(pyproject_text)["project"]
    extras = project.get("optional-dependencies", {})
    deps = [Requirement(r) for r in [*project["dependencies"], *extras.get("course", [])]]
    for req in [d for d in deps if d.name == project["name"]]:  # minimoe[triton] in the course
        deps.remove(req)
        deps += [Requirement(r) for extra in sorted(req.extras) for r in extras.get(extra, [])]
    env = yaml.safe_load(env_text)
    conda: dict[str, SpecifierSet] = {}
    pip: dict[str, Requirement] = {}
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            for line in entry.get("pip", []):
                if not line.lstrip().startswith("-"):
                    req = Requirement(line)
                    pip[req.name.lower()] = req
        else:
            name, spec = conda_spec(entry)
            conda[name] = spec
    problems = []
    for dep in deps:
        name = dep.name.lower()
        if name in pip:
            found = pip[name]
            if found.specifier != dep.specifier or str(found.marker) != str(dep.marker):
                problems.append(f"{name}: pip has '{found}', pyproject has '{dep}'")
            continue
        names = {name} | CONDA_NAMES.get(name, set())
        hits = [n for n in names if n in conda]
        if not hits:
            problems.append(f"{name}: missing from environment.yml (pyproject has '{dep}')")
        elif conda[hits[0]] != dep.specifier:
            problems.append(f"{name}: conda has '{hits[0]}{conda[hits[0]]}', pyproject '{dep}'")
    return problems


def test_environment_yml_mirrors_pyproject():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    env = (ROOT / "environment.yml").read_text(encoding="utf-8")
    assert mismatches(pyproject, env) == []


def test_environment_yml_uses_conda_forge_and_installs_minimoe_for_the_course():
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    assert env["channels"] == ["conda-forge"]
    names = [conda_spec(d)[0] for d in env["dependencies"] if isinstance(d, str)]
    assert "python" in names and "pip" in names
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e.[course]" in [line.replace(" ", "") for line in pip]


PYPROJECT = """
[project]
name = "x"
dependencies = ["torch>=2.4", "triton>=3.0; platform_system == 'Linux'"]
[project.optional-dependencies]
course = ["ipywidgets>=8,<9"]
test = ["pytest>=8"]
"""


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (  # all there, in both sections, under the conda name of torch
            "dependencies: [pytorch>=2.4, 'ipywidgets >=8,<9', "
            "{pip: [\"triton>=3.0; platform_system == 'Linux'\", -e .]}]",
            [],
        ),
        ("dependencies: [pytorch>=2.4, ipywidgets>=8]", ["triton", "ipywidgets"]),  # missing, range
        (
            "dependencies: ['ipywidgets>=8,<9', {pip: [torch>=2.5, triton>=3.0]}]",
            ["torch", "triton"],
        ),
        (  # the test extra is not the course's business
            "dependencies: [pytorch>=2.4, 'ipywidgets >=8,<9', {pip: [triton>=3.0]}]",
            ["triton"],
        ),
    ],
)
def test_mismatches_catches_missing_and_different_ranges(env, expected):
    problems = mismatches(PYPROJECT, env)
    assert [p.split(":")[0] for p in problems] == expected, problems
