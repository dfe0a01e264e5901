"""ECP5 gearbox input PHYs: four samples per ``sclk`` cycle from ``IDDRX2F``.

Clocking: a PLL makes the edge clock ``eclk`` (400 MHz for 1.25 ns bins), ``ECLKSYNCB`` drives
the edge-clock tree, and ``CLKDIVF`` (``DIV="2.0"``) divides it to the gearboxes' system clock
(200 MHz) with the phase relation the gearbox needs. ``IDDRX2F`` samples the pin on both edges
of ``eclk`` (4 samples per system-clock cycle) and presents them as ``Q0``..``Q3`` (``Q0`` the
earliest).

* :class:`ECP5GearboxInputs` (what the ULX3S builds, ``boards/ulx3s.py``): every pin's gearbox
  at ``sclk`` = 200 MHz, four ``sclk`` words per cycle of a 50 MHz core through the elastic
  crossing of :mod:`.gearbox` (F = 4).
* :class:`ECP5GearboxPHY`: one pin, the core itself clocked by ``CLKDIVF`` (F = 2): for a core
  that reaches the gearbox's system clock (this one does not at 200 MHz: docs/boards.md).

Constraints (measured with nextpnr-ecp5 in the toolchain feasibility builds): ``IDDRX2F`` exists
only on left/right-bank pins, and every channel fed by one edge clock must sit on the same side.
"""

from amaranth.hdl import ClockSignal, Const, Instance, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .gearbox import GearedInputs
from .phy import PHYSignature, WordEdges

__all__ = ["ECP5GearboxPHY", "ECP5GearboxInputs"]


class ECP5GearboxPHY(wiring.Component):
    """ECP5 ``IDDRX2F`` 4:1 input gearbox, ``fine_bits = 2``.

    A fabric register captures ``Q0``..``Q3`` at each ``sync`` edge (a second flop behind the
    gearbox's own registers, against metastability), then :class:`WordEdges` reports the first
    rising and first falling edge of the 4-sample word.

    Bin of an edge: ``4 * now + i``, where ``now`` is the coarse counter in the cycle after the
    ``sync`` edge ``k`` that starts the gearbox word holding the first sample in the new state,
    and ``i`` (0..3) is that sample's position in the word. The gearbox's internal pipeline
    (from ``D`` to ``Q``) is modelled as one ``sync`` register; any further fixed delay of the
    real primitive shifts every channel's bins by the same constant (a calibration offset, not a
    resolution loss) and is not described by ``latency``.

    Parameters
    ----------
    port : IOPort or None
        The raw pin (``platform.request(..., dir="-").io``), into ``IDDRX2F``'s ``D``. Not used
        with ``sim=True``.
    sim : bool
        Replace ``IDDRX2F`` by a behavioural model for the Amaranth simulator (see ``samples``).
    eclk : str
        Name of the edge-clock domain (twice the ``sync`` frequency, from ``ECLKSYNCB``).

    Attributes
    ----------
    fine_bits : int
        2.
    latency : int
        1: gearbox word registered at ``sync`` edge k, fabric register at k + 1, edge detection
        combinational, so ``rise`` is high in the cycle after edge k + 1.

    Members
    -------
    phy : Out(PHYSignature(2))
        Edge reports.
    samples : In(4)
        ``sim=True`` only. The pin level at the four ``eclk`` edges from ``sync`` edge k on (bit 0
        the earliest), set by the test bench before edge k; the model registers the word at
        edge k, as ``IDDRX2F`` presents it on ``Q0``..``Q3``.
    """

    fine_bits = 2
    latency = 1

    def __init__(self, port=None, *, sim=False, eclk="eclk"):
        if not sim and port is None:
            raise ValueError("ECP5GearboxPHY needs a port unless sim=True")
        self.port = port
        self.sim = sim
        self.eclk = eclk
        members = {"phy": Out(PHYSignature(self.fine_bits))}
        if sim:
            members["samples"] = In(2 ** self.fine_bits)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()

        gearbox = Signal(4)  # Q3..Q0
        if self.sim:
            m.d.sync += gearbox.eq(self.samples)
        else:
            m.submodules.iddr = Instance(
                "IDDRX2F",
                i_D=self.port,
                i_ECLK=ClockSignal(self.eclk),
                i_SCLK=ClockSignal("sync"),
                i_RST=Const(0),
                # ALIGNWD left unconnected: tied to 0, nextpnr fails to route a constant to the
                # IOLOGIC's SLIP input on some pins ("No wire found for port SLIP").
                o_Q0=gearbox[0],
                o_Q1=gearbox[1],
                o_Q2=gearbox[2],
                o_Q3=gearbox[3],
            )

        word = Signal(4)
        m.d.sync += word.eq(gearbox)
        m.submodules.edges = edges = WordEdges(self.fine_bits)
        m.d.comb += edges.word.eq(word)
        wiring.connect(m, edges.phy, wiring.flipped(self.phy))
        return m


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
