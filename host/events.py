"""Decoded records: the one format every path delivers them in.

:data:`EVENT_DTYPE` records in :class:`Block` s, times in picoseconds, come from the link
(:class:`heraldry.host.decoder.StreamDecoder`, through :class:`heraldry.host.driver.Device`),
from the core simulated in-process (:class:`heraldry.host.core_records.CoreRecordDecoder`) and
from recorded files (:mod:`heraldry.host.replay`).
"""

from dataclasses import dataclass, field

import numpy as np

from ..protocol import Kind

__all__ = ["EVENT_DTYPE", "Block"]

#: One decoded record. ``kind`` is a :class:`protocol.Kind` value; ``channel`` is the tag's
#: channel, the herald rule, or the loss index; ``pattern`` the coincidence/herald pattern or,
#: for loss records, the cause; ``count`` the loss count (1 otherwise).
EVENT_DTYPE = np.dtype([
    ("time_ps", np.int64),
    ("channel", np.uint8),
    ("kind", np.uint8),
    ("pattern", np.uint16),
    ("count", np.uint32),
])


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
