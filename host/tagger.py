"""The instrument API: open a board, run it, measure while it runs.

::

    import heraldry
    with heraldry.open("sim") as tagger:                  # or "/dev/ttyUSB1", "replay:run.ptu"
        settings = heraldry.Settings(window_ns=20, delays_ns={1: 10}, heralds=[0b11],
                                     test_signal="pairs")
        with tagger.run(settings, duration=0.05) as run:
            g2 = heraldry.Correlation(run, 0, 1, bin_ps=10_000, range_ps=200_000)
            for block in run:                             # decoded blocks, times from the start
                print(run.rates["singles_hz"])
        print(run.counters["singles"], g2.result().g2)

Three layers, as in the command line (which is a thin user of this one):

* :func:`open` returns a :class:`Tagger`: a board that has identified itself (channels, rules,
  bin, clock, capabilities) behind its link, or a recorded file played as one.
* :class:`Settings` are what the user means, in nanoseconds (window, delays, dead times), edges,
  herald rules and the test signal (**off** unless asked for). :meth:`Tagger.acquisition`
  turns them into an :class:`~heraldry.host.config.Acquisition` in the board's bins, with the
  command line's checks and messages (the setting's name in place of the option's); a value
  that is not a whole number of bins is rounded and said so (:attr:`Run.notes`, and a
  :class:`SettingsNote` warning), never silently.
* :meth:`Tagger.run` returns a :class:`Run`: configure, clear, start; iterating it yields
  :class:`~heraldry.host.events.Block` s with times in picoseconds from the run start (the
  ``control.now`` count read just before the start command, as for ``heraldry acquire``);
  :attr:`Run.counters` and :attr:`Run.rates` follow the board's STATUS snapshots (no counter
  reads while it runs); leaving the ``with`` block stops the board, waits until the last record
  is in and verified, and reads the counters once more (:attr:`Run.counters`,
  :attr:`Run.checks`). Measurement objects of :mod:`heraldry.host.measure` built with the run as
  their first argument are fed every block the run collects.

Boards and baud rates: ``"sim"`` starts the Verilated virtual board (100 MHz, 12 Mbaud; built
with gates as the ULX3S: ``sync``, ``gates``, ``reference`` settings work on it). A
serial port takes ``baud`` if given, else the baud of ``board`` (a name from
:data:`BOARD_BAUDS`: ``icebreaker``, ``ulx3s-85f``, ``ulx3s-25f``), else tries the
known rates (:func:`known_bauds`: the real boards' 3 Mbaud first, then the virtual board's 12
Mbaud) with a short timeout each and keeps the first that identifies. ``"replay:FILE.ptu"``
plays a PTU T2 file (ours or PicoQuant's, :mod:`heraldry.host.replay`).
"""

import math
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from .. import protocol
from ..model.core import STREAM_MODES, HeraldRule
from ..protocol import Kind
from .config import (Acquisition, ConfigError, EDGES, TEST_SIGNALS, herald_rule, ns_to_bins,
                     parse_herald, parse_mask)
from .events import EVENT_DTYPE, Block

__all__ = ["open", "Tagger", "Settings", "Run", "SettingsNote", "known_bauds", "BOARD_BAUDS",
           "REPLAY_PREFIX", "SIM_BOARD", "VIRTUAL_BOARDS", "settings_to_acquisition",
           "sim_identity", "option_message"]

REPLAY_PREFIX = "replay:"

#: The virtual boards, by the name ``--board`` takes: ``sim``, the Verilated board behind a
#: pseudo-terminal (``open("sim")``, UART at 12 Mbaud), and ``sim-inprocess``, the core alone in
#: the Amaranth simulator without a link (``heraldry acquire`` only). Both have the generic PHY
#: at 100 MHz (one bin 10 ns, no fine bits), 2 herald rules and 4 channels unless told; ``sim``
#: is built with the gates option as the ULX3S is (channel roles, sync, gates, markers:
#: capability bit 3), ``sim-inprocess`` without it. A real board describes itself; the host
#: knows only its UART rate (:data:`BOARD_BAUDS`).
VIRTUAL_BOARDS = {
    "sim": {"clock_hz": 100_000_000, "fine_bits": 0, "rules": 2, "channels": 4,
            "baud": 12_000_000, "gates": True},
    "sim-inprocess": {"clock_hz": 100_000_000, "fine_bits": 0, "rules": 2, "channels": 4},
}
#: The virtual board of ``open("sim")``.
SIM_BOARD = VIRTUAL_BOARDS["sim"]

#: Seconds per identification attempt while probing baud rates (a board answers in
#: microseconds; a wrong rate gets no valid reply at all).
PROBE_TIMEOUT_S = 0.25

#: Default interval between the board's counter snapshots during a run (device seconds), made
#: longer where the snapshots would take more than :data:`STATUS_LINK_SHARE` of the link.
STATUS_INTERVAL_S = 0.02
STATUS_LINK_SHARE = 0.02

#: UART bits per byte (8N1).
_BITS_PER_BYTE = 10


def _status_record_bytes():
    """Bytes of one STATUS record on the link (a fixed-length control record, the same for
    every channel and rule count)."""
    from ..wire import WireFormat
    return WireFormat(1, 1).fixed_bytes[protocol.WireKind.STATUS]


class SettingsNote(UserWarning):
    """A setting was adjusted to what the board can do (a time rounded to whole bins)."""


#: UART rate of each real board (``heraldry.boards.BOARDS``, whose platforms need the ``build``
#: extra: the host must know the rates without it; tests/test_api.py checks they agree).
BOARD_BAUDS = {"icebreaker": 3_000_000, "ulx3s-85f": 3_000_000, "ulx3s-25f": 3_000_000}


def known_bauds():
    """UART rates to try on a serial port with no board named: every real board's rate
    (:data:`BOARD_BAUDS`, 3 Mbaud for all), then the virtual board's 12 Mbaud."""
    bauds = sorted(set(BOARD_BAUDS.values()))
    return bauds + [b for b in (SIM_BOARD["baud"],) if b not in bauds]


# -- settings ------------------------------------------------------------------------------------

