"""A fault-injecting relay for a serial link: a bad cable or an overrunning USB bridge, on purpose.

:class:`FaultRelay` opens the device's port (the virtual board's pty, or any serial device path)
and a pseudo-terminal of its own, and relays bytes both ways between them in a background thread.
On the way it drops, flips (one random bit), duplicates and delays bytes, each at its own per-byte
rate (:class:`Faults`): by default only on the device -> host direction; the host -> device
direction has its own rates, off by default. The host (the driver, or any serial software) opens
:attr:`FaultRelay.port` exactly as it would open the board's.

Faults are drawn from a seeded generator, one uniform number per relayed byte, so the faults a
stream gets depend only on the seed and each byte's position in it, not on how the bytes arrive in
chunks. At most one fault hits a byte: of a byte's draw ``u``, ``u < drop`` drops it, the next
``flip`` of the unit interval flip one bit (which bit also comes from ``u``), the next
``duplicate`` send it twice, the next ``delay`` hold it (and, to keep the order, everything after
it) until up to ``delay_s`` seconds after it came (delays overlap, they do not add up). Every
injected fault is counted by direction and kind (:attr:`FaultRelay.counts`); ``record=True``
also keeps the device's bytes as they came
(:attr:`FaultRelay.clean`), the bytes given to the host (:attr:`FaultRelay.delivered`) and each
device -> host fault's position in the clean stream (:attr:`FaultRelay.fault_log`), so a test
can say exactly which records a fault hit.

Flow control: the relay stops reading the device while more than ``high_water`` bytes wait for a
slow host, so a device that waits for its host (the virtual board does) still waits; the relay
itself never drops a byte that it did not count as a fault.

Cut cable: while :attr:`FaultRelay.cut` is true the relay reads both sides and passes nothing
on (a pulled cable: the device does not wait for it, the host hears nothing); the bytes lost
that way are counted in :attr:`FaultRelay.cut_bytes` by direction, not as faults.

Shutdown: when the device side closes (the virtual board exits) the relay closes its pty, so the
host's next read fails like on a pulled cable; when the host closes the pty after having opened it
the relay closes the device's port (the virtual board then exits). With ``hold=True`` the relay
keeps its pty's slave open itself, so hosts can come and go (``heraldry relay``).
:meth:`FaultRelay.close` stops it from any thread. Use it as a context manager.
"""

import ctypes
import ctypes.util
import collections
import errno
import os
import select
import termios
import threading
import time
import tty
from dataclasses import dataclass

import numpy as np

__all__ = ["Faults", "FaultRelay", "FAULT_KINDS"]

#: Fault kinds in the order their probability intervals are laid out.
FAULT_KINDS = ("drop", "flip", "duplicate", "delay")


@dataclass(frozen=True)
class Faults:
    """Per-byte fault probabilities of one direction, and the longest delay in seconds."""
    drop: float = 0.0
    flip: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    delay_s: float = 0.05

    def __post_init__(self):
        for kind in FAULT_KINDS:
            rate = getattr(self, kind)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{kind} rate must be 0..1, not {rate}")
        if self.total > 1.0:
            raise ValueError(f"fault rates add up to {self.total:g}, more than 1")
        if not 0.0 <= self.delay_s <= 60.0:
            raise ValueError(f"delay_s must be 0..60 s, not {self.delay_s}")

    @classmethod
    def uniform(cls, rate, kinds=FAULT_KINDS, delay_s=0.05):
        """``rate`` spread evenly over ``kinds`` (a byte is hit by some fault with ``rate``)."""
        kinds = tuple(kinds)
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown or not kinds:
            raise ValueError(f"fault kinds must be some of {', '.join(FAULT_KINDS)}, not "
                             f"{kinds!r}")
        return cls(**{kind: rate / len(kinds) for kind in kinds}, delay_s=delay_s)

    @property
    def total(self):
        return sum(getattr(self, kind) for kind in FAULT_KINDS)


