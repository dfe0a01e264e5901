"""``heraldry acquire``: option handling, outputs and the summary's cross-checks (refusals of bad
options, ports and devices: ``tests/test_bad_input.py``).

``--board sim`` is the Verilated virtual board behind a pty (built once, cached); the link
itself is tested in ``tests/test_acquire_link.py``. ``--board sim-inprocess`` is the core alone
in the Amaranth simulator.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from heraldry import model
from heraldry.host import cli


def run_cli(*args):
    """Run the installed console command like a user would; return (status, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "heraldry.host.cli", *args],
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def test_acquire_outputs_and_checks(tmp_path):
    out = tmp_path / "tags.npz"
    summary_path = tmp_path / "summary.json"
    status, stdout, stderr = run_cli(
        "acquire", "--board", "sim", "--duration", "0.002", "--channels", "4",
        "--window", "20", "--delay", "0=30", "--delay", "2=30", "--herald", "0b011",
        "--herald", "0b1010", "--test-signal", "pairs", "--pair-rate", "2e5",
        "--efficiency", "0.7", "--dark-rate", "2e4", "--pair-delay", "30", "--seed", "3",
        "--out", str(out), "--summary-json", str(summary_path))
    assert status == 0, stderr
    summary = json.loads(summary_path.read_text())
    for key in ("board", "channels", "bin_ps", "duration_s", "window_bins", "delays_bins",
                "singles", "patterns", "heralds", "herald_masks", "tags", "dropped",
                "decode_errors", "dropped_per_channel"):
        assert key in summary
    assert summary["board"] == "sim" and summary["channels"] == 4
    assert summary["port"].startswith("/dev/") and summary["decode_errors"] == 0
    assert summary["link_bytes"] > 0 and summary["bytes_per_event"] > 0
    assert summary["bin_ps"] == 10_000 and summary["window_bins"] == 2
    assert summary["delays_bins"] == [3, 0, 3, 0]
    assert summary["herald_masks"] == [3, 10]
    assert sorted(summary["patterns"], key=int) == [str(p) for p in range(1, 16)]
    assert all(summary["checks"].values())
    data = np.load(out)
    assert data["channel"].dtype == np.uint8 and data["time_ps"].dtype == np.int64
    assert len(data["channel"]) == summary["tags"] > 0
    assert np.all(np.diff(data["time_ps"]) >= 0)
    assert np.all(data["time_ps"] % 10_000 == 0)
    # Recompute everything from the written tags, independently of the CLI's own check.
    tags = np.zeros(len(data["channel"]), model.TAG_DTYPE)
    tags["time"] = data["time_ps"] // 10_000
    tags["channel"] = data["channel"]
    settings = model.CoreSettings(channels=4, window=2, herald_masks=(3, 10),
                                  channel=tuple(model.ChannelSettings(delay=d)
                                                for d in (3, 0, 3, 0)))
    recomputed = model.counts_from_tags(tags, settings)
    assert recomputed.singles.tolist() == summary["singles"]
    assert recomputed.patterns[1:].tolist() == [summary["patterns"][str(p)] for p in range(1, 16)]
    assert recomputed.herald_counts.tolist() == summary["heralds"]
    # Arms A (0) and B (1) line up once channel 0 is delayed by the pair delay.
    assert summary["patterns"]["3"] > 0 and summary["heralds"][0] > 0
    assert "checks: hardware counters agree" in stdout


def test_window_rounding_is_announced(capsys):
    status = cli.main(["acquire", "--duration", "2e-6", "--window", "25", "--quiet"])
    captured = capsys.readouterr()
    assert status == 0
    assert "note: --window 25 ns is not a whole number" in captured.err
    assert json.loads(captured.out)["window_bins"] == 2


def test_inprocess_board_still_works(tmp_path):
    """The core alone in the Amaranth simulator: same summary keys, no link figures."""
    summary_path = tmp_path / "summary.json"
    status, stdout, stderr = run_cli(
        "acquire", "--board", "sim-inprocess", "--duration", "0.00001", "--channels", "2",
        "--herald", "0b11", "--pair-rate", "5e6", "--efficiency", "0.8",
        "--summary-json", str(summary_path), "--quiet")
    assert status == 0, stderr
    summary = json.loads(summary_path.read_text())
    assert summary == json.loads(stdout)
    assert summary["board"] == "sim-inprocess" and summary["port"] is None
    assert summary["link_bytes"] is None and summary["bytes_per_event"] is None
    assert all(summary["checks"].values()) and summary["tags"] > 0
    assert sum(summary["singles"]) == summary["tags"]


def test_herald_rule_syntax():
    """--herald: channel terms or a mask, then options; the summary's name reads back."""
    from heraldry.host.config import parse_herald, rule_text
    HeraldRule = model.HeraldRule
    assert parse_herald("D0&D3&!D1&!D2,exact", 4, 2) == HeraldRule(0b1001, 0b0110, "exact")
    assert parse_herald(" d1 & !D0 , pin=1 , early", 4, 2) == HeraldRule(0b10, 0b01, pin=1)
    assert parse_herald("0b0011", 4, 2) == HeraldRule(0b0011)      # the older form still works
    assert parse_herald("0x9,exact,pin=0", 4, 2) == HeraldRule(0b1001, mode="exact", pin=0)
    rule = HeraldRule(0b0110, 0b1001, "exact", 0)
    assert parse_herald(str(rule), 4, 2) == rule
    assert rule_text(rule, 1, 4) == "D1&D2&!D0&!D3,exact,pin=0"
    assert rule_text(HeraldRule(0b11, pin=0), 0, 4) == "mask 0011"