@dataclass
class Settings:
    """What to measure, in lab units. Checked against a board by :meth:`Tagger.acquisition`.

    Members
    -------
    window_ns : float or None
        Coincidence window; ``None``: one clock cycle.
    delays_ns, dead_times_ns : dict
        ``{channel: ns}``; channels not named get 0.
    edges : dict
        ``{channel: "rising" | "falling" | "both"}``; default rising.
    disabled : sequence of int
        Channels to ignore.
    heralds : sequence of int, str or HeraldRule
        One herald rule each: a channel mask (``0b011``, ``3`` or ``"0b011"``: those channels
        required, early, no veto), the command line's form (``"D0&D3&!D1&!D2,exact,pin=0"``,
        see ``heraldry acquire --help``) or a :class:`heraldry.model.HeraldRule`.
    herald_width : int
        Herald output pulse, clock cycles.
    record_coincidences : sequence of int or str
        Patterns whose every window is also streamed as a COINCIDENCE record.
    test_signal : str
        ``"off"`` (the pins, the default), ``"pairs"`` (channel 0 and 1 the arms of a pair
        source, dark counts elsewhere), ``"periodic"`` (every channel every ``period_ns``) or
        ``"bsm"`` (a Bell-state measurement: detectors D0 .. D3 on channels 0 .. 3, the sync
        every ``period_ns`` on channel 4; needs 4 channels, 5 to see the sync).
    pin_channels : sequence of int
        Channels that read their pins whatever ``test_signal`` says (e.g. the input a loopback
        jumper drives while the test signal feeds channel 0).
    pair_rate_hz, efficiency, dark_rate_hz, pair_delay_ns, period_ns, seed
        The test signal's parameters (as ``heraldry acquire --pair-rate ...``).
    bsm_offset_ns, bsm_event_probability, bsm_psi_minus, bsm_efficiencies
        The ``bsm`` signal's: the attempt's two-photon event ``bsm_offset_ns`` after each sync
        (within the period), its probability per attempt, the probability that it is psi-
        (else psi+), and D0 .. D3's efficiencies (4 probabilities; empty: ``efficiency``).
    stream : dict
        ``{channel: "all" | "coincident" | "none"}``: which of a channel's events are streamed
        as tags (docs/semantics.md, "Stream filters"); default all. The counters count every
        event whatever the mode. Needs a board with the stream filter
        (``ident.capabilities``).
    sync : int or None
        The channel that is the attempt clock (docs/semantics.md, "Sync, gates and reference
        markers"): its edges are counted (attempts), not in windows, not streamed but every
        ``sync_marker_every``-th as a marker. Needs a board with gates (``ident.capabilities``
        bit 3), as do the three below.
    references : sequence of int
        Reference channels (PPS, divided 10 MHz): every edge streamed as a marker, never in a
        window.
    gates_ns : dict
        ``{channel: (offset_ns, width_ns)}``: the channel's events count only from
        ``offset_ns`` to ``offset_ns + width_ns`` after the latest sync edge; the others are
        counted as gated out. Needs ``sync``.
    sync_marker_every : int
        Stream every Nth sync edge as a marker (a tag of the sync channel); 0: none.
    """
    window_ns: float = None
    delays_ns: dict = field(default_factory=dict)
    dead_times_ns: dict = field(default_factory=dict)
    edges: dict = field(default_factory=dict)
    disabled: tuple = ()
    heralds: tuple = ()
    herald_width: int = 4
    record_coincidences: tuple = ()
    test_signal: str = "off"
    pin_channels: tuple = ()
    pair_rate_hz: float = 1e5
    efficiency: float = 0.5
    dark_rate_hz: float = 1e3
    pair_delay_ns: float = 0.0
    period_ns: float = 1000.0
    seed: int = 1
    bsm_offset_ns: float = 0.0
    bsm_event_probability: float = 0.1
    bsm_psi_minus: float = 0.5
    bsm_efficiencies: tuple = ()
    stream: dict = field(default_factory=dict)
    sync: int = None
    references: tuple = ()
    gates_ns: dict = field(default_factory=dict)
    sync_marker_every: int = 0


def _number(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{what} {value!r} is not a number")
    return float(value)


def _per_channel(values, what, n, convert, default):
    if not isinstance(values, dict):
        raise ConfigError(f"{what} must be a dict {{channel: value}}, not {values!r}")
    out = [default] * n
    for channel, value in values.items():
        if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)):
            raise ConfigError(f"{what}: channel {channel!r} is not a number")
        if not 0 <= channel < n:
            raise ConfigError(f"{what} {{{channel}: {value!r}}}: no channel {channel} "
                              f"(channels are 0..{n - 1})")
        out[channel] = convert(value)
    return out


def _mask(value, n, what):
    if isinstance(value, str):
        return parse_mask(value, n, what)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{what} {value!r} is not a channel mask such as 0b011")
    return parse_mask(str(int(value)), n, what)


def _herald(value, n, rules):
    if isinstance(value, str):
        return parse_herald(value, n, rules, "herald rule")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, HeraldRule)):
        raise ConfigError(f"herald rule {value!r} is not a channel mask such as 0b011, a rule "
                          f"such as 'D0&D3&!D1&!D2,exact' or a heraldry.model.HeraldRule")
    if isinstance(value, HeraldRule):
        return herald_rule(value, n)
    return herald_rule(_mask(value, n, "herald mask"), n)


def settings_to_acquisition(settings, identity):
    """``(Acquisition, notes)`` for ``settings`` on the board of ``identity`` (or ConfigError,
    one line). ``notes``: one message per time rounded to whole bins."""
    s = settings if settings is not None else Settings()
    if not isinstance(s, Settings):
        raise ConfigError(f"settings must be a heraldry.Settings, not {type(s).__name__}")
    n = identity.channels
    bin_ps = identity.bin_ps
    cycle_ps = bin_ps * 2 ** identity.fine_bits
    notes = []

    def bins(what, ns, lo, hi, unit_ps=bin_ps, used=True):
        # unit_ps: a bin, or a clock cycle (the test signal's times); a value the settings do
        # not use (the period without the periodic signal) is checked but not noted.
        value, note = ns_to_bins(what, _number(ns, what), unit_ps, lo, hi)
        if note and used:
            notes.append(note)
        return value

    window = (2 ** identity.fine_bits if s.window_ns is None
              else bins("window_ns", s.window_ns, 1, 2 ** protocol.WINDOW_BITS - 1))
    delays = _per_channel(s.delays_ns, "delays_ns", n,
                          lambda v: bins("delays_ns", v, 0, 2 ** protocol.DELAY_BITS - 1), 0)
    dead = _per_channel(s.dead_times_ns, "dead_times_ns", n,
                        lambda v: bins("dead_times_ns", v, 0,
                                       2 ** protocol.DEAD_TIME_BITS - 1), 0)

    def edge(v):
        if v not in EDGES:
            raise ConfigError(f"edges {v!r} must be one of {', '.join(EDGES)}")
        return v
    edges = _per_channel(s.edges, "edges", n, edge, "rising")
    enabled = [True] * n
    for ch in s.disabled:
        if isinstance(ch, bool) or not isinstance(ch, (int, np.integer)) or not 0 <= ch < n:
            raise ConfigError(f"disabled {ch!r}: no such channel (channels are 0..{n - 1})")
        enabled[ch] = False
    herald_rules = [_herald(m, n, identity.rules) for m in s.heralds]
    if len(herald_rules) > identity.rules:
        raise ConfigError(f"{len(herald_rules)} herald rules given; the board has "
                          f"{identity.rules}")
    record_mask = 0
    for p in s.record_coincidences:
        record_mask |= 1 << _mask(p, n, "record_coincidences pattern")
    if s.test_signal not in TEST_SIGNALS:
        raise ConfigError(f"test_signal {s.test_signal!r} must be one of "
                          f"{', '.join(TEST_SIGNALS)}")
    if s.test_signal != "off" and not identity.capabilities & protocol.CAPABILITY_TEST_SIGNAL:
        raise ConfigError(f"test_signal {s.test_signal!r}: this board's gateware has no "
                          f"built-in test signal; use test_signal \"off\" to read the pins")
    pair_delay = bins("pair_delay_ns", s.pair_delay_ns, 0, 2 ** protocol.PAIR_DELAY_BITS - 1,
                      cycle_ps, s.test_signal == "pairs") << identity.fine_bits
    period = bins("period_ns", s.period_ns, 1, 2 ** protocol.PERIOD_BITS - 1, cycle_ps,
                  s.test_signal in ("periodic", "bsm"))
    bsm_offset = bins("bsm_offset_ns", s.bsm_offset_ns, 0, 2 ** protocol.PERIOD_BITS - 1,
                      cycle_ps, s.test_signal == "bsm")
    if not isinstance(s.bsm_efficiencies, (list, tuple)):
        raise ConfigError(f"bsm_efficiencies must be 4 probabilities (D0..D3), not "
                          f"{s.bsm_efficiencies!r}")

    def stream_mode(v):
        if v not in STREAM_MODES:
            raise ConfigError(f"stream {v!r} must be one of {', '.join(STREAM_MODES)}")
        return v
    stream = _per_channel(s.stream, "stream", n, stream_mode, "all")
    if (any(mode != "all" for mode in stream)
            and not identity.capabilities & protocol.CAPABILITY_STREAM_FILTER):
        raise ConfigError(f"stream {next(m for m in stream if m != 'all')!r}: this board's "
                          f"gateware has no stream filter; every channel streams all")
    roles, gates = _roles_and_gates(s, n, bins)
    acq = Acquisition(
        roles=roles, gates_bins=gates, sync_marker_every=s.sync_marker_every,
        channels=n, rules=identity.rules, bin_ps=bin_ps, clock_hz=float(identity.clock_hz),
        fine_bits=identity.fine_bits, window_bins=window, delays_bins=delays,
        dead_time_bins=dead, edges=edges, enabled=enabled, herald_rules=herald_rules,
        herald_width=s.herald_width, coincidence_record_mask=record_mask,
        test_signal=s.test_signal, pair_rate_hz=s.pair_rate_hz, efficiency=s.efficiency,
        dark_rate_hz=s.dark_rate_hz, pair_delay_bins=pair_delay, period_cycles=period,
        seed=s.seed, pin_channels=list(s.pin_channels), bsm_offset_cycles=bsm_offset,
        bsm_event_probability=s.bsm_event_probability, bsm_psi_minus=s.bsm_psi_minus,
        bsm_efficiencies=list(s.bsm_efficiencies), stream=stream)
    refusal = acq.roles_refusal(identity.capabilities)
    if refusal:
        raise ConfigError(refusal)
    return acq, notes


