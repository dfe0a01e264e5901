"""Herald latency, pin to pin, measured in the Amaranth simulator through a board's input block.

:func:`measure` builds a whole :class:`~heraldry.gateware.core.TaggerCore` behind an input block
(the board's own: :class:`~heraldry.gateware.phy_ice40.ICE40DDRInputs`,
:class:`~heraldry.gateware.phy_ecp5.ECP5GearboxInputs`, or the generic one-flop-per-cycle PHY),
with two rules on channel 0 alone: rule 0 ``early`` on herald pin 0, rule 1 ``exact`` on pin 1,
window one core cycle. A train of rising edges on channel 0, one at every sample position of a
core cycle, each far enough from the next that every window, pulse and pipeline has emptied,
gives for each position the core clock edge after which each herald pin is high. A pin edge
between two sample instants is first seen at the later one, so the latency from the edge runs
from (herald edge - that sample instant) to (herald edge - the sample instant before), open at
the top: both bounds are reported. For an elastic crossing (ECP5) the clocks' phase is unknown
and fixes the crossing's delay at start: the measurement is repeated over phases of the core
clock against the sampling clock and the extremes are kept.

What is not in the figures: the input and output buffers' delays (a few ns each, in the FPGA's
datasheet), and for the ECP5 whatever ``IDDRX2F`` adds beyond presenting one ``sclk`` period's four
samples at the next ``sclk`` edge (its behavioural model registers them at the edge that starts
the period, a period earlier than the primitive can; :func:`measure` drives it one ``sclk``
later to compensate, see :data:`SAMPLER_DELAY`). The ECP5 figures are therefore lower bounds.

:data:`MEASURED` holds the figures per input block, in core clock periods (they scale with the
clock); ``tests/gateware/test_herald_latency.py`` checks them against :func:`measure`.

The ULX3S's ``early`` rules have a second path: :class:`~heraldry.gateware.fastherald.FastHerald`
in the sampling domain, which drives a pin only where it is exactly equivalent to the core's
(:func:`heraldry.host.config.fast_herald_pins`: every rule on the pin early, every enabled channel
on its pin with delay 0, no roles or gates). ``measure(..., fast=True)`` measures the early pin
through it (the measurement's settings qualify); :data:`MEASURED_FAST` holds its figures.
"""

from fractions import Fraction

__all__ = ["measure", "board_latency", "latency_ns", "herald_latency_seconds", "MEASURED",
           "MEASURED_FAST", "FAST_CONDITIONS", "core_periods", "SAMPLER_DELAY", "WINDOW_CYCLES",
           "BLOCK_BY_FINE_BITS"]

#: The exact rule's window in the measurement, in core cycles (the smallest window: one cycle).
WINDOW_CYCLES = 1

#: Fast cycles by which the stimulus is presented later than the behavioural model assumes, per
#: input block: ``SB_IO`` presents the rising-edge sample at that edge and the falling-edge one
#: half a cycle later, both before the next edge that can capture them, as the model does (0);
#: ``IDDRX2F`` can present an ``sclk`` period's samples at the next ``sclk`` edge at the
#: earliest, and the model registers them at the edge that starts the period (1).
SAMPLER_DELAY = {"GenericPHY": 0, "ICE40DDRInputs": 0, "ECP5GearboxInputs": 1}

#: Pin-to-pin herald latency per input block, in core clock periods, as :func:`measure` gives
#: it over every phase (``min``: edge just before a sample instant; ``max``: just after the
#: instant before it, not reached). ``exact`` with a window of :data:`WINDOW_CYCLES` cycle.
MEASURED = {
    "GenericPHY": {"early": (Fraction(4), Fraction(5)), "exact": (Fraction(5), Fraction(6))},
    "ICE40DDRInputs": {"early": (Fraction(13, 4), Fraction(17, 4)),
                       "exact": (Fraction(5), Fraction(6))},
    "ECP5GearboxInputs": {"early": (Fraction(45, 8), Fraction(121, 16)),
                          "exact": (Fraction(121, 16), Fraction(19, 2))},
}