class _Direction:
    """Faults of one direction: turns the input bytes into timed output pieces."""

    def __init__(self, faults, seed, record):
        self.faults = faults
        self._rng = np.random.default_rng(seed)
        edges = np.cumsum([getattr(faults, kind) for kind in FAULT_KINDS])
        self._edges = np.concatenate([[0.0], edges])      # kind i: edges[i] <= u < edges[i+1]
        self.counts = dict.fromkeys(FAULT_KINDS, 0)
        self.bytes_in = 0
        self.bytes_out = 0
        self.record = record
        self.clean = bytearray()
        self.delivered = bytearray()
        self.log = []                     # (position in the input stream, kind)
        self.queue = collections.deque()  # [release time, bytearray], in order
        self.queued = 0

    def take(self, data, now):
        """Apply the faults to ``data`` (bytes just read) and queue the result."""
        raw = np.frombuffer(data, np.uint8)
        n = len(raw)
        offset = self.bytes_in
        self.bytes_in += n
        if self.record:
            self.clean += data
        f = self.faults
        if f.total == 0.0:
            self._append(bytes(data), now, None)
            return
        u = self._rng.random(n)
        kind = np.searchsorted(self._edges, u, side="right") - 1   # 0..3, or 4: no fault
        hit = np.flatnonzero(kind < len(FAULT_KINDS))
        if not len(hit):
            self._append(bytes(data), now, None)
            return
        out = raw.copy()
        repeat = np.ones(n, np.int64)
        delays = []
        for i in hit.tolist():
            k = FAULT_KINDS[kind[i]]
            self.counts[k] += 1
            if self.record:
                self.log.append((offset + i, k))
            # where u falls inside its kind's interval: a second uniform number, for free
            within = (u[i] - self._edges[kind[i]]) / getattr(f, k)
            if k == "drop":
                repeat[i] = 0
            elif k == "flip":
                out[i] ^= np.uint8(1 << min(7, int(within * 8)))
            elif k == "duplicate":
                repeat[i] = 2
            else:
                delays.append((i, within * f.delay_s))
        if not delays:
            self._append(np.repeat(out, repeat).tobytes(), now, None)
            return
        # split at each delayed byte: it and what follows wait behind it
        position = np.cumsum(repeat) - repeat           # output index of each input byte
        result = np.repeat(out, repeat)
        begin = 0
        for i, seconds in delays:
            at = int(position[i])
            self._append(result[begin:at].tobytes(), now, None)
            self._append(b"", now, seconds)
            begin = at
        self._append(result[begin:].tobytes(), now, None)

    def _append(self, data, now, delay):
        if delay is not None:
            # held until ``delay`` after it came, or longer if what is before it is held longer
            last = self.queue[-1][0] if self.queue else now
            self.queue.append([max(last, now + delay), bytearray()])
        elif not data:
            return
        elif not self.queue:
            self.queue.append([now, bytearray(data)])
        else:
            self.queue[-1][1] += data
        self.queued += len(data)

    def ready(self, now):
        """Bytes that may go out now (a prefix of the queue), or ``None``; and the next release
        time of a held piece (or ``None``)."""
        while self.queue and not self.queue[0][1] and self.queue[0][0] <= now:
            self.queue.popleft()        # a delay that has passed, with nothing behind it yet
        if not self.queue:
            return None, None
        release, piece = self.queue[0]
        if release > now:
            return None, release
        return piece, None

    def sent(self, count):
        """``count`` bytes of the first piece went out."""
        piece = self.queue[0][1]
        if self.record:
            self.delivered += piece[:count]
        del piece[:count]
        self.queued -= count
        self.bytes_out += count
        if not piece and len(self.queue) > 1:
            self.queue.popleft()


