"""The stream-filter figure of ``bench/bench_stream_filter.py`` at a smaller scale, in the fast
tier: the core in the Amaranth simulator (no link) runs the pairs test signal with dark counts
on every channel, channels 0 and 1 ``coincident``, 2 and 3 ``none``; every coincident tag
arrives (no loss of any kind), the tags equal the reference model's for the same test signal
(reproduced bit-exactly by ``heraldry.model.testsignal``), and the bench's own model check
(tags from the pattern counters, W = 1 bin) agrees."""

import numpy as np

from bench.bench_stream_filter import expected_tags
from heraldry import model
from heraldry.host.config import Acquisition
from heraldry.host.core_records import CoreRecordDecoder
from heraldry.model import testsignal as tsmodel
from heraldry.protocol import Kind
from heraldry.sim.harness import CoreSimulation

PHY_LATENCY = 1         # GenericPHY.latency (checked in tests/test_core_sim.py)


def test_coincident_tags_all_arrive_and_match_the_model():
    cycles = 4000
    modes = ["coincident", "coincident", "none", "none"]
    # Scaled up from the bench (4 x 10^6 darks/s and 10^4 pairs/s at 100 MHz) so that a few
    # thousand cycles hold enough of each: 2 * 10^6 darks/s per channel, 2 * 10^6 pairs/s.
    acq = Acquisition(channels=4, window_bins=1, test_signal="pairs", pair_rate_hz=2e6,
                      efficiency=1.0, dark_rate_hz=2e6, herald_masks=[0b0011], seed=9,
                      stream=modes)
    ts = tsmodel.TestSignalSettings(
        seed=9, period=0, pair_threshold=acq.pair_threshold(),
        eta_a=acq.efficiency_threshold(), eta_b=acq.efficiency_threshold(), pair_delay=0,
        dark=(acq.dark_threshold(),) * 4,
        sources=("pair_a", "pair_b", "periodic", "periodic"))   # period 0: darks only
    sim = CoreSimulation(channels=4, rules=2)
    run = sim.acquire(acq.gateware_config(), cycles)
    ks = tsmodel.generate(ts, run.start_time - run.test_origin + cycles + 10)
    rise = [k + run.test_origin - PHY_LATENCY for k in ks]
    fall = [np.zeros(0, np.int64)] * 4
    start = run.start_time - PHY_LATENCY
    expected = model.simulate(rise, fall, acq.model_settings(), gate=[(start, start + cycles)])

    block = CoreRecordDecoder().decode(run.records)
    tags = block.events[block.events["kind"] == Kind.TAG.value]
    got = np.zeros(len(tags), model.TAG_DTYPE)
    got["time"], got["channel"] = tags["time_ps"] // 10_000, tags["channel"]
    np.testing.assert_array_equal(got, expected.tags)
    assert not block.lost                                   # no loss record of any cause
    cmap = sim.map
    counters = {name: run.counters[list(cmap.range(name))].tolist()
                for name in ("singles", "patterns", "filtered", "filter_dropped",
                             "merger_dropped", "delay_dropped")}
    assert counters["singles"] == expected.singles.tolist()
    assert counters["filtered"] == expected.filtered.tolist()
    assert counters["filter_dropped"] == [0] * 4 and counters["merger_dropped"] == [0] * 4
    # The bench's check: tags of a coincident channel = its windows with another channel.
    patterns = {p: v for p, v in enumerate(counters["patterns"], 1)}
    per_channel = np.bincount(got["channel"].astype(int), minlength=4).tolist()
    assert per_channel == expected_tags(patterns, dict(enumerate(modes)), 4)
    # The stimulus did what the figure needs: most events are filtered, pairs get through.
    assert sum(counters["filtered"]) > 2 * len(got) and per_channel[0] > 50
    assert counters["patterns"][0b0011 - 1] > 40
