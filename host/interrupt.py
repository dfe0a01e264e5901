"""Stopping a run by a signal without damaging what it writes.

``heraldry acquire`` treats SIGINT (Ctrl-C), SIGTERM (``kill``, ``timeout N heraldry ...``,
a service manager) and SIGHUP (the terminal closed) alike: the run stops, what was received is
saved and the outputs are finished (see :func:`heraldry.host.cli.cmd_acquire`).

Python delivers a signal to the main thread between two bytecodes: an exception raised by the
handler could land between writing a block to a file and counting it, and leave a file whose
header disagrees with its records. So, inside :func:`held` (a block being collected or written)
a signal only is noted, and raised when the block is done; after the first signal, later ones
are ignored while the outputs are finished (a second Ctrl-C does not cut the saving short).
"""

import contextlib
import signal
import threading

__all__ = ["Interrupted", "STOP_SIGNALS", "stop_on_signals", "held"]

#: The signals that stop a run.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived. ``signum``: which one; ``partial``: set by
    :func:`heraldry.host.acquire.acquire_device` to what the run received up to then (an
    :class:`~heraldry.host.acquire.AcquisitionResult` with ``error`` set), else ``None``."""

    partial = None

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self):
        return signal.Signals(self.signum).name


_state = {"depth": 0, "pending": None, "fired": False, "installed": False}


def _handler(signum, frame):
    if _state["fired"]:
        return                  # the outputs are being finished
    if _state["depth"]:
        _state["pending"] = signum
        return
    _state["fired"] = True
    raise Interrupted(signum)


@contextlib.contextmanager
def held():
    """Signals that arrive inside the block are raised (as :class:`Interrupted`) when it ends.
    A no-op unless :func:`stop_on_signals` is active. Nestable."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
    if not _state["depth"] and _state["pending"] is not None and not _state["fired"]:
        signum, _state["pending"] = _state["pending"], None
        _state["fired"] = True
        raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals():
    """While active, every signal of :data:`STOP_SIGNALS` raises :class:`Interrupted` in the
    main thread (once; see the module docstring); the previous handlers come back after it.
    Outside the main thread (where Python cannot set handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread() or _state["installed"]:
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in STOP_SIGNALS}
    _state.update(depth=0, pending=None, fired=False, installed=True)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _state.update(depth=0, pending=None, fired=False, installed=False)
