"""iCEBreaker (iCE40UP5K-SG48, FT2232H USB UART): 2 channels, 1 herald rule, 10.4 ns bins.

Pin map (also in ``docs/boards.md``):

* detector inputs ``det`` 0..3: PMOD1A pins 1..4 (FPGA pins 4, 2, 47, 45), 3.3 V LVCMOS, each
  into an ``SB_IO`` DDR input register clocked at 48 MHz
  (:class:`heraldry.gateware.phy_ice40.ICE40DDRInputs`: four samples per core cycle);
* herald outputs ``herald`` 0..1: PMOD1B pins 1..2 (FPGA pins 43, 38);
* ``led_g`` (pin 37): activity (``Tagger.led[0]``); ``led_r`` (pin 11): events dropped since the
  last clear (``Tagger.led[1]``);
* UART: FT2232H channel B (``uart`` 0: rx pin 6, tx pin 9) at 3 Mbaud.

Clocking: ``SB_PLL40_2F_PAD`` from the 12 MHz oscillator on pin 35: port A ``fast`` = 48 MHz
(12 * 64 / 16) for the DDR input registers, port B ``sync`` = ``ICEBREAKER.clock_hz`` = 24 MHz
(``GENCLK_HALF``, rising edges coinciding with port A's: the aligned gearbox of
``docs/boards.md``, "Two clocks"); ``sync`` is held in reset until the PLL locks. Bins:
1 / 96 MHz = 10.4 ns. The FT2232H runs at 3 Mbaud (8 cycles a bit; 12 Mbaud needs a 48 MHz
core, the UART's minimum of four cycles a bit). Measured figures and what fits:
``docs/boards.md``.
"""

from amaranth.build import Attrs, Pins, Resource
from amaranth.hdl import (ClockDomain, ClockSignal, Const, Elaboratable, Instance, Module,
                          Signal)
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer
from amaranth_boards.icebreaker import ICEBreakerPlatform

from ..gateware.phy_ice40 import ICE40DDRInputs
from ..gateware.top import Tagger
from . import Board, register

__all__ = ["HeraldryICEBreakerPlatform", "ICEBreakerBoard", "ICEBREAKER", "ice40_pll_params"]

#: FPGA pins of PMOD1A 1..4 (detector inputs) and PMOD1B 1..4 (herald outputs).
DETECTOR_PINS = ("4", "2", "47", "45")
HERALD_PINS = ("43", "38", "34", "31")


class HeraldryICEBreakerPlatform(ICEBreakerPlatform):
    """The amaranth-boards iCEBreaker with heraldry's detector inputs and herald outputs."""

    resources = ICEBreakerPlatform.resources + [
        *[Resource("det", i, Pins(pin, dir="i"), Attrs(IO_STANDARD="SB_LVCMOS"))
          for i, pin in enumerate(DETECTOR_PINS)],
        *[Resource("herald", i, Pins(pin, dir="o"), Attrs(IO_STANDARD="SB_LVCMOS"))
          for i, pin in enumerate(HERALD_PINS)],
    ]


def ice40_pll_params(ref_hz, out_hz):
    """``SB_PLL40`` divider parameters (``DIVR``, ``DIVF``, ``DIVQ``, ``FILTER_RANGE``) that give
    exactly ``out_hz`` from ``ref_hz``: ``out = ref * (DIVF + 1) / ((DIVR + 1) * 2**DIVQ)``.

    Limits (iCE40 sysCLOCK PLL guide): PFD 10..133 MHz, VCO 533..1066 MHz, output 16..275 MHz.
    Raises ValueError if no setting is exact."""
    if not 16e6 <= out_hz <= 275e6:
        raise ValueError(f"iCE40 PLL output must be 16..275 MHz, not {out_hz} Hz")
    for divr in range(16):
        pfd = ref_hz / (divr + 1)
        if not 10e6 <= pfd <= 133e6:
            continue
        for divq in range(1, 7):
            for divf in range(128):
                vco = pfd * (divf + 1)
                if not 533e6 <= vco <= 1066e6:
                    continue
                if ref_hz * (divf + 1) == out_hz * (divr + 1) * 2 ** divq:
                    filter_range = next(i for i, top in enumerate(
                        (17e6, 26e6, 44e6, 66e6, 101e6, 133e6), 1) if pfd < top)
                    return {"DIVR": divr, "DIVF": divf, "DIVQ": divq,
                            "FILTER_RANGE": filter_range}
    raise ValueError(f"no iCE40 PLL setting gives exactly {out_hz} Hz from {ref_hz} Hz")


