"""Built-in test signal: a periodic source (the sync), a photon-pair emulator and a
Bell-state-measurement (BSM) source of four detectors, with dark counts.

It stands in for the pins of channels whose ``config.channel[c].source`` is not ``PIN``, so the
demo, CI and self-tests run on boards without detectors. The reference model
:mod:`heraldry.model.testsignal` defines the output bit-exactly (cycle numbering, random streams,
seeding, decisions); this block implements it.
"""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..protocol import (MAX_CHANNELS, PAIR_DELAY_BITS, PERIOD_BITS, Source, bsm_layout,
                        test_signal_layout)
from ..model.testsignal import (BSM_DETECTORS, BSM_PATTERNS, SPLIT_THRESHOLD, STREAM_BSM_ETA,
                                STREAM_BSM_EVENT, STREAM_BSM_SPLIT, STREAM_BSM_STATE,
                                STREAM_DARK, STREAM_ETA_A, STREAM_ETA_B, STREAM_PAIR,
                                XORSHIFT_SHIFTS, stream_constant)

__all__ = ["TestSignal"]


def _xorshift32(x):
    a, b, c = XORSHIFT_SHIFTS
    x = x ^ (x << a)[:32]
    x = x ^ (x >> b)
    return x ^ (x << c)[:32]


class TestSignal(wiring.Component):
    """Per-channel test pulses: periodic, arm A / arm B of a photon-pair source, detectors
    D0 .. D3 of a BSM source, dark counts.

    Parameters
    ----------
    channels : int
        Number of channels, 1 .. ``MAX_CHANNELS``.

    Members
    -------
    config : ``In(test_signal_layout(channels))``
        Seed, period, pair/eta thresholds, pair delay, per-channel dark thresholds. Change it
        only before a ``clear``: the thresholds and ``period`` are read every cycle,
        ``pair_delay`` must stay constant from a clear on.
    bsm : ``In(bsm_layout())``
        The BSM source: attempt offset from the periodic pulse, event, psi- and per-detector
        efficiency thresholds (the core connects ``config.test_bsm``). Same rule as ``config``.
    sources : ``In(ArrayLayout(Source, channels))``
        Per-channel source (the core connects ``config.channel[c].source``). ``PIN`` channels
        get no pulses; ``PERIODIC``, ``PAIR_A``, ``PAIR_B``, ``BSM_D0`` .. ``BSM_D3`` channels
        get that signal OR-ed with their own dark counts.
    clear : ``In(1)``
        Re-seeds the random streams and restarts the period and the pair delay line at the
        clock edge that samples it high. ``rise`` is all-zero in every cycle in which ``clear``
        is high; cycle ``k = 0`` of the model is the first cycle with ``clear`` low after it.
    rise : ``Out(channels)``
        One bit per channel, high for each cycle with an event on it (the cycle's events).

    Timing: ``rise`` in cycle ``k`` is the model's cycle ``k`` (no latency relative to the
    model's numbering). It is combinational from registers, the delay-line read port, ``clear``
    and ``sources`` (every comparison against a threshold is registered one cycle ahead).
    Until the first ``clear`` after reset the output is one-cycle pulses whose pattern the model
    does not specify (the streams start from the seed-0 states, the decisions from zero).

    Resources: ``3 + channels`` 32-bit xorshift registers for the pair source and dark counts
    and 7 for the BSM source, each with two threshold comparators (its state's and, for a
    clear, the seed's), a 32-bit period counter with a comparator for the attempt cycle, and a
    1-bit x ``2**PAIR_DELAY_BITS`` memory used as a circular delay line (a pair can be born
    every cycle, so every cycle holds one in-flight arm B).
    """
    __test__ = False  # not a pytest test class despite its name

    def __init__(self, channels):
        if not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be 1..{MAX_CHANNELS}, not {channels}")
        self.channels = channels
        super().__init__({
            "config": In(test_signal_layout(channels)),
            "bsm": In(bsm_layout()),
            "sources": In(data.ArrayLayout(Source, channels)),
            "clear": In(1),
            "rise": Out(channels),
        })

    def elaborate(self, platform):
        m = Module()
        config = self.config
        clear = self.clear

        # Random streams: the registered decision x(k) <= threshold (i.e. draw = x(k) - 1 <
        # threshold) in cycle k, next to the state one step ahead, x(k + 1). Each comparator
        # thus reads a register (``ahead``) and not the xorshift step or the seed multiplexer;
        # at a clear the seed's decision is taken through comparators of its own, in parallel
        # with the seed == C_i test (timing: ECP5 critical path, see docs/boards.md).
        thresholds = {STREAM_PAIR: config.pair_threshold, STREAM_ETA_A: config.eta_a,
                      STREAM_ETA_B: config.eta_b}
        for c in range(self.channels):
            thresholds[STREAM_DARK + c] = config.dark[c]
        thresholds[STREAM_BSM_EVENT] = self.bsm.event
        thresholds[STREAM_BSM_STATE] = self.bsm.psi_minus
        thresholds[STREAM_BSM_SPLIT] = SPLIT_THRESHOLD
        for d in range(BSM_DETECTORS):
            thresholds[STREAM_BSM_ETA + d] = self.bsm.eta[d]
        fired = {}
        for stream, threshold in thresholds.items():
            constant = stream_constant(stream)
            ahead = Signal(32, init=constant, name=f"ahead_{stream}")
            fired[stream] = Signal(name=f"fired_{stream}")
            # seed ^ C_i is zero only for seed == C_i; C_i itself then keeps the states
            # distinct (the other streams hold C_i ^ C_j != C_i) and non-zero.
            seed_is_constant = Signal(name=f"seed_is_constant_{stream}")
            m.d.comb += seed_is_constant.eq(config.seed == constant)
            seeded = Mux(seed_is_constant, constant, config.seed ^ constant)
            with m.If(clear):
                m.d.sync += [
                    ahead.eq(_xorshift32(seeded)),
                    fired[stream].eq(Mux(seed_is_constant, constant <= threshold,
                                         (config.seed ^ constant) <= threshold)),
                ]
            with m.Else():
                m.d.sync += [
                    ahead.eq(_xorshift32(ahead)),
                    fired[stream].eq(ahead <= threshold),
                ]

        # Periodic: down-counter, pulse in the cycles where it is zero (k = 0, P, 2P, ...).
        count = Signal(PERIOD_BITS)
        next_count = Signal(PERIOD_BITS)
        tick = Signal()
        with m.If(clear | (config.period == 0)):
            m.d.comb += next_count.eq(0)
        with m.Elif(count == 0):
            m.d.comb += next_count.eq(config.period - 1)
        with m.Else():
            m.d.comb += next_count.eq(count - 1)
        m.d.sync += [
            count.eq(next_count),
            tick.eq((next_count == 0) & (config.period != 0)),
        ]

        # BSM attempt: k % period == offset, i.e. the down-counter at (period - offset) mod
        # period; an offset of period or more never matches. The target is static during a run.
        offset = self.bsm.offset
        attempt_count = Signal(PERIOD_BITS)
        attempt_valid = Signal()
        attempt = Signal()
        m.d.comb += [
            attempt_count.eq(Mux(offset == 0, 0, config.period - offset)),
            attempt_valid.eq((config.period != 0) & (offset < config.period)),
        ]
        m.d.sync += attempt.eq((next_count == attempt_count) & attempt_valid)
        # The two detectors an event hits (model: BSM_PATTERNS), each clicking on its own
        # efficiency draw; all draws are registered decisions of this cycle.
        minus, split = fired[STREAM_BSM_STATE], fired[STREAM_BSM_SPLIT]
        hit = Signal(BSM_DETECTORS)
        for (is_minus, splits), mask in BSM_PATTERNS.items():
            with m.If((minus == is_minus) & (split == splits)):
                m.d.comb += hit.eq(mask)
        click = Signal(BSM_DETECTORS)
        for d in range(BSM_DETECTORS):
            m.d.comb += click[d].eq(attempt & fired[STREAM_BSM_EVENT] & hit[d]
                                    & fired[STREAM_BSM_ETA + d])

        # Pair source. Arm B's detection is decided at birth and written into a circular delay
        # line at ``write_addr = k mod depth``; for pair_delay >= 2 the read port fetches the
        # entry written pair_delay cycles earlier, its address presented two cycles ahead and
        # its data registered once more (timing: no block-RAM output delay in front of the input
        # stage). It is transparent so that pair_delay = 2 sees the write of the cycle its
        # address is presented in. pair_delay = 0 bypasses the memory, pair_delay = 1 takes a
        # register of the previous cycle's birth. ``age`` (saturating cycles since clear) masks
        # entries written before the clear, so the line needs no clearing.
        born = fired[STREAM_PAIR]
        arm_a = Signal()
        birth_b = Signal()
        m.d.comb += [
            arm_a.eq(born & fired[STREAM_ETA_A]),
            birth_b.eq(born & fired[STREAM_ETA_B]),
        ]
        depth = 2 ** PAIR_DELAY_BITS
        m.submodules.delay_line = delay_line = Memory(shape=unsigned(1), depth=depth, init=[])
        write = delay_line.write_port()
        read = delay_line.read_port(transparent_for=(write,))
        write_addr = Signal(PAIR_DELAY_BITS)
        next_write_addr = Signal(PAIR_DELAY_BITS)
        age = Signal(range(depth))
        m.d.comb += [
            next_write_addr.eq(Mux(clear, 0, write_addr + 1)),
            write.addr.eq(write_addr),
            write.data.eq(birth_b),
            write.en.eq(1),
            # Entry of cycle k + 2 - pair_delay (k: this cycle), used in cycle k + 2.
            read.addr.eq(write_addr + 2 - config.pair_delay),
        ]
        m.d.sync += [
            write_addr.eq(next_write_addr),
            age.eq(Mux(clear, 0, Mux(age == depth - 1, age, age + 1))),
        ]
        # age >= pair_delay, registered: a pair born pair_delay cycles ago, after the clear.
        old_enough = Signal()
        next_age = Mux(clear, 0, Mux(age == depth - 1, age, age + 1))
        delayed = Signal()
        birth_b_last = Signal()
        m.d.sync += [
            old_enough.eq(next_age >= config.pair_delay),
            delayed.eq(read.data),
            birth_b_last.eq(birth_b & ~clear),
        ]
        arm_b = Signal()
        with m.If(config.pair_delay == 0):
            m.d.comb += arm_b.eq(birth_b)
        with m.Elif(config.pair_delay == 1):
            m.d.comb += arm_b.eq(birth_b_last & old_enough)
        with m.Else():
            m.d.comb += arm_b.eq(delayed & old_enough)
        for c in range(self.channels):
            source = self.sources[c]
            signal = Signal(name=f"signal_{c}")
            with m.Switch(source):
                with m.Case(Source.PERIODIC):
                    m.d.comb += signal.eq(tick)
                with m.Case(Source.PAIR_A):
                    m.d.comb += signal.eq(arm_a)
                with m.Case(Source.PAIR_B):
                    m.d.comb += signal.eq(arm_b)
                for d in range(BSM_DETECTORS):
                    with m.Case(Source[f"BSM_D{d}"]):
                        m.d.comb += signal.eq(click[d])
            m.d.comb += self.rise[c].eq(
                ~clear & (source != Source.PIN) & (signal | fired[STREAM_DARK + c]))
        return m