def _open_master():
    """A pseudo-terminal master in raw mode (non-blocking) and its slave's path. The slave is
    not opened: until a host opens it the master neither reads EOF nor reports a hang-up."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.posix_openpt.restype = ctypes.c_int
    libc.ptsname.restype = ctypes.c_char_p
    fd = libc.posix_openpt(os.O_RDWR | os.O_NOCTTY)
    if fd < 0 or libc.grantpt(fd) != 0 or libc.unlockpt(fd) != 0:
        code = ctypes.get_errno()
        if fd >= 0:
            os.close(fd)
        raise OSError(code, f"cannot open a pseudo-terminal: {os.strerror(code)}")
    name = libc.ptsname(fd)
    if not name:
        os.close(fd)
        raise OSError("ptsname failed")
    # Raw: no echo, no line editing, no CR/LF translation. Termios on the master sets the slave's.
    tty.setraw(fd, termios.TCSANOW)
    os.set_blocking(fd, False)
    return fd, name.decode()


class FaultRelay:
    """Relay between a device's port and a pty of its own, injecting counted faults.

    Parameters
    ----------
    device_port : str
        The device's serial port path (e.g. ``Twin.port``).
    baud : int, optional
        Open ``device_port`` with pyserial at this line rate (a real board's USB-serial bridge);
        by default it is opened as a plain file in raw mode (a pseudo-terminal).
    to_host : Faults
        Faults on the device -> host bytes.
    to_device : Faults
        Faults on the host -> device bytes (default: none).
    seed : int
        Seed of the fault draws (each direction gets its own generator from it).
    record : bool
        Keep :attr:`clean`, :attr:`delivered` and :attr:`fault_log` (memory grows with the run).
    hold : bool
        Keep the pty's slave open in the relay, so hosts can close and reopen :attr:`port`.
    high_water : int
        Most bytes held for the host before the relay stops reading the device.

    Members (after :meth:`start`, which ``with`` calls): ``port`` (the path the host opens),
    ``counts`` (see the property), ``closed_by`` (``None`` while running, then ``"device"``,
    ``"host"``, ``"close"`` or ``"error"``), ``error`` (the ``OSError`` that ended the relay, if
    one did).
    """

    def __init__(self, device_port, *, baud=None, to_host=Faults(), to_device=Faults(), seed=0,
                 record=False, hold=False, high_water=1 << 16):
        self.device_port = str(device_port)
        self.baud = baud
        self._serial = None
        self.seed = seed
        self.hold = hold
        self.high_water = high_water
        seeds = np.random.SeedSequence(seed).spawn(2)
        self._up = _Direction(to_host, seeds[0], record)      # device -> host
        self._down = _Direction(to_device, seeds[1], record)  # host -> device
        self._lock = threading.Lock()
        self.port = None
        self.closed_by = None
        self.error = None
        self._thread = None
        self._device = self._master = self._hold_fd = None
        self._wake_r = self._wake_w = None
        self._stopping = False
        #: True: pass nothing either way (a pulled cable); any thread may set it.
        self.cut = False
        #: Bytes read while :attr:`cut`, by direction.
        self.cut_bytes = {"to_host": 0, "to_device": 0}

    # -- life cycle ----------------------------------------------------------------------------

    def start(self):
        """Open both ends and start relaying. Raises ``OSError`` if the device's port cannot be
        opened."""
        if self.baud is not None:
            import serial
            try:
                self._serial = serial.Serial(self.device_port, baudrate=self.baud, timeout=0,
                                             exclusive=True)
            except (serial.SerialException, ValueError) as error:
                raise OSError(f"cannot open {self.device_port}: {error}") from None
            self._device = self._serial.fileno()
            os.set_blocking(self._device, False)
        else:
            self._device = os.open(self.device_port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            if self._serial is None and os.isatty(self._device):
                tty.setraw(self._device, termios.TCSANOW)
            self._master, self.port = _open_master()
            if self.hold:
                self._hold_fd = os.open(self.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            self._wake_r, self._wake_w = os.pipe()
        except OSError:
            self._close_fds(wake=True)
            raise
        self._thread = threading.Thread(target=self._loop, name="fault-relay", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout=5.0):
        """Stop relaying and close both ends (idempotent). Bytes still held are discarded."""
        self._stopping = True
        if self._wake_w is not None:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            self._close_fds(wake=True)

    def wait(self, timeout=None):
        """Wait until the relay has ended (a side closed); True if it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- figures -------------------------------------------------------------------------------

    @property
    def counts(self):
        """``{"to_host": {kind: n, ..., "bytes_in", "bytes_out"}, "to_device": {...}}``: every
        fault injected so far by direction and kind, and the bytes each direction took in and
        gave out."""
        with self._lock:
            return {name: dict(d.counts, bytes_in=d.bytes_in, bytes_out=d.bytes_out)
                    for name, d in (("to_host", self._up), ("to_device", self._down))}

    @property
    def faults_to_host(self):
        """Faults injected on the device -> host bytes so far, all kinds together."""
        with self._lock:
            return sum(self._up.counts.values())

    @property
    def clean(self):
        """Every byte the device sent, as it came (``record=True``)."""
        with self._lock:
            return bytes(self._up.clean)

    @property
    def delivered(self):
        """Every byte given to the host so far (``record=True``)."""
        with self._lock:
            return bytes(self._up.delivered)

    @property
    def fault_log(self):
        """``[(position in clean, kind), ...]`` of the device -> host faults (``record=True``)."""
        with self._lock:
            return list(self._up.log)

    # -- the relay -----------------------------------------------------------------------------

    def _loop(self):
        reason = "close"
        try:
            reason = self._relay()
        except OSError as error:
            self.error = error
            reason = "error"
        finally:
            self.closed_by = reason
            self._close_fds()

    def _relay(self):
        device, master = self._device, self._master
        while not self._stopping:
            now = time.monotonic()
            with self._lock:
                up_piece, up_next = self._up.ready(now)
                down_piece, down_next = self._down.ready(now)
                up_full = self._up.queued >= self.high_water
                down_full = self._down.queued >= self.high_water
            timeout = 0.2
            for release in (up_next, down_next):
                if release is not None:
                    timeout = min(timeout, max(0.0, release - now))
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            poller.register(device, (0 if up_full else select.POLLIN)
                            | (select.POLLOUT if down_piece else 0))
            poller.register(master, (0 if down_full else select.POLLIN)
                            | (select.POLLOUT if up_piece else 0))
            events = dict(poller.poll(timeout * 1000))
            if self._stopping:
                break
            dev_ev, host_ev = events.get(device, 0), events.get(master, 0)
            if dev_ev & select.POLLIN or (dev_ev & (select.POLLHUP | select.POLLERR)):
                if not self._pump_in(device, self._up):
                    return "device"
            if host_ev & select.POLLIN:
                if not self._pump_in(master, self._down):
                    return "host"
            elif host_ev & (select.POLLHUP | select.POLLERR):
                return "host"
            if dev_ev & select.POLLOUT and down_piece:
                if not self._pump_out(device, self._down):
                    return "device"
            if host_ev & select.POLLOUT and up_piece:
                if not self._pump_out(master, self._up):
                    return "host"
        return "close"

    def _pump_in(self, fd, direction):
        """Read what ``fd`` has into ``direction``; False when that side has gone."""
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        except OSError as error:
            if error.errno == errno.EIO:      # the other end of a pty closed
                return False
            raise
        if not data:
            return False
        if self.cut:
            self.cut_bytes["to_host" if direction is self._up else "to_device"] += len(data)
            return True
        with self._lock:
            direction.take(data, time.monotonic())
        return True

    def _pump_out(self, fd, direction):
        with self._lock:
            piece, _ = direction.ready(time.monotonic())
            if not piece:
                return True
            chunk = bytes(piece)
        try:
            n = os.write(fd, chunk)
        except BlockingIOError:
            return True
        except OSError as error:
            if error.errno == errno.EIO:
                return False
            raise
        with self._lock:
            direction.sent(n)
        return True

    def _close_fds(self, wake=False):
        """Close both ends (the relay thread does, as it ends); with ``wake`` also the pipe
        that wakes the thread (only :meth:`close` does, once the thread has ended, so that it
        never writes to a descriptor closed meanwhile)."""
        if self._serial is not None:
            self._device = None            # pyserial's to close
            self._serial.close()
            self._serial = None
        names = ("_device", "_master", "_hold_fd") + (("_wake_r", "_wake_w") if wake else ())
        for name in names:
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                try:
                    os.close(fd)
                except OSError:
                    pass