class ICEBreakerTop(Elaboratable):
    """Clocking, :class:`Tagger` and pins for the iCEBreaker (an Elaboratable).

    Domains ``fast`` (2 x ``clock_hz``: the DDR input registers) and ``sync`` (``clock_hz``)
    from the PLL; the detector pins go into one :class:`ICE40DDRInputs`, whose per-channel PHYs
    are handed to the Tagger (``phys=``).

    Attributes
    ----------
    tagger : Tagger
        The tagger, built with the board's clock, baud and PHYs in :meth:`elaborate` (the PHYs
        need the requested pins; None before).
    """

    def __init__(self, board, channels):
        self.board = board
        self.channels = channels
        self.tagger = None

    def elaborate(self, platform):
        m = Module()
        board = self.board
        self._pll(m, platform, int(platform.default_clk_frequency))

        def buffer(name, index, direction):
            port = platform.request(name, index, dir="-")
            m.submodules[f"{name}{index}_buffer"] = buf = io.Buffer(direction, port)
            return buf

        ports = [platform.request("det", c, dir="-").io for c in range(self.channels)]
        m.submodules.inputs = inputs = board.phy(ports)
        self.tagger = tagger = Tagger(
            self.channels, rules=board.rules, clock_hz=board.clock_hz, baud=board.baud,
            phys=inputs.phys, test_signal=board.test_signal,
            stream_filter=board.stream_filter, herald_stage=board.herald_stage,
            references=board.references)
        m.submodules.tagger = tagger

        for r in range(tagger.rules):
            m.d.comb += buffer("herald", r, "o").o.eq(tagger.herald[r])
        uart = platform.request("uart", 0, dir={"rx": "-", "tx": "-"})
        m.submodules.uart_rx_buffer = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_buffer = tx = io.Buffer("o", uart.tx)
        m.d.comb += [
            tagger.uart_rx.eq(rx.i),
            tx.o.eq(tagger.uart_tx),
            buffer("led_g", 0, "o").o.eq(tagger.led[0]),
            buffer("led_r", 0, "o").o.eq(tagger.led[1]),
        ]
        return m

    def _pll(self, m, platform, ref_hz):
        # Port A: the PHY's `fast` clock (2 x sync); port B: GENCLK_HALF, `sync`, its rising
        # edges coinciding with port A's (the aligned gearbox relies on it).
        fast_hz = 2 * self.board.clock_hz
        pll = ice40_pll_params(ref_hz, fast_hz)
        m.domains.sync = ClockDomain("sync")
        m.domains.fast = ClockDomain("fast", reset_less=True)
        clk12 = platform.request(platform.default_clk, dir="-")
        locked = Signal()
        clk = Signal(name="pll_clk")
        clk_fast = Signal(name="pll_fast")
        m.submodules.pll = Instance(
            "SB_PLL40_2F_PAD",
            p_FEEDBACK_PATH="SIMPLE",
            p_PLLOUT_SELECT_PORTA="GENCLK",
            p_PLLOUT_SELECT_PORTB="GENCLK_HALF",
            p_DIVR=pll["DIVR"], p_DIVF=pll["DIVF"], p_DIVQ=pll["DIVQ"],
            p_FILTER_RANGE=pll["FILTER_RANGE"],
            i_PACKAGEPIN=clk12.io,
            i_RESETB=Const(1),
            i_BYPASS=Const(0),
            o_PLLOUTGLOBALA=clk_fast,
            o_PLLOUTGLOBALB=clk,
            o_LOCK=locked,
        )
        m.d.comb += [ClockSignal("sync").eq(clk), ClockSignal("fast").eq(clk_fast)]
        # No constraints on the PLL outputs: synthesis merges these nets into the domains'
        # (`clk`, `fast_clk`), so nextpnr would ignore them ("net 'pll_clk' does not exist in
        # design"); it derives both from the 12 MHz pin constraint through the PLL instead, and
        # `build` fails if a clock is left without one.
        # LOCK is asynchronous to the PLL output: release the reset synchronously.
        m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")