def _roles_and_gates(s, n, bins):
    """``Settings.sync``, ``references`` and ``gates_ns`` as per-channel roles and gates in
    bins (the rest is checked by :class:`Acquisition`)."""
    def channel(value, what):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                or not 0 <= value < n:
            raise ConfigError(f"{what} {value!r}: no such channel (channels are 0..{n - 1})")
        return int(value)
    roles = ["detector"] * n
    if s.sync is not None:
        roles[channel(s.sync, "sync")] = "sync"
    for value in s.references:
        c = channel(value, "references")
        if roles[c] != "detector":
            raise ConfigError(f"references {c}: channel {c} is already the {roles[c]}")
        roles[c] = "reference"
    if not isinstance(s.gates_ns, dict):
        raise ConfigError(f"gates_ns must be {{channel: (offset_ns, width_ns)}}, not "
                          f"{s.gates_ns!r}")
    top = 2 ** protocol.GATE_BITS - 1
    gates = [None] * n
    for key, value in s.gates_ns.items():
        c = channel(key, "gates_ns")
        try:
            offset_ns, width_ns = value
        except (TypeError, ValueError):
            raise ConfigError(f"gates_ns {c}: {value!r} is not (offset_ns, width_ns)") from None
        offset = bins("gates_ns", offset_ns, 0, top)
        width = bins("gates_ns", width_ns, 0, top)
        if width == 0:
            raise ConfigError(f"gates_ns {c}: the width {width_ns!r} ns is less than one bin")
        gates[c] = (offset, width)
    return roles, gates


def _duration_cycles(duration, clock_hz):
    if duration is None:
        return None
    d = _number(duration, "duration")
    if not 0 < d < math.inf:
        raise ConfigError(f"duration must be positive and finite, not {d:g}")
    cycles = int(round(d * clock_hz))
    if cycles < 1:
        raise ConfigError(f"duration {d:g} s is shorter than one clock cycle "
                          f"({1 / clock_hz:g} s)")
    return cycles


#: Command-line option of each setting, for commands that build :class:`Settings` from options
#: (:func:`option_message`).
OPTIONS = {"window_ns": "--window", "delays_ns": "--delay", "dead_times_ns": "--dead-time",
           "edges": "--edge", "disabled": "--disable", "herald mask": "--herald",
           "record_coincidences pattern": "--record-coincidences pattern",
           "test_signal": "--test-signal", "pair_delay_ns": "--pair-delay",
           "period_ns": "--period", "duration": "--duration", "baud": "--baud",
           "bsm_offset_ns": "--bsm-offset", "bsm event probability": "--bsm-event",
           "bsm psi- probability": "--bsm-psi-minus", "bsm offset": "--bsm-offset",
           "stream": "--stream", "sync": "--sync", "references": "--reference",
           "gates_ns": "--gate"}


def option_message(message):
    """A :class:`ConfigError` message (or note) about a setting, naming the command-line option
    instead (``window_ns 30 ns is ...`` -> ``--window 30 ns is ...``)."""
    text = str(message)
    for name, option in OPTIONS.items():
        if text.startswith(name + " "):
            return option + text[len(name):]
    return text


def sim_identity(channels=None, board=None):
    """The :class:`~heraldry.host.driver.Identity` a virtual board (``board``, one of
    :data:`VIRTUAL_BOARDS`; default that of ``open("sim")``) reports with ``channels`` inputs,
    known before it starts (to refuse bad settings first)."""
    from .driver import Identity
    board = SIM_BOARD if board is None else board
    n = board["channels"] if channels is None else channels
    rules = board["rules"]
    return Identity(magic=protocol.MAGIC, protocol=protocol.PROTOCOL_VERSION, gateware=0,
                    channels=n, rules=rules, fine_bits=board["fine_bits"],
                    bin_fs=10 ** 15 // board["clock_hz"] >> board["fine_bits"],
                    clock_hz=board["clock_hz"],
                    capabilities=(protocol.CAPABILITY_TEST_SIGNAL
                                  | protocol.CAPABILITY_STREAM_FILTER
                                  | (protocol.CAPABILITY_GATES if board.get("gates") else 0)),
                    counters=protocol.RegisterMap(n, rules).counters.size)


# -- opening a board -----------------------------------------------------------------------------

def open(target, *, board=None, baud=None, channels=None, timeout=None, realtime=False):
    """Open a board (or a recording) and identify it; returns a :class:`Tagger`.

    Parameters
    ----------
    target : str
        ``"sim"`` (the virtual board, started for this tagger and stopped by
        :meth:`Tagger.close`), a serial device path (``"/dev/ttyUSB1"``, ``"COM3"``), or
        ``"replay:FILE.ptu"``.
    board : str, optional
        A real board's name (:data:`BOARD_BAUDS`: ``icebreaker``, ``ulx3s-85f``,
        ``ulx3s-25f``): its baud rate is used.
    baud : int, optional
        The UART rate; overrides ``board``. Neither given: :func:`known_bauds` are tried.
    channels : int, optional
        Inputs of the virtual board (1..8, default 4). A real board has its own.
    timeout : float, optional
        Seconds to wait for each reply (default 1, 3 for the virtual board whose pace depends
        on this machine's load).
    realtime : bool
        Replay only: deliver the records at the pace of their recorded time.

    Raises
    ------
    ConfigError
        A target, board name, baud or channel count that cannot work (one line, like the
        command line's).
    heraldry.host.driver.IdentificationError
        Nothing identifies as a heraldry board on that port (at any baud tried).
    heraldry.sim.twin.TwinError, heraldry.host.transport.TransportError
        The virtual board cannot start; the port cannot be opened (e.g. busy).
    """
    if not isinstance(target, str):
        raise ConfigError(f"open() takes \"sim\", a serial device path or "
                          f"\"replay:FILE.ptu\", not {target!r}")
    if target.startswith(REPLAY_PREFIX):
        for name, value in (("board", board), ("baud", baud), ("channels", channels)):
            if value is not None:
                raise ConfigError(f"{name}: a replay describes itself")
        return _open_replay(target[len(REPLAY_PREFIX):], realtime)
    if realtime:
        raise ConfigError("realtime is for replay:FILE.ptu")
    if target == "sim":
        if board is not None:
            raise ConfigError("board names a real board; \"sim\" is the virtual one")
        return _open_sim(channels, baud, timeout)
    from .cli import _is_port, check_port
    if not _is_port(target):
        raise ConfigError(f"unknown board {target!r}; use \"sim\", a serial device path such "
                          f"as /dev/ttyUSB1, or \"replay:FILE.ptu\"")
    if channels is not None:
        raise ConfigError("channels is for the virtual board; a real board has its own")
    check_port(target)
    bauds = _bauds_for(board, baud)
    return _open_serial(target, bauds, board, timeout)


