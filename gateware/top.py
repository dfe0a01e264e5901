"""The whole tagger: core, wire encoder, command interface and link, in one clock domain.

Data flow::

    pins -> TaggerCore -> records -> Encoder -> bytes -> UARTTx -> uart_tx
                 ^  counters / config        ^ side (REPLY, STATUS)
                 |                           |
    uart_rx -> FFSynchronizer -> UARTRx -> CommandParser -> RegisterFile

With ``link="stream"`` the two UARTs are left out and the byte streams are ports, for the
in-process simulation transport (``tests/gateware/test_top.py``).
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from .. import __version__
from ..protocol import (CAPABILITY_FAST_HERALD, CAPABILITY_GATE_STAGE, CAPABILITY_GATES,
                        CAPABILITY_REFERENCES, CAPABILITY_STREAM_FILTER, CAPABILITY_TEST_SIGNAL,
                        Kind)
from .core import TaggerCore
from .encoder import Encoder
from .phy import GenericPHY
from .pipe import StreamRegister
from .registers import CAPABILITIES, CommandParser, RegisterFile
from .uart import UARTRx, UARTTx

__all__ = ["LINKS", "Tagger"]

#: Values of ``Tagger(link=...)``.
LINKS = ("uart", "stream")



class Tagger(wiring.Component):
    """A complete time tagger: what a board's top level instantiates.

    Parameters
    ----------
    channels, rules : int
        N inputs and R herald rules (and pins).
    clock_hz : int
        The ``sync`` clock frequency (``ident.clock_hz``; sets the UART's baud divider and the
        LED stretch).
    baud : int
        UART line rate (``link="uart"``), ``4 * baud <= clock_hz``.
    phy : class
        PHY class, as for :class:`TaggerCore`.
    phys : list of PHY components, optional
        Pre-built PHYs, as for :class:`TaggerCore` (``pins`` is then unused: the board wires its
        pins into the PHYs).
    fifo_depth : int
        Merger FIFO depth in bundles.
    test_signal : bool
        Include the test-signal generator (``TaggerCore``); without it ``ident.capabilities``
        bit 0 is clear.
    gates : bool
        Include roles, sync, gates and markers (``TaggerCore``); ``ident.capabilities`` bit 3
        (``CAPABILITY_GATES``) says so, and HERALD records carry ``attempt`` and ``offset``.
    references : bool
        Without ``gates``: the reference role alone (``TaggerCore``); ``ident.capabilities``
        bit 5 (``CAPABILITY_REFERENCES``) says so.
    stream_filter : bool
        Include the stream filter (``TaggerCore``); ``ident.capabilities`` bit 4
        (``CAPABILITY_STREAM_FILTER``) says so.
    herald_stage : bool
        Herald records' time and pattern selected a cycle after the firing (``TaggerCore``;
        the same records, a few more flip-flops).
    gate_stage : bool
        A register stage between the delay lines and the gate unit (``TaggerCore``): one core
        cycle more of herald latency (``ident.capabilities`` bit 7,
        ``CAPABILITY_GATE_STAGE``); the ULX3S's builds of more than 4 channels have it.
    fast_herald : bool
        The board's top level drives the herald pins through a fast herald path
        (:class:`~.fastherald.FastHerald`, outside this component: it needs the sampler's
        clock); only sets ``ident.capabilities`` bit 6 (``CAPABILITY_FAST_HERALD``).
    link : str
        ``"uart"``: 8N1 serial on ``uart_rx`` / ``uart_tx``. ``"stream"``: the command and
        record byte streams as ``rx`` / ``tx`` stream ports, no UART.

    Members
    -------
    pins : In(N)
        Detector inputs (asynchronous; synchronised by the PHYs).
    herald : Out(R)
        Herald output pins.
    led : Out(2)
        ``led[0]``: activity, high for at least ``led_stretch`` cycles after a record leaves the
        core or a command frame arrives. ``led[1]``: events were dropped since the last
        ``control.clear``: set when the core offers a LOSS record (every drop the counters
        count is reported by one), cleared by ``control.clear``.
    uart_rx : In(1), uart_tx : Out(1)
        ``link="uart"``: the serial lines, idle high. ``uart_rx`` is asynchronous (two-flop
        synchroniser).
    rx : In(stream.Signature(8)), tx : Out(stream.Signature(8))
        ``link="stream"``: command bytes in, record bytes out.

    Attributes
    ----------
    bin_fs : int
        One bin in femtoseconds (``ident.bin_fs``), ``10**15 / clock_hz / 2**fine_bits`` rounded.
    led_stretch : int
        Minimum on-time of ``led[0]`` in cycles (50 ms).
    core, encoder, parser, registers :
        The sub-components (for test benches that watch internal signals).
    """

    def __init__(self, channels=4, rules=2, *, clock_hz=100_000_000, baud=12_000_000,
                 phy=GenericPHY, phys=None, fifo_depth=256, link="uart", test_signal=True,
                 stream_filter=True, gates=False, references=False,
                 herald_stage=True, fast_herald=False, gate_stage=False):
        if link not in LINKS:
            raise ValueError(f"link must be one of {', '.join(LINKS)}, not {link!r}")
        self.channels = channels
        self.rules = rules
        self.clock_hz = int(clock_hz)
        self.baud = baud
        self.link = link
        self.core = TaggerCore(channels, rules, phy=phy, phys=phys, fifo_depth=fifo_depth,
                               test_signal=test_signal, stream_filter=stream_filter,
                               gates=gates, references=references,
                               herald_stage=herald_stage, gate_stage=gate_stage)
        self.fine_bits = self.core.fine_bits
        self.bin_fs = round(10 ** 15 / (self.clock_hz * 2 ** self.fine_bits))
        self.led_stretch = max(1, self.clock_hz // 20)

        self.encoder = Encoder(channels, rules, self.fine_bits, gates=gates)
        self.parser = CommandParser()
        self.registers = RegisterFile(channels, rules, clock_hz=self.clock_hz,
                                      bin_fs=self.bin_fs, fine_bits=self.fine_bits,
                                      version=__version__,
                                      capabilities=(CAPABILITIES if test_signal
                                                    else CAPABILITIES & ~CAPABILITY_TEST_SIGNAL)
                                      | (CAPABILITY_STREAM_FILTER if stream_filter else 0)
                                      | (CAPABILITY_GATES if gates else 0)
                                      | (CAPABILITY_REFERENCES if references and not gates
                                         else 0)
                                      | (CAPABILITY_FAST_HERALD if fast_herald else 0)
                                      | (CAPABILITY_GATE_STAGE if gate_stage else 0))
        # Every block of the core gets a register of its own for `clear` (TaggerCore.clear_next).
        self.core.clear_next = self.registers.clear_next
        if link == "uart":
            # Built here so that a bad clock/baud pair fails at construction.
            self.uart_rx_unit = UARTRx(self.clock_hz, baud)
            self.uart_tx_unit = UARTTx(self.clock_hz, baud)

        members = {
            "pins":   In(channels),
            "herald": Out(rules),
            "led":    Out(2),
        }
        if link == "uart":
            members["uart_rx"] = In(1, init=1)
            members["uart_tx"] = Out(1, init=1)
        else:
            members["rx"] = In(stream.Signature(8))
            members["tx"] = Out(stream.Signature(8))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        m.submodules.encoder = encoder = self.encoder
        m.submodules.parser = parser = self.parser
        m.submodules.registers = regs = self.registers

        m.d.comb += [
            core.pins.eq(self.pins),
            self.herald.eq(core.herald),
            core.config.eq(regs.config),
            core.run.eq(regs.run),
            core.clear.eq(regs.clear),
            core.counter_addr.eq(regs.counter_addr),
            regs.counter_data.eq(core.counter_data),
            regs.busy.eq(core.busy),
            regs.now.eq(core.now),
            regs.bad_frame.eq(parser.bad_frame),
            encoder.idle.eq(core.idle),
            encoder.ref.eq(core.ref),
            encoder.anchor_interval.eq(regs.anchor_interval),
            encoder.clear.eq(regs.clear),
        ]
        wiring.connect(m, core.records, encoder.i)
        wiring.connect(m, regs.side, encoder.side)
        wiring.connect(m, parser.o, regs.command)

        if self.link == "uart":
            m.submodules.uart_rx = rx = self.uart_rx_unit
            m.submodules.uart_tx = tx = self.uart_tx_unit
            # uart_rx comes from another clock domain (the USB bridge); idle high.
            m.submodules.rx_sync = FFSynchronizer(self.uart_rx, rx.rx, init=1)
            wiring.connect(m, rx.o, parser.i)
            # Registered stage: the UART's bit-timing logic does not reach into the encoder.
            m.submodules.tx_register = tx_register = StreamRegister(8)
            wiring.connect(m, encoder.o, tx_register.i)
            wiring.connect(m, tx_register.o, tx.i)
            m.d.comb += self.uart_tx.eq(tx.tx)
        else:
            wiring.connect(m, wiring.flipped(self.rx), parser.i)
            wiring.connect(m, encoder.o, wiring.flipped(self.tx))

        # led[0]: activity, stretched so that a single record is visible.
        activity = ((core.records.valid & core.records.ready)
                    | (parser.o.valid & parser.o.ready))
        hold = Signal(range(self.led_stretch + 1))
        with m.If(activity):
            m.d.sync += hold.eq(self.led_stretch)
        with m.Elif(hold != 0):
            m.d.sync += hold.eq(hold - 1)
        m.d.comb += self.led[0].eq(hold != 0)

        # led[1]: a LOSS record reports every drop the drop counters count (merger and delay
        # line), so the first one offered since clear lights it.
        dropped = Signal()
        with m.If(regs.clear):
            m.d.sync += dropped.eq(0)
        with m.Elif(core.records.valid & (core.records.payload.kind == Kind.LOSS)):
            m.d.sync += dropped.eq(1)
        m.d.comb += self.led[1].eq(dropped)
        return m
