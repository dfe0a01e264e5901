"""Fault scenarios for the virtual board: a seeded photon-pair source on its pins, timed faults.

A scenario is a TOML file (the standard library reads it: no dependency; YAML would need
PyYAML) with a ``[source]`` table and a list of ``[[fault]]`` tables, each scheduled at a
*device* time: seconds of the board's own clock since it powered up (``at``), so the schedule
means the same on a virtual board that runs fifty times slower than real time as on a real one.
:func:`load` checks it (:class:`ScenarioError`, one line naming the file, the fault and the key);
docs/serve.md ("Fault scenarios") has the format with an example.

The virtual board's pins come from :class:`PairSource`: photon pairs born at ``pair_rate_hz``
(Poisson), photon A detected on channel ``arms[0]`` with probability ``efficiency[0]``, photon B
on ``arms[1]`` with ``efficiency[1]``, each detection delayed by its channel's ``delay_ns`` plus a
Gaussian jitter, uncorrelated counts (darks) on every channel at ``dark_rate_hz``. A detector is
a pulse of ``pulse_ns`` on its pin and is blind for ``dead_time_ns`` after each detection, even
one lost to that dead time itself (a paralysable dead time, so pulses never overlap). The schedule
changes these figures mid-run, without restarting anything (the board's counters go on):

``efficiency``  ``channel``, ``factor`` 0..1: the channel's pair efficiency times ``factor``
                (fiber misalignment), from ``at`` until ``until`` (default: the end).
``dark_rate``   ``channel``, ``factor`` >= 0: its dark rate times ``factor`` (false heralds).
``delay``       ``channel``, ``step_ns`` (a step at ``at``) or ``ramp_ns_per_s`` with ``until``
                (a linear ramp of its delay, kept at the end value after): clock skew.
``dead``        ``channel``: no pulses at all from ``at`` until ``until`` (a dead detector).
``link_drop``   ``seconds`` (wall): the link carries nothing either way (a pulled cable) through
                the fault relay between board and host (:class:`heraldry.sim.faults.FaultRelay`).
``hang``        ``seconds`` (wall): the board stops (SIGSTOP), then goes on (SIGCONT).
``kill``        the board's process is killed (SIGKILL): a board that died.

The first four are applied to the source's detections at their device times, exactly. The last
three act on processes, so they happen when the board *reaches* ``at``: the source streams its
edges into a FIFO the board reads as it goes (``sim/twin/main.cpp`` reads its pins lazily), and
the action is taken once the board has taken every edge before ``at`` out of the pipe, which
leaves it at most its read buffer (512 bytes, about 40 edges) short of ``at``.

:class:`ScenarioBoard` runs it all: FIFO, writer thread, :class:`heraldry.sim.twin.Twin` and
relay; :func:`open_board` opens it as a :class:`heraldry.host.tagger.Tagger`
(``heraldry serve --board sim --scenario FILE``).
"""

import errno
import fcntl
import math
import os
import signal
import tempfile
import termios
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ScenarioError", "Fault", "Source", "Scenario", "FAULT_KINDS", "PROCESS_FAULTS",
           "load", "parse", "PairSource", "ScenarioBoard", "open_board"]

#: Fault kinds that change the source's detections.
SOURCE_FAULTS = ("efficiency", "dark_rate", "delay", "dead")
#: Fault kinds that act on the board's process or its link.
PROCESS_FAULTS = ("link_drop", "hang", "kill")
FAULT_KINDS = SOURCE_FAULTS + PROCESS_FAULTS

# Keys each fault kind takes besides ``kind`` and ``at`` (required ones first, then optional).
_FAULT_KEYS = {
    "efficiency": (("channel", "factor"), ("until",)),
    "dark_rate": (("channel", "factor"), ("until",)),
    "delay": (("channel",), ("step_ns", "ramp_ns_per_s", "until")),
    "dead": (("channel",), ("until",)),
    "link_drop": (("seconds",), ()),
    "hang": (("seconds",), ()),
    "kill": ((), ()),
}
_SOURCE_KEYS = ("pair_rate_hz", "efficiency", "arms", "dark_rate_hz", "delay_ns", "jitter_ns",
                "pulse_ns", "dead_time_ns", "seed")
#: Largest delay (ns) a channel may reach, base plus faults: the source emits its edges this
#: far behind the times it draws, so that a delayed detection is never out of order.
MAX_DELAY_NS = 10_000.0