def _bauds_for(board, baud):
    if baud is not None:
        if isinstance(baud, bool) or not isinstance(baud, (int, np.integer)) or baud <= 0:
            raise ConfigError(f"baud must be a positive number, not {baud!r}")
        return [int(baud)]
    if board is not None:
        if board not in BOARD_BAUDS:
            raise ConfigError(f"unknown board {board!r}; use one of {', '.join(BOARD_BAUDS)} "
                              f"(or give baud=)")
        return [BOARD_BAUDS[board]]
    return known_bauds()


def _open_sim(channels, baud, timeout):
    from ..sim.twin import Twin, build_twin
    from .transport import SerialTransport
    n = SIM_BOARD["channels"] if channels is None else channels
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) \
            or not 1 <= n <= protocol.MAX_CHANNELS:
        raise ConfigError(f"channels must be 1..{protocol.MAX_CHANNELS}, not {n!r}")
    baud = SIM_BOARD["baud"] if baud is None else baud
    if isinstance(baud, bool) or not isinstance(baud, (int, np.integer)) \
            or not 0 < baud <= SIM_BOARD["clock_hz"] // 4:
        raise ConfigError(f"baud must be 1..{SIM_BOARD['clock_hz'] // 4}, not {baud!r}")
    twin = Twin(build_twin(int(n), SIM_BOARD["rules"], SIM_BOARD["clock_hz"], int(baud),
                           gates=SIM_BOARD["gates"]))
    twin.start()
    try:
        device = _device(SerialTransport(twin.port, int(baud)), 3.0 if timeout is None
                         else timeout)
        try:
            device.identify()
        except BaseException:
            device.close()
            raise
    except BaseException:
        twin.stop()
        raise
    return Tagger(device, name="sim", baud=int(baud), twin=twin)


def _device(transport, timeout, retries=3):
    from .driver import Device
    return Device(transport, timeout=timeout, retries=retries)


def _open_serial(port, bauds, board, timeout):
    from .driver import IdentificationError
    from .transport import SerialTransport
    timeout = 1.0 if timeout is None else timeout
    failures = []
    for baud in bauds:
        probing = len(bauds) > 1
        device = _device(SerialTransport(port, baud), PROBE_TIMEOUT_S if probing else timeout,
                         retries=1 if probing else 3)
        try:
            device.identify()
        except IdentificationError as error:
            device.close()
            if not probing:
                raise
            failures.append(f"{baud}")
            last = error
            continue
        except BaseException:
            device.close()
            raise
        device.timeout, device.retries = timeout, 3
        return Tagger(device, name=port, baud=baud, board=board)
    raise IdentificationError(
        f"no heraldry board identified on {port} at {', '.join(failures)} baud "
        f"(the known boards' rates; give the rate, or the board's name, if yours differs): "
        f"{last}")


def _open_replay(path, realtime):
    from .replay import ReplaySource
    if not os.path.isfile(path):
        raise ConfigError(f"replay:{path}: no such file")
    try:
        source = ReplaySource(path, realtime=realtime)
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"replay:{path}: cannot replay: {error}") from None
    return Tagger(None, name=f"{REPLAY_PREFIX}{path}", replay=source)


# -- the tagger ------------------------------------------------------------------------------------

