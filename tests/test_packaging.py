"""The built-in profiles, spaces and experiments resolve by name from an installed wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

CHECK = """
import search
from search.config import load_experiment
from search.hardware import load_profile
from search.study import load_space
assert search.__file__.startswith({root!r}), search.__file__
exp = load_experiment("quickstart")
assert "_builtin" in exp.source, exp.source
assert load_profile(exp.target).name == "mcu"
assert load_space(exp).name == "joint"
print("ok", sorted(p for p in ("phone", "mcu", "cloud_gpu", "host") if load_profile(p)))
"""

# Import every module of the installed packages (search.export reaches search.review, left out
# of an early wheel).
IMPORT_ALL = """
import importlib, pkgutil, search, spaces
assert search.__file__.startswith({root!r}), search.__file__
for pkg in (search, spaces):
    for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if not mod.name.endswith("__main__"):  # running it is the CLI
            importlib.import_module(mod.name)
import search.export, search.cli
"""


def test_builtins_resolve_from_an_installed_wheel(tmp_path: Path):
    wheels = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
        ],
        check=True,
    )
    (wheel,) = wheels.glob("*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip install lays into site-packages
    names = {p.relative_to(site).as_posix() for p in site.rglob("*.yaml")}
    assert {
        "spaces/joint.yaml",
        "search/_builtin/experiments/quickstart.yaml",
        "search/_builtin/hardware_profiles/mcu.yaml",
    } <= names
    away = tmp_path / "elsewhere"  # not a checkout: nothing to find beside the code
    away.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", CHECK.format(root=str(site))],
        cwd=away,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")
    # Every package of the source tree is in the wheel, and every module imports from it.
    for root in ("search", "spaces"):
        for init in (REPO / root).rglob("__init__.py"):
            package = init.parent.relative_to(REPO)
            assert (site / package / "__init__.py").is_file(), f"{package} is not in the wheel"
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL.format(root=str(site))],
        cwd=away,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
