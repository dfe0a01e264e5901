"""Data safety when a run ends badly (issue 11): a full disk, a stop signal, a board that hangs,
the terminal given as the board.

Every case runs ``heraldry acquire`` in a subprocess on the scripted board of
:mod:`pty_board` (no Verilator) and checks what a user gets: the exit status, one line on
stderr, the summary on stdout, and files that the independent reader ``ptufile`` opens with a
header record count equal to the records on disk.

* Full disk: ``RLIMIT_FSIZE`` in the child with SIGXFSZ ignored (writes past the limit fail with
  EFBIG, as they fail with ENOSPC on a full disk; works without root), and, where this user may
  mount one, a real 64 KiB tmpfs (ENOSPC), as in the issue.
* Signals: SIGTERM, SIGHUP and SIGINT once records flow.
* A hung board: :meth:`PtyBoard.hang` (the port stays open, nothing answers), as a virtual board
  stopped by SIGSTOP.
* ``--board`` naming the controlling terminal is refused; a port's terminal settings are put
  back on exit.
"""

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import termios
import time
import zipfile

import numpy as np
import ptufile
import pytest

from heraldry.host.ptu import (WARNING_EVENTS_DROPPED, PTUWriter, ChannelMap, StopReason,
                               read_ptu)
from heraldry.host.events import EVENT_DTYPE

from pty_board import PtyBoard

CLI = [sys.executable, "-m", "heraldry.host.cli", "acquire"]
BIN_PS = 10_000


