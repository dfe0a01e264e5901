"""Input stage: one per channel, between the PHY (or test-signal mux) and the delay line."""

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..protocol import COARSE_BITS, DEAD_TIME_BITS, Edge, channel_config_layout, time_bits
from .arith import at_most_each, saturating_sub
from .phy import PHYSignature

__all__ = ["InputStage"]


class InputStage(wiring.Component):
    """Edge selection, run gate and dead time; timestamps accepted events.

    Per cycle, in this order (docs/architecture.md, "Input stage"):

    1. Edge selection by ``config.edge``: ``RISING`` takes ``phy.rise``, ``FALLING`` takes
       ``phy.fall``, ``BOTH`` takes either; if both are reported in one cycle that is one event at
       the earlier fine position (rise on a tie). ``NONE`` takes nothing.
    2. Gate: the event is kept only if ``config.enable & run`` in this cycle.
    3. Dead time (non-extending): the event is discarded if ``time - last_accepted <
       config.dead_time`` (modulo ``2**time_bits``); discarded and gated events do not restart it;
       ``dead_time = 0`` discards nothing. The first event after reset or ``clear`` is always
       accepted.

    The timestamp is ``Cat(fine, now - latency)``: this is the only place the PHY latency is
    subtracted, so ``time`` is the edge's bin as defined in :mod:`.phy`.

    Latency: 1 cycle (``event``/``time`` are registered).

    Parameters
    ----------
    fine_bits : int
        The PHY's ``fine_bits`` (F).
    latency : int
        The PHY's ``latency`` in cycles.

    Members
    -------
    phy : In(PHYSignature(F))
        Edge reports from the PHY (or the test-signal mux).
    config : In(channel_config_layout())
        Uses ``enable``, ``edge`` and ``dead_time`` (bins); ``source`` and ``delay`` are handled
        elsewhere.
    now : In(COARSE_BITS)
        Free-running coarse counter; must increment by one every cycle (modulo ``2**32``).
    run : In(1)
        Run gate, sampled in the cycle the event is reported by the PHY.
    clear : In(1)
        Strobe: forget the last accepted time (the next event is accepted whatever its time).
    event : Out(1)
        High for one cycle per accepted event, one cycle after the PHY reported it.
    time : Out(time_bits(F))
        Bin of the accepted event; valid while ``event`` is high.
    """

    def __init__(self, fine_bits, latency):
        if not isinstance(latency, int) or latency < 0:
            raise ValueError(f"latency must be a non-negative integer, not {latency!r}")
        self.fine_bits = fine_bits
        self.latency = latency
        super().__init__({
            "phy":    In(PHYSignature(fine_bits)),
            "config": In(channel_config_layout()),
            "now":    In(COARSE_BITS),
            "run":    In(1),
            "clear":  In(1),
            "event":  Out(1),
            "time":   Out(time_bits(fine_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        F = self.fine_bits
        phy = self.phy
        config = self.config

        selected = Signal()
        fine = Signal(F)
        with m.Switch(config.edge):
            with m.Case(Edge.RISING):
                m.d.comb += [selected.eq(phy.rise), fine.eq(phy.rise_fine)]
            with m.Case(Edge.FALLING):
                m.d.comb += [selected.eq(phy.fall), fine.eq(phy.fall_fine)]
            with m.Case(Edge.BOTH):
                use_fall = phy.fall & (~phy.rise | (phy.fall_fine < phy.rise_fine))
                m.d.comb += [
                    selected.eq(phy.rise | phy.fall),
                    fine.eq(Mux(use_fall, phy.fall_fine, phy.rise_fine)),
                ]

        coarse = Signal(COARSE_BITS)
        m.d.comb += coarse.eq(self.now - self.latency)   # truncation = modulo 2**32
        time = Signal(time_bits(F))
        m.d.comb += time.eq(Cat(fine, coarse))

        # Dead time as a count-down instead of a difference `time - last` compared with
        # `dead_time` (two carry chains behind the edge selection): `rem` is the dead time left
        # from the first bin of this cycle on (0: none), and `ok[i]` (registered with it) says
        # whether an event at fine position i of this cycle is past it (i >= rem). An accepted
        # event at fine i leaves dead_time + i - 2**F for the next cycle; otherwise `rem` steps
        # down by 2**F to 0. The candidates after an accept depend on the configuration only.
        step = 1 << F
        rem_bits = DEAD_TIME_BITS + 1
        rem = Signal(rem_bits)
        ok = Signal(step, init=(1 << step) - 1)

        def saturated(a, k):
            """max(0, a - k) and its `ok` flags."""
            clipped = Signal(rem_bits)
            m.d.comb += clipped.eq(saturating_sub(a, k))
            return clipped, at_most_each(clipped, F)

        dead_time = Signal(rem_bits)
        m.d.comb += dead_time.eq(config.dead_time)
        after_accept = [saturated(dead_time, step - i) for i in range(step)]
        after_idle = saturated(rem, step)

        gated = selected & config.enable & self.run
        accept = Signal()
        m.d.comb += accept.eq(gated & ok.bit_select(fine, 1))
        m.d.sync += [
            self.event.eq(accept),
            self.time.eq(time),
        ]
        with m.If(self.clear):
            m.d.sync += [rem.eq(0), ok.eq((1 << step) - 1)]
        with m.Elif(accept):
            m.d.sync += [
                rem.eq(Array(value for value, _ in after_accept)[fine]),
                ok.eq(Array(flags for _, flags in after_accept)[fine]),
            ]
        with m.Else():
            m.d.sync += [rem.eq(after_idle[0]), ok.eq(after_idle[1])]
        return m
