"""iCE40 DDR inputs: two samples per fast clock cycle from the ``SB_IO`` input registers.

:class:`ICE40DDRInputs` (what the iCEBreaker builds) samples every pin at a clock twice as fast
as the core and hands the core four samples per cycle (F = 2) through the aligned
:class:`~.gearbox.WordGearbox`.
"""

from amaranth.hdl import C, ClockSignal, Instance, Signal
from amaranth.lib.wiring import In

from .gearbox import GearedInputs

__all__ = ["ICE40DDRInputs"]


class ICE40DDRInputs(GearedInputs):
    """Every detector pin into an ``SB_IO`` DDR input register clocked by the fast domain, two
    fast cycles per ``sync`` cycle (R = 2, aligned clocks): ``fine_bits = 2``, four samples per
    ``sync`` cycle, bins of half a fast cycle.

    The two clocks must come from one PLL with coinciding rising edges (``SB_PLL40_2F_PAD``
    ports A = ``GENCLK`` for ``fast``, B = ``GENCLK_HALF`` for ``sync``; ``boards/icebreaker.py``).
    The IO registers are the first flop; ``sync`` captures them and the previous fast word (a
    fast fabric register) at once: the second flop. The falling-edge sample has half a fast
    period to reach either, which limits the fast clock to about 125 MHz (toolchain feasibility
    builds of a single-clock DDR input: 113-125 MHz).

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
