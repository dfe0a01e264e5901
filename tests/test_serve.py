"""``heraldry serve`` on the Verilated virtual board: ZeroMQ events and rates, control, /metrics,
a stalled subscriber, the refusals, and the Grafana dashboard and alert rules against /metrics.

One server runs for the module (a subprocess, free loopback ports); the tests run in file order
and the control test, which reconfigures and restarts the board, comes after the stream tests.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

zmq = pytest.importorskip("zmq")

from heraldry.host.events import EVENT_DTYPE                          # noqa: E402
from heraldry.host.serve import (DROP_CAUSES, METRIC_NAMES, SequenceTracker,  # noqa: E402
                                 decode_events, free_port, request)
from heraldry import model                                              # noqa: E402
from heraldry.host.config import Acquisition                            # noqa: E402
from heraldry.protocol import Kind                                      # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAIR_RATE, EFFICIENCY, DARK_RATE = 1e5, 0.5, 1e3
CLOCK_HZ = 100e6
HERALD_FLOOR = 1000.0


def _start(*options):
    return subprocess.Popen(
        [sys.executable, "-m", "heraldry.host.cli", "serve", "--board", "sim", *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def server():
    ports = [free_port() for _ in range(3)]
    proc = _start("--pub-port", str(ports[0]), "--control-port", str(ports[1]),
                  "--metrics-port", str(ports[2]), "--quiet", "--rates-hz", "5",
                  "--hwm", "4", "--sndbuf", "4096", "--herald", "0b0011",
                  "--status-interval", "0.002",         # the virtual board runs slowly
                  "--herald-floor", str(HERALD_FLOOR), "--pair-rate", str(PAIR_RATE),
                  "--efficiency", str(EFFICIENCY), "--dark-rate", str(DARK_RATE), "--seed", "7")
    line = proc.stdout.readline()      # the twin's first build (cached) happens before this
    if not line:
        proc.wait(30)
        pytest.fail(f"serve did not start: {proc.stderr.read()}")
    endpoints = json.loads(line)
    assert endpoints == {"pub": f"tcp://127.0.0.1:{ports[0]}",
                         "control": f"tcp://127.0.0.1:{ports[1]}",
                         "metrics": f"http://127.0.0.1:{ports[2]}/metrics"}
    context = zmq.Context()
    yield proc, endpoints, context
    context.destroy(linger=0)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(30)
    err = proc.stderr.read()
    assert code == 0, err
    assert "error" not in err


def _sub(context, endpoint, topic, **options):
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(endpoint)
    sock.subscribe(topic)
    return sock


def _req(context, endpoint):
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 20_000)
    sock.connect(endpoint)
    return sock


def _collect(sock, seconds, until=None):
    """Every message arriving within ``seconds`` (or until ``until(messages)`` holds)."""
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sock.poll(100):
            out.append(sock.recv_multipart())
            if until is not None and until(out):
                break
    return out


def _scrape(endpoints):
    with urllib.request.urlopen(endpoints["metrics"], timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return text, samples


def _rates(sock, count):
    msgs = _collect(sock, 20, until=lambda m: len(m) >= count)
    assert len(msgs) >= count, "rates messages stopped"
    return [json.loads(m[1]) for m in msgs]


def test_events_stream_without_gaps_and_decodes(server):
    """A fast subscriber sees consecutive sequence numbers; the blocks decode to EVENT_DTYPE; the
    pair channels carry the test signal's rate and its pairs (independent of the server)."""
    proc, endpoints, context = server
    sub = _sub(context, endpoints["pub"], b"events")
    msgs = _collect(sub, 30.0, until=lambda m: len(m) >= 15)
    sub.close()
    assert len(msgs) >= 15
    tracker = SequenceTracker()
    parts = []
    for frames in msgs:
        header, events = decode_events(frames)
        assert events.dtype == EVENT_DTYPE and header["count"] == len(events) > 0
        tracker.feed(header["seq"])
        parts.append(events)
    assert tracker.missed == 0 and tracker.received == len(msgs)
    events = np.concatenate(parts)
    assert set(np.unique(events["kind"])) <= {Kind.TAG.value, Kind.HERALD.value}
    tags = events[events["kind"] == Kind.TAG.value]
    assert np.all(np.diff(tags["time_ps"]) >= 0)
    span_s = (tags["time_ps"][-1] - tags["time_ps"][0]) * 1e-12
    per_channel = np.bincount(tags["channel"], minlength=4) / span_s
    expected_arm = PAIR_RATE * EFFICIENCY + DARK_RATE
    for ch in (0, 1):
        assert abs(per_channel[ch] / expected_arm - 1) < 0.25, per_channel
    for ch in (2, 3):
        assert per_channel[ch] < 10 * DARK_RATE
    # Pairs: about EFFICIENCY of channel 0's tags have a channel-1 tag in the same bin.
    t0 = tags["time_ps"][tags["channel"] == 0]
    t1 = tags["time_ps"][tags["channel"] == 1]
    paired = np.isin(t0, t1).mean()
    assert abs(paired - EFFICIENCY) < 0.12, paired
    # Rule 0 (channels 0 and 1): the herald records are the reference model's heralds of the
    # streamed tags (away from the ends of the received stretch, where windows are cut).
    heralds = events[events["kind"] == Kind.HERALD.value]
    assert len(heralds) > 10 and np.all(heralds["channel"] == 0)
    bin_ps = round(1e12 / CLOCK_HZ)
    model_tags = np.zeros(len(tags), model.TAG_DTYPE)
    model_tags["time"] = tags["time_ps"] // bin_ps
    model_tags["channel"] = tags["channel"]
    settings = Acquisition(window_bins=1, herald_masks=[0b0011]).model_settings()
    expected = model.counts_from_tags(model_tags, settings).heralds["time"]
    lo, hi = model_tags["time"][0] + 1, model_tags["time"][-1] - 1
    got = heralds["time_ps"] // bin_ps
    assert np.array_equal(got[(got >= lo) & (got <= hi)], expected[(expected >= lo)
                                                                    & (expected <= hi)])


