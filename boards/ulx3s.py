"""ULX3S (ECP5 LFE5U-85F or -25F, speed grade 6, FT231X UART at 3 Mbaud), 1.25 ns bins.

Pin map (header ``gpio`` connector of amaranth-boards):

* detector inputs ``det`` 0..7: ``gpio`` 14+, 14-, 15+, 15-, 16+, 16-, 17+, 17- (FPGA pins U18,
  U17, N17, P16, N16, M17, L16, L17), LVCMOS33; the first 4 are used (more do not meet timing
  at 1.25 ns bins yet). They must be right-bank pins: ``IDDRX2F`` exists
  only on left/right-bank IO, and every channel of one edge clock must sit on the same side
  (measured with the open toolchain: a top-bank pin fails to place, mixed sides fail to route);
* herald outputs ``herald`` 0..1: ``gpio`` 0+, 0- (FPGA pins B11, C11), LVCMOS33;
* ``led`` 0: activity (``Tagger.led[0]``); ``led`` 1: events dropped since the last clear;
* UART: the FT231X (``uart`` 0: rx M1, tx L4) at 3 Mbaud, its highest standard rate.

Clocking (docs/boards.md, "Two clocks"): the 25 MHz oscillator feeds ``EHXPLLL`` (VCO 800
MHz). ``CLKOP`` (400 MHz) -> ``ECLKSYNCB`` (edge clock ``eclk``, sampling on both edges: 800
Msample/s) -> ``CLKDIVF`` ``DIV="2.0"`` (``sclk``, 200 MHz, the gearboxes' system clock);
``CLKOS`` (VCO / 16 = 50 MHz) is the core's ``sync``. Each detector pin goes straight into an
``IDDRX2F`` 4:1 gearbox; one :class:`heraldry.gateware.phy_ecp5.ECP5GearboxInputs` collects
four gearbox words per core cycle through the elastic crossing (``sclk`` and ``sync`` are
frequency-locked, their phase is not defined): ``fine_bits = 4``, 16 samples per 20 ns core
cycle. ``sclk`` and ``sync`` are held in reset until the PLL locks.

The 400 MHz edge clock is not timed by nextpnr (no fabric register uses it). The limit relied
on: Lattice TN-02035 (ECP5 High-Speed I/O Interface) gives 400 MHz ECLK (UI 1.25 ns) as the
maximum of the GDDRX2 receive interfaces; the per-grade figure for -6 in the datasheet (DS1044)
is not checked here. If it is lower, ``_CLOCK_HZ = 39_062_500`` (312.5 MHz ECLK, VCO 625 MHz,
``CLKOS`` / 16; 1.6 ns bins) has exact dividers too. Not yet run on hardware.

Status (YoWASP nextpnr-ecp5, 85F, gates on, fast herald path off, seed 1): timing met at 4
channels (``sync`` 60.8 MHz of 50, ``sclk`` 276.9 MHz of 200, crossing 3.56 ns, limit 20 ns)
and at 8 (with the gate stage: ``sync`` 51.9 MHz, ``sclk`` 216.4 MHz, crossing 3.83 ns);
docs/boards.md ("Build figures") has the figures.

Fast herald path (:class:`heraldry.gateware.fastherald.FastHerald`, ``ULX3SBoard.fast_herald``):
the herald pins of early rules from ``sclk``, 41.25-46.25 ns pin to pin in simulation against
112.5-151.25 ns through the core. Off by default: with it ``sclk`` missed 200 MHz (68.9 MHz in
the full build with the core's blocks reused; 141.2 MHz with the rebuilt, pipelined path, 153-169
MHz for that path alone; docs/boards.md, "The ULX3S's fast herald path").
"""

from amaranth.build import Attrs, Pins, Resource
from amaranth.hdl import ClockDomain, ClockSignal, Const, Elaboratable, Instance, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer
from amaranth_boards.ulx3s import ULX3S_25F_Platform, ULX3S_85F_Platform

from ..gateware.fastherald import FastHerald
from ..gateware.phy_ecp5 import ECP5GearboxInputs
from ..gateware.top import Tagger
from . import Board, register

__all__ = ["HeraldryULX3S85FPlatform", "HeraldryULX3S25FPlatform", "ULX3SBoard", "ULX3STop",
           "ULX3S_85F", "ULX3S_25F", "add_clocking", "ecp5_pll_params"]

#: Header pins of the detector inputs (right bank, one edge clock) and herald outputs.
DETECTOR_PINS = ("14+", "14-", "15+", "15-", "16+", "16-", "17+", "17-")
HERALD_PINS = ("0+", "0-")

