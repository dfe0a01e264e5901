"""Game days: scenario runs of ``heraldry serve --board sim --scenario`` under the real alert rules.

Each game day serves the virtual board with one of the scenarios in docs/gamedays/, records its
``/metrics`` on a grid of device time (``heraldry.sim.gameday``: one 15 s scrape per 4 ms of
device time, counters scaled so that ``rate()`` reads per device second) and has ``promtool test
rules`` evaluate docs/prometheus-alerts.yml and docs/slo-rules.yml on the recording: a minute
before the fault nothing fires, six minutes after it exactly the intended alerts fire (counted
by name from ``ALERTS{alertstate="firing"}``, so any other alert, a page above all, fails the
test). The timings and outcomes are in docs/slo.md ("Game days"). Slow tier: the four take
about five minutes of simulation; promtool (Debian's ``prometheus``) is needed, as in
tests/test_slo.py.

The recorder's time mapping itself is checked in the fast tier against a stand-in ``/metrics``
whose counts are known functions of its device time.
"""

import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from heraldry.sim import gameday

DOCS = Path(__file__).resolve().parent.parent / "docs"
RULE_FILES = [DOCS / "prometheus-alerts.yml", DOCS / "slo-rules.yml"]
PROMTOOL = shutil.which("promtool")
STEP_S = 0.004              # device seconds per scrape
INTERVAL_S = 15             # series seconds per scrape


class _FakeMetrics:
    """A /metrics page whose device time moves 1 ms per request up to ``stop_s`` and then
    stands still, the link then down (``heraldry_link_up`` 0, else 1); a counter grows at 2500
    per device second."""

    def __init__(self, stop_s):
        self.t = 0.0
        self.stop_s = stop_s
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.t = min(owner.stop_s, owner.t + 0.001)
                body = ("# TYPE heraldry_counters_device_time_seconds gauge\n"
                        f"heraldry_counters_device_time_seconds {owner.t!r}\n"
                        "# TYPE heraldry_heralds_total counter\n"
                        f'heraldry_heralds_total{{rule="0"}} {2500 * owner.t!r}\n'
                        "# TYPE heraldry_link_up gauge\n"
                        f"heraldry_link_up {int(owner.t < owner.stop_s)}\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_recorder_maps_device_time_to_scrapes():
    """Scrape n is the state at the first device time seen plus n * 4 ms; rate() over the
    series (15 s per scrape) reads per device second; once the board is gone (link down),
    scrapes go on with the last state, marked as such."""
    fake = _FakeMetrics(stop_s=0.0405)
    try:
        rec = gameday.record(fake.url, device_step_s=STEP_S, scrapes=14, poll_s=0.002,
                             timeout_s=60)
    finally:
        fake.server.shutdown()
    assert rec.scale == INTERVAL_S / STEP_S
    moving = [t for t in rec.device_times if t is not None]
    assert moving == pytest.approx([0.001 + n * STEP_S for n in range(len(moving))])
    assert len(moving) == 10 and rec.device_times[10:] == [None] * 4
    series = {s["series"]: s["values"].split() for s in rec.input_series()}
    heralds = [float(v) for v in
               series['heraldry_heralds_total{instance="sim",job="heraldry",rule="0"}']]
    # Per device second: 2500 Hz, whatever the scale; then flat while the board stands still.
    per_s = [(b - a) / INTERVAL_S for a, b in zip(heralds, heralds[1:])]
    assert per_s[:9] == pytest.approx([2500.0] * 9)
    assert per_s[9] == pytest.approx(2500 * (0.0405 - 0.037) / STEP_S)
    assert per_s[10:] == [0.0] * 3
    assert series['heraldry_link_up{instance="sim",job="heraldry"}'] == ["1"] * 10 + ["0"] * 4
    assert series['up{instance="sim",job="heraldry"}'] == ["1"] * 14


# name, scenario, serve options, scrapes, alerts firing six minutes after the fault
GAME_DAYS = [
    ("arm-b-efficiency", ["--window", "20", "--herald-floor", "4500", "--car-floor", "100"], 275,
     ["HeraldryHeraldRateLow"]),
    ("dark-rate", ["--window", "20", "--herald-floor", "4500", "--car-floor", "100"], 75,
     ["HeraldryCarLow"]),
    ("skew", ["--window", "100", "--herald-floor", "4500", "--car-floor", "20"], 75,
     ["HeraldryCoincidencePeakShift"]),
    ("killed-board", ["--window", "20", "--herald-floor", "4500", "--car-floor", "100"], 75,
     ["HeraldryLinkBudgetBurnFast", "HeraldryLinkDown"]),
]


def _fault_scrape(rec, fault):
    """Index of the first scrape at or after the fault: for a kill, the first one taken while
    the board's time stood still after reaching it (a stalled scrape before it, a board that a
    loaded machine starved for a moment, is not taken for the fault)."""
    reached = None
    for i, t in enumerate(rec.device_times):
        if t is not None:
            reached = t
            if fault.kind != "kill" and t >= fault.at:
                return i
        elif fault.kind == "kill" and reached is not None and reached >= fault.at - 0.01:
            return i
    raise AssertionError(f"no scrape reached the fault at {fault.at} s")


def run_game_day(name, options, scrapes):
    """Serve the scenario, record it; returns (Recording, the fault's scrape index)."""
    from heraldry.sim.scenario import load
    path = DOCS / "gamedays" / f"{name}.toml"
    fault = load(path).faults[0]
    cmd = [sys.executable, "-m", "heraldry.host.cli", "serve", "--board", "sim", "--scenario",
           str(path), "--herald", "0b0011", "--status-interval", "0.002", "--rates-hz", "10",
           "--pub-port", "0", "--control-port", "0", "--metrics-port", "0", "--quiet", *options]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.communicate(timeout=30)[1]
        rec = gameday.record(json.loads(line)["metrics"], device_step_s=STEP_S,
                             scrapes=scrapes, interval_s=INTERVAL_S)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    return rec, _fault_scrape(rec, fault)


@pytest.mark.slow
@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
@pytest.mark.parametrize("name, options, scrapes, expected", GAME_DAYS,
                         ids=[g[0] for g in GAME_DAYS])
def test_game_day_fires_the_intended_alerts(name, options, scrapes, expected, tmp_path):
    rec, fault = run_game_day(name, options, scrapes)
    before, after = (fault - 4) * INTERVAL_S, (fault + 24) * INTERVAL_S
    assert fault >= 40 and fault + 24 < len(rec.samples), fault
    test = gameday.promtool_alert_test(rec, RULE_FILES, [(before, []), (after, expected)])
    path = tmp_path / f"gameday-{name}.yml"
    path.write_text(json.dumps(test))
    result = subprocess.run([PROMTOOL, "test", "rules", str(path)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    timeline = gameday.firing(rec, RULE_FILES, range(0, len(rec.samples) * INTERVAL_S, 60),
                              PROMTOOL, tmp_path)
    # (the minute-by-minute alerts, for the report when the test fails)
    report = "\n".join(f"{t // 60 - fault * INTERVAL_S / 60:+5.1f} min: {names}"
                       for t, names in timeline.items() if names)
    assert result.returncode == 0, result.stdout + result.stderr + report