#: ``early`` pin latency through the fast herald path, per input block that has one, in core
#: clock periods over every phase (the path runs in the sampling clock alone, so the phase of
#: the core clock does not change it): :func:`measure` with ``fast=True``. Only for a pin the
#: fast path drives (:func:`heraldry.host.config.fast_herald_pins`); other pins: :data:`MEASURED`.
MEASURED_FAST = {
    "ECP5GearboxInputs": {"early": (Fraction(33, 16), Fraction(37, 16))},
}

#: The input block a device has, told by its fine bits (``ident.fine_bits``): each known block
#: gives a different number (the virtual boards and any single-clock build have the generic PHY).
BLOCK_BY_FINE_BITS = {0: "GenericPHY", 2: "ICE40DDRInputs", 4: "ECP5GearboxInputs"}

_T = Fraction(1, 10 ** 8)      # the fastest simulated clock's period (any value)
_GAP_CYCLES = 24               # core cycles between two pin edges: everything has settled
_START_CYCLES = 24             # core cycles before the first edge: the elastic crossing runs


def _block(name, channels):
    from ..gateware.phy_ecp5 import ECP5GearboxInputs
    from ..gateware.phy_ice40 import ICE40DDRInputs
    if name == "GenericPHY":
        return None
    return {"ICE40DDRInputs": ICE40DDRInputs,
            "ECP5GearboxInputs": ECP5GearboxInputs}[name](channels=channels, sim=True)


def measure(block="ECP5GearboxInputs", *, phases=None, channels=2, fast=False, gate_stage=False):
    """Herald latency of ``block`` (a name in :data:`SAMPLER_DELAY`) in core clock periods.

    ``phases``: the core clock's phase against the sampling clock, in sampling-clock periods
    (``0 <= phase < R``); None: 0 for the generic PHY and the aligned iCE40 block (their clocks'
    phase is fixed), every quarter sampling period over one core period for an elastic block.
    Returns ``{"early": (min, max), "exact": (min, max), "per_phase": {phase: figures}}`` with
    :class:`~fractions.Fraction` values; ``exact`` with a window of :data:`WINDOW_CYCLES`.
    ``figures`` holds the phase's ``"early"`` and ``"exact"`` ``(min, max)`` and
    ``"early_per_position"`` / ``"exact_per_position"``: for each sample position of a core
    cycle (0 first), the latency from that sample instant (the ``min`` side).

    ``fast``: the ``early`` pin through the fast herald path (:data:`MEASURED_FAST`; only the
    ECP5 block has one), watched at every sampling-clock edge; ``exact`` is the core's as
    without it (its pin is not eligible).

    ``gate_stage``: the core with its register stage behind the delay lines
    (``TaggerCore(gate_stage=True)``, the ULX3S's builds of more than 4 channels): one core
    period more on each figure of the core's pins.

    Raises RuntimeError if a herald did not rise once per pin edge (a broken core)."""
    if fast and block not in MEASURED_FAST:
        raise ValueError(f"{block} has no fast herald path")
    per_phase = {}
    first = Fraction(0) if phases is None else Fraction(phases[0])
    per_phase[first], ratio, elastic = _measure_phase(block, first, channels, fast, gate_stage)
    if phases is None:
        phases = [Fraction(k, 4) for k in range(4 * ratio)] if elastic else [first]
    for phase in phases:
        if Fraction(phase) not in per_phase:
            per_phase[Fraction(phase)] = _measure_phase(block, Fraction(phase), channels,
                                                        fast, gate_stage)[0]
    result = {"per_phase": per_phase}
    for mode in ("early", "exact"):
        result[mode] = (min(p[mode][0] for p in per_phase.values()),
                        max(p[mode][1] for p in per_phase.values()))
    return result