def test_rates_topic_and_metrics_agree_with_the_stream(server):
    """Rates messages come at about 5 Hz with increasing sequence numbers; /metrics says the
    same: pair channels and pattern 0b0011 > 0, herald rate > 0, nothing dropped, link up."""
    proc, endpoints, context = server
    sub = _sub(context, endpoints["pub"], b"rates")
    # Rates follow the counter snapshots: zero until the run's first (on a loaded machine the
    # virtual board may not have run 2 ms of device time yet).
    _collect(sub, 20, until=lambda m: json.loads(m[-1][1])["channel_rates_hz"][0] > 0)
    t = time.monotonic()
    rates = _rates(sub, 8)
    elapsed = time.monotonic() - t
    sub.close()
    tracker = SequenceTracker()
    for r in rates:
        tracker.feed(r["seq"])
    assert tracker.missed == 0
    assert len(rates) / elapsed < 10           # 5 Hz (the first may come at once)
    times = [r["device_time_s"] for r in rates]
    assert all(b > a for a, b in zip(times, times[1:]))
    last = rates[-1]
    assert last["running"] and last["link_up"]
    assert set(last["dropped"]) == set(DROP_CAUSES) and not any(last["dropped"].values())
    assert last["decode_errors"] == 0 and not any(last["publish_refused"].values())
    expected_arm = PAIR_RATE * EFFICIENCY + DARK_RATE
    mean = np.mean([r["channel_rates_hz"] for r in rates], axis=0)
    assert abs(mean[0] / expected_arm - 1) < 0.3 and abs(mean[1] / expected_arm - 1) < 0.3
    pairs = np.mean([r["pattern_rates_hz"]["3"] for r in rates])
    # Windows of pattern 0b0011: pairs detected in both arms, plus rare accidentals.
    assert abs(pairs / (PAIR_RATE * EFFICIENCY ** 2) - 1) < 0.3
    # Heralds of rule 0b0011 are those windows (and the rare 3- and 4-channel ones).
    assert abs(np.mean([r["herald_rate_hz"] for r in rates]) / pairs - 1) < 0.2
    text, before = _scrape(endpoints)
    for name in METRIC_NAMES:
        if name == "heraldry_loopback_latency_seconds":
            continue        # samples only with --loopback (its own test)
        assert re.search(rf"^{name}(_bucket|_count|_sum)?[{{ ]", text, re.M), name
    deadline = time.monotonic() + 30
    while True:     # counts over at least 20 ms of device time
        time.sleep(0.2)
        text, samples = _scrape(endpoints)
        seconds = samples["heraldry_device_time_seconds"] - before["heraldry_device_time_seconds"]
        if seconds >= 0.02:
            break
        assert time.monotonic() < deadline, "device time stands still"

    def rate(key):
        increase = samples[key] - before[key]
        assert increase >= 0, key          # counters
        return increase / seconds
    for ch in (0, 1):
        assert abs(rate(f'heraldry_detections_total{{channel="{ch}"}}') / expected_arm - 1) < 0.5
    coincidences = rate('heraldry_coincidences_total{pattern="3"}')
    assert abs(coincidences / (PAIR_RATE * EFFICIENCY ** 2) - 1) < 0.5
    assert 'heraldry_coincidences_total{pattern="1"}' not in samples   # one channel
    assert abs(rate('heraldry_heralds_total{rule="0"}') / coincidences - 1) < 0.3
    assert samples["heraldry_herald_rate_floor_hz"] == HERALD_FLOOR
    # The default window: one clock cycle.
    assert samples["heraldry_coincidence_window_seconds"] == pytest.approx(1 / CLOCK_HZ)
    assert samples["heraldry_link_up_seconds_total"] > 0
    assert samples["heraldry_link_down_seconds_total"] == 0
    # Herald records were published, each timed; none took 5 s on the way.
    name = "heraldry_herald_publish_latency_seconds"
    assert samples[f"{name}_count"] > 0
    assert samples[f'{name}_bucket{{le="5.0"}}'] == samples[f"{name}_count"]
    assert samples[f'{name}_bucket{{le="+Inf"}}'] == samples[f"{name}_count"]
    # The virtual board's generic PHY: the pin edge up to 5 clock edges before the herald.
    assert samples["heraldry_herald_latency_seconds"] == pytest.approx(5 / CLOCK_HZ)
    for cause in DROP_CAUSES:
        assert samples[f'heraldry_events_dropped_total{{cause="{cause}"}}'] == 0
    assert samples["heraldry_decode_errors_total"] == 0
    assert samples["heraldry_link_up"] == 1 and samples["heraldry_running"] == 1
    assert samples["heraldry_uptime_seconds"] > 0
    assert samples['heraldry_published_messages_total{topic="events"}'] >= 10


def test_stalled_subscriber_does_not_stop_the_others(server):
    """A subscriber that never reads (tiny buffers) loses messages, which it counts from the
    sequence numbers, and the records in them, which it counts exactly from ``first`` and
    ``count``; meanwhile a fast one loses nothing, the server drops no event and the board's
    device time keeps running (rates messages keep coming, device time increasing)."""
    proc, endpoints, context = server
    fast = _sub(context, endpoints["pub"], b"events")
    rates = _sub(context, endpoints["pub"], b"rates")
    fast_msgs = _collect(fast, 30.0, until=lambda m: len(m) >= 1)     # fast is connected
    before = _rates(rates, 1)[-1]
    stalled = _sub(context, endpoints["pub"], b"events", RCVHWM=1, RCVBUF=2048)
    # The stalled one holds about 10 messages (high-water marks 4 + 1, and two small kernel
    # buffers): 30 messages overflow it whatever the pace of the virtual board.
    fast_msgs += _collect(fast, 30.0, until=lambda m: len(m) >= 30)
    during = _rates(rates, 2)
    stalled_msgs = _collect(stalled, 0.5)
    # Catch the fast one up to everything the stalled one saw (it was queued meanwhile; on a
    # loaded machine half a second of reading may not be enough, so read until it is there).
    stalled_last = max((decode_events(f)[0]["seq"] for f in stalled_msgs), default=-1)
    fast_msgs += _collect(fast, 20.0, until=lambda m: decode_events(m[-1])[0]["seq"]
                          >= stalled_last)
    stalled.close()
    fast.close()
    rates.close()
    fast_seq, stalled_seq = SequenceTracker(), SequenceTracker()
    counts = {}
    for frames in fast_msgs:
        header, events = decode_events(frames)
        fast_seq.feed(header["seq"], header["first"], header["count"])
        counts[header["seq"]] = len(events)
    for frames in stalled_msgs:
        header, _ = decode_events(frames)
        stalled_seq.feed(header["seq"], header["first"], header["count"])
    assert fast_seq.missed == 0 and fast_seq.missed_events == 0 and fast_seq.received >= 30
    assert stalled_seq.received >= 1 and stalled_seq.missed > 0
    # The stalled subscriber's range lies within the fast one's, which received everything.
    assert fast_seq.first <= stalled_seq.first and stalled_seq.last <= fast_seq.last
    assert stalled_seq.received + stalled_seq.missed == stalled_seq.last - stalled_seq.first + 1
    # The records it missed are exactly those of the messages it missed (the fast one has them).
    missed = [seq for first, n in stalled_seq.gaps for seq in range(first, first + n)]
    assert stalled_seq.missed_events == sum(counts[seq] for seq in missed) > 0
    # The board kept running while the subscriber was stalled, and the server dropped nothing.
    times = [before["device_time_s"]] + [r["device_time_s"] for r in during]
    assert all(b > a for a, b in zip(times, times[1:]))
    assert during[-1]["events_messages"] > before["events_messages"]
    assert not any(during[-1]["dropped"].values()) and not any(
        during[-1]["publish_refused"].values())
    _, samples = _scrape(endpoints)
    for cause in DROP_CAUSES:
        assert samples[f'heraldry_events_dropped_total{{cause="{cause}"}}'] == 0


def test_control_one_client_at_a_time(server):
    """One client holds control; another is refused but reads status; stop, configure, start
    take effect (seen in status, rates and the stream); release lets the other take over."""
    proc, endpoints, context = server
    a, b = _req(context, endpoints["control"]), _req(context, endpoints["control"])
    assert request(a, "status")["running"] is True
    got = request(a, "acquire_control")
    assert got["ok"] and got["lease"]
    lease = got["lease"]
    refused = request(b, "acquire_control")
    assert not refused["ok"] and "held" in refused["error"]
    status = request(b, "status")
    assert status["ok"] and status["control_held"] and status["board"]["channels"] == 4
    assert not request(b, "stop")["ok"]
    assert not request(b, "stop", lease="0" * 32)["ok"]
    assert not request(a, "launch", lease=lease)["ok"]
    assert request(a, "stop", lease=lease) == {"ok": True, "running": False}
    assert request(b, "status")["running"] is False
    rates = _sub(context, endpoints["pub"], b"rates")
    stopped = _rates(rates, 3)[-1]
    rates.close()
    assert not stopped["running"] and stopped["channel_rates_hz"] == [0.0] * 4
    bad = request(a, "configure", lease=lease, config={"window": 0})
    assert not bad["ok"] and "--window" in bad["error"]
    assert not request(a, "configure", lease=lease, config={"colour": 1})["ok"]
    # Rule 0 now heralds channels 0 and 2: channel 2 only has dark counts.
    got = request(a, "configure", lease=lease, config={"herald": ["0b0101"], "window": 20})
    assert got["ok"] and got["running"] is False
    assert request(b, "status")["config"]["herald"] == ["0b0101"]
    assert request(a, "start", lease=lease) == {"ok": True, "running": True}
    # The rates read 0 until the new run's first counter snapshot (--status-interval of
    # device time: the virtual board runs tens of times slower than real time).
    rates = _sub(context, endpoints["pub"], b"rates")
    msgs = _collect(rates, 20, until=lambda m: json.loads(m[-1][1])["channel_rates_hz"][0] > 0)
    rates.close()
    running = json.loads(msgs[-1][1])
    assert running["running"] and running["channel_rates_hz"][0] > 0
    assert running["herald_rate_hz"] < running["pattern_rates_hz"]["3"] / 10
    assert request(a, "release_control", lease=lease) == {"ok": True}
    got = request(b, "acquire_control")
    assert got["ok"] and got["lease"] != lease
    assert request(b, "release_control", lease=got["lease"]) == {"ok": True}
    a.close()
    b.close()