def test_herald_rules_end_to_end_inprocess(tmp_path):
    """psi-like exact rules with vetoes on one pin and an early rule with a veto, through the
    core in the Amaranth simulator: the herald counters equal the model's recount from the
    streamed tags, and the summary names the rules."""
    summary_path = tmp_path / "summary.json"
    status, stdout, stderr = run_cli(
        "acquire", "--board", "sim-inprocess", "--duration", "0.00003", "--channels", "4",
        "--window", "30", "--herald", "D0&D1&!D2&!D3,exact", "--herald", "D0&!D2,pin=0",
        "--test-signal", "periodic", "--period", "500", "--dark-rate", "3e6",
        "--summary-json", str(summary_path))
    assert status == 0, stderr
    summary = json.loads(summary_path.read_text())
    assert summary["herald_rules"] == ["D0&D1&!D2&!D3,exact", "D0&!D2,pin=0"]
    assert summary["checks"]["heralds_recomputed_from_tags"] is True
    assert all(summary["checks"].values())
    assert "herald rule 0 (D0&D1&!D2&!D3,exact):" in stderr + stdout
    # Every channel clicks at once every 500 ns (the full pattern vetoes both rules), with dark
    # counts between. The exact rule fires in exactly the windows of pattern 0011.
    assert summary["patterns"]["15"] > 0 and summary["heralds"][1] > 0
    assert summary["heralds"][0] == summary["patterns"]["3"] > 0


def _ulx3s_like():
    """The identity of a board with fine bits: 50 MHz core, F = 4, 1.25 ns bins (a cycle is
    20 ns = 16 bins), as the ULX3S reports it."""
    from heraldry import protocol
    from heraldry.host.driver import Identity
    return Identity(magic=protocol.MAGIC, protocol=protocol.PROTOCOL_VERSION, gateware=0x100,
                    channels=4, rules=2, fine_bits=4, bin_fs=1_250_000, clock_hz=50_000_000,
                    capabilities=protocol.CAPABILITY_TEST_SIGNAL,
                    counters=protocol.RegisterMap(4, 2).counters.size)


def test_test_signal_times_are_clock_cycles_on_a_board_with_fine_bits():
    """``--period`` and ``--pair-delay`` are whole clock cycles (the test signal steps once a
    cycle), not bins: on a board with 16 bins per cycle, 1000 ns is 50 cycles (not 800) and a
    pair delay of 40 ns is 2 cycles (32 bins); 30 ns is rounded to a whole cycle and said so.
    The default window is one clock cycle. The API's Settings give the same registers."""
    from heraldry.host.tagger import Settings, settings_to_acquisition
    identity = _ulx3s_like()
    board = cli.board_from_identity(identity)
    parser = cli.build_parser()
    args = parser.parse_args(["acquire", "--board", "/dev/null", "--test-signal", "periodic",
                              "--period", "1000", "--pair-delay", "40"])
    acq, notes = cli.acquisition_from_args(args, board)
    assert (acq.period_cycles, acq.pair_delay_bins, acq.pair_delay_cycles()) == (50, 32, 2)
    assert acq.window_bins == 16        # the default window: one clock cycle (not one 10 ns)
    assert notes == []
    acq.validate()
    api, _ = settings_to_acquisition(Settings(test_signal="periodic", period_ns=1000,
                                              pair_delay_ns=40), identity)
    assert (api.period_cycles, api.pair_delay_bins) == (50, 32)
    args = parser.parse_args(["acquire", "--board", "/dev/null", "--test-signal", "pairs",
                              "--pair-delay", "30", "--period", "1010"])
    acq, notes = cli.acquisition_from_args(args, board)
    assert acq.pair_delay_bins == 32 and acq.period_cycles == 50     # 1.5 -> 2, 50.5 -> 50
    # Only the signal in use is noted (pairs): not the periodic signal's period.
    assert notes == ["--pair-delay 30 ns is not a whole number of 20 ns bins; using 2 bins = 40 ns"]
    acq.validate()


@pytest.mark.parametrize("command", ["acquire", "serve", "calibrate"])
def test_a_board_on_a_serial_port_reads_its_pins_unless_told_otherwise(command):
    """Without ``--test-signal``, a real board (a serial port) measures its pins and a virtual
    board runs its photon-pair test signal; ``--test-signal`` wins on either."""
    from heraldry.host import cmd_calibrate
    identity = _ulx3s_like()
    parser = cli.build_parser()
    extra = ["--out", "delays.json"] if command == "calibrate" else []

    def test_signal(argv):
        args = parser.parse_args([command] + argv + extra)
        if command == "calibrate":
            return cmd_calibrate._settings(args).test_signal
        if command == "serve":
            args.duration = 1.0         # as cmd_serve does: a server runs without one
        return cli.acquisition_from_args(args, cli.board_from_identity(identity)
                                         if args.board != "sim" else None)[0].test_signal

    assert test_signal(["--board", "/dev/null"]) == "off"
    assert test_signal(["--board", "/dev/null", "--test-signal", "pairs"]) == "pairs"
    assert test_signal(["--board", "sim"]) == "pairs"
    assert test_signal(["--board", "sim", "--test-signal", "off"]) == "off"