def _start(board, *options, preexec_fn=None):
    return subprocess.Popen([*CLI, "--board", board.port, *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec_fn)


def _wait_for_records(path, proc, records=500, timeout=120):
    deadline = time.monotonic() + timeout
    header = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if path.exists():
            size = path.stat().st_size
            header = size if header is None else header
            if size >= header + 4 * records:
                return
        time.sleep(0.05)
    raise AssertionError("no records arrived")


def _finish(proc, timeout=120):
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


def _one_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _check_ptu(path, stop_reason):
    """The file opens in ptufile with its header count equal to the whole records on disk;
    returns (ptufile's tags, photon times in bins, photon channels)."""
    with ptufile.PtuFile(path) as f:
        on_disk = (path.stat().st_size - f.record_offset) // 4
        assert (path.stat().st_size - f.record_offset) % 4 == 0
        assert f.tags["TTResult_NumberOfRecords"] == on_disk == f.number_records
        assert f.tags["TTResult_StopReason"] == stop_reason
        assert f.tags["TTResult_MDescWarningFlags"] & WARNING_EVENTS_DROPPED
        records = f.decode_records()
        tags = dict(f.tags)
    photons = records[records["channel"] >= 0]
    times = photons["time"].astype(np.int64)
    assert np.all(np.diff(times) >= 0)
    return tags, times, photons["channel"]


@pytest.fixture(scope="module", autouse=True)
def warm_decoder_cache():
    """numba stores the compiled stream decoder next to its source on first use; a child under
    a file-size limit must not be the one to write it (a cold cache on a full disk is a
    separate problem, see docs/reliability.md)."""
    from heraldry.host.decoder import compile_seconds
    compile_seconds()


def _limit_file_size(limit):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return pre


# -- full disk -------------------------------------------------------------------------------

def test_ptu_that_cannot_grow_stops_the_run_and_stays_readable(tmp_path):
    """``--out run.ptu`` on a disk that fills up mid-run: exit 5, one line naming the file, the
    records that reached the file readable with the count patched, the summary on stdout and
    in --summary-json (written: it fits)."""
    ptu, summary_path = tmp_path / "run.ptu", tmp_path / "summary.json"
    limit = 60_000              # the header is about 17 kB: the run fills the rest in ~20 ms
    with PtyBoard(cycles_per_s=2e6, tag_rate_hz=5e5) as board:
        proc = _start(board, "--duration", "20", "--quiet", "--out", str(ptu),
                      "--summary-json", str(summary_path), preexec_fn=_limit_file_size(limit))
        status, out, err = _finish(proc)
        # The board was stopped when the file could not grow (it was running until then).
        written = [(board.map.by_address[f["address"]].name, f["value"]) for f in board.writes]
    assert status == 5, err
    line = _one_line(err)
    assert line.startswith(f"heraldry: error: cannot write {ptu}: File too large"), line
    assert "the run was stopped" in line and "count patched" in line
    # Left stopped, its counter snapshots off (the last writes).
    assert written[-2:] == [("control.run", 0), ("control.status_period", 0)]
    assert ("control.run", 1) in written
    summary = json.loads(out)
    assert summary == json.loads(summary_path.read_text())
    assert summary["complete"] is False and str(ptu) in summary["error"]
    assert ptu.stat().st_size <= limit
    tags, times, channels = _check_ptu(ptu, StopReason.TRANSFER_FAILED)
    assert len(times) > 1000
    assert f"{len(times)} PTU records kept in {ptu}" in line
    # What was kept is the start of what was received: the file's tags are a prefix of the
    # summary's per-channel counts, and its summary slot holds the summary.
    assert json.loads(tags["Heraldry_Summary"]) == summary
    per_channel = np.bincount(channels, minlength=4)[:4]
    assert np.all(per_channel <= summary["tags_per_channel"])
    assert per_channel.sum() < summary["tags"]


def test_npz_and_json_are_whole_or_absent(tmp_path):
    """A ``.npz`` that does not fit is not left as a truncated file (nor an earlier file of that
    name damaged); the summary still reaches stdout and the exit status says it."""
    npz, summary_path = tmp_path / "tags.npz", tmp_path / "summary.json"
    npz.write_bytes(b"an earlier file")
    with PtyBoard(cycles_per_s=2e6, tag_rate_hz=5e5) as board:
        proc = _start(board, "--duration", "0.05", "--quiet", "--out", str(npz),
                      "--summary-json", str(summary_path), preexec_fn=_limit_file_size(20_000))
        status, out, err = _finish(proc)
    assert status == 5, err
    line = _one_line(err)
    assert line == (f"heraldry: error: cannot write {npz}: File too large ({npz} not written); "
                    f"the summary is on stdout")
    summary = json.loads(out)
    assert summary["complete"] is True and summary["tags"] * 9 > 20_000   # it could not fit
    assert npz.read_bytes() == b"an earlier file"
    assert json.loads(summary_path.read_text()) == summary
    assert sorted(os.listdir(tmp_path)) == ["summary.json", "tags.npz"]    # no temporary left


def test_plot_that_does_not_fit_leaves_no_empty_png(tmp_path):
    """``--plot DIR`` on a disk that cannot take the first PNG (rates.png, about 28 kB here):
    no 0-byte or cut PNG, no temporary file, exit 5, the summary JSON (small) still written."""
    plots, summary_path = tmp_path / "plots", tmp_path / "summary.json"
    with PtyBoard(cycles_per_s=2e6, tag_rate_hz=5e5) as board:
        proc = _start(board, "--duration", "0.05", "--quiet", "--plot", str(plots),
                      "--summary-json", str(summary_path), preexec_fn=_limit_file_size(12_000))
        status, out, err = _finish(proc)
    assert status == 5, err
    line = _one_line(err)
    assert line == (f"heraldry: error: cannot write {plots / 'rates.png'}: File too large "
                    f"(plots in {plots} incomplete); the summary is on stdout")
    assert os.listdir(plots) == []
    summary = json.loads(out)
    assert json.loads(summary_path.read_text()) == summary and "plots" not in summary


def _mount_tmpfs(folder, size):
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                             str(folder)], capture_output=True)
    return result.returncode == 0


