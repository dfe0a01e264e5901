"""iCE40 DDR input PHY: two samples per clock cycle from the ``SB_IO`` input registers (F = 1).

Also home of :class:`WordEdges`, the first-edge encoder every sample-word PHY shares (the ECP5
gearbox PHY in :mod:`.phy_ecp5` uses it too).
"""

from amaranth.hdl import C, ClockSignal, Instance, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .phy import PHYSignature

__all__ = ["WordEdges", "ICE40DDRPHY"]


class WordEdges(wiring.Component):
    """First rising and first falling edge within a word of ``2**fine_bits`` pin samples.

    The word holds the pin's level at ``2**F`` evenly spaced instants of one clock cycle, bit 0
    the earliest. A rising edge at position ``i`` is ``word[i] & ~word[i - 1]``, where
    ``word[-1]`` is the last sample of the previous cycle's word (kept in a register that starts
    low, so a pin high from reset is one rising edge). Only the first edge of each kind in a word
    is reported; later ones in the same word are lost (one event per cycle, as in the input
    stage and the reference model).

    Latency: 0 cycles (the outputs are combinational in ``word``; registering them would add a
    cycle to the pin-to-herald budget).

    Parameters
    ----------
    fine_bits : int
        F, at least 1.

    Members
    -------
    word : In(2**F)
        This cycle's samples, bit 0 the earliest. Must come from a register (synchronous).
    phy : Out(PHYSignature(F))
        Edge reports for this word.
    """

    def __init__(self, fine_bits):
        if not isinstance(fine_bits, int) or fine_bits < 1:
            raise ValueError(f"fine_bits must be a positive integer, not {fine_bits!r}")
        self.fine_bits = fine_bits
        super().__init__({
            "word": In(2 ** fine_bits),
            "phy":  Out(PHYSignature(fine_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        width = 2 ** self.fine_bits

        last = Signal()
        m.d.sync += last.eq(self.word[-1])

        previous = Signal(width)
        m.d.comb += previous.eq((self.word << 1) | last)
        rises = Signal(width)
        falls = Signal(width)
        m.d.comb += [
            rises.eq(self.word & ~previous),
            falls.eq(~self.word & previous),
        ]
        m.d.comb += [
            self.phy.rise.eq(rises.any()),
            self.phy.fall.eq(falls.any()),
        ]
        # Priority encoders: the last assignment wins, so iterate from the latest position down.
        for i in reversed(range(width)):
            with m.If(rises[i]):
                m.d.comb += self.phy.rise_fine.eq(i)
            with m.If(falls[i]):
                m.d.comb += self.phy.fall_fine.eq(i)
        return m


class ICE40DDRPHY(wiring.Component):
    """iCE40 DDR input: ``SB_IO`` registered DDR input (``PIN_TYPE=0b000000``), ``fine_bits = 1``.

    ``D_IN_0`` is the pin sampled at the rising clock edge, ``D_IN_1`` the pin sampled at the
    following falling edge. A fabric register captures both at the next rising edge (the second
    flop of the synchroniser: the IO register is the first), giving a 2-sample word whose edges
    :class:`WordEdges` encodes. The falling-edge sample has only half a period to reach that
    register, which limits the clock to about 125 MHz (toolchain feasibility builds: 113-125 MHz).

    Bin of an edge: the value of ``now`` in the cycle after the rising clock edge ``k`` at or after
    which the pin is first sampled in its new state, times 2, plus 0 if the sample at ``k`` sees it
    or 1 if only the falling-edge sample after ``k`` does.

    Parameters
    ----------
    port : IOPort or None
        The raw pin (``platform.request(..., dir="-").io``), connected to ``SB_IO``'s
        ``PACKAGE_PIN``. Not used with ``sim=True``.
    sim : bool
        Replace ``SB_IO`` by a behavioural model for the Amaranth simulator (see ``samples``).

    Attributes
    ----------
    fine_bits : int
        1.
    latency : int
        1: IO register at clock edge k (and k + 1/2), fabric register at k + 1, edge detection
        combinational, so ``rise`` is high in the cycle after edge k + 1, one cycle after the
        bin's cycle.

    Members
    -------
    phy : Out(PHYSignature(1))
        Edge reports.
    samples : In(2)
        ``sim=True`` only. The pin level at clock edge k (bit 0) and at the falling edge after it
        (bit 1), set by the test bench before edge k. The model registers both at edge k, which
        matches what the fabric register sees of ``D_IN_0``/``D_IN_1`` at edge k + 1.
    """

    fine_bits = 1
    latency = 1

    def __init__(self, port=None, *, sim=False):
        if not sim and port is None:
            raise ValueError("ICE40DDRPHY needs a port unless sim=True")
        self.port = port
        self.sim = sim
        members = {"phy": Out(PHYSignature(self.fine_bits))}
        if sim:
            members["samples"] = In(2 ** self.fine_bits)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()

        io_samples = Signal(2)  # D_IN_1, D_IN_0: outputs of the IO registers
        if self.sim:
            m.d.sync += io_samples.eq(self.samples)
        else:
            m.submodules.sb_io = Instance(
                "SB_IO",
                p_PIN_TYPE=C(0b000000, 6),
                io_PACKAGE_PIN=self.port,
                i_INPUT_CLK=ClockSignal("sync"),
                o_D_IN_0=io_samples[0],
                o_D_IN_1=io_samples[1],
            )

        word = Signal(2)
        m.d.sync += word.eq(io_samples)
        m.submodules.edges = edges = WordEdges(self.fine_bits)
        m.d.comb += edges.word.eq(word)
        wiring.connect(m, edges.phy, wiring.flipped(self.phy))
        return m
