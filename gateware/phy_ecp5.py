"""ECP5 gearbox inputs: four samples per ``sclk`` cycle from ``IDDRX2F``.

Clocking: a PLL makes the edge clock ``eclk`` (400 MHz for 1.25 ns bins), ``ECLKSYNCB`` drives
the edge-clock tree, and ``CLKDIVF`` (``DIV="2.0"``) divides it to the gearboxes' system clock
(200 MHz) with the phase relation the gearbox needs. ``IDDRX2F`` samples the pin on both edges
of ``eclk`` (4 samples per system-clock cycle) and presents them as ``Q0``..``Q3`` (``Q0`` the
earliest).

:class:`ECP5GearboxInputs` (what the ULX3S builds, ``boards/ulx3s.py``): every pin's gearbox at
``sclk`` = 200 MHz, four ``sclk`` words per cycle of a 50 MHz core through the elastic crossing
of :mod:`.gearbox` (F = 4); the core does not reach 200 MHz itself (docs/boards.md).

Constraints (measured with nextpnr-ecp5 in the toolchain feasibility builds): ``IDDRX2F`` exists
only on left/right-bank pins, and every channel fed by one edge clock must sit on the same side.
"""

from amaranth.hdl import ClockSignal, Const, Instance, Signal
from amaranth.lib.wiring import In

from .gearbox import GearedInputs

__all__ = ["ECP5GearboxInputs"]


class ECP5GearboxInputs(GearedInputs):
    """Every detector pin into an ``IDDRX2F`` (4 samples per ``sclk`` cycle), four ``sclk``
    cycles per ``sync`` cycle through the elastic :class:`~.gearbox.WordGearbox`:
    ``fine_bits = 4``, 16 samples per ``sync`` cycle, bins of one ``eclk`` half-period.

    Clocking (``boards/ulx3s.py``): ``eclk`` (400 MHz) -> ``CLKDIVF`` -> ``sclk`` (200 MHz, the
    gearboxes' system clock), and ``sync`` (50 MHz) from the same PLL. ``CLKDIVF``'s divider
    phase is not defined, so ``sclk`` and ``sync`` are frequency-locked but of unknown phase: the
    elastic crossing. A fabric register behind each gearbox (``sclk``) is the second flop.

    Bin of an edge: ``16 * now + i`` with ``now`` taken ``latency`` cycles before the cycle of
    the report and ``i`` (0..15) the sample's position in its group. Groups start at an ``sclk``
    cycle of fixed phase, and the crossing takes 2 to 4 ``sync`` cycles fixed at start, so every
    timestamp carries one constant offset (the same for every channel) that may differ by up to
    one ``sync`` cycle between power-ups; pin-to-herald latency likewise.

    Parameters
    ----------
    ports : list of IOPort, or None
        Raw pins into ``IDDRX2F``'s ``D``. Not used with ``sim=True``.
    channels : int
        N (``sim=True``; otherwise ``len(ports)``).
    fast, eclk : str
        The gearboxes' system clock (``sclk``) and edge clock (``eclk``) domains.
    sim : bool
        Replace ``IDDRX2F`` by a behavioural model (see ``samples``).

    Attributes
    ----------
    latency : int
        4, declared: the crossing's delay is fixed only at start. In simulation at five phases
        of ``sync`` against ``sclk`` the times come out 8 bins late or 8 early against the pin
        (``tests/gateware/test_gearbox.py``); a start at which the synchroniser goes metastable
        can add one ``sync`` cycle (16 bins).

    Members
    -------
    samples : In(4 * N)
        ``sim=True`` only, ``fast`` domain: channel ``c``'s pin level at the four ``eclk``
        edges from ``sclk`` edge ``k`` on (bits ``4c`` .. ``4c + 3``, the earliest lowest), set
        before edge ``k``; the model registers them at edge ``k``, as ``IDDRX2F`` presents them
        on ``Q0``..``Q3``.
    """

    fine_bits = 4
    latency = 4

    def __init__(self, ports=None, *, channels=None, fast="sclk", eclk="eclk", sim=False):
        channels = self.channel_count(ports, channels, sim)
        self.ports = ports
        self.sim = sim
        self.eclk = eclk
        members = {"samples": In(4 * channels)} if sim else {}
        super().__init__(channels, 2, 4, latency=self.latency, members=members, fast=fast,
                         elastic=True)

    def sampler(self, m):
        gearbox = Signal(4 * self.channels)   # Q3..Q0 per channel
        if self.sim:
            m.d[self.fast] += gearbox.eq(self.samples)
        else:
            for c, port in enumerate(self.ports):
                m.submodules[f"iddr{c}"] = Instance(
                    "IDDRX2F",
                    i_D=port,
                    i_ECLK=ClockSignal(self.eclk),
                    i_SCLK=ClockSignal(self.fast),
                    i_RST=Const(0),
                    o_Q0=gearbox[4 * c],
                    o_Q1=gearbox[4 * c + 1],
                    o_Q2=gearbox[4 * c + 2],
                    o_Q3=gearbox[4 * c + 3],
                )
        word = Signal(4 * self.channels)
        m.d[self.fast] += word.eq(gearbox)
        return word
