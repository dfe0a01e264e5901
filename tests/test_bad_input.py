"""Bad input is refused (issue 6, item 4): every case exits with status 2 and ONE line on stderr
(``heraldry: error: ...``), no traceback, and nothing reaches a board.

* Options and config files: ``heraldry acquire`` runs in-process with the virtual board and the
  serial transport replaced by tripwires, so a case that would start the board or open a port
  fails loudly instead of passing.
* What only a device can tell (the wrong baud rate, the wrong identification, options that need
  the board's channel count): the command runs as a user would run it, against
  :class:`pty_board.PtyBoard` on a pseudo-terminal, which records every command it decodes; the
  test requires that nothing but READs of ``ident.*`` registers reached it.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import serial

from heraldry.host import cli
from heraldry.protocol import Command

from pty_board import PtyBoard


class Touched(AssertionError):
    pass


@pytest.fixture
def no_board(monkeypatch):
    """Starting the virtual board, opening a serial port or the in-process simulation fails."""
    def tripwire(*args, **kwargs):
        raise Touched("the board was touched")
    from heraldry.host import acquire, transport
    from heraldry.sim import twin
    monkeypatch.setattr(twin.Twin, "__init__", tripwire)
    monkeypatch.setattr(transport.SerialTransport, "__init__", tripwire)
    monkeypatch.setattr(acquire, "acquire_sim", tripwire)


def _config(tmp_path, text):
    path = tmp_path / "config.json"
    path.write_text(text)
    return str(path)


def _config_bytes(tmp_path, data):
    path = tmp_path / "config.json"
    path.write_bytes(data)
    return str(path)


def _fifo(tmp_path):
    path = tmp_path / "config-pipe"
    os.mkfifo(path)
    return str(path)


def _folder(tmp_path, name):
    path = tmp_path / name
    path.mkdir()
    return str(path)


def _not_ptu(tmp_path):
    path = tmp_path / "in" / "notes.ptu"
    path.parent.mkdir()
    path.write_text("not a PTU file\n")
    return f"replay:{path}"


def _plain_file(tmp_path):
    path = tmp_path / "ttyUSB9"
    path.write_text("")
    return str(path)


# (id, args or a function of tmp_path returning them, a fragment of the one line)
OPTION_CASES = [
    # unknown channel
    ("delay-channel", ["--delay", "7=10"], "no channel 7"),
    ("dead-time-channel", ["--dead-time", "4=10"], "no channel 4"),
    ("edge-channel", ["--edge", "5=rising"], "no channel 5"),
    ("disable-channel", ["--disable", "4"], "no such channel"),
    ("delay-channel-of-fewer", ["--channels", "2", "--delay", "3=10"], "no channel 3"),
    ("channel-not-a-number", ["--delay", "x=10"], "not a number"),
    ("channel-value-missing", ["--delay", "0"], "CHANNEL=VALUE"),
    ("channels-9", ["--channels", "9"], "--channels must be 1..8"),
    ("channels-0", ["--board", "sim-inprocess", "--channels", "0"], "--channels must be 1..8"),
    # window or delay out of range (and not numbers at all)
    ("window-0", ["--window", "0"], "--window 0 ns"),
    ("window-huge", ["--window", "20000"], "--window 20000 ns"),
    ("window-negative", ["--window", "-10"], "--window -10 ns"),
    ("window-nan", ["--window", "nan"], "--window must be a number"),
    ("window-inf", ["--window", "inf"], "--window must be a number"),
    ("window-text", ["--window", "wide"], "invalid float value"),
    ("delay-negative", ["--delay", "0=-10"], "--delay -10 ns"),
    ("delay-huge", ["--delay", "0=10240"], "--delay 10240 ns"),
    ("delay-nan", ["--delay", "0=nan"], "--delay must be a number"),
    ("delay-text", ["--delay", "0=soon"], "is not a number"),
    ("dead-time-huge", ["--dead-time", "0=1e12"], "--dead-time 1e+12 ns"),
    ("pair-delay-huge", ["--pair-delay", "1e6"], "--pair-delay"),
    ("period-0", ["--test-signal", "periodic", "--period", "0"], "--period 0 ns"),
    # empty or impossible herald masks
    ("herald-0", ["--herald", "0"], "selects no channel"),
    ("herald-0b0000", ["--herald", "0b0000"], "selects no channel"),
    ("herald-empty", ["--herald", ""], "names no channel"),
    ("herald-text", ["--herald", "abc"], "'abc' is not a channel term like D3"),
    ("herald-term", ["--herald", "D0&X1"], "'X1' is not a channel term"),
    ("herald-channel-beyond", ["--herald", "D0&D4"], "there is no channel 4"),
    ("herald-channel-twice", ["--herald", "D0&!D0"], "names channel 0 twice"),
    ("herald-only-veto", ["--herald", "!D1&!D2"], "requires no channel"),
    ("herald-option", ["--herald", "D0&D1,late"], "unknown option 'late'"),
    ("herald-mode-twice", ["--herald", "D0,exact,early"], "gives the mode twice"),
    ("herald-pin-beyond", ["--herald", "D0,pin=2"], "there is no herald pin 2"),
    ("herald-pin-text", ["--herald", "D0,pin=x"], "pin=x is not a pin number"),
    ("herald-beyond", ["--herald", "0b10000"], "names a channel above 3"),
    ("herald-too-many", ["--herald", "1", "--herald", "2", "--herald", "3"],
     "3 herald rules given; the board has 2"),
    ("herald-width-0", ["--herald-width", "0"], "herald width"),
    ("record-pattern-0", ["--record-coincidences", "0"], "--record-coincidences pattern"),
    # unknown board, unreadable or nonexistent port, wrong baud
    ("unknown-board", ["--board", "nosuchboard"], "unknown board 'nosuchboard'"),
    ("no-such-port", ["--board", "/dev/no-such-port"], "no such serial device"),
    ("no-such-port-and-more", ["--board", "/dev/no-such-port", "--channels", "0"],
     "no such serial device"),
    ("port-is-a-folder", lambda tmp: ["--board", str(tmp)], "not a serial device"),
    ("port-is-a-file", lambda tmp: ["--board", _plain_file(tmp)], "not a serial device"),
    ("baud-0", ["--baud", "0"], "--baud must be positive"),
    ("baud-negative", ["--baud", "-9600"], "--baud must be positive"),
    ("baud-text", ["--baud", "fast"], "invalid int value"),
    ("anchor-interval-small", ["--anchor-interval", "1023"], "--anchor-interval must be 1024.."),
    ("anchor-interval-huge", ["--anchor-interval", str(2 ** 31 + 1)], "--anchor-interval must be"),
    ("anchor-interval-no-link", ["--board", "sim-inprocess", "--anchor-interval", "4096"],
     "applies to a board with a link"),
    # replayed files
    ("replay-missing", ["--board", "replay:/no/such/file.ptu"], "no such file"),
    ("replay-not-ptu", lambda tmp: ["--board", _not_ptu(tmp)], "cannot replay"),
    # config files
    ("config-missing", ["--config", "/no/such/config.json"], "cannot read it"),
    ("config-not-json", lambda tmp: ["--config", _config(tmp, "{delays")], "not valid JSON"),
    ("config-no-delays", lambda tmp: ["--config", _config(tmp, "[1, 2]")], "delays_ns"),
    ("config-channel", lambda tmp: ["--config", _config(tmp, '{"delays_ns": {"7": 10}}')],
     "no channel 7"),
    ("config-channel-text", lambda tmp: ["--config", _config(tmp, '{"delays_ns": {"a": 1}}')],
     "channel 'a' is not a number"),
    ("config-delay-range", lambda tmp: ["--config", _config(tmp, '{"delays_ns": {"0": 1e9}}')],
     "delay 1e+09 ns"),
    ("config-delay-nan", lambda tmp: ["--config", _config(tmp, '{"delays_ns": {"0": NaN}}')],
     "must be a number"),
    ("config-delay-text", lambda tmp: ["--config", _config(tmp, '{"delays_ns": {"0": "x"}}')],
     "is not a number of ns"),
    ("config-not-utf8", lambda tmp: ["--config", _config_bytes(
        tmp, b'{"delays_ns": {"0": 10}, "reference": "\xff"}')], "not UTF-8 text (byte 39)"),
    ("config-dev-zero", ["--config", "/dev/zero"], "/dev/zero: not a regular file"),
    ("config-folder", lambda tmp: ["--config", str(tmp)], "not a regular file"),
    ("config-pipe", lambda tmp: ["--config", _fifo(tmp)], "not a regular file"),   # no wait
    ("config-too-large", lambda tmp: ["--config", _config_bytes(
        tmp, b'{"delays_ns": {}}' + b" " * (1 << 20))], "a config file is at most 1048576"),
    ("config-unknown-key", lambda tmp: ["--config", _config(tmp, '{"delays_ns": {"0": 1}, '
                                                               '"delay_ns": {"1": 5}}')],
     "unknown key 'delay_ns'"),
    ("config-key-twice", lambda tmp: ["--config", _config(
        tmp, '{"delays_ns": {"0": 1, "0": 2}}')], "key '0' is given twice"),
    ("config-channel-twice", lambda tmp: ["--config", _config(
        tmp, '{"delays_ns": {"0": 1, "00": 2}}')], "channel 0 is given twice"),
    # the same channel twice among the per-channel options
    ("delay-twice", ["--delay", "0=10", "--delay", "0=20"], "channel 0 is given twice"),
    ("dead-time-twice", ["--dead-time", "1=10", "--dead-time", "1=10"],
     "channel 1 is given twice"),
    ("edge-twice", ["--edge", "2=rising", "--edge", "2=falling"], "channel 2 is given twice"),
    ("disable-twice", ["--disable", "3", "--disable", "3"], "channel 3 is given twice"),
    # the rest of the acquisition
    ("duration-0", ["--duration", "0"], "--duration"),
    ("duration-inf", ["--duration", "inf"], "--duration"),
    ("duration-below-a-cycle", ["--duration", "1e-12"], "shorter than one clock cycle"),
    ("efficiency", ["--efficiency", "1.5"], "probability"),
    ("pair-rate", ["--pair-rate", "1e9"], "pair rate"),
    ("dark-rate", ["--dark-rate", "-1"], "dark rate"),
    ("seed", ["--seed", "-1"], "seed"),
    ("test-signal", ["--test-signal", "laser"], "invalid choice"),
    ("edge-name", ["--edge", "1=sideways"], "edge"),
    ("out-folder", ["--out", "/nonexistent-folder/x.npz"], "no such folder /nonexistent-folder"),
    ("summary-folder", ["--summary-json", "/nonexistent-folder/s.json"], "no such folder"),
    ("out-extension", ["--out", "x.txt"], "--out x.txt: the name must end in .npz"),
    ("out-extension-case", ["--out", "x.NPZ"], "must end in .npz (tags) or .ptu"),
    ("out-no-extension", ["--out", "tags"], "must end in .npz"),
    ("out-is-folder", lambda tmp: ["--out", _folder(tmp, "run.npz")], "is a folder, not a file"),
    ("summary-is-folder", lambda tmp: ["--summary-json", str(tmp)], "is a folder, not a file"),
    ("plot-parent-missing", lambda tmp: ["--plot", str(tmp / "no" / "plots")],
     "/no/plots: no such folder"),
    ("plot-is-a-file", lambda tmp: ["--plot", _config(tmp, "{}")], "is not a folder"),
    ("realtime-without-replay", ["--realtime"], "--realtime applies to --board replay"),
    ("ptu-channels", ["--channels", "8", "--out", "x.ptu"]
     + [a for p in range(3, 60) for a in ("--record-coincidences", str(p))], "PTU channels"),
]


@pytest.mark.parametrize("args,fragment", [pytest.param(a, f, id=i) for i, a, f in OPTION_CASES])
def test_bad_option_refused(args, fragment, tmp_path, monkeypatch, capsys, no_board):
    monkeypatch.chdir(tmp_path)
    if callable(args):
        args = args(tmp_path)
    try:
        # (a replay takes no --duration: the file's length is replayed)
        short = [] if any(a.startswith("replay:") for a in args) else ["--duration", "1e-5"]
        status = cli.main(["acquire", *short, *args])
    except SystemExit as exc:    # argparse's own refusals exit from inside main()
        status = exc.code
    captured = capsys.readouterr()
    assert status == 2
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("heraldry: error:")
    assert fragment in lines[0]
    assert captured.out == ""
    assert not list(tmp_path.glob("*.ptu"))         # no output file was begun
    assert not list(tmp_path.glob("**/*.png")) and not (tmp_path / "no").exists()


HYDRAHARP = Path(__file__).parent / "data" / "hydraharp_v30_t2.ptu"
GOOD_CONFIG = '{"delays_ns": {"0": 10}}\n'


def _same_file_cases():
    """(id, setup(tmp) -> args, fragment): an output that is an input or another output. The
    folder is the working directory; ``hh.ptu`` (PicoQuant's file) and ``config.json`` exist."""
    def link(name, target, hard=False):
        def make(tmp):
            (os.link if hard else os.symlink)(tmp / target, tmp / name)
            return name
        return make
    def stale_part(tmp):
        shutil.copyfile(HYDRAHARP, tmp / "copy-001.ptu")      # left by an earlier, longer run
        return ["--out", "copy.ptu"]
    replay = "replay:hh.ptu"
    return [
        ("out-is-replayed-file", lambda t: ["--board", replay, "--out", "hh.ptu"],
         "--out hh.ptu is the same file as --board replay: hh.ptu"),
        ("summary-is-replayed-file", lambda t: ["--board", replay, "--summary-json", "hh.ptu"],
         "--summary-json hh.ptu is the same file as --board replay: hh.ptu"),
        ("out-is-replayed-file-absolute", lambda t: ["--board", replay,
                                                     "--out", str(t / "sub" / ".." / "hh.ptu")],
         "is the same file as --board replay: hh.ptu"),
        ("out-is-symlink-to-replayed", lambda t: ["--board", replay,
                                                  "--out", link("l.ptu", "hh.ptu")(t)],
         "--out l.ptu is the same file as"),
        ("out-is-hard-link-to-replayed", lambda t: ["--board", replay,
                                                    "--out", link("h.ptu", "hh.ptu", True)(t)],
         "--out h.ptu is the same file as"),
        ("replayed-file-is-rotation-part", lambda t: [
            "--board", f"replay:{link('run-001.ptu', 'hh.ptu', True)(t)}", "--out", "run.ptu"],
         "--out run.ptu would overwrite --board replay: run-001.ptu with its rotation part"),
        ("summary-is-rotation-part-of-out", lambda t: ["--out", "run.ptu",
                                                       "--summary-json", "run-002.ptu"],
         "--out run.ptu would overwrite --summary-json run-002.ptu with its rotation part"),
        ("out-with-a-stale-rotation-part", stale_part,
         "--out copy.ptu: copy-001.ptu exists (a rotation part of an earlier run, which a "
         "replay of copy.ptu would join)"),
        ("summary-is-config", lambda t: ["--config", "config.json",
                                         "--summary-json", str(t / "config.json")],
         "is the same file as --config config.json"),
        ("summary-is-symlink-to-config", lambda t: [
            "--config", "config.json", "--summary-json", link("s.json", "config.json")(t)],
         "--summary-json s.json is the same file as --config config.json"),
        ("summary-is-hard-link-to-config", lambda t: [
            "--config", link("c2.json", "config.json", True)(t),
            "--summary-json", "config.json"],
         "--summary-json config.json is the same file as --config c2.json"),
        ("summary-is-out", lambda t: ["--out", "run.npz", "--summary-json", "./run.npz"],
         "--summary-json ./run.npz is the same file as --out run.npz"),
        ("summary-is-a-plot", lambda t: ["--plot", "plots", "--summary-json", "plots/g2.png"],
         "--plot plots: plots/g2.png is the same file as --summary-json plots/g2.png"),
        ("plot-is-config", lambda t: ["--plot", ".", "--config", link("rates.png",
                                                                      "config.json")(t)],
         "--plot .: ./rates.png is the same file as --config rates.png"),
        ("replay-window", lambda t: ["--board", replay, "--window", "10"],
         "--window does not apply to a replay"),
        ("replay-channels", lambda t: ["--board", replay, "--channels", "2"],
         "--channels does not apply to a replay"),
        ("replay-herald", lambda t: ["--board", replay, "--herald", "0b11"],
         "--herald does not apply to a replay"),
        ("replay-duration", lambda t: ["--board", replay, "--duration", "1"],
         "--duration does not apply to a replay"),
    ]


@pytest.mark.parametrize("setup,fragment",
                         [pytest.param(a, f, id=i) for i, a, f in _same_file_cases()])
def test_output_that_is_an_input_refused(setup, fragment, tmp_path, monkeypatch, capsys,
                                         no_board):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    shutil.copyfile(HYDRAHARP, tmp_path / "hh.ptu")
    (tmp_path / "config.json").write_text(GOOD_CONFIG)
    args = setup(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    status = cli.main(["acquire", "--quiet", *args])
    captured = capsys.readouterr()
    assert status == 2
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("heraldry: error:"), captured.err
    assert fragment in lines[0]
    assert captured.out == ""
    # Nothing was written, made or changed: the same files with the same bytes.
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["sub"]
    assert (tmp_path / "hh.ptu").read_bytes() == HYDRAHARP.read_bytes()


def test_plot_folder_is_made_at_the_end_and_outputs_not_colliding_pass(tmp_path, monkeypatch,
                                                                       capsys):
    """The same checks let distinct outputs through: a missing --plot DIR (its parent exists)
    is made when the plots are written, and a replay with its outputs next to its input runs."""
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(HYDRAHARP, tmp_path / "hh.ptu")
    status = cli.main(["acquire", "--board", "replay:hh.ptu", "--quiet", "--out", "copy.ptu",
                       "--summary-json", "s.json", "--plot", "plots"])
    assert status == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "g2.png", "patterns.png", "rates.png"]
    assert json.loads((tmp_path / "s.json").read_text())["tags"] == 305_565
    assert (tmp_path / "hh.ptu").read_bytes() == HYDRAHARP.read_bytes()


def test_calibrate_out_checked_like_acquire(tmp_path, capsys, no_board):
    """``calibrate --out``: the same rule (no folders made, not a folder)."""
    for out, fragment in ((tmp_path / "no" / "c.json", "no such folder"),
                          (tmp_path, "is a folder, not a file")):
        assert cli.main(["calibrate", "--board", "sim", "--out", str(out)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0]
    assert not (tmp_path / "no").exists()


def test_tripwires_fire(no_board):
    """The tripwires are live: good options do reach them (so the refusals above are real)."""
    with pytest.raises(Touched):
        cli.main(["acquire", "--duration", "1e-5", "--quiet"])
    with pytest.raises(Touched):
        cli.main(["acquire", "--board", "sim-inprocess", "--duration", "1e-5", "--quiet"])
    with pytest.raises(Touched):
        cli.main(["acquire", "--board", "/dev/null", "--duration", "1e-5", "--quiet"])


# -- what only the device can say -------------------------------------------------------------

def _run(port, *args, timeout=120):
    proc = subprocess.run([sys.executable, "-m", "heraldry.host.cli", "acquire", "--board", port,
                           "--duration", "0.001", *args], capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


DEVICE_CASES = [
    ("wrong-magic", dict(ident={"magic": 0x12345678}), [], "is not a heraldry device"),
    ("wrong-protocol", dict(ident={"protocol": 99}), [], "protocol version 99"),
    ("impossible-channels", dict(ident={"channels": 0}), [], "ident.channels = 0"),
    ("wrong-counters", dict(ident={"counters": 5}), [], "5 counters"),
    # A board at 3 Mbaud (the ULX3S rate) opened at --baud 12000000: its bytes arrive
    # garbled, and it cannot read the host's commands either.
    ("wrong-baud-streaming", dict(baud=3_000_000, host_baud=12_000_000, streaming=True,
                                  tag_rate_hz=2e4), ["--baud", "12000000"], "wrong baud rate"),
    ("wrong-baud-silent", dict(baud=3_000_000, host_baud=12_000_000), ["--baud", "12000000"],
     "baud rate?"),
    ("wrong-baud-faster", dict(baud=48_000_000, host_baud=12_000_000, streaming=True,
                               tag_rate_hz=2e4), ["--baud", "12000000"], "baud rate"),
    # Options that need the board's channel count: refused after the identification reads.
    ("delay-channel-of-board", dict(), ["--delay", "7=10"], "no channel 7"),
    ("channels-of-board", dict(), ["--channels", "2"], "the board has 4 channels"),
    ("herald-of-board", dict(), ["--herald", "0b10000"], "names a channel above 3"),
    ("config-of-board", dict(), ["--config", "CONFIG"], "no channel 6"),
    # The iCEBreaker's gateware has no test-signal generator (capabilities bit 0 clear):
    # --test-signal pairs would acquire nothing (a serial port's default is off).
    ("test-signal-of-board", dict(ident={"capabilities": 0b110}), ["--test-signal", "pairs"],
     "no built-in test signal"),
]


@pytest.mark.parametrize("board_args,args,fragment",
                         [pytest.param(b, a, f, id=i) for i, b, a, f in DEVICE_CASES])
def test_device_refused_after_identification_reads_only(board_args, args, fragment, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"delays_ns": {"6": 10}}))
    args = [str(config) if a == "CONFIG" else a for a in args]
    out = tmp_path / "run.ptu"
    with PtyBoard(**board_args) as board:
        status, stdout, stderr = _run(board.port, *args, "--out", str(out))
    assert status == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("heraldry: error:") and fragment in lines[0]
    assert stdout == "" and not out.exists()
    # Nothing but identification reads reached the board.
    assert all(f["op"] is Command.READ for f in board.frames), board.frames
    assert all(name.startswith("ident.") for name in board.names()), board.names()


def test_busy_port_refused(tmp_path):
    """A port another program holds (opened exclusively) is refused before anything is sent."""
    with PtyBoard() as board, serial.Serial(board.port, exclusive=True):
        status, stdout, stderr = _run(board.port)
    assert status == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"heraldry: error: --board {board.port}: cannot open")
    assert board.frames == []


@pytest.mark.parametrize("command", ["build", "flash"])
def test_board_out_folder_checked_like_acquire(command, tmp_path, capsys):
    """``build``/``flash --out DIR``: the same rule (its parent must exist, nothing is made)."""
    out = tmp_path / "no" / "build"
    assert cli.main([command, "--board", "icebreaker", "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"--out {out}: no such folder {tmp_path / 'no'}" in lines[0]
    assert not (tmp_path / "no").exists()
    (tmp_path / "file").write_text("")
    assert cli.main([command, "--board", "icebreaker", "--out", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("args,fragment", [
    (["--config", "/dev/zero"], "--config /dev/zero: not a regular file"),
    (["--delay", "1=10", "--delay", "1=20"], "channel 1 is given twice"),
])
def test_serve_reads_config_files_and_options_like_acquire(args, fragment, capsys, no_board):
    """``serve`` shares acquire's configuration options and the config-file reader."""
    pytest.importorskip("zmq")
    pytest.importorskip("prometheus_client")
    assert cli.main(["serve", "--board", "sim", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0]
