"""ULX3S boards: registry entries, PLL arithmetic, a ``do_build=False`` plan of the top level, and
real builds with the YoWASP tools (the sub-clock front end alone, and the full tagger).

The plan is checked against the pin map and clocking the board promises (docs in
``boards/ulx3s.py``): detector pins on right-bank header pins straight into ``IDDRX2F`` (no IO
buffer in between), one gearbox per channel, PLL -> ECLKSYNCB -> CLKDIVF for the gearboxes and
the PLL's CLKOS for the core, clock constraints.
"""

import re

import pytest
from amaranth.hdl import Cat, Elaboratable, Module, Signal
from amaranth.lib import io

from heraldry.boards import BOARDS, BoardError, build
from heraldry.boards.ulx3s import (DETECTOR_PINS, ULX3S_25F, ULX3S_85F, add_clocking,
                                   ecp5_pll_params)
from heraldry.gateware.phy_ecp5 import ECP5GearboxInputs
from heraldry.sim import latency

#: FPGA pins of the header's right-bank pairs gpio 14..21 (the ULX3S schematic, independently
#: of amaranth-boards' connector table).
RIGHT_BANK = {"U18", "U17", "N17", "P16", "N16", "M17", "L16", "L17",
              "H18", "H17", "F17", "G18", "D18", "E17", "C18", "D17"}


@pytest.mark.parametrize("board,device,most", [(ULX3S_85F, "LFE5U-85F", 8),
                                               (ULX3S_25F, "LFE5U-25F", 4)])
def test_registry(board, device, most):
    assert BOARDS[board.name] is board
    assert board.platform.device == device
    assert board.phy is ECP5GearboxInputs
    assert board.clock_hz == 50_000_000 and board.baud == 3_000_000
    assert board.bin_fs == 1_250_000            # 20 ns core cycle / 16 samples
    assert board.programmer == "openFPGALoader"
    # The 85F's 8 channels meet 50 MHz with the gate stage; the 25F has room for 4.
    assert board.default_channels == 4 and board.max_channels == most
    with pytest.raises(BoardError):
        board.top(board.max_channels + 1)


def test_pll_params():
    for ref, out in [(25e6, 400e6), (25e6, 312.5e6), (25e6, 250e6)]:
        p = ecp5_pll_params(ref, out)
        assert ref * p["CLKFB_DIV"] / p["CLKI_DIV"] == out
        assert 400e6 <= out * p["CLKOP_DIV"] <= 800e6
        assert 10e6 <= ref / p["CLKI_DIV"]
    assert ecp5_pll_params(25e6, 400e6) == {"CLKI_DIV": 1, "CLKFB_DIV": 16, "CLKOP_DIV": 2}
    with pytest.raises(ValueError):
        ecp5_pll_params(25e6, 401e6)   # no exact divider pair within the PFD range
    with pytest.raises(ValueError):
        ecp5_pll_params(25e6, 800e6)   # above the output limit


@pytest.mark.parametrize("board,channels", [(ULX3S_85F, 4), (ULX3S_25F, 2)])
def test_plan(board, channels, tmp_path):
    plan = build.plan(board, channels, tmp_path)
    lpf = (tmp_path / "heraldry.lpf").read_text()
    il = (tmp_path / "heraldry.il").read_text()

    sites = dict(re.findall(r'LOCATE COMP "(\w+)" SITE "(\w+)"', lpf))
    det = {int(k.split("_")[1]): v for k, v in sites.items() if k.startswith("det_")}
    assert sorted(det) == list(range(channels))
    assert set(det.values()) <= RIGHT_BANK           # all on one (right) side
    assert sites["uart_0__rx__io"] == "M1" and sites["uart_0__tx__io"] == "L4"
    assert sites["clk25_0__io"] == "G2"
    assert {sites["herald_0__io"], sites["herald_1__io"]} == {"B11", "C11"}

    # Only the oscillator is constrained; nextpnr derives eclk, sclk and sync through the PLL.
    assert re.findall(r'FREQUENCY (NET|PORT) "([^"]+)" ([\d.]+) HZ', lpf) == [
        ("PORT", "clk25_0__io", "25000000.0")]

    assert il.count("cell \\IDDRX2F") == channels
    for primitive in ("EHXPLLL", "ECLKSYNCB", "CLKDIVF"):
        assert il.count(f"cell \\{primitive}") == 1
    assert 'parameter \\DIV "2.0"' in il
    # CLKOP 400 MHz (VCO 800 MHz / 2) feeds the edge clock; CLKOS = VCO / 16 = 50 MHz is sync.
    assert re.search(r"parameter \\CLKOP_DIV 2\n", il)
    assert re.search(r"parameter \\CLKOS_DIV 16\n", il)
    # The raw pin goes into the gearbox: input buffers only for clk25 and uart rx, whatever
    # the channel count, and each gearbox's D is a detector port.
    assert il.count("cell \\IB ") == 2
    assert len(set(re.findall(r"connect \\D \\(det_\d+)__io", il))) == channels
    assert "build_heraldry.sh" in plan.files
    assert len(DETECTOR_PINS) >= board.max_channels
    # build.YOSYS_AFTER_READ right after the design is read, before synthesis: the bracketed
    # wire names private (Yosys 0.70's abc9), the core's clear registers and the gearbox's
    # per-channel write enables kept apart.
    ys = [line.strip() for line in (tmp_path / "heraldry.ys").read_text().splitlines()]
    read = ys.index("read_rtlil heraldry.il")
    assert ys[read + 1] == "rename -hide w:*]"
    assert ys[read + 2] == "setattr -set keep 1 w:*clear_copy_* %ci1:+$dff[Q] c:* %i"
    assert ys[read + 3] == "setattr -set keep 1 w:*enable_copy_* %ci1:+$dff[Q] c:* %i"
    assert any(line.startswith("synth_ecp5") for line in ys[read + 4:])
    assert il.count("clear_copy_") >= 2 * channels + 7     # a register per core block
    assert all(f"enable_copy_{c}" in il for c in range(channels))


