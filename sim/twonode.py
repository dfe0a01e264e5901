"""Two virtual boards with their own clocks, fed from one seeded photon-pair source.

The test bed of two-node time (docs/sync.md): :func:`heraldry.model.twonode.two_node_source`
makes the detections (arm A to board 1, arm B to board 2 after the fiber delay, dark counts on
both, each board reading true time on its own :class:`~heraldry.model.twonode.Clock` with its
ppm, drift and steps); :func:`board_pins` turns each board's detections, in its own *local*
clock cycles, into a pins file; :class:`TwoBoards` starts one Verilated virtual board
(:class:`heraldry.sim.twin.Twin`) per pins file and opens a :class:`heraldry.Tagger` on each.

Time bases. A virtual board's device count starts at reset; its pins file counts cycles from
there (``sim/twin.py``). The model's board ``k`` reads ``local_k(t) = lead_s + clock_k.local(t)``
seconds at true time ``t`` (true time 0 is ``lead_s`` after the boards' reset, give or take
``clock_k.start_s``), and a detection at local time ``L`` is stamped with device bin
``floor(L * clock_hz)``: a rise driven at cycle ``bin - 1 - TaggerCore.latency``, since the
gateware stamps a rise set up for cycle ``k`` with bin ``k + 1 + latency``. A run's tags in
device bins are its ``start_cycles`` plus its times in bins. Device time runs from reset while
the host identifies and configures the board (about 10^6 cycles here): ``lead_s`` (default
30 ms) keeps the source's start after the run's; detections before a run's start are not
recorded, like photons arriving at a board that is not running yet.

Limits: the harness reads its whole pins file before it starts (16 bytes of memory per edge, two
edges per detection), so a run is bounded by memory, not by the file (10^7 detections: 320 MB);
the virtual board simulates about 2 * 10^6 cycles per wall second, so 0.1 s of device time takes
about 5 s. A detection less than ``dead_cycles`` cycles after the previous one on the same board
is not driven (a detector's dead time: the pin needs a low cycle between two rises);
:attr:`TwoBoards.bins_a` / :attr:`TwoBoards.bins_b` are the detections actually driven.
"""

import dataclasses
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["board_pins", "build_gates_twin", "TwoBoards"]


def _latency():
    from ..gateware.core import TaggerCore
    from ..gateware.phy import GenericPHY
    return GenericPHY.latency + TaggerCore.PIPELINE


def board_pins(bins, channel=0, *, dead_cycles=2, latency=None):
    """Pin edges ``(cycle, channel, level)`` that make a virtual board stamp ``bins`` (sorted
    device bins, one clock cycle each) on ``channel``: a one-cycle pulse per detection.

    A detection within ``dead_cycles`` (>= 2) cycles of the previous kept one is dropped, as is
    one whose rise would come before cycle 0. Returns ``(edges, keep)``: an ``(n, 3)`` int64
    array of edges in cycle order and a boolean mask of the ``bins`` driven. ``latency``: the
    core's (default ``TaggerCore.latency`` of the generic PHY)."""
    if dead_cycles < 2:
        raise ValueError(f"dead_cycles must be >= 2 (a low cycle between rises), not "
                         f"{dead_cycles}")
    latency = _latency() if latency is None else latency
    bins = np.asarray(bins, np.int64)
    if bins.size and np.any(np.diff(bins) < 0):
        raise ValueError("bins must be sorted")
    keep = bins - 1 - latency >= 0
    # Only detections closer than the dead time need the sequential rule.
    for i in np.flatnonzero(np.diff(bins) < dead_cycles) + 1:
        prev = i - 1
        while prev >= 0 and not keep[prev]:
            prev -= 1
        if keep[i] and prev >= 0 and bins[i] - bins[prev] < dead_cycles:
            keep[i] = False
    rise = bins[keep] - 1 - latency
    edges = np.empty((2 * len(rise), 3), np.int64)
    edges[0::2, 0], edges[1::2, 0] = rise, rise + 1
    edges[:, 1] = channel
    edges[0::2, 2], edges[1::2, 2] = 1, 0
    return edges, keep


def build_gates_twin(cache_dir=None):
    """The virtual board of ``heraldry.open("sim")`` (4 channels, 2 rules, built with the gates
    option: channel roles, so a ``reference`` channel streams its edges as markers; capability
    bit 3). Returns the executable (:func:`heraldry.sim.twin.build_twin`, built on first use
    and cached)."""
    from ..host.tagger import SIM_BOARD
    from .twin import build_twin
    return build_twin(SIM_BOARD["channels"], SIM_BOARD["rules"], SIM_BOARD["clock_hz"],
                      SIM_BOARD["baud"], gates=True, cache_dir=cache_dir)


def _merge_edges(*edges):
    """Edge arrays of different channels in one cycle order (stable: each channel's order)."""
    merged = np.concatenate(edges)
    return merged[np.argsort(merged[:, 0], kind="stable")]


def _write_edges(path, edges):
    with open(path, "w") as f:
        f.write("# cycle channel level (heraldry two-node virtual board)\n")
        np.savetxt(f, edges, fmt="%d")
    return Path(path)