class ScenarioError(ValueError):
    """A scenario that cannot be run. The message is one line, for the user."""


@dataclass(frozen=True)
class Fault:
    """One scheduled fault (the module docstring's kinds). Times in device seconds, except
    ``seconds`` (wall) of ``link_drop`` and ``hang``."""
    kind: str
    at: float
    channel: int = None
    factor: float = None
    until: float = math.inf
    step_ns: float = 0.0
    ramp_ns_per_s: float = 0.0
    seconds: float = 0.0

    def active(self, t):
        """Boolean array: ``at <= t < until``."""
        return (t >= self.at) & (t < self.until)


@dataclass(frozen=True)
class Source:
    """The photon-pair source before any fault (module docstring). Per-channel lists have one
    value per board channel."""
    pair_rate_hz: float = 2e5
    efficiency: tuple = (0.5, 0.5)
    arms: tuple = (0, 1)
    dark_rate_hz: tuple = (1e3, 1e3, 1e3, 1e3)
    delay_ns: tuple = (0.0, 0.0, 0.0, 0.0)
    jitter_ns: float = 0.5
    pulse_ns: float = 20.0
    dead_time_ns: float = 50.0
    seed: int = 0


@dataclass(frozen=True)
class Scenario:
    """A checked scenario: ``source`` and ``faults`` (sorted by ``at``), for ``channels``."""
    source: Source
    faults: tuple
    channels: int
    name: str = "scenario"

    def source_faults(self):
        return [f for f in self.faults if f.kind in SOURCE_FAULTS]

    def process_faults(self):
        return [f for f in self.faults if f.kind in PROCESS_FAULTS]


def load(path, channels=4):
    """Read and check a scenario file (:class:`ScenarioError`, one line naming the file)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ScenarioError(f"cannot read scenario {path}: {error.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(f"scenario {path}: not TOML: {error}") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"scenario {path}: not text") from None
    return parse(data, channels, name=str(path))


def _number(where, key, value, low=-math.inf, high=math.inf, integer=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise ScenarioError(f"{where}: {key} must be {kind}, not {value!r}")
    if not (low <= value <= high) or value != value:
        raise ScenarioError(f"{where}: {key} must be {low:g}..{high:g}, not {value!r}")
    return value


def _per_channel(where, key, value, channels, low, high):
    if isinstance(value, list):
        if len(value) != channels:
            raise ScenarioError(f"{where}: {key} needs {channels} values (one per channel), "
                                f"not {len(value)}")
        return tuple(float(_number(where, f"{key}[{i}]", v, low, high))
                     for i, v in enumerate(value))
    return (float(_number(where, key, value, low, high)),) * channels


def parse(data, channels=4, name="scenario"):
    """Check a scenario given as a dict (what the TOML file holds); returns a
    :class:`Scenario`. ``channels``: the board's inputs (channel numbers must be below)."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{name}: a scenario is a table with [source] and [[fault]]s")
    unknown = sorted(set(data) - {"source", "fault"})
    if unknown:
        raise ScenarioError(f"{name}: unknown table {unknown[0]!r}; a scenario has [source] "
                            f"and [[fault]]")
    raw = data.get("source", {})
    where = f"{name} [source]"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: must be a table")
    unknown = sorted(set(raw) - set(_SOURCE_KEYS))
    if unknown:
        raise ScenarioError(f"{where}: unknown key {unknown[0]!r}; use "
                            f"{', '.join(_SOURCE_KEYS)}")
    base = Source()
    kw = {}
    if "pair_rate_hz" in raw:
        kw["pair_rate_hz"] = float(_number(where, "pair_rate_hz", raw["pair_rate_hz"], 0, 1e8))
    if "efficiency" in raw:
        eff = raw["efficiency"]
        if not isinstance(eff, list) or len(eff) != 2:
            raise ScenarioError(f"{where}: efficiency is [arm A, arm B], two numbers 0..1")
        kw["efficiency"] = tuple(float(_number(where, "efficiency", v, 0, 1)) for v in eff)
    arms = raw.get("arms", list(base.arms))
    if not isinstance(arms, list) or len(arms) != 2:
        raise ScenarioError(f"{where}: arms is [channel of A, channel of B]")
    arms = tuple(_number(where, "arms", a, 0, channels - 1, integer=True) for a in arms)
    if arms[0] == arms[1]:
        raise ScenarioError(f"{where}: arms must be two different channels, not {list(arms)}")
    kw["arms"] = arms
    kw["dark_rate_hz"] = _per_channel(where, "dark_rate_hz", raw.get("dark_rate_hz", 1e3),
                                      channels, 0, 1e8)
    kw["delay_ns"] = _per_channel(where, "delay_ns", raw.get("delay_ns", 0.0), channels,
                                  -MAX_DELAY_NS, MAX_DELAY_NS)
    for key, high in (("jitter_ns", 100.0), ("pulse_ns", 1e4), ("dead_time_ns", 1e6)):
        if key in raw:
            kw[key] = float(_number(where, key, raw[key], 0, high))
    if "seed" in raw:
        kw["seed"] = _number(where, "seed", raw["seed"], 0, 2 ** 63 - 1, integer=True)
    source = Source(**{**base.__dict__, **kw})
    if source.pulse_ns <= 0:
        raise ScenarioError(f"{where}: pulse_ns must be more than 0")
    if source.dead_time_ns < source.pulse_ns + 10.0:
        raise ScenarioError(f"{where}: dead_time_ns must be at least pulse_ns + 10 (a pulse "
                            f"and one clock period low), not {source.dead_time_ns:g}")

    raw_faults = data.get("fault", [])
    if not isinstance(raw_faults, list):
        raise ScenarioError(f"{name}: faults are [[fault]] tables")
    faults = []
    for i, raw in enumerate(raw_faults, start=1):
        faults.append(_fault(f"{name} fault {i}", raw, channels))
    faults.sort(key=lambda f: f.at)
    for i, f in enumerate(raw_faults, start=1):
        if f.get("kind") == "efficiency" and f.get("channel") not in source.arms:
            raise ScenarioError(f"{name} fault {i} (efficiency): channel {f['channel']} is no "
                                f"arm of the pair source (arms {list(source.arms)})")
    kills = [f for f in faults if f.kind == "kill"]
    if kills and any(f.at > kills[0].at for f in faults if f.kind in PROCESS_FAULTS):
        raise ScenarioError(f"{name}: a fault after the kill at {kills[0].at:g} s can never "
                            f"happen")
    _check_delays(name, source, faults, channels)
    return Scenario(source, tuple(faults), channels, name)