class PHYProbe(Elaboratable):
    """The board's clocking and its input block (one gearbox per detector pin at 200 MHz, the
    elastic crossing to 50 MHz, first-edge encoding), each channel's reports registered (as the
    input stage does), then folded into one register (so none is optimised away) driving an
    LED: the sub-clock front end alone."""

    def __init__(self, channels):
        self.channels = channels

    def elaborate(self, platform):
        m = Module()
        add_clocking(m, platform, ULX3S_85F.clock_hz)
        fold = Signal(ECP5GearboxInputs.fine_bits + 1)
        value = fold
        m.submodules.inputs = inputs = ECP5GearboxInputs(
            [platform.request("det", c, dir="-").io for c in range(self.channels)])
        for c, phy in enumerate(inputs.phys):
            m.submodules[f"phy{c}"] = phy
            report = Signal(len(fold), name=f"report{c}")
            m.d.sync += report.eq(Cat(phy.phy.rise_fine ^ phy.phy.fall_fine,
                                      phy.phy.rise ^ phy.phy.fall))
            value = value ^ report
        m.d.sync += fold.eq(value)
        m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
        m.d.comb += led.o.eq(fold.xor())
        return m


@pytest.mark.slow
def test_build_phys_meet_timing(tmp_path):
    """Full toolchain run of the clocking + 8 gearbox PHYs on the right bank: places, routes
    (nextpnr fails on a timing miss, as no --timing-allow-fail is given) and packs."""
    platform = ULX3S_85F.platform()
    plan = platform.prepare(PHYProbe(len(DETECTOR_PINS)), name="probe",
                            nextpnr_opts="--report probe.report.json")
    plan.execute_local(str(tmp_path), env=build.tool_env())
    clocks, resources = build.parse_nextpnr(tmp_path / "probe.report.json")
    # Both derived by nextpnr: sync through the PLL's CLKOS, sclk through CLKOP and CLKDIVF.
    assert set(clocks) == {"sync", "sclk"}
    assert clocks["sync"]["target_mhz"] == ULX3S_85F.clock_hz / 1e6
    assert clocks["sclk"]["target_mhz"] == 4 * ULX3S_85F.clock_hz / 1e6
    for clock in clocks.values():
        assert clock["achieved_mhz"] >= clock["target_mhz"]
    assert resources["IOLOGIC"]["used"] == len(DETECTOR_PINS)
    assert (tmp_path / "probe.bit").stat().st_size > 0


@pytest.mark.slow
def test_build_full_tagger_meets_timing(tmp_path):
    """The whole board build (about 3-4 minutes: synthesis 50 s, place and route 150 s): both
    clocks met, the elastic crossing within one core period, the bin as claimed."""
    report = build.build(ULX3S_85F, 4, tmp_path)
    assert report["timing_met"], (report["clocks"], report["crossings"])
    assert report["phy"] == "ECP5GearboxInputs"
    assert report["bin_ps"] == pytest.approx(1e12 / (16 * ULX3S_85F.clock_hz))
    assert report["bin_ps"] <= 1250
    clocks = report["clocks"]
    assert clocks["sync"]["target_mhz"] == pytest.approx(50, abs=0.01)
    assert clocks["sclk"]["target_mhz"] == pytest.approx(200, abs=0.01)
    (crossing,) = [c for c in report["crossings"] if c["from"] == "posedge sclk"]
    assert crossing["to"] == "posedge sync" and crossing["limit_ns"] == 20.0
    assert 0 < crossing["max_delay_ns"] <= crossing["limit_ns"]
    assert report["resources"]["IOLOGIC"]["used"] == 4
    # Build checks: nothing dropped, every clock constrained, pins as the gpio connector gives
    # them (else build() raises); no icetime or SDF hold on the ECP5.
    assert {c["check"]: c["ok"] for c in report["checks"]} == {"constraints": True,
                                                               "pins": True}
    assert "does not exist in design" not in (tmp_path / "heraldry.tim").read_text()
    assert report["icetime_mhz"] is None and report["crossing_hold"] == []


