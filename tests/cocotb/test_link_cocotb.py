"""The device side of the link (Encoder -> UARTTx, UARTRx) converted to Verilog, in Verilator,
checked by ``link_tb.py`` against the independent UART model ``cocotbext.uart`` at 12 Mbaud from
a 100 MHz clock. Each pytest function runs one ``@cocotb.test()`` and fails if it failed.

The bench wrapper (:class:`LinkBench`) is converted once per revision of the gateware and of this
file (its Verilog name hashes both) and Verilated into ``build/cocotb/<name>/``.
"""

import hashlib
from pathlib import Path

import pytest

from amaranth.hdl import Module, Signal  # noqa: E402
from amaranth.lib import stream, wiring  # noqa: E402
from amaranth.lib.cdc import FFSynchronizer  # noqa: E402
from amaranth.lib.wiring import In, Out  # noqa: E402

import cocotb_runner  # noqa: E402
from heraldry.gateware.encoder import SIDE_LAYOUT, Encoder  # noqa: E402
from heraldry.gateware.uart import UARTRx, UARTTx  # noqa: E402
from heraldry.protocol import COARSE_BITS, record_layout  # noqa: E402
from heraldry.sim.verilog import environment, gateware_sources, write_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent
BUILD_ROOT = cocotb_runner.BUILD_ROOT
TOPLEVEL = "link_bench"
TB_MODULE = "link_tb"
# Keep in step with link_tb.py, which reads them from the DUT's environment variables.
PARAMS = {"CHANNELS": 4, "RULES": 2, "CLOCK_HZ": 100_000_000, "BAUD": 12_000_000,
          "REF_INIT": 2 ** COARSE_BITS - 6000}


class LinkBench(wiring.Component):
    """The link's device side as the top level will wire it, plus a free-running ``ref``.

    Members: ``i`` (records into the encoder), ``side`` (STATUS/REPLY), ``anchor_interval``,
    ``clear``, ``ref`` (the coarse time the encoder unwraps against, from ``ref_init`` after
    reset, +1 per cycle), ``uart_tx`` (the encoder's bytes through ``UARTTx``), ``uart_rx``
    (asynchronous, through an ``FFSynchronizer`` into ``UARTRx``), ``rx`` and ``framing_error``
    (the receiver's outputs).
    """

    def __init__(self, channels, rules, clock_hz, baud, ref_init):
        self.channels, self.rules = channels, rules
        self.clock_hz, self.baud, self.ref_init = clock_hz, baud, ref_init
        super().__init__({
            "i":               In(stream.Signature(record_layout(0))),
            "side":            In(stream.Signature(SIDE_LAYOUT)),
            "anchor_interval": In(32),
            "clear":           In(1),
            "ref":             Out(COARSE_BITS),
            "uart_tx":         Out(1),
            "uart_rx":         In(1, init=1),
            "rx":              Out(stream.Signature(8)),
            "framing_error":   Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        ref = Signal(COARSE_BITS, init=self.ref_init)
        m.d.sync += ref.eq(ref + 1)
        m.d.comb += self.ref.eq(ref)

        m.submodules.encoder = encoder = Encoder(self.channels, self.rules)
        m.submodules.tx = tx = UARTTx(self.clock_hz, self.baud)
        m.submodules.rx = rx = UARTRx(self.clock_hz, self.baud)
        wiring.connect(m, wiring.flipped(self.i), encoder.i)
        wiring.connect(m, wiring.flipped(self.side), encoder.side)
        wiring.connect(m, encoder.o, tx.i)
        wiring.connect(m, rx.o, wiring.flipped(self.rx))
        m.submodules.rx_sync = FFSynchronizer(self.uart_rx, rx.rx, init=1)
        m.d.comb += [
            encoder.ref.eq(ref),
            encoder.anchor_interval.eq(self.anchor_interval),
            encoder.clear.eq(self.clear),
            self.uart_tx.eq(tx.tx),
            self.framing_error.eq(rx.framing_error),
        ]
        return m


def convert_bench():
    """Verilog of :class:`LinkBench` with :data:`PARAMS`, cached under a name that hashes the
    gateware sources, this file and the parameters."""
    import amaranth
    from amaranth.back import verilog
    digest = hashlib.sha256(repr((sorted(PARAMS.items()), amaranth.__version__)).encode())
    for path in gateware_sources() + [Path(__file__).resolve()]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    cache = BUILD_ROOT / "verilog"
    path = cache / f"{TOPLEVEL}_{digest.hexdigest()[:16]}.v"
    if path.is_file():
        return path
    bench = LinkBench(PARAMS["CHANNELS"], PARAMS["RULES"], PARAMS["CLOCK_HZ"], PARAMS["BAUD"],
                      PARAMS["REF_INIT"])
    with environment(AMARANTH_USE_YOSYS="builtin"):
        text = verilog.convert(bench, name=TOPLEVEL)
    write_atomic(path, text)
    return path


@pytest.fixture(scope="module")
def verilated():
    return cocotb_runner.build(convert_bench(), TOPLEVEL)


def run_cocotb(verilated, testcase):
    """Run one ``@cocotb.test()`` of ``link_tb``; fail unless it ran and passed."""
    cocotb_runner.run(verilated, HERE, TB_MODULE, TOPLEVEL, testcase,
                      extra_env={f"LINK_{k}": str(v) for k, v in PARAMS.items()})


def test_records_arrive_over_uart(verilated):
    run_cocotb(verilated, "records_arrive_over_uart")


def test_bytes_received_over_uart(verilated):
    run_cocotb(verilated, "bytes_received_over_uart")