def _fault(where, raw, channels):
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: must be a table")
    kind = raw.get("kind")
    if kind not in FAULT_KINDS:
        raise ScenarioError(f"{where}: kind must be one of {', '.join(FAULT_KINDS)}, not "
                            f"{kind!r}")
    where = f"{where} ({kind})"
    required, optional = _FAULT_KEYS[kind]
    allowed = {"kind", "at", *required, *optional}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ScenarioError(f"{where}: unknown key {unknown[0]!r}; use "
                            f"{', '.join(sorted(allowed))}")
    missing = [key for key in ("at", *required) if key not in raw]
    if missing:
        raise ScenarioError(f"{where}: needs {missing[0]}")
    kw = {"kind": kind, "at": float(_number(where, "at", raw["at"], 0, 1e6))}
    if "channel" in raw:
        kw["channel"] = _number(where, "channel", raw["channel"], 0, channels - 1, integer=True)
    if "until" in raw:
        kw["until"] = float(_number(where, "until", raw["until"], 0, 1e6))
        if kw["until"] <= kw["at"]:
            raise ScenarioError(f"{where}: until ({kw['until']:g}) must be after at "
                                f"({kw['at']:g})")
    if kind == "efficiency":
        kw["factor"] = float(_number(where, "factor", raw["factor"], 0, 1))
    elif kind == "dark_rate":
        kw["factor"] = float(_number(where, "factor", raw["factor"], 0, 1e6))
    elif kind == "delay":
        has_step, has_ramp = "step_ns" in raw, "ramp_ns_per_s" in raw
        if has_step == has_ramp:
            raise ScenarioError(f"{where}: give step_ns (a step) or ramp_ns_per_s with until "
                                f"(a ramp)")
        if has_step:
            kw["step_ns"] = float(_number(where, "step_ns", raw["step_ns"], -MAX_DELAY_NS,
                                          MAX_DELAY_NS))
            if "until" in raw:
                raise ScenarioError(f"{where}: a step stays; until is for a ramp")
        else:
            kw["ramp_ns_per_s"] = float(_number(where, "ramp_ns_per_s", raw["ramp_ns_per_s"],
                                                -1e9, 1e9))
            if "until" not in raw:
                raise ScenarioError(f"{where}: a ramp needs until (where it stops)")
    elif kind in ("link_drop", "hang"):
        kw["seconds"] = float(_number(where, "seconds", raw["seconds"], 0.001, 3600))
    return Fault(**kw)