class Tagger:
    """One opened board (or recording): made by :func:`open`. Context manager.

    Members
    -------
    name : str
        ``"sim"``, the port path, or ``"replay:FILE"``.
    identity : heraldry.host.driver.Identity
        What the board says about itself (for a replay: what the file says; ``gateware`` 0).
    channels, rules, fine_bits, bin_ps, clock_hz, capabilities : int or float
        From the identity.
    has_test_signal : bool
        The gateware has the built-in test signal.
    baud : int or None
        The UART rate in use (None for a replay).
    device : heraldry.host.driver.Device or None
        The driver (None for a replay), for what this class does not cover.
    is_replay : bool
    """

    def __init__(self, device, *, name, baud=None, board=None, twin=None, replay=None):
        self.device = device
        self.name = name
        self.baud = baud
        self.board = board
        self._twin = twin
        self._replay = replay
        self._run = None
        self._closed = False
        self._replay_used = False
        if replay is not None:
            self.identity = _replay_identity(replay.acquisition)
        else:
            self.identity = device.identity

    # identity shortcuts
    channels = property(lambda self: self.identity.channels)
    rules = property(lambda self: self.identity.rules)
    fine_bits = property(lambda self: self.identity.fine_bits)
    bin_ps = property(lambda self: self.identity.bin_ps)
    clock_hz = property(lambda self: self.identity.clock_hz)
    capabilities = property(lambda self: self.identity.capabilities)
    is_replay = property(lambda self: self._replay is not None)

    @property
    def has_test_signal(self):
        return bool(self.identity.capabilities & protocol.CAPABILITY_TEST_SIGNAL)

    def describe(self):
        """One line: what this is (the command line's start-up line)."""
        ident = self.identity
        if self.is_replay:
            return (f"{self.name}: {ident.channels} channels, {ident.bin_ps:g} ps bins, "
                    f"{len(self._replay.events)} records, {self._replay.duration_s:g} s")
        return (f"{self.name}: gateware {ident.gateware_version}, {ident.channels} channels, "
                f"{ident.clock_hz / 1e6:g} MHz, {ident.bin_ps:g} ps bins, {self.baud} baud")

    def __repr__(self):
        return f"<heraldry.Tagger {self.describe()}>"

    def acquisition(self, settings=None):
        """``(Acquisition, notes)``: ``settings`` (default :class:`Settings`\\ ()) in this
        board's bins; :class:`ConfigError` (one line) if the board cannot take them."""
        if self.is_replay:
            raise ConfigError("a replay plays recorded records: it takes no acquisition")
        return settings_to_acquisition(settings, self.identity)

    def run(self, settings=None, duration=None, *, keep=False, status_interval=None,
            poll=0.02, anchor_interval=None, progress=None, sink=None,
            counter_read_cycles=None):
        """A :class:`Run` of ``settings`` for ``duration`` device seconds (None: until the
        ``with`` block is left). The board is configured and started by ``with`` (or
        :meth:`Run.start`); every check that needs no board is done here, so a
        :class:`ConfigError` leaves the board untouched.

        ``settings``: :class:`Settings`, or an :class:`~heraldry.host.config.Acquisition`
        made for this board (the bins of ``heraldry acquire``'s options). ``keep``: also keep
        every record, for :attr:`Run.result` (an
        :class:`~heraldry.host.acquire.AcquisitionResult`, what ``heraldry acquire``
        summarises). ``status_interval``: device seconds between counter snapshots (default
        :data:`STATUS_INTERVAL_S`); ``counter_read_cycles``: no snapshots, every counter read
        each time the device has run that many cycles instead. ``progress(done_cycles,
        total_cycles, stats)`` is called at every poll (``stats``: ``Device.stats()`` and, once
        counters were read during the run, ``"counters"``: the run's ``counters``); ``sink(events)`` gets
        every block, with times from the run start. What a run cut short raises:
        :class:`DeviceRun`.
        """
        if self._closed:
            raise ConfigError("this tagger is closed")
        if self._run is not None and self._run.started and not self._run.ended:
            raise ConfigError("a run is already going on this tagger; leave its with block "
                              "first")
        if self.is_replay:
            self._run = ReplayRun(self, settings, duration, keep=keep, progress=progress,
                                  sink=sink)
        else:
            self._run = DeviceRun(self, settings, duration, keep=keep,
                                  status_interval=status_interval, poll=poll,
                                  anchor_interval=anchor_interval, progress=progress, sink=sink,
                                  counter_read_cycles=counter_read_cycles)
        return self._run

    def selftest(self, **options):
        """Run the self-test (the test signal, or ``loopback=(herald, channel)`` through one
        jumper wire) and return its :class:`heraldry.host.selftest.SelftestReport`: PASS/FAIL
        per check with figures (``report.passed``, ``print(report)``). Options:
        :func:`heraldry.host.selftest.selftest`."""
        from .selftest import selftest
        return selftest(self, **options)

    def close(self):
        """End a run still going (the board is left stopped), close the link, stop the virtual
        board. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._run is not None and self._run.started and not self._run.ended:
                self._run.stop()
        finally:
            if self.device is not None:
                self.device.close()
            if self._twin is not None:
                self._twin.stop()
            if self._replay is not None:
                self._replay.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _replay_identity(acq):
    from .driver import Identity
    return Identity(magic=protocol.MAGIC, protocol=protocol.PROTOCOL_VERSION, gateware=0,
                    channels=acq.channels, rules=acq.rules, fine_bits=acq.fine_bits,
                    bin_fs=int(round(acq.bin_ps * 1000)), clock_hz=int(round(acq.clock_hz)),
                    capabilities=0,
                    counters=protocol.RegisterMap(acq.channels, acq.rules).counters.size)


# -- runs ---------------------------------------------------------------------------------------

_GROUPS = ("singles", "patterns", "heralds", "delay_dropped", "merger_dropped",
           "herald_dropped", "coincidence_dropped",
           "filtered", "filter_dropped", "gated_out")


class Run:
    """One run of a :class:`Tagger` (made by :meth:`Tagger.run`). Context manager; iterable.

    Iterating yields :class:`~heraldry.host.events.Block` s (``events`` in ``EVENT_DTYPE``,
    ``time_ps`` from the run start) until the duration has passed and the last record is in;
    every block is first fed to the measurements attached to the run (:meth:`attach`, which
    measurement objects built with the run as first argument call). Leaving the ``with`` block
    ends the run at once (a run left before its duration is cut short; :meth:`wait` runs it to
    the end first). After the end: :attr:`counters` are the board's final counts since the
    clear, :attr:`checks` what was verified, :attr:`result` (with ``keep=True``) the
    :class:`~heraldry.host.acquire.AcquisitionResult`.

    Members
    -------
    acquisition : Acquisition or None
        What was configured (None for a replay, which plays what the file holds).
    notes : list of str
        Adjustments to the settings (times rounded to whole bins).
    counters : dict
        ``{group: [counts]}`` (groups of ``heraldry.host.driver.COUNTER_GROUPS``; a replay has
        ``singles``, ``patterns`` and ``heralds``, counted from its tags), live while running.
    device_seconds : float
        Device time since the start, as far as the run has seen.
    counters_seconds : float
        Device time since the start at which :attr:`counters` stood (the latest STATUS
        snapshot's, the stop's once ended; a replay's latest record), for rates over any span
        of the caller's (differences of :attr:`counters` over differences of this).
    ended : bool
    """

    def __init__(self, tagger, settings, duration):
        self.tagger = tagger
        self.settings = settings
        self.duration = duration
        self.acquisition = None
        self.notes = []
        self.counters = None
        self.checks = {}
        self.result = None
        self.started = False
        self.ended = False
        self.device_seconds = 0.0
        self.counters_seconds = 0.0
        self._measurements = []
        self._rates = None

    def attach(self, measurement):
        """Feed ``measurement`` (anything with ``feed(events)``) every block from now on."""
        if self.ended:
            raise ConfigError("this run has ended: attach measurements before or while it runs")
        self._measurements.append(measurement)
        return measurement

    @property
    def elapsed_ps(self):
        """Device time since the run start, picoseconds (the default ``T_acq`` of measurements
        bound to this run)."""
        return self.device_seconds * 1e12

    @property
    def rates(self):
        """Live rates, per second of device time over the latest counter interval:
        ``{"singles_hz": [per channel], "heralds_hz": [per rule], "patterns_hz": {pattern:
        Hz} (patterns of 2 or more channels), "device_seconds": t}``; zeros before the first
        counter snapshot."""
        if self._rates is None:
            return self._zero_rates()
        return self._rates

    def _zero_rates(self):
        ident = self.tagger.identity
        return {"singles_hz": [0.0] * ident.channels, "heralds_hz": [0.0] * ident.rules,
                "patterns_hz": {p: 0.0 for p in range(1, 2 ** ident.channels)
                                if bin(p).count("1") > 1},
                "device_seconds": self.device_seconds}

    def _set_rates(self, before, after, seconds):
        if seconds <= 0:
            return
        n = self.tagger.identity.channels

        def hz(group, i):
            return (after[group][i] - before[group][i]) / seconds
        self._rates = {
            "singles_hz": [hz("singles", c) for c in range(n)],
            "heralds_hz": [hz("heralds", r) for r in range(len(after["heralds"]))],
            "patterns_hz": {p: hz("patterns", p - 1) for p in range(1, 2 ** n)
                            if bin(p).count("1") > 1},
            "device_seconds": self.device_seconds,
        }

    def _feed(self, events):
        for m in self._measurements:
            m.feed(events)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.started or self.ended:
            return False
        if exc_type is None:
            self.stop()
        else:
            self._abort(exc)
        return False

    def __iter__(self):
        if not self.started:
            raise ConfigError("start the run first: with tagger.run(...) as run: for block in "
                              "run: ...")
        while True:
            block = self._next_block()
            if block is None:
                return
            yield block

    def poll(self):
        """The next block if one has come in, else None at once: a step for a caller's own
        event loop (a server answering requests between steps), where iterating would wait for
        a block. On a board, at most one ``control.now`` poll per ``poll`` interval (a call
        before the interval has passed returns None without touching the link), which also
        takes the latest counter snapshot; after :meth:`stop` it returns the blocks that came
        in while stopping, then None. Raises what iterating raises."""
        if not self.started:
            raise ConfigError("start the run first: run.start() or with tagger.run(...)")
        return self._next_block()

    def wait(self):
        """Run to the end of the duration (feeding the attached measurements). Returns
        :attr:`counters`."""
        if self.duration is None:
            raise ConfigError("wait() needs a run with a duration")
        for _ in self:
            pass
        return self.counters


class DeviceRun(Run):
    """A :class:`Run` on a board behind a link: the one run sequence of the code base
    (``heraldry acquire``, ``selftest``, ``calibrate`` and
    :func:`heraldry.host.acquire.acquire_device` all run through it).

    ``settings``: :class:`Settings`, or an :class:`~heraldry.host.config.Acquisition` already in
    this board's bins (what ``heraldry acquire`` builds from its options). The counters follow
    the board's STATUS snapshots; with ``counter_read_cycles`` the snapshots stay off and every
    counter is read instead each time the device has run that many cycles.

    A run cut short raises, with ``partial`` set on the exception when ``keep`` (the
    :class:`~heraldry.host.acquire.AcquisitionResult` of what was received and verified, also
    :attr:`Run.result`): :class:`~heraldry.host.driver.DeviceLost` (the link went away);
    :class:`~heraldry.host.driver.BoardSilent` (a ``DeviceLost``: the board stopped answering,
    in place of :class:`~heraldry.host.driver.NoReply`; also before the start, without
    ``partial``); ``KeyboardInterrupt`` (including :class:`heraldry.host.interrupt.Interrupted`;
    the board is stopped first); and the ``OSError`` of a ``sink`` that cannot write (the board
    is stopped, the sink is not called again). A stop signal waits for the block being
    collected and passed to ``sink`` (:func:`heraldry.host.interrupt.held`).

    After the start, ``start_cycles`` is the board's ``control.now`` count (extended on the
    host, :meth:`~heraldry.host.driver.Device.now`) read just before the start command: the
    run's times count from it, so ``start_cycles / clock_hz`` plus a run time is the board's
    own device time (what ``heraldry serve`` publishes, continuous across its runs).
    """

    def __init__(self, tagger, settings, duration, *, keep, status_interval, poll,
                 anchor_interval, progress, sink, counter_read_cycles=None):
        super().__init__(tagger, settings, duration)
        ident = tagger.identity
        self._cycles = _duration_cycles(duration, ident.clock_hz)
        if isinstance(settings, Acquisition):
            self.acquisition, self.notes = _checked_acquisition(settings, ident), []
        else:
            self.acquisition, self.notes = tagger.acquisition(settings)
        self.window_ps = self.acquisition.window_bins * self.acquisition.bin_ps
        self.herald_masks = list(self.acquisition.herald_masks)
        for note in self.notes:
            warnings.warn(note, SettingsNote, stacklevel=3)
        if counter_read_cycles is not None:
            if status_interval is not None:
                raise ConfigError("give status_interval or counter_read_cycles, not both")
            if isinstance(counter_read_cycles, bool) or not isinstance(
                    counter_read_cycles, (int, np.integer)) or counter_read_cycles < 1:
                raise ConfigError(f"counter_read_cycles must be a positive number of cycles, "
                                  f"not {counter_read_cycles!r}")
            self._status_period = 0
            self.status_interval = None
        else:
            self._status_period = _status_period(tagger, status_interval)
            self.status_interval = self._status_period / ident.clock_hz
        self._counter_read_cycles = counter_read_cycles
        anchor = tagger.device.map["control.anchor_interval"]
        if anchor_interval is not None and not anchor.minimum <= anchor_interval \
                <= anchor.maximum:
            raise ConfigError(f"anchor_interval must be {anchor.minimum}..{anchor.maximum} "
                              f"cycles, not {anchor_interval}")
        self._anchor_interval = anchor_interval
        self._keep = keep
        self._poll = poll
        self._progress = progress
        self._sink = sink
        self._sink_failed = False       # the sink raised OSError (a full disk): not called again
        self._stopped = False
        self._parts = []
        self._epoch = None              # device count minus absolute cycle (a multiple of 2**32)
        self._pending = []
        self._tail = []                 # blocks of the stop the caller did not take: poll()'s
        self._next_poll = 0.0           # time.monotonic() of the next control.now poll

    # -- the run sequence -----------------------------------------------------------------------

    def start(self):
        """Stop, configure (every write verified), clear, switch counter snapshots on, start."""
        from .acquire import anchor_interval_for
        from .driver import BoardSilent, NoReply
        from .tally import CounterTally
        if self.started:
            raise ConfigError("this run has already started")
        device = self.tagger.device
        reg = device.map["control.anchor_interval"]
        anchor = self._anchor_interval
        if anchor is None:
            anchor = anchor_interval_for(self._cycles or 2 ** 30, reg.minimum, reg.maximum)
        self._wall = time.monotonic()
        try:
            device.write("control.run", 0)      # a previous session may have left it running
            device.write("control.status_period", 0)
            device.configure(self.acquisition)
            device.write("control.anchor_interval", anchor)
            device.clear()                      # (which re-seeds the test signal)
            device.drain_blocks()       # records of an earlier run: all in before clear() returned
            # 32-bit counters, extended from their differences (heraldry.host.tally).
            self._tally = CounterTally(device.counters())
            # The device's tallies are cumulative over its session: this run's are differences.
            self._stats_before = device.stats()
            self._lost_before = dict(device.lost)
            self._host_dropped_before = device.host_dropped_tags.copy()
            self._tags = np.zeros(self.tagger.identity.channels, np.int64)
            self.counters = {g: list(v) for g, v in self._tally.counts.items()}
            if self._status_period:
                # Snapshot k (k = 1, 2, ...) is taken about k periods after this write.
                device.write("control.status_period", self._status_period)
            self._status_origin = device.now()
            self._status_seen = 0
            self._status_records = device.stats()["status_records"]
            self._snapshot_size = device.map.counters.size
            self._status_names = {
                g: [device.map.by_address[protocol.COUNTER_BASE + a].name
                    for a in device.map.counters.range(g)] for g in _GROUPS}
            device.start()
        except NoReply:
            # It answered the identification: a board that falls silent now has hung.
            raise BoardSilent(f"the board stopped answering ({_silence(device)})") from None
        except KeyboardInterrupt:
            self._leave_stopped()
            raise
        self.started = True
        self._start = device.start_bounds[0]
        self._reached = device.start_bounds[1]      # the last control.now count read in the run
        self._counters_read = self._start
        self.start_cycles = self._start
        self._previous = (self._start, self.counters)     # counts are 0 at the start

    def _collect(self):
        from .interrupt import held
        device = self.tagger.device
        ident = self.tagger.identity
        # A stop signal waits for the block to be kept and written (see host.interrupt).
        with held():
            block = device.drain_blocks()
            if not len(block.events):
                return None
            events = block.events
            if self._epoch is None:
                # Right after a now() poll: the first event is within 2**31 cycles of it.
                first_bins = int(round(int(events["time_ps"][0]) * 1000 / ident.bin_fs))
                self._epoch = device.device_cycles(first_bins) - (first_bins >> ident.fine_bits)
            if self._keep:
                self._parts.append(events)
            events = events.copy()
            events["time_ps"] -= (((self._start - self._epoch) << ident.fine_bits)
                                  * ident.bin_fs // 1000)
            tags = events[events["kind"] == Kind.TAG.value]
            self._tags += np.bincount(tags["channel"], minlength=ident.channels)[:ident.channels]
            self._feed(events)
            if self._sink is not None and not self._sink_failed:
                try:
                    self._sink(events)
                except OSError:
                    self._sink_failed = True
                    raise
            return Block(events, dict(block.lost))

    def _snapshot(self):
        """Take the latest complete STATUS snapshot into :attr:`counters` and :attr:`rates`."""
        device = self.tagger.device
        records = device.stats()["status_records"] - self._status_records
        seen = records // self._snapshot_size
        if seen <= self._status_seen:
            return
        values = device.status()
        if not all(name in values for names in self._status_names.values() for name in names):
            return
        raw = {g: [values[name] for name in names] for g, names in self._status_names.items()}
        self._status_seen = seen
        self._counted(self._tally.update(raw), self._status_origin + seen * self._status_period)

    def _counted(self, counts, at):
        """New counts since the clear, as they stood at device count ``at``: the live rates."""
        clock = self.tagger.identity.clock_hz
        self._set_rates(self._previous[1], counts, (at - self._previous[0]) / clock)
        self._previous = (at, counts)
        self.counters = counts
        self.counters_seconds = (at - self._start) / clock

    def _next_block(self):
        return self._guarded(self._poll_block)

    def poll(self):
        if not self.started:
            raise ConfigError("start the run first: run.start() or with tagger.run(...)")
        return self._guarded(self._poll_once)

    def _poll_once(self):
        for queue in (self._pending, self._tail):
            if queue:
                return queue.pop(0)
        if self.ended or time.monotonic() < self._next_poll:
            return None
        block = self._step()
        return block if block is not None or not self._pending else self._pending.pop(0)

    def _poll_block(self):
        while True:
            if self._pending:
                return self._pending.pop(0)
            if self.ended:
                return None
            # One control.now poll per ``poll`` seconds, whether or not the last one brought a
            # block: polling back to back would fill the link with replies.
            wait = self._next_poll - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            block = self._step()
            if block is not None:
                return block

    def _step(self):
        """One ``control.now`` poll: the block that came in (or None), the latest snapshot,
        progress, and the end of the duration."""
        device = self.tagger.device
        self._next_poll = time.monotonic() + self._poll
        current = device.now()
        self._reached = current
        self.device_seconds = max(0, current - self._start) / self.tagger.identity.clock_hz
        block = self._collect()
        if self._status_period:
            self._snapshot()
        elif current - self._counters_read >= self._counter_read_cycles:
            self._counted(self._tally.update(device.counters()), current)
            self._counters_read = current
        if self._progress is not None:
            total = self._cycles or 0
            stats = device.stats()
            if self.counters is not None and self.counters_seconds > 0:
                # the latest read during the run (live views), not the zeros of the start
                stats["counters"] = self.counters
            self._progress(current - self._start if not total
                           else min(current - self._start, total), total, stats)
        if self._cycles is not None and current - self._start >= self._cycles:
            self._finish()
        return block

    def stop(self):
        """End the run now (the remaining blocks still go to the attached measurements).
        Returns :attr:`counters`."""
        if not self.ended:
            self._guarded(self._finish)
        # What came in after the last block the caller took: measurements still get it, and
        # poll(), not iteration, returns it.
        self._tail += self._pending
        self._pending.clear()
        return self.counters

    def _finish(self):
        """Stop, wait for the pipeline and the last segment's CHECK, read every counter."""
        from .acquire import _device_result
        device = self.tagger.device
        acq = self.acquisition
        device.stop()
        self._stopped = True
        if self._status_period:
            device.write("control.status_period", 0)
        pipeline = (max(acq.delays_bins) >> acq.fine_bits) \
            + (acq.window_bins >> acq.fine_bits) + 2 * acq.channels + acq.rules + 64
        device.drain(pipeline, poll=self._poll)
        block = self._collect()
        device.flush()
        after = self._collect()
        counts = self._tally.update(device.counters())
        self.ended = True
        self._pending += [b for b in (block, after) if b is not None]
        stop = device.stop_bounds[0]
        self.device_seconds = max(0, stop - device.start_bounds[1]) / \
            self.tagger.identity.clock_hz
        self.counters = counts
        self.counters_seconds = self.device_seconds
        self._verify(counts)
        if self._keep:
            self.result = _device_result(
                device, acq, self.duration if self.duration is not None else
                self.device_seconds, self._parts, counts, self._start, self._epoch,
                self._stats_before, self._lost_before, self._host_dropped_before,
                time.monotonic() - self._wall, stop)

    def _guarded(self, step):
        """``step()``; a run it cuts short keeps what arrived (:meth:`_cut_short`)."""
        from .driver import DeviceLost, NoReply
        try:
            return step()
        except (DeviceLost, NoReply, KeyboardInterrupt, OSError) as caught:
            if isinstance(caught, OSError) and not self._sink_failed:
                raise           # not an output that failed: nothing to add
            if self.ended:
                raise
            error = self._cut_short(caught)
            if error is caught:
                raise
            raise error from None

    def _cut_short(self, caught):
        """End the run on ``caught``: leave the board stopped if it still answers, keep the
        blocks decoded before the failure (the open segment's records count as unverified:
        its CHECK will never come), set ``partial`` and :attr:`result` (with ``keep``).
        Returns the exception to raise (:class:`BoardSilent` in place of ``NoReply``)."""
        from .acquire import _device_result
        from .driver import BoardSilent, DeviceError, DeviceLost, NoReply
        device = self.tagger.device
        self.ended = True
        error = caught
        if isinstance(caught, NoReply):
            what = _silence(device)
            error = BoardSilent(f"the board stopped answering ({what})")
        elif isinstance(caught, DeviceLost):
            what = str(caught)
        elif isinstance(caught, KeyboardInterrupt):
            what = f"interrupted by {getattr(caught, 'name', 'SIGINT')}"
        else:
            what = f"cannot write {caught.filename}: {caught.strerror}"
        if not isinstance(caught, (DeviceLost, NoReply)) and not self._stopped:
            # Interrupted, or the output cannot be written: the board is still there.
            try:
                device.stop()
                self._stopped = True
            except DeviceError:
                pass
            self._leave_stopped()
        for step in (self._collect, device.flush, self._collect):
            try:
                step()
            except (OSError, DeviceError):
                pass        # a failing sink was reported already; a lost link has no more
        end = device.stop_bounds[0] if self._stopped else self._reached
        self.device_seconds = max(0, end - device.start_bounds[1]) / \
            self.tagger.identity.clock_hz
        if self._keep:
            error.partial = _device_result(
                device, self.acquisition, self.duration or self.device_seconds, self._parts,
                None, self._start, self._epoch, self._stats_before, self._lost_before,
                self._host_dropped_before, time.monotonic() - self._wall, end, error=what)
            self.result = error.partial
        return error

    def _leave_stopped(self):
        """Gate closed and snapshots off, if the board still answers (nothing raised)."""
        from .driver import DeviceError
        for name in ("control.run", "control.status_period"):
            try:
                self.tagger.device.write(name, 0)
            except DeviceError:
                return

    def _abort(self, exc):
        """An exception left the with block: keep what arrived, leave the board stopped."""
        from .driver import DeviceLost, NoReply
        if isinstance(exc, (DeviceLost, NoReply, KeyboardInterrupt)) or (
                isinstance(exc, OSError) and self._sink_failed):
            self._cut_short(exc)
        else:
            self.ended = True
            self._leave_stopped()

    def _verify(self, counts):
        """What the run can prove without keeping the records: every byte verified, and per
        channel streamed tags + tags lost in-band + tags the host dropped == the singles."""
        from ..protocol import LossCause
        device = self.tagger.device
        stats = {k: v - self._stats_before[k] for k, v in device.stats().items()}
        n = self.tagger.identity.channels
        lost = {key: count - self._lost_before.get(key, 0) for key, count in device.lost.items()}
        host = (device.host_dropped_tags - self._host_dropped_before)[:n]
        self.link = stats
        self.checks = {
            "stream_verified": stats["decode_errors"] == 0 and stats["unverified"] == 0
            and stats["skipped_bytes"] == 0,
            "tags_match_singles": all(
                int(self._tags[c]) + lost.get((LossCause.MERGER_FULL, c), 0) + int(host[c])
                == counts["singles"][c] for c in range(n)),
        }
        self.tags_per_channel = self._tags.tolist()


