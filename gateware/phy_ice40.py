"""iCE40 DDR input PHYs: two samples per clock cycle from the ``SB_IO`` input registers.

:class:`ICE40DDRInputs` (what the iCEBreaker builds) samples every pin at a clock twice as fast
as the core and hands the core four samples per cycle (F = 2) through the aligned
:class:`~.gearbox.WordGearbox`; :class:`ICE40DDRPHY` samples at the core's own clock (F = 1), for
a design whose core runs as fast as the sampling.
"""

from amaranth.hdl import C, ClockSignal, Instance, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .gearbox import GearedInputs
from .phy import PHYSignature, WordEdges

__all__ = ["ICE40DDRPHY", "ICE40DDRInputs"]


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


class ICE40DDRInputs(GearedInputs):
    """Every detector pin into an ``SB_IO`` DDR input register clocked by the fast domain, two
    fast cycles per ``sync`` cycle (R = 2, aligned clocks): ``fine_bits = 2``, four samples per
    ``sync`` cycle, bins of half a fast cycle.

    The two clocks must come from one PLL with coinciding rising edges (``SB_PLL40_2F_PAD``
    ports A = ``GENCLK`` for ``fast``, B = ``GENCLK_HALF`` for ``sync``; ``boards/icebreaker.py``).
    The IO registers are the first flop; ``sync`` captures them and the previous fast word (a
    fast fabric register) at once: the second flop. The falling-edge sample has half a fast
    period to reach either, as in :class:`ICE40DDRPHY`.

    Bin of an edge: ``4 * now + i``, ``now`` the coarse counter in the ``sync`` cycle after the
    ``sync`` edge ``K - 1`` at or after which the pin is first sampled in its new state, ``i``
    (0..3) that sample's position: the samples at ``K - 1``, half a fast cycle later, the fast
    edge between ``K - 1`` and ``K``, and half a fast cycle after that.

    Parameters
    ----------
    ports : list of IOPort, or None
        Raw pins (``platform.request(..., dir="-").io``). Not used with ``sim=True``.
    channels : int
        N (``sim=True``; otherwise ``len(ports)``).
    fast : str
        The fast clock domain.
    sim : bool
        Replace ``SB_IO`` by a behavioural model (see ``samples``).

    Attributes
    ----------
    latency : int
        1: the group of samples taken from ``sync`` edge ``K - 1`` on is in ``sync``'s register
        after edge ``K``, edge detection is combinational.

    Members
    -------
    samples : In(2 * N)
        ``sim=True`` only, fast domain: channel ``c``'s pin level at fast edge ``k`` (bit
        ``2c``) and at the falling edge after it (bit ``2c + 1``), set before edge ``k``; the
        model registers them at edge ``k``, as the IO registers present ``D_IN_0``/``D_IN_1``.
    """

    fine_bits = 2
    latency = 1

    def __init__(self, ports=None, *, channels=None, fast="fast", sim=False):
        channels = self.channel_count(ports, channels, sim)
        self.ports = ports
        self.sim = sim
        members = {"samples": In(2 * channels)} if sim else {}
        super().__init__(channels, 1, 2, latency=self.latency, members=members, fast=fast)

    def sampler(self, m):
        io_samples = Signal(2 * self.channels)   # D_IN_1, D_IN_0 per channel
        if self.sim:
            m.d[self.fast] += io_samples.eq(self.samples)
            return io_samples
        for c, port in enumerate(self.ports):
            m.submodules[f"sb_io{c}"] = Instance(
                "SB_IO",
                p_PIN_TYPE=C(0b000000, 6),
                io_PACKAGE_PIN=port,
                i_INPUT_CLK=ClockSignal(self.fast),
                o_D_IN_0=io_samples[2 * c],
                o_D_IN_1=io_samples[2 * c + 1],
            )
        return io_samples
