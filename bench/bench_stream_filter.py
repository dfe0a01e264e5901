"""Stream filters on a link-limited board (issue 13 item 6; docs/semantics.md, "Stream filters").

The Verilated virtual board (``sim/twin.py``) built with a 3 Mbaud UART, like both real boards,
runs its pairs test signal: 1 * 10^6 dark counts/s on each of the 4 channels, 10^4 pairs/s into
channels 0 and 1 (efficiency 1: every pair a two-fold), window 1 bin (10 ns). Three stream
settings, the same seed and duration:

* ``all``: every event streamed (the link cannot carry it: losses, counted);
* ``pair``: channels 0 and 1 ``coincident``, 2 and 3 ``none`` (counted only);
* ``coincident``: all four channels ``coincident``.

For each: counted singles/s, tags/s received, lost (every dropped item: the summary's
``dropped``, which the in-band loss records and the drop counters agree on), link bytes per device
second (every byte the host read, the run's drain and counter reads included, so it can exceed
the link's 300 kB/s of 3 Mbaud 8N1 for a run of 0.05 s) and that as a fraction of 300 kB/s.
The model's check (W = 1 bin: a window holds one event per channel): a ``coincident`` channel
streams exactly the events of the windows of two or more channels, so its tags must equal the
sum of the hardware pattern counters over every pattern that holds it and another channel;
``none`` streams nothing. ``stream_zero_loss_<setting>`` is 1 when nothing was lost anywhere
(filter, merger, link, host) and every check holds.
"""

import time

DURATION_S = 0.05
BAUD = 3_000_000
SETTINGS = {
    "all": {},
    "pair": {0: "coincident", 1: "coincident", 2: "none", 3: "none"},
    "coincident": {c: "coincident" for c in range(4)},
}


def expected_tags(patterns, modes, channels):
    """Per channel, the tags the model streams given the closed windows' pattern counts (one
    event per channel per window, W = 1 bin)."""
    out = []
    for c in range(channels):
        mode = modes.get(c, "all")
        if mode == "none":
            out.append(0)
            continue
        out.append(sum(count for p, count in patterns.items()
                       if int(p) >> c & 1 and (mode == "all" or bin(int(p)).count("1") >= 2)))
    return out


def measure(tagger, name, duration=DURATION_S):
    import heraldry
    modes = SETTINGS[name]
    settings = heraldry.Settings(window_ns=10, test_signal="pairs", pair_rate_hz=1e4,
                                 efficiency=1.0, dark_rate_hz=1e6, stream=modes, seed=5)
    start = time.perf_counter()
    with tagger.run(settings, duration, keep=True) as run:
        for _ in run:
            pass
    from heraldry.host.acquire import summarise
    summary = summarise(run.result, board="sim")
    wall = time.perf_counter() - start
    n = summary["channels"]
    seconds = summary["device_seconds"] or summary["duration_s"]
    want = expected_tags(summary["patterns"], modes, n)
    # Every lost item (merger, filter, delay lines, link, host); the loss records say the same
    # (the summary's checks compare them with the drop counters).
    lost = summary["dropped"]
    checks = dict(summary["checks"])
    if name != "all":
        checks["tags_equal_model_from_patterns"] = summary["tags_per_channel"] == want
        checks["streamed_counter_equals_model"] = summary["streamed_per_channel"] == want
    return {
        "singles_per_s": [round(s / seconds) for s in summary["singles"]],
        "streamed_per_s": [round(s / seconds) for s in summary["streamed_per_channel"]],
        "tags_per_s": round(summary["tags"] / seconds),
        "filtered": summary["filtered"],
        "lost": lost,
        "link_bytes_per_s": round(summary["link_bytes"] / seconds),
        "link_load": round(summary["link_bytes"] / seconds / (BAUD / 10), 3),
        "checks": checks,
        "ok": lost == 0 and all(checks.values()),
        "wall_s": round(wall, 1),
    }


def run():
    import heraldry
    figures = {}
    with heraldry.open("sim", baud=BAUD) as tagger:
        for name in SETTINGS:
            m = measure(tagger, name)
            print(f"   {name:10s} counted {sum(m['singles_per_s']):8d}/s  streamed "
                  f"{m['tags_per_s']:7d} tags/s  link {m['link_bytes_per_s']:7d} B/s "
                  f"({m['link_load']:.0%} of 3 Mbaud)  lost {m['lost']:7d}  checks "
                  f"{'ok' if all(m['checks'].values()) else m['checks']}  ({m['wall_s']} s)",
                  flush=True)
            figures[f"stream_tags_per_s_{name}"] = m["tags_per_s"]
            figures[f"stream_counted_per_s_{name}"] = sum(m["singles_per_s"])
            figures[f"stream_link_load_{name}"] = m["link_load"]
            figures[f"stream_lost_{name}"] = m["lost"]
            figures[f"stream_zero_loss_{name}"] = int(m["ok"])
    return figures


if __name__ == "__main__":
    print(run())