def _check_delays(name, source, faults, channels):
    for ch in range(channels):
        worst = abs(source.delay_ns[ch])
        for f in faults:
            if f.kind == "delay" and f.channel == ch:
                worst += abs(f.step_ns) + abs(f.ramp_ns_per_s) * (f.until - f.at)
        if worst > MAX_DELAY_NS:
            raise ScenarioError(f"{name}: channel {ch}'s delay could reach {worst:g} ns; the "
                                f"source allows {MAX_DELAY_NS:g}")


class PairSource:
    """The scenario's detections as pin edges, generated chunk by chunk in device time.

    ``edges(t0, t1)`` returns the edges of every detection drawn for source times
    ``t0 <= t < t1`` that are certain to come before any later one (the rest are held for the
    next call), as an int64 array of rows ``(cycle, channel, level)`` sorted by cycle, then a
    marker row (see :meth:`marker`). Calls must follow each other (``t0`` the last ``t1``).
    Same seed, same calls: same edges.

    Members: ``detections`` (pulses emitted so far, per channel), ``pairs`` (born so far).
    """

    def __init__(self, scenario, clock_hz=100_000_000):
        self.scenario = scenario
        self.source = scenario.source
        self.clock_hz = clock_hz
        self.channels = scenario.channels
        self._rng = np.random.default_rng(self.source.seed)
        self._faults = scenario.source_faults()
        # Everything drawn for source times before t is emitted once the emit limit passes
        # t + guard: no later draw can land before it.
        jitter = 8 * self.source.jitter_ns
        self._guard = int(math.ceil((MAX_DELAY_NS + jitter) * 1e-9 * clock_hz)) + 2
        self._pulse = max(1, int(round(self.source.pulse_ns * 1e-9 * clock_hz)))
        self._dead = max(self._pulse + 1, int(round(self.source.dead_time_ns * 1e-9 * clock_hz)))
        self._held_det = [np.zeros(0, np.int64) for _ in range(self.channels)]
        self._last_raw = [-(1 << 62)] * self.channels   # last photon per channel (dead time)
        self._held_edges = np.zeros((0, 3), np.int64)
        self._high = [False] * self.channels
        self.detections = [0] * self.channels
        self.pairs = 0

    # -- the schedule at times t (arrays, device seconds) --------------------------------------

    def efficiency(self, channel, t):
        arm = self.source.arms.index(channel)
        eff = np.full(len(t), self.source.efficiency[arm])
        for f in self._faults:
            if f.kind == "efficiency" and f.channel == channel:
                eff = np.where(f.active(t), eff * f.factor, eff)
        return eff

    def dark_rate(self, channel, t):
        rate = np.full(len(t), self.source.dark_rate_hz[channel])
        for f in self._faults:
            if f.kind == "dark_rate" and f.channel == channel:
                rate = np.where(f.active(t), rate * f.factor, rate)
        return rate

    def delay_ns(self, channel, t):
        delay = np.full(len(t), self.source.delay_ns[channel])
        for f in self._faults:
            if f.kind == "delay" and f.channel == channel:
                if f.ramp_ns_per_s:
                    delay = delay + f.ramp_ns_per_s * np.clip(t - f.at, 0.0, f.until - f.at)
                else:
                    delay = delay + np.where(t >= f.at, f.step_ns, 0.0)
        return delay

    def alive(self, channel, t):
        ok = np.ones(len(t), bool)
        for f in self._faults:
            if f.kind == "dead" and f.channel == channel:
                ok &= ~f.active(t)
        return ok

    def max_dark_rate(self, channel, t0, t1):
        rate = self.source.dark_rate_hz[channel]
        for f in self._faults:
            if f.kind == "dark_rate" and f.channel == channel and f.at < t1 and f.until > t0:
                rate *= max(1.0, f.factor)
        return rate

    # -- generation --------------------------------------------------------------------------

    def edges(self, t0, t1):
        rng, src, clk = self._rng, self.source, self.clock_hz
        n = rng.poisson(src.pair_rate_hz * (t1 - t0))
        born = np.sort(rng.uniform(t0, t1, n))
        self.pairs += n
        fresh = [[] for _ in range(self.channels)]
        for ch in src.arms:
            fresh[ch].append(born[rng.random(n) < self.efficiency(ch, born)])
        for ch in range(self.channels):
            top = self.max_dark_rate(ch, t0, t1)
            m = rng.poisson(top * (t1 - t0))
            t = rng.uniform(t0, t1, m)
            fresh[ch].append(t[rng.random(m) * top < self.dark_rate(ch, t)] if m else t)
        limit = int(math.floor(t1 * clk)) - self._guard
        rows = [self._held_edges]
        for ch in range(self.channels):
            t = np.concatenate(fresh[ch])
            t = t[self.alive(ch, t)]
            at = t + (self.delay_ns(ch, t) + rng.normal(0.0, src.jitter_ns, len(t))) * 1e-9
            cycles = np.floor(np.maximum(at, 0.0) * clk).astype(np.int64)
            cycles = np.sort(np.concatenate([self._held_det[ch], cycles]))
            ready = cycles < limit
            self._held_det[ch] = cycles[~ready]
            cycles = cycles[ready]
            # Paralysable dead time: a detection within dead cycles of the one before it (kept
            # or itself lost) is lost, so kept pulses are always a pulse and a low cycle apart.
            previous = np.concatenate([[self._last_raw[ch]], cycles[:-1]])
            keep = cycles - previous >= self._dead
            if len(cycles):
                self._last_raw[ch] = int(cycles[-1])
            cycles = cycles[keep]
            self.detections[ch] += len(cycles)
            rows.append(np.stack([cycles, np.full(len(cycles), ch), np.ones(len(cycles),
                                                                           np.int64)], 1))
            rows.append(np.stack([cycles + self._pulse, np.full(len(cycles), ch),
                                  np.zeros(len(cycles), np.int64)], 1))
        every = np.concatenate(rows)
        every = every[np.argsort(every[:, 0], kind="stable")]
        ready = every[:, 0] < limit
        self._held_edges = every[~ready]
        out = every[ready]
        for ch in range(self.channels):
            mine = out[out[:, 1] == ch]
            if len(mine):
                self._high[ch] = bool(mine[-1, 2])
        return np.concatenate([out, self.marker(max(limit, 0))[None, :]])

    def marker(self, cycle):
        """A row that sets channel 0 to the level it has at ``cycle``: no change on the pins,
        but it tells the board how far the source has got, so a stretch without any edge
        still paces the board (it reads the pins file as it goes)."""
        return np.array([cycle, 0, int(self._high[0])], np.int64)