def test_docs_examples_run_against_a_server(tmp_path):
    """docs/serve.md's two Python snippets as written, each a script of its own, against a
    server on the virtual board at the snippets' default ports' places (the subscriber's endless
    loop bounded to 3 messages): the subscriber misses nothing, and the configure it shows takes
    effect (status reads the new window)."""
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "serve.md").read_text(), re.S)
    assert len(blocks) == 2
    ports = [free_port() for _ in range(3)]
    proc = _start("--pub-port", str(ports[0]), "--control-port", str(ports[1]),
                  "--metrics-port", str(ports[2]), "--quiet", "--rates-hz", "5",
                  "--status-interval", "0.002")
    try:
        assert proc.stdout.readline(), proc.stderr.read()
        subscriber = blocks[0].replace("5560", str(ports[0])).replace("while True:",
                                                                       "for _ in range(3):")
        subscriber += "\nassert seen.received == 3 and seen.missed == 0 and seen.events > 0\n"
        control = blocks[1].replace("5561", str(ports[1]))
        assert "for _ in range(3):" in subscriber and str(ports[1]) in control
        for name, source in (("subscriber", subscriber), ("control", control)):
            script = tmp_path / f"{name}.py"
            script.write_text(source)
            done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stderr
        context = zmq.Context()
        req = _req(context, f"tcp://127.0.0.1:{ports[1]}")
        status = request(req, "status")
        assert status["config"]["window"] == 20 and not status["control_held"]
        context.destroy(linger=0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_non_loopback_bind_needs_a_token():
    proc = _start("--bind", "0.0.0.0")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("heraldry: error: --bind 0.0.0.0")
    assert "--token" in err


def test_a_status_interval_the_link_cannot_carry_is_refused_in_one_line():
    """The virtual board's 44 counter snapshot records (4 channels, 2 rules) of 9 bytes take
    0.33 ms at 12 Mbaud: an interval under two of them is a bad option (exit 2, one line naming
    it), nothing served."""
    from heraldry.host.tagger import sim_identity
    counters = sim_identity().counters
    assert counters == 44
    proc = _start("--status-interval", "0.0004", "--pub-port", "0", "--control-port", "0",
                  "--metrics-port", "0")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and out == "", err
    assert err.count("\n") == 1
    assert err.startswith(f"heraldry: error: --status-interval 0.0004 s: a snapshot of "
                          f"{counters} counters takes 0.33 ms at 12000000 baud")


def test_a_port_that_is_no_serial_device_is_refused_in_one_line():
    """The board is opened like every command opens one (``heraldry.open``): a missing path, and
    a path that is no serial device, are bad options (exit 2, one line), nothing served."""
    for path, fragment in (("/dev/no-such-tty", "no such serial device"),
                           ("/etc/hostname", "not a serial device")):
        proc = subprocess.Popen(
            [sys.executable, "-m", "heraldry.host.cli", "serve", "--board", path],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and out == "", err
        assert err.count("\n") == 1 and err.startswith(f"heraldry: error: --board {path}: ")
        assert fragment in err


# -- Grafana dashboard and alert rules -----------------------------------------------------

def _yaml_subset(text):
    """A parser for the YAML subset of docs/prometheus-alerts.yml: block mappings and sequences
    by indentation, ``key: value`` scalars (plain, quoted, or ``|`` block text), no flow
    collections, anchors or tags. Enough to prove the file's structure without PyYAML."""
    lines = [(len(raw) - len(raw.lstrip(" ")), raw.strip(), raw)
             for raw in text.splitlines() if raw.strip() and not raw.lstrip().startswith("#")]
    pos = 0

    def scalar(value):
        if value[:1] in "\"'":
            assert value[-1] == value[0], value
            return value[1:-1]
        return value

    def block(indent):
        nonlocal pos
        if lines[pos][1].startswith("- "):
            items = []
            while pos < len(lines) and lines[pos][0] == indent and lines[pos][1].startswith("- "):
                ind, content, raw = lines[pos]
                # Re-read "- key: value" as a mapping indented past the dash.
                lines[pos] = (ind + 2, content[2:], raw)
                items.append(block(ind + 2))
            return items
        out = {}
        while pos < len(lines) and lines[pos][0] == indent and not lines[pos][1].startswith("- "):
            key, sep, value = lines[pos][1].partition(":")
            assert sep, f"not a key: value line: {lines[pos][2]!r}"
            value = value.strip()
            pos += 1
            if value == "|":
                body = []
                while pos < len(lines) and lines[pos][0] > indent:
                    body.append(lines[pos][1])
                    pos += 1
                out[key] = "\n".join(body)
            elif value:
                out[key] = scalar(value)
            else:
                assert pos < len(lines) and lines[pos][0] >= indent, key
                out[key] = block(lines[pos][0])
        return out

    result = block(lines[0][0])
    assert pos == len(lines), f"unparsed from {lines[pos][2]!r}"
    return result


def test_yaml_subset_parser():
    doc = _yaml_subset("a:\n  - b: 1\n    c: 'x y'\n  - b: 2\n    d: |\n      p > 0\n"
                       "# comment\ne: f\n")
    assert doc == {"a": [{"b": "1", "c": "x y"}, {"b": "2", "d": "p > 0"}], "e": "f"}


def _metric_names(expression):
    return set(re.findall(r"\bheraldry_[a-z_]+\b", expression))


def test_dashboard_and_alerts_use_only_exported_metrics(server):
    proc, endpoints, context = server
    text, _ = _scrape(endpoints)
    # Sample names (a histogram's with _bucket, _count, _sum) and family names.
    exported = set(re.findall(r"^(heraldry_[a-z_]+)", text, re.M)) \
        | set(re.findall(r"^# TYPE (heraldry_[a-z_]+) ", text, re.M))
    # A histogram with no series here (heraldry_loopback_latency_seconds: --loopback only) has
    # the samples of one.
    for family in re.findall(r"^# TYPE (heraldry_[a-z_]+) histogram$", text, re.M):
        if not re.search(rf"^{family}_bucket", text, re.M):
            exported |= {family + suffix for suffix in ("_bucket", "_count", "_sum")}
    assert set(METRIC_NAMES) <= exported
    # Three dashboards, each with what its readers need (docs/serve.md, "Dashboards").
    roles = {
        "executive": {"heraldry:herald_net_rate_hz:rate1m", "heraldry_link_up_seconds_total",
                      "heraldry_link_down_seconds_total", "heraldry:herald_below_floor"},
        "on-call": {"heraldry_heralds_total", "heraldry_herald_publish_latency_seconds_bucket",
                    "heraldry_events_dropped_total", "heraldry_link_up",
                    "heraldry:herald_below_floor:ratio1h"},
        "debug": {"heraldry_detections_total", "heraldry_coincidences_total",
                  "heraldry_pair_delay_seconds_bucket", "heraldry:pair01_delay_seconds:median1m",
                  "heraldry:arm0_klyshko_efficiency:rate1m", "heraldry_gated_out_total",
                  "heraldry:pair01_delay_stddev_seconds:rate1m",
                  "heraldry_loopback_latency_seconds_sum", "heraldry_herald_latency_seconds"},
    }
    exprs = []
    for name, wanted in roles.items():
        dashboard = json.loads((DOCS / "grafana" / f"{name}.json").read_text())
        assert dashboard["uid"].startswith("heraldry-")
        own = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
        assert len(own) >= 5, name
        series = set().union(*(re.findall(r"\bheraldry[_:][a-z0-9_:]+", e) for e in own))
        assert wanted <= series, (name, wanted - series)
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), name
        exprs += own
    used = set().union(*map(_metric_names, exprs))
    assert used and used <= exported, used - exported
    # Counters go through rate() or increase(), never plotted raw.
    for expr in exprs:
        for name in re.findall(r"\bheraldry_[a-z_]+_total\b", expr):
            assert re.search(rf"(rate|increase)\({name}\b", expr), expr
    alerts = _yaml_subset((DOCS / "prometheus-alerts.yml").read_text())
    slo = _yaml_subset((DOCS / "slo-rules.yml").read_text())
    rules = [rule for doc in (alerts, slo) for group in doc["groups"]
             for rule in group["rules"]]
    assert {r["alert"] for r in rules if "alert" in r} >= {
        "HeraldryLinkDown", "HeraldryEventsDropped", "HeraldryHeraldRateLow",
        "HeraldryHeraldBudgetBurnFast", "HeraldryHeraldBudgetBurnSlow",
        "HeraldryLinkBudgetBurnFast", "HeraldryLinkBudgetBurnSlow"}
    # Series the dashboard takes from the recording rules are recorded there.
    recorded = {r["record"] for r in rules if "record" in r}
    used_recorded = set().union(*(re.findall(r"\bheraldry:[a-z0-9_:]+", e) for e in exprs))
    assert used_recorded and used_recorded <= recorded, used_recorded - recorded
    slo_doc = (DOCS / "slo.md").read_text()

    def recorded_in(rule):
        """The recorded series ``rule`` uses, each recorded by some rule."""
        used = set(re.findall(r"\bheraldry:[a-z0-9_:]+", rule["expr"]))
        assert used <= recorded, used - recorded
        return used
    for rule in rules:
        recorded_in(rule)
    for rule in rules:
        assert rule["expr"]
        names = _metric_names(rule["expr"])
        assert names <= exported, names - exported
        if "record" in rule:
            continue
        assert rule["labels"]["severity"] in ("page", "ticket") \
            and rule["annotations"]["summary"]
        # A runbook section per alert.
        anchor = rule["alert"].lower()
        assert rule["annotations"]["runbook"] == f"docs/slo.md#{anchor}"
        assert re.search(rf"^#+ {rule['alert']}$", slo_doc, re.M), rule["alert"]
        # Prometheus's own "up" (scrape health) is the only other series a rule may use.
        assert names or recorded_in(rule) or re.fullmatch(r'up\{job="heraldry"\} == 0',
                                                          rule["expr"]), rule


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_token_and_link_down():
    """With --token every request needs it; when the board goes away (the virtual board's
    process is killed) the server keeps answering and says the link is down."""
    ports = [free_port() for _ in range(3)]
    proc = _start("--pub-port", str(ports[0]), "--control-port", str(ports[1]),
                  "--metrics-port", str(ports[2]), "--quiet", "--token", "s3cret",
                  "--rates-hz", "10")
    context = zmq.Context()
    try:
        endpoints = json.loads(proc.stdout.readline())
        req = _req(context, endpoints["control"])
        assert request(req, "status") == {"ok": False, "error": "missing or wrong token"}
        assert not request(req, "acquire_control", token="wrong")["ok"]
        lease = request(req, "acquire_control", token="s3cret")["lease"]
        assert not request(req, "stop", lease=lease)["ok"]
        assert request(req, "stop", lease=lease, token="s3cret")["ok"]
        assert request(req, "start", lease=lease, token="s3cret")["ok"]
        _, samples = _scrape(endpoints)
        assert samples["heraldry_link_up"] == 1
        (twin,) = _children(proc.pid)
        os.kill(twin, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _scrape(endpoints)[1]["heraldry_link_up"] != 0:
            assert time.monotonic() < deadline, "link still up 30 s after the board died"
            time.sleep(0.2)
        status = request(req, "status", token="s3cret")
        assert status["ok"] and status["link_up"] is False
        assert not request(req, "stop", lease=lease, token="s3cret")["ok"]
    finally:
        context.destroy(linger=0)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0


# -- pieces without a server -----------------------------------------------------------------

@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("*", False), ("::", False), ("192.168.1.5", False),
    ("example.org", False)])