@pytest.mark.slow
def test_build_eight_channels_meets_timing(tmp_path):
    """The 85F's largest build (about 12 minutes here: synthesis 3, place and route 9): 8
    channels with gates and the gate stage meet both clocks at the board's seed, use all 8
    input blocks, and the report's herald latency is the 4-channel figure plus one core period
    (the gate stage; ident.capabilities bit 7 tells the host)."""
    report = build.build(ULX3S_85F, 8, tmp_path)
    assert report["channels"] == 8
    assert report["timing_met"], (report["clocks"], report["crossings"])
    assert report["resources"]["IOLOGIC"]["used"] == 8
    assert {c["check"]: c["ok"] for c in report["checks"]} == {"constraints": True,
                                                               "pins": True}
    four = latency.board_latency(ULX3S_85F, channels=4)
    for mode in ("early", "exact"):
        assert report["herald_latency_ns"][mode] == {k: v + 20.0
                                                     for k, v in four[mode].items()}


@pytest.mark.parametrize("board", [ULX3S_85F, ULX3S_25F])
def test_board_builds_gates_and_says_so(board):
    """The ULX3S build has the sync, gates and markers (capability bit 3) and the herald record
    stage; the iCEBreaker has the herald record stage but no gates (no room)."""
    from amaranth.hdl import Fragment
    from heraldry.boards import get_board
    from heraldry.protocol import CAPABILITY_GATES
    top = board.top(4)
    Fragment.get(top, board.platform())
    assert top.tagger.core.gates and top.tagger.core.herald_stage
    assert top.tagger.registers.ident["ident.capabilities"] & CAPABILITY_GATES
    icebreaker = get_board("icebreaker")
    top = icebreaker.top(2)
    Fragment.get(top, icebreaker.platform())
    assert not top.tagger.core.gates and top.tagger.core.herald_stage
    assert not top.tagger.registers.ident["ident.capabilities"] & CAPABILITY_GATES


def test_ulx3s_gate_stage_above_four_channels():
    """The register stage in front of the gate unit (``TaggerCore(gate_stage=True)``, one core
    cycle of latency) is in ULX3S builds of more than 4 channels only, not in the iCEBreaker's."""
    from amaranth.hdl import Fragment
    from heraldry.boards import get_board
    from heraldry.protocol import CAPABILITY_GATE_STAGE
    wide = ULX3S_85F
    cores, said = {}, {}
    for channels in (4, 5, 8):
        top = wide.top(channels)
        Fragment.get(top, wide.platform())
        cores[channels] = top.tagger.core
        said[channels] = bool(top.tagger.registers.ident["ident.capabilities"]
                              & CAPABILITY_GATE_STAGE)
    assert [cores[c].gate_stage for c in (4, 5, 8)] == [False, True, True]
    assert said == {4: False, 5: True, 8: True}          # ident.capabilities bit 7
    assert cores[8].latency == cores[4].latency + 1
    assert not ULX3S_25F.gate_stage(4) and ULX3S_25F.gate_stage(6)
    icebreaker = get_board("icebreaker")
    top = icebreaker.top(icebreaker.max_channels)
    Fragment.get(top, icebreaker.platform())
    assert not top.tagger.core.gate_stage


def fast_ulx3s(board=ULX3S_85F):
    """The board with its fast herald path on (``ULX3SBoard.fast_herald``, off by default)."""
    import dataclasses

    class FastULX3S(type(board)):
        fast_herald = True

    return FastULX3S(**{f.name: getattr(board, f.name) for f in dataclasses.fields(board)})


def test_ulx3s_top_wires_the_fast_herald_path_when_on():
    """With ``fast_herald`` on, the ULX3S's herald pins come through the fast herald path
    (capability bit 6), fed by the input block's sclk word register and group phase; the
    default build (it misses 200 MHz with the path) and the iCEBreaker have none."""
    from amaranth.hdl import Fragment
    from heraldry.boards import get_board
    from heraldry.gateware.fastherald import FastHerald
    from heraldry.protocol import CAPABILITY_FAST_HERALD
    board = fast_ulx3s()
    top = board.top(4)
    Fragment.get(top, board.platform())
    assert isinstance(top.fast_herald, FastHerald) and top.fast_herald.channels == 4
    assert top.fast_herald.gates and top.fast_herald.roles
    assert top.tagger.registers.ident["ident.capabilities"] & CAPABILITY_FAST_HERALD
    for board, channels in ((ULX3S_85F, 4), (get_board("icebreaker"), 2)):
        top = board.top(channels)
        Fragment.get(top, board.platform())
        assert getattr(top, "fast_herald", None) is None
        assert not top.tagger.registers.ident["ident.capabilities"] & CAPABILITY_FAST_HERALD
