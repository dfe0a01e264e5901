"""Game days: a served virtual board's metrics as Prometheus would have scraped them, for promtool.

The virtual board runs tens of times slower than real time, so alert rules, whose ``rate()``
windows and ``for:`` durations are in Prometheus's time, cannot be pointed at it directly. This
module records the ``/metrics`` of a running ``heraldry serve`` on a grid of *device* time and
writes them as ``promtool test rules`` input series, one scrape per grid step:

* Scrape ``n`` is the state at device time ``t0 + n * device_step_s``, given the series time
  ``n * interval_s``: every ``for:`` and every range in the rules then spans that much of the
  board's own time. Counts are taken from the server's counter snapshots
  (``heraldry_counters_device_time_seconds`` tells when each was taken) and interpolated
  linearly between the two snapshots around the grid time (the snapshots are a few ms of device
  time apart; a grid step holds several).
* Every counter is multiplied by ``k = interval_s / device_step_s``, so that ``rate()`` over the
  series reads per second of *device* time, as it does on a real board (where the two clocks are
  one): thresholds in Hz (``--herald-floor``) and CAR mean what they say. Ratios (link
  availability, latency shares) do not change. Gauges are taken as they are.
* While the board is gone (the server reports ``heraldry_link_up`` 0: killed, hung or cut off
  past the driver's resends) its device time is unknown, and scrapes go on at the wall pace the
  run has had so far (the median wall seconds per grid step), so the time a board is gone shows
  in the series as it would on a real one. So do they if its counters' time has not moved for
  ``stall_s`` wall seconds with the link up (a board the server has not given up on yet). A
  board that is merely slow (a loaded machine) is waited for: its device time is the clock.

:func:`record` returns a :class:`Recording`; :meth:`Recording.input_series` gives the series for
a promtool test file, :func:`firing` runs ``promtool test rules`` and says which alerts fire at
given series times (the game days in ``tests/test_gameday.py``).
"""

import json
import math
import re
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Recording", "record", "scrape", "firing", "promtool_alert_test"]

#: Gauge that says at what device time the counters were taken.
COUNTERS_TIME = "heraldry_counters_device_time_seconds"


