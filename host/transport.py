"""Byte transports between the host and a board: one small interface, several implementations.

The driver (:mod:`heraldry.host.driver`) talks to a :class:`Transport` only, so it cannot tell a
real board from a virtual one:

* :class:`SerialTransport`: a serial port through pyserial: a USB-serial bridge of a real board,
  or the pseudo-terminal of the Verilated virtual board (``sim/twin.py``).
* :class:`SimTransport`: the full top level (``gateware.top.Tagger(link="stream")``) in the
  Amaranth simulator, in-process. Written bytes are fed to its ``rx`` stream; its ``tx`` bytes
  are collected. Simulated time advances only while a reader waits in :meth:`SimTransport.read`,
  so a driver polling the device sees device time move. Slow (10^3 to 10^4 cycles/s): it is for
  unit tests of the driver, not for acquisitions.

A transport is used by at most two threads: one writer (commands) and one reader (the driver's
background reader). ``write`` and ``read`` may run concurrently; ``close`` may be called from any
thread and makes a blocked ``read`` return.
"""

import collections
import threading
import time

__all__ = ["TransportError", "Transport", "SerialTransport", "SimTransport"]


class TransportError(OSError):
    """The link failed: the port cannot be opened, went away, or the transport is closed."""


class Transport:
    """Abstract byte pipe to a board.

    Members
    -------
    name : str
        What the transport is connected to, for messages (a port path, ``"sim-inprocess"``).
    """

    name = "transport"

    def write(self, data):
        """Send ``data`` (bytes) to the device. Raises :class:`TransportError` if closed."""
        raise NotImplementedError

    def read(self, max_bytes, timeout):
        """Return up to ``max_bytes`` bytes from the device, as soon as at least one is there;
        ``b""`` if none arrived within ``timeout`` seconds (wall time). Raises
        :class:`TransportError` if the link is closed or went away."""
        raise NotImplementedError

    def close(self):
        """Release the link. Idempotent."""
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"


class SerialTransport(Transport):
    """A serial port (pyserial): a board's USB-serial bridge or the virtual board's pty.

    Parameters
    ----------
    port : str
        Device path (``/dev/ttyUSB1``, ``/dev/pts/5``). Board names are resolved by the caller.
    baud : int
        Line rate; must match the gateware's UART (ignored by pseudo-terminals).

    Opening the port makes the line raw (8N1, no echo, no flow control); :meth:`close` puts back
    the terminal settings it had (on POSIX), so a terminal or a port shared with other programs
    is left as it was found.
    """

    def __init__(self, port, baud=12_000_000):
        import serial
        self.name = str(port)
        self.baud = baud
        try:
            # 8N1, no flow control: the device never waits for the host (docs/protocol.md).
            self._serial = _serial_class()(self.name, baudrate=baud, timeout=0.1,
                                           write_timeout=5.0, exclusive=True)
        except (serial.SerialException, ValueError, OSError) as error:
            raise TransportError(f"cannot open serial port {self.name!r}: {error}") from None
        self._timeout = 0.1
        self._closed = False

    def write(self, data):
        import serial
        if self._closed:
            raise TransportError(f"{self.name} is closed")
        try:
            self._serial.write(data)
        except (serial.SerialException, OSError) as error:
            raise TransportError(f"write to {self.name} failed: {error}") from None

    def read(self, max_bytes, timeout):
        import serial
        if self._closed:
            raise TransportError(f"{self.name} is closed")
        try:
            if timeout != self._timeout:
                # Changing pyserial's timeout reconfigures the port: only do it when needed.
                self._serial.timeout = self._timeout = timeout
            # pyserial's read(n) waits for all n bytes; wait for one, then take what is there.
            first = self._serial.read(1)
            if not first:
                return b""
            waiting = min(self._serial.in_waiting, max_bytes - 1)
            return first + self._serial.read(waiting) if waiting > 0 else first
        except (serial.SerialException, OSError, TypeError) as error:
            if self._closed:
                raise TransportError(f"{self.name} is closed") from None
            if "returned no data" in str(error):
                # pyserial's words for a hang-up: readable, but end of file.
                raise TransportError(f"{self.name} hung up (the device went away or its port "
                                     f"was closed)") from None
            raise TransportError(f"read from {self.name} failed: {error}") from None

    def close(self):
        if self._closed:
            return
        self._closed = True
        try:
            self._serial.cancel_read()
        except Exception:   # already gone: closing is all that is left to do
            pass
        saved = getattr(self._serial, "saved_termios", None)
        if saved is not None and self._serial.fd is not None:
            import termios
            try:
                termios.tcsetattr(self._serial.fd, termios.TCSANOW, saved)
            except (termios.error, OSError):    # the port went away: nothing to put back
                pass
        self._serial.close()