_RESOURCES = [
    *[Resource("det", i, Pins(pin, dir="i", conn=("gpio", 0)), Attrs(IO_TYPE="LVCMOS33"))
      for i, pin in enumerate(DETECTOR_PINS)],
    *[Resource("herald", i, Pins(pin, dir="o", conn=("gpio", 0)),
               Attrs(IO_TYPE="LVCMOS33", DRIVE="8"))
      for i, pin in enumerate(HERALD_PINS)],
]


class HeraldryULX3S85FPlatform(ULX3S_85F_Platform):
    """The amaranth-boards ULX3S 85F with heraldry's detector inputs and herald outputs."""

    resources = ULX3S_85F_Platform.resources + _RESOURCES


class HeraldryULX3S25FPlatform(ULX3S_25F_Platform):
    """The amaranth-boards ULX3S 25F with heraldry's detector inputs and herald outputs."""

    resources = ULX3S_25F_Platform.resources + _RESOURCES


def ecp5_pll_params(ref_hz, out_hz):
    """``EHXPLLL`` dividers (``CLKI_DIV``, ``CLKFB_DIV``, ``CLKOP_DIV``) for exactly ``out_hz``
    on ``CLKOP`` from ``ref_hz``, with ``CLKOP`` as feedback: ``out = ref * CLKFB_DIV /
    CLKI_DIV`` and ``vco = out * CLKOP_DIV``.

    Limits (ECP5 sysCLOCK PLL guide, TN1263): PFD 10..400 MHz, VCO 400..800 MHz, output
    3.125..400 MHz, each divider 1..128. The highest VCO is chosen (lowest jitter). Raises
    ValueError if no setting is exact."""
    best = None
    for clki_div in range(1, 129):
        pfd = ref_hz / clki_div
        if not 10e6 <= pfd <= 400e6:
            continue
        for clkfb_div in range(1, 129):
            if ref_hz * clkfb_div != out_hz * clki_div or not 3.125e6 <= out_hz <= 400e6:
                continue
            for clkop_div in range(1, 129):
                vco = out_hz * clkop_div
                if 400e6 <= vco <= 800e6 and (best is None or vco > best[0]):
                    best = (vco, {"CLKI_DIV": clki_div, "CLKFB_DIV": clkfb_div,
                                  "CLKOP_DIV": clkop_div})
    if best is None:
        raise ValueError(f"no ECP5 PLL setting gives exactly {out_hz} Hz from {ref_hz} Hz")
    return best[1]


