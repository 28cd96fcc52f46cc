"""Packaging: the wheel ships every module and every Lua file, a fresh venv with only the
wheel runs `gate demo` to `result OK`, and an editable install reads the repository's
lua/, so an edit there takes effect without a reinstall.

The slow tests build in a copy of the source (the repository stays clean) and install
from the configured package index."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import gate
from gate.room.scripts import lua_root

REPO = Path(__file__).resolve().parent.parent
LUA = REPO / "lua"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
SOURCE = ("pyproject.toml", "README.md", "gate", "lua")  # what a build reads
INSTALL_TIMEOUT_S = 300
RUN_TIMEOUT_S = 120


def lua_files() -> list[str]:
    """Every Lua file, relative to lua/ (e.g. `admit.lua`, `lib/money.lua`)."""
    return sorted(path.relative_to(LUA).as_posix() for path in LUA.rglob("*.lua"))


def python_modules() -> list[str]:
    """Every Python file of the gate package, as its path inside a wheel."""
    return sorted(
        path.relative_to(REPO).as_posix()
        for path in (REPO / "gate").rglob("*.py")
        if "__pycache__" not in path.parts
    )


def expected_packages() -> set[str]:
    """gate's packages (directories with an __init__.py) and the Lua tree's directories."""
    packages = {
        ".".join(path.parent.relative_to(REPO).parts)
        for path in (REPO / "gate").rglob("__init__.py")
        if "__pycache__" not in path.parts
    }
    for path in LUA.rglob("*.lua"):
        packages.add(".".join(("gate", "lua", *path.parent.relative_to(LUA).parts)))
    return packages


def test_pyproject_names_every_package_and_every_lua_directory() -> None:
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert set(setuptools["packages"]) == expected_packages()
    assert setuptools["package-dir"] == {"gate.lua": "lua"}
    # Each directory of Lua files ships its *.lua; nothing names a file that does not exist.
    data = setuptools["package-data"]
    for package in expected_packages():
        if _is_lua(package):
            assert "*.lua" in data.get(package, []), package
    for package, patterns in data.items():
        for pattern in patterns:
            assert list(_directory(package).glob(pattern)), f"{package}: {pattern} matches nothing"


def _is_lua(package: str) -> bool:
    return package == "gate.lua" or package.startswith("gate.lua.")


def _directory(package: str) -> Path:
    parts = package.split(".")
    return LUA.joinpath(*parts[2:]) if _is_lua(package) else REPO.joinpath(*parts)


def test_this_install_reads_the_repository_lua_tree() -> None:
    """With the editable install (`make`), the loader's root is lua/ itself, not a copy:
    what the gate loads is what is in the working tree now."""
    if Path(gate.__file__).resolve().parent != REPO / "gate":
        pytest.skip("gate is not installed from this working tree (not an editable install)")
    assert Path(str(lua_root())).resolve() == LUA


def _source_copy(target: Path) -> None:
    for name in SOURCE:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(
                source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copy2(source, target / name)


def _environment() -> dict[str, str]:
    """This process's environment without what points Python at this repository's venv."""
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(
    args: list[str | Path], cwd: Path, timeout_s: float = INSTALL_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def _fresh_venv(path: Path, *, our_dependencies: bool = False) -> Path:
    """A new venv without pip of its own (ensurepip costs seconds): `_pip` installs into it
    with this venv's pip. `our_dependencies`: it also sees this venv's installed packages (a
    path line in a .pth file: their own .pth files, such as this repository's editable
    finder, are not run), for a test about something else than dependency resolution."""
    _run([sys.executable, "-m", "venv", "--without-pip", path], cwd=path.parent)
    python = path / "bin" / "python"
    if our_dependencies:
        site = _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], path
        )
        ours = sysconfig.get_paths()["purelib"]
        (Path(site.stdout.strip()) / "fairgate-test-dependencies.pth").write_text(ours + "\n")
    return python


def _pip(python: Path, *args: str | Path, cwd: Path) -> None:
    """`pip install ARGS` into the venv of `python`, run by this venv's pip (--python).
    --no-compile: no .pyc written for every installed file (most of an install's time);
    a module the test imports is compiled when it is imported, as usual."""
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile", *args],
        cwd,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    _source_copy(source)
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", work / "dist"], source)
    (built,) = (work / "dist").glob("fairgate-*.whl")
    yield built


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_every_lua_file(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    missing = [f"gate/lua/{name}" for name in lua_files() if f"gate/lua/{name}" not in names]
    assert missing == []
    missing = [module for module in python_modules() if module not in names]
    assert missing == []
    assert "gate/lua/__init__.py" in names
    assert "gate/py.typed" in names
    # the waiting page's script and style sheet (served from the package)
    static = {f"gate/http/static/{n}" for n in ("fairgate.js", "page.js", "fairgate.css")}
    assert static <= names
    assert not [name for name in names if name.startswith(("lua/", "tests/"))]


@pytest.mark.slow
def test_a_fresh_venv_with_the_wheel_runs_the_demo(wheel: Path, tmp_path: Path) -> None:
    python = _fresh_venv(tmp_path / "venv")
    extra = "" if shutil.which("redis-server") else "[embedded]"
    _pip(python, f"{wheel}{extra}", cwd=tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    # The Lua the demo runs is the wheel's copy inside the venv, not this repository's.
    where = _run(
        [python, "-c", "import importlib.resources as r; print(r.files('gate.lua'))"], cwd=run
    )
    assert Path(where.stdout.strip()).resolve().is_relative_to((tmp_path / "venv").resolve())
    # The nginx baseline row is left out (half of the demo's time here; it runs in
    # tests/test_demo_scenarios.py): its module must still import with only the
    # wheel's dependencies.
    _run([python, "-c", "import gate.demo.baseline_nginx"], cwd=run)
    demo = _run(
        [tmp_path / "venv" / "bin" / "gate", "demo", "--customers", "40", "--rate", "40",
         "--no-baseline", "--out", run / "out"],
        cwd=run,
        timeout_s=RUN_TIMEOUT_S,
    )  # fmt: skip
    assert re.search(r"^\s*result\s+OK\s*$", demo.stdout, re.MULTILINE), demo.stdout
    assert (run / "out" / "special-deposit.json").is_file()  # the default scenario


@pytest.mark.slow
def test_an_editable_install_sees_an_edit_in_lua_without_a_reinstall(tmp_path: Path) -> None:
    """`pip install -e .` as `make` does it, in a copy of the source: editing a lib there
    changes the scripts the loader renders, in a new process, with no reinstall."""
    source = tmp_path / "src"
    source.mkdir()
    _source_copy(source)
    # the dependencies are this venv's (test_a_fresh_venv_with_the_wheel_runs_the_demo
    # resolves them from the index): only the editable install itself is made here
    python = _fresh_venv(tmp_path / "venv", our_dependencies=True)
    _pip(python, "--no-deps", "-e", source, cwd=tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    probe = f"-- edited {uuid.uuid4().hex}"
    show = (
        "from gate.room.scripts import lua_root, render; print(lua_root()); print(render('block'))"
    )

    before = _run([python, "-c", show], cwd=run).stdout
    assert Path(before.splitlines()[0]).resolve() == (source / "lua").resolve()
    assert probe not in before
    common = source / "lua" / "lib" / "common.lua"
    common.write_text(common.read_text(encoding="utf-8") + probe + "\n", encoding="utf-8")
    after = _run([python, "-c", show], cwd=run).stdout
    assert probe in after