def test_loopback_and_token(host, loopback):
    from heraldry.host.serve import ServeError, check_bind, is_loopback
    assert is_loopback(host) is loopback
    check_bind(host, "t")
    if loopback:
        check_bind(host, None)
    else:
        with pytest.raises(ServeError, match="--token"):
            check_bind(host, None)


@pytest.mark.parametrize("clock_hz, fine_bits, periods", [
    (100_000_000, 0, 5),            # generic PHY: sampling edge, PHY, pipeline, herald register
    (24_000_000, 2, 4.25),          # iCEBreaker: 4 core edges after its group's + one sample
    (50_000_000, 4, 7.5625),        # ULX3S: the worst of 16 clock phases (docs/boards.md)
    (50_000_000, 3, None)])         # no known input block: no figure rather than a wrong one
def test_herald_latency_is_the_boards(clock_hz, fine_bits, periods):
    """/metrics gives the board's simulated worst-case early-rule latency (heraldry.sim.latency),
    from the identity's clock and fine bits (it gave 5 clock periods whatever the board)."""
    import threading
    from types import SimpleNamespace

    from heraldry.host.serve import _Collector
    identity = SimpleNamespace(clock_hz=clock_hz, fine_bits=fine_bits, capabilities=0)
    server = SimpleNamespace(_lock=threading.Lock(), rates={}, acq=None,
                             dropped={cause: 0 for cause in DROP_CAUSES}, decode_errors=0,
                             publish_refused={}, published={}, link_up=True, running=True,
                             identity=identity, herald_floor_hz=0.0, started=time.monotonic(),
                             totals={"singles": [], "patterns": [], "heralds": [],
                                     "gated_out": [], "filtered": []}, attempts=0, commands={},
                             link_seconds=[0.0, 0.0], window_s=lambda: 0.0,
                             latency_counts=[0] * 13, latency_sum=0.0, car_floor=0.0,
                             pair_delay_counts=[0] * 21, pair_delay_sum=0.0,
                             pair_delay_squares=0.0, pair_delay_shifted=0.0, loopback=None,
                             loopback_counts=[0] * 33, loopback_sum=0.0, counters_time_s=0.0)
    (family,) = [f for f in _Collector(server).collect()
                 if f.name == "heraldry_herald_latency_seconds"]
    values = [sample.value for sample in family.samples]
    assert values == ([] if periods is None else [pytest.approx(periods / clock_hz)])


def test_sequence_tracker():
    t = SequenceTracker()
    for seq in (5, 6, 9, 10, 14):
        t.feed(seq)
    assert (t.first, t.last, t.received, t.missed, t.gaps) == (5, 14, 5, 5, [(7, 2), (11, 3)])
    with pytest.raises(ValueError, match="not increasing"):
        t.feed(14)
    # With the events header's first and count: the records of the missed messages.
    t = SequenceTracker()
    for seq, first, count in ((5, 100, 10), (6, 110, 3), (9, 150, 7), (10, 157, 1)):
        t.feed(seq, first, count)
    assert (t.events, t.missed, t.missed_events) == (21, 2, 37)      # 113 .. 149
    with pytest.raises(ValueError, match="before 158"):
        t.feed(11, 150, 1)


def test_decode_events_round_trip_and_refusals():
    events = np.zeros(3, EVENT_DTYPE)
    events["time_ps"] = [10, -20, 2 ** 40]
    events["channel"] = [0, 7, 3]
    events["count"] = [1, 1, 2 ** 31]
    header = {"seq": 4, "dtype": np.lib.format.dtype_to_descr(EVENT_DTYPE), "count": 3}
    frames = [b"events", json.dumps(header).encode(), events.tobytes()]
    got_header, got = decode_events(frames)
    assert got_header["seq"] == 4 and np.array_equal(got, events)
    with pytest.raises(ValueError, match="2 records"):
        decode_events([frames[0], frames[1], events[:2].tobytes()])
    with pytest.raises(ValueError, match="not an events message"):
        decode_events([b"rates"] + frames[1:])