def add_clocking(m, platform, clock_hz, ratio=4):
    """Add domains ``eclk`` (reset-less), ``sclk`` and ``sync`` (``clock_hz``) to ``m``.

    25 MHz oscillator -> ``EHXPLLL``: ``CLKOP`` = ``eclk`` (``ratio * clock_hz * 2``) ->
    ``ECLKSYNCB`` -> ``CLKDIVF`` ``DIV="2.0"`` -> ``sclk`` (``ratio * clock_hz``, the gearboxes'
    system clock); ``CLKOS`` = ``sync`` (``clock_hz``), frequency-locked to ``sclk`` with an
    undefined phase (``CLKDIVF``'s divider), hence the elastic crossing of
    :class:`~heraldry.gateware.phy_ecp5.ECP5GearboxInputs`. ``sclk`` and ``sync`` are in reset
    until the PLL locks."""
    ref_hz = int(platform.default_clk_frequency)
    sclk_hz = ratio * clock_hz
    eclk_hz = 2 * sclk_hz
    pll = ecp5_pll_params(ref_hz, eclk_hz)
    vco_hz = eclk_hz * pll["CLKOP_DIV"]
    if vco_hz % clock_hz or not 1 <= vco_hz // clock_hz <= 128:
        raise ValueError(f"no CLKOS divider gives {clock_hz} Hz from a {vco_hz} Hz VCO")
    clkos_div = vco_hz // clock_hz

    m.domains.eclk = cd_eclk = ClockDomain("eclk", reset_less=True)
    m.domains.sclk = ClockDomain("sclk")
    m.domains.sync = ClockDomain("sync")
    m.submodules.clk25 = clk25 = io.Buffer("i", platform.request(platform.default_clk, dir="-"))
    pll_out = Signal()
    locked = Signal()
    m.submodules.pll = Instance(
        "EHXPLLL",
        p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
        p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
        p_CLKOP_ENABLE="ENABLED", p_CLKOP_FPHASE=0,
        p_CLKOP_CPHASE=pll["CLKOP_DIV"] - 1, p_CLKOP_DIV=pll["CLKOP_DIV"],
        p_CLKOS_ENABLE="ENABLED", p_CLKOS_FPHASE=0,
        p_CLKOS_CPHASE=clkos_div - 1, p_CLKOS_DIV=clkos_div,
        p_CLKI_DIV=pll["CLKI_DIV"], p_CLKFB_DIV=pll["CLKFB_DIV"], p_FEEDBK_PATH="CLKOP",
        i_CLKI=clk25.i, i_CLKFB=pll_out, i_RST=Const(0), i_STDBY=Const(0),
        i_PHASESEL0=Const(0), i_PHASESEL1=Const(0), i_PHASEDIR=Const(0),
        i_PHASESTEP=Const(0), i_PHASELOADREG=Const(0), i_PLLWAKESYNC=Const(0),
        i_ENCLKOP=Const(0), i_ENCLKOS=Const(0),
        o_CLKOP=pll_out, o_CLKOS=ClockSignal("sync"), o_LOCK=locked,
        a_FREQUENCY_PIN_CLKI=f"{ref_hz / 1e6:g}",
        a_FREQUENCY_PIN_CLKOP=f"{eclk_hz / 1e6:g}",
        a_FREQUENCY_PIN_CLKOS=f"{clock_hz / 1e6:g}",
        a_ICP_CURRENT="12", a_LPF_RESISTOR="8",
        a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
    )
    m.submodules.eclksync = Instance(
        "ECLKSYNCB", i_ECLKI=pll_out, i_STOP=Const(0), o_ECLKO=cd_eclk.clk)
    # CLKDIVF keeps sclk phase-aligned to eclk, which the gearbox's ECLK/SCLK transfer needs.
    m.submodules.clkdiv = Instance(
        "CLKDIVF", p_DIV="2.0",
        i_CLKI=cd_eclk.clk, i_RST=Const(0), i_ALIGNWD=Const(0), o_CDIVX=ClockSignal("sclk"))
    # No constraints on the clock nets: synthesis renames them, so nextpnr ignores constraints
    # on them ("net ... does not exist"); it derives every one from the 25 MHz pin constraint
    # through EHXPLLL, ECLKSYNCB and CLKDIVF instead.
    # LOCK is asynchronous to both clocks: release each reset synchronously.
    m.submodules.reset_sclk = ResetSynchronizer(~locked, domain="sclk")
    m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")


class ULX3STop(Elaboratable):
    """Clocking, :class:`Tagger` fed by one :class:`ECP5GearboxInputs` (a gearbox per detector
    pin), and pins.

    Domains: ``eclk`` (``8 * clock_hz``, edge clock of the gearboxes), ``sclk`` (``4 *
    clock_hz``, from ``CLKDIVF``) and ``sync`` (``clock_hz``, the PLL's ``CLKOS``); see
    :func:`add_clocking`.

    Attributes
    ----------
    tagger : Tagger
        Built in :meth:`elaborate` (the PHYs need the requested pins).
    fast_herald : FastHerald or None
        The fast herald path (``board.fast_herald``), built in :meth:`elaborate`: the herald
        pins of early rules from ``sclk`` where exactly equivalent to the core's.
    """

    def __init__(self, board, channels):
        self.board = board
        self.channels = channels
        self.tagger = None
        self.fast_herald = None

    def elaborate(self, platform):
        m = Module()
        board = self.board
        add_clocking(m, platform, board.clock_hz)

        ports = [platform.request("det", c, dir="-").io for c in range(self.channels)]
        m.submodules.inputs = inputs = board.phy(ports)
        self.tagger = tagger = Tagger(self.channels, rules=len(HERALD_PINS),
                                      clock_hz=board.clock_hz, baud=board.baud,
                                      phys=inputs.phys, gates=board.gates,
                                      gate_stage=board.gate_stage(self.channels),
                                      references=board.references,
                                      fast_herald=board.fast_herald)
        m.submodules.tagger = tagger
        pins = tagger.herald
        if board.fast_herald:
            # Early rules' pins from the sampling domain where exactly equivalent to the core's.
            self.fast_herald = fast = FastHerald(self.channels, tagger.rules, domain="sclk",
                                                 roles=board.references, gates=board.gates)
            m.submodules.fast_herald = fast
            fast.attach(m, inputs, tagger.core)
            pins = fast.herald
        for r in range(tagger.rules):
            m.submodules[f"herald{r}"] = herald = io.Buffer(
                "o", platform.request("herald", r, dir="-"))
            m.d.comb += herald.o.eq(pins[r])
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = uart_rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = uart_tx = io.Buffer("o", uart.tx)
        m.d.comb += [
            tagger.uart_rx.eq(uart_rx.i),
            uart_tx.o.eq(tagger.uart_tx),
        ]
        for i in range(2):
            m.submodules[f"led{i}"] = led = io.Buffer("o", platform.request("led", i, dir="-"))
            m.d.comb += led.o.eq(tagger.led[i])
        return m


