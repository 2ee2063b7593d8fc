"""The commands a user types: the console scripts on root's PATH and the card's
``python3 -m testbed`` from the repository with a Python that lacks the dependencies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

SYSTEM_PYTHON = "/usr/bin/python3"


def _lacks_dependencies(python: str) -> bool:
    return subprocess.run([python, "-c", "import pyroute2"], capture_output=True).returncode != 0


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists() or not _lacks_dependencies(SYSTEM_PYTHON),
                    reason="needs a system python3 without the project's dependencies")
@pytest.mark.parametrize("argv, expect", [
    (["-m", "testbed", "topologies"], "cluster"),
    (["-m", "analysis", "--help"], "publish"),
    (["-m", "loadgen", "--help"], "sweep"),
])
def test_the_system_python_reexecutes_in_the_project_environment(argv, expect):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "TCPS_REEXEC")}
    proc = subprocess.run([SYSTEM_PYTHON, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert expect in proc.stdout


def test_without_an_environment_one_line_says_how_to_make_it(tmp_path):
    """A copy of the package with no .venv beside it: no traceback, the set-up named."""
    if not _lacks_dependencies(SYSTEM_PYTHON):
        pytest.skip("the system python3 has the dependencies")
    shutil.copytree(ROOT / "testbed", tmp_path / "testbed", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([SYSTEM_PYTHON, "-m", "testbed", "status"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={"PATH": os.environ.get("PATH", "")})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "pyroute2" in proc.stderr and "setup.sh" in proc.stderr and len(proc.stderr.splitlines()) == 1


@pytest.mark.parametrize("command, expect", [("testbed", "topologies"), ("testbed-analysis", "publish"),
                                             ("testbed-loadgen", "sweep")])
def test_setup_put_the_console_scripts_on_roots_path(command, expect):
    found = shutil.which(command, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    assert found, f"{command} is not on root's PATH: scripts/setup.sh links it into /usr/local/bin"
    assert Path(found).resolve().parent == (ROOT / ".venv" / "bin").resolve(), found
    proc = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and expect in proc.stdout, proc.stderr


def test_printed_hints_name_commands_that_work():
    """No hint says `python -m testbed` (Debian 12 has no `python`)."""
    offenders = []
    for path in (ROOT / "testbed").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "python -m testbed " in line and ("print(" in line or "Error(" in line or "f\"" in line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.slow
def test_an_installed_package_finds_its_topologies_and_experiments(tmp_path):
    """A wheel (not the editable install) carries the shipped YAML files: imported from an
    unpacked wheel, far from the repository, the package lists and loads them."""
    import zipfile
    src = tmp_path / "src"  # built from a copy: setuptools writes build/ into the tree it builds
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("testbed", "loadgen", "analysis"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "testbed/topologies/cluster.yaml" in names and "testbed/experiments/paper-cluster.yaml" in names
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = ("from testbed.describe.topology import available_topologies, load_topology\n"
            "from testbed.describe.experiment import available_experiments, load_experiment\n"
            "import testbed\n"
            "assert testbed.__file__.startswith(%r), testbed.__file__\n"
            "print(available_topologies(), available_experiments(), load_experiment('quick').name,\n"
            "      load_topology('smp').name)\n") % str(tmp_path / "site")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(tmp_path / "site"), "PATH": os.environ.get("PATH", "")})
    assert proc.returncode == 0, proc.stderr
    assert "'cluster'" in proc.stdout and "'paper-cluster'" in proc.stdout and "quick smp" in proc.stdout
