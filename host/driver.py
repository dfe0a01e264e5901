"""The streaming driver: one :class:`Device` per board, over any :class:`~.transport.Transport`.

A background reader thread reads the link, feeds the bytes to the stream decoder
(:class:`heraldry.host.decoder.StreamDecoder`) and sorts what comes out:

* REPLY records answer commands (matched by ``seq`` and address; the decoder takes only those
  whose check matches, so a REPLY damaged on the link is never taken) and wake the caller;
* STATUS records update the latest counter snapshot (:meth:`Device.status`);
* decoded records (``host.events.EVENT_DTYPE``) go into a bounded queue of
  :class:`~heraldry.host.events.Block` s, read with :meth:`Device.read_block` or
  :meth:`Device.blocks`. When the queue is full the block is dropped and *counted*, per kind and
  per channel (:attr:`Device.host_dropped_tags`, :meth:`Device.stats`): never silently.

Commands are one at a time (a lock serialises callers): every register access sends one frame
and waits for its REPLY, resending with a new ``seq`` on timeout. Values are range-checked
against :class:`heraldry.protocol.RegisterMap` before anything is sent, and every write is
verified by the value the device reads back.

Device time: ``control.now`` is a 32-bit cycle counter. :meth:`Device.now` extends it to an
unbounded host-side count (successive reads must be less than 2**32 cycles apart, 43 s at
100 MHz); :meth:`Device.clear`, :meth:`Device.start` and :meth:`Device.stop` record the count
just before and just after their command, which bounds the cycle in which the command took
effect (the device executes commands in order, so the bounds are strict).
"""

import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Shape

from .. import protocol
from ..protocol import (COARSE_BITS, MAGIC, PROTOCOL_VERSION, Command,
                        Kind, RegisterMap, WireKind)
from .config import ConfigError
from .events import EVENT_DTYPE, Block
from .transport import TransportError

__all__ = ["DeviceError", "DeviceLost", "BoardSilent", "NoReply", "IdentificationError",
           "Identity", "Device", "COUNTER_GROUPS"]

#: Counter groups of ``protocol.CounterMap``, in address order.
COUNTER_GROUPS = ("singles", "patterns", "heralds", "delay_dropped", "merger_dropped",
                  "herald_dropped", "coincidence_dropped",
                  "filtered", "filter_dropped", "gated_out")

_SEQ_COUNT = 2 ** protocol.WIRE_SEQ_BITS
_WRAP = 2 ** COARSE_BITS
_KIND_MASK = (1 << Shape.cast(WireKind).width) - 1
_TAG_CODE = -1      # a TAG record in _scan's kinds (not a WireKind value)


class DeviceError(RuntimeError):
    """The device misbehaved or is not what it claims: wrong identification, no reply after the
    retries, a refused command, a write that did not read back, a dead link."""


class DeviceLost(DeviceError):
    """The link went away: the port was closed under the driver, the USB-serial bridge was
    unplugged, the virtual board's process died. Raised by the first command (or
    :meth:`Device.read_block` once the queue is empty) after the reader thread saw the failure;
    the reader thread has ended by then. Blocks decoded before the failure stay in the queue.
    :func:`heraldry.host.acquire.acquire_device` sets ``partial`` to an
    :class:`~heraldry.host.acquire.AcquisitionResult` of what the run received (``counters``
    ``None``: the board cannot be asked any more)."""

    partial = None


class BoardSilent(DeviceLost):
    """A board that had identified itself stopped answering: its commands get no REPLY after the
    resends while the port stays open (the gateware or the bridge hung, the virtual board's
    process was stopped). Raised by :func:`heraldry.host.acquire.acquire_device` in place of
    :class:`NoReply`, with ``partial`` like :class:`DeviceLost` once the run had started."""


class NoReply(DeviceError):
    """A command got no REPLY after the resends (the device is silent, or its replies arrive
    garbled). The link itself is still there, unlike :class:`DeviceLost`."""