def scrape(url, timeout=5.0):
    """``{(name, ((label, value), ...)): (value, is_counter)}`` from a ``/metrics`` page."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        counter = family.type in ("counter", "histogram")
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = (sample.name, tuple(sorted(sample.labels.items())))
            out[key] = (float(sample.value), counter)
    return out


@dataclass
class Recording:
    """Scrapes on the grid (module docstring). ``samples``: one dict per scrape, ``{key:
    value}`` (counters already scaled by ``scale``); ``device_times``: the device time of each
    (``None`` for the scrapes taken while the board's time stood still); ``counters``: the keys
    that are counters."""
    interval_s: float
    device_step_s: float
    samples: list = field(default_factory=list)
    device_times: list = field(default_factory=list)
    counters: set = field(default_factory=set)

    @property
    def scale(self):
        return self.interval_s / self.device_step_s

    def input_series(self, labels=None):
        """promtool ``input_series`` entries (every metric seen, ``up`` 1 at every scrape:
        the recorder did scrape it), with ``labels`` (default ``instance="sim", job="heraldry"``)
        added to each. A series missing from a scrape is written as ``_`` (no sample)."""
        labels = {"instance": "sim", "job": "heraldry"} if labels is None else labels
        keys = sorted({key for sample in self.samples for key in sample})
        out = []
        for name, extra in keys:
            body = ",".join(f'{k}="{v}"' for k, v in sorted({**labels, **dict(extra)}.items()))
            values = " ".join(_number(s[(name, extra)]) if (name, extra) in s else "_"
                              for s in self.samples)
            out.append({"series": f"{name}{{{body}}}", "values": values})
        body = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        out.append({"series": f"up{{{body}}}", "values": " ".join("1" for _ in self.samples)})
        return out


def _number(value):
    if math.isnan(value):
        return "NaN"
    return repr(float(value)) if value != int(value) or abs(value) >= 1e15 else str(int(value))


def record(url, *, device_step_s, scrapes, interval_s=15.0, poll_s=0.02, stall_s=30.0,
           timeout_s=900.0, on_scrape=None):
    """Record ``scrapes`` grid scrapes of ``url`` (a served board's ``/metrics``), the grid
    starting at the first counter snapshot seen. ``on_scrape(index, device_time)`` is called
    after each (a scenario's test may act on it). Raises ``TimeoutError`` after ``timeout_s``
    wall seconds."""
    rec = Recording(interval_s, device_step_s)
    deadline = time.monotonic() + timeout_s
    previous = None                       # (counters time, metrics) before the grid time
    grid = None                           # device time of the next grid scrape
    last_move = time.monotonic()          # wall time the counters time last moved
    last_time = None
    paces = []                            # wall seconds per grid step, so far
    last_grid_wall = None
    while len(rec.samples) < scrapes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(rec.samples)} of {scrapes} scrapes in {timeout_s:g} s")
        metrics = scrape(url)
        now = time.monotonic()
        t = metrics.get((COUNTERS_TIME, ()), (0.0, False))[0]
        if t != last_time:
            last_time, last_move = t, now
        if grid is None:
            if t > 0:
                grid, previous, last_grid_wall = t, (t, metrics), now
                _take(rec, metrics, metrics, t, t, t)
                if on_scrape:
                    on_scrape(0, t)
                grid += device_step_s
            else:
                time.sleep(poll_s)
            continue
        took = False
        while t >= grid and len(rec.samples) < scrapes:
            _take(rec, previous[1], metrics, previous[0], t, grid)
            paces.append(now - last_grid_wall)
            last_grid_wall = now
            if on_scrape:
                on_scrape(len(rec.samples) - 1, grid)
            grid += device_step_s
            took = True
        pace = sorted(paces)[len(paces) // 2] if paces else 1.0
        gone = metrics.get(("heraldry_link_up", ()), (1.0, False))[0] == 0
        if not took and (gone or now - last_move > stall_s) \
                and now - last_grid_wall >= pace:
            # The board's time stands still: a scrape at the wall pace, as it is.
            _take(rec, metrics, metrics, t, t, t, stalled=True)
            last_grid_wall = now
            if on_scrape:
                on_scrape(len(rec.samples) - 1, None)
        previous = (t, metrics)
        time.sleep(poll_s)
    return rec


def _take(rec, before, after, t_before, t_after, grid, stalled=False):
    """One grid scrape: counters interpolated at ``grid`` between the two observations (their
    counter times ``t_before`` <= ``grid`` <= ``t_after``), gauges from ``after``."""
    share = 1.0 if t_after <= t_before else (grid - t_before) / (t_after - t_before)
    sample = {}
    for key, (value, counter) in after.items():
        if counter and key[0] not in ("heraldry_link_up_seconds_total",
                                      "heraldry_link_down_seconds_total"):
            # (the link's seconds are wall seconds, counted at ticks, not from snapshots)
            old = before.get(key, (value, True))[0]
            value = old + share * (value - old)
        if counter:
            rec.counters.add(key)
            value *= rec.scale
        sample[key] = value
    rec.samples.append(sample)
    rec.device_times.append(None if stalled else grid)


def promtool_alert_test(recording, rule_files, checks, *, labels=None,
                        evaluation_interval="1m"):
    """A promtool test file (as a dict; JSON is YAML) that checks, at each ``(series seconds,
    alert names)`` of ``checks``, that exactly those alerts fire (``ALERTS{alertstate=
    "firing"}``, counted per name) and no other."""
    tests = []
    for at_s, names in checks:
        counts = {}
        for name in names:
            counts[name] = counts.get(name, 0) + 1
        tests.append({
            "expr": 'count by (alertname) (ALERTS{alertstate="firing"})',
            "eval_time": f"{int(at_s)}s",
            "exp_samples": [{"labels": f'{{alertname="{n}"}}', "value": c}
                            for n, c in sorted(counts.items())]})
    return {"rule_files": [str(Path(p).resolve()) for p in rule_files],
            "evaluation_interval": evaluation_interval,
            "tests": [{"interval": f"{int(recording.interval_s)}s",
                       "input_series": recording.input_series(labels),
                       "promql_expr_test": tests}]}


def firing(recording, rule_files, times_s, promtool, workdir, *, labels=None):
    """``{series seconds: sorted alert names firing}`` at each of ``times_s``, by running
    ``promtool test rules`` with an empty expectation and reading what it got (the rules are
    Prometheus's to evaluate; this only reads its answer). For reports: tests assert with
    :func:`promtool_alert_test`."""
    path = workdir / "gameday-probe.yml"
    path.write_text(json.dumps(promtool_alert_test(recording, rule_files,
                                                   [(t, []) for t in times_s], labels=labels)))
    result = subprocess.run([promtool, "test", "rules", str(path)], cwd=workdir,
                            capture_output=True, text=True, timeout=300)
    out = {t: [] for t in times_s}
    text = result.stdout + result.stderr
    for block in re.split(r"\n\s*expr:", text)[1:]:
        when = re.search(r"time:\s*(\S+?),", block)
        got = re.search(r"got:(.*)", block)
        if when and got:
            seconds = _duration_s(when.group(1))
            out[seconds] = sorted(re.findall(r'alertname="([^"]+)"', got.group(1)))
    return out


def _duration_s(text):
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text):
        total += float(value) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    return int(total)
