"""Input stage: one per channel, between the PHY (or test-signal mux) and the delay line."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..protocol import COARSE_BITS, DEAD_TIME_BITS, Edge, channel_config_layout, time_bits
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

        # Dead time needs only the low bits of the last accepted time: a difference >=
        # 2**DEAD_TIME_BITS bins already passes any dead time, and once the (modular) difference
        # reaches that, `have_last` is dropped, so later differences can never alias back into the
        # dead-time range, however long the channel stays quiet (the coarse counter wraps every
        # 2**32 cycles). Needs `now` to step by one per cycle so that the difference is seen
        # crossing 2**DEAD_TIME_BITS (it grows by at most 2**(F+1) bins per cycle).
        diff_bits = DEAD_TIME_BITS + 1
        last = Signal(diff_bits)
        have_last = Signal()
        diff = Signal(diff_bits)
        m.d.comb += diff.eq(time[:diff_bits] - last)
        expired = diff[DEAD_TIME_BITS]

        gated = selected & config.enable & self.run
        accept = Signal()
        m.d.comb += accept.eq(gated & (~have_last | (diff >= config.dead_time)))

        m.d.sync += [
            self.event.eq(accept),
            self.time.eq(time),
        ]
        with m.If(self.clear):
            m.d.sync += have_last.eq(0)
        with m.Elif(accept):
            m.d.sync += [last.eq(time[:diff_bits]), have_last.eq(1)]
        with m.Elif(expired):
            m.d.sync += have_last.eq(0)
        return m