class ICEBreakerBoard(Board):
    """:class:`Board` for the iCEBreaker; :meth:`top` gives an :class:`ICEBreakerTop`.

    The test-signal generator is left out: it is ~1000 logic cells at 2 channels and the
    2-channel Tagger without it already fills ~96 % of the UP5K's 5280 (docs/boards.md)."""

    @property
    def crossing_limits_ns(self):
        """The aligned gearbox's crossing (``heraldry.gateware.phy_ice40.ICE40DDRInputs``):
        ``sync`` captures registers of ``fast`` at a coinciding edge, so a path may take at most
        one fast period, half of one from the falling-edge sample (``D_IN_1``)."""
        return {
            ("posedge fast", "posedge sync"): round(1e9 / (2 * self.clock_hz), 3),
            ("negedge fast", "posedge sync"): round(1e9 / (4 * self.clock_hz), 3),
        }

    @property
    def connector_pins(self):
        """Detector inputs on PMOD1A 1..4, herald outputs on PMOD1B 1..4."""
        return {"det": [("pmod", 0, str(p)) for p in range(1, 5)],
                "herald": [("pmod", 1, str(p)) for p in range(1, 5)]}

    @property
    def hold_crossings(self):
        """``fast`` registers (the DDR input's rising-edge sample and the older word) captured
        by ``sync`` at the coinciding rising edge: a same-edge transfer."""
        return (("posedge fast", "posedge sync"),)

    @property
    def sdf_clock_sources(self):
        """nextpnr-ice40 puts the PLL's ``PLLOUTGLOBALA`` (``fast``) and ``PLLOUTGLOBALB``
        (``sync``) on global buffers named after the PLL instance (``pll``)."""
        return {"fast": "$gbuf_pll_pllout_a", "sync": "$gbuf_pll_pllout_b"}

    test_signal = False
    #: No stream filter either (docs/boards.md): its counters and the merger's wider bundles do
    #: not fit beside a full core at 97.8 % of the logic cells.
    stream_filter = False
    #: The reference role alone (``TaggerCore(references=True)``, capability bit 5): an input
    #: can be a PPS / divided 10 MHz reference for a two-node link (docs/sync.md). Sync and
    #: gates do not fit.
    references = True
    #: The herald record stage (``TaggerCore(herald_stage=True)``, 30 logic cells): without it
    #: icetime's longest path runs through the record selection, and seeds 1-4 gave icetime
    #: 22.86, 24.29, 22.69, 23.10 MHz (one of four met); with it 24.51, 25.22, 25.95, 25.77 MHz
    #: (docs/boards.md, "Build figures").
    herald_stage = True
    #: Herald rules (and herald pins).
    rules = 1
    #: nextpnr seed: icetime's figure of the core clock is within 3 % of the 24 MHz target and
    #: moves with placement (seeds 1..5: 23.36, 23.59, 24.65, 24.69, 24.74 MHz; docs/boards.md).
    seed = 4

    def top(self, channels=None):
        return ICEBreakerTop(self, self.check_channels(channels))


def _bin_fs(clock_hz, phy):
    return round(10 ** 15 / (clock_hz * 2 ** phy.fine_bits))


# 24 MHz core, 48 MHz DDR sampling (12 MHz * 64 / 16 and GENCLK_HALF): four samples per core
# cycle, 10.4 ns bins. The whole Tagger reaches 24-26 MHz on the UP5K after the pipelining in
# the core (docs/boards.md). The FT2232H runs at 3 Mbaud (8 cycles a bit).
_CLOCK_HZ = 24_000_000
ICEBREAKER = register(ICEBreakerBoard(
    name="icebreaker",
    platform=HeraldryICEBreakerPlatform,
    clock_hz=_CLOCK_HZ,
    baud=3_000_000,
    phy=ICE40DDRInputs,
    bin_fs=_bin_fs(_CLOCK_HZ, ICE40DDRInputs),
    default_channels=2,
    max_channels=2,
    programmer="iceprog",
))
