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

    Parameters: ``fine_bits`` of the core's PHY and ``bin_ps``, the length of one bin.
    """

    def __init__(self, *, fine_bits=0, bin_ps=10_000):
        self.fine_bits = fine_bits
        self.bin_ps = bin_ps
        self._fields = protocol.record_fields(fine_bits)
        self._time_bits = protocol.time_bits(fine_bits)
        self._reference = None  # last extended time, in bins
        self.records = 0
        self.lost = {}

    def _field(self, raw, name):
        offset, width = self._fields[name]
        return (raw >> np.uint64(offset)) & np.uint64((1 << width) - 1)

    def decode(self, raw):
        """Decode a sequence of raw records (ints) in stream order into a :class:`Block`."""
        raw = np.asarray(raw, dtype=np.uint64)
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