def _serial_class():
    """pyserial's ``Serial``; on POSIX, one that keeps the terminal settings it found.

    pyserial opens the port and then makes it raw in ``_reconfigure_port`` (pyserial 3.x); the
    settings are read just before the first reconfiguration, so that :meth:`SerialTransport.close`
    can restore them."""
    import serial
    try:
        import termios
    except ImportError:             # not POSIX: no terminal settings to keep
        return serial.Serial

    class KeptSettingsSerial(serial.Serial):
        saved_termios = None

        def _reconfigure_port(self, *args, **kwargs):
            if self.saved_termios is None and self.fd is not None:
                try:
                    self.saved_termios = termios.tcgetattr(self.fd)
                except termios.error:
                    pass
            return super()._reconfigure_port(*args, **kwargs)
    return KeptSettingsSerial


class SimTransport(Transport):
    """``gateware.top.Tagger(link="stream")`` in the Amaranth simulator, behind the byte API.

    Parameters
    ----------
    channels, rules : int
        Core size (``Tagger`` parameters).
    clock_hz : int
        The clock the gateware reports (``ident.clock_hz``) and simulates.
    fifo_depth : int
        Merger FIFO depth in bundles (small values make the merger drop under a slow link).
    tx_period : int
        The ``tx`` stream is ready one cycle in every ``tx_period`` (1: a byte per cycle).
        A value near ``clock_hz * 10 / baud`` emulates a UART's throughput without its bits.
    step_cycles : int
        Most cycles simulated per :meth:`read` call before it checks its timeout again (it
        returns as soon as the device has sent a byte).
    test_signal : bool
        Build the test-signal generator (``Tagger(test_signal=...)``; the iCEBreaker has none).

    Members
    -------
    cycles : int
        Cycles simulated so far.
    """

    def __init__(self, channels=4, rules=2, *, clock_hz=100_000_000, fifo_depth=256,
                 tx_period=1, step_cycles=64, test_signal=True):
        from amaranth.sim import Simulator

        from ..gateware.top import Tagger
        if tx_period < 1:
            raise ValueError(f"tx_period must be at least 1, not {tx_period}")
        self.name = "sim-inprocess"
        self.top = Tagger(channels, rules, clock_hz=clock_hz, fifo_depth=fifo_depth,
                          link="stream", test_signal=test_signal)
        self.clock_hz = clock_hz
        self.tx_period = tx_period
        self.step_cycles = step_cycles
        self.cycles = 0
        self._rx = collections.deque()     # bytes written by the host, not yet taken by rx
        self._tx = bytearray()             # bytes sent by the device, not yet read
        self._lock = threading.Lock()      # the simulator and self._tx
        self._closed = False
        self._sim = Simulator(self.top)
        self._sim.add_clock(1 / clock_hz)
        self._sim.add_testbench(self._bench, background=True)

    async def _bench(self, ctx):
        top = self.top
        rx, tx = top.rx, top.tx
        pending = None
        k = 0
        ready = 1
        ctx.set(tx.ready, ready)
        while True:
            if pending is None and self._rx:
                pending = self._rx.popleft()
                ctx.set(rx.payload, pending)
                ctx.set(rx.valid, 1)
            if self.tx_period > 1:
                ready = int(k % self.tx_period == 0)
                ctx.set(tx.ready, ready)
            _, _, rx_ready, tx_valid, tx_byte = await ctx.tick().sample(
                rx.ready, tx.valid, tx.payload)
            if pending is not None and rx_ready:
                pending = None
                ctx.set(rx.valid, 0)
            if tx_valid and ready:
                self._tx.append(tx_byte)
            k += 1
            self.cycles = k

    def write(self, data):
        if self._closed:
            raise TransportError(f"{self.name} is closed")
        self._rx.extend(bytes(data))

    def read(self, max_bytes, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self._closed:
                raise TransportError(f"{self.name} is closed")
            with self._lock:
                if self._tx:
                    out = bytes(self._tx[:max_bytes])
                    del self._tx[:max_bytes]
                    return out
                if time.monotonic() >= deadline:
                    return b""
                # Stop at the first byte out: a REPLY reaches the waiting caller without delay.
                target = self.cycles + self.step_cycles
                while self.cycles < target and not self._tx:
                    self._sim.advance()

    def run(self, cycles):
        """Advance simulated time by ``cycles`` cycles (device bytes are kept for :meth:`read`)."""
        with self._lock:
            target = self.cycles + cycles
            while self.cycles < target:
                self._sim.advance()

    def close(self):
        self._closed = True