def test_serve_shares_the_configuration_options_of_acquire():
    from heraldry.host import cli
    from heraldry.host.serve import CONFIG_KEYS
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    acquire = {a.dest for a in commands["acquire"]._actions}
    serve = {a.dest for a in commands["serve"]._actions}
    assert set(CONFIG_KEYS) <= acquire and set(CONFIG_KEYS) <= serve
    assert not {"duration", "out", "summary_json"} & serve
    args = parser.parse_args(["serve", "--window", "20", "--herald", "0b11"])
    assert (args.window, args.herald, args.bind, args.token) == (20.0, ["0b11"], "127.0.0.1", None)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_serial_board_is_left_stopped_after_a_stop_signal(signum):
    """``--board PORT`` (the virtual board on its pty, as a real board): the server identifies
    it, runs it, and on SIGTERM (or SIGHUP: the terminal closed) exits 0 and leaves it stopped;
    the board keeps its state for the next client, which finds the run gate closed and the
    counters frozen."""
    from heraldry.host.driver import Device
    from heraldry.host.transport import SerialTransport
    from heraldry.sim.twin import Twin
    with Twin() as twin:
        hold = os.open(twin.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)   # keeps it alive
        try:
            ports = [free_port() for _ in range(3)]
            proc = subprocess.Popen(
                [sys.executable, "-m", "heraldry.host.cli", "serve", "--board", twin.port,
                 "--pub-port", str(ports[0]), "--control-port", str(ports[1]),
                 "--metrics-port", str(ports[2]), "--quiet", "--status-interval", "0.02",
                 "--test-signal", "pairs"],     # on a serial port the pins are the default
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            endpoints = json.loads(proc.stdout.readline())
            deadline = time.monotonic() + 30
            while _scrape(endpoints)[1].get('heraldry_detections_total{channel="0"}', 0) == 0:
                assert time.monotonic() < deadline, "no detections 30 s after the start"
                time.sleep(0.2)
            proc.send_signal(signum)
            assert proc.wait(30) == 0, proc.stderr.read()
            with Device(SerialTransport(twin.port, twin.baud), timeout=3.0) as device:
                device.identify()
                assert device.read("control.run") == 0
                singles = device.counters()["singles"]
                assert singles[0] > 0
                device.wait_cycles(100_000)
                assert device.counters()["singles"] == singles
        finally:
            os.close(hold)


class _ScriptedRun:
    """A run whose counters, snapshot times and blocks the test sets (``Tagger.run``'s
    interface as the server uses it)."""

    def __init__(self, tagger, groups):
        self.tagger = tagger
        self.start_cycles = None
        self.counters = {g: [0] * n for g, n in groups.items()}
        self.counters_seconds = self.device_seconds = 0.0
        self.started = self.ended = False
        self.blocks = []
        self.acquisition = SimpleNamespace(sync_channel=None)     # no attempt clock

    def start(self):
        self.started = True
        self.start_cycles = self.tagger.cycles
        self.tagger.cycles += 10 ** 9

    def poll(self):
        return self.blocks.pop(0) if self.blocks else None

    def stop(self):
        self.ended = True
        return self.counters


class _ScriptedTagger:
    def __init__(self):
        from types import SimpleNamespace
        self.identity = SimpleNamespace(channels=2, rules=1, clock_hz=100_000_000, fine_bits=0,
                                        bin_fs=10_000_000, gateware_version=1,
                                        capabilities=0)
        self.groups = {"singles": 2, "patterns": 3, "heralds": 1, "delay_dropped": 2,
                       "merger_dropped": 2, "herald_dropped": 1, "coincidence_dropped": 1}
        anchor = SimpleNamespace(minimum=2 ** 8, maximum=2 ** 30)
        self.device = SimpleNamespace(
            map={"control.anchor_interval": anchor}, write=lambda name, value: None,
            now=lambda: 0, stats=lambda: {"decode_errors": 0, "host_dropped_events": 0})
        self.is_replay = False
        self.runs = []
        self.cycles = 10 ** 9           # the device count at the next run start

    def run(self, acq, **options):
        run = _ScriptedRun(self, self.groups)
        self.runs.append(run)
        return run


def test_drops_rates_and_device_time_across_runs():
    """Over a restart the drop totals keep growing (Prometheus counters: each run's counters
    start from zero after its clear), rates are counter differences over the snapshots' device
    times, and published times are the board's device time (the run's start count plus the
    run's time), so they increase across runs."""
    from heraldry.host.events import Block
    from heraldry.host.serve import Server
    tagger = _ScriptedTagger()
    server = Server(tagger, {}, lambda config: (None, []), pub_port=0, control_port=0,
                    metrics_port=0, rates_hz=2)
    sub = None
    try:
        first = tagger.runs[-1]
        assert server.running and first.started
        first.counters = dict(first.counters, singles=[1000, 500], merger_dropped=[3, 4],
                              heralds=[50])
        first.counters_seconds, first.device_seconds = 0.5, 0.6
        server._tick()
        assert server.rates["channel_rates_hz"] == [2000.0, 1000.0]
        assert server.rates["herald_rate_hz"] == 100.0
        assert server.rates["device_time_s"] == pytest.approx(10.0 + 0.6)  # 1e9 cycles, 100 MHz
        assert server.dropped["merger_full"] == 7
        # No new snapshot at the next tick: the rates stay.
        first.device_seconds = 0.7
        server._tick()
        assert server.rates["channel_rates_hz"] == [2000.0, 1000.0]
        first.counters = dict(first.counters, singles=[1600, 800], merger_dropped=[5, 4],
                              delay_dropped=[0, 2])
        first.counters_seconds = 1.0
        server._tick()
        assert server.rates["channel_rates_hz"] == [1200.0, 600.0]
        assert (server.dropped["merger_full"], server.dropped["delay_full"]) == (9, 2)
        # A restart (start, or configure while running): a new run, its counters from zero.
        context = zmq.Context.instance()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(f"tcp://127.0.0.1:{server.pub_port}")
        sub.subscribe(b"events")
        time.sleep(0.3)
        server.start()
        second = tagger.runs[-1]
        assert first.ended and second.started and server.rates["channel_rates_hz"] == [0.0, 0.0]
        second.counters = dict(second.counters, merger_dropped=[1, 0], singles=[10, 0])
        second.counters_seconds, second.device_seconds = 0.01, 0.02
        events = np.zeros(2, EVENT_DTYPE)
        events["time_ps"] = [0, 5_000]
        second.blocks.append(Block(events, {}))
        server._step()
        server._tick()
        assert (server.dropped["merger_full"], server.dropped["delay_full"]) == (10, 2)
        assert server.rates["channel_rates_hz"] == [1000.0, 0.0]
        assert server.rates["device_time_s"] == pytest.approx(20.0 + 0.02)
        assert sub.poll(5000)
        header, got = decode_events(sub.recv_multipart())
        assert got["time_ps"].tolist() == [20 * 10 ** 12, 20 * 10 ** 12 + 5_000]
        _, samples = _scrape({"metrics": f"http://127.0.0.1:{server.metrics_port}/metrics"})
        assert samples['heraldry_events_dropped_total{cause="merger_full"}'] == 10
        server.stop()
        assert second.ended and not server.running
        assert server.dropped["merger_full"] == 10
    finally:
        if sub is not None:
            sub.close()
        server.close()


def test_counters_commands_and_link_time_are_monotonic_over_restarts():
    """/metrics counts (detections, coincidences of 2+ channels, heralds) are every run's
    totals, so a restart (which clears the board's counters) never makes them go down; each
    control request is counted by command and result; the wall time is split into link up and
    link down seconds that add up to the time served."""
    from heraldry.host.driver import DeviceError
    from heraldry.host.serve import Server
    tagger = _ScriptedTagger()
    began = time.monotonic()
    server = Server(tagger, {}, lambda config: (None, []), pub_port=0, control_port=0,
                    metrics_port=0, rates_hz=2)
    metrics = {"metrics": f"http://127.0.0.1:{server.metrics_port}/metrics"}
    try:
        first = tagger.runs[-1]
        first.counters = dict(first.counters, singles=[1000, 500], patterns=[7, 9, 40],
                              heralds=[50])
        first.counters_seconds = 0.5
        server._tick()
        _, samples = _scrape(metrics)
        assert samples['heraldry_detections_total{channel="1"}'] == 500
        server.start()                  # the second run's counters start from zero
        second = tagger.runs[-1]
        second.counters = dict(second.counters, singles=[10, 0], patterns=[1, 0, 3],
                               heralds=[2])
        second.counters_seconds = 0.01
        server._tick()
        _, samples = _scrape(metrics)
        assert samples['heraldry_detections_total{channel="0"}'] == 1010
        assert samples['heraldry_detections_total{channel="1"}'] == 500
        assert samples['heraldry_coincidences_total{pattern="3"}'] == 43
        # Patterns 1 and 2 are single channels: not coincidences.
        assert not [k for k in samples if k.startswith("heraldry_coincidences_total{pattern=\"1\"")
                    or k.startswith("heraldry_coincidences_total{pattern=\"2\"")]
        assert samples['heraldry_heralds_total{rule="0"}'] == 52
        assert samples["heraldry_coincidence_window_seconds"] == 0.0    # no acquisition here
        replies = [server.handle(req) for req in (
            {"command": "status"}, {"command": "stop"}, {"command": "acquire_control"},
            {"command": "launch"}, "not an object")]
        assert [r["ok"] for r in replies] == [True, False, True, False, False]
        lease = replies[2]["lease"]
        assert server.handle({"command": "stop", "lease": lease})["ok"]
        _, samples = _scrape(metrics)
        ctl = {k: v for k, v in samples.items()
               if k.startswith("heraldry_control_commands") and v}
        assert len([k for k in samples if k.startswith("heraldry_control_commands")]) == 14
        assert ctl == {
            'heraldry_control_commands_total{command="status",result="ok"}': 1,
            'heraldry_control_commands_total{command="stop",result="failed"}': 1,
            'heraldry_control_commands_total{command="stop",result="ok"}': 1,
            'heraldry_control_commands_total{command="acquire_control",result="ok"}': 1,
            'heraldry_control_commands_total{command="other",result="failed"}': 2}
        # Stopped: the totals stay; the link is probed at each tick.
        assert samples['heraldry_heralds_total{rule="0"}'] == 52

        def lost():
            raise DeviceError("no reply")
        server._tick()
        tagger.device.now = lost
        server._tick()                  # sees the link down
        assert not server.link_up
        time.sleep(0.3)
        server._tick()
        served = time.monotonic() - began
        _, samples = _scrape(metrics)
        down = samples["heraldry_link_down_seconds_total"]
        up = samples["heraldry_link_up_seconds_total"]
        assert 0.3 <= down < served and 0 < up < served - 0.3
        assert up + down <= served
        assert samples["heraldry_link_up"] == 0
    finally:
        server.close()


def test_herald_publish_latency_histogram():
    """Each published herald record (not a tag) is counted in the latency histogram: the device
    seconds from its time to the run's device time at the poll that brought it, plus the wall
    seconds to its publication."""
    from heraldry.host.events import Block
    from heraldry.host.serve import Server
    tagger = _ScriptedTagger()
    server = Server(tagger, {}, lambda config: (None, []), pub_port=0, control_port=0,
                    metrics_port=0, rates_hz=2)
    try:
        run = tagger.runs[-1]
        run.device_seconds = 0.3
        events = np.zeros(3, EVENT_DTYPE)
        events["time_ps"] = [90 * 10 ** 9, 150 * 10 ** 9, 279 * 10 ** 9]     # 0.09, 0.15, 0.279 s
        events["kind"] = [Kind.HERALD.value, Kind.TAG.value, Kind.HERALD.value]
        run.blocks.append(Block(events, {}))
        began = time.monotonic()
        server._step()
        wall = time.monotonic() - began     # bounds each herald's wall part
        # (a loaded machine may take tens of ms; the buckets below hold up to 0.179 s)
        assert wall < 0.15
        _, samples = _scrape({"metrics": f"http://127.0.0.1:{server.metrics_port}/metrics"})
        name = "heraldry_herald_publish_latency_seconds"
        buckets = {le: samples[f'{name}_bucket{{le="{le}"}}']
                   for le in ("0.01", "0.02", "0.2", "0.5", "+Inf")}
        # 0.21 s and 0.021 s plus the wall part: buckets (0.2, 0.5] and (0.02, 0.2].
        assert buckets == {"0.01": 0, "0.02": 0, "0.2": 1, "0.5": 2, "+Inf": 2}
        assert samples[f"{name}_count"] == 2
        assert 0.231 - 1e-9 <= samples[f"{name}_sum"] <= 0.231 + 2 * wall
    finally:
        server.close()


def test_pair_delays_histogram_finds_the_coincidence_peak():
    """heraldry_pair_delay_seconds: every channel 0 / channel 1 tag pair within 100 ns, channel
    1's time minus channel 0's, binned in the 10 ns buckets around multiples of 10 ns; herald
    records and other channels are not tags of the pair."""
    import threading
    from types import SimpleNamespace

    from heraldry.host.serve import PAIR_DELAY_BUCKETS_S, Server, pair_delays
    events = np.zeros(9, EVENT_DTYPE)
    # ps: ch0 at 0 and 1000000; ch1 at 30000 (+30 ns from the first), 1050000 (+50 ns from the
    # second) and 1250000 (+250 ns: out of reach); ch2 at 10000; a herald record at 30000.
    rows = [(0, 0), (30_000, 1), (10_000, 2), (1_000_000, 0), (1_050_000, 1), (1_250_000, 1),
            (-80_000, 1), (2_000_000, 0), (1_999_990, 1)]
    for i, (t, ch) in enumerate(rows):
        events[i]["time_ps"], events[i]["channel"] = t, ch
        events[i]["kind"] = Kind.TAG.value
    herald = np.zeros(1, EVENT_DTYPE)
    herald["time_ps"], herald["kind"] = 30_000, Kind.HERALD.value
    events = np.concatenate([events, herald])
    got = sorted(np.round(pair_delays(events, 100e-9) * 1e12).astype(int).tolist())
    # pairs: (0, 30000) +30 ns, (0, -80000) -80 ns, (1000000, 1050000) +50 ns,
    # (2000000, 1999990) -0.01 ns
    assert got == [-80_000, -10, 30_000, 50_000]
    server = SimpleNamespace(identity=SimpleNamespace(channels=4), _lock=threading.Lock(),
                             pair_delay_counts=[0] * (len(PAIR_DELAY_BUCKETS_S) + 1),
                             pair_delay_sum=0.0, pair_delay_squares=0.0,
                             pair_delay_shifted=0.0)
    Server._count_pair_delays(server, events)
    expected = [0] * (len(PAIR_DELAY_BUCKETS_S) + 1)
    for delay_ns in (-80, 0, 30, 50):           # bucket k holds (10 k - 105, 10 k - 95] ns
        expected[(delay_ns + 100) // 10] += 1
    assert server.pair_delay_counts == expected
    assert server.pair_delay_sum == pytest.approx((-80_000 - 10 + 30_000 + 50_000) * 1e-12)
    # The width's counters: the squares, and the delays shifted by the 100 ns range (>= 0).
    assert server.pair_delay_squares == pytest.approx(
        (80_000 ** 2 + 10 ** 2 + 30_000 ** 2 + 50_000 ** 2) * 1e-24)
    assert server.pair_delay_shifted == pytest.approx((20_000 + 99_990 + 130_000 + 150_000)
                                                      * 1e-12)


def _peak_width(before, after, seconds, counters_seconds=None):
    """The peak's standard deviation as docs/slo-rules.yml records it
    (heraldry:pair01_delay_stddev_seconds), from two scrapes ``seconds`` apart (the counters'
    snapshots ``counters_seconds`` apart, if they were taken at other times)."""
    def rate(key, seconds=seconds):
        return (after[key] - before[key]) / seconds
    r = after["heraldry_pair_delay_range_seconds"]
    t = seconds if counters_seconds is None else counters_seconds
    accidentals = rate('heraldry_detections_total{channel="0"}', t) \
        * rate('heraldry_detections_total{channel="1"}', t) * 2 * r
    pairs = rate('heraldry_pair_delay_seconds_bucket{le="+Inf"}')
    peak = pairs - accidentals
    mean = (rate("heraldry_pair_delay_shifted_seconds_total") - pairs * r) / peak
    variance = (rate("heraldry_pair_delay_seconds_squared_total") - accidentals * r * r / 3) \
        / peak - mean ** 2
    return max(variance, 0.0) ** 0.5


@pytest.mark.parametrize("jitter_ns", [3.0, 10.0])
def test_pair_delay_width_follows_the_jitter(jitter_ns):
    """A seeded pair source with Gaussian jitter on each arm (and dark counts: a floor of
    accidentals) published through a server: the width the recording rule computes from
    /metrics is the jitter of the delay, sqrt(2) * jitter_ns, within its statistical error
    (a few per cent here), whatever the floor."""
    from heraldry.host.events import Block
    from heraldry.host.serve import Server
    rng = np.random.default_rng(11)
    seconds, pairs_hz, dark_hz = 20.0, 2e3, 2e3
    born = rng.uniform(0, seconds, int(pairs_hz * seconds))
    rows = []
    for ch in (0, 1):
        t = np.concatenate([born + rng.normal(0, jitter_ns * 1e-9, len(born)),
                            rng.uniform(0, seconds, int(dark_hz * seconds))])
        rows.append(np.stack([np.round(t * 1e12), np.full(len(t), ch)], 1))
    rows = np.concatenate(rows)
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    tagger = _ScriptedTagger()
    server = Server(tagger, {}, lambda config: (None, []), pub_port=0, control_port=0,
                    metrics_port=0, rates_hz=2)
    try:
        url = {"metrics": f"http://127.0.0.1:{server.metrics_port}/metrics"}
        _, before = _scrape(url)
        run = tagger.runs[-1]
        for part in np.array_split(rows, 100):       # blocks of 0.2 s
            events = np.zeros(len(part), EVENT_DTYPE)
            events["time_ps"], events["channel"] = part[:, 0], part[:, 1]
            run.blocks.append(Block(events, {}))
        # The detections as the board's counters give them.
        run.counters["singles"] = [int(np.sum(rows[:, 1] == ch)) for ch in (0, 1)]
        run.counters_seconds = run.device_seconds = seconds
        server._step()
        server._tick()
        _, after = _scrape(url)
    finally:
        server.close()
    width = _peak_width(before, after, seconds)
    assert width == pytest.approx(2 ** 0.5 * jitter_ns * 1e-9, rel=0.06)


def test_stream_filter_and_attempt_counters_are_exported():
    """``--stream 2=none --stream 3=none``: channels 2 and 3 are counted, never streamed, and
    ``heraldry_stream_filtered_total`` says so (equal to their detections once the run is
    stopped and its counters read at the end; a snapshot's counters are read one after
    another while the board runs); channels 0 and 1 stream everything; no sync channel: no
    attempts, nothing gated out. A configure request takes the same keys."""
    ports = [free_port() for _ in range(3)]
    proc = _start("--pub-port", str(ports[0]), "--control-port", str(ports[1]),
                  "--metrics-port", str(ports[2]), "--quiet", "--status-interval", "0.002",
                  "--dark-rate", "1e5", "--stream", "2=none", "--stream", "3=none")
    context = zmq.Context()
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        endpoints = json.loads(line)
        deadline = time.monotonic() + 60
        while True:
            time.sleep(0.3)
            _, samples = _scrape(endpoints)
            if samples['heraldry_detections_total{channel="3"}'] >= 20 \
                    or time.monotonic() > deadline:
                break
        control = _req(context, endpoints["control"])
        lease = request(control, "acquire_control")["lease"]
        assert request(control, "stop", lease=lease) == {"ok": True, "running": False}
        _, samples = _scrape(endpoints)
        for ch in (2, 3):
            detections = samples[f'heraldry_detections_total{{channel="{ch}"}}']
            assert detections >= (20 if ch == 3 else 1)
            assert samples[f'heraldry_stream_filtered_total{{channel="{ch}"}}'] == detections
        for ch in (0, 1):
            assert samples[f'heraldry_detections_total{{channel="{ch}"}}'] > 0
            assert samples[f'heraldry_stream_filtered_total{{channel="{ch}"}}'] == 0
        assert samples["heraldry_attempts_total"] == 0
        assert all(samples[f'heraldry_gated_out_total{{channel="{ch}"}}'] == 0
                   for ch in range(4))
        bad = request(control, "configure", lease=lease, config={"stream": ["1=some"]})
        assert not bad["ok"] and "--stream" in bad["error"]
        got = request(control, "configure", lease=lease, config={"stream": ["1=none"]})
        assert got["ok"], got
        assert request(control, "status")["config"]["stream"] == ["1=none"]
    finally:
        context.destroy(linger=0)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


def test_loopback_latencies_pairs_each_herald_with_its_returned_pulse():
    """loopback_latencies: a herald of the pin's rules is timed to the first tag of the input at
    or after it, within the guard; not a herald that another came within the guard before
    (its edge could be the other's), not one whose pulse does not come back within the guard,
    not another rule's; the last herald carries over to the next block."""
    from heraldry.host.serve import loopback_latencies
    rows = [  # (time ps, kind, channel): rule 0 and 2 drive the pin, input 3, guard 1000 ps
        (0, Kind.HERALD, 0), (50, Kind.TAG, 3),              # 50
        (5_000, Kind.HERALD, 2), (5_060, Kind.TAG, 3),       # 60 (rule 2: same pin)
        (5_500, Kind.HERALD, 0), (5_550, Kind.TAG, 3),       # 500 after the last: not timed
        (9_000, Kind.HERALD, 1), (9_040, Kind.TAG, 3),       # rule 1: another pin
        (20_000, Kind.HERALD, 0), (21_500, Kind.TAG, 3),     # back after the guard: not timed
        (30_000, Kind.TAG, 0), (30_000, Kind.HERALD, 0), (30_070, Kind.TAG, 3),   # 70
        (40_000, Kind.HERALD, 0)]                            # comes back in the next block
    events = np.zeros(len(rows), EVENT_DTYPE)
    for i, (t, kind, ch) in enumerate(rows):
        events[i]["time_ps"], events[i]["kind"], events[i]["channel"] = t, kind.value, ch
    latencies, last = loopback_latencies(events, [0, 2], 3, 1000)
    assert latencies.tolist() == [50, 60, 70] and last == 40_000
    # The next block: its first herald 800 ps after the last one: not timed; then one is.
    nxt = np.zeros(4, EVENT_DTYPE)
    nxt["time_ps"] = [40_030, 40_800, 40_850, 60_000]
    nxt["kind"] = [Kind.TAG.value, Kind.HERALD.value, Kind.TAG.value, Kind.HERALD.value]
    nxt["channel"] = [3, 0, 3, 0]
    assert loopback_latencies(nxt, [0, 2], 3, 1000, last)[0].tolist() == []
    assert loopback_latencies(nxt, [0, 2], 3, 1000, 39_000)[0].tolist() == [50]
    # No herald: nothing, and the last herald stays.
    assert loopback_latencies(nxt[:1], [0], 3, 1000, 7)[1] == 7


#: The virtual board's loopback latency by construction: rule 0 (early) raises its pin after the
#: completing sample's 4th clock edge (heraldry.sim.latency.MEASURED, the generic PHY's early
#: minimum, in whole periods), and the simulated jumper hands the pin's level to the input from
#: the next cycle on: one period more (heraldry.sim.twin, "Loopback").
def _sim_loopback_periods():
    from heraldry.sim.latency import MEASURED
    early = MEASURED["GenericPHY"]["early"][0]
    assert early.denominator == 1
    return int(early) + 1


def test_serve_loopback_measures_the_virtual_boards_herald_latency():
    """``serve --board sim --loopback 0:2``: channel 2 reads the simulated jumper from herald
    output 0 (rule 0b0011's pin) instead of the test signal's dark counts, and every pulse that
    comes back takes the virtual board's latency by construction (5 periods, 50 ns), the figure
    heraldry_herald_latency_seconds gives for it."""
    ports = [free_port() for _ in range(3)]
    proc = _start("--pub-port", str(ports[0]), "--control-port", str(ports[1]),
                  "--metrics-port", str(ports[2]), "--quiet", "--status-interval", "0.002",
                  "--herald", "0b0011", "--loopback", "0:2")
    context = zmq.Context()
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        endpoints = json.loads(line)
        name = "heraldry_loopback_latency_seconds"
        labels = 'channel="2",herald="0"'
        deadline = time.monotonic() + 60
        while True:
            time.sleep(0.3)
            text, samples = _scrape(endpoints)
            if samples.get(f"{name}_count{{{labels}}}", 0) >= 50 \
                    or time.monotonic() > deadline:
                break
        # Stopped: the counters are the run's final ones, every block published.
        control = _req(context, endpoints["control"])
        lease = request(control, "acquire_control")["lease"]
        assert request(control, "stop", lease=lease) == {"ok": True, "running": False}
        text, samples = _scrape(endpoints)
    finally:
        context.destroy(linger=0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    periods = _sim_loopback_periods()
    count = samples[f"{name}_count{{{labels}}}"]
    assert count >= 50
    # Every pulse in the bucket of 5 periods, none in the one below.
    assert samples[f'{name}_bucket{{{labels},le="{periods / CLOCK_HZ:g}"}}'] == count
    assert samples[f'{name}_bucket{{{labels},le="{(periods - 1) / CLOCK_HZ:g}"}}'] == 0
    assert samples[f"{name}_sum{{{labels}}}"] / count == pytest.approx(periods / CLOCK_HZ)
    assert samples["heraldry_herald_latency_seconds"] == pytest.approx(periods / CLOCK_HZ)
    # Channel 2 counted the returned pulses (one rise each), not dark counts: one a herald,
    # but the last if it was on its way at the stop and those that came within a pulse of the
    # one before (merged: 0.1 % at these rates).
    heralds = samples['heraldry_heralds_total{rule="0"}']
    assert count <= heralds
    assert 0 <= heralds - samples['heraldry_detections_total{channel="2"}'] <= 0.01 * heralds + 1


@pytest.mark.parametrize("args, message", [
    (["--board", "/dev/null", "--loopback", "0:2"], "--loopback is the virtual board's"),
    (["--board", "sim", "--loopback", "0:2", "--herald", "0b0111"],
     "--loopback 0:2: input 2 is in herald rule 0; the loopback needs a spare input"),
    (["--board", "sim", "--loopback", "1:2", "--herald", "0b0011"],
     "--loopback 1:2: no herald rule drives herald output 1"),
    (["--board", "sim", "--loopback", "0:9", "--herald", "0b0011"],
     "--loopback 0:9: this board has herald outputs 0..1 and inputs 0..3"),
    (["--board", "sim", "--loopback", "0-2"], "--loopback 0-2: want HERALD:CHANNEL"),
])
def test_serve_refuses_a_loopback_that_cannot_work_in_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "heraldry.host.cli", "serve", *args,
                           "--metrics-port", "0", "--pub-port", "0", "--control-port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("heraldry: error: ") and message in proc.stderr


@pytest.mark.slow
def test_pair_delay_width_on_the_virtual_board_follows_the_jitter(tmp_path):
    """``serve --scenario``: the seeded pair source with 15 ns of Gaussian jitter per arm drives
    the virtual board's pins; the width from /metrics (the recording rule's formula, rates per
    device second) is the spread of the delays as the board stamps them: each detection's
    time floored to its 10 ns cycle, which a Monte Carlo of the same source gives here. Some
    5000 pairs: the estimate is good to 1.5 % or so (measured: 21.13 ns against 21.59; with
    8 ns of jitter 11.23 against 12.02 and 12.54 against 12.03, too close to the floor's
    error). A minute or two of simulation (the slow tier)."""
    jitter_ns, pairs_hz, efficiency = 15.0, 1e5, 0.9
    scenario = tmp_path / "jitter.toml"
    scenario.write_text(f"[source]\npair_rate_hz = {pairs_hz}\nefficiency = [{efficiency}, "
                        f"{efficiency}]\ndark_rate_hz = 0\njitter_ns = {jitter_ns}\nseed = 5\n")
    ports = [free_port() for _ in range(3)]
    proc = _start("--pub-port", str(ports[0]), "--control-port", str(ports[1]),
                  "--metrics-port", str(ports[2]), "--quiet", "--status-interval", "0.002",
                  "--scenario", str(scenario))
    pairs = 'heraldry_pair_delay_seconds_bucket{le="+Inf"}'
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        endpoints = json.loads(line)
        deadline = time.monotonic() + 600
        while True:     # past the run's start
            time.sleep(0.5)
            _, before = _scrape(endpoints)
            if before[pairs] > 0:
                break
            assert time.monotonic() < deadline, "no pairs"
        while True:
            time.sleep(1)
            _, after = _scrape(endpoints)
            if after[pairs] - before[pairs] >= 5000:
                break
            assert time.monotonic() < deadline, "too few pairs in 10 minutes"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    width = _peak_width(
        before, after,
        after["heraldry_device_time_seconds"] - before["heraldry_device_time_seconds"],
        after["heraldry_counters_device_time_seconds"]
        - before["heraldry_counters_device_time_seconds"])
    # The source: both arms of a pair born at t, each detected at t + N(0, jitter), stamped
    # with the cycle its time falls in.
    rng = np.random.default_rng(1)
    born = rng.uniform(0, 1e-3, 10 ** 6)
    cycles = [np.floor((born + rng.normal(0, jitter_ns * 1e-9, born.size)) * CLOCK_HZ)
              for _ in range(2)]
    expected = np.std(cycles[1] - cycles[0]) / CLOCK_HZ
    assert width == pytest.approx(expected, rel=0.08)


def test_with_loopback_reads_the_spare_input_and_refuses_a_loop():
    """The acquisition the server runs with --loopback 0:2: input 2 reads its pin (the jumper,
    not the test signal), rising edges only; a configure that makes input 2 part of a rule (the
    returned pulses would herald again) or leaves pin 0 without a rule is refused."""
    from heraldry.host.config import Acquisition, ConfigError
    from heraldry.host.serve import with_loopback
    acq = Acquisition(herald_masks=[0b0011], edges=["rising", "rising", "both", "falling"],
                      test_signal="pairs")
    got = with_loopback(acq, (0, 2), 4, 2)
    assert got.pin_channels == [2] and got.edges == ["rising", "rising", "rising", "falling"]
    assert got.sources()[2] != Acquisition(test_signal="pairs").sources()[2]
    with pytest.raises(ConfigError, match="input 2 is in herald rule 1"):
        with_loopback(Acquisition(herald_masks=[0b0011, 0b0001],
                                  herald_rules=[{"require": 0b0011},
                                                {"require": 0b0001, "veto": 0b0100}]),
                      (0, 2), 4, 2)
    with pytest.raises(ConfigError, match="no herald rule drives herald output 1"):
        with_loopback(Acquisition(herald_masks=[0b0011]), (1, 2), 4, 2)


def test_herald_latency_gauge_is_the_fast_figure_only_for_fast_early_pins():
    """heraldry_herald_latency_seconds on a device with the fast herald path (the ULX3S,
    ident.capabilities bit 6): the fast figure (46.25 ns) when every early rule's pin is driven
    by it; the core's (151.25 ns) when a delayed channel, the test signal or an exact rule on
    the same pin leaves a pin to the core, or the device has no fast path."""
    from heraldry.host.serve import early_latency_seconds
    from heraldry.model import HeraldRule
    from heraldry.protocol import CAPABILITY_FAST_HERALD
    ulx3s = SimpleNamespace(clock_hz=50_000_000, fine_bits=4, capabilities=0b11111)
    fast_ulx3s = SimpleNamespace(clock_hz=50_000_000, fine_bits=4,
                                 capabilities=0b11111 | CAPABILITY_FAST_HERALD)

    def acq(**kw):
        base = dict(channels=4, rules=2, fine_bits=4, bin_ps=1250, clock_hz=50e6,
                    window_bins=16, test_signal="off",
                    herald_rules=[HeraldRule(0b0011, 0, "early", 0),
                                  HeraldRule(0b1100, 0, "exact", 1)])
        a = Acquisition(**(base | kw))
        a.validate()
        return a

    assert early_latency_seconds(fast_ulx3s, acq()) == pytest.approx(46.25e-9)
    assert early_latency_seconds(ulx3s, acq()) == pytest.approx(151.25e-9)
    assert early_latency_seconds(fast_ulx3s, acq(delays_bins=[0, 0, 0, 8])) == pytest.approx(
        151.25e-9)
    assert early_latency_seconds(fast_ulx3s, acq(test_signal="pairs")) == pytest.approx(
        151.25e-9)
    shared = [HeraldRule(0b0011, 0, "early", 0), HeraldRule(0b1100, 0, "exact", 0)]
    assert early_latency_seconds(fast_ulx3s, acq(herald_rules=shared)) == pytest.approx(
        151.25e-9)
    assert early_latency_seconds(fast_ulx3s, None) == pytest.approx(151.25e-9)


def test_herald_latency_gauge_adds_the_gate_stage():
    """A device whose core has the gate stage (ident.capabilities bit 7, the ULX3S's builds of
    more than 4 channels): the core's figure one core period (20 ns) later."""
    from heraldry.host.serve import early_latency_seconds
    from heraldry.protocol import CAPABILITY_GATE_STAGE
    staged = SimpleNamespace(clock_hz=50_000_000, fine_bits=4,
                             capabilities=0b11111 | CAPABILITY_GATE_STAGE)
    assert early_latency_seconds(staged, None) == pytest.approx(171.25e-9)