class TwoBoards:
    """Two virtual boards fed from one seeded two-node source (context manager).

    Parameters:
        duration_s: true time the source runs (seconds, from ``lead_s`` after reset).
        clock_a, clock_b: each board's :class:`~heraldry.model.twonode.Clock` (ppm, drift,
            steps, ``start_s``: a start skew added to ``lead_s``).
        lead_s: local time of true time 0 (see the module's docstring).
        channel_a, channel_b: the input each arm drives.
        dead_cycles: see :func:`board_pins`.
        binary: a virtual board executable (:func:`heraldry.sim.twin.build_twin`; default the
            4-channel board of ``heraldry.open("sim")``, built on first use).
        folder: where the pins files go (default a temporary folder, removed by :meth:`close`).
        reference_hz: with it, both boards also see one reference (a PPS, a divided 10 MHz) on
            ``reference_channel``: an edge at every true time ``k / reference_hz``, read on
            each board's clock (the board needs :func:`build_gates_twin` and
            ``Settings(references=[reference_channel])`` to stream them as markers).
        source: further keywords of :func:`~heraldry.model.twonode.two_node_source`
            (``pair_rate_hz``, ``efficiency_a``, ``dark_rate_a_hz``, ``fiber_delay_s``,
            ``jitter_s``, ``seed``, ...); the bins are the board's clock period.

    Members: ``source`` (the :class:`~heraldry.model.twonode.TwoNode`, its ``a``/``b`` the
    boards' device bins), ``keep_a``, ``keep_b`` (masks of those driven, :func:`board_pins`),
    ``bins_a``, ``bins_b`` (the device bins driven), ``markers_true``, ``marker_bins_a``,
    ``marker_bins_b`` (the reference's edges: true times, each board's device bins), ``pins_a``,
    ``pins_b`` (the pins files), ``clock_hz``, ``twins`` and, after :meth:`open` (which
    ``with`` calls), ``taggers``: a :class:`heraldry.Tagger` per board (names ``"sim-a"``,
    ``"sim-b"``), stopped with their boards by :meth:`close`.
    """

    def __init__(self, duration_s, *, clock_a=None, clock_b=None, lead_s=0.03, channel_a=0,
                 channel_b=0, dead_cycles=2, binary=None, folder=None, reference_hz=None,
                 reference_channel=1, **source):
        from ..host.tagger import SIM_BOARD
        from ..model.twonode import Clock, two_node_source
        if not lead_s >= 0:
            raise ValueError(f"lead_s must be >= 0, not {lead_s}")
        self.clock_hz = SIM_BOARD["clock_hz"]
        bin_s = 1.0 / self.clock_hz
        clock_a = Clock() if clock_a is None else clock_a
        clock_b = Clock() if clock_b is None else clock_b
        self.clock_a = dataclasses.replace(clock_a, start_s=clock_a.start_s + lead_s)
        self.clock_b = dataclasses.replace(clock_b, start_s=clock_b.start_s + lead_s)
        self.lead_s = lead_s
        self.source = two_node_source(duration_s, clock_a=self.clock_a, clock_b=self.clock_b,
                                      bin_a_s=bin_s, bin_b_s=bin_s, **source)
        edges_a, self.keep_a = board_pins(self.source.a, channel_a, dead_cycles=dead_cycles)
        edges_b, self.keep_b = board_pins(self.source.b, channel_b, dead_cycles=dead_cycles)
        self.bins_a, self.bins_b = self.source.a[self.keep_a], self.source.b[self.keep_b]
        self.reference_hz, self.reference_channel = reference_hz, reference_channel
        self.markers_true = np.zeros(0)
        self.marker_bins_a = self.marker_bins_b = np.zeros(0, np.int64)
        if reference_hz is not None:
            if not reference_hz > 0 or reference_channel in (channel_a, channel_b):
                raise ValueError("reference_hz must be > 0, on a channel of its own")
            # One reference for both boards (a shared 10 MHz divided, a PPS): edges at true
            # times k / reference_hz, each board reading them on its own clock.
            self.markers_true = np.arange(1, int(duration_s * reference_hz) + 1) / reference_hz
            marks = []
            for clock in (self.clock_a, self.clock_b):
                bins = np.floor(clock.local(self.markers_true) * self.clock_hz).astype(np.int64)
                edges, keep = board_pins(bins, reference_channel, dead_cycles=dead_cycles)
                marks.append((edges, bins[keep]))
            (ref_a, self.marker_bins_a), (ref_b, self.marker_bins_b) = marks
            edges_a = _merge_edges(edges_a, ref_a)
            edges_b = _merge_edges(edges_b, ref_b)
        self._tmp = None
        if folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="heraldry-two-node-")
            folder = self._tmp.name
        folder = Path(folder)
        self.pins_a = _write_edges(folder / "board-a.pins", edges_a)
        self.pins_b = _write_edges(folder / "board-b.pins", edges_b)
        self.channel_a, self.channel_b = channel_a, channel_b
        self._binary = binary
        self.twins = ()
        self.taggers = ()

    def open(self, timeout=3.0):
        """Start both virtual boards and identify them; returns ``(tagger_a, tagger_b)``.
        Raises what :func:`heraldry.open` raises for a virtual board."""
        from ..host.driver import Device
        from ..host.tagger import SIM_BOARD, Tagger
        from ..host.transport import SerialTransport
        from .twin import Twin, build_twin
        binary = self._binary or build_twin(SIM_BOARD["channels"], SIM_BOARD["rules"],
                                            SIM_BOARD["clock_hz"], SIM_BOARD["baud"])
        try:
            for name, pins in (("sim-a", self.pins_a), ("sim-b", self.pins_b)):
                twin = Twin(binary, pins=pins)
                twin.start()
                self.twins += (twin,)
                device = Device(SerialTransport(twin.port, twin.baud), timeout=timeout,
                                retries=3)
                try:
                    device.identify()
                except BaseException:
                    device.close()
                    raise
                self.taggers += (Tagger(device, name=name, baud=twin.baud, twin=twin),)
        except BaseException:
            self.close()
            raise
        return self.taggers

    def close(self):
        """Close the taggers, stop the boards, remove a temporary folder. Idempotent."""
        taggers, twins = self.taggers, self.twins
        self.taggers, self.twins = (), ()
        for tagger in taggers:
            tagger.close()
        for twin in twins:
            twin.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()