def test_full_tmpfs_every_output(tmp_path):
    """The issue's case: a 64 KiB tmpfs (ENOSPC), with --out run.ptu, --summary-json: the PTU
    keeps what fitted, the JSON is whole or absent, one line, exit 5, summary on stdout."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount_tmpfs(disk, "64k"):
        pytest.skip("this user cannot mount a tmpfs (the RLIMIT_FSIZE tests cover it)")
    try:
        ptu, summary_path = disk / "run.ptu", disk / "summary.json"
        with PtyBoard(cycles_per_s=2e6, tag_rate_hz=5e5) as board:
            proc = _start(board, "--duration", "20", "--quiet", "--out", str(ptu),
                          "--summary-json", str(summary_path))
            status, out, err = _finish(proc)
        assert status == 5, err
        line = _one_line(err)
        assert line.startswith(f"heraldry: error: cannot write {ptu}: No space left on device")
        summary = json.loads(out)
        assert summary["complete"] is False
        tags, times, _ = _check_ptu(ptu, StopReason.TRANSFER_FAILED)
        assert len(times) > 1000
        if summary_path.exists():
            assert json.loads(summary_path.read_text()) == summary
            assert f"the summary to {summary_path}" in line
        else:
            assert f"cannot write {summary_path}" in line
        assert {p.name for p in disk.iterdir()} <= {"run.ptu", "summary.json"}
    finally:
        subprocess.run(["umount", str(disk)], check=True)


class _FillingFile:
    """A binary file that takes ``room`` bytes, then raises ENOSPC (part of a write fits)."""

    def __init__(self, real, room):
        self._real, self.room = real, room

    def write(self, data):
        data = bytes(data)
        fits = data[:max(0, self.room)]
        self._real.write(fits)
        self.room -= len(fits)
        if len(fits) < len(data):
            self._real.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return len(data)

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_writer_salvages_a_part_on_enospc(tmp_path, monkeypatch):
    """PTUWriter directly: a write that fails halfway through a record leaves the part cut to
    whole records with its count patched; close() then marks it and raises nothing more."""
    import builtins
    path = tmp_path / "x.ptu"
    real_open = builtins.open
    room = {"bytes": None}

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if os.fspath(file) == str(path) and mode == "wb":
            room["file"] = _FillingFile(f, 10**9)
            return room["file"]
        return f
    monkeypatch.setattr(builtins, "open", fake_open)
    writer = PTUWriter(path, bin_ps=BIN_PS, channel_map=ChannelMap(2), reorder_bins=0)
    header = path.stat().st_size
    events = np.zeros(1000, EVENT_DTYPE)
    events["time_ps"] = np.arange(1000) * 3 * BIN_PS
    events["channel"] = np.arange(1000) % 2
    writer.write_block(events[:400])
    room["file"].room = 4 * 250 + 2         # 250 more records and half of one
    with pytest.raises(OSError) as info:
        writer.write_block(events[400:])
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert writer.failed is info.value and writer.records == 650
    with pytest.raises(OSError):
        writer.write_block(events[:0])      # nothing more is written
    writer.close(stop_reason=StopReason.TRANSFER_FAILED)
    assert path.stat().st_size == header + 4 * 650
    with ptufile.PtuFile(path) as f:
        assert f.number_records == f.tags["TTResult_NumberOfRecords"] == 650
        assert f.tags["TTResult_MDescWarningFlags"] & WARNING_EVENTS_DROPPED
        records = f.decode_records()
    np.testing.assert_array_equal(records["time"], np.arange(650) * 3)
    assert read_ptu(path).records == 650


# -- signals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_stop_signal_finishes_the_ptu(tmp_path, signum):
    """SIGTERM (``timeout``, ``kill``) and SIGHUP end the run like Ctrl-C: the board is
    stopped, the PTU has its count and stop reason 1 (interrupted), the summary is printed, one
    line says which file was saved, exit 128 + N."""
    ptu, summary_path = tmp_path / "run.ptu", tmp_path / "summary.json"
    with PtyBoard(cycles_per_s=2e6, tag_rate_hz=5e5) as board:
        proc = _start(board, "--duration", "20", "--out", str(ptu),
                      "--summary-json", str(summary_path))
        try:
            _wait_for_records(ptu, proc)
        except BaseException:
            proc.kill()
            raise
        proc.send_signal(signum)
        status, out, err = _finish(proc)
        written = [(board.map.by_address[f["address"]].name, f["value"]) for f in board.writes]
    assert status == 128 + signum, err
    name = signal.Signals(signum).name
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert last.startswith(f"heraldry: interrupted by {name} ") and str(ptu) in last
    assert "stop reason 1, interrupted" in last and str(summary_path) in last
    assert written[-2:] == [("control.run", 0), ("control.status_period", 0)]   # stopped
    summary = json.loads(summary_path.read_text())
    assert summary["complete"] is False and summary["error"] == f"interrupted by {name}"
    assert "run INCOMPLETE" in out and ", ".join(map(str, summary["tags_per_channel"])) in out
    tags, times, channels = _check_ptu(ptu, StopReason.MANUAL)
    assert len(times) == summary["tags"] > 500
    assert f"{summary['tags']} PTU records to {ptu}" in last
    assert np.bincount(channels, minlength=4)[:4].tolist() == summary["tags_per_channel"]


def test_ctrl_c_saves_the_npz(tmp_path):
    """SIGINT with ``--out tags.npz`` writes every tag received (it used to discard them)."""
    npz = tmp_path / "tags.npz"
    summary_path = tmp_path / "summary.json"
    with PtyBoard(cycles_per_s=2e6, tag_rate_hz=5e5) as board:
        proc = _start(board, "--duration", "20", "--quiet", "--out", str(npz),
                      "--summary-json", str(summary_path))
        deadline = time.monotonic() + 60
        while board.bytes_sent < 20_000:    # until records flow
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        status, out, err = _finish(proc)
    assert status == 130, err
    line = _one_line(err)
    summary = json.loads(out)
    assert summary["tags"] > 500
    assert line.startswith("heraldry: interrupted by SIGINT ")
    assert f"saved {summary['tags']} tags to {npz}" in line
    with zipfile.ZipFile(npz) as z:
        assert sorted(z.namelist()) == sorted(
            ["channel.npy", "time_ps.npy"] + [f"herald_{name}.npy" for name in (
                "time_ps", "rule", "pattern", "attempt", "sync_offset")])
    data = np.load(npz)
    assert len(data["channel"]) == summary["tags"]
    assert np.bincount(data["channel"], minlength=4)[:4].tolist() == summary["tags_per_channel"]
    assert np.all(np.diff(data["time_ps"]) >= 0)


# -- a hung board ----------------------------------------------------------------------------

def test_hung_board_is_not_a_wrong_board(tmp_path):
    """A board that identified, then stops answering mid-run (port still open): "the board
    stopped answering", exit 4, the PTU finished and flagged incomplete."""
    ptu, summary_path = tmp_path / "run.ptu", tmp_path / "summary.json"
    with PtyBoard(cycles_per_s=2e6, tag_rate_hz=5e5) as board:
        proc = _start(board, "--duration", "20", "--quiet", "--out", str(ptu),
                      "--summary-json", str(summary_path))
        try:
            _wait_for_records(ptu, proc)
        except BaseException:
            proc.kill()
            raise
        board.hang()
        status, out, err = _finish(proc)
    assert status == 4, err
    line = _one_line(err)
    assert line.startswith("heraldry: error: the board stopped answering "), line
    assert "heraldry board" not in line and "baud" not in line
    assert f"no reply from {board.port} after 4 attempts" in line
    assert str(ptu) in line and "data transfer failed" in line
    summary = json.loads(out)
    assert summary["complete"] is False and summary["error"].startswith("no reply from")
    tags, times, _ = _check_ptu(ptu, StopReason.TRANSFER_FAILED)
    assert len(times) == summary["tags"] > 500


