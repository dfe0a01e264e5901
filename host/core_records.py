"""Decode the raw record integers the core emits (its merged stream, before the link encoder)
into :class:`~heraldry.host.events.Block` s: what the in-process simulation of the core
(:class:`heraldry.sim.harness.CoreSimulation`, ``heraldry acquire --board sim-inprocess``)
produces. The link's byte stream is decoded by :mod:`heraldry.host.decoder` instead.

Field offsets come from :func:`heraldry.protocol.record_fields`, so the host cannot disagree with
the gateware's layout. Record times are ``time_bits(F)`` wide and wrap; they are extended to
int64 against a running reference (every record is within half a wrap of the previous one: at
100 MHz that is 21 s, far more than any gap between records of a running core).
"""

import numpy as np

from .. import protocol
from ..protocol import Kind, LossCause
from .events import EVENT_DTYPE, Block

__all__ = ["CoreRecordDecoder"]


class CoreRecordDecoder:
    """Stateful decoder of raw record integers (as the core emits them) into :class:`Block` s.

    Parameters: ``fine_bits`` of the core's PHY, ``bin_ps``, the length of one bin, and
    ``gates`` (a core built with gates: its herald records carry ``attempt`` and ``offset``,
    handed on as ``EVENT_DTYPE``'s ``attempt`` and ``sync_offset``; the layout differs, so it
    must match the core's).
    """

    def __init__(self, *, fine_bits=0, bin_ps=10_000, gates=False):
        self.fine_bits = fine_bits
        self.bin_ps = bin_ps
        self.gates = bool(gates)
        self._fields = protocol.record_fields(fine_bits, self.gates)
        self._time_bits = protocol.time_bits(fine_bits)
        self._reference = None  # last extended time, in bins
        self.records = 0
        self.lost = {}

    def _field(self, raw, name):
        """Field ``name`` of records ``raw`` (rows of two 64-bit words, low word first: a
        record of a core with gates is wider than 64 bits)."""
        offset, width = self._fields[name]
        mask = np.uint64((1 << width) - 1)
        if offset + width <= 64:
            return (raw[:, 0] >> np.uint64(offset)) & mask
        if offset >= 64:
            return (raw[:, 1] >> np.uint64(offset - 64)) & mask
        return ((raw[:, 0] >> np.uint64(offset)) | (raw[:, 1] << np.uint64(64 - offset))) & mask

    def decode(self, raw):
        """Decode a sequence of raw records (ints) in stream order into a :class:`Block`."""
        words = np.zeros((len(raw), 2), np.uint64)
        try:
            words[:, 0] = np.asarray(raw, dtype=np.uint64)
        except OverflowError:           # records wider than 64 bits (a core with gates)
            if max(int(r) for r in raw) >> 128:
                raise ValueError("a raw record is wider than 128 bits") from None
            words[:, 0] = [int(r) & (2**64 - 1) for r in raw]
            words[:, 1] = [int(r) >> 64 for r in raw]
        raw = words
        out = np.zeros(len(raw), EVENT_DTYPE)
        if not len(raw):
            return Block(out, {})
        kind = self._field(raw, "kind").astype(np.uint8)
        wrapped = self._field(raw, "time").astype(np.int64)
        bins = self._unwrap(wrapped)
        out["time_ps"] = bins * self.bin_ps
        out["kind"] = kind
        out["count"] = 1
        is_tag = kind == Kind.TAG.value
        is_coinc = kind == Kind.COINCIDENCE.value
        is_herald = kind == Kind.HERALD.value
        is_loss = kind == Kind.LOSS.value
        out["channel"][is_tag] = self._field(raw[is_tag], "payload.tag.channel")
        out["pattern"][is_coinc] = self._field(raw[is_coinc], "payload.coincidence.pattern")
        out["channel"][is_herald] = self._field(raw[is_herald], "payload.herald.rule")
        out["pattern"][is_herald] = self._field(raw[is_herald], "payload.herald.pattern")
        if self.gates:
            out["attempt"][is_herald] = self._field(raw[is_herald], "payload.herald.attempt")
            out["sync_offset"][is_herald] = self._field(raw[is_herald], "payload.herald.offset")
        out["channel"][is_loss] = self._field(raw[is_loss], "payload.loss.index")
        out["pattern"][is_loss] = self._field(raw[is_loss], "payload.loss.cause")
        out["count"][is_loss] = self._field(raw[is_loss], "payload.loss.count")
        lost = {}
        for rec in out[is_loss]:
            key = (LossCause(int(rec["pattern"])), int(rec["channel"]))
            lost[key] = lost.get(key, 0) + int(rec["count"])
            self.lost[key] = self.lost.get(key, 0) + int(rec["count"])
        self.records += len(raw)
        return Block(out, lost)

    def _unwrap(self, wrapped):
        modulus = 1 << self._time_bits
        half = modulus >> 1
        if self._reference is None:
            self._reference = int(wrapped[0])
        steps = np.diff(wrapped, prepend=np.int64(self._reference & (modulus - 1)))
        steps = (steps + half) % modulus - half        # signed step, |step| < half a wrap
        times = self._reference + np.cumsum(steps)
        self._reference = int(times[-1])
        return times