def _status_period(tagger, status_interval):
    """Clock cycles between STATUS snapshots for ``status_interval`` seconds (default
    :data:`STATUS_INTERVAL_S`, longer where snapshots would take more than
    :data:`STATUS_LINK_SHARE` of the link); ConfigError for one the link cannot carry."""
    ident = tagger.identity
    size = tagger.device.map.counters.size
    # One snapshot's time on the link: snapshots closer than that would come back to back
    # (and the live rates, which place snapshot k at k periods, would be wrong). A transport
    # without a baud rate (the in-process one) has no such limit.
    snapshot_s = (size * _status_record_bytes() * _BITS_PER_BYTE / tagger.baud
                  if tagger.baud else 0.0)
    if status_interval is None:
        interval = max(STATUS_INTERVAL_S, snapshot_s / STATUS_LINK_SHARE)
    else:
        interval = _number(status_interval, "status_interval")
        if interval <= 2 * snapshot_s:
            raise ConfigError(f"status_interval {interval:g} s: a snapshot of {size} counters "
                              f"takes {snapshot_s * 1e3:.3g} ms at {tagger.baud} baud; give "
                              f"more than twice that")
    reg = tagger.device.map["control.status_period"]
    period = int(round(interval * ident.clock_hz))
    if not 1 <= period <= reg.maximum:
        raise ConfigError(f"status_interval {interval:g} s must be 1..{reg.maximum} clock "
                          f"cycles")
    return period