def test_sighup_with_the_terminal_gone(tmp_path):
    """The terminal closes under a run (its pty's master end closed, so every write to it fails
    with EIO), then SIGHUP: the PTU is finished as for any stop signal, nothing is printed (the
    summary and the line have nowhere to go), and the exit status is still 129, not 1 from a
    traceback while printing."""
    ptu = tmp_path / "run.ptu"
    master, slave = os.openpty()
    with PtyBoard(cycles_per_s=2e6, tag_rate_hz=5e5) as board:
        proc = subprocess.Popen([*CLI, "--board", board.port, "--duration", "20",
                                 "--out", str(ptu)], stdin=subprocess.DEVNULL, stdout=slave,
                                stderr=slave)
        os.close(slave)
        try:
            _wait_for_records(ptu, proc)
        except BaseException:
            proc.kill()
            raise
        finally:
            os.close(master)        # the terminal is gone: writes to it fail with EIO
        time.sleep(0.2)
        proc.send_signal(signal.SIGHUP)
        try:
            status = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert status == 128 + signal.SIGHUP
    _check_ptu(ptu, StopReason.MANUAL)


def test_summary_to_a_closed_pipe():
    """``heraldry acquire ... | head -c 0``: stdout's reader is gone before the summary is
    written. No traceback, and the run's own exit status (0: a clean in-process run)."""
    proc = subprocess.Popen([*CLI, "--board", "sim-inprocess", "--duration", "2e-6", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err
    assert err == ""


# -- the terminal as the board ---------------------------------------------------------------

def _in_new_session_on(slave_path):
    def pre():
        os.setsid()
        fd = os.open(slave_path, os.O_RDWR)
        import fcntl
        fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
    return pre


@pytest.mark.parametrize("which", ["/dev/tty", "slave"])
def test_controlling_terminal_is_refused(which):
    """``--board /dev/tty`` (or the terminal device itself) in a process whose controlling
    terminal is a pty: refused before anything is opened or written, terminal untouched."""
    master, slave = os.openpty()
    try:
        slave_path = os.ttyname(slave)
        before = termios.tcgetattr(slave)
        board = "/dev/tty" if which == "/dev/tty" else slave_path
        proc = subprocess.run([*CLI, "--board", board], capture_output=True, text=True,
                              preexec_fn=_in_new_session_on(slave_path), timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert _one_line(proc.stderr) == (f"heraldry: error: --board {board}: that is the "
                                          f"terminal heraldry runs in, not the serial port of "
                                          f"a board")
        assert termios.tcgetattr(slave) == before
        os.set_blocking(master, False)
        with pytest.raises(BlockingIOError):
            os.read(master, 100)            # nothing was written to the terminal
    finally:
        os.close(master)
        os.close(slave)


def test_port_terminal_settings_are_restored(tmp_path):
    """A run on a port whose line is in the ordinary (cooked) mode leaves it so: the port is
    raw while heraldry uses it, its settings come back on exit."""
    fresh_master, fresh_slave = os.openpty()
    cooked = termios.tcgetattr(fresh_slave)         # a new terminal's defaults
    os.close(fresh_master)
    os.close(fresh_slave)
    with PtyBoard(cycles_per_s=2e6, tag_rate_hz=5e5) as board:
        termios.tcsetattr(board._slave, termios.TCSANOW, cooked)
        proc = _start(board, "--duration", "0.01", "--quiet")
        status, out, err = _finish(proc)
        after = termios.tcgetattr(board._slave)
    assert status == 1, err     # the scripted board's counters read 0: checks fail, as they must
    assert json.loads(out)["tags"] > 0
    assert cooked[3] & termios.ICANON and cooked[3] & termios.ECHO    # not raw
    assert after == cooked


# -- the pieces, in-process --------------------------------------------------------------------

def test_signal_inside_held_waits_for_the_block():
    """A stop signal inside ``held()`` is raised when the block ends, not inside it; once one
    has been raised, later signals are ignored (the outputs are being finished)."""
    from heraldry.host.interrupt import Interrupted, held, stop_on_signals
    steps = []
    # what the handlers were before (a test run by an earlier test in this process may have
    # left SIGINT ignored): stop_on_signals must put back exactly these
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with stop_on_signals():
        with pytest.raises(Interrupted) as info:
            with held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)            # the handler has run by now
                steps.append("block finished")
            steps.append("not reached")
        assert info.value.signum == signal.SIGTERM and info.value.name == "SIGTERM"
        assert steps == ["block finished"]
        os.kill(os.getpid(), signal.SIGINT)     # while finishing: ignored
        time.sleep(0.05)
        steps.append("finished")
    assert steps == ["block finished", "finished"]
    assert {s: signal.getsignal(s) for s in before} == before


def test_hung_board_in_the_python_api():
    """``acquire_device`` on a board that stops answering mid-run: :class:`BoardSilent` (a
    ``DeviceLost``) with the partial result, its message free of wrong-board guesses."""
    from heraldry.host.acquire import acquire_device
    from heraldry.host.config import Acquisition
    from heraldry.host.driver import BoardSilent, Device, DeviceLost
    from heraldry.host.transport import SerialTransport
    received = []

    with PtyBoard(cycles_per_s=2e6, tag_rate_hz=5e5) as board:
        def sink(events):
            received.append(len(events))
            if sum(received) > 2000:
                board.hang()
        device = Device(SerialTransport(board.port), timeout=0.3)
        try:
            with pytest.raises(BoardSilent) as info:
                acquire_device(device, Acquisition(channels=4, rules=2), 20.0, sink=sink)
        finally:
            device.close()
    error = info.value
    assert isinstance(error, DeviceLost)
    assert str(error) == (f"the board stopped answering (no reply from {board.port} after 4 "
                          f"attempts of 0.3 s)")
    partial = error.partial
    assert partial is not None and not partial.complete and partial.counters is None
    assert partial.error == f"no reply from {board.port} after 4 attempts of 0.3 s"
    assert len(partial.tags) == sum(received) > 2000


def test_hung_board_through_tagger_run():
    """The same through ``heraldry.open`` and ``tagger.run`` (the run ``heraldry acquire``
    uses): :class:`BoardSilent` with the partial result, which is also ``run.result``; nothing
    more is written to the silent board (no 4 x 0.3 s resends per stop write)."""
    import heraldry
    from heraldry.host.driver import BoardSilent
    seen = 0
    with PtyBoard(cycles_per_s=2e6, tag_rate_hz=5e5) as board:
        with heraldry.open(board.port, baud=board.baud, timeout=0.3) as tagger:
            with pytest.raises(BoardSilent) as info:
                with tagger.run(duration=20.0, keep=True) as run:
                    for block in run:
                        seen += len(block.tags)
                        if seen > 2000:
                            board.hang()
            began = time.monotonic()
        closed_after = time.monotonic() - began
    error = info.value
    assert str(error) == (f"the board stopped answering (no reply from {board.port} after 4 "
                          f"attempts of 0.3 s)")
    partial = error.partial
    assert partial is run.result and run.ended
    assert not partial.complete and partial.counters is None
    assert partial.error == f"no reply from {board.port} after 4 attempts of 0.3 s"
    assert len(partial.tags) >= seen > 2000
    assert closed_after < 1.0


def test_no_room_for_the_ptu_header(tmp_path):
    """A disk full from the start: the PTU header does not fit. Replay (the file is opened
    before the run): nothing run; a board on a port (opened after the identification): the
    board is not started. Exit 5, one line, no PTU file left either way."""
    source = tmp_path / "source.ptu"
    events = np.zeros(100, EVENT_DTYPE)
    events["time_ps"] = np.arange(100) * 7 * BIN_PS
    with PTUWriter(source, bin_ps=BIN_PS, channel_map=ChannelMap(4, 2)) as writer:
        writer.write_block(events)
    out = tmp_path / "copy.ptu"
    proc = subprocess.run([*CLI, "--board", f"replay:{source}", "--quiet", "--out", str(out)],
                          capture_output=True, text=True, preexec_fn=_limit_file_size(8_000),
                          timeout=120)
    assert proc.returncode == 5, proc.stderr
    assert _one_line(proc.stderr) == (f"heraldry: error: cannot write {out}: File too large; "
                                      f"nothing was run (no PTU file left)")
    assert not out.exists()
    with PtyBoard() as board:
        proc = _start(board, "--duration", "0.01", "--quiet", "--out", str(out),
                      preexec_fn=_limit_file_size(8_000))
        status, _, err = _finish(proc)
        written = [(board.map.by_address[f["address"]].name, f["value"]) for f in board.writes]
    assert status == 5, err
    assert _one_line(err) == (f"heraldry: error: cannot write {out}: File too large; no PTU "
                              f"file left (not even its header fitted)")
    assert not out.exists() and ("control.run", 1) not in written


def test_api_run_cut_short_by_a_full_sink_or_ctrl_c():
    """Through ``tagger.run(keep=True)``: a sink that cannot write (ENOSPC) stops the board,
    raises that ``OSError`` with the partial result (the sink is not called again); a
    KeyboardInterrupt in the caller's loop stops the board and leaves the partial result in
    ``run.result``. Either way the board's last writes close the gate and switch snapshots
    off, and what was received is kept."""
    import heraldry
    calls = []
    failed_at = []

    def sink(events):
        calls.append(len(events))
        if sum(calls) > 1000:
            failed_at.append(len(calls))
            raise OSError(errno.ENOSPC, "No space left on device", "run.ptu")

    with PtyBoard(cycles_per_s=2e6, tag_rate_hz=5e5) as board:
        with heraldry.open(board.port, baud=board.baud) as tagger:
            with pytest.raises(OSError) as info:
                with tagger.run(duration=20.0, keep=True, sink=sink) as run:
                    for _ in run:
                        pass
            full = [(board.map.by_address[f["address"]].name, f["value"]) for f in board.writes]
            seen = 0
            with pytest.raises(KeyboardInterrupt):
                with tagger.run(duration=20.0, keep=True) as interrupted:
                    for block in interrupted:
                        seen += len(block.tags)
                        if seen > 1000:
                            raise KeyboardInterrupt
            writes = [(board.map.by_address[f["address"]].name, f["value"]) for f in board.writes]
    partial = info.value.partial
    assert partial is run.result and partial.counters is None
    assert partial.error == "cannot write run.ptu: No space left on device"
    assert failed_at == [len(calls)]       # not called again once it failed
    assert len(partial.tags) >= sum(calls) > 1000
    assert full[-2:] == [("control.run", 0), ("control.status_period", 0)]
    result = interrupted.result
    assert result is not None and result.error == "interrupted by SIGINT"
    assert len(result.tags) >= seen > 1000
    assert writes[-2:] == [("control.run", 0), ("control.status_period", 0)]


def test_hung_board_before_the_run_starts_through_tagger_run():
    """A board that identified, then hangs before the run's first write: entering
    ``tagger.run`` raises :class:`BoardSilent` (not ``NoReply``), with no partial result (no
    run was started)."""
    import heraldry
    from heraldry.host.driver import BoardSilent
    with PtyBoard() as board:
        with heraldry.open(board.port, baud=board.baud, timeout=0.2) as tagger:
            board.hang()
            run = tagger.run(duration=1.0, keep=True)
            with pytest.raises(BoardSilent) as info:
                with run:
                    pass
    assert str(info.value) == (f"the board stopped answering (no reply from {board.port} "
                               f"after 4 attempts of 0.2 s)")
    assert info.value.partial is None and not run.started and run.result is None