def _measure_phase(block, phase, channels, fast_block=False, gate_stage=False):
    from amaranth.hdl import Module
    from amaranth.sim import Simulator

    from ..gateware.core import TaggerCore
    from ..host.config import Acquisition, fast_herald_pins
    from ..model import HeraldRule

    inputs = _block(block, channels)
    m = Module()
    if inputs is None:
        core = TaggerCore(channels, 2, test_signal=False, gate_stage=gate_stage)
        fine_bits, per_fast, ratio, fast, elastic = 0, 1, 1, "sync", False
    else:
        core = TaggerCore(channels, 2, phys=inputs.phys, test_signal=False,
                          gate_stage=gate_stage)
        m.submodules.inputs = inputs
        fine_bits, per_fast, fast = inputs.fine_bits, 2 ** inputs.sample_bits, inputs.fast
        ratio = 2 ** (fine_bits - inputs.sample_bits)
        elastic = inputs.gearbox.elastic
    m.submodules.core = core
    pins = core.herald
    if fast_block:
        from ..gateware.fastherald import FastHerald
        m.submodules.fast = fh = FastHerald(channels, 2, domain=fast)
        fh.attach(m, inputs, core)
        pins = fh.herald
    acq = Acquisition(channels=channels, rules=2, fine_bits=fine_bits,
                      window_bins=WINDOW_CYCLES * 2 ** fine_bits, test_signal="off",
                      herald_rules=[HeraldRule(0b1, 0, "early", 0), HeraldRule(0b1, 0, "exact", 1)],
                      enabled=[True] + [False] * (channels - 1), herald_width=1)
    acq.validate()
    per_cycle = per_fast * ratio                 # sample instants per core cycle
    delay = SAMPLER_DELAY[block]
    # Sample instant i is at T/2 + i*T/per_fast (T the sampling clock's period); edge n of the
    # train rises just before instant first[n], one sample position further each time.
    first = [(_START_CYCLES + _GAP_CYCLES * n) * per_cycle + n for n in range(per_cycle)]
    n_cycles = _START_CYCLES + _GAP_CYCLES * (per_cycle + 1)

    def level(i):
        # High from each train edge for half the gap, low again before the next one.
        return any(f <= i < f + _GAP_CYCLES * per_cycle // 2 for f in first)

    rises = {0: [], 1: []}
    fast_rises = []

    async def driver(ctx):
        before = 0
        for j in range(n_cycles * ratio):
            if inputs is None:
                ctx.set(core.pins, int(level(j)))
            else:
                bits = 0
                for s in range(per_fast):
                    bits |= int(level((j - delay) * per_fast + s)) << s
                ctx.set(inputs.samples, bits)     # channel 0's samples; the others stay low
            await ctx.tick(fast)
            if fast_block:
                now = ctx.get(pins[0])
                if now and not before:
                    fast_rises.append(j)      # sampling edge j: T/2 + j*T
                before = now

    async def watcher(ctx):
        ctx.set(core.config, acq.gateware_config())
        ctx.set(core.run, 1)
        before = [0, 0]
        for k in range(n_cycles):
            await ctx.tick("sync")
            for pin in (0, 1):
                now = ctx.get(pins[pin])
                if now and not before[pin]:
                    rises[pin].append(k)
                before[pin] = now

    sim = Simulator(m)
    if inputs is None:
        sim.add_clock(float(_T), phase=float(_T / 2), domain="sync")
    else:
        sim.add_clock(float(_T), phase=float(_T / 2), domain=fast)
        sim.add_clock(float(ratio * _T), phase=float(_T / 2 + phase * _T), domain="sync")
    sim.add_testbench(driver)
    sim.add_testbench(watcher)
    sim.run()
    if fast_block:
        if fast_herald_pins(acq) != 0b01:
            raise RuntimeError("the measurement's early pin must be fast, its exact pin not")
        # The early pin seen at every sampling edge: a rise there is the fast path's.
        rises[0] = [Fraction(j - phase, ratio) for j in fast_rises]
    out = {}
    for pin, mode in ((0, "early"), (1, "exact")):
        if len(rises[pin]) != len(first):
            raise RuntimeError(f"{block} phase {phase}: the {mode} herald rose "
                                 f"{len(rises[pin])} times for {len(first)} pin edges")
        low, top = [], []
        for k, i in zip(rises[pin], first):
            # Core edge k is at T/2 + phase*T + k*R*T; sample instant i at T/2 + i*T/per_fast.
            edge = phase + k * ratio
            low.append((edge - Fraction(i, per_fast)) / ratio)
            top.append((edge - Fraction(i - 1, per_fast)) / ratio)
        out[mode] = (min(low), max(top))
        out[mode + "_per_position"] = low
    return out, ratio, elastic


def latency_ns(periods, clock_hz, window_cycles=WINDOW_CYCLES):
    """``{"early": {"min", "max"}, "exact": {...}, "window_ns"}`` in ns (3 decimals) from
    ``{"early": (min, max), "exact": (min, max)}`` in core periods at ``clock_hz``."""
    period_ns = Fraction(10 ** 9, clock_hz)
    out = {mode: {"min": round(float(periods[mode][0] * period_ns), 3),
                  "max": round(float(periods[mode][1] * period_ns), 3)}
           for mode in ("early", "exact")}
    out["window_ns"] = round(float(window_cycles * period_ns), 3)
    return out


def board_latency(board, *, phases=None, channels=None):
    """:func:`latency_ns` of :func:`measure` for a :class:`heraldry.boards.Board` (its ``phy``
    and ``clock_hz``), simulated now: the figure ``report.json`` carries as
    ``herald_latency_ns``. A board with a fast herald path (``board.fast_herald``) gives
    ``early`` through it, the core's early figure as ``early_core`` (a pin the fast path does
    not drive) and the fast path's conditions as ``early_conditions``. ``channels``: the
    build's (None: the board's default), for a board whose core has the gate stage at some
    channel counts (``board.gate_stage(channels)``, the ULX3S above 4)."""
    block = board.phy.__name__
    channels = board.default_channels if channels is None else channels
    stage = bool(getattr(board, "gate_stage", None) and board.gate_stage(channels))
    out = latency_ns(measure(block, phases=phases, gate_stage=stage), board.clock_hz)
    if getattr(board, "fast_herald", False):
        fast = latency_ns(measure(block, phases=phases, fast=True), board.clock_hz)
        out["early_core"] = out["early"]
        out["early"] = fast["early"]
        out["early_conditions"] = FAST_CONDITIONS
    return out


#: When a pin's ``early`` latency is the fast path's (``report.json``'s
#: ``herald_latency_ns.early_conditions``).
FAST_CONDITIONS = ("fast herald path: every rule on the pin early; every enabled channel on its "
                   "pin (no test signal), delay 0, a detector without gate")


def herald_latency_seconds(clock_hz, fine_bits, mode="early", *, fast=False, gate_stage=False):
    """The worst-case pin-to-pin herald latency in seconds (:data:`MEASURED` ``max``) of a
    device with this ``clock_hz`` and ``fine_bits`` (its identity), for ``mode`` rules (exact:
    with a one-cycle window); None for fine bits of no measured input block. ``fast``: the pin
    is driven by the device's fast herald path (``ident.capabilities`` bit 6 and
    :func:`heraldry.host.config.fast_herald_pins` for the run's settings): ``early`` then
    comes from :data:`MEASURED_FAST` (where the block has one). ``gate_stage``: the device's
    core has the gate stage (``ident.capabilities`` bit 7): a core pin is one core period
    later (:func:`core_periods`)."""
    block = BLOCK_BY_FINE_BITS.get(fine_bits)
    if block is None:
        return None
    if fast and mode in MEASURED_FAST.get(block, {}):
        return float(MEASURED_FAST[block][mode][1] / clock_hz)
    return float(core_periods(block, mode, gate_stage=gate_stage)[1] / clock_hz)


def core_periods(block, mode="early", *, gate_stage=False):
    """``(min, max)`` pin-to-pin latency of a core herald pin in core clock periods
    (:data:`MEASURED`), one period more with the gate stage (``TaggerCore(gate_stage=True)``,
    ``ident.capabilities`` bit 7: its register delays every event, and so every pin, by one
    cycle; :func:`measure` with ``gate_stage=True`` gives the same)."""
    low, high = MEASURED[block][mode]
    return (low + 1, high + 1) if gate_stage else (low, high)