def _checked_acquisition(acq, identity):
    """``acq`` if it was made for the board of ``identity`` (ConfigError, one line, if not)."""
    made = (acq.channels, acq.rules, acq.fine_bits, acq.bin_ps)
    board = (identity.channels, identity.rules, identity.fine_bits, identity.bin_ps)
    if made != board:
        raise ConfigError(f"the acquisition is for {acq.channels} channels, {acq.rules} herald "
                          f"rules, {acq.bin_ps:g} ps bins ({acq.fine_bits} fine bits); the board "
                          f"has {identity.channels}, {identity.rules}, {identity.bin_ps:g} ps "
                          f"({identity.fine_bits})")
    return acq


def _silence(device):
    """What a board that stopped answering did (no wrong-board guesses: it had identified)."""
    return (f"no reply from {device.transport.name} after {device.retries + 1} attempts of "
            f"{device.timeout:g} s")


def _rule_count(rule, result):
    """Windows a herald rule without an early veto fires in, from a software window count: an
    exact rule's closed patterns, or (early, no veto) the windows containing its mask."""
    if rule.mode == "early":
        return result.groups[rule.require]
    return int(sum(count for p, count in enumerate(result.patterns)
                   if p & rule.require == rule.require and not p & rule.veto))


class ReplayRun(Run):
    """A :class:`Run` over a recording: its blocks in order (up to ``duration`` of recorded
    time), counters counted from its tags with the core's semantics (the reference model's
    windows, :class:`heraldry.host.measure.Coincidences` over every channel), using the
    settings' window and herald rules when given, else the file's."""

    #: Settings a recording cannot take (its tags were stamped with what the board had).
    _HARDWARE_ONLY = ("delays_ns", "dead_times_ns", "edges", "disabled", "record_coincidences")

    def __init__(self, tagger, settings, duration, *, keep, progress, sink):
        super().__init__(tagger, settings, duration)
        from .measure import Coincidences
        from .replay import ReplaySource
        source = tagger._replay
        if tagger._replay_used:         # a source plays once: the next run reads the file again
            source = tagger._replay = ReplaySource(source.paths[0], realtime=source.realtime)
        file_acq = source.acquisition
        ident = tagger.identity
        n = ident.channels
        bin_ps = file_acq.bin_ps
        self._end_ps = None
        if duration is not None:
            d = _number(duration, "duration")
            if not 0 < d < math.inf:
                raise ConfigError(f"duration must be positive and finite, not {d:g}")
            self._end_ps = int(round(d * 1e12))
        window_bins, rules = file_acq.window_bins, list(file_acq.herald_rules)
        if settings is not None:
            if not isinstance(settings, Settings):
                raise ConfigError(f"settings must be a heraldry.Settings, not "
                                  f"{type(settings).__name__}")
            if settings.window_ns is not None:
                # Software windows: any length (not the core's 1023 bins).
                window_bins, note = ns_to_bins("window_ns", _number(settings.window_ns,
                                                                    "window_ns"),
                                               bin_ps, 1, 2 ** 62)
                if note:
                    self.notes.append(note)
            if settings.heralds:
                rules = [_herald(m, n, protocol.MAX_RULES) for m in settings.heralds]
            ignored = [name for name in self._HARDWARE_ONLY if getattr(settings, name)]
            if settings.test_signal != "off":
                ignored.append(f"test_signal {settings.test_signal!r}")
            if ignored:
                self.notes.append(f"a replay plays the recorded tags: {', '.join(ignored)} "
                                  f"not applied")
        for note in self.notes:
            warnings.warn(note, SettingsNote, stacklevel=3)
        self.window_ps = window_bins * bin_ps
        for r, rule in enumerate(rules):
            if rule.mode == "early" and rule.veto:
                # Its decision depends on the order of the clicks in each window, which the
                # software windows do not keep (exact rules and vetoless ones need only the
                # window's pattern).
                raise ConfigError(f"herald rule {r} ({rule}) is early with a veto: a replay "
                                  f"cannot recount it; give it as exact, or without the veto")
        self.herald_rules = rules
        self.herald_masks = [rule.require for rule in rules]
        groups = sorted(set(self.herald_masks))
        self._windows = Coincidences(range(n), self.window_ps, groups=groups)
        self._keep = keep
        self._progress = progress
        self._sink = sink
        self._parts = []
        self._singles = np.zeros(n, np.int64)
        self._source = source
        tagger._replay_used = True

    def start(self):
        if self.started:
            raise ConfigError("this run has already started")
        self.started = True
        self._wall = time.monotonic()
        self.counters = self._counts()
        self._previous = (0.0, self.counters)
        self._total_ps = (int(self._source.events["time_ps"][-1])
                          if len(self._source.events) else 0)

    def _counts(self):
        n = self.tagger.identity.channels
        result = self._windows.result()
        return {"singles": self._singles.tolist(),
                "patterns": result.patterns[1:2 ** n].tolist(),
                "heralds": [_rule_count(rule, result) for rule in self.herald_rules]}

    def _next_block(self):
        while not self.ended:
            block = self._source.read_block()
            if block is None:
                self._end()
                return None
            events = block.events
            if self._end_ps is not None and len(events) and events["time_ps"][-1] >= self._end_ps:
                events = events[events["time_ps"] < self._end_ps]
                self._end()
            if not len(events):
                continue
            n = self.tagger.identity.channels
            tags = events[events["kind"] == Kind.TAG.value]
            self._singles += np.bincount(tags["channel"], minlength=n)[:n]
            self._windows.feed(tags)
            if self._keep:
                self._parts.append(events)
            if self._sink is not None:
                self._sink(events)
            self._feed(events)
            seconds = int(events["time_ps"][-1]) * 1e-12
            if not self.ended:
                self.device_seconds = seconds
            counts = self._counts()
            self._set_rates(self._previous[1], counts, seconds - self._previous[0])
            self._previous = (seconds, counts)
            self.counters = counts
            self.counters_seconds = self.device_seconds
            if self._progress is not None:
                self._progress(int(events["time_ps"][-1]), self._total_ps)
            return Block(events, dict(block.lost))
        return None

    def _end(self):
        self.ended = True
        self.counters = self._counts()
        # A file cut short or never finished (heraldry.host.replay) covers the time its records
        # reach, and says so in a failed check.
        incomplete = self._source.incomplete
        recorded = self._source.end_s if incomplete else self._source.duration_s
        self.device_seconds = recorded if self._end_ps is None else min(
            recorded, self._end_ps * 1e-12)
        self.counters_seconds = self.device_seconds
        self.checks = {"file_declares_no_loss": self._source.events_lost == 0}
        if incomplete:
            self.checks["file_holds_every_declared_record"] = False
        if self._keep:
            from .acquire import AcquisitionResult
            events = (np.concatenate(self._parts) if self._parts
                      else np.zeros(0, EVENT_DTYPE))
            self.result = AcquisitionResult(
                acquisition=self._source.acquisition, duration_s=self.device_seconds,
                events=events, counters=None, lost={}, start_bin=0,
                wall_seconds=time.monotonic() - self._wall,
                device_seconds=self.device_seconds, port=", ".join(self._source.paths))

    def stop(self):
        if not self.ended:
            self._end()
        return self.counters

    def _abort(self, exc):
        self.ended = True
