"""Command interface: host command frames -> register reads and writes -> REPLY and STATUS records.

The wire format of commands and the register map are in ``docs/protocol.md`` and
``heraldry.protocol`` (``COMMAND_BYTES``, ``Command``, ``RegisterMap``); the generated table is
``docs/registers.md``. Two blocks:

* :class:`CommandParser`: the host's byte stream -> 8-byte command frames.
* :class:`RegisterFile`: every register of ``RegisterMap(N, R)``; owns the core's ``config``,
  ``run``, ``clear``, the encoder's ``anchor_interval`` and the periodic counter snapshots, and
  answers each command with one REPLY on the side stream to the encoder.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .. import __version__
from ..protocol import (
    CAPABILITY_GATES, CAPABILITY_REFERENCES, GATES_REGISTERS, ROLE_REGISTERS,
    CAPABILITY_STREAM_FILTER, CAPABILITY_TEST_SIGNAL, COARSE_BITS, COMMAND_BYTES, COMMAND_CHECK_BITS, COMMAND_CHECK_INIT,
    COMMAND_OP_BITS, COMMAND_PAYLOAD_BITS, COUNTER_BASE, COUNTER_BITS, REGISTER_ADDRESS_BITS,
    STREAM_REGISTERS, TEST_SIGNAL_REGISTERS, command_check_step,
    WIRE_BITS_PER_BYTE, WIRE_SEQ_BITS, Command, RegisterMap, WireKind, config_layout,
)
from .encoder import SIDE_LAYOUT

__all__ = ["COMMAND_LAYOUT", "CAPABILITIES", "version_word", "CommandParser", "RegisterFile"]

#: Width of a register value on the link (what is left of the frame after seq and address).
VALUE_BITS = COMMAND_PAYLOAD_BITS - WIRE_SEQ_BITS - REGISTER_ADDRESS_BITS

#: One parsed command frame (its check verified). ``op`` is a ``Command`` value, or an unknown
#: operation (answered with ``ok = 0``).
COMMAND_LAYOUT = data.StructLayout({
    "op":      unsigned(COMMAND_OP_BITS),
    "seq":     unsigned(WIRE_SEQ_BITS),
    "address": unsigned(REGISTER_ADDRESS_BITS),
    "value":   unsigned(VALUE_BITS),
})

#: ``ident.capabilities`` of this gateware: bit 0 test signal, bit 1 coincidence records,
#: bit 2 herald outputs (the register's documentation in ``heraldry.protocol``).
CAPABILITIES = 0b111


def version_word(version=__version__):
    """``ident.gateware`` of a ``"major.minor.patch"`` version: ``major << 16 | minor << 8 |
    patch`` (a suffix after the patch number, such as ``rc1`` or ``+local``, is ignored)."""
    parts = version.split(".")
    if len(parts) < 3:
        raise ValueError(f"version {version!r} is not major.minor.patch")
    patch = ""
    for ch in parts[2]:
        if not ch.isdigit():
            break
        patch += ch
    major, minor, patch = int(parts[0]), int(parts[1]), int(patch or "0")
    if not (0 <= major < 2 ** 16 and 0 <= minor < 2 ** 8 and 0 <= patch < 2 ** 8):
        raise ValueError(f"version {version!r} does not fit major << 16 | minor << 8 | patch")
    return major << 16 | minor << 8 | patch


class CommandParser(wiring.Component):
    """Host bytes -> command frames (``docs/protocol.md``, "Commands").

    A frame is ``COMMAND_BYTES`` bytes: ``WIRE_START | check << COMMAND_OP_BITS | op``, then bytes with bit 7
    clear holding 7 bits each, least significant first: ``seq``, ``address``, ``value``. A byte
    with bit 7 set always starts a new frame; the bytes of a frame cut short by it (a *torn*
    frame) are dropped, and so is a run of bytes with bit 7 clear that follows no start byte, and
    a complete frame whose ``check`` is not the CRC-5 of its op and payload
    (``protocol.command_check_step``, computed 7 bits per byte as the bytes arrive). Each such
    loss pulses ``bad_frame`` once (the register file counts them in ``control.bad_frames``).

    Members
    -------
    i : In(stream.Signature(8))
        Bytes from the link. ``i.ready`` is low only while a byte that would complete a frame
        waits for the previous frame to be taken from ``o``; every other byte is taken at once.
    o : Out(stream.Signature(COMMAND_LAYOUT))
        Complete frames, valid from the cycle after their last byte's handshake.
    bad_frame : Out(1)
        One-cycle pulse, in the cycle after the handshake of the byte that reveals a lost frame
        (the start byte that tears it, the first stray byte, or the last byte of a frame whose
        check does not match).
    """

    i: In(stream.Signature(8))
    o: Out(stream.Signature(COMMAND_LAYOUT))
    bad_frame: Out(1)

    def elaborate(self, platform):
        m = Module()
        # Bytes of the current frame received so far (0: none), and whether stray bytes are
        # being skipped (counted once per run).
        received = Signal(range(COMMAND_BYTES))
        stray = Signal()
        op = Signal(COMMAND_OP_BITS)
        check = Signal(COMMAND_CHECK_BITS)
        # The check of the bits received so far (op first, then 7 payload bits per byte).
        crc = Signal(COMMAND_CHECK_BITS)
        # Payload bytes shift in from the top, so after the last one the first is at bit 0.
        payload = Signal(COMMAND_PAYLOAD_BITS)

        byte = self.i.payload
        start = byte[7]
        completes = ~start & (received == COMMAND_BYTES - 1)

        def crc_over(state, bits):
            state = list(state)
            for bit in bits:
                state = command_check_step(state, bit)
            return Cat(*state)

        init = [(COMMAND_CHECK_INIT >> i) & 1 for i in range(COMMAND_CHECK_BITS)]
        crc_after_op = crc_over(init, [byte[i] for i in range(COMMAND_OP_BITS)])
        crc_after_byte = crc_over([crc[i] for i in range(COMMAND_CHECK_BITS)],
                                  [byte[i] for i in range(WIRE_BITS_PER_BYTE)])
        m.d.comb += self.i.ready.eq(~completes | ~self.o.valid | self.o.ready)

        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        m.d.sync += self.bad_frame.eq(0)

        with m.If(self.i.valid & self.i.ready):
            with m.If(start):
                m.d.sync += [
                    op.eq(byte[:COMMAND_OP_BITS]),
                    check.eq(byte[COMMAND_OP_BITS:WIRE_BITS_PER_BYTE]),
                    crc.eq(crc_after_op),
                    received.eq(1),
                    stray.eq(0),
                    self.bad_frame.eq(received != 0),
                ]
            with m.Elif(received == 0):
                m.d.sync += [stray.eq(1), self.bad_frame.eq(~stray)]
            with m.Else():
                shifted = Cat(payload[WIRE_BITS_PER_BYTE:], byte[:WIRE_BITS_PER_BYTE])
                m.d.sync += [payload.eq(shifted), crc.eq(crc_after_byte)]
                with m.If(completes):
                    m.d.sync += received.eq(0)
                    with m.If(crc_after_byte == check):
                        m.d.sync += [
                            self.o.valid.eq(1),
                            self.o.payload.eq(Cat(op, shifted)),
                        ]
                    with m.Else():
                        m.d.sync += self.bad_frame.eq(1)
                with m.Else():
                    m.d.sync += received.eq(received + 1)
        return m


class RegisterFile(wiring.Component):
    """Every register of ``RegisterMap(channels, rules)``, one REPLY per command, and periodic
    counter snapshots.

    Registers (``docs/registers.md``):

    * ``ident.*``: constants from the parameters.
    * ``control.run`` (bit 0 of the written value), ``control.clear`` (writing a value with bit 0
      set pulses ``clear``; reads 0), ``control.busy`` (the core's ``busy``),
      ``control.status_period``, ``control.anchor_interval``, ``control.now`` (the core's ``now``
      when the command is executed), ``control.bad_frames`` (``bad_frame`` pulses, wrapping).
    * every config register: ``width`` bits of ``config`` from ``config_offset``. A write stores
      the low ``width`` bits of the value, so it cannot reach outside its field; values are not
      range-checked (the host does that). Without the test-signal capability the ``test.*``
      and ``test_bsm.*`` registers are not stored: they read their reset values, and a write
      replies with it; likewise the ``stream[c]`` registers without the stream-filter
      capability.
    * every counter, through the core's counter read port.

    **Commands.** A READ of a register in the map replies ``ok = 1`` with its value. A WRITE of
    an ``rw`` or ``wo`` register writes, then replies ``ok = 1`` with the value read back after
    the write. A WRITE of an ``ro`` register replies ``ok = 0`` with its value and changes nothing.
    An address outside the map, or an operation that is not a ``Command``, replies ``ok = 0`` with
    value 0. Every reply carries the command's ``seq`` and ``address``.

    **Snapshots.** While ``status_period`` = P is non-zero, a snapshot is requested every P cycles
    (counted from the write of ``control.status_period``, which restarts the count). A snapshot
    is one STATUS record (``ok = 1``, ``seq = 0``, ``address = COUNTER_BASE + i``) per counter
    ``i`` of the map, in address order; each value is the counter when that record is read.
    Commands are answered between the records of a snapshot: when both wait, commands and
    snapshot records take turns. At most one request waits while a snapshot is running (a period
    shorter than a snapshot gives back-to-back snapshots, never a backlog); a write of
    ``control.status_period`` withdraws a request whose snapshot has not started. Nothing is
    dropped: the side stream is only ever back-pressured.

    Timing (``side.ready`` high, nothing else in progress): a command taken in cycle ``c`` is
    decoded in cycle ``c + 1`` (address decode registered) and executed in cycle ``c + 2`` (a
    write shows on ``config``, ``run``, ... and ``clear`` pulses in cycle ``c + 3``), the
    register is read in cycle ``c + 3`` (``control.now`` reads ``now`` of that cycle), the reply
    formed in cycle ``c + 4`` and valid on ``side`` from cycle ``c + 5``. After a write of
    ``control.status_period`` = P taken in cycle ``c``, the k-th snapshot (k = 1, 2, ...) is
    requested so that its first record is valid in cycle ``c + k P + 6`` (P >= 2); the records
    of a snapshot follow one every 4 cycles.

    Parameters
    ----------
    channels, rules : int
        N and R of the core.
    clock_hz : int
        System clock (``ident.clock_hz``).
    bin_fs : int
        One bin in femtoseconds (``ident.bin_fs``).
    fine_bits : int
        F of the PHY (``ident.fine_bits``).
    version : str
        Gateware version ``"major.minor.patch"`` (``ident.gateware``, see :func:`version_word`).
    capabilities : int
        ``ident.capabilities``.

    Members
    -------
    command : In(stream.Signature(COMMAND_LAYOUT))
        Parsed command frames (from :class:`CommandParser`).
    bad_frame : In(1)
        Pulse per dropped frame (from :class:`CommandParser`), counted in ``control.bad_frames``.
    side : Out(stream.Signature(SIDE_LAYOUT))
        REPLY and STATUS records to the encoder.
    config : Out(config_layout(N, R))
        The core's configuration; reset value ``RegisterMap.config_reset()``.
    run : Out(1), clear : Out(1)
        ``control.run`` (level) and the ``control.clear`` strobe (one cycle).
    busy : In(1), now : In(COARSE_BITS)
        The core's ``busy`` and ``now``.
    status_period : Out(32), anchor_interval : Out(32)
        ``control.status_period`` and ``control.anchor_interval`` (the encoder's input).
    counter_addr : Out(range(CounterMap.size)), counter_data : In(COUNTER_BITS)
        The core's counter read port (data one cycle after the address).

    Attributes
    ----------
    clear_next : Signal(1)
        The value ``clear`` takes at the next edge (combinational), for registered copies of
        ``clear`` near their users (``TaggerCore.clear_next``).
    map : RegisterMap
    ident : dict[str, int]
        Value of every ``ident.*`` register.
    """

    def __init__(self, channels, rules, *, clock_hz, bin_fs, fine_bits=0, version=__version__,
                 capabilities=CAPABILITIES):
        self.channels = channels
        self.rules = rules
        self.test_signal = bool(capabilities & CAPABILITY_TEST_SIGNAL)
        self.gates = bool(capabilities & CAPABILITY_GATES)
        # The role registers alone (a references-only build) or every gates.* register.
        self.roles = self.gates or bool(capabilities & CAPABILITY_REFERENCES)
        self.stream_filter = bool(capabilities & CAPABILITY_STREAM_FILTER)
        self.map = RegisterMap(channels, rules)
        self.clear_next = Signal(name="clear_next")
        if SIDE_LAYOUT["value"].width != VALUE_BITS:
            raise ValueError("SIDE_LAYOUT's value is not as wide as a command's value")
        fixed = {
            "ident.gateware": version_word(version),
            "ident.channels": channels,
            "ident.rules": rules,
            "ident.fine_bits": fine_bits,
            "ident.bin_fs": bin_fs,
            "ident.clock_hz": clock_hz,
            "ident.capabilities": capabilities,
            "ident.counters": self.map.counters.size,
        }
        self.ident = {}
        for reg in self.map:
            if reg.name.startswith("ident."):
                value = fixed.get(reg.name, reg.reset)
                if not 0 <= value < 2 ** VALUE_BITS:
                    raise ValueError(f"{reg.name} = {value} does not fit {VALUE_BITS} bits")
                self.ident[reg.name] = value
        layout = config_layout(channels, rules)
        super().__init__({
            "command":         In(stream.Signature(COMMAND_LAYOUT)),
            "bad_frame":       In(1),
            "side":            Out(stream.Signature(SIDE_LAYOUT)),
            "config":          Out(layout, init=layout.from_bits(self.map.config_reset())),
            "run":             Out(1),
            "clear":           Out(1),
            "busy":            In(1),
            "now":             In(COARSE_BITS),
            "status_period":   Out(VALUE_BITS, init=self.map["control.status_period"].reset),
            "anchor_interval": Out(VALUE_BITS, init=self.map["control.anchor_interval"].reset),
            "counter_addr":    Out(range(self.map.counters.size)),
            "counter_data":    In(COUNTER_BITS),
        })

    def _stored_role(self, name):
        """A ``gates.*`` register is stored: every one in a gates build, the role registers in
        a references-only build."""
        return self.gates or (self.roles and name.startswith(ROLE_REGISTERS))

    def elaborate(self, platform):
        m = Module()
        rmap = self.map
        n_counters = rmap.counters.size
        config_bits = self.config.as_value()

        cmd = Signal(COMMAND_LAYOUT)
        bad_frames = Signal(VALUE_BITS)
        with m.If(self.bad_frame):
            m.d.sync += bad_frames.eq(bad_frames + 1)

        # Address decode of the latched command, registered in the DECODE state (so that the
        # write enables of EXEC and the reply of READ start from registers).
        dec_known = Signal()
        dec_writable = Signal()
        dec_is_counter = Signal()
        m.d.comb += dec_is_counter.eq((cmd.address >= COUNTER_BASE)
                                      & (cmd.address < COUNTER_BASE + n_counters))
        with m.Switch(cmd.address):
            for reg in rmap:
                if reg.address >= COUNTER_BASE:
                    continue
                with m.Case(reg.address):
                    m.d.comb += [dec_known.eq(1), dec_writable.eq(reg.access != "ro")]
            with m.Default():
                m.d.comb += dec_known.eq(dec_is_counter)
        known = Signal()
        writable = Signal()
        is_counter = Signal()
        is_read = Signal()
        is_write = Signal()
        counter_index = Signal(range(n_counters))
        allowed = known & (is_read | (is_write & writable))

        # Register values as read (after any write of the previous cycle), in two registered
        # steps (timing: one wide multiplexer would be a long chain of LUTs): in READ each group
        # of up to 16 registers selects its member at the address (or 0) into a register of its
        # own; in REPLY the groups and the counter read port are OR-ed (at most one is not 0).
        control = {
            "control.run": self.run,
            "control.clear": Const(0),
            "control.busy": self.busy,
            "control.status_period": self.status_period,
            "control.anchor_interval": self.anchor_interval,
            "control.now": self.now,
            "control.bad_frames": bad_frames,
        }
        readable = []
        for reg in rmap:
            if reg.address >= COUNTER_BASE:
                continue
            if reg.name in self.ident:
                readable.append((reg.address, self.ident[reg.name]))
            elif reg.name.startswith(GATES_REGISTERS) and not self._stored_role(reg.name):
                continue    # not stored, and their reset is 0: they read 0 (no multiplexer)
            elif reg.config_offset is not None:
                readable.append((reg.address,
                                 config_bits[reg.config_offset:reg.config_offset + reg.width]))
            else:
                readable.append((reg.address, control[reg.name]))
        group_size = 16
        groups = [readable[i:i + group_size] for i in range(0, len(readable), group_size)]
        group_values = [Signal(VALUE_BITS, name=f"read_group{g}") for g in range(len(groups))]
        # The counter read port is registered already: its address is held through READ, so in
        # REPLY it shows the counter as of READ.
        counter_value = Mux(is_counter, self.counter_data, 0)
        read_step = Signal()        # high in READ: sample the groups
        with m.If(read_step):
            for group, value in zip(groups, group_values):
                m.d.sync += value.eq(0)
                with m.Switch(cmd.address):
                    for address, source in group:
                        with m.Case(address):
                            m.d.sync += value.eq(source)
        read_value = Signal(VALUE_BITS)
        combined = counter_value
        for value in group_values:
            combined = combined | value
        m.d.comb += read_value.eq(combined)

        # Register writes, performed in EXEC.
        write = Signal()
        value = cmd.value
        m.d.sync += self.clear.eq(self.clear_next)
        with m.If(write):
            with m.Switch(cmd.address):
                for reg in rmap.config_registers():
                    if reg.name.startswith(GATES_REGISTERS) and not self._stored_role(reg.name):
                        continue    # not stored: every channel a detector without gate
                    if reg.name.startswith(STREAM_REGISTERS) and not self.stream_filter:
                        continue    # not stored either: every channel streams all
                    if reg.name.startswith(TEST_SIGNAL_REGISTERS) and not self.test_signal:
                        continue    # not stored: the config bits keep their reset values
                    with m.Case(reg.address):
                        m.d.sync += config_bits[reg.config_offset:reg.config_offset + reg.width] \
                            .eq(value[:reg.width])
                with m.Case(rmap["control.run"].address):
                    m.d.sync += self.run.eq(value[0])
                with m.Case(rmap["control.clear"].address):
                    m.d.comb += self.clear_next.eq(value[0])
                with m.Case(rmap["control.status_period"].address):
                    m.d.sync += self.status_period.eq(value)
                with m.Case(rmap["control.anchor_interval"].address):
                    m.d.sync += self.anchor_interval.eq(value)

        requested = Signal()                   # a snapshot is due
        snapshot = Signal()                    # a snapshot is in progress
        snap_index = Signal(range(n_counters))

        with m.If(self.side.valid & self.side.ready):
            m.d.sync += self.side.valid.eq(0)

        # Commands and snapshot records take turns when both wait, so neither starves the other
        # (a host may pipeline commands; a short status_period keeps a snapshot always due).
        command_turn = Signal(init=1)
        snapshot_due = snapshot | requested
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.command.valid & (command_turn | ~snapshot_due)):
                    m.d.comb += self.command.ready.eq(1)
                    m.d.sync += [cmd.eq(self.command.payload), command_turn.eq(0)]
                    m.next = "DECODE"
                with m.Elif(snapshot_due):
                    with m.If(~snapshot):
                        m.d.sync += [snapshot.eq(1), snap_index.eq(0), requested.eq(0)]
                    m.d.sync += command_turn.eq(1)
                    m.next = "SNAP_ADDR"
            with m.State("DECODE"):
                m.d.sync += [
                    known.eq(dec_known),
                    writable.eq(dec_writable),
                    is_counter.eq(dec_is_counter),
                    is_read.eq(cmd.op == Command.READ.value),
                    is_write.eq(cmd.op == Command.WRITE.value),
                    counter_index.eq(cmd.address - COUNTER_BASE),
                ]
                m.next = "EXEC"
            with m.State("EXEC"):
                m.d.comb += [
                    write.eq(is_write & known & writable),
                    self.counter_addr.eq(counter_index),
                ]
                m.next = "READ"
            with m.State("READ"):
                m.d.comb += [read_step.eq(1), self.counter_addr.eq(counter_index)]
                m.next = "REPLY"
            with m.State("REPLY"):
                m.d.sync += [
                    self.side.valid.eq(1),
                    self.side.payload.kind.eq(WireKind.REPLY),
                    self.side.payload.ok.eq(allowed),
                    self.side.payload.seq.eq(cmd.seq),
                    self.side.payload.address.eq(cmd.address),
                    self.side.payload.value.eq(Mux(known & (is_read | is_write), read_value, 0)),
                ]
                m.next = "SEND"
            with m.State("SNAP_ADDR"):
                m.d.comb += self.counter_addr.eq(snap_index)
                m.next = "SNAP_DATA"
            with m.State("SNAP_DATA"):
                m.d.sync += [
                    self.side.valid.eq(1),
                    self.side.payload.kind.eq(WireKind.STATUS),
                    self.side.payload.ok.eq(1),
                    self.side.payload.seq.eq(0),
                    self.side.payload.address.eq(COUNTER_BASE + snap_index),
                    self.side.payload.value.eq(self.counter_data),
                    snap_index.eq(snap_index + 1),
                ]
                with m.If(snap_index == n_counters - 1):
                    m.d.sync += snapshot.eq(0)
                m.next = "SEND"
            with m.State("SEND"):
                with m.If(self.side.ready):
                    m.next = "IDLE"

        # Snapshot requests: every status_period cycles, counted from its last write. After the FSM,
        # so that a request made in the cycle the FSM takes the previous one is kept.
        timer = Signal(VALUE_BITS)
        period_written = write & (cmd.address == rmap["control.status_period"].address)
        with m.If(period_written | (self.status_period == 0)):
            # A new period (or 0 = off) also withdraws a request not yet started.
            m.d.sync += timer.eq(0)
            with m.If(period_written):
                m.d.sync += requested.eq(0)
        with m.Elif(timer == self.status_period - 1):
            m.d.sync += [timer.eq(0), requested.eq(1)]
        with m.Else():
            m.d.sync += timer.eq(timer + 1)
        return m
