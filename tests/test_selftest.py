"""``heraldry selftest`` against the virtual board: through ``--board sim`` and through ``--board
PORT`` (the board served by ``heraldry sim`` on its pty, the path a real board takes; its baud
found by trying the known rates, and the deprecated ``--port`` spelling), in overload, with a
board that lies about a counter (must FAIL), and the refused options."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from heraldry.host import cli
from heraldry.host.selftest import GATE_SLACK_CYCLES, _generated_bracket


@pytest.fixture(scope="module", autouse=True)
def twin_built():
    from heraldry.sim.twin import build_twin
    build_twin(4, 2, 100_000_000, 12_000_000)   # g++ and make are required: fail, never skip


def _selftest(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "heraldry.host.cli", "selftest", *args],
                          capture_output=True, text=True, timeout=timeout)


def _checks(stdout):
    """``{name: (PASS|FAIL, text)}`` of the check lines."""
    found = {}
    for line in stdout.splitlines():
        match = re.match(r"^  (PASS|FAIL)  ([^:]+): (.*)$", line)
        if match:
            found[match.group(2)] = (match.group(1), match.group(3))
    return found


def _numbers(text):
    return [int(x) for x in re.findall(r"\d+", text)]


def test_pairs_on_the_virtual_board_pass():
    proc = _selftest("--board", "sim", "--duration", "0.005", "--pair-rate", "2e5",
                     "--dark-rate", "1e4", "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = _checks(proc.stdout)
    expected = {"link", "loss records", "herald rule 0 (mask 0011)", "herald rule 1 (mask 0001)",
                "pattern 0011", "model"} | {f"channel {c}" for c in range(4)} \
        | {f"test signal {c}" for c in range(4)}
    assert set(checks) == expected and all(v == "PASS" for v, _ in checks.values())
    assert proc.stdout.splitlines()[-1] == f"selftest PASS: {len(expected)} of {len(expected)} " \
                                           f"checks passed"
    # The figures are there and add up: tags + lost + host = counter, within the model's range.
    for c in range(4):
        tags, lost, host, total, singles = _numbers(checks[f"channel {c}"][1])
        assert tags + lost + host == total == singles and lost == host == 0
        generated, lo, hi = _numbers(checks[f"test signal {c}"][1])
        assert generated == singles and lo <= generated <= hi
    # Arms of a 2e5/s pair source at 50 %: about 500 tags per arm in 5 ms; dark channels ~50.
    arm = _numbers(checks["channel 0"][1])[0]
    assert 350 < arm < 650
    assert "0 decode errors, 0 unverified, 0 skipped" in checks["link"][1]


def test_periodic_overload_passes_with_drops_counted():
    """Every channel every 2 cycles: most events are dropped, and the selftest still passes,
    because every drop is counted in-band; the model comparison is skipped and says why."""
    proc = _selftest("--test-signal", "periodic", "--period", "20", "--duration", "0.001",
                     "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = _checks(proc.stdout)
    assert all(v == "PASS" for v, _ in checks.values())
    for c in range(4):
        tags, lost, _, _, singles = _numbers(checks[f"channel {c}"][1])
        assert lost > 10 * tags > 0 and tags + lost == singles
    assert checks["model"][1].startswith("skipped: ")
    records, lost, total, counter = _numbers(checks["pattern 1111"][1].replace("1111", ""))
    assert lost > 0 and records + lost == total == counter > 0


def test_port_of_a_served_board():
    """``--board PORT``: the virtual board served by ``heraldry sim`` on its pty, like a real
    board on a USB-serial bridge (the selftest learns channels, clock and bin from its
    identification; no ``--baud``: 3 Mbaud is tried first, then the board's 12 Mbaud). The
    deprecated ``--port PORT`` does the same after one note."""
    proc = subprocess.Popen([sys.executable, "-m", "heraldry.host.cli", "sim", "--channels", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = proc.stdout.readline().strip()
        assert os.path.exists(port), port
        result = _selftest("--board", port, "--duration", "0.003", "--quiet")
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith(f"selftest of {port} on {port}: 4 channels")
        assert result.stdout.splitlines()[-1].startswith("selftest PASS")
        assert result.stderr == ""
        old = _selftest("--port", port, "--baud", "12000000", "--duration", "0.002", "--quiet")
        assert old.returncode == 0, old.stdout + old.stderr
        assert old.stderr == f"heraldry: note: --port is deprecated; use --board {port}\n"
        assert old.stdout.splitlines()[-1].startswith("selftest PASS")
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_counter_that_disagrees_fails(monkeypatch, capsys):
    """A board whose singles counter of channel 1 counts one event too many (a lying board, made
    by wrapping the driver's counter read: every read after the one right after the clear is one
    too high): the channel check and the model check FAIL, exit 1."""
    from heraldry.host.driver import Device
    real = Device.counters
    reads = []

    def lying(self):
        counters = real(self)
        if reads:
            counters["singles"][1] += 1
        reads.append(1)
        return counters
    monkeypatch.setattr(Device, "counters", lying)
    status = cli.main(["selftest", "--board", "sim", "--duration", "0.002", "--quiet"])
    out = capsys.readouterr().out
    assert status == 1, out
    checks = _checks(out)
    assert checks["channel 1"][0] == "FAIL" and checks["channel 0"][0] == "PASS"
    tags, lost, host, total, singles = _numbers(checks["channel 1"][1])
    assert singles == total + 1
    assert checks["model"][0] == "FAIL" and "singles_recomputed_from_tags" in checks["model"][1]
    assert out.splitlines()[-1].startswith("selftest FAIL: ")
    assert "channel 1" in out.splitlines()[-1]


def test_generated_bracket_holds_the_model_count():
    """The test-signal bracket: for command bounds with a spread, the model's count in any gate
    inside the bounds lies between lo and hi; with bounds of no spread, the bracket is the
    count with the slack on each side."""
    from heraldry.host.config import Acquisition
    from heraldry.model.testsignal import generate
    acq = Acquisition(test_signal="pairs", pair_rate_hz=3e6, efficiency=0.5,
                      dark_rate_hz=2e5, seed=9)
    bounds = {"clear": [-500, -400], "start": [0, 60], "stop": [40_000, 40_100]}
    brackets = _generated_bracket(acq, bounds)
    from heraldry.host.selftest import _test_signal_settings
    events = generate(_test_signal_settings(acq), 50_000)
    rng = np.random.default_rng(1)
    for _ in range(20):
        clear = rng.integers(-500, -399)
        gate = (rng.integers(0, 61) - clear, rng.integers(40_000, 40_101) - clear)
        for c, ks in enumerate(events):
            count = int(((ks >= gate[0]) & (ks < gate[1])).sum())
            assert brackets[c][0] <= count <= brackets[c][1]
    exact = {"clear": [0, 0], "start": [100, 100], "stop": [30_100, 30_100]}
    s = GATE_SLACK_CYCLES
    for c, (lo, hi) in enumerate(_generated_bracket(acq, exact)):
        ks = events[c]
        assert lo == int(((ks >= 100 + s) & (ks < 30_100 - s)).sum())
        assert hi == int(((ks >= 100 - s) & (ks < 30_100 + s)).sum())
        assert lo <= hi


@pytest.mark.parametrize("args, fragment", [
    (["--board", "/dev/no-such-port"], "--board /dev/no-such-port: no such serial device"),
    (["--board", "icebreaker"], "--board icebreaker: selftest runs on --board sim or"),
    (["--port", "/dev/null", "--board", "sim"], "exclude each other"),
    (["--board", "/dev/null", "--channels", "2"], "--channels is for the virtual board"),
    (["--pair-delay", "20000"], "--pair-delay 20000 ns is 2000 bins; it must be 0 to 10230 ns"),
    (["--duration", "0"], "--duration must be positive"),
    (["--duration", "inf"], "--duration must be positive and finite"),
    (["--board", "/dev/null", "--baud", "3000000"], "--board /dev/null: cannot open serial port"),
    (["--efficiency", "2"], "efficiency 2 is not a probability"),
    (["--channels", "9"], "--channels must be 1..8"),
    (["--test-signal", "off"], "invalid choice: 'off'"),
    (["--pair-rate", "2e8"], "pair rate 2e+08 Hz must be"),
    (["--loopback", "0:0"], "--loopback: input 0: the jumper goes to an input 1..3"),
    (["--loopback", "2:1"], "--loopback: herald output 2: this board has herald outputs 0..1"),
    (["--loopback", "a:1"], "--loopback a:1: want HERALD:CHANNEL"),
    (["--loopback", "--channels", "1"], "--loopback needs a board with 2 or more inputs"),
    (["--sim-jumper", "0:1"], "--sim-jumper is for the virtual board with --loopback"),
    (["--loopback", "--sim-jumper", "0:1:5000"], "--sim-jumper: a delay of 0..1023 cycles"),
    (["--loopback", "--sim-jumper", "0:7"], "--sim-jumper: input 7: the jumper goes to"),
    (["--loopback", "--baud", "50000000"], "--baud must be 1..25000000 on the virtual board"),
])
def test_bad_options_are_refused_before_anything_runs(args, fragment):
    proc = _selftest(*args, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("heraldry: error: ") and fragment in proc.stderr


# -- loopback (one jumper from a herald output to an input) --------------------------------------

#: The virtual board's loopback: a pulse of rule 0 rises on the pin MEASURED's early minimum
#: (whole core periods for the one-sample-a-cycle input block) after channel 0's sample, the
#: harness hands it to the input for the next cycle, and it is 4 cycles (the herald width) long.
def _sim_return_bins():
    from heraldry.sim.latency import MEASURED
    early = MEASURED["GenericPHY"]["early"][0]
    assert early.denominator == 1
    return int(early) + 1


def _device_ms(stdout):
    return float(re.search(r", ([\d.]+) ms of device time", stdout).group(1))


LOOPBACK_CHECKS = ["source (channel 0)", "input path (channel 1)", "herald pin 0", "latency",
                   "pulse width"]


def test_loopback_on_the_wired_virtual_board_passes():
    duration, period_ns = 0.02, 200_000
    proc = _selftest("--board", "sim", "--loopback", "--duration", str(duration), "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = _checks(proc.stdout)
    assert set(LOOPBACK_CHECKS) <= set(checks)
    assert not any(name.startswith("test signal") for name in checks)
    assert all(state == "PASS" for state, _ in checks.values()), proc.stdout
    sources = _numbers(checks["source (channel 0)"][1])[0]
    assert abs(sources - _device_ms(proc.stdout) * 1e6 / period_ns) <= 0.02 * sources + 2
    edges, counter = _numbers(checks["herald pin 0"][1])[:3:2]
    assert counter == sources and edges == 2 * counter
    back = _sim_return_bins()
    latency = _numbers(checks["latency"][1])
    assert latency[:3] == [sources, back, back]          # pulses, min and max bins
    assert f"({back * 10}..{back * 10} ns)" in checks["latency"][1]
    width = _numbers(checks["pulse width"][1])
    assert width[:3] == [sources, 4, 4]
    assert proc.stdout.splitlines()[-1].startswith("selftest PASS")


@pytest.mark.parametrize("jumper, failed, says", [
    ("none", ["input path (channel 1)", "herald pin 0", "latency", "pulse width"],
     "is the jumper from herald output 0 to input 1?"),
    ("1:1", ["input path (channel 1)", "herald pin 0", "latency", "pulse width"],
     "is the jumper from herald output 0 to input 1?"),
    ("0:2", ["input path (channel 1)", "herald pin 0", "latency", "pulse width"],
     "tags on channel 2: is the jumper on that input?"),
    ("0:1:20", ["latency"], None),
])
def test_loopback_fails_with_the_jumper_missing_or_misplaced(jumper, failed, says):
    proc = _selftest("--board", "sim", "--loopback", "--sim-jumper", jumper, "--duration",
                     "0.01", "--quiet")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    checks = _checks(proc.stdout)
    assert sorted(n for n, (state, _) in checks.items() if state == "FAIL") == sorted(failed)
    assert checks["source (channel 0)"][0] == "PASS"
    if says:
        assert says in checks["input path (channel 1)"][1]
    if jumper == "0:1:20":          # 20 cycles of wire: 20 bins late, out of the range
        back = _sim_return_bins() + 20
        assert _numbers(checks["latency"][1])[1:3] == [back, back]
    assert proc.stdout.splitlines()[-1].startswith("selftest FAIL")


def test_loopback_without_a_test_signal_uses_channel_0s_pin(monkeypatch):
    """A board without the test signal (the iCEBreaker): channel 0 reads its pin, fed here by
    the pins file (pulses every 3001 cycles); with nothing on it, the source check says what to
    do. The virtual board is told apart from the iCEBreaker only by the capability. Through the
    library (``Tagger.selftest``), as a notebook runs it."""
    from heraldry.host import tagger as tagger_mod
    from heraldry.sim.twin import Twin
    monkeypatch.setattr(tagger_mod.Tagger, "has_test_signal", property(lambda self: False))
    edges = [e for k in range(1000, 40_000_000, 3001) for e in ((k, 0, 1), (k + 1, 0, 0))]
    for pins in (edges, None):
        with Twin(pins=pins, loopback=[(0, 1)]) as twin:
            with tagger_mod.open(twin.port, baud=twin.baud, timeout=3.0) as board:
                report = board.selftest(loopback=(0, 1), duration_s=0.01, real_board=False,
                                        label="sim")
        out = str(report)
        checks = _checks(out)
        assert "source on channel 0: its pin" in out.splitlines()[0]
        assert report.result.acquisition.test_signal == "off"
        if pins is None:
            assert not report.passed and "source (channel 0)" in report.failed
            assert checks["source (channel 0)"][0] == "FAIL"
            assert "this board has no test signal; feed channel 0" in \
                checks["source (channel 0)"][1]
            continue
        assert report.passed, out
        assert out.splitlines()[-1].startswith("selftest PASS")
        sources = _numbers(checks["source (channel 0)"][1])[0]
        # Over about the header's device time: one pulse every 3001 cycles.
        assert abs(sources - _device_ms(out) * 1e5 / 3001) <= 0.02 * sources + 2
        back = _sim_return_bins()
        assert _numbers(checks["latency"][1])[:3] == [sources, back, back]


def test_selftest_in_the_python_api():
    """``heraldry.open("sim").selftest()``: the same checks as the command line, as objects; a
    lying counter makes it fail by name; bad options are refused before anything runs."""
    import heraldry
    from heraldry.host.config import ConfigError
    with heraldry.open("sim") as board:
        lines = []
        report = board.selftest(duration_s=0.003, pair_rate_hz=2e5, progress=lines.append)
        assert report.passed and report.failed == [] and len(lines) == 1
        assert "test signal pairs" in lines[0]
        names = [c.name for c in report.checks]
        assert names[0] == "link" and "model" in names
        assert {f"test signal {c}" for c in range(board.channels)} <= set(names)
        tags = report.result.events
        assert report.summary["tags"] == int(np.count_nonzero(tags["kind"] == 0)) > 0
        # The same checks recomputed from a result whose singles counter is one too high.
        from heraldry.host.acquire import summarise
        from heraldry.host.selftest import selftest_checks
        lying = summarise(report.result, board="sim")
        lying["singles"] = list(lying["singles"])
        lying["singles"][1] += 1
        failed = [c.name for c in selftest_checks(lying, report.result) if not c.ok]
        assert "channel 1" in failed
        with pytest.raises(ConfigError, match="pairs or periodic"):
            board.selftest(test_signal="bsm-nonsense")
        with pytest.raises(ConfigError, match="positive and finite"):
            board.selftest(duration_s=0)
        with pytest.raises(ConfigError, match="herald output 7"):
            board.selftest(loopback=(7, 1))


def test_loopback_latency_bounds_of_the_real_boards():
    """The range the latency check accepts, per input block, worked out by hand from
    docs/boards.md's pin-to-pin figures (core periods, early rule): samples a period times the
    figure, the top one bin up (the returned edge waits for the next sample) plus 15 ns of
    buffers and wire in bins, 2 bins slack each side."""
    from heraldry.host.selftest import _latency_bounds
    # iCEBreaker: 3.25..4.25 periods of 4 bins of 10417 ps; 15 ns = 2 bins (rounded up).
    assert _latency_bounds(2, 10417, True)[:3] == (13 - 2, 17 + 1 + 2 + 2, 4 + 2)
    # ULX3S: 5.625..7.5625 periods of 16 bins of 1250 ps; 15 ns = 12 bins.
    assert _latency_bounds(4, 1250, True)[:3] == (90 - 2, 121 + 1 + 12 + 2, 31 + 2)
    # The virtual board: 4..5 periods of one 10 ns bin, no buffers.
    assert _latency_bounds(0, 10_000, False)[:3] == (4 - 2, 5 + 1 + 2, 1 + 2)
    assert _latency_bounds(3, 1000, True) is None
    # A ULX3S with the gate stage (ident.capabilities bit 7, builds of more than 4 channels):
    # 6.625..8.5625 periods, one more, the spread unchanged.
    assert _latency_bounds(4, 1250, True, gate_stage=True)[:3] == (106 - 2, 137 + 1 + 12 + 2,
                                                                   31 + 2)
