"""A scripted heraldry board on a pseudo-terminal, for the serial-port path of the host
(``heraldry acquire --board /dev/pts/N``) in the cases the virtual board cannot play: a device
that identifies itself wrongly, one whose bytes arrive at the wrong baud rate, a port that
disappears mid-run.

Every byte it sends is built by :mod:`heraldry.wire` from :mod:`heraldry.protocol` (REPLY
records for the commands, ``encode_stream`` segments for the tags); every command it receives is
decoded by :func:`heraldry.wire.decode_command` and kept in :attr:`PtyBoard.frames`, so a test
can prove what the host sent. It is a register file, not a tagger: READs return what was
written (``ident.*`` as configured, ``control.now`` advancing with wall time at
``cycles_per_s``), counters read 0, and while ``control.run`` is 1 it streams random TAG records
at ``tag_rate_hz`` of device time.
"""

import fcntl
import os
import select
import struct
import threading
import time
import tty

import numpy as np

from heraldry import protocol
from heraldry.protocol import Command, Kind
from heraldry.wire import decode_command, encode_records, encode_stream


def at_wrong_baud(data, device_baud, host_baud):
    """The bytes a UART at ``host_baud`` reads from ``data`` sent 8N1 at ``device_baud`` (back
    to back, idle line high before and after): wait for a falling edge, sample the middle of the
    start bit, 8 data bits (LSB first) and the stop bit at the host's rate. A byte whose stop bit
    reads 0 (framing error) is delivered as 0, as a Linux tty does without PARMRK."""
    bits = [1] * 4
    for byte in bytes(data):
        bits += [0] + [(byte >> k) & 1 for k in range(8)] + [1]
    bits += [1] * 4
    dev, host = 1.0 / device_baud, 1.0 / host_baud
    end = len(bits) * dev

    def level(t):
        return bits[min(int(t / dev), len(bits) - 1)]
    out = bytearray()
    t = 0.0
    step = dev / 8
    while t < end:
        if level(t) == 1:
            t += step
            continue
        if level(t + host / 2) != 0:          # a glitch shorter than half a host bit
            t += step
            continue
        value = sum(level(t + (k + 1.5) * host) << k for k in range(8))
        out.append(value if level(t + 9.5 * host) == 1 else 0)
        t += 9.5 * host
        while t < end and level(t) == 0:      # the next falling edge comes after a high level
            t += step
    return bytes(out)


_TCGETS2 = 0x802C542A       # Linux ioctl: read struct termios2 (the port's actual rates)