class ULX3SBoard(Board):
    """:class:`Board` for the ULX3S; :meth:`top` gives a :class:`ULX3STop`."""

    #: Sync roles, gates and markers in the core (``TaggerCore(gates=True)``, capability bit 3):
    #: on since the core meets 50 MHz with them (docs/boards.md, "Build figures").
    gates = True
    #: Without gates, the reference role alone (``TaggerCore(references=True)``, capability
    #: bit 5): an input can be a PPS / divided 10 MHz reference (docs/sync.md).
    references = True
    #: The herald pins of early rules from the fast path in ``sclk``
    #: (:class:`~heraldry.gateware.fastherald.FastHerald`, capability bit 6) where exactly
    #: equivalent to the core's (docs/boards.md, "The ULX3S's fast herald path"). Off: with it
    #: ``sclk`` misses 200 MHz (68.9 MHz in the 4-channel build with the core's blocks reused;
    #: 141.2 MHz with the rebuilt, pipelined path), so the default build keeps the core's pins.
    fast_herald = False
    #: Channels above which the core has a register stage between the delay lines and the gate
    #: unit (``TaggerCore(gate_stage=True)``): one core cycle (20 ns) more of herald latency.
    #: The 8-channel build with gates missed 50 MHz on the path from a delay line's memory read
    #: through the gate unit's decision (21.92 ns); builds of up to 4 channels meet without it.
    gate_stage_above = 4

    def gate_stage(self, channels):
        """Whether a build of ``channels`` inputs has the gate stage (:attr:`gate_stage_above`;
        only with :attr:`gates`: the path it cuts runs through the gate unit)."""
        return self.gates and channels > self.gate_stage_above

    @property
    def crossing_limits_ns(self):
        """The elastic crossing (``heraldry.gateware.gearbox.WordGearbox``) reads a slot at
        least one core cycle after it was written: a path from ``sclk`` to ``sync`` may take one
        core period."""
        return {("posedge sclk", "posedge sync"): round(1e9 / self.clock_hz, 3)}

    @property
    def connector_pins(self):
        """Detector inputs and herald outputs on the ``gpio`` header (``DETECTOR_PINS``,
        ``HERALD_PINS``)."""
        return {"det": [("gpio", 0, pin) for pin in DETECTOR_PINS],
                "herald": [("gpio", 0, pin) for pin in HERALD_PINS]}

    def top(self, channels=None):
        return ULX3STop(self, self.check_channels(channels))


#: The core's clock: 1/4 of the gearboxes' 200 MHz (16 samples a cycle, 1.25 ns bins).
_CLOCK_HZ = 50_000_000
#: Channels the 85F builds, meeting timing at _CLOCK_HZ (seed 1, gates on; docs/boards.md,
#: "Build figures"): 8 pins are mapped; 4 channels (the default) and 8 (with the gate stage,
#: :meth:`ULX3SBoard.gate_stage`) were built and meet ``sync`` and ``sclk``; 5 to 7 were not
#: built (smaller than 8, the same gate stage).
_MAX_CHANNELS_85F = 8
#: The 25F: 8 channels take about 37000 LUTs of its 24288, so 4 (the default build's size).
_MAX_CHANNELS_25F = 4


def _board(name, platform, max_channels):
    return register(ULX3SBoard(
        name=name,
        platform=platform,
        clock_hz=_CLOCK_HZ,
        baud=3_000_000,
        phy=ECP5GearboxInputs,
        bin_fs=round(10 ** 15 / (_CLOCK_HZ * 2 ** ECP5GearboxInputs.fine_bits)),
        default_channels=4,
        max_channels=max_channels,
        programmer="openFPGALoader",
    ))


ULX3S_85F = _board("ulx3s-85f", HeraldryULX3S85FPlatform, _MAX_CHANNELS_85F)
ULX3S_25F = _board("ulx3s-25f", HeraldryULX3S25FPlatform, _MAX_CHANNELS_25F)