def format_edges(rows):
    """The pins file's lines for rows ``(cycle, channel, level)``."""
    return "".join(f"{c} {ch} {lv}\n" for c, ch, lv in rows.tolist())


#: Device seconds of source per chunk the writer draws and streams.
CHUNK_S = 1e-3


class ScenarioBoard:
    """A virtual board whose pins play a scenario (module docstring), behind a fault relay.

    Parameters
    ----------
    scenario : Scenario
    binary : path-like, optional
        The virtual board's executable (:func:`heraldry.sim.twin.build_twin`, built if
        omitted, with ``scenario.channels`` inputs).
    baud : int
        The board's UART rate.

    Members (after :meth:`start`): ``port`` (the relay's pty: what the host opens), ``twin``,
    ``relay``, ``source`` (the :class:`PairSource`), ``log`` (``[(device seconds, kind,
    wall monotonic time), ...]`` of the process faults taken), ``error`` (an exception that
    ended the writer, if one did). :meth:`stop` ends everything (what
    :meth:`heraldry.host.tagger.Tagger.close` calls on a ``twin``).
    """

    def __init__(self, scenario, binary=None, *, baud=12_000_000, clock_hz=100_000_000):
        self.scenario = scenario
        self.binary = binary
        self.baud = baud
        self.clock_hz = clock_hz
        self.port = self.twin = self.relay = None
        self.source = PairSource(scenario, clock_hz)
        self.log = []
        self.error = None
        self._stopping = threading.Event()
        self._timers = []
        self._dir = None
        self._thread = None

    def start(self):
        from .faults import FaultRelay
        from .twin import Twin, build_twin
        binary = self.binary
        if binary is None:
            binary = build_twin(self.scenario.channels, 2, self.clock_hz, self.baud)
        self._dir = tempfile.mkdtemp(prefix="heraldry-scenario-")
        fifo = os.path.join(self._dir, "pins")
        os.mkfifo(fifo, 0o600)
        self._thread = threading.Thread(target=self._write, args=(fifo,),
                                        name="scenario-source", daemon=True)
        self._thread.start()
        try:
            self.twin = Twin(binary, pins=fifo)
            if self.twin.channels != self.scenario.channels:
                raise ScenarioError(f"the scenario is for {self.scenario.channels} channels, "
                                    f"the board has {self.twin.channels}")
            self.twin.start()
            self.relay = FaultRelay(self.twin.port).start()
        except BaseException:
            self.stop()
            raise
        self.port = self.relay.port
        return self

    def stop(self, timeout=10.0):
        """Stop the writer, the relay and the board (idempotent); returns the board's exit
        status (None if it never started)."""
        self._stopping.set()
        for timer in self._timers:
            timer.cancel()
        code = None
        if self.relay is not None:
            self.relay.close()
        if self.twin is not None:
            code = self.twin.stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._dir is not None:
            for name in os.listdir(self._dir):
                os.unlink(os.path.join(self._dir, name))
            os.rmdir(self._dir)
            self._dir = None
        return code

    # -- the writer thread -------------------------------------------------------------------

    def _open_fifo(self, path):
        # A FIFO opened for writing without a reader fails (non-blocking) or hangs (blocking):
        # wait for the board to open it, or for stop().
        while not self._stopping.is_set():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as error:
                if error.errno != errno.ENXIO:
                    raise
                time.sleep(0.005)
                continue
            os.set_blocking(fd, True)
            try:
                # The smallest pipe: the board is never far behind what was written.
                fcntl.fcntl(fd, _F_SETPIPE_SZ, 4096)
            except OSError:
                pass
            return fd
        return None

    def _write(self, path):
        try:
            fd = self._open_fifo(path)
            if fd is None:
                return
            with os.fdopen(fd, "w", buffering=1 << 16) as pipe:
                pending = list(self.scenario.process_faults())
                t = 0.0
                while not self._stopping.is_set():
                    while pending and pending[0].at <= t:
                        pipe.flush()
                        self._wait_drained(fd)
                        if not self._take(pending.pop(0), t):
                            return
                    t1 = t + CHUNK_S
                    pipe.write(format_edges(self.source.edges(t, t1)))
                    pipe.flush()
                    t = t1
        except BrokenPipeError:
            pass                    # the board has exited
        except Exception as error:  # noqa: BLE001 (kept for the owner; the board runs dry)
            self.error = error

    def _wait_drained(self, fd, timeout=10.0):
        """Until the board has read everything in the pipe (its own read buffer aside)."""
        deadline = time.monotonic() + timeout
        buf = bytearray(4)
        while not self._stopping.is_set() and time.monotonic() < deadline:
            fcntl.ioctl(fd, termios.FIONREAD, buf)
            if int.from_bytes(buf, "little") == 0:
                return
            time.sleep(0.001)

    def _take(self, fault, t):
        """Do a process fault now (the board at device time ``t``, about); False: the board
        is gone, stop writing."""
        self.log.append((t, fault.kind, time.monotonic()))
        if fault.kind == "kill":
            self.twin.signal(signal.SIGKILL)
            return False
        if fault.kind == "hang":
            self.twin.signal(signal.SIGSTOP)
            self._later(fault.seconds, self.twin.signal, signal.SIGCONT)
        elif fault.kind == "link_drop":
            self.relay.cut = True
            self._later(fault.seconds, setattr, self.relay, "cut", False)
        return True

    def _later(self, seconds, function, *args):
        timer = threading.Timer(seconds, function, args)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()


_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def open_board(scenario, *, binary=None, baud=12_000_000, timeout=3.0):
    """Start a :class:`ScenarioBoard` and open it as a :class:`heraldry.host.tagger.Tagger`
    (named ``sim``; closing the tagger stops the board). Raises what
    :func:`heraldry.host.tagger.open` raises for the virtual board."""
    from ..host.driver import Device
    from ..host.tagger import Tagger
    from ..host.transport import SerialTransport
    board = ScenarioBoard(scenario, binary, baud=baud).start()
    try:
        device = Device(SerialTransport(board.port, baud), timeout=timeout, retries=3)
        try:
            device.identify()
        except BaseException:
            device.close()
            raise
    except BaseException:
        board.stop()
        raise
    return Tagger(device, name="sim", baud=baud, twin=board)
