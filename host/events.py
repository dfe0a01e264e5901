"""Decoded records: the one format every path delivers them in.

:data:`EVENT_DTYPE` records in :class:`Block` s, times in picoseconds, come from the link
(:class:`heraldry.host.decoder.StreamDecoder`, through :class:`heraldry.host.driver.Device`),
from the core simulated in-process (:class:`heraldry.host.core_records.CoreRecordDecoder`) and
from recorded files (:mod:`heraldry.host.replay`).
"""

from dataclasses import dataclass, field

import numpy as np

from ..protocol import GATE_BITS, Kind

__all__ = ["EVENT_DTYPE", "SYNC_OFFSET_NONE", "Block"]

#: One decoded record. ``kind`` is a :class:`protocol.Kind` value; ``channel`` is the tag's
#: channel, the herald rule, or the loss index; ``pattern`` the coincidence/herald pattern or,
#: for loss records, the cause; ``count`` the loss count (1 otherwise). ``attempt`` and
#: ``sync_offset`` place a HERALD record of a core with gates (``CAPABILITY_GATES``) in the
#: attempt clock, as on the wire (docs/protocol.md): the number of sync edges at or before its
#: time (modulo 2**32) and the bins from the latest of them (:data:`SYNC_OFFSET_NONE` before
#: the first, or that many bins or more after it). Every other record, and a herald of a core
#: without gates, has both 0 (attempt 0 with offset 0 never occurs on the wire).
EVENT_DTYPE = np.dtype([
    ("time_ps", np.int64),
    ("channel", np.uint8),
    ("kind", np.uint8),
    ("pattern", np.uint16),
    ("count", np.uint32),
    ("attempt", np.uint32),
    ("sync_offset", np.uint32),     # 16 bits on the wire; 32 keeps the records 8-byte aligned
])

#: ``sync_offset`` of a herald before the first sync edge, or this many bins or more after the
#: latest (the hardware's saturated offset, ``model.OFFSET_NONE``).
SYNC_OFFSET_NONE = 2 ** GATE_BITS - 1


@dataclass
class Block:
    """Decoded records of one read, in stream order, plus the tally of what was lost."""
    events: np.ndarray                      # EVENT_DTYPE
    lost: dict = field(default_factory=dict)  # {(LossCause, index): count}

    @property
    def tags(self):
        return self.events[self.events["kind"] == Kind.TAG.value]

    def of_kind(self, kind):
        return self.events[self.events["kind"] == Kind(kind).value]
