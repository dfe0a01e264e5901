"""Sync and gates end to end on the Verilated virtual board built with gates (issue 13 item 2's
done-when): the host configures --sync/--gate through heraldry.Settings; the board's BSM test
source gives dark counts only (no photon events) on D0..D2, channel 3 reads its pin, driven
from a pins FIFO with a sync pulse every 40 cycles for as long as the board runs; the false
heralds of two rules (one exact with a veto, one early), counted by the board, match the
reference model's prediction from the dark-count probability and the gates within 3 sigma."""

import contextlib
import os
import tempfile
import threading

import numpy as np
import pytest

from heraldry import model

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def gates_board_with_sync(period_cycles, sync_channel=3):
    """A :class:`Tagger` on the Verilated virtual board built with gates, its ``sync_channel``
    pin driven from a pins FIFO with a one-cycle pulse every ``period_cycles`` for as long as the
    board runs."""
    from heraldry.host.driver import Device
    from heraldry.host.tagger import Tagger
    from heraldry.host.transport import SerialTransport
    from heraldry.sim.twin import Twin
    from heraldry.sim.twonode import build_gates_twin

    folder = tempfile.TemporaryDirectory()
    fifo = os.path.join(folder.name, "pins")
    os.mkfifo(fifo)
    stop = threading.Event()
    chunk = 1000 * period_cycles

    def sync_source():
        try:
            with open(fifo, "w") as f:
                f.write("# cycle channel level\n")
                cycle = 0
                while not stop.is_set():
                    f.write("".join(f"{c} {sync_channel} 1\n{c + 1} {sync_channel} 0\n"
                                    for c in range(cycle, cycle + chunk, period_cycles)))
                    cycle += chunk
        except (BrokenPipeError, OSError):
            pass

    writer = threading.Thread(target=sync_source, daemon=True)
    writer.start()
    twin = Twin(build_gates_twin(), pins=fifo)
    twin.start()
    tagger = None
    try:
        device = Device(SerialTransport(twin.port, twin.baud), timeout=3.0, retries=3)
        device.identify()
        tagger = Tagger(device, name="sim-gates", baud=twin.baud, twin=twin)
        yield tagger
    finally:
        stop.set()
        if tagger is not None:
            tagger.close()
        twin.stop()
        folder.cleanup()


def test_dark_heralds_with_gates_on_the_virtual_board():
    from heraldry.host.tagger import Settings, settings_to_acquisition

    period_cycles, dark_hz = 40, 3e6
    settings = Settings(
        window_ns=40, test_signal="bsm", period_ns=period_cycles * 10.0,
        bsm_event_probability=0.0, dark_rate_hz=dark_hz, seed=2026, sync=3, pin_channels=(3,),
        gates_ns={c: (40.0, 240.0) for c in range(3)},     # offsets 4 .. 27 of 40 cycles
        heralds=("D0&D1&!D2,exact", "D1&D2"),
        stream={c: "none" for c in range(3)})               # counters only: spare the link
    with gates_board_with_sync(period_cycles) as tagger:
        acq, _ = settings_to_acquisition(settings, tagger.identity)
        with tagger.run(settings, duration=0.004) as run:
            for _ in run:
                pass
        counts = run.counters
    attempts = counts["singles"][3]
    # (the run gate is open a little longer than the duration: start and stop commands)
    assert 0.004 * 1e8 / period_cycles <= attempts < 1.1 * 0.004 * 1e8 / period_cycles
    q = acq.dark_threshold() / 2**32
    predicted = attempts * model.expected_heralds_per_attempt(
        [q] * 3 + [0], acq.model_settings(), period_cycles)
    got = np.array(counts["heralds"][:2])
    print(f"false heralds {got.tolist()} predicted {predicted.round(1).tolist()} over "
          f"{attempts} attempts; gated out {counts['gated_out'][:3]}")
    assert np.all(np.abs(got - predicted) < 3 * np.sqrt(predicted))
    duty = model.gate_duty((4, 24), period_cycles)
    kept = np.array(counts["singles"][:3])
    total = kept + np.array(counts["gated_out"][:3])
    assert np.all(np.abs(kept - duty * total) < 3 * np.sqrt(duty * (1 - duty) * total))
