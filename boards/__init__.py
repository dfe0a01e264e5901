"""Real boards: what a bitstream for a given board is made of.

A :class:`Board` names an amaranth-boards platform (subclassed with our resources: detector
inputs, herald outputs, status LEDs), the Tagger's clock, the UART rate of the board's USB
bridge, the PHY and the resulting bin. ``Board.top(channels)`` is the Elaboratable to build:
PLL clocking, :class:`heraldry.gateware.top.Tagger` and the pin wiring.

Board modules (``boards/icebreaker.py``, ``boards/ulx3s.py``) define :class:`Board` subclasses
that override :meth:`Board.top` and call :func:`register` for each instance; this package
imports them, so :data:`BOARDS` is complete once ``heraldry.boards`` is imported. A board module
that is missing (not written yet) is skipped; one that fails to import is an error.
"""

import importlib
from dataclasses import dataclass

from ..extras import require

__all__ = ["Board", "BoardError", "BOARDS", "register", "get_board"]


class BoardError(ValueError):
    """Unknown board name or impossible board option (one line, fit for the command line)."""


@dataclass(frozen=True)
class Board:
    """One buildable board.

    Members
    -------
    name : str
        Registry name (``"icebreaker"``, ``"ulx3s-85f"``, ``"ulx3s-25f"``).
    platform : type
        amaranth-boards platform class, subclassed with our resources.
    clock_hz : int
        The Tagger's ``sync`` clock (``ident.clock_hz``).
    baud : int
        UART rate of the board's USB bridge.
    phy : type
        PHY class (``GenericPHY`` or a sub-clock one).
    bin_fs : int
        One bin in femtoseconds: ``10**15 / clock_hz / 2**phy.fine_bits``, rounded.
    default_channels : int
        Channels built when none are asked for.
    max_channels : int
        The most channels that fit the device (and meet timing) at ``clock_hz``.
    programmer : str
        ``"iceprog"`` or ``"openFPGALoader"``.
    seed : int
        nextpnr placement seed a build uses unless given one (class attribute; 1, or the seed a
        board's sweep found to meet timing with margin, documented in docs/boards.md).
    """

    seed = 1

    name: str
    platform: type
    clock_hz: int
    baud: int
    phy: type
    bin_fs: int
    default_channels: int
    max_channels: int
    programmer: str

    @property
    def bin_ps(self):
        """One bin in picoseconds (float)."""
        return self.bin_fs / 1000

    def check_channels(self, channels):
        """``channels`` or the default if None; :class:`BoardError` if out of 1..max."""
        if channels is None:
            return self.default_channels
        if not 1 <= channels <= self.max_channels:
            raise BoardError(f"--channels {channels}: {self.name} fits 1..{self.max_channels}")
        return channels

    @property
    def crossing_limits_ns(self):
        """``{(from, to): ns}``: clock crossings (named as in ``report.json``, e.g.
        ``("posedge fast", "posedge sync")``) whose delay, which nextpnr reports but does not
        time, the design relies on staying within ``ns``; ``build`` checks them. None here."""
        return {}

    @property
    def connector_pins(self):
        """``{resource: [(connector, number, pin), ...]}``: where the board's ``det`` and
        ``herald`` resources sit on the amaranth-boards platform's connectors (index order);
        ``build`` checks the constraint file's pins against these. None here."""
        return {}

    @property
    def hold_crossings(self):
        """Clock crossings (``("posedge fast", "posedge sync")``) whose launch and capture edges
        coincide, so their shortest path must exceed the capturing flip-flop's hold time;
        ``build`` measures it in nextpnr's SDF. None here."""
        return ()

    @property
    def sdf_clock_sources(self):
        """``{domain: SDF instance}``: the cell whose output drives each clock of
        :attr:`hold_crossings` in nextpnr's SDF (a global buffer). None here."""
        return {}

    def top(self, channels):
        """The Elaboratable to build for ``channels`` inputs (clocking + Tagger + pins).

        Board subclasses override this."""
        raise NotImplementedError(f"{type(self).__name__} does not define top()")


#: Every registered board, by name.
BOARDS = {}


def register(board):
    """Add ``board`` to :data:`BOARDS` (ValueError if its name is taken); returns it."""
    if not isinstance(board, Board):
        raise TypeError(f"not a Board: {board!r}")
    if board.name in BOARDS and BOARDS[board.name] is not board:
        raise ValueError(f"board {board.name!r} is already registered")
    BOARDS[board.name] = board
    return board


def get_board(name):
    """The registered board called ``name``; :class:`BoardError` listing the known names if
    there is none."""
    try:
        return BOARDS[name]
    except KeyError:
        known = ", ".join(sorted(BOARDS)) or "none"
        raise BoardError(f"unknown board {name!r}; known boards: {known}") from None


# Imported last: they import Board and register from here. Their platforms come from
# amaranth-boards (the [build] extra): say so in one line when it is missing.
require("amaranth_boards", "building a board")
_BOARD_MODULES = ("icebreaker", "ulx3s")
for _module in _BOARD_MODULES:
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as _error:
        if _error.name != f"{__name__}.{_module}":
            raise
del _module