class IdentificationError(DeviceError):
    """What answers on the port is not a heraldry board this host can drive: no valid reply to
    the identification reads (nothing there, or the wrong baud rate: bytes arrive garbled), the
    wrong ``ident.magic``, another protocol version, or impossible ``ident.*`` values. Raised by
    :meth:`Device.identify`, which sends nothing but READs of ``ident.*`` registers."""


@dataclass(frozen=True)
class Identity:
    """Everything the ``ident.*`` registers say about a device."""
    magic: int
    protocol: int
    gateware: int
    channels: int
    rules: int
    fine_bits: int
    bin_fs: int
    clock_hz: int
    capabilities: int
    counters: int

    @property
    def gateware_version(self):
        g = self.gateware
        return f"{g >> 16}.{g >> 8 & 0xFF}.{g & 0xFF}"

    @property
    def bin_ps(self):
        """One bin in picoseconds (an int when it is a whole number, else a float)."""
        return self.bin_fs // 1000 if self.bin_fs % 1000 == 0 else self.bin_fs / 1000


class Device:
    """A heraldry board behind ``transport``. Context manager; :meth:`close` closes the transport.

    Parameters
    ----------
    transport : Transport
        The link; the device owns it from now on.
    timeout : float
        Seconds to wait for each REPLY before resending the command.
    retries : int
        Resends after the first attempt before :class:`DeviceError`.
    queue_blocks : int
        Capacity of the queue of decoded blocks; beyond it blocks are dropped and counted.
    read_bytes : int
        Most bytes taken from the transport per read.

    Members
    -------
    identity : Identity or None
        Set by :meth:`identify` (called by anything that needs the register map).
    map : RegisterMap or None
        The device's register map, from its identification.
    link_bytes : int
        Bytes received so far.
    clear_bounds, start_bounds, stop_bounds : (int, int) or None
        :meth:`now` counts just before and just after the last clear / start / stop command.
    lost : dict
        ``{(LossCause, index): count}`` from every loss record decoded so far (including those of
        blocks the queue dropped).
    host_dropped_tags : numpy.ndarray
        Per channel, TAG records decoded but dropped because the block queue was full.
    """

    def __init__(self, transport, *, timeout=1.0, retries=3, queue_blocks=4096,
                 read_bytes=1 << 16):
        from .decoder import StreamDecoder, compile_seconds
        from ..wire import encode_command
        # Compile (or load) the decoder's kernel now, not while the first REPLY is awaited.
        compile_seconds()
        self._encode_command = encode_command
        self._decoder_cls = StreamDecoder
        self.transport = transport
        self.timeout = timeout
        self.retries = retries
        self.read_bytes = read_bytes
        self.identity = None
        self.map = None
        # Fixed registers (ident.*, control.*) have the same address in every map; the config
        # and counter registers depend on N and R, known from the identification.
        self._fixed = {r.name: r for r in RegisterMap(1, 1)
                       if r.config_offset is None and r.address < protocol.COUNTER_BASE}
        # Replies do not depend on N; until identification the decoder only serves replies.
        self._decoder = StreamDecoder(1, 1)
        self._decoder_lock = threading.Lock()
        self._blocks = queue.Queue(maxsize=queue_blocks)
        self._cond = threading.Condition()
        self._command_lock = threading.Lock()
        self._waiting = {}              # seq -> [address, reply or None]
        self._seq = 0
        self._status = {}               # address -> value, latest STATUS records
        self._status_records = 0
        self._reader_error = None
        self._closing = False
        self._now_raw = None
        self._now_ext = None
        self.clear_bounds = self.start_bounds = self.stop_bounds = None
        self.link_bytes = 0
        self.lost = {}
        self.host_dropped_blocks = 0
        self.host_dropped_events = 0
        self.host_dropped_tags = np.zeros(protocol.MAX_CHANNELS, np.int64)
        self.decode_errors = 0
        self.skipped_bytes = 0
        self.unverified = 0
        self.stream_ends = []     # link_bytes at each flush(): where each decoded stream ended
        self.stray_replies = 0
        self.resends = 0
        self.events_decoded = 0
        self.tags_decoded = 0
        self.data_records_started = 0
        self._last_data_kind = None
        self._reader = threading.Thread(target=self._read_loop, name="heraldry-reader",
                                        daemon=True)
        self._reader.start()

    # -- reader thread ---------------------------------------------------------------------

    def _read_loop(self):
        try:
            while not self._closing:
                data = self.transport.read(self.read_bytes, 0.05)
                if not data:
                    continue
                with self._decoder_lock:
                    self.link_bytes += len(data)
                    self._scan(data)
                    chunk = self._decoder.feed(data)
                    self._take(chunk)
        except TransportError as error:
            if not self._closing:
                self._fail(DeviceLost(f"link to {self.transport.name} lost: {error}"))
        except Exception as error:    # a bug here must reach the caller, not kill a thread
            self._fail(error)

    def _fail(self, error):
        with self._cond:
            self._reader_error = error
            self._cond.notify_all()

    def _scan(self, data):
        # Which records started (from their first bytes alone): lets drain() see that the
        # encoder has fallen idle and that the last segment got its CHECK.
        starts = np.frombuffer(data, np.uint8)
        starts = starts[starts >= protocol.WIRE_START]
        if not len(starts):
            return
        other = (starts & protocol.WIRE_TAG_FLAG) != 0
        kinds = np.where(other, starts >> protocol.WIRE_KIND_SHIFT & _KIND_MASK, _TAG_CODE)
        data_records = kinds[(kinds != WireKind.STATUS.value) & (kinds != WireKind.REPLY.value)]
        if len(data_records):
            self.data_records_started += len(data_records)
            self._last_data_kind = int(data_records[-1])

    @property
    def records_pending(self):
        """Records received wait for their segment's CHECK: the last record received other than
        a STATUS/REPLY is neither a CHECK nor an ANCHOR (an ANCHOR is followed at once by its
        record, so a trailing one opens an empty segment)."""
        return self._last_data_kind not in (None, WireKind.CHECK.value, WireKind.ANCHOR.value)

    def _take(self, chunk):
        """Sort one decoder chunk: events to the queue, replies to waiters, status to the
        snapshot. Called with the decoder lock held (reader thread, or :meth:`flush`)."""
        self.decode_errors += chunk.decode_errors
        self.skipped_bytes += chunk.skipped_bytes
        self.unverified += chunk.unverified
        for key, count in chunk.lost.items():
            self.lost[key] = self.lost.get(key, 0) + count
        events = chunk.events
        if len(events):
            # Events before identification were decoded with a placeholder channel count.
            if self.identity is not None:
                self._queue(events, chunk.lost)
        if chunk.status:
            with self._cond:
                for address, value in chunk.status:
                    self._status[address] = value
                self._status_records += len(chunk.status)
        if chunk.replies:
            with self._cond:
                for reply in chunk.replies:
                    slot = self._waiting.get(reply["seq"])
                    if slot is None or slot[1] is not None or slot[0] != reply["address"]:
                        self.stray_replies += 1
                        continue
                    slot[1] = reply
                self._cond.notify_all()

    def _queue(self, events, lost):
        tags = events[events["kind"] == Kind.TAG.value]
        self.events_decoded += len(events)
        self.tags_decoded += len(tags)
        try:
            self._blocks.put_nowait(Block(events, dict(lost)))
        except queue.Full:
            # The consumer is too slow: drop the block, but count exactly what was in it.
            self.host_dropped_blocks += 1
            self.host_dropped_events += len(events)
            self.host_dropped_tags += np.bincount(tags["channel"],
                                                  minlength=protocol.MAX_CHANNELS)[
                                                      :protocol.MAX_CHANNELS]

    def flush(self):
        """End the decoder's stream (records of a segment without its CHECK are counted as
        :attr:`unverified`) and start a fresh decoder for what follows. Use after a run, once
        the device has sent its last CHECK."""
        with self._decoder_lock:
            self._take(self._decoder.close())
            self._decoder = self._new_decoder()
            self.stream_ends.append(self.link_bytes)

    def _new_decoder(self):
        ident = self.identity
        if ident is None:
            return self._decoder_cls(1, 1)
        # A board with gates sends HERALD records with attempt and sync_offset.
        return self._decoder_cls(ident.channels, ident.rules, fine_bits=ident.fine_bits,
                                 bin_fs=ident.bin_fs,
                                 gates=bool(ident.capabilities & protocol.CAPABILITY_GATES))

    # -- commands --------------------------------------------------------------------------

    def _register(self, name):
        if name in self._fixed:
            return self._fixed[name]
        if self.map is None:
            self.identify()
        try:
            return self.map[name]
        except KeyError:
            raise ConfigError(f"no register {name!r} on this device") from None

    def _check_error(self):
        if self._reader_error is not None:
            error = self._reader_error
            if isinstance(error, DeviceError):
                raise type(error)(str(error))
            raise DeviceError(f"reader thread failed: {error!r}") from error

    def _next_seq(self):
        # 0 is left out so that a REPLY can never be mistaken for a STATUS record's seq.
        self._seq = self._seq % (_SEQ_COUNT - 1) + 1
        return self._seq

    def _transact(self, op, reg, value=0):
        """Send one command and return its REPLY dict; resend on timeout."""
        with self._command_lock:
            seqs = []
            try:
                for attempt in range(self.retries + 1):
                    self._check_error()
                    seq = self._next_seq()
                    with self._cond:
                        self._waiting[seq] = [reg.address, None]
                    seqs.append(seq)
                    if attempt:
                        self.resends += 1
                    try:
                        self.transport.write(self._encode_command(op, reg.address, value, seq))
                    except TransportError as error:
                        raise DeviceLost(f"link to {self.transport.name} lost: {error}") \
                            from None
                    deadline = time.monotonic() + self.timeout
                    with self._cond:
                        while True:
                            # A late reply to an earlier attempt answers the command too.
                            for s in seqs:
                                reply = self._waiting[s][1]
                                if reply is not None:
                                    return reply
                            self._check_error()
                            left = deadline - time.monotonic()
                            if left <= 0:
                                break
                            self._cond.wait(left)
            finally:
                with self._cond:
                    for s in seqs:
                        self._waiting.pop(s, None)
        what = "READ" if op == Command.READ else "WRITE"
        raise NoReply(f"no reply from {self.transport.name} to {what} {reg.name} after "
                          f"{self.retries + 1} attempts of {self.timeout:g} s ({self.link_bytes} "
                          f"bytes received in all, {self.stray_replies} stray replies; is it a "
                          f"heraldry board, at the right baud rate?)")

    def read(self, name):
        """Value of register ``name`` (a ``protocol.RegisterMap`` name, e.g. ``"window"``).

        One READ: its REPLY is taken when its check, seq and address match (the decoder drops a
        REPLY damaged on the link, the command is then sent again on timeout)."""
        reg = self._register(name)
        reply = self._transact(Command.READ, reg)
        if not reply["ok"]:
            raise DeviceError(f"{self.transport.name} refused to read {name} "
                              f"(address {reg.address:#05x})")
        return reply["value"]

    def check_value(self, name, value):
        """Refuse (:class:`ConfigError`) a value ``name`` cannot take, without sending it."""
        reg = self._register(name)
        if reg.access == "ro":
            raise ConfigError(f"register {name} is read-only")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"register {name} takes an integer, not {value!r}")
        if not reg.minimum <= value <= reg.maximum:
            raise ConfigError(f"register {name} must be {reg.minimum}..{reg.maximum}, "
                              f"not {value}")
        return reg

    def write(self, name, value):
        """Write ``value`` to register ``name`` and verify it; returns the value read back.

        Raises :class:`ConfigError` (nothing sent) for a read-only register or a value outside
        the register's range, :class:`DeviceError` if the device refuses or reads back another
        value. Write-only strobes (``control.clear``) read back 0 and are not compared."""
        reg = self.check_value(name, value)
        value = int(value)
        reply = self._transact(Command.WRITE, reg, value)
        if not reply["ok"]:
            raise DeviceError(f"{self.transport.name} refused the write of {value} to {name} "
                              f"(address {reg.address:#05x})")
        if reg.access == "rw" and reply["value"] != value:
            raise DeviceError(f"write of {value} to {name} read back {reply['value']}")
        return reply["value"]

    # -- identification and configuration -------------------------------------------------

    def identify(self):
        """Read every ``ident.*`` register, check magic and protocol version, and set up the
        register map and the decoder for this device. Returns the :class:`Identity`."""
        name = self.transport.name
        try:
            magic = self.read("ident.magic")
        except NoReply:
            baud = getattr(self.transport, "baud", None)
            at = f" at {baud} baud" if baud else ""
            if self.link_bytes:
                raise IdentificationError(
                    f"{name} sent {self.link_bytes} bytes but no valid reply to the "
                    f"identification in {self.retries + 1} attempts of {self.timeout:g} s: "
                    f"wrong baud rate (this port is opened{at}) or not a heraldry board") \
                    from None
            raise IdentificationError(
                f"no reply from {name}{at} to the identification in {self.retries + 1} "
                f"attempts of {self.timeout:g} s: is a heraldry board connected to this port, "
                f"powered, and at this baud rate?") from None
        except DeviceLost:
            raise
        except DeviceError as error:        # refused, or replies that disagree: garbled?
            raise IdentificationError(f"{error}: not a heraldry board, or the wrong baud rate "
                                      f"(bytes garbled on the way)") from None
        if magic != MAGIC:
            raise IdentificationError(f"{name} is not a heraldry device: ident.magic reads "
                                      f"{magic:#010x}, expected {MAGIC:#010x}")
        version = self.read("ident.protocol")
        if version != PROTOCOL_VERSION:
            raise IdentificationError(f"{name} speaks protocol version {version}; this host "
                                      f"speaks version {PROTOCOL_VERSION} (update one of them)")
        values = {field: self.read(f"ident.{field}") for field in (
            "gateware", "channels", "rules", "fine_bits", "bin_fs", "clock_hz", "capabilities",
            "counters")}
        for field in ("channels", "rules", "fine_bits", "bin_fs", "clock_hz"):
            reg = self._fixed[f"ident.{field}"]
            if not reg.minimum <= values[field] <= reg.maximum:
                raise IdentificationError(f"{name} reports ident.{field} = {values[field]}, "
                                          f"outside {reg.minimum}..{reg.maximum}")
        identity = Identity(magic=magic, protocol=version, **values)
        rmap = RegisterMap(identity.channels, identity.rules)
        if identity.counters != rmap.counters.size:
            raise IdentificationError(f"{name} reports {identity.counters} counters; "
                                      f"{identity.channels} channels and {identity.rules} rules "
                                      f"make {rmap.counters.size}")
        with self._decoder_lock:
            self.identity = identity
            self.map = rmap
            # Anything before this point was decoded without knowing N: start afresh.
            self._decoder = self._new_decoder()
        return identity

    def configure(self, acquisition):
        """Write an :class:`heraldry.host.config.Acquisition` onto the config registers (each
        write verified). The device must be stopped. The acquisition's channels, rules, fine bits,
        bin and clock must be the device's (:class:`ConfigError` otherwise, nothing sent)."""
        ident = self.identity or self.identify()
        acq = acquisition
        acq.validate()
        mismatch = [(what, mine, theirs) for what, mine, theirs in (
            ("channels", acq.channels, ident.channels), ("rules", acq.rules, ident.rules),
            ("fine bits", acq.fine_bits, ident.fine_bits),
            ("bin (fs)", int(round(acq.bin_ps * 1000)), ident.bin_fs),
            ("clock (Hz)", int(round(acq.clock_hz)), ident.clock_hz)) if mine != theirs]
        if mismatch:
            raise ConfigError("the acquisition does not fit the board: " + ", ".join(
                f"{what} {mine} (board: {theirs})" for what, mine, theirs in mismatch))
        refusal = acq.roles_refusal(ident.capabilities)
        if refusal:
            raise ConfigError(refusal)
        has_test_signal = bool(ident.capabilities & protocol.CAPABILITY_TEST_SIGNAL)
        if not has_test_signal and any(s != protocol.Source.PIN for s in acq.sources()):
            raise ConfigError(f"this board has no built-in test signal (ident.capabilities "
                              f"{ident.capabilities:#x}): select no test source "
                              f"(test_signal \"off\") to read the pins")
        bits = acq.gateware_config().as_value().value
        # Without the generator the test.* and test_bsm.* registers are not stored (they keep
        # their resets).
        writes = [(reg.name, bits >> reg.config_offset & ((1 << reg.width) - 1))
                  for reg in self.map.config_registers()
                  if has_test_signal
                  or not reg.name.startswith(protocol.TEST_SIGNAL_REGISTERS)]
        for name, value in writes:            # every value checked before the first is sent
            self.check_value(name, value)
        if self.read("control.run"):
            raise DeviceError("the device is running; stop it before configuring")
        for name, value in writes:
            self.write(name, value)

    # -- control ---------------------------------------------------------------------------

    def now(self):
        """``control.now`` extended to a host-side count that never wraps (reads must be less
        than 2**32 cycles apart)."""
        raw = self.read("control.now")
        if self._now_raw is None:
            self._now_ext = raw
        else:
            self._now_ext += (raw - self._now_raw) % _WRAP
        self._now_raw = raw
        return self._now_ext

    def device_cycles(self, abs_bins):
        """Host-side :meth:`now` count of the cycle of ``abs_bins`` (absolute bins as the
        decoder reports them), assuming it is within 2**31 cycles of the latest :meth:`now`."""
        if self._now_ext is None:
            raise DeviceError("device time unknown: read now() first")
        cycle = int(abs_bins) >> self.identity.fine_bits
        delta = (cycle - self._now_ext + _WRAP // 2) % _WRAP - _WRAP // 2
        return self._now_ext + delta

    def _bounded(self, name, value):
        before = self.now()
        self.write(name, value)
        return before, self.now()

    def clear(self, timeout=5.0):
        """Zero the counters, forget the window, empty the delay lines, re-seed the test signal
        and start a new segment; waits until ``control.busy`` falls. Only while stopped."""
        if self.read("control.run"):
            raise DeviceError("the device is running; stop it before clearing")
        self.clear_bounds = self._bounded("control.clear", 1)
        deadline = time.monotonic() + timeout
        while self.read("control.busy"):
            if time.monotonic() > deadline:
                raise DeviceError(f"control.busy still set {timeout:g} s after a clear")

    def start(self):
        """Open the run gate (``control.run = 1``)."""
        self.start_bounds = self._bounded("control.run", 1)

    def stop(self):
        """Close the run gate (``control.run = 0``). Records already in the pipeline still come
        out (see :meth:`wait_cycles`)."""
        self.stop_bounds = self._bounded("control.run", 0)

    def wait_cycles(self, cycles, since=None, *, poll=0.01, progress=None):
        """Poll :meth:`now` until ``cycles`` device cycles have passed since ``since`` (a
        :meth:`now` count; default: now). ``progress(done_cycles)`` is called after each poll.
        Returns the last :meth:`now` count. Every byte the device sent before that count's REPLY
        has been through the decoder when this returns (the link keeps order)."""
        start = self.now() if since is None else since
        while True:
            current = self.now()
            if progress is not None:
                progress(current - start)
            if current - start >= cycles:
                return current
            time.sleep(poll)

    def drain(self, pipeline_cycles, *, poll=0.01, timeout=60.0):
        """After :meth:`stop`: wait until every record of the run has come out and been
        verified. First ``pipeline_cycles`` device cycles after the stop (delay lines, window,
        merger latency: after them nothing new enters the merger's FIFO), then :meth:`now` polls
        until no data record started between two consecutive replies and the last segment has
        its CHECK. (The two replies are at least one command frame apart on the link, during
        which an encoder with records pending would have sent some; the encoder closes a
        segment within ``control.anchor_interval`` cycles of its ANCHOR; so when the last
        segment's CHECK was lost on the link, it stops waiting once no record has started for
        longer than that, and :meth:`flush` counts the segment as unverified.) Returns the last
        :meth:`now` count."""
        if self.stop_bounds is None:
            raise DeviceError("drain() is for after stop()")
        mark = self.wait_cycles(pipeline_cycles, since=self.stop_bounds[1], poll=poll)
        deadline = time.monotonic() + timeout
        interval = quiet_since = None
        while True:
            started = self.data_records_started
            mark = self.now()
            if self.data_records_started != started:
                quiet_since = None
            elif not self.records_pending:
                return mark
            else:
                # The last segment looks open, yet nothing starts: its CHECK was damaged on the
                # link if the encoder has been idle longer than it keeps a segment open (then
                # flush() counts the segment as unverified).
                if interval is None:
                    interval = self.read("control.anchor_interval")
                if quiet_since is None:
                    quiet_since = mark
                elif mark - quiet_since > interval:
                    return mark
            if time.monotonic() > deadline:
                raise DeviceError(f"the record stream did not end within {timeout:g} s of "
                                  f"the stop")
            time.sleep(poll)

    def counters(self):
        """Every hardware counter: ``{group: [values]}`` for the groups of ``CounterMap``
        (``patterns[p - 1]`` is pattern ``p``)."""
        rmap = self.map or (self.identify() and self.map)
        out = {}
        for group in COUNTER_GROUPS:
            out[group] = [self._read_address(protocol.COUNTER_BASE + address)
                          for address in rmap.counters.range(group)]
        return out

    def _read_address(self, address):
        reg = self.map.by_address[address]
        return self.read(reg.name)

    def status(self):
        """The latest STATUS value of every counter received so far: ``{register name: value}``
        (periodic snapshots, enabled by ``control.status_period``)."""
        with self._cond:
            snapshot = dict(self._status)
        rmap = self.map
        return {rmap.by_address[a].name if rmap and a in rmap.by_address else a: v
                for a, v in snapshot.items()}

    # -- streamed records ------------------------------------------------------------------

    def read_block(self, timeout=None):
        """The next decoded :class:`Block` (``events`` in ``EVENT_DTYPE``, absolute times), or
        ``None`` if none arrived within ``timeout`` seconds."""
        try:
            return self._blocks.get(timeout=timeout)
        except queue.Empty:
            self._check_error()
            return None

    def blocks(self, timeout=0.1):
        """Iterate over decoded blocks until the device is closed (or the link fails)."""
        while not self._closing:
            block = self.read_block(timeout)
            if block is not None:
                yield block

    def drain_blocks(self):
        """Every block queued now, concatenated into one (possibly empty) :class:`Block`."""
        parts, lost = [], {}
        while True:
            try:
                block = self._blocks.get_nowait()
            except queue.Empty:
                break
            parts.append(block.events)
            for key, count in block.lost.items():
                lost[key] = lost.get(key, 0) + count
        events = np.concatenate(parts) if parts else np.zeros(0, EVENT_DTYPE)
        return Block(events, lost)

    def stats(self):
        """Link and decoding figures so far."""
        return {
            "link_bytes": self.link_bytes,
            "events": self.events_decoded,
            "tags": self.tags_decoded,
            "decode_errors": self.decode_errors,
            "skipped_bytes": self.skipped_bytes,
            "unverified": self.unverified,
            "host_dropped_blocks": self.host_dropped_blocks,
            "host_dropped_events": self.host_dropped_events,
            "stray_replies": self.stray_replies,
            "resends": self.resends,
            "status_records": self._status_records,
        }

    # -- life cycle ------------------------------------------------------------------------

    def close(self):
        """Stop the reader thread and close the transport. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self.transport.close()
        self._reader.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