class PtyBoard:
    """A fake board on a pty; a context manager (``with PtyBoard() as board: board.port``).

    Parameters
    ----------
    channels, rules : int
        What ``ident.*`` reports (and the stream's format).
    ident : dict
        Overrides of ``ident.*`` values, e.g. ``{"magic": 0x12345678}``.
    baud, host_baud : int
        The board's UART rate and the rate the host opened the port at. When they differ, the
        board's bytes reach the host as :func:`at_wrong_baud` makes them, and the host's commands
        reach the board the same way (so it rarely understands one). ``host_baud="port"``: the
        rate the host set on the port (read from the pty at every transfer, Linux ``TCGETS2``),
        as a real UART would see it; lets a test try several rates on one board.
    streaming : bool
        Stream TAG records from the start, as a board left running by an earlier session.
    cycles_per_s : float
        Device cycles per second of wall time (``control.now``).
    tag_rate_hz : float
        TAG records per second of device time while streaming.
    """

    def __init__(self, channels=4, rules=2, *, ident=None, baud=12_000_000, host_baud=None,
                 streaming=False, cycles_per_s=1e6, tag_rate_hz=2e5, seed=1):
        self.channels, self.rules = channels, rules
        self.map = protocol.RegisterMap(channels, rules)
        values = {"magic": protocol.MAGIC, "protocol": protocol.PROTOCOL_VERSION,
                  "gateware": 0x000100, "channels": channels, "rules": rules, "fine_bits": 0,
                  "bin_fs": 10_000_000, "clock_hz": 100_000_000, "capabilities": 7,
                  "counters": self.map.counters.size}
        values.update(ident or {})
        self.values = {self.map[f"ident.{k}"].address: v for k, v in values.items()}
        self.baud = baud
        self.host_baud = baud if host_baud is None else host_baud
        self.cycles_per_s = cycles_per_s
        self.tag_rate_hz = tag_rate_hz
        self.frames = []            # every command decoded, in order
        self.bad_frames = 0         # frames that did not decode
        self.bytes_sent = 0
        self._rng = np.random.default_rng(seed)
        self._run = self.map["control.run"].address
        self._now = self.map["control.now"].address
        self._running = streaming
        self._t0 = time.monotonic()
        self._streamed = 0          # cycles streamed so far
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._hung = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="pty-board", daemon=True)

    # -- life cycle ----------------------------------------------------------------------------

    def start(self):
        self._thread.start()
        return self

    def disconnect(self):
        """The port goes away: both ends of the pty are closed (the host's reads see a
        hang-up). Returns ``time.monotonic()`` just after."""
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            for fd in (self._master, self._slave):
                if fd is not None:
                    os.close(fd)
            self._master = self._slave = None
        return time.monotonic()

    close = disconnect

    def hang(self):
        """The board hangs, as a process stopped by SIGSTOP: it neither answers nor streams, and
        its port stays open. Returns ``time.monotonic()`` just after."""
        self._hung.set()
        return time.monotonic()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if self._master is not None:
            self.disconnect()

    @property
    def writes(self):
        """The WRITE commands received."""
        return [f for f in self.frames if f["op"] is Command.WRITE]

    def names(self):
        """Register names of the commands received, in order."""
        return [self.map.by_address[f["address"]].name for f in self.frames]

    # -- the board -----------------------------------------------------------------------------

    def _cycles(self):
        return int((time.monotonic() - self._t0) * self.cycles_per_s)

    def _rate_of_host(self):
        if self.host_baud != "port":
            return self.host_baud
        if self._slave is None:         # disconnected: nothing goes through any more
            return self.baud
        # struct termios2: 4 flags, c_line, 19 c_cc, c_ispeed, c_ospeed (Linux).
        raw = fcntl.ioctl(self._slave, _TCGETS2, bytes(44))
        return struct.unpack("4I B 19B 2I", raw)[-1]

    def _send(self, data):
        host_baud = self._rate_of_host()
        if self.baud != host_baud:
            data = at_wrong_baud(data, self.baud, host_baud)
        with self._lock:
            if self._master is None:
                return
            os.write(self._master, data)
        self.bytes_sent += len(data)

    def _answer(self, frame):
        address = frame["address"]
        known = address in self.map.by_address
        if frame["op"] is Command.WRITE and known:
            if address == self._run:
                if frame["value"] and not self._running:
                    self._streamed = self._cycles()
                self._running = bool(frame["value"])
            self.values[address] = frame["value"]
        value = self._cycles() % 2 ** 32 if address == self._now else self.values.get(address, 0)
        reply = {"kind": "reply", "ok": int(known), "seq": frame["seq"], "address": address,
                 "value": value if known else 0}
        self._send(encode_records([reply], self.channels, self.rules))

    def _stream(self):
        now = self._cycles()
        span = now - self._streamed
        count = int(self._rng.poisson(self.tag_rate_hz * span / 1e8)) if span > 0 else 0
        if count:
            times = np.sort(self._rng.integers(self._streamed, now, count))
            chans = self._rng.integers(0, self.channels, count)
            records = [{"kind": Kind.TAG, "channel": int(c), "time": int(t)}
                       for t, c in zip(times, chans)]
            self._send(encode_stream(records, self.channels, self.rules,
                                     anchor_interval=2 ** 40))
        self._streamed = now

    def _serve(self):
        pending = b""
        size = protocol.COMMAND_BYTES
        while not self._stop.is_set():
            if self._hung.is_set():
                time.sleep(0.01)
                continue
            ready, _, _ = select.select([self._master], [], [], 0.01)
            if ready:
                try:
                    data = os.read(self._master, 4096)
                except OSError:
                    data = b""
                host_baud = self._rate_of_host()
                if self.baud != host_baud:
                    data = at_wrong_baud(data, host_baud, self.baud)
                pending += data
                while len(pending) >= size:
                    start = next((i for i, b in enumerate(pending) if b & 0x80), None)
                    if start is None:
                        self.bad_frames += 1
                        pending = b""
                        break
                    if start:
                        self.bad_frames += 1
                    frame, pending = pending[start:start + size], pending[start + size:]
                    if len(frame) < size:
                        pending = frame
                        break
                    try:
                        decoded = decode_command(frame)
                    except ValueError:
                        self.bad_frames += 1
                        continue
                    self.frames.append(decoded)
                    self._answer(decoded)
            if self._running:
                self._stream()
